//! A custom IPAM backend in ~100 lines, checked with the public
//! conformance suite.
//!
//! `ListBackend` hands out addresses from explicit lists per zone, the way a
//! team might manage a few hand-picked addresses in a spreadsheet. Run it
//! with `cargo run -p overlay-examples --example custom_backend`; `cargo
//! test -p overlay-examples` runs the same suite as a test.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use overlay_core::{IpamBackend, IpamError, Owner, Reservation, Zone};
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

/// Hands out addresses from explicit lists, per zone, pools in order.
#[derive(Debug, Default)]
pub struct ListBackend {
    zones: BTreeMap<Zone, Vec<ListPool>>,
    /// address -> (zone, pool index, owner)
    held: Mutex<BTreeMap<IpAddr, (Zone, usize, Owner)>>,
}

impl ListBackend {
    /// A backend over `zones`.
    pub fn new(zones: BTreeMap<Zone, Vec<ListPool>>) -> Self {
        Self {
            zones,
            held: Mutex::default(),
        }
    }

    fn reservation(&self, ip: IpAddr, zone: &Zone, pool: usize, owner: &Owner) -> Reservation {
        let p = &self.zones[zone][pool];
        Reservation {
            address: IpNetwork::new(ip, p.prefix).unwrap_or_else(|_| IpNetwork::from(ip)),
            gateway: p.gateway,
            zone: zone.clone(),
            subnet_id: p.name.clone(),
            handle: ip.to_string(),
            owner: owner.clone(),
            held_until: None,
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
        // One lock around check-and-take keeps concurrent reserves safe.
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ip, (_, pool, _))) = held.iter().find(|(_, (z, _, o))| z == zone && o == owner)
        {
            return Ok(self.reservation(*ip, zone, *pool, owner));
        }
        for (i, pool) in pools.iter().enumerate() {
            if let Some(ip) = pool.addresses.iter().find(|a| !held.contains_key(*a)) {
                held.insert(*ip, (zone.clone(), i, owner.clone()));
                return Ok(self.reservation(*ip, zone, i, owner));
            }
        }
        Err(IpamError::Exhausted {
            zone: zone.to_string(),
            subnets: pools.iter().map(|p| p.name.clone()).collect(),
        })
    }

    async fn release(&self, r: &Reservation, hold: Duration) -> Result<(), IpamError> {
        let _ = hold;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // Only if the same owner still holds it: a stale release must not
        // free an address that was handed to someone else since.
        if held
            .get(&r.address.ip())
            .is_some_and(|(_, _, o)| *o == r.owner)
        {
            held.remove(&r.address.ip());
        }
        Ok(())
    }

    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(held
            .iter()
            .find(|(_, (z, _, o))| o == owner && zone.is_none_or(|want| want == z))
            .map(|(ip, (z, pool, o))| self.reservation(*ip, z, *pool, o)))
    }

    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(held
            .iter()
            .map(|(ip, (z, pool, o))| self.reservation(*ip, z, *pool, o))
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
