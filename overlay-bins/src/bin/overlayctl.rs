//! `overlayctl`: the operator's command line for overlay.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Operate overlay: run the local lab, inspect a cluster, check configs and
/// the IPAM, generate CRDs and shell completions.
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
    Lab(LabArgs),
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
    /// Work with the IPAM a controller config points at.
    #[command(subcommand)]
    Ipam(IpamCmd),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
}

#[derive(Debug, clap::Args)]
struct LabArgs {
    /// Number of nodes (1-50).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Number of zones (1-4); nodes are spread over them round-robin.
    #[arg(long, default_value_t = 2)]
    zones: usize,
    /// Number of StaticRoutes: the on-prem subnet plus extra /24s (1-200).
    #[arg(long, default_value_t = 1)]
    routes: usize,
    /// Leave the namespaces in place for inspection and print how to remove
    /// them (only when the run completes: Ctrl-C or SIGTERM removes
    /// everything).
    #[arg(long)]
    keep: bool,
    /// After the checks, keep the lab running (controller, agents and
    /// namespaces, live) until Ctrl-C or SIGTERM, then remove it: for
    /// inspecting a running lab with `ip netns exec`. Exits 130/143 then.
    #[arg(long, conflicts_with = "keep")]
    hold: bool,
    /// The older mode: a ConfigMap-style route list routed via the gateway
    /// discovered from the private network's route; no overlay IPs.
    #[arg(long)]
    legacy: bool,
    /// Run a scenario after convergence.
    #[arg(long, value_enum)]
    scenario: Option<overlay_bins::lab::Scenario>,
    /// IPAM for the controller.
    #[arg(long, value_enum, default_value = "embedded")]
    ipam: overlay_bins::lab::IpamChoice,
    /// Controller config (overlay-ip-config.yaml) for --ipam phpipam.
    #[arg(long, value_name = "FILE")]
    ipam_config: Option<PathBuf>,
    /// Seconds to wait for convergence; a node not converged by then fails
    /// the run (exit status 1).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print the plan and change nothing (no root needed).
    #[arg(long)]
    dry_run: bool,
}

