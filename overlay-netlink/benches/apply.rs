//! `cargo bench -p overlay-netlink --bench apply`
//!
//! In fresh network namespaces (needs root): installs 1,000 and 10,000
//! routes (a) with [`NetlinkProgrammer`], (b) with one `ip route add`
//! process per route (what the original implementations did; for 10,000 a
//! sample of 1,000 is timed and multiplied by 10), (c) with one
//! `ip -batch` run; then a no-op re-apply of 10,000 routes, and the
//! drift-repair latency over 100 external deletions (from sending the
//! delete on another netlink socket to the programmer's `Repaired` event);
//! and the incremental figure: with 1,000 routes in place, the latency of
//! one [`RouteProgrammer::update`] adding one route (a new StaticRoute:
//! from the call to the kernel's acknowledgement, no dumps), against one
//! `ip route add` process per route in the same namespace.
//!
//! Ratios are speed-ups of the programmer over the baseline measured in the
//! same run: `ratio_vs_exec = exec_ms / programmer_ms`,
//! `ratio_vs_batch = batch_ms / programmer_ms` (≥ 0.67 means within 1.5× of
//! `ip -batch`), `update_ratio_vs_exec = exec p50 / update p50` (printed as
//! `ratio_vs_exec=` on the incremental line).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use overlay_core::{
    Cidr, DesiredNodeState, DriftEvent, RouteChanges, RouteProgrammer, RouteResult, RouteSpec,
};
use overlay_netlink::{NetlinkProgrammer, ProgrammerConfig};
use overlay_testbed::{Netns, NodeWithGateway, privileged, run_bench};

const GW: &str = "192.0.2.1";

/// The i-th /32 in 198.18.0.0/15.
fn dest(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        198,
        18 + (i >> 16) as u8,
        ((i >> 8) & 0xff) as u8,
        (i & 0xff) as u8,
    )
}

/// The route to the i-th /32 via the gateway.
fn spec(i: usize) -> RouteSpec {
    let gw: IpAddr = GW.parse().unwrap();
    RouteSpec {
        destination: Cidr::parse("bench", &format!("{}/32", dest(i))).unwrap(),
        gateway: Some(gw),
        device: None,
        table: None,
        metric: None,
    }
}

fn desired(n: usize) -> DesiredNodeState {
    DesiredNodeState {
        overlay: None,
        routes: (0..n).map(spec).collect(),
        ..Default::default()
    }
}

/// Samples of the incremental figure.
const UPDATE_SAMPLES: usize = 200;

/// With 1,000 routes in place: p50 of `update` adding one route, and p50
/// of one `ip route add` process per route, in ms.
async fn incremental() -> (f64, f64) {
    let bed = node("bench-u");
    let ns = &bed.node;
    let p = NetlinkProgrammer::new(ProgrammerConfig::default().in_namespace(ns.path()))
        .await
        .unwrap();
    p.apply(&desired(1_000)).await.unwrap();
    let before = p.counters();
    let mut lat = Vec::with_capacity(UPDATE_SAMPLES);
    for k in 0..UPDATE_SAMPLES {
        let changes = RouteChanges {
            remove: vec![],
            upsert: vec![spec(1_000 + k)],
        };
        let t = Instant::now();
        let r = p.update(&changes).await.unwrap();
        lat.push(ms(t.elapsed()));
        assert_eq!(r.routes[0].result, RouteResult::Added, "{r:?}");
        assert_eq!(r.kernel_writes, 1);
    }
    let after = p.counters();
    assert_eq!(after.dumps, before.dumps, "update dumped");
    assert!(count_routes(ns) >= 1_000 + UPDATE_SAMPLES);
    let mut exec = Vec::with_capacity(UPDATE_SAMPLES);
    for k in 0..UPDATE_SAMPLES {
        let d = format!("{}/32", dest(2_000 + k));
        let t = Instant::now();
        overlay_testbed::ip(&["-n", ns.name(), "route", "add", &d, "via", GW]).unwrap();
        exec.push(ms(t.elapsed()));
    }
    assert!(count_routes(ns) >= 1_000 + 2 * UPDATE_SAMPLES);
    lat.sort_by(f64::total_cmp);
    exec.sort_by(f64::total_cmp);
    (percentile(&lat, 0.5), percentile(&exec, 0.5))
}

