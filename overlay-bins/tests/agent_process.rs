//! The agent process as an operator meets it when the API server is
//! unreachable: its errors name the server and the OS error, it does not
//! flood the log, and SIGTERM ends it within 5 seconds. It runs in a
//! network namespace of its own (root), where 127.0.0.1:1 refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use overlay_testbed::{Netns, privileged};

const KUBECONFIG: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: unreachable
  cluster:
    server: https://127.0.0.1:1
    insecure-skip-tls-verify: true
users:
- name: agent
  user:
    token: not-a-secret
contexts:
- name: unreachable
  context: {cluster: unreachable, user: agent}
current-context: unreachable
"#;

#[test]
fn an_agent_without_its_api_server_names_it_logs_sparingly_and_stops_within_5_seconds() {
    if !privileged(
        "an_agent_without_its_api_server_names_it_logs_sparingly_and_stops_within_5_seconds",
    ) {
        return;
    }
    let ns = Netns::new("agent-unreach").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
    let out = dir.path().join("out.log");
    let log = std::fs::File::create(&out).unwrap();
    // `ip netns exec` execs the agent: the pid is the agent's.
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            env!("CARGO_BIN_EXE_overlay-agent"),
        ])
        .args(["--node-name", "node-a", "--metrics-addr", "off"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("RUST_LOG")
        .env_remove("NODE_NAME")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    // Let it fail and retry for a while.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent exited on its own"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the agent did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let mut text = String::new();
    std::fs::File::open(&out)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    println!("{text}");
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(
        text.contains("https://127.0.0.1:1") && text.contains("Connection refused"),
        "errors name the server and the OS error:\n{text}"
    );
    // Three watches fail at once, then retry with backoff: each says so
    // once, not at every retry.
    let lines = text.lines().count();
    assert!(lines <= 12, "{lines} log lines in 4 s:\n{text}");
}
