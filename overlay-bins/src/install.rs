//! `overlayctl install`: the manifests of `deploy/` for one setup, as one
//! multi-document YAML stream for `kubectl apply -f -`.
//!
//! Built from the very files `deploy/kustomization.yaml` lists (embedded
//! with `include_str!`), transformed the way kustomize would (images) and
//! for the chosen options (namespace, the controller's config, sample
//! pools), so `deploy/` and `overlayctl install` cannot drift apart. Each
//! document is preceded by `# Source: deploy/<file>`.
//!
//! [`check`] tells whether a cluster is ready for the install;
//! [`uninstall_steps`] lists what to delete, addresses first.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};

mod check;
mod uninstall;

pub use check::{Check, Readiness, check};
pub use uninstall::{UninstallStep, uninstall_steps};

/// The namespace `deploy/` installs into.
pub const DEPLOY_NAMESPACE: &str = "overlay-system";

/// The default image repository (kustomization's `images:` names live
/// there).
pub const DEFAULT_REPOSITORY: &str = "ghcr.io/overlay-project";

/// `deploy/kustomization.yaml`.
pub const KUSTOMIZATION: &str = include_str!("../../deploy/kustomization.yaml");

/// Every file `deploy/kustomization.yaml` lists under `resources:`, in
/// its order, with its text. A test compares this list with the
/// kustomization's.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../deploy/namespace.yaml"),
    ),
    (
        "crds/nodeoverlayips.iks.ibm.com.yaml",
        include_str!("../../deploy/crds/nodeoverlayips.iks.ibm.com.yaml"),
    ),
    (
        "crds/staticroutes.iks.ibm.com.yaml",
        include_str!("../../deploy/crds/staticroutes.iks.ibm.com.yaml"),
    ),
    (
        "crds/overlayippools.iks.ibm.com.yaml",
        include_str!("../../deploy/crds/overlayippools.iks.ibm.com.yaml"),
    ),
    (
        "crds/overlayipallocations.iks.ibm.com.yaml",
        include_str!("../../deploy/crds/overlayipallocations.iks.ibm.com.yaml"),
    ),
    (
        "crds/overlayipclaims.iks.ibm.com.yaml",
        include_str!("../../deploy/crds/overlayipclaims.iks.ibm.com.yaml"),
    ),
    (
        "controller/rbac.yaml",
        include_str!("../../deploy/controller/rbac.yaml"),
    ),
    (
        "controller/configmap.yaml",
        include_str!("../../deploy/controller/configmap.yaml"),
    ),
    (
        "controller/deployment.yaml",
        include_str!("../../deploy/controller/deployment.yaml"),
    ),
    (
        "agent/rbac.yaml",
        include_str!("../../deploy/agent/rbac.yaml"),
    ),
    (
        "agent/admission.yaml",
        include_str!("../../deploy/agent/admission.yaml"),
    ),
    (
        "agent/daemonset.yaml",
        include_str!("../../deploy/agent/daemonset.yaml"),
    ),
];

/// The component `deploy/agent/legacy`: its kustomization, and the files
/// it lists (resources and patches), by path under `deploy/`.
pub const LEGACY_COMPONENT: &str = include_str!("../../deploy/agent/legacy/kustomization.yaml");

/// The files of [`LEGACY_COMPONENT`].
pub const LEGACY_SOURCES: &[(&str, &str)] = &[
    (
        "agent/legacy/rbac.yaml",
        include_str!("../../deploy/agent/legacy/rbac.yaml"),
    ),
    (
        "agent/legacy/daemonset-env.yaml",
        include_str!("../../deploy/agent/legacy/daemonset-env.yaml"),
    ),
];

/// The ConfigMap key of the controller's config.
const CONFIG_KEY: &str = "overlay-ip-config.yaml";

