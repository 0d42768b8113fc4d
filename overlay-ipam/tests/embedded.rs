#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The embedded backends: conformance plus the file backend's durability
//! rules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use overlay_core::{IpamBackend, IpamError, Owner, Zone};
use overlay_ipam::conformance::{Fixture, Outcome, ZoneCapacity, run_all};
use overlay_ipam::file::FileBackend;
use overlay_ipam::memory::MemoryBackend;
use overlay_ipam::pools::{PoolConfig, PoolsConfig};

fn pools() -> PoolsConfig {
    PoolsConfig::new()
        // 254 hosts - default gateway .1 = 253 free.
        .with_pool("big", PoolConfig::parse("192.0.2.0/24").unwrap())
        // /29: 6 hosts - gateway - one reserved = 4 free; then 5 in the next.
        .with_pool(
            "small",
            PoolConfig::parse("198.51.100.0/29")
                .unwrap()
                .with_reserved("198.51.100.2".parse().unwrap()),
        )
        .with_pool(
            "small",
            PoolConfig::parse("198.51.100.8/29")
                .unwrap()
                .with_gateway("198.51.100.14".parse().unwrap()),
        )
}

fn fixture(backend: Arc<dyn IpamBackend>) -> Fixture {
    Fixture::new(backend, "conformance")
        .with_zone(ZoneCapacity::new("big", [253]).unwrap())
        .with_zone(ZoneCapacity::new("small", [4, 5]).unwrap())
}

fn zone(z: &str) -> Zone {
    Zone::parse("zone", z).unwrap()
}

