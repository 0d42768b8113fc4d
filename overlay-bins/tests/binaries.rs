//! The binaries as a user meets them: `--help` names every flag and
//! environment variable, and a bad config stops the controller at start with
//! one message naming the file, the field and the problem.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

fn help(bin: &str) -> String {
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn controller_help_documents_every_flag_and_variable() {
    let h = help(env!("CARGO_BIN_EXE_overlay-controller"));
    for needle in [
        "--config",
        "OVERLAY_CONFIG",
        "--cluster-id",
        "CLUSTER_ID",
        "--dry-run",
        "DRY_RUN",
        "--metrics-addr",
        "METRICS_ADDR",
        "--concurrency",
        "--resync-seconds",
        "--no-leader-elect",
        "--lease-name",
        "POD_NAMESPACE",
        "POD_NAME",
        "--kubeconfig",
        "KUBECONFIG",
        "PHPIPAM_USERNAME",
        "PHPIPAM_PASSWORD",
        "--phpipam-secret-dir",
        "PHPIPAM_SECRET_DIR",
        "phpipam-secret",
        "/opt/controller-config/overlay-ip-config.yaml",
        "/etc/overlay/overlay-ip-config.yaml",
        "--log-format",
    ] {
        assert!(h.contains(needle), "--help lacks {needle}:\n{h}");
    }
}

#[test]
fn agent_help_documents_every_flag_and_variable() {
    let h = help(env!("CARGO_BIN_EXE_overlay-agent"));
    for needle in [
        "NODE_NAME",
        "NODE_HOSTNAME",
        "INTERFACE",
        "INTERFACE_LABEL",
        "PROTECTED_SUBNETS",
        "STATIC_ROUTES_CONFIGMAP",
        "STATIC_ROUTES_FILE",
        "LEGACY_GATEWAY_FROM",
        "NO_STATIC_ROUTES",
        "ROUTE_PROTOCOL",
        "METRICS_ADDR",
        "RESYNC_SECONDS",
        "KUBECONFIG",
        "LOG_FORMAT",
    ] {
        assert!(h.contains(needle), "--help lacks {needle}:\n{h}");
    }
}

#[test]
fn a_bad_config_exits_at_start_naming_file_field_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlay-ip-config.yaml");
    std::fs::write(
        &path,
        "phpIPAM:\n  url: http://phpipam\n  appID: iks\n  subnetMap:\n    dal10: [seven]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_overlay-controller"))
        .args(["--config", path.to_str().unwrap(), "--metrics-addr", "off"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("subnetMap"), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("invalid configuration"))
            .count(),
        1,
        "{err}"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_overlay-controller"))
        .args(["--config", "/nonexistent/overlay-ip-config.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/overlay-ip-config.yaml")
    );
}

