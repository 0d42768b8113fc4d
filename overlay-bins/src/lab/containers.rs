//! `overlayctl lab --images`: the controller and agent run as the images
//! `deploy/images/build.sh` built, under podman, with the user,
//! capabilities and read-only root that `deploy/`'s workloads declare
//! ([`RuntimeSettings`], read from the manifests `overlayctl install`
//! prints). The controller runs in the lab's gateway namespace, each agent
//! in its node's namespace (`--network ns:/run/netns/<node>`). Both talk to
//! the scripted API server ([`super::api`]), served on the gateway's VLAN
//! address, where the lab writes Nodes and StaticRoutes and reads the
//! NodeOverlayIps its checks judge. The IPAM is the phpIPAM emulator
//! (served beside the API server), Kubernetes-native pools (in the API
//! server) or embedded pools (a state file on a volume).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use overlay_core::Owner;
use overlay_core::fakes::apiserver::{CLAIMS, NODES, NOIPS, POOLS, ROUTES};
use overlay_core::traits::OverlayIpRecord;
use overlay_testbed::Netns;
use serde_json::json;

use super::api::{self, Api};
use super::images::{AGENT_MANIFEST, CONTROLLER_MANIFEST, RuntimeSettings, TAG};
use super::{IpamChoice, LabOptions, PRIVATE_NETWORK, VLAN_GW, ZonePlan, progress};

/// Where the config and kubeconfig are mounted (the Deployment mounts its
/// ConfigMap there).
const CONFIG_MOUNT: &str = "/etc/overlay";
/// Where embedded pools keep their state file.
const STATE_MOUNT: &str = "/var/lib/overlay";
/// The controller's namespace, where it keeps its leader Lease.
const LEASE_NAMESPACE: &str = "overlay-system";

/// Why `--images` cannot run with `opts`, if it cannot.
pub fn unsupported(opts: &LabOptions) -> Option<String> {
    if opts.legacy {
        return Some("--images runs the StaticRoute agent; the legacy mode is not supported with it (drop --legacy or --images)".into());
    }
    if opts.scenario == Some(super::Scenario::Migrate) {
        return Some("--images is not supported with --scenario migrate, which seeds the originals' state in-process (use --scenario churn or none)".into());
    }
    if opts.ipam == IpamChoice::Phpipam {
        return Some("--images runs the controller in the lab's gateway namespace, which reaches no server outside the lab: use --ipam emulator, kubernetes or embedded".into());
    }
    None
}

/// What `--images` adds to the plan (`--dry-run`).
pub fn describe() -> String {
    let (ctl, agent) = (
        settings(CONTROLLER_MANIFEST)
            .map(|s| s.podman_args().join(" "))
            .unwrap_or_else(|e| e),
        settings(AGENT_MANIFEST)
            .map(|s| s.podman_args().join(" "))
            .unwrap_or_else(|e| e),
    );
    format!(
        "images: overlay-controller:{TAG} in gw ({ctl}) and overlay-agent:{TAG} in each node namespace ({agent}), under podman, \
talking to a scripted API server on {VLAN_GW} (in gw)"
    )
}

/// Checks that podman runs and both images are present.
pub fn preflight() -> Result<(), String> {
    super::images::images_present().map_err(|e| format!("--images {e}"))
}

/// The settings of the workload in `manifest`, as `overlayctl install`
/// prints it.
fn settings(manifest: &str) -> Result<RuntimeSettings, String> {
    let text = crate::install::SOURCES
        .iter()
        .find(|(path, _)| *path == manifest)
        .map(|(_, text)| *text)
        .ok_or_else(|| format!("{manifest} is not among deploy/'s sources"))?;
    RuntimeSettings::from_manifest(text, manifest)
}

/// A container started with `podman run -d`, removed when dropped.
pub struct Container {
    name: String,
}

