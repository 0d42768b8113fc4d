//! Every change overlay makes to the kernel goes through this module:
//! routes added, replaced and deleted, addresses added and deleted, links
//! created, set up, marked and deleted, by full applies, updates, interface
//! removal and drift repair alike. Each change is a [`Write`] built here;
//! [`Writer::send`] is the one place a request reaches the kernel, over
//! whichever socket suits the number of writes.

use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressProtocol, AddressScope,
};
use netlink_packet_route::link::{LinkMessage, MacVlanMode};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use overlay_core::RouteKey;
use rtnetlink::{LinkMacVlan, LinkUnspec};

use crate::errno::{CONNECTION_CLOSED, Errno};
use crate::read::Addr;
use crate::socket::BatchSocket;

/// Flags of a write that must not overwrite anything.
const CREATE_EXCL: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags of a write that replaces the entry with the same key.
const CREATE_REPLACE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
/// Flags of a delete or a change of an existing object.
const REQUEST_ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// `RT_TABLE_COMPAT`: the header value for tables above 255 (the real id
/// travels in `RTA_TABLE`).
const RT_TABLE_COMPAT: u8 = 252;

/// How a route write treats a route already on its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteAdd {
    /// Fails with `EEXIST` when any route (ours or not) has the key.
    New,
    /// Replaces the route on the key (only ever one of ours).
    Replace,
}

/// One request that changes the kernel, acknowledged by it.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    msg: RouteNetlinkMessage,
    flags: u16,
}

impl Write {
    /// Installs the route with `key` via `gateway` out of `oif`, marked
    /// with our `protocol`.
    pub(crate) fn add_route(
        key: &RouteKey,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
        protocol: u8,
        add: RouteAdd,
    ) -> Self {
        let flags = match add {
            RouteAdd::New => CREATE_EXCL,
            RouteAdd::Replace => CREATE_REPLACE,
        };
        Self {
            msg: RouteNetlinkMessage::NewRoute(route_message(key, gateway, oif, protocol)),
            flags,
        }
    }

    /// Deletes our route with `key` (out of `oif` when given); a foreign
    /// route on the key is never matched.
    pub(crate) fn delete_route(key: &RouteKey, oif: Option<u32>, protocol: u8) -> Self {
        Self {
            msg: RouteNetlinkMessage::DelRoute(route_delete_message(key, oif, protocol)),
            flags: REQUEST_ACK,
        }
    }

    /// Adds address `net` to link `index`, marked with our `protocol`.
    pub(crate) fn add_address(index: u32, net: IpNetwork, protocol: u8) -> Self {
        Self {
            msg: RouteNetlinkMessage::NewAddress(addr_message(index, net, protocol)),
            flags: CREATE_EXCL,
        }
    }

    /// Deletes address `a` as dumped, whoever added it.
    pub(crate) fn delete_address(a: &Addr) -> Self {
        Self {
            msg: RouteNetlinkMessage::DelAddress(addr_delete_message(a)),
            flags: REQUEST_ACK,
        }
    }

    /// Creates macvlan `name` on link `parent` in bridge mode, up. (The
    /// kernel ignores an alias in a request that creates a link: marking it
    /// takes [`Write::set_link_alias`].)
    pub(crate) fn create_macvlan(name: &str, parent: u32) -> Self {
        Self {
            msg: RouteNetlinkMessage::NewLink(
                LinkMacVlan::new(name, parent, MacVlanMode::Bridge)
                    .up()
                    .build(),
            ),
            flags: CREATE_EXCL,
        }
    }

    /// Sets link `index` up.
    pub(crate) fn set_link_up(index: u32) -> Self {
        Self {
            msg: RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build()),
            flags: REQUEST_ACK,
        }
    }

    /// Sets the alias (`IFLA_IFALIAS`) of link `index`.
    pub(crate) fn set_link_alias(index: u32, alias: &str) -> Self {
        Self {
            msg: RouteNetlinkMessage::SetLink(
                LinkUnspec::new_with_index(index).alias(alias).build(),
            ),
            flags: REQUEST_ACK,
        }
    }

    /// Deletes link `index`.
    pub(crate) fn delete_link(index: u32) -> Self {
        let mut m = LinkMessage::default();
        m.header.index = index;
        Self {
            msg: RouteNetlinkMessage::DelLink(m),
            flags: REQUEST_ACK,
        }
    }
}

