//! `overlayctl check-config` and `overlayctl ipam`: the controller config
//! and the IPAM it points at.

use std::path::{Path, PathBuf};

use overlay_ipam::config::IpamConfig;

/// Loads a controller config, saying which file is wrong and how.
pub fn load(file: &Path) -> Result<IpamConfig, String> {
    IpamConfig::load(file).map_err(|e| format!("invalid configuration: {e}"))
}

/// `check-config`: what a valid config configures.
pub fn check_config(file: &Path) -> Result<(), String> {
    print!("{}", describe_config(&load(file)?));
    Ok(())
}

/// `ipam check`: read-only check of the real IPAM.
pub fn ipam_check(file: &Path, cluster_id: Option<&str>) -> Result<(), String> {
    let cfg = load(file)?;
    let report = super::runtime()?
        .block_on(overlay_ipam::check::check(
            &cfg,
            None,
            cluster_id.or(cfg.cluster_id.as_deref()),
        ))
        .map_err(|e| e.to_string())?;
    print!("{report}");
    if report.passed() {
        Ok(())
    } else {
        Err("the IPAM check failed (see above)".into())
    }
}

/// Why `ipam release` has nothing to do with `cfg`, if so: kubernetes
/// IPAM's addresses are API objects; embedded pools' state file is not on
/// this machine.
fn nothing_to_release(cfg: &IpamConfig, file: &Path) -> Option<String> {
    if cfg.kubernetes.is_some() {
        return Some(format!(
            "{}: kubernetes IPAM: nothing to release here; its addresses are OverlayIPAllocations, which go with their CRD (`overlayctl uninstall`, last step) or `kubectl delete overlayipallocations.iks.ibm.com --all`",
            file.display()
        ));
    }
    let state = cfg.embedded.as_ref()?.state_file.clone();
    if state.as_ref().is_some_and(|f| f.exists()) {
        return None;
    }
    let at = state.map_or("memory".to_owned(), |f| {
        format!("{} in the controller's volume", f.display())
    });
    Some(format!(
        "{}: embedded pools keep their addresses in {at}, not on this machine: nothing to release once the controller is gone (to release from a copy, point embedded.stateFile at it)",
        file.display()
    ))
}

/// `ipam release`: frees every address the IPAM holds for cluster
/// `cluster_id` (live and held), as an uninstall needs once the controller
/// is gone. With `dry_run`, only lists them.
pub fn ipam_release(
    file: &Path,
    cluster_id: Option<&str>,
    kubeconfig: Option<PathBuf>,
    dry_run: bool,
) -> Result<(), String> {
    let mut cfg = load(file)?;
    if let Some(why) = nothing_to_release(&cfg, file) {
        println!("{why}");
        return Ok(());
    }
    let rt = super::runtime()?;
    let cluster = match cluster_id.map(str::to_owned).or(cfg.cluster_id.clone()) {
        Some(id) => id,
        None => rt.block_on(async {
            let client = overlay_bins::kube_client(kubeconfig).await.map_err(|e| {
                format!(
                    "{}: no clusterId, and the cluster cannot tell it ({e}); give --cluster-id",
                    file.display()
                )
            })?;
            overlay_bins::status::cluster_id(&client)
                .await
                .map(|c| c.id)
                .ok_or_else(|| format!(
                    "{}: no clusterId, and none found in the cluster (no controller Lease, kube-system unreadable); give --cluster-id: the id in this cluster's owner markers (`overlayctl ipam check --config FILE` lists every id seen)",
                    file.display()
                ))
        })?,
    };
    cfg.cluster_id = Some(cluster.clone());
    let backend = cfg.build().map_err(|e| e.to_string())?;
    let all = rt.block_on(backend.list()).map_err(|e| e.to_string())?;
    let verb = if dry_run { "would release" } else { "released" };
    let mut failed = 0;
    for r in &all {
        let state = if r.held_until.is_some() {
            "held"
        } else {
            "live"
        };
        let outcome = if dry_run {
            Ok(())
        } else {
            rt.block_on(backend.release(r, std::time::Duration::ZERO))
        };
        match outcome {
            Ok(()) => println!(
                "{verb} {} ({state}, node {}, zone {}, subnet {})",
                r.address, r.owner.node, r.zone, r.subnet_id
            ),
            Err(e) => {
                failed += 1;
                println!("FAILED {} (node {}): {e}", r.address, r.owner.node);
            }
        }
    }
    println!(
        "{} address(es) of cluster {cluster} {verb}{}",
        all.len() - failed,
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    if failed > 0 {
        Err(format!(
            "{failed} release(s) failed (see above); run it again"
        ))
    } else {
        Ok(())
    }
}

/// `ipam conformance`: the conformance suite in a scratch zone.
pub fn ipam_conformance(file: &Path, zone: &str) -> Result<(), String> {
    let cfg = load(file)?;
    let report = super::runtime()?
        .block_on(overlay_ipam::check::conformance(&cfg, zone, None, |n| {
            eprintln!("overlayctl: {n}")
        }))
        .map_err(|e| e.to_string())?;
    print!("{report}");
    if report.passed() {
        Ok(())
    } else {
        Err("the IPAM failed the conformance suite (see above)".into())
    }
}

/// What a valid controller config configures, for `check-config`.
fn describe_config(cfg: &IpamConfig) -> String {
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
        if p.username.is_some() || p.password.is_some() {
            let _ = writeln!(
                s,
                "warning: phpIPAM.username/password are in the config file (used only when PHPIPAM_USERNAME/PHPIPAM_PASSWORD, usernameFile/passwordFile and the Secret phpipam-secret give none); move them into the Secret phpipam-secret"
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
