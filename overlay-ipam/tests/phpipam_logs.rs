#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! What the phpIPAM backend logs never holds a password or a token.
//!
//! This is its own test binary with a single test on purpose: capturing
//! logs needs a subscriber, and tracing caches per call site, for the whole
//! process, whether any subscriber is interested. A per-thread subscriber
//! (`set_default`) in a binary whose other tests run in parallel without one
//! sees call sites already cached as "never", and loses their events at
//! random. Here the subscriber is the process's global default, installed
//! before any call site is hit, and nothing runs beside this test.

mod support;

use overlay_core::{IpamBackend, Owner, Zone};
use overlay_ipam::emulator::{Emulator, EmulatorConfig, PASSWORD, user_credentials as user};
use overlay_ipam::phpipam::{PhpIpamBackend, PhpIpamConfig};
use support::Captured;

#[test]
fn logs_never_contain_tokens_or_passwords() {
    let logs = Captured::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = rt.block_on(async {
        let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
        let cfg = PhpIpamConfig::new(emu.url(), "overlay").with_zone("big", [3]);
        let ipam = PhpIpamBackend::new(&cfg, "c1", user(PASSWORD)).unwrap();
        let zone = Zone::parse("zone", "big").unwrap();
        let r = ipam
            .reserve(&Owner::new("c1", "node-a"), &zone)
            .await
            .unwrap();
        emu.expire_tokens();
        ipam.reserve(&Owner::new("c1", "node-b"), &zone)
            .await
            .unwrap();
        ipam.release(&r, std::time::Duration::ZERO).await.unwrap();
        let bad = PhpIpamBackend::new(&cfg, "c1", user("Wrong-Secret-9")).unwrap();
        bad.reserve(&Owner::new("c1", "node-c"), &zone)
            .await
            .unwrap_err();
        // The token currently issued to the user (re-login returns it).
        let token: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/api/overlay/user/", emu.url()))
            .basic_auth("apiuser", Some("ApiUser-Test-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        token["data"]["token"].as_str().unwrap().to_string()
    });
    let text = logs.text();
    assert!(text.contains("logging in to phpIPAM"), "{text}");
    assert!(text.contains("reserved"), "{text}");
    assert!(text.contains("login refused"), "{text}");
    for secret in ["ApiUser-Test-1", "Wrong-Secret-9", token.as_str()] {
        assert!(
            !text.contains(secret),
            "{secret:?} leaked into logs:\n{text}"
        );
    }
}
