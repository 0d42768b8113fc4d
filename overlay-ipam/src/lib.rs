//! # overlay-ipam
//!
//! [`overlay_core::IpamBackend`] implementations and the tools to test them:
//!
//! - [`memory`] and [`file`](mod@file): embedded pools (lowest free address per zone,
//!   configured with [`pools::PoolsConfig`]), the defaults for labs and
//!   embedding; both are an [`embedded::EmbeddedBackend`] and differ
//!   only in where their state is kept.
//! - [`phpipam`]: the phpIPAM REST backend.
//! - [`kubernetes`]: Kubernetes-native pools (`OverlayIPPool`), one
//!   `OverlayIPAllocation` per address, uniqueness kept by the API server.
//! - [`config`]: `overlay-ip-config.yaml`, selecting and building a backend.
//! - [`conformance`]: a suite of checks any backend can run in its tests.
//! - [`check`]: the logic of `overlayctl ipam check` / `ipam conformance`.
//! - `emulator` (feature `testing`): an in-process phpIPAM server that
//!   reproduces the recorded behaviour of phpIPAM 1.8.
//!
//! ## Example
//!
//! The controller's config file (`overlay-ip-config.yaml`) selects and
//! builds one backend; every backend answers the same
//! [`IpamBackend`] calls. Embedded pools, which need nothing outside the
//! process:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! use std::time::Duration;
//!
//! use overlay_core::{Owner, Zone};
//! use overlay_ipam::IpamBackend;
//! use overlay_ipam::config::IpamConfig;
//!
//! let config = IpamConfig::from_yaml(
//!     "overlay-ip-config.yaml",
//!     r#"
//! clusterId: example
//! embedded:
//!   zones:
//!     dal10:
//!       - {cidr: 192.0.2.0/29, gateway: 192.0.2.1}
//!       - {cidr: 198.51.100.0/29}
//! "#,
//! )?;
//! let ipam = config.build()?;
//! let (node_a, dal10) = (Owner::new("example", "node-a"), Zone::parse("zone", "dal10")?);
//!
//! // The lowest free address of the zone's first pool, and its gateway.
//! let r = ipam.reserve(&node_a, &dal10).await?;
//! assert_eq!(r.address.to_string(), "192.0.2.2/29");
//! assert_eq!(r.gateway, Some("192.0.2.1".parse()?));
//! // Reserving is idempotent per owner: a retry gets the same address.
//! assert_eq!(ipam.reserve(&node_a, &dal10).await?.address, r.address);
//!
//! // Released with no hold-down: the owner holds nothing any more.
//! ipam.release(&r, Duration::ZERO).await?;
//! assert!(ipam.lookup(&node_a, None).await?.is_none());
//!
//! // A bad file is refused with the file, the field and what is wrong.
//! let bad = IpamConfig::from_yaml("overlay-ip-config.yaml", "embedded: {zones: {}}\nkubernetes: {}\n");
//! let err = bad.unwrap_err().to_string();
//! assert!(err.contains("configure exactly one IPAM backend"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```
//!
//! The same calls go to phpIPAM (`phpIPAM:` section) or to Kubernetes-native
//! pools (`kubernetes: {}`, built with [`config::IpamConfig::build_kubernetes`]
//! over a [`PoolStore`](overlay_core::ippool::PoolStore)). To write a backend
//! of your own, implement [`IpamBackend`] and run [`conformance::run_all`]
//! in its tests. The workspace README
//! (<https://github.com/overlay-project/overlay#readme>) describes the
//! config file and each backend in full.

pub mod check;
pub mod config;
pub mod conformance;
pub mod embedded;
#[cfg(feature = "testing")]
pub mod emulator;
pub mod file;
pub mod kubernetes;
pub mod memory;
pub mod phpipam;
pub mod pools;

pub use overlay_core::{IpamBackend, IpamError, Reservation};

// The README's examples run as doctests too.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
