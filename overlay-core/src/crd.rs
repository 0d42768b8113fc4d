//! The custom resources `NodeOverlayIp` and `StaticRoute`
//! (`iks.ibm.com/v1alpha1`, cluster-scoped), as the original deployments
//! named them, and their conversion into the domain records; and the three
//! kinds of the Kubernetes-native IPAM, `OverlayIPPool`,
//! `OverlayIPAllocation` and `OverlayIPClaim` (same group, cluster-scoped;
//! read into [`crate::ippool`]'s records by `k8s::KubePoolStore`).
//!
//! `deploy/crds/*.yaml` is generated from these types by `overlayctl crds`;
//! a test fails when the committed YAML drifts.
//!
//! The schemas install on every kube-apiserver from 1.30 on. Every list,
//! map and string is bounded (`maxItems`, `maxProperties`, `maxLength`), so
//! the API server's CEL cost estimate stays small; formats are checked with
//! `pattern`, `enum` and `minimum`/`maximum`, which cost nothing; the two
//! CEL rules left (one of `gateway`/`gatewayFrom`, reserved tables) use only
//! `has()` and integer comparisons. The CEL IP and CIDR libraries
//! (`isCIDR`, `cidr().masked()`) are not used: kube-apiserver accepts them
//! in new CRDs only from 1.31. What a pattern cannot say (host bits of a
//! CIDR) is checked when the object is read, and reported on the object.
//!
//! Objects are read leniently ([`decode_static_route`],
//! [`decode_node_overlay_ip`]): an object that was stored before this
//! validation existed, or written by another version, is reported with the
//! field that is wrong and never fails the list or watch it arrived in.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector as K8sSelector};
use kube::api::DynamicObject;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::invalid::FieldProblem;
use crate::model::RouteState;
use crate::parse::{
    Cidr, InterfaceName, LabelSelector, ParseError, Requirement, parse_ip, parse_ip_with_prefix,
};
use crate::traits::{
    AgentStatus, GatewayChoice, KnownGateway, NodeRouteStatus, OverlayIpRecord, RouteReport,
    RouteSummary, StaticRouteRecord, StaticRouteRule,
};

/// Longest textual IP address (IPv6 with an embedded IPv4 address).
pub const IP_MAX_LEN: usize = 45;
/// Longest address with prefix length (`IP_MAX_LEN` + `/128`).
pub const CIDR_MAX_LEN: usize = IP_MAX_LEN + 4;
/// Longest node name (a DNS subdomain).
pub const NODE_NAME_MAX_LEN: usize = 253;
/// Most nodes one StaticRoute reports (the scale target).
pub const MAX_NODES: usize = 5000;
/// Most route reports one NodeOverlayIp carries (`status.routes`): the
/// StaticRoutes that select one node. An agent with more writes the first
/// ones by route name.
pub const MAX_ROUTE_REPORTS: usize = 4096;
/// Most discovered gateways one NodeOverlayIp keeps (`status.gateways`):
/// one per distinct `gatewayFrom` prefix.
pub const MAX_KNOWN_GATEWAYS: usize = 64;
/// Largest count a StaticRoute's status carries (`applied`, `failed`,
/// `pending`): well above the nodes one cluster has.
pub const MAX_COUNT: u32 = 1_000_000;
/// Longest message the agents write into a status (`nodeStatus[].message`,
/// the `Configured` condition); longer ones are cut at a character boundary.
pub const MESSAGE_MAX_LEN: usize = 1024;
/// The type of the agent's condition on its NodeOverlayIp: `True` when the
/// node's overlay address and routes are in place.
pub const CONFIGURED_CONDITION: &str = "Configured";
/// Longest label key (`prefix/name`: 253 + 1 + 63).
const LABEL_KEY_MAX_LEN: usize = 317;
/// Longest label value.
const LABEL_VALUE_MAX_LEN: usize = 63;

/// One IPv4 address, dotted quad without leading zeros (RE2 syntax).
const IPV4: &str = r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";

