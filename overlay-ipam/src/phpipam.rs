//! The phpIPAM backend: a REST client for phpIPAM 1.8 that matches the
//! behaviour recorded from a real server (see the emulator for the quirks).
//!
//! - **Tokens**: one login, the token is reused; a token error (401
//!   `Unauthorized`) triggers one re-login and one retry. Concurrent callers
//!   share a single login in flight (parallel logins invalidate each other's
//!   tokens on a real server). A refused password is reported as
//!   [`IpamError::Auth`] and remembered for [`AUTH_FAILURE_HOLD`]: calls in
//!   that window fail at once without contacting the server, so the
//!   server's IP block (11 failed logins in 5 minutes) is never reached.
//!   Credentials read from files (`usernameFile`, `passwordFile`,
//!   `appCodeFile`: a mounted Secret) are read again at every login attempt,
//!   and a remembered refusal is forgotten as soon as their content changes,
//!   so a rotated Secret is picked up without a restart.
//! - **IP block**: when phpIPAM answers `Your IP has been blocked for N
//!   minutes because of excessive login failures`, no request (and no login)
//!   is sent until the block ends: calls fail at once with
//!   [`IpamError::Unavailable`] naming the end of the block. One error is
//!   logged per block; [`PhpIpamBackend::blocked`] and
//!   [`PhpIpamBackend::blocks`] expose it for events and metrics.
//! - **Redirects** are never followed (the token header would go along): a
//!   3xx is a [`IpamError::Rejected`] naming the `Location` to put in `url`.
//! - **reserve**: an index of the zone's subnets (owner → this cluster's
//!   live and held entries), loaded with one listing per subnet and
//!   refreshed when older than `ownerIndexMaxAgeSeconds`, answers "does this
//!   owner already hold an address"; its lowest live address is returned,
//!   else its held address (released within the hold-down) is made live
//!   again (`PATCH` of the description back to the owner marker); otherwise
//!   `POST addresses/first_free/{subnet}` with `hostname` = node,
//!   `description` = owner marker, falling through to the next subnet on `No
//!   free addresses found`; a lost allocation race (409 or a duplicate-key
//!   500, from servers with the API lock disabled) is tried again after
//!   [`ALLOCATION_RACE_BACKOFF`]. Subnet prefix and gateway are cached, and a
//!   subnet seen full is tried last (until we free an address in it or the
//!   hint ages out), so a new reservation costs one request once the caches
//!   are warm. After an allocation call that failed ambiguously (timeout,
//!   cut reply, 5xx: the server may have committed), the owner's next
//!   reserve first searches the owner afresh (`GET
//!   addresses/search_hostname/{node}`), so a lost reply never turns into a
//!   second address.
//! - **release**: the entry is read (`GET addresses/{id}`) and changed only
//!   when it still carries the owner's marker: with a zero hold it is
//!   deleted, otherwise its description becomes the held marker
//!   (`overlay-held:<cluster>/<node> until=<RFC 3339>`), which keeps the
//!   address from every other owner (phpIPAM never hands out an existing
//!   entry). Already gone is success.
//! - **lookup** / **lookup_all**: `GET addresses/search_hostname/{node}`
//!   (authoritative, not cached, every subnet) filtered by exact marker; a
//!   reservation in a subnet no longer in `subnetMap` gets the zone
//!   `unmapped-subnet-<id>` (see [`unmapped_zone`]).
//! - **list**: every entry with this cluster's live or held marker in the
//!   configured subnets.
//! - **inspect_adoption** / **adopt**: the original controller's entries
//!   (phpIPAM `owner` field = node name, no marker) at an address a
//!   NodeOverlayIp records: `GET addresses/search/{ip}`, and to adopt one
//!   `PATCH addresses/{id}` writing the owner marker and the hostname;
//!   the rules are in the `adopt` module (`phpipam/adopt.rs`).
//!
//! Tokens and passwords are never logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use overlay_core::backoff::Backoff;
use overlay_core::model::Marker;
use overlay_core::{Adoption, IpamBackend, IpamError, Owner, ParseError, Reservation, Zone};
use reqwest::Method;
use reqwest::header::{HeaderValue, LOCATION};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore, watch};

mod adopt;

const BACKEND: &str = "phpipam";

/// How long a refused login is remembered before the next attempt.
pub const AUTH_FAILURE_HOLD: Duration = Duration::from_secs(600);

/// How long to wait before trying an allocation again after losing a race
/// for the address (servers with the API lock disabled answer such a
/// `first_free` with 409 `IP address already exists` or a 500 duplicate-key
/// error): 50 ms, doubling up to 1 s. The project's one retry policy,
/// [`Backoff`], with bounds for a call that is expected to succeed at once.
pub const ALLOCATION_RACE_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// Most attempts of one `first_free` call that keeps losing allocation
/// races (with [`ALLOCATION_RACE_BACKOFF`] between them: 750 ms of waiting
/// in all) before the conflict is reported.
pub const ALLOCATION_RACE_ATTEMPTS: u32 = 5;

/// Environment variable holding the API user name.
pub const ENV_USERNAME: &str = "PHPIPAM_USERNAME";
/// Environment variable holding the API user's password.
pub const ENV_PASSWORD: &str = "PHPIPAM_PASSWORD";
/// Environment variable holding a static app code (apps with `ssl_code`
/// security).
pub const ENV_APP_CODE: &str = "PHPIPAM_APP_CODE";

/// The Secret iks-overlay-ip-controller read its credentials from (keys
/// `username` and `password`).
pub const ORIGINAL_SECRET: &str = "phpipam-secret";

/// Where the shipped Deployment mounts the Secret [`ORIGINAL_SECRET`]
/// (optional volume): the files `username` and `password` in it are used
/// when neither the environment nor `usernameFile`/`passwordFile` give a
/// credential.
pub const DEFAULT_SECRET_DIR: &str = "/etc/phpipam-secret";

fn default_timeout() -> u64 {
    10
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_index_age() -> u64 {
    60
}
fn default_concurrency() -> usize {
    16
}

/// The `phpIPAM:` section of `overlay-ip-config.yaml`.
///
/// The original file parses unchanged:
///
/// ```yaml
/// phpIPAM:
///   url: http://phpipam
///   appID: iks
///   subnetMap:
///     dal10: [7]
///   insecureSkipTLSVerify: false   # optional
/// ```
///
/// Optional additions: `caFile` (extra CA bundle, PEM), `usernameFile`,
/// `passwordFile`, `appCodeFile` (credentials from files when the
/// environment variables are not set), `username`/`password` (the
/// original's config declared them: accepted, used only when no other
/// source gives a credential, with a warning that they belong in the
/// Secret), `timeoutSeconds` (10),
/// `connectTimeoutSeconds` (5), `ownerIndexMaxAgeSeconds` (60),
/// `maxConcurrentRequests` (16).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhpIpamConfig {
    /// Server root (`http://phpipam`); the API is under `{url}/api/{appID}/`.
    pub url: String,
    /// API app id.
    #[serde(rename = "appID")]
    pub app_id: String,
    /// Zone → subnet ids, tried in order.
    #[serde(rename = "subnetMap")]
    pub subnet_map: BTreeMap<String, Vec<u64>>,
    /// Accept any server certificate. Only for testing.
    #[serde(rename = "insecureSkipTLSVerify", default)]
    pub insecure_skip_tls_verify: bool,
    /// Extra CA bundle (PEM) trusted besides the system roots.
    #[serde(rename = "caFile", default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// File holding the user name (when `PHPIPAM_USERNAME` is unset).
    #[serde(
        rename = "usernameFile",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_file: Option<PathBuf>,
    /// File holding the password (when `PHPIPAM_PASSWORD` is unset).
    #[serde(
        rename = "passwordFile",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub password_file: Option<PathBuf>,
    /// File holding a static app code (`ssl_code` apps).
    #[serde(
        rename = "appCodeFile",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub app_code_file: Option<PathBuf>,
    /// The API user, written into the config file (the original
    /// controller's config declared the key). Used only when no other
    /// source gives the user name; a warning says it belongs in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The API password, written into the config file (see `username`).
    /// Never serialized back.
    #[serde(default, skip_serializing)]
    pub password: Option<Secret>,
    /// Whole-request timeout.
    #[serde(rename = "timeoutSeconds", default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Connect timeout.
    #[serde(rename = "connectTimeoutSeconds", default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// How old the owner index of a zone may get before it is reloaded.
    #[serde(rename = "ownerIndexMaxAgeSeconds", default = "default_index_age")]
    pub owner_index_max_age_seconds: u64,
    /// Most requests in flight at once.
    #[serde(rename = "maxConcurrentRequests", default = "default_concurrency")]
    pub max_concurrent_requests: usize,
}

