//! `overlayctl migrate plan|apply`: taking over from the original
//! deployments.

use std::path::PathBuf;

use overlay_bins::migrate::{self, GatherOptions, MigrationPlan, OriginalController};

/// Options shared by `plan` and `apply`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Controller config (overlay-ip-config.yaml, also at the original's
    /// /opt/controller-config path): with it the IPAM is asked how it holds
    /// every recorded address. Credentials as for the controller
    /// (PHPIPAM_USERNAME/PHPIPAM_PASSWORD or their files).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The cluster id of the owner markers (default: `clusterId` in the
    /// config, else the one the controller derives).
    #[arg(long, env = "CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Namespace of the original controller.
    #[arg(long, default_value = "default")]
    original_namespace: String,
    /// The original controller's Deployment.
    #[arg(long, default_value = "overlay-network-controller")]
    original_deployment: String,
    /// The original controller's leader-lock ConfigMap (operator-sdk
    /// leader-for-life).
    #[arg(long, default_value = "iks-overlay-ip-controller-lock")]
    original_lock: String,
    /// The static-routes original's ConfigMap, NAMESPACE/NAME.
    #[arg(long, default_value = "default/static-routes")]
    legacy_configmap: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

/// Output formats of `migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text.
    Text,
    /// JSON.
    Json,
}

/// `migrate plan`'s own options.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    common: MigrateArgs,
    /// Also preview this node's kernel, as the agent would see it: run on
    /// that node, as root (or with CAP_NET_ADMIN), in the host network
    /// namespace. Nothing is written to the kernel.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// The agent's parent interface for --node (default: the one holding
    /// the node's InternalIP).
    #[arg(long, requires = "node")]
    interface: Option<String>,
    /// The overlay interface name for --node.
    #[arg(long, default_value = "tmp0", requires = "node")]
    interface_label: String,
}

fn original(a: &MigrateArgs) -> OriginalController {
    OriginalController {
        namespace: a.original_namespace.clone(),
        deployment: a.original_deployment.clone(),
        lock: a.original_lock.clone(),
    }
}

fn gather_options(a: &MigrateArgs) -> Result<GatherOptions, String> {
    let (ns, name) = a
        .legacy_configmap
        .split_once('/')
        .filter(|(n, m)| !n.is_empty() && !m.is_empty())
        .ok_or_else(|| {
            format!(
                "--legacy-configmap {:?}: expected NAMESPACE/NAME such as default/static-routes",
                a.legacy_configmap
            )
        })?;
    Ok(GatherOptions {
        original: original(a),
        legacy_configmap: Some((ns.to_owned(), name.to_owned())),
    })
}

/// Reads the cluster (and the IPAM, with --config) and plans.
async fn make_plan(
    a: &MigrateArgs,
    client: &kube::Client,
) -> Result<
    (
        MigrationPlan,
        Option<(std::sync::Arc<dyn overlay_core::IpamBackend>, String)>,
    ),
    String,
> {
    let facts = migrate::gather(client, &gather_options(a)?).await?;
    let mut ipam = None;
    if let Some(file) = &a.config {
        let cfg = super::config::load(file)?;
        let cluster = match a.cluster_id.clone().or_else(|| cfg.cluster_id.clone()) {
            Some(id) => id,
            None => overlay_bins::status::cluster_id(client)
                .await
                .map(|c| c.id)
                .ok_or("cannot derive the cluster id (no controller Lease, kube-system unreadable); give --cluster-id")?,
        };
        let mut cfg = cfg;
        cfg.cluster_id = Some(cluster.clone());
        ipam = Some((cfg.build().map_err(|e| e.to_string())?, cluster));
    }
    let found = match &ipam {
        Some((b, cluster)) => migrate::inspect_records(b.as_ref(), cluster, &facts.records).await,
        None => Default::default(),
    };
    let cluster = ipam.as_ref().map(|(_, c)| c.as_str());
    Ok((migrate::plan(&original(a), &facts, &found, cluster), ipam))
}

fn print<T: serde::Serialize>(
    format: Format,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), String> {
    match format {
        Format::Text => print!("{}", text()),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
        ),
    }
    Ok(())
}

/// `migrate plan`: reads, prints, changes nothing.
pub fn plan(args: PlanArgs) -> Result<(), String> {
    super::runtime()?.block_on(async {
        let client = overlay_bins::kube_client(args.common.kubeconfig.clone()).await?;
        let (mut plan, _) = make_plan(&args.common, &client).await?;
        if let Some(node) = &args.node {
            let opts = migrate::NodePreviewOptions {
                node: node.clone(),
                interface: args.interface.clone(),
                interface_label: args.interface_label.clone(),
                legacy_configmap: Some(args.common.legacy_configmap.clone()),
                netns: None,
            };
            plan.node = Some(migrate::node_preview(&client, &opts).await?);
        }
        print(args.common.output, &plan, || plan.render())
    })
}

/// `migrate apply`: the cluster-side steps.
pub fn apply(args: MigrateArgs) -> Result<(), String> {
    super::runtime()?.block_on(async {
        let client = overlay_bins::kube_client(args.kubeconfig.clone()).await?;
        let (plan, ipam) = make_plan(&args, &client).await?;
        let ipam_ref = ipam.as_ref().map(|(b, c)| (b.as_ref(), c.as_str()));
        let outcome = migrate::apply(&client, &plan, ipam_ref).await?;
        print(args.output, &outcome, || outcome.render())
    })
}
