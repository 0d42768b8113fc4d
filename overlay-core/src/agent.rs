//! The agent reconciler: puts the node's overlay address on its macvlan
//! interface and programs the StaticRoutes that select the node, reporting
//! per-node status. Written against the traits only.
//!
//! Safety rules:
//! - the kernel is changed only from a complete picture: when the node, the
//!   NodeOverlayIp or the StaticRoutes cannot be read (the initial list has
//!   not completed), nothing is applied and the routes in place stay;
//! - one input that can be read but not trusted costs only itself: a
//!   garbage `ipAddr` keeps the last good address (and, on a fresh agent
//!   that has none, leaves the interface and every route as they are); a
//!   StaticRoute that does not convert is reported Failed in its status and
//!   the others are applied;
//! - the legacy list keeps its last good value when it becomes unreadable or
//!   malformed; never read successfully, it removes nothing;
//! - routes that would shadow the node's own networks are refused and
//!   reported, never installed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::error::{ProgrammerError, StoreError};
use crate::metrics::AgentMetrics;
use crate::model::{
    ApplyReport, DesiredNodeState, DiscoveredRoute, DriftEvent, NodeInfo, OverlayInterface,
    RouteResult, RouteSpec, RouteState,
};
use crate::parse::{Cidr, InterfaceName, ParseError};
use crate::repeats::Repeats;
use crate::traits::{
    AgentStatus, GatewayChoice, LegacyRouteSource, NodeRouteStatus, NodeSource, OverlayIpRecord,
    OverlayIpStore, RouteProgrammer, StaticRouteRecord, StaticRouteStore,
};

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (`NODE_NAME`).
    pub node_name: String,
    /// Parent interface (`INTERFACE`); `None`: the one holding the node's
    /// InternalIP.
    pub interface: Option<InterfaceName>,
    /// Overlay interface name (`INTERFACE_LABEL`, default `tmp0`).
    pub interface_label: InterfaceName,
    /// Destinations never routed (pod and service ranges, ...), besides the
    /// default route and the node's own addresses.
    pub protected: Vec<Cidr>,
    /// Prefix whose covering route gives the gateway in legacy mode
    /// (default `10.0.0.0/8`).
    pub legacy_gateway_from: Cidr,
    /// Period of the full resync safety net.
    pub resync: Duration,
}

impl AgentConfig {
    /// Defaults for `node_name`: `tmp0`, legacy gateway from `10.0.0.0/8`,
    /// resync every 5 minutes.
    pub fn new(node_name: impl Into<String>) -> Result<Self, ParseError> {
        Ok(Self {
            node_name: node_name.into(),
            interface: None,
            interface_label: InterfaceName::parse("INTERFACE_LABEL", "tmp0")?,
            protected: Vec::new(),
            legacy_gateway_from: Cidr::parse("LEGACY_GATEWAY_FROM", "10.0.0.0/8")?,
            resync: Duration::from_secs(300),
        })
    }
}

/// A reconcile that could not run; nothing was changed in the kernel.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// An input could not be read.
    #[error("node {node}: reading {what}: {source}")]
    Read {
        /// This node.
        node: String,
        /// What was read.
        what: &'static str,
        /// Cause.
        source: StoreError,
    },
    /// The programmer failed as a whole (e.g. no permission).
    #[error("node {node}: {source}")]
    Program {
        /// This node.
        node: String,
        /// Cause.
        source: ProgrammerError,
    },
    /// The node object does not exist (yet).
    #[error("node {node} not found; is NODE_NAME right?")]
    NoNode {
        /// This node.
        node: String,
    },
}

/// What one reconcile did.
#[derive(Debug, Clone, Default)]
pub struct AgentReport {
    /// The programmer's report.
    pub apply: ApplyReport,
    /// Status written per StaticRoute name.
    pub statuses: BTreeMap<String, NodeRouteStatus>,
    /// Whether the overlay interface was removed.
    pub interface_removed: bool,
}

/// One route the node should have and where it came from.
struct Planned {
    owner: Option<String>,
    status: NodeRouteStatus,
    route: Option<RouteSpec>,
}

