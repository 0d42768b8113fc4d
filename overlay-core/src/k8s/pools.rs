//! The Kubernetes-native IPAM's objects in the API server:
//! [`KubePoolStore`], the `kube` adapter of [`PoolStore`].
//!
//! Uniqueness and concurrency are the API server's, never a lock's:
//! - allocations and claims are created with POST, which answers 409
//!   `AlreadyExists` ([`StoreError::AlreadyExists`]) when the name is taken;
//! - an allocation is replaced with PUT carrying its resourceVersion (409
//!   `Conflict` when stale: [`StoreError::Conflict`]);
//! - deletes carry a uid precondition, so a writer never deletes an object
//!   that was re-created under the same name meanwhile;
//! - the pool finalizer is added and removed with JSON patches guarded by a
//!   `test` of the list read (or of the resourceVersion, when the pool has
//!   none);
//! - a pool's status is written by server-side apply under
//!   [`CONTROLLER_MANAGER`], on the status subresource.
//!
//! Reads are lenient, like the other adapters': a pool whose spec does not
//! read is kept with its fields as text (the backend finds it invalid and
//! never allocates from it); an allocation or claim that does not convert
//! is skipped with a warning, in lists and in the watch alike, and never
//! stops either. Skipping one is safe: its name still holds its address in
//! the API server, so a create of it fails with `AlreadyExists`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, future};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::{
    API_VERSION, CONTROLLER_MANAGER, ERROR_LOG_PERIOD, api_err, dynamic_api, error_chain,
    ignore_not_found, is_not_served, remove_finalizer,
};
use crate::crd::{
    MESSAGE_MAX_LEN, OverlayIPAllocation, OverlayIPAllocationSpec, OverlayIPClaim,
    OverlayIPClaimSpec, OverlayIPPool, USAGE_MAX_LEN, read, truncate_message,
};
use crate::error::StoreError;
use crate::invalid::FieldProblem;
use crate::ippool::{
    IpAllocation, IpClaim, IpPool, IpPoolStatus, NODE_LABEL, POOL_FINALIZER, POOL_LABEL,
    POOL_READY_CONDITION, PoolEvent, PoolObject, PoolStore, allocation_name,
};
use crate::model::Owner;
use crate::parse::{parse_ip, parse_ip_with_prefix};
use crate::repeats::Repeats;

const POOL: &str = "OverlayIPPool";
const ALLOCATION: &str = "OverlayIPAllocation";
const CLAIM: &str = "OverlayIPClaim";

/// The `Ready` condition last seen or written per pool: its status and
/// transition time, kept while the status does not change.
type ReadySince = Arc<Mutex<HashMap<String, (bool, Time)>>>;

/// Pools, allocations and claims in the API server (cluster-scoped,
/// `iks.ibm.com/v1alpha1`).
pub struct KubePoolStore {
    pools: Api<DynamicObject>,
    allocations: Api<DynamicObject>,
    claims: Api<DynamicObject>,
    ready_since: ReadySince,
    manager: String,
}

impl KubePoolStore {
    /// The store over `client`; it writes under [`CONTROLLER_MANAGER`].
    pub fn new(client: Client) -> Self {
        Self {
            pools: dynamic_api::<OverlayIPPool>(client.clone()),
            allocations: dynamic_api::<OverlayIPAllocation>(client.clone()),
            claims: dynamic_api::<OverlayIPClaim>(client),
            ready_since: ReadySince::default(),
            manager: CONTROLLER_MANAGER.into(),
        }
    }

    /// The same store writing under field manager `manager` (each writer
    /// its own: `overlayctl ipam migrate` is not the controller).
    pub fn with_field_manager(mut self, manager: impl Into<String>) -> Self {
        self.manager = manager.into();
        self
    }
}

// ---- reading objects ----

/// A text field of a user-written spec: a value that is not a string is
/// kept as its JSON text (which no parser accepts as an address) and noted.
fn text_field(v: Option<&Value>, path: &str, problem: &mut Option<FieldProblem>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            note(problem, FieldProblem::new(path, "expected a string"));
            Some(other.to_string())
        }
    }
}

fn note(first: &mut Option<FieldProblem>, p: FieldProblem) {
    if first.is_none() {
        *first = Some(p);
    }
}

