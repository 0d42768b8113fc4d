//! Failure injection at exact steps (mockall doubles of the IPAM and the
//! stores) with the address invariants asserted after every scenario:
//! - no owner holds two live addresses;
//! - no address has two owners (in the IPAM or in the records);
//! - no reservation of ours is left without a node after the grace period;
//! - no finalizer is removed before a successful release.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::FutureExt;
use futures::stream::BoxStream;
use ipnetwork::IpNetwork;
use mockall::mock;
use overlay_core::controller::{Controller, ControllerConfig, ControllerParts, NodeOutcome};
use overlay_core::fakes::{MemoryEvents, MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes};
use overlay_core::leader::{Fence, FencedIpam};
use overlay_core::{
    AgentStatus, FINALIZER, IpamBackend, IpamError, NodeInfo, NodeSource, OverlayIpMeta,
    OverlayIpRecord, OverlayIpStore, Owner, Reservation, StoreError, StoreEvent, Zone,
};
use tokio::time::Instant;

/// The IPAM calls, as a plain trait for mockall; [`Mocked`] forwards the
/// async [`IpamBackend`] to it.
#[mockall::automock]
trait Ipam {
    fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError>;
    fn release(&self, reservation: &Reservation, hold: Duration) -> Result<(), IpamError>;
    fn lookup(&self, owner: &Owner) -> Result<Option<Reservation>, IpamError>;
    fn lookup_all(&self, owner: &Owner) -> Result<Vec<Reservation>, IpamError>;
    fn list(&self) -> Result<Vec<Reservation>, IpamError>;
    fn release_owner(&self, owner: &Owner, hold: Duration) -> Result<Vec<Reservation>, IpamError>;
}

struct Mocked(MockIpam);

#[async_trait]
impl IpamBackend for Mocked {
    fn name(&self) -> &str {
        "mock"
    }
    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        self.0.reserve(owner, zone)
    }
    async fn release(&self, r: &Reservation, hold: Duration) -> Result<(), IpamError> {
        self.0.release(r, hold)
    }
    async fn lookup(
        &self,
        owner: &Owner,
        _zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        self.0.lookup(owner)
    }
    async fn lookup_all(&self, owner: &Owner) -> Result<Vec<Reservation>, IpamError> {
        self.0.lookup_all(owner)
    }
    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        self.0.list()
    }
    async fn release_owner(
        &self,
        owner: &Owner,
        hold: Duration,
    ) -> Result<Vec<Reservation>, IpamError> {
        self.0.release_owner(owner, hold)
    }
}

mock! {
    pub Records {}
    #[async_trait]
    impl OverlayIpStore for Records {
        async fn get(&self, name: &str) -> Result<Option<OverlayIpRecord>, StoreError>;
        async fn list(&self) -> Result<Vec<OverlayIpRecord>, StoreError>;
        async fn ensure(&self, meta: &OverlayIpMeta) -> Result<OverlayIpRecord, StoreError>;
        async fn set_address(&self, name: &str, ip_addr: IpNetwork, gateway: Option<IpAddr>) -> Result<(), StoreError>;
        async fn set_agent_status(&self, name: &str, status: &AgentStatus) -> Result<(), StoreError>;
        async fn delete(&self, name: &str) -> Result<(), StoreError>;
        async fn remove_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError>;
        fn watch(&self) -> BoxStream<'static, Result<StoreEvent<OverlayIpRecord>, StoreError>>;
    }
}

/// The IPAM's truth: address → entry; and the order of side effects.
#[derive(Default)]
struct Ledger {
    entries: Mutex<BTreeMap<IpAddr, Reservation>>,
    log: Mutex<Vec<String>>,
}

