//! Configuration and allocation engine shared by the embedded backends
//! ([`crate::memory`] and [`crate::file`]).
//!
//! A zone maps to an ordered list of pools (CIDRs). A reservation takes the
//! lowest free address of the first pool that has one, skipping the network
//! and broadcast addresses, the pool's gateway and its reserved addresses.
//!
//! A release with a hold-down keeps the entry, marked held until a time:
//! no other owner gets the address before then; the same owner reserving
//! again in the zone gets it back. After the expiry the address is free
//! again, and the held entry is replaced when it is handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use overlay_core::{Cidr, IpamError, Owner, ParseError, Reservation, Zone};
use serde::{Deserialize, Serialize};

/// One pool of addresses.
///
/// YAML: `{cidr: 192.0.2.0/24, gateway: 192.0.2.1, reserved: [192.0.2.10]}`;
/// only `cidr` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's prefix (host bits zero).
    pub cidr: Cidr,
    /// The pool's gateway; `None` means the first host address. It is never
    /// handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Addresses that are never handed out (besides network, broadcast and
    /// gateway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<IpAddr>,
}

impl PoolConfig {
    /// A pool over `cidr` with the default gateway (first host) and nothing
    /// reserved.
    pub fn new(cidr: Cidr) -> Self {
        Self {
            cidr,
            gateway: None,
            reserved: Vec::new(),
        }
    }

    /// Parses `cidr` (e.g. `"192.0.2.0/24"`) into a pool.
    pub fn parse(cidr: &str) -> Result<Self, ParseError> {
        Ok(Self::new(Cidr::parse("pool cidr", cidr)?))
    }