/// Where the controller's addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ipam {
    /// Kubernetes-native pools (OverlayIPPool objects): nothing else to
    /// run, safe with both controller replicas.
    #[default]
    Kubernetes,
    /// An external phpIPAM server (--phpipam-url, --app-id,
    /// --subnet-map); credentials from a Secret you create.
    Phpipam,
    /// Pools in the controller's config (--pool), held in memory by one
    /// controller replica.
    Embedded,
}

/// A `--pool zone=cidr[,gateway]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolArg {
    /// The zone whose nodes get addresses from the pool.
    pub zone: String,
    /// The pool's prefix.
    pub cidr: String,
    /// The gateway (default: the first host address).
    pub gateway: Option<String>,
}

/// What `overlayctl install` renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// The IPAM.
    pub ipam: Ipam,
    /// phpIPAM's base URL (phpipam).
    pub phpipam_url: Option<String>,
    /// phpIPAM API app id (phpipam).
    pub app_id: Option<String>,
    /// Zone → phpIPAM subnet ids (phpipam).
    pub subnet_map: BTreeMap<String, Vec<u64>>,
    /// Pools: OverlayIPPool objects (kubernetes) or the config's zones
    /// (embedded).
    pub pools: Vec<PoolArg>,
    /// `clusterId` of the config (default: derived by the controller).
    pub cluster_id: Option<String>,
    /// The legacy static-routes ConfigMap (`NAMESPACE`, `NAME`): enables
    /// the component `agent/legacy`.
    pub legacy_configmap: Option<(String, String)>,
    /// Image repository (without the image name).
    pub image_repository: String,
    /// Image tag.
    pub tag: String,
    /// Namespace of the controller, the agent and their config.
    pub namespace: String,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            ipam: Ipam::Kubernetes,
            phpipam_url: None,
            app_id: None,
            subnet_map: BTreeMap::new(),
            pools: Vec::new(),
            cluster_id: None,
            legacy_configmap: None,
            image_repository: DEFAULT_REPOSITORY.to_owned(),
            tag: env!("CARGO_PKG_VERSION").to_owned(),
            namespace: DEPLOY_NAMESPACE.to_owned(),
        }
    }
}

/// Invalid options (or, never expected, a source file that does not
/// parse): what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallError(pub String);

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InstallError {}

fn err<T>(msg: impl Into<String>) -> Result<T, InstallError> {
    Err(InstallError(msg.into()))
}

/// Parses `--subnet-map`: `zone=id,id;zone=id`.
pub fn parse_subnet_map(text: &str) -> Result<BTreeMap<String, Vec<u64>>, InstallError> {
    let mut map = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((zone, ids)) = part.split_once('=') else {
            return err(format!(
                "--subnet-map {part:?}: expected ZONE=ID[,ID...] (zones separated by `;`), e.g. dal10=7,8;dal12=9"
            ));
        };
        let zone = zone.trim();
        check_zone("--subnet-map", zone)?;
        let ids: Result<Vec<u64>, _> = ids.split(',').map(|i| i.trim().parse::<u64>()).collect();
        let ids = match ids {
            Ok(ids) if !ids.is_empty() => ids,
            _ => {
                return err(format!(
                    "--subnet-map {part:?}: subnet ids must be phpIPAM's numeric subnet ids, separated by `,`"
                ));
            }
        };
        if map.insert(zone.to_owned(), ids).is_some() {
            return err(format!(
                "--subnet-map names zone {zone} twice: list all its subnet ids once, e.g. {zone}=7,8"
            ));
        }
    }
    if map.is_empty() {
        return err("--subnet-map is empty: give ZONE=ID[,ID...] for each zone, e.g. dal10=7");
    }
    Ok(map)
}

/// Parses `--pool zone=cidr[,gateway]`.
pub fn parse_pool(text: &str) -> Result<PoolArg, InstallError> {
    let Some((zone, rest)) = text.split_once('=') else {
        return err(format!(
            "--pool {text:?}: expected ZONE=CIDR[,GATEWAY], e.g. dal10=192.0.2.0/24 or dal10=192.0.2.0/24,192.0.2.1"
        ));
    };
    let zone = zone.trim();
    check_zone("--pool", zone)?;
    let (cidr, gateway) = match rest.split_once(',') {
        Some((c, g)) => (c.trim(), Some(g.trim().to_owned())),
        None => (rest.trim(), None),
    };
    Ok(PoolArg {
        zone: zone.to_owned(),
        cidr: cidr.to_owned(),
        gateway,
    })
}

