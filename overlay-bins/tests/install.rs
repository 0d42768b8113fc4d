//! `overlayctl install`: its default output is what `kubectl apply -k
//! deploy/` installs (no drift), it embeds every file the kustomization
//! lists, each option changes what it says, bad options are refused with
//! what to do, and `install --check` reads a cluster's readiness from a
//! scripted API server.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../overlay-core/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use overlay_bins::install::{self, InstallOptions, Ipam, PoolArg};
use serde_json::{Value, json};
use support::apiserver::{FakeApiServer, NODES, POOLS};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(file)).unwrap()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|de| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(de).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kustomization() -> Value {
    yaml_docs(&read("kustomization.yaml")).remove(0)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// kustomize's default (legacy) order, as `kustomize build` and `kubectl
/// apply -k` emit resources (api/resid/gvk.go): these kinds first, webhook
/// configurations last, any other kind in between; then by
/// group_version_kind, namespace, name.
fn kustomize_key(v: &Value) -> (i64, String, String, String) {
    const FIRST: [&str; 22] = [
        "Namespace",
        "ResourceQuota",
        "StorageClass",
        "CustomResourceDefinition",
        "ServiceAccount",
        "PodSecurityPolicy",
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
        "ConfigMap",
        "Secret",
        "Endpoints",
        "Service",
        "LimitRange",
        "PriorityClass",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "Deployment",
        "StatefulSet",
        "CronJob",
        "PodDisruptionBudget",
    ];
    const LAST: [&str; 2] = [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ];
    let kind = v["kind"].as_str().unwrap();
    let rank = match (
        FIRST.iter().position(|k| *k == kind),
        LAST.iter().position(|k| *k == kind),
    ) {
        (Some(i), _) => i as i64 - FIRST.len() as i64,
        (None, Some(i)) => i as i64 + 1,
        (None, None) => 0,
    };
    let api = v["apiVersion"].as_str().unwrap();
    let gv = match api.split_once('/') {
        Some((g, v)) => format!("{g}_{v}"),
        None => format!("~G_{api}"),
    };
    let s = |f: &str| v["metadata"][f].as_str().unwrap_or("").to_owned();
    (rank, format!("{gv}_{kind}"), s("namespace"), s("name"))
}

/// What `kubectl apply -k deploy/` applies, read from the files on disk:
/// the kustomization's resources, images rewritten by its `images:`, in
/// kustomize's order; each with its file.
fn kustomize_build() -> Vec<(String, Value)> {
    let k = kustomization();
    let mut docs = Vec::new();
    for file in strs(&k["resources"]) {
        for v in yaml_docs(&read(&file)) {
            docs.push((file.clone(), v));
        }
    }
    for (_, v) in &mut docs {
        let Some(cs) = v.pointer_mut("/spec/template/spec/containers") else {
            continue;
        };
        for c in cs.as_array_mut().unwrap() {
            let image = c["image"].as_str().unwrap().to_owned();
            let (name, _) = image.rsplit_once(':').unwrap();
            for i in k["images"].as_array().unwrap() {
                if i["name"] == name {
                    c["image"] = json!(format!("{name}:{}", i["newTag"].as_str().unwrap()));
                }
            }
        }
    }
    docs.sort_by_key(|(_, v)| kustomize_key(v));
    docs
}

/// `render`'s text split back into (file of `# Source:`, document).
fn rendered(opts: &InstallOptions) -> Vec<(String, Value)> {
    let text = install::render(opts).unwrap();
    let mut out = Vec::new();
    for part in text.split("\n---\n").skip(1) {
        let source = part
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# Source: deploy/"))
            .unwrap_or_else(|| panic!("document without `# Source:`:\n{part}"));
        let mut docs = yaml_docs(part);
        assert_eq!(docs.len(), 1, "{source}");
        out.push((source.to_owned(), docs.remove(0)));
    }
    out
}

#[test]
fn default_install_is_exactly_what_kubectl_apply_k_installs() {
    let want = kustomize_build();
    let got = rendered(&InstallOptions::default());
    let names = |d: &[(String, Value)]| -> Vec<String> {
        d.iter()
            .map(|(f, v)| format!("{f}: {} {}", v["kind"], v["metadata"]["name"]))
            .collect()
    };
    assert_eq!(names(&got), names(&want), "documents or their order differ");
    for ((file, g), (_, w)) in got.iter().zip(&want) {
        assert_eq!(g, w, "{file}: {} differs from deploy/", w["kind"]);
    }
    // The library's own list agrees.
    let docs = install::documents(&InstallOptions::default()).unwrap();
    assert_eq!(docs.len(), want.len());
}

#[test]
fn install_embeds_every_file_the_kustomization_lists() {
    let listed = strs(&kustomization()["resources"]);
    let embedded: Vec<&str> = install::SOURCES.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        embedded, listed,
        "deploy/kustomization.yaml and overlay_bins::install::SOURCES list different files: add the new file to SOURCES"
    );
    for (file, text) in install::SOURCES {
        assert_eq!(*text, read(file), "{file}");
    }
    let component = yaml_docs(&read("agent/legacy/kustomization.yaml")).remove(0);
    let mut files: Vec<String> = strs(&component["resources"]);
    files.extend(
        component["patches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["path"].as_str().unwrap().to_owned()),
    );
    let legacy: Vec<&str> = install::LEGACY_SOURCES.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        legacy,
        files
            .iter()
            .map(|f| format!("agent/legacy/{f}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        install::LEGACY_COMPONENT,
        read("agent/legacy/kustomization.yaml")
    );
}

#[test]
fn the_default_tag_is_this_release_and_the_kustomization_s() {
    for i in kustomization()["images"].as_array().unwrap() {
        assert_eq!(i["newTag"], env!("CARGO_PKG_VERSION"), "{}", i["name"]);
    }
}

fn all_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| all_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| all_strings(x, out)),
        _ => {}
    }
}

