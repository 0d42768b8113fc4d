//! The logic behind `overlayctl ipam check` and `overlayctl ipam
//! conformance`: a read-only health check of a controller configuration
//! against its IPAM, and the conformance suite run against a real server on
//! a scratch zone.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use overlay_core::model::Marker;
use overlay_core::{IpamBackend, Zone};

use crate::config::{ConfigError, IpamConfig};
use crate::conformance::{Fixture, Outcome, Report, ZoneCapacity, run_all};
use crate::phpipam::{AddressEntry, Credentials, PhpIpamBackend};

/// How one zone (or the whole check) fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Usable.
    Ok,
    /// Usable, but something deserves attention (e.g. no gateway).
    Warning(String),
    /// Not usable; the text says why.
    Failed(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok => f.write_str("OK"),
            Verdict::Warning(w) => write!(f, "WARNING: {w}"),
            Verdict::Failed(e) => write!(f, "FAILED: {e}"),
        }
    }
}

/// One subnet or pool of a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetCheck {
    /// phpIPAM subnet id or pool CIDR.
    pub subnet: String,
    /// The prefix, when known.
    pub network: Option<String>,
    /// The gateway, when known.
    pub gateway: Option<IpAddr>,
    /// Free addresses, when known.
    pub free: Option<u64>,
    /// Its entries by class (phpIPAM only).
    pub entries: Option<SubnetEntries>,
    /// What went wrong reading it.
    pub error: Option<String>,
}

/// A held (released, quarantined) address of this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEntry {
    /// The address.
    pub address: IpAddr,
    /// The node that released it (it gets it back if it returns).
    pub node: String,
    /// End of the hold-down.
    pub until: SystemTime,
}

/// The entries of one subnet, by class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetEntries {
    /// The cluster id compared with; `None` lists every cluster under
    /// `clusters`.
    pub cluster: Option<String>,
    /// This cluster's live reservations.
    pub live: usize,
    /// This cluster's held addresses, lowest first.
    pub held: Vec<HeldEntry>,
    /// Entries with an overlay marker of another cluster (every cluster
    /// when no cluster id was given), live and held: cluster id → count.
    pub clusters: BTreeMap<String, usize>,
    /// Entries without an overlay marker (hand-made, other tools, the
    /// gateway).
    pub unmarked: usize,
    /// Entries whose description starts with `overlay-` but does not parse
    /// as a marker: address and description. Nothing ever changes them.
    pub unparseable: Vec<(IpAddr, String)>,
}

impl SubnetEntries {
    /// Sorts `entries` into classes, comparing markers with `cluster`.
    pub fn classify<'a>(
        entries: impl IntoIterator<Item = &'a AddressEntry>,
        cluster: Option<&str>,
    ) -> Self {
        let mut out = SubnetEntries {
            cluster: cluster.map(str::to_string),
            ..SubnetEntries::default()
        };
        for e in entries {
            let d = e.description.as_deref().unwrap_or_default();
            match Marker::parse(d) {
                Some(m) if Some(m.owner().cluster.as_str()) == cluster => match m {
                    Marker::Live(_) => out.live += 1,
                    Marker::Held { owner, until } => out.held.push(HeldEntry {
                        address: e.ip,
                        node: owner.node,
                        until,
                    }),
                },
                Some(m) => *out.clusters.entry(m.owner().cluster.clone()).or_default() += 1,
                None if d.trim_start().starts_with("overlay-") => {
                    out.unparseable.push((e.ip, d.to_string()))
                }
                None => out.unmarked += 1,
            }
        }
        out.held.sort_by_key(|h| h.address);
        out.unparseable.sort();
        out
    }
}

/// Most held or unparseable entries listed one by one per subnet.
const LISTED: usize = 10;

