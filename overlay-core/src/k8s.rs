//! Kubernetes adapters of the traits (feature `kube`): nodes, the
//! NodeOverlayIp and StaticRoute stores, Events, the legacy
//! `static-routes` ConfigMap, and the Kubernetes-native IPAM's pools,
//! allocations and claims ([`KubePoolStore`]).
//!
//! Reads come from caches fed by watches (one LIST + WATCH per kind, never a
//! GET per reconcile); writes are server-side apply under each writer's own
//! field manager, and finalizer removal is a guarded JSON patch (`test` then
//! `replace`), so a concurrent writer makes the patch fail instead of being
//! overwritten.
//!
//! Watches wake their consumers only for changes that matter to them: a
//! StaticRoute's spec, deletion or finalizers (not its status, which the
//! controller rewrites as nodes report), a Node's [`NodeInfo`] (not the
//! kubelet's heartbeats), and, for an agent, a NodeOverlayIp's changes
//! other than the agent's own status ([`OverlayIpChanges`]). The caches
//! behind `list`/`get` always hold the latest objects.
//!
//! Every object is read as a `DynamicObject` and converted field by field
//! ([`crate::crd::decode_static_route`], [`crate::crd::decode_node_overlay_ip`]):
//! one object that does not convert (stored before validation, or by
//! another version) is reported through [`InvalidObjects`] and never fails
//! the list or watch of the others.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeAddress, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

mod pools;
pub use pools::KubePoolStore;

use crate::crd::{
    CONFIGURED_CONDITION, KnownGatewayEntry, MAX_COUNT, MAX_KNOWN_GATEWAYS, MAX_ROUTE_REPORTS,
    MESSAGE_MAX_LEN, NodeOverlayIp, NodeStatusEntry, RouteReportEntry, StaticRoute,
    decode_node_overlay_ip, decode_static_route, read, truncate_message,
};
use crate::error::StoreError;
use crate::events::{Event, EventRecorder, EventType};
use crate::invalid::{FieldProblem, InvalidObjects};
use crate::model::NodeInfo;
use crate::parse::Cidr;
use crate::repeats::Repeats;
use crate::traits::{
    AgentStatus, LegacyRouteSource, NodeSource, OverlayIpMeta, OverlayIpRecord, OverlayIpStore,
    RouteSummary, StaticRouteRecord, StaticRouteStore, StoreEvent,
};

/// Field manager of the controller's writes.
pub const CONTROLLER_MANAGER: &str = "overlay-controller";
/// Field manager of the agents' NodeOverlayIp status writes.
pub const AGENT_MANAGER: &str = "overlay-agent";

/// The per-node field manager the original agents used for their
/// StaticRoute status entry (`overlay-agent/<node>`, at most 128
/// characters). Agents no longer write StaticRoutes (their reports go into
/// their own NodeOverlayIp); a [`KubeStaticRoutes`] built with it only
/// reads.
pub fn node_field_manager(node: &str) -> String {
    let mut m = format!("{AGENT_MANAGER}/{node}");
    m.truncate(128);
    m
}

const API_VERSION: &str = "iks.ibm.com/v1alpha1";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A failing watch logs its error at most this often.
const ERROR_LOG_PERIOD: Duration = Duration::from_secs(60);

fn api_err(kind: &str, name: &str, e: kube::Error) -> StoreError {
    let (kind, name) = (kind.to_owned(), name.to_owned());
    match &e {
        kube::Error::Api(s) if s.code == 404 => StoreError::NotFound { kind, name },
        // The two 409s differ only by reason.
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
            StoreError::AlreadyExists { kind, name }
        }
        kube::Error::Api(s) if s.code == 409 || s.code == 422 && s.message.contains("test") => {
            StoreError::Conflict {
                kind,
                name,
                message: s.message.clone(),
            }
        }
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => StoreError::Unavailable {
            kind,
            name,
            message: s.message.clone(),
        },
        kube::Error::Api(s) => StoreError::Rejected {
            kind,
            name,
            message: format!("{} ({})", s.message, s.code),
        },
        other => StoreError::Unavailable {
            kind,
            name,
            message: error_chain(other),
        },
    }
}