/// Runs the lab; exit status 0 when every node converged and every ping and
/// check passed, 1 otherwise, 130/143 when stopped by SIGINT/SIGTERM.
fn lab(args: LabArgs) -> Result<ExitCode, String> {
    let opts = overlay_bins::lab::LabOptions {
        nodes: args.nodes,
        zones: args.zones,
        routes: args.routes,
        keep: args.keep,
        hold: args.hold,
        legacy: args.legacy,
        scenario: args.scenario,
        ipam: args.ipam,
        ipam_config: args.ipam_config,
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    if args.dry_run {
        print!("{}", overlay_bins::lab::describe(&opts)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| format!("starting the runtime: {e}"))?;
    rt.block_on(lab_run(&opts))
}

fn print_report(report: &overlay_bins::lab::LabReport) {
    print!("{}", report.table());
    if !report.cleanup.is_empty() {
        println!("namespaces kept; remove them with:");
        for c in &report.cleanup {
            println!("  {c}");
        }
    }
    // The verdict is the last line, and the exit status follows it.
    println!("{}", report.verdict());
}

async fn lab_run(opts: &overlay_bins::lab::LabOptions) -> Result<ExitCode, String> {
    use overlay_bins::lab::{LabError, Stop, run_until};
    // First of all, before anything is created: from here on SIGINT and
    // SIGTERM stop the lab, which removes what it built.
    let stop = Stop::on_signals()
        .map_err(|e| format!("installing the SIGINT and SIGTERM handlers: {e}"))?;
    match run_until(opts, &stop, print_report).await {
        Ok(mut report) => {
            if let Some(sig) = stop.fired() {
                // The signal came as the run finished: remove kept ones too.
                if !std::mem::take(&mut report.cleanup).is_empty() {
                    for name in &report.namespaces {
                        let _ = overlay_testbed::ip(&["netns", "del", name]);
                    }
                }
                print_report(&report);
                return Ok(stopped(sig, opts.keep));
            }
            print_report(&report);
            let kept = if report.cleanup.is_empty() {
                Vec::new()
            } else {
                report.namespaces.clone()
            };
            Ok(if leftovers(&kept) || !report.ok() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(LabError::Interrupted(sig)) => Ok(stopped(sig, opts.keep)),
        Err(LabError::Failed(e)) => {
            leftovers(&[]);
            Err(e)
        }
    }
}

/// After a stop: says what was removed; the exit status is the signal's.
fn stopped(sig: overlay_bins::lab::StopSignal, keep: bool) -> ExitCode {
    if leftovers(&[]) {
        eprintln!(
            "lab: stopped by {}; some namespaces could not be removed (see above)",
            sig.name()
        );
    } else {
        eprintln!(
            "lab: stopped by {}; removed everything the lab had created{}",
            sig.name(),
            if keep {
                " (--keep applies only to a run that completes)"
            } else {
                ""
            }
        );
    }
    ExitCode::from(sig.exit_code())
}

/// Says so when namespaces of this process other than `kept` still exist
/// (a removal failed); true then.
fn leftovers(kept: &[String]) -> bool {
    let left: Vec<String> = overlay_testbed::own_namespaces()
        .into_iter()
        .filter(|n| !kept.contains(n))
        .collect();
    if left.is_empty() {
        return false;
    }
    eprintln!("lab: could not remove these namespaces; remove them with:");
    for n in &left {
        eprintln!("  ip netns del {n}");
    }
    true
}

/// What a valid controller config configures, for `check-config`.
fn describe_config(cfg: &overlay_ipam::config::IpamConfig) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}: valid", cfg.source);
    let _ = match &cfg.cluster_id {
        Some(id) => writeln!(s, "cluster id: {id}"),
        None => writeln!(
            s,
            "cluster id: derived by the controller (the kube-system Namespace UID)"
        ),
    };
    if let Some(p) = &cfg.php_ipam {
        let _ = writeln!(
            s,
            "IPAM: phpIPAM at {} (app {}){}",
            p.url,
            p.app_id,
            if p.insecure_skip_tls_verify {
                ", TLS verification OFF"
            } else {
                ""
            }
        );
        for (zone, subnets) in &p.subnet_map {
            let ids: Vec<String> = subnets.iter().map(u64::to_string).collect();
            let _ = writeln!(
                s,
                "  zone {zone}: subnets {} (tried in order)",
                ids.join(", ")
            );
        }
    }
    if let Some(e) = &cfg.embedded {
        let _ = writeln!(
            s,
            "IPAM: embedded pools{}",
            match &e.state_file {
                Some(f) => format!(", state in {}", f.display()),
                None => " (in memory)".into(),
            }
        );
        for (zone, pools) in &e.zones {
            let list: Vec<String> = pools.iter().map(|p| p.cidr.to_string()).collect();
            let _ = writeln!(s, "  zone {zone}: {}", list.join(", "));
        }
    }
    s
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

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Cmd::Lab(args) => return lab(args),
        Cmd::Status { output, kubeconfig } => {
            let rt =
                tokio::runtime::Runtime::new().map_err(|e| format!("starting the runtime: {e}"))?;
            let status = rt.block_on(async {
                let client = overlay_bins::kube_client(kubeconfig).await?;
                overlay_bins::status::fetch(client).await
            })?;
            print!("{}", overlay_bins::status::render(&status, output)?);
        }
        Cmd::CheckConfig { file } => {
            let cfg = overlay_ipam::config::IpamConfig::load(&file)
                .map_err(|e| format!("invalid configuration: {e}"))?;
            print!("{}", describe_config(&cfg));
        }
        Cmd::Ipam(IpamCmd::Check { config, cluster_id }) => {
            let cfg = overlay_ipam::config::IpamConfig::load(&config)
                .map_err(|e| format!("invalid configuration: {e}"))?;
            let rt =
                tokio::runtime::Runtime::new().map_err(|e| format!("starting the runtime: {e}"))?;
            let report = rt
                .block_on(overlay_ipam::check::check(
                    &cfg,
                    None,
                    cluster_id.as_deref().or(cfg.cluster_id.as_deref()),
                ))
                .map_err(|e| e.to_string())?;
            print!("{report}");
            if !report.passed() {
                return Err("the IPAM check failed (see above)".into());
            }
        }
        Cmd::Ipam(IpamCmd::Conformance { config, zone }) => {
            let cfg = overlay_ipam::config::IpamConfig::load(&config)
                .map_err(|e| format!("invalid configuration: {e}"))?;
            let rt =
                tokio::runtime::Runtime::new().map_err(|e| format!("starting the runtime: {e}"))?;
            let report = rt
                .block_on(overlay_ipam::check::conformance(&cfg, &zone, None, |n| {
                    eprintln!("overlayctl: {n}")
                }))
                .map_err(|e| e.to_string())?;
            print!("{report}");
            if !report.passed() {
                return Err("the IPAM failed the conformance suite (see above)".into());
            }
        }
        Cmd::Crds { out } => {
            let crds =
                overlay_core::crd::crds_yaml().map_err(|e| format!("generating CRDs: {e}"))?;
            match out {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                    for (name, yaml) in crds {
                        let path = dir.join(format!("{name}.yaml"));
                        std::fs::write(&path, yaml)
                            .map_err(|e| format!("writing {}: {e}", path.display()))?;
                        println!("wrote {}", path.display());
                    }
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    let text: Vec<String> = crds.into_iter().map(|(_, y)| y).collect();
                    stdout
                        .write_all(text.join("---\n").as_bytes())
                        .map_err(|e| format!("writing to stdout: {e}"))?;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
