//! # overlay-netlink
//!
//! [`overlay_core::RouteProgrammer`] over rtnetlink: no `ip` processes and no
//! text parsing. [`NetlinkProgrammer`] puts one node's overlay state into the
//! kernel:
//!
//! - a macvlan sub-interface (created in mode bridge, up) of the parent
//!   interface, marked as overlay's with the alias [`OWNED_LINK_ALIAS`],
//!   created when it is missing and recreated only when (marked) it sits
//!   on the wrong parent, whatever its mode;
//! - exactly the desired overlay address on it: every other IPv4 and IPv6
//!   address on the overlay interface is removed, whoever added it (kernels
//!   before 6.3 drop the protocol mark, and the original tooling never set
//!   one); only IPv6 link-local addresses (fe80::/10) and IPv6 addresses
//!   the kernel manages itself (not permanent: autoconfigured from router
//!   advertisements, with lifetimes) stay;
//! - the desired routes (IPv4 and IPv6; gateway, device, table, metric);
//! - removal of routes we installed earlier that are no longer desired,
//!   within the tables and devices overlay works in, never a default route.
//!
//! ## Ownership: the interface alias and the route protocol number
//!
//! The programmer creates the overlay interface with the alias
//! [`OWNED_LINK_ALIAS`] and only ever deletes, recreates or brings up a
//! link carrying it. An interface with the overlay interface's name that
//! lacks the mark is left completely alone (`apply` answers
//! [`ProgrammerError::NotOurs`] and `remove_interface` answers `false`),
//! with one exception: a macvlan of the configured parent without any
//! alias, as the original deployment created it (`ip link add tmp0 link
//! eth0 type macvlan`), is taken over in place. The apply sets the alias
//! and nothing else: the link keeps its index, mode (vepa there), MAC
//! address and the overlay address, so nothing going through it notices
//! ([`ApplyReport::interface_adopted`]). Another kind, another parent, or
//! an alias of somebody else's stays refused.
//!
//! Every route and address overlay writes carries the route protocol number
//! [`ProgrammerConfig::route_protocol`] (default [`DEFAULT_ROUTE_PROTOCOL`] =
//! 250; `ip route show proto 250` lists them, and
//! `/etc/iproute2/rt_protos.d/overlay.conf` with `250 overlay` names them).
//! [`NetlinkProgrammer::new`] refuses 0–4 and numbers that iproute2's
//! protocol files name for other software ([`check_route_protocol`]).
//! Only routes with this number are ever replaced or deleted, so ownership
//! survives restarts without local state, and routes anybody else installed
//! are never touched. A desired route whose destination, table and metric
//! are already taken by a foreign route is reported as failed, not
//! overwritten, with one exception: a route added with `ip route`
//! (protocol `boot`, 3, how both original deployments added theirs) that
//! is *exactly* the desired route (the only route on the key, same
//! gateway, same device, plain unicast with no other attribute such as
//! `src`, `mtu` or `onlink`) is taken over with one `RTM_NEWROUTE` with
//! `NLM_F_REPLACE` that puts the same route, now carrying our number, in
//! its place atomically: packets keep flowing, and the route is ours from
//! then on ([`ApplyReport::adopted`], and a log line each). Any other
//! difference, or any other protocol, and the route stays untouched and
//! reported. Addresses are different: the overlay interface as a whole is
//! overlay's, so the mark on its addresses is informational, and addresses
//! on other interfaces are never touched.
//!
//! [`NetlinkProgrammer::preview`] tells what an apply would do (create,
//! take over, install, refuse and why) without writing anything, for
//! `overlayctl migrate plan`.
//! Pick another number when two overlay installations share a node.
//!
//! Removal is narrower still: a route of ours that is no longer desired is
//! deleted only when it is not a default route and its table and device
//! are in scope: [`DesiredNodeState::scope`], the tables and devices of the
//! desired routes, and those of every route this programmer installed or
//! found in place since it started. Routes elsewhere stay, whatever their
//! protocol.
//!
//! ## Writes only differences
//!
//! Each apply dumps links, addresses and routes, compares them with the
//! desired state, and sends only the differences, many route requests per
//! system call. A second identical apply sends nothing
//! ([`ApplyReport::kernel_writes`] is 0).
//!
//! [`RouteProgrammer::update`] changes single routes on top of the last
//! full apply without any dump: it works from what that apply found
//! (links, connected networks, our routes), kept up to date by the drift
//! watcher, so a StaticRoute added, changed or removed costs its own writes
//! only. The full apply stays the safety net that resyncs everything.
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
//!
//! ## Example
//!
//! One node's overlay address and a route, put into a real kernel and
//! checked with `ip`. The node is a network namespace wired to a gateway
//! namespace, built by `overlay-testbed` (this crate's dev-dependency) and
//! removed again at the end, so nothing on the host changes; creating
//! namespaces needs root, so without it the example says why and returns
//! early (and fails under `CI=true`, like every namespace test here):
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use overlay_netlink::{
//!     DesiredNodeState, NetlinkProgrammer, ProgrammerConfig, RouteProgrammer, RouteSpec,
//!     overlay_interface,
//! };
//! use overlay_testbed::{NodeWithGateway, privileged};
//!
//! if !privileged("the overlay-netlink crate example") {
//!     return Ok(());
//! }
//! // A node with eth0 192.0.2.10/24, its gateway at 192.0.2.1.
//! let bed = NodeWithGateway::new("doc", &["192.0.2.10/24"], &["192.0.2.1/24"])?;
//! let desired = DesiredNodeState {
//!     overlay: Some(overlay_interface("tmp0", "eth0", "198.51.100.5/24")?),
//!     routes: vec![RouteSpec {
//!         destination: "203.0.113.0/24".parse()?,
//!         gateway: Some("192.0.2.1".parse()?),
//!         device: None,
//!         table: None,
//!         metric: None,
//!     }],
//!     ..Default::default()
//! };
//! let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let programmer =
//!         NetlinkProgrammer::new(ProgrammerConfig::default().in_namespace(bed.node.path()))
//!             .await?;
//!     let report = programmer.apply(&desired).await?;
//!     assert!(report.interface_created && report.kernel_writes > 0);
//!     // The same state again: nothing to write.
//!     assert_eq!(programmer.apply(&desired).await?.kernel_writes, 0);
//!     Ok::<(), overlay_netlink::ProgrammerError>(())
//! })?;
//! // The route carries overlay's protocol number, 250.
//! let routes = bed.node.routes(&["proto", "250"])?;
//! assert!(
//!     routes.iter().any(|r| r.starts_with("203.0.113.0/24 via 192.0.2.1 dev eth0")),
//!     "{routes:?}"
//! );
//! # Ok(())
//! # }
//! ```

mod apply;
mod checks;
mod drift;
mod errno;
mod interface;
mod preview;
mod programmer;
mod protocols;
mod read;
mod route_writes;
mod socket;
mod state;
mod update;
mod write;

use std::path::PathBuf;

pub use overlay_core::{
    ApplyReport, DesiredNodeState, DiscoveredRoute, DriftEvent, OverlayInterface, ProgrammerError,
    RouteProgrammer, RouteResult, RouteSpec,
};
pub use preview::{InterfaceAction, InterfacePreview, Preview, RouteAction, RoutePreview};
pub use programmer::NetlinkProgrammer;
pub use protocols::check_route_protocol;
pub use state::DriftCounters;

// The README's example is compiled as a doctest too (`no_run`: it changes
// the kernel of the namespace it names).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The interface alias (`IFLA_IFALIAS`, shown by `ip link show` as
/// `alias ...`) that marks a link as created (or taken over) by overlay.
/// Only links carrying it are ever deleted, recreated or brought up; a
/// link with the overlay interface's name but without it is left alone,
/// except a macvlan of the parent without any alias, which the apply
/// marks in place (see the crate documentation).
pub const OWNED_LINK_ALIAS: &str = "overlay: created by overlay-agent";

/// The name overlay's route protocol number may carry in iproute2's
/// protocol files (`250 overlay` in `/etc/iproute2/rt_protos.d/overlay.conf`)
/// unless configured otherwise.
pub const DEFAULT_PROTOCOL_NAME: &str = "overlay";

/// iproute2's protocol name files, where distributions and routing daemons
/// name the protocol numbers they use: `rt_protos` and every `*.conf` in
/// `rt_protos.d/`, under `/etc/iproute2`, `/usr/share/iproute2` and
/// `/usr/lib/iproute2`.
pub fn default_protocol_files() -> Vec<PathBuf> {
    ["/etc/iproute2", "/usr/share/iproute2", "/usr/lib/iproute2"]
        .iter()
        .flat_map(|d| {
            [
                PathBuf::from(d).join("rt_protos"),
                PathBuf::from(d).join("rt_protos.d"),
            ]
        })
        .collect()
}

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
    /// be 5 or more and not named by other software in
    /// [`ProgrammerConfig::protocol_files`] (see [`check_route_protocol`]).
    pub route_protocol: u8,
    /// The name `route_protocol` may carry in the protocol files (default
    /// [`DEFAULT_PROTOCOL_NAME`]); any other name there means another
    /// program uses the number.
    pub protocol_name: String,
    /// iproute2 protocol name files to check `route_protocol` against;
    /// a directory stands for its `*.conf` files, missing ones are skipped
    /// (default [`default_protocol_files`]).
    pub protocol_files: Vec<PathBuf>,
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
            protocol_name: DEFAULT_PROTOCOL_NAME.to_owned(),
            protocol_files: default_protocol_files(),
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

    /// Checks the route protocol against `files` (iproute2 protocol name
    /// files or `rt_protos.d`-style directories) instead of the defaults.
    pub fn with_protocol_files(mut self, files: Vec<PathBuf>) -> Self {
        self.protocol_files = files;
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
