//! Importing an embedded-pools state file ([`crate::file`]) into
//! Kubernetes-native IPAM, for `overlayctl ipam migrate --from-state-file`.
//!
//! Every entry of the file becomes an `OverlayIPAllocation` of its address
//! for its owner (the cluster id as written in the file), from the
//! `OverlayIPPool` of the entry's zone that contains the address. A live
//! entry also gets its owner's `OverlayIPClaim`; a held entry keeps its
//! `heldUntil` and gets no claim, so its owner reserving again gets it back
//! and nobody else gets it before it expires, as after a release.
//!
//! [`plan_import`] decides from what the cluster holds and writes nothing;
//! [`apply_import`] writes the allocation first, then the claim, as a
//! reservation does. An address already allocated to the same owner is
//! *present*, so importing again writes nothing. An address allocated to
//! another owner, or one that no usable pool of the entry's zone hands out,
//! is a *conflict*: reported with the reason, never imported.
//!
//! A pool with `spec.disabled` takes imports (it keeps existing
//! allocations, and imported ones are existing ones): creating the pools
//! disabled keeps controllers from handing out their addresses before the
//! import is done.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use overlay_core::ippool::{IpAllocation, IpClaim, IpPool, PoolStore, allocation_name, claim_name};
use overlay_core::{Owner, StoreError};
use serde::{Serialize, Serializer};

use super::pool::{Judged, NotReady, ValidPool, judge};
use crate::pools::{Entry, format_time};

const ALLOCATION: &str = "OverlayIPAllocation";
const CLAIM: &str = "OverlayIPClaim";

/// Where a user finds how to write a pool.
pub const POOL_SAMPLE: &str = "deploy/samples/overlayippool.yaml";

/// What the cluster holds, as an import plans from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterObjects {
    /// Every `OverlayIPPool`.
    pub pools: Vec<IpPool>,
    /// Every `OverlayIPAllocation`.
    pub allocations: Vec<IpAllocation>,
    /// Every `OverlayIPClaim`.
    pub claims: Vec<IpClaim>,
}

/// Reads every pool, allocation and claim (three lists).
pub async fn read_cluster(store: &dyn PoolStore) -> Result<ClusterObjects, StoreError> {
    Ok(ClusterObjects {
        pools: store.list_pools().await?,
        allocations: store.list_allocations().await?,
        claims: store.list_claims().await?,
    })
}

/// `held_until` as RFC 3339 in JSON.
fn rfc3339<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(format_time) {
        Some(text) => s.serialize_some(&text),
        None => s.serialize_none(),
    }
}

/// What importing one entry does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// Create the allocation; with `claim`, then the owner's claim.
    Create {
        /// The owner's claim is created too (a live entry whose owner has
        /// no claim in the zone yet).
        claim: bool,
    },
    /// The address is allocated to this owner already; with `claim`, its
    /// missing claim is created.
    Present {
        /// The owner's missing claim is created.
        claim: bool,
    },
    /// Not imported.
    Conflict {
        /// Why, naming the object or pool in the way.
        reason: String,
    },
}

/// One entry of the state file and what importing it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedEntry {
    /// The owner, as the state file names it.
    pub owner: Owner,
    /// The zone.
    pub zone: String,
    /// The address.
    pub address: IpAddr,
    /// Set for a held entry: its hold-down ends then.
    #[serde(serialize_with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub held_until: Option<SystemTime>,
    /// The `OverlayIPPool` the address comes from, when one is found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// What is done.
    #[serde(flatten)]
    pub action: Action,
    /// Something to know that does not stop the import (a changed prefix,
    /// a state that differs from the cluster's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The allocation to create ([`Action::Create`]).
    #[serde(skip)]
    allocation: Option<IpAllocation>,
}

/// Counts of a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSummary {
    /// Allocations to create.
    pub create: usize,
    /// Claims to create (with new allocations or for present ones).
    pub claims: usize,
    /// Entries already imported.
    pub present: usize,
    /// Entries not imported.
    pub conflicts: usize,
}

/// What an import will do, entry by entry (zone, then address).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportPlan {
    /// Every entry of the state file.
    pub entries: Vec<PlannedEntry>,
    /// The counts.
    pub summary: PlanSummary,
}

