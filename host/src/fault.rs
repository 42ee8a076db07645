//! Crash points for the crash tests (T9): with the `fault-injection` feature, the process aborts
//! at a named point of a named batch, given as `CONVERGE_CRASH_AT=<point>:<batch>` (e.g.
//! `after_write:3`: the third batch this process started, right after its writes landed).
//! Without the feature every point compiles to nothing; a release build has none.

/// A point of a batch's way where the crash tests abort the process, in a batch's order. Its
/// name is what `CONVERGE_CRASH_AT` gives, so the tests depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// The batch's messages decoded.
    AfterDecode,
    /// The current states of its keys loaded.
    AfterLoad,
    /// Its writes landed.
    AfterWrite,
    /// Its dead letters taken.
    AfterDeadLetter,
    /// Finished, about to be acknowledged.
    BeforeAck,
    /// Acknowledged.
    AfterAck,
}

impl CrashPoint {
    /// The point's name in `CONVERGE_CRASH_AT`.
    #[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::AfterDecode => "after_decode",
            Self::AfterLoad => "after_load",
            Self::AfterWrite => "after_write",
            Self::AfterDeadLetter => "after_dead_letter",
            Self::BeforeAck => "before_ack",
            Self::AfterAck => "after_ack",
        }
    }
}

/// Aborts the process if `CONVERGE_CRASH_AT` names this point and batch.
#[cfg(feature = "fault-injection")]
pub(crate) fn point(point: CrashPoint, batch: u64) {
    static AT: std::sync::LazyLock<Option<(String, u64)>> = std::sync::LazyLock::new(|| {
        let at = std::env::var("CONVERGE_CRASH_AT").ok()?;
        let (point, batch) = at.split_once(':')?;
        Some((point.to_owned(), batch.parse().ok()?))
    });
    let name = point.as_str();
    if let Some((at_point, at_batch)) = AT.as_ref()
        && at_point == name
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
pub(crate) fn point(_point: CrashPoint, _batch: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_point_names_are_pinned() {
        for (point, name) in [
            (CrashPoint::AfterDecode, "after_decode"),
            (CrashPoint::AfterLoad, "after_load"),
            (CrashPoint::AfterWrite, "after_write"),
            (CrashPoint::AfterDeadLetter, "after_dead_letter"),
            (CrashPoint::BeforeAck, "before_ack"),
            (CrashPoint::AfterAck, "after_ack"),
        ] {
            assert_eq!(point.as_str(), name);
        }
    }
}
