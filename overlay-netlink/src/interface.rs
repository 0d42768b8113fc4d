//! The overlay interface: a macvlan of the parent interface marked as
//! overlay's with [`crate::OWNED_LINK_ALIAS`], up, holding exactly the
//! overlay address; and its removal. Only a link carrying the mark is ever
//! deleted, recreated, brought up or configured.
//!
//! One unmarked link is taken over: a macvlan of the right parent without
//! any alias, as the original deployment left it (`ip link add tmp0 link
//! eth0 type macvlan`). It is marked in place (one alias write), keeping
//! its index, mode, MAC address and the overlay address, so nothing that
//! goes through it notices; only then is it ours like one overlay created.
//! Anything else under the name (another kind, another parent, a link
//! somebody marked with an alias of their own) is reported and left
//! alone.

use std::collections::HashMap;

use netlink_packet_route::link::InfoKind;
use overlay_core::{ApplyReport, InterfaceName, OverlayInterface, ProgrammerError};

use crate::errno::{EADDRNOTAVAIL, ENODEV, errno_error};
use crate::read::{self, Addr, Link};
use crate::state::Inner;
use crate::write::Write;

/// The error for a link named like the overlay interface that overlay did
/// not create and does not take over (the parent is `parent`).
fn not_ours(l: &Link, parent: &Link) -> ProgrammerError {
    let name = &l.name;
    ProgrammerError::NotOurs {
        interface: name.clone(),
        message: format!(
            "it exists ({}) without the alias {:?} that marks the interfaces overlay creates; overlay takes over only a macvlan of {} without any alias; delete or rename it (`ip link del {name}`) to let overlay create its own, or set INTERFACE_LABEL to another name",
            l.describe(),
            crate::OWNED_LINK_ALIAS,
            parent.name
        ),
    }
}

/// Refuses the overlay address when it sits on another interface than the
/// overlay interface (index `overlay_index`, if it exists).
fn check_address_free(
    ov: &OverlayInterface,
    links: &HashMap<String, Link>,
    addrs: &[Addr],
    overlay_index: Option<u32>,
) -> Result<(), ProgrammerError> {
    let Some(a) = addrs
        .iter()
        .find(|a| a.net.ip() == ov.address.ip() && Some(a.index) != overlay_index)
    else {
        return Ok(());
    };
    let interface = links
        .values()
        .find(|l| l.index == a.index)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("index {}", a.index));
    Err(ProgrammerError::AddressInUse {
        address: ov.address.to_string(),
        interface,
    })
}

/// What is under the overlay interface's name, as the apply goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkFound {
    /// Nothing: the apply creates the macvlan.
    Missing,
    /// Our macvlan (marked): kept, and recreated only when it sits on
    /// another parent ([`needs_recreate`]).
    Ours(Link),
    /// A macvlan of the parent without any alias, as the original
    /// deployment created it: taken over in place (marked, not recreated).
    TakeOver(Link),
}

/// Judges `current`, the link with the overlay interface's name (if any),
/// against `parent`: refuses a link that overlay did not create (no mark)
/// unless it is an unmarked macvlan of `parent` without any alias, and a
/// marked one that is not a macvlan.
pub(crate) fn judge_link(
    current: Option<&Link>,
    parent: &Link,
) -> Result<LinkFound, ProgrammerError> {
    let Some(l) = current else {
        return Ok(LinkFound::Missing);
    };
    // Only a link we created or take over is ours to delete, recreate,
    // bring up or configure; the name alone proves nothing. A macvlan of
    // the parent with no alias at all is what the original deployment
    // left; one with somebody else's alias is theirs.
    if !l.is_ours() {
        let unmarked_macvlan = l.alias.is_none()
            && l.kind == Some(InfoKind::MacVlan)
            && l.parent == Some(parent.index);
        return if unmarked_macvlan {
            Ok(LinkFound::TakeOver(l.clone()))
        } else {
            Err(not_ours(l, parent))
        };
    }
    if l.kind != Some(InfoKind::MacVlan) {
        let name = &l.name;
        return Err(ProgrammerError::Kernel {
            call: format!("create macvlan {name}"),
            message: format!(
                "an interface named {name} exists and is not a macvlan ({}); overlay does not delete it: rename or delete it, or choose another INTERFACE_LABEL",
                l.describe()
            ),
        });
    }
    Ok(LinkFound::Ours(l.clone()))
}

