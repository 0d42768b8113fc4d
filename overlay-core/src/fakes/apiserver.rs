//! A scripted API server for the Kubernetes adapters, behaving like a real
//! kube-apiserver where it matters (see `../shared/kube/apiserver-facts.md`):
//!
//! - LISTs with a `resourceVersion` and field selectors on `metadata.name`;
//! - WATCHes as streams: ADDED, MODIFIED and DELETED events as objects
//!   change, BOOKMARKs, and a `410 Gone` error that forces a re-list;
//! - server-side apply that merges list-maps by key (`nodeStatus` by
//!   `hostname`, `conditions` by `type`, `routes` by `route`, `gateways` by
//!   `from`), records each field manager's fields in
//!   `metadata.managedFields`, and removes what a manager applied before and
//!   no longer applies (unless another manager owns it); guarded JSON
//!   patches that fail with 422 when a `test` fails, deletion held by
//!   finalizers;
//! - creates (POST) that refuse an existing name with 409 `AlreadyExists`
//!   and give the object a `uid` and a `creationTimestamp`; replaces (PUT)
//!   that refuse a stale resourceVersion or another uid with 409
//!   `Conflict` and keep what the server owns (uid, creation and deletion
//!   timestamps, and the status of a kind with a status subresource);
//!   deletes that honour `preconditions` (uid, resourceVersion: 409
//!   `Conflict`);
//! - writes validated against the CRD schema (422 `Invalid`), ratcheting
//!   errors the stored object already had, while objects stored "before
//!   validation existed" can be put in directly;
//! - an unreachable mode (connection refused) and held LISTs, for
//!   readiness;
//! - accounting for scale tests: write requests, the largest object per
//!   collection, and the bytes sent on each watch connection.
//!
//! Feature `apiserver`. Tests, benchmarks and `overlayctl lab --images`
//! (which serves it over HTTP to the images) use it.

mod schema;
pub use schema::validate_object;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

type RespBody = UnsyncBoxBody<Bytes, Infallible>;
type Chunk = Result<Frame<Bytes>, Infallible>;

/// One request the server saw (watches included).
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The `content-type` header (`""` when none).
    pub content_type: String,
    /// The body as JSON (`null` when empty or not JSON).
    pub body: Value,
}

struct Watcher {
    collection: String,
    name: Option<String>,
    tx: mpsc::UnboundedSender<Chunk>,
    /// Bytes of the events sent on this connection.
    sent: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    rv: u64,
    watchers: Vec<Watcher>,
    seen: Vec<Seen>,
    schemas: BTreeMap<String, Value>,
    unreachable: bool,
    /// Collections not served (their CRD is not installed): 404.
    not_served: std::collections::BTreeSet<String>,
    hold_lists: bool,
    held: Vec<(
        http::Uri,
        tower_test::mock::SendResponse<Response<RespBody>>,
    )>,
    /// `GET /version`'s `minor` (default 33).
    minor_version: Option<String>,
    /// Every watch connection ever opened: collection and bytes sent.
    watch_log: Vec<(String, Arc<AtomicU64>)>,
    /// The largest object stored, by collection (JSON bytes).
    max_size: BTreeMap<String, usize>,
}

/// The server; cheap to clone.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

/// The collection of Nodes.
pub const NODES: &str = "/api/v1/nodes";
/// The collection of NodeOverlayIps.
pub const NOIPS: &str = "/apis/iks.ibm.com/v1alpha1/nodeoverlayips";
/// The collection of StaticRoutes.
pub const ROUTES: &str = "/apis/iks.ibm.com/v1alpha1/staticroutes";
/// The collection of OverlayIPPools.
pub const POOLS: &str = "/apis/iks.ibm.com/v1alpha1/overlayippools";
/// The collection of OverlayIPAllocations.
pub const ALLOCATIONS: &str = "/apis/iks.ibm.com/v1alpha1/overlayipallocations";
/// The collection of OverlayIPClaims.
pub const CLAIMS: &str = "/apis/iks.ibm.com/v1alpha1/overlayipclaims";

/// The collection of ConfigMaps in namespace `ns`.
pub fn configmaps(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/configmaps")
}

