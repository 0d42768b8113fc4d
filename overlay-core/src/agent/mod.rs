//! The agent reconciler: puts the node's overlay address on its macvlan
//! interface and programs the StaticRoutes that select the node, reporting
//! each route's result in the node's own NodeOverlayIp status. Written
//! against the traits only.
//!
//! Safety rules:
//! - the kernel is changed only from a complete picture: when the node, the
//!   NodeOverlayIp or the StaticRoutes cannot be read (the initial list has
//!   not completed), nothing is applied and the routes in place stay;
//! - one input that can be read but not trusted costs only itself: an
//!   `ipAddr` that is garbage, or that the agent refuses (a prefix shorter
//!   than /8 or /32, an overlap with the node's network, a gateway outside
//!   the prefix), keeps the last good address (and, on a fresh agent that
//!   has none, leaves the interface and every route as they are); a
//!   StaticRoute that does not convert is reported Failed and the others
//!   are applied;
//! - the legacy list keeps its last good value when it becomes unreadable,
//!   malformed (not a JSON array) or deleted; never read successfully, it
//!   removes nothing; an entry that is not a subnet is skipped and logged,
//!   and the others are applied;
//! - routes that would shadow the node's own networks are refused and
//!   reported, never installed;
//! - routes are removed only in the tables and devices of the agent's own
//!   routes, now or as reported before a restart, and a default route never.
//!
//! A StaticRoute added, changed or removed is applied as a change
//! ([`RouteProgrammer::update`]); everything else, and the periodic resync,
//! runs the full pass ([`Agent::reconcile`]).

pub mod checks;
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::error::{ProgrammerError, StoreError};
use crate::legacy::LegacyEntryProblem;
use crate::metrics::{Measurement, Metrics, NoMetrics};
use crate::model::{
    ApplyReport, DesiredNodeState, DiscoveredRoute, DriftEvent, NodeInfo, OverlayInterface,
    RouteScope, RouteState,
};
use crate::parse::{Cidr, InterfaceName, ParseError};
use crate::repeats::Repeats;
use crate::traits::{
    AgentStatus, KnownGateway, LegacyRouteSource, NodeSource, OverlayIpRecord, OverlayIpStore,
    RouteProgrammer, RouteReport, StaticRouteRecord, StaticRouteStore, StoreEvent,
};

use plan::{Discovery, PlanContext, PlannedRoute, RouteKey, RouteRequest};

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
    /// Period of the full resync safety net; must not be zero.
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

    /// Checks settings that parse but cannot work: a zero resync period,
    /// and an overlay interface named like its parent (the agent would
    /// manage the node's own interface).
    pub fn validate(&self) -> Result<(), ParseError> {
        if self.resync.is_zero() {
            return Err(ParseError::new(
                "RESYNC_SECONDS",
                "0",
                "the resync period must be at least 1 second (default 300)",
            ));
        }
        if self.interface.as_ref() == Some(&self.interface_label) {
            return Err(ParseError::new(
                "INTERFACE_LABEL",
                self.interface_label.as_str(),
                "the overlay interface must not be named like its parent INTERFACE: the agent would take over the node's own interface; choose another name (default tmp0)",
            ));
        }
        Ok(())
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
    /// The settings cannot work on this node (e.g. the detected parent
    /// interface is named like the overlay interface).
    #[error("node {node}: {source}")]
    Config {
        /// This node.
        node: String,
        /// What is wrong.
        source: ParseError,
    },
}

/// What one reconcile did.
#[derive(Debug, Clone, Default)]
pub struct AgentReport {
    /// The programmer's report.
    pub apply: ApplyReport,
    /// The result of each StaticRoute selecting the node (of each one
    /// concerned, for [`Agent::apply_route_changes`]), by route name, as
    /// written into the NodeOverlayIp status.
    pub reports: BTreeMap<String, RouteReport>,
    /// Whether the overlay interface was removed.
    pub interface_removed: bool,
    /// Whether the NodeOverlayIp status was written.
    pub status_written: bool,
}

/// The overlay interface to have, and why not when the address is refused.
#[derive(Debug, Clone, Default)]
struct OverlaySetup {
    iface: Option<OverlayInterface>,
    gateway: Option<IpAddr>,
    /// Set when the address is garbage or refused: the interface (if any)
    /// is the last good one.
    problem: Option<String>,
    /// The API server does not serve NodeOverlayIp (its CRD is not
    /// installed): no address to configure, and an overlay interface left
    /// from before is left alone.
    not_served: bool,
}

/// What the last full pass planned: the base of incremental changes.
struct LastPass {
    node: NodeInfo,
    overlay: OverlaySetup,
    /// The live NodeOverlayIp's name, when there is one to write status to.
    record: Option<String>,
    /// Plans of the StaticRoutes that select the node (invalid ones too).
    routes: BTreeMap<String, PlannedRoute>,
    /// Their reports, as in the status.
    reports: BTreeMap<String, RouteReport>,
    /// Route keys of the StaticRoute plans, by owner.
    claims: std::collections::HashMap<RouteKey, String>,
    /// Kernel keys of the legacy routes.
    legacy_keys: BTreeSet<RouteKey>,
    /// Keys claimed by more than one route: changes to them need a full
    /// pass (the winner may change).
    contested: BTreeSet<RouteKey>,
    /// The status last written (or found).
    status: Option<AgentStatus>,
}