    /// Sets the gateway.
    pub fn with_gateway(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Adds a reserved address.
    pub fn with_reserved(mut self, address: IpAddr) -> Self {
        self.reserved.push(address);
        self
    }

    /// The gateway in effect: the configured one or the first host.
    pub fn effective_gateway(&self) -> IpAddr {
        self.gateway.unwrap_or_else(|| first_host(&self.cidr))
    }

    /// Whether this pool hands out `address`: a host address of the pool,
    /// neither its gateway nor reserved.
    pub(crate) fn assignable(&self, address: IpAddr) -> bool {
        let (lo, hi) = host_range(&self.cidr);
        let v = to_u128(address);
        self.cidr.network().contains(address)
            && (lo..=hi).contains(&v)
            && address != self.effective_gateway()
            && !self.reserved.contains(&address)
    }

    /// Number of addresses this pool can hand out.
    pub fn capacity(&self) -> u128 {
        let (lo, hi) = host_range(&self.cidr);
        if lo > hi {
            return 0;
        }
        let mut skip: BTreeSet<u128> = self.reserved.iter().map(|a| to_u128(*a)).collect();
        skip.insert(to_u128(self.effective_gateway()));
        let skipped = skip.iter().filter(|v| **v >= lo && **v <= hi).count() as u128;
        (hi - lo + 1).saturating_sub(skipped)
    }
}

/// Zones and their pools, for the embedded backends.
///
/// Build it in code:
///
/// ```
/// use overlay_ipam::pools::{PoolConfig, PoolsConfig};
/// let cfg = PoolsConfig::new()
///     .with_pool("dal10", PoolConfig::parse("192.0.2.0/28")?)
///     .with_pool("dal10", PoolConfig::parse("198.51.100.0/28")?);
/// assert_eq!(cfg.validate(), Ok(()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// or deserialize it from YAML:
///
/// ```yaml
/// zones:
///   dal10:
///     - cidr: 192.0.2.0/28
///       gateway: 192.0.2.14
///       reserved: [192.0.2.2]
///     - cidr: 198.51.100.0/28
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolsConfig {
    /// Zone name → pools, tried in order.
    pub zones: BTreeMap<String, Vec<PoolConfig>>,
}

/// A problem in a [`PoolsConfig`], naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PoolsConfigError {
    /// Path of the offending field (`zones.dal10[1].gateway`).
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl PoolsConfig {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `pool` to the pools of `zone`.
    pub fn with_pool(mut self, zone: impl Into<String>, pool: PoolConfig) -> Self {
        self.zones.entry(zone.into()).or_default().push(pool);
        self
    }

    /// Checks the configuration: valid zone names, at least one pool per
    /// zone, gateway and reserved addresses inside their pool, no pool
    /// overlapping another, and room for at least one address per pool.
    pub fn validate(&self) -> Result<(), PoolsConfigError> {
        if self.zones.is_empty() {
            return Err(PoolsConfigError {
                field: "zones".into(),
                problem: "no zone configured; add at least one zone with a pool".into(),
            });
        }
        let mut seen: Vec<(String, Cidr)> = Vec::new();
        for (zone, pools) in &self.zones {
            if let Err(e) = Zone::parse("zone", zone) {
                return Err(PoolsConfigError {
                    field: format!("zones.{zone}"),
                    problem: e.to_string(),
                });
            }
            if pools.is_empty() {
                return Err(PoolsConfigError {
                    field: format!("zones.{zone}"),
                    problem: "no pool listed; give at least one CIDR".into(),
                });
            }
            for (i, pool) in pools.iter().enumerate() {
                let at = format!("zones.{zone}[{i}]");
                if let Some(gw) = pool.gateway
                    && !pool.cidr.network().contains(gw)
                {
                    return Err(PoolsConfigError {
                        field: format!("{at}.gateway"),
                        problem: format!("{gw} is not inside {}", pool.cidr),
                    });
                }
                for (j, r) in pool.reserved.iter().enumerate() {
                    if !pool.cidr.network().contains(*r) {
                        return Err(PoolsConfigError {
                            field: format!("{at}.reserved[{j}]"),
                            problem: format!("{r} is not inside {}", pool.cidr),
                        });
                    }
                }
                if pool.capacity() == 0 {
                    return Err(PoolsConfigError {
                        field: format!("{at}.cidr"),
                        problem: format!(
                            "{} has no assignable address once network, broadcast, gateway and reserved addresses are skipped",
                            pool.cidr
                        ),
                    });
                }
                if let Some((other, _)) = seen.iter().find(|(_, c)| c.overlaps(&pool.cidr)) {
                    return Err(PoolsConfigError {
                        field: format!("{at}.cidr"),
                        problem: format!("{} overlaps the pool at {other}", pool.cidr),
                    });
                }
                seen.push((at, pool.cidr));
            }
        }
        Ok(())
    }
}

/// One address entry of the embedded backends: in use by `owner` (live) or,
/// with `held_until`, released and held back from every other owner until
/// then. The file backend stores these as they are; read a state file with
/// [`crate::file::read_state`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Zone of the pool the address came from.
    pub zone: Zone,
    /// The pool (its CIDR) the address came from.
    pub pool: Cidr,
    /// The address.
    pub address: IpAddr,
    /// Who holds it (or held it, while `held_until` is set).
    pub owner: Owner,
    /// End of the hold-down, an RFC 3339 string in the state file. Absent
    /// while live, and in state files written before hold-downs existed.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339")]
    pub held_until: Option<SystemTime>,
}

impl Entry {
    fn is_live(&self) -> bool {
        self.held_until.is_none()
    }

    /// Whether the address is unavailable to other owners at `now`: live,
    /// or held with the hold-down not yet over.
    fn blocks(&self, now: SystemTime) -> bool {
        self.held_until.is_none_or(|until| until > now)
    }
}

/// `held_until` as an RFC 3339 string (`2026-11-27T12:00:00Z`).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        until: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match until {
            None => s.serialize_none(),
            Some(t) => match super::format_time(*t) {
                Some(text) => s.serialize_some(&text),
                None => Err(S::Error::custom(
                    "held_until is outside 1970..9999 and cannot be written as RFC 3339",
                )),
            },
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => humantime::parse_rfc3339(&text).map(Some).map_err(|e| {
                D::Error::custom(format!(
                    "held_until {text:?} is not an RFC 3339 UTC time like 2026-11-27T12:00:00Z ({e})"
                ))
            }),
        }
    }
}

