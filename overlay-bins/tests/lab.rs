//! The lab end to end, as CI runs it (root): every ping succeeds, the churn
//! scenario releases and removes what it should, the legacy mode works, a
//! lab that does not converge fails, and nothing of the lab is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use overlay_bins::lab::{IpamChoice, LabOptions, LabReport, NodeRow, Scenario, run};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, SubnetSpec};
use overlay_testbed::{namespaces_of, own_namespaces, privileged};

/// Labs run in this process share its pid, so their namespaces share the
/// `ovt-<pid>-` prefix that "nothing left behind" checks: one at a time.
static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

    lab_takes_over_from_both_originals().await;
    lab_passes_with_the_ipam_emulator().await;
    lab_passes_with_kubernetes_pools().await;
    lab_passes_with_phpipam().await;
    lab_passes_with_the_images().await;

    assert_eq!(before, host(), "the lab changed the host's links or routes");
}

/// `--scenario migrate`: nodes left by the Go controller (odd) and by the
/// static-routes DaemonSet (even) are taken over under a continuous ping:
/// not one ping lost, no address changed, every record adopted, and the
/// deleted node's original record released.
async fn lab_takes_over_from_both_originals() {
    let r = lab_passes(LabOptions {
        scenario: Some(Scenario::Migrate),
        nodes: 4,
        ..Default::default()
    })
    .await;
    let check = |needle: &str| {
        r.checks
            .iter()
            .find(|(c, _)| c.contains(needle))
            .unwrap_or_else(|| panic!("no check {needle:?}:\n{}", r.table()))
            .clone()
    };
    let (summary, ok) = check("takeover: 0 of ");
    assert!(ok, "{summary}");
    assert!(
        summary.contains("0 addresses changed") && summary.contains("2 of 2 records adopted"),
        "{summary}"
    );
    assert!(check("node-1 deleted: the record the Go controller made").1);
    for node in ["node-1", "node-3"] {
        assert!(
            check(&format!(
                "{node} (left by iks-overlay-ip-controller): tmp0 kept"
            ))
            .1
        );
    }
    assert!(check("node-2 (left by static-routes): 0 of").1);
    assert!(
        r.rows.iter().all(|x| x.routes == "ours"),
        "every original route is overlay's now:\n{}",
        r.table()
    );
    assert_nothing_left();
}

/// `--ipam emulator`: the controller reserves from the phpIPAM emulator.
async fn lab_passes_with_the_ipam_emulator() {
    let r = lab_passes(LabOptions {
        ipam: IpamChoice::Emulator,
        ..Default::default()
    })
    .await;
    assert!(r.rows.iter().all(|x| x.address.starts_with("192.0.2.")));
    assert_nothing_left();
}

/// `--ipam kubernetes`: the controller reserves OverlayIPAllocations from
/// OverlayIPPools in the lab's in-memory API.
async fn lab_passes_with_kubernetes_pools() {
    let r = lab_passes(LabOptions {
        ipam: IpamChoice::Kubernetes,
        ..Default::default()
    })
    .await;
    assert!(
        r.rows.iter().all(|x| x.address.starts_with("192.0.2.")),
        "{}",
        r.table()
    );
    assert_nothing_left();
}

/// Whether podman and both images are here; otherwise skips, or fails
/// under CI=true (CI builds them with deploy/images/build.sh first).
fn images_ready(what: &str) -> bool {
    let Err(why) = overlay_bins::lab::images::images_present() else {
        return true;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what}: {why}; CI=true, so this fails instead of skipping"
    );
    eprintln!("SKIP {what}: {why} (set CI=true to make this a failure)");
    false
}

