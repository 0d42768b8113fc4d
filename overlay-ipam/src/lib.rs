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
