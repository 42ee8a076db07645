//! The write window: decided batches (*flights*) whose writes and dead letters are on their
//! way. A flight takes off from the fold ([`Flight::take_off`]: its changed keys' states enter
//! the cache as in flight), lands ([`Pipeline::land`]: its writes and the dead letters known so
//! far go out at once), and completes. The run loop keeps up to `max_in_flight` flights in the
//! [`Window`] and settles them in the order they took off, so a source is acknowledged only for
//! a contiguous prefix of finished batches.
//!
//! A flight is *clean* when every write landed and the dead letters were taken: it completes on
//! its own. Anything else (a compare-and-set refused, the store or the queue failing) is
//! *repaired*: the window is drained, the cache cleared, and each drained flight, in order,
//! settles its unfinished keys on the sequential path (`settle`). Keys of later flights that
//! were decided on a refused write's state were fenced on it, so they are refused too and
//! decided again there.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::stream::FuturesOrdered;

use super::batch::Batch;
use super::fold::{Folded, Outcomes};
use super::group::KeyEvents;
use super::state::{self, StateCache};
use super::{Pipeline, PipelineError};
use crate::dead_letter::{DeadLetter, DeadLetterError, DeadLetterSink};
use crate::fault::{self, CrashPoint};
use crate::rule::Rule;
use crate::store::{Current, Store, StoreError, Write, WriteOutcome};
use crate::telemetry::events::Unavailable;
use crate::telemetry::{Operation, Service, Stage};

/// A decided batch waiting for its writes and dead letters.
pub(super) struct Flight {
    pub batch: Batch,
    written: Vec<Written>,
}

/// A key whose folded state is being written; its events' outcomes count once it lands.
struct Written {
    group: KeyEvents,
    outcomes: Outcomes,
}

/// What to send for a flight.
pub(super) struct Cargo {
    writes: Vec<Write>,
    letters: Vec<DeadLetter>,
}

/// The answers to a flight's writes and dead letters.
pub(super) struct Landed {
    writes: Vec<Write>,
    outcomes: Result<Vec<WriteOutcome>, StoreError>,
    sent: Result<(), DeadLetterError>,
    took: Duration,
}

/// The flights in the air, in the order they took off; `F` lands one.
pub(super) struct Window<F: Future<Output = Landed>> {
    landing: FuturesOrdered<F>,
    flights: VecDeque<Flight>,
}

impl Flight {
    /// A folded batch taking off: each changed key's state becomes a write and enters the
    /// cache as in flight; a key with nothing to write has its outcomes tallied now. Returns the
    /// flight and what to send for it.
    pub(super) fn take_off(
        mut batch: Batch,
        groups: Vec<KeyEvents>,
        folded: Vec<Folded>,
        cache: &mut StateCache,
    ) -> (Flight, Cargo) {
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
                        batch.seq,
                    );
                    writes.push(write);
                    written.push(Written {
                        group,
                        outcomes: fold.outcomes,
                    });
                }
                // Nothing to write: the outcomes are final now.
                None => batch.tally(fold.outcomes),
            }
        }
        let letters = batch.letters.clone();
        batch.letters_sent = letters.len();
        (Flight { batch, written }, Cargo { writes, letters })
    }
}

impl Landed {
    /// Whether every write landed and the dead letters were taken: the flight completes on
    /// its own; otherwise the window is repaired.
    fn is_clean(&self) -> bool {
        self.sent.is_ok()
            && self.outcomes.as_ref().is_ok_and(|outcomes| {
                outcomes
                    .iter()
                    .all(|outcome| matches!(outcome, WriteOutcome::Written { .. }))
            })
    }
}

impl<F: Future<Output = Landed>> Window<F> {
    pub fn new() -> Self {
        Self {
            landing: FuturesOrdered::new(),
            flights: VecDeque::new(),
        }
    }