/// An error with its sources (`ServiceError: …: Connection refused (os
/// error 111)`), so that a connection failure says why.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn ignore_not_found(r: Result<(), StoreError>) -> Result<(), StoreError> {
    match r {
        Err(StoreError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// A cluster-wide API of kind `K`, read and written as `DynamicObject`s so
/// that an object that does not fit `K` is still read (and reported).
fn dynamic_api<K: Resource<DynamicType = ()>>(client: Client) -> Api<DynamicObject> {
    Api::all_with(client, &ApiResource::erase::<K>(&()))
}

/// Converts a raw object into a record, with the first problem found.
type Decode<R> = fn(&DynamicObject) -> (R, Option<FieldProblem>);

/// Whether an update (old entry, new entry) is worth an event. A filtered
/// update still refreshes the cache.
type Significant<R> = fn(&Entry<R>, &Entry<R>) -> bool;

fn any_change<R>(_: &Entry<R>, _: &Entry<R>) -> bool {
    true
}

/// A Node changed what overlay reads of it (labels, uid, addresses), not
/// just the kubelet's heartbeat.
fn node_info_changed(old: &Entry<NodeInfo>, new: &Entry<NodeInfo>) -> bool {
    old.record != new.record
}

/// A StaticRoute's spec, zone label, deletion or finalizers changed; a
/// status-only write (the controller's summary) is not worth an event.
fn route_spec_changed(old: &Entry<StaticRouteRecord>, new: &Entry<StaticRouteRecord>) -> bool {
    let (a, b) = (&old.raw, &new.raw);
    a.data.get("spec") != b.data.get("spec")
        || crate::crd::route_zone(&a.metadata) != crate::crd::route_zone(&b.metadata)
        || a.metadata.deletion_timestamp != b.metadata.deletion_timestamp
        || a.metadata.finalizers != b.metadata.finalizers
}

/// A NodeOverlayIp changed in more than its agent-owned status.
fn overlay_ip_changed_besides_agent(
    old: &Entry<OverlayIpRecord>,
    new: &Entry<OverlayIpRecord>,
) -> bool {
    let strip = |r: &OverlayIpRecord| OverlayIpRecord {
        agent: None,
        ..r.clone()
    };
    strip(&old.record) != strip(&new.record)
}

/// How far a cache's list has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// The initial list has not completed.
    Pending,
    /// Listed: the cache holds what the API server has.
    Done,
    /// The API server answered 404 for the collection: the kind is not
    /// served (its CRD is not installed). The watch keeps retrying, and the
    /// cache becomes `Done` once the kind is served.
    NotServed,
}

/// True when a watch failed because the API server does not serve the
/// collection at all (404 on the list or watch: the CRD is not installed).
fn is_not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// A failed list or watch: logged (at most once per [`ERROR_LOG_PERIOD`]),
/// a 404 marks the kind as not served, and the error for the subscribers.
fn watch_failed(
    kind: &'static str,
    e: &watcher::Error,
    errors: &Repeats,
    listed: &watch::Sender<Listed>,
) -> StoreError {
    let message = error_chain(e);
    let not_served = is_not_served(e);
    if not_served {
        let _ = listed.send(Listed::NotServed);
    }
    if let Some(repeats) = errors.failure() {
        if not_served {
            warn!(kind, error = %message, repeats, "the API server does not serve this kind (is its CRD installed?); retrying with backoff");
        } else {
            warn!(kind, error = %message, repeats, "watch failed; retrying with backoff (routes and addresses in place are kept)");
        }
    }
    StoreError::Unavailable {
        kind: kind.into(),
        name: String::new(),
        message,
    }
}

/// One cached object: as the API server sent it, and as a record.
struct Entry<R> {
    raw: Arc<DynamicObject>,
    record: R,
}

type Entries<R> = Arc<RwLock<BTreeMap<String, Arc<Entry<R>>>>>;

/// A cache of one kind fed by a watch, plus a broadcast of its changes as
/// records.
struct Cache<R> {
    kind: &'static str,
    entries: Entries<R>,
    ready: watch::Receiver<Listed>,
    tx: broadcast::Sender<Result<StoreEvent<R>, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl<R> Drop for Cache<R> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read_entries<R>(
    e: &Entries<R>,
) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Entry<R>>>> {
    e.read().unwrap_or_else(|p| p.into_inner())
}

fn write_entries<R>(
    e: &Entries<R>,
) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Entry<R>>>> {
    e.write().unwrap_or_else(|p| p.into_inner())
}

impl<R: Clone + Send + Sync + 'static> Cache<R> {
    fn start(
        api: Api<DynamicObject>,
        cfg: watcher::Config,
        kind: &'static str,
        (decode, significant): (Decode<R>, Significant<R>),
        invalid: InvalidObjects,
    ) -> Self {
        let entries: Entries<R> = Arc::default();
        let (ready_tx, ready) = watch::channel(Listed::Pending);
        let (tx, _) = broadcast::channel(16_384);
        let sender = tx.clone();
        let cache = entries.clone();
        let task = tokio::spawn(async move {
            let entry = |o: DynamicObject| {
                let (record, problem) = decode(&o);
                let name = o.name_any();
                invalid.observe(kind, &name, problem.as_ref());
                (
                    name,
                    Arc::new(Entry {
                        raw: Arc::new(o),
                        record,
                    }),
                )
            };
            let errors = Repeats::new(ERROR_LOG_PERIOD);
            let mut stream = watcher(api, cfg).default_backoff().boxed();
            let mut buffer: BTreeMap<String, Arc<Entry<R>>> = BTreeMap::new();
            while let Some(ev) = stream.next().await {
                let out = match ev {
                    Ok(watcher::Event::Init) => {
                        buffer.clear();
                        continue;
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        let (name, e) = entry(o);
                        buffer.insert(name, e);
                        continue;
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(n) = errors.success() {
                            info!(kind, failures = n, "watch recovered");
                        }
                        let all = std::mem::take(&mut buffer);
                        let names: HashSet<String> = all.keys().cloned().collect();
                        invalid.retain(kind, &names);
                        let records = all.values().map(|e| e.record.clone()).collect();
                        *write_entries(&cache) = all;
                        let _ = ready_tx.send(Listed::Done);
                        Ok(StoreEvent::Restarted(records))
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        let (name, e) = entry(o);
                        let old = write_entries(&cache).insert(name, e.clone());
                        if old.is_some_and(|old| !significant(&old, &e)) {
                            continue;
                        }
                        Ok(StoreEvent::Applied(e.record.clone()))
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        let name = o.name_any();
                        write_entries(&cache).remove(&name);
                        invalid.forget(kind, &name);
                        Ok(StoreEvent::Deleted(name))
                    }
                    Err(e) => Err(watch_failed(kind, &e, &errors, &ready_tx)),
                };
                let _ = sender.send(out);
            }
        });
        Self {
            kind,
            entries,
            ready,
            tx,
            task,
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let mut ready = self.ready.clone();
        let listed = tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r != Listed::Pending))
            .await
            .map(|r| r.map(|l| *l));
        match listed {
            Ok(Ok(Listed::Done)) => Ok(()),
            Ok(Ok(Listed::NotServed)) => Err(StoreError::not_served(self.kind)),
            _ => Err(StoreError::Unavailable {
                kind: self.kind.into(),
                name: String::new(),
                message: "the initial list from the API server has not completed".into(),
            }),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Arc<Entry<R>>>, StoreError> {
        self.ready().await?;
        Ok(read_entries(&self.entries).get(name).cloned())
    }

    async fn list(&self) -> Result<Vec<R>, StoreError> {
        self.ready().await?;
        Ok(read_entries(&self.entries)
            .values()
            .map(|e| e.record.clone())
            .collect())
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<R>, StoreError>> {
        let kind = self.kind;
        futures::stream::unfold(self.tx.subscribe(), move |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(StoreError::Unavailable {
                        kind: kind.into(),
                        name: String::new(),
                        message: format!("lagged by {n} events; relist"),
                    }),
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }
}

/// Converts a Node into [`NodeInfo`].
pub fn node_info(n: &Node) -> NodeInfo {
    let addresses = n.status.iter().flat_map(|s| s.addresses.iter().flatten());
    node_from_parts(&n.metadata, addresses)
}

fn node_from_parts<'a>(
    meta: &kube::core::ObjectMeta,
    addresses: impl Iterator<Item = &'a NodeAddress>,
) -> NodeInfo {
    let ips = addresses
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .collect();
    let name = meta.name.clone().unwrap_or_default();
    let mut info = NodeInfo::from_labels(name, meta.labels.clone().unwrap_or_default(), ips);
    info.uid = meta.uid.clone();
    info
}

/// Reads a Node leniently: name, uid and labels always; addresses that do
/// not convert are left out and reported.
fn decode_node(o: &DynamicObject) -> (NodeInfo, Option<FieldProblem>) {
    let addresses = o.data.get("status").and_then(|s| s.get("addresses"));
    let (addresses, problem) = match read::<Vec<NodeAddress>>(addresses, "status.addresses") {
        Ok(a) => (a.unwrap_or_default(), None),
        Err(p) => (Vec::new(), Some(p)),
    };
    (node_from_parts(&o.metadata, addresses.iter()), problem)
}

/// A watch configuration, field-selected to one object by name.
fn watch_config(only: Option<&str>) -> watcher::Config {
    let cfg = watcher::Config::default();
    match only {
        Some(name) => cfg.fields(&format!("metadata.name={name}")),
        None => cfg,
    }
}

/// Nodes from the API server.
pub struct KubeNodes {
    api: Api<DynamicObject>,
    cache: Cache<NodeInfo>,
}

impl KubeNodes {
    /// Watches all nodes (controller), or one node by name (agent: a
    /// field selector on `metadata.name`).
    pub fn new(client: Client, only: Option<&str>, invalid: InvalidObjects) -> Self {
        let api = dynamic_api::<Node>(client);
        Self {
            api: api.clone(),
            cache: Cache::start(
                api,
                watch_config(only),
                "Node",
                (decode_node, node_info_changed),
                invalid,
            ),
        }
    }
}

#[async_trait]
impl NodeSource for KubeNodes {
    async fn list(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.cache.list().await
    }

    async fn get(&self, name: &str) -> Result<Option<NodeInfo>, StoreError> {
        Ok(self.cache.get(name).await?.map(|e| e.record.clone()))
    }

    async fn get_live(&self, name: &str) -> Result<Option<NodeInfo>, StoreError> {
        let obj = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| api_err("Node", name, e))?;
        // A Node that does not convert still exists: what matters here is
        // only whether it does.
        Ok(obj.map(|o| decode_node(&o).0))
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<NodeInfo>, StoreError>> {
        self.cache.watch()
    }
}

/// Which changes of a NodeOverlayIp its watch reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OverlayIpChanges {
    /// Every change (the controller, which sums up the agents' route
    /// reports).
    #[default]
    All,
    /// Every change except those of the agent-owned status (interface,
    /// condition, route reports, gateways): an agent, whose own status
    /// writes must not wake it. It reads its status back from the cache,
    /// which follows every change.
    IgnoreAgentStatus,
}

/// NodeOverlayIps in the API server.
pub struct KubeOverlayIps {
    api: Api<DynamicObject>,
    cache: Cache<OverlayIpRecord>,
}

impl KubeOverlayIps {
    /// All NodeOverlayIps (controller), or only the one named `only`,
    /// reporting every change.
    pub fn new(client: Client, only: Option<&str>, invalid: InvalidObjects) -> Self {
        Self::with_changes(client, only, OverlayIpChanges::All, invalid)
    }

    /// All NodeOverlayIps, or only the one named `only`, whose watch
    /// reports `changes`: an agent passes its node and
    /// [`OverlayIpChanges::IgnoreAgentStatus`].
    pub fn with_changes(
        client: Client,
        only: Option<&str>,
        changes: OverlayIpChanges,
        invalid: InvalidObjects,
    ) -> Self {
        let api = dynamic_api::<NodeOverlayIp>(client);
        let significant: Significant<OverlayIpRecord> = match changes {
            OverlayIpChanges::All => any_change,
            OverlayIpChanges::IgnoreAgentStatus => overlay_ip_changed_besides_agent,
        };
        Self {
            cache: Cache::start(
                api.clone(),
                watch_config(only),
                "NodeOverlayIp",
                (decode_node_overlay_ip, significant),
                invalid,
            ),
            api,
        }
    }
}

/// The server-side apply body the controller writes for a NodeOverlayIp's
/// metadata.
pub fn overlay_ip_apply_body(meta: &OverlayIpMeta) -> serde_json::Value {
    let mut metadata = json!({
        "name": meta.name,
        "labels": meta.labels,
        "finalizers": [crate::FINALIZER],
    });
    if let Some(uid) = &meta.owner_uid {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "v1",
            "kind": "Node",
            "name": meta.name,
            "uid": uid,
        }]);
    }
    json!({"apiVersion": API_VERSION, "kind": "NodeOverlayIp", "metadata": metadata})
}

