//! The controller reconciler: every node gets one overlay address, recorded
//! in its NodeOverlayIp, and gives it back when it goes. Written against the
//! traits only; the Kubernetes binding and the lab plug in their adapters.
//!
//! Invariants:
//! - one reservation per node, ever: the IPAM is asked by owner (node +
//!   cluster id), so a crash between reserve and status write finds the same
//!   address again;
//! - an address is released only while the NodeOverlayIp carries our
//!   finalizer, and the finalizer comes off only after the release succeeded;
//! - an IPAM outage never releases anything; one node's failure (unknown
//!   zone, full pool) never blocks the others;
//! - without a record, a reservation is released only by the orphan
//!   collection, when it is provably ours and provably dead (see
//!   [`Controller::collect_orphans`]);
//! - every release holds the address back for [`ControllerConfig::hold_down`]
//!   so that a node that may still have it configured gets no twin;
//! - behind a [`crate::leader::FencedIpam`], nothing is written to the IPAM
//!   once this replica is not sure it leads.
//!
//! StaticRoutes: the controller puts its finalizer on each one and sums up
//! the agents' per-route reports (each agent writes them into its own
//! NodeOverlayIp) into the StaticRoute's status ([`route_summaries`]): one
//! writer per object, at most one write per StaticRoute per
//! [`ControllerConfig::summary_period`]. A StaticRoute being deleted keeps
//! the finalizer while a node that exists still reports the route.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use futures::{FutureExt, StreamExt};
use ipnetwork::IpNetwork;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::Backoff;
use crate::error::{IpamError, StoreError};
use crate::events::{Event, EventRecorder, EventType, NoEvents};
use crate::metrics::{Measurement, Metrics, NoMetrics};
use crate::model::{Adoption, NodeInfo, Owner, Reservation, RouteState, overlay_ip_labels};
use crate::parse::Zone;
use crate::queue::{Next, WorkQueue};
use crate::traits::{
    FINALIZER, IpamBackend, NodeRouteStatus, NodeSource, OverlayIpMeta, OverlayIpRecord,
    OverlayIpStore, RouteReport, RouteSummary, StaticRouteRecord, StaticRouteStore, StoreEvent,
};

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Cluster id written into every owner marker. Derive it from the
    /// cluster (the binary uses the `kube-system` Namespace UID) unless the
    /// user set one: two clusters sharing an IPAM must never share an id.
    pub cluster_id: String,
    /// Log what would be done; change nothing.
    pub dry_run: bool,
    /// Nodes reconciled at once.
    pub concurrency: usize,
    /// Period of the orphan collection and full resync.
    pub resync: Duration,
    /// Retry delays after failures.
    pub backoff: Backoff,
    /// Retry delay after a permanent error (unknown zone, full pool, bad
    /// credentials): the configuration or the pool may change.
    pub permanent_retry: Duration,
    /// How long a reservation must be seen orphaned (no node, no
    /// NodeOverlayIp) in two orphan passes before it is released.
    pub orphan_grace: Duration,
    /// How long a released address is held back from other nodes (the old
    /// holder may still have it configured); the same node gets it back if
    /// it returns within this time.
    pub hold_down: Duration,
    /// The shortest time between two summary writes of one StaticRoute.
    /// A burst of report changes is written once it has been quiet for this
    /// long, and at the latest [`SUMMARY_MAX_WAIT_PERIODS`] periods after
    /// its first change: a burst costs one write, a single change shows
    /// within one period.
    pub summary_period: Duration,
}

impl ControllerConfig {
    /// Defaults for `cluster_id`: 64 workers, 10 min resync and orphan
    /// grace, 5 min hold-down, a StaticRoute summary at most every second.
    pub fn new(cluster_id: impl Into<String>) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            dry_run: false,
            concurrency: 64,
            resync: Duration::from_secs(600),
            backoff: Backoff::default(),
            permanent_retry: Duration::from_secs(300),
            orphan_grace: Duration::from_secs(600),
            hold_down: Duration::from_secs(300),
            summary_period: Duration::from_secs(1),
        }
    }
}

/// A reconcile failure, with the node and the call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControllerError {
    /// The IPAM failed.
    #[error("node {node}: {source}")]
    Ipam {
        /// Node.
        node: String,
        /// Cause.
        source: IpamError,
    },
    /// A record store failed.
    #[error("node {node}: {source}")]
    Store {
        /// Node (or object) name.
        node: String,
        /// Cause.
        source: StoreError,
    },
    /// The node has no zone label.
    #[error(
        "node {node} has no zone label (topology.kubernetes.io/zone, failure-domain.beta.kubernetes.io/zone or ibm-cloud.kubernetes.io/zone); label it to get an overlay IP"
    )]
    NoZone {
        /// Node.
        node: String,
    },
}

impl ControllerError {
    /// True when retrying soon may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ControllerError::Ipam { source, .. } => source.is_retryable(),
            ControllerError::Store { source, .. } => source.is_retryable(),
            ControllerError::NoZone { .. } => false,
        }
    }

    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ControllerError::Ipam { source, .. } => source.kind(),
            ControllerError::Store { .. } => "store",
            ControllerError::NoZone { .. } => "no_zone",
        }
    }
}

/// `map_err` adapters naming the node (empty for whole-cluster passes).
fn on_ipam(node: &str) -> impl Fn(IpamError) -> ControllerError + Copy + '_ {
    move |source| ControllerError::Ipam {
        node: node.to_owned(),
        source,
    }
}

/// See [`on_ipam`].
fn on_store(node: &str) -> impl Fn(StoreError) -> ControllerError + Copy + '_ {
    move |source| ControllerError::Store {
        node: node.to_owned(),
        source,
    }
}

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Node has its address recorded.
    Ready,
    /// Released the address and removed our finalizer.
    Released,
    /// Asked the store to delete the NodeOverlayIp (node gone).
    Deleting,
    /// Nothing to do (node and record gone).
    Gone,
    /// Dry run: what would have been done.
    DryRun(String),
}

