//! Domain types shared by the controller, the agent and the backends. None
//! of them depends on Kubernetes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::parse::{Cidr, InterfaceName, Zone};

/// Topology labels read for a node's zone, most specific first.
pub const ZONE_LABELS: [&str; 3] = [
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
    "ibm-cloud.kubernetes.io/zone",
];

/// Topology labels read for a node's region, most specific first.
pub const REGION_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/region",
    "ibm-cloud.kubernetes.io/region",
];

/// What the controller and agent need to know about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name (`metadata.name`).
    pub name: String,
    /// Kubernetes UID, when known (used for owner references).
    pub uid: Option<String>,
    /// Zone from the topology labels.
    pub zone: Option<Zone>,
    /// Region from the topology labels.
    pub region: Option<String>,
    /// All labels of the node (node selectors match against these).
    pub labels: BTreeMap<String, String>,
    /// `InternalIP` addresses of the node.
    pub internal_ips: Vec<IpAddr>,
}

impl NodeInfo {
    /// Builds a node from its name, labels and internal addresses, reading
    /// zone and region from the well-known topology labels. A zone label
    /// whose value is not a valid zone is ignored (the node then has no zone).
    pub fn from_labels(
        name: impl Into<String>,
        labels: BTreeMap<String, String>,
        internal_ips: Vec<IpAddr>,
    ) -> Self {
        let zone = ZONE_LABELS
            .iter()
            .find_map(|k| labels.get(*k))
            .and_then(|z| Zone::parse("zone label", z).ok());
        let region = REGION_LABELS.iter().find_map(|k| labels.get(*k)).cloned();
        Self {
            name: name.into(),
            uid: None,
            zone,
            region,
            labels,
            internal_ips,
        }
    }
}

/// Labels the controller puts on a node's NodeOverlayIp: `node`, and
/// `region`/`zone` when known.
pub fn overlay_ip_labels(node: &NodeInfo) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("node".to_owned(), node.name.clone());
    if let Some(r) = &node.region {
        l.insert("region".to_owned(), r.clone());
    }
    if let Some(z) = &node.zone {
        l.insert("zone".to_owned(), z.to_string());
    }
    l
}

/// Who holds a reservation: a node of a cluster. Several clusters can share
/// one IPAM because the marker carries the cluster id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Owner {
    /// Cluster id (configured; identifies this cluster in a shared IPAM).
    pub cluster: String,
    /// Node name.
    pub node: String,
}

/// Prefix of every owner marker written into an IPAM.
pub const OWNER_MARKER_PREFIX: &str = "overlay-owner:";

/// Prefix of the marker of a released address held back from reuse
/// (quarantined): `overlay-held:<cluster>/<node> until=<RFC 3339 time>`.
pub const HELD_MARKER_PREFIX: &str = "overlay-held:";

impl Owner {
    /// An owner for `node` in `cluster`.
    pub fn new(cluster: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            node: node.into(),
        }
    }

    /// The marker stored with the reservation (e.g. in phpIPAM's
    /// description): `overlay-owner:<cluster>/<node>`.
    pub fn marker(&self) -> String {
        format!("{OWNER_MARKER_PREFIX}{}/{}", self.cluster, self.node)
    }

    /// Parses a marker written by [`Owner::marker`]; `None` for anything
    /// else (including a held marker: see [`Marker::parse`]).
    pub fn from_marker(marker: &str) -> Option<Self> {
        let rest = marker.trim().strip_prefix(OWNER_MARKER_PREFIX)?;
        Self::from_pair(rest)
    }

    fn from_pair(rest: &str) -> Option<Self> {
        let (cluster, node) = rest.split_once('/')?;
        if cluster.is_empty()
            || node.is_empty()
            || cluster.contains(char::is_whitespace)
            || node.contains(char::is_whitespace)
        {
            return None;
        }
        Some(Self::new(cluster, node))
    }

    /// The marker of this owner's released address while it is held back
    /// until `until`: `overlay-held:<cluster>/<node> until=<RFC 3339>`.
    pub fn held_marker(&self, until: SystemTime) -> String {
        Marker::Held {
            owner: self.clone(),
            until,
        }
        .to_string()
    }
}

