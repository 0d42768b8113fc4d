//! Drift repair: kernel notifications in, targeted or full repairs out.
//!
//! - One of our routes deleted: re-added at once (one write, no dump).
//! - One of our routes changed (still ours, other attributes): replaced.
//! - Overlay interface, its parent or a route's device deleted, recreated
//!   or set up/down; the overlay address deleted; another address added to
//!   the overlay interface (IPv6 link-local and autoconfigured addresses
//!   excepted); notifications lost (`ENOBUFS`): the last desired state is
//!   re-applied in full. That re-apply follows every rule of an apply: it
//!   never recreates or touches a link overlay did not create (an unmarked
//!   interface that took the overlay interface's name is reported, not
//!   replaced), and never deletes a default route.
//! - While some desired routes failed (e.g. their gateway's network was
//!   down), a new connected route or address re-applies too, so routes come
//!   back when their network does.
//! - Every route notification also keeps what incremental updates work
//!   from current: the connected networks (for on-link checks), which
//!   keys hold our routes (a foreign route on a key makes an update refuse
//!   it instead of replacing it), and the routes others installed (an
//!   update takes over one added with `ip route` that is exactly the
//!   desired route, as a full apply does).
//!
//! Notifications carrying one of our sockets' port ids were caused by our
//! own writes and are skipped before they are even decoded. Repairs are
//! written like every other change, through [`crate::write::Writer`].

use std::sync::Arc;

use futures::FutureExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{RouteMessage, RouteType};
use netlink_sys::{AsyncSocketExt, TokioSocket};
use overlay_core::{DesiredNodeState, DriftEvent, RouteKey, RouteResult};

use crate::errno::{EEXIST, ENOBUFS};
use crate::read::{self, Addr};
use crate::route_writes::installed_route;
use crate::socket::frames;
use crate::state::{Counters, Inner, State, as_direct, foreign_added, foreign_gone, matches_spec};
use crate::write::{RouteAdd, Write};

/// Bytes read per notification datagram.
const BUF: usize = 1 << 16;

/// Reads notifications until the programmer is dropped (the task is
/// aborted) or the socket fails.
pub(crate) async fn watch(inner: Arc<Inner>, sock: TokioSocket) {
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    let own_ports = [inner.port, inner.batch.port];
    loop {
        let Some((msgs, overrun)) = receive(&sock, &mut buf, own_ports).await else {
            return;
        };
        if msgs.is_empty() && !overrun {
            continue;
        }
        let mut state = inner.state.lock().await;
        handle(&inner, &mut state, msgs, overrun).await;
    }
}

/// Waits for one datagram, then takes whatever else is already queued:
/// the messages others caused, and whether notifications were lost.
/// `None` when the socket failed.
async fn receive(
    sock: &TokioSocket,
    buf: &mut Vec<u8>,
    own_ports: [u32; 2],
) -> Option<(Vec<RouteNetlinkMessage>, bool)> {
    let mut msgs = Vec::new();
    let mut overrun = false;
    let mut first = true;
    loop {
        buf.clear();
        buf.reserve(BUF);
        let r = if first {
            Some(sock.recv_from(buf).await)
        } else {
            sock.recv_from(buf).now_or_never()
        };
        first = false;
        match r {
            None => return Some((msgs, overrun)),
            Some(Ok(_)) => decode(buf, own_ports, &mut msgs),
            Some(Err(e)) if e.raw_os_error() == Some(ENOBUFS) => overrun = true,
            Some(Err(e)) => {
                tracing::error!(error = %e, "netlink notification socket failed; drift repair stops");
                return None;
            }
        }
    }
}

/// Decodes the messages of one datagram, skipping those our own requests
/// caused.
fn decode(buf: &[u8], own_ports: [u32; 2], out: &mut Vec<RouteNetlinkMessage>) {
    for frame in frames(buf).filter(|f| !own_ports.contains(&f.port_number())) {
        if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(frame.into_inner())
            && let NetlinkPayload::InnerMessage(inner) = m.payload
        {
            out.push(inner);
        }
    }
}

/// What a batch of notifications calls for.
#[derive(Default)]
struct Findings {
    /// Drift to report.
    events: Vec<DriftEvent>,
    /// Re-apply the last desired state in full.
    full: bool,
    /// Our routes deleted by someone else: add them back.
    readd: Vec<RouteKey>,
    /// Our routes changed by someone else: replace them.
    replace: Vec<RouteKey>,
}

