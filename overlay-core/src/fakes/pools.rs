//! [`MemoryPoolStore`]: pools, allocations and claims in memory, with the
//! API server's rules that Kubernetes-native IPAM relies on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use super::{WATCH_CAPACITY, lock};
use crate::error::StoreError;
use crate::ippool::{
    IpAllocation, IpClaim, IpPool, IpPoolStatus, POOL_FINALIZER, PoolEvent, PoolObject, PoolStore,
};

const POOL: &str = "OverlayIPPool";
const ALLOCATION: &str = "OverlayIPAllocation";
const CLAIM: &str = "OverlayIPClaim";

#[derive(Default)]
struct State {
    /// The last resourceVersion handed out (one counter for every kind,
    /// like etcd's revision).
    revision: u64,
    pools: BTreeMap<String, IpPool>,
    allocations: BTreeMap<String, IpAllocation>,
    claims: BTreeMap<String, IpClaim>,
}

impl State {
    fn next(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }
}

/// Pools, allocations and claims in memory, keeping the API server's
/// rules: a create of a taken name fails with
/// [`StoreError::AlreadyExists`], a replace with a stale resourceVersion
/// with [`StoreError::Conflict`], a delete with a uid precondition that
/// does not match with `Conflict`; a pool with finalizers is only marked
/// deleting, and deleting a pool deletes its allocations (the garbage
/// collector's work on their owner reference). Clones share the state, so
/// two backends over clones race like two controllers on one cluster.
///
/// Every call of the [`PoolStore`] methods except `watch` counts as one
/// request ([`MemoryPoolStore::requests`]).
#[derive(Clone)]
pub struct MemoryPoolStore {
    state: Arc<Mutex<State>>,
    tx: broadcast::Sender<PoolEvent>,
    requests: Arc<AtomicU64>,
}

impl Default for MemoryPoolStore {
    fn default() -> Self {
        Self::new()
    }
}

fn gone(kind: &str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind: kind.into(),
        name: name.into(),
    }
}

impl MemoryPoolStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            tx: broadcast::channel(WATCH_CAPACITY).0,
            requests: Arc::default(),
        }
    }

    /// Requests served so far (every [`PoolStore`] call but `watch`).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn send(&self, event: PoolEvent) {
        let _ = self.tx.send(event);
    }

    /// Creates or updates a pool as a user's `kubectl apply` would: the
    /// spec is taken from `pool`; uid, creation time, finalizers and
    /// status are kept from the stored pool (or set when new).
    pub fn put_pool(&self, pool: IpPool) -> IpPool {
        let stored = {
            let mut st = lock(&self.state);
            let n = st.next();
            let mut pool = pool;
            match st.pools.get(&pool.name) {
                Some(old) => {
                    pool.uid = old.uid.clone();
                    pool.created = old.created;
                    pool.finalizers = old.finalizers.clone();
                    pool.status = old.status.clone();
                    pool.deleting = old.deleting;
                }
                None => {
                    pool.uid = format!("pool-uid-{n}");
                    pool.created = Some(SystemTime::now());
                    pool.deleting = false;
                }
            }
            st.pools.insert(pool.name.clone(), pool.clone());
            pool
        };
        self.send(PoolEvent::Applied(PoolObject::Pool(stored.clone())));
        stored
    }

    /// Deletes a pool as a user would: with finalizers it is only marked
    /// deleting; without, it goes, and its allocations with it. Returns
    /// whether the pool is gone.
    pub fn delete_pool(&self, name: &str) -> bool {
        let mut events = Vec::new();
        let gone = {
            let mut st = lock(&self.state);
            let Some(pool) = st.pools.get_mut(name) else {
                return true;
            };
            if pool.finalizers.is_empty() {
                remove_pool(&mut st, name, &mut events);
                true
            } else {
                pool.deleting = true;
                events.push(PoolEvent::Applied(PoolObject::Pool(pool.clone())));
                false
            }
        };
        for e in events {
            self.send(e);
        }
        gone
    }

    /// The pool `name` as stored.
    pub fn pool(&self, name: &str) -> Option<IpPool> {
        lock(&self.state).pools.get(name).cloned()
    }

    /// Every allocation as stored.
    pub fn allocations(&self) -> Vec<IpAllocation> {
        lock(&self.state).allocations.values().cloned().collect()
    }

    /// Every claim as stored.
    pub fn claims(&self) -> Vec<IpClaim> {
        lock(&self.state).claims.values().cloned().collect()
    }

    /// Deletes an allocation as a user (or another tool) would, without
    /// preconditions.
    pub fn remove_allocation(&self, name: &str) -> bool {
        let removed = lock(&self.state).allocations.remove(name);
        let found = removed.is_some();
        if let Some(a) = removed {
            self.send(PoolEvent::Deleted(PoolObject::Allocation(a)));
        }
        found
    }
}