/// What an IPAM entry's marker says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// In use by `owner` (`overlay-owner:<cluster>/<node>`).
    Live(Owner),
    /// Released by `owner`, held back from every other owner until `until`
    /// (`overlay-held:<cluster>/<node> until=<RFC 3339>`).
    Held {
        /// The last holder; it gets the address back if it reserves again.
        owner: Owner,
        /// End of the hold-down (wall clock; stored in the IPAM).
        until: SystemTime,
    },
}

impl Marker {
    /// Parses either marker; `None` for anything else (a hand-made entry,
    /// another tool's note, a marker with a missing or garbled part).
    pub fn parse(marker: &str) -> Option<Self> {
        let m = marker.trim();
        if let Some(rest) = m.strip_prefix(OWNER_MARKER_PREFIX) {
            return Owner::from_pair(rest).map(Marker::Live);
        }
        let rest = m.strip_prefix(HELD_MARKER_PREFIX)?;
        let (pair, until) = rest.split_once(char::is_whitespace)?;
        let until = until.trim().strip_prefix("until=")?;
        let until = humantime::parse_rfc3339(until).ok()?;
        Some(Marker::Held {
            owner: Owner::from_pair(pair)?,
            until,
        })
    }

    /// The owner named by the marker.
    pub fn owner(&self) -> &Owner {
        match self {
            Marker::Live(o) | Marker::Held { owner: o, .. } => o,
        }
    }

    /// The end of the hold-down, for a held marker.
    pub fn held_until(&self) -> Option<SystemTime> {
        match self {
            Marker::Live(_) => None,
            Marker::Held { until, .. } => Some(*until),
        }
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Marker::Live(o) => f.write_str(&o.marker()),
            Marker::Held { owner, until } => write!(
                f,
                "{HELD_MARKER_PREFIX}{}/{} until={}",
                owner.cluster,
                owner.node,
                humantime::format_rfc3339_seconds(*until)
            ),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.node)
    }
}

/// An address held in an IPAM for one owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The address with the prefix length of its subnet (`192.0.2.4/24`).
    pub address: IpNetwork,
    /// The subnet's gateway, when the IPAM knows one.
    pub gateway: Option<IpAddr>,
    /// Zone the address was reserved for.
    pub zone: Zone,
    /// The pool or subnet it came from (phpIPAM subnet id, pool CIDR, ...).
    pub subnet_id: String,
    /// The backend's own handle for releasing it (phpIPAM address id, ...).
    pub handle: String,
    /// Who holds it.
    pub owner: Owner,
    /// Set when the address was released and is held back from reuse
    /// (quarantined) until then: no other owner gets it; `owner` gets it
    /// back if it reserves again in the same zone. `None` for a live
    /// reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<SystemTime>,
}

impl Reservation {
    /// True when the address was released and is held back from reuse.
    pub fn is_held(&self) -> bool {
        self.held_until.is_some()
    }

    /// The marker an IPAM stores with this reservation.
    pub fn marker(&self) -> Marker {
        match self.held_until {
            None => Marker::Live(self.owner.clone()),
            Some(until) => Marker::Held {
                owner: self.owner.clone(),
                until,
            },
        }
    }
}

/// What the IPAM holds at an address recorded for an owner (a node's
/// NodeOverlayIp names the address, possibly written by an earlier tool):
/// the answer of [`IpamBackend::inspect_adoption`] and
/// [`IpamBackend::adopt`](crate::IpamBackend::adopt).
///
/// Serialized with a `state` tag (`{"state":"adoptable","subnet_id":7,...}`)
/// so that tools can print it as JSON.
///
/// [`IpamBackend::inspect_adoption`]: crate::IpamBackend::inspect_adoption
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum Adoption {
    /// Already ours: carries this owner's marker.
    Ours {
        /// The owner's reservation at that address.
        reservation: Reservation,
    },
    /// Held for this owner by an earlier tool, without a marker of ours:
    /// adopt would mark it.
    Adoptable {
        /// The IPAM subnet (or pool) holding it.
        subnet_id: u64,
        /// What the IPAM holds there, in words (for logs and events).
        detail: String,
    },
    /// Just marked ours by `adopt` (no new reservation).
    Adopted {
        /// The owner's reservation at that address, now carrying its marker.
        reservation: Reservation,
    },
    /// Held by something else (another owner, another cluster's marker, a
    /// held/blocked entry...): left alone.
    Foreign {
        /// Why it is not this owner's, in words a user understands
        /// (`owned by node-b`).
        reason: String,
    },
    /// The IPAM holds nothing at that address.
    Missing,
}