/// `(collection, name, subresource)` of a request path.
fn split_path(path: &str) -> (String, Option<String>, Option<String>) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let prefix = if segs.first() == Some(&"api") { 2 } else { 3 };
    let mut rest = &segs[prefix.min(segs.len())..];
    let mut coll: Vec<&str> = segs[..prefix.min(segs.len())].to_vec();
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        coll.extend_from_slice(&rest[..3]);
        rest = &rest[3..];
    } else if let Some(r) = rest.first() {
        coll.push(r);
        rest = &rest[1..];
    }
    (
        format!("/{}", coll.join("/")),
        rest.first().map(|s| (*s).to_owned()),
        rest.get(1).map(|s| (*s).to_owned()),
    )
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3D", "=").replace("%2F", "/"))
    })
}

/// `GET /version`: Kubernetes 1.`minor` (default 1.33).
fn version(minor: Option<&str>) -> Response<RespBody> {
    let minor = minor.unwrap_or("33");
    Response::new(full(&json!({"major": "1", "minor": minor,
        "gitVersion": format!("v1.{minor}.0"), "gitCommit": "", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
        "platform": "linux/amd64"})))
}

/// A response with status `code` (500 if `code` is no HTTP status).
fn with_status(code: u16, body: RespBody) -> Response<RespBody> {
    let mut r = Response::new(body);
    *r.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn full(v: &Value) -> RespBody {
    Full::new(Bytes::from(v.to_string())).boxed_unsync()
}

fn status(code: u16, reason: &str, message: &str) -> Response<RespBody> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    with_status(code, full(&body))
}

/// What a real API server answers for a path of an API group no installed
/// CRD serves: 404 with a plain-text body, not a `Status` (kube turns it
/// into an API error with code 404 all the same).
fn not_served() -> Response<RespBody> {
    let mut r = with_status(
        404,
        Full::new(Bytes::from_static(b"404 page not found\n")).boxed_unsync(),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn event_bytes(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn event_line(type_: &str, object: &Value) -> Chunk {
    Ok(Frame::data(event_bytes(type_, object)))
}

/// The key of a list-map (`""`: a set of scalars) by field name.
fn list_key(field: &str) -> Option<&'static str> {
    match field {
        "nodeStatus" => Some("hostname"),
        "conditions" => Some("type"),
        "routes" => Some("route"),
        "gateways" => Some("from"),
        "finalizers" => Some(""),
        _ => None,
    }
}

/// The fields a server-side apply of `v` sets, in the API server's
/// `fieldsV1` form: `f:<field>` for map fields, `k:{"<key>":<value>}` for
/// list-map items, `v:<value>` for set items, `{}` for leaves.
fn field_set(v: &Value, key: Option<&str>, top: bool) -> Value {
    let mut out = Map::new();
    match (v, key) {
        (Value::Object(m), _) => {
            for (k, child) in m {
                if top && matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if k == "name" && key == Some("metadata") {
                    continue;
                }
                let child_key = if k == "metadata" {
                    Some("metadata")
                } else {
                    list_key(k)
                };
                out.insert(format!("f:{k}"), field_set(child, child_key, false));
            }
        }
        (Value::Array(items), Some("")) => {
            out.insert(".".into(), json!({}));
            for item in items {
                out.insert(format!("v:{item}"), json!({}));
            }
        }
        (Value::Array(items), Some(k)) if k != "metadata" => {
            out.insert(".".into(), json!({}));
            for item in items {
                let mut fields = field_set(item, None, false);
                fields["."] = json!({});
                out.insert(format!("k:{{\"{k}\":{}}}", item[k]), fields);
            }
        }
        _ => {}
    }
    Value::Object(out)
}

/// The child of `obj` a `fieldsV1` key names.
fn field_child<'a>(obj: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    if let Some(f) = key.strip_prefix("f:") {
        return obj.get_mut(f);
    }
    let items = obj.as_array_mut()?;
    if let Some(k) = key.strip_prefix("k:") {
        let want: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter_mut()
            .find(|i| want.iter().all(|(f, v)| i.get(f) == Some(v)));
    }
    let want: Value = serde_json::from_str(key.strip_prefix("v:")?).ok()?;
    items.iter_mut().find(|i| **i == want)
}

fn remove_field(obj: &mut Value, key: &str) {
    if let Some(f) = key.strip_prefix("f:") {
        if let Some(m) = obj.as_object_mut() {
            m.remove(f);
        }
        return;
    }
    let Some(items) = obj.as_array_mut() else {
        return;
    };
    if let Some(k) = key.strip_prefix("k:") {
        let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else {
            return;
        };
        items.retain(|i| !want.iter().all(|(f, v)| i.get(f) == Some(v)));
    } else if let Some(Ok(want)) = key.strip_prefix("v:").map(serde_json::from_str::<Value>) {
        items.retain(|i| *i != want);
    }
}