#[test]
fn another_namespace_and_registry_leave_no_trace_of_the_defaults() {
    let opts = InstallOptions {
        namespace: "net-overlay".into(),
        image_repository: "registry.example:5000/mirror/".into(),
        tag: "1.2.3-rc.1".into(),
        legacy_configmap: Some(("kube-system".into(), "static-routes".into())),
        ..Default::default()
    };
    let docs = rendered(&opts);
    let mut strings = Vec::new();
    for (_, v) in &docs {
        all_strings(v, &mut strings);
    }
    assert!(
        !strings.iter().any(|s| s.contains("overlay-system")),
        "{:?}",
        strings.iter().find(|s| s.contains("overlay-system"))
    );
    let find = |kind: &str, name: &str| {
        &docs
            .iter()
            .find(|(_, v)| v["kind"] == kind && v["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .1
    };
    let ds = find("DaemonSet", "overlay-agent");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        "registry.example:5000/mirror/overlay-agent:1.2.3-rc.1"
    );
    assert!(c["env"].as_array().unwrap().contains(
        &json!({"name": "STATIC_ROUTES_CONFIGMAP", "value": "kube-system/static-routes"})
    ));
    assert_eq!(ds["metadata"]["namespace"], "net-overlay");
    let legacy = find("Role", "overlay-agent-static-routes");
    assert_eq!(legacy["metadata"]["namespace"], "kube-system");
    assert_eq!(
        legacy["rules"][0]["resourceNames"],
        json!(["static-routes"])
    );
    let binding = find("RoleBinding", "overlay-agent-static-routes");
    assert_eq!(binding["subjects"][0]["namespace"], "net-overlay");
    // The admission policy holds the agent of this namespace.
    let policy = find(
        "ValidatingAdmissionPolicy",
        "overlay-agent-node-scoped-writes",
    );
    assert!(
        policy["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .contains("'system:serviceaccount:net-overlay:overlay-agent'")
    );
    // Events stay in `default`, where cluster-scoped objects' events go.
    assert_eq!(
        find("Role", "overlay-agent-events")["metadata"]["namespace"],
        "default"
    );
}

fn config_of(opts: &InstallOptions) -> overlay_ipam::config::IpamConfig {
    let docs = rendered(opts);
    let (_, cm) = docs.iter().find(|(_, v)| v["kind"] == "ConfigMap").unwrap();
    overlay_ipam::config::IpamConfig::from_yaml(
        "cm",
        cm["data"]["overlay-ip-config.yaml"].as_str().unwrap(),
    )
    .unwrap()
}

fn phpipam_options() -> InstallOptions {
    InstallOptions {
        ipam: Ipam::Phpipam,
        phpipam_url: Some("https://ipam.example.com".into()),
        app_id: Some("iks".into()),
        subnet_map: install::parse_subnet_map("dal10=7,8;dal12=9").unwrap(),
        cluster_id: Some("cluster-a".into()),
        ..Default::default()
    }
}

fn embedded_options() -> InstallOptions {
    InstallOptions {
        ipam: Ipam::Embedded,
        pools: vec![
            install::parse_pool("dal10=198.18.0.0/24,198.18.0.1").unwrap(),
            install::parse_pool("dal10=198.18.1.0/24").unwrap(),
        ],
        ..Default::default()
    }
}

#[test]
fn each_ipam_mode_configures_the_controller_as_asked() {
    let php = config_of(&phpipam_options());
    let p = php.php_ipam.unwrap();
    assert_eq!(p.url, "https://ipam.example.com");
    assert_eq!(p.app_id, "iks");
    assert_eq!(p.subnet_map["dal10"], [7, 8]);
    assert_eq!(php.cluster_id.as_deref(), Some("cluster-a"));
    let text = install::render(&phpipam_options()).unwrap();
    assert!(text.contains("create secret generic phpipam-credentials"));
    assert!(!text.contains("kind: Secret"), "no credentials printed");

    let emb = config_of(&embedded_options());
    let zones = &emb.embedded.unwrap().zones;
    assert_eq!(zones["dal10"].len(), 2);
    assert_eq!(
        zones["dal10"][0].gateway,
        Some("198.18.0.1".parse().unwrap())
    );
    // One replica, recreated: embedded pools live in one process.
    let docs = rendered(&embedded_options());
    let (_, d) = docs
        .iter()
        .find(|(_, v)| v["kind"] == "Deployment")
        .unwrap();
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    assert!(!docs.iter().any(|(_, v)| v["kind"] == "OverlayIPPool"));

    // Kubernetes: pools as OverlayIPPools, named per zone.
    let opts = InstallOptions {
        pools: vec![
            install::parse_pool("dal10=192.0.2.0/24").unwrap(),
            install::parse_pool("dal10=198.51.100.0/24,198.51.100.1").unwrap(),
            install::parse_pool("DAL_12=203.0.113.0/24").unwrap(),
        ],
        ..Default::default()
    };
    assert_eq!(
        config_of(&opts).kubernetes,
        Some(overlay_ipam::config::KubernetesConfig {})
    );
    let pools: Vec<(String, Value)> = rendered(&opts)
        .into_iter()
        .filter(|(_, v)| v["kind"] == "OverlayIPPool")
        .map(|(f, v)| {
            assert_eq!(f, "samples/overlayippool.yaml");
            (
                v["metadata"]["name"].as_str().unwrap().to_owned(),
                v["spec"].clone(),
            )
        })
        .collect();
    assert_eq!(
        pools,
        [
            (
                "dal10-1".into(),
                json!({"zone": "dal10", "cidr": "192.0.2.0/24"})
            ),
            (
                "dal10-2".into(),
                json!({"zone": "dal10", "cidr": "198.51.100.0/24", "gateway": "198.51.100.1"})
            ),
            (
                "dal-12-1".into(),
                json!({"zone": "DAL_12", "cidr": "203.0.113.0/24"})
            ),
        ]
    );
}

#[test]
fn bad_options_are_refused_with_what_to_do() {
    let cases: Vec<(InstallOptions, &str)> = vec![
        (
            InstallOptions {
                ipam: Ipam::Phpipam,
                ..Default::default()
            },
            "--ipam phpipam needs --phpipam-url",
        ),
        (
            InstallOptions {
                ipam: Ipam::Embedded,
                ..Default::default()
            },
            "needs at least one --pool",
        ),
        (
            InstallOptions {
                app_id: Some("iks".into()),
                ..Default::default()
            },
            "are for --ipam phpipam",
        ),
        (
            InstallOptions {
                pools: vec![PoolArg {
                    zone: "dal10".into(),
                    cidr: "192.0.2.1/24".into(),
                    gateway: None,
                }],
                ..Default::default()
            },
            "--pool dal10=192.0.2.1/24",
        ),
        (
            InstallOptions {
                pools: vec![install::parse_pool("dal10=192.0.2.0/24,198.51.100.1").unwrap()],
                ..Default::default()
            },
            "gateway",
        ),
        (
            InstallOptions {
                namespace: "Overlay_System".into(),
                ..Default::default()
            },
            "--namespace",
        ),
        (
            InstallOptions {
                tag: "-x".into(),
                ..Default::default()
            },
            "--tag",
        ),
        (
            InstallOptions {
                phpipam_url: Some("ftp://ipam".into()),
                ..phpipam_options()
            },
            "the controller would refuse this config",
        ),
    ];
    for (opts, want) in cases {
        let e = install::render(&opts).unwrap_err().0;
        assert!(e.contains(want), "want {want:?} in: {e}");
    }
}

// --- install --check ---------------------------------------------------------

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const VAPS: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies";

fn node(name: &str, zone: Option<&str>) -> Value {
    let labels = zone.map_or(json!({}), |z| json!({"topology.kubernetes.io/zone": z}));
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
}

fn pool(name: &str, zone: &str, disabled: bool) -> Value {
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "OverlayIPPool",
        "metadata": {"name": name}, "spec": {"zone": zone, "cidr": "192.0.2.0/24", "disabled": disabled}})
}

