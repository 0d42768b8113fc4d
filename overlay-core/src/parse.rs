//! Validated parsing of the strings users hand us: CIDRs, addresses,
//! interface names, zones and label selectors.
//!
//! Every parser returns a [`ParseError`] that names the field and the bad
//! value, and none of them panics on any input (see the proptest in
//! `tests/parse_props.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// A string that did not parse, with the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct ParseError {
    /// Which field or argument held the value (e.g. `spec.subnet`).
    pub field: String,
    /// The offending value, truncated to 64 characters.
    pub value: String,
    /// What is wrong with it and what a valid value looks like.
    pub reason: String,
}

impl ParseError {
    /// Builds an error for `field` holding `value`.
    pub fn new(field: impl Into<String>, value: &str, reason: impl Into<String>) -> Self {
        let value: String = value.chars().take(64).collect();
        Self {
            field: field.into(),
            value,
            reason: reason.into(),
        }
    }
}

/// Parses an IP address (IPv4 or IPv6) held by `field`.
pub fn parse_ip(field: &str, value: &str) -> Result<IpAddr, ParseError> {
    IpAddr::from_str(value.trim()).map_err(|_| {
        ParseError::new(
            field,
            value,
            "expected an IPv4 or IPv6 address such as 192.0.2.1 or 2001:db8::1",
        )
    })
}

/// Parses an address with prefix length (`192.0.2.4/24`), as an interface
/// address is written. Host bits may be set.
pub fn parse_ip_with_prefix(field: &str, value: &str) -> Result<IpNetwork, ParseError> {
    let v = value.trim();
    if !v.contains('/') {
        return Err(ParseError::new(
            field,
            value,
            "expected address/prefix such as 192.0.2.4/24",
        ));
    }
    IpNetwork::from_str(v).map_err(|e| {
        ParseError::new(
            field,
            value,
            format!("expected address/prefix such as 192.0.2.4/24 ({e})"),
        )
    })
}

/// A network prefix in canonical form: host bits are zero (`192.0.2.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNetwork);

impl Cidr {
    /// Parses a CIDR held by `field`. Host bits must be zero, so a typo such
    /// as `192.0.2.1/24` is caught instead of silently widened.
    pub fn parse(field: &str, value: &str) -> Result<Self, ParseError> {
        let v = value.trim();
        let net = IpNetwork::from_str(v).map_err(|e| {
            ParseError::new(
                field,
                value,
                format!("expected a CIDR such as 192.0.2.0/24 or 2001:db8::/64 ({e})"),
            )
        })?;
        if !v.contains('/') {
            return Err(ParseError::new(
                field,
                value,
                "expected a CIDR with a prefix length, such as 192.0.2.0/24",
            ));
        }
        if net.network() != net.ip() {
            return Err(ParseError::new(
                field,
                value,
                format!(
                    "host bits are set; did you mean {}/{}?",
                    net.network(),
                    net.prefix()
                ),
            ));
        }
        Ok(Self(net))
    }

    /// Builds a CIDR from a network, clearing host bits.
    pub fn from_network(net: IpNetwork) -> Self {
        match IpNetwork::new(net.network(), net.prefix()) {
            Ok(n) => Self(n),
            // network() with the same prefix is always valid; keep the input otherwise.
            Err(_) => Self(net),
        }
    }

    /// The underlying network.
    pub fn network(&self) -> IpNetwork {
        self.0
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.0.prefix()
    }

    /// True when `other` lies entirely inside this prefix.
    pub fn contains_net(&self, other: &Cidr) -> bool {
        self.0.prefix() <= other.0.prefix() && self.0.contains(other.0.network())
    }

    /// True when the two prefixes share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }

    /// True for IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.0.is_ipv4()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.network(), self.0.prefix())
    }
}

impl FromStr for Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse("cidr", s)
    }
}

