//! What the reconcilers measure, for any metrics system.
//!
//! The controller, the agent and the adapters report each measurement to a
//! [`Metrics`] sink: one small trait with one method, so that core depends
//! on no metrics library. [`NoMetrics`] drops everything (the default);
//! `prometheus::PrometheusMetrics` (feature `prometheus`) keeps them as
//! Prometheus families and serves OpenMetrics text; an embedder can
//! forward them to anything else. docs/OPERATIONS.md in the repository
//! lists the metric names with their labels and meaning.

#[cfg(feature = "prometheus")]
pub mod prometheus;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnetwork::IpNetwork;

use crate::error::IpamError;
use crate::model::{Adoption, Owner, Reservation};
use crate::parse::Zone;
use crate::traits::IpamBackend;

/// One measurement. Each variant names the Prometheus metric that
/// `prometheus::PrometheusMetrics` (feature `prometheus`) keeps it in.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Measurement<'a> {
    /// The controller reconciled one `object` (`node`, `route`,
    /// `route_summary`): `overlay_controller_reconciles_total{object, result}`.
    ControllerReconciled {
        /// Object kind.
        object: &'a str,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A controller error of `kind`: `overlay_controller_errors_total{kind}`.
    ControllerError {
        /// Error kind ([`IpamError::kind`], `duplicate_reservation`, …).
        kind: &'a str,
    },
    /// An orphan collected (`reservation` or `record`):
    /// `overlay_controller_orphans_collected_total{type}`.
    OrphanCollected {
        /// What was collected.
        what: &'a str,
    },
    /// A recorded address found on a NodeOverlayIp not yet ours (the
    /// original controller's), by what adoption did (`adopted`, or not
    /// adopted: `foreign`, `missing`):
    /// `overlay_controller_adoptions_total{result}`.
    Adoption {
        /// What happened.
        result: &'a str,
    },
    /// Addresses held for this cluster's nodes:
    /// `overlay_controller_reservations_held`.
    ReservationsHeld(usize),
    /// Whether this replica leads: `overlay_controller_leader`.
    Leader(bool),
    /// One IPAM call and its result:
    /// `overlay_ipam_request_duration_seconds{backend, call, result}`.
    IpamCall {
        /// Backend name.
        backend: &'a str,
        /// Call (`reserve`, `release`, `lookup`, `lookup_all`, `list`,
        /// `inspect_adoption`, `adopt`).
        call: &'a str,
        /// `ok` or the error kind.
        result: &'a str,
        /// How long it took.
        elapsed: Duration,
    },
    /// Whether the IPAM blocks this client after failed logins:
    /// `overlay_ipam_login_blocked`.
    IpamLoginBlocked(bool),
    /// The agent's routes by state: `overlay_agent_routes{state}`.
    AgentRoutes {
        /// Routes wanted on the node.
        desired: usize,
        /// Routes in the kernel as wanted.
        applied: usize,
        /// Routes that failed.
        failed: usize,
    },
    /// One drift repair: `overlay_agent_repairs_total`.
    AgentRepaired,
    /// One application of the node's desired state:
    /// `overlay_agent_apply_duration_seconds`.
    AgentApplied(Duration),
    /// One agent pass: `overlay_agent_reconciles_total{result}`.
    AgentReconciled {
        /// Whether it succeeded.
        ok: bool,
    },
    /// Objects of `kind` that do not convert right now:
    /// `overlay_invalid_objects{kind}`.
    InvalidObjects {
        /// Object kind.
        kind: &'a str,
        /// How many.
        count: usize,
    },
}

/// Where measurements go. Implementations must be cheap and must not block:
/// the reconcilers call [`Metrics::record`] on their hot paths.
pub trait Metrics: Send + Sync {
    /// Records one measurement.
    fn record(&self, m: Measurement<'_>);
}

/// Drops every measurement: the default of the reconcilers.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl Metrics for NoMetrics {
    fn record(&self, _: Measurement<'_>) {}
}

/// A shared [`NoMetrics`].
pub fn no_metrics() -> Arc<dyn Metrics> {
    Arc::new(NoMetrics)
}

/// Wraps an [`IpamBackend`] and records the latency and result of every
/// call as [`Measurement::IpamCall`].
pub struct InstrumentedIpam {
    inner: Arc<dyn IpamBackend>,
    metrics: Arc<dyn Metrics>,
}

impl InstrumentedIpam {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn IpamBackend>, metrics: Arc<dyn Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn observe<T>(&self, call: &str, start: Instant, r: &Result<T, IpamError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics.record(Measurement::IpamCall {
            backend: self.inner.name(),
            call,
            result,
            elapsed: start.elapsed(),
        });
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

    async fn inspect_adoption(
        &self,
        owner: &Owner,
        address: IpNetwork,
    ) -> Result<Adoption, IpamError> {
        let t = Instant::now();
        let r = self.inner.inspect_adoption(owner, address).await;
        self.observe("inspect_adoption", t, &r);
        r
    }

    async fn adopt(&self, owner: &Owner, address: IpNetwork) -> Result<Adoption, IpamError> {
        let t = Instant::now();
        let r = self.inner.adopt(owner, address).await;
        self.observe("adopt", t, &r);
        r
    }
}
