//! `overlayctl lab`: the whole system on one machine.
//!
//! Topology, all inside network namespaces the lab creates and removes:
//!
//! ```text
//!   node-1 ─┐                         ┌─ gw ── onprem (203.0.113.10)
//!   node-2 ─┼── vlan (bridge br0) ────┤  198.51.100.1 (private network)
//!   node-N ─┘  198.51.100.0/24        │  overlay gateways 192.0.2.1, .65, ...
//! ```
//!
//! Each node has `eth0` on the VLAN with its InternalIP and a route to the
//! "private network" 198.18.0.0/16 via 198.51.100.1 (the stand-in for
//! 10.0.0.0/8). The real controller and agent reconcilers run in-process:
//! the controller over an in-memory node source and the chosen IPAM, one
//! agent per node with the netlink programmer bound to the node's
//! namespace. The lab then pings the on-prem host from every node's
//! overlay address.
//!
//! A [`Stop`] (SIGINT or SIGTERM in `overlayctl lab`) ends a run at any
//! point, also while the namespaces are being built; whatever was built is
//! removed before [`run_until`] returns [`LabError::Interrupted`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use overlay_core::agent::{Agent, AgentConfig, AgentParts};
use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::fakes::{MemoryEvents, MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes};
use overlay_core::{
    Cidr, GatewayChoice, IpamBackend, LabelSelector, LegacyRouteSource, NodeInfo, OverlayIpRecord,
    Owner, RouteState, StaticRouteRule, StoreError,
};
use overlay_netlink::{NetlinkProgrammer, ProgrammerConfig};
use overlay_testbed::{AddressPolicy, Netns, StaleNamespace};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub mod api;
mod containers;
pub mod images;
mod migrate;

/// The on-prem host every node must reach.
pub const ONPREM_HOST: &str = "203.0.113.10";
/// The on-prem subnet (the first StaticRoute).
pub const ONPREM_SUBNET: &str = "203.0.113.0/24";
/// The private network's stand-in (10.0.0.0/8 in a real cluster).
pub const PRIVATE_NETWORK: &str = "198.18.0.0/16";
/// The gateway's address on the nodes' VLAN (the API server and the
/// emulator listen there with `--images`).
const VLAN_GW: &str = "198.51.100.1";

/// Which IPAM the lab's controller uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IpamChoice {
    /// In-memory pools (no external system).
    Embedded,
    /// The phpIPAM emulator, in-process on 127.0.0.1.
    Emulator,
    /// A real phpIPAM server, from `--ipam-config`.
    Phpipam,
    /// Kubernetes-native pools: one `OverlayIPPool` per zone in the lab's
    /// in-memory API, one `OverlayIPAllocation` per address.
    Kubernetes,
}

/// A scripted scenario run after the first convergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Delete a node and a route mid-run, check everything is released and
    /// removed, then add them back.
    Churn,
    /// Instead of a fresh start: leave odd nodes as the Go
    /// iks-overlay-ip-controller left them (a phpIPAM record with only its
    /// owner, a NodeOverlayIp without owner reference, macvlan tmp0 and
    /// `boot` routes) and even nodes as the static-routes DaemonSet left
    /// them (`boot` routes via the private gateway), then start the
    /// controller and agents under a continuous ping; report lost pings,
    /// changed addresses and adopted records, then delete a node and check
    /// its original record is released. Uses the phpIPAM emulator.
    Migrate,
}

/// Lab settings.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Number of nodes (1–50).
    pub nodes: usize,
    /// Number of zones (1–4); nodes are spread round-robin.
    pub zones: usize,
    /// Number of StaticRoutes (the first is the on-prem subnet; the others
    /// are extra /24s in 198.19.0.0/16, checked in the kernel only).
    pub routes: usize,
    /// Leave the namespaces in place when the run completes (not when it
    /// is stopped: then everything is removed).
    pub keep: bool,
    /// After the checks, keep the lab running (controller, agents,
    /// namespaces) until the [`Stop`] fires, then remove it. Only
    /// [`run_until`] honours it.
    pub hold: bool,
    /// The older mode: ConfigMap-style route list, discovered gateway, no
    /// overlay IPs.
    pub legacy: bool,
    /// Scenario to run after convergence.
    pub scenario: Option<Scenario>,
    /// IPAM for the controller.
    pub ipam: IpamChoice,
    /// Controller config for `--ipam phpipam`.
    pub ipam_config: Option<PathBuf>,
    /// How long to wait for convergence.
    pub timeout: Duration,
    /// Run the controller and agents as the images `deploy/images/build.sh`
    /// built (`overlay-controller:VERSION`, `overlay-agent:VERSION`), under
    /// podman with the user, capabilities and read-only root `deploy/`
    /// declares, talking to a scripted API server served in the lab.
    pub images: bool,
}

impl LabOptions {
    /// The IPAM the controller will use: the migrate scenario's is always
    /// the emulator (it seeds entries as the original controller made them).
    pub fn effective_ipam(&self) -> IpamChoice {
        if self.scenario == Some(Scenario::Migrate) {
            IpamChoice::Emulator
        } else {
            self.ipam
        }
    }
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            zones: 2,
            routes: 1,
            keep: false,
            hold: false,
            legacy: false,
            scenario: None,
            ipam: IpamChoice::Embedded,
            ipam_config: None,
            timeout: Duration::from_secs(30),
            images: false,
        }
    }
}

/// One zone of the lab: its overlay subnet and gateway.
#[derive(Debug, Clone)]
pub struct ZonePlan {
    /// Zone name.
    pub zone: String,
    /// Overlay subnet.
    pub subnet: Cidr,
    /// Overlay gateway (held by the gw namespace).
    pub gateway: IpAddr,
}

/// One node of the lab: name, zone and InternalIP.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// Node name.
    pub name: String,
    /// Zone.
    pub zone: String,
    /// InternalIP on the VLAN.
    pub ip: String,
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Node name.
    pub node: String,
    /// Zone.
    pub zone: String,
    /// Overlay address (or the InternalIP in legacy mode).
    pub address: String,
    /// Gateway of the on-prem route.
    pub gateway: String,
    /// Routes applied / desired.
    pub routes: String,
    /// Ping of the on-prem host answered.
    pub ping_ok: bool,
    /// Time from start of the reconcilers to converged; `None` when the
    /// node did not converge within the timeout (the run then fails).
    pub converge_ms: Option<u128>,
}

