//! The manifests under `deploy/` as a user would meet them: they parse,
//! they agree with what the binaries read and with what the controller and
//! agent call on the API, the agent is not privileged, RBAC grants exactly
//! what the code calls (checked against the requests the binaries' own
//! stores make to a scripted API server), the admission policy keeps each
//! agent to its own node's fields, and the samples are valid objects.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../overlay-core/tests/support/mod.rs"]
mod support;

#[path = "deploy/admission.rs"]
mod admission;
#[path = "deploy/calls.rs"]
mod calls;
#[path = "deploy/rbac.rs"]
mod rbac;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use overlay_bins::install::InstallOptions;
use overlay_core::crd::{NodeOverlayIp, StaticRoute, static_route_model};
use serde_json::{Value, json};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// One YAML document and the file it came from (relative to `deploy/`).
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document of every YAML file under `deploy/` (multi-document
/// files split on `---`; empty documents skipped).
fn all_docs() -> Vec<Doc> {
    let root = deploy_dir();
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no YAML under {}", root.display());
    let mut docs = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(de)
                .unwrap_or_else(|e| panic!("{rel}: not valid YAML: {e}"));
            if v.is_null() {
                continue;
            }
            let value = serde_json::to_value(&v)
                .unwrap_or_else(|e| panic!("{rel}: not representable as JSON: {e}"));
            docs.push(Doc {
                file: rel.clone(),
                value,
            });
        }
    }
    docs
}

/// `overlayctl install`'s output for `opts`, each document with the file
/// its `# Source:` comment names.
fn install_docs(opts: &InstallOptions) -> Vec<Doc> {
    let text = overlay_bins::install::render(opts).unwrap();
    let mut docs = Vec::new();
    for part in text.split("\n---\n").skip(1) {
        let file = part
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# Source: deploy/"))
            .unwrap_or_else(|| panic!("install: document without `# Source:`:\n{part}"));
        let v: serde_yaml::Value = serde_yaml::from_str(part).unwrap();
        docs.push(Doc {
            file: file.to_owned(),
            value: serde_json::to_value(v).unwrap(),
        });
    }
    docs
}

/// The install options the deploy tests run over, one per IPAM mode (the
/// kubernetes one with sample pools and the legacy component).
fn install_setups() -> Vec<(&'static str, InstallOptions)> {
    use overlay_bins::install::{Ipam, parse_pool, parse_subnet_map};
    vec![
        (
            "overlayctl install --ipam kubernetes --pool ... --legacy-configmap overlay-system/static-routes",
            InstallOptions {
                pools: vec![parse_pool("dal10=192.0.2.0/24,192.0.2.1").unwrap()],
                legacy_configmap: Some(("overlay-system".into(), "static-routes".into())),
                ..Default::default()
            },
        ),
        (
            "overlayctl install --ipam phpipam",
            InstallOptions {
                ipam: Ipam::Phpipam,
                phpipam_url: Some("https://ipam.example.com".into()),
                app_id: Some("iks".into()),
                subnet_map: parse_subnet_map("dal10=7;dal12=8,9").unwrap(),
                ..Default::default()
            },
        ),
        (
            "overlayctl install --ipam embedded",
            InstallOptions {
                ipam: Ipam::Embedded,
                pools: vec![parse_pool("dal10=198.18.0.0/24").unwrap()],
                ..Default::default()
            },
        ),
    ]
}

/// What the checks that apply to both run over: every document under
/// `deploy/`, and `overlayctl install`'s output for each IPAM mode.
fn sources() -> Vec<(&'static str, Vec<Doc>)> {
    let mut out = vec![("deploy/", all_docs())];
    for (name, opts) in install_setups() {
        out.push((name, install_docs(&opts)));
    }
    out
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} under deploy/"))
}

fn kinds<'a>(docs: &'a [Doc], kind: &'a str) -> impl Iterator<Item = &'a Doc> + 'a {
    docs.iter().filter(move |d| d.kind() == kind)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn only_container(workload: &Doc) -> &Value {
    let cs = workload.value["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 1, "{}: one container expected", workload.file);
    &cs[0]
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name} not set"))
}

/// The upper-case words of a binary's `--help`: the environment variables
/// it reads (`[env: NAME=]`, and those named in the text, such as the
/// phpIPAM credentials and NODE_HOSTNAME).
fn help_env_words(bin: &str) -> BTreeSet<String> {
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.len() > 1 && w.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_document_is_a_kubernetes_object_or_a_kustomize_patch() {
    let docs = all_docs();
    for d in &docs {
        if d.value.is_array() {
            // JSON 6902 patches of kustomize components.
            assert!(d.file.starts_with("agent/legacy/"), "{}: a list", d.file);
            continue;
        }
        assert!(
            d.value["apiVersion"].is_string() && !d.kind().is_empty(),
            "{}: apiVersion and kind expected",
            d.file
        );
        if !d.kind().starts_with("Kustomization") && d.kind() != "Component" {
            assert!(
                !d.name().is_empty(),
                "{}: {} without a name",
                d.file,
                d.kind()
            );
        }
    }
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "ConfigMap",
        "Secret",
        "Service",
    ] {
        assert!(kinds(&docs, kind).next().is_some(), "no {kind} in deploy/");
    }
}

#[test]
fn kustomization_lists_existing_files_and_installs_the_components() {
    let docs = all_docs();
    let root = deploy_dir();
    let k = docs
        .iter()
        .find(|d| d.file == "kustomization.yaml")
        .expect("deploy/kustomization.yaml");
    let resources = strs(&k.value["resources"]);
    for r in &resources {
        assert!(root.join(r).exists(), "kustomization lists missing {r}");
    }
    // Installed by `kubectl apply -k deploy/`: everything but the samples,
    // the example Secret and the optional legacy component.
    let installed: BTreeSet<&str> = resources.iter().map(String::as_str).collect();
    for d in &docs {
        let f = d.file.as_str();
        let optional = f.starts_with("samples/")
            || f.starts_with("agent/legacy/")
            || f == "controller/secret-example.yaml"
            || f == "kustomization.yaml";
        if !optional {
            assert!(
                installed.contains(f),
                "{f} is not in deploy/kustomization.yaml"
            );
        }
        assert!(
            !(installed.contains(f) && d.kind() == "Secret"),
            "{f}: kubectl apply -k must not overwrite real credentials with an example Secret"
        );
    }
    // The legacy component's files exist.
    let c = docs
        .iter()
        .find(|d| d.file == "agent/legacy/kustomization.yaml")
        .unwrap();
    assert_eq!(c.kind(), "Component");
    for r in strs(&c.value["resources"]) {
        assert!(root.join("agent/legacy").join(&r).exists(), "{r}");
    }
    for p in c.value["patches"].as_array().unwrap() {
        let path = p["path"].as_str().unwrap();
        assert!(root.join("agent/legacy").join(path).exists(), "{path}");
    }
}