/// `spec.reserved`, leniently: entries that are not strings, or a value
/// that is not a list, are kept as JSON text, so that the backend finds the
/// pool invalid rather than hands out an address meant to be reserved.
fn reserved_field(v: Option<&Value>, problem: &mut Option<FieldProblem>) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, e)| text_field(Some(e), &format!("spec.reserved[{i}]"), problem))
            .collect(),
        Some(other) => {
            note(
                problem,
                FieldProblem::new("spec.reserved", "expected a list"),
            );
            vec![other.to_string()]
        }
    }
}

/// A pool's spec and metadata as text, with the first problem found. A
/// malformed `order` sorts last; a malformed `disabled` reads as disabled.
fn decode_pool(o: &DynamicObject) -> (IpPool, Option<FieldProblem>) {
    let mut problem = None;
    let spec = o.data.get("spec");
    let field = |name: &str| spec.and_then(|s| s.get(name));
    if spec.is_none() {
        note(&mut problem, FieldProblem::new("spec", "missing"));
    }
    let zone = text_field(field("zone"), "spec.zone", &mut problem).unwrap_or_default();
    let cidr = text_field(field("cidr"), "spec.cidr", &mut problem).unwrap_or_default();
    let gateway = text_field(field("gateway"), "spec.gateway", &mut problem);
    let reserved = reserved_field(field("reserved"), &mut problem);
    let order = read::<i64>(field("order"), "spec.order").unwrap_or_else(|p| {
        note(&mut problem, p);
        Some(i64::MAX)
    });
    let disabled = read::<bool>(field("disabled"), "spec.disabled").unwrap_or_else(|p| {
        note(&mut problem, p);
        Some(true)
    });
    let pool = IpPool {
        name: o.name_any(),
        uid: o.metadata.uid.clone().unwrap_or_default(),
        zone,
        cidr,
        gateway,
        reserved,
        order: order.unwrap_or(0),
        disabled: disabled.unwrap_or(false),
        deleting: o.metadata.deletion_timestamp.is_some(),
        finalizers: o.finalizers().to_vec(),
        created: o
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| SystemTime::from(t.0)),
        status: o.data.get("status").map(pool_status),
    };
    (pool, problem)
}

/// The `Ready` condition of a pool's status, read leniently.
fn ready_condition(status: &Value) -> Option<Condition> {
    read::<Vec<Condition>>(status.get("conditions"), "status.conditions")
        .ok()
        .flatten()?
        .into_iter()
        .find(|c| c.type_ == POOL_READY_CONDITION)
}

/// A pool's status as the controller wrote it; what does not read is 0
/// or empty.
fn pool_status(status: &Value) -> IpPoolStatus {
    let count = |name: &str| status.get(name).and_then(Value::as_i64).unwrap_or(0);
    let ready = ready_condition(status);
    IpPoolStatus {
        size: count("size"),
        allocated: count("allocated"),
        held: count("held"),
        free: count("free"),
        usage: status
            .get("usage")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        ready: ready.as_ref().is_some_and(|c| c.status == "True"),
        reason: ready.as_ref().map(|c| c.reason.clone()).unwrap_or_default(),
        message: ready.map(|c| c.message).unwrap_or_default(),
    }
}

fn held_until(text: &str) -> Result<SystemTime, FieldProblem> {
    text.parse::<k8s_openapi::jiff::Timestamp>()
        .map(SystemTime::from)
        .map_err(|e| {
            FieldProblem::new(
                "spec.heldUntil",
                format!("{text:?} is not an RFC 3339 time: {e}"),
            )
        })
}

/// An allocation, or what is wrong with it. Its name must be
/// [`allocation_name`] of its address: the name is what keeps the address
/// unique, so an allocation named otherwise is not trusted.
fn decode_allocation(o: &DynamicObject) -> Result<IpAllocation, FieldProblem> {
    let spec: OverlayIPAllocationSpec =
        read(o.data.get("spec"), "spec")?.ok_or_else(|| FieldProblem::new("spec", "missing"))?;
    let address = parse_ip_with_prefix("spec.address", &spec.address)?;
    let gateway = parse_ip("spec.gateway", &spec.gateway)?;
    let held_until = spec.held_until.as_deref().map(held_until).transpose()?;
    let name = o.name_any();
    let expected = allocation_name(address.ip());
    if name != expected {
        return Err(FieldProblem::new(
            "metadata.name",
            format!("an allocation of {} must be named {expected}", address.ip()),
        ));
    }
    let pool_uid = o
        .owner_references()
        .iter()
        .find(|r| r.kind == POOL && r.name == spec.pool)
        .map(|r| r.uid.clone())
        .unwrap_or_default();
    Ok(IpAllocation {
        name,
        resource_version: o.metadata.resource_version.clone(),
        uid: o.metadata.uid.clone().unwrap_or_default(),
        pool: spec.pool,
        pool_uid,
        zone: spec.zone,
        owner: Owner::new(spec.cluster, spec.node),
        address,
        gateway,
        held_until,
    })
}

