//! A read-only preview of a full apply ([`crate::NetlinkProgrammer::preview`]):
//! what the agent would do to the kernel as it is now, for `overlayctl
//! migrate plan` on a node. It dumps links, addresses and routes, and runs
//! the very checks and decisions a full apply runs ([`find_overlay`],
//! [`needs_recreate`], [`address_stays`], [`plan_routes`],
//! [`plan_removals`]), with the overlay interface's changes simulated, so
//! that preview and apply cannot disagree. Nothing is written.

use std::collections::HashMap;
use std::fmt;

use ipnetwork::IpNetwork;
use netlink_packet_route::link::{InfoKind, MacVlanMode};
use overlay_core::model::MAIN_TABLE;
use overlay_core::{
    DesiredNodeState, InterfaceName, OverlayInterface, ProgrammerError, RouteResult, RouteSpec,
};
use serde::Serialize;

use crate::apply::{FoundRoutes, RoutePlan, device_name, full_plan, link_names};
use crate::interface::{LinkFound, address_stays, find_overlay, needs_recreate};
use crate::read::{Addr, Link};
use crate::state::Inner;

/// What a full apply of a desired state would do to the kernel as it is
/// now, found without writing anything
/// ([`crate::NetlinkProgrammer::preview`]). Serializes to JSON; its
/// [`Display`](fmt::Display) (one line per item, [`Preview::lines`]) is
/// for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preview {
    /// The overlay interface; `None` when the desired state has none.
    pub interface: Option<InterfacePreview>,
    /// Each desired route, in the order given.
    pub routes: Vec<RoutePreview>,
    /// Routes of ours that are no longer desired and would be removed.
    pub removals: Vec<RouteSpec>,
}

/// What an apply would do with the overlay interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfacePreview {
    /// The interface's name.
    pub name: InterfaceName,
    /// Its parent.
    pub parent: InterfaceName,
    /// The overlay address it should hold.
    pub address: IpNetwork,
    /// What happens to the interface.
    #[serde(flatten)]
    pub action: InterfaceAction,
    /// The overlay address is on it already and stays (no gap).
    pub address_in_place: bool,
    /// Other addresses on it that would be removed.
    pub addresses_removed: Vec<IpNetwork>,
}

/// What happens to the overlay interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum InterfaceAction {
    /// There is none: a macvlan of the parent is created (bridge mode).
    Create,
    /// Overlay's already (it carries [`crate::OWNED_LINK_ALIAS`]); kept.
    AlreadyOurs,
    /// Overlay's, but on another parent: deleted and created again, which
    /// loses its addresses and the routes through it for a moment.
    Recreate,
    /// An unmarked macvlan of the parent without any alias, as the
    /// original deployment left it: taken over in place (marked; index,
    /// mode, MAC address and addresses kept).
    Adopt,
    /// Refused: the apply stops here, before any route.
    Conflict {
        /// Why, and what to do.
        reason: String,
    },
}

/// What an apply would do with one desired route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutePreview {
    /// The route.
    pub route: RouteSpec,
    /// What happens to it.
    #[serde(flatten)]
    pub action: RouteAction,
    /// The device it would go out of; `None` for a conflict.
    pub device: Option<InterfaceName>,
}

/// What happens to one desired route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RouteAction {
    /// Nothing holds its key: installed.
    Install,
    /// Ours already, as desired: nothing written.
    AlreadyOurs,
    /// Ours, with another gateway or device: replaced.
    Replace,
    /// A route added with `ip route` (protocol boot) that is exactly this
    /// route: taken over with one atomic replace into overlay's protocol.
    Adopt,
    /// Refused (a route overlay did not install holds the key, the gateway
    /// is not on-link, ...): left as it is.
    Conflict {
        /// Why, and what to do.
        reason: String,
    },
}

impl Preview {
    /// True when the overlay interface is refused: the apply fails before
    /// it gets to any route.
    pub fn blocked(&self) -> bool {
        self.interface
            .as_ref()
            .is_some_and(|i| matches!(i.action, InterfaceAction::Conflict { .. }))
    }

