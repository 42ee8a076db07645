//! A batch in flight: decided, its writes and dead letters sent, not yet acknowledged.
//!
//! [`prepare`] takes a batch through decode, enrich, group, current states (cache or one load)
//! and fold, and returns what to send; [`land`] sends it (the writes and the dead letters known
//! so far, at once); [`complete`] settles the answer. The run loop keeps several flights in
//! its window and completes them in order, so a source is acknowledged only for a contiguous
//! prefix of finished batches.
//!
//! A flight is *clean* when every write landed and the dead letters were taken. Anything else
//! (a compare-and-set refused, the store or the queue failing) is *repaired*: the window is
//! drained, the cache cleared, and each drained batch, in order, settles its unfinished keys on
//! the sequential path ([`settle::settle`]). Keys of later batches that were decided on a
//! refused write's state were fenced on it, so they are refused too and decided again there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::PipelineError;
use super::batch::Batch;
use super::cache::StateCache;
use super::group::{self, KeyEvents};
use super::outage::Outage;
use super::settle;
use crate::config::PipelineConfig;
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};
use crate::entity::{Decision, Event};
use crate::fault;
use crate::rule::{DecideError, Rule};
use crate::source::Message;
use crate::store::{Current, Store, StoreError, Write, WriteOutcome};

/// A key whose folded state is being written; its events' outcomes count once it lands.
struct Written {
    group: KeyEvents,
    outcomes: Vec<(usize, Result<Decision, DecideError>)>,
}

/// A decided batch waiting for its writes and dead letters.
pub(super) struct Flight {
    /// Numbers flights, so the cache can tell whose write a key's in-flight state is.
    pub seq: u64,
    pub batch: Batch,
    written: Vec<Written>,
}

/// What to send for a flight.
pub(super) struct Cargo {
    pub writes: Vec<Write>,
    pub letters: Vec<DeadLetter>,
}

/// The answers to a flight's writes and dead letters.
pub(super) struct Landed {
    writes: Vec<Write>,
    outcomes: Result<Vec<WriteOutcome>, StoreError>,
    sent: Result<(), DeadLetterError>,
    took: Duration,
}

impl Landed {
    /// Whether every write landed and the dead letters were taken: the flight completes on
    /// its own; otherwise the window is repaired.
    pub(super) fn is_clean(&self) -> bool {
        self.sent.is_ok()
            && self.outcomes.as_ref().is_ok_and(|outcomes| {
                outcomes
                    .iter()
                    .all(|outcome| matches!(outcome, WriteOutcome::Written { .. }))
            })
    }
}

/// Everything `prepare` needs beside the batch.
pub(super) struct Deciding<'a, R, S> {
    pub rule: &'a mut R,
    pub store: &'a S,
    pub cache: &'a mut StateCache,
    pub outage: &'a Outage<'a>,
    pub config: &'a PipelineConfig,
}

/// Decodes, enriches, groups and folds a batch; its changed keys' states go into the cache as
/// in flight. Returns the flight and what to send for it.
pub(super) async fn prepare<R: Rule, S: Store, E: std::fmt::Display>(
    deciding: Deciding<'_, R, S>,
    messages: Vec<Message>,
    seq: u64,
    enrich: impl AsyncFnOnce(
        &[(usize, super::Decoded)],
    ) -> Result<HashMap<String, Result<Event, E>>, PipelineError>,
) -> Result<(Flight, Cargo), PipelineError> {
    let Deciding {
        rule,
        store,
        cache,
        outage,
        config,
    } = deciding;
    let metrics = outage.metrics;
    let mut batch = Batch::new(seq, messages, rule.info().stamp());
    let decoding = Instant::now();
    let decoded = group::decode_all(&mut batch, &config.mapping);
    metrics.record_stage("decode", decoding.elapsed());
    fault::point("after_decode", seq);
    let fetched = enrich(&decoded).await?;
    let mut groups = group::by_key(&mut batch, decoded, &fetched);
    let currents = settle::current_states(&mut batch, &mut groups, cache, store, outage).await?;
    fault::point("after_load", seq);
    let folding = Instant::now();
    let folded = settle::fold(rule, &mut groups, currents, config.rule_retries);
    metrics.record_stage("fold", folding.elapsed());

    let mut writes = Vec::new();
    let mut written = Vec::new();
    for (group, fold) in groups.into_iter().zip(folded) {
        match fold.write(&group.key, &batch, group.last_index()) {
            Some(write) => {
                cache.write_in_flight(
                    group.key.clone(),
                    Current {
                        state: write.state.clone(),
                        revision: write.expected_revision + 1,
                        writer: write.writer,
                    },
                    seq,
                );
                writes.push(write);
                written.push(Written {
                    group,
                    outcomes: fold.outcomes,
                });
            }
            None => {
                // Nothing to write: the outcomes are final now.
                for (index, outcome) in fold.outcomes {
                    settle::tally(&mut batch, index, outcome);
                }
            }
        }
    }
    let letters = batch.letters.clone();
    batch.letters_sent = letters.len();
    Ok((
        Flight {
            seq,
            batch,
            written,
        },
        Cargo { writes, letters },
    ))
}

