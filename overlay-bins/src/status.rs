//! `overlayctl status`: nodes with their overlay IP, gateway, zone and
//! Configured condition; StaticRoutes with per-node state and messages.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::ObjectList;
use overlay_core::crd::{NodeOverlayIp, StaticRoute, decode_node_overlay_ip, decode_static_route};
use overlay_core::invalid::FieldProblem;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables.
    Table,
    /// Tables with more columns (parent interface, table, metric, messages).
    Wide,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// One node's overlay state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Zone label.
    pub zone: String,
    /// Overlay address.
    pub ip_addr: String,
    /// Overlay gateway.
    pub gateway: String,
    /// `True`/`False`/`Unknown` from the agent's Configured condition.
    pub configured: String,
    /// Parent interface and overlay interface (`eth0/tmp0`).
    pub interface: String,
    /// Why it is not configured, when it is not.
    pub message: String,
}

/// One node's state of one StaticRoute.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteNodeStatus {
    /// Node.
    pub hostname: String,
    /// Applied / Failed / Pending.
    pub state: String,
    /// Device.
    pub device: String,
    /// Gateway.
    pub gateway: String,
    /// Detail.
    pub message: String,
}

/// One StaticRoute.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Name.
    pub name: String,
    /// Subnet.
    pub subnet: String,
    /// Gateway choice as written.
    pub gateway: String,
    /// Table, if set.
    pub table: Option<u32>,
    /// Metric, if set.
    pub metric: Option<u32>,
    /// Being deleted.
    pub deleting: bool,
    /// Per node.
    pub nodes: Vec<RouteNodeStatus>,
}

/// An object that does not convert to overlay's types (stored before the
/// CRD validated it, or written by another version).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InvalidObject {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// The field that is wrong.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The cluster id in the IPAM owner markers, and where it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<ClusterId>,
    /// Nodes (every Node, with or without a NodeOverlayIp).
    pub nodes: Vec<NodeStatus>,
    /// StaticRoutes.
    pub static_routes: Vec<RouteStatus>,
    /// Objects overlay cannot fully read; empty when all are fine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<InvalidObject>,
}

/// The cluster id and its source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterId {
    /// The id.
    pub id: String,
    /// Where it was read: the running controller's Lease, or derived here
    /// from the kube-system Namespace (what a controller without
    /// `clusterId` uses).
    pub source: String,
}

/// The cluster id: as the running controller announces it on its Lease
/// ([`overlay_core::k8s::CLUSTER_ID_ANNOTATION`]), else derived the way a
/// controller without `clusterId` does.
pub async fn cluster_id(client: &kube::Client) -> Option<ClusterId> {
    use k8s_openapi::api::coordination::v1::Lease;
    let lp = ListParams::default().fields("metadata.name=overlay-controller");
    if let Ok(leases) = Api::<Lease>::all(client.clone()).list(&lp).await {
        for l in leases.items {
            if let Some(id) = l
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(overlay_core::k8s::CLUSTER_ID_ANNOTATION))
            {
                let ns = l.metadata.namespace.unwrap_or_default();
                return Some(ClusterId {
                    id: id.clone(),
                    source: format!("Lease {ns}/overlay-controller of the running controller"),
                });
            }
        }
    }
    overlay_core::k8s::cluster_uid(client.clone())
        .await
        .ok()
        .map(|id| ClusterId {
            id,
            source: "kube-system Namespace UID (no running controller announced one; a clusterId in its config would win)".into(),
        })
}