/// Writes this many or fewer go over the rtnetlink connection (async, no
/// thread hop: what a drift repair, an interface change or a one-route
/// update costs); more go over the batch socket.
const CONNECTION_MAX: usize = 4;

/// Sends [`Write`]s to the kernel, over the programmer's rtnetlink
/// connection or its batch socket.
pub(crate) struct Writer {
    handle: rtnetlink::Handle,
    socket: Arc<BatchSocket>,
    requests_per_send: usize,
}

impl Writer {
    /// A writer over the rtnetlink connection of `handle` and over
    /// `socket`, packing up to `requests_per_send` requests into one
    /// `sendmsg` of the batch socket.
    pub(crate) fn new(
        handle: rtnetlink::Handle,
        socket: Arc<BatchSocket>,
        requests_per_send: usize,
    ) -> Self {
        Self {
            handle,
            socket,
            requests_per_send: requests_per_send.max(1),
        }
    }

    /// Sends `writes` and returns the kernel's answer to each, in the same
    /// order. This is where every route, address and link change reaches
    /// the kernel. A few writes go out at once over the rtnetlink
    /// connection; more than [`CONNECTION_MAX`] go over the batch socket,
    /// in order, many per system call, with the blocking socket work off
    /// the async threads.
    pub(crate) async fn send(&self, writes: Vec<Write>) -> Vec<Result<(), Errno>> {
        if writes.len() <= CONNECTION_MAX {
            let sends = writes.into_iter().map(|w| self.over_connection(w));
            return futures::future::join_all(sends).await;
        }
        let n = writes.len();
        let msgs: Vec<(RouteNetlinkMessage, u16)> =
            writes.into_iter().map(|w| (w.msg, w.flags)).collect();
        let socket = self.socket.clone();
        let per_send = self.requests_per_send;
        tokio::task::spawn_blocking(move || socket.send_batch(msgs, per_send))
            .await
            .unwrap_or_else(|_| vec![Err(CONNECTION_CLOSED); n])
    }

    /// Sends one write; the kernel's answer.
    pub(crate) async fn send_one(&self, write: Write) -> Result<(), Errno> {
        self.send(vec![write])
            .await
            .pop()
            .unwrap_or(Err(CONNECTION_CLOSED))
    }

    /// Sends `write` over the rtnetlink connection and waits for the
    /// kernel's acknowledgement.
    async fn over_connection(&self, write: Write) -> Result<(), Errno> {
        let mut req = NetlinkMessage::from(write.msg);
        req.header.flags = write.flags;
        let mut handle = self.handle.clone();
        let mut answers = handle.request(req).map_err(|_| CONNECTION_CLOSED)?;
        while let Some(m) = answers.next().await {
            if let NetlinkPayload::Error(e) = m.payload
                && let Some(code) = e.code
            {
                return Err(code.get().abs());
            }
        }
        Ok(())
    }
}

/// The message adding `net` to link `index`, marked with our protocol.
fn addr_message(index: u32, net: IpNetwork, protocol: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = net.prefix();
    m.header.scope = AddressScope::Universe;
    match net.ip() {
        IpAddr::V4(_) => {
            m.header.family = AddressFamily::Inet;
            m.attributes.push(AddressAttribute::Local(net.ip()));
            m.attributes.push(AddressAttribute::Address(net.ip()));
        }
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Address(net.ip()));
        }
    }
    m.attributes
        .push(AddressAttribute::Protocol(AddressProtocol::from(protocol)));
    m
}

/// The message deleting address `a` as dumped: local address, peer and
/// prefix length identify it exactly (an IPv4 address may sit on an
/// interface twice with different prefix lengths), whoever added it. No
/// protocol: the kernel does not match it on deletion anyway.
fn addr_delete_message(a: &Addr) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = a.index;
    m.header.prefix_len = a.net.prefix();
    m.header.family = if a.net.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.attributes.push(AddressAttribute::Local(a.net.ip()));
    m.attributes
        .push(AddressAttribute::Address(a.peer.unwrap_or(a.net.ip())));
    m
}

