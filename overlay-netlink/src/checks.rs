//! Validity checks of desired routes: pure functions of the route and of
//! what the kernel was found to hold, run before anything is planned or
//! written (the way netavark validates a network before setting it up).
//! Each answers the message of a failed route when the route cannot be
//! installed as asked.
//!
//! A full apply and an update run them in this order:
//!
//! 1. [`unique_key`]: no earlier route in the same list has its key;
//! 2. [`gateway_family`]: the gateway is of the destination's family;
//! 3. [`device_exists`]: the named device exists;
//! 4. [`gateway_on_link`]: the gateway is on a connected network (only for
//!    a route that is not in place already);
//! 5. [`not_foreign`]: no route overlay did not install holds the key
//!    (full apply; an update learns it from the kernel's `EEXIST`).

use std::net::IpAddr;

use overlay_core::model::MAIN_TABLE;
use overlay_core::{InterfaceName, ProgrammerError, RouteKey, RouteScope, RouteSpec};

use crate::read::KernelRoute;
use crate::state::Direct;

/// Check 1: `spec` does not share its key with `first`, the earlier route
/// of the same list with that key (if any); the kernel keeps one route per
/// key.
pub(crate) fn unique_key(spec: &RouteSpec, first: Option<&RouteSpec>) -> Result<(), String> {
    match first {
        Some(first) => Err(format!(
            "route {spec} has the same destination, table and metric as {first}; the kernel keeps one route per key: drop one or give it another metric"
        )),
        None => Ok(()),
    }
}

/// Check 2: a gateway of the other address family is refused.
pub(crate) fn gateway_family(spec: &RouteSpec) -> Result<(), String> {
    match spec.gateway {
        Some(gw) if gw.is_ipv4() != spec.destination.is_ipv4() => Err(format!(
            "gateway {gw} is not of the address family of {}; use an IPv{} gateway",
            spec.destination,
            if spec.destination.is_ipv4() { 4 } else { 6 }
        )),
        _ => Ok(()),
    }
}

/// Check 3: the device `spec` names exists; its index (`index_of` finds a
/// link's index by name), or `None` when `spec` names no device.
pub(crate) fn device_exists(
    spec: &RouteSpec,
    index_of: impl FnOnce(&InterfaceName) -> Option<u32>,
) -> Result<Option<u32>, String> {
    let Some(device) = &spec.device else {
        return Ok(None);
    };
    match index_of(device) {
        Some(index) => Ok(Some(index)),
        None => Err(format!(
            "device {device} of route {spec} does not exist; create it, or leave the device unset so the kernel picks the on-link interface"
        )),
    }
}

/// Checks 1 to 3 in order: the index of the device `spec` names, if any.
pub(crate) fn validate(
    spec: &RouteSpec,
    first: Option<&RouteSpec>,
    index_of: impl FnOnce(&InterfaceName) -> Option<u32>,
) -> Result<Option<u32>, String> {
    unique_key(spec, first)?;
    gateway_family(spec)?;
    device_exists(spec, index_of)
}

/// Check 5: no route that overlay did not install (`foreign`, its
/// protocol) holds `key`; overlay never overwrites one.
pub(crate) fn not_foreign(key: &RouteKey, foreign: Option<u8>) -> Result<(), String> {
    match foreign {
        Some(p) => Err(format!(
            "{} (table {}, metric {}) is already routed by a route overlay did not install (protocol {p}); overlay never touches it: delete that route or give this one another metric",
            key.destination, key.table, key.metric
        )),
        None => Ok(()),
    }
}

/// Why a route of ours that is no longer desired stays in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    /// A default route: overlay never removes one.
    DefaultRoute,
    /// It goes out of a device overlay cannot name, so its device cannot
    /// be judged in scope.
    UnnamedDevice,
    /// Its table or device is outside the tables and devices overlay works
    /// in.
    OutOfScope,
}

/// Whether our route `r`, no longer desired, may be deleted: never a
/// default route, and only when its table and its device (named by
/// `name_of`) are in `scope`. The device's name when it may.
pub(crate) fn removable<'a>(
    r: &KernelRoute,
    name_of: impl FnOnce(u32) -> Option<&'a str>,
    scope: &RouteScope,
) -> Result<Option<&'a str>, Kept> {
    if r.key.destination.prefix() == 0 {
        return Err(Kept::DefaultRoute);
    }
    let device = match r.oif {
        None => None,
        Some(i) => Some(name_of(i).ok_or(Kept::UnnamedDevice)?),
    };
    if !scope.allows(r.key.table, device) {
        return Err(Kept::OutOfScope);
    }
    Ok(device)
}

