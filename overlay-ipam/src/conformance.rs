//! A conformance suite any [`IpamBackend`] can run in its own tests.
//!
//! Describe the backend with a [`Fixture`]: the backend itself, a cluster id
//! for the owners the suite creates, and the zones it may use with the
//! number of **free** addresses in each of their subnets, in order. Then run
//! every check with [`run_all`] (or single checks):
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! use std::sync::Arc;
//! use overlay_ipam::conformance::{run_all, Fixture, ZoneCapacity};
//! use overlay_ipam::memory::MemoryBackend;
//! use overlay_ipam::pools::{PoolConfig, PoolsConfig};
//!
//! let pools = PoolsConfig::new()
//!     .with_pool("big", PoolConfig::parse("192.0.2.0/24")?)
//!     .with_pool("small", PoolConfig::parse("198.51.100.0/29")?)
//!     .with_pool("small", PoolConfig::parse("198.51.100.8/29")?);
//! let fixture = Fixture::new(Arc::new(MemoryBackend::new(&pools)?), "conformance")
//!     .with_zone(ZoneCapacity::new("big", [253])?)
//!     .with_zone(ZoneCapacity::new("small", [5, 5])?);
//! let report = run_all(&fixture).await;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```
//!
//! The checks spawn tasks, so run them inside a multi-threaded tokio
//! runtime (`#[tokio::test(flavor = "multi_thread")]`) to exercise real
//! parallelism. Every check releases what it reserved, also when it fails, so the suite
//! can run against a shared server on a scratch subnet. Checks that need a
//! zone shape the fixture does not have (a small zone to exhaust, a zone with
//! two subnets) are reported as skipped, not passed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use overlay_core::{IpamBackend, IpamError, Owner, ParseError, Reservation, Zone};
use tokio::task::JoinSet;

/// Number of concurrent reservations the concurrency checks make.
pub const CONCURRENT_OWNERS: usize = 64;

/// Largest zone the exhaustion and fall-through checks are willing to fill.
pub const MAX_FILL: usize = 1024;

/// A zone the suite may use, with the free addresses of each of its
/// subnets in the order the backend tries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneCapacity {
    /// The zone.
    pub zone: Zone,
    /// Free addresses per subnet, in order.
    pub subnets: Vec<usize>,
}

impl ZoneCapacity {
    /// A zone named `zone` whose subnets have `free` addresses each.
    pub fn new(zone: &str, free: impl IntoIterator<Item = usize>) -> Result<Self, ParseError> {
        Ok(Self {
            zone: Zone::parse("zone", zone)?,
            subnets: free.into_iter().collect(),
        })
    }

    /// Total free addresses.
    pub fn total(&self) -> usize {
        self.subnets.iter().sum()
    }
}

/// What the suite runs against.
#[derive(Clone)]
pub struct Fixture {
    /// The backend under test.
    pub backend: Arc<dyn IpamBackend>,
    /// Cluster id of every owner the suite creates (pick one no real
    /// cluster uses; `list` results are filtered by it).
    pub cluster: String,
    /// Zones the suite may reserve in. They must be empty of this
    /// cluster's owners when the suite starts.
    pub zones: Vec<ZoneCapacity>,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("backend", &self.backend.name())
            .field("cluster", &self.cluster)
            .field("zones", &self.zones)
            .finish()
    }
}

impl Fixture {
    /// A fixture for `backend` whose owners belong to `cluster`.
    pub fn new(backend: Arc<dyn IpamBackend>, cluster: impl Into<String>) -> Self {
        Self {
            backend,
            cluster: cluster.into(),
            zones: Vec::new(),
        }
    }

    /// Adds a zone.
    pub fn with_zone(mut self, zone: ZoneCapacity) -> Self {
        self.zones.push(zone);
        self
    }

    fn largest_zone(&self) -> Option<&ZoneCapacity> {
        self.zones.iter().max_by_key(|z| z.total())
    }

    fn roomy_zone(&self, need: usize) -> Result<&ZoneCapacity, Failure> {
        match self.largest_zone() {
            Some(z) if z.total() >= need => Ok(z),
            Some(z) => Err(Failure(format!(
                "fixture: this check needs a zone with at least {need} free addresses; the largest, {}, has {}",
                z.zone,
                z.total()
            ))),
            None => Err(Failure("fixture: no zone configured".into())),
        }
    }