/// A cluster where overlay can run: our CRDs, two zones with a pool each.
fn ready_cluster(api: &FakeApiServer) {
    for (_, yaml) in overlay_core::crd::crds_yaml().unwrap() {
        api.put(CRDS, serde_yaml::from_str(&yaml).unwrap());
    }
    api.put(NODES, node("node-a", Some("dal10")));
    api.put(
        NODES,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b",
            "labels": {"failure-domain.beta.kubernetes.io/zone": "dal12"}}}),
    );
    api.put(POOLS, pool("dal10-1", "dal10", false));
    api.put(POOLS, pool("dal12-1", "dal12", false));
}

fn failed(r: &install::Readiness) -> Vec<(&'static str, String)> {
    r.checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| (c.name, c.detail.clone()))
        .collect()
}

#[tokio::test]
async fn check_passes_on_a_ready_cluster() {
    let (api, client) = FakeApiServer::start();
    ready_cluster(&api);
    let r = install::check(&client, Ipam::Kubernetes).await;
    assert!(r.ready(), "{r}");
    assert_eq!(r.checks.len(), 5);
    assert!(r.to_string().contains("ready: the cluster can run overlay"));
    // Read-only.
    assert_eq!(api.writes(), 0);
}

#[tokio::test]
async fn check_names_each_thing_a_cluster_lacks() {
    let (api, client) = FakeApiServer::start();
    ready_cluster(&api);
    api.set_minor_version("29");
    api.remove_object(CRDS, "staticroutes.iks.ibm.com");
    let mut stale = api.object(CRDS, "overlayipclaims.iks.ibm.com").unwrap();
    stale["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = json!({"type": "object"});
    api.put(CRDS, stale);
    api.serve_collection(VAPS, false);
    api.put(NODES, node("node-c", None));
    api.put(NODES, node("node-d", Some("dal13")));
    api.put(POOLS, pool("dal12-1", "dal12", true));
    let r = install::check(&client, Ipam::Kubernetes).await;
    assert!(!r.ready());
    let f = failed(&r);
    let names: Vec<&str> = f.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "server version",
            "CRDs",
            "admission policies",
            "node zones",
            "pools"
        ]
    );
    let detail = |n: &str| &f.iter().find(|(x, _)| *x == n).unwrap().1;
    assert!(detail("server version").contains("1.29"), "{f:?}");
    assert!(detail("server version").contains("1.30 or later"));
    assert!(detail("CRDs").contains("missing: staticroutes.iks.ibm.com"));
    assert!(detail("CRDs").contains("different from this overlayctl's"));
    assert!(detail("CRDs").contains("overlayipclaims.iks.ibm.com"));
    assert!(detail("admission policies").contains("not served"));
    assert!(detail("node zones").contains("node-c"));
    assert!(detail("node zones").contains("kubectl label node"));
    // dal12's only pool is disabled, dal13 has none.
    assert!(detail("pools").contains("zone(s) dal12, dal13"), "{f:?}");
    assert!(r.to_string().contains("not ready"));

    // Pools are not asked about with phpIPAM.
    let r = install::check(&client, Ipam::Phpipam).await;
    assert!(!r.checks.iter().any(|c| c.name == "pools"));
}

