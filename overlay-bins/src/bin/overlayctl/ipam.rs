//! `overlayctl ipam pools` and `overlayctl ipam migrate`: Kubernetes-native
//! IPAM's pools with their usage, and importing an embedded-pools state
//! file into it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use overlay_core::StoreError;
use overlay_core::ippool::{IpAllocation, IpPool, PoolStore};
use overlay_core::k8s::KubePoolStore;
use overlay_ipam::kubernetes::import::{
    ImportPlan, ImportReport, POOL_SAMPLE, apply_import, plan_import, read_cluster,
};
use overlay_ipam::kubernetes::pool::{ValidPool, report};
use serde::Serialize;

use super::migrate::Format;

/// `ipam pools` options.
#[derive(Debug, clap::Args)]
pub struct PoolsArgs {
    /// Output format: a table (text) or JSON.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// `ipam migrate` options.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The embedded pools' state file (`embedded.stateFile` in the
    /// controller config), e.g. copied out of the controller's volume with
    /// `kubectl cp`. Only read, never changed.
    #[arg(long, value_name = "FILE")]
    from_state_file: PathBuf,
    /// Print the plan and write nothing; the exit status still says whether
    /// every entry would be imported.
    #[arg(long)]
    dry_run: bool,
    /// Output format: text, or JSON (with --dry-run the plan, otherwise
    /// `{"plan": ..., "report": ...}`).
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// A store error, with what to do when the CRDs are missing.
fn store_error(e: StoreError) -> String {
    if e.is_not_served() {
        format!(
            "{e}; install the OverlayIPPool, OverlayIPAllocation and OverlayIPClaim CRDs (deploy/crds, or `overlayctl crds`)"
        )
    } else {
        e.to_string()
    }
}

fn json<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value)
        .map(|j| j + "\n")
        .map_err(|e| e.to_string())
}

/// One pool as `ipam pools` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolRow {
    /// Object name.
    name: String,
    /// `spec.zone`.
    zone: String,
    /// `spec.cidr`.
    cidr: String,
    /// The gateway in effect (the first host address when not set), or the
    /// spec's text when the spec is invalid.
    gateway: Option<String>,
    /// `spec.order`.
    order: i64,
    /// Addresses the pool hands out.
    size: i64,
    /// Live allocations.
    allocated: i64,
    /// Allocations held back after a release.
    held: i64,
    /// `size - allocated - held`.
    free: i64,
    /// `allocated/size`.
    usage: String,
    /// New allocations come from it.
    ready: bool,
    /// `Ready`, `Full`, `InvalidSpec`, `Overlaps`, `Disabled`, `Deleting`.
    reason: String,
    /// What the reason means and what to do.
    message: String,
}

/// The pools with their usage as the controller computes it, by zone,
/// order and name.
pub fn pool_rows(pools: &[IpPool], allocations: &[IpAllocation]) -> Vec<PoolRow> {
    let mut rows: Vec<PoolRow> = report(pools, allocations)
        .into_iter()
        .map(|(p, s)| {
            let gateway = match ValidPool::check(&p) {
                Ok(v) => Some(v.gateway().to_string()),
                Err(_) => p.gateway.clone(),
            };
            PoolRow {
                name: p.name,
                zone: p.zone,
                cidr: p.cidr,
                gateway,
                order: p.order,
                size: s.size,
                allocated: s.allocated,
                held: s.held,
                free: s.free,
                usage: s.usage,
                ready: s.ready,
                reason: s.reason,
                message: s.message,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.zone, a.order, &a.name).cmp(&(&b.zone, b.order, &b.name)));
    rows
}

/// The pools as a table, then what each pool that is not `Ready` means.
pub fn render_pools(rows: &[PoolRow]) -> String {
    if rows.is_empty() {
        return format!(
            "no OverlayIPPools in the cluster: create one per zone (see {POOL_SAMPLE}) with kubectl apply -f\n"
        );
    }
    let mut table = vec![
        [
            "NAME", "ZONE", "CIDR", "GATEWAY", "ORDER", "USAGE", "HELD", "FREE", "READY", "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in rows {
        table.push(vec![
            r.name.clone(),
            r.zone.clone(),
            r.cidr.clone(),
            r.gateway.clone().unwrap_or_else(|| "-".into()),
            r.order.to_string(),
            r.usage.clone(),
            r.held.to_string(),
            r.free.to_string(),
            if r.ready { "True" } else { "False" }.into(),
            r.reason.clone(),
        ]);
    }
    let mut out = columns(&table);
    let notes: Vec<&PoolRow> = rows.iter().filter(|r| r.reason != "Ready").collect();
    if !notes.is_empty() {
        out.push('\n');
        for r in notes {
            let _ = writeln!(out, "{}: {}", r.name, r.message);
        }
    }
    out
}

/// Rows as columns padded to their widest cell.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(c) {
                Some(m) => *m = (*m).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, w) in r.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `ipam pools`: every pool with its usage, from fresh lists.
pub fn pools(args: PoolsArgs) -> Result<(), String> {
    super::runtime()?.block_on(async {
        let client = overlay_bins::kube_client(args.kubeconfig).await?;
        let store = KubePoolStore::new(client);
        let pools = store.list_pools().await.map_err(store_error)?;
        let allocations = store.list_allocations().await.map_err(store_error)?;
        let rows = pool_rows(&pools, &allocations);
        match args.output {
            Format::Text => print!("{}", render_pools(&rows)),
            Format::Json => print!("{}", json(&rows)?),
        }
        Ok(())
    })
}

/// Reads the state file, saying which file is wrong and what to do.
fn read_state_file(file: &Path) -> Result<Vec<overlay_ipam::pools::Entry>, String> {
    overlay_ipam::file::read_state(file).map_err(|e| {
        format!(
            "{e}; give --from-state-file the embedded pools' state file (embedded.stateFile in the controller config, copied out of the controller's volume with kubectl cp); it is only read"
        )
    })
}

/// `ipam migrate --from-state-file`: plans, then (without --dry-run)
/// imports. Exit status 1 when an entry was not imported.
pub fn migrate(args: MigrateArgs) -> Result<ExitCode, String> {
    let entries = read_state_file(&args.from_state_file)?;
    let (plan, report) = super::runtime()?.block_on(async {
        let client = overlay_bins::kube_client(args.kubeconfig.clone()).await?;
        // Its own field manager: the import is not the controller's write.
        let store = KubePoolStore::new(client).with_field_manager("overlayctl-ipam-migrate");
        let cluster = read_cluster(&store).await.map_err(store_error)?;
        let plan = plan_import(
            &entries,
            &cluster.pools,
            &cluster.allocations,
            &cluster.claims,
        );
        let report = match args.dry_run {
            true => None,
            false => Some(apply_import(&store, &plan).await),
        };
        Ok::<_, String>((plan, report))
    })?;
    print!("{}", render_migration(&plan, report.as_ref(), args.output)?);
    let (conflicts, failed) = match &report {
        Some(r) => (r.summary.conflicts, r.summary.failed),
        None => (plan.summary.conflicts, 0),
    };
    if conflicts + failed == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "overlayctl: {conflicts} entries conflict and {failed} failed (see above); they were not imported. Resolve them and run again: entries already imported are skipped"
    );
    Ok(ExitCode::FAILURE)
}