/// The server-side apply body of the controller's NodeOverlayIp status.
pub fn overlay_ip_status_body(
    name: &str,
    ip: IpNetwork,
    gateway: Option<IpAddr>,
) -> serde_json::Value {
    let mut status = json!({"ipAddr": ip.to_string()});
    if let Some(g) = gateway {
        status["gateway"] = json!(g.to_string());
    }
    json!({"apiVersion": API_VERSION, "kind": "NodeOverlayIp", "metadata": {"name": name}, "status": status})
}

/// The server-side apply body of an agent's NodeOverlayIp status: only the
/// agent's fields (`interface`, `interfaceLabel`, the `Configured`
/// condition, the route reports `routes` and the discovered `gateways`),
/// never `ipAddr`/`gateway`. `since` is the condition's
/// lastTransitionTime. Messages are cut to what the CRD allows; both lists
/// are always sent (an empty one clears the agent's earlier entries), one
/// entry per key (the first), sorted, at most [`MAX_ROUTE_REPORTS`] and
/// [`MAX_KNOWN_GATEWAYS`].
pub fn agent_status_body(name: &str, s: &AgentStatus, since: Time) -> serde_json::Value {
    let cond = Condition {
        type_: CONFIGURED_CONDITION.into(),
        status: if s.configured { "True" } else { "False" }.into(),
        reason: s.reason.clone(),
        message: truncate_message(&s.message, MESSAGE_MAX_LEN),
        last_transition_time: since,
        observed_generation: None,
    };
    json!({
        "apiVersion": API_VERSION, "kind": "NodeOverlayIp", "metadata": {"name": name},
        "status": {"interface": s.interface, "interfaceLabel": s.interface_label, "conditions": [cond],
            "routes": route_entries(s), "gateways": gateway_entries(s)},
    })
}

