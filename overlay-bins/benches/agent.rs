//! `cargo bench -p overlay-bins --bench agent`: an agent with 1,000
//! StaticRoutes selecting its node, real netlink in a fresh namespace.
//!
//! Measures, with 1,000 routes in place, the time from a new StaticRoute
//! appearing to its route being in the kernel (the kernel's route
//! notification, received on the same runtime) and to its Applied report in the node's
//! NodeOverlayIp status, restart-to-converged with the routes in place
//! (and how many routes that deleted), the process's resident memory, and
//! a legacy-mode full pass with 1,000 listed subnets that finds nothing to
//! do. Baseline in the same run: what the original agents did per route,
//! one `ip route replace` process.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use overlay_core::agent::{Agent, AgentConfig, AgentParts};
use overlay_core::fakes::{
    MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes, node_in_zone, recorded_overlay_ip,
};
use overlay_core::{
    Cidr, FINALIZER, GatewayChoice, LabelSelector, LegacyRouteSource, NodeInfo, OverlayIpRecord,
    OverlayIpStore, RouteState, StaticRouteRule, StoreError, StoreEvent,
};
use overlay_netlink::{NetlinkProgrammer, ProgrammerConfig};
use overlay_testbed::{Netns, NodeWithGateway};

const ROUTES: usize = 1000;
const NEW_ROUTES: usize = 200;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn subnet(i: usize) -> String {
    format!("198.18.{}.{}/30", i / 64, (i % 64) * 4)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !overlay_testbed::privileged("bench agent") {
        return;
    }
    overlay_testbed::run_bench(bench()).unwrap();
}

async fn bench() {
    let NodeWithGateway { node, gateway: _gw } =
        NodeWithGateway::new("bench-agent", &["198.51.100.10/24"], &[]).unwrap();
    let nodes = MemoryNodes::new();
    nodes.upsert(node_in_zone(
        "n1",
        "z1",
        vec!["198.51.100.10".parse().unwrap()],
    ));
    let ips = MemoryOverlayIps::new();
    ips.insert(recorded_overlay_ip(
        "n1",
        "192.0.2.20/24".parse().unwrap(),
        "192.0.2.1".parse().unwrap(),
    ));
    let routes = MemoryStaticRoutes::new();
    let make_agent = || async {
        let p = NetlinkProgrammer::new(ProgrammerConfig::default().in_namespace(node.path()))
            .await
            .unwrap();
        Arc::new(Agent::new(
            AgentConfig::new("n1").unwrap(),
            AgentParts {
                programmer: Arc::new(p),
                nodes: Arc::new(nodes.clone()),
                overlay_ips: Arc::new(ips.clone()),
                routes: Some(Arc::new(routes.clone())),
                legacy: None,
            },
        ))
    };

    let exec_p50 = exec_baseline(&node);
    // 1,000 routes in place, applied by the first full pass.
    for i in 0..ROUTES {
        routes.apply(&format!("r{i}"), spec(i));
    }
    let agent = make_agent().await;
    let mut status = ips.watch();
    let runner = tokio::spawn(agent.clone().run(futures::future::pending()));
    let t = Instant::now();
    while !agent.is_ready() {
        assert!(t.elapsed() < Duration::from_secs(30), "first pass not done");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "first pass with {ROUTES} routes: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    while status.next().now_or_never().flatten().is_some() {}

    let (p50, p99, status_p50) = new_routes_one_at_a_time(&node, &routes, &mut status).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = rss_mib();
    println!("steady-state RSS of the process running the agent: {rss:.1} MiB");

    // Restart with the routes in place.
    runner.abort();
    let _ = runner.await;
    drop(agent);
    let t = Instant::now();
    let agent2 = make_agent().await;
    let report = agent2.reconcile().await.unwrap();
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    let deletions = report.apply.routes_removed.len();
    let after = node
        .routes(&[])
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("198.18."))
        .count();
    drop(agent2);
    let legacy_noop_ms = legacy_noop().await;
    let idle_rss = binary_rss(0).await;
    let binary_rss = binary_rss(ROUTES).await;
    println!(
        "restart to converged: {restart_ms:.1} ms, kernel writes {}, route deletions {deletions}, routes in kernel {after}",
        report.apply.kernel_writes
    );
    println!(
        "BENCH agent routes={ROUTES} route_latency_p50_ms={p50:.2} route_latency_p99_ms={p99:.2} exec_p50_ms={exec_p50:.2} ratio_vs_exec={:.1} restart_converge_ms={restart_ms:.1} restart_route_deletions={deletions} rss_mib={rss:.1} legacy_noop_ms={legacy_noop_ms:.2} status_latency_p50_ms={status_p50:.2} binary_rss_mib={binary_rss:.1} binary_idle_rss_mib={idle_rss:.1}",
        exec_p50 / p50
    );
}

