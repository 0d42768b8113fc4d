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
use overlay_core::invalid::InvalidObjects;
use overlay_core::k8s::{
    CLUSTER_ID_ANNOTATION, KubeConfigMapRoutes, KubeEvents, KubeLease, KubeNodes, KubeOverlayIps,
    KubeStaticRoutes, cluster_uid, node_field_manager,
};
use overlay_core::leader::{LeaderConfig, LeaderElector, LeaseStore};
use overlay_core::memory::MemoryEvents;
use overlay_core::{
    AgentStatus, FINALIZER, LegacyRouteSource, NodeRouteStatus, NodeSource, OverlayIpMeta,
    OverlayIpStore, RouteState, StaticRouteStore, StoreEvent,
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

#[tokio::test]
async fn each_agent_applies_only_its_own_list_map_entry() {
    let (api, client) = FakeApiServer::start();
    let mut route = route_json("onprem", json!({"subnet": "198.51.100.0/24"}));
    route["status"] = json!({"nodeStatus":[{"hostname":"node-b","device":"tmp0","gateway":"192.0.2.1"},
                                            {"hostname":"node-a","device":"tmp0","gateway":"192.0.2.1"}]});
    api.put(ROUTES, route);
    let store = KubeStaticRoutes::new(
        client,
        node_field_manager("node-a"),
        InvalidObjects::default(),
    );
    let s = NodeRouteStatus {
        hostname: "node-a".into(),
        device: "tmp0".into(),
        gateway: "192.0.2.1".into(),
        state: RouteState::Applied,
        message: String::new(),
    };
    store.set_node_status("onprem", &s).await.unwrap();
    let p = api.find("PATCH", "/staticroutes/onprem/status");
    assert!(
        p.uri.contains("fieldManager=overlay-agent%2Fnode-a"),
        "{}",
        p.uri
    );
    assert_eq!(
        p.body["status"]["nodeStatus"],
        json!([{"hostname":"node-a","device":"tmp0","gateway":"192.0.2.1","state":"Applied"}])
    );
    let entries = api.object(ROUTES, "onprem").unwrap()["status"]["nodeStatus"].clone();
    assert_eq!(
        entries.as_array().unwrap().len(),
        2,
        "node-b's entry kept: {entries}"
    );
    // Removing the entry: a test on the hostname at its index, then remove.
    store
        .remove_node_status("onprem", &["node-a".to_owned()])
        .await
        .unwrap();
    let rm = api
        .requests("PATCH", "/staticroutes/onprem/status")
        .pop()
        .unwrap();
    assert_eq!(rm.content_type, "application/json-patch+json");
    assert_eq!(
        rm.body,
        json!([
        {"op":"test","path":"/status/nodeStatus/1/hostname","value":"node-a"},
        {"op":"remove","path":"/status/nodeStatus/1"}])
    );
    let entries = api.object(ROUTES, "onprem").unwrap()["status"]["nodeStatus"].clone();
    assert_eq!(
        entries,
        json!([{"hostname":"node-b","device":"tmp0","gateway":"192.0.2.1"}])
    );
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

    api.put(
        &configmaps("kube-system"),
        cm("[\"192.168.1.0/24\", \"oops\"]"),
    );
    let err = src.subnets().await.unwrap_err();
    assert!(err.to_string().contains("routes[1]"), "{err}");
    assert_eq!(invalid.count("ConfigMap"), 1);
    let ev = events_named(&events, "static-routes").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].namespace.as_deref(), Some("kube-system"));
    assert!(
        ev[0].message.contains("data.routes[1]"),
        "{}",
        ev[0].message
    );
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
    api.wait_for_watchers(ROUTES, 1).await;
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
    api.wait_for_watchers(ROUTES, 1).await;
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
    api.wait_for_watchers(ROUTES, 1).await;
    api.wait_for_watchers(NOIPS, 1).await;

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
    let store = KubeStaticRoutes::new(client, node_field_manager("n1"), InvalidObjects::default());
    let mut s = NodeRouteStatus {
        hostname: "n1".into(),
        device: "a-device-name-longer-than-fifteen".into(),
        gateway: String::new(),
        state: RouteState::Failed,
        message: String::new(),
    };
    let err = store.set_node_status("onprem", &s).await.unwrap_err();
    assert!(err.to_string().contains("device"), "{err}");
    s.device = "tmp0".into();
    s.message = "y".repeat(4000);
    store.set_node_status("onprem", &s).await.unwrap();
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
