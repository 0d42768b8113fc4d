//! `cargo bench -p overlay-core --bench status_scale`: StaticRoute status
//! at scale, against the scripted API server (`overlay_core::fakes::apiserver`,
//! which records each field manager in `managedFields` like a real one).
//!
//! 5,000 Nodes and NodeOverlayIps (with addresses) are in the server; the
//! real [`Controller`] runs over `KubeNodes`/`KubeOverlayIps`/
//! `KubeStaticRoutes`; one agent's StaticRoute watch (a `KubeStaticRoutes`
//! as an agent uses it) is counted in bytes; 5,000 simulated agents, on
//! seeing the new StaticRoute, each write their own NodeOverlayIp status
//! once with an Applied report (`KubeOverlayIps::set_agent_status`, 64 at a
//! time). One StaticRoute is created; measured until its summary shows all
//! nodes applied: API writes, the largest StaticRoute, the StaticRoute
//! watch bytes one agent receives, the time.
//!
//! Baseline in the same run: the original design, every agent
//! server-side-applying its own `nodeStatus` entry into the StaticRoute
//! under its own field manager. It is run for real on `STATUS_SCALE_BASELINE`
//! nodes (default 400: each write ships the whole, growing object, which
//! is quadratic) and extrapolated to N with the linear growth it measured
//! (the object grows by a constant per node). A real kube-apiserver grew
//! by about 1,000 bytes per node (`shared/kube/apiserver-facts.md`): that
//! figure is printed too. Real etcd refuses objects over 1.5 MiB, so the
//! original design stops working long before 5,000 nodes.
//!
//! `STATUS_SCALE_NODES` sets N (default 5000).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::crd::StaticRoute;
use overlay_core::fakes::MemoryEvents;
use overlay_core::invalid::InvalidObjects;
use overlay_core::k8s::{
    CONTROLLER_MANAGER, KubeNodes, KubeOverlayIps, KubeStaticRoutes, OverlayIpChanges,
    node_field_manager,
};
use overlay_core::model::overlay_ip_labels;
use overlay_core::{
    AgentStatus, FINALIZER, IpamBackend, IpamError, NodeInfo, OverlayIpStore, Owner, Reservation,
    RouteReport, RouteState, StaticRouteRecord, StaticRouteStore, StoreError, StoreEvent, Zone,
};
use serde_json::json;
use support::apiserver::{FakeApiServer, NODES, NOIPS, ROUTES};

const ROUTE: &str = "onprem";
const AGENT_CONCURRENCY: usize = 64;
/// What a real kube-apiserver added per node in the original design.
const REAL_BYTES_PER_NODE: f64 = 1_000.0;
const ETCD_LIMIT: f64 = 1.5 * 1024.0 * 1024.0;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn address(i: usize) -> String {
    format!("198.18.{}.{}", i / 250, 1 + i % 250)
}

fn overlay_address(i: usize) -> String {
    format!("198.19.{}.{}/16", i / 250, 1 + i % 250)
}

fn node_info(i: usize) -> NodeInfo {
    let labels = [
        ("topology.kubernetes.io/zone", "dal10"),
        ("topology.kubernetes.io/region", "us-south"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut n = NodeInfo::from_labels(node_name(i), labels, vec![]);
    n.uid = Some(format!("uid-{i}"));
    n
}

/// Node `i` and its NodeOverlayIp, as a running cluster has them: the
/// address recorded, the agent's Configured condition written.
fn seed(api: &FakeApiServer, n: usize) {
    for i in 0..n {
        let info = node_info(i);
        api.put(
            NODES,
            json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": info.name, "uid": info.uid, "labels": info.labels},
                "status": {"addresses": [{"type": "InternalIP", "address": address(i)}]}}),
        );
        api.put(
            NOIPS,
            json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
                "metadata": {"name": info.name, "labels": overlay_ip_labels(&info),
                    "finalizers": [FINALIZER],
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": info.name, "uid": info.uid}]},
                "status": {"ipAddr": overlay_address(i), "gateway": "198.19.0.1",
                    "interface": "eth0", "interfaceLabel": "tmp0",
                    "conditions": [{"type": "Configured", "status": "True", "reason": "AddressConfigured",
                        "message": "configured", "lastTransitionTime": "2026-11-27T12:00:00Z"}]}}),
        );
    }
}

/// The IPAM of a settled cluster: every node holds the address recorded.
struct SettledIpam {
    held: Vec<Reservation>,
}

impl SettledIpam {
    fn new(n: usize) -> Self {
        let held = (0..n)
            .map(|i| Reservation {
                address: overlay_address(i).parse().unwrap(),
                gateway: Some("198.19.0.1".parse().unwrap()),
                zone: "dal10".parse().unwrap(),
                subnet_id: "1".into(),
                handle: i.to_string(),
                owner: Owner::new("bench", node_name(i)),
                held_until: None,
            })
            .collect();
        Self { held }
    }
}