impl Ledger {
    fn note(&self, what: String) {
        self.log.lock().unwrap().push(what);
    }
    fn reserve(&self, owner: &Owner, zone: &Zone) -> Reservation {
        let mut e = self.entries.lock().unwrap();
        if let Some(r) = e.values_mut().find(|r| &r.owner == owner) {
            r.held_until = None;
            return r.clone();
        }
        let ip = (10..250u8)
            .map(|i| IpAddr::from([192, 0, 2, i]))
            .find(|ip| !e.contains_key(ip))
            .unwrap();
        let r = Reservation {
            address: IpNetwork::new(ip, 24).unwrap(),
            gateway: Some(IpAddr::from([192, 0, 2, 1])),
            zone: zone.clone(),
            subnet_id: "1".into(),
            handle: ip.to_string(),
            owner: owner.clone(),
            held_until: None,
        };
        e.insert(ip, r.clone());
        self.note(format!("reserve {} {ip}", owner.node));
        r
    }
    /// An entry made by hand (a second address, another cluster's, ...).
    fn insert(&self, owner: Owner, ip: [u8; 4]) -> Reservation {
        let ip = IpAddr::from(ip);
        let r = Reservation {
            address: IpNetwork::new(ip, 24).unwrap(),
            gateway: Some(IpAddr::from([192, 0, 2, 1])),
            zone: "dal10".parse().unwrap(),
            subnet_id: "1".into(),
            handle: ip.to_string(),
            owner,
            held_until: None,
        };
        self.entries.lock().unwrap().insert(ip, r.clone());
        r
    }
    fn release(&self, r: &Reservation, hold: Duration) {
        let mut e = self.entries.lock().unwrap();
        let ip = r.address.ip();
        if e.get(&ip).is_some_and(|x| x.owner == r.owner) {
            if hold.is_zero() {
                e.remove(&ip);
            } else if let Some(x) = e.get_mut(&ip) {
                x.held_until.get_or_insert(SystemTime::now() + hold);
            }
            self.note(format!("release {} {ip}", r.owner.node));
        }
    }
    fn live(&self) -> Vec<Reservation> {
        self.entries
            .lock()
            .unwrap()
            .values()
            .filter(|r| !r.is_held())
            .cloned()
            .collect()
    }
    fn all(&self) -> Vec<Reservation> {
        self.entries.lock().unwrap().values().cloned().collect()
    }
    fn of(&self, owner: &Owner) -> Vec<Reservation> {
        self.live()
            .into_iter()
            .filter(|r| &r.owner == owner)
            .collect()
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn timeout() -> IpamError {
    IpamError::Unavailable {
        backend: "mock".into(),
        call: "POST addresses/first_free/1".into(),
        message: "operation timed out".into(),
    }
}

/// A mock whose every method is the ledger's, except what `tweak` injects
/// (it runs first, so its expectations take precedence).
fn mock_over(ledger: &Arc<Ledger>, tweak: impl FnOnce(&mut MockIpam, &Arc<Ledger>)) -> MockIpam {
    let mut m = MockIpam::new();
    tweak(&mut m, ledger);
    let l = ledger.clone();
    m.expect_reserve()
        .returning(move |o, z| Ok(l.reserve(o, z)));
    let l = ledger.clone();
    m.expect_release().returning(move |r, h| {
        l.release(r, h);
        Ok(())
    });
    let l = ledger.clone();
    m.expect_lookup()
        .returning(move |o| Ok(l.of(o).into_iter().next()));
    let l = ledger.clone();
    m.expect_lookup_all().returning(move |o| Ok(l.of(o)));
    let l = ledger.clone();
    m.expect_list().returning(move || Ok(l.all()));
    let l = ledger.clone();
    m.expect_release_owner().returning(move |o, h| {
        let all = l.of(o);
        for r in &all {
            l.release(r, h);
        }
        Ok(all)
    });
    m
}

/// NodeOverlayIps in memory, logging finalizer removals into the ledger
/// and failing `set_address` a given number of times.
fn records_over(
    ledger: &Arc<Ledger>,
    mem: &MemoryOverlayIps,
    fail_set_address: usize,
) -> MockRecords {
    let mut m = MockRecords::new();
    // The memory store completes at once; mockall's closures are sync.
    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        f.now_or_never().expect("the memory store never waits")
    }
    let g = mem.clone();
    m.expect_get().returning(move |n| block(g.get(n)));
    let g = mem.clone();
    m.expect_list().returning(move || block(g.list()));
    let g = mem.clone();
    m.expect_ensure()
        .returning(move |meta| block(g.ensure(meta)));
    let g = mem.clone();
    let failures = Arc::new(AtomicUsize::new(fail_set_address));
    m.expect_set_address().returning(move |n, ip, gw| {
        if failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unavailable {
                kind: "NodeOverlayIp".into(),
                name: n.into(),
                message: "connection reset".into(),
            });
        }
        block(g.set_address(n, ip, gw))
    });
    let g = mem.clone();
    m.expect_delete().returning(move |n| block(g.delete(n)));
    let (g, l) = (mem.clone(), ledger.clone());
    m.expect_remove_finalizer().returning(move |n, f| {
        l.note(format!("remove-finalizer {n}"));
        block(g.remove_finalizer(n, f))
    });
    let g = mem.clone();
    m.expect_watch().returning(move || g.watch());
    m
}