/// Builds the status from the objects.
pub fn collect(nodes: &[Node], ips: &[NodeOverlayIp], routes: &[StaticRoute]) -> ClusterStatus {
    let mut out = ClusterStatus::default();
    let mut names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    for ip in ips {
        if let Some(n) = &ip.metadata.name
            && !names.contains(n)
        {
            names.push(n.clone());
        }
    }
    names.sort();
    for name in names {
        let ip = ips
            .iter()
            .find(|i| i.metadata.name.as_deref() == Some(&name));
        let node = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&name));
        let zone = node
            .map(overlay_core::k8s::node_info)
            .and_then(|i| i.zone.map(|z| z.to_string()))
            .or_else(|| ip.and_then(|i| i.metadata.labels.as_ref()?.get("zone").cloned()))
            .unwrap_or_default();
        let status = ip.and_then(|i| i.status.clone()).unwrap_or_default();
        let cond = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Configured");
        let mut message = cond.map(|c| c.message.clone()).unwrap_or_default();
        if node.is_none() {
            message = "node no longer exists".into();
        } else if ip.is_none() {
            message = "no NodeOverlayIp yet".into();
        }
        out.nodes.push(NodeStatus {
            node: name,
            zone,
            ip_addr: status.ip_addr.clone().unwrap_or_default(),
            gateway: status.gateway.clone().unwrap_or_default(),
            configured: cond
                .map(|c| c.status.clone())
                .unwrap_or_else(|| "Unknown".into()),
            interface: match (&status.interface, &status.interface_label) {
                (Some(p), Some(l)) => format!("{p}/{l}"),
                (None, Some(l)) => l.clone(),
                _ => String::new(),
            },
            message,
        });
    }
    for r in routes {
        let gateway = match (&r.spec.gateway, &r.spec.gateway_from) {
            (Some(g), _) => g.clone(),
            (None, Some(p)) => format!("from {p}"),
            (None, None) => "overlay".into(),
        };
        out.static_routes.push(RouteStatus {
            name: r.metadata.name.clone().unwrap_or_default(),
            subnet: r.spec.subnet.clone(),
            gateway,
            table: r.spec.table,
            metric: r.spec.metric,
            deleting: r.metadata.deletion_timestamp.is_some(),
            nodes: r
                .status
                .iter()
                .flat_map(|s| s.node_status.iter())
                .map(|e| RouteNodeStatus {
                    hostname: e.hostname.clone(),
                    state: e.state.clone().unwrap_or_else(|| "Applied".into()),
                    device: e.device.clone(),
                    gateway: e.gateway.clone(),
                    message: e.message.clone().unwrap_or_default(),
                })
                .collect(),
        });
    }
    out
}

/// Renders the status.
pub fn render(s: &ClusterStatus, output: Output) -> Result<String, String> {
    match output {
        Output::Json => serde_json::to_string_pretty(s)
            .map(|j| j + "\n")
            .map_err(|e| e.to_string()),
        Output::Yaml => serde_yaml::to_string(s).map_err(|e| e.to_string()),
        Output::Table | Output::Wide => {
            let wide = output == Output::Wide;
            let mut t = String::new();
            if let Some(c) = &s.cluster_id {
                let _ = writeln!(t, "CLUSTER ID: {} ({})\n", c.id, c.source);
            }
            let _ = write!(
                t,
                "{:<24} {:<10} {:<20} {:<16} {:<10}",
                "NODE", "ZONE", "OVERLAY IP", "GATEWAY", "CONFIGURED"
            );
            if wide {
                let _ = write!(t, " {:<14} MESSAGE", "INTERFACE");
            }
            t.push('\n');
            for n in &s.nodes {
                let _ = write!(
                    t,
                    "{:<24} {:<10} {:<20} {:<16} {:<10}",
                    n.node, n.zone, n.ip_addr, n.gateway, n.configured
                );
                if wide {
                    let _ = write!(t, " {:<14} {}", n.interface, n.message);
                }
                t.push('\n');
            }
            t.push('\n');
            let _ = write!(
                t,
                "{:<28} {:<18} {:<18} {:<8}",
                "STATICROUTE", "SUBNET", "GATEWAY", "NODES"
            );
            if wide {
                let _ = write!(t, " {:<6} {:<6}", "TABLE", "METRIC");
            }
            t.push('\n');
            for r in &s.static_routes {
                let applied = r.nodes.iter().filter(|n| n.state == "Applied").count();
                let name = if r.deleting {
                    format!("{} (deleting)", r.name)
                } else {
                    r.name.clone()
                };
                let _ = write!(
                    t,
                    "{:<28} {:<18} {:<18} {:<8}",
                    name,
                    r.subnet,
                    r.gateway,
                    format!("{applied}/{}", r.nodes.len())
                );
                if wide {
                    let opt =
                        |v: Option<u32>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
                    let _ = write!(t, " {:<6} {:<6}", opt(r.table), opt(r.metric));
                }
                t.push('\n');
                for n in r.nodes.iter().filter(|n| wide || n.state != "Applied") {
                    let _ = writeln!(
                        t,
                        "  {:<24} {:<8} {:<8} {:<16} {}",
                        n.hostname, n.state, n.device, n.gateway, n.message
                    );
                }
            }
            if !s.invalid.is_empty() {
                let _ = writeln!(
                    t,
                    "\nINVALID OBJECTS (skipped where they cannot be used; fix or delete them)"
                );
                for i in &s.invalid {
                    let _ = writeln!(t, "  {}/{}: {}: {}", i.kind, i.name, i.field, i.problem);
                }
            }
            Ok(t)
        }
    }
}

