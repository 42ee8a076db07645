//! Waiting out an unavailable store or dead-letter queue: each failure is reported (one log
//! line, one count), then waited out with exponential backoff, until the call succeeds or
//! shutdown is asked for. The partition waits rather than skipping anything.

use std::fmt::Display;
use std::time::Duration;

use tokio::sync::watch;

use super::{PipelineConfig, PipelineError};
use crate::backoff::Backoff;
use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::telemetry::Metrics;
use crate::telemetry::events::Unavailable;

/// How a batch waits for a service to come back.
pub(super) struct Outage<'a> {
    pub metrics: &'a Metrics,
    /// Turns true when shutdown is asked for: a wait then ends the batch unacknowledged.
    pub stopping: watch::Receiver<bool>,
    pub first: Duration,
    pub max: Duration,
}

impl<'a> Outage<'a> {
    pub fn new(
        metrics: &'a Metrics,
        stopping: watch::Receiver<bool>,
        config: &PipelineConfig,
    ) -> Self {
        Self {
            metrics,
            stopping,
            first: Duration::from_millis(config.backoff_ms),
            max: Duration::from_millis(config.max_backoff_ms),
        }
    }

    /// The waits of one outage of one call.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.first, self.max)
    }

    /// Reports one failure of `service`, then waits out the backoff's next wait, or returns
    /// `Interrupted` if shutdown is asked for meanwhile.
    pub async fn wait(
        &self,
        service: &'static str,
        operation: &'static str,
        reason: &dyn Display,
        backoff: &mut Backoff,
    ) -> Result<(), PipelineError> {
        let wait = backoff.next_wait();
        self.metrics.emit(Unavailable {
            service,
            operation,
            reason,
            retry_in: wait,
        });
        self.sleep(service, wait).await
    }

    /// Like [`Outage::wait`], counted but without a log line: for a wait whose cause was
    /// logged once when it began.
    pub async fn wait_quietly(
        &self,
        service: &'static str,
        operation: &'static str,
        backoff: &mut Backoff,
    ) -> Result<(), PipelineError> {
        let wait = backoff.next_wait();
        self.metrics.record_unavailable(service, operation);
        self.sleep(service, wait).await
    }

    /// Sleeps `wait`, or returns `Interrupted` if shutdown is asked for meanwhile.
    pub async fn sleep(&self, service: &'static str, wait: Duration) -> Result<(), PipelineError> {
        let mut stopping = self.stopping.clone();
        let interrupted = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            changed = stopping.wait_for(|stopping| *stopping) => changed.is_ok(),
        };
        if interrupted {
            return Err(PipelineError::Interrupted(service));
        }
        Ok(())
    }

    /// The dead-letter stage: sends the batch's dead letters, waiting out outages.
    pub async fn send_dead_letters(
        &self,
        sink: &impl DeadLetterSink,
        letters: &[DeadLetter],
    ) -> Result<(), PipelineError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut backoff = self.backoff();
        loop {
            // A send to a queue that is down can take the producer's whole delivery timeout:
            // shutdown does not wait for it (the batch is left unacknowledged).
            let mut stopping = self.stopping.clone();
            let sent = tokio::select! {
                sent = sink.send(letters) => sent,
                Ok(_) = stopping.wait_for(|stopping| *stopping) => {
                    return Err(PipelineError::Interrupted("dead-letter queue"));
                }
            };
            match sent {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => {
                    self.wait("dead-letter queue", "send", &error, &mut backoff)
                        .await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}
