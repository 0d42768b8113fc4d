//! The controller reconciler against in-memory nodes, stores and a scripted
//! IPAM: every transition, crash points, outages, races.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use ipnetwork::IpNetwork;
use overlay_core::controller::{
    Controller, ControllerConfig, ControllerError, ControllerParts, NodeOutcome,
};
use overlay_core::events::{Event, EventType};
use overlay_core::fakes::{MemoryEvents, MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes};
use overlay_core::{
    Adoption, AgentStatus, FINALIZER, IpamBackend, IpamError, NodeInfo, OverlayIpMeta,
    OverlayIpRecord, OverlayIpStore, Owner, Reservation, RouteReport, RouteState, RouteSummary,
    StaticRouteRecord, StaticRouteRule, StaticRouteStore, StoreError, StoreEvent, Zone,
};
use tokio::sync::Notify;

/// An IPAM with fixed per-zone address lists, idempotent per owner, with
/// switches for outages and a gate that holds reserve() mid-flight.
#[derive(Default)]
struct FakeIpam {
    zones: BTreeMap<String, Vec<&'static str>>,
    held: Mutex<HashMap<Owner, Reservation>>,
    down: std::sync::atomic::AtomicBool,
    fail_release: std::sync::atomic::AtomicBool,
    gate: Option<Arc<Notify>>,
    entered: Arc<Notify>,
    reserves: AtomicUsize,
    /// Entries an earlier tool left, without our marker: address → the
    /// node its owner field names.
    earlier: Mutex<HashMap<IpAddr, String>>,
    /// Entries marked ours by adopt.
    adoptions: AtomicUsize,
}

impl FakeIpam {
    fn new() -> Self {
        let mut zones = BTreeMap::new();
        zones.insert(
            "dal10".into(),
            vec!["192.0.2.10/24", "192.0.2.11/24", "192.0.2.12/24"],
        );
        zones.insert("dal12".into(), vec!["198.51.100.10/24"]);
        Self {
            zones,
            ..Default::default()
        }
    }
    fn unavailable() -> IpamError {
        IpamError::Unavailable {
            backend: "fake".into(),
            call: "reserve".into(),
            message: "connection refused".into(),
        }
    }
    fn held(&self) -> Vec<Reservation> {
        self.held.lock().unwrap().values().cloned().collect()
    }
    /// An entry as the original controller left it: `address` held for
    /// `node`, without our marker.
    fn left_by_earlier_tool(&self, address: &str, node: &str) {
        let ip: IpNetwork = address.parse().unwrap();
        self.earlier.lock().unwrap().insert(ip.ip(), node.into());
    }
    fn zone_of(&self, address: IpNetwork) -> Zone {
        let a = address.to_string();
        let (z, _) = self
            .zones
            .iter()
            .find(|(_, pool)| pool.contains(&a.as_str()))
            .unwrap();
        z.parse().unwrap()
    }
}

#[async_trait]
impl IpamBackend for FakeIpam {
    fn name(&self) -> &str {
        "fake"
    }
    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        self.entered.notify_one();
        if let Some(g) = &self.gate {
            g.notified().await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        let pool = self
            .zones
            .get(zone.as_str())
            .ok_or_else(|| IpamError::UnknownZone {
                zone: zone.to_string(),
                known: self.zones.keys().cloned().collect(),
            })?;
        let mut held = self.held.lock().unwrap();
        if let Some(r) = held.get(owner) {
            return Ok(r.clone());
        }
        let used: Vec<IpNetwork> = held.values().map(|r| r.address).collect();
        let addr: IpNetwork = pool
            .iter()
            .map(|a| a.parse().unwrap())
            .find(|a| !used.contains(a))
            .ok_or_else(|| IpamError::Exhausted {
                zone: zone.to_string(),
                subnets: vec!["1".into()],
            })?;
        self.reserves.fetch_add(1, Ordering::SeqCst);
        let r = Reservation {
            address: addr,
            gateway: Some(IpAddr::from([192, 0, 2, 1])),
            zone: zone.clone(),
            subnet_id: "1".into(),
            handle: addr.ip().to_string(),
            owner: owner.clone(),
            held_until: None,
        };
        held.insert(owner.clone(), r.clone());
        Ok(r)
    }
    async fn release(&self, r: &Reservation, _hold: Duration) -> Result<(), IpamError> {
        if self.down.load(Ordering::SeqCst) || self.fail_release.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        self.held.lock().unwrap().remove(&r.owner);
        Ok(())
    }
    async fn lookup(
        &self,
        owner: &Owner,
        _zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        Ok(self.held.lock().unwrap().get(owner).cloned())
    }
    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        Ok(self.held())
    }
    async fn inspect_adoption(
        &self,
        owner: &Owner,
        address: IpNetwork,
    ) -> Result<Adoption, IpamError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Self::unavailable());
        }
        let holder = self
            .held()
            .into_iter()
            .find(|r| r.address.ip() == address.ip());
        Ok(
            match (holder, self.earlier.lock().unwrap().get(&address.ip())) {
                (Some(r), _) if &r.owner == owner => Adoption::Ours { reservation: r },
                (Some(r), _) => Adoption::Foreign {
                    reason: format!("owned by {}", r.owner.node),
                },
                (None, Some(node)) if node == &owner.node => Adoption::Adoptable {
                    subnet_id: 1,
                    detail: format!("left for {node} by an earlier tool"),
                },
                (None, Some(node)) => Adoption::Foreign {
                    reason: format!("owned by {node}"),
                },
                (None, None) => Adoption::Missing,
            },
        )
    }
    async fn adopt(&self, owner: &Owner, address: IpNetwork) -> Result<Adoption, IpamError> {
        let found = self.inspect_adoption(owner, address).await?;
        if !matches!(found, Adoption::Adoptable { .. }) {
            return Ok(found);
        }
        self.earlier.lock().unwrap().remove(&address.ip());
        self.adoptions.fetch_add(1, Ordering::SeqCst);
        let reservation = Reservation {
            address,
            gateway: Some(IpAddr::from([192, 0, 2, 1])),
            zone: self.zone_of(address),
            subnet_id: "1".into(),
            handle: address.ip().to_string(),
            owner: owner.clone(),
            held_until: None,
        };
        self.held
            .lock()
            .unwrap()
            .insert(owner.clone(), reservation.clone());
        Ok(Adoption::Adopted { reservation })
    }
}

