//! overlay-core's scripted API server (`overlay_core::fakes::apiserver`:
//! lists, watches, server-side apply, finalizers, CRD validation) served
//! over plain HTTP, so that a binary in a container reaches it with a
//! kubeconfig: each request is handed to the server through a
//! `kube::Client` (`Client::send`, a raw request) and its response,
//! watches included, streamed back. `overlayctl lab --images` and the
//! image tests use it.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use overlay_core::fakes::apiserver::FakeApiServer;

/// The scripted API server on a TCP socket; stops serving when dropped.
pub struct Api {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server, to put objects in and read them.
    pub server: FakeApiServer,
    /// A client talking to it in this process, without HTTP.
    pub client: kube::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Api {
    /// Serves a fresh scripted API server on `addr`. The socket is opened
    /// by the calling thread: inside a network namespace, it is served
    /// there.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let (server, client) = FakeApiServer::start();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(forward).with_state(client.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            server,
            client,
            task,
        })
    }
}

async fn forward(State(client): State<kube::Client>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "unreadable body").into_response();
    };
    let mut out = axum::http::Request::builder()
        .method(parts.method)
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (k, v) in &parts.headers {
        out = out.header(k, v);
    }
    let Ok(out) = out.body(kube::client::Body::from(bytes.to_vec())) else {
        return (StatusCode::BAD_REQUEST, "bad request").into_response();
    };
    match client.send(out).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// A kubeconfig for `server` (e.g. `http://198.51.100.1:PORT`), with a
/// placeholder token.
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {{server: \"{server}\"}}\nusers:\n- name: lab\n  user: {{token: not-a-secret}}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: lab}}\ncurrent-context: lab\n"
    )
}

/// Node `name` in `zone` with InternalIP `ip`, as the API server holds it.
pub fn node(name: &str, zone: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": format!("uid-{name}"),
            "labels": {
                "topology.kubernetes.io/zone": zone,
                "topology.kubernetes.io/region": "lab",
                "kubernetes.io/hostname": name,
            },
        },
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    })
}
