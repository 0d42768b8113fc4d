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
//!
//! The hold-down checks ([`hold_down`], [`hold_down_when_full`],
//! [`release_held_idempotent`], [`release_owner_all`]) release with
//! [`HOLD`] and never wait for it to end: they look at what `list` shows
//! (the entry held, its expiry about now + [`HOLD`]) and at what other owners
//! get, and free the held entries with a zero release when they are done.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use overlay_core::{Adoption, IpamBackend, IpamError, Owner, ParseError, Reservation, Zone};
use tokio::task::JoinSet;

/// Number of concurrent reservations the concurrency checks make.
pub const CONCURRENT_OWNERS: usize = 64;

/// Largest zone the exhaustion and fall-through checks are willing to fill.
pub const MAX_FILL: usize = 1024;

/// The hold-down the hold-down checks release with. Long enough that it
/// never ends during a run against a slow server: the checks never wait for
/// an expiry, and free what they held with a zero release.
pub const HOLD: Duration = Duration::from_secs(600);

/// How far a held entry's expiry may be from `now + HOLD` (backends may
/// keep whole seconds).
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

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

    /// The smallest zone a check may fill: at least `min` and at most
    /// [`MAX_FILL`] free addresses; otherwise why the check is skipped.
    fn fillable_zone(&self, min: usize) -> Result<(Zone, usize), String> {
        self.zones
            .iter()
            .filter(|z| z.total() >= min && z.total() <= MAX_FILL)
            .min_by_key(|z| z.total())
            .map(|z| (z.zone.clone(), z.total()))
            .ok_or_else(|| format!("no zone with at most {MAX_FILL} free addresses"))
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
    /// Set when the check released with a hold-down: cleanup then also
    /// frees the held entries of its owners.
    held: bool,
}

impl<'a> Scratch<'a> {
    fn new(fixture: &'a Fixture) -> Self {
        Self {
            fixture,
            owners: BTreeSet::new(),
            held: false,
        }
    }

    /// Releases `r` with the suite's hold-down ([`HOLD`]).
    async fn release_held(&mut self, r: &Reservation) -> Result<(), IpamError> {
        self.held = true;
        self.fixture.backend.release(r, HOLD).await
    }

    async fn reserve(&mut self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        self.owners.insert(owner.clone());
        self.fixture.backend.reserve(owner, zone).await
    }

    /// Fills `zone` (`total` free addresses) with owners `<check>-0..`;
    /// returns the last reservation.
    async fn fill(
        &mut self,
        check: &str,
        zone: &Zone,
        total: usize,
    ) -> Result<Option<Reservation>, Failure> {
        let mut last = None;
        for i in 0..total {
            let owner = self.fixture.owner(check, i);
            last = Some(
                self.reserve(&owner, zone)
                    .await
                    .map_err(|e| call_failed(&format!("reserve {} of {total}", i + 1), &e))?,
            );
        }
        Ok(last)
    }

