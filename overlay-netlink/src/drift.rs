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
//!   from current: the connected networks (for on-link checks) and which
//!   keys hold our routes (a foreign route on a key makes an update refuse
//!   it instead of replacing it).
//!
//! Notifications carrying our request socket's port id were caused by our
//! own writes and are skipped before they are even decoded.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::RouteType;
use netlink_sys::{AsyncSocketExt, TokioSocket};
use overlay_core::{DriftEvent, RouteKey, RouteResult};

use crate::kernel::{self, CREATE_EXCL, CREATE_REPLACE, EEXIST, ENOBUFS};
use crate::programmer::{Inner, State, as_direct, matches_spec};

const BUF: usize = 1 << 16;

/// Reads notifications until the programmer is dropped (the task is
/// aborted) or the socket fails.
pub(crate) async fn watch(inner: Arc<Inner>, sock: TokioSocket) {
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    loop {
        let mut msgs = Vec::new();
        let mut overrun = false;
        // Wait for one datagram, then take whatever else is already queued.
        let mut first = true;
        loop {
            buf.clear();
            buf.reserve(BUF);
            let r = if first {
                Some(sock.recv_from(&mut buf).await)
            } else {
                sock.recv_from(&mut buf).now_or_never()
            };
            first = false;
            match r {
                None => break,
                Some(Ok(_)) => decode(&buf, [inner.port, inner.bulk.port], &mut msgs),
                Some(Err(e)) if e.raw_os_error() == Some(ENOBUFS) => overrun = true,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "netlink notification socket failed; drift repair stops");
                    return;
                }
            }
        }
        if msgs.is_empty() && !overrun {
            continue;
        }
        let mut state = inner.state.lock().await;
        handle(&inner, &mut state, msgs, overrun).await;
    }
}

/// Decodes the messages of one datagram, skipping those our own requests
/// caused.
fn decode(buf: &[u8], own_ports: [u32; 2], out: &mut Vec<RouteNetlinkMessage>) {
    let mut off = 0;
    while off < buf.len() {
        let Ok(hdr) = NetlinkBuffer::new_checked(&buf[off..]) else {
            return;
        };
        let len = hdr.length() as usize;
        if len == 0 {
            return;
        }
        let end = (off + len).min(buf.len());
        if !own_ports.contains(&hdr.port_number())
            && let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..end])
            && let NetlinkPayload::InnerMessage(inner) = m.payload
        {
            out.push(inner);
        }
        off += (len + 3) & !3;
    }
}