/// First second that RFC 3339 (and `humantime`) cannot write: year 10000.
const YEAR_10000: u64 = 253_402_300_800;

/// `t` as RFC 3339, `None` when it cannot be written (before 1970, after
/// 9999).
pub(crate) fn format_time(t: SystemTime) -> Option<String> {
    let since = t.duration_since(UNIX_EPOCH).ok()?;
    (since.as_secs() < YEAR_10000).then(|| humantime::format_rfc3339(t).to_string())
}

/// The end of a hold-down of `hold` starting at `now`; refused when it
/// cannot be written down (after the year 9999).
pub(crate) fn hold_end(now: SystemTime, hold: Duration) -> Result<SystemTime, IpamError> {
    now.checked_add(hold)
        .filter(|end| {
            end.duration_since(UNIX_EPOCH)
                .is_ok_and(|d| d.as_secs() < YEAR_10000)
        })
        .ok_or_else(|| {
            IpamError::Invalid(ParseError::new(
                "hold-down",
                &format!("{hold:?}"),
                "ends after the year 9999; use a hold-down of minutes or hours",
            ))
        })
}

/// The allocation engine: configuration plus the address entries. Not
/// synchronised; the backends wrap it in a lock. Operations that depend on
/// the time take it as `now`.
#[derive(Debug)]
pub(crate) struct Engine {
    zones: BTreeMap<Zone, Vec<PoolConfig>>,
    entries: Vec<Entry>,
}

impl Engine {
    pub(crate) fn new(config: &PoolsConfig) -> Result<Self, IpamError> {
        config.validate().map_err(|e| {
            IpamError::Invalid(ParseError::new(e.field.clone(), "", e.problem.clone()))
        })?;
        let mut zones = BTreeMap::new();
        for (z, pools) in &config.zones {
            zones.insert(Zone::parse("zone", z)?, pools.clone());
        }
        Ok(Self {
            zones,
            entries: Vec::new(),
        })
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Replaces every entry (state read from a file, or a rollback). Entries
    /// whose pool is not configured are kept: they are listed, found and
    /// released, never allocated from.
    pub(crate) fn set_entries(&mut self, entries: Vec<Entry>) {
        self.entries = entries;
    }

    fn to_reservation(&self, h: &Entry) -> Reservation {
        let gateway = self
            .zones
            .get(&h.zone)
            .and_then(|pools| pools.iter().find(|p| p.cidr == h.pool))
            .map(PoolConfig::effective_gateway);
        let address = IpNetwork::new(h.address, h.pool.prefix())
            .unwrap_or_else(|_| IpNetwork::from(h.address));
        Reservation {
            address,
            gateway,
            zone: h.zone.clone(),
            subnet_id: h.pool.to_string(),
            handle: h.address.to_string(),
            owner: h.owner.clone(),
            held_until: h.held_until,
        }
    }

    /// The owner's live reservation in `zone` (or anywhere); the lowest
    /// address when there are several.
    pub(crate) fn lookup(&self, owner: &Owner, zone: Option<&Zone>) -> Option<Reservation> {
        self.entries
            .iter()
            .filter(|h| h.is_live() && &h.owner == owner && zone.is_none_or(|z| &h.zone == z))
            .min_by_key(|h| h.address)
            .map(|h| self.to_reservation(h))
    }

    /// Every live reservation of the owner, configured pool or not, by
    /// address.
    pub(crate) fn lookup_all(&self, owner: &Owner) -> Vec<Reservation> {
        let mut all: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|h| h.is_live() && &h.owner == owner)
            .collect();
        all.sort_by_key(|h| h.address);
        all.into_iter().map(|h| self.to_reservation(h)).collect()
    }

    /// Every entry, live and held.
    pub(crate) fn list(&self) -> Vec<Reservation> {
        self.entries
            .iter()
            .map(|h| self.to_reservation(h))
            .collect()
    }

