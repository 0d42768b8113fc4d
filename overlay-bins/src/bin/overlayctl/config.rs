//! `overlayctl check-config` and `overlayctl ipam`: the controller config
//! and the IPAM it points at.

use std::path::Path;

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
