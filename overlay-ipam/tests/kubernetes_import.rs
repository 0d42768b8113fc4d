#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Importing an embedded-pools state file into Kubernetes-native IPAM
//! (`overlayctl ipam migrate --from-state-file`), over the in-memory API
//! store: a real state file written by the file backend, the plan, the
//! writes, a second run that writes nothing, conflicts with their reasons,
//! and the Kubernetes backend handing every owner its old address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use overlay_core::fakes::MemoryPoolStore;
use overlay_core::ippool::{IpPool, PoolStore, allocation_name, claim_name};
use overlay_core::{Cidr, IpamBackend, Owner, Zone};
use overlay_ipam::file::{FileBackend, read_state};
use overlay_ipam::kubernetes::KubernetesBackend;
use overlay_ipam::kubernetes::import::{
    Action, ImportPlan, Outcome, apply_import, plan_import, read_cluster,
};
use overlay_ipam::pools::{Entry, PoolConfig, PoolsConfig};

const CLUSTER: &str = "c1";

fn zone(z: &str) -> Zone {
    Zone::parse("zone", z).unwrap()
}

fn owner(node: &str) -> Owner {
    Owner::new(CLUSTER, node)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, zone: &str, cidr: &str) -> IpPool {
    IpPool {
        name: name.into(),
        zone: zone.into(),
        cidr: cidr.into(),
        ..IpPool::default()
    }
}

fn entry(zone_name: &str, pool: &str, address: &str, node: &str) -> Entry {
    Entry {
        zone: zone(zone_name),
        pool: Cidr::parse("pool", pool).unwrap(),
        address: ip(address),
        owner: owner(node),
        held_until: None,
    }
}

/// A state file as the file backend writes it: node-a, node-b and node-c
/// in dal10 (node-c released with an hour's hold-down), node-d in dal12's
/// IPv6 pool.
async fn state_file(dir: &tempfile::TempDir) -> (std::path::PathBuf, Vec<Entry>) {
    let path = dir.path().join("pools.json");
    let config = PoolsConfig::new()
        .with_pool("dal10", PoolConfig::parse("192.0.2.0/24").unwrap())
        .with_pool("dal12", PoolConfig::parse("2001:db8:0:1::/120").unwrap());
    let file = FileBackend::open(&path, &config).unwrap();
    for node in ["node-a", "node-b", "node-c"] {
        file.reserve(&owner(node), &zone("dal10")).await.unwrap();
    }
    file.reserve(&owner("node-d"), &zone("dal12"))
        .await
        .unwrap();
    let c = file.lookup(&owner("node-c"), None).await.unwrap().unwrap();
    file.release(&c, Duration::from_secs(3600)).await.unwrap();
    drop(file);
    let entries = read_state(&path).unwrap();
    assert_eq!(entries.len(), 4, "{entries:?}");
    (path, entries)
}

