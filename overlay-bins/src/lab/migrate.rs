//! `overlayctl lab --scenario migrate`: the new controller and agents take
//! over nodes exactly as the two originals left them, under a continuous
//! ping.
//!
//! Odd nodes (`node-1`, `node-3`, ...) are left as the Go
//! `iks-overlay-ip-controller` and its network pod leave a node: a phpIPAM
//! record carrying only `owner=<node>` (what its `POST
//! addresses/first_free/{subnet}/` stores), a NodeOverlayIp named after the
//! node with labels, the `finalizer.iks.ibm.com` finalizer, no owner
//! reference and `status {ipAddr, gateway}`, and in the node's namespace
//! `ip link add tmp0 link eth0 type macvlan` (mode vepa), the address on it
//! and `ip route add <on-prem> via <overlay gateway> dev tmp0` (protocol
//! `boot`). Even nodes are left as the static-routes DaemonSet leaves one:
//! its ConfigMap's route list added with `ip route add <subnet> via <private
//! gateway> dev eth0` (protocol `boot`, a bare address as a /32).
//!
//! Every node then pings the on-prem host every 10 ms from the address the
//! original configured while the controller and agents start. The scenario
//! passes when every node converged, not one ping was lost, no address
//! changed, every record was adopted and, after one adopted node is
//! deleted, its original record is released.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use overlay_core::{Adoption, Cidr, GatewayChoice, IpamBackend, Owner};
use overlay_ipam::emulator::Emulator;
use overlay_testbed::Netns;
use tokio::process::Child;

use super::{
    IpamChoice, LabError, LabOptions, LabReport, NodeRow, ONPREM_HOST, ONPREM_SUBNET, Running,
    Stop, Topology, VLAN_GW, ZonePlan, ipam_for, node_info, progress, route_spec, start_agent, tb,
    wait_for,
};

/// The static-routes original's ConfigMap `routes` value, as its users
/// wrote it: a subnet and a bare address (which `ip route add` took as a
/// /32).
pub const SEED1_ROUTES: &str = r#"["203.0.113.0/24", "203.0.113.10"]"#;

/// The interface the Go controller's network pod created.
const SEED2_LINK: &str = "tmp0";

/// Which original left a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Original {
    /// The Go `iks-overlay-ip-controller` with its network pod.
    Controller,
    /// The bash static-routes DaemonSet.
    StaticRoutes,
}

impl Original {
    fn of(index: usize) -> Self {
        if index.is_multiple_of(2) {
            Original::Controller
        } else {
            Original::StaticRoutes
        }
    }

    fn name(self) -> &'static str {
        match self {
            Original::Controller => "iks-overlay-ip-controller",
            Original::StaticRoutes => "static-routes",
        }
    }
}

/// A node as an original left it, and what the scenario saw before the
/// takeover.
struct Seeded {
    name: String,
    zone: String,
    original: Original,
    /// The address the pings come from (overlay or InternalIP).
    source: IpAddr,
    /// The overlay address and gateway (Go controller's nodes).
    overlay: Option<(IpNetwork, IpAddr)>,
    /// `tmp0`'s `ip -o link` line before the takeover (index, mode, MAC).
    link: Option<LinkFacts>,
}

/// The facts of a link that a takeover must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkFacts {
    index: String,
    mac: String,
    mode: String,
}

/// The scenario's line of `--dry-run`.
pub(super) fn describe() -> String {
    format!(
        "migrate: odd nodes left as the Go iks-overlay-ip-controller leaves them (phpIPAM emulator record with only owner=<node>, NodeOverlayIp without owner reference, `ip link add {SEED2_LINK} link eth0 type macvlan` (mode vepa) holding the address, `ip route add {ONPREM_SUBNET} via <overlay gateway> dev {SEED2_LINK}`), even nodes as the static-routes DaemonSet leaves them (`ip route add` of {SEED1_ROUTES} via {VLAN_GW} dev eth0); ping {ONPREM_HOST} every 10 ms from each while the controller and agents take over; then delete the first node and check its record is released"
    )
}