/// The overlay sub-interface of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayInterface {
    /// Name of the macvlan sub-interface (default `tmp0`).
    pub name: InterfaceName,
    /// The parent (private) interface.
    pub parent: InterfaceName,
    /// The overlay address with prefix length.
    pub address: IpNetwork,
}

/// One route a node should have.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Destination prefix.
    pub destination: Cidr,
    /// Next hop; `None` for a device route.
    pub gateway: Option<IpAddr>,
    /// Output device; `None` lets the kernel pick the on-link interface.
    pub device: Option<InterfaceName>,
    /// Routing table; `None` is the main table (254).
    pub table: Option<u32>,
    /// Metric (priority); `None` is the kernel default (0).
    pub metric: Option<u32>,
}

/// What makes two routes "the same route" to the kernel: destination,
/// table and metric, with the kernel's defaults filled in. The kernel keeps
/// one route per key; adding a second one with the same key fails (or, as
/// a replace, overwrites the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub struct RouteKey {
    /// Destination prefix.
    pub destination: Cidr,
    /// Routing table ([`MAIN_TABLE`] when a route names none).
    pub table: u32,
    /// Metric as the kernel stores it: IPv4 0 when a route names none;
    /// IPv6 [`IPV6_DEFAULT_METRIC`] when a route names none or 0.
    pub metric: u32,
}

/// The metric the kernel gives an IPv6 route added without one (or with
/// metric 0).
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

impl RouteKey {
    /// The key of a route to `destination` in `table` with `metric`, with
    /// the kernel's normalisation applied (IPv6 metric 0 is stored as
    /// [`IPV6_DEFAULT_METRIC`]).
    pub fn new(destination: Cidr, table: u32, metric: u32) -> Self {
        let metric = if metric == 0 && !destination.is_ipv4() {
            IPV6_DEFAULT_METRIC
        } else {
            metric
        };
        Self {
            destination,
            table,
            metric,
        }
    }
}

impl RouteSpec {
    /// The key routes are compared by: the kernel identifies a route by
    /// destination, table and metric (see [`RouteKey`] for the defaults).
    pub fn key(&self) -> RouteKey {
        RouteKey::new(
            self.destination,
            self.table.unwrap_or(MAIN_TABLE),
            self.metric.unwrap_or(0),
        )
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.destination)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.device {
            write!(f, " dev {dev}")?;
        }
        if let Some(t) = self.table {
            write!(f, " table {t}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// Everything one node's network should look like, as far as overlay is
/// concerned. Routes we installed that are not listed here are removed;
/// routes we did not install are never touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredNodeState {
    /// The overlay interface and address; `None` leaves any existing overlay
    /// interface alone (use [`crate::RouteProgrammer::remove_interface`] to
    /// delete it).
    pub overlay: Option<OverlayInterface>,
    /// The routes to have.
    pub routes: Vec<RouteSpec>,
    /// Keep the routes we installed earlier that are not listed, instead of
    /// removing them. Set when an input could not be trusted (a garbage
    /// `ipAddr`, a malformed route list), so what it would have listed is
    /// unknown: add and fix what is known, remove nothing.
    pub keep_unlisted: bool,
    /// Where routes no longer desired may be removed, besides the tables
    /// and devices of the routes listed now and of those the programmer
    /// installed earlier in this process: typically what the agent reported
    /// before a restart. Routes outside it are never removed, whatever
    /// their protocol; default routes are never removed at all.
    pub scope: RouteScope,
}

/// Tables and devices in which a programmer may remove routes it no longer
/// wants. A route is removed only when it carries the programmer's
/// protocol, is not a default route, and both its table and its device
/// are in scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteScope {
    /// Routing tables (254 is main).
    pub tables: std::collections::BTreeSet<u32>,
    /// Output devices.
    pub devices: std::collections::BTreeSet<InterfaceName>,
}

impl RouteScope {
    /// Adds the table and device of `route` (the main table when it names
    /// none; its device when it names one).
    pub fn add_route(&mut self, route: &RouteSpec) {
        self.tables.insert(route.table.unwrap_or(MAIN_TABLE));
        if let Some(d) = &route.device {
            self.devices.insert(d.clone());
        }
    }

