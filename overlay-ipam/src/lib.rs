//! # overlay-ipam
//!
//! [`overlay_core::IpamBackend`] implementations and the tools to test them:
//!
//! - [`memory`] and [`file`]: embedded pools (lowest free address per zone,
//!   configured with [`pools::PoolsConfig`]), the defaults for labs and
//!   embedding.
//! - [`conformance`]: a suite of checks any backend can run in its tests.

pub mod conformance;
pub mod file;
pub mod memory;
pub mod pools;

pub use overlay_core::{IpamBackend, IpamError, Reservation};
