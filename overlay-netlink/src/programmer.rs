//! The programmer: apply, interface removal, gateway discovery.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkMessage, MacVlanMode};
use netlink_packet_route::route::RouteType;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, TokioSocket};
use overlay_core::model::MAIN_TABLE;
use overlay_core::{
    ApplyReport, Cidr, DesiredNodeState, DiscoveredRoute, DriftEvent, InterfaceName,
    ProgrammerError, RouteChanges, RouteKey, RouteOutcome, RouteProgrammer, RouteResult, RouteScope,
    RouteSpec,
};
use rtnetlink::{LinkMacVlan, LinkUnspec};
use tokio::sync::{Mutex, broadcast};
use tokio::task::JoinHandle;

use crate::ProgrammerConfig;
use crate::kernel::{
    self, Addr, CREATE_EXCL, CREATE_REPLACE, EADDRNOTAVAIL, EEXIST, EHOSTUNREACH, ENETUNREACH,
    ENODEV, ENOENT, EPERM, ESRCH, Errno, KernelRoute, Link, REQUEST_ACK, errno_error,
    errno_message,
};

/// Counters of a programmer, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriftCounters {
    /// Write requests sent to the kernel, by applies and repairs together.
    pub writes: u64,
    /// Applies requested through [`RouteProgrammer::apply`].
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
    /// Incremental updates requested through [`RouteProgrammer::update`].
    pub updates: u64,
    /// Dumps of the kernel's routes, links or addresses (each one counts):
    /// full applies dump, [`RouteProgrammer::update`] never does.
    pub dumps: u64,
}

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
    fn snapshot(&self) -> DriftCounters {
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
}

/// A desired route as planned by the last apply.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub spec: RouteSpec,
    pub oif: Option<u32>,
}

/// A direct (connected) unicast route: network, output device, table.
pub(crate) type Direct = (IpNetwork, Option<u32>, u32);

/// What the last apply wanted and found; drift repair and incremental
/// updates work from it.
#[derive(Default)]
pub(crate) struct State {
    /// The last full apply's desired state, changed by updates since.
    pub desired: Option<DesiredNodeState>,
    pub plan: HashMap<RouteKey, Planned>,
    /// Links that matter (overlay, parent, route devices): name → (index, up).
    pub links: HashMap<String, (u32, bool)>,
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
    /// Tables and devices of every route this programmer installed or
    /// found in place since it started: where stale routes may go.
    pub scope: RouteScope,
}

impl State {
    /// Name of link `index` among the links last seen.
    fn link_name(&self, index: u32) -> Option<&str> {
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

pub(crate) struct Inner {
    pub handle: rtnetlink::Handle,
    /// Netlink port id of our request socket: notifications carrying it were
    /// caused by our own writes.
    pub port: u32,
    /// Blocking socket for bulk route writes (its port id is ours too).
    pub bulk: Arc<kernel::Bulk>,
    pub protocol: u8,
    pub requests_per_send: usize,
    pub state: Mutex<State>,
    pub counters: Counters,
    pub events: broadcast::Sender<DriftEvent>,
}

struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// [`RouteProgrammer`] over rtnetlink, bound to one network namespace.
///
/// Create it inside a tokio runtime; its background tasks (the netlink
/// connection and the drift watcher) run on that runtime and stop when the
/// programmer is dropped.
pub struct NetlinkProgrammer {
    inner: Arc<Inner>,
    _tasks: Tasks,
}

impl std::fmt::Debug for NetlinkProgrammer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkProgrammer")
            .field("port", &self.inner.port)
            .field("protocol", &self.inner.protocol)
            .finish_non_exhaustive()
    }
}

/// Notification groups of the drift watcher: link, IPv4/IPv6 addresses and
/// routes (RTNLGRP_LINK, _IPV4_IFADDR, _IPV4_ROUTE, _IPV6_IFADDR,
/// _IPV6_ROUTE).
const DRIFT_GROUPS: u32 = group(1) | group(5) | group(7) | group(9) | group(11);

/// The bind mask bit of multicast group `n` (RTNLGRP_*).
const fn group(n: u32) -> u32 {
    1 << (n - 1)
}

/// Receive buffer of the request socket (root may exceed `rmem_max`).
const RCVBUF: usize = 4 << 20;

fn set_rcvbuf(sock: &netlink_sys::Socket, bytes: usize) {
    if nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::RcvBufForce, &bytes).is_err() {
        let _ = sock.set_rx_buf_sz(bytes);
    }
}

impl NetlinkProgrammer {
    /// Checks the route protocol ([`crate::check_route_protocol`]: not 0–4,
    /// not named for other software in the configured protocol files),
    /// opens the netlink sockets in the configured namespace and starts the
    /// drift watcher. Must be called inside a tokio runtime.
    pub async fn new(config: ProgrammerConfig) -> Result<Self, ProgrammerError> {
        crate::check_route_protocol(
            config.route_protocol,
            &config.protocol_name,
            &config.protocol_files,
        )?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| ProgrammerError::Namespace {
            namespace: namespace_label(&config),
            message: "NetlinkProgrammer::new must be called inside a tokio runtime".into(),
        })?;
        let drift = config.drift_repair;
        let notification_buffer = config.notification_buffer;
        let (conn, handle, port, mcast, bulk) =
            kernel::in_netns(config.netns.as_deref(), &rt, || {
                let (mut conn, handle, _) = rtnetlink::new_connection()?;
                let sock = conn.socket_mut().socket_mut();
                let addr = sock.bind_auto()?;
                let _ = sock.set_cap_ack(true);
                set_rcvbuf(sock, RCVBUF);
                let mcast = if drift {
                    let mut m = TokioSocket::new(NETLINK_ROUTE)?;
                    m.socket_mut()
                        .bind(&netlink_sys::SocketAddr::new(0, DRIFT_GROUPS))?;
                    set_rcvbuf(m.socket_ref(), notification_buffer);
                    Some(m)
                } else {
                    None
                };
                let bulk = kernel::Bulk::open()?;
                Ok((conn, handle, addr.port_number(), mcast, bulk))
            })?;
        let mut tasks = vec![rt.spawn(conn)];
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            handle,
            port,
            bulk: Arc::new(bulk),
            protocol: config.route_protocol,
            requests_per_send: config.requests_per_send.max(1),
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            events,
        });
        if let Some(m) = mcast {
            tasks.push(rt.spawn(crate::drift::watch(inner.clone(), m)));
        }
        Ok(Self {
            inner,
            _tasks: Tasks(tasks),
        })
    }

    /// The counters (writes, repairs, resyncs, overruns) so far.
    pub fn counters(&self) -> DriftCounters {
        self.inner.counters.snapshot()
    }

    /// The report of the last apply, including re-applies by drift repair.
    pub async fn last_report(&self) -> Option<ApplyReport> {
        self.inner.state.lock().await.last_report.clone()
    }

    /// The route protocol number marking our routes.
    pub fn route_protocol(&self) -> u8 {
        self.inner.protocol
    }
}