#[test]
fn without_a_config_the_controller_names_both_places_it_looked() {
    let paths = [
        overlay_ipam::config::DEFAULT_PATH,
        overlay_ipam::config::ORIGINAL_PATH,
    ];
    for p in paths {
        assert!(
            !std::path::Path::new(p).exists(),
            "this test expects no controller config at {p} on the machine running it"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_overlay-controller"))
        .args(["--metrics-addr", "off"])
        .env_remove("OVERLAY_CONFIG")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for p in paths {
        assert!(err.contains(p), "{err}");
    }
    assert!(err.contains("overlay-ip-controller-config"), "{err}");
}

#[test]
fn check_config_prints_the_parsed_original_config_or_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("overlay-ip-config.yaml");
    std::fs::write(
        &good,
        "phpIPAM: {url: http://phpipam, appID: iks, subnetMap: {dal10: [7]}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("valid")
            && text.contains("zone dal10: subnets 7")
            && text.contains("http://phpipam"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");

    // The original controller's config may hold the credentials: valid,
    // with a warning, and the password is never printed.
    let inline = dir.path().join("inline.yaml");
    std::fs::write(
        &inline,
        "phpIPAM: {url: http://phpipam, appID: iks, username: apiuser, password: Pass-In-Config-1, subnetMap: {dal10: [7]}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(["check-config", inline.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning") && text.contains("phpipam-secret"),
        "{text}"
    );
    assert!(!text.contains("Pass-In-Config-1"), "{text}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "embedded:\n  zones:\n    dal10:\n      - {cidr: 192.0.2.1/24}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("embedded.zones.dal10"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_check_reports_each_zone_against_a_phpipam_server() {
    use overlay_ipam::emulator::{Emulator, EmulatorConfig};
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let (user, pass) = EmulatorConfig::default().users[0].clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("u"), user).unwrap();
    std::fs::write(dir.path().join("p"), pass).unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, format!(
        "phpIPAM:\n  url: {}\n  appID: overlay\n  subnetMap: {{dal10: [1], dal12: [999]}}\n  usernameFile: {}\n  passwordFile: {}\n",
        emu.url(), dir.path().join("u").display(), dir.path().join("p").display())).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(["ipam", "check", "--config", cfg.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dal10") && text.contains("dal12"), "{text}");
    assert!(
        text.contains("192.0.2.1"),
        "gateway of subnet 1 shown: {text}"
    );
    assert!(
        !out.status.success(),
        "subnet 999 does not exist, so the check fails: {text}"
    );
}

#[test]
fn the_controller_refuses_in_memory_pools_that_would_forget_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlay-ip-config.yaml");
    std::fs::write(
        &path,
        "embedded:\n  zones:\n    dal10:\n      - {cidr: 192.0.2.0/24}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_overlay-controller"))
        .args(["--config", path.to_str().unwrap(), "--metrics-addr", "off"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("embedded.stateFile"), "{err}");
}

#[test]
fn ipam_pools_and_migrate_document_every_flag() {
    let bin = env!("CARGO_BIN_EXE_overlayctl");
    let help = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let h = help(&["ipam", "migrate", "--help"]);
    for needle in [
        "--from-state-file",
        "embedded.stateFile",
        "--dry-run",
        "--output",
        "json",
        "--kubeconfig",
        "KUBECONFIG",
        "Idempotent",
        "Exit status 1",
    ] {
        assert!(
            h.contains(needle),
            "ipam migrate --help lacks {needle}:\n{h}"
        );
    }
    let h = help(&["ipam", "pools", "--help"]);
    for needle in ["--output", "json", "--kubeconfig", "KUBECONFIG", "usage"] {
        assert!(h.contains(needle), "ipam pools --help lacks {needle}:\n{h}");
    }
    let h = help(&["ipam", "--help"]);
    assert!(h.contains("pools") && h.contains("migrate"), "{h}");
}

#[test]
fn ipam_migrate_names_a_state_file_it_cannot_read_before_it_asks_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let run = |file: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_overlayctl"))
            .args(["ipam", "migrate", "--dry-run", "--from-state-file"])
            .arg(file)
            // Never a cluster: the file is read first.
            .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
            .output()
            .unwrap()
    };
    let missing = dir.path().join("missing-pools.json");
    let out = run(&missing);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing-pools.json") && err.contains("cannot read"),
        "{err}"
    );
    assert!(
        err.contains("embedded.stateFile"),
        "says what to give: {err}"
    );
    assert!(out.stdout.is_empty(), "no plan without a state file");

    let corrupt = dir.path().join("corrupt-pools.json");
    std::fs::write(
        &corrupt,
        "{\"format\": \"overlay-ipam-pools\", \"version\": 1, \"reserv",
    )
    .unwrap();
    let out = run(&corrupt);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt-pools.json") && err.contains("not an overlay pool state file"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(["ipam", "migrate", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from-state-file"));
}

#[test]
fn overlayctl_install_prints_manifests_and_names_every_flag() {
    let bin = env!("CARGO_BIN_EXE_overlayctl");
    let out = Command::new(bin)
        .args(["install", "--help"])
        .output()
        .unwrap();
    let h = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--ipam",
        "--phpipam-url",
        "--app-id",
        "--subnet-map",
        "--pool",
        "--cluster-id",
        "--legacy-configmap",
        "--image-repository",
        "--tag",
        "--namespace",
        "--check",
        "--kubeconfig",
    ] {
        assert!(h.contains(flag), "install --help lacks {flag}:\n{h}");
    }
    // KUBECONFIG in the environment (as on any operator's machine) does
    // not get in the way of printing.
    let out = Command::new(bin)
        .args(["install", "--pool", "dal10=192.0.2.0/24"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("# Source: deploy/controller/deployment.yaml"));
    assert!(text.contains("kind: OverlayIPPool"));
    // A bad flag: what was wrong and what to write.
    let out = Command::new(bin)
        .args(["install", "--subnet-map", "dal10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ZONE=ID"), "{stderr}");
    let out = Command::new(bin)
        .args(["uninstall", "--namespace", "net-overlay"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("kubectl -n net-overlay delete daemonset overlay-agent"));
}