/// One IPv6 address in any RFC 4291 text form (RFC 3986 grammar, with an
/// embedded IPv4 address allowed in the last 32 bits).
fn ipv6() -> String {
    let h16 = "[0-9a-fA-F]{1,4}";
    let ls32 = format!("(?:{h16}:{h16}|{IPV4})");
    // "::" preceded by at most `n` groups, then the tail the grammar allows.
    let tails = [
        format!("(?:{h16}:){{4}}{ls32}"),
        format!("(?:{h16}:){{3}}{ls32}"),
        format!("(?:{h16}:){{2}}{ls32}"),
        format!("{h16}:{ls32}"),
        ls32.clone(),
        h16.to_owned(),
        String::new(),
    ];
    let mut alts = vec![
        format!("(?:{h16}:){{6}}{ls32}"),
        format!("::(?:{h16}:){{5}}{ls32}"),
    ];
    for (n, tail) in tails.iter().enumerate() {
        let head = match n {
            0 => format!("(?:{h16})?"),
            n => format!("(?:(?:{h16}:){{0,{n}}}{h16})?"),
        };
        alts.push(format!("{head}::{tail}"));
    }
    format!("(?:{})", alts.join("|"))
}

/// `pattern` of an IPv4 or IPv6 address.
pub fn ip_pattern() -> String {
    format!("^(?:{IPV4}|{})$", ipv6())
}

/// `pattern` of an address with prefix length (`192.0.2.0/24`,
/// `2001:db8::/64`). Host bits are not checked here.
pub fn cidr_pattern() -> String {
    format!(
        "^(?:{IPV4}/(?:3[0-2]|[12]?[0-9])|{}/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))$",
        ipv6()
    )
}

/// Drops `format: uint32`: Kubernetes does not know it (a warning at
/// install) and it bounds nothing; `minimum`/`maximum` do.
fn no_format(schema: &mut Schema) {
    schema.remove("format");
}

fn ip_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "maxLength": IP_MAX_LEN, "pattern": ip_pattern()})
}

fn cidr_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "maxLength": CIDR_MAX_LEN, "pattern": cidr_pattern()})
}

/// `metav1.Condition` with the bounds Kubernetes declares for it, as a
/// list keyed by `type`.
fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 16,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "description": "One aspect of the object's state (metav1.Condition).",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                    "description": "Type of the condition, e.g. Configured or Ready."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": {"type": "string", "minLength": 1, "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                    "description": "CamelCase reason of the last transition."},
                "message": {"type": "string", "maxLength": 32768,
                    "description": "Human-readable detail."}
            }
        }
    })
}

/// `metav1.LabelSelector`, bounded.
fn selector_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "Nodes the route applies to (labels of the Node); all nodes when absent.",
        "properties": {
            "matchLabels": {
                "type": "object",
                "maxProperties": 64,
                "additionalProperties": {"type": "string", "maxLength": LABEL_VALUE_MAX_LEN}
            },
            "matchExpressions": {
                "type": "array",
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string", "maxLength": LABEL_KEY_MAX_LEN},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "maxItems": 256,
                            "items": {"type": "string", "maxLength": LABEL_VALUE_MAX_LEN}}
                    }
                }
            }
        }
    })
}

/// Fields of a `NodeOverlayIp` besides metadata and status. The original
/// objects carry an empty `spec: {}`, kept as it is.
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
    derive = "Default",
    doc = "The overlay address of one node, named after the node.",
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.ipAddr"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".status.gateway"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".metadata.labels.zone"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Interface","type":"string","priority":1,"jsonPath":".status.interfaceLabel"}"#
)]
pub struct NodeOverlayIpFields {
    /// Empty; present in the original project's objects.
    #[serde(default, rename = "spec", skip_serializing_if = "Option::is_none")]
    pub original_spec: Option<NodeOverlayIpSpec>,
}

/// The (empty) `spec` of a `NodeOverlayIp`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct NodeOverlayIpSpec {}

/// Status of a `NodeOverlayIp`: `ipAddr`/`gateway` are the controller's,
/// the rest the agent's (separate server-side-apply field managers).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeOverlayIpStatus {
    /// Reserved overlay address with prefix length, e.g. `192.168.100.4/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cidr_schema")]
    pub ip_addr: Option<String>,
    /// Gateway of the overlay subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ip_schema")]
    pub gateway: Option<String>,
    /// Parent interface the agent used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub interface: Option<String>,
    /// Name of the overlay (macvlan) interface, e.g. `tmp0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15))]
    pub interface_label: Option<String>,
    /// Conditions reported by the agent (`Configured`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Option<Vec<Condition>>,
    /// The agent's result of every StaticRoute that selects the node, keyed
    /// by `route` (at most [`MAX_ROUTE_REPORTS`]). The controller sums them
    /// up into each StaticRoute's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["route"]))]
    pub routes: Option<Vec<RouteReportEntry>>,
    /// The gateways the agent last discovered (`gatewayFrom`), keyed by
    /// `from` (at most [`MAX_KNOWN_GATEWAYS`]); kept so that a discovery
    /// failure right after a restart removes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["from"]))]
    pub gateways: Option<Vec<KnownGatewayEntry>>,
}