/// Result of one orphan collection pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Reservations released: this cluster's marker, no node (by a live
    /// read) and no record, in two passes at least the grace period apart.
    pub released: Vec<String>,
    /// Reservations seen orphaned, waiting for the grace period.
    pub suspected: Vec<String>,
    /// Held (released) addresses whose hold-down ran out, freed.
    pub purged: Vec<String>,
    /// Owners found holding more than one address: the extras (not the
    /// recorded one) were released.
    pub duplicates: Vec<String>,
    /// NodeOverlayIps deleted (node gone).
    pub deleted: Vec<String>,
    /// Nodes whose recorded address no reservation with this cluster's
    /// owner marker holds (changed or removed in the IPAM by hand, or
    /// recorded by another controller): reported, never changed.
    pub unreserved: Vec<String>,
}

/// Work keys of the controller's queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Node(String),
    /// A StaticRoute's finalizer.
    Route(String),
    /// The summaries of the StaticRoutes in [`Due`].
    Summaries,
    Orphans,
}

/// One node's route reports, by route name.
type Reports = BTreeMap<String, RouteReport>;

/// StaticRoutes whose summary is due, and whether a pass is scheduled.
#[derive(Debug, Default)]
struct Due {
    routes: BTreeSet<String>,
    scheduled: bool,
    /// When the oldest and the newest change not yet written arrived.
    first: Option<tokio::time::Instant>,
    last: Option<tokio::time::Instant>,
}

/// A burst of reports is summed up once it has been quiet for one
/// `summary_period`, but never later than this many periods after its
/// first report (so a cluster that never goes quiet still sees progress).
pub const SUMMARY_MAX_WAIT_PERIODS: u32 = 5;

impl Due {
    /// How much longer to wait before writing, if at all.
    fn wait(&self, now: tokio::time::Instant, period: Duration) -> Option<Duration> {
        let (first, last) = (self.first?, self.last?);
        let quiet = (last + period).saturating_duration_since(now);
        let cap = (first + period * SUMMARY_MAX_WAIT_PERIODS).saturating_duration_since(now);
        let wait = quiet.min(cap);
        (!wait.is_zero()).then_some(wait)
    }
}

/// The rank of a state in `nodeStatus`: failing nodes first.
fn state_rank(s: RouteState) -> u8 {
    match s {
        RouteState::Failed => 0,
        RouteState::Pending => 1,
        RouteState::Applied => 2,
    }
}

/// Sums up each StaticRoute in `routes` from the agents' reports in
/// `records`, counting only nodes in `nodes` (reports of deleted nodes are
/// ignored; a node reporting a route twice counts once). Counts cover every
/// node; `node_status` lists Failed, then Pending, then Applied nodes, each
/// by name, at most [`RouteSummary::MAX_NODE_STATUS`]. A route nobody
/// reports gets the empty summary.
pub fn route_summaries(
    routes: &BTreeSet<String>,
    records: &[OverlayIpRecord],
    nodes: &HashSet<String>,
) -> BTreeMap<String, RouteSummary> {
    let mut out: BTreeMap<String, RouteSummary> = routes
        .iter()
        .map(|r| (r.clone(), RouteSummary::default()))
        .collect();
    for rec in records.iter().filter(|r| nodes.contains(&r.name)) {
        let Some(agent) = &rec.agent else { continue };
        let mut seen = HashSet::new();
        for r in &agent.routes {
            let Some(sum) = out.get_mut(&r.route) else {
                continue;
            };
            if !seen.insert(r.route.as_str()) {
                continue;
            }
            match r.state {
                RouteState::Applied => sum.applied += 1,
                RouteState::Failed => sum.failed += 1,
                RouteState::Pending => sum.pending += 1,
            }
            sum.node_status.push(NodeRouteStatus {
                hostname: rec.name.clone(),
                device: r.device.clone(),
                gateway: r.gateway.clone(),
                state: r.state,
                message: r.message.clone(),
            });
        }
    }
    for sum in out.values_mut() {
        sum.node_status.sort_by(|a, b| {
            (state_rank(a.state), &a.hostname).cmp(&(state_rank(b.state), &b.hostname))
        });
        sum.node_status.truncate(RouteSummary::MAX_NODE_STATUS);
    }
    out
}

/// Whether `new` needs writing over `recorded`: an empty summary is not
/// written over none (a new StaticRoute costs no write before a node
/// reports it).
fn summary_changed(recorded: Option<&RouteSummary>, new: &RouteSummary) -> bool {
    match recorded {
        Some(r) => normalized(r) != normalized(new),
        None => *new != RouteSummary::default(),
    }
}

/// A summary with its entries in the controller's order, whatever order
/// the API server kept them in.
fn normalized(s: &RouteSummary) -> RouteSummary {
    let mut s = s.clone();
    s.node_status.sort_by(|a, b| {
        (state_rank(a.state), &a.hostname).cmp(&(state_rank(b.state), &b.hostname))
    });
    s
}

/// What a [`Controller`] works with.
pub struct ControllerParts {
    /// Reads Nodes (zone, existence).
    pub nodes: Arc<dyn NodeSource>,
    /// Reserves and releases addresses.
    pub ipam: Arc<dyn IpamBackend>,
    /// NodeOverlayIp objects: created, finalized and deleted here.
    pub overlay_ips: Arc<dyn OverlayIpStore>,
    /// StaticRoutes: finalized and summarised here.
    pub routes: Arc<dyn StaticRouteStore>,
}

/// What a dry run would do for `node`.
fn dry_run_outcome(node: &NodeInfo, rec: Option<&OverlayIpRecord>) -> NodeOutcome {
    let name = &node.name;
    match (rec.and_then(|r| r.ip_addr), &node.zone) {
        (Some(ip), _) => NodeOutcome::DryRun(format!("{name} keeps {ip}")),
        (None, Some(z)) => {
            info!(node = %name, zone = %z, "dry run: would reserve an address and record it");
            NodeOutcome::DryRun(format!("reserve for {name} in {z}"))
        }
        (None, None) => NodeOutcome::DryRun(format!("{name} has no zone")),
    }
}