impl ImportPlan {
    fn new(entries: Vec<PlannedEntry>) -> Self {
        let mut s = PlanSummary::default();
        for e in &entries {
            match &e.action {
                Action::Create { claim } => {
                    s.create += 1;
                    s.claims += usize::from(*claim);
                }
                Action::Present { claim } => {
                    s.present += 1;
                    s.claims += usize::from(*claim);
                }
                Action::Conflict { .. } => s.conflicts += 1,
            }
        }
        Self {
            entries,
            summary: s,
        }
    }

    /// Whether applying it writes nothing.
    pub fn is_noop(&self) -> bool {
        self.summary.create == 0 && self.summary.claims == 0
    }

    /// The plan for people: one line per entry, then the counts.
    pub fn render(&self) -> String {
        let mut rows = vec![header()];
        for e in &self.entries {
            let (action, detail) = match &e.action {
                Action::Create { claim: true } => ("create", "allocation and claim".to_owned()),
                Action::Create { claim: false } => ("create", held_or(e, "allocation")),
                Action::Present { claim: true } => ("present", "claim to create".to_owned()),
                Action::Present { claim: false } => ("present", "nothing to do".to_owned()),
                Action::Conflict { reason } => ("conflict", reason.clone()),
            };
            let cells = Cells {
                zone: &e.zone,
                address: e.address,
                owner: &e.owner,
                pool: e.pool.as_deref(),
                note: e.note.as_deref(),
            };
            rows.push(cells.row(action, detail));
        }
        let s = &self.summary;
        let mut out = table(&rows);
        let _ = writeln!(
            out,
            "plan: {} allocations to create, {} claims to create, {} present, {}",
            s.create,
            s.claims,
            s.present,
            conflicts(s.conflicts)
        );
        out
    }
}

fn conflicts(n: usize) -> String {
    if n == 1 {
        "1 conflict".into()
    } else {
        format!("{n} conflicts")
    }
}

/// `t` in RFC 3339 to the second, for people.
fn seconds(t: SystemTime) -> Option<String> {
    format_time(t).map(|_| humantime::format_rfc3339_seconds(t).to_string())
}

fn held_or(e: &PlannedEntry, live: &str) -> String {
    match e.held_until.and_then(seconds) {
        Some(t) => format!("held until {t}, no claim"),
        None => live.to_owned(),
    }
}

fn header() -> Vec<String> {
    ["ACTION", "ZONE", "ADDRESS", "OWNER", "POOL", "DETAIL"]
        .map(String::from)
        .to_vec()
}

/// The cells of one entry, for the tables of [`ImportPlan::render`] and
/// [`ImportReport::render`].
struct Cells<'a> {
    zone: &'a str,
    address: IpAddr,
    owner: &'a Owner,
    pool: Option<&'a str>,
    note: Option<&'a str>,
}

impl Cells<'_> {
    fn row(&self, action: &str, detail: String) -> Vec<String> {
        let detail = match self.note {
            Some(n) => format!("{detail}; {n}"),
            None => detail,
        };
        vec![
            action.to_owned(),
            self.zone.to_owned(),
            self.address.to_string(),
            self.owner.to_string(),
            self.pool.unwrap_or("-").to_owned(),
            detail,
        ]
    }
}

/// Rows as columns padded to their widest cell (the last one unpadded).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The cluster's objects, indexed for planning.
struct Planner<'a> {
    pools: &'a [IpPool],
    judged: BTreeMap<String, Judged>,
    allocations: HashMap<&'a str, &'a IpAllocation>,
    claims: HashMap<&'a str, &'a IpClaim>,
    /// Live allocations per owner and zone, in the cluster.
    live: HashMap<(&'a Owner, &'a str), Vec<&'a IpAllocation>>,
    /// Addresses of the state file seen so far.
    seen: HashSet<IpAddr>,
    /// The live address imported (or present) per owner and zone.
    planned_live: HashMap<(Owner, String), IpAddr>,
}

