//! Leader election and fencing under a controlled clock (paused tokio
//! time) and a scripted Lease: renewals failing, the API server unreachable,
//! a peer taking over. The property under test: a leader stops acting
//! before any other replica can start.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::fakes::{MemoryEvents, MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes};
use overlay_core::leader::{
    Fence, FencedIpam, LeaderConfig, LeaderElector, LeaseRecord, LeaseStore,
};
use overlay_core::{IpamBackend, IpamError, NodeInfo, Owner, Reservation, StoreError, Zone};
use tokio::time::Instant;

/// How one replica's calls to the Lease fare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// The API server answers 503.
    Failing,
    /// Requests never complete (a partition).
    Hanging,
}

/// One Lease in an "API server", shared by the replicas.
#[derive(Default)]
struct LeaseServer {
    lease: Mutex<Option<LeaseRecord>>,
    rv: AtomicUsize,
}

impl LeaseServer {
    fn holder(&self) -> Option<String> {
        self.lease
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|l| l.holder.clone())
    }
    /// Another party writes the Lease (e.g. a peer that took over).
    fn overwrite(&self, holder: &str) {
        let mut l = self.lease.lock().unwrap();
        let rec = l.get_or_insert_with(LeaseRecord::default);
        rec.holder = Some(holder.into());
        rec.lease_duration = Duration::from_secs(15);
        rec.version = self.rv.fetch_add(1, Ordering::SeqCst).to_string() + "x";
    }
}

/// A replica's client of the LeaseServer, with its own link state.
struct Client {
    server: Arc<LeaseServer>,
    link: Mutex<Link>,
}

impl Client {
    fn new(server: &Arc<LeaseServer>) -> Arc<Self> {
        Arc::new(Self {
            server: server.clone(),
            link: Mutex::new(Link::Up),
        })
    }
    fn set(&self, link: Link) {
        *self.link.lock().unwrap() = link;
    }
    async fn reach(&self) -> Result<(), StoreError> {
        let link = *self.link.lock().unwrap();
        match link {
            Link::Up => Ok(()),
            Link::Failing => Err(StoreError::Unavailable {
                kind: "Lease".into(),
                name: "overlay-controller".into(),
                message: "503 Service Unavailable".into(),
            }),
            Link::Hanging => std::future::pending().await,
        }
    }
}

#[async_trait]
impl LeaseStore for Client {
    fn describe(&self) -> String {
        "Lease test/overlay-controller".into()
    }
    async fn get(&self) -> Result<Option<LeaseRecord>, StoreError> {
        self.reach().await?;
        Ok(self.server.lease.lock().unwrap().clone())
    }
    async fn create(&self, r: &LeaseRecord) -> Result<LeaseRecord, StoreError> {
        self.reach().await?;
        let mut l = self.server.lease.lock().unwrap();
        if l.is_some() {
            return Err(StoreError::AlreadyExists {
                kind: "Lease".into(),
                name: "overlay-controller".into(),
            });
        }
        let mut r = r.clone();
        r.version = self.server.rv.fetch_add(1, Ordering::SeqCst).to_string();
        *l = Some(r.clone());
        Ok(r)
    }
    async fn update(&self, r: &LeaseRecord) -> Result<LeaseRecord, StoreError> {
        self.reach().await?;
        let mut l = self.server.lease.lock().unwrap();
        if l.as_ref().map(|c| c.version.as_str()) != Some(r.version.as_str()) {
            return Err(StoreError::Conflict {
                kind: "Lease".into(),
                name: "overlay-controller".into(),
                message: "the object has been modified".into(),
            });
        }
        let mut r = r.clone();
        r.version = self.server.rv.fetch_add(1, Ordering::SeqCst).to_string();
        *l = Some(r.clone());
        Ok(r)
    }
}

fn config(id: &str) -> LeaderConfig {
    LeaderConfig::new(id)
}

/// Starts an elector; returns its fence.
fn start(client: Arc<Client>, id: &str) -> Fence {
    let (elector, fence) = LeaderElector::new(client, config(id));
    tokio::spawn(elector.run(std::future::pending()));
    fence
}

/// Advances paused time in small steps until `cond` holds; returns when.
async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Instant> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond().then(Instant::now)
}

#[tokio::test(start_paused = true)]
async fn a_leader_keeps_leading_while_renewals_succeed() {
    let server = Arc::new(LeaseServer::default());
    let a = start(Client::new(&server), "a");
    let b = start(Client::new(&server), "b");
    until(Duration::from_secs(5), || {
        a.check().is_ok() || b.check().is_ok()
    })
    .await
    .expect("someone leads");
    let leader = server.holder().unwrap();
    let (lead, standby) = if leader == "a" { (&a, &b) } else { (&b, &a) };
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            lead.check().is_ok(),
            "the leader stepped down while renewing"
        );
        assert!(standby.check().is_err(), "two leaders");
    }
    assert_eq!(server.holder().as_deref(), Some(leader.as_str()));
}

