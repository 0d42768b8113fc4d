#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `overlayctl ipam check` / `ipam conformance` logic against the emulator
//! and embedded pools.

use std::sync::{Arc, Mutex};

use overlay_ipam::check::{Verdict, check, conformance};
use overlay_ipam::config::ControllerConfig;
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
    let cfg = ControllerConfig::php_ipam(
        "c1",
        PhpIpamConfig::new(emu.url(), "overlay")
            .with_zone("gw", [1])
            .with_zone("nogw", [2])
            .with_zone("missing", [1, 999]),
    );
    let report = check(&cfg, creds("ApiUser-Test-1")).await.unwrap();
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

    let bad = check(&cfg, creds("wrong")).await.unwrap();
    assert!(
        matches!(&bad.connection, Verdict::Failed(e) if e.contains("authentication")),
        "{bad}"
    );
    assert!(!bad.passed());
}

#[tokio::test]
async fn check_counts_embedded_pools() {
    let cfg = ControllerConfig::embedded(
        "lab",
        PoolsConfig::new().with_pool("dal10", PoolConfig::parse("192.0.2.0/29").unwrap()),
        None,
    );
    let report = check(&cfg, None).await.unwrap();
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
    let cfg = ControllerConfig::php_ipam(
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