/// Everything the agent remembers between passes (held for a whole pass,
/// so passes never overlap).
#[derive(Default)]
struct Memory {
    legacy: Option<Vec<Cidr>>,
    /// The entries of the legacy list last skipped (logged when they change).
    legacy_problems: Vec<LegacyEntryProblem>,
    /// The overlay interface and gateway last applied from a valid
    /// NodeOverlayIp, kept while the object's address is garbage.
    last_overlay: Option<(OverlayInterface, Option<IpAddr>)>,
    /// Gateways found by discovery, by prefix: the last good ones.
    discovered: BTreeMap<Cidr, DiscoveredRoute>,
    /// Whether the persisted gateways were loaded (once, at the first pass).
    gateways_loaded: bool,
    /// Why the node has no overlay address, as last logged.
    no_address: Option<String>,
    /// Whether the StaticRoute kind was last seen not served.
    routes_not_served: bool,
    last: Option<LastPass>,
}

/// One full pass between plan and report.
struct Pass {
    overlay: OverlaySetup,
    /// StaticRoutes by name.
    planned: BTreeMap<String, PlannedRoute>,
    /// The legacy list's routes.
    legacy: Vec<PlannedRoute>,
    /// Routes wanted by more than one source.
    contested: BTreeSet<RouteKey>,
    desired: DesiredNodeState,
}

/// The inputs of one full pass.
struct Inputs {
    node: NodeInfo,
    record: Option<OverlayIpRecord>,
    routes: Vec<StaticRouteRecord>,
    legacy: Option<Vec<Cidr>>,
    /// No legacy list was ever read: remove nothing.
    legacy_unknown: bool,
    /// The API server does not serve NodeOverlayIp (no CRD).
    overlay_not_served: bool,
    /// The API server does not serve StaticRoute (no CRD) although the
    /// agent watches them: none applies, and nothing is removed.
    routes_not_served: bool,
}

/// What an [`Agent`] works with.
pub struct AgentParts {
    /// Writes the node's interface and routes.
    pub programmer: Arc<dyn RouteProgrammer>,
    /// Reads Nodes (this node's zone and addresses).
    pub nodes: Arc<dyn NodeSource>,
    /// Reads this node's NodeOverlayIp and writes its status.
    pub overlay_ips: Arc<dyn OverlayIpStore>,
    /// StaticRoutes; `None` when the CRD is not used (legacy-only).
    pub routes: Option<Arc<dyn StaticRouteStore>>,
    /// The older ConfigMap route list, when that mode is on.
    pub legacy: Option<Arc<dyn LegacyRouteSource>>,
}

/// The agent reconciler.
pub struct Agent {
    cfg: AgentConfig,
    programmer: Arc<dyn RouteProgrammer>,
    nodes: Arc<dyn NodeSource>,
    overlay_ips: Arc<dyn OverlayIpStore>,
    routes: Option<Arc<dyn StaticRouteStore>>,
    legacy: Option<Arc<dyn LegacyRouteSource>>,
    metrics: Arc<dyn Metrics>,
    memory: Mutex<Memory>,
    ready: std::sync::atomic::AtomicBool,
}

/// Why the agent woke up.
enum Wake {
    /// Something only the full pass handles.
    Full,
    /// StaticRoute changes, applied incrementally.
    Routes(Vec<StoreEvent<StaticRouteRecord>>),
    /// Nothing that matters to this agent (e.g. its own status write).
    Nothing,
}

