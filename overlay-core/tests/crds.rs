//! The custom resources: the committed `deploy/crds/` equals what the types
//! generate; the schemas install on a real API server (every list, map and
//! string bounded, no CEL rule under an unbounded one, no CEL library newer
//! than 1.30); the original project's objects apply as they are and read
//! back equal; malformed objects are refused by the schema and, when stored
//! anyway, read leniently naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::Path;

use overlay_core::crd::{
    MAX_COUNT, MAX_KNOWN_GATEWAYS, MAX_POOL_ORDER, MAX_RESERVED, MAX_ROUTE_REPORTS, NodeOverlayIp,
    OverlayIPAllocation, OverlayIPClaim, OverlayIPPool, StaticRoute, StaticRouteSpec, cidr_pattern,
    crds_yaml, ip_or_cidr_pattern, ip_pattern, static_route_model,
};
use overlay_core::{
    Cidr, GatewayChoice, OverlayIpRecord, RouteState, RouteSummary, StaticRouteRecord,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::schema::validate_object;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// Every CRD, by plural.
const PLURALS: [&str; 5] = [
    "nodeoverlayips",
    "staticroutes",
    "overlayippools",
    "overlayipallocations",
    "overlayipclaims",
];

/// The generated CRDs as JSON, by plural.
fn crd(plural: &str) -> Value {
    crds_yaml()
        .unwrap()
        .into_iter()
        .map(|(_, y)| serde_yaml::from_str::<Value>(&y).unwrap())
        .find(|v| v["spec"]["names"]["plural"] == plural)
        .unwrap()
}

fn schema(plural: &str) -> Value {
    crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Deserialize into `T`, serialize back, and compare as JSON values.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(yaml: &str) -> T {
    let original: Value = serde_yaml::from_str(yaml).unwrap();
    let typed: T = serde_yaml::from_str(yaml).unwrap();
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(original, back, "object changed on the round trip");
    typed
}

// ---- installability: bounds and CEL ----

/// Where a schema declares something whose size the API server's CEL cost
/// estimate cannot bound: an array without `maxItems`, a map
/// (`additionalProperties`) without `maxProperties`, a string without
/// `maxLength` (an `enum` or a date-time bounds it too).
fn unbounded(s: &Value) -> Option<&'static str> {
    match s.get("type").and_then(Value::as_str) {
        Some("array") if s.get("maxItems").is_none() => Some("array without maxItems"),
        Some("object")
            if s.get("additionalProperties").is_some() && s.get("maxProperties").is_none() =>
        {
            Some("map without maxProperties")
        }
        Some("string")
            if s.get("maxLength").is_none()
                && s.get("enum").is_none()
                && s.get("format").and_then(Value::as_str) != Some("date-time") =>
        {
            Some("string without maxLength")
        }
        _ => None,
    }
}

fn children(s: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    if let Some(p) = s.get("properties").and_then(Value::as_object) {
        out.extend(p.iter().map(|(k, v)| (format!(".{k}"), v)));
    }
    if let Some(i) = s.get("items") {
        out.push(("[]".into(), i));
    }
    if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
        out.push(("{}".into(), a));
    }
    out
}

/// Every schema node with its path.
fn walk<'a>(s: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), s));
    for (k, c) in children(s) {
        walk(c, format!("{path}{k}"), out);
    }
}

/// CEL rules under something unbounded (itself or an ancestor): a
/// conservative stand-in for the API server's cost estimate, which
/// multiplies a rule's cost by every enclosing unbounded list and charges
/// strings without maxLength as if huge.
fn cel_under_unbounded(s: &Value) -> Vec<String> {
    fn go(s: &Value, path: &str, unbounded_above: Option<String>, out: &mut Vec<String>) {
        let here = unbounded(s)
            .map(|why| format!("{path}: {why}"))
            .or(unbounded_above);
        if let (Some(rules), Some(why)) = (s.get("x-kubernetes-validations"), &here) {
            for r in rules.as_array().into_iter().flatten() {
                out.push(format!("rule {} at {path} sits under {why}", r["rule"]));
            }
        }
        for (k, c) in children(s) {
            go(c, &format!("{path}{k}"), here.clone(), out);
        }
    }
    let mut out = Vec::new();
    go(s, "", None, &mut out);
    out
}