/// Plans the import of `entries` (a state file's, [`crate::file::read_state`])
/// into a cluster holding `pools`, `allocations` and `claims`. Writes
/// nothing; entries are planned by zone, then address.
pub fn plan_import(
    entries: &[Entry],
    pools: &[IpPool],
    allocations: &[IpAllocation],
    claims: &[IpClaim],
) -> ImportPlan {
    let mut live: HashMap<(&Owner, &str), Vec<&IpAllocation>> = HashMap::new();
    for a in allocations.iter().filter(|a| a.held_until.is_none()) {
        live.entry((&a.owner, a.zone.as_str())).or_default().push(a);
    }
    let mut planner = Planner {
        pools,
        judged: judge(&pools.iter().collect::<Vec<_>>()),
        allocations: allocations.iter().map(|a| (a.name.as_str(), a)).collect(),
        claims: claims.iter().map(|c| (c.name.as_str(), c)).collect(),
        live,
        seen: HashSet::new(),
        planned_live: HashMap::new(),
    };
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| (a.zone.as_str(), a.address).cmp(&(b.zone.as_str(), b.address)));
    ImportPlan::new(sorted.into_iter().map(|e| planner.plan(e)).collect())
}

impl Planner<'_> {
    fn plan(&mut self, e: &Entry) -> PlannedEntry {
        let ip = e.address;
        let zone = e.zone.as_str();
        let mut out = PlannedEntry {
            owner: e.owner.clone(),
            zone: zone.to_owned(),
            address: ip,
            held_until: e.held_until,
            pool: None,
            action: Action::Create { claim: false },
            note: None,
            allocation: None,
        };
        if !self.seen.insert(ip) {
            out.action = Action::Conflict {
                reason: format!(
                    "the state file lists {ip} more than once; only its first entry is imported"
                ),
            };
            return out;
        }
        let valid = match self.pool_for(zone, ip) {
            Ok(v) => v,
            Err(reason) => {
                out.action = Action::Conflict { reason };
                return out;
            }
        };
        out.pool = Some(valid.name.clone());
        out.note = prefix_note(e, &valid);
        let live = e.held_until.is_none();
        if let Some(a) = self.allocations.get(allocation_name(ip).as_str()).copied() {
            let (action, note) = self.existing(e, a);
            out.action = action;
            out.note = note.or(out.note);
            return out;
        }
        out.action = if live {
            match self.live_check(e) {
                Ok(claim) => Action::Create { claim },
                Err(reason) => Action::Conflict { reason },
            }
        } else {
            Action::Create { claim: false }
        };
        if let Action::Create { .. } = out.action {
            let mut a = valid.allocation(&e.owner, ip);
            a.held_until = e.held_until;
            out.allocation = Some(a);
        }
        out
    }

    /// The action for an entry whose address is allocated already (`a`).
    fn existing(&mut self, e: &Entry, a: &IpAllocation) -> (Action, Option<String>) {
        if a.owner != e.owner {
            let held = a
                .held_until
                .and_then(seconds)
                .map(|t| format!(", held until {t}"))
                .unwrap_or_default();
            let reason = format!(
                "{} is allocated to {}{held} ({ALLOCATION} {}); it stays theirs",
                e.address, a.owner, a.name
            );
            return (Action::Conflict { reason }, None);
        }
        match (e.held_until.is_none(), a.held_until) {
            (true, None) => match self.live_check(e) {
                Ok(claim) => (Action::Present { claim }, None),
                Err(why) => (
                    Action::Present { claim: false },
                    Some(format!("no claim created: {why}")),
                ),
            },
            (true, Some(t)) => (
                Action::Present { claim: false },
                seconds(t).map(|t| format!("held in the cluster until {t}; left so")),
            ),
            (false, None) => (
                Action::Present { claim: false },
                Some("live in the cluster; left so".into()),
            ),
            (false, Some(_)) => (Action::Present { claim: false }, None),
        }
    }

    /// For a live entry: whether the owner's claim is to be created
    /// (`false`: it names this address already), or why the entry cannot
    /// be the owner's live address in its zone.
    fn live_check(&mut self, e: &Entry) -> Result<bool, String> {
        let (ip, zone, owner) = (e.address, e.zone.as_str(), &e.owner);
        let key = (owner.clone(), zone.to_owned());
        if let Some(first) = self.planned_live.get(&key) {
            return Err(format!(
                "the state file gives {owner} a second live address in zone {zone} ({first} first); only the first is imported"
            ));
        }
        let cname = claim_name(owner, zone);
        let claim = match self.claims.get(cname.as_str()) {
            Some(c) if &c.owner != owner || c.zone != zone => {
                return Err(format!(
                    "{CLAIM} {cname} belongs to {} in zone {} (a name collision); delete it if neither exists",
                    c.owner, c.zone
                ));
            }
            Some(c) if c.address != ip => {
                return Err(format!(
                    "{owner} already claims {} in zone {zone} ({CLAIM} {cname}) and keeps it",
                    c.address
                ));
            }
            Some(_) => false,
            None => true,
        };
        let held = self.live.get(&(owner, zone)).into_iter().flatten();
        if let Some(other) = held.into_iter().find(|a| a.address.ip() != ip) {
            return Err(format!(
                "{owner} already holds {} in zone {zone} ({ALLOCATION} {}) and keeps it",
                other.address.ip(),
                other.name
            ));
        }
        self.planned_live.insert(key, ip);
        Ok(claim)
    }

    /// The pool that hands out `ip` to zone `zone`, or why there is none.
    fn pool_for(&self, zone: &str, ip: IpAddr) -> Result<ValidPool, String> {
        let containing: Vec<(&String, &Judged, &ValidPool)> = self
            .judged
            .iter()
            .filter_map(|(n, j)| Some((n, j, j.valid.as_ref()?)))
            .filter(|(_, _, v)| v.network().contains(ip))
            .collect();
        let used = containing
            .iter()
            .find(|(_, j, _)| !matches!(j.not_ready, Some(NotReady::Overlaps(_))));
        let Some((name, j, v)) = used else {
            return Err(match containing.first() {
                Some((name, j, _)) => format!(
                    "OverlayIPPool {name} contains {ip} but is not used: {}",
                    j.not_ready
                        .as_ref()
                        .map(NotReady::message)
                        .unwrap_or_default()
                ),
                None => self.no_pool(zone, ip),
            });
        };
        if j.zone != zone {
            return Err(format!(
                "{ip} is in OverlayIPPool {name}, which serves zone {}, not {zone}",
                j.zone
            ));
        }
        if matches!(j.not_ready, Some(NotReady::Deleting)) {
            return Err(format!(
                "OverlayIPPool {name}, which contains {ip}, is being deleted"
            ));
        }
        if !v.assignable(ip) {
            return Err(unassignable(name, v, ip));
        }
        Ok((*v).clone())
    }

    fn no_pool(&self, zone: &str, ip: IpAddr) -> String {
        let mine: Vec<String> = self
            .pools
            .iter()
            .filter(|p| p.zone == zone)
            .map(
                |p| match self.judged.get(&p.name).and_then(|j| j.not_ready.as_ref()) {
                    Some(NotReady::InvalidSpec(m)) => {
                        format!("{} ({}, invalid: {m})", p.name, p.cidr)
                    }
                    _ => format!("{} ({})", p.name, p.cidr),
                },
            )
            .collect();
        if mine.is_empty() {
            format!(
                "zone {zone} has no OverlayIPPool; create one containing {ip} (see {POOL_SAMPLE})"
            )
        } else {
            format!(
                "no OverlayIPPool of zone {zone} contains {ip} (its pools: {}); add one that does (see {POOL_SAMPLE})",
                mine.join(", ")
            )
        }
    }
}

