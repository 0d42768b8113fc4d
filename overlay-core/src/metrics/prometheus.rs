//! The Prometheus implementation of [`Metrics`] (prometheus-client, the
//! official Rust client: typed, no global registry, OpenMetrics text).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{Measurement, Metrics};

/// Label set: a list of (name, value) pairs.
type Labels = Vec<(String, String)>;

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

fn result(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Every metric of the controller and the agent, kept as Prometheus
/// families. A process registers the ones it reports ([`Self::controller`]
/// or [`Self::agent`]) and serves [`Self::encode`]. docs/OPERATIONS.md in
/// the repository lists every name, its labels and its meaning.
pub struct PrometheusMetrics {
    registry: Registry,
    controller_reconciles: Family<Labels, Counter>,
    controller_errors: Family<Labels, Counter>,
    orphans: Family<Labels, Counter>,
    adoptions: Family<Labels, Counter>,
    reservations_held: Gauge,
    leader: Gauge,
    ipam_latency: Family<Labels, Histogram, fn() -> Histogram>,
    ipam_login_blocked: Gauge,
    agent_routes: Family<Labels, Gauge>,
    agent_repairs: Counter,
    agent_apply_latency: Histogram,
    agent_reconciles: Family<Labels, Counter>,
    invalid_objects: Family<Labels, Gauge>,
}

impl Default for PrometheusMetrics {
    fn default() -> Self {
        Self {
            registry: Registry::default(),
            controller_reconciles: Family::default(),
            controller_errors: Family::default(),
            orphans: Family::default(),
            adoptions: Family::default(),
            reservations_held: Gauge::default(),
            leader: Gauge::default(),
            ipam_latency: Family::new_with_constructor(latency_histogram),
            ipam_login_blocked: Gauge::default(),
            agent_routes: Family::default(),
            agent_repairs: Counter::default(),
            agent_apply_latency: latency_histogram(),
            agent_reconciles: Family::default(),
            invalid_objects: Family::default(),
        }
    }
}

impl PrometheusMetrics {
    /// The controller's metrics, registered.
    pub fn controller() -> Self {
        let mut m = Self::default();
        m.register_controller();
        m.register_common();
        m
    }

    /// The agent's metrics, registered.
    pub fn agent() -> Self {
        let mut m = Self::default();
        m.register_agent();
        m.register_common();
        m
    }

    fn register_controller(&mut self) {
        let r = &mut self.registry;
        r.register(
            "overlay_controller_reconciles",
            "Reconciles by object kind and result",
            self.controller_reconciles.clone(),
        );
        r.register(
            "overlay_controller_errors",
            "Reconcile errors by kind",
            self.controller_errors.clone(),
        );
        r.register(
            "overlay_ipam_request_duration_seconds",
            "IPAM call latency by backend, call and result",
            self.ipam_latency.clone(),
        );
        r.register(
            "overlay_controller_reservations_held",
            "Addresses held for nodes of this cluster",
            self.reservations_held.clone(),
        );
        r.register(
            "overlay_controller_orphans_collected",
            "Orphaned reservations released and records deleted",
            self.orphans.clone(),
        );
        r.register(
            "overlay_controller_adoptions",
            "Recorded addresses of an earlier tool found not yet ours, by what adoption did (adopted, foreign, missing)",
            self.adoptions.clone(),
        );
        r.register(
            "overlay_controller_leader",
            "1 when this replica is the leader",
            self.leader.clone(),
        );
        r.register(
            "overlay_ipam_login_blocked",
            "1 while phpIPAM blocks this client's IP after failed logins (no request is sent until the block ends)",
            self.ipam_login_blocked.clone(),
        );
    }

    fn register_agent(&mut self) {
        let r = &mut self.registry;
        r.register(
            "overlay_agent_routes",
            "Routes by state (desired, applied, failed)",
            self.agent_routes.clone(),
        );
        r.register(
            "overlay_agent_repairs",
            "Drift repairs (routes or address re-applied after an external change)",
            self.agent_repairs.clone(),
        );
        r.register(
            "overlay_agent_apply_duration_seconds",
            "Time to apply the node's desired state",
            self.agent_apply_latency.clone(),
        );
        r.register(
            "overlay_agent_reconciles",
            "Agent reconciles by result",
            self.agent_reconciles.clone(),
        );
    }

    fn register_common(&mut self) {
        self.registry.register(
            "overlay_invalid_objects",
            "Objects that do not convert to overlay's types (skipped or partly used), by kind",
            self.invalid_objects.clone(),
        );
    }

    /// The registry, to add metrics of one's own before serving it.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The registered metrics as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Metrics for PrometheusMetrics {
    fn record(&self, m: Measurement<'_>) {
        match m {
            Measurement::ControllerReconciled { object, ok } => {
                let l = labels(&[("object", object), ("result", result(ok))]);
                self.controller_reconciles.get_or_create(&l).inc();
            }
            Measurement::ControllerError { kind } => {
                let l = labels(&[("kind", kind)]);
                self.controller_errors.get_or_create(&l).inc();
            }
            Measurement::OrphanCollected { what } => {
                self.orphans.get_or_create(&labels(&[("type", what)])).inc();
            }
            Measurement::Adoption { result } => {
                let l = labels(&[("result", result)]);
                self.adoptions.get_or_create(&l).inc();
            }
            Measurement::ReservationsHeld(n) => {
                self.reservations_held.set(gauge_value(n));
            }
            Measurement::Leader(leads) => {
                self.leader.set(i64::from(leads));
            }
            Measurement::IpamCall {
                backend,
                call,
                result,
                elapsed,
            } => {
                let l = labels(&[("backend", backend), ("call", call), ("result", result)]);
                let h = self.ipam_latency.get_or_create(&l);
                h.observe(elapsed.as_secs_f64());
            }
            Measurement::IpamLoginBlocked(blocked) => {
                self.ipam_login_blocked.set(i64::from(blocked));
            }
            Measurement::AgentRoutes {
                desired,
                applied,
                failed,
            } => {
                for (state, n) in [
                    ("desired", desired),
                    ("applied", applied),
                    ("failed", failed),
                ] {
                    let l = labels(&[("state", state)]);
                    self.agent_routes.get_or_create(&l).set(gauge_value(n));
                }
            }
            Measurement::AgentRepaired => {
                self.agent_repairs.inc();
            }
            Measurement::AgentApplied(elapsed) => {
                self.agent_apply_latency.observe(elapsed.as_secs_f64());
            }
            Measurement::AgentReconciled { ok } => {
                let l = labels(&[("result", result(ok))]);
                self.agent_reconciles.get_or_create(&l).inc();
            }
            Measurement::InvalidObjects { kind, count } => {
                let l = labels(&[("kind", kind)]);
                self.invalid_objects
                    .get_or_create(&l)
                    .set(gauge_value(count));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_process_shows_its_own_families_with_the_recorded_values() {
        let c = PrometheusMetrics::controller();
        c.record(Measurement::ControllerReconciled {
            object: "node",
            ok: true,
        });
        c.record(Measurement::Leader(true));
        c.record(Measurement::Adoption { result: "adopted" });
        c.record(Measurement::IpamCall {
            backend: "phpipam",
            call: "reserve",
            result: "ok",
            elapsed: Duration::from_millis(3),
        });
        c.record(Measurement::InvalidObjects {
            kind: "StaticRoute",
            count: 2,
        });
        let text = c.encode();
        assert!(
            text.contains(r#"overlay_controller_reconciles_total{object="node",result="ok"} 1"#),
            "{text}"
        );
        assert!(text.contains("overlay_controller_leader 1"), "{text}");
        assert!(
            text.contains(r#"overlay_controller_adoptions_total{result="adopted"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"overlay_ipam_request_duration_seconds_count{backend="phpipam",call="reserve",result="ok"} 1"#), "{text}");
        assert!(
            text.contains(r#"overlay_invalid_objects{kind="StaticRoute"} 2"#),
            "{text}"
        );
        assert!(!text.contains("overlay_agent_"), "{text}");

        let a = PrometheusMetrics::agent();
        a.record(Measurement::AgentRoutes {
            desired: 3,
            applied: 2,
            failed: 1,
        });
        a.record(Measurement::AgentRepaired);
        let text = a.encode();
        assert!(
            text.contains(r#"overlay_agent_routes{state="failed"} 1"#),
            "{text}"
        );
        assert!(text.contains("overlay_agent_repairs_total 1"), "{text}");
        assert!(!text.contains("overlay_controller_"), "{text}");
    }
}
