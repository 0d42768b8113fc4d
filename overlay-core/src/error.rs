//! Error values of the traits. Each carries the context a reader needs
//! (which node, zone, subnet, call) and says whether retrying can help.

use crate::parse::ParseError;

/// Errors of an [`crate::IpamBackend`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The zone is not configured in this backend.
    #[error("zone {zone:?} is not configured; configured zones: {}", known.join(", "))]
    UnknownZone {
        /// The zone asked for.
        zone: String,
        /// The zones the backend knows.
        known: Vec<String>,
    },
    /// Every subnet of the zone is full.
    #[error("no free address in zone {zone:?}: subnets {} are full; add a subnet to the zone or release addresses", subnets.join(", "))]
    Exhausted {
        /// The zone.
        zone: String,
        /// The subnets tried, in order.
        subnets: Vec<String>,
    },
    /// Credentials were refused. Not retried: fix the credentials.
    #[error(
        "{backend}: authentication failed during {call}: {message}; check the username/password or app code"
    )]
    Auth {
        /// Backend name.
        backend: String,
        /// The call that failed.
        call: String,
        /// What the server said.
        message: String,
    },
    /// The credentials work but lack a permission (e.g. a read-only app).
    #[error(
        "{backend}: permission denied during {call}: {message}; grant the API app read/write access"
    )]
    Permission {
        /// Backend name.
        backend: String,
        /// The call that failed.
        call: String,
        /// What the server said.
        message: String,
    },
    /// The backend is unreachable, slow or failing; a retry may help.
    #[error("{backend}: {call} failed, will retry: {message}")]
    Unavailable {
        /// Backend name.
        backend: String,
        /// The call that failed.
        call: String,
        /// What went wrong.
        message: String,
    },
    /// The backend rejected the request or answered something we do not
    /// understand; retrying the same request will not help.
    #[error("{backend}: {call} rejected: {message}")]
    Rejected {
        /// Backend name.
        backend: String,
        /// The call that failed.
        call: String,
        /// What the server said.
        message: String,
    },
    /// Invalid configuration or input.
    #[error(transparent)]
    Invalid(#[from] ParseError),
    /// The backend's own storage failed (file-backed pools).
    #[error("{backend}: storage {path}: {message}")]
    Storage {
        /// Backend name.
        backend: String,
        /// File involved.
        path: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// Refused before it reached the IPAM: this process is no longer sure
    /// it leads (its Lease renewal did not succeed in time), so another
    /// replica may already be in charge. Not retried by this process.
    #[error("{call} refused: this replica no longer holds the leader Lease ({reason})")]
    NotLeader {
        /// The call refused.
        call: String,
        /// Why leadership is in doubt.
        reason: String,
    },
}

impl IpamError {
    /// True when the same call may succeed later (network, timeout, 5xx,
    /// temporary blocks). Permanent errors need a human.
    pub fn is_retryable(&self) -> bool {
        matches!(self, IpamError::Unavailable { .. })
    }

    /// A short stable label for metrics (`errors_total{kind=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            IpamError::UnknownZone { .. } => "unknown_zone",
            IpamError::Exhausted { .. } => "exhausted",
            IpamError::Auth { .. } => "auth",
            IpamError::Permission { .. } => "permission",
            IpamError::Unavailable { .. } => "unavailable",
            IpamError::Rejected { .. } => "rejected",
            IpamError::Invalid(_) => "invalid",
            IpamError::Storage { .. } => "storage",
            IpamError::NotLeader { .. } => "not_leader",
        }
    }
}