    fn owner(&self, check: &str, i: usize) -> Owner {
        Owner::new(self.cluster.clone(), format!("{check}-{i}"))
    }
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

fn call_failed(what: &str, e: &IpamError) -> Failure {
    Failure(format!("{what}: unexpected error: {e}"))
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend behaved as required.
    Passed,
    /// The fixture cannot exercise this check (reason given).
    Skipped(String),
    /// The backend misbehaved (what happened given).
    Failed(String),
}

/// Results of a suite run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `(check name, outcome)` in the order run.
    pub checks: Vec<(String, Outcome)>,
}

impl Report {
    /// True when no check failed (skipped checks do not fail a run).
    pub fn passed(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Failed(_)))
    }

    /// Names of the checks that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, outcome) in &self.checks {
            match outcome {
                Outcome::Passed => writeln!(f, "PASS {name}")?,
                Outcome::Skipped(why) => writeln!(f, "SKIP {name}: {why}")?,
                Outcome::Failed(why) => writeln!(f, "FAIL {name}: {why}")?,
            }
        }
        Ok(())
    }
}

/// Tracks the owners a check creates and releases them at the end.
struct Scratch<'a> {
    fixture: &'a Fixture,
    owners: BTreeSet<Owner>,
}

impl<'a> Scratch<'a> {
    fn new(fixture: &'a Fixture) -> Self {
        Self {
            fixture,
            owners: BTreeSet::new(),
        }
    }

    async fn reserve(&mut self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        self.owners.insert(owner.clone());
        self.fixture.backend.reserve(owner, zone).await
    }