fn namespace_label(config: &ProgrammerConfig) -> String {
    config
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "current".into())
}

/// One write of an apply.
struct Op {
    /// Index of the desired route, or `None` for a removal.
    route: Option<usize>,
    /// The route's key.
    key: RouteKey,
    msg: RouteNetlinkMessage,
    flags: u16,
    result: RouteResult,
}

impl Op {
    /// Adds (or, with `CREATE_REPLACE`, replaces) desired route `i`.
    fn add(
        i: usize,
        key: RouteKey,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
        protocol: u8,
        (flags, result): (u16, RouteResult),
    ) -> Self {
        Op {
            route: Some(i),
            key,
            msg: RouteNetlinkMessage::NewRoute(kernel::route_message(&key, gateway, oif, protocol)),
            flags,
            result,
        }
    }
}

/// Sends `ops` over the bulk socket; results in the order given.
async fn send_all(inner: &Inner, ops: Vec<Op>) -> Vec<(Op, Result<(), Errno>)> {
    if ops.is_empty() {
        return Vec::new();
    }
    let msgs: Vec<(RouteNetlinkMessage, u16)> =
        ops.iter().map(|op| (op.msg.clone(), op.flags)).collect();
    let bulk = inner.bulk.clone();
    let per_send = inner.requests_per_send;
    let results = match tokio::task::spawn_blocking(move || bulk.send_all(msgs, per_send)).await {
        Ok(r) => r,
        Err(_) => vec![Err(kernel::CONNECTION_CLOSED); ops.len()],
    };
    ops.into_iter().zip(results).collect()
}

impl Inner {
    /// All routes, from the bulk socket (off the async threads).
    async fn dump_routes(&self) -> Result<Vec<KernelRoute>, ProgrammerError> {
        self.counters.dumps.fetch_add(1, Ordering::Relaxed);
        let bulk = self.bulk.clone();
        match tokio::task::spawn_blocking(move || bulk.dump_routes()).await {
            Ok(r) => r.map_err(|e| errno_error("dump routes", e)),
            Err(_) => Err(errno_error("dump routes", kernel::CONNECTION_CLOSED)),
        }
    }

    /// All links by name (a dump).
    async fn dump_links(&self) -> Result<HashMap<String, Link>, ProgrammerError> {
        self.counters.dumps.fetch_add(1, Ordering::Relaxed);
        kernel::dump_links(&self.handle).await
    }

    /// All addresses (a dump).
    async fn dump_addrs(&self) -> Result<Vec<Addr>, ProgrammerError> {
        self.counters.dumps.fetch_add(1, Ordering::Relaxed);
        kernel::dump_addrs(&self.handle).await
    }

    fn count_writes(&self, n: u64) {
        self.counters.writes.fetch_add(n, Ordering::Relaxed);
    }

    /// One write whose failure aborts the apply.
    async fn must_write(
        &self,
        call: String,
        msg: RouteNetlinkMessage,
        flags: u16,
        writes: &mut u64,
    ) -> Result<(), ProgrammerError> {
        *writes += 1;
        self.count_writes(1);
        kernel::write(&self.handle, msg, flags)
            .await
            .map_err(|e| errno_error(&call, e))
    }

    /// Makes the kernel match `desired`; the caller holds the state lock.
    pub(crate) async fn apply_locked(
        &self,
        state: &mut State,
        desired: &DesiredNodeState,
    ) -> Result<ApplyReport, ProgrammerError> {
        state.desired = Some(desired.clone());
        // Until this apply got through its routes, the caches do not
        // describe the kernel for the desired state: no updates.
        state.synced = false;
        let mut report = ApplyReport::default();
        let mut writes = 0u64;
        let result = self
            .apply_inner(state, desired, &mut report, &mut writes)
            .await;
        report.kernel_writes = writes;
        match result {
            Ok(()) => {
                state.last_report = Some(report.clone());
                Ok(report)
            }
            Err(e) => Err(e),
        }
    }