/// The agent's route reports as list-map entries: one per route, by name.
fn route_entries(s: &AgentStatus) -> Vec<RouteReportEntry> {
    let mut by_route: BTreeMap<&str, RouteReportEntry> = BTreeMap::new();
    for r in &s.routes {
        by_route
            .entry(r.route.as_str())
            .or_insert_with(|| RouteReportEntry::from(r));
    }
    by_route.into_values().take(MAX_ROUTE_REPORTS).collect()
}

/// The agent's known gateways as list-map entries: one per prefix.
fn gateway_entries(s: &AgentStatus) -> Vec<KnownGatewayEntry> {
    let mut by_from: BTreeMap<String, KnownGatewayEntry> = BTreeMap::new();
    for g in &s.gateways {
        by_from
            .entry(g.from.to_string())
            .or_insert_with(|| KnownGatewayEntry::from(g));
    }
    by_from.into_values().take(MAX_KNOWN_GATEWAYS).collect()
}

/// The server-side apply body of the controller's StaticRoute status: the
/// counts and `nodeStatus` (always sent, so that entries left out are
/// removed; at most [`RouteSummary::MAX_NODE_STATUS`]).
pub fn route_summary_body(name: &str, s: &RouteSummary) -> serde_json::Value {
    let entries: Vec<NodeStatusEntry> = s
        .node_status
        .iter()
        .take(RouteSummary::MAX_NODE_STATUS)
        .map(NodeStatusEntry::from)
        .collect();
    json!({
        "apiVersion": API_VERSION, "kind": "StaticRoute", "metadata": {"name": name},
        "status": {"applied": s.applied.min(MAX_COUNT), "failed": s.failed.min(MAX_COUNT),
            "pending": s.pending.min(MAX_COUNT), "nodeStatus": entries},
    })
}

