//! The images `deploy/images/build.sh` builds, proven by running them with
//! the user, capabilities and read-only root that `deploy/`'s workloads
//! declare (read from the manifests here, so a difference fails):
//!
//! - each image's user, labels and entrypoint agree with the manifests and
//!   the workspace's version, licence and repository;
//! - the agent image, in a node's network namespace with only NET_ADMIN,
//!   puts the node's overlay address on its macvlan and programs a
//!   StaticRoute that a ping then uses;
//! - the controller image, as uid 65532 with no capabilities, resolves the
//!   API server's name by DNS and phpIPAM's from /etc/hosts, takes the
//!   leader Lease, reserves an address in the phpIPAM emulator and records
//!   it in the node's NodeOverlayIp.
//!
//! The binaries talk to the project's fake API server (lists, watches,
//! server-side apply, CRD validation), served over HTTP inside the
//! namespaces (`overlay_bins::lab::api`). The images are not built here: run
//! `deploy/images/build.sh` first (CI does). Without podman or the images
//! these tests skip, and fail under CI=true.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "images/dns.rs"]
mod dns;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use overlay_bins::lab::api;
use overlay_bins::lab::images::{
    AGENT_MANIFEST, CONTROLLER_MANIFEST, RuntimeSettings, images_present,
};
use overlay_core::fakes::apiserver::{NODES, NOIPS, ROUTES};
use overlay_testbed::{Netns, NodeWithGateway, privileged};
use serde_json::{Value, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn settings(manifest: &str) -> RuntimeSettings {
    let path = deploy_dir().join(manifest);
    let text = std::fs::read_to_string(&path).unwrap();
    RuntimeSettings::from_manifest(&text, &path.display().to_string()).unwrap()
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("running podman")
}

/// True when podman and both images are here (and, with `root`, the test
/// can create namespaces); otherwise skips, or fails under CI=true.
fn ready(test: &str, root: bool) -> bool {
    if root && !privileged(test) {
        return false;
    }
    let Err(why) = images_present() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}; CI=true, so this fails instead of skipping");
    }
    eprintln!("SKIP {test}: {why} (set CI=true to make this a failure)");
    false
}