#[test]
fn every_list_map_and_string_of_the_crds_is_bounded() {
    for plural in PLURALS {
        let root = schema(plural);
        let mut nodes = Vec::new();
        walk(&root, String::new(), &mut nodes);
        let missing: Vec<String> = nodes
            .iter()
            .filter_map(|(p, s)| unbounded(s).map(|why| format!("{plural}{p}: {why}")))
            .collect();
        assert!(missing.is_empty(), "{missing:#?}");
    }
}

#[test]
fn no_cel_rule_sits_under_an_unbounded_list_map_or_string() {
    for plural in PLURALS {
        let found = cel_under_unbounded(&schema(plural));
        assert!(found.is_empty(), "{plural}: {found:#?}");
    }
}

#[test]
fn the_bounds_check_catches_what_the_api_server_rejected() {
    // The StaticRoute schema of commit 25551d5, reduced to the path the
    // API server named: a rule on `state` under `nodeStatus` (no maxItems),
    // on a string without maxLength.
    let rejected = json!({"type": "object", "properties": {"status": {"type": "object", "properties": {
        "nodeStatus": {"type": "array", "items": {"type": "object", "properties": {
            "state": {"type": "string",
                "x-kubernetes-validations": [{"rule": "self in ['Applied', 'Failed', 'Pending']"}]}}}}}}}});
    let found = cel_under_unbounded(&rejected);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(".status.nodeStatus"), "{found:?}");
    // Bounding the list is not enough while the string is unbounded...
    let mut half = rejected.clone();
    half["properties"]["status"]["properties"]["nodeStatus"]["maxItems"] = json!(5000);
    assert_eq!(cel_under_unbounded(&half).len(), 1);
    // ...both are.
    half["properties"]["status"]["properties"]["nodeStatus"]["items"]["properties"]["state"]["maxLength"] =
        json!(16);
    assert!(cel_under_unbounded(&half).is_empty());
}

#[test]
fn the_crds_use_no_cel_library_newer_than_kubernetes_1_30() {
    // The IP and CIDR libraries (isIP, isCIDR, ip(), cidr()) are accepted
    // in new CRDs from 1.31 on; the CRDs must install on 1.30.
    let all: String = crds_yaml().unwrap().into_iter().map(|(_, y)| y).collect();
    let rules: Vec<&str> = all
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rule: "))
        .collect();
    assert_eq!(rules.len(), 2, "{rules:?}");
    for r in rules {
        for f in ["isIP", "isCIDR", "ip(", "cidr(", "format.", "quantity"] {
            assert!(!r.contains(f), "rule {r} uses {f}");
        }
    }
}

#[test]
fn metric_and_table_have_explicit_ranges_and_no_unknown_formats() {
    let spec = &schema("staticroutes")["properties"]["spec"]["properties"];
    assert_eq!(spec["metric"]["minimum"], json!(0.0));
    assert_eq!(spec["metric"]["maximum"], json!(4294967295.0));
    assert_eq!(spec["table"]["minimum"], json!(1.0));
    assert_eq!(spec["table"]["maximum"], json!(4294967294.0));
    let all: String = crds_yaml().unwrap().into_iter().map(|(_, y)| y).collect();
    assert!(!all.contains("uint32"), "Kubernetes warns on format uint32");
    let state = &schema("staticroutes")["properties"]["status"]["properties"]["nodeStatus"]["items"]
        ["properties"]["state"];
    assert_eq!(state["enum"], json!(["Applied", "Failed", "Pending"]));
}

