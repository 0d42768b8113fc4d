//! The embedded pools backend: the allocator of [`crate::pools`] behind a
//! lock, as an [`IpamBackend`]. Where its state is kept between changes is
//! its store: only in the process ([`MemoryBackend`]) or in a state file as
//! well ([`FileBackend`]); everything else is the same code.
//!
//! [`MemoryBackend`]: crate::memory::MemoryBackend
//! [`FileBackend`]: crate::file::FileBackend

use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use overlay_core::{IpamBackend, IpamError, Owner, Reservation, Zone};
use tokio::sync::Mutex;

use crate::pools::{Engine, Entry};

/// Keeps the state of an [`EmbeddedBackend`] between changes.
pub(crate) trait Store: Send + Sync {
    /// The backend's name ([`IpamBackend::name`], and in logs).
    const BACKEND: &'static str;
    /// Whether [`Store::save`] keeps anything: when it does not, a change
    /// needs no copy of the state to undo it with.
    const PERSISTENT: bool;

    /// Keeps `entries`, the state after a change.
    fn save(&self, entries: Vec<Entry>) -> impl Future<Output = Result<(), IpamError>> + Send;
}

/// An [`IpamBackend`] over embedded pools: lowest free address per zone,
/// pools tried in order, released addresses held back from other owners
/// for the hold-down. `S` keeps the state: see
/// [`MemoryBackend`](crate::memory::MemoryBackend) and
/// [`FileBackend`](crate::file::FileBackend), the two kinds there are.
#[derive(Debug)]
pub struct EmbeddedBackend<S> {
    pub(crate) store: S,
    engine: Mutex<Engine>,
}

impl<S> EmbeddedBackend<S> {
    /// A backend over `engine` whose changes `store` keeps.
    pub(crate) fn with_store(store: S, engine: Engine) -> Self {
        Self {
            store,
            engine: Mutex::new(engine),
        }
    }
}

/// Runs `change` on the engine of `backend` and saves the state when it
/// says it changed something; when saving fails the change is undone, so
/// the engine and the store agree.
async fn change<S: Store, T>(
    backend: &EmbeddedBackend<S>,
    change: impl FnOnce(&mut Engine) -> Result<(T, bool), IpamError>,
) -> Result<T, IpamError> {
    let mut e = backend.engine.lock().await;
    let before = S::PERSISTENT.then(|| e.entries().to_vec());
    let (out, changed) = change(&mut e)?;
    if changed
        && let Some(before) = before
        && let Err(err) = backend.store.save(e.entries().to_vec()).await
    {
        e.set_entries(before);
        return Err(err);
    }
    Ok(out)
}

#[async_trait]
impl<S: Store> IpamBackend for EmbeddedBackend<S> {
    fn name(&self) -> &str {
        S::BACKEND
    }

    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        let r = change(self, |e| e.reserve(owner, zone, SystemTime::now())).await?;
        tracing::debug!(backend = S::BACKEND, owner = %owner, zone = %zone, address = %r.address, "reserved");
        Ok(r)
    }

    async fn release(&self, reservation: &Reservation, hold: Duration) -> Result<(), IpamError> {
        let changed = change(self, |e| {
            let changed = e.release(reservation, hold, SystemTime::now())?;
            Ok((changed, changed))
        })
        .await?;
        if changed {
            tracing::debug!(backend = S::BACKEND, owner = %reservation.owner, address = %reservation.address, hold = ?hold, "released");
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
        // One save for all of them, undone as a whole when it fails.
        let released = change(self, |e| {
            let released = e.release_owner(owner, hold, SystemTime::now())?;
            let changed = !released.is_empty();
            Ok((released, changed))
        })
        .await?;
        for r in &released {
            tracing::debug!(backend = S::BACKEND, owner = %owner, address = %r.address, hold = ?hold, "released");
        }
        Ok(released)
    }
}
