//! `overlay-controller`: gives every node an overlay IP from the IPAM and
//! takes it back when the node goes. One active replica (Lease-based leader
//! election); standbys wait.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use futures::future::BoxFuture;
use overlay_bins::stores::{
    controller_events, controller_lease, controller_stores, ipam_login_blocked_event,
};
use overlay_bins::{
    Exit, LogFormat, block_on_main, init_logging, kube_client, parse_metrics_addr, serve_health,
    shutdown_signal,
};
use overlay_core::IpamBackend;
use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::events::EventRecorder;
use overlay_core::invalid::InvalidObjects;
use overlay_core::k8s::cluster_uid;
use overlay_core::leader::{Fence, FencedIpam, LeaderConfig, Leadership, Term};
use overlay_core::metrics::prometheus::PrometheusMetrics;
use overlay_core::metrics::{InstrumentedIpam, Measurement, Metrics};
use overlay_ipam::config::{
    DEFAULT_PATH, IpamConfig, ORIGINAL_PATH, locate, parse_duration, validate_cluster_id,
};
use overlay_ipam::phpipam::Credentials;
use tracing::{error, info, warn};

/// The overlay controller: one overlay IP per node from phpIPAM or embedded
/// pools, recorded in NodeOverlayIp objects; orphans released; StaticRoute
/// finalizers handled.
#[derive(Debug, Parser)]
#[command(name = "overlay-controller", version)]
struct Args {
    /// Controller configuration (the original overlay-ip-config.yaml:
    /// `phpIPAM: {url, appID, subnetMap}`, or an `embedded:` pools section).
    /// Unset: /etc/overlay/overlay-ip-config.yaml, else the original
    /// controller's mount path /opt/controller-config/overlay-ip-config.yaml
    /// (ConfigMap overlay-ip-controller-config); the log says which was
    /// read. phpIPAM credentials, first found wins (user name and password
    /// each): PHPIPAM_USERNAME/PHPIPAM_PASSWORD (or PHPIPAM_APP_CODE), the
    /// files the config names (usernameFile/passwordFile), the files
    /// `username`/`password` in --phpipam-secret-dir, then
    /// `username`/`password` in the config (with a warning).
    #[arg(long, env = "OVERLAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory holding the original controller's Secret phpipam-secret
    /// (files `username` and `password`; the shipped Deployment mounts it
    /// there, optional). Used for a credential that PHPIPAM_USERNAME,
    /// PHPIPAM_PASSWORD and the config's files do not give.
    #[arg(
        long,
        env = "PHPIPAM_SECRET_DIR",
        value_name = "DIR",
        default_value = overlay_ipam::phpipam::DEFAULT_SECRET_DIR
    )]
    phpipam_secret_dir: PathBuf,
    /// Cluster id written into IPAM owner markers (overrides `clusterId` in
    /// the config). Unset: the UID of the kube-system Namespace, unique to
    /// this cluster. Set it to keep the id across a cluster rebuild; never
    /// give two clusters sharing an IPAM the same id.
    #[arg(long, env = "CLUSTER_ID")]
    cluster_id: Option<String>,
    /// How long a reservation must be seen without node and NodeOverlayIp,
    /// in two orphan passes, before it is released (overrides
    /// `orphanGracePeriod`; default 10m).
    #[arg(long, env = "ORPHAN_GRACE")]
    orphan_grace: Option<String>,
    /// How long a released address is held back from other nodes
    /// (overrides `holdDown`; default 5m; 0s turns it off).
    #[arg(long, env = "HOLD_DOWN")]
    hold_down: Option<String>,
    /// Log what would be reserved, released and deleted; change nothing.
    #[arg(long, env = "DRY_RUN")]
    dry_run: bool,
    /// Address for /healthz, /readyz and /metrics, or `off`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Nodes reconciled at once (each node is handled by one worker at a time).
    #[arg(long, env = "CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// Seconds between orphan collections and full resyncs.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 600)]
    resync_seconds: u64,
    /// Disable leader election (only for a single replica).
    #[arg(long, env = "NO_LEADER_ELECT")]
    no_leader_elect: bool,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "overlay-controller")]
    lease_name: String,
    /// Namespace of the Lease (the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    lease_namespace: String,
    /// `leaseDurationSeconds`: how long a standby waits, after it last saw
    /// the Lease change, before it takes over.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s")]
    lease_duration: String,
    /// The leader stops acting this long before its claim runs out
    /// (`renewTime + leaseDuration − margin`, by its own clock). It covers
    /// clock-rate drift and an IPAM request in flight.
    #[arg(long, env = "LEASE_MARGIN", default_value = "5s")]
    lease_margin: String,
    /// How often the leader renews and a standby retries.
    #[arg(long, env = "LEASE_RETRY", default_value = "2s")]
    lease_retry: String,
    /// Identity in the Lease (default: POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Kubeconfig file (default: in-cluster, then KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

