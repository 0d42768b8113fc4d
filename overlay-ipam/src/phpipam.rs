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
//! - **reserve**: an index of the zone's subnets (owner marker in the
//!   description → address), loaded with one listing per subnet and
//!   refreshed when older than `ownerIndexMaxAgeSeconds`, answers "does this
//!   owner already hold an address"; otherwise `POST
//!   addresses/first_free/{subnet}` with `hostname` = node, `description` =
//!   owner marker, falling through to the next subnet on `No free addresses
//!   found`. Subnet prefix and gateway are cached, and a subnet seen full
//!   is tried last (until we release in it or the hint ages out), so a new
//!   reservation costs one request once the caches are warm.
//! - **release**: `DELETE addresses/{id}`; already gone is success.
//! - **lookup**: `GET addresses/search_hostname/{node}` filtered by marker
//!   (authoritative, not cached).
//! - **list**: every address with this cluster's owner marker in the
//!   configured subnets.
//!
//! Tokens and passwords are never logged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnetwork::IpNetwork;
use overlay_core::{IpamBackend, IpamError, Owner, ParseError, Reservation, Zone};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore};

const BACKEND: &str = "phpipam";

/// How long a refused login is remembered before the next attempt.
pub const AUTH_FAILURE_HOLD: Duration = Duration::from_secs(600);

/// Environment variable holding the API user name.
pub const ENV_USERNAME: &str = "PHPIPAM_USERNAME";
/// Environment variable holding the API user's password.
pub const ENV_PASSWORD: &str = "PHPIPAM_PASSWORD";
/// Environment variable holding a static app code (apps with `ssl_code`
/// security).
pub const ENV_APP_CODE: &str = "PHPIPAM_APP_CODE";

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
/// environment variables are not set), `timeoutSeconds` (10),
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
}

/// A secret string; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
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
}

impl Credentials {
    /// Resolves credentials as a Kubernetes deployment provides them:
    /// `PHPIPAM_APP_CODE` or `appCodeFile` for an app code; otherwise
    /// `PHPIPAM_USERNAME`/`PHPIPAM_PASSWORD`, each falling back to
    /// `usernameFile`/`passwordFile`. The error names what is missing.
    pub fn resolve(config: &PhpIpamConfig) -> Result<Self, (String, String)> {
        Self::resolve_with(config, |k| std::env::var(k).ok())
    }

    /// [`Credentials::resolve`] with an explicit environment lookup.
    pub fn resolve_with(
        config: &PhpIpamConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, (String, String)> {
        let read = |field: &str, path: &Path| -> Result<String, (String, String)> {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| {
                    (
                        field.to_string(),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })
        };
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        if let Some(code) = nonempty(env(ENV_APP_CODE)) {
            return Ok(Self::AppCode(Secret(code)));
        }
        if let Some(p) = &config.app_code_file {
            return Ok(Self::AppCode(Secret(read("appCodeFile", p)?)));
        }
        let username = match (nonempty(env(ENV_USERNAME)), &config.username_file) {
            (Some(u), _) => u,
            (None, Some(p)) => read("usernameFile", p)?,
            (None, None) => {
                return Err((
                    ENV_USERNAME.into(),
                    "not set; set PHPIPAM_USERNAME/PHPIPAM_PASSWORD (e.g. from a Secret), usernameFile/passwordFile, or an app code".into(),
                ));
            }
        };
        let password = match (nonempty(env(ENV_PASSWORD)), &config.password_file) {
            (Some(p), _) => p,
            (None, Some(p)) => read("passwordFile", p)?,
            (None, None) => {
                return Err((
                    ENV_PASSWORD.into(),
                    "not set; set PHPIPAM_PASSWORD or passwordFile".into(),
                ));
            }
        };
        Ok(Self::User {
            username,
            password: Secret(password),
        })
    }
}

/// A subnet's prefix and gateway, as cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetInfo {
    /// The subnet.
    pub network: IpNetwork,
    /// Its gateway, when phpIPAM has one marked.
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone)]
struct Found {
    id: u64,
    ip: IpAddr,
    subnet: u64,
}

#[derive(Debug)]
struct OwnerIndex {
    loaded_at: Instant,
    stale: bool,
    entries: HashMap<Owner, Found>,
}

#[derive(Debug, Default)]
struct ZoneState {
    load: tokio::sync::Mutex<()>,
    index: Mutex<Option<OwnerIndex>>,
    /// Index loads attempted, and how the last one failed (shared with the
    /// callers that waited for it).
    loads: Mutex<(u64, Option<IpamError>)>,
}