/// The hostnames of a `nodeStatus` list.
fn hostnames(v: Option<&serde_json::Value>) -> BTreeSet<&str> {
    v.and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("hostname")?.as_str())
        .collect()
}

/// When `stored` (the object after the controller's apply) carries
/// `nodeStatus` entries the apply did not (written by the original agents,
/// each under its own field manager, which an apply does not remove): a
/// guarded JSON patch that replaces the list by `ours`. `None` otherwise.
pub fn foreign_entries_patch(
    stored: &serde_json::Value,
    ours: &serde_json::Value,
) -> Option<json_patch::Patch> {
    let theirs = stored.get("status").and_then(|s| s.get("nodeStatus"))?;
    if hostnames(Some(theirs)).is_subset(&hostnames(Some(ours))) {
        return None;
    }
    serde_json::from_value(json!([
        {"op": "test", "path": "/status/nodeStatus", "value": theirs},
        {"op": "replace", "path": "/status/nodeStatus", "value": ours},
    ]))
    .ok()
}

/// A guarded JSON patch that removes `finalizer` from `current`: it fails
/// (HTTP 422) when someone changed the list meanwhile. `None` when absent.
pub fn remove_finalizer_patch(current: &[String], finalizer: &str) -> Option<json_patch::Patch> {
    if !current.iter().any(|f| f == finalizer) {
        return None;
    }
    let rest: Vec<&String> = current.iter().filter(|f| *f != finalizer).collect();
    let ops = if rest.is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "remove", "path": "/metadata/finalizers"},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": rest},
        ])
    };
    serde_json::from_value(ops).ok()
}

async fn remove_finalizer(
    api: &Api<DynamicObject>,
    kind: &str,
    name: &str,
    finalizer: &str,
) -> Result<(), StoreError> {
    let obj = match api
        .get_opt(name)
        .await
        .map_err(|e| api_err(kind, name, e))?
    {
        Some(o) => o,
        None => return Ok(()),
    };
    let Some(patch) = remove_finalizer_patch(obj.finalizers(), finalizer) else {
        return Ok(());
    };
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
        .map_err(|e| api_err(kind, name, e))
}

/// The `Configured` condition's transition time in a cached object, if its
/// status equals `configured` (read leniently: a malformed list has none).
fn configured_since(raw: &DynamicObject, configured: bool) -> Option<Time> {
    let conditions = raw.data.get("status").and_then(|s| s.get("conditions"));
    read::<Vec<Condition>>(conditions, "status.conditions")
        .ok()
        .flatten()?
        .into_iter()
        .find(|c| c.type_ == CONFIGURED_CONDITION && (c.status == "True") == configured)
        .map(|c| c.last_transition_time)
}