/// True when our macvlan `l` must be recreated: it sits on another parent
/// than `parent`. Its mode is kept whatever it is (overlay creates bridge
/// mode; one taken over keeps the original's, vepa by default): a
/// recreate loses packets and the address, and every mode carries the
/// overlay address to and from the network alike.
pub(crate) fn needs_recreate(l: &Link, parent: &Link) -> bool {
    l.parent != Some(parent.index)
}

/// The parent link and what is under the overlay interface's name, from
/// `links` and `addrs` as dumped: refused when the parent is missing, when
/// the overlay address sits on another interface, or by [`judge_link`].
pub(crate) fn find_overlay(
    ov: &OverlayInterface,
    links: &HashMap<String, Link>,
    addrs: &[Addr],
) -> Result<(Link, LinkFound), ProgrammerError> {
    let parent =
        links
            .get(ov.parent.as_str())
            .cloned()
            .ok_or_else(|| ProgrammerError::MissingParent {
                parent: ov.parent.to_string(),
            })?;
    let current = links.get(ov.name.as_str());
    check_address_free(ov, links, addrs, current.map(|l| l.index))?;
    let found = judge_link(current, &parent)?;
    Ok((parent, found))
}

/// True for an address on the overlay interface that an apply leaves
/// there: the overlay address and those the kernel manages itself.
pub(crate) fn address_stays(ov: &OverlayInterface, a: &Addr) -> bool {
    a.net == ov.address || a.kernel_managed()
}

