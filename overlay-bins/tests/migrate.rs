//! `overlayctl migrate plan` and `apply` against a scripted API server
//! holding what the Go controller and the static-routes DaemonSet leave in
//! a cluster, and the phpIPAM emulator holding the Go controller's
//! entries: what is adopted, what conflicts, the refusal while the original
//! runs, idempotence, and the plan shown in docs/MIGRATION.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../overlay-core/tests/support/mod.rs"]
mod support;

use std::path::Path;

use overlay_bins::migrate::{self, GatherOptions, MigrationPlan, OriginalController, RecordAction};
use overlay_core::{Adoption, IpamBackend, Owner};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, SubnetSpec};
use overlay_ipam::phpipam::{Credentials, PhpIpamBackend, PhpIpamConfig, Secret};
use serde_json::{Value, json};
use support::apiserver::{FakeApiServer, NODES, NOIPS, ROUTES, configmaps};

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const PODS: &str = "/api/v1/namespaces/default/pods";
const CLUSTER: &str = "cluster-a";

/// A NodeOverlayIp as the Go controller leaves it.
fn original_record(node: &str, address: &str) -> Value {
    json!({
        "apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
        "metadata": {"name": node, "labels": {"node": node, "region": "us-south", "zone": "dal10"},
                     "finalizers": ["finalizer.iks.ibm.com"]},
        "spec": {},
        "status": {"ipAddr": address, "gateway": "192.0.2.1"}
    })
}

/// The original's CRDs: installed by `kubectl create`, another schema.
fn original_crd(name: &str) -> Value {
    let (plural, kind) = name.split_once('.').map(|(p, _)| (p, p)).unwrap();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": "iks.ibm.com", "scope": "Cluster",
                 "names": {"plural": plural, "kind": kind},
                 "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                 "x-kubernetes-preserve-unknown-fields": true}}}]}
    })
}

/// The cluster as the originals leave it, with the original controller
/// still running.
fn seed_cluster(api: &FakeApiServer) {
    for crd in ["nodeoverlayips.iks.ibm.com", "staticroutes.iks.ibm.com"] {
        api.put(CRDS, original_crd(crd));
    }
    for node in ["node-1", "node-2", "node-3"] {
        api.put(
            NODES,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
        );
    }
    api.put(NOIPS, original_record("node-1", "192.0.2.10/24"));
    api.put(NOIPS, original_record("node-2", "192.0.2.11/24"));
    api.put(NOIPS, original_record("node-3", "192.0.2.12/24"));
    api.put(ROUTES, json!({
        "apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
        "metadata": {"name": "onprem-dal10", "labels": {"failure-domain.beta.kubernetes.io/zone": "dal10"},
                     "finalizers": ["finalizer.iks.ibm.com"]},
        "spec": {"subnet": "203.0.113.0/24"}
    }));
    api.put(&configmaps("default"), json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "static-routes", "namespace": "default"},
        "data": {"routes": "[\"198.51.100.0/24\", \"198.51.100.7\", \"not-a-subnet\"]"}
    }));
    api.put(
        DEPLOYMENTS,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "overlay-network-controller", "namespace": "default"},
            "spec": {"replicas": 1, "selector": {}, "template": {}}
        }),
    );
    api.put(
        PODS,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "overlay-network-controller-5d9f", "namespace": "default"}
        }),
    );
    api.put(&configmaps("default"), json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "iks-overlay-ip-controller-lock", "namespace": "default",
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
                                          "name": "overlay-network-controller-5d9f", "uid": "u1"}]}
    }));
}

/// phpIPAM as the Go controller leaves it: node-1's entry (owner only),
/// node-2's address held for another node, node-3's not in phpIPAM.
async fn seed_ipam() -> (Emulator, PhpIpamBackend) {
    let ecfg = EmulatorConfig {
        subnets: vec![SubnetSpec {
            id: 7,
            network: "192.0.2.0".parse().unwrap(),
            mask: 24,
            description: "dal10".into(),
            gateway: Some("192.0.2.1".parse().unwrap()),
        }],
        ..Default::default()
    };
    let (user, password) = ecfg.users[0].clone();
    let emu = Emulator::start(ecfg).await.unwrap();
    emu.seed_original_entry(7, "192.0.2.10".parse().unwrap(), "node-1")
        .unwrap();
    emu.seed_original_entry(7, "192.0.2.11".parse().unwrap(), "node-9")
        .unwrap();
    let cfg = PhpIpamConfig::new(emu.url(), "overlay").with_zone("dal10", [7]);
    let creds = Credentials::User {
        username: user,
        password: Secret::new(&password),
    };
    let backend = PhpIpamBackend::new(&cfg, CLUSTER, creds).unwrap();
    (emu, backend)
}

