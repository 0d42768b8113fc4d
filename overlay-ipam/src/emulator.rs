//! An in-process phpIPAM 1.8 emulator (feature `testing`).
//!
//! It serves the REST API on `127.0.0.1` the way the real server answered in
//! the recorded transcript (`phpipam/api-transcript.md`, beside the design
//! notes): the `{code, success, message, id, data, time}` envelope, the
//! same status codes and messages, ids as strings in 201 replies and numbers
//! elsewhere, `mask` as a string, decimal `ip` values after the first hit of
//! a search (by hostname or by ip), 404 instead of empty lists, a 500 with
//! an empty HTML body when deleting by an ip that exists nowhere, one token
//! per user with sliding expiry, the login-failure IP block, read-only
//! apps, and `first_free` allocation under a lock with a unique (ip,
//! subnet) key.
//!
//! Tests can add latency, inject faults ([`Fault`]: also faults that strike
//! after the request was committed, as a timeout or a cut connection does on
//! a real network), shorten the login-failure block
//! ([`EmulatorConfig::login_block`]), change passwords and count requests.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! use overlay_ipam::emulator::{Emulator, EmulatorConfig};
//! let emu = Emulator::start(EmulatorConfig::default()).await?;
//! assert!(emu.url().starts_with("http://127.0.0.1:"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```
//!
//! Known differences: only JSON responses (no XML mode), no TLS (so apps
//! with `ssl_code` security are served over plain HTTP), only the `user`,
//! `subnets` and `addresses` controllers, and a shortened login block (when
//! a test asks for one) is named in seconds in the block message.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

/// What an API app may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppPermissions {
    /// `app_permissions=1`: reads only; writes get 401 `invalid permissions`.
    Read,
    /// `app_permissions=2`.
    ReadWrite,
    /// `app_permissions=3`.
    Admin,
}

/// An API app's security mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSecurity {
    /// `none`: user login over HTTP.
    None,
    /// `ssl_token`: answers 503 `SSL connection is required for API` over HTTP.
    SslToken,
    /// `ssl_code`: the app code is the token (accepted over HTTP here).
    SslCode(String),
    /// `user`: allowed by the schema, rejected by the API (503).
    User,
}

/// An API app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// App id (the path segment after `/api/`).
    pub id: String,
    /// Permissions.
    pub permissions: AppPermissions,
    /// Security mode.
    pub security: AppSecurity,
}

impl App {
    /// A read/write app with security `none`.
    pub fn read_write(id: &str) -> Self {
        Self {
            id: id.into(),
            permissions: AppPermissions::ReadWrite,
            security: AppSecurity::None,
        }
    }
}

/// A subnet the emulator starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetSpec {
    /// Subnet id.
    pub id: u64,
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (at most 30).
    pub mask: u8,
    /// Description.
    pub description: String,
    /// Gateway address: created as an address with `is_gateway=1`.
    pub gateway: Option<Ipv4Addr>,
}

/// How the emulator starts.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// API apps.
    pub apps: Vec<App>,
    /// `(username, password)` pairs.
    pub users: Vec<(String, String)>,
    /// Subnets.
    pub subnets: Vec<SubnetSpec>,
    /// Delay added to every request.
    pub latency: Duration,
    /// Token lifetime (sliding), 6 hours by default.
    pub token_lifetime: Duration,
    /// How long the client IP stays blocked after
    /// [`LOGIN_FAILURES_BEFORE_BLOCK`] failed logins: 5 minutes, as on a
    /// real server, whose message then reads `Your IP has been blocked for
    /// 5 minutes because of excessive login failures`. Tests may shorten
    /// it; the message then names the configured time (`for 2 seconds`
    /// when it is not a whole number of minutes), which a real server never
    /// does.
    pub login_block: Duration,
}

/// The user of the default configuration.
pub const USER: &str = "apiuser";
/// [`USER`]'s password in the default configuration.
pub const PASSWORD: &str = "ApiUser-Test-1";

/// Credentials of [`USER`] with `password` ([`PASSWORD`], or a wrong one
/// to test refusals).
pub fn user_credentials(password: &str) -> crate::phpipam::Credentials {
    crate::phpipam::Credentials::User {
        username: USER.into(),
        password: crate::phpipam::Secret::new(password),
    }
}

impl Default for EmulatorConfig {
    /// The transcript's server: app `overlay` (admin, security none), apps
    /// `overlay_ro` (read-only), `overlay_ssl` (ssl_token), `overlay_user`
    /// (security user); user `apiuser` / `ApiUser-Test-1`; subnets 1
    /// (192.0.2.0/24, gateway .1), 2 (198.51.100.0/29) and 3
    /// (203.0.113.0/24).
    fn default() -> Self {
        Self {
            apps: vec![
                App {
                    id: "overlay".into(),
                    permissions: AppPermissions::Admin,
                    security: AppSecurity::None,
                },
                App {
                    id: "overlay_ro".into(),
                    permissions: AppPermissions::Read,
                    security: AppSecurity::None,
                },
                App {
                    id: "overlay_ssl".into(),
                    permissions: AppPermissions::Admin,
                    security: AppSecurity::SslToken,
                },
                App {
                    id: "overlay_user".into(),
                    permissions: AppPermissions::Admin,
                    security: AppSecurity::User,
                },
            ],
            users: vec![(USER.into(), PASSWORD.into())],
            subnets: vec![
                SubnetSpec {
                    id: 1,
                    network: Ipv4Addr::new(192, 0, 2, 0),
                    mask: 24,
                    description: "TEST-NET-1 192.0.2.0/24 (gateway .1)".into(),
                    gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
                },
                SubnetSpec {
                    id: 2,
                    network: Ipv4Addr::new(198, 51, 100, 0),
                    mask: 29,
                    description: "TEST-NET-2 198.51.100.0/29 (exhaustion)".into(),
                    gateway: None,
                },
                SubnetSpec {
                    id: 3,
                    network: Ipv4Addr::new(203, 0, 113, 0),
                    mask: 24,
                    description: "TEST-NET-3 203.0.113.0/24 (concurrency)".into(),
                    gateway: None,
                },
            ],
            latency: Duration::ZERO,
            token_lifetime: Duration::from_secs(6 * 3600),
            login_block: BLOCK_WINDOW,
        }
    }
}