/// A store wrapper whose set_address fails N times: a crash between
/// reserve and status write.
struct FlakyStore {
    inner: MemoryOverlayIps,
    fail_set_address: AtomicUsize,
}

#[async_trait]
impl OverlayIpStore for FlakyStore {
    async fn get(&self, name: &str) -> Result<Option<OverlayIpRecord>, StoreError> {
        self.inner.get(name).await
    }
    async fn list(&self) -> Result<Vec<OverlayIpRecord>, StoreError> {
        self.inner.list().await
    }
    async fn ensure(&self, meta: &OverlayIpMeta) -> Result<OverlayIpRecord, StoreError> {
        self.inner.ensure(meta).await
    }
    async fn set_address(
        &self,
        name: &str,
        ip: IpNetwork,
        gw: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        if self.fail_set_address.load(Ordering::SeqCst) > 0 {
            self.fail_set_address.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable {
                kind: "NodeOverlayIp".into(),
                name: name.into(),
                message: "crash".into(),
            });
        }
        self.inner.set_address(name, ip, gw).await
    }
    async fn set_agent_status(&self, name: &str, s: &AgentStatus) -> Result<(), StoreError> {
        self.inner.set_agent_status(name, s).await
    }
    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete(name).await
    }
    async fn remove_finalizer(&self, name: &str, f: &str) -> Result<(), StoreError> {
        self.inner.remove_finalizer(name, f).await
    }
    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<OverlayIpRecord>, StoreError>> {
        self.inner.watch()
    }
}

struct Env {
    nodes: MemoryNodes,
    ips: MemoryOverlayIps,
    routes: MemoryStaticRoutes,
    events: MemoryEvents,
    ipam: Arc<FakeIpam>,
    ctl: Arc<Controller>,
}

fn node(name: &str, zone: Option<&str>) -> NodeInfo {
    let mut labels = BTreeMap::new();
    if let Some(z) = zone {
        labels.insert("topology.kubernetes.io/zone".to_owned(), z.to_owned());
    }
    labels.insert(
        "topology.kubernetes.io/region".to_owned(),
        "us-south".to_owned(),
    );
    let mut n = NodeInfo::from_labels(name, labels, vec![]);
    n.uid = Some(format!("uid-{name}"));
    n
}

fn env_with(ipam: FakeIpam, store: Option<Arc<dyn OverlayIpStore>>, dry_run: bool) -> Env {
    let nodes = MemoryNodes::new();
    let ips = MemoryOverlayIps::new();
    let routes = MemoryStaticRoutes::new();
    let events = MemoryEvents::new();
    let ipam = Arc::new(ipam);
    let cfg = ControllerConfig {
        dry_run,
        ..ControllerConfig::new("c1")
    };
    let store: Arc<dyn OverlayIpStore> = store.unwrap_or_else(|| Arc::new(ips.clone()));
    let ctl = Arc::new(
        Controller::new(
            cfg,
            ControllerParts {
                nodes: Arc::new(nodes.clone()),
                ipam: ipam.clone(),
                overlay_ips: store,
                routes: Arc::new(routes.clone()),
            },
        )
        .with_events(Arc::new(events.clone())),
    );
    Env {
        nodes,
        ips,
        routes,
        events,
        ipam,
        ctl,
    }
}

fn env() -> Env {
    env_with(FakeIpam::new(), None, false)
}

/// Runs reconcile_node until it settles (as the queue would on follow-ups).
async fn settle(ctl: &Controller, name: &str) -> Result<NodeOutcome, ControllerError> {
    for _ in 0..5 {
        match ctl.reconcile_node(name).await? {
            NodeOutcome::Deleting | NodeOutcome::Released => continue,
            other => return Ok(other),
        }
    }
    panic!("{name} did not settle")
}

