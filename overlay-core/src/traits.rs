//! The seams of the SDK. The reconcilers are written against these traits
//! only; Kubernetes, phpIPAM and netlink are adapters behind them.
//!
//! Every trait is object safe, `Send + Sync`, and used as `Arc<dyn Trait>`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::{IpamError, ProgrammerError, StoreError};
use crate::model::{
    Adoption, ApplyReport, DesiredNodeState, DiscoveredRoute, DriftEvent, NodeInfo, Owner,
    Reservation, RouteChanges, RouteState,
};
use crate::parse::{Cidr, InterfaceName, LabelSelector, Zone};

/// An IP address management system that hands out one address per owner.
///
/// The rules every backend keeps (the conformance suite in
/// `overlay_ipam::conformance` checks them):
/// - **one address per owner**: `reserve` is idempotent per owner;
/// - **hold-down**: a release with a non-zero `hold` keeps the address back
///   from every other owner until the hold expires, visibly in the IPAM;
///   the same owner gets it back if it reserves again in that zone;
/// - **ours only**: `list` reports only entries carrying an owner marker;
///   nothing else is ever changed, except by `adopt`, which marks an entry
///   an earlier tool recorded for that very owner (see
///   [`IpamBackend::inspect_adoption`]).
#[async_trait]
pub trait IpamBackend: Send + Sync {
    /// A short name for logs and metrics (`phpipam`, `memory`, ...).
    fn name(&self) -> &str;

    /// Reserves an address for `owner` in `zone`. Idempotent per owner:
    /// when the owner already holds an address in the zone, that one is
    /// returned and nothing new is reserved; when it has one held back
    /// (released within the hold-down) in the zone, that one becomes live
    /// again. Only then is a new address allocated.
    ///
    /// After a reserve that failed ambiguously (a timeout, a reply cut
    /// short: the server may have committed), the next reserve of the same
    /// owner looks the owner up afresh in the IPAM before allocating.
    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError>;

    /// Releases a reservation. With `hold` zero the address is freed now;
    /// otherwise it is kept back (marked held, with its expiry, in the
    /// IPAM) for `hold`, and freed by a later `release` of the held
    /// reservation with `hold` zero. Idempotent: releasing an address that
    /// is already gone (or already held) succeeds.
    async fn release(&self, reservation: &Reservation, hold: Duration) -> Result<(), IpamError>;

    /// A live reservation of `owner`, in `zone` or (with `None`) anywhere.
    /// With several, the one with the lowest address.
    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError>;

    /// Every live reservation of `owner`, wherever it is: also in subnets
    /// or pools no longer configured, where the backend can find them.
    /// The default filters [`IpamBackend::list`].
    async fn lookup_all(&self, owner: &Owner) -> Result<Vec<Reservation>, IpamError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|r| &r.owner == owner && !r.is_held())
            .collect())
    }

    /// Every reservation this backend manages for overlay (those carrying an
    /// owner marker), live and held, across all configured zones.
    async fn list(&self) -> Result<Vec<Reservation>, IpamError>;

    /// Releases every live reservation of `owner` (with `hold`, see
    /// [`IpamBackend::release`]); returns what was released.
    async fn release_owner(
        &self,
        owner: &Owner,
        hold: Duration,
    ) -> Result<Vec<Reservation>, IpamError> {
        let all = self.lookup_all(owner).await?;
        for r in &all {
            self.release(r, hold).await?;
        }
        Ok(all)
    }

    /// What the IPAM holds at `address`, recorded for `owner` (by a
    /// NodeOverlayIp, possibly written by an earlier tool). Read-only.
    ///
    /// The rules every backend keeps:
    /// - [`Adoption::Ours`] when the owner's own marker is on the entry (a
    ///   live reservation of `owner` at that address);
    /// - [`Adoption::Adoptable`] only when the entry is in a subnet or pool
    ///   this backend is configured with, an earlier tool recorded it for
    ///   this very owner (node name), and it carries no owner marker at all
    ///   (neither this cluster's nor another's) and is not held back;
    /// - [`Adoption::Foreign`] for anything else at that address (another
    ///   owner, another cluster's marker, a held entry, a gateway, an entry
    ///   outside the configured subnets), with the reason;
    /// - [`Adoption::Missing`] when nothing is there.
    ///
    /// The default, for backends that know no earlier tool: `Ours` when
    /// [`IpamBackend::lookup_all`] of `owner` holds that address (compared
    /// without the prefix), else `Missing`.
    async fn inspect_adoption(
        &self,
        owner: &Owner,
        address: IpNetwork,
    ) -> Result<Adoption, IpamError> {
        let found = self
            .lookup_all(owner)
            .await?
            .into_iter()
            .find(|r| r.address.ip() == address.ip());
        Ok(match found {
            Some(reservation) => Adoption::Ours { reservation },
            None => Adoption::Missing,
        })
    }

    /// Makes the entry at `address` this owner's when it is
    /// [`Adoption::Adoptable`]: writes the owner marker on it (no new
    /// reservation), so that `lookup`, `list` and `release_owner` find it
    /// from then on, and answers [`Adoption::Adopted`]. Every other state
    /// is answered as [`IpamBackend::inspect_adoption`] answers it, and
    /// nothing is written. Idempotent: adopting again answers `Ours`.
    ///
    /// The default never writes: it is `inspect_adoption`.
    async fn adopt(&self, owner: &Owner, address: IpNetwork) -> Result<Adoption, IpamError> {
        self.inspect_adoption(owner, address).await
    }
}