/// One StaticRoute's result on the node, in `NodeOverlayIp.status.routes`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteReportEntry {
    /// The StaticRoute's name (the list-map key).
    #[schemars(length(max = 253))]
    pub route: String,
    /// Output device of the route (empty when not known).
    #[serde(default)]
    #[schemars(length(max = 15))]
    pub device: String,
    /// Gateway the route uses (empty when not known).
    #[serde(default)]
    #[schemars(length(max = 45))]
    pub gateway: String,
    /// Routing table, when not main.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967294u32), transform = no_format)]
    pub table: Option<u32>,
    /// `Applied`, `Failed` or `Pending`.
    #[schemars(extend("enum" = ["Applied", "Failed", "Pending"]))]
    pub state: String,
    /// Why the route is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// A gateway found by discovery, in `NodeOverlayIp.status.gateways`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KnownGatewayEntry {
    /// The prefix looked up (a StaticRoute's `gatewayFrom`; the list-map
    /// key).
    #[schemars(schema_with = "cidr_schema")]
    pub from: String,
    /// The gateway of the kernel route covering it.
    #[schemars(schema_with = "ip_schema")]
    pub gateway: String,
    /// That route's device.
    #[schemars(length(max = 15))]
    pub device: String,
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
    derive = "Default",
    doc = "A route to an on-premise subnet, programmed on every selected node.",
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".spec.gateway"}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","jsonPath":".status.applied"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Table","type":"integer","priority":1,"jsonPath":".spec.table"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.gateway) || !has(self.gatewayFrom)").message("set at most one of spec.gateway and spec.gatewayFrom"))]
pub struct StaticRouteSpec {
    /// Destination subnet, e.g. `192.168.0.0/24` (host bits zero).
    #[schemars(schema_with = "cidr_schema")]
    pub subnet: String,
    /// Fixed next hop. When neither this nor `gatewayFrom` is set, the
    /// node's overlay gateway is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ip_schema")]
    pub gateway: Option<String>,
    /// Use the gateway of the kernel route covering this prefix, e.g.
    /// `10.0.0.0/8` (the private network). Needs no overlay IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cidr_schema")]
    pub gateway_from: Option<String>,
    /// Routing table: 1–252, 254 (main) or 256 to 4294967294; default main
    /// (254). 253 (default) and 255 (local) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967294u32), transform = no_format)]
    #[x_kube(validation = Rule::new("self != 253 && self != 255").message("table 253 (default) and 255 (local) are reserved; use 1-252, 254 (main) or 256 and up"))]
    pub table: Option<u32>,
    /// Route metric (priority), 0 to 4294967295; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4294967295u32), transform = no_format)]
    pub metric: Option<u32>,
    /// Nodes the route applies to; all nodes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "selector_schema")]
    pub node_selector: Option<K8sSelector>,
}

/// Status of a `StaticRoute`, summed up by the controller from the nodes'
/// reports (`NodeOverlayIp.status.routes`): counts per state over every
/// node, and per-node entries, failing nodes first, at most
/// [`RouteSummary::MAX_NODE_STATUS`](crate::RouteSummary::MAX_NODE_STATUS).
/// Objects of the original agents carry only `nodeStatus`, one entry per
/// node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StaticRouteStatus {
    /// Nodes that report the route Applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000u32), transform = no_format)]
    pub applied: Option<u32>,
    /// Nodes that report the route Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000u32), transform = no_format)]
    pub failed: Option<u32>,
    /// Nodes that report the route Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000u32), transform = no_format)]
    pub pending: Option<u32>,
    /// Per-node state, keyed by `hostname`: Failed, then Pending, then
    /// Applied, each by name; at most 100 (the counts cover every node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["hostname"]))]
    pub node_status: Vec<NodeStatusEntry>,
}