impl TryFrom<String> for Cidr {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("cidr", &s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// A valid Linux interface name: 1–15 bytes, no `/`, no whitespace, not `.`
/// or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InterfaceName(String);

impl InterfaceName {
    /// Validates an interface name held by `field`.
    pub fn parse(field: &str, value: &str) -> Result<Self, ParseError> {
        if value.is_empty() {
            return Err(ParseError::new(field, value, "interface name is empty"));
        }
        if value.len() > IFNAME_MAX {
            return Err(ParseError::new(
                field,
                value,
                format!(
                    "interface name is {} bytes; Linux allows at most {IFNAME_MAX}",
                    value.len()
                ),
            ));
        }
        if value == "." || value == ".." {
            return Err(ParseError::new(
                field,
                value,
                "`.` and `..` are not interface names",
            ));
        }
        if let Some(c) = value
            .chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(ParseError::new(
                field,
                value,
                format!("interface name contains {c:?}; `/`, `:` and whitespace are not allowed"),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for InterfaceName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse("interface", s)
    }
}

impl TryFrom<String> for InterfaceName {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("interface", &s)
    }
}

impl From<InterfaceName> for String {
    fn from(n: InterfaceName) -> String {
        n.0
    }
}

/// A zone name (e.g. `dal10`): a Kubernetes label value, non-empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Zone(String);

impl Zone {
    /// Validates a zone held by `field`: 1–63 characters of `[A-Za-z0-9._-]`,
    /// starting and ending alphanumeric (a valid label value).
    pub fn parse(field: &str, value: &str) -> Result<Self, ParseError> {
        validate_label_value(value).map_err(|reason| {
            ParseError::new(field, value, format!("not a valid zone: {reason}"))
        })?;
        if value.is_empty() {
            return Err(ParseError::new(field, value, "zone is empty"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The zone as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Zone {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse("zone", s)
    }
}

impl TryFrom<String> for Zone {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("zone", &s)
    }
}

impl From<Zone> for String {
    fn from(z: Zone) -> String {
        z.0
    }
}

fn validate_label_value(v: &str) -> Result<(), String> {
    if v.len() > 63 {
        return Err(format!("{} characters, at most 63 allowed", v.len()));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "character {c:?} not allowed (use A-Z a-z 0-9 - _ .)"
        ));
    }
    let bytes = v.as_bytes();
    if let (Some(f), Some(l)) = (bytes.first(), bytes.last())
        && (!f.is_ascii_alphanumeric() || !l.is_ascii_alphanumeric())
    {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

fn validate_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Err("key prefix must be a DNS subdomain of 1-253 characters".into());
        }
        if !p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(format!(
                "key prefix {p:?} must be a lowercase DNS subdomain"
            ));
        }
    }
    if name.is_empty() {
        return Err("key name is empty".into());
    }
    validate_label_value(name)
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also matches when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also matches when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// The node's zone is this one: the value of the first of
    /// [`ZONE_LABELS`](crate::model::ZONE_LABELS) the node carries, as
    /// [`NodeInfo::from_labels`](crate::NodeInfo::from_labels) reads it.
    /// What the label `failure-domain.beta.kubernetes.io/zone` on a
    /// StaticRoute meant to the older agents ("a route for that zone only").
    InZone(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|x| !vs.contains(x)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::InZone(z) => {
                crate::model::ZONE_LABELS
                    .iter()
                    .find_map(|k| labels.get(*k))
                    == Some(z)
            }
        }
    }
}

/// A Kubernetes label selector (all requirements must hold). The empty
/// selector matches every node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSelector {
    /// The requirements, all of which must match.
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the string form used by `kubectl -l`:
    /// `zone=dal10,tier!=edge,env in (a,b),gpu,!spot`.
    pub fn parse(field: &str, value: &str) -> Result<Self, ParseError> {
        let mut requirements = Vec::new();
        for term in split_terms(value) {
            let t = term.trim();
            if t.is_empty() {
                if value.trim().is_empty() {
                    continue;
                }
                return Err(ParseError::new(field, value, "empty term between commas"));
            }
            requirements.push(parse_term(t).map_err(|r| ParseError::new(field, value, r))?);
        }
        Ok(Self { requirements })
    }

