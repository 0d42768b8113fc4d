//! Incremental updates: single routes changed on top of the last full
//! apply, without any dump, from what that apply found (kept current by
//! the drift watcher).

use std::collections::{HashMap, HashSet};

use overlay_core::{
    ApplyReport, DesiredNodeState, InterfaceName, ProgrammerError, RouteChanges, RouteKey,
    RouteResult, RouteScope, RouteSpec,
};

use crate::checks::{self, Kept};
use crate::read::{self, Link};
use crate::route_writes::{Decision, KnownRoutes, RouteWrite, decide, outcomes, send_route_writes};
use crate::state::{Inner, State};
use crate::write::RouteAdd;

/// The upserts of an update, checked and decided.
struct UpsertPlan {
    /// Each route's result where known without the kernel.
    results: Vec<Option<RouteResult>>,
    /// The device each route goes out of.
    oifs: Vec<Option<u32>>,
    writes: Vec<RouteWrite>,
}

impl Inner {
    /// Applies `changes` on top of the last full apply without dumping
    /// anything; the caller holds the state lock.
    pub(crate) async fn update_locked(
        &self,
        state: &mut State,
        changes: &RouteChanges,
    ) -> Result<ApplyReport, ProgrammerError> {
        let unsupported = || ProgrammerError::Unsupported {
            call: "update before the first successful full apply".into(),
        };
        if !state.synced {
            return Err(unsupported());
        }
        let Some(mut desired) = state.desired.take() else {
            return Err(unsupported());
        };
        let mut report = ApplyReport::default();
        let result = self
            .update_inner(state, &mut desired, changes, &mut report)
            .await;
        state.desired = Some(desired);
        result.map(|()| report)
    }

    async fn update_inner(
        &self,
        state: &mut State,
        desired: &mut DesiredNodeState,
        changes: &RouteChanges,
        report: &mut ApplyReport,
    ) -> Result<(), ProgrammerError> {
        let upsert_keys: HashSet<RouteKey> = changes.upsert.iter().map(RouteSpec::key).collect();
        // Removals first. A removal whose key comes back in `upsert` is a
        // replace: the upsert writes over it.
        let (mut ops, removed_specs) =
            self.plan_update_removals(state, desired, changes, &upsert_keys);
        let n_dels = ops.len();
        let mut upserts = self.plan_upserts(state, desired, &changes.upsert).await?;
        ops.append(&mut upserts.writes);
        report.kernel_writes = ops.len() as u64;
        self.count_writes(ops.len() as u64);
        let mut removed_specs = removed_specs.into_iter();
        let mut known = KnownRoutes {
            ours: &mut state.ours,
            foreign: &mut state.foreign,
            direct: &mut state.direct,
            protocol: self.protocol,
        };
        for (k, (op, answer)) in send_route_writes(self, ops).await.into_iter().enumerate() {
            if k < n_dels {
                if let Some(spec) = removed_specs.next() {
                    known.deleted(op.key, spec, answer, report)?;
                }
                continue;
            }
            let Some(i) = op.route else { continue };
            let result = known.added(&op, &changes.upsert[i], upserts.oifs[i], answer, report)?;
            upserts.results[i] = Some(result);
        }
        let links = &state.all_links;
        let name_of = |oif: Option<u32>| {
            let index = oif?;
            let l = links.values().find(|l| l.index == index)?;
            InterfaceName::parse("device", &l.name).ok()
        };
        report.routes = outcomes(
            &changes.upsert,
            upserts.results,
            upserts.oifs,
            name_of,
            &mut state.scope,
        );
        follow_last_report(state, changes, &upsert_keys, report);
        Ok(())
    }

