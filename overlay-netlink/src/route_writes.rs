//! The route writes of full applies and updates: what each validated
//! desired route needs (its [`Decision`]), the [`RouteWrite`]s that carry
//! it out, and taking in the kernel's answers ([`KnownRoutes`],
//! [`outcomes`]).

use std::collections::HashMap;

use netlink_packet_route::route::RouteType;
use overlay_core::{
    ApplyReport, InterfaceName, ProgrammerError, RouteKey, RouteOutcome, RouteResult, RouteScope,
    RouteSpec,
};

use crate::checks;
use crate::errno::{
    EAGAIN, EEXIST, EHOSTUNREACH, ENETUNREACH, ENOBUFS, ENODEV, ENOENT, ESRCH, Errno, errno_error,
    errno_message, is_permission,
};
use crate::read::KernelRoute;
use crate::state::{Direct, ForeignRoutes, Inner, RouteIntent, as_direct, matches_spec};
use crate::write::{RouteAdd, Write};

/// What a validated desired route needs, decided against the routes in
/// place on its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Our route in place already is what the route asks for; it goes out
    /// of this device.
    InPlace(Option<u32>),
    /// A write out of `oif`: a new route, or a replace of ours.
    Write { oif: Option<u32>, add: RouteAdd },
    /// `found`, added with `ip route`, is exactly the route: taken over
    /// with one replace into our protocol, out of `oif` (its device).
    TakeOver {
        oif: Option<u32>,
        found: KernelRoute,
    },
    /// Routes overlay did not install hold the key (check 5): the route
    /// would go out of `oif`; the failure's message.
    Foreign { oif: Option<u32>, message: String },
    /// The gateway is not on-link (check 4): the failure's message.
    Unreachable(String),
}

/// Decides what `spec` (key `key`, its named device `dev_oif`) needs, given
/// our route in place on the key (`existing`), the routes overlay did not
/// install on it (`foreign`) and the direct routes.
pub(crate) fn decide(
    spec: &RouteSpec,
    key: &RouteKey,
    dev_oif: Option<u32>,
    existing: Option<&KernelRoute>,
    foreign: &[KernelRoute],
    direct: &[Direct],
) -> Decision {
    if let Some(k) = existing {
        if matches_spec(k, spec, dev_oif) {
            return Decision::InPlace(k.oif);
        }
        return match checks::gateway_on_link(spec, key, dev_oif, direct, existing) {
            Ok(oif) => Decision::Write {
                oif,
                add: RouteAdd::Replace,
            },
            Err(m) => Decision::Unreachable(m),
        };
    }
    // A single route on the key keeps its device when the gateway is
    // on-link there, as ours would: that is what taking it over needs.
    let single = match foreign {
        [only] => Some(only),
        _ => None,
    };
    let oif = match checks::gateway_on_link(spec, key, dev_oif, direct, single) {
        Ok(oif) => oif,
        Err(m) => return Decision::Unreachable(m),
    };
    match checks::foreign_on_key(key, spec.gateway, oif, foreign) {
        Ok(None) => Decision::Write {
            oif,
            add: RouteAdd::New,
        },
        Ok(Some(found)) => Decision::TakeOver {
            oif,
            found: found.clone(),
        },
        Err(message) => Decision::Foreign { oif, message },
    }
}

impl Decision {
    /// What the route's key should hold from now on: the route out of the
    /// device decided (for an unreachable route, the device it names).
    pub(crate) fn intent(&self, spec: &RouteSpec, dev_oif: Option<u32>) -> RouteIntent {
        let oif = match self {
            Decision::InPlace(oif)
            | Decision::Write { oif, .. }
            | Decision::TakeOver { oif, .. }
            | Decision::Foreign { oif, .. } => *oif,
            Decision::Unreachable(_) => dev_oif,
        };
        RouteIntent {
            spec: spec.clone(),
            oif,
        }
    }
}