fn unassignable(name: &str, v: &ValidPool, ip: IpAddr) -> String {
    if ip == v.gateway() {
        format!("{ip} is the gateway of OverlayIPPool {name}")
    } else if v.config.reserved.contains(&ip) || v.reserved_nets.iter().any(|n| n.contains(ip)) {
        format!("{ip} is reserved in OverlayIPPool {name} (spec.reserved)")
    } else {
        format!(
            "{ip} is not a host address OverlayIPPool {name} hands out (network or broadcast address of {})",
            v.network()
        )
    }
}

/// A note when the pool's prefix differs from the embedded pool's: the
/// node's address changes prefix (and maybe gateway).
fn prefix_note(e: &Entry, v: &ValidPool) -> Option<String> {
    (e.pool.prefix() != v.network().prefix()).then(|| {
        format!(
            "the state file's pool is {}; OverlayIPPool {} is {}: the node gets {}/{} with gateway {}",
            e.pool,
            v.name,
            v.config.cidr,
            e.address,
            v.network().prefix(),
            v.gateway()
        )
    })
}

/// What importing one entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Outcome {
    /// The allocation was created.
    Created {
        /// The owner's claim was created too.
        claimed: bool,
    },
    /// The address was allocated to this owner already.
    Present {
        /// The owner's missing claim was created.
        claimed: bool,
    },
    /// Not imported.
    Conflict {
        /// Why.
        reason: String,
    },
    /// A request failed; running the import again continues.
    Failed {
        /// The error.
        error: String,
    },
}

