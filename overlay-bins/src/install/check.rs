//! `overlayctl install --check`: is a cluster ready for overlay?

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use super::Ipam;

/// The zone labels a node may carry (the current one, then the
/// deprecated one the original controller read).
pub const ZONE_LABELS: &[&str] = &[
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];

/// The oldest Kubernetes minor overlay supports (1.30: admission policies
/// GA, and the node-name claim in service account tokens the policy
/// reads).
pub const MIN_MINOR: u64 = 30;

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Passed.
    pub ok: bool,
    /// What was found; when not ok, also what to do.
    pub detail: String,
}

/// Every check, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Readiness {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Readiness {
    /// Every check passed.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn push(&mut self, name: &'static str, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.checks.push(Check { name, ok, detail });
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            writeln!(f, "{mark} {:<20} {}", c.name, c.detail)?;
        }
        if self.ready() {
            writeln!(f, "ready: the cluster can run overlay")
        } else {
            writeln!(f, "not ready: fix the FAIL lines above")
        }
    }
}

/// Checks `client`'s cluster for an install with `ipam`: the server's
/// version, overlay's CRDs (present and the same as this overlayctl's),
/// ValidatingAdmissionPolicy served, every node's zone label and (with
/// kubernetes IPAM) a usable pool per node zone. Read-only.
pub async fn check(client: &kube::Client, ipam: Ipam) -> Readiness {
    let mut r = Readiness::default();
    r.push("server version", version(client).await);
    r.push("CRDs", crds(client).await);
    r.push("admission policies", admission(client).await);
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| format!("cannot list nodes: {e}"));
    let zones = nodes.as_ref().map(|n| node_zones(n)).map_err(Clone::clone);
    r.push(
        "node zones",
        zones.clone().and_then(|(zones, unlabelled)| {
            if unlabelled.is_empty() {
                Ok(format!(
                    "every node has a zone label ({})",
                    zones.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
            } else {
                Err(format!(
                    "nodes without a zone label: {} (label them: kubectl label node NODE topology.kubernetes.io/zone=ZONE); without one a node gets no overlay IP",
                    unlabelled.join(", ")
                ))
            }
        }),
    );
    if ipam == Ipam::Kubernetes {
        let result = match zones {
            Ok((zones, _)) => pools(client, &zones).await,
            Err(e) => Err(e),
        };
        r.push("pools", result);
    }
    r
}

async fn version(client: &kube::Client) -> Result<String, String> {
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| format!("cannot read /version: {e}"))?;
    let digits = |s: &str| -> Option<u64> {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    let shown = format!("{}.{} ({})", info.major, info.minor, info.git_version);
    match (digits(&info.major), digits(&info.minor)) {
        (Some(1), Some(minor)) if minor >= MIN_MINOR => Ok(shown),
        (Some(major), _) if major > 1 => Ok(shown),
        _ => Err(format!(
            "Kubernetes {shown}: overlay needs 1.{MIN_MINOR} or later (ValidatingAdmissionPolicy GA, node-bound service account tokens); upgrade the cluster"
        )),
    }
}

/// Each CRD present, with the versions and schemas this overlayctl has.
async fn crds(client: &kube::Client) -> Result<String, String> {
    let ours = overlay_core::crd::crds_yaml().map_err(|e| format!("generating CRDs: {e}"))?;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let (mut missing, mut stale) = (Vec::new(), Vec::new());
    for (name, yaml) in &ours {
        let want: Value = serde_yaml::from_str(yaml).map_err(|e| format!("CRD {name}: {e}"))?;
        let Some(have) = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read CRD {name}: {e}"))?
        else {
            missing.push(name.clone());
            continue;
        };
        let have = serde_json::to_value(&have).map_err(|e| e.to_string())?;
        if versions(&have) != versions(&want) {
            stale.push(name.clone());
        }
    }
    if missing.is_empty() && stale.is_empty() {
        return Ok(format!("all {} present and current", ours.len()));
    }
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!("missing: {}", missing.join(", ")));
    }
    if !stale.is_empty() {
        why.push(format!(
            "different from this overlayctl's (an older or newer overlay): {}",
            stale.join(", ")
        ));
    }
    Err(format!(
        "{}; `overlayctl install | kubectl apply -f -` installs them (or `overlayctl crds | kubectl apply --server-side -f -`)",
        why.join("; ")
    ))
}

/// Version name → (served, storage, schema) of a CRD.
fn versions(crd: &Value) -> Vec<(Value, Value, Value, Value)> {
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            (
                v["name"].clone(),
                v["served"].clone(),
                v["storage"].clone(),
                v["schema"]["openAPIV3Schema"].clone(),
            )
        })
        .collect()
}

async fn admission(client: &kube::Client) -> Result<String, String> {
    let gvk = GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
    );
    let ar = ApiResource::from_gvk_with_plural(&gvk, "validatingadmissionpolicies");
    let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok("admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy served".into()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(
            "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy is not served: overlay's policy keeps each agent to its own node; enable the API (Kubernetes 1.30 or later serves it by default)".into(),
        ),
        Err(e) => Err(format!("cannot list ValidatingAdmissionPolicies: {e}")),
    }
}

/// The zones of the nodes, and the nodes without a zone label.
fn node_zones(nodes: &[Node]) -> (BTreeSet<String>, Vec<String>) {
    let mut zones = BTreeSet::new();
    let mut unlabelled = Vec::new();
    for n in nodes {
        let labels = n.metadata.labels.as_ref();
        let zone = ZONE_LABELS
            .iter()
            .find_map(|l| labels.and_then(|m| m.get(*l)).filter(|z| !z.is_empty()));
        match zone {
            Some(z) => {
                zones.insert(z.clone());
            }
            None => unlabelled.push(n.metadata.name.clone().unwrap_or_default()),
        }
    }
    (zones, unlabelled)
}

/// A pool (not disabled) for every zone that has nodes.
async fn pools(client: &kube::Client, zones: &BTreeSet<String>) -> Result<String, String> {
    let api = Api::<overlay_core::crd::OverlayIPPool>::all(client.clone());
    let list = api.list(&ListParams::default()).await.map_err(|e| {
        format!("cannot list OverlayIPPools ({e}): install the CRDs, then create a pool per zone (overlayctl install --pool ZONE=CIDR)")
    })?;
    let have: BTreeSet<&str> = list
        .items
        .iter()
        .filter(|p| p.spec.disabled != Some(true))
        .map(|p| p.spec.zone.as_str())
        .collect();
    let without: Vec<&str> = zones
        .iter()
        .map(String::as_str)
        .filter(|z| !have.contains(z))
        .collect();
    if without.is_empty() {
        Ok(format!(
            "{} pool(s); every node zone has one",
            list.items.len()
        ))
    } else {
        Err(format!(
            "no enabled OverlayIPPool for zone(s) {}: nodes there get no overlay IP; create one each (overlayctl install --pool ZONE=CIDR[,GATEWAY], or deploy/samples/overlayippool.yaml)",
            without.join(", ")
        ))
    }
}
