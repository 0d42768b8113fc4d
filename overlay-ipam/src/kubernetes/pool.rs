//! What a pool is worth: its spec checked (what admission cannot check on
//! Kubernetes 1.30), overlaps between pools resolved, and the status the
//! controller writes.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use overlay_core::ippool::{IpAllocation, IpPool, IpPoolStatus, allocation_name};
use overlay_core::parse::{parse_ip, parse_ip_with_prefix};
use overlay_core::{Cidr, Owner, Zone};

use crate::pools::{PoolConfig, host_range, to_u128};

/// A pool whose spec is valid: the addresses it may hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPool {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
    /// Zone.
    pub zone: Zone,
    /// Order within the zone.
    pub order: i64,
    /// Prefix, gateway and single reserved addresses.
    pub config: PoolConfig,
    /// Reserved ranges of more than one address.
    pub reserved_nets: Vec<IpNetwork>,
}

impl ValidPool {
    /// Checks `pool`'s spec: a CIDR with host bits zero, a gateway and
    /// reserved entries inside it, a valid zone. The error names the field.
    pub fn check(pool: &IpPool) -> Result<Self, String> {
        let field = |f: &str, e: &dyn std::fmt::Display| format!("spec.{f}: {e}");
        let zone = Zone::parse("spec.zone", &pool.zone).map_err(|e| e.to_string())?;
        let cidr = Cidr::parse("spec.cidr", &pool.cidr).map_err(|e| e.to_string())?;
        let net = cidr.network();
        let mut config = PoolConfig::new(cidr);
        if let Some(g) = &pool.gateway {
            let ip = parse_ip("spec.gateway", g).map_err(|e| e.to_string())?;
            if !net.contains(ip) {
                return Err(field("gateway", &format!("{ip} is outside {net}")));
            }
            config.gateway = Some(ip);
        }
        let mut reserved_nets = Vec::new();
        for (i, r) in pool.reserved.iter().enumerate() {
            let f = format!("reserved[{i}]");
            let entry = if r.contains('/') {
                parse_ip_with_prefix(&f, r).map_err(|e| e.to_string())?
            } else {
                IpNetwork::from(parse_ip(&f, r).map_err(|e| e.to_string())?)
            };
            let inside = net.contains(entry.network())
                && net.contains(entry.broadcast())
                && entry.prefix() >= net.prefix();
            if !inside {
                return Err(field(&f, &format!("{r} is not inside {net}")));
            }
            let single = match entry {
                IpNetwork::V4(n) => n.prefix() == 32,
                IpNetwork::V6(n) => n.prefix() == 128,
            };
            if single {
                config.reserved.push(entry.ip());
            } else {
                reserved_nets.push(entry);
            }
        }
        Ok(Self {
            name: pool.name.clone(),
            uid: pool.uid.clone(),
            zone,
            order: pool.order,
            config,
            reserved_nets,
        })
    }

    /// The pool's prefix.
    pub fn network(&self) -> IpNetwork {
        self.config.cidr.network()
    }

    /// The gateway in effect.
    pub fn gateway(&self) -> IpAddr {
        self.config.effective_gateway()
    }

    /// Whether the pool hands out `ip`.
    pub fn assignable(&self, ip: IpAddr) -> bool {
        self.config.assignable(ip) && !self.reserved_nets.iter().any(|n| n.contains(ip))
    }

    /// A new, live allocation of `ip` from this pool for `owner` (named
    /// after the address, with the pool's prefix length and gateway).
    pub fn allocation(&self, owner: &Owner, ip: IpAddr) -> IpAllocation {
        IpAllocation {
            name: allocation_name(ip),
            resource_version: None,
            uid: String::new(),
            pool: self.name.clone(),
            pool_uid: self.uid.clone(),
            zone: self.zone.to_string(),
            owner: owner.clone(),
            address: IpNetwork::new(ip, self.network().prefix())
                .unwrap_or_else(|_| IpNetwork::from(ip)),
            gateway: self.gateway(),
            held_until: None,
        }
    }

    /// The first and last host address, as integers.
    pub(crate) fn range(&self) -> (u128, u128) {
        host_range(&self.config.cidr)
    }

