//! # overlay-core
//!
//! The domain model, traits and custom resources of **overlay**, which gives
//! every Kubernetes worker node an overlay IP address from an IPAM system and
//! programs static routes to on-premise networks on every node.
//!
//! - [`parse`]: validated parsing of CIDRs, addresses, interface names,
//!   zones and label selectors.
//! - [`model`]: nodes, owners, reservations, the desired network state of a
//!   node and what applying it changed.
//! - [`traits`]: [`IpamBackend`], [`RouteProgrammer`], [`NodeSource`] and the
//!   record stores, the seams every backend and adapter plugs into.
//! - [`error`]: the error values of those traits.
//! - [`agent`], [`controller`]: the two reconcilers, written against the
//!   traits only, built from a config and their parts
//!   ([`agent::AgentParts`], [`controller::ControllerParts`]).
//! - [`leader`]: Lease-based leader election with a local deadline:
//!   [`leader::Leadership`] runs work only while this replica leads, and
//!   [`leader::FencedIpam`] refuses IPAM writes once the deadline passes.
//! - [`metrics`]: the [`metrics::Metrics`] sink the reconcilers report to.
//! - [`backoff`]: the one retry policy.
//! - [`legacy`]: the older DaemonSet's route list.
//! - [`ippool`]: Kubernetes-native IPAM as records (pools, allocations,
//!   claims) and [`ippool::PoolStore`], the seam its backend uses.
//!
//! ## Features (all off by default)
//!
//! - `kube`: the `NodeOverlayIp` and `StaticRoute` custom resources (`crd`)
//!   and the Kubernetes adapters of the traits (`k8s`).
//! - `prometheus`: `metrics::prometheus::PrometheusMetrics`.
//! - `testing`: in-memory implementations of every trait (`fakes`), for
//!   tests, examples and labs.
//! - `apiserver`: `fakes::apiserver::FakeApiServer`, a scripted Kubernetes
//!   API server behind a `kube::Client`, for testing against the adapters
//!   (implies `kube` and `testing`).
//!
//! Without features the crate is the model, the traits and the
//! reconcilers: no Kubernetes client, no metrics library, no web server.
//!
//! ## Example: the model, without any feature
//!
//! Inputs are parsed once, into types that cannot hold a bad value; an
//! error names the field, the value and what a good one looks like.
//!
//! ```
//! use std::collections::BTreeMap;
//! use overlay_core::{Cidr, NodeInfo};
//!
//! // A node's zone comes from the well-known topology labels (the older
//! // failure-domain label included), as the controller reads it.
//! let labels = BTreeMap::from([(
//!     "failure-domain.beta.kubernetes.io/zone".to_owned(),
//!     "dal10".to_owned(),
//! )]);
//! let node = NodeInfo::from_labels("node-a", labels, vec!["198.51.100.10".parse()?]);
//! assert_eq!(node.zone.map(|z| z.to_string()).as_deref(), Some("dal10"));
//!
//! // A StaticRoute's subnet must have its host bits clear.
//! let subnet: Cidr = "203.0.113.0/24".parse()?;
//! assert!(subnet.contains_net(&"203.0.113.128/25".parse()?));
//! let err = "203.0.113.7/24".parse::<Cidr>().unwrap_err();
//! assert!(err.to_string().contains("did you mean 203.0.113.0/24?"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Example: one node's agent pass, in memory
//!
//! The agent reconciler over the in-memory stores and kernel of `fakes`
//! (feature `testing`, which belongs in your `[dev-dependencies]`): the
//! node's overlay address goes on the macvlan `tmp0` of the interface that
//! holds its InternalIP, and a StaticRoute is routed via the overlay
//! gateway. The bundled `overlay-agent` runs the same [`agent::Agent`] with
//! the Kubernetes stores (feature `kube`) and the rtnetlink programmer of
//! the `overlay-netlink` crate.
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//!
//! use overlay_core::agent::{Agent, AgentConfig, AgentParts};
//! use overlay_core::fakes::{MemoryNodes, MemoryOverlayIps, MemoryProgrammer, MemoryStaticRoutes};
//! use overlay_core::{
//!     FINALIZER, GatewayChoice, LabelSelector, NodeInfo, OverlayIpRecord, RouteState,
//!     StaticRouteRule,
//! };
//!
//! // The Node: its zone and InternalIP.
//! let nodes = MemoryNodes::new();
//! let zone = BTreeMap::from([("topology.kubernetes.io/zone".to_owned(), "dal10".to_owned())]);
//! nodes.upsert(NodeInfo::from_labels("node-a", zone, vec!["198.51.100.10".parse()?]));
//!
//! // The kernel: the InternalIP sits on eth0.
//! let kernel = MemoryProgrammer::new();
//! let internal_ip: std::net::IpAddr = "198.51.100.10".parse()?;
//! let eth0: overlay_core::InterfaceName = "eth0".parse()?;
//! kernel.with(|k| k.addresses.insert(internal_ip, eth0));
//!
//! // The NodeOverlayIp as the controller wrote it: address and gateway.
//! let overlay_ips = MemoryOverlayIps::new();
//! overlay_ips.insert(OverlayIpRecord {
//!     name: "node-a".into(),
//!     finalizers: vec![FINALIZER.into()],
//!     ip_addr: Some("192.0.2.20/24".parse()?),
//!     gateway: Some("192.0.2.1".parse()?),
//!     ..Default::default()
//! });
//!
//! // A StaticRoute for every node, via the overlay gateway.
//! let routes = MemoryStaticRoutes::new();
//! routes.apply(
//!     "onprem",
//!     Ok(StaticRouteRule {
//!         subnet: "203.0.113.0/24".parse()?,
//!         gateway: GatewayChoice::Overlay,
//!         table: None,
//!         metric: None,
//!         selector: LabelSelector::parse("spec.nodeSelector", "")?,
//!     }),
//! );
//!
//! let agent = Agent::new(
//!     AgentConfig::new("node-a")?,
//!     AgentParts {
//!         programmer: Arc::new(kernel.clone()),
//!         nodes: Arc::new(nodes),
//!         overlay_ips: Arc::new(overlay_ips),
//!         routes: Some(Arc::new(routes)),
//!         legacy: None,
//!     },
//! );
//! let report = agent.reconcile().await?;
//! assert_eq!(report.reports["onprem"].state, RouteState::Applied);
//! let installed: Vec<String> =
//!     kernel.with(|k| k.routes.values().map(|r| r.to_string()).collect());
//! assert_eq!(installed, ["203.0.113.0/24 via 192.0.2.1 dev tmp0"]);
//!
//! // Nothing changed, so the next pass writes nothing.
//! assert_eq!(agent.reconcile().await?.apply.kernel_writes, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```
//!
//! More: the README of the workspace
//! (<https://github.com/overlay-project/overlay#readme>) and its
//! `examples/` (a custom IPAM backend, the controller over a plain node
//! list, the static-routes-only agent).