impl PhpIpamConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(url: impl Into<String>, app_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            app_id: app_id.into(),
            subnet_map: BTreeMap::new(),
            insecure_skip_tls_verify: false,
            ca_file: None,
            username_file: None,
            password_file: None,
            app_code_file: None,
            username: None,
            password: None,
            timeout_seconds: default_timeout(),
            connect_timeout_seconds: default_connect_timeout(),
            owner_index_max_age_seconds: default_index_age(),
            max_concurrent_requests: default_concurrency(),
        }
    }

    /// Maps `zone` to `subnets` (tried in order).
    pub fn with_zone(
        mut self,
        zone: impl Into<String>,
        subnets: impl IntoIterator<Item = u64>,
    ) -> Self {
        self.subnet_map
            .insert(zone.into(), subnets.into_iter().collect());
        self
    }

    /// Checks the section; the error names the field (relative to the
    /// section) and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let url = self.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "https://".len()
        {
            return Err((
                "url".into(),
                format!(
                    "{:?} is not an http(s) URL such as http://phpipam",
                    self.url
                ),
            ));
        }
        if self.app_id.trim().is_empty() {
            return Err(("appID".into(), "is empty; give the API app id".into()));
        }
        if self.subnet_map.is_empty() {
            return Err((
                "subnetMap".into(),
                "no zone configured; map at least one zone to subnet ids".into(),
            ));
        }
        for (zone, ids) in &self.subnet_map {
            if let Err(e) = Zone::parse("zone", zone) {
                return Err((format!("subnetMap.{zone}"), e.to_string()));
            }
            if ids.is_empty() {
                return Err((format!("subnetMap.{zone}"), "lists no subnet id".into()));
            }
            if let Some(i) = ids.iter().position(|id| *id == 0) {
                return Err((
                    format!("subnetMap.{zone}[{i}]"),
                    "subnet id 0 does not exist".into(),
                ));
            }
        }
        if self.timeout_seconds == 0 {
            return Err(("timeoutSeconds".into(), "must be at least 1".into()));
        }
        if self.max_concurrent_requests == 0 {
            return Err(("maxConcurrentRequests".into(), "must be at least 1".into()));
        }
        Ok(())
    }

    /// What this configuration exposes, one sentence each: a plain
    /// `http://` URL (credentials and token in clear text) and
    /// `insecureSkipTLSVerify` (the server's identity is not checked).
    /// Empty for an `https://` URL with certificate checks. The backend
    /// logs each as a warning when it is built; `overlayctl ipam check`
    /// shows them.
    pub fn security_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let url = self.url.trim();
        if url
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
        {
            out.push(format!(
                "phpIPAM.url {url} is plain http://: the API password (at every login), the \
                 token or app code (on every request) and all address data cross the network \
                 in clear text, readable and changeable by anyone on the path; use https://"
            ));
        }
        if self.insecure_skip_tls_verify {
            out.push(
                "phpIPAM.insecureSkipTLSVerify is true: the server's certificate is not \
                 checked, so anyone on the path can pose as phpIPAM and receive the password \
                 and token; trust the server's CA with caFile instead"
                    .to_string(),
            );
        }
        out
    }
}

/// A secret string; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where one credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A value fixed when the process started (an environment variable).
    Value(Secret),
    /// A file (a mounted Secret), read again at every login attempt.
    File(PathBuf),
}

impl CredentialSource {
    /// The current value (reads the file), trailing line breaks removed.
    fn read(&self, field: &str) -> Result<Secret, (String, String)> {
        match self {
            CredentialSource::Value(v) => Ok(v.clone()),
            CredentialSource::File(p) => read_secret_file(field, p),
        }
    }

    fn is_file(&self) -> bool {
        matches!(self, CredentialSource::File(_))
    }
}

fn read_secret_file(field: &str, path: &Path) -> Result<Secret, (String, String)> {
    std::fs::read_to_string(path)
        .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_string()))
        .map_err(|e| {
            (
                field.to_string(),
                format!("cannot read {}: {e}", path.display()),
            )
        })
}

/// How the backend authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An API user: logs in with HTTP Basic and uses the returned token.
    User {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// A static app code (apps with `ssl_code` security), sent as the token.
    AppCode(Secret),
    /// An API user whose name and password are taken from their sources at
    /// every login attempt: files are read again, so a rotated Secret is
    /// used without a restart.
    UserFrom {
        /// Where the user name comes from.
        username: CredentialSource,
        /// Where the password comes from.
        password: CredentialSource,
    },
    /// A static app code read from a file; read again when the server
    /// refuses the code in use.
    AppCodeFile(PathBuf),
}

impl Credentials {
    /// Resolves credentials as a Kubernetes deployment provides them, from
    /// the environment and [`DEFAULT_SECRET_DIR`]; see
    /// [`Credentials::resolve_from`].
    pub fn resolve(config: &PhpIpamConfig) -> Result<Self, (String, String)> {
        Self::resolve_from(
            config,
            |k| std::env::var(k).ok(),
            Some(Path::new(DEFAULT_SECRET_DIR)),
        )
    }

    /// [`Credentials::resolve_from`] without a Secret directory.
    pub fn resolve_with(
        config: &PhpIpamConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, (String, String)> {
        Self::resolve_from(config, env, None)
    }

    /// Resolves the credentials. An app code wins: `PHPIPAM_APP_CODE`, then
    /// `appCodeFile`. Otherwise the user name and the password are each
    /// taken from the first source that has them:
    ///
    /// 1. `PHPIPAM_USERNAME` / `PHPIPAM_PASSWORD` (`env`; the shipped
    ///    Deployment fills them from the Secret `phpipam-credentials`);
    /// 2. `usernameFile` / `passwordFile` in the config;
    /// 3. the files `username` / `password` in `secret_dir` (the
    ///    original's Secret [`ORIGINAL_SECRET`], mounted there);
    /// 4. `username` / `password` in the config's `phpIPAM:` section, with
    ///    a warning that they belong in the Secret (their values are
    ///    never logged).
    ///
    /// Files are read once here (the error names what is missing or
    /// unreadable) and again at every login (see
    /// [`Credentials::UserFrom`]).
    pub fn resolve_from(
        config: &PhpIpamConfig,
        env: impl Fn(&str) -> Option<String>,
        secret_dir: Option<&Path>,
    ) -> Result<Self, (String, String)> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        if let Some(code) = nonempty(env(ENV_APP_CODE)) {
            return Ok(Self::AppCode(Secret(code)));
        }
        if let Some(p) = &config.app_code_file {
            read_secret_file("appCodeFile", p)?;
            return Ok(Self::AppCodeFile(p.clone()));
        }
        let in_dir = |name: &str| {
            secret_dir
                .map(|d| d.join(name))
                .filter(|p| p.is_file())
                .map(CredentialSource::File)
        };
        let username = nonempty(env(ENV_USERNAME))
            .map(|u| CredentialSource::Value(Secret(u)))
            .or_else(|| config.username_file.clone().map(CredentialSource::File))
            .or_else(|| in_dir("username"));
        let password = nonempty(env(ENV_PASSWORD))
            .map(|p| CredentialSource::Value(Secret(p)))
            .or_else(|| config.password_file.clone().map(CredentialSource::File))
            .or_else(|| in_dir("password"));
        let inline_user = config.username.clone().filter(|u| !u.is_empty());
        let inline_pass = config.password.clone().filter(|p| !p.0.is_empty());
        warn_inline_credentials(
            (inline_user.is_some(), username.is_none()),
            (inline_pass.is_some(), password.is_none()),
        );
        let Some(username) = username.or(inline_user.map(|u| CredentialSource::Value(Secret(u))))
        else {
            return Err((
                ENV_USERNAME.into(),
                format!(
                    "not set; set PHPIPAM_USERNAME/PHPIPAM_PASSWORD (e.g. from a Secret), usernameFile/passwordFile, the Secret {ORIGINAL_SECRET} (keys username, password) mounted at {}, or an app code",
                    secret_dir
                        .map_or_else(|| DEFAULT_SECRET_DIR.into(), |d| d.display().to_string())
                ),
            ));
        };
        let Some(password) = password.or(inline_pass.map(CredentialSource::Value)) else {
            return Err((
                ENV_PASSWORD.into(),
                format!(
                    "not set; set PHPIPAM_PASSWORD, passwordFile, or key password of the Secret {ORIGINAL_SECRET}"
                ),
            ));
        };
        // Read now: a missing file is a configuration error at startup.
        let user = username.read("usernameFile")?;
        let pass = password.read("passwordFile")?;
        match (username, password) {
            (CredentialSource::Value(_), CredentialSource::Value(_)) => Ok(Self::User {
                username: user.0,
                password: pass,
            }),
            (username, password) => Ok(Self::UserFrom { username, password }),
        }
    }

    /// True when some part is read from a file (and may change).
    fn reads_files(&self) -> bool {
        match self {
            Credentials::User { .. } | Credentials::AppCode(_) => false,
            Credentials::UserFrom { username, password } => {
                username.is_file() || password.is_file()
            }
            Credentials::AppCodeFile(_) => true,
        }
    }

    /// The user name and password as of now; `None` for app codes.
    fn current_user(&self) -> Result<Option<(String, Secret)>, IpamError> {
        let file_err = |(field, problem): (String, String)| {
            unavailable("login", format!("phpIPAM.{field}: {problem}"))
        };
        match self {
            Credentials::User { username, password } => {
                Ok(Some((username.clone(), password.clone())))
            }
            Credentials::UserFrom { username, password } => {
                let u = username.read("usernameFile").map_err(file_err)?;
                let p = password.read("passwordFile").map_err(file_err)?;
                Ok(Some((u.0, p)))
            }
            Credentials::AppCode(_) | Credentials::AppCodeFile(_) => Ok(None),
        }
    }
}

