//! The binaries' real Kubernetes stores, built by the same functions the
//! binaries call (`overlay_bins::stores`), driven through the reconciles
//! that make every kind of API call they ever make, against the scripted
//! API server, which records each request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use overlay_bins::stores::{
    AgentInputOptions, agent_inputs, controller_events, controller_lease, controller_stores,
    ipam_login_blocked_event,
};
use overlay_core::agent::AgentConfig;
use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::events::EventRecorder;
use overlay_core::fakes::MemoryProgrammer;
use overlay_core::invalid::InvalidObjects;
use overlay_core::leader::{LeaderConfig, Leadership, Term};
use overlay_core::metrics::{NoMetrics, no_metrics};
use overlay_core::{DiscoveredRoute, IpamBackend, Owner, Zone};
use overlay_ipam::memory::MemoryBackend;
use overlay_ipam::pools::{PoolConfig, PoolsConfig};
use serde_json::{Value, json};

use super::support::apiserver::{
    FakeApiServer, NODES, NOIPS, POOLS, ROUTES, configmaps, wait_until,
};

/// The node the agent runs on.
pub const ME: &str = "node-a";
const FINALIZER: &str = "finalizer.iks.ibm.com";

fn node(name: &str, ip: &str, zone: Option<&str>) -> Value {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if let Some(z) = zone {
        labels["topology.kubernetes.io/zone"] = json!(z);
    }
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

/// A NodeOverlayIp as the controller leaves it.
pub fn noip(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
        "metadata": {"name": name, "finalizers": [FINALIZER],
            "labels": {"node": name, "zone": "dal10"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                "uid": format!("uid-{name}")}]},
        "status": {"ipAddr": ip, "gateway": "192.0.2.1"}})
}

fn route(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
        "metadata": {"name": name}, "spec": spec})
}

fn routes_configmap(routes: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "static-routes", "namespace": "overlay-system"},
        "data": {"routes": routes}})
}

/// `(method, uri)` of every request so far.
fn requests(api: &FakeApiServer) -> Vec<(String, String)> {
    api.seen().into_iter().map(|s| (s.method, s.uri)).collect()
}

async fn wait_for_request(api: &FakeApiServer, what: &str, method: &str, needle: &str) {
    wait_until(what, || !api.requests(method, needle).is_empty()).await;
}

/// Calls `change(i)` for i = 0, 1, ... until an Event in `events` (a
/// path) has been created and then PATCHed (at most 20 times).
async fn repeat_until_patched<F: std::future::Future<Output = ()>>(
    api: &FakeApiServer,
    events: &str,
    mut change: impl FnMut(usize) -> F,
) {
    for i in 0..20 {
        let before = api.seen().len();
        change(i).await;
        wait_until("an Event", || {
            api.seen()[before..]
                .iter()
                .any(|s| s.uri.contains(events) && s.method != "GET")
        })
        .await;
        if !api.requests("PATCH", events).is_empty() {
            return;
        }
    }
    panic!("no repeated Event was sent as a PATCH to {events}");
}

/// What one agent run did.
pub struct AgentRun {
    /// `(method, uri)` of every request the agent made.
    pub requests: Vec<(String, String)>,
    /// The agent's own NodeOverlayIp before its reconcile and after (the
    /// status it wrote).
    pub before: Value,
    pub after: Value,
}