#[async_trait]
impl IpamBackend for SettledIpam {
    fn name(&self) -> &str {
        "settled"
    }
    async fn reserve(&self, owner: &Owner, _: &Zone) -> Result<Reservation, IpamError> {
        self.lookup(owner, None)
            .await?
            .ok_or_else(|| IpamError::Exhausted {
                zone: "dal10".into(),
                subnets: vec![],
            })
    }
    async fn release(&self, _: &Reservation, _: Duration) -> Result<(), IpamError> {
        Ok(())
    }
    async fn lookup(
        &self,
        owner: &Owner,
        _: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        Ok(self.held.iter().find(|r| &r.owner == owner).cloned())
    }
    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        Ok(self.held.clone())
    }
}

fn route_object() -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
        "metadata": {"name": ROUTE}, "spec": {"subnet": "192.168.0.0/24"}}),
    )
    .unwrap()
}

fn routes_api(client: &kube::Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &ApiResource::erase::<StaticRoute>(&()))
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server has seen no write for `quiet`.
async fn settle(api: &FakeApiServer, quiet: Duration) {
    let mut last = api.writes();
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = api.writes();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

fn applied_report() -> AgentStatus {
    AgentStatus {
        interface: "eth0".into(),
        interface_label: "tmp0".into(),
        configured: true,
        reason: "AddressConfigured".into(),
        message: "configured".into(),
        routes: vec![RouteReport {
            route: ROUTE.into(),
            device: "tmp0".into(),
            gateway: "198.19.0.1".into(),
            table: None,
            state: RouteState::Applied,
            message: String::new(),
        }],
        gateways: vec![],
    }
}

struct Figures {
    nodes: usize,
    api_writes: usize,
    max_object_bytes: usize,
    agent_watch_bytes: u64,
    converge_s: f64,
    agent_wakes: usize,
    noip_bytes: usize,
    /// From the route's creation until the last agent's report was written.
    reports_s: f64,
}

/// The controller under test, over Kubernetes stores on `client`.
fn bench_controller(client: &Client, n: usize, invalid: &InvalidObjects) -> Arc<Controller> {
    Arc::new(
        Controller::new(
            ControllerConfig::new("bench"),
            ControllerParts {
                nodes: Arc::new(KubeNodes::new(client.clone(), None, invalid.clone())),
                ipam: Arc::new(SettledIpam::new(n)),
                overlay_ips: Arc::new(KubeOverlayIps::new(client.clone(), None, invalid.clone())),
                routes: Arc::new(KubeStaticRoutes::new(
                    client.clone(),
                    CONTROLLER_MANAGER.into(),
                    invalid.clone(),
                )),
            },
        )
        .with_events(Arc::new(MemoryEvents::new())),
    )
}

type Reported = Arc<std::sync::Mutex<Option<Instant>>>;

/// The agents: each writes its own report once, when the route shows in
/// the (one, shared) agent watch. Returns the task, the count of wakes, and
/// when the last report was written.
fn agents_report_once(
    mut agent_watch: BoxStream<'static, Result<StoreEvent<StaticRouteRecord>, StoreError>>,
    agents: Arc<KubeOverlayIps>,
    n: usize,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>, Reported) {
    let wakes = Arc::new(AtomicUsize::new(0));
    let woken = wakes.clone();
    let reports_done = Arc::new(std::sync::Mutex::new(None));
    let done = reports_done.clone();
    let agent_task = tokio::spawn(async move {
        let mut reported = false;
        while let Some(ev) = agent_watch.next().await {
            let Ok(StoreEvent::Applied(r)) = ev else {
                continue;
            };
            if r.name != ROUTE {
                continue;
            }
            woken.fetch_add(1, Ordering::SeqCst);
            if !reported {
                reported = true;
                let agents = agents.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    futures::stream::iter(0..n)
                        .for_each_concurrent(AGENT_CONCURRENCY, |i| {
                            let agents = agents.clone();
                            async move {
                                agents
                                    .set_agent_status(&node_name(i), &applied_report())
                                    .await
                                    .unwrap();
                            }
                        })
                        .await;
                    *done.lock().unwrap() = Some(Instant::now());
                });
            }
        }
    });
    (agent_task, wakes, reports_done)
}