/// Programs one node's overlay interface and routes into the kernel.
#[async_trait]
pub trait RouteProgrammer: Send + Sync {
    /// Makes the node look like `desired`: creates or fixes the overlay
    /// interface and address, installs the routes, and removes routes we
    /// installed earlier that are no longer desired. Routes we did not
    /// install are never touched. A second identical apply writes nothing.
    /// Per-route failures are reported in the [`ApplyReport`], not as `Err`;
    /// `Err` means nothing could be applied (e.g. no permission).
    async fn apply(&self, desired: &DesiredNodeState) -> Result<ApplyReport, ProgrammerError>;

    /// Deletes the overlay interface `name` (and with it its address and the
    /// routes through it). Returns whether it existed.
    async fn remove_interface(&self, name: &InterfaceName) -> Result<bool, ProgrammerError>;

    /// The gateway and device of the kernel route that covers `prefix`
    /// (longest match in the main table).
    async fn discover_gateway(&self, prefix: &Cidr) -> Result<DiscoveredRoute, ProgrammerError>;

    /// Notifications of drift: something outside overlay changed what we
    /// programmed. Each call returns a new subscription.
    fn drift(&self) -> BoxStream<'static, DriftEvent>;
    /// Applies `changes` on top of the last [`RouteProgrammer::apply`]
    /// without reading the whole routing table: one StaticRoute added,
    /// changed or removed costs its own writes only. The programmer's
    /// desired state (for drift repair and resync) follows the change. The
    /// report holds outcomes for `upsert`, in order, and the removed
    /// routes.
    ///
    /// The default answers [`ProgrammerError::Unsupported`]; callers then
    /// fall back to a full `apply`. It is also the answer before the first
    /// full apply.
    async fn update(&self, changes: &RouteChanges) -> Result<ApplyReport, ProgrammerError> {
        let _ = changes;
        Err(ProgrammerError::Unsupported {
            call: "update".into(),
        })
    }

    /// The interface holding `address` (used to find the node's private
    /// interface from its InternalIP). The default finds nothing.
    async fn interface_with_address(
        &self,
        address: IpAddr,
    ) -> Result<Option<InterfaceName>, ProgrammerError> {
        let _ = address;
        Ok(None)
    }
    /// The kernel address holding `address`, with its prefix (the node's
    /// InternalIP with the prefix of its subnet), so an overlay address
    /// overlapping the node's own network can be refused. The default
    /// knows none.
    async fn address_network(&self, address: IpAddr) -> Result<Option<IpNetwork>, ProgrammerError> {
        let _ = address;
        Ok(None)
    }
}

/// Where the nodes of the cluster come from (the Kubernetes API, a static
/// list, a lab).
#[async_trait]
pub trait NodeSource: Send + Sync {
    /// All nodes now.
    async fn list(&self) -> Result<Vec<NodeInfo>, StoreError>;

    /// One node, `None` when it does not exist.
    async fn get(&self, name: &str) -> Result<Option<NodeInfo>, StoreError>;