#[test]
fn agent_daemonset_has_host_network_and_only_net_admin() {
    for (source, docs) in sources() {
        eprintln!("checking {source}");
        agent_daemonset_has_host_network_and_only_net_admin_in(&docs);
    }
}

fn agent_daemonset_has_host_network_and_only_net_admin_in(docs: &[Doc]) {
    let docs = docs.to_vec();
    let ds = find(&docs, "DaemonSet", "overlay-agent");
    let pod = &ds.value["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "the agent configures the host's network"
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "the agent must tolerate every taint to run on every node"
    );
    assert_eq!(pod["serviceAccountName"], "overlay-agent");
    let c = only_container(ds);
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "the agent must not be privileged");
    assert_ne!(pod["securityContext"]["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&sc["capabilities"]["add"]), ["NET_ADMIN"]);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(pod.get("hostPID").is_none_or(|v| v == false));
    assert!(pod.get("hostIPC").is_none_or(|v| v == false));
    assert!(
        pod["volumes"].is_null(),
        "the agent needs no host paths: {}",
        pod["volumes"]
    );
    assert_eq!(
        env(c, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    // Host network: the pod IP is the node's; the agent listens there and
    // on 127.0.0.1 (not on every address of the node).
    assert_eq!(
        env(c, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    // Probes on the agent's metrics port (host network: the node's port).
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(c[probe]["httpGet"]["port"], 9877);
    }
    assert!(c["resources"]["requests"].is_object());
    assert!(c["resources"]["limits"]["memory"].is_string());
}

#[test]
fn controller_deployment_runs_locked_down_with_leader_election() {
    for (source, docs) in sources() {
        eprintln!("checking {source}");
        controller_deployment_runs_locked_down_with_leader_election_in(&docs);
    }
}

fn controller_deployment_runs_locked_down_with_leader_election_in(docs: &[Doc]) {
    let docs = docs.to_vec();
    let d = find(&docs, "Deployment", "overlay-controller");
    // Two replicas, but one (recreated) for embedded pools, held in memory.
    let one = d.value["spec"]["strategy"]["type"] == "Recreate";
    assert_eq!(d.value["spec"]["replicas"], if one { 1 } else { 2 });
    let pod = &d.value["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "overlay-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = only_container(d);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null());
    assert_ne!(sc["privileged"], true);
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        assert_eq!(env(c, var)["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
    }
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 8080)
        .expect("port 8080 (the controller's default METRICS_ADDR)");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], port["name"]);

    // The metrics Service selects the controller's pods.
    let svc = find(&docs, "Service", "overlay-controller-metrics");
    let labels = &pod_labels(d);
    for (k, v) in svc.value["spec"]["selector"].as_object().unwrap() {
        assert_eq!(labels.get(k), v.as_str().map(str::to_owned).as_ref(), "{k}");
    }
    assert_eq!(svc.value["spec"]["ports"][0]["port"], 8080);
}

/// The Deployment reads today's ConfigMap and Secret and the original
/// controller's (`overlay-ip-controller-config`, `phpipam-secret`), all
/// optional, where the controller looks for them.
#[test]
fn controller_deployment_reads_todays_and_the_original_config_and_secret() {
    let docs = all_docs();
    let d = find(&docs, "Deployment", "overlay-controller");
    let pod = &d.value["spec"]["template"]["spec"];
    let c = only_container(d);
    // The controller looks for its config at its default path, then at the
    // original controller's mount path: both ConfigMaps are mounted there,
    // optional, and nothing pins one file.
    assert!(
        !env_names(c).iter().any(|n| n == "OVERLAY_CONFIG"),
        "OVERLAY_CONFIG would make the controller read one file only"
    );
    for (path, cm_name, installed) in [
        (
            overlay_ipam::config::DEFAULT_PATH,
            "overlay-ip-config",
            true,
        ),
        (
            overlay_ipam::config::ORIGINAL_PATH,
            "overlay-ip-controller-config",
            false,
        ),
    ] {
        let (dir, file) = path.rsplit_once('/').unwrap();
        let volume = mounted_volume(pod, c, dir);
        assert_eq!(volume["configMap"]["name"], cm_name, "{dir}");
        assert_eq!(volume["configMap"]["optional"], true, "{dir}");
        let shipped = kinds(&docs, "ConfigMap").find(|d| d.name() == cm_name);
        assert_eq!(shipped.is_some(), installed, "{cm_name}");
        if let Some(cm) = shipped {
            assert_eq!(cm.namespace(), d.namespace());
            assert!(
                cm.value["data"][file].is_string(),
                "ConfigMap {cm_name} lacks key {file}"
            );
        }
    }

    // Credentials from the Secret the example shows, key for key.
    let secret = find(&docs, "Secret", "phpipam-credentials");
    assert_eq!(secret.namespace(), d.namespace());
    for var in ["PHPIPAM_USERNAME", "PHPIPAM_PASSWORD"] {
        let r = &env(c, var)["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], "phpipam-credentials");
        assert_eq!(r["optional"], true);
        let key = r["key"].as_str().unwrap();
        assert!(
            secret.value["stringData"][key].is_string(),
            "example Secret lacks {key}"
        );
    }
    // ... and from the original controller's Secret, whose keys are files
    // in the directory the controller reads by default.
    let volume = mounted_volume(pod, c, overlay_ipam::phpipam::DEFAULT_SECRET_DIR);
    assert_eq!(
        volume["secret"]["secretName"],
        overlay_ipam::phpipam::ORIGINAL_SECRET
    );
    assert_eq!(volume["secret"]["optional"], true);
    assert!(
        volume["secret"]["items"].is_null(),
        "keys username and password as files"
    );
}

/// The volume `container` mounts at `dir`, read-only.
fn mounted_volume<'a>(pod: &'a Value, container: &Value, dir: &str) -> &'a Value {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    assert_eq!(mount["readOnly"], true, "{dir}");
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]))
}

fn pod_labels(workload: &Doc) -> BTreeMap<String, String> {
    serde_json::from_value(workload.value["spec"]["template"]["metadata"]["labels"].clone())
        .unwrap()
}

#[test]
fn manifests_set_only_variables_the_binaries_read() {
    for (source, docs) in sources() {
        eprintln!("checking {source}");
        manifests_set_only_variables_the_binaries_read_in(&docs);
    }
}