/// What the lab found.
#[derive(Debug, Clone, Default)]
pub struct LabReport {
    /// One row per node.
    pub rows: Vec<NodeRow>,
    /// Scenario checks, each with its outcome.
    pub checks: Vec<(String, bool)>,
    /// Names of the lab's namespaces.
    pub namespaces: Vec<String>,
    /// Commands that remove the namespaces (with `--keep`).
    pub cleanup: Vec<String>,
}

impl LabReport {
    /// True when every node converged, every ping was answered and every
    /// check passed.
    pub fn ok(&self) -> bool {
        self.failures().is_empty()
    }

    /// What failed, one line per kind of failure; empty when [`ok`](Self::ok).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.rows.is_empty() {
            f.push("the lab has no nodes".to_owned());
        }
        let nodes = |pred: &dyn Fn(&NodeRow) -> bool| {
            self.rows
                .iter()
                .filter(|r| pred(r))
                .map(|r| r.node.as_str())
                .collect::<Vec<_>>()
        };
        let late = nodes(&|r| r.converge_ms.is_none());
        if !late.is_empty() {
            f.push(format!(
                "{} of {} nodes did not converge within --timeout: {}",
                late.len(),
                self.rows.len(),
                late.join(", ")
            ));
        }
        let silent = nodes(&|r| !r.ping_ok);
        if !silent.is_empty() {
            f.push(format!(
                "no answer from {ONPREM_HOST}: {}",
                silent.join(", ")
            ));
        }
        for (c, ok) in &self.checks {
            if !ok {
                f.push(format!("check failed: {c}"));
            }
        }
        f
    }

    /// The last line of a run: success, or what failed.
    pub fn verdict(&self) -> String {
        let f = self.failures();
        if f.is_empty() {
            "lab: every node converged and reached the on-prem host".to_owned()
        } else {
            format!("lab: FAILED: {}", f.join("; "))
        }
    }

    /// The result table. CONVERGED is the time to convergence, or `no` for
    /// a node that did not converge within the timeout.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:<8} {:<7} {:<18} {:<15} {:<7} {:<5} {:>10}",
            "NODE", "ZONE", "ADDRESS", "GATEWAY", "ROUTES", "PING", "CONVERGED"
        );
        for r in &self.rows {
            let converged = match r.converge_ms {
                Some(ms) => format!("{ms}ms"),
                None => "no".to_owned(),
            };
            let _ = writeln!(
                t,
                "{:<8} {:<7} {:<18} {:<15} {:<7} {:<5} {:>10}",
                r.node,
                r.zone,
                r.address,
                r.gateway,
                r.routes,
                if r.ping_ok { "OK" } else { "FAIL" },
                converged
            );
        }
        for (c, ok) in &self.checks {
            let _ = writeln!(t, "check: {c}: {}", if *ok { "OK" } else { "FAIL" });
        }
        t
    }
}

/// The zones and nodes the lab will build, for `--dry-run` and for the run.
pub fn plan(opts: &LabOptions) -> Result<(Vec<ZonePlan>, Vec<NodePlan>), String> {
    if let Some(why) = opts.images.then(|| containers::unsupported(opts)).flatten() {
        return Err(why);
    }
    if !(1..=50).contains(&opts.nodes) {
        return Err(format!(
            "--nodes {} is out of range: use 1 to 50",
            opts.nodes
        ));
    }
    if !(1..=4).contains(&opts.zones) {
        return Err(format!(
            "--zones {} is out of range: use 1 to 4",
            opts.zones
        ));
    }
    if opts.legacy && opts.scenario == Some(Scenario::Churn) {
        return Err("--scenario churn deletes a node's overlay IP and a StaticRoute; the --legacy mode has neither, so drop one of the two options".into());
    }
    if opts.scenario == Some(Scenario::Migrate) {
        if opts.legacy {
            return Err("--scenario migrate takes over nodes of both originals in one run (the static-routes DaemonSet's are its legacy-mode nodes); drop --legacy".into());
        }
        if opts.nodes < 2 {
            return Err("--scenario migrate needs --nodes 2 or more: odd nodes are left by the Go controller, even ones by the static-routes DaemonSet".into());
        }
        if opts.ipam == IpamChoice::Phpipam {
            return Err("--scenario migrate seeds phpIPAM records as the Go controller made them, in the emulator; drop --ipam phpipam".into());
        }
    }
    if opts.keep && opts.hold {
        return Err("--hold ends with Ctrl-C or SIGTERM, which removes the lab, so --keep would keep nothing; drop one of the two".into());
    }
    if !(1..=200).contains(&opts.routes) {
        return Err(format!(
            "--routes {} is out of range: use 1 to 200",
            opts.routes
        ));
    }
    let zones = (0..opts.zones)
        .map(|z| {
            let base = 64 * z as u8;
            Ok(ZonePlan {
                zone: format!("zone-{}", z + 1),
                subnet: Cidr::parse("lab subnet", &format!("192.0.2.{base}/26"))
                    .map_err(|e| e.to_string())?,
                gateway: IpAddr::from([192, 0, 2, base + 1]),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let nodes = plan_nodes(opts.nodes, &zones);
    Ok((zones, nodes))
}

/// `n` nodes spread round-robin over `zones`, InternalIPs on the VLAN.
fn plan_nodes(n: usize, zones: &[ZonePlan]) -> Vec<NodePlan> {
    (0..n)
        .map(|i| NodePlan {
            name: format!("node-{}", i + 1),
            zone: zones
                .get(i % zones.len().max(1))
                .map(|z| z.zone.clone())
                .unwrap_or_default(),
            ip: format!("198.51.100.{}", 10 + i),
        })
        .collect()
}

/// The namespaces the lab builds, as `--dry-run` lists them.
fn describe_namespaces(zones: &[ZonePlan], nodes: &[NodePlan]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "overlayctl lab would create, in network namespaces of its own (removed afterwards):"
    );
    let _ = writeln!(
        s,
        "  vlan     bridge br0 for the private network 198.51.100.0/24"
    );
    let _ = writeln!(
        s,
        "  gw       {VLAN_GW}/24 on the VLAN, overlay gateways {}, 203.0.113.1/24 towards on-prem, forwarding on",
        zones
            .iter()
            .map(|z| z.gateway.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "  onprem   {ONPREM_HOST}/24, default route via 203.0.113.1"
    );
    for NodePlan {
        name: n,
        zone: z,
        ip,
    } in nodes
    {
        let _ = writeln!(
            s,
            "  {n:<8} eth0 {ip}/24 on the VLAN, zone {z}, route {PRIVATE_NETWORK} via {VLAN_GW}"
        );
    }
    s
}

/// The plan as text (for `--dry-run`).
pub fn describe(opts: &LabOptions) -> Result<String, String> {
    let (zones, nodes) = plan(opts)?;
    let mut s = describe_namespaces(&zones, &nodes);
    if opts.legacy {
        let _ = writeln!(
            s,
            "mode: legacy (route list {ONPREM_SUBNET} via the gateway of the route covering {PRIVATE_NETWORK}; no overlay IPs)"
        );
    } else {
        let _ = writeln!(
            s,
            "IPAM: {:?}; zones: {}",
            opts.effective_ipam(),
            zones
                .iter()
                .map(|z| format!("{} {} (gateway {})", z.zone, z.subnet, z.gateway))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "StaticRoutes: {} ({ONPREM_SUBNET} via the overlay gateway{})",
            opts.routes,
            if opts.routes > 1 {
                ", plus extra /24s in 198.19.0.0/16"
            } else {
                ""
            }
        );
    }
    let migrating = opts.scenario == Some(Scenario::Migrate);
    for extra in [
        migrating.then(migrate::describe),
        opts.images.then(containers::describe),
    ] {
        let _ = extra.map(|e| writeln!(s, "{e}"));
    }
    let _ = writeln!(
        s,
        "then: wait for convergence, ping {ONPREM_HOST} from every node, print a table{}{}",
        match opts.scenario {
            Some(Scenario::Churn) => ", run the churn scenario",
            Some(Scenario::Migrate) => "",
            None => "",
        },
        if opts.hold {
            ", keep running until Ctrl-C or SIGTERM, then remove everything"
        } else {
            ""
        }
    );
    Ok(s)
}

/// Checks, before anything is created, everything the lab needs: root and
/// every program it will run ([`overlay_testbed::TOOLS`]); the error names
/// each missing piece and how to get it.
pub fn preflight() -> Result<(), String> {
    let mut needs = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        needs.push(
            "root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces: run it with sudo"
                .to_owned(),
        );
    }
    let missing = overlay_testbed::missing_tools();
    for (tool, package) in &missing {
        needs.push(format!(
            "`{tool}`, not found in PATH (Debian/Ubuntu package {package})"
        ));
    }
    if needs.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "the lab cannot start; nothing was created. It needs:\n  - {}",
        needs.join("\n  - ")
    );
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        let _ = write!(
            msg,
            "\ninstall with: apt-get install {}",
            packages.join(" ")
        );
    }
    msg.push_str("\n(--dry-run prints the plan without any of these)");
    Err(msg)
}

/// One line on stale namespaces removed at start, e.g. `removed 5 stale
/// namespaces from an earlier run (pid 1234)`.
pub fn describe_stale(stale: &[StaleNamespace]) -> String {
    let mut pids: Vec<u32> = stale.iter().map(|s| s.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    let n = stale.len();
    let what = if n == 1 { "namespace" } else { "namespaces" };
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    if pids.len() == 1 {
        format!(
            "removed {n} stale {what} from an earlier run (pid {})",
            pids.join("")
        )
    } else {
        format!(
            "removed {n} stale {what} from earlier runs (pids {})",
            pids.join(", ")
        )
    }
}

/// A signal that stops the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// The conventional exit status of a process ended by this signal
    /// (128 + signal number): 130 or 143.
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }
}