impl fmt::Display for SubnetEntries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clusters = self
            .clusters
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        match &self.cluster {
            Some(c) => {
                write!(
                    f,
                    "this cluster ({c}): {} live, {} held; other clusters: {}",
                    self.live,
                    self.held.len(),
                    if clusters.is_empty() {
                        "none"
                    } else {
                        &clusters
                    }
                )?;
            }
            None => write!(
                f,
                "clusters seen: {}",
                if clusters.is_empty() {
                    "none"
                } else {
                    &clusters
                }
            )?,
        }
        write!(
            f,
            "; unmarked {}; unparseable overlay- markers {}",
            self.unmarked,
            self.unparseable.len()
        )?;
        let now = SystemTime::now();
        for h in self.held.iter().take(LISTED) {
            write!(
                f,
                "\n      held {} ({}) until {}{}",
                h.address,
                h.node,
                humantime::format_rfc3339_seconds(h.until),
                if h.until <= now { " (expired)" } else { "" }
            )?;
        }
        if self.held.len() > LISTED {
            write!(f, "\n      ... and {} more held", self.held.len() - LISTED)?;
        }
        for (ip, d) in self.unparseable.iter().take(LISTED) {
            write!(f, "\n      unparseable {ip}: {d:?}")?;
        }
        if self.unparseable.len() > LISTED {
            write!(
                f,
                "\n      ... and {} more unparseable",
                self.unparseable.len() - LISTED
            )?;
        }
        Ok(())
    }
}

/// One zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneCheck {
    /// The zone.
    pub zone: String,
    /// Its subnets, in order.
    pub subnets: Vec<SubnetCheck>,
    /// The verdict.
    pub verdict: Verdict,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Backend name (`phpipam`, `memory`, `file`).
    pub backend: String,
    /// Whether the backend could be reached and logged into.
    pub connection: Verdict,
    /// What the configuration exposes (plain http, unchecked TLS): see
    /// [`crate::phpipam::PhpIpamConfig::security_warnings`].
    pub warnings: Vec<String>,
    /// Per zone.
    pub zones: Vec<ZoneCheck>,
}

impl CheckReport {
    /// True when nothing failed (warnings allowed).
    pub fn passed(&self) -> bool {
        !matches!(self.connection, Verdict::Failed(_))
            && !self
                .zones
                .iter()
                .any(|z| matches!(z.verdict, Verdict::Failed(_)))
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "backend {}: {}", self.backend, self.connection)?;
        for w in &self.warnings {
            writeln!(f, "WARNING: {w}")?;
        }
        for z in &self.zones {
            writeln!(f, "zone {}: {}", z.zone, z.verdict)?;
            for s in &z.subnets {
                match &s.error {
                    Some(e) => writeln!(f, "  subnet {}: {e}", s.subnet)?,
                    None => writeln!(
                        f,
                        "  subnet {}: {} gateway {} free {}",
                        s.subnet,
                        s.network.as_deref().unwrap_or("?"),
                        s.gateway.map_or("none".to_string(), |g| g.to_string()),
                        s.free.map_or("?".to_string(), |n| n.to_string()),
                    )?,
                }
                if let Some(e) = &s.entries {
                    writeln!(f, "    entries: {e}")?;
                }
            }
        }
        Ok(())
    }
}

fn zone_verdict(subnets: &[SubnetCheck]) -> Verdict {
    if let Some(s) = subnets.iter().find(|s| s.error.is_some()) {
        return Verdict::Failed(format!(
            "subnet {}: {}",
            s.subnet,
            s.error.as_deref().unwrap_or_default()
        ));
    }
    let free: u64 = subnets.iter().filter_map(|s| s.free).sum();
    if free == 0 {
        return Verdict::Failed("no free address in any subnet".into());
    }
    let no_gw: Vec<&str> = subnets
        .iter()
        .filter(|s| s.gateway.is_none())
        .map(|s| s.subnet.as_str())
        .collect();
    if !no_gw.is_empty() {
        return Verdict::Warning(format!(
            "subnet(s) {} have no gateway; nodes get no overlay gateway and StaticRoutes that use it fail",
            no_gw.join(", ")
        ));
    }
    Verdict::Ok
}

