//! Progress of the long library calls — a replay, a convergence check, a simulation — for
//! whoever watches. The command line draws a bar from it when stderr is a terminal; the library
//! knows nothing of terminals, and by default nobody watches ([`Silent`]).

/// What a stage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Things, named in the plural: `"histories"`, `"events"`, `"keys"`, `"changes"`.
    Items(&'static str),
    /// Bytes of input.
    Bytes,
    /// Nothing: the stage is a wait, of which only the time shows.
    Nothing,
}

/// Receives the progress of a long call, stage by stage.
///
/// [`Progress::advance`] is called from hot loops (per batch, per history, per message): an
/// implementation must be cheap and must not block. A bar adds to an atomic counter and
/// redraws at its own rate.
pub trait Progress: Send + Sync {
    /// A stage begins: `name` says what it does (`"reading"`, `"comparing"`), counting `unit`
    /// from 0 up to `total` when that is known. It ends when the next one begins or the call
    /// returns.
    fn stage(&self, name: &'static str, unit: Unit, total: Option<u64>) {
        let _ = (name, unit, total);
    }

    /// `done` more units of the current stage are done.
    fn advance(&self, done: u64) {
        let _ = done;
    }

    /// A short note on the current stage beside its count, e.g. the decisions asked so far.
    /// Formatted only by a watcher that shows it, so a silent call costs nothing.
    fn note(&self, note: std::fmt::Arguments<'_>) {
        let _ = note;
    }
}

/// Nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}

/// A count with its thousands separated by commas (`98,765`), for a stage's note: the
/// figures a bar shows beside its own, which it groups the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanCount(pub u64);

impl std::fmt::Display for HumanCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.0.to_string();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index) % 3 == 0 {
                f.write_str(",")?;
            }
            write!(f, "{digit}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::HumanCount;

    #[test]
    fn a_count_is_grouped_by_thousands() {
        assert_eq!(HumanCount(0).to_string(), "0");
        assert_eq!(HumanCount(999).to_string(), "999");
        assert_eq!(HumanCount(1_000).to_string(), "1,000");
        assert_eq!(HumanCount(98_765_432).to_string(), "98,765,432");
        assert_eq!(
            HumanCount(u64::MAX).to_string(),
            "18,446,744,073,709,551,615"
        );
    }
}
