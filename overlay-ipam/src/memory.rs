//! In-memory pools: the embedded backend for tests, labs and embedding.
//! State lives only in the process; see [`crate::file`] for a persistent
//! variant.

use overlay_core::IpamError;

use crate::embedded::{EmbeddedBackend, Store};
use crate::pools::{Engine, Entry, PoolsConfig};

/// An [`IpamBackend`](overlay_core::IpamBackend) over in-memory pools: lowest free address per zone,
/// pools tried in order. A release with a hold-down keeps the address back
/// from other owners until it expires (listed with
/// [`Reservation::held_until`](overlay_core::Reservation::held_until)); its owner gets it back by reserving again.
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
pub type MemoryBackend = EmbeddedBackend<InMemory>;

/// The store of a [`MemoryBackend`]: the state lives only in the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct InMemory;

impl Store for InMemory {
    const BACKEND: &'static str = "memory";
    const PERSISTENT: bool = false;

    async fn save(&self, _entries: Vec<Entry>) -> Result<(), IpamError> {
        Ok(())
    }
}

impl MemoryBackend {
    /// Builds the backend; the configuration is validated first
    /// ([`IpamError::Invalid`] names the offending field).
    pub fn new(config: &PoolsConfig) -> Result<Self, IpamError> {
        Ok(Self::with_store(InMemory, Engine::new(config)?))
    }
}
