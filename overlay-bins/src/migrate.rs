//! `overlayctl migrate plan` and `overlayctl migrate apply`: taking over
//! from the two original deployments (the Go `iks-overlay-ip-controller`
//! with its network pod, and the static-routes DaemonSet).
//!
//! [`gather`] reads the cluster (read-only); [`inspect_records`] asks the
//! IPAM how it holds each recorded address (read-only); [`plan`] turns both
//! into a [`MigrationPlan`]: what will be adopted, what conflicts and why,
//! and the steps in order. [`apply`] performs the cluster-side steps,
//! idempotently, and refuses while the original controller still runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use overlay_core::crd::{NodeOverlayIp, StaticRoute};
use overlay_core::{Adoption, IpamBackend, Owner, traits::FINALIZER};
use serde::Serialize;

/// The label the original StaticRoute agents read to limit a route to one
/// zone.
pub const ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";

/// The field manager of `overlayctl migrate apply`'s writes.
pub const FIELD_MANAGER: &str = "overlayctl-migrate";

/// Where the original Go controller runs and how it holds its leader lock
/// (operator-sdk's leader-for-life: a ConfigMap owned by the leader Pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalController {
    /// Its namespace.
    pub namespace: String,
    /// Its Deployment.
    pub deployment: String,
    /// Its leader-lock ConfigMap.
    pub lock: String,
}

impl Default for OriginalController {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            deployment: "overlay-network-controller".into(),
            lock: "iks-overlay-ip-controller-lock".into(),
        }
    }
}

/// Whether the original controller runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalState {
    /// Replicas its Deployment asks for (`None`: no such Deployment).
    pub replicas: Option<i32>,
    /// The Pod holding its leader lock (`None`: not held).
    pub lock_holder: Option<String>,
}

impl OriginalState {
    /// Why the original controller counts as running; `None` when stopped.
    pub fn running(&self, original: &OriginalController) -> Option<String> {
        let ns = &original.namespace;
        let mut why = Vec::new();
        if let Some(n) = self.replicas.filter(|n| *n > 0) {
            why.push(format!(
                "its Deployment {ns}/{} has {n} replica(s)",
                original.deployment
            ));
        }
        if let Some(pod) = &self.lock_holder {
            why.push(format!(
                "its leader lock ConfigMap {ns}/{} is held by Pod {pod}",
                original.lock
            ));
        }
        (!why.is_empty()).then(|| why.join(" and "))
    }
}

/// One CRD as installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CrdState {
    /// The CRD's name.
    pub name: String,
    /// `missing`, `current` (ours, as this release generates it) or
    /// `different` (the original's, or another release's).
    pub state: String,
}

/// A NodeOverlayIp as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordFact {
    /// Node name (= object name).
    pub node: String,
    /// `status.ipAddr`.
    pub address: Option<ipnetwork::IpNetwork>,
    /// The Node exists.
    pub node_exists: bool,
    /// It has an owner reference (ours sets one; the original's has none).
    pub owner_reference: bool,
    /// It carries `finalizer.iks.ibm.com`.
    pub finalizer: bool,
}

/// A StaticRoute as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteFact {
    /// Name.
    pub name: String,
    /// `spec.subnet`, or why it does not read.
    pub subnet: String,
    /// The original's zone label, when set.
    pub zone: Option<String>,
}

/// The static-routes original's ConfigMap as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyFact {
    /// `namespace/name`.
    pub configmap: String,
    /// The routes it yields (bare addresses as /32 or /128).
    pub routes: Vec<String>,
    /// Entries that do not read, each with why.
    pub problems: Vec<String>,
}

/// What [`gather`] reads from the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFacts {
    /// The original controller.
    pub original: OriginalState,
    /// The two CRDs.
    pub crds: Vec<CrdState>,
    /// Every NodeOverlayIp.
    pub records: Vec<RecordFact>,
    /// Every StaticRoute.
    pub static_routes: Vec<RouteFact>,
    /// The legacy ConfigMap, when it exists.
    pub legacy: Option<LegacyFact>,
}

