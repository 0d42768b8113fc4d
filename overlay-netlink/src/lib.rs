//! # overlay-netlink
//!
//! [`overlay_core::RouteProgrammer`] over rtnetlink: no `ip` processes and no
//! text parsing. [`NetlinkProgrammer`] puts one node's overlay state into the
//! kernel:
//!
//! - a macvlan sub-interface (mode bridge, up) of the parent interface,
//!   recreated when it is missing or sits on the wrong parent;
//! - exactly the desired overlay address on it: every other IPv4 and IPv6
//!   address on the overlay interface is removed, whoever added it (kernels
//!   before 6.3 drop the protocol mark, and the original tooling never set
//!   one); only IPv6 link-local addresses (fe80::/10) stay;
//! - the desired routes (IPv4 and IPv6; gateway, device, table, metric);
//! - removal of routes we installed earlier that are no longer desired.
//!
//! ## Ownership: the route protocol number
//!
//! Every route and address overlay writes carries the route protocol number
//! [`ProgrammerConfig::route_protocol`] (default [`DEFAULT_ROUTE_PROTOCOL`] =
//! 250; `ip route show proto 250` lists them, and
//! `/etc/iproute2/rt_protos.d/overlay.conf` with `250 overlay` names them).
//! Only routes with this number are ever replaced or deleted, so ownership
//! survives restarts without local state, and routes anybody else installed
//! are never touched. A desired route whose destination, table and metric
//! are already taken by a foreign route is reported as failed, not
//! overwritten. Addresses are different: the overlay interface as a whole is
//! overlay's, so the mark on its addresses is informational, and addresses
//! on other interfaces are never touched.
//! Pick another number when two overlay installations share a node.
//!
//! ## Writes only differences
//!
//! Each apply dumps links, addresses and routes, compares them with the
//! desired state, and sends only the differences, many route requests per
//! system call. A second identical apply sends nothing
//! ([`ApplyReport::kernel_writes`] is 0).
//!
//! ## Drift repair
//!
//! With [`ProgrammerConfig::drift_repair`] (default on) the programmer
//! subscribes to the kernel's link, address and route notifications in its
//! namespace. When one of our routes is deleted it is re-added at once; when
//! the overlay interface, its address, its parent or a route's device
//! changes (deleted, set down or up), or another address appears on the
//! overlay interface, the last desired state is re-applied.
//! Notifications caused by our own requests are recognised by their netlink
//! port id and ignored, so repairs never feed back. A notification overrun
//! (`ENOBUFS`) triggers a full resync. See [`NetlinkProgrammer::counters`]
//! and [`RouteProgrammer::drift`].
//!
//! ## Namespaces
//!
//! [`ProgrammerConfig::netns`] binds the programmer to a network namespace
//! given by path (`/run/netns/NAME`, `/proc/PID/ns/net`): its sockets are
//! opened from a short-lived thread that entered the namespace, so the rest
//! of the process stays where it is. `None` uses the current namespace.
//!
//! ```no_run
//! # async fn demo() -> Result<(), overlay_core::ProgrammerError> {
//! use overlay_netlink::{NetlinkProgrammer, ProgrammerConfig};
//! let programmer = NetlinkProgrammer::new(
//!     ProgrammerConfig::default().in_namespace("/run/netns/node1"),
//! )
//! .await?;
//! # Ok(()) }
//! ```

mod drift;
mod kernel;
mod programmer;

use std::path::PathBuf;

pub use overlay_core::{
    ApplyReport, DesiredNodeState, DiscoveredRoute, DriftEvent, OverlayInterface, ProgrammerError,
    RouteProgrammer, RouteResult, RouteSpec,
};
pub use programmer::{DriftCounters, NetlinkProgrammer};

/// The route protocol number overlay marks its routes and addresses with
/// unless configured otherwise (250; numbers 0–4 belong to the kernel and
/// `ip`, and routing daemons use some of 5–199).
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 250;

/// Default number of route requests packed into one `sendmsg`.
pub const DEFAULT_REQUESTS_PER_SEND: usize = 256;

/// How a [`NetlinkProgrammer`] is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammerConfig {
    /// Network namespace to program, as a path to a namespace file
    /// (`/run/netns/NAME`, `/proc/PID/ns/net`); `None` for the namespace the
    /// process is in. Entering another namespace needs CAP_SYS_ADMIN.
    pub netns: Option<PathBuf>,
    /// Route protocol number that marks routes as ours (default
    /// [`DEFAULT_ROUTE_PROTOCOL`]); the addresses we add carry it too. Must
    /// be 5 or more.
    pub route_protocol: u8,
    /// Subscribe to kernel notifications and repair drift (default true).
    pub drift_repair: bool,
    /// Route requests packed into one `sendmsg` during an apply (default
    /// [`DEFAULT_REQUESTS_PER_SEND`], at most 32 KiB each time); the kernel
    /// handles them in order and acknowledges each one, so a failure affects
    /// only its own route. 1 sends one request per round trip.
    pub requests_per_send: usize,
    /// Receive buffer of the notification socket in bytes (default
    /// [`DEFAULT_NOTIFICATION_BUFFER`]; root may exceed `rmem_max`). When
    /// notifications arrive faster than they are read and it fills up, the
    /// kernel drops them and the programmer resyncs in full.
    pub notification_buffer: usize,
}

/// Default receive buffer of the notification socket: 16 MiB.
pub const DEFAULT_NOTIFICATION_BUFFER: usize = 16 << 20;

impl Default for ProgrammerConfig {
    fn default() -> Self {
        Self {
            netns: None,
            route_protocol: DEFAULT_ROUTE_PROTOCOL,
            drift_repair: true,
            requests_per_send: DEFAULT_REQUESTS_PER_SEND,
            notification_buffer: DEFAULT_NOTIFICATION_BUFFER,
        }
    }
}

impl ProgrammerConfig {
    /// Binds to the namespace at `path` (e.g. `/run/netns/node1`).
    pub fn in_namespace(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// Uses `protocol` to mark our routes and addresses.
    pub fn with_route_protocol(mut self, protocol: u8) -> Self {
        self.route_protocol = protocol;
        self
    }

    /// Turns drift repair on or off.
    pub fn with_drift_repair(mut self, on: bool) -> Self {
        self.drift_repair = on;
        self
    }
}

/// Builds an [`OverlayInterface`] from the strings a user configures
/// (`INTERFACE_LABEL`, `INTERFACE`, the reserved `address/prefix`), with
/// typed errors: a name longer than 15 bytes or a malformed address is
/// [`ProgrammerError::InvalidName`].
pub fn overlay_interface(
    name: &str,
    parent: &str,
    address: &str,
) -> Result<OverlayInterface, ProgrammerError> {
    Ok(OverlayInterface {
        name: overlay_core::InterfaceName::parse("INTERFACE_LABEL", name)?,
        parent: overlay_core::InterfaceName::parse("INTERFACE", parent)?,
        address: overlay_core::parse::parse_ip_with_prefix("overlay address", address)?,
    })
}
