//! [`NetlinkProgrammer`]: opening its sockets, starting the drift watcher,
//! and the [`RouteProgrammer`] calls (the full apply is in
//! [`crate::apply`], updates in [`crate::update`], the overlay interface
//! in [`crate::interface`]).

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_route::route::RouteType;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, TokioSocket};
use overlay_core::model::MAIN_TABLE;
use overlay_core::{
    ApplyReport, Cidr, DesiredNodeState, DiscoveredRoute, DriftEvent, InterfaceName,
    ProgrammerError, RouteChanges, RouteProgrammer,
};
use tokio::sync::{Mutex, broadcast};
use tokio::task::JoinHandle;

use crate::ProgrammerConfig;
use crate::preview::Preview;
use crate::socket::{BatchSocket, in_netns, set_receive_buffer};
use crate::state::{Counters, DriftCounters, Inner, State};
use crate::write::Writer;

/// Background tasks, aborted when the programmer is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// [`RouteProgrammer`] over rtnetlink, bound to one network namespace.
///
/// Create it inside a tokio runtime; its background tasks (the netlink
/// connection and the drift watcher) run on that runtime and stop when the
/// programmer is dropped.
pub struct NetlinkProgrammer {
    inner: Arc<Inner>,
    _tasks: Tasks,
}

impl std::fmt::Debug for NetlinkProgrammer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkProgrammer")
            .field("port", &self.inner.port)
            .field("protocol", &self.inner.protocol)
            .finish_non_exhaustive()
    }
}

/// Notification groups of the drift watcher: link, IPv4/IPv6 addresses and
/// routes (RTNLGRP_LINK, _IPV4_IFADDR, _IPV4_ROUTE, _IPV6_IFADDR,
/// _IPV6_ROUTE).
const DRIFT_GROUPS: u32 = group(1) | group(5) | group(7) | group(9) | group(11);

/// The bind mask bit of multicast group `n` (RTNLGRP_*).
const fn group(n: u32) -> u32 {
    1 << (n - 1)
}

/// Receive buffer of the rtnetlink socket (root may exceed `rmem_max`).
const RCVBUF: usize = 4 << 20;

/// The sockets of a programmer, opened in its namespace.
struct Sockets {
    /// The rtnetlink connection task, to spawn.
    connection: rtnetlink::proto::Connection<netlink_packet_route::RouteNetlinkMessage>,
    handle: rtnetlink::Handle,
    /// Port id of the rtnetlink socket.
    port: u32,
    /// The notification socket, with drift repair on.
    notifications: Option<TokioSocket>,
    batch: BatchSocket,
}

/// Opens the programmer's sockets in the configured namespace, on `rt`.
fn open_sockets(
    config: &ProgrammerConfig,
    rt: &tokio::runtime::Handle,
) -> Result<Sockets, ProgrammerError> {
    in_netns(config.netns.as_deref(), rt, || {
        let (mut connection, handle, _) = rtnetlink::new_connection()?;
        let sock = connection.socket_mut().socket_mut();
        let addr = sock.bind_auto()?;
        let _ = sock.set_cap_ack(true);
        set_receive_buffer(sock, RCVBUF);
        let notifications = if config.drift_repair {
            let mut m = TokioSocket::new(NETLINK_ROUTE)?;
            m.socket_mut()
                .bind(&netlink_sys::SocketAddr::new(0, DRIFT_GROUPS))?;
            set_receive_buffer(m.socket_ref(), config.notification_buffer);
            Some(m)
        } else {
            None
        };
        Ok(Sockets {
            connection,
            handle,
            port: addr.port_number(),
            notifications,
            batch: BatchSocket::open()?,
        })
    })
}

impl NetlinkProgrammer {
    /// Checks the route protocol ([`crate::check_route_protocol`]: not 0–4,
    /// not named for other software in the configured protocol files),
    /// opens the netlink sockets in the configured namespace and starts the
    /// drift watcher. Must be called inside a tokio runtime.
    pub async fn new(config: ProgrammerConfig) -> Result<Self, ProgrammerError> {
        crate::check_route_protocol(
            config.route_protocol,
            &config.protocol_name,
            &config.protocol_files,
        )?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| ProgrammerError::Namespace {
            namespace: namespace_label(&config),
            message: "NetlinkProgrammer::new must be called inside a tokio runtime".into(),
        })?;
        let sockets = open_sockets(&config, &rt)?;
        let mut tasks = vec![rt.spawn(sockets.connection)];
        let (events, _) = broadcast::channel(1024);
        let batch = Arc::new(sockets.batch);
        let inner = Arc::new(Inner {
            handle: sockets.handle.clone(),
            port: sockets.port,
            writer: Writer::new(
                sockets.handle.clone(),
                batch.clone(),
                config.requests_per_send,
            ),
            batch,
            protocol: config.route_protocol,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            events,
        });
        if let Some(m) = sockets.notifications {
            tasks.push(rt.spawn(crate::drift::watch(inner.clone(), m)));
        }
        Ok(Self {
            inner,
            _tasks: Tasks(tasks),
        })
    }

    /// The counters (writes, repairs, resyncs, overruns) so far.
    pub fn counters(&self) -> DriftCounters {
        self.inner.counters.snapshot()
    }

    /// The report of the last apply, including re-applies by drift repair.
    pub async fn last_report(&self) -> Option<ApplyReport> {
        self.inner.state.lock().await.last_report.clone()
    }

    /// The route protocol number marking our routes.
    pub fn route_protocol(&self) -> u8 {
        self.inner.protocol
    }

    /// What [`RouteProgrammer::apply`] of `desired` would do to the kernel
    /// as it is now, without writing anything: the overlay interface
    /// (create, already ours, recreate, take over, or refused and why) and
    /// each desired route (install, already ours, replace, take over a
    /// route added with `ip route`, or refused and why), and the routes of
    /// ours it would remove. It runs the checks and decisions of the apply
    /// itself, on dumps of links, addresses and routes, so the two agree
    /// (barring changes to the kernel in between). For `overlayctl
    /// migrate plan`.
    pub async fn preview(&self, desired: &DesiredNodeState) -> Result<Preview, ProgrammerError> {
        self.inner.preview(desired).await
    }
}