/// Runs the scenario on the built topology; the report's checks say what
/// passed.
pub(super) async fn run(
    opts: &LabOptions,
    zones: &[ZonePlan],
    topo: &Topology,
    stop: &Stop,
) -> Result<(LabReport, Alive), LabError> {
    let emulated = LabOptions {
        ipam: IpamChoice::Emulator,
        ..opts.clone()
    };
    let (ipam, keepalive) = ipam_for(&emulated, zones).await?;
    let emu = keepalive
        .as_ref()
        .and_then(|k| k.downcast_ref::<Emulator>())
        .ok_or("the migrate scenario needs the phpIPAM emulator")?;
    let go = Running::new(ipam.clone());
    let bash = Running::new(ipam.clone());
    let seeded = seed_all(zones, topo, emu, &go, &bash)?;
    for s in &seeded {
        stop.check()?;
        let ns = topo.node(&s.name).ok_or("node namespace")?;
        if !tb(ns.ping(ONPREM_HOST, Some(&s.source.to_string())))? {
            return Err(LabError::Failed(format!(
                "{}: left as {} left it, it cannot reach {ONPREM_HOST}; the scenario's seeding is broken",
                s.name,
                s.original.name()
            )));
        }
    }
    progress("every node reaches on-prem as the originals left it; starting continuous pings");
    let mut pingers = Vec::new();
    for s in &seeded {
        let ns = topo.node(&s.name).ok_or("node namespace")?;
        pingers.push((s.name.clone(), start_pinger(ns, s.source)?));
    }
    let mut go = go;
    let mut bash = bash;
    start_new(&mut go, &mut bash, topo, &seeded).await?;
    let converged = wait_taken_over(opts, &go, topo, &seeded, ipam.as_ref()).await;
    // A second more traffic after the last change.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lost = BTreeMap::new();
    for (name, child) in pingers {
        lost.insert(name, stop_pinger(child).await?);
    }
    let mut report = LabReport {
        namespaces: topo.names(),
        ..Default::default()
    };
    for s in &seeded {
        let row = check_node(s, &go, topo, &converged, &lost, ipam.as_ref(), &mut report).await;
        report.rows.push(row?);
    }
    summarize(&mut report, &seeded, &lost);
    release_on_delete(opts, &mut go, &seeded, emu, &mut report).await?;
    Ok((
        report,
        Alive {
            _go: go,
            _bash: bash,
            _ipam: keepalive,
        },
    ))
}

/// The controller, agents and emulator of a finished scenario, kept alive
/// for `--hold`.
pub(super) struct Alive {
    _go: Running,
    _bash: Running,
    _ipam: super::KeepAlive,
}

/// Leaves every node as its original would have: records, objects and
/// kernel state.
fn seed_all(
    zones: &[ZonePlan],
    topo: &Topology,
    emu: &Emulator,
    go: &Running,
    bash: &Running,
) -> Result<Vec<Seeded>, String> {
    let mut out = Vec::new();
    for (i, (name, zone, ip, ns)) in topo.nodes.iter().enumerate() {
        let original = Original::of(i);
        let mut node = node_info(name, zone, ip)?;
        let seeded = match original {
            Original::Controller => {
                // A Node object has a uid; the Go controller's record has
                // no owner reference to it.
                node.uid = Some(format!("uid-{name}"));
                go.nodes.upsert(node);
                seed_controller_node(zones, i, name, zone, ns, emu, go)?
            }
            Original::StaticRoutes => {
                bash.nodes.upsert(node);
                seed_static_routes_node(name, zone, ip, ns)?
            }
        };
        out.push(seeded);
    }
    let (route, spec) = route_spec(0, GatewayChoice::Overlay)?;
    go.routes.apply(&route, Ok(spec));
    Ok(out)
}

/// A node as the Go controller and its network pod leave it.
fn seed_controller_node(
    zones: &[ZonePlan],
    index: usize,
    name: &str,
    zone: &str,
    ns: &Netns,
    emu: &Emulator,
    go: &Running,
) -> Result<Seeded, String> {
    let (zone_index, plan) = zones
        .iter()
        .enumerate()
        .find(|(_, z)| z.zone == zone)
        .ok_or_else(|| format!("{name}: zone {zone} is not planned"))?;
    let (IpAddr::V4(gateway), IpAddr::V4(network)) = (plan.gateway, plan.subnet.network().ip())
    else {
        return Err("the migrate scenario's subnets are IPv4".into());
    };
    let host = u32::from(network) + 10 + index as u32;
    let address = std::net::Ipv4Addr::from(host);
    let subnet_id = zone_index as u64 + 1;
    emu.seed_original_entry(subnet_id, address, name)
        .ok_or_else(|| format!("{name}: the emulator refused {address} in subnet {subnet_id}"))?;
    let overlay = IpNetwork::new(IpAddr::V4(address), plan.subnet.prefix())
        .map_err(|e| format!("{name}: {e}"))?;
    let labels = BTreeMap::from([
        ("node".to_owned(), name.to_owned()),
        ("region".to_owned(), "lab".to_owned()),
        ("zone".to_owned(), zone.to_owned()),
    ]);
    go.ips.insert(overlay_core::OverlayIpRecord {
        labels,
        ..overlay_core::fakes::recorded_overlay_ip(name, overlay, IpAddr::V4(gateway))
    });
    tb(ns.ip(&["link", "add", SEED2_LINK, "link", "eth0", "type", "macvlan"]))?;
    tb(ns.add_addr(SEED2_LINK, &overlay.to_string()))?;
    tb(ns.set_up(SEED2_LINK, true))?;
    tb(ns.add_route(ONPREM_SUBNET, Some(&gateway.to_string()), Some(SEED2_LINK)))?;
    Ok(Seeded {
        name: name.to_owned(),
        zone: zone.to_owned(),
        original: Original::Controller,
        source: IpAddr::V4(address),
        overlay: Some((overlay, IpAddr::V4(gateway))),
        link: Some(link_facts(ns)?),
    })
}