/// The agent reconciler.
pub struct Agent {
    cfg: AgentConfig,
    programmer: Arc<dyn RouteProgrammer>,
    nodes: Arc<dyn NodeSource>,
    overlay_ips: Arc<dyn OverlayIpStore>,
    routes: Option<Arc<dyn StaticRouteStore>>,
    legacy: Option<Arc<dyn LegacyRouteSource>>,
    metrics: AgentMetrics,
    last_legacy: Mutex<Option<Vec<Cidr>>>,
    /// The overlay interface and gateway last applied from a valid
    /// NodeOverlayIp, kept while the object's address is garbage.
    last_overlay: Mutex<Option<(OverlayInterface, Option<IpAddr>)>>,
    discovered: Mutex<HashMap<Cidr, DiscoveredRoute>>,
    lock: Mutex<()>,
    ready: std::sync::atomic::AtomicBool,
}

impl Agent {
    /// Builds an agent. `routes` is `None` when the StaticRoute CRD is not
    /// used (legacy-only); `legacy` is the ConfigMap route list when the
    /// older mode is on.
    pub fn new(
        cfg: AgentConfig,
        programmer: Arc<dyn RouteProgrammer>,
        nodes: Arc<dyn NodeSource>,
        overlay_ips: Arc<dyn OverlayIpStore>,
        routes: Option<Arc<dyn StaticRouteStore>>,
        legacy: Option<Arc<dyn LegacyRouteSource>>,
        metrics: AgentMetrics,
    ) -> Self {
        Self {
            cfg,
            programmer,
            nodes,
            overlay_ips,
            routes,
            legacy,
            metrics,
            last_legacy: Mutex::new(None),
            last_overlay: Mutex::new(None),
            discovered: Mutex::new(HashMap::new()),
            lock: Mutex::new(()),
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// True once a reconcile has completed, which needs the initial lists of
    /// every input (for `/readyz`). An agent that cannot reach the API
    /// server at start stays not ready, and keeps running.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read_err(&self, what: &'static str) -> impl Fn(StoreError) -> AgentError + '_ {
        move |source| AgentError::Read {
            node: self.cfg.node_name.clone(),
            what,
            source,
        }
    }

    /// Computes the desired state from every input, applies it, removes the
    /// overlay interface when the NodeOverlayIp is gone, and writes status.
    pub async fn reconcile(&self) -> Result<AgentReport, AgentError> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        let name = self.cfg.node_name.clone();
        let node = self
            .nodes
            .get(&name)
            .await
            .map_err(self.read_err("Node"))?
            .ok_or_else(|| AgentError::NoNode { node: name.clone() })?;
        let record = self
            .overlay_ips
            .get(&name)
            .await
            .map_err(self.read_err("NodeOverlayIp"))?;
        let static_routes = match &self.routes {
            Some(s) => s.list().await.map_err(self.read_err("StaticRoutes"))?,
            None => Vec::new(),
        };
        let (legacy, legacy_unknown) = self.legacy_subnets().await;

        let live = record.as_ref().filter(|r| !r.deleting);
        // A garbage address keeps the last good one; with none known (a
        // fresh agent), the interface and every route stay as they are.
        let address_problem = live.and_then(|r| r.address_error.clone());
        let (overlay, gateway) = match (live, &address_problem) {
            (_, Some(_)) => self.last_overlay.lock().await.clone().unzip(),
            (Some(r), None) => match r.ip_addr {
                Some(address) => (
                    Some(OverlayInterface {
                        name: self.cfg.interface_label.clone(),
                        parent: match self.parent(&node).await {
                            Ok(p) => p,
                            Err(e) => return Err(self.report_failure(live, e).await),
                        },
                        address,
                    }),
                    r.gateway.map(Some),
                ),
                None => (None, None),
            },
            (None, None) => (None, None),
        };
        let gateway = gateway.flatten();
        let keep_unlisted = legacy_unknown || (address_problem.is_some() && overlay.is_none());

        let mut planned = Vec::new();
        for sr in &static_routes {
            if sr.deleting {
                continue;
            }
            let spec = match &sr.spec {
                Ok(s) => s,
                Err(msg) => {
                    planned.push(Planned {
                        owner: Some(sr.name.clone()),
                        status: self.status(
                            "",
                            "",
                            RouteState::Failed,
                            format!("invalid spec: {msg}"),
                        ),
                        route: None,
                    });
                    continue;
                }
            };
            if !spec.selector.matches(&node.labels) {
                continue;
            }
            planned.push(
                self.plan(
                    Some(sr.name.clone()),
                    spec.subnet,
                    &spec.gateway,
                    spec.table,
                    spec.metric,
                    &node,
                    overlay.as_ref(),
                    gateway,
                )
                .await,
            );
        }
        for subnet in legacy.iter().flatten() {
            let choice = GatewayChoice::Discover(self.cfg.legacy_gateway_from);
            let p = self
                .plan(
                    None,
                    *subnet,
                    &choice,
                    None,
                    None,
                    &node,
                    overlay.as_ref(),
                    gateway,
                )
                .await;
            if p.route.is_none() {
                warn!(node = %name, %subnet, reason = %p.status.message, "static-routes ConfigMap entry not applied");
            }
            planned.push(p);
        }

        // One kernel route per (destination, table, metric): the first
        // (StaticRoutes by name, then legacy) wins; later ones are reported.
        let mut seen: HashMap<(Cidr, u32, u32), String> = HashMap::new();
        for p in &mut planned {
            if let Some(r) = &p.route {
                let who = p
                    .owner
                    .clone()
                    .unwrap_or_else(|| "static-routes ConfigMap".into());
                if let Some(first) = seen.get(&r.key()) {
                    if p.owner.is_some() {
                        p.status = self.status(
                            &p.status.device,
                            &p.status.gateway,
                            RouteState::Failed,
                            format!("{} is already routed by {first}", r.destination),
                        );
                    }
                    p.route = None;
                } else {
                    seen.insert(r.key(), who);
                }
            }
        }

        if let (Some(why), None) = (&address_problem, &overlay) {
            for p in planned
                .iter_mut()
                .filter(|p| p.status.state == RouteState::Pending)
            {
                p.status.message = format!(
                    "this node's NodeOverlayIp address is invalid ({why}); the route in place is kept"
                );
            }
        }
        let desired = DesiredNodeState {
            overlay: overlay.clone(),
            routes: planned.iter().filter_map(|p| p.route.clone()).collect(),
            keep_unlisted,
            scope: Default::default(),
        };
        let apply = match self.programmer.apply(&desired).await {
            Ok(a) => a,
            Err(source) => {
                let e = AgentError::Program {
                    node: name.clone(),
                    source,
                };
                return Err(self.report_failure(live, e).await);
            }
        };
        if let Some(a) = apply.address_added {
            info!(node = %name, interface = %self.cfg.interface_label, address = %a, "overlay address configured");
        }
        for a in &apply.addresses_removed {
            // Not the desired address: a released one (which may be handed
            // to another node after its hold-down) or one left by other
            // tooling.
            info!(node = %name, interface = %self.cfg.interface_label, address = %a, "removed an address that is not this node's overlay address");
        }
        let outcome: HashMap<_, _> = apply
            .routes
            .iter()
            .map(|o| (o.route.key(), o.result.clone()))
            .collect();

        if address_problem.is_none()
            && let Some(o) = &overlay
        {
            *self.last_overlay.lock().await = Some((o.clone(), gateway));
        }
        let mut interface_removed = false;
        if overlay.is_none() && address_problem.is_none() {
            interface_removed = self
                .programmer
                .remove_interface(&self.cfg.interface_label)
                .await
                .map_err(|source| AgentError::Program {
                    node: name.clone(),
                    source,
                })?;
            if interface_removed {
                info!(node = %name, interface = %self.cfg.interface_label, "removed overlay interface (no NodeOverlayIp)");
            }
        }

        // Status: this node's entries only.
        let mut report = AgentReport {
            apply,
            statuses: BTreeMap::new(),
            interface_removed,
        };
        let (mut applied, mut failed) = (0, 0);
        for p in &mut planned {
            if let Some(r) = &p.route {
                match outcome.get(&r.key()) {
                    Some(RouteResult::Failed(msg)) => {
                        p.status.state = RouteState::Failed;
                        p.status.message = msg.clone();
                        failed += 1;
                    }
                    Some(_) => applied += 1,
                    None => {}
                }
            } else if p.status.state == RouteState::Failed {
                failed += 1;
            }
        }
        self.metrics
            .set_routes(desired.routes.len(), applied, failed);
        self.write_route_status(&static_routes, &planned, &mut report)
            .await;
        if let Some(rec) = live {
            self.write_agent_status(rec, overlay.as_ref(), address_problem.as_deref())
                .await;
        }
        self.metrics
            .apply_latency
            .observe(started.elapsed().as_secs_f64());
        debug!(node = %name, writes = report.apply.kernel_writes, routes = desired.routes.len(), "reconciled");
        Ok(report)
    }

