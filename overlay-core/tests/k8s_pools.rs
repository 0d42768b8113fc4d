//! `KubePoolStore`, the Kubernetes-native IPAM's objects in the API server,
//! against the scripted API server (`support/apiserver.rs`), which answers
//! like a real one: 409 `AlreadyExists` for a taken name, 409 `Conflict`
//! for a stale resourceVersion or a uid precondition that does not hold,
//! deletion held by finalizers, CRD schemas enforced on every write.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use overlay_core::crd::OverlayIPPool;
use overlay_core::ippool::{
    IpAllocation, IpClaim, IpPoolStatus, NODE_LABEL, POOL_FINALIZER, POOL_LABEL, PoolEvent,
    PoolObject, PoolStore, allocation_name, claim_name,
};
use overlay_core::k8s::KubePoolStore;
use overlay_core::{Owner, StoreError};
use serde_json::{Value, json};
use support::apiserver::{ALLOCATIONS, CLAIMS, FakeApiServer, POOLS};

const CLUSTER: &str = "c0ffee00-0000-4000-8000-000000000001";

fn pool_json(name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "OverlayIPPool",
        "metadata": {"name": name, "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-11-27T12:00:00Z"},
        "spec": {"zone": "dal10", "cidr": cidr}})
}

fn allocation(node: &str, address: &str) -> IpAllocation {
    let address: ipnetwork::IpNetwork = address.parse().unwrap();
    IpAllocation {
        name: allocation_name(address.ip()),
        resource_version: None,
        uid: String::new(),
        pool: "dal10-a".into(),
        pool_uid: "uid-dal10-a".into(),
        zone: "dal10".into(),
        owner: Owner::new(CLUSTER, node),
        address,
        gateway: "198.51.100.1".parse().unwrap(),
        held_until: None,
    }
}

fn claim(node: &str, address: &str) -> IpClaim {
    let owner = Owner::new(CLUSTER, node);
    IpClaim {
        name: claim_name(&owner, "dal10"),
        uid: String::new(),
        owner,
        zone: "dal10".into(),
        address: address.parse().unwrap(),
    }
}

/// An allocation object as the controller writes it.
fn allocation_json(node: &str, address: &str) -> Value {
    let a = allocation(node, address);
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "OverlayIPAllocation",
        "metadata": {"name": a.name, "uid": format!("uid-{}", a.name)},
        "spec": {"pool": a.pool, "zone": a.zone, "cluster": CLUSTER, "node": node,
            "address": address, "gateway": "198.51.100.1"}})
}

fn claim_json(node: &str, address: &str) -> Value {
    let c = claim(node, address);
    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "OverlayIPClaim",
        "metadata": {"name": c.name, "uid": format!("uid-{}", c.name)},
        "spec": {"cluster": CLUSTER, "node": node, "zone": "dal10", "address": address}})
}

/// A watch driven by its own task, as the backend runs it (the stream
/// only lists and watches while polled).
type Events = tokio::sync::mpsc::UnboundedReceiver<Result<PoolEvent, StoreError>>;

fn spawn_watch(store: &KubePoolStore) -> Events {
    let mut stream = store.watch();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = stream.next().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next(watch: &mut Events) -> PoolEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("a watch event")
        .expect("the stream goes on")
        .expect("no error")
}

/// The three lists a watch starts with, in whatever order they come.
async fn initial_lists(
    watch: &mut Events,
) -> (
    Vec<overlay_core::ippool::IpPool>,
    Vec<IpAllocation>,
    Vec<IpClaim>,
) {
    let (mut pools, mut allocations, mut claims) = (None, None, None);
    while pools.is_none() || allocations.is_none() || claims.is_none() {
        match next(watch).await {
            PoolEvent::Pools(p) => pools = Some(p),
            PoolEvent::Allocations(a) => allocations = Some(a),
            PoolEvent::Claims(c) => claims = Some(c),
            other => panic!("a change before the lists: {other:?}"),
        }
    }
    (pools.unwrap(), allocations.unwrap(), claims.unwrap())
}