/// A claim, or what is wrong with it.
fn decode_claim(o: &DynamicObject) -> Result<IpClaim, FieldProblem> {
    let spec: OverlayIPClaimSpec =
        read(o.data.get("spec"), "spec")?.ok_or_else(|| FieldProblem::new("spec", "missing"))?;
    let address: IpAddr = parse_ip("spec.address", &spec.address)?;
    Ok(IpClaim {
        name: o.name_any(),
        uid: o.metadata.uid.clone().unwrap_or_default(),
        owner: Owner::new(spec.cluster, spec.node),
        zone: spec.zone,
        address,
    })
}

/// The record of `o`, or `None` (logged) when it does not convert.
fn lenient<R>(
    kind: &str,
    o: &DynamicObject,
    decode: fn(&DynamicObject) -> Result<R, FieldProblem>,
) -> Option<R> {
    decode(o)
        .map_err(|p| {
            warn!(kind, name = %o.name_any(), field = %p.field, problem = %p.message,
                "skipping an object that does not convert; fix or delete it");
        })
        .ok()
}

/// A pool's record; a problem is logged, the pool kept (as text).
fn lenient_pool(o: &DynamicObject) -> IpPool {
    let (pool, problem) = decode_pool(o);
    if let Some(p) = problem {
        warn!(kind = POOL, name = %pool.name, field = %p.field, problem = %p.message,
            "pool spec does not read; the controller will not allocate from it");
    }
    pool
}

/// The record of a response the API server just answered, or `Rejected`.
fn decoded<R>(
    kind: &str,
    o: &DynamicObject,
    decode: fn(&DynamicObject) -> Result<R, FieldProblem>,
) -> Result<R, StoreError> {
    decode(o).map_err(|p| StoreError::Rejected {
        kind: kind.into(),
        name: o.name_any(),
        message: format!("the stored object does not convert: {p}"),
    })
}

// ---- writing objects ----

/// `v` if it is a valid label value (at most 63 characters of
/// `[A-Za-z0-9._-]`, alphanumeric at both ends); longer or odd names get
/// no label.
fn label_value(v: &str) -> Option<&str> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some(v)
}

fn labels(pairs: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    pairs
        .iter()
        .filter_map(|(k, v)| Some(((*k).to_owned(), json!(label_value(v)?))))
        .collect()
}

/// Metadata shared by a create and a replace of `a`: name, labels, the
/// owner reference to its pool (none without a pool uid: the API server
/// refuses one), and on a replace its resourceVersion and uid.
fn allocation_metadata(a: &IpAllocation) -> Value {
    let mut m = json!({
        "name": a.name,
        "labels": labels(&[(POOL_LABEL, &a.pool), (NODE_LABEL, &a.owner.node)]),
    });
    if !a.pool_uid.is_empty() {
        m["ownerReferences"] = json!([{
            "apiVersion": API_VERSION, "kind": POOL, "name": a.pool, "uid": a.pool_uid,
            "blockOwnerDeletion": false, "controller": false,
        }]);
    }
    if let Some(rv) = &a.resource_version {
        m["resourceVersion"] = json!(rv);
    }
    if !a.uid.is_empty() {
        m["uid"] = json!(a.uid);
    }
    m
}

/// An RFC 3339 time, to the second.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The object of allocation `a` (without resourceVersion and uid for a
/// create).
fn allocation_object(a: &IpAllocation) -> Result<DynamicObject, StoreError> {
    let mut spec = json!({
        "pool": a.pool, "zone": a.zone, "cluster": a.owner.cluster, "node": a.owner.node,
        "address": a.address.to_string(), "gateway": a.gateway.to_string(),
    });
    if let Some(t) = a.held_until {
        spec["heldUntil"] = json!(rfc3339(t));
    }
    object(
        ALLOCATION,
        &a.name,
        json!({"apiVersion": API_VERSION, "kind": ALLOCATION,
            "metadata": allocation_metadata(a), "spec": spec}),
    )
}

