//! The custom resources `NodeOverlayIp` and `StaticRoute`
//! (`iks.ibm.com/v1alpha1`, cluster-scoped), as the original deployments
//! named them, and their conversion into the domain records.
//!
//! `deploy/crds/*.yaml` is generated from these types by `overlayctl crds`;
//! a test fails when the committed YAML drifts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector as K8sSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::model::RouteState;
use crate::parse::{Cidr, LabelSelector, ParseError, Requirement, parse_ip, parse_ip_with_prefix};
use crate::traits::{
    AgentStatus, GatewayChoice, NodeRouteStatus, OverlayIpRecord, StaticRouteRecord,
    StaticRouteSpecModel,
};

/// CEL rule: a canonical CIDR (host bits zero).
const CEL_CIDR: &str = "isCIDR(self) && cidr(self) == cidr(self).masked()";
/// CEL rule: an address with prefix length.
const CEL_IP_PREFIX: &str = "isCIDR(self)";
/// CEL rule: an IP address.
const CEL_IP: &str = "isIP(self)";

/// Fields of a `NodeOverlayIp` besides metadata and status. The original
/// objects carry none, so the kind has no `spec`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "iks.ibm.com",
    version = "v1alpha1",
    kind = "NodeOverlayIp",
    plural = "nodeoverlayips",
    shortname = "noip",
    shortname = "overlayip",
    status = "NodeOverlayIpStatus",
    no_spec,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.ipAddr"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".status.gateway"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".metadata.labels.zone"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Interface","type":"string","priority":1,"jsonPath":".status.interfaceLabel"}"#
)]
pub struct NodeOverlayIpFields {}

/// Status of a `NodeOverlayIp`: `ipAddr`/`gateway` are the controller's,
/// the rest the agent's (separate server-side-apply field managers).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeOverlayIpStatus {
    /// Reserved overlay address with prefix length, e.g. `192.168.100.4/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = CEL_IP_PREFIX)]
    pub ip_addr: Option<String>,
    /// Gateway of the overlay subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = CEL_IP)]
    pub gateway: Option<String>,
    /// Parent interface the agent used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Name of the overlay (macvlan) interface, e.g. `tmp0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_label: Option<String>,
    /// Conditions reported by the agent (`Configured`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
}

/// Desired state of a `StaticRoute`: route `subnet` on every selected node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "iks.ibm.com",
    version = "v1alpha1",
    kind = "StaticRoute",
    plural = "staticroutes",
    shortname = "sr",
    status = "StaticRouteStatus",
    validation = Rule::new("!has(self.spec.gateway) || !has(self.spec.gatewayFrom)").message("set at most one of spec.gateway and spec.gatewayFrom"),
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".spec.gateway"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.nodeStatus[*].hostname"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Table","type":"integer","priority":1,"jsonPath":".spec.table"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StaticRouteSpec {
    /// Destination subnet, e.g. `192.168.0.0/24` (host bits zero).
    #[x_kube(validation = Rule::new(CEL_CIDR).message("subnet must be a CIDR with host bits zero, e.g. 192.168.0.0/24"))]
    pub subnet: String,
    /// Fixed next hop. When neither this nor `gatewayFrom` is set, the
    /// node's overlay gateway is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(CEL_IP).message("gateway must be an IP address"))]
    pub gateway: Option<String>,
    /// Use the gateway of the kernel route covering this prefix, e.g.
    /// `10.0.0.0/8` (the private network). Needs no overlay IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(CEL_CIDR).message("gatewayFrom must be a CIDR with host bits zero, e.g. 10.0.0.0/8"))]
    pub gateway_from: Option<String>,
    /// Routing table: 1–252, 254 (main) or 256 and up; default main (254).
    /// 0, 253 (default) and 255 (local) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967294u32))]
    #[x_kube(validation = Rule::new("self != 0 && self != 253 && self != 255").message("table 0, 253 (default) and 255 (local) are reserved"))]
    pub table: Option<u32>,
    /// Route metric (priority); default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// Nodes the route applies to; all nodes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<K8sSelector>,
}

