#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Issue 11 ("one address, one node") for the phpIPAM backend, against the
//! emulator: hold-down, ambiguous allocation failures, owners with two
//! addresses, and subnets removed from `subnetMap`.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use overlay_core::model::Marker;
use overlay_core::{IpamBackend, Owner, Zone};
use overlay_ipam::emulator::{
    EmulatedAddress, Emulator, EmulatorConfig, Fault, PASSWORD, user_credentials as user,
};
use overlay_ipam::phpipam::{PhpIpamBackend, PhpIpamConfig};

const CLUSTER: &str = "c1";
const HOLD: Duration = Duration::from_secs(300);

async fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig::default()).await.unwrap()
}

fn config(emu: &Emulator) -> PhpIpamConfig {
    PhpIpamConfig::new(emu.url(), "overlay")
        .with_zone("gw", [1])
        .with_zone("big", [3])
}

fn backend_with(cfg: &PhpIpamConfig) -> PhpIpamBackend {
    PhpIpamBackend::new(cfg, CLUSTER, user(PASSWORD)).unwrap()
}

fn backend(emu: &Emulator) -> PhpIpamBackend {
    backend_with(&config(emu))
}

fn zone(z: &str) -> Zone {
    Zone::parse("zone", z).unwrap()
}

fn owner(n: &str) -> Owner {
    Owner::new(CLUSTER, n)
}

fn entry(emu: &Emulator, subnet: u64, ip: &str) -> EmulatedAddress {
    let ip: Ipv4Addr = ip.parse().unwrap();
    emu.addresses(subnet)
        .into_iter()
        .find(|a| a.ip == ip)
        .unwrap_or_else(|| panic!("{ip} is not in subnet {subnet}"))
}

fn entries_of(emu: &Emulator, subnet: u64, node: &str) -> Vec<EmulatedAddress> {
    emu.addresses(subnet)
        .into_iter()
        .filter(|a| a.hostname.as_deref() == Some(node))
        .collect()
}

fn description(emu: &Emulator, subnet: u64, ip: &str) -> String {
    entry(emu, subnet, ip).description.unwrap_or_default()
}

#[tokio::test]
async fn a_held_address_goes_to_nobody_else_and_back_to_its_owner() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    let r = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    assert_eq!(r.address.to_string(), "203.0.113.1/24");
    let before = SystemTime::now();
    ipam.release(&r, HOLD).await.unwrap();

    // Visibly held in phpIPAM, with its expiry; the entry stays.
    let d = description(&emu, 3, "203.0.113.1");
    let Some(Marker::Held { owner: o, until }) = Marker::parse(&d) else {
        panic!("not a held marker: {d:?}");
    };
    assert_eq!(o, owner("node-a"));
    let ahead = until.duration_since(before).unwrap();
    assert!(
        ahead >= HOLD - Duration::from_secs(2) && ahead <= HOLD + Duration::from_secs(2),
        "{ahead:?}"
    );
    assert_eq!(
        entry(&emu, 3, "203.0.113.1").hostname.as_deref(),
        Some("node-a")
    );
    // list reports it as held; lookups see no live reservation.
    let listed = ipam.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].address, r.address);
    assert_eq!(listed[0].held_until, Some(until));
    assert_eq!(ipam.lookup(&owner("node-a"), None).await.unwrap(), None);
    assert!(ipam.lookup_all(&owner("node-a")).await.unwrap().is_empty());

    // Another owner never gets it.
    let b = ipam.reserve(&owner("node-b"), &zone("big")).await.unwrap();
    assert_eq!(b.address.to_string(), "203.0.113.2/24");

    // The owner gets it back, live again, without a new allocation.
    emu.reset_counts();
    let again = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    assert_eq!(again.address, r.address);
    assert_eq!(again.handle, r.handle);
    assert_eq!(again.held_until, None);
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 0);
    assert_eq!(
        description(&emu, 3, "203.0.113.1"),
        "overlay-owner:c1/node-a"
    );
    assert_eq!(
        ipam.lookup(&owner("node-a"), None).await.unwrap(),
        Some(again.clone())
    );
}

