//! Planning: what each StaticRoute (or legacy subnet) asks of this node,
//! checked before anything reaches the programmer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::{AgentConfig, LastPass, checks};
use crate::model::{DiscoveredRoute, NodeInfo, OverlayInterface, RouteChanges, RouteOutcome};
use crate::model::{RouteResult, RouteSpec, RouteState};
use crate::parse::Cidr;
use crate::traits::{GatewayChoice, RouteReport, StaticRouteRecord, StaticRouteRule, StoreEvent};

pub(super) use crate::model::RouteKey;

/// Gateway discovery results of one pass, by prefix.
pub(super) type Discovery = HashMap<Cidr, Result<DiscoveredRoute, String>>;

/// A route's state on this node, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outcome {
    pub device: String,
    pub gateway: String,
    pub state: RouteState,
    pub message: String,
}

impl Outcome {
    fn failed(message: String) -> Self {
        Self {
            device: String::new(),
            gateway: String::new(),
            state: RouteState::Failed,
            message,
        }
    }
}

/// One route the node should have (or why not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PlannedRoute {
    pub table: Option<u32>,
    pub status: Outcome,
    /// The route to program; `None` when refused, failed or pending.
    pub route: Option<RouteSpec>,
}

/// A StaticRoute not planned yet.
pub(super) struct Unplanned {
    spec: Result<StaticRouteRule, String>,
    deleting: bool,
}

impl From<&StaticRouteRecord> for Unplanned {
    fn from(r: &StaticRouteRecord) -> Self {
        Unplanned {
            spec: r.spec.clone(),
            deleting: r.deleting,
        }
    }
}

/// What one route asks for.
pub(super) struct RouteRequest {
    pub subnet: Cidr,
    pub gateway: GatewayChoice,
    pub table: Option<u32>,
    pub metric: Option<u32>,
}

impl RouteRequest {
    /// A legacy subnet: main table, via the gateway covering `from`.
    pub fn legacy(subnet: Cidr, from: Cidr) -> Self {
        Self {
            subnet,
            gateway: GatewayChoice::Discover(from),
            table: None,
            metric: None,
        }
    }
}

impl Unplanned {
    /// The request, `Err` with a Failed plan for an invalid spec, `None`
    /// when the route does not concern this node (not selected, or being
    /// deleted).
    pub fn into_request(self, ctx: &PlanContext<'_>) -> Option<Result<RouteRequest, PlannedRoute>> {
        if self.deleting {
            return None;
        }
        let spec = match self.spec {
            Ok(s) => s,
            Err(msg) => {
                return Some(Err(PlannedRoute {
                    table: None,
                    status: Outcome::failed(format!("invalid spec: {msg}")),
                    route: None,
                }));
            }
        };
        if !spec.selector.matches(&ctx.node.labels) {
            return None;
        }
        Some(Ok(RouteRequest {
            subnet: spec.subnet,
            gateway: spec.gateway,
            table: spec.table,
            metric: spec.metric,
        }))
    }
}

/// What planning needs to know about the node.
pub(super) struct PlanContext<'a> {
    pub cfg: &'a AgentConfig,
    pub node: &'a NodeInfo,
    pub overlay: Option<&'a OverlayInterface>,
    pub gateway: Option<IpAddr>,
}