enum Failure {
    Config(String),
    Runtime(String),
}

fn duration(flag: &str, text: &str) -> Result<Duration, Failure> {
    parse_duration(Some(text), Duration::ZERO).map_err(|e| Failure::Config(format!("{flag}: {e}")))
}

fn leader_config(args: &Args) -> Result<LeaderConfig, Failure> {
    let identity = args
        .identity
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("overlay-controller-{}", std::process::id()));
    let cfg = LeaderConfig {
        lease_duration: duration("--lease-duration", &args.lease_duration)?,
        margin: duration("--lease-margin", &args.lease_margin)?,
        retry_period: duration("--lease-retry", &args.lease_retry)?,
        ..LeaderConfig::new(identity)
    };
    cfg.validate()
        .map_err(|e| Failure::Config(format!("leader election: {e}")))?;
    Ok(cfg)
}

/// Where the cluster id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdSource {
    Flag,
    Config,
    /// The kube-system Namespace UID: unique to the cluster.
    Derived,
}

impl IdSource {
    fn describe(self) -> &'static str {
        match self {
            IdSource::Flag => "--cluster-id/CLUSTER_ID",
            IdSource::Config => "clusterId in the config",
            IdSource::Derived => "kube-system Namespace UID",
        }
    }
}

/// The cluster id, and where it came from.
async fn cluster_id(
    args: &Args,
    file: &IpamConfig,
    client: &kube::Client,
) -> Result<(String, IdSource), Failure> {
    if let Some(id) = &args.cluster_id {
        validate_cluster_id(id)
            .map_err(|e| Failure::Config(format!("--cluster-id/CLUSTER_ID: {e}")))?;
        return Ok((id.clone(), IdSource::Flag));
    }
    if let Some(id) = &file.cluster_id {
        return Ok((id.clone(), IdSource::Config));
    }
    let uid = cluster_uid(client.clone()).await.map_err(|e| {
        Failure::Runtime(format!(
            "deriving the cluster id from the kube-system Namespace UID: {e}; grant get on namespaces/kube-system, or set clusterId"
        ))
    })?;
    Ok((uid, IdSource::Derived))
}

/// The controller config file with the command line's overrides applied,
/// the durations it sets, and the phpIPAM credentials.
struct Settings {
    file: IpamConfig,
    orphan_grace: Duration,
    hold_down: Duration,
    /// `None` for embedded pools.
    credentials: Option<Credentials>,
}

/// The config file to read: `--config`, else the default path, else the
/// original controller's mount path; logged with why.
fn config_path(args: &Args) -> Result<PathBuf, Failure> {
    if let Some(p) = &args.config {
        info!(config = %p.display(), "reading the controller config given by --config/OVERLAY_CONFIG");
        return Ok(p.clone());
    }
    let path = locate(&[Path::new(DEFAULT_PATH), Path::new(ORIGINAL_PATH)])
        .map_err(|e| Failure::Config(e.to_string()))?;
    if path == Path::new(DEFAULT_PATH) {
        info!(config = %path.display(), "reading the controller config at the default path");
    } else {
        info!(config = %path.display(), missing = DEFAULT_PATH,
            "reading the controller config at the original controller's mount path (ConfigMap overlay-ip-controller-config); the default path does not exist");
    }
    Ok(path)
}

/// The phpIPAM credentials (see `--config`), resolved once at start; files
/// are read again at every login, so a rotated Secret is picked up.
fn credentials(args: &Args, file: &IpamConfig) -> Result<Option<Credentials>, Failure> {
    let Some(p) = &file.php_ipam else {
        return Ok(None);
    };
    Credentials::resolve_from(p, |k| std::env::var(k).ok(), Some(&args.phpipam_secret_dir))
        .map(Some)
        .map_err(|(field, problem)| {
            Failure::Config(format!("{}: phpIPAM.{field}: {problem}", file.source))
        })
}

fn settings(args: &Args) -> Result<Settings, Failure> {
    let path = config_path(args)?;
    let mut file = IpamConfig::load(&path).map_err(|e| Failure::Config(e.to_string()))?;
    if let Some(g) = &args.orphan_grace {
        file.orphan_grace_period = Some(g.clone());
    }
    if let Some(h) = &args.hold_down {
        file.hold_down = Some(h.clone());
    }
    let orphan_grace = file
        .orphan_grace()
        .map_err(|e| Failure::Config(format!("{e} (or --orphan-grace/ORPHAN_GRACE)")))?;
    let hold_down = file
        .hold_down()
        .map_err(|e| Failure::Config(format!("{e} (or --hold-down/HOLD_DOWN)")))?;
    if let Some(e) = &file.embedded
        && e.state_file.is_none()
    {
        return Err(Failure::Config(format!(
            "{}: embedded.stateFile: not set; in-memory pools lose every reservation when the controller restarts and would hand out addresses twice; set stateFile on a persistent volume (and run one replica), or use phpIPAM",
            file.source
        )));
    }
    let credentials = credentials(args, &file)?;
    Ok(Settings {
        file,
        orphan_grace,
        hold_down,
        credentials,
    })
}

