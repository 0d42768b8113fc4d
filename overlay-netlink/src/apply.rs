//! The full apply: dump links, addresses and routes, make the overlay
//! interface right, check every desired route, then write only the
//! differences and remember what drift repair and updates work from.

use std::collections::{HashMap, HashSet};

use overlay_core::{
    ApplyReport, DesiredNodeState, InterfaceName, ProgrammerError, RouteKey, RouteResult,
    RouteScope, RouteSpec,
};

use crate::checks::{self, Kept};
use crate::read::{self, KernelRoute, Link};
use crate::route_writes::{Decision, KnownRoutes, RouteWrite, decide, outcomes, send_route_writes};
use crate::state::{Direct, ForeignRoutes, Inner, RouteIntent, State, as_direct};

/// The routes a dump found, sorted for the apply.
pub(crate) struct FoundRoutes {
    /// Ours (carrying our protocol), by key.
    pub ours: HashMap<RouteKey, KernelRoute>,
    /// Everybody else's, by key.
    pub foreign: ForeignRoutes,
    /// The direct (connected) routes, whoever's.
    pub direct: Vec<Direct>,
}

impl FoundRoutes {
    /// Sorts dumped `routes` by whether they carry `protocol`.
    pub(crate) fn sort(routes: Vec<KernelRoute>, protocol: u8) -> Self {
        let mut found = FoundRoutes {
            ours: HashMap::new(),
            foreign: ForeignRoutes::new(),
            direct: Vec::new(),
        };
        for r in routes {
            found.direct.extend(as_direct(&r));
            if r.protocol == protocol {
                found.ours.insert(r.key, r);
            } else {
                found.foreign.entry(r.key).or_default().push(r);
            }
        }
        found
    }
}

/// What the apply decided for the desired routes before writing anything.
pub(crate) struct RoutePlan {
    /// Each route's result where known without the kernel (failed,
    /// unchanged); the others get theirs from the kernel's answer.
    pub results: Vec<Option<RouteResult>>,
    /// The device each route goes out of.
    pub oifs: Vec<Option<u32>>,
    /// The desired keys, each with the index of its first route.
    pub seen: HashMap<RouteKey, usize>,
    /// What each key should hold, for drift repair and updates.
    pub intents: HashMap<RouteKey, RouteIntent>,
    /// Adds, replaces and takeovers.
    pub adds: Vec<RouteWrite>,
}

/// What planning one route looks at.
pub(crate) struct PlanInput<'a> {
    pub links: &'a HashMap<String, Link>,
    pub names: &'a HashMap<u32, String>,
    pub found: &'a FoundRoutes,
    pub protocol: u8,
}

impl PlanInput<'_> {
    /// The name of link `oif`, as a device of a route.
    fn device(&self, oif: Option<u32>) -> Option<InterfaceName> {
        device_name(self.names, oif)
    }
}

/// Our stale routes to delete, each with the route as reported.
pub(crate) struct Removals {
    pub deletes: Vec<RouteWrite>,
    pub specs: Vec<RouteSpec>,
}

impl Inner {
    /// Makes the kernel match `desired`; the caller holds the state lock.
    pub(crate) async fn apply_locked(
        &self,
        state: &mut State,
        desired: &DesiredNodeState,
    ) -> Result<ApplyReport, ProgrammerError> {
        state.desired = Some(desired.clone());
        // Until this apply got through its routes, the caches do not
        // describe the kernel for the desired state: no updates.
        state.synced = false;
        let mut report = ApplyReport::default();
        let mut writes = 0u64;
        let result = self
            .apply_inner(state, desired, &mut report, &mut writes)
            .await;
        report.kernel_writes = writes;
        result?;
        state.last_report = Some(report.clone());
        Ok(report)
    }