/// What [`gather`] reads.
#[derive(Debug, Clone, Default)]
pub struct GatherOptions {
    /// The original controller.
    pub original: OriginalController,
    /// The static-routes ConfigMap, `namespace/name`.
    pub legacy_configmap: Option<(String, String)>,
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Reads what the migration depends on; changes nothing.
pub async fn gather(client: &kube::Client, opts: &GatherOptions) -> Result<ClusterFacts, String> {
    let mut facts = ClusterFacts {
        original: original_state(client, &opts.original).await?,
        crds: crd_states(client).await?,
        ..Default::default()
    };
    // The originals' two kinds are read when served; the IPAM kinds are
    // new (missing until `migrate apply` or the install).
    let served = |name: &str| {
        facts
            .crds
            .iter()
            .any(|c| c.name == name && c.state != "missing")
    };
    let (noips, routes) = (
        served("nodeoverlayips.iks.ibm.com"),
        served("staticroutes.iks.ibm.com"),
    );
    if noips {
        facts.records = records(client).await?;
    }
    if routes {
        facts.static_routes = static_routes(client).await?;
    }
    if let Some((ns, name)) = &opts.legacy_configmap {
        facts.legacy = legacy(client, ns, name).await?;
    }
    Ok(facts)
}

async fn original_state(
    client: &kube::Client,
    original: &OriginalController,
) -> Result<OriginalState, String> {
    let ns = &original.namespace;
    let replicas = match Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&original.deployment)
        .await
    {
        Ok(d) => d.map(|d| d.spec.and_then(|s| s.replicas).unwrap_or(1)),
        Err(e) => {
            return Err(format!(
                "reading Deployment {ns}/{}: {e}",
                original.deployment
            ));
        }
    };
    let lock = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&original.lock)
        .await
        .map_err(|e| format!("reading ConfigMap {ns}/{}: {e}", original.lock))?;
    let mut lock_holder = None;
    let owners = lock
        .and_then(|c| c.metadata.owner_references)
        .unwrap_or_default();
    for o in owners.iter().filter(|o| o.kind == "Pod") {
        // Leader-for-life: the lock is held while its owner Pod exists.
        let pod = Api::<Pod>::namespaced(client.clone(), ns)
            .get_opt(&o.name)
            .await
            .map_err(|e| format!("reading Pod {ns}/{}: {e}", o.name))?;
        if pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none()) {
            lock_holder = Some(o.name.clone());
        }
    }
    Ok(OriginalState {
        replicas,
        lock_holder,
    })
}

/// The CRDs this release generates, by name, as JSON.
fn our_crds() -> Result<Vec<(String, serde_json::Value)>, String> {
    overlay_core::crd::crds_yaml()
        .map_err(|e| format!("generating the CRDs: {e}"))?
        .into_iter()
        .map(|(name, yaml)| {
            serde_yaml::from_str(&yaml)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("CRD {name}: {e}"))
        })
        .collect()
}

async fn crd_states(client: &kube::Client) -> Result<Vec<CrdState>, String> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let mut out = Vec::new();
    for (name, ours) in our_crds()? {
        let state = match api.get_opt(&name).await {
            Ok(None) => "missing",
            Ok(Some(found)) => {
                let found = serde_json::to_value(&found.spec).unwrap_or_default();
                if found.get("versions") == ours.pointer("/spec/versions") {
                    "current"
                } else {
                    "different"
                }
            }
            Err(e) if is_not_found(&e) => "missing",
            Err(e) => return Err(format!("reading CRD {name}: {e}")),
        };
        out.push(CrdState {
            name,
            state: state.into(),
        });
    }
    Ok(out)
}

async fn records(client: &kube::Client) -> Result<Vec<RecordFact>, String> {
    let nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing Nodes: {e}"))?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<NodeOverlayIp>(&()));
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing NodeOverlayIps: {e}"))?;
    Ok(list
        .items
        .iter()
        .map(|o| {
            let (rec, _) = overlay_core::crd::decode_node_overlay_ip(o);
            RecordFact {
                node_exists: nodes.contains(&rec.name),
                owner_reference: o
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|v| !v.is_empty()),
                finalizer: rec.finalizers.iter().any(|f| f == FINALIZER),
                address: rec.ip_addr,
                node: rec.name,
            }
        })
        .collect())
}

async fn static_routes(client: &kube::Client) -> Result<Vec<RouteFact>, String> {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<StaticRoute>(&()));
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing StaticRoutes: {e}"))?;
    Ok(list
        .items
        .iter()
        .map(|o| RouteFact {
            name: o.metadata.name.clone().unwrap_or_default(),
            subnet: o
                .data
                .pointer("/spec/subnet")
                .and_then(|s| s.as_str())
                .unwrap_or("(no spec.subnet)")
                .to_owned(),
            zone: o
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL))
                .cloned(),
        })
        .collect())
}