#[test]
fn uninstall_releases_routes_before_the_programs_go_and_drops_crds_last() {
    let steps = install::uninstall_steps("net-overlay");
    // Commands in the order a user runs them.
    let commands: Vec<&String> = steps.iter().flat_map(|s| &s.commands).collect();
    let at = |needle: &str| {
        commands
            .iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no step runs {needle}"))
    };
    assert!(at("delete staticroutes") < at("delete daemonset overlay-agent"));
    assert!(at("delete daemonset overlay-agent") < at("delete deployment overlay-controller"));
    assert!(at("delete deployment overlay-controller") < at("delete nodeoverlayips"));
    assert!(at("delete nodeoverlayips") < at("delete clusterrole "));
    assert!(at("delete clusterrole ") < at("delete namespace net-overlay"));
    assert!(at("delete namespace") < at("delete crd"));
    let crd_step = steps.last().unwrap();
    for (name, _) in overlay_core::crd::crds_yaml().unwrap() {
        assert!(
            crd_step.commands.iter().any(|c| c.contains(&name)),
            "{name}"
        );
    }
    for s in &steps {
        assert!(!s.why.is_empty(), "{}", s.title);
        assert!(
            !s.commands.iter().any(|c| c.contains("overlay-system")),
            "{}",
            s.title
        );
    }
}
