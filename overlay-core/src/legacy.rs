//! The older static-routes DaemonSet's route list: a JSON array of subnets
//! (the ConfigMap `static-routes`, key `routes`), parsed here and read from
//! a mounted file by [`FileRoutes`]. The ConfigMap watch itself is
//! `k8s::KubeConfigMapRoutes` (feature `kube`).
//!
//! The list is read the way the older DaemonSet's `ip route add` read it:
//! a bare address (`"192.0.2.7"`) is a host route (`/32`, `/128` for IPv6).
//! One entry that is not a subnet is skipped and reported
//! ([`LegacyRoutes::problems`]); the others still apply. Text that is not
//! a JSON array at all rejects the whole list, and the agent keeps the
//! routes it has.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use ipnetwork::IpNetwork;

use crate::error::StoreError;
use crate::invalid::{FieldProblem, InvalidObjects};
use crate::parse::{Cidr, ParseError};
use crate::traits::LegacyRouteSource;

/// One entry of the route list that was skipped: where it is, what it
/// says, and why it is not a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyEntryProblem {
    /// Its position in the list (from 0).
    pub index: usize,
    /// The entry as written (a JSON string's text, else the JSON value),
    /// cut to 64 characters.
    pub entry: String,
    /// Why it is skipped.
    pub reason: String,
}

impl fmt::Display for LegacyEntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "routes[{}] {:?}: {}",
            self.index, self.entry, self.reason
        )
    }
}

/// The route list as read: the subnets to route, and the entries skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyRoutes {
    /// The subnets, in list order.
    pub subnets: Vec<Cidr>,
    /// The entries that are not subnets (skipped; the others apply).
    pub problems: Vec<LegacyEntryProblem>,
}

impl LegacyRoutes {
    /// The skipped entries as one problem of the object's `data.routes`
    /// (`data.routes[2]` when only one), for [`InvalidObjects`]; `None`
    /// when every entry was used.
    pub fn field_problem(&self, field: &str) -> Option<FieldProblem> {
        match self.problems.as_slice() {
            [] => None,
            [p] => Some(FieldProblem::new(
                format!("{field}[{}]", p.index),
                format!(
                    "{:?}: {}; the entry is skipped, the others apply",
                    p.entry, p.reason
                ),
            )),
            all => Some(FieldProblem::new(
                field,
                format!(
                    "{} entries skipped, the others apply: {}",
                    all.len(),
                    all.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )),
        }
    }
}

/// One entry of the list: a CIDR, or a bare address as a host route (`/32`
/// or `/128`), as `ip route add` took it. Host bits under a prefix are an
/// error (as they are for `ip route add`).
pub fn parse_legacy_entry(field: &str, value: &str) -> Result<Cidr, ParseError> {
    let v = value.trim();
    if !v.contains('/')
        && let Ok(ip) = IpAddr::from_str(v)
    {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        return IpNetwork::new(ip, prefix)
            .map(Cidr::from_network)
            .map_err(|e| ParseError::new(field, value, e.to_string()));
    }
    Cidr::parse(field, value)
}

/// Parses the older deployment's route list, a JSON array of subnets such
/// as `["192.168.1.0/24", "192.168.5.7"]`, leniently: entries that are not
/// subnets are returned as problems and the rest is used. `Err` only when
/// the text is not a JSON array.
pub fn parse_legacy_list(json: &str) -> Result<LegacyRoutes, ParseError> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).map_err(|e| {
        ParseError::new(
            "routes",
            json,
            format!("expected a JSON array of CIDR strings such as [\"192.168.1.0/24\"]: {e}"),
        )
    })?;
    let mut out = LegacyRoutes::default();
    for (index, entry) in list.iter().enumerate() {
        let parsed = match entry {
            serde_json::Value::String(s) => parse_legacy_entry(&format!("routes[{index}]"), s),
            other => Err(ParseError::new(
                format!("routes[{index}]"),
                &other.to_string(),
                "expected a string such as \"192.168.1.0/24\"",
            )),
        };
        match parsed {
            Ok(c) => out.subnets.push(c),
            Err(e) => out.problems.push(LegacyEntryProblem {
                index,
                entry: e.value,
                reason: e.reason,
            }),
        }
    }
    Ok(out)
}

/// Parses the route list strictly: every entry must be a subnet (or a bare
/// address, a host route); the first one that is not is the error. The
/// agent reads the list with [`parse_legacy_list`] instead, which skips
/// such entries and applies the others.
pub fn parse_legacy_routes(json: &str) -> Result<Vec<Cidr>, ParseError> {
    let list = parse_legacy_list(json)?;
    match list.problems.into_iter().next() {
        Some(p) => Err(ParseError::new(
            format!("routes[{}]", p.index),
            &p.entry,
            p.reason,
        )),
        None => Ok(list.subnets),
    }
}

/// The legacy route list from a mounted file (the ConfigMap's `routes` key
/// projected as a file), re-read when it changes (checked every `period`).
pub struct FileRoutes {
    path: std::path::PathBuf,
    period: Duration,
    invalid: Option<InvalidObjects>,
}

impl FileRoutes {
    /// Reads `path`, checking for changes every `period`.
    pub fn new(path: impl Into<std::path::PathBuf>, period: Duration) -> Self {
        Self {
            path: path.into(),
            period,
            invalid: None,
        }
    }