/// Runs the agent of node [`ME`] as deployed: StaticRoutes on, and with
/// `legacy` the component `agent/legacy` (ConfigMap
/// overlay-system/static-routes). It reconciles (reads everything, programs
/// the in-memory kernel, writes its NodeOverlayIp status), then meets its
/// own NodeOverlayIp not converting twice (a Warning Event, then the same
/// Event again, which kube's recorder sends as a PATCH of the series), and
/// with `legacy` a malformed route list twice (the same on the ConfigMap).
pub async fn agent_run(legacy: bool) -> AgentRun {
    let (api, client) = FakeApiServer::start();
    api.put(NODES, node(ME, "203.0.113.10", Some("dal10")));
    api.put(NODES, node("node-b", "203.0.113.11", Some("dal10")));
    api.put(NOIPS, noip(ME, "192.0.2.20/24"));
    api.put(NOIPS, noip("node-b", "192.0.2.21/24"));
    api.put(
        ROUTES,
        route("onprem", json!({"subnet": "198.51.100.0/24"})),
    );
    api.put(
        ROUTES,
        route(
            "via-private",
            json!({"subnet": "198.51.101.0/24", "gatewayFrom": "10.0.0.0/8"}),
        ),
    );
    if legacy {
        api.put(
            &configmaps("overlay-system"),
            routes_configmap(r#"["192.168.1.0/24"]"#),
        );
    }
    let kernel = MemoryProgrammer::new();
    kernel.with(|k| {
        k.addresses
            .insert("203.0.113.10".parse().unwrap(), "eth0".parse().unwrap());
        k.covering.push(DiscoveredRoute {
            destination: "10.0.0.0/8".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            device: "eth0".parse().unwrap(),
        });
    });
    let options = AgentInputOptions {
        static_routes: true,
        legacy_configmap: legacy.then(|| "overlay-system/static-routes".to_owned()),
        legacy_file: None,
    };
    let inputs = agent_inputs(client, ME, &options, no_metrics()).unwrap();
    let agent = inputs.agent(AgentConfig::new(ME).unwrap(), Arc::new(kernel.clone()));
    let before = api.object(NOIPS, ME).unwrap();
    let report = agent.reconcile().await.unwrap();
    let after = api.object(NOIPS, ME).unwrap();
    let programmed = kernel.with(|k| k.routes.len());
    assert_eq!(
        programmed,
        if legacy { 3 } else { 2 },
        "the agent did not program its routes: {report:?}"
    );
    assert_eq!(
        after["status"]["interfaceLabel"], "tmp0",
        "the agent did not write its status: {after}"
    );

    // Its own NodeOverlayIp stops converting (garbage from another
    // version), then changes to other garbage: an Event, then repeats of
    // it. The agent sends Events in the background, so a repeat may race
    // the first one's create (and be sent as another create): change the
    // garbage until a repeat goes out as the PATCH of the series.
    assert!(api.wait_for_watchers(NOIPS, 1).await, "no watch on {NOIPS}");
    repeat_until_patched(&api, "/namespaces/default/events", |i| {
        let mut o = api.object(NOIPS, ME).unwrap();
        o["status"]["ipAddr"] = json!(format!("not-an-address-{i}"));
        api.put(NOIPS, o);
        async {}
    })
    .await;
    if legacy {
        // The same for a malformed route list (read at each reconcile).
        repeat_until_patched(&api, "/namespaces/overlay-system/events", |i| {
            api.put(
                &configmaps("overlay-system"),
                routes_configmap(&format!(r#"["not-a-cidr-{i}"]"#)),
            );
            let agent = &agent;
            async move {
                let _ = agent.reconcile().await;
            }
        })
        .await;
    }
    AgentRun {
        requests: requests(&api),
        before,
        after,
    }
}

/// Runs the controller's API side as deployed: the cluster id from the
/// kube-system Namespace, leader election on Lease
/// overlay-system/overlay-controller (create, renew, release), and the
/// reconciles that make each kind of write: a node gets an address
/// (apply of the NodeOverlayIp and of its status, an Event), a node
/// without zone (a Warning Event, twice), a NodeOverlayIp whose node is gone
/// (delete, then the guarded finalizer removal), a new StaticRoute (its
/// finalizer, then the summary of a node's report in its status), a
/// deleted one no existing node reports (finalizer removed), the live read of a node before trusting a
/// reservation is orphaned, and the Event on its own Pod when phpIPAM
/// blocks it (twice); and every call of the Kubernetes-native IPAM's store
/// (`KubePoolStore`).
pub async fn controller_run() -> Vec<(String, String)> {
    let (api, client) = FakeApiServer::start();
    seed_controller_objects(&api);
    let cluster = overlay_core::k8s::cluster_uid(client.clone())
        .await
        .unwrap();
    // Leader election, as the binary runs it (short periods).
    let lease = controller_lease(
        client.clone(),
        "overlay-system",
        "overlay-controller",
        &cluster,
    );
    let leadership = Leadership::start(
        Arc::new(lease),
        LeaderConfig {
            lease_duration: Duration::from_secs(3),
            margin: Duration::from_secs(1),
            retry_period: Duration::from_millis(100),
            ..LeaderConfig::new("overlay-controller-0")
        },
    );
    let term = leadership
        .lead(std::future::pending(), &NoMetrics, |_fence, _until| async {
            wait_for_request(&api, "a Lease renewal", "PUT", "/leases/overlay-controller").await;
            let (controller, ipam, events) = reconcile_as_leader(&api, &client, &cluster).await;
            summarize_and_report(&api, &controller, &ipam, &events, &cluster).await;
            kubernetes_ipam_calls(&api, &client, &cluster).await;
            Ok::<(), String>(())
        })
        .await;
    assert_eq!(term, Ok(Term::ShutDown));
    requests(&api)
}

/// Every call of the Kubernetes-native IPAM's store (`KubePoolStore`):
/// its watch of pools, allocations and claims; a reservation (allocation,
/// then claim), a hold-down (replace), a release (deletes guarded by uid);
/// the pool finalizer added and removed; the pool's status.
async fn kubernetes_ipam_calls(api: &FakeApiServer, client: &kube::Client, cluster: &str) {
    use futures::StreamExt;
    use overlay_core::ippool::{
        IpAllocation, IpClaim, IpPoolStatus, PoolStore, allocation_name, claim_name,
    };
    api.put(
        POOLS,
        json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "OverlayIPPool",
            "metadata": {"name": "dal10-a", "uid": "uid-dal10-a"},
            "spec": {"zone": "dal10", "cidr": "198.51.100.0/24"}}),
    );
    let store = overlay_core::k8s::KubePoolStore::new(client.clone());
    // The watch runs in its own task, as the backend runs it.
    let mut watch = store.watch();
    let watching = tokio::spawn(async move { while watch.next().await.is_some() {} });
    for kind in ["overlayippools", "overlayipallocations", "overlayipclaims"] {
        let collection = format!("/apis/iks.ibm.com/v1alpha1/{kind}");
        assert!(
            api.wait_for_watchers(&collection, 1).await,
            "no watch on {collection}"
        );
    }
    let owner = Owner::new(cluster, "node-a");
    let address: ipnetwork::IpNetwork = "198.51.100.7/24".parse().unwrap();
    let wanted = IpAllocation {
        name: allocation_name(address.ip()),
        resource_version: None,
        uid: String::new(),
        pool: "dal10-a".into(),
        pool_uid: "uid-dal10-a".into(),
        zone: "dal10".into(),
        owner: owner.clone(),
        address,
        gateway: "198.51.100.1".parse().unwrap(),
        held_until: None,
    };
    assert!(store.get_allocation(&wanted.name).await.unwrap().is_none());
    let a = store.create_allocation(&wanted).await.unwrap();
    let c = IpClaim {
        name: claim_name(&owner, "dal10"),
        uid: String::new(),
        owner,
        zone: "dal10".into(),
        address: address.ip(),
    };
    assert!(store.get_claim(&c.name).await.unwrap().is_none());
    let c = store.create_claim(&c).await.unwrap();
    store.set_pool_finalizer("dal10-a", true).await.unwrap();
    let held = IpAllocation {
        held_until: Some(SystemTime::now() + Duration::from_secs(600)),
        ..a
    };
    let held = store.replace_allocation(&held).await.unwrap();
    assert!(store.delete_claim(&c.name, &c.uid).await.unwrap());
    assert!(store.delete_allocation(&held).await.unwrap());
    assert!(store.list_allocations().await.unwrap().is_empty());
    assert_eq!(store.list_pools().await.unwrap().len(), 1);
    store.set_pool_finalizer("dal10-a", false).await.unwrap();
    let status = IpPoolStatus {
        size: 252,
        free: 252,
        usage: "0/252".into(),
        ready: true,
        reason: "Ready".into(),
        ..Default::default()
    };
    store.apply_pool_status("dal10-a", &status).await.unwrap();
    watching.abort();
}

fn seed_controller_objects(api: &FakeApiServer) {
    api.put(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "kube-system", "uid": "c0ffee00-0000-4000-8000-000000000001"}}),
    );
    api.put(NODES, node("node-a", "203.0.113.10", Some("dal10")));
    api.put(NODES, node("node-nozone", "203.0.113.12", None));
    api.put(NOIPS, noip("node-gone", "192.0.2.30/24"));
    api.put(
        ROUTES,
        route("new-route", json!({"subnet": "198.51.100.0/24"})),
    );
    let mut leaving = route("leaving-route", json!({"subnet": "198.51.102.0/24"}));
    leaving["metadata"]["finalizers"] = json!([FINALIZER]);
    leaving["metadata"]["deletionTimestamp"] = json!("2026-11-27T12:00:00Z");
    leaving["status"] = json!({"nodeStatus": [{"hostname": "node-gone", "device": "tmp0",
        "gateway": "192.0.2.1", "state": "Applied", "message": ""}]});
    api.put(ROUTES, leaving);
}