/// Warns about `username`/`password` in the config file: `(present, used)`
/// for each. Never logs their values.
fn warn_inline_credentials(user: (bool, bool), pass: (bool, bool)) {
    let keys: Vec<&str> = [("username", user.0), ("password", pass.0)]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect();
    if keys.is_empty() {
        return;
    }
    let used = (user.0 && user.1) || (pass.0 && pass.1);
    tracing::warn!(
        backend = BACKEND,
        keys = %keys.join(", "),
        used,
        "phpIPAM credentials in the config file: a ConfigMap is readable by anyone who may read the config, and the values may end up in logs and backups; put them into the Secret {ORIGINAL_SECRET} (keys username, password) or PHPIPAM_USERNAME/PHPIPAM_PASSWORD and remove them from the config{}",
        if used {
            " (used now: no other source gives them)"
        } else {
            " (ignored: another source gives them)"
        }
    );
}

/// A subnet's prefix and gateway, as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetInfo {
    /// The subnet.
    pub network: IpNetwork,
    /// Its gateway, when phpIPAM has one marked.
    pub gateway: Option<IpAddr>,
}

/// One entry of this cluster in phpIPAM (an owner's address), live or
/// held.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnerEntry {
    id: u64,
    ip: IpAddr,
    subnet: u64,
    /// `Some` for a held (released, quarantined) entry.
    held_until: Option<SystemTime>,
}

#[derive(Debug)]
struct OwnerIndex {
    loaded_at: Instant,
    stale: bool,
    /// Owner → its live and held entries in the zone's subnets, lowest
    /// address first.
    entries: HashMap<Owner, Vec<OwnerEntry>>,
}

#[derive(Debug, Default)]
struct ZoneState {
    load: tokio::sync::Mutex<()>,
    index: Mutex<Option<OwnerIndex>>,
    /// Index loads attempted, and how the last one failed (shared with the
    /// callers that waited for it).
    loads: Mutex<(u64, Option<IpamError>)>,
}

/// A login the server refused, and with which credentials.
#[derive(Debug)]
struct FailedLogin {
    at: Instant,
    error: IpamError,
    /// The credentials refused (compared with the files' content now).
    with: Option<(String, Secret)>,
}

#[derive(Debug, Default)]
struct TokenState {
    token: Option<Secret>,
    generation: u64,
    /// A refused login, remembered for [`AUTH_FAILURE_HOLD`] (or until the
    /// credential files change).
    failed: Option<FailedLogin>,
    /// Login attempts so far, and how the last one failed: callers that
    /// waited for a login in flight share its failure instead of each
    /// trying again.
    attempts: u64,
    last_error: Option<IpamError>,
}

/// phpIPAM has blocked this client's IP address after too many failed
/// logins (from this process or any other client behind the same address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// When the block ends (wall clock), as computed from the server's
    /// message (`blocked for N minutes`, 5 when it names none).
    pub until: SystemTime,
    /// What the server said.
    pub message: String,
}

#[derive(Debug)]
struct BlockState {
    ends: Instant,
    info: Blocked,
}

/// How long phpIPAM blocks a client IP when its message names no time.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(300);

/// One decoded response.
#[derive(Debug, Clone)]
struct ApiReply {
    status: u16,
    message: String,
    id: Option<Value>,
    data: Option<Value>,
}

/// One address entry of a subnet as phpIPAM lists it (for
/// [`PhpIpamBackend::subnet_entries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressEntry {
    /// phpIPAM address id.
    pub id: u64,
    /// The address.
    pub ip: IpAddr,
    /// phpIPAM subnet id.
    pub subnet_id: u64,
    /// The `hostname` field.
    pub hostname: Option<String>,
    /// The `description` field (where owner markers live).
    pub description: Option<String>,
    /// The subnet's gateway entry.
    pub is_gateway: bool,
}

/// The phpIPAM [`IpamBackend`].
pub struct PhpIpamBackend {
    base: String,
    cluster: String,
    zones: BTreeMap<Zone, Vec<u64>>,
    credentials: Credentials,
    /// The app code last read from `appCodeFile`.
    app_code: Mutex<Option<Secret>>,
    http: reqwest::Client,
    limiter: Semaphore,
    index_max_age: Duration,
    token: Mutex<TokenState>,
    login_lock: tokio::sync::Mutex<()>,
    subnets: Mutex<HashMap<u64, Arc<OnceCell<SubnetInfo>>>>,
    zone_state: HashMap<Zone, ZoneState>,
    owner_locks: Mutex<HashMap<Owner, Arc<tokio::sync::Mutex<()>>>>,
    /// Subnets seen full, and when: tried last until the hint is older than
    /// the owner index age or we free an address in them.
    full: Mutex<HashMap<u64, Instant>>,
    /// Owners whose allocation call failed ambiguously: their next reserve
    /// searches phpIPAM before allocating.
    suspects: Mutex<HashSet<Owner>>,
    /// The current IP block, if any.
    block: Mutex<Option<BlockState>>,
    block_tx: Arc<watch::Sender<Option<Blocked>>>,
    blocks: AtomicU64,
}

impl fmt::Debug for PhpIpamBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhpIpamBackend")
            .field("base", &self.base)
            .field("cluster", &self.cluster)
            .field("zones", &self.zones)
            .finish_non_exhaustive()
    }
}

/// The zone given to a reservation found in a subnet that no zone of
/// `subnetMap` lists any more (a subnet removed from the configuration):
/// `unmapped-subnet-<id>`. Such reservations are found by `lookup_all` and
/// released like any other; `reserve` never allocates there.
pub fn unmapped_zone(subnet: u64) -> Result<Zone, IpamError> {
    Ok(Zone::parse("zone", &format!("unmapped-subnet-{subnet}"))?)
}

/// Parses the block time out of phpIPAM's `Your IP has been blocked for 5
/// minutes ...` (also `N seconds`); [`DEFAULT_BLOCK`] when it names none.
pub fn block_duration(message: &str) -> Duration {
    let Some(rest) = message.split("blocked for ").nth(1) else {
        return DEFAULT_BLOCK;
    };
    let mut words = rest.split_whitespace();
    let (Some(n), Some(unit)) = (words.next(), words.next()) else {
        return DEFAULT_BLOCK;
    };
    let Ok(n) = n.parse::<u64>() else {
        return DEFAULT_BLOCK;
    };
    let unit = unit.to_ascii_lowercase();
    if unit.starts_with("second") {
        Duration::from_secs(n)
    } else if unit.starts_with("hour") {
        Duration::from_secs(n.saturating_mul(3600))
    } else if unit.starts_with("minute") {
        Duration::from_secs(n.saturating_mul(60))
    } else {
        DEFAULT_BLOCK
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn invalid(field: &str, problem: impl Into<String>) -> IpamError {
    IpamError::Invalid(ParseError::new(field, "", problem))
}

fn unavailable(call: &str, message: impl Into<String>) -> IpamError {
    IpamError::Unavailable {
        backend: BACKEND.into(),
        call: call.into(),
        message: message.into(),
    }
}

fn rejected(call: &str, message: impl Into<String>) -> IpamError {
    IpamError::Rejected {
        backend: BACKEND.into(),
        call: call.into(),
        message: message.into(),
    }
}

/// Whether an error message is a lost allocation race: phpIPAM without its
/// API lock hands two clients the same first free address, and the second
/// insert fails with 409 or a 500 duplicate-key error.
fn lost_race(message: &str) -> bool {
    message == "IP address already exists" || message.contains("Duplicate entry")
}

/// The [`IpamError`] for a phpIPAM error reply to `call`: its kind says
/// whether a retry can help.
pub fn reply_error(call: &str, status: u16, message: &str) -> IpamError {
    let m = if message.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        format!("HTTP {status}: {message}")
    };
    if message.contains("has been blocked") {
        return unavailable(
            call,
            format!(
                "{m} (phpIPAM blocks a client IP for 5 minutes after 11 failed logins; check the credentials)"
            ),
        );
    }
    match status {
        401 if message.eq_ignore_ascii_case("invalid permissions") => IpamError::Permission {
            backend: BACKEND.into(),
            call: call.into(),
            message: format!("{m} (the API app is read-only)"),
        },
        401 | 403 => IpamError::Auth {
            backend: BACKEND.into(),
            call: call.into(),
            message: m,
        },
        500 if message == "Invalid username or password" => IpamError::Auth {
            backend: BACKEND.into(),
            call: call.into(),
            message: m,
        },
        400 if message == "Invalid application id" => rejected(call, format!("{m} (check appID)")),
        503 if message.contains("SSL") || message.contains("app security") => rejected(
            call,
            format!("{m} (check the API app's security setting and the URL scheme)"),
        ),
        s if s >= 500 => unavailable(call, m),
        _ => rejected(call, m),
    }
}

/// Parses an id that phpIPAM sends as a number or a string.
fn as_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses an ip phpIPAM sends dotted, or as a decimal string (the
/// multi-hit search quirk).
fn as_ip(v: &Value) -> Option<IpAddr> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u128 = s.parse().ok()?;
        return Some(match u32::try_from(n) {
            Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
            Err(_) => IpAddr::V6(n.into()),
        });
    }
    None
}

