//! The test bed against the real kernel: namespaces, a bridge, a ping across
//! it, and nothing left behind afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use overlay_testbed::{AddressPolicy, Netns, own_namespaces, privileged};

/// Two hosts on a bridge in a third namespace.
fn two_hosts() -> (Netns, Netns, Netns) {
    let sw = Netns::new("sw").unwrap();
    sw.add_bridge("br0").unwrap();
    let a = Netns::new("a").unwrap();
    let b = Netns::new("b").unwrap();
    for (h, port) in [(&a, "pa"), (&b, "pb")] {
        h.add_veth("eth0", &sw, port).unwrap();
        sw.set_master(port, "br0").unwrap();
    }
    a.add_addr("eth0", "192.0.2.10/24").unwrap();
    b.add_addr("eth0", "192.0.2.11/24").unwrap();
    (sw, a, b)
}

#[test]
fn ping_across_a_bridge_then_nothing_is_left() {
    if !privileged("ping_across_a_bridge_then_nothing_is_left") {
        return;
    }
    let names;
    {
        let (sw, a, b) = two_hosts();
        names = vec![
            sw.name().to_owned(),
            a.name().to_owned(),
            b.name().to_owned(),
        ];
        assert!(a.ping("192.0.2.11", None).unwrap(), "a cannot reach b");
        assert!(b.ping("192.0.2.10", None).unwrap(), "b cannot reach a");
        // A route added through the bed is visible in the namespace.
        a.add_route("198.51.100.0/24", Some("192.0.2.11"), None)
            .unwrap();
        let routes = a.routes(&[]).unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r.starts_with("198.51.100.0/24 via 192.0.2.11")),
            "{routes:?}"
        );
        assert!(a.links().unwrap().contains(&"eth0".to_owned()));
    }
    let left = own_namespaces();
    for n in names {
        assert!(!left.contains(&n), "namespace {n} left behind");
    }
}

#[test]
fn a_panicking_test_still_removes_its_namespaces() {
    if !privileged("a_panicking_test_still_removes_its_namespaces") {
        return;
    }
    let name = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let ns = Netns::new("panics").unwrap();
        *name.lock().unwrap() = ns.name().to_owned();
        panic!("test failure inside the namespace's scope");
    });
    assert!(r.is_err());
    let n = name.lock().unwrap().clone();
    assert!(!n.is_empty());
    assert!(!own_namespaces().contains(&n), "{n} survived the panic");
}

#[test]
fn forbidden_addresses_are_refused_unless_opted_in() {
    if !privileged("forbidden_addresses_are_refused_unless_opted_in") {
        return;
    }
    let sw = Netns::new("pol").unwrap();
    sw.add_bridge("br0").unwrap();
    let err = sw.add_addr("br0", "10.1.2.3/24").unwrap_err();
    assert!(
        err.to_string().contains("outside the documentation"),
        "{err}"
    );
    let any = Netns::with_policy("any", AddressPolicy::Any).unwrap();
    any.add_bridge("br0").unwrap();
    any.add_addr("br0", "10.1.2.3/24").unwrap();
}

#[test]
fn a_closure_runs_inside_the_namespace() {
    if !privileged("a_closure_runs_inside_the_namespace") {
        return;
    }
    let ns = Netns::new("run").unwrap();
    ns.add_bridge("brx").unwrap();
    // /sys/class/net is per mount, not per netns; ask the kernel through a
    // socket bound in the namespace instead: if_nametoindex resolves only
    // links of the calling thread's namespace.
    let inside = ns
        .run(|| nix::net::if_::if_nametoindex("brx").is_ok())
        .unwrap();
    let outside = nix::net::if_::if_nametoindex("brx").is_ok();
    assert!(inside, "brx not visible inside");
    assert!(!outside, "brx leaked to the host namespace");
}