impl Agent {
    /// Builds an agent over its collaborators; measurements go nowhere
    /// until [`Agent::with_metrics`].
    pub fn new(cfg: AgentConfig, parts: AgentParts) -> Self {
        let AgentParts {
            programmer,
            nodes,
            overlay_ips,
            routes,
            legacy,
        } = parts;
        Self {
            cfg,
            programmer,
            nodes,
            overlay_ips,
            routes,
            legacy,
            metrics: Arc::new(NoMetrics),
            memory: Mutex::new(Memory::default()),
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Reports measurements to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn Metrics>) -> Self {
        self.metrics = metrics;
        self
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

    fn program_err(&self) -> impl Fn(ProgrammerError) -> AgentError + '_ {
        move |source| AgentError::Program {
            node: self.cfg.node_name.clone(),
            source,
        }
    }

    /// The full pass: computes the desired state from every input, applies
    /// it, removes the overlay interface when the NodeOverlayIp is gone,
    /// and writes the node's status.
    pub async fn reconcile(&self) -> Result<AgentReport, AgentError> {
        let mut mem = self.memory.lock().await;
        let started = Instant::now();
        let inputs = self.read_inputs(&mut mem).await?;
        let live = inputs.record.as_ref().filter(|r| !r.deleting);
        let overlay = if inputs.overlay_not_served {
            not_served_overlay(&mem)
        } else {
            match self.observe_overlay(&mut mem, &inputs.node, live).await {
                Ok(o) => o,
                Err(e) => return Err(self.report_failure(&mut mem, live, e).await),
            }
        };
        self.note_no_address(&mut mem, &overlay, live);
        let mut pass = self.plan_pass(&mut mem, &inputs, live, overlay).await;
        let apply = match self.programmer.apply(&pass.desired).await {
            Ok(a) => a,
            Err(source) => {
                let e = self.program_err()(source);
                return Err(self.report_failure(&mut mem, live, e).await);
            }
        };
        let report = self.settle_pass(&mut mem, &mut pass, apply).await?;
        let report = self
            .report_pass(&mut mem, inputs.node, live, pass, report)
            .await;
        self.metrics
            .record(Measurement::AgentApplied(started.elapsed()));
        debug!(node = %self.cfg.node_name, writes = report.apply.kernel_writes, "reconciled");
        Ok(report)
    }

    /// What a full pass would ask the kernel for, computed from every
    /// input exactly as [`Agent::reconcile`] computes it, without applying
    /// or reporting anything (`overlayctl migrate plan --node` hands it to
    /// the netlink programmer's read-only preview). A fresh agent's view:
    /// what it would do on its first pass.
    pub async fn desired(&self) -> Result<DesiredNodeState, AgentError> {
        let mut mem = self.memory.lock().await;
        let inputs = self.read_inputs(&mut mem).await?;
        let live = inputs.record.as_ref().filter(|r| !r.deleting);
        let overlay = self.observe_overlay(&mut mem, &inputs.node, live).await?;
        Ok(self
            .plan_pass(&mut mem, &inputs, live, overlay)
            .await
            .desired)
    }

    /// Observe: the overlay interface this node should have, from its
    /// live NodeOverlayIp (the persisted gateways are loaded once, first).
    async fn observe_overlay(
        &self,
        mem: &mut Memory,
        node: &NodeInfo,
        live: Option<&OverlayIpRecord>,
    ) -> Result<OverlaySetup, AgentError> {
        if !mem.gateways_loaded {
            mem.gateways_loaded = true;
            restore_gateways(mem, live);
        }
        self.overlay_setup(mem, node, live).await
    }

    /// Plan: every route this node should have, and the desired state.
    async fn plan_pass(
        &self,
        mem: &mut Memory,
        inputs: &Inputs,
        live: Option<&OverlayIpRecord>,
        overlay: OverlaySetup,
    ) -> Pass {
        let ctx = PlanContext {
            cfg: &self.cfg,
            node: &inputs.node,
            overlay: overlay.iface.as_ref(),
            gateway: overlay.gateway,
        };
        let mut discovery = Discovery::default();
        let mut planned = self
            .plan_static_routes(mem, &ctx, &inputs.routes, &mut discovery)
            .await;
        let mut legacy = self
            .plan_legacy(mem, &ctx, inputs.legacy.as_deref(), &mut discovery)
            .await;
        let contested = plan::settle_duplicates(&mut planned, &mut legacy);
        let broken = overlay.problem.is_some() && overlay.iface.is_none();
        if let (Some(why), true) = (&overlay.problem, broken) {
            plan::mark_kept(&mut planned, why);
        }
        let desired = DesiredNodeState {
            overlay: overlay.iface.clone(),
            routes: planned
                .values()
                .chain(legacy.iter())
                .filter_map(|p| p.route.clone())
                .collect(),
            keep_unlisted: inputs.legacy_unknown || broken || inputs.routes_not_served,
            scope: self.scope(mem, live, inputs.legacy.is_some()),
        };
        Pass {
            overlay,
            planned,
            legacy,
            contested,
            desired,
        }
    }

    /// Apply's aftermath: each route's outcome, the last good interface,
    /// an unused interface removed, the route gauges.
    async fn settle_pass(
        &self,
        mem: &mut Memory,
        pass: &mut Pass,
        apply: ApplyReport,
    ) -> Result<AgentReport, AgentError> {
        self.log_address_changes(&apply);
        plan::record_outcomes(pass.planned.values_mut(), &apply.routes);
        plan::record_outcomes(pass.legacy.iter_mut(), &apply.routes);
        if pass.overlay.problem.is_none()
            && let Some(o) = &pass.overlay.iface
        {
            mem.last_overlay = Some((o.clone(), pass.overlay.gateway));
        }
        let interface_removed = self.remove_interface_if_unused(&pass.overlay).await?;
        self.count_routes(&pass.planned, &pass.legacy, pass.desired.routes.len());
        Ok(AgentReport {
            apply,
            reports: plan::reports(&pass.planned),
            interface_removed,
            status_written: false,
        })
    }

    /// Report: the node's status on its NodeOverlayIp, and the pass kept
    /// for the incremental updates that follow.
    async fn report_pass(
        &self,
        mem: &mut Memory,
        node: NodeInfo,
        live: Option<&OverlayIpRecord>,
        pass: Pass,
        mut report: AgentReport,
    ) -> AgentReport {
        let status = live.map(|rec| {
            let mut s =
                self.agent_status(&pass.overlay, report.reports.values().cloned().collect());
            s.gateways = known_gateways(mem);
            (rec, s)
        });
        if let Some((rec, s)) = &status {
            report.status_written = self
                .put_agent_status(&rec.name, rec.agent.as_ref(), s)
                .await;
        }
        mem.last = Some(LastPass {
            node,
            overlay: pass.overlay,
            record: live.map(|r| r.name.clone()),
            claims: plan::claims(&pass.planned),
            routes: pass.planned,
            reports: report.reports.clone(),
            legacy_keys: pass
                .legacy
                .iter()
                .filter_map(|p| p.route.as_ref().map(|r| r.key()))
                .collect(),
            contested: pass.contested,
            status: status.map(|(_, s)| s),
        });
        report
    }

    /// Applies StaticRoute changes on top of the last full pass, writing
    /// only the routes concerned and one status. `Ok(None)` when they need
    /// the full pass instead: no pass yet, a route whose key another route
    /// claims too, a watch restart, or a programmer without incremental
    /// updates.
    pub async fn apply_route_changes(
        &self,
        events: &[StoreEvent<StaticRouteRecord>],
    ) -> Result<Option<AgentReport>, AgentError> {
        let mut mem = self.memory.lock().await;
        let started = Instant::now();
        let Some(next) = plan::changed_records(events) else {
            return Ok(None);
        };
        let Some(plans) = self.plan_changes(&mut mem, next).await else {
            return Ok(None);
        };
        let Some(last) = mem.last.as_mut() else {
            return Ok(None);
        };
        let Some(changes) = plan::changes(last, &plans) else {
            return Ok(None);
        };
        let apply = if changes.is_empty() {
            ApplyReport::default()
        } else {
            match self.programmer.update(&changes).await {
                Ok(a) => a,
                Err(ProgrammerError::Unsupported { .. }) => return Ok(None),
                Err(e) => return Err(self.program_err()(e)),
            }
        };
        let (reports, changed) = plan::fold_in(last, plans, &apply.routes);
        let mut report = AgentReport {
            apply,
            reports,
            ..Default::default()
        };
        // One status write, only when a report changed.
        if changed && let (Some(name), Some(prev)) = (last.record.clone(), last.status.take()) {
            let status = AgentStatus {
                routes: last.reports.values().cloned().collect(),
                ..prev
            };
            report.status_written = self.put_agent_status(&name, None, &status).await;
            last.status = Some(status);
        }
        self.metrics
            .record(Measurement::AgentApplied(started.elapsed()));
        debug!(node = %self.cfg.node_name, writes = report.apply.kernel_writes, changed = events.len(), "applied route changes");
        Ok(Some(report))
    }

    /// Plans the changed StaticRoutes (`None`: deleted) against the last
    /// full pass's node and interface; `None` before the first full pass.
    async fn plan_changes(
        &self,
        mem: &mut Memory,
        next: BTreeMap<String, Option<plan::Unplanned>>,
    ) -> Option<BTreeMap<String, Option<PlannedRoute>>> {
        let last = mem.last.as_ref()?;
        let node = last.node.clone();
        let overlay = last.overlay.clone();
        let ctx = PlanContext {
            cfg: &self.cfg,
            node: &node,
            overlay: overlay.iface.as_ref(),
            gateway: overlay.gateway,
        };
        let mut discovery = Discovery::default();
        let mut plans = BTreeMap::new();
        for (name, rec) in next {
            let plan = match rec {
                Some(p) => self.plan_one(mem, &ctx, p, &mut discovery).await,
                None => None,
            };
            plans.insert(name, plan);
        }
        Some(plans)
    }

    async fn read_inputs(&self, mem: &mut Memory) -> Result<Inputs, AgentError> {
        let name = self.cfg.node_name.as_str();
        let node = self
            .nodes
            .get(name)
            .await
            .map_err(self.read_err("Node"))?
            .ok_or_else(|| AgentError::NoNode { node: name.into() })?;
        // A kind the API server does not serve (no CRD) has no objects:
        // the legacy list still applies, via the discovered gateway.
        let (record, overlay_not_served) = match self.overlay_ips.get(name).await {
            Ok(r) => (r, false),
            Err(e) if e.is_not_served() => (None, true),
            Err(e) => return Err(self.read_err("NodeOverlayIp")(e)),
        };
        let (routes, routes_not_served) = match &self.routes {
            Some(s) => match s.list().await {
                Ok(r) => (r, false),
                Err(e) if e.is_not_served() => (Vec::new(), true),
                Err(e) => return Err(self.read_err("StaticRoutes")(e)),
            },
            None => (Vec::new(), false),
        };
        self.note_routes_not_served(mem, routes_not_served);
        let (legacy, legacy_unknown) = self.legacy_subnets(mem).await;
        Ok(Inputs {
            node,
            record,
            routes,
            legacy,
            legacy_unknown,
            overlay_not_served,
            routes_not_served,
        })
    }

    /// The overlay interface to have. A garbage or refused address keeps
    /// the last good one; with none known (a fresh agent), the interface
    /// and every route stay as they are.
    async fn overlay_setup(
        &self,
        mem: &Memory,
        node: &NodeInfo,
        live: Option<&OverlayIpRecord>,
    ) -> Result<OverlaySetup, AgentError> {
        let Some(rec) = live else {
            return Ok(OverlaySetup::default());
        };
        let problem = match (&rec.address_error, rec.ip_addr) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(address)) => {
                let nets = self.internal_networks(node).await?;
                checks::refuse_address(address, rec.gateway, node, &nets)
            }
            (None, None) => None,
        };
        if let Some(why) = problem {
            let (iface, gateway) = mem.last_overlay.clone().unzip();
            return Ok(OverlaySetup {
                iface,
                gateway: gateway.flatten(),
                problem: Some(why),
                not_served: false,
            });
        }
        let Some(address) = rec.ip_addr else {
            return Ok(OverlaySetup::default());
        };
        let parent = self.parent(node).await?;
        if parent == self.cfg.interface_label {
            return Err(AgentError::Config {
                node: node.name.clone(),
                source: ParseError::new(
                    "INTERFACE_LABEL",
                    self.cfg.interface_label.as_str(),
                    "the node's private interface (holding its InternalIP) has this name; the agent would take it over: choose another INTERFACE_LABEL",
                ),
            });
        }
        Ok(OverlaySetup {
            iface: Some(OverlayInterface {
                name: self.cfg.interface_label.clone(),
                parent,
                address,
            }),
            gateway: rec.gateway,
            problem: None,
            not_served: false,
        })
    }

    /// The node's InternalIPs with the prefix of the kernel address holding
    /// them, where the programmer knows it.
    async fn internal_networks(
        &self,
        node: &NodeInfo,
    ) -> Result<Vec<ipnetwork::IpNetwork>, AgentError> {
        let mut out = Vec::new();
        for ip in &node.internal_ips {
            if let Some(n) = self
                .programmer
                .address_network(*ip)
                .await
                .map_err(self.program_err())?
            {
                out.push(n);
            }
        }
        Ok(out)
    }

    async fn plan_static_routes(
        &self,
        mem: &mut Memory,
        ctx: &PlanContext<'_>,
        all: &[StaticRouteRecord],
        discovery: &mut Discovery,
    ) -> BTreeMap<String, PlannedRoute> {
        let mut out = BTreeMap::new();
        for sr in all {
            if let Some(p) = self
                .plan_one(mem, ctx, plan::Unplanned::from(sr), discovery)
                .await
            {
                out.insert(sr.name.clone(), p);
            }
        }
        out
    }

    /// The plan of one StaticRoute; `None` when it does not concern this
    /// node (not selected, or being deleted).
    async fn plan_one(
        &self,
        mem: &mut Memory,
        ctx: &PlanContext<'_>,
        route: plan::Unplanned,
        discovery: &mut Discovery,
    ) -> Option<PlannedRoute> {
        let request = match route.into_request(ctx)? {
            Ok(r) => r,
            Err(failed) => return Some(failed),
        };
        let found = match &request.gateway {
            crate::GatewayChoice::Discover(prefix) => {
                Some(self.discover_once(mem, prefix, discovery).await)
            }
            _ => None,
        };
        Some(ctx.plan(request, found))
    }

    async fn plan_legacy(
        &self,
        mem: &mut Memory,
        ctx: &PlanContext<'_>,
        subnets: Option<&[Cidr]>,
        discovery: &mut Discovery,
    ) -> Vec<PlannedRoute> {
        let Some(subnets) = subnets.filter(|s| !s.is_empty()) else {
            return Vec::new();
        };
        let prefix = self.cfg.legacy_gateway_from;
        let found = self.discover_once(mem, &prefix, discovery).await;
        subnets
            .iter()
            .map(|subnet| {
                let p = ctx.plan(RouteRequest::legacy(*subnet, prefix), Some(found.clone()));
                if p.route.is_none() {
                    warn!(node = %self.cfg.node_name, %subnet, reason = %p.status.message, "static-routes ConfigMap entry not applied");
                }
                p
            })
            .collect()
    }

    /// Gateway discovery, once per prefix and pass, with the last good
    /// gateway as fallback so a transient lookup failure never removes a
    /// route that works.
    async fn discover_once(
        &self,
        mem: &mut Memory,
        prefix: &Cidr,
        discovery: &mut Discovery,
    ) -> Result<DiscoveredRoute, String> {
        if let Some(r) = discovery.get(prefix) {
            return r.clone();
        }
        let r = match self.programmer.discover_gateway(prefix).await {
            Ok(d) => {
                mem.discovered.insert(*prefix, d.clone());
                Ok(d)
            }
            Err(e) => match mem.discovered.get(prefix) {
                Some(d) => {
                    warn!(node = %self.cfg.node_name, %prefix, error = %e, gateway = %d.gateway,
                        "gateway discovery failed; using the last known gateway");
                    Ok(d.clone())
                }
                None => Err(e.to_string()),
            },
        };
        discovery.insert(*prefix, r.clone());
        r
    }

    /// Where stale routes may be removed: the tables and devices of the
    /// routes this agent reported before (also before a restart), of the
    /// legacy routes (main table, discovered devices), and the overlay
    /// interface. The programmer adds those of the routes desired now.
    fn scope(&self, mem: &Memory, live: Option<&OverlayIpRecord>, legacy: bool) -> RouteScope {
        let mut scope = RouteScope::default();
        let reported = live
            .and_then(|r| r.agent.as_ref())
            .into_iter()
            .chain(mem.last.as_ref().and_then(|l| l.status.as_ref()));
        for status in reported {
            for r in &status.routes {
                scope
                    .tables
                    .insert(r.table.unwrap_or(crate::model::MAIN_TABLE));
                if let Ok(d) = InterfaceName::parse("device", &r.device) {
                    scope.devices.insert(d);
                }
            }
        }
        if legacy {
            scope.tables.insert(crate::model::MAIN_TABLE);
        }
        scope
            .devices
            .extend(mem.discovered.values().map(|d| d.device.clone()));
        scope.devices.insert(self.cfg.interface_label.clone());
        scope
    }

    fn log_address_changes(&self, apply: &ApplyReport) {
        let (node, iface) = (&self.cfg.node_name, &self.cfg.interface_label);
        if let Some(a) = apply.address_added {
            info!(node = %node, interface = %iface, address = %a, "overlay address configured");
        }
        for a in &apply.addresses_removed {
            // Not the desired address: a released one (which may be handed
            // to another node after its hold-down) or one left by other
            // tooling.
            info!(node = %node, interface = %iface, address = %a, "removed an address that is not this node's overlay address");
        }
    }

    /// Removes the overlay interface when the node has no NodeOverlayIp
    /// (and its address is not merely unreadable).
    async fn remove_interface_if_unused(&self, overlay: &OverlaySetup) -> Result<bool, AgentError> {
        if overlay.iface.is_some() || overlay.problem.is_some() || overlay.not_served {
            return Ok(false);
        }
        let removed = self
            .programmer
            .remove_interface(&self.cfg.interface_label)
            .await
            .map_err(self.program_err())?;
        if removed {
            info!(node = %self.cfg.node_name, interface = %self.cfg.interface_label, "removed overlay interface (no NodeOverlayIp address)");
        }
        Ok(removed)
    }

    fn count_routes(
        &self,
        planned: &BTreeMap<String, PlannedRoute>,
        legacy: &[PlannedRoute],
        desired: usize,
    ) {
        let states: Vec<RouteState> = planned
            .values()
            .chain(legacy.iter())
            .map(|p| p.status.state)
            .collect();
        let count = |s| states.iter().filter(|x| **x == s).count();
        self.metrics.record(Measurement::AgentRoutes {
            desired,
            applied: count(RouteState::Applied),
            failed: count(RouteState::Failed),
        });
    }

    /// Reports a failed reconcile in the NodeOverlayIp's Configured
    /// condition (so `kubectl get noip -o wide` and `overlayctl status`
    /// show why), keeping the route reports, then hands the error back.
    async fn report_failure(
        &self,
        mem: &mut Memory,
        live: Option<&OverlayIpRecord>,
        e: AgentError,
    ) -> AgentError {
        if let Some(rec) = live {
            let mut status = self.not_configured("ApplyFailed", e.to_string());
            if let Some(prev) = &rec.agent {
                status.routes = prev.routes.clone();
                status.gateways = prev.gateways.clone();
            }
            self.put_agent_status(&rec.name, rec.agent.as_ref(), &status)
                .await;
            if let Some(last) = mem.last.as_mut() {
                last.status = Some(status);
            }
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

    /// Writes the agent's NodeOverlayIp status when it differs from
    /// `current`; a failed write is logged (the next pass retries). Whether
    /// it wrote.
    async fn put_agent_status(
        &self,
        name: &str,
        current: Option<&AgentStatus>,
        status: &AgentStatus,
    ) -> bool {
        if current == Some(status) {
            return false;
        }
        match self.overlay_ips.set_agent_status(name, status).await {
            Ok(()) => true,
            Err(e) => {
                warn!(node = %name, error = %e, "writing NodeOverlayIp agent status failed");
                false
            }
        }
    }

    async fn parent(&self, node: &NodeInfo) -> Result<InterfaceName, AgentError> {
        if let Some(i) = &self.cfg.interface {
            return Ok(i.clone());
        }
        for ip in &node.internal_ips {
            if let Some(i) = self
                .programmer
                .interface_with_address(*ip)
                .await
                .map_err(self.program_err())?
            {
                return Ok(i);
            }
        }
        Err(self.program_err()(ProgrammerError::MissingParent {
            parent: format!("(interface holding InternalIP {:?})", node.internal_ips),
        }))
    }

    /// The legacy subnets: the fresh list, or the last good one when the
    /// source is unreadable, malformed or gone. The flag is true when no
    /// list is known at all (never read successfully): then nothing is
    /// removed, so legacy routes already in the kernel stay, and everything
    /// else is applied.
    async fn legacy_subnets(&self, mem: &mut Memory) -> (Option<Vec<Cidr>>, bool) {
        let Some(src) = self.legacy.as_ref() else {
            return (None, false);
        };
        match src.routes().await {
            Ok(list) => {
                self.report_skipped_entries(mem, list.problems);
                mem.legacy = Some(list.subnets);
            }
            Err(e) => match mem.legacy.as_ref() {
                Some(kept) => {
                    warn!(node = %self.cfg.node_name, error = %e, kept = kept.len(),
                        "static-routes list unreadable, malformed or deleted; keeping the last good list");
                }
                None => {
                    warn!(node = %self.cfg.node_name, error = %e,
                        "static-routes list unreadable, malformed or deleted, and never read before; routes in place are kept, nothing is removed");
                    return (None, true);
                }
            },
        }
        (mem.legacy.clone(), false)
    }

    /// Logs why the node has no overlay address (no NodeOverlayIp CRD, no
    /// NodeOverlayIp, no `status.ipAddr` yet) when that changes, and where
    /// the legacy routes go meanwhile.
    fn note_no_address(
        &self,
        mem: &mut Memory,
        overlay: &OverlaySetup,
        live: Option<&OverlayIpRecord>,
    ) {
        let why = match (overlay.not_served, live, &overlay.iface) {
            (true, _, None) => Some(
                "the API server does not serve NodeOverlayIp (the CRD is not installed)".to_owned(),
            ),
            (true, _, Some(o)) => Some(format!(
                "the API server does not serve NodeOverlayIp (is the CRD installed?); {} stays on {} until it is served again",
                o.address, o.name
            )),
            (false, None, _) => Some(format!(
                "there is no NodeOverlayIp {} (the controller creates it)",
                self.cfg.node_name
            )),
            (false, Some(r), None) if overlay.problem.is_none() && r.ip_addr.is_none() => {
                Some(format!("NodeOverlayIp {} has no status.ipAddr yet", r.name))
            }
            _ => None,
        };
        if why == mem.no_address {
            return;
        }
        match &why {
            Some(w) if self.legacy.is_some() => {
                info!(node = %self.cfg.node_name, reason = %w, legacy_gateway_from = %self.cfg.legacy_gateway_from,
                    "no overlay address from a NodeOverlayIp; static-routes entries go via the gateway of the route covering legacy_gateway_from");
            }
            Some(w) => {
                info!(node = %self.cfg.node_name, reason = %w, "no overlay address from a NodeOverlayIp")
            }
            None => {}
        }
        mem.no_address = why;
    }

    /// Logs, when it changes, that StaticRoutes are watched but the API
    /// server does not serve them.
    fn note_routes_not_served(&self, mem: &mut Memory, not_served: bool) {
        if not_served == mem.routes_not_served {
            return;
        }
        mem.routes_not_served = not_served;
        if not_served {
            warn!(node = %self.cfg.node_name,
                "the API server does not serve StaticRoute (the CRD is not installed): no StaticRoute applies, and no route is removed until it is served; on clusters without the CRD run the agent with --no-static-routes (NO_STATIC_ROUTES=true)");
        } else {
            info!(node = %self.cfg.node_name, "the API server serves StaticRoute again");
        }
    }

    /// Logs the entries of the legacy list that are skipped (not subnets),
    /// once per change of the list's problems; the others are applied.
    fn report_skipped_entries(&self, mem: &mut Memory, problems: Vec<LegacyEntryProblem>) {
        if problems == mem.legacy_problems {
            return;
        }
        for p in &problems {
            warn!(node = %self.cfg.node_name, index = p.index, entry = %p.entry, reason = %p.reason,
                "static-routes entry is not a subnet; skipped, the other entries are applied");
        }
        if problems.is_empty() {
            info!(node = %self.cfg.node_name, "every static-routes entry is a subnet again");
        }
        mem.legacy_problems = problems;
    }

    fn agent_status(&self, overlay: &OverlaySetup, routes: Vec<RouteReport>) -> AgentStatus {
        let base = match (&overlay.iface, &overlay.problem) {
            (Some(o), None) => AgentStatus {
                interface: o.parent.to_string(),
                interface_label: o.name.to_string(),
                configured: true,
                reason: "AddressConfigured".into(),
                message: format!("{} on {} (parent {})", o.address, o.name, o.parent),
                routes: Vec::new(),
                gateways: Vec::new(),
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
        AgentStatus { routes, ..base }
    }

    /// What woke the agent, and whether it needs a full pass.
    async fn classify(&self, change: Change) -> Wake {
        let mem = self.memory.lock().await;
        let Some(last) = mem.last.as_ref() else {
            return Wake::Full;
        };
        let me = self.cfg.node_name.as_str();
        match change {
            Change::Route(ev) => Wake::Routes(vec![ev]),
            Change::Node(StoreEvent::Applied(n)) if n.name != me => Wake::Nothing,
            Change::Node(StoreEvent::Applied(n)) if n == last.node => Wake::Nothing,
            Change::Node(StoreEvent::Deleted(n)) if n != me => Wake::Nothing,
            Change::OverlayIp(StoreEvent::Applied(r)) if r.name != me => Wake::Nothing,
            Change::OverlayIp(StoreEvent::Applied(r))
                if last.record.as_deref() == Some(me) && !r.deleting && same_address(&r, last) =>
            {
                Wake::Nothing
            }
            Change::OverlayIp(StoreEvent::Deleted(n)) if n != me => Wake::Nothing,
            _ => Wake::Full,
        }
    }

    /// Runs until `shutdown` completes: applies StaticRoute changes as they
    /// come, runs the full pass on every relevant change of the node, its
    /// NodeOverlayIp and the legacy list, on drift overruns, and
    /// periodically. Leaves routes and address in place on exit. An invalid
    /// configuration (see [`AgentConfig::validate`]) is logged and the agent
    /// does not start.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        if let Err(e) = self.cfg.validate() {
            tracing::error!(node = %self.cfg.node_name, error = %e, "invalid agent configuration; not starting");
            return;
        }
        let mut changes = self.changes().fuse();
        let mut drift = self.programmer.drift().fuse();
        let mut resync = tokio::time::interval(self.cfg.resync);
        let shutdown = shutdown.fuse();
        futures::pin_mut!(shutdown);
        let mut retry = Retry::default();
        loop {
            let wake = futures::select_biased! {
                () = shutdown => break,
                _ = resync.tick().fuse() => Wake::Full,
                () = retry.wait().fuse() => Wake::Full,
                c = changes.select_next_some() => self.gather(c, &mut changes).await,
                ev = drift.select_next_some() => match ev {
                    DriftEvent::Repaired { writes } => {
                        self.metrics.record(Measurement::AgentRepaired);
                        debug!(writes, "programmer repaired drift");
                        continue;
                    }
                    DriftEvent::Overrun => Wake::Full,
                    _ => continue,
                },
            };
            // A pass waiting on an unreachable API server must not hold up
            // shutdown: SIGTERM leaves everything in place anyway.
            let result = futures::select_biased! {
                () = shutdown => break,
                r = self.handle(wake).fuse() => r,
            };
            match result {
                Ok(()) => {
                    self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
                    retry.succeeded(&self.cfg.node_name);
                    self.metrics
                        .record(Measurement::AgentReconciled { ok: true });
                }
                Err(e) => {
                    retry.failed(&e);
                    self.metrics
                        .record(Measurement::AgentReconciled { ok: false });
                }
            }
        }
        info!(node = %self.cfg.node_name, "agent stopped; routes and address left in place");
    }

    /// Every watched input as one stream of changes.
    fn changes(&self) -> BoxStream<'static, Change> {
        futures::stream::select_all(vec![
            self.nodes
                .watch()
                .map(|ev| ev.map_or(Change::Error, Change::Node))
                .boxed(),
            self.overlay_ips
                .watch()
                .map(|ev| ev.map_or(Change::Error, Change::OverlayIp))
                .boxed(),
            match &self.routes {
                Some(r) => r
                    .watch()
                    .map(|ev| ev.map_or(Change::Error, Change::Route))
                    .boxed(),
                None => futures::stream::pending().boxed(),
            },
            match &self.legacy {
                Some(l) => l.changes().map(|()| Change::Legacy).boxed(),
                None => futures::stream::pending().boxed(),
            },
        ])
        .boxed()
    }

    /// Coalesces a burst of changes into one wake-up.
    async fn gather(
        &self,
        first: Change,
        rest: &mut futures::stream::Fuse<BoxStream<'static, Change>>,
    ) -> Wake {
        let mut wake = self.classify(first).await;
        while let Some(Some(c)) = rest.next().now_or_never() {
            wake = match (wake, self.classify(c).await) {
                (Wake::Full, _) | (_, Wake::Full) => Wake::Full,
                (Wake::Routes(mut a), Wake::Routes(b)) => {
                    a.extend(b);
                    Wake::Routes(a)
                }
                (Wake::Routes(a), Wake::Nothing) | (Wake::Nothing, Wake::Routes(a)) => {
                    Wake::Routes(a)
                }
                (Wake::Nothing, Wake::Nothing) => Wake::Nothing,
            };
        }
        wake
    }

    async fn handle(&self, wake: Wake) -> Result<(), AgentError> {
        match wake {
            Wake::Nothing => Ok(()),
            Wake::Full => self.reconcile().await.map(|_| ()),
            Wake::Routes(events) => match self.apply_route_changes(&events).await? {
                Some(_) => Ok(()),
                None => self.reconcile().await.map(|_| ()),
            },
        }
    }
}

