//! In-memory pools: the embedded backend for tests, labs and embedding.
//! State lives only in the process; see [`crate::file`] for a persistent
//! variant.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use overlay_core::{IpamBackend, IpamError, Owner, Reservation, Zone};
use tokio::sync::Mutex;

use crate::pools::{Engine, PoolsConfig};

/// An [`IpamBackend`] over in-memory pools: lowest free address per zone,
/// pools tried in order. A release with a hold-down keeps the address back
/// from other owners until it expires (listed with
/// [`Reservation::held_until`]); its owner gets it back by reserving again.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// use overlay_core::{IpamBackend, Owner, Zone};
/// use overlay_ipam::memory::MemoryBackend;
/// use overlay_ipam::pools::{PoolConfig, PoolsConfig};
///
/// let ipam = MemoryBackend::new(
///     &PoolsConfig::new().with_pool("dal10", PoolConfig::parse("192.0.2.0/24")?),
/// )?;
/// let r = ipam
///     .reserve(&Owner::new("c1", "node-a"), &Zone::parse("zone", "dal10")?)
///     .await?;
/// assert_eq!(r.address.to_string(), "192.0.2.2/24");
/// assert_eq!(r.gateway, Some("192.0.2.1".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryBackend {
    engine: Mutex<Engine>,
}

impl MemoryBackend {
    /// Builds the backend; the configuration is validated first
    /// ([`IpamError::Invalid`] names the offending field).
    pub fn new(config: &PoolsConfig) -> Result<Self, IpamError> {
        Ok(Self {
            engine: Mutex::new(Engine::new("memory", config)?),
        })
    }
}

#[async_trait]
impl IpamBackend for MemoryBackend {
    fn name(&self) -> &str {
        "memory"
    }

    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        let mut e = self.engine.lock().await;
        let (r, _) = e.reserve(owner, zone, SystemTime::now())?;
        tracing::debug!(backend = e.name(), owner = %owner, zone = %zone, address = %r.address, "reserved");
        Ok(r)
    }

    async fn release(&self, reservation: &Reservation, hold: Duration) -> Result<(), IpamError> {
        let mut e = self.engine.lock().await;
        if e.release(reservation, hold, SystemTime::now())? {
            tracing::debug!(backend = e.name(), owner = %reservation.owner, address = %reservation.address, hold = ?hold, "released");
        }
        Ok(())
    }

    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        Ok(self.engine.lock().await.lookup(owner, zone))
    }

    async fn lookup_all(&self, owner: &Owner) -> Result<Vec<Reservation>, IpamError> {
        Ok(self.engine.lock().await.lookup_all(owner))
    }

    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        Ok(self.engine.lock().await.list())
    }

    async fn release_owner(
        &self,
        owner: &Owner,
        hold: Duration,
    ) -> Result<Vec<Reservation>, IpamError> {
        let mut e = self.engine.lock().await;
        let released = e.release_owner(owner, hold, SystemTime::now())?;
        for r in &released {
            tracing::debug!(backend = e.name(), owner = %owner, address = %r.address, hold = ?hold, "released");
        }
        Ok(released)
    }
}