struct Env {
    nodes: MemoryNodes,
    records: MemoryOverlayIps,
    ledger: Arc<Ledger>,
    ctl: Arc<Controller>,
}

fn node(name: &str) -> NodeInfo {
    let labels = [("topology.kubernetes.io/zone".to_owned(), "dal10".to_owned())]
        .into_iter()
        .collect();
    NodeInfo::from_labels(name, labels, vec![])
}

fn env(
    tweak: impl FnOnce(&mut MockIpam, &Arc<Ledger>),
    fail_set_address: usize,
    fence: Option<Fence>,
    nodes_source: Option<Arc<dyn NodeSource>>,
) -> Env {
    let ledger = Arc::new(Ledger::default());
    let nodes = MemoryNodes::new();
    let records = MemoryOverlayIps::new();
    let ipam: Arc<dyn IpamBackend> = Arc::new(Mocked(mock_over(&ledger, tweak)));
    let ipam: Arc<dyn IpamBackend> = match fence {
        Some(f) => Arc::new(FencedIpam::new(ipam, f)),
        None => ipam,
    };
    let ctl = Arc::new(
        Controller::new(
            ControllerConfig::new("c1"),
            ControllerParts {
                nodes: nodes_source.unwrap_or_else(|| Arc::new(nodes.clone())),
                ipam,
                overlay_ips: Arc::new(records_over(&ledger, &records, fail_set_address)),
                routes: Arc::new(MemoryStaticRoutes::new()),
            },
        )
        .with_events(Arc::new(MemoryEvents::new())),
    );
    Env {
        nodes,
        records,
        ledger,
        ctl,
    }
}

/// Reconciles `name` until it settles or `rounds` run out.
async fn settle(e: &Env, name: &str, rounds: usize) {
    for _ in 0..rounds {
        if let Ok(NodeOutcome::Ready | NodeOutcome::Gone) = e.ctl.reconcile_node(name).await {
            return;
        }
    }
}