/// A StaticRoute to `subnet(i)` via the overlay gateway, on every node.
fn spec(i: usize) -> Result<StaticRouteRule, String> {
    Ok(StaticRouteRule {
        subnet: subnet(i).parse().unwrap(),
        gateway: GatewayChoice::Overlay,
        table: None,
        metric: None,
        selector: LabelSelector::default(),
    })
}

/// Baseline: one `ip route replace` process per route (the original
/// agents); p50 in ms.
fn exec_baseline(node: &Netns) -> f64 {
    let n_exec = 100;
    let mut exec_ms = Vec::new();
    for i in 0..n_exec {
        let t = Instant::now();
        node.ip(&[
            "route",
            "replace",
            &format!("198.19.{}.0/24", i),
            "via",
            "198.51.100.1",
        ])
        .unwrap();
        exec_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let exec_p50 = percentile(&mut exec_ms, 0.5);
    println!(
        "baseline: one `ip route replace` process per route: p50 {exec_p50:.2} ms over {n_exec}"
    );
    for i in 0..n_exec {
        node.ip(&["route", "del", &format!("198.19.{}.0/24", i)])
            .unwrap();
    }

    exec_p50
}

/// One new StaticRoute at a time, with the others in place: the time until
/// its route is in the kernel (the kernel's notification in the node's
/// namespace), and until the agent reports it Applied (written after the
/// kernel acknowledged it). The next route is created once the report is
/// in. Returns the kernel p50 and p99 and the report p50, in ms.
async fn new_routes_one_at_a_time(
    node: &Netns,
    routes: &MemoryStaticRoutes,
    status: &mut BoxStream<'static, Result<StoreEvent<OverlayIpRecord>, StoreError>>,
) -> (f64, f64, f64) {
    let mut monitor = RouteMonitor::start(node);
    let mut lat = Vec::with_capacity(NEW_ROUTES);
    let mut status_lat = Vec::with_capacity(NEW_ROUTES);
    for i in ROUTES..ROUTES + NEW_ROUTES {
        let name = format!("r{i}");
        let dest = subnet(i);
        let t = Instant::now();
        routes.apply(&name, spec(i));
        lat.push(monitor.wait_for(&dest, t).await);
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), status.next())
                .await
                .unwrap_or_else(|_| panic!("route {name} not reported after 10 s"));
            let Some(Ok(StoreEvent::Applied(rec))) = ev else {
                continue;
            };
            let applied = rec.agent.is_some_and(|a| {
                a.routes
                    .iter()
                    .any(|r| r.route == name && r.state == RouteState::Applied)
            });
            if applied {
                break;
            }
        }
        status_lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let status_p50 = percentile(&mut status_lat, 0.5);
    println!("StaticRoute -> Applied in the node's status: p50 {status_p50:.2} ms");
    let kernel_routes = node
        .routes(&[])
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("198.18."))
        .count();
    assert_eq!(
        kernel_routes,
        ROUTES + NEW_ROUTES,
        "every route in the kernel"
    );
    let p50 = percentile(&mut lat.clone(), 0.5);
    let p99 = percentile(&mut lat, 0.99);
    println!(
        "StaticRoute -> kernel route: p50 {p50:.2} ms, p99 {p99:.2} ms ({NEW_ROUTES} new routes one at a time, {ROUTES} in place)"
    );
    (p50, p99, status_p50)
}

