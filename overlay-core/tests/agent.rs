//! The agent reconciler against an in-memory programmer and stores.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use overlay_core::agent::{Agent, AgentConfig, AgentParts};
use overlay_core::fakes::{MemoryNodes, MemoryOverlayIps, MemoryProgrammer, MemoryStaticRoutes};
use overlay_core::legacy::{LegacyRoutes, parse_legacy_list, parse_legacy_routes};
use overlay_core::{
    Cidr, DiscoveredRoute, FINALIZER, GatewayChoice, LabelSelector, LegacyRouteSource, NodeInfo,
    OverlayIpRecord, OverlayIpStore, RouteReport, RouteState, StaticRouteRule, StoreError,
    StoreEvent,
};

const ME: &str = "node-a";

struct Env {
    nodes: MemoryNodes,
    ips: MemoryOverlayIps,
    routes: MemoryStaticRoutes,
    kernel: MemoryProgrammer,
    legacy: Arc<FakeLegacy>,
    cfg: AgentConfig,
}

#[derive(Default)]
struct FakeLegacy {
    answer: Mutex<Option<Result<Vec<Cidr>, StoreError>>>,
}

impl FakeLegacy {
    fn set(&self, a: Result<Vec<Cidr>, StoreError>) {
        *self.answer.lock().unwrap() = Some(a);
    }
}

#[async_trait]
impl LegacyRouteSource for FakeLegacy {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        self.answer.lock().unwrap().clone().unwrap_or(Ok(vec![]))
    }
    fn changes(&self) -> BoxStream<'static, ()> {
        Box::pin(futures::stream::pending())
    }
}

fn unreachable() -> StoreError {
    StoreError::Unavailable {
        kind: "ConfigMap".into(),
        name: "static-routes".into(),
        message: "connection refused".into(),
    }
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn env() -> Env {
    let nodes = MemoryNodes::new();
    let mut labels = BTreeMap::new();
    labels.insert("topology.kubernetes.io/zone".to_owned(), "dal10".to_owned());
    labels.insert("tier".to_owned(), "edge".to_owned());
    nodes.upsert(NodeInfo::from_labels(
        ME,
        labels,
        vec!["203.0.113.10".parse().unwrap()],
    ));
    let kernel = MemoryProgrammer::new();
    kernel.with(|k| {
        k.addresses
            .insert("203.0.113.10".parse().unwrap(), "eth0".parse().unwrap());
        k.covering.push(DiscoveredRoute {
            destination: cidr("198.18.0.0/15"),
            gateway: "203.0.113.1".parse().unwrap(),
            device: "eth0".parse().unwrap(),
        });
    });
    let mut cfg = AgentConfig::new(ME).unwrap();
    cfg.protected = vec![cidr("198.51.100.128/25")];
    cfg.legacy_gateway_from = cidr("198.18.0.0/15");
    // The controller creates every node's NodeOverlayIp; its address comes
    // later.
    let ips = MemoryOverlayIps::new();
    ips.insert(OverlayIpRecord {
        name: ME.into(),
        finalizers: vec![FINALIZER.into()],
        ..Default::default()
    });
    Env {
        nodes,
        ips,
        routes: MemoryStaticRoutes::new(),
        kernel,
        legacy: Arc::new(FakeLegacy::default()),
        cfg,
    }
}

impl Env {
    fn agent(&self, legacy: bool) -> Agent {
        Agent::new(
            self.cfg.clone(),
            AgentParts {
                programmer: Arc::new(self.kernel.clone()),
                nodes: Arc::new(self.nodes.clone()),
                overlay_ips: Arc::new(self.ips.clone()),
                routes: Some(Arc::new(self.routes.clone())),
                legacy: legacy.then(|| self.legacy.clone() as Arc<dyn LegacyRouteSource>),
            },
        )
    }
    fn give_overlay_ip(&self) {
        self.ips.insert(OverlayIpRecord {
            name: ME.into(),
            finalizers: vec![FINALIZER.into()],
            ip_addr: Some("192.0.2.20/24".parse().unwrap()),
            gateway: Some("192.0.2.1".parse().unwrap()),
            ..Default::default()
        });
    }
    fn route(&self, name: &str, subnet: &str, gateway: GatewayChoice, selector: &str) {
        self.routes.apply(
            name,
            Ok(StaticRouteRule {
                subnet: cidr(subnet),
                gateway,
                table: None,
                metric: None,
                selector: LabelSelector::parse("sel", selector).unwrap(),
            }),
        );
    }
    fn kernel_routes(&self) -> Vec<String> {
        self.kernel
            .with(|k| k.routes.values().map(|r| r.to_string()).collect())
    }
    /// This node's report of `route`, in its NodeOverlayIp status.
    fn entry(&self, route: &str) -> Option<RouteReport> {
        self.ips
            .snapshot()
            .into_iter()
            .find(|r| r.name == ME)?
            .agent?
            .routes
            .into_iter()
            .find(|e| e.route == route)
    }
}

#[tokio::test]
async fn overlay_address_and_a_route_through_the_overlay_gateway() {
    let e = env();
    e.give_overlay_ip();
    e.route("onprem", "198.51.100.0/25", GatewayChoice::Overlay, "");
    let rep = e.agent(false).reconcile().await.unwrap();
    let iface = e.kernel.with(|k| k.interface.clone()).unwrap();
    assert_eq!(iface.name.as_str(), "tmp0");
    assert_eq!(
        iface.parent.as_str(),
        "eth0",
        "parent found from the InternalIP"
    );
    assert_eq!(iface.address.to_string(), "192.0.2.20/24");
    assert_eq!(
        e.kernel_routes(),
        ["198.51.100.0/25 via 192.0.2.1 dev tmp0"]
    );
    let st = e.entry("onprem").unwrap();
    assert_eq!(
        (st.state, st.device.as_str(), st.gateway.as_str()),
        (RouteState::Applied, "tmp0", "192.0.2.1")
    );
    assert!(rep.apply.kernel_writes > 0);
    let rec = e.ips.snapshot().into_iter().find(|r| r.name == ME).unwrap();
    let agent = rec.agent.unwrap();
    assert!(agent.configured);
    assert_eq!(
        (agent.interface.as_str(), agent.interface_label.as_str()),
        ("eth0", "tmp0")
    );
    assert_eq!(
        rec.ip_addr.unwrap().to_string(),
        "192.0.2.20/24",
        "controller fields untouched"
    );
    // Nothing changed: nothing written.
    let again = e.agent(false).reconcile().await.unwrap();
    assert_eq!(again.apply.kernel_writes, 0);
}

#[tokio::test]
async fn routes_wait_for_the_overlay_ip_then_apply() {
    let e = env();
    e.route("onprem", "198.51.100.0/25", GatewayChoice::Overlay, "");
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    let st = e.entry("onprem").unwrap();
    assert_eq!(st.state, RouteState::Pending);
    assert!(st.message.contains("overlay IP"), "{}", st.message);
    assert!(e.kernel_routes().is_empty());
    e.give_overlay_ip();
    a.reconcile().await.unwrap();
    assert_eq!(e.entry("onprem").unwrap().state, RouteState::Applied);
    assert_eq!(e.kernel_routes().len(), 1);
}

#[tokio::test]
async fn selector_changes_add_and_remove_the_route_and_the_entry() {
    let e = env();
    e.give_overlay_ip();
    e.route(
        "edge-only",
        "198.51.100.0/25",
        GatewayChoice::Overlay,
        "tier=edge",
    );
    e.route(
        "core-only",
        "203.0.113.128/25",
        GatewayChoice::Overlay,
        "tier=core",
    );
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        ["198.51.100.0/25 via 192.0.2.1 dev tmp0"]
    );
    assert!(e.entry("core-only").is_none());
    // The node's label changes: it stops matching edge-only, starts matching core-only.
    let mut labels = BTreeMap::new();
    labels.insert("tier".to_owned(), "core".to_owned());
    e.nodes.upsert(NodeInfo::from_labels(
        ME,
        labels,
        vec!["203.0.113.10".parse().unwrap()],
    ));
    a.reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        ["203.0.113.128/25 via 192.0.2.1 dev tmp0"]
    );
    assert!(
        e.entry("edge-only").is_none(),
        "entry removed with the route"
    );
    assert_eq!(e.entry("core-only").unwrap().state, RouteState::Applied);
}

