//! The Kubernetes adapters against a scripted API server that behaves like
//! a real one where it matters (`support/apiserver.rs`): the exact requests
//! they send (field-selected lists, server-side apply bodies and field
//! managers, guarded finalizer patches, Events), watch streams with
//! ADDED/MODIFIED/DELETED, bookmarks and `410 Gone`, and objects that do not
//! convert, in the initial list and in watch events.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use overlay_core::events::{Event, EventRecorder, EventType};
use overlay_core::fakes::MemoryEvents;
use overlay_core::invalid::InvalidObjects;
use overlay_core::k8s::{
    CLUSTER_ID_ANNOTATION, KubeConfigMapRoutes, KubeEvents, KubeLease, KubeNodes, KubeOverlayIps,
    KubeStaticRoutes, OverlayIpChanges, cluster_uid, node_field_manager,
};
use overlay_core::leader::{LeaderConfig, LeaderElector, LeaseStore};
use overlay_core::{
    AgentStatus, FINALIZER, KnownGateway, LegacyRouteSource, NodeRouteStatus, NodeSource,
    OverlayIpMeta, OverlayIpStore, RouteReport, RouteState, RouteSummary, StaticRouteStore,
    StoreEvent,
};
use serde_json::{Value, json};
use support::apiserver::{FakeApiServer, NODES, NOIPS, ROUTES, configmaps, wait_until};

fn node_json(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {
            "topology.kubernetes.io/zone": "dal10", "topology.kubernetes.io/region": "us-south"}},
        "status": {"addresses": [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": "203.0.113.10"}]}
    })
}

fn noip_json(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
        "metadata": {"name": name, "finalizers": ["example.com/keep", FINALIZER]},
        "status": {"ipAddr": ip, "gateway": "192.0.2.1"}
    })
}

fn route_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
        "metadata": {"name": name}, "spec": spec})
}

/// A tracker whose Events land in memory.
fn tracker() -> (InvalidObjects, MemoryEvents) {
    let events = MemoryEvents::new();
    (InvalidObjects::new(Arc::new(events.clone())), events)
}