/// A legacy-mode agent with 1,000 listed subnets in place: the time of a
/// full pass that finds nothing to do (p50 of 20).
async fn legacy_noop() -> f64 {
    let node = Netns::new("bench-agent-legacy").unwrap();
    let gw = Netns::new("bench-agent-legacy-gw").unwrap();
    node.add_veth("eth0", &gw, "gw0").unwrap();
    node.add_addr("eth0", "198.51.100.10/24").unwrap();
    node.ip(&["route", "add", "198.18.0.0/15", "via", "198.51.100.1"])
        .unwrap();
    let nodes = MemoryNodes::new();
    nodes.upsert(NodeInfo::from_labels(
        "n1",
        BTreeMap::new(),
        vec!["198.51.100.10".parse().unwrap()],
    ));
    let subnets: Vec<Cidr> = (0..ROUTES)
        .map(|i| {
            format!("198.19.{}.{}/30", i / 64, (i % 64) * 4)
                .parse()
                .unwrap()
        })
        .collect();
    let mut cfg = AgentConfig::new("n1").unwrap();
    cfg.legacy_gateway_from = "198.18.0.0/15".parse().unwrap();
    let p = NetlinkProgrammer::new(ProgrammerConfig::default().in_namespace(node.path()))
        .await
        .unwrap();
    let agent = Agent::new(
        cfg,
        AgentParts {
            programmer: Arc::new(p),
            nodes: Arc::new(nodes),
            overlay_ips: Arc::new(MemoryOverlayIps::new()),
            routes: None,
            legacy: Some(Arc::new(StaticList(subnets))),
        },
    );
    let first = agent.reconcile().await.unwrap();
    assert_eq!(first.apply.routes.len(), ROUTES);
    let mut ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let rep = agent.reconcile().await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(rep.apply.kernel_writes, 0, "a no-op pass writes nothing");
    }
    let p50 = percentile(&mut ms, 0.5);
    println!("legacy mode, {ROUTES} listed subnets in place: no-op full pass p50 {p50:.2} ms");
    p50
}

/// The kernel's route notifications in a namespace (like `ip monitor
/// route`, on this runtime): when each route reached the kernel.
struct RouteMonitor {
    _conn: tokio::task::JoinHandle<()>,
    messages: futures::channel::mpsc::UnboundedReceiver<(
        netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
        netlink_sys::SocketAddr,
    )>,
}

impl RouteMonitor {
    fn start(netns: &Netns) -> Self {
        let rt = tokio::runtime::Handle::current();
        let (conn, _handle, messages) = netns
            .run(move || {
                let _in_runtime = rt.enter();
                rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Ipv4Route])
            })
            .unwrap()
            .unwrap();
        Self {
            _conn: tokio::spawn(conn),
            messages,
        }
    }

    /// Milliseconds from `since` to the kernel's notification of a new
    /// route to `dest`.
    async fn wait_for(&mut self, dest: &str, since: Instant) -> f64 {
        use netlink_packet_core::NetlinkPayload;
        use netlink_packet_route::RouteNetlinkMessage;
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        let net: ipnetwork::Ipv4Network = dest.parse().unwrap();
        loop {
            let (msg, _) = tokio::time::timeout(Duration::from_secs(10), self.messages.next())
                .await
                .unwrap_or_else(|_| panic!("no kernel route to {dest} after 10 s"))
                .unwrap();
            let at = Instant::now();
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = msg.payload else {
                continue;
            };
            let to = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if to == Some(net.ip()) && r.header.destination_prefix_length == net.prefix() {
                return at.duration_since(since).as_secs_f64() * 1e3;
            }
        }
    }
}