/// The controller reconciler.
pub struct Controller {
    cfg: ControllerConfig,
    nodes: Arc<dyn NodeSource>,
    ipam: Arc<dyn IpamBackend>,
    overlay_ips: Arc<dyn OverlayIpStore>,
    routes: Arc<dyn StaticRouteStore>,
    events: Arc<dyn EventRecorder>,
    metrics: Arc<dyn Metrics>,
    ready: AtomicBool,
    /// Reservations seen orphaned, and when first (orphan grace period).
    suspects: Mutex<HashMap<(String, IpAddr), Instant>>,
    /// The reports of each node's agent at its last NodeOverlayIp event
    /// (node → route → report): a report that changes or goes, or a node
    /// that comes or goes, re-summarises the routes concerned.
    reported: Mutex<HashMap<String, Reports>>,
    /// StaticRoutes whose summary is due.
    due: Mutex<Due>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Builds a controller over its collaborators; Events and
    /// measurements go nowhere until [`Controller::with_events`] and
    /// [`Controller::with_metrics`].
    pub fn new(cfg: ControllerConfig, parts: ControllerParts) -> Self {
        let ControllerParts {
            nodes,
            ipam,
            overlay_ips,
            routes,
        } = parts;
        Self {
            cfg,
            nodes,
            ipam,
            overlay_ips,
            routes,
            events: Arc::new(NoEvents),
            metrics: Arc::new(NoMetrics),
            ready: AtomicBool::new(false),
            suspects: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            due: Mutex::new(Due::default()),
        }
    }

    /// Raises Kubernetes Events through `events`.
    pub fn with_events(mut self, events: Arc<dyn EventRecorder>) -> Self {
        self.events = events;
        self
    }

    /// Reports measurements to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// True once the first full pass has been queued (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The owner marker of `node`.
    pub fn owner(&self, node: &str) -> Owner {
        Owner::new(self.cfg.cluster_id.clone(), node)
    }

    async fn event(&self, kind: &str, name: &str, type_: EventType, reason: &str, message: String) {
        self.events
            .record(Event {
                kind: kind.into(),
                namespace: None,
                name: name.into(),
                type_,
                reason: reason.into(),
                message,
            })
            .await;
    }

    /// Reconciles one node by name: reserve and record its address, or
    /// release it when the node or its NodeOverlayIp goes.
    pub async fn reconcile_node(&self, name: &str) -> Result<NodeOutcome, ControllerError> {
        let store_err = on_store(name);
        let node = self.nodes.get(name).await.map_err(store_err)?;
        let record = self.overlay_ips.get(name).await.map_err(store_err)?;
        match (node, record) {
            (node, Some(rec)) if rec.deleting => {
                if !rec.finalizers.iter().any(|f| f == FINALIZER) {
                    // Our part is done; other finalizers hold the object.
                    return Ok(NodeOutcome::Gone);
                }
                if node.is_some() {
                    debug!(
                        node = name,
                        "NodeOverlayIp deleted while the node exists; it will be recreated"
                    );
                }
                self.release_and_unblock(&rec).await
            }
            (None, Some(_)) => {
                if self.cfg.dry_run {
                    info!(
                        node = name,
                        "dry run: node is gone, would delete its NodeOverlayIp"
                    );
                    return Ok(NodeOutcome::DryRun(format!("delete NodeOverlayIp {name}")));
                }
                info!(node = name, "node is gone; deleting its NodeOverlayIp");
                self.overlay_ips.delete(name).await.map_err(store_err)?;
                Ok(NodeOutcome::Deleting)
            }
            (None, None) => {
                // A reservation made just before the node went (or before a
                // crash) has no record to hang a finalizer on. It is not
                // released here, on the word of a cache: the orphan
                // collection releases it once it is provably dead.
                debug!(
                    node = name,
                    "node and NodeOverlayIp are gone; leftovers go to orphan collection"
                );
                Ok(NodeOutcome::Gone)
            }
            (Some(node), rec) => self.ensure_address(&node, rec).await,
        }
    }

    /// A NodeOverlayIp being deleted with our finalizer: releases the
    /// node's addresses first, then removes the finalizer (it stays until
    /// the release succeeds). A record without an owner reference may
    /// have been written by the original controller and never adopted (its
    /// node went while no controller ran): its address is adopted first, so
    /// that the release finds it.
    async fn release_and_unblock(
        &self,
        rec: &OverlayIpRecord,
    ) -> Result<NodeOutcome, ControllerError> {
        let name = rec.name.as_str();
        let owner = self.owner(name);
        if self.cfg.dry_run {
            info!(
                node = name,
                "dry run: would release the address and remove the finalizer"
            );
            return Ok(NodeOutcome::DryRun(format!("release {owner}")));
        }
        if rec.owner_uid.is_none()
            && let Some(address) = rec.ip_addr
        {
            self.adopt_recorded(name, address, "it is not released")
                .await?;
        }
        let released = self
            .ipam
            .release_owner(&owner, self.cfg.hold_down)
            .await
            .map_err(on_ipam(name))?;
        for r in &released {
            info!(node = name, address = %r.address, "released overlay address");
            let message = format!(
                "released {} ({} subnet {})",
                r.address,
                self.ipam.name(),
                r.subnet_id
            );
            self.event(
                "NodeOverlayIp",
                name,
                EventType::Normal,
                "Released",
                message,
            )
            .await;
        }
        self.overlay_ips
            .remove_finalizer(name, FINALIZER)
            .await
            .map_err(on_store(name))?;
        Ok(NodeOutcome::Released)
    }

    async fn ensure_address(
        &self,
        node: &NodeInfo,
        rec: Option<OverlayIpRecord>,
    ) -> Result<NodeOutcome, ControllerError> {
        let name = node.name.as_str();
        let meta = OverlayIpMeta {
            name: name.to_owned(),
            labels: overlay_ip_labels(node),
            owner_uid: node.uid.clone(),
        };
        let up_to_date = rec.as_ref().is_some_and(|r| {
            r.labels == meta.labels
                && r.owner_uid == meta.owner_uid
                && r.finalizers.iter().any(|f| f == FINALIZER)
        });
        // A recorded address on a record not yet ours (the original
        // controller's, say): adopted before the record is made ours, so a
        // crash in between adopts again.
        let recorded = rec.as_ref().and_then(|r| r.ip_addr).filter(|_| !up_to_date);
        if self.cfg.dry_run {
            if let Some(address) = recorded {
                return self.dry_run_adoption(name, address).await;
            }
            return Ok(dry_run_outcome(node, rec.as_ref()));
        }
        if let Some(address) = recorded {
            self.adopt_recorded(
                name,
                address,
                "the record and the address are kept as they are",
            )
            .await?;
        }
        let rec = match rec {
            Some(r) if up_to_date => r,
            _ => self
                .overlay_ips
                .ensure(&meta)
                .await
                .map_err(on_store(name))?,
        };
        if rec.ip_addr.is_some() {
            return Ok(NodeOutcome::Ready);
        }
        let Some(zone) = node.zone.clone() else {
            let err = ControllerError::NoZone {
                node: name.to_owned(),
            };
            self.event("Node", name, EventType::Warning, "NoZone", err.to_string())
                .await;
            return Err(err);
        };
        self.reserve_and_record(name, &zone).await?;
        Ok(NodeOutcome::Ready)
    }

