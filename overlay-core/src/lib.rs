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