    /// Builds a selector from `matchLabels` and `matchExpressions`-style
    /// requirements.
    pub fn from_requirements(requirements: Vec<Requirement>) -> Self {
        Self { requirements }
    }

    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_term(t: &str) -> Result<Requirement, String> {
    if let Some(k) = t.strip_prefix('!') {
        let k = k.trim();
        validate_label_key(k)?;
        return Ok(Requirement::DoesNotExist(k.to_owned()));
    }
    for (op, neg) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = t.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            validate_label_key(k)?;
            validate_label_value(v)?;
            return Ok(if neg {
                Requirement::NotEquals(k.into(), v.into())
            } else {
                Requirement::Equals(k.into(), v.into())
            });
        }
    }
    let words: Vec<&str> = t.splitn(2, char::is_whitespace).collect();
    if let [k, rest] = words.as_slice() {
        let rest = rest.trim();
        let (neg, list) = if let Some(l) = rest.strip_prefix("notin") {
            (true, l)
        } else if let Some(l) = rest.strip_prefix("in") {
            (false, l)
        } else {
            return Err(format!(
                "unknown operator in {t:?}; use =, ==, !=, in, notin, or !key"
            ));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("expected a parenthesised list in {t:?}"))?;
        let mut values = Vec::new();
        for v in inner.split(',') {
            let v = v.trim();
            validate_label_value(v)?;
            values.push(v.to_owned());
        }
        validate_label_key(k)?;
        return Ok(if neg {
            Requirement::NotIn((*k).into(), values)
        } else {
            Requirement::In((*k).into(), values)
        });
    }
    validate_label_key(t)?;
    Ok(Requirement::Exists(t.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_rejects_host_bits_and_suggests_the_network() {
        let e = Cidr::parse("spec.subnet", "192.0.2.1/24").unwrap_err();
        assert_eq!(e.field, "spec.subnet");
        assert!(e.reason.contains("192.0.2.0/24"), "{e}");
        assert_eq!(
            Cidr::parse("x", "192.0.2.0/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert!(Cidr::parse("x", "192.0.2.0").is_err());
        assert!(Cidr::parse("x", "192.0.2.0/33").is_err());
        assert!(Cidr::parse("x", "2001:db8::/64").is_ok());
    }

    #[test]
    fn cidr_containment() {
        let big = Cidr::parse("a", "10.0.0.0/8").unwrap();
        let small = Cidr::parse("b", "10.1.0.0/16").unwrap();
        let other = Cidr::parse("c", "192.0.2.0/24").unwrap();
        assert!(big.contains_net(&small));
        assert!(!small.contains_net(&big));
        assert!(big.overlaps(&small) && small.overlaps(&big));
        assert!(!big.overlaps(&other));
    }

    #[test]
    fn interface_names() {
        assert!(InterfaceName::parse("i", "tmp0").is_ok());
        assert!(InterfaceName::parse("i", "abcdefghijklmno").is_ok());
        let e = InterfaceName::parse("INTERFACE_LABEL", "abcdefghijklmnop").unwrap_err();
        assert!(e.to_string().contains("INTERFACE_LABEL"), "{e}");
        assert!(e.reason.contains("16 bytes"), "{e}");
        for bad in ["", "a/b", "a b", "..", "eth0:1"] {
            assert!(InterfaceName::parse("i", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zones() {
        assert!(Zone::parse("z", "dal10").is_ok());
        assert!(Zone::parse("z", "").is_err());
        assert!(Zone::parse("z", "-dal").is_err());
        assert!(Zone::parse("z", "dal 10").is_err());
    }

    #[test]
    fn selectors() {
        let s =
            LabelSelector::parse("sel", "zone=dal10, tier!=edge,env in (a, b),gpu,!spot").unwrap();
        let mut l: BTreeMap<String, String> = [("zone", "dal10"), ("env", "a"), ("gpu", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(s.matches(&l));
        l.insert("spot".into(), "true".into());
        assert!(!s.matches(&l));
        assert!(LabelSelector::parse("s", "").unwrap().matches(&l));
        assert!(LabelSelector::parse("s", "a in b").is_err());
        assert!(LabelSelector::parse("s", "a=b,,c").is_err());
        assert!(LabelSelector::parse("s", "Bad Key=x").is_err());
        let nk = LabelSelector::parse("s", "topology.kubernetes.io/zone notin (dal12)").unwrap();
        assert!(nk.matches(&l));
    }

    #[test]
    fn the_zone_requirement_reads_the_node_zone_like_node_info() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let dal10 = LabelSelector::from_requirements(vec![Requirement::InZone("dal10".into())]);
        for node in [
            labels(&[("topology.kubernetes.io/zone", "dal10")]),
            labels(&[("failure-domain.beta.kubernetes.io/zone", "dal10")]),
            labels(&[("ibm-cloud.kubernetes.io/zone", "dal10")]),
            // The most specific label wins, as for NodeInfo::zone.
            labels(&[
                ("topology.kubernetes.io/zone", "dal10"),
                ("failure-domain.beta.kubernetes.io/zone", "dal12"),
            ]),
        ] {
            assert!(dal10.matches(&node), "{node:?}");
            let info = crate::NodeInfo::from_labels("n", node.clone(), vec![]);
            assert_eq!(info.zone.map(|z| z.to_string()).as_deref(), Some("dal10"));
        }
        for node in [
            labels(&[]),
            labels(&[("topology.kubernetes.io/zone", "dal12")]),
            labels(&[
                ("topology.kubernetes.io/zone", "dal12"),
                ("failure-domain.beta.kubernetes.io/zone", "dal10"),
            ]),
        ] {
            assert!(!dal10.matches(&node), "{node:?}");
        }
    }
}