/// Read-only check of `config` against its IPAM: login works, every subnet
/// exists, has a gateway, how many addresses are free, and (phpIPAM) its
/// entries by class, compared with `cluster` (see [`SubnetEntries`]), with
/// a verdict per zone. Nothing is reserved. `credentials` overrides the
/// environment for phpIPAM.
pub async fn check(
    config: &IpamConfig,
    credentials: Option<Credentials>,
    cluster: Option<&str>,
) -> Result<CheckReport, ConfigError> {
    config.validate()?;
    // A read-only check needs no cluster id of its own: it only compares
    // markers with `cluster`.
    let mut config = config.clone();
    config
        .cluster_id
        .get_or_insert_with(|| "overlay-check".into());
    let config = &config;
    if let (Some(p), Some(backend)) = (&config.php_ipam, config.build_phpipam(credentials)?) {
        let mut report = check_phpipam(&backend, cluster).await;
        report.warnings = p.security_warnings();
        return Ok(report);
    }
    let backend = config.build()?;
    let mut zones = Vec::new();
    let held = backend.list().await;
    if let (Some(e), Ok(held)) = (&config.embedded, &held) {
        for (zone, pools) in &e.zones {
            let subnets: Vec<SubnetCheck> = pools
                .iter()
                .map(|p| {
                    let name = p.cidr.to_string();
                    let used = held.iter().filter(|r| r.subnet_id == name).count() as u128;
                    SubnetCheck {
                        subnet: name.clone(),
                        network: Some(name),
                        gateway: Some(p.effective_gateway()),
                        free: Some(
                            u64::try_from(p.capacity().saturating_sub(used)).unwrap_or(u64::MAX),
                        ),
                        entries: None,
                        error: None,
                    }
                })
                .collect();
            zones.push(ZoneCheck {
                zone: zone.clone(),
                verdict: zone_verdict(&subnets),
                subnets,
            });
        }
    }
    Ok(CheckReport {
        backend: backend.name().to_string(),
        connection: match held {
            Ok(_) => Verdict::Ok,
            Err(e) => Verdict::Failed(e.to_string()),
        },
        warnings: Vec::new(),
        zones,
    })
}

/// [`check`] for an already built phpIPAM backend (without the
/// configuration's security warnings).
pub async fn check_phpipam(backend: &PhpIpamBackend, cluster: Option<&str>) -> CheckReport {
    let connection = match backend.check_login().await {
        Ok(()) => Verdict::Ok,
        Err(e) => Verdict::Failed(e.to_string()),
    };
    let mut zones = Vec::new();
    if connection == Verdict::Ok {
        for (zone, ids) in backend.zones() {
            let mut subnets = Vec::new();
            for &id in ids {
                let mut s = SubnetCheck {
                    subnet: id.to_string(),
                    network: None,
                    gateway: None,
                    free: None,
                    entries: None,
                    error: None,
                };
                match backend.subnet_info(id).await {
                    Ok(info) => {
                        s.network = Some(info.network.to_string());
                        s.gateway = info.gateway;
                        match backend.subnet_free(id).await {
                            Ok(n) => s.free = Some(n),
                            Err(e) => s.error = Some(e.to_string()),
                        }
                        match backend.subnet_entries(id).await {
                            Ok(list) => s.entries = Some(SubnetEntries::classify(&list, cluster)),
                            Err(e) => {
                                s.error.get_or_insert(e.to_string());
                            }
                        }
                    }
                    Err(e) => s.error = Some(e.to_string()),
                }
                subnets.push(s);
            }
            zones.push(ZoneCheck {
                zone: zone.to_string(),
                verdict: zone_verdict(&subnets),
                subnets,
            });
        }
    }
    CheckReport {
        backend: "phpipam".into(),
        connection,
        warnings: Vec::new(),
        zones,
    }
}

