#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `overlayctl ipam check` / `ipam conformance` logic against the emulator
//! and embedded pools.

use std::sync::{Arc, Mutex};

use overlay_ipam::check::{Verdict, check, conformance};
use overlay_ipam::config::IpamConfig;
use overlay_ipam::emulator::{Emulator, EmulatorConfig};
use overlay_ipam::phpipam::{Credentials, PhpIpamConfig, Secret};
use overlay_ipam::pools::{PoolConfig, PoolsConfig};

fn creds(password: &str) -> Option<Credentials> {
    Some(Credentials::User {
        username: "apiuser".into(),
        password: Secret::new(password),
    })
}

#[tokio::test]
async fn check_reports_each_zone() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let cfg = IpamConfig::php_ipam(
        "c1",
        PhpIpamConfig::new(emu.url(), "overlay")
            .with_zone("gw", [1])
            .with_zone("nogw", [2])
            .with_zone("missing", [1, 999]),
    );
    let report = check(&cfg, creds("ApiUser-Test-1"), Some("c1"))
        .await
        .unwrap();
    assert_eq!(report.connection, Verdict::Ok);
    let by_zone = |z: &str| report.zones.iter().find(|c| c.zone == z).unwrap();
    assert_eq!(by_zone("gw").verdict, Verdict::Ok);
    assert_eq!(by_zone("gw").subnets[0].free, Some(253));
    assert_eq!(
        by_zone("gw").subnets[0].network.as_deref(),
        Some("192.0.2.0/24")
    );
    assert!(matches!(by_zone("nogw").verdict, Verdict::Warning(_)));
    assert!(matches!(&by_zone("missing").verdict, Verdict::Failed(e) if e.contains("999")));
    assert!(!report.passed());
    let text = report.to_string();
    assert!(text.contains("zone gw: OK"), "{text}");
    // Read-only: nothing was reserved.
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 0);

    let bad = check(&cfg, creds("wrong"), Some("c1")).await.unwrap();
    assert!(
        matches!(&bad.connection, Verdict::Failed(e) if e.contains("authentication")),
        "{bad}"
    );
    assert!(!bad.passed());
}

#[tokio::test]
async fn check_counts_embedded_pools() {
    let cfg = IpamConfig::embedded(
        "lab",
        PoolsConfig::new().with_pool("dal10", PoolConfig::parse("192.0.2.0/29").unwrap()),
        None,
    );
    let report = check(&cfg, None, None).await.unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(report.zones[0].subnets[0].free, Some(5));
    assert_eq!(
        report.zones[0].subnets[0].gateway,
        Some("192.0.2.1".parse().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_scratch_zone_cleans_up() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    // A real cluster's reservation in the same subnet must survive.
    emu.create_address(
        3,
        "203.0.113.77".parse().unwrap(),
        "node-a",
        "overlay-owner:c1/node-a",
    )
    .unwrap();
    let cfg = IpamConfig::php_ipam(
        "c1",
        PhpIpamConfig::new(emu.url(), "overlay").with_zone("scratch", [3]),
    );
    let notices = Arc::new(Mutex::new(Vec::new()));
    let n = notices.clone();
    let report = conformance(&cfg, "scratch", creds("ApiUser-Test-1"), move |m| {
        n.lock().unwrap().push(m.to_string())
    })
    .await
    .unwrap();
    assert!(report.passed(), "{report}");
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1);
    assert!(
        notices[0].contains("will reserve and release"),
        "{notices:?}"
    );
    let left = emu.addresses(3);
    assert_eq!(
        left.len(),
        1,
        "only the real cluster's address remains: {left:?}"
    );
    assert_eq!(left[0].hostname.as_deref(), Some("node-a"));

    let err = conformance(&cfg, "nope", creds("ApiUser-Test-1"), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.field, "--zone");
}

/// An emulator whose subnet 1 (zone `gw`) holds entries of every class:
/// this cluster's (c1) live and held, other clusters', hand-made ones and
/// unparseable markers; and a configuration of cluster c1 for it.
async fn subnet_of_every_class() -> (Emulator, IpamConfig) {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let entries = [
        ("192.0.2.10", "n1", "overlay-owner:c1/n1"),
        ("192.0.2.11", "n2", "overlay-owner:c1/n2"),
        (
            "192.0.2.12",
            "n3",
            "overlay-held:c1/n3 until=2099-01-01T00:00:00Z",
        ),
        (
            "192.0.2.13",
            "n4",
            "overlay-held:c1/n4 until=2020-01-01T00:00:00Z",
        ),
        ("192.0.2.20", "m1", "overlay-owner:c2/m1"),
        (
            "192.0.2.21",
            "m2",
            "overlay-held:c2/m2 until=2099-01-01T00:00:00Z",
        ),
        ("192.0.2.22", "k1", "overlay-owner:c3/k1"),
        ("192.0.2.30", "printer", "made by hand"),
        ("192.0.2.40", "x", "overlay-owner:c1"),
        ("192.0.2.41", "y", "overlay-held:c1/y until=soon"),
    ];
    for (ip, host, d) in entries {
        emu.create_address(1, ip.parse().unwrap(), host, d).unwrap();
    }
    let cfg = IpamConfig::php_ipam(
        "c1",
        PhpIpamConfig::new(emu.url(), "overlay").with_zone("gw", [1]),
    );
    (emu, cfg)
}

/// Nothing was reserved, changed or deleted.
fn assert_read_only(emu: &Emulator) {
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 0);
    assert_eq!(emu.count("PATCH /addresses/{}/"), 0);
    assert_eq!(emu.count("DELETE /addresses/{}/"), 0);
}