#[tokio::test]
async fn fixed_and_discovered_gateways() {
    let e = env();
    e.route(
        "fixed",
        "198.51.100.0/26",
        GatewayChoice::Fixed("203.0.113.254".parse().unwrap()),
        "",
    );
    e.route(
        "found",
        "198.51.100.64/26",
        GatewayChoice::Discover(cidr("198.18.0.0/16")),
        "",
    );
    e.route(
        "nothing",
        "192.0.2.128/25",
        GatewayChoice::Discover(cidr("192.0.2.0/24")),
        "",
    );
    e.agent(false).reconcile().await.unwrap();
    let routes = e.kernel_routes();
    assert!(
        routes.contains(&"198.51.100.0/26 via 203.0.113.254".to_owned()),
        "{routes:?}"
    );
    assert!(
        routes.contains(&"198.51.100.64/26 via 203.0.113.1 dev eth0".to_owned()),
        "{routes:?}"
    );
    let found = e.entry("found").unwrap();
    assert_eq!(
        (found.device.as_str(), found.gateway.as_str()),
        ("eth0", "203.0.113.1")
    );
    let nothing = e.entry("nothing").unwrap();
    assert_eq!(nothing.state, RouteState::Failed);
    assert!(
        nothing.message.contains("192.0.2.0/24"),
        "{}",
        nothing.message
    );
    // No overlay IP is needed for these.
    assert!(e.kernel.with(|k| k.interface.is_none()));
}

#[tokio::test]
async fn a_transient_discovery_failure_keeps_the_route() {
    let e = env();
    e.route(
        "found",
        "198.51.100.64/26",
        GatewayChoice::Discover(cidr("198.18.0.0/16")),
        "",
    );
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    e.kernel.with(|k| k.covering.clear());
    a.reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        ["198.51.100.64/26 via 203.0.113.1 dev eth0"]
    );
}

#[tokio::test]
async fn routes_that_would_shadow_the_node_are_refused_with_a_reason() {
    let e = env();
    e.give_overlay_ip();
    e.route("default", "0.0.0.0/0", GatewayChoice::Overlay, "");
    e.route("own-net", "203.0.113.0/24", GatewayChoice::Overlay, "");
    e.route("overlay-net", "192.0.2.0/25", GatewayChoice::Overlay, "");
    e.route("pods", "198.51.100.128/26", GatewayChoice::Overlay, "");
    e.agent(false).reconcile().await.unwrap();
    assert!(e.kernel_routes().is_empty(), "{:?}", e.kernel_routes());
    for (name, why) in [
        ("default", "default route"),
        ("own-net", "InternalIP 203.0.113.10"),
        ("overlay-net", "overlay subnet"),
        ("pods", "PROTECTED_SUBNETS"),
    ] {
        let st = e.entry(name).unwrap();
        assert_eq!(st.state, RouteState::Failed, "{name}");
        assert!(st.message.contains(why), "{name}: {}", st.message);
    }
}

