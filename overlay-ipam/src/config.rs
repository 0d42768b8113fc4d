//! The controller's IPAM configuration file, `overlay-ip-config.yaml`, and
//! building the backend it selects.
//!
//! The original file keeps working unchanged:
//!
//! ```yaml
//! phpIPAM:
//!   url: http://phpipam
//!   appID: iks
//!   subnetMap:
//!     dal10: [7]
//! ```
//!
//! Embedded pools instead of phpIPAM (in memory, or persisted with
//! `stateFile`):
//!
//! ```yaml
//! clusterId: lab
//! embedded:
//!   stateFile: /var/lib/overlay/ipam.json   # optional
//!   zones:
//!     dal10:
//!       - cidr: 192.0.2.0/24
//!         gateway: 192.0.2.1                 # optional, default first host
//!         reserved: [192.0.2.10]             # optional
//! ```
//!
//! Kubernetes-native pools (`OverlayIPPool` objects; see
//! [`crate::kubernetes`]), the default of the shipped manifests:
//!
//! ```yaml
//! kubernetes: {}
//! ```
//!
//! `clusterId` goes into the owner marker of every reservation. Leave it
//! out and the controller derives one from the cluster (the UID of the
//! `kube-system` Namespace), unique to this cluster; set it to keep the id
//! across a cluster rebuild. Two clusters sharing one phpIPAM must never
//! share an id: the orphan collection releases this id's reservations of
//! nodes the cluster does not have.
//!
//! Address safety knobs (durations such as `90s`, `10m`, `1h`):
//!
//! ```yaml
//! orphanGracePeriod: 10m   # a reservation must be seen orphaned twice, this far apart
//! holdDown: 5m             # a released address is held back from other nodes this long
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use overlay_core::ippool::PoolStore;
use overlay_core::{IpamBackend, IpamError};
use serde::{Deserialize, Serialize};

use crate::file::FileBackend;
use crate::kubernetes::KubernetesBackend;
use crate::memory::MemoryBackend;
use crate::phpipam::{Credentials, PhpIpamBackend, PhpIpamConfig};
use crate::pools::{PoolConfig, PoolsConfig};

/// The field named when no backend, or more than one, is configured.
const BACKENDS: &str = "phpIPAM/embedded/kubernetes";

/// Default of `orphanGracePeriod`.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(600);
/// Default of `holdDown`.
pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(300);

/// The default name of the configuration file.
pub const DEFAULT_FILE: &str = "overlay-ip-config.yaml";

/// Where the controller reads its configuration by default (the shipped
/// Deployment mounts ConfigMap `overlay-ip-config` at `/etc/overlay`).
pub const DEFAULT_PATH: &str = "/etc/overlay/overlay-ip-config.yaml";

/// Where iks-overlay-ip-controller read its configuration: ConfigMap
/// `overlay-ip-controller-config` mounted at `/opt/controller-config`. The
/// controller reads it when [`DEFAULT_PATH`] does not exist.
pub const ORIGINAL_PATH: &str = "/opt/controller-config/overlay-ip-config.yaml";

/// The first of `candidates` that is a file (a ConfigMap volume that is
/// optional and absent is an empty directory). The error lists them all.
pub fn locate(candidates: &[&Path]) -> Result<PathBuf, ConfigError> {
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.to_path_buf());
    }
    let all: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(ConfigError {
        file: all.join(", "),
        field: "(file)".into(),
        problem: format!(
            "none of these exists: {}; mount the ConfigMap overlay-ip-config (key {DEFAULT_FILE}) at {}, or the original overlay-ip-controller-config at {}, or give --config",
            all.join(" or "),
            parent_dir(DEFAULT_PATH),
            parent_dir(ORIGINAL_PATH),
        ),
    })
}

fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(dir, _)| dir)
}