/// This process's lab containers (`overlay-lab-<pid>-…`), running or not.
fn lab_containers() -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let prefix = format!("overlay-lab-{}-", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// `--images`: the controller and agent images, with the settings of
/// deploy/'s workloads, pass the churn scenario with every IPAM the images
/// can reach, and no container is left.
async fn lab_passes_with_the_images() {
    if !images_ready("lab_passes_with_the_images") {
        return;
    }
    for ipam in [
        IpamChoice::Embedded,
        IpamChoice::Emulator,
        IpamChoice::Kubernetes,
    ] {
        let started = Instant::now();
        let r = lab_passes(LabOptions {
            images: true,
            ipam,
            scenario: Some(Scenario::Churn),
            nodes: 4,
            ..Default::default()
        })
        .await;
        println!(
            "--images --ipam {ipam:?} --scenario churn --nodes 4: {:?}",
            started.elapsed()
        );
        assert_eq!(r.checks.len(), 3, "{}", r.table());
        assert!(
            r.rows.iter().all(|x| x.address.starts_with("192.0.2.")),
            "{}",
            r.table()
        );
        assert_nothing_left();
        assert_eq!(lab_containers(), Vec::<String>::new(), "containers left");
    }
}

/// `--ipam phpipam` against a phpIPAM server (the emulator standing in):
/// zones, subnets and gateways come from what phpIPAM reports.
async fn lab_passes_with_phpipam() {
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
    let held = overlay_bins::lab::describe(&LabOptions {
        hold: true,
        ..Default::default()
    })
    .unwrap();
    assert!(held.contains("until Ctrl-C or SIGTERM"), "{held}");
    let kept_and_held = overlay_bins::lab::describe(&LabOptions {
        hold: true,
        keep: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(kept_and_held.contains("--hold"), "{kept_and_held}");
    let migrate = overlay_bins::lab::describe(&LabOptions {
        scenario: Some(Scenario::Migrate),
        ..Default::default()
    })
    .unwrap();
    assert!(
        migrate.contains("ip link add tmp0") && migrate.contains("owner=<node>"),
        "{migrate}"
    );
    for (opts, flag) in [
        (
            LabOptions {
                scenario: Some(Scenario::Migrate),
                nodes: 1,
                ..Default::default()
            },
            "--nodes",
        ),
        (
            LabOptions {
                scenario: Some(Scenario::Migrate),
                legacy: true,
                ..Default::default()
            },
            "--legacy",
        ),
        (
            LabOptions {
                scenario: Some(Scenario::Migrate),
                ipam: IpamChoice::Phpipam,
                ..Default::default()
            },
            "--ipam phpipam",
        ),
    ] {
        let e = overlay_bins::lab::describe(&opts).unwrap_err();
        assert!(e.contains(flag), "{e}");
    }
}

/// `--images --dry-run` names the images and the settings they run with;
/// what the images cannot run is refused up front, naming the flag.
#[test]
fn images_dry_run_names_the_settings_and_refuses_what_it_cannot_run() {
    let images = overlay_bins::lab::describe(&LabOptions {
        images: true,
        ..Default::default()
    })
    .unwrap();
    assert!(
        images.contains("overlay-agent:") && images.contains("--cap-add=NET_ADMIN"),
        "{images}"
    );
    for (opts, flag) in [
        (
            LabOptions {
                images: true,
                legacy: true,
                ..Default::default()
            },
            "--legacy",
        ),
        (
            LabOptions {
                images: true,
                scenario: Some(Scenario::Migrate),
                ..Default::default()
            },
            "--scenario migrate",
        ),
        (
            LabOptions {
                images: true,
                ipam: IpamChoice::Phpipam,
                ..Default::default()
            },
            "--ipam emulator",
        ),
    ] {
        let e = overlay_bins::lab::describe(&opts).unwrap_err();
        assert!(e.contains(flag) && e.contains("--images"), "{e}");
    }
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

/// How long a test waits for anything the lab does; a deadline, not a
/// sleep: the waits poll and return as soon as the condition holds.
const DEADLINE: Duration = Duration::from_secs(60);

/// `overlayctl lab ARGS` as a child, its output collected as it comes.
struct LabChild {
    child: Child,
    pid: u32,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    done: bool,
}

impl LabChild {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
            .arg("lab")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (stdout, stderr): (Arc<Mutex<String>>, Arc<Mutex<String>>) =
            (Arc::default(), Arc::default());
        let mut readers = Vec::new();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for (mut pipe, sink) in [(out, &stdout), (err, &stderr)] {
            let sink = Arc::clone(sink);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        Self {
            child,
            pid,
            stdout,
            stderr,
            readers,
            done: false,
        }
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    /// Polls `cond` until it holds; panics (with the output) at the deadline.
    fn wait_until(&mut self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !cond(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("lab exited ({status}) before {what}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {DEADLINE:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid as i32), sig).unwrap();
    }

    /// Waits for the exit (polling, with the deadline) and for all output.
    fn finish(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the lab did not exit within {DEADLINE:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        self.done = true;
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        (status, self.output())
    }
}

impl Drop for LabChild {
    /// A failed test still ends its lab and removes its namespaces.
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for n in namespaces_of(self.pid) {
            let _ = overlay_testbed::ip(&["netns", "del", &n]);
        }
    }
}

/// The lab ended by `sig`: through its handler (exit 128 + n, the lab's
/// own message) or, when `early`, possibly before the handler was
/// installed (killed by the signal, nothing created yet); either way no
/// namespace of it is left.
fn assert_stopped_by(lab: &mut LabChild, sig: Signal, early: bool) -> String {
    let (status, out) = lab.finish();
    let code = 128 + sig as i32;
    let handled = status.code() == Some(code);
    let killed = early && status.signal() == Some(sig as i32);
    println!(
        "{sig}: {}",
        if handled {
            "handled by the lab"
        } else {
            "killed before the handler was installed"
        }
    );
    assert!(
        handled || killed,
        "expected exit status {code} ({sig}), got {status}:\n{out}"
    );
    if handled {
        assert!(
            out.contains(&format!("stopped by {sig}; removed everything")),
            "{out}"
        );
        let last = out.lines().last().unwrap_or_default();
        assert!(!last.contains("every node converged"), "{out}");
    }
    assert_eq!(
        namespaces_of(lab.pid),
        Vec::<String>::new(),
        "namespaces left behind after {sig}:\n{out}"
    );
    out
}

/// True once process `pid` catches both SIGINT and SIGTERM (the `SigCgt`
/// mask in /proc/PID/status).
fn catches_sigint_and_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    let bit = |s: Signal| 1u64 << (s as u32 - 1);
    mask & bit(Signal::SIGINT) != 0 && mask & bit(Signal::SIGTERM) != 0
}

/// Whether this process ignores `sig` (SIG_IGN), which a child inherits:
/// a shell without job control starts background commands with SIGINT
/// ignored.
fn ignored_here(sig: Signal) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1u64 << (sig as u32 - 1)) != 0
}

/// At start: at once (perhaps before the handlers exist: then the signal
/// kills the lab, which has created nothing yet), and as soon as the
/// handlers are in place (then the lab must handle it).
fn signal_at_start(test: &str, sig: Signal) {
    if !privileged(test) {
        return;
    }
    // With the signal ignored by inheritance, one sent before the lab
    // installs its handlers is lost by design; only the second half
    // applies.
    if !ignored_here(sig) {
        let mut lab = LabChild::spawn(&["--nodes", "2"]);
        lab.signal(sig);
        assert_stopped_by(&mut lab, sig, true);
    } else {
        println!(
            "{sig} is ignored by this process (inherited); skipping the signal before the handlers"
        );
    }

    let mut lab = LabChild::spawn(&["--nodes", "2"]);
    lab.wait_until("SIGINT and SIGTERM handlers", |l| {
        catches_sigint_and_sigterm(l.pid)
    });
    lab.signal(sig);
    assert_stopped_by(&mut lab, sig, false);
}

#[test]
fn sigint_at_start_leaves_nothing_behind() {
    signal_at_start("sigint_at_start_leaves_nothing_behind", Signal::SIGINT);
}

#[test]
fn sigterm_at_start_leaves_nothing_behind() {
    signal_at_start("sigterm_at_start_leaves_nothing_behind", Signal::SIGTERM);
}

/// 50 nodes: 53 namespaces, built one `ip` command at a time; the signal
/// goes out as soon as the first namespace exists.
fn signal_during_the_build(test: &str, sig: Signal, extra: &[&str]) -> String {
    if !privileged(test) {
        return String::new();
    }
    let mut args = vec!["--nodes", "50"];
    args.extend_from_slice(extra);
    let mut lab = LabChild::spawn(&args);
    lab.wait_until("namespace", |l| !namespaces_of(l.pid).is_empty());
    lab.signal(sig);
    let out = assert_stopped_by(&mut lab, sig, false);
    assert!(
        !out.contains("agents started"),
        "the signal was meant to land during the build:\n{out}"
    );
    out
}

#[test]
fn sigint_during_the_namespace_build_removes_the_partial_lab() {
    signal_during_the_build(
        "sigint_during_the_namespace_build_removes_the_partial_lab",
        Signal::SIGINT,
        &[],
    );
}

#[test]
fn sigterm_during_the_namespace_build_removes_the_partial_lab_even_with_keep() {
    let out = signal_during_the_build(
        "sigterm_during_the_namespace_build_removes_the_partial_lab_even_with_keep",
        Signal::SIGTERM,
        &["--keep"],
    );
    assert!(
        out.is_empty() || out.contains("--keep applies only to a run that completes"),
        "{out}"
    );
}

/// `--hold` keeps the converged lab up until the signal.
fn signal_while_holding(test: &str, sig: Signal) {
    if !privileged(test) {
        return;
    }
    let mut lab = LabChild::spawn(&["--nodes", "2", "--hold"]);
    // stdout and stderr are read by separate threads: wait for both.
    lab.wait_until("verdict and `holding` line", |l| {
        l.stderr.lock().unwrap().contains("lab: holding")
            && l.stdout.lock().unwrap().contains("lab: ")
    });
    let held = namespaces_of(lab.pid);
    assert_eq!(held.len(), 5, "vlan, gw, onprem, 2 nodes: {held:?}");
    let out = lab.output();
    assert!(
        out.contains("lab: every node converged and reached the on-prem host"),
        "the verdict is printed before holding:\n{out}"
    );
    lab.signal(sig);
    assert_stopped_by(&mut lab, sig, false);
}

#[test]
fn sigint_while_holding_after_convergence_removes_the_lab() {
    signal_while_holding(
        "sigint_while_holding_after_convergence_removes_the_lab",
        Signal::SIGINT,
    );
}

#[test]
fn sigterm_while_holding_after_convergence_removes_the_lab() {
    signal_while_holding(
        "sigterm_while_holding_after_convergence_removes_the_lab",
        Signal::SIGTERM,
    );
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
