//! # overlay-testbed
//!
//! Network-namespace test bed for overlay's tests, benchmarks and lab:
//! create namespaces, veth pairs, bridges, addresses and routes; run a
//! closure or a command inside a namespace; everything is removed when the
//! [`Netns`] is dropped, also while a failing test unwinds.
//!
//! All topology lives *inside* namespaces the bed creates (a bridge sits in
//! its own "switch" namespace), so deleting the namespaces removes every
//! link and route; nothing is added to the host's namespace.
//!
//! Only documentation ranges (RFC 5737 192.0.2.0/24, 198.51.100.0/24,
//! 203.0.113.0/24; RFC 3849 2001:db8::/32) and the benchmarking range
//! 198.18.0.0/15 (RFC 2544) are accepted unless the caller opts in with
//! [`AddressPolicy::Any`].
//!
//! Setup uses iproute2's `ip` (installed by `.ci/run`); the code under test
//! never does.
//!
//! ## Example
//!
//! Two namespaces joined by a veth pair, a ping across, and both gone again
//! when they are dropped. Creating namespaces needs root and `ip`;
//! [`privileged`] says why when they are missing, and the example then
//! returns early (a test does the same, and under `CI=true` fails instead):
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use overlay_testbed::{AddressPolicy, Netns, privileged};
//!
//! // Only documentation and benchmarking ranges, unless you opt in.
//! let private: ipnetwork::IpNetwork = "10.0.0.0/8".parse()?;
//! assert!(AddressPolicy::Documentation.check(&private).is_err());
//! assert!(AddressPolicy::Any.check(&private).is_ok());
//!
//! if !privileged("the overlay-testbed crate example") {
//!     return Ok(());
//! }
//! let a = Netns::new("doc-a")?;
//! let b = Netns::new("doc-b")?;
//! a.add_veth("veth-a", &b, "veth-b")?;
//! a.add_addr("veth-a", "192.0.2.1/24")?;
//! b.add_addr("veth-b", "192.0.2.2/24")?;
//! assert!(a.ping("192.0.2.2", None)?);
//! // A range outside the policy is refused before anything runs.
//! assert!(a.add_addr("veth-a", "10.1.2.3/8").is_err());
//!
//! let path = a.path();
//! drop(a);
//! assert!(!path.exists(), "the namespace is removed on drop");
//! # Ok(())
//! # }
//! ```

// The README's example is compiled as a doctest too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnetwork::IpNetwork;

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Prefix of every namespace the bed creates: `ovt-<pid>-<n>-<name>`.
pub const NS_PREFIX: &str = "ovt-";

/// Errors of the test bed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error.
        stderr: String,
    },
    /// An address outside the allowed ranges.
    #[error(
        "address {0} is outside the documentation/benchmark ranges; use 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15 or 2001:db8::/32, or opt in with AddressPolicy::Any"
    )]
    ForbiddenAddress(String),
    /// A value did not parse.
    #[error("invalid {what} {value:?}")]
    Invalid {
        /// What was parsed.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// I/O error (namespace files, setns).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, TestbedError>;

/// Which addresses the bed accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressPolicy {
    /// Documentation and benchmarking ranges only (default).
    #[default]
    Documentation,
    /// Any address (the lab uses this for subnets a real IPAM hands out;
    /// always inside namespaces the bed created).
    Any,
}

const ALLOWED: [&str; 5] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "198.18.0.0/15",
    "2001:db8::/32",
];

impl AddressPolicy {
    /// Checks a network (address/prefix or destination).
    pub fn check(self, net: &IpNetwork) -> Result<()> {
        if self == AddressPolicy::Any || is_documentation(net) {
            Ok(())
        } else {
            Err(TestbedError::ForbiddenAddress(net.to_string()))
        }
    }
}

/// True when `net` lies inside a documentation or benchmarking range.
pub fn is_documentation(net: &IpNetwork) -> bool {
    ALLOWED.iter().any(|a| match IpNetwork::from_str(a) {
        Ok(range) => range.prefix() <= net.prefix() && range.contains(net.network()),
        Err(_) => false,
    })
}