#[tokio::test]
async fn two_static_routes_for_one_destination_report_the_conflict() {
    let e = env();
    e.route(
        "a-first",
        "198.51.100.0/26",
        GatewayChoice::Fixed("203.0.113.254".parse().unwrap()),
        "",
    );
    e.route(
        "b-second",
        "198.51.100.0/26",
        GatewayChoice::Fixed("203.0.113.253".parse().unwrap()),
        "",
    );
    e.agent(false).reconcile().await.unwrap();
    assert_eq!(e.kernel_routes(), ["198.51.100.0/26 via 203.0.113.254"]);
    let st = e.entry("b-second").unwrap();
    assert_eq!(st.state, RouteState::Failed);
    assert!(st.message.contains("a-first"), "{}", st.message);
}

#[tokio::test]
async fn deleting_a_static_route_removes_route_then_entry() {
    let e = env();
    e.give_overlay_ip();
    e.route("onprem", "198.51.100.0/25", GatewayChoice::Overlay, "");
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    overlay_core::StaticRouteStore::add_finalizer(&e.routes, "onprem", FINALIZER)
        .await
        .unwrap();
    e.routes.delete("onprem");
    a.reconcile().await.unwrap();
    assert!(e.kernel_routes().is_empty());
    assert!(e.entry("onprem").is_none());
    assert!(
        e.routes.get("onprem").unwrap().deleting,
        "the controller removes the finalizer"
    );
}

#[tokio::test]
async fn losing_the_overlay_ip_removes_the_interface_and_dependent_routes_only() {
    let e = env();
    e.give_overlay_ip();
    e.route("via-overlay", "198.51.100.0/25", GatewayChoice::Overlay, "");
    e.route(
        "via-private",
        "198.51.100.128/25",
        GatewayChoice::Discover(cidr("198.18.0.0/16")),
        "",
    );
    let mut cfg = e.cfg.clone();
    cfg.protected.clear();
    let a = Agent::new(
        cfg,
        AgentParts {
            programmer: Arc::new(e.kernel.clone()),
            nodes: Arc::new(e.nodes.clone()),
            overlay_ips: Arc::new(e.ips.clone()),
            routes: Some(Arc::new(e.routes.clone())),
            legacy: None,
        },
    );
    a.reconcile().await.unwrap();
    assert_eq!(e.kernel_routes().len(), 2);
    OverlayIpStore::delete(&e.ips, ME).await.unwrap();
    OverlayIpStore::remove_finalizer(&e.ips, ME, FINALIZER)
        .await
        .unwrap();
    let rep = a.reconcile().await.unwrap();
    assert!(rep.interface_removed);
    assert!(e.kernel.with(|k| k.interface.is_none()));
    assert_eq!(
        e.kernel_routes(),
        ["198.51.100.128/25 via 203.0.113.1 dev eth0"]
    );
    // No NodeOverlayIp to report in any more: the pass still says it.
    assert_eq!(rep.reports["via-overlay"].state, RouteState::Pending);
}

#[tokio::test]
async fn legacy_configmap_routes_use_the_discovered_private_gateway_and_survive_outages() {
    let e = env();
    e.legacy.set(Ok(vec![cidr("192.0.2.0/24")]));
    let a = e.agent(true);
    a.reconcile().await.unwrap();
    assert_eq!(e.kernel_routes(), ["192.0.2.0/24 via 203.0.113.1 dev eth0"]);
    // API unreachable: nothing is removed.
    e.legacy.set(Err(unreachable()));
    a.reconcile().await.unwrap();
    assert_eq!(e.kernel_routes().len(), 1);
    // Malformed JSON is an error the source reports the same way.
    assert!(
        parse_legacy_routes("[\"198.51.100.0/24\", \"not-a-cidr\"]")
            .unwrap_err()
            .field
            .contains("routes[1]")
    );
    assert!(parse_legacy_routes("{\"a\":1}").is_err());
    assert_eq!(
        parse_legacy_routes("[\"192.168.1.0/24\"]").unwrap(),
        [cidr("192.168.1.0/24")]
    );
    // An emptied list does remove them.
    e.legacy.set(Ok(vec![]));
    a.reconcile().await.unwrap();
    assert!(e.kernel_routes().is_empty());
}

/// A route list read from its text, as the ConfigMap and file sources
/// read it.
#[derive(Default)]
struct TextLegacy(Mutex<String>);

#[async_trait]
impl LegacyRouteSource for TextLegacy {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        self.routes().await.map(|l| l.subnets)
    }
    async fn routes(&self) -> Result<LegacyRoutes, StoreError> {
        let text = self.0.lock().unwrap().clone();
        parse_legacy_list(&text).map_err(|e| StoreError::Rejected {
            kind: "ConfigMap".into(),
            name: "default/static-routes".into(),
            message: e.to_string(),
        })
    }
    fn changes(&self) -> BoxStream<'static, ()> {
        Box::pin(futures::stream::pending())
    }
}

#[tokio::test]
async fn one_bad_entry_of_the_original_route_list_costs_only_itself() {
    let e = env();
    let list = Arc::new(TextLegacy::default());
    // The older DaemonSet's `routes`: a subnet, a bare address (a host
    // route, as `ip route add` took it) and garbage.
    *list.0.lock().unwrap() = r#"["198.51.100.0/25", "198.51.100.7", "nonsense"]"#.to_owned();
    let a = Agent::new(
        e.cfg.clone(),
        AgentParts {
            programmer: Arc::new(e.kernel.clone()),
            nodes: Arc::new(e.nodes.clone()),
            overlay_ips: Arc::new(e.ips.clone()),
            routes: None,
            legacy: Some(list.clone()),
        },
    );
    a.reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        [
            "198.51.100.0/25 via 203.0.113.1 dev eth0",
            "198.51.100.7/32 via 203.0.113.1 dev eth0"
        ]
    );
    // Text that is not a JSON array: the list is unknown, the routes stay.
    *list.0.lock().unwrap() = "198.51.100.0/25, 192.0.2.0/25".to_owned();
    a.reconcile().await.unwrap();
    assert_eq!(e.kernel_routes().len(), 2);
    assert_eq!(e.kernel.with(|k| k.deletions), 0);
    // Fixed: the list is applied as written, the host route goes.
    *list.0.lock().unwrap() = r#"["198.51.100.0/25", "192.0.2.0/25"]"#.to_owned();
    a.reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        [
            "192.0.2.0/25 via 203.0.113.1 dev eth0",
            "198.51.100.0/25 via 203.0.113.1 dev eth0"
        ]
    );
}