    /// Reports a failed reconcile in the NodeOverlayIp's Configured
    /// condition (so `kubectl get noip -o wide` and `overlayctl status`
    /// show why), then hands the error back.
    async fn report_failure(&self, live: Option<&OverlayIpRecord>, e: AgentError) -> AgentError {
        if let Some(rec) = live {
            let status = self.not_configured("ApplyFailed", e.to_string());
            self.put_agent_status(rec, status).await;
        }
        e
    }

    /// An agent status saying the address is not configured, and why.
    fn not_configured(&self, reason: &str, message: String) -> AgentStatus {
        AgentStatus {
            interface: self
                .cfg
                .interface
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            interface_label: self.cfg.interface_label.to_string(),
            configured: false,
            reason: reason.into(),
            message,
            routes: Vec::new(),
            gateways: Vec::new(),
        }
    }

    /// Writes the agent's NodeOverlayIp status when it differs from what is
    /// recorded; a failed write is logged (the next reconcile retries).
    async fn put_agent_status(&self, rec: &OverlayIpRecord, status: AgentStatus) {
        if rec.agent.as_ref() != Some(&status)
            && let Err(e) = self.overlay_ips.set_agent_status(&rec.name, &status).await
        {
            warn!(node = %rec.name, error = %e, "writing NodeOverlayIp agent status failed");
        }
    }

