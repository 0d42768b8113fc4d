//! The lab end to end, as CI runs it (root): every ping succeeds, the churn
//! scenario releases and removes what it should, the legacy mode works, and
//! nothing of the lab is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use overlay_bins::lab::{IpamChoice, LabOptions, Scenario, run};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, SubnetSpec};
use overlay_testbed::{own_namespaces, privileged};

async fn lab_passes(opts: LabOptions) -> overlay_bins::lab::LabReport {
    let report = run(&opts).await.unwrap();
    println!("{}", report.table());
    assert!(report.ok(), "lab failed:\n{}", report.table());
    assert_eq!(report.rows.len(), opts.nodes);
    report
}

fn assert_nothing_left() {
    let left = own_namespaces();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

// One test runs the scenarios in sequence so that "nothing left behind" is
// checked after each run without other labs running at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_passes_in_every_mode_and_leaves_nothing_behind() {
    if !privileged("the_lab_passes_in_every_mode_and_leaves_nothing_behind") {
        return;
    }
    let host = || {
        let links = overlay_testbed::ip(&["-o", "link", "show"]).unwrap().stdout;
        let routes = overlay_testbed::ip(&["route", "show", "table", "all"])
            .unwrap()
            .stdout;
        (
            String::from_utf8_lossy(&links).lines().count(),
            String::from_utf8_lossy(&routes).lines().count(),
        )
    };
    let before = host();

    let r = lab_passes(LabOptions::default()).await;
    let zones: std::collections::BTreeSet<_> = r.rows.iter().map(|x| x.zone.clone()).collect();
    assert_eq!(zones.len(), 2, "3 nodes over 2 zones");
    assert!(
        r.rows.iter().all(|x| x.address.starts_with("192.0.2.")),
        "overlay addresses from the pools"
    );
    assert_nothing_left();

    let r = lab_passes(LabOptions {
        scenario: Some(Scenario::Churn),
        routes: 3,
        ..Default::default()
    })
    .await;
    assert_eq!(r.checks.len(), 3);
    assert_nothing_left();

    let r = lab_passes(LabOptions {
        legacy: true,
        ..Default::default()
    })
    .await;
    assert!(
        r.rows.iter().all(|x| x.gateway == "198.51.100.1"),
        "legacy routes use the discovered private gateway"
    );
    assert_nothing_left();

    let r = lab_passes(LabOptions {
        ipam: IpamChoice::Emulator,
        ..Default::default()
    })
    .await;
    assert!(r.rows.iter().all(|x| x.address.starts_with("192.0.2.")));
    assert_nothing_left();

    // --ipam phpipam against a phpIPAM server (the emulator standing in):
    // zones, subnets and gateways come from what phpIPAM reports.
    let ecfg = EmulatorConfig {
        subnets: vec![SubnetSpec {
            id: 42,
            network: "198.19.250.0".parse().unwrap(),
            mask: 26,
            description: "lab scratch".into(),
            gateway: Some("198.19.250.1".parse().unwrap()),
        }],
        ..Default::default()
    };
    let (user, password) = ecfg.users[0].clone();
    let emu = Emulator::start(ecfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("user"), user).unwrap();
    std::fs::write(dir.path().join("pass"), password).unwrap();
    let cfg = dir.path().join("overlay-ip-config.yaml");
    std::fs::write(&cfg, format!(
        "phpIPAM:\n  url: {}\n  appID: overlay\n  subnetMap: {{wdc04: [42]}}\n  usernameFile: {}\n  passwordFile: {}\n",
        emu.url(), dir.path().join("user").display(), dir.path().join("pass").display())).unwrap();
    let r = lab_passes(LabOptions {
        ipam: IpamChoice::Phpipam,
        ipam_config: Some(cfg),
        nodes: 2,
        ..Default::default()
    })
    .await;
    assert!(
        r.rows.iter().all(|x| x.zone == "wdc04"
            && x.gateway == "198.19.250.1"
            && x.address.ends_with("/26")),
        "{}",
        r.table()
    );
    assert_nothing_left();

    assert_eq!(before, host(), "the lab changed the host's links or routes");
}

#[test]
fn dry_run_describes_the_plan_without_root() {
    let text = overlay_bins::lab::describe(&LabOptions::default()).unwrap();
    assert!(
        text.contains("node-3") && text.contains("zone-2") && text.contains("203.0.113.10"),
        "{text}"
    );
    let bad = overlay_bins::lab::describe(&LabOptions {
        nodes: 0,
        ..Default::default()
    })
    .unwrap_err();
    assert!(bad.contains("--nodes"), "{bad}");
    let both = overlay_bins::lab::describe(&LabOptions {
        legacy: true,
        scenario: Some(Scenario::Churn),
        ..Default::default()
    })
    .unwrap_err();
    assert!(both.contains("--legacy"), "{both}");
}