#[test]
fn status_lists_and_counts_have_the_documented_bounds() {
    let noip = &schema("nodeoverlayips")["properties"]["status"]["properties"];
    let routes = &noip["routes"];
    assert_eq!(routes["maxItems"], json!(MAX_ROUTE_REPORTS));
    assert_eq!(routes["x-kubernetes-list-map-keys"], json!(["route"]));
    let item = &routes["items"]["properties"];
    assert_eq!(item["route"]["maxLength"], json!(253));
    assert_eq!(item["device"]["maxLength"], json!(15));
    assert_eq!(item["gateway"]["maxLength"], json!(45));
    assert_eq!(item["message"]["maxLength"], json!(1024));
    assert_eq!(
        item["state"]["enum"],
        json!(["Applied", "Failed", "Pending"])
    );
    assert_eq!(item["table"]["minimum"], json!(1.0));
    assert_eq!(item["table"]["maximum"], json!(4294967294.0));
    let gateways = &noip["gateways"];
    assert_eq!(gateways["maxItems"], json!(MAX_KNOWN_GATEWAYS));
    assert_eq!(gateways["x-kubernetes-list-map-keys"], json!(["from"]));
    assert_eq!(
        gateways["items"]["properties"]["from"]["pattern"],
        json!(cidr_pattern())
    );
    assert_eq!(
        gateways["items"]["properties"]["gateway"]["pattern"],
        json!(ip_pattern())
    );
    let sr = &schema("staticroutes")["properties"]["status"]["properties"];
    assert_eq!(
        sr["nodeStatus"]["maxItems"],
        json!(RouteSummary::MAX_NODE_STATUS)
    );
    for count in ["applied", "failed", "pending"] {
        assert_eq!(sr[count]["type"], "integer");
        assert_eq!(sr[count]["minimum"], json!(0.0), "{count}");
        assert_eq!(sr[count]["maximum"], json!(f64::from(MAX_COUNT)), "{count}");
    }
}

#[test]
fn static_routes_show_counts_not_one_column_entry_per_node() {
    let columns = crd("staticroutes")["spec"]["versions"][0]["additionalPrinterColumns"].clone();
    let names: Vec<&str> = columns
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Subnet", "Gateway", "Applied", "Failed", "Age", "Table"]
    );
    assert!(!columns.to_string().contains("nodeStatus"), "{columns}");
}

#[test]
fn generated_crds_carry_validation_and_columns() {
    let all: String = crds_yaml().unwrap().into_iter().map(|(_, y)| y).collect();
    for needle in [
        "x-kubernetes-list-type: \"map\"",
        "\"hostname\"",
        "self != 253 && self != 255",
        "!has(self.gateway) || !has(self.gatewayFrom)",
        "shortNames",
        "name: \"Subnet\"",
        "name: \"IP\"",
        "priority: 1",
        "status: {}",
        "scope: \"Cluster\"",
    ] {
        assert!(all.contains(needle), "generated CRDs lack {needle}");
    }
}

// ---- the Kubernetes-native IPAM's kinds ----

