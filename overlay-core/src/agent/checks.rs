//! Checks of the agent's inputs and settings, before anything reaches the
//! kernel.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::{NodeInfo, OverlayInterface};
use crate::parse::Cidr;

/// The shortest IPv4 overlay prefix the agent configures: a shorter one
/// (e.g. the `/1` an attacker wrote in the field) would capture a large
/// part of the Internet.
pub const MIN_IPV4_PREFIX: u8 = 8;

/// The shortest IPv6 overlay prefix the agent configures.
pub const MIN_IPV6_PREFIX: u8 = 32;

/// Why the agent refuses to configure `address` (with `gateway`) on this
/// node, if it does. `internal_nets` are the node's InternalIPs with the
/// prefix of the kernel address that holds them, where known.
pub fn refuse_address(
    address: IpNetwork,
    gateway: Option<IpAddr>,
    node: &NodeInfo,
    internal_nets: &[IpNetwork],
) -> Option<String> {
    let (min, family) = if address.is_ipv4() {
        (MIN_IPV4_PREFIX, "IPv4")
    } else {
        (MIN_IPV6_PREFIX, "IPv6")
    };
    if address.prefix() < min {
        return Some(format!(
            "status.ipAddr {address} has a prefix shorter than /{min}: its subnet {} would capture far more than an overlay network; the agent configures {family} prefixes /{min} and longer",
            Cidr::from_network(address)
        ));
    }
    let own = Cidr::from_network(address);
    for ip in &node.internal_ips {
        if address.contains(*ip) {
            return Some(format!(
                "status.ipAddr {address} contains the node's InternalIP {ip}: the overlay subnet must not overlap the node's network"
            ));
        }
    }
    for net in internal_nets {
        let theirs = Cidr::from_network(*net);
        if own.overlaps(&theirs) {
            return Some(format!(
                "status.ipAddr {address} overlaps the node's InternalIP subnet {theirs} ({}): the overlay subnet must not overlap the node's network",
                net.ip()
            ));
        }
    }
    if let Some(gw) = gateway
        && !address.contains(gw)
    {
        return Some(format!(
            "status.gateway {gw} is outside the overlay subnet {own} of status.ipAddr {address}; the gateway must be on the overlay subnet"
        ));
    }
    None
}

/// Why `subnet` must not be routed on this node, if it must not: it would
/// replace the default route, cut the node off from its InternalIP,
/// shadow the overlay subnet, or overlap a protected subnet.
pub fn refuse_route(
    subnet: &Cidr,
    node: &NodeInfo,
    overlay: Option<&OverlayInterface>,
    protected: &[Cidr],
) -> Option<String> {
    if subnet.prefix() == 0 {
        return Some(format!("{subnet} would replace the node's default route"));
    }
    for ip in &node.internal_ips {
        if subnet.network().contains(*ip) {
            return Some(format!(
                "{subnet} contains the node's InternalIP {ip} and would cut the node off"
            ));
        }
    }
    if let Some(o) = overlay {
        let own = Cidr::from_network(o.address);
        if subnet.overlaps(&own) {
            return Some(format!("{subnet} overlaps the node's overlay subnet {own}"));
        }
    }
    protected
        .iter()
        .find(|p| p.overlaps(subnet))
        .map(|p| format!("{subnet} overlaps protected subnet {p} (PROTECTED_SUBNETS)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeInfo {
        NodeInfo::from_labels(
            "n1",
            Default::default(),
            vec!["203.0.113.10".parse().unwrap()],
        )
    }

    fn refuse(addr: &str, gw: Option<&str>, nets: &[&str]) -> Option<String> {
        let nets: Vec<IpNetwork> = nets.iter().map(|n| n.parse().unwrap()).collect();
        refuse_address(
            addr.parse().unwrap(),
            gw.map(|g| g.parse().unwrap()),
            &node(),
            &nets,
        )
    }

    #[test]
    fn short_prefixes_are_refused() {
        assert!(refuse("198.51.100.7/1", None, &[]).unwrap().contains("/8"));
        assert!(refuse("198.51.100.7/7", None, &[]).is_some());
        assert!(refuse("198.51.100.7/8", None, &[]).is_none());
        assert!(refuse("2001:db8::7/31", None, &[]).unwrap().contains("/32"));
        assert!(refuse("2001:db8::7/64", None, &[]).is_none());
    }

    #[test]
    fn overlap_with_the_node_network_is_refused() {
        assert!(
            refuse("203.0.113.20/24", None, &[])
                .unwrap()
                .contains("InternalIP 203.0.113.10")
        );
        // Does not contain the InternalIP, but overlaps its kernel subnet.
        assert!(
            refuse("203.0.113.200/29", None, &["203.0.113.10/24"])
                .unwrap()
                .contains("203.0.113.0/24")
        );
        assert!(refuse("192.0.2.20/24", None, &["203.0.113.10/24"]).is_none());
    }

    #[test]
    fn a_gateway_outside_the_prefix_is_refused() {
        assert!(
            refuse("192.0.2.20/24", Some("198.51.100.1"), &[])
                .unwrap()
                .contains("outside")
        );
        assert!(refuse("192.0.2.20/24", Some("192.0.2.1"), &[]).is_none());
    }
}
