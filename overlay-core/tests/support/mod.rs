//! Test support shared by the integration tests: a structural-schema
//! validator and a scripted API server.
#![allow(dead_code)]

pub mod apiserver;
pub mod schema;