fn claim_object(c: &IpClaim) -> Result<DynamicObject, StoreError> {
    object(
        CLAIM,
        &c.name,
        json!({"apiVersion": API_VERSION, "kind": CLAIM,
            "metadata": {"name": c.name, "labels": labels(&[(NODE_LABEL, &c.owner.node)])},
            "spec": {"cluster": c.owner.cluster, "node": c.owner.node, "zone": c.zone,
                "address": c.address.to_string()}}),
    )
}

fn object(kind: &str, name: &str, v: Value) -> Result<DynamicObject, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Rejected {
        kind: kind.into(),
        name: name.into(),
        message: format!("building the object: {e}"),
    })
}

fn post_params(manager: &str) -> PostParams {
    PostParams {
        field_manager: Some(manager.into()),
        ..PostParams::default()
    }
}

/// Deletes `name` if its uid is `uid`: `Ok(false)` when it was gone, a
/// [`StoreError::Conflict`] when the name now belongs to another object.
async fn delete_with_uid(
    api: &Api<DynamicObject>,
    kind: &str,
    name: &str,
    uid: &str,
    resource_version: Option<&str>,
) -> Result<bool, StoreError> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: (!uid.is_empty()).then(|| uid.to_owned()),
            resource_version: resource_version.map(str::to_owned),
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(api_err(kind, name, e)),
    }
}

/// A JSON patch adding [`POOL_FINALIZER`] to `current`, guarded by a test
/// of the list (of the resourceVersion when there is none). `None` when
/// it is there already.
fn add_finalizer_patch(current: &[String], rv: Option<&str>) -> Option<json_patch::Patch> {
    if current.iter().any(|f| f == POOL_FINALIZER) {
        return None;
    }
    let ops = if current.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/finalizers", "value": [POOL_FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": POOL_FINALIZER},
        ])
    };
    serde_json::from_value(ops).ok()
}

/// The server-side apply body of a pool's status, with the `Ready`
/// condition changed at `since`. Counts below zero are written as 0, the
/// usage and message cut to what the CRD allows, an empty reason as
/// `Ready`/`NotReady`.
fn pool_status_body(name: &str, s: &IpPoolStatus, since: Time) -> Value {
    let reason = match (s.reason.is_empty(), s.ready) {
        (false, _) => s.reason.clone(),
        (true, true) => "Ready".into(),
        (true, false) => "NotReady".into(),
    };
    let ready = Condition {
        type_: POOL_READY_CONDITION.into(),
        status: if s.ready { "True" } else { "False" }.into(),
        reason,
        message: truncate_message(&s.message, MESSAGE_MAX_LEN),
        last_transition_time: since,
        observed_generation: None,
    };
    json!({
        "apiVersion": API_VERSION, "kind": POOL, "metadata": {"name": name},
        "status": {"size": s.size.max(0), "allocated": s.allocated.max(0),
            "held": s.held.max(0), "free": s.free.max(0),
            "usage": truncate_message(&s.usage, USAGE_MAX_LEN), "conditions": [ready]},
    })
}

fn remember_ready(since: &ReadySince, o: &DynamicObject) {
    let Some(c) = o.data.get("status").and_then(ready_condition) else {
        return;
    };
    since
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(o.name_any(), (c.status == "True", c.last_transition_time));
}

// ---- the watch ----

/// The record of an object; `None` skips it.
type ToRecord = Box<dyn Fn(&DynamicObject) -> Option<PoolObject> + Send>;

/// How one kind's objects become [`PoolEvent`]s.
struct KindEvents {
    kind: &'static str,
    /// The record of an object; `None` skips it.
    one: ToRecord,
    /// The full list after a (re)list.
    all: fn(Vec<PoolObject>) -> PoolEvent,
}

fn pools_of(objects: Vec<PoolObject>) -> PoolEvent {
    PoolEvent::Pools(
        objects
            .into_iter()
            .filter_map(|o| match o {
                PoolObject::Pool(p) => Some(p),
                _ => None,
            })
            .collect(),
    )
}

fn allocations_of(objects: Vec<PoolObject>) -> PoolEvent {
    PoolEvent::Allocations(
        objects
            .into_iter()
            .filter_map(|o| match o {
                PoolObject::Allocation(a) => Some(a),
                _ => None,
            })
            .collect(),
    )
}

fn claims_of(objects: Vec<PoolObject>) -> PoolEvent {
    PoolEvent::Claims(
        objects
            .into_iter()
            .filter_map(|o| match o {
                PoolObject::Claim(c) => Some(c),
                _ => None,
            })
            .collect(),
    )
}