/// Lists `K` as raw objects, so that one object that does not fit `K`
/// costs only itself: it is reported in `invalid` (with what `problem`
/// finds), and kept with its metadata only.
async fn list_leniently<K>(
    client: &kube::Client,
    kind: &str,
    problem: fn(&DynamicObject) -> Option<FieldProblem>,
    invalid: &mut Vec<InvalidObject>,
) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + Default,
{
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::erase::<K>(&()));
    let list: ObjectList<DynamicObject> = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .map(|o| typed_or_stub(o, kind, problem, invalid))
        .collect())
}

/// `o` as `K`; when it does not convert, `K` with `o`'s metadata only. Either
/// way a problem (what `problem` finds, or the conversion error) goes into
/// `invalid`.
fn typed_or_stub<K>(
    o: DynamicObject,
    kind: &str,
    problem: fn(&DynamicObject) -> Option<FieldProblem>,
    invalid: &mut Vec<InvalidObject>,
) -> K
where
    K: kube::Resource<DynamicType = ()> + DeserializeOwned + Default,
{
    let typed = serde_json::to_value(&o).and_then(serde_json::from_value::<K>);
    let problem = problem(&o).or_else(|| {
        typed
            .as_ref()
            .err()
            .map(|e| FieldProblem::new("object", e.to_string()))
    });
    if let Some(p) = problem {
        invalid.push(InvalidObject {
            kind: kind.to_owned(),
            name: o.metadata.name.clone().unwrap_or_default(),
            field: p.field,
            problem: p.message,
        });
    }
    typed.unwrap_or_else(|_| {
        let mut stub = K::default();
        *stub.meta_mut() = o.metadata;
        stub
    })
}