#[async_trait]
impl OverlayIpStore for KubeOverlayIps {
    async fn get(&self, name: &str) -> Result<Option<OverlayIpRecord>, StoreError> {
        Ok(self.cache.get(name).await?.map(|e| e.record.clone()))
    }

    async fn list(&self) -> Result<Vec<OverlayIpRecord>, StoreError> {
        self.cache.list().await
    }

    async fn ensure(&self, meta: &OverlayIpMeta) -> Result<OverlayIpRecord, StoreError> {
        let pp = PatchParams::apply(CONTROLLER_MANAGER).force();
        let o = self
            .api
            .patch(&meta.name, &pp, &Patch::Apply(overlay_ip_apply_body(meta)))
            .await
            .map_err(|e| api_err("NodeOverlayIp", &meta.name, e))?;
        Ok(decode_node_overlay_ip(&o).0)
    }

    async fn set_address(
        &self,
        name: &str,
        ip: IpNetwork,
        gateway: Option<IpAddr>,
    ) -> Result<(), StoreError> {
        let pp = PatchParams::apply(CONTROLLER_MANAGER).force();
        self.api
            .patch_status(
                name,
                &pp,
                &Patch::Apply(overlay_ip_status_body(name, ip, gateway)),
            )
            .await
            .map(|_| ())
            .map_err(|e| api_err("NodeOverlayIp", name, e))
    }

    async fn set_agent_status(&self, name: &str, s: &AgentStatus) -> Result<(), StoreError> {
        // Keep the transition time unless the condition's status flips.
        let since = self
            .cache
            .get(name)
            .await
            .ok()
            .flatten()
            .and_then(|e| configured_since(&e.raw, s.configured))
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        let pp = PatchParams::apply(AGENT_MANAGER).force();
        self.api
            .patch_status(name, &pp, &Patch::Apply(agent_status_body(name, s, since)))
            .await
            .map(|_| ())
            .map_err(|e| api_err("NodeOverlayIp", name, e))
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        ignore_not_found(
            self.api
                .delete(name, &DeleteParams::background())
                .await
                .map(|_| ())
                .map_err(|e| api_err("NodeOverlayIp", name, e)),
        )
    }

    async fn remove_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError> {
        ignore_not_found(remove_finalizer(&self.api, "NodeOverlayIp", name, finalizer).await)
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<OverlayIpRecord>, StoreError>> {
        self.cache.watch()
    }
}

/// StaticRoutes in the API server.
pub struct KubeStaticRoutes {
    api: Api<DynamicObject>,
    cache: Cache<StaticRouteRecord>,
    field_manager: String,
}

impl KubeStaticRoutes {
    /// StaticRoutes, written under `field_manager` (the controller's). The
    /// watch reports changes of spec, deletion and finalizers only; an agent
    /// only reads (whatever manager it passes).
    pub fn new(client: Client, field_manager: String, invalid: InvalidObjects) -> Self {
        let api = dynamic_api::<StaticRoute>(client);
        Self {
            cache: Cache::start(
                api.clone(),
                watcher::Config::default(),
                "StaticRoute",
                (decode_static_route, route_spec_changed),
                invalid,
            ),
            api,
            field_manager,
        }
    }
}

#[async_trait]
impl StaticRouteStore for KubeStaticRoutes {
    async fn list(&self) -> Result<Vec<StaticRouteRecord>, StoreError> {
        self.cache.list().await
    }

    async fn add_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError> {
        let body = json!({"apiVersion": API_VERSION, "kind": "StaticRoute",
            "metadata": {"name": name, "finalizers": [finalizer]}});
        let pp = PatchParams::apply(&self.field_manager).force();
        self.api
            .patch(name, &pp, &Patch::Apply(body))
            .await
            .map(|_| ())
            .map_err(|e| api_err("StaticRoute", name, e))
    }

    async fn remove_finalizer(&self, name: &str, finalizer: &str) -> Result<(), StoreError> {
        ignore_not_found(remove_finalizer(&self.api, "StaticRoute", name, finalizer).await)
    }

    async fn set_summary(&self, name: &str, summary: &RouteSummary) -> Result<(), StoreError> {
        let pp = PatchParams::apply(&self.field_manager).force();
        let body = route_summary_body(name, summary);
        let stored = self
            .api
            .patch_status(name, &pp, &Patch::Apply(&body))
            .await
            .map_err(|e| api_err("StaticRoute", name, e))?;
        let Some(patch) = foreign_entries_patch(&stored.data, &body["status"]["nodeStatus"]) else {
            return Ok(());
        };
        info!(
            route = name,
            "removing nodeStatus entries the original agents wrote"
        );
        self.api
            .patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map(|_| ())
            .map_err(|e| api_err("StaticRoute", name, e))
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<StaticRouteRecord>, StoreError>> {
        self.cache.watch()
    }
}

/// Kubernetes Events (events.k8s.io/v1) through kube-runtime's recorder,
/// which aggregates repeats into series. Events for cluster-scoped objects
/// land in the `default` namespace.
pub struct KubeEvents {
    recorder: kube::runtime::events::Recorder,
}

impl KubeEvents {
    /// A recorder reporting as `controller` (e.g. `overlay-controller`),
    /// instance `POD_NAME` when set.
    pub fn new(client: Client, controller: &str) -> Self {
        Self::with_instance(client, controller, std::env::var("POD_NAME").ok())
    }