    /// Releases everything owned by the check's owners; returns the first
    /// error.
    async fn cleanup(self) -> Result<(), Failure> {
        let mut first = None;
        for owner in &self.owners {
            // An owner may hold addresses in several zones: release until none.
            for _ in 0..8 {
                match self
                    .fixture
                    .backend
                    .release_owner(owner, Duration::ZERO)
                    .await
                {
                    Ok(v) if !v.is_empty() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        first
                            .get_or_insert_with(|| call_failed(&format!("cleanup of {owner}"), &e));
                        break;
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Runs `body` with a scratch tracker and always cleans up afterwards.
async fn with_scratch<'a, F>(fixture: &'a Fixture, body: F) -> Result<(), Failure>
where
    F: for<'s> AsyncFnOnce(&'s mut Scratch<'a>) -> Result<(), Failure>,
{
    let mut scratch = Scratch::new(fixture);
    let result = body(&mut scratch).await;
    let cleaned = scratch.cleanup().await;
    result.and(cleaned)
}

fn check_shape(r: &Reservation, owner: &Owner, zone: &Zone) -> Result<(), Failure> {
    if &r.owner != owner {
        return Err(Failure(format!(
            "reservation for {owner} carries owner {}",
            r.owner
        )));
    }
    if &r.zone != zone {
        return Err(Failure(format!(
            "reservation for {owner} in zone {zone} says zone {}",
            r.zone
        )));
    }
    if r.handle.is_empty() {
        return Err(Failure(format!(
            "reservation {} for {owner} has an empty handle",
            r.address
        )));
    }
    Ok(())
}

/// Reserving twice for the same owner returns the same address, and
/// `lookup` finds it.
pub async fn idempotent_reserve(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(1)?.zone.clone();
    with_scratch(f, async |s| {
        let owner = f.owner("idem", 0);
        let a = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("reserve", &e))?;
        check_shape(&a, &owner, &zone)?;
        let b = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("second reserve", &e))?;
        if a.address != b.address || a.handle != b.handle {
            return Err(Failure(format!(
                "second reserve for {owner} returned {} (handle {}), first returned {} (handle {})",
                b.address, b.handle, a.address, a.handle
            )));
        }
        let found = f
            .backend
            .lookup(&owner, Some(&zone))
            .await
            .map_err(|e| call_failed("lookup", &e))?;
        match found {
            Some(r) if r.address == a.address => Ok(()),
            other => Err(Failure(format!(
                "lookup({owner}) returned {other:?}, expected {}",
                a.address
            ))),
        }
    })
    .await
}

/// Different owners get different addresses.
pub async fn distinct_owners(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(3)?.zone.clone();
    with_scratch(f, async |s| {
        let mut seen = BTreeMap::new();
        for i in 0..3 {
            let owner = f.owner("distinct", i);
            let r = s
                .reserve(&owner, &zone)
                .await
                .map_err(|e| call_failed("reserve", &e))?;
            check_shape(&r, &owner, &zone)?;
            if let Some(prev) = seen.insert(r.address.ip(), owner.clone()) {
                return Err(Failure(format!(
                    "{} handed to both {prev} and {owner}",
                    r.address
                )));
            }
        }
        Ok(())
    })
    .await
}

async fn reserve_concurrently(
    f: &Fixture,
    owners: Vec<Owner>,
    zone: &Zone,
) -> Vec<(Owner, Result<Reservation, IpamError>)> {
    let mut set = JoinSet::new();
    for owner in owners {
        let backend = f.backend.clone();
        let zone = zone.clone();
        set.spawn(async move {
            let r = backend.reserve(&owner, &zone).await;
            (owner, r)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(pair) => out.push(pair),
            Err(e) => out.push((
                Owner::new("?", "?"),
                Err(IpamError::Rejected {
                    backend: f.backend.name().into(),
                    call: "reserve".into(),
                    message: format!("task failed: {e}"),
                }),
            )),
        }
    }
    out
}

/// [`CONCURRENT_OWNERS`] concurrent reservations for distinct owners all
/// succeed with distinct addresses.
pub async fn concurrent_distinct(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(CONCURRENT_OWNERS)?.zone.clone();
    with_scratch(f, async |s| {
        let owners: Vec<Owner> = (0..CONCURRENT_OWNERS).map(|i| f.owner("conc", i)).collect();
        s.owners.extend(owners.iter().cloned());
        let results = reserve_concurrently(f, owners, &zone).await;
        let mut seen: BTreeMap<_, Owner> = BTreeMap::new();
        for (owner, r) in results {
            let r = r.map_err(|e| call_failed(&format!("concurrent reserve for {owner}"), &e))?;
            if let Some(prev) = seen.insert(r.address.ip(), owner.clone()) {
                return Err(Failure(format!(
                    "duplicate: {} handed to both {prev} and {owner}",
                    r.address
                )));
            }
        }
        Ok(())
    })
    .await
}

/// Concurrent reservations for one owner yield a single address.
pub async fn concurrent_same_owner(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(2)?.zone.clone();
    with_scratch(f, async |s| {
        let owner = f.owner("same", 0);
        s.owners.insert(owner.clone());
        let n = 16;
        let results = reserve_concurrently(f, vec![owner.clone(); n], &zone).await;
        let mut addrs = BTreeSet::new();
        for (_, r) in results {
            addrs.insert(
                r.map_err(|e| call_failed("concurrent reserve", &e))?
                    .address,
            );
        }
        if addrs.len() != 1 {
            return Err(Failure(format!(
                "{n} concurrent reserves for {owner} returned {} addresses: {addrs:?}",
                addrs.len()
            )));
        }
        let live = ours(f).await?;
        let held: Vec<_> = live.iter().filter(|r| r.owner == owner).collect();
        if held.len() != 1 {
            return Err(Failure(format!(
                "after concurrent reserves, list shows {} reservations for {owner}",
                held.len()
            )));
        }
        Ok(())
    })
    .await
}

/// Releasing twice succeeds; the address is gone after the first.
pub async fn release_idempotent(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(1)?.zone.clone();
    with_scratch(f, async |s| {
        let owner = f.owner("rel", 0);
        let r = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("reserve", &e))?;
        f.backend
            .release(&r, Duration::ZERO)
            .await
            .map_err(|e| call_failed("release", &e))?;
        f.backend
            .release(&r, Duration::ZERO)
            .await
            .map_err(|e| call_failed("second release (must succeed)", &e))?;
        let after = f
            .backend
            .lookup(&owner, None)
            .await
            .map_err(|e| call_failed("lookup", &e))?;
        if let Some(r) = after {
            return Err(Failure(format!(
                "after release, {owner} still holds {}",
                r.address
            )));
        }
        if f.backend
            .release_owner(&owner, Duration::ZERO)
            .await
            .map_err(|e| call_failed("release_owner", &e))?
            .is_empty()
            .eq(&false)
        {
            return Err(Failure(
                "release_owner found something after release".into(),
            ));
        }
        Ok(())
    })
    .await
}

/// After a release the owner can reserve again, and the released address
/// becomes available to others.
pub async fn release_then_reserve(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(2)?.zone.clone();
    with_scratch(f, async |s| {
        let a = f.owner("again", 0);
        let first = s
            .reserve(&a, &zone)
            .await
            .map_err(|e| call_failed("reserve", &e))?;
        f.backend
            .release(&first, Duration::ZERO)
            .await
            .map_err(|e| call_failed("release", &e))?;
        let second = s
            .reserve(&a, &zone)
            .await
            .map_err(|e| call_failed("reserve after release", &e))?;
        check_shape(&second, &a, &zone)?;
        // A stale release of the first reservation must not drop the new one
        // when it landed on a different handle.
        if second.handle != first.handle {
            f.backend
                .release(&first, Duration::ZERO)
                .await
                .map_err(|e| call_failed("stale release", &e))?;
        }
        let still = f
            .backend
            .lookup(&a, Some(&zone))
            .await
            .map_err(|e| call_failed("lookup", &e))?;
        match still {
            Some(r) if r.address == second.address => Ok(()),
            other => Err(Failure(format!(
                "after reserve-release-reserve, lookup({a}) returned {other:?}, expected {}",
                second.address
            ))),
        }
    })
    .await
}

/// Filling a zone yields [`IpamError::Exhausted`] naming the zone, and a
/// release makes room again.
pub async fn exhaustion(f: &Fixture) -> Result<Option<String>, Failure> {
    let Some(z) = f
        .zones
        .iter()
        .filter(|z| z.total() <= MAX_FILL)
        .min_by_key(|z| z.total())
    else {
        return Ok(Some(format!(
            "no zone with at most {MAX_FILL} free addresses"
        )));
    };
    let zone = z.zone.clone();
    let total = z.total();
    with_scratch(f, async |s| {
        let mut last = None;
        for i in 0..total {
            let owner = f.owner("fill", i);
            last = Some(
                s.reserve(&owner, &zone)
                    .await
                    .map_err(|e| call_failed(&format!("reserve {} of {total}", i + 1), &e))?,
            );
        }
        let extra = f.owner("fill", total);
        match s.reserve(&extra, &zone).await {
            Err(IpamError::Exhausted { zone: named, .. }) if named == zone.as_str() => {}
            Err(e) => {
                return Err(Failure(format!(
                    "reserve in full zone {zone}: expected Exhausted, got {e:?}"
                )));
            }
            Ok(r) => {
                return Err(Failure(format!(
                    "reserve in full zone {zone} (fixture says {total} free) succeeded with {}",
                    r.address
                )));
            }
        }
        if let Some(r) = last {
            f.backend
                .release(&r, Duration::ZERO)
                .await
                .map_err(|e| call_failed("release", &e))?;
            let again = s
                .reserve(&extra, &zone)
                .await
                .map_err(|e| call_failed("reserve after freeing one address", &e))?;
            if again.address != r.address {
                return Err(Failure(format!(
                    "after freeing {} in a full zone, reserve returned {}",
                    r.address, again.address
                )));
            }
        }
        Ok(())
    })
    .await
    .map(|()| None)
}

/// When the first subnet of a zone is full, reservations come from the next.
pub async fn zone_fall_through(f: &Fixture) -> Result<Option<String>, Failure> {
    let Some(z) = f
        .zones
        .iter()
        .find(|z| z.subnets.len() >= 2 && z.subnets[0] <= MAX_FILL && z.subnets[1] > 0)
    else {
        return Ok(Some(format!(
            "no zone with two subnets whose first has at most {MAX_FILL} free addresses"
        )));
    };
    let zone = z.zone.clone();
    let first = z.subnets[0];
    with_scratch(f, async |s| {
        let mut subnet = None;
        for i in 0..first {
            let owner = f.owner("fall", i);
            let r = s.reserve(&owner, &zone).await.map_err(|e| call_failed("reserve", &e))?;
            match &subnet {
                None => subnet = Some(r.subnet_id.clone()),
                Some(sid) if *sid != r.subnet_id => {
                    return Err(Failure(format!(
                        "reservation {} of {first} came from subnet {} before subnet {sid} was full",
                        i + 1,
                        r.subnet_id
                    )));
                }
                Some(_) => {}
            }
        }
        let owner = f.owner("fall", first);
        let r = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("reserve after the first subnet filled", &e))?;
        if Some(&r.subnet_id) == subnet.as_ref() {
            return Err(Failure(format!(
                "first subnet {} should be full (fixture: {first} free) but handed out {}",
                r.subnet_id, r.address
            )));
        }
        Ok(())
    })
    .await
    .map(|()| None)
}

async fn ours(f: &Fixture) -> Result<Vec<Reservation>, Failure> {
    let all = f
        .backend
        .list()
        .await
        .map_err(|e| call_failed("list", &e))?;
    Ok(all
        .into_iter()
        .filter(|r| r.owner.cluster == f.cluster)
        .collect())
}

/// `list` shows exactly the live reservations: reserved ones appear,
/// released ones disappear.
pub async fn list_exact(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(3)?.zone.clone();
    with_scratch(f, async |s| {
        let before: BTreeSet<_> = ours(f)
            .await?
            .into_iter()
            .map(|r| (r.owner, r.address))
            .collect();
        let mut made = Vec::new();
        for i in 0..3 {
            let owner = f.owner("list", i);
            made.push(
                s.reserve(&owner, &zone)
                    .await
                    .map_err(|e| call_failed("reserve", &e))?,
            );
        }
        f.backend
            .release(&made[1], Duration::ZERO)
            .await
            .map_err(|e| call_failed("release", &e))?;
        let mut want = before.clone();
        want.insert((made[0].owner.clone(), made[0].address));
        want.insert((made[2].owner.clone(), made[2].address));
        let got: BTreeSet<_> = ours(f)
            .await?
            .into_iter()
            .map(|r| (r.owner, r.address))
            .collect();
        if got != want {
            let missing: Vec<_> = want.difference(&got).collect();
            let extra: Vec<_> = got.difference(&want).collect();
            return Err(Failure(format!(
                "list is not the live set: missing {missing:?}, unexpected {extra:?}"
            )));
        }
        Ok(())
    })
    .await
}

/// Reserving in a zone the backend does not know is
/// [`IpamError::UnknownZone`] naming it.
pub async fn unknown_zone(f: &Fixture) -> Result<(), Failure> {
    let zone =
        Zone::parse("zone", "conformance-no-such-zone").map_err(|e| Failure(e.to_string()))?;
    let owner = f.owner("unknown", 0);
    match f.backend.reserve(&owner, &zone).await {
        Err(IpamError::UnknownZone { zone: z, .. }) if z == zone.as_str() => Ok(()),
        Err(e) => Err(Failure(format!("expected UnknownZone, got {e:?}"))),
        Ok(r) => {
            let _ = f.backend.release(&r, Duration::ZERO).await;
            Err(Failure(format!(
                "reserve in an unconfigured zone succeeded with {}",
                r.address
            )))
        }
    }
}

fn outcome(r: Result<(), Failure>) -> Outcome {
    match r {
        Ok(()) => Outcome::Passed,
        Err(f) => Outcome::Failed(f.0),
    }
}

fn outcome_opt(r: Result<Option<String>, Failure>) -> Outcome {
    match r {
        Ok(None) => Outcome::Passed,
        Ok(Some(why)) => Outcome::Skipped(why),
        Err(f) => Outcome::Failed(f.0),
    }
}

/// Runs every check in order and reports each.
pub async fn run_all(f: &Fixture) -> Report {
    let mut report = Report::default();
    let mut push = |name: &str, o: Outcome| report.checks.push((name.to_string(), o));
    push("idempotent_reserve", outcome(idempotent_reserve(f).await));
    push("distinct_owners", outcome(distinct_owners(f).await));
    push("concurrent_distinct", outcome(concurrent_distinct(f).await));
    push(
        "concurrent_same_owner",
        outcome(concurrent_same_owner(f).await),
    );
    push("release_idempotent", outcome(release_idempotent(f).await));
    push(
        "release_then_reserve",
        outcome(release_then_reserve(f).await),
    );
    push("exhaustion", outcome_opt(exhaustion(f).await));
    push("zone_fall_through", outcome_opt(zone_fall_through(f).await));
    push("list_exact", outcome(list_exact(f).await));
    push("unknown_zone", outcome(unknown_zone(f).await));
    report
}
