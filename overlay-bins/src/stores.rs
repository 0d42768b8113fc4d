//! The Kubernetes stores the binaries read and write through, built in one
//! place: the binaries call these functions, and so do the deploy tests,
//! which run them against a scripted API server and check every request
//! they make against the RBAC in `deploy/` (a role that lacks a rule the
//! code needs, or grants one it never uses, fails there, not in a cluster).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use overlay_core::agent::{Agent, AgentConfig, AgentParts};
use overlay_core::events::{Event, EventRecorder, EventType};
use overlay_core::invalid::InvalidObjects;
use overlay_core::k8s::{
    AGENT_MANAGER, CLUSTER_ID_ANNOTATION, CONTROLLER_MANAGER, KubeConfigMapRoutes, KubeEvents,
    KubeLease, KubeNodes, KubeOverlayIps, KubeStaticRoutes, OverlayIpChanges, node_field_manager,
};
use overlay_core::legacy::FileRoutes;
use overlay_core::metrics::Metrics;
use overlay_core::{
    LegacyRouteSource, NodeSource, OverlayIpStore, RouteProgrammer, StaticRouteStore,
};

/// Which inputs the agent reads besides its Node and NodeOverlayIp (the
/// agent's command-line settings of the same names).
#[derive(Debug, Clone, Default)]
pub struct AgentInputOptions {
    /// Watch StaticRoute objects (false: `--no-static-routes`, for
    /// legacy-only clusters without the CRD).
    pub static_routes: bool,
    /// Older mode: the route list in this ConfigMap, `NAMESPACE/NAME`
    /// (`STATIC_ROUTES_CONFIGMAP`).
    pub legacy_configmap: Option<String>,
    /// Older mode: the route list in this file (`STATIC_ROUTES_FILE`);
    /// ignored when `legacy_configmap` is set.
    pub legacy_file: Option<PathBuf>,
}

/// What the agent reads and writes through: its Node and NodeOverlayIp
/// (each watched alone, by a `metadata.name` field selector), the
/// StaticRoutes, the legacy route list, and the invalid-object reporter
/// whose Events concern only this node's own objects.
pub struct AgentInputs {
    /// The node itself.
    pub nodes: Arc<dyn NodeSource>,
    /// Its NodeOverlayIp (the agent writes only its own status fields).
    pub overlay_ips: Arc<dyn OverlayIpStore>,
    /// StaticRoutes, read only; `None` with `static_routes: false`.
    pub routes: Option<Arc<dyn StaticRouteStore>>,
    /// The older route list, when configured.
    pub legacy: Option<Arc<dyn LegacyRouteSource>>,
    /// Objects that do not convert (counted in the agent's metrics).
    pub invalid: InvalidObjects,
    /// Where the agent and `invalid` report measurements.
    pub metrics: Arc<dyn Metrics>,
}

/// Builds the agent's stores for node `node` on `client`, reporting to
/// `metrics`. Must run inside a Tokio runtime (the stores start their
/// watches right away). Fails only on a malformed `legacy_configmap`.
pub fn agent_inputs(
    client: Client,
    node: &str,
    options: &AgentInputOptions,
    metrics: Arc<dyn Metrics>,
) -> Result<AgentInputs, String> {
    // Objects that do not convert are logged and counted; Events are raised
    // only for this node's own objects (its NodeOverlayIp, the legacy
    // ConfigMap), not once per node for a shared StaticRoute: the controller
    // raises those.
    let events = Arc::new(KubeEvents::with_instance(
        client.clone(),
        AGENT_MANAGER,
        Some(node.to_owned()),
    ));
    let invalid = InvalidObjects::new(events)
        .with_event_kinds(&["NodeOverlayIp", "ConfigMap"])
        .with_metrics(metrics.clone());
    // The agent writes no StaticRoute (the controller sums the nodes'
    // reports up); the field manager is only what the store requires.
    let routes: Option<Arc<dyn StaticRouteStore>> = options.static_routes.then(|| {
        Arc::new(KubeStaticRoutes::new(
            client.clone(),
            node_field_manager(node),
            invalid.clone(),
        )) as Arc<dyn StaticRouteStore>
    });
    let legacy: Option<Arc<dyn LegacyRouteSource>> = match (
        &options.legacy_configmap,
        &options.legacy_file,
    ) {
        (Some(cm), _) => {
            let (ns, name) = cm
                    .split_once('/')
                    .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                    .ok_or_else(|| format!("invalid STATIC_ROUTES_CONFIGMAP {cm:?}: expected NAMESPACE/NAME such as kube-system/static-routes"))?;
            Some(Arc::new(KubeConfigMapRoutes::new(
                client.clone(),
                ns,
                name,
                invalid.clone(),
            )))
        }
        (None, Some(path)) => Some(Arc::new(
            FileRoutes::new(path.clone(), Duration::from_secs(5)).with_invalid(invalid.clone()),
        )),
        (None, None) => None,
    };
    Ok(AgentInputs {
        nodes: Arc::new(KubeNodes::new(client.clone(), Some(node), invalid.clone())),
        // Its own status writes come back through this watch: they must
        // not wake it.
        overlay_ips: Arc::new(KubeOverlayIps::with_changes(
            client,
            Some(node),
            OverlayIpChanges::IgnoreAgentStatus,
            invalid.clone(),
        )),
        routes,
        legacy,
        invalid,
        metrics,
    })
}

