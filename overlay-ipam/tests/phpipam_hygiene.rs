#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Client hygiene of the phpIPAM backend, against the emulator: the
//! login-failure IP block, redirects, and rotated credential files.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use overlay_core::{IpamBackend, IpamError, Owner, Zone};
use overlay_ipam::emulator::{
    App, AppPermissions, AppSecurity, Emulator, EmulatorConfig, PASSWORD, user_credentials as user,
};
use overlay_ipam::phpipam::{Credentials, PhpIpamBackend, PhpIpamConfig, Secret};

const CLUSTER: &str = "c1";

fn config(url: &str) -> PhpIpamConfig {
    PhpIpamConfig::new(url, "overlay").with_zone("big", [3])
}

fn zone() -> Zone {
    Zone::parse("zone", "big").unwrap()
}

fn owner(n: &str) -> Owner {
    Owner::new(CLUSTER, n)
}

/// Another client behind the same address fails `n` logins.
async fn fail_logins(emu: &Emulator, n: usize) {
    let http = reqwest::Client::new();
    for _ in 0..n {
        http.post(format!("{}/api/overlay/user/", emu.url()))
            .basic_auth("apiuser", Some("wrong-password"))
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_ip_block_stops_every_request_and_login_until_it_ends() {
    let emu = Emulator::start(EmulatorConfig {
        login_block: Duration::from_secs(2),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let ipam = PhpIpamBackend::new(&config(&emu.url()), CLUSTER, user(PASSWORD)).unwrap();
    ipam.reserve(&owner("warm"), &zone()).await.unwrap();
    let mut blocked = ipam.blocked();
    assert!(blocked.borrow().is_none());
    assert_eq!(ipam.blocks(), 0);

    fail_logins(&emu, 11).await;
    emu.reset_counts();
    let before = SystemTime::now();
    let err = ipam.reserve(&owner("a"), &zone()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("blocked"), "{err}");
    assert_eq!(emu.requests(), 1, "{:?}", emu.request_counts());
    assert_eq!(ipam.blocks(), 1);
    let b = blocked.borrow_and_update().clone().unwrap();
    assert!(b.message.contains("blocked for 2 seconds"), "{b:?}");
    let ahead = b.until.duration_since(before).unwrap();
    assert!(
        ahead >= Duration::from_secs(1) && ahead <= Duration::from_secs(4),
        "{ahead:?}"
    );

    // During the block nothing reaches the server, logins included.
    emu.expire_tokens();
    for i in 0..10 {
        let err = ipam
            .reserve(&owner(&format!("n{i}")), &zone())
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("not sent") && text.contains("blocked this client's IP address until"),
            "{text}"
        );
    }
    ipam.lookup(&owner("warm"), None).await.unwrap_err();
    ipam.lookup_all(&owner("warm")).await.unwrap_err();
    ipam.list().await.unwrap_err();
    assert_eq!(emu.requests(), 1, "{:?}", emu.request_counts());
    assert_eq!(ipam.blocks(), 1, "one block, however many calls");

    // A backend without a token: its one login runs into the block, then
    // it stays quiet too.
    let fresh = PhpIpamBackend::new(&config(&emu.url()), CLUSTER, user(PASSWORD)).unwrap();
    for _ in 0..10 {
        fresh.reserve(&owner("f"), &zone()).await.unwrap_err();
    }
    assert_eq!(emu.count("POST /user/"), 1, "{:?}", emu.request_counts());
    assert_eq!(fresh.blocks(), 1);

    // The block ends: the watch says so and requests resume.
    tokio::time::timeout(Duration::from_secs(5), blocked.wait_for(Option::is_none))
        .await
        .unwrap()
        .unwrap();
    ipam.reserve(&owner("a"), &zone()).await.unwrap();
    let mut fresh_blocked = fresh.blocked();
    tokio::time::timeout(
        Duration::from_secs(5),
        fresh_blocked.wait_for(Option::is_none),
    )
    .await
    .unwrap()
    .unwrap();
    fresh.reserve(&owner("f"), &zone()).await.unwrap();
    assert_eq!(ipam.blocks(), 1);
}

#[tokio::test]
async fn the_block_time_is_read_from_the_message() {
    use overlay_ipam::phpipam::{DEFAULT_BLOCK, block_duration};
    assert_eq!(
        block_duration(
            "Your IP has been blocked for 5 minutes because of excessive login failures"
        ),
        Duration::from_secs(300)
    );
    assert_eq!(
        block_duration("Your IP has been blocked for 1 minute because of x"),
        Duration::from_secs(60)
    );
    assert_eq!(
        block_duration("Your IP has been blocked for 30 seconds because of x"),
        Duration::from_secs(30)
    );
    assert_eq!(block_duration("Your IP has been blocked"), DEFAULT_BLOCK);
    assert_eq!(block_duration("blocked for many minutes"), DEFAULT_BLOCK);
}

/// Starts a server on 127.0.0.1:0; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn redirects_are_not_followed_and_the_token_stays_home() {
    // The second host records every request it gets.
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let log = seen.clone();
    let other = serve(Router::new().fallback(move |headers: HeaderMap| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(headers);
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"code":200,"success":true,"data":{"token":"stolen-token-000000000"},"time":0}"#,
            )
        }
    }))
    .await;
    let target = other.clone();
    let front = serve(Router::new().fallback(move |uri: Uri| {
        let to = format!("{target}{uri}");
        async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response() }
    }))
    .await;
    for creds in [
        Credentials::AppCode(Secret::new("app-code-0123456789")),
        user(PASSWORD),
    ] {
        let ipam = PhpIpamBackend::new(&config(&front), CLUSTER, creds).unwrap();
        let err = ipam.reserve(&owner("n"), &zone()).await.unwrap_err();
        assert!(matches!(err, IpamError::Rejected { .. }), "{err:?}");
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(text.contains("HTTP 307"), "{text}");
        assert!(text.contains(&format!("{other}/api/overlay/")), "{text}");
        assert!(text.contains("set phpIPAM.url"), "{text}");
        assert!(text.contains(&format!("(here probably {other})")), "{text}");
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|h| !h.contains_key("token") && !h.contains_key(header::AUTHORIZATION)),
        "credentials reached the other host: {seen:?}"
    );
    assert!(
        seen.is_empty(),
        "{} requests reached the other host",
        seen.len()
    );
}