    async fn apply_inner(
        &self,
        state: &mut State,
        desired: &DesiredNodeState,
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<(), ProgrammerError> {
        let mut links = self.dump_links().await?;
        let mut overlay_index = None;
        if let Some(ov) = &desired.overlay {
            overlay_index = Some(self.apply_overlay(ov, &mut links, report, writes).await?);
        }

        // Routes.
        let routes = self.dump_routes().await?;
        let names: HashMap<u32, String> =
            links.values().map(|l| (l.index, l.name.clone())).collect();
        let name_of = |oif: Option<u32>| -> Option<InterfaceName> {
            oif.and_then(|i| names.get(&i))
                .and_then(|n| InterfaceName::parse("device", n).ok())
        };
        let mut ours: HashMap<RouteKey, KernelRoute> = HashMap::new();
        let mut foreign: HashMap<RouteKey, u8> = HashMap::new();
        let mut direct: Vec<Direct> = Vec::new();
        for r in routes {
            if let Some(d) = as_direct(&r) {
                direct.push(d);
            }
            if r.protocol == self.protocol {
                ours.insert(r.key, r);
            } else {
                foreign.insert(r.key, r.protocol);
            }
        }

        // Where stale routes may be removed: what the caller names, what
        // this process installed or found before, and (below) the tables
        // and devices of the desired routes.
        let mut scope = desired.scope.clone();
        scope.extend(&state.scope);

        let n = desired.routes.len();
        let mut results: Vec<Option<RouteResult>> = vec![None; n];
        let mut oifs: Vec<Option<u32>> = vec![None; n];
        let mut seen: HashMap<RouteKey, usize> = HashMap::with_capacity(n);
        let mut plan: HashMap<RouteKey, Planned> = HashMap::with_capacity(n);
        let mut adds: Vec<Op> = Vec::new();
        for (i, spec) in desired.routes.iter().enumerate() {
            scope.add_route(spec);
            let key = spec.key();
            if let Some(&j) = seen.get(&key) {
                results[i] = Some(RouteResult::Failed(clash_message(spec, &desired.routes[j])));
                continue;
            }
            seen.insert(key, i);
            if let Err(m) = check_family(spec) {
                results[i] = Some(RouteResult::Failed(m));
                continue;
            }
            let dev_oif = match &spec.device {
                Some(d) => match links.get(d.as_str()) {
                    Some(l) => Some(l.index),
                    None => {
                        results[i] = Some(RouteResult::Failed(missing_device(spec, d)));
                        continue;
                    }
                },
                None => None,
            };
            let existing = ours.get(&key);
            let planned = match existing {
                Some(k) if matches_spec(k, spec, dev_oif) => {
                    results[i] = Some(RouteResult::Unchanged);
                    k.oif
                }
                _ => match route_oif(spec, &key, dev_oif, &direct, existing) {
                    Ok(oif) => oif,
                    Err(m) => {
                        plan.insert(
                            key,
                            Planned {
                                spec: spec.clone(),
                                oif: dev_oif,
                            },
                        );
                        results[i] = Some(RouteResult::Failed(m));
                        continue;
                    }
                },
            };
            plan.insert(
                key,
                Planned {
                    spec: spec.clone(),
                    oif: planned,
                },
            );
            oifs[i] = planned;
            if let Some(d) = name_of(planned) {
                scope.devices.insert(d);
            }
            if results[i].is_some() {
                continue; // unchanged
            }
            if existing.is_none()
                && let Some(p) = foreign.get(&key)
            {
                results[i] = Some(RouteResult::Failed(format!(
                    "{} (table {}, metric {}) is already routed by a route overlay did not install (protocol {p}); overlay never touches it: delete that route or give this one another metric",
                    key.destination, key.table, key.metric
                )));
                continue;
            }
            let (flags, result) = if existing.is_some() {
                (CREATE_REPLACE, RouteResult::Replaced)
            } else {
                (CREATE_EXCL, RouteResult::Added)
            };
            adds.push(Op::add(
                i,
                key,
                spec.gateway,
                planned,
                self.protocol,
                (flags, result),
            ));
        }

        // Removals of our routes no longer desired (none when the caller
        // could not tell which routes are no longer desired), only in
        // scope, never a default route.
        let mut dels = Vec::new();
        let mut removed_specs = Vec::new();
        let (mut defaults_kept, mut out_of_scope) = (0usize, 0usize);
        for (key, r) in &ours {
            if desired.keep_unlisted || seen.contains_key(key) {
                continue;
            }
            if key.destination.prefix() == 0 {
                defaults_kept += 1;
                continue;
            }
            let device = match r.oif {
                None => None,
                Some(i) => match names.get(&i) {
                    Some(n) => Some(n.as_str()),
                    // A device we cannot name cannot be judged in scope.
                    None => {
                        out_of_scope += 1;
                        continue;
                    }
                },
            };
            if !scope.allows(key.table, device) {
                out_of_scope += 1;
                continue;
            }
            dels.push(Op {
                route: None,
                key: *key,
                msg: RouteNetlinkMessage::DelRoute(kernel::route_delete_message(
                    key,
                    r.oif,
                    self.protocol,
                )),
                flags: REQUEST_ACK,
                result: RouteResult::Unchanged,
            });
            removed_specs.push(kernel::kernel_route_spec(r, &names));
        }
        if defaults_kept + out_of_scope > 0 {
            tracing::debug!(
                defaults_kept,
                out_of_scope,
                "left routes of ours that are no longer desired in place: default routes are never removed, and routes are removed only in the tables and devices overlay works in"
            );
        }
        *writes += (dels.len() + adds.len()) as u64;
        self.count_writes((dels.len() + adds.len()) as u64);
        let mut known = Known {
            ours: &mut ours,
            direct: &mut direct,
            protocol: self.protocol,
        };
        for ((op, r), spec) in send_all(self, dels).await.into_iter().zip(removed_specs) {
            known.deleted(op.key, spec, r, report)?;
        }
        for (op, r) in send_all(self, adds).await {
            let Some(i) = op.route else { continue };
            results[i] = Some(known.added(&op, &desired.routes[i], oifs[i], r)?);
        }
        report.routes = outcomes(&desired.routes, results, oifs, name_of, &mut state.scope);

        // Remember what drift repair and updates need.
        let mut relevant: HashSet<&str> = HashSet::new();
        if let Some(ov) = &desired.overlay {
            relevant.insert(ov.name.as_str());
            relevant.insert(ov.parent.as_str());
        }
        for r in &desired.routes {
            if let Some(d) = &r.device {
                relevant.insert(d.as_str());
            }
        }
        state.links = relevant
            .into_iter()
            .filter_map(|n| links.get(n).map(|l| (n.to_owned(), (l.index, l.up))))
            .collect();
        state.plan = plan;
        state.overlay_index = overlay_index;
        state.all_links = links;
        state.direct = direct;
        state.ours = ours;
        state.synced = true;
        Ok(())
    }

    /// Applies `changes` on top of the last full apply without dumping
    /// anything; the caller holds the state lock.
    pub(crate) async fn update_locked(
        &self,
        state: &mut State,
        changes: &RouteChanges,
    ) -> Result<ApplyReport, ProgrammerError> {
        let unsupported = || ProgrammerError::Unsupported {
            call: "update before the first successful full apply".into(),
        };
        if !state.synced {
            return Err(unsupported());
        }
        let Some(mut desired) = state.desired.take() else {
            return Err(unsupported());
        };
        let mut report = ApplyReport::default();
        let result = self
            .update_inner(state, &mut desired, changes, &mut report)
            .await;
        state.desired = Some(desired);
        result.map(|()| report)
    }

    async fn update_inner(
        &self,
        state: &mut State,
        desired: &mut DesiredNodeState,
        changes: &RouteChanges,
        report: &mut ApplyReport,
    ) -> Result<(), ProgrammerError> {
        let upsert_keys: HashSet<RouteKey> = changes.upsert.iter().map(RouteSpec::key).collect();
        let mut scope = desired.scope.clone();
        scope.extend(&state.scope);

        // Removals first. A removal whose key comes back in `upsert` is a
        // replace: the upsert writes over it.
        let mut ops: Vec<Op> = Vec::new();
        let mut removed_specs: Vec<RouteSpec> = Vec::new();
        for r in &changes.remove {
            let key = r.key();
            let before = desired.routes.len();
            desired.routes.retain(|d| d != r);
            if desired.routes.len() != before {
                // It was desired: its table and device are in scope.
                scope.add_route(r);
                if let Some(n) = state
                    .plan
                    .get(&key)
                    .and_then(|p| p.oif)
                    .and_then(|o| state.link_name(o))
                    .and_then(|n| InterfaceName::parse("device", n).ok())
                {
                    scope.devices.insert(n);
                }
            }
            if upsert_keys.contains(&key)
                || desired.routes.iter().any(|d| d.key() == key)
            {
                continue;
            }
            state.plan.remove(&key);
            let Some(k) = state.ours.get(&key) else {
                continue; // nothing of ours there
            };
            if key.destination.prefix() == 0 {
                tracing::debug!(route = %r, "not removing a default route: overlay never removes one");
                continue;
            }
            let device = match k.oif {
                None => None,
                Some(i) => match state.link_name(i) {
                    Some(n) => Some(n),
                    None => {
                        tracing::debug!(route = %r, "not removing a route out of a device overlay cannot name");
                        continue;
                    }
                },
            };
            if !scope.allows(key.table, device) {
                tracing::debug!(route = %r, "not removing a route outside the tables and devices overlay works in");
                continue;
            }
            let names: HashMap<u32, String> = k
                .oif
                .zip(device)
                .map(|(i, n)| (i, n.to_owned()))
                .into_iter()
                .collect();
            removed_specs.push(kernel::kernel_route_spec(k, &names));
            ops.push(Op {
                route: None,
                key,
                msg: RouteNetlinkMessage::DelRoute(kernel::route_delete_message(
                    &key,
                    k.oif,
                    self.protocol,
                )),
                flags: REQUEST_ACK,
                result: RouteResult::Unchanged,
            });
        }
        let n_dels = ops.len();

        // Upserts, validated like a full apply against what it found.
        let n = changes.upsert.len();
        let mut results: Vec<Option<RouteResult>> = vec![None; n];
        let mut oifs: Vec<Option<u32>> = vec![None; n];
        let mut seen: HashMap<RouteKey, usize> = HashMap::with_capacity(n);
        for (i, spec) in changes.upsert.iter().enumerate() {
            let key = spec.key();
            if let Some(&j) = seen.get(&key) {
                // Kept beside the first, as a full apply would report it.
                desired.routes.push(spec.clone());
                results[i] = Some(RouteResult::Failed(clash_message(spec, &changes.upsert[j])));
                continue;
            }
            seen.insert(key, i);
            desired.routes.retain(|d| d.key() != key);
            desired.routes.push(spec.clone());
            if let Err(m) = check_family(spec) {
                state.plan.remove(&key);
                results[i] = Some(RouteResult::Failed(m));
                continue;
            }
            let dev_oif = match &spec.device {
                Some(d) => match self.cached_link(state, d).await? {
                    Some(l) => {
                        state.links.insert(d.to_string(), (l.index, l.up));
                        Some(l.index)
                    }
                    None => {
                        state.plan.remove(&key);
                        results[i] = Some(RouteResult::Failed(missing_device(spec, d)));
                        continue;
                    }
                },
                None => None,
            };
            let existing = state.ours.get(&key);
            let planned = match existing {
                Some(k) if matches_spec(k, spec, dev_oif) => {
                    results[i] = Some(RouteResult::Unchanged);
                    k.oif
                }
                _ => match route_oif(spec, &key, dev_oif, &state.direct, existing) {
                    Ok(oif) => oif,
                    Err(m) => {
                        state.plan.insert(
                            key,
                            Planned {
                                spec: spec.clone(),
                                oif: dev_oif,
                            },
                        );
                        results[i] = Some(RouteResult::Failed(m));
                        continue;
                    }
                },
            };
            oifs[i] = planned;
            let (flags, result) = if existing.is_some() {
                (CREATE_REPLACE, RouteResult::Replaced)
            } else {
                // Not ours: a foreign route on the key answers EEXIST.
                (CREATE_EXCL, RouteResult::Added)
            };
            state.plan.insert(
                key,
                Planned {
                    spec: spec.clone(),
                    oif: planned,
                },
            );
            if results[i].is_some() {
                continue; // unchanged
            }
            ops.push(Op::add(
                i,
                key,
                spec.gateway,
                planned,
                self.protocol,
                (flags, result),
            ));
        }

        report.kernel_writes = ops.len() as u64;
        self.count_writes(ops.len() as u64);
        let mut removed_specs = removed_specs.into_iter();
        let mut known = Known {
            ours: &mut state.ours,
            direct: &mut state.direct,
            protocol: self.protocol,
        };
        for (k, (op, r)) in send_all(self, ops).await.into_iter().enumerate() {
            if k < n_dels {
                if let Some(spec) = removed_specs.next() {
                    known.deleted(op.key, spec, r, report)?;
                }
                continue;
            }
            let Some(i) = op.route else { continue };
            results[i] = Some(known.added(&op, &changes.upsert[i], oifs[i], r)?);
        }
        let links = &state.all_links;
        let name_of = |oif: Option<u32>| {
            let index = oif?;
            let l = links.values().find(|l| l.index == index)?;
            InterfaceName::parse("device", &l.name).ok()
        };
        report.routes = outcomes(&changes.upsert, results, oifs, name_of, &mut state.scope);

        // The last report follows: outcomes of the routes desired now.
        if let Some(last) = &mut state.last_report {
            last.routes
                .retain(|o| !upsert_keys.contains(&o.route.key()));
            last.routes.retain(|o| !changes.remove.contains(&o.route));
            last.routes.extend(report.routes.iter().cloned());
            last.routes_removed = report.routes_removed.clone();
            last.kernel_writes = report.kernel_writes;
            last.interface_created = false;
            last.interface_up = false;
            last.address_added = None;
            last.addresses_removed.clear();
        }
        Ok(())
    }

    /// The link named `name` as the last full apply saw it, or asked for
    /// alone (not a dump) when it has appeared since.
    async fn cached_link(
        &self,
        state: &mut State,
        name: &InterfaceName,
    ) -> Result<Option<Link>, ProgrammerError> {
        if let Some(l) = state.all_links.get(name.as_str()) {
            return Ok(Some(l.clone()));
        }
        let l = kernel::get_link(&self.handle, name.as_str()).await?;
        if let Some(l) = &l {
            state.all_links.insert(l.name.clone(), l.clone());
        }
        Ok(l)
    }

    /// Creates or fixes the overlay interface and its address; returns its
    /// index. Updates `links` with the result.
    async fn apply_overlay(
        &self,
        ov: &overlay_core::OverlayInterface,
        links: &mut HashMap<String, Link>,
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<u32, ProgrammerError> {
        let name = ov.name.as_str();
        let parent = links.get(ov.parent.as_str()).cloned().ok_or_else(|| {
            ProgrammerError::MissingParent {
                parent: ov.parent.to_string(),
            }
        })?;
        let addrs = self.dump_addrs().await?;
        let mut current = links.get(name).cloned();
        let current_index = current.as_ref().map(|l| l.index);
        if let Some(a) = addrs
            .iter()
            .find(|a| a.net.ip() == ov.address.ip() && Some(a.index) != current_index)
        {
            let interface = links
                .values()
                .find(|l| l.index == a.index)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("index {}", a.index));
            return Err(ProgrammerError::AddressInUse {
                address: ov.address.to_string(),
                interface,
            });
        }
        if let Some(l) = &current {
            // Only a link we created is ours to delete, recreate, bring up
            // or configure; the name alone proves nothing.
            if !l.is_ours() {
                return Err(not_ours(l));
            }
            if l.kind != Some(InfoKind::MacVlan) {
                return Err(ProgrammerError::Kernel {
                    call: format!("create macvlan {name}"),
                    message: format!(
                        "an interface named {name} exists and is not a macvlan ({}); overlay does not delete it: rename or delete it, or choose another INTERFACE_LABEL",
                        l.describe()
                    ),
                });
            }
            if l.parent != Some(parent.index) || l.macvlan_mode != Some(MacVlanMode::Bridge) {
                tracing::info!(interface = name, parent = %ov.parent, "recreating macvlan: wrong parent or mode");
                let mut m = LinkMessage::default();
                m.header.index = l.index;
                self.must_write(
                    format!("delete link {name}"),
                    RouteNetlinkMessage::DelLink(m),
                    REQUEST_ACK,
                    writes,
                )
                .await?;
                links.remove(name);
                current = None;
            }
        }
        let index = match current {
            Some(l) => {
                if !l.up {
                    self.must_write(
                        format!("set link {name} up"),
                        RouteNetlinkMessage::SetLink(
                            LinkUnspec::new_with_index(l.index).up().build(),
                        ),
                        REQUEST_ACK,
                        writes,
                    )
                    .await?;
                    report.interface_up = true;
                    if let Some(x) = links.get_mut(name) {
                        x.up = true;
                    }
                }
                l.index
            }
            None => {
                // Created (up, as drift repair expects to see it), then
                // marked: the kernel ignores IFLA_IFALIAS in an RTM_NEWLINK
                // that creates a link, so the mark takes a second request.
                let msg = LinkMacVlan::new(name, parent.index, MacVlanMode::Bridge)
                    .up()
                    .build();
                *writes += 1;
                self.count_writes(1);
                kernel::write(&self.handle, RouteNetlinkMessage::NewLink(msg), CREATE_EXCL)
                    .await
                    .map_err(|e| match e {
                        // The parent vanished since the dump.
                        ENODEV => ProgrammerError::MissingParent {
                            parent: ov.parent.to_string(),
                        },
                        e => errno_error(&format!("create macvlan {name} on {}", ov.parent), e),
                    })?;
                let vanished = || ProgrammerError::Kernel {
                    call: format!("create macvlan {name}"),
                    message: "the interface vanished right after it was created".into(),
                };
                let mut l = kernel::get_link(&self.handle, name)
                    .await?
                    .ok_or_else(vanished)?;
                let mark = LinkUnspec::new_with_index(l.index)
                    .alias(crate::OWNED_LINK_ALIAS)
                    .build();
                if let Err(e) = self
                    .must_write(
                        format!("mark link {name} as overlay's"),
                        RouteNetlinkMessage::SetLink(mark),
                        REQUEST_ACK,
                        writes,
                    )
                    .await
                {
                    // Unmarked, the link would never be ours again: take
                    // back what we just created.
                    let mut m = LinkMessage::default();
                    m.header.index = l.index;
                    let _ =
                        kernel::write(&self.handle, RouteNetlinkMessage::DelLink(m), REQUEST_ACK)
                            .await;
                    return Err(e);
                }
                report.interface_created = true;
                report.interface_up = true;
                l.alias = Some(crate::OWNED_LINK_ALIAS.to_owned());
                let idx = l.index;
                links.insert(name.to_owned(), l);
                idx
            }
        };

        // Exactly the desired address on it. Every other address goes, not
        // only those carrying our protocol mark: kernels before 6.3 ignore
        // IFA_PROTO, so an address we added there carries no mark, and one
        // left by the original tooling or added by hand (`ip addr add`)
        // never does. The interface is ours, and a stale address on it may
        // have been released for a deleted node and given to another node
        // since. IPv6 link-local addresses stay: the kernel adds them and
        // the interface needs them; so do IPv6 addresses without
        // IFA_F_PERMANENT, which the kernel manages itself (autoconfigured
        // from router advertisements): removing them would only make them
        // flap. An overlay address is always permanent.
        let on_iface: Vec<&Addr> = if report.interface_created {
            Vec::new()
        } else {
            addrs.iter().filter(|a| a.index == index).collect()
        };
        let mut have = on_iface.iter().any(|a| a.net == ov.address);
        let mut removed_v4 = false;
        for a in on_iface {
            if a.net == ov.address || a.kernel_managed() {
                continue;
            }
            *writes += 1;
            self.count_writes(1);
            match kernel::write(
                &self.handle,
                RouteNetlinkMessage::DelAddress(kernel::addr_delete_message(a)),
                REQUEST_ACK,
            )
            .await
            {
                // EADDRNOTAVAIL: gone already, e.g. an IPv4 secondary deleted
                // with its primary just before (promote_secondaries off).
                Ok(()) | Err(EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(errno_error(
                        &format!("delete address {} from {name}", a.net),
                        e,
                    ));
                }
            }
            tracing::info!(
                interface = name,
                address = %a.net,
                protocol = ?a.protocol,
                "removed an address that is not the overlay address from the overlay interface"
            );
            report.addresses_removed.push(a.net);
            removed_v4 |= a.net.is_ipv4();
        }
        if have && removed_v4 && ov.address.is_ipv4() {
            // Without promote_secondaries, deleting a primary IPv4 address
            // deletes its secondaries too: the desired one may be gone.
            have = self
                .dump_addrs()
                .await?
                .iter()
                .any(|a| a.index == index && a.net == ov.address);
        }
        if !have {
            self.must_write(
                format!("add address {} to {name}", ov.address),
                RouteNetlinkMessage::NewAddress(kernel::addr_message(
                    index,
                    ov.address,
                    self.protocol,
                )),
                CREATE_EXCL,
                writes,
            )
            .await?;
            report.address_added = Some(ov.address);
        }
        Ok(index)
    }

    /// Deletes link `name` when overlay created it (it carries our alias);
    /// whether it did. A link of that name without the mark is left alone.
    pub(crate) async fn remove_interface(
        &self,
        name: &InterfaceName,
    ) -> Result<bool, ProgrammerError> {
        let mut state = self.state.lock().await;
        if let Some(d) = &mut state.desired {
            if d.overlay.as_ref().is_some_and(|o| &o.name == name) {
                d.overlay = None;
            }
            d.routes.retain(|r| r.device.as_ref() != Some(name));
        }
        state
            .plan
            .retain(|_, p| p.spec.device.as_ref() != Some(name));
        if state.links.remove(name.as_str()).is_some() {
            state.overlay_index = None;
        }
        let Some(l) = kernel::get_link(&self.handle, name.as_str()).await? else {
            return Ok(false);
        };
        if !l.is_ours() {
            tracing::warn!(
                interface = %name,
                link = %l.describe(),
                "not deleting the interface: overlay did not create it (it lacks overlay's alias); delete it by hand if it should go"
            );
            return Ok(false);
        }
        let mut m = LinkMessage::default();
        m.header.index = l.index;
        let mut writes = 0;
        let deleted = match self
            .must_write(
                format!("delete link {name}"),
                RouteNetlinkMessage::DelLink(m),
                REQUEST_ACK,
                &mut writes,
            )
            .await
        {
            Ok(()) => true,
            Err(ProgrammerError::Kernel { message, .. }) if message == errno_message(ENODEV) => {
                false
            }
            Err(e) => return Err(e),
        };
        // The kernel took the link's routes along.
        state.all_links.remove(name.as_str());
        state.ours.retain(|_, r| r.oif != Some(l.index));
        state.direct.retain(|(_, o, _)| *o != Some(l.index));
        Ok(deleted)
    }

    pub(crate) async fn discover_gateway(
        &self,
        prefix: &Cidr,
    ) -> Result<DiscoveredRoute, ProgrammerError> {
        // One dump at a time per socket: wait for a running apply.
        let _state = self.state.lock().await;
        let routes = self.dump_routes().await?;
        let best = routes
            .iter()
            .filter(|r| {
                r.key.table == MAIN_TABLE
                    && r.kind == RouteType::Unicast
                    && r.key.destination.is_ipv4() == prefix.is_ipv4()
                    && r.key.destination.contains_net(prefix)
            })
            .min_by_key(|r| (std::cmp::Reverse(r.key.destination.prefix()), r.key.metric));
        let Some(best) = best else {
            return Err(ProgrammerError::NoCoveringRoute {
                prefix: prefix.to_string(),
                message: "no route in the main table covers it (not even a default route); add one or configure the gateway explicitly".into(),
            });
        };
        let links = self.dump_links().await?;
        let device_name = best
            .oif
            .and_then(|i| links.values().find(|l| l.index == i))
            .map(|l| l.name.clone());
        let Some(gateway) = best.gateway else {
            return Err(ProgrammerError::NoCoveringRoute {
                prefix: prefix.to_string(),
                message: format!(
                    "the covering route {} dev {} is a direct (on-link) route without a gateway; configure the gateway explicitly",
                    best.key.destination,
                    device_name.as_deref().unwrap_or("?")
                ),
            });
        };
        let device = device_name
            .as_deref()
            .map(|n| InterfaceName::parse("device", n))
            .transpose()?
            .ok_or_else(|| ProgrammerError::NoCoveringRoute {
                prefix: prefix.to_string(),
                message: format!(
                    "the covering route {} via {gateway} has no output device",
                    best.key.destination
                ),
            })?;
        Ok(DiscoveredRoute {
            destination: best.key.destination,
            gateway,
            device,
        })
    }
}

/// True when the kernel route already is what `spec` asks for.
pub(crate) fn matches_spec(k: &KernelRoute, spec: &RouteSpec, oif: Option<u32>) -> bool {
    !k.multipath
        && k.kind == RouteType::Unicast
        && k.gateway == spec.gateway
        && (oif.is_none() || k.oif == oif)
}

/// The error for a link named like the overlay interface that overlay did
/// not create.
fn not_ours(l: &Link) -> ProgrammerError {
    let name = &l.name;
    ProgrammerError::NotOurs {
        interface: name.clone(),
        message: format!(
            "it exists ({}) without the alias {:?} that marks the interfaces overlay creates; delete or rename it (`ip link del {name}`) to let overlay create its own, or set INTERFACE_LABEL to another name",
            l.describe(),
            crate::OWNED_LINK_ALIAS
        ),
    }
}

/// Why `spec` clashes with `first`, an earlier desired route.
fn clash_message(spec: &RouteSpec, first: &RouteSpec) -> String {
    format!(
        "route {spec} has the same destination, table and metric as {first}; the kernel keeps one route per key: drop one or give it another metric"
    )
}

/// A gateway of the other address family is refused.
fn check_family(spec: &RouteSpec) -> Result<(), String> {
    match spec.gateway {
        Some(gw) if gw.is_ipv4() != spec.destination.is_ipv4() => Err(format!(
            "gateway {gw} is not of the address family of {}; use an IPv{} gateway",
            spec.destination,
            if spec.destination.is_ipv4() { 4 } else { 6 }
        )),
        _ => Ok(()),
    }
}

/// The message of a route whose device does not exist.
fn missing_device(spec: &RouteSpec, device: &InterfaceName) -> String {
    format!(
        "device {device} of route {spec} does not exist; create it, or leave the device unset so the kernel picks the on-link interface"
    )
}

/// The device `spec` goes out of: its own (`dev_oif`), else the one its
/// gateway is on-link on (the device of `existing`, our route in place,
/// when the gateway is on-link there; else the most specific connected
/// network holding the gateway). The message of
/// [`ProgrammerError::GatewayUnreachable`] when the gateway is on no
/// connected network.
fn route_oif(
    spec: &RouteSpec,
    key: &RouteKey,
    dev_oif: Option<u32>,
    direct: &[Direct],
    existing: Option<&KernelRoute>,
) -> Result<Option<u32>, String> {
    let Some(gw) = spec.gateway else {
        return Ok(dev_oif);
    };
    let unreachable = || {
        ProgrammerError::GatewayUnreachable {
            destination: spec.destination.to_string(),
            gateway: gw.to_string(),
        }
        .to_string()
    };
    if dev_oif.is_some() {
        return if on_link(gw, dev_oif, key.table, direct) {
            Ok(dev_oif)
        } else {
            Err(unreachable())
        };
    }
    if let Some(o) = existing.and_then(|k| k.oif)
        && on_link(gw, Some(o), key.table, direct)
    {
        return Ok(Some(o));
    }
    gateway_oif(gw, key.table, direct)
        .map(Some)
        .ok_or_else(unreachable)
}

/// The device of the most specific direct route holding `gw`, in `table`
/// or the main table (the route's own table first on a tie, then the lowest
/// device index), as the kernel resolves a gateway without a device. IPv6 link-local gateways need a
/// device: `None`.
fn gateway_oif(gw: IpAddr, table: u32, direct: &[Direct]) -> Option<u32> {
    if let IpAddr::V6(v6) = gw
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return None;
    }
    direct
        .iter()
        .filter(|(net, o, t)| {
            o.is_some()
                && (*t == MAIN_TABLE || *t == table)
                && net.is_ipv4() == gw.is_ipv4()
                && net.contains(gw)
        })
        .max_by_key(|(net, o, t)| (net.prefix(), *t == table, std::cmp::Reverse(*o)))
        .and_then(|(_, o, _)| *o)
}