/// One node's entry in `StaticRoute.status.nodeStatus`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusEntry {
    /// Node name (the list-map key).
    #[schemars(length(max = 253))]
    pub hostname: String,
    /// Output device of the route.
    #[serde(default)]
    #[schemars(length(max = 15))]
    pub device: String,
    /// Gateway the route uses.
    #[serde(default)]
    #[schemars(length(max = 45))]
    pub gateway: String,
    /// `Applied`, `Failed` or `Pending`; absent in objects written by the
    /// original agents (treated as Applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Applied", "Failed", "Pending"]))]
    pub state: Option<String>,
    /// Why the route is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

// ---- Kubernetes-native IPAM: pools, allocations, claims ----

/// Most entries of an `OverlayIPPool`'s `spec.reserved`.
pub const MAX_RESERVED: usize = 256;
/// Largest `spec.order` of an `OverlayIPPool`.
pub const MAX_POOL_ORDER: i64 = 1_000_000;
/// Longest object name (a DNS subdomain): pools, allocations, claims.
pub const OBJECT_NAME_MAX_LEN: usize = 253;
/// Longest cluster id an allocation or claim records.
pub const CLUSTER_ID_MAX_LEN: usize = 63;
/// Longest `status.usage` of a pool (`allocated/size`).
pub const USAGE_MAX_LEN: usize = 64;

/// `pattern` of a non-empty label value (a zone).
const LABEL_VALUE_PATTERN: &str = "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

/// `pattern` of an address or an address with prefix length (an entry of
/// a pool's `spec.reserved`).
pub fn ip_or_cidr_pattern() -> String {
    let inner = |p: String| p.trim_start_matches('^').trim_end_matches('$').to_owned();
    format!("^(?:{}|{})$", inner(ip_pattern()), inner(cidr_pattern()))
}

fn zone_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "minLength": 1, "maxLength": LABEL_VALUE_MAX_LEN,
        "pattern": LABEL_VALUE_PATTERN})
}

fn reserved_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "maxItems": MAX_RESERVED,
        "items": {"type": "string", "maxLength": CIDR_MAX_LEN, "pattern": ip_or_cidr_pattern()}})
}

fn held_until_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "date-time"})
}

/// A count of a pool's status: an integer from 0.
fn count_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "format": "int64", "minimum": 0})
}

/// An address pool of one zone, for the Kubernetes-native IPAM
/// (`kubernetes: {}` in the controller config).
///
/// What a schema cannot check on Kubernetes 1.30 (the gateway and the
/// reserved entries inside `cidr`, no host bits in `cidr`, no overlap with
/// another pool) is checked by the controller: a pool that fails is
/// `Ready=False` with reason `InvalidSpec` (or `Overlaps`: of two
/// overlapping pools the older one is used) and is never allocated from.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "iks.ibm.com",
    version = "v1alpha1",
    kind = "OverlayIPPool",
    plural = "overlayippools",
    shortname = "oippool",
    status = "OverlayIPPoolStatus",
    derive = "Default",
    doc = "A pool of overlay addresses for the nodes of one zone (Kubernetes-native IPAM).",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Gateway","type":"string","jsonPath":".spec.gateway"}"#,
    printcolumn = r#"{"name":"Usage","type":"string","jsonPath":".status.usage"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OverlayIPPoolSpec {
    /// The zone whose nodes get addresses from this pool (the value of the
    /// node's `topology.kubernetes.io/zone` label), e.g. `dal10`.
    #[schemars(schema_with = "zone_schema")]
    pub zone: String,
    /// The pool's prefix, IPv4 or IPv6, e.g. `198.51.100.0/24` or
    /// `2001:db8:0:1::/64`. Host bits must be zero, and the prefix must not
    /// overlap another pool's: checked by the controller; an invalid pool
    /// is Ready=False, reason InvalidSpec (Overlaps for an overlap, where
    /// the older pool is used), and never allocated from.
    #[schemars(schema_with = "cidr_schema")]
    pub cidr: String,
    /// The gateway the nodes route through; default: the first host
    /// address of `cidr`. Must lie inside `cidr`: checked by the
    /// controller; an invalid pool is Ready=False, reason InvalidSpec, and
    /// never allocated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ip_schema")]
    pub gateway: Option<String>,
    /// Addresses (`198.51.100.10`) or prefixes (`198.51.100.240/28`) never
    /// handed out, at most 256. Each must lie inside `cidr`: checked by the
    /// controller; an invalid pool is Ready=False, reason InvalidSpec, and
    /// never allocated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "reserved_schema")]
    pub reserved: Option<Vec<String>>,
    /// Pools of one zone are tried in ascending order, then by name;
    /// 0 to 1000000, default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000i64))]
    pub order: Option<i64>,
    /// No new allocations from this pool; those it has stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// Status of an `OverlayIPPool`, written by the controller (server-side