/// Runs the conformance suite against the IPAM of `config`, in `zone` only
/// (which should hold scratch subnets: the suite fills them to test
/// exhaustion). Owners use a fresh cluster id (`overlay-conformance-<unix
/// time>`), so nothing of a real cluster is touched. `notice` is called
/// with what is about to happen before anything is reserved. Every check
/// releases what it reserved, also on failure, and a final sweep releases
/// anything left with the suite's cluster id.
pub async fn conformance(
    config: &IpamConfig,
    zone: &str,
    credentials: Option<Credentials>,
    mut notice: impl FnMut(&str),
) -> Result<Report, ConfigError> {
    let zone_err = |problem: String| ConfigError {
        file: config.source.clone(),
        field: "--zone".into(),
        problem,
    };
    let z = Zone::parse("zone", zone).map_err(|e| zone_err(e.to_string()))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut scratch = config.clone();
    let scratch_id = format!("overlay-conformance-{stamp}");
    scratch.cluster_id = Some(scratch_id.clone());
    let health = check(&scratch, credentials.clone(), Some(&scratch_id)).await?;
    let zc = usable_zone(&health, zone).map_err(zone_err)?;
    let free: Vec<usize> = zc
        .subnets
        .iter()
        .map(|s| usize::try_from(s.free.unwrap_or(0)).unwrap_or(usize::MAX))
        .collect();
    notice(&format!(
        "conformance: will reserve and release addresses in zone {zone} (subnets {}, {} free) as cluster id {}; everything created is removed afterwards",
        zc.subnets
            .iter()
            .map(|s| s.subnet.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        free.iter().sum::<usize>(),
        scratch_id
    ));
    let backend: Arc<dyn IpamBackend> = scratch.build_with(credentials)?;
    let fixture = Fixture::new(backend.clone(), scratch_id.clone()).with_zone(ZoneCapacity {
        zone: z,
        subnets: free,
    });
    let mut report = run_all(&fixture).await;
    sweep(backend.as_ref(), &scratch_id, &mut report).await;
    Ok(report)
}

/// The check of `zone` in `health`, when the IPAM is reachable and the zone
/// configured and usable; otherwise why not.
fn usable_zone<'a>(health: &'a CheckReport, zone: &str) -> Result<&'a ZoneCheck, String> {
    if let Verdict::Failed(e) = &health.connection {
        return Err(format!("cannot reach the IPAM: {e}"));
    }
    let Some(zc) = health.zones.iter().find(|c| c.zone == zone) else {
        return Err(format!(
            "zone {zone:?} is not configured; configured zones: {}",
            health
                .zones
                .iter()
                .map(|c| c.zone.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if let Verdict::Failed(e) = &zc.verdict {
        return Err(format!("zone {zone} is not usable: {e}"));
    }
    Ok(zc)
}

/// The conformance run's safety net: releases anything still held by the
/// owners of cluster `scratch_id`, and adds a failed `cleanup` check to
/// `report` when there was anything (or the listing failed).
async fn sweep(backend: &dyn IpamBackend, scratch_id: &str, report: &mut Report) {
    let leftover = match backend.list().await {
        Ok(all) => all
            .into_iter()
            .filter(|r| r.owner.cluster == scratch_id)
            .collect(),
        Err(e) => {
            report.checks.push((
                "cleanup".into(),
                Outcome::Failed(format!("list for cleanup: {e}")),
            ));
            Vec::new()
        }
    };
    let mut failed = Vec::new();
    for r in &leftover {
        if let Err(e) = backend.release(r, std::time::Duration::ZERO).await {
            failed.push(format!("{}: {e}", r.address));
        }
    }
    if !leftover.is_empty() {
        report.checks.push((
            "cleanup".into(),
            if failed.is_empty() {
                Outcome::Failed(format!(
                    "{} reservation(s) were left behind by the checks (now released)",
                    leftover.len()
                ))
            } else {
                Outcome::Failed(format!("could not release: {}", failed.join("; ")))
            },
        ));
    }
}