/// Parses `--legacy-configmap NAMESPACE/NAME`.
pub fn parse_legacy_configmap(text: &str) -> Result<(String, String), InstallError> {
    match text.split_once('/') {
        Some((ns, name)) if dns_label(ns) && dns_subdomain(name) => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => err(format!(
            "--legacy-configmap {text:?}: expected NAMESPACE/NAME of the static-routes ConfigMap (lower-case DNS names), e.g. kube-system/static-routes"
        )),
    }
}

fn check_zone(flag: &str, zone: &str) -> Result<(), InstallError> {
    let ok = !zone.is_empty()
        && zone.len() <= 63
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        err(format!(
            "{flag}: zone {zone:?} is not a zone label value (letters, digits, `-`, `_`, `.`; at most 63): use the value of the nodes' topology.kubernetes.io/zone label"
        ))
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

impl InstallOptions {
    /// Checks the options together: what the chosen IPAM needs and what it
    /// does not take.
    pub fn validate(&self) -> Result<(), InstallError> {
        if !dns_label(&self.namespace) {
            return err(format!(
                "--namespace {:?}: a namespace is a lower-case DNS label (a-z, 0-9, `-`; at most 63)",
                self.namespace
            ));
        }
        let repo = self.image_repository.trim_end_matches('/');
        if repo.is_empty() || repo.contains(char::is_whitespace) || repo.contains('@') {
            return err(format!(
                "--image-repository {:?}: expected a registry path such as ghcr.io/overlay-project (the images overlay-controller and overlay-agent are pulled from under it)",
                self.image_repository
            ));
        }
        let tag_ok = !self.tag.is_empty()
            && self.tag.len() <= 128
            && !self.tag.starts_with(['.', '-'])
            && self
                .tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !tag_ok {
            return err(format!(
                "--tag {:?}: an image tag is letters, digits, `_`, `.`, `-` (at most 128, not starting with `.` or `-`)",
                self.tag
            ));
        }
        self.validate_ipam()
    }

    fn validate_ipam(&self) -> Result<(), InstallError> {
        let php =
            self.phpipam_url.is_some() || self.app_id.is_some() || !self.subnet_map.is_empty();
        match self.ipam {
            Ipam::Phpipam => {
                for (set, flag) in [
                    (self.phpipam_url.is_some(), "--phpipam-url"),
                    (self.app_id.is_some(), "--app-id"),
                    (!self.subnet_map.is_empty(), "--subnet-map"),
                ] {
                    if !set {
                        return err(format!(
                            "--ipam phpipam needs {flag} (and --phpipam-url, --app-id, --subnet-map together)"
                        ));
                    }
                }
                if !self.pools.is_empty() {
                    return err(
                        "--pool is for --ipam kubernetes or embedded; with phpIPAM the subnets come from --subnet-map",
                    );
                }
            }
            Ipam::Kubernetes | Ipam::Embedded if php => {
                return err(
                    "--phpipam-url, --app-id and --subnet-map are for --ipam phpipam; with kubernetes or embedded IPAM give --pool ZONE=CIDR[,GATEWAY]",
                );
            }
            Ipam::Embedded if self.pools.is_empty() => {
                return err(
                    "--ipam embedded needs at least one --pool ZONE=CIDR[,GATEWAY] (the zones the controller hands addresses out in)",
                );
            }
            Ipam::Kubernetes | Ipam::Embedded => {}
        }
        Ok(())
    }
}

/// One rendered document: the file of `deploy/` it came from and the
/// object.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Path under `deploy/` (`samples/overlayippool.yaml` for pools).
    pub file: String,
    /// The object.
    pub value: Value,
}

