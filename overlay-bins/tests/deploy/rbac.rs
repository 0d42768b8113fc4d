//! Kubernetes RBAC as the API server applies it, for checking the roles in
//! `deploy/` against the requests the binaries make:
//!
//! - a request's attributes come from its method and path like the API
//!   server's RequestInfo: `GET` of a collection is `list` (`watch` with
//!   `watch=true`), of an object `get`; `POST` `create`, `PUT` `update`,
//!   `PATCH` `patch`, `DELETE` `delete`; a `metadata.name` field selector
//!   names the object of a `list`/`watch` (which is what lets
//!   `resourceNames` restrict those);
//! - a rule grants a request when the API group, the resource (with
//!   `/subresource`) and the verb are listed, and `resourceNames` is empty
//!   or holds the request's name (a `create` has none);
//! - a ClusterRoleBinding grants everywhere, a RoleBinding only in its
//!   namespace.

use std::collections::BTreeSet;
use std::fmt;

use super::{Doc, find, strs};

/// The attributes RBAC decides on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    pub group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub verb: String,
    /// `None` for cluster-scoped resources.
    pub namespace: Option<String>,
    /// The object's name, when the request names one.
    pub name: Option<String>,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if let Some(n) = &self.name {
            write!(f, " {n:?}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        Ok(())
    }
}

fn decode(s: &str) -> String {
    s.replace("%3D", "=")
        .replace("%3d", "=")
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%2C", ",")
}

/// The RBAC attributes of a request (`method`, `uri` as the client sent
/// them).
pub fn call(method: &str, uri: &str) -> Call {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect();
    let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segs.first() {
        Some(&"api") => ("", &segs[2..]),
        Some(&"apis") => (segs[1], &segs[3..]),
        _ => panic!("not an API path: {uri}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some((*ns).to_owned()), more),
        // The Namespace object itself: its own namespace, for RBAC.
        ["namespaces", ns] => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let resource = rest[0].to_owned();
    let mut name = rest.get(1).map(|s| (*s).to_owned());
    let resource = match rest.get(2) {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource,
    };
    let verb = match (method, &name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if param("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => panic!("unexpected request {method} {uri}"),
    };
    if matches!(verb, "list" | "watch" | "deletecollection") {
        name = param("fieldSelector").and_then(|s| {
            s.split(',')
                .find_map(|t| t.strip_prefix("metadata.name=").map(str::to_owned))
        });
    }
    Call {
        group: group.to_owned(),
        resource,
        verb: verb.to_owned(),
        namespace,
        name,
    }
}

/// One verb on one resource granted by one rule of one role, with where it
/// applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// `Kind/name` of the role.
    pub role: String,
    /// `None`: every namespace and cluster-scoped resources.
    pub namespace: Option<String>,
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub names: Vec<String>,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{}: {} {group}/{}", self.role, self.verb, self.resource)?;
        if !self.names.is_empty() {
            write!(f, " {:?}", self.names)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in {ns}"),
            None => write!(f, " (cluster-wide)"),
        }
    }
}

impl Grant {
    /// Whether this grant allows `c`.
    pub fn allows(&self, c: &Call) -> bool {
        self.group == c.group
            && self.resource == c.resource
            && self.verb == c.verb
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| c.namespace.as_ref() == Some(ns))
            && (self.names.is_empty() || c.name.as_ref().is_some_and(|n| self.names.contains(n)))
    }
}

/// Every grant that the bindings among `docs` give ServiceAccount
/// `namespace/name`.
pub fn grants_of(docs: &[Doc], namespace: &str, name: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for b in docs
        .iter()
        .filter(|d| d.kind() == "ClusterRoleBinding" || d.kind() == "RoleBinding")
    {
        let bound = b.value["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == name && s["namespace"] == namespace
        });
        if !bound {
            continue;
        }
        let role_kind = b.value["roleRef"]["kind"].as_str().unwrap();
        let role_name = b.value["roleRef"]["name"].as_str().unwrap();
        let role = find(docs, role_kind, role_name);
        let scope = (b.kind() == "RoleBinding").then(|| b.namespace().unwrap().to_owned());
        for rule in role.value["rules"].as_array().unwrap() {
            let names: Vec<String> = strs(&rule["resourceNames"]);
            for group in strs(&rule["apiGroups"]) {
                for resource in strs(&rule["resources"]) {
                    for verb in strs(&rule["verbs"]) {
                        out.insert(Grant {
                            role: format!("{role_kind}/{role_name}"),
                            namespace: scope.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            names: names.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// Checks `calls` against `grants` both ways: every call is granted, and
/// every grant is used by some call. Panics listing every mismatch.
pub fn assert_exact(who: &str, calls: &BTreeSet<Call>, grants: &BTreeSet<Grant>) {
    let denied: Vec<String> = calls
        .iter()
        .filter(|c| !grants.iter().any(|g| g.allows(c)))
        .map(|c| format!("  {c}"))
        .collect();
    let unused: Vec<String> = grants
        .iter()
        .filter(|g| !calls.iter().any(|c| g.allows(c)))
        .map(|g| format!("  {g}"))
        .collect();
    let all: Vec<String> = calls.iter().map(|c| format!("  {c}")).collect();
    assert!(
        denied.is_empty() && unused.is_empty(),
        "{who}: RBAC in deploy/ does not match the API calls the code makes\n\
         calls the API server would refuse (403):\n{}\n\
         grants no call uses:\n{}\n\
         every call made:\n{}",
        denied.join("\n"),
        unused.join("\n"),
        all.join("\n"),
    );
}

/// The distinct RBAC attributes of `requests` (`(method, uri)`).
pub fn calls<'a>(requests: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeSet<Call> {
    requests.into_iter().map(|(m, u)| call(m, u)).collect()
}