/// True when the process can create namespaces (root or CAP_SYS_ADMIN +
/// CAP_NET_ADMIN). Under `CI=true` a missing privilege panics with a clear
/// message so that a test never silently skips in CI; elsewhere it prints
/// why the test is skipped and returns false.
pub fn privileged(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let has_ip = Command::new("ip").arg("-V").output().is_ok();
    if root && has_ip {
        return true;
    }
    let why = if !root {
        "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces"
    } else {
        "needs iproute2's `ip` (apt-get install iproute2)"
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}; CI=true, so this fails instead of skipping");
    }
    eprintln!("SKIP {test}: {why} (set CI=true to make this a failure)");
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; error with stderr on failure.
pub fn ip(args: &[&str]) -> Result<Output> {
    run_cmd("ip", args)
}

/// A helper command in a process group of its own, so that a terminal's
/// Ctrl-C reaches only the caller (which then removes what it created, with
/// more helper commands) and does not kill a helper half-way.
fn helper(prog: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(prog);
    c.process_group(0);
    c
}

fn run_cmd(prog: &str, args: &[&str]) -> Result<Output> {
    let out = helper(prog)
        .args(args)
        .output()
        .map_err(|e| TestbedError::Io {
            context: format!("spawn {prog}"),
            source: e,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(TestbedError::Command {
            command: format!("{prog} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// A namespace [`remove_stale_namespaces`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleNamespace {
    /// The namespace's name (`ovt-<pid>-<n>-<label>`).
    pub name: String,
    /// The process that created it, which no longer runs.
    pub pid: u32,
}

/// The pid in a bed namespace's name (`ovt-<pid>-<n>-<label>`); `None`
/// for any other name.
pub fn namespace_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NS_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes namespaces left behind by processes that no longer run (e.g. a
/// test killed by a timeout, or a lab killed with SIGKILL, before their
/// destructors ran) and returns the ones it removed.
pub fn remove_stale_namespaces() -> Vec<StaleNamespace> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = namespace_pid(&name) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && ip(&["netns", "del", &name]).is_ok() {
            removed.push(StaleNamespace { name, pid });
        }
    }
    removed.sort_by(|a, b| (a.pid, &a.name).cmp(&(b.pid, &b.name)));
    removed
}

/// The programs the bed runs, each with the Debian package that provides
/// it: `ip` directly, `sysctl` ([`Netns::enable_forwarding`]) and `ping`
/// ([`Netns::ping`]) inside namespaces through `ip netns exec`.
pub const TOOLS: [(&str, &str); 3] = [
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("sysctl", "procps"),
];

/// The [`TOOLS`] not found as executables in `PATH`, each with its Debian
/// package.
pub fn missing_tools() -> Vec<(&'static str, &'static str)> {
    missing_tools_in(&std::env::var_os("PATH").unwrap_or_default())
}

fn missing_tools_in(path: &std::ffi::OsStr) -> Vec<(&'static str, &'static str)> {
    TOOLS
        .iter()
        .filter(|(tool, _)| !std::env::split_paths(path).any(|dir| is_executable(&dir.join(tool))))
        .copied()
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Names of the namespaces this process created and still holds.
pub fn own_namespaces() -> Vec<String> {
    namespaces_of(std::process::id())
}

/// Names of the namespaces process `pid` created (a lab or test bed started
/// as a child, say) that still exist.
pub fn namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("{NS_PREFIX}{pid}-");
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// A network namespace, deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    policy: AddressPolicy,
    keep: bool,
}

impl Netns {
    /// Creates a namespace whose name ends in `label`, with loopback up and
    /// the documentation-only address policy.
    pub fn new(label: &str) -> Result<Self> {
        Self::with_policy(label, AddressPolicy::Documentation)
    }

    /// Creates a namespace with an explicit address policy.
    pub fn with_policy(label: &str, policy: AddressPolicy) -> Result<Self> {
        remove_stale_namespaces();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{}-{n}-{label}", std::process::id());
        if let Err(e) = ip(&["netns", "add", &name]) {
            // A failed `add` may have left the file behind.
            let _ = ip(&["netns", "del", &name]);
            return Err(e);
        }
        let ns = Self {
            name,
            policy,
            keep: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace file (`/run/netns/<name>`), for `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// The address policy.
    pub fn policy(&self) -> AddressPolicy {
        self.policy
    }

    /// Leaves the namespace in place on drop (for `--keep`); returns the
    /// command that removes it.
    pub fn keep(&mut self) -> String {
        self.keep = true;
        format!("ip netns del {}", self.name)
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, prog: &str, args: &[&str]) -> Result<Output> {
        let mut a = vec!["netns", "exec", self.name.as_str(), prog];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Runs a program inside the namespace and returns its output whatever
    /// its exit status.
    pub fn exec_status(&self, prog: &str, args: &[&str]) -> Result<Output> {
        helper("ip")
            .args(["netns", "exec", self.name.as_str(), prog])
            .args(args)
            .output()
            .map_err(|e| TestbedError::Io {
                context: format!("spawn {prog} in {}", self.name),
                source: e,
            })
    }

    /// Runs `f` on a fresh thread that has entered the namespace, and
    /// returns its result. Sockets opened inside `f` stay bound to the
    /// namespace after it returns.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Creates a bridge named `name`, up.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        self.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Creates a veth pair: `local` here, `remote` in `peer`, both up.
    pub fn add_veth(&self, local: &str, peer: &Netns, remote: &str) -> Result<()> {
        self.ip(&[
            "link", "add", local, "type", "veth", "peer", "name", remote, "netns", &peer.name,
        ])?;
        self.ip(&["link", "set", local, "up"])?;
        peer.ip(&["link", "set", remote, "up"])?;
        Ok(())
    }

    /// Attaches `link` to bridge `bridge` (both in this namespace).
    pub fn set_master(&self, link: &str, bridge: &str) -> Result<()> {
        self.ip(&["link", "set", link, "master", bridge])?;
        Ok(())
    }

    /// Sets a link up or down.
    pub fn set_up(&self, link: &str, up: bool) -> Result<()> {
        self.ip(&["link", "set", link, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Adds `addr` (address/prefix) to `link`, after checking the policy.
    pub fn add_addr(&self, link: &str, addr: &str) -> Result<()> {
        let net = parse_net(addr)?;
        self.policy.check(&net)?;
        let mut args = vec!["addr", "add", addr, "dev", link];
        if net.is_ipv6() {
            args.push("nodad");
        }
        self.ip(&args)?;
        Ok(())
    }

    /// Adds a route `dest` via `gateway` (either may be omitted: a device
    /// route when `gateway` is `None`), after checking the policy.
    pub fn add_route(&self, dest: &str, gateway: Option<&str>, dev: Option<&str>) -> Result<()> {
        if dest != "default" {
            self.policy.check(&parse_net(dest)?)?;
        }
        let mut args = vec!["route", "add", dest];
        if let Some(g) = gateway {
            let ip = IpAddr::from_str(g).map_err(|_| TestbedError::Invalid {
                what: "gateway",
                value: g.to_owned(),
            })?;
            self.policy.check(&IpNetwork::from(ip))?;
            args.extend(["via", g]);
        }
        if let Some(d) = dev {
            args.extend(["dev", d]);
        }
        self.ip(&args)?;
        Ok(())
    }

    /// Enables IPv4 and IPv6 forwarding (for a router namespace).
    pub fn enable_forwarding(&self) -> Result<()> {
        self.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        self.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(())
    }

    /// Pings `target` once (optionally from `source`) with a 1 s deadline;
    /// true when it answered. The target must be allowed by the policy.
    pub fn ping(&self, target: &str, source: Option<&str>) -> Result<bool> {
        let ip = IpAddr::from_str(target).map_err(|_| TestbedError::Invalid {
            what: "ping target",
            value: target.to_owned(),
        })?;
        self.policy.check(&IpNetwork::from(ip))?;
        let mut args = vec!["-c", "1", "-W", "1", "-q"];
        if let Some(s) = source {
            args.extend(["-I", s]);
        }
        args.push(target);
        let out = self.exec_status("ping", &args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("exec of") {
            return Err(TestbedError::Command {
                command: "ping".into(),
                stderr: format!("{}; install iputils-ping", stderr.trim()),
            });
        }
        Ok(out.status.success())
    }

    /// Names of the links in the namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let out = self.ip(&["-o", "link", "show"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .collect())
    }

    /// `ip route show` output lines for `args` (e.g. `["table", "all"]`;
    /// a leading `-6` or `-4` selects the family).
    pub fn routes(&self, args: &[&str]) -> Result<Vec<String>> {
        let (family, rest) = match args.first() {
            Some(f) if *f == "-6" || *f == "-4" => (vec![*f], &args[1..]),
            _ => (vec![], args),
        };
        let mut a = family;
        a.extend(["route", "show"]);
        a.extend_from_slice(rest);
        let out = self.ip(&a)?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

/// A node namespace wired to a gateway namespace by a veth pair: the
/// node's [`NodeWithGateway::NODE_LINK`] (`eth0`) to the gateway's
/// [`NodeWithGateway::GATEWAY_LINK`] (`gw0`), both up, with addresses on
/// either end. The set-up the netlink and agent tests and benchmarks share;
/// both namespaces go when it is dropped.
#[derive(Debug)]
pub struct NodeWithGateway {
    /// The node (where the code under test programs routes).
    pub node: Netns,
    /// The namespace at the other end of the node's `eth0`.
    pub gateway: Netns,
}

impl NodeWithGateway {
    /// The node's end of the veth pair.
    pub const NODE_LINK: &'static str = "eth0";
    /// The gateway's end of the veth pair.
    pub const GATEWAY_LINK: &'static str = "gw0";

    /// Creates namespaces labelled `label` and `label-gw`, the veth pair,
    /// and the addresses (`address/prefix`, documentation ranges unless
    /// the namespaces' policy says otherwise): `node_addrs` on the node's
    /// `eth0`, `gateway_addrs` on the gateway's `gw0`.
    pub fn new(label: &str, node_addrs: &[&str], gateway_addrs: &[&str]) -> Result<Self> {
        let node = Netns::new(label)?;
        let gateway = Netns::new(&format!("{label}-gw"))?;
        node.add_veth(Self::NODE_LINK, &gateway, Self::GATEWAY_LINK)?;
        for a in node_addrs {
            node.add_addr(Self::NODE_LINK, a)?;
        }
        for a in gateway_addrs {
            gateway.add_addr(Self::GATEWAY_LINK, a)?;
        }
        Ok(Self { node, gateway })
    }
}

/// Runs `future` to its end on the runtime overlay's benchmarks measure on:
/// tokio's multi-thread scheduler with two workers, I/O and timers on.
pub fn run_bench<F: std::future::Future>(future: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TestbedError::Io {
            context: "build the benchmark runtime".into(),
            source: e,
        })?;
    Ok(rt.block_on(future))
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| TestbedError::Io {
        context: format!("open {}", path.display()),
        source: e,
    })?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| TestbedError::Io {
        context: format!("setns {}", path.display()),
        source: std::io::Error::from(e),
    })
}

fn parse_net(s: &str) -> Result<IpNetwork> {
    IpNetwork::from_str(s).map_err(|_| TestbedError::Invalid {
        what: "address",
        value: s.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_pid_reads_the_pid_of_bed_names_only() {
        assert_eq!(namespace_pid("ovt-1234-7-node-1"), Some(1234));
        assert_eq!(namespace_pid("ovt-99-0-gw"), Some(99));
        assert_eq!(namespace_pid("ovt-x-0-gw"), None);
        assert_eq!(namespace_pid("node1"), None);
        assert_eq!(namespace_pid("cni-1234"), None);
    }

    #[test]
    fn missing_tools_are_looked_up_in_the_given_path() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(missing_tools_in("".as_ref()), TOOLS.to_vec());
        let dir = std::env::temp_dir().join(format!("ovt-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ip = dir.join("ip");
        std::fs::write(&ip, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&ip, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Not executable: does not count.
        std::fs::write(dir.join("ping"), "").unwrap();
        let path = std::env::join_paths(["/nonexistent".as_ref(), dir.as_path()]).unwrap();
        let missing = missing_tools_in(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            missing,
            vec![("ping", "iputils-ping"), ("sysctl", "procps")]
        );
    }

    #[test]
    fn policy_accepts_documentation_ranges_only() {
        for ok in [
            "192.0.2.7/24",
            "198.51.100.0/29",
            "203.0.113.9/32",
            "198.19.255.1/16",
            "2001:db8:1::1/64",
        ] {
            let n = IpNetwork::from_str(ok).unwrap();
            assert!(AddressPolicy::Documentation.check(&n).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1/8",
            "192.0.3.1/24",
            "192.0.2.0/23",
            "8.8.8.8/32",
            "fd00::1/64",
        ] {
            let n = IpNetwork::from_str(bad).unwrap();
            assert!(AddressPolicy::Documentation.check(&n).is_err(), "{bad}");
            assert!(AddressPolicy::Any.check(&n).is_ok());
        }
    }
}