fn manifests_set_only_variables_the_binaries_read_in(docs: &[Doc]) {
    let docs = docs.to_vec();
    let controller_vars = help_env_words(env!("CARGO_BIN_EXE_overlay-controller"));
    let agent_vars = help_env_words(env!("CARGO_BIN_EXE_overlay-agent"));

    let c = only_container(find(&docs, "Deployment", "overlay-controller"));
    for name in env_names(c) {
        assert!(
            controller_vars.contains(&name),
            "the controller Deployment sets {name}, which overlay-controller does not read"
        );
    }
    let a = only_container(find(&docs, "DaemonSet", "overlay-agent"));
    let mut agent_env = env_names(a);
    // ... including what the legacy component adds.
    for d in docs.iter().filter(|d| d.value.is_array()) {
        for op in d.value.as_array().unwrap() {
            if op["path"]
                .as_str()
                .unwrap()
                .ends_with("/containers/0/env/-")
            {
                agent_env.push(op["value"]["name"].as_str().unwrap().to_owned());
            }
        }
    }
    // deploy/ carries the legacy component (and so does the kubernetes
    // setup of install_setups).
    if docs.iter().any(|d| d.file.starts_with("agent/legacy/")) {
        assert!(agent_env.iter().any(|n| n == "STATIC_ROUTES_CONFIGMAP"));
    }
    for name in agent_env {
        assert!(
            agent_vars.contains(&name),
            "the agent DaemonSet sets {name}, which overlay-agent does not read"
        );
    }
}

/// (apiGroup, resource, resourceNames) → verbs of every rule of a role.
type Grants = BTreeMap<(String, String, Vec<String>), BTreeSet<String>>;

fn grants(role: &Doc) -> Grants {
    let mut g = Grants::new();
    for rule in role.value["rules"].as_array().unwrap() {
        let names = strs(&rule["resourceNames"]);
        for group in strs(&rule["apiGroups"]) {
            for res in strs(&rule["resources"]) {
                g.entry((group.clone(), res, names.clone()))
                    .or_default()
                    .extend(strs(&rule["verbs"]));
            }
        }
    }
    g
}

fn expect(rules: &[(&str, &str, &[&str], &[&str])]) -> Grants {
    rules
        .iter()
        .map(|(g, r, names, verbs)| {
            (
                (
                    g.to_string(),
                    r.to_string(),
                    names.iter().map(|s| s.to_string()).collect(),
                ),
                verbs.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn no_role_grants_wildcards_or_secrets() {
    for (source, docs) in sources() {
        eprintln!("checking {source}");
        no_role_grants_wildcards_or_secrets_in(&docs);
    }
}

fn no_role_grants_wildcards_or_secrets_in(docs: &[Doc]) {
    let docs = docs.to_vec();
    let roles: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "ClusterRole" || d.kind() == "Role")
        .collect();
    assert!(roles.len() >= 5, "{roles:?}");
    for role in roles {
        for rule in role.value["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strs(&rule[field]).iter().any(|s| s.contains('*')),
                    "{} {}: wildcard in {field}",
                    role.kind(),
                    role.name()
                );
            }
            assert!(
                !strs(&rule["resources"]).iter().any(|r| r == "secrets"),
                "{} {} grants access to secrets",
                role.kind(),
                role.name()
            );
            assert!(
                rule["nonResourceURLs"].is_null(),
                "{}: nonResourceURLs",
                role.name()
            );
            for verb in strs(&rule["verbs"]) {
                assert!(
                    !["escalate", "bind", "impersonate", "deletecollection"]
                        .contains(&verb.as_str()),
                    "{}: {verb}",
                    role.name()
                );
            }
        }
    }
}

#[test]
fn controller_rbac_is_exactly_what_it_calls() {
    for (source, docs) in sources() {
        eprintln!("checking {source}");
        controller_rbac_is_exactly_what_it_calls_in(&docs);
    }
}

fn controller_rbac_is_exactly_what_it_calls_in(docs: &[Doc]) {
    let docs = docs.to_vec();
    assert_eq!(
        grants(find(&docs, "ClusterRole", "overlay-controller")),
        expect(&[
            // get: the orphan collection's live read before a release.
            ("", "nodes", &[], &["get", "list", "watch"]),
            // The derived cluster id: the kube-system Namespace UID.
            ("", "namespaces", &["kube-system"], &["get"]),
            (
                "iks.ibm.com",
                "nodeoverlayips",
                &[],
                &["get", "list", "watch", "patch", "delete"]
            ),
            ("iks.ibm.com", "nodeoverlayips/status", &[], &["patch"]),
            (
                "iks.ibm.com",
                "staticroutes",
                &[],
                &["get", "list", "watch", "patch"]
            ),
            ("iks.ibm.com", "staticroutes/status", &[], &["patch"]),
            // Kubernetes-native IPAM: allocations and claims are created,
            // read, deleted (allocations also replaced: a hold-down);
            // pools are read, their finalizer patched, their status
            // applied.
            (
                "iks.ibm.com",
                "overlayipallocations",
                &[],
                &["get", "list", "watch", "create", "update", "delete"]
            ),
            (
                "iks.ibm.com",
                "overlayipclaims",
                &[],
                &["get", "list", "watch", "create", "delete"]
            ),
            (
                "iks.ibm.com",
                "overlayippools",
                &[],
                &["get", "list", "watch", "patch"]
            ),
            ("iks.ibm.com", "overlayippools/status", &[], &["patch"]),
        ])
    );
    // Leader election: the Lease the controller uses by default
    // (--lease-name overlay-controller), in its namespace.
    let lease = find(&docs, "Role", "overlay-controller-leader-election");
    assert_eq!(lease.namespace(), Some("overlay-system"));
    assert_eq!(
        grants(lease),
        expect(&[
            ("coordination.k8s.io", "leases", &[], &["create"]),
            (
                "coordination.k8s.io",
                "leases",
                &["overlay-controller"],
                // update: renewals are replaces guarded by resourceVersion.
                &["get", "update"]
            ),
            // Events on the controller's Pod (IpamLoginBlocked), through
            // kube's recorder: events.k8s.io/v1, like every Event it sends.
            ("events.k8s.io", "events", &[], &["create", "patch"]),
        ])
    );
    // Events of cluster-scoped objects land in `default`.
    let events = find(&docs, "Role", "overlay-controller-events");
    assert_eq!(events.namespace(), Some("default"));
    assert_eq!(
        grants(events),
        expect(&[("events.k8s.io", "events", &[], &["create", "patch"])])
    );
}

#[test]
fn agent_rbac_is_exactly_what_it_calls_and_legacy_is_one_configmap() {
    let docs = all_docs();
    assert_eq!(
        grants(find(&docs, "ClusterRole", "overlay-agent")),
        // Reads through watch-fed caches only (no get); the one write is its
        // own NodeOverlayIp's status, kept to its node and fields by the
        // admission policy; no write to StaticRoutes at all.
        expect(&[
            ("", "nodes", &[], &["list", "watch"]),
            ("iks.ibm.com", "nodeoverlayips", &[], &["list", "watch"]),
            ("iks.ibm.com", "nodeoverlayips/status", &[], &["patch"]),
            ("iks.ibm.com", "staticroutes", &[], &["list", "watch"]),
        ])
    );
    let events = find(&docs, "Role", "overlay-agent-events");
    assert_eq!(events.namespace(), Some("default"));
    assert_eq!(
        grants(events),
        expect(&[("events.k8s.io", "events", &[], &["create", "patch"])])
    );
    let legacy = find(&docs, "Role", "overlay-agent-static-routes");
    for rule in legacy.value["rules"].as_array().unwrap() {
        if strs(&rule["resources"]) == ["configmaps"] {
            assert_eq!(
                strs(&rule["resourceNames"]),
                ["static-routes"],
                "the legacy Role must be limited to ConfigMap static-routes"
            );
        }
    }
    assert_eq!(
        grants(legacy),
        expect(&[
            (
                "",
                "configmaps",
                &["static-routes"],
                &["get", "list", "watch"]
            ),
            ("events.k8s.io", "events", &[], &["create", "patch"]),
        ])
    );
    // The ConfigMap the component points the agent at is the one the Role
    // allows and the sample creates.
    let patch = docs
        .iter()
        .find(|d| d.file == "agent/legacy/daemonset-env.yaml")
        .unwrap();
    let target = patch.value[0]["value"]["value"].as_str().unwrap();
    let (ns, name) = target.split_once('/').unwrap();
    assert_eq!(legacy.namespace(), Some(ns));
    assert_eq!(name, "static-routes");
    let cm = find(&docs, "ConfigMap", name);
    assert_eq!(cm.namespace(), Some(ns));
    let routes =
        overlay_core::legacy::parse_legacy_routes(cm.value["data"]["routes"].as_str().unwrap())
            .unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].to_string(), "192.168.1.0/24");
}