/// A detached container, removed when dropped.
struct Container {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Container {
    /// `podman run -d` with `args` before the image and `cmd` after it.
    fn start(args: &[String], image: &str, cmd: &[&str]) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("overlay-images-test-{}-{n}", std::process::id());
        let out = Command::new("podman")
            .args(["run", "-d", "--name", &name])
            .args(args)
            .arg(image)
            .args(cmd)
            .output()
            .unwrap();
        let c = Self { name };
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "podman run {image}: {err}{}",
            if err.contains("rlimit") {
                "\n(podman's default ulimits: deploy/images/build.sh writes the containers.conf drop-in that turns them off)"
            } else {
                ""
            }
        );
        c
    }

    fn pid(&self) -> u32 {
        let out = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn running(&self) -> bool {
        let out = podman(&["inspect", "--format", "{{.State.Running}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// What the kernel says about the container's process: uid and gid
/// (real, effective, saved, filesystem), effective and bounding
/// capabilities, no_new_privs, and whether its root is mounted read-only.
#[derive(Debug, PartialEq, Eq)]
struct ProcessView {
    uids: String,
    gids: String,
    cap_eff: u64,
    cap_bnd: u64,
    no_new_privs: bool,
    root_read_only: bool,
}

fn process_view(pid: u32) -> ProcessView {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let hex = |k: &str| u64::from_str_radix(&field(k), 16).unwrap();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // Fields: id parent major:minor root mount-point options ...
    let root = mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    ProcessView {
        uids: field("Uid"),
        gids: field("Gid"),
        cap_eff: hex("CapEff"),
        cap_bnd: hex("CapBnd"),
        no_new_privs: field("NoNewPrivs") == "1",
        root_read_only: root
            .split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|x| x == "ro")),
    }
}

/// The process view the manifest's settings call for, given the image's
/// `user:group` for what the manifest leaves unset.
fn expected_view(s: &RuntimeSettings, image_user: &str) -> ProcessView {
    let (iu, ig) = image_user.split_once(':').unwrap_or((image_user, "0"));
    let uid = s.user.map_or(iu.to_owned(), |u| u.to_string());
    let gid = s.group.map_or(ig.to_owned(), |g| g.to_string());
    let mask = s.capability_mask().unwrap();
    ProcessView {
        uids: [uid.as_str(); 4].join(" "),
        gids: [gid.as_str(); 4].join(" "),
        cap_eff: mask,
        cap_bnd: mask,
        no_new_privs: s.no_new_privileges,
        root_read_only: s.read_only_root,
    }
}

fn image_config(image: &str) -> Value {
    let out = podman(&["image", "inspect", image]);
    assert!(out.status.success(), "{image}: not found");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["Config"].clone()
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("timed out after {timeout:?} waiting for {what}");
    false
}

#[test]
fn each_image_runs_as_its_manifest_says_with_the_workspaces_labels() {
    if !ready(
        "each_image_runs_as_its_manifest_says_with_the_workspaces_labels",
        false,
    ) {
        return;
    }
    for (bin, manifest) in [
        ("overlay-controller", CONTROLLER_MANIFEST),
        ("overlay-agent", AGENT_MANIFEST),
    ] {
        let s = settings(manifest);
        let image = format!("{bin}:{VERSION}");
        let cfg = image_config(&image);
        let user = cfg["User"].as_str().unwrap();
        let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
        if let Some(u) = s.user {
            assert_eq!(
                uid,
                u.to_string(),
                "{image}: USER {user}, {manifest}: {s:?}"
            );
        }
        if let Some(g) = s.group {
            assert_eq!(
                gid,
                g.to_string(),
                "{image}: USER {user}, {manifest}: {s:?}"
            );
        }
        if s.non_root {
            assert_ne!(
                uid, "0",
                "{manifest} says runAsNonRoot; {image} runs as {user}"
            );
        }
        assert_eq!(
            cfg["Entrypoint"],
            json!([format!("/usr/local/bin/{bin}")]),
            "{image}"
        );
        let labels = &cfg["Labels"];
        for (k, v) in [
            ("title", bin),
            ("version", VERSION),
            ("licenses", env!("CARGO_PKG_LICENSE")),
            ("source", env!("CARGO_PKG_REPOSITORY")),
        ] {
            assert_eq!(
                labels[format!("org.opencontainers.image.{k}")],
                json!(v),
                "{image}: label {k}"
            );
        }
        assert!(
            labels["org.opencontainers.image.description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{image}: description"
        );
        // `--help` in the image, with the manifest's settings.
        let out = Command::new("podman")
            .args(["run", "--rm", "--network", "none"])
            .args(s.podman_args())
            .args([&image, "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("KUBECONFIG"),
            "{image} --help: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The NodeOverlayIp as the controller leaves it, and one StaticRoute.
fn seed_agent_objects(api: &api::Api, node: &str, ip: &str) {
    api.server.put(NODES, api::node(node, "zone-1", ip));
    api.server.put(
        NOIPS,
        json!({
            "apiVersion": "iks.ibm.com/v1alpha1", "kind": "NodeOverlayIp",
            "metadata": {"name": node, "finalizers": ["finalizer.iks.ibm.com"],
                "labels": {"node": node, "zone": "zone-1"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node,
                    "uid": format!("uid-{node}")}]},
            "status": {"ipAddr": "192.0.2.10/26", "gateway": "192.0.2.1"},
        }),
    );
    api.server.put(
        ROUTES,
        json!({
            "apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
            "metadata": {"name": "onprem"},
            "spec": {"subnet": "203.0.113.0/24"},
        }),
    );
}

/// `status.routes[route].state` of `node`'s NodeOverlayIp.
fn route_state(api: &api::Api, node: &str, route: &str) -> Option<String> {
    let o = api.server.object(NOIPS, node)?;
    o["status"]["routes"]
        .as_array()?
        .iter()
        .find(|r| r["route"] == route)
        .and_then(|r| r["state"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_image_programs_its_node_with_only_net_admin() {
    if !ready(
        "the_agent_image_programs_its_node_with_only_net_admin",
        true,
    ) {
        return;
    }
    let s = settings(AGENT_MANIFEST);
    let image = format!("overlay-agent:{VERSION}");
    let t = NodeWithGateway::new(
        "img-agent",
        &["198.51.100.10/24"],
        &["198.51.100.1/24", "192.0.2.1/26"],
    )
    .unwrap();
    t.gateway.add_addr("lo", "203.0.113.1/32").unwrap();
    // The API on the node's loopback, which the container shares.
    let rt = tokio::runtime::Handle::current();
    let api = t
        .node
        .run(|| rt.block_on(api::Api::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))))
        .unwrap()
        .unwrap();
    seed_agent_objects(&api, "node-1", "198.51.100.10");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kubeconfig"),
        api::kubeconfig(&format!("http://{}", api.addr)),
    )
    .unwrap();
    let mut args = vec![
        format!("--network=ns:{}", t.node.path().display()),
        format!("--volume={}:/etc/overlay-test:ro", dir.path().display()),
        "--env=KUBECONFIG=/etc/overlay-test/kubeconfig".into(),
        "--env=NODE_NAME=node-1".into(),
        "--env=POD_IP=198.51.100.10".into(),
        "--env=INTERFACE_LABEL=tmp0".into(),
    ];
    args.extend(s.podman_args());
    let c = Container::start(&args, &image, &[]);
    let node = &t.node;
    let programmed = wait_until(
        "tmp0 with 192.0.2.10 and the route to 203.0.113.0/24",
        Duration::from_secs(30),
        || {
            let addr = node.ip(&["-br", "addr", "show", "tmp0"]).ok();
            let routes = node.routes(&[]).unwrap_or_default();
            addr.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains("192.0.2.10/26"))
                && routes
                    .iter()
                    .any(|r| r.starts_with("203.0.113.0/24 via 192.0.2.1"))
        },
    )
    .await;
    assert!(programmed, "agent log:\n{}", c.logs());
    assert!(
        node.ping("203.0.113.1", Some("192.0.2.10")).unwrap(),
        "no answer from 203.0.113.1 over the overlay address"
    );
    eprintln!("{}", node.routes(&[]).unwrap().join("\n"));
    let reported = wait_until("the agent's report", Duration::from_secs(10), || {
        route_state(&api, "node-1", "onprem").as_deref() == Some("Applied")
    })
    .await;
    assert!(
        reported,
        "{:#?}\nagent log:\n{}",
        api.server.object(NOIPS, "node-1"),
        c.logs()
    );
    let user = image_config(&image)["User"].as_str().unwrap().to_owned();
    let seen = process_view(c.pid());
    eprintln!("{image} with {:?}: {seen:?}", s.podman_args());
    assert_eq!(seen, expected_view(&s, &user));
    assert!(c.running(), "{}", c.logs());
}

/// What the controller container talks to, in `ns`: the phpIPAM emulator,
/// the API server (holding node-1) and a DNS server naming the API server
/// `api.lab.test`; and a directory holding the config (phpIPAM by the name
/// `phpipam.lab.test`) and a kubeconfig, mounted where the Deployment
/// mounts the ConfigMap.
struct ControllerServers {
    _emulator: overlay_ipam::emulator::Emulator,
    api: api::Api,
    dns: dns::Dns,
    dir: tempfile::TempDir,
}

impl ControllerServers {
    fn start(ns: &Netns, phpipam_ip: Ipv4Addr, api_ip: Ipv4Addr, dns_ip: Ipv4Addr) -> Self {
        use overlay_ipam::emulator::{Emulator, EmulatorConfig};
        for a in [phpipam_ip, api_ip, dns_ip] {
            ns.add_addr("lo", &format!("{a}/32")).unwrap();
        }
        let rt = tokio::runtime::Handle::current();
        let emulator = ns
            .run(|| {
                rt.block_on(Emulator::start_on(
                    EmulatorConfig::default(),
                    SocketAddr::from((phpipam_ip, 0)),
                ))
            })
            .unwrap()
            .unwrap();
        let api = ns
            .run(|| rt.block_on(api::Api::start(SocketAddr::from((api_ip, 0)))))
            .unwrap()
            .unwrap();
        api.server
            .put(NODES, api::node("node-1", "zone-1", "198.51.100.10"));
        let names = BTreeMap::from([("api.lab.test".to_owned(), api_ip)]);
        let dns = ns
            .run(|| rt.block_on(dns::Dns::start(SocketAddr::from((dns_ip, 53)), names)))
            .unwrap()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("overlay-ip-config.yaml"),
            format!(
                "phpIPAM:\n  url: http://phpipam.lab.test:{}\n  appID: overlay\n  subnetMap: {{zone-1: [1]}}\n",
                emulator.addr().port()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("kubeconfig"),
            api::kubeconfig(&format!("http://api.lab.test:{}", api.addr.port())),
        )
        .unwrap();
        Self {
            _emulator: emulator,
            api,
            dns,
            dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_image_resolves_its_servers_by_name_and_reserves() {
    use overlay_ipam::emulator::EmulatorConfig;
    if !ready(
        "the_controller_image_resolves_its_servers_by_name_and_reserves",
        true,
    ) {
        return;
    }
    let s = settings(CONTROLLER_MANIFEST);
    let image = format!("overlay-controller:{VERSION}");
    let ns = Netns::new("img-ctl").unwrap();
    let (phpipam_ip, api_ip, dns_ip) = (
        Ipv4Addr::new(192, 0, 2, 80),
        Ipv4Addr::new(198, 51, 100, 6),
        Ipv4Addr::new(198, 51, 100, 53),
    );
    let servers = ControllerServers::start(&ns, phpipam_ip, api_ip, dns_ip);
    let (api, dns, dir) = (&servers.api, &servers.dns, &servers.dir);
    let (user, password) = EmulatorConfig::default().users[0].clone();
    let mut args = vec![
        format!("--network=ns:{}", ns.path().display()),
        format!("--dns={dns_ip}"),
        format!("--add-host=phpipam.lab.test:{phpipam_ip}"),
        format!("--volume={}:/etc/overlay:ro", dir.path().display()),
        "--env=KUBECONFIG=/etc/overlay/kubeconfig".into(),
        format!("--env=PHPIPAM_USERNAME={user}"),
        format!("--env=PHPIPAM_PASSWORD={password}"),
        "--env=POD_NAMESPACE=overlay-system".into(),
        "--env=POD_NAME=overlay-controller-0".into(),
    ];
    args.extend(s.podman_args());
    let c = Container::start(&args, &image, &["--cluster-id", "lab"]);
    let reserved = wait_until(
        "the controller to record node-1's address",
        Duration::from_secs(30),
        || {
            api.server.object(NOIPS, "node-1").is_some_and(|o| {
                o["status"]["ipAddr"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("192.0.2."))
            })
        },
    )
    .await;
    assert!(
        reserved,
        "controller log:\n{}\nNodeOverlayIp: {:#?}",
        c.logs(),
        api.server.object(NOIPS, "node-1")
    );
    eprintln!(
        "NodeOverlayIp: {}; DNS asked for {:?}",
        api.server.object(NOIPS, "node-1").unwrap()["status"],
        dns.asked()
    );
    assert!(
        dns.asked().iter().any(|n| n == "api.lab.test"),
        "the API server's name was not resolved by DNS: {:?}",
        dns.asked()
    );
    assert!(
        !dns.asked().iter().any(|n| n == "phpipam.lab.test"),
        "phpIPAM's name is in /etc/hosts (nsswitch.conf: files first), yet DNS was asked: {:?}",
        dns.asked()
    );
    let user = image_config(&image)["User"].as_str().unwrap().to_owned();
    let seen = process_view(c.pid());
    eprintln!("{image} with {:?}: {seen:?}", s.podman_args());
    assert_eq!(seen, expected_view(&s, &user));
    assert!(c.running(), "{}", c.logs());
}