/// Reads nodes, NodeOverlayIps and StaticRoutes from the cluster.
pub async fn fetch(client: kube::Client) -> Result<ClusterStatus, String> {
    let lp = ListParams::default();
    let nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .map_err(|e| format!("listing Nodes: {e}"))?;
    let mut invalid = Vec::new();
    let ips: Vec<NodeOverlayIp> = list_leniently(
        &client,
        "NodeOverlayIp",
        |o| decode_node_overlay_ip(o).1,
        &mut invalid,
    )
    .await
    .map_err(|e| {
        format!(
            "listing NodeOverlayIps (are the CRDs installed? kubectl apply -f deploy/crds): {e}"
        )
    })?;
    let routes: Vec<StaticRoute> = list_leniently(
        &client,
        "StaticRoute",
        |o| decode_static_route(o).1,
        &mut invalid,
    )
    .await
    .map_err(|e| format!("listing StaticRoutes: {e}"))?;
    let mut status = collect(&nodes.items, &ips, &routes);
    status.invalid = invalid;
    status.cluster_id = cluster_id(&client).await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixtures() -> (Vec<Node>, Vec<NodeOverlayIp>, Vec<StaticRoute>) {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "10.176.162.151",
            "labels": {"topology.kubernetes.io/zone": "dal10"}}}))
        .unwrap();
        let ip: NodeOverlayIp = serde_json::from_value(json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
            "metadata": {"name": "10.176.162.151", "labels": {"zone": "dal10"}},
            "status": {"ipAddr": "192.168.100.4/24", "gateway": "192.168.100.1", "interface": "eth0", "interfaceLabel": "tmp0",
                "conditions": [{"type": "Configured", "status": "True", "reason": "AddressConfigured",
                    "message": "ok", "lastTransitionTime": "2026-11-26T00:00:00Z"}]}})).unwrap();
        let route: StaticRoute = serde_json::from_value(json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
            "metadata": {"name": "onprem"}, "spec": {"subnet": "192.168.0.0/24", "table": 100},
            "status": {"nodeStatus": [
                {"hostname": "10.176.162.151", "device": "tmp0", "gateway": "192.168.100.1", "state": "Applied"},
                {"hostname": "10.176.162.152", "device": "", "gateway": "", "state": "Failed", "message": "refused: overlaps"}]}})).unwrap();
        (vec![node], vec![ip], vec![route])
    }

    #[test]
    fn tables_show_nodes_routes_and_failures() {
        let (n, i, r) = fixtures();
        let s = collect(&n, &i, &r);
        let t = render(&s, Output::Table).unwrap();
        assert!(
            t.contains("10.176.162.151") && t.contains("192.168.100.4/24") && t.contains("True"),
            "{t}"
        );
        assert!(t.contains("1/2"), "{t}");
        assert!(t.contains("refused: overlaps"), "failures are listed: {t}");
        let w = render(&s, Output::Wide).unwrap();
        assert!(w.contains("eth0/tmp0") && w.contains("100"), "{w}");
    }

    #[test]
    fn the_cluster_id_leads_the_table_and_is_in_json() {
        let (n, i, r) = fixtures();
        let mut s = collect(&n, &i, &r);
        assert!(!render(&s, Output::Table).unwrap().contains("CLUSTER ID"));
        s.cluster_id = Some(ClusterId {
            id: "0b7e5c52-5d0e-4a8e-9a57-1d6f3c2a0001".into(),
            source: "Lease overlay-system/overlay-controller of the running controller".into(),
        });
        let t = render(&s, Output::Table).unwrap();
        assert!(
            t.starts_with(
                "CLUSTER ID: 0b7e5c52-5d0e-4a8e-9a57-1d6f3c2a0001 (Lease overlay-system/"
            ),
            "{t}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(&s, Output::Json).unwrap()).unwrap();
        assert_eq!(j["clusterId"]["id"], "0b7e5c52-5d0e-4a8e-9a57-1d6f3c2a0001");
    }

    #[test]
    fn listed_objects_convert_one_by_one_and_a_bad_one_is_kept_as_a_stub() {
        // List items may come without apiVersion/kind.
        let good: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "good"}, "spec": {"subnet": "192.0.2.0/24", "metric": 5}}))
        .unwrap();
        let bad: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "bad", "finalizers": ["x"]},
            "spec": {"subnet": "192.0.2.0/24", "metric": 4294967296u64}}))
        .unwrap();
        let mut invalid = Vec::new();
        let problem = |o: &DynamicObject| decode_static_route(o).1;
        let g: StaticRoute = typed_or_stub(good, "StaticRoute", problem, &mut invalid);
        assert_eq!(g.spec.metric, Some(5));
        assert!(invalid.is_empty(), "{invalid:?}");
        let b: StaticRoute = typed_or_stub(bad, "StaticRoute", problem, &mut invalid);
        assert_eq!(b.metadata.name.as_deref(), Some("bad"));
        assert_eq!(
            b.metadata.finalizers.as_deref(),
            Some(&["x".to_owned()][..])
        );
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].field, "spec.metric");
    }

    #[test]
    fn invalid_objects_are_listed_with_the_field() {
        let (n, i, r) = fixtures();
        let mut s = collect(&n, &i, &r);
        assert!(!render(&s, Output::Table).unwrap().contains("INVALID"));
        s.invalid.push(InvalidObject {
            kind: "StaticRoute".into(),
            name: "old".into(),
            field: "spec.metric".into(),
            problem: "invalid value: integer `4294967296`, expected u32".into(),
        });
        let t = render(&s, Output::Table).unwrap();
        assert!(
            t.contains("INVALID OBJECTS") && t.contains("StaticRoute/old: spec.metric"),
            "{t}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(&s, Output::Json).unwrap()).unwrap();
        assert_eq!(j["invalid"][0]["field"], "spec.metric");
    }

    #[test]
    fn json_and_yaml_carry_the_same_data() {
        let (n, i, r) = fixtures();
        let s = collect(&n, &i, &r);
        let j: serde_json::Value =
            serde_json::from_str(&render(&s, Output::Json).unwrap()).unwrap();
        let y: serde_json::Value =
            serde_yaml::from_str(&render(&s, Output::Yaml).unwrap()).unwrap();
        assert_eq!(j, y);
        assert_eq!(j["staticRoutes"][0]["nodes"][1]["state"], "Failed");
        assert_eq!(j["nodes"][0]["zone"], "dal10");
    }
}