/// The core property: when renewals fail, the leader's fence closes at
/// `renewTime + leaseDuration − margin`, and a standby acquires only after
/// `leaseDuration` — never both at once.
#[tokio::test(start_paused = true)]
async fn failing_renewals_step_the_leader_down_before_a_standby_can_take_over() {
    for link in [Link::Failing, Link::Hanging] {
        let server = Arc::new(LeaseServer::default());
        let ca = Client::new(&server);
        let a = start(ca.clone(), "a");
        until(Duration::from_secs(5), || a.check().is_ok())
            .await
            .expect("a leads");
        let b = start(Client::new(&server), "b");
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(a.check().is_ok() && b.check().is_err());

        // A's link breaks right after a renewal.
        let renewed = server.lease.lock().unwrap().clone();
        until(Duration::from_secs(3), || {
            *server.lease.lock().unwrap() != renewed
        })
        .await
        .expect("a renews every 2 s");
        let last_renewal = Instant::now();
        ca.set(link);

        let lost = {
            let a = a.clone();
            tokio::spawn(async move {
                a.lost().await;
                Instant::now()
            })
        };
        let b_leads = until(Duration::from_secs(60), || b.check().is_ok())
            .await
            .expect("b takes over");
        let a_lost = lost.await.unwrap();
        assert!(a.check().is_err(), "{link:?}: a still acts");
        assert!(
            a_lost <= last_renewal + Duration::from_secs(10),
            "{link:?}: a stepped down {:?} after its last renewal, later than leaseDuration − margin",
            a_lost - last_renewal
        );
        assert!(
            b_leads >= last_renewal + Duration::from_secs(15),
            "{link:?}: b acquired {:?} after a's last renewal, before the lease ran out",
            b_leads - last_renewal
        );
        assert!(a_lost < b_leads, "{link:?}: overlap");
        assert_eq!(server.holder().as_deref(), Some("b"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_taking_over_makes_the_leader_step_down_at_once() {
    let server = Arc::new(LeaseServer::default());
    let a = start(Client::new(&server), "a");
    until(Duration::from_secs(5), || a.check().is_ok())
        .await
        .expect("a leads");
    let t = Instant::now();
    server.overwrite("intruder");
    let down = until(Duration::from_secs(10), || a.check().is_err())
        .await
        .expect("a steps down");
    assert!(
        down - t <= Duration::from_secs(3),
        "a noticed the new holder only after {:?}",
        down - t
    );
    // And it does not take the Lease back while the intruder's claim runs.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(a.check().is_err());
    assert_eq!(server.holder().as_deref(), Some("intruder"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_the_lease_so_a_standby_need_not_wait() {
    let server = Arc::new(LeaseServer::default());
    let (elector, a) = LeaderElector::new(Client::new(&server), config("a"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(elector.run(async {
        let _ = stop_rx.await;
    }));
    until(Duration::from_secs(5), || a.check().is_ok())
        .await
        .expect("a leads");
    let b = start(Client::new(&server), "b");
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    assert!(a.check().is_err());
    let t = Instant::now();
    let b_leads = until(Duration::from_secs(30), || b.check().is_ok())
        .await
        .expect("b takes over");
    assert!(
        b_leads - t <= Duration::from_secs(3),
        "b waited {:?} for a released Lease",
        b_leads - t
    );
}

/// An IPAM that records when each write was sent to it (what the fence
/// controls; the margin covers the time a request then takes).
#[derive(Default)]
struct RecordingIpam {
    writes: Mutex<Vec<(Instant, String)>>,
    held: Mutex<BTreeMap<String, Reservation>>,
    /// How long each write takes.
    latency: Duration,
}

#[async_trait]
impl IpamBackend for RecordingIpam {
    fn name(&self) -> &str {
        "recording"
    }
    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        self.writes
            .lock()
            .unwrap()
            .push((Instant::now(), format!("reserve {}", owner.node)));
        tokio::time::sleep(self.latency).await;
        let mut held = self.held.lock().unwrap();
        let n = held.len();
        Ok(held
            .entry(owner.node.clone())
            .or_insert_with(|| Reservation {
                address: format!("198.18.{}.{}/16", n / 250, n % 250 + 2)
                    .parse::<IpNetwork>()
                    .unwrap(),
                gateway: Some("198.18.0.1".parse().unwrap()),
                zone: zone.clone(),
                subnet_id: "pool".into(),
                handle: String::new(),
                owner: owner.clone(),
                held_until: None,
            })
            .clone())
    }
    async fn release(&self, r: &Reservation, _hold: Duration) -> Result<(), IpamError> {
        self.writes
            .lock()
            .unwrap()
            .push((Instant::now(), format!("release {}", r.owner.node)));
        tokio::time::sleep(self.latency).await;
        self.held.lock().unwrap().remove(&r.owner.node);
        Ok(())
    }
    async fn lookup(&self, o: &Owner, _: Option<&Zone>) -> Result<Option<Reservation>, IpamError> {
        Ok(self.held.lock().unwrap().get(&o.node).cloned())
    }
    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        Ok(self.held.lock().unwrap().values().cloned().collect())
    }
}

#[tokio::test(start_paused = true)]
async fn the_fenced_ipam_refuses_writes_after_the_deadline_and_abandons_one_in_flight() {
    let server = Arc::new(LeaseServer::default());
    let ca = Client::new(&server);
    let fence = start(ca.clone(), "a");
    until(Duration::from_secs(5), || fence.check().is_ok())
        .await
        .expect("a leads");
    let inner = Arc::new(RecordingIpam {
        latency: Duration::from_secs(4),
        ..Default::default()
    });
    let ipam = FencedIpam::new(inner.clone(), fence.clone());
    let zone = Zone::parse("zone", "dal10").unwrap();
    ca.set(Link::Hanging);
    let deadline = fence.deadline().unwrap();
    // A write in flight at the deadline is abandoned (its outcome is
    // unknown: the next leader looks the owner up before allocating).
    tokio::time::sleep_until(deadline - Duration::from_secs(1)).await;
    match ipam.reserve(&Owner::new("c", "in-flight"), &zone).await {
        Err(IpamError::NotLeader { reason, .. }) => assert!(reason.contains("unknown"), "{reason}"),
        other => panic!("a write running across the deadline returned {other:?}"),
    }
    assert!(Instant::now() <= deadline + Duration::from_millis(1));
    // Writes keep being tried; none may be sent after the deadline.
    let mut refused = 0;
    for i in 0..20 {
        match ipam.reserve(&Owner::new("c", format!("n{i}")), &zone).await {
            Ok(_) => {}
            Err(IpamError::NotLeader { .. }) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(refused, 20, "writes after the deadline were let through");
    let late: Vec<_> = inner
        .writes
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= deadline)
        .cloned()
        .collect();
    assert!(late.is_empty(), "writes after the deadline: {late:?}");
    // Reads still work (`overlayctl`-style inspection, the next leader's
    // view is unaffected).
    assert!(ipam.list().await.is_ok());
}

/// The whole controller behind a partitioned Lease: it makes no IPAM write
/// after its local deadline, and its run ends there.
#[tokio::test(start_paused = true)]
async fn a_partitioned_leader_makes_no_ipam_write_after_its_deadline() {
    let server = Arc::new(LeaseServer::default());
    let ca = Client::new(&server);
    let fence = start(ca.clone(), "a");
    until(Duration::from_secs(5), || fence.check().is_ok())
        .await
        .expect("a leads");
    let nodes = MemoryNodes::new();
    let inner = Arc::new(RecordingIpam {
        latency: Duration::from_millis(300),
        ..Default::default()
    });
    let ctl = Arc::new(
        Controller::new(
            ControllerConfig::new("c"),
            ControllerParts {
                nodes: Arc::new(nodes.clone()),
                ipam: Arc::new(FencedIpam::new(inner.clone(), fence.clone())),
                overlay_ips: Arc::new(MemoryOverlayIps::new()),
                routes: Arc::new(MemoryStaticRoutes::new()),
            },
        )
        .with_events(Arc::new(MemoryEvents::new())),
    );
    let run = tokio::spawn({
        let ctl = ctl.clone();
        let fence = fence.clone();
        async move { ctl.run(async move { fence.lost().await }).await }
    });
    let node = |i: usize| {
        let labels = [("topology.kubernetes.io/zone".to_owned(), "dal10".to_owned())]
            .into_iter()
            .collect();
        NodeInfo::from_labels(format!("n{i}"), labels, vec![])
    };
    for i in 0..10 {
        nodes.upsert(node(i));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(inner.writes.lock().unwrap().len() >= 10);
    ca.set(Link::Hanging);
    let deadline = fence.deadline().unwrap();
    // Nodes keep arriving across the deadline.
    for i in 10..200 {
        nodes.upsert(node(i));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the controller stops at the deadline")
        .unwrap();
    let writes = inner.writes.lock().unwrap().clone();
    let late: Vec<_> = writes.iter().filter(|(t, _)| *t >= deadline).collect();
    assert!(late.is_empty(), "IPAM writes after the deadline: {late:?}");
    assert!(
        writes.len() > 10,
        "the controller made no writes before the deadline"
    );
}