/// Our routes and the direct routes as the programmer knows them, kept in
/// step with the kernel's answers to our writes (by full applies and
/// updates alike).
struct Known<'a> {
    ours: &'a mut HashMap<RouteKey, KernelRoute>,
    direct: &'a mut Vec<Direct>,
    protocol: u8,
}

impl Known<'_> {
    /// Takes in the kernel's answer to the deletion of our route `spec`.
    fn deleted(
        &mut self,
        key: RouteKey,
        spec: RouteSpec,
        answer: Result<(), Errno>,
        report: &mut ApplyReport,
    ) -> Result<(), ProgrammerError> {
        match answer {
            Ok(()) | Err(ESRCH) | Err(ENOENT) => {
                if let Some(gone) = self.ours.remove(&key)
                    && let Some(d) = as_direct(&gone)
                {
                    self.direct.retain(|x| *x != d);
                }
                report.routes_removed.push(spec);
            }
            Err(e) if e == EPERM || e == kernel::EACCES => {
                return Err(errno_error(&format!("delete route {spec}"), e));
            }
            Err(e) => tracing::warn!(
                route = %spec,
                error = %errno_message(e),
                "could not remove a route overlay installed earlier"
            ),
        }
        Ok(())
    }

    /// Takes in the kernel's answer to the write of `op` (route `spec`
    /// through `oif`); the route's result.
    fn added(
        &mut self,
        op: &Op,
        spec: &RouteSpec,
        oif: Option<u32>,
        answer: Result<(), Errno>,
    ) -> Result<RouteResult, ProgrammerError> {
        match answer {
            Ok(()) => {
                let k = installed_route(op.key, spec, oif, self.protocol);
                if let Some(d) = as_direct(&k)
                    && !self.direct.contains(&d)
                {
                    self.direct.push(d);
                }
                self.ours.insert(op.key, k);
                Ok(op.result.clone())
            }
            Err(e) if e == EPERM || e == kernel::EACCES => {
                Err(errno_error(&format!("add route {spec}"), e))
            }
            Err(e) => Ok(RouteResult::Failed(route_failure(spec, e))),
        }
    }
}

