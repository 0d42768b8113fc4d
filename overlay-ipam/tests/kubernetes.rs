#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Kubernetes-native IPAM over the in-memory API store, which keeps the
//! API server's rules (a taken name is refused with AlreadyExists, a stale
//! resourceVersion with Conflict, finalizers hold a deletion).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use overlay_core::fakes::MemoryPoolStore;
use overlay_core::ippool::{IpAllocation, IpClaim, IpPool, PoolStore, allocation_name, claim_name};
use overlay_core::{IpamBackend, IpamError, Owner, Zone};
use overlay_ipam::conformance::{Fixture, Outcome, ZoneCapacity, run_all};
use overlay_ipam::kubernetes::KubernetesBackend;
use tokio::task::JoinSet;

const CLUSTER: &str = "conformance";

fn pool(name: &str, zone: &str, cidr: &str) -> IpPool {
    IpPool {
        name: name.into(),
        zone: zone.into(),
        cidr: cidr.into(),
        ..IpPool::default()
    }
}

fn zone(z: &str) -> Zone {
    Zone::parse("zone", z).unwrap()
}

fn owner(node: &str) -> Owner {
    Owner::new(CLUSTER, node)
}

/// The pools of the embedded backends' conformance run, as objects.
fn conformance_store() -> MemoryPoolStore {
    let store = MemoryPoolStore::new();
    store.put_pool(pool("big", "big", "192.0.2.0/24"));
    store.put_pool(IpPool {
        reserved: vec!["198.51.100.2".into()],
        order: 1,
        ..pool("small-b", "small", "198.51.100.0/29")
    });
    store.put_pool(IpPool {
        gateway: Some("198.51.100.14".into()),
        order: 2,
        ..pool("small-a", "small", "198.51.100.8/29")
    });
    store.put_pool(pool("six", "six", "2001:db8:0:1::/120"));
    store
}

fn backend(store: &MemoryPoolStore) -> Arc<KubernetesBackend> {
    Arc::new(KubernetesBackend::start(Arc::new(store.clone()), CLUSTER))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passes_the_conformance_suite_without_skipping_a_check() {
    let store = conformance_store();
    let b = backend(&store);
    let (b, store) = (&b, &store);
    let fixture = Fixture::new(b.clone(), CLUSTER)
        .with_zone(ZoneCapacity::new("big", [253]).unwrap())
        .with_zone(ZoneCapacity::new("small", [4, 5]).unwrap())
        .with_zone(ZoneCapacity::new("six", [254]).unwrap());
    let report = run_all(&fixture).await;
    assert!(report.passed(), "{report}");
    assert!(
        report
            .checks
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Passed)),
        "{report}"
    );
    // Every check released what it made: no allocation and no claim left.
    assert_eq!(store.allocations(), vec![]);
    assert_eq!(store.claims(), vec![]);
}