/// A problem with the configuration: which file, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {problem}")]
pub struct ConfigError {
    /// The file (or `<inline>`).
    pub file: String,
    /// Dotted path of the field (`phpIPAM.subnetMap.dal10[0]`), or `(file)`
    /// when the file as a whole is unreadable.
    pub field: String,
    /// What is wrong and, where possible, what to do.
    pub problem: String,
}

/// The `embedded:` section: in-memory pools, or file-backed ones with
/// `stateFile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Where to persist reservations; absent = in memory only.
    #[serde(rename = "stateFile", default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// Zone → pools, tried in order.
    pub zones: BTreeMap<String, Vec<PoolConfig>>,
}

impl EmbeddedConfig {
    /// The pools as a [`PoolsConfig`].
    pub fn pools(&self) -> PoolsConfig {
        PoolsConfig {
            zones: self.zones.clone(),
        }
    }
}

/// The `kubernetes:` section: pools are `OverlayIPPool` objects of the
/// cluster, so there is nothing to configure here (`kubernetes: {}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {}

/// The controller's IPAM configuration, `overlay-ip-config.yaml`: cluster id,
/// orphan grace period, hold-down, and exactly one of `phpIPAM`,
/// `embedded` and `kubernetes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    /// This cluster's id, written into owner markers; `None`: derived from
    /// the cluster by the controller.
    #[serde(rename = "clusterId", default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// How long a reservation must be seen orphaned (in two passes)
    /// before it is released (`10m` when unset).
    #[serde(
        rename = "orphanGracePeriod",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub orphan_grace_period: Option<String>,
    /// How long a released address is held back from other nodes (`5m`
    /// when unset; `0s` turns the hold-down off).
    #[serde(rename = "holdDown", default, skip_serializing_if = "Option::is_none")]
    pub hold_down: Option<String>,
    /// phpIPAM backend.
    #[serde(rename = "phpIPAM", default, skip_serializing_if = "Option::is_none")]
    pub php_ipam: Option<PhpIpamConfig>,
    /// Embedded pools backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedConfig>,
    /// Kubernetes-native pools backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    /// Where the configuration came from (for error messages).
    #[serde(skip)]
    pub source: String,
}

/// Splits serde_yaml's "path: message" into field and problem.
fn split_yaml_error(msg: &str) -> (String, String) {
    if let Some((path, rest)) = msg.split_once(": ")
        && !path.is_empty()
        && !path.contains(' ')
    {
        return (path.to_string(), rest.to_string());
    }
    ("(file)".to_string(), msg.to_string())
}

impl IpamConfig {
    /// A configuration for the phpIPAM backend.
    pub fn php_ipam(cluster_id: impl Into<String>, config: PhpIpamConfig) -> Self {
        Self {
            cluster_id: Some(cluster_id.into()),
            orphan_grace_period: None,
            hold_down: None,
            php_ipam: Some(config),
            embedded: None,
            kubernetes: None,
            source: "<inline>".into(),
        }
    }

