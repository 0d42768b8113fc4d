#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Adoption of the original controller's phpIPAM entries against the
//! emulator: an entry holding only `owner=<node>` is marked ours with one
//! PATCH and then found, listed and released like our own; anything else
//! at the address is left alone.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use overlay_core::{Adoption, IpamBackend, Owner, Zone};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, PASSWORD, SubnetSpec, user_credentials};
use overlay_ipam::phpipam::{PhpIpamBackend, PhpIpamConfig};

const CLUSTER: &str = "c1";

/// The default emulator plus subnet 5: 192.0.2.0/24 again (another
/// section in a real phpIPAM), which no zone lists.
async fn emulator() -> Emulator {
    let mut c = EmulatorConfig::default();
    c.subnets.push(SubnetSpec {
        id: 5,
        network: Ipv4Addr::new(192, 0, 2, 0),
        mask: 24,
        description: "the same range in another section".into(),
        gateway: None,
    });
    Emulator::start(c).await.unwrap()
}

fn backend(emu: &Emulator) -> PhpIpamBackend {
    let config = PhpIpamConfig::new(emu.url(), "overlay")
        .with_zone("gw", [1])
        .with_zone("big", [3]);
    PhpIpamBackend::new(&config, CLUSTER, user_credentials(PASSWORD)).unwrap()
}

fn owner(n: &str) -> Owner {
    Owner::new(CLUSTER, n)
}

fn zone(z: &str) -> Zone {
    Zone::parse("zone", z).unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// Requests that change something (logins aside).
fn writes(emu: &Emulator) -> u64 {
    emu.request_counts()
        .iter()
        .filter(|(route, _)| !route.starts_with("GET ") && route.as_str() != "POST /user/")
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn an_entry_the_original_controller_left_is_adopted_then_found_and_released() {
    let emu = emulator().await;
    let id = emu
        .seed_original_entry(1, Ipv4Addr::new(192, 0, 2, 4), "node-a")
        .unwrap();
    let ipam = backend(&emu);
    let a = owner("node-a");
    // Before: our lookups do not see it, so a release would leak it.
    assert!(ipam.lookup_all(&a).await.unwrap().is_empty());
    match ipam
        .inspect_adoption(&a, net("192.0.2.4/24"))
        .await
        .unwrap()
    {
        Adoption::Adoptable { subnet_id, detail } => {
            assert_eq!(subnet_id, 1);
            assert!(detail.contains("node-a"), "{detail}");
        }
        other => panic!("expected Adoptable, got {other:?}"),
    }
    assert_eq!(writes(&emu), 0, "inspecting writes nothing");

    emu.reset_counts();
    let Adoption::Adopted { reservation } = ipam.adopt(&a, net("192.0.2.4/24")).await.unwrap()
    else {
        panic!("not adopted")
    };
    assert_eq!(reservation.address, net("192.0.2.4/24"));
    assert_eq!(reservation.gateway, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(reservation.subnet_id, "1");
    assert_eq!(reservation.zone, zone("gw"));
    assert_eq!(reservation.handle, id.to_string());
    assert_eq!(reservation.owner, a);
    assert_eq!(emu.count("PATCH /addresses/{}/"), 1);
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 0);
    assert_eq!(writes(&emu), 1, "{:?}", emu.request_counts());
    let stored = emu.address(id).unwrap();
    assert_eq!(
        stored.description.as_deref(),
        Some("overlay-owner:c1/node-a")
    );
    assert_eq!(stored.hostname.as_deref(), Some("node-a"));
    assert_eq!(stored.owner.as_deref(), Some("node-a"));

    // Found by lookup and list like our own; a reserve gets it back.
    let found = ipam.lookup(&a, None).await.unwrap().unwrap();
    assert_eq!(found.address, reservation.address);
    assert!(ipam.list().await.unwrap().contains(&reservation));
    emu.reset_counts();
    let again = ipam.reserve(&a, &zone("gw")).await.unwrap();
    assert_eq!(again.address, reservation.address);
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 0);

    // A restarted controller releases it when the node goes.
    let released = backend(&emu)
        .release_owner(&a, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].address, reservation.address);
    assert_eq!(emu.address(id), None, "the emulator no longer holds it");
}

