//! The agent reconciler with the real netlink programmer in a namespace: a
//! StaticRoute becomes a kernel route through the overlay gateway, deleting
//! it removes it, an external `ip route del` is repaired, and a restarted
//! agent converges without deleting anything.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_core::agent::{Agent, AgentConfig, AgentParts};
use overlay_core::fakes::{
    MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes, node_in_zone, recorded_overlay_ip,
};
use overlay_core::{
    FINALIZER, GatewayChoice, LabelSelector, RouteState, StaticRouteRule, StaticRouteStore,
};
use overlay_netlink::{NetlinkProgrammer, ProgrammerConfig};
use overlay_testbed::{Netns, NodeWithGateway, privileged};

struct Bed {
    node: Netns,
    _gw: Netns,
    nodes: MemoryNodes,
    ips: MemoryOverlayIps,
    routes: MemoryStaticRoutes,
}

fn bed() -> Bed {
    let NodeWithGateway { node, gateway: gw } = NodeWithGateway::new(
        "agent",
        &["198.51.100.10/24"],
        &["198.51.100.1/24", "192.0.2.1/24"],
    )
    .unwrap();
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
    Bed {
        node,
        _gw: gw,
        nodes,
        ips,
        routes: MemoryStaticRoutes::new(),
    }
}

impl Bed {
    async fn agent(&self) -> (Arc<Agent>, Arc<NetlinkProgrammer>) {
        let p = Arc::new(
            NetlinkProgrammer::new(ProgrammerConfig::default().in_namespace(self.node.path()))
                .await
                .unwrap(),
        );
        let a = Agent::new(
            AgentConfig::new("n1").unwrap(),
            AgentParts {
                programmer: p.clone(),
                nodes: Arc::new(self.nodes.clone()),
                overlay_ips: Arc::new(self.ips.clone()),
                routes: Some(Arc::new(self.routes.clone())),
                legacy: None,
            },
        );
        (Arc::new(a), p)
    }
    /// The node's report of `route` in its NodeOverlayIp status.
    fn report(&self, route: &str) -> Option<overlay_core::RouteReport> {
        self.ips
            .snapshot()
            .into_iter()
            .find(|r| r.name == "n1")?
            .agent?
            .routes
            .into_iter()
            .find(|r| r.route == route)
    }
    fn kernel_has(&self, prefix: &str) -> bool {
        self.node
            .routes(&[])
            .unwrap()
            .iter()
            .any(|l| l.starts_with(prefix))
    }
    async fn eventually(&self, what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for {what}; routes: {:?}",
            self.node.routes(&[]).unwrap()
        );
    }
}

fn spec(subnet: &str) -> StaticRouteRule {
    StaticRouteRule {
        subnet: subnet.parse().unwrap(),
        gateway: GatewayChoice::Overlay,
        table: None,
        metric: None,
        selector: LabelSelector::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_routes_reach_the_kernel_leave_it_and_survive_drift_and_restarts() {
    if !privileged("static_routes_reach_the_kernel_leave_it_and_survive_drift_and_restarts") {
        return;
    }
    let b = bed();
    b.routes.apply("onprem", Ok(spec("203.0.113.0/24")));
    let (agent, _p) = b.agent().await;
    let runner = tokio::spawn(agent.clone().run(futures::future::pending()));

    // The StaticRoute becomes a kernel route through the overlay gateway.
    b.eventually("the onprem route", || {
        b.node
            .routes(&[])
            .unwrap()
            .iter()
            .any(|l| l.starts_with("203.0.113.0/24 via 192.0.2.1 dev tmp0"))
    })
    .await;
    b.eventually("the Applied report", || {
        b.report("onprem")
            .is_some_and(|r| r.state == RouteState::Applied && r.device == "tmp0")
    })
    .await;
    assert!(
        b.node
            .ip(&["addr", "show", "dev", "tmp0"])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("192.0.2.20/24"))
            .unwrap()
    );

    // An external `ip route del` is repaired from the kernel's notifications.
    b.node.ip(&["route", "del", "203.0.113.0/24"]).unwrap();
    b.eventually("the repair", || {
        b.kernel_has("203.0.113.0/24 via 192.0.2.1")
    })
    .await;

    // A second route appears through the watch.
    b.routes.apply("extra", Ok(spec("198.18.5.0/24")));
    b.eventually("the extra route", || {
        b.kernel_has("198.18.5.0/24 via 192.0.2.1")
    })
    .await;

    // Deleting the StaticRoute removes the kernel route and the report.
    b.routes.add_finalizer("extra", FINALIZER).await.unwrap();
    b.routes.delete("extra");
    b.eventually("the extra route to go", || !b.kernel_has("198.18.5.0/24"))
        .await;
    b.eventually("the report to go", || b.report("extra").is_none())
        .await;

    // SIGTERM leaves everything in place; a restarted agent writes nothing.
    runner.abort();
    let _ = runner.await;
    assert!(b.kernel_has("203.0.113.0/24 via 192.0.2.1"));
    let (agent2, p2) = b.agent().await;
    let report = agent2.reconcile().await.unwrap();
    assert_eq!(
        report.apply.kernel_writes, 0,
        "restart rewrote the kernel: {report:?}"
    );
    assert!(report.apply.routes_removed.is_empty());
    assert_eq!(p2.counters().writes, 0);
}