async fn legacy(client: &kube::Client, ns: &str, name: &str) -> Result<Option<LegacyFact>, String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading ConfigMap {ns}/{name}: {e}"))?;
    let Some(cm) = cm else {
        return Ok(None);
    };
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("routes"))
        .cloned()
        .unwrap_or_default();
    let (routes, problems) = read_legacy(&text);
    Ok(Some(LegacyFact {
        configmap: format!("{ns}/{name}"),
        routes,
        problems,
    }))
}

/// The legacy list's routes and its problems, as the agent reads it.
fn read_legacy(text: &str) -> (Vec<String>, Vec<String>) {
    match overlay_core::legacy::parse_legacy_list(text) {
        Ok(list) => (
            list.subnets.iter().map(ToString::to_string).collect(),
            list.problems.iter().map(ToString::to_string).collect(),
        ),
        Err(e) => (Vec::new(), vec![e.to_string()]),
    }
}

/// How the IPAM holds each recorded address, for the owner this cluster's
/// controller writes (`cluster`/node). Read-only.
pub async fn inspect_records(
    ipam: &dyn IpamBackend,
    cluster: &str,
    records: &[RecordFact],
) -> BTreeMap<String, Result<Adoption, String>> {
    let mut out = BTreeMap::new();
    for r in records {
        if let Some(address) = r.address {
            let owner = Owner::new(cluster, r.node.clone());
            let found = ipam
                .inspect_adoption(&owner, address)
                .await
                .map_err(|e| e.to_string());
            out.insert(r.node.clone(), found);
        }
    }
    out
}

/// What happens to one NodeOverlayIp's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordAction {
    /// The IPAM holds it for the node without our marker: it is adopted
    /// (marker written, no new reservation).
    Adopt,
    /// Already carries this cluster's marker.
    AlreadyOurs,
    /// The IPAM holds it for someone else: left alone, kept on the node.
    Conflict,
    /// The IPAM does not hold it: kept on the node, never released.
    NotInIpam,
    /// No IPAM was given (`--config`): not checked.
    NotChecked,
    /// The IPAM could not be asked.
    Unknown,
    /// No address recorded: the controller reserves one.
    NoAddress,
}

/// One NodeOverlayIp in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordPlan {
    /// Node name.
    pub node: String,
    /// The recorded address.
    pub address: Option<ipnetwork::IpNetwork>,
    /// What happens to it.
    pub action: RecordAction,
    /// Why, in words.
    pub detail: String,
}

/// One step of the migration, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// What to do.
    pub what: String,
    /// The command that does it.
    pub command: Option<String>,
    /// `overlayctl migrate apply` performs it.
    pub by_apply: bool,
    /// Nothing is left to do.
    pub done: bool,
}

/// What `overlayctl migrate plan` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPlan {
    /// The original controller looked for.
    pub original_controller: OriginalController,
    /// Why it counts as running (`apply` refuses then).
    pub original_running: Option<String>,
    /// The owner markers' cluster id, when an IPAM was checked.
    pub cluster_id: Option<String>,
    /// The CRDs.
    pub crds: Vec<CrdState>,
    /// Every NodeOverlayIp and what happens to its address.
    pub records: Vec<RecordPlan>,
    /// Every StaticRoute (a zone label limits it to that zone).
    pub static_routes: Vec<RouteFact>,
    /// The static-routes original's ConfigMap.
    pub legacy: Option<LegacyFact>,
    /// On a node: what the agent would do to this kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<serde_json::Value>,
    /// What will not be taken over, and why.
    pub conflicts: Vec<String>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

