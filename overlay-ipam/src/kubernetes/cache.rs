//! The backend's view of pools, allocations and claims, fed by the watch
//! and by its own writes, and the one decision it makes from it: the next
//! step of a reservation ([`Cache::plan`]).
//!
//! The view may be behind the API server; that costs a request, never an
//! address: every step is a write the API server judges (a create of a
//! taken name fails, a replace of a changed object fails), and a failed
//! step brings the view up to date before the next plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use overlay_core::ippool::{IpAllocation, IpClaim, IpPool, PoolEvent, PoolObject, claim_name};
use overlay_core::{IpamError, Owner, Zone, ippool::allocation_name};

use super::pool::{Judged, ValidPool, judge};
use crate::pools::from_u128;

/// At most this many addresses are looked at per pool and plan: a pool
/// with a free address finds it long before (the cursor starts after the
/// last address handed out).
const MAX_SCAN: u128 = 1 << 20;

/// What a reservation does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Done: the owner's claimed, live allocation.
    Have(IpAllocation),
    /// Make this held allocation of the owner live again.
    Unhold(IpAllocation),
    /// Claim this live allocation of the owner.
    Claim(IpAllocation),
    /// Delete this allocation: another owner's expired hold.
    Delete(IpAllocation),
    /// Delete this claim: its address is someone else's, or in no pool
    /// (run only after a fresh read of the allocation agrees).
    Unclaim(IpClaim),
    /// Create this allocation.
    Allocate(IpAllocation),
}

/// Pools, allocations and claims as last seen.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    pools: BTreeMap<String, IpPool>,
    allocations: BTreeMap<String, IpAllocation>,
    claims: BTreeMap<String, IpClaim>,
    /// Allocation names by owner.
    by_owner: HashMap<Owner, BTreeSet<String>>,
    /// Allocations this process deleted (name, uid) whose deletion the
    /// watch has not shown yet: an older event of one of them must not
    /// bring it back into the view.
    deleted: BTreeSet<(String, String)>,
    /// Addresses this process is creating allocations of now: the
    /// reservations running side by side look past them.
    pending: BTreeSet<String>,
    /// Per pool: where the search for a free address starts.
    cursors: HashMap<String, u128>,
    /// The pools judged, per zone in the order they are tried; `None`
    /// after the pools changed.
    judged: Option<Judgement>,
    /// Which of the three lists arrived (pools, allocations, claims).
    listed: [bool; 3],
}

#[derive(Debug, Clone)]
struct Judgement {
    all: BTreeMap<String, Judged>,
    /// Zone → ready pools, by order then name.
    ready: BTreeMap<Zone, Vec<ValidPool>>,
}

