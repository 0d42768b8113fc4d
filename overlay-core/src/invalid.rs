//! Objects that do not convert to the project's types: one bad object costs
//! one object.
//!
//! An object stored before the CRD validation existed, or written by another
//! version (a metric above `u32`, a garbage `ipAddr`, an unknown `state`), is
//! read leniently by the adapters: what converts is used, what does not is
//! left out, and the object is reported here. It never fails the list or
//! watch of the others.
//!
//! [`InvalidObjects`] reports each problem once: a warning log line, a
//! Warning Event naming the object and the field, and
//! [`Measurement::InvalidObjects`] (the gauge `overlay_invalid_objects{kind}`)
//! of objects invalid right now.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::events::{Event, EventRecorder, EventType, NoEvents};
use crate::metrics::{Measurement, Metrics, NoMetrics};
use crate::parse::ParseError;

/// What is wrong with an object: the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field, as a path from the object's root (`spec.metric`,
    /// `status.nodeStatus[2].state`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldProblem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl From<ParseError> for FieldProblem {
    fn from(e: ParseError) -> Self {
        Self::new(e.field, format!("{:?}: {}", e.value, e.reason))
    }
}

/// The kinds whose problems raise Events (`None`: every kind).
type EventKinds = Option<Arc<[String]>>;

/// Tracks the objects that are invalid now, by kind, and reports each
/// problem once (again when it changes). Cheap to clone; clones share state.
#[derive(Clone)]
pub struct InvalidObjects {
    events: Arc<dyn EventRecorder>,
    event_kinds: EventKinds,
    metrics: Arc<dyn Metrics>,
    current: Arc<Mutex<BTreeMap<(String, String), FieldProblem>>>,
}

impl Default for InvalidObjects {
    fn default() -> Self {
        Self::new(Arc::new(NoEvents))
    }
}

impl InvalidObjects {
    /// Reports problems to `events` (and the log and gauge).
    pub fn new(events: Arc<dyn EventRecorder>) -> Self {
        Self {
            events,
            event_kinds: None,
            metrics: Arc::new(NoMetrics),
            current: Arc::default(),
        }
    }

    /// Raises Events only for objects of these kinds; the others are logged
    /// and counted. An agent on every node raises Events only for objects of
    /// its own (its NodeOverlayIp, the legacy ConfigMap), so that one bad
    /// StaticRoute does not cost an Event per node; the controller raises
    /// them for StaticRoutes.
    pub fn with_event_kinds(mut self, kinds: &[&str]) -> Self {
        self.event_kinds = Some(kinds.iter().map(|k| (*k).to_owned()).collect());
        self
    }

    /// Reports the count of invalid objects per kind to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), FieldProblem>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_gauge(&self, kind: &str, map: &BTreeMap<(String, String), FieldProblem>) {
        let count = map.keys().filter(|(k, _)| k == kind).count();
        self.metrics
            .record(Measurement::InvalidObjects { kind, count });
    }

    /// Records what reading `kind`/`name` (`namespace/name` for namespaced
    /// kinds) found: `Some(problem)` when it
    /// did not convert cleanly, `None` when it did. A new or changed problem
    /// is logged and raises a Warning Event (sent in the background, so the
    /// caller never waits for the API server).
    pub fn observe(&self, kind: &str, name: &str, problem: Option<&FieldProblem>) {
        let key = (kind.to_owned(), name.to_owned());
        let report = {
            let mut map = self.lock();
            let changed = match problem {
                Some(p) => map.insert(key, p.clone()).as_ref() != Some(p),
                None => {
                    if map.remove(&key).is_some() {
                        info!(kind, name, "object is valid again");
                    }
                    false
                }
            };
            self.set_gauge(kind, &map);
            changed
        };
        let Some(p) = problem.filter(|_| report) else {
            return;
        };
        warn!(kind, name, field = %p.field, problem = %p.message,
            "object does not convert; skipped where it cannot be used, the others are unaffected");
        let wanted = self
            .event_kinds
            .as_ref()
            .is_none_or(|ks| ks.iter().any(|k| k == kind));
        if wanted && let Ok(rt) = tokio::runtime::Handle::try_current() {
            let events = self.events.clone();
            let (namespace, object) = match name.split_once('/') {
                Some((ns, n)) => (Some(ns.to_owned()), n.to_owned()),
                None => (None, name.to_owned()),
            };
            let event = Event {
                kind: kind.to_owned(),
                namespace,
                name: object,
                type_: EventType::Warning,
                reason: "InvalidObject".into(),
                message: format!(
                    "{p}; overlay skips what it cannot read, fix or delete the object"
                ),
            };
            rt.spawn(async move { events.record(event).await });
        }
    }

    /// The object is gone.
    pub fn forget(&self, kind: &str, name: &str) {
        let mut map = self.lock();
        map.remove(&(kind.to_owned(), name.to_owned()));
        self.set_gauge(kind, &map);
    }

    /// After a full relist of `kind`: objects not in `present` are gone.
    pub fn retain(&self, kind: &str, present: &HashSet<String>) {
        let mut map = self.lock();
        map.retain(|(k, n), _| k != kind || present.contains(n));
        self.set_gauge(kind, &map);
    }

    /// The objects invalid now: `(kind, name, problem)`.
    pub fn current(&self) -> Vec<(String, String, FieldProblem)> {
        self.lock()
            .iter()
            .map(|((k, n), p)| (k.clone(), n.clone(), p.clone()))
            .collect()
    }

    /// How many objects of `kind` are invalid now.
    pub fn count(&self, kind: &str) -> usize {
        self.lock().keys().filter(|(k, _)| k == kind).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::MemoryEvents;

    #[tokio::test]
    async fn each_problem_is_reported_once_and_counted_by_kind() {
        let events = MemoryEvents::new();
        let inv = InvalidObjects::new(Arc::new(events.clone()));
        let p = FieldProblem::new(
            "spec.metric",
            "invalid value: integer `4294967296`, expected u32",
        );
        inv.observe("StaticRoute", "bad", Some(&p));
        inv.observe("StaticRoute", "bad", Some(&p));
        inv.observe("StaticRoute", "good", None);
        inv.observe(
            "NodeOverlayIp",
            "n1",
            Some(&FieldProblem::new("status.ipAddr", "x")),
        );
        assert_eq!(inv.count("StaticRoute"), 1);
        assert_eq!(inv.count("NodeOverlayIp"), 1);
        for _ in 0..100 {
            if events.all().len() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let all = events.all();
        assert_eq!(all.len(), 2, "{all:?}");
        let ev = all.iter().find(|e| e.name == "bad").unwrap();
        assert_eq!(ev.type_, EventType::Warning);
        assert!(ev.message.contains("spec.metric"), "{}", ev.message);
        // Fixed, then gone from a relist.
        inv.observe("StaticRoute", "bad", None);
        assert_eq!(inv.count("StaticRoute"), 0);
        inv.retain("NodeOverlayIp", &HashSet::new());
        assert!(inv.current().is_empty());
    }

    #[tokio::test]
    async fn events_can_be_limited_to_some_kinds() {
        let events = MemoryEvents::new();
        let inv = InvalidObjects::new(Arc::new(events.clone())).with_event_kinds(&["ConfigMap"]);
        inv.observe("StaticRoute", "bad", Some(&FieldProblem::new("spec", "x")));
        inv.observe(
            "ConfigMap",
            "static-routes",
            Some(&FieldProblem::new("data.routes", "x")),
        );
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let all = events.all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].kind, "ConfigMap");
        assert_eq!(inv.count("StaticRoute"), 1, "still counted");
    }
}