/// A fault applied to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The connection is cut before a complete response arrives (server
    /// down or restarting).
    Refuse,
    /// HTTP 500 with an empty `text/html` body (a PHP fatal error).
    ServerError,
    /// The request is delayed this much more before it is handled.
    Slow(Duration),
    /// Every token expires just before the request is handled.
    ExpireToken,
    /// The request is handled (an allocation is committed), then the
    /// connection is cut halfway through the reply body: the client cannot
    /// know whether the call took effect.
    CutAfterCommit,
    /// The request is handled (an allocation is committed), then the reply
    /// is held back this long: a client with a shorter timeout gives up
    /// although the call took effect.
    SlowAfterCommit(Duration),
    /// The request is answered 409 `IP address already exists` and not
    /// handled: how a server with the API lock disabled answers a
    /// `first_free` that lost the race for its address to another client.
    LostRace,
    /// The request is answered 500 with a duplicate-key database error and
    /// not handled: the other way such a server reports a lost allocation
    /// race.
    DuplicateKey,
}

/// An address as the emulator stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedAddress {
    /// Address id.
    pub id: u64,
    /// Subnet id.
    pub subnet_id: u64,
    /// The address.
    pub ip: Ipv4Addr,
    /// Gateway flag.
    pub is_gateway: bool,
    /// Description.
    pub description: Option<String>,
    /// Hostname.
    pub hostname: Option<String>,
    /// Owner field.
    pub owner: Option<String>,
    /// Tag (state): 2 = Used.
    pub tag: i64,
    /// Other stored fields (mac, note, ...).
    pub extra: BTreeMap<String, String>,
    /// Last PATCH time.
    pub edit_date: Option<String>,
}

#[derive(Debug)]
struct Subnet {
    spec: SubnetSpec,
    is_full: bool,
}

#[derive(Debug)]
struct UserState {
    password: String,
    token: Option<String>,
    valid_until: SystemTime,
}

#[derive(Debug)]
struct Db {
    apps: Vec<App>,
    users: BTreeMap<String, UserState>,
    subnets: BTreeMap<u64, Subnet>,
    addresses: BTreeMap<u64, EmulatedAddress>,
    next_id: u64,
    failures: u32,
    last_failure: Option<Instant>,
    block_window: Duration,
    rng: u64,
}

#[derive(Debug)]
struct Inner {
    db: Mutex<Db>,
    latency_us: AtomicU64,
    token_lifetime: Duration,
    faults: Mutex<VecDeque<Fault>>,
    total: AtomicU64,
    counts: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running emulator; it stops when dropped.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The database error of an insert that lost an allocation race
/// ([`Fault::DuplicateKey`]).
const DUPLICATE_KEY: &str = "SQLSTATE[23000]: Integrity constraint violation: 1062 Duplicate entry '3405803777-3' for key 'sid_ip_unique'";

/// Most failed logins tolerated before the client IP is blocked.
pub const LOGIN_FAILURES_BEFORE_BLOCK: u32 = 11;
const BLOCK_WINDOW: Duration = Duration::from_secs(300);

impl Emulator {
    /// Starts an emulator on `127.0.0.1` (ephemeral port) in the current
    /// tokio runtime.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Self> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an emulator listening on `addr` (port 0: an ephemeral one) in
    /// the current tokio runtime. The socket is opened by the calling
    /// thread, so a thread inside a network namespace serves it there (a
    /// container in that namespace reaches it by an address of its own).
    pub async fn start_on(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let mut db = Db {
            apps: config.apps,
            users: config
                .users
                .into_iter()
                .map(|(u, p)| {
                    (
                        u,
                        UserState {
                            password: p,
                            token: None,
                            valid_until: UNIX_EPOCH,
                        },
                    )
                })
                .collect(),
            subnets: BTreeMap::new(),
            addresses: BTreeMap::new(),
            next_id: 1,
            failures: 0,
            last_failure: None,
            block_window: config.login_block,
            rng: seed(),
        };
        for spec in config.subnets {
            if let Some(gw) = spec.gateway {
                // The first address of its subnet: it cannot be taken.
                let _ = db.insert(EmulatedAddress {
                    is_gateway: true,
                    description: Some("Gateway".into()),
                    hostname: Some("gw.example.invalid".into()),
                    ..blank(spec.id, gw)
                });
            }
            db.subnets.insert(
                spec.id,
                Subnet {
                    spec,
                    is_full: false,
                },
            );
        }
        let inner = Arc::new(Inner {
            db: Mutex::new(db),
            latency_us: AtomicU64::new(config.latency.as_micros() as u64),
            token_lifetime: config.token_lifetime,
            faults: Mutex::new(VecDeque::new()),
            total: AtomicU64::new(0),
            counts: Mutex::new(BTreeMap::new()),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            inner,
            stop: Some(tx),
        })
    }