#[test]
fn bindings_point_at_existing_roles_and_service_accounts() {
    for (source, docs) in sources() {
        eprintln!("checking {source}");
        bindings_point_at_existing_roles_and_service_accounts_in(&docs);
    }
}

fn bindings_point_at_existing_roles_and_service_accounts_in(docs: &[Doc]) {
    let docs = docs.to_vec();
    let mut n = 0;
    for b in docs
        .iter()
        .filter(|d| d.kind() == "ClusterRoleBinding" || d.kind() == "RoleBinding")
    {
        n += 1;
        let role_kind = b.value["roleRef"]["kind"].as_str().unwrap();
        let role = find(
            &docs,
            role_kind,
            b.value["roleRef"]["name"].as_str().unwrap(),
        );
        if role_kind == "Role" {
            assert_eq!(role.namespace(), b.namespace(), "{}", b.name());
        }
        for s in b.value["subjects"].as_array().unwrap() {
            assert_eq!(s["kind"], "ServiceAccount");
            let sa = find(&docs, "ServiceAccount", s["name"].as_str().unwrap());
            assert_eq!(sa.namespace(), s["namespace"].as_str(), "{}", b.name());
        }
    }
    assert!(n >= 5);
    for (kind, name) in [
        ("Deployment", "overlay-controller"),
        ("DaemonSet", "overlay-agent"),
    ] {
        let w = find(&docs, kind, name);
        let sa = w.value["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap();
        assert_eq!(find(&docs, "ServiceAccount", sa).namespace(), w.namespace());
        assert_eq!(w.namespace(), Some("overlay-system"));
    }
    find(&docs, "Namespace", "overlay-system");
}

#[test]
fn samples_are_valid_custom_resources() {
    let docs = all_docs();
    let samples: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.file.starts_with("samples/"))
        .collect();
    let mut routes = Vec::new();
    let mut zoned = Vec::new();
    let mut overlay_ips = 0;
    let mut pools = 0;
    for d in &samples {
        match d.kind() {
            "NodeOverlayIp" => {
                let o: NodeOverlayIp = serde_json::from_value(d.value.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", d.file));
                let rec = overlay_core::OverlayIpRecord::from(&o);
                assert!(rec.ip_addr.is_some() && rec.gateway.is_some(), "{}", d.file);
                overlay_ips += 1;
            }
            "StaticRoute" => {
                let r: StaticRoute = serde_json::from_value(d.value.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", d.file));
                let model =
                    static_route_model(&r.spec).unwrap_or_else(|e| panic!("{}: {e}", d.file));
                routes.push(model);
                // As the agents read it: with the zone label of the older
                // agents.
                let rec = overlay_core::StaticRouteRecord::from(&r);
                zoned.extend(
                    overlay_core::crd::route_zone(&r.metadata)
                        .map(|z| (z.to_owned(), rec.spec.clone().unwrap().selector)),
                );
            }
            "OverlayIPPool" => {
                let p: overlay_core::crd::OverlayIPPool = serde_json::from_value(d.value.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", d.file));
                // As the controller judges it: valid, so allocated from.
                let record = overlay_core::ippool::IpPool {
                    name: p.metadata.name.clone().unwrap(),
                    zone: p.spec.zone.clone(),
                    cidr: p.spec.cidr.clone(),
                    gateway: p.spec.gateway.clone(),
                    reserved: p.spec.reserved.clone().unwrap_or_default(),
                    ..Default::default()
                };
                let v = overlay_ipam::kubernetes::pool::ValidPool::check(&record)
                    .unwrap_or_else(|e| panic!("{}: {e}", d.file));
                // 254 hosts, less the gateway, .2 and .240-.254 (.255 is
                // the broadcast address, no host).
                assert_eq!(v.capacity(), 254 - 1 - 1 - 15, "{}", d.file);
                pools += 1;
            }
            "ConfigMap" => {}
            other => panic!("{}: unexpected sample kind {other}", d.file),
        }
    }
    assert_eq!((overlay_ips, pools), (1, 1));
    use overlay_core::GatewayChoice;
    assert!(routes.iter().any(|r| r.gateway == GatewayChoice::Overlay));
    assert!(routes.iter().any(|r| matches!(
        &r.gateway, GatewayChoice::Discover(p) if p.to_string() == "10.0.0.0/8"
    )));
    assert!(
        routes.iter().any(|r| r.table.is_some()
            && r.metric.is_some()
            && !r.selector.matches(&BTreeMap::new()))
    );

    let [(zone, selector)] = zoned.as_slice() else {
        panic!("one sample limited to a zone by its label: {zoned:?}")
    };
    let node = |z: &str| BTreeMap::from([("topology.kubernetes.io/zone".to_owned(), z.to_owned())]);
    assert!(selector.matches(&node(zone)));
    assert!(!selector.matches(&node("another-zone")));

    // The original fixtures, unchanged.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlay-core/tests/fixtures");
    for (sample, fixture) in [
        ("samples/nodeoverlayip.yaml", "nodeoverlayip.yaml"),
        ("samples/staticroute.yaml", "staticroute.yaml"),
    ] {
        let want: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(fixtures.join(fixture)).unwrap())
                .unwrap();
        let got = samples.iter().find(|d| d.file == sample).unwrap();
        assert_eq!(got.value, serde_json::to_value(want).unwrap(), "{sample}");
    }
}

#[test]
fn config_map_holds_a_valid_controller_config() {
    let docs = all_docs();
    let cm = find(&docs, "ConfigMap", "overlay-ip-config");
    let text = cm.value["data"]["overlay-ip-config.yaml"].as_str().unwrap();
    let cfg = overlay_ipam::config::IpamConfig::from_yaml("overlay-ip-config.yaml", text).unwrap();
    // Kubernetes-native pools by default; no shared cluster id.
    assert_eq!(
        cfg.kubernetes,
        Some(overlay_ipam::config::KubernetesConfig {})
    );
    assert_eq!(cfg.cluster_id, None);
    // The phpIPAM alternative the comment shows is a valid config too.
    let raw = std::fs::read_to_string(deploy_dir().join("controller/configmap.yaml")).unwrap();
    let shown: String = raw
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("#   phpIPAM:"))
        .take_while(|l| l.starts_with("#  "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    let alt = overlay_ipam::config::IpamConfig::from_yaml("comment", &shown)
        .unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(alt.php_ipam.unwrap().subnet_map["dal10"], [7]);
}

#[test]
fn the_controller_runs_two_replicas_which_kubernetes_pools_keep_safe() {
    let docs = all_docs();
    let d = find(&docs, "Deployment", "overlay-controller");
    assert_eq!(d.value["spec"]["replicas"], 2);
    assert_ne!(d.value["spec"]["strategy"]["type"], "Recreate");
}

/// `images/Containerfile.<bin>`: the static binary FROM scratch with the CA
/// bundle and rootfs/, run as the user `manifest` declares (named in
/// rootfs/etc/passwd), with the workspace's labels; build.sh builds it.
fn check_containerfile(bin: &str, manifest: &str) {
    use overlay_bins::lab::images::RuntimeSettings;
    let file = format!(
        "images/Containerfile.{}",
        bin.trim_start_matches("overlay-")
    );
    let text = std::fs::read_to_string(deploy_dir().join(&file)).unwrap();
    // The static binary build.sh compiles, FROM scratch: no toolchain,
    // no base image to pull.
    let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from, ["FROM scratch"], "{file}");
    assert!(!text.contains("RUN "), "{file}: FROM scratch has no shell");
    // USER is the user and group the workload runs the container as.
    let settings = RuntimeSettings::from_manifest(
        &std::fs::read_to_string(deploy_dir().join(manifest)).unwrap(),
        manifest,
    )
    .unwrap();
    let user = text
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap_or_else(|| panic!("{file}: no USER"));
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    assert_eq!(
        Some(uid.parse().unwrap()),
        settings.user,
        "{file} USER vs {manifest}"
    );
    if let Some(g) = settings.group {
        assert_eq!(gid.parse::<u32>().unwrap(), g, "{file} USER vs {manifest}");
    }
    for copy in [
        format!("COPY {bin} /usr/local/bin/{bin}"),
        "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt".to_owned(),
        "COPY rootfs/ /".to_owned(),
        format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]"),
    ] {
        assert!(text.contains(&copy), "{file}: lacks `{copy}`");
    }
    for (label, value) in [
        ("title", format!("\"{bin}\"")),
        ("source", format!("\"{}\"", env!("CARGO_PKG_REPOSITORY"))),
        ("licenses", format!("\"{}\"", env!("CARGO_PKG_LICENSE"))),
        ("version", "\"${VERSION}\"".to_owned()),
    ] {
        let line = format!("org.opencontainers.image.{label}={value}");
        assert!(text.contains(&line), "{file}: lacks {line}");
    }
    // The image's user has a name (logs, `ps` on the node).
    let passwd = std::fs::read_to_string(deploy_dir().join("images/rootfs/etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(uid) && l.split(':').nth(3) == Some(gid)),
        "rootfs/etc/passwd has no entry for {user}"
    );
    let build = std::fs::read_to_string(deploy_dir().join("images/build.sh")).unwrap();
    assert!(
        build.contains("--bin overlay-controller --bin overlay-agent")
            && build.contains("target-feature=+crt-static"),
        "build.sh builds both binaries static"
    );
}

#[test]
fn containerfiles_build_the_binaries_the_workloads_run() {
    let docs = all_docs();
    let k = docs
        .iter()
        .find(|d| d.file == "kustomization.yaml")
        .unwrap();
    let images: Vec<String> = k.value["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    use overlay_bins::lab::images::{AGENT_MANIFEST, CONTROLLER_MANIFEST};
    for (kind, workload, bin, manifest) in [
        (
            "Deployment",
            "overlay-controller",
            "overlay-controller",
            CONTROLLER_MANIFEST,
        ),
        (
            "DaemonSet",
            "overlay-agent",
            "overlay-agent",
            AGENT_MANIFEST,
        ),
    ] {
        check_containerfile(bin, manifest);
        let image = only_container(find(&docs, kind, workload))["image"]
            .as_str()
            .unwrap();
        let repo = image.rsplit_once(':').unwrap().0;
        assert!(repo.ends_with(&format!("/{bin}")), "{image}");
        assert!(
            images.iter().any(|i| i == repo),
            "kustomization images: lacks {repo}"
        );
    }
}

// --- RBAC against the API calls the binaries make ---------------------------

/// The documents `kubectl apply -k deploy/` installs, plus those of the
/// component `agent/legacy` with `legacy`.
fn installed_docs(legacy: bool) -> Vec<Doc> {
    let docs = all_docs();
    let k = docs
        .iter()
        .find(|d| d.file == "kustomization.yaml")
        .unwrap();
    let mut files: BTreeSet<String> = strs(&k.value["resources"]).into_iter().collect();
    if legacy {
        let c = docs
            .iter()
            .find(|d| d.file == "agent/legacy/kustomization.yaml")
            .unwrap();
        files.extend(
            strs(&c.value["resources"])
                .into_iter()
                .map(|r| format!("agent/legacy/{r}")),
        );
    }
    docs.into_iter()
        .filter(|d| files.contains(&d.file))
        .collect()
}

fn calls_of(requests: &[(String, String)]) -> BTreeSet<rbac::Call> {
    rbac::calls(requests.iter().map(|(m, u)| (m.as_str(), u.as_str())))
}

/// The agent's writes: its own NodeOverlayIp's status, and Events.
fn assert_agent_writes_only_its_own_status(calls: &BTreeSet<rbac::Call>) {
    for c in calls
        .iter()
        .filter(|c| !matches!(c.verb.as_str(), "get" | "list" | "watch"))
    {
        assert!(
            c.resource == "events"
                || (c.resource == "nodeoverlayips/status"
                    && c.verb == "patch"
                    && c.name.as_deref() == Some(calls::ME)),
            "the agent of {} wrote {c}",
            calls::ME
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rbac_is_exactly_what_the_agent_calls() {
    let run = calls::agent_run(false).await;
    let calls = calls_of(&run.requests);
    let request = admission::noip_request(
        &admission::agent_on(calls::ME),
        "UPDATE",
        calls::ME,
        "status",
    );
    for (source, docs) in installs(false) {
        rbac::assert_exact(
            &format!("overlay-agent ({source})"),
            &calls,
            &rbac::grants_of(&docs, "overlay-system", "overlay-agent"),
        );
        // The status it wrote passes the admission policy.
        let policy = find(&docs, "ValidatingAdmissionPolicy", POLICY);
        assert_eq!(
            admission::Policy::new(&policy.value["spec"]).admit(&request, &run.after, &run.before),
            admission::Decision::Allowed,
            "{source}: the agent's own status write is refused by the admission policy:\nbefore {}\nafter {}",
            run.before,
            run.after
        );
    }
    assert_agent_writes_only_its_own_status(&calls);
}

/// What `kubectl apply -k deploy/` installs (with the component
/// agent/legacy when `legacy`), and each `overlayctl install` setup with
/// (or without) the legacy ConfigMap.
fn installs(legacy: bool) -> Vec<(&'static str, Vec<Doc>)> {
    let mut out = vec![("kubectl apply -k deploy/", installed_docs(legacy))];
    for (name, opts) in install_setups() {
        if opts.legacy_configmap.is_some() == legacy {
            out.push((name, install_docs(&opts)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rbac_with_the_legacy_component_is_exactly_what_the_agent_calls() {
    let run = calls::agent_run(true).await;
    let calls = calls_of(&run.requests);
    for (source, docs) in installs(true) {
        rbac::assert_exact(
            &format!("overlay-agent with agent/legacy ({source})"),
            &calls,
            &rbac::grants_of(&docs, "overlay-system", "overlay-agent"),
        );
    }
    assert_agent_writes_only_its_own_status(&calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_rbac_is_exactly_what_the_controller_calls() {
    let requests = calls::controller_run().await;
    for (source, docs) in installs(false).into_iter().chain(installs(true)) {
        rbac::assert_exact(
            &format!("overlay-controller ({source})"),
            &calls_of(&requests),
            &rbac::grants_of(&docs, "overlay-system", "overlay-controller"),
        );
    }
}

/// Each `overlayctl install` setup's ConfigMap holds a config the
/// controller accepts, for the IPAM asked for.
#[test]
fn install_config_maps_hold_a_valid_config_per_ipam_mode() {
    use overlay_bins::install::Ipam;
    for (source, opts) in install_setups() {
        let docs = install_docs(&opts);
        let cm = find(&docs, "ConfigMap", "overlay-ip-config");
        let text = cm.value["data"]["overlay-ip-config.yaml"].as_str().unwrap();
        let cfg = overlay_ipam::config::IpamConfig::from_yaml("overlay-ip-config.yaml", text)
            .unwrap_or_else(|e| panic!("{source}: {e}"));
        cfg.validate().unwrap_or_else(|e| panic!("{source}: {e}"));
        let modes = (
            cfg.kubernetes.is_some(),
            cfg.php_ipam.is_some(),
            cfg.embedded.is_some(),
        );
        let want = match opts.ipam {
            Ipam::Kubernetes => (true, false, false),
            Ipam::Phpipam => (false, true, false),
            Ipam::Embedded => (false, false, true),
        };
        assert_eq!(modes, want, "{source}");
        // Pools of kubernetes IPAM are valid OverlayIPPools.
        for d in kinds(&docs, "OverlayIPPool") {
            let p: overlay_core::crd::OverlayIPPool =
                serde_json::from_value(d.value.clone()).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(d.file, "samples/overlayippool.yaml");
            assert_eq!(p.spec.zone, "dal10", "{source}");
        }
    }
}

#[test]
fn rbac_attributes_are_read_like_the_api_server_reads_them() {
    let c = rbac::call(
        "GET",
        "/api/v1/nodes?&fieldSelector=metadata.name%3Dnode-a&resourceVersion=0",
    );
    assert_eq!(
        (c.verb.as_str(), c.resource.as_str(), c.name.as_deref()),
        ("list", "nodes", Some("node-a"))
    );
    let c = rbac::call(
        "GET",
        "/api/v1/namespaces/overlay-system/configmaps?&watch=true&fieldSelector=metadata.name%3Dstatic-routes",
    );
    assert_eq!(c.verb, "watch");
    assert_eq!(c.namespace.as_deref(), Some("overlay-system"));
    assert_eq!(c.name.as_deref(), Some("static-routes"));
    let c = rbac::call(
        "PATCH",
        "/apis/iks.ibm.com/v1alpha1/nodeoverlayips/node-b/status?&force=true&fieldManager=overlay-agent",
    );
    assert_eq!(
        (c.group.as_str(), c.resource.as_str(), c.verb.as_str()),
        ("iks.ibm.com", "nodeoverlayips/status", "patch")
    );
    assert_eq!(c.name.as_deref(), Some("node-b"));
    let c = rbac::call("GET", "/api/v1/namespaces/kube-system");
    assert_eq!(
        (c.resource.as_str(), c.verb.as_str(), c.name.as_deref()),
        ("namespaces", "get", Some("kube-system"))
    );
    let c = rbac::call("POST", "/apis/events.k8s.io/v1/namespaces/default/events?");
    assert_eq!(
        (
            c.group.as_str(),
            c.verb.as_str(),
            c.namespace.as_deref(),
            c.name
        ),
        ("events.k8s.io", "create", Some("default"), None)
    );

    // A Role grants in its namespace only; resourceNames never match a
    // create.
    let docs = installed_docs(false);
    let grants = rbac::grants_of(&docs, "overlay-system", "overlay-controller");
    let allowed = |c: &rbac::Call| grants.iter().any(|g| g.allows(c));
    let lease = |verb: &str, name: Option<&str>, ns: &str| rbac::Call {
        group: "coordination.k8s.io".into(),
        resource: "leases".into(),
        verb: verb.into(),
        namespace: Some(ns.into()),
        name: name.map(str::to_owned),
    };
    assert!(allowed(&lease(
        "update",
        Some("overlay-controller"),
        "overlay-system"
    )));
    assert!(!allowed(&lease("update", Some("other"), "overlay-system")));
    assert!(!allowed(&lease(
        "update",
        Some("overlay-controller"),
        "kube-system"
    )));
    assert!(allowed(&lease("create", None, "overlay-system")));
    // The agent may not write StaticRoutes, nor get a NodeOverlayIp.
    let agent = rbac::grants_of(&docs, "overlay-system", "overlay-agent");
    for (resource, verb) in [
        ("staticroutes/status", "patch"),
        ("staticroutes", "patch"),
        ("nodeoverlayips", "patch"),
        ("nodeoverlayips", "get"),
    ] {
        let c = rbac::Call {
            group: "iks.ibm.com".into(),
            resource: resource.into(),
            verb: verb.into(),
            namespace: None,
            name: Some("x".into()),
        };
        assert!(!agent.iter().any(|g| g.allows(&c)), "agent may {c}");
    }
}

// --- The admission policy -----------------------------------------------------

const POLICY: &str = "overlay-agent-node-scoped-writes";

fn agent_policy() -> admission::Policy {
    let docs = installed_docs(false);
    admission::Policy::new(&find(&docs, "ValidatingAdmissionPolicy", POLICY).value["spec"])
}

/// node-a's NodeOverlayIp as the controller wrote it, changed by `f`.
fn noip_with(name: &str, f: impl FnOnce(&mut Value)) -> Value {
    let mut o = calls::noip(name, "192.0.2.20/24");
    f(&mut o);
    o
}

/// A change made to a NodeOverlayIp.
type Change = Box<dyn Fn(&mut Value)>;

fn update_status(user: &admission::User, old: &Value, new: &Value) -> admission::Decision {
    let name = old["metadata"]["name"].as_str().unwrap();
    agent_policy().admit(
        &admission::noip_request(user, "UPDATE", name, "status"),
        new,
        old,
    )
}

/// Everything the agent owns in its status, as it writes it.
fn agent_fields(o: &mut Value) {
    let status = o["status"].as_object_mut().unwrap();
    status.insert("interface".into(), json!("eth0"));
    status.insert("interfaceLabel".into(), json!("tmp0"));
    status.insert(
        "conditions".into(),
        json!([{"type": "Configured", "status": "True", "reason": "AddressConfigured",
            "message": "192.0.2.20/24 on tmp0 (parent eth0)",
            "lastTransitionTime": "2026-11-27T12:00:00Z"}]),
    );
    status.insert(
        "routes".into(),
        json!([{"route": "onprem", "device": "tmp0", "gateway": "192.0.2.1",
            "state": "Applied", "message": ""}]),
    );
    status.insert(
        "gateways".into(),
        json!([{"from": "10.0.0.0/8", "gateway": "10.1.0.1", "device": "eth0"}]),
    );
}

#[test]
fn admission_policy_is_installed_bound_and_fails_closed() {
    let docs = installed_docs(false);
    let policy = find(&docs, "ValidatingAdmissionPolicy", POLICY);
    assert_eq!(policy.file, "agent/admission.yaml");
    assert_eq!(
        policy.value["apiVersion"], "admissionregistration.k8s.io/v1",
        "v1: GA since Kubernetes 1.30"
    );
    let spec = &policy.value["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    let rules = spec["matchConstraints"]["resourceRules"]
        .as_array()
        .unwrap();
    for resource in ["nodeoverlayips/status", "nodeoverlayips"] {
        assert!(
            rules
                .iter()
                .any(|r| strs(&r["apiGroups"]) == ["iks.ibm.com"]
                    && strs(&r["resources"]).contains(&resource.to_owned())
                    && strs(&r["operations"]).contains(&"UPDATE".to_owned())),
            "the policy does not match UPDATE of {resource}"
        );
    }
    for v in spec["validations"].as_array().unwrap() {
        assert!(
            v["message"].is_string() || v["messageExpression"].is_string(),
            "a validation without a message: {v}"
        );
    }
    let binding = find(&docs, "ValidatingAdmissionPolicyBinding", POLICY);
    assert_eq!(
        binding.value["apiVersion"],
        "admissionregistration.k8s.io/v1"
    );
    assert_eq!(binding.value["spec"]["policyName"], POLICY);
    assert_eq!(strs(&binding.value["spec"]["validationActions"]), ["Deny"]);
    // Every expression compiles with CEL's standard library alone.
    let _ = agent_policy();
}

#[test]
fn an_agent_cannot_write_another_nodes_overlay_ip() {
    let node_a = admission::agent_on("node-a");
    let old = noip_with("node-b", |_| {});
    // What a real API server let through without the policy
    // (apiserver-facts.md): node-a's token rewriting node-b's address.
    let new = noip_with("node-b", |o| {
        o["status"]["ipAddr"] = json!("198.51.100.7/1")
    });
    let why = update_status(&node_a, &old, &new).denied();
    assert!(
        why.contains("overlay-agent of node node-a may not write NodeOverlayIp node-b"),
        "{why}"
    );
    // Even fields the agent owns.
    let new = noip_with("node-b", agent_fields);
    assert!(
        update_status(&node_a, &old, &new)
            .denied()
            .contains("node-b")
    );
    // Through the main resource too, should RBAC ever allow it.
    let request = admission::noip_request(&node_a, "UPDATE", "node-b", "");
    assert!(matches!(
        agent_policy().admit(&request, &new, &old),
        admission::Decision::Denied(_)
    ));
}

#[test]
fn an_agent_cannot_change_its_own_address_or_gateway() {
    let me = admission::agent_on("node-a");
    let old = noip_with("node-a", |_| {});
    let cases: [(&str, Change, &str); 5] = [
        (
            "a new address",
            Box::new(|o| o["status"]["ipAddr"] = json!("198.51.100.7/1")),
            "status.ipAddr",
        ),
        (
            "no address",
            Box::new(|o| {
                o["status"].as_object_mut().unwrap().remove("ipAddr");
            }),
            "status.ipAddr",
        ),
        (
            "another gateway",
            Box::new(|o| o["status"]["gateway"] = json!("192.0.2.254")),
            "status.gateway",
        ),
        (
            "no gateway",
            Box::new(|o| {
                o["status"].as_object_mut().unwrap().remove("gateway");
            }),
            "status.gateway",
        ),
        (
            "its own fields and a new address",
            Box::new(|o| {
                agent_fields(o);
                o["status"]["ipAddr"] = json!("192.0.2.99/24");
            }),
            "status.ipAddr",
        ),
    ];
    for (what, change, field) in cases {
        let new = noip_with("node-a", |o| change(o));
        let why = update_status(&me, &old, &new).denied();
        assert!(
            why.contains(&format!("may not change {field} of NodeOverlayIp node-a")),
            "{what}: {why}"
        );
    }
    // Before the controller has recorded an address, the agent may not put
    // one (or a gateway) there either.
    let bare = noip_with("node-a", |o| {
        o.as_object_mut().unwrap().remove("status");
    });
    for field in ["ipAddr", "gateway"] {
        let new = noip_with("node-a", |o| {
            o["status"] = json!({field: "192.0.2.20/24", "interfaceLabel": "tmp0"});
        });
        let why = update_status(&me, &bare, &new).denied();
        assert!(why.contains(&format!("status.{field}")), "{why}");
    }
}

#[test]
fn an_agent_may_write_the_fields_it_owns_on_its_own_node() {
    let me = admission::agent_on("node-a");
    let old = noip_with("node-a", |_| {});
    let new = noip_with("node-a", agent_fields);
    assert_eq!(update_status(&me, &old, &new), admission::Decision::Allowed);
    // And again, changing them (a route failed, another interface).
    let newer = noip_with("node-a", |o| {
        agent_fields(o);
        o["status"]["routes"][0]["state"] = json!("Failed");
        o["status"]["interface"] = json!("bond0");
    });
    assert_eq!(
        update_status(&me, &new, &newer),
        admission::Decision::Allowed
    );
    // Before the controller recorded an address: "waiting for an address".
    let bare = noip_with("node-a", |o| {
        o.as_object_mut().unwrap().remove("status");
    });
    let waiting = noip_with("node-a", |o| {
        o["status"] = json!({"interface": "", "interfaceLabel": "tmp0",
            "conditions": [{"type": "Configured", "status": "False",
                "reason": "WaitingForAddress", "message": "status.ipAddr is not set yet",
                "lastTransitionTime": "2026-11-27T12:00:00Z"}]});
    });
    assert_eq!(
        update_status(&me, &bare, &waiting),
        admission::Decision::Allowed
    );
}

#[test]
fn a_token_without_the_node_name_claim_is_refused() {
    let old = noip_with("node-a", |_| {});
    let new = noip_with("node-a", agent_fields);
    let mut no_pod_binding = admission::service_account("overlay-system", "overlay-agent");
    let mut other_extra = admission::agent_on("node-a");
    other_extra.extra = Some(json!({"authentication.kubernetes.io/pod-name": ["x"]}));
    let mut empty_claim = admission::agent_on("node-a");
    empty_claim.extra = Some(json!({"authentication.kubernetes.io/node-name": []}));
    for (what, user) in [
        ("no extra", &mut no_pod_binding),
        ("extra without the claim", &mut other_extra),
        ("an empty claim", &mut empty_claim),
    ] {
        let why = update_status(user, &old, &new).denied();
        assert!(why.contains("token carries no node name"), "{what}: {why}");
    }
}

#[test]
fn an_agent_cannot_create_delete_or_relabel_overlay_ips() {
    let me = admission::agent_on("node-a");
    let policy = agent_policy();
    let own = noip_with("node-a", |_| {});
    let why = policy
        .admit(
            &admission::noip_request(&me, "CREATE", "node-a", ""),
            &own,
            &Value::Null,
        )
        .denied();
    assert!(why.contains("may not CREATE NodeOverlayIp node-a"), "{why}");
    let why = policy
        .admit(
            &admission::noip_request(&me, "DELETE", "node-a", ""),
            &Value::Null,
            &own,
        )
        .denied();
    assert!(why.contains("may not DELETE NodeOverlayIp node-a"), "{why}");
    let changes: [Change; 4] = [
        Box::new(|o| o["metadata"]["labels"]["zone"] = json!("dal12")),
        Box::new(|o| o["metadata"]["finalizers"] = json!([])),
        Box::new(|o| {
            o["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("ownerReferences");
        }),
        Box::new(|o| {
            o["metadata"].as_object_mut().unwrap().remove("labels");
        }),
    ];
    for change in changes {
        let new = noip_with("node-a", |o| change(o));
        let why = policy
            .admit(
                &admission::noip_request(&me, "UPDATE", "node-a", ""),
                &new,
                &own,
            )
            .denied();
        assert!(
            why.contains("may not change the labels, finalizers or ownerReferences"),
            "{new}: {why}"
        );
    }
}

#[test]
fn only_the_agent_is_held_by_the_admission_policy() {
    let policy = agent_policy();
    let old = noip_with("node-b", |_| {});
    let new = noip_with("node-b", |o| o["status"]["ipAddr"] = json!("192.0.2.99/24"));
    // The controller records addresses; people may fix things by hand.
    let controller = admission::service_account("overlay-system", "overlay-controller");
    let admin = admission::User {
        username: "kubernetes-admin".into(),
        groups: vec![
            "kubeadm:cluster-admins".into(),
            "system:authenticated".into(),
        ],
        extra: None,
    };
    for user in [controller, admin] {
        let request = admission::noip_request(&user, "UPDATE", "node-b", "status");
        assert_eq!(
            policy.admit(&request, &new, &old),
            admission::Decision::NotMatched,
            "{}",
            user.username
        );
    }
    // An agent's request to anything but NodeOverlayIps is RBAC's business.
    let mut request =
        admission::noip_request(&admission::agent_on("node-a"), "UPDATE", "r1", "status");
    request["resource"]["resource"] = json!("staticroutes");
    assert_eq!(
        policy.admit(&request, &new, &old),
        admission::Decision::NotMatched
    );
}