/// Runs the suite on `backend`: every check passes (the fixture has every
/// shape, so nothing may be skipped), and every check freed what it made,
/// held entries included.
async fn assert_passes_conformance(backend: Arc<dyn IpamBackend>) {
    let report = run_all(&fixture(backend.clone())).await;
    assert!(report.passed(), "{report}");
    assert!(
        report.checks.iter().all(|(_, o)| *o == Outcome::Passed),
        "{report}"
    );
    assert_eq!(backend.list().await.unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_passes_conformance() {
    assert_passes_conformance(Arc::new(MemoryBackend::new(&pools()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backend_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FileBackend::open(dir.path().join("state.json"), &pools()).unwrap();
    assert_passes_conformance(Arc::new(backend)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_fails_a_backend_that_ignores_hold_downs() {
    // Frees at once whatever the hold-down: the released address goes to
    // the next node, which is what issue 11 is about.
    struct NoHold(MemoryBackend);
    #[async_trait::async_trait]
    impl IpamBackend for NoHold {
        fn name(&self) -> &str {
            "no-hold"
        }
        async fn reserve(
            &self,
            owner: &Owner,
            zone: &Zone,
        ) -> Result<overlay_core::Reservation, IpamError> {
            self.0.reserve(owner, zone).await
        }
        async fn release(
            &self,
            r: &overlay_core::Reservation,
            _hold: Duration,
        ) -> Result<(), IpamError> {
            self.0.release(r, Duration::ZERO).await
        }
        async fn lookup(
            &self,
            o: &Owner,
            z: Option<&Zone>,
        ) -> Result<Option<overlay_core::Reservation>, IpamError> {
            self.0.lookup(o, z).await
        }
        async fn list(&self) -> Result<Vec<overlay_core::Reservation>, IpamError> {
            self.0.list().await
        }
    }
    let backend = Arc::new(NoHold(MemoryBackend::new(&pools()).unwrap()));
    let report = run_all(&fixture(backend.clone())).await;
    let mut failed = report.failed();
    failed.sort_unstable();
    assert_eq!(
        failed,
        [
            "hold_down",
            "hold_down_when_full",
            "release_held_idempotent",
            "release_owner_all"
        ],
        "{report}"
    );
    assert_eq!(backend.list().await.unwrap(), []);
}

#[tokio::test]
async fn conformance_reports_a_broken_backend() {
    // A backend that hands every owner the same address must fail.
    struct Broken(MemoryBackend);
    #[async_trait::async_trait]
    impl IpamBackend for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        async fn reserve(
            &self,
            _owner: &Owner,
            zone: &Zone,
        ) -> Result<overlay_core::Reservation, IpamError> {
            self.0.reserve(&Owner::new("x", "same"), zone).await
        }
        async fn release(
            &self,
            r: &overlay_core::Reservation,
            hold: std::time::Duration,
        ) -> Result<(), IpamError> {
            self.0.release(r, hold).await
        }
        async fn lookup(
            &self,
            o: &Owner,
            z: Option<&Zone>,
        ) -> Result<Option<overlay_core::Reservation>, IpamError> {
            self.0.lookup(o, z).await
        }
        async fn list(&self) -> Result<Vec<overlay_core::Reservation>, IpamError> {
            self.0.list().await
        }
    }
    let report = run_all(&fixture(Arc::new(Broken(
        MemoryBackend::new(&pools()).unwrap(),
    ))))
    .await;
    assert!(!report.passed());
    assert!(report.failed().contains(&"distinct_owners"), "{report}");
    assert!(report.failed().contains(&"concurrent_distinct"), "{report}");
}

#[tokio::test]
async fn file_state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let a = Owner::new("c1", "node-a");
    let b = Owner::new("c1", "node-b");
    let first = {
        let ipam = FileBackend::open(&path, &pools()).unwrap();
        let ra = ipam.reserve(&a, &zone("big")).await.unwrap();
        ipam.reserve(&b, &zone("big")).await.unwrap();
        ra
    };
    assert_eq!(first.address.to_string(), "192.0.2.2/24");
    let ipam = FileBackend::open(&path, &pools()).unwrap();
    // Same owner, same address after a "restart".
    let again = ipam.reserve(&a, &zone("big")).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(ipam.list().await.unwrap().len(), 2);
    // A new owner does not get an address held before the restart.
    let c = ipam
        .reserve(&Owner::new("c1", "node-c"), &zone("big"))
        .await
        .unwrap();
    assert_eq!(c.address.to_string(), "192.0.2.4/24");
    // No temporary files are left behind; the lock file stays (unlocked
    // once its backend is dropped).
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["state.json", "state.json.lock"]);
}

#[tokio::test]
async fn corrupt_or_foreign_state_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("torn.json", "{\"format\":\"overlay-ipam-pools\",\"vers"),
        ("foreign.json", "{\"users\":[\"alice\"]}"),
        (
            "other-format.json",
            "{\"format\":\"something-else\",\"version\":1}",
        ),
        (
            "future.json",
            "{\"format\":\"overlay-ipam-pools\",\"version\":9,\"reservations\":[]}",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let err = FileBackend::open(&path, &pools()).unwrap_err();
        assert!(matches!(err, IpamError::Storage { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains("refusing"), "{name}: {err}");
        assert!(!err.is_retryable());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            content,
            "{name} was modified"
        );
    }
}

#[tokio::test]
async fn missing_state_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = FileBackend::open(dir.path().join("nope/state.json"), &pools()).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn unwritable_state_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let ipam = FileBackend::open(sub.join("state.json"), &pools()).unwrap();
    // Remove the directory (and the lock file in it, which stays locked
    // through the open descriptor): the write must fail and nothing be
    // reserved.
    std::fs::remove_file(ipam.lock_path()).unwrap();
    std::fs::remove_dir(&sub).unwrap();
    let owner = Owner::new("c1", "n1");
    let err = ipam.reserve(&owner, &zone("big")).await.unwrap_err();
    assert!(matches!(err, IpamError::Storage { .. }), "{err:?}");
    assert_eq!(ipam.lookup(&owner, None).await.unwrap(), None);
}

#[tokio::test]
async fn memory_errors_name_zone_and_subnets() {
    let ipam = MemoryBackend::new(&pools()).unwrap();
    let err = ipam
        .reserve(&Owner::new("c1", "n"), &zone("nowhere"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "zone \"nowhere\" is not configured; configured zones: big, small"
    );
    for i in 0..9 {
        ipam.reserve(&Owner::new("c1", format!("n{i}")), &zone("small"))
            .await
            .unwrap();
    }
    let err = ipam
        .reserve(&Owner::new("c1", "n9"), &zone("small"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("subnets 198.51.100.0/29, 198.51.100.8/29 are full"),
        "{err}"
    );
}

const HOLD: Duration = Duration::from_secs(300);

/// A state file in a new temporary directory (dropped with the
/// directory) holding `entries` (see [`entry`]).
fn state_file_with(entries: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let reservations = entries.join(",");
    std::fs::write(
        &path,
        format!(
            "{{\"format\":\"overlay-ipam-pools\",\"version\":1,\"reservations\":[{reservations}]}}"
        ),
    )
    .unwrap();
    (dir, path)
}

fn entry(zone: &str, pool: &str, address: &str, node: &str, held_until: Option<&str>) -> String {
    let held = held_until.map_or(String::new(), |t| format!(",\"held_until\":\"{t}\""));
    format!(
        "{{\"zone\":\"{zone}\",\"pool\":\"{pool}\",\"address\":\"{address}\",\"owner\":{{\"cluster\":\"c1\",\"node\":\"{node}\"}}{held}}}"
    )
}

#[tokio::test]
async fn held_entries_survive_a_restart_and_come_back_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let a = Owner::new("c1", "node-a");
    let (ra, until) = {
        let ipam = FileBackend::open(&path, &pools()).unwrap();
        let ra = ipam.reserve(&a, &zone("big")).await.unwrap();
        ipam.reserve(&Owner::new("c1", "node-b"), &zone("big"))
            .await
            .unwrap();
        let t = SystemTime::now();
        ipam.release(&ra, HOLD).await.unwrap();
        let held = ipam.list().await.unwrap();
        let until = held[0]
            .held_until
            .expect("held after a release with a hold");
        assert!(until >= t + HOLD && until <= SystemTime::now() + HOLD);
        (ra, until)
    };
    // The file names the expiry in RFC 3339.
    let text = std::fs::read_to_string(&path).unwrap();
    let written = format!("\"held_until\": \"{}\"", humantime::format_rfc3339(until));
    assert!(text.contains(&written), "{text}");

    let ipam = FileBackend::open(&path, &pools()).unwrap();
    let listed = ipam.list().await.unwrap();
    let held = listed.iter().find(|r| r.owner == a).unwrap();
    assert_eq!(held.held_until, Some(until), "held, expiry kept");
    assert_eq!(ipam.lookup(&a, None).await.unwrap(), None);
    // A new node does not get it; the old one, re-created, does.
    let c = ipam
        .reserve(&Owner::new("c1", "node-c"), &zone("big"))
        .await
        .unwrap();
    assert_ne!(c.address, ra.address);
    assert_eq!(ipam.reserve(&a, &zone("big")).await.unwrap(), ra);
    drop(ipam);
    let ipam = FileBackend::open(&path, &pools()).unwrap();
    assert_eq!(ipam.lookup(&a, None).await.unwrap(), Some(ra));
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains("held_until")
    );
}

#[tokio::test]
async fn state_files_from_before_hold_downs_still_load() {
    // As an earlier version wrote it: no held_until anywhere.
    let (_dir, path) = state_file_with(&[
        entry("big", "192.0.2.0/24", "192.0.2.2", "node-a", None),
        entry("small", "198.51.100.0/29", "198.51.100.3", "node-b", None),
    ]);
    let ipam = FileBackend::open(&path, &pools()).unwrap();
    let listed = ipam.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|r| !r.is_held()), "{listed:?}");
    let a = ipam
        .reserve(&Owner::new("c1", "node-a"), &zone("big"))
        .await
        .unwrap();
    assert_eq!(a.address.to_string(), "192.0.2.2/24");
}

#[tokio::test]
async fn an_expired_hold_down_frees_the_address_for_others() {
    let (_dir, path) = state_file_with(&[
        entry(
            "big",
            "192.0.2.0/24",
            "192.0.2.2",
            "expired",
            Some("2020-01-01T00:00:00Z"),
        ),
        entry(
            "big",
            "192.0.2.0/24",
            "192.0.2.3",
            "pending",
            Some("9999-01-01T00:00:00Z"),
        ),
    ]);
    let ipam = FileBackend::open(&path, &pools()).unwrap();
    assert_eq!(
        ipam.list()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.is_held())
            .count(),
        2
    );
    let n = Owner::new("c1", "new");
    let r = ipam.reserve(&n, &zone("big")).await.unwrap();
    assert_eq!(r.address.to_string(), "192.0.2.2/24", "expired: reused");
    let m = ipam
        .reserve(&Owner::new("c1", "newer"), &zone("big"))
        .await
        .unwrap();
    assert_eq!(m.address.to_string(), "192.0.2.4/24", "pending: kept back");
    // The expired entry was replaced, in memory and on disk.
    drop(ipam);
    let ipam = FileBackend::open(&path, &pools()).unwrap();
    let at_2: Vec<_> = ipam
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.address == ipam_addr("192.0.2.2/24"))
        .collect();
    assert_eq!(at_2.len(), 1);
    assert_eq!((at_2[0].owner.clone(), at_2[0].held_until), (n, None));
}

