//! Leader election over a Lease, with local fencing.
//!
//! The controller releases addresses in an IPAM that it shares with nobody
//! but its own replicas, so two replicas acting at once could hand one
//! address to two nodes. A replica therefore acts only while it is *sure*
//! it leads, by its own clock:
//!
//! - a renewal that started at local time `t` and succeeded makes this
//!   replica the leader until `t + leaseDuration − margin` (its
//!   **deadline**);
//! - a standby takes the Lease over only when it has seen the same Lease
//!   record, unchanged, for a whole `leaseDuration` of *its own* clock. It
//!   saw the record at the earliest when the renewal was written, which is
//!   after `t`. So no standby acts before `t + leaseDuration`, and the
//!   leader stops acting `margin` earlier — whatever the API server or the
//!   peer says, and even while the API server is unreachable;
//! - every IPAM write checks the deadline first ([`Fence::check`]), and
//!   [`Fence::lost`] fires at the deadline to cancel in-flight work.
//!
//! No replica compares its clock with a timestamp written by another, so an
//! offset between the replicas' clocks does not matter. What the margin
//! must cover is the difference in clock *rate* over one `leaseDuration`
//! (NTP keeps it far below 0.1%, i.e. under 15 ms for 15 s) plus the time
//! an IPAM request sent just before the deadline takes to reach the IPAM.
//! The defaults (15 s lease, 5 s margin, 2 s retry) leave the leader two
//! retries to renew before it steps down, and the request 5 s.
//!
//! The Lease itself is reached through [`LeaseStore`]; the Kubernetes
//! implementation is `k8s::KubeLease`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use ipnetwork::IpNetwork;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{IpamError, StoreError};
use crate::metrics::{Measurement, Metrics};
use crate::model::{Adoption, Owner, Reservation};
use crate::parse::Zone;
use crate::traits::IpamBackend;

/// The parts of a `coordination.k8s.io/v1` Lease that election uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// Who holds it; `None` (or empty) when released.
    pub holder: Option<String>,
    /// How long the holder's claim lasts after a renewal.
    pub lease_duration: Duration,
    /// When the current holder acquired it (wall clock, informational).
    pub acquire_time: Option<SystemTime>,
    /// When the holder last renewed (wall clock, informational: election
    /// uses only when a replica *observed* a change, by its own clock).
    pub renew_time: Option<SystemTime>,
    /// How many times the holder changed.
    pub transitions: i32,
    /// Opaque version for optimistic concurrency (`resourceVersion`).
    pub version: String,
}

impl LeaseRecord {
    fn held_by(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// Where the Lease lives.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// For logs: `Lease kube-system/overlay-controller`.
    fn describe(&self) -> String;
    /// The Lease now; `None` when it does not exist.
    async fn get(&self) -> Result<Option<LeaseRecord>, StoreError>;
    /// Creates it; [`StoreError::AlreadyExists`] when it already exists.
    async fn create(&self, record: &LeaseRecord) -> Result<LeaseRecord, StoreError>;
    /// Replaces it if its version is still `record.version`;
    /// [`StoreError::Conflict`] when someone else wrote in between.
    async fn update(&self, record: &LeaseRecord) -> Result<LeaseRecord, StoreError>;
}

/// Election settings.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// This replica's identity in the Lease (the Pod name).
    pub identity: String,
    /// `leaseDurationSeconds` written into the Lease.
    pub lease_duration: Duration,
    /// How long before the claim runs out this replica stops acting.
    pub margin: Duration,
    /// How often to renew (leader) or retry acquiring (standby).
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Defaults for `identity`: 15 s lease, 5 s margin, 2 s retry.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            margin: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks that the settings leave the leader time to renew.
    pub fn validate(&self) -> Result<(), String> {
        if self.identity.is_empty() {
            return Err("identity is empty".into());
        }
        if self.retry_period.is_zero() {
            return Err("the retry period must be more than zero".into());
        }
        if self.margin + self.retry_period >= self.lease_duration {
            return Err(format!(
                "lease duration {:?} must exceed margin {:?} + retry period {:?}, or the leader steps down before it can renew",
                self.lease_duration, self.margin, self.retry_period
            ));
        }
        Ok(())
    }

    fn claim(&self) -> Duration {
        self.lease_duration.saturating_sub(self.margin)
    }
}

