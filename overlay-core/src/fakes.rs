//! In-memory implementations of [`NodeSource`], [`OverlayIpStore`],
//! [`StaticRouteStore`] and [`EventRecorder`], with Kubernetes-like
//! semantics (finalizers hold deletion; watches deliver changes), and
//! [`MemoryPoolStore`] of Kubernetes-native IPAM. The lab,
//! the benchmarks, the tests and users who drive the reconcilers without
//! Kubernetes use them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use ipnetwork::IpNetwork;
use tokio::sync::broadcast;

use crate::error::StoreError;
use crate::events::{Event, EventRecorder};
use crate::model::NodeInfo;
use crate::traits::{
    AgentStatus, NodeSource, OverlayIpMeta, OverlayIpRecord, OverlayIpStore, RouteSummary,
    StaticRouteRecord, StaticRouteStore, StoreEvent,
};

#[cfg(feature = "apiserver")]
pub mod apiserver;
mod pools;
pub use pools::MemoryPoolStore;

const WATCH_CAPACITY: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn watch_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<StoreEvent<T>>,
    kind: &'static str,
) -> BoxStream<'static, Result<StoreEvent<T>, StoreError>> {
    futures::stream::unfold(rx, move |mut rx| async move {
        match rx.recv().await {
            Ok(ev) => Some((Ok(ev), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some((
                Err(StoreError::Unavailable {
                    kind: kind.to_owned(),
                    name: String::new(),
                    message: format!("watch lagged by {n} events; relist"),
                }),
                rx,
            )),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .boxed()
}

/// A node named `name` labelled `topology.kubernetes.io/zone=<zone>`,
/// with these InternalIPs.
pub fn node_in_zone(name: &str, zone: &str, internal_ips: Vec<IpAddr>) -> NodeInfo {
    let labels = BTreeMap::from([(crate::model::ZONE_LABELS[0].to_owned(), zone.to_owned())]);
    NodeInfo::from_labels(name, labels, internal_ips)
}

/// The NodeOverlayIp of `name` as the controller leaves it: our finalizer,
/// the address and gateway recorded, no agent status yet.
pub fn recorded_overlay_ip(name: &str, address: IpNetwork, gateway: IpAddr) -> OverlayIpRecord {
    OverlayIpRecord {
        name: name.to_owned(),
        finalizers: vec![crate::traits::FINALIZER.to_owned()],
        ip_addr: Some(address),
        gateway: Some(gateway),
        ..OverlayIpRecord::default()
    }
}

/// Nodes held in memory; [`MemoryNodes::upsert`] and
/// [`MemoryNodes::remove`] drive the watch.
#[derive(Clone)]
pub struct MemoryNodes {
    nodes: Arc<Mutex<BTreeMap<String, NodeInfo>>>,
    tx: broadcast::Sender<StoreEvent<NodeInfo>>,
}

impl Default for MemoryNodes {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryNodes {
    /// An empty node set.
    pub fn new() -> Self {
        Self {
            nodes: Arc::default(),
            tx: broadcast::channel(WATCH_CAPACITY).0,
        }
    }

    /// Adds or updates a node.
    pub fn upsert(&self, node: NodeInfo) {
        lock(&self.nodes).insert(node.name.clone(), node.clone());
        let _ = self.tx.send(StoreEvent::Applied(node));
    }

    /// Removes a node; returns whether it existed.
    pub fn remove(&self, name: &str) -> bool {
        let existed = lock(&self.nodes).remove(name).is_some();
        if existed {
            let _ = self.tx.send(StoreEvent::Deleted(name.to_owned()));
        }
        existed
    }
}

#[async_trait]
impl NodeSource for MemoryNodes {
    async fn list(&self) -> Result<Vec<NodeInfo>, StoreError> {
        Ok(lock(&self.nodes).values().cloned().collect())
    }

    async fn get(&self, name: &str) -> Result<Option<NodeInfo>, StoreError> {
        Ok(lock(&self.nodes).get(name).cloned())
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<NodeInfo>, StoreError>> {
        watch_stream(self.tx.subscribe(), "Node")
    }
}

/// NodeOverlayIp records in memory.
#[derive(Clone)]
pub struct MemoryOverlayIps {
    records: Arc<Mutex<BTreeMap<String, OverlayIpRecord>>>,
    tx: broadcast::Sender<StoreEvent<OverlayIpRecord>>,
}

impl Default for MemoryOverlayIps {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryOverlayIps {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            records: Arc::default(),
            tx: broadcast::channel(WATCH_CAPACITY).0,
        }
    }

    /// Inserts a record as-is (for tests and fixtures).
    pub fn insert(&self, record: OverlayIpRecord) {
        lock(&self.records).insert(record.name.clone(), record.clone());
        let _ = self.tx.send(StoreEvent::Applied(record));
    }

    /// A snapshot of every record.
    pub fn snapshot(&self) -> Vec<OverlayIpRecord> {
        lock(&self.records).values().cloned().collect()
    }

    fn modify<F: FnOnce(&mut OverlayIpRecord)>(&self, name: &str, f: F) -> Result<(), StoreError> {
        let event = {
            let mut map = lock(&self.records);
            let rec = map.get_mut(name).ok_or_else(|| StoreError::NotFound {
                kind: "NodeOverlayIp".into(),
                name: name.into(),
            })?;
            f(rec);
            if rec.deleting && rec.finalizers.is_empty() {
                map.remove(name);
                StoreEvent::Deleted(name.to_owned())
            } else {
                StoreEvent::Applied(rec.clone())
            }
        };
        let _ = self.tx.send(event);
        Ok(())
    }
}

#[async_trait]
impl OverlayIpStore for MemoryOverlayIps {
    async fn get(&self, name: &str) -> Result<Option<OverlayIpRecord>, StoreError> {
        Ok(lock(&self.records).get(name).cloned())
    }

    async fn list(&self) -> Result<Vec<OverlayIpRecord>, StoreError> {
        Ok(self.snapshot())
    }

    async fn ensure(&self, meta: &OverlayIpMeta) -> Result<OverlayIpRecord, StoreError> {
        let rec = {
            let mut map = lock(&self.records);
            let rec = map
                .entry(meta.name.clone())
                .or_insert_with(|| OverlayIpRecord {
                    name: meta.name.clone(),
                    finalizers: vec![crate::FINALIZER.to_owned()],
                    ..Default::default()
                });
            let has_finalizer = rec.finalizers.iter().any(|f| f == crate::FINALIZER);
            if rec.labels == meta.labels && rec.owner_uid == meta.owner_uid && has_finalizer {
                return Ok(rec.clone());
            }
            rec.labels = meta.labels.clone();
            rec.owner_uid = meta.owner_uid.clone();
            // Like the API server: no new finalizers on an object being deleted.
            if !has_finalizer && !rec.deleting {
                rec.finalizers.push(crate::FINALIZER.to_owned());
            }
            rec.clone()
        };
        let _ = self.tx.send(StoreEvent::Applied(rec.clone()));
        Ok(rec)
    }

    async fn set_address(
        &self,
        name: &str,
        ip_addr: IpNetwork,
        gateway: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        self.modify(name, |r| {
            r.ip_addr = Some(ip_addr);
            r.gateway = gateway;
            r.address_error = None;
        })
    }

    async fn set_agent_status(&self, name: &str, status: &AgentStatus) -> Result<(), StoreError> {
        self.modify(name, |r| r.agent = Some(status.clone()))
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self.modify(name, |r| r.deleting = true) {
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn remove_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError> {
        match self.modify(name, |r| r.finalizers.retain(|f| f != finalizer)) {
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<OverlayIpRecord>, StoreError>> {
        watch_stream(self.tx.subscribe(), "NodeOverlayIp")
    }
}

/// StaticRoute records in memory.
#[derive(Clone)]
pub struct MemoryStaticRoutes {
    records: Arc<Mutex<BTreeMap<String, StaticRouteRecord>>>,
    tx: broadcast::Sender<StoreEvent<StaticRouteRecord>>,
}

impl Default for MemoryStaticRoutes {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStaticRoutes {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            records: Arc::default(),
            tx: broadcast::channel(WATCH_CAPACITY).0,
        }
    }

    /// Creates or replaces a StaticRoute's spec (keeps status and
    /// finalizers of an existing one), like `kubectl apply`.
    pub fn apply(&self, name: &str, spec: Result<crate::StaticRouteRule, String>) {
        let rec = {
            let mut map = lock(&self.records);
            let rec = map
                .entry(name.to_owned())
                .or_insert_with(|| StaticRouteRecord {
                    name: name.to_owned(),
                    spec: spec.clone(),
                    finalizers: vec![],
                    deleting: false,
                    node_status: vec![],
                    summary: None,
                });
            rec.spec = spec;
            rec.clone()
        };
        let _ = self.tx.send(StoreEvent::Applied(rec));
    }

    /// Requests deletion (like `kubectl delete`): held while finalizers remain.
    pub fn delete(&self, name: &str) {
        let _ = self.modify(name, |r| r.deleting = true);
    }

    /// One record.
    pub fn get(&self, name: &str) -> Option<StaticRouteRecord> {
        lock(&self.records).get(name).cloned()
    }

    /// A snapshot of every record.
    pub fn snapshot(&self) -> Vec<StaticRouteRecord> {
        lock(&self.records).values().cloned().collect()
    }

    fn modify<F: FnOnce(&mut StaticRouteRecord)>(
        &self,
        name: &str,
        f: F,
    ) -> Result<(), StoreError> {
        let event = {
            let mut map = lock(&self.records);
            let rec = map.get_mut(name).ok_or_else(|| StoreError::NotFound {
                kind: "StaticRoute".into(),
                name: name.into(),
            })?;
            let before = rec.clone();
            f(rec);
            if rec.deleting && rec.finalizers.is_empty() {
                map.remove(name);
                StoreEvent::Deleted(name.to_owned())
            } else if *rec == before {
                return Ok(());
            } else {
                StoreEvent::Applied(rec.clone())
            }
        };
        let _ = self.tx.send(event);
        Ok(())
    }
}

#[async_trait]
impl StaticRouteStore for MemoryStaticRoutes {
    async fn list(&self) -> Result<Vec<StaticRouteRecord>, StoreError> {
        Ok(self.snapshot())
    }

    async fn add_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError> {
        self.modify(name, |r| {
            if !r.finalizers.iter().any(|f| f == finalizer) {
                r.finalizers.push(finalizer.to_owned());
            }
        })
    }

    async fn remove_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError> {
        match self.modify(name, |r| r.finalizers.retain(|f| f != finalizer)) {
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn set_summary(&self, name: &str, summary: &RouteSummary) -> Result<(), StoreError> {
        match self.modify(name, |r| {
            r.node_status = summary.node_status.clone();
            r.summary = Some(summary.clone());
        }) {
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<StaticRouteRecord>, StoreError>> {
        watch_stream(self.tx.subscribe(), "StaticRoute")
    }
}

/// Events kept in memory (newest last).
#[derive(Clone, Default)]
pub struct MemoryEvents {
    events: Arc<Mutex<Vec<Event>>>,
}

impl MemoryEvents {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event recorded so far.
    pub fn all(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }
}

#[async_trait]
impl EventRecorder for MemoryEvents {
    async fn record(&self, event: Event) {
        lock(&self.events).push(event);
    }
}

/// A [`RouteProgrammer`](crate::RouteProgrammer) over an in-memory "kernel": for tests, examples and
/// dry runs. It implements the same contract as the netlink programmer:
/// declarative apply, ownership of the routes it installed, zero writes on a
/// repeated apply.
#[derive(Clone, Default)]
pub struct MemoryProgrammer {
    state: Arc<Mutex<KernelState>>,
}

/// The in-memory kernel of a [`MemoryProgrammer`].
#[derive(Debug, Clone, Default)]
pub struct KernelState {
    /// The overlay interface, if present.
    pub interface: Option<crate::model::OverlayInterface>,
    /// Routes installed by the programmer, by key.
    pub routes: BTreeMap<crate::RouteKey, crate::RouteSpec>,
    /// Routes gateway discovery finds, by covering prefix.
    pub covering: Vec<crate::DiscoveredRoute>,
    /// Addresses on interfaces (for `interface_with_address`).
    pub addresses: BTreeMap<IpAddr, crate::InterfaceName>,
    /// Prefix lengths of those addresses, where given (for
    /// `address_network`).
    pub prefixes: BTreeMap<IpAddr, u8>,
    /// Destinations whose install fails (simulated kernel refusal).
    pub failing: Vec<crate::Cidr>,
    /// Kernel writes so far.
    pub writes: u64,
    /// Route deletions so far.
    pub deletions: u64,
    /// Gateway discoveries so far.
    pub discoveries: u64,
    /// Full applies so far.
    pub applies: u64,
    /// Incremental updates so far.
    pub updates: u64,
    /// Tables and devices of the routes installed so far (where stale
    /// routes may be removed).
    pub programmed: crate::RouteScope,
    /// The last full apply (what `update` changes).
    pub desired: Option<crate::DesiredNodeState>,
}

impl KernelState {
    /// Installs `r` (or reports why not); counts the write.
    fn install(&mut self, r: &crate::RouteSpec) -> crate::model::RouteOutcome {
        use crate::model::{RouteOutcome, RouteResult};
        let result = if self.failing.contains(&r.destination) {
            RouteResult::Failed(format!("kernel refused {r}"))
        } else {
            self.programmed.add_route(r);
            match self.routes.get(&r.key()) {
                Some(cur) if cur == r => RouteResult::Unchanged,
                Some(_) => {
                    self.routes.insert(r.key(), r.clone());
                    self.writes += 1;
                    RouteResult::Replaced
                }
                None => {
                    self.routes.insert(r.key(), r.clone());
                    self.writes += 1;
                    RouteResult::Added
                }
            }
        };
        let device = match result {
            RouteResult::Failed(_) => None,
            _ => r.device.clone(),
        };
        RouteOutcome {
            route: r.clone(),
            result,
            device,
        }
    }

    /// Removes our route with `key` when `scope` allows; whether it did.
    fn uninstall(
        &mut self,
        key: &crate::RouteKey,
        scope: &crate::RouteScope,
    ) -> Option<crate::RouteSpec> {
        let r = self.routes.get(key)?;
        if r.destination.prefix() == 0
            || !scope.allows(
                key.table,
                r.device.as_ref().map(crate::InterfaceName::as_str),
            )
        {
            return None;
        }
        let r = self.routes.remove(key)?;
        self.writes += 1;
        self.deletions += 1;
        Some(r)
    }
}

impl MemoryProgrammer {
    /// An empty kernel.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads or changes the kernel state.
    pub fn with<T>(&self, f: impl FnOnce(&mut KernelState) -> T) -> T {
        f(&mut lock(&self.state))
    }
}

#[async_trait]
impl crate::RouteProgrammer for MemoryProgrammer {
    async fn apply(
        &self,
        desired: &crate::DesiredNodeState,
    ) -> Result<crate::ApplyReport, crate::ProgrammerError> {
        let mut k = lock(&self.state);
        k.applies += 1;
        let mut report = crate::ApplyReport::default();
        let start = k.writes;
        if let Some(o) = &desired.overlay {
            match &k.interface {
                Some(cur) if cur == o => {}
                Some(cur) if cur.name == o.name && cur.parent == o.parent => {
                    report.addresses_removed.push(cur.address);
                    report.address_added = Some(o.address);
                    k.writes += 2;
                }
                _ => {
                    report.interface_created = true;
                    report.interface_up = true;
                    report.address_added = Some(o.address);
                    k.writes += 3;
                }
            }
            k.interface = Some(o.clone());
        }
        let wanted: BTreeMap<_, _> = desired.routes.iter().map(|r| (r.key(), r)).collect();
        let mut scope = desired.scope.clone();
        scope.extend(&k.programmed);
        desired.routes.iter().for_each(|r| scope.add_route(r));
        let stale: Vec<_> = k
            .routes
            .keys()
            .filter(|key| !desired.keep_unlisted && !wanted.contains_key(key))
            .cloned()
            .collect();
        for key in stale {
            if let Some(r) = k.uninstall(&key, &scope) {
                report.routes_removed.push(r);
            }
        }
        for r in &desired.routes {
            let outcome = k.install(r);
            report.routes.push(outcome);
        }
        k.desired = Some(desired.clone());
        report.kernel_writes = k.writes - start;
        Ok(report)
    }

    async fn remove_interface(
        &self,
        name: &crate::InterfaceName,
    ) -> Result<bool, crate::ProgrammerError> {
        let mut k = lock(&self.state);
        if k.interface.as_ref().is_some_and(|i| &i.name == name) {
            k.interface = None;
            // The kernel drops routes through a deleted device.
            let before = k.routes.len();
            k.routes.retain(|_, r| r.device.as_ref() != Some(name));
            k.deletions += (before - k.routes.len()) as u64;
            k.writes += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn discover_gateway(
        &self,
        prefix: &crate::Cidr,
    ) -> Result<crate::DiscoveredRoute, crate::ProgrammerError> {
        let mut k = lock(&self.state);
        k.discoveries += 1;
        k.covering
            .iter()
            .filter(|d| d.destination.contains_net(prefix))
            .max_by_key(|d| d.destination.prefix())
            .cloned()
            .ok_or_else(|| crate::ProgrammerError::NoCoveringRoute {
                prefix: prefix.to_string(),
                message: "no route covers it".into(),
            })
    }

    fn drift(&self) -> BoxStream<'static, crate::DriftEvent> {
        futures::stream::pending().boxed()
    }

    async fn update(
        &self,
        changes: &crate::RouteChanges,
    ) -> Result<crate::ApplyReport, crate::ProgrammerError> {
        let mut guard = lock(&self.state);
        let k = &mut *guard;
        let Some(mut desired) = k.desired.take() else {
            return Err(crate::ProgrammerError::Unsupported {
                call: "update before the first apply".into(),
            });
        };
        k.updates += 1;
        let start = k.writes;
        let mut report = crate::ApplyReport::default();
        let mut scope = k.programmed.clone();
        scope.extend(&desired.scope);
        for r in &changes.remove {
            desired.routes.retain(|d| d != r);
            let replaced = changes.upsert.iter().any(|u| u.key() == r.key());
            if !replaced && let Some(gone) = k.uninstall(&r.key(), &scope) {
                report.routes_removed.push(gone);
            }
        }
        for r in &changes.upsert {
            desired.routes.retain(|d| d.key() != r.key());
            desired.routes.push(r.clone());
            let outcome = k.install(r);
            report.routes.push(outcome);
        }
        k.desired = Some(desired);
        report.kernel_writes = k.writes - start;
        Ok(report)
    }

    async fn interface_with_address(
        &self,
        address: IpAddr,
    ) -> Result<Option<crate::InterfaceName>, crate::ProgrammerError> {
        Ok(lock(&self.state).addresses.get(&address).cloned())
    }

    async fn address_network(
        &self,
        address: IpAddr,
    ) -> Result<Option<IpNetwork>, crate::ProgrammerError> {
        let k = lock(&self.state);
        Ok(k.prefixes
            .get(&address)
            .and_then(|p| IpNetwork::new(address, *p).ok()))
    }
}
