#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The phpIPAM backend against the emulator: conformance, the recorded
//! quirks, token handling and error classification.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use overlay_core::{IpamBackend, IpamError, Owner, Zone};
use overlay_ipam::conformance::{Fixture, Outcome, ZoneCapacity, run_all};
use overlay_ipam::emulator::{
    App, AppPermissions, AppSecurity, Emulator, EmulatorConfig, Fault, PASSWORD, SubnetSpec,
    user_credentials as user,
};
use overlay_ipam::phpipam::{
    ALLOCATION_RACE_ATTEMPTS, ALLOCATION_RACE_BACKOFF, CredentialSource, Credentials,
    PhpIpamBackend, PhpIpamConfig, Secret,
};

const CLUSTER: &str = "c1";

fn emu_config() -> EmulatorConfig {
    let mut c = EmulatorConfig::default();
    c.subnets.push(SubnetSpec {
        id: 4,
        network: Ipv4Addr::new(198, 51, 100, 8),
        mask: 29,
        description: "second small subnet".into(),
        gateway: Some(Ipv4Addr::new(198, 51, 100, 14)),
    });
    c.apps.push(App {
        id: "overlay_code".into(),
        permissions: AppPermissions::ReadWrite,
        security: AppSecurity::SslCode("app-code-0123456789".into()),
    });
    c
}

async fn emulator() -> Emulator {
    Emulator::start(emu_config()).await.unwrap()
}

fn config(emu: &Emulator, app: &str) -> PhpIpamConfig {
    PhpIpamConfig::new(emu.url(), app)
        .with_zone("gw", [1])
        .with_zone("big", [3])
        .with_zone("tiny", [2, 4])
}

fn backend(emu: &Emulator) -> PhpIpamBackend {
    PhpIpamBackend::new(&config(emu, "overlay"), CLUSTER, user(PASSWORD)).unwrap()
}

fn zone(z: &str) -> Zone {
    Zone::parse("zone", z).unwrap()
}

fn owner(n: &str) -> Owner {
    Owner::new(CLUSTER, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_conformance_against_the_emulator() {
    let emu = emulator().await;
    let fixture = Fixture::new(Arc::new(backend(&emu)), CLUSTER)
        .with_zone(ZoneCapacity::new("big", [254]).unwrap())
        .with_zone(ZoneCapacity::new("tiny", [6, 5]).unwrap());
    let report = run_all(&fixture).await;
    assert!(report.passed(), "{report}");
    assert!(
        report.checks.iter().all(|(_, o)| *o == Outcome::Passed),
        "{report}"
    );
    // Everything the suite made is gone again.
    assert!(emu.addresses(3).is_empty());
    assert!(emu.addresses(2).is_empty());
}

#[tokio::test]
async fn reservation_carries_prefix_and_gateway_and_marker() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    let r = ipam.reserve(&owner("node-a"), &zone("gw")).await.unwrap();
    assert_eq!(r.address.to_string(), "192.0.2.2/24");
    assert_eq!(r.gateway, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(r.subnet_id, "1");
    let stored = emu
        .addresses(1)
        .into_iter()
        .find(|a| a.ip == Ipv4Addr::new(192, 0, 2, 2))
        .unwrap();
    assert_eq!(stored.hostname.as_deref(), Some("node-a"));
    assert_eq!(
        stored.description.as_deref(),
        Some("overlay-owner:c1/node-a")
    );
    assert_eq!(r.handle, stored.id.to_string());
    // A subnet without a gateway address: no gateway.
    let r = ipam.reserve(&owner("node-b"), &zone("big")).await.unwrap();
    assert_eq!(r.address.to_string(), "203.0.113.1/24");
    assert_eq!(r.gateway, None);
}

#[tokio::test]
async fn a_new_reservation_costs_one_request_once_warm() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    ipam.reserve(&owner("warmup"), &zone("big")).await.unwrap();
    // login + owner index listing + subnet + first_free
    assert_eq!(emu.requests(), 4, "{:?}", emu.request_counts());
    emu.reset_counts();
    for i in 0..10 {
        ipam.reserve(&owner(&format!("n{i}")), &zone("big"))
            .await
            .unwrap();
    }
    assert_eq!(emu.requests(), 10, "{:?}", emu.request_counts());
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 10);
    // Asking again for a known owner costs nothing.
    ipam.reserve(&owner("n3"), &zone("big")).await.unwrap();
    assert_eq!(emu.requests(), 10);
}

