//! What the programmer keeps between calls, shared by full applies,
//! updates, interface removal and drift repair: the sockets, the counters,
//! and what the last apply wanted and found.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::RouteType;
use overlay_core::{
    ApplyReport, DesiredNodeState, DriftEvent, ProgrammerError, RouteKey, RouteScope, RouteSpec,
};
use tokio::sync::{Mutex, broadcast};

use crate::errno::{CONNECTION_CLOSED, errno_error};
use crate::read::{self, Addr, KernelRoute, Link};
use crate::socket::BatchSocket;
use crate::write::{Write, Writer};

/// Counters of a programmer, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriftCounters {
    /// Write requests sent to the kernel, by applies and repairs together.
    pub writes: u64,
    /// Applies requested through [`overlay_core::RouteProgrammer::apply`].
    pub applies: u64,
    /// Drift detections: notifications about our state changed by someone
    /// else (each may cause a repair).
    pub drift_events: u64,
    /// Repairs that wrote to the kernel.
    pub repairs: u64,
    /// Write requests sent by repairs.
    pub repair_writes: u64,
    /// Full re-applies of the last desired state triggered by drift (link or
    /// address changes, overruns).
    pub resyncs: u64,
    /// Notification overruns (`ENOBUFS`), each followed by a resync.
    pub overruns: u64,
    /// Incremental updates requested through
    /// [`overlay_core::RouteProgrammer::update`].
    pub updates: u64,
    /// Dumps of the kernel's routes, links or addresses (each one counts):
    /// full applies dump, [`overlay_core::RouteProgrammer::update`] never
    /// does.
    pub dumps: u64,
}

/// The live counters behind [`DriftCounters`].
#[derive(Default)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
    pub applies: AtomicU64,
    pub drift_events: AtomicU64,
    pub repairs: AtomicU64,
    pub repair_writes: AtomicU64,
    pub resyncs: AtomicU64,
    pub overruns: AtomicU64,
    pub updates: AtomicU64,
    pub dumps: AtomicU64,
}

impl Counters {
    /// The counters now.
    pub(crate) fn snapshot(&self) -> DriftCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DriftCounters {
            writes: g(&self.writes),
            applies: g(&self.applies),
            drift_events: g(&self.drift_events),
            repairs: g(&self.repairs),
            repair_writes: g(&self.repair_writes),
            resyncs: g(&self.resyncs),
            overruns: g(&self.overruns),
            updates: g(&self.updates),
            dumps: g(&self.dumps),
        }
    }

    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A desired route as the last apply or update meant to install it: the
/// route and the device it goes out of. Drift repair puts it back from
/// this when it disappears or changes.
#[derive(Debug, Clone)]
pub(crate) struct RouteIntent {
    pub spec: RouteSpec,
    pub oif: Option<u32>,
}

/// A direct (connected) unicast route: network, output device, table.
pub(crate) type Direct = (IpNetwork, Option<u32>, u32);

/// The routes overlay did not install, by key: every one on each key (the
/// kernel may keep several, e.g. appended ones or two connected routes).
pub(crate) type ForeignRoutes = HashMap<RouteKey, Vec<KernelRoute>>;

/// Notes `r`, a route overlay did not install, in `foreign`.
pub(crate) fn foreign_added(foreign: &mut ForeignRoutes, r: KernelRoute) {
    let on_key = foreign.entry(r.key).or_default();
    if !on_key.iter().any(|x| same_route(x, &r)) {
        on_key.push(r);
    }
}

/// Forgets `r`, a route overlay did not install that is gone, in `foreign`.
pub(crate) fn foreign_gone(foreign: &mut ForeignRoutes, r: &KernelRoute) {
    if let Some(on_key) = foreign.get_mut(&r.key) {
        on_key.retain(|x| !same_route(x, r));
        if on_key.is_empty() {
            foreign.remove(&r.key);
        }
    }
}

/// True when `a` and `b` are the same route on one key (its notifications
/// describe it the same way).
fn same_route(a: &KernelRoute, b: &KernelRoute) -> bool {
    a.protocol == b.protocol && a.gateway == b.gateway && a.oif == b.oif && a.kind == b.kind
}