/// The plan and, after an import, its report, as `-o` asks.
fn render_migration(
    plan: &ImportPlan,
    report: Option<&ImportReport>,
    output: Format,
) -> Result<String, String> {
    #[derive(Serialize)]
    struct Both<'a> {
        plan: &'a ImportPlan,
        report: &'a ImportReport,
    }
    Ok(match (output, report) {
        (Format::Json, None) => json(plan)?,
        (Format::Json, Some(report)) => json(&Both { plan, report })?,
        (Format::Text, None) => format!("{}dry run: nothing written\n", plan.render()),
        (Format::Text, Some(report)) => format!("{}\n{}", plan.render(), report.render()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, zone: &str, cidr: &str, order: i64) -> IpPool {
        IpPool {
            name: name.into(),
            uid: format!("uid-{name}"),
            zone: zone.into(),
            cidr: cidr.into(),
            order,
            ..IpPool::default()
        }
    }

    #[test]
    fn pools_are_listed_by_zone_order_and_name_with_usage_and_reasons() {
        let pools = vec![
            pool("z", "dal12", "198.51.100.0/24", 0),
            pool("b", "dal10", "192.0.2.0/25", 1),
            IpPool {
                disabled: true,
                ..pool("a", "dal10", "192.0.2.128/25", 1)
            },
            pool("first", "dal10", "203.0.113.0/30", 0),
            IpPool {
                gateway: Some("198.18.9.1".into()),
                ..pool("bad", "dal13", "198.18.0.0/24", 0)
            },
        ];
        let net = "203.0.113.2/30".parse().unwrap();
        let allocation = IpAllocation {
            name: "203-0-113-2".into(),
            resource_version: None,
            uid: String::new(),
            pool: "first".into(),
            pool_uid: "uid-first".into(),
            zone: "dal10".into(),
            owner: overlay_core::Owner::new("c1", "node-a"),
            address: net,
            gateway: "203.0.113.1".parse().unwrap(),
            held_until: None,
        };
        let rows = pool_rows(&pools, &[allocation]);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["first", "a", "b", "z", "bad"]);
        let text = render_pools(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAME")
                && lines[0].contains("USAGE")
                && lines[0].ends_with("REASON"),
            "{text}"
        );
        // /30: one host besides the gateway, and it is allocated.
        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            first,
            [
                "first",
                "dal10",
                "203.0.113.0/30",
                "203.0.113.1",
                "0",
                "1/1",
                "0",
                "0",
                "True",
                "Full"
            ],
            "{text}"
        );
        assert!(lines[2].contains("Disabled") && lines[2].contains("False"));
        assert!(text.contains("bad: spec.gateway"), "{text}");
        assert!(text.contains("a: spec.disabled is set"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&json(&rows).unwrap()).unwrap();
        assert_eq!(json[0]["usage"], "1/1");
        assert_eq!(json[4]["reason"], "InvalidSpec");
    }

    #[test]
    fn an_empty_cluster_says_how_to_create_a_pool() {
        let text = render_pools(&[]);
        assert!(
            text.contains("no OverlayIPPools")
                && text.contains("deploy/samples/overlayippool.yaml"),
            "{text}"
        );
    }
}