    /// Reserves (or finds) the owner's address: its live address in the
    /// zone; else its held address in the zone, live again; else the lowest
    /// free address, where an expired hold-down of another owner counts as
    /// free (and is replaced). Returns the reservation and whether the
    /// state changed.
    pub(crate) fn reserve(
        &mut self,
        owner: &Owner,
        zone: &Zone,
        now: SystemTime,
    ) -> Result<(Reservation, bool), IpamError> {
        if let Some(r) = self.lookup(owner, Some(zone)) {
            return Ok((r, false));
        }
        let pools = self.zones.get(zone).ok_or_else(|| IpamError::UnknownZone {
            zone: zone.to_string(),
            known: self.zones.keys().map(Zone::to_string).collect(),
        })?;
        // Its own held address comes back, if its pool still hands it out.
        let own = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_live() && &h.owner == owner && &h.zone == zone)
            .filter(|(_, h)| {
                pools
                    .iter()
                    .any(|p| p.cidr == h.pool && p.assignable(h.address))
            })
            .min_by_key(|(_, h)| h.address)
            .map(|(i, _)| i);
        if let Some(i) = own {
            self.entries[i].held_until = None;
            return Ok((self.to_reservation(&self.entries[i]), true));
        }
        for pool in pools {
            if let Some(address) = lowest_free(&self.entries, pool, now) {
                // An expired hold-down of the address ends here.
                self.entries
                    .retain(|h| h.address != address || h.blocks(now));
                let entry = Entry {
                    zone: zone.clone(),
                    pool: pool.cidr,
                    address,
                    owner: owner.clone(),
                    held_until: None,
                };
                let r = self.to_reservation(&entry);
                self.entries.push(entry);
                return Ok((r, true));
            }
        }
        Err(IpamError::Exhausted {
            zone: zone.to_string(),
            subnets: pools.iter().map(|p| p.cidr.to_string()).collect(),
        })
    }

    /// Releases the reservation if the address still belongs to the same
    /// owner: with `hold` zero the entry goes (live or held); otherwise a
    /// live entry is held until `now + hold` and a held one is left as it
    /// is. Returns whether the state changed.
    pub(crate) fn release(
        &mut self,
        r: &Reservation,
        hold: Duration,
        now: SystemTime,
    ) -> Result<bool, IpamError> {
        let addr = r.address.ip();
        self.release_where(hold, now, |h| h.address == addr && h.owner == r.owner)
    }

    /// Releases every live entry of `owner` (as [`Engine::release`]);
    /// returns them as they were.
    pub(crate) fn release_owner(
        &mut self,
        owner: &Owner,
        hold: Duration,
        now: SystemTime,
    ) -> Result<Vec<Reservation>, IpamError> {
        let live = self.lookup_all(owner);
        self.release_where(hold, now, |h| h.is_live() && &h.owner == owner)?;
        Ok(live)
    }

    /// Applies a release to the entries `which` selects; returns whether
    /// anything changed.
    fn release_where(
        &mut self,
        hold: Duration,
        now: SystemTime,
        which: impl Fn(&Entry) -> bool,
    ) -> Result<bool, IpamError> {
        if hold.is_zero() {
            let before = self.entries.len();
            self.entries.retain(|h| !which(h));
            return Ok(before != self.entries.len());
        }
        let until = hold_end(now, hold)?;
        let mut changed = false;
        // A held entry keeps its expiry: releasing again does not extend it.
        for h in self.entries.iter_mut().filter(|h| h.is_live() && which(h)) {
            h.held_until = Some(until);
            changed = true;
        }
        Ok(changed)
    }
}

/// The lowest address of `pool` no entry blocks at `now`.
fn lowest_free(entries: &[Entry], pool: &PoolConfig, now: SystemTime) -> Option<IpAddr> {
    let (lo, hi) = host_range(&pool.cidr);
    if lo > hi {
        return None;
    }
    let mut taken: BTreeSet<u128> = pool.reserved.iter().map(|a| to_u128(*a)).collect();
    taken.insert(to_u128(pool.effective_gateway()));
    taken.extend(
        entries
            .iter()
            .filter(|h| h.blocks(now) && pool.cidr.network().contains(h.address))
            .map(|h| to_u128(h.address)),
    );
    // Walk the taken addresses in order; the first gap is the answer.
    let mut candidate = lo;
    for t in taken.range(lo..=hi) {
        if *t == candidate {
            candidate = candidate.checked_add(1)?;
        } else if *t > candidate {
            break;
        }
    }
    (candidate <= hi).then(|| from_u128(&pool.cidr, candidate))
}

