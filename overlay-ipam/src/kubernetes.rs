//! Kubernetes-native IPAM: pools, allocations and claims as API objects
//! (`OverlayIPPool`, `OverlayIPAllocation`, `OverlayIPClaim`), with
//! uniqueness kept by the API server rather than by a lock or a leader.
//!
//! - **One address, one allocation.** An allocation is named after its
//!   address ([`allocation_name`]): two allocations of one address cannot
//!   both be created, whatever pools say, whichever process asks.
//! - **One owner, one live address per zone.** Reserving creates the
//!   allocation, then the owner's claim ([`claim_name`] of owner and zone)
//!   naming it. Of two processes reserving for one owner at once, one
//!   claim is created; the other process finds the claim, deletes the
//!   allocation it made (never handed out) and answers the claimed one.
//!   A reservation is two requests; reserving again is none.
//! - **Released, then held.** A release with a hold-down marks the
//!   allocation held until a time (`spec.heldUntil`) and deletes the
//!   claim; the owner reserving again gets it back, nobody else gets it
//!   before it expires.
//!
//! The backend decides from a view fed by a watch of the three kinds
//! (never a scan of a pool's CIDR: a cursor per pool finds the next free
//! address); a stale view costs a failed write and a re-read, never a
//! duplicate. [`KubernetesBackend::keep_pools`] keeps the pools: their
//! finalizer, their status, expired holds.
//!
//! Over a real cluster the store is `overlay_core::k8s::KubePoolStore`; in
//! tests, benchmarks and the lab, `overlay_core::fakes::MemoryPoolStore`.

pub mod import;
pub mod pool;

mod cache;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use overlay_core::ippool::{
    IpAllocation, IpClaim, IpPool, IpPoolStatus, POOL_FINALIZER, PoolObject, PoolStore,
    allocation_name, claim_name,
};
use overlay_core::{IpamBackend, IpamError, Owner, Reservation, StoreError, Zone};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::cache::{Cache, Step};
use crate::pools::hold_end;

/// The backend's name in logs, metrics and errors.
pub(crate) const BACKEND: &str = "kubernetes";

/// How long a call waits for the first lists of pools, allocations and
/// claims.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Steps one reservation may take (each a request) before it gives up and
/// reports the contention: an address taken by another process costs one
/// step and a re-read. (Reservations running side by side in one process
/// never try the same address.)
const MAX_STEPS: usize = 1024;

/// Serialises one owner's reservations in a zone within this process.
type OwnerLock = Arc<tokio::sync::Mutex<()>>;

/// An [`IpamBackend`] over `OverlayIPPool`s, `OverlayIPAllocation`s and
/// `OverlayIPClaim`s. Safe with any number of processes over one cluster.
pub struct KubernetesBackend {
    cluster: String,
    store: Arc<dyn PoolStore>,
    view: Arc<Mutex<Cache>>,
    ready: watch::Receiver<bool>,
    /// Serialises the reservations of one owner and zone in this process
    /// (the claim does across processes; this saves the wasted writes).
    owners: tokio::sync::Mutex<HashMap<(Owner, String), OwnerLock>>,
    /// Duplicates seen by the last [`KubernetesBackend::keep_pools`]:
    /// allocation name → resourceVersion.
    suspects: Mutex<HashMap<String, Option<String>>>,
    watcher: JoinHandle<()>,
}