impl AgentInputs {
    /// The agent over these inputs.
    pub fn agent(self, cfg: AgentConfig, programmer: Arc<dyn RouteProgrammer>) -> Agent {
        Agent::new(
            cfg,
            AgentParts {
                programmer,
                nodes: self.nodes,
                overlay_ips: self.overlay_ips,
                routes: self.routes,
                legacy: self.legacy,
            },
        )
        .with_metrics(self.metrics)
    }
}

/// The controller's Event recorder (`overlay-controller`, instance
/// `POD_NAME` when set): Events about Nodes and NodeOverlayIps land in
/// `default`, those about its own Pod in the Pod's namespace.
pub fn controller_events(client: Client) -> Arc<dyn EventRecorder> {
    Arc::new(KubeEvents::new(client, CONTROLLER_MANAGER))
}

/// The stores the leading controller reconciles through: every Node,
/// every NodeOverlayIp and every StaticRoute.
pub struct ControllerStores {
    /// All nodes.
    pub nodes: Arc<dyn NodeSource>,
    /// All NodeOverlayIps.
    pub overlay_ips: Arc<dyn OverlayIpStore>,
    /// All StaticRoutes (finalizers and the summed-up status).
    pub routes: Arc<dyn StaticRouteStore>,
}

/// Builds the controller's stores on `client`, reporting objects that do
/// not convert to `invalid`. Must run inside a Tokio runtime.
pub fn controller_stores(client: Client, invalid: &InvalidObjects) -> ControllerStores {
    ControllerStores {
        nodes: Arc::new(KubeNodes::new(client.clone(), None, invalid.clone())),
        overlay_ips: Arc::new(KubeOverlayIps::new(client.clone(), None, invalid.clone())),
        routes: Arc::new(KubeStaticRoutes::new(
            client,
            CONTROLLER_MANAGER.into(),
            invalid.clone(),
        )),
    }
}

/// The controller's leader-election Lease `namespace/name`, annotated with
/// the cluster id it writes into IPAM owner markers.
pub fn controller_lease(client: Client, namespace: &str, name: &str, cluster: &str) -> KubeLease {
    KubeLease::new(
        client,
        namespace,
        name,
        [(CLUSTER_ID_ANNOTATION.to_owned(), cluster.to_owned())].into(),
    )
}

/// The Warning Event on the controller's own Pod while phpIPAM blocks its
/// IP after failed logins.
pub fn ipam_login_blocked_event(
    pod: &str,
    namespace: &str,
    block: &overlay_ipam::phpipam::Blocked,
) -> Event {
    Event {
        kind: "Pod".into(),
        namespace: Some(namespace.to_owned()),
        name: pod.to_owned(),
        type_: EventType::Warning,
        reason: "IpamLoginBlocked".into(),
        message: format!(
            "phpIPAM blocked this client's IP until {}: {}; no request is sent until then. Check the credentials (PHPIPAM_USERNAME/PHPIPAM_PASSWORD or the files)",
            humantime::format_rfc3339_seconds(block.until),
            block.message
        ),
    }
}