/// A namespace with `eth0` (192.0.2.2/24) wired to a peer holding the
/// gateway 192.0.2.1.
fn node(label: &str) -> NodeWithGateway {
    NodeWithGateway::new(label, &["192.0.2.2/24"], &["192.0.2.1/24"]).unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn count_routes(ns: &Netns) -> usize {
    ns.routes(&[]).unwrap().len()
}

async fn programmer_install(n: usize) -> f64 {
    let bed = node("bench-p");
    let ns = &bed.node;
    let p = NetlinkProgrammer::new(ProgrammerConfig::default().in_namespace(ns.path()))
        .await
        .unwrap();
    let d = desired(n);
    let t = Instant::now();
    let r = p.apply(&d).await.unwrap();
    let el = ms(t.elapsed());
    assert_eq!(r.failures().count(), 0);
    assert_eq!(r.kernel_writes, n as u64);
    assert!(count_routes(ns) >= n);
    el
}

fn exec_install(n: usize) -> f64 {
    let bed = node("bench-e");
    let ns = &bed.node;
    let t = Instant::now();
    for i in 0..n {
        let d = format!("{}/32", dest(i));
        overlay_testbed::ip(&["-n", ns.name(), "route", "add", &d, "via", GW]).unwrap();
    }
    let el = ms(t.elapsed());
    assert!(count_routes(ns) >= n);
    el
}

fn batch_install(n: usize) -> f64 {
    let bed = node("bench-b");
    let ns = &bed.node;
    let path = std::env::temp_dir().join(format!("overlay-bench-{}-{n}.batch", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..n {
            writeln!(f, "route add {}/32 via {GW}", dest(i)).unwrap();
        }
    }
    let p = path.to_string_lossy().into_owned();
    let t = Instant::now();
    overlay_testbed::ip(&["-n", ns.name(), "-batch", &p]).unwrap();
    let el = ms(t.elapsed());
    let _ = std::fs::remove_file(&path);
    assert!(count_routes(ns) >= n);
    el
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    if !privileged("bench apply") {
        return;
    }
    run_bench(run()).unwrap();
}

/// Install times of 1,000 and 10,000 routes, ms.
struct Installs {
    /// The programmer, for 1,000 and 10,000 routes.
    programmer: [f64; 2],
    /// `ip -batch`, for 1,000 and 10,000 routes.
    batch: [f64; 2],
    /// One `ip route add` per route for 1,000 routes.
    exec_1000: f64,
}

/// Measures and prints the install times.
async fn installs() -> Installs {
    let mut prog = [0.0; 2];
    let mut batch = [0.0; 2];
    for (k, n) in [1_000usize, 10_000].into_iter().enumerate() {
        prog[k] = programmer_install(n).await;
        println!("programmer install {n:>6} routes: {:9.1} ms", prog[k]);
        batch[k] = batch_install(n);
        println!("ip -batch   install {n:>6} routes: {:9.1} ms", batch[k]);
    }
    let exec_1000 = exec_install(1_000);
    println!("ip per route install  1000 routes: {exec_1000:9.1} ms");
    println!(
        "ip per route install 10000 routes: {:9.1} ms (extrapolated: 10 x the 1,000 sample)",
        exec_1000 * 10.0
    );
    println!(
        "1000 routes: programmer is {:.1}x faster than ip per route, {:.2}x the speed of ip -batch",
        exec_1000 / prog[0],
        batch[0] / prog[0]
    );
    Installs {
        programmer: prog,
        batch,
        exec_1000,
    }
}

/// Median of 7 no-op re-applies of `d`, ms, and their writes in total.
async fn noop_reapply(p: &NetlinkProgrammer, d: &DesiredNodeState) -> (f64, u64) {
    let mut noops = Vec::new();
    let mut noop_writes = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let r = p.apply(d).await.unwrap();
        noops.push(ms(t.elapsed()));
        noop_writes += r.kernel_writes;
    }
    noops.sort_by(f64::total_cmp);
    let noop_ms = percentile(&noops, 0.5);
    println!(
        "no-op re-apply 10000 routes: median {noop_ms:.1} ms over 7 runs, {noop_writes} writes in total"
    );
    (noop_ms, noop_writes)
}

/// An external actor in `ns`: a netlink handle on its own socket.
fn external_handle(ns: &Netns) -> rtnetlink::Handle {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle) = ns
        .run(|| {
            let _g = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            (conn, handle)
        })
        .unwrap();
    tokio::spawn(conn);
    handle
}