impl Drop for KubernetesBackend {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn store_err(call: &str, e: StoreError) -> IpamError {
    let message = if e.is_not_served() {
        format!(
            "{e}; install the OverlayIPPool, OverlayIPAllocation and OverlayIPClaim CRDs (deploy/crds)"
        )
    } else {
        e.to_string()
    };
    if e.is_retryable() {
        IpamError::Unavailable {
            backend: BACKEND.into(),
            call: call.into(),
            message,
        }
    } else {
        IpamError::Rejected {
            backend: BACKEND.into(),
            call: call.into(),
            message,
        }
    }
}

/// The reservation an allocation stands for.
fn reservation(a: &IpAllocation) -> Result<Reservation, IpamError> {
    let zone = Zone::parse("spec.zone", &a.zone).map_err(IpamError::Invalid)?;
    Ok(Reservation {
        address: a.address,
        gateway: Some(a.gateway),
        zone,
        subnet_id: a.pool.clone(),
        handle: a.name.clone(),
        owner: a.owner.clone(),
        held_until: a.held_until,
    })
}

impl KubernetesBackend {
    /// Starts the backend over `store` for cluster `cluster`: its watch
    /// runs in a task of the current tokio runtime until the backend is
    /// dropped.
    pub fn start(store: Arc<dyn PoolStore>, cluster: impl Into<String>) -> Self {
        let view = Arc::new(Mutex::new(Cache::default()));
        let (tx, ready) = watch::channel(false);
        let watcher = tokio::spawn(follow(store.clone(), Arc::downgrade(&view), tx));
        Self {
            cluster: cluster.into(),
            store,
            view,
            ready,
            owners: tokio::sync::Mutex::default(),
            suspects: Mutex::default(),
            watcher,
        }
    }

    /// Waits until the three lists arrived.
    async fn synced(&self) -> Result<(), IpamError> {
        let mut ready = self.ready.clone();
        match tokio::time::timeout(SYNC_TIMEOUT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(IpamError::Unavailable {
                backend: BACKEND.into(),
                call: "watch".into(),
                message: format!(
                    "no list of OverlayIPPools, OverlayIPAllocations and OverlayIPClaims within {SYNC_TIMEOUT:?}"
                ),
            }),
        }
    }

    fn view(&self) -> MutexGuard<'_, Cache> {
        lock(&self.view)
    }

    /// The lock of `owner`'s reservations in `zone` in this process.
    async fn owner_lock(&self, owner: &Owner, zone: &str) -> OwnerLock {
        let mut owners = self.owners.lock().await;
        owners.retain(|_, l| Arc::strong_count(l) > 1);
        owners
            .entry((owner.clone(), zone.to_owned()))
            .or_default()
            .clone()
    }

    /// Re-reads allocation `name` into the view; answers it.
    async fn refresh_allocation(&self, name: &str) -> Result<Option<IpAllocation>, IpamError> {
        let got = self
            .store
            .get_allocation(name)
            .await
            .map_err(|e| store_err("get allocation", e))?;
        let mut view = self.view();
        match &got {
            Some(a) => view.put(PoolObject::Allocation(a.clone())),
            None => view.forget_allocation(name),
        }
        Ok(got)
    }

    /// Creates `a`; `Ok(None)` when the address was taken meanwhile (the
    /// view now knows by whom).
    async fn create(&self, a: &IpAllocation) -> Result<Option<IpAllocation>, IpamError> {
        let made = self.store.create_allocation(a).await;
        self.view().settle(&a.name);
        match made {
            Ok(made) => {
                self.view().put(PoolObject::Allocation(made.clone()));
                Ok(Some(made))
            }
            Err(StoreError::AlreadyExists { .. }) => {
                self.refresh_allocation(&a.name).await?;
                Ok(None)
            }
            Err(e) => Err(store_err("create allocation", e)),
        }
    }

    /// Replaces `a`; `false` when it changed meanwhile (re-read).
    async fn replace(&self, a: &IpAllocation) -> Result<bool, IpamError> {
        match self.store.replace_allocation(a).await {
            Ok(new) => {
                self.view().put(PoolObject::Allocation(new));
                Ok(true)
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                self.refresh_allocation(&a.name).await?;
                Ok(false)
            }
            Err(e) => Err(store_err("update allocation", e)),
        }
    }