    /// Base URL (`http://ADDRESS:PORT`, by default `http://127.0.0.1:PORT`);
    /// the API is under `/api/{app}/`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the delay added to every request.
    pub fn set_latency(&self, latency: Duration) {
        self.inner
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Applies `fault` to each of the next `times` requests (faults queue up
    /// in order).
    pub fn inject(&self, fault: Fault, times: usize) {
        let mut q = lock(&self.inner.faults);
        for _ in 0..times {
            q.push_back(fault.clone());
        }
    }

    /// Expires every user's token now (as `UPDATE users SET
    /// token_valid_until = NOW() - INTERVAL 1 HOUR`).
    pub fn expire_tokens(&self) {
        lock(&self.inner.db).expire_tokens();
    }

    /// Clears the login-failure counter and block (`DELETE FROM
    /// loginAttempts`).
    pub fn clear_login_block(&self) {
        let mut db = lock(&self.inner.db);
        db.failures = 0;
        db.last_failure = None;
    }

    /// Changes a user's password (as an administrator would, e.g. when the
    /// credentials are rotated). The user's token stays valid, as on a real
    /// server; see [`Emulator::expire_tokens`]. Returns whether the user
    /// exists.
    pub fn set_password(&self, username: &str, password: &str) -> bool {
        match lock(&self.inner.db).users.get_mut(username) {
            Some(u) => {
                u.password = password.to_string();
                true
            }
            None => false,
        }
    }

    /// Sets the manual `isFull` flag of a subnet.
    pub fn set_subnet_full(&self, subnet_id: u64, full: bool) {
        if let Some(s) = lock(&self.inner.db).subnets.get_mut(&subnet_id) {
            s.is_full = full;
        }
    }

    /// Creates an address directly (as another phpIPAM user would); returns
    /// its id, or `None` when the subnet is unknown or the ip taken.
    pub fn create_address(
        &self,
        subnet_id: u64,
        ip: Ipv4Addr,
        hostname: &str,
        description: &str,
    ) -> Option<u64> {
        let mut db = lock(&self.inner.db);
        db.subnets.get(&subnet_id)?;
        db.insert(EmulatedAddress {
            description: Some(description.into()),
            hostname: Some(hostname.into()),
            ..blank(subnet_id, ip)
        })
        .ok()
    }

    /// Creates an address directly as the original Go
    /// `iks-overlay-ip-controller` left it: it reserved with `POST
    /// addresses/first_free/{subnet}/` carrying only `owner=<node>`, so the
    /// entry has phpIPAM's `owner` field set to the node name, the default
    /// description `API created`, no hostname, tag Used. Returns its id, or
    /// `None` when the subnet is unknown or the ip taken.
    pub fn seed_original_entry(&self, subnet_id: u64, ip: Ipv4Addr, node: &str) -> Option<u64> {
        let mut db = lock(&self.inner.db);
        db.subnets.get(&subnet_id)?;
        db.insert(EmulatedAddress {
            description: Some("API created".into()),
            owner: Some(node.into()),
            ..blank(subnet_id, ip)
        })
        .ok()
    }

    /// One address by id, as stored.
    pub fn address(&self, id: u64) -> Option<EmulatedAddress> {
        lock(&self.inner.db).addresses.get(&id).cloned()
    }

    /// Deletes an address directly; returns whether it existed.
    pub fn delete_address(&self, id: u64) -> bool {
        lock(&self.inner.db).addresses.remove(&id).is_some()
    }

    /// Deletes every address of a subnet except its gateway, directly (no
    /// request is counted); returns how many were removed.
    pub fn clear_subnet(&self, subnet_id: u64) -> usize {
        let mut db = lock(&self.inner.db);
        let before = db.addresses.len();
        db.addresses
            .retain(|_, a| a.subnet_id != subnet_id || a.is_gateway);
        before - db.addresses.len()
    }

    /// The addresses of a subnet, lowest first.
    pub fn addresses(&self, subnet_id: u64) -> Vec<EmulatedAddress> {
        lock(&self.inner.db).subnet_addresses(subnet_id)
    }

    /// Requests served since start (or the last [`Emulator::reset_counts`]).
    pub fn requests(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Requests per route (`"POST /addresses/first_free/{}/"`, ...).
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.counts).clone()
    }

    /// Requests for one route label (see [`Emulator::request_counts`]).
    pub fn count(&self, route: &str) -> u64 {
        lock(&self.inner.counts).get(route).copied().unwrap_or(0)
    }

    /// Resets the request counters.
    pub fn reset_counts(&self) {
        self.inner.total.store(0, Ordering::Relaxed);
        lock(&self.inner.counts).clear();
    }
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    t | 1
}

impl Db {
    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn new_token(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
        (0..24)
            .map(|_| ALPHABET[(self.next_rand() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }

    fn expire_tokens(&mut self) {
        let past = SystemTime::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or(UNIX_EPOCH);
        for u in self.users.values_mut() {
            u.valid_until = past;
        }
    }

    /// Forgets failed logins older than the block window (phpIPAM purges
    /// its `loginAttempts` rows after 5 minutes).
    fn purge_login_failures(&mut self) {
        if self
            .last_failure
            .is_some_and(|t| t.elapsed() >= self.block_window)
        {
            self.failures = 0;
            self.last_failure = None;
        }
    }

    fn blocked(&mut self) -> bool {
        self.purge_login_failures();
        self.failures >= LOGIN_FAILURES_BEFORE_BLOCK
    }

    fn block_message(&self) -> String {
        let secs = self.block_window.as_secs();
        let span = if secs >= 60 && secs.is_multiple_of(60) {
            let m = secs / 60;
            format!("{m} minute{}", if m == 1 { "" } else { "s" })
        } else {
            format!("{secs} second{}", if secs == 1 { "" } else { "s" })
        };
        format!("Your IP has been blocked for {span} because of excessive login failures")
    }

    fn find_ip(&self, subnet_id: u64, ip: Ipv4Addr) -> Option<&EmulatedAddress> {
        self.addresses
            .values()
            .find(|a| a.subnet_id == subnet_id && a.ip == ip)
    }

    fn subnet_addresses(&self, subnet_id: u64) -> Vec<EmulatedAddress> {
        let mut v: Vec<_> = self
            .addresses
            .values()
            .filter(|a| a.subnet_id == subnet_id)
            .cloned()
            .collect();
        v.sort_by_key(|a| a.ip);
        v
    }

    fn first_free(&self, subnet_id: u64) -> Option<Ipv4Addr> {
        let s = self.subnets.get(&subnet_id)?;
        let (lo, hi) = host_bounds(&s.spec);
        let used: std::collections::BTreeSet<u32> = self
            .addresses
            .values()
            .filter(|a| a.subnet_id == subnet_id)
            .map(|a| u32::from(a.ip))
            .collect();
        (lo..=hi).find(|v| !used.contains(v)).map(Ipv4Addr::from)
    }

    fn insert(&mut self, mut a: EmulatedAddress) -> Result<u64, (u16, String)> {
        if self.find_ip(a.subnet_id, a.ip).is_some() {
            return Err((409, "IP address already exists".into()));
        }
        let id = self.next_id;
        self.next_id += 1;
        a.id = id;
        self.addresses.insert(id, a);
        Ok(id)
    }
}

fn host_bounds(s: &SubnetSpec) -> (u32, u32) {
    let net = u32::from(s.network);
    let size = 1u64 << (32 - u32::from(s.mask.min(32)));
    let last = (u64::from(net) + size - 1) as u32;
    if s.mask >= 31 {
        (net, last)
    } else {
        (net + 1, last - 1)
    }
}

// ---------------------------------------------------------------------------
// Responses

struct Reply {
    status: u16,
    message: Option<String>,
    id: Option<Value>,
    data: Option<Value>,
    location: Option<String>,
    /// PHP fatal: empty text/html body.
    fatal: bool,
}

impl Reply {
    fn ok(data: Value) -> Self {
        Self::with(200, None, Some(data))
    }
    fn msg(status: u16, message: &str) -> Self {
        Self::with(status, Some(message.to_string()), None)
    }
    fn with(status: u16, message: Option<String>, data: Option<Value>) -> Self {
        Self {
            status,
            message,
            id: None,
            data,
            location: None,
            fatal: false,
        }
    }
    fn unauthorized(message: &str) -> Self {
        let mut r = Self::msg(401, message);
        // Sic: the real server leaves the app id out.
        r.location = Some("/api//user/".into());
        r
    }
    fn fatal() -> Self {
        let mut r = Self::msg(500, "");
        r.fatal = true;
        r
    }
}

fn render(reply: Reply, stringify: bool) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut b = Response::builder()
        .status(status)
        .header(header::SET_COOKIE, "phpipam=emulatorsession; path=/")
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::PRAGMA, "no-cache");
    if let Some(loc) = &reply.location {
        b = b.header(header::LOCATION, loc);
    }
    if reply.fatal {
        return b
            .header(header::CONTENT_TYPE, "text/html; charset=UTF-8")
            .body(Body::empty())
            .unwrap_or_else(|_| Response::new(Body::empty()));
    }
    let mut env = Map::new();
    env.insert("code".into(), json!(reply.status));
    env.insert("success".into(), json!(reply.status < 400));
    if let Some(m) = reply.message {
        env.insert("message".into(), json!(m));
    }
    if let Some(id) = reply.id {
        env.insert("id".into(), id);
    }
    if let Some(mut d) = reply.data {
        if stringify {
            stringify_scalars(&mut d);
        }
        env.insert("data".into(), d);
    }
    env.insert("time".into(), json!(0.001));
    b.header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(Value::Object(env).to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn stringify_scalars(v: &mut Value) {
    match v {
        Value::Number(n) => *v = Value::String(n.to_string()),
        Value::Bool(b) => *v = Value::String(if *b { "1".into() } else { "0".into() }),
        Value::Array(a) => a.iter_mut().for_each(stringify_scalars),
        Value::Object(o) => o.values_mut().for_each(stringify_scalars),
        Value::Null | Value::String(_) => {}
    }
}

fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn address_json(a: &EmulatedAddress, ip: Value) -> Value {
    let extra = |k: &str| a.extra.get(k).map_or(Value::Null, |v| json!(v));
    json!({
        "id": a.id,
        "subnetId": a.subnet_id,
        "ip": ip,
        "is_gateway": u8::from(a.is_gateway),
        "description": a.description,
        "hostname": a.hostname,
        "mac": extra("mac"),
        "owner": a.owner,
        "tag": a.tag,
        "deviceId": Value::Null,
        "location": Value::Null,
        "port": extra("port"),
        "note": extra("note"),
        "lastSeen": "1970-01-01 00:00:01",
        "excludePing": 0,
        "PTRignore": 0,
        "PTR": 0,
        "firewallAddressObject": Value::Null,
        "editDate": a.edit_date,
        "customer_id": Value::Null,
    })
}

fn address_raw_json(a: &EmulatedAddress) -> Value {
    let mut v = address_json(a, json!(u32::from(a.ip).to_string()));
    if let Value::Object(o) = &mut v {
        o.remove("tag");
        o.remove("deviceId");
        if let Some(ip) = o.remove("ip") {
            o.insert("ip_addr".into(), ip);
        }
        o.insert("state".into(), json!(a.tag));
        o.insert("switch".into(), Value::Null);
        o.insert("ip".into(), json!(a.ip.to_string()));
    }
    v
}

fn subnet_class(net: Ipv4Addr) -> &'static str {
    match net.octets() {
        [192, 0, 2, _] => "TEST-NET-1",
        [198, 51, 100, _] => "TEST-NET-2",
        [203, 0, 113, _] => "TEST-NET-3",
        _ => "",
    }
}

fn subnet_json(db: &Db, s: &Subnet, full: bool) -> Value {
    let spec = &s.spec;
    let mut o = json!({
        "id": spec.id,
        "subnet": spec.network.to_string(),
        "mask": spec.mask.to_string(),
        "sectionId": 1,
        "description": spec.description,
        "linked_subnet": Value::Null,
        "firewallAddressObject": Value::Null,
        "vrfId": 0,
        "masterSubnetId": 0,
        "allowRequests": 0,
        "vlanId": Value::Null,
        "showName": 0,
        "device": 0,
        "permissions": "{\"2\":\"3\",\"3\":\"1\"}",
        "pingSubnet": 0,
        "discoverSubnet": 0,
        "resolveDNS": 0,
        "DNSrecursive": 0,
        "DNSrecords": 0,
        "nameserverId": 0,
        "scanAgent": Value::Null,
        "customer_id": Value::Null,
        "isFolder": 0,
        "isFull": u8::from(s.is_full),
        "isPool": 0,
        "tag": 2,
        "threshold": 0,
        "location": Value::Null,
        "editDate": Value::Null,
        "lastScan": Value::Null,
        "lastDiscovery": Value::Null,
    });
    if !full {
        return o;
    }
    let (lo, hi) = host_bounds(spec);
    let netmask = if spec.mask == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(spec.mask))
    };
    let bcast = Ipv4Addr::from(u32::from(spec.network) | !netmask);
    if let Value::Object(m) = &mut o {
        if let Some(gw) = db
            .addresses
            .values()
            .find(|a| a.subnet_id == spec.id && a.is_gateway)
        {
            m.insert("gatewayId".into(), json!(gw.id));
            m.insert(
                "gateway".into(),
                json!({"ip_addr": gw.ip.to_string(), "id": gw.id}),
            );
        }
        m.insert(
            "calculation".into(),
            json!({
                "Type": "IPv4",
                "IP address": "/",
                "Network": spec.network.to_string(),
                "Broadcast": bcast.to_string(),
                "Subnet bitmask": spec.mask.to_string(),
                "Subnet netmask": Ipv4Addr::from(netmask).to_string(),
                "Subnet wildcard": Ipv4Addr::from(!netmask).to_string(),
                "Min host IP": Ipv4Addr::from(lo).to_string(),
                "Max host IP": Ipv4Addr::from(hi).to_string(),
                "Number of hosts": (u64::from(hi) - u64::from(lo) + 1).to_string(),
                "Subnet Class": subnet_class(spec.network),
            }),
        );
    }
    o
}

// ---------------------------------------------------------------------------
// Request handling

const ADDRESS_KEYS: &[&str] = &[
    "ip",
    "ip_addr",
    "subnetId",
    "is_gateway",
    "description",
    "hostname",
    "mac",
    "owner",
    "tag",
    "state",
    "deviceId",
    "port",
    "note",
    "excludePing",
    "PTRignore",
    "PTR",
    "location",
    "firewallAddressObject",
    "customer_id",
    "lastSeen",
];

const KEYWORDS: &[&str] = &[
    "api",
    "user",
    "subnets",
    "addresses",
    "first_free",
    "search",
    "search_hostname",
    "tags",
    "usage",
    "cidr",
];

fn route_label(method: &Method, segments: &[String]) -> String {
    let mut s = format!("{method} ");
    for (i, seg) in segments.iter().enumerate() {
        if i == 1 {
            continue; // app id
        }
        if i > 1 {
            s.push('/');
            if KEYWORDS.contains(&seg.as_str()) {
                s.push_str(seg);
            } else {
                s.push_str("{}");
            }
        }
    }
    s.push('/');
    s
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    inner.total.fetch_add(1, Ordering::Relaxed);
    *lock(&inner.counts)
        .entry(route_label(&method, &segments))
        .or_insert(0) += 1;

    let latency = Duration::from_micros(inner.latency_us.load(Ordering::Relaxed));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = lock(&inner.faults).pop_front();
    let mut after_commit = None;
    match fault {
        Some(Fault::Refuse) => {
            let failing = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("emulated connection cut"))
            });
            return Response::new(Body::from_stream(failing));
        }
        Some(Fault::ServerError) => return render(Reply::fatal(), false),
        Some(Fault::LostRace) => {
            return render(Reply::msg(409, "IP address already exists"), false);
        }
        Some(Fault::DuplicateKey) => return render(Reply::msg(500, DUPLICATE_KEY), false),
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::ExpireToken) => lock(&inner.db).expire_tokens(),
        Some(f @ (Fault::CutAfterCommit | Fault::SlowAfterCommit(_))) => after_commit = Some(f),
        None => {}
    }
    let stringify = headers
        .get("api-stringify-results")
        .is_some_and(|v| v.as_bytes() == b"1");
    let reply = {
        let mut db = lock(&inner.db);
        dispatch(&inner, &mut db, &method, &segments, &headers, &body)
    };
    let response = render(reply, stringify);
    match after_commit {
        Some(Fault::SlowAfterCommit(d)) => {
            tokio::time::sleep(d).await;
            response
        }
        Some(Fault::CutAfterCommit) => cut_short(response).await,
        _ => response,
    }
}

