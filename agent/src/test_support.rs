//! Helpers for the agent's unit tests.

use std::time::Duration;

/// Polls `f` until it gives a value, failing with `what` after `within`.
/// The pause between polls is the only sleep the unit tests use.
pub(crate) async fn poll_until<T>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