    /// True when the apply would write nothing at all.
    pub fn is_noop(&self) -> bool {
        let interface_done = self.interface.as_ref().is_none_or(|i| match i.action {
            InterfaceAction::AlreadyOurs => i.address_in_place && i.addresses_removed.is_empty(),
            InterfaceAction::Conflict { .. } => true,
            _ => false,
        });
        interface_done
            && (self.blocked()
                || (self.removals.is_empty()
                    && self.routes.iter().all(|r| {
                        matches!(
                            r.action,
                            RouteAction::AlreadyOurs | RouteAction::Conflict { .. }
                        )
                    })))
    }

    /// One line per item, for people: the interface (and its addresses),
    /// each route, each removal.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(i) = &self.interface {
            interface_lines(i, &mut out);
        }
        for r in &self.routes {
            let dev = match (&r.device, &r.route.device) {
                (Some(d), None) => format!(" (dev {d})"),
                _ => String::new(),
            };
            let what = match &r.action {
                RouteAction::Install => "install".to_owned(),
                RouteAction::AlreadyOurs => "already ours, nothing to do".to_owned(),
                RouteAction::Replace => "replace ours (other gateway or device)".to_owned(),
                RouteAction::Adopt => {
                    "take over the route added with `ip route` (exactly this route; one atomic replace, no packet lost)".to_owned()
                }
                RouteAction::Conflict { reason } => format!("conflict, left alone: {reason}"),
            };
            out.push(format!("route {}{dev}: {what}", r.route));
        }
        for r in &self.removals {
            out.push(format!("route {r}: ours and no longer desired: remove"));
        }
        out
    }
}

/// The lines of the overlay interface's preview.
fn interface_lines(i: &InterfacePreview, out: &mut Vec<String>) {
    let what = match &i.action {
        InterfaceAction::Create => "create (macvlan, bridge mode)".to_owned(),
        InterfaceAction::AlreadyOurs => "already ours".to_owned(),
        InterfaceAction::Recreate => {
            "ours on another parent: recreate (its addresses and routes go for a moment)".to_owned()
        }
        InterfaceAction::Adopt => {
            "take over in place (mark it; keep its index, mode, MAC address and addresses)"
                .to_owned()
        }
        InterfaceAction::Conflict { reason } => {
            format!("conflict, left alone; the apply stops here, before any route: {reason}")
        }
    };
    out.push(format!(
        "interface {} (macvlan of {}): {what}",
        i.name, i.parent
    ));
    if matches!(i.action, InterfaceAction::Conflict { .. }) {
        return;
    }
    out.push(if i.address_in_place {
        format!("address {} on {}: in place, stays", i.address, i.name)
    } else {
        format!("address {} on {}: add", i.address, i.name)
    });
    for a in &i.addresses_removed {
        out.push(format!(
            "address {a} on {}: not the overlay address: remove",
            i.name
        ));
    }
}