#[tokio::test]
async fn an_agent_starting_while_the_route_list_is_unreadable_removes_nothing() {
    let e = env();
    e.legacy.set(Ok(vec![cidr("192.0.2.0/24")]));
    e.agent(true).reconcile().await.unwrap();
    // Restart: the new agent never read the list. It applies what it knows
    // (a StaticRoute) and removes nothing.
    e.legacy.set(Err(unreachable()));
    e.route(
        "fixed",
        "198.51.100.0/25",
        GatewayChoice::Fixed("203.0.113.1".parse().unwrap()),
        "",
    );
    e.agent(true).reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        [
            "192.0.2.0/24 via 203.0.113.1 dev eth0",
            "198.51.100.0/25 via 203.0.113.1"
        ]
    );
    assert_eq!(e.kernel.with(|k| k.deletions), 0);
    // The same for a malformed list (the source reports it as Rejected).
    e.legacy.set(Err(StoreError::Rejected {
        kind: "ConfigMap".into(),
        name: "kube-system/static-routes".into(),
        message: "invalid routes[1] \"oops\"".into(),
    }));
    e.agent(true).reconcile().await.unwrap();
    assert_eq!(e.kernel_routes().len(), 2);
    assert_eq!(e.kernel.with(|k| k.deletions), 0);
}

fn garbage_address(e: &Env) {
    e.ips.insert(OverlayIpRecord {
        name: ME.into(),
        finalizers: vec![FINALIZER.into()],
        address_error: Some(
            "status.ipAddr: \"192.0.2.300/24\": expected address/prefix such as 192.0.2.4/24"
                .into(),
        ),
        ..Default::default()
    });
}

fn condition(e: &Env) -> overlay_core::AgentStatus {
    e.ips
        .snapshot()
        .into_iter()
        .find(|r| r.name == ME)
        .and_then(|r| r.agent)
        .unwrap()
}

#[tokio::test]
async fn a_garbage_ip_addr_keeps_the_last_good_address_and_says_why() {
    let e = env();
    e.give_overlay_ip();
    e.route("onprem", "198.51.100.0/25", GatewayChoice::Overlay, "");
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    garbage_address(&e);
    e.route(
        "fixed",
        "198.19.0.0/24",
        GatewayChoice::Fixed("203.0.113.1".parse().unwrap()),
        "",
    );
    a.reconcile().await.unwrap();
    let iface = e.kernel.with(|k| k.interface.clone()).unwrap();
    assert_eq!(iface.address.to_string(), "192.0.2.20/24", "kept");
    assert_eq!(
        e.kernel_routes(),
        [
            "198.19.0.0/24 via 203.0.113.1",
            "198.51.100.0/25 via 192.0.2.1 dev tmp0"
        ],
        "the overlay route stays and the new route is applied"
    );
    assert_eq!(e.entry("onprem").unwrap().state, RouteState::Applied);
    let c = condition(&e);
    assert!(!c.configured);
    assert_eq!(c.reason, "InvalidAddress");
    assert!(
        c.message.contains("status.ipAddr")
            && c.message
                .contains("keeping the last good address 192.0.2.20/24"),
        "{}",
        c.message
    );
    // Fixed by the controller: configured again.
    e.give_overlay_ip();
    a.reconcile().await.unwrap();
    assert!(condition(&e).configured);
}

#[tokio::test]
async fn a_fresh_agent_with_a_garbage_ip_addr_leaves_interface_and_routes_alone() {
    let e = env();
    e.give_overlay_ip();
    e.route("onprem", "198.51.100.0/25", GatewayChoice::Overlay, "");
    e.agent(false).reconcile().await.unwrap();
    // Restart while the object holds garbage: nothing known to keep, so
    // nothing is removed, and what is known is still applied.
    garbage_address(&e);
    e.route(
        "fixed",
        "198.19.0.0/24",
        GatewayChoice::Fixed("203.0.113.1".parse().unwrap()),
        "",
    );
    e.agent(false).reconcile().await.unwrap();
    assert!(
        e.kernel.with(|k| k.interface.is_some()),
        "interface left alone"
    );
    assert_eq!(e.kernel_routes().len(), 2);
    assert_eq!(e.kernel.with(|k| k.deletions), 0);
    let st = e.entry("onprem").unwrap();
    assert_eq!(st.state, RouteState::Pending);
    assert!(st.message.contains("kept"), "{}", st.message);
    let c = condition(&e);
    assert_eq!(c.reason, "InvalidAddress");
    assert!(c.message.contains("left as they are"), "{}", c.message);
}

#[tokio::test]
async fn a_restarted_agent_converges_without_deleting_anything() {
    let e = env();
    e.give_overlay_ip();
    for i in 0..250u32 {
        let subnet = format!("198.18.{}.{}/30", i / 64, (i % 64) * 4);
        e.route(&format!("r{i}"), &subnet, GatewayChoice::Overlay, "");
    }
    e.agent(false).reconcile().await.unwrap();
    assert_eq!(e.kernel_routes().len(), 250);
    let (writes, deletions) = e.kernel.with(|k| (k.writes, k.deletions));
    let rep = e.agent(false).reconcile().await.unwrap();
    assert_eq!(rep.apply.kernel_writes, 0);
    assert_eq!(
        e.kernel.with(|k| (k.writes, k.deletions)),
        (writes, deletions)
    );
}