async fn events_named(events: &MemoryEvents, name: &str) -> Vec<Event> {
    for _ in 0..200 {
        let found: Vec<Event> = events
            .all()
            .into_iter()
            .filter(|e| e.name == name)
            .collect();
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Vec::new()
}

#[tokio::test]
async fn the_agent_lists_only_its_own_node_by_field_selector() {
    let (api, client) = FakeApiServer::start();
    api.put(NODES, node_json("node-a"));
    api.put(NODES, node_json("node-b"));
    let nodes = KubeNodes::new(client, Some("node-a"), InvalidObjects::default());
    let n = nodes.get("node-a").await.unwrap().unwrap();
    assert_eq!(n.zone.unwrap().as_str(), "dal10");
    assert_eq!(
        n.internal_ips,
        ["203.0.113.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(n.uid.as_deref(), Some("uid-node-a"));
    assert_eq!(nodes.list().await.unwrap().len(), 1, "only its own node");
    let list = api.find("GET", "/api/v1/nodes?");
    assert!(
        list.uri.contains("fieldSelector=metadata.name%3Dnode-a"),
        "{}",
        list.uri
    );
}

#[tokio::test]
async fn the_controller_applies_metadata_and_status_under_its_field_manager() {
    let (api, client) = FakeApiServer::start();
    let store = KubeOverlayIps::new(client, None, InvalidObjects::default());
    let labels = [("node", "n1"), ("zone", "dal10"), ("region", "us-south")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let rec = store
        .ensure(&OverlayIpMeta {
            name: "n1".into(),
            labels,
            owner_uid: Some("u-1".into()),
        })
        .await
        .unwrap();
    assert_eq!(rec.finalizers, [FINALIZER]);
    let apply = api.find("PATCH", "/nodeoverlayips/n1?");
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert!(
        apply.uri.contains("fieldManager=overlay-controller") && apply.uri.contains("force=true"),
        "{}",
        apply.uri
    );
    assert_eq!(apply.body["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(apply.body["metadata"]["labels"]["zone"], "dal10");
    assert_eq!(
        apply.body["metadata"]["ownerReferences"],
        json!([{"apiVersion":"v1","kind":"Node","name":"n1","uid":"u-1"}])
    );
    assert!(apply.body.get("status").is_none());

    store
        .set_address(
            "n1",
            "192.0.2.4/24".parse().unwrap(),
            Some("192.0.2.1".parse().unwrap()),
        )
        .await
        .unwrap();
    let st = api.find("PATCH", "/nodeoverlayips/n1/status");
    assert!(st.uri.contains("fieldManager=overlay-controller"));
    assert_eq!(
        st.body["status"],
        json!({"ipAddr": "192.0.2.4/24", "gateway": "192.0.2.1"})
    );
    let stored = api.object(NOIPS, "n1").unwrap();
    assert_eq!(stored["status"]["ipAddr"], "192.0.2.4/24");
}

#[tokio::test]
async fn the_agent_status_apply_never_touches_the_controller_fields() {
    let (api, client) = FakeApiServer::start();
    api.put(NOIPS, noip_json("n1", "192.0.2.4/24"));
    let store = KubeOverlayIps::new(client, Some("n1"), InvalidObjects::default());
    let s = AgentStatus {
        interface: "eth0".into(),
        interface_label: "tmp0".into(),
        configured: true,
        reason: "AddressConfigured".into(),
        // Longer than the CRD allows: cut, not refused.
        message: "x".repeat(5000),
        routes: Vec::new(),
        gateways: Vec::new(),
    };
    store.set_agent_status("n1", &s).await.unwrap();
    let p = api.find("PATCH", "/nodeoverlayips/n1/status");
    assert!(
        p.uri.contains("fieldManager=overlay-agent&")
            || p.uri.ends_with("fieldManager=overlay-agent"),
        "{}",
        p.uri
    );
    let status = p.body["status"].as_object().unwrap();
    assert!(!status.contains_key("ipAddr") && !status.contains_key("gateway"));
    assert_eq!(status["interfaceLabel"], "tmp0");
    assert_eq!(status["conditions"][0]["type"], "Configured");
    assert_eq!(status["conditions"][0]["status"], "True");
    let stored = api.object(NOIPS, "n1").unwrap();
    assert_eq!(
        stored["status"]["ipAddr"], "192.0.2.4/24",
        "controller's field kept"
    );
    assert!(
        stored["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .len()
            <= 1024
    );
    let list = api.find("GET", "/nodeoverlayips?");
    assert!(
        list.uri.contains("fieldSelector=metadata.name%3Dn1"),
        "never lists all NodeOverlayIps: {}",
        list.uri
    );
}

#[tokio::test]
async fn finalizer_removal_is_a_guarded_json_patch_that_keeps_other_finalizers() {
    let (api, client) = FakeApiServer::start();
    api.put(NOIPS, noip_json("n1", "192.0.2.4/24"));
    let store = KubeOverlayIps::new(client, None, InvalidObjects::default());
    store.remove_finalizer("n1", FINALIZER).await.unwrap();
    let p = api.find("PATCH", "/nodeoverlayips/n1");
    assert_eq!(p.content_type, "application/json-patch+json");
    assert_eq!(
        p.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/keep", FINALIZER]},
            {"op": "replace", "path": "/metadata/finalizers", "value": ["example.com/keep"]},
        ])
    );
    assert_eq!(
        api.object(NOIPS, "n1").unwrap()["metadata"]["finalizers"],
        json!(["example.com/keep"])
    );
}

fn report(route: &str, state: RouteState, message: &str) -> RouteReport {
    RouteReport {
        route: route.into(),
        device: "tmp0".into(),
        gateway: "192.0.2.1".into(),
        table: None,
        state,
        message: message.into(),
    }
}

fn agent_status(routes: Vec<RouteReport>, gateways: Vec<KnownGateway>) -> AgentStatus {
    AgentStatus {
        interface: "eth0".into(),
        interface_label: "tmp0".into(),
        configured: true,
        reason: "AddressConfigured".into(),
        message: "192.0.2.4/24 on tmp0".into(),
        routes,
        gateways,
    }
}

#[tokio::test]
async fn the_agent_writes_its_route_reports_and_gateways_into_its_own_status() {
    let (api, client) = FakeApiServer::start();
    api.put(NOIPS, noip_json("n1", "192.0.2.4/24"));
    let store = KubeOverlayIps::new(client, Some("n1"), InvalidObjects::default());
    let mut failed = report("onprem-b", RouteState::Failed, &"y".repeat(4000));
    failed.table = Some(100);
    let gw = KnownGateway {
        from: "10.0.0.0/8".parse().unwrap(),
        gateway: "10.1.0.1".parse().unwrap(),
        device: "eth0".parse().unwrap(),
    };
    let s = agent_status(
        vec![failed, report("onprem-a", RouteState::Applied, "")],
        vec![gw.clone()],
    );
    store.set_agent_status("n1", &s).await.unwrap();
    let p = api.find("PATCH", "/nodeoverlayips/n1/status");
    assert!(p.uri.contains("fieldManager=overlay-agent"), "{}", p.uri);
    let routes = &p.body["status"]["routes"];
    assert_eq!(
        routes[0]["route"], "onprem-a",
        "one entry per route, by name"
    );
    assert_eq!(
        routes[0],
        json!({"route": "onprem-a", "device": "tmp0", "gateway": "192.0.2.1", "state": "Applied"})
    );
    assert_eq!(routes[1]["table"], 100);
    assert!(
        routes[1]["message"].as_str().unwrap().len() <= 1024,
        "cut to the CRD's bound"
    );
    assert_eq!(
        p.body["status"]["gateways"],
        json!([{"from": "10.0.0.0/8", "gateway": "10.1.0.1", "device": "eth0"}])
    );
    // What the agent wrote reads back as it was (a restarted agent finds
    // its last good gateway).
    let back = wait_for_agent(&store, "n1", |a| a.routes.len() == 2).await;
    assert_eq!(back.gateways, [gw]);
    assert_eq!(back.routes[1].table, Some(100));
    assert_eq!(back.routes[1].state, RouteState::Failed);
    assert_eq!(
        api.object(NOIPS, "n1").unwrap()["status"]["ipAddr"],
        "192.0.2.4/24"
    );

    // Routes that went: the empty lists clear the agent's earlier entries.
    store
        .set_agent_status("n1", &agent_status(vec![], vec![]))
        .await
        .unwrap();
    let stored = api.object(NOIPS, "n1").unwrap();
    assert_eq!(stored["status"]["routes"], json!([]), "{stored}");
    assert_eq!(stored["status"]["gateways"], json!([]));
    assert_eq!(
        stored["status"]["ipAddr"], "192.0.2.4/24",
        "the controller's field kept"
    );
    let back = wait_for_agent(&store, "n1", |a| a.routes.is_empty()).await;
    assert!(back.gateways.is_empty());
}

/// The agent status of `name` once `cond` holds for it.
async fn wait_for_agent(
    store: &KubeOverlayIps,
    name: &str,
    cond: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    for _ in 0..500 {
        if let Some(a) = store.get(name).await.unwrap().and_then(|r| r.agent)
            && cond(&a)
        {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the agent status of {name} never got there")
}

#[tokio::test]
async fn malformed_route_reports_and_gateways_cost_only_themselves() {
    let (api, client) = FakeApiServer::start();
    let mut o = noip_json("n1", "192.0.2.4/24");
    o["status"]["routes"] = json!([
        {"route": "good", "device": "tmp0", "gateway": "192.0.2.1", "state": "Failed", "message": "no"},
        {"route": "odd", "state": "Degraded"},
        {"device": "tmp0", "state": "Applied"},
        {"route": "table", "state": "Applied", "table": "main"}]);
    o["status"]["gateways"] = json!([
        {"from": "10.0.0.0/8", "gateway": "10.1.0.1", "device": "eth0"},
        {"from": "10.0.0.1/8", "gateway": "10.1.0.1", "device": "eth0"}]);
    api.put(NOIPS, o);
    let (invalid, _events) = tracker();
    let store = KubeOverlayIps::new(client, None, invalid.clone());
    let rec = store.get("n1").await.unwrap().unwrap();
    assert_eq!(rec.ip_addr.unwrap().to_string(), "192.0.2.4/24");
    let agent = rec.agent.unwrap();
    let names: Vec<&str> = agent.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(
        names,
        ["good", "odd"],
        "entries that do not convert are skipped"
    );
    assert_eq!(agent.routes[0].message, "no");
    assert_eq!(
        agent.routes[1].state,
        RouteState::Pending,
        "an unknown state reads as Pending"
    );
    assert_eq!(
        agent.gateways.len(),
        1,
        "a prefix with host bits is skipped"
    );
    let problems = invalid.current();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        format!("{problems:?}").contains("status.routes["),
        "{problems:?}"
    );
}

#[tokio::test]
async fn the_controller_summary_replaces_node_status_under_its_field_manager() {
    let (api, client) = FakeApiServer::start();
    api.put(
        ROUTES,
        route_json("onprem", json!({"subnet": "198.51.100.0/24"})),
    );
    let store = KubeStaticRoutes::new(
        client,
        "overlay-controller".into(),
        InvalidObjects::default(),
    );
    let entry = |h: &str, state: RouteState| NodeRouteStatus {
        hostname: h.into(),
        device: "tmp0".into(),
        gateway: "192.0.2.1".into(),
        state,
        message: if state == RouteState::Failed {
            "unreachable".into()
        } else {
            String::new()
        },
    };
    let first = RouteSummary {
        applied: 2,
        failed: 1,
        pending: 0,
        node_status: vec![
            entry("n3", RouteState::Failed),
            entry("n1", RouteState::Applied),
            entry("n2", RouteState::Applied),
        ],
    };
    store.set_summary("onprem", &first).await.unwrap();
    let p = api.find("PATCH", "/staticroutes/onprem/status");
    assert_eq!(p.content_type, "application/apply-patch+yaml");
    assert!(
        p.uri.contains("fieldManager=overlay-controller"),
        "{}",
        p.uri
    );
    assert_eq!(p.body["status"]["applied"], 2);
    assert_eq!(p.body["status"]["failed"], 1);
    assert_eq!(p.body["status"]["pending"], 0);
    assert_eq!(
        p.body["status"]["nodeStatus"][0],
        json!({"hostname": "n3", "device": "tmp0", "gateway": "192.0.2.1", "state": "Failed", "message": "unreachable"}),
        "the original entry shape, failing nodes first"
    );
    // n3 recovers, n2 goes: the entries left out are removed.
    let second = RouteSummary {
        applied: 2,
        failed: 0,
        pending: 0,
        node_status: vec![
            entry("n1", RouteState::Applied),
            entry("n3", RouteState::Applied),
        ],
    };
    store.set_summary("onprem", &second).await.unwrap();
    let stored = api.object(ROUTES, "onprem").unwrap();
    let hosts: Vec<&str> = stored["status"]["nodeStatus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["n1", "n3"], "{stored}");
    assert_eq!(stored["status"]["failed"], 0);
    // Read back: the record carries the summary.
    for _ in 0..500 {
        let rec = store.list().await.unwrap().pop().unwrap();
        if rec.summary.as_ref() == Some(&second) {
            assert_eq!(rec.node_status, second.node_status);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the summary never read back");
}

#[tokio::test]
async fn entries_the_original_agents_wrote_are_removed_by_the_first_summary() {
    let (api, client) = FakeApiServer::start();
    // An object of the original design: one entry per node, each owned by
    // that node's agent (its own field manager).
    let mut route = route_json("onprem", json!({"subnet": "198.51.100.0/24"}));
    route["status"] = json!({"nodeStatus": [
        {"hostname": "node-a", "device": "tmp0", "gateway": "192.0.2.1"},
        {"hostname": "gone", "device": "tmp0", "gateway": "192.0.2.1"}]});
    let owned = |n: &str| {
        let mut entries = serde_json::Map::new();
        entries.insert(
            format!("k:{{\"hostname\":\"{n}\"}}"),
            json!({".": {}, "f:hostname": {}, "f:device": {}, "f:gateway": {}}),
        );
        json!({"manager": node_field_manager(n), "operation": "Apply", "subresource": "status",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:nodeStatus": entries}}})
    };
    route["metadata"]["managedFields"] = json!([owned("node-a"), owned("gone")]);
    api.put(ROUTES, route);
    let store = KubeStaticRoutes::new(
        client,
        "overlay-controller".into(),
        InvalidObjects::default(),
    );
    let summary = RouteSummary {
        applied: 1,
        node_status: vec![NodeRouteStatus {
            hostname: "node-a".into(),
            device: "tmp0".into(),
            gateway: "192.0.2.1".into(),
            state: RouteState::Applied,
            message: String::new(),
        }],
        ..Default::default()
    };
    store.set_summary("onprem", &summary).await.unwrap();
    let stored = api.object(ROUTES, "onprem").unwrap();
    assert_eq!(
        stored["status"]["nodeStatus"],
        json!([{"hostname": "node-a", "device": "tmp0", "gateway": "192.0.2.1", "state": "Applied"}]),
        "{stored}"
    );
    let fix = api
        .requests("PATCH", "/staticroutes/onprem/status")
        .pop()
        .unwrap();
    assert_eq!(fix.content_type, "application/json-patch+json");
    assert_eq!(fix.body[0]["op"], "test", "guarded by what was read");
    // Once clean, a summary is one write.
    let before = api.writes();
    store.set_summary("onprem", &summary).await.unwrap();
    assert_eq!(api.writes(), before + 1);
}

#[tokio::test]
async fn events_land_in_default_or_in_the_objects_namespace() {
    let (api, client) = FakeApiServer::start();
    let ev = KubeEvents::new(client, "overlay-controller");
    ev.record(Event {
        kind: "NodeOverlayIp".into(),
        namespace: None,
        name: "n1".into(),
        type_: EventType::Normal,
        reason: "Reserved".into(),
        message: "reserved 192.0.2.4/24".into(),
    })
    .await;
    let p = api.find("POST", "/apis/events.k8s.io/v1/namespaces/default/events");
    assert_eq!(p.body["regarding"]["kind"], "NodeOverlayIp");
    assert_eq!(p.body["regarding"]["name"], "n1");
    assert_eq!(p.body["reason"], "Reserved");
    assert_eq!(p.body["reportingController"], "overlay-controller");
    ev.record(Event {
        kind: "ConfigMap".into(),
        namespace: Some("kube-system".into()),
        name: "static-routes".into(),
        type_: EventType::Warning,
        reason: "InvalidObject".into(),
        message: "data.routes[1]: bad".into(),
    })
    .await;
    let p = api.find("POST", "/namespaces/kube-system/events");
    assert_eq!(p.body["regarding"]["apiVersion"], "v1");
    assert_eq!(p.body["regarding"]["namespace"], "kube-system");
    // The controller's own Pod (IpamLoginBlocked) is a core object too.
    ev.record(Event {
        kind: "Pod".into(),
        namespace: Some("overlay-system".into()),
        name: "overlay-controller-5d9f".into(),
        type_: EventType::Warning,
        reason: "IpamLoginBlocked".into(),
        message: "phpIPAM blocked this client's IP".into(),
    })
    .await;
    let p = api.find("POST", "/namespaces/overlay-system/events");
    assert_eq!(p.body["regarding"]["kind"], "Pod");
    assert_eq!(p.body["regarding"]["apiVersion"], "v1");
}

#[tokio::test]
async fn the_controller_adds_its_finalizer_to_static_routes_by_apply() {
    let (api, client) = FakeApiServer::start();
    api.put(
        ROUTES,
        route_json("onprem", json!({"subnet": "198.51.100.0/24"})),
    );
    let store = KubeStaticRoutes::new(
        client,
        "overlay-controller".into(),
        InvalidObjects::default(),
    );
    store.add_finalizer("onprem", FINALIZER).await.unwrap();
    let p = api.find("PATCH", "/staticroutes/onprem?");
    assert_eq!(p.content_type, "application/apply-patch+yaml");
    assert!(
        p.uri.contains("fieldManager=overlay-controller"),
        "{}",
        p.uri
    );
    assert_eq!(p.body["metadata"]["finalizers"], json!([FINALIZER]));
    assert!(
        p.body.get("spec").is_none(),
        "the controller never owns the spec"
    );
}

#[tokio::test]
async fn the_legacy_configmap_is_read_by_name_and_a_malformed_list_is_reported() {
    let (api, client) = FakeApiServer::start();
    let cm = |routes: &str| {
        json!({"apiVersion":"v1","kind":"ConfigMap",
        "metadata":{"name":"static-routes","namespace":"kube-system"},
        "data":{"routes": routes}})
    };
    api.put(&configmaps("kube-system"), cm("[\"192.168.1.0/24\"]"));
    let (invalid, events) = tracker();
    let src = KubeConfigMapRoutes::new(client, "kube-system", "static-routes", invalid.clone());
    assert_eq!(
        src.subnets().await.unwrap(),
        ["192.168.1.0/24".parse::<overlay_core::Cidr>().unwrap()]
    );
    api.find("GET", "/configmaps/static-routes");
    assert_eq!(invalid.count("ConfigMap"), 0);

    // Not a JSON array: the whole list is rejected (the agent keeps the
    // routes it has).
    api.put(
        &configmaps("kube-system"),
        cm("192.168.1.0/24, 192.168.2.0/24"),
    );
    let err = src.subnets().await.unwrap_err();
    assert!(err.to_string().contains("JSON array"), "{err}");
    assert_eq!(invalid.count("ConfigMap"), 1);
    let ev = events_named(&events, "static-routes").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].namespace.as_deref(), Some("kube-system"));
    assert!(ev[0].message.contains("data.routes"), "{}", ev[0].message);
}

/// The older DaemonSet's ConfigMap exactly as its users wrote it (with
/// documentation addresses): a subnet, a bare address (which `ip route add`
/// took as a host route) and an entry that is no address at all.
#[tokio::test]
async fn the_original_static_routes_configmap_applies_every_entry_but_the_bad_one() {
    let (api, client) = FakeApiServer::start();
    api.put(
        &configmaps("default"),
        json!({"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":"static-routes","namespace":"default"},
            "data":{"routes": "[\"198.51.100.0/24\", \"198.51.100.7\", \"nonsense\"]"}}),
    );
    let (invalid, events) = tracker();
    let src = KubeConfigMapRoutes::new(client, "default", "static-routes", invalid.clone());
    let list = src.routes().await.unwrap();
    let cidr = |s: &str| s.parse::<overlay_core::Cidr>().unwrap();
    assert_eq!(
        list.subnets,
        [cidr("198.51.100.0/24"), cidr("198.51.100.7/32")]
    );
    assert_eq!(list.problems.len(), 1, "{:?}", list.problems);
    assert_eq!(list.problems[0].index, 2);
    assert_eq!(list.problems[0].entry, "nonsense");
    assert_eq!(src.subnets().await.unwrap().len(), 2);
    // Reported once, on the ConfigMap, naming the entry.
    assert_eq!(invalid.count("ConfigMap"), 1);
    let ev = events_named(&events, "static-routes").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].namespace.as_deref(), Some("default"));
    assert!(
        ev[0].message.contains("data.routes[2]") && ev[0].message.contains("nonsense"),
        "{}",
        ev[0].message
    );
    // Fixed: valid again.
    api.put(
        &configmaps("default"),
        json!({"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":"static-routes","namespace":"default"},
            "data":{"routes": "[\"198.51.100.0/24\", \"2001:db8::7\"]"}}),
    );
    let list = src.routes().await.unwrap();
    assert_eq!(
        list.subnets,
        [cidr("198.51.100.0/24"), cidr("2001:db8::7/128")]
    );
    assert!(list.problems.is_empty());
    assert_eq!(invalid.count("ConfigMap"), 0);
}

#[tokio::test]
async fn a_deleted_legacy_configmap_or_a_lost_key_is_unreadable_not_empty() {
    let (api, client) = FakeApiServer::start();
    let (invalid, _events) = tracker();
    let src = KubeConfigMapRoutes::new(client, "kube-system", "static-routes", invalid.clone());
    // Never created, or deleted: unknown, so the agent keeps its routes.
    let err = src.subnets().await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    api.put(
        &configmaps("kube-system"),
        json!({"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":"static-routes","namespace":"kube-system"},
            "data":{"other": "x"}}),
    );
    let err = src.subnets().await.unwrap_err();
    assert!(err.to_string().contains("no key `routes`"), "{err}");
    assert_eq!(invalid.count("ConfigMap"), 1);
}

#[tokio::test]
async fn watches_deliver_added_modified_deleted_and_survive_bookmarks() {
    let (api, client) = FakeApiServer::start();
    let store = KubeStaticRoutes::new(
        client,
        "overlay-controller".into(),
        InvalidObjects::default(),
    );
    let mut watch = store.watch();
    assert!(store.list().await.unwrap().is_empty());
    assert!(
        api.wait_for_watchers(ROUTES, 1).await,
        "no watch on {ROUTES}"
    );
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("a watch event")
            .expect("the stream goes on")
            .expect("no error")
    };
    assert!(matches!(next().await, StoreEvent::Restarted(all) if all.is_empty()));

    api.put(
        ROUTES,
        route_json("a", json!({"subnet": "198.51.100.0/24"})),
    );
    let StoreEvent::Applied(a) = next().await else {
        panic!("ADDED")
    };
    assert_eq!(a.spec.unwrap().subnet.to_string(), "198.51.100.0/24");

    api.bookmark();
    api.put(ROUTES, route_json("a", json!({"subnet": "203.0.113.0/24"})));
    let StoreEvent::Applied(a) = next().await else {
        panic!("MODIFIED")
    };
    assert_eq!(a.spec.unwrap().subnet.to_string(), "203.0.113.0/24");

    api.remove_object(ROUTES, "a");
    assert_eq!(next().await, StoreEvent::Deleted("a".into()));
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_410_gone_forces_a_relist_that_sees_what_changed_meanwhile() {
    let (api, client) = FakeApiServer::start();
    api.put(
        ROUTES,
        route_json("old", json!({"subnet": "198.51.100.0/24"})),
    );
    let store = KubeStaticRoutes::new(
        client,
        "overlay-controller".into(),
        InvalidObjects::default(),
    );
    assert_eq!(store.list().await.unwrap().len(), 1);
    assert!(
        api.wait_for_watchers(ROUTES, 1).await,
        "no watch on {ROUTES}"
    );
    let lists = api
        .requests("GET", "/staticroutes?")
        .iter()
        .filter(|s| !s.uri.contains("watch=true"))
        .count();

    // While the client is cut off from events, the set changes.
    api.hold_lists(true);
    api.expire_watches();
    api.remove_object(ROUTES, "old");
    api.put(
        ROUTES,
        route_json("new", json!({"subnet": "203.0.113.0/24"})),
    );
    wait_until("the re-list after 410", || {
        api.requests("GET", "/staticroutes?")
            .iter()
            .filter(|s| !s.uri.contains("watch=true"))
            .count()
            > lists
    })
    .await;
    api.hold_lists(false);
    for _ in 0..500 {
        let names: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        if names == ["new"] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the cache never saw the re-listed set");
}

/// Objects stored before the CRD validated them, or written by another
/// version.
fn malformed_routes() -> Vec<Value> {
    let mut unknown_state = route_json("unknown-state", json!({"subnet": "192.0.2.0/24"}));
    unknown_state["status"] = json!({"nodeStatus": [{"hostname": "node-a", "state": "Degraded"}]});
    vec![
        route_json(
            "metric-too-big",
            json!({"subnet": "203.0.113.0/24", "metric": 4294967296u64}),
        ),
        route_json("host-bits", json!({"subnet": "198.51.100.1/24"})),
        unknown_state,
    ]
}

#[tokio::test]
async fn malformed_static_routes_in_the_list_cost_only_themselves() {
    let (api, client) = FakeApiServer::start();
    api.put(
        ROUTES,
        route_json("good", json!({"subnet": "198.51.100.0/24"})),
    );
    for r in malformed_routes() {
        api.put(ROUTES, r);
    }
    let (invalid, events) = tracker();
    let store = KubeStaticRoutes::new(client, "overlay-controller".into(), invalid.clone());
    let all = store.list().await.unwrap();
    assert_eq!(all.len(), 4, "every object is listed");
    let by = |n: &str| all.iter().find(|r| r.name == n).unwrap().clone();
    assert!(by("good").spec.is_ok());
    let e = by("metric-too-big").spec.unwrap_err();
    assert!(e.contains("spec.metric"), "{e}");
    let e = by("host-bits").spec.unwrap_err();
    assert!(
        e.contains("spec.subnet") && e.contains("198.51.100.0/24"),
        "{e}"
    );
    let u = by("unknown-state");
    assert!(u.spec.is_ok(), "a bad status entry does not cost the spec");
    assert_eq!(u.node_status[0].state, RouteState::Pending);
    assert_eq!(invalid.count("StaticRoute"), 3);
    let ev = events_named(&events, "metric-too-big").await;
    assert_eq!(ev[0].type_, EventType::Warning);
    assert!(ev[0].message.contains("spec.metric"), "{}", ev[0].message);
}

#[tokio::test]
async fn a_malformed_object_in_a_watch_event_costs_only_itself() {
    let (api, client) = FakeApiServer::start();
    let (invalid, events) = tracker();
    let routes =
        KubeStaticRoutes::new(client.clone(), "overlay-controller".into(), invalid.clone());
    let ips = KubeOverlayIps::new(client, None, invalid.clone());
    assert!(routes.list().await.unwrap().is_empty());
    assert!(ips.list().await.unwrap().is_empty());
    assert!(
        api.wait_for_watchers(ROUTES, 1).await,
        "no watch on {ROUTES}"
    );
    assert!(api.wait_for_watchers(NOIPS, 1).await, "no watch on {NOIPS}");

    for r in malformed_routes() {
        api.put(ROUTES, r);
    }
    api.put(NOIPS, noip_json("garbage", "not-an-address"));
    api.put(
        ROUTES,
        route_json("good", json!({"subnet": "198.51.100.0/24"})),
    );
    api.put(NOIPS, noip_json("fine", "192.0.2.9/24"));
    wait_until("the good objects after the bad ones", || {
        invalid.count("StaticRoute") == 3 && invalid.count("NodeOverlayIp") == 1
    })
    .await;
    for _ in 0..500 {
        if routes.list().await.unwrap().len() == 4 && ips.list().await.unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let good = routes
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == "good")
        .unwrap();
    assert!(good.spec.is_ok());
    let fine = ips.get("fine").await.unwrap().unwrap();
    assert_eq!(fine.ip_addr.unwrap().to_string(), "192.0.2.9/24");
    let garbage = ips.get("garbage").await.unwrap().unwrap();
    assert_eq!(garbage.ip_addr, None);
    let why = garbage.address_error.unwrap();
    assert!(why.contains("status.ipAddr"), "{why}");
    assert_eq!(
        garbage.finalizers.len(),
        2,
        "the rest of the object is read"
    );
    let ev = events_named(&events, "garbage").await;
    assert!(ev[0].message.contains("status.ipAddr"), "{}", ev[0].message);

    // Fixed by its owner: valid again, the gauge goes down.
    api.put(NOIPS, noip_json("garbage", "192.0.2.10/24"));
    wait_until("the fixed object", || invalid.count("NodeOverlayIp") == 0).await;
}

#[tokio::test]
async fn the_api_server_refuses_what_the_crds_forbid() {
    // The scripted server validates writes like the real one: an agent
    // status entry with an unknown state, or a metric above u32, is a 422.
    let (api, client) = FakeApiServer::start();
    api.put(
        ROUTES,
        route_json("onprem", json!({"subnet": "198.51.100.0/24"})),
    );
    api.put(NOIPS, noip_json("n1", "192.0.2.4/24"));
    let store = KubeOverlayIps::new(client, Some("n1"), InvalidObjects::default());
    let mut bad = report("onprem", RouteState::Failed, "");
    bad.device = "a-device-name-longer-than-fifteen".into();
    let err = store
        .set_agent_status("n1", &agent_status(vec![bad], vec![]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("device"), "{err}");
    let long = report("onprem", RouteState::Failed, &"y".repeat(4000));
    store
        .set_agent_status("n1", &agent_status(vec![long], vec![]))
        .await
        .unwrap();
}

// ---- watches wake only for what matters ----

/// The next event of `watch` within `wait`, if any.
async fn next_event<T>(
    watch: &mut futures::stream::BoxStream<
        'static,
        Result<StoreEvent<T>, overlay_core::StoreError>,
    >,
    wait: Duration,
) -> Option<StoreEvent<T>> {
    tokio::time::timeout(wait, watch.next())
        .await
        .ok()
        .flatten()
        .map(|e| e.expect("no watch error"))
}

#[tokio::test]
async fn a_static_route_watch_ignores_status_only_changes() {
    let (api, client) = FakeApiServer::start();
    api.put(
        ROUTES,
        route_json("onprem", json!({"subnet": "198.51.100.0/24"})),
    );
    let agent_view = KubeStaticRoutes::new(
        client.clone(),
        node_field_manager("n1"),
        InvalidObjects::default(),
    );
    let controller = KubeStaticRoutes::new(
        client,
        "overlay-controller".into(),
        InvalidObjects::default(),
    );
    let mut watch = agent_view.watch();
    assert_eq!(agent_view.list().await.unwrap().len(), 1);
    assert!(
        api.wait_for_watchers(ROUTES, 2).await,
        "no watch on {ROUTES}"
    );
    assert!(matches!(
        next_event(&mut watch, Duration::from_secs(5)).await,
        Some(StoreEvent::Restarted(_))
    ));

    let summary = RouteSummary {
        applied: 7,
        ..Default::default()
    };
    controller.set_summary("onprem", &summary).await.unwrap();
    assert_eq!(
        next_event(&mut watch, Duration::from_millis(300)).await,
        None,
        "a summary wakes nobody"
    );
    // The cache still holds the latest object.
    let mut latest = None;
    for _ in 0..100 {
        latest = agent_view
            .list()
            .await
            .unwrap()
            .pop()
            .and_then(|r| r.summary);
        if latest.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(latest.map(|s| s.applied), Some(7));

    controller.add_finalizer("onprem", FINALIZER).await.unwrap();
    let Some(StoreEvent::Applied(r)) = next_event(&mut watch, Duration::from_secs(5)).await else {
        panic!("a finalizer change is an event")
    };
    assert_eq!(r.finalizers, [FINALIZER]);
    let mut changed = api.object(ROUTES, "onprem").unwrap();
    changed["spec"]["metric"] = json!(10);
    api.put(ROUTES, changed);
    let Some(StoreEvent::Applied(r)) = next_event(&mut watch, Duration::from_secs(5)).await else {
        panic!("a spec change is an event")
    };
    assert_eq!(r.spec.unwrap().metric, Some(10));
}

#[tokio::test]
async fn a_node_watch_ignores_kubelet_heartbeats() {
    let (api, client) = FakeApiServer::start();
    api.put(NODES, node_json("node-a"));
    let nodes = KubeNodes::new(client, Some("node-a"), InvalidObjects::default());
    let mut watch = nodes.watch();
    assert_eq!(nodes.list().await.unwrap().len(), 1);
    assert!(api.wait_for_watchers(NODES, 1).await, "no watch on {NODES}");
    assert!(matches!(
        next_event(&mut watch, Duration::from_secs(5)).await,
        Some(StoreEvent::Restarted(_))
    ));
    for beat in 0..3 {
        let mut n = node_json("node-a");
        n["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
            "lastHeartbeatTime": format!("2026-11-27T12:00:0{beat}Z")}]);
        n["metadata"]["annotations"] = json!({"node.alpha.kubernetes.io/ttl": beat.to_string()});
        api.put(NODES, n);
    }
    assert_eq!(
        next_event(&mut watch, Duration::from_millis(300)).await,
        None,
        "heartbeats wake nobody"
    );
    let mut relabelled = node_json("node-a");
    relabelled["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("dal12");
    api.put(NODES, relabelled);
    let Some(StoreEvent::Applied(n)) = next_event(&mut watch, Duration::from_secs(5)).await else {
        panic!("a label change is an event")
    };
    assert_eq!(n.zone.unwrap().as_str(), "dal12");
}

#[tokio::test]
async fn an_agents_overlay_ip_watch_ignores_its_own_status_writes_the_controllers_does_not() {
    let (api, client) = FakeApiServer::start();
    api.put(NOIPS, noip_json("n1", "192.0.2.4/24"));
    let agent = KubeOverlayIps::with_changes(
        client.clone(),
        Some("n1"),
        OverlayIpChanges::IgnoreAgentStatus,
        InvalidObjects::default(),
    );
    let controller = KubeOverlayIps::new(client, None, InvalidObjects::default());
    let (mut mine, mut all) = (agent.watch(), controller.watch());
    assert!(agent.get("n1").await.unwrap().is_some());
    assert!(controller.get("n1").await.unwrap().is_some());
    assert!(api.wait_for_watchers(NOIPS, 2).await, "no watch on {NOIPS}");
    for w in [&mut mine, &mut all] {
        assert!(matches!(
            next_event(w, Duration::from_secs(5)).await,
            Some(StoreEvent::Restarted(_))
        ));
    }
    let s = agent_status(vec![report("onprem", RouteState::Applied, "")], vec![]);
    agent.set_agent_status("n1", &s).await.unwrap();
    let Some(StoreEvent::Applied(r)) = next_event(&mut all, Duration::from_secs(5)).await else {
        panic!("the controller sees the agent's reports")
    };
    assert_eq!(r.agent.unwrap().routes.len(), 1);
    assert_eq!(
        next_event(&mut mine, Duration::from_millis(300)).await,
        None,
        "its own write does not wake the agent"
    );
    assert_eq!(
        wait_for_agent(&agent, "n1", |a| a.routes.len() == 1)
            .await
            .routes[0]
            .route,
        "onprem"
    );
    // The controller's address change wakes it.
    let mut moved = api.object(NOIPS, "n1").unwrap();
    moved["status"]["ipAddr"] = json!("192.0.2.5/24");
    api.put(NOIPS, moved);
    let Some(StoreEvent::Applied(r)) = next_event(&mut mine, Duration::from_secs(5)).await else {
        panic!("an address change is an event")
    };
    assert_eq!(r.ip_addr.unwrap().to_string(), "192.0.2.5/24");
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/overlay-system/leases";

#[tokio::test]
async fn the_lease_is_created_then_renewed_by_replace_with_its_resource_version() {
    let (server, client) = FakeApiServer::start();
    let store = Arc::new(KubeLease::new(
        client.clone(),
        "overlay-system",
        "overlay-controller",
        [(CLUSTER_ID_ANNOTATION.to_owned(), "uid-1".to_owned())].into(),
    ));
    let (mut a, fence) = LeaderElector::new(store.clone(), LeaderConfig::new("pod-a"));
    assert!(a.try_once().await, "acquires a Lease that does not exist");
    assert!(fence.check().is_ok());
    let lease = server.object(LEASES, "overlay-controller").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "pod-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(
        lease["metadata"]["annotations"][CLUSTER_ID_ANNOTATION],
        "uid-1"
    );
    let first_renew = lease["spec"]["renewTime"].clone();
    assert!(first_renew.is_string(), "{lease}");

    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(a.try_once().await, "renews");
    let put = server.find("PUT", "leases/overlay-controller");
    assert_eq!(
        put.body["metadata"]["resourceVersion"], lease["metadata"]["resourceVersion"],
        "the renewal is guarded by the version it read"
    );
    let renewed = server.object(LEASES, "overlay-controller").unwrap();
    assert_ne!(renewed["spec"]["renewTime"], first_renew);

    // A writer with a stale version is refused with Conflict.
    let stale = overlay_core::leader::LeaseRecord {
        holder: Some("pod-b".into()),
        version: lease["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .into(),
        ..Default::default()
    };
    let err = store.update(&stale).await.unwrap_err();
    assert!(
        matches!(err, overlay_core::StoreError::Conflict { .. }),
        "{err}"
    );
    // A second replica sees a live holder and stays standby.
    let (mut b, fence_b) = LeaderElector::new(store.clone(), LeaderConfig::new("pod-b"));
    assert!(!b.try_once().await);
    assert!(fence_b.check().is_err());
    assert_eq!(
        server.object(LEASES, "overlay-controller").unwrap()["spec"]["holderIdentity"],
        "pod-a"
    );
    // Shutdown hands it over at once.
    a.release().await;
    let released = server.object(LEASES, "overlay-controller").unwrap();
    assert!(released["spec"]["holderIdentity"].is_null(), "{released}");
    assert!(
        b.try_once().await,
        "a released Lease is taken without waiting"
    );
}

#[tokio::test]
async fn the_cluster_id_is_the_kube_system_namespace_uid() {
    let (server, client) = FakeApiServer::start();
    let err = cluster_uid(client.clone()).await.unwrap_err();
    assert!(err.to_string().contains("kube-system"), "{err}");
    server.put(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "kube-system", "uid": "0b7e5c52-5d0e-4a8e-9a57-1d6f3c2a0001"}}),
    );
    assert_eq!(
        cluster_uid(client).await.unwrap(),
        "0b7e5c52-5d0e-4a8e-9a57-1d6f3c2a0001"
    );
}

#[tokio::test]
async fn the_orphan_check_reads_the_node_live_not_from_the_cache() {
    let (server, client) = FakeApiServer::start();
    let nodes = KubeNodes::new(
        client,
        None,
        InvalidObjects::new(Arc::new(MemoryEvents::new())),
    );
    assert!(nodes.list().await.unwrap().is_empty());
    server.put(NODES, node_json("late"));
    let live = nodes.get_live("late").await.unwrap();
    assert_eq!(live.map(|n| n.name).as_deref(), Some("late"));
    assert!(
        server
            .find("GET", "/api/v1/nodes/late")
            .uri
            .contains("nodes/late")
    );
    assert!(nodes.get_live("never").await.unwrap().is_none());
}

#[tokio::test]
async fn a_kind_the_api_server_does_not_serve_reads_as_not_served_until_its_crd_comes() {
    let (api, client) = FakeApiServer::start();
    api.serve_collection(NOIPS, false);
    api.serve_collection(ROUTES, false);
    let ips = KubeOverlayIps::new(client.clone(), Some("n1"), InvalidObjects::default());
    let routes = KubeStaticRoutes::new(client, node_field_manager("n1"), InvalidObjects::default());
    // At once, not after the initial-list timeout: the 404 says it all.
    let err = tokio::time::timeout(Duration::from_secs(10), ips.get("n1"))
        .await
        .expect("answered before the list timeout")
        .unwrap_err();
    assert!(err.is_not_served(), "{err:?}");
    assert!(err.to_string().contains("CRD"), "{err}");
    let err = tokio::time::timeout(Duration::from_secs(10), routes.list())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_not_served(), "{err:?}");
    // The CRD is installed: the watch retries and the kind is read.
    api.serve_collection(NOIPS, true);
    api.put(NOIPS, noip_json("n1", "192.0.2.9/24"));
    let mut found = None;
    for _ in 0..300 {
        if let Ok(Some(r)) = ips.get("n1").await {
            found = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found.unwrap().ip_addr.unwrap().to_string(), "192.0.2.9/24");
}

#[tokio::test]
async fn the_zone_label_of_a_static_route_selects_the_nodes_of_that_zone() {
    let (api, client) = FakeApiServer::start();
    let mut route = route_json(
        "dal10-only",
        json!({"subnet": "198.51.100.0/24", "gateway": "203.0.113.1",
            "nodeSelector": {"matchLabels": {"tier": "edge"}}}),
    );
    route["metadata"]["labels"] = json!({"failure-domain.beta.kubernetes.io/zone": "dal10"});
    api.put(ROUTES, route);
    let store = KubeStaticRoutes::new(client, node_field_manager("n1"), InvalidObjects::default());
    let mut watch = store.watch();
    let list = store.list().await.unwrap();
    let sel = list[0].spec.as_ref().unwrap().selector.clone();
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert!(sel.matches(&labels(&[
        ("topology.kubernetes.io/zone", "dal10"),
        ("tier", "edge")
    ])));
    assert!(sel.matches(&labels(&[
        ("failure-domain.beta.kubernetes.io/zone", "dal10"),
        ("tier", "edge")
    ])));
    assert!(!sel.matches(&labels(&[
        ("topology.kubernetes.io/zone", "dal12"),
        ("tier", "edge")
    ])));
    assert!(!sel.matches(&labels(&[("topology.kubernetes.io/zone", "dal10")])));
    assert!(matches!(
        next_event(&mut watch, Duration::from_secs(5)).await,
        Some(StoreEvent::Restarted(_))
    ));
    // Moving the route to another zone is a change the agents hear of.
    let mut moved = api.object(ROUTES, "dal10-only").unwrap();
    moved["metadata"]["labels"]["failure-domain.beta.kubernetes.io/zone"] = json!("dal12");
    api.put(ROUTES, moved);
    let Some(StoreEvent::Applied(r)) = next_event(&mut watch, Duration::from_secs(5)).await else {
        panic!("a zone label change is an event")
    };
    let sel = r.spec.unwrap().selector;
    assert!(sel.matches(&labels(&[
        ("topology.kubernetes.io/zone", "dal12"),
        ("tier", "edge")
    ])));
    // Another label is not.
    let mut other = api.object(ROUTES, "dal10-only").unwrap();
    other["metadata"]["labels"]["team"] = json!("net");
    api.put(ROUTES, other);
    assert_eq!(
        next_event(&mut watch, Duration::from_millis(300)).await,
        None
    );
}