    /// Flights in the air.
    pub fn len(&self) -> usize {
        self.flights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    /// Puts `flight` in the air; `landing` sends its cargo ([`Pipeline::land`]).
    pub fn launch(&mut self, flight: Flight, landing: F) {
        self.landing.push_back(landing);
        self.flights.push_back(flight);
    }

    /// The first flight, once its answers are in; `None` when the window is empty.
    /// Cancel-safe: the run loop drops it when a batch arrives first.
    pub async fn next_landed(&mut self) -> Option<(Flight, Landed)> {
        let landed = self.landing.next().await?;
        let flight = self.flights.pop_front()?;
        Some((flight, landed))
    }
}

impl<R: Rule, S: Store, D: DeadLetterSink> Pipeline<R, S, D> {
    /// Sends a flight's writes and dead letters, both at once. Never waits out an outage: a
    /// failure is answered, and the flight is repaired. Borrows nothing from the pipeline, so
    /// the next batch is decided meanwhile.
    pub(super) fn land(&self, cargo: Cargo) -> impl Future<Output = Landed> + use<R, S, D> {
        let store = Arc::clone(&self.store);
        let sink = Arc::clone(&self.dead_letters);
        async move {
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
    }

    /// Settles the window's first flight, which has landed: completes it if it is clean; else
    /// drains the window, clears the cache and repairs every drained flight in order. Returns
    /// the finished batches, in order.
    pub(super) async fn settle_landed<F: Future<Output = Landed>>(
        &mut self,
        flight: Flight,
        landed: Landed,
        window: &mut Window<F>,
    ) -> Result<Vec<Batch>, PipelineError> {
        if landed.is_clean() {
            return Ok(vec![self.complete(flight, landed).await?]);
        }
        let mut drained = vec![(flight, landed)];
        while let Some(next) = window.next_landed().await {
            drained.push(next);
        }
        self.cache.clear();
        let mut done = Vec::with_capacity(drained.len());
        for (flight, landed) in drained {
            done.push(self.repair(flight, landed).await?);
        }
        Ok(done)
    }

    /// Settles every flight in the window, in order.
    pub(super) async fn drain<F: Future<Output = Landed>>(
        &mut self,
        window: &mut Window<F>,
    ) -> Result<Vec<Batch>, PipelineError> {
        let mut done = Vec::new();
        while let Some((flight, landed)) = window.next_landed().await {
            done.extend(self.settle_landed(flight, landed, window).await?);
        }
        Ok(done)
    }

    /// Completes a clean flight: its writes settle in the cache, its written keys' outcomes are
    /// tallied and their dead letters sent. Returns the finished batch, to be acknowledged and
    /// recorded.
    async fn complete(
        &mut self,
        mut flight: Flight,
        landed: Landed,
    ) -> Result<Batch, PipelineError> {
        let seq = flight.batch.seq;
        let metrics = &self.context.metrics;
        metrics.record_store_call(Operation::Write, landed.took);
        metrics.record_stage(Stage::Write, landed.took);
        fault::point(CrashPoint::AfterWrite, seq);
        for write in &landed.writes {
            self.cache.landed(&write.key, seq);
        }
        flight.batch.tally.writes += landed.writes.len() as u64;
        for written in flight.written {
            flight.batch.tally(written.outcomes);
        }
        self.send_rest(&mut flight.batch).await?;
        fault::point(CrashPoint::AfterDeadLetter, seq);
        Ok(flight.batch)
    }

    /// Repairs a flight after the window was drained and the cache cleared (flights are
    /// repaired in order): resends its dead letters if they failed, keeps the writes that
    /// landed, and settles the other keys on the sequential path.
    async fn repair(&mut self, mut flight: Flight, landed: Landed) -> Result<Batch, PipelineError> {
        let Landed {
            writes,
            outcomes,
            sent,
            took,
        } = landed;
        let seq = flight.batch.seq;
        self.context.metrics.record_stage(Stage::Write, took);
        match sent {
            Ok(()) => {}
            Err(error) if error.is_transient() => {
                self.context.metrics.emit(Unavailable {
                    service: Service::DeadLetterQueue,
                    operation: Operation::Send,
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
                for ((written, write), outcome) in
                    flight.written.into_iter().zip(writes).zip(outcomes)
                {
                    match outcome {
                        WriteOutcome::Written { revision } => {
                            flight.batch.tally.writes += 1;
                            self.cache
                                .remember(write.key.clone(), Some(write.landed(revision)));
                            flight.batch.tally(written.outcomes);
                        }
                        WriteOutcome::Conflict { current } => {
                            flight.batch.tally.conflicts += 1;
                            self.cache.remember(write.key, current);
                            redo.push(written.group);
                        }
                    }
                }
            }
            Err(error) if error.is_transient() || matches!(error, StoreError::Unreadable(_)) => {
                // Some writes may have landed (or a key's value turned unreadable: the reload
                // sets it aside). A key whose stored writer is its write's id landed: its
                // decisions stand as made (deciding them again would only find its own state,
                // and count the events as ignored). Every other written key is decided again,
                // on a fresh load (the cache was cleared).
                self.context.metrics.emit(Unavailable {
                    service: Service::Store,
                    operation: Operation::Write,
                    reason: &error,
                    retry_in: Duration::ZERO,
                });
                let keys: Vec<String> = writes.iter().map(|write| write.key.clone()).collect();
                let stored = state::load(&*self.store, &keys, &self.context).await?;
                for ((written, write), stored) in flight.written.into_iter().zip(writes).zip(stored)
                {
                    match stored {
                        Ok(Some(current)) if current.writer == write.writer => {
                            flight.batch.tally.writes += 1;
                            self.cache.remember(write.key, Some(current));
                            flight.batch.tally(written.outcomes);
                        }
                        _ => redo.push(written.group),
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
        self.settle(&mut flight.batch, redo, unsure).await?;
        fault::point(CrashPoint::AfterWrite, seq);
        self.send_rest(&mut flight.batch).await?;
        fault::point(CrashPoint::AfterDeadLetter, seq);
        Ok(flight.batch)
    }

    /// Sends the batch's dead letters that did not go out with its writes, waiting out
    /// outages.
    async fn send_rest(&self, batch: &mut Batch) -> Result<(), PipelineError> {
        let letters = batch.unsent_letters();
        if letters.is_empty() {
            return Ok(());
        }
        let sending = Instant::now();
        let (sink, context) = (&*self.dead_letters, &self.context);
        context
            .retry(Service::DeadLetterQueue, Operation::Send, async || {
                // A send to a queue that is down can take the producer's whole delivery
                // timeout: shutdown does not wait for it (the batch is left unacknowledged).
                context
                    .unless_stopped(Service::DeadLetterQueue, sink.send(letters))
                    .await?
                    .map_err(PipelineError::from)
            })
            .await?;
        batch.letters_sent = batch.letters.len();
        context
            .metrics
            .record_stage(Stage::DeadLetter, sending.elapsed());
        Ok(())
    }
}
