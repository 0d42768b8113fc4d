//! The state file's lock against a second process. In a test binary of
//! its own: the child processes it starts are forked from this process,
//! and a fork holds a copy of every open file (the lock files of tests
//! running beside it included) until the child execs, which made a test
//! reopening its own state file right after closing it fail now and then.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use overlay_ipam::file::FileBackend;
use overlay_ipam::pools::{PoolConfig, PoolsConfig};

fn pools() -> PoolsConfig {
    PoolsConfig::new().with_pool("big", PoolConfig::parse("192.0.2.0/24").unwrap())
}

/// Set only on the child process `another_process_...` starts: the state
/// file the child tries to open.
const CHILD_STATE: &str = "OVERLAY_IPAM_TEST_LOCK_CHILD_STATE";

/// The child half of `another_process_cannot_open_a_locked_state_file`:
/// does nothing in a normal run (the variable is unset), and in the child
/// reports what opening the state file gave.
#[test]
fn lock_child_opens_the_state_file() {
    let Some(path) = std::env::var_os(CHILD_STATE) else {
        return;
    };
    match FileBackend::open(&path, &pools()) {
        Ok(_) => println!("CHILD-OPENED"),
        Err(e) => println!("CHILD-REFUSED: {e}"),
    }
}

fn open_in_child(path: &Path) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "lock_child_opens_the_state_file",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STATE, path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn another_process_cannot_open_a_locked_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let held = FileBackend::open(&path, &pools()).unwrap();
    let out = open_in_child(&path);
    let refused = out
        .lines()
        .find_map(|l| l.split_once("CHILD-REFUSED: ").map(|(_, why)| why))
        .unwrap_or_else(|| panic!("the child was not refused: {out}"));
    assert!(
        refused.contains(&format!(
            "another controller process (pid {}) holds it",
            std::process::id()
        )),
        "{refused}"
    );
    assert!(refused.contains("one controller replica"), "{refused}");
    drop(held);
    let out = open_in_child(&path);
    assert!(out.contains("CHILD-OPENED"), "{out}");
}