/// A node as the static-routes DaemonSet leaves it: `ip route add` of each
/// entry of its route list via the private network's gateway.
fn seed_static_routes_node(name: &str, zone: &str, ip: &str, ns: &Netns) -> Result<Seeded, String> {
    let entries: Vec<String> =
        serde_json::from_str(SEED1_ROUTES).map_err(|e| format!("SEED1_ROUTES: {e}"))?;
    for entry in &entries {
        tb(ns.ip(&["route", "add", entry, "via", VLAN_GW, "dev", "eth0"]))?;
    }
    Ok(Seeded {
        name: name.to_owned(),
        zone: zone.to_owned(),
        original: Original::StaticRoutes,
        source: ip.parse().map_err(|e| format!("{name}: {ip}: {e}"))?,
        overlay: None,
        link: None,
    })
}

/// Index, MAC and macvlan mode of `tmp0`, from `ip -o -d link show`.
fn link_facts(ns: &Netns) -> Result<LinkFacts, String> {
    let out = tb(ns.ip(&["-o", "-d", "link", "show", SEED2_LINK]))?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |pair: &[&str]| {
        words
            .windows(pair.len() + 1)
            .find(|w| w[..pair.len()] == *pair)
            .map(|w| w[pair.len()].to_owned())
            .unwrap_or_default()
    };
    Ok(LinkFacts {
        index: line.split(':').next().unwrap_or_default().trim().to_owned(),
        mac: after(&["link/ether"]),
        mode: after(&["macvlan", "mode"]),
    })
}

/// Starts the new controller over the Go controller's objects, an agent
/// per Go node, and a legacy-mode agent per static-routes node reading the
/// original's route list.
async fn start_new(
    go: &mut Running,
    bash: &mut Running,
    topo: &Topology,
    seeded: &[Seeded],
) -> Result<(), String> {
    // Released means deleted from phpIPAM here, not held back.
    super::start_controller(go, Duration::ZERO);
    let legacy = seed1_routes()?;
    go.started = Instant::now();
    bash.started = go.started;
    for s in seeded {
        let ns = topo.node(&s.name).ok_or("node namespace")?;
        match s.original {
            Original::Controller => {
                let h = start_agent(&s.name, ns, None, go).await?;
                go.agents.insert(s.name.clone(), h);
            }
            Original::StaticRoutes => {
                let h = start_agent(&s.name, ns, Some(&legacy), bash).await?;
                bash.agents.insert(s.name.clone(), h);
            }
        }
    }
    progress("controller and agents started on top of the originals' state");
    Ok(())
}

/// The original's route list, read the way the agent reads the ConfigMap
/// (the bare address as a /32).
fn seed1_routes() -> Result<Vec<Cidr>, String> {
    overlay_core::legacy::parse_legacy_list(SEED1_ROUTES)
        .map(|l| l.subnets)
        .map_err(|e| e.to_string())
}