/// Splits a multi-document YAML text into JSON values (empty documents
/// skipped).
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Value>, InstallError> {
    let mut out = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(de)
            .map_err(|e| InstallError(format!("deploy/{file}: not valid YAML: {e}")))?;
        if v.is_null() {
            continue;
        }
        out.push(
            serde_json::to_value(&v)
                .map_err(|e| InstallError(format!("deploy/{file}: not JSON: {e}")))?,
        );
    }
    Ok(out)
}

/// The documents of `opts`, in the order `kubectl apply -k` applies
/// kustomize's output (then the sample pools).
pub fn documents(opts: &InstallOptions) -> Result<Vec<Document>, InstallError> {
    opts.validate()?;
    let mut docs = Vec::new();
    for (file, text) in SOURCES {
        for value in parse_documents(file, text)? {
            docs.push(Document {
                file: (*file).to_owned(),
                value,
            });
        }
    }
    if opts.legacy_configmap.is_some() {
        add_legacy(&mut docs)?;
    }
    if opts.namespace != DEPLOY_NAMESPACE {
        for d in &mut docs {
            rename_namespace(&mut d.value, &opts.namespace);
        }
    }
    if let Some((ns, name)) = &opts.legacy_configmap {
        point_legacy_at(&mut docs, ns, name);
    }
    kustomize_sort(&mut docs);
    set_images(&mut docs, opts)?;
    set_config(&mut docs, opts)?;
    docs.extend(pools(opts)?);
    Ok(docs)
}

/// The YAML stream of `opts`: a header comment, then each document with
/// `# Source: deploy/<file>`.
pub fn render(opts: &InstallOptions) -> Result<String, InstallError> {
    let docs = documents(opts)?;
    let mut out = header(opts);
    for d in &docs {
        let yaml = serde_yaml::to_string(&d.value)
            .map_err(|e| InstallError(format!("writing {}: {e}", d.file)))?;
        out.push_str(&format!("---\n# Source: deploy/{}\n{yaml}", d.file));
    }
    Ok(out)
}

fn header(opts: &InstallOptions) -> String {
    let mut h = format!(
        "# overlay {}: generated by `overlayctl install` from deploy/ (IPAM: {:?}).\n# Apply with `kubectl apply -f -`.\n",
        env!("CARGO_PKG_VERSION"),
        opts.ipam
    );
    match opts.ipam {
        Ipam::Phpipam => h.push_str(&format!(
            "#\n# phpIPAM credentials are not part of this output. Create the Secret\n# the controller reads (optional in the Deployment) before or after:\n#\n#   kubectl -n {} create secret generic phpipam-credentials \\\n#     --from-literal=PHPIPAM_USERNAME=... --from-literal=PHPIPAM_PASSWORD=...\n",
            opts.namespace
        )),
        Ipam::Kubernetes if opts.pools.is_empty() => h.push_str(
            "#\n# No --pool given: create an OverlayIPPool per zone (see\n# deploy/samples/overlayippool.yaml) before nodes can get addresses.\n",
        ),
        Ipam::Embedded => h.push_str(
            "#\n# Embedded pools live in the memory of the one controller replica\n# (replicas: 1, strategy: Recreate): prefer --ipam kubernetes.\n",
        ),
        Ipam::Kubernetes => {}
    }
    if !opts.pools.is_empty() && opts.ipam == Ipam::Kubernetes {
        h.push_str(
            "#\n# The OverlayIPPools at the end need their CRD established: if kubectl\n# says `no matches for kind \"OverlayIPPool\"`, run the same command again.\n",
        );
    }
    h
}

