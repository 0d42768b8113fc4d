//! # overlay-ipam
//!
//! [`overlay_core::IpamBackend`] implementations: phpIPAM, embedded pools,
//! and a conformance suite any backend can run. (Backends land with the
//! IPAM issue; this crate re-exports the trait so users can depend on it
//! already.)

pub use overlay_core::{IpamBackend, IpamError, Reservation};