/// The outcome of each of `routes` (a route without a result was already
/// in place), naming the device it goes out of; the tables and devices of
/// the routes in place join `scope`.
fn outcomes(
    routes: &[RouteSpec],
    results: Vec<Option<RouteResult>>,
    oifs: Vec<Option<u32>>,
    name_of: impl Fn(Option<u32>) -> Option<InterfaceName>,
    scope: &mut RouteScope,
) -> Vec<RouteOutcome> {
    let out: Vec<RouteOutcome> = routes
        .iter()
        .zip(results)
        .zip(oifs)
        .map(|((route, result), oif)| {
            let result = result.unwrap_or(RouteResult::Unchanged);
            let device = match result {
                RouteResult::Failed(_) => None,
                _ => route.device.clone().or_else(|| name_of(oif)),
            };
            RouteOutcome {
                route: route.clone(),
                result,
                device,
            }
        })
        .collect();
    for o in out
        .iter()
        .filter(|o| !matches!(o.result, RouteResult::Failed(_)))
    {
        scope.add_route(&o.route);
        scope.devices.extend(o.device.clone());
    }
    out
}

/// The kernel route that writing `spec` with `oif` installed.
fn installed_route(key: RouteKey, spec: &RouteSpec, oif: Option<u32>, protocol: u8) -> KernelRoute {
    KernelRoute {
        key,
        gateway: spec.gateway,
        oif,
        protocol,
        kind: RouteType::Unicast,
        multipath: false,
    }
}

