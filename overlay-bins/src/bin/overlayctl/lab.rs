//! `overlayctl lab` (feature `lab`): the whole system on this machine, in
//! network namespaces.

use std::path::PathBuf;
use std::process::ExitCode;

/// The options of `overlayctl lab`.
#[derive(Debug, clap::Args)]
pub struct LabArgs {
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
    /// Run the controller and agents as the images deploy/images/build.sh
    /// built (overlay-controller:VERSION, overlay-agent:VERSION), under
    /// podman with the user, capabilities and read-only root deploy/
    /// declares: the controller in the gateway namespace, an agent in each
    /// node namespace, talking to a scripted API server served in the lab.
    /// With --ipam embedded (state file on a volume), emulator or
    /// kubernetes; not with --legacy or --scenario migrate.
    #[arg(long)]
    images: bool,
    /// Print the plan and change nothing (no root needed).
    #[arg(long)]
    dry_run: bool,
}

/// Runs the lab; exit status 0 when every node converged and every ping and
/// check passed, 1 otherwise, 130/143 when stopped by SIGINT/SIGTERM.
pub fn lab(args: LabArgs) -> Result<ExitCode, String> {
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
        images: args.images,
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
