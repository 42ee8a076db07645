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
