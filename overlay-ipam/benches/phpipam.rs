//! `cargo bench -p overlay-ipam --bench phpipam`: 5,000 reservations for
//! distinct owners against the phpIPAM emulator with 5 ms latency per
//! request, compared with a baseline client that does what the original
//! controller did (sequentially: a fresh login, `first_free`, then `GET
//! subnet` for every address).

use std::collections::BTreeSet;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_core::{IpamBackend, Owner, Zone};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, original_reserve};
use overlay_ipam::phpipam::{Credentials, PhpIpamBackend, PhpIpamConfig, Secret};
use tokio::sync::Semaphore;

const RESERVATIONS: usize = 5_000;
const LATENCY: Duration = Duration::from_millis(5);
/// The RFC 5737 ranges hold only 3 x 254 addresses: reservations run in
/// rounds that fit one /24, and the emulator's address table is emptied out
/// of band between rounds (not timed, no requests). Each round uses fresh
/// owners, so every reservation is a new one.
const ROUND: usize = 250;
const CONCURRENCY: usize = 64;
const BASELINE_SAMPLE: usize = 200;
const SUBNETS: [u64; 1] = [3];

fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        latency: LATENCY,
        ..EmulatorConfig::default()
    }
}

fn clear(emu: &Emulator) {
    for s in SUBNETS {
        emu.clear_subnet(s);
    }
}

fn rounds(total: usize) -> Vec<std::ops::Range<usize>> {
    (0..total)
        .step_by(ROUND)
        .map(|s| s..(s + ROUND).min(total))
        .collect()
}

async fn optimized(emu: &Emulator) -> Result<(f64, f64), Box<dyn Error>> {
    let mut cfg = PhpIpamConfig::new(emu.url(), "overlay").with_zone("dal10", SUBNETS);
    cfg.max_concurrent_requests = CONCURRENCY;
    let ipam = Arc::new(PhpIpamBackend::new(
        &cfg,
        "bench",
        Credentials::User {
            username: "apiuser".into(),
            password: Secret::new("ApiUser-Test-1"),
        },
    )?);
    let zone = Zone::parse("zone", "dal10")?;
    emu.reset_counts();
    let mut wall = Duration::ZERO;
    let mut done = 0;
    for round in rounds(RESERVATIONS) {
        let n = round.len();
        let start = Instant::now();
        let limit = Arc::new(Semaphore::new(CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for i in round {
            let ipam = ipam.clone();
            let zone = zone.clone();
            let limit = limit.clone();
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                ipam.reserve(&Owner::new("bench", format!("node-{i:05}")), &zone)
                    .await
            });
        }
        let mut addrs = BTreeSet::new();
        while let Some(r) = set.join_next().await {
            addrs.insert(r??.address);
        }
        wall += start.elapsed();
        if addrs.len() != n {
            return Err(format!("duplicate addresses: {} distinct of {n}", addrs.len()).into());
        }
        done += n;
        println!(
            "optimized: {done:>5}/{RESERVATIONS} reserved, {:.2} s so far, {} requests, 0 duplicates",
            wall.as_secs_f64(),
            emu.requests()
        );
        clear(emu);
    }
    let req = emu.requests() as f64 / RESERVATIONS as f64;
    println!("optimized: requests by route: {:?}", emu.request_counts());
    Ok((wall.as_secs_f64(), req))
}

/// What the original controller did for each address.
async fn baseline(emu: &Emulator, count: usize) -> Result<(f64, f64), Box<dyn Error>> {
    let http = reqwest::Client::new();
    let base = format!("{}/api/overlay", emu.url());
    emu.reset_counts();
    let mut wall = Duration::ZERO;
    for round in rounds(count) {
        let start = Instant::now();
        for i in round {
            original_reserve(
                &http,
                &base,
                ("apiuser", "ApiUser-Test-1"),
                &SUBNETS,
                &format!("node-{i:05}"),
            )
            .await?;
        }
        wall += start.elapsed();
        clear(emu);
    }
    Ok((wall.as_secs_f64(), emu.requests() as f64 / count as f64))
}

fn main() -> Result<(), Box<dyn Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let emu = Emulator::start(emulator_config()).await?;
        println!(
            "phpipam bench: {RESERVATIONS} reservations for distinct owners, emulator latency {} ms/request, \
             subnet 3 (203.0.113.0/24), rounds of {ROUND} fresh owners with the address table emptied out of band between rounds",
            LATENCY.as_millis()
        );
        let (base_wall, base_req) = baseline(&emu, BASELINE_SAMPLE).await?;
        let base_total = base_wall / BASELINE_SAMPLE as f64 * RESERVATIONS as f64;
        println!(
            "baseline (sequential: login + first_free + GET subnet each): {BASELINE_SAMPLE} reservations in {base_wall:.2} s, \
             {base_req:.2} req/reservation; extrapolated to {RESERVATIONS}: {base_total:.1} s (measured on a sample of {BASELINE_SAMPLE})"
        );
        let (wall, req) = optimized(&emu).await?;
        println!(
            "optimized (token reuse, cached subnet + owner index, {CONCURRENCY} concurrent): {RESERVATIONS} reservations in {wall:.2} s, \
             {:.0} reservations/s, {req:.4} req/reservation",
            RESERVATIONS as f64 / wall
        );
        println!(
            "BENCH phpipam reservations={RESERVATIONS} wall_s={wall:.3} req_per_reservation={req:.4} ratio_vs_sequential={:.1}",
            base_total / wall
        );
        Ok(())
    })
}