    /// One node read from the source of truth, bypassing any cache (the
    /// orphan collection's last check before a release). The default is
    /// [`NodeSource::get`], right for sources without a cache.
    async fn get_live(&self, name: &str) -> Result<Option<NodeInfo>, StoreError> {
        self.get(name).await
    }

    /// Node changes from now on.
    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<NodeInfo>, StoreError>>;
}

/// The older deployment mode's route list: a ConfigMap `static-routes`
/// whose key `routes` holds a JSON array of subnets, read through the API or
/// from a mounted file.
#[async_trait]
pub trait LegacyRouteSource: Send + Sync {
    /// The subnets now. An error means "unknown": the agent keeps the routes
    /// in place.
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError>;

    /// The subnets now and the entries skipped because they are not
    /// subnets (the agent logs those and applies the others). An error
    /// means "unknown", as for [`LegacyRouteSource::subnets`]. The default
    /// reports no skipped entries; sources that parse the list leniently
    /// ([`crate::legacy::parse_legacy_list`]) override it.
    async fn routes(&self) -> Result<crate::legacy::LegacyRoutes, StoreError> {
        Ok(crate::legacy::LegacyRoutes {
            subnets: self.subnets().await?,
            problems: Vec::new(),
        })
    }

    /// Fires when the list may have changed.
    fn changes(&self) -> BoxStream<'static, ()>;
}

/// A change in a watched collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent<T> {
    /// Created or updated.
    Applied(T),
    /// Deleted (by name).
    Deleted(String),
    /// The watch restarted: this is the full current set.
    Restarted(Vec<T>),
}

/// The finalizer overlay puts on its objects.
pub const FINALIZER: &str = "finalizer.iks.ibm.com";

/// A NodeOverlayIp as the reconcilers see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayIpRecord {
    /// Object name = node name.
    pub name: String,
    /// Labels (`node`, `region`, `zone`).
    pub labels: BTreeMap<String, String>,
    /// Finalizers present.
    pub finalizers: Vec<String>,
    /// True when deletion was requested (deletionTimestamp set).
    pub deleting: bool,
    /// UID of the owning Node, when set.
    pub owner_uid: Option<String>,
    /// Reserved address with prefix (controller-owned status).
    pub ip_addr: Option<IpNetwork>,
    /// Gateway of the pool (controller-owned status).
    pub gateway: Option<IpAddr>,
    /// Set when `status.ipAddr` or `status.gateway` holds something that is
    /// not an address (an object stored before validation, or written by
    /// another version): why. `ip_addr`/`gateway` are then unset, and the
    /// agent keeps the address it has.
    pub address_error: Option<String>,
    /// Agent-owned status.
    pub agent: Option<AgentStatus>,
}

/// What the agent reports on its NodeOverlayIp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Parent interface.
    pub interface: String,
    /// Overlay interface (macvlan) name.
    pub interface_label: String,
    /// Whether the address is configured.
    pub configured: bool,
    /// Why (condition reason, CamelCase).
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// The result of every StaticRoute that selects the node (by route
    /// name). The controller sums these up into each StaticRoute's status.
    pub routes: Vec<RouteReport>,
    /// The last gateways found by discovery (`gatewayFrom`, legacy mode),
    /// kept so a discovery failure right after a restart removes nothing.
    pub gateways: Vec<KnownGateway>,
}

/// One StaticRoute's result on one node, in that node's NodeOverlayIp
/// status (`status.routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteReport {
    /// The StaticRoute's name.
    pub route: String,
    /// Output device (empty when not known).
    pub device: String,
    /// Gateway used (empty when not known).
    pub gateway: String,
    /// Routing table, when not main.
    pub table: Option<u32>,
    /// State.
    pub state: RouteState,
    /// Why Failed or Pending.
    pub message: String,
}

/// A gateway found by discovery: the kernel route covering `from` went via
/// `gateway` on `device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownGateway {
    /// The prefix looked up (e.g. `10.0.0.0/8`).
    pub from: Cidr,
    /// The gateway found.
    pub gateway: IpAddr,
    /// Its device.
    pub device: InterfaceName,
}

/// The metadata the controller creates a NodeOverlayIp with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayIpMeta {
    /// Name (= node name).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// UID of the Node, for the owner reference.
    pub owner_uid: Option<String>,
}