fn as_u8(v: &Value) -> Option<u8> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The HTTP client for `config`: its timeouts, no redirects, and the TLS
/// settings (`insecureSkipTLSVerify`, `caFile`).
fn http_client(config: &PhpIpamConfig) -> Result<reqwest::Client, IpamError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either provider works.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_seconds))
        .connect_timeout(Duration::from_secs(config.connect_timeout_seconds.max(1)))
        // A redirect would carry the token header to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("overlay-ipam/", env!("CARGO_PKG_VERSION")));
    if config.insecure_skip_tls_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some(ca) = &config.ca_file {
        for c in ca_certificates(ca)? {
            builder = builder.add_root_certificate(c);
        }
    }
    builder
        .build()
        .map_err(|e| invalid("phpIPAM", format!("cannot build the HTTP client: {e}")))
}

/// The certificates of the PEM bundle `caFile` names; at least one.
fn ca_certificates(ca: &Path) -> Result<Vec<reqwest::Certificate>, IpamError> {
    let pem = std::fs::read(ca).map_err(|e| {
        invalid(
            "phpIPAM.caFile",
            format!("cannot read {}: {e}", ca.display()),
        )
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        invalid(
            "phpIPAM.caFile",
            format!("{} is not a PEM bundle: {e}", ca.display()),
        )
    })?;
    if certs.is_empty() {
        return Err(invalid(
            "phpIPAM.caFile",
            format!("{} holds no certificate", ca.display()),
        ));
    }
    Ok(certs)
}