async fn handle(inner: &Inner, state: &mut State, msgs: Vec<RouteNetlinkMessage>, overrun: bool) {
    let Some(desired) = state.desired.clone() else {
        return; // nothing applied yet
    };
    let has_failures = state.last_report.as_ref().is_some_and(|r| {
        r.routes
            .iter()
            .any(|o| matches!(o.result, RouteResult::Failed(_)))
    });
    let mut events = Vec::new();
    let mut full = overrun;
    let mut readd: Vec<RouteKey> = Vec::new();
    let mut replace: Vec<RouteKey> = Vec::new();
    if overrun {
        inner.counters.overruns.fetch_add(1, Ordering::Relaxed);
        events.push(DriftEvent::Overrun);
    }
    let relevant = |name: &str| {
        desired
            .overlay
            .as_ref()
            .is_some_and(|o| o.name.as_str() == name || o.parent.as_str() == name)
            || desired
                .routes
                .iter()
                .any(|r| r.device.as_ref().is_some_and(|d| d.as_str() == name))
    };
    for msg in msgs {
        match msg {
            RouteNetlinkMessage::DelRoute(m) => {
                let Some(r) = kernel::parse_route(&m) else {
                    continue;
                };
                // Keep what updates work from (without a dump) current.
                if let Some(d) = as_direct(&r) {
                    state.direct_gone(&d);
                }
                if r.protocol == inner.protocol {
                    state.ours.remove(&r.key);
                    if let Some(p) = state.plan.get(&r.key) {
                        events.push(DriftEvent::Route(p.spec.clone()));
                        readd.push(r.key);
                    }
                }
            }
            RouteNetlinkMessage::NewRoute(m) => {
                let Some(r) = kernel::parse_route(&m) else {
                    continue;
                };
                if let Some(d) = as_direct(&r) {
                    state.direct_added(d);
                }
                if r.protocol == inner.protocol {
                    state.ours.insert(r.key, r.clone());
                } else {
                    // A foreign route on the key: an update must not
                    // replace it (CREATE_EXCL answers EEXIST instead).
                    state.ours.remove(&r.key);
                }
                if let Some(p) = state.plan.get(&r.key) {
                    if r.protocol == inner.protocol && !matches_spec(&r, &p.spec, p.oif) {
                        events.push(DriftEvent::Route(p.spec.clone()));
                        replace.push(r.key);
                    } else if r.protocol != inner.protocol {
                        // Somebody replaced our route with theirs: report it;
                        // overlay never overwrites a foreign route.
                        events.push(DriftEvent::Route(p.spec.clone()));
                    }
                } else if has_failures
                    && r.protocol != inner.protocol
                    && r.gateway.is_none()
                    && r.kind == RouteType::Unicast
                {
                    // A network came (back): failed routes may work now.
                    full = true;
                }
            }
            RouteNetlinkMessage::DelAddress(m) => {
                if let Some(a) = kernel::parse_addr(&m)
                    && Some(a.index) == state.overlay_index
                    && desired.overlay.as_ref().is_some_and(|o| o.address == a.net)
                {
                    events.push(DriftEvent::Address(a.net));
                    full = true;
                }
            }
            RouteNetlinkMessage::NewAddress(m) => {
                if let Some(a) = kernel::parse_addr(&m)
                    && Some(a.index) == state.overlay_index
                    && desired.overlay.as_ref().is_some_and(|o| o.address != a.net)
                    && !a.kernel_managed()
                {
                    // Another address on the overlay interface (added by
                    // hand, by other tooling): the re-apply removes it, as
                    // every apply does, marked or not. Addresses the kernel
                    // manages (IPv6 link-local, autoconfigured) stay.
                    events.push(DriftEvent::Address(a.net));
                    full = true;
                } else if has_failures {
                    // A network came (back): failed routes may work now.
                    full = true;
                }
            }
            RouteNetlinkMessage::NewLink(m) => {
                let l = kernel::parse_link(&m);
                let changed = match state.links.get(&l.name) {
                    Some(&(index, up)) => index != l.index || up != l.up,
                    // A relevant link we have not seen (e.g. the parent
                    // appeared after a MissingParent error).
                    None => relevant(&l.name),
                };
                if changed {
                    events.push(link_event(&l.name));
                    full = true;
                }
            }
            RouteNetlinkMessage::DelLink(m) => {
                let l = kernel::parse_link(&m);
                if state.links.contains_key(&l.name)
                    || state.links.values().any(|&(i, _)| i == l.index)
                {
                    events.push(link_event(&l.name));
                    full = true;
                }
            }
            _ => {}
        }
    }
    if events.is_empty() && !full {
        return;
    }
    inner
        .counters
        .drift_events
        .fetch_add(events.len().max(1) as u64, Ordering::Relaxed);
    for e in events {
        let _ = inner.events.send(e);
    }
    let mut writes = 0u64;
    if !full && (!readd.is_empty() || !replace.is_empty()) {
        // Targeted repair: put back exactly the routes that changed.
        let ops: Vec<(RouteKey, u16)> = readd
            .into_iter()
            .map(|k| (k, CREATE_EXCL))
            .chain(replace.into_iter().map(|k| (k, CREATE_REPLACE)))
            .collect();
        let planned: Vec<(RouteKey, u16, crate::kernel::KernelRoute)> = ops
            .iter()
            .filter_map(|(key, flags)| {
                let p = state.plan.get(key)?;
                Some((
                    *key,
                    *flags,
                    crate::kernel::KernelRoute {
                        key: *key,
                        gateway: p.spec.gateway,
                        oif: p.oif,
                        protocol: inner.protocol,
                        kind: RouteType::Unicast,
                        multipath: false,
                    },
                ))
            })
            .collect();
        let futs = planned.iter().map(|(key, flags, k)| {
            let msg = RouteNetlinkMessage::NewRoute(kernel::route_message(
                key,
                k.gateway,
                k.oif,
                inner.protocol,
            ));
            kernel::write(&inner.handle, msg, *flags)
        });
        let results = futures::future::join_all(futs).await;
        for ((key, _, k), r) in planned.iter().zip(&results) {
            if r.is_ok() {
                state.ours.insert(*key, k.clone());
            }
        }
        writes += results.len() as u64;
        inner
            .counters
            .writes
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        // Anything but "already there" (a device gone, a network down):
        // fall back to a full re-apply, which reports it.
        if results.iter().any(|r| matches!(r, Err(e) if *e != EEXIST)) {
            full = true;
        }
    }
    if full {
        inner.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        match inner.apply_locked(state, &desired).await {
            Ok(report) => writes += report.kernel_writes,
            Err(e) => tracing::warn!(error = %e, "drift repair: re-apply failed"),
        }
    }
    if writes > 0 {
        inner.counters.repairs.fetch_add(1, Ordering::Relaxed);
        inner
            .counters
            .repair_writes
            .fetch_add(writes, Ordering::Relaxed);
        let _ = inner.events.send(DriftEvent::Repaired { writes });
    }
}

fn link_event(name: &str) -> DriftEvent {
    match overlay_core::InterfaceName::parse("link", name) {
        Ok(n) => DriftEvent::Link(n),
        Err(_) => DriftEvent::Overrun,
    }
}