/// Per node: ms from the start of the reconcilers until everything the
/// original left is overlay's; nodes missing did not get there in time.
async fn wait_taken_over(
    opts: &LabOptions,
    go: &Running,
    topo: &Topology,
    seeded: &[Seeded],
    ipam: &dyn IpamBackend,
) -> BTreeMap<String, u128> {
    let deadline = Instant::now() + opts.timeout;
    let mut done = BTreeMap::new();
    while done.len() < seeded.len() && Instant::now() < deadline {
        for s in seeded {
            if !done.contains_key(&s.name) && taken_over(s, go, topo, ipam).await {
                done.insert(s.name.clone(), go.started.elapsed().as_millis());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress(&format!(
        "{} of {} nodes taken over",
        done.len(),
        seeded.len()
    ));
    done
}

async fn taken_over(s: &Seeded, go: &Running, topo: &Topology, ipam: &dyn IpamBackend) -> bool {
    let Some(ns) = topo.node(&s.name) else {
        return false;
    };
    let ours = |dest: &str| {
        ns.routes(&[]).is_ok_and(|rs| {
            rs.iter()
                .any(|l| l.starts_with(&format!("{dest} ")) && !l.contains("proto boot"))
                && !rs
                    .iter()
                    .any(|l| l.starts_with(&format!("{dest} ")) && l.contains("proto boot"))
        })
    };
    match (s.original, s.overlay) {
        (Original::Controller, Some((address, _))) => {
            let configured = go
                .ips
                .snapshot()
                .iter()
                .any(|x| x.name == s.name && x.agent.as_ref().is_some_and(|a| a.configured));
            configured
                && super::applied_routes(go, &s.name) == 1
                && ours(ONPREM_SUBNET)
                && adoption(ipam, &s.name, address).await == "ours"
        }
        _ => seed1_routes().is_ok_and(|rs| {
            rs.iter()
                .all(|c| ours(c.to_string().trim_end_matches("/32")))
        }),
    }
}

/// How the IPAM holds `address` for `node`, in one word.
async fn adoption(ipam: &dyn IpamBackend, node: &str, address: IpNetwork) -> &'static str {
    match ipam
        .inspect_adoption(&Owner::new("lab", node.to_owned()), address)
        .await
    {
        Ok(Adoption::Ours { .. } | Adoption::Adopted { .. }) => "ours",
        Ok(Adoption::Adoptable { .. }) => "not adopted",
        Ok(Adoption::Foreign { .. }) => "foreign",
        Ok(Adoption::Missing) => "missing",
        Err(_) => "unknown",
    }
}

/// `ping -O` every 10 ms from `source` to the on-prem host, in `ns`.
fn start_pinger(ns: &Netns, source: IpAddr) -> Result<Child, String> {
    tokio::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "ping", "-n", "-O", "-i", "0.01"])
        .args(["-I", &source.to_string(), ONPREM_HOST])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting ping in {}: {e}", ns.name()))
}

/// Pings sent and lost, as counted by [`tally`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PingTally {
    /// Echo requests answered.
    pub answered: u64,
    /// Echo requests never answered (a request still in flight when ping
    /// was stopped is neither).
    pub lost: u64,
}

/// Stops a pinger with SIGINT (so it flushes its output) and counts.
async fn stop_pinger(child: Child) -> Result<PingTally, String> {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    let out = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .map_err(|_| "ping did not stop within 5 s of SIGINT".to_owned())?
        .map_err(|e| format!("reading ping's output: {e}"))?;
    Ok(tally(&String::from_utf8_lossy(&out.stdout)))
}

/// Counts `ping -O` output: a sequence number reported "no answer yet" and
/// never answered afterwards is lost.
pub fn tally(output: &str) -> PingTally {
    let seq = |l: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|n| n.parse::<u64>().ok())
    };
    let mut answered = std::collections::BTreeSet::new();
    let mut missing = std::collections::BTreeSet::new();
    for line in output.lines() {
        match seq(line) {
            Some(n) if line.contains("no answer yet") => {
                missing.insert(n);
            }
            Some(n) if line.contains("bytes from") => {
                answered.insert(n);
            }
            _ => {}
        }
    }
    PingTally {
        answered: answered.len() as u64,
        lost: missing.difference(&answered).count() as u64,
    }
}