impl PhpIpamBackend {
    /// Builds the backend. `cluster` is this cluster's id, written into the
    /// owner marker; `list` returns only this cluster's reservations. Each
    /// of [`PhpIpamConfig::security_warnings`] is logged as a warning.
    pub fn new(
        config: &PhpIpamConfig,
        cluster: &str,
        credentials: Credentials,
    ) -> Result<Self, IpamError> {
        config
            .validate()
            .map_err(|(field, problem)| invalid(&format!("phpIPAM.{field}"), problem))?;
        if cluster.is_empty() || cluster.contains('/') || cluster.contains(char::is_whitespace) {
            return Err(invalid(
                "clusterId",
                format!("{cluster:?} must be non-empty without '/' or spaces"),
            ));
        }
        let mut zones = BTreeMap::new();
        for (z, ids) in &config.subnet_map {
            zones.insert(Zone::parse("phpIPAM.subnetMap", z)?, ids.clone());
        }
        let http = http_client(config)?;
        let base = format!(
            "{}/api/{}",
            config.url.trim().trim_end_matches('/'),
            config.app_id.trim()
        );
        for warning in config.security_warnings() {
            tracing::warn!(backend = BACKEND, url = %config.url.trim(), "{warning}");
        }
        let zone_state = zones
            .keys()
            .map(|z| (z.clone(), ZoneState::default()))
            .collect();
        let (block_tx, _) = watch::channel(None);
        Ok(Self {
            base,
            cluster: cluster.to_string(),
            zones,
            credentials,
            app_code: Mutex::new(None),
            http,
            limiter: Semaphore::new(config.max_concurrent_requests),
            index_max_age: Duration::from_secs(config.owner_index_max_age_seconds),
            token: Mutex::new(TokenState::default()),
            login_lock: tokio::sync::Mutex::new(()),
            subnets: Mutex::new(HashMap::new()),
            zone_state,
            owner_locks: Mutex::new(HashMap::new()),
            full: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashSet::new()),
            block: Mutex::new(None),
            block_tx: Arc::new(block_tx),
            blocks: AtomicU64::new(0),
        })
    }

    /// The cluster id this backend writes into owner markers.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Zone → subnet ids.
    pub fn zones(&self) -> &BTreeMap<Zone, Vec<u64>> {
        &self.zones
    }

    /// The current phpIPAM IP block: `Some` from the reply that reported it
    /// until it ends. For raising an Event or setting a gauge.
    pub fn blocked(&self) -> watch::Receiver<Option<Blocked>> {
        self.block_tx.subscribe()
    }

    /// How many IP blocks this backend has run into (for a counter).
    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }

    fn zone_subnets(&self, zone: &Zone) -> Result<&[u64], IpamError> {
        self.zones
            .get(zone)
            .map(Vec::as_slice)
            .ok_or_else(|| IpamError::UnknownZone {
                zone: zone.to_string(),
                known: self.zones.keys().map(Zone::to_string).collect(),
            })
    }

    // --- the IP block -----------------------------------------------------

    fn is_blocked(&self) -> bool {
        lock(&self.block)
            .as_ref()
            .is_some_and(|b| Instant::now() < b.ends)
    }

    /// Fails at once while phpIPAM blocks us: nothing is sent.
    fn check_blocked(&self, call: &str) -> Result<(), IpamError> {
        let mut b = lock(&self.block);
        let Some(st) = b.as_ref() else {
            return Ok(());
        };
        let now = Instant::now();
        if now < st.ends {
            let left = st.ends.saturating_duration_since(now).as_secs().max(1);
            return Err(unavailable(
                call,
                format!(
                    "not sent: phpIPAM has blocked this client's IP address until {} (another {left} s) because of excessive login failures (it said {:?}); no request or login is sent before then; check the credentials of every client behind this address",
                    humantime::format_rfc3339_seconds(st.info.until),
                    st.info.message
                ),
            ));
        }
        *b = None;
        drop(b);
        self.block_tx.send_if_modified(|v| v.take().is_some());
        tracing::info!(
            backend = BACKEND,
            "phpIPAM IP block is over; sending requests again"
        );
        Ok(())
    }

    /// Records a block reported by the server: one error log per block.
    fn note_block(&self, call: &str, message: &str) {
        let d = block_duration(message).min(Duration::from_secs(86_400));
        let now = Instant::now();
        let mut b = lock(&self.block);
        if b.as_ref().is_some_and(|st| now < st.ends) {
            return;
        }
        let info = Blocked {
            until: SystemTime::now()
                .checked_add(d)
                .unwrap_or_else(SystemTime::now),
            message: message.to_string(),
        };
        *b = Some(BlockState {
            ends: now.checked_add(d).unwrap_or(now),
            info: info.clone(),
        });
        drop(b);
        let n = self.blocks.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            backend = BACKEND,
            call,
            until = %humantime::format_rfc3339_seconds(info.until),
            blocks = n,
            server_message = %message,
            "phpIPAM blocked this client's IP address because of excessive login failures; no request or login is sent until the block ends: check the credentials of every client behind this address"
        );
        self.block_tx.send_replace(Some(info.clone()));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let tx = self.block_tx.clone();
            let until = info.until;
            rt.spawn(async move {
                tokio::time::sleep(d).await;
                tx.send_if_modified(|v| {
                    let same = v.as_ref().is_some_and(|b| b.until == until);
                    if same {
                        *v = None;
                    }
                    same
                });
            });
        }
    }

    // --- requests -----------------------------------------------------------

    /// Sends one request; transport failures are `Unavailable`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&Secret>,
        basic: Option<(&str, &Secret)>,
        call: &str,
    ) -> Result<ApiReply, IpamError> {
        self.check_blocked(call)?;
        let _permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| unavailable(call, "backend is shutting down"))?;
        // A block may have been reported while this call waited its turn.
        self.check_blocked(call)?;
        let url = format!("{}/{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = token {
            let mut v = HeaderValue::from_str(t.expose())
                .map_err(|_| invalid("token", "token holds characters not allowed in a header"))?;
            v.set_sensitive(true);
            req = req.header("token", v);
        }
        if let Some((u, p)) = basic {
            req = req.basic_auth(u, Some(p.expose()));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            unavailable(call, format!("{kind}: {}", without_url(&e)))
        })?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            return Err(redirected(call, status, &location));
        }
        let bytes = resp.bytes().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out reading the response"
            } else {
                "reading the response failed"
            };
            unavailable(call, format!("{kind}: {}", without_url(&e)))
        })?;
        let reply = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(mut o)) => ApiReply {
                status,
                message: o
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                id: o.remove("id"),
                data: o.remove("data"),
            },
            _ => ApiReply {
                status,
                message: String::new(),
                id: None,
                data: None,
            },
        };
        tracing::debug!(backend = BACKEND, call, status, message = %reply.message, "phpIPAM reply");
        if status == 500 && reply.message.contains("has been blocked") {
            self.note_block(call, &reply.message);
        }
        Ok(reply)
    }

    /// The app code of `appCodeFile` (read once, again when refused).
    fn app_code(&self, path: &Path) -> Result<Secret, IpamError> {
        if let Some(c) = lock(&self.app_code).clone() {
            return Ok(c);
        }
        let c = read_secret_file("appCodeFile", path)
            .map_err(|(f, p)| unavailable("login", format!("phpIPAM.{f}: {p}")))?;
        *lock(&self.app_code) = Some(c.clone());
        Ok(c)
    }

    /// Reads `appCodeFile` again; true when it holds a new code.
    fn reread_app_code(&self) -> bool {
        let Credentials::AppCodeFile(path) = &self.credentials else {
            return false;
        };
        match read_secret_file("appCodeFile", path) {
            Ok(c) => {
                let mut cur = lock(&self.app_code);
                let changed = cur.as_ref() != Some(&c);
                *cur = Some(c);
                changed
            }
            Err(_) => false,
        }
    }

    /// A valid token (logging in if needed, one login at a time).
    async fn token(&self) -> Result<(u64, Secret), IpamError> {
        match &self.credentials {
            Credentials::AppCode(code) => return Ok((0, code.clone())),
            Credentials::AppCodeFile(path) => return self.app_code(path).map(|c| (0, c)),
            Credentials::User { .. } | Credentials::UserFrom { .. } => {}
        }
        if let Some(t) = self.current_token()? {
            return Ok(t);
        }
        let attempts_seen = lock(&self.token).attempts;
        let _login = self.login_lock.lock().await;
        if let Some(t) = self.current_token()? {
            return Ok(t);
        }
        {
            let s = lock(&self.token);
            if s.attempts != attempts_seen
                && let Some(e) = &s.last_error
            {
                // The login we waited for failed just now: share its error.
                return Err(e.clone());
            }
        }
        self.check_blocked("login")?;
        // Read now: files of a rotated Secret are picked up at every login.
        let Some((username, password)) = self.credentials.current_user()? else {
            return Err(rejected("login", "no user credentials"));
        };
        tracing::info!(backend = BACKEND, user = %username, "logging in to phpIPAM");
        let result = self.login_once(&username, &password).await;
        let mut s = lock(&self.token);
        s.attempts += 1;
        match result {
            Ok(t) => {
                s.token = Some(t.clone());
                s.generation += 1;
                s.failed = None;
                s.last_error = None;
                Ok((s.generation, t))
            }
            Err(err) => {
                if matches!(err, IpamError::Auth { .. } | IpamError::Rejected { .. }) {
                    tracing::error!(backend = BACKEND, user = %username, error = %err, "phpIPAM login refused; not retrying for {} s or until the credential files change", AUTH_FAILURE_HOLD.as_secs());
                    s.failed = Some(FailedLogin {
                        at: Instant::now(),
                        error: err.clone(),
                        with: Some((username, password)),
                    });
                } else if !self.is_blocked() {
                    // (A block was logged once already.)
                    tracing::warn!(backend = BACKEND, user = %username, error = %err, "phpIPAM login failed");
                }
                s.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    async fn login_once(&self, username: &str, password: &Secret) -> Result<Secret, IpamError> {
        let reply = self
            .send(
                Method::POST,
                "user/",
                None,
                None,
                Some((username, password)),
                "login",
            )
            .await?;
        let token = (reply.status == 200)
            .then(|| {
                reply
                    .data
                    .as_ref()
                    .and_then(|d| d.get("token"))
                    .and_then(Value::as_str)
            })
            .flatten();
        match token {
            Some(t) => Ok(Secret(t.to_string())),
            None if reply.status == 200 => Err(rejected("login", "HTTP 200 without data.token")),
            None => Err(reply_error("login", reply.status, &reply.message)),
        }
    }

    /// The token in use; the remembered refusal while it holds (forgotten
    /// when the credential files changed since).
    fn current_token(&self) -> Result<Option<(u64, Secret)>, IpamError> {
        let refused_with = {
            let s = lock(&self.token);
            if let Some(t) = &s.token {
                return Ok(Some((s.generation, t.clone())));
            }
            match &s.failed {
                Some(f) if f.at.elapsed() < AUTH_FAILURE_HOLD => {
                    if !self.credentials.reads_files() {
                        return Err(f.error.clone());
                    }
                    (f.with.clone(), f.error.clone())
                }
                _ => return Ok(None),
            }
        };
        // Read the files outside the lock.
        match self.credentials.current_user() {
            Ok(now) if now != refused_with.0 => {
                let mut s = lock(&self.token);
                if s.failed.is_some() {
                    tracing::info!(
                        backend = BACKEND,
                        "the credential files changed since the refused login; logging in again"
                    );
                    s.failed = None;
                    s.last_error = None;
                }
                Ok(None)
            }
            _ => Err(refused_with.1),
        }
    }

    fn drop_token(&self, generation: u64) {
        let mut s = lock(&self.token);
        if s.generation == generation {
            s.token = None;
        }
    }

    /// An authenticated call: on a token error, log in again once and retry.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        call: &str,
    ) -> Result<ApiReply, IpamError> {
        for attempt in 0..2 {
            self.check_blocked(call)?;
            let (generation, token) = self.token().await?;
            let reply = self
                .send(method.clone(), path, body, Some(&token), None, call)
                .await?;
            let token_error = reply.status == 401 && reply.message == "Unauthorized";
            if token_error && attempt == 0 {
                match &self.credentials {
                    Credentials::User { .. } | Credentials::UserFrom { .. } => {
                        tracing::info!(backend = BACKEND, call, "token refused; logging in again");
                        self.drop_token(generation);
                        continue;
                    }
                    Credentials::AppCodeFile(_) if self.reread_app_code() => {
                        tracing::info!(
                            backend = BACKEND,
                            call,
                            "app code refused; appCodeFile holds a new one, retrying"
                        );
                        continue;
                    }
                    Credentials::AppCode(_) | Credentials::AppCodeFile(_) => {}
                }
            }
            return Ok(reply);
        }
        Err(IpamError::Auth {
            backend: BACKEND.into(),
            call: call.into(),
            message: "token refused right after a fresh login".into(),
        })
    }

    /// Logs in (or reuses the token): checks URL, app id and credentials.
    pub async fn check_login(&self) -> Result<(), IpamError> {
        self.token().await?;
        if matches!(
            self.credentials,
            Credentials::AppCode(_) | Credentials::AppCodeFile(_)
        ) {
            // No login call for app codes: prove the code with a read.
            let call = "GET addresses/tags";
            let r = self
                .call(Method::GET, "addresses/tags/", None, call)
                .await?;
            if r.status != 200 {
                return Err(reply_error(call, r.status, &r.message));
            }
        }
        Ok(())
    }

    /// Free addresses of a subnet (`GET subnets/{id}/usage`, `freehosts`).
    pub async fn subnet_free(&self, id: u64) -> Result<u64, IpamError> {
        let call = format!("GET subnets/{id}/usage");
        let r = self
            .call(Method::GET, &format!("subnets/{id}/usage/"), None, &call)
            .await?;
        if r.status != 200 {
            return Err(reply_error(&call, r.status, &r.message));
        }
        r.data
            .as_ref()
            .and_then(|d| d.get("freehosts"))
            .and_then(as_id)
            .ok_or_else(|| rejected(&call, "reply lacks freehosts"))
    }

    /// The prefix and gateway of a subnet (cached after the first call).
    pub async fn subnet_info(&self, id: u64) -> Result<SubnetInfo, IpamError> {
        let cell = lock(&self.subnets).entry(id).or_default().clone();
        cell.get_or_try_init(|| self.fetch_subnet(id))
            .await
            .copied()
    }

    async fn fetch_subnet(&self, id: u64) -> Result<SubnetInfo, IpamError> {
        let call = format!("GET subnets/{id}");
        let r = self
            .call(Method::GET, &format!("subnets/{id}/"), None, &call)
            .await?;
        if r.status != 200 {
            let e = reply_error(&call, r.status, &r.message);
            return Err(match e {
                IpamError::Rejected { .. } => rejected(
                    &call,
                    format!(
                        "subnet {id} does not exist (HTTP {}: {}); fix subnetMap",
                        r.status, r.message
                    ),
                ),
                other => other,
            });
        }
        let d = r.data.unwrap_or(Value::Null);
        let net = d.get("subnet").and_then(as_ip);
        let mask = d.get("mask").and_then(as_u8);
        let (Some(net), Some(mask)) = (net, mask) else {
            return Err(rejected(&call, "reply lacks subnet/mask"));
        };
        let network = IpNetwork::new(net, mask)
            .map_err(|e| rejected(&call, format!("bad subnet {net}/{mask}: {e}")))?;
        let gateway = d
            .get("gateway")
            .and_then(|g| g.get("ip_addr"))
            .and_then(as_ip);
        Ok(SubnetInfo { network, gateway })
    }

    /// Addresses of one subnet (empty on phpIPAM's 404 `No addresses found`).
    async fn subnet_addresses(&self, id: u64) -> Result<Vec<Value>, IpamError> {
        let call = format!("GET subnets/{id}/addresses");
        let r = self
            .call(
                Method::GET,
                &format!("subnets/{id}/addresses/"),
                None,
                &call,
            )
            .await?;
        match (r.status, r.data) {
            (200, Some(Value::Array(a))) => Ok(a),
            (404, _) if r.message == "No addresses found" => Ok(Vec::new()),
            (200, _) => Err(rejected(&call, "reply data is not a list")),
            (s, _) => Err(reply_error(&call, s, &r.message)),
        }
    }

    /// Every address entry of a subnet, whoever made it, lowest first (for
    /// `overlayctl ipam check`). Entries without a readable id or address
    /// are skipped.
    pub async fn subnet_entries(&self, id: u64) -> Result<Vec<AddressEntry>, IpamError> {
        let mut out: Vec<AddressEntry> = self
            .subnet_addresses(id)
            .await?
            .iter()
            .filter_map(|a| address_entry(a, id))
            .collect();
        out.sort_by_key(|e| (e.ip, e.id));
        Ok(out)
    }

    /// One address entry by id; `None` when it does not exist.
    async fn get_entry(&self, id: u64) -> Result<Option<AddressEntry>, IpamError> {
        let call = format!("GET addresses/{id}");
        let r = self
            .call(Method::GET, &format!("addresses/{id}/"), None, &call)
            .await?;
        match (r.status, r.data) {
            (200, Some(d)) => address_entry(&d, 0)
                .map(Some)
                .ok_or_else(|| rejected(&call, "reply lacks id or ip")),
            (404, _) => Ok(None),
            (s, _) => Err(reply_error(&call, s, &r.message)),
        }
    }

    /// Sets an entry's description; `false` when the entry is gone.
    async fn set_description(&self, id: u64, description: &str) -> Result<bool, IpamError> {
        let call = format!("PATCH addresses/{id}");
        let r = self
            .call(
                Method::PATCH,
                &format!("addresses/{id}/"),
                Some(&json!({ "description": description })),
                &call,
            )
            .await?;
        match r.status {
            200 => Ok(true),
            404 if r.message == "Address does not exist" => Ok(false),
            s => Err(reply_error(&call, s, &r.message)),
        }
    }

    // --- owner markers and the owner index ------------------------------------

    /// This cluster's marker on an address object, if any.
    fn our_marker(&self, a: &Value) -> Option<Marker> {
        let m = Marker::parse(a.get("description")?.as_str()?)?;
        (m.owner().cluster == self.cluster).then_some(m)
    }

    fn found(a: &Value, subnet: u64, marker: &Marker) -> Option<OwnerEntry> {
        Some(OwnerEntry {
            id: a.get("id").and_then(as_id)?,
            ip: a.get("ip").and_then(as_ip)?,
            subnet: a.get("subnetId").and_then(as_id).unwrap_or(subnet),
            held_until: marker.held_until(),
        })
    }

    /// Every live and held entry of `owner`, in any subnet (also subnets no
    /// longer configured), lowest address first: one hostname search.
    async fn search_owner(&self, owner: &Owner) -> Result<Vec<OwnerEntry>, IpamError> {
        let call = "GET addresses/search_hostname";
        let path = format!("addresses/search_hostname/{}/", encode_segment(&owner.node));
        let r = self.call(Method::GET, &path, None, call).await?;
        let hits = match (r.status, r.data) {
            (200, Some(Value::Array(a))) => a,
            (404, _) => return Ok(Vec::new()),
            (200, _) => return Err(rejected(call, "reply data is not a list")),
            (s, _) => return Err(reply_error(call, s, &r.message)),
        };
        let mut out: Vec<OwnerEntry> = hits
            .iter()
            .filter_map(|a| {
                let m = self.our_marker(a)?;
                (m.owner() == owner)
                    .then(|| Self::found(a, 0, &m))
                    .flatten()
            })
            .filter(|f| f.subnet != 0)
            .collect();
        sort_found(&mut out);
        Ok(out)
    }

    async fn load_index(&self, zone: &Zone, subnets: &[u64]) -> Result<OwnerIndex, IpamError> {
        let mut entries: HashMap<Owner, Vec<OwnerEntry>> = HashMap::new();
        for &sid in subnets {
            for a in self.subnet_addresses(sid).await? {
                if let Some(m) = self.our_marker(&a)
                    && let Some(f) = Self::found(&a, sid, &m)
                {
                    let v = entries.entry(m.owner().clone()).or_default();
                    if !v.iter().any(|x| x.id == f.id) {
                        v.push(f);
                    }
                }
            }
        }
        entries.values_mut().for_each(|v| sort_found(v));
        tracing::debug!(backend = BACKEND, zone = %zone, owners = entries.len(), "owner index loaded");
        Ok(OwnerIndex {
            loaded_at: Instant::now(),
            stale: false,
            entries,
        })
    }

    fn zone_state(&self, zone: &Zone) -> Result<&ZoneState, IpamError> {
        self.zone_state
            .get(zone)
            .ok_or_else(|| IpamError::UnknownZone {
                zone: zone.to_string(),
                known: self.zones.keys().map(Zone::to_string).collect(),
            })
    }

    fn index_fresh(&self, st: &ZoneState) -> bool {
        lock(&st.index)
            .as_ref()
            .is_some_and(|i| !i.stale && i.loaded_at.elapsed() <= self.index_max_age)
    }

    async fn ensure_index(&self, zone: &Zone, subnets: &[u64]) -> Result<(), IpamError> {
        let st = self.zone_state(zone)?;
        if self.index_fresh(st) {
            return Ok(());
        }
        let seen = lock(&st.loads).0;
        let _g = st.load.lock().await;
        if self.index_fresh(st) {
            return Ok(());
        }
        {
            let loads = lock(&st.loads);
            if loads.0 != seen
                && let Some(e) = &loads.1
            {
                return Err(e.clone());
            }
        }
        let result = self.load_index(zone, subnets).await;
        let mut loads = lock(&st.loads);
        loads.0 += 1;
        match result {
            Ok(idx) => {
                loads.1 = None;
                *lock(&st.index) = Some(idx);
                Ok(())
            }
            Err(e) => {
                loads.1 = Some(e.clone());
                Err(e)
            }
        }
    }

    fn mark_stale(&self, zone: &Zone) {
        if let Some(st) = self.zone_state.get(zone)
            && let Some(i) = lock(&st.index).as_mut()
        {
            i.stale = true;
        }
    }

    /// Applies `f` to the entries of every loaded zone index.
    fn each_index(&self, mut f: impl FnMut(&Zone, &mut HashMap<Owner, Vec<OwnerEntry>>)) {
        for (zone, st) in &self.zone_state {
            if let Some(i) = lock(&st.index).as_mut() {
                f(zone, &mut i.entries);
            }
        }
    }

    /// Drops entry `id` from every index (it is gone).
    fn forget(&self, id: u64) {
        self.each_index(|_, entries| {
            entries.retain(|_, v| {
                v.retain(|f| f.id != id);
                !v.is_empty()
            });
        });
    }

    /// Drops entry `id` from `owner`'s entries only (it is no longer the
    /// owner's; whose it is now, the next reload tells).
    fn forget_for(&self, owner: &Owner, id: u64) {
        self.each_index(|_, entries| {
            if let Some(v) = entries.get_mut(owner) {
                v.retain(|f| f.id != id);
                if v.is_empty() {
                    entries.remove(owner);
                }
            }
        });
    }

    /// Marks entry `id` held (`Some`) or live (`None`) in every index.
    fn set_held(&self, id: u64, held_until: Option<SystemTime>) {
        self.each_index(|_, entries| {
            for f in entries.values_mut().flatten().filter(|f| f.id == id) {
                f.held_until = held_until;
            }
        });
    }

    /// Records a new entry of `owner` in the index of every zone listing
    /// its subnet.
    fn remember(&self, owner: &Owner, f: &OwnerEntry) {
        self.each_index(|zone, entries| {
            if self
                .zones
                .get(zone)
                .is_some_and(|ids| ids.contains(&f.subnet))
            {
                let v = entries.entry(owner.clone()).or_default();
                v.retain(|x| x.id != f.id);
                v.push(f.clone());
                sort_found(v);
            }
        });
    }

    /// Replaces what the indexes know of `owner` with a fresh search result.
    fn replace_owner(&self, owner: &Owner, found: &[OwnerEntry]) {
        self.each_index(|zone, entries| {
            let ids = self.zones.get(zone).map(Vec::as_slice).unwrap_or_default();
            let mine: Vec<OwnerEntry> = found
                .iter()
                .filter(|f| ids.contains(&f.subnet))
                .cloned()
                .collect();
            if mine.is_empty() {
                entries.remove(owner);
            } else {
                entries.insert(owner.clone(), mine);
            }
        });
    }

    /// The zone of a reservation in `subnet`: `asked` when it lists the
    /// subnet, else the first zone that does, else [`unmapped_zone`].
    fn zone_for(&self, subnet: u64, asked: Option<&Zone>) -> Result<Zone, IpamError> {
        if let Some(z) = asked
            && self.zones.get(z).is_some_and(|ids| ids.contains(&subnet))
        {
            return Ok(z.clone());
        }
        match self.zone_of_subnet(subnet) {
            Some(z) => Ok(z.clone()),
            None => unmapped_zone(subnet),
        }
    }

    fn zone_of_subnet(&self, sid: u64) -> Option<&Zone> {
        self.zones
            .iter()
            .find(|(_, ids)| ids.contains(&sid))
            .map(|(z, _)| z)
    }

    async fn reservation(
        &self,
        owner: &Owner,
        zone: &Zone,
        f: &OwnerEntry,
    ) -> Result<Reservation, IpamError> {
        let info = self.subnet_info(f.subnet).await?;
        let address = IpNetwork::new(f.ip, info.network.prefix()).map_err(|e| {
            rejected(
                "reserve",
                format!(
                    "address {} does not fit /{}: {e}",
                    f.ip,
                    info.network.prefix()
                ),
            )
        })?;
        Ok(Reservation {
            address,
            gateway: info.gateway,
            zone: zone.clone(),
            subnet_id: f.subnet.to_string(),
            handle: f.id.to_string(),
            owner: owner.clone(),
            held_until: f.held_until,
        })
    }

    // --- reserve ----------------------------------------------------------------

    fn owner_lock(&self, owner: &Owner) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.owner_locks)
            .entry(owner.clone())
            .or_default()
            .clone()
    }

    fn forget_owner_lock(&self, owner: &Owner, l: Arc<tokio::sync::Mutex<()>>) {
        let mut m = lock(&self.owner_locks);
        // Ours plus the map's: nobody else waits.
        if Arc::strong_count(&l) <= 2 {
            m.remove(owner);
        }
    }

    /// Runs `work` holding `owner`'s lock (no other reserve or adoption of
    /// the same owner runs meanwhile), then drops the lock when nobody
    /// else waits for it.
    async fn under_owner_lock<T>(
        &self,
        owner: &Owner,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let l = self.owner_lock(owner);
        let result = {
            let _g = l.lock().await;
            work.await
        };
        self.forget_owner_lock(owner, l);
        result
    }

    /// The allocation call of `owner` failed in a way that leaves open
    /// whether the server committed it.
    fn ambiguous(&self, owner: &Owner, zone: &Zone, call: &str, why: &str) {
        tracing::warn!(backend = BACKEND, owner = %owner, zone = %zone, call, why, "allocation outcome unknown; the owner's next reserve looks it up in phpIPAM first");
        lock(&self.suspects).insert(owner.clone());
        // Others' reservations may have been made behind our back too.
        self.mark_stale(zone);
    }

    /// Makes `owner`'s held entry `f` live again; `None` when it is gone
    /// or no longer the owner's.
    async fn revive(
        &self,
        owner: &Owner,
        zone: &Zone,
        f: &OwnerEntry,
    ) -> Result<Option<Reservation>, IpamError> {
        let entry = self.get_entry(f.id).await?;
        let marker = entry
            .as_ref()
            .filter(|e| e.ip == f.ip)
            .and_then(|e| e.description.as_deref())
            .and_then(Marker::parse);
        match marker {
            Some(Marker::Held { owner: o, .. }) if &o == owner => {
                if !self.set_description(f.id, &owner.marker()).await? {
                    self.forget(f.id);
                    return Ok(None);
                }
                tracing::info!(backend = BACKEND, owner = %owner, zone = %zone, address = %f.ip, id = f.id, "held address taken back by its owner");
            }
            Some(Marker::Live(o)) if &o == owner => {}
            _ if entry.is_none() => {
                self.forget(f.id);
                return Ok(None);
            }
            _ => {
                self.forget_for(owner, f.id);
                return Ok(None);
            }
        }
        self.set_held(f.id, None);
        let live = OwnerEntry {
            held_until: None,
            ..f.clone()
        };
        self.reservation(owner, zone, &live).await.map(Some)
    }

    async fn reserve_locked(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        let subnets = self.zone_subnets(zone)?.to_vec();
        self.ensure_index(zone, &subnets).await?;
        self.recheck_suspect(owner, zone).await?;
        if let Some(r) = self.known_reservation(owner, zone).await? {
            return Ok(r);
        }
        let body = json!({
            "hostname": owner.node,
            "description": owner.marker(),
            "owner": "overlay",
        });
        for sid in self.allocation_order(&subnets) {
            // Prefix and gateway first: a bad subnet id fails before we
            // allocate anything.
            self.subnet_info(sid).await?;
            if let Some(r) = self.allocate_in(owner, zone, sid, &body).await? {
                return Ok(r);
            }
        }
        Err(IpamError::Exhausted {
            zone: zone.to_string(),
            subnets: subnets.iter().map(u64::to_string).collect(),
        })
    }

    /// When the last allocation of `owner` failed ambiguously, it may have
    /// committed although its reply was lost: asks phpIPAM, not the index,
    /// and puts what it finds into the index.
    async fn recheck_suspect(&self, owner: &Owner, zone: &Zone) -> Result<(), IpamError> {
        if !lock(&self.suspects).contains(owner) {
            return Ok(());
        }
        let found = self.search_owner(owner).await?;
        tracing::info!(backend = BACKEND, owner = %owner, zone = %zone, found = found.len(), "looked the owner up again after an ambiguous allocation");
        self.replace_owner(owner, &found);
        lock(&self.suspects).remove(owner);
        Ok(())
    }

    /// What `owner` already holds in `zone` by the index: its lowest live
    /// address, else a held address made live again.
    async fn known_reservation(
        &self,
        owner: &Owner,
        zone: &Zone,
    ) -> Result<Option<Reservation>, IpamError> {
        let st = self.zone_state(zone)?;
        let known: Vec<OwnerEntry> = lock(&st.index)
            .as_ref()
            .and_then(|i| i.entries.get(owner).cloned())
            .unwrap_or_default();
        // Lowest live address first (the entries are sorted).
        if let Some(f) = known.iter().find(|f| f.held_until.is_none()) {
            return self.reservation(owner, zone, f).await.map(Some);
        }
        for f in known.iter().filter(|f| f.held_until.is_some()) {
            if let Some(r) = self.revive(owner, zone, f).await? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The order to allocate in: subnets recently seen full go last, so
    /// that a zone whose first subnet filled up does not cost an extra
    /// request per reservation.
    fn allocation_order(&self, subnets: &[u64]) -> Vec<u64> {
        let full = lock(&self.full);
        let hinted = |sid: &u64| {
            full.get(sid)
                .is_some_and(|at| at.elapsed() <= self.index_max_age)
        };
        let (later, now): (Vec<u64>, Vec<u64>) = subnets.iter().partition(|s| hinted(s));
        now.into_iter().chain(later).collect()
    }

    /// `POST addresses/first_free/{sid}` for `owner`; `None` when the
    /// subnet is full. A lost allocation race is tried again after
    /// [`ALLOCATION_RACE_BACKOFF`], at most [`ALLOCATION_RACE_ATTEMPTS`]
    /// times in all.
    async fn allocate_in(
        &self,
        owner: &Owner,
        zone: &Zone,
        sid: u64,
        body: &Value,
    ) -> Result<Option<Reservation>, IpamError> {
        let call = format!("POST addresses/first_free/{sid}");
        let path = format!("addresses/first_free/{sid}/");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let r = match self.call(Method::POST, &path, Some(body), &call).await {
                Ok(r) => r,
                Err(e) => {
                    // The server may have allocated before the failure.
                    if !self.is_blocked() {
                        self.ambiguous(owner, zone, &call, &e.to_string());
                    }
                    return Err(e);
                }
            };
            match r.status {
                201 => return self.allocated(owner, zone, sid, &call, &r).await.map(Some),
                404 if r.message.starts_with("No free addresses found") => {
                    lock(&self.full).insert(sid, Instant::now());
                    return Ok(None);
                }
                409 | 500 if attempts < ALLOCATION_RACE_ATTEMPTS && lost_race(&r.message) => {
                    let wait = ALLOCATION_RACE_BACKOFF.delay(attempts);
                    tracing::debug!(backend = BACKEND, owner = %owner, zone = %zone, subnet = sid, attempts, wait = ?wait, "allocation race lost; trying again");
                    tokio::time::sleep(wait).await;
                }
                s => {
                    // A 5xx (a PHP fatal, say) may come after the insert.
                    if s >= 500 && !r.message.contains("has been blocked") {
                        self.ambiguous(owner, zone, &call, &format!("HTTP {s}"));
                    }
                    return Err(reply_error(&call, s, &r.message));
                }
            }
        }
    }

    /// The reservation a `201` reply to `call` made in subnet `sid`,
    /// remembered in the index.
    async fn allocated(
        &self,
        owner: &Owner,
        zone: &Zone,
        sid: u64,
        call: &str,
        r: &ApiReply,
    ) -> Result<Reservation, IpamError> {
        let id = r.id.as_ref().and_then(as_id);
        let ip = r.data.as_ref().and_then(as_ip);
        let (Some(id), Some(ip)) = (id, ip) else {
            self.ambiguous(owner, zone, call, "201 reply lacks id or address");
            return Err(rejected(call, "201 reply lacks id or address"));
        };
        let f = OwnerEntry {
            id,
            ip,
            subnet: sid,
            held_until: None,
        };
        self.remember(owner, &f);
        tracing::info!(backend = BACKEND, owner = %owner, zone = %zone, subnet = sid, address = %ip, id, "reserved");
        self.reservation(owner, zone, &f).await
    }

    // --- release ------------------------------------------------------------------

    async fn delete_id(&self, id: u64, subnet: u64) -> Result<(), IpamError> {
        let call = format!("DELETE addresses/{id}");
        let r = self
            .call(Method::DELETE, &format!("addresses/{id}/"), None, &call)
            .await?;
        match r.status {
            200 => {}
            404 if r.message == "Address does not exist" => {}
            s => return Err(reply_error(&call, s, &r.message)),
        }
        self.forget(id);
        // An address was freed: the subnet is worth trying first again.
        lock(&self.full).remove(&subnet);
        Ok(())
    }

    /// Releases entry `id` of reservation `r`, if it still carries the
    /// owner's marker (see [`IpamBackend::release`]).
    async fn release_entry(
        &self,
        r: &Reservation,
        id: u64,
        hold: Duration,
    ) -> Result<(), IpamError> {
        let Some(entry) = self.get_entry(id).await? else {
            self.forget(id);
            tracing::debug!(backend = BACKEND, owner = %r.owner, address = %r.address, id, "already gone");
            return Ok(());
        };
        let marker = entry.description.as_deref().and_then(Marker::parse);
        let live = match &marker {
            Some(m) if entry.ip == r.address.ip() && m.owner() == &r.owner => {
                matches!(m, Marker::Live(_))
            }
            _ => {
                tracing::warn!(backend = BACKEND, owner = %r.owner, address = %r.address, id, description = ?entry.description, "not released: the phpIPAM entry no longer carries this owner's marker; left alone");
                return Ok(());
            }
        };
        if hold.is_zero() {
            if live && r.is_held() {
                tracing::info!(backend = BACKEND, owner = %r.owner, address = %r.address, id, "not freed: its owner took the held address back since");
                return Ok(());
            }
            self.delete_id(id, entry.subnet_id).await?;
            tracing::info!(backend = BACKEND, owner = %r.owner, address = %r.address, id, "released");
        } else if live {
            let until = hold_end(hold);
            if self
                .set_description(id, &r.owner.held_marker(until))
                .await?
            {
                self.set_held(id, Some(until));
                tracing::info!(backend = BACKEND, owner = %r.owner, address = %r.address, id, until = %humantime::format_rfc3339_seconds(until), "released; held back from other owners");
            } else {
                self.forget(id);
            }
        } else {
            tracing::debug!(backend = BACKEND, owner = %r.owner, address = %r.address, id, "already held; left as it is");
        }
        Ok(())
    }
}