/// The leader's reconciles of nodes and StaticRoutes.
async fn reconcile_as_leader(
    api: &FakeApiServer,
    client: &kube::Client,
    cluster: &str,
) -> (Controller, Arc<MemoryBackend>, Arc<dyn EventRecorder>) {
    let events = controller_events(client.clone());
    let invalid = InvalidObjects::new(events.clone());
    let stores = controller_stores(client.clone(), &invalid);
    let routes = stores.routes.clone();
    let ipam = Arc::new(
        MemoryBackend::new(
            &PoolsConfig::new().with_pool("dal10", PoolConfig::parse("192.0.2.0/24").unwrap()),
        )
        .unwrap(),
    );
    let controller = Controller::new(
        ControllerConfig::new(cluster),
        ControllerParts {
            nodes: stores.nodes,
            ipam: ipam.clone(),
            overlay_ips: stores.overlay_ips,
            routes: stores.routes,
        },
    )
    .with_events(events.clone());

    controller.reconcile_node("node-a").await.unwrap();
    assert!(
        api.object(NOIPS, "node-a").unwrap()["status"]["ipAddr"].is_string(),
        "no address recorded"
    );
    // No zone: a Warning Event, and the same again (a PATCH of the series).
    for _ in 0..2 {
        let _ = controller.reconcile_node("node-nozone").await;
    }
    wait_for_request(
        api,
        "a repeated Event",
        "PATCH",
        "/namespaces/default/events",
    )
    .await;

    // The node is gone: delete its NodeOverlayIp; once the deletion shows,
    // release and remove the finalizer.
    controller.reconcile_node("node-gone").await.unwrap();
    for _ in 0..50 {
        let _ = controller.reconcile_node("node-gone").await;
        if api.object(NOIPS, "node-gone").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        api.object(NOIPS, "node-gone").is_none(),
        "the finalizer of node-gone's NodeOverlayIp was not removed"
    );

    // StaticRoutes: a finalizer on the new one; the deleted one's entry of
    // a missing node pruned, then its finalizer removed.
    for r in routes.list().await.unwrap() {
        controller.reconcile_route(&r).await.unwrap();
    }
    assert!(
        api.object(ROUTES, "leaving-route").is_none(),
        "the finalizer of leaving-route was not removed"
    );

    (controller, ipam, events)
}