/// Whether this replica may act: a cheap, cloneable view of the elector's
/// local deadline.
#[derive(Debug, Clone)]
pub struct Fence {
    rx: watch::Receiver<Option<Instant>>,
    /// Keeps the sender of a fixed fence ([`Fence::until`]) alive.
    _fixed: Option<Arc<watch::Sender<Option<Instant>>>>,
}

impl Fence {
    /// A fence that never closes: for a single replica run without
    /// election, and for embedding without a Lease.
    pub fn always() -> Self {
        Self::until(far_future())
    }

    /// A fence that closes at `deadline`: for embedding with a leadership
    /// term decided elsewhere, and for tests.
    pub fn until(deadline: Instant) -> Self {
        let (tx, rx) = watch::channel(Some(deadline));
        Self {
            rx,
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// The local deadline, when this replica leads.
    pub fn deadline(&self) -> Option<Instant> {
        *self.rx.borrow()
    }

    /// The deadline while this replica leads by its own clock; otherwise
    /// why not.
    pub fn check(&self) -> Result<Instant, String> {
        match self.deadline() {
            Some(d) if Instant::now() < d => Ok(d),
            Some(_) => Err("the Lease was not renewed before the local deadline".into()),
            None => Err("this replica does not hold the Lease".into()),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquired(&self) {
        let mut rx = self.rx.clone();
        loop {
            let d = *rx.borrow_and_update();
            if d.is_some_and(|d| Instant::now() < d) {
                return;
            }
            if rx.changed().await.is_err() {
                // The elector is gone: it never leads again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Completes when this replica stops leading: at the local deadline
    /// unless a renewal moved it, or when the elector gives the Lease up.
    pub async fn lost(&self) {
        let mut rx = self.rx.clone();
        loop {
            let Some(d) = *rx.borrow_and_update() else {
                return;
            };
            if Instant::now() >= d {
                return;
            }
            futures::select_biased! {
                () = tokio::time::sleep_until(d).fuse() => {
                    if *rx.borrow() == Some(d) {
                        return;
                    }
                }
                changed = rx.changed().fuse() => {
                    if changed.is_err() {
                        // No more renewals: the deadline stands.
                        tokio::time::sleep_until(d).await;
                        return;
                    }
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Runs the election for one replica; see the module documentation.
pub struct LeaderElector {
    store: Arc<dyn LeaseStore>,
    cfg: LeaderConfig,
    tx: watch::Sender<Option<Instant>>,
    /// The last record seen and when (local clock) it was first seen.
    observed: Option<(LeaseRecord, Instant)>,
}

impl LeaderElector {
    /// An elector and the fence that follows it.
    pub fn new(store: Arc<dyn LeaseStore>, cfg: LeaderConfig) -> (Self, Fence) {
        let (tx, rx) = watch::channel(None);
        (
            Self {
                store,
                cfg,
                tx,
                observed: None,
            },
            Fence { rx, _fixed: None },
        )
    }

    fn leading(&self) -> bool {
        self.tx.borrow().is_some_and(|d| Instant::now() < d)
    }

    /// Tries to acquire or renew once. Returns whether this replica leads
    /// afterwards (by its deadline).
    pub async fn try_once(&mut self) -> bool {
        let start = Instant::now();
        // Each call is bounded so that a hung request cannot hold the
        // elector past the point where it should retry.
        let limit = self.cfg.claim().max(Duration::from_millis(100));
        match tokio::time::timeout(limit, self.attempt(start)).await {
            Ok(Ok(true)) => {
                let deadline = start + self.cfg.claim();
                let was = self.leading();
                self.tx.send_replace(Some(deadline));
                if !was {
                    info!(identity = %self.cfg.identity, lease = %self.store.describe(), "acquired the Lease");
                } else {
                    debug!(identity = %self.cfg.identity, "renewed the Lease");
                }
            }
            Ok(Ok(false)) => {
                if self.leading() {
                    // Another holder is recorded: whatever our deadline
                    // says, someone else believes it leads.
                    warn!(identity = %self.cfg.identity, lease = %self.store.describe(), "the Lease names another holder; stepping down");
                    self.tx.send_replace(None);
                }
            }
            Ok(Err(e)) => {
                if self.leading() {
                    warn!(identity = %self.cfg.identity, lease = %self.store.describe(), error = %e, "renewing the Lease failed; still leading until the local deadline");
                } else {
                    debug!(identity = %self.cfg.identity, error = %e, "acquiring the Lease failed");
                }
            }
            Err(_) => {
                if self.leading() {
                    warn!(identity = %self.cfg.identity, lease = %self.store.describe(), timeout_ms = limit.as_millis() as u64, "renewing the Lease timed out; still leading until the local deadline");
                }
            }
        }
        self.leading()
    }

    async fn attempt(&mut self, start: Instant) -> Result<bool, StoreError> {
        let now = SystemTime::now();
        let me = self.cfg.identity.clone();
        let Some(current) = self.store.get().await? else {
            let rec = LeaseRecord {
                holder: Some(me),
                lease_duration: self.cfg.lease_duration,
                acquire_time: Some(now),
                renew_time: Some(now),
                transitions: 0,
                version: String::new(),
            };
            let created = self.store.create(&rec).await?;
            self.observed = Some((created, start));
            return Ok(true);
        };
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| seen != &current);
        if changed {
            self.observed = Some((current.clone(), start));
        }
        let seen_at = self.observed.as_ref().map_or(start, |(_, at)| *at);
        let holder = current.held_by();
        let mine = holder == Some(me.as_str());
        if let Some(h) = holder
            && !mine
            && seen_at + current.lease_duration > start
        {
            debug!(holder = h, "the Lease is held by another replica");
            return Ok(false);
        }
        let rec = LeaseRecord {
            holder: Some(me),
            lease_duration: self.cfg.lease_duration,
            acquire_time: if mine {
                current.acquire_time
            } else {
                Some(now)
            },
            renew_time: Some(now),
            transitions: if mine {
                current.transitions
            } else {
                current.transitions.saturating_add(1)
            },
            version: current.version.clone(),
        };
        let updated = self.store.update(&rec).await?;
        self.observed = Some((updated, start));
        Ok(true)
    }

    /// Gives the Lease up if this replica leads (so a standby need not wait
    /// for it to expire) and closes the fence.
    pub async fn release(&mut self) {
        let was = self.leading();
        self.tx.send_replace(None);
        if !was {
            return;
        }
        let Some((rec, _)) = self.observed.clone() else {
            return;
        };
        let released = LeaseRecord {
            holder: None,
            lease_duration: Duration::from_secs(1),
            renew_time: Some(SystemTime::now()),
            ..rec
        };
        match tokio::time::timeout(self.cfg.retry_period, self.store.update(&released)).await {
            Ok(Ok(_)) => info!(lease = %self.store.describe(), "released the Lease"),
            Ok(Err(e)) => {
                warn!(lease = %self.store.describe(), error = %e, "releasing the Lease failed; a standby takes over when it expires")
            }
            Err(_) => {
                warn!(lease = %self.store.describe(), "releasing the Lease timed out; a standby takes over when it expires")
            }
        }
    }

    /// Runs until `shutdown` completes: acquires, renews every retry
    /// period, and releases the Lease on the way out.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let shutdown = shutdown.fuse();
        futures::pin_mut!(shutdown);
        loop {
            self.try_once().await;
            futures::select_biased! {
                () = shutdown => break,
                () = tokio::time::sleep(self.cfg.retry_period).fuse() => {}
            }
        }
        self.release().await;
    }
}

/// How a [`Leadership::lead`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    /// Shutdown came, before or while leading; the Lease was given up.
    ShutDown,
    /// The Lease could not be renewed in time: the work was stopped at the
    /// fence's deadline. Exit and start afresh as a standby, so that no
    /// state of the old term survives.
    Lost,
}

/// Leader election as one value: start it, then [`Leadership::lead`] runs
/// the work only while this replica holds the Lease. What the controller
/// binary runs, and what an embedder runs to get the same guarantees.
///
/// ```
/// # use std::sync::Arc;
/// # use overlay_core::leader::{Leadership, Term};
/// # use overlay_core::metrics::NoMetrics;
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// // One replica, no election: leads at once.
/// let term = Leadership::single()
///     .lead(std::future::ready(()), &NoMetrics, |fence, until| async move {
///         assert!(fence.check().is_ok());
///         until.await; // the work runs until shutdown or a lost Lease
///         Ok::<(), String>(())
///     })
///     .await;
/// assert_eq!(term, Ok(Term::ShutDown));
/// # });
/// ```
pub struct Leadership {
    fence: Fence,
    elector: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Leadership {
    /// Starts competing for the Lease in `store` in the background (must
    /// run inside a Tokio runtime).
    pub fn start(store: Arc<dyn LeaseStore>, cfg: LeaderConfig) -> Self {
        info!(identity = %cfg.identity, "waiting for leadership");
        let (elector, fence) = LeaderElector::new(store, cfg);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(elector.run(async {
            let _ = stop_rx.await;
        }));
        Self {
            fence,
            elector: Some((stop_tx, task)),
        }
    }

    /// No election: this is the only replica, and it always leads.
    pub fn single() -> Self {
        Self {
            fence: Fence::always(),
            elector: None,
        }
    }

    /// The fence of this replica's term (wrap the IPAM in a
    /// [`FencedIpam`] with it).
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Waits for the Lease (or `shutdown`), then runs `work` with the fence
    /// and a future that completes when the work must stop: at `shutdown`
    /// or when the Lease is lost. Records [`Measurement::Leader`], and gives
    /// the Lease up at the end. An error of `work` is returned as is, after
    /// the Lease is given up.
    pub async fn lead<W, Fut, E>(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        metrics: &dyn Metrics,
        work: W,
    ) -> Result<Term, E>
    where
        W: FnOnce(Fence, BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let shutdown = shutdown.boxed().shared();
        let leads = futures::select_biased! {
            () = shutdown.clone() => false,
            () = self.fence.acquired().fuse() => true,
        };
        if !leads {
            self.stop().await;
            return Ok(Term::ShutDown);
        }
        metrics.record(Measurement::Leader(true));
        let lost = Arc::new(AtomicBool::new(false));
        let until = {
            let (fence, lost) = (self.fence.clone(), lost.clone());
            async move {
                futures::select_biased! {
                    () = shutdown.fuse() => {}
                    () = fence.lost().fuse() => lost.store(true, Ordering::Relaxed),
                }
            }
            .boxed()
        };
        let r = work(self.fence.clone(), until).await;
        metrics.record(Measurement::Leader(false));
        self.stop().await;
        r?;
        Ok(if lost.load(Ordering::Relaxed) {
            Term::Lost
        } else {
            Term::ShutDown
        })
    }

    /// Stops the election, releasing the Lease if this replica holds it.
    async fn stop(&mut self) {
        if let Some((stop, task)) = self.elector.take() {
            let _ = stop.send(());
            if let Err(e) = task.await {
                warn!(error = %e, "leader election task failed");
            }
        }
    }
}

/// An [`IpamBackend`] that refuses every write once its [`Fence`] closes,
/// and abandons a write still running at the deadline. Reads pass through.
pub struct FencedIpam {
    inner: Arc<dyn IpamBackend>,
    fence: Fence,
}

impl FencedIpam {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn IpamBackend>, fence: Fence) -> Self {
        Self { inner, fence }
    }

    async fn write<T>(
        &self,
        call: &str,
        f: impl std::future::Future<Output = Result<T, IpamError>>,
    ) -> Result<T, IpamError> {
        let refused = |reason: String| IpamError::NotLeader {
            call: call.to_owned(),
            reason,
        };
        let deadline = self.fence.check().map_err(refused)?;
        match tokio::time::timeout_at(deadline, f).await {
            Ok(r) => r,
            Err(_) => Err(refused(
                "the local deadline passed while the call ran; its outcome is unknown".into(),
            )),
        }
    }
}

#[async_trait]
impl IpamBackend for FencedIpam {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        self.write("reserve", self.inner.reserve(owner, zone)).await
    }

    async fn release(&self, reservation: &Reservation, hold: Duration) -> Result<(), IpamError> {
        self.write("release", self.inner.release(reservation, hold))
            .await
    }

    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        self.inner.lookup(owner, zone).await
    }

    async fn lookup_all(&self, owner: &Owner) -> Result<Vec<Reservation>, IpamError> {
        self.inner.lookup_all(owner).await
    }

    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        self.inner.list().await
    }

    async fn inspect_adoption(
        &self,
        owner: &Owner,
        address: IpNetwork,
    ) -> Result<Adoption, IpamError> {
        self.inner.inspect_adoption(owner, address).await
    }

    async fn adopt(&self, owner: &Owner, address: IpNetwork) -> Result<Adoption, IpamError> {
        self.write("adopt", self.inner.adopt(owner, address)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_renew_in_time_are_refused() {
        let mut c = LeaderConfig::new("a");
        assert!(c.validate().is_ok());
        c.margin = Duration::from_secs(14);
        assert!(c.validate().unwrap_err().contains("must exceed"));
        let mut c = LeaderConfig::new("");
        c.identity.clear();
        assert!(c.validate().is_err());
    }
}