/// Removes pool `name` and, like the garbage collector, its allocations.
fn remove_pool(st: &mut State, name: &str, events: &mut Vec<PoolEvent>) {
    let Some(pool) = st.pools.remove(name) else {
        return;
    };
    let dependents: Vec<String> = st
        .allocations
        .values()
        .filter(|a| a.pool_uid == pool.uid)
        .map(|a| a.name.clone())
        .collect();
    for n in dependents {
        if let Some(a) = st.allocations.remove(&n) {
            events.push(PoolEvent::Deleted(PoolObject::Allocation(a)));
        }
    }
    events.push(PoolEvent::Deleted(PoolObject::Pool(pool)));
}

#[async_trait]
impl PoolStore for MemoryPoolStore {
    fn watch(&self) -> BoxStream<'static, Result<PoolEvent, StoreError>> {
        // Subscribe first, then list: a change in between shows in both,
        // and applying it twice changes nothing.
        let rx = self.tx.subscribe();
        let (pools, allocations, claims) = {
            let st = lock(&self.state);
            (
                st.pools.values().cloned().collect(),
                st.allocations.values().cloned().collect(),
                st.claims.values().cloned().collect(),
            )
        };
        let first = futures::stream::iter([
            Ok(PoolEvent::Pools(pools)),
            Ok(PoolEvent::Allocations(allocations)),
            Ok(PoolEvent::Claims(claims)),
        ]);
        let rest = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((Ok(ev), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(StoreError::Unavailable {
                        kind: ALLOCATION.into(),
                        name: String::new(),
                        message: format!("watch lagged by {n} events; relist"),
                    }),
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        first.chain(rest).boxed()
    }

    async fn list_allocations(&self) -> Result<Vec<IpAllocation>, StoreError> {
        self.count();
        Ok(self.allocations())
    }

    async fn list_pools(&self) -> Result<Vec<IpPool>, StoreError> {
        self.count();
        Ok(lock(&self.state).pools.values().cloned().collect())
    }

    async fn get_allocation(&self, name: &str) -> Result<Option<IpAllocation>, StoreError> {
        self.count();
        Ok(lock(&self.state).allocations.get(name).cloned())
    }

    async fn create_allocation(&self, a: &IpAllocation) -> Result<IpAllocation, StoreError> {
        self.count();
        let created = {
            let mut st = lock(&self.state);
            if st.allocations.contains_key(&a.name) {
                return Err(StoreError::AlreadyExists {
                    kind: ALLOCATION.into(),
                    name: a.name.clone(),
                });
            }
            let n = st.next();
            let mut a = a.clone();
            a.resource_version = Some(n.to_string());
            a.uid = format!("allocation-uid-{n}");
            st.allocations.insert(a.name.clone(), a.clone());
            a
        };
        self.send(PoolEvent::Applied(PoolObject::Allocation(created.clone())));
        Ok(created)
    }

    async fn replace_allocation(&self, a: &IpAllocation) -> Result<IpAllocation, StoreError> {
        self.count();
        let replaced = {
            let mut st = lock(&self.state);
            let n = st.next();
            let cur = st
                .allocations
                .get_mut(&a.name)
                .ok_or_else(|| gone(ALLOCATION, &a.name))?;
            if a.resource_version.is_some() && a.resource_version != cur.resource_version {
                return Err(StoreError::Conflict {
                    kind: ALLOCATION.into(),
                    name: a.name.clone(),
                    message: "the object has been modified; please apply your changes to the latest version and try again".into(),
                });
            }
            let mut new = a.clone();
            new.uid = cur.uid.clone();
            new.resource_version = Some(n.to_string());
            *cur = new.clone();
            new
        };
        self.send(PoolEvent::Applied(PoolObject::Allocation(replaced.clone())));
        Ok(replaced)
    }

    async fn delete_allocation(&self, a: &IpAllocation) -> Result<bool, StoreError> {
        self.count();
        let name = a.name.as_str();
        let removed = {
            let mut st = lock(&self.state);
            match st.allocations.get(name) {
                None => return Ok(false),
                Some(cur)
                    if (!a.uid.is_empty() && cur.uid != a.uid)
                        || (a.resource_version.is_some()
                            && a.resource_version != cur.resource_version) =>
                {
                    return Err(StoreError::Conflict {
                        kind: ALLOCATION.into(),
                        name: name.into(),
                        message: format!(
                            "Precondition failed: UID/ResourceVersion in precondition: {}/{:?}, in object meta: {}/{:?}",
                            a.uid, a.resource_version, cur.uid, cur.resource_version
                        ),
                    });
                }
                Some(_) => st.allocations.remove(name),
            }
        };
        if let Some(a) = removed {
            self.send(PoolEvent::Deleted(PoolObject::Allocation(a)));
        }
        Ok(true)
    }

    async fn list_claims(&self) -> Result<Vec<IpClaim>, StoreError> {
        self.count();
        Ok(self.claims())
    }

    async fn get_claim(&self, name: &str) -> Result<Option<IpClaim>, StoreError> {
        self.count();
        Ok(lock(&self.state).claims.get(name).cloned())
    }

    async fn create_claim(&self, c: &IpClaim) -> Result<IpClaim, StoreError> {
        self.count();
        let created = {
            let mut st = lock(&self.state);
            if st.claims.contains_key(&c.name) {
                return Err(StoreError::AlreadyExists {
                    kind: CLAIM.into(),
                    name: c.name.clone(),
                });
            }
            let n = st.next();
            let mut c = c.clone();
            c.uid = format!("claim-uid-{n}");
            st.claims.insert(c.name.clone(), c.clone());
            c
        };
        self.send(PoolEvent::Applied(PoolObject::Claim(created.clone())));
        Ok(created)
    }

    async fn delete_claim(&self, name: &str, uid: &str) -> Result<bool, StoreError> {
        self.count();
        let removed = {
            let mut st = lock(&self.state);
            match st.claims.get(name) {
                None => return Ok(false),
                Some(cur) if !uid.is_empty() && cur.uid != uid => {
                    return Err(StoreError::Conflict {
                        kind: CLAIM.into(),
                        name: name.into(),
                        message: format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            cur.uid
                        ),
                    });
                }
                Some(_) => st.claims.remove(name),
            }
        };
        if let Some(c) = removed {
            self.send(PoolEvent::Deleted(PoolObject::Claim(c)));
        }
        Ok(true)
    }

