//! # overlay-netlink
//!
//! [`overlay_core::RouteProgrammer`] over rtnetlink. (The programmer lands
//! with the netlink issue; this crate re-exports the trait.)

pub use overlay_core::{ProgrammerError, RouteProgrammer};