/// The error a failed list or watch of `kind` yields (logged at most once
/// per [`ERROR_LOG_PERIOD`]); the watcher retries with backoff.
fn watch_error(kind: &'static str, e: &watcher::Error, errors: &Repeats) -> StoreError {
    let message = error_chain(e);
    let not_served = is_not_served(e);
    if let Some(repeats) = errors.failure() {
        if not_served {
            warn!(kind, error = %message, repeats, "the API server does not serve this kind (is its CRD installed? kubectl apply -k deploy/); retrying with backoff");
        } else {
            warn!(kind, error = %message, repeats, "watch failed; retrying with backoff");
        }
    }
    if not_served {
        return StoreError::not_served(kind);
    }
    StoreError::Unavailable {
        kind: kind.into(),
        name: String::new(),
        message,
    }
}

/// One kind's watch as [`PoolEvent`]s: the list (after every relist),
/// then its changes.
fn kind_stream(
    api: Api<DynamicObject>,
    k: KindEvents,
) -> BoxStream<'static, Result<PoolEvent, StoreError>> {
    let errors = Repeats::new(ERROR_LOG_PERIOD);
    let kind = k.kind;
    watcher(api, watcher::Config::default())
        .default_backoff()
        .scan(Vec::new(), move |buffer: &mut Vec<PoolObject>, ev| {
            let out = match ev {
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    None
                }
                Ok(watcher::Event::InitApply(o)) => {
                    buffer.extend((k.one)(&o));
                    None
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(n) = errors.success() {
                        info!(kind, failures = n, "watch recovered");
                    }
                    Some(Ok((k.all)(std::mem::take(buffer))))
                }
                Ok(watcher::Event::Apply(o)) => (k.one)(&o).map(|r| Ok(PoolEvent::Applied(r))),
                Ok(watcher::Event::Delete(o)) => (k.one)(&o).map(|r| Ok(PoolEvent::Deleted(r))),
                // `410 Gone`: the resourceVersion was compacted away; the
                // watcher lists again at once, which is no failure.
                Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                    debug!(kind, "watch expired; listing again");
                    None
                }
                Err(e) => Some(Err(watch_error(kind, &e, &errors))),
            };
            future::ready(Some(out))
        })
        .filter_map(future::ready)
        .boxed()
}