impl Container {
    fn start(name: String, args: &[String], image: &str, cmd: &[&str]) -> Result<Self, String> {
        // A container of an earlier run that was killed outright.
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &name])
            .output();
        let out = Command::new("podman")
            .args(["run", "-d", "--name", &name, "--label", "overlay-lab=1"])
            .args(args)
            .arg(image)
            .args(cmd)
            .output()
            .map_err(|e| format!("running podman: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "podman run {image}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { name })
    }

    /// The container's output so far.
    pub fn logs(&self) -> String {
        Command::new("podman")
            .args(["logs", &self.name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

/// Where the controller's addresses live, for the release check.
enum Pools {
    Embedded { state: PathBuf },
    Emulator(overlay_ipam::emulator::Emulator, Vec<u64>),
    Kubernetes,
}

/// The lab's served side: API server, IPAM, the files the containers
/// mount, and the controller container.
pub struct Served {
    /// The API server the containers talk to.
    pub api: Api,
    pools: Pools,
    dir: PathBuf,
    controller: Option<Container>,
    agent: RuntimeSettings,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.controller = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Served {
    /// Serves the API server (and the emulator) on the gateway's VLAN
    /// address inside `gw`, writes the kubeconfig and the controller's
    /// config, and puts the lab's Nodes, pools and StaticRoutes in.
    pub async fn start(
        opts: &LabOptions,
        zones: &[ZonePlan],
        gw: &Netns,
        nodes: &[(String, String, String, Netns)],
    ) -> Result<Self, String> {
        let agent = settings(AGENT_MANIFEST)?;
        let rt = tokio::runtime::Handle::current();
        let vlan_gw: Ipv4Addr = VLAN_GW.parse().map_err(|e| format!("{VLAN_GW}: {e}"))?;
        let api = gw
            .run(|| rt.block_on(Api::start(SocketAddr::from((vlan_gw, 0)))))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("serving the API server in {}: {e}", gw.name()))?;
        progress(&format!(
            "API server listening on http://{} (in namespace {})",
            api.addr,
            gw.name()
        ));
        let dir = std::env::temp_dir().join(format!("overlay-lab-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
        };
        write(
            "kubeconfig",
            &api::kubeconfig(&format!("http://{}", api.addr)),
        )?;
        let (config, pools) = ipam_config(opts, zones, gw, &api, &dir)?;
        write("overlay-ip-config.yaml", &config)?;
        for (name, zone, ip, _) in nodes {
            api.server.put(NODES, api::node(name, zone, ip));
        }
        Ok(Self {
            api,
            pools,
            dir,
            controller: None,
            agent,
        })
    }

    /// Starts the controller image in `gw`.
    pub fn start_controller(&mut self, gw: &Netns) -> Result<(), String> {
        let settings = settings(CONTROLLER_MANIFEST)?;
        let mut args = vec![
            format!("--network=ns:{}", gw.path().display()),
            format!("--volume={}:{CONFIG_MOUNT}:ro", self.dir.display()),
            format!("--env=KUBECONFIG={CONFIG_MOUNT}/kubeconfig"),
            format!("--env=POD_NAMESPACE={LEASE_NAMESPACE}"),
            "--env=POD_NAME=overlay-controller-lab".into(),
        ];
        match &self.pools {
            Pools::Emulator(..) => {
                let (user, password) = overlay_ipam::emulator::EmulatorConfig::default()
                    .users
                    .first()
                    .cloned()
                    .ok_or("the emulator has no user")?;
                args.push(format!("--env=PHPIPAM_USERNAME={user}"));
                args.push(format!("--env=PHPIPAM_PASSWORD={password}"));
            }
            Pools::Embedded { .. } => args.push(format!(
                "--volume={}:{STATE_MOUNT}",
                self.dir.join("state").display()
            )),
            Pools::Kubernetes => {}
        }
        args.extend(settings.podman_args());
        let started = Instant::now();
        self.controller = Some(Container::start(
            format!("overlay-lab-{}-controller", std::process::id()),
            &args,
            &format!("overlay-controller:{TAG}"),
            &["--cluster-id", "lab"],
        )?);
        progress(&format!(
            "controller image started in {} ms (namespace {}; {})",
            started.elapsed().as_millis(),
            gw.name(),
            settings.podman_args().join(" ")
        ));
        Ok(())
    }

    /// Starts `name`'s agent image in `ns`.
    pub fn start_agent(&self, name: &str, ip: &str, ns: &Netns) -> Result<Container, String> {
        let mut args = vec![
            format!("--network=ns:{}", ns.path().display()),
            format!("--volume={}:{CONFIG_MOUNT}:ro", self.dir.display()),
            format!("--env=KUBECONFIG={CONFIG_MOUNT}/kubeconfig"),
            format!("--env=NODE_NAME={name}"),
            format!("--env=POD_IP={ip}"),
            "--env=INTERFACE=eth0".into(),
            format!("--env=LEGACY_GATEWAY_FROM={PRIVATE_NETWORK}"),
        ];
        args.extend(self.agent.podman_args());
        Container::start(
            format!("overlay-lab-{}-agent-{name}", std::process::id()),
            &args,
            &format!("overlay-agent:{TAG}"),
            &[],
        )
    }

    /// The controller's output so far (for a failed run).
    pub fn controller_logs(&self) -> String {
        self.controller
            .as_ref()
            .map(Container::logs)
            .unwrap_or_default()
    }

    /// Every NodeOverlayIp, decoded as the agent decodes it.
    pub fn overlay_ips(&self) -> Vec<OverlayIpRecord> {
        self.api
            .server
            .objects(NOIPS)
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .map(|o| overlay_core::crd::decode_node_overlay_ip(&o).0)
            .collect()
    }

    /// The StaticRoutes' names.
    pub fn route_names(&self) -> Vec<String> {
        self.api
            .server
            .objects(ROUTES)
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Creates StaticRoute `name` for `subnet` (no gateway: the overlay's).
    pub fn apply_route(&self, name: &str, subnet: &str) {
        self.api.server.put(
            ROUTES,
            json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "StaticRoute",
                "metadata": {"name": name}, "spec": {"subnet": subnet}}),
        );
    }

    /// Deletes StaticRoute `name` as `kubectl delete` does (its finalizer
    /// holds it until every agent removed the route).
    pub async fn delete_route(&self, name: &str) -> Result<(), String> {
        let routes: kube::Api<overlay_core::crd::StaticRoute> =
            kube::Api::all(self.api.client.clone());
        routes
            .delete(name, &Default::default())
            .await
            .map(|_| ())
            .map_err(|e| format!("deleting StaticRoute {name}: {e}"))
    }

    /// Puts Node `name` in (again).
    pub fn add_node(&self, name: &str, zone: &str, ip: &str) {
        self.api.server.put(NODES, api::node(name, zone, ip));
    }

    /// Deletes Node `name`.
    pub fn remove_node(&self, name: &str) {
        self.api.server.remove_object(NODES, name);
    }

    /// Whether `owner` holds no live address in the IPAM.
    pub fn released(&self, owner: &Owner) -> bool {
        match &self.pools {
            Pools::Kubernetes => !self.api.server.objects(CLAIMS).iter().any(|c| {
                c["spec"]["cluster"] == owner.cluster.as_str()
                    && c["spec"]["node"] == owner.node.as_str()
            }),
            Pools::Emulator(emu, subnets) => {
                let marker = owner.marker();
                !subnets.iter().any(|s| {
                    emu.addresses(*s)
                        .iter()
                        .any(|a| a.description.as_deref() == Some(marker.as_str()))
                })
            }
            Pools::Embedded { state } => {
                overlay_ipam::file::read_state(state).is_ok_and(|entries| {
                    !entries
                        .iter()
                        .any(|e| &e.owner == owner && e.held_until.is_none())
                })
            }
        }
    }
}

/// The controller's config for the lab's IPAM, and where its addresses
/// live: the emulator is served in `gw` beside the API server; pools are
/// put in the API server; embedded pools get a state directory the
/// controller's user may write.
fn ipam_config(
    opts: &LabOptions,
    zones: &[ZonePlan],
    gw: &Netns,
    api: &Api,
    dir: &Path,
) -> Result<(String, Pools), String> {
    let mut config = String::new();
    match opts.ipam {
        IpamChoice::Kubernetes => {
            config.push_str("kubernetes: {}\n");
            for z in zones {
                api.server.put(
                    POOLS,
                    json!({"apiVersion": "iks.ibm.com/v1alpha1", "kind": "OverlayIPPool",
                        "metadata": {"name": format!("lab-{}", z.zone)},
                        "spec": {"zone": z.zone, "cidr": z.subnet.to_string(),
                            "gateway": z.gateway.to_string()}}),
                );
            }
            Ok((config, Pools::Kubernetes))
        }
        IpamChoice::Emulator => emulator(zones, gw, config),
        _ => {
            config.push_str(&format!(
                "embedded:\n  stateFile: {STATE_MOUNT}/ipam.json\n  zones:\n"
            ));
            for z in zones {
                config.push_str(&format!(
                    "    {}:\n      - {{cidr: {}, gateway: {}}}\n",
                    z.zone, z.subnet, z.gateway
                ));
            }
            let state = dir.join("state");
            std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
            let user = settings(CONTROLLER_MANIFEST)?.user.unwrap_or(0);
            nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(user)), None)
                .map_err(|e| format!("{}: {e}", state.display()))?;
            Ok((
                config,
                Pools::Embedded {
                    state: state.join("ipam.json"),
                },
            ))
        }
    }
}

/// The phpIPAM emulator with a subnet per zone, served in `gw`.
fn emulator(zones: &[ZonePlan], gw: &Netns, mut config: String) -> Result<(String, Pools), String> {
    use overlay_ipam::emulator::Emulator;
    let (ecfg, map) = super::emulator_subnets(zones)?;
    let ids = map.iter().map(|(_, id)| *id).collect();
    let rt = tokio::runtime::Handle::current();
    let vlan_gw: Ipv4Addr = VLAN_GW.parse().map_err(|e| format!("{VLAN_GW}: {e}"))?;
    let emu = gw
        .run(|| rt.block_on(Emulator::start_on(ecfg, SocketAddr::from((vlan_gw, 0)))))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("serving the phpIPAM emulator in {}: {e}", gw.name()))?;
    progress(&format!("phpIPAM emulator listening on {}", emu.url()));
    config.push_str(&format!(
        "phpIPAM:\n  url: {}\n  appID: overlay\n  subnetMap:\n",
        emu.url()
    ));
    for (zone, id) in map {
        config.push_str(&format!("    {zone}: [{id}]\n"));
    }
    Ok((config, Pools::Emulator(emu, ids)))
}

/// The controller's output and the agents', indented: what a run that
/// did not converge prints.
pub fn logs(served: &Served, agents: &BTreeMap<String, Container>) -> String {
    let indent = |text: String| -> String { text.lines().map(|l| format!("  {l}\n")).collect() };
    let mut out = format!("controller log:\n{}", indent(served.controller_logs()));
    for (name, c) in agents {
        out.push_str(&format!("agent {name} log:\n{}", indent(c.logs())));
    }
    out
}