#[tokio::test]
async fn a_restarted_controller_gives_the_held_address_back_to_its_owner() {
    let emu = emulator().await;
    let r = backend(&emu)
        .reserve(&owner("node-a"), &zone("big"))
        .await
        .unwrap();
    backend(&emu).release(&r, HOLD).await.unwrap();
    // A new process: its owner index finds the held entry.
    let fresh = backend(&emu);
    fresh.reserve(&owner("node-b"), &zone("big")).await.unwrap();
    let again = fresh.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    assert_eq!(again.address, r.address);
    assert_eq!(emu.addresses(3).len(), 2);
}

#[tokio::test]
async fn releasing_a_held_address_again_keeps_the_hold_and_zero_frees_it() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    let r = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    ipam.release(&r, HOLD).await.unwrap();
    let held_marker = description(&emu, 3, "203.0.113.1");
    let held = ipam.list().await.unwrap().remove(0);
    assert!(held.is_held());

    // Held already: neither the stale live reservation nor the held one
    // moves the expiry.
    ipam.release(&r, Duration::from_secs(9999)).await.unwrap();
    ipam.release(&held, Duration::from_secs(9999))
        .await
        .unwrap();
    assert_eq!(description(&emu, 3, "203.0.113.1"), held_marker);

    // Hold zero frees it; again is a no-op.
    ipam.release(&held, Duration::ZERO).await.unwrap();
    assert!(emu.addresses(3).is_empty());
    ipam.release(&held, Duration::ZERO).await.unwrap();
    ipam.release(&r, HOLD).await.unwrap();
    assert!(emu.addresses(3).is_empty());
    // Freed: the next owner gets the address.
    let b = ipam.reserve(&owner("node-b"), &zone("big")).await.unwrap();
    assert_eq!(b.address, r.address);
}

#[tokio::test]
async fn freeing_an_expired_hold_spares_an_address_its_owner_took_back() {
    // The orphan collection lists a held entry; before it frees it, the
    // node returns and reserves it again. The stale release must not free
    // the now live address.
    let emu = emulator().await;
    let ipam = backend(&emu);
    let r = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    ipam.release(&r, HOLD).await.unwrap();
    let held = ipam.list().await.unwrap().remove(0);
    let again = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    ipam.release(&held, Duration::ZERO).await.unwrap();
    assert_eq!(
        description(&emu, 3, "203.0.113.1"),
        "overlay-owner:c1/node-a"
    );
    assert_eq!(
        ipam.lookup(&owner("node-a"), None).await.unwrap(),
        Some(again)
    );
}