/// Takes in one batch of notifications and repairs what they call for.
async fn handle(inner: &Inner, state: &mut State, msgs: Vec<RouteNetlinkMessage>, overrun: bool) {
    let Some(desired) = state.desired.clone() else {
        return; // nothing applied yet
    };
    let mut findings = Findings {
        full: overrun,
        ..Findings::default()
    };
    if overrun {
        Counters::add(&inner.counters.overruns, 1);
        findings.events.push(DriftEvent::Overrun);
    }
    let mut watcher = Watcher {
        protocol: inner.protocol,
        has_failures: has_failures(state),
        desired: &desired,
        state: &mut *state,
        findings: &mut findings,
    };
    for msg in msgs {
        watcher.take_in(msg);
    }
    if findings.events.is_empty() && !findings.full {
        return;
    }
    let n_events = findings.events.len().max(1) as u64;
    Counters::add(&inner.counters.drift_events, n_events);
    for e in findings.events {
        let _ = inner.events.send(e);
    }
    let mut writes = 0u64;
    let mut full = findings.full;
    if !full && (!findings.readd.is_empty() || !findings.replace.is_empty()) {
        let (n, failed) = put_back(inner, state, findings.readd, findings.replace).await;
        writes += n;
        full = failed;
    }
    if full {
        Counters::add(&inner.counters.resyncs, 1);
        match inner.apply_locked(state, &desired).await {
            Ok(report) => writes += report.kernel_writes,
            Err(e) => tracing::warn!(error = %e, "drift repair: re-apply failed"),
        }
    }
    if writes > 0 {
        Counters::add(&inner.counters.repairs, 1);
        Counters::add(&inner.counters.repair_writes, writes);
        let _ = inner.events.send(DriftEvent::Repaired { writes });
    }
}

/// True when some desired route failed in the last apply or update.
fn has_failures(state: &State) -> bool {
    state.last_report.as_ref().is_some_and(|r| {
        r.routes
            .iter()
            .any(|o| matches!(o.result, RouteResult::Failed(_)))
    })
}

/// Targeted repair: puts back exactly the routes that were deleted
/// (`readd`) or changed (`replace`), as their intents say. The writes
/// sent, and whether anything failed other than "already there" (a device
/// gone, a network down), which calls for a full re-apply that reports it.
async fn put_back(
    inner: &Inner,
    state: &mut State,
    readd: Vec<RouteKey>,
    replace: Vec<RouteKey>,
) -> (u64, bool) {
    let keys = readd
        .into_iter()
        .map(|k| (k, RouteAdd::New))
        .chain(replace.into_iter().map(|k| (k, RouteAdd::Replace)));
    let mut planned = Vec::new();
    let mut writes = Vec::new();
    for (key, add) in keys {
        let Some(intent) = state.intents.get(&key) else {
            continue;
        };
        let (gateway, oif) = (intent.spec.gateway, intent.oif);
        writes.push(Write::add_route(&key, gateway, oif, inner.protocol, add));
        planned.push(installed_route(key, &intent.spec, oif, inner.protocol));
    }
    let answers = inner.writer.send(writes).await;
    for (route, answer) in planned.into_iter().zip(&answers) {
        if answer.is_ok() {
            state.ours.insert(route.key, route);
        }
    }
    let n = answers.len() as u64;
    inner.count_writes(n);
    let failed = answers.iter().any(|r| matches!(r, Err(e) if *e != EEXIST));
    (n, failed)
}

/// Goes through notifications one by one, keeping the caches updates work
/// from current and noting what needs repair.
struct Watcher<'a> {
    protocol: u8,
    has_failures: bool,
    desired: &'a DesiredNodeState,
    state: &'a mut State,
    findings: &'a mut Findings,
}