fn record_plan(r: &RecordFact, found: Option<&Result<Adoption, String>>) -> RecordPlan {
    let (action, detail) = match (r.address, found) {
        (None, _) => (
            RecordAction::NoAddress,
            "no address recorded; the controller reserves one".to_owned(),
        ),
        (Some(_), None) => (
            RecordAction::NotChecked,
            "the IPAM was not checked (give --config)".to_owned(),
        ),
        (Some(_), Some(Err(e))) => (RecordAction::Unknown, format!("the IPAM answered: {e}")),
        (Some(_), Some(Ok(a))) => match a {
            Adoption::Adoptable { subnet_id, detail } => (
                RecordAction::Adopt,
                format!(
                    "subnet {subnet_id}: {detail}; our marker is written onto it, nothing new is reserved"
                ),
            ),
            Adoption::Ours { .. } | Adoption::Adopted { .. } => (
                RecordAction::AlreadyOurs,
                "carries this cluster's marker".to_owned(),
            ),
            Adoption::Foreign { reason } => (
                RecordAction::Conflict,
                format!(
                    "{reason}; left alone, the node keeps the address, overlay never releases it"
                ),
            ),
            Adoption::Missing => (
                RecordAction::NotInIpam,
                "the IPAM holds nothing at this address; the node keeps it, nothing is released"
                    .to_owned(),
            ),
        },
    };
    RecordPlan {
        node: r.node.clone(),
        address: r.address,
        action,
        detail: if r.node_exists {
            detail
        } else {
            format!(
                "{detail} (the Node is gone: the controller then deletes the record and releases the address)"
            )
        },
    }
}

/// The plan from the facts and the IPAM's answers (`cluster`: the owner
/// markers' cluster id, when the IPAM was asked).
pub fn plan(
    original: &OriginalController,
    facts: &ClusterFacts,
    found: &BTreeMap<String, Result<Adoption, String>>,
    cluster: Option<&str>,
) -> MigrationPlan {
    let records: Vec<RecordPlan> = facts
        .records
        .iter()
        .map(|r| record_plan(r, found.get(&r.node)))
        .collect();
    let mut conflicts: Vec<String> = records
        .iter()
        .filter(|r| {
            matches!(
                r.action,
                RecordAction::Conflict | RecordAction::NotInIpam | RecordAction::Unknown
            )
        })
        .map(|r| {
            let a = r.address.map(|a| a.to_string()).unwrap_or_default();
            format!("NodeOverlayIp {} ({a}): {}", r.node, r.detail)
        })
        .collect();
    if let Some(l) = &facts.legacy {
        for p in &l.problems {
            conflicts.push(format!(
                "ConfigMap {}: {p} (reported by every agent; the other entries apply)",
                l.configmap
            ));
        }
    }
    let running = facts.original.running(original);
    MigrationPlan {
        original_controller: original.clone(),
        steps: steps(original, facts, &records, running.is_none()),
        original_running: running,
        cluster_id: cluster.map(str::to_owned),
        crds: facts.crds.clone(),
        records,
        static_routes: facts.static_routes.clone(),
        legacy: facts.legacy.clone(),
        node: None,
        conflicts,
    }
}

fn steps(
    original: &OriginalController,
    facts: &ClusterFacts,
    records: &[RecordPlan],
    stopped: bool,
) -> Vec<Step> {
    let adopt = records
        .iter()
        .filter(|r| r.action == RecordAction::Adopt)
        .count();
    let checked = records.iter().all(|r| r.action != RecordAction::NotChecked);
    let step = |what: String, command: Option<String>, by_apply: bool, done: bool| Step {
        what,
        command,
        by_apply,
        done,
    };
    vec![
        step(
            format!(
                "stop the original controller (Deployment {}/{}) and wait for its leader lock ConfigMap {} to go",
                original.namespace, original.deployment, original.lock
            ),
            Some(format!(
                "kubectl -n {} scale deployment {} --replicas=0",
                original.namespace, original.deployment
            )),
            false,
            stopped,
        ),
        step(
            "delete the original DaemonSet (network pod or static-routes); what it left in the kernel stays, and the agent takes it over".into(),
            Some("kubectl -n <namespace> delete daemonset <name>".into()),
            false,
            false,
        ),
        step(
            "apply overlay's CRDs server-side (the objects stay; the schema and its validation become overlay's)".into(),
            Some("overlayctl crds | kubectl apply --server-side --force-conflicts -f -".into()),
            true,
            facts.crds.iter().all(|c| c.state == "current"),
        ),
        step(
            format!("adopt {adopt} phpIPAM record(s): write this cluster's owner marker onto them (no new reservation)"),
            None,
            true,
            checked && adopt == 0,
        ),
        step(
            "install the controller and the agent; they read the original's ConfigMap overlay-ip-controller-config and Secret phpipam-secret as they are, in overlay-system (copy them there; drop the example controller/configmap.yaml, which would win)".into(),
            Some("kubectl apply -k deploy/".into()),
            false,
            false,
        ),
        step(
            "verify: every node Configured with its old address, every route Applied".into(),
            Some("overlayctl status".into()),
            false,
            false,
        ),
    ]
}

