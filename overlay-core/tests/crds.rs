//! The custom resources: the original project's objects round-trip, and the
//! committed `deploy/crds/` equals what the types generate.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use overlay_core::crd::{
    NodeOverlayIp, StaticRoute, StaticRouteSpec, crds_yaml, static_route_model,
};
use overlay_core::{GatewayChoice, OverlayIpRecord, RouteState, StaticRouteRecord};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// Deserialize into `T`, serialize back, and compare as JSON values.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(yaml: &str) -> T {
    let original: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let typed: T = serde_yaml::from_str(yaml).unwrap();
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(original, back, "object changed on the round trip");
    typed
}

#[test]
fn original_node_overlay_ip_round_trips_and_validates() {
    let o: NodeOverlayIp = round_trip(&fixture("nodeoverlayip.yaml"));
    let r = OverlayIpRecord::from(&o);
    assert_eq!(r.name, "10.176.162.151");
    assert_eq!(r.labels["zone"], "dal10");
    assert_eq!(r.labels["region"], "us-south");
    assert_eq!(r.finalizers, vec![overlay_core::FINALIZER.to_owned()]);
    assert_eq!(r.ip_addr.unwrap().to_string(), "192.168.100.4/24");
    assert_eq!(r.gateway.unwrap().to_string(), "192.168.100.1");
    assert!(!r.deleting);
    assert_eq!(r.agent, None);
}

#[test]
fn original_static_route_round_trips_and_validates() {
    let s: StaticRoute = round_trip(&fixture("staticroute.yaml"));
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

#[test]
fn generated_crds_carry_admission_validation_and_columns() {
    let all: String = crds_yaml().unwrap().into_iter().map(|(_, y)| y).collect();
    for needle in [
        "isCIDR(self) && cidr(self) == cidr(self).masked()",
        "isIP(self)",
        "x-kubernetes-list-type: \"map\"",
        "\"hostname\"",
        "self != 0 && self != 253 && self != 255",
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

#[test]
fn committed_crds_equal_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for (name, yaml) in crds_yaml().unwrap() {
        let path = dir.join(format!("{name}.yaml"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} differs from the Rust types; regenerate with `cargo run -p overlay-bins --bin overlayctl -- crds --out deploy/crds`",
            path.display()
        );
        // And the committed file is valid YAML describing that CRD.
        let v: serde_json::Value = serde_yaml::from_str(&committed).unwrap();
        assert_eq!(v["metadata"]["name"], name.as_str());
    }
}