#[tokio::test]
async fn a_missing_node_changes_nothing() {
    let e = env();
    e.route(
        "fixed",
        "198.51.100.0/26",
        GatewayChoice::Fixed("203.0.113.254".parse().unwrap()),
        "",
    );
    e.agent(false).reconcile().await.unwrap();
    e.nodes.remove(ME);
    let err = e.agent(false).reconcile().await.unwrap_err();
    assert!(err.to_string().contains("NODE_NAME"), "{err}");
    assert_eq!(e.kernel_routes().len(), 1);
}

#[tokio::test]
async fn a_missing_parent_interface_shows_in_the_configured_condition() {
    let e = env();
    e.give_overlay_ip();
    // No INTERFACE and no interface holds the InternalIP.
    e.kernel.with(|k| k.addresses.clear());
    let err = e.agent(false).reconcile().await.unwrap_err();
    assert!(err.to_string().contains("INTERFACE"), "{err}");
    let agent = condition(&e);
    assert!(!agent.configured);
    assert_eq!(agent.reason, "ApplyFailed");
    assert!(agent.message.contains("INTERFACE"), "{}", agent.message);
    assert!(e.kernel.with(|k| k.interface.is_none()));
}

fn set_address(e: &Env, ip: &str, gw: &str) {
    e.ips.insert(OverlayIpRecord {
        name: ME.into(),
        finalizers: vec![FINALIZER.into()],
        ip_addr: Some(ip.parse().unwrap()),
        gateway: Some(gw.parse().unwrap()),
        ..Default::default()
    });
}

#[tokio::test]
async fn an_ip_addr_the_agent_should_not_configure_is_refused_and_the_last_good_kept() {
    let e = env();
    // The node's InternalIP sits in 203.0.113.0/24 on eth0.
    e.kernel.with(|k| {
        k.prefixes.insert("203.0.113.10".parse().unwrap(), 24);
    });
    e.give_overlay_ip();
    e.route("onprem", "198.51.100.0/25", GatewayChoice::Overlay, "");
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    for (ip, gw, why) in [
        // What a hostile agent wrote on a real API server.
        ("198.51.100.7/1", "198.51.100.1", "shorter than /8"),
        ("2001:db8::7/16", "2001:db8::1", "shorter than /32"),
        ("203.0.113.20/24", "203.0.113.1", "InternalIP 203.0.113.10"),
        ("203.0.113.200/29", "203.0.113.201", "subnet 203.0.113.0/24"),
        (
            "192.0.2.30/24",
            "198.51.100.1",
            "outside the overlay subnet",
        ),
    ] {
        set_address(&e, ip, gw);
        a.reconcile().await.unwrap();
        let iface = e.kernel.with(|k| k.interface.clone()).unwrap();
        assert_eq!(iface.address.to_string(), "192.0.2.20/24", "{ip}: kept");
        assert_eq!(
            e.kernel_routes(),
            ["198.51.100.0/25 via 192.0.2.1 dev tmp0"],
            "{ip}: the route via the last good gateway stays"
        );
        let c = condition(&e);
        assert!(!c.configured, "{ip}");
        assert_eq!(c.reason, "InvalidAddress", "{ip}");
        assert!(c.message.contains(why), "{ip}: {}", c.message);
        assert!(
            c.message.contains("keeping the last good address"),
            "{}",
            c.message
        );
    }
    // A fresh agent that never had a good address configures nothing.
    let fresh = env();
    set_address(&fresh, "198.51.100.7/1", "198.51.100.1");
    fresh.agent(false).reconcile().await.unwrap();
    assert!(fresh.kernel.with(|k| k.interface.is_none()));
    assert!(condition(&fresh).message.contains("/8"));
}

#[tokio::test]
async fn an_overlay_interface_named_like_its_parent_is_refused() {
    let e = env();
    e.give_overlay_ip();
    // Detected parent: the interface holding the InternalIP is called tmp0.
    e.kernel.with(|k| {
        k.addresses
            .insert("203.0.113.10".parse().unwrap(), "tmp0".parse().unwrap());
    });
    let err = e.agent(false).reconcile().await.unwrap_err();
    assert!(err.to_string().contains("INTERFACE_LABEL"), "{err}");
    assert!(e.kernel.with(|k| k.interface.is_none()));
    assert_eq!(condition(&e).reason, "ApplyFailed");
    // Given explicitly, it is a configuration error before anything runs.
    let mut cfg = e.cfg.clone();
    cfg.interface = Some("tmp0".parse().unwrap());
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.field, "INTERFACE_LABEL");
    let mut cfg = e.cfg.clone();
    cfg.resync = std::time::Duration::ZERO;
    assert_eq!(cfg.validate().unwrap_err().field, "RESYNC_SECONDS");
}

#[tokio::test]
async fn a_zero_resync_period_stops_the_agent_instead_of_panicking() {
    let e = env();
    let mut cfg = e.cfg.clone();
    cfg.resync = std::time::Duration::ZERO;
    let a = Arc::new(Agent::new(
        cfg,
        AgentParts {
            programmer: Arc::new(e.kernel.clone()),
            nodes: Arc::new(e.nodes.clone()),
            overlay_ips: Arc::new(e.ips.clone()),
            routes: None,
            legacy: None,
        },
    ));
    // Returns at once (no shutdown needed), having changed nothing.
    a.clone().run(futures::future::pending()).await;
    assert!(!a.is_ready());
}

