//! `overlay-controller`: gives every node an overlay IP from the IPAM and
//! takes it back when the node goes. One active replica (Lease-based leader
//! election); standbys wait.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use overlay_bins::stores::{
    controller_events, controller_lease, controller_stores, ipam_login_blocked_event,
};
use overlay_bins::{
    Exit, LogFormat, block_on_main, init_logging, kube_client, parse_metrics_addr, serve_health,
    shutdown_signal,
};
use overlay_core::IpamBackend;
use overlay_core::controller::{Controller, ControllerConfig};
use overlay_core::events::EventRecorder;
use overlay_core::invalid::InvalidObjects;
use overlay_core::k8s::cluster_uid;
use overlay_core::leader::{Fence, FencedIpam, LeaderConfig, LeaderElector};
use overlay_core::metrics::{ControllerMetrics, InstrumentedIpam};
use overlay_ipam::config::{parse_duration, validate_cluster_id};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{error, info, warn};

/// The overlay controller: one overlay IP per node from phpIPAM or embedded
/// pools, recorded in NodeOverlayIp objects; orphans released; StaticRoute
/// finalizers handled.
#[derive(Debug, Parser)]
#[command(name = "overlay-controller", version)]
struct Args {
    /// Controller configuration (the original overlay-ip-config.yaml:
    /// `phpIPAM: {url, appID, subnetMap}`, or an `embedded:` pools section).
    /// phpIPAM credentials come from PHPIPAM_USERNAME/PHPIPAM_PASSWORD (or
    /// PHPIPAM_APP_CODE), or the files the config names.
    #[arg(
        long,
        env = "OVERLAY_CONFIG",
        default_value = "/etc/overlay/overlay-ip-config.yaml"
    )]
    config: PathBuf,
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
    file: &overlay_ipam::config::IpamConfig,
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