    /// Makes the address recorded for `name` (by an earlier tool, or by us
    /// before the record was ours) ours in the IPAM, through
    /// [`IpamBackend::adopt`]: adopted → Normal Event `Adopted`; already
    /// ours → nothing; held by something else or by nothing → Warning
    /// Event `NotAdopted` with the reason and `otherwise` (what happens
    /// instead). Never reserves: a recorded address is never replaced. An
    /// IPAM error is returned (and retried like a reserve error).
    async fn adopt_recorded(
        &self,
        name: &str,
        address: IpNetwork,
        otherwise: &str,
    ) -> Result<(), ControllerError> {
        let backend = self.ipam.name();
        let adoption = self
            .ipam
            .adopt(&self.owner(name), address)
            .await
            .map_err(on_ipam(name))?;
        let (result, reason) = match adoption {
            Adoption::Ours { .. } => {
                debug!(node = name, address = %address, "recorded address is ours already");
                return Ok(());
            }
            Adoption::Adopted { reservation } => {
                info!(node = name, address = %address, subnet = %reservation.subnet_id, backend, "adopted the recorded address: marked as ours");
                self.metrics
                    .record(Measurement::Adoption { result: "adopted" });
                let message = format!(
                    "adopted {address} from {backend} subnet {}: marked as ours; it is released when the node goes",
                    reservation.subnet_id
                );
                self.event("NodeOverlayIp", name, EventType::Normal, "Adopted", message)
                    .await;
                return Ok(());
            }
            Adoption::Foreign { reason } => ("foreign", reason),
            Adoption::Missing => (
                "missing",
                format!("{backend} holds nothing at that address"),
            ),
            // A backend whose adopt does not write.
            Adoption::Adoptable { detail, .. } => (
                "foreign",
                format!("{backend} found it adoptable ({detail}) but did not adopt it"),
            ),
        };
        self.metrics.record(Measurement::Adoption { result });
        warn!(node = name, address = %address, backend, reason = %reason, "recorded address not adopted");
        let message = format!(
            "{address} is recorded for this node but was not adopted: {reason}; {otherwise}"
        );
        self.event(
            "NodeOverlayIp",
            name,
            EventType::Warning,
            "NotAdopted",
            message,
        )
        .await;
        Ok(())
    }

    /// What a dry run would do with an address recorded on a record not
    /// yet ours (read-only: [`IpamBackend::inspect_adoption`]).
    async fn dry_run_adoption(
        &self,
        name: &str,
        address: IpNetwork,
    ) -> Result<NodeOutcome, ControllerError> {
        let backend = self.ipam.name();
        let adoption = self
            .ipam
            .inspect_adoption(&self.owner(name), address)
            .await
            .map_err(on_ipam(name))?;
        Ok(NodeOutcome::DryRun(match adoption {
            Adoption::Adoptable { subnet_id, detail } => {
                info!(node = name, address = %address, subnet = subnet_id, backend, "dry run: would adopt the recorded address");
                format!(
                    "would adopt {address} for {name} from {backend} subnet {subnet_id} ({detail})"
                )
            }
            Adoption::Ours { .. } | Adoption::Adopted { .. } => format!("{name} keeps {address}"),
            Adoption::Foreign { reason } => {
                format!("{name} keeps {address}; it would not be adopted: {reason}")
            }
            Adoption::Missing => format!(
                "{name} keeps {address}; it would not be adopted: {backend} holds nothing at that address"
            ),
        }))
    }

    /// Reserves an address for `name` in `zone` and records it on the
    /// node's NodeOverlayIp, with an Event either way.
    async fn reserve_and_record(&self, name: &str, zone: &Zone) -> Result<(), ControllerError> {
        let reservation = match self.ipam.reserve(&self.owner(name), zone).await {
            Ok(r) => r,
            Err(e) => {
                let err = ControllerError::Ipam {
                    node: name.to_owned(),
                    source: e,
                };
                let message = err.to_string();
                self.event("Node", name, EventType::Warning, "ReserveFailed", message)
                    .await;
                return Err(err);
            }
        };
        self.overlay_ips
            .set_address(name, reservation.address, reservation.gateway)
            .await
            .map_err(on_store(name))?;
        info!(node = name, zone = %zone, address = %reservation.address, subnet = %reservation.subnet_id, "overlay address recorded");
        let gw = reservation
            .gateway
            .map_or_else(|| "none".into(), |g| g.to_string());
        let message = format!(
            "reserved {} (gateway {gw}) in zone {zone} from {} subnet {}",
            reservation.address,
            self.ipam.name(),
            reservation.subnet_id
        );
        self.event("Node", name, EventType::Normal, "Reserved", message)
            .await;
        Ok(())
    }

    /// The orphan collection: releases this cluster's reservations whose
    /// node is provably gone, frees expired holds, releases an owner's
    /// extra addresses, deletes NodeOverlayIps of missing nodes, and reports
    /// recorded addresses the IPAM does not hold.
    ///
    /// A reservation is released only when all of these hold: its marker
    /// names this cluster; it was seen without node and record in two passes
    /// at least [`ControllerConfig::orphan_grace`] apart; a live read from
    /// the node source (not a cache), made after the IPAM listing, finds no
    /// node; and the IPAM accepts the write (a [`crate::leader::FencedIpam`]
    /// refuses it once this replica is not sure it leads). Entries of other
    /// clusters, unmarked or unparseable entries are never listed here.
    pub async fn collect_orphans(&self) -> Result<OrphanReport, ControllerError> {
        let (ours, nodes) = self.reservations_then_nodes().await?;
        let records = self.overlay_ips.list().await.map_err(on_store(""))?;
        let mut report = OrphanReport::default();
        let (held, live): (Vec<&Reservation>, Vec<&Reservation>) =
            ours.iter().partition(|r| r.is_held());
        self.purge_expired_holds(&held, &mut report).await?;
        self.release_orphans(&live, &nodes, &records, &mut report)
            .await?;
        self.release_duplicates(&live, &records, &mut report)
            .await?;
        self.delete_orphan_records(&records, &nodes, &mut report)
            .await?;
        self.report_unreserved(&live, &records, &nodes, &mut report)
            .await;
        // Each released orphan or duplicate was one live reservation.
        let still_live = live
            .len()
            .saturating_sub(report.released.len() + report.duplicates.len());
        self.metrics
            .record(Measurement::ReservationsHeld(still_live));
        Ok(report)
    }

