//! `overlayctl status`: nodes with their overlay IP, gateway, zone and
//! Configured condition; StaticRoutes with per-node state and messages.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::ObjectList;
use overlay_core::crd::{NodeOverlayIp, StaticRoute, decode_node_overlay_ip, decode_static_route};
use overlay_core::invalid::FieldProblem;
use overlay_core::k8s::node_info;
use overlay_core::{GatewayChoice, NodeInfo, OverlayIpRecord, StaticRouteRecord};
use serde::Serialize;

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

/// Builds the status from the nodes and the records as the adapters read
/// them (the one lenient decoding of [`overlay_core::crd`]).
pub fn collect(
    nodes: &[NodeInfo],
    ips: &[OverlayIpRecord],
    routes: &[StaticRouteRecord],
) -> ClusterStatus {
    let mut names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    names.extend(ips.iter().map(|i| i.name.as_str()));
    names.sort_unstable();
    names.dedup();
    ClusterStatus {
        nodes: names
            .into_iter()
            .map(|name| {
                let node = nodes.iter().find(|n| n.name == name);
                let ip = ips.iter().find(|i| i.name == name);
                node_status(name, node, ip)
            })
            .collect(),
        static_routes: routes.iter().map(route_status).collect(),
        ..ClusterStatus::default()
    }
}

fn node_status(name: &str, node: Option<&NodeInfo>, ip: Option<&OverlayIpRecord>) -> NodeStatus {
    let zone = node
        .and_then(|n| n.zone.as_ref().map(ToString::to_string))
        .or_else(|| ip.and_then(|i| i.labels.get("zone").cloned()))
        .unwrap_or_default();
    let agent = ip.and_then(|i| i.agent.as_ref());
    let message = if node.is_none() {
        "node no longer exists".into()
    } else if ip.is_none() {
        "no NodeOverlayIp yet".into()
    } else {
        agent.map(|a| a.message.clone()).unwrap_or_default()
    };
    let interface = match agent {
        Some(a) if a.interface.is_empty() => a.interface_label.clone(),
        Some(a) => format!("{}/{}", a.interface, a.interface_label),
        None => String::new(),
    };
    NodeStatus {
        node: name.to_owned(),
        zone,
        ip_addr: ip
            .and_then(|i| i.ip_addr)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        gateway: ip
            .and_then(|i| i.gateway)
            .map(|g| g.to_string())
            .unwrap_or_default(),
        configured: match agent {
            Some(a) if a.configured => "True",
            Some(_) => "False",
            None => "Unknown",
        }
        .into(),
        interface,
        message,
    }
}