async fn run(args: Args) -> Result<(), Failure> {
    let mut file = overlay_ipam::config::IpamConfig::load(&args.config)
        .map_err(|e| Failure::Config(e.to_string()))?;
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
    let metrics_addr = parse_metrics_addr(&args.metrics_addr).map_err(Failure::Config)?;
    let leader = if args.no_leader_elect {
        None
    } else {
        Some(leader_config(&args)?)
    };
    if let Some(e) = &file.embedded
        && e.state_file.is_none()
    {
        return Err(Failure::Config(format!(
            "{}: embedded.stateFile: not set; in-memory pools lose every reservation when the controller restarts and would hand out addresses twice; set stateFile on a persistent volume (and run one replica), or use phpIPAM",
            file.source
        )));
    }
    let client = kube_client(args.kubeconfig.clone())
        .await
        .map_err(Failure::Runtime)?;
    let (cluster, id_source) = cluster_id(&args, &file, &client).await?;
    file.cluster_id = Some(cluster.clone());
    // Build once now so that bad credentials or a corrupt state file stop
    // the process at start; the backend the controller uses is built again
    // once this replica leads, so a standby never works from state read
    // before it took over.
    drop(file.build().map_err(|e| Failure::Config(e.to_string()))?);
    info!(cluster_id = %cluster, source = id_source.describe(), orphan_grace_s = orphan_grace.as_secs(), hold_down_s = hold_down.as_secs(), "cluster identity");
    let metrics = ControllerMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let blocked_gauge = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    registry.register(
        "overlay_ipam_login_blocked",
        "1 while phpIPAM blocks this client's IP after failed logins (no request is sent until the block ends)",
        blocked_gauge.clone(),
    );
    let events = controller_events(client.clone());
    // The controller sees every NodeOverlayIp and StaticRoute: it raises the
    // Events for those that do not convert (the agents only log and count).
    let invalid = InvalidObjects::new(events.clone());
    invalid.register(&mut registry);

    // Ready: a standby is ready as soon as it runs; the leader once its
    // controller has queued its first full pass.
    let active: Arc<OnceLock<Arc<Controller>>> = Arc::new(OnceLock::new());
    if let Some(addr) = metrics_addr {
        let a = active.clone();
        let ready = Arc::new(move || a.get().is_none_or(|c| c.is_ready()));
        let bound = serve_health(addr, ready, Arc::new(registry))
            .await
            .map_err(Failure::Runtime)?;
        info!(%bound, "serving /healthz, /readyz, /metrics");
    }
    info!(config = %args.config.display(), cluster_id = %cluster, dry_run = args.dry_run, "overlay-controller starting");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let (fence, elector) = match leader {
        None => (Fence::always(), None),
        Some(cfg) => {
            let store = controller_lease(
                client.clone(),
                &args.lease_namespace,
                &args.lease_name,
                &cluster,
            );
            info!(identity = %cfg.identity, lease = %args.lease_name, namespace = %args.lease_namespace, "waiting for leadership");
            let (elector, fence) = LeaderElector::new(Arc::new(store), cfg);
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(elector.run(async {
                let _ = stop_rx.await;
            }));
            (fence, Some((stop_tx, task)))
        }
    };
    // Standby until we lead.
    tokio::select! {
        _ = &mut shutdown => {
            stop_elector(elector).await;
            return Ok(());
        }
        _ = fence.acquired() => {}
    }
    metrics.leader.set(1);
    let backend = match file
        .build_phpipam(None)
        .map_err(|e| Failure::Config(e.to_string()))?
    {
        Some(php) => {
            watch_login_blocks(&php, events.clone(), &args, &blocked_gauge);
            php as Arc<dyn IpamBackend>
        }
        None => file.build().map_err(|e| Failure::Config(e.to_string()))?,
    };
    let ipam: Arc<dyn IpamBackend> = Arc::new(FencedIpam::new(
        Arc::new(InstrumentedIpam::new(backend, metrics.clone())),
        fence.clone(),
    ));
    let stores = controller_stores(client.clone(), &invalid);
    let controller = Arc::new(Controller::new(
        ControllerConfig {
            dry_run: args.dry_run,
            concurrency: args.concurrency.max(1),
            resync: Duration::from_secs(args.resync_seconds.max(10)),
            orphan_grace,
            hold_down,
            ..ControllerConfig::new(cluster.clone())
        },
        stores.nodes,
        ipam,
        stores.overlay_ips,
        stores.routes,
        events.clone(),
        metrics.clone(),
    ));
    let _ = active.set(controller.clone());
    if id_source != IdSource::Derived {
        warn_if_id_is_shared(&controller, &cluster).await;
    }
    let lost = Arc::new(AtomicBool::new(false));
    let l = lost.clone();
    controller
        .run(async move {
            tokio::select! {
                _ = &mut shutdown => {}
                _ = fence.lost() => l.store(true, Ordering::Relaxed),
            }
        })
        .await;
    metrics.leader.set(0);
    stop_elector(elector).await;
    if lost.load(Ordering::Relaxed) {
        // Exit so a fresh process starts as a standby: no state from the
        // old term survives.
        error!("no longer sure to hold the Lease; stopped every IPAM write and exiting");
        return Err(Failure::Runtime("lost leadership".into()));
    }
    Ok(())
}

/// phpIPAM blocked this client's IP (too many failed logins): an Event on
/// the controller's Pod and a gauge, once per block; the backend itself
/// sends nothing until the block ends, and logs it once.
fn watch_login_blocks(
    php: &overlay_ipam::phpipam::PhpIpamBackend,
    events: Arc<dyn EventRecorder>,
    args: &Args,
    gauge: &Gauge<i64, std::sync::atomic::AtomicI64>,
) {
    let mut rx = php.blocked();
    let gauge = gauge.clone();
    let pod = args.identity.clone();
    let namespace = args.lease_namespace.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let block = rx.borrow_and_update().clone();
            gauge.set(i64::from(block.is_some()));
            let (Some(b), Some(pod)) = (block, pod.as_ref()) else {
                continue;
            };
            events
                .record(ipam_login_blocked_event(pod, &namespace, &b))
                .await;
        }
    });
}

type Elector = Option<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)>;

/// Stops the election, releasing the Lease if this replica holds it.
async fn stop_elector(elector: Elector) {
    if let Some((stop, task)) = elector {
        let _ = stop.send(());
        if let Err(e) = task.await {
            warn!(error = %e, "leader election task failed");
        }
    }
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