impl fmt::Display for Preview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in self.lines() {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// The index the preview gives an overlay interface the apply would
/// create (no real link has index 0).
const PLANNED_INDEX: u32 = 0;

impl Inner {
    /// Dumps the kernel and tells what a full apply of `desired` would do,
    /// writing nothing.
    pub(crate) async fn preview(
        &self,
        desired: &DesiredNodeState,
    ) -> Result<Preview, ProgrammerError> {
        // One dump at a time per socket: wait for a running apply.
        let state = self.state.lock().await;
        let mut links = self.dump_links().await?;
        let addrs = self.dump_addrs().await?;
        let mut found = FoundRoutes::sort(self.dump_routes().await?, self.protocol);
        let interface = desired
            .overlay
            .as_ref()
            .map(|ov| preview_interface(ov, &mut links, &addrs, &mut found));
        let (plan, removals) = full_plan(desired, &links, &found, &state, self.protocol);
        let removals = removals.specs;
        let names = link_names(&links);
        let routes = route_previews(&desired.routes, plan, |oif| device_name(&names, oif));
        Ok(Preview {
            interface,
            routes,
            removals,
        })
    }
}

/// What the apply would do with the overlay interface `ov`; `links` and
/// `found` are changed as the apply would change the kernel (a created
/// link, a recreated one's routes gone, the overlay address's connected
/// network), so the routes are planned against that.
fn preview_interface(
    ov: &OverlayInterface,
    links: &mut HashMap<String, Link>,
    addrs: &[Addr],
    found: &mut FoundRoutes,
) -> InterfacePreview {
    let mut preview = InterfacePreview {
        name: ov.name.clone(),
        parent: ov.parent.clone(),
        address: ov.address,
        action: InterfaceAction::AlreadyOurs,
        address_in_place: false,
        addresses_removed: Vec::new(),
    };
    let (parent, link) = match find_overlay(ov, links, addrs) {
        Ok(x) => x,
        Err(e) => {
            preview.action = InterfaceAction::Conflict {
                reason: e.to_string(),
            };
            return preview;
        }
    };
    let kept = match link {
        LinkFound::Missing => {
            preview.action = InterfaceAction::Create;
            None
        }
        LinkFound::Ours(l) if needs_recreate(&l, &parent) => {
            preview.action = InterfaceAction::Recreate;
            // The kernel takes the old link's routes along.
            found.ours.retain(|_, r| r.oif != Some(l.index));
            for on_key in found.foreign.values_mut() {
                on_key.retain(|r| r.oif != Some(l.index));
            }
            found.foreign.retain(|_, on_key| !on_key.is_empty());
            found.direct.retain(|(_, o, _)| *o != Some(l.index));
            None
        }
        LinkFound::Ours(l) => Some(l),
        LinkFound::TakeOver(l) => {
            preview.action = InterfaceAction::Adopt;
            Some(l)
        }
    };
    let index = match kept {
        Some(l) => {
            for a in addrs.iter().filter(|a| a.index == l.index) {
                if a.net == ov.address {
                    preview.address_in_place = true;
                } else if !address_stays(ov, a) {
                    preview.addresses_removed.push(a.net);
                    let gone = (network(a.net), Some(l.index), MAIN_TABLE);
                    found.direct.retain(|d| *d != gone);
                }
            }
            l.index
        }
        None => {
            links.insert(ov.name.to_string(), planned_link(ov, &parent));
            PLANNED_INDEX
        }
    };
    // The overlay address's connected network, once it is on the link.
    let max = if ov.address.is_ipv4() { 32 } else { 128 };
    let connected = (network(ov.address), Some(index), MAIN_TABLE);
    if ov.address.prefix() < max && !found.direct.contains(&connected) {
        found.direct.push(connected);
    }
    preview
}

/// The network of address `net` (host bits cleared).
fn network(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// The overlay interface as the apply would create it.
fn planned_link(ov: &OverlayInterface, parent: &Link) -> Link {
    Link {
        index: PLANNED_INDEX,
        name: ov.name.to_string(),
        up: true,
        kind: Some(InfoKind::MacVlan),
        parent: Some(parent.index),
        macvlan_mode: Some(MacVlanMode::Bridge),
        alias: Some(crate::OWNED_LINK_ALIAS.to_owned()),
    }
}

/// Each of `routes` with what `plan` decided for it and the device it
/// would go out of (`name_of` names a link).
fn route_previews(
    routes: &[RouteSpec],
    plan: RoutePlan,
    name_of: impl Fn(Option<u32>) -> Option<InterfaceName>,
) -> Vec<RoutePreview> {
    let mut actions: Vec<RouteAction> = plan
        .results
        .into_iter()
        .map(|r| match r {
            Some(RouteResult::Failed(reason)) => RouteAction::Conflict { reason },
            _ => RouteAction::AlreadyOurs,
        })
        .collect();
    for w in plan.adds {
        let Some(a) = w.route.and_then(|i| actions.get_mut(i)) else {
            continue;
        };
        *a = match (&w.takes_over, &w.result) {
            (Some(_), _) => RouteAction::Adopt,
            (None, RouteResult::Replaced) => RouteAction::Replace,
            (None, _) => RouteAction::Install,
        };
    }
    routes
        .iter()
        .zip(actions)
        .zip(plan.oifs)
        .map(|((route, action), oif)| RoutePreview {
            device: match action {
                RouteAction::Conflict { .. } => None,
                _ => route.device.clone().or_else(|| name_of(oif)),
            },
            route: route.clone(),
            action,
        })
        .collect()
}