/// One entry as imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportedEntry {
    /// The owner.
    pub owner: Owner,
    /// The zone.
    pub zone: String,
    /// The address.
    pub address: IpAddr,
    /// Set for a held entry.
    #[serde(serialize_with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub held_until: Option<SystemTime>,
    /// The `OverlayIPPool`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The plan's note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Counts of a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportSummary {
    /// Allocations created.
    pub created: usize,
    /// Claims created.
    pub claims: usize,
    /// Entries found imported already.
    pub present: usize,
    /// Entries not imported.
    pub conflicts: usize,
    /// Entries whose requests failed.
    pub failed: usize,
}

/// What [`apply_import`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Every entry, in the plan's order.
    pub entries: Vec<ImportedEntry>,
    /// The counts.
    pub summary: ReportSummary,
}

impl ImportReport {
    fn new(entries: Vec<ImportedEntry>) -> Self {
        let mut s = ReportSummary::default();
        for e in &entries {
            match &e.outcome {
                Outcome::Created { claimed } => {
                    s.created += 1;
                    s.claims += usize::from(*claimed);
                }
                Outcome::Present { claimed } => {
                    s.present += 1;
                    s.claims += usize::from(*claimed);
                }
                Outcome::Conflict { .. } => s.conflicts += 1,
                Outcome::Failed { .. } => s.failed += 1,
            }
        }
        Self {
            entries,
            summary: s,
        }
    }

    /// Every entry is imported (created or present).
    pub fn ok(&self) -> bool {
        self.summary.conflicts == 0 && self.summary.failed == 0
    }

    /// The report for people: one line per entry, then the counts.
    pub fn render(&self) -> String {
        let mut rows = vec![header()];
        for e in &self.entries {
            let (what, detail) = match &e.outcome {
                Outcome::Created { claimed: true } => ("created", "allocation and claim".into()),
                Outcome::Created { claimed: false } => ("created", "allocation".into()),
                Outcome::Present { claimed: true } => ("present", "claim created".into()),
                Outcome::Present { claimed: false } => ("present", "nothing written".into()),
                Outcome::Conflict { reason } => ("conflict", reason.clone()),
                Outcome::Failed { error } => ("failed", error.clone()),
            };
            let detail = match e.held_until.and_then(seconds) {
                Some(t) if matches!(e.outcome, Outcome::Created { .. }) => {
                    format!("{detail}, held until {t}")
                }
                _ => detail,
            };
            let cells = Cells {
                zone: &e.zone,
                address: e.address,
                owner: &e.owner,
                pool: e.pool.as_deref(),
                note: e.note.as_deref(),
            };
            rows.push(cells.row(what, detail));
        }
        let s = &self.summary;
        let mut out = table(&rows);
        let _ = writeln!(
            out,
            "imported: {} created, {} claims created, {} present, {}, {} failed",
            s.created,
            s.claims,
            s.present,
            conflicts(s.conflicts),
            s.failed
        );
        out
    }
}

/// Applies `plan` to `store`: for each entry to create, its allocation,
/// then (live entries) its owner's claim; for a present entry its missing
/// claim. An allocation created meanwhile by someone else is re-read:
/// present when it is this owner's, a conflict otherwise. A claim found
/// naming another address meanwhile makes the entry a conflict, and the
/// allocation this call created for it is deleted again. Idempotent: a
/// plan made after a complete import writes nothing.
pub async fn apply_import(store: &dyn PoolStore, plan: &ImportPlan) -> ImportReport {
    let mut out = Vec::with_capacity(plan.entries.len());
    for p in &plan.entries {
        let outcome = match &p.action {
            Action::Conflict { reason } => Outcome::Conflict {
                reason: reason.clone(),
            },
            Action::Present { claim } => present(store, p, *claim).await,
            Action::Create { claim } => create(store, p, *claim).await,
        };
        match &outcome {
            Outcome::Failed { error } => {
                tracing::warn!(owner = %p.owner, zone = %p.zone, address = %p.address, error = %error, "import failed")
            }
            o => {
                tracing::info!(owner = %p.owner, zone = %p.zone, address = %p.address, outcome = ?o, "imported")
            }
        }
        out.push(ImportedEntry {
            owner: p.owner.clone(),
            zone: p.zone.clone(),
            address: p.address,
            held_until: p.held_until,
            pool: p.pool.clone(),
            outcome,
            note: p.note.clone(),
        });
    }
    ImportReport::new(out)
}

