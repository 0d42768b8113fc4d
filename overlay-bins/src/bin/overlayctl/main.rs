//! `overlayctl`: the operator's command line for overlay.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod config;
mod install;
mod ipam;
#[cfg(feature = "lab")]
mod lab;
mod migrate;

/// Operate overlay: inspect a cluster, check configs and the IPAM, generate
/// CRDs and shell completions, and (built with the `lab` feature) run the
/// local lab.
#[derive(Debug, Parser)]
#[command(name = "overlayctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the whole system on this machine: nodes, a gateway and an on-prem
    /// host in network namespaces, the real controller and agents, then ping
    /// on-prem from every node. Needs root, ip, ping and sysctl (or
    /// --dry-run). Everything is removed at the end, also on Ctrl-C or
    /// SIGTERM at any point. Exit status: 0 when every node converged and
    /// every ping and check passed, 1 otherwise, 130/143 when stopped by
    /// SIGINT/SIGTERM.
    #[cfg(feature = "lab")]
    Lab(lab::LabArgs),
    /// Without the `lab` feature: says how to get the lab.
    #[cfg(not(feature = "lab"))]
    #[command(hide = true, disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        _args: Vec<String>,
    },
    /// Print the NodeOverlayIp and StaticRoute CRDs as YAML (generated from
    /// the Rust types), or write one file per CRD into --out.
    Crds {
        /// Directory to write `<crd-name>.yaml` files into (e.g. deploy/crds).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Show every node's overlay IP, gateway, zone and Configured condition,
    /// and every StaticRoute's per-node state (KUBECONFIG or in-cluster).
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: overlay_bins::status::Output,
        /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
    },
    /// Validate a controller config (overlay-ip-config.yaml) offline: print
    /// what it configures, or exactly what is wrong (file, field, problem).
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Work with the IPAM: the one a controller config points at (check,
    /// conformance), Kubernetes-native pools (pools) and importing embedded
    /// pools into them (migrate).
    #[command(subcommand)]
    Ipam(IpamCmd),
    /// Take over from the original deployments (the Go
    /// iks-overlay-ip-controller, the static-routes DaemonSet): plan what is
    /// adopted and what conflicts, then apply the cluster-side steps.
    #[command(subcommand)]
    Migrate(MigrateCmd),
    /// Print the manifests of a whole cluster install for one setup (CRDs,
    /// RBAC, admission policies, config, workloads, sample pools), built
    /// from the same files as deploy/:
    /// `overlayctl install [FLAGS] | kubectl apply -f -`. With --check,
    /// check a cluster's readiness instead.
    Install(install::InstallArgs),
    /// Print how to remove overlay from a cluster: kubectl commands in an
    /// order that removes routes and records while the programs that clean
    /// them up still run, and the CRDs last. Changes nothing itself.
    Uninstall {
        /// Namespace overlay was installed into.
        #[arg(long, default_value = overlay_bins::install::DEPLOY_NAMESPACE)]
        namespace: String,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateCmd {
    /// Read the cluster, the IPAM (--config) and, with --node, this node's
    /// kernel; print what will be adopted, what conflicts and why, and the
    /// steps in order. Changes nothing.
    Plan(migrate::PlanArgs),
    /// Perform the cluster-side steps: apply overlay's CRDs server-side and
    /// adopt the phpIPAM records the original made (with --config).
    /// Idempotent. Refuses while the original controller runs (its
    /// Deployment has replicas or its leader-lock ConfigMap is held).
    Apply(migrate::MigrateArgs),
}

#[derive(Debug, Subcommand)]
enum IpamCmd {
    /// Read-only check against the real IPAM: login works, every subnet
    /// exists, has a gateway, and how many addresses are free; a verdict per
    /// zone; and each subnet's entries by owner: this cluster's (live and
    /// held), other clusters', unmarked ones and markers that do not parse
    /// (never released by the controller). Credentials:
    /// PHPIPAM_USERNAME/PHPIPAM_PASSWORD (or the files).
    Check {
        /// The controller config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The cluster id to compare markers with (default: `clusterId` in
        /// the config; a derived id is shown by `overlayctl status`).
        /// Without either, every cluster id seen is listed.
        #[arg(long, env = "CLUSTER_ID")]
        cluster_id: Option<String>,
    },
    /// Free every address the IPAM holds for this cluster (live and held:
    /// the entries carrying its owner marker), for an uninstall once the
    /// controller is gone: phpIPAM entries are deleted, embedded pools'
    /// entries removed from the state file. Entries of other clusters and
    /// unmarked ones are never touched. Not for kubernetes IPAM (its
    /// OverlayIPAllocations are deleted with kubectl). Credentials:
    /// PHPIPAM_USERNAME/PHPIPAM_PASSWORD (or the files). Exit status 1
    /// when a release failed; running it again is safe.
    Release {
        /// The controller config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The cluster whose addresses go. Default: `clusterId` in the
        /// config, else the id the cluster announces (the controller's
        /// Lease, else the kube-system Namespace UID), as `overlayctl
        /// status` shows it.
        #[arg(long, env = "CLUSTER_ID")]
        cluster_id: Option<String>,
        /// Kubeconfig for finding the cluster id (default: KUBECONFIG,
        /// ~/.kube/config, in-cluster).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// List what would be released and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the IPAM conformance suite against the real server, in one zone
    /// whose subnets are scratch space: it reserves and releases addresses
    /// there (and fills them to test exhaustion), then removes everything it
    /// created, also on failure.
    Conformance {
        /// The controller config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The scratch zone.
        #[arg(long)]
        zone: String,
    },
    /// Show the OverlayIPPools of Kubernetes-native IPAM (`kubernetes: {}`)
    /// with their usage, as the controller computes it from a fresh list
    /// of pools and allocations: zone, CIDR, gateway, order, allocated/size,
    /// held, free, and whether new addresses come from each pool (the
    /// reason and what to do when not). Sorted by zone, order and name.
    Pools(ipam::PoolsArgs),
    /// Import an embedded-pools state file into Kubernetes-native IPAM:
    /// one OverlayIPAllocation per entry, for the owner (cluster id and
    /// node) written in the file, from the OverlayIPPool of its zone that
    /// contains the address; an OverlayIPClaim for each live entry; held
    /// entries keep their hold-down and get no claim. Prints the plan, then
    /// (without --dry-run) what was written. Idempotent: entries already
    /// imported are skipped. Exit status 1 when an entry conflicts (its
    /// address allocated to another owner, or no usable pool of its zone
    /// hands it out) or a request failed; the other entries are imported.
    /// Create the pools first (disabled, so that no controller hands out
    /// their addresses before the import is done; enable them after).
    Migrate(ipam::MigrateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("overlayctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Runtime::new().map_err(|e| format!("starting the runtime: {e}"))
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        #[cfg(feature = "lab")]
        Cmd::Lab(args) => return lab::lab(args),
        #[cfg(not(feature = "lab"))]
        Cmd::Lab { .. } => {
            return Err(
                "this overlayctl was built without the lab (it keeps test doubles out of release builds); run it with `cargo run -p overlay-bins --features lab --bin overlayctl -- lab`".into(),
            );
        }
        Cmd::Status { output, kubeconfig } => status(output, kubeconfig)?,
        Cmd::CheckConfig { file } => config::check_config(&file)?,
        Cmd::Ipam(IpamCmd::Check { config, cluster_id }) => {
            config::ipam_check(&config, cluster_id.as_deref())?;
        }
        Cmd::Ipam(IpamCmd::Release {
            config,
            cluster_id,
            kubeconfig,
            dry_run,
        }) => config::ipam_release(&config, cluster_id.as_deref(), kubeconfig, dry_run)?,
        Cmd::Ipam(IpamCmd::Conformance { config, zone }) => {
            config::ipam_conformance(&config, &zone)?;
        }
        Cmd::Ipam(IpamCmd::Pools(args)) => ipam::pools(args)?,
        Cmd::Ipam(IpamCmd::Migrate(args)) => return ipam::migrate(args),
        Cmd::Migrate(MigrateCmd::Plan(args)) => migrate::plan(args)?,
        Cmd::Migrate(MigrateCmd::Apply(args)) => migrate::apply(args)?,
        Cmd::Crds { out } => crds(out)?,
        Cmd::Install(args) => return install::install(args),
        Cmd::Uninstall { namespace } => install::uninstall(&namespace)?,
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "overlayctl",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `status`: the cluster as overlay sees it.
fn status(output: overlay_bins::status::Output, kubeconfig: Option<PathBuf>) -> Result<(), String> {
    let status = runtime()?.block_on(async {
        let client = overlay_bins::kube_client(kubeconfig).await?;
        overlay_bins::status::fetch(client).await
    })?;
    print!("{}", overlay_bins::status::render(&status, output)?);
    Ok(())
}

/// `crds`: the CRDs to stdout, or one file each into `out`.
fn crds(out: Option<PathBuf>) -> Result<(), String> {
    let crds = overlay_core::crd::crds_yaml().map_err(|e| format!("generating CRDs: {e}"))?;
    let Some(dir) = out else {
        let text: Vec<String> = crds.into_iter().map(|(_, y)| y).collect();
        return std::io::stdout()
            .lock()
            .write_all(text.join("---\n").as_bytes())
            .map_err(|e| format!("writing to stdout: {e}"));
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (name, yaml) in crds {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