#[async_trait]
impl PoolStore for KubePoolStore {
    fn watch(&self) -> BoxStream<'static, Result<PoolEvent, StoreError>> {
        let since = self.ready_since.clone();
        let pools = KindEvents {
            kind: POOL,
            one: Box::new(move |o| {
                remember_ready(&since, o);
                Some(PoolObject::Pool(lenient_pool(o)))
            }),
            all: pools_of,
        };
        let allocations = KindEvents {
            kind: ALLOCATION,
            one: Box::new(|o| {
                lenient(ALLOCATION, o, decode_allocation).map(PoolObject::Allocation)
            }),
            all: allocations_of,
        };
        let claims = KindEvents {
            kind: CLAIM,
            one: Box::new(|o| lenient(CLAIM, o, decode_claim).map(PoolObject::Claim)),
            all: claims_of,
        };
        futures::stream::select_all([
            kind_stream(self.pools.clone(), pools),
            kind_stream(self.allocations.clone(), allocations),
            kind_stream(self.claims.clone(), claims),
        ])
        .boxed()
    }

    async fn list_allocations(&self) -> Result<Vec<IpAllocation>, StoreError> {
        let list = self
            .allocations
            .list(&ListParams::default())
            .await
            .map_err(|e| api_err(ALLOCATION, "", e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| lenient(ALLOCATION, o, decode_allocation))
            .collect())
    }

    async fn list_claims(&self) -> Result<Vec<IpClaim>, StoreError> {
        let list = self
            .claims
            .list(&ListParams::default())
            .await
            .map_err(|e| api_err(CLAIM, "", e))?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| lenient(CLAIM, o, decode_claim))
            .collect())
    }

    async fn list_pools(&self) -> Result<Vec<IpPool>, StoreError> {
        let list = self
            .pools
            .list(&ListParams::default())
            .await
            .map_err(|e| api_err(POOL, "", e))?;
        Ok(list.items.iter().map(lenient_pool).collect())
    }

    async fn get_allocation(&self, name: &str) -> Result<Option<IpAllocation>, StoreError> {
        let o = self
            .allocations
            .get_opt(name)
            .await
            .map_err(|e| api_err(ALLOCATION, name, e))?;
        o.map(|o| decoded(ALLOCATION, &o, decode_allocation))
            .transpose()
    }

    async fn create_allocation(&self, a: &IpAllocation) -> Result<IpAllocation, StoreError> {
        let obj = allocation_object(&IpAllocation {
            resource_version: None,
            uid: String::new(),
            ..a.clone()
        })?;
        let created = self
            .allocations
            .create(&post_params(&self.manager), &obj)
            .await
            .map_err(|e| api_err(ALLOCATION, &a.name, e))?;
        decoded(ALLOCATION, &created, decode_allocation)
    }

    async fn replace_allocation(&self, a: &IpAllocation) -> Result<IpAllocation, StoreError> {
        if a.resource_version.is_none() {
            return Err(StoreError::Rejected {
                kind: ALLOCATION.into(),
                name: a.name.clone(),
                message: "a replace needs the resourceVersion read (its precondition)".into(),
            });
        }
        let replaced = self
            .allocations
            .replace(&a.name, &post_params(&self.manager), &allocation_object(a)?)
            .await
            .map_err(|e| api_err(ALLOCATION, &a.name, e))?;
        decoded(ALLOCATION, &replaced, decode_allocation)
    }

    async fn delete_allocation(&self, a: &IpAllocation) -> Result<bool, StoreError> {
        let rv = a.resource_version.as_deref();
        delete_with_uid(&self.allocations, ALLOCATION, &a.name, &a.uid, rv).await
    }

    async fn get_claim(&self, name: &str) -> Result<Option<IpClaim>, StoreError> {
        let o = self
            .claims
            .get_opt(name)
            .await
            .map_err(|e| api_err(CLAIM, name, e))?;
        o.map(|o| decoded(CLAIM, &o, decode_claim)).transpose()
    }

    async fn create_claim(&self, c: &IpClaim) -> Result<IpClaim, StoreError> {
        let created = self
            .claims
            .create(&post_params(&self.manager), &claim_object(c)?)
            .await
            .map_err(|e| api_err(CLAIM, &c.name, e))?;
        decoded(CLAIM, &created, decode_claim)
    }

    async fn delete_claim(&self, name: &str, uid: &str) -> Result<bool, StoreError> {
        delete_with_uid(&self.claims, CLAIM, name, uid, None).await
    }

    async fn set_pool_finalizer(&self, name: &str, present: bool) -> Result<(), StoreError> {
        if !present {
            return ignore_not_found(
                remove_finalizer(&self.pools, POOL, name, POOL_FINALIZER).await,
            );
        }
        let pool = self
            .pools
            .get(name)
            .await
            .map_err(|e| api_err(POOL, name, e))?;
        let rv = pool.metadata.resource_version.as_deref();
        let Some(patch) = add_finalizer_patch(pool.finalizers(), rv) else {
            return Ok(());
        };
        self.pools
            .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map(|_| ())
            .map_err(|e| api_err(POOL, name, e))
    }

    async fn apply_pool_status(&self, name: &str, status: &IpPoolStatus) -> Result<(), StoreError> {
        // Keep the transition time unless the condition's status flips.
        let known = self
            .ready_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        let since = known
            .filter(|(ready, _)| *ready == status.ready)
            .map(|(_, t)| t)
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        let pp = PatchParams::apply(&self.manager).force();
        let stored = self
            .pools
            .patch_status(
                name,
                &pp,
                &Patch::Apply(pool_status_body(name, status, since)),
            )
            .await
            .map_err(|e| api_err(POOL, name, e))?;
        remember_ready(&self.ready_since, &stored);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_kept_only_when_kubernetes_accepts_them() {
        assert_eq!(label_value("node-a.example"), Some("node-a.example"));
        assert_eq!(label_value(&"n".repeat(63)).map(str::len), Some(63));
        assert_eq!(label_value(&"n".repeat(64)), None);
        assert_eq!(label_value("-a"), None);
        assert_eq!(label_value(""), None);
        assert_eq!(label_value("a b"), None);
    }

    #[test]
    fn the_finalizer_patch_tests_what_it_read() {
        let p =
            serde_json::to_value(add_finalizer_patch(&["x".into()], Some("7")).unwrap()).unwrap();
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/metadata/finalizers", "value": ["x"]})
        );
        assert_eq!(p[1]["path"], "/metadata/finalizers/-");
        let p = serde_json::to_value(add_finalizer_patch(&[], Some("7")).unwrap()).unwrap();
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "7"})
        );
        assert!(add_finalizer_patch(&[POOL_FINALIZER.into()], Some("7")).is_none());
    }
}