    /// A configuration for embedded pools (file-backed with `state_file`).
    pub fn embedded(
        cluster_id: impl Into<String>,
        pools: PoolsConfig,
        state_file: Option<PathBuf>,
    ) -> Self {
        Self {
            cluster_id: Some(cluster_id.into()),
            orphan_grace_period: None,
            hold_down: None,
            php_ipam: None,
            embedded: Some(EmbeddedConfig {
                state_file,
                zones: pools.zones,
            }),
            kubernetes: None,
            source: "<inline>".into(),
        }
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, ConfigError> {
        let mut cfg: IpamConfig = serde_yaml::from_str(text).map_err(|e| {
            let (field, problem) = split_yaml_error(&e.to_string());
            ConfigError {
                file: file.to_string(),
                field,
                problem,
            }
        })?;
        cfg.source = file.to_string();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        Self::from_yaml(&file, &text)
    }

    /// `orphanGracePeriod`, or its default.
    pub fn orphan_grace(&self) -> Result<Duration, ConfigError> {
        parse_duration(self.orphan_grace_period.as_deref(), DEFAULT_ORPHAN_GRACE)
            .map_err(|p| self.err("orphanGracePeriod", p))
    }

    /// `holdDown`, or its default.
    pub fn hold_down(&self) -> Result<Duration, ConfigError> {
        parse_duration(self.hold_down.as_deref(), DEFAULT_HOLD_DOWN)
            .map_err(|p| self.err("holdDown", p))
    }

    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Checks the configuration without touching the network or files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.cluster_id {
            validate_cluster_id(c).map_err(|p| self.err("clusterId", p))?;
        }
        self.orphan_grace()?;
        self.hold_down()?;
        let chosen = [
            self.php_ipam.is_some(),
            self.embedded.is_some(),
            self.kubernetes.is_some(),
        ];
        match chosen.iter().filter(|c| **c).count() {
            0 => {
                return Err(self.err(
                    BACKENDS,
                    "no IPAM backend configured; add a phpIPAM:, an embedded: or a kubernetes: {} section",
                ));
            }
            1 => {}
            _ => {
                return Err(self.err(
                    BACKENDS,
                    "more than one is set; configure exactly one IPAM backend",
                ));
            }
        }
        if let Some(p) = &self.php_ipam {
            p.validate()
                .map_err(|(field, problem)| self.err(format!("phpIPAM.{field}"), problem))?;
        }
        if let Some(e) = &self.embedded {
            e.pools()
                .validate()
                .map_err(|pe| self.err(format!("embedded.{}", pe.field), pe.problem))?;
        }
        Ok(())
    }

    /// Builds the configured backend. phpIPAM credentials come from the
    /// environment or the files the section names (see
    /// [`Credentials::resolve`]).
    pub fn build(&self) -> Result<Arc<dyn IpamBackend>, ConfigError> {
        self.build_with(None)
    }

    fn ipam_error(&self, section: &str, e: IpamError) -> ConfigError {
        match e {
            IpamError::Invalid(p) => {
                let field = if p.field.starts_with(section) || p.field == "clusterId" {
                    p.field
                } else {
                    format!("{section}.{}", p.field)
                };
                self.err(field, p.reason)
            }
            other => self.err(section, other.to_string()),
        }
    }

    /// Builds the phpIPAM backend as its concrete type, for what only it
    /// offers (its IP-block watch, [`PhpIpamBackend::blocked`], for an
    /// Event and a metric); `None` when the file configures embedded pools.
    /// `credentials` (when given) are used instead of the environment. The
    /// `Arc` coerces to `Arc<dyn IpamBackend>`.
    pub fn build_phpipam(
        &self,
        credentials: Option<Credentials>,
    ) -> Result<Option<Arc<PhpIpamBackend>>, ConfigError> {
        self.validate()?;
        let Some(p) = &self.php_ipam else {
            return Ok(None);
        };
        let Some(cluster) = self.cluster_id.as_deref() else {
            return Err(self.err(
                "clusterId",
                "not set, and not derived yet: the controller derives it from the cluster (kube-system Namespace UID) before building the backend; tools without cluster access need clusterId or --cluster-id",
            ));
        };
        let creds = match credentials {
            Some(c) => c,
            None => Credentials::resolve(p)
                .map_err(|(field, problem)| self.err(format!("phpIPAM.{field}"), problem))?,
        };
        let backend =
            PhpIpamBackend::new(p, cluster, creds).map_err(|e| self.ipam_error("phpIPAM", e))?;
        Ok(Some(Arc::new(backend)))
    }

