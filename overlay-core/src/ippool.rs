//! Kubernetes-native IPAM as records: address pools (`OverlayIPPool`), one
//! allocation per held address (`OverlayIPAllocation`) and one claim per
//! owner and zone (`OverlayIPClaim`), and [`PoolStore`], the seam the
//! Kubernetes IPAM backend (`overlay_ipam::kubernetes`) is written against.
//!
//! The records carry what the objects carry, unvalidated where a user
//! writes them (a pool's spec is text, checked by the backend); the store
//! adapters (the `kube` feature's `k8s::KubePoolStore`, the `testing`
//! feature's `fakes::MemoryPoolStore`) translate objects to records.
//!
//! Uniqueness comes from object names, which the API server keeps unique:
//! - an allocation is named after its address ([`allocation_name`]), so two
//!   allocations of one address cannot both be created;
//! - a claim is named after its owner and zone ([`claim_name`]), so an
//!   owner cannot hold two claims in a zone.

use std::net::IpAddr;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::stream::BoxStream;
use ipnetwork::IpNetwork;

use crate::error::StoreError;
use crate::model::Owner;

/// The finalizer on every pool: it comes off only when no allocation of
/// the pool is left, so a pool cannot be deleted under its allocations.
pub const POOL_FINALIZER: &str = "overlay.iks.ibm.com/allocations";

/// The condition type of a pool's status.
pub const POOL_READY_CONDITION: &str = "Ready";

/// Label on allocations: the pool they come from, for `kubectl get -l`.
pub const POOL_LABEL: &str = "overlay.iks.ibm.com/pool";

/// Label on allocations and claims: the owning node.
pub const NODE_LABEL: &str = "overlay.iks.ibm.com/node";

/// An `OverlayIPPool` as written by its user: the spec is text, validated
/// by the backend (which never allocates from an invalid pool).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpPool {
    /// Object name.
    pub name: String,
    /// Object uid (the owner reference of its allocations).
    pub uid: String,
    /// Zone the pool serves.
    pub zone: String,
    /// The pool's prefix, e.g. `192.0.2.0/24`.
    pub cidr: String,
    /// Gateway; `None`: the first host address.
    pub gateway: Option<String>,
    /// Addresses or CIDRs never handed out.
    pub reserved: Vec<String>,
    /// Pools of a zone are tried by ascending order, then by name.
    pub order: i64,
    /// No new allocations; existing ones stay.
    pub disabled: bool,
    /// The pool is being deleted (it has a deletion timestamp).
    pub deleting: bool,
    /// Finalizers on the object.
    pub finalizers: Vec<String>,
    /// Creation time: of two overlapping pools, the older one is used.
    pub created: Option<SystemTime>,
    /// The status the controller last wrote.
    pub status: Option<IpPoolStatus>,
}

/// The status of a pool, written by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpPoolStatus {
    /// Addresses the pool can hand out (capped at `i64::MAX`).
    pub size: i64,
    /// Live allocations.
    pub allocated: i64,
    /// Allocations held back after a release.
    pub held: i64,
    /// `size - allocated - held`.
    pub free: i64,
    /// `allocated/size`, for `kubectl get`.
    pub usage: String,
    /// Whether new allocations come from this pool (`True`), and why not.
    pub ready: bool,
    /// CamelCase reason: `Ready`, `InvalidSpec`, `Overlaps`, `Disabled`,
    /// `Deleting`, `Full`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// One held address: an `OverlayIPAllocation`, named
/// [`allocation_name`] of its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAllocation {
    /// Object name: [`allocation_name`] of the address.
    pub name: String,
    /// The object's resourceVersion (`None` before it is created); a
    /// replace carrying a stale one fails with [`StoreError::Conflict`].
    pub resource_version: Option<String>,
    /// Object uid (empty before it is created).
    pub uid: String,
    /// The pool it came from.
    pub pool: String,
    /// The pool's uid (the owner reference).
    pub pool_uid: String,
    /// Zone of the pool.
    pub zone: String,
    /// Who holds it.
    pub owner: Owner,
    /// The address with the pool's prefix length.
    pub address: IpNetwork,
    /// The pool's gateway.
    pub gateway: IpAddr,
    /// Set when released and held back from other owners until then.
    pub held_until: Option<SystemTime>,
}

/// An owner's claim on its one live address in a zone: an
/// `OverlayIPClaim`, named [`claim_name`] of the owner and zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpClaim {
    /// Object name: [`claim_name`].
    pub name: String,
    /// Object uid (empty before it is created).
    pub uid: String,
    /// The owner.
    pub owner: Owner,
    /// The zone.
    pub zone: String,
    /// The claimed address (the allocation [`allocation_name`] of it).
    pub address: IpAddr,
}