/// apply).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OverlayIPPoolStatus {
    /// Addresses the pool can hand out (the prefix without network,
    /// broadcast, gateway and reserved addresses; at most
    /// 9223372036854775807).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_schema")]
    pub size: Option<i64>,
    /// Live allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_schema")]
    pub allocated: Option<i64>,
    /// Allocations held back after a release (hold-down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_schema")]
    pub held: Option<i64>,
    /// `size - allocated - held`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_schema")]
    pub free: Option<i64>,
    /// `allocated/size`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = USAGE_MAX_LEN))]
    pub usage: Option<String>,
    /// `Ready`: whether new allocations come from this pool; reasons
    /// `Ready`, `InvalidSpec`, `Overlaps`, `Disabled`, `Deleting`, `Full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Option<Vec<Condition>>,
}

/// One address held by one node: an `OverlayIPAllocation`, named after the
/// address (`198-51-100-7`; IPv6 every group in hex), so that the API
/// server refuses a second allocation of one address. Written only by the
/// controller.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "iks.ibm.com",
    version = "v1alpha1",
    kind = "OverlayIPAllocation",
    plural = "overlayipallocations",
    shortname = "oipalloc",
    derive = "Default",
    doc = "One overlay address held by one node, named after the address (Kubernetes-native IPAM).",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"Held-Until","type":"string","jsonPath":".spec.heldUntil"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OverlayIPAllocationSpec {
    /// The `OverlayIPPool` the address comes from (also the owner
    /// reference).
    #[schemars(length(min = 1, max = OBJECT_NAME_MAX_LEN))]
    pub pool: String,
    /// The pool's zone.
    #[schemars(schema_with = "zone_schema")]
    pub zone: String,
    /// The cluster id of the owner.
    #[schemars(length(min = 1, max = CLUSTER_ID_MAX_LEN))]
    pub cluster: String,
    /// The node that holds the address.
    #[schemars(length(min = 1, max = OBJECT_NAME_MAX_LEN))]
    pub node: String,
    /// The address with the pool's prefix length, e.g. `198.51.100.7/24`.
    #[schemars(schema_with = "cidr_schema")]
    pub address: String,
    /// The pool's gateway.
    #[schemars(schema_with = "ip_schema")]
    pub gateway: String,
    /// Set when the node released the address: it is held back from other
    /// nodes until then (RFC 3339), and goes back to the node if it
    /// returns before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "held_until_schema")]
    pub held_until: Option<String>,
}

/// A node's claim on its one live address in a zone: an `OverlayIPClaim`,
/// named after the node and a hash of cluster, node and zone, so that a
/// node cannot hold two. Written only by the controller.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "iks.ibm.com",
    version = "v1alpha1",
    kind = "OverlayIPClaim",
    plural = "overlayipclaims",
    shortname = "oipclaim",
    derive = "Default",
    doc = "A node's claim on its one overlay address in a zone (Kubernetes-native IPAM).",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OverlayIPClaimSpec {
    /// The cluster id of the owner.
    #[schemars(length(min = 1, max = CLUSTER_ID_MAX_LEN))]
    pub cluster: String,
    /// The node.
    #[schemars(length(min = 1, max = OBJECT_NAME_MAX_LEN))]
    pub node: String,
    /// The zone.
    #[schemars(schema_with = "zone_schema")]
    pub zone: String,
    /// The claimed address (its `OverlayIPAllocation` is named after it).
    #[schemars(schema_with = "ip_schema")]
    pub address: String,
}

/// Every CRD, in a stable order.
pub fn crds()
-> [k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition; 5]
{
    [
        NodeOverlayIp::crd(),
        StaticRoute::crd(),
        OverlayIPPool::crd(),
        OverlayIPAllocation::crd(),
        OverlayIPClaim::crd(),
    ]
}