    /// This cluster's reservations (live and held), then the names of the
    /// nodes. In that order: a node created in between has no reservation
    /// in the first list, so it cannot be mistaken for an orphan.
    async fn reservations_then_nodes(
        &self,
    ) -> Result<(Vec<Reservation>, HashSet<String>), ControllerError> {
        let ours: Vec<Reservation> = self
            .ipam
            .list()
            .await
            .map_err(on_ipam(""))?
            .into_iter()
            .filter(|r| r.owner.cluster == self.cfg.cluster_id)
            .collect();
        let nodes = self
            .nodes
            .list()
            .await
            .map_err(on_store(""))?
            .into_iter()
            .map(|n| n.name)
            .collect();
        Ok((ours, nodes))
    }

    /// Frees held addresses whose hold-down has run out.
    async fn purge_expired_holds(
        &self,
        held: &[&Reservation],
        report: &mut OrphanReport,
    ) -> Result<(), ControllerError> {
        let now = SystemTime::now();
        for r in held {
            if r.held_until.is_some_and(|t| t > now) {
                continue;
            }
            let node = r.owner.node.as_str();
            if self.cfg.dry_run {
                info!(node, address = %r.address, "dry run: would free an address whose hold-down ended");
                continue;
            }
            self.ipam
                .release(r, Duration::ZERO)
                .await
                .map_err(on_ipam(node))?;
            info!(node, address = %r.address, "hold-down ended; address freed");
            report.purged.push(node.to_owned());
        }
        Ok(())
    }

    /// Releases live reservations of nodes that are provably gone.
    async fn release_orphans(
        &self,
        live: &[&Reservation],
        nodes: &HashSet<String>,
        records: &[OverlayIpRecord],
        report: &mut OrphanReport,
    ) -> Result<(), ControllerError> {
        let recorded: HashSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
        let now = Instant::now();
        let mut suspects = lock(&self.suspects).clone();
        let mut seen = HashSet::new();
        for r in live {
            let node = r.owner.node.as_str();
            if nodes.contains(node) || recorded.contains(node) {
                continue;
            }
            let key = (node.to_owned(), r.address.ip());
            seen.insert(key.clone());
            let first = *suspects.entry(key.clone()).or_insert(now);
            if now.duration_since(first) < self.cfg.orphan_grace {
                debug!(node, address = %r.address, "reservation without node or NodeOverlayIp; released if still orphaned after the grace period");
                report.suspected.push(node.to_owned());
                continue;
            }
            // The last word goes to the API server itself, not a cache
            // that may lag behind a node created a moment ago.
            let exists = self.nodes.get_live(node).await.map_err(on_store(node))?;
            if exists.is_some() {
                suspects.remove(&key);
                continue;
            }
            if self.cfg.dry_run {
                info!(node, address = %r.address, "dry run: would release orphaned reservation");
                continue;
            }
            self.ipam
                .release(r, self.cfg.hold_down)
                .await
                .map_err(on_ipam(node))?;
            suspects.remove(&key);
            warn!(node, address = %r.address, hold_down_s = self.cfg.hold_down.as_secs(), "released orphaned reservation");
            self.metrics.record(Measurement::OrphanCollected {
                what: "reservation",
            });
            self.event(
                "Node",
                node,
                EventType::Normal,
                "OrphanReleased",
                format!(
                    "released {} held for a node that no longer exists; held back from other nodes for {}s",
                    r.address,
                    self.cfg.hold_down.as_secs()
                ),
            )
            .await;
            report.released.push(node.to_owned());
        }
        suspects.retain(|k, _| seen.contains(k));
        *lock(&self.suspects) = suspects;
        Ok(())
    }

    /// An owner with two addresses keeps the recorded one; the others are
    /// released and reported. Nothing happens until an address is recorded
    /// (a reserve may be on its way to the record).
    async fn release_duplicates(
        &self,
        live: &[&Reservation],
        records: &[OverlayIpRecord],
        report: &mut OrphanReport,
    ) -> Result<(), ControllerError> {
        let mut by_node: HashMap<&str, Vec<&Reservation>> = HashMap::new();
        for r in live {
            by_node.entry(r.owner.node.as_str()).or_default().push(r);
        }
        for rec in records {
            let Some(held) = by_node.get(rec.name.as_str()) else {
                continue;
            };
            let Some(ip) = rec.ip_addr else { continue };
            if held.len() < 2 || !held.iter().any(|r| r.address.ip() == ip.ip()) {
                continue;
            }
            for extra in held.iter().filter(|r| r.address.ip() != ip.ip()) {
                let node = rec.name.as_str();
                if self.cfg.dry_run {
                    info!(node, extra = %extra.address, "dry run: would release a second address of the node");
                    continue;
                }
                self.ipam
                    .release(extra, self.cfg.hold_down)
                    .await
                    .map_err(on_ipam(node))?;
                warn!(node, kept = %ip, released = %extra.address, "node held two addresses; released the one not recorded");
                self.metrics.record(Measurement::ControllerError {
                    kind: "duplicate_reservation",
                });
                self.event(
                    "NodeOverlayIp",
                    node,
                    EventType::Warning,
                    "DuplicateReservation",
                    format!(
                        "{} also held {} in {}; kept the recorded {ip}, released the other",
                        node,
                        extra.address,
                        self.ipam.name()
                    ),
                )
                .await;
                report.duplicates.push(node.to_owned());
            }
        }
        Ok(())
    }