/// Storage of NodeOverlayIp records.
#[async_trait]
pub trait OverlayIpStore: Send + Sync {
    /// One record, `None` when absent.
    async fn get(&self, name: &str) -> Result<Option<OverlayIpRecord>, StoreError>;
    /// All records the store can see.
    async fn list(&self) -> Result<Vec<OverlayIpRecord>, StoreError>;
    /// Creates the record with our finalizer if absent (labels and owner
    /// updated if present); returns it.
    async fn ensure(&self, meta: &OverlayIpMeta) -> Result<OverlayIpRecord, StoreError>;
    /// Writes the controller-owned status (`ipAddr`, `gateway`).
    async fn set_address(
        &self,
        name: &str,
        ip_addr: IpNetwork,
        gateway: Option<IpAddr>,
    ) -> Result<(), StoreError>;
    /// Writes the agent-owned status fields only.
    async fn set_agent_status(&self, name: &str, status: &AgentStatus) -> Result<(), StoreError>;
    /// Requests deletion; absent is success.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Removes one finalizer (only that one); absent is success.
    async fn remove_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError>;
    /// Changes from now on.
    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<OverlayIpRecord>, StoreError>>;
}

/// How a StaticRoute picks its next hop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GatewayChoice {
    /// The gateway of the node's overlay subnet (default).
    #[default]
    Overlay,
    /// A fixed address.
    Fixed(IpAddr),
    /// The gateway of the kernel route covering this prefix.
    Discover(Cidr),
}

/// A StaticRoute's spec, validated: which subnet to route, through which
/// gateway, in which table and with which metric, on which nodes. (The
/// Kubernetes object is `crd::StaticRoute`; a route in the kernel is a
/// [`RouteSpec`](crate::RouteSpec).)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRouteRule {
    /// Destination.
    pub subnet: Cidr,
    /// Next hop choice.
    pub gateway: GatewayChoice,
    /// Routing table.
    pub table: Option<u32>,
    /// Metric.
    pub metric: Option<u32>,
    /// Which nodes.
    pub selector: LabelSelector,
}

/// A StaticRoute's status as the controller sums it up from the nodes'
/// reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSummary {
    /// Nodes reporting the route Applied.
    pub applied: u32,
    /// Nodes reporting it Failed.
    pub failed: u32,
    /// Nodes reporting it Pending.
    pub pending: u32,
    /// Per-node entries: failing nodes first, then pending, then applied,
    /// each by name, at most [`RouteSummary::MAX_NODE_STATUS`].
    pub node_status: Vec<NodeRouteStatus>,
}

impl RouteSummary {
    /// The most `nodeStatus` entries a StaticRoute carries; the counts
    /// cover every node.
    pub const MAX_NODE_STATUS: usize = 100;
}

/// One node's entry in a StaticRoute's `status.nodeStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRouteStatus {
    /// Node name.
    pub hostname: String,
    /// Output device.
    pub device: String,
    /// Gateway used.
    pub gateway: String,
    /// State.
    pub state: RouteState,
    /// Detail (why Failed/Pending).
    pub message: String,
}

/// A StaticRoute as the reconcilers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRouteRecord {
    /// Object name.
    pub name: String,
    /// The spec; `Err` holds why it is invalid (reported, never applied).
    pub spec: Result<StaticRouteRule, String>,
    /// Finalizers present.
    pub finalizers: Vec<String>,
    /// Deletion requested.
    pub deleting: bool,
    /// Per-node status entries.
    pub node_status: Vec<NodeRouteStatus>,
    /// The status as last summed up by the controller (`None` before
    /// the first summary, or in objects of the original agents).
    pub summary: Option<RouteSummary>,
}

/// Storage of StaticRoute records.
#[async_trait]
pub trait StaticRouteStore: Send + Sync {
    /// All StaticRoutes.
    async fn list(&self) -> Result<Vec<StaticRouteRecord>, StoreError>;
    /// Adds a finalizer if absent.
    async fn add_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError>;
    /// Removes one finalizer; absent is success.
    async fn remove_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError>;
    /// Writes the status the controller summed up (counts and
    /// `nodeStatus`), replacing what was there.
    async fn set_summary(&self, name: &str, summary: &RouteSummary) -> Result<(), StoreError>;
    /// Changes from now on.
    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<StaticRouteRecord>, StoreError>>;
}