#[tokio::test]
async fn every_node_gets_one_address_with_labels_finalizer_owner_and_status() {
    let e = env();
    for n in ["n1", "n2", "n3"] {
        e.nodes.upsert(node(n, Some("dal10")));
        assert_eq!(e.ctl.reconcile_node(n).await.unwrap(), NodeOutcome::Ready);
    }
    let recs = e.ips.snapshot();
    assert_eq!(recs.len(), 3);
    let mut addrs: Vec<String> = recs
        .iter()
        .map(|r| r.ip_addr.unwrap().to_string())
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["192.0.2.10/24", "192.0.2.11/24", "192.0.2.12/24"]);
    let r = &recs[0];
    assert_eq!(r.labels["node"], r.name);
    assert_eq!(r.labels["zone"], "dal10");
    assert_eq!(r.labels["region"], "us-south");
    assert_eq!(r.finalizers, [FINALIZER]);
    assert_eq!(
        r.owner_uid.as_deref(),
        Some(format!("uid-{}", r.name).as_str())
    );
    assert_eq!(r.gateway.unwrap().to_string(), "192.0.2.1");
    assert!(
        e.events
            .all()
            .iter()
            .any(|ev| ev.reason == "Reserved" && ev.name == "n1")
    );
    // Reconciling again reserves nothing new.
    for n in ["n1", "n2", "n3"] {
        e.ctl.reconcile_node(n).await.unwrap();
    }
    assert_eq!(e.ipam.reserves.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_crash_between_reserve_and_status_write_finds_the_same_address() {
    let ips = MemoryOverlayIps::new();
    let flaky = Arc::new(FlakyStore {
        inner: ips.clone(),
        fail_set_address: AtomicUsize::new(1),
    });
    let e = env_with(FakeIpam::new(), Some(flaky), false);
    e.nodes.upsert(node("n1", Some("dal10")));
    let err = e.ctl.reconcile_node("n1").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(e.ipam.held().len(), 1, "reserved before the crash");
    assert_eq!(
        e.ctl.reconcile_node("n1").await.unwrap(),
        NodeOutcome::Ready
    );
    assert_eq!(e.ipam.held().len(), 1, "nothing leaked");
    assert_eq!(
        ips.snapshot()[0].ip_addr.unwrap().to_string(),
        e.ipam.held()[0].address.to_string()
    );
}

#[tokio::test]
async fn an_ipam_outage_never_takes_an_address_away_and_recovers() {
    let e = env();
    e.nodes.upsert(node("n1", Some("dal10")));
    settle(&e.ctl, "n1").await.unwrap();
    e.ipam.down.store(true, Ordering::SeqCst);
    e.nodes.upsert(node("n2", Some("dal10")));
    let err = e.ctl.reconcile_node("n2").await.unwrap_err();
    assert!(err.is_retryable());
    // n1 keeps its address through the outage, also across reconciles and orphan passes.
    assert_eq!(
        e.ctl.reconcile_node("n1").await.unwrap(),
        NodeOutcome::Ready
    );
    assert!(e.ctl.collect_orphans().await.is_err());
    assert!(
        e.ips
            .snapshot()
            .iter()
            .any(|r| r.name == "n1" && r.ip_addr.is_some())
    );
    e.ipam.down.store(false, Ordering::SeqCst);
    assert_eq!(
        e.ctl.reconcile_node("n2").await.unwrap(),
        NodeOutcome::Ready
    );
    assert_eq!(e.ipam.held().len(), 2);
}

#[tokio::test]
async fn zone_fall_through_unknown_zone_and_full_pool_stay_with_their_node() {
    let e = env();
    e.nodes.upsert(node("a", Some("dal12")));
    e.nodes.upsert(node("b", Some("dal12")));
    e.nodes.upsert(node("c", Some("wdc04")));
    e.nodes.upsert(node("d", None));
    e.nodes.upsert(node("ok", Some("dal10")));
    assert_eq!(e.ctl.reconcile_node("a").await.unwrap(), NodeOutcome::Ready);
    let full = e.ctl.reconcile_node("b").await.unwrap_err();
    assert!(
        !full.is_retryable() && full.to_string().contains("no free address"),
        "{full}"
    );
    let unknown = e.ctl.reconcile_node("c").await.unwrap_err();
    assert!(
        unknown.to_string().contains("wdc04") && unknown.to_string().contains("dal10"),
        "{unknown}"
    );
    let nozone = e.ctl.reconcile_node("d").await.unwrap_err();
    assert!(matches!(nozone, ControllerError::NoZone { .. }));
    // The others are not blocked.
    assert_eq!(
        e.ctl.reconcile_node("ok").await.unwrap(),
        NodeOutcome::Ready
    );
    let warnings: Vec<_> = e
        .events
        .all()
        .into_iter()
        .filter(|ev| ev.reason == "ReserveFailed" || ev.reason == "NoZone")
        .map(|ev| ev.name)
        .collect();
    assert_eq!(warnings, ["b", "c", "d"]);
}

#[tokio::test]
async fn node_deletion_deletes_the_record_releases_and_removes_only_our_finalizer() {
    let e = env();
    e.nodes.upsert(node("n1", Some("dal10")));
    settle(&e.ctl, "n1").await.unwrap();
    e.nodes.remove("n1");
    assert_eq!(
        e.ctl.reconcile_node("n1").await.unwrap(),
        NodeOutcome::Deleting
    );
    assert!(e.ips.snapshot()[0].deleting);
    assert_eq!(
        e.ctl.reconcile_node("n1").await.unwrap(),
        NodeOutcome::Released
    );
    assert!(e.ips.snapshot().is_empty());
    assert!(e.ipam.held().is_empty());
    assert!(e.events.all().iter().any(|ev| ev.reason == "Released"));
    assert_eq!(e.ctl.reconcile_node("n1").await.unwrap(), NodeOutcome::Gone);
}

#[tokio::test]
async fn another_finalizer_is_left_alone() {
    let e = env();
    e.nodes.upsert(node("n1", Some("dal10")));
    settle(&e.ctl, "n1").await.unwrap();
    let mut rec = e.ips.snapshot().remove(0);
    rec.finalizers.push("example.com/other".into());
    e.ips.insert(rec);
    e.nodes.remove("n1");
    settle(&e.ctl, "n1").await.unwrap();
    let left = e.ips.snapshot();
    assert_eq!(left[0].finalizers, ["example.com/other"]);
    assert!(e.ipam.held().is_empty());
}

#[tokio::test]
async fn a_failed_release_keeps_the_finalizer() {
    let e = env();
    e.nodes.upsert(node("n1", Some("dal10")));
    settle(&e.ctl, "n1").await.unwrap();
    e.nodes.remove("n1");
    e.ipam.fail_release.store(true, Ordering::SeqCst);
    e.ctl.reconcile_node("n1").await.unwrap();
    let err = e.ctl.reconcile_node("n1").await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(e.ips.snapshot()[0].finalizers, [FINALIZER]);
    assert_eq!(e.ipam.held().len(), 1);
    e.ipam.fail_release.store(false, Ordering::SeqCst);
    settle(&e.ctl, "n1").await.unwrap();
    assert!(e.ips.snapshot().is_empty() && e.ipam.held().is_empty());
}

#[tokio::test]
async fn a_record_deleted_by_hand_is_recreated_for_a_live_node() {
    let e = env();
    e.nodes.upsert(node("n1", Some("dal10")));
    settle(&e.ctl, "n1").await.unwrap();
    let before = e.ips.snapshot()[0].ip_addr;
    OverlayIpStore::delete(&e.ips, "n1").await.unwrap();
    assert_eq!(settle(&e.ctl, "n1").await.unwrap(), NodeOutcome::Ready);
    let after = e.ips.snapshot();
    assert_eq!(after.len(), 1);
    assert!(!after[0].deleting);
    assert_eq!(after[0].ip_addr, before, "lowest free address comes back");
    assert_eq!(e.ipam.held().len(), 1);
}

#[tokio::test]
async fn a_node_deleted_while_its_reservation_is_in_flight_leaks_nothing() {
    let gate = Arc::new(Notify::new());
    let ipam = FakeIpam {
        gate: Some(gate.clone()),
        ..FakeIpam::new()
    };
    let e = env_with(ipam, None, false);
    e.nodes.upsert(node("n1", Some("dal10")));
    let ctl = e.ctl.clone();
    let entered = e.ipam.entered.clone();
    let h = tokio::spawn(async move { ctl.reconcile_node("n1").await });
    entered.notified().await;
    e.nodes.remove("n1");
    gate.notify_one();
    h.await.unwrap().unwrap();
    // The queue reruns the key after the delete event.
    let ctl = e.ctl.clone();
    let g2 = gate.clone();
    let pump = tokio::spawn(async move {
        loop {
            g2.notify_one();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    assert_eq!(settle(&ctl, "n1").await.unwrap(), NodeOutcome::Gone);
    pump.abort();
    assert!(
        e.ipam.held().is_empty(),
        "reservation leaked: {:?}",
        e.ipam.held()
    );
    assert!(e.ips.snapshot().is_empty());
}

#[tokio::test]
async fn two_controllers_racing_for_one_node_reserve_once() {
    let e = env();
    e.nodes.upsert(node("n1", Some("dal10")));
    let other = Arc::new(
        Controller::new(
            ControllerConfig::new("c1"),
            ControllerParts {
                nodes: Arc::new(e.nodes.clone()),
                ipam: e.ipam.clone(),
                overlay_ips: Arc::new(e.ips.clone()),
                routes: Arc::new(e.routes.clone()),
            },
        )
        .with_events(Arc::new(MemoryEvents::new())),
    );
    let mut hs = Vec::new();
    for i in 0..16 {
        let c = if i % 2 == 0 {
            e.ctl.clone()
        } else {
            other.clone()
        };
        hs.push(tokio::spawn(async move { c.reconcile_node("n1").await }));
    }
    for h in hs {
        h.await.unwrap().unwrap();
    }
    assert_eq!(e.ipam.held().len(), 1);
    assert_eq!(e.ips.snapshot().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn orphans_are_released_and_records_of_missing_nodes_deleted() {
    let e = env();
    e.nodes.upsert(node("live", Some("dal10")));
    settle(&e.ctl, "live").await.unwrap();
    // An orphan of ours, and a reservation of another cluster sharing the IPAM.
    let zone: Zone = "dal10".parse().unwrap();
    e.ipam
        .reserve(&Owner::new("c1", "ghost"), &zone)
        .await
        .unwrap();
    e.ipam
        .reserve(&Owner::new("other-cluster", "x"), &zone)
        .await
        .unwrap();
    // A record of a node that no longer exists.
    e.ips.insert(OverlayIpRecord {
        name: "gone".into(),
        finalizers: vec![FINALIZER.into()],
        ..Default::default()
    });
    let rep = e.ctl.collect_orphans().await.unwrap();
    assert_eq!(rep.deleted, ["gone"]);
    // Seen once: suspected, not released until a second pass after the
    // grace period (10 minutes by default).
    assert!(rep.released.is_empty());
    assert_eq!(rep.suspected, ["ghost"]);
    tokio::time::advance(Duration::from_secs(300)).await;
    let rep = e.ctl.collect_orphans().await.unwrap();
    assert!(rep.released.is_empty(), "released before the grace period");
    tokio::time::advance(Duration::from_secs(301)).await;
    let rep = e.ctl.collect_orphans().await.unwrap();
    assert_eq!(rep.released, ["ghost"]);
    let owners: Vec<String> = e
        .ipam
        .held()
        .into_iter()
        .map(|r| r.owner.to_string())
        .collect();
    assert!(
        owners.contains(&"c1/live".to_owned()) && owners.contains(&"other-cluster/x".to_owned())
    );
    assert_eq!(owners.len(), 2);
}

fn route_spec() -> StaticRouteRule {
    StaticRouteRule {
        subnet: "203.0.113.0/24".parse().unwrap(),
        gateway: Default::default(),
        table: None,
        metric: None,
        selector: Default::default(),
    }
}

/// An agent status reporting `routes`.
fn reports(routes: &[(&str, RouteState)]) -> AgentStatus {
    AgentStatus {
        interface: "eth0".into(),
        interface_label: "tmp0".into(),
        configured: true,
        reason: "AddressConfigured".into(),
        message: String::new(),
        routes: routes
            .iter()
            .map(|(r, state)| RouteReport {
                route: (*r).into(),
                device: "tmp0".into(),
                gateway: "192.0.2.1".into(),
                table: None,
                state: *state,
                message: if *state == RouteState::Applied {
                    String::new()
                } else {
                    format!("{state} on purpose")
                },
            })
            .collect(),
        gateways: Vec::new(),
    }
}

/// A NodeOverlayIp of `name` whose agent reports `routes`.
fn reporting(name: &str, routes: &[(&str, RouteState)]) -> OverlayIpRecord {
    OverlayIpRecord {
        name: name.into(),
        finalizers: vec![FINALIZER.into()],
        agent: Some(reports(routes)),
        ..Default::default()
    }
}

fn names(s: &RouteSummary) -> Vec<String> {
    s.node_status.iter().map(|e| e.hostname.clone()).collect()
}

#[tokio::test]
async fn a_summary_counts_every_node_and_lists_failing_nodes_first_up_to_the_cap() {
    let e = env();
    e.routes.apply("onprem", Ok(route_spec()));
    e.routes.apply("other", Ok(route_spec()));
    for i in 0..150 {
        let name = format!("n{i:03}");
        e.nodes.upsert(node(&name, Some("dal10")));
        let state = match i % 10 {
            0 => RouteState::Failed,
            1 => RouteState::Pending,
            _ => RouteState::Applied,
        };
        e.ips.insert(reporting(
            &name,
            &[("onprem", state), ("other", RouteState::Failed)],
        ));
    }
    // A node that no longer exists: its report is ignored.
    e.ips
        .insert(reporting("gone", &[("onprem", RouteState::Failed)]));
    let both = ["onprem".to_owned(), "other".to_owned()].into();
    assert_eq!(e.ctl.summarize_routes(&both).await.unwrap(), 2);
    let s = e.routes.get("onprem").unwrap().summary.unwrap();
    assert_eq!(
        (s.applied, s.failed, s.pending),
        (120, 15, 15),
        "counts cover every node"
    );
    assert_eq!(s.node_status.len(), RouteSummary::MAX_NODE_STATUS);
    let failed: Vec<String> = (0..150).step_by(10).map(|i| format!("n{i:03}")).collect();
    let pending: Vec<String> = (1..150).step_by(10).map(|i| format!("n{i:03}")).collect();
    assert_eq!(names(&s)[..15], failed[..], "failing nodes first, by name");
    assert_eq!(names(&s)[15..30], pending[..], "then pending ones");
    assert!(
        s.node_status[30..]
            .iter()
            .all(|e| e.state == RouteState::Applied)
    );
    assert_eq!(names(&s)[30], "n002");
    assert_eq!(s.node_status[0].message, "Failed on purpose");
    assert_eq!(s.node_status[0].device, "tmp0");
    assert_eq!(s.node_status[0].gateway, "192.0.2.1");
    let r = e.routes.get("onprem").unwrap();
    assert_eq!(r.node_status, s.node_status, "nodeStatus keeps its shape");
    let other = e.routes.get("other").unwrap().summary.unwrap();
    assert_eq!((other.applied, other.failed), (0, 150));
    // Unchanged: nothing written.
    assert_eq!(e.ctl.summarize_routes(&both).await.unwrap(), 0);
}

#[tokio::test]
async fn a_route_nobody_reports_costs_no_summary_write() {
    let e = env();
    e.routes.apply("onprem", Ok(route_spec()));
    let one = ["onprem".to_owned()].into();
    assert_eq!(e.ctl.summarize_routes(&one).await.unwrap(), 0);
    assert_eq!(e.routes.get("onprem").unwrap().summary, None);
}

#[tokio::test]
async fn a_deleted_static_route_keeps_its_finalizer_while_a_live_node_reports_it() {
    let e = env();
    e.nodes.upsert(node("live", Some("dal10")));
    e.nodes.upsert(node("bystander", Some("dal10")));
    e.routes.apply("onprem", Ok(route_spec()));
    e.ctl
        .reconcile_route(&e.routes.get("onprem").unwrap())
        .await
        .unwrap();
    assert_eq!(e.routes.get("onprem").unwrap().finalizers, [FINALIZER]);
    e.ips
        .insert(reporting("live", &[("onprem", RouteState::Applied)]));
    e.ips
        .insert(reporting("dead", &[("onprem", RouteState::Applied)]));
    e.ips.insert(reporting(
        "bystander",
        &[("elsewhere", RouteState::Applied)],
    ));
    e.routes.delete("onprem");
    let reconcile = async || {
        let Some(r) = e.routes.get("onprem") else {
            return;
        };
        e.ctl.reconcile_route(&r).await.unwrap();
    };
    reconcile().await;
    assert_eq!(
        e.routes.get("onprem").unwrap().finalizers,
        [FINALIZER],
        "a live node still reports the route"
    );
    // The live node's agent removes the route from its kernel and drops
    // the report; the dead node's report holds nothing.
    e.ips
        .set_agent_status("live", &reports(&[("other", RouteState::Applied)]))
        .await
        .unwrap();
    reconcile().await;
    assert!(e.routes.get("onprem").is_none(), "deletion completed");
}

#[tokio::test]
async fn a_deleted_node_releases_a_deleted_static_route() {
    let e = env();
    e.nodes.upsert(node("live", Some("dal10")));
    e.routes.apply("onprem", Ok(route_spec()));
    e.ctl
        .reconcile_route(&e.routes.get("onprem").unwrap())
        .await
        .unwrap();
    e.ips
        .insert(reporting("live", &[("onprem", RouteState::Failed)]));
    e.routes.delete("onprem");
    e.ctl
        .reconcile_route(&e.routes.get("onprem").unwrap())
        .await
        .unwrap();
    assert!(e.routes.get("onprem").is_some(), "held");
    e.nodes.remove("live");
    e.ctl
        .reconcile_route(&e.routes.get("onprem").unwrap())
        .await
        .unwrap();
    assert!(
        e.routes.get("onprem").is_none(),
        "a deleted node holds nothing"
    );
}

/// A StaticRoute store that counts summary writes and when they happen.
struct CountingRoutes {
    inner: MemoryStaticRoutes,
    writes: Mutex<Vec<(tokio::time::Instant, RouteSummary)>>,
}

#[async_trait]
impl StaticRouteStore for CountingRoutes {
    async fn list(&self) -> Result<Vec<StaticRouteRecord>, StoreError> {
        self.inner.list().await
    }
    async fn add_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError> {
        self.inner.add_finalizer(name, finalizer).await
    }
    async fn remove_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError> {
        self.inner.remove_finalizer(name, finalizer).await
    }
    async fn set_summary(&self, name: &str, summary: &RouteSummary) -> Result<(), StoreError> {
        self.writes
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), summary.clone()));
        self.inner.set_summary(name, summary).await
    }
    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<StaticRouteRecord>, StoreError>> {
        self.inner.watch()
    }
}

/// A controller summing up three nodes' reports of one StaticRoute, with
/// the summary writes counted.
struct SummaryRig {
    ips: MemoryOverlayIps,
    routes: Arc<CountingRoutes>,
    run: tokio::task::JoinHandle<()>,
}

impl SummaryRig {
    async fn start() -> Self {
        let nodes = MemoryNodes::new();
        let ips = MemoryOverlayIps::new();
        let routes = Arc::new(CountingRoutes {
            inner: MemoryStaticRoutes::new(),
            writes: Mutex::new(Vec::new()),
        });
        let ctl = Arc::new(
            Controller::new(
                ControllerConfig::new("c1"),
                ControllerParts {
                    nodes: Arc::new(nodes.clone()),
                    ipam: Arc::new(FakeIpam::new()),
                    overlay_ips: Arc::new(ips.clone()),
                    routes: routes.clone(),
                },
            )
            .with_events(Arc::new(MemoryEvents::new())),
        );
        for n in ["n1", "n2", "n3"] {
            nodes.upsert(node(n, Some("dal10")));
        }
        let run = tokio::spawn(ctl.clone().run(futures::future::pending()));
        routes.inner.apply("onprem", Ok(route_spec()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ips.snapshot().len(), 3, "the nodes got their records");
        assert!(
            routes.writes.lock().unwrap().is_empty(),
            "nothing to report yet"
        );
        Self { ips, routes, run }
    }

    async fn set(&self, node: &str, state: RouteState) {
        self.ips
            .set_agent_status(node, &reports(&[("onprem", state)]))
            .await
            .unwrap();
    }

    fn write_count(&self) -> usize {
        self.routes.writes.lock().unwrap().len()
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_reports_costs_one_summary_write_and_the_finalizer_follows() {
    let rig = SummaryRig::start().await;
    bursts_cost_one_write_each(&rig).await;
    never_quiet_reports_write_once_a_period(&rig).await;
    a_deleted_route_waits_for_the_last_report(&rig).await;
    rig.run.abort();
}

async fn bursts_cost_one_write_each(rig: &SummaryRig) {
    // A burst: one write, once it has been quiet for a period.
    let start = tokio::time::Instant::now();
    rig.set("n1", RouteState::Applied).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.set("n2", RouteState::Applied).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.set("n3", RouteState::Failed).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let writes = rig.routes.writes.lock().unwrap();
        assert_eq!(writes.len(), 1, "{writes:?}");
        let (at, s) = &writes[0];
        // The last report came at 0.6 s.
        assert!(
            *at - start <= Duration::from_millis(1700),
            "latency {:?}",
            *at - start
        );
        assert_eq!((s.applied, s.failed, s.pending), (2, 1, 0));
        assert_eq!(names(s), ["n3", "n1", "n2"]);
    }
    // The same reports again: no write.
    rig.set("n1", RouteState::Applied).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.write_count(), 1);
    // Two changes 0.5 s apart, right after a write: one more write, at
    // least a period after the previous one.
    rig.set("n3", RouteState::Applied).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rig.set("n2", RouteState::Pending).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let writes = rig.routes.writes.lock().unwrap();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(writes[1].0 - writes[0].0 >= Duration::from_secs(1));
        assert_eq!((writes[1].1.applied, writes[1].1.pending), (2, 1));
    }
}

async fn never_quiet_reports_write_once_a_period(rig: &SummaryRig) {
    // Reports changing all the time (never quiet): at most one write per
    // period, and still a write before the changes stop.
    let first_change = tokio::time::Instant::now();
    let before = rig.write_count();
    for i in 0..15 {
        let state = if i % 2 == 0 {
            RouteState::Failed
        } else {
            RouteState::Applied
        };
        rig.set("n1", state).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let writes = rig.routes.writes.lock().unwrap();
        let burst = &writes[before - 1..];
        assert!(burst.len() - 1 <= 4, "{} writes in 3 s", burst.len() - 1);
        assert!(burst.len() >= 2, "no write at all");
        assert!(
            burst[1].0 - first_change <= Duration::from_millis(5100),
            "the first write waited {:?}",
            burst[1].0 - first_change
        );
        for w in burst.windows(2) {
            assert!(
                w[1].0 - w[0].0 >= Duration::from_secs(1),
                "{:?}",
                w[1].0 - w[0].0
            );
        }
    }
}

async fn a_deleted_route_waits_for_the_last_report(rig: &SummaryRig) {
    // Deleted: held while the agents report the route, released once the
    // last report goes.
    rig.routes.inner.delete("onprem");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rig.routes.inner.get("onprem").is_some());
    for n in ["n1", "n2", "n3"] {
        rig.ips.set_agent_status(n, &reports(&[])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        rig.routes.inner.get("onprem").is_none(),
        "the finalizer came off"
    );
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let e = env_with(FakeIpam::new(), None, true);
    e.nodes.upsert(node("n1", Some("dal10")));
    assert!(matches!(
        e.ctl.reconcile_node("n1").await.unwrap(),
        NodeOutcome::DryRun(_)
    ));
    e.ipam
        .reserve(&Owner::new("c1", "ghost"), &"dal10".parse().unwrap())
        .await
        .unwrap();
    e.ctl.collect_orphans().await.unwrap();
    assert!(e.ips.snapshot().is_empty());
    assert_eq!(e.ipam.held().len(), 1, "the orphan is only reported");
}

#[tokio::test]
async fn the_running_controller_converges_on_watch_events() {
    let e = env();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ctl = e.ctl.clone();
    let h = tokio::spawn(ctl.run(async move {
        let _ = rx.await;
    }));
    for n in ["n1", "n2"] {
        e.nodes.upsert(node(n, Some("dal10")));
    }
    let wait = |f: &dyn Fn() -> bool| {
        let ok = (0..500).any(|_| {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        });
        assert!(ok, "did not converge");
    };
    let ips = e.ips.clone();
    tokio::task::spawn_blocking(move || {
        wait(&|| {
            ips.snapshot()
                .iter()
                .filter(|r| r.ip_addr.is_some())
                .count()
                == 2
        })
    })
    .await
    .unwrap();
    assert!(e.ctl.is_ready());
    e.nodes.remove("n1");
    let (ips, ipam) = (e.ips.clone(), e.ipam.clone());
    tokio::task::spawn_blocking(move || {
        wait(&|| ips.snapshot().len() == 1 && ipam.held().len() == 1)
    })
    .await
    .unwrap();
    let _ = tx.send(());
    h.await.unwrap();
}

#[tokio::test]
async fn a_recorded_address_the_ipam_no_longer_holds_is_reported_not_changed() {
    let e = env();
    e.nodes.upsert(node("n1", Some("dal10")));
    e.nodes.upsert(node("n2", Some("dal10")));
    settle(&e.ctl, "n1").await.unwrap();
    settle(&e.ctl, "n2").await.unwrap();
    // Someone deletes n1's address in the IPAM by hand.
    let held = e
        .ipam
        .held()
        .into_iter()
        .find(|r| r.owner.node == "n1")
        .unwrap();
    e.ipam.release(&held, Duration::ZERO).await.unwrap();
    let rep = e.ctl.collect_orphans().await.unwrap();
    assert_eq!(rep.unreserved, ["n1"]);
    assert!(rep.released.is_empty() && rep.deleted.is_empty());
    let ev = e
        .events
        .all()
        .into_iter()
        .find(|ev| ev.reason == "AddressNotReserved")
        .unwrap();
    assert_eq!(ev.name, "n1");
    assert!(
        ev.message.contains(&held.address.ip().to_string())
            && ev.message.contains("Delete the NodeOverlayIp"),
        "{}",
        ev.message
    );
    let rec = e
        .ips
        .snapshot()
        .into_iter()
        .find(|r| r.name == "n1")
        .unwrap();
    assert_eq!(
        rec.ip_addr.map(|a| a.ip()),
        Some(held.address.ip()),
        "the live node keeps its address"
    );
}

/// A NodeOverlayIp as the original Go controller left it: labels, the
/// finalizer, the address and gateway in status, no owner reference.
fn left_by_original_controller(name: &str, address: &str) -> OverlayIpRecord {
    OverlayIpRecord {
        name: name.into(),
        labels: BTreeMap::from([
            ("node".into(), name.into()),
            ("region".into(), "us-south".into()),
            ("zone".into(), "dal10".into()),
        ]),
        finalizers: vec![FINALIZER.into()],
        ip_addr: Some(address.parse().unwrap()),
        gateway: Some(IpAddr::from([192, 0, 2, 1])),
        ..Default::default()
    }
}

fn events_named(e: &Env, reason: &str) -> Vec<Event> {
    e.events
        .all()
        .into_iter()
        .filter(|ev| ev.reason == reason)
        .collect()
}

#[tokio::test]
async fn the_original_controllers_address_is_adopted_kept_and_released_when_the_node_goes() {
    let e = env();
    e.ipam.left_by_earlier_tool("192.0.2.11/24", "n1");
    e.ips
        .insert(left_by_original_controller("n1", "192.0.2.11/24"));
    e.nodes.upsert(node("n1", Some("dal10")));
    assert_eq!(
        e.ctl.reconcile_node("n1").await.unwrap(),
        NodeOutcome::Ready
    );
    let rec = e.ips.snapshot().remove(0);
    assert_eq!(
        rec.ip_addr.unwrap().to_string(),
        "192.0.2.11/24",
        "the address is kept"
    );
    assert_eq!(
        rec.owner_uid.as_deref(),
        Some("uid-n1"),
        "the record is ours"
    );
    assert_eq!(
        e.ipam.reserves.load(Ordering::SeqCst),
        0,
        "nothing reserved"
    );
    let held = e.ipam.held();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].owner, Owner::new("c1", "n1"));
    assert_eq!(held[0].address.to_string(), "192.0.2.11/24");
    let adopted = events_named(&e, "Adopted");
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].type_, EventType::Normal);
    assert_eq!(adopted[0].name, "n1");
    assert_eq!(
        adopted[0].message,
        "adopted 192.0.2.11/24 from fake subnet 1: marked as ours; it is released when the node goes"
    );
    // Once ours, nothing more is adopted.
    e.ctl.reconcile_node("n1").await.unwrap();
    assert_eq!(e.ipam.adoptions.load(Ordering::SeqCst), 1);
    assert_eq!(events_named(&e, "Adopted").len(), 1);
    // The node goes: the address goes back to the IPAM.
    e.nodes.remove("n1");
    assert_eq!(settle(&e.ctl, "n1").await.unwrap(), NodeOutcome::Gone);
    assert!(e.ips.snapshot().is_empty());
    assert!(e.ipam.held().is_empty(), "leaked: {:?}", e.ipam.held());
    let released = events_named(&e, "Released");
    assert_eq!(released.len(), 1);
    assert!(released[0].message.contains("192.0.2.11/24"));
}

