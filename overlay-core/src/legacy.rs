//! The older static-routes DaemonSet's route list: a JSON array of subnets
//! (the ConfigMap `static-routes`, key `routes`), parsed here and read from
//! a mounted file by [`FileRoutes`]. The ConfigMap watch itself is
//! `k8s::KubeConfigMapRoutes` (feature `kube`).

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::StoreError;
use crate::parse::{Cidr, ParseError};
use crate::traits::LegacyRouteSource;

/// Parses the older deployment's route list: a JSON array of subnets such
/// as `["192.168.1.0/24"]`. Every entry must be a CIDR; one bad entry
/// rejects the list (so a typo never removes routes).
pub fn parse_legacy_routes(json: &str) -> Result<Vec<Cidr>, ParseError> {
    let list: Vec<String> = serde_json::from_str(json).map_err(|e| {
        ParseError::new(
            "routes",
            json,
            format!("expected a JSON array of CIDR strings such as [\"192.168.1.0/24\"]: {e}"),
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, s)| Cidr::parse(&format!("routes[{i}]"), s))
        .collect()
}

/// The legacy route list from a mounted file (the ConfigMap's `routes` key
/// projected as a file), re-read when it changes (checked every `period`).
pub struct FileRoutes {
    path: std::path::PathBuf,
    period: Duration,
}

impl FileRoutes {
    /// Reads `path`, checking for changes every `period`.
    pub fn new(path: impl Into<std::path::PathBuf>, period: Duration) -> Self {
        Self {
            path: path.into(),
            period,
        }
    }
}

#[async_trait]
impl LegacyRouteSource for FileRoutes {
    async fn subnets(&self) -> Result<Vec<Cidr>, StoreError> {
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
        parse_legacy_routes(&text).map_err(|e| StoreError::Rejected {
            kind: "file".into(),
            name,
            message: e.to_string(),
        })
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