    /// Builds the configured backend; `credentials` (when given) are used
    /// for phpIPAM instead of the environment.
    pub fn build_with(
        &self,
        credentials: Option<Credentials>,
    ) -> Result<Arc<dyn IpamBackend>, ConfigError> {
        self.validate()?;
        if let Some(backend) = self.build_phpipam(credentials)? {
            return Ok(backend);
        }
        let from_ipam = |section: &str, e: IpamError| self.ipam_error(section, e);
        if let Some(e) = &self.embedded {
            let pools = e.pools();
            return match &e.state_file {
                Some(path) => Ok(Arc::new(
                    FileBackend::open(path, &pools)
                        .map_err(|err| self.err("embedded.stateFile", err.to_string()))?,
                )),
                None => Ok(Arc::new(
                    MemoryBackend::new(&pools).map_err(|err| from_ipam("embedded", err))?,
                )),
            };
        }
        Err(self.err(
            "kubernetes",
            "Kubernetes-native pools need the cluster: build them with build_kubernetes and a PoolStore (the controller does)",
        ))
    }

    /// Builds the Kubernetes-native backend over `store` (the controller
    /// passes `overlay_core::k8s::KubePoolStore`); `None` when the file
    /// configures another backend. Starts the backend's watch in the
    /// current tokio runtime.
    pub fn build_kubernetes(
        &self,
        store: Arc<dyn PoolStore>,
    ) -> Result<Option<Arc<KubernetesBackend>>, ConfigError> {
        self.validate()?;
        if self.kubernetes.is_none() {
            return Ok(None);
        }
        let Some(cluster) = self.cluster_id.as_deref() else {
            return Err(self.err("clusterId", "not set, and not derived yet: the controller derives it from the cluster (kube-system Namespace UID) before building the backend"));
        };
        Ok(Some(Arc::new(KubernetesBackend::start(store, cluster))))
    }
}

/// Checks a cluster id: non-empty, at most 63 characters, no `/` or
/// whitespace (it sits in the owner marker `overlay-owner:<id>/<node>`).
pub fn validate_cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 63 || id.contains('/') || id.contains(char::is_whitespace) {
        return Err(format!(
            "{id:?} must be 1 to 63 characters, without '/' or whitespace"
        ));
    }
    if id == "default" {
        return Err(
            "\"default\" is the id every unconfigured install of older versions shared; leave clusterId unset to derive a unique one from the cluster, or choose a name of your own"
                .into(),
        );
    }
    Ok(())
}