fn columns(plural: &str) -> Vec<(String, String)> {
    crd(plural)["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["jsonPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_crd_is_generated_cluster_scoped_in_the_one_group() {
    let plurals: Vec<String> = crds_yaml()
        .unwrap()
        .into_iter()
        .map(|(_, y)| serde_yaml::from_str::<Value>(&y).unwrap()["spec"]["names"]["plural"].clone())
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(plurals, PLURALS);
    for plural in PLURALS {
        let c = crd(plural);
        assert_eq!(c["spec"]["scope"], "Cluster", "{plural}");
        assert_eq!(c["spec"]["group"], "iks.ibm.com", "{plural}");
        assert_eq!(c["spec"]["versions"][0]["name"], "v1alpha1", "{plural}");
    }
    for (plural, short, kind) in [
        ("overlayippools", "oippool", "OverlayIPPool"),
        ("overlayipallocations", "oipalloc", "OverlayIPAllocation"),
        ("overlayipclaims", "oipclaim", "OverlayIPClaim"),
    ] {
        let names = &crd(plural)["spec"]["names"];
        assert_eq!(names["shortNames"], json!([short]), "{plural}");
        assert_eq!(names["kind"], kind);
    }
    // Only the pool has a status, written through its subresource.
    assert_eq!(
        crd("overlayippools")["spec"]["versions"][0]["subresources"],
        json!({"status": {}})
    );
    for plural in ["overlayipallocations", "overlayipclaims"] {
        assert!(
            schema(plural)["properties"].get("status").is_none(),
            "{plural}"
        );
    }
}

#[test]
fn ipam_kinds_show_usage_readiness_owners_and_hold_downs_in_kubectl_get() {
    let names =
        |plural: &str| -> Vec<String> { columns(plural).into_iter().map(|c| c.0).collect() };
    assert_eq!(
        names("overlayippools"),
        ["Zone", "CIDR", "Gateway", "Usage", "Ready", "Age"]
    );
    let pool: std::collections::BTreeMap<String, String> =
        columns("overlayippools").into_iter().collect();
    assert_eq!(pool["Usage"], ".status.usage");
    assert_eq!(
        pool["Ready"],
        r#".status.conditions[?(@.type=="Ready")].status"#
    );
    assert_eq!(
        names("overlayipallocations"),
        ["Address", "Node", "Pool", "Held-Until", "Age"]
    );
    let alloc: std::collections::BTreeMap<String, String> =
        columns("overlayipallocations").into_iter().collect();
    assert_eq!(alloc["Held-Until"], ".spec.heldUntil");
    assert_eq!(names("overlayipclaims"), ["Node", "Zone", "Address", "Age"]);
}

#[test]
fn ipam_schemas_have_the_documented_bounds() {
    let pool = &schema("overlayippools")["properties"];
    let spec = &pool["spec"]["properties"];
    assert_eq!(pool["spec"]["required"], json!(["cidr", "zone"]));
    assert_eq!(spec["zone"]["maxLength"], json!(63));
    assert_eq!(spec["cidr"]["pattern"], json!(cidr_pattern()));
    assert_eq!(spec["gateway"]["pattern"], json!(ip_pattern()));
    assert_eq!(spec["reserved"]["maxItems"], json!(MAX_RESERVED));
    assert_eq!(
        spec["reserved"]["items"]["pattern"],
        json!(ip_or_cidr_pattern())
    );
    assert_eq!(spec["order"]["minimum"], json!(0.0));
    assert_eq!(spec["order"]["maximum"], json!(MAX_POOL_ORDER as f64));
    assert_eq!(spec["disabled"]["type"], "boolean");
    for p in ["cidr", "gateway", "reserved"] {
        let doc = spec[p]["description"].as_str().unwrap();
        let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            doc.contains("checked by the controller") && doc.contains("InvalidSpec"),
            "spec.{p}: {doc}"
        );
    }
    let status = &pool["status"]["properties"];
    for count in ["size", "allocated", "held", "free"] {
        assert_eq!(status[count]["type"], "integer", "{count}");
        assert_eq!(status[count]["minimum"], json!(0.0), "{count}");
    }
    assert_eq!(status["usage"]["maxLength"], json!(64));
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
    let alloc = &schema("overlayipallocations")["properties"]["spec"];
    assert_eq!(
        alloc["required"],
        json!(["address", "cluster", "gateway", "node", "pool", "zone"])
    );
    let a = &alloc["properties"];
    assert_eq!(a["pool"]["maxLength"], json!(253));
    assert_eq!(a["node"]["maxLength"], json!(253));
    assert_eq!(a["cluster"]["maxLength"], json!(63));
    assert_eq!(a["address"]["pattern"], json!(cidr_pattern()));
    assert_eq!(a["gateway"]["pattern"], json!(ip_pattern()));
    assert_eq!(a["heldUntil"]["format"], "date-time");
    let claim = &schema("overlayipclaims")["properties"]["spec"];
    assert_eq!(
        claim["required"],
        json!(["address", "cluster", "node", "zone"])
    );
    assert_eq!(
        claim["properties"]["address"]["pattern"],
        json!(ip_pattern())
    );
}

fn ipam_object(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": kind,
        "metadata": {"name": "x"}, "spec": spec})
}