/// Tells a running lab to stop and remove what it built. Cloning shares
/// it; the first [`trigger`](Self::trigger) wins. [`Stop::on_signals`]
/// triggers it on SIGINT and SIGTERM.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    inner: Arc<StopInner>,
}

#[derive(Debug, Default)]
struct StopInner {
    fired: OnceLock<StopSignal>,
    notify: Notify,
}

impl Stop {
    /// A `Stop` triggered by the first SIGINT or SIGTERM. The handlers are
    /// installed before this returns (call it before creating anything);
    /// from then on these signals no longer end the process by themselves.
    /// Needs a Tokio runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let stop = Self::default();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    Some(()) = int.recv() => StopSignal::Interrupt,
                    Some(()) = term.recv() => StopSignal::Terminate,
                    else => return,
                };
                if s.trigger(sig) {
                    progress(&format!(
                        "{}: stopping; removing everything the lab created",
                        sig.name()
                    ));
                } else {
                    progress(&format!(
                        "{}: already stopping; the lab is being removed",
                        sig.name()
                    ));
                }
            }
        });
        Ok(stop)
    }

    /// Fires the stop; false when it had already fired.
    pub fn trigger(&self, signal: StopSignal) -> bool {
        let first = self.inner.fired.set(signal).is_ok();
        if first {
            self.inner.notify.notify_waiters();
        }
        first
    }

    /// The signal, once fired.
    pub fn fired(&self) -> Option<StopSignal> {
        self.inner.fired.get().copied()
    }

    /// Waits until the stop fires.
    pub async fn wait(&self) -> StopSignal {
        loop {
            // Registered before the check, so a trigger in between wakes it.
            let notified = self.inner.notify.notified();
            if let Some(s) = self.fired() {
                return s;
            }
            notified.await;
        }
    }

    fn check(&self) -> Result<(), LabError> {
        match self.fired() {
            Some(s) => Err(LabError::Interrupted(s)),
            None => Ok(()),
        }
    }
}