/// Applies the component `agent/legacy`: its resources, and its JSON 6902
/// patch of the agent DaemonSet.
fn add_legacy(docs: &mut Vec<Document>) -> Result<(), InstallError> {
    for (file, text) in LEGACY_SOURCES {
        let values = parse_documents(file, text)?;
        if file.ends_with("daemonset-env.yaml") {
            let ds = docs
                .iter_mut()
                .find(|d| d.value["kind"] == "DaemonSet")
                .ok_or_else(|| InstallError("deploy/: no DaemonSet to patch".into()))?;
            for patch in &values {
                apply_json6902(&mut ds.value, patch)?;
            }
            continue;
        }
        docs.extend(values.into_iter().map(|value| Document {
            file: (*file).to_owned(),
            value,
        }));
    }
    Ok(())
}

/// The legacy Role, its binding and the agent's STATIC_ROUTES_CONFIGMAP
/// name ConfigMap `ns/name` (after the namespace is renamed: the
/// ConfigMap's namespace is the user's choice, whatever it is).
fn point_legacy_at(docs: &mut [Document], ns: &str, name: &str) {
    for d in docs
        .iter_mut()
        .filter(|d| d.file.starts_with("agent/legacy/"))
    {
        let v = &mut d.value;
        if v["kind"] == "Role" || v["kind"] == "RoleBinding" {
            v["metadata"]["namespace"] = json!(ns);
        }
        for rule in v
            .get_mut("rules")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if rule["resources"] == json!(["configmaps"]) {
                rule["resourceNames"] = json!([name]);
            }
        }
    }
    let target = format!("{ns}/{name}");
    for ds in docs.iter_mut().filter(|d| d.value["kind"] == "DaemonSet") {
        let containers = ds.value.pointer_mut("/spec/template/spec/containers");
        for c in containers
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let env = c.get_mut("env").and_then(Value::as_array_mut);
            for e in env.into_iter().flatten() {
                if e["name"] == "STATIC_ROUTES_CONFIGMAP" {
                    e["value"] = json!(target);
                }
            }
        }
    }
}

/// The `add` operations of a JSON 6902 patch (all the component uses).
fn apply_json6902(target: &mut Value, ops: &Value) -> Result<(), InstallError> {
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default();
        if op["op"] != "add" {
            return err(format!("agent/legacy: unsupported patch op {}", op["op"]));
        }
        let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
        let Some(p) = target.pointer_mut(parent) else {
            return err(format!("agent/legacy: patch path {path} not found"));
        };
        match (p, last) {
            (Value::Array(a), "-") => a.push(op["value"].clone()),
            (Value::Object(m), key) => {
                m.insert(key.to_owned(), op["value"].clone());
            }
            _ => return err(format!("agent/legacy: cannot apply patch at {path}")),
        }
    }
    Ok(())
}

/// kustomize's default ("legacy") resource order, which `kubectl apply -k`
/// applies in: by kind (these first, in this order; webhooks last; any
/// other kind in between), then group/version/kind, namespace and name.
const ORDER_FIRST: &[&str] = &[
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
const ORDER_LAST: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

fn sort_key(v: &Value) -> (i64, String, String, String) {
    let kind = v["kind"].as_str().unwrap_or_default();
    let rank = if let Some(i) = ORDER_FIRST.iter().position(|k| *k == kind) {
        i as i64 - ORDER_FIRST.len() as i64
    } else if let Some(i) = ORDER_LAST.iter().position(|k| *k == kind) {
        i as i64 + 1
    } else {
        0
    };
    let api = v["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api.rsplit_once('/').unwrap_or(("~G", api));
    let str_of = |f: &str| v["metadata"][f].as_str().unwrap_or_default().to_owned();
    (
        rank,
        format!("{group}_{version}_{kind}"),
        str_of("namespace"),
        str_of("name"),
    )
}

fn kustomize_sort(docs: &mut [Document]) {
    docs.sort_by_cached_key(|d| sort_key(&d.value));
}

/// kustomize's `images:`: each container image named there gets
/// `<repository>/<basename>:<tag>`.
fn set_images(docs: &mut [Document], opts: &InstallOptions) -> Result<(), InstallError> {
    let k: serde_yaml::Value = serde_yaml::from_str(KUSTOMIZATION)
        .map_err(|e| InstallError(format!("deploy/kustomization.yaml: {e}")))?;
    let images: Vec<String> = k["images"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str().map(str::to_owned))
        .collect();
    let repo = opts.image_repository.trim_end_matches('/');
    for d in docs {
        let containers = d.value.pointer_mut("/spec/template/spec/containers");
        for c in containers
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let image = c["image"].as_str().unwrap_or_default();
            let name = strip_tag(image);
            if images.iter().any(|i| i == name) {
                let base = name.rsplit('/').next().unwrap_or(name);
                c["image"] = json!(format!("{repo}/{base}:{}", opts.tag));
            }
        }
    }
    Ok(())
}

/// `repo/name:tag` → `repo/name` (a registry port is not a tag).
fn strip_tag(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => image,
    }
}