    async fn parent(&self, node: &NodeInfo) -> Result<InterfaceName, AgentError> {
        if let Some(i) = &self.cfg.interface {
            return Ok(i.clone());
        }
        for ip in &node.internal_ips {
            match self.programmer.interface_with_address(*ip).await {
                Ok(Some(i)) => return Ok(i),
                Ok(None) => {}
                Err(source) => {
                    return Err(AgentError::Program {
                        node: node.name.clone(),
                        source,
                    });
                }
            }
        }
        Err(AgentError::Program {
            node: node.name.clone(),
            source: ProgrammerError::MissingParent {
                parent: format!("(interface holding InternalIP {:?})", node.internal_ips),
            },
        })
    }

    fn status(
        &self,
        device: &str,
        gateway: &str,
        state: RouteState,
        message: String,
    ) -> NodeRouteStatus {
        NodeRouteStatus {
            hostname: self.cfg.node_name.clone(),
            device: device.to_owned(),
            gateway: gateway.to_owned(),
            state,
            message,
        }
    }

    /// Why `subnet` must not be routed on this node, if it must not.
    fn shadows(
        &self,
        subnet: &Cidr,
        node: &NodeInfo,
        overlay: Option<&OverlayInterface>,
    ) -> Option<String> {
        if subnet.prefix() == 0 {
            return Some(format!("{subnet} would replace the node's default route"));
        }
        for ip in &node.internal_ips {
            if subnet.network().contains(*ip) {
                return Some(format!(
                    "{subnet} contains the node's InternalIP {ip} and would cut the node off"
                ));
            }
        }
        if let Some(o) = overlay {
            let own = Cidr::from_network(o.address);
            if subnet.overlaps(&own) {
                return Some(format!("{subnet} overlaps the node's overlay subnet {own}"));
            }
        }
        self.cfg
            .protected
            .iter()
            .find(|p| p.overlaps(subnet))
            .map(|p| format!("{subnet} overlaps protected subnet {p} (PROTECTED_SUBNETS)"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn plan(
        &self,
        owner: Option<String>,
        subnet: Cidr,
        choice: &GatewayChoice,
        table: Option<u32>,
        metric: Option<u32>,
        node: &NodeInfo,
        overlay: Option<&OverlayInterface>,
        overlay_gateway: Option<IpAddr>,
    ) -> Planned {
        if let Some(why) = self.shadows(&subnet, node, overlay) {
            return Planned {
                owner,
                status: self.status("", "", RouteState::Failed, format!("refused: {why}")),
                route: None,
            };
        }
        let (gateway, device) = match choice {
            GatewayChoice::Overlay => match (overlay, overlay_gateway) {
                (Some(o), Some(g)) => (g, Some(o.name.clone())),
                (Some(_), None) => {
                    return Planned {
                        owner,
                        status: self.status(self.cfg.interface_label.as_str(), "", RouteState::Failed,
                            "the overlay subnet has no gateway; set spec.gateway or give the IPAM subnet a gateway".into()),
                        route: None,
                    };
                }
                (None, _) => {
                    return Planned {
                        owner,
                        status: self.status(
                            "",
                            "",
                            RouteState::Pending,
                            "waiting for this node's overlay IP (NodeOverlayIp)".into(),
                        ),
                        route: None,
                    };
                }
            },
            GatewayChoice::Fixed(g) => (*g, None),
            GatewayChoice::Discover(prefix) => match self.discover(prefix).await {
                Ok((d, note)) => {
                    if let Some(n) = note {
                        warn!(node = %self.cfg.node_name, %subnet, "{n}");
                    }
                    (d.gateway, Some(d.device))
                }
                Err(e) => {
                    return Planned {
                        owner,
                        status: self.status("", "", RouteState::Failed, e.to_string()),
                        route: None,
                    };
                }
            },
        };
        let route = RouteSpec {
            destination: subnet,
            gateway: Some(gateway),
            device: device.clone(),
            table,
            metric,
        };
        Planned {
            owner,
            status: self.status(
                device.as_ref().map(InterfaceName::as_str).unwrap_or(""),
                &gateway.to_string(),
                RouteState::Applied,
                String::new(),
            ),
            route: Some(route),
        }
    }

    /// The legacy subnets: the fresh list, or the last good one when the
    /// source is unreadable or malformed. The flag is true when no list is
    /// known at all (never read successfully): then nothing is removed, so
    /// legacy routes already in the kernel stay, and everything else is
    /// applied.
    async fn legacy_subnets(&self) -> (Option<Vec<Cidr>>, bool) {
        let Some(src) = self.legacy.as_ref() else {
            return (None, false);
        };
        let mut last = self.last_legacy.lock().await;
        match src.subnets().await {
            Ok(list) => *last = Some(list),
            Err(e) => match last.as_ref() {
                Some(kept) => {
                    warn!(node = %self.cfg.node_name, error = %e, kept = kept.len(),
                        "static-routes list unreadable or malformed; keeping the last good list");
                }
                None => {
                    warn!(node = %self.cfg.node_name, error = %e,
                        "static-routes list unreadable or malformed and never read before; routes in place are kept, nothing is removed");
                    return (None, true);
                }
            },
        }
        (last.clone(), false)
    }

    /// Gateway discovery with a last-known-good fallback, so a transient
    /// lookup failure never removes a route that works.
    async fn discover(
        &self,
        prefix: &Cidr,
    ) -> Result<(DiscoveredRoute, Option<String>), ProgrammerError> {
        match self.programmer.discover_gateway(prefix).await {
            Ok(d) => {
                self.discovered.lock().await.insert(*prefix, d.clone());
                Ok((d, None))
            }
            Err(e) => match self.discovered.lock().await.get(prefix) {
                Some(d) => Ok((
                    d.clone(),
                    Some(format!(
                        "gateway discovery failed ({e}); using the last known gateway"
                    )),
                )),
                None => Err(e),
            },
        }
    }

    async fn write_route_status(
        &self,
        all: &[StaticRouteRecord],
        planned: &[Planned],
        report: &mut AgentReport,
    ) {
        let _ = all;
        for p in planned {
            let Some(owner) = &p.owner else { continue };
            report.statuses.insert(owner.clone(), p.status.clone());
        }
    }

    async fn write_agent_status(
        &self,
        rec: &OverlayIpRecord,
        overlay: Option<&OverlayInterface>,
        address_problem: Option<&str>,
    ) {
        let status = match (overlay, address_problem) {
            (Some(o), None) => AgentStatus {
                routes: Vec::new(),
                gateways: Vec::new(),
                interface: o.parent.to_string(),
                interface_label: o.name.to_string(),
                configured: true,
                reason: "AddressConfigured".into(),
                message: format!("{} on {} (parent {})", o.address, o.name, o.parent),
            },
            (Some(o), Some(why)) => AgentStatus {
                interface: o.parent.to_string(),
                ..self.not_configured(
                    "InvalidAddress",
                    format!(
                        "{why}; keeping the last good address {} on {}",
                        o.address, o.name
                    ),
                )
            },
            (None, Some(why)) => self.not_configured(
                "InvalidAddress",
                format!("{why}; the overlay interface and routes in place are left as they are"),
            ),
            (None, None) => {
                self.not_configured("WaitingForAddress", "status.ipAddr is not set yet".into())
            }
        };
        self.put_agent_status(rec, status).await;
    }

    /// Runs until `shutdown` completes: reconciles on every change of the
    /// node, its NodeOverlayIp, the StaticRoutes and the legacy list, on
    /// drift overruns, and periodically. Leaves routes and address in place
    /// on exit.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut changes = futures::stream::select_all(vec![
            self.nodes.watch().map(|_| ()).boxed(),
            self.overlay_ips.watch().map(|_| ()).boxed(),
            match &self.routes {
                Some(r) => r.watch().map(|_| ()).boxed(),
                None => futures::stream::pending().boxed(),
            },
            match &self.legacy {
                Some(l) => l.changes(),
                None => futures::stream::pending().boxed(),
            },
        ]);
        let mut drift = self.programmer.drift();
        let mut resync = tokio::time::interval(self.cfg.resync);
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        let errors = Repeats::new(Duration::from_secs(60));
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = resync.tick() => {}
                _ = retry => {}
                Some(()) = changes.next() => {
                    // Coalesce a burst of events into one reconcile.
                    while let Some(Some(())) = changes.next().now_or_never() {}
                }
                ev = drift.next() => match ev {
                    Some(DriftEvent::Repaired { writes }) => {
                        self.metrics.repairs.inc();
                        debug!(writes, "programmer repaired drift");
                        continue;
                    }
                    Some(DriftEvent::Overrun) => {}
                    Some(_) => continue,
                    None => { drift = futures::stream::pending().boxed(); continue; }
                },
            }
            // A reconcile waiting on an unreachable API server must not hold
            // up shutdown: SIGTERM leaves everything in place anyway.
            let result = tokio::select! {
                _ = &mut shutdown => break,
                r = self.reconcile() => r,
            };
            match result {
                Ok(_) => {
                    self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
                    if let Some(n) = errors.success() {
                        info!(node = %self.cfg.node_name, failures = n, "agent reconcile succeeded again");
                    }
                    failures = 0;
                    retry_at = None;
                    self.metrics.reconciled(true);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_millis(250)
                        .saturating_mul(1u32 << failures.min(8))
                        .min(Duration::from_secs(60));
                    if let Some(repeats) = errors.failure() {
                        warn!(error = %e, retry_in_ms = delay.as_millis() as u64, repeats,
                            "agent reconcile failed; routes in place are kept");
                    }
                    retry_at = Some(tokio::time::Instant::now() + delay);
                    self.metrics.reconciled(false);
                }
            }
        }
        info!(node = %self.cfg.node_name, "agent stopped; routes and address left in place");
    }
}

/// Parses the older deployment's route list: a JSON array of subnets such
/// as `["192.168.1.0/24"]`. Every entry must be a CIDR; one bad entry
/// rejects the list (so a typo never removes routes).
pub fn parse_legacy_routes(json: &str) -> Result<Vec<Cidr>, ParseError> {
    let list: Vec<String> = serde_json::from_str(json).map_err(|e| {
        ParseError::new(
            "routes",
            json,
            format!("expected a JSON array of CIDR strings such as [\"192.168.1.0/24\"]: {e}"),
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, s)| Cidr::parse(&format!("routes[{i}]"), s))
        .collect()
}