/// Why [`run_until`] returned no report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabError {
    /// The [`Stop`] fired; everything the lab had created was dropped,
    /// which removes it (also with `keep`).
    Interrupted(StopSignal),
    /// The lab could not be built or run; what it had created was removed.
    Failed(String),
}

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabError::Interrupted(s) => write!(f, "stopped by {}", s.name()),
            LabError::Failed(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for LabError {}

impl From<String> for LabError {
    fn from(e: String) -> Self {
        LabError::Failed(e)
    }
}

impl From<&str> for LabError {
    fn from(e: &str) -> Self {
        LabError::Failed(e.to_owned())
    }
}

fn tb<T>(r: Result<T, overlay_testbed::TestbedError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// The lab's namespaces.
struct Topology {
    vlan: Netns,
    gw: Netns,
    onprem: Netns,
    nodes: Vec<(String, String, String, Netns)>,
}

impl Topology {
    /// Builds the namespaces step by step (each step one or a few `ip`
    /// commands), checking `stop` before each: a stopped or failed build
    /// drops what it built so far, which removes it.
    fn build(
        zones: &[ZonePlan],
        nodes: &[NodePlan],
        policy: AddressPolicy,
        stop: &Stop,
    ) -> Result<Self, LabError> {
        let step = |f: &dyn Fn() -> overlay_testbed::Result<()>| -> Result<(), LabError> {
            stop.check()?;
            f().map_err(|e| LabError::Failed(e.to_string()))
        };
        let netns = |label: &str| -> Result<Netns, LabError> {
            stop.check()?;
            Netns::with_policy(label, policy).map_err(|e| LabError::Failed(e.to_string()))
        };
        let vlan = netns("vlan")?;
        step(&|| vlan.add_bridge("br0"))?;
        let gw = netns("gw")?;
        step(&|| gw.add_veth("vlan0", &vlan, "p-gw"))?;
        step(&|| vlan.set_master("p-gw", "br0"))?;
        step(&|| gw.add_addr("vlan0", &format!("{VLAN_GW}/24")))?;
        for z in zones {
            step(&|| gw.add_addr("vlan0", &format!("{}/{}", z.gateway, z.subnet.prefix())))?;
        }
        step(&|| gw.enable_forwarding())?;
        let onprem = netns("onprem")?;
        step(&|| gw.add_veth("onprem0", &onprem, "eth0"))?;
        step(&|| gw.add_addr("onprem0", "203.0.113.1/24"))?;
        step(&|| onprem.add_addr("eth0", &format!("{ONPREM_HOST}/24")))?;
        step(&|| onprem.add_route("default", Some("203.0.113.1"), None))?;
        let mut built = Vec::new();
        for (i, NodePlan { name, zone, ip }) in nodes.iter().enumerate() {
            let ns = netns(name)?;
            let port = format!("p-n{}", i + 1);
            step(&|| ns.add_veth("eth0", &vlan, &port))?;
            step(&|| vlan.set_master(&port, "br0"))?;
            step(&|| ns.add_addr("eth0", &format!("{ip}/24")))?;
            step(&|| ns.add_route(PRIVATE_NETWORK, Some(VLAN_GW), Some("eth0")))?;
            built.push((name.clone(), zone.clone(), ip.clone(), ns));
        }
        Ok(Self {
            vlan,
            gw,
            onprem,
            nodes: built,
        })
    }

    fn names(&self) -> Vec<String> {
        [&self.vlan, &self.gw, &self.onprem]
            .into_iter()
            .chain(self.nodes.iter().map(|n| &n.3))
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    fn keep(&mut self) -> Vec<String> {
        let mut cmds = vec![self.vlan.keep(), self.gw.keep(), self.onprem.keep()];
        for n in &mut self.nodes {
            cmds.push(n.3.keep());
        }
        cmds
    }

    fn node(&self, name: &str) -> Option<&Netns> {
        self.nodes.iter().find(|n| n.0 == name).map(|n| &n.3)
    }
}

/// The legacy route list as a fixed in-memory source.
struct FixedRoutes(Vec<Cidr>);

#[async_trait]
impl LegacyRouteSource for FixedRoutes {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        Ok(self.0.clone())
    }
    fn changes(&self) -> BoxStream<'static, ()> {
        Box::pin(futures::stream::pending())
    }
}

fn progress(msg: &str) {
    eprintln!("lab: {msg}");
}

fn node_info(name: &str, zone: &str, ip: &str) -> Result<NodeInfo, String> {
    let mut labels = BTreeMap::new();
    labels.insert("topology.kubernetes.io/zone".to_owned(), zone.to_owned());
    labels.insert("topology.kubernetes.io/region".to_owned(), "lab".to_owned());
    labels.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
    let ip: IpAddr = ip.parse().map_err(|e| format!("lab address {ip}: {e}"))?;
    Ok(NodeInfo::from_labels(name, labels, vec![ip]))
}

fn route_spec(i: usize, gateway: GatewayChoice) -> Result<(String, StaticRouteRule), String> {
    let (name, subnet) = if i == 0 {
        ("onprem".to_owned(), ONPREM_SUBNET.to_owned())
    } else {
        (format!("extra-{i}"), format!("198.19.{}.0/24", i - 1))
    };
    Ok((
        name,
        StaticRouteRule {
            subnet: Cidr::parse("route", &subnet).map_err(|e| e.to_string())?,
            gateway,
            table: None,
            metric: None,
            selector: LabelSelector::default(),
        },
    ))
}

/// What keeps an IPAM's helpers (the emulator's server) alive.
pub type KeepAlive = Option<Box<dyn std::any::Any + Send>>;

/// Builds the IPAM the options ask for, for `zones`.
pub async fn ipam_for(
    opts: &LabOptions,
    zones: &[ZonePlan],
) -> Result<(Arc<dyn IpamBackend>, KeepAlive), String> {
    use overlay_ipam::phpipam::{Credentials, PhpIpamBackend, PhpIpamConfig, Secret};
    match opts.ipam {
        IpamChoice::Embedded => {
            let mut cfg = overlay_ipam::pools::PoolsConfig::new();
            for z in zones {
                cfg = cfg.with_pool(
                    z.zone.clone(),
                    overlay_ipam::pools::PoolConfig::new(z.subnet).with_gateway(z.gateway),
                );
            }
            let b = overlay_ipam::memory::MemoryBackend::new(&cfg).map_err(|e| e.to_string())?;
            Ok((Arc::new(b), None))
        }
        IpamChoice::Emulator => {
            use overlay_ipam::emulator::Emulator;
            let (ecfg, ids) = emulator_subnets(zones)?;
            let mut pcfg = PhpIpamConfig::new(String::new(), "overlay");
            for (zone, id) in ids {
                pcfg = pcfg.with_zone(zone, [id]);
            }
            let (user, password) = ecfg.users.first().cloned().ok_or("emulator has no user")?;
            let emu = Emulator::start(ecfg)
                .await
                .map_err(|e| format!("starting the phpIPAM emulator: {e}"))?;
            pcfg.url = emu.url();
            progress(&format!("phpIPAM emulator listening on {}", emu.url()));
            let creds = Credentials::User {
                username: user,
                password: Secret::new(&password),
            };
            let b = PhpIpamBackend::new(&pcfg, "lab", creds).map_err(|e| e.to_string())?;
            Ok((Arc::new(b), Some(Box::new(emu))))
        }
        IpamChoice::Kubernetes => kubernetes_pools(zones).await,
        IpamChoice::Phpipam => {
            let mut cfg = phpipam_config(opts)?;
            // The lab's controller writes the owner marker `lab/<node>`.
            cfg.cluster_id = Some("lab".into());
            cfg.build().map(|b| (b, None)).map_err(|e| e.to_string())
        }
    }
}

/// The phpIPAM emulator's config with one subnet per zone (ids from 1),
/// and each zone's subnet id.
fn emulator_subnets(
    zones: &[ZonePlan],
) -> Result<(overlay_ipam::emulator::EmulatorConfig, Vec<(String, u64)>), String> {
    use overlay_ipam::emulator::{EmulatorConfig, SubnetSpec};
    let mut ecfg = EmulatorConfig {
        subnets: Vec::new(),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for (id, z) in (1..).zip(zones) {
        let (IpAddr::V4(network), IpAddr::V4(gateway)) = (z.subnet.network().network(), z.gateway)
        else {
            return Err("the emulator serves IPv4 subnets only".into());
        };
        ecfg.subnets.push(SubnetSpec {
            id,
            network,
            mask: z.subnet.prefix(),
            description: format!("lab {}", z.zone),
            gateway: Some(gateway),
        });
        ids.push((z.zone.clone(), id));
    }
    Ok((ecfg, ids))
}

/// One `OverlayIPPool` per zone in an in-memory API, and the backend over
/// it, its pools kept once (finalizer, status) before the controller starts.
async fn kubernetes_pools(zones: &[ZonePlan]) -> Result<(Arc<dyn IpamBackend>, KeepAlive), String> {
    use overlay_core::ippool::IpPool;
    let store = overlay_core::fakes::MemoryPoolStore::new();
    for z in zones {
        store.put_pool(IpPool {
            name: format!("lab-{}", z.zone),
            zone: z.zone.clone(),
            cidr: z.subnet.to_string(),
            gateway: Some(z.gateway.to_string()),
            ..IpPool::default()
        });
    }
    let b = overlay_ipam::kubernetes::KubernetesBackend::start(Arc::new(store), "lab");
    let kept = b.keep_pools().await.map_err(|e| e.to_string())?;
    progress(&format!(
        "{} OverlayIPPools in the lab's API ({} finalizers, {} statuses written)",
        zones.len(),
        kept.finalizers,
        kept.statuses
    ));
    Ok((Arc::new(b), None))
}

fn phpipam_config(opts: &LabOptions) -> Result<overlay_ipam::config::IpamConfig, String> {
    let path = opts
        .ipam_config
        .as_ref()
        .ok_or("--ipam phpipam needs --ipam-config FILE (an overlay-ip-config.yaml with a phpIPAM: section)")?;
    let cfg = overlay_ipam::config::IpamConfig::load(path).map_err(|e| e.to_string())?;
    if cfg.php_ipam.is_none() {
        return Err(format!(
            "{}: phpIPAM: the lab's --ipam phpipam needs a phpIPAM: section",
            path.display()
        ));
    }
    Ok(cfg)
}

/// The zones of a real phpIPAM: each zone's first subnet, with the prefix
/// and gateway phpIPAM reports (read-only check, nothing reserved).
async fn phpipam_zones(opts: &LabOptions) -> Result<Vec<ZonePlan>, String> {
    let cfg = phpipam_config(opts)?;
    let report = overlay_ipam::check::check(&cfg, None, cfg.cluster_id.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let mut zones = Vec::new();
    for z in &report.zones {
        let Some(s) = z
            .subnets
            .iter()
            .find(|s| s.network.is_some() && s.gateway.is_some())
        else {
            return Err(format!(
                "zone {}: no subnet with a prefix and a gateway in phpIPAM; `overlayctl ipam check --config FILE` says why",
                z.zone
            ));
        };
        let network = s.network.as_deref().unwrap_or_default();
        zones.push(ZonePlan {
            zone: z.zone.clone(),
            subnet: Cidr::parse("phpIPAM subnet", network).map_err(|e| e.to_string())?,
            gateway: s.gateway.ok_or("gateway")?,
        });
    }
    if zones.is_empty() {
        return Err("the phpIPAM config has no zones".into());
    }
    Ok(zones)
}

/// Runs the lab and returns its report, without signal handling (see
/// [`run_until`]). Namespaces are removed when this returns (unless
/// `keep`), also on error or panic.
pub async fn run(opts: &LabOptions) -> Result<LabReport, String> {
    if opts.hold {
        return Err("hold waits for a stop: use run_until".into());
    }
    run_until(opts, &Stop::default(), |_| {})
        .await
        .map_err(|e| e.to_string())
}

/// Runs the lab until it is done or `stop` fires, whichever is first; a
/// stop at any point (while the namespaces are being built, too) removes
/// everything the lab created, even with `keep`, and returns
/// [`LabError::Interrupted`]. With `opts.hold`, `on_ready` gets the report
/// once the checks are done and the lab then stays up until `stop` fires.
/// Namespaces are removed when this returns (unless `keep` and the run
/// completed), also on error or panic.
pub async fn run_until(
    opts: &LabOptions,
    stop: &Stop,
    on_ready: impl FnOnce(&LabReport),
) -> Result<LabReport, LabError> {
    match (run_stoppable(opts, stop, on_ready).await, stop.fired()) {
        // A step that failed after the stop fired failed because of it (a
        // helper killed by the same Ctrl-C, a lookup cut short).
        (Err(LabError::Failed(e)), Some(s)) => {
            progress(&format!("after {}: {e}", s.name()));
            Err(LabError::Interrupted(s))
        }
        (r, _) => r,
    }
}

async fn run_stoppable(
    opts: &LabOptions,
    stop: &Stop,
    on_ready: impl FnOnce(&LabReport),
) -> Result<LabReport, LabError> {
    let (mut zones, mut node_plan) = plan(opts)?;
    stop.check()?;
    preflight()?;
    if opts.images {
        containers::preflight()?;
    }
    let stale = overlay_testbed::remove_stale_namespaces();
    if !stale.is_empty() {
        progress(&describe_stale(&stale));
    }
    stop.check()?;
    let mut policy = AddressPolicy::Documentation;
    if opts.ipam == IpamChoice::Phpipam && !opts.legacy {
        // The zones and their gateways follow the subnets phpIPAM reports;
        // those may be any range, always inside the lab's own namespaces.
        zones = tokio::select! {
            z = phpipam_zones(opts) => z?,
            s = stop.wait() => return Err(LabError::Interrupted(s)),
        };
        node_plan = plan_nodes(opts.nodes, &zones);
        policy = AddressPolicy::Any;
        for z in &zones {
            for (what, net) in [
                ("on-prem subnet", ONPREM_SUBNET),
                ("lab VLAN", "198.51.100.0/24"),
                ("private network", PRIVATE_NETWORK),
            ] {
                let net = Cidr::parse("lab", net).map_err(|e| e.to_string())?;
                if z.subnet.overlaps(&net) {
                    return Err(format!(
                        "zone {}: phpIPAM subnet {} overlaps the lab's {what} {net}; use a subnet outside it",
                        z.zone, z.subnet
                    )
                    .into());
                }
            }
        }
    }
    progress(&format!(
        "building {} nodes in {} zones, a gateway and an on-prem host",
        node_plan.len(),
        zones.len()
    ));
    // `ip` commands, synchronous: on a blocking thread, so that the signal
    // task runs meanwhile and the build sees the stop before its next step.
    let build = {
        let (zones, node_plan, stop) = (zones.clone(), node_plan.clone(), stop.clone());
        tokio::task::spawn_blocking(move || Topology::build(&zones, &node_plan, policy, &stop))
    };
    let mut topo = build
        .await
        .map_err(|e| format!("building the namespaces: {e}"))??;
    let mut report = tokio::select! {
        r = run_in(opts, &zones, &topo, stop, on_ready) => r?,
        s = stop.wait() => return Err(LabError::Interrupted(s)),
    };
    stop.check()?;
    if opts.keep {
        report.cleanup = topo.keep();
    }
    Ok(report)
}

/// A running lab: in-process, the in-memory stores, the IPAM and the
/// reconcilers' tasks; with `--images`, the served API server and the
/// containers.
struct Running {
    nodes: MemoryNodes,
    ips: MemoryOverlayIps,
    routes: MemoryStaticRoutes,
    ipam: Option<Arc<dyn IpamBackend>>,
    agents: BTreeMap<String, JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
    /// With `--images`: what the containers talk to.
    served: Option<containers::Served>,
    /// With `--images`: the agent containers by node.
    containers: BTreeMap<String, containers::Container>,
}

impl Running {
    /// Empty stores over `ipam` (in-process) or over the served API
    /// (`--images`); nothing started yet.
    fn with(ipam: Option<Arc<dyn IpamBackend>>, served: Option<containers::Served>) -> Self {
        Self {
            nodes: MemoryNodes::new(),
            ips: MemoryOverlayIps::new(),
            routes: MemoryStaticRoutes::new(),
            ipam,
            agents: BTreeMap::new(),
            tasks: Vec::new(),
            started: Instant::now(),
            served,
            containers: BTreeMap::new(),
        }
    }

    /// Empty stores over `ipam`; nothing started yet.
    fn new(ipam: Arc<dyn IpamBackend>) -> Self {
        Self::with(Some(ipam), None)
    }

    /// The NodeOverlayIps, from the stores or the served API.
    fn overlay_ips(&self) -> Vec<OverlayIpRecord> {
        match &self.served {
            Some(s) => s.overlay_ips(),
            None => self.ips.snapshot(),
        }
    }

    /// The StaticRoutes' names.
    fn route_names(&self) -> std::collections::BTreeSet<String> {
        match &self.served {
            Some(s) => s.route_names().into_iter().collect(),
            None => self.routes.snapshot().into_iter().map(|r| r.name).collect(),
        }
    }

    fn add_node(&self, name: &str, zone: &str, ip: &str) -> Result<(), String> {
        match &self.served {
            Some(s) => s.add_node(name, zone, ip),
            None => self.nodes.upsert(node_info(name, zone, ip)?),
        }
        Ok(())
    }

    /// Deletes Node `name` and stops its agent.
    fn remove_node(&mut self, name: &str) {
        match &self.served {
            Some(s) => s.remove_node(name),
            None => {
                self.nodes.remove(name);
            }
        }
        if let Some(h) = self.agents.remove(name) {
            h.abort();
        }
        self.containers.remove(name);
    }

    /// Creates the `i`th StaticRoute.
    fn apply_route(&self, i: usize) -> Result<(), String> {
        let (name, spec) = route_spec(i, GatewayChoice::Overlay)?;
        match &self.served {
            Some(s) => s.apply_route(&name, &spec.subnet.to_string()),
            None => self.routes.apply(&name, Ok(spec)),
        }
        Ok(())
    }

    async fn delete_route(&self, name: &str) -> Result<(), String> {
        match &self.served {
            Some(s) => s.delete_route(name).await,
            None => {
                self.routes.delete(name);
                Ok(())
            }
        }
    }

    /// Starts `name`'s agent (in-process, or its image) in `ns`.
    async fn start_agent(&mut self, name: &str, ip: &str, ns: &Netns) -> Result<(), String> {
        match &self.served {
            Some(s) => {
                let c = s.start_agent(name, ip, ns)?;
                self.containers.insert(name.to_owned(), c);
            }
            None => {
                let h = start_agent(name, ns, None, self).await?;
                self.agents.insert(name.to_owned(), h);
            }
        }
        Ok(())
    }

    /// Whether `owner` holds no live address any more.
    async fn released(&self, owner: &Owner) -> bool {
        match (&self.served, &self.ipam) {
            (Some(s), _) => s.released(owner),
            (None, Some(ipam)) => matches!(ipam.lookup(owner, None).await, Ok(None)),
            (None, None) => false,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(self.agents.values()) {
            t.abort();
        }
    }
}

/// Starts the controller over `r`'s stores, releasing with `hold_down`.
fn start_controller(r: &mut Running, hold_down: Duration) {
    let Some(ipam) = r.ipam.clone() else {
        return;
    };
    let controller = Arc::new(
        Controller::new(
            ControllerConfig {
                resync: Duration::from_secs(30),
                hold_down,
                ..ControllerConfig::new("lab")
            },
            ControllerParts {
                nodes: Arc::new(r.nodes.clone()),
                ipam,
                overlay_ips: Arc::new(r.ips.clone()),
                routes: Arc::new(r.routes.clone()),
            },
        )
        .with_events(Arc::new(MemoryEvents::new())),
    );
    r.tasks
        .push(tokio::spawn(controller.run(futures::future::pending())));
}

/// Starts `name`'s agent in `ns` over `r`'s stores; with `legacy`, in
/// legacy mode with that route list and no StaticRoutes.
async fn start_agent(
    name: &str,
    ns: &Netns,
    legacy: Option<&[Cidr]>,
    r: &Running,
) -> Result<JoinHandle<()>, String> {
    let programmer = NetlinkProgrammer::new(ProgrammerConfig::default().in_namespace(ns.path()))
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let mut cfg = AgentConfig::new(name).map_err(|e| e.to_string())?;
    cfg.interface = Some(
        "eth0"
            .parse()
            .map_err(|e: overlay_core::ParseError| e.to_string())?,
    );
    cfg.legacy_gateway_from =
        Cidr::parse("private network", PRIVATE_NETWORK).map_err(|e| e.to_string())?;
    cfg.resync = Duration::from_secs(30);
    type Sources = (
        Option<Arc<dyn overlay_core::StaticRouteStore>>,
        Option<Arc<dyn LegacyRouteSource>>,
    );
    let (routes, legacy_src): Sources = match legacy {
        Some(list) => (None, Some(Arc::new(FixedRoutes(list.to_vec())))),
        None => (Some(Arc::new(r.routes.clone())), None),
    };
    let agent = Arc::new(Agent::new(
        cfg,
        AgentParts {
            programmer: Arc::new(programmer),
            nodes: Arc::new(r.nodes.clone()),
            overlay_ips: Arc::new(r.ips.clone()),
            routes,
            legacy: legacy_src,
        },
    ));
    Ok(tokio::spawn(agent.run(futures::future::pending())))
}

async fn run_in(
    opts: &LabOptions,
    zones: &[ZonePlan],
    topo: &Topology,
    stop: &Stop,
    on_ready: impl FnOnce(&LabReport),
) -> Result<LabReport, LabError> {
    if opts.scenario == Some(Scenario::Migrate) {
        let (report, _alive) = migrate::run(opts, zones, topo, stop).await?;
        return hold(opts, topo, report, on_ready).await;
    }
    let (mut r, _keepalive) = if opts.images {
        (start_images(opts, zones, topo).await?, None)
    } else {
        start_in_process(opts, zones, topo).await?
    };
    let names: Vec<String> = topo.nodes.iter().map(|n| n.0.clone()).collect();
    let converged = wait_converged(opts, &r, &names, topo).await?;
    if let Some(served) = r.served.as_ref().filter(|_| converged.len() < names.len()) {
        progress(&containers::logs(served, &r.containers));
    }
    let mut report = LabReport {
        rows: ping_all(opts, &r, topo, &converged, stop).await?,
        namespaces: topo.names(),
        ..Default::default()
    };
    if opts.scenario == Some(Scenario::Churn) {
        churn(opts, &mut r, topo, &mut report, stop).await?;
    }
    hold(opts, topo, report, on_ready).await
}

/// Starts the in-process lab: the stores, the IPAM, the controller (not in
/// the legacy mode) and an agent per node.
async fn start_in_process(
    opts: &LabOptions,
    zones: &[ZonePlan],
    topo: &Topology,
) -> Result<(Running, KeepAlive), String> {
    let (ipam, keepalive) = if opts.legacy {
        ipam_for(
            &LabOptions {
                ipam: IpamChoice::Embedded,
                ..opts.clone()
            },
            zones,
        )
        .await?
    } else {
        ipam_for(opts, zones).await?
    };
    let mut r = Running::new(ipam);
    for (name, zone, ip, _) in &topo.nodes {
        r.add_node(name, zone, ip)?;
    }
    if !opts.legacy {
        for i in 0..opts.routes {
            r.apply_route(i)?;
        }
        start_controller(&mut r, ControllerConfig::new("lab").hold_down);
        progress("controller started (in-memory nodes, IPAM pools per zone)");
    }
    r.started = Instant::now();
    let onprem = [Cidr::parse("route", ONPREM_SUBNET).map_err(|e| e.to_string())?];
    for (name, _, _, ns) in &topo.nodes {
        let h = start_agent(name, ns, opts.legacy.then_some(&onprem[..]), &r).await?;
        r.agents.insert(name.clone(), h);
    }
    progress(&format!(
        "{} agents started, one per node namespace",
        topo.nodes.len()
    ));
    Ok((r, keepalive))
}

/// Starts the lab of `--images`: the served API server (and IPAM), the
/// controller image in the gateway namespace and an agent image per node.
async fn start_images(
    opts: &LabOptions,
    zones: &[ZonePlan],
    topo: &Topology,
) -> Result<Running, String> {
    let mut served = containers::Served::start(opts, zones, &topo.gw, &topo.nodes).await?;
    served.start_controller(&topo.gw)?;
    let mut r = Running::with(None, Some(served));
    for i in 0..opts.routes {
        r.apply_route(i)?;
    }
    r.started = Instant::now();
    for (name, _, ip, ns) in &topo.nodes {
        r.start_agent(name, ip, ns).await?;
    }
    progress(&format!(
        "{} agent images started in {} ms, one per node namespace",
        topo.nodes.len(),
        r.started.elapsed().as_millis()
    ));
    Ok(r)
}

/// With `--hold`: hands the report to `on_ready` and stays up until the
/// caller's select on the stop ends this; otherwise returns the report.
async fn hold(
    opts: &LabOptions,
    topo: &Topology,
    report: LabReport,
    on_ready: impl FnOnce(&LabReport),
) -> Result<LabReport, LabError> {
    if opts.hold {
        on_ready(&report);
        let node = topo.nodes.first().map(|n| n.3.name()).unwrap_or_default();
        progress(&format!(
            "holding: the lab stays up (controller, agents, namespaces {}); inspect it with e.g. `ip netns exec {node} ip route`; Ctrl-C or SIGTERM removes it",
            report.namespaces.join(" ")
        ));
        std::future::pending::<()>().await;
    }
    Ok(report)
}

/// Per node: converged time in ms, or wait until the timeout.
async fn wait_converged(
    opts: &LabOptions,
    r: &Running,
    names: &[String],
    topo: &Topology,
) -> Result<BTreeMap<String, u128>, String> {
    let deadline = Instant::now() + opts.timeout;
    let mut done: BTreeMap<String, u128> = BTreeMap::new();
    let mut last_msg = String::new();
    loop {
        for n in names {
            if done.contains_key(n) {
                continue;
            }
            if node_converged(opts, r, n, topo).await {
                done.insert(n.clone(), r.started.elapsed().as_millis());
            }
        }
        let msg = if opts.legacy {
            format!(
                "waiting for the route list on every node: {}/{} converged",
                done.len(),
                names.len()
            )
        } else {
            let with_ip = r
                .overlay_ips()
                .iter()
                .filter(|x| x.ip_addr.is_some())
                .count();
            format!(
                "waiting for overlay IPs ({with_ip}/{n}) and {routes} route(s) applied on every node ({d}/{n} converged)",
                n = names.len(),
                routes = opts.routes,
                d = done.len()
            )
        };
        if msg != last_msg {
            progress(&msg);
            last_msg = msg;
        }
        if done.len() == names.len() {
            return Ok(done);
        }
        if Instant::now() > deadline {
            let missing: Vec<&String> = names.iter().filter(|n| !done.contains_key(*n)).collect();
            progress(&format!(
                "timed out after {:?}; not converged: {missing:?}",
                opts.timeout
            ));
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node_converged(opts: &LabOptions, r: &Running, name: &str, topo: &Topology) -> bool {
    if opts.legacy {
        let Some(ns) = topo.node(name) else {
            return false;
        };
        return ns
            .routes(&[])
            .map(|rs| {
                rs.iter()
                    .any(|l| l.starts_with(&format!("{ONPREM_SUBNET} via {VLAN_GW}")))
            })
            .unwrap_or(false);
    }
    let rec_ok = r.overlay_ips().iter().any(|x| {
        x.name == name && x.ip_addr.is_some() && x.agent.as_ref().is_some_and(|a| a.configured)
    });
    let routes = r.route_names().len();
    rec_ok && routes >= opts.routes && applied_routes(r, name) == routes
}

/// How many StaticRoutes `node` reports Applied in its NodeOverlayIp.
fn applied_routes(r: &Running, node: &str) -> usize {
    let names = r.route_names();
    r.overlay_ips()
        .into_iter()
        .find(|x| x.name == node)
        .and_then(|x| x.agent)
        .map(|a| {
            a.routes
                .iter()
                .filter(|rep| names.contains(&rep.route) && rep.state == RouteState::Applied)
                .count()
        })
        .unwrap_or(0)
}

/// Pings from every node. Each ping blocks for up to a second, so `stop`
/// is checked before each one.
async fn ping_all(
    opts: &LabOptions,
    r: &Running,
    topo: &Topology,
    converged: &BTreeMap<String, u128>,
    stop: &Stop,
) -> Result<Vec<NodeRow>, LabError> {
    let mut rows = Vec::new();
    for (name, zone, ip, ns) in &topo.nodes {
        let (address, gateway, src) = if opts.legacy {
            (format!("{ip}/24"), VLAN_GW.to_owned(), ip.clone())
        } else {
            let rec = r.overlay_ips().into_iter().find(|x| &x.name == name);
            let addr = rec.as_ref().and_then(|x| x.ip_addr);
            let gw = rec
                .as_ref()
                .and_then(|x| x.gateway)
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into());
            (
                addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                gw,
                addr.map(|a| a.ip().to_string()).unwrap_or_default(),
            )
        };
        let applied = if opts.legacy {
            usize::from(converged.contains_key(name))
        } else {
            applied_routes(r, name)
        };
        let total = if opts.legacy { 1 } else { opts.routes };
        stop.check()?;
        let ping_ok = !src.is_empty() && tb(ns.ping(ONPREM_HOST, Some(&src)))?;
        rows.push(NodeRow {
            node: name.clone(),
            zone: zone.clone(),
            address,
            gateway,
            routes: format!("{applied}/{total}"),
            ping_ok,
            converge_ms: converged.get(name).copied(),
        });
    }
    Ok(rows)
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    progress(&format!("waiting for {what}"));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress(&format!("timed out waiting for {what}"));
    false
}

async fn churn(
    opts: &LabOptions,
    r: &mut Running,
    topo: &Topology,
    report: &mut LabReport,
    stop: &Stop,
) -> Result<(), LabError> {
    let first = topo.nodes.first().ok_or("the lab has no nodes")?;
    let (victim, zone, ip) = (first.0.clone(), first.1.clone(), first.2.clone());
    let owner = Owner::new("lab", victim.clone());
    // 1. Delete a node: its NodeOverlayIp goes and the address is released.
    progress(&format!("churn: deleting node {victim}"));
    r.remove_node(&victim);
    let running: &Running = r;
    let released = wait_for(
        &format!("{victim}'s address to be released"),
        opts.timeout,
        async || {
            !running.overlay_ips().iter().any(|x| x.name == victim)
                && running.released(&owner).await
        },
    )
    .await;
    report.checks.push((
        format!("{victim} deleted: NodeOverlayIp removed and address released"),
        released,
    ));

    // 2. Delete the on-prem route: removed from every remaining node.
    progress("churn: deleting StaticRoute onprem");
    r.delete_route("onprem").await?;
    let others: Vec<&Netns> = topo
        .nodes
        .iter()
        .filter(|n| n.0 != victim)
        .map(|n| &n.3)
        .collect();
    let removed = wait_for(
        "the onprem route to leave every node and the StaticRoute to be deleted",
        opts.timeout,
        async || {
            !running.route_names().contains("onprem")
                && others.iter().all(|ns| {
                    ns.routes(&[])
                        .map(|rs| !rs.iter().any(|l| l.starts_with(ONPREM_SUBNET)))
                        .unwrap_or(false)
                })
        },
    )
    .await;
    report.checks.push((
        "StaticRoute onprem deleted: route removed everywhere, finalizer released".into(),
        removed,
    ));

    // 3. Add both back and converge again.
    progress(&format!(
        "churn: adding node {victim} and StaticRoute onprem back"
    ));
    r.add_node(&victim, &zone, &ip)?;
    r.apply_route(0)?;
    let ns = topo.node(&victim).ok_or("victim namespace")?;
    r.start_agent(&victim, &ip, ns).await?;
    r.started = Instant::now();
    let names: Vec<String> = topo.nodes.iter().map(|n| n.0.clone()).collect();
    let converged = wait_converged(opts, r, &names, topo).await?;
    let rows = ping_all(opts, r, topo, &converged, stop).await?;
    let all = rows.iter().all(|x| x.ping_ok) && converged.len() == names.len();
    report.checks.push((
        "after re-adding: every node converged and pings on-prem".into(),
        all,
    ));
    report.rows = rows;
    Ok(())
}