/// Deletes the route to the i-th /32 (main table) through `handle`.
async fn delete_externally(handle: &rtnetlink::Handle, i: usize) {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 32;
    m.header.table = 254;
    m.header.scope = RouteScope::NoWhere;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(dest(i))));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelRoute(m));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut h = handle.clone();
    let mut resp = h.request(req).unwrap();
    while let Some(msg) = resp.next().await {
        if let NetlinkPayload::Error(e) = msg.payload {
            assert!(e.code.is_none(), "delete failed: {e:?}");
        }
    }
}

/// p50 and p99 of the drift-repair latency over 100 external deletions of
/// routes `p` installed in `ns`, ms.
async fn repair_latency(ns: &Netns, p: &NetlinkProgrammer) -> (f64, f64) {
    let handle = external_handle(ns);
    let mut events = p.drift();
    let mut lat = Vec::new();
    for k in 0..100 {
        let i = (k * 97) % 10_000;
        let t = Instant::now();
        delete_externally(&handle, i).await;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
                Ok(Some(DriftEvent::Repaired { .. })) => break,
                Ok(Some(_)) => {}
                other => panic!("no repair after deleting {}: {other:?}", dest(i)),
            }
        }
        lat.push(ms(t.elapsed()));
    }
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let c = p.counters();
    println!(
        "drift repair over 100 external deletions: median {p50:.3} ms, p99 {p99:.3} ms ({} repairs, {} repair writes)",
        c.repairs, c.repair_writes
    );
    (p50, p99)
}

async fn run() {
    let installs = installs().await;

    // Incremental: one new route with 1,000 in place.
    let (update_p50, exec_p50) = incremental().await;
    let update_ratio = exec_p50 / update_p50;
    println!(
        "incremental (1000 routes in place, {UPDATE_SAMPLES} samples): update_p50_ms={update_p50:.3} exec_p50_ms={exec_p50:.3} ratio_vs_exec={update_ratio:.1}"
    );

    // No-op re-apply and repair latency, on 10,000 routes.
    let bed = node("bench-n");
    let p = NetlinkProgrammer::new(ProgrammerConfig::default().in_namespace(bed.node.path()))
        .await
        .unwrap();
    let d = desired(10_000);
    p.apply(&d).await.unwrap();
    let (noop_ms, noop_writes) = noop_reapply(&p, &d).await;
    let (p50, p99) = repair_latency(&bed.node, &p).await;
    assert_eq!(
        p.apply(&d).await.unwrap().kernel_writes,
        0,
        "all routes back"
    );

    let programmer_ms = installs.programmer[1];
    let batch_ms = installs.batch[1];
    let exec_10000 = installs.exec_1000 * 10.0;
    println!(
        "BENCH netlink-apply routes=10000 programmer_ms={programmer_ms:.1} exec_ms={exec_10000:.1} batch_ms={batch_ms:.1} ratio_vs_exec={:.1} ratio_vs_batch={:.2} noop_ms={noop_ms:.1} noop_writes={noop_writes} repair_p50_ms={p50:.3} repair_p99_ms={p99:.3} update_p50_ms={update_p50:.3} update_exec_p50_ms={exec_p50:.3} update_ratio_vs_exec={update_ratio:.1}",
        exec_10000 / programmer_ms,
        batch_ms / programmer_ms
    );
}