fn namespace_label(config: &ProgrammerConfig) -> String {
    config
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "current".into())
}

impl Inner {
    /// The gateway and device of the most specific main-table route
    /// covering `prefix`.
    async fn discover_gateway(&self, prefix: &Cidr) -> Result<DiscoveredRoute, ProgrammerError> {
        // One dump at a time per socket: wait for a running apply.
        let _state = self.state.lock().await;
        let routes = self.dump_routes().await?;
        let best = routes
            .iter()
            .filter(|r| {
                r.key.table == MAIN_TABLE
                    && r.kind == RouteType::Unicast
                    && r.key.destination.is_ipv4() == prefix.is_ipv4()
                    && r.key.destination.contains_net(prefix)
            })
            .min_by_key(|r| (std::cmp::Reverse(r.key.destination.prefix()), r.key.metric));
        let Some(best) = best else {
            return Err(ProgrammerError::NoCoveringRoute {
                prefix: prefix.to_string(),
                message: "no route in the main table covers it (not even a default route); add one or configure the gateway explicitly".into(),
            });
        };
        let links = self.dump_links().await?;
        let device_name = best
            .oif
            .and_then(|i| links.values().find(|l| l.index == i))
            .map(|l| l.name.clone());
        let Some(gateway) = best.gateway else {
            return Err(ProgrammerError::NoCoveringRoute {
                prefix: prefix.to_string(),
                message: format!(
                    "the covering route {} dev {} is a direct (on-link) route without a gateway; configure the gateway explicitly",
                    best.key.destination,
                    device_name.as_deref().unwrap_or("?")
                ),
            });
        };
        let device = device_name
            .as_deref()
            .map(|n| InterfaceName::parse("device", n))
            .transpose()?
            .ok_or_else(|| ProgrammerError::NoCoveringRoute {
                prefix: prefix.to_string(),
                message: format!(
                    "the covering route {} via {gateway} has no output device",
                    best.key.destination
                ),
            })?;
        Ok(DiscoveredRoute {
            destination: best.key.destination,
            gateway,
            device,
        })
    }
}

#[async_trait]
impl RouteProgrammer for NetlinkProgrammer {
    async fn apply(&self, desired: &DesiredNodeState) -> Result<ApplyReport, ProgrammerError> {
        Counters::add(&self.inner.counters.applies, 1);
        let mut state = self.inner.state.lock().await;
        self.inner.apply_locked(&mut state, desired).await
    }

    async fn remove_interface(&self, name: &InterfaceName) -> Result<bool, ProgrammerError> {
        self.inner.remove_interface(name).await
    }

    async fn update(&self, changes: &RouteChanges) -> Result<ApplyReport, ProgrammerError> {
        Counters::add(&self.inner.counters.updates, 1);
        let mut state = self.inner.state.lock().await;
        self.inner.update_locked(&mut state, changes).await
    }

    async fn discover_gateway(&self, prefix: &Cidr) -> Result<DiscoveredRoute, ProgrammerError> {
        self.inner.discover_gateway(prefix).await
    }

    async fn interface_with_address(
        &self,
        address: IpAddr,
    ) -> Result<Option<InterfaceName>, ProgrammerError> {
        let _state = self.inner.state.lock().await;
        let addrs = self.inner.dump_addrs().await?;
        let Some(index) = addrs
            .iter()
            .find(|a| a.net.ip() == address)
            .map(|a| a.index)
        else {
            return Ok(None);
        };
        let links = self.inner.dump_links().await?;
        links
            .values()
            .find(|l| l.index == index)
            .map(|l| InterfaceName::parse("interface", &l.name))
            .transpose()
            .map_err(ProgrammerError::from)
    }

    async fn address_network(&self, address: IpAddr) -> Result<Option<IpNetwork>, ProgrammerError> {
        let _state = self.inner.state.lock().await;
        let addrs = self.inner.dump_addrs().await?;
        Ok(addrs.iter().find(|a| a.net.ip() == address).map(|a| a.net))
    }

    fn drift(&self) -> BoxStream<'static, DriftEvent> {
        let rx = self.inner.events.subscribe();
        stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                // This subscriber fell behind and missed events.
                Err(broadcast::error::RecvError::Lagged(_)) => Some((DriftEvent::Overrun, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }
}
