//! The Kubernetes adapters against a scripted API server (tower-test): the
//! exact requests they send — field-selected lists, server-side apply
//! bodies and field managers, guarded finalizer patches, Events — with real
//! JSON shapes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use overlay_core::events::{Event, EventRecorder, EventType};
use overlay_core::k8s::{
    KubeEvents, KubeNodes, KubeOverlayIps, KubeStaticRoutes, node_field_manager,
};
use overlay_core::{
    AgentStatus, FINALIZER, NodeRouteStatus, NodeSource, OverlayIpMeta, OverlayIpStore, RouteState,
    StaticRouteStore,
};
use serde_json::{Value, json};
use tower_test::mock;

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    body: Value,
}

/// Serves LISTs from `objects` (by resource path), holds WATCHes open,
/// answers GET of a single object from `objects` too, and records every
/// other request, answering with the object it names.
fn api_server(objects: Vec<(&'static str, Value)>) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let uri = req.uri().to_string();
            let method = req.method().to_string();
            let content_type = req
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let path = req.uri().path().to_owned();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if uri.contains("watch=true") {
                held.push(send); // never answered: the watch stays open
                continue;
            }
            log.lock().unwrap().push(Seen {
                method: method.clone(),
                uri: uri.clone(),
                content_type,
                body: body.clone(),
            });
            let reply = if method == "GET" {
                match objects.iter().find(|(p, _)| *p == path) {
                    Some((_, v)) => v.clone(),
                    None => {
                        let items: Vec<Value> = objects
                            .iter()
                            .filter(|(p, _)| p.starts_with(&path) && p.len() > path.len())
                            .map(|(_, v)| v.clone())
                            .collect();
                        if items.is_empty() && !path.ends_with('s') {
                            let status = json!({"kind":"Status","apiVersion":"v1","status":"Failure","message":"not found","reason":"NotFound","code":404});
                            send.send_response(
                                Response::builder()
                                    .status(404)
                                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                                    .unwrap(),
                            );
                            continue;
                        }
                        json!({"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":"1"},"items":items})
                    }
                }
            } else if method == "POST" {
                body.clone()
            } else {
                // PATCH: answer with the object as stored (good enough for the adapters).
                let base = path.trim_end_matches("/status");
                objects.iter().find(|(p, _)| *p == base).map(|(_, v)| v.clone()).unwrap_or_else(|| {
                    json!({"apiVersion":"iks.ibm.com/v1alpha1","kind":"NodeOverlayIp","metadata":{"name":"n1"}})
                })
            };
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(svc, "default"), seen)
}

fn node_json() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "uid": "u-1", "resourceVersion": "5", "labels": {
            "topology.kubernetes.io/zone": "dal10", "topology.kubernetes.io/region": "us-south"}},
        "status": {"addresses": [
            {"type": "Hostname", "address": "node-a"},
            {"type": "InternalIP", "address": "203.0.113.10"}]}
    })
}

fn noip_json() -> Value {
    json!({
        "apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
        "metadata": {"name": "n1", "resourceVersion": "7", "finalizers": ["example.com/keep", FINALIZER]},
        "status": {"ipAddr": "192.0.2.4/24", "gateway": "192.0.2.1"}
    })
}

fn find(seen: &Arc<Mutex<Vec<Seen>>>, method: &str, needle: &str) -> Seen {
    seen.lock()
        .unwrap()
        .iter()
        .find(|s| s.method == method && s.uri.contains(needle))
        .cloned()
        .unwrap_or_else(|| panic!("no {method} {needle} in {:#?}", seen.lock().unwrap()))
}