    /// A recorder reporting as `controller`, instance `instance` (an agent
    /// reports its node name).
    pub fn with_instance(client: Client, controller: &str, instance: Option<String>) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: controller.into(),
            instance,
        };
        Self {
            recorder: kube::runtime::events::Recorder::new(client, reporter),
        }
    }
}

#[async_trait]
impl EventRecorder for KubeEvents {
    async fn record(&self, ev: Event) {
        let api_version = match ev.kind.as_str() {
            "Node" | "ConfigMap" | "Pod" => "v1",
            _ => API_VERSION,
        };
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(ev.kind.clone()),
            name: Some(ev.name.clone()),
            namespace: ev.namespace.clone(),
            ..Default::default()
        };
        let kev = kube::runtime::events::Event {
            type_: match ev.type_ {
                EventType::Normal => kube::runtime::events::EventType::Normal,
                EventType::Warning => kube::runtime::events::EventType::Warning,
            },
            reason: ev.reason.clone(),
            note: Some(truncate_message(&ev.message, MESSAGE_MAX_LEN)),
            action: ev.reason.clone(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&kev, &reference).await {
            warn!(kind = %ev.kind, name = %ev.name, reason = %ev.reason, error = %error_chain(&e), "publishing event failed");
        }
    }
}

/// The legacy `static-routes` ConfigMap read through the API (RBAC can be
/// limited to that one object: the watch is field-selected by name).
pub struct KubeConfigMapRoutes {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    invalid: InvalidObjects,
    tx: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeConfigMapRoutes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeConfigMapRoutes {
    /// Reads ConfigMap `name` (usually `static-routes`) in `namespace`; a
    /// malformed `routes` list is reported through `invalid`.
    pub fn new(client: Client, namespace: &str, name: &str, invalid: InvalidObjects) -> Self {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let (tx, _) = broadcast::channel(64);
        let sender = tx.clone();
        let cfg = watch_config(Some(name));
        let w = api.clone();
        let task = tokio::spawn(async move {
            let errors = Repeats::new(ERROR_LOG_PERIOD);
            let mut s = watcher(w, cfg).default_backoff().boxed();
            while let Some(ev) = s.next().await {
                match &ev {
                    Err(e) => {
                        if let Some(repeats) = errors.failure() {
                            warn!(kind = "ConfigMap", error = %error_chain(e), repeats, "static-routes watch failed; keeping the last good list");
                        }
                    }
                    Ok(_) => {
                        if let Some(n) = errors.success() {
                            info!(
                                kind = "ConfigMap",
                                failures = n,
                                "static-routes watch recovered"
                            );
                        }
                    }
                }
                let _ = sender.send(());
            }
        });
        Self {
            api,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            invalid,
            tx,
            task,
        }
    }
}

#[async_trait]
impl LegacyRouteSource for KubeConfigMapRoutes {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        self.routes().await.map(|l| l.subnets)
    }

    /// The list, with entries that are not subnets skipped and reported
    /// (log, Warning Event on the ConfigMap naming them, gauge); a `routes`
    /// value that is not a JSON array rejects the list.
    async fn routes(&self) -> Result<crate::legacy::LegacyRoutes, StoreError> {
        let cm = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_err("ConfigMap", &self.name, e))?;
        let id = format!("{}/{}", self.namespace, self.name);
        // A ConfigMap that is gone, or has lost its key, is unreadable, not
        // an empty list: the agent keeps the last good routes.
        let Some(cm) = cm else {
            return Err(StoreError::Unavailable {
                kind: "ConfigMap".into(),
                name: id,
                message: "it does not exist (deleted?); recreate it with key `routes` (a JSON array of subnets; `[]` for none)".into(),
            });
        };
        let Some(json) = cm.data.as_ref().and_then(|d| d.get("routes")) else {
            let problem = FieldProblem::new(
                "data.routes",
                "missing: the agent keeps the last good routes",
            );
            self.invalid.observe("ConfigMap", &id, Some(&problem));
            return Err(StoreError::Rejected {
                kind: "ConfigMap".into(),
                name: id,
                message:
                    "it has no key `routes`; set it to a JSON array of subnets (`[]` for none)"
                        .into(),
            });
        };
        match crate::legacy::parse_legacy_list(json) {
            Ok(list) => {
                let problem = list.field_problem("data.routes");
                self.invalid.observe("ConfigMap", &id, problem.as_ref());
                Ok(list)
            }
            Err(e) => {
                let problem = FieldProblem::new(
                    format!("data.{}", e.field),
                    format!("{:?}: {}", e.value, e.reason),
                );
                self.invalid.observe("ConfigMap", &id, Some(&problem));
                Err(StoreError::Rejected {
                    kind: "ConfigMap".into(),
                    name: id,
                    message: e.to_string(),
                })
            }
        }
    }

    fn changes(&self) -> BoxStream<'static, ()> {
        futures::stream::unfold(self.tx.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }
}