#[tokio::test]
async fn the_discovered_gateway_survives_a_restart() {
    let e = env();
    e.legacy.set(Ok(vec![cidr("192.0.2.0/24")]));
    e.agent(true).reconcile().await.unwrap();
    let kept = condition(&e).gateways;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].gateway.to_string(), "203.0.113.1");
    // Restart, and discovery fails at once: the persisted gateway is used,
    // nothing is removed.
    e.kernel.with(|k| k.covering.clear());
    e.agent(true).reconcile().await.unwrap();
    assert_eq!(e.kernel_routes(), ["192.0.2.0/24 via 203.0.113.1 dev eth0"]);
    assert_eq!(e.kernel.with(|k| k.deletions), 0);
}

#[tokio::test]
async fn legacy_mode_discovers_the_gateway_once_per_pass() {
    let e = env();
    let subnets: Vec<Cidr> = (0..200u32)
        .map(|i| cidr(&format!("198.19.{}.{}/30", i / 64, (i % 64) * 4)))
        .collect();
    e.legacy.set(Ok(subnets));
    let a = e.agent(true);
    a.reconcile().await.unwrap();
    assert_eq!(e.kernel_routes().len(), 200);
    assert_eq!(e.kernel.with(|k| k.discoveries), 1);
    let rep = a.reconcile().await.unwrap();
    assert_eq!(rep.apply.kernel_writes, 0);
    assert_eq!(e.kernel.with(|k| k.discoveries), 2);
}

#[tokio::test]
async fn stale_routes_go_only_in_tables_the_agent_used() {
    let e = env();
    let in_table = |name: &str, subnet: &str, table: u32| {
        e.routes.apply(
            name,
            Ok(StaticRouteRule {
                subnet: cidr(subnet),
                gateway: GatewayChoice::Fixed("203.0.113.254".parse().unwrap()),
                table: Some(table),
                metric: None,
                selector: LabelSelector::default(),
            }),
        );
    };
    in_table("t100", "198.51.100.0/26", 100);
    e.agent(false).reconcile().await.unwrap();
    // Another tool's route with our protocol in table 77, and a default
    // route with our protocol: neither is ever ours to remove.
    e.kernel.with(|k| {
        for (dest, table) in [("198.19.0.0/24", 77), ("0.0.0.0/0", 254)] {
            let r = overlay_core::RouteSpec {
                destination: cidr(dest),
                gateway: Some("203.0.113.1".parse().unwrap()),
                device: None,
                table: Some(table),
                metric: None,
            };
            k.routes.insert(r.key(), r);
        }
    });
    // The route is deleted while the agent is down; the restarted agent
    // knows table 100 from its own earlier report and removes it there.
    e.routes.delete("t100");
    e.agent(false).reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        [
            "0.0.0.0/0 via 203.0.113.1 table 254",
            "198.19.0.0/24 via 203.0.113.1 table 77"
        ]
    );
}

#[tokio::test]
async fn a_static_route_change_is_applied_incrementally() {
    let e = env();
    e.give_overlay_ip();
    for i in 0..100u32 {
        let subnet = format!("198.18.{}.{}/30", i / 64, (i % 64) * 4);
        e.route(&format!("r{i:03}"), &subnet, GatewayChoice::Overlay, "");
    }
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    let writes = e.kernel.with(|k| k.writes);
    // Added.
    e.route("new", "198.51.100.0/25", GatewayChoice::Overlay, "");
    let added = e.routes.get("new").unwrap();
    let rep = a
        .apply_route_changes(&[StoreEvent::Applied(added)])
        .await
        .unwrap()
        .expect("incremental");
    assert_eq!(rep.apply.kernel_writes, 1);
    assert_eq!(e.kernel.with(|k| k.writes), writes + 1);
    assert!(rep.status_written);
    assert_eq!(e.entry("new").unwrap().state, RouteState::Applied);
    // Changed: replaced in place.
    e.route(
        "new",
        "198.51.100.0/25",
        GatewayChoice::Fixed("203.0.113.254".parse().unwrap()),
        "",
    );
    let changed = e.routes.get("new").unwrap();
    let rep = a
        .apply_route_changes(&[StoreEvent::Applied(changed.clone())])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rep.apply.kernel_writes, 1);
    assert!(
        e.kernel_routes()
            .contains(&"198.51.100.0/25 via 203.0.113.254".to_owned())
    );
    // The same object again (a status or finalizer change): nothing written.
    let rep = a
        .apply_route_changes(&[StoreEvent::Applied(changed)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rep.apply.kernel_writes, 0);
    assert!(!rep.status_written);
    // Deleted.
    e.routes.delete("new");
    let rep = a
        .apply_route_changes(&[StoreEvent::Deleted("new".into())])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rep.apply.routes_removed.len(), 1);
    assert!(e.entry("new").is_none());
    assert_eq!(e.kernel_routes().len(), 100);
    // A full pass afterwards finds nothing to do.
    assert_eq!(a.reconcile().await.unwrap().apply.kernel_writes, 0);
}

