//! `cargo bench -p overlay-ipam --bench kube`: 5,000 reservations for
//! distinct owners with the Kubernetes-native backend over the in-memory
//! API store (which counts requests), 64 at a time, against the file-pools
//! backend (a state file rewritten on every change) in the same run as the
//! baseline. Both allocate from 198.18.0.0/15 (RFC 2544 benchmarking
//! range): one /19 pool per backend, 8,190 addresses.
//!
//! Prints reservations per second, API requests per reservation (the
//! goal: at most 2) and the ratio of the two wall times; the last line is
//! `BENCH kube-ipam reservations=… wall_s=… req_per_reservation=…
//! ratio_vs_file=…`.

use std::collections::BTreeSet;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlay_core::fakes::MemoryPoolStore;
use overlay_core::ippool::IpPool;
use overlay_core::{IpamBackend, Owner, Zone};
use overlay_ipam::file::FileBackend;
use overlay_ipam::kubernetes::KubernetesBackend;
use overlay_ipam::pools::{PoolConfig, PoolsConfig};
use tokio::sync::Semaphore;

const RESERVATIONS: usize = 5_000;
const CONCURRENCY: usize = 64;
const CIDR: &str = "198.18.0.0/19";

/// Reserves for `RESERVATIONS` distinct owners, `CONCURRENCY` at a time;
/// answers the wall time and checks every address is distinct.
async fn run(backend: Arc<dyn IpamBackend>, zone: &Zone) -> Result<Duration, Box<dyn Error>> {
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RESERVATIONS {
        let (b, z, gate) = (backend.clone(), zone.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let owner = Owner::new("bench", format!("node-{i}"));
            Ok::<_, Box<dyn Error + Send + Sync>>(b.reserve(&owner, &z).await?.address)
        });
    }
    let mut seen = BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        let address = done?.map_err(|e| e.to_string())?;
        if !seen.insert(address) {
            return Err(format!("{address} handed out twice").into());
        }
    }
    Ok(start.elapsed())
}

fn main() -> Result<(), Box<dyn Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let zone = Zone::parse("zone", "bench")?;
        let dir = tempfile::tempdir()?;
        let pools = PoolsConfig::new().with_pool("bench", PoolConfig::parse(CIDR)?);
        let file: Arc<dyn IpamBackend> =
            Arc::new(FileBackend::open(dir.path().join("state.json"), &pools)?);
        let file_wall = run(file, &zone).await?;

        let store = MemoryPoolStore::new();
        store.put_pool(IpPool {
            name: "bench".into(),
            zone: "bench".into(),
            cidr: CIDR.into(),
            ..IpPool::default()
        });
        let kube = Arc::new(KubernetesBackend::start(Arc::new(store.clone()), "bench"));
        // The first lists arrive before the clock starts, as in a
        // controller that has been running.
        kube.lookup(&Owner::new("bench", "warm-up"), None).await?;
        let before = store.requests();
        let kube_wall = run(kube, &zone).await?;
        let requests = store.requests() - before;

        let per_s = |wall: Duration| RESERVATIONS as f64 / wall.as_secs_f64();
        let req = requests as f64 / RESERVATIONS as f64;
        let ratio = kube_wall.as_secs_f64() / file_wall.as_secs_f64();
        println!(
            "file pools:  {RESERVATIONS} reservations in {:.3} s ({:.0}/s)",
            file_wall.as_secs_f64(),
            per_s(file_wall)
        );
        println!(
            "kubernetes:  {RESERVATIONS} reservations in {:.3} s ({:.0}/s), {requests} API requests ({req:.2} per reservation; goal <= 2)",
            kube_wall.as_secs_f64(),
            per_s(kube_wall)
        );
        println!(
            "BENCH kube-ipam reservations={RESERVATIONS} wall_s={:.3} req_per_reservation={req:.4} ratio_vs_file={ratio:.4}",
            kube_wall.as_secs_f64()
        );
        Ok(())
    })
}