/// The name of the allocation of `address`: `198-51-100-7`, or for IPv6
/// every group in hex (`2001-db8-0-0-0-0-0-7`), so that one address has
/// exactly one name, whatever pool it comes from.
pub fn allocation_name(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => a
            .octets()
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        IpAddr::V6(a) => a
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// FNV-1a, 64 bits: a hash that never changes between builds (std's
/// hasher may), so every controller version names a claim alike.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The name of `owner`'s claim in `zone`: the node name (lower-cased,
/// other characters as `-`, at most 200) and a hash of cluster, node and
/// zone, e.g. `node-a.5f0c1e9b2a7d4c31`. The claim also records owner and
/// zone, so a hash collision is detected, never mistaken for a claim.
pub fn claim_name(owner: &Owner, zone: &str) -> String {
    let node: String = owner
        .node
        .chars()
        .take(200)
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let node = node.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = fnv1a(&[&owner.cluster, &owner.node, zone]);
    if node.is_empty() {
        format!("claim.{hash:016x}")
    } else {
        format!("{node}.{hash:016x}")
    }
}

/// One object of the three kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolObject {
    /// An `OverlayIPPool`.
    Pool(IpPool),
    /// An `OverlayIPAllocation`.
    Allocation(IpAllocation),
    /// An `OverlayIPClaim`.
    Claim(IpClaim),
}

/// A change seen by [`PoolStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    /// Every pool, after a (re)list: replaces what was known.
    Pools(Vec<IpPool>),
    /// Every allocation, after a (re)list.
    Allocations(Vec<IpAllocation>),
    /// Every claim, after a (re)list.
    Claims(Vec<IpClaim>),
    /// An object was created or changed.
    Applied(PoolObject),
    /// An object was deleted.
    Deleted(PoolObject),
}

/// Pools, allocations and claims as the Kubernetes IPAM backend needs them.
///
/// Implementations keep Kubernetes' semantics, which the backend's safety
/// rests on:
/// - a create of a taken name fails with [`StoreError::AlreadyExists`];
/// - a replace carrying a stale resourceVersion fails with
///   [`StoreError::Conflict`];
/// - a pool with finalizers is only marked deleting.
#[async_trait]
pub trait PoolStore: Send + Sync {
    /// Every change, starting with the full lists ([`PoolEvent::Pools`],
    /// [`PoolEvent::Allocations`], [`PoolEvent::Claims`], in any order),
    /// which come again after the watch restarts.
    fn watch(&self) -> BoxStream<'static, Result<PoolEvent, StoreError>>;

    /// Every allocation, read from the API server now (not a cache).
    async fn list_allocations(&self) -> Result<Vec<IpAllocation>, StoreError>;

    /// Every pool, read now.
    async fn list_pools(&self) -> Result<Vec<IpPool>, StoreError>;

    /// The allocation named `name`, read now.
    async fn get_allocation(&self, name: &str) -> Result<Option<IpAllocation>, StoreError>;

    /// Creates an allocation (owner reference to its pool); answers it
    /// with its resourceVersion and uid.
    async fn create_allocation(&self, a: &IpAllocation) -> Result<IpAllocation, StoreError>;

    /// Replaces an allocation; `a.resource_version` is the precondition.
    async fn replace_allocation(&self, a: &IpAllocation) -> Result<IpAllocation, StoreError>;

    /// Deletes allocation `a` if it is unchanged: preconditions on its uid
    /// and (when set) its resourceVersion, [`StoreError::Conflict`] when
    /// either differs. `Ok(false)` when it was already gone.
    async fn delete_allocation(&self, a: &IpAllocation) -> Result<bool, StoreError>;

    /// Every claim, read now.
    async fn list_claims(&self) -> Result<Vec<IpClaim>, StoreError>;

    /// The claim named `name`, read now.
    async fn get_claim(&self, name: &str) -> Result<Option<IpClaim>, StoreError>;

    /// Creates a claim.
    async fn create_claim(&self, c: &IpClaim) -> Result<IpClaim, StoreError>;

    /// Deletes the claim `name` if its uid is `uid`; `Ok(false)` when it
    /// was already gone.
    async fn delete_claim(&self, name: &str, uid: &str) -> Result<bool, StoreError>;

    /// Adds (`present`) or removes [`POOL_FINALIZER`] on pool `name`.
    async fn set_pool_finalizer(&self, name: &str, present: bool) -> Result<(), StoreError>;

    /// Writes pool `name`'s status (server-side apply, the controller's
    /// field manager).
    async fn apply_pool_status(&self, name: &str, status: &IpPoolStatus) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_names_are_one_per_address_and_valid_object_names() {
        assert_eq!(
            allocation_name("198.51.100.7".parse().unwrap()),
            "198-51-100-7"
        );
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(allocation_name(v6), "2001-db8-0-0-0-0-0-7");
        let zero: IpAddr = "::".parse().unwrap();
        assert_eq!(allocation_name(zero), "0-0-0-0-0-0-0-0");
    }

    #[test]
    fn claim_names_differ_by_cluster_node_and_zone_and_stay_valid() {
        let a = claim_name(&Owner::new("c1", "node-a"), "dal10");
        assert!(a.starts_with("node-a."), "{a}");
        assert_eq!(a, claim_name(&Owner::new("c1", "node-a"), "dal10"));
        assert_ne!(a, claim_name(&Owner::new("c2", "node-a"), "dal10"));
        assert_ne!(a, claim_name(&Owner::new("c1", "node-a"), "dal12"));
        assert_ne!(a, claim_name(&Owner::new("c1", "node-b"), "dal10"));
        let odd = claim_name(&Owner::new("c1", "Node_A"), "z");
        assert!(odd.starts_with("node-a."), "{odd}");
        assert!(claim_name(&Owner::new("c1", "__"), "z").starts_with("claim."));
        let long = claim_name(&Owner::new("c1", "n".repeat(253)), "z");
        assert!(long.len() <= 253, "{}", long.len());
    }
}