/// Status of a `StaticRoute`: one entry per node, each written by that
/// node's agent under its own field manager.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StaticRouteStatus {
    /// Per-node state, keyed by `hostname`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["hostname"]))]
    pub node_status: Vec<NodeStatusEntry>,
}

/// One node's entry in `StaticRoute.status.nodeStatus`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusEntry {
    /// Node name (the list-map key).
    pub hostname: String,
    /// Output device of the route.
    #[serde(default)]
    pub device: String,
    /// Gateway the route uses.
    #[serde(default)]
    pub gateway: String,
    /// `Applied`, `Failed` or `Pending`; absent in objects written by the
    /// original agents (treated as Applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Applied', 'Failed', 'Pending']").message("state is Applied, Failed or Pending"))]
    pub state: Option<String>,
    /// Why the route is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Both CRDs, as YAML documents separated by `---`, in a stable order.
pub fn crds_yaml() -> Result<Vec<(String, String)>, serde_json::Error> {
    let mut out = Vec::new();
    for crd in [NodeOverlayIp::crd(), StaticRoute::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let value = serde_json::to_value(&crd)?;
        out.push((name, to_yaml(&value)));
    }
    Ok(out)
}

/// Minimal deterministic JSON→YAML writer (block style, quoted strings) so
/// the generated files do not depend on a YAML library's formatting.
fn to_yaml(v: &serde_json::Value) -> String {
    let mut s = String::new();
    write_yaml(v, 0, &mut s);
    s
}

