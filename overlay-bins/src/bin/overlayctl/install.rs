//! `overlayctl install` and `uninstall`.

use std::path::PathBuf;
use std::process::ExitCode;

use overlay_bins::install::{self, InstallOptions, Ipam};

/// `install`'s options.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Where addresses come from: `kubernetes` (OverlayIPPool objects; the
    /// default), `phpipam` (needs --phpipam-url, --app-id, --subnet-map) or
    /// `embedded` (pools from --pool in the config; one controller replica).
    #[arg(long, value_enum, default_value = "kubernetes")]
    ipam: Ipam,
    /// phpIPAM's base URL (https://…; over http the credentials travel in
    /// clear). --ipam phpipam only.
    #[arg(long, value_name = "URL")]
    phpipam_url: Option<String>,
    /// phpIPAM API application id. --ipam phpipam only.
    #[arg(long, value_name = "ID")]
    app_id: Option<String>,
    /// Zone → phpIPAM subnet ids, tried in order: `ZONE=ID[,ID...]`, zones
    /// separated by `;` (e.g. "dal10=7,8;dal12=9"). --ipam phpipam only.
    #[arg(long, value_name = "MAP", value_parser = parse_subnet_map)]
    subnet_map: Option<std::collections::BTreeMap<String, Vec<u64>>>,
    /// An address pool `ZONE=CIDR[,GATEWAY]` (gateway default: the first
    /// host address); repeat for more. kubernetes: printed as OverlayIPPool
    /// objects; embedded: the config's zones.
    #[arg(long, value_name = "ZONE=CIDR[,GATEWAY]", value_parser = parse_pool)]
    pool: Vec<install::PoolArg>,
    /// `clusterId` in the config (default: the controller uses the
    /// kube-system Namespace UID). Set it only to keep an id across a
    /// cluster rebuild; never to another cluster's.
    #[arg(long, value_name = "ID")]
    cluster_id: Option<String>,
    /// Also install the older static-routes ConfigMap mode (component
    /// deploy/agent/legacy) reading this ConfigMap, NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_legacy)]
    legacy_configmap: Option<(String, String)>,
    /// Registry path the images overlay-controller and overlay-agent are
    /// pulled from.
    #[arg(long, value_name = "REPO", default_value = install::DEFAULT_REPOSITORY)]
    image_repository: String,
    /// Image tag (default: this overlayctl's version).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    tag: String,
    /// Namespace of the controller, the agents and their config.
    #[arg(long, default_value = install::DEPLOY_NAMESPACE)]
    namespace: String,
    /// Print nothing; check instead whether the cluster is ready: server
    /// version 1.30 or later, overlay's CRDs present and current,
    /// ValidatingAdmissionPolicy served, every node labelled with a zone,
    /// and (--ipam kubernetes) an enabled pool per node zone. Exit status
    /// 1 when a check fails.
    #[arg(long)]
    check: bool,
    /// Kubeconfig file for --check (default: KUBECONFIG, ~/.kube/config,
    /// in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

fn parse_subnet_map(s: &str) -> Result<std::collections::BTreeMap<String, Vec<u64>>, String> {
    install::parse_subnet_map(s).map_err(|e| e.0)
}

fn parse_pool(s: &str) -> Result<install::PoolArg, String> {
    install::parse_pool(s).map_err(|e| e.0)
}

fn parse_legacy(s: &str) -> Result<(String, String), String> {
    install::parse_legacy_configmap(s).map_err(|e| e.0)
}

/// `install`: the manifests to stdout, or `--check`.
pub fn install(args: InstallArgs) -> Result<ExitCode, String> {
    if args.check {
        let readiness = crate::runtime()?.block_on(async {
            let client = overlay_bins::kube_client(args.kubeconfig).await?;
            Ok::<_, String>(install::check(&client, args.ipam).await)
        })?;
        write_out(&readiness.to_string())?;
        return Ok(if readiness.ready() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let opts = InstallOptions {
        ipam: args.ipam,
        phpipam_url: args.phpipam_url,
        app_id: args.app_id,
        subnet_map: args.subnet_map.unwrap_or_default(),
        pools: args.pool,
        cluster_id: args.cluster_id,
        legacy_configmap: args.legacy_configmap,
        image_repository: args.image_repository,
        tag: args.tag,
        namespace: args.namespace,
    };
    write_out(&install::render(&opts).map_err(|e| e.0)?)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout; a closed pipe (`| head`) is an error, not a panic.
fn write_out(text: &str) -> Result<(), String> {
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing to stdout: {e}"))
}

/// `uninstall`: the steps, as a commented shell script.
pub fn uninstall(namespace: &str) -> Result<(), String> {
    let mut out = format!(
        "# Removing overlay (namespace {namespace}): run these in order; each step's\n# comment says why it comes there.\n"
    );
    for step in install::uninstall_steps(namespace) {
        out.push_str(&format!("\n{step}"));
    }
    write_out(&out)
}
