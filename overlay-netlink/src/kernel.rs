//! Low-level kernel access: opening sockets in a namespace, dumps, writes,
//! and the conversions between netlink messages and overlay's model.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR, NetlinkBuffer, NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
    AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use overlay_core::model::MAIN_TABLE;
use overlay_core::{Cidr, ProgrammerError, RouteKey, RouteSpec};

/// Flags of a write that must not overwrite anything.
pub(crate) const CREATE_EXCL: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags of a write that replaces the entry with the same key.
pub(crate) const CREATE_REPLACE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
/// Flags of a delete or a change of an existing object.
pub(crate) const REQUEST_ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// `RT_TABLE_COMPAT`: the header value for tables above 255 (the real id
/// travels in `RTA_TABLE`).
const RT_TABLE_COMPAT: u8 = 252;

/// An errno from the kernel (positive), or [`CONNECTION_CLOSED`].
pub(crate) type Errno = i32;
/// `RTM_NEWROUTE`.
const RTM_NEWROUTE: u16 = 24;

/// Pseudo-errno: the netlink connection task is gone.
pub(crate) const CONNECTION_CLOSED: Errno = -1;

/// Runs `f` on a fresh thread that entered the namespace at `path` (or the
/// current one) with the tokio runtime `rt` entered, so that the sockets it
/// opens belong to that namespace and are registered with `rt`.
pub(crate) fn in_netns<T: Send>(
    path: Option<&Path>,
    rt: &tokio::runtime::Handle,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> Result<T, ProgrammerError> {
    let ns_name = || {
        path.map(|p| p.display().to_string())
            .unwrap_or_else(|| "current".into())
    };
    let joined = std::thread::scope(|s| {
        s.spawn(|| -> Result<T, ProgrammerError> {
            if let Some(p) = path {
                let file = File::open(p).map_err(|e| ProgrammerError::Namespace {
                    namespace: p.display().to_string(),
                    message: format!("cannot open: {e}; pass the path of a namespace file such as /run/netns/NAME"),
                })?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    ProgrammerError::Namespace {
                        namespace: p.display().to_string(),
                        message: format!("setns failed: {e}; entering a namespace needs CAP_SYS_ADMIN"),
                    }
                })?;
            }
            let _guard = rt.enter();
            f().map_err(|e| ProgrammerError::Namespace {
                namespace: ns_name(),
                message: format!("cannot open a netlink socket: {e}"),
            })
        })
        .join()
    });
    joined.unwrap_or_else(|_| {
        Err(ProgrammerError::Namespace {
            namespace: ns_name(),
            message: "the thread opening the netlink socket panicked".into(),
        })
    })
}

/// Maps a kernel errno of `call` to a typed error.
pub(crate) fn errno_error(call: &str, errno: Errno) -> ProgrammerError {
    if errno == libc_eperm() || errno == EACCES {
        return ProgrammerError::PermissionDenied { call: call.into() };
    }
    ProgrammerError::Kernel {
        call: call.into(),
        message: errno_message(errno),
    }
}

/// A readable message for an errno.
pub(crate) fn errno_message(errno: Errno) -> String {
    if errno == CONNECTION_CLOSED {
        "the netlink connection is closed (was the tokio runtime shut down?)".into()
    } else {
        io::Error::from_raw_os_error(errno).to_string()
    }
}

const fn libc_eperm() -> Errno {
    1
}
pub(crate) const EPERM: Errno = 1;
pub(crate) const ENOENT: Errno = 2;
pub(crate) const ESRCH: Errno = 3;
pub(crate) const ENODEV: Errno = 19;
pub(crate) const EACCES: Errno = 13;
pub(crate) const EEXIST: Errno = 17;
pub(crate) const ENETUNREACH: Errno = 101;
pub(crate) const EHOSTUNREACH: Errno = 113;
pub(crate) const ENOBUFS: Errno = 105;
pub(crate) const EAGAIN: Errno = 11;
pub(crate) const EADDRNOTAVAIL: Errno = 99;

fn rtnl_errno(e: rtnetlink::Error) -> Errno {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()).unwrap_or(0),
        _ => CONNECTION_CLOSED,
    }
}