#[test]
fn the_pool_schema_takes_good_pools_and_refuses_what_users_get_wrong() {
    let pools = schema("overlayippools");
    let ok = |spec: Value| {
        let errors = validate_object(&pools, &ipam_object("OverlayIPPool", spec.clone()));
        assert!(errors.is_empty(), "{spec}: {errors:?}");
        let p: OverlayIPPool = serde_json::from_value(ipam_object("OverlayIPPool", spec)).unwrap();
        p
    };
    let p = ok(json!({"zone": "dal10", "cidr": "198.51.100.0/24"}));
    assert_eq!(p.spec.gateway, None);
    let p = ok(
        json!({"zone": "dal10", "cidr": "2001:db8:0:1::/64", "gateway": "2001:db8:0:1::1",
        "reserved": ["2001:db8:0:1::10", "2001:db8:0:1::100/120"], "order": 1000000,
        "disabled": true}),
    );
    assert_eq!(p.spec.order, Some(1_000_000));
    let refused = |spec: Value, field: &str| {
        let errors = validate_object(&pools, &ipam_object("OverlayIPPool", spec.clone()));
        assert!(
            errors.iter().any(|e| e.contains(field)),
            "{spec}: {errors:?}"
        );
    };
    let base = json!({"zone": "dal10", "cidr": "198.51.100.0/24"});
    let with = |k: &str, v: Value| {
        let mut s = base.clone();
        s[k] = v;
        s
    };
    refused(with("cidr", json!("300.1.2.3/40")), "spec.cidr");
    refused(with("cidr", json!("198.51.100.0")), "spec.cidr");
    refused(with("zone", json!("")), "spec.zone");
    refused(with("zone", json!("dal 10")), "spec.zone");
    refused(with("zone", json!("z".repeat(64))), "spec.zone");
    refused(with("gateway", json!("198.51.100.0/24")), "spec.gateway");
    refused(
        with("reserved", json!(["198.51.100.x"])),
        "spec.reserved[0]",
    );
    let too_many: Vec<String> = (0..=MAX_RESERVED)
        .map(|i| format!("198.51.100.{}", i % 256))
        .collect();
    refused(with("reserved", json!(too_many)), "spec.reserved");
    refused(with("order", json!(-1)), "spec.order");
    refused(with("order", json!(MAX_POOL_ORDER + 1)), "spec.order");
    refused(with("disabled", json!("yes")), "spec.disabled");
    refused(with("typo", json!(1)), "spec.typo");
    refused(json!({"cidr": "198.51.100.0/24"}), "spec.zone");
    let mut negative = ipam_object("OverlayIPPool", base.clone());
    negative["status"] = json!({"free": -1});
    assert!(!validate_object(&pools, &negative).is_empty());
}

#[test]
fn the_allocation_and_claim_schemas_take_what_the_controller_writes_and_nothing_odd() {
    let allocs = schema("overlayipallocations");
    let alloc = json!({"pool": "dal10-a", "zone": "dal10", "cluster": "c1", "node": "node-a",
        "address": "198.51.100.7/24", "gateway": "198.51.100.1",
        "heldUntil": "2026-11-27T12:00:00Z"});
    let obj = ipam_object("OverlayIPAllocation", alloc.clone());
    assert_eq!(validate_object(&allocs, &obj), Vec::<String>::new());
    let a: OverlayIPAllocation = serde_json::from_value(obj).unwrap();
    assert_eq!(a.spec.held_until.as_deref(), Some("2026-11-27T12:00:00Z"));
    for (field, bad) in [
        ("address", json!("198.51.100.7")),
        ("gateway", json!("198.51.100.1/24")),
        ("cluster", json!("")),
        ("node", json!("n".repeat(254))),
    ] {
        let mut spec = alloc.clone();
        spec[field] = bad;
        let errors = validate_object(&allocs, &ipam_object("OverlayIPAllocation", spec));
        assert!(
            errors.iter().any(|e| e.contains(&format!("spec.{field}"))),
            "{field}: {errors:?}"
        );
    }
    let claims = schema("overlayipclaims");
    let claim = ipam_object(
        "OverlayIPClaim",
        json!({"cluster": "c1", "node": "node-a", "zone": "dal10", "address": "198.51.100.7"}),
    );
    assert_eq!(validate_object(&claims, &claim), Vec::<String>::new());
    let _: OverlayIPClaim = serde_json::from_value(claim.clone()).unwrap();
    let mut bad = claim;
    bad["spec"]["address"] = json!("198.51.100.7/24");
    assert!(!validate_object(&claims, &bad).is_empty());
}

#[test]
fn committed_crds_equal_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (name, yaml) in crds_yaml().unwrap() {
        let path = dir.join(format!("{name}.yaml"));
        if std::env::var_os("OVERLAY_WRITE_CRDS").is_some() {
            std::fs::write(&path, &yaml).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} differs from the Rust types; regenerate with `cargo run -p overlay-bins --bin overlayctl -- crds --out deploy/crds` (or `OVERLAY_WRITE_CRDS=1 cargo test -p overlay-core --test crds committed_crds`)",
            path.display()
        );
        let v: Value = serde_yaml::from_str(&committed).unwrap();
        assert_eq!(v["metadata"]["name"], name.as_str());
    }
}