/// True when `gw` is reachable on a connected network (a direct route in the
/// main table or the route's own table, on `oif` when given). IPv6
/// link-local gateways are on-link on the given device.
fn on_link(gw: IpAddr, oif: Option<u32>, table: u32, direct: &[Direct]) -> bool {
    if let IpAddr::V6(v6) = gw
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return oif.is_some();
    }
    direct.iter().any(|(net, o, t)| {
        (*t == MAIN_TABLE || *t == table)
            && net.is_ipv4() == gw.is_ipv4()
            && net.contains(gw)
            && (oif.is_none() || *o == oif)
    })
}

/// The message of a route the kernel refused, saying what to do.
pub(crate) fn route_failure(spec: &RouteSpec, errno: Errno) -> String {
    match (errno, spec.gateway) {
        (ENETUNREACH | EHOSTUNREACH, Some(gw)) => ProgrammerError::GatewayUnreachable {
            destination: spec.destination.to_string(),
            gateway: gw.to_string(),
        }
        .to_string(),
        (EEXIST, _) => format!(
            "the kernel already has a route to {} with this table and metric that overlay did not install; overlay never touches it: delete that route or give this one another metric",
            spec.destination
        ),
        (kernel::ENOBUFS | kernel::EAGAIN, _) => format!(
            "no acknowledgement for route {spec} ({}); it may or may not be installed: the next apply checks and repairs it",
            errno_message(errno)
        ),
        (ENODEV, _) => format!(
            "the device of route {spec} does not exist (any more); create it or leave the device unset"
        ),
        (e, _) => format!(
            "the kernel refused route {spec}: {}; check the gateway and device",
            errno_message(e)
        ),
    }
}

