#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! A phpIPAM IP block is logged once, as an error, however many calls run
//! into it.
//!
//! Its own test binary with a single test: the subscriber is the default
//! of this test's thread only (no global subscriber), and everything (the
//! emulator included) runs on a current-thread runtime on that thread, so
//! no other test can have cached the call sites as uninteresting.

mod support;

use std::time::Duration;

use overlay_core::{IpamBackend, Owner, Zone};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, PASSWORD, user_credentials as user};
use overlay_ipam::phpipam::{PhpIpamBackend, PhpIpamConfig};
use support::Captured;

#[test]
fn one_error_line_per_block() {
    let logs = Captured::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let emu = Emulator::start(EmulatorConfig {
            login_block: Duration::from_secs(1),
            ..EmulatorConfig::default()
        })
        .await
        .unwrap();
        let cfg = PhpIpamConfig::new(emu.url(), "overlay").with_zone("big", [3]);
        let ipam = PhpIpamBackend::new(&cfg, "c1", user(PASSWORD)).unwrap();
        let zone = Zone::parse("zone", "big").unwrap();
        let http = reqwest::Client::new();
        for _ in 0..11 {
            http.post(format!("{}/api/overlay/user/", emu.url()))
                .basic_auth("apiuser", Some("wrong-password"))
                .send()
                .await
                .unwrap();
        }
        // The first call hits the block (at its login), the others fail
        // before sending anything.
        for i in 0..20 {
            ipam.reserve(&Owner::new("c1", format!("n{i}")), &zone)
                .await
                .unwrap_err();
        }
        let mut blocked = ipam.blocked();
        tokio::time::timeout(Duration::from_secs(5), blocked.wait_for(Option::is_none))
            .await
            .unwrap()
            .unwrap();
        ipam.reserve(&Owner::new("c1", "after"), &zone)
            .await
            .unwrap();
    });
    let text = logs.text();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("blocked this client's IP address"))
        .collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("until="), "{}", errors[0]);
    assert!(
        errors[0].contains("check the credentials of every client"),
        "{}",
        errors[0]
    );
    // The failed calls are not logged one by one either.
    assert!(
        !text
            .lines()
            .any(|l| l.contains("WARN") && l.contains("login failed")),
        "{text}"
    );
    assert!(text.contains("IP block is over"), "{text}");
}