/// One node's row, and its checks: no ping lost, address kept, link kept,
/// record adopted.
async fn check_node(
    s: &Seeded,
    go: &Running,
    topo: &Topology,
    converged: &BTreeMap<String, u128>,
    lost: &BTreeMap<String, PingTally>,
    ipam: &dyn IpamBackend,
    report: &mut LabReport,
) -> Result<NodeRow, String> {
    let ns = topo.node(&s.name).ok_or("node namespace")?;
    let pings = lost.get(&s.name).copied().unwrap_or_default();
    let who = format!("{} (left by {})", s.name, s.original.name());
    report.checks.push((
        format!(
            "{who}: {} of {} pings lost during the takeover",
            pings.lost,
            pings.answered + pings.lost
        ),
        pings.lost == 0 && pings.answered > 0,
    ));
    let (address, gateway) = match s.overlay {
        Some((addr, gw)) => {
            let recorded = go
                .ips
                .snapshot()
                .into_iter()
                .find(|x| x.name == s.name)
                .and_then(|x| x.ip_addr);
            let on_link = tb(ns.ip(&["-o", "addr", "show", "dev", SEED2_LINK]))?;
            let on_link = String::from_utf8_lossy(&on_link.stdout).contains(&addr.to_string());
            report.checks.push((
                format!("{who}: address {addr} kept (recorded and on {SEED2_LINK})"),
                recorded == Some(addr) && on_link,
            ));
            let now = link_facts(ns)?;
            let before = s.link.clone().unwrap_or(LinkFacts {
                index: String::new(),
                mac: String::new(),
                mode: String::new(),
            });
            report.checks.push((
                format!(
                    "{who}: {SEED2_LINK} kept in place (index {}, MAC {}, mode {})",
                    before.index, before.mac, before.mode
                ),
                now == before,
            ));
            let held = adoption(ipam, &s.name, addr).await;
            report.checks.push((
                format!("{who}: phpIPAM record of {addr} adopted ({held})"),
                held == "ours",
            ));
            (addr.to_string(), gw.to_string())
        }
        None => (s.source.to_string(), VLAN_GW.to_owned()),
    };
    Ok(NodeRow {
        node: s.name.clone(),
        zone: s.zone.clone(),
        address,
        gateway,
        routes: if converged.contains_key(&s.name) {
            "ours".into()
        } else {
            "not yet".into()
        },
        ping_ok: pings.lost == 0 && pings.answered > 0,
        converge_ms: converged.get(&s.name).copied(),
    })
}

/// The scenario's totals: lost pings, changed addresses, adopted records.
fn summarize(report: &mut LabReport, seeded: &[Seeded], lost: &BTreeMap<String, PingTally>) {
    let total: u64 = lost.values().map(|t| t.lost).sum();
    let sent: u64 = lost.values().map(|t| t.lost + t.answered).sum();
    let failed = |what: &str| {
        report
            .checks
            .iter()
            .filter(|(c, ok)| c.contains(what) && !ok)
            .count()
    };
    let changed = failed("kept (recorded");
    let records = seeded.iter().filter(|s| s.overlay.is_some()).count();
    let not_adopted = failed("record of");
    let mut line = String::new();
    let _ = write!(
        line,
        "takeover: {total} of {sent} pings lost, {changed} addresses changed, {} of {records} records adopted",
        records - not_adopted
    );
    progress(&line);
    report
        .checks
        .push((line, total == 0 && changed == 0 && not_adopted == 0));
}

/// Deletes the first node the Go controller left, and checks that the
/// record that controller made for it is released in phpIPAM.
async fn release_on_delete(
    opts: &LabOptions,
    go: &mut Running,
    seeded: &[Seeded],
    emu: &Emulator,
    report: &mut LabReport,
) -> Result<(), String> {
    let Some((victim, (address, _))) = seeded
        .iter()
        .find_map(|s| s.overlay.map(|o| (s.name.clone(), o)))
    else {
        return Ok(());
    };
    progress(&format!("deleting node {victim}"));
    go.nodes.remove(&victim);
    if let Some(h) = go.agents.remove(&victim) {
        h.abort();
    }
    let ips = go.ips.clone();
    let held = |ip: IpAddr| {
        (1..=4u64).any(|subnet| emu.addresses(subnet).iter().any(|a| IpAddr::V4(a.ip) == ip))
    };
    let released = wait_for(
        &format!("the original record of {victim} to be released"),
        opts.timeout,
        async || !ips.snapshot().iter().any(|x| x.name == victim) && !held(address.ip()),
    )
    .await;
    report.checks.push((
        format!(
            "{victim} deleted: the record the Go controller made for it ({}) is released in phpIPAM",
            address.ip()
        ),
        released,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_still_in_flight_is_not_lost_and_an_unanswered_one_is() {
        let out = "PING 203.0.113.10 (203.0.113.10) from 192.0.2.11 : 56(84) bytes of data.\n\
            64 bytes from 203.0.113.10: icmp_seq=1 ttl=63 time=0.05 ms\n\
            no answer yet for icmp_seq=2\n\
            64 bytes from 203.0.113.10: icmp_seq=2 ttl=63 time=12.1 ms\n\
            no answer yet for icmp_seq=3\n\
            64 bytes from 203.0.113.10: icmp_seq=4 ttl=63 time=0.04 ms\n\
            \n--- 203.0.113.10 ping statistics ---\n\
            5 packets transmitted, 3 received, 40% packet loss, time 40ms\n";
        assert_eq!(
            tally(out),
            PingTally {
                answered: 3,
                lost: 1
            }
        );
    }
}