/// The same status and headers, but the body breaks off halfway.
async fn cut_short(response: Response) -> Response {
    use futures::StreamExt;
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let stream = futures::stream::iter([Ok::<Bytes, std::io::Error>(half)]).chain(
        futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("emulated connection cut"))
        }),
    );
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from_stream(stream))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn token_header(headers: &HeaderMap) -> Option<&str> {
    header_str(headers, "token").or_else(|| header_str(headers, "phpipam-token"))
}

/// Parses the request body into a key → value map (values as phpIPAM sees
/// them: strings, or JSON scalars).
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Vec<(String, Value)>, Reply> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let ct = header_str(headers, "content-type")
        .unwrap_or("application/x-www-form-urlencoded")
        .to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim().to_string();
    match mime.as_str() {
        "application/json" => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| Reply::msg(400, "Invalid JSON: Syntax error"))?;
            match v {
                Value::Object(o) => Ok(o.into_iter().collect()),
                _ => Err(Reply::msg(400, "Invalid JSON: Syntax error")),
            }
        }
        "application/x-www-form-urlencoded" => Ok(String::from_utf8_lossy(body)
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                // PHP turns '.' and ' ' in form keys into '_'.
                let k = percent_decode(&k.replace('+', " ")).replace(['.', ' '], "_");
                (k, Value::String(percent_decode(&v.replace('+', " "))))
            })
            .collect()),
        _ => Err(Reply::msg(415, &format!("Invalid Content type {mime}"))),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.trim().bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = header_str(headers, "authorization")?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = String::from_utf8(base64_decode(b64)?).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1".into() } else { "0".into() }),
        _ => None,
    }
}

