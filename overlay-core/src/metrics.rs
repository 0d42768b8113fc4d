//! Prometheus metrics of the controller and agent (prometheus-client, the
//! official Rust client: typed, no global registry, OpenMetrics text).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::IpamError;
use crate::model::{Owner, Reservation};
use crate::parse::Zone;
use crate::traits::IpamBackend;

/// Label set: a list of (name, value) pairs.
pub type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Metrics of the controller.
#[derive(Clone)]
pub struct ControllerMetrics {
    /// `overlay_controller_reconciles_total{object, result}`.
    pub reconciles: Family<Labels, Counter>,
    /// `overlay_controller_errors_total{kind}`.
    pub errors: Family<Labels, Counter>,
    /// `overlay_ipam_request_duration_seconds{backend, call, result}`.
    pub ipam_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// `overlay_controller_reservations_held`.
    pub reservations_held: Gauge,
    /// `overlay_controller_orphans_collected_total{type}`.
    pub orphans: Family<Labels, Counter>,
    /// `overlay_controller_leader` (1 when this replica leads).
    pub leader: Gauge,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            ipam_latency: Family::new_with_constructor(latency_histogram),
            reservations_held: Gauge::default(),
            orphans: Family::default(),
            leader: Gauge::default(),
        }
    }
}

impl ControllerMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "overlay_controller_reconciles",
            "Reconciles by object kind and result",
            self.reconciles.clone(),
        );
        registry.register(
            "overlay_controller_errors",
            "Reconcile errors by kind",
            self.errors.clone(),
        );
        registry.register(
            "overlay_ipam_request_duration_seconds",
            "IPAM call latency by backend, call and result",
            self.ipam_latency.clone(),
        );
        registry.register(
            "overlay_controller_reservations_held",
            "Addresses held for nodes of this cluster",
            self.reservations_held.clone(),
        );
        registry.register(
            "overlay_controller_orphans_collected",
            "Orphaned reservations released and records deleted",
            self.orphans.clone(),
        );
        registry.register(
            "overlay_controller_leader",
            "1 when this replica is the leader",
            self.leader.clone(),
        );
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, object: &str, ok: bool) {
        self.reconciles
            .get_or_create(&labels(&[
                ("object", object),
                ("result", if ok { "ok" } else { "error" }),
            ]))
            .inc();
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&labels(&[("kind", kind)])).inc();
    }

    /// Counts one orphan of `type_` (`reservation` or `record`).
    pub fn orphan(&self, type_: &str) {
        self.orphans
            .get_or_create(&labels(&[("type", type_)]))
            .inc();
    }
}

/// Metrics of the agent.
#[derive(Clone)]
pub struct AgentMetrics {
    /// `overlay_agent_routes{state}`: desired, applied, failed.
    pub routes: Family<Labels, Gauge>,
    /// `overlay_agent_repairs_total`: drift repairs.
    pub repairs: Counter,
    /// `overlay_agent_apply_duration_seconds`.
    pub apply_latency: Histogram,
    /// `overlay_agent_reconciles_total{result}`.
    pub reconciles: Family<Labels, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            routes: Family::default(),
            repairs: Counter::default(),
            apply_latency: latency_histogram(),
            reconciles: Family::default(),
        }
    }
}

impl AgentMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "overlay_agent_routes",
            "Routes by state (desired, applied, failed)",
            self.routes.clone(),
        );
        registry.register(
            "overlay_agent_repairs",
            "Drift repairs (routes or address re-applied after an external change)",
            self.repairs.clone(),
        );
        registry.register(
            "overlay_agent_apply_duration_seconds",
            "Time to apply the node's desired state",
            self.apply_latency.clone(),
        );
        registry.register(
            "overlay_agent_reconciles",
            "Agent reconciles by result",
            self.reconciles.clone(),
        );
    }

    /// Sets the route gauges.
    pub fn set_routes(&self, desired: usize, applied: usize, failed: usize) {
        for (state, n) in [
            ("desired", desired),
            ("applied", applied),
            ("failed", failed),
        ] {
            self.routes
                .get_or_create(&labels(&[("state", state)]))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, ok: bool) {
        self.reconciles
            .get_or_create(&labels(&[("result", if ok { "ok" } else { "error" })]))
            .inc();
    }
}

/// Encodes a registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Wraps an [`IpamBackend`] and records the latency and result of every
/// call in [`ControllerMetrics::ipam_latency`].
pub struct InstrumentedIpam {
    inner: Arc<dyn IpamBackend>,
    metrics: ControllerMetrics,
}

impl InstrumentedIpam {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn IpamBackend>, metrics: ControllerMetrics) -> Self {
        Self { inner, metrics }
    }

    fn observe<T>(&self, call: &str, start: Instant, r: &Result<T, IpamError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics
            .ipam_latency
            .get_or_create(&labels(&[
                ("backend", self.inner.name()),
                ("call", call),
                ("result", result),
            ]))
            .observe(start.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl IpamBackend for InstrumentedIpam {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        let t = Instant::now();
        let r = self.inner.reserve(owner, zone).await;
        self.observe("reserve", t, &r);
        r
    }

    async fn release(&self, reservation: &Reservation, hold: Duration) -> Result<(), IpamError> {
        let t = Instant::now();
        let r = self.inner.release(reservation, hold).await;
        self.observe("release", t, &r);
        r
    }

    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        let t = Instant::now();
        let r = self.inner.lookup(owner, zone).await;
        self.observe("lookup", t, &r);
        r
    }

    async fn lookup_all(&self, owner: &Owner) -> Result<Vec<Reservation>, IpamError> {
        let t = Instant::now();
        let r = self.inner.lookup_all(owner).await;
        self.observe("lookup_all", t, &r);
        r
    }

    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        let t = Instant::now();
        let r = self.inner.list().await;
        self.observe("list", t, &r);
        r
    }
}
