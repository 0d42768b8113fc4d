//! `overlay-agent`: runs on every node (DaemonSet, host network, NET_ADMIN
//! only). Puts the node's overlay address on a macvlan sub-interface and
//! programs the StaticRoutes that select the node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use overlay_bins::stores::{AgentInputOptions, agent_inputs};
use overlay_bins::{
    Exit, LogFormat, block_on_main_single_thread, init_logging, kube_client, parse_metrics_addr,
    serve_health, shutdown_signal,
};
use overlay_core::agent::AgentConfig;
use overlay_core::metrics::prometheus::PrometheusMetrics;
use overlay_core::{Cidr, InterfaceName};
use overlay_netlink::{DEFAULT_ROUTE_PROTOCOL, NetlinkProgrammer, ProgrammerConfig};
use tracing::{info, warn};

/// The overlay node agent: overlay address on a macvlan interface, and the
/// StaticRoutes that select this node, kept in place against drift.
#[derive(Debug, Parser)]
#[command(name = "overlay-agent", version)]
struct Args {
    /// This node's name (downward API `spec.nodeName`). The original
    /// deployment's NODE_HOSTNAME is accepted too.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Parent interface of the overlay interface. Default: the interface
    /// holding the node's InternalIP.
    #[arg(long, env = "INTERFACE")]
    interface: Option<String>,
    /// Name of the overlay (macvlan) interface, at most 15 bytes.
    #[arg(long, env = "INTERFACE_LABEL", default_value = "tmp0")]
    interface_label: String,
    /// Comma-separated CIDRs no StaticRoute may shadow (pod and service
    /// ranges, ...). The default route and the node's InternalIP are always
    /// protected.
    #[arg(long, env = "PROTECTED_SUBNETS", value_delimiter = ',')]
    protected_subnets: Vec<String>,
    /// Older deployment mode: read the route list from this ConfigMap
    /// (`NAMESPACE/NAME`, key `routes`, a JSON array of subnets; the older
    /// DaemonSet's was default/static-routes). A bare address is a host
    /// route (/32, /128); an entry that is not a subnet is skipped and
    /// reported, the others apply. Without an overlay address (no
    /// NodeOverlayIp CRD, object or ipAddr) the routes still go via the
    /// gateway found for LEGACY_GATEWAY_FROM.
    #[arg(long, env = "STATIC_ROUTES_CONFIGMAP", value_name = "NAMESPACE/NAME")]
    legacy_configmap: Option<String>,
    /// Older deployment mode: read the route list from this file (the
    /// ConfigMap mounted as a volume), re-read when it changes.
    #[arg(
        long,
        env = "STATIC_ROUTES_FILE",
        value_name = "PATH",
        conflicts_with = "legacy_configmap"
    )]
    legacy_file: Option<PathBuf>,
    /// Legacy routes go via the gateway of the kernel route covering this prefix.
    #[arg(long, env = "LEGACY_GATEWAY_FROM", default_value = "10.0.0.0/8")]
    legacy_gateway_from: String,
    /// Do not watch StaticRoute objects (legacy-only clusters without the
    /// CRD). Watched without their CRD, no StaticRoute applies and no route
    /// is removed.
    #[arg(long, env = "NO_STATIC_ROUTES")]
    no_static_routes: bool,
    /// Route protocol number marking the routes and addresses the agent owns
    /// (5-255). Routes with another protocol are never touched.
    #[arg(long, env = "ROUTE_PROTOCOL", default_value_t = DEFAULT_ROUTE_PROTOCOL)]
    route_protocol: u8,
    /// Addresses for /healthz, /readyz and /metrics (comma-separated
    /// HOST:PORT), or `off`. Default: 127.0.0.1 and the pod IP (POD_IP) on
    /// METRICS_PORT. The agent runs with host networking, so it does not
    /// listen on every address of the node unless told to (`0.0.0.0:9877`).
    #[arg(
        long,
        env = "METRICS_ADDR",
        value_delimiter = ',',
        value_name = "HOST:PORT,...|off"
    )]
    metrics_addr: Vec<String>,
    /// Port of the default listen addresses (an uncommon one: host network).
    #[arg(long, env = "METRICS_PORT", default_value_t = 9877)]
    metrics_port: u16,
    /// This pod's IP (downward API `status.podIP`; with host networking the
    /// node's IP): the default listen address besides 127.0.0.1, where the
    /// kubelet's probes and Prometheus connect.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<std::net::IpAddr>,
    /// Seconds between full resyncs (a safety net; drift is repaired from
    /// kernel notifications right away, and StaticRoute changes are applied
    /// as they come). At least 1.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Kubeconfig file (default: in-cluster, then KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn config(args: &Args) -> Result<AgentConfig, String> {
    let node = args
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_HOSTNAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or(
            "the node name is not set: set NODE_NAME (downward API spec.nodeName) or --node-name",
        )?;
    let mut cfg = AgentConfig::new(node).map_err(|e| e.to_string())?;
    cfg.interface = args
        .interface
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| InterfaceName::parse("INTERFACE", s))
        .transpose()
        .map_err(|e| e.to_string())?;
    cfg.interface_label = InterfaceName::parse("INTERFACE_LABEL", &args.interface_label)
        .map_err(|e| e.to_string())?;
    cfg.protected = args
        .protected_subnets
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Cidr::parse("PROTECTED_SUBNETS", s.trim()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    cfg.legacy_gateway_from =
        Cidr::parse("LEGACY_GATEWAY_FROM", &args.legacy_gateway_from).map_err(|e| e.to_string())?;
    cfg.resync = Duration::from_secs(args.resync_seconds);
    cfg.validate().map_err(|e| e.to_string())?;
    if args.route_protocol < 5 {
        return Err(format!(
            "invalid ROUTE_PROTOCOL {}: 0-4 belong to the kernel and iproute2; use 5-255",
            args.route_protocol
        ));
    }
    Ok(cfg)
}

