//! Issue 14: the agent takes over what the original deployments left in
//! the kernel, against the real kernel in namespaces from the test bed:
//! the unmarked macvlan `tmp0` and the `ip route` (protocol boot) routes
//! of the Go overlay-ip controller (seed 2), the routes of the bash
//! static-routes DaemonSet (seed 1), without a packet or an address lost;
//! and `preview`, which tells all of it without writing. Run as root;
//! under CI=true a missing privilege fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use overlay_core::{
    Cidr, DesiredNodeState, InterfaceName, RouteChanges, RouteProgrammer, RouteResult, RouteSpec,
};
use overlay_netlink::{
    InterfaceAction, NetlinkProgrammer, OWNED_LINK_ALIAS, ProgrammerConfig, RouteAction,
    overlay_interface,
};
use overlay_testbed::{Netns, NodeWithGateway, privileged};

fn programmer_config(ns: &Netns) -> ProgrammerConfig {
    ProgrammerConfig::default().in_namespace(ns.path())
}

async fn programmer(ns: &Netns) -> NetlinkProgrammer {
    NetlinkProgrammer::new(programmer_config(ns)).await.unwrap()
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn name(s: &str) -> InterfaceName {
    s.parse().unwrap()
}

fn route(dest: &str, gw: &str, dev: Option<&str>) -> RouteSpec {
    RouteSpec {
        destination: cidr(dest),
        gateway: Some(ip(gw)),
        device: dev.map(name),
        table: None,
        metric: None,
    }
}

/// Runs `ip -n NS args`, which must succeed.
fn run(ns: &Netns, args: &[&str]) {
    ns.ip(args).unwrap();
}

/// `ip -n NS args` output.
fn out(ns: &Netns, args: &[&str]) -> String {
    String::from_utf8(ns.ip(args).unwrap().stdout).unwrap()
}

/// The lines of `ip route show args` (a leading `-6` for IPv6) that start
/// with `dest`.
fn routes_to(ns: &Netns, args: &[&str], dest: &str) -> Vec<String> {
    ns.routes(args)
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with(&format!("{dest} ")))
        .collect()
}

/// Asserts that exactly one route to `dest` exists and that it carries
/// overlay's protocol (250) with `rest` (`via GW dev DEV`).
fn assert_ours(ns: &Netns, args: &[&str], dest: &str, rest: &str) {
    let all = routes_to(ns, args, dest);
    assert_eq!(all.len(), 1, "{dest}: {all:#?}");
    assert!(
        all[0].contains(&format!("{dest} {rest} proto 250")),
        "{dest}: {all:#?}"
    );
}

/// Asserts that the route to `dest` is still the one added with `ip route`
/// (protocol boot, which `ip route show` filters with `proto boot`), with
/// `rest`.
fn assert_boot(ns: &Netns, args: &[&str], dest: &str, rest: &str) {
    let mut a = args.to_vec();
    a.extend(["proto", "boot"]);
    let boot = routes_to(ns, &a, dest);
    assert_eq!(boot.len(), 1, "{dest}: {:#?}", ns.routes(args).unwrap());
    assert!(boot[0].contains(rest), "{dest}: {boot:#?}");
}

/// What identifies `dev` and its set-up: index, MAC address, macvlan mode.
#[derive(Debug, PartialEq, Eq)]
struct LinkFacts {
    index: String,
    mac: String,
    mode: String,
}

fn link_facts(ns: &Netns, dev: &str) -> LinkFacts {
    let details = out(ns, &["-d", "-o", "link", "show", dev]);
    let word_after = |w: &str| {
        details
            .split_whitespace()
            .skip_while(|x| *x != w)
            .nth(1)
            .unwrap_or_else(|| panic!("no {w} in {details}"))
            .to_owned()
    };
    let words: Vec<&str> = details.split_whitespace().collect();
    let mode = words
        .windows(3)
        .find(|w| w[0] == "macvlan" && w[1] == "mode")
        .map(|w| w[2].to_owned())
        .unwrap_or_else(|| panic!("no macvlan mode in {details}"));
    LinkFacts {
        index: details.split(':').next().unwrap().to_owned(),
        mac: word_after("link/ether"),
        mode,
    }
}

/// The overlay gateway (on the gateway namespace's `gw0`) and address.
const OVERLAY_GW: &str = "198.51.100.1";
const OVERLAY_ADDR: &str = "198.51.100.4/24";