/// Check 4, the gateway is on-link: the device `spec` goes out of: its own (`dev_oif`), else the one its
/// gateway is on-link on (the device of `existing`, our route in place,
/// when the gateway is on-link there; else the most specific connected
/// network holding the gateway). The message of
/// [`ProgrammerError::GatewayUnreachable`] when the gateway is on no
/// connected network.
pub(crate) fn gateway_on_link(
    spec: &RouteSpec,
    key: &RouteKey,
    dev_oif: Option<u32>,
    direct: &[Direct],
    existing: Option<&KernelRoute>,
) -> Result<Option<u32>, String> {
    let Some(gw) = spec.gateway else {
        return Ok(dev_oif);
    };
    let unreachable = || {
        ProgrammerError::GatewayUnreachable {
            destination: spec.destination.to_string(),
            gateway: gw.to_string(),
        }
        .to_string()
    };
    if dev_oif.is_some() {
        return if on_link(gw, dev_oif, key.table, direct) {
            Ok(dev_oif)
        } else {
            Err(unreachable())
        };
    }
    if let Some(o) = existing.and_then(|k| k.oif)
        && on_link(gw, Some(o), key.table, direct)
    {
        return Ok(Some(o));
    }
    gateway_oif(gw, key.table, direct)
        .map(Some)
        .ok_or_else(unreachable)
}

/// The device of the most specific direct route holding `gw`, in `table`
/// or the main table (the route's own table first on a tie, then the lowest
/// device index), as the kernel resolves a gateway without a device. IPv6 link-local gateways need a
/// device: `None`.
fn gateway_oif(gw: IpAddr, table: u32, direct: &[Direct]) -> Option<u32> {
    if let IpAddr::V6(v6) = gw
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return None;
    }
    direct
        .iter()
        .filter(|(net, o, t)| {
            o.is_some()
                && (*t == MAIN_TABLE || *t == table)
                && net.is_ipv4() == gw.is_ipv4()
                && net.contains(gw)
        })
        .max_by_key(|(net, o, t)| (net.prefix(), *t == table, std::cmp::Reverse(*o)))
        .and_then(|(_, o, _)| *o)
}