#[tokio::test]
async fn a_contested_destination_falls_back_to_the_full_pass() {
    let e = env();
    let fixed = |g: &str| GatewayChoice::Fixed(g.parse().unwrap());
    e.route("a-first", "198.51.100.0/26", fixed("203.0.113.254"), "");
    e.route("b-second", "198.51.100.0/26", fixed("203.0.113.253"), "");
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    // Removing the winner must hand the destination to the loser: only the
    // full pass sees both.
    assert!(
        a.apply_route_changes(&[StoreEvent::Deleted("a-first".into())])
            .await
            .unwrap()
            .is_none()
    );
    // Before any full pass there is nothing to change incrementally.
    let fresh = e.agent(false);
    let rec = e.routes.get("a-first").unwrap();
    assert!(
        fresh
            .apply_route_changes(&[StoreEvent::Applied(rec)])
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn the_running_agent_applies_a_new_route_once_without_a_full_pass() {
    let e = env();
    e.give_overlay_ip();
    let a = Arc::new(e.agent(false));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(a.clone().run(async {
        let _ = stopped.await;
    }));
    wait_for(|| a.is_ready()).await;
    let applies = e.kernel.with(|k| k.applies);
    e.route("onprem", "198.51.100.0/25", GatewayChoice::Overlay, "");
    wait_for(|| {
        e.entry("onprem")
            .is_some_and(|r| r.state == RouteState::Applied)
    })
    .await;
    assert_eq!(
        e.kernel_routes(),
        ["198.51.100.0/25 via 192.0.2.1 dev tmp0"]
    );
    // One incremental update; the agent's own status write woke it, but
    // no full pass ran.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(e.kernel.with(|k| (k.applies, k.updates)), (applies, 1));
    stop.send(()).unwrap();
    run.await.unwrap();
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not met in 5 s");
}

#[tokio::test]
async fn a_kernel_refusal_stays_reported_when_the_object_changes_only_in_status() {
    let e = env();
    e.give_overlay_ip();
    e.kernel.with(|k| k.failing.push(cidr("198.51.100.0/25")));
    e.route("onprem", "198.51.100.0/25", GatewayChoice::Overlay, "");
    let a = e.agent(false);
    a.reconcile().await.unwrap();
    assert_eq!(e.entry("onprem").unwrap().state, RouteState::Failed);
    let rec = e.routes.get("onprem").unwrap();
    a.apply_route_changes(&[StoreEvent::Applied(rec)])
        .await
        .unwrap()
        .unwrap();
    let st = e.entry("onprem").unwrap();
    assert_eq!(st.state, RouteState::Failed);
    assert!(st.message.contains("kernel refused"), "{}", st.message);
}

/// A kind the API server does not serve (its CRD is not installed): every
/// read answers "not served", as the Kubernetes stores do after a 404 for
/// the collection.
struct NotServed;

fn not_served<T>(kind: &str) -> Result<T, StoreError> {
    Err(StoreError::not_served(kind))
}

#[async_trait]
impl OverlayIpStore for NotServed {
    async fn get(&self, _: &str) -> Result<Option<OverlayIpRecord>, StoreError> {
        not_served("NodeOverlayIp")
    }
    async fn list(&self) -> Result<Vec<OverlayIpRecord>, StoreError> {
        not_served("NodeOverlayIp")
    }
    async fn ensure(&self, _: &overlay_core::OverlayIpMeta) -> Result<OverlayIpRecord, StoreError> {
        not_served("NodeOverlayIp")
    }
    async fn set_address(
        &self,
        _: &str,
        _: ipnetwork::IpNetwork,
        _: Option<std::net::IpAddr>,
    ) -> Result<(), StoreError> {
        not_served("NodeOverlayIp")
    }
    async fn set_agent_status(
        &self,
        _: &str,
        _: &overlay_core::AgentStatus,
    ) -> Result<(), StoreError> {
        panic!("no status write without a NodeOverlayIp")
    }
    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        not_served("NodeOverlayIp")
    }
    async fn remove_finalizer(&self, _: &str, _: &str) -> Result<(), StoreError> {
        not_served("NodeOverlayIp")
    }
    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<OverlayIpRecord>, StoreError>> {
        Box::pin(futures::stream::pending())
    }
}

#[async_trait]
impl overlay_core::StaticRouteStore for NotServed {
    async fn list(&self) -> Result<Vec<overlay_core::StaticRouteRecord>, StoreError> {
        not_served("StaticRoute")
    }
    async fn add_finalizer(&self, _: &str, _: &str) -> Result<(), StoreError> {
        not_served("StaticRoute")
    }
    async fn remove_finalizer(&self, _: &str, _: &str) -> Result<(), StoreError> {
        not_served("StaticRoute")
    }
    async fn set_summary(&self, _: &str, _: &overlay_core::RouteSummary) -> Result<(), StoreError> {
        not_served("StaticRoute")
    }
    fn watch(
        &self,
    ) -> BoxStream<'static, Result<StoreEvent<overlay_core::StaticRouteRecord>, StoreError>> {
        Box::pin(futures::stream::pending())
    }
}

impl Env {
    /// The agent of a cluster without the NodeOverlayIp CRD, legacy list
    /// on; `static_routes`: whether it watches StaticRoutes (whose CRD is
    /// missing too) or runs with --no-static-routes.
    fn agent_without_crds(&self, static_routes: bool) -> Agent {
        Agent::new(
            self.cfg.clone(),
            AgentParts {
                programmer: Arc::new(self.kernel.clone()),
                nodes: Arc::new(self.nodes.clone()),
                overlay_ips: Arc::new(NotServed),
                routes: static_routes
                    .then(|| Arc::new(NotServed) as Arc<dyn overlay_core::StaticRouteStore>),
                legacy: Some(self.legacy.clone()),
            },
        )
    }
}

