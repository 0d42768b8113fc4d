//! Configuration and allocation engine shared by the embedded backends
//! ([`crate::memory`] and [`crate::file`]).
//!
//! A zone maps to an ordered list of pools (CIDRs). A reservation takes the
//! lowest free address of the first pool that has one, skipping the network
//! and broadcast addresses, the pool's gateway and its reserved addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// One held address, as the embedded backends store it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Held {
    pub zone: Zone,
    pub pool: Cidr,
    pub address: IpAddr,
    pub owner: Owner,
}

/// The allocation engine: configuration plus held addresses. Not
/// synchronised; the backends wrap it in a lock.
#[derive(Debug)]
pub(crate) struct Engine {
    backend: &'static str,
    zones: BTreeMap<Zone, Vec<PoolConfig>>,
    held: Vec<Held>,
}

impl Engine {
    pub(crate) fn new(backend: &'static str, config: &PoolsConfig) -> Result<Self, IpamError> {
        config.validate().map_err(|e| {
            IpamError::Invalid(ParseError::new(e.field.clone(), "", e.problem.clone()))
        })?;
        let mut zones = BTreeMap::new();
        for (z, pools) in &config.zones {
            zones.insert(Zone::parse("zone", z)?, pools.clone());
        }
        Ok(Self {
            backend,
            zones,
            held: Vec::new(),
        })
    }

    pub(crate) fn held(&self) -> &[Held] {
        &self.held
    }

    pub(crate) fn set_held(&mut self, held: Vec<Held>) {
        self.held = held;
    }

    fn to_reservation(&self, h: &Held) -> Reservation {
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
            held_until: None,
        }
    }

    pub(crate) fn lookup(&self, owner: &Owner, zone: Option<&Zone>) -> Option<Reservation> {
        self.held
            .iter()
            .find(|h| &h.owner == owner && zone.is_none_or(|z| &h.zone == z))
            .map(|h| self.to_reservation(h))
    }

    pub(crate) fn list(&self) -> Vec<Reservation> {
        self.held.iter().map(|h| self.to_reservation(h)).collect()
    }

    /// Reserves (or finds) the owner's address. Returns the reservation and
    /// whether the state changed.
    pub(crate) fn reserve(
        &mut self,
        owner: &Owner,
        zone: &Zone,
    ) -> Result<(Reservation, bool), IpamError> {
        if let Some(r) = self.lookup(owner, Some(zone)) {
            return Ok((r, false));
        }
        let pools = self.zones.get(zone).ok_or_else(|| IpamError::UnknownZone {
            zone: zone.to_string(),
            known: self.zones.keys().map(Zone::to_string).collect(),
        })?;
        for pool in pools {
            if let Some(address) = self.lowest_free(pool) {
                let held = Held {
                    zone: zone.clone(),
                    pool: pool.cidr,
                    address,
                    owner: owner.clone(),
                };
                let r = self.to_reservation(&held);
                self.held.push(held);
                return Ok((r, true));
            }
        }
        Err(IpamError::Exhausted {
            zone: zone.to_string(),
            subnets: pools.iter().map(|p| p.cidr.to_string()).collect(),
        })
    }

    /// Removes the reservation if the address is still held by the same
    /// owner. Returns whether the state changed.
    pub(crate) fn release(&mut self, r: &Reservation) -> bool {
        let addr = r.address.ip();
        let before = self.held.len();
        self.held
            .retain(|h| !(h.address == addr && h.owner == r.owner));
        before != self.held.len()
    }

    fn lowest_free(&self, pool: &PoolConfig) -> Option<IpAddr> {
        let (lo, hi) = host_range(&pool.cidr);
        if lo > hi {
            return None;
        }
        let mut taken: BTreeSet<u128> = pool.reserved.iter().map(|a| to_u128(*a)).collect();
        taken.insert(to_u128(pool.effective_gateway()));
        taken.extend(
            self.held
                .iter()
                .filter(|h| pool.cidr.network().contains(h.address))
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

    pub(crate) fn name(&self) -> &'static str {
        self.backend
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(cidr: &Cidr, v: u128) -> IpAddr {
    if cidr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// First and last assignable address of a prefix (as integers). IPv4
/// prefixes up to /30 skip network and broadcast; /31 and /32 use every
/// address. IPv6 skips the subnet-router anycast (network) address.
fn host_range(cidr: &Cidr) -> (u128, u128) {
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

    #[test]
    fn skips_network_gateway_reserved_and_broadcast() {
        let cfg = PoolsConfig::new().with_pool(
            "z1",
            PoolConfig::parse("192.0.2.0/29")
                .unwrap()
                .with_reserved("192.0.2.2".parse().unwrap()),
        );
        let mut e = Engine::new("memory", &cfg).unwrap();
        let z = Zone::parse("z", "z1").unwrap();
        let got: Vec<String> = (0..4)
            .map(|i| {
                e.reserve(&owner(&format!("n{i}")), &z)
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
            e.reserve(&owner("n9"), &z),
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
        let mut e = Engine::new("memory", &cfg).unwrap();
        let z = Zone::parse("z", "z1").unwrap();
        let (r, _) = e.reserve(&owner("a"), &z).unwrap();
        assert_eq!(r.address.to_string(), "192.0.2.1/30");
        assert_eq!(r.gateway, Some("192.0.2.2".parse().unwrap()));
        assert!(e.reserve(&owner("b"), &z).is_err());
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