#[async_trait]
impl RouteProgrammer for NetlinkProgrammer {
    async fn apply(&self, desired: &DesiredNodeState) -> Result<ApplyReport, ProgrammerError> {
        self.inner.counters.applies.fetch_add(1, Ordering::Relaxed);
        let mut state = self.inner.state.lock().await;
        self.inner.apply_locked(&mut state, desired).await
    }

    async fn remove_interface(&self, name: &InterfaceName) -> Result<bool, ProgrammerError> {
        self.inner.remove_interface(name).await
    }

    async fn update(&self, changes: &RouteChanges) -> Result<ApplyReport, ProgrammerError> {
        self.inner.counters.updates.fetch_add(1, Ordering::Relaxed);
        let mut state = self.inner.state.lock().await;
        self.inner.update_locked(&mut state, changes).await
    }

    async fn discover_gateway(&self, prefix: &Cidr) -> Result<DiscoveredRoute, ProgrammerError> {
        self.inner.discover_gateway(prefix).await
    }

    async fn interface_with_address(
        &self,
        address: IpAddr,
    ) -> Result<Option<InterfaceName>, ProgrammerError> {
        let _state = self.inner.state.lock().await;
        let addrs = self.inner.dump_addrs().await?;
        let Some(index) = addrs
            .iter()
            .find(|a| a.net.ip() == address)
            .map(|a| a.index)
        else {
            return Ok(None);
        };
        let links = self.inner.dump_links().await?;
        links
            .values()
            .find(|l| l.index == index)
            .map(|l| InterfaceName::parse("interface", &l.name))
            .transpose()
            .map_err(ProgrammerError::from)
    }