/// Where to serve /healthz, /readyz and /metrics: METRICS_ADDR, else
/// 127.0.0.1 and the pod IP on METRICS_PORT.
fn listen_addrs(args: &Args) -> Result<Vec<SocketAddr>, String> {
    let given: Vec<&str> = args
        .metrics_addr
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if given.is_empty() {
        let mut out = vec![SocketAddr::from(([127, 0, 0, 1], args.metrics_port))];
        if let Some(ip) = args.pod_ip.filter(|ip| !ip.is_loopback()) {
            out.push(SocketAddr::new(ip, args.metrics_port));
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for s in given {
        match parse_metrics_addr(s)? {
            Some(a) => out.push(a),
            None if out.is_empty() && args.metrics_addr.len() == 1 => return Ok(Vec::new()),
            None => return Err("METRICS_ADDR: `off` cannot be combined with addresses".into()),
        }
    }
    Ok(out)
}

async fn run(args: Args) -> Result<(), String> {
    let cfg = config(&args)?;
    let listen = listen_addrs(&args)?;
    let client = kube_client(args.kubeconfig.clone()).await?;
    let node = cfg.node_name.clone();
    let programmer = NetlinkProgrammer::new(
        ProgrammerConfig::default().with_route_protocol(args.route_protocol),
    )
    .await
    .map_err(|e| e.to_string())?;
    let metrics = Arc::new(PrometheusMetrics::agent());
    let inputs = agent_inputs(
        client,
        &node,
        &AgentInputOptions {
            static_routes: !args.no_static_routes,
            legacy_configmap: args.legacy_configmap.clone(),
            legacy_file: args.legacy_file.clone(),
        },
        metrics.clone(),
    )?;
    let agent = Arc::new(inputs.agent(cfg, Arc::new(programmer)));
    for addr in &listen {
        let a = agent.clone();
        let bound = serve_health(*addr, Arc::new(move || a.is_ready()), metrics.clone()).await?;
        info!(%bound, "serving /healthz, /readyz, /metrics");
    }
    if args.metrics_addr.is_empty() && args.pod_ip.is_none() {
        warn!(
            "POD_IP is not set: serving /healthz, /readyz and /metrics on 127.0.0.1 only, where the kubelet's probes cannot reach; set POD_IP from the downward API (status.podIP)"
        );
    }
    info!(node = %node, "overlay-agent started");
    agent.run(shutdown_signal()).await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    block_on_main_single_thread("overlay-agent", async {
        run(args).await.map_err(Exit::from)
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

    #[test]
    fn bad_settings_name_the_variable() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["overlay-agent", "--node-name", "n1"];
            argv.extend_from_slice(extra);
            config(&Args::parse_from(argv))
        };
        assert!(parse(&[]).is_ok());
        let e = parse(&["--interface-label", "a-very-long-interface"]).unwrap_err();
        assert!(e.contains("INTERFACE_LABEL"), "{e}");
        let e = parse(&["--protected-subnets", "172.20.0.0/16,10.0.0.1/8"]).unwrap_err();
        assert!(
            e.contains("PROTECTED_SUBNETS") && e.contains("10.0.0.0/8"),
            "{e}"
        );
        let e = parse(&["--route-protocol", "2"]).unwrap_err();
        assert!(e.contains("ROUTE_PROTOCOL"), "{e}");
        let e = parse(&["--resync-seconds", "0"]).unwrap_err();
        assert!(e.contains("RESYNC_SECONDS"), "{e}");
        let e = parse(&["--interface", "eth1", "--interface-label", "eth1"]).unwrap_err();
        assert!(e.contains("INTERFACE_LABEL"), "{e}");
    }

    #[test]
    fn listens_on_loopback_and_the_pod_ip_by_default() {
        let addrs = |argv: &[&str]| {
            let mut all = vec!["overlay-agent", "--node-name", "n1"];
            all.extend_from_slice(argv);
            listen_addrs(&Args::parse_from(all))
        };
        let s = |v: Vec<SocketAddr>| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(s(addrs(&[]).unwrap()), ["127.0.0.1:9877"]);
        assert_eq!(
            s(addrs(&["--pod-ip", "198.51.100.10"]).unwrap()),
            ["127.0.0.1:9877", "198.51.100.10:9877"]
        );
        assert_eq!(
            s(addrs(&["--pod-ip", "2001:db8::10", "--metrics-port", "9000"]).unwrap()),
            ["127.0.0.1:9000", "[2001:db8::10]:9000"]
        );
        assert_eq!(
            s(addrs(&[
                "--metrics-addr",
                "0.0.0.0:9877",
                "--pod-ip",
                "198.51.100.10"
            ])
            .unwrap()),
            ["0.0.0.0:9877"]
        );
        assert!(addrs(&["--metrics-addr", "off"]).unwrap().is_empty());
        assert!(addrs(&["--metrics-addr", "off,127.0.0.1:1"]).is_err());
    }
}
