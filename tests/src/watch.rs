//! A watcher that fails a test if any key is ever seen moving backward.
//!
//! Convergence at the end of a run says nothing about the way there: a key may have gone back
//! to an older state for a while (a zombie's late write, a lost compare-and-set) and forward
//! again. The [`Watcher`] samples every key on a background task while the test runs and
//! remembers each key's last sample; a key is a regression when a later sample is older in the
//! order-status rule's own order, when its revision goes down, or when a key that existed is
//! gone.
//!
//! ```text
//! let watcher = Watcher::start(redis.store.clone(), keys.clone(), Duration::from_millis(50));
//! // … run, fault, converge …
//! let samples = watcher.finish().await; // panics naming the first key that moved backward
//! assert!(samples > 20, "the watcher barely ran: {samples} samples");
//! ```

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use converge::store::{Current, RedisStore, Store};
use converge_order_rule::core::STATUSES;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Keys loaded per call: one pipeline of tens of thousands of HMGETs would be one huge reply.
const LOAD_CHUNK: usize = 5_000;

/// Regressions kept in full; a broken run would otherwise keep one per key per sample.
const KEPT: usize = 20;

/// Where a state stands in the order-status rule's order (`plugin/src/core.rs`, `decide`):
/// status rank, then version, then timestamp, then payload bytes. A status the rule does not
/// know ranks below every known one, as the rule treats it.
pub fn newness(current: &Current) -> (Option<usize>, u64, u64, &[u8]) {
    let state = &current.state;
    (
        STATUSES.iter().position(|known| *known == state.status),
        state.version,
        state.timestamp_ms,
        state.payload.as_bytes(),
    )
}

/// Whether a key sampled as `before` and then as `now` moved backward: an older state in the
/// rule's order, a lower revision (a write lost or undone, even to an equal state), or gone.
pub fn moved_backward(before: &Current, now: Option<&Current>) -> bool {
    match now {
        None => true,
        Some(now) => newness(now) < newness(before) || now.revision < before.revision,
    }
}

/// One key seen moving backward between two samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regression {
    pub key: String,
    pub from: Current,
    /// `None`: the key was gone.
    pub to: Option<Current>,
    /// The sample that saw it (1 for the first), and when it was taken, since the start.
    pub sample: u64,
    pub at: Duration,
}

impl std::fmt::Display for Regression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} moved backward at sample {} ({:?} after the watcher started): {} -> ",
            self.key,
            self.sample,
            self.at,
            describe(&self.from)
        )?;
        match &self.to {
            Some(to) => f.write_str(&describe(to)),
            None => f.write_str("gone"),
        }
    }
}

fn describe(current: &Current) -> String {
    let state = &current.state;
    format!(
        "{} v{} t={} payload={} (rev {}, writer {:#x})",
        state.status,
        state.version,
        state.timestamp_ms,
        state.payload,
        current.revision,
        current.writer
    )
}

/// What a stopped watcher saw.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// Samples that read every key (a sample with a failed load is skipped, not counted).
    pub samples: u64,
    /// Samples skipped because a load failed (the store down, say), and the last failure.
    pub failed: u64,
    pub last_failure: Option<String>,
    /// How many times any key moved backward, and the first [`KEPT`] of them in full.
    pub regressions: u64,
    pub first: Vec<Regression>,
}

/// Samples every key of a store at a fixed period on a background task, recording each key
/// that moves backward (see the module docs). Dropping it without [`Watcher::finish`] stops it
/// and checks nothing.
#[derive(Debug)]
pub struct Watcher {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Watched>,
}

impl Watcher {
    /// Starts sampling `keys` of `store` every `every` (a sample slower than that is followed by
    /// the next at once). Keys are loaded in pipelined chunks of 5,000 with
    /// [`Store::load`], so a sample costs one HMGET per key.
    pub fn start(store: RedisStore, keys: Vec<String>, every: Duration) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(watch(store, keys, every, stopped));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Takes one last sample and stops; answers what was seen, without judging it.
    pub async fn stop(mut self) -> Watched {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the watcher's task ended")
    }

    /// Takes one last sample and stops; panics naming the first key that moved backward (what
    /// it was, what it became, when), and otherwise returns the number of samples taken —
    /// assert a minimum, so that a watcher that never ran cannot pass.
    pub async fn finish(self) -> u64 {
        let watched = self.stop().await;
        if let Some(first) = watched.first.first() {
            let mut message = format!(
                "{} time(s) a key moved backward in {} samples; first: {first}",
                watched.regressions, watched.samples
            );
            for more in &watched.first[1..] {
                let _ = write!(message, "\n  then: {more}");
            }
            panic!("{message}");
        }
        watched.samples
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(
    store: RedisStore,
    keys: Vec<String>,
    every: Duration,
    mut stop: oneshot::Receiver<()>,
) -> Watched {
    let started = Instant::now();
    let mut watched = Watched::default();
    // Each key's last sample, in the order of `keys`.
    let mut seen: Vec<Option<Current>> = vec![None; keys.len()];
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = false;
    while !last {
        tokio::select! {
            biased;
            // Also when the watcher was dropped: one more sample is harmless.
            _ = &mut stop => last = true,
            _ = ticks.tick() => {}
        }
        let sample = watched.samples + watched.failed + 1;
        let mut whole = true;
        for (chunk, keys) in keys.chunks(LOAD_CHUNK).enumerate() {
            let loaded = match store.load(keys).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    whole = false;
                    watched.last_failure = Some(error.to_string());
                    continue;
                }
            };
            let at = started.elapsed();
            let seen = &mut seen[chunk * LOAD_CHUNK..];
            for ((key, now), before) in keys.iter().zip(loaded).zip(seen.iter_mut()) {
                let backward = before
                    .as_ref()
                    .filter(|from| moved_backward(from, now.as_ref()));
                if let Some(from) = backward {
                    watched.regressions += 1;
                    if watched.first.len() < KEPT {
                        watched.first.push(Regression {
                            key: key.clone(),
                            from: from.clone(),
                            to: now.clone(),
                            sample,
                            at,
                        });
                    }
                }
                // A key that went back is judged from where it is now, so one regression is
                // reported once rather than at every later sample.
                if now.is_some() || before.is_some() {
                    *before = now;
                }
            }
        }
        if whole {
            watched.samples += 1;
        } else {
            watched.failed += 1;
        }
    }
    watched
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge::entity::State;

    fn current(status: &str, version: u64, revision: u64) -> Current {
        Current {
            state: State {
                key: "order-1".to_owned(),
                status: status.to_owned(),
                version,
                timestamp_ms: 10,
                payload: "{}".to_owned(),
            },
            revision,
            writer: 1,
        }
    }

    #[test]
    fn the_rules_order_decides_what_is_backward() {
        let paid = current("paid", 2, 2);
        assert!(!moved_backward(&paid, Some(&paid)));
        assert!(!moved_backward(&paid, Some(&current("completed", 3, 3))));
        // Status outranks version, as in the rule.
        assert!(!moved_backward(&paid, Some(&current("completed", 1, 3))));
        assert!(moved_backward(&paid, Some(&current("created", 9, 3))));
        assert!(moved_backward(&paid, Some(&current("paid", 1, 3))));
        // The same state under a lower revision: a write was undone.
        assert!(moved_backward(&paid, Some(&current("paid", 2, 1))));
        assert!(moved_backward(&paid, None));
        // An unknown status is older than any known one.
        assert!(moved_backward(&paid, Some(&current("legacy", 9, 3))));
        assert!(!moved_backward(
            &current("legacy", 9, 1),
            Some(&current("created", 1, 2))
        ));
    }
}