/// The end of a hold-down starting now, in whole seconds (as the marker
/// stores it), at most ten years ahead.
fn hold_end(hold: Duration) -> SystemTime {
    const MAX: Duration = Duration::from_secs(10 * 365 * 86_400);
    let end = SystemTime::now()
        .checked_add(hold.min(MAX))
        .unwrap_or_else(SystemTime::now);
    let secs = end
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn sort_found(v: &mut [OwnerEntry]) {
    v.sort_by_key(|f| (f.ip, f.id));
}

fn address_entry(a: &Value, subnet: u64) -> Option<AddressEntry> {
    let text = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_string);
    Some(AddressEntry {
        id: a.get("id").and_then(as_id)?,
        ip: a.get("ip").and_then(as_ip)?,
        subnet_id: a.get("subnetId").and_then(as_id).unwrap_or(subnet),
        hostname: text("hostname"),
        description: text("description"),
        is_gateway: a.get("is_gateway").and_then(as_id).is_some_and(|g| g == 1),
    })
}

/// The error for a 3xx: never followed, so the token stays here.
fn redirected(call: &str, status: u16, location: &str) -> IpamError {
    let hint = location
        .find("/api/")
        .map(|i| &location[..i])
        .filter(|p| p.starts_with("http://") || p.starts_with("https://"))
        .map(|p| format!(" (here probably {p})"))
        .unwrap_or_default();
    let target = if location.is_empty() {
        "(no Location header)"
    } else {
        location
    };
    rejected(
        call,
        format!(
            "HTTP {status} redirect to {target}: redirects are not followed, so that the credentials and the token go to no other address; set phpIPAM.url to the final address{hint}"
        ),
    )
}