/// One route write of an apply or update.
pub(crate) struct RouteWrite {
    /// Index of the desired route in its list, or `None` for a removal.
    pub route: Option<usize>,
    /// The route's key.
    pub key: RouteKey,
    pub write: Write,
    /// The route's result when the kernel accepts the write.
    pub result: RouteResult,
    /// The route added with `ip route` this write takes over, if any.
    pub takes_over: Option<KernelRoute>,
}

impl RouteWrite {
    /// Adds (or replaces) desired route `i`, `spec`, out of `oif`.
    pub(crate) fn add(
        i: usize,
        key: RouteKey,
        spec: &RouteSpec,
        oif: Option<u32>,
        protocol: u8,
        add: RouteAdd,
    ) -> Self {
        RouteWrite {
            route: Some(i),
            key,
            write: Write::add_route(&key, spec.gateway, oif, protocol, add),
            result: match add {
                RouteAdd::New => RouteResult::Added,
                RouteAdd::Replace => RouteResult::Replaced,
            },
            takes_over: None,
        }
    }

    /// Takes over `found`, exactly desired route `i`, `spec`, out of
    /// `oif`: one `RTM_NEWROUTE` with `NLM_F_REPLACE` that swaps it for
    /// the same route carrying our `protocol`, atomically (never a delete
    /// and an add, so no packet finds the key empty).
    pub(crate) fn take_over(
        i: usize,
        key: RouteKey,
        spec: &RouteSpec,
        oif: Option<u32>,
        protocol: u8,
        found: KernelRoute,
    ) -> Self {
        RouteWrite {
            takes_over: Some(found),
            ..Self::add(i, key, spec, oif, protocol, RouteAdd::Replace)
        }
    }

    /// Deletes our route with `key` out of `oif`.
    pub(crate) fn delete(key: RouteKey, oif: Option<u32>, protocol: u8) -> Self {
        RouteWrite {
            route: None,
            key,
            write: Write::delete_route(&key, oif, protocol),
            result: RouteResult::Unchanged,
            takes_over: None,
        }
    }
}

/// Sends `ops`; each with the kernel's answer, in the order given.
pub(crate) async fn send_route_writes(
    inner: &Inner,
    ops: Vec<RouteWrite>,
) -> Vec<(RouteWrite, Result<(), Errno>)> {
    let writes = ops.iter().map(|op| op.write.clone()).collect();
    let answers = inner.writer.send(writes).await;
    ops.into_iter().zip(answers).collect()
}

/// Our routes and the direct routes as the programmer knows them, kept in
/// step with the kernel's answers to our writes (by full applies and
/// updates alike).
pub(crate) struct KnownRoutes<'a> {
    pub ours: &'a mut HashMap<RouteKey, KernelRoute>,
    pub foreign: &'a mut ForeignRoutes,
    pub direct: &'a mut Vec<Direct>,
    pub protocol: u8,
}

impl KnownRoutes<'_> {
    /// Takes in the kernel's answer to the deletion of our route `spec`.
    pub(crate) fn deleted(
        &mut self,
        key: RouteKey,
        spec: RouteSpec,
        answer: Result<(), Errno>,
        report: &mut ApplyReport,
    ) -> Result<(), ProgrammerError> {
        match answer {
            Ok(()) | Err(ESRCH) | Err(ENOENT) => {
                if let Some(gone) = self.ours.remove(&key)
                    && let Some(d) = as_direct(&gone)
                {
                    self.direct.retain(|x| *x != d);
                }
                report.routes_removed.push(spec);
            }
            Err(e) if is_permission(e) => {
                return Err(errno_error(&format!("delete route {spec}"), e));
            }
            Err(e) => tracing::warn!(
                route = %spec,
                error = %errno_message(e),
                "could not remove a route overlay installed earlier"
            ),
        }
        Ok(())
    }

    /// Takes in the kernel's answer to the write of `op` (route `spec`
    /// through `oif`); the route's result. A route taken over is ours from
    /// now on and joins `report.adopted`.
    pub(crate) fn added(
        &mut self,
        op: &RouteWrite,
        spec: &RouteSpec,
        oif: Option<u32>,
        answer: Result<(), Errno>,
        report: &mut ApplyReport,
    ) -> Result<RouteResult, ProgrammerError> {
        match answer {
            Ok(()) => {
                let k = installed_route(op.key, spec, oif, self.protocol);
                if let Some(d) = as_direct(&k)
                    && !self.direct.contains(&d)
                {
                    self.direct.push(d);
                }
                self.ours.insert(op.key, k);
                if let Some(found) = &op.takes_over {
                    self.foreign.remove(&op.key);
                    tracing::info!(
                        route = %spec,
                        oif = ?found.oif,
                        from_protocol = found.protocol,
                        to_protocol = self.protocol,
                        "took over a route added with `ip route` that is exactly the desired route (one atomic replace; no packet lost)"
                    );
                    report.adopted.push(spec.clone());
                }
                Ok(op.result.clone())
            }
            Err(e) if is_permission(e) => Err(errno_error(&format!("add route {spec}"), e)),
            Err(e) => Ok(RouteResult::Failed(route_failure(spec, e))),
        }
    }
}