/// What every step of a run shares.
struct Shared {
    client: kube::Client,
    cluster: String,
    id_source: IdSource,
    metrics: Arc<PrometheusMetrics>,
    events: Arc<dyn EventRecorder>,
    invalid: InvalidObjects,
    /// The controller, once this replica leads (for `/readyz`).
    active: Arc<OnceLock<Arc<Controller>>>,
}

async fn run(args: Args) -> Result<(), Failure> {
    let mut settings = settings(&args)?;
    let metrics_addr = parse_metrics_addr(&args.metrics_addr).map_err(Failure::Config)?;
    let leader = if args.no_leader_elect {
        None
    } else {
        Some(leader_config(&args)?)
    };
    let shared = start(&args, &mut settings).await?;
    if let Some(addr) = metrics_addr {
        serve(addr, &shared).await?;
    }
    info!(config = %settings.file.source, cluster_id = %shared.cluster, dry_run = args.dry_run, "overlay-controller starting");
    let leadership = match leader {
        None => Leadership::single(),
        Some(cfg) => {
            let store = controller_lease(
                shared.client.clone(),
                &args.lease_namespace,
                &args.lease_name,
                &shared.cluster,
            );
            info!(lease = %args.lease_name, namespace = %args.lease_namespace, "leader election");
            Leadership::start(Arc::new(store), cfg)
        }
    };
    let term = leadership
        .lead(shutdown_signal(), &*shared.metrics, |fence, until| {
            lead(&args, &settings, &shared, fence, until)
        })
        .await?;
    if term == Term::Lost {
        error!("no longer sure to hold the Lease; stopped every IPAM write and exiting");
        return Err(Failure::Runtime("lost leadership".into()));
    }
    Ok(())
}

/// Connects, settles the cluster id, and checks that the IPAM can be built
/// (bad credentials or a corrupt state file stop the process at start).
async fn start(args: &Args, settings: &mut Settings) -> Result<Shared, Failure> {
    let client = kube_client(args.kubeconfig.clone())
        .await
        .map_err(Failure::Runtime)?;
    let (cluster, id_source) = cluster_id(args, &settings.file, &client).await?;
    settings.file.cluster_id = Some(cluster.clone());
    // The backend the controller uses is built again once this replica
    // leads, so a standby never works from state read before it took over.
    // Kubernetes-native pools need no check beyond the file's: their
    // objects are read when the backend starts.
    if settings.file.kubernetes.is_none() {
        drop(
            settings
                .file
                .build_with(settings.credentials.clone())
                .map_err(|e| Failure::Config(e.to_string()))?,
        );
    }
    info!(cluster_id = %cluster, source = id_source.describe(), orphan_grace_s = settings.orphan_grace.as_secs(), hold_down_s = settings.hold_down.as_secs(), "cluster identity");
    let metrics = Arc::new(PrometheusMetrics::controller());
    let events = controller_events(client.clone());
    // The controller sees every NodeOverlayIp and StaticRoute: it raises the
    // Events for those that do not convert (the agents only log and count).
    let invalid = InvalidObjects::new(events.clone()).with_metrics(metrics.clone());
    Ok(Shared {
        client,
        cluster,
        id_source,
        metrics,
        events,
        invalid,
        active: Arc::new(OnceLock::new()),
    })
}

/// Serves health and metrics. Ready: a standby as soon as it runs; the
/// leader once its controller has queued its first full pass.
async fn serve(addr: std::net::SocketAddr, shared: &Shared) -> Result<(), Failure> {
    let a = shared.active.clone();
    let ready = Arc::new(move || a.get().is_none_or(|c| c.is_ready()));
    let bound = serve_health(addr, ready, shared.metrics.clone())
        .await
        .map_err(Failure::Runtime)?;
    info!(%bound, "serving /healthz, /readyz, /metrics");
    Ok(())
}

