//! The images' runtime settings, read from `deploy/`'s workloads: the user,
//! capabilities and read-only root a container gets in the cluster, as
//! `podman run` arguments, so that a container run on this machine gets
//! exactly what the manifests declare. Images are built by
//! `deploy/images/build.sh`.

use serde::Deserialize as _;
use serde_yaml::Value;

/// The controller's workload, relative to `deploy/`.
pub const CONTROLLER_MANIFEST: &str = "controller/deployment.yaml";
/// The agent's workload, relative to `deploy/`.
pub const AGENT_MANIFEST: &str = "agent/daemonset.yaml";

/// What a workload's pod and container `securityContext` declare for its
/// one container (the container's fields win over the pod's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// `runAsUser`; `None`: the image's user.
    pub user: Option<u32>,
    /// `runAsGroup`; `None`: the image's group.
    pub group: Option<u32>,
    /// `runAsNonRoot`.
    pub non_root: bool,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `capabilities.drop` holds `ALL`.
    pub drop_all: bool,
    /// `capabilities.add`, e.g. `NET_ADMIN`.
    pub add: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
}

/// The tag `deploy/images/build.sh` gives both images: this version.
pub const TAG: &str = env!("CARGO_PKG_VERSION");

/// Checks that podman runs and that both images, `overlay-controller:TAG`
/// and `overlay-agent:TAG`, are present; the error names what is missing
/// and how to get it.
pub fn images_present() -> Result<(), String> {
    use std::process::Command;
    let out = Command::new("podman")
        .arg("--version")
        .output()
        .map_err(|e| {
            format!("needs podman ({e}); install it: apt-get install podman buildah runc")
        })?;
    if !out.status.success() {
        return Err(format!(
            "needs podman, whose --version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let missing: Vec<String> = ["overlay-controller", "overlay-agent"]
        .iter()
        .map(|b| format!("{b}:{TAG}"))
        .filter(|image| {
            !Command::new("podman")
                .args(["image", "exists", image])
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "needs the images {}: build them with deploy/images/build.sh",
            missing.join(" and ")
        ))
    }
}

/// Linux capability numbers of the names a workload may add.
const CAPABILITIES: [(&str, u32); 5] = [
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("SYS_ADMIN", 21),
];

impl RuntimeSettings {
    /// The settings of the only container of the workload in `manifest`
    /// (YAML, possibly several documents; the first workload with a pod
    /// template counts). `what` names the file in errors.
    pub fn from_manifest(manifest: &str, what: &str) -> Result<Self, String> {
        let err = |m: &str| format!("{what}: {m}");
        let docs = serde_yaml::Deserializer::from_str(manifest)
            .map(Value::deserialize)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(&e.to_string()))?;
        let pod = docs
            .iter()
            .find_map(|d| d.get("spec")?.get("template")?.get("spec"))
            .ok_or_else(|| err("no workload with spec.template.spec"))?;
        let containers = pod
            .get("containers")
            .and_then(Value::as_sequence)
            .ok_or_else(|| err("no containers"))?;
        let [container] = containers.as_slice() else {
            return Err(err("more than one container; say which one the image runs"));
        };
        let pod_ctx = pod.get("securityContext");
        let ctx = container.get("securityContext");
        let field = |name: &str| {
            ctx.and_then(|c| c.get(name))
                .or_else(|| pod_ctx.and_then(|c| c.get(name)))
        };
        let id = |name: &str| -> Result<Option<u32>, String> {
            field(name)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| err(&format!("{name} is not a user or group id")))
                })
                .transpose()
        };
        let flag = |name: &str| field(name).and_then(Value::as_bool);
        let caps = |list: &str| -> Vec<String> {
            ctx.and_then(|c| c.get("capabilities")?.get(list)?.as_sequence().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        if flag("privileged") == Some(true) {
            return Err(err(
                "privileged containers have every capability; not supported",
            ));
        }
        let settings = Self {
            user: id("runAsUser")?,
            group: id("runAsGroup")?,
            non_root: flag("runAsNonRoot") == Some(true),
            read_only_root: flag("readOnlyRootFilesystem") == Some(true),
            drop_all: caps("drop").iter().any(|c| c == "ALL"),
            add: caps("add"),
            no_new_privileges: flag("allowPrivilegeEscalation") == Some(false),
        };
        settings.capability_mask().map_err(|e| err(&e))?;
        Ok(settings)
    }

    /// `podman run` arguments giving a container these settings. A
    /// read-only root gets no tmpfs mounts either (`--read-only-tmpfs=false`),
    /// as in a Pod.
    pub fn podman_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        match (self.user, self.group) {
            (Some(u), Some(g)) => a.push(format!("--user={u}:{g}")),
            (Some(u), None) => a.push(format!("--user={u}")),
            _ => {}
        }
        if self.read_only_root {
            a.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        if self.drop_all {
            a.push("--cap-drop=all".into());
        }
        for c in &self.add {
            a.push(format!("--cap-add={c}"));
        }
        if self.no_new_privileges {
            a.push("--security-opt=no-new-privileges".into());
        }
        a
    }

    /// The effective capability set a process gets with these settings
    /// (as `CapEff` in `/proc/PID/status`), when every capability is
    /// dropped; an error for a capability name this module does not know.
    pub fn capability_mask(&self) -> Result<u64, String> {
        self.add.iter().try_fold(0u64, |mask, name| {
            let bare = name.trim_start_matches("CAP_");
            CAPABILITIES
                .iter()
                .find(|(n, _)| *n == bare)
                .map(|(_, bit)| mask | (1u64 << bit))
                .ok_or_else(|| {
                    format!(
                        "capability {name} is not one of {}",
                        CAPABILITIES.map(|c| c.0).join(", ")
                    )
                })
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn container_fields_win_over_the_pods_and_become_podman_arguments() {
        let yaml = "kind: DaemonSet\nspec:\n  template:\n    spec:\n      securityContext: {runAsUser: 65532, runAsGroup: 65532}\n      containers:\n        - name: a\n          securityContext:\n            runAsUser: 0\n            readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities: {add: [NET_ADMIN], drop: [ALL]}\n";
        let s = RuntimeSettings::from_manifest(yaml, "x.yaml").unwrap();
        assert_eq!(
            s.podman_args(),
            [
                "--user=0:65532",
                "--read-only",
                "--read-only-tmpfs=false",
                "--cap-drop=all",
                "--cap-add=NET_ADMIN",
                "--security-opt=no-new-privileges"
            ]
        );
        assert_eq!(s.capability_mask().unwrap(), 1 << 12);
    }

    #[test]
    fn unknown_capabilities_and_privileged_containers_are_refused_by_name() {
        let with = |ctx: &str| {
            RuntimeSettings::from_manifest(
                &format!(
                    "spec:\n  template:\n    spec:\n      containers:\n        - securityContext: {ctx}\n"
                ),
                "w.yaml",
            )
        };
        let e = with("{capabilities: {add: [SYS_TIME]}}").unwrap_err();
        assert!(e.contains("w.yaml") && e.contains("SYS_TIME"), "{e}");
        let e = with("{privileged: true}").unwrap_err();
        assert!(e.contains("privileged"), "{e}");
    }
}