impl Inner {
    /// Creates or fixes the overlay interface and its address; returns its
    /// index. Updates `links` with the result.
    pub(crate) async fn apply_overlay(
        &self,
        ov: &OverlayInterface,
        links: &mut HashMap<String, Link>,
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<u32, ProgrammerError> {
        let addrs = self.dump_addrs().await?;
        let (parent, found) = find_overlay(ov, links, &addrs)?;
        let current = match found {
            LinkFound::Missing => None,
            LinkFound::Ours(l) => Some(l),
            LinkFound::TakeOver(l) => Some(self.take_over_link(l, links, report, writes).await?),
        };
        let index = self
            .ensure_link(ov, &parent, current, links, report, writes)
            .await?;
        self.ensure_address(ov, index, &addrs, report, writes)
            .await?;
        Ok(index)
    }

    /// Marks `l`, an unmarked macvlan of the parent left by the original
    /// deployment, as ours in place: one alias write, nothing else (same
    /// index, mode, MAC address and addresses, so no packet is lost). The
    /// link as marked.
    async fn take_over_link(
        &self,
        mut l: Link,
        links: &mut HashMap<String, Link>,
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<Link, ProgrammerError> {
        let name = l.name.clone();
        let mark = Write::set_link_alias(l.index, crate::OWNED_LINK_ALIAS);
        self.must_write(format!("mark link {name} as overlay's"), mark, writes)
            .await?;
        tracing::info!(
            interface = %name,
            index = l.index,
            mode = ?l.macvlan_mode,
            "took over the unmarked macvlan of the parent left by the original deployment, in place (marked, not recreated)"
        );
        report.interface_adopted = true;
        l.alias = Some(crate::OWNED_LINK_ALIAS.to_owned());
        links.insert(name, l.clone());
        Ok(l)
    }

    /// Makes the overlay link (`current`, ours) a macvlan of `parent`, up:
    /// recreated (in bridge mode) when it sits on another parent, created
    /// when missing, its mode kept otherwise. Its index.
    async fn ensure_link(
        &self,
        ov: &OverlayInterface,
        parent: &Link,
        mut current: Option<Link>,
        links: &mut HashMap<String, Link>,
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<u32, ProgrammerError> {
        let name = ov.name.as_str();
        if let Some(l) = &current
            && needs_recreate(l, parent)
        {
            tracing::info!(interface = name, parent = %ov.parent, "recreating macvlan: wrong parent");
            self.must_write(
                format!("delete link {name}"),
                Write::delete_link(l.index),
                writes,
            )
            .await?;
            links.remove(name);
            current = None;
        }
        let Some(l) = current else {
            return self
                .create_marked_macvlan(ov, parent, links, report, writes)
                .await;
        };
        if !l.up {
            self.must_write(
                format!("set link {name} up"),
                Write::set_link_up(l.index),
                writes,
            )
            .await?;
            report.interface_up = true;
            if let Some(x) = links.get_mut(name) {
                x.up = true;
            }
        }
        Ok(l.index)
    }

    /// Creates the overlay macvlan (up, as drift repair expects to see it),
    /// then marks it: the kernel ignores `IFLA_IFALIAS` in an `RTM_NEWLINK`
    /// that creates a link, so the mark takes a second request. Its index.
    async fn create_marked_macvlan(
        &self,
        ov: &OverlayInterface,
        parent: &Link,
        links: &mut HashMap<String, Link>,
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<u32, ProgrammerError> {
        let name = ov.name.as_str();
        *writes += 1;
        self.count_writes(1);
        self.writer
            .send_one(Write::create_macvlan(name, parent.index))
            .await
            .map_err(|e| match e {
                // The parent vanished since the dump.
                ENODEV => ProgrammerError::MissingParent {
                    parent: ov.parent.to_string(),
                },
                e => errno_error(&format!("create macvlan {name} on {}", ov.parent), e),
            })?;
        let vanished = || ProgrammerError::Kernel {
            call: format!("create macvlan {name}"),
            message: "the interface vanished right after it was created".into(),
        };
        let mut l = read::get_link(&self.handle, name)
            .await?
            .ok_or_else(vanished)?;
        let mark = Write::set_link_alias(l.index, crate::OWNED_LINK_ALIAS);
        if let Err(e) = self
            .must_write(format!("mark link {name} as overlay's"), mark, writes)
            .await
        {
            // Unmarked, the link would never be ours again: take back what
            // we just created.
            let _ = self.writer.send_one(Write::delete_link(l.index)).await;
            return Err(e);
        }
        report.interface_created = true;
        report.interface_up = true;
        l.alias = Some(crate::OWNED_LINK_ALIAS.to_owned());
        let index = l.index;
        links.insert(name.to_owned(), l);
        Ok(index)
    }

    /// Leaves exactly the overlay address on link `index` (addresses as
    /// dumped before: `addrs`).
    ///
    /// Every other address goes, not only those carrying our protocol
    /// mark: kernels before 6.3 ignore IFA_PROTO, so an address we added
    /// there carries no mark, and one left by the original tooling or added
    /// by hand (`ip addr add`) never does. The interface is ours, and a
    /// stale address on it may have been released for a deleted node and
    /// given to another node since. IPv6 link-local addresses stay: the
    /// kernel adds them and the interface needs them; so do IPv6 addresses
    /// without IFA_F_PERMANENT, which the kernel manages itself
    /// (autoconfigured from router advertisements): removing them would
    /// only make them flap. An overlay address is always permanent.
    async fn ensure_address(
        &self,
        ov: &OverlayInterface,
        index: u32,
        addrs: &[Addr],
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<(), ProgrammerError> {
        let on_iface: Vec<&Addr> = if report.interface_created {
            Vec::new()
        } else {
            addrs.iter().filter(|a| a.index == index).collect()
        };
        let mut have = on_iface.iter().any(|a| a.net == ov.address);
        let removed_v4 = self
            .remove_other_addresses(ov, on_iface, report, writes)
            .await?;
        if have && removed_v4 && ov.address.is_ipv4() {
            // Without promote_secondaries, deleting a primary IPv4 address
            // deletes its secondaries too: the desired one may be gone.
            have = self
                .dump_addrs()
                .await?
                .iter()
                .any(|a| a.index == index && a.net == ov.address);
        }
        if !have {
            self.must_write(
                format!("add address {} to {}", ov.address, ov.name),
                Write::add_address(index, ov.address, self.protocol),
                writes,
            )
            .await?;
            report.address_added = Some(ov.address);
        }
        Ok(())
    }

    /// Deletes every address of `on_iface` but the overlay address and the
    /// kernel's own; whether an IPv4 address went.
    async fn remove_other_addresses(
        &self,
        ov: &OverlayInterface,
        on_iface: Vec<&Addr>,
        report: &mut ApplyReport,
        writes: &mut u64,
    ) -> Result<bool, ProgrammerError> {
        let mut removed_v4 = false;
        for a in on_iface {
            if address_stays(ov, a) {
                continue;
            }
            *writes += 1;
            self.count_writes(1);
            match self.writer.send_one(Write::delete_address(a)).await {
                // EADDRNOTAVAIL: gone already, e.g. an IPv4 secondary deleted
                // with its primary just before (promote_secondaries off).
                Ok(()) | Err(EADDRNOTAVAIL) => {}
                Err(e) => {
                    let call = format!("delete address {} from {}", a.net, ov.name);
                    return Err(errno_error(&call, e));
                }
            }
            tracing::info!(
                interface = %ov.name,
                address = %a.net,
                protocol = ?a.protocol,
                "removed an address that is not the overlay address from the overlay interface"
            );
            report.addresses_removed.push(a.net);
            removed_v4 |= a.net.is_ipv4();
        }
        Ok(removed_v4)
    }

    /// Deletes link `name` when overlay created it (it carries our alias);
    /// whether it did. A link of that name without the mark is left alone.
    pub(crate) async fn remove_interface(
        &self,
        name: &InterfaceName,
    ) -> Result<bool, ProgrammerError> {
        let mut state = self.state.lock().await;
        if let Some(d) = &mut state.desired {
            if d.overlay.as_ref().is_some_and(|o| &o.name == name) {
                d.overlay = None;
            }
            d.routes.retain(|r| r.device.as_ref() != Some(name));
        }
        state
            .intents
            .retain(|_, p| p.spec.device.as_ref() != Some(name));
        if state.watched_links.remove(name.as_str()).is_some() {
            state.overlay_index = None;
        }
        let Some(l) = read::get_link(&self.handle, name.as_str()).await? else {
            return Ok(false);
        };
        if !l.is_ours() {
            tracing::warn!(
                interface = %name,
                link = %l.describe(),
                "not deleting the interface: overlay did not create it (it lacks overlay's alias); delete it by hand if it should go"
            );
            return Ok(false);
        }
        self.count_writes(1);
        let deleted = match self.writer.send_one(Write::delete_link(l.index)).await {
            Ok(()) => true,
            // Gone since the look-up.
            Err(ENODEV) => false,
            Err(e) => return Err(errno_error(&format!("delete link {name}"), e)),
        };
        // The kernel took the link's routes along.
        state.all_links.remove(name.as_str());
        state.ours.retain(|_, r| r.oif != Some(l.index));
        for on_key in state.foreign.values_mut() {
            on_key.retain(|r| r.oif != Some(l.index));
        }
        state.foreign.retain(|_, on_key| !on_key.is_empty());
        state.direct.retain(|(_, o, _)| *o != Some(l.index));
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, kind: InfoKind, parent: Option<u32>, alias: Option<&str>) -> Link {
        Link {
            index,
            name: if index == 2 { "eth0" } else { "tmp0" }.into(),
            up: true,
            kind: Some(kind),
            parent,
            macvlan_mode: Some(netlink_packet_route::link::MacVlanMode::Vepa),
            alias: alias.map(str::to_owned),
        }
    }

    #[test]
    fn an_unmarked_macvlan_of_the_parent_is_taken_over() {
        let eth0 = link(2, InfoKind::Veth, None, None);
        assert_eq!(judge_link(None, &eth0), Ok(LinkFound::Missing));
        // As `ip link add tmp0 link eth0 type macvlan` leaves it: vepa, no
        // alias.
        let seed = link(5, InfoKind::MacVlan, Some(2), None);
        assert_eq!(
            judge_link(Some(&seed), &eth0),
            Ok(LinkFound::TakeOver(seed.clone()))
        );
        let ours = link(5, InfoKind::MacVlan, Some(2), Some(crate::OWNED_LINK_ALIAS));
        assert_eq!(
            judge_link(Some(&ours), &eth0),
            Ok(LinkFound::Ours(ours.clone()))
        );
    }

    #[test]
    fn other_links_under_the_name_are_refused() {
        let eth0 = link(2, InfoKind::Veth, None, None);
        let not_ours = |l: &Link| match judge_link(Some(l), &eth0) {
            Err(ProgrammerError::NotOurs { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        // A macvlan of another parent, another kind, somebody else's alias.
        let m = not_ours(&link(5, InfoKind::MacVlan, Some(9), None));
        assert!(
            m.contains("only a macvlan of eth0 without any alias"),
            "{m}"
        );
        not_ours(&link(5, InfoKind::Bridge, None, None));
        not_ours(&link(5, InfoKind::MacVlan, Some(2), Some("theirs")));
        // Marked as ours but not a macvlan: refused too.
        let marked_bridge = link(5, InfoKind::Bridge, None, Some(crate::OWNED_LINK_ALIAS));
        assert!(matches!(
            judge_link(Some(&marked_bridge), &eth0),
            Err(ProgrammerError::Kernel { .. })
        ));
    }

    #[test]
    fn only_a_wrong_parent_recreates_our_macvlan() {
        let eth0 = link(2, InfoKind::Veth, None, None);
        let vepa = link(5, InfoKind::MacVlan, Some(2), Some(crate::OWNED_LINK_ALIAS));
        assert!(!needs_recreate(&vepa, &eth0));
        let elsewhere = Link {
            parent: Some(9),
            ..vepa
        };
        assert!(needs_recreate(&elsewhere, &eth0));
    }
}