/// Errors of a [`crate::RouteProgrammer`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgrammerError {
    /// The parent interface of the overlay interface does not exist.
    #[error("parent interface {parent:?} not found; set INTERFACE to an existing interface")]
    MissingParent {
        /// The parent name.
        parent: String,
    },
    /// An interface name is invalid (e.g. longer than 15 bytes).
    #[error(transparent)]
    InvalidName(#[from] ParseError),
    /// The gateway is not reachable on any connected network.
    #[error(
        "gateway {gateway} for {destination} is not on-link on any interface; use a gateway in a connected subnet"
    )]
    GatewayUnreachable {
        /// The route destination.
        destination: String,
        /// The gateway.
        gateway: String,
    },
    /// No kernel route covers the prefix, or it has no gateway.
    #[error("no route with a gateway covers {prefix}: {message}")]
    NoCoveringRoute {
        /// The prefix looked up.
        prefix: String,
        /// Detail.
        message: String,
    },
    /// The process lacks CAP_NET_ADMIN.
    #[error("permission denied during {call}: run as root or grant CAP_NET_ADMIN")]
    PermissionDenied {
        /// The netlink call.
        call: String,
    },
    /// The overlay address is already configured on another interface.
    #[error(
        "address {address} is already on interface {interface}; remove it there or pick another address"
    )]
    AddressInUse {
        /// The address.
        address: String,
        /// The interface holding it.
        interface: String,
    },
    /// The network namespace could not be entered.
    #[error("network namespace {namespace}: {message}")]
    Namespace {
        /// Namespace path or name.
        namespace: String,
        /// Detail.
        message: String,
    },
    /// An interface with the overlay interface's name exists but overlay
    /// did not create it (it lacks overlay's mark): overlay leaves it
    /// alone, neither deleting, recreating nor configuring it.
    #[error(
        "interface {interface} was not created by overlay, so overlay leaves it alone: {message}"
    )]
    NotOurs {
        /// The interface name.
        interface: String,
        /// What was found and what to do.
        message: String,
    },
    /// The route protocol number that would mark overlay's routes is
    /// reserved or used by other software.
    #[error("route protocol {protocol} cannot mark overlay's routes: {message}")]
    InvalidProtocol {
        /// The number configured.
        protocol: u8,
        /// Who uses it and which number to pick instead.
        message: String,
    },
    /// The programmer does not offer this call (or not yet: an
    /// incremental update before the first full apply).
    #[error("{call} is not supported by this programmer now; do a full apply")]
    Unsupported {
        /// The call.
        call: String,
    },
    /// Any other kernel error.
    #[error("{call} failed: {message}")]
    Kernel {
        /// The netlink call.
        call: String,
        /// The kernel's message.
        message: String,
    },
}

/// Errors of a [`crate::NodeSource`] or a record store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist. With an empty `name`, the kind itself
    /// is not served: the API server answers 404 for the collection (its
    /// CRD is not installed); see [`StoreError::not_served`].
    #[error("{}", not_found(.kind, .name))]
    NotFound {
        /// Object kind.
        kind: String,
        /// Object name (empty: the kind is not served).
        name: String,
    },
    /// A create found the name taken (HTTP 409, reason `AlreadyExists`):
    /// another writer created the object first. The API server is the
    /// arbiter of uniqueness by name.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Object kind.
        kind: String,
        /// Object name.
        name: String,
    },
    /// A concurrent writer changed the object (HTTP 409, reason
    /// `Conflict`: a stale resourceVersion); re-read and retry.
    #[error("{kind} {name:?}: conflict: {message}")]
    Conflict {
        /// Object kind.
        kind: String,
        /// Object name.
        name: String,
        /// Detail.
        message: String,
    },
    /// The store (API server) is unreachable; a retry may help.
    #[error("{kind} {name:?}: store unavailable: {message}")]
    Unavailable {
        /// Object kind.
        kind: String,
        /// Object name (may be empty for lists).
        name: String,
        /// Detail.
        message: String,
    },
    /// The store refused the request (validation, RBAC).
    #[error("{kind} {name:?}: rejected: {message}")]
    Rejected {
        /// Object kind.
        kind: String,
        /// Object name.
        name: String,
        /// Detail.
        message: String,
    },
}

fn not_found(kind: &str, name: &str) -> String {
    if name.is_empty() {
        format!("{kind}: the API server does not serve this kind (is its CRD installed?)")
    } else {
        format!("{kind} {name:?} not found")
    }
}

impl StoreError {
    /// The kind is not served at all (the API server answers 404 for the
    /// collection: its CRD is not installed), so no object of it exists.
    pub fn not_served(kind: impl Into<String>) -> Self {
        StoreError::NotFound {
            kind: kind.into(),
            name: String::new(),
        }
    }

    /// True for [`StoreError::not_served`].
    pub fn is_not_served(&self) -> bool {
        matches!(self, StoreError::NotFound { name, .. } if name.is_empty())
    }

    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. }
                | StoreError::AlreadyExists { .. }
                | StoreError::Unavailable { .. }
        )
    }
}