    /// Deletes NodeOverlayIps of nodes that no longer exist (their
    /// finalizer path then releases the address).
    async fn delete_orphan_records(
        &self,
        records: &[OverlayIpRecord],
        nodes: &HashSet<String>,
        report: &mut OrphanReport,
    ) -> Result<(), ControllerError> {
        for rec in records {
            if nodes.contains(&rec.name) || rec.deleting {
                continue;
            }
            if self.cfg.dry_run {
                info!(node = %rec.name, "dry run: would delete NodeOverlayIp of a missing node");
                continue;
            }
            warn!(node = %rec.name, "deleting NodeOverlayIp of a node that no longer exists");
            self.overlay_ips
                .delete(&rec.name)
                .await
                .map_err(on_store(&rec.name))?;
            self.metrics
                .record(Measurement::OrphanCollected { what: "record" });
            report.deleted.push(rec.name.clone());
        }
        Ok(())
    }

    /// The other direction: recorded addresses the IPAM no longer holds for
    /// that node could be handed to another node. Changing a live node's
    /// address is disruptive, so this is reported for a human.
    async fn report_unreserved(
        &self,
        live: &[&Reservation],
        records: &[OverlayIpRecord],
        nodes: &HashSet<String>,
        report: &mut OrphanReport,
    ) {
        let held_by: HashSet<(&str, IpAddr)> = live
            .iter()
            .map(|r| (r.owner.node.as_str(), r.address.ip()))
            .collect();
        for rec in records {
            let Some(ip) = rec.ip_addr else { continue };
            if rec.deleting || !nodes.contains(&rec.name) {
                continue;
            }
            if held_by.contains(&(rec.name.as_str(), ip.ip())) {
                continue;
            }
            let message = format!(
                "{ip} is recorded for this node but no reservation with cluster id {:?} holds it in {}; another node may get it. Delete the NodeOverlayIp to reserve a new address",
                self.cfg.cluster_id,
                self.ipam.name()
            );
            warn!(node = %rec.name, address = %ip, "recorded address is not reserved in the IPAM");
            self.metrics.record(Measurement::ControllerError {
                kind: "address_not_reserved",
            });
            self.event(
                "NodeOverlayIp",
                &rec.name,
                EventType::Warning,
                "AddressNotReserved",
                message,
            )
            .await;
            report.unreserved.push(rec.name.clone());
        }
    }