#[derive(Debug, Default)]
struct TokenState {
    token: Option<Secret>,
    generation: u64,
    /// A refused login, remembered for [`AUTH_FAILURE_HOLD`].
    failed: Option<(Instant, IpamError)>,
    /// Login attempts so far, and how the last one failed: callers that
    /// waited for a login in flight share its failure instead of each
    /// trying again.
    attempts: u64,
    last_error: Option<IpamError>,
}

/// One decoded response.
#[derive(Debug, Clone)]
struct ApiReply {
    status: u16,
    message: String,
    id: Option<Value>,
    data: Option<Value>,
}

/// The phpIPAM [`IpamBackend`].
pub struct PhpIpamBackend {
    base: String,
    cluster: String,
    zones: BTreeMap<Zone, Vec<u64>>,
    credentials: Credentials,
    http: reqwest::Client,
    limiter: Semaphore,
    index_max_age: Duration,
    token: Mutex<TokenState>,
    login_lock: tokio::sync::Mutex<()>,
    subnets: Mutex<HashMap<u64, Arc<OnceCell<SubnetInfo>>>>,
    zone_state: HashMap<Zone, ZoneState>,
    owner_locks: Mutex<HashMap<Owner, Arc<tokio::sync::Mutex<()>>>>,
    /// Subnets seen full, and when: tried last until the hint is older than
    /// the owner index age or we release an address in them.
    full: Mutex<HashMap<u64, Instant>>,
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

/// Classifies a phpIPAM error reply: whether a retry can help.
pub fn classify(call: &str, status: u16, message: &str) -> IpamError {
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

impl PhpIpamBackend {
    /// Builds the backend. `cluster` is this cluster's id, written into the
    /// owner marker; `list` returns only this cluster's reservations.
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
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Another thread may win the race; either provider works.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_seconds))
            .connect_timeout(Duration::from_secs(config.connect_timeout_seconds.max(1)))
            .user_agent(concat!("overlay-ipam/", env!("CARGO_PKG_VERSION")));
        if config.insecure_skip_tls_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &config.ca_file {
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
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| invalid("phpIPAM", format!("cannot build the HTTP client: {e}")))?;
        let base = format!(
            "{}/api/{}",
            config.url.trim().trim_end_matches('/'),
            config.app_id.trim()
        );
        let zone_state = zones
            .keys()
            .map(|z| (z.clone(), ZoneState::default()))
            .collect();
        Ok(Self {
            base,
            cluster: cluster.to_string(),
            zones,
            credentials,
            http,
            limiter: Semaphore::new(config.max_concurrent_requests),
            index_max_age: Duration::from_secs(config.owner_index_max_age_seconds),
            token: Mutex::new(TokenState::default()),
            login_lock: tokio::sync::Mutex::new(()),
            subnets: Mutex::new(HashMap::new()),
            zone_state,
            owner_locks: Mutex::new(HashMap::new()),
            full: Mutex::new(HashMap::new()),
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

    fn zone_subnets(&self, zone: &Zone) -> Result<&[u64], IpamError> {
        self.zones
            .get(zone)
            .map(Vec::as_slice)
            .ok_or_else(|| IpamError::UnknownZone {
                zone: zone.to_string(),
                known: self.zones.keys().map(Zone::to_string).collect(),
            })
    }

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
        let _permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| unavailable(call, "backend is shutting down"))?;
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
        let bytes = resp.bytes().await.map_err(|e| {
            unavailable(
                call,
                format!("reading the response failed: {}", without_url(&e)),
            )
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
        Ok(reply)
    }

    /// A valid token (logging in if needed, one login at a time).
    async fn token(&self) -> Result<(u64, Secret), IpamError> {
        let (username, password) = match &self.credentials {
            Credentials::AppCode(code) => return Ok((0, code.clone())),
            Credentials::User { username, password } => (username, password),
        };
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
        tracing::info!(backend = BACKEND, user = %username, "logging in to phpIPAM");
        let result = self.login_once(username, password).await;
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
                    tracing::error!(backend = BACKEND, user = %username, error = %err, "phpIPAM login refused; not retrying for {} s", AUTH_FAILURE_HOLD.as_secs());
                    s.failed = Some((Instant::now(), err.clone()));
                } else {
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
            None => Err(classify("login", reply.status, &reply.message)),
        }
    }

    fn current_token(&self) -> Result<Option<(u64, Secret)>, IpamError> {
        let s = lock(&self.token);
        if let Some(t) = &s.token {
            return Ok(Some((s.generation, t.clone())));
        }
        if let Some((at, err)) = &s.failed
            && at.elapsed() < AUTH_FAILURE_HOLD
        {
            return Err(err.clone());
        }
        Ok(None)
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
            let (generation, token) = self.token().await?;
            let reply = self
                .send(method.clone(), path, body, Some(&token), None, call)
                .await?;
            let token_error = reply.status == 401 && reply.message == "Unauthorized";
            if token_error && attempt == 0 && matches!(self.credentials, Credentials::User { .. }) {
                tracing::info!(backend = BACKEND, call, "token refused; logging in again");
                self.drop_token(generation);
                continue;
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
        let (_, token) = self.token().await?;
        if matches!(self.credentials, Credentials::AppCode(_)) {
            // No login call for app codes: prove the code with a read.
            let r = self
                .send(
                    Method::GET,
                    "addresses/tags/",
                    None,
                    Some(&token),
                    None,
                    "GET addresses/tags",
                )
                .await?;
            if r.status != 200 {
                return Err(classify("GET addresses/tags", r.status, &r.message));
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
            return Err(classify(&call, r.status, &r.message));
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
            let e = classify(&call, r.status, &r.message);
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
            (s, _) => Err(classify(&call, s, &r.message)),
        }
    }

    /// Our owner (this cluster's marker) of an address object, if any.
    fn our_owner(&self, a: &Value) -> Option<Owner> {
        let owner = Owner::from_marker(a.get("description")?.as_str()?)?;
        (owner.cluster == self.cluster).then_some(owner)
    }

    fn found(a: &Value, subnet: u64) -> Option<Found> {
        Some(Found {
            id: a.get("id").and_then(as_id)?,
            ip: a.get("ip").and_then(as_ip)?,
            subnet: a.get("subnetId").and_then(as_id).unwrap_or(subnet),
        })
    }

    async fn load_index(&self, zone: &Zone, subnets: &[u64]) -> Result<OwnerIndex, IpamError> {
        let mut entries = HashMap::new();
        for &sid in subnets {
            for a in self.subnet_addresses(sid).await? {
                if let (Some(owner), Some(f)) = (self.our_owner(&a), Self::found(&a, sid)) {
                    entries.entry(owner).or_insert(f);
                }
            }
        }
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

    async fn reservation(
        &self,
        owner: &Owner,
        zone: &Zone,
        f: &Found,
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
            held_until: None,
        })
    }

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

    async fn reserve_locked(&self, owner: &Owner, zone: &Zone) -> Result<Reservation, IpamError> {
        let subnets = self.zone_subnets(zone)?.to_vec();
        self.ensure_index(zone, &subnets).await?;
        let st = self.zone_state(zone)?;
        let known = lock(&st.index)
            .as_ref()
            .and_then(|i| i.entries.get(owner).cloned());
        if let Some(f) = known {
            return self.reservation(owner, zone, &f).await;
        }
        let body = json!({
            "hostname": owner.node,
            "description": owner.marker(),
            "owner": "overlay",
        });
        // Subnets recently seen full go last, so that a zone whose first
        // subnet filled up does not cost an extra request per reservation.
        let order: Vec<u64> = {
            let full = lock(&self.full);
            let hinted = |sid: &u64| {
                full.get(sid)
                    .is_some_and(|at| at.elapsed() <= self.index_max_age)
            };
            let (later, now): (Vec<u64>, Vec<u64>) = subnets.iter().partition(|s| hinted(s));
            now.into_iter().chain(later).collect()
        };
        for &sid in &order {
            // Prefix and gateway first: a bad subnet id fails before we
            // allocate anything.
            self.subnet_info(sid).await?;
            let call = format!("POST addresses/first_free/{sid}");
            let mut attempts = 0;
            loop {
                attempts += 1;
                let r = match self
                    .call(
                        Method::POST,
                        &format!("addresses/first_free/{sid}/"),
                        Some(&body),
                        &call,
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        // The server may have allocated before the failure:
                        // reload the index before the next reserve.
                        self.mark_stale(zone);
                        return Err(e);
                    }
                };
                match r.status {
                    201 => {
                        let id = r.id.as_ref().and_then(as_id);
                        let ip = r.data.as_ref().and_then(as_ip);
                        let (Some(id), Some(ip)) = (id, ip) else {
                            self.mark_stale(zone);
                            return Err(rejected(&call, "201 reply lacks id or address"));
                        };
                        let f = Found {
                            id,
                            ip,
                            subnet: sid,
                        };
                        if let Some(i) = lock(&st.index).as_mut() {
                            i.entries.insert(owner.clone(), f.clone());
                        }
                        tracing::info!(backend = BACKEND, owner = %owner, zone = %zone, subnet = sid, address = %ip, id, "reserved");
                        return self.reservation(owner, zone, &f).await;
                    }
                    404 if r.message.starts_with("No free addresses found") => {
                        lock(&self.full).insert(sid, Instant::now());
                        break;
                    }
                    // Servers with the API lock disabled lose allocation
                    // races with 409 or a 500 duplicate-key error: retry.
                    409 | 500
                        if attempts < 5
                            && (r.message == "IP address already exists"
                                || r.message.contains("Duplicate entry")) =>
                    {
                        continue;
                    }
                    s => return Err(classify(&call, s, &r.message)),
                }
            }
        }
        Err(IpamError::Exhausted {
            zone: zone.to_string(),
            subnets: subnets.iter().map(u64::to_string).collect(),
        })
    }

    fn zone_of_subnet(&self, sid: u64) -> Option<&Zone> {
        self.zones
            .iter()
            .find(|(_, ids)| ids.contains(&sid))
            .map(|(z, _)| z)
    }

    fn forget(&self, id: u64) {
        for st in self.zone_state.values() {
            if let Some(i) = lock(&st.index).as_mut() {
                i.entries.retain(|_, f| f.id != id);
            }
        }
    }

    async fn delete_id(&self, id: u64) -> Result<(), IpamError> {
        let call = format!("DELETE addresses/{id}");
        let r = self
            .call(Method::DELETE, &format!("addresses/{id}/"), None, &call)
            .await?;
        match r.status {
            200 => {}
            404 if r.message == "Address does not exist" => {}
            s => return Err(classify(&call, s, &r.message)),
        }
        self.forget(id);
        Ok(())
    }
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
        let l = self.owner_lock(owner);
        let result = {
            let _g = l.lock().await;
            self.reserve_locked(owner, zone).await
        };
        self.forget_owner_lock(owner, l);
        result
    }