/// The UID of the `kube-system` Namespace: a stable id of the cluster,
/// unique across clusters, that survives controller restarts (but not a
/// rebuild of the cluster). The controller uses it as its cluster id when
/// none is configured.
pub async fn cluster_uid(client: Client) -> Result<String, StoreError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let ns = api
        .get("kube-system")
        .await
        .map_err(|e| api_err("Namespace", "kube-system", e))?;
    ns.metadata
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| StoreError::Rejected {
            kind: "Namespace".into(),
            name: "kube-system".into(),
            message: "the API server returned no metadata.uid; set clusterId in the config".into(),
        })
}

/// Annotation on the controller's Lease naming the cluster id it writes
/// into IPAM owner markers (read by `overlayctl status`).
pub const CLUSTER_ID_ANNOTATION: &str = "overlay.iks.ibm.com/cluster-id";

/// A `coordination.k8s.io/v1` Lease as a [`crate::leader::LeaseStore`].
pub struct KubeLease {
    api: Api<k8s_openapi::api::coordination::v1::Lease>,
    namespace: String,
    name: String,
    annotations: BTreeMap<String, String>,
}

impl KubeLease {
    /// The Lease `namespace/name`; `annotations` are written with every
    /// update (e.g. [`CLUSTER_ID_ANNOTATION`]).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            annotations,
        }
    }

    fn to_object(
        &self,
        r: &crate::leader::LeaseRecord,
    ) -> k8s_openapi::api::coordination::v1::Lease {
        use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let micro = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
                .map(MicroTime)
        };
        let mut lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: r.holder.clone(),
                lease_duration_seconds: Some(
                    i32::try_from(r.lease_duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time: micro(r.acquire_time),
                renew_time: micro(r.renew_time),
                lease_transitions: Some(r.transitions),
                ..Default::default()
            }),
            ..Default::default()
        };
        lease.metadata.name = Some(self.name.clone());
        lease.metadata.namespace = Some(self.namespace.clone());
        if !r.version.is_empty() {
            lease.metadata.resource_version = Some(r.version.clone());
        }
        if !self.annotations.is_empty() {
            lease.metadata.annotations = Some(self.annotations.clone());
        }
        lease
    }
}

fn lease_record(l: &k8s_openapi::api::coordination::v1::Lease) -> crate::leader::LeaseRecord {
    let spec = l.spec.clone().unwrap_or_default();
    let wall = |t: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>| {
        t.map(|t| std::time::SystemTime::from(t.0))
    };
    crate::leader::LeaseRecord {
        holder: spec.holder_identity,
        lease_duration: Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
        ),
        acquire_time: wall(spec.acquire_time),
        renew_time: wall(spec.renew_time),
        transitions: spec.lease_transitions.unwrap_or(0),
        version: l.metadata.resource_version.clone().unwrap_or_default(),
    }
}

#[async_trait]
impl crate::leader::LeaseStore for KubeLease {
    fn describe(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }

    async fn get(&self) -> Result<Option<crate::leader::LeaseRecord>, StoreError> {
        let l = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_err("Lease", &self.name, e))?;
        Ok(l.as_ref().map(lease_record))
    }

    async fn create(
        &self,
        record: &crate::leader::LeaseRecord,
    ) -> Result<crate::leader::LeaseRecord, StoreError> {
        let l = self
            .api
            .create(&Default::default(), &self.to_object(record))
            .await
            .map_err(|e| api_err("Lease", &self.name, e))?;
        Ok(lease_record(&l))
    }

    async fn update(
        &self,
        record: &crate::leader::LeaseRecord,
    ) -> Result<crate::leader::LeaseRecord, StoreError> {
        // A replace carrying the resourceVersion read: the API server
        // answers 409 Conflict if anyone wrote in between.
        let l = self
            .api
            .replace(&self.name, &Default::default(), &self.to_object(record))
            .await
            .map_err(|e| api_err("Lease", &self.name, e))?;
        Ok(lease_record(&l))
    }
}