impl Watcher<'_> {
    fn take_in(&mut self, msg: RouteNetlinkMessage) {
        match msg {
            RouteNetlinkMessage::DelRoute(m) => self.route_deleted(&m),
            RouteNetlinkMessage::NewRoute(m) => self.route_added(&m),
            RouteNetlinkMessage::DelAddress(m) => self.address_deleted(&m),
            RouteNetlinkMessage::NewAddress(m) => self.address_added(&m),
            RouteNetlinkMessage::NewLink(m) => self.link_changed(&m),
            RouteNetlinkMessage::DelLink(m) => self.link_deleted(&m),
            _ => {}
        }
    }

    fn route_deleted(&mut self, m: &RouteMessage) {
        let Some(r) = read::parse_route(m) else {
            return;
        };
        // Keep what updates work from (without a dump) current.
        if let Some(d) = as_direct(&r) {
            self.state.direct_gone(&d);
        }
        if r.protocol != self.protocol {
            foreign_gone(&mut self.state.foreign, &r);
        } else {
            self.state.ours.remove(&r.key);
            if let Some(p) = self.state.intents.get(&r.key) {
                self.findings.events.push(DriftEvent::Route(p.spec.clone()));
                self.findings.readd.push(r.key);
            }
        }
    }

    fn route_added(&mut self, m: &RouteMessage) {
        let Some(r) = read::parse_route(m) else {
            return;
        };
        if let Some(d) = as_direct(&r) {
            self.state.direct_added(d);
        }
        let ours = r.protocol == self.protocol;
        if ours {
            self.state.ours.insert(r.key, r.clone());
        } else {
            // A foreign route on the key: an update must not replace it
            // (a new route's write answers EEXIST instead), unless it is
            // one to take over.
            self.state.ours.remove(&r.key);
            foreign_added(&mut self.state.foreign, r.clone());
        }
        if let Some(p) = self.state.intents.get(&r.key) {
            if ours && !matches_spec(&r, &p.spec, p.oif) {
                self.findings.events.push(DriftEvent::Route(p.spec.clone()));
                self.findings.replace.push(r.key);
            } else if !ours {
                // Somebody replaced our route with theirs: report it;
                // overlay never overwrites a foreign route.
                self.findings.events.push(DriftEvent::Route(p.spec.clone()));
            }
        } else if self.has_failures && !ours && r.gateway.is_none() && r.kind == RouteType::Unicast
        {
            // A network came (back): failed routes may work now.
            self.findings.full = true;
        }
    }

    /// The address of `m` when it sits on the overlay interface, and
    /// whether it is the desired overlay address.
    fn on_overlay(&self, m: &AddressMessage) -> Option<(Addr, bool)> {
        let a = read::parse_addr(m)?;
        let overlay = self.desired.overlay.as_ref()?;
        (Some(a.index) == self.state.overlay_index).then(|| {
            let desired = overlay.address == a.net;
            (a, desired)
        })
    }

    fn address_deleted(&mut self, m: &AddressMessage) {
        if let Some((a, true)) = self.on_overlay(m) {
            self.findings.events.push(DriftEvent::Address(a.net));
            self.findings.full = true;
        }
    }

    fn address_added(&mut self, m: &AddressMessage) {
        if let Some((a, false)) = self.on_overlay(m)
            && !a.kernel_managed()
        {
            // Another address on the overlay interface (added by hand, by
            // other tooling): the re-apply removes it, as every apply does,
            // marked or not. Addresses the kernel manages (IPv6 link-local,
            // autoconfigured) stay.
            self.findings.events.push(DriftEvent::Address(a.net));
            self.findings.full = true;
        } else if self.has_failures {
            // A network came (back): failed routes may work now.
            self.findings.full = true;
        }
    }

    fn link_changed(&mut self, m: &LinkMessage) {
        let l = read::parse_link(m);
        let changed = match self.state.watched_links.get(&l.name) {
            Some(&(index, up)) => index != l.index || up != l.up,
            // A relevant link we have not seen (e.g. the parent appeared
            // after a MissingParent error).
            None => self.relevant(&l.name),
        };
        if changed {
            self.findings.events.push(link_event(&l.name));
            self.findings.full = true;
        }
    }

    fn link_deleted(&mut self, m: &LinkMessage) {
        let l = read::parse_link(m);
        let links = &self.state.watched_links;
        if links.contains_key(&l.name) || links.values().any(|&(i, _)| i == l.index) {
            self.findings.events.push(link_event(&l.name));
            self.findings.full = true;
        }
    }

    /// True for the overlay interface, its parent and the desired routes'
    /// devices.
    fn relevant(&self, name: &str) -> bool {
        let d = self.desired;
        d.overlay
            .as_ref()
            .is_some_and(|o| o.name.as_str() == name || o.parent.as_str() == name)
            || d.routes
                .iter()
                .any(|r| r.device.as_ref().is_some_and(|x| x.as_str() == name))
    }
}

fn link_event(name: &str) -> DriftEvent {
    match overlay_core::InterfaceName::parse("link", name) {
        Ok(n) => DriftEvent::Link(n),
        Err(_) => DriftEvent::Overrun,
    }
}