#[tokio::test]
async fn a_recorded_address_held_by_another_or_by_nothing_is_kept_and_reported() {
    let e = env();
    e.ipam.left_by_earlier_tool("192.0.2.11/24", "n2");
    e.ips
        .insert(left_by_original_controller("n1", "192.0.2.11/24"));
    e.ips
        .insert(left_by_original_controller("n3", "192.0.2.12/24"));
    for n in ["n1", "n3"] {
        e.nodes.upsert(node(n, Some("dal10")));
        assert_eq!(e.ctl.reconcile_node(n).await.unwrap(), NodeOutcome::Ready);
    }
    let warnings = events_named(&e, "NotAdopted");
    assert_eq!(warnings.len(), 2);
    assert!(warnings.iter().all(|w| w.type_ == EventType::Warning));
    assert_eq!(warnings[0].name, "n1");
    assert!(
        warnings[0].message.contains("192.0.2.11/24")
            && warnings[0].message.contains("owned by n2"),
        "{}",
        warnings[0].message
    );
    assert!(
        warnings[1].message.contains("fake holds nothing"),
        "{}",
        warnings[1].message
    );
    // Never re-reserved over: both records keep their addresses.
    let recs = e.ips.snapshot();
    let addrs: Vec<String> = recs
        .iter()
        .map(|r| r.ip_addr.unwrap().to_string())
        .collect();
    assert_eq!(addrs, ["192.0.2.11/24", "192.0.2.12/24"]);
    assert!(recs.iter().all(|r| r.owner_uid.is_some()));
    assert_eq!(e.ipam.reserves.load(Ordering::SeqCst), 0);
    assert!(e.ipam.held().is_empty());
    // Reported once, not at every reconcile.
    e.ctl.reconcile_node("n1").await.unwrap();
    assert_eq!(events_named(&e, "NotAdopted").len(), 2);
}