/// The four invariants. `after_grace`: the grace period has passed and the
/// orphan collection ran twice.
async fn assert_invariants(e: &Env, after_grace: bool) {
    let live = e.ledger.live();
    let mut by_owner: HashMap<&Owner, Vec<IpAddr>> = HashMap::new();
    for r in &live {
        by_owner.entry(&r.owner).or_default().push(r.address.ip());
    }
    for (o, ips) in &by_owner {
        assert!(ips.len() <= 1, "{o} holds {ips:?}");
    }
    let recs = e.records.snapshot();
    let mut seen = HashSet::new();
    for r in &recs {
        if let Some(ip) = r.ip_addr {
            assert!(
                seen.insert(ip.ip()),
                "{} is recorded for two nodes",
                ip.ip()
            );
            let holder = live.iter().find(|x| x.address.ip() == ip.ip());
            assert!(
                holder.is_none_or(|h| h.owner.node == r.name),
                "{ip} recorded for {} is held by {:?}",
                r.name,
                holder.map(|h| &h.owner)
            );
        }
    }
    if after_grace {
        let nodes: HashSet<String> = e
            .nodes
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        for r in live.iter().filter(|r| r.owner.cluster == "c1") {
            assert!(
                nodes.contains(&r.owner.node),
                "{} still reserved for missing node {}",
                r.address,
                r.owner.node
            );
        }
    }
    // Every finalizer removal follows a release of that node.
    let log = e.ledger.log();
    for (i, line) in log.iter().enumerate() {
        if let Some(n) = line.strip_prefix("remove-finalizer ") {
            let released = log[..i]
                .iter()
                .any(|l| l.starts_with(&format!("release {n} ")));
            let held_nothing = !log[..i]
                .iter()
                .any(|l| l.starts_with(&format!("reserve {n} ")));
            assert!(
                released || held_nothing,
                "finalizer of {n} removed before a successful release: {log:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_reserve_that_committed_but_timed_out_makes_no_second_reservation() {
    let e = env(
        |m, l| {
            let l = l.clone();
            m.expect_reserve().times(1).returning(move |o, z| {
                l.reserve(o, z);
                Err(timeout())
            });
        },
        0,
        None,
        None,
    );
    e.nodes.upsert(node("n1"));
    assert!(e.ctl.reconcile_node("n1").await.is_err());
    settle(&e, "n1", 3).await;
    let owner = Owner::new("c1", "n1");
    assert_eq!(e.ledger.of(&owner).len(), 1);
    let rec = e.records.snapshot();
    assert_eq!(rec[0].ip_addr, Some(e.ledger.of(&owner)[0].address));
    assert_invariants(&e, false).await;
}

#[tokio::test]
async fn a_status_write_failing_after_the_reserve_records_the_same_address_later() {
    let e = env(|_, _| {}, 2, None, None);
    e.nodes.upsert(node("n1"));
    assert!(e.ctl.reconcile_node("n1").await.is_err());
    assert!(e.ctl.reconcile_node("n1").await.is_err());
    settle(&e, "n1", 3).await;
    let reserves = e
        .ledger
        .log()
        .iter()
        .filter(|l| l.starts_with("reserve "))
        .count();
    assert_eq!(reserves, 1, "{:?}", e.ledger.log());
    assert!(e.records.snapshot()[0].ip_addr.is_some());
    assert_invariants(&e, false).await;
}

#[tokio::test]
async fn a_failing_release_keeps_the_finalizer_until_it_succeeds() {
    let e = env(
        |m, _| {
            m.expect_release_owner().times(2).returning(|_, _| {
                Err(IpamError::Unavailable {
                    backend: "mock".into(),
                    call: "DELETE addresses/10".into(),
                    message: "502 Bad Gateway".into(),
                })
            });
        },
        0,
        None,
        None,
    );
    e.nodes.upsert(node("n1"));
    settle(&e, "n1", 3).await;
    e.nodes.remove("n1");
    // Node gone → record deleted → finalizer path, which fails twice.
    assert_eq!(
        e.ctl.reconcile_node("n1").await.unwrap(),
        NodeOutcome::Deleting
    );
    for _ in 0..2 {
        assert!(e.ctl.reconcile_node("n1").await.is_err());
        let rec = e.records.snapshot();
        assert_eq!(rec[0].finalizers, [FINALIZER], "finalizer removed early");
        assert_invariants(&e, false).await;
    }
    settle(&e, "n1", 3).await;
    assert!(e.records.snapshot().is_empty());
    assert!(e.ledger.of(&Owner::new("c1", "n1")).is_empty());
    assert_invariants(&e, false).await;
}

#[tokio::test]
async fn release_owner_releases_every_address_of_the_owner() {
    let e = env(|_, _| {}, 0, None, None);
    e.nodes.upsert(node("n1"));
    settle(&e, "n1", 3).await;
    // A second address for the same owner, e.g. from an ambiguous reserve
    // of an older version.
    e.ledger.insert(Owner::new("c1", "n1"), [192, 0, 2, 200]);
    e.nodes.remove("n1");
    settle(&e, "n1", 5).await;
    assert!(e.records.snapshot().is_empty());
    assert!(
        e.ledger.of(&Owner::new("c1", "n1")).is_empty(),
        "{:?}",
        e.ledger.live()
    );
    assert_invariants(&e, true).await;
}

#[tokio::test]
async fn an_owner_with_two_addresses_keeps_the_recorded_one() {
    let extra_ip: IpAddr = [192, 0, 2, 200].into();
    let e = env(
        move |m, l| {
            let l = l.clone();
            // Only the extra is ever released.
            m.expect_release()
                .withf(move |r, _| r.address.ip() != extra_ip)
                .never();
            m.expect_release().times(1).returning(move |r, h| {
                l.release(r, h);
                Ok(())
            });
        },
        0,
        None,
        None,
    );
    e.nodes.upsert(node("n1"));
    settle(&e, "n1", 3).await;
    let recorded = e.records.snapshot()[0].ip_addr.unwrap();
    e.ledger.insert(Owner::new("c1", "n1"), [192, 0, 2, 200]);
    let rep = e.ctl.collect_orphans().await.unwrap();
    assert_eq!(rep.duplicates, ["n1"]);
    let left = e.ledger.of(&Owner::new("c1", "n1"));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].address, recorded);
    assert_invariants(&e, false).await;
}

/// A node source whose cache lags: it lists no nodes, but the API server
/// (the live read) knows `late`.
struct LaggingNodes {
    live: MemoryNodes,
}

#[async_trait]
impl NodeSource for LaggingNodes {
    async fn list(&self) -> Result<Vec<NodeInfo>, StoreError> {
        Ok(Vec::new())
    }
    async fn get(&self, _: &str) -> Result<Option<NodeInfo>, StoreError> {
        Ok(None)
    }
    async fn get_live(&self, name: &str) -> Result<Option<NodeInfo>, StoreError> {
        self.live.get(name).await
    }
    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<NodeInfo>, StoreError>> {
        Box::pin(futures::stream::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn orphans_are_released_only_when_ours_dead_by_a_live_read_and_after_two_passes() {
    let live = MemoryNodes::new();
    live.upsert(node("late"));
    let e = env(
        |m, _| {
            // Neither another cluster's entry nor a node the live read
            // finds may ever be released.
            m.expect_release()
                .withf(|r, _| r.owner.cluster != "c1" || r.owner.node == "late")
                .never();
        },
        0,
        None,
        Some(Arc::new(LaggingNodes { live })),
    );
    e.ledger.insert(Owner::new("c1", "ghost"), [192, 0, 2, 50]);
    e.ledger.insert(Owner::new("c1", "late"), [192, 0, 2, 51]);
    e.ledger
        .insert(Owner::new("3f1c2a9e-other", "ghost"), [192, 0, 2, 52]);
    let rep = e.ctl.collect_orphans().await.unwrap();
    assert!(rep.released.is_empty());
    tokio::time::advance(Duration::from_secs(599)).await;
    assert!(e.ctl.collect_orphans().await.unwrap().released.is_empty());
    tokio::time::advance(Duration::from_secs(2)).await;
    let rep = e.ctl.collect_orphans().await.unwrap();
    assert_eq!(rep.released, ["ghost"]);
    // Released with the hold-down: visible, held, not handed out.
    let ghost = e
        .ledger
        .all()
        .into_iter()
        .find(|r| r.owner.node == "ghost" && r.owner.cluster == "c1")
        .unwrap();
    assert!(ghost.is_held());
    assert_eq!(
        e.ledger.live().len(),
        2,
        "late's and the other cluster's stay"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_between_reserve_and_record_stops_every_ipam_write() {
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = env(
        |m, l| {
            let l = l.clone();
            m.expect_reserve()
                .times(1)
                .returning(move |o, z| Ok(l.reserve(o, z)));
            m.expect_reserve().never();
            m.expect_release().never();
            m.expect_release_owner().never();
        },
        1,
        Some(Fence::until(deadline)),
        None,
    );
    e.nodes.upsert(node("n1"));
    // Reserve succeeds, the status write fails: mid-reconcile.
    assert!(e.ctl.reconcile_node("n1").await.is_err());
    tokio::time::sleep_until(deadline).await;
    // After the deadline: retries, new nodes, deletions and orphan passes
    // make no IPAM write (the `never()`s above would panic).
    e.nodes.upsert(node("n2"));
    for n in ["n1", "n2"] {
        match e.ctl.reconcile_node(n).await {
            Err(err) => assert!(err.to_string().contains("Lease"), "{err}"),
            Ok(o) => panic!("{n}: {o:?}"),
        }
    }
    e.nodes.remove("n1");
    let _ = e.ctl.reconcile_node("n1").await;
    let _ = e.ctl.reconcile_node("n1").await;
    tokio::time::advance(Duration::from_secs(700)).await;
    let _ = e.ctl.collect_orphans().await;
    let _ = e.ctl.collect_orphans().await;
    assert_eq!(e.ledger.of(&Owner::new("c1", "n1")).len(), 1);
    assert_invariants(&e, false).await;
}