impl Cache {
    /// Whether all three lists arrived.
    pub(crate) fn synced(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    /// Applies a watch event.
    pub(crate) fn apply(&mut self, event: PoolEvent) {
        match event {
            PoolEvent::Pools(ps) => {
                self.pools = ps.into_iter().map(|p| (p.name.clone(), p)).collect();
                self.judged = None;
                self.listed[0] = true;
            }
            PoolEvent::Allocations(list) => {
                self.deleted.clear();
                self.allocations.clear();
                self.by_owner.clear();
                for a in list {
                    self.put_allocation(a);
                }
                self.listed[1] = true;
            }
            PoolEvent::Claims(cs) => {
                self.claims = cs.into_iter().map(|c| (c.name.clone(), c)).collect();
                self.listed[2] = true;
            }
            PoolEvent::Applied(PoolObject::Allocation(a)) => {
                let gone = self.deleted.contains(&(a.name.clone(), a.uid.clone()));
                if !gone && self.is_news(&a) {
                    self.put_allocation(a);
                }
            }
            PoolEvent::Applied(o) => self.put(o),
            // A deletion seen late never removes what replaced it: this
            // process may have created the name again meanwhile.
            PoolEvent::Deleted(PoolObject::Allocation(a)) => {
                self.deleted.remove(&(a.name.clone(), a.uid.clone()));
                if self
                    .allocations
                    .get(&a.name)
                    .is_some_and(|c| c.uid == a.uid)
                {
                    self.forget_allocation(&a.name);
                }
            }
            PoolEvent::Deleted(PoolObject::Claim(c)) => {
                if self.claims.get(&c.name).is_some_and(|k| k.uid == c.uid) {
                    self.claims.remove(&c.name);
                }
            }
            PoolEvent::Deleted(o) => self.forget(&o),
        }
    }

    /// Whether a watched allocation is newer than what the view holds
    /// (which may be this process's own, later write). resourceVersions
    /// are compared as numbers where both are (etcd revisions are);
    /// otherwise the watch wins.
    fn is_news(&self, a: &IpAllocation) -> bool {
        let Some(cur) = self.allocations.get(&a.name) else {
            return true;
        };
        let rv = |x: &IpAllocation| {
            x.resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
        };
        match (rv(a), rv(cur)) {
            (Some(new), Some(old)) => new >= old,
            _ => true,
        }
    }

    /// Records an object (seen, or written by this backend).
    pub(crate) fn put(&mut self, o: PoolObject) {
        match o {
            PoolObject::Pool(p) => {
                self.pools.insert(p.name.clone(), p);
                self.judged = None;
            }
            PoolObject::Allocation(a) => self.put_allocation(a),
            PoolObject::Claim(c) => {
                self.claims.insert(c.name.clone(), c);
            }
        }
    }

    fn put_allocation(&mut self, a: IpAllocation) {
        if let Some(old) = self.allocations.get(&a.name)
            && old.owner != a.owner
            && let Some(set) = self.by_owner.get_mut(&old.owner)
        {
            set.remove(&a.name);
        }
        self.by_owner
            .entry(a.owner.clone())
            .or_default()
            .insert(a.name.clone());
        self.allocations.insert(a.name.clone(), a);
    }

    /// Forgets an object (deleted).
    pub(crate) fn forget(&mut self, o: &PoolObject) {
        match o {
            PoolObject::Pool(p) => {
                self.pools.remove(&p.name);
                self.judged = None;
            }
            PoolObject::Allocation(a) => self.forget_allocation(&a.name),
            PoolObject::Claim(c) => {
                self.claims.remove(&c.name);
            }
        }
    }

    /// Forgets the allocation `name`.
    pub(crate) fn forget_allocation(&mut self, name: &str) {
        if let Some(a) = self.allocations.remove(name)
            && let Some(set) = self.by_owner.get_mut(&a.owner)
        {
            set.remove(name);
            if set.is_empty() {
                self.by_owner.remove(&a.owner);
            }
        }
    }

    /// This process deleted `a`.
    pub(crate) fn deleted(&mut self, a: &IpAllocation) {
        if self
            .allocations
            .get(&a.name)
            .is_some_and(|c| c.uid == a.uid)
        {
            self.forget_allocation(&a.name);
        }
        if !a.uid.is_empty() {
            self.deleted.insert((a.name.clone(), a.uid.clone()));
        }
    }

    /// The create of allocation `name` is over (made or refused).
    pub(crate) fn settle(&mut self, name: &str) {
        self.pending.remove(name);
    }

    /// The allocation `name`.
    pub(crate) fn allocation(&self, name: &str) -> Option<&IpAllocation> {
        self.allocations.get(name)
    }

    /// The claim `name`.
    pub(crate) fn claim(&self, name: &str) -> Option<&IpClaim> {
        self.claims.get(name)
    }

    /// Every allocation.
    pub(crate) fn allocations(&self) -> impl Iterator<Item = &IpAllocation> {
        self.allocations.values()
    }

    /// Every pool.
    pub(crate) fn pools(&self) -> impl Iterator<Item = &IpPool> {
        self.pools.values()
    }

    /// `owner`'s allocations, lowest address first.
    pub(crate) fn owned(&self, owner: &Owner) -> Vec<&IpAllocation> {
        let mut v: Vec<&IpAllocation> = self
            .by_owner
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|n| self.allocations.get(n))
            .collect();
        v.sort_by_key(|a| a.address.ip());
        v
    }

    fn judgement(&mut self) -> &Judgement {
        let pools = &self.pools;
        self.judged.get_or_insert_with(|| {
            let all = judge(&pools.values().collect::<Vec<_>>());
            let mut ready: BTreeMap<Zone, Vec<ValidPool>> = BTreeMap::new();
            for j in all.values() {
                if let (Some(v), None) = (&j.valid, &j.not_ready) {
                    ready.entry(v.zone.clone()).or_default().push(v.clone());
                }
            }
            for pools in ready.values_mut() {
                pools.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
            }
            Judgement { all, ready }
        })
    }

    /// The next step of reserving for `owner` in `zone` at `now`.
    pub(crate) fn plan(
        &mut self,
        owner: &Owner,
        zone: &Zone,
        now: SystemTime,
    ) -> Result<Step, IpamError> {
        let mine: Vec<IpAllocation> = self
            .owned(owner)
            .into_iter()
            .filter(|a| a.zone == zone.as_str())
            .cloned()
            .collect();
        let claim_key = claim_name(owner, zone.as_str());
        if let Some(c) = self.claims.get(&claim_key).cloned() {
            return self.plan_claimed(&c, owner, zone);
        }
        if let Some(a) = mine.iter().find(|a| a.held_until.is_none()) {
            return Ok(Step::Claim(a.clone()));
        }
        if let Some(a) = mine.first() {
            return Ok(Step::Unhold(a.clone()));
        }
        self.fresh(owner, zone, now)
    }