/// Route summaries, a live read of unknown reservations, and the Events of
/// a phpIPAM block.
async fn summarize_and_report(
    api: &FakeApiServer,
    controller: &Controller,
    ipam: &MemoryBackend,
    events: &Arc<dyn EventRecorder>,
    cluster: &str,
) {
    // node-a's agent reports new-route Applied; the controller sums it up
    // into the StaticRoute's status.
    let mut a = api.object(NOIPS, "node-a").unwrap();
    a["status"]["routes"] = json!([{"route": "new-route", "device": "tmp0",
        "gateway": "192.0.2.1", "state": "Applied", "message": ""}]);
    api.put(NOIPS, a);
    let names: std::collections::BTreeSet<String> = ["new-route".to_owned()].into();
    let mut written = 0;
    for _ in 0..100 {
        written = controller.summarize_routes(&names).await.unwrap();
        if written > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(written, 1, "no route summary written");

    // A reservation whose node this cluster does not know: read live.
    ipam.reserve(
        &Owner::new(cluster, "node-old"),
        &Zone::parse("zone", "dal10").unwrap(),
    )
    .await
    .unwrap();
    let unknown = controller.reservations_of_unknown_nodes().await.unwrap();
    assert_eq!(unknown.len(), 1);

    // phpIPAM blocks the controller's IP, twice.
    for minutes in [5, 10] {
        let block = overlay_ipam::phpipam::Blocked {
            until: SystemTime::now() + Duration::from_secs(60 * minutes),
            message: format!("Your IP has been blocked for {minutes} minutes"),
        };
        events
            .record(ipam_login_blocked_event(
                "overlay-controller-0",
                "overlay-system",
                &block,
            ))
            .await;
    }
    wait_for_request(
        api,
        "a repeated Pod Event",
        "PATCH",
        "/namespaces/overlay-system/events",
    )
    .await;
}
