//! The agent and the controller over the Kubernetes adapters and a scripted
//! API server: readiness follows the initial lists, an unreachable API
//! server makes the agent not ready (never crash it), and objects that do
//! not convert cost only themselves: a restarted agent becomes ready and
//! applies the valid ones, the controller reconciles every other node.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use overlay_core::agent::{Agent, AgentConfig, AgentParts};
use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::events::EventRecorder;
use overlay_core::fakes::{MemoryEvents, MemoryProgrammer};
use overlay_core::invalid::InvalidObjects;
use overlay_core::k8s::{
    KubeConfigMapRoutes, KubeNodes, KubeOverlayIps, KubeStaticRoutes, OverlayIpChanges,
    node_field_manager,
};
use overlay_core::{IpamBackend, IpamError, Owner, Reservation, Zone};
use serde_json::{Value, json};
use support::apiserver::{FakeApiServer, NODES, NOIPS, ROUTES, wait_until};

const ME: &str = "node-a";

fn node_json(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"),
            "labels": {"topology.kubernetes.io/zone": "dal10"}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn noip_json(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
        "metadata": {"name": name, "finalizers": ["finalizer.iks.ibm.com"]},
        "spec": {},
        "status": {"ipAddr": ip, "gateway": "192.0.2.1"}})
}

fn route_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
        "metadata": {"name": name}, "spec": spec})
}

fn malformed_routes() -> Vec<Value> {
    let mut unknown_state = route_json(
        "unknown-state",
        json!({"subnet": "198.19.1.0/24", "gateway": "203.0.113.1"}),
    );
    unknown_state["status"] = json!({"nodeStatus": [{"hostname": ME, "state": "Degraded"}]});
    vec![
        route_json(
            "metric-too-big",
            json!({"subnet": "198.19.2.0/24", "metric": 4294967296u64}),
        ),
        route_json("host-bits", json!({"subnet": "198.19.3.1/24"})),
        unknown_state,
    ]
}

/// A kernel whose eth0 holds the node's InternalIP.
fn kernel() -> MemoryProgrammer {
    let k = MemoryProgrammer::new();
    k.with(|k| {
        k.addresses
            .insert("203.0.113.10".parse().unwrap(), "eth0".parse().unwrap());
    });
    k
}

fn agent(client: &kube::Client, kernel: &MemoryProgrammer, invalid: &InvalidObjects) -> Arc<Agent> {
    let mut cfg = AgentConfig::new(ME).unwrap();
    cfg.resync = Duration::from_secs(3600);
    Arc::new(Agent::new(
        cfg,
        AgentParts {
            programmer: Arc::new(kernel.clone()),
            nodes: Arc::new(KubeNodes::new(client.clone(), Some(ME), invalid.clone())),
            overlay_ips: Arc::new(KubeOverlayIps::with_changes(
                client.clone(),
                Some(ME),
                OverlayIpChanges::IgnoreAgentStatus,
                invalid.clone(),
            )),
            routes: Some(Arc::new(KubeStaticRoutes::new(
                client.clone(),
                node_field_manager(ME),
                invalid.clone(),
            ))),
            legacy: None,
        },
    ))
}

fn kernel_routes(k: &MemoryProgrammer) -> Vec<String> {
    k.with(|k| k.routes.values().map(|r| r.to_string()).collect())
}