/// Server-side apply's removal: what `old` (a manager's fields before)
/// holds and `new` (its fields now) does not is removed from `obj`, unless
/// one of `others` (the other managers' fields) holds it too.
fn remove_dropped(obj: &mut Value, old: &Value, new: &Value, others: &[&Value]) {
    let Some(old) = old.as_object() else { return };
    for (k, old_child) in old {
        if k == "." {
            continue;
        }
        let theirs: Vec<&Value> = others.iter().filter_map(|o| o.get(k)).collect();
        match new.get(k) {
            Some(new_child) => {
                if let Some(child) = field_child(obj, k) {
                    remove_dropped(child, old_child, new_child, &theirs);
                }
            }
            None if theirs.is_empty() => remove_field(obj, k),
            None => {}
        }
    }
}

/// Drops from a `fieldsV1` set what `obj` no longer has (an update removed
/// it).
fn prune_fields(set: &mut Value, obj: &mut Value) {
    let Some(m) = set.as_object_mut() else { return };
    m.retain(|k, child| {
        if k == "." {
            return true;
        }
        match field_child(obj, k) {
            Some(o) => {
                prune_fields(child, o);
                true
            }
            None => false,
        }
    });
}

/// The SSA bookkeeping of `obj`: its `metadata.managedFields` entries.
fn managed_fields(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Applies `part` to `obj` as `manager` (on `subresource`): merges it,
/// removes what the manager applied before and no longer does, and records
/// the manager's fields in `metadata.managedFields`.
fn server_side_apply(obj: &mut Value, part: &Value, manager: &str, subresource: Option<&str>) {
    let new = field_set(part, None, true);
    let mut entries = managed_fields(obj);
    let pos = entries.iter().position(|e| {
        e["manager"] == manager
            && e["subresource"].as_str() == subresource
            && e["operation"] == "Apply"
    });
    let old = pos
        .map(|i| entries[i]["fieldsV1"].clone())
        .unwrap_or_else(|| json!({}));
    apply_merge(obj, part, None);
    let others: Vec<&Value> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != pos)
        .map(|(_, e)| &e["fieldsV1"])
        .collect();
    remove_dropped(obj, &old, &new, &others);
    let mut entry = json!({"manager": manager, "operation": "Apply",
        "apiVersion": obj["apiVersion"].as_str().unwrap_or("v1"),
        "time": "2026-11-27T12:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": new});
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
    }
    match pos {
        Some(i) => entries[i] = entry,
        None => entries.push(entry),
    }
    obj["metadata"]["managedFields"] = Value::Array(entries);
}

/// Merges `patch` into `base` the way server-side apply does for these
/// types: maps recursively, list-maps by key, finalizers as a set, other
/// lists replaced.
fn apply_merge(base: &mut Value, patch: &Value, key: Option<&str>) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) => apply_merge(existing, v, list_key(k)),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p)) if key.is_some() => {
            // The applied items in the applied order, then the others'.
            let key = key.unwrap_or_default();
            let same = |x: &Value, item: &Value| {
                if key.is_empty() {
                    x == item
                } else {
                    x.get(key) == item.get(key)
                }
            };
            let rest: Vec<Value> = b
                .iter()
                .filter(|x| !p.iter().any(|item| same(x, item)))
                .cloned()
                .collect();
            *b = p.iter().cloned().chain(rest).collect();
        }
        (b, p) => *b = p.clone(),
    }
}