/// The outcome of each of `routes` (a route without a result was already
/// in place), naming the device it goes out of; the tables and devices of
/// the routes in place join `scope`.
pub(crate) fn outcomes(
    routes: &[RouteSpec],
    results: Vec<Option<RouteResult>>,
    oifs: Vec<Option<u32>>,
    name_of: impl Fn(Option<u32>) -> Option<InterfaceName>,
    scope: &mut RouteScope,
) -> Vec<RouteOutcome> {
    let out: Vec<RouteOutcome> = routes
        .iter()
        .zip(results)
        .zip(oifs)
        .map(|((route, result), oif)| {
            let result = result.unwrap_or(RouteResult::Unchanged);
            let device = match result {
                RouteResult::Failed(_) => None,
                _ => route.device.clone().or_else(|| name_of(oif)),
            };
            RouteOutcome {
                route: route.clone(),
                result,
                device,
            }
        })
        .collect();
    for o in out
        .iter()
        .filter(|o| !matches!(o.result, RouteResult::Failed(_)))
    {
        scope.add_route(&o.route);
        scope.devices.extend(o.device.clone());
    }
    out
}

/// The kernel route that writing `spec` with `oif` installed.
pub(crate) fn installed_route(
    key: RouteKey,
    spec: &RouteSpec,
    oif: Option<u32>,
    protocol: u8,
) -> KernelRoute {
    KernelRoute {
        key,
        gateway: spec.gateway,
        oif,
        protocol,
        kind: RouteType::Unicast,
        multipath: false,
        plain: true,
    }
}

/// The message of a route the kernel refused, saying what to do.
pub(crate) fn route_failure(spec: &RouteSpec, errno: Errno) -> String {
    match (errno, spec.gateway) {
        (ENETUNREACH | EHOSTUNREACH, Some(gw)) => ProgrammerError::GatewayUnreachable {
            destination: spec.destination.to_string(),
            gateway: gw.to_string(),
        }
        .to_string(),
        (EEXIST, _) => format!(
            "the kernel already has a route to {} with this table and metric that overlay did not install; overlay never touches it: delete that route or give this one another metric",
            spec.destination
        ),
        (ENOBUFS | EAGAIN, _) => format!(
            "no acknowledgement for route {spec} ({}); it may or may not be installed: the next apply checks and repairs it",
            errno_message(errno)
        ),
        (ENODEV, _) => format!(
            "the device of route {spec} does not exist (any more); create it or leave the device unset"
        ),
        (e, _) => format!(
            "the kernel refused route {spec}: {}; check the gateway and device",
            errno_message(e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_what_to_do() {
        let spec = RouteSpec {
            destination: "203.0.113.0/24".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            device: None,
            table: None,
            metric: None,
        };
        assert!(route_failure(&spec, ENETUNREACH).contains("not on-link"));
        assert!(route_failure(&spec, EEXIST).contains("another metric"));
        assert!(route_failure(&spec, ENODEV).contains("does not exist"));
    }
}