/// This replica's term: builds the IPAM behind the fence and runs the
/// controller until `until`.
async fn lead(
    args: &Args,
    settings: &Settings,
    shared: &Shared,
    fence: Fence,
    until: BoxFuture<'static, ()>,
) -> Result<(), Failure> {
    let (backend, keeper) = build_backend(args, settings, shared)?;
    let ipam: Arc<dyn IpamBackend> = Arc::new(FencedIpam::new(
        Arc::new(InstrumentedIpam::new(backend, shared.metrics.clone())),
        fence,
    ));
    let stores = controller_stores(shared.client.clone(), &shared.invalid);
    let cfg = ControllerConfig {
        dry_run: args.dry_run,
        concurrency: args.concurrency.max(1),
        resync: Duration::from_secs(args.resync_seconds.max(10)),
        orphan_grace: settings.orphan_grace,
        hold_down: settings.hold_down,
        ..ControllerConfig::new(shared.cluster.clone())
    };
    let parts = ControllerParts {
        nodes: stores.nodes,
        ipam,
        overlay_ips: stores.overlay_ips,
        routes: stores.routes,
    };
    let controller = Arc::new(
        Controller::new(cfg, parts)
            .with_events(shared.events.clone())
            .with_metrics(shared.metrics.clone()),
    );
    let _ = shared.active.set(controller.clone());
    if shared.id_source != IdSource::Derived {
        warn_if_id_is_shared(&controller, &shared.cluster).await;
    }
    controller.run(until).await;
    if let Some(k) = keeper {
        k.abort();
    }
    Ok(())
}

/// How often the leader keeps the `OverlayIPPool`s (finalizers, status,
/// expired holds) with Kubernetes-native pools.
const KEEP_POOLS_EVERY: Duration = Duration::from_secs(10);

/// The task that keeps the `OverlayIPPool`s while this replica leads.
type Keeper = tokio::task::JoinHandle<()>;

/// The configured backend, and with Kubernetes-native pools the task that
/// keeps them while this replica leads.
fn build_backend(
    args: &Args,
    settings: &Settings,
    shared: &Shared,
) -> Result<(Arc<dyn IpamBackend>, Option<Keeper>), Failure> {
    let config = |e: overlay_ipam::config::ConfigError| Failure::Config(e.to_string());
    if let Some(php) = settings
        .file
        .build_phpipam(settings.credentials.clone())
        .map_err(config)?
    {
        watch_login_blocks(&php, shared, args);
        return Ok((php, None));
    }
    let store = Arc::new(overlay_core::k8s::KubePoolStore::new(shared.client.clone()));
    if let Some(kube) = settings.file.build_kubernetes(store).map_err(config)? {
        let keeper = kube.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEP_POOLS_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = keeper.keep_pools().await {
                    warn!(error = %e, "keeping the OverlayIPPools failed; retrying");
                }
            }
        });
        return Ok((kube, Some(task)));
    }
    Ok((settings.file.build().map_err(config)?, None))
}

/// phpIPAM blocked this client's IP (too many failed logins): an Event on
/// the controller's Pod and [`Measurement::IpamLoginBlocked`], once per
/// block; the backend itself sends nothing until the block ends, and logs
/// it once.
fn watch_login_blocks(php: &overlay_ipam::phpipam::PhpIpamBackend, shared: &Shared, args: &Args) {
    let mut rx = php.blocked();
    let metrics = shared.metrics.clone();
    let events = shared.events.clone();
    let pod = args.identity.clone();
    let namespace = args.lease_namespace.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let block = rx.borrow_and_update().clone();
            metrics.record(Measurement::IpamLoginBlocked(block.is_some()));
            let (Some(b), Some(pod)) = (block, pod.as_ref()) else {
                continue;
            };
            events
                .record(ipam_login_blocked_event(pod, &namespace, &b))
                .await;
        }
    });
}

/// A cluster id set by hand may be in use by another cluster sharing the
/// IPAM: reservations under it for nodes this cluster does not have are the
/// visible sign. The orphan collection would release them after the grace
/// period, so say so loudly now.
async fn warn_if_id_is_shared(controller: &Controller, cluster: &str) {
    match controller.reservations_of_unknown_nodes().await {
        Ok(foreign) if !foreign.is_empty() => {
            let examples: Vec<String> = foreign
                .iter()
                .take(5)
                .map(|r| format!("{} ({})", r.owner.node, r.address))
                .collect();
            warn!(
                cluster_id = %cluster,
                count = foreign.len(),
                examples = %examples.join(", "),
                "the IPAM holds reservations under this cluster id for nodes this cluster does not have; if another cluster uses the same id, give each cluster its own (or unset clusterId to derive one), or the orphan collection will release them after the grace period"
            );
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "checking the IPAM for other users of this cluster id failed"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    block_on_main("overlay-controller", async {
        run(args).await.map_err(|f| match f {
            Failure::Config(e) => Exit {
                code: EXIT_CONFIG,
                message: format!("invalid configuration: {e}"),
            },
            Failure::Runtime(e) => Exit::from(e),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }
}
