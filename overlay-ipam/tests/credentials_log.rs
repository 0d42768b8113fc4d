#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Credentials written into the config file (`phpIPAM.username` and
//! `phpIPAM.password`, keys the original controller's config declared) are
//! accepted with a warning that they belong in the Secret, whether they are
//! used or another source wins; their values are never logged.
//!
//! Its own test binary with a single test, for the reason given in
//! `phpipam_logs.rs`: the subscriber must be the process's global default.

mod support;

use overlay_ipam::config::IpamConfig;
use overlay_ipam::phpipam::Credentials;
use support::Captured;

#[test]
fn credentials_in_the_config_file_are_used_last_with_a_warning() {
    let logs = Captured::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish(),
    )
    .unwrap();
    let cfg = IpamConfig::from_yaml(
        "overlay-ip-config.yaml",
        "phpIPAM:\n  url: https://phpipam\n  appID: iks\n  username: cfg-user-7\n  password: Cfg-Pass-7\n  subnetMap:\n    dal10: [7]\n",
    )
    .unwrap();
    let p = cfg.php_ipam.unwrap();

    let used = Credentials::resolve_with(&p, |_| None).unwrap();
    assert!(matches!(used, Credentials::User { ref username, .. } if username == "cfg-user-7"));
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("phpipam-secret"))
        .unwrap_or_else(|| panic!("no warning naming the Secret in:\n{text}"));
    assert!(line.contains("keys=username, password"), "{line}");
    assert!(line.contains("used=true"), "{line}");

    let env = |k: &str| match k {
        "PHPIPAM_USERNAME" => Some("env-user".to_owned()),
        "PHPIPAM_PASSWORD" => Some("Env-Pass-7".to_owned()),
        _ => None,
    };
    let ignored = Credentials::resolve_with(&p, env).unwrap();
    assert!(matches!(ignored, Credentials::User { ref username, .. } if username == "env-user"));
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("used=false") && l.contains("ignored")),
        "{text}"
    );
    assert!(
        !text.contains("Cfg-Pass-7") && !text.contains("Env-Pass-7"),
        "{text}"
    );
}