/// One change from a watched input.
enum Change {
    Node(StoreEvent<NodeInfo>),
    OverlayIp(StoreEvent<OverlayIpRecord>),
    Route(StoreEvent<StaticRouteRecord>),
    Legacy,
    Error,
}

/// True when `r` carries the address the last pass worked from (a change
/// of the agent's own status part, e.g. its own write, needs no pass).
fn same_address(r: &OverlayIpRecord, last: &LastPass) -> bool {
    let applied = match (&last.overlay.iface, &last.overlay.problem) {
        (Some(o), None) => Some(o.address),
        _ => None,
    };
    last.overlay.problem.is_none()
        && r.address_error.is_none()
        && r.ip_addr == applied
        && r.gateway == last.overlay.gateway
}

/// The overlay interface when the API server does not serve NodeOverlayIp:
/// the last good one (kept, with the reason, like an address that cannot
/// be read) when this agent configured one, else none, with the interface
/// and the routes through it left alone.
fn not_served_overlay(mem: &Memory) -> OverlaySetup {
    match mem.last_overlay.clone() {
        Some((iface, gateway)) => OverlaySetup {
            iface: Some(iface),
            gateway,
            problem: Some(
                "the API server does not serve NodeOverlayIp (is the CRD installed?)".into(),
            ),
            not_served: true,
        },
        None => OverlaySetup {
            not_served: true,
            ..OverlaySetup::default()
        },
    }
}

