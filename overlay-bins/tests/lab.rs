//! The lab end to end, as CI runs it (root): every ping succeeds, the churn
//! scenario releases and removes what it should, the legacy mode works, a
//! lab that does not converge fails, and nothing of the lab is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Stdio};
use std::time::Duration;

use overlay_bins::lab::{IpamChoice, LabOptions, LabReport, NodeRow, Scenario, run};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, SubnetSpec};
use overlay_testbed::{NETNS_DIR, own_namespaces, privileged};

/// Labs run in this process share its pid, so their namespaces share the
/// `ovt-<pid>-` prefix that "nothing left behind" checks: one at a time.
static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The namespaces of process `pid` (a lab started as a child).
fn namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("ovt-{pid}-");
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

async fn lab_passes(opts: LabOptions) -> overlay_bins::lab::LabReport {
    let report = run(&opts).await.unwrap();
    println!("{}", report.table());
    assert!(report.ok(), "lab failed:\n{}", report.table());
    assert_eq!(report.rows.len(), opts.nodes);
    assert!(
        report.rows.iter().all(|r| r.converge_ms.is_some()),
        "every node converged:\n{}",
        report.table()
    );
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
    let _one_at_a_time = IN_PROCESS.lock().await;
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

fn row(node: &str, ping_ok: bool, converge_ms: Option<u128>) -> NodeRow {
    NodeRow {
        node: node.into(),
        zone: "zone-1".into(),
        address: "192.0.2.2/26".into(),
        gateway: "192.0.2.1".into(),
        routes: "1/1".into(),
        ping_ok,
        converge_ms,
    }
}

#[test]
fn a_node_that_did_not_converge_fails_the_report_even_when_it_pings() {
    let good = LabReport {
        rows: vec![row("node-1", true, Some(20)), row("node-2", true, Some(25))],
        ..Default::default()
    };
    assert!(good.ok(), "{}", good.table());
    assert!(good.verdict().contains("every node converged"));

    let late = LabReport {
        rows: vec![row("node-1", true, Some(20)), row("node-2", true, None)],
        ..Default::default()
    };
    assert!(!late.ok());
    let verdict = late.verdict();
    assert!(
        verdict.starts_with("lab: FAILED") && verdict.contains("node-2"),
        "{verdict}"
    );
    assert!(!verdict.contains("node-1"), "node-1 converged: {verdict}");
    let table = late.table();
    let line = table.lines().find(|l| l.starts_with("node-2")).unwrap();
    assert!(line.ends_with(" no"), "CONVERGED says no: {table}");

    assert!(
        !LabReport::default().ok(),
        "a lab without nodes is no success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_that_does_not_converge_within_the_timeout_fails() {
    if !privileged("a_lab_that_does_not_converge_within_the_timeout_fails") {
        return;
    }
    let _one_at_a_time = IN_PROCESS.lock().await;
    // A zero timeout: convergence is checked once, right after the agents
    // start, before any of them can have applied its routes.
    let report = run(&LabOptions {
        nodes: 2,
        timeout: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    println!("{}", report.table());
    assert!(
        report.rows.iter().any(|r| r.converge_ms.is_none()),
        "{}",
        report.table()
    );
    assert!(!report.ok(), "not converged, yet ok():\n{}", report.table());
    assert!(report.verdict().contains("did not converge"));
    assert_nothing_left();
}

#[test]
fn the_binary_exits_1_and_does_not_claim_success_when_nodes_do_not_converge() {
    if !privileged("the_binary_exits_1_and_does_not_claim_success_when_nodes_do_not_converge") {
        return;
    }
    let child = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(["lab", "--nodes", "2", "--timeout", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{all}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("lab: FAILED") && last.contains("did not converge"),
        "the last line states the failure: {all}"
    );
    assert!(
        !all.contains("every node converged") && !all.contains("reached the on-prem host"),
        "no success claimed: {all}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("node-") && l.ends_with(" no")),
        "the CONVERGED column says no: {all}"
    );
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "{all}");
}

/// Where `tool` is in this process's PATH.
fn which(tool: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not in PATH"))
}

#[test]
fn a_missing_ping_is_named_with_its_package_before_anything_is_created() {
    if !privileged("a_missing_ping_is_named_with_its_package_before_anything_is_created") {
        return;
    }
    // A PATH with ip and sysctl but no ping (for the child only).
    let dir = tempfile::tempdir().unwrap();
    for tool in ["ip", "sysctl"] {
        std::os::unix::fs::symlink(which(tool), dir.path().join(tool)).unwrap();
    }
    let child = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(["lab", "--nodes", "2"])
        .env("PATH", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`ping`, not found in PATH")
            && stderr.contains("apt-get install iputils-ping")
            && stderr.contains("nothing was created"),
        "{stderr}"
    );
    assert!(!stderr.contains("sysctl"), "sysctl is there: {stderr}");
    assert!(!stderr.contains("building"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
}