fn route_status(r: &StaticRouteRecord) -> RouteStatus {
    let spec = r.spec.as_ref().ok();
    let gateway = match spec.map(|s| &s.gateway) {
        Some(GatewayChoice::Fixed(g)) => g.to_string(),
        Some(GatewayChoice::Discover(p)) => format!("from {p}"),
        Some(GatewayChoice::Overlay) => "overlay".into(),
        None => String::new(),
    };
    RouteStatus {
        name: r.name.clone(),
        subnet: spec.map(|s| s.subnet.to_string()).unwrap_or_default(),
        gateway,
        table: spec.and_then(|s| s.table),
        metric: spec.and_then(|s| s.metric),
        deleting: r.deleting,
        nodes: r
            .node_status
            .iter()
            .map(|e| RouteNodeStatus {
                hostname: e.hostname.clone(),
                state: e.state.to_string(),
                device: e.device.clone(),
                gateway: e.gateway.clone(),
                message: e.message.clone(),
            })
            .collect(),
    }
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
            node_table(&mut t, &s.nodes, wide);
            t.push('\n');
            route_table(&mut t, &s.static_routes, wide);
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

fn node_table(t: &mut String, nodes: &[NodeStatus], wide: bool) {
    let _ = write!(
        t,
        "{:<24} {:<10} {:<20} {:<16} {:<10}",
        "NODE", "ZONE", "OVERLAY IP", "GATEWAY", "CONFIGURED"
    );
    if wide {
        let _ = write!(t, " {:<14} MESSAGE", "INTERFACE");
    }
    t.push('\n');
    for n in nodes {
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
}

fn route_table(t: &mut String, routes: &[RouteStatus], wide: bool) {
    let _ = write!(
        t,
        "{:<28} {:<18} {:<18} {:<8}",
        "STATICROUTE", "SUBNET", "GATEWAY", "NODES"
    );
    if wide {
        let _ = write!(t, " {:<6} {:<6}", "TABLE", "METRIC");
    }
    t.push('\n');
    for r in routes {
        let applied = r.nodes.iter().filter(|n| n.state == "Applied").count();
        let name = if r.deleting {
            format!("{} (deleting)", r.name)
        } else {
            r.name.clone()
        };
        let nodes = format!("{applied}/{}", r.nodes.len());
        let _ = write!(
            t,
            "{:<28} {:<18} {:<18} {:<8}",
            name, r.subnet, r.gateway, nodes
        );
        if wide {
            let opt = |v: Option<u32>| v.map_or_else(|| "-".into(), |x| x.to_string());
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
}

/// Lists every object of `K` raw and decodes each with `decode` (the
/// adapters' lenient decoding), so that one object that does not convert
/// costs only itself: what converts is shown, and its problem goes into
/// `invalid`.
async fn list_leniently<K, R>(
    client: &kube::Client,
    kind: &str,
    decode: fn(&DynamicObject) -> (R, Option<FieldProblem>),
    invalid: &mut Vec<InvalidObject>,
) -> Result<Vec<R>, kube::Error>
where
    K: kube::Resource<DynamicType = ()>,
{
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::erase::<K>(&()));
    let list: ObjectList<DynamicObject> = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .map(|o| decoded(o, kind, decode, invalid))
        .collect())
}

/// `o` decoded; its problem, if any, goes into `invalid`.
fn decoded<R>(
    o: &DynamicObject,
    kind: &str,
    decode: fn(&DynamicObject) -> (R, Option<FieldProblem>),
    invalid: &mut Vec<InvalidObject>,
) -> R {
    let (record, problem) = decode(o);
    if let Some(p) = problem {
        invalid.push(InvalidObject {
            kind: kind.to_owned(),
            name: o.metadata.name.clone().unwrap_or_default(),
            field: p.field,
            problem: p.message,
        });
    }
    record
}

/// Reads nodes, NodeOverlayIps and StaticRoutes from the cluster.
pub async fn fetch(client: kube::Client) -> Result<ClusterStatus, String> {
    let lp = ListParams::default();
    let nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .map_err(|e| format!("listing Nodes: {e}"))?;
    let mut invalid = Vec::new();
    let ips = list_leniently::<NodeOverlayIp, _>(
        &client,
        "NodeOverlayIp",
        decode_node_overlay_ip,
        &mut invalid,
    )
    .await
    .map_err(|e| {
        format!(
            "listing NodeOverlayIps (are the CRDs installed? kubectl apply -f deploy/crds): {e}"
        )
    })?;
    let routes =
        list_leniently::<StaticRoute, _>(&client, "StaticRoute", decode_static_route, &mut invalid)
            .await
            .map_err(|e| format!("listing StaticRoutes: {e}"))?;
    let nodes: Vec<NodeInfo> = nodes.items.iter().map(node_info).collect();
    let mut status = collect(&nodes, &ips, &routes);
    status.invalid = invalid;
    status.cluster_id = cluster_id(&client).await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode<R>(f: fn(&DynamicObject) -> (R, Option<FieldProblem>), v: serde_json::Value) -> R {
        let o: DynamicObject = serde_json::from_value(v).unwrap();
        let (r, problem) = f(&o);
        assert_eq!(problem, None);
        r
    }

    fn fixtures() -> (Vec<NodeInfo>, Vec<OverlayIpRecord>, Vec<StaticRouteRecord>) {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "10.176.162.151",
            "labels": {"topology.kubernetes.io/zone": "dal10"}}}))
        .unwrap();
        let ip = decode(
            decode_node_overlay_ip,
            json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
            "metadata": {"name": "10.176.162.151", "labels": {"zone": "dal10"}},
            "status": {"ipAddr": "192.168.100.4/24", "gateway": "192.168.100.1", "interface": "eth0", "interfaceLabel": "tmp0",
                "conditions": [{"type": "Configured", "status": "True", "reason": "AddressConfigured",
                    "message": "ok", "lastTransitionTime": "2026-11-26T00:00:00Z"}]}}),
        );
        let route = decode(
            decode_static_route,
            json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
            "metadata": {"name": "onprem"}, "spec": {"subnet": "192.168.0.0/24", "table": 100},
            "status": {"nodeStatus": [
                {"hostname": "10.176.162.151", "device": "tmp0", "gateway": "192.168.100.1", "state": "Applied"},
                {"hostname": "10.176.162.152", "device": "", "gateway": "", "state": "Failed", "message": "refused: overlaps"}]}}),
        );
        (vec![node_info(&node)], vec![ip], vec![route])
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
    fn a_bad_object_is_listed_as_invalid_with_the_field_and_shown_as_far_as_it_converts() {
        // List items may come without apiVersion/kind.
        let good: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "good"}, "spec": {"subnet": "192.0.2.0/24", "metric": 5}}))
        .unwrap();
        let bad: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "bad", "finalizers": ["x"]},
            "spec": {"subnet": "192.0.2.0/24", "metric": 4294967296u64}}))
        .unwrap();
        let mut invalid = Vec::new();
        let g = decoded(&good, "StaticRoute", decode_static_route, &mut invalid);
        assert!(invalid.is_empty(), "{invalid:?}");
        let b = decoded(&bad, "StaticRoute", decode_static_route, &mut invalid);
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].field, "spec.metric");
        let s = collect(&[], &[], &[g, b]);
        assert_eq!(s.static_routes[0].metric, Some(5));
        assert_eq!(s.static_routes[1].name, "bad");
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