#[tokio::test]
async fn check_sorts_the_entries_of_each_subnet() {
    let (emu, cfg) = subnet_of_every_class().await;
    let report = check(&cfg, creds("ApiUser-Test-1"), Some("c1"))
        .await
        .unwrap();
    let e = report.zones[0].subnets[0].entries.clone().unwrap();
    assert_eq!(e.cluster.as_deref(), Some("c1"));
    assert_eq!(e.live, 2);
    let held: Vec<(String, String)> = e
        .held
        .iter()
        .map(|h| (h.address.to_string(), h.node.clone()))
        .collect();
    assert_eq!(
        held,
        [
            ("192.0.2.12".to_string(), "n3".to_string()),
            ("192.0.2.13".to_string(), "n4".to_string())
        ]
    );
    assert_eq!(
        e.clusters,
        [("c2".to_string(), 2), ("c3".to_string(), 1)].into()
    );
    // The gateway and the printer.
    assert_eq!(e.unmarked, 2);
    assert_eq!(
        e.unparseable,
        [
            (
                "192.0.2.40".parse().unwrap(),
                "overlay-owner:c1".to_string()
            ),
            (
                "192.0.2.41".parse().unwrap(),
                "overlay-held:c1/y until=soon".to_string()
            )
        ]
    );
    let text = report.to_string();
    for line in [
        "entries: this cluster (c1): 2 live, 2 held; other clusters: c2 2, c3 1; unmarked 2; unparseable overlay- markers 2",
        "held 192.0.2.12 (n3) until 2099-01-01T00:00:00Z\n",
        "held 192.0.2.13 (n4) until 2020-01-01T00:00:00Z (expired)",
        "unparseable 192.0.2.40: \"overlay-owner:c1\"",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    // The emulator speaks plain http: the report says what that exposes.
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(text.contains("WARNING: phpIPAM.url http://"), "{text}");
    assert!(text.contains("clear text"), "{text}");
    assert_read_only(&emu);
}

#[tokio::test]
async fn check_without_a_cluster_id_counts_every_cluster() {
    let (emu, cfg) = subnet_of_every_class().await;
    let report = check(&cfg, creds("ApiUser-Test-1"), None).await.unwrap();
    let e = report.zones[0].subnets[0].entries.clone().unwrap();
    assert_eq!((e.live, e.held.len()), (0, 0));
    assert_eq!(
        e.clusters,
        [
            ("c1".to_string(), 4),
            ("c2".to_string(), 2),
            ("c3".to_string(), 1)
        ]
        .into()
    );
    assert!(
        report
            .to_string()
            .contains("clusters seen: c1 4, c2 2, c3 1;"),
        "{report}"
    );
    assert_read_only(&emu);
}