/// The message deleting our route with `key`: any scope and type, only
/// with our protocol (the kernel matches it), so a foreign route with the
/// same key is never deleted; with `oif`, only a route out of that device
/// (the kernel matches it too).
fn route_delete_message(key: &RouteKey, oif: Option<u32>, protocol: u8) -> RouteMessage {
    let mut m = route_message(key, None, oif, protocol);
    m.header.scope = RouteScope::NoWhere;
    m.header.kind = RouteType::Unspec;
    m
}

/// The message installing `spec` (with its device resolved to `oif`), or,
/// for a delete, identifying it. `protocol` marks it as ours.
fn route_message(
    key: &RouteKey,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    protocol: u8,
) -> RouteMessage {
    let net = key.destination.network();
    let mut m = RouteMessage::default();
    m.header.address_family = if net.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.destination_prefix_length = net.prefix();
    m.header.table = u8::try_from(key.table).unwrap_or(RT_TABLE_COMPAT);
    m.header.protocol = RouteProtocol::from(protocol);
    m.header.scope = if gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    m.header.kind = RouteType::Unicast;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            net.network(),
        )));
    m.attributes.push(RouteAttribute::Table(key.table));
    if let Some(gw) = gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(i) = oif {
        m.attributes.push(RouteAttribute::Oif(i));
    }
    m.attributes.push(RouteAttribute::Priority(key.metric));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::parse_addr;
    use crate::read::parse_route;
    use netlink_packet_route::route::RouteScope;
    use overlay_core::RouteSpec;

    fn spec(dest: &str, gw: Option<&str>, metric: Option<u32>, table: Option<u32>) -> RouteSpec {
        RouteSpec {
            destination: dest.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            device: None,
            table,
            metric,
        }
    }

    #[test]
    fn route_messages_parse_back_to_their_key() {
        for s in [
            spec("203.0.113.0/24", Some("192.0.2.1"), Some(7), Some(1000)),
            spec("2001:db8:1::/48", Some("2001:db8::1"), None, None),
            spec("0.0.0.0/0", Some("192.0.2.1"), None, Some(100)),
        ] {
            let key = s.key();
            let m = route_message(&key, s.gateway, Some(3), 250);
            let r = parse_route(&m).unwrap();
            assert_eq!(r.key, key);
            assert_eq!(r.gateway, s.gateway);
            assert_eq!(r.oif, Some(3));
            assert_eq!(r.protocol, 250);
        }
    }

    #[test]
    fn deletes_carry_our_protocol_and_wildcard_scope() {
        let key = spec("203.0.113.0/24", None, None, None).key();
        let m = route_delete_message(&key, None, 250);
        assert_eq!(u8::from(m.header.protocol), 250);
        assert_eq!(m.header.scope, RouteScope::NoWhere);
    }

    #[test]
    fn address_deletes_name_the_address_as_dumped() {
        let msg = |local: Option<&str>, address: &str, prefix: u8| {
            let mut m = AddressMessage::default();
            m.header.index = 7;
            m.header.prefix_len = prefix;
            if let Some(l) = local {
                m.attributes
                    .push(AddressAttribute::Local(l.parse().unwrap()));
            }
            m.attributes
                .push(AddressAttribute::Address(address.parse().unwrap()));
            m
        };
        // No peer: local and address are the same.
        let a = parse_addr(&msg(Some("198.51.100.9"), "198.51.100.9", 24)).unwrap();
        assert_eq!((a.peer, a.protocol), (None, None));
        let d = parse_addr(&addr_delete_message(&a)).unwrap();
        assert_eq!(d, a);
        assert!(
            !addr_delete_message(&a)
                .attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Protocol(_)))
        );
        // A peer (`ip addr add 198.51.100.9 peer 203.0.113.1`) is kept, so
        // that the kernel matches the address on deletion.
        let a = parse_addr(&msg(Some("198.51.100.9"), "203.0.113.1", 32)).unwrap();
        assert_eq!(a.net, "198.51.100.9/32".parse().unwrap());
        assert_eq!(a.peer, Some("203.0.113.1".parse().unwrap()));
        assert_eq!(parse_addr(&addr_delete_message(&a)).unwrap(), a);
        // IPv6 without a peer carries only IFA_ADDRESS.
        let a = parse_addr(&msg(None, "2001:db8::9", 64)).unwrap();
        assert_eq!(a.peer, None);
        assert_eq!(parse_addr(&addr_delete_message(&a)).unwrap(), a);
    }
}