    /// Releases everything owned by the check's owners; returns the first
    /// error.
    async fn cleanup(self) -> Result<(), Failure> {
        let mut first = None;
        for owner in &self.owners {
            // Every zone's address of the owner (checked by
            // `release_owner_all`).
            if let Err(e) = self
                .fixture
                .backend
                .release_owner(owner, Duration::ZERO)
                .await
            {
                first.get_or_insert_with(|| call_failed(&format!("cleanup of {owner}"), &e));
            }
        }
        if self.held {
            // Held entries are not live, so release_owner leaves them: free
            // each with a zero release.
            match self.fixture.backend.list().await {
                Ok(all) => {
                    for r in all.iter().filter(|r| self.owners.contains(&r.owner)) {
                        if let Err(e) = self.fixture.backend.release(r, Duration::ZERO).await {
                            first.get_or_insert_with(|| {
                                call_failed(
                                    &format!("cleanup of {} held by {}", r.address, r.owner),
                                    &e,
                                )
                            });
                        }
                    }
                }
                Err(e) => {
                    first.get_or_insert_with(|| call_failed("list for cleanup", &e));
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
    let (zone, total) = match f.fillable_zone(0) {
        Ok(z) => z,
        Err(skip) => return Ok(Some(skip)),
    };
    with_scratch(f, async |s| {
        let last = s.fill("fill", &zone, total).await?;
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

/// The entries `list` shows for `owner`, live and held.
async fn entries_of(f: &Fixture, owner: &Owner) -> Result<Vec<Reservation>, Failure> {
    Ok(ours(f)
        .await?
        .into_iter()
        .filter(|r| &r.owner == owner)
        .collect())
}

/// Checks that `list` shows `r`'s address held for its owner, expiring
/// about [`HOLD`] after a release made between `before` and `after`;
/// returns the held entry.
async fn expect_held(
    f: &Fixture,
    r: &Reservation,
    before: SystemTime,
    after: SystemTime,
) -> Result<Reservation, Failure> {
    let entries = entries_of(f, &r.owner).await?;
    let Some(held) = entries.iter().find(|e| e.address.ip() == r.address.ip()) else {
        return Err(Failure(format!(
            "after a release with a hold-down of {HOLD:?}, list shows no entry for {} at {} (it shows {entries:?}): a held address must stay visible",
            r.owner, r.address
        )));
    };
    let Some(until) = held.held_until else {
        return Err(Failure(format!(
            "after a release with a hold-down of {HOLD:?}, list shows {} of {} as live, not held",
            r.address, r.owner
        )));
    };
    let earliest = (before + HOLD).checked_sub(EXPIRY_SLACK).unwrap_or(before);
    let latest = after + HOLD + EXPIRY_SLACK;
    if until < earliest || until > latest {
        return Err(Failure(format!(
            "{} of {} is held until {}, expected about {} (now + {HOLD:?})",
            r.address,
            r.owner,
            humantime::format_rfc3339_seconds(until),
            humantime::format_rfc3339_seconds(after + HOLD)
        )));
    }
    Ok(held.clone())
}

/// Releases `r` with [`HOLD`] and checks the held entry `list` shows.
async fn release_and_expect_held(
    s: &mut Scratch<'_>,
    r: &Reservation,
) -> Result<Reservation, Failure> {
    let before = SystemTime::now();
    s.release_held(r)
        .await
        .map_err(|e| call_failed("release with a hold-down", &e))?;
    let after = SystemTime::now();
    expect_held(s.fixture, r, before, after).await
}

/// A release with a hold-down keeps the address visible as held, expiring
/// about now + hold; the owner has no live address meanwhile, another owner
/// gets a different address, and the owner reserving again in the zone
/// gets the same address back, live.
pub async fn hold_down(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(2)?.zone.clone();
    with_scratch(f, async |s| {
        let owner = f.owner("hold", 0);
        let first = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("reserve", &e))?;
        release_and_expect_held(s, &first).await?;
        let live = f
            .backend
            .lookup(&owner, Some(&zone))
            .await
            .map_err(|e| call_failed("lookup", &e))?;
        if let Some(r) = live {
            return Err(Failure(format!(
                "during the hold-down, lookup({owner}) returns {} as live",
                r.address
            )));
        }
        let all = f
            .backend
            .lookup_all(&owner)
            .await
            .map_err(|e| call_failed("lookup_all", &e))?;
        if !all.is_empty() {
            return Err(Failure(format!(
                "during the hold-down, lookup_all({owner}) returns {all:?}, expected nothing live"
            )));
        }
        let other = f.owner("hold", 1);
        let o = s
            .reserve(&other, &zone)
            .await
            .map_err(|e| call_failed("reserve for another owner", &e))?;
        if o.address.ip() == first.address.ip() {
            return Err(Failure(format!(
                "{} was held for {owner} but handed to {other}",
                first.address
            )));
        }
        let back = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("reserve again during the hold-down", &e))?;
        check_shape(&back, &owner, &zone)?;
        if back.address != first.address {
            return Err(Failure(format!(
                "{owner} reserved again during its hold-down and got {}, not its held {}",
                back.address, first.address
            )));
        }
        if back.is_held() {
            return Err(Failure(format!(
                "reserve returned {} for {owner} still marked held",
                back.address
            )));
        }
        let entries = entries_of(f, &owner).await?;
        match entries.as_slice() {
            [r] if r.address == first.address && !r.is_held() => Ok(()),
            _ => Err(Failure(format!(
                "after {owner} got its held address back, list shows {entries:?}; expected {} live, once",
                first.address
            ))),
        }
    })
    .await
}

/// In a full zone, an address held for one owner is not handed to another
/// ([`IpamError::Exhausted`]) but comes back to its owner; a zero release
/// of the held entry frees it for another owner.
pub async fn hold_down_when_full(f: &Fixture) -> Result<Option<String>, Failure> {
    let (zone, total) = match f.fillable_zone(1) {
        Ok(z) => z,
        Err(skip) => return Ok(Some(skip)),
    };
    with_scratch(f, async |s| {
        let Some(last) = s.fill("heldfull", &zone, total).await? else {
            return Ok(());
        };
        let owner = last.owner.clone();
        release_and_expect_held(s, &last).await?;
        let extra = f.owner("heldfull", total);
        match s.reserve(&extra, &zone).await {
            Err(IpamError::Exhausted { .. }) => {}
            Err(e) => {
                return Err(Failure(format!(
                    "reserve in zone {zone}, full but for one held address: expected Exhausted, got {e:?}"
                )));
            }
            Ok(r) if r.address.ip() == last.address.ip() => {
                return Err(Failure(format!(
                    "{} was held for {owner} but handed to {extra}",
                    r.address
                )));
            }
            Ok(r) => {
                return Err(Failure(format!(
                    "reserve in zone {zone}, full but for one held address (fixture says {total} free), succeeded with {}",
                    r.address
                )));
            }
        }
        let back = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("reserve of the holder in the full zone", &e))?;
        if back.address != last.address || back.is_held() {
            return Err(Failure(format!(
                "{owner} reserved again during its hold-down and got {back:?}, not its held {} live",
                last.address
            )));
        }
        let held = release_and_expect_held(s, &back).await?;
        f.backend
            .release(&held, Duration::ZERO)
            .await
            .map_err(|e| call_failed("zero release of a held entry", &e))?;
        let r = s
            .reserve(&extra, &zone)
            .await
            .map_err(|e| call_failed("reserve after the held address was freed", &e))?;
        if r.address.ip() != last.address.ip() {
            return Err(Failure(format!(
                "after a zero release freed the held {} in a full zone, reserve for {extra} returned {}",
                last.address, r.address
            )));
        }
        Ok(())
    })
    .await
    .map(|()| None)
}

/// Releasing a held entry again with a hold-down succeeds and leaves it
/// held with the same expiry; a zero release frees it; releasing it once
/// it is gone, with or without a hold-down, succeeds and brings nothing
/// back.
pub async fn release_held_idempotent(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(1)?.zone.clone();
    with_scratch(f, async |s| {
        let owner = f.owner("relheld", 0);
        let r = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("reserve", &e))?;
        let held = release_and_expect_held(s, &r).await?;
        for (what, again) in [("the live reservation", &r), ("the held entry", &held)] {
            s.release_held(again).await.map_err(|e| {
                call_failed(&format!("second release with a hold-down of {what}"), &e)
            })?;
            let entries = entries_of(f, &owner).await?;
            match entries.as_slice() {
                [e] if e.address == r.address && e.held_until == held.held_until => {}
                _ => {
                    return Err(Failure(format!(
                        "after releasing {what} of {owner} again with a hold-down, list shows {entries:?}; expected {} held with its first expiry",
                        r.address
                    )));
                }
            }
        }
        f.backend
            .release(&held, Duration::ZERO)
            .await
            .map_err(|e| call_failed("zero release of the held entry", &e))?;
        let entries = entries_of(f, &owner).await?;
        if !entries.is_empty() {
            return Err(Failure(format!(
                "after a zero release of the held {}, list still shows {entries:?}",
                r.address
            )));
        }
        f.backend
            .release(&held, Duration::ZERO)
            .await
            .map_err(|e| call_failed("second zero release (must succeed)", &e))?;
        s.release_held(&r)
            .await
            .map_err(|e| call_failed("release with a hold-down of a freed address (must succeed)", &e))?;
        let entries = entries_of(f, &owner).await?;
        if !entries.is_empty() {
            return Err(Failure(format!(
                "releasing the freed {} again brought back {entries:?}",
                r.address
            )));
        }
        Ok(())
    })
    .await
}

/// Reserves for `owner` in every zone with room; returns the reservations.
async fn reserve_everywhere(
    s: &mut Scratch<'_>,
    owner: &Owner,
) -> Result<Vec<Reservation>, Failure> {
    let zones: Vec<Zone> = s
        .fixture
        .zones
        .iter()
        .filter(|z| z.total() > 0)
        .map(|z| z.zone.clone())
        .collect();
    let mut made = Vec::new();
    for zone in &zones {
        let r = s
            .reserve(owner, zone)
            .await
            .map_err(|e| call_failed(&format!("reserve in zone {zone}"), &e))?;
        check_shape(&r, owner, zone)?;
        made.push(r);
    }
    if made.is_empty() {
        return Err(Failure("fixture: no zone with a free address".into()));
    }
    Ok(made)
}

fn addresses(rs: &[Reservation]) -> BTreeSet<ipnetwork::IpNetwork> {
    rs.iter().map(|r| r.address).collect()
}

/// `lookup_all` finds an owner's reservation in every zone; `lookup`
/// without a zone returns the lowest address, with a zone the one there.
pub async fn lookup_all_zones(f: &Fixture) -> Result<(), Failure> {
    with_scratch(f, async |s| {
        let owner = f.owner("all", 0);
        let made = reserve_everywhere(s, &owner).await?;
        let found = f
            .backend
            .lookup_all(&owner)
            .await
            .map_err(|e| call_failed("lookup_all", &e))?;
        if addresses(&found) != addresses(&made) || found.len() != made.len() {
            return Err(Failure(format!(
                "lookup_all({owner}) returned {:?}, expected {:?}",
                addresses(&found),
                addresses(&made)
            )));
        }
        if let Some(r) = found.iter().find(|r| r.is_held() || r.owner != owner) {
            return Err(Failure(format!(
                "lookup_all({owner}) returned {r:?}: not a live reservation of {owner}"
            )));
        }
        let lowest = made.iter().map(|r| r.address.ip()).min();
        let any = f
            .backend
            .lookup(&owner, None)
            .await
            .map_err(|e| call_failed("lookup without a zone", &e))?;
        if any.as_ref().map(|r| r.address.ip()) != lowest {
            return Err(Failure(format!(
                "lookup({owner}) without a zone returned {:?}, expected the lowest address {lowest:?}",
                any.map(|r| r.address)
            )));
        }
        for r in &made {
            let got = f
                .backend
                .lookup(&owner, Some(&r.zone))
                .await
                .map_err(|e| call_failed("lookup", &e))?;
            if got.as_ref().map(|g| g.address) != Some(r.address) {
                return Err(Failure(format!(
                    "lookup({owner}) in zone {} returned {:?}, expected {}",
                    r.zone,
                    got.map(|g| g.address),
                    r.address
                )));
            }
        }
        Ok(())
    })
    .await
}

/// `release_owner` releases every reservation of the owner, in every zone,
/// and returns them: with a hold-down they are listed as held and nothing
/// live is found for the owner; with zero they are gone.
pub async fn release_owner_all(f: &Fixture) -> Result<(), Failure> {
    with_scratch(f, async |s| {
        let owner = f.owner("relown", 0);
        let made = reserve_everywhere(s, &owner).await?;
        s.held = true;
        let before = SystemTime::now();
        let released = f
            .backend
            .release_owner(&owner, HOLD)
            .await
            .map_err(|e| call_failed("release_owner with a hold-down", &e))?;
        let after = SystemTime::now();
        if addresses(&released) != addresses(&made) || released.len() != made.len() {
            return Err(Failure(format!(
                "release_owner({owner}) returned {:?}, expected everything it held: {:?}",
                addresses(&released),
                addresses(&made)
            )));
        }
        let live = f
            .backend
            .lookup(&owner, None)
            .await
            .map_err(|e| call_failed("lookup", &e))?;
        let all = f
            .backend
            .lookup_all(&owner)
            .await
            .map_err(|e| call_failed("lookup_all", &e))?;
        if live.is_some() || !all.is_empty() {
            return Err(Failure(format!(
                "after release_owner({owner}), lookup returns {live:?} and lookup_all {all:?}; expected nothing live"
            )));
        }
        for r in &made {
            expect_held(f, r, before, after).await?;
        }
        let other = f.owner("relown", 1);
        let made = reserve_everywhere(s, &other).await?;
        let released = f
            .backend
            .release_owner(&other, Duration::ZERO)
            .await
            .map_err(|e| call_failed("release_owner", &e))?;
        if addresses(&released) != addresses(&made) {
            return Err(Failure(format!(
                "release_owner({other}) returned {:?}, expected {:?}",
                addresses(&released),
                addresses(&made)
            )));
        }
        let left = entries_of(f, &other).await?;
        if !left.is_empty() {
            return Err(Failure(format!(
                "after release_owner({other}) without a hold-down, list still shows {left:?}"
            )));
        }
        Ok(())
    })
    .await
}

/// Asks `inspect_adoption` and then `adopt` about `address` for `owner`;
/// fails unless both answers pass `expect` (described as `expected`).
async fn both_adoption_answers(
    f: &Fixture,
    owner: &Owner,
    address: ipnetwork::IpNetwork,
    expected: &str,
    expect: impl Fn(&Adoption) -> bool,
) -> Result<(), Failure> {
    let inspected = f
        .backend
        .inspect_adoption(owner, address)
        .await
        .map_err(|e| call_failed("inspect_adoption", &e))?;
    let adopted = f
        .backend
        .adopt(owner, address)
        .await
        .map_err(|e| call_failed("adopt", &e))?;
    for (call, answer) in [("inspect_adoption", inspected), ("adopt", adopted)] {
        if !expect(&answer) {
            return Err(Failure(format!(
                "{call}({owner}, {address}) answered {answer:?}, expected {expected}"
            )));
        }
    }
    Ok(())
}

/// Adoption of what needs none: `inspect_adoption` and `adopt` of an
/// address the owner already holds answer [`Adoption::Ours`] with that
/// reservation and change nothing; of an address nobody holds they answer
/// [`Adoption::Missing`] and reserve nothing.
pub async fn adoption_ours_and_missing(f: &Fixture) -> Result<(), Failure> {
    let zone = f.roomy_zone(2)?.zone.clone();
    with_scratch(f, async |s| {
        let owner = f.owner("adopt", 0);
        let held = s
            .reserve(&owner, &zone)
            .await
            .map_err(|e| call_failed("reserve", &e))?;
        let before = entries_of(f, &owner).await?;
        both_adoption_answers(f, &owner, held.address, "Ours with that reservation", |a| {
            matches!(a, Adoption::Ours { reservation } if reservation.address.ip() == held.address.ip() && reservation.owner == owner && !reservation.is_held())
        })
        .await?;
        let after = entries_of(f, &owner).await?;
        if after != before {
            return Err(Failure(format!(
                "adopting {owner}'s own {} changed what list shows for it: {before:?} became {after:?}",
                held.address
            )));
        }
        // An address nobody holds: reserved, then freed.
        let gone = f.owner("adopt", 1);
        let freed = s
            .reserve(&gone, &zone)
            .await
            .map_err(|e| call_failed("reserve", &e))?;
        f.backend
            .release(&freed, Duration::ZERO)
            .await
            .map_err(|e| call_failed("release", &e))?;
        let stranger = f.owner("adopt", 2);
        s.owners.insert(stranger.clone());
        both_adoption_answers(f, &stranger, freed.address, "Missing", |a| {
            *a == Adoption::Missing
        })
        .await?;
        let now = ours(f).await?;
        if let Some(r) = now.iter().find(|r| r.address.ip() == freed.address.ip()) {
            return Err(Failure(format!(
                "after adopt of the free {}, list shows {r:?}",
                freed.address
            )));
        }
        Ok(())
    })
    .await
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
    push("hold_down", outcome(hold_down(f).await));
    push(
        "hold_down_when_full",
        outcome_opt(hold_down_when_full(f).await),
    );
    push(
        "release_held_idempotent",
        outcome(release_held_idempotent(f).await),
    );
    push("lookup_all_zones", outcome(lookup_all_zones(f).await));
    push("release_owner_all", outcome(release_owner_all(f).await));
    push(
        "adoption_ours_and_missing",
        outcome(adoption_ours_and_missing(f).await),
    );
    report
}