    /// The deletes of `changes.remove` (dropped from `desired`), each with
    /// the route as reported: only our routes in place whose key no other
    /// desired route or upsert takes, in scope, never a default route.
    fn plan_update_removals(
        &self,
        state: &mut State,
        desired: &mut DesiredNodeState,
        changes: &RouteChanges,
        upsert_keys: &HashSet<RouteKey>,
    ) -> (Vec<RouteWrite>, Vec<RouteSpec>) {
        let mut scope = desired.scope.clone();
        scope.extend(&state.scope);
        let mut deletes = Vec::new();
        let mut specs = Vec::new();
        for r in &changes.remove {
            let key = r.key();
            let before = desired.routes.len();
            desired.routes.retain(|d| d != r);
            if desired.routes.len() != before {
                // It was desired: its table and device are in scope.
                add_to_scope(&mut scope, state, r, &key);
            }
            if upsert_keys.contains(&key) || desired.routes.iter().any(|d| d.key() == key) {
                continue;
            }
            state.intents.remove(&key);
            let Some(k) = state.ours.get(&key) else {
                continue; // nothing of ours there
            };
            let device = match checks::removable(k, |i| state.link_name(i), &scope) {
                Ok(device) => device,
                Err(kept) => {
                    log_kept(r, kept);
                    continue;
                }
            };
            let names: HashMap<u32, String> = k
                .oif
                .zip(device)
                .map(|(i, n)| (i, n.to_owned()))
                .into_iter()
                .collect();
            specs.push(read::kernel_route_spec(k, &names));
            deletes.push(RouteWrite::delete(key, k.oif, self.protocol));
        }
        (deletes, specs)
    }

    /// Checks each upsert (against the earlier upserts and the links),
    /// decides what it needs, and records it in `desired` and the intents.
    async fn plan_upserts(
        &self,
        state: &mut State,
        desired: &mut DesiredNodeState,
        upsert: &[RouteSpec],
    ) -> Result<UpsertPlan, ProgrammerError> {
        let n = upsert.len();
        let mut plan = UpsertPlan {
            results: vec![None; n],
            oifs: vec![None; n],
            writes: Vec::new(),
        };
        let mut seen: HashMap<RouteKey, usize> = HashMap::with_capacity(n);
        for (i, spec) in upsert.iter().enumerate() {
            let key = spec.key();
            if let Err(m) = checks::unique_key(spec, seen.get(&key).map(|&j| &upsert[j])) {
                // Kept beside the first, as a full apply would report it.
                desired.routes.push(spec.clone());
                plan.results[i] = Some(RouteResult::Failed(m));
                continue;
            }
            seen.insert(key, i);
            desired.routes.retain(|d| d.key() != key);
            desired.routes.push(spec.clone());
            let dev_oif = match self.check_upsert_device(state, spec).await? {
                Ok(dev_oif) => dev_oif,
                Err(m) => {
                    state.intents.remove(&key);
                    plan.results[i] = Some(RouteResult::Failed(m));
                    continue;
                }
            };
            let foreign = state.foreign.get(&key).map_or(&[][..], Vec::as_slice);
            let decision = decide(
                spec,
                &key,
                dev_oif,
                state.ours.get(&key),
                foreign,
                &state.direct,
            );
            state.intents.insert(key, decision.intent(spec, dev_oif));
            plan.decided(i, key, spec, decision, self.protocol);
        }
        Ok(plan)
    }

    /// Checks 2 and 3 of an upsert: the gateway's family, then its device
    /// (looked up when the last full apply did not see it, and watched from
    /// now on). The device's index, or the failure's message.
    async fn check_upsert_device(
        &self,
        state: &mut State,
        spec: &RouteSpec,
    ) -> Result<Result<Option<u32>, String>, ProgrammerError> {
        if let Err(m) = checks::gateway_family(spec) {
            return Ok(Err(m));
        }
        let link = match &spec.device {
            Some(d) => self.cached_link(state, d).await?,
            None => None,
        };
        if let (Some(d), Some(l)) = (&spec.device, &link) {
            state.watched_links.insert(d.to_string(), (l.index, l.up));
        }
        Ok(checks::device_exists(spec, |_| link.map(|l| l.index)))
    }

