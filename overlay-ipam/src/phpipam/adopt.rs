//! Adoption of the original controller's entries
//! ([`IpamBackend::inspect_adoption`], [`IpamBackend::adopt`]).
//!
//! The original Go `iks-overlay-ip-controller` reserved with `POST
//! addresses/first_free/{subnet}/` carrying only `owner=<node name>`: its
//! entries have phpIPAM's `owner` field set to the node, the default
//! description `API created` and no hostname, so neither our hostname
//! search nor our owner markers find them, and a node's release would
//! leave them behind.
//!
//! What phpIPAM holds at an address is read with one `GET
//! addresses/search/{ip}/` (every subnet; 404 `Address not found` when
//! none; after the first hit the `ip` comes as a decimal string). An entry
//! is:
//! - **ours** when its description is this owner's live marker;
//! - **adoptable** exactly when it is in a subnet some zone of `subnetMap`
//!   lists, is not the subnet's gateway, its `owner` field is the node
//!   name, and its description carries no overlay marker at all (live or
//!   held, of any cluster, readable or not);
//! - **foreign** otherwise, with the reason.
//!
//! Several entries at the address (the same address in several subnets):
//! ours if any is ours, else adoptable if any is adoptable, else foreign
//! with every entry's reason. `adopt` marks the adoptable entry with one
//! `PATCH addresses/{id}/` setting `description` to the owner marker and
//! `hostname` to the node (so that `lookup`, `list` and `release` find it
//! from then on); it never reserves.
//!
//! [`IpamBackend::inspect_adoption`]: overlay_core::IpamBackend::inspect_adoption
//! [`IpamBackend::adopt`]: overlay_core::IpamBackend::adopt

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use overlay_core::model::{HELD_MARKER_PREFIX, Marker, OWNER_MARKER_PREFIX};
use overlay_core::{Adoption, IpamError, Owner};
use reqwest::Method;
use serde_json::{Value, json};

use super::{
    AddressEntry, BACKEND, OwnerEntry, PhpIpamBackend, address_entry, rejected, reply_error,
};

/// One entry phpIPAM holds at the address.
#[derive(Debug, Clone)]
struct Hit {
    entry: AddressEntry,
    /// phpIPAM's `owner` field.
    owner: Option<String>,
}

/// What one entry is to an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ours,
    Adoptable(String),
    Foreign(String),
}