fn dispatch(
    inner: &Inner,
    db: &mut Db,
    method: &Method,
    seg: &[String],
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    if db.blocked() {
        return Reply::msg(500, &db.block_message());
    }
    if seg.first().map(String::as_str) != Some("api") || seg.len() < 2 {
        return Reply::msg(400, "Invalid application id");
    }
    let Some(app) = db.apps.iter().find(|a| a.id == seg[1]).cloned() else {
        return Reply::msg(400, "Invalid application id");
    };
    match app.security {
        AppSecurity::SslToken => return Reply::msg(503, "SSL connection is required for API"),
        AppSecurity::User => return Reply::msg(503, "Invalid app security"),
        AppSecurity::None | AppSecurity::SslCode(_) => {}
    }
    let params = match parse_body(headers, body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rest = &seg[2..];
    let Some(controller) = rest.first() else {
        return Reply::msg(400, "Request is not valid");
    };
    if controller == "user" {
        return user_controller(inner, db, method, headers);
    }
    if !matches!(controller.as_str(), "subnets" | "addresses") {
        return Reply::msg(400, "Invalid controller");
    }
    // Authenticate.
    let token = token_header(headers);
    let authed = match (&app.security, token) {
        (AppSecurity::SslCode(code), Some(t)) => t == code,
        (_, Some(t)) => {
            let now = SystemTime::now();
            let lifetime = inner.token_lifetime;
            match db
                .users
                .values_mut()
                .find(|u| u.token.as_deref() == Some(t))
            {
                Some(u) if u.valid_until > now => {
                    u.valid_until = now + lifetime;
                    true
                }
                _ => false,
            }
        }
        (_, None) => false,
    };
    if !authed {
        return Reply::unauthorized("Unauthorized");
    }
    if app.permissions == AppPermissions::Read && method != Method::GET {
        return Reply::unauthorized("invalid permissions");
    }
    let args: Vec<&str> = rest[1..].iter().map(String::as_str).collect();
    if controller == "subnets" {
        subnets_controller(db, method, &args)
    } else {
        addresses_controller(db, &app, method, &args, params)
    }
}

fn user_controller(inner: &Inner, db: &mut Db, method: &Method, headers: &HeaderMap) -> Reply {
    let now = SystemTime::now();
    if *method == Method::POST {
        let Some((user, pass)) = basic_auth(headers) else {
            return Reply::msg(400, "Please provide username and password");
        };
        let lifetime = inner.token_lifetime;
        let ok = db.users.get(&user).is_some_and(|u| u.password == pass);
        if !ok {
            db.purge_login_failures();
            db.failures += 1;
            db.last_failure = Some(Instant::now());
            return Reply::msg(500, "Invalid username or password");
        }
        let fresh = db.new_token();
        let Some(u) = db.users.get_mut(&user) else {
            return Reply::msg(500, "Invalid username or password");
        };
        if u.token.is_none() || u.valid_until <= now {
            u.token = Some(fresh);
        }
        u.valid_until = now + lifetime;
        return Reply::ok(json!({
            "token": u.token,
            "expires": format_time(u.valid_until),
        }));
    }
    let Some(token) = token_header(headers) else {
        return Reply::msg(403, "Please provide token");
    };
    let lifetime = inner.token_lifetime;
    let Some(u) = db
        .users
        .values_mut()
        .find(|u| u.token.as_deref() == Some(token))
    else {
        return Reply::msg(403, "Invalid token");
    };
    if u.valid_until <= now {
        return Reply::msg(403, "Token expired");
    }
    match *method {
        Method::GET => Reply::ok(json!({"expires": format_time(u.valid_until)})),
        Method::PATCH => {
            u.valid_until = now + lifetime;
            Reply::ok(json!({"expires": format_time(u.valid_until)}))
        }
        Method::DELETE => {
            u.token = None;
            u.valid_until = UNIX_EPOCH;
            Reply::ok(json!(["Token removed"]))
        }
        _ => Reply::msg(400, "Invalid method"),
    }
}

fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn subnets_controller(db: &mut Db, method: &Method, args: &[&str]) -> Reply {
    match (method.clone(), args) {
        (Method::GET, ["cidr", ip, mask]) => {
            let hits: Vec<Value> = db
                .subnets
                .values()
                .filter(|s| s.spec.network.to_string() == *ip && s.spec.mask.to_string() == *mask)
                .map(|s| subnet_json(db, s, false))
                .collect();
            if hits.is_empty() {
                Reply::msg(404, "No subnets found")
            } else {
                Reply::ok(Value::Array(hits))
            }
        }
        (Method::GET, [id, rest @ ..]) => {
            let Some(id) = parse_id(id) else {
                return Reply::msg(404, "Invalid Id");
            };
            let Some(s) = db.subnets.get(&id) else {
                let status = if rest.is_empty() { 400 } else { 404 };
                return Reply::msg(status, &format!("Invalid subnet Id ({id})"));
            };
            match rest {
                [] => Reply::ok(subnet_json(db, s, true)),
                ["first_free"] => first_free_peek(db, id),
                ["addresses"] => {
                    let list: Vec<Value> = db
                        .subnet_addresses(id)
                        .iter()
                        .map(|a| address_json(a, json!(a.ip.to_string())))
                        .collect();
                    if list.is_empty() {
                        Reply::msg(404, "No addresses found")
                    } else {
                        Reply::ok(Value::Array(list))
                    }
                }
                ["usage"] => {
                    let (lo, hi) = host_bounds(&s.spec);
                    let max = u64::from(hi) - u64::from(lo) + 1;
                    let used = db.subnet_addresses(id).len() as u64;
                    let pct = |n: u64| ((n as f64) * 10_000.0 / (max as f64)).round() / 100.0;
                    Reply::ok(json!({
                        "Used": used,
                        "Reserved": 0,
                        "Used_percent": pct(used),
                        "used": used.to_string(),
                        "Reserved_percent": 0,
                        "freehosts": (max - used).to_string(),
                        "freehosts_percent": pct(max - used),
                        "maxhosts": max.to_string(),
                    }))
                }
                _ => Reply::msg(400, "Invalid request"),
            }
        }
        (Method::POST, [_, "first_free"]) => Reply::msg(400, "Invalid CIDR format!"),
        _ => Reply::msg(400, "Invalid request"),
    }
}

fn first_free_peek(db: &Db, id: u64) -> Reply {
    let Some(s) = db.subnets.get(&id) else {
        return Reply::msg(404, &format!("Invalid subnet Id ({id})"));
    };
    if s.is_full {
        return Reply::msg(404, "No free addresses found (subnet is full)");
    }
    match db.first_free(id) {
        Some(ip) => Reply::ok(json!(ip.to_string())),
        None => Reply::msg(404, "No free addresses found"),
    }
}

/// Validates keys and collects the stored fields of an address body.
fn check_keys(params: &[(String, Value)]) -> Result<(), Reply> {
    for (k, _) in params {
        if !ADDRESS_KEYS.contains(&k.as_str()) {
            return Err(Reply::msg(400, &format!("Invalid request key {k}")));
        }
    }
    Ok(())
}

fn apply_fields(a: &mut EmulatedAddress, params: &[(String, Value)]) {
    for (k, v) in params {
        let s = value_str(v);
        match k.as_str() {
            "description" => a.description = s,
            "hostname" => a.hostname = s,
            "owner" => a.owner = s,
            "tag" | "state" => {
                if let Some(t) = s.and_then(|t| t.parse().ok()) {
                    a.tag = t;
                }
            }
            "is_gateway" => a.is_gateway = s.as_deref() == Some("1"),
            "ip" | "ip_addr" | "subnetId" => {}
            other => {
                if let Some(s) = s {
                    a.extra.insert(other.to_string(), s);
                }
            }
        }
    }
}

fn param<'a>(params: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn created(app: &App, id: u64, data: Option<Value>) -> Reply {
    let mut r = Reply::with(201, Some("Address created".into()), data);
    r.id = Some(json!(id.to_string()));
    r.location = Some(format!("/api/{}/addresses/{id}/", app.id));
    r
}