impl FakeApiServer {
    /// A server validating writes to the CRD collections against the
    /// generated schemas, and a client talking to it.
    pub fn start() -> (Self, Client) {
        let server = Self::default();
        for crd in crate::crd::crds() {
            let plural = crd.spec.names.plural;
            let Some(schema) = crd.spec.versions.first().and_then(|v| {
                serde_json::to_value(v.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()
            }) else {
                continue;
            };
            server
                .lock()
                .schemas
                .insert(format!("/apis/iks.ibm.com/v1alpha1/{plural}"), schema);
        }
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
        let this = server.clone();
        tokio::spawn(async move {
            let mut handle = Box::pin(handle);
            while let Some((req, send)) = handle.next_request().await {
                this.serve(req, send).await;
            }
        });
        (server, Client::new(svc, "default"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A watch: events of `collection` (one object when `name` is set)
    /// from now on.
    fn watch(st: &mut State, collection: String, name: Option<String>) -> Response<RespBody> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = Arc::new(AtomicU64::new(0));
        st.watch_log.push((collection.clone(), sent.clone()));
        st.watchers.push(Watcher {
            collection,
            name,
            tx,
            sent,
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        Response::new(StreamBody::new(stream).boxed_unsync())
    }

    /// A PUT: Conflict on a stale resourceVersion or another object's uid,
    /// like a real server; the uid, the creation and deletion timestamps
    /// and (for a kind with a status subresource) the status stay as
    /// stored; the schema is checked.
    fn replace(st: &mut State, collection: &str, n: &str, body: Value) -> Response<RespBody> {
        let Some(cur) = st.objects.get(collection).and_then(|m| m.get(n)).cloned() else {
            return status(404, "NotFound", &format!("{n} not found"));
        };
        let sent = body["metadata"]["resourceVersion"].as_str();
        if sent.is_some_and(|v| Some(v) != cur["metadata"]["resourceVersion"].as_str()) {
            return status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {n}: the object has been modified; please apply your changes to the latest version and try again"
                ),
            );
        }
        if let Some(conflict) = uid_conflict(n, body["metadata"]["uid"].as_str(), &cur) {
            return conflict;
        }
        let mut obj = body;
        for kept in ["uid", "creationTimestamp", "deletionTimestamp"] {
            match cur["metadata"].get(kept) {
                Some(v) => obj["metadata"][kept] = v.clone(),
                None => {
                    if let Some(m) = obj["metadata"].as_object_mut() {
                        m.remove(kept);
                    }
                }
            }
        }
        if let Some(schema) = st.schemas.get(collection) {
            if schema["properties"].get("status").is_some() {
                match cur.get("status") {
                    Some(v) => obj["status"] = v.clone(),
                    None => {
                        if let Some(m) = obj.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            let errors = validate_object(schema, &obj);
            if !errors.is_empty() {
                return status(
                    422,
                    "Invalid",
                    &format!("{n} is invalid: {}", errors.join(", ")),
                );
            }
        }
        Self::store(st, collection, obj, false);
        let stored = st.objects[collection][n].clone();
        Response::new(full(&stored))
    }

    /// What the server sets on a new object: a uid and a creation time
    /// (whatever the client sent), one second apart per write.
    fn server_fields(st: &State, obj: &mut Value) {
        let created = std::time::UNIX_EPOCH + Duration::from_secs(1_795_000_000 + st.rv);
        obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", st.rv + 1));
        obj["metadata"]["creationTimestamp"] =
            json!(humantime::format_rfc3339_seconds(created).to_string());
    }

    async fn serve(
        &self,
        req: Request<Body>,
        send: tower_test::mock::SendResponse<Response<RespBody>>,
    ) {
        let uri = req.uri().clone();
        let method = req.method().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let path = uri.path().to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut st = self.lock();
        st.seen.push(Seen {
            method: method.clone(),
            uri: uri.to_string(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        if st.unreachable {
            drop(st);
            send.send_error(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "tcp connect error: Connection refused (os error 111)",
            ));
            return;
        }
        if path == "/version" {
            let response = version(st.minor_version.as_deref());
            drop(st);
            send.send_response(response);
            return;
        }
        let (collection, name, sub) = split_path(&path);
        if st.not_served.contains(&collection) {
            drop(st);
            send.send_response(not_served());
            return;
        }
        let watch = query(&uri, "watch").as_deref() == Some("true");
        let selected = query(&uri, "fieldSelector")
            .and_then(|s| s.strip_prefix("metadata.name=").map(str::to_owned));
        let response = match (method.as_str(), name) {
            ("GET", None) if watch => Self::watch(&mut st, collection, selected),
            ("GET", None) => {
                if st.hold_lists {
                    st.held.push((uri.clone(), send));
                    return;
                }
                Self::list(&st, &collection, selected.as_deref())
            }
            ("GET", Some(n)) => match st.objects.get(&collection).and_then(|m| m.get(&n)) {
                Some(o) => Response::new(full(o)),
                None => status(404, "NotFound", &format!("{n} not found")),
            },
            // Leases are created and replaced like a real server does:
            // AlreadyExists on a second create, Conflict on a replace with a
            // stale resourceVersion.
            ("POST", None) if !collection.ends_with("/events") => {
                Self::create(&mut st, &collection, body)
            }
            ("POST", _) => Response::new(full(&body)),
            ("PUT", Some(n)) => Self::replace(&mut st, &collection, &n, body),
            ("PATCH", Some(n)) => {
                let manager = query(&uri, "fieldManager").unwrap_or_default();
                let write = Write {
                    collection: &collection,
                    name: &n,
                    sub: sub.as_deref(),
                    manager: &manager,
                };
                Self::patch(&mut st, &write, &content_type, &body)
            }
            ("DELETE", Some(n)) => Self::delete(&mut st, &collection, &n, &body),
            _ => status(405, "MethodNotAllowed", "not scripted"),
        };
        drop(st);
        send.send_response(response);
    }

    fn list(st: &State, collection: &str, selected: Option<&str>) -> Response<RespBody> {
        let items: Vec<Value> = st
            .objects
            .get(collection)
            .map(|m| {
                m.iter()
                    .filter(|(n, _)| selected.is_none_or(|s| s == n.as_str()))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        let list = json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        Response::new(full(&list))
    }

    /// A create: 409 `AlreadyExists` when the name is taken, 422 when the
    /// schema refuses the object.
    fn create(st: &mut State, collection: &str, body: Value) -> Response<RespBody> {
        let n = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let resource = collection.rsplit('/').next().unwrap_or_default();
        if st
            .objects
            .get(collection)
            .is_some_and(|m| m.contains_key(&n))
        {
            return status(
                409,
                "AlreadyExists",
                &format!("{resource} \"{n}\" already exists"),
            );
        }
        if let Some(schema) = st.schemas.get(collection) {
            let errors = validate_object(schema, &body);
            if !errors.is_empty() {
                return status(
                    422,
                    "Invalid",
                    &format!("{n} is invalid: {}", errors.join(", ")),
                );
            }
        }
        let mut body = body;
        Self::server_fields(st, &mut body);
        Self::store(st, collection, body, true);
        let stored = st.objects[collection][&n].clone();
        with_status(201, full(&stored))
    }

    fn patch(
        st: &mut State,
        w: &Write<'_>,
        content_type: &str,
        body: &Value,
    ) -> Response<RespBody> {
        let (collection, name, sub) = (w.collection, w.name, w.sub);
        let current = st
            .objects
            .get(collection)
            .and_then(|m| m.get(name))
            .cloned();
        let mut obj = match (&current, content_type.contains("apply-patch")) {
            (Some(o), _) => o.clone(),
            (None, true) if sub.is_none() => {
                let mut o = json!({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": name}});
                Self::server_fields(st, &mut o);
                o
            }
            (None, _) => return status(404, "NotFound", &format!("{name} not found")),
        };
        if content_type.contains("apply-patch") {
            let part = if sub == Some("status") {
                json!({"status": body["status"]})
            } else {
                let mut b = body.clone();
                if let Some(m) = b.as_object_mut() {
                    m.remove("status");
                }
                b
            };
            server_side_apply(&mut obj, &part, w.manager, sub);
        } else if content_type.contains("json-patch") {
            let patch: json_patch::Patch = match serde_json::from_value(body.clone()) {
                Ok(p) => p,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            };
            if let Err(e) = json_patch::patch(&mut obj, &patch) {
                return status(
                    422,
                    "Invalid",
                    &format!(
                        "the server rejected our request due to an error in our request: {e} (test failed)"
                    ),
                );
            }
            // Fields an update removed belong to no manager any more.
            let mut entries = managed_fields(&obj);
            for e in &mut entries {
                prune_fields(&mut e["fieldsV1"], &mut obj);
            }
            if !entries.is_empty() {
                obj["metadata"]["managedFields"] = Value::Array(entries);
            }
        } else {
            return status(415, "UnsupportedMediaType", content_type);
        }
        if let Some(schema) = st.schemas.get(collection) {
            // Validation ratcheting (on by default since 1.30): an error the
            // stored object already had does not fail an update that leaves
            // that field alone.
            let before = current
                .as_ref()
                .map(|c| validate_object(schema, c))
                .unwrap_or_default();
            let errors: Vec<String> = validate_object(schema, &obj)
                .into_iter()
                .filter(|e| !before.contains(e))
                .collect();
            if !errors.is_empty() {
                return status(
                    422,
                    "Invalid",
                    &format!("{name} is invalid: {}", errors.join(", ")),
                );
            }
        }
        Self::store(st, collection, obj.clone(), current.is_none());
        Response::new(full(&obj))
    }

    /// A DELETE: 404 when gone, 409 `Conflict` when the `preconditions`
    /// of the DeleteOptions (uid, resourceVersion) do not hold; held by
    /// finalizers (marked deleting) or gone.
    fn delete(st: &mut State, collection: &str, name: &str, options: &Value) -> Response<RespBody> {
        let Some(mut obj) = st
            .objects
            .get(collection)
            .and_then(|m| m.get(name))
            .cloned()
        else {
            return status(404, "NotFound", &format!("{name} not found"));
        };
        let pre = &options["preconditions"];
        if let Some(conflict) = uid_conflict(name, pre["uid"].as_str(), &obj) {
            return conflict;
        }
        if let Some(rv) = pre["resourceVersion"].as_str()
            && Some(rv) != obj["metadata"]["resourceVersion"].as_str()
        {
            let stored = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            return status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {name}: Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {stored}"
                ),
            );
        }
        let held = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if held {
            obj["metadata"]["deletionTimestamp"] = json!("2026-11-27T12:00:00Z");
            Self::store(st, collection, obj.clone(), false);
        } else {
            Self::remove(st, collection, name);
        }
        Response::new(full(&obj))
    }

    fn notify(st: &mut State, collection: &str, name: &str, type_: &str, obj: &Value) {
        let line = event_bytes(type_, obj);
        st.watchers.retain(|w| {
            if w.collection != collection || w.name.as_deref().is_some_and(|n| n != name) {
                return !w.tx.is_closed();
            }
            w.sent.fetch_add(line.len() as u64, Ordering::Relaxed);
            w.tx.send(Ok(Frame::data(line.clone()))).is_ok()
        });
    }

    fn store(st: &mut State, collection: &str, mut obj: Value, created: bool) {
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // A deleting object whose last finalizer went is deleted.
        let gone = obj["metadata"].get("deletionTimestamp").is_some()
            && obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        if gone {
            Self::remove(st, collection, &name);
            return;
        }
        let size = serde_json::to_vec(&obj).map(|v| v.len()).unwrap_or(0);
        let max = st.max_size.entry(collection.to_owned()).or_default();
        *max = (*max).max(size);
        st.objects
            .entry(collection.to_owned())
            .or_default()
            .insert(name.clone(), obj.clone());
        let type_ = if created { "ADDED" } else { "MODIFIED" };
        Self::notify(st, collection, &name, type_, &obj);
    }

    fn remove(st: &mut State, collection: &str, name: &str) {
        if let Some(mut obj) = st.objects.get_mut(collection).and_then(|m| m.remove(name)) {
            st.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            Self::notify(st, collection, name, "DELETED", &obj);
        }
    }

    // --- what a test does to the server ---

    /// What `GET /version` answers as the minor version (e.g. "29").
    pub fn set_minor_version(&self, minor: &str) {
        self.lock().minor_version = Some(minor.to_owned());
    }

    /// Stores `obj` as it is, without validation (an object stored before
    /// the CRD validated it, or by another version), and tells watchers.
    pub fn put(&self, collection: &str, obj: Value) {
        let mut st = self.lock();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let created = !st
            .objects
            .get(collection)
            .is_some_and(|m| m.contains_key(&name));
        Self::store(&mut st, collection, obj, created);
    }

    /// Deletes an object outright (as the garbage collector would).
    pub fn remove_object(&self, collection: &str, name: &str) {
        Self::remove(&mut self.lock(), collection, name);
    }

    /// The object as stored.
    pub fn object(&self, collection: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(collection)?.get(name).cloned()
    }

    /// Every object of `collection`, as stored, by name.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .objects
            .get(collection)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends a BOOKMARK with the current resourceVersion to every watch.
    pub fn bookmark(&self) {
        let mut st = self.lock();
        let rv = st.rv.to_string();
        st.watchers.retain(|w| {
            let obj = json!({"apiVersion": "v1", "kind": "Bookmark", "metadata": {"resourceVersion": rv}});
            w.tx.send(event_line("BOOKMARK", &obj)).is_ok()
        });
    }

    /// Ends every watch with `410 Gone` (the resourceVersion expired), as
    /// the API server does after compaction: clients must list again.
    pub fn expire_watches(&self) {
        let mut st = self.lock();
        for w in st.watchers.drain(..) {
            let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1 (2)", "reason": "Expired", "code": 410});
            let _ = w.tx.send(event_line("ERROR", &gone));
        }
    }

    /// Stops (`false`) or starts (`true`) serving `collection`, as
    /// deleting or installing its CRD does: while not served, every request
    /// to it answers 404 and its watches end.
    pub fn serve_collection(&self, collection: &str, on: bool) {
        let mut st = self.lock();
        if on {
            st.not_served.remove(collection);
        } else {
            st.not_served.insert(collection.to_owned());
            st.watchers.retain(|w| w.collection != collection);
        }
    }

    /// Refuses connections (true) or serves again (false).
    pub fn set_unreachable(&self, on: bool) {
        let mut st = self.lock();
        st.unreachable = on;
        if on {
            // Open watches break, like TCP connections to a dead server.
            st.watchers.clear();
        }
    }

    /// Holds LIST requests unanswered (true); false answers the held ones.
    pub fn hold_lists(&self, on: bool) {
        let held = {
            let mut st = self.lock();
            st.hold_lists = on;
            if on {
                return;
            }
            std::mem::take(&mut st.held)
        };
        for (uri, send) in held {
            let (collection, _, _) = split_path(uri.path());
            let selected = query(&uri, "fieldSelector")
                .and_then(|s| s.strip_prefix("metadata.name=").map(str::to_owned));
            let response = Self::list(&self.lock(), &collection, selected.as_deref());
            send.send_response(response);
        }
    }

    /// Open watches on `collection`.
    pub fn watchers(&self, collection: &str) -> usize {
        self.lock()
            .watchers
            .iter()
            .filter(|w| w.collection == collection && !w.tx.is_closed())
            .count()
    }

    /// Waits up to 10 s until `collection` has at least `n` open
    /// watches; false when it has not.
    #[must_use = "false: the watches were not opened in time"]
    pub async fn wait_for_watchers(&self, collection: &str, n: usize) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.watchers(collection) < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The requests with `method` whose URI contains `needle`.
    pub fn requests(&self, method: &str, needle: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.uri.contains(needle))
            .collect()
    }

    /// Write requests (POST, PUT, PATCH, DELETE) so far; objects put in
    /// directly by a test do not count.
    pub fn writes(&self) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| matches!(s.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
            .count()
    }

    /// The largest object ever stored in `collection`, in JSON bytes (as a
    /// watch or GET carries it, managedFields included).
    pub fn max_object_bytes(&self, collection: &str) -> usize {
        self.lock().max_size.get(collection).copied().unwrap_or(0)
    }

    /// The bytes sent on each watch connection ever opened on
    /// `collection`, in the order they were opened.
    pub fn watch_bytes(&self, collection: &str) -> Vec<u64> {
        self.lock()
            .watch_log
            .iter()
            .filter(|(c, _)| c == collection)
            .map(|(_, b)| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops validating writes to `collection` (a CRD of an earlier
    /// version, whose bounds differ).
    pub fn without_validation(&self, collection: &str) {
        self.lock().schemas.remove(collection);
    }

    /// Forgets the requests seen so far (a scale test's setup).
    pub fn forget_requests(&self) {
        self.lock().seen.clear();
    }

    /// The first request with `method` whose URI contains `needle`.
    pub fn find(&self, method: &str, needle: &str) -> Seen {
        self.requests(method, needle)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {method} {needle} in {:#?}", self.seen()))
    }
}

/// The 409 a real server answers when a precondition's uid (a DELETE's, or
/// the `metadata.uid` of a PUT) is not the stored object's.
fn uid_conflict(name: &str, uid: Option<&str>, stored: &Value) -> Option<Response<RespBody>> {
    let theirs = stored["metadata"]["uid"].as_str().unwrap_or_default();
    let uid = uid.filter(|u| *u != theirs)?;
    Some(status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {name}: Precondition failed: UID in precondition: {uid}, UID in object meta: {theirs}"
        ),
    ))
}

/// One write's target and writer.
struct Write<'a> {
    collection: &'a str,
    name: &'a str,
    sub: Option<&'a str>,
    manager: &'a str,
}