/// Sends one write request and waits for its acknowledgement.
pub(crate) async fn write(
    handle: &rtnetlink::Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), Errno> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    let mut h = handle.clone();
    let mut resp = h.request(req).map_err(|_| CONNECTION_CLOSED)?;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && let Some(code) = e.code
        {
            return Err(code.get().abs());
        }
    }
    Ok(())
}

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
        Err(e) => match rtnl_errno(e) {
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
        .map_err(|e| errno_error("dump links", rtnl_errno(e)))?;
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
        .map_err(|e| errno_error("dump addresses", rtnl_errno(e)))?;
    Ok(msgs.iter().filter_map(parse_addr).collect())
}

/// The message adding `net` to link `index`, marked with our protocol.
pub(crate) fn addr_message(index: u32, net: IpNetwork, protocol: u8) -> AddressMessage {
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
pub(crate) fn addr_delete_message(a: &Addr) -> AddressMessage {
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

/// A route as dumped from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelRoute {
    pub key: RouteKey,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub kind: RouteType,
    pub multipath: bool,
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
            _ => {}
        }
    }
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
    })
}

/// The message deleting our route with `key`: any scope and type, only
/// with our protocol (the kernel matches it), so a foreign route with the
/// same key is never deleted; with `oif`, only a route out of that device
/// (the kernel matches it too).
pub(crate) fn route_delete_message(key: &RouteKey, oif: Option<u32>, protocol: u8) -> RouteMessage {
    let mut m = route_message(key, None, oif, protocol);
    m.header.scope = RouteScope::NoWhere;
    m.header.kind = RouteType::Unspec;
    m
}

