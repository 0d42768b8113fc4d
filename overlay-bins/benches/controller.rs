//! `cargo bench -p overlay-bins --bench controller`: 5,000 nodes appear at
//! once (in-memory node source and NodeOverlayIp store), the phpIPAM
//! emulator answers every request after 5 ms. Measures the time until every
//! node has its address, IPAM requests per node and the process's peak RSS
//! (the emulator runs in the same process, so it is an upper bound), and in
//! the same run a sequential baseline doing what the original controller
//! did per node: login, first_free, GET subnet.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_core::NodeInfo;
use overlay_core::controller::{Controller, ControllerConfig, ControllerParts};
use overlay_core::fakes::{MemoryEvents, MemoryNodes, MemoryOverlayIps, MemoryStaticRoutes};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, SubnetSpec, original_reserve};
use overlay_ipam::phpipam::{Credentials, PhpIpamBackend, PhpIpamConfig, Secret};

const NODES: usize = 5_000;
const LATENCY: Duration = Duration::from_millis(5);
const BASELINE_SAMPLE: usize = 200;
const CONCURRENCY: usize = 64;

fn proc_status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Two zones, one /18 each in the benchmarking range 198.18.0.0/15 (the
/// documentation ranges hold too few addresses for 5,000 nodes; these are
/// only data in the emulator, no traffic is sent to them).
fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        subnets: vec![
            SubnetSpec {
                id: 1,
                network: "198.18.0.0".parse().unwrap(),
                mask: 18,
                description: "zone-a".into(),
                gateway: Some("198.18.0.1".parse().unwrap()),
            },
            SubnetSpec {
                id: 2,
                network: "198.19.0.0".parse().unwrap(),
                mask: 18,
                description: "zone-b".into(),
                gateway: Some("198.19.0.1".parse().unwrap()),
            },
        ],
        latency: LATENCY,
        ..EmulatorConfig::default()
    }
}

fn main() {
    overlay_testbed::run_bench(bench()).unwrap();
}

async fn bench() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = emulator_config();
    let baseline_s = baseline(&cfg).await;

    // The controller.
    let emu = Emulator::start(cfg).await.unwrap();
    let (controller, ips) = controller(&emu, &emulator_config().users[0]);
    emu.reset_counts();
    let t = Instant::now();
    let run = tokio::spawn(controller.run(futures::future::pending()));
    wait_for_addresses(&ips, t).await;
    let wall = t.elapsed().as_secs_f64();
    run.abort();
    let recs = ips.snapshot();
    let distinct: BTreeSet<_> = recs.iter().filter_map(|r| r.ip_addr).collect();
    assert_eq!(distinct.len(), NODES, "every node has its own address");
    let req = emu.requests() as f64 / NODES as f64;
    println!(
        "controller: {NODES} nodes in {wall:.2} s, {req:.3} IPAM requests/node; by route: {:?}",
        emu.request_counts()
    );
    let peak = proc_status_mib("VmHWM:");
    println!("peak RSS of the process (controller + emulator + in-memory stores): {peak:.1} MiB");
    println!(
        "BENCH controller nodes={NODES} wall_s={wall:.3} req_per_node={req:.3} ratio_vs_sequential={:.1} peak_rss_mib={peak:.1}",
        baseline_s / wall
    );
}

/// The original controller, one node after the other: seconds for
/// [`NODES`], extrapolated from a sample.
async fn baseline(cfg: &EmulatorConfig) -> f64 {
    let (user, password) = cfg.users[0].clone();
    let emu = Emulator::start(cfg.clone()).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("{}/api/overlay", emu.url());
    emu.reset_counts();
    let t = Instant::now();
    for i in 0..BASELINE_SAMPLE {
        original_reserve(&http, &base, (&user, &password), &[1], &format!("base-{i}"))
            .await
            .unwrap();
    }
    let sample_s = t.elapsed().as_secs_f64();
    let baseline_req = emu.requests() as f64 / BASELINE_SAMPLE as f64;
    let baseline_s = sample_s * NODES as f64 / BASELINE_SAMPLE as f64;
    println!(
        "baseline (sequential login + first_free + GET subnet): {BASELINE_SAMPLE} nodes in {sample_s:.2} s, {baseline_req:.2} requests/node; extrapolated to {NODES}: {baseline_s:.1} s"
    );
    drop(emu);

    baseline_s
}

/// The controller over the emulator, [`NODES`] nodes in two zones.
fn controller(
    emu: &Emulator,
    (user, password): &(String, String),
) -> (Arc<Controller>, MemoryOverlayIps) {
    let pcfg = PhpIpamConfig::new(emu.url(), "overlay")
        .with_zone("zone-a", [1])
        .with_zone("zone-b", [2]);
    let ipam = Arc::new(
        PhpIpamBackend::new(
            &pcfg,
            "bench",
            Credentials::User {
                username: user.clone(),
                password: Secret::new(password),
            },
        )
        .unwrap(),
    );
    let nodes = MemoryNodes::new();
    for i in 0..NODES {
        let zone = if i % 2 == 0 { "zone-a" } else { "zone-b" };
        let labels: BTreeMap<String, String> =
            [("topology.kubernetes.io/zone".to_owned(), zone.to_owned())].into();
        nodes.upsert(NodeInfo::from_labels(
            format!("node-{i:05}"),
            labels,
            vec![],
        ));
    }
    let ips = MemoryOverlayIps::new();
    let controller = Arc::new(
        Controller::new(
            ControllerConfig {
                concurrency: CONCURRENCY,
                ..ControllerConfig::new("bench")
            },
            ControllerParts {
                nodes: Arc::new(nodes.clone()),
                ipam,
                overlay_ips: Arc::new(ips.clone()),
                routes: Arc::new(MemoryStaticRoutes::new()),
            },
        )
        .with_events(Arc::new(MemoryEvents::new())),
    );
    (controller, ips)
}

/// Waits until every node has its address, printing progress.
async fn wait_for_addresses(ips: &MemoryOverlayIps, t: Instant) {
    let mut last = 0;
    loop {
        let done = ips
            .snapshot()
            .iter()
            .filter(|r| r.ip_addr.is_some())
            .count();
        if done / 1000 > last / 1000 {
            println!(
                "{done} nodes have their address after {:.2} s",
                t.elapsed().as_secs_f64()
            );
        }
        last = done;
        if done == NODES {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "not converged after 300 s: {done}/{NODES}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
