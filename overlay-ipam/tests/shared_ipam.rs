#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Two clusters with different (derived) cluster ids share one phpIPAM
//! (the emulator), with addresses people made by hand beside them. Each
//! cluster's controller, run with the full orphan collection, never
//! releases the other's reservations or the hand-made ones — the failure a
//! real user saw when both clusters used the shipped config's id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::fakes::{MemoryEvents, MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes};
use overlay_core::{IpamBackend, NodeInfo};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, PASSWORD, user_credentials as user};
use overlay_ipam::phpipam::{PhpIpamBackend, PhpIpamConfig};

/// Two kube-system Namespace UIDs.
const CLUSTER_A: &str = "0b7e5c52-5d0e-4a8e-9a57-1d6f3c2a0001";
const CLUSTER_B: &str = "9c1f0a33-77aa-4e0c-8f42-6b1e2d3c0002";

struct Cluster {
    nodes: MemoryNodes,
    ctl: Arc<Controller>,
}

fn cluster(emu: &Emulator, id: &str) -> Cluster {
    let cfg = PhpIpamConfig::new(emu.url(), "overlay").with_zone("dal10", [3]);
    let creds = user(PASSWORD);
    let ipam: Arc<dyn IpamBackend> = Arc::new(PhpIpamBackend::new(&cfg, id, creds).unwrap());
    let nodes = MemoryNodes::new();
    let ctl = Arc::new(
        Controller::new(
            ControllerConfig {
                // Two passes right away: the test is about whose entries are
                // touched, not about the waiting.
                orphan_grace: Duration::ZERO,
                ..ControllerConfig::new(id)
            },
            ControllerParts {
                nodes: Arc::new(nodes.clone()),
                ipam,
                overlay_ips: Arc::new(MemoryOverlayIps::new()),
                routes: Arc::new(MemoryStaticRoutes::new()),
            },
        )
        .with_events(Arc::new(MemoryEvents::new())),
    );
    Cluster { nodes, ctl }
}

fn node(name: &str) -> NodeInfo {
    let labels = [("topology.kubernetes.io/zone".to_owned(), "dal10".to_owned())]
        .into_iter()
        .collect();
    NodeInfo::from_labels(name, labels, vec![])
}

/// Every entry of subnet 3 as (ip, description).
fn entries(emu: &Emulator) -> BTreeSet<(String, String)> {
    emu.addresses(3)
        .into_iter()
        .map(|a| (a.ip.to_string(), a.description.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn two_clusters_never_release_each_others_or_hand_made_addresses() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    for (ip, d) in [
        ("203.0.113.200", "printer, made by hand"),
        ("203.0.113.201", "overlay-owner:default/worker-1"),
        ("203.0.113.202", "overlay-owner:garbled"),
    ] {
        emu.create_address(3, ip.parse().unwrap(), "hand", d)
            .unwrap();
    }
    let a = cluster(&emu, CLUSTER_A);
    let b = cluster(&emu, CLUSTER_B);
    // Same node names in both clusters, as with IKS worker IPs reused.
    for name in ["worker-1", "worker-2"] {
        a.nodes.upsert(node(name));
        b.nodes.upsert(node(name));
    }
    b.nodes.upsert(node("worker-3"));
    for name in ["worker-1", "worker-2"] {
        a.ctl.reconcile_node(name).await.unwrap();
    }
    let a_worker2 = a.ctl.reconcile_node("worker-2").await.unwrap();
    assert_eq!(a_worker2, overlay_core::controller::NodeOutcome::Ready);
    for name in ["worker-1", "worker-2", "worker-3"] {
        b.ctl.reconcile_node(name).await.unwrap();
    }
    let before = entries(&emu);
    assert_eq!(before.len(), 3 + 5, "{before:?}");

    // Each controller runs its orphan collection twice: it sees the other
    // cluster's worker-3 and every hand-made entry, and must not touch them.
    for _ in 0..2 {
        let ra = a.ctl.collect_orphans().await.unwrap();
        let rb = b.ctl.collect_orphans().await.unwrap();
        assert!(ra.released.is_empty() && ra.suspected.is_empty(), "{ra:?}");
        assert!(rb.released.is_empty() && rb.suspected.is_empty(), "{rb:?}");
    }
    assert_eq!(entries(&emu), before);

    // A node of cluster A goes: only A's entry for it is released (held).
    a.nodes.remove("worker-2");
    let _ = a.ctl.reconcile_node("worker-2").await;
    for _ in 0..3 {
        let _ = a.ctl.reconcile_node("worker-2").await;
        let _ = a.ctl.collect_orphans().await.unwrap();
        let _ = b.ctl.collect_orphans().await.unwrap();
    }
    let after = entries(&emu);
    let changed: Vec<_> = before.symmetric_difference(&after).collect();
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(
        changed
            .iter()
            .all(|(_, d)| d.contains(&format!("{CLUSTER_A}/worker-2"))),
        "{changed:?}"
    );
    let held_ip = after
        .iter()
        .find(|(_, d)| d.starts_with(&format!("overlay-held:{CLUSTER_A}/worker-2 until=")))
        .map(|(ip, _)| ip.clone())
        .unwrap_or_else(|| panic!("no held entry: {after:?}"));

    // worker-2 comes back within the hold-down: it gets its old address.
    a.nodes.upsert(node("worker-2"));
    a.ctl.reconcile_node("worker-2").await.unwrap();
    let back = entries(&emu);
    assert!(
        back.contains(&(
            held_ip.clone(),
            format!("overlay-owner:{CLUSTER_A}/worker-2")
        )),
        "worker-2 did not get {held_ip} back: {back:?}"
    );
    assert_eq!(
        back.len(),
        before.len(),
        "a new address was allocated: {back:?}"
    );
}