/// Owners with more than one live allocation in a zone, and addresses
/// handed out twice, in what the store holds.
fn duplicates(store: &MemoryPoolStore) -> (usize, usize) {
    let mut per_owner: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut addresses = BTreeSet::new();
    let mut twice = 0;
    for a in store
        .allocations()
        .iter()
        .filter(|a| a.held_until.is_none())
    {
        *per_owner
            .entry((a.owner.node.clone(), a.zone.clone()))
            .or_default() += 1;
        if !addresses.insert(a.address.ip()) {
            twice += 1;
        }
    }
    (per_owner.values().filter(|n| **n > 1).count(), twice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_backends_racing_for_200_owners_hand_out_no_address_twice() {
    let store = MemoryPoolStore::new();
    store.put_pool(pool("a", "dal10", "198.18.0.0/24"));
    store.put_pool(IpPool {
        order: 1,
        ..pool("b", "dal10", "198.18.1.0/24")
    });
    let (one, two) = (backend(&store), backend(&store));
    let mut tasks = JoinSet::new();
    for i in 0..200 {
        // Both backends reserve for every owner, at the same time.
        for b in [one.clone(), two.clone()] {
            tasks.spawn(async move {
                let o = owner(&format!("node-{i}"));
                (i, b.reserve(&o, &zone("dal10")).await)
            });
        }
    }
    let mut answers: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.unwrap();
        answers
            .entry(i)
            .or_default()
            .insert(r.unwrap().address.to_string());
    }
    let split: Vec<_> = answers.iter().filter(|(_, a)| a.len() != 1).collect();
    assert!(split.is_empty(), "owners answered two addresses: {split:?}");
    assert_eq!(
        duplicates(&store),
        (0, 0),
        "owners with two allocations, addresses twice"
    );
    assert_eq!(store.allocations().len(), 200);
    assert_eq!(store.claims().len(), 200);
    let distinct: BTreeSet<&String> = answers.values().flatten().collect();
    assert_eq!(distinct.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_is_two_requests_and_reserving_again_is_none() {
    let store = conformance_store();
    let b = backend(&store);
    let (b, store) = (&b, &store);
    let first = b.reserve(&owner("n0"), &zone("big")).await.unwrap();
    let before = store.requests();
    for i in 1..=50 {
        b.reserve(&owner(&format!("n{i}")), &zone("big"))
            .await
            .unwrap();
    }
    assert_eq!(store.requests() - before, 100, "50 reservations");
    let before = store.requests();
    let again = b.reserve(&owner("n0"), &zone("big")).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        store.requests(),
        before,
        "an idempotent reserve writes nothing"
    );
    // The objects say who holds what.
    let name = allocation_name(first.address.ip());
    let a = store
        .allocations()
        .into_iter()
        .find(|a| a.name == name)
        .unwrap();
    assert_eq!((a.owner.node.as_str(), a.pool.as_str()), ("n0", "big"));
    assert_eq!(a.address.to_string(), "192.0.2.2/24");
    assert_eq!(a.gateway.to_string(), "192.0.2.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_of_a_zone_are_tried_by_order_and_a_disabled_pool_gives_nothing_new() {
    let store = MemoryPoolStore::new();
    store.put_pool(IpPool {
        order: 5,
        ..pool("later", "z", "198.51.100.0/30")
    });
    store.put_pool(IpPool {
        order: 1,
        ..pool("first", "z", "192.0.2.0/30")
    });
    let b = backend(&store);
    let (b, store) = (&b, &store);
    // A /30 has 2 hosts; the first is the gateway: one address per pool.
    let a = b.reserve(&owner("a"), &zone("z")).await.unwrap();
    assert_eq!(
        (a.subnet_id.as_str(), a.address.to_string().as_str()),
        ("first", "192.0.2.2/30")
    );
    let c = b.reserve(&owner("c"), &zone("z")).await.unwrap();
    assert_eq!(c.subnet_id, "later");
    match b.reserve(&owner("d"), &zone("z")).await {
        Err(IpamError::Exhausted { subnets, .. }) => assert_eq!(subnets, ["first", "later"]),
        other => panic!("expected Exhausted, got {other:?}"),
    }
    b.release(&a, Duration::ZERO).await.unwrap();
    store.put_pool(IpPool {
        order: 1,
        disabled: true,
        ..pool("first", "z", "192.0.2.0/30")
    });
    wait_for(|| async move { b.pools().await.unwrap().iter().any(|(p, _)| p.disabled) }).await;
    match b.reserve(&owner("d"), &zone("z")).await {
        Err(IpamError::Exhausted { subnets, .. }) => assert_eq!(subnets, ["later"]),
        other => panic!("a disabled pool must give nothing new, got {other:?}"),
    }
    // Existing allocations stay: c keeps its address.
    assert_eq!(b.lookup(&owner("c"), None).await.unwrap(), Some(c));
    let status = b
        .pools()
        .await
        .unwrap()
        .into_iter()
        .find(|(p, _)| p.name == "first")
        .unwrap()
        .1;
    assert_eq!((status.ready, status.reason.as_str()), (false, "Disabled"));
}

async fn wait_for<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_allocations_is_kept_by_its_finalizer_until_the_last_is_released() {
    let store = MemoryPoolStore::new();
    store.put_pool(pool("p", "z", "192.0.2.0/29"));
    let b = backend(&store);
    let (b, store) = (&b, &store);
    let kept = b.keep_pools().await.unwrap();
    assert_eq!(kept.finalizers, 1);
    wait_for(|| async move { !store.pool("p").unwrap().finalizers.is_empty() }).await;
    let r = b.reserve(&owner("a"), &zone("z")).await.unwrap();
    assert!(
        !store.delete_pool("p"),
        "a pool with a finalizer is only marked deleting"
    );
    wait_for(|| async move { b.pools().await.unwrap().iter().any(|(p, _)| p.deleting) }).await;
    b.keep_pools().await.unwrap();
    assert!(
        store.pool("p").is_some(),
        "the pool stays while an allocation exists"
    );
    assert_eq!(store.allocations().len(), 1, "and its allocation stays too");
    match b.reserve(&owner("b"), &zone("z")).await {
        Err(IpamError::Exhausted { subnets, .. }) => assert_eq!(subnets, ["p (Deleting)"]),
        other => panic!("a deleting pool gives nothing new, got {other:?}"),
    }
    b.release(&r, Duration::ZERO).await.unwrap();
    b.keep_pools().await.unwrap();
    assert!(
        store.pool("p").is_none(),
        "the pool goes with its last allocation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_recreated_within_the_hold_down_gets_its_old_address() {
    let store = conformance_store();
    let b = backend(&store);
    let (b, store) = (&b, &store);
    let node = owner("node-a");
    let first = b.reserve(&node, &zone("big")).await.unwrap();
    // The node goes: released with a hold-down.
    b.release(&first, Duration::from_secs(300)).await.unwrap();
    let held = store
        .allocations()
        .into_iter()
        .find(|a| a.owner == node)
        .unwrap();
    assert!(held.held_until.is_some(), "{held:?}");
    assert!(store.claims().is_empty(), "a release deletes the claim");
    // Another node gets another address meanwhile.
    let other = b.reserve(&owner("node-b"), &zone("big")).await.unwrap();
    assert_ne!(other.address, first.address);
    // The node comes back (a new controller process, too).
    let fresh = backend(store);
    let back = fresh.reserve(&node, &zone("big")).await.unwrap();
    assert_eq!(back.address, first.address);
    assert!(!back.is_held());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_overlapping_pools_are_marked_and_never_used() {
    let store = MemoryPoolStore::new();
    store.put_pool(IpPool {
        gateway: Some("198.51.100.1".into()),
        ..pool("bad-gw", "z", "192.0.2.0/28")
    });
    store.put_pool(pool("host-bits", "z", "192.0.2.17/28"));
    store.put_pool(pool("old", "y", "203.0.113.0/24"));
    store.put_pool(pool("new", "z", "203.0.113.128/25"));
    let b = backend(&store);
    let (b, store) = (&b, &store);
    match b.reserve(&owner("a"), &zone("z")).await {
        Err(IpamError::Exhausted { subnets, .. }) => {
            assert_eq!(
                subnets,
                [
                    "bad-gw (InvalidSpec)",
                    "host-bits (InvalidSpec)",
                    "new (Overlaps)"
                ]
            );
        }
        other => panic!("expected Exhausted naming the unusable pools, got {other:?}"),
    }
    b.keep_pools().await.unwrap();
    let status = |n: &str| store.pool(n).unwrap().status.unwrap();
    let bad = status("bad-gw");
    assert_eq!((bad.ready, bad.reason.as_str()), (false, "InvalidSpec"));
    assert!(bad.message.contains("spec.gateway"), "{}", bad.message);
    assert!(status("host-bits").message.contains("host bits"));
    let new = status("new");
    assert_eq!(new.reason, "Overlaps");
    assert!(new.message.contains("old"), "{}", new.message);
    let old = status("old");
    assert_eq!(
        (old.ready, old.size, old.usage.as_str()),
        (true, 253, "0/253")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_stopped_process_are_mended() {
    let store = conformance_store();
    let b = backend(&store);
    let (b, store) = (&b, &store);
    let r = b.reserve(&owner("seed"), &zone("big")).await.unwrap();
    let seed = store
        .allocations()
        .into_iter()
        .find(|a| a.owner == owner("seed"))
        .unwrap();
    // 1. An allocation made, the claim never created: reused, not leaked.
    let orphan = IpAllocation {
        name: allocation_name("192.0.2.200".parse().unwrap()),
        address: "192.0.2.200/24".parse().unwrap(),
        owner: owner("crashed"),
        resource_version: None,
        uid: String::new(),
        ..seed.clone()
    };
    store.create_allocation(&orphan).await.unwrap();
    let fresh = backend(store);
    let got = fresh
        .reserve(&owner("crashed"), &zone("big"))
        .await
        .unwrap();
    assert_eq!(got.address.to_string(), "192.0.2.200/24");
    // 2. A claim whose allocation is gone: the same address again.
    let lost = IpClaim {
        name: claim_name(&owner("lost"), "big"),
        uid: String::new(),
        owner: owner("lost"),
        zone: "big".into(),
        address: "192.0.2.201".parse().unwrap(),
    };
    store.create_claim(&lost).await.unwrap();
    let fresh = backend(store);
    let got = fresh.reserve(&owner("lost"), &zone("big")).await.unwrap();
    assert_eq!(got.address.to_string(), "192.0.2.201/24");
    // 3. A duplicate of a claimed owner (a racer stopped before deleting
    // its allocation): deleted by the keeper in its second pass.
    let dup = IpAllocation {
        name: allocation_name("192.0.2.202".parse().unwrap()),
        address: "192.0.2.202/24".parse().unwrap(),
        resource_version: None,
        uid: String::new(),
        ..seed
    };
    store.create_allocation(&dup).await.unwrap();
    wait_for(|| async move { b.list().await.unwrap().len() == 4 }).await;
    wait_for(|| async move { b.lookup_all(&owner("seed")).await.unwrap().len() == 2 }).await;
    assert_eq!(
        b.keep_pools().await.unwrap().duplicates,
        0,
        "first pass: only noted"
    );
    assert_eq!(b.keep_pools().await.unwrap().duplicates, 1);
    let left: Vec<String> = store
        .allocations()
        .iter()
        .filter(|a| a.owner == owner("seed"))
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(left, [r.address.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holds_are_deleted_and_list_shows_only_this_cluster() {
    let store = conformance_store();
    let b = backend(&store);
    let (b, store) = (&b, &store);
    let other = KubernetesBackend::start(Arc::new(store.clone()), "another-cluster");
    other
        .reserve(&Owner::new("another-cluster", "x"), &zone("big"))
        .await
        .unwrap();
    wait_for(
        || async move { b.list().await.unwrap().is_empty() && store.allocations().len() == 1 },
    )
    .await;
    let r = b.reserve(&owner("a"), &zone("big")).await.unwrap();
    b.release(&r, Duration::from_millis(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let listed = b.list().await.unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the held entry of this cluster only: {listed:?}"
    );
    assert!(listed[0].is_held());
    assert_eq!(b.keep_pools().await.unwrap().expired, 1);
    assert!(b.list().await.unwrap().is_empty());
    assert_eq!(other.list().await.unwrap().len(), 1);
}