    /// The link named `name` as the last full apply saw it, or asked for
    /// alone (not a dump) when it has appeared since.
    async fn cached_link(
        &self,
        state: &mut State,
        name: &InterfaceName,
    ) -> Result<Option<Link>, ProgrammerError> {
        if let Some(l) = state.all_links.get(name.as_str()) {
            return Ok(Some(l.clone()));
        }
        let l = read::get_link(&self.handle, name.as_str()).await?;
        if let Some(l) = &l {
            state.all_links.insert(l.name.clone(), l.clone());
        }
        Ok(l)
    }
}

impl UpsertPlan {
    /// Takes in `decision` for upsert `i`, `spec` (key `key`).
    fn decided(
        &mut self,
        i: usize,
        key: RouteKey,
        spec: &RouteSpec,
        decision: Decision,
        protocol: u8,
    ) {
        match decision {
            Decision::Unreachable(m) => self.results[i] = Some(RouteResult::Failed(m)),
            Decision::InPlace(oif) => {
                self.oifs[i] = oif;
                self.results[i] = Some(RouteResult::Unchanged);
            }
            // What the last full apply and the drift watcher saw on the
            // key may be out of date (a route added a moment ago, one
            // flushed with its link): the write goes out, and a foreign
            // route on the key answers EEXIST.
            Decision::Write { oif, add } => {
                self.oifs[i] = oif;
                self.writes
                    .push(RouteWrite::add(i, key, spec, oif, protocol, add));
            }
            // What the last full apply and the drift watcher saw on the
            // key may be out of date (a route flushed with its link, say):
            // the write goes out, and a route overlay did not install on
            // the key answers EEXIST.
            Decision::Foreign { oif, .. } => {
                self.oifs[i] = oif;
                self.writes
                    .push(RouteWrite::add(i, key, spec, oif, protocol, RouteAdd::New));
            }
            Decision::TakeOver { oif, found } => {
                self.oifs[i] = oif;
                self.writes
                    .push(RouteWrite::take_over(i, key, spec, oif, protocol, found));
            }
        }
    }
}

/// Adds the table of `r`, a desired route being removed, and the device it
/// went out of to `scope`.
fn add_to_scope(scope: &mut RouteScope, state: &State, r: &RouteSpec, key: &RouteKey) {
    scope.add_route(r);
    if let Some(n) = state
        .intents
        .get(key)
        .and_then(|p| p.oif)
        .and_then(|o| state.link_name(o))
        .and_then(|n| InterfaceName::parse("device", n).ok())
    {
        scope.devices.insert(n);
    }
}

/// Says why removed route `r` stays in the kernel.
fn log_kept(r: &RouteSpec, kept: Kept) {
    match kept {
        Kept::DefaultRoute => {
            tracing::debug!(route = %r, "not removing a default route: overlay never removes one");
        }
        Kept::UnnamedDevice => {
            tracing::debug!(route = %r, "not removing a route out of a device overlay cannot name");
        }
        Kept::OutOfScope => {
            tracing::debug!(route = %r, "not removing a route outside the tables and devices overlay works in");
        }
    }
}

/// Makes the last report follow an update: outcomes of the routes desired
/// now.
fn follow_last_report(
    state: &mut State,
    changes: &RouteChanges,
    upsert_keys: &HashSet<RouteKey>,
    report: &ApplyReport,
) {
    let Some(last) = &mut state.last_report else {
        return;
    };
    last.routes
        .retain(|o| !upsert_keys.contains(&o.route.key()));
    last.routes.retain(|o| !changes.remove.contains(&o.route));
    last.routes.extend(report.routes.iter().cloned());
    last.routes_removed = report.routes_removed.clone();
    last.adopted = report.adopted.clone();
    last.interface_adopted = false;
    last.kernel_writes = report.kernel_writes;
    last.interface_created = false;
    last.interface_up = false;
    last.address_added = None;
    last.addresses_removed.clear();
}