/// Sends a flight's writes and dead letters, both at once. Never waits out an outage: a failure
/// is answered, and the flight is repaired.
pub(super) async fn land(store: &impl Store, sink: &impl DeadLetterSink, cargo: Cargo) -> Landed {
    let started = Instant::now();
    let Cargo { writes, letters } = cargo;
    let (outcomes, sent) = futures::join!(
        async {
            if writes.is_empty() {
                Ok(Vec::new())
            } else {
                store.write(&writes).await
            }
        },
        async {
            if letters.is_empty() {
                Ok(())
            } else {
                sink.send(&letters).await
            }
        }
    );
    Landed {
        writes,
        outcomes,
        sent,
        took: started.elapsed(),
    }
}

/// Completes a clean flight: its writes settle in the cache, its written keys' outcomes are
/// tallied and their dead letters sent. Returns the finished batch, to be recorded and
/// acknowledged.
pub(super) async fn complete(
    mut flight: Flight,
    landed: Landed,
    cache: &mut StateCache,
    sink: &impl DeadLetterSink,
    outage: &Outage<'_>,
) -> Result<Batch, PipelineError> {
    outage.metrics.record_store_call("write", landed.took);
    outage.metrics.record_stage("write", landed.took);
    fault::point("after_write", flight.seq);
    for write in &landed.writes {
        cache.landed(&write.key, flight.seq);
    }
    flight.batch.tally.writes += landed.writes.len() as u64;
    for written in flight.written {
        for (index, outcome) in written.outcomes {
            settle::tally(&mut flight.batch, index, outcome);
        }
    }
    send_rest(&mut flight.batch, sink, outage).await?;
    fault::point("after_dead_letter", flight.seq);
    Ok(flight.batch)
}

/// Repairs a flight after the window was drained and the cache cleared (flights are repaired
/// in order): resends its dead letters if they failed, keeps the writes that landed, and
/// settles the other keys on the sequential path.
pub(super) async fn repair<R: Rule, S: Store>(
    mut flight: Flight,
    landed: Landed,
    deciding: Deciding<'_, R, S>,
    sink: &impl DeadLetterSink,
) -> Result<Batch, PipelineError> {
    let Deciding {
        rule,
        store,
        cache,
        outage,
        config,
    } = deciding;
    let Landed {
        writes,
        outcomes,
        sent,
        took,
    } = landed;
    outage.metrics.record_stage("write", took);
    match sent {
        Ok(()) => {}
        Err(error) if error.is_transient() => {
            outage.metrics.emit(crate::telemetry::events::Unavailable {
                service: "dead-letter queue",
                operation: "send",
                reason: &error,
                retry_in: Duration::ZERO,
            });
            flight.batch.letters_sent = 0;
        }
        Err(error) => return Err(error.into()),
    }
    let mut redo = Vec::new();
    let unsure = outcomes.is_err();
    match outcomes {
        Ok(outcomes) => {
            for ((written, write), outcome) in flight.written.into_iter().zip(writes).zip(outcomes)
            {
                match outcome {
                    WriteOutcome::Written { revision } => {
                        flight.batch.tally.writes += 1;
                        cache.remember(write.key.clone(), Some(write.landed(revision)));
                        for (index, outcome) in written.outcomes {
                            settle::tally(&mut flight.batch, index, outcome);
                        }
                    }
                    WriteOutcome::Conflict { current } => {
                        flight.batch.tally.conflicts += 1;
                        cache.remember(write.key, current);
                        redo.push(written.group);
                    }
                }
            }
        }
        Err(error) if error.is_transient() || matches!(error, StoreError::Unreadable(_)) => {
            // Some writes may have landed (or a key's value turned unreadable: the reload sets
            // it aside). A key whose stored writer is its write's id landed: its decisions
            // stand as made (deciding them again would only find its own state, and count
            // the events as ignored). Every other written key is decided again, on a fresh
            // load (the cache was cleared).
            outage.metrics.emit(crate::telemetry::events::Unavailable {
                service: "store",
                operation: "write",
                reason: &error,
                retry_in: Duration::ZERO,
            });
            let keys: Vec<String> = writes.iter().map(|write| write.key.clone()).collect();
            let stored = settle::load(store, &keys, outage).await?;
            for ((written, write), stored) in flight.written.into_iter().zip(writes).zip(stored) {
                match stored {
                    Ok(Some(current)) if current.writer == write.writer => {
                        flight.batch.tally.writes += 1;
                        cache.remember(write.key, Some(current));
                        for (index, outcome) in written.outcomes {
                            settle::tally(&mut flight.batch, index, outcome);
                        }
                    }
                    _ => redo.push(written.group),
                }
            }
        }
        Err(error) => return Err(error.into()),
    }
    settle::settle(
        &mut flight.batch,
        redo,
        rule,
        store,
        cache,
        outage,
        config,
        unsure,
    )
    .await?;
    fault::point("after_write", flight.seq);
    send_rest(&mut flight.batch, sink, outage).await?;
    fault::point("after_dead_letter", flight.seq);
    Ok(flight.batch)
}

/// Sends the batch's dead letters that did not go out with its writes, waiting out outages.
async fn send_rest(
    batch: &mut Batch,
    sink: &impl DeadLetterSink,
    outage: &Outage<'_>,
) -> Result<(), PipelineError> {
    if batch.unsent_letters().is_empty() {
        return Ok(());
    }
    let sending = Instant::now();
    outage
        .send_dead_letters(sink, batch.unsent_letters())
        .await?;
    batch.letters_sent = batch.letters.len();
    outage
        .metrics
        .record_stage("dead_letter", sending.elapsed());
    Ok(())
}