/// Every CRD, as YAML documents by CRD name, in a stable order.
pub fn crds_yaml() -> Result<Vec<(String, String)>, serde_json::Error> {
    let mut out = Vec::new();
    for crd in crds() {
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
pub fn static_route_model(spec: &StaticRouteSpec) -> Result<StaticRouteRule, ParseError> {
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
    Ok(StaticRouteRule {
        subnet,
        gateway,
        table: spec.table,
        metric: spec.metric,
        selector,
    })
}

/// The label on a StaticRoute that limits it to the nodes of one zone, as
/// the older agents honoured it: `failure-domain.beta.kubernetes.io/zone:
/// dal10` on the object is a route for dal10's nodes only.
pub const ROUTE_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";

/// The zone a StaticRoute is limited to by its [`ROUTE_ZONE_LABEL`] label
/// (an empty value limits nothing).
pub fn route_zone(meta: &kube::core::ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()?
        .get(ROUTE_ZONE_LABEL)
        .map(|z| z.trim())
        .filter(|z| !z.is_empty())
}

/// `rule` limited to the zone of the object's [`ROUTE_ZONE_LABEL`] label,
/// if it has one: the zone is AND-ed with `spec.nodeSelector` (a node is
/// selected when it is in the zone, by the same labels its zone is read
/// from, and matches the selector).
fn with_route_zone(mut rule: StaticRouteRule, meta: &kube::core::ObjectMeta) -> StaticRouteRule {
    if let Some(zone) = route_zone(meta) {
        rule.selector
            .requirements
            .push(Requirement::InZone(zone.to_owned()));
    }
    rule
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

/// Joins a base path and the path serde reports (`.` is the base itself).
fn join_path(base: &str, sub: &serde_path_to_error::Path) -> String {
    let sub = sub.to_string();
    match sub.as_str() {
        "." | "" => base.to_owned(),
        s if s.starts_with('[') => format!("{base}{s}"),
        s => format!("{base}.{s}"),
    }
}

/// Reads the value at `path` as `T`; absent or `null` is `Ok(None)`. The
/// error names the exact field (`spec.metric`, not just `spec`).
pub(crate) fn read<T: DeserializeOwned>(
    v: Option<&serde_json::Value>,
    path: &str,
) -> Result<Option<T>, FieldProblem> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_path_to_error::deserialize(v)
            .map(Some)
            .map_err(|e| FieldProblem::new(join_path(path, e.path()), e.inner().to_string())),
    }
}

/// Keeps the first problem found.
fn note(first: &mut Option<FieldProblem>, p: FieldProblem) {
    if first.is_none() {
        *first = Some(p);
    }
}

/// Reads a `NodeOverlayIp` leniently. A field that does not convert is left
/// out of the record and the first such problem is returned: a garbage
/// `status.ipAddr` or `status.gateway` leaves `ip_addr`/`gateway` unset and
/// sets [`OverlayIpRecord::address_error`], so that the agent keeps the
/// address it has instead of removing it.
pub fn decode_node_overlay_ip(obj: &DynamicObject) -> (OverlayIpRecord, Option<FieldProblem>) {
    overlay_ip_record(&obj.metadata, &obj.data)
}

fn overlay_ip_record(
    meta: &kube::core::ObjectMeta,
    data: &serde_json::Value,
) -> (OverlayIpRecord, Option<FieldProblem>) {
    let mut problem = None;
    let status = data.get("status");
    let field = |name: &str| status.and_then(|s| s.get(name));
    let text = |name: &str, problem: &mut Option<FieldProblem>| -> Option<String> {
        read::<String>(field(name), &format!("status.{name}")).unwrap_or_else(|p| {
            note(problem, p);
            None
        })
    };
    let ip_text = text("ipAddr", &mut problem);
    let gw_text = text("gateway", &mut problem);
    let interface = text("interface", &mut problem);
    let interface_label = text("interfaceLabel", &mut problem);
    let mut address_error = problem.clone();
    let ip_addr = ip_text.as_deref().and_then(|s| {
        parse_ip_with_prefix("status.ipAddr", s)
            .map_err(|e| note(&mut address_error, e.into()))
            .ok()
    });
    let gateway = gw_text.as_deref().and_then(|s| {
        parse_ip("status.gateway", s)
            .map_err(|e| note(&mut address_error, e.into()))
            .ok()
    });
    if let Some(p) = &address_error {
        note(&mut problem, p.clone());
    }
    let conditions: Vec<Condition> = read(field("conditions"), "status.conditions")
        .unwrap_or_else(|p| {
            note(&mut problem, p);
            None
        })
        .unwrap_or_default();
    let configured = conditions.iter().find(|c| c.type_ == CONFIGURED_CONDITION);
    let routes = route_reports(field("routes"), &mut problem);
    let gateways = known_gateways(field("gateways"), &mut problem);
    let agent = match (&interface, &interface_label, configured) {
        (None, None, None) if routes.is_empty() && gateways.is_empty() => None,
        (i, l, c) => Some(AgentStatus {
            routes,
            gateways,
            interface: i.clone().unwrap_or_default(),
            interface_label: l.clone().unwrap_or_default(),
            configured: c.is_some_and(|c| c.status == "True"),
            reason: c.map(|c| c.reason.clone()).unwrap_or_default(),
            message: c.map(|c| c.message.clone()).unwrap_or_default(),
        }),
    };
    let record = OverlayIpRecord {
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        deleting: is_deleting(meta),
        owner_uid: meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.kind == "Node")
            .map(|r| r.uid.clone()),
        ip_addr,
        gateway,
        address_error: address_error.map(|p| p.to_string()),
        agent,
    };
    (record, problem)
}

