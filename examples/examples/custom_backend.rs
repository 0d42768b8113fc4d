//! A custom IPAM backend in ~150 lines, checked with the public
//! conformance suite.
//!
//! `ListBackend` hands out addresses from explicit lists per zone, the way a
//! team might manage a few hand-picked addresses in a spreadsheet. Like
//! every backend it keeps a released address back from other owners for
//! the hold-down the release asks for, and gives it back to its owner. Run it
//! with `cargo run -p overlay-examples --example custom_backend`; `cargo
//! test -p overlay-examples` runs the same suite as a test.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use overlay_core::{IpamBackend, IpamError, Owner, ParseError, Reservation, Zone};
use overlay_ipam::conformance::{Fixture, Report, ZoneCapacity, run_all};

/// One pool: explicit addresses sharing a prefix length and gateway.
#[derive(Debug, Clone)]
pub struct ListPool {
    /// A name for the pool (becomes `Reservation::subnet_id`).
    pub name: String,
    /// Prefix length of the addresses.
    pub prefix: u8,
    /// Gateway.
    pub gateway: Option<IpAddr>,
    /// The addresses, handed out in this order.
    pub addresses: Vec<IpAddr>,
}

/// Who has an address: live, or released and held back from every other
/// owner until `held_until`.
#[derive(Debug, Clone)]
struct Taken {
    zone: Zone,
    pool: usize,
    owner: Owner,
    held_until: Option<SystemTime>,
}

/// Hands out addresses from explicit lists, per zone, pools in order.
#[derive(Debug, Default)]
pub struct ListBackend {
    zones: BTreeMap<Zone, Vec<ListPool>>,
    taken: Mutex<BTreeMap<IpAddr, Taken>>,
}

impl ListBackend {
    /// A backend over `zones`.
    pub fn new(zones: BTreeMap<Zone, Vec<ListPool>>) -> Self {
        Self {
            zones,
            taken: Mutex::default(),
        }
    }

    fn reservation(&self, ip: IpAddr, t: &Taken) -> Reservation {
        let p = &self.zones[&t.zone][t.pool];
        Reservation {
            address: IpNetwork::new(ip, p.prefix).unwrap_or_else(|_| IpNetwork::from(ip)),
            gateway: p.gateway,
            zone: t.zone.clone(),
            subnet_id: p.name.clone(),
            handle: ip.to_string(),
            owner: t.owner.clone(),
            held_until: t.held_until,
        }
    }
}

#[async_trait]
impl IpamBackend for ListBackend {
    fn name(&self) -> &str {
        "list"
    }

    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        let pools = self.zones.get(zone).ok_or_else(|| IpamError::UnknownZone {
            zone: zone.to_string(),
            known: self.zones.keys().map(Zone::to_string).collect(),
        })?;
        let now = SystemTime::now();
        // One lock around check-and-take keeps concurrent reserves safe.
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        // The owner's live address in the zone, else its held one (a node
        // re-created within the hold-down gets its address back).
        let mine = |live: bool| {
            taken
                .iter()
                .find(|(_, t)| {
                    &t.zone == zone && &t.owner == owner && t.held_until.is_none() == live
                })
                .map(|(ip, _)| *ip)
        };
        if let Some(ip) = mine(true).or_else(|| mine(false))
            && let Some(t) = taken.get_mut(&ip)
        {
            t.held_until = None;
            return Ok(self.reservation(ip, t));
        }
        for (i, pool) in pools.iter().enumerate() {
            // Free: never taken, or held by another owner whose hold-down is
            // over (the new reservation replaces it).
            let free = pool.addresses.iter().find(|a| {
                taken
                    .get(*a)
                    .is_none_or(|t| t.held_until.is_some_and(|until| until <= now))
            });
            if let Some(ip) = free {
                let t = Taken {
                    zone: zone.clone(),
                    pool: i,
                    owner: owner.clone(),
                    held_until: None,
                };
                let r = self.reservation(*ip, &t);
                taken.insert(*ip, t);
                return Ok(r);
            }
        }
        Err(IpamError::Exhausted {
            zone: zone.to_string(),
            subnets: pools.iter().map(|p| p.name.clone()).collect(),
        })
    }

    async fn release(&self, r: &Reservation, hold: Duration) -> Result<(), IpamError> {
        let until = SystemTime::now()
            .checked_add(hold)
            .ok_or_else(|| ParseError::new("hold-down", &format!("{hold:?}"), "is too long"))?;
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let ip = r.address.ip();
        match taken.get_mut(&ip) {
            // Only if the same owner still has it: a stale release must not
            // free an address that was handed to someone else since.
            Some(t) if t.owner != r.owner => {}
            Some(_) if hold.is_zero() => {
                taken.remove(&ip);
            }
            // Held from now on; a second release leaves the expiry alone.
            Some(t) if t.held_until.is_none() => t.held_until = Some(until),
            _ => {}
        }
        Ok(())
    }

    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        let taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        // Ordered by address: the first match is the lowest.
        Ok(taken
            .iter()
            .find(|(_, t)| {
                t.held_until.is_none() && &t.owner == owner && zone.is_none_or(|z| z == &t.zone)
            })
            .map(|(ip, t)| self.reservation(*ip, t)))
    }

    // lookup_all and release_owner: the trait's defaults, over list.

    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        let taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        Ok(taken
            .iter()
            .map(|(ip, t)| self.reservation(*ip, t))
            .collect())
    }
}

fn pool(name: &str, base: [u8; 3], hosts: std::ops::RangeInclusive<u8>, gw: u8) -> ListPool {
    let [a, b, c] = base;
    ListPool {
        name: name.into(),
        prefix: 24,
        gateway: Some(IpAddr::from([a, b, c, gw])),
        addresses: hosts.map(|h| IpAddr::from([a, b, c, h])).collect(),
    }
}

/// Builds the example backend and runs the conformance suite on it.
pub async fn check() -> Result<Report, Box<dyn std::error::Error>> {
    let mut zones = BTreeMap::new();
    // 100 addresses in one pool: room for the concurrency checks.
    zones.insert(
        Zone::parse("zone", "dal10")?,
        vec![pool("main", [192, 0, 2], 10..=109, 1)],
    );
    // Two small pools: exhaustion and fall-through.
    zones.insert(
        Zone::parse("zone", "dal12")?,
        vec![
            pool("a", [198, 51, 100], 10..=12, 1),
            pool("b", [203, 0, 113], 10..=13, 1),
        ],
    );
    let backend = Arc::new(ListBackend::new(zones));
    let fixture = Fixture::new(backend, "example")
        .with_zone(ZoneCapacity::new("dal10", [100])?)
        .with_zone(ZoneCapacity::new("dal12", [3, 4])?);
    Ok(run_all(&fixture).await)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let report = check().await?;
    print!("{report}");
    if report.passed() {
        println!("ListBackend passes the overlay IPAM conformance suite");
        Ok(())
    } else {
        Err(format!("failed checks: {:?}", report.failed()).into())
    }
}

#[cfg(test)]
mod tests {
    use overlay_ipam::conformance::Outcome;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_backend_passes_conformance() {
        let report = super::check().await.unwrap();
        assert!(report.passed(), "{report}");
        assert!(
            report.checks.iter().all(|(_, o)| *o == Outcome::Passed),
            "{report}"
        );
    }
}