    /// The next step when `owner` has a claim `c` in `zone`.
    fn plan_claimed(&mut self, c: &IpClaim, owner: &Owner, zone: &Zone) -> Result<Step, IpamError> {
        if &c.owner != owner || c.zone != zone.as_str() {
            return Err(IpamError::Rejected {
                backend: super::BACKEND.into(),
                call: "reserve".into(),
                message: format!(
                    "OverlayIPClaim {} belongs to {} in zone {}, not {owner} in {zone} (a name collision); delete it if neither exists",
                    c.name, c.owner, c.zone
                ),
            });
        }
        let name = allocation_name(c.address);
        match self.allocations.get(&name) {
            Some(a) if &a.owner == owner && a.zone == zone.as_str() => {
                if a.held_until.is_some() {
                    return Ok(Step::Unhold(a.clone()));
                }
                Ok(Step::Have(a.clone()))
            }
            Some(_) => Ok(Step::Unclaim(c.clone())),
            None => {
                // The claim outlived its allocation (a release stopped
                // half-way): the same address again, if a pool of the
                // zone still hands it out.
                let pool = self
                    .judgement()
                    .ready
                    .get(zone)
                    .and_then(|ps| ps.iter().find(|p| p.assignable(c.address)).cloned());
                Ok(match pool {
                    Some(p) => Step::Allocate(p.allocation(owner, c.address)),
                    None => Step::Unclaim(c.clone()),
                })
            }
        }
    }

    /// A new address for `owner` in `zone`: the first free one after each
    /// pool's cursor, pools in order.
    fn fresh(&mut self, owner: &Owner, zone: &Zone, now: SystemTime) -> Result<Step, IpamError> {
        let judgement = self.judgement().clone();
        let Some(pools) = judgement.ready.get(zone) else {
            let in_zone: Vec<String> = judgement
                .all
                .iter()
                .filter(|(_, j)| j.zone == zone.as_str())
                .map(|(name, j)| match &j.not_ready {
                    Some(n) => format!("{name} ({})", n.reason()),
                    None => name.clone(),
                })
                .collect();
            if in_zone.is_empty() {
                let known: BTreeSet<String> =
                    judgement.all.values().map(|j| j.zone.clone()).collect();
                return Err(IpamError::UnknownZone {
                    zone: zone.to_string(),
                    known: known.into_iter().collect(),
                });
            }
            return Err(IpamError::Exhausted {
                zone: zone.to_string(),
                subnets: in_zone,
            });
        };
        for p in pools {
            if let Some(step) = self.scan(p, owner, now) {
                return Ok(step);
            }
        }
        Err(IpamError::Exhausted {
            zone: zone.to_string(),
            subnets: pools.iter().map(|p| p.name.clone()).collect(),
        })
    }

    /// The first free (or expired-held) address of `p` from its cursor.
    fn scan(&mut self, p: &ValidPool, owner: &Owner, now: SystemTime) -> Option<Step> {
        let (lo, hi) = p.range();
        if lo > hi {
            return None;
        }
        let span = hi - lo + 1;
        let start = self
            .cursors
            .get(&p.name)
            .copied()
            .filter(|c| (lo..=hi).contains(c))
            .unwrap_or(lo);
        for i in 0..span.min(MAX_SCAN) {
            let v = lo + (start - lo + i) % span;
            let ip = from_u128(&p.config.cidr, v);
            if !p.assignable(ip) {
                continue;
            }
            let name = allocation_name(ip);
            if self.pending.contains(&name) {
                continue;
            }
            match self.allocations.get(&name) {
                None => {
                    self.cursors.insert(p.name.clone(), v);
                    self.pending.insert(name);
                    return Some(Step::Allocate(p.allocation(owner, ip)));
                }
                Some(a) if a.held_until.is_some_and(|t| t <= now) => {
                    return Some(Step::Delete(a.clone()));
                }
                Some(_) => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(uid: &str, rv: &str) -> IpAllocation {
        IpAllocation {
            name: "192-0-2-7".into(),
            resource_version: Some(rv.into()),
            uid: uid.into(),
            pool: "p".into(),
            pool_uid: "p-uid".into(),
            zone: "z".into(),
            owner: Owner::new("c", "node-a"),
            address: "192.0.2.7/24".parse().unwrap(),
            gateway: "192.0.2.1".parse().unwrap(),
            held_until: None,
        }
    }

    #[test]
    fn events_seen_late_never_undo_this_processs_own_writes() {
        let mut view = Cache::default();
        // Created again by this process, after another incarnation that
        // the watch shows only now.
        view.put(PoolObject::Allocation(alloc("new", "10")));
        view.apply(PoolEvent::Applied(PoolObject::Allocation(alloc(
            "old", "5",
        ))));
        view.apply(PoolEvent::Deleted(PoolObject::Allocation(alloc(
            "old", "6",
        ))));
        assert_eq!(
            view.allocation("192-0-2-7").map(|a| a.uid.as_str()),
            Some("new")
        );
        // Deleted by this process: its creation, seen late, does not bring
        // it back.
        view.deleted(&alloc("new", "10"));
        view.apply(PoolEvent::Applied(PoolObject::Allocation(alloc(
            "new", "10",
        ))));
        assert!(view.allocation("192-0-2-7").is_none());
        view.apply(PoolEvent::Deleted(PoolObject::Allocation(alloc(
            "new", "11",
        ))));
        assert!(view.deleted.is_empty());
        // A newer write by another process is taken.
        view.apply(PoolEvent::Applied(PoolObject::Allocation(alloc(
            "third", "12",
        ))));
        assert_eq!(
            view.allocation("192-0-2-7").map(|a| a.uid.as_str()),
            Some("third")
        );
    }
}