fn write_yaml(v: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                out.push_str(&pad);
                out.push_str(&yaml_key(k));
                out.push(':');
                write_child(val, indent, out);
            }
        }
        Value::Array(a) => {
            for val in a {
                out.push_str(&pad);
                out.push('-');
                match val {
                    Value::Object(m) if !m.is_empty() => {
                        // First key on the dash line, the rest indented.
                        let mut first = true;
                        for (k, child) in m {
                            if first {
                                out.push(' ');
                                first = false;
                            } else {
                                out.push_str(&pad);
                                out.push_str("  ");
                            }
                            out.push_str(&yaml_key(k));
                            out.push(':');
                            write_child(child, indent + 2, out);
                        }
                    }
                    _ => write_child(val, indent, out),
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

fn write_child(val: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value;
    match val {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_yaml(val, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_yaml(val, indent + 2, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        scalar => {
            out.push(' ');
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

fn yaml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        k.to_owned()
    } else {
        serde_json::Value::String(k.to_owned()).to_string()
    }
}

fn yaml_scalar(v: &serde_json::Value) -> String {
    // JSON is valid YAML for scalars; strings are always double-quoted.
    v.to_string()
}

/// Reads the CEL-equivalent checks client-side and turns a StaticRoute spec
/// into the validated model. Errors name the field.
pub fn static_route_model(spec: &StaticRouteSpec) -> Result<StaticRouteSpecModel, ParseError> {
    let subnet = Cidr::parse("spec.subnet", &spec.subnet)?;
    let gateway = match (&spec.gateway, &spec.gateway_from) {
        (Some(_), Some(g)) => {
            return Err(ParseError::new(
                "spec.gatewayFrom",
                g,
                "set at most one of spec.gateway and spec.gatewayFrom",
            ));
        }
        (Some(ip), None) => GatewayChoice::Fixed(parse_ip("spec.gateway", ip)?),
        (None, Some(p)) => GatewayChoice::Discover(Cidr::parse("spec.gatewayFrom", p)?),
        (None, None) => GatewayChoice::Overlay,
    };
    if let Some(t) = spec.table
        && matches!(t, 0 | 253 | 255 | u32::MAX)
    {
        return Err(ParseError::new(
            "spec.table",
            &t.to_string(),
            "tables 0, 253 (default), 255 (local) and 4294967295 are reserved; use 1-252 or 256 and up, or leave unset for main",
        ));
    }
    let selector = match &spec.node_selector {
        Some(s) => selector_from_k8s(s)?,
        None => LabelSelector::default(),
    };
    Ok(StaticRouteSpecModel {
        subnet,
        gateway,
        table: spec.table,
        metric: spec.metric,
        selector,
    })
}

/// Converts a Kubernetes `LabelSelector` (matchLabels/matchExpressions).
pub fn selector_from_k8s(s: &K8sSelector) -> Result<LabelSelector, ParseError> {
    let mut reqs: Vec<Requirement> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        reqs.push(match e.operator.as_str() {
            "In" => Requirement::In(e.key.clone(), values),
            "NotIn" => Requirement::NotIn(e.key.clone(), values),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            other => {
                return Err(ParseError::new(
                    "spec.nodeSelector.matchExpressions.operator",
                    other,
                    "use In, NotIn, Exists or DoesNotExist",
                ));
            }
        });
    }
    Ok(LabelSelector::from_requirements(reqs))
}

fn is_deleting(meta: &kube::core::ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

impl From<&NodeOverlayIp> for OverlayIpRecord {
    fn from(o: &NodeOverlayIp) -> Self {
        let status = o.status.clone().unwrap_or_default();
        let configured = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Configured");
        let agent = match (&status.interface, &status.interface_label, configured) {
            (None, None, None) => None,
            (i, l, c) => Some(AgentStatus {
                interface: i.clone().unwrap_or_default(),
                interface_label: l.clone().unwrap_or_default(),
                configured: c.is_some_and(|c| c.status == "True"),
                reason: c.map(|c| c.reason.clone()).unwrap_or_default(),
                message: c.map(|c| c.message.clone()).unwrap_or_default(),
            }),
        };
        OverlayIpRecord {
            name: o.metadata.name.clone().unwrap_or_default(),
            labels: o.metadata.labels.clone().unwrap_or_default(),
            finalizers: o.metadata.finalizers.clone().unwrap_or_default(),
            deleting: is_deleting(&o.metadata),
            owner_uid: o
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.kind == "Node")
                .map(|r| r.uid.clone()),
            ip_addr: status
                .ip_addr
                .as_deref()
                .and_then(|s| parse_ip_with_prefix("status.ipAddr", s).ok()),
            gateway: status
                .gateway
                .as_deref()
                .and_then(|s| parse_ip("status.gateway", s).ok()),
            agent,
        }
    }
}

impl From<&StaticRoute> for StaticRouteRecord {
    fn from(r: &StaticRoute) -> Self {
        let node_status = r
            .status
            .iter()
            .flat_map(|s| s.node_status.iter())
            .map(|e| NodeRouteStatus {
                hostname: e.hostname.clone(),
                device: e.device.clone(),
                gateway: e.gateway.clone(),
                state: match e.state.as_deref() {
                    Some("Failed") => RouteState::Failed,
                    Some("Pending") => RouteState::Pending,
                    _ => RouteState::Applied,
                },
                message: e.message.clone().unwrap_or_default(),
            })
            .collect();
        StaticRouteRecord {
            name: r.metadata.name.clone().unwrap_or_default(),
            spec: static_route_model(&r.spec).map_err(|e| e.to_string()),
            finalizers: r.metadata.finalizers.clone().unwrap_or_default(),
            deleting: is_deleting(&r.metadata),
            node_status,
        }
    }
}

impl From<&NodeRouteStatus> for NodeStatusEntry {
    fn from(s: &NodeRouteStatus) -> Self {
        NodeStatusEntry {
            hostname: s.hostname.clone(),
            device: s.device.clone(),
            gateway: s.gateway.clone(),
            state: Some(s.state.to_string()),
            message: (!s.message.is_empty()).then(|| s.message.clone()),
        }
    }
}