#[tokio::test]
async fn an_adoption_shows_in_an_owner_index_already_loaded() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    // Loads the zone's owner index (the seeded entry is not in it).
    ipam.reserve(&owner("node-z"), &zone("gw")).await.unwrap();
    emu.seed_original_entry(1, Ipv4Addr::new(192, 0, 2, 9), "node-a")
        .unwrap();
    let a = owner("node-a");
    assert!(matches!(
        ipam.adopt(&a, net("192.0.2.9/24")).await.unwrap(),
        Adoption::Adopted { .. }
    ));
    emu.reset_counts();
    let r = ipam.reserve(&a, &zone("gw")).await.unwrap();
    assert_eq!(r.address, net("192.0.2.9/24"));
    assert_eq!(emu.requests(), 0, "{:?}", emu.request_counts());
}

#[tokio::test]
async fn adopting_twice_answers_ours_and_writes_nothing() {
    let emu = emulator().await;
    emu.seed_original_entry(3, Ipv4Addr::new(203, 0, 113, 7), "node-a")
        .unwrap();
    let ipam = backend(&emu);
    let a = owner("node-a");
    let first = ipam.adopt(&a, net("203.0.113.7/24")).await.unwrap();
    let Adoption::Adopted { reservation } = first else {
        panic!("{first:?}")
    };
    assert_eq!(reservation.gateway, None);
    emu.reset_counts();
    let second = ipam.adopt(&a, net("203.0.113.7/24")).await.unwrap();
    assert_eq!(second, Adoption::Ours { reservation });
    assert_eq!(writes(&emu), 0, "{:?}", emu.request_counts());
}

#[tokio::test]
async fn entries_of_others_are_foreign_and_left_alone() {
    let emu = emulator().await;
    let ip = |d| Ipv4Addr::new(192, 0, 2, d);
    emu.seed_original_entry(1, ip(10), "node-b").unwrap();
    emu.create_address(1, ip(11), "node-a", "overlay-owner:c2/node-a")
        .unwrap();
    emu.create_address(1, ip(12), "node-a", "overlay-owner:c1/node-b")
        .unwrap();
    emu.create_address(
        1,
        ip(13),
        "node-a",
        "overlay-held:c1/node-a until=2100-01-01T00:00:00Z",
    )
    .unwrap();
    emu.create_address(1, ip(14), "vm.example.invalid", "API created")
        .unwrap();
    // The original controller's entry, in a subnet no zone lists.
    emu.seed_original_entry(2, Ipv4Addr::new(198, 51, 100, 3), "node-a")
        .unwrap();
    let before: Vec<_> = [1, 2].iter().flat_map(|s| emu.addresses(*s)).collect();
    let ipam = backend(&emu);
    let a = owner("node-a");
    for (address, says) in [
        ("192.0.2.10/24", "owned by node-b"),
        ("192.0.2.11/24", "cluster c2's marker"),
        ("192.0.2.12/24", "owned by node-b"),
        ("192.0.2.13/24", "held back"),
        ("192.0.2.14/24", "no owner"),
        ("192.0.2.1/24", "gateway"),
        ("198.51.100.3/29", "which no zone of subnetMap lists"),
    ] {
        for answer in [
            ipam.inspect_adoption(&a, net(address)).await.unwrap(),
            ipam.adopt(&a, net(address)).await.unwrap(),
        ] {
            match answer {
                Adoption::Foreign { reason } => {
                    assert!(reason.contains(says), "{address}: {reason}");
                }
                other => panic!("{address}: expected Foreign, got {other:?}"),
            }
        }
    }
    let after: Vec<_> = [1, 2].iter().flat_map(|s| emu.addresses(*s)).collect();
    assert_eq!(after, before, "nothing changed");
    assert_eq!(emu.count("PATCH /addresses/{}/"), 0);
}

#[tokio::test]
async fn nothing_at_the_address_is_missing_and_nothing_is_reserved() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    let a = owner("node-a");
    assert_eq!(
        ipam.inspect_adoption(&a, net("192.0.2.200/24"))
            .await
            .unwrap(),
        Adoption::Missing
    );
    assert_eq!(
        ipam.adopt(&a, net("192.0.2.200/24")).await.unwrap(),
        Adoption::Missing
    );
    assert_eq!(writes(&emu), 0, "{:?}", emu.request_counts());
    assert_eq!(emu.addresses(1).len(), 1, "only the gateway");
}

