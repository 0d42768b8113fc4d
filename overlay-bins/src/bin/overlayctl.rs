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
