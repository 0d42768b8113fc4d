//! Kubernetes adapters of the traits (feature `kube`): nodes, the
//! NodeOverlayIp and StaticRoute stores, Events, and the legacy
//! `static-routes` ConfigMap.
//!
//! Reads come from reflector caches fed by watches (one LIST + WATCH per
//! kind, never a GET per reconcile); writes are server-side apply under
//! each writer's own field manager, and finalizer removal is a guarded JSON
//! patch (`test` then `replace`), so a concurrent writer makes the patch
//! fail instead of being overwritten.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{ConfigMap, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::crd::{NodeOverlayIp, NodeStatusEntry, StaticRoute};
use crate::error::StoreError;
use crate::events::{Event, EventRecorder, EventType};
use crate::model::NodeInfo;
use crate::parse::Cidr;
use crate::traits::{
    AgentStatus, LegacyRouteSource, NodeRouteStatus, NodeSource, OverlayIpMeta, OverlayIpRecord,
    OverlayIpStore, StaticRouteRecord, StaticRouteStore, StoreEvent,
};

/// Field manager of the controller's writes.
pub const CONTROLLER_MANAGER: &str = "overlay-controller";
/// Field manager of the agents' NodeOverlayIp status writes.
pub const AGENT_MANAGER: &str = "overlay-agent";

/// The per-node field manager an agent uses for its StaticRoute status
/// entry (`overlay-agent/<node>`, at most 128 characters).
pub fn node_field_manager(node: &str) -> String {
    let mut m = format!("{AGENT_MANAGER}/{node}");
    m.truncate(128);
    m
}

const API_VERSION: &str = "iks.ibm.com/v1alpha1";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn api_err(kind: &str, name: &str, e: kube::Error) -> StoreError {
    let (kind, name) = (kind.to_owned(), name.to_owned());
    match &e {
        kube::Error::Api(s) if s.code == 404 => StoreError::NotFound { kind, name },
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
            message: other.to_string(),
        },
    }
}