// ---- patterns: everything the parsers accept, nothing obviously wrong ----

static IP: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(&ip_pattern()).unwrap());
static CIDR: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(&cidr_pattern()).unwrap());
static IP_OR_CIDR: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(&ip_or_cidr_pattern()).unwrap());

fn matches(re: &regex::Regex, s: &str) -> bool {
    re.is_match(s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_address_patterns_accept_every_address_the_parsers_accept(
        v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>(), p4 in 0u8..=32, p6 in 0u8..=128,
        zeros in 0usize..8,
    ) {
        let a4 = std::net::Ipv4Addr::from(v4);
        let mut g = v6;
        for x in g.iter_mut().skip(zeros % 8).take(zeros) { *x = 0; }
        let a6 = std::net::Ipv6Addr::from(g);
        let (ip, cidr) = (&*IP, &*CIDR);
        prop_assert!(matches(ip, &a4.to_string()), "{a4}");
        prop_assert!(matches(ip, &a6.to_string()), "{a6}");
        // Uncompressed and with an embedded IPv4 tail, as users write them.
        let full = g.iter().map(|x| format!("{x:x}")).collect::<Vec<_>>().join(":");
        prop_assert!(matches(ip, &full), "{full}");
        let mapped = format!("::ffff:{a4}");
        prop_assert!(matches(ip, &mapped), "{mapped}");
        let n4 = Cidr::from_network(ipnetwork::IpNetwork::new(a4.into(), p4).unwrap());
        let n6 = Cidr::from_network(ipnetwork::IpNetwork::new(a6.into(), p6).unwrap());
        prop_assert!(matches(cidr, &n4.to_string()), "{n4}");
        prop_assert!(matches(cidr, &n6.to_string()), "{n6}");
        let with_host_bits = format!("{a4}/{p4}");
        prop_assert!(matches(cidr, &with_host_bits), "{}", with_host_bits);
        let either = &*IP_OR_CIDR;
        for s in [a4.to_string(), a6.to_string(), n4.to_string(), n6.to_string()] {
            prop_assert!(matches(either, &s), "{s}");
        }
    }

    #[test]
    fn whatever_the_patterns_accept_has_the_shape_of_an_address(s in "[0-9a-f:./]{1,24}") {
        if matches(&IP, &s) {
            prop_assert!(s.parse::<std::net::IpAddr>().is_ok(), "{s}");
        }
        if matches(&CIDR, &s) {
            prop_assert!(s.parse::<ipnetwork::IpNetwork>().is_ok(), "{s}");
        }
        if matches(&IP_OR_CIDR, &s) {
            prop_assert!(
                s.parse::<std::net::IpAddr>().is_ok() || s.parse::<ipnetwork::IpNetwork>().is_ok(),
                "{s}"
            );
        }
    }
}

#[test]
fn the_patterns_refuse_what_users_get_wrong() {
    let (ip, cidr) = (&*IP, &*CIDR);
    for bad in [
        "300.1.2.3",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "::g",
        "1:2:3:4:5:6:7:8:9",
        "",
        " 1.2.3.4",
        "1.2.3.4 ",
    ] {
        assert!(!matches(ip, bad), "{bad:?}");
    }
    for bad in [
        "300.1.2.3/40",
        "192.168.0.0/33",
        "192.168.0.0",
        "2001:db8::/129",
        "10.0.0.0/08",
        "10.0.0.0/",
    ] {
        assert!(!matches(cidr, bad), "{bad:?}");
    }
}

// ---- the original objects ----

#[test]
fn the_original_node_overlay_ip_applies_as_it_is_and_reads_back_equal() {
    let yaml = fixture("nodeoverlayip.yaml");
    let obj: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(obj["spec"], json!({}), "the original carries spec: {{}}");
    assert_eq!(
        validate_object(&schema("nodeoverlayips"), &obj),
        Vec::<String>::new()
    );
    let o: NodeOverlayIp = round_trip(&yaml);
    let r = OverlayIpRecord::from(&o);
    assert_eq!(r.name, "10.176.162.151");
    assert_eq!(r.labels["zone"], "dal10");
    assert_eq!(r.labels["region"], "us-south");
    assert_eq!(r.finalizers, vec![overlay_core::FINALIZER.to_owned()]);
    assert_eq!(r.ip_addr.unwrap().to_string(), "192.168.100.4/24");
    assert_eq!(r.gateway.unwrap().to_string(), "192.168.100.1");
    assert!(!r.deleting);
    assert_eq!(r.agent, None);
    assert_eq!(r.address_error, None);
}

#[test]
fn the_original_static_route_applies_as_it_is_and_reads_back_equal() {
    let yaml = fixture("staticroute.yaml");
    let obj: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(
        validate_object(&schema("staticroutes"), &obj),
        Vec::<String>::new()
    );
    let s: StaticRoute = round_trip(&yaml);
    let r = StaticRouteRecord::from(&s);
    let spec = r.spec.clone().unwrap();
    assert_eq!(spec.subnet.to_string(), "192.168.0.0/24");
    assert_eq!(spec.gateway, GatewayChoice::Overlay);
    assert!(spec.selector.requirements.is_empty());
    assert_eq!(r.node_status.len(), 3);
    assert!(r.node_status.iter().all(|e| e.device == "tmp0"
        && e.gateway == "192.168.100.1"
        && e.state == RouteState::Applied));
}

#[test]
fn the_schema_refuses_the_objects_a_real_api_server_let_through() {
    let sr = schema("staticroutes");
    let with = |spec: Value| {
        json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
        "metadata": {"name": "x"}, "spec": spec})
    };
    let refused = |spec: Value, field: &str| {
        let errors = validate_object(&sr, &with(spec.clone()));
        assert!(
            errors.iter().any(|e| e.contains(field)),
            "{spec}: {errors:?}"
        );
    };
    refused(
        json!({"subnet": "192.0.2.0/24", "metric": 4294967296u64}),
        "spec.metric",
    );
    refused(json!({"subnet": "300.1.2.3/40"}), "spec.subnet");
    refused(json!({"subnet": "192.0.2.0/24", "table": 0}), "spec.table");
    refused(
        json!({"subnet": "192.0.2.0/24", "gateway": "192.0.2.300"}),
        "spec.gateway",
    );
    refused(json!({"subnet": "192.0.2.0/24", "typo": 1}), "spec.typo");
    refused(
        json!({"subnet": "192.0.2.0/24", "nodeSelector": {"matchExpressions": [
        {"key": "k", "operator": "Near"}]}}),
        "operator",
    );
    let mut bad_state = with(json!({"subnet": "192.0.2.0/24"}));
    bad_state["status"] = json!({"nodeStatus": [{"hostname": "n", "state": "Degraded"}]});
    assert!(!validate_object(&sr, &bad_state).is_empty());
    let noip = json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
        "metadata": {"name": "n"}, "status": {"ipAddr": "garbage"}});
    assert!(!validate_object(&schema("nodeoverlayips"), &noip).is_empty());
}