fn ipam_addr(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

#[tokio::test]
async fn reservations_in_pools_no_longer_configured_are_kept_found_and_freed() {
    // 203.0.113.0/24 was a pool of zone big, and zone "gone" existed.
    let (_dir, path) = state_file_with(&[
        entry("big", "203.0.113.0/24", "203.0.113.5", "old", None),
        entry("gone", "203.0.113.128/25", "203.0.113.130", "old", None),
        entry("big", "192.0.2.0/24", "192.0.2.2", "old", None),
    ]);
    let ipam = FileBackend::open(&path, &pools()).unwrap();
    assert_eq!(ipam.list().await.unwrap().len(), 3);
    let old = Owner::new("c1", "old");
    let all = ipam.lookup_all(&old).await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    // Never allocated from: a new owner gets an address of the configured pool.
    let r = ipam
        .reserve(&Owner::new("c1", "new"), &zone("big"))
        .await
        .unwrap();
    assert_eq!(r.address.to_string(), "192.0.2.3/24");
    let released = ipam.release_owner(&old, Duration::ZERO).await.unwrap();
    assert_eq!(released.len(), 3);
    assert!(ipam.lookup_all(&old).await.unwrap().is_empty());
    drop(ipam);
    let ipam = FileBackend::open(&path, &pools()).unwrap();
    assert_eq!(ipam.list().await.unwrap(), [r]);
}

#[tokio::test]
async fn memory_hold_down_expires_on_its_own() {
    // One free address; a hold of a few milliseconds.
    let ipam = MemoryBackend::new(
        &PoolsConfig::new().with_pool("one", PoolConfig::parse("192.0.2.0/30").unwrap()),
    )
    .unwrap();
    let z = zone("one");
    let a = ipam.reserve(&Owner::new("c1", "a"), &z).await.unwrap();
    ipam.release(&a, Duration::from_millis(20)).await.unwrap();
    let b = Owner::new("c1", "b");
    assert!(matches!(
        ipam.reserve(&b, &z).await,
        Err(IpamError::Exhausted { .. })
    ));
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert_eq!(ipam.reserve(&b, &z).await.unwrap().address, a.address);
}

#[tokio::test]
async fn a_hold_down_past_the_year_9999_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = FileBackend::open(dir.path().join("state.json"), &pools()).unwrap();
    let r = ipam
        .reserve(&Owner::new("c1", "a"), &zone("big"))
        .await
        .unwrap();
    let err = ipam.release(&r, Duration::MAX).await.unwrap_err();
    assert!(matches!(err, IpamError::Invalid(_)), "{err:?}");
    assert_eq!(ipam.lookup(&r.owner, None).await.unwrap(), Some(r));
}

#[tokio::test]
async fn a_second_open_of_a_state_file_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let first = FileBackend::open(&path, &pools()).unwrap();
    let pid = std::process::id();
    assert_eq!(
        std::fs::read_to_string(first.lock_path()).unwrap().trim(),
        pid.to_string(),
        "the lock file names its holder"
    );
    let err = FileBackend::open(&path, &pools()).unwrap_err();
    assert!(matches!(err, IpamError::Storage { .. }), "{err:?}");
    let text = err.to_string();
    for part in [
        path.display().to_string(),
        first.lock_path().display().to_string(),
        format!("pid {pid}"),
        "one controller replica".to_string(),
        "replicas: 1".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
    // The refused open did not disturb the holder.
    let r = first
        .reserve(&Owner::new("c1", "a"), &zone("big"))
        .await
        .unwrap();
    drop(first);
    let second = FileBackend::open(&path, &pools()).unwrap();
    assert_eq!(second.lookup(&r.owner, None).await.unwrap(), Some(r));
}