/// A used (tag 2) address with no other field set; [`Db::insert`] gives it
/// its id.
fn blank(subnet_id: u64, ip: Ipv4Addr) -> EmulatedAddress {
    EmulatedAddress {
        id: 0,
        subnet_id,
        ip,
        is_gateway: false,
        description: None,
        hostname: None,
        owner: None,
        tag: 2,
        extra: BTreeMap::new(),
        edit_date: None,
    }
}

fn addresses_controller(
    db: &mut Db,
    app: &App,
    method: &Method,
    args: &[&str],
    params: Vec<(String, Value)>,
) -> Reply {
    match (method.clone(), args) {
        // --- allocation
        (Method::POST, ["first_free", rest @ ..]) => allocate_first_free(db, app, rest, &params),
        (Method::GET, ["first_free", id]) => match parse_id(id) {
            Some(id) => first_free_peek(db, id),
            None => Reply::msg(404, "Invalid subnet Id"),
        },
        (Method::POST, []) => create_address(db, app, &params),
        // --- search
        (Method::GET, ["search", ip]) => search_ip(db, ip),
        (Method::GET, ["search_hostname", host]) => search_hostname(db, host),
        // --- tags
        (Method::GET, ["tags", rest @ ..]) => tags(db, rest),
        // --- by id
        (Method::GET, [id]) => match parse_id(id).and_then(|id| db.addresses.get(&id)) {
            Some(a) => Reply::ok(address_json(a, json!(a.ip.to_string()))),
            None => Reply::msg(404, "Invalid Id"),
        },
        (Method::PATCH | Method::PUT, [id]) => update_address(db, id, &params),
        (Method::DELETE, [id]) => match parse_id(id).and_then(|id| db.addresses.remove(&id)) {
            Some(_) => Reply::msg(200, "Address deleted"),
            None => Reply::msg(404, "Address does not exist"),
        },
        // --- by ip + subnet
        (Method::GET, [ip, sid]) if ip.parse::<Ipv4Addr>().is_ok() => {
            let (Ok(ip), Some(sid)) = (ip.parse::<Ipv4Addr>(), parse_id(sid)) else {
                return Reply::msg(404, "No addresses found");
            };
            match db.find_ip(sid, ip) {
                Some(a) => Reply::ok(address_raw_json(a)),
                None => Reply::msg(404, "No addresses found"),
            }
        }
        (Method::DELETE, [ip, sid]) if ip.parse::<Ipv4Addr>().is_ok() => delete_by_ip(db, ip, sid),
        (Method::DELETE, _) => Reply::msg(404, "Address does not exist"),
        _ => Reply::msg(400, "Invalid request"),
    }
}

