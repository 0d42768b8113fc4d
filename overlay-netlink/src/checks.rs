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
//! 5. [`foreign_on_key`]: no route overlay did not install holds the key,
//!    unless it is one added with `ip route` that is exactly the desired
//!    route, which is taken over ([`takeover`]). A full apply refuses the
//!    route on any other; an update learns it from the kernel's `EEXIST`.

use std::net::IpAddr;

use netlink_packet_route::route::RouteType;

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

/// The route protocol `ip route add` gives a route (`RTPROT_BOOT`, shown
/// as `proto boot`): how the original deployments installed their routes,
/// and the only foreign protocol overlay ever takes a route over from.
pub(crate) const RTPROT_BOOT: u8 = 3;

/// Check 5: the key of a desired route that overlay holds no route on is
/// free of routes overlay did not install (`foreign`: every such route on
/// the key), or held by exactly one that overlay takes over. `gateway` and
/// `oif` are those of the route overlay would install.
///
/// `Ok(None)` when the key is free, `Ok(Some(route))` when `route` is to
/// be taken over ([`takeover`] says when), else the failure's message:
/// overlay never overwrites any other route.
pub(crate) fn foreign_on_key<'a>(
    key: &RouteKey,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    foreign: &'a [KernelRoute],
) -> Result<Option<&'a KernelRoute>, String> {
    let Some(first) = foreign.first() else {
        return Ok(None);
    };
    let why_not = match foreign {
        [only] => match takeover(only, gateway, oif) {
            Ok(()) => return Ok(Some(only)),
            Err(why) => why,
        },
        _ => NoTakeover::Crowded,
    };
    let mut m = format!(
        "{} (table {}, metric {}) is already routed by a route overlay did not install (protocol {}); overlay never touches it: delete that route or give this one another metric",
        key.destination, key.table, key.metric, first.protocol
    );
    if foreign.iter().any(|r| r.protocol == RTPROT_BOOT) && why_not != NoTakeover::Protocol {
        m.push_str(&format!(
            " (a route added with `ip route` is taken over only when it is exactly this route; {why_not})"
        ));
    }
    Err(m)
}

/// Why a foreign route on a desired route's key is not taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoTakeover {
    /// It was not added with `ip route` (protocol boot): it belongs to a
    /// routing daemon, the kernel, or other software.
    Protocol,
    /// More than one route holds the key.
    Crowded,
    /// Its gateway differs.
    Gateway,
    /// It goes out of another device.
    Device,
    /// It is not a plain unicast route (multipath, another type, or extra
    /// attributes such as a preferred source or an MTU).
    NotPlain,
}

impl std::fmt::Display for NoTakeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoTakeover::Protocol => "it was not added with `ip route` (protocol boot)",
            NoTakeover::Crowded => "here more than one route holds the key",
            NoTakeover::Gateway => "here the gateway differs",
            NoTakeover::Device => "here the device differs",
            NoTakeover::NotPlain => {
                "here it is not a plain unicast route (multipath, another type, or attributes such as src, mtu or onlink)"
            }
        })
    }
}