/// The `overlay-agent` binary with the real kube client, in a namespace
/// of its own, against a minimal API server (lists and open watches) in
/// that namespace: its resident memory once it has applied 1,000
/// StaticRoutes.
async fn binary_rss(routes: usize) -> f64 {
    let node = Netns::new("bench-agent-bin").unwrap();
    let gw = Netns::new("bench-agent-bin-gw").unwrap();
    node.add_veth("eth0", &gw, "gw0").unwrap();
    node.add_addr("eth0", "198.51.100.10/24").unwrap();
    let listener = node
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let server = tokio::spawn(async move {
        let app = axum::Router::new().fallback(move |req| mini_api_server(req, routes));
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\nusers:\n- name: u\n  user: {{token: bench}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            node.name(),
            env!("CARGO_BIN_EXE_overlay-agent"),
        ])
        .args(["--node-name", "n1", "--metrics-addr", "off"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let t = Instant::now();
    loop {
        let n = node
            .routes(&[])
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("198.18.") && l.contains("proto 250"))
            .count();
        if n == routes && (routes > 0 || t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the agent binary applied {n} routes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let rss = field("VmRSS:") / 1024.0;
    println!(
        "overlay-agent binary (real kube client) with {routes} routes applied: RSS {rss:.1} MiB (heap and stacks {:.1}, binary and libraries {:.1}), {} threads",
        field("RssAnon:") / 1024.0,
        field("RssFile:") / 1024.0,
        field("Threads:")
    );
    let _ = child.kill().await;
    server.abort();
    rss
}

/// Just enough of a kube-apiserver for one agent: its Node, its
/// NodeOverlayIp, 1,000 StaticRoutes, watches that stay open, and status
/// writes that are accepted.
async fn mini_api_server(req: axum::extract::Request, routes: usize) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let list = |kind: &str, api: &str, items: Vec<serde_json::Value>| {
        axum::Json(serde_json::json!({"apiVersion": api, "kind": kind,
            "metadata": {"resourceVersion": "1"}, "items": items}))
        .into_response()
    };
    let noip = serde_json::json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
        "metadata": {"name": "n1", "resourceVersion": "1", "finalizers": [FINALIZER]},
        "status": {"ipAddr": "192.0.2.20/24", "gateway": "192.0.2.1"}});
    if query.contains("watch=true") {
        let body = axum::body::Body::from_stream(futures::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >());
        return axum::response::Response::new(body);
    }
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/api/v1/nodes") => list(
            "NodeList",
            "v1",
            vec![serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u1", "resourceVersion": "1",
                "labels": {"topology.kubernetes.io/zone": "z1"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.10"}]}})],
        ),
        ("GET", "/apis/iks.ibm.com/v1alpha1/nodeoverlayips") => {
            list("NodeOverlayIpList", "iks.ibm.com/v1alpha1", vec![noip])
        }
        ("GET", "/apis/iks.ibm.com/v1alpha1/staticroutes") => list(
            "StaticRouteList",
            "iks.ibm.com/v1alpha1",
            (0..routes)
                .map(|i| {
                    serde_json::json!({"apiVersion": "iks.ibm.com/v1alpha1",
                    "kind": "StaticRoute",
                    "metadata": {"name": format!("r{i}"), "resourceVersion": "1", "generation": 1},
                    "spec": {"subnet": subnet(i)}})
                })
                .collect(),
        ),
        ("PATCH", p) if p.ends_with("/status") => axum::Json(noip).into_response(),
        ("POST", _) => (
            axum::http::StatusCode::CREATED,
            axum::Json(serde_json::json!({})),
        )
            .into_response(),
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// A legacy route list that never changes.
struct StaticList(Vec<Cidr>);

#[async_trait::async_trait]
impl LegacyRouteSource for StaticList {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        Ok(self.0.clone())
    }

    fn changes(&self) -> futures::stream::BoxStream<'static, ()> {
        futures::stream::pending().boxed()
    }
}