/// A node as the Go overlay-ip controller's network pod (seed 2) leaves
/// it: `eth0` (192.0.2.10/24) wired to a gateway namespace that also holds
/// the overlay gateway 198.51.100.1 and, on its loopback, 203.0.113.1 (an
/// on-prem host to ping); `tmp0` created with `ip link add tmp0 link eth0
/// type macvlan` (mode vepa, no alias) holding 198.51.100.4/24; routes
/// added with `ip route add SUBNET via GW dev tmp0` (protocol boot),
/// 198.19.0.0/16 via another gateway.
fn seed2(label: &str) -> NodeWithGateway {
    let b = NodeWithGateway::new(
        label,
        &["192.0.2.10/24"],
        &["192.0.2.1/24", "198.51.100.1/24"],
    )
    .unwrap();
    b.gateway.add_addr("lo", "203.0.113.1/32").unwrap();
    let n = &b.node;
    run(
        n,
        &["link", "add", "tmp0", "link", "eth0", "type", "macvlan"],
    );
    run(n, &["link", "set", "tmp0", "up"]);
    run(n, &["addr", "add", OVERLAY_ADDR, "dev", "tmp0"]);
    for (subnet, gw) in [
        ("203.0.113.0/24", OVERLAY_GW),
        ("198.18.0.0/16", OVERLAY_GW),
        ("198.19.0.0/16", "198.51.100.2"),
    ] {
        run(n, &["route", "add", subnet, "via", gw, "dev", "tmp0"]);
    }
    b
}

/// What the agent wants on a seed-2 node: the same interface, address and
/// routes, but 198.19.0.0/16 via the overlay gateway.
fn seed2_desired() -> DesiredNodeState {
    DesiredNodeState {
        overlay: Some(overlay_interface("tmp0", "eth0", OVERLAY_ADDR).unwrap()),
        routes: ["203.0.113.0/24", "198.18.0.0/16", "198.19.0.0/16"]
            .iter()
            .map(|s| route(s, OVERLAY_GW, Some("tmp0")))
            .collect(),
        ..Default::default()
    }
}