/// The controller's config for `opts`, as the ConfigMap holds it.
pub fn config_yaml(opts: &InstallOptions) -> Result<String, InstallError> {
    let mut cfg = serde_json::Map::new();
    if let Some(id) = &opts.cluster_id {
        overlay_ipam::config::validate_cluster_id(id)
            .map_err(|e| InstallError(format!("--cluster-id {id:?}: {e}")))?;
        cfg.insert("clusterId".into(), json!(id));
    }
    match opts.ipam {
        Ipam::Kubernetes => {
            cfg.insert("kubernetes".into(), json!({}));
        }
        Ipam::Phpipam => {
            cfg.insert(
                "phpIPAM".into(),
                json!({"url": opts.phpipam_url, "appID": opts.app_id, "subnetMap": opts.subnet_map}),
            );
        }
        Ipam::Embedded => {
            let mut zones: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            for p in &opts.pools {
                let mut pool = json!({"cidr": p.cidr});
                if let Some(g) = &p.gateway {
                    pool["gateway"] = json!(g);
                }
                zones.entry(&p.zone).or_default().push(pool);
            }
            cfg.insert("embedded".into(), json!({ "zones": zones }));
        }
    }
    let text = if opts.ipam == Ipam::Kubernetes && opts.cluster_id.is_none() {
        // As deploy/ writes it.
        "kubernetes: {}\n".to_owned()
    } else {
        serde_yaml::to_string(&Value::Object(cfg))
            .map_err(|e| InstallError(format!("writing the config: {e}")))?
    };
    overlay_ipam::config::IpamConfig::from_yaml(CONFIG_KEY, &text).map_err(|e| {
        InstallError(format!(
            "the controller would refuse this config: {e}; fix the flag that sets it"
        ))
    })?;
    Ok(text)
}

/// The ConfigMap's config; embedded pools: one replica, recreated.
fn set_config(docs: &mut [Document], opts: &InstallOptions) -> Result<(), InstallError> {
    let text = config_yaml(opts)?;
    let cm = docs
        .iter_mut()
        .find(|d| {
            d.value["kind"] == "ConfigMap" && d.value["metadata"]["name"] == "overlay-ip-config"
        })
        .ok_or_else(|| InstallError("deploy/: no ConfigMap overlay-ip-config".into()))?;
    cm.value["data"][CONFIG_KEY] = json!(text);
    let deployment = docs.iter_mut().find(|d| d.value["kind"] == "Deployment");
    if let (Ipam::Embedded, Some(d)) = (opts.ipam, deployment) {
        d.value["spec"]["replicas"] = json!(1);
        d.value["spec"]["strategy"] = json!({"type": "Recreate"});
    }
    Ok(())
}

/// Every string naming [`DEPLOY_NAMESPACE`] (metadata, subjects, the
/// admission policy's user name, the legacy ConfigMap) names `ns` instead.
fn rename_namespace(v: &mut Value, ns: &str) {
    match v {
        Value::String(s) if s.contains(DEPLOY_NAMESPACE) => {
            *s = replace_word(s, DEPLOY_NAMESPACE, ns);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rename_namespace(x, ns)),
        Value::Object(m) => m.values_mut().for_each(|x| rename_namespace(x, ns)),
        _ => {}
    }
}