#[tokio::test]
async fn the_agent_lists_only_its_own_node_by_field_selector() {
    let (client, seen) = api_server(vec![("/api/v1/nodes/node-a", node_json())]);
    let nodes = KubeNodes::new(client, Some("node-a"));
    let n = nodes.get("node-a").await.unwrap().unwrap();
    assert_eq!(n.zone.unwrap().as_str(), "dal10");
    assert_eq!(
        n.internal_ips,
        ["203.0.113.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(n.uid.as_deref(), Some("u-1"));
    let list = find(&seen, "GET", "/api/v1/nodes?");
    assert!(
        list.uri.contains("fieldSelector=metadata.name%3Dnode-a"),
        "{}",
        list.uri
    );
}

#[tokio::test]
async fn the_controller_applies_metadata_and_status_under_its_field_manager() {
    let (client, seen) = api_server(vec![(
        "/apis/iks.ibm.com/v1alpha1/nodeoverlayips/n1",
        noip_json(),
    )]);
    let store = KubeOverlayIps::new(client, None);
    let labels = [("node", "n1"), ("zone", "dal10"), ("region", "us-south")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    store
        .ensure(&OverlayIpMeta {
            name: "n1".into(),
            labels,
            owner_uid: Some("u-1".into()),
        })
        .await
        .unwrap();
    let apply = find(&seen, "PATCH", "/nodeoverlayips/n1?");
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
    let st = find(&seen, "PATCH", "/nodeoverlayips/n1/status");
    assert!(st.uri.contains("fieldManager=overlay-controller"));
    assert_eq!(
        st.body["status"],
        json!({"ipAddr": "192.0.2.4/24", "gateway": "192.0.2.1"})
    );
}

#[tokio::test]
async fn the_agent_status_apply_never_touches_the_controller_fields() {
    let (client, seen) = api_server(vec![(
        "/apis/iks.ibm.com/v1alpha1/nodeoverlayips/n1",
        noip_json(),
    )]);
    let store = KubeOverlayIps::new(client, Some("n1"));
    let s = AgentStatus {
        interface: "eth0".into(),
        interface_label: "tmp0".into(),
        configured: true,
        reason: "AddressConfigured".into(),
        message: "192.0.2.4/24 on tmp0".into(),
    };
    store.set_agent_status("n1", &s).await.unwrap();
    let p = find(&seen, "PATCH", "/nodeoverlayips/n1/status");
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
    let list = find(&seen, "GET", "/nodeoverlayips?");
    assert!(
        list.uri.contains("fieldSelector=metadata.name%3Dn1"),
        "never lists all NodeOverlayIps: {}",
        list.uri
    );
}

#[tokio::test]
async fn finalizer_removal_is_a_guarded_json_patch_that_keeps_other_finalizers() {
    let (client, seen) = api_server(vec![(
        "/apis/iks.ibm.com/v1alpha1/nodeoverlayips/n1",
        noip_json(),
    )]);
    let store = KubeOverlayIps::new(client, None);
    store.remove_finalizer("n1", FINALIZER).await.unwrap();
    let p = find(&seen, "PATCH", "/nodeoverlayips/n1");
    assert_eq!(p.content_type, "application/json-patch+json");
    assert_eq!(
        p.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/keep", FINALIZER]},
            {"op": "replace", "path": "/metadata/finalizers", "value": ["example.com/keep"]},
        ])
    );
}

#[tokio::test]
async fn each_agent_applies_only_its_own_list_map_entry() {
    let route = json!({"apiVersion":"iks.ibm.com/v1alpha1","kind":"StaticRoute",
        "metadata":{"name":"onprem","resourceVersion":"3"},"spec":{"subnet":"198.51.100.0/24"},
        "status":{"nodeStatus":[{"hostname":"node-b","device":"tmp0","gateway":"192.0.2.1"},
                                {"hostname":"node-a","device":"tmp0","gateway":"192.0.2.1"}]}});
    let (client, seen) = api_server(vec![(
        "/apis/iks.ibm.com/v1alpha1/staticroutes/onprem",
        route,
    )]);
    let store = KubeStaticRoutes::new(client, node_field_manager("node-a"));
    let s = NodeRouteStatus {
        hostname: "node-a".into(),
        device: "tmp0".into(),
        gateway: "192.0.2.1".into(),
        state: RouteState::Applied,
        message: String::new(),
    };
    store.set_node_status("onprem", &s).await.unwrap();
    let p = find(&seen, "PATCH", "/staticroutes/onprem/status");
    assert!(
        p.uri.contains("fieldManager=overlay-agent%2Fnode-a"),
        "{}",
        p.uri
    );
    assert_eq!(
        p.body["status"]["nodeStatus"],
        json!([{"hostname":"node-a","device":"tmp0","gateway":"192.0.2.1","state":"Applied"}])
    );
    // Removing the entry: a test on the hostname at its index, then remove.
    store
        .remove_node_status("onprem", &["node-a".to_owned()])
        .await
        .unwrap();
    let seen_now = seen.lock().unwrap().clone();
    let rm = seen_now.iter().rev().find(|s| s.method == "PATCH").unwrap();
    assert_eq!(rm.content_type, "application/json-patch+json");
    assert_eq!(
        rm.body,
        json!([
        {"op":"test","path":"/status/nodeStatus/1/hostname","value":"node-a"},
        {"op":"remove","path":"/status/nodeStatus/1"}])
    );
}

#[tokio::test]
async fn events_for_cluster_scoped_objects_land_in_default() {
    let (client, seen) = api_server(vec![]);
    let ev = KubeEvents::new(client, "overlay-controller");
    ev.record(Event {
        kind: "NodeOverlayIp".into(),
        name: "n1".into(),
        type_: EventType::Normal,
        reason: "Reserved".into(),
        message: "reserved 192.0.2.4/24".into(),
    })
    .await;
    let p = find(
        &seen,
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
    );
    assert_eq!(p.body["regarding"]["kind"], "NodeOverlayIp");
    assert_eq!(p.body["regarding"]["name"], "n1");
    assert_eq!(p.body["reason"], "Reserved");
    assert_eq!(p.body["reportingController"], "overlay-controller");
}

#[tokio::test]
async fn the_controller_adds_its_finalizer_to_static_routes_by_apply() {
    let route = json!({"apiVersion":"iks.ibm.com/v1alpha1","kind":"StaticRoute",
        "metadata":{"name":"onprem","resourceVersion":"3"},"spec":{"subnet":"198.51.100.0/24"}});
    let (client, seen) = api_server(vec![(
        "/apis/iks.ibm.com/v1alpha1/staticroutes/onprem",
        route,
    )]);
    let store = KubeStaticRoutes::new(client, "overlay-controller".into());
    store.add_finalizer("onprem", FINALIZER).await.unwrap();
    let p = find(&seen, "PATCH", "/staticroutes/onprem?");
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
async fn the_legacy_configmap_is_read_by_name_and_malformed_lists_are_errors() {
    use overlay_core::LegacyRouteSource;
    use overlay_core::k8s::KubeConfigMapRoutes;
    let cm = |routes: &str| {
        json!({"apiVersion":"v1","kind":"ConfigMap",
        "metadata":{"name":"static-routes","namespace":"kube-system","resourceVersion":"1"},
        "data":{"routes": routes}})
    };
    let (client, seen) = api_server(vec![(
        "/api/v1/namespaces/kube-system/configmaps/static-routes",
        cm("[\"192.168.1.0/24\"]"),
    )]);
    let src = KubeConfigMapRoutes::new(client, "kube-system", "static-routes");
    assert_eq!(
        src.subnets().await.unwrap(),
        ["192.168.1.0/24".parse::<overlay_core::Cidr>().unwrap()]
    );
    let get = find(&seen, "GET", "/configmaps/static-routes");
    assert_eq!(get.method, "GET");

    let (client, _) = api_server(vec![(
        "/api/v1/namespaces/kube-system/configmaps/static-routes",
        cm("[\"192.168.1.0/24\", \"oops\"]"),
    )]);
    let src = KubeConfigMapRoutes::new(client, "kube-system", "static-routes");
    let err = src.subnets().await.unwrap_err();
    assert!(err.to_string().contains("routes[1]"), "{err}");
}
