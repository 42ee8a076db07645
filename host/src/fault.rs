//! Crash points for the crash tests (T9): with the `fault-injection` feature, the process aborts
//! at a named point of a named batch, given as `CONVERGE_CRASH_AT=<point>:<batch>` (e.g.
//! `after_write:3`: the third batch this process started, right after its writes landed).
//! Without the feature every point compiles to nothing; a release build has none.
//!
//! Points, in a batch's order: `after_decode`, `after_load`, `after_write`,
//! `after_dead_letter`, `before_ack`, `after_ack`.

/// Aborts the process if `CONVERGE_CRASH_AT` names this point and batch.
#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &'static str, batch: u64) {
    static AT: std::sync::LazyLock<Option<(String, u64)>> = std::sync::LazyLock::new(|| {
        let at = std::env::var("CONVERGE_CRASH_AT").ok()?;
        let (point, batch) = at.split_once(':')?;
        Some((point.to_owned(), batch.parse().ok()?))
    });
    if let Some((point, at_batch)) = AT.as_ref()
        && point == name
        && *at_batch == batch
    {
        use std::io::Write as _;
        // Straight to stderr: the log's writer may buffer, and abort flushes nothing.
        let _ = writeln!(
            std::io::stderr(),
            "converge: crash point {name} of batch {batch}"
        );
        std::process::abort();
    }
}

/// Without the `fault-injection` feature there are no crash points.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &'static str, _batch: u64) {}
