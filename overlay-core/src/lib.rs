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
//! - [`leader`]: Lease-based leader election with a local deadline, and
//!   [`leader::FencedIpam`], which refuses IPAM writes once it passes.
//! - `crd` (feature `kube`, default): the `NodeOverlayIp` and `StaticRoute`
//!   custom resources.

pub mod agent;
pub mod backoff;
pub mod controller;
pub mod error;
pub mod events;
pub mod invalid;
pub mod leader;
pub mod memory;
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
    ApplyReport, DesiredNodeState, DiscoveredRoute, DriftEvent, Marker, NodeInfo, OverlayInterface,
    Owner, Reservation, RouteChanges, RouteKey, RouteOutcome, RouteResult, RouteScope, RouteSpec,
    RouteState,
};
pub use parse::{Cidr, InterfaceName, LabelSelector, ParseError, Zone};
pub use traits::{
    AgentStatus, FINALIZER, GatewayChoice, IpamBackend, KnownGateway, LegacyRouteSource,
    NodeRouteStatus, NodeSource, OverlayIpMeta, OverlayIpRecord, OverlayIpStore, RouteProgrammer,
    RouteReport, RouteSummary, StaticRouteRecord, StaticRouteSpecModel, StaticRouteStore,
    StoreEvent,
};