    /// This cluster id's live reservations whose node this cluster does not
    /// have (not in the node list, confirmed by a live read). At startup,
    /// with an id set by hand, these suggest another cluster uses the same
    /// id.
    pub async fn reservations_of_unknown_nodes(&self) -> Result<Vec<Reservation>, ControllerError> {
        let (ours, nodes) = self.reservations_then_nodes().await?;
        let mut out = Vec::new();
        for r in ours
            .into_iter()
            .filter(|r| !r.is_held() && !nodes.contains(&r.owner.node))
        {
            let live = self.nodes.get_live(&r.owner.node).await;
            if live.map_err(on_store(&r.owner.node))?.is_none() {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The StaticRoute finalizer: put it on every StaticRoute; when one is
    /// being deleted, remove it once no node that exists reports the route
    /// in its NodeOverlayIp (an agent drops its report after removing the
    /// route from its kernel; reports of deleted nodes hold nothing).
    pub async fn reconcile_route(&self, route: &StaticRouteRecord) -> Result<(), ControllerError> {
        let name = route.name.as_str();
        let store_err = on_store(name);
        let has_finalizer = route.finalizers.iter().any(|f| f == FINALIZER);
        if !route.deleting {
            if !has_finalizer && !self.cfg.dry_run {
                self.routes
                    .add_finalizer(name, FINALIZER)
                    .await
                    .map_err(store_err)?;
            }
            return Ok(());
        }
        if !has_finalizer {
            return Ok(());
        }
        let holders = self.nodes_reporting(name).await?;
        if let Some(first) = holders.first() {
            debug!(route = name, nodes = holders.len(), first = %first, "waiting for agents to remove the route");
            return Ok(());
        }
        if self.cfg.dry_run {
            info!(
                route = name,
                "dry run: no node reports the route; would remove the finalizer"
            );
            return Ok(());
        }
        info!(
            route = name,
            "no node reports the route any more; removing finalizer"
        );
        self.routes
            .remove_finalizer(name, FINALIZER)
            .await
            .map_err(store_err)
    }

    /// The names of the nodes (that exist) whose agent reports `route`.
    async fn nodes_reporting(&self, route: &str) -> Result<Vec<String>, ControllerError> {
        let records = self.overlay_ips.list().await.map_err(on_store(route))?;
        let nodes = self.node_names(route).await?;
        Ok(records
            .into_iter()
            .filter(|r| nodes.contains(&r.name))
            .filter(|r| {
                r.agent
                    .as_ref()
                    .is_some_and(|a| a.routes.iter().any(|x| x.route == route))
            })
            .map(|r| r.name)
            .collect())
    }

    async fn node_names(&self, object: &str) -> Result<HashSet<String>, ControllerError> {
        let nodes = self.nodes.list().await.map_err(on_store(object))?;
        Ok(nodes.into_iter().map(|n| n.name).collect())
    }

    /// Sums up each StaticRoute in `names` from the nodes' reports
    /// ([`route_summaries`]) and writes the summaries that differ from the
    /// recorded ones; returns how many it wrote. No rate limit here: the
    /// running controller calls it at most once per
    /// [`ControllerConfig::summary_period`]. A failed write fails the call
    /// after the others were tried.
    pub async fn summarize_routes(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<usize, ControllerError> {
        if names.is_empty() {
            return Ok(0);
        }
        let routes = self.routes.list().await.map_err(on_store(""))?;
        let records = self.overlay_ips.list().await.map_err(on_store(""))?;
        let sums = route_summaries(names, &records, &self.node_names("").await?);
        let (mut written, mut failed) = (0, None);
        for route in routes.iter().filter(|r| names.contains(&r.name)) {
            let Some(new) = sums.get(&route.name) else {
                continue;
            };
            if !summary_changed(route.summary.as_ref(), new) {
                continue;
            }
            if self.cfg.dry_run {
                info!(route = %route.name, applied = new.applied, failed = new.failed, pending = new.pending, "dry run: would write the route summary");
                continue;
            }
            match self.routes.set_summary(&route.name, new).await {
                Ok(()) => {
                    written += 1;
                    debug!(route = %route.name, applied = new.applied, failed = new.failed, pending = new.pending, "route summary written");
                }
                Err(e) => {
                    warn!(route = %route.name, error = %e, "writing the route summary failed");
                    failed.get_or_insert(on_store(&route.name)(e));
                }
            }
        }
        failed.map_or(Ok(written), Err)
    }

    /// Marks `routes` for summary and schedules a pass at the end of the
    /// window, unless one is scheduled.
    fn schedule_summaries(
        &self,
        queue: &WorkQueue<Key>,
        routes: impl IntoIterator<Item = String>,
        delay: Duration,
    ) {
        let mut due = lock(&self.due);
        let mut any = false;
        for r in routes {
            any = true;
            due.routes.insert(r);
        }
        if any {
            let now = tokio::time::Instant::now();
            due.first.get_or_insert(now);
            due.last = Some(now);
        }
        if !due.routes.is_empty() && !due.scheduled {
            due.scheduled = true;
            queue.add_after(Key::Summaries, delay);
        }
    }

    /// One summary pass over the due StaticRoutes; a failed pass is tried
    /// again later (after the backoff's first delay, at least one period).
    async fn summary_pass(&self, queue: &WorkQueue<Key>) -> Next {
        let names = {
            let mut due = lock(&self.due);
            if let Some(wait) = due.wait(tokio::time::Instant::now(), self.cfg.summary_period) {
                // Reports still coming in: wait for them to go quiet.
                queue.add_after(Key::Summaries, wait);
                return Next::Done;
            }
            due.scheduled = false;
            due.first = None;
            due.last = None;
            std::mem::take(&mut due.routes)
        };
        let r = self.summarize_routes(&names).await;
        self.metrics.record(Measurement::ControllerReconciled {
            object: "route_summary",
            ok: r.is_ok(),
        });
        // Deleting StaticRoutes may wait on the reports that changed.
        self.queue_deleting_routes(queue).await;
        if let Err(e) = r {
            let retry = match self.on_error(&e) {
                Next::Done => return Next::Done,
                Next::After(d) => d,
                Next::Backoff => self.cfg.backoff.min,
            };
            self.schedule_summaries(queue, names, retry.max(self.cfg.summary_period));
        }
        Next::Done
    }

    /// Follows one NodeOverlayIp (`None`: deleted): the routes whose
    /// report from this node came, changed or went are due for summary.
    fn note_reports(&self, queue: &WorkQueue<Key>, name: &str, rec: Option<&OverlayIpRecord>) {
        let now: Reports = rec
            .and_then(|r| r.agent.as_ref())
            .map(|a| {
                a.routes
                    .iter()
                    .rev()
                    .map(|r| (r.route.clone(), r.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let before = {
            let mut reported = lock(&self.reported);
            if now.is_empty() {
                reported.remove(name)
            } else {
                reported.insert(name.to_owned(), now.clone())
            }
        }
        .unwrap_or_default();
        let changed: Vec<String> = before
            .keys()
            .chain(now.keys())
            .filter(|r| before.get(*r) != now.get(*r))
            .cloned()
            .collect();
        self.schedule_summaries(queue, changed, self.cfg.summary_period);
    }

    /// The routes `node`'s agent reported (a node that comes or goes
    /// changes their summaries) are due.
    fn node_changed(&self, queue: &WorkQueue<Key>, node: &str) {
        let routes: Vec<String> = lock(&self.reported)
            .get(node)
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        self.schedule_summaries(queue, routes, self.cfg.summary_period);
    }

    async fn reconcile_route_by_name(&self, name: &str) -> Result<(), ControllerError> {
        let routes = self.routes.list().await.map_err(on_store(name))?;
        match routes.into_iter().find(|r| r.name == name) {
            Some(r) => self.reconcile_route(&r).await,
            None => Ok(()),
        }
    }

    async fn handle(&self, key: Key, queue: &WorkQueue<Key>) -> Next {
        match key {
            Key::Node(name) => {
                let span = info_span!("reconcile", node = %name);
                let r = self.reconcile_node(&name).instrument(span).await;
                self.metrics.record(Measurement::ControllerReconciled {
                    object: "node",
                    ok: r.is_ok(),
                });
                match r {
                    Ok(NodeOutcome::Deleting) | Ok(NodeOutcome::Released) => {
                        // Follow up: the record changes (watch) and so may
                        // the node; a short requeue makes it independent of
                        // watch delivery.
                        Next::After(Duration::from_millis(50))
                    }
                    Ok(_) => Next::Done,
                    Err(e) => self.on_error(&e),
                }
            }
            Key::Route(name) => {
                let r = self.reconcile_route_by_name(&name).await;
                self.metrics.record(Measurement::ControllerReconciled {
                    object: "route",
                    ok: r.is_ok(),
                });
                match r {
                    Ok(()) => Next::Done,
                    Err(e) => self.on_error(&e),
                }
            }
            Key::Summaries => self.summary_pass(queue).await,
            Key::Orphans => match self.collect_orphans().await {
                Ok(rep) => {
                    if rep != OrphanReport::default() {
                        info!(
                            released = rep.released.len(),
                            suspected = rep.suspected.len(),
                            purged = rep.purged.len(),
                            duplicates = rep.duplicates.len(),
                            deleted = rep.deleted.len(),
                            unreserved = rep.unreserved.len(),
                            "orphan collection"
                        );
                    }
                    if rep.suspected.is_empty() {
                        Next::Done
                    } else {
                        // The second look, once the grace period has passed.
                        Next::After(self.cfg.orphan_grace)
                    }
                }
                Err(e) => self.on_error(&e),
            },
        }
    }

    fn on_error(&self, e: &ControllerError) -> Next {
        self.metrics
            .record(Measurement::ControllerError { kind: e.kind() });
        if let ControllerError::Ipam {
            source: IpamError::NotLeader { .. },
            ..
        } = e
        {
            // Not this node's problem: the replica is stepping down (the
            // binary says so once); the next leader takes the key over.
            debug!(error = %e, "reconcile stopped: not leading");
            return Next::Done;
        }
        if e.is_retryable() {
            warn!(error = %e, "reconcile failed; retrying with backoff");
            Next::Backoff
        } else {
            warn!(error = %e, retry_in_s = self.cfg.permanent_retry.as_secs(), "reconcile failed; needs attention");
            Next::After(self.cfg.permanent_retry)
        }
    }

    /// Runs the controller until `shutdown` completes: an initial full pass
    /// with orphan collection, then node, NodeOverlayIp and StaticRoute
    /// watches, and a periodic resync.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let queue: WorkQueue<Key> = WorkQueue::new(self.cfg.concurrency, self.cfg.backoff);
        let worker = {
            let this = self.clone();
            let q = queue.clone();
            tokio::spawn(async move {
                let runner = q.clone();
                runner
                    .run(move |k| {
                        let (this, q) = (this.clone(), q.clone());
                        async move { this.handle(k, &q).await }
                    })
                    .await
            })
        };
        let mut node_watch = self.nodes.watch().fuse();
        let mut ip_watch = self.overlay_ips.watch().fuse();
        let mut route_watch = self.routes.watch().fuse();
        self.full_pass(&queue).await;
        self.ready.store(true, Ordering::Relaxed);
        let mut resync = tokio::time::interval(self.cfg.resync);
        resync.tick().await;
        let shutdown = shutdown.fuse();
        futures::pin_mut!(shutdown);
        loop {
            futures::select_biased! {
                () = shutdown => break,
                _ = resync.tick().fuse() => self.full_pass(&queue).await,
                ev = node_watch.next() => match ev {
                    Some(ev) => self.on_node_event(&queue, ev).await,
                    None => { node_watch = self.nodes.watch().fuse(); tokio::time::sleep(Duration::from_secs(1)).await; }
                },
                ev = ip_watch.next() => match ev {
                    Some(ev) => self.on_overlay_ip_event(&queue, ev).await,
                    None => { ip_watch = self.overlay_ips.watch().fuse(); tokio::time::sleep(Duration::from_secs(1)).await; }
                },
                ev = route_watch.next() => match ev {
                    Some(ev) => self.on_route_event(&queue, ev).await,
                    None => { route_watch = self.routes.watch().fuse(); tokio::time::sleep(Duration::from_secs(1)).await; }
                },
            }
        }
        worker.abort();
        info!("controller stopped");
    }

    async fn on_node_event(
        &self,
        queue: &WorkQueue<Key>,
        ev: Result<StoreEvent<NodeInfo>, StoreError>,
    ) {
        match ev {
            Ok(StoreEvent::Applied(n)) => {
                self.node_changed(queue, &n.name);
                queue.add(Key::Node(n.name));
            }
            Ok(StoreEvent::Deleted(name)) => {
                self.node_changed(queue, &name);
                queue.add(Key::Node(name));
                // Deleting StaticRoutes may wait on this node.
                self.queue_deleting_routes(queue).await;
            }
            Ok(StoreEvent::Restarted(all)) => {
                for n in all {
                    queue.add(Key::Node(n.name));
                }
                let every: Vec<String> = lock(&self.reported)
                    .values()
                    .flat_map(|r| r.keys().cloned())
                    .collect();
                self.schedule_summaries(queue, every, self.cfg.summary_period);
            }
            Err(e) => {
                warn!(error = %e, "node watch error; relisting");
                self.full_pass(queue).await;
            }
        }
    }

    async fn on_overlay_ip_event(
        &self,
        queue: &WorkQueue<Key>,
        ev: Result<StoreEvent<OverlayIpRecord>, StoreError>,
    ) {
        match ev {
            Ok(StoreEvent::Applied(r)) => {
                self.note_reports(queue, &r.name, Some(&r));
                queue.add(Key::Node(r.name));
            }
            Ok(StoreEvent::Deleted(name)) => {
                self.note_reports(queue, &name, None);
                queue.add(Key::Node(name));
            }
            Ok(StoreEvent::Restarted(all)) => self.restart_reports(queue, all),
            Err(e) => {
                warn!(error = %e, "NodeOverlayIp watch error; relisting");
                self.full_pass(queue).await;
            }
        }
    }

    /// A NodeOverlayIp watch restart: the report index is rebuilt; every
    /// route named before or now is due.
    fn restart_reports(&self, queue: &WorkQueue<Key>, all: Vec<OverlayIpRecord>) {
        let before = std::mem::take(&mut *lock(&self.reported));
        let mut due: BTreeSet<String> = before.into_values().flat_map(Reports::into_keys).collect();
        for r in all {
            self.note_reports(queue, &r.name, Some(&r));
            queue.add(Key::Node(r.name));
        }
        due.extend(
            lock(&self.reported)
                .values()
                .flat_map(|r| r.keys().cloned()),
        );
        self.schedule_summaries(queue, due, self.cfg.summary_period);
    }

    async fn on_route_event(
        &self,
        queue: &WorkQueue<Key>,
        ev: Result<StoreEvent<StaticRouteRecord>, StoreError>,
    ) {
        match ev {
            Ok(StoreEvent::Applied(r)) => {
                self.schedule_summaries(queue, [r.name.clone()], self.cfg.summary_period);
                queue.add(Key::Route(r.name));
            }
            Ok(StoreEvent::Deleted(_)) => {}
            Ok(StoreEvent::Restarted(all)) => {
                for r in all {
                    self.schedule_summaries(queue, [r.name.clone()], self.cfg.summary_period);
                    queue.add(Key::Route(r.name));
                }
            }
            Err(e) => {
                warn!(error = %e, "StaticRoute watch error; relisting");
                self.full_pass(queue).await;
            }
        }
    }

    async fn queue_deleting_routes(&self, queue: &WorkQueue<Key>) {
        if let Ok(routes) = self.routes.list().await {
            for r in routes.into_iter().filter(|r| r.deleting) {
                queue.add(Key::Route(r.name));
            }
        }
    }

    async fn full_pass(&self, queue: &WorkQueue<Key>) {
        match self.nodes.list().await {
            Ok(nodes) => nodes.into_iter().for_each(|n| queue.add(Key::Node(n.name))),
            Err(e) => warn!(error = %e, "listing nodes failed"),
        }
        match self.overlay_ips.list().await {
            Ok(recs) => {
                for r in recs {
                    self.note_reports(queue, &r.name, Some(&r));
                    queue.add(Key::Node(r.name));
                }
            }
            Err(e) => warn!(error = %e, "listing NodeOverlayIps failed"),
        }
        match self.routes.list().await {
            Ok(routes) => {
                let names: Vec<String> = routes.into_iter().map(|r| r.name).collect();
                self.schedule_summaries(queue, names.clone(), self.cfg.summary_period);
                names.into_iter().for_each(|n| queue.add(Key::Route(n)));
            }
            Err(e) => warn!(error = %e, "listing StaticRoutes failed"),
        }
        queue.add(Key::Orphans);
    }
}