impl PlanContext<'_> {
    /// Plans one route; `found` is the discovery result for a
    /// `gatewayFrom` route.
    pub fn plan(
        &self,
        req: RouteRequest,
        found: Option<Result<DiscoveredRoute, String>>,
    ) -> PlannedRoute {
        let refuse = |status| PlannedRoute {
            table: req.table,
            status,
            route: None,
        };
        if let Some(why) =
            checks::refuse_route(&req.subnet, self.node, self.overlay, &self.cfg.protected)
        {
            return refuse(Outcome::failed(format!("refused: {why}")));
        }
        let (gateway, device) = match (&req.gateway, self.overlay, self.gateway) {
            (GatewayChoice::Overlay, Some(o), Some(g)) => (g, Some(o.name.clone())),
            (GatewayChoice::Overlay, Some(_), None) => {
                return refuse(Outcome {
                    device: self.cfg.interface_label.to_string(),
                    ..Outcome::failed("the overlay subnet has no gateway; set spec.gateway or give the IPAM subnet a gateway".into())
                });
            }
            (GatewayChoice::Overlay, None, _) => {
                return refuse(Outcome {
                    state: RouteState::Pending,
                    ..Outcome::failed("waiting for this node's overlay IP (NodeOverlayIp)".into())
                });
            }
            (GatewayChoice::Fixed(g), _, _) => (*g, None),
            (GatewayChoice::Discover(_), _, _) => match found {
                Some(Ok(d)) => (d.gateway, Some(d.device)),
                Some(Err(e)) => return refuse(Outcome::failed(e)),
                None => return refuse(Outcome::failed("gateway discovery did not run".into())),
            },
        };
        PlannedRoute {
            table: req.table,
            status: Outcome {
                device: device.as_ref().map(|d| d.to_string()).unwrap_or_default(),
                gateway: gateway.to_string(),
                state: RouteState::Applied,
                message: String::new(),
            },
            route: Some(RouteSpec {
                destination: req.subnet,
                gateway: Some(gateway),
                device,
                table: req.table,
                metric: req.metric,
            }),
        }
    }
}

/// One kernel route per (destination, table, metric): the first
/// StaticRoute by name wins and later ones are reported; legacy routes
/// yield to StaticRoutes silently. Returns the keys claimed more than once.
pub(super) fn settle_duplicates(
    planned: &mut BTreeMap<String, PlannedRoute>,
    legacy: &mut [PlannedRoute],
) -> BTreeSet<RouteKey> {
    let mut seen: HashMap<RouteKey, String> = HashMap::new();
    let mut contested = BTreeSet::new();
    for (name, p) in planned.iter_mut() {
        let Some(r) = &p.route else { continue };
        let key = r.key();
        if let Some(first) = seen.get(&key) {
            p.status = Outcome {
                state: RouteState::Failed,
                message: format!("{} is already routed by {first}", r.destination),
                ..p.status.clone()
            };
            p.route = None;
            contested.insert(key);
        } else {
            seen.insert(key, name.clone());
        }
    }
    for p in legacy.iter_mut() {
        let Some(r) = &p.route else { continue };
        let key = r.key();
        if let std::collections::hash_map::Entry::Vacant(v) = seen.entry(key) {
            v.insert("static-routes ConfigMap".into());
        } else {
            p.route = None;
            contested.insert(key);
        }
    }
    contested
}

/// Routes waiting for a usable overlay address say that the address is
/// invalid and the route in place is kept.
pub(super) fn mark_kept(planned: &mut BTreeMap<String, PlannedRoute>, why: &str) {
    planned.values_mut().for_each(|p| mark_kept_one(p, why));
}

/// [`mark_kept`] for one route.
pub(super) fn mark_kept_one(p: &mut PlannedRoute, why: &str) {
    if p.status.state == RouteState::Pending {
        p.status.message = format!(
            "this node's NodeOverlayIp address is invalid ({why}); the route in place is kept"
        );
    }
}

/// Takes the programmer's outcome into each planned route's status: the
/// kernel's refusal, or the device the route really uses.
pub(super) fn record_outcomes<'a>(
    planned: impl Iterator<Item = &'a mut PlannedRoute>,
    outcomes: &[RouteOutcome],
) {
    let by_route: HashMap<&RouteSpec, &RouteOutcome> =
        outcomes.iter().map(|o| (&o.route, o)).collect();
    for p in planned {
        let Some(o) = p.route.as_ref().and_then(|r| by_route.get(r)) else {
            continue;
        };
        match &o.result {
            RouteResult::Failed(msg) => {
                p.status.state = RouteState::Failed;
                p.status.message = msg.clone();
            }
            _ => {
                if let Some(d) = &o.device {
                    p.status.device = d.to_string();
                }
            }
        }
    }
}

/// The report of StaticRoute `name`'s plan.
pub(super) fn report(name: &str, p: &PlannedRoute) -> RouteReport {
    RouteReport {
        route: name.to_owned(),
        device: p.status.device.clone(),
        gateway: p.status.gateway.clone(),
        table: p.table,
        state: p.status.state,
        message: p.status.message.clone(),
    }
}