    async fn apply_inner(
        &self,
        state: &mut State,
        desired: &DesiredNodeState,
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<(), ProgrammerError> {
        let mut links = self.dump_links().await?;
        let overlay_index = match &desired.overlay {
            Some(ov) => Some(self.apply_overlay(ov, &mut links, report, writes).await?),
            None => None,
        };
        let mut found = FoundRoutes::sort(self.dump_routes().await?, self.protocol);
        let (mut plan, removals) = full_plan(desired, &links, &found, state, self.protocol);
        let sent = (removals.deletes.len() + plan.adds.len()) as u64;
        *writes += sent;
        self.count_writes(sent);
        let adds = std::mem::take(&mut plan.adds);
        self.write_routes(
            &mut found,
            removals,
            adds,
            &desired.routes,
            &mut plan,
            report,
        )
        .await?;
        let names = link_names(&links);
        let name_of = |oif| device_name(&names, oif);
        report.routes = outcomes(
            &desired.routes,
            plan.results,
            plan.oifs,
            name_of,
            &mut state.scope,
        );
        remember(state, desired, links, plan.intents, overlay_index, found);
        Ok(())
    }

    /// Sends the deletes, then the adds, and takes in the kernel's answers:
    /// `found` follows them, removals join `report`, adds get their result.
    async fn write_routes(
        &self,
        found: &mut FoundRoutes,
        removals: Removals,
        adds: Vec<RouteWrite>,
        routes: &[RouteSpec],
        plan: &mut RoutePlan,
        report: &mut ApplyReport,
    ) -> Result<(), ProgrammerError> {
        let mut known = KnownRoutes {
            ours: &mut found.ours,
            foreign: &mut found.foreign,
            direct: &mut found.direct,
            protocol: self.protocol,
        };
        let deleted = send_route_writes(self, removals.deletes).await;
        for ((op, answer), spec) in deleted.into_iter().zip(removals.specs) {
            known.deleted(op.key, spec, answer, report)?;
        }
        for (op, answer) in send_route_writes(self, adds).await {
            let Some(i) = op.route else { continue };
            let result = known.added(&op, &routes[i], plan.oifs[i], answer, report)?;
            plan.results[i] = Some(result);
        }
        Ok(())
    }
}

/// The name of link `oif` in `names`, as a device of a route.
pub(crate) fn device_name(names: &HashMap<u32, String>, oif: Option<u32>) -> Option<InterfaceName> {
    oif.and_then(|i| names.get(&i))
        .and_then(|n| InterfaceName::parse("device", n).ok())
}

/// The plan of a full apply of `desired` against the kernel as dumped
/// (`links`, `found`): each route's writes and the stale routes to remove.
/// Apply and preview both plan through this, so they cannot disagree.
pub(crate) fn full_plan(
    desired: &DesiredNodeState,
    links: &HashMap<String, Link>,
    found: &FoundRoutes,
    state: &State,
    protocol: u8,
) -> (RoutePlan, Removals) {
    let names = link_names(links);
    // Where stale routes may be removed: what the caller names, what this
    // process installed or found before, and (while planning) the tables
    // and devices of the desired routes.
    let mut scope = desired.scope.clone();
    scope.extend(&state.scope);
    let input = PlanInput {
        links,
        names: &names,
        found,
        protocol,
    };
    let plan = plan_routes(&desired.routes, &input, &mut scope);
    let removals = if desired.keep_unlisted {
        // The caller could not tell which routes are no longer desired.
        Removals::none()
    } else {
        plan_removals(&found.ours, &plan.seen, &names, &scope, protocol)
    };
    (plan, removals)
}

/// Link names by index.
pub(crate) fn link_names(links: &HashMap<String, Link>) -> HashMap<u32, String> {
    links.values().map(|l| (l.index, l.name.clone())).collect()
}

/// Checks every desired route, then decides what each needs; the tables
/// and devices of the desired routes join `scope`.
pub(crate) fn plan_routes(
    routes: &[RouteSpec],
    input: &PlanInput<'_>,
    scope: &mut RouteScope,
) -> RoutePlan {
    let n = routes.len();
    let mut plan = RoutePlan {
        results: vec![None; n],
        oifs: vec![None; n],
        seen: HashMap::with_capacity(n),
        intents: HashMap::with_capacity(n),
        adds: Vec::new(),
    };
    for (i, spec) in routes.iter().enumerate() {
        scope.add_route(spec);
        let key = spec.key();
        let first = plan.seen.get(&key).map(|&j| &routes[j]);
        if first.is_none() {
            plan.seen.insert(key, i);
        }
        let index_of = |d: &InterfaceName| input.links.get(d.as_str()).map(|l| l.index);
        match checks::validate(spec, first, index_of) {
            Ok(dev_oif) => plan_route(i, spec, key, dev_oif, input, &mut plan, scope),
            Err(m) => plan.results[i] = Some(RouteResult::Failed(m)),
        }
    }
    plan
}

/// Decides what valid route `i`, `spec`, needs: nothing, a write (a new
/// route, a replace of ours, or the takeover of a route added with `ip
/// route` that is exactly this one), or a failure (gateway not on-link,
/// key held by a route overlay did not install).
fn plan_route(
    i: usize,
    spec: &RouteSpec,
    key: RouteKey,
    dev_oif: Option<u32>,
    input: &PlanInput<'_>,
    plan: &mut RoutePlan,
    scope: &mut RouteScope,
) {
    let found = &input.found;
    let existing = found.ours.get(&key);
    let foreign = found.foreign.get(&key).map_or(&[][..], Vec::as_slice);
    let decision = decide(spec, &key, dev_oif, existing, foreign, &found.direct);
    let intent = decision.intent(spec, dev_oif);
    let oif = intent.oif;
    plan.intents.insert(key, intent);
    let protocol = input.protocol;
    let (result, write) = match decision {
        Decision::Unreachable(m) => {
            plan.results[i] = Some(RouteResult::Failed(m));
            return;
        }
        Decision::InPlace(_) => (Some(RouteResult::Unchanged), None),
        Decision::Foreign { message, .. } => (Some(RouteResult::Failed(message)), None),
        Decision::Write { add, .. } => (
            None,
            Some(RouteWrite::add(i, key, spec, oif, protocol, add)),
        ),
        Decision::TakeOver { found, .. } => (
            None,
            Some(RouteWrite::take_over(i, key, spec, oif, protocol, found)),
        ),
    };
    plan.oifs[i] = oif;
    scope.devices.extend(input.device(oif));
    plan.results[i] = result;
    plan.adds.extend(write);
}

impl Removals {
    pub(crate) fn none() -> Self {
        Removals {
            deletes: Vec::new(),
            specs: Vec::new(),
        }
    }
}

/// Deletes of our routes no longer desired (not in `seen`), only in
/// `scope`, never a default route.
pub(crate) fn plan_removals(
    ours: &HashMap<RouteKey, KernelRoute>,
    seen: &HashMap<RouteKey, usize>,
    names: &HashMap<u32, String>,
    scope: &RouteScope,
    protocol: u8,
) -> Removals {
    let mut removals = Removals::none();
    let (mut defaults_kept, mut out_of_scope) = (0usize, 0usize);
    for (key, r) in ours.iter().filter(|(key, _)| !seen.contains_key(key)) {
        let name_of = |i: u32| names.get(&i).map(String::as_str);
        match checks::removable(r, name_of, scope) {
            Ok(_) => {
                removals
                    .deletes
                    .push(RouteWrite::delete(*key, r.oif, protocol));
                removals.specs.push(read::kernel_route_spec(r, names));
            }
            Err(Kept::DefaultRoute) => defaults_kept += 1,
            Err(Kept::UnnamedDevice | Kept::OutOfScope) => out_of_scope += 1,
        }
    }
    if defaults_kept + out_of_scope > 0 {
        tracing::debug!(
            defaults_kept,
            out_of_scope,
            "left routes of ours that are no longer desired in place: default routes are never removed, and routes are removed only in the tables and devices overlay works in"
        );
    }
    removals
}

/// Remembers what drift repair and updates need from this apply.
fn remember(
    state: &mut State,
    desired: &DesiredNodeState,
    links: HashMap<String, Link>,
    intents: HashMap<RouteKey, RouteIntent>,
    overlay_index: Option<u32>,
    found: FoundRoutes,
) {
    let mut watched: HashSet<&str> = HashSet::new();
    if let Some(ov) = &desired.overlay {
        watched.insert(ov.name.as_str());
        watched.insert(ov.parent.as_str());
    }
    watched.extend(
        desired
            .routes
            .iter()
            .filter_map(|r| r.device.as_ref().map(InterfaceName::as_str)),
    );
    state.watched_links = watched
        .into_iter()
        .filter_map(|n| links.get(n).map(|l| (n.to_owned(), (l.index, l.up))))
        .collect();
    state.intents = intents;
    state.overlay_index = overlay_index;
    state.all_links = links;
    state.direct = found.direct;
    state.ours = found.ours;
    state.foreign = found.foreign;
    state.synced = true;
}