fn ignore_not_found(r: Result<(), StoreError>) -> Result<(), StoreError> {
    match r {
        Err(StoreError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// A reflector cache of one kind plus a broadcast of its changes, mapped to
/// records.
struct Reflected<K: Resource<DynamicType = ()> + Clone + 'static, R> {
    kind: &'static str,
    store: Store<K>,
    tx: broadcast::Sender<Result<StoreEvent<R>, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K, R> Drop for Reflected<K, R>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K, R> Reflected<K, R>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    R: Clone + Send + 'static,
{
    fn start(api: Api<K>, cfg: watcher::Config, kind: &'static str, map: fn(&K) -> R) -> Self {
        let (store, writer) = reflector::store();
        let (tx, _) = broadcast::channel(16_384);
        let sender = tx.clone();
        let reader = store.clone();
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, cfg).default_backoff().reflect(writer).boxed();
            while let Some(ev) = stream.next().await {
                let out = match ev {
                    Ok(watcher::Event::Apply(o)) => Ok(StoreEvent::Applied(map(&o))),
                    Ok(watcher::Event::Delete(o)) => Ok(StoreEvent::Deleted(o.name_any())),
                    Ok(watcher::Event::InitDone) => Ok(StoreEvent::Restarted(
                        reader.state().iter().map(|o| map(o)).collect(),
                    )),
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(kind, error = %e, "watch failed; retrying with backoff");
                        Err(StoreError::Unavailable {
                            kind: kind.into(),
                            name: String::new(),
                            message: e.to_string(),
                        })
                    }
                };
                let _ = sender.send(out);
            }
        });
        Self {
            kind,
            store,
            tx,
            task,
        }
    }

    async fn ready(&self) -> Result<(), StoreError> {
        match tokio::time::timeout(READY_TIMEOUT, self.store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(StoreError::Unavailable {
                kind: self.kind.into(),
                name: String::new(),
                message: "the initial list from the API server has not completed".into(),
            }),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Arc<K>>, StoreError> {
        self.ready().await?;
        Ok(self.store.get(&reflector::ObjectRef::new(name)))
    }

    async fn list(&self) -> Result<Vec<Arc<K>>, StoreError> {
        self.ready().await?;
        Ok(self.store.state())
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<R>, StoreError>> {
        futures::stream::unfold(self.tx.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(StoreError::Unavailable {
                        kind: "watch".into(),
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
    let ips = n
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse::<IpAddr>().ok())
        .collect();
    let mut info = NodeInfo::from_labels(n.name_any(), n.labels().clone(), ips);
    info.uid = n.metadata.uid.clone();
    info
}

/// Nodes from the API server.
pub struct KubeNodes {
    cache: Reflected<Node, NodeInfo>,
}

impl KubeNodes {
    /// Watches all nodes (controller), or one node by name (agent: a
    /// field selector on `metadata.name`).
    pub fn new(client: Client, only: Option<&str>) -> Self {
        let mut cfg = watcher::Config::default();
        if let Some(name) = only {
            cfg = cfg.fields(&format!("metadata.name={name}"));
        }
        Self {
            cache: Reflected::start(Api::all(client), cfg, "Node", node_info),
        }
    }
}

#[async_trait]
impl NodeSource for KubeNodes {
    async fn list(&self) -> Result<Vec<NodeInfo>, StoreError> {
        Ok(self
            .cache
            .list()
            .await?
            .iter()
            .map(|n| node_info(n))
            .collect())
    }

    async fn get(&self, name: &str) -> Result<Option<NodeInfo>, StoreError> {
        Ok(self.cache.get(name).await?.map(|n| node_info(&n)))
    }

    fn watch(&self) -> BoxStream<'static, Result<StoreEvent<NodeInfo>, StoreError>> {
        self.cache.watch()
    }
}

fn overlay_record(o: &NodeOverlayIp) -> OverlayIpRecord {
    OverlayIpRecord::from(o)
}

/// NodeOverlayIps in the API server.
pub struct KubeOverlayIps {
    api: Api<NodeOverlayIp>,
    cache: Reflected<NodeOverlayIp, OverlayIpRecord>,
}

impl KubeOverlayIps {
    /// All NodeOverlayIps (controller), or only the one named `only` (agent).
    pub fn new(client: Client, only: Option<&str>) -> Self {
        let api: Api<NodeOverlayIp> = Api::all(client);
        let mut cfg = watcher::Config::default();
        if let Some(name) = only {
            cfg = cfg.fields(&format!("metadata.name={name}"));
        }
        Self {
            cache: Reflected::start(api.clone(), cfg, "NodeOverlayIp", overlay_record),
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
/// condition), never `ipAddr`/`gateway`. `since` is the condition's
/// lastTransitionTime.
pub fn agent_status_body(name: &str, s: &AgentStatus, since: Time) -> serde_json::Value {
    let cond = Condition {
        type_: "Configured".into(),
        status: if s.configured { "True" } else { "False" }.into(),
        reason: s.reason.clone(),
        message: s.message.clone(),
        last_transition_time: since,
        observed_generation: None,
    };
    json!({
        "apiVersion": API_VERSION, "kind": "NodeOverlayIp", "metadata": {"name": name},
        "status": {"interface": s.interface, "interfaceLabel": s.interface_label, "conditions": [cond]},
    })
}

/// The server-side apply body of one node's StaticRoute status entry.
pub fn node_status_body(name: &str, s: &NodeRouteStatus) -> serde_json::Value {
    json!({
        "apiVersion": API_VERSION, "kind": "StaticRoute", "metadata": {"name": name},
        "status": {"nodeStatus": [NodeStatusEntry::from(s)]},
    })
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

async fn remove_finalizer<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    finalizer: &str,
) -> Result<(), StoreError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
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

#[async_trait]
impl OverlayIpStore for KubeOverlayIps {
    async fn get(&self, name: &str) -> Result<Option<OverlayIpRecord>, StoreError> {
        Ok(self.cache.get(name).await?.map(|o| overlay_record(&o)))
    }

    async fn list(&self) -> Result<Vec<OverlayIpRecord>, StoreError> {
        Ok(self
            .cache
            .list()
            .await?
            .iter()
            .map(|o| overlay_record(o))
            .collect())
    }

    async fn ensure(&self, meta: &OverlayIpMeta) -> Result<OverlayIpRecord, StoreError> {
        let pp = PatchParams::apply(CONTROLLER_MANAGER).force();
        let o = self
            .api
            .patch(&meta.name, &pp, &Patch::Apply(overlay_ip_apply_body(meta)))
            .await
            .map_err(|e| api_err("NodeOverlayIp", &meta.name, e))?;
        Ok(overlay_record(&o))
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
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let since = self
            .cache
            .get(name)
            .await
            .ok()
            .flatten()
            .and_then(|o| {
                o.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "Configured")
                    .cloned()
            })
            .filter(|c| (c.status == "True") == s.configured)
            .map(|c| c.last_transition_time)
            .unwrap_or(now);
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

fn route_record(r: &StaticRoute) -> StaticRouteRecord {
    StaticRouteRecord::from(r)
}

/// StaticRoutes in the API server.
pub struct KubeStaticRoutes {
    api: Api<StaticRoute>,
    cache: Reflected<StaticRoute, StaticRouteRecord>,
    field_manager: String,
}

impl KubeStaticRoutes {
    /// StaticRoutes, written under `field_manager` (the controller's, or an
    /// agent's per-node manager from [`node_field_manager`]).
    pub fn new(client: Client, field_manager: String) -> Self {
        let api: Api<StaticRoute> = Api::all(client);
        Self {
            cache: Reflected::start(
                api.clone(),
                watcher::Config::default(),
                "StaticRoute",
                route_record,
            ),
            api,
            field_manager,
        }
    }
}

#[async_trait]
impl StaticRouteStore for KubeStaticRoutes {
    async fn list(&self) -> Result<Vec<StaticRouteRecord>, StoreError> {
        Ok(self
            .cache
            .list()
            .await?
            .iter()
            .map(|r| route_record(r))
            .collect())
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

    async fn set_node_status(&self, name: &str, s: &NodeRouteStatus) -> Result<(), StoreError> {
        let pp = PatchParams::apply(&self.field_manager).force();
        self.api
            .patch_status(name, &pp, &Patch::Apply(node_status_body(name, s)))
            .await
            .map(|_| ())
            .map_err(|e| api_err("StaticRoute", name, e))
    }

    async fn remove_node_status(&self, name: &str, hostnames: &[String]) -> Result<(), StoreError> {
        let Some(obj) = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| api_err("StaticRoute", name, e))?
        else {
            return Ok(());
        };
        let entries = obj.status.map(|s| s.node_status).unwrap_or_default();
        let mut ops = Vec::new();
        for (i, e) in entries.iter().enumerate().rev() {
            if hostnames.contains(&e.hostname) {
                let path = format!("/status/nodeStatus/{i}");
                ops.push(
                    json!({"op": "test", "path": format!("{path}/hostname"), "value": e.hostname}),
                );
                ops.push(json!({"op": "remove", "path": path}));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
            .map_err(|e| StoreError::Rejected {
                kind: "StaticRoute".into(),
                name: name.into(),
                message: e.to_string(),
            })?;
        ignore_not_found(
            self.api
                .patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await
                .map(|_| ())
                .map_err(|e| api_err("StaticRoute", name, e)),
        )
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
    /// A recorder reporting as `controller` (e.g. `overlay-controller`).
    pub fn new(client: Client, controller: &str) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: controller.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: kube::runtime::events::Recorder::new(client, reporter),
        }
    }
}

#[async_trait]
impl EventRecorder for KubeEvents {
    async fn record(&self, ev: Event) {
        let (api_version, uid) = match ev.kind.as_str() {
            "Node" => ("v1", None),
            _ => (API_VERSION, None::<String>),
        };
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(ev.kind.clone()),
            name: Some(ev.name.clone()),
            uid,
            ..Default::default()
        };
        let kev = kube::runtime::events::Event {
            type_: match ev.type_ {
                EventType::Normal => kube::runtime::events::EventType::Normal,
                EventType::Warning => kube::runtime::events::EventType::Warning,
            },
            reason: ev.reason.clone(),
            note: Some(ev.message.clone()),
            action: ev.reason.clone(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&kev, &reference).await {
            warn!(kind = %ev.kind, name = %ev.name, reason = %ev.reason, error = %e, "publishing event failed");
        }
    }
}

/// The legacy `static-routes` ConfigMap read through the API (RBAC can be
/// limited to that one object: the watch is field-selected by name).
pub struct KubeConfigMapRoutes {
    api: Api<ConfigMap>,
    name: String,
    tx: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeConfigMapRoutes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeConfigMapRoutes {
    /// Reads ConfigMap `name` (usually `static-routes`) in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let (tx, _) = broadcast::channel(64);
        let sender = tx.clone();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let w = api.clone();
        let task = tokio::spawn(async move {
            let mut s = watcher(w, cfg).default_backoff().boxed();
            while let Some(ev) = s.next().await {
                if let Err(e) = &ev {
                    debug!(error = %e, "static-routes watch error");
                }
                let _ = sender.send(());
            }
        });
        Self {
            api,
            name: name.to_owned(),
            tx,
            task,
        }
    }
}

#[async_trait]
impl LegacyRouteSource for KubeConfigMapRoutes {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        let cm = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_err("ConfigMap", &self.name, e))?;
        let Some(cm) = cm else {
            // No ConfigMap: no legacy routes.
            return Ok(Vec::new());
        };
        let json = cm
            .data
            .as_ref()
            .and_then(|d| d.get("routes"))
            .map(String::as_str)
            .unwrap_or("[]");
        crate::agent::parse_legacy_routes(json).map_err(|e| StoreError::Rejected {
            kind: "ConfigMap".into(),
            name: self.name.clone(),
            message: e.to_string(),
        })
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

/// The legacy route list from a mounted file (the ConfigMap's `routes` key
/// projected as a file), re-read when it changes (checked every `period`).
pub struct FileRoutes {
    path: std::path::PathBuf,
    period: Duration,
}

impl FileRoutes {
    /// Reads `path`, checking for changes every `period`.
    pub fn new(path: impl Into<std::path::PathBuf>, period: Duration) -> Self {
        Self {
            path: path.into(),
            period,
        }
    }
}

#[async_trait]
impl LegacyRouteSource for FileRoutes {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        let name = self.path.display().to_string();
        let text =
            tokio::fs::read_to_string(&self.path)
                .await
                .map_err(|e| StoreError::Unavailable {
                    kind: "file".into(),
                    name: name.clone(),
                    message: e.to_string(),
                })?;
        crate::agent::parse_legacy_routes(&text).map_err(|e| StoreError::Rejected {
            kind: "file".into(),
            name,
            message: e.to_string(),
        })
    }

    fn changes(&self) -> BoxStream<'static, ()> {
        let path = self.path.clone();
        let period = self.period;
        let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        futures::stream::unfold(
            (path.clone(), stamp(&path)),
            move |(path, last)| async move {
                loop {
                    tokio::time::sleep(period).await;
                    let now = stamp(&path);
                    if now != last {
                        return Some(((), (path, now)));
                    }
                }
            },
        )
        .boxed()
    }
}