    async fn set_pool_finalizer(&self, name: &str, present: bool) -> Result<(), StoreError> {
        self.count();
        let mut events = Vec::new();
        {
            let mut st = lock(&self.state);
            let pool = st.pools.get_mut(name).ok_or_else(|| gone(POOL, name))?;
            let has = pool.finalizers.iter().any(|f| f == POOL_FINALIZER);
            if present && !has {
                // Like the API server: no new finalizers while deleting.
                if pool.deleting {
                    return Err(StoreError::Rejected {
                        kind: POOL.into(),
                        name: name.into(),
                        message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                    });
                }
                pool.finalizers.push(POOL_FINALIZER.into());
            } else if !present && has {
                pool.finalizers.retain(|f| f != POOL_FINALIZER);
            } else {
                return Ok(());
            }
            if pool.deleting && pool.finalizers.is_empty() {
                remove_pool(&mut st, name, &mut events);
            } else {
                events.push(PoolEvent::Applied(PoolObject::Pool(pool.clone())));
            }
        }
        for e in events {
            self.send(e);
        }
        Ok(())
    }

    async fn apply_pool_status(&self, name: &str, status: &IpPoolStatus) -> Result<(), StoreError> {
        self.count();
        let pool = {
            let mut st = lock(&self.state);
            let pool = st.pools.get_mut(name).ok_or_else(|| gone(POOL, name))?;
            pool.status = Some(status.clone());
            pool.clone()
        };
        self.send(PoolEvent::Applied(PoolObject::Pool(pool)));
        Ok(())
    }
}