#[test]
fn malformed_specs_are_rejected_naming_the_field() {
    let bad = |f: fn(&mut StaticRouteSpec)| {
        let mut spec = StaticRouteSpec {
            subnet: "192.0.2.0/24".into(),
            ..Default::default()
        };
        f(&mut spec);
        static_route_model(&spec).unwrap_err()
    };
    assert_eq!(
        bad(|s| s.subnet = "192.0.2.1/24".into()).field,
        "spec.subnet"
    );
    assert_eq!(bad(|s| s.subnet = "not-a-cidr".into()).field, "spec.subnet");
    assert_eq!(
        bad(|s| s.gateway = Some("192.0.2.300".into())).field,
        "spec.gateway"
    );
    assert_eq!(bad(|s| s.table = Some(255)).field, "spec.table");
    let both = bad(|s| {
        s.gateway = Some("192.0.2.1".into());
        s.gateway_from = Some("10.0.0.0/8".into());
    });
    assert!(both.reason.contains("at most one"), "{both}");
    let mut ok = StaticRouteSpec {
        subnet: "198.51.100.0/24".into(),
        ..Default::default()
    };
    ok.gateway_from = Some("10.0.0.0/8".into());
    ok.table = Some(100);
    let m = static_route_model(&ok).unwrap();
    assert_eq!(
        m.gateway,
        GatewayChoice::Discover("10.0.0.0/8".parse().unwrap())
    );
}