    /// Number of addresses the pool hands out.
    pub fn capacity(&self) -> u128 {
        let (lo, hi) = self.range();
        if lo > hi {
            return 0;
        }
        // The reserved ranges, clipped to the host range and merged.
        let mut spans: Vec<(u128, u128)> = self
            .reserved_nets
            .iter()
            .map(|n| {
                let a = to_u128(n.network()).max(lo);
                let b = to_u128(n.broadcast()).min(hi);
                (a, b)
            })
            .filter(|(a, b)| a <= b)
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (a, b) in spans {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let in_spans: u128 = merged.iter().map(|(a, b)| b - a + 1).sum();
        // Single addresses (gateway, reserved) outside the ranges.
        let mut singles: Vec<u128> = self.config.reserved.iter().map(|a| to_u128(*a)).collect();
        singles.push(to_u128(self.gateway()));
        singles.sort_unstable();
        singles.dedup();
        let outside = singles
            .iter()
            .filter(|v| (lo..=hi).contains(*v) && !merged.iter().any(|(a, b)| (a..=b).contains(v)))
            .count() as u128;
        (hi - lo + 1)
            .saturating_sub(in_spans)
            .saturating_sub(outside)
    }
}

/// Why a pool hands out nothing new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// The spec is invalid (the message names the field).
    InvalidSpec(String),
    /// It overlaps an older pool (named), which is used instead.
    Overlaps(String),
    /// `spec.disabled` is set.
    Disabled,
    /// The pool is being deleted.
    Deleting,
}

impl NotReady {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            NotReady::InvalidSpec(_) => "InvalidSpec",
            NotReady::Overlaps(_) => "Overlaps",
            NotReady::Disabled => "Disabled",
            NotReady::Deleting => "Deleting",
        }
    }

    /// The condition message.
    pub fn message(&self) -> String {
        match self {
            NotReady::InvalidSpec(m) => {
                format!("{m}; fix the spec: nothing is allocated from this pool until then")
            }
            NotReady::Overlaps(other) => format!(
                "overlaps the older pool {other}, which is used for these addresses; change spec.cidr or delete one of them"
            ),
            NotReady::Disabled => {
                "spec.disabled is set: existing allocations stay, no new ones".into()
            }
            NotReady::Deleting => {
                "being deleted: no new allocations; it goes when its last allocation is released"
                    .into()
            }
        }
    }
}

/// One pool as judged: valid or not, and whether it hands out addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// `spec.zone` as written.
    pub zone: String,
    /// The valid spec, when it is.
    pub valid: Option<ValidPool>,
    /// `None`: new allocations come from it.
    pub not_ready: Option<NotReady>,
}

fn older(a: &IpPool, b: &IpPool) -> Ordering {
    // A pool without a creation time (not yet stored) counts as newest.
    let t = |p: &IpPool| (p.created.is_none(), p.created);
    t(a).cmp(&t(b)).then_with(|| a.name.cmp(&b.name))
}

/// Judges every pool. Of two overlapping valid pools the older (by
/// creation time, then name) is used and the other is
/// [`NotReady::Overlaps`], whatever their zones: every process judges
/// alike from the same objects, so all of them skip the same pool.
pub fn judge(pools: &[&IpPool]) -> BTreeMap<String, Judged> {
    let mut sorted: Vec<&IpPool> = pools.to_vec();
    sorted.sort_by(|a, b| older(a, b));
    let mut kept: Vec<(String, IpNetwork)> = Vec::new();
    let mut out = BTreeMap::new();
    for p in sorted {
        let judged = match ValidPool::check(p) {
            Err(m) => Judged {
                zone: p.zone.clone(),
                valid: None,
                not_ready: Some(NotReady::InvalidSpec(m)),
            },
            Ok(v) => {
                let net = v.network();
                let overlap = kept
                    .iter()
                    .find(|(_, k)| k.contains(net.network()) || net.contains(k.network()));
                let not_ready = match overlap {
                    Some((other, _)) => Some(NotReady::Overlaps(other.clone())),
                    None => {
                        kept.push((p.name.clone(), net));
                        if p.deleting {
                            Some(NotReady::Deleting)
                        } else if p.disabled {
                            Some(NotReady::Disabled)
                        } else {
                            None
                        }
                    }
                };
                Judged {
                    zone: p.zone.clone(),
                    valid: Some(v),
                    not_ready,
                }
            }
        };
        out.insert(p.name.clone(), judged);
    }
    out
}

