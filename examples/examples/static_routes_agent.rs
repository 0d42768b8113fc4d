//! The static-routes-only agent: the older deployment mode, with a fixed
//! list of subnets routed via the gateway of the node's private network,
//! and no overlay IP.
//!
//! The route list is a `LegacyRouteSource` (the bundled agent reads it from
//! the `static-routes` ConfigMap or a file; here it is a fixed list). The
//! gateway is *discovered*: the gateway of the kernel route covering
//! `legacy_gateway_from` (10.0.0.0/8 on IKS; 198.51.100.0/24 here).
//!
//! By default the kernel is `MemoryProgrammer`, an in-memory kernel with the
//! same contract as the real one, so the example runs anywhere without
//! root. To program a real kernel, swap in `overlay_netlink::NetlinkProgrammer`
//! (add `overlay-netlink` to the dependencies; needs CAP_NET_ADMIN):
//!
//! ```ignore
//! use overlay_netlink::{NetlinkProgrammer, ProgrammerConfig};
//! // This network namespace, or another by path (entering one needs
//! // CAP_SYS_ADMIN): ProgrammerConfig::default().in_namespace("/run/netns/node1")
//! let programmer: Arc<dyn RouteProgrammer> =
//!     Arc::new(NetlinkProgrammer::new(ProgrammerConfig::default()).await?);
//! ```
//!
//! The real kernel then needs a route covering `legacy_gateway_from` (the
//! discovery reads it), the node's InternalIP must be the machine's, and the
//! routes the agent installs carry route protocol 250
//! (`ip route show proto 250`). Try it in a throwaway network namespace
//! first, not on your workstation.
//!
//! Run it with `cargo run -p overlay-examples --example
//! static_routes_agent`; `cargo test -p overlay-examples` checks it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use overlay_core::agent::{Agent, AgentConfig, AgentParts, AgentReport};
use overlay_core::fakes::{MemoryNodes, MemoryOverlayIps, MemoryProgrammer};
use overlay_core::{
    Cidr, DiscoveredRoute, InterfaceName, LegacyRouteSource, NodeInfo, RouteProgrammer, StoreError,
};

/// A route list that never changes (the ConfigMap's `routes`, hard-coded).
pub struct FixedRoutes(pub Vec<Cidr>);

impl FixedRoutes {
    /// Parses subnets such as `203.0.113.0/25`.
    pub fn parse(subnets: &[&str]) -> Result<Self, overlay_core::ParseError> {
        subnets
            .iter()
            .map(|s| Cidr::parse("routes", s))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[async_trait]
impl LegacyRouteSource for FixedRoutes {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        Ok(self.0.clone())
    }

    fn changes(&self) -> BoxStream<'static, ()> {
        // Never changes; `Agent::run` still resyncs periodically.
        futures::stream::pending().boxed()
    }
}

/// The node's private gateway, which discovery should find.
pub const GATEWAY: &str = "192.0.2.1";

/// An in-memory kernel that looks like a node on a private network:
/// `eth0` holds 192.0.2.10, and `198.51.100.0/24 via 192.0.2.1 dev eth0`
/// is the route discovery reads.
pub fn memory_kernel() -> Result<MemoryProgrammer, Box<dyn std::error::Error>> {
    let kernel = MemoryProgrammer::new();
    let eth0 = InterfaceName::parse("interface", "eth0")?;
    let covering = DiscoveredRoute {
        destination: Cidr::parse("route", "198.51.100.0/24")?,
        gateway: GATEWAY.parse()?,
        device: eth0.clone(),
    };
    kernel.with(|k| {
        k.addresses.insert("192.0.2.10".parse().unwrap(), eth0);
        k.covering.push(covering);
    });
    Ok(kernel)
}

/// Builds the agent for `node-a` over `programmer` and reconciles once.
pub async fn run_once(
    programmer: Arc<dyn RouteProgrammer>,
) -> Result<AgentReport, Box<dyn std::error::Error>> {
    // The node as the agent sees it. Without Kubernetes, a one-node list.
    let nodes = MemoryNodes::new();
    nodes.upsert(NodeInfo::from_labels(
        "node-a",
        BTreeMap::new(),
        vec![IpAddr::from([192, 0, 2, 10])],
    ));

    let mut cfg = AgentConfig::new("node-a")?;
    cfg.legacy_gateway_from = Cidr::parse("legacy_gateway_from", "198.51.100.0/24")?;
    let routes = FixedRoutes::parse(&["203.0.113.0/25", "203.0.113.128/25"])?;

    let agent = Agent::new(
        cfg,
        AgentParts { programmer, nodes: Arc::new(nodes), overlay_ips: // No overlay IPs in this mode: an empty store.
        Arc::new(MemoryOverlayIps::new()), routes: // No StaticRoute objects either.
        None, legacy: Some(Arc::new(routes)) },
    );
    // One reconcile; a long-running agent calls `Arc::new(agent).run(shutdown)`
    // instead, which also reacts to list changes and kernel drift.
    Ok(agent.reconcile().await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kernel = memory_kernel()?;
    let report = run_once(Arc::new(kernel.clone())).await?;
    for outcome in &report.apply.routes {
        println!("{}: {:?}", outcome.route, outcome.result);
    }
    println!(
        "{} kernel write(s); the kernel now has:",
        report.apply.kernel_writes
    );
    kernel.with(|k| {
        for route in k.routes.values() {
            println!("  {route}");
        }
    });
    let failed: Vec<_> = report.apply.failures().collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("routes failed: {failed:?}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_land_in_the_kernel_via_the_discovered_gateway() {
        let kernel = memory_kernel().unwrap();
        let report = run_once(Arc::new(kernel.clone())).await.unwrap();
        assert_eq!(report.apply.failures().count(), 0, "{report:?}");
        assert!(!report.interface_removed);

        let gateway: IpAddr = GATEWAY.parse().unwrap();
        kernel.with(|k| {
            assert!(k.interface.is_none(), "no overlay interface in this mode");
            let got: Vec<(String, Option<IpAddr>, Option<String>)> = k
                .routes
                .values()
                .map(|r| {
                    (
                        r.destination.to_string(),
                        r.gateway,
                        r.device.as_ref().map(|d| d.to_string()),
                    )
                })
                .collect();
            assert_eq!(
                got,
                [
                    (
                        "203.0.113.0/25".to_owned(),
                        Some(gateway),
                        Some("eth0".to_owned())
                    ),
                    (
                        "203.0.113.128/25".to_owned(),
                        Some(gateway),
                        Some("eth0".to_owned())
                    ),
                ]
            );
        });

        // Reconciling again writes nothing.
        let again = run_once(Arc::new(kernel.clone())).await.unwrap();
        assert!(again.apply.is_noop(), "{again:?}");
    }
}
