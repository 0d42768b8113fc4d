//! `overlayctl lab` removes the namespaces an earlier, dead lab left behind
//! and says so. Alone in its own test binary: every test that creates
//! namespaces also removes stale ones (silently), so one running alongside
//! could take the planted namespaces away first.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

use overlay_testbed::{NETNS_DIR, privileged};

#[test]
fn the_lab_removes_stale_namespaces_of_a_dead_run_and_says_so() {
    if !privileged("the_lab_removes_stale_namespaces_of_a_dead_run_and_says_so") {
        return;
    }
    // A pid that no longer runs: a child that has exited and been reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let planted = [
        format!("ovt-{dead}-0-vlan"),
        format!("ovt-{dead}-1-gw"),
        format!("ovt-{dead}-3-node-1"),
    ];
    for n in &planted {
        overlay_testbed::ip(&["netns", "add", n]).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_overlayctl"))
        .args(["lab", "--nodes", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left: Vec<&String> = planted
        .iter()
        .filter(|n| std::path::Path::new(NETNS_DIR).join(n).exists())
        .collect();
    for n in &left {
        let _ = overlay_testbed::ip(&["netns", "del", n]);
    }
    assert!(out.status.success(), "{stderr}");
    assert!(left.is_empty(), "stale namespaces still there: {left:?}");
    assert!(
        stderr.contains(&format!(
            "lab: removed 3 stale namespaces from an earlier run (pid {dead})"
        )),
        "{stderr}"
    );
}