#[tokio::test]
async fn entries_that_are_not_ours_are_never_changed() {
    let emu = emulator().await;
    let until = "2026-11-18T11:06:40Z";
    let foreign = [
        (
            "203.0.113.10",
            format!("overlay-held:other/node-a until={until}"),
        ),
        ("203.0.113.11", "overlay-owner:other/node-a".to_string()),
        (
            "203.0.113.12",
            "overlay-held:c1/node-a until=yesterday".to_string(),
        ),
        ("203.0.113.13", "overlay-owner:c1".to_string()),
        ("203.0.113.14", "made by hand".to_string()),
    ];
    for (ip, d) in &foreign {
        emu.create_address(3, ip.parse().unwrap(), "node-a", d)
            .unwrap();
    }
    let ipam = backend(&emu);
    assert!(ipam.list().await.unwrap().is_empty());
    assert!(ipam.lookup_all(&owner("node-a")).await.unwrap().is_empty());
    assert!(
        ipam.release_owner(&owner("node-a"), Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // A reservation pointing at an entry someone re-labelled by hand is
    // not released either.
    let r = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    assert_eq!(r.address.to_string(), "203.0.113.1/24");
    emu.delete_address(r.handle.parse().unwrap());
    let hand = emu
        .create_address(3, "203.0.113.1".parse().unwrap(), "node-a", "taken by hand")
        .unwrap();
    let mut stale = r.clone();
    stale.handle = hand.to_string();
    ipam.release(&stale, HOLD).await.unwrap();
    ipam.release(&stale, Duration::ZERO).await.unwrap();
    assert_eq!(description(&emu, 3, "203.0.113.1"), "taken by hand");
    for (ip, d) in &foreign {
        assert_eq!(&description(&emu, 3, ip), d);
    }
}

async fn lost_reply_leaves_one_address(fault: Fault, node: &str) {
    let emu = emulator().await;
    let mut cfg = config(&emu);
    cfg.timeout_seconds = 1;
    let ipam = backend_with(&cfg);
    ipam.reserve(&owner("warm"), &zone("big")).await.unwrap();
    emu.inject(fault.clone(), 1);
    let err = ipam.reserve(&owner(node), &zone("big")).await.unwrap_err();
    assert!(err.is_retryable(), "{fault:?}: {err:?}");
    // The server committed although the client saw a failure.
    let made = entries_of(&emu, 3, node);
    assert_eq!(made.len(), 1, "{fault:?}");
    emu.reset_counts();
    let r = ipam.reserve(&owner(node), &zone("big")).await.unwrap();
    assert_eq!(r.address.ip(), std::net::IpAddr::V4(made[0].ip));
    assert_eq!(r.handle, made[0].id.to_string());
    assert_eq!(
        entries_of(&emu, 3, node).len(),
        1,
        "{fault:?}: a second address"
    );
    assert_eq!(
        emu.count("POST /addresses/first_free/{}/"),
        0,
        "{fault:?}: {:?}",
        emu.request_counts()
    );
    assert_eq!(emu.count("GET /addresses/search_hostname/{}/"), 1);
    // Once found, the owner is trusted from the index again.
    emu.reset_counts();
    assert_eq!(ipam.reserve(&owner(node), &zone("big")).await.unwrap(), r);
    assert_eq!(emu.requests(), 0, "{:?}", emu.request_counts());
}

#[tokio::test]
async fn a_cut_allocation_reply_never_makes_a_second_address() {
    lost_reply_leaves_one_address(Fault::CutAfterCommit, "node-cut").await;
}

#[tokio::test]
async fn a_timed_out_allocation_never_makes_a_second_address() {
    lost_reply_leaves_one_address(Fault::SlowAfterCommit(Duration::from_secs(3)), "node-slow")
        .await;
}

#[tokio::test]
async fn a_php_fatal_after_the_allocation_never_makes_a_second_address() {
    // A 5xx may come after the insert: looked up again, too.
    let emu = emulator().await;
    let ipam = backend(&emu);
    ipam.reserve(&owner("warm"), &zone("big")).await.unwrap();
    // The entry exists, the client saw a 500 with an empty body.
    emu.create_address(
        3,
        "203.0.113.7".parse().unwrap(),
        "node-x",
        "overlay-owner:c1/node-x",
    )
    .unwrap();
    emu.inject(Fault::ServerError, 1);
    ipam.reserve(&owner("node-x"), &zone("big"))
        .await
        .unwrap_err();
    let r = ipam.reserve(&owner("node-x"), &zone("big")).await.unwrap();
    assert_eq!(r.address.to_string(), "203.0.113.7/24");
    assert_eq!(entries_of(&emu, 3, "node-x").len(), 1);
}

#[tokio::test]
async fn an_owner_with_two_addresses_gets_the_lowest_and_loses_both() {
    let emu = emulator().await;
    // Made by hand, the higher one first (so it is the first search hit
    // and the lower one carries the decimal ip of the search quirk).
    for ip in ["203.0.113.20", "203.0.113.10"] {
        emu.create_address(3, ip.parse().unwrap(), "node-a", "overlay-owner:c1/node-a")
            .unwrap();
    }
    let ipam = backend(&emu);
    let low = ipam.lookup(&owner("node-a"), None).await.unwrap().unwrap();
    assert_eq!(low.address.to_string(), "203.0.113.10/24");
    assert_eq!(
        ipam.lookup(&owner("node-a"), Some(&zone("big")))
            .await
            .unwrap(),
        Some(low.clone())
    );
    let r = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    assert_eq!(r, low);
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 0);
    // The same answer from a fresh process, every time.
    for _ in 0..3 {
        assert_eq!(
            backend(&emu)
                .reserve(&owner("node-a"), &zone("big"))
                .await
                .unwrap(),
            low
        );
    }
    let all = ipam.lookup_all(&owner("node-a")).await.unwrap();
    let addrs: Vec<String> = all.iter().map(|r| r.address.to_string()).collect();
    assert_eq!(addrs, ["203.0.113.10/24", "203.0.113.20/24"]);
    assert!(all.iter().all(|r| r.zone == zone("big")));
    let released = ipam
        .release_owner(&owner("node-a"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(released, all);
    assert!(emu.addresses(3).is_empty());
    assert!(ipam.lookup_all(&owner("node-a")).await.unwrap().is_empty());
}

#[tokio::test]
async fn release_owner_holds_every_address_of_the_owner() {
    let emu = emulator().await;
    for (sid, ip) in [(3, "203.0.113.20"), (1, "192.0.2.9")] {
        emu.create_address(
            sid,
            ip.parse().unwrap(),
            "node-a",
            "overlay-owner:c1/node-a",
        )
        .unwrap();
    }
    let ipam = backend(&emu);
    // In a zone: only that zone's address.
    let gw = ipam
        .lookup(&owner("node-a"), Some(&zone("gw")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gw.address.to_string(), "192.0.2.9/24");
    assert_eq!(gw.zone, zone("gw"));
    let released = ipam.release_owner(&owner("node-a"), HOLD).await.unwrap();
    assert_eq!(released.len(), 2);
    for (sid, ip) in [(3, "203.0.113.20"), (1, "192.0.2.9")] {
        let d = description(&emu, sid, ip);
        assert!(d.starts_with("overlay-held:c1/node-a until="), "{d}");
    }
    assert!(ipam.lookup_all(&owner("node-a")).await.unwrap().is_empty());
    assert_eq!(
        ipam.list()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.is_held())
            .count(),
        2
    );
}

#[tokio::test]
async fn an_address_in_a_subnet_removed_from_the_config_is_found_and_released() {
    let emu = emulator().await;
    let old = backend(&emu);
    let r = old.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    old.reserve(&owner("node-b"), &zone("big")).await.unwrap();
    // subnet 3 leaves subnetMap.
    let now = backend_with(&PhpIpamConfig::new(emu.url(), "overlay").with_zone("gw", [1]));
    let found = now.lookup_all(&owner("node-a")).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].address, r.address);
    assert_eq!(found[0].subnet_id, "3");
    assert_eq!(found[0].handle, r.handle);
    assert_eq!(found[0].zone.as_str(), "unmapped-subnet-3");
    assert_eq!(
        now.lookup(&owner("node-a"), None).await.unwrap(),
        Some(found[0].clone())
    );
    assert_eq!(
        now.lookup(&owner("node-a"), Some(&zone("gw")))
            .await
            .unwrap(),
        None
    );
    // Held first, then freed: both work outside the configured subnets.
    let held = now.release_owner(&owner("node-a"), HOLD).await.unwrap();
    assert_eq!(held, found);
    let d = description(&emu, 3, "203.0.113.1");
    assert!(d.starts_with("overlay-held:c1/node-a"), "{d}");
    let mut held = held[0].clone();
    held.held_until = Some(SystemTime::now());
    now.release(&held, Duration::ZERO).await.unwrap();
    let left: Vec<_> = emu
        .addresses(3)
        .into_iter()
        .map(|a| a.hostname.unwrap())
        .collect();
    assert_eq!(left, ["node-b"]);
    // And directly with hold zero.
    let b = now
        .release_owner(&owner("node-b"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(b.len(), 1);
    assert!(emu.addresses(3).is_empty());
}