/// The reports of the StaticRoutes' plans, by route name.
pub(super) fn reports(planned: &BTreeMap<String, PlannedRoute>) -> BTreeMap<String, RouteReport> {
    planned
        .iter()
        .map(|(name, p)| (name.clone(), report(name, p)))
        .collect()
}

/// The kernel changes that take `last` to `plans` (new plans by route name;
/// `None`: the route no longer concerns the node). `None` when they need a
/// full pass: a key claimed by another route, now or before.
pub(super) fn changes(
    last: &LastPass,
    plans: &BTreeMap<String, Option<PlannedRoute>>,
) -> Option<RouteChanges> {
    let mut out = RouteChanges::default();
    let mut batch: HashMap<RouteKey, &str> = HashMap::new();
    for (name, plan) in plans {
        let old = last.routes.get(name).and_then(|p| p.route.as_ref());
        let new = plan.as_ref().and_then(|p| p.route.as_ref());
        for r in old.iter().chain(new.iter()) {
            if last.contested.contains(&r.key()) {
                return None;
            }
        }
        if let Some(r) = new {
            let key = r.key();
            // Claimed by a route outside this batch, by the legacy list, or
            // by another route of this batch.
            let other = last
                .claims
                .get(&key)
                .is_some_and(|owner| owner != name && !plans.contains_key(owner));
            if other || last.legacy_keys.contains(&key) || batch.insert(key, name).is_some() {
                return None;
            }
        }
        if old != new {
            out.remove.extend(old.cloned());
            out.upsert.extend(new.cloned());
        }
    }
    Some(out)
}

/// The route keys claimed by StaticRoute plans, by owner name.
pub(super) fn claims(planned: &BTreeMap<String, PlannedRoute>) -> HashMap<RouteKey, String> {
    planned
        .iter()
        .filter_map(|(name, p)| p.route.as_ref().map(|r| (r.key(), name.clone())))
        .collect()
}

/// The StaticRoutes a batch of events changes (`None`: deleted); `None`
/// when a watch restarted and only a full pass can tell.
pub(super) fn changed_records(
    events: &[StoreEvent<StaticRouteRecord>],
) -> Option<BTreeMap<String, Option<Unplanned>>> {
    let mut next = BTreeMap::new();
    for ev in events {
        match ev {
            StoreEvent::Applied(r) => {
                next.insert(r.name.clone(), Some(Unplanned::from(r)));
            }
            StoreEvent::Deleted(name) => {
                next.insert(name.clone(), None);
            }
            StoreEvent::Restarted(_) => return None,
        }
    }
    Some(next)
}

/// Folds the plans of changed StaticRoutes and the kernel's outcomes into
/// the last pass: their routes, claims and reports. Returns the reports of
/// the routes concerned, and whether any report changed.
pub(super) fn fold_in(
    last: &mut LastPass,
    plans: BTreeMap<String, Option<PlannedRoute>>,
    outcomes: &[RouteOutcome],
) -> (BTreeMap<String, RouteReport>, bool) {
    let mut reports = BTreeMap::new();
    let mut changed = false;
    for (name, plan) in plans {
        let previous = last.routes.remove(&name);
        if let Some(r) = previous.as_ref().and_then(|p| p.route.as_ref())
            && last.claims.get(&r.key()) == Some(&name)
        {
            last.claims.remove(&r.key());
        }
        let new = plan.map(|mut p| {
            if let (Some(why), None) = (&last.overlay.problem, &last.overlay.iface) {
                mark_kept_one(&mut p, why);
            }
            match &previous {
                // Not rewritten: what the kernel said last time still holds
                // (a failure is retried by the resync).
                Some(old) if p.route.is_some() && old.route == p.route => {
                    p.status = old.status.clone();
                }
                _ => record_outcomes(std::iter::once(&mut p), outcomes),
            }
            let r = report(&name, &p);
            if let Some(route) = &p.route {
                last.claims.insert(route.key(), name.clone());
            }
            last.routes.insert(name.clone(), p);
            r
        });
        if last.reports.get(&name) != new.as_ref() {
            changed = true;
            match &new {
                Some(r) => last.reports.insert(name.clone(), r.clone()),
                None => last.reports.remove(&name),
            };
        }
        if let Some(r) = new {
            reports.insert(name, r);
        }
    }
    (reports, changed)
}