/// `POST addresses/first_free/{subnet}` (or `subnetId` in the body): the
/// lowest free address of the subnet, created with the given fields.
fn allocate_first_free(db: &mut Db, app: &App, rest: &[&str], params: &[(String, Value)]) -> Reply {
    if let Err(r) = check_keys(params) {
        return r;
    }
    let sid = match rest {
        [id] => parse_id(id),
        [] => param(params, "subnetId")
            .and_then(value_str)
            .and_then(|s| parse_id(&s)),
        _ => None,
    };
    let Some(sid) = sid.filter(|s| db.subnets.contains_key(s)) else {
        return Reply::msg(400, "Invalid subnet identifier");
    };
    if db.subnets.get(&sid).is_some_and(|s| s.is_full) {
        return Reply::msg(404, "No free addresses found (subnet is full)");
    }
    let Some(ip) = db.first_free(sid) else {
        return Reply::msg(404, "No free addresses found");
    };
    let mut a = blank(sid, ip);
    a.description = Some("API created".into());
    apply_fields(&mut a, params);
    match db.insert(a) {
        Ok(id) => created(app, id, Some(json!(ip.to_string()))),
        Err((code, m)) => Reply::msg(code, &m),
    }
}

/// `POST addresses/`: an address given by `ip` (or `ip_addr`) and
/// `subnetId`.
fn create_address(db: &mut Db, app: &App, params: &[(String, Value)]) -> Reply {
    if let Err(r) = check_keys(params) {
        return r;
    }
    let Some(sid) = param(params, "subnetId")
        .and_then(value_str)
        .and_then(|s| parse_id(&s))
    else {
        return Reply::msg(400, "SubnetId must be numeric");
    };
    let Some(s) = db.subnets.get(&sid) else {
        return Reply::msg(404, "Invalid subnet Id");
    };
    let raw = param(params, "ip")
        .or_else(|| param(params, "ip_addr"))
        .and_then(value_str)
        .unwrap_or_default();
    let (lo, hi) = host_bounds(&s.spec);
    let cidr = format!("{}/{}", s.spec.network, s.spec.mask);
    let ip = match raw.parse::<Ipv4Addr>() {
        Ok(ip) if (lo..=hi).contains(&u32::from(ip)) => ip,
        _ => {
            return Reply::msg(
                500,
                &format!("{raw} is not a valid address for subnet {cidr}"),
            );
        }
    };
    let mut a = blank(sid, ip);
    apply_fields(&mut a, params);
    match db.insert(a) {
        Ok(id) => created(app, id, None),
        Err((code, m)) => Reply::msg(code, &m),
    }
}

/// `GET addresses/search/{ip}`: the address in every subnet.
fn search_ip(db: &Db, ip: &str) -> Reply {
    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
        return Reply::msg(400, "Invalid address");
    };
    let hits: Vec<Value> = db
        .addresses
        .values()
        .filter(|a| a.ip == ip)
        .enumerate()
        // Sic: as in the hostname search, after the first hit the object
        // cache hands out the decimal ip.
        .map(|(i, a)| address_json(a, search_hit_ip(i, a.ip)))
        .collect();
    if hits.is_empty() {
        Reply::msg(404, "Address not found")
    } else {
        Reply::ok(Value::Array(hits))
    }
}