fn without_url(e: &reqwest::Error) -> String {
    // The URL holds no secret, but keep messages short and stable.
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(&format!(" for url ({u})"), "");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[async_trait]
impl IpamBackend for PhpIpamBackend {
    fn name(&self) -> &str {
        BACKEND
    }

    async fn reserve(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        self.zone_subnets(zone)?;
        self.under_owner_lock(owner, self.reserve_locked(owner, zone))
            .await
    }

    async fn release(&self, reservation: &Reservation, hold: Duration) -> Result<(), IpamError> {
        if !hold.is_zero() && reservation.is_held() {
            // Held already: leave the hold as it is.
            return Ok(());
        }
        let id = match reservation.handle.trim().parse::<u64>() {
            Ok(id) => id,
            // No handle (rebuilt from a NodeOverlayIp status): find the entry.
            Err(_) => match self
                .search_owner(&reservation.owner)
                .await?
                .into_iter()
                .find(|f| f.ip == reservation.address.ip())
            {
                Some(f) => f.id,
                None => return Ok(()),
            },
        };
        self.release_entry(reservation, id, hold).await
    }

    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        let allowed = match zone {
            Some(z) => Some(self.zone_subnets(z)?.to_vec()),
            None => None,
        };
        let found = self.search_owner(owner).await?;
        // Sorted: the first live one is the lowest address.
        let Some(f) = found.iter().find(|f| {
            f.held_until.is_none() && allowed.as_ref().is_none_or(|a| a.contains(&f.subnet))
        }) else {
            return Ok(None);
        };
        let z = self.zone_for(f.subnet, zone)?;
        self.reservation(owner, &z, f).await.map(Some)
    }

    async fn lookup_all(&self, owner: &Owner) -> Result<Vec<Reservation>, IpamError> {
        let mut out = Vec::new();
        for f in self
            .search_owner(owner)
            .await?
            .iter()
            .filter(|f| f.held_until.is_none())
        {
            let z = self.zone_for(f.subnet, None)?;
            out.push(self.reservation(owner, &z, f).await?);
        }
        Ok(out)
    }

    async fn list(&self) -> Result<Vec<Reservation>, IpamError> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for (zone, ids) in &self.zones {
            for &sid in ids {
                if seen.contains(&sid) {
                    continue;
                }
                seen.push(sid);
                for a in self.subnet_addresses(sid).await? {
                    if let Some(m) = self.our_marker(&a)
                        && let Some(f) = Self::found(&a, sid, &m)
                    {
                        out.push(self.reservation(m.owner(), zone, &f).await?);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn inspect_adoption(
        &self,
        owner: &Owner,
        address: IpNetwork,
    ) -> Result<Adoption, IpamError> {
        self.inspect_adoption_at(owner, address).await
    }

    async fn adopt(&self, owner: &Owner, address: IpNetwork) -> Result<Adoption, IpamError> {
        self.adopt_at(owner, address).await
    }
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_ips_in_every_shape() {
        assert_eq!(as_id(&json!("12")), Some(12));
        assert_eq!(as_id(&json!(12)), Some(12));
        assert_eq!(
            as_ip(&json!("192.0.2.3")),
            Some("192.0.2.3".parse().unwrap())
        );
        assert_eq!(
            as_ip(&json!("3221226036")),
            Some("192.0.2.52".parse().unwrap())
        );
        assert_eq!(as_u8(&json!("24")), Some(24));
        assert_eq!(as_ip(&json!("x")), None);
    }

    #[test]
    fn classification() {
        assert!(reply_error("c", 500, "Invalid username or password").kind() == "auth");
        assert!(reply_error("c", 401, "invalid permissions").kind() == "permission");
        assert!(reply_error("c", 401, "Unauthorized").kind() == "auth");
        assert!(
            reply_error(
                "c",
                500,
                "Your IP has been blocked for 5 minutes because of excessive login failures"
            )
            .is_retryable()
        );
        assert!(reply_error("c", 500, "").is_retryable());
        assert!(reply_error("c", 502, "").is_retryable());
        assert!(!reply_error("c", 400, "Invalid application id").is_retryable());
        assert!(!reply_error("c", 503, "SSL connection is required for API").is_retryable());
        assert!(!reply_error("c", 400, "Invalid subnet Id (999)").is_retryable());
    }

    #[test]
    fn security_warnings_say_what_is_exposed() {
        let https = PhpIpamConfig::new("https://ipam.example.invalid", "iks");
        assert!(https.security_warnings().is_empty());

        let http = PhpIpamConfig::new("http://ipam.example.invalid", "iks");
        let w = http.security_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        for what in [
            "http://ipam.example.invalid",
            "password",
            "token",
            "clear text",
        ] {
            assert!(w[0].contains(what), "{what}: {w:?}");
        }
        let upper = PhpIpamConfig::new("HTTP://ipam.example.invalid", "iks");
        assert_eq!(upper.security_warnings().len(), 1);

        let mut unchecked = https.clone();
        unchecked.insecure_skip_tls_verify = true;
        let w = unchecked.security_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        for what in [
            "insecureSkipTLSVerify",
            "certificate is not checked",
            "pose as phpIPAM",
        ] {
            assert!(w[0].contains(what), "{what}: {w:?}");
        }

        let mut both = http.clone();
        both.insecure_skip_tls_verify = true;
        assert_eq!(both.security_warnings().len(), 2);
    }

    #[test]
    fn unmapped_subnets_get_a_zone_of_their_own() {
        assert_eq!(unmapped_zone(7).unwrap().as_str(), "unmapped-subnet-7");
    }

    #[test]
    fn redirect_errors_name_the_location_and_the_fix() {
        let e = redirected("login", 301, "https://ipam.example.invalid/api/iks/user/");
        let t = e.to_string();
        assert!(!e.is_retryable());
        assert!(t.contains("HTTP 301"), "{t}");
        assert!(
            t.contains("https://ipam.example.invalid/api/iks/user/"),
            "{t}"
        );
        assert!(
            t.contains("(here probably https://ipam.example.invalid)"),
            "{t}"
        );
        let t = redirected("login", 302, "").to_string();
        assert!(t.contains("no Location header"), "{t}");
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials::User {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