/// Loads the gateways a previous run persisted in the NodeOverlayIp status,
/// so a discovery failure right after a restart removes nothing.
fn restore_gateways(mem: &mut Memory, live: Option<&OverlayIpRecord>) {
    let Some(status) = live.and_then(|r| r.agent.as_ref()) else {
        return;
    };
    for g in &status.gateways {
        mem.discovered.entry(g.from).or_insert(DiscoveredRoute {
            destination: g.from,
            gateway: g.gateway,
            device: g.device.clone(),
        });
    }
}

/// The last good discovered gateways, for the status.
fn known_gateways(mem: &Memory) -> Vec<KnownGateway> {
    mem.discovered
        .iter()
        .map(|(from, d)| KnownGateway {
            from: *from,
            gateway: d.gateway,
            device: d.device.clone(),
        })
        .collect()
}

/// Retry timing after failed passes: the work queue's exponential
/// [`Backoff`](crate::backoff::Backoff) from 500 ms up to 60 s, with repeated
/// failures logged once a minute.
struct Retry {
    backoff: crate::backoff::Backoff,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    errors: Repeats,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            backoff: crate::backoff::Backoff::new(
                Duration::from_millis(500),
                Duration::from_secs(60),
            ),
            failures: 0,
            retry_at: None,
            errors: Repeats::new(Duration::from_secs(60)),
        }
    }
}

impl Retry {
    async fn wait(&self) {
        match self.retry_at {
            Some(t) => tokio::time::sleep_until(t).await,
            None => futures::future::pending().await,
        }
    }

    fn succeeded(&mut self, node: &str) {
        if let Some(n) = self.errors.success() {
            info!(node = %node, failures = n, "agent reconcile succeeded again");
        }
        self.failures = 0;
        self.retry_at = None;
    }

    fn failed(&mut self, e: &AgentError) {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff.delay(self.failures);
        if let Some(repeats) = self.errors.failure() {
            warn!(error = %e, retry_in_ms = delay.as_millis() as u64, repeats,
                "agent reconcile failed; routes in place are kept");
        }
        self.retry_at = Some(tokio::time::Instant::now() + delay);
    }
}