/// Whether overlay takes over `found`, the only route on the key of a
/// desired route it has none on, with one atomic replace into its own
/// protocol: only when `found` was added with `ip route` (protocol boot,
/// as the original deployments did) and is exactly the route overlay would
/// install: plain unicast, same gateway (`gateway`) and same device
/// (`oif`, which must be known). The replace then changes nothing about
/// how packets go, only who owns the route; anything else is refused.
pub(crate) fn takeover(
    found: &KernelRoute,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> Result<(), NoTakeover> {
    if found.protocol != RTPROT_BOOT {
        return Err(NoTakeover::Protocol);
    }
    if found.multipath || found.kind != RouteType::Unicast || !found.plain {
        return Err(NoTakeover::NotPlain);
    }
    if found.gateway != gateway {
        return Err(NoTakeover::Gateway);
    }
    if oif.is_none() || found.oif != oif {
        return Err(NoTakeover::Device);
    }
    Ok(())
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
            plain: true,
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

    /// A route on `dest`'s key in the main table, as dumped.
    fn found(dest: &str, gw: Option<&str>, oif: u32, protocol: u8) -> KernelRoute {
        KernelRoute {
            key: route(dest, None, None).key(),
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            protocol,
            kind: RouteType::Unicast,
            multipath: false,
            plain: true,
        }
    }

    #[test]
    fn foreign_routes_on_the_key_are_refused() {
        let key = route("203.0.113.0/24", None, None).key();
        let gw = Some("192.0.2.1".parse().unwrap());
        assert_eq!(foreign_on_key(&key, gw, Some(2), &[]), Ok(None));
        // A routing daemon's route (protocol 4, static), even exactly the
        // desired one, stays: the message as before.
        let daemon = [found("203.0.113.0/24", Some("192.0.2.1"), 2, 4)];
        let m = foreign_on_key(&key, gw, Some(2), &daemon).unwrap_err();
        assert!(
            m.contains("protocol 4") && m.contains("table 254, metric 0"),
            "{m}"
        );
        assert!(!m.contains("taken over"), "{m}");
    }

    #[test]
    fn an_exact_boot_route_is_taken_over() {
        let key = route("203.0.113.0/24", None, None).key();
        let gw = Some("192.0.2.1".parse().unwrap());
        let boot = [found("203.0.113.0/24", Some("192.0.2.1"), 2, RTPROT_BOOT)];
        assert_eq!(foreign_on_key(&key, gw, Some(2), &boot), Ok(Some(&boot[0])));
        // A device route (no gateway) the same.
        let dev = [found("203.0.113.0/24", None, 2, RTPROT_BOOT)];
        assert_eq!(foreign_on_key(&key, None, Some(2), &dev), Ok(Some(&dev[0])));
    }

    #[test]
    fn a_boot_route_that_differs_in_anything_stays() {
        let key = route("203.0.113.0/24", None, None).key();
        let gw = Some("192.0.2.1".parse().unwrap());
        let exact = found("203.0.113.0/24", Some("192.0.2.1"), 2, RTPROT_BOOT);
        let refused = |why: &str, routes: &[KernelRoute], oif: Option<u32>| {
            let m = foreign_on_key(&key, gw, oif, routes).unwrap_err();
            assert!(
                m.contains("did not install (protocol 3)") && m.contains(why),
                "{why}: {m}"
            );
        };
        // Another gateway, another device, or no device known.
        let other_gw = found("203.0.113.0/24", Some("192.0.2.9"), 2, RTPROT_BOOT);
        refused("gateway differs", &[other_gw], Some(2));
        refused("device differs", std::slice::from_ref(&exact), Some(3));
        refused("device differs", std::slice::from_ref(&exact), None);
        // Not plain: extra attributes, multipath, another type.
        let extra = KernelRoute {
            plain: false,
            ..exact.clone()
        };
        refused("not a plain unicast route", &[extra], Some(2));
        let multi = KernelRoute {
            multipath: true,
            ..exact.clone()
        };
        refused("not a plain unicast route", &[multi], Some(2));
        let blackhole = KernelRoute {
            kind: RouteType::BlackHole,
            ..exact.clone()
        };
        refused("not a plain unicast route", &[blackhole], Some(2));
        // Two routes on the key: neither is taken over.
        let second = found("203.0.113.0/24", Some("192.0.2.1"), 3, RTPROT_BOOT);
        refused("more than one route", &[exact.clone(), second], Some(2));
        let kernel = found("203.0.113.0/24", None, 3, 2);
        let m = foreign_on_key(&key, gw, Some(2), &[kernel, exact]).unwrap_err();
        assert!(
            m.contains("protocol 2") && m.contains("more than one"),
            "{m}"
        );
    }

    #[test]
    fn takeover_names_what_differs() {
        let gw = Some("192.0.2.1".parse().unwrap());
        let exact = found("203.0.113.0/24", Some("192.0.2.1"), 2, RTPROT_BOOT);
        assert_eq!(takeover(&exact, gw, Some(2)), Ok(()));
        let static_route = KernelRoute {
            protocol: 4,
            ..exact.clone()
        };
        assert_eq!(
            takeover(&static_route, gw, Some(2)),
            Err(NoTakeover::Protocol)
        );
        assert_eq!(takeover(&exact, None, Some(2)), Err(NoTakeover::Gateway));
        assert_eq!(takeover(&exact, gw, Some(7)), Err(NoTakeover::Device));
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
            plain: true,
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