pub mod agent;
pub mod backoff;
pub mod controller;
pub mod error;
pub mod events;
#[cfg(any(test, feature = "testing"))]
pub mod fakes;
pub mod invalid;
pub mod ippool;
pub mod leader;
pub mod legacy;
pub mod metrics;
pub mod model;
pub mod parse;
pub mod queue;
pub mod repeats;
pub mod traits;

#[cfg(feature = "kube")]
pub mod crd;
#[cfg(feature = "kube")]
pub mod k8s;

// The README's example runs as a doctest too (it uses `fakes`).
#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{IpamError, ProgrammerError, StoreError};
pub use model::{
    Adoption, ApplyReport, DesiredNodeState, DiscoveredRoute, DriftEvent, Marker, NodeInfo,
    OverlayInterface, Owner, Reservation, RouteChanges, RouteKey, RouteOutcome, RouteResult,
    RouteScope, RouteSpec, RouteState,
};
pub use parse::{Cidr, InterfaceName, LabelSelector, ParseError, Zone};
pub use traits::{
    AgentStatus, FINALIZER, GatewayChoice, IpamBackend, KnownGateway, LegacyRouteSource,
    NodeRouteStatus, NodeSource, OverlayIpMeta, OverlayIpRecord, OverlayIpStore, RouteProgrammer,
    RouteReport, RouteSummary, StaticRouteRecord, StaticRouteRule, StaticRouteStore, StoreEvent,
};