#[tokio::test]
async fn the_entry_is_found_among_several_hits_with_the_decimal_ip_quirk() {
    let emu = emulator().await;
    // Created first, so it is the first hit (dotted ip); ours comes second
    // with phpIPAM's decimal ip.
    emu.seed_original_entry(5, Ipv4Addr::new(192, 0, 2, 4), "node-b")
        .unwrap();
    let id = emu
        .seed_original_entry(1, Ipv4Addr::new(192, 0, 2, 4), "node-a")
        .unwrap();
    let ipam = backend(&emu);
    let a = owner("node-a");
    let Adoption::Adopted { reservation } = ipam.adopt(&a, net("192.0.2.4/24")).await.unwrap()
    else {
        panic!("not adopted")
    };
    assert_eq!(reservation.handle, id.to_string());
    assert_eq!(reservation.address, net("192.0.2.4/24"));
    // The other section's entry is node-b's and stays as it was.
    let other = &emu.addresses(5)[0];
    assert_eq!(other.description.as_deref(), Some("API created"));
    assert_eq!(other.hostname, None);
    // With no adoptable entry left, the answer names the foreign one.
    let b = owner("node-b");
    match ipam
        .inspect_adoption(&b, net("192.0.2.4/24"))
        .await
        .unwrap()
    {
        Adoption::Foreign { reason } => {
            assert!(reason.contains("owned by node-a"), "{reason}");
            assert!(reason.contains("no zone of subnetMap"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// The whole takeover through the controller: a node's NodeOverlayIp and
/// its phpIPAM entry as the Go controller left them; our controller
/// adopts the address (unchanged) and releases it when the node goes.
#[tokio::test]
async fn the_controller_adopts_the_original_address_and_releases_it_with_the_node() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use overlay_core::controller::{Controller, ControllerConfig, ControllerParts, NodeOutcome};
    use overlay_core::fakes::{MemoryEvents, MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes};
    use overlay_core::{FINALIZER, NodeInfo, OverlayIpRecord};

    let emu = emulator().await;
    let id = emu
        .seed_original_entry(1, Ipv4Addr::new(192, 0, 2, 4), "node-a")
        .unwrap();
    let nodes = MemoryNodes::new();
    let ips = MemoryOverlayIps::new();
    let events = MemoryEvents::new();
    ips.insert(OverlayIpRecord {
        name: "node-a".into(),
        labels: BTreeMap::from([
            ("node".into(), "node-a".into()),
            ("zone".into(), "gw".into()),
        ]),
        finalizers: vec![FINALIZER.into()],
        ip_addr: Some(net("192.0.2.4/24")),
        gateway: Some("192.0.2.1".parse().unwrap()),
        ..Default::default()
    });
    let mut n = NodeInfo::from_labels(
        "node-a",
        BTreeMap::from([("topology.kubernetes.io/zone".into(), "gw".into())]),
        vec![],
    );
    n.uid = Some("uid-a".into());
    nodes.upsert(n);
    let ctl = Controller::new(
        ControllerConfig {
            hold_down: Duration::ZERO,
            ..ControllerConfig::new(CLUSTER)
        },
        ControllerParts {
            nodes: Arc::new(nodes.clone()),
            ipam: Arc::new(backend(&emu)),
            overlay_ips: Arc::new(ips.clone()),
            routes: Arc::new(MemoryStaticRoutes::new()),
        },
    )
    .with_events(Arc::new(events.clone()));

    assert_eq!(
        ctl.reconcile_node("node-a").await.unwrap(),
        NodeOutcome::Ready
    );
    let rec = ips.snapshot().remove(0);
    assert_eq!(rec.ip_addr, Some(net("192.0.2.4/24")));
    assert_eq!(rec.owner_uid.as_deref(), Some("uid-a"));
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 0);
    assert_eq!(
        emu.address(id).unwrap().description.as_deref(),
        Some("overlay-owner:c1/node-a")
    );
    assert!(
        events.all().iter().any(|e| e.reason == "Adopted"
            && e.message
                == "adopted 192.0.2.4/24 from phpipam subnet 1: marked as ours; it is released when the node goes"),
        "{:?}",
        events.all()
    );

    nodes.remove("node-a");
    for _ in 0..3 {
        ctl.reconcile_node("node-a").await.unwrap();
    }
    assert!(ips.snapshot().is_empty());
    assert_eq!(emu.address(id), None, "released with the node");
}