#[tokio::test]
async fn without_the_crds_legacy_routes_go_via_the_discovered_gateway() {
    let e = env();
    // An overlay interface some earlier install left: not ours to judge
    // without the NodeOverlayIp kind, so it stays.
    let left = overlay_core::OverlayInterface {
        name: "tmp0".parse().unwrap(),
        parent: "eth0".parse().unwrap(),
        address: "192.0.2.20/24".parse().unwrap(),
    };
    e.kernel.with(|k| k.interface = Some(left.clone()));
    e.legacy
        .set(Ok(vec![cidr("192.0.2.0/25"), cidr("198.51.100.7/32")]));
    let a = e.agent_without_crds(false);
    let rep = a.reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        [
            "192.0.2.0/25 via 203.0.113.1 dev eth0",
            "198.51.100.7/32 via 203.0.113.1 dev eth0"
        ]
    );
    assert!(!rep.interface_removed);
    assert_eq!(e.kernel.with(|k| k.interface.clone()), Some(left));
    // The list changes: added and removed as in the older DaemonSet.
    e.legacy.set(Ok(vec![cidr("192.0.2.0/25")]));
    a.reconcile().await.unwrap();
    assert_eq!(e.kernel_routes(), ["192.0.2.0/25 via 203.0.113.1 dev eth0"]);
}

#[tokio::test]
async fn watching_static_routes_without_their_crd_adds_legacy_routes_and_removes_nothing() {
    let e = env();
    e.legacy
        .set(Ok(vec![cidr("192.0.2.0/25"), cidr("198.51.100.7/32")]));
    let a = e.agent_without_crds(true);
    a.reconcile().await.unwrap();
    assert_eq!(e.kernel_routes().len(), 2);
    // Without the StaticRoute kind the picture is incomplete: a route the
    // list dropped stays until the agent runs with --no-static-routes.
    e.legacy.set(Ok(vec![cidr("192.0.2.0/25")]));
    a.reconcile().await.unwrap();
    assert_eq!(e.kernel_routes().len(), 2);
    assert_eq!(e.kernel.with(|k| k.deletions), 0);
    e.agent_without_crds(false).reconcile().await.unwrap();
    assert_eq!(e.kernel_routes(), ["192.0.2.0/25 via 203.0.113.1 dev eth0"]);
}

#[tokio::test]
async fn without_a_node_overlay_ip_or_its_address_legacy_routes_still_apply() {
    for with_record in [false, true] {
        let e = env();
        let ips = if with_record {
            e.ips.clone()
        } else {
            MemoryOverlayIps::new()
        };
        e.legacy.set(Ok(vec![cidr("192.0.2.0/25")]));
        let a = Agent::new(
            e.cfg.clone(),
            AgentParts {
                programmer: Arc::new(e.kernel.clone()),
                nodes: Arc::new(e.nodes.clone()),
                overlay_ips: Arc::new(ips),
                routes: None,
                legacy: Some(e.legacy.clone()),
            },
        );
        a.reconcile().await.unwrap();
        assert_eq!(
            e.kernel_routes(),
            ["192.0.2.0/25 via 203.0.113.1 dev eth0"],
            "NodeOverlayIp present: {with_record}"
        );
        if with_record {
            let s = condition(&e);
            assert!(!s.configured);
            assert_eq!(s.reason, "WaitingForAddress");
        }
    }
}

/// A StaticRoute as the API server holds it, read the way the Kubernetes
/// store reads it.
fn static_route_object(
    name: &str,
    labels: serde_json::Value,
    spec: serde_json::Value,
) -> overlay_core::StaticRouteRecord {
    let obj: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
        "metadata": {"name": name, "labels": labels}, "spec": spec}))
    .unwrap();
    let (record, problem) = overlay_core::crd::decode_static_route(&obj);
    assert_eq!(problem, None);
    record
}

#[tokio::test]
async fn the_zone_label_of_the_older_agents_limits_a_static_route_to_that_zone() {
    let e = env();
    let gw = serde_json::json!("203.0.113.1");
    let zone = |z: &str| serde_json::json!({"failure-domain.beta.kubernetes.io/zone": z});
    for (name, labels, spec) in [
        (
            "here",
            zone("dal10"),
            serde_json::json!({"subnet": "192.0.2.0/26", "gateway": gw}),
        ),
        (
            "elsewhere",
            zone("dal12"),
            serde_json::json!({"subnet": "192.0.2.64/26", "gateway": gw}),
        ),
        // AND-ed with the nodeSelector.
        (
            "here-and-edge",
            zone("dal10"),
            serde_json::json!({"subnet": "192.0.2.128/26", "gateway": gw,
            "nodeSelector": {"matchLabels": {"tier": "edge"}}}),
        ),
        (
            "here-not-core",
            zone("dal10"),
            serde_json::json!({"subnet": "192.0.2.192/26", "gateway": gw,
            "nodeSelector": {"matchLabels": {"tier": "core"}}}),
        ),
        (
            "everywhere",
            serde_json::json!({}),
            serde_json::json!({"subnet": "198.51.100.0/25", "gateway": gw}),
        ),
    ] {
        let r = static_route_object(name, labels, spec);
        e.routes.apply(&r.name, r.spec);
    }
    let rep = e.agent(false).reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        [
            "192.0.2.0/26 via 203.0.113.1",
            "192.0.2.128/26 via 203.0.113.1",
            "198.51.100.0/25 via 203.0.113.1"
        ]
    );
    let mut selected: Vec<&str> = rep.reports.keys().map(String::as_str).collect();
    selected.sort_unstable();
    assert_eq!(selected, ["everywhere", "here", "here-and-edge"]);

    // A node of dal12 (zone read from the older label) takes the other one.
    let mut labels = BTreeMap::new();
    labels.insert(
        "failure-domain.beta.kubernetes.io/zone".to_owned(),
        "dal12".to_owned(),
    );
    e.nodes.upsert(NodeInfo::from_labels(
        ME,
        labels,
        vec!["203.0.113.10".parse().unwrap()],
    ));
    e.agent(false).reconcile().await.unwrap();
    assert_eq!(
        e.kernel_routes(),
        [
            "192.0.2.64/26 via 203.0.113.1",
            "198.51.100.0/25 via 203.0.113.1"
        ]
    );
}
