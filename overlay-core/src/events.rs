//! Events the reconcilers emit for users (Kubernetes Events in a cluster).

use async_trait::async_trait;

/// Severity of an event, as Kubernetes names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something needs attention.
    Warning,
}

/// One event about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Kind of the object (`Node`, `NodeOverlayIp`, `StaticRoute`).
    pub kind: String,
    /// Namespace of the object; `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: String,
    /// Severity.
    pub type_: EventType,
    /// CamelCase reason (`Reserved`, `Released`, `ReserveFailed`, ...).
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// Where events go. Recording never fails the caller: an event that cannot
/// be delivered is logged and dropped.
#[async_trait]
pub trait EventRecorder: Send + Sync {
    /// Records one event.
    async fn record(&self, event: Event);
}

/// Drops every event (for embedding without an event sink).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

#[async_trait]
impl EventRecorder for NoEvents {
    async fn record(&self, _event: Event) {}
}
