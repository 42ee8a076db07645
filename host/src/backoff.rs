//! Exponential backoff: the wait between attempts at something that failed (a store call, a
//! dead-letter send, a partition's stream), doubled after each failure up to a ceiling.

use std::time::Duration;

/// The waits between attempts: `first`, then doubled after each attempt, up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Read only by [`Backoff::reset`], which only the Fluvio source needs.
    #[cfg_attr(not(feature = "fluvio"), allow(dead_code))]
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Waits from `first` (at least 1 ms: a zero wait would never double, and retries would
    /// spin) up to `max` (at least `first`).
    pub fn new(first: Duration, max: Duration) -> Self {
        let first = first.max(Duration::from_millis(1));
        Self {
            first,
            max: max.max(first),
            current: first,
        }
    }

    /// The wait before the next attempt; each call doubles the following one.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        wait
    }

    /// Starts again from the first wait, after a success: for a backoff kept across
    /// successes (the Fluvio source's); the pipeline takes a fresh one per outage.
    #[cfg_attr(not(feature = "fluvio"), allow(dead_code))]
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_never_spins() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(0), ms(5));
        let waits: Vec<Duration> = (0..5).map(|_| backoff.next_wait()).collect();
        assert_eq!(waits, [ms(1), ms(2), ms(4), ms(5), ms(5)]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), ms(1));
        // A ceiling under the first wait is raised to it.
        let mut backoff = Backoff::new(ms(50), ms(10));
        assert_eq!((backoff.next_wait(), backoff.next_wait()), (ms(50), ms(50)));
    }
}
