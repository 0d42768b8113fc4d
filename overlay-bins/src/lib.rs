//! Shared plumbing of the overlay binaries: logging, signals, the
//! health/metrics HTTP server and the Kubernetes client. No reconcile logic
//! lives here (that is in `overlay-core`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub mod install;
#[cfg(feature = "lab")]
pub mod lab;
pub mod migrate;
pub mod status;
pub mod stores;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use overlay_core::metrics::prometheus::PrometheusMetrics;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// The log filter when `RUST_LOG` is unset: `info`, without kube's line per
/// failed HTTP request (overlay logs each failure itself, naming the API
/// server, and a streak of them once a minute).
pub const DEFAULT_LOG_FILTER: &str = "info,kube_client::client::builder=off";

/// Initialises `tracing` from `RUST_LOG` (default [`DEFAULT_LOG_FILTER`]).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A failed run of a binary: what to print and the exit status.
#[derive(Debug)]
pub struct Exit {
    /// Exit status.
    pub code: u8,
    /// Message (printed after the program name).
    pub message: String,
}

impl From<String> for Exit {
    fn from(message: String) -> Self {
        Self { code: 1, message }
    }
}

/// Runs `fut` on a multi-threaded runtime and turns its result into the
/// process's exit status, printing `program: message` on failure.
pub fn block_on_main(
    program: &str,
    fut: impl std::future::Future<Output = Result<(), Exit>>,
) -> std::process::ExitCode {
    finish(program, tokio::runtime::Runtime::new(), fut)
}

/// [`block_on_main`] on a single-threaded runtime: for the node agent,
/// whose work is small and whose memory counts on every node (a runtime
/// sized by the node's cores would start one worker thread, stack and
/// allocator arena per core).
pub fn block_on_main_single_thread(
    program: &str,
    fut: impl std::future::Future<Output = Result<(), Exit>>,
) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build();
    finish(program, rt, fut)
}

fn finish(
    program: &str,
    rt: std::io::Result<tokio::runtime::Runtime>,
    fut: impl std::future::Future<Output = Result<(), Exit>>,
) -> std::process::ExitCode {
    let result = match rt {
        Ok(rt) => rt.block_on(fut),
        Err(e) => Err(Exit::from(format!("starting the runtime: {e}"))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {}", e.message);
            std::process::ExitCode::from(e.code)
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What `/readyz` asks.
pub type ReadyFn = Arc<dyn Fn() -> bool + Send + Sync>;

/// The health and metrics router: `/healthz` (process is up), `/readyz`
/// (`ready()` is true), `/metrics` (OpenMetrics text of `metrics`).
pub fn health_router(ready: ReadyFn, metrics: Arc<PrometheusMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                        .into_response()
                }
            }),
        )
}

/// Binds `addr` and serves the health router in the background. Binding
/// errors are returned right away (a taken port is reported at start).
pub async fn serve_health(
    addr: SocketAddr,
    ready: ReadyFn,
    metrics: Arc<PrometheusMetrics>,
) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} for /healthz, /readyz and /metrics: {e}; pick another address with --metrics-addr (or `off`)")
    })?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let app = health_router(ready, metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(local)
}

/// Parses `--metrics-addr`: an address, or `off`.
pub fn parse_metrics_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!("invalid --metrics-addr {s:?}: expected HOST:PORT such as 0.0.0.0:9877, or `off`")
    })
}

/// A Kubernetes client from `--kubeconfig`, else `KUBECONFIG`/`~/.kube/config`,
/// else the in-cluster service account. A request that gets no answer fails
/// naming the server and the OS error (`request to the Kubernetes API server
/// https://10.0.0.1:6443 failed: … Connection refused (os error 111)`), in
/// every log line, status message and watch error that carries it.
pub async fn kube_client(kubeconfig: Option<PathBuf>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no Kubernetes configuration (in-cluster, KUBECONFIG or ~/.kube/config): {e}")
        })?,
    };
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/').to_owned();
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| format!("building the Kubernetes client for {server}: {e}"))?;
    let name_the_server =
        tower::util::MapErrLayer::new(move |e: tower::BoxError| -> tower::BoxError {
            Box::new(Unreachable {
                server: server.clone(),
                cause: overlay_core::k8s::error_chain(&*e),
            })
        });
    Ok(builder.with_layer(&name_the_server).build())
}

/// A request to the API server that got no answer, naming the server.
#[derive(Debug)]
struct Unreachable {
    server: String,
    cause: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request to the Kubernetes API server {} failed: {}",
            self.server, self.cause
        )
    }
}

impl std::error::Error for Unreachable {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_endpoints_answer() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ready.clone();
        let m = PrometheusMetrics::controller();
        overlay_core::metrics::Metrics::record(
            &m,
            overlay_core::metrics::Measurement::ControllerReconciled {
                object: "node",
                ok: true,
            },
        );
        let addr = serve_health(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || r.load(std::sync::atomic::Ordering::SeqCst)),
            Arc::new(m),
        )
        .await
        .unwrap();
        let get = |path: &str| {
            let path = path.to_owned();
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(
            metrics
                .contains("overlay_controller_reconciles_total{object=\"node\",result=\"ok\"} 1"),
            "{metrics}"
        );
    }

    #[test]
    fn metrics_addr_can_be_turned_off() {
        assert_eq!(parse_metrics_addr("off").unwrap(), None);
        assert!(parse_metrics_addr("0.0.0.0:9877").unwrap().is_some());
        assert!(
            parse_metrics_addr("9877")
                .unwrap_err()
                .contains("HOST:PORT")
        );
    }
}