/// The `ip` of the `i`th hit of a search: dotted for the first, decimal
/// for the others (phpIPAM's object cache).
fn search_hit_ip(i: usize, ip: Ipv4Addr) -> Value {
    if i == 0 {
        json!(ip.to_string())
    } else {
        json!(u32::from(ip).to_string())
    }
}

/// `GET addresses/search_hostname/{host}`: case-insensitive, every subnet.
fn search_hostname(db: &Db, host: &str) -> Reply {
    let host = host.to_lowercase();
    let hits: Vec<Value> = db
        .addresses
        .values()
        .filter(|a| a.hostname.as_deref().map(str::to_lowercase) == Some(host.clone()))
        .enumerate()
        // Sic: after the first hit the object cache hands out the
        // decimal ip.
        .map(|(i, a)| address_json(a, search_hit_ip(i, a.ip)))
        .collect();
    if hits.is_empty() {
        Reply::msg(404, "Hostname not found")
    } else {
        Reply::ok(Value::Array(hits))
    }
}

/// `PATCH` / `PUT addresses/{id}`: changes fields, never the ip or subnet.
fn update_address(db: &mut Db, id: &str, params: &[(String, Value)]) -> Reply {
    if let Err(r) = check_keys(params) {
        return r;
    }
    if param(params, "ip").is_some() || param(params, "ip_addr").is_some() {
        return Reply::msg(400, "IP address cannot be changed");
    }
    if param(params, "subnetId").is_some() {
        return Reply::msg(400, "Subnet cannot be changed");
    }
    match parse_id(id).and_then(|id| db.addresses.get_mut(&id)) {
        Some(a) => {
            if !params.is_empty() {
                apply_fields(a, params);
                a.edit_date = Some(format_time(SystemTime::now()));
            }
            Reply::msg(200, "Address updated")
        }
        None => Reply::msg(404, "Address does not exist"),
    }
}

/// `DELETE addresses/{ip}/{subnet}`, with the PHP fatal of an ip that
/// exists in no subnet.
fn delete_by_ip(db: &mut Db, ip: &str, sid: &str) -> Reply {
    let (Ok(ip), Some(sid)) = (ip.parse::<Ipv4Addr>(), parse_id(sid)) else {
        return Reply::msg(404, "No addresses found");
    };
    if let Some(id) = db.find_ip(sid, ip).map(|a| a.id) {
        db.addresses.remove(&id);
        return Reply::msg(200, "Address deleted");
    }
    if db.addresses.values().any(|a| a.ip == ip) {
        Reply::msg(404, "No addresses found")
    } else {
        // Sic: PHP fatal (sizeof(false)) when the ip is nowhere.
        Reply::fatal()
    }
}

fn tags(db: &Db, rest: &[&str]) -> Reply {
    let all = [
        (1, "Offline", 1, "#f59c99", "No"),
        (2, "Used", 0, "#a9c9a4", "No"),
        (3, "Reserved", 1, "#9ac0cd", "No"),
        (4, "DHCP", 1, "#c9c9c9", "Yes"),
    ];
    let tag = |t: &(i64, &str, i64, &str, &str)| {
        json!({"id": t.0, "type": t.1, "showtag": t.2, "bgcolor": t.3, "fgcolor": "#ffffff",
               "compress": t.4, "locked": "Yes", "updateTag": 1})
    };
    match rest {
        [] => Reply::ok(Value::Array(all.iter().map(tag).collect())),
        [id, more @ ..] => {
            let Some(t) = parse_id(id).and_then(|id| all.iter().find(|t| t.0 as u64 == id)) else {
                return Reply::msg(404, "Address tag does not exist");
            };
            match more {
                [] => Reply::ok(tag(t)),
                ["addresses"] => {
                    let mut list: Vec<_> = db.addresses.values().filter(|a| a.tag == t.0).collect();
                    list.sort_by_key(|a| (a.subnet_id, a.ip));
                    if list.is_empty() {
                        Reply::msg(404, "No addresses found")
                    } else {
                        Reply::ok(Value::Array(
                            list.iter()
                                .map(|a| address_json(a, json!(a.ip.to_string())))
                                .collect(),
                        ))
                    }
                }
                _ => Reply::msg(400, "Invalid request"),
            }
        }
    }
}

/// The original controller's way of reserving an address, as a baseline
/// for benchmarks: a fresh login, `POST addresses/first_free/{subnet}/`
/// (next subnet on failure), then `GET subnets/{id}/` for prefix and
/// gateway, one request after the other.
pub async fn original_reserve(
    http: &reqwest::Client,
    base: &str,
    (user, password): (&str, &str),
    subnets: &[u64],
    hostname: &str,
) -> Result<IpAddr, String> {
    let json =
        |r: reqwest::Response| async move { r.json::<Value>().await.map_err(|e| e.to_string()) };
    let login = http
        .post(format!("{base}/user/"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let login = json(login).await?;
    let token = login["data"]["token"]
        .as_str()
        .ok_or("no token")?
        .to_owned();
    for sid in subnets {
        let r = http
            .post(format!("{base}/addresses/first_free/{sid}/"))
            .header("token", &token)
            .json(&json!({"hostname": hostname, "description": "baseline"}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let r = json(r).await?;
        if r["code"] != 201 {
            continue;
        }
        let ip: IpAddr = r["data"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or("no address")?;
        let subnet = http
            .get(format!("{base}/subnets/{sid}/"))
            .header("token", &token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let subnet = json(subnet).await?;
        subnet["data"]["mask"].as_str().ok_or("no mask")?;
        return Ok(ip);
    }
    Err("all subnets full".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_matches_phpipam() {
        // 2026-11-22 15:51:39 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_795_362_699);
        assert_eq!(format_time(t), "2026-11-22 15:51:39");
    }

    #[test]
    fn base64_decodes_basic_auth() {
        assert_eq!(
            base64_decode("YXBpdXNlcjpBcGlVc2VyLVRlc3QtMQ==").unwrap(),
            b"apiuser:ApiUser-Test-1"
        );
    }
}