    async fn address_network(&self, address: IpAddr) -> Result<Option<IpNetwork>, ProgrammerError> {
        let _state = self.inner.state.lock().await;
        let addrs = self.inner.dump_addrs().await?;
        Ok(addrs.iter().find(|a| a.net.ip() == address).map(|a| a.net))
    }

    fn drift(&self) -> BoxStream<'static, DriftEvent> {
        let rx = self.inner.events.subscribe();
        stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                // This subscriber fell behind and missed events.
                Err(broadcast::error::RecvError::Lagged(_)) => Some((DriftEvent::Overrun, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn on_link_needs_a_direct_route_covering_the_gateway() {
        let direct = vec![
            ("192.0.2.0/24".parse().unwrap(), Some(2), MAIN_TABLE),
            ("198.51.100.0/24".parse().unwrap(), Some(3), 100),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(on_link(ip("192.0.2.1"), None, MAIN_TABLE, &direct));
        assert!(on_link(ip("192.0.2.1"), Some(2), MAIN_TABLE, &direct));
        assert!(!on_link(ip("192.0.2.1"), Some(3), MAIN_TABLE, &direct));
        assert!(!on_link(ip("203.0.113.1"), None, MAIN_TABLE, &direct));
        // A connected route in the route's own table counts.
        assert!(on_link(ip("198.51.100.1"), None, 100, &direct));
        assert!(!on_link(ip("198.51.100.1"), None, MAIN_TABLE, &direct));
        // IPv6 link-local: on-link when the device is given.
        assert!(on_link(ip("fe80::1"), Some(2), MAIN_TABLE, &direct));
        assert!(!on_link(ip("fe80::1"), None, MAIN_TABLE, &direct));
    }

    #[test]
    fn a_gateway_resolves_to_the_most_specific_connected_network() {
        let direct: Vec<Direct> = vec![
            ("192.0.2.0/24".parse().unwrap(), Some(2), MAIN_TABLE),
            ("192.0.2.128/25".parse().unwrap(), Some(3), MAIN_TABLE),
            ("198.51.100.0/24".parse().unwrap(), Some(4), 100),
            ("2001:db8::/64".parse().unwrap(), Some(2), MAIN_TABLE),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(gateway_oif(ip("192.0.2.1"), MAIN_TABLE, &direct), Some(2));
        assert_eq!(gateway_oif(ip("192.0.2.129"), MAIN_TABLE, &direct), Some(3));
        assert_eq!(gateway_oif(ip("198.51.100.1"), MAIN_TABLE, &direct), None);
        assert_eq!(gateway_oif(ip("198.51.100.1"), 100, &direct), Some(4));
        assert_eq!(gateway_oif(ip("2001:db8::1"), MAIN_TABLE, &direct), Some(2));
        assert_eq!(gateway_oif(ip("fe80::1"), MAIN_TABLE, &direct), None);

        let spec = RouteSpec {
            destination: "203.0.113.0/24".parse().unwrap(),
            gateway: Some(ip("192.0.2.1")),
            device: None,
            table: None,
            metric: None,
        };
        let key = spec.key();
        // Our route in place on another device where the gateway is
        // on-link too keeps its device (no churn).
        let k = installed_route(key, &spec, Some(3), 250);
        let direct2: Vec<Direct> = vec![
            ("192.0.2.0/24".parse().unwrap(), Some(2), MAIN_TABLE),
            ("192.0.2.0/24".parse().unwrap(), Some(3), MAIN_TABLE),
        ];
        assert_eq!(
            route_oif(&spec, &key, None, &direct2, Some(&k)),
            Ok(Some(3))
        );
        assert_eq!(route_oif(&spec, &key, None, &direct2, None), Ok(Some(2)));
        assert!(
            route_oif(&spec, &key, Some(9), &direct2, None)
                .unwrap_err()
                .contains("not on-link")
        );
    }

    #[test]
    fn failures_say_what_to_do() {
        let spec = RouteSpec {
            destination: "203.0.113.0/24".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            device: None,
            table: None,
            metric: None,
        };
        assert!(route_failure(&spec, ENETUNREACH).contains("not on-link"));
        assert!(route_failure(&spec, EEXIST).contains("another metric"));
        assert!(route_failure(&spec, ENODEV).contains("does not exist"));
    }
}