    /// Deletes `a` if unchanged; `false` when it changed meanwhile.
    async fn delete(&self, a: &IpAllocation) -> Result<bool, IpamError> {
        match self.store.delete_allocation(a).await {
            Ok(_) => {
                self.view().deleted(a);
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => {
                self.refresh_allocation(&a.name).await?;
                Ok(false)
            }
            Err(e) => Err(store_err("delete allocation", e)),
        }
    }

    /// Deletes claim `c` if it is still the same object.
    async fn unclaim(&self, c: &IpClaim) -> Result<(), IpamError> {
        match self.store.delete_claim(&c.name, &c.uid).await {
            Ok(_) => {
                self.view().forget(&PoolObject::Claim(c.clone()));
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => self.refresh_claim(&c.name).await,
            Err(e) => Err(store_err("delete claim", e)),
        }
    }

    async fn refresh_claim(&self, name: &str) -> Result<(), IpamError> {
        let got = self
            .store
            .get_claim(name)
            .await
            .map_err(|e| store_err("get claim", e))?;
        let mut view = self.view();
        match got {
            Some(c) => view.put(PoolObject::Claim(c)),
            None => {
                if let Some(old) = view.claim(name).cloned() {
                    view.forget(&PoolObject::Claim(old));
                }
            }
        }
        Ok(())
    }

    /// Claims `a` for its owner in `zone`; `false` when another claim was
    /// there first (the view now holds it).
    async fn claim(&self, a: &IpAllocation, zone: &Zone) -> Result<bool, IpamError> {
        let c = IpClaim {
            name: claim_name(&a.owner, zone.as_str()),
            uid: String::new(),
            owner: a.owner.clone(),
            zone: zone.to_string(),
            address: a.address.ip(),
        };
        match self.store.create_claim(&c).await {
            Ok(made) => {
                self.view().put(PoolObject::Claim(made));
                Ok(true)
            }
            Err(StoreError::AlreadyExists { .. }) => {
                self.refresh_claim(&c.name).await?;
                Ok(false)
            }
            Err(e) => Err(store_err("create claim", e)),
        }
    }

    /// Runs one step; the reservation when it is done.
    async fn run(&self, step: Step, zone: &Zone) -> Result<Option<Reservation>, IpamError> {
        match step {
            Step::Have(a) => return reservation(&a).map(Some),
            Step::Unhold(a) => {
                let live = IpAllocation {
                    held_until: None,
                    ..a
                };
                self.replace(&live).await?;
            }
            Step::Claim(a) => {
                self.claim(&a, zone).await?;
            }
            Step::Delete(a) => {
                self.delete(&a).await?;
            }
            Step::Unclaim(c) => {
                // The view may hold an allocation already gone (an event
                // seen late): the claim is deleted only when a fresh read
                // says its address is not its owner's.
                let fresh = self.refresh_allocation(&allocation_name(c.address)).await?;
                if !fresh.is_some_and(|a| a.owner == c.owner && a.zone == c.zone) {
                    self.unclaim(&c).await?;
                }
            }
            Step::Allocate(a) => {
                if let Some(made) = self.create(&a).await?
                    && !self.claim(&made, zone).await?
                {
                    // Another process claimed first: this address was
                    // never handed out.
                    let named = self
                        .view()
                        .claim(&claim_name(&made.owner, zone.as_str()))
                        .map(|c| c.address);
                    if named != Some(made.address.ip()) {
                        self.delete(&made).await?;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Releases one allocation as [`IpamBackend::release`] says.
    async fn release_allocation(&self, r: &Reservation, hold: Duration) -> Result<(), IpamError> {
        let name = allocation_name(r.address.ip());
        for _ in 0..MAX_STEPS {
            let known = self.view().allocation(&name).cloned();
            let current = match known {
                Some(a) => Some(a),
                // Not in the view: one this process has not seen yet?
                None => self.refresh_allocation(&name).await?,
            };
            let Some(a) = current else { return Ok(()) };
            if a.owner != r.owner {
                return Ok(());
            }
            let done = if hold.is_zero() {
                self.delete(&a).await?
            } else if a.held_until.is_some() {
                true
            } else {
                let held = IpAllocation {
                    held_until: Some(hold_end(SystemTime::now(), hold)?),
                    ..a
                };
                self.replace(&held).await?
            };
            if done {
                return Ok(());
            }
        }
        Err(contention("release", &r.owner))
    }

    /// Pools as judged, with the status they should show now.
    pub async fn pools(&self) -> Result<Vec<(IpPool, IpPoolStatus)>, IpamError> {
        self.synced().await?;
        let view = self.view();
        let pools: Vec<IpPool> = view.pools().cloned().collect();
        let allocations: Vec<IpAllocation> = view.allocations().cloned().collect();
        Ok(pool::report(&pools, &allocations))
    }

    /// One pass over the pools (run it periodically in one process, e.g.
    /// the leading controller): puts the finalizer on every pool, takes it
    /// off a deleted pool whose last allocation is gone, writes each
    /// pool's status when it changed, deletes expired holds, and deletes
    /// an owner's unclaimed duplicate seen unchanged in two passes.
    pub async fn keep_pools(&self) -> Result<KeptPools, IpamError> {
        self.synced().await?;
        let (pools, allocations) = {
            let view = self.view();
            let p: Vec<IpPool> = view.pools().cloned().collect();
            let a: Vec<IpAllocation> = view.allocations().cloned().collect();
            (p, a)
        };
        let mut kept = KeptPools::default();
        for (p, status) in pool::report(&pools, &allocations) {
            let used = allocations.iter().any(|a| a.pool_uid == p.uid);
            let has = p.finalizers.iter().any(|f| f == POOL_FINALIZER);
            let call = |e| store_err("update pool", e);
            if p.deleting && has && !used {
                self.store
                    .set_pool_finalizer(&p.name, false)
                    .await
                    .map_err(call)?;
                kept.finalizers += 1;
                continue;
            }
            if !p.deleting && !has {
                self.store
                    .set_pool_finalizer(&p.name, true)
                    .await
                    .map_err(call)?;
                kept.finalizers += 1;
            }
            if p.status.as_ref() != Some(&status) {
                self.store
                    .apply_pool_status(&p.name, &status)
                    .await
                    .map_err(call)?;
                kept.statuses += 1;
            }
        }
        let now = SystemTime::now();
        for a in allocations
            .iter()
            .filter(|a| a.held_until.is_some_and(|t| t <= now))
        {
            if self.delete(a).await? {
                kept.expired += 1;
            }
        }
        kept.duplicates = self.sweep_duplicates(&allocations).await?;
        Ok(kept)
    }

    /// Deletes live allocations of an owner that its claim in the zone
    /// does not name (a reservation that lost a race and stopped before it
    /// deleted its allocation), once seen unchanged in two passes and the
    /// claim re-read still names another address.
    async fn sweep_duplicates(&self, allocations: &[IpAllocation]) -> Result<usize, IpamError> {
        let dups: Vec<(IpAllocation, String)> = {
            let view = self.view();
            allocations
                .iter()
                .filter(|a| a.held_until.is_none())
                .filter_map(|a| {
                    let cname = claim_name(&a.owner, &a.zone);
                    let c = view.claim(&cname)?;
                    (c.address != a.address.ip()).then(|| (a.clone(), cname))
                })
                .collect()
        };
        let before = std::mem::take(&mut *lock(&self.suspects));
        let mut deleted = 0;
        for (a, cname) in dups {
            if before.get(&a.name) != Some(&a.resource_version) {
                lock(&self.suspects).insert(a.name.clone(), a.resource_version.clone());
                continue;
            }
            let claim = self
                .store
                .get_claim(&cname)
                .await
                .map_err(|e| store_err("get claim", e))?;
            if claim.is_some_and(|c| c.address != a.address.ip()) && self.delete(&a).await? {
                tracing::info!(backend = BACKEND, allocation = %a.name, owner = %a.owner, "deleted an unclaimed duplicate allocation");
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// What one [`KubernetesBackend::keep_pools`] pass wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptPools {
    /// Finalizers put on or taken off.
    pub finalizers: usize,
    /// Statuses written.
    pub statuses: usize,
    /// Expired holds deleted.
    pub expired: usize,
    /// Unclaimed duplicates deleted.
    pub duplicates: usize,
}

fn contention(call: &str, owner: &Owner) -> IpamError {
    IpamError::Unavailable {
        backend: BACKEND.into(),
        call: call.into(),
        message: format!(
            "{owner}: gave up after {MAX_STEPS} steps; the pools are changing faster than this process sees them"
        ),
    }
}

/// Feeds the view from the store's watch until the backend is gone.
async fn follow(
    store: Arc<dyn PoolStore>,
    view: std::sync::Weak<Mutex<Cache>>,
    ready: watch::Sender<bool>,
) {
    let mut events = store.watch();
    while let Some(event) = events.next().await {
        let Some(view) = view.upgrade() else { return };
        match event {
            Ok(e) => {
                let mut v = lock(&view);
                v.apply(e);
                if v.synced() {
                    ready.send_replace(true);
                }
            }
            Err(e) => {
                tracing::warn!(backend = BACKEND, error = %e, "watch of the IP pools failed; it restarts")
            }
        }
    }
}

#[async_trait]
impl IpamBackend for KubernetesBackend {
    fn name(&self) -> &str {
        BACKEND
    }

    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        self.synced().await?;
        let one = self.owner_lock(owner, zone.as_str()).await;
        let _serial = one.lock().await;
        for _ in 0..MAX_STEPS {
            let step = self.view().plan(owner, zone, SystemTime::now())?;
            if let Some(r) = self.run(step, zone).await? {
                tracing::debug!(backend = BACKEND, owner = %owner, zone = %zone, address = %r.address, "reserved");
                return Ok(r);
            }
        }
        Err(contention("reserve", owner))
    }

    async fn release(&self, r: &Reservation, hold: Duration) -> Result<(), IpamError> {
        self.synced().await?;
        let one = self.owner_lock(&r.owner, r.zone.as_str()).await;
        let _serial = one.lock().await;
        self.release_allocation(r, hold).await?;
        // The claim goes last: a release that stops before leaves a claim
        // on a held or missing allocation, which the next reserve mends.
        let claimed = self
            .view()
            .claim(&claim_name(&r.owner, r.zone.as_str()))
            .filter(|c| c.address == r.address.ip())
            .cloned();
        if let Some(c) = claimed {
            self.unclaim(&c).await?;
        }
        Ok(())
    }

    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        self.synced().await?;
        let found = self
            .view()
            .owned(owner)
            .into_iter()
            .find(|a| a.held_until.is_none() && zone.is_none_or(|z| a.zone == z.as_str()))
            .cloned();
        found.as_ref().map(reservation).transpose()
    }

    async fn lookup_all(&self, owner: &Owner) -> Result<Vec<Reservation>, IpamError> {
        self.synced().await?;
        let live: Vec<IpAllocation> = self
            .view()
            .owned(owner)
            .into_iter()
            .filter(|a| a.held_until.is_none())
            .cloned()
            .collect();
        live.iter().map(reservation).collect()
    }

    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        let all = self
            .store
            .list_allocations()
            .await
            .map_err(|e| store_err("list allocations", e))?;
        let mut out = Vec::new();
        for a in all.iter().filter(|a| a.owner.cluster == self.cluster) {
            match reservation(a) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(backend = BACKEND, allocation = %a.name, error = %e, "skipped an allocation that does not read")
                }
            }
        }
        Ok(out)
    }
}