/// The status of `pool` as judged, given every allocation that names it.
pub fn status_of<'a>(
    judged: &Judged,
    allocations: impl Iterator<Item = &'a IpAllocation>,
) -> IpPoolStatus {
    let (mut allocated, mut held) = (0i64, 0i64);
    for a in allocations {
        if a.held_until.is_some() {
            held += 1;
        } else {
            allocated += 1;
        }
    }
    let size = judged
        .valid
        .as_ref()
        .map_or(0, |v| i64::try_from(v.capacity()).unwrap_or(i64::MAX));
    let free = (size - allocated - held).max(0);
    let (ready, reason, message) = match &judged.not_ready {
        Some(n) => (false, n.reason().to_owned(), n.message()),
        None if free == 0 => (
            true,
            "Full".to_owned(),
            "every address is allocated or held; the next pool of the zone is used".to_owned(),
        ),
        None => (
            true,
            "Ready".to_owned(),
            "new allocations come from this pool".to_owned(),
        ),
    };
    IpPoolStatus {
        size,
        allocated,
        held,
        free,
        usage: format!("{allocated}/{size}"),
        ready,
        reason,
        message,
    }
}

/// Every pool with the status it should show, given every allocation.
pub fn report(pools: &[IpPool], allocations: &[IpAllocation]) -> Vec<(IpPool, IpPoolStatus)> {
    let judged = judge(&pools.iter().collect::<Vec<_>>());
    pools
        .iter()
        .filter_map(|p| {
            let j = judged.get(&p.name)?;
            let mine = allocations.iter().filter(|a| a.pool_uid == p.uid);
            Some((p.clone(), status_of(j, mine)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn pool(name: &str, cidr: &str) -> IpPool {
        IpPool {
            name: name.into(),
            uid: format!("uid-{name}"),
            zone: "dal10".into(),
            cidr: cidr.into(),
            ..IpPool::default()
        }
    }

    #[test]
    fn spec_errors_name_the_field() {
        let mut p = pool("a", "192.0.2.5/24");
        assert!(ValidPool::check(&p).unwrap_err().contains("host bits"));
        p.cidr = "192.0.2.0/24".into();
        p.gateway = Some("198.51.100.1".into());
        let e = ValidPool::check(&p).unwrap_err();
        assert!(e.contains("spec.gateway") && e.contains("outside"), "{e}");
        p.gateway = None;
        p.reserved = vec!["192.0.2.10".into(), "192.0.3.0/28".into()];
        let e = ValidPool::check(&p).unwrap_err();
        assert!(e.contains("reserved[1]"), "{e}");
        p.reserved = vec!["192.0.2.0/23".into()];
        assert!(ValidPool::check(&p).unwrap_err().contains("reserved[0]"));
    }

    #[test]
    fn capacity_counts_gateway_singles_and_merged_ranges_once() {
        let mut p = pool("a", "192.0.2.0/24");
        assert_eq!(ValidPool::check(&p).unwrap().capacity(), 253);
        p.reserved = vec![
            "192.0.2.16/28".into(),
            "192.0.2.20/30".into(),
            "192.0.2.17".into(),
            "192.0.2.100".into(),
        ];
        let v = ValidPool::check(&p).unwrap();
        assert_eq!(v.capacity(), 253 - 16 - 1);
        assert!(!v.assignable("192.0.2.18".parse().unwrap()));
        assert!(v.assignable("192.0.2.32".parse().unwrap()));
        let six = pool("b", "2001:db8::/64");
        assert_eq!(
            ValidPool::check(&six).unwrap().capacity(),
            (1u128 << 64) - 2
        );
    }

    #[test]
    fn the_older_of_two_overlapping_pools_wins_in_every_zone() {
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let mut a = pool("a", "192.0.2.0/24");
        a.created = Some(t0 + std::time::Duration::from_secs(5));
        let mut b = pool("b", "192.0.2.128/25");
        b.zone = "dal12".into();
        b.created = Some(t0);
        let c = pool("c", "198.51.100.0/24");
        let j = judge(&[&a, &b, &c]);
        assert_eq!(j["a"].not_ready, Some(NotReady::Overlaps("b".into())));
        assert_eq!(j["b"].not_ready, None);
        assert_eq!(j["c"].not_ready, None);
        let s = status_of(&j["a"], std::iter::empty());
        assert!(
            !s.ready && s.reason == "Overlaps" && s.message.contains("b"),
            "{s:?}"
        );
    }
}