#[tokio::test]
async fn an_ipam_outage_during_adoption_is_retried_and_changes_nothing() {
    let e = env();
    e.ipam.left_by_earlier_tool("192.0.2.11/24", "n1");
    let original = left_by_original_controller("n1", "192.0.2.11/24");
    e.ips.insert(original.clone());
    e.nodes.upsert(node("n1", Some("dal10")));
    e.ipam.down.store(true, Ordering::SeqCst);
    let err = e.ctl.reconcile_node("n1").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(
        e.ips.snapshot(),
        [original],
        "not made ours before the adoption"
    );
    e.ipam.down.store(false, Ordering::SeqCst);
    assert_eq!(
        e.ctl.reconcile_node("n1").await.unwrap(),
        NodeOutcome::Ready
    );
    assert_eq!(e.ipam.adoptions.load(Ordering::SeqCst), 1);
    assert_eq!(e.ips.snapshot()[0].owner_uid.as_deref(), Some("uid-n1"));
}

#[tokio::test]
async fn a_node_gone_before_adoption_still_gives_its_address_back() {
    let e = env();
    e.ipam.left_by_earlier_tool("192.0.2.11/24", "n1");
    e.ips
        .insert(left_by_original_controller("n1", "192.0.2.11/24"));
    // No node n1: it went while no controller ran.
    assert_eq!(settle(&e.ctl, "n1").await.unwrap(), NodeOutcome::Gone);
    assert!(e.ips.snapshot().is_empty());
    assert_eq!(e.ipam.adoptions.load(Ordering::SeqCst), 1);
    assert!(e.ipam.held().is_empty(), "leaked: {:?}", e.ipam.held());
    assert!(e.ipam.earlier.lock().unwrap().is_empty());
    assert_eq!(events_named(&e, "Released").len(), 1);
}

#[tokio::test]
async fn a_dry_run_says_it_would_adopt_and_changes_nothing() {
    let e = env_with(FakeIpam::new(), None, true);
    e.ipam.left_by_earlier_tool("192.0.2.11/24", "n1");
    let original = left_by_original_controller("n1", "192.0.2.11/24");
    e.ips.insert(original.clone());
    e.nodes.upsert(node("n1", Some("dal10")));
    match e.ctl.reconcile_node("n1").await.unwrap() {
        NodeOutcome::DryRun(what) => assert!(
            what.starts_with("would adopt 192.0.2.11/24 for n1 from fake subnet 1"),
            "{what}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.ips.snapshot(), [original]);
    assert_eq!(e.ipam.adoptions.load(Ordering::SeqCst), 0);
    assert!(e.ipam.held().is_empty());
    assert!(e.events.all().is_empty());
}