/// What the last apply wanted and found; drift repair and incremental
/// updates work from it.
#[derive(Default)]
pub(crate) struct State {
    /// The last full apply's desired state, changed by updates since.
    pub desired: Option<DesiredNodeState>,
    /// What each desired route's key should hold.
    pub intents: HashMap<RouteKey, RouteIntent>,
    /// Links that matter (overlay, parent, route devices): name → (index, up).
    pub watched_links: HashMap<String, (u32, bool)>,
    pub overlay_index: Option<u32>,
    /// The outcome of every desired route as of the last apply or update.
    pub last_report: Option<ApplyReport>,
    /// True when the last full apply got through its routes, so that the
    /// caches below describe the kernel and updates may use them.
    pub synced: bool,
    /// Every link the last full apply saw (and links updates looked up).
    pub all_links: HashMap<String, Link>,
    /// Direct routes (for on-link checks without a dump).
    pub direct: Vec<Direct>,
    /// Our routes in the kernel, as last seen or written.
    pub ours: HashMap<RouteKey, KernelRoute>,
    /// Routes overlay did not install, as last seen: an update takes over
    /// a route added with `ip route` from this.
    pub foreign: ForeignRoutes,
    /// Tables and devices of every route this programmer installed or
    /// found in place since it started: where stale routes may go.
    pub scope: RouteScope,
}

impl State {
    /// Name of link `index` among the links last seen.
    pub(crate) fn link_name(&self, index: u32) -> Option<&str> {
        self.all_links
            .values()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    }

    /// Forgets a direct route that is gone.
    pub(crate) fn direct_gone(&mut self, d: &Direct) {
        self.direct.retain(|x| x != d);
    }

    /// Notes a direct route that appeared.
    pub(crate) fn direct_added(&mut self, d: Direct) {
        if !self.direct.contains(&d) {
            self.direct.push(d);
        }
    }
}

/// The direct-route entry of a kernel route, when it is one (unicast,
/// without a gateway, single path).
pub(crate) fn as_direct(r: &KernelRoute) -> Option<Direct> {
    (r.gateway.is_none() && !r.multipath && r.kind == RouteType::Unicast)
        .then(|| (r.key.destination.network(), r.oif, r.key.table))
}

/// True when the kernel route already is what `spec` asks for.
pub(crate) fn matches_spec(k: &KernelRoute, spec: &RouteSpec, oif: Option<u32>) -> bool {
    !k.multipath
        && k.kind == RouteType::Unicast
        && k.gateway == spec.gateway
        && (oif.is_none() || k.oif == oif)
}

/// The programmer's sockets, state and counters, shared by its calls and
/// the drift watcher.
pub(crate) struct Inner {
    /// rtnetlink handle for link and address dumps and look-ups.
    pub handle: rtnetlink::Handle,
    /// Netlink port id of the rtnetlink socket: notifications carrying it
    /// were caused by our own requests.
    pub port: u32,
    /// Blocking socket for route dumps and batches of writes (its port id
    /// is ours too).
    pub batch: Arc<BatchSocket>,
    /// Sends every write.
    pub writer: Writer,
    pub protocol: u8,
    pub state: Mutex<State>,
    pub counters: Counters,
    pub events: broadcast::Sender<DriftEvent>,
}

impl Inner {
    /// All routes, from the batch socket (off the async threads).
    pub(crate) async fn dump_routes(&self) -> Result<Vec<KernelRoute>, ProgrammerError> {
        Counters::add(&self.counters.dumps, 1);
        let batch = self.batch.clone();
        match tokio::task::spawn_blocking(move || batch.dump_routes()).await {
            Ok(r) => r.map_err(|e| errno_error("dump routes", e)),
            Err(_) => Err(errno_error("dump routes", CONNECTION_CLOSED)),
        }
    }

    /// All links by name (a dump).
    pub(crate) async fn dump_links(&self) -> Result<HashMap<String, Link>, ProgrammerError> {
        Counters::add(&self.counters.dumps, 1);
        read::dump_links(&self.handle).await
    }

    /// All addresses (a dump).
    pub(crate) async fn dump_addrs(&self) -> Result<Vec<Addr>, ProgrammerError> {
        Counters::add(&self.counters.dumps, 1);
        read::dump_addrs(&self.handle).await
    }

    /// Counts `n` writes sent.
    pub(crate) fn count_writes(&self, n: u64) {
        Counters::add(&self.counters.writes, n);
    }

    /// One write whose failure aborts the call (`call` names it in the
    /// error); counted in `writes` and the counters.
    pub(crate) async fn must_write(
        &self,
        call: String,
        write: Write,
        writes: &mut u64,
    ) -> Result<(), ProgrammerError> {
        *writes += 1;
        self.count_writes(1);
        self.writer
            .send_one(write)
            .await
            .map_err(|e| errno_error(&call, e))
    }
}
