//! The controller reconciler without Kubernetes: nodes come from a plain
//! list, NodeOverlayIps and StaticRoutes live in memory, addresses come from
//! embedded pools.
//!
//! This is how to embed overlay's address management in something that is
//! not a cluster (an inventory script, a VM manager): implement
//! `overlay_core::NodeSource` over your node list (here the in-memory
//! `MemoryNodes`), pick an `IpamBackend` (here `MemoryBackend`; phpIPAM
//! works the same way), and run `Controller::run`. Every node gets one
//! address from the pools of its zone; removing a node releases it.
//!
//! Run it with `cargo run -p overlay-examples --example
//! static_list_controller`; `cargo test -p overlay-examples` runs the same
//! scenario as a test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::fakes::{MemoryEvents, MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes};
use overlay_core::{IpamBackend, NodeInfo, OverlayIpStore, Owner};
use overlay_ipam::memory::MemoryBackend;
use overlay_ipam::pools::{PoolConfig, PoolsConfig};

/// The cluster id in every owner marker.
const CLUSTER: &str = "example";

/// A node as an inventory would describe it: name, zone, private address
/// (198.51.100.0/24 stands for the private network).
fn node(name: &str, zone: &str, ip: [u8; 4]) -> NodeInfo {
    let labels = BTreeMap::from([
        ("topology.kubernetes.io/zone".to_owned(), zone.to_owned()),
        ("topology.kubernetes.io/region".to_owned(), "lab".to_owned()),
    ]);
    NodeInfo::from_labels(name, labels, vec![IpAddr::from(ip)])
}

/// Everything the example wires together; the test drives the same.
pub struct Setup {
    /// The node list the controller watches.
    pub nodes: MemoryNodes,
    /// The NodeOverlayIp records it writes.
    pub overlay_ips: MemoryOverlayIps,
    /// The IPAM it reserves from.
    pub ipam: Arc<MemoryBackend>,
    /// The events it records.
    pub events: MemoryEvents,
    /// Stops the controller.
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Setup {
    /// Starts a controller over three nodes in two zones.
    pub fn start() -> Result<Self, Box<dyn std::error::Error>> {
        // Zone dal10 has two small pools (the second is used when the first
        // is full); dal12 one.
        let pools = PoolsConfig::new()
            .with_pool(
                "dal10",
                PoolConfig::parse("192.0.2.0/29")?.with_gateway("192.0.2.1".parse()?),
            )
            .with_pool("dal10", PoolConfig::parse("192.0.2.8/29")?)
            .with_pool("dal12", PoolConfig::parse("203.0.113.0/24")?);
        let ipam = Arc::new(MemoryBackend::new(&pools)?);

        let nodes = MemoryNodes::new();
        nodes.upsert(node("node-a", "dal10", [198, 51, 100, 11]));
        nodes.upsert(node("node-b", "dal10", [198, 51, 100, 12]));
        nodes.upsert(node("node-c", "dal12", [198, 51, 100, 21]));

        let overlay_ips = MemoryOverlayIps::new();
        let events = MemoryEvents::new();
        let controller = Arc::new(
            Controller::new(
                ControllerConfig {
                    // This example hands a released address out again at once;
                    // keep the default 5 min hold-down where a node that went
                    // away may still have the address configured.
                    hold_down: Duration::ZERO,
                    ..ControllerConfig::new(CLUSTER)
                },
                ControllerParts {
                    nodes: Arc::new(nodes.clone()),
                    ipam: ipam.clone(),
                    overlay_ips: Arc::new(overlay_ips.clone()),
                    routes: Arc::new(MemoryStaticRoutes::new()),
                },
            )
            .with_events(Arc::new(events.clone())),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(controller.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            nodes,
            overlay_ips,
            ipam,
            events,
            stop,
            task,
        })
    }

    /// Node name → address, once every node in the list has one (or after
    /// `timeout`, with what there is).
    pub async fn addresses(&self, timeout: Duration) -> BTreeMap<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            use overlay_core::NodeSource;
            let want = self.nodes.list().await.unwrap().len();
            let have: BTreeMap<String, String> = self
                .overlay_ips
                .list()
                .await
                .unwrap()
                .into_iter()
                .filter(|r| !r.deleting)
                .filter_map(|r| Some((r.name, r.ip_addr?.to_string())))
                .collect();
            if have.len() == want || tokio::time::Instant::now() >= deadline {
                return have;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the IPAM holds nothing for `node` (or `timeout`).
    pub async fn released(&self, node: &str, timeout: Duration) -> bool {
        let owner = Owner::new(CLUSTER, node);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let held = self.ipam.lookup(&owner, None).await.unwrap();
            let record = self.overlay_ips.get(node).await.unwrap();
            if held.is_none() && record.is_none() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the controller.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let setup = Setup::start()?;
    println!("nodes and their overlay addresses:");
    for (node, address) in setup.addresses(Duration::from_secs(5)).await {
        let zone = setup
            .overlay_ips
            .get(&node)
            .await?
            .and_then(|r| r.labels.get("zone").cloned())
            .unwrap_or_default();
        println!("  {node:<8} {zone:<6} {address}");
    }

    println!("node-b leaves the list");
    setup.nodes.remove("node-b");
    if !setup.released("node-b", Duration::from_secs(5)).await {
        return Err("node-b's address was not released".into());
    }
    let held = setup.ipam.list().await?;
    println!(
        "released; the IPAM now holds {} address(es): {}",
        held.len(),
        held.iter()
            .map(|r| r.address.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("events:");
    for e in setup.events.all() {
        println!("  {} {} {}: {}", e.kind, e.name, e.reason, e.message);
    }
    setup.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_node_gets_a_distinct_address_and_gives_it_back() {
        let setup = Setup::start().unwrap();
        let addrs = setup.addresses(Duration::from_secs(10)).await;
        assert_eq!(addrs.len(), 3, "{addrs:?}");
        let distinct: std::collections::BTreeSet<_> = addrs.values().collect();
        assert_eq!(distinct.len(), 3, "addresses must be distinct: {addrs:?}");
        // Each from its zone's pools.
        assert!(addrs["node-a"].starts_with("192.0.2."), "{addrs:?}");
        assert!(addrs["node-c"].starts_with("203.0.113."), "{addrs:?}");
        assert_eq!(setup.ipam.list().await.unwrap().len(), 3);

        let b = addrs["node-b"].clone();
        setup.nodes.remove("node-b");
        assert!(setup.released("node-b", Duration::from_secs(10)).await);
        let held: Vec<String> = setup
            .ipam
            .list()
            .await
            .unwrap()
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(!held.contains(&b), "{b} still held: {held:?}");

        // The freed address is handed out again.
        setup
            .nodes
            .upsert(node("node-d", "dal10", [198, 51, 100, 14]));
        let addrs = setup.addresses(Duration::from_secs(10)).await;
        assert_eq!(addrs.get("node-d"), Some(&b), "{addrs:?}");
        setup.stop().await;
    }
}