impl MigrationPlan {
    /// The plan as text: the original controller, CRDs, records, routes,
    /// the legacy list, the node, conflicts and the numbered steps.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let o = &self.original_controller;
        let _ = writeln!(
            s,
            "original controller {}/{}: {}",
            o.namespace,
            o.deployment,
            self.original_running
                .as_deref()
                .map_or_else(|| "stopped".to_owned(), |why| format!("RUNNING: {why}"))
        );
        for c in &self.crds {
            let _ = writeln!(s, "CRD {}: {}", c.name, c.state);
        }
        if let Some(id) = &self.cluster_id {
            let _ = writeln!(s, "owner markers: cluster {id}");
        }
        let _ = writeln!(s, "NodeOverlayIps ({}):", self.records.len());
        for r in &self.records {
            let a = r.address.map_or_else(|| "-".to_owned(), |a| a.to_string());
            let action = serde_json::to_value(&r.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(s, "  {:<24} {:<18} {action}", r.node, a);
            let _ = writeln!(s, "      {}", r.detail);
        }
        let _ = writeln!(s, "StaticRoutes ({}):", self.static_routes.len());
        for r in &self.static_routes {
            let zone = r.zone.as_deref().map_or_else(
                || "every node".to_owned(),
                |z| format!("zone {z} only ({ZONE_LABEL})"),
            );
            let _ = writeln!(s, "  {:<24} {:<18} {zone}", r.name, r.subnet);
        }
        if let Some(l) = &self.legacy {
            let _ = writeln!(
                s,
                "ConfigMap {}: {} route(s): {}",
                l.configmap,
                l.routes.len(),
                l.routes.join(", ")
            );
        }
        if let Some(n) = &self.node {
            let _ = writeln!(s, "this node's kernel:");
            for line in n
                .get("lines")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
            {
                let _ = writeln!(s, "  {}", line.as_str().unwrap_or_default());
            }
        }
        let _ = writeln!(s, "conflicts: {}", self.conflicts.len());
        for c in &self.conflicts {
            let _ = writeln!(s, "  {c}");
        }
        let _ = writeln!(s, "steps:");
        for (i, st) in self.steps.iter().enumerate() {
            let mark = if st.done { "done" } else { "todo" };
            let by = if st.by_apply { " [migrate apply]" } else { "" };
            let _ = writeln!(s, "  {}. [{mark}]{by} {}", i + 1, st.what);
            if let (Some(c), false) = (&st.command, st.done) {
                let _ = writeln!(s, "       {c}");
            }
        }
        s
    }
}

/// What `overlayctl migrate apply` did, step by step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyOutcome {
    /// `(what, result)`, in order.
    pub actions: Vec<(String, String)>,
}

impl ApplyOutcome {
    /// One line per action.
    pub fn render(&self) -> String {
        self.actions
            .iter()
            .map(|(what, result)| format!("{what}: {result}\n"))
            .collect()
    }
}

/// Performs the cluster-side steps of `plan` (made just before, from
/// fresh facts): applies the CRDs server-side and adopts the adoptable
/// records. Refuses, changing nothing, while the original controller
/// runs. Idempotent: a second run finds nothing to do.
pub async fn apply(
    client: &kube::Client,
    plan: &MigrationPlan,
    ipam: Option<(&dyn IpamBackend, &str)>,
) -> Result<ApplyOutcome, String> {
    if let Some(why) = &plan.original_running {
        let o = &plan.original_controller;
        return Err(format!(
            "the original controller still runs ({why}); two controllers would both own these addresses. Stop it first: kubectl -n {} scale deployment {} --replicas=0, wait for ConfigMap {} to go, then run migrate apply again",
            o.namespace, o.deployment, o.lock
        ));
    }
    let mut out = ApplyOutcome::default();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for (name, crd) in our_crds()? {
        let current = plan
            .crds
            .iter()
            .any(|c| c.name == name && c.state == "current");
        if current {
            out.actions
                .push((format!("CRD {name}"), "already current".into()));
            continue;
        }
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| format!("applying CRD {name}: {e}"))?;
        out.actions
            .push((format!("CRD {name}"), "applied (server-side)".into()));
    }
    let Some((ipam, cluster)) = ipam else {
        out.actions.push((
            "phpIPAM records".into(),
            "not checked: give --config to adopt them here (the controller also adopts them when it starts)".into(),
        ));
        return Ok(out);
    };
    for r in plan
        .records
        .iter()
        .filter(|r| r.action == RecordAction::Adopt)
    {
        let Some(address) = r.address else { continue };
        let owner = Owner::new(cluster, r.node.clone());
        let result = match ipam.adopt(&owner, address).await {
            Ok(Adoption::Adopted { .. }) => "adopted: marked as this cluster's".to_owned(),
            Ok(Adoption::Ours { .. }) => "already ours".to_owned(),
            Ok(other) => format!("not adopted: {other:?}"),
            Err(e) => return Err(format!("adopting {address} of {}: {e}", r.node)),
        };
        out.actions
            .push((format!("NodeOverlayIp {} ({address})", r.node), result));
    }
    Ok(out)
}