    /// True when a route in `table` on `device` may be removed. A route
    /// whose device is not known (an in-memory kernel) is judged by its
    /// table alone.
    pub fn allows(&self, table: u32, device: Option<&str>) -> bool {
        self.tables.contains(&table)
            && device.is_none_or(|d| self.devices.iter().any(|x| x.as_str() == d))
    }

    /// Adds everything in `other`.
    pub fn extend(&mut self, other: &RouteScope) {
        self.tables.extend(other.tables.iter().copied());
        self.devices.extend(other.devices.iter().cloned());
    }
}

/// An incremental change to the routes of the last full apply: `remove`
/// first, then `upsert`. The programmer writes only these routes, without
/// reading the whole routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChanges {
    /// Routes to stop having (removed from the kernel when we installed
    /// them; another program's routes are never touched).
    pub remove: Vec<RouteSpec>,
    /// Routes to add, or to replace when a route with the same key
    /// (destination, table, metric) is ours.
    pub upsert: Vec<RouteSpec>,
}

impl RouteChanges {
    /// True when there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.upsert.is_empty()
    }
}

/// What happened to one desired route during an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteResult {
    /// Already present as desired; nothing written.
    Unchanged,
    /// Newly installed.
    Added,
    /// Present with other attributes (gateway, device) and replaced.
    Replaced,
    /// Could not be installed; the message says why and what to do.
    Failed(String),
}

/// The outcome for one desired route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteOutcome {
    /// The route.
    pub route: RouteSpec,
    /// What happened.
    pub result: RouteResult,
    /// The device the route goes out of: the one the spec names, or the
    /// one the kernel resolves the gateway on. `None` when not installed.
    pub device: Option<InterfaceName>,
}

/// What an apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The overlay interface was created (or recreated).
    pub interface_created: bool,
    /// The overlay interface was brought up.
    pub interface_up: bool,
    /// Overlay address added (`None` when unchanged).
    pub address_added: Option<IpNetwork>,
    /// Stale overlay addresses removed.
    pub addresses_removed: Vec<IpNetwork>,
    /// Per desired route outcome, in the order given.
    pub routes: Vec<RouteOutcome>,
    /// Routes we had installed earlier that are no longer desired, removed.
    pub routes_removed: Vec<RouteSpec>,
    /// Number of write requests sent to the kernel.
    pub kernel_writes: u64,
    /// Desired routes found in the kernel exactly as desired but installed
    /// by someone else with `ip route` (the original deployments), and
    /// taken over in place: marked as ours with one replace, never deleted
    /// and re-added. Their outcome in `routes` is
    /// [`RouteResult::Replaced`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<RouteSpec>,
    /// The overlay interface existed unmarked (a macvlan of the right
    /// parent left by the original deployment) and was taken over in
    /// place: marked as ours, not recreated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interface_adopted: bool,
}

impl ApplyReport {
    /// True when the apply wrote nothing.
    pub fn is_noop(&self) -> bool {
        self.kernel_writes == 0
    }

    /// The routes that failed, with their messages.
    pub fn failures(&self) -> impl Iterator<Item = (&RouteSpec, &str)> {
        self.routes.iter().filter_map(|o| match &o.result {
            RouteResult::Failed(m) => Some((&o.route, m.as_str())),
            _ => None,
        })
    }
}

/// The kernel route covering a prefix, as found by gateway discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredRoute {
    /// The destination of the covering route (e.g. `10.0.0.0/8`, or
    /// `0.0.0.0/0` when only the default route covers it).
    pub destination: Cidr,
    /// Its gateway.
    pub gateway: IpAddr,
    /// Its output device.
    pub device: InterfaceName,
}