fn seed(api: &FakeApiServer) {
    api.put(NODES, node_json(ME, "203.0.113.10"));
    api.put(NOIPS, noip_json(ME, "192.0.2.20/24"));
    api.put(
        ROUTES,
        route_json("onprem", json!({"subnet": "198.51.100.0/24"})),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_ready_only_after_its_initial_lists_complete() {
    let (api, client) = FakeApiServer::start();
    seed(&api);
    api.hold_lists(true);
    let k = kernel();
    let a = agent(&client, &k, &InvalidObjects::default());
    let run = tokio::spawn(a.clone().run(futures::future::pending()));
    wait_until("the agent's initial LISTs", || {
        api.requests("GET", "watch").is_empty() && api.seen().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.is_ready(), "ready before its lists completed");
    assert!(
        kernel_routes(&k).is_empty(),
        "applied from an incomplete picture"
    );
    api.hold_lists(false);
    wait_until("readiness", || a.is_ready()).await;
    assert_eq!(
        kernel_routes(&k),
        ["198.51.100.0/24 via 192.0.2.1 dev tmp0"]
    );
    assert!(!run.is_finished());
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_not_ready_while_the_api_is_unreachable_and_keeps_running() {
    let (api, client) = FakeApiServer::start();
    seed(&api);
    api.set_unreachable(true);
    let k = kernel();
    let a = agent(&client, &k, &InvalidObjects::default());
    let run = tokio::spawn(a.clone().run(futures::future::pending()));
    wait_until("connection attempts", || api.seen().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.is_ready());
    assert!(
        !run.is_finished(),
        "an unreachable API server never ends the agent"
    );
    api.set_unreachable(false);
    // The watches retry with backoff (0.8 s, doubling).
    for _ in 0..300 {
        if a.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.is_ready(), "ready once the API server answers");
    assert_eq!(
        kernel_routes(&k),
        ["198.51.100.0/24 via 192.0.2.1 dev tmp0"]
    );
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_with_malformed_objects_becomes_ready_and_applies_the_valid_ones() {
    let (api, client) = FakeApiServer::start();
    seed(&api);
    for r in malformed_routes() {
        api.put(ROUTES, r);
    }
    let k = kernel();
    let events = MemoryEvents::new();
    let invalid = InvalidObjects::new(Arc::new(events.clone()));
    let a = agent(&client, &k, &invalid);
    let run = tokio::spawn(a.clone().run(futures::future::pending()));
    wait_until("readiness", || a.is_ready()).await;
    assert_eq!(
        kernel_routes(&k),
        [
            "198.19.1.0/24 via 203.0.113.1",
            "198.51.100.0/24 via 192.0.2.1 dev tmp0"
        ],
        "the valid routes (a bad status entry costs no route)"
    );
    let invalid_names =
        || -> Vec<String> { invalid.current().into_iter().map(|(_, n, _)| n).collect() };
    assert!(
        invalid_names().contains(&"metric-too-big".to_owned())
            && invalid_names().contains(&"host-bits".to_owned()),
        "{:?}",
        invalid.current()
    );
    // In a watch event too: a bad object arrives, then a good one.
    api.put(
        ROUTES,
        route_json(
            "late-bad",
            json!({"subnet": "198.19.4.0/24", "table": 1u64 << 40}),
        ),
    );
    api.put(
        ROUTES,
        route_json(
            "late-good",
            json!({"subnet": "198.19.5.0/24", "gateway": "203.0.113.1"}),
        ),
    );
    wait_until("the late good route", || {
        kernel_routes(&k).contains(&"198.19.5.0/24 via 203.0.113.1".to_owned())
    })
    .await;
    // The agent writes no StaticRoute: the stale entry with an unknown
    // state stays until the controller's next summary.
    assert_eq!(invalid.count("StaticRoute"), 4);
    assert!(
        api.requests("PATCH", "/staticroutes/").is_empty(),
        "agents need no write access to StaticRoutes"
    );
    assert!(a.is_ready());
    run.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_address_in_the_agents_own_object_is_reported_and_removes_nothing() {
    let (api, client) = FakeApiServer::start();
    seed(&api);
    let k = kernel();
    let events = MemoryEvents::new();
    let invalid = InvalidObjects::new(Arc::new(events.clone()));
    let a = agent(&client, &k, &invalid);
    let run = tokio::spawn(a.clone().run(futures::future::pending()));
    wait_until("readiness", || a.is_ready()).await;
    assert_eq!(kernel_routes(&k).len(), 1);

    // Another version writes garbage (stored as it is, like before validation).
    let mut garbage = api.object(NOIPS, ME).unwrap();
    garbage["status"]["ipAddr"] = json!("192.0.2.300/24");
    api.put(NOIPS, garbage);
    let condition = || {
        api.object(NOIPS, ME).unwrap()["status"]["conditions"]
            .as_array()
            .and_then(|c| c.first().cloned())
            .unwrap_or_default()
    };
    wait_until("the InvalidAddress condition", || {
        condition()["reason"] == "InvalidAddress"
    })
    .await;
    let c = condition();
    assert_eq!(c["status"], "False");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("keeping the last good address 192.0.2.20/24"),
        "{c}"
    );
    assert_eq!(
        k.with(|k| k.interface.clone()).unwrap().address.to_string(),
        "192.0.2.20/24"
    );
    assert_eq!(kernel_routes(&k).len(), 1, "routes kept");
    assert_eq!(k.with(|k| k.deletions), 0);
    assert_eq!(invalid.count("NodeOverlayIp"), 1);
    wait_until("the Warning Event", || {
        events
            .all()
            .iter()
            .any(|e| e.name == ME && e.message.contains("status.ipAddr"))
    })
    .await;
    run.abort();
}

/// Hands out 192.0.2.10, .11, ... per owner (idempotent), in every zone.
#[derive(Default)]
struct CountingIpam {
    held: Mutex<HashMap<Owner, Reservation>>,
}

#[async_trait]
impl IpamBackend for CountingIpam {
    fn name(&self) -> &str {
        "counting"
    }
    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        let mut held = self.held.lock().unwrap();
        let n = held.len();
        let r = held.entry(owner.clone()).or_insert_with(|| Reservation {
            owner: owner.clone(),
            zone: zone.clone(),
            address: format!("192.0.2.{}/24", 10 + n).parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            subnet_id: "1".into(),
            handle: String::new(),
            held_until: None,
        });
        Ok(r.clone())
    }
    async fn release(&self, r: &Reservation, _hold: Duration) -> Result<(), IpamError> {
        self.held.lock().unwrap().remove(&r.owner);
        Ok(())
    }
    async fn lookup(
        &self,
        owner: &Owner,
        _: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        Ok(self.held.lock().unwrap().get(owner).cloned())
    }
    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        Ok(self.held.lock().unwrap().values().cloned().collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_reconciles_every_node_past_malformed_objects_and_repairs_them() {
    let (api, client) = FakeApiServer::start();
    for (n, ip) in [
        ("node-a", "203.0.113.10"),
        ("node-b", "203.0.113.11"),
        ("node-c", "203.0.113.12"),
    ] {
        api.put(NODES, node_json(n, ip));
    }
    // node-b's object holds garbage from another version.
    api.put(NOIPS, noip_json("node-b", "not-an-address"));
    for r in malformed_routes() {
        api.put(ROUTES, r);
    }
    api.put(
        ROUTES,
        route_json("onprem", json!({"subnet": "198.51.100.0/24"})),
    );
    let events = MemoryEvents::new();
    let invalid = InvalidObjects::new(Arc::new(events.clone()));
    let controller = kube_controller(&client, &invalid, Arc::new(events.clone()));
    let run = tokio::spawn(controller.clone().run(futures::future::pending()));
    let addr = |n: &str| {
        api.object(NOIPS, n)
            .and_then(|o| o["status"]["ipAddr"].as_str().map(str::to_owned))
    };
    wait_until("an address for every node, node-b's repaired", || {
        ["node-a", "node-b", "node-c"]
            .iter()
            .all(|n| addr(n).is_some_and(|a| a.starts_with("192.0.2.")))
    })
    .await;
    wait_until("the finalizer on every StaticRoute", || {
        ["onprem", "metric-too-big", "host-bits", "unknown-state"]
            .iter()
            .all(|r| {
                api.object(ROUTES, r).unwrap()["metadata"]["finalizers"]
                    == json!(["finalizer.iks.ibm.com"])
            })
    })
    .await;
    wait_until("node-b valid again", || invalid.count("NodeOverlayIp") == 0).await;
    assert_eq!(invalid.count("StaticRoute"), 3);
    wait_until("a Warning Event per malformed object", || {
        let all = events.all();
        ["node-b", "metric-too-big", "host-bits", "unknown-state"]
            .iter()
            .all(|n| {
                all.iter()
                    .any(|e| e.name == *n && e.reason == "InvalidObject")
            })
    })
    .await;
    run.abort();
}

/// A controller over the Kubernetes stores on `client` (IPAM: a counter).
fn kube_controller(
    client: &kube::Client,
    invalid: &InvalidObjects,
    events: Arc<dyn EventRecorder>,
) -> Arc<Controller> {
    let parts = ControllerParts {
        nodes: Arc::new(KubeNodes::new(client.clone(), None, invalid.clone())),
        ipam: Arc::new(CountingIpam::default()),
        overlay_ips: Arc::new(KubeOverlayIps::new(client.clone(), None, invalid.clone())),
        routes: Arc::new(KubeStaticRoutes::new(
            client.clone(),
            "overlay-controller".into(),
            invalid.clone(),
        )),
    };
    Arc::new(Controller::new(ControllerConfig::new("c1"), parts).with_events(events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_and_the_controller_summary_show_each_route_per_node() {
    let (api, client) = FakeApiServer::start();
    seed(&api);
    api.put(
        ROUTES,
        route_json("host-bits", json!({"subnet": "198.19.3.1/24"})),
    );
    let k = kernel();
    let invalid = InvalidObjects::new(Arc::new(MemoryEvents::new()));
    let a = agent(&client, &k, &invalid);
    let run = tokio::spawn(a.clone().run(futures::future::pending()));
    let controller = kube_controller(&client, &invalid, Arc::new(MemoryEvents::new()));
    let ctl = tokio::spawn(controller.run(futures::future::pending()));
    let report = |route: &str| {
        api.object(NOIPS, ME).unwrap()["status"]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|e| e["route"] == route)
    };
    wait_until("the agent's reports", || {
        report("onprem").is_some_and(|e| e["state"] == "Applied")
            && report("host-bits").is_some_and(|e| e["state"] == "Failed")
    })
    .await;
    let why = report("host-bits").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.contains("spec.subnet"), "{why}");
    let status = |route: &str| api.object(ROUTES, route).unwrap()["status"].clone();
    wait_until("the summaries", || {
        status("onprem")["applied"] == 1 && status("host-bits")["failed"] == 1
    })
    .await;
    assert_eq!(status("onprem")["nodeStatus"][0]["hostname"], ME);
    assert_eq!(status("host-bits")["nodeStatus"][0]["state"], "Failed");
    assert!(
        api.requests("PATCH", "/staticroutes/")
            .iter()
            .all(|p| p.uri.contains("fieldManager=overlay-controller")),
        "only the controller writes StaticRoutes"
    );
    run.abort();
    ctl.abort();
}

/// The older DaemonSet's cluster: no NodeOverlayIp or StaticRoute CRD,
/// only the `static-routes` ConfigMap in `default`. The agent (with
/// --no-static-routes) routes its entries via the gateway of the route
/// covering the private network, as the DaemonSet did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crds_the_agent_routes_the_configmap_via_the_discovered_gateway() {
    let (api, client) = FakeApiServer::start();
    api.serve_collection(NOIPS, false);
    api.serve_collection(ROUTES, false);
    api.put(NODES, node_json(ME, "203.0.113.10"));
    api.put(
        &support::apiserver::configmaps("default"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "static-routes", "namespace": "default"},
            "data": {"routes": "[\"198.51.100.0/24\", \"198.51.100.7\", \"nonsense\"]"}}),
    );
    let k = kernel();
    k.with(|k| {
        k.covering.push(overlay_core::DiscoveredRoute {
            destination: "198.18.0.0/15".parse().unwrap(),
            gateway: "203.0.113.1".parse().unwrap(),
            device: "eth0".parse().unwrap(),
        });
    });
    let invalid = InvalidObjects::default();
    let mut cfg = AgentConfig::new(ME).unwrap();
    cfg.resync = Duration::from_secs(3600);
    cfg.legacy_gateway_from = "198.18.0.0/15".parse().unwrap();
    let a = Arc::new(Agent::new(
        cfg,
        AgentParts {
            programmer: Arc::new(k.clone()),
            nodes: Arc::new(KubeNodes::new(client.clone(), Some(ME), invalid.clone())),
            overlay_ips: Arc::new(KubeOverlayIps::with_changes(
                client.clone(),
                Some(ME),
                OverlayIpChanges::IgnoreAgentStatus,
                invalid.clone(),
            )),
            routes: None,
            legacy: Some(Arc::new(KubeConfigMapRoutes::new(
                client.clone(),
                "default",
                "static-routes",
                invalid.clone(),
            ))),
        },
    ));
    let run = tokio::spawn(a.clone().run(futures::future::pending()));
    wait_until("readiness", || a.is_ready()).await;
    assert_eq!(
        kernel_routes(&k),
        [
            "198.51.100.0/24 via 203.0.113.1 dev eth0",
            "198.51.100.7/32 via 203.0.113.1 dev eth0"
        ]
    );
    assert_eq!(invalid.count("ConfigMap"), 1, "the bad entry is reported");
    assert!(
        api.requests("PATCH", "nodeoverlayips").is_empty(),
        "no status to write without the CRD"
    );
    run.abort();
}
