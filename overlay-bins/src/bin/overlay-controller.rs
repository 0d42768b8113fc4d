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
use overlay_bins::{
    Exit, LogFormat, block_on_main, init_logging, kube_client, parse_metrics_addr, serve_health,
    shutdown_signal,
};
use overlay_core::controller::{Controller, ControllerConfig};
use overlay_core::events::EventRecorder;
use overlay_core::invalid::InvalidObjects;
use overlay_core::k8s::{
    CONTROLLER_MANAGER, KubeEvents, KubeNodes, KubeOverlayIps, KubeStaticRoutes,
};
use overlay_core::metrics::{ControllerMetrics, InstrumentedIpam};
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
    /// the config); lets several clusters share one IPAM.
    #[arg(long, env = "CLUSTER_ID")]
    cluster_id: Option<String>,
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

async fn run(args: Args) -> Result<(), Failure> {
    let mut file = overlay_ipam::config::ControllerConfig::load(&args.config)
        .map_err(|e| Failure::Config(e.to_string()))?;
    if let Some(id) = &args.cluster_id {
        file.cluster_id = id.clone();
        file.validate()
            .map_err(|e| Failure::Config(format!("{e} (from --cluster-id/CLUSTER_ID)")))?;
    }
    let metrics_addr = parse_metrics_addr(&args.metrics_addr).map_err(Failure::Config)?;
    if let Some(e) = &file.embedded
        && e.state_file.is_none()
    {
        return Err(Failure::Config(format!(
            "{}: embedded.stateFile: not set; in-memory pools lose every reservation when the controller restarts and would hand out addresses twice; set stateFile on a persistent volume (and run one replica), or use phpIPAM",
            file.source
        )));
    }
    // Build once now so that bad credentials or a corrupt state file stop
    // the process at start; the backend the controller uses is built again
    // once this replica leads, so a standby never works from state read
    // before it took over.
    file.build().map_err(|e| Failure::Config(e.to_string()))?;
    let metrics = ControllerMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let client = kube_client(args.kubeconfig.clone())
        .await
        .map_err(Failure::Runtime)?;
    let events: Arc<dyn EventRecorder> =
        Arc::new(KubeEvents::new(client.clone(), CONTROLLER_MANAGER));
    // The controller sees every NodeOverlayIp and StaticRoute: it raises the
    // Events for those that do not convert (the agents only log and count).
    let invalid = InvalidObjects::new(events.clone());
    invalid.register(&mut registry);
    let make_controller = || -> Result<Arc<Controller>, Failure> {
        let backend = file.build().map_err(|e| Failure::Config(e.to_string()))?;
        Ok(Arc::new(Controller::new(
            ControllerConfig {
                cluster_id: file.cluster_id.clone(),
                dry_run: args.dry_run,
                concurrency: args.concurrency.max(1),
                resync: Duration::from_secs(args.resync_seconds.max(10)),
                ..Default::default()
            },
            Arc::new(KubeNodes::new(client.clone(), None, invalid.clone())),
            Arc::new(InstrumentedIpam::new(backend, metrics.clone())),
            Arc::new(KubeOverlayIps::new(client.clone(), None, invalid.clone())),
            Arc::new(KubeStaticRoutes::new(
                client.clone(),
                CONTROLLER_MANAGER.into(),
                invalid.clone(),
            )),
            events.clone(),
            metrics.clone(),
        )))
    };

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
    info!(config = %args.config.display(), cluster = %file.cluster_id, dry_run = args.dry_run, "overlay-controller starting");

    if args.no_leader_elect {
        let controller = make_controller()?;
        let _ = active.set(controller.clone());
        metrics.leader.set(1);
        controller.run(shutdown_signal()).await;
        return Ok(());
    }

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
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .build()
        .await
        .map_err(|e| {
            Failure::Runtime(format!(
                "leader election on Lease {}/{}: {e}",
                args.lease_namespace, args.lease_name
            ))
        })?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(%identity, lease = %args.lease_name, namespace = %args.lease_namespace, "waiting for leadership");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Standby until we lead.
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = &mut shutdown => {
                drop(leader);
                let _ = lease_task.await;
                return Ok(());
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    return Err(Failure::Runtime("leader election stopped".into()));
                }
            }
        }
    }
    info!(%identity, "became leader");
    let controller = make_controller()?;
    let _ = active.set(controller.clone());
    metrics.leader.set(1);
    let mut lost = leader.clone();
    let lost_leadership = async move {
        loop {
            if lost.changed().await.is_err() || !*lost.borrow_and_update() {
                return;
            }
        }
    };
    let lost_flag = Arc::new(AtomicBool::new(false));
    let lf = lost_flag.clone();
    controller
        .run(async move {
            tokio::select! {
                _ = &mut shutdown => {}
                _ = lost_leadership => lf.store(true, Ordering::Relaxed),
            }
        })
        .await;
    metrics.leader.set(0);
    drop(leader);
    match lease_task.await {
        Ok(Ok(m)) => {
            if let Err(e) = m.release().await {
                warn!(error = %e, "releasing the Lease failed; another replica takes over when it expires");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "leader election ended with an error"),
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
    if lost_flag.load(Ordering::Relaxed) {
        // Exit so a fresh process starts as a standby: no state from the
        // old term survives.
        error!("lost leadership; exiting");
        return Err(Failure::Runtime("lost leadership".into()));
    }
    Ok(())
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