fn options() -> GatherOptions {
    GatherOptions {
        original: OriginalController::default(),
        legacy_configmap: Some(("default".into(), "static-routes".into())),
    }
}

async fn make_plan(client: &kube::Client, ipam: &dyn IpamBackend) -> MigrationPlan {
    let facts = migrate::gather(client, &options()).await.unwrap();
    let found = migrate::inspect_records(ipam, CLUSTER, &facts.records).await;
    migrate::plan(
        &OriginalController::default(),
        &facts,
        &found,
        Some(CLUSTER),
    )
}

fn action(plan: &MigrationPlan, node: &str) -> RecordAction {
    plan.records
        .iter()
        .find(|r| r.node == node)
        .unwrap()
        .action
        .clone()
}

#[tokio::test]
async fn plan_says_what_is_adopted_what_conflicts_and_the_order() {
    let (api, client) = FakeApiServer::start();
    seed_cluster(&api);
    let (emu, ipam) = seed_ipam().await;
    let plan = make_plan(&client, &ipam).await;
    let text = plan.render();
    println!("{text}");
    assert_eq!(action(&plan, "node-1"), RecordAction::Adopt, "{text}");
    assert_eq!(action(&plan, "node-2"), RecordAction::Conflict, "{text}");
    assert_eq!(action(&plan, "node-3"), RecordAction::NotInIpam, "{text}");
    let running = plan.original_running.clone().unwrap();
    assert!(
        running.contains("1 replica") && running.contains("overlay-network-controller-5d9f"),
        "{running}"
    );
    // The originals' two kinds are there (theirs); the IPAM kinds are new.
    let states: Vec<(&str, &str)> = plan
        .crds
        .iter()
        .map(|c| (c.name.as_str(), c.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("nodeoverlayips.iks.ibm.com", "different"),
            ("staticroutes.iks.ibm.com", "different"),
            ("overlayippools.iks.ibm.com", "missing"),
            ("overlayipallocations.iks.ibm.com", "missing"),
            ("overlayipclaims.iks.ibm.com", "missing"),
        ],
        "{text}"
    );
    assert_eq!(plan.static_routes[0].zone.as_deref(), Some("dal10"));
    let legacy = plan.legacy.clone().unwrap();
    assert_eq!(
        legacy.routes,
        ["198.51.100.0/24", "198.51.100.7/32"],
        "{text}"
    );
    assert_eq!(legacy.problems.len(), 1, "{text}");
    assert_eq!(
        plan.conflicts.len(),
        3,
        "node-2, node-3, the bad entry:\n{text}"
    );
    assert!(!plan.steps[0].done, "the original still runs");
    // It changed nothing: no write to the cluster, none to phpIPAM.
    assert_eq!(api.writes(), 0);
    let entry = emu
        .addresses(7)
        .into_iter()
        .find(|a| a.ip.to_string() == "192.0.2.10");
    assert_eq!(entry.unwrap().description.as_deref(), Some("API created"));
    // JSON carries the same.
    let j = serde_json::to_value(&plan).unwrap();
    assert_eq!(j["records"][0]["action"], "adopt");
    // The plan shown in docs/MIGRATION.md is this one.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/MIGRATION.md"))
            .unwrap();
    assert!(
        doc.contains(&format!(
            "```text\n$ overlayctl migrate plan --config overlay-ip-config.yaml\n{text}```"
        )),
        "docs/MIGRATION.md shows another plan; replace its block with:\n{text}"
    );
}

#[tokio::test]
async fn apply_refuses_while_the_original_runs_then_adopts_once() {
    let (api, client) = FakeApiServer::start();
    seed_cluster(&api);
    let (emu, ipam) = seed_ipam().await;
    let plan = make_plan(&client, &ipam).await;
    let e = migrate::apply(&client, &plan, Some((&ipam, CLUSTER)))
        .await
        .unwrap_err();
    assert!(
        e.contains("scale deployment overlay-network-controller --replicas=0"),
        "{e}"
    );
    assert_eq!(api.writes(), 0, "a refusal changes nothing");

    // The original is stopped: no replicas, its lock Pod gone.
    let mut d = api
        .object(DEPLOYMENTS, "overlay-network-controller")
        .unwrap();
    d["spec"]["replicas"] = json!(0);
    api.put(DEPLOYMENTS, d);
    api.remove_object(PODS, "overlay-network-controller-5d9f");
    let plan = make_plan(&client, &ipam).await;
    assert!(plan.original_running.is_none(), "{}", plan.render());
    let done = migrate::apply(&client, &plan, Some((&ipam, CLUSTER)))
        .await
        .unwrap();
    println!("{}", done.render());
    let crd = api.object(CRDS, "nodeoverlayips.iks.ibm.com").unwrap();
    assert!(
        crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/status")
            .is_some(),
        "overlay's schema applied: {crd}"
    );
    let owner = Owner::new(CLUSTER, "node-1".to_owned());
    let held = ipam
        .inspect_adoption(&owner, "192.0.2.10/24".parse().unwrap())
        .await
        .unwrap();
    assert!(matches!(held, Adoption::Ours { .. }), "{held:?}");
    let foreign = emu
        .addresses(7)
        .into_iter()
        .find(|a| a.ip.to_string() == "192.0.2.11")
        .unwrap();
    assert_eq!(
        foreign.owner.as_deref(),
        Some("node-9"),
        "a conflict is left alone"
    );
    assert_eq!(foreign.description.as_deref(), Some("API created"));

    // Again: nothing left to do, nothing written.
    let plan = make_plan(&client, &ipam).await;
    assert_eq!(action(&plan, "node-1"), RecordAction::AlreadyOurs);
    assert!(
        plan.crds.iter().all(|c| c.state == "current"),
        "{}",
        plan.render()
    );
    let writes = api.writes();
    let patches = emu.count("PATCH /addresses/{}/");
    let again = migrate::apply(&client, &plan, Some((&ipam, CLUSTER)))
        .await
        .unwrap();
    assert_eq!(api.writes(), writes, "{}", again.render());
    assert_eq!(emu.count("PATCH /addresses/{}/"), patches);
}