/// True when `gw` is reachable on a connected network (a direct route in the
/// main table or the route's own table, on `oif` when given). IPv6
/// link-local gateways are on-link on the given device.
fn on_link(gw: IpAddr, oif: Option<u32>, table: u32, direct: &[Direct]) -> bool {
    if let IpAddr::V6(v6) = gw
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return oif.is_some();
    }
    direct.iter().any(|(net, o, t)| {
        (*t == MAIN_TABLE || *t == table)
            && net.is_ipv4() == gw.is_ipv4()
            && net.contains(gw)
            && (oif.is_none() || *o == oif)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_needs_a_direct_route_covering_the_gateway() {
        let direct = vec![
            ("192.0.2.0/24".parse().unwrap(), Some(2), MAIN_TABLE),
            ("198.51.100.0/24".parse().unwrap(), Some(3), 100),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(on_link(ip("192.0.2.1"), None, MAIN_TABLE, &direct));
        assert!(on_link(ip("192.0.2.1"), Some(2), MAIN_TABLE, &direct));
        assert!(!on_link(ip("192.0.2.1"), Some(3), MAIN_TABLE, &direct));
        assert!(!on_link(ip("203.0.113.1"), None, MAIN_TABLE, &direct));
        // A connected route in the route's own table counts.
        assert!(on_link(ip("198.51.100.1"), None, 100, &direct));
        assert!(!on_link(ip("198.51.100.1"), None, MAIN_TABLE, &direct));
        // IPv6 link-local: on-link when the device is given.
        assert!(on_link(ip("fe80::1"), Some(2), MAIN_TABLE, &direct));
        assert!(!on_link(ip("fe80::1"), None, MAIN_TABLE, &direct));
    }

    #[test]
    fn a_gateway_resolves_to_the_most_specific_connected_network() {
        let direct: Vec<Direct> = vec![
            ("192.0.2.0/24".parse().unwrap(), Some(2), MAIN_TABLE),
            ("192.0.2.128/25".parse().unwrap(), Some(3), MAIN_TABLE),
            ("198.51.100.0/24".parse().unwrap(), Some(4), 100),
            ("2001:db8::/64".parse().unwrap(), Some(2), MAIN_TABLE),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(gateway_oif(ip("192.0.2.1"), MAIN_TABLE, &direct), Some(2));
        assert_eq!(gateway_oif(ip("192.0.2.129"), MAIN_TABLE, &direct), Some(3));
        assert_eq!(gateway_oif(ip("198.51.100.1"), MAIN_TABLE, &direct), None);
        assert_eq!(gateway_oif(ip("198.51.100.1"), 100, &direct), Some(4));
        assert_eq!(gateway_oif(ip("2001:db8::1"), MAIN_TABLE, &direct), Some(2));
        assert_eq!(gateway_oif(ip("fe80::1"), MAIN_TABLE, &direct), None);

        let spec = RouteSpec {
            destination: "203.0.113.0/24".parse().unwrap(),
            gateway: Some(ip("192.0.2.1")),
            device: None,
            table: None,
            metric: None,
        };
        let key = spec.key();
        // Our route in place on another device where the gateway is
        // on-link too keeps its device (no churn).
        let k = KernelRoute {
            key,
            gateway: spec.gateway,
            oif: Some(3),
            protocol: 250,
            kind: netlink_packet_route::route::RouteType::Unicast,
            multipath: false,
        };
        let direct2: Vec<Direct> = vec![
            ("192.0.2.0/24".parse().unwrap(), Some(2), MAIN_TABLE),
            ("192.0.2.0/24".parse().unwrap(), Some(3), MAIN_TABLE),
        ];
        assert_eq!(
            gateway_on_link(&spec, &key, None, &direct2, Some(&k)),
            Ok(Some(3))
        );
        assert_eq!(
            gateway_on_link(&spec, &key, None, &direct2, None),
            Ok(Some(2))
        );
        assert!(
            gateway_on_link(&spec, &key, Some(9), &direct2, None)
                .unwrap_err()
                .contains("not on-link")
        );
    }

    fn route(dest: &str, gw: Option<&str>, device: Option<&str>) -> RouteSpec {
        RouteSpec {
            destination: dest.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            device: device.map(|d| InterfaceName::parse("device", d).unwrap()),
            table: None,
            metric: None,
        }
    }

    #[test]
    fn a_second_route_on_a_key_is_refused() {
        let first = route("203.0.113.0/24", Some("192.0.2.1"), None);
        let second = route("203.0.113.0/24", Some("192.0.2.9"), None);
        assert_eq!(unique_key(&first, None), Ok(()));
        let m = unique_key(&second, Some(&first)).unwrap_err();
        assert!(m.contains("another metric"), "{m}");
    }

    #[test]
    fn gateways_of_the_other_family_are_refused() {
        assert_eq!(
            gateway_family(&route("203.0.113.0/24", Some("192.0.2.1"), None)),
            Ok(())
        );
        assert_eq!(gateway_family(&route("203.0.113.0/24", None, None)), Ok(()));
        let m = gateway_family(&route("203.0.113.0/24", Some("2001:db8::1"), None)).unwrap_err();
        assert!(m.contains("IPv4 gateway"), "{m}");
        let m = gateway_family(&route("2001:db8:1::/48", Some("192.0.2.1"), None)).unwrap_err();
        assert!(m.contains("IPv6 gateway"), "{m}");
    }

    #[test]
    fn a_named_device_must_exist() {
        let with_dev = route("203.0.113.0/24", None, Some("eth1"));
        assert_eq!(device_exists(&with_dev, |_| Some(4)), Ok(Some(4)));
        let m = device_exists(&with_dev, |_| None).unwrap_err();
        assert!(m.contains("does not exist"), "{m}");
        // No device named: nothing to look up.
        let without = route("203.0.113.0/24", None, None);
        assert_eq!(device_exists(&without, |_| panic!("looked up")), Ok(None));
    }

    #[test]
    fn validate_runs_the_checks_in_order() {
        let first = route("203.0.113.0/24", Some("192.0.2.1"), None);
        // A clash is reported before the family and the device.
        let bad = route("203.0.113.0/24", Some("2001:db8::1"), Some("eth9"));
        assert!(
            validate(&bad, Some(&first), |_| None)
                .unwrap_err()
                .contains("same destination")
        );
        assert!(
            validate(&bad, None, |_| None)
                .unwrap_err()
                .contains("family")
        );
        let dev = route("203.0.113.0/24", Some("192.0.2.1"), Some("eth9"));
        assert!(validate(&dev, None, |_| None).unwrap_err().contains("eth9"));
        assert_eq!(validate(&dev, None, |_| Some(2)), Ok(Some(2)));
    }

    #[test]
    fn foreign_routes_on_the_key_are_refused() {
        let key = route("203.0.113.0/24", None, None).key();
        assert_eq!(not_foreign(&key, None), Ok(()));
        let m = not_foreign(&key, Some(4)).unwrap_err();
        assert!(
            m.contains("protocol 4") && m.contains("table 254, metric 0"),
            "{m}"
        );
    }

    #[test]
    fn stale_routes_go_only_in_scope_and_never_a_default() {
        let ours = |dest: &str, oif: Option<u32>| KernelRoute {
            key: route(dest, None, None).key(),
            gateway: None,
            oif,
            protocol: 250,
            kind: netlink_packet_route::route::RouteType::Unicast,
            multipath: false,
        };
        let mut scope = RouteScope::default();
        scope.add_route(&route("203.0.113.0/24", None, Some("eth1")));
        let eth1 = |i: u32| (i == 2).then_some("eth1");
        assert_eq!(
            removable(&ours("198.51.100.0/24", Some(2)), eth1, &scope),
            Ok(Some("eth1"))
        );
        assert_eq!(
            removable(&ours("0.0.0.0/0", Some(2)), eth1, &scope),
            Err(Kept::DefaultRoute)
        );
        assert_eq!(
            removable(&ours("198.51.100.0/24", Some(7)), eth1, &scope),
            Err(Kept::UnnamedDevice)
        );
        let other = |_| Some("eth9");
        assert_eq!(
            removable(&ours("198.51.100.0/24", Some(7)), other, &scope),
            Err(Kept::OutOfScope)
        );
    }
}