#[tokio::test]
async fn a_restarted_controller_finds_its_address_again() {
    let emu = emulator().await;
    let first = backend(&emu)
        .reserve(&owner("node-a"), &zone("big"))
        .await
        .unwrap();
    emu.reset_counts();
    let again = backend(&emu)
        .reserve(&owner("node-a"), &zone("big"))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 0);
    assert_eq!(emu.addresses(3).len(), 1);
}

#[tokio::test]
async fn other_clusters_and_hand_made_addresses_are_left_alone() {
    let emu = emulator().await;
    // Same hostname, other cluster's marker; and a hand-made entry.
    emu.create_address(
        3,
        Ipv4Addr::new(203, 0, 113, 1),
        "node-a",
        "overlay-owner:other/node-a",
    )
    .unwrap();
    emu.create_address(3, Ipv4Addr::new(203, 0, 113, 2), "node-a", "made by hand")
        .unwrap();
    let ipam = backend(&emu);
    let r = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    assert_eq!(r.address.to_string(), "203.0.113.3/24");
    let listed = ipam.list().await.unwrap();
    assert_eq!(listed, vec![r.clone()]);
    // The hostname search now has three hits; ours is third and carries a
    // decimal ip (phpIPAM's object-cache bug). lookup still finds it.
    let found = ipam.lookup(&owner("node-a"), None).await.unwrap().unwrap();
    assert_eq!(found, r);
    ipam.release(&r, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(emu.addresses(3).len(), 2, "only our address is released");
    assert_eq!(ipam.lookup(&owner("node-a"), None).await.unwrap(), None);
}

#[tokio::test]
async fn release_of_an_address_deleted_elsewhere_succeeds() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    let r = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    assert!(emu.delete_address(r.handle.parse().unwrap()));
    ipam.release(&r, std::time::Duration::ZERO).await.unwrap();
    ipam.release(&r, std::time::Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn falls_through_full_subnets_and_names_them_when_all_are_full() {
    let emu = emulator().await;
    emu.set_subnet_full(2, true);
    let ipam = backend(&emu);
    let r = ipam.reserve(&owner("n0"), &zone("tiny")).await.unwrap();
    assert_eq!(r.subnet_id, "4");
    assert_eq!(r.gateway, Some("198.51.100.14".parse().unwrap()));
    for i in 1..5 {
        ipam.reserve(&owner(&format!("n{i}")), &zone("tiny"))
            .await
            .unwrap();
    }
    let err = ipam.reserve(&owner("n9"), &zone("tiny")).await.unwrap_err();
    assert!(
        matches!(&err, IpamError::Exhausted { zone, subnets } if zone == "tiny" && subnets == &["2", "4"]),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = ipam
        .reserve(&owner("n9"), &zone("nowhere"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "zone \"nowhere\" is not configured; configured zones: big, gw, tiny"
    );
}

#[tokio::test]
async fn a_full_subnet_is_tried_last_until_we_release_in_it() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    let mut first = Vec::new();
    for i in 0..7 {
        first.push(
            ipam.reserve(&owner(&format!("n{i}")), &zone("tiny"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(first[6].subnet_id, "4", "the seventh falls through");
    emu.reset_counts();
    let r = ipam.reserve(&owner("n7"), &zone("tiny")).await.unwrap();
    assert_eq!(r.subnet_id, "4");
    assert_eq!(
        emu.requests(),
        1,
        "the full subnet is not asked again: {:?}",
        emu.request_counts()
    );
    // Releasing in subnet 2 makes it first choice again.
    ipam.release(&first[0], std::time::Duration::ZERO)
        .await
        .unwrap();
    let r = ipam.reserve(&owner("n8"), &zone("tiny")).await.unwrap();
    assert_eq!(r.address, first[0].address);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_cost_one_shared_login() {
    let emu = emulator().await;
    let ipam = Arc::new(backend(&emu));
    ipam.reserve(&owner("warm"), &zone("big")).await.unwrap();
    assert_eq!(emu.count("POST /user/"), 1);
    emu.expire_tokens();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let ipam = ipam.clone();
        set.spawn(async move { ipam.reserve(&owner(&format!("n{i}")), &zone("big")).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(emu.count("POST /user/"), 2, "{:?}", emu.request_counts());
    // Same via the injected fault.
    emu.inject(Fault::ExpireToken, 1);
    ipam.reserve(&owner("late"), &zone("big")).await.unwrap();
    assert_eq!(emu.count("POST /user/"), 3);
}

#[tokio::test]
async fn a_wrong_password_is_reported_once_and_not_retried() {
    let emu = emulator().await;
    let ipam = PhpIpamBackend::new(&config(&emu, "overlay"), CLUSTER, user("wrong")).unwrap();
    for _ in 0..30 {
        let err = ipam.reserve(&owner("n"), &zone("big")).await.unwrap_err();
        assert!(matches!(err, IpamError::Auth { .. }), "{err:?}");
        assert!(!err.is_retryable());
        assert!(!err.to_string().contains("wrong"), "password leaked: {err}");
    }
    assert_eq!(emu.count("POST /user/"), 1, "one failed login, no loop");
    // The server never got to block us.
    let ok = backend(&emu);
    ok.reserve(&owner("n"), &zone("big")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_failed_login() {
    let emu = emulator().await;
    // Latency keeps the first login in flight while the others queue up.
    emu.set_latency(std::time::Duration::from_millis(50));
    emu.inject(Fault::ServerError, 1);
    let ipam = Arc::new(backend(&emu));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let ipam = ipam.clone();
        set.spawn(async move { ipam.reserve(&owner(&format!("n{i}")), &zone("big")).await });
    }
    let mut failures = 0;
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.unwrap() {
            assert!(e.is_retryable(), "{e:?}");
            failures += 1;
        }
    }
    // Callers that waited for the failed login share its error instead of
    // each logging in again (without sharing, only the first would fail).
    assert!(failures >= 10, "{failures} of 20 failed");
    assert!(emu.count("POST /user/") <= 2, "{:?}", emu.request_counts());
    // A later call logs in and works.
    ipam.reserve(&owner("later"), &zone("big")).await.unwrap();
}

#[tokio::test]
async fn blocked_ip_is_retryable() {
    let emu = emulator().await;
    for i in 0..11 {
        let bad = PhpIpamBackend::new(
            &config(&emu, "overlay"),
            CLUSTER,
            user(&format!("wrong{i}")),
        )
        .unwrap();
        bad.reserve(&owner("n"), &zone("big")).await.unwrap_err();
    }
    let err = backend(&emu)
        .reserve(&owner("n"), &zone("big"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("blocked"), "{err}");
    emu.clear_login_block();
    backend(&emu)
        .reserve(&owner("n"), &zone("big"))
        .await
        .unwrap();
}

#[tokio::test]
async fn read_only_app_is_a_permission_error_not_a_token_problem() {
    let emu = emulator().await;
    let ipam = PhpIpamBackend::new(&config(&emu, "overlay_ro"), CLUSTER, user(PASSWORD)).unwrap();
    let err = ipam.reserve(&owner("n"), &zone("big")).await.unwrap_err();
    assert!(matches!(err, IpamError::Permission { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(
        emu.count("POST /user/"),
        1,
        "no re-login for invalid permissions"
    );
}

#[tokio::test]
async fn unknown_app_and_subnet_are_permanent() {
    let emu = emulator().await;
    let ipam = PhpIpamBackend::new(&config(&emu, "nosuchapp"), CLUSTER, user(PASSWORD)).unwrap();
    let err = ipam.reserve(&owner("n"), &zone("big")).await.unwrap_err();
    assert!(matches!(err, IpamError::Rejected { .. }), "{err:?}");
    assert!(err.to_string().contains("appID"), "{err}");

    let cfg = PhpIpamConfig::new(emu.url(), "overlay").with_zone("z", [999]);
    let ipam = PhpIpamBackend::new(&cfg, CLUSTER, user(PASSWORD)).unwrap();
    let err = ipam.reserve(&owner("n"), &zone("z")).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("999"), "{err}");
}

#[tokio::test]
async fn outages_are_retryable_and_recover() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    ipam.reserve(&owner("warm"), &zone("big")).await.unwrap();
    emu.inject(Fault::ServerError, 1);
    let err = ipam.reserve(&owner("a"), &zone("big")).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    emu.inject(Fault::Refuse, 1);
    let err = ipam.reserve(&owner("a"), &zone("big")).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let r = ipam.reserve(&owner("a"), &zone("big")).await.unwrap();
    assert_eq!(ipam.reserve(&owner("a"), &zone("big")).await.unwrap(), r);

    // Nothing listening at all.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = PhpIpamConfig::new(format!("http://127.0.0.1:{port}"), "overlay").with_zone("z", [1]);
    let down = PhpIpamBackend::new(&cfg, CLUSTER, user(PASSWORD)).unwrap();
    let err = down.reserve(&owner("n"), &zone("z")).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_lost_allocation_race_is_tried_again_after_a_backoff() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    ipam.reserve(&owner("warm"), &zone("big")).await.unwrap();
    emu.reset_counts();
    // Both ways a server without the API lock reports a lost race.
    emu.inject(Fault::LostRace, 1);
    emu.inject(Fault::DuplicateKey, 1);
    let started = Instant::now();
    let r = ipam.reserve(&owner("a"), &zone("big")).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.address.to_string(), "203.0.113.2/24");
    assert_eq!(emu.count("POST /addresses/first_free/{}/"), 3);
    assert_eq!(emu.requests(), 3, "{:?}", emu.request_counts());
    let backoff = ALLOCATION_RACE_BACKOFF.delay(1) + ALLOCATION_RACE_BACKOFF.delay(2);
    assert!(
        waited >= backoff,
        "tried again after {waited:?}, before {backoff:?}"
    );
    assert_eq!(emu.addresses(3).len(), 2);
}

#[tokio::test]
async fn an_allocation_that_keeps_losing_races_is_reported_after_the_last_attempt() {
    let emu = emulator().await;
    let ipam = backend(&emu);
    ipam.reserve(&owner("warm"), &zone("big")).await.unwrap();
    emu.reset_counts();
    emu.inject(Fault::LostRace, ALLOCATION_RACE_ATTEMPTS as usize);
    let err = ipam.reserve(&owner("a"), &zone("big")).await.unwrap_err();
    assert!(
        err.to_string().contains("IP address already exists"),
        "{err}"
    );
    assert_eq!(
        emu.count("POST /addresses/first_free/{}/"),
        u64::from(ALLOCATION_RACE_ATTEMPTS)
    );
    // The races are over: the next reserve gets an address at once.
    let r = ipam.reserve(&owner("a"), &zone("big")).await.unwrap();
    assert_eq!(r.address.to_string(), "203.0.113.2/24");
}

#[tokio::test]
async fn a_failed_allocation_reply_does_not_leak_a_second_address() {
    // After a failed allocation call the client cannot know whether the
    // server allocated; it must reload the owner index before trusting it.
    let emu = emulator().await;
    let ipam = backend(&emu);
    ipam.reserve(&owner("warm"), &zone("big")).await.unwrap();
    let before = emu.addresses(3).len();
    // An address for node-x appears behind the client's back (as if an
    // earlier call's reply had been lost), then a call fails.
    emu.create_address(
        3,
        Ipv4Addr::new(203, 0, 113, 200),
        "node-x",
        "overlay-owner:c1/node-x",
    )
    .unwrap();
    emu.inject(Fault::Refuse, 1);
    ipam.reserve(&owner("node-y"), &zone("big"))
        .await
        .unwrap_err();
    let r = ipam.reserve(&owner("node-x"), &zone("big")).await.unwrap();
    assert_eq!(r.address.ip().to_string(), "203.0.113.200");
    assert_eq!(emu.addresses(3).len(), before + 1);
}

#[tokio::test]
async fn app_code_needs_no_login() {
    let emu = emulator().await;
    let ipam = PhpIpamBackend::new(
        &config(&emu, "overlay_code"),
        CLUSTER,
        Credentials::AppCode(Secret::new("app-code-0123456789")),
    )
    .unwrap();
    ipam.reserve(&owner("n"), &zone("big")).await.unwrap();
    assert_eq!(emu.count("POST /user/"), 0);
    let bad = PhpIpamBackend::new(
        &config(&emu, "overlay_code"),
        CLUSTER,
        Credentials::AppCode(Secret::new("nope")),
    )
    .unwrap();
    let err = bad.reserve(&owner("n2"), &zone("big")).await.unwrap_err();
    assert!(matches!(err, IpamError::Auth { .. }), "{err:?}");
}

#[test]
fn credentials_from_env_or_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("username"), "apiuser\n").unwrap();
    std::fs::write(dir.path().join("password"), "s3cret\n").unwrap();
    let mut cfg = PhpIpamConfig::new("http://phpipam", "iks").with_zone("dal10", [7]);
    // Nothing configured: the error names the variable.
    let err = Credentials::resolve_with(&cfg, |_| None).unwrap_err();
    assert_eq!(err.0, "PHPIPAM_USERNAME");
    // Environment.
    let env = |k: &str| match k {
        "PHPIPAM_USERNAME" => Some("envuser".to_string()),
        "PHPIPAM_PASSWORD" => Some("envpass".to_string()),
        _ => None,
    };
    assert_eq!(
        Credentials::resolve_with(&cfg, env).unwrap(),
        Credentials::User {
            username: "envuser".into(),
            password: Secret::new("envpass")
        }
    );
    // Files (as a mounted Secret): checked now, read again at every login
    // (see credential_files_are_read_again_at_every_login).
    cfg.username_file = Some(dir.path().join("username"));
    cfg.password_file = Some(dir.path().join("password"));
    assert_eq!(
        Credentials::resolve_with(&cfg, |_| None).unwrap(),
        Credentials::UserFrom {
            username: CredentialSource::File(dir.path().join("username")),
            password: CredentialSource::File(dir.path().join("password")),
        }
    );
    // Mixed: the user name from the environment, the password from a file.
    let only_user = |k: &str| (k == "PHPIPAM_USERNAME").then(|| "envuser".to_string());
    assert_eq!(
        Credentials::resolve_with(&cfg, only_user).unwrap(),
        Credentials::UserFrom {
            username: CredentialSource::Value(Secret::new("envuser")),
            password: CredentialSource::File(dir.path().join("password")),
        }
    );
    cfg.password_file = Some(dir.path().join("missing"));
    assert_eq!(
        Credentials::resolve_with(&cfg, |_| None).unwrap_err().0,
        "passwordFile"
    );
    // App code wins.
    let code = |k: &str| (k == "PHPIPAM_APP_CODE").then(|| "code".to_string());
    assert_eq!(
        Credentials::resolve_with(&cfg, code).unwrap(),
        Credentials::AppCode(Secret::new("code"))
    );
}

/// The original controller's Secret `phpipam-secret` (keys `username`,
/// `password`, mounted as a directory) and the `username`/`password` keys
/// its config declared, beside today's sources, in their order.
#[test]
fn credentials_from_the_original_secret_or_the_config_file_come_last() {
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("username"), "olduser\n").unwrap();
    std::fs::write(secret.path().join("password"), "oldpass").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let cfg = PhpIpamConfig::new("http://phpipam", "iks").with_zone("dal10", [7]);
    let file = |name: &str| CredentialSource::File(secret.path().join(name));
    // The mounted Secret alone: read from its files (again at every login).
    assert_eq!(
        Credentials::resolve_from(&cfg, |_| None, Some(secret.path())).unwrap(),
        Credentials::UserFrom {
            username: file("username"),
            password: file("password"),
        }
    );
    // Today's environment (Secret phpipam-credentials) wins.
    let env = |k: &str| match k {
        "PHPIPAM_USERNAME" => Some("envuser".to_string()),
        "PHPIPAM_PASSWORD" => Some("envpass".to_string()),
        _ => None,
    };
    assert_eq!(
        Credentials::resolve_from(&cfg, env, Some(secret.path())).unwrap(),
        Credentials::User {
            username: "envuser".into(),
            password: Secret::new("envpass")
        }
    );
    // An optional Secret volume whose Secret does not exist is an empty
    // directory: nothing found, and the error names every source.
    let err = Credentials::resolve_from(&cfg, |_| None, Some(empty.path())).unwrap_err();
    assert_eq!(err.0, "PHPIPAM_USERNAME");
    assert!(err.1.contains("phpipam-secret"), "{}", err.1);
    assert!(
        err.1.contains(&empty.path().display().to_string()),
        "{}",
        err.1
    );

    // The config file's own keys: used only when nothing else gives them.
    let inline = overlay_ipam::config::IpamConfig::from_yaml(
        "overlay-ip-config.yaml",
        "phpIPAM:\n  url: https://phpipam\n  appID: iks\n  username: cfguser\n  password: cfgpass\n  subnetMap:\n    dal10: [7]\n",
    )
    .unwrap()
    .php_ipam
    .unwrap();
    assert_eq!(
        Credentials::resolve_from(&inline, |_| None, Some(empty.path())).unwrap(),
        Credentials::User {
            username: "cfguser".into(),
            password: Secret::new("cfgpass")
        }
    );
    assert_eq!(
        Credentials::resolve_from(&inline, |_| None, Some(secret.path())).unwrap(),
        Credentials::UserFrom {
            username: file("username"),
            password: file("password"),
        }
    );
    assert_eq!(
        Credentials::resolve_from(&inline, env, None).unwrap(),
        Credentials::User {
            username: "envuser".into(),
            password: Secret::new("envpass")
        }
    );
    // usernameFile/passwordFile in the config come before the mounted
    // Secret.
    let mut with_files = cfg.clone();
    with_files.username_file = Some(empty.path().join("missing"));
    assert_eq!(
        Credentials::resolve_from(&with_files, |_| None, Some(secret.path()))
            .unwrap_err()
            .0,
        "usernameFile"
    );
    // The password never shows in the config's Debug output.
    assert!(!format!("{inline:?}").contains("cfgpass"));
}

#[tokio::test]
async fn release_without_a_handle_finds_the_address_by_owner() {
    // A reservation rebuilt from a NodeOverlayIp status has no handle.
    let emu = emulator().await;
    let ipam = backend(&emu);
    let mut r = ipam.reserve(&owner("node-a"), &zone("big")).await.unwrap();
    ipam.reserve(&owner("node-b"), &zone("big")).await.unwrap();
    r.handle.clear();
    ipam.release(&r, std::time::Duration::ZERO).await.unwrap();
    let left: Vec<_> = emu
        .addresses(3)
        .into_iter()
        .map(|a| a.hostname.unwrap())
        .collect();
    assert_eq!(left, ["node-b"]);
}

#[tokio::test]
async fn a_slow_server_times_out_as_retryable() {
    let emu = emulator().await;
    let mut cfg = config(&emu, "overlay");
    cfg.timeout_seconds = 1;
    let ipam = PhpIpamBackend::new(&cfg, CLUSTER, user(PASSWORD)).unwrap();
    emu.inject(Fault::Slow(std::time::Duration::from_secs(5)), 1);
    let err = ipam.reserve(&owner("n"), &zone("big")).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[test]
fn tls_options_are_checked_when_building() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let mut cfg =
        PhpIpamConfig::new("https://phpipam.example.invalid", "iks").with_zone("dal10", [7]);
    cfg.ca_file = Some(not_pem);
    let err = PhpIpamBackend::new(&cfg, CLUSTER, user("x")).unwrap_err();
    assert!(err.to_string().contains("phpIPAM.caFile"), "{err}");
    cfg.ca_file = Some(dir.path().join("missing.pem"));
    let err = PhpIpamBackend::new(&cfg, CLUSTER, user("x")).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
    cfg.ca_file = None;
    cfg.insecure_skip_tls_verify = true;
    PhpIpamBackend::new(&cfg, CLUSTER, user("x")).unwrap();
}