pub(crate) fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

pub(crate) fn from_u128(cidr: &Cidr, v: u128) -> IpAddr {
    if cidr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// First and last assignable address of a prefix (as integers). IPv4
/// prefixes up to /30 skip network and broadcast; /31 and /32 use every
/// address. IPv6 skips the subnet-router anycast (network) address.
pub(crate) fn host_range(cidr: &Cidr) -> (u128, u128) {
    let net = cidr.network();
    let first = to_u128(net.network());
    let (bits, v4) = if cidr.is_ipv4() {
        (32u32, true)
    } else {
        (128u32, false)
    };
    let host_bits = bits - u32::from(cidr.prefix());
    let size_minus_1 = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let last = first.saturating_add(size_minus_1);
    if v4 {
        if host_bits >= 2 {
            (first + 1, last - 1)
        } else {
            (first, last)
        }
    } else if host_bits >= 1 {
        (first + 1, last)
    } else {
        (first, last)
    }
}

fn first_host(cidr: &Cidr) -> IpAddr {
    from_u128(cidr, host_range(cidr).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(n: &str) -> Owner {
        Owner::new("c1", n)
    }

    /// A fixed "now" (2026-11-18T11:06:40Z): the engine takes the time as
    /// an argument, so hold-downs are tested without waiting.
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }
    const MIN: Duration = Duration::from_secs(60);

    /// A zone "z1" of one /30: a single assignable address (.2; .1 is the
    /// gateway).
    fn one_address() -> (Engine, Zone) {
        let cfg = PoolsConfig::new().with_pool("z1", PoolConfig::parse("192.0.2.0/30").unwrap());
        (Engine::new(&cfg).unwrap(), Zone::parse("z", "z1").unwrap())
    }

    #[test]
    fn a_held_address_goes_to_nobody_else_until_it_expires() {
        let (mut e, z) = one_address();
        let (a, _) = e.reserve(&owner("a"), &z, t0()).unwrap();
        assert!(e.release(&a, 5 * MIN, t0()).unwrap());
        let listed = e.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].held_until, Some(t0() + 5 * MIN));
        assert_eq!(listed[0].owner, owner("a"));
        // Held: not live for its owner, not free for anyone else.
        assert_eq!(e.lookup(&owner("a"), None), None);
        assert!(e.lookup_all(&owner("a")).is_empty());
        assert!(matches!(
            e.reserve(&owner("b"), &z, t0() + 5 * MIN - Duration::from_secs(1)),
            Err(IpamError::Exhausted { .. })
        ));
        // From the expiry on it is free, and the held entry is replaced.
        let (b, changed) = e.reserve(&owner("b"), &z, t0() + 5 * MIN).unwrap();
        assert!(changed);
        assert_eq!(b.address, a.address);
        assert_eq!(b.held_until, None);
        assert_eq!(e.list(), [b]);
    }

    #[test]
    fn the_owner_gets_its_held_address_back_even_after_expiry() {
        let (mut e, z) = one_address();
        let (a, _) = e.reserve(&owner("a"), &z, t0()).unwrap();
        e.release(&a, MIN, t0()).unwrap();
        let (again, changed) = e.reserve(&owner("a"), &z, t0() + 10 * MIN).unwrap();
        assert!(changed);
        assert_eq!(again, a);
        assert_eq!(e.lookup(&owner("a"), Some(&z)), Some(a));
    }

    #[test]
    fn releasing_a_held_entry_again_keeps_its_expiry_and_zero_frees_it() {
        let (mut e, z) = one_address();
        let (a, _) = e.reserve(&owner("a"), &z, t0()).unwrap();
        e.release(&a, MIN, t0()).unwrap();
        // Neither the stale live reservation nor the held one extends it.
        assert!(!e.release(&a, 10 * MIN, t0() + MIN / 2).unwrap());
        let held = e.list().remove(0);
        assert!(!e.release(&held, 10 * MIN, t0() + MIN / 2).unwrap());
        assert_eq!(e.list()[0].held_until, Some(t0() + MIN));
        assert!(e.release(&held, Duration::ZERO, t0()).unwrap());
        assert!(e.list().is_empty());
        assert!(!e.release(&held, Duration::ZERO, t0()).unwrap());
        assert!(!e.release(&held, MIN, t0()).unwrap());
        assert!(e.list().is_empty());
        let (b, _) = e.reserve(&owner("b"), &z, t0()).unwrap();
        assert_eq!(b.address, a.address);
    }

    #[test]
    fn a_release_by_another_owner_changes_nothing() {
        let (mut e, z) = one_address();
        let (a, _) = e.reserve(&owner("a"), &z, t0()).unwrap();
        let mut stale = a.clone();
        stale.owner = owner("b");
        assert!(!e.release(&stale, Duration::ZERO, t0()).unwrap());
        assert!(!e.release(&stale, MIN, t0()).unwrap());
        assert_eq!(e.list(), [a]);
    }

    #[test]
    fn absurd_hold_downs_are_refused() {
        assert_eq!(hold_end(t0(), MIN).unwrap(), t0() + MIN);
        let (mut e, z) = one_address();
        let (a, _) = e.reserve(&owner("a"), &z, t0()).unwrap();
        for hold in [Duration::MAX, Duration::from_secs(10_000 * 366 * 86_400)] {
            let err = e.release(&a, hold, t0()).unwrap_err();
            assert!(matches!(err, IpamError::Invalid(_)), "{err:?}");
            assert!(err.to_string().contains("hold-down"), "{err}");
        }
        assert_eq!(e.list(), [a], "nothing changed");
    }

    #[test]
    fn release_owner_releases_every_live_entry_and_returns_them() {
        let cfg = PoolsConfig::new()
            .with_pool("z1", PoolConfig::parse("192.0.2.0/29").unwrap())
            .with_pool("z2", PoolConfig::parse("198.51.100.0/29").unwrap());
        let mut e = Engine::new(&cfg).unwrap();
        let z1 = Zone::parse("z", "z1").unwrap();
        let z2 = Zone::parse("z", "z2").unwrap();
        let (b, _) = e.reserve(&owner("a"), &z2, t0()).unwrap();
        let (a, _) = e.reserve(&owner("a"), &z1, t0()).unwrap();
        let (other, _) = e.reserve(&owner("o"), &z1, t0()).unwrap();
        // Lowest address first, whatever the order of reservation.
        assert_eq!(e.lookup(&owner("a"), None), Some(a.clone()));
        assert_eq!(e.lookup_all(&owner("a")), [a.clone(), b.clone()]);
        let released = e.release_owner(&owner("a"), MIN, t0()).unwrap();
        assert_eq!(released, [a, b]);
        assert!(e.lookup_all(&owner("a")).is_empty());
        assert_eq!(
            e.list().iter().filter(|r| r.is_held()).count(),
            2,
            "{:?}",
            e.list()
        );
        assert!(e.release_owner(&owner("a"), MIN, t0()).unwrap().is_empty());
        assert_eq!(e.lookup(&owner("o"), None), Some(other));
    }

    #[test]
    fn entries_outside_the_configured_pools_are_kept_found_and_never_allocated() {
        let (mut e, z) = one_address();
        let gone = Entry {
            zone: z.clone(),
            pool: Cidr::parse("pool", "203.0.113.0/24").unwrap(),
            address: "203.0.113.9".parse().unwrap(),
            owner: owner("old"),
            held_until: None,
        };
        let held_gone = Entry {
            address: "203.0.113.10".parse().unwrap(),
            owner: owner("a"),
            held_until: Some(t0() + MIN),
            ..gone.clone()
        };
        e.set_entries(vec![gone.clone(), held_gone]);
        assert_eq!(e.list().len(), 2);
        let found = e.lookup_all(&owner("old"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].address.ip(), gone.address);
        assert_eq!(found[0].gateway, None, "the pool's gateway is unknown");
        // Owner "a" held an address in the removed pool: it gets a new one
        // from the configured pool instead.
        let (a, _) = e.reserve(&owner("a"), &z, t0()).unwrap();
        assert_eq!(a.address.to_string(), "192.0.2.2/30");
        assert_eq!(
            e.release_owner(&owner("old"), Duration::ZERO, t0())
                .unwrap(),
            found
        );
        assert!(e.lookup_all(&owner("old")).is_empty());
    }

    #[test]
    fn skips_network_gateway_reserved_and_broadcast() {
        let cfg = PoolsConfig::new().with_pool(
            "z1",
            PoolConfig::parse("192.0.2.0/29")
                .unwrap()
                .with_reserved("192.0.2.2".parse().unwrap()),
        );
        let mut e = Engine::new(&cfg).unwrap();
        let z = Zone::parse("z", "z1").unwrap();
        let got: Vec<String> = (0..4)
            .map(|i| {
                e.reserve(&owner(&format!("n{i}")), &z, t0())
                    .unwrap()
                    .0
                    .address
                    .to_string()
            })
            .collect();
        // .0 network, .1 gateway (default), .2 reserved, .7 broadcast.
        assert_eq!(
            got,
            [
                "192.0.2.3/29",
                "192.0.2.4/29",
                "192.0.2.5/29",
                "192.0.2.6/29"
            ]
        );
        assert!(matches!(
            e.reserve(&owner("n9"), &z, t0()),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn configured_gateway_is_skipped_and_reported() {
        let cfg = PoolsConfig::new().with_pool(
            "z1",
            PoolConfig::parse("192.0.2.0/30")
                .unwrap()
                .with_gateway("192.0.2.2".parse().unwrap()),
        );
        let mut e = Engine::new(&cfg).unwrap();
        let z = Zone::parse("z", "z1").unwrap();
        let (r, _) = e.reserve(&owner("a"), &z, t0()).unwrap();
        assert_eq!(r.address.to_string(), "192.0.2.1/30");
        assert_eq!(r.gateway, Some("192.0.2.2".parse().unwrap()));
        assert!(e.reserve(&owner("b"), &z, t0()).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let cfg = PoolsConfig::new().with_pool(
            "z1",
            PoolConfig::parse("192.0.2.0/24")
                .unwrap()
                .with_gateway("198.51.100.1".parse().unwrap()),
        );
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field, "zones.z1[0].gateway");

        let overlap = PoolsConfig::new()
            .with_pool("a", PoolConfig::parse("192.0.2.0/24").unwrap())
            .with_pool("b", PoolConfig::parse("192.0.2.128/25").unwrap());
        let err = overlap.validate().unwrap_err();
        assert_eq!(err.field, "zones.b[0].cidr");
        assert!(err.problem.contains("overlaps"), "{err}");

        let bad_zone =
            PoolsConfig::new().with_pool("bad zone", PoolConfig::parse("192.0.2.0/24").unwrap());
        assert!(bad_zone.validate().is_err());
        assert!(PoolsConfig::new().validate().is_err());
    }

    #[test]
    fn yaml_round_trip() {
        let y = "zones:\n  dal10:\n    - cidr: 192.0.2.0/28\n      gateway: 192.0.2.14\n      reserved: [192.0.2.2]\n    - cidr: 198.51.100.0/28\n";
        let cfg: PoolsConfig = serde_yaml::from_str(y).unwrap();
        assert_eq!(cfg.zones["dal10"].len(), 2);
        assert_eq!(cfg.zones["dal10"][0].capacity(), 12);
        cfg.validate().unwrap();
        let bad: Result<PoolsConfig, _> =
            serde_yaml::from_str("zones:\n  dal10:\n    - cidr: 192.0.2.1/28\n");
        assert!(bad.unwrap_err().to_string().contains("host bits"));
    }
}