/// What the inspection found, and the entry `adopt` would mark.
struct Inspection {
    adoption: Adoption,
    candidate: Option<Hit>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl PhpIpamBackend {
    /// `GET addresses/search/{ip}/`: every entry at `ip`, in any subnet.
    async fn search_ip(&self, ip: IpAddr) -> Result<Vec<Hit>, IpamError> {
        let call = "GET addresses/search";
        let path = format!("addresses/search/{ip}/");
        let r = self.call(Method::GET, &path, None, call).await?;
        let hits = match (r.status, r.data) {
            (200, Some(Value::Array(a))) => a,
            (404, _) => return Ok(Vec::new()),
            (200, _) => return Err(rejected(call, "reply data is not a list")),
            (s, _) => return Err(reply_error(call, s, &r.message)),
        };
        Ok(hits
            .iter()
            .filter_map(|a| {
                Some(Hit {
                    entry: address_entry(a, 0)?,
                    owner: text(a, "owner"),
                })
            })
            // The decimal ip of later hits is parsed by `address_entry`.
            .filter(|h| h.entry.ip == ip && h.entry.subnet_id != 0)
            .collect())
    }

    /// What entry `hit` is to `owner` (see the module docs).
    fn verdict(&self, owner: &Owner, hit: &Hit) -> Verdict {
        let e = &hit.entry;
        let sid = e.subnet_id;
        let description = e.description.as_deref().unwrap_or_default().trim();
        match Marker::parse(description) {
            Some(Marker::Live(o)) if &o == owner => return Verdict::Ours,
            Some(Marker::Live(o)) if o.cluster == self.cluster => {
                return Verdict::Foreign(format!(
                    "owned by {} (this cluster's owner marker, phpIPAM subnet {sid})",
                    o.node
                ));
            }
            Some(Marker::Live(o)) => {
                return Verdict::Foreign(format!(
                    "carries cluster {}'s marker (node {}, phpIPAM subnet {sid})",
                    o.cluster, o.node
                ));
            }
            Some(Marker::Held { owner: o, until }) => {
                return Verdict::Foreign(format!(
                    "held back after a release by {o} until {} (phpIPAM subnet {sid})",
                    humantime::format_rfc3339_seconds(until)
                ));
            }
            None if description.starts_with(OWNER_MARKER_PREFIX)
                || description.starts_with(HELD_MARKER_PREFIX) =>
            {
                return Verdict::Foreign(format!(
                    "carries an unreadable overlay marker {description:?} (phpIPAM subnet {sid})"
                ));
            }
            None => {}
        }
        if e.is_gateway {
            return Verdict::Foreign(format!("is the gateway of phpIPAM subnet {sid}"));
        }
        if self.zone_of_subnet(sid).is_none() {
            return Verdict::Foreign(format!(
                "is in phpIPAM subnet {sid}, which no zone of subnetMap lists"
            ));
        }
        match hit.owner.as_deref() {
            Some(o) if o == owner.node => Verdict::Adoptable(format!(
                "phpIPAM entry {} records owner {o}, description {description:?}, no owner marker",
                e.id
            )),
            Some(o) => {
                Verdict::Foreign(format!("owned by {o} (phpIPAM owner field, subnet {sid})"))
            }
            None => Verdict::Foreign(format!(
                "not recorded for {}: phpIPAM entry {} in subnet {sid} has no owner (hostname {:?}, description {description:?})",
                owner.node,
                e.id,
                e.hostname.as_deref().unwrap_or_default()
            )),
        }
    }

    /// The reservation of `owner` at entry `e` (live, with the prefix of
    /// its subnet).
    async fn adopted_reservation(
        &self,
        owner: &Owner,
        e: &AddressEntry,
    ) -> Result<overlay_core::Reservation, IpamError> {
        let zone = self.zone_for(e.subnet_id, None)?;
        let f = OwnerEntry {
            id: e.id,
            ip: e.ip,
            subnet: e.subnet_id,
            held_until: None,
        };
        self.reservation(owner, &zone, &f).await
    }

    async fn inspect(&self, owner: &Owner, address: IpNetwork) -> Result<Inspection, IpamError> {
        let hits = self.search_ip(address.ip()).await?;
        if hits.is_empty() {
            return Ok(Inspection {
                adoption: Adoption::Missing,
                candidate: None,
            });
        }
        let verdicts: Vec<(Hit, Verdict)> = hits
            .into_iter()
            .map(|h| {
                let v = self.verdict(owner, &h);
                (h, v)
            })
            .collect();
        if let Some((h, _)) = verdicts.iter().find(|(_, v)| *v == Verdict::Ours) {
            let reservation = self.adopted_reservation(owner, &h.entry).await?;
            return Ok(Inspection {
                adoption: Adoption::Ours { reservation },
                candidate: None,
            });
        }
        let mut reasons = Vec::new();
        for (h, v) in verdicts {
            match v {
                Verdict::Adoptable(detail) => {
                    return Ok(Inspection {
                        adoption: Adoption::Adoptable {
                            subnet_id: h.entry.subnet_id,
                            detail,
                        },
                        candidate: Some(h),
                    });
                }
                Verdict::Foreign(reason) => reasons.push(reason),
                Verdict::Ours => {}
            }
        }
        Ok(Inspection {
            adoption: Adoption::Foreign {
                reason: reasons.join("; "),
            },
            candidate: None,
        })
    }

    /// [`IpamBackend::inspect_adoption`](overlay_core::IpamBackend::inspect_adoption)
    /// for phpIPAM: one search, no write.
    pub(super) async fn inspect_adoption_at(
        &self,
        owner: &Owner,
        address: IpNetwork,
    ) -> Result<Adoption, IpamError> {
        Ok(self.inspect(owner, address).await?.adoption)
    }

    /// [`IpamBackend::adopt`](overlay_core::IpamBackend::adopt) for
    /// phpIPAM, under the owner's lock (no reserve of the same owner runs
    /// meanwhile).
    pub(super) async fn adopt_at(
        &self,
        owner: &Owner,
        address: IpNetwork,
    ) -> Result<Adoption, IpamError> {
        self.under_owner_lock(owner, self.adopt_locked(owner, address))
            .await
    }

    async fn adopt_locked(&self, owner: &Owner, address: IpNetwork) -> Result<Adoption, IpamError> {
        let Inspection {
            adoption,
            candidate,
        } = self.inspect(owner, address).await?;
        let (Adoption::Adoptable { .. }, Some(hit)) = (&adoption, candidate) else {
            return Ok(adoption);
        };
        let e = &hit.entry;
        let call = format!("PATCH addresses/{}", e.id);
        let body = json!({ "description": owner.marker(), "hostname": owner.node });
        let reply = self
            .call(
                Method::PATCH,
                &format!("addresses/{}/", e.id),
                Some(&body),
                &call,
            )
            .await;
        let r = match reply {
            Ok(r) => r,
            Err(err) => {
                // The write may have landed: the owner index learns it
                // from phpIPAM again.
                if let Some(z) = self.zone_of_subnet(e.subnet_id).cloned() {
                    self.mark_stale(&z);
                }
                return Err(err);
            }
        };
        match r.status {
            200 => {}
            // Deleted since the search.
            404 if r.message == "Address does not exist" => return Ok(Adoption::Missing),
            s => return Err(reply_error(&call, s, &r.message)),
        }
        self.remember(
            owner,
            &OwnerEntry {
                id: e.id,
                ip: e.ip,
                subnet: e.subnet_id,
                held_until: None,
            },
        );
        let reservation = self.adopted_reservation(owner, e).await?;
        tracing::info!(backend = BACKEND, owner = %owner, address = %reservation.address, subnet = e.subnet_id, id = e.id, previous_description = ?e.description, previous_hostname = ?e.hostname, "adopted an entry of the original controller: marked as ours");
        Ok(Adoption::Adopted { reservation })
    }
}
