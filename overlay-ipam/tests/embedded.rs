#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The embedded backends: conformance plus the file backend's durability
//! rules.

use std::sync::Arc;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_passes_conformance() {
    let report = run_all(&fixture(Arc::new(MemoryBackend::new(&pools()).unwrap()))).await;
    assert!(report.passed(), "{report}");
    // The fixture has every shape, so nothing may be skipped.
    assert!(
        report.checks.iter().all(|(_, o)| *o == Outcome::Passed),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backend_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FileBackend::open(dir.path().join("state.json"), &pools()).unwrap();
    let report = run_all(&fixture(Arc::new(backend))).await;
    assert!(report.passed(), "{report}");
    assert!(
        report.checks.iter().all(|(_, o)| *o == Outcome::Passed),
        "{report}"
    );
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
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["state.json"]);
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
    // Remove the directory: the write must fail and nothing be reserved.
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