/// Parses a duration such as `90s`, `10m` or `1h`.
pub fn parse_duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t.trim())
            .map_err(|e| format!("{t:?} is not a duration ({e}); write e.g. 90s, 10m or 1h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_file_parses_unchanged() {
        let text = "phpIPAM:\n  url: http://phpipam\n  appID: iks\n  subnetMap:\n    dal10: [7]\n";
        let cfg = IpamConfig::from_yaml("overlay-ip-config.yaml", text).unwrap();
        let p = cfg.php_ipam.as_ref().unwrap();
        assert_eq!(p.url, "http://phpipam");
        assert_eq!(p.app_id, "iks");
        assert_eq!(p.subnet_map["dal10"], vec![7]);
        assert!(!p.insecure_skip_tls_verify);
        assert_eq!(
            cfg.cluster_id, None,
            "derived from the cluster, not a shared literal"
        );
        assert_eq!(cfg.orphan_grace().unwrap(), DEFAULT_ORPHAN_GRACE);
        assert_eq!(cfg.hold_down().unwrap(), DEFAULT_HOLD_DOWN);
        let flow = "phpIPAM: {url: http://phpipam, appID: iks, subnetMap: {dal10: [7]}, insecureSkipTLSVerify: true}";
        let cfg = IpamConfig::from_yaml("f", flow).unwrap();
        assert!(cfg.php_ipam.unwrap().insecure_skip_tls_verify);
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let typo = "phpIPAM:\n  url: http://phpipam\n  appId: iks\n  subnetMap: {dal10: [7]}\n";
        let e = IpamConfig::from_yaml("cfg.yaml", typo).unwrap_err();
        assert_eq!(e.file, "cfg.yaml");
        assert_eq!(e.field, "phpIPAM");
        assert!(e.problem.contains("unknown field `appId`"), "{e}");

        let bad_url = "phpIPAM: {url: phpipam, appID: iks, subnetMap: {dal10: [7]}}";
        let e = IpamConfig::from_yaml("cfg.yaml", bad_url).unwrap_err();
        assert_eq!(e.field, "phpIPAM.url");
        assert!(e.to_string().starts_with("cfg.yaml: phpIPAM.url: "), "{e}");

        let empty_zone = "phpIPAM: {url: http://phpipam, appID: iks, subnetMap: {dal10: []}}";
        let e = IpamConfig::from_yaml("cfg.yaml", empty_zone).unwrap_err();
        assert_eq!(e.field, "phpIPAM.subnetMap.dal10");

        let bad_id = "phpIPAM: {url: http://phpipam, appID: iks, subnetMap: {dal10: [seven]}}";
        let e = IpamConfig::from_yaml("cfg.yaml", bad_id).unwrap_err();
        assert!(e.field.starts_with("phpIPAM.subnetMap.dal10"), "{e}");

        let both = "phpIPAM: {url: http://phpipam, appID: iks, subnetMap: {dal10: [7]}}\nembedded: {zones: {dal10: [{cidr: 192.0.2.0/24}]}}";
        let e = IpamConfig::from_yaml("cfg.yaml", both).unwrap_err();
        assert!(e.problem.contains("exactly one"), "{e}");

        let none = "clusterId: x\n";
        let e = IpamConfig::from_yaml("cfg.yaml", none).unwrap_err();
        assert!(e.problem.contains("kubernetes: {}"), "{e}");

        let kube = IpamConfig::from_yaml("cfg.yaml", "kubernetes: {}").unwrap();
        assert_eq!(kube.kubernetes, Some(KubernetesConfig {}));
        let Err(e) = kube.build() else {
            panic!("built Kubernetes pools without a store")
        };
        assert!(e.problem.contains("build_kubernetes"), "{e}");
        let e = IpamConfig::from_yaml("cfg.yaml", "kubernetes: {pools: 3}").unwrap_err();
        assert!(e.problem.contains("unknown field `pools`"), "{e}");
        let two = "kubernetes: {}\nembedded: {zones: {dal10: [{cidr: 192.0.2.0/24}]}}";
        let e = IpamConfig::from_yaml("cfg.yaml", two).unwrap_err();
        assert!(e.problem.contains("exactly one"), "{e}");

        let gw = "embedded: {zones: {dal10: [{cidr: 192.0.2.0/24, gateway: 198.51.100.1}]}}";
        let e = IpamConfig::from_yaml("cfg.yaml", gw).unwrap_err();
        assert_eq!(e.field, "embedded.zones.dal10[0].gateway");

        let e = IpamConfig::load(Path::new("/nonexistent/overlay-ip-config.yaml")).unwrap_err();
        assert_eq!(e.field, "(file)");
    }

    #[test]
    fn the_default_path_wins_and_the_original_mount_path_is_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let today = dir.path().join("etc-overlay/overlay-ip-config.yaml");
        let original = dir
            .path()
            .join("opt-controller-config/overlay-ip-config.yaml");
        // An optional ConfigMap volume without its ConfigMap: an empty dir.
        std::fs::create_dir_all(today.parent().unwrap()).unwrap();
        std::fs::create_dir_all(original.parent().unwrap()).unwrap();
        let both = [today.as_path(), original.as_path()];
        let e = locate(&both).unwrap_err();
        for p in [&today, &original] {
            assert!(e.file.contains(&p.display().to_string()), "{e}");
            assert!(e.problem.contains(&p.display().to_string()), "{e}");
        }
        assert!(e.problem.contains("overlay-ip-controller-config"), "{e}");
        std::fs::write(
            &original,
            "phpIPAM: {url: http://phpipam, appID: iks, subnetMap: {dal10: [7]}}",
        )
        .unwrap();
        assert_eq!(locate(&both).unwrap(), original);
        std::fs::write(&today, "embedded: {zones: {dal10: [{cidr: 192.0.2.0/24}]}}").unwrap();
        assert_eq!(locate(&both).unwrap(), today);
        assert_eq!(DEFAULT_PATH, "/etc/overlay/overlay-ip-config.yaml");
        assert_eq!(
            ORIGINAL_PATH,
            "/opt/controller-config/overlay-ip-config.yaml"
        );
    }

    #[test]
    fn credentials_in_the_original_config_keys_parse_and_are_never_written_back() {
        let text = "phpIPAM:\n  url: http://phpipam\n  appID: iks\n  username: apiuser\n  password: s3cret-value\n  subnetMap:\n    dal10: [7]\n";
        let cfg = IpamConfig::from_yaml("overlay-ip-config.yaml", text).unwrap();
        let p = cfg.php_ipam.as_ref().unwrap();
        assert_eq!(p.username.as_deref(), Some("apiuser"));
        assert_eq!(
            p.password.as_ref().map(crate::phpipam::Secret::expose),
            Some("s3cret-value")
        );
        let written = serde_yaml::to_string(&cfg).unwrap();
        assert!(written.contains("username: apiuser"), "{written}");
        assert!(!written.contains("s3cret-value"), "{written}");
        assert!(!format!("{cfg:?}").contains("s3cret-value"));
        // Only the credentials: the backend is built from them.
        let creds = crate::phpipam::Credentials::resolve_with(p, |_| None).unwrap();
        assert_eq!(
            creds,
            Credentials::User {
                username: "apiuser".into(),
                password: crate::phpipam::Secret::new("s3cret-value"),
            }
        );
    }

    #[test]
    fn missing_credentials_are_named() {
        let cfg = IpamConfig::from_yaml(
            "cfg.yaml",
            "clusterId: c1\nphpIPAM: {url: http://phpipam, appID: iks, subnetMap: {dal10: [7]}, usernameFile: /nonexistent/u, passwordFile: /nonexistent/p}",
        )
        .unwrap();
        // With the env vars unset this reads the files, which are missing.
        if std::env::var("PHPIPAM_USERNAME").is_err() && std::env::var("PHPIPAM_APP_CODE").is_err()
        {
            let e = cfg.build().err().unwrap();
            assert_eq!(e.field, "phpIPAM.usernameFile");
        }
    }

    #[test]
    fn the_phpipam_backend_is_available_as_its_own_type() {
        let creds = || {
            Some(Credentials::User {
                username: "u".into(),
                password: crate::phpipam::Secret::new("p"),
            })
        };
        let php = IpamConfig::php_ipam(
            "c1",
            PhpIpamConfig::new("https://ipam.example.invalid", "iks").with_zone("dal10", [7]),
        );
        let backend = php.build_phpipam(creds()).unwrap().unwrap();
        assert_eq!(backend.cluster(), "c1");
        assert!(backend.blocked().borrow().is_none());
        let as_dyn: Arc<dyn IpamBackend> = backend;
        assert_eq!(as_dyn.name(), "phpipam");
        let mem = IpamConfig::from_yaml(
            "cfg.yaml",
            "embedded:\n  zones:\n    dal10:\n      - cidr: 192.0.2.0/24\n",
        )
        .unwrap();
        assert!(mem.build_phpipam(creds()).unwrap().is_none());
    }

    #[test]
    fn builds_embedded_backends() {
        let mem = IpamConfig::from_yaml(
            "cfg.yaml",
            "clusterId: lab\nembedded:\n  zones:\n    dal10:\n      - cidr: 192.0.2.0/24\n",
        )
        .unwrap();
        assert_eq!(mem.build().unwrap().name(), "memory");
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "embedded:\n  stateFile: {}\n  zones:\n    dal10:\n      - cidr: 192.0.2.0/24\n",
            dir.path().join("state.json").display()
        );
        let file = IpamConfig::from_yaml("cfg.yaml", &text).unwrap();
        assert_eq!(file.build().unwrap().name(), "file");
    }
}
