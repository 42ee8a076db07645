//! The simulated network between the order system and the topic: it holds messages in a
//! window and lets them out in random order, duplicates some, and delays some.

use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Publisher, SimulatorConfig, SimulatorError};

/// A message on its way through the simulated network.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Delayed {
    /// Reversed so that the heap's top is the first due.
    due: std::cmp::Reverse<Instant>,
    sequence: u64,
    key: String,
    body: Vec<u8>,
    stamp: Option<i64>,
}

/// A change on its way out: key, body and the Unix ms it was meant to be sent at (paced runs).
type Outgoing = (String, Vec<u8>, Option<i64>);

/// The misbehaving network between the order system and the topic.
pub(super) struct Network {
    publisher: Publisher,
    rng: StdRng,
    duplicate_percent: u8,
    shuffle_window: usize,
    max_delay: Duration,
    window: Vec<Outgoing>,
    delayed: BinaryHeap<Delayed>,
    sequence: u64,
    pub(super) published: u64,
    pub(super) duplicated: u64,
}

impl Network {
    pub(super) fn new(publisher: Publisher, config: &SimulatorConfig) -> Self {
        Self {
            publisher,
            rng: StdRng::seed_from_u64(config.seed.wrapping_add(1)),
            duplicate_percent: config.duplicate_percent.min(100),
            shuffle_window: config.shuffle_window,
            max_delay: config.max_delay,
            window: Vec::new(),
            delayed: BinaryHeap::new(),
            sequence: 0,
            published: 0,
            duplicated: 0,
        }
    }

    pub(super) async fn send(&mut self, outgoing: Outgoing) -> Result<(), SimulatorError> {
        if self.rng.random_range(0..100) < self.duplicate_percent {
            self.duplicated += 1;
            self.window.push(outgoing.clone());
        }
        self.window.push(outgoing);
        while self.window.len() > self.shuffle_window.max(1) {
            let pick = self.rng.random_range(0..self.window.len());
            let outgoing = self.window.swap_remove(pick);
            self.delay(outgoing).await?;
        }
        self.release_due(Instant::now()).await
    }

    /// Holds a message for its simulated network delay. Its stamp stays the time the change
    /// was meant to go out: the network's delay is part of what a consumer sees.
    async fn delay(&mut self, (key, body, stamp): Outgoing) -> Result<(), SimulatorError> {
        if self.max_delay.is_zero() {
            return self.publish(&key, &body, stamp).await;
        }
        let hold = self.rng.random_range(Duration::ZERO..=self.max_delay);
        self.sequence += 1;
        self.delayed.push(Delayed {
            due: std::cmp::Reverse(Instant::now() + hold),
            sequence: self.sequence,
            key,
            body,
            stamp,
        });
        Ok(())
    }

    pub(super) async fn release_due(&mut self, now: Instant) -> Result<(), SimulatorError> {
        while self.delayed.peek().is_some_and(|next| next.due.0 <= now) {
            if let Some(next) = self.delayed.pop() {
                self.publish(&next.key, &next.body, next.stamp).await?;
            }
        }
        Ok(())
    }

    async fn publish(
        &mut self,
        key: &str,
        body: &[u8],
        stamp: Option<i64>,
    ) -> Result<(), SimulatorError> {
        self.published += 1;
        self.publisher.publish(key, body, stamp).await
    }

    /// Lets out everything still held, in random order, each delayed one when due.
    pub(super) async fn drain(&mut self) -> Result<(), SimulatorError> {
        while !self.window.is_empty() {
            let pick = self.rng.random_range(0..self.window.len());
            let outgoing = self.window.swap_remove(pick);
            self.delay(outgoing).await?;
        }
        while let Some(next) = self.delayed.peek() {
            tokio::time::sleep_until(next.due.0.into()).await;
            self.release_due(Instant::now()).await?;
        }
        self.publisher.flush().await
    }
}