/// The message installing `spec` (with its device resolved to `oif`), or,
/// for a delete, identifying it. `protocol` marks it as ours.
pub(crate) fn route_message(
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

/// A blocking netlink socket for bulk writes: it packs many requests into
/// each `sendmsg` (the kernel handles them in order and acknowledges each),
/// so thousands of routes cost tens of system calls, not thousands.
pub(crate) struct Bulk {
    sock: std::sync::Mutex<netlink_sys::Socket>,
    /// Netlink port id (notifications caused by these writes carry it).
    pub port: u32,
    seq: std::sync::atomic::AtomicU32,
}

/// Bytes of requests per `sendmsg` (well below the default send buffer).
const BULK_CHUNK: usize = 32 * 1024;

impl Bulk {
    /// Opens the socket in the calling thread's namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        let addr = sock.bind_auto()?;
        let _ = sock.set_cap_ack(true);
        let _ = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(10, 0),
        );
        if nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::RcvBufForce,
            &(8usize << 20),
        )
        .is_err()
        {
            let _ = sock.set_rx_buf_sz(8usize << 20);
        }
        Ok(Self {
            sock: std::sync::Mutex::new(sock),
            port: addr.port_number(),
            seq: std::sync::atomic::AtomicU32::new(1),
        })
    }

    /// Dumps all IPv4 and IPv6 routes of all tables (one dump, parsed as it
    /// is read). Blocking.
    pub(crate) fn dump_routes(&self) -> Result<Vec<KernelRoute>, Errno> {
        let sock = self.sock.lock().map_err(|_| CONNECTION_CLOSED)?;
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Unspec;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(m));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        req.header.sequence_number = seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        let os = |e: io::Error| e.raw_os_error().unwrap_or(CONNECTION_CLOSED);
        sock.send(&buf, 0).map_err(os)?;
        let mut out = Vec::new();
        let mut rbuf: Vec<u8> = Vec::with_capacity(1 << 16);
        loop {
            rbuf.clear();
            rbuf.reserve(1 << 16);
            sock.recv(&mut rbuf, 0).map_err(os)?;
            let mut off = 0;
            while off + 16 <= rbuf.len() {
                let Ok(h) = NetlinkBuffer::new_checked(&rbuf[off..]) else {
                    break;
                };
                let len = h.length() as usize;
                if len < 16 {
                    break;
                }
                if h.sequence_number() == seq {
                    match h.message_type() {
                        NLMSG_DONE => return Ok(out),
                        NLMSG_ERROR => {
                            let p = h.payload();
                            let code = if p.len() >= 4 {
                                i32::from_ne_bytes([p[0], p[1], p[2], p[3]])
                            } else {
                                0
                            };
                            if code != 0 {
                                return Err(code.abs());
                            }
                        }
                        RTM_NEWROUTE => {
                            if let Ok(m) = RouteMessage::parse(h.payload())
                                && let Some(r) = parse_route(&m)
                            {
                                out.push(r);
                            }
                        }
                        _ => {}
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Sends every request (each with its flags, which must include
    /// `NLM_F_ACK`) and returns each one's result, in order. Blocking.
    pub(crate) fn send_all(
        &self,
        msgs: Vec<(RouteNetlinkMessage, u16)>,
        per_send: usize,
    ) -> Vec<Result<(), Errno>> {
        let n = msgs.len();
        let mut results: Vec<Result<(), Errno>> = vec![Err(CONNECTION_CLOSED); n];
        if n == 0 {
            return results;
        }
        let Ok(sock) = self.sock.lock() else {
            return results;
        };
        let base = self.seq.fetch_add(
            u32::try_from(n).unwrap_or(u32::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut buf: Vec<u8> = Vec::with_capacity(BULK_CHUNK + 4096);
        let mut rbuf: Vec<u8> = Vec::with_capacity(1 << 18);
        let mut msgs = msgs.into_iter().enumerate().peekable();
        while msgs.peek().is_some() {
            buf.clear();
            let start = msgs.peek().map(|(i, _)| *i).unwrap_or(0);
            let mut end = start;
            while buf.len() < BULK_CHUNK && end - start < per_send {
                let Some((i, (msg, flags))) = msgs.next() else {
                    break;
                };
                let mut m = NetlinkMessage::from(msg);
                m.header.flags = flags;
                m.header.sequence_number = base.wrapping_add(i as u32);
                m.finalize();
                let off = buf.len();
                buf.resize(off + m.buffer_len(), 0);
                m.serialize(&mut buf[off..]);
                end = i + 1;
            }
            if let Err(e) = sock.send(&buf, 0) {
                let errno = e.raw_os_error().unwrap_or(CONNECTION_CLOSED);
                for r in &mut results[start..end] {
                    *r = Err(errno);
                }
                continue;
            }
            let mut pending = end - start;
            let mut seen = vec![false; end - start];
            while pending > 0 {
                rbuf.clear();
                rbuf.reserve(1 << 18);
                if let Err(e) = sock.recv(&mut rbuf, 0) {
                    // Acknowledgements lost (ENOBUFS) or none coming (timeout):
                    // the unacknowledged requests are reported with that errno.
                    let errno = e.raw_os_error().unwrap_or(CONNECTION_CLOSED);
                    for (k, done) in seen.iter().enumerate() {
                        if !done {
                            results[start + k] = Err(errno);
                        }
                    }
                    break;
                }
                let mut off = 0;
                while off + 16 <= rbuf.len() {
                    let Ok(h) = NetlinkBuffer::new_checked(&rbuf[off..]) else {
                        break;
                    };
                    let len = h.length() as usize;
                    if len < 16 {
                        break;
                    }
                    if h.message_type() == NLMSG_ERROR {
                        let idx = h.sequence_number().wrapping_sub(base) as usize;
                        let p = h.payload();
                        if (start..end).contains(&idx) && p.len() >= 4 && !seen[idx - start] {
                            let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                            results[idx] = if code == 0 { Ok(()) } else { Err(code.abs()) };
                            seen[idx - start] = true;
                            pending -= 1;
                        }
                    }
                    off += (len + 3) & !3;
                }
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
    fn ipv6_link_local_is_fe80_slash_10() {
        let ll = |s: &str| is_ipv6_link_local(&s.parse().unwrap());
        assert!(ll("fe80::1/64"));
        assert!(ll("febf:ffff::1/64"));
        assert!(!ll("fec0::1/64"));
        assert!(!ll("2001:db8::1/64"));
        assert!(!ll("198.51.100.9/24"));
    }

    #[test]
    fn errno_mapping() {
        assert!(matches!(
            errno_error("x", EPERM),
            ProgrammerError::PermissionDenied { .. }
        ));
        assert!(matches!(
            errno_error("x", EEXIST),
            ProgrammerError::Kernel { .. }
        ));
    }
}
