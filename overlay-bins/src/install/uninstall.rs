//! `overlayctl uninstall`: what to delete, in an order that releases
//! routes and addresses before the programs that release them go.

use std::fmt;

/// One step: what it does, why it is where it is, the commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UninstallStep {
    /// What the step removes.
    pub title: String,
    /// Why it comes at this point.
    pub why: String,
    /// Shell commands (kubectl).
    pub commands: Vec<String>,
}

impl fmt::Display for UninstallStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# {}", self.title)?;
        for line in self.why.lines() {
            writeln!(f, "#   {line}")?;
        }
        for c in &self.commands {
            writeln!(f, "{c}")?;
        }
        Ok(())
    }
}

/// The steps to remove an install in `namespace`, in order.
pub fn uninstall_steps(namespace: &str) -> Vec<UninstallStep> {
    let step = |title: &str, why: &str, commands: &[String]| UninstallStep {
        title: title.to_owned(),
        why: why.to_owned(),
        commands: commands.to_vec(),
    };
    let ns = namespace;
    vec![
        step(
            "1. StaticRoutes, while the controller and the agents still run",
            "Each agent takes the route off its node when its StaticRoute goes, and the\ncontroller removes the StaticRoute's finalizer once no node reports it.\nWithout them the routes would stay on the nodes and the deletion would hang.",
            &["kubectl delete staticroutes.iks.ibm.com --all --wait=true --timeout=5m".into()],
        ),
        step(
            "2. The agents",
            "No routes are left for them to program. The overlay address stays on each\nnode's interface (tmp0) until the node reboots or `ip link del tmp0`.",
            &[
                format!("kubectl -n {ns} delete daemonset overlay-agent --wait=true"),
                format!("kubectl -n {ns} wait --for=delete pod -l app.kubernetes.io/name=overlay-agent --timeout=5m"),
            ],
        ),
        step(
            "3. The controller, then the addresses, then the NodeOverlayIps",
            "The controller recreates a deleted NodeOverlayIp (and reserves again) while\nits node exists, so it goes first. Then this cluster's addresses are\nreleased, with the controller's config: phpIPAM entries carrying its marker\nare deleted (set PHPIPAM_USERNAME and PHPIPAM_PASSWORD as in the Secret\nphpipam-credentials); kubernetes IPAM has nothing to do here (its\nOverlayIPAllocations go with their CRD in step 6), nor embedded pools (their\nstate file goes with the controller's volume). Then the records' finalizers\nare taken off by hand.",
            &[
                format!("kubectl -n {ns} delete deployment overlay-controller --wait=true"),
                format!("kubectl -n {ns} wait --for=delete pod -l app.kubernetes.io/name=overlay-controller --timeout=5m"),
                format!("kubectl -n {ns} get configmap overlay-ip-config -o jsonpath='{{.data.overlay-ip-config\\.yaml}}' > overlay-ip-config.yaml"),
                "overlayctl ipam release --config overlay-ip-config.yaml".into(),
                "kubectl get nodeoverlayips.iks.ibm.com -o name | xargs -r -n1 kubectl patch --type merge -p '{\"metadata\":{\"finalizers\":null}}'".into(),
                "kubectl delete nodeoverlayips.iks.ibm.com --all --wait=true".into(),
            ],
        ),
        step(
            "4. Admission and RBAC",
            "Nothing runs under these identities any more; the admission policy guarded\nonly the agent's writes.",
            &[
                "kubectl delete validatingadmissionpolicybinding overlay-agent-node-scoped-writes --ignore-not-found".into(),
                "kubectl delete validatingadmissionpolicy overlay-agent-node-scoped-writes --ignore-not-found".into(),
                "kubectl delete clusterrolebinding overlay-controller overlay-agent --ignore-not-found".into(),
                "kubectl delete clusterrole overlay-controller overlay-agent --ignore-not-found".into(),
                "kubectl -n default delete rolebinding overlay-controller-events overlay-agent-events --ignore-not-found".into(),
                "kubectl -n default delete role overlay-controller-events overlay-agent-events --ignore-not-found".into(),
            ],
        ),
        step(
            "5. The namespace",
            "Its ServiceAccounts, ConfigMap, Service, leader-election Lease and Roles,\nand the phpIPAM Secrets if you created them there.",
            &[format!("kubectl delete namespace {ns} --wait=true")],
        ),
        step(
            "6. The CRDs, last",
            "Deleting a CRD deletes every object of its kind at once, past the\ncontroller's finalizers: only now, when nothing is left to release. The\nOverlayIPPools' finalizer is the controller's (kept while a pool has\nallocations), so it is taken off first.",
            &[
                "kubectl get overlayippools.iks.ibm.com -o name | xargs -r -n1 kubectl patch --type merge -p '{\"metadata\":{\"finalizers\":null}}'".into(),
                "kubectl delete crd overlayipclaims.iks.ibm.com overlayipallocations.iks.ibm.com overlayippools.iks.ibm.com staticroutes.iks.ibm.com nodeoverlayips.iks.ibm.com".into(),
            ],
        ),
    ]
}