/// The new design: agents report into their own NodeOverlayIp, the
/// controller sums up.
async fn new_design(n: usize) -> Figures {
    let (api, client) = FakeApiServer::start();
    seed(&api, n);
    let invalid = InvalidObjects::default();
    // The agent's StaticRoute watch opens first: watch_bytes(ROUTES)[0].
    let agent_routes = KubeStaticRoutes::new(
        client.clone(),
        node_field_manager(&node_name(0)),
        invalid.clone(),
    );
    let agent_watch = agent_routes.watch();
    assert!(agent_routes.list().await.unwrap().is_empty());
    assert!(
        api.wait_for_watchers(ROUTES, 1).await,
        "no watch on {ROUTES}"
    );
    let agents = Arc::new(KubeOverlayIps::with_changes(
        client.clone(),
        None,
        OverlayIpChanges::IgnoreAgentStatus,
        invalid.clone(),
    ));
    assert_eq!(agents.list().await.unwrap().len(), n);
    let ctl = bench_controller(&client, n, &invalid);
    let run = tokio::spawn(ctl.clone().run(futures::future::pending()));
    wait_for("the controller", Duration::from_secs(60), || ctl.is_ready()).await;
    settle(&api, Duration::from_secs(2)).await;
    let setup_writes = api.writes();
    assert_eq!(
        setup_writes, 0,
        "a settled cluster needs no writes to start"
    );
    let watched_before = api.watch_bytes(ROUTES)[0];

    let started = Instant::now();
    routes_api(&client)
        .create(&PostParams::default(), &route_object())
        .await
        .unwrap();
    let (agent_task, wakes, reports_done) = agents_report_once(agent_watch, agents, n);
    let applied = || {
        api.object(ROUTES, ROUTE)
            .and_then(|o| o["status"]["applied"].as_u64())
            .unwrap_or(0)
    };
    wait_for("all nodes applied", Duration::from_secs(120), || {
        applied() == n as u64
    })
    .await;
    let converge_s = started.elapsed().as_secs_f64();
    // Let trailing writes land before counting.
    settle(&api, Duration::from_secs(3)).await;
    let figures = Figures {
        nodes: n,
        api_writes: api.writes() - setup_writes,
        max_object_bytes: api.max_object_bytes(ROUTES),
        agent_watch_bytes: api.watch_bytes(ROUTES)[0] - watched_before,
        converge_s,
        agent_wakes: wakes.load(Ordering::SeqCst),
        noip_bytes: api.max_object_bytes(NOIPS),
        reports_s: reports_done
            .lock()
            .unwrap()
            .map_or(f64::NAN, |t| (t - started).as_secs_f64()),
    };
    run.abort();
    agent_task.abort();
    figures
}

