//! Waiting for convergence: every key holds its expected final state and, for a consumer, its
//! committed positions are at the end of every partition. Every end-to-end test and benchmark
//! ends with this one wait (or, for a drained run, this one look).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use converge::entity::{Event, State};
use converge::store::Store;
use tempfile::TempDir;

/// Keys loaded per call: a benchmark's tens of thousands in one call would be one huge reply.
const LOAD_CHUNK: usize = 5_000;

/// A wait for `store` to hold `expected` (by key).
///
/// ```text
/// Convergence::new(&redis.store, &stream.expected)
///     .within(Duration::from_secs(120))
///     .logs(&mut dir)
///     .wait_with_offsets(async || topic.progress(&group))
///     .await;
/// ```
#[derive(Debug)]
pub struct Convergence<'a, S> {
    store: &'a S,
    expected: &'a BTreeMap<String, Event>,
    within: Duration,
    every: Duration,
    logs: Option<&'a mut TempDir>,
}

/// One look at the store.
#[derive(Debug, Default)]
struct Look {
    right: usize,
    /// The first key not on its expected state: (key, stored, expected).
    wrong: Option<(String, Option<State>, Event)>,
    /// A store that did not answer (a restarted Redis loading its file, say) counts as not
    /// converged yet.
    error: Option<String>,
}

impl Look {
    fn converged(&self) -> bool {
        self.wrong.is_none() && self.error.is_none()
    }
}

impl<'a, S: Store> Convergence<'a, S> {
    /// Waits up to 90 s, looking every 200 ms.
    pub fn new(store: &'a S, expected: &'a BTreeMap<String, Event>) -> Self {
        Self {
            store,
            expected,
            within: Duration::from_secs(90),
            every: Duration::from_millis(200),
            logs: None,
        }
    }

    /// How long to wait before failing the test.
    pub fn within(mut self, within: Duration) -> Self {
        self.within = within;
        self
    }

    /// How often to look.
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// The directory of the processes' logs: kept, not deleted, when the wait fails, and named
    /// in the failure.
    pub fn logs(mut self, dir: &'a mut TempDir) -> Self {
        self.logs = Some(dir);
        self
    }

    /// Waits until every key holds its expected state; panics when it does not in time.
    pub async fn wait(self) {
        self.wait_with_offsets(async || Vec::new()).await;
    }

    /// One look, no waiting: panics unless every key holds its expected state now (a run that
    /// has drained its input).
    pub async fn assert_now(self) {
        self.within(Duration::ZERO).wait().await;
    }

    /// Waits until every key holds its expected state and every partition's committed position
    /// is at its end: `offsets` answers (committed, end) per partition, e.g.
    /// [`crate::kafka::TestTopic::progress`]. Returns the last positions; panics when the two
    /// do not hold together in time.
    pub async fn wait_with_offsets(
        mut self,
        mut offsets: impl AsyncFnMut() -> Vec<(i64, i64)>,
    ) -> Vec<(i64, i64)> {
        let started = Instant::now();
        loop {
            let look = self.look().await;
            let positions = offsets().await;
            let at_end = positions.iter().all(|(committed, end)| committed == end);
            if look.converged() && at_end {
                return positions;
            }
            if started.elapsed() >= self.within {
                let message = self.failure(&look, &positions);
                panic!("{message}");
            }
            tokio::time::sleep(self.every).await;
        }
    }

    async fn look(&self) -> Look {
        let keys: Vec<String> = self.expected.keys().cloned().collect();
        let mut look = Look::default();
        for chunk in keys.chunks(LOAD_CHUNK) {
            let loaded = match self.store.load(chunk).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    look.error = Some(error.to_string());
                    return look;
                }
            };
            for (key, stored) in chunk.iter().zip(loaded) {
                let stored = stored.map(|stored| stored.state);
                let expected = &self.expected[key];
                if stored.as_ref() == Some(expected) {
                    look.right += 1;
                } else if look.wrong.is_none() {
                    look.wrong = Some((key.clone(), stored, expected.clone()));
                }
            }
        }
        look
    }

    /// The failure's message; keeps the logs.
    fn failure(&mut self, look: &Look, positions: &[(i64, i64)]) -> String {
        let mut message = format!(
            "not converged within {:?}: {} of {} keys on their expected state",
            self.within,
            look.right,
            self.expected.len()
        );
        if let Some((key, stored, expected)) = &look.wrong {
            let _ = write!(
                message,
                "; first wrong: {key} stored {stored:?}, expected {expected:?}"
            );
        }
        if let Some(error) = &look.error {
            let _ = write!(message, "; the store failed: {error}");
        }
        if !positions.is_empty() {
            let _ = write!(message, "; (committed, end) per partition {positions:?}");
        }
        if let Some(dir) = self.logs.as_deref_mut() {
            dir.disable_cleanup(true);
            let _ = write!(message, "; logs in {}", dir.path().display());
        }
        message
    }
}