async fn plan(store: &MemoryPoolStore, entries: &[Entry]) -> ImportPlan {
    let cluster = read_cluster(store).await.unwrap();
    plan_import(
        entries,
        &cluster.pools,
        &cluster.allocations,
        &cluster.claims,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_is_imported_once_and_the_backend_hands_out_the_same_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (_, entries) = state_file(&dir).await;
    let held = entries.iter().find(|e| e.owner == owner("node-c")).unwrap();
    let held_until = held.held_until.expect("node-c is held");
    let store = MemoryPoolStore::new();
    store.put_pool(pool("a", "dal10", "192.0.2.0/24"));
    store.put_pool(pool("six", "dal12", "2001:db8:0:1::/120"));

    let first = plan(&store, &entries).await;
    assert_eq!(first.summary.create, 4, "{}", first.render());
    assert_eq!(first.summary.claims, 3, "live entries only");
    assert_eq!(first.summary.conflicts, 0, "{}", first.render());
    let text = first.render();
    assert!(text.contains("held until"), "{text}");
    assert!(
        text.contains("plan: 4 allocations to create, 3 claims to create, 0 present, 0 conflicts"),
        "{text}"
    );
    let report = apply_import(&store, &first).await;
    assert!(report.ok(), "{}", report.render());
    assert_eq!((report.summary.created, report.summary.claims), (4, 3));

    // Each entry is an allocation of its address for its owner, from the
    // pool of its zone; the held one keeps its hold-down and has no claim.
    let allocations = store.allocations();
    assert_eq!(allocations.len(), 4);
    for e in &entries {
        let a = allocations
            .iter()
            .find(|a| a.name == allocation_name(e.address))
            .unwrap();
        assert_eq!((&a.owner, a.zone.as_str()), (&e.owner, e.zone.as_str()));
        assert_eq!(a.held_until, e.held_until);
    }
    let v6 = allocations.iter().find(|a| a.zone == "dal12").unwrap();
    assert_eq!((v6.pool.as_str(), v6.address.prefix()), ("six", 120));
    assert_eq!(v6.gateway, ip("2001:db8:0:1::1"));
    assert_eq!(
        allocations
            .iter()
            .find(|a| a.owner == owner("node-c"))
            .unwrap()
            .held_until,
        Some(held_until)
    );
    let claims = store.claims();
    assert_eq!(claims.len(), 3);
    assert!(claims.iter().all(|c| c.owner != owner("node-c")));

    // Importing again plans nothing and writes nothing.
    let second = plan(&store, &entries).await;
    assert!(second.is_noop(), "{}", second.render());
    assert_eq!(second.summary.present, 4);
    let before = store.requests();
    let again = apply_import(&store, &second).await;
    assert_eq!(store.requests(), before, "a second import sends no request");
    assert!(
        again.ok() && again.summary.present == 4,
        "{}",
        again.render()
    );
    assert_eq!(store.allocations(), allocations);

    // The Kubernetes backend hands every owner its address: no new
    // allocation, the held one made live again for its owner.
    let backend = KubernetesBackend::start(Arc::new(store.clone()), CLUSTER);
    for e in &entries {
        let r = backend.reserve(&e.owner, &e.zone).await.unwrap();
        assert_eq!(r.address.ip(), e.address, "{}", e.owner);
    }
    assert_eq!(store.allocations().len(), 4, "no new allocation");
    assert!(store.allocations().iter().all(|a| a.held_until.is_none()));
}

/// Pools a (dal10, 192.0.2.64/26 reserved), b (dal12) and the disabled
/// off (dal10), with one address of c2/node-x and one of c1/node-f
/// reserved through the backend (both with claims): those two addresses.
async fn crowded_store() -> (MemoryPoolStore, IpAddr, IpAddr) {
    let store = MemoryPoolStore::new();
    store.put_pool(IpPool {
        reserved: vec!["192.0.2.64/26".into()],
        ..pool("a", "dal10", "192.0.2.0/24")
    });
    store.put_pool(pool("b", "dal12", "198.51.100.0/24"));
    // Disabled pools take imports: they keep existing allocations.
    store.put_pool(IpPool {
        disabled: true,
        ..pool("off", "dal10", "203.0.113.0/24")
    });
    let backend = KubernetesBackend::start(Arc::new(store.clone()), "c2");
    let theirs = backend
        .reserve(&Owner::new("c2", "node-x"), &zone("dal10"))
        .await
        .unwrap();
    let mine = backend
        .reserve(&owner("node-f"), &zone("dal10"))
        .await
        .unwrap();
    (store, theirs.address.ip(), mine.address.ip())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_name_their_reason_and_the_other_entries_are_imported() {
    let (store, theirs, mine) = crowded_store().await;
    let net = "192.0.2.0/24";
    let mut held = entry("dal10", net, "192.0.2.30", "node-h");
    held.held_until = Some(SystemTime::now() + Duration::from_secs(600));
    let entries = vec![
        entry("dal10", net, &theirs.to_string(), "node-a"),
        entry("dal10", "198.18.0.0/24", "198.18.0.9", "node-b"),
        entry("dal13", net, "192.0.2.40", "node-c"),
        entry("dal10", "198.51.100.0/24", "198.51.100.9", "node-d"),
        entry("dal10", net, "192.0.2.1", "node-e"),
        entry("dal10", net, "192.0.2.70", "node-g"),
        // node-f holds `mine` in the cluster already.
        entry("dal10", net, "192.0.2.20", "node-f"),
        entry("dal10", net, "192.0.2.21", "node-k"),
        entry("dal10", net, "192.0.2.22", "node-k"),
        entry("dal10", net, "192.0.2.21", "node-l"),
        entry("dal10", "203.0.113.0/24", "203.0.113.5", "node-m"),
        held,
    ];
    let plan = plan(&store, &entries).await;
    let reason = |address: &str| -> String {
        let p = plan
            .entries
            .iter()
            .filter(|p| p.address == ip(address))
            .find(|p| matches!(p.action, Action::Conflict { .. }));
        match p.map(|p| &p.action) {
            Some(Action::Conflict { reason }) => reason.clone(),
            _ => panic!("{address} is no conflict:\n{}", plan.render()),
        }
    };
    let r = reason(&theirs.to_string());
    assert!(r.contains("allocated to c2/node-x"), "{r}");
    let r = reason("198.18.0.9");
    assert!(
        r.contains("no OverlayIPPool of zone dal10 contains 198.18.0.9")
            && r.contains("a (192.0.2.0/24)"),
        "{r}"
    );
    let r = reason("192.0.2.40");
    assert!(r.contains("serves zone dal10, not dal13"), "{r}");
    let r = reason("198.51.100.9");
    assert!(r.contains("serves zone dal12, not dal10"), "{r}");
    assert!(reason("192.0.2.1").contains("gateway of OverlayIPPool a"));
    assert!(reason("192.0.2.70").contains("reserved in OverlayIPPool a"));
    let r = reason("192.0.2.20");
    assert!(
        r.contains(&format!("c1/node-f already claims {mine}")),
        "{r}"
    );
    assert!(reason("192.0.2.22").contains("second live address"));
    assert!(reason("192.0.2.21").contains("more than once"));
    assert_eq!(plan.summary.conflicts, 9, "{}", plan.render());
    assert_eq!(plan.summary.create, 3, "{}", plan.render());

    let report = apply_import(&store, &plan).await;
    assert!(!report.ok());
    assert_eq!(report.summary.conflicts, 9, "{}", report.render());
    assert_eq!(report.summary.created, 3, "{}", report.render());
    let text = report.render();
    assert!(text.contains("9 conflicts"), "{text}");
    let off = store
        .allocations()
        .into_iter()
        .find(|a| a.address.ip() == ip("203.0.113.5"))
        .unwrap();
    assert_eq!((off.pool.as_str(), &off.owner), ("off", &owner("node-m")));
    let h = store
        .allocations()
        .into_iter()
        .find(|a| a.owner == owner("node-h"))
        .unwrap();
    assert!(h.held_until.is_some());
    assert!(store.claims().iter().all(|c| c.owner != owner("node-h")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_without_pools_or_a_deleting_pool_is_named() {
    let store = MemoryPoolStore::new();
    store.put_pool(pool("a", "dal10", "192.0.2.0/24"));
    store.set_pool_finalizer("a", true).await.unwrap();
    assert!(!store.delete_pool("a"));
    let entries = vec![
        entry("dal10", "192.0.2.0/24", "192.0.2.9", "node-a"),
        entry("dal13", "198.51.100.0/24", "198.51.100.9", "node-b"),
    ];
    let plan = plan(&store, &entries).await;
    let text = plan.render();
    assert!(
        text.contains("OverlayIPPool a, which contains 192.0.2.9, is being deleted"),
        "{text}"
    );
    assert!(
        text.contains("zone dal13 has no OverlayIPPool")
            && text.contains("deploy/samples/overlayippool.yaml"),
        "{text}"
    );
    let report = apply_import(&store, &plan).await;
    assert_eq!(report.summary.conflicts, 2);
    assert!(store.allocations().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_taken_between_plan_and_apply_are_re_read() {
    let store = MemoryPoolStore::new();
    store.put_pool(pool("a", "dal10", "192.0.2.0/24"));
    let net = "192.0.2.0/24";
    let entries = vec![
        entry("dal10", net, "192.0.2.10", "node-a"),
        entry("dal10", net, "192.0.2.11", "node-b"),
    ];
    let plan = plan(&store, &entries).await;
    assert_eq!(plan.summary.create, 2);
    // Meanwhile another cluster takes .10, and node-b's own allocation of
    // .11 appears without its claim (another import that stopped).
    let other = IpPool {
        uid: store.pool("a").unwrap().uid,
        ..pool("a", "dal10", net)
    };
    let valid = overlay_ipam::kubernetes::pool::ValidPool::check(&other).unwrap();
    let a10 = valid.allocation(&Owner::new("c2", "node-x"), ip("192.0.2.10"));
    store.create_allocation(&a10).await.unwrap();
    let a11 = valid.allocation(&owner("node-b"), ip("192.0.2.11"));
    store.create_allocation(&a11).await.unwrap();

    let report = apply_import(&store, &plan).await;
    match &report.entries[0].outcome {
        Outcome::Conflict { reason } => {
            assert!(
                reason.contains("allocated to c2/node-x meanwhile"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        report.entries[1].outcome,
        Outcome::Present { claimed: true }
    );
    let claim = store
        .get_claim(&claim_name(&owner("node-b"), "dal10"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.address, ip("192.0.2.11"));
}

#[test]
fn plans_and_reports_serialize_for_json_output() {
    let mut held = entry("dal10", "192.0.2.0/24", "192.0.2.30", "node-h");
    held.held_until = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000));
    let entries = vec![
        entry("dal10", "192.0.2.0/24", "192.0.2.10", "node-a"),
        held,
        entry("dal11", "192.0.2.0/24", "198.51.100.1", "node-b"),
    ];
    let pools = vec![IpPool {
        uid: "u".into(),
        ..pool("a", "dal10", "192.0.2.0/25")
    }];
    let plan = plan_import(&entries, &pools, &[], &[]);
    let json = serde_json::to_value(&plan).unwrap();
    let e = &json["entries"];
    assert_eq!(e[0]["action"], "create");
    assert_eq!(e[0]["claim"], true);
    assert_eq!(e[0]["owner"]["cluster"], "c1");
    assert_eq!(e[0]["pool"], "a");
    // The embedded pool was a /24, the OverlayIPPool is a /25.
    assert!(
        e[0]["note"].as_str().unwrap().contains("192.0.2.10/25"),
        "{json}"
    );
    assert_eq!(e[1]["heldUntil"], "2030-03-17T17:46:40Z");
    assert_eq!(e[1]["claim"], false);
    assert_eq!(e[2]["action"], "conflict");
    assert!(e[2]["reason"].as_str().unwrap().contains("dal11"));
    assert_eq!(json["summary"]["conflicts"], 1);
}

#[test]
fn an_unreadable_or_foreign_state_file_is_named_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let e = read_state(&missing).unwrap_err().to_string();
    assert!(
        e.contains("missing.json") && e.contains("cannot read"),
        "{e}"
    );
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(&corrupt, "{\"format\": \"overlay-ipam-pools\", \"vers").unwrap();
    let e = read_state(&corrupt).unwrap_err().to_string();
    assert!(
        e.contains("corrupt.json") && e.contains("not valid JSON"),
        "{e}"
    );
    let foreign = dir.path().join("foreign.json");
    std::fs::write(&foreign, "{\"format\": \"something-else\"}").unwrap();
    let e = read_state(&foreign).unwrap_err().to_string();
    assert!(e.contains("not an overlay pool state file"), "{e}");
}