    async fn release(
        &self,
        reservation: &Reservation,
        hold: std::time::Duration,
    ) -> Result<(), IpamError> {
        let _ = hold;
        if let Ok(sid) = reservation.subnet_id.parse::<u64>() {
            lock(&self.full).remove(&sid);
        }
        if let Ok(id) = reservation.handle.trim().parse::<u64>() {
            self.delete_id(id).await?;
        } else if let Some(r) = self
            .lookup(&reservation.owner, Some(&reservation.zone))
            .await?
            && r.address.ip() == reservation.address.ip()
            && let Ok(id) = r.handle.parse::<u64>()
        {
            self.delete_id(id).await?;
        }
        tracing::info!(backend = BACKEND, owner = %reservation.owner, address = %reservation.address, "released");
        Ok(())
    }

    async fn lookup(
        &self,
        owner: &Owner,
        zone: Option<&Zone>,
    ) -> Result<Option<Reservation>, IpamError> {
        let allowed: Vec<u64> = match zone {
            Some(z) => self.zone_subnets(z)?.to_vec(),
            None => self.zones.values().flatten().copied().collect(),
        };
        let call = "GET addresses/search_hostname";
        let path = format!("addresses/search_hostname/{}/", encode_segment(&owner.node));
        let r = self.call(Method::GET, &path, None, call).await?;
        let hits = match (r.status, r.data) {
            (200, Some(Value::Array(a))) => a,
            (404, _) => return Ok(None),
            (200, _) => return Err(rejected(call, "reply data is not a list")),
            (s, _) => return Err(classify(call, s, &r.message)),
        };
        for a in &hits {
            if self.our_owner(a).as_ref() != Some(owner) {
                continue;
            }
            let Some(f) = Self::found(a, 0) else { continue };
            if !allowed.contains(&f.subnet) {
                continue;
            }
            let Some(z) = zone.or_else(|| self.zone_of_subnet(f.subnet)) else {
                continue;
            };
            return self.reservation(owner, z, &f).await.map(Some);
        }
        Ok(None)
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
                    if let (Some(owner), Some(f)) = (self.our_owner(&a), Self::found(&a, sid)) {
                        out.push(self.reservation(&owner, zone, &f).await?);
                    }
                }
            }
        }
        Ok(out)
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
        assert!(classify("c", 500, "Invalid username or password").kind() == "auth");
        assert!(classify("c", 401, "invalid permissions").kind() == "permission");
        assert!(classify("c", 401, "Unauthorized").kind() == "auth");
        assert!(
            classify(
                "c",
                500,
                "Your IP has been blocked for 5 minutes because of excessive login failures"
            )
            .is_retryable()
        );
        assert!(classify("c", 500, "").is_retryable());
        assert!(classify("c", 502, "").is_retryable());
        assert!(!classify("c", 400, "Invalid application id").is_retryable());
        assert!(!classify("c", 503, "SSL connection is required for API").is_retryable());
        assert!(!classify("c", 400, "Invalid subnet Id (999)").is_retryable());
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