#[tokio::test]
async fn a_second_allocation_of_one_address_is_refused_as_already_existing() {
    let (api, client) = FakeApiServer::start();
    let store = KubePoolStore::new(client);
    let a = allocation("node-a", "198.51.100.7/24");
    let created = store.create_allocation(&a).await.unwrap();
    assert!(!created.uid.is_empty() && created.resource_version.is_some());
    assert_eq!(
        IpAllocation {
            uid: String::new(),
            resource_version: None,
            ..created.clone()
        },
        a
    );
    // Another node, same address: the name is taken.
    let err = store
        .create_allocation(&allocation("node-b", "198.51.100.7/24"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { name, .. } if name == "198-51-100-7"),
        "{err:?}"
    );
    assert_eq!(
        api.object(ALLOCATIONS, "198-51-100-7").unwrap()["spec"]["node"],
        "node-a",
        "the first allocation is untouched"
    );
    let post = api.find("POST", "/overlayipallocations?");
    assert!(
        post.uri.contains("fieldManager=overlay-controller"),
        "{}",
        post.uri
    );
    // Claims alike: one per owner and zone.
    let c = claim("node-a", "198.51.100.7");
    let made = store.create_claim(&c).await.unwrap();
    assert_eq!(made.owner, c.owner);
    assert!(!made.uid.is_empty());
    let err = store
        .create_claim(&claim("node-a", "198.51.100.8"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(
        store.get_claim(&c.name).await.unwrap().unwrap().address,
        c.address
    );
    // Listed once, as it was first created.
    assert_eq!(store.list_claims().await.unwrap(), vec![made]);
}

#[tokio::test]
async fn allocations_carry_the_owner_reference_labels_and_spec_the_crd_declares() {
    let (api, client) = FakeApiServer::start();
    let store = KubePoolStore::new(client);
    store
        .create_allocation(&allocation("node-a", "198.51.100.7/24"))
        .await
        .unwrap();
    let o = api.object(ALLOCATIONS, "198-51-100-7").unwrap();
    assert_eq!(
        o["metadata"]["ownerReferences"],
        json!([{"apiVersion": "iks.ibm.com/v1alpha1", "kind": "OverlayIPPool",
            "name": "dal10-a", "uid": "uid-dal10-a",
            "blockOwnerDeletion": false, "controller": false}])
    );
    assert_eq!(
        o["metadata"]["labels"],
        json!({POOL_LABEL: "dal10-a", NODE_LABEL: "node-a"})
    );
    assert_eq!(
        o["spec"],
        json!({"pool": "dal10-a", "zone": "dal10", "cluster": CLUSTER, "node": "node-a",
            "address": "198.51.100.7/24", "gateway": "198.51.100.1"})
    );
    // IPv6, a node name too long for a label, and a hold-down time.
    let mut v6 = allocation(&"n".repeat(100), "2001:db8::7/64");
    v6.gateway = "2001:db8::1".parse().unwrap();
    v6.held_until = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let made = store.create_allocation(&v6).await.unwrap();
    assert_eq!(made.name, "2001-db8-0-0-0-0-0-7");
    assert_eq!(made.address, v6.address);
    assert_eq!(made.held_until, v6.held_until);
    let o = api.object(ALLOCATIONS, "2001-db8-0-0-0-0-0-7").unwrap();
    assert_eq!(o["spec"]["heldUntil"], "2027-01-15T08:00:00Z");
    assert_eq!(
        o["metadata"]["labels"],
        json!({POOL_LABEL: "dal10-a"}),
        "a node name over 63 characters gets no label"
    );
    assert_eq!(store.list_allocations().await.unwrap().len(), 2);
    let claim = store
        .create_claim(&claim("node-a", "198.51.100.7"))
        .await
        .unwrap();
    let o = api.object(CLAIMS, &claim.name).unwrap();
    assert_eq!(o["metadata"]["labels"], json!({NODE_LABEL: "node-a"}));
    assert_eq!(
        o["spec"],
        json!({"cluster": CLUSTER, "node": "node-a", "zone": "dal10", "address": "198.51.100.7"})
    );
}

#[tokio::test]
async fn a_replace_with_a_stale_resource_version_is_a_conflict() {
    let (api, client) = FakeApiServer::start();
    let store = KubePoolStore::new(client);
    let a = store
        .create_allocation(&allocation("node-a", "198.51.100.7/24"))
        .await
        .unwrap();
    let held = IpAllocation {
        held_until: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        ..a.clone()
    };
    let replaced = store.replace_allocation(&held).await.unwrap();
    assert_eq!(replaced.held_until, held.held_until);
    assert_eq!(replaced.uid, a.uid, "the same object");
    assert_ne!(replaced.resource_version, a.resource_version);
    let put = api.find("PUT", "/overlayipallocations/198-51-100-7?");
    assert_eq!(
        put.body["metadata"]["resourceVersion"],
        json!(a.resource_version)
    );
    assert_eq!(put.body["metadata"]["uid"], json!(a.uid));

    // A writer still holding the first version loses.
    let err = store
        .replace_allocation(&IpAllocation {
            owner: Owner::new(CLUSTER, "node-b"),
            ..a.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let stored = store.get_allocation(&a.name).await.unwrap().unwrap();
    assert_eq!(stored.owner.node, "node-a");
    assert_eq!(stored.held_until, held.held_until);
    // Without a resourceVersion there is no precondition: refused here.
    let err = store
        .replace_allocation(&IpAllocation {
            resource_version: None,
            ..stored
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected { .. }), "{err:?}");
}

#[tokio::test]
async fn a_delete_is_idempotent_and_never_takes_an_object_recreated_under_the_name() {
    let (api, client) = FakeApiServer::start();
    let store = KubePoolStore::new(client);
    let a = store
        .create_allocation(&allocation("node-a", "198.51.100.7/24"))
        .await
        .unwrap();
    assert!(store.delete_allocation(&a).await.unwrap());
    assert!(!store.delete_allocation(&a).await.unwrap());
    assert!(store.get_allocation(&a.name).await.unwrap().is_none());
    let delete = api.find("DELETE", "/overlayipallocations/198-51-100-7");
    assert_eq!(delete.body["preconditions"]["uid"], json!(a.uid));
    assert_eq!(
        delete.body["preconditions"]["resourceVersion"],
        json!(a.resource_version)
    );

    // Deleted and created again by another writer: the old uid no longer
    // matches, and the new object stays.
    let again = store
        .create_allocation(&allocation("node-b", "198.51.100.7/24"))
        .await
        .unwrap();
    assert_ne!(again.uid, a.uid);
    let err = store.delete_allocation(&a).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(api.object(ALLOCATIONS, &a.name).is_some());

    let c = store
        .create_claim(&claim("node-a", "198.51.100.7"))
        .await
        .unwrap();
    assert!(
        !store
            .delete_claim(&c.name, "another-uid")
            .await
            .is_ok_and(|d| d)
    );
    assert!(api.object(CLAIMS, &c.name).is_some());
    assert!(store.delete_claim(&c.name, &c.uid).await.unwrap());
    assert!(!store.delete_claim(&c.name, &c.uid).await.unwrap());
    assert!(store.get_claim(&c.name).await.unwrap().is_none());
}

#[tokio::test]
async fn the_watch_starts_with_the_three_lists_then_reports_changes() {
    let (api, client) = FakeApiServer::start();
    let mut pool = pool_json("dal10-a", "198.51.100.0/24");
    pool["spec"]["gateway"] = json!("198.51.100.254");
    pool["spec"]["reserved"] = json!(["198.51.100.10", "198.51.100.240/28"]);
    pool["spec"]["order"] = json!(5);
    pool["metadata"]["finalizers"] = json!([POOL_FINALIZER]);
    api.put(POOLS, pool);
    api.put(ALLOCATIONS, allocation_json("node-a", "198.51.100.7/24"));
    api.put(CLAIMS, claim_json("node-a", "198.51.100.7"));
    let store = KubePoolStore::new(client.clone());
    let mut watch = spawn_watch(&store);
    let (pools, allocations, claims) = initial_lists(&mut watch).await;
    let [p] = pools.as_slice() else {
        panic!("{pools:?}")
    };
    assert_eq!(
        (
            p.name.as_str(),
            p.uid.as_str(),
            p.zone.as_str(),
            p.cidr.as_str()
        ),
        ("dal10-a", "uid-dal10-a", "dal10", "198.51.100.0/24")
    );
    assert_eq!(p.gateway.as_deref(), Some("198.51.100.254"));
    assert_eq!(p.reserved, ["198.51.100.10", "198.51.100.240/28"]);
    assert_eq!((p.order, p.disabled, p.deleting), (5, false, false));
    assert_eq!(p.finalizers, [POOL_FINALIZER]);
    assert_eq!(
        p.created,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_780_800))
    );
    assert_eq!(p.status, None);
    let [a] = allocations.as_slice() else {
        panic!("{allocations:?}")
    };
    assert_eq!(a.owner, Owner::new(CLUSTER, "node-a"));
    assert_eq!(a.address.to_string(), "198.51.100.7/24");
    assert_eq!(a.resource_version.as_deref(), Some("2"));
    let [c] = claims.as_slice() else {
        panic!("{claims:?}")
    };
    assert_eq!(c.address.to_string(), "198.51.100.7");

    // Changes, one by one.
    for c in [POOLS, ALLOCATIONS, CLAIMS] {
        assert!(api.wait_for_watchers(c, 1).await, "no watch on {c}");
    }
    let store2 = KubePoolStore::new(client);
    let b = store2
        .create_allocation(&allocation("node-b", "198.51.100.8/24"))
        .await
        .unwrap();
    match next(&mut watch).await {
        PoolEvent::Applied(PoolObject::Allocation(got)) => assert_eq!(got, b),
        other => panic!("{other:?}"),
    }
    assert!(store2.delete_allocation(&b).await.unwrap());
    match next(&mut watch).await {
        PoolEvent::Deleted(PoolObject::Allocation(got)) => assert_eq!(got.name, b.name),
        other => panic!("{other:?}"),
    }
    api.remove_object(CLAIMS, &c.name);
    match next(&mut watch).await {
        PoolEvent::Deleted(PoolObject::Claim(got)) => assert_eq!(got.name, c.name),
        other => panic!("{other:?}"),
    }
    // After the watch expires, the lists come again.
    api.expire_watches();
    let (pools, allocations, claims) = initial_lists(&mut watch).await;
    assert_eq!((pools.len(), allocations.len(), claims.len()), (1, 1, 0));
}

#[tokio::test]
async fn objects_that_do_not_convert_are_skipped_and_never_stop_the_watch() {
    let (api, client) = FakeApiServer::start();
    let mut bad_address = allocation_json("node-x", "198.51.100.9/24");
    bad_address["spec"]["address"] = json!("198.51.100.300/24");
    api.put(ALLOCATIONS, bad_address);
    let mut misnamed = allocation_json("node-y", "198.51.100.10/24");
    misnamed["metadata"]["name"] = json!("my-favourite-address");
    api.put(ALLOCATIONS, misnamed);
    api.put(ALLOCATIONS, allocation_json("node-a", "198.51.100.7/24"));
    let mut bad_claim = claim_json("node-z", "198.51.100.11");
    bad_claim["spec"] = json!("garbage");
    api.put(CLAIMS, bad_claim.clone());
    // A pool whose spec does not read is kept, as text the backend will
    // find invalid: never a pool quietly allocated from with a reserved
    // entry dropped.
    let mut odd_pool = pool_json("odd", "198.51.100.0/24");
    odd_pool["spec"]["reserved"] = json!("198.51.100.0/28");
    odd_pool["spec"]["disabled"] = json!("no");
    api.put(POOLS, odd_pool);

    let store = KubePoolStore::new(client);
    let mut watch = spawn_watch(&store);
    let (pools, allocations, claims) = initial_lists(&mut watch).await;
    let names: Vec<&str> = allocations.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["198-51-100-7"]);
    assert!(claims.is_empty(), "{claims:?}");
    assert_eq!(pools[0].reserved, ["\"198.51.100.0/28\""]);
    assert!(pools[0].disabled, "a disabled flag that does not read");
    assert_eq!(
        store
            .list_allocations()
            .await
            .unwrap()
            .iter()
            .map(|a| a.name.clone())
            .collect::<Vec<_>>(),
        ["198-51-100-7"]
    );
    assert_eq!(store.list_pools().await.unwrap().len(), 1);
    // Read directly, a malformed object is an error naming the field.
    let err = store
        .get_allocation("198-51-100-9")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.address"), "{err}");
    let err = store
        .get_allocation("my-favourite-address")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("198-51-100-10"), "{err}");

    // In a watch event too; the next good one still arrives.
    assert!(
        api.wait_for_watchers(ALLOCATIONS, 1).await,
        "no watch on {ALLOCATIONS}"
    );
    let mut bad = allocation_json("node-x", "198.51.100.12/24");
    bad["spec"]["gateway"] = json!(12);
    api.put(ALLOCATIONS, bad);
    api.put(ALLOCATIONS, allocation_json("node-b", "198.51.100.13/24"));
    match next(&mut watch).await {
        PoolEvent::Applied(PoolObject::Allocation(a)) => assert_eq!(a.name, "198-51-100-13"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pool_status_is_applied_under_the_controllers_field_manager() {
    let (api, client) = FakeApiServer::start();
    let mut pool = pool_json("dal10-a", "198.51.100.0/24");
    pool["status"] = json!({"conditions": [{"type": "Ready", "status": "True",
        "reason": "Ready", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    api.put(POOLS, pool);
    let store = KubePoolStore::new(client);
    let mut watch = spawn_watch(&store);
    initial_lists(&mut watch).await;
    let status = IpPoolStatus {
        size: 252,
        allocated: 3,
        held: 1,
        free: 248,
        usage: "3/252".into(),
        ready: true,
        reason: "Ready".into(),
        message: "allocating".into(),
    };
    store.apply_pool_status("dal10-a", &status).await.unwrap();
    let apply = api.find("PATCH", "/overlayippools/dal10-a/status?");
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert!(
        apply.uri.contains("fieldManager=overlay-controller") && apply.uri.contains("force=true"),
        "{}",
        apply.uri
    );
    assert_eq!(
        apply.body,
        json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "OverlayIPPool",
            "metadata": {"name": "dal10-a"},
            "status": {"size": 252, "allocated": 3, "held": 1, "free": 248, "usage": "3/252",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                    "message": "allocating",
                    // Still Ready: the transition time stays.
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    );
    // Read back as the controller wrote it.
    let read = store.list_pools().await.unwrap().remove(0);
    assert_eq!(read.status, Some(status.clone()));

    // Not ready any more: a new transition time; an empty reason gets one
    // (the CRD requires it).
    let full = IpPoolStatus {
        ready: false,
        reason: String::new(),
        message: "every address is taken".into(),
        ..status
    };
    store.apply_pool_status("dal10-a", &full).await.unwrap();
    let stored = api.object(POOLS, "dal10-a").unwrap();
    let cond = &stored["status"]["conditions"][0];
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "NotReady");
    assert_ne!(cond["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert_eq!(
        stored["status"]["conditions"].as_array().unwrap().len(),
        1,
        "{stored}"
    );
    let err = store.apply_pool_status("missing", &full).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn the_pool_finalizer_is_added_and_removed_by_guarded_patches() {
    let (api, client) = FakeApiServer::start();
    let mut kept = pool_json("kept", "198.51.100.0/24");
    kept["metadata"]["finalizers"] = json!(["example.com/keep"]);
    api.put(POOLS, kept);
    api.put(POOLS, pool_json("bare", "203.0.113.0/24"));
    let store = KubePoolStore::new(client.clone());

    store.set_pool_finalizer("kept", true).await.unwrap();
    let fins = |name: &str| api.object(POOLS, name).unwrap()["metadata"]["finalizers"].clone();
    assert_eq!(fins("kept"), json!(["example.com/keep", POOL_FINALIZER]));
    let patch = api.find("PATCH", "/overlayippools/kept?");
    assert_eq!(patch.content_type, "application/json-patch+json");
    assert_eq!(patch.body[0]["op"], "test");
    assert_eq!(patch.body[0]["path"], "/metadata/finalizers");
    // Already there: nothing written.
    store.set_pool_finalizer("kept", true).await.unwrap();
    assert_eq!(api.requests("PATCH", "/overlayippools/kept?").len(), 1);

    store.set_pool_finalizer("bare", true).await.unwrap();
    assert_eq!(fins("bare"), json!([POOL_FINALIZER]));
    let patch = api.find("PATCH", "/overlayippools/bare?");
    assert_eq!(patch.body[0]["path"], "/metadata/resourceVersion");

    // A pool deleted while it holds the finalizer stays, marked deleting,
    // until the finalizer comes off.
    kube::Api::<OverlayIPPool>::all(client)
        .delete("bare", &Default::default())
        .await
        .unwrap();
    let p = store
        .list_pools()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.name == "bare")
        .unwrap();
    assert!(p.deleting);
    store.set_pool_finalizer("bare", false).await.unwrap();
    assert!(api.object(POOLS, "bare").is_none(), "deleted once released");

    store.set_pool_finalizer("kept", false).await.unwrap();
    assert_eq!(fins("kept"), json!(["example.com/keep"]));
    // Removing from a pool that is gone is done already; adding is not.
    store.set_pool_finalizer("bare", false).await.unwrap();
    let err = store.set_pool_finalizer("bare", true).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn without_the_crds_installed_the_store_says_so() {
    let (api, client) = FakeApiServer::start();
    api.serve_collection(ALLOCATIONS, false);
    let store = KubePoolStore::new(client);
    let err = store.list_allocations().await.unwrap_err();
    assert!(err.is_not_served(), "{err:?}");
    assert!(err.to_string().contains("CRD"), "{err}");
    let mut watch = spawn_watch(&store);
    let first_error = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.recv())
            .await
            .expect("a watch event")
            .expect("the stream goes on")
        {
            Err(e) => break e,
            Ok(_) => continue,
        }
    };
    assert!(first_error.is_not_served(), "{first_error:?}");
    // Installed: the lists come.
    api.serve_collection(ALLOCATIONS, true);
    let allocations = loop {
        if let Ok(PoolEvent::Allocations(a)) =
            tokio::time::timeout(Duration::from_secs(30), watch.recv())
                .await
                .expect("the allocations once served")
                .expect("the stream goes on")
        {
            break a;
        }
    };
    assert!(allocations.is_empty());
}

#[tokio::test]
async fn another_writer_writes_under_its_own_field_manager() {
    let (api, client) = FakeApiServer::start();
    let store = KubePoolStore::new(client).with_field_manager("overlayctl-ipam-migrate");
    store
        .create_allocation(&allocation("node-a", "198.51.100.9/24"))
        .await
        .unwrap();
    let post = api.find("POST", "/overlayipallocations?");
    assert!(
        post.uri.contains("fieldManager=overlayctl-ipam-migrate"),
        "{}",
        post.uri
    );
}