/// The kernel of node-1 as the Go controller's network pod leaves it, and
/// a foreign route beside.
fn leave_as_the_network_pod(ns: &overlay_testbed::Netns) {
    for args in [
        &["link", "add", "tmp0", "link", "eth0", "type", "macvlan"][..],
        &["addr", "add", "192.0.2.10/24", "dev", "tmp0"],
        &["link", "set", "tmp0", "up"],
        &[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "tmp0",
        ],
        &[
            "route",
            "add",
            "198.19.0.0/24",
            "via",
            "198.51.100.1",
            "dev",
            "eth0",
        ],
    ] {
        ns.ip(args).unwrap();
    }
}

/// node-1, its NodeOverlayIp as the Go controller left it, two
/// StaticRoutes.
fn node_1_objects() -> (FakeApiServer, kube::Client) {
    let (api, client) = FakeApiServer::start();
    api.put(NODES, json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1", "uid": "u-1", "labels": {"topology.kubernetes.io/zone": "dal10"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.10"}]}
    }));
    api.put(NOIPS, original_record("node-1", "192.0.2.10/24"));
    for (name, subnet) in [("onprem", "203.0.113.0/24"), ("other", "198.19.0.0/24")] {
        api.put(
            ROUTES,
            json!({
                "apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
                "metadata": {"name": name}, "spec": {"subnet": subnet}
            }),
        );
    }
    (api, client)
}

/// `migrate plan --node`: a node left by the Go controller's network pod
/// (macvlan tmp0, its address, a `proto boot` route) previewed through the
/// agent's own planning over the node's objects: the link and the route
/// would be adopted, a foreign route is a conflict, and the kernel is
/// exactly as it was.
#[tokio::test]
async fn node_preview_sees_the_kernel_through_the_agent_and_writes_nothing() {
    if !overlay_testbed::privileged("node_preview_sees_the_kernel_through_the_agent") {
        return;
    }
    let bed = overlay_testbed::NodeWithGateway::new(
        "migrate-preview",
        &["198.51.100.10/24"],
        &["198.51.100.1/24", "192.0.2.1/24"],
    )
    .unwrap();
    let ns = &bed.node;
    leave_as_the_network_pod(ns);
    let kernel = || {
        let links = ns.ip(&["-d", "link", "show"]).unwrap().stdout;
        let routes = ns.ip(&["route", "show", "table", "all"]).unwrap().stdout;
        let addrs = ns.ip(&["addr", "show"]).unwrap().stdout;
        (links, routes, addrs)
    };
    let before = kernel();

    let (api, client) = node_1_objects();
    let opts = migrate::NodePreviewOptions {
        node: "node-1".into(),
        interface: None,
        interface_label: "tmp0".into(),
        legacy_configmap: None,
        netns: Some(ns.path()),
    };
    let preview = migrate::node_preview(&client, &opts).await.unwrap();
    let lines: Vec<String> = preview["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    let text = lines.join("\n");
    println!("{text}");
    assert_eq!(preview["interface"]["action"], "adopt", "{text}");
    let action = |dest: &str| {
        preview["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"]["destination"] == dest)
            .unwrap_or_else(|| panic!("no route {dest}: {preview}"))["action"]
            .clone()
    };
    assert_eq!(action("203.0.113.0/24"), "adopt", "{text}");
    assert_eq!(
        action("198.19.0.0/24"),
        "conflict",
        "via another gateway and device:\n{text}"
    );
    assert_eq!(kernel(), before, "the preview wrote to the kernel");
    assert_eq!(api.writes(), 0, "the preview wrote to the cluster");
}
