//! Test support shared by the integration tests: overlay-core's scripted
//! API server (feature `apiserver`) and its schema validator, and a wait.
#![allow(dead_code, unused_imports)]

pub mod apiserver {
    pub use overlay_core::fakes::apiserver::*;

    /// Polls `cond` every 10 ms for up to 10 s; panics naming `what` on
    /// timeout.
    pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

pub mod schema {
    pub use overlay_core::fakes::apiserver::validate_object;
}