/// Reads the entries of a list leniently: a list that is not a list is
/// one problem and no entries; an entry that does not convert is skipped
/// and noted (as `path[i].field`).
fn lenient_entries<T: DeserializeOwned>(
    v: Option<&serde_json::Value>,
    path: &str,
    problem: &mut Option<FieldProblem>,
) -> Vec<(String, T)> {
    let entries: Vec<serde_json::Value> = read(v, path)
        .unwrap_or_else(|p| {
            note(problem, p);
            None
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(entries.len());
    for (i, v) in entries.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match read::<T>(Some(v), &at) {
            Ok(Some(e)) => out.push((at, e)),
            Ok(None) => {}
            Err(p) => note(problem, p),
        }
    }
    out
}

/// Reads a `state` field; absent is Applied (the original agents wrote
/// none), unknown is Pending and noted.
fn route_state(state: Option<&str>, path: &str, problem: &mut Option<FieldProblem>) -> RouteState {
    match state {
        None | Some("Applied") => RouteState::Applied,
        Some("Failed") => RouteState::Failed,
        Some("Pending") => RouteState::Pending,
        Some(other) => {
            note(
                problem,
                FieldProblem::new(
                    format!("{path}.state"),
                    format!("unknown state {other:?}; expected Applied, Failed or Pending"),
                ),
            );
            RouteState::Pending
        }
    }
}

/// `status.routes` of a NodeOverlayIp, leniently.
fn route_reports(
    v: Option<&serde_json::Value>,
    problem: &mut Option<FieldProblem>,
) -> Vec<RouteReport> {
    lenient_entries::<RouteReportEntry>(v, "status.routes", problem)
        .into_iter()
        .map(|(at, e)| RouteReport {
            state: route_state(Some(&e.state), &at, problem),
            route: e.route,
            device: e.device,
            gateway: e.gateway,
            table: e.table,
            message: e.message.unwrap_or_default(),
        })
        .collect()
}

/// `status.gateways` of a NodeOverlayIp, leniently: an entry whose
/// prefix, address or device does not parse is skipped and noted.
fn known_gateways(
    v: Option<&serde_json::Value>,
    problem: &mut Option<FieldProblem>,
) -> Vec<KnownGateway> {
    let parse = |at: &str, e: &KnownGatewayEntry| -> Result<KnownGateway, ParseError> {
        Ok(KnownGateway {
            from: Cidr::parse(&format!("{at}.from"), &e.from)?,
            gateway: parse_ip(&format!("{at}.gateway"), &e.gateway)?,
            device: InterfaceName::parse(&format!("{at}.device"), &e.device)?,
        })
    };
    lenient_entries::<KnownGatewayEntry>(v, "status.gateways", problem)
        .into_iter()
        .filter_map(|(at, e)| parse(&at, &e).map_err(|p| note(problem, p.into())).ok())
        .collect()
}

/// A StaticRoute's counts (`applied`, `failed`, `pending`), when the
/// controller has written them.
fn route_counts(
    status: Option<&serde_json::Value>,
    problem: &mut Option<FieldProblem>,
) -> Option<(u32, u32, u32)> {
    let mut count = |name: &str| -> Option<u32> {
        let v = status.and_then(|s| s.get(name));
        read::<u32>(v, &format!("status.{name}")).unwrap_or_else(|p| {
            note(problem, p);
            None
        })
    };
    let (a, f, p) = (count("applied"), count("failed"), count("pending"));
    (a.is_some() || f.is_some() || p.is_some())
        .then(|| (a.unwrap_or(0), f.unwrap_or(0), p.unwrap_or(0)))
}

/// Reads a `StaticRoute` leniently. A spec that does not convert (or fails
/// the checks a pattern cannot express, such as host bits) makes
/// `spec` an `Err` naming the field; status entries that do not convert are
/// skipped (an unknown `state` reads as Pending). The first problem is
/// returned.
pub fn decode_static_route(obj: &DynamicObject) -> (StaticRouteRecord, Option<FieldProblem>) {
    static_route_record(&obj.metadata, &obj.data)
}

fn static_route_record(
    meta: &kube::core::ObjectMeta,
    data: &serde_json::Value,
) -> (StaticRouteRecord, Option<FieldProblem>) {
    let mut problem = None;
    let spec = match read::<StaticRouteSpec>(data.get("spec"), "spec") {
        Ok(Some(spec)) => static_route_model(&spec)
            .map(|rule| with_route_zone(rule, meta))
            .map_err(FieldProblem::from),
        Ok(None) => Err(FieldProblem::new(
            "spec",
            "missing; set at least spec.subnet",
        )),
        Err(p) => Err(p),
    };
    let spec = spec.map_err(|p| {
        let msg = p.to_string();
        note(&mut problem, p);
        msg
    });
    let status = data.get("status");
    let node_status: Vec<NodeRouteStatus> = lenient_entries::<NodeStatusEntry>(
        status.and_then(|s| s.get("nodeStatus")),
        "status.nodeStatus",
        &mut problem,
    )
    .into_iter()
    .map(|(at, e)| NodeRouteStatus {
        state: route_state(e.state.as_deref(), &at, &mut problem),
        hostname: e.hostname,
        device: e.device,
        gateway: e.gateway,
        message: e.message.unwrap_or_default(),
    })
    .collect();
    let summary =
        route_counts(status, &mut problem).map(|(applied, failed, pending)| RouteSummary {
            applied,
            failed,
            pending,
            node_status: node_status.clone(),
        });
    let record = StaticRouteRecord {
        summary,
        name: meta.name.clone().unwrap_or_default(),
        spec,
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        deleting: is_deleting(meta),
        node_status,
    };
    (record, problem)
}

impl From<&NodeOverlayIp> for OverlayIpRecord {
    fn from(o: &NodeOverlayIp) -> Self {
        let data = serde_json::json!({ "status": o.status });
        overlay_ip_record(&o.metadata, &data).0
    }
}

impl From<&StaticRoute> for StaticRouteRecord {
    fn from(r: &StaticRoute) -> Self {
        let data = serde_json::json!({ "spec": r.spec, "status": r.status });
        static_route_record(&r.metadata, &data).0
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut.
pub fn truncate_message(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    const MARK: &str = " [...]";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

/// A status message as written: absent when empty, cut to
/// [`MESSAGE_MAX_LEN`].
fn status_message(m: &str) -> Option<String> {
    (!m.is_empty()).then(|| truncate_message(m, MESSAGE_MAX_LEN))
}

impl From<&NodeRouteStatus> for NodeStatusEntry {
    fn from(s: &NodeRouteStatus) -> Self {
        NodeStatusEntry {
            hostname: s.hostname.clone(),
            device: s.device.clone(),
            gateway: s.gateway.clone(),
            state: Some(s.state.to_string()),
            message: status_message(&s.message),
        }
    }
}

impl From<&RouteReport> for RouteReportEntry {
    fn from(r: &RouteReport) -> Self {
        RouteReportEntry {
            route: r.route.clone(),
            device: r.device.clone(),
            gateway: r.gateway.clone(),
            table: r.table,
            state: r.state.to_string(),
            message: status_message(&r.message),
        }
    }
}

impl From<&KnownGateway> for KnownGatewayEntry {
    fn from(g: &KnownGateway) -> Self {
        KnownGatewayEntry {
            from: g.from.to_string(),
            gateway: g.gateway.to_string(),
            device: g.device.to_string(),
        }
    }
}
