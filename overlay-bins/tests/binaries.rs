//! The binaries as a user meets them: `--help` names every flag and
//! environment variable, and a bad config stops the controller at start with
//! one message naming the file, the field and the problem; every metric
//! they export is documented in docs/OPERATIONS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use overlay_core::metrics::prometheus::PrometheusMetrics;

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

/// The phpIPAM emulator, and a controller config for it with `subnet_map`
/// (YAML) and the credentials in files, in a temporary directory.
async fn emulator_config(
    subnet_map: &str,
) -> (
    overlay_ipam::emulator::Emulator,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    use overlay_ipam::emulator::{Emulator, EmulatorConfig};
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let (user, pass) = EmulatorConfig::default().users[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let (u, p) = (dir.path().join("u"), dir.path().join("p"));
    std::fs::write(&u, user).unwrap();
    std::fs::write(&p, pass).unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, format!(
        "phpIPAM:\n  url: {}\n  appID: overlay\n  subnetMap: {subnet_map}\n  usernameFile: {}\n  passwordFile: {}\n",
        emu.url(), u.display(), p.display())).unwrap();
    (emu, dir, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_check_reports_each_zone_against_a_phpipam_server() {
    let (_emu, _dir, cfg) = emulator_config("{dal10: [1], dal12: [999]}").await;
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

/// `overlayctl ipam release` (the uninstall's step 3) frees this cluster's
/// phpIPAM entries, live and held, and leaves every other cluster's; with
/// `--dry-run` it only lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_release_frees_this_clusters_addresses_and_nothing_else() {
    use overlay_core::{Owner, Zone};
    let (_emu, dir, cfg) = emulator_config("{dal10: [1]}").await;
    let backend = |cluster: &str| {
        let mut c = overlay_ipam::config::IpamConfig::load(&cfg).unwrap();
        c.cluster_id = Some(cluster.into());
        c.build().unwrap()
    };
    let (c1, c2) = (backend("c1"), backend("c2"));
    let zone = Zone::parse("zone", "dal10").unwrap();
    c1.reserve(&Owner::new("c1", "node-a"), &zone)
        .await
        .unwrap();
    let b = c1
        .reserve(&Owner::new("c1", "node-b"), &zone)
        .await
        .unwrap();
    c1.release(&b, Duration::from_secs(3600)).await.unwrap();
    c2.reserve(&Owner::new("c2", "node-a"), &zone)
        .await
        .unwrap();
    let release = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
            .args(["ipam", "release", "--config", cfg.to_str().unwrap()])
            .args(extra)
            .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = release(&["--cluster-id", "c1", "--dry-run"]);
    assert!(
        ok && text.contains("2 address(es) of cluster c1 would release"),
        "{text}"
    );
    assert!(
        text.contains("held, node node-b") && text.contains("live, node node-a"),
        "{text}"
    );
    assert_eq!(
        c1.list().await.unwrap().len(),
        2,
        "--dry-run changed nothing"
    );
    let (ok, text) = release(&["--cluster-id", "c1"]);
    assert!(
        ok && text.contains("2 address(es) of cluster c1 released"),
        "{text}"
    );
    assert_eq!(c1.list().await.unwrap(), vec![], "{text}");
    assert_eq!(
        c2.list().await.unwrap().len(),
        1,
        "another cluster's entry stays"
    );
    let (ok, text) = release(&["--cluster-id", "c1"]);
    assert!(
        ok && text.contains("0 address(es)"),
        "again: nothing left, {text}"
    );
    // No cluster id anywhere: the error says what to give.
    let (ok, text) = release(&[]);
    assert!(!ok && text.contains("--cluster-id"), "{text}");
    // Kubernetes IPAM: nothing to do here, and it says where they go.
    std::fs::write(&cfg, "kubernetes: {}\n").unwrap();
    let (ok, text) = release(&[]);
    assert!(ok && text.contains("OverlayIPAllocations"), "{text}");
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

/// One process's metrics as OpenMetrics text, with one sample of every
/// measurement, so that every family shows its labels.
fn exported_metrics(metrics: &PrometheusMetrics) -> String {
    use overlay_core::metrics::{Measurement, Metrics};
    for m in [
        Measurement::ControllerReconciled {
            object: "node",
            ok: true,
        },
        Measurement::ControllerError { kind: "exhausted" },
        Measurement::OrphanCollected {
            what: "reservation",
        },
        Measurement::Adoption { result: "adopted" },
        Measurement::ReservationsHeld(3),
        Measurement::Leader(true),
        Measurement::IpamCall {
            backend: "phpipam",
            call: "reserve",
            result: "ok",
            elapsed: std::time::Duration::from_millis(2),
        },
        Measurement::IpamLoginBlocked(false),
        Measurement::AgentRoutes {
            desired: 2,
            applied: 1,
            failed: 1,
        },
        Measurement::AgentRepaired,
        Measurement::AgentApplied(std::time::Duration::from_millis(2)),
        Measurement::AgentReconciled { ok: true },
        Measurement::InvalidObjects {
            kind: "StaticRoute",
            count: 1,
        },
    ] {
        metrics.record(m);
    }
    metrics.encode()
}

/// Exported metric name (counters with `_total`) → (type, label names),
/// read from OpenMetrics text.
fn metric_families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families = BTreeMap::new();
    for rest in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = rest.split_once(' ').unwrap();
        let exported = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_owned()
        };
        families.insert(exported, (kind.to_owned(), BTreeSet::new()));
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split_once(' ').unwrap().0;
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let family = families
            .iter_mut()
            .find(|(f, _)| {
                name == f.as_str()
                    || name
                        .strip_prefix(f.as_str())
                        .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
            })
            .unwrap_or_else(|| panic!("sample {line:?} of no family"));
        let labels = labels.trim_end_matches('}');
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let key = pair.split_once('=').unwrap().0;
            if key != "le" {
                family.1.1.insert(key.to_owned());
            }
        }
    }
    families
}

/// The rows of docs/OPERATIONS.md's metrics table: name → (type, label
/// names, exported by).
fn documented_metrics() -> BTreeMap<String, (String, BTreeSet<String>, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let ticked = |cell: &str| -> BTreeSet<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    doc.lines()
        .filter(|l| l.starts_with("| `overlay_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_owned();
            let row = (cells[2].to_owned(), ticked(cells[3]), cells[4].to_owned());
            (name, row)
        })
        .collect()
}

#[test]
fn every_metric_the_daemons_export_is_documented() {
    let controller = metric_families(&exported_metrics(&PrometheusMetrics::controller()));
    let agent = metric_families(&exported_metrics(&PrometheusMetrics::agent()));
    let documented = documented_metrics();
    let mut all = controller.clone();
    all.extend(agent.clone());
    assert!(all.len() >= 13, "{all:?}");
    for (name, (kind, labels)) in &all {
        let Some((doc_kind, doc_labels, by)) = documented.get(name) else {
            panic!("{name} is exported but not in docs/OPERATIONS.md's metrics table");
        };
        assert_eq!(doc_kind, kind, "type of {name} in docs/OPERATIONS.md");
        assert_eq!(doc_labels, labels, "labels of {name} in docs/OPERATIONS.md");
        for (process, families) in [("controller", &controller), ("agent", &agent)] {
            assert_eq!(
                by.contains(process),
                families.contains_key(name),
                "docs/OPERATIONS.md: is {name} exported by the {process}?"
            );
        }
    }
    for name in documented.keys() {
        assert!(
            all.contains_key(name),
            "docs/OPERATIONS.md documents {name}, which neither daemon exports"
        );
    }
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
