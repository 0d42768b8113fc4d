//! What the kernel has, as overlay sees it: links, addresses and routes,
//! decoded from netlink messages, and the link and address dumps and
//! look-ups (over the rtnetlink handle; the route dump goes over the batch
//! socket, which parses its answers with [`parse_route`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RoutePreference, RouteScope, RouteType,
};
use overlay_core::model::MAIN_TABLE;
use overlay_core::{Cidr, ProgrammerError, RouteKey, RouteSpec};

use crate::errno::{ENODEV, errno_error, rtnetlink_errno};

/// A link as overlay cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub kind: Option<InfoKind>,
    pub parent: Option<u32>,
    pub macvlan_mode: Option<MacVlanMode>,
    /// `IFLA_IFALIAS`: overlay marks the links it creates with
    /// [`crate::OWNED_LINK_ALIAS`].
    pub alias: Option<String>,
}

impl Link {
    /// True when overlay created this link (it carries our alias).
    pub(crate) fn is_ours(&self) -> bool {
        self.alias.as_deref() == Some(crate::OWNED_LINK_ALIAS)
    }

    /// What the link is, for messages: kind and alias.
    pub(crate) fn describe(&self) -> String {
        let kind = self
            .kind
            .as_ref()
            .map(|k| format!("kind {k:?}"))
            .unwrap_or_else(|| "no kind".into());
        match &self.alias {
            Some(a) => format!("{kind}, alias {a:?}"),
            None => format!("{kind}, no alias"),
        }
    }
}

pub(crate) fn parse_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        parent: None,
        macvlan_mode: None,
        alias: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
            LinkAttribute::Link(p) => l.parent = Some(*p),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::MacVlan(d)) => {
                            for x in d {
                                if let InfoMacVlan::Mode(mode) = x {
                                    l.macvlan_mode = Some(*mode);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// The link named `name`, asked for alone (`RTM_GETLINK` by name, not a
/// dump); `None` when there is none.
pub(crate) async fn get_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<Link>, ProgrammerError> {
    let mut s = handle.link().get().match_name(name.to_owned()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m.as_ref().map(parse_link)),
        Err(e) => match rtnetlink_errno(e) {
            ENODEV => Ok(None),
            errno => Err(errno_error(&format!("get link {name}"), errno)),
        },
    }
}

/// All links by name.
pub(crate) async fn dump_links(
    handle: &rtnetlink::Handle,
) -> Result<HashMap<String, Link>, ProgrammerError> {
    let msgs: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| errno_error("dump links", rtnetlink_errno(e)))?;
    Ok(msgs
        .iter()
        .map(parse_link)
        .map(|l| (l.name.clone(), l))
        .collect())
}

/// An interface address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addr {
    pub index: u32,
    /// The local address with its prefix length.
    pub net: IpNetwork,
    /// The peer (`ip addr add A peer P`) when there is one: the kernel
    /// reports it as `IFA_ADDRESS` and needs it to match the address on
    /// deletion.
    pub peer: Option<IpAddr>,
    /// `IFA_PROTO`; `None` when the address carries no mark (added without
    /// one, or on a kernel before 6.3, which ignores it).
    pub protocol: Option<u8>,
    /// `IFA_F_PERMANENT`: configured, not managed by the kernel (IPv6
    /// addresses autoconfigured from router advertisements, or added with
    /// lifetimes, lack it).
    pub permanent: bool,
}

impl Addr {
    /// True for an address the kernel manages itself: IPv6 link-local
    /// (fe80::/10), or IPv6 without `IFA_F_PERMANENT` (autoconfigured from
    /// router advertisements, expiring). Overlay leaves these on the
    /// overlay interface.
    pub(crate) fn kernel_managed(&self) -> bool {
        is_ipv6_link_local(&self.net) || (self.net.is_ipv6() && !self.permanent)
    }
}

pub(crate) fn parse_addr(m: &AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    let mut protocol = None;
    let mut permanent = m.header.flags.contains(AddressHeaderFlags::Permanent);
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
            // IFA_FLAGS holds all flags; the header only the low byte.
            AddressAttribute::Flags(f) => permanent = f.contains(AddressFlags::Permanent),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let net = IpNetwork::new(ip, m.header.prefix_len).ok()?;
    Some(Addr {
        index: m.header.index,
        net,
        peer: address.filter(|a| *a != ip),
        protocol,
        permanent,
    })
}