/// Seed 2's node: the macvlan is marked in place (same index, MAC, mode
/// vepa, address untouched), the exact routes now carry overlay's
/// protocol with the same gateway and device, and the route via another
/// gateway stays as it was and is reported. From then on all of it is
/// overlay's: a second apply writes nothing, drift repair puts a taken
/// over route back, and one no longer desired is removed.
#[tokio::test]
async fn a_seed2_node_is_taken_over_in_place() {
    if !privileged("a_seed2_node_is_taken_over_in_place") {
        return;
    }
    let b = seed2("seed2");
    let n = &b.node;
    let before = link_facts(n, "tmp0");
    assert_eq!(before.mode, "vepa", "{before:?}");
    let p = programmer(n).await;
    let d = seed2_desired();
    let r = p.apply(&d).await.unwrap();

    assert!(r.interface_adopted && !r.interface_created, "{r:?}");
    assert_eq!(r.address_added, None, "{r:?}");
    assert!(r.addresses_removed.is_empty(), "{r:?}");
    assert_eq!(r.adopted, d.routes[..2].to_vec(), "{r:?}");
    assert_eq!(r.routes[0].result, RouteResult::Replaced, "{r:?}");
    assert_eq!(r.routes[1].result, RouteResult::Replaced, "{r:?}");
    match &r.routes[2].result {
        RouteResult::Failed(m) => assert!(
            m.contains("did not install (protocol 3)") && m.contains("gateway differs"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    // The alias write and the two replaces: nothing else.
    assert_eq!(r.kernel_writes, 3, "{r:?}");

    assert_eq!(link_facts(n, "tmp0"), before);
    let link = out(n, &["-d", "link", "show", "tmp0"]);
    assert!(
        link.contains(&format!("alias {OWNED_LINK_ALIAS}")),
        "{link}"
    );
    let a = out(n, &["-o", "addr", "show", "dev", "tmp0"]);
    assert!(a.contains(OVERLAY_ADDR), "{a}");
    assert_ours(n, &[], "203.0.113.0/24", "via 198.51.100.1 dev tmp0");
    assert_ours(n, &[], "198.18.0.0/16", "via 198.51.100.1 dev tmp0");
    assert_boot(n, &[], "198.19.0.0/16", "via 198.51.100.2 dev tmp0");
    assert!(b.node.ping("203.0.113.1", Some("198.51.100.4")).unwrap());

    // Ours now, like anything overlay created.
    let again = p.apply(&d).await.unwrap();
    assert_eq!(again.kernel_writes, 0, "{again:?}");
    assert!(
        again.adopted.is_empty() && !again.interface_adopted,
        "{again:?}"
    );
    run(n, &["route", "del", "198.18.0.0/16"]);
    for _ in 0..300 {
        if !routes_to(n, &[], "198.18.0.0/16").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ours(n, &[], "198.18.0.0/16", "via 198.51.100.1 dev tmp0");
    let mut fewer = d.clone();
    fewer.routes.remove(0);
    let r = p.apply(&fewer).await.unwrap();
    assert_eq!(r.routes_removed.len(), 1, "{r:?}");
    assert!(routes_to(n, &[], "203.0.113.0/24").is_empty());
    assert_boot(n, &[], "198.19.0.0/16", "via 198.51.100.2 dev tmp0");
}

/// A node of the static-routes DaemonSet (seed 1): routes added with `ip
/// route add SUBNET via PRIVATE_GW dev PRIVATE_IFACE`. The desired routes
/// use the discovered gateway (the one of the route covering the private
/// network, here 198.18.0.0/15) and are taken over, IPv6 alike; the
/// covering route itself is not desired and stays.
#[tokio::test]
async fn seed1_routes_are_taken_over_with_the_discovered_gateway() {
    if !privileged("seed1_routes_are_taken_over_with_the_discovered_gateway") {
        return;
    }
    let b = NodeWithGateway::new(
        "seed1",
        &["192.0.2.10/24", "2001:db8::10/64"],
        &["192.0.2.1/24", "2001:db8::1/64"],
    )
    .unwrap();
    let n = &b.node;
    run(n, &["route", "add", "198.18.0.0/15", "via", "192.0.2.1"]);
    run(
        n,
        &[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "eth0",
        ],
    );
    run(
        n,
        &[
            "-6",
            "route",
            "add",
            "2001:db8:5::/48",
            "via",
            "2001:db8::1",
            "dev",
            "eth0",
        ],
    );
    let p = programmer(n).await;
    let found = p.discover_gateway(&cidr("198.18.0.0/15")).await.unwrap();
    assert_eq!(
        (found.gateway, found.device.as_str()),
        (ip("192.0.2.1"), "eth0")
    );
    let discovered = RouteSpec {
        gateway: Some(found.gateway),
        device: Some(found.device.clone()),
        ..route("203.0.113.0/24", "192.0.2.1", None)
    };
    // An IPv6 route whose device the kernel resolves: the same route.
    let v6 = route("2001:db8:5::/48", "2001:db8::1", None);
    let d = DesiredNodeState {
        routes: vec![discovered.clone(), v6.clone()],
        ..Default::default()
    };
    let r = p.apply(&d).await.unwrap();
    assert_eq!(r.adopted, vec![discovered, v6], "{r:?}");
    assert_eq!(r.kernel_writes, 2, "{r:?}");
    assert_eq!(r.routes[1].device, Some(name("eth0")), "{r:?}");
    assert_ours(n, &[], "203.0.113.0/24", "via 192.0.2.1 dev eth0");
    assert_ours(n, &["-6"], "2001:db8:5::/48", "via 2001:db8::1 dev eth0");
    assert_boot(n, &[], "198.18.0.0/15", "via 192.0.2.1 dev eth0");
    assert_eq!(p.apply(&d).await.unwrap().kernel_writes, 0);
}

/// A boot route on the key that is not exactly the desired one (another
/// device, or an extra attribute such as `src` or `mtu`) stays untouched
/// and is reported; so does an exact one of another protocol.
#[tokio::test]
async fn routes_that_differ_in_anything_are_left_alone() {
    if !privileged("routes_that_differ_in_anything_are_left_alone") {
        return;
    }
    let b = NodeWithGateway::new("differ", &["192.0.2.10/24"], &["192.0.2.1/24"]).unwrap();
    let n = &b.node;
    n.add_bridge("br1").unwrap();
    n.add_addr("br1", "192.0.2.20/24").unwrap();
    for r in [
        "203.0.113.0/25 via 192.0.2.1 dev br1",
        "203.0.113.128/25 via 192.0.2.1 dev eth0 src 192.0.2.10",
        "198.18.0.0/16 via 192.0.2.1 dev eth0 mtu 1400",
        "198.19.0.0/16 via 192.0.2.1 dev eth0 proto static",
    ] {
        let mut args = vec!["route", "add"];
        args.extend(r.split_whitespace());
        run(n, &args);
    }
    let before = n.routes(&["table", "all"]).unwrap();
    let p = programmer(n).await;
    let d = DesiredNodeState {
        routes: [
            "203.0.113.0/25",
            "203.0.113.128/25",
            "198.18.0.0/16",
            "198.19.0.0/16",
        ]
        .iter()
        .map(|s| route(s, "192.0.2.1", Some("eth0")))
        .collect(),
        ..Default::default()
    };
    let r = p.apply(&d).await.unwrap();
    assert!(r.adopted.is_empty(), "{r:?}");
    assert_eq!(r.kernel_writes, 0, "{r:?}");
    let why: Vec<&str> = r.failures().map(|(_, m)| m).collect();
    assert_eq!(why.len(), 4, "{r:?}");
    assert!(why[0].contains("device differs"), "{}", why[0]);
    assert!(why[1].contains("not a plain unicast route"), "{}", why[1]);
    assert!(why[2].contains("not a plain unicast route"), "{}", why[2]);
    assert!(
        why[3].contains("protocol 4") && !why[3].contains("taken over"),
        "{}",
        why[3]
    );
    assert_eq!(n.routes(&["table", "all"]).unwrap(), before);
}

/// `update` takes over a boot route too (found by the last full apply),
/// with one write and no dump; later the route is removed as ours.
#[tokio::test]
async fn update_takes_over_a_boot_route() {
    if !privileged("update_takes_over_a_boot_route") {
        return;
    }
    let b = NodeWithGateway::new("upd", &["192.0.2.10/24"], &["192.0.2.1/24"]).unwrap();
    let n = &b.node;
    run(
        n,
        &[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "eth0",
        ],
    );
    run(
        n,
        &[
            "route",
            "add",
            "198.18.0.0/16",
            "via",
            "192.0.2.1",
            "dev",
            "eth0",
        ],
    );
    let p = programmer(n).await;
    p.apply(&DesiredNodeState::default()).await.unwrap();
    // Not desired, not ours: untouched by the full apply.
    assert_boot(n, &[], "203.0.113.0/24", "via 192.0.2.1 dev eth0");
    let start = p.counters();
    let want = route("203.0.113.0/24", "192.0.2.1", None);
    let other_gw = route("198.18.0.0/16", "192.0.2.2", None);
    let r = p
        .update(&RouteChanges {
            remove: vec![],
            upsert: vec![want.clone(), other_gw],
        })
        .await
        .unwrap();
    assert_eq!(r.routes[0].result, RouteResult::Replaced, "{r:?}");
    assert_eq!(r.routes[0].device, Some(name("eth0")), "{r:?}");
    assert_eq!(r.adopted, vec![want.clone()], "{r:?}");
    assert!(
        matches!(&r.routes[1].result, RouteResult::Failed(m) if m.contains("did not install")),
        "{r:?}"
    );
    assert_ours(n, &[], "203.0.113.0/24", "via 192.0.2.1 dev eth0");
    assert_boot(n, &[], "198.18.0.0/16", "via 192.0.2.1 dev eth0");
    assert_eq!(p.counters().dumps, start.dumps);
    assert_eq!(p.last_report().await.unwrap().adopted, vec![want.clone()]);

    let r = p
        .update(&RouteChanges {
            remove: vec![want],
            upsert: vec![],
        })
        .await
        .unwrap();
    assert_eq!(r.routes_removed.len(), 1, "{r:?}");
    assert!(routes_to(n, &[], "203.0.113.0/24").is_empty());
}

/// Every item of the kernel's state `preview` could change: links with
/// details, addresses, routes of every table and family.
fn kernel_state(ns: &Netns) -> Vec<String> {
    [
        &["-d", "link", "show"][..],
        &["addr", "show"],
        &["route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
    ]
    .iter()
    .map(|args| out(ns, args))
    .collect()
}

/// `preview` on a seed-2 node says what the apply then does (take the
/// interface and the exact routes over, refuse the other, install a new
/// one) and changes nothing in the kernel.
#[tokio::test]
async fn preview_tells_the_takeover_and_writes_nothing() {
    if !privileged("preview_tells_the_takeover_and_writes_nothing") {
        return;
    }
    let b = seed2("preview");
    let n = &b.node;
    let p = programmer(n).await;
    let mut d = seed2_desired();
    d.routes.push(route("198.18.128.0/17", OVERLAY_GW, None));
    let before = kernel_state(n);
    let plan = p.preview(&d).await.unwrap();
    assert_eq!(kernel_state(n), before);
    assert_eq!(p.counters().writes, 0);

    let i = plan.interface.as_ref().unwrap();
    assert_eq!(i.action, InterfaceAction::Adopt, "{plan}");
    assert!(
        i.address_in_place && i.addresses_removed.is_empty(),
        "{plan}"
    );
    let actions: Vec<&RouteAction> = plan.routes.iter().map(|r| &r.action).collect();
    assert_eq!(actions[0], &RouteAction::Adopt, "{plan}");
    assert_eq!(actions[1], &RouteAction::Adopt, "{plan}");
    assert!(
        matches!(actions[2], RouteAction::Conflict { reason } if reason.contains("gateway differs")),
        "{plan}"
    );
    assert_eq!(actions[3], &RouteAction::Install, "{plan}");
    assert_eq!(plan.routes[3].device, Some(name("tmp0")), "{plan}");
    assert!(!plan.blocked() && !plan.is_noop(), "{plan}");
    let text = plan.to_string();
    assert!(
        text.contains("interface tmp0 (macvlan of eth0): take over in place"),
        "{text}"
    );
    assert!(
        text.contains("route 203.0.113.0/24 via 198.51.100.1 dev tmp0: take over"),
        "{text}"
    );
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["interface"]["action"], "adopt", "{json}");
    assert_eq!(json["routes"][0]["action"], "adopt", "{json}");
    assert_eq!(json["routes"][2]["action"], "conflict", "{json}");
    assert_eq!(json["routes"][3]["action"], "install", "{json}");

    // The apply does what the preview said.
    let r = p.apply(&d).await.unwrap();
    assert!(r.interface_adopted, "{r:?}");
    assert_eq!(r.adopted, d.routes[..2].to_vec(), "{r:?}");
    assert_eq!(r.routes[3].result, RouteResult::Added, "{r:?}");
    let after = p.preview(&d).await.unwrap();
    assert_eq!(
        after.interface.as_ref().unwrap().action,
        InterfaceAction::AlreadyOurs
    );
    assert!(after.is_noop(), "{after}");
}

/// `preview` on a bare node: the interface is created, and routes through
/// it (its device named, or resolved on its network) are installed.
#[tokio::test]
async fn preview_of_a_bare_node_creates_and_installs() {
    if !privileged("preview_of_a_bare_node_creates_and_installs") {
        return;
    }
    let b = NodeWithGateway::new("bare", &["192.0.2.10/24"], &["192.0.2.1/24"]).unwrap();
    let p = programmer(&b.node).await;
    let mut d = seed2_desired();
    d.routes[2].device = None;
    let before = kernel_state(&b.node);
    let plan = p.preview(&d).await.unwrap();
    assert_eq!(kernel_state(&b.node), before);
    let i = plan.interface.as_ref().unwrap();
    assert_eq!(i.action, InterfaceAction::Create, "{plan}");
    assert!(!i.address_in_place, "{plan}");
    assert!(
        plan.routes
            .iter()
            .all(|r| r.action == RouteAction::Install && r.device == Some(name("tmp0"))),
        "{plan}"
    );
    let r = p.apply(&d).await.unwrap();
    assert!(r.interface_created, "{r:?}");
    assert!(
        r.routes.iter().all(|o| o.result == RouteResult::Added),
        "{r:?}"
    );
}

/// Pings 203.0.113.1 from the overlay address of the seed-2 node `n`
/// every 10 ms, `count` times, in the background.
fn start_ping(n: &Netns, count: u32) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", n.name(), "ping", "-n", "-q", "-i", "0.01"])
        .args(["-c", &count.to_string(), "-W", "2", "-I", "198.51.100.4"])
        .arg("203.0.113.1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The takeover loses no packet: a ping every 10 ms through the taken
/// over interface and route runs across the apply without a loss.
#[tokio::test]
async fn the_takeover_loses_no_packet() {
    if !privileged("the_takeover_loses_no_packet") {
        return;
    }
    let b = seed2("noloss");
    let n = &b.node;
    // Neighbours resolved first, so that the count measures the route.
    assert!(n.ping("203.0.113.1", Some("198.51.100.4")).unwrap());
    let p = programmer(n).await;
    let mut ping = start_ping(n, 500);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = p.apply(&seed2_desired()).await.unwrap();
    assert!(
        ping.try_wait().unwrap().is_none(),
        "the ping ended before the takeover"
    );
    assert!(r.interface_adopted && r.adopted.len() == 2, "{r:?}");
    let result = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success() && summary.contains("500 packets transmitted, 500 received"),
        "{summary}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_ours(n, &[], "203.0.113.0/24", "via 198.51.100.1 dev tmp0");
}
