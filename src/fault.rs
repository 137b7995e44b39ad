//! Fail points for the fault tests. They exist only in builds with the `fail` crate's
//! `failpoints` feature (which `cargo test` turns on); elsewhere [`hit`] is always false.

/// True when fail point `name` is configured with the `return` action, e.g.
/// `FAILPOINTS=consumer-before-settle=return`.
pub fn hit(name: &str) -> bool {
    // Without the feature the macro below is empty and would leave `name` unused.
    let _ = name;
    fail::fail_point!(name, |_| true);
    false
}

/// Freezes the calling task (not its thread) when fail point `name` is hit, as if the
/// process died right here; the test then kills the process.
pub async fn freeze_if_hit(name: &str) {
    if hit(name) {
        tracing::warn!(fail_point = name, "fail point hit: freezing this task");
        std::future::pending::<()>().await;
    }
}

/// Delays the calling task by the milliseconds fail point `name` is configured with
/// (`FAILPOINTS=intake-slow=return(2000)`), as a slow queue or database would.
pub async fn delay_if_hit(name: &str) {
    if let Some(millis) = configured_millis(name) {
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    }
}

fn configured_millis(name: &str) -> Option<u64> {
    let _ = name;
    fail::fail_point!(name, |millis| millis.and_then(|m| m.parse().ok()));
    None
}

/// The signed number fail point `name` is configured with
/// (`FAILPOINTS=clock-skew-ms=return(-8000)`), if any.
pub fn configured_number(name: &str) -> Option<i64> {
    let _ = name;
    fail::fail_point!(name, |n| n.and_then(|n| n.parse().ok()));
    None
}