/// Something outside overlay changed the state we programmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriftEvent {
    /// One of our routes disappeared or changed.
    Route(RouteSpec),
    /// The overlay address disappeared or changed, or another address
    /// appeared on the overlay interface (it is removed by the repair).
    Address(IpNetwork),
    /// The overlay interface or its parent changed state.
    Link(InterfaceName),
    /// Notifications were lost (socket overrun); everything must be resynced.
    Overrun,
    /// The programmer repaired the drift itself; `writes` kernel writes.
    Repaired {
        /// Kernel writes the repair needed.
        writes: u64,
    },
}

/// State of one node's entry in a StaticRoute's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RouteState {
    /// Route is in the kernel.
    Applied,
    /// Route could not be applied; see the message.
    Failed,
    /// Route is waiting for something (e.g. the overlay IP).
    Pending,
}

impl fmt::Display for RouteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteState::Applied => "Applied",
            RouteState::Failed => "Failed",
            RouteState::Pending => "Pending",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_follow_the_kernels_defaults() {
        let route = |dest: &str, metric: Option<u32>| RouteSpec {
            destination: Cidr::parse("destination", dest).unwrap_or_else(|e| panic!("{e}")),
            gateway: None,
            device: None,
            table: None,
            metric,
        };
        // IPv6: no metric is the kernel's 1024, the same route.
        assert_eq!(
            route("2001:db8::/32", None).key(),
            route("2001:db8::/32", Some(1024)).key()
        );
        assert_eq!(route("2001:db8::/32", Some(0)).key().metric, 1024);
        // IPv4: no metric is 0; the main table when none is named.
        let v4 = route("192.0.2.0/24", None).key();
        assert_eq!(v4, route("192.0.2.0/24", Some(0)).key());
        assert_eq!((v4.table, v4.metric), (MAIN_TABLE, 0));
        assert_ne!(v4, route("192.0.2.0/24", Some(1024)).key());
    }

    #[test]
    fn owner_marker_round_trips() {
        let o = Owner::new("prod-eu", "10.176.162.151");
        assert_eq!(o.marker(), "overlay-owner:prod-eu/10.176.162.151");
        assert_eq!(Owner::from_marker(&o.marker()), Some(o));
        assert_eq!(Owner::from_marker("created by hand"), None);
        assert_eq!(Owner::from_marker("overlay-owner:/x"), None);
    }

    #[test]
    fn held_markers_round_trip_and_garbage_is_not_a_marker() {
        let o = Owner::new("3f1c2a9e-0000-4000-8000-000000000001", "node-a");
        let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        let m = o.held_marker(until);
        assert_eq!(
            m,
            "overlay-held:3f1c2a9e-0000-4000-8000-000000000001/node-a until=2026-11-18T11:06:40Z"
        );
        assert_eq!(
            Marker::parse(&m),
            Some(Marker::Held {
                owner: o.clone(),
                until
            })
        );
        assert_eq!(Marker::parse(&o.marker()), Some(Marker::Live(o.clone())));
        // A held marker is not a live owner.
        assert_eq!(Owner::from_marker(&m), None);
        for garbage in [
            "overlay-held:c/n",
            "overlay-held:c/n until=",
            "overlay-held:c/n until=yesterday",
            "overlay-held:/n until=2026-11-18T11:06:40Z",
            "overlay-owner:c x/n",
            "overlay-owner:c",
            "Gateway",
            "",
        ] {
            assert_eq!(Marker::parse(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn node_topology_prefers_the_newest_labels() {
        let labels: BTreeMap<String, String> = [
            ("failure-domain.beta.kubernetes.io/zone", "old"),
            ("topology.kubernetes.io/zone", "dal10"),
            ("ibm-cloud.kubernetes.io/region", "us-south"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let n = NodeInfo::from_labels("n1", labels, vec![]);
        assert_eq!(n.zone.as_ref().map(Zone::as_str), Some("dal10"));
        assert_eq!(n.region.as_deref(), Some("us-south"));
    }
}
