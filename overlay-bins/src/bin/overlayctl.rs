//! `overlayctl`: the operator's command line for overlay.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Operate overlay: generate CRDs, shell completions, and more.
#[derive(Debug, Parser)]
#[command(name = "overlayctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the whole system on this machine: nodes, a gateway and an on-prem
    /// host in network namespaces, the real controller and agents, then ping
    /// on-prem from every node. Needs root (or --dry-run).
    Lab(LabArgs),
    /// Print the NodeOverlayIp and StaticRoute CRDs as YAML (generated from
    /// the Rust types), or write one file per CRD into --out.
    Crds {
        /// Directory to write `<crd-name>.yaml` files into (e.g. deploy/crds).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
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
    /// Leave the namespaces in place for inspection and print how to remove them.
    #[arg(long)]
    keep: bool,
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
    /// Seconds to wait for convergence.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print the plan and change nothing (no root needed).
    #[arg(long)]
    dry_run: bool,
}

fn lab(args: LabArgs) -> Result<(), String> {
    let opts = overlay_bins::lab::LabOptions {
        nodes: args.nodes,
        zones: args.zones,
        routes: args.routes,
        keep: args.keep,
        legacy: args.legacy,
        scenario: args.scenario,
        ipam: args.ipam,
        ipam_config: args.ipam_config,
        timeout: std::time::Duration::from_secs(args.timeout),
    };
    if args.dry_run {
        print!("{}", overlay_bins::lab::describe(&opts)?);
        return Ok(());
    }
    overlay_bins::lab::check_privileges()?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| format!("starting the runtime: {e}"))?;
    let report = rt.block_on(overlay_bins::lab::run(&opts))?;
    print!("{}", report.table());
    if !report.cleanup.is_empty() {
        println!("namespaces kept; remove them with:");
        for c in &report.cleanup {
            println!("  {c}");
        }
    }
    if report.ok() {
        println!("lab: every node reached the on-prem host");
        Ok(())
    } else {
        Err("lab: some checks failed (see the table above)".into())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Cmd::Lab(args) => lab(args)?,
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