/// `word` replaced where it stands alone (not inside a longer DNS name).
fn replace_word(s: &str, word: &str, with: &str) -> String {
    let name_char = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(word) {
        let before = if i > 0 {
            rest[..i].chars().last()
        } else {
            out.chars().last()
        };
        let after = rest[i + word.len()..].chars().next();
        out.push_str(&rest[..i]);
        if name_char(before) || name_char(after) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

/// `--pool` as OverlayIPPool objects (kubernetes), checked as the
/// controller checks them.
fn pools(opts: &InstallOptions) -> Result<Vec<Document>, InstallError> {
    let mut out = Vec::new();
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &opts.pools {
        let n = per_zone.entry(&p.zone).or_default();
        *n += 1;
        let name = format!("{}-{n}", object_name(&p.zone));
        let record = overlay_core::ippool::IpPool {
            name: name.clone(),
            zone: p.zone.clone(),
            cidr: p.cidr.clone(),
            gateway: p.gateway.clone(),
            ..Default::default()
        };
        overlay_ipam::kubernetes::pool::ValidPool::check(&record).map_err(|e| {
            InstallError(format!(
                "--pool {}={}{}: {e}",
                p.zone,
                p.cidr,
                p.gateway
                    .as_deref()
                    .map(|g| format!(",{g}"))
                    .unwrap_or_default()
            ))
        })?;
        if opts.ipam != Ipam::Kubernetes {
            continue;
        }
        let mut spec = json!({"zone": p.zone, "cidr": p.cidr});
        if let Some(g) = &p.gateway {
            spec["gateway"] = json!(g);
        }
        out.push(Document {
            file: "samples/overlayippool.yaml".into(),
            value: json!({
                "apiVersion": "iks.ibm.com/v1alpha1",
                "kind": "OverlayIPPool",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "overlay"}},
                "spec": spec,
            }),
        });
    }
    Ok(out)
}

/// A zone as the start of an object name.
fn object_name(zone: &str) -> String {
    let s: String = zone
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    if s.is_empty() {
        "pool".into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_word_keeps_longer_names() {
        assert_eq!(
            replace_word(
                "system:serviceaccount:overlay-system:overlay-agent",
                "overlay-system",
                "net"
            ),
            "system:serviceaccount:net:overlay-agent"
        );
        assert_eq!(
            replace_word("overlay-system/x", "overlay-system", "n"),
            "n/x"
        );
        assert_eq!(
            replace_word("my-overlay-system", "overlay-system", "n"),
            "my-overlay-system"
        );
        assert_eq!(
            replace_word("overlay-systems", "overlay-system", "n"),
            "overlay-systems"
        );
    }

    #[test]
    fn flags_parse_and_bad_ones_say_what_to_write() {
        assert_eq!(
            parse_subnet_map("dal10=7,8; dal12=9").unwrap(),
            BTreeMap::from([("dal10".into(), vec![7, 8]), ("dal12".into(), vec![9])])
        );
        assert!(parse_subnet_map("dal10").unwrap_err().0.contains("ZONE=ID"));
        assert!(
            parse_subnet_map("dal10=x")
                .unwrap_err()
                .0
                .contains("numeric")
        );
        assert!(parse_subnet_map("a=1;a=2").unwrap_err().0.contains("twice"));
        assert_eq!(
            parse_pool("dal10=192.0.2.0/24,192.0.2.1").unwrap(),
            PoolArg {
                zone: "dal10".into(),
                cidr: "192.0.2.0/24".into(),
                gateway: Some("192.0.2.1".into())
            }
        );
        assert!(
            parse_pool("192.0.2.0/24")
                .unwrap_err()
                .0
                .contains("ZONE=CIDR")
        );
        assert_eq!(
            parse_legacy_configmap("kube-system/static-routes").unwrap(),
            ("kube-system".into(), "static-routes".into())
        );
        assert!(
            parse_legacy_configmap("static-routes")
                .unwrap_err()
                .0
                .contains("NAMESPACE/NAME")
        );
    }
}