/// The original design, run for real on `n` nodes.
async fn original_design(n: usize) -> (Figures, usize) {
    let (api, client) = FakeApiServer::start();
    // The original CRD allowed 5,000 nodeStatus entries.
    api.without_validation(ROUTES);
    let invalid = InvalidObjects::default();
    let agent_routes =
        KubeStaticRoutes::new(client.clone(), node_field_manager(&node_name(0)), invalid);
    assert!(agent_routes.list().await.unwrap().is_empty());
    assert!(
        api.wait_for_watchers(ROUTES, 1).await,
        "no watch on {ROUTES}"
    );
    let routes = routes_api(&client);
    let started = Instant::now();
    routes
        .create(&PostParams::default(), &route_object())
        .await
        .unwrap();
    let finalizer = json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
        "metadata": {"name": ROUTE, "finalizers": [FINALIZER]}});
    routes
        .patch(
            ROUTE,
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(finalizer),
        )
        .await
        .unwrap();
    let empty = api
        .object(ROUTES, ROUTE)
        .map(|o| o.to_string().len())
        .unwrap_or(0);
    futures::stream::iter(0..n)
        .for_each_concurrent(8, |i| {
            let routes = routes.clone();
            async move {
                let body = json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
                    "metadata": {"name": ROUTE},
                    "status": {"nodeStatus": [{"hostname": node_name(i), "device": "tmp0",
                        "gateway": "198.19.0.1", "state": "Applied"}]}});
                let pp = PatchParams::apply(&node_field_manager(&node_name(i))).force();
                routes
                    .patch_status(ROUTE, &pp, &Patch::Apply(body))
                    .await
                    .unwrap();
            }
        })
        .await;
    let entries = || {
        api.object(ROUTES, ROUTE)
            .and_then(|o| o["status"]["nodeStatus"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    wait_for("every entry", Duration::from_secs(60), || entries() == n).await;
    let converge_s = started.elapsed().as_secs_f64();
    settle(&api, Duration::from_millis(500)).await;
    let figures = Figures {
        nodes: n,
        api_writes: api.writes(),
        max_object_bytes: api.max_object_bytes(ROUTES),
        agent_watch_bytes: api.watch_bytes(ROUTES)[0],
        converge_s,
        agent_wakes: n + 2,
        noip_bytes: 0,
        reports_s: converge_s,
    };
    (figures, empty)
}

/// The original design at `n` nodes from a run on fewer: the object grows
/// by `per_node` bytes per entry; every write ships it to every watcher.
fn extrapolate(m: &Figures, empty: usize, n: usize, per_node: f64) -> (f64, f64, f64) {
    let (k, nf, empty) = (m.nodes as f64, n as f64, empty as f64);
    // Events: create, finalizer, then one per entry with the object as it
    // grew; `overhead` is what an event carries beyond the object.
    let objects = |x: f64| (x + 2.0) * empty + per_node * x * (x + 1.0) / 2.0;
    let overhead = (m.agent_watch_bytes as f64 - objects(k)) / (k + 2.0);
    let writes = m.api_writes as f64 - k + nf;
    let object = empty + per_node * nf;
    let watch = objects(nf) + (nf + 2.0) * overhead;
    (writes, object, watch)
}

fn kib(b: f64) -> String {
    format!("{:.1} KiB", b / 1024.0)
}

/// The new design's figures, printed before the baseline runs.
fn report_new(new: &Figures) {
    println!(
        "status-scale: {} nodes, one StaticRoute created; new design (agents report into their own NodeOverlayIp, the controller sums up)",
        new.nodes
    );
    println!(
        "  API writes                {:>12}   (goal <= N + 10 = {})",
        new.api_writes,
        new.nodes + 10
    );
    println!(
        "  largest StaticRoute       {:>12}   (goal <= 64 KiB)",
        kib(new.max_object_bytes as f64)
    );
    println!(
        "  agent StaticRoute watch   {:>12}   (goal <= 3x the object = {})",
        kib(new.agent_watch_bytes as f64),
        kib(3.0 * new.max_object_bytes as f64)
    );
    println!(
        "  agent wake-ups            {:>12}   (route created, controller's finalizer; summaries wake nobody)",
        new.agent_wakes
    );
    println!(
        "  until applied = {}      {:>10.2} s   (the last report written at {:.2} s; a summary at most once per second)",
        new.nodes, new.converge_s, new.reports_s
    );
    println!(
        "  largest NodeOverlayIp     {:>12}",
        kib(new.noip_bytes as f64)
    );
}

fn main() {
    let n = env_usize("STATUS_SCALE_NODES", 5000);
    let nb = env_usize("STATUS_SCALE_BASELINE", 400).min(n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total = Instant::now();
    let new = rt.block_on(new_design(n));
    report_new(&new);
    let (old, empty) = rt.block_on(original_design(nb));
    let per_node = (old.max_object_bytes - empty) as f64 / nb as f64;
    let (old_writes, old_object, old_watch) = extrapolate(&old, empty, n, per_node);
    let real_object = empty as f64 + REAL_BYTES_PER_NODE * n as f64;
    let real_watch =
        (n + 2) as f64 * empty as f64 + REAL_BYTES_PER_NODE * (n * (n + 1)) as f64 / 2.0;

    println!(
        "baseline: original design (each agent applies its own nodeStatus entry), measured on {nb} nodes"
    );
    println!(
        "  API writes {}, largest StaticRoute {} ({:.0} B per node, managedFields included), agent watch {}, {:.2} s",
        old.api_writes,
        kib(old.max_object_bytes as f64),
        per_node,
        kib(old.agent_watch_bytes as f64),
        old.converge_s
    );
    println!(
        "baseline extrapolated to {n} nodes (object grows {per_node:.0} B per node as measured; a real kube-apiserver grew ~1,000 B per node):"
    );
    println!(
        "  API writes {:.0}, largest StaticRoute {} (real apiserver ~{}; etcd refuses > 1.5 MiB: {}), agent watch {} (real ~{})",
        old_writes,
        kib(old_object),
        kib(real_object),
        if old_object > ETCD_LIMIT || real_object > ETCD_LIMIT {
            "would fail"
        } else {
            "fits"
        },
        kib(old_watch),
        kib(real_watch)
    );
    println!("ratios new / baseline at {n} nodes:");
    println!(
        "  API writes          {:.3}",
        new.api_writes as f64 / old_writes
    );
    println!(
        "  largest StaticRoute {:.4}  (vs real apiserver {:.4})",
        new.max_object_bytes as f64 / old_object,
        new.max_object_bytes as f64 / real_object
    );
    println!(
        "  agent watch bytes   {:.6}  (vs real apiserver {:.6})",
        new.agent_watch_bytes as f64 / old_watch,
        new.agent_watch_bytes as f64 / real_watch
    );
    println!(
        "  agent wake-ups      {:.4}",
        new.agent_wakes as f64 / (n + 2) as f64
    );
    println!("bench took {:.1} s", total.elapsed().as_secs_f64());
    println!(
        "BENCH status-scale nodes={} api_writes={} max_object_bytes={} agent_watch_bytes={} converge_s={:.2}",
        new.nodes, new.api_writes, new.max_object_bytes, new.agent_watch_bytes, new.converge_s
    );
}