/// What `migrate plan --node` previews.
#[derive(Debug, Clone)]
pub struct NodePreviewOptions {
    /// The node (this machine).
    pub node: String,
    /// The parent interface (default: the one holding the InternalIP).
    pub interface: Option<String>,
    /// The overlay interface name.
    pub interface_label: String,
    /// The legacy ConfigMap, `NAMESPACE/NAME`, read when it exists.
    pub legacy_configmap: Option<String>,
    /// The network namespace to read (a path such as
    /// `/run/netns/NAME`); `None`: this process's.
    pub netns: Option<std::path::PathBuf>,
}

/// What the agent would do to this machine's kernel: the agent's own
/// planning over the node's objects (nothing reported, no Events), then
/// the netlink programmer's read-only preview of that desired state.
pub async fn node_preview(
    client: &kube::Client,
    opts: &NodePreviewOptions,
) -> Result<serde_json::Value, String> {
    use overlay_core::agent::{Agent, AgentConfig, AgentParts};
    use overlay_core::k8s::{KubeConfigMapRoutes, KubeNodes, KubeOverlayIps, KubeStaticRoutes};
    use std::sync::Arc;
    let invalid =
        overlay_core::invalid::InvalidObjects::new(Arc::new(overlay_core::events::NoEvents));
    let mut cfg = AgentConfig::new(opts.node.clone()).map_err(|e| e.to_string())?;
    cfg.interface_label = opts
        .interface_label
        .parse()
        .map_err(|e: overlay_core::ParseError| e.to_string())?;
    if let Some(i) = &opts.interface {
        cfg.interface = Some(
            i.parse()
                .map_err(|e: overlay_core::ParseError| e.to_string())?,
        );
    }
    let mut netlink = overlay_netlink::ProgrammerConfig::default();
    if let Some(path) = &opts.netns {
        netlink = netlink.in_namespace(path);
    }
    let programmer = Arc::new(
        overlay_netlink::NetlinkProgrammer::new(netlink)
            .await
            .map_err(|e| format!("opening netlink (run on the node, as root): {e}"))?,
    );
    let legacy = opts
        .legacy_configmap
        .as_deref()
        .and_then(|cm| cm.split_once('/'))
        .map(|(ns, name)| {
            Arc::new(KubeConfigMapRoutes::new(
                client.clone(),
                ns,
                name,
                invalid.clone(),
            )) as Arc<dyn overlay_core::LegacyRouteSource>
        });
    let agent = Agent::new(
        cfg,
        AgentParts {
            programmer: programmer.clone(),
            nodes: Arc::new(KubeNodes::new(
                client.clone(),
                Some(&opts.node),
                invalid.clone(),
            )),
            overlay_ips: Arc::new(KubeOverlayIps::new(
                client.clone(),
                Some(&opts.node),
                invalid.clone(),
            )),
            routes: Some(Arc::new(KubeStaticRoutes::new(
                client.clone(),
                FIELD_MANAGER.into(),
                invalid.clone(),
            ))),
            legacy,
        },
    );
    let desired = agent.desired().await.map_err(|e| e.to_string())?;
    let preview = programmer
        .preview(&desired)
        .await
        .map_err(|e| e.to_string())?;
    let mut value = serde_json::to_value(&preview).map_err(|e| e.to_string())?;
    if let Some(map) = value.as_object_mut() {
        map.insert("lines".into(), serde_json::json!(preview.lines()));
    }
    Ok(value)
}