fn failed(e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed {
        error: e.to_string(),
    }
}

/// How claiming went.
enum Claimed {
    /// Created now.
    Made,
    /// It named this address already.
    Already,
    /// It names another address (or belongs to another owner).
    Other(IpClaim),
}

async fn claim(store: &dyn PoolStore, p: &PlannedEntry) -> Result<Claimed, StoreError> {
    let c = IpClaim {
        name: claim_name(&p.owner, &p.zone),
        uid: String::new(),
        owner: p.owner.clone(),
        zone: p.zone.clone(),
        address: p.address,
    };
    match store.create_claim(&c).await {
        Ok(_) => Ok(Claimed::Made),
        Err(StoreError::AlreadyExists { .. }) => match store.get_claim(&c.name).await? {
            Some(f) if f.owner == c.owner && f.zone == c.zone && f.address == c.address => {
                Ok(Claimed::Already)
            }
            Some(f) => Ok(Claimed::Other(f)),
            None => Err(StoreError::Conflict {
                kind: CLAIM.into(),
                name: c.name,
                message: "created and deleted again meanwhile; run the import again".into(),
            }),
        },
        Err(e) => Err(e),
    }
}

fn claimed_elsewhere(p: &PlannedEntry, c: &IpClaim) -> String {
    format!(
        "{} claimed {} in zone {} meanwhile ({CLAIM} {})",
        c.owner, c.address, p.zone, c.name
    )
}

async fn present(store: &dyn PoolStore, p: &PlannedEntry, want_claim: bool) -> Outcome {
    if !want_claim {
        return Outcome::Present { claimed: false };
    }
    match claim(store, p).await {
        Ok(Claimed::Made) => Outcome::Present { claimed: true },
        Ok(Claimed::Already) => Outcome::Present { claimed: false },
        Ok(Claimed::Other(c)) => Outcome::Conflict {
            reason: format!(
                "{}; {} stays allocated to {}, unclaimed",
                claimed_elsewhere(p, &c),
                p.address,
                p.owner
            ),
        },
        Err(e) => failed(e),
    }
}

async fn create(store: &dyn PoolStore, p: &PlannedEntry, want_claim: bool) -> Outcome {
    let Some(a) = &p.allocation else {
        return failed("no allocation was planned for this entry");
    };
    let made = match store.create_allocation(a).await {
        Ok(made) => made,
        Err(StoreError::AlreadyExists { .. }) => return taken(store, p, want_claim).await,
        Err(e) => return failed(e),
    };
    if !want_claim {
        return Outcome::Created { claimed: false };
    }
    match claim(store, p).await {
        Ok(Claimed::Made) => Outcome::Created { claimed: true },
        Ok(Claimed::Already) => Outcome::Created { claimed: false },
        Ok(Claimed::Other(c)) => {
            let why = claimed_elsewhere(p, &c);
            match store.delete_allocation(&made).await {
                Ok(_) => Outcome::Conflict {
                    reason: format!("{why}; the allocation of {} was deleted again", p.address),
                },
                Err(e) => failed(format!(
                    "{why}; deleting the allocation of {} again failed ({e}): the controller deletes it as an unclaimed duplicate",
                    p.address
                )),
            }
        }
        Err(e) => failed(format!(
            "allocation created, claim not: {e}; run the import again to create the claim"
        )),
    }
}

/// The allocation was created by someone else meanwhile.
async fn taken(store: &dyn PoolStore, p: &PlannedEntry, want_claim: bool) -> Outcome {
    match store.get_allocation(&allocation_name(p.address)).await {
        Ok(Some(a)) if a.owner == p.owner => {
            present(store, p, want_claim && a.held_until.is_none()).await
        }
        Ok(Some(a)) => Outcome::Conflict {
            reason: format!(
                "{} was allocated to {} meanwhile ({ALLOCATION} {})",
                p.address, a.owner, a.name
            ),
        },
        Ok(None) => failed(format!(
            "the allocation of {} was created and deleted again meanwhile; run the import again",
            p.address
        )),
        Err(e) => failed(e),
    }
}