/// True for an IPv6 link-local address (fe80::/10), which the kernel adds
/// to every IPv6-enabled interface itself.
pub(crate) fn is_ipv6_link_local(net: &IpNetwork) -> bool {
    matches!(net.ip(), IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// All interface addresses.
pub(crate) async fn dump_addrs(handle: &rtnetlink::Handle) -> Result<Vec<Addr>, ProgrammerError> {
    let msgs: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| errno_error("dump addresses", rtnetlink_errno(e)))?;
    Ok(msgs.iter().filter_map(parse_addr).collect())
}

/// A route as dumped from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelRoute {
    pub key: RouteKey,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub kind: RouteType,
    pub multipath: bool,
    /// True when the route carries nothing a route write of overlay's
    /// would not reproduce: no preferred source, metrics (MTU, ...),
    /// realm, encapsulation, nexthop object, source prefix, TOS, `onlink`
    /// flag or unusual scope or preference. Only such a route can be taken
    /// over without changing how packets go ([`crate::checks::takeover`]).
    pub plain: bool,
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

pub(crate) fn parse_route(m: &RouteMessage) -> Option<KernelRoute> {
    let v4 = match m.header.address_family {
        AddressFamily::Inet => true,
        AddressFamily::Inet6 => false,
        _ => return None,
    };
    let mut dest = None;
    let mut gateway = None;
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    let mut metric = 0;
    let mut multipath = false;
    let mut plain = plain_header(m);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dest = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) => {
                multipath = true;
                if gateway.is_none() {
                    gateway = hops.iter().find_map(|h| {
                        h.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => route_ip(g),
                            _ => None,
                        })
                    });
                }
                if oif.is_none() {
                    oif = hops.first().map(|h| h.interface_index);
                }
            }
            RouteAttribute::CacheInfo(_) | RouteAttribute::Preference(RoutePreference::Medium) => {}
            _ => plain = false,
        }
    }
    // IPv4 reports the scope a route was added with; what overlay writes
    // is universe with a gateway, link without.
    let scope = if gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    plain &= !v4 || m.header.scope == scope;
    let dest = dest.unwrap_or(if v4 {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let net = IpNetwork::new(dest, m.header.destination_prefix_length).ok()?;
    Some(KernelRoute {
        key: RouteKey::new(Cidr::from_network(net), table, metric),
        gateway,
        oif,
        protocol: u8::from(m.header.protocol),
        kind: m.header.kind,
        multipath,
        plain: plain && !multipath,
    })
}

/// True when the header of route `m` holds nothing a route write of
/// overlay's would not reproduce: no source prefix, no TOS, no `onlink`.
fn plain_header(m: &RouteMessage) -> bool {
    m.header.source_prefix_length == 0
        && m.header.tos == 0
        && !m.header.flags.contains(RouteFlags::Onlink)
}

/// A kernel route turned back into a [`RouteSpec`] (for reports).
pub(crate) fn kernel_route_spec(r: &KernelRoute, names: &HashMap<u32, String>) -> RouteSpec {
    let RouteKey {
        destination,
        table,
        metric,
    } = r.key;
    RouteSpec {
        destination,
        gateway: r.gateway,
        device: r
            .oif
            .and_then(|i| names.get(&i))
            .and_then(|n| overlay_core::InterfaceName::parse("device", n).ok()),
        table: (table != MAIN_TABLE).then_some(table),
        metric: (metric != 0).then_some(metric),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_managed_addresses_are_link_local_or_not_permanent_ipv6() {
        let addr = |s: &str, flags: AddressFlags| {
            let mut m = AddressMessage::default();
            m.header.prefix_len = if s.contains(':') { 64 } else { 24 };
            m.attributes
                .push(AddressAttribute::Address(s.parse().unwrap()));
            m.attributes.push(AddressAttribute::Flags(flags));
            parse_addr(&m).unwrap()
        };
        assert!(addr("2001:db8::9", AddressFlags::empty()).kernel_managed());
        assert!(!addr("2001:db8::9", AddressFlags::Permanent).kernel_managed());
        assert!(addr("fe80::9", AddressFlags::Permanent).kernel_managed());
        // IPv4 is never the kernel's own, lifetimes or not.
        assert!(!addr("198.51.100.9", AddressFlags::empty()).kernel_managed());
    }

    #[test]
    fn links_carry_their_alias() {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName("tmp0".into()));
        assert!(!parse_link(&m).is_ours());
        m.attributes
            .push(LinkAttribute::IfAlias(crate::OWNED_LINK_ALIAS.into()));
        let l = parse_link(&m);
        assert!(l.is_ours(), "{l:?}");
        assert!(l.describe().contains("alias"));
    }

    #[test]
    fn only_routes_without_extras_are_plain() {
        let msg = |gw: Option<&str>| {
            let mut m = RouteMessage::default();
            m.header.address_family = AddressFamily::Inet;
            m.header.destination_prefix_length = 24;
            m.header.kind = RouteType::Unicast;
            m.header.scope = RouteScope::Link;
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    "203.0.113.0".parse::<IpAddr>().unwrap(),
                )));
            if let Some(g) = gw {
                m.header.scope = RouteScope::Universe;
                m.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::from(
                        g.parse::<IpAddr>().unwrap(),
                    )));
            }
            m.attributes.push(RouteAttribute::Oif(2));
            m
        };
        let plain = |m: &RouteMessage| parse_route(m).unwrap().plain;
        // As `ip route add 203.0.113.0/24 via 192.0.2.1 dev eth0` or `dev
        // eth0` leaves them; IPv6 adds cache info and medium preference.
        assert!(plain(&msg(Some("192.0.2.1"))));
        assert!(plain(&msg(None)));
        let mut v6 = msg(Some("192.0.2.1"));
        v6.attributes
            .push(RouteAttribute::Preference(RoutePreference::Medium));
        assert!(plain(&v6));
        // `src`, `onlink`, `tos`, an unusual scope: not plain.
        let mut src = msg(Some("192.0.2.1"));
        src.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(
                "192.0.2.10".parse::<IpAddr>().unwrap(),
            )));
        assert!(!plain(&src));
        let mut onlink = msg(Some("192.0.2.1"));
        onlink.header.flags = RouteFlags::Onlink;
        assert!(!plain(&onlink));
        let mut tos = msg(Some("192.0.2.1"));
        tos.header.tos = 0x10;
        assert!(!plain(&tos));
        let mut host = msg(None);
        host.header.scope = RouteScope::Host;
        assert!(!plain(&host));
    }

    #[test]
    fn ipv6_link_local_is_fe80_slash_10() {
        let ll = |s: &str| is_ipv6_link_local(&s.parse().unwrap());
        assert!(ll("fe80::1/64"));
        assert!(ll("febf:ffff::1/64"));
        assert!(!ll("fec0::1/64"));
        assert!(!ll("2001:db8::1/64"));
        assert!(!ll("198.51.100.9/24"));
    }
}