    /// Reports a list with skipped entries, or one that is not a JSON
    /// array, to `invalid` (kind `file`, named by the path): a log line
    /// and the `overlay_invalid_objects{kind="file"}` gauge.
    pub fn with_invalid(mut self, invalid: InvalidObjects) -> Self {
        self.invalid = Some(invalid);
        self
    }

    fn observe(&self, name: &str, problem: Option<&FieldProblem>) {
        if let Some(i) = &self.invalid {
            i.observe("file", name, problem);
        }
    }
}

#[async_trait]
impl LegacyRouteSource for FileRoutes {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
        self.routes().await.map(|l| l.subnets)
    }

    async fn routes(&self) -> Result<LegacyRoutes, StoreError> {
        let name = self.path.display().to_string();
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(path)).await;
        let text = read
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| StoreError::Unavailable {
                kind: "file".into(),
                name: name.clone(),
                message: e.to_string(),
            })?;
        match parse_legacy_list(&text) {
            Ok(list) => {
                self.observe(&name, list.field_problem("routes").as_ref());
                Ok(list)
            }
            Err(e) => {
                self.observe(&name, Some(&FieldProblem::from(e.clone())));
                Err(StoreError::Rejected {
                    kind: "file".into(),
                    name,
                    message: e.to_string(),
                })
            }
        }
    }

    fn changes(&self) -> BoxStream<'static, ()> {
        let path = self.path.clone();
        let period = self.period;
        let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        futures::stream::unfold(
            (path.clone(), stamp(&path)),
            move |(path, last)| async move {
                loop {
                    tokio::time::sleep(period).await;
                    let now = stamp(&path);
                    if now != last {
                        return Some(((), (path, now)));
                    }
                }
            },
        )
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn bare_addresses_are_host_routes_as_ip_route_add_took_them() {
        let l =
            parse_legacy_list(r#"["198.51.100.0/24", " 198.51.100.7 ", "2001:db8::7"]"#).unwrap();
        assert_eq!(
            l.subnets,
            [
                cidr("198.51.100.0/24"),
                cidr("198.51.100.7/32"),
                cidr("2001:db8::7/128")
            ]
        );
        assert!(l.problems.is_empty());
        assert_eq!(l.field_problem("data.routes"), None);
    }

    #[test]
    fn entries_that_are_not_subnets_are_skipped_with_index_and_text() {
        let l = parse_legacy_list(
            r#"["198.51.100.0/24", "nonsense", 7, "203.0.113.1/25", "203.0.113.0/25"]"#,
        )
        .unwrap();
        assert_eq!(l.subnets, [cidr("198.51.100.0/24"), cidr("203.0.113.0/25")]);
        let found: Vec<(usize, &str)> = l
            .problems
            .iter()
            .map(|p| (p.index, p.entry.as_str()))
            .collect();
        assert_eq!(found, [(1, "nonsense"), (2, "7"), (3, "203.0.113.1/25")]);
        assert!(
            l.problems[2].reason.contains("203.0.113.0/25"),
            "{:?}",
            l.problems[2]
        );
        assert_eq!(
            l.problems[0].to_string(),
            format!("routes[1] \"nonsense\": {}", l.problems[0].reason)
        );
        let p = l.field_problem("data.routes").unwrap();
        assert_eq!(p.field, "data.routes");
        assert!(p.message.starts_with("3 entries skipped"), "{p}");

        let one = parse_legacy_list(r#"["nonsense", "198.51.100.0/24"]"#).unwrap();
        let p = one.field_problem("data.routes").unwrap();
        assert_eq!(p.field, "data.routes[0]");
        assert!(p.message.contains("nonsense"), "{p}");
    }

    #[test]
    fn text_that_is_not_a_json_array_rejects_the_list() {
        for bad in ["198.51.100.0/24", "{\"a\": 1}", "[\"198.51.100.0/24\"", ""] {
            let e = parse_legacy_list(bad).unwrap_err();
            assert_eq!(e.field, "routes", "{bad}");
        }
        assert!(parse_legacy_list("[]").unwrap().subnets.is_empty());
    }

    #[test]
    fn the_strict_parser_names_the_first_bad_entry() {
        let e = parse_legacy_routes(r#"["198.51.100.0/24", "oops"]"#).unwrap_err();
        assert_eq!(e.field, "routes[1]");
        assert_eq!(e.value, "oops");
        assert_eq!(
            parse_legacy_routes(r#"["198.51.100.7"]"#).unwrap(),
            [cidr("198.51.100.7/32")]
        );
    }

    #[tokio::test]
    async fn the_file_source_skips_bad_entries_and_reports_them() {
        let dir =
            std::env::temp_dir().join(format!("overlay-legacy-{}-{}", std::process::id(), line!()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes");
        std::fs::write(&path, r#"["198.51.100.0/24", "198.51.100.7", "nonsense"]"#).unwrap();
        let invalid = InvalidObjects::default();
        let src = FileRoutes::new(&path, Duration::from_secs(60)).with_invalid(invalid.clone());
        let l = src.routes().await.unwrap();
        assert_eq!(l.subnets.len(), 2);
        assert_eq!(l.problems.len(), 1);
        assert_eq!(invalid.count("file"), 1);
        assert_eq!(src.subnets().await.unwrap().len(), 2);
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            src.routes().await,
            Err(StoreError::Rejected { .. })
        ));
        assert_eq!(invalid.count("file"), 1);
        std::fs::write(&path, r#"["198.51.100.0/24"]"#).unwrap();
        assert!(src.routes().await.unwrap().problems.is_empty());
        assert_eq!(invalid.count("file"), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