#[tokio::test]
async fn a_rotated_password_file_is_used_without_a_restart() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (user_file, pass_file) = (dir.path().join("username"), dir.path().join("password"));
    std::fs::write(&user_file, "apiuser\n").unwrap();
    std::fs::write(&pass_file, "ApiUser-Test-1\n").unwrap();
    let mut cfg = config(&emu.url());
    cfg.username_file = Some(user_file);
    cfg.password_file = Some(pass_file.clone());
    let creds = Credentials::resolve_with(&cfg, |_| None).unwrap();
    let ipam = PhpIpamBackend::new(&cfg, CLUSTER, creds).unwrap();
    ipam.reserve(&owner("n1"), &zone()).await.unwrap();
    assert_eq!(emu.count("POST /user/"), 1);

    // The Secret and the server change together; the old token ends.
    emu.set_password("apiuser", "Rotated-Secret-2");
    std::fs::write(&pass_file, "Rotated-Secret-2\n").unwrap();
    emu.expire_tokens();
    ipam.reserve(&owner("n2"), &zone()).await.unwrap();
    assert_eq!(emu.count("POST /user/"), 2);

    // The server first, the file later: the refusal is remembered (no
    // login storm) until the file changes, then forgotten at once.
    emu.set_password("apiuser", "Rotated-Secret-3");
    emu.expire_tokens();
    for _ in 0..5 {
        let err = ipam.reserve(&owner("n3"), &zone()).await.unwrap_err();
        assert!(matches!(err, IpamError::Auth { .. }), "{err:?}");
    }
    assert_eq!(emu.count("POST /user/"), 3, "{:?}", emu.request_counts());
    std::fs::write(&pass_file, "Rotated-Secret-3\n").unwrap();
    ipam.reserve(&owner("n3"), &zone()).await.unwrap();
    assert_eq!(emu.count("POST /user/"), 4);
}

#[tokio::test]
async fn a_rotated_app_code_file_is_used_without_a_restart() {
    let mut ec = EmulatorConfig::default();
    ec.apps.push(App {
        id: "overlay_code".into(),
        permissions: AppPermissions::ReadWrite,
        security: AppSecurity::SslCode("app-code-new-0000000000".into()),
    });
    let emu = Emulator::start(ec).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let code_file = dir.path().join("appcode");
    std::fs::write(&code_file, "app-code-old-0000000000\n").unwrap();
    let mut cfg = PhpIpamConfig::new(emu.url(), "overlay_code").with_zone("big", [3]);
    cfg.app_code_file = Some(code_file.clone());
    let creds = Credentials::resolve_with(&cfg, |_| None).unwrap();
    assert_eq!(creds, Credentials::AppCodeFile(code_file.clone()));
    let ipam = PhpIpamBackend::new(&cfg, CLUSTER, creds).unwrap();
    let err = ipam.reserve(&owner("n"), &zone()).await.unwrap_err();
    assert!(matches!(err, IpamError::Auth { .. }), "{err:?}");
    std::fs::write(&code_file, "app-code-new-0000000000\n").unwrap();
    ipam.reserve(&owner("n"), &zone()).await.unwrap();
    assert_eq!(emu.count("POST /user/"), 0);
}
