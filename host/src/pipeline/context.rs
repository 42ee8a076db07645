//! What every stage reports to and waits with: the metrics, the shutdown signal, and the
//! backoff of an outage.
//!
//! An unavailable store, dead-letter queue or order API does not fail a batch: each failure is
//! reported (one log line, one count), then waited out with exponential backoff until the call
//! succeeds or shutdown is asked for ([`Context::retry`]). The partition waits rather than
//! skipping anything; a wait that shutdown interrupts leaves its batch unacknowledged, to be
//! delivered again.

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{PipelineConfig, PipelineError};
use crate::backoff::Backoff;
use crate::dead_letter::DeadLetterError;
use crate::shutdown::Shutdown;
use crate::store::StoreError;
use crate::telemetry::events::Unavailable;
use crate::telemetry::{Metrics, Operation, Service, Stage};

/// The pipeline's metrics, shutdown signal and outage backoff, shared by its stages.
#[derive(Debug)]
pub(super) struct Context {
    pub metrics: Arc<Metrics>,
    /// Requested when shutdown is asked for: a wait then ends its batch unacknowledged. Never,
    /// until [`Pipeline::run`](super::Pipeline::run) is given one.
    pub shutdown: Shutdown,
    /// The waits of one outage, as they start.
    backoff: Backoff,
}

/// A failure that waiting may cure (an outage, a timeout, a reset) or not.
pub(super) trait Transient: Display {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        StoreError::is_transient(self)
    }
}

impl Transient for DeadLetterError {
    fn is_transient(&self) -> bool {
        DeadLetterError::is_transient(self)
    }
}

impl Transient for PipelineError {
    fn is_transient(&self) -> bool {
        match self {
            PipelineError::Store(error) => error.is_transient(),
            PipelineError::DeadLetter(error) => error.is_transient(),
            PipelineError::Source(_) | PipelineError::Interrupted(_) => false,
        }
    }
}

impl Context {
    /// Reports to a registry of its own until [`Pipeline::with_metrics`](super::Pipeline)
    /// replaces it.
    pub fn new(config: &PipelineConfig) -> Self {
        Self {
            metrics: Arc::new(Metrics::new()),
            shutdown: Shutdown::never(),
            backoff: Backoff::new(
                Duration::from_millis(config.backoff_ms),
                Duration::from_millis(config.max_backoff_ms),
            ),
        }
    }

    /// The waits of one outage of one call.
    pub fn backoff(&self) -> Backoff {
        self.backoff.clone()
    }

    /// Runs `work`, recording how long it took as `stage`.
    pub fn timed<T>(&self, stage: Stage, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let done = work();
        self.metrics.record_stage(stage, started.elapsed());
        done
    }

    /// Calls `call` until it answers something other than a transient failure, waiting out
    /// each transient failure (reported as `operation` of `service`) with backoff. Returns the
    /// answer, the failure waiting does not cure, or `Interrupted` if shutdown is asked for
    /// during a wait.
    pub async fn retry<T, E>(
        &self,
        service: Service,
        operation: Operation,
        mut call: impl AsyncFnMut() -> Result<T, E>,
    ) -> Result<T, PipelineError>
    where
        E: Transient,
        PipelineError: From<E>,
    {
        let mut backoff = self.backoff();
        loop {
            match call().await {
                Ok(answer) => return Ok(answer),
                Err(error) if error.is_transient() => {
                    self.wait(service, operation, &error, &mut backoff).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Runs `work` unless shutdown is asked for first: then returns `Interrupted`, for a call
    /// that can take long against a service that is down (a producer's whole delivery
    /// timeout, an API waited out per key), which shutdown does not wait for.
    pub async fn unless_stopped<T>(
        &self,
        service: Service,
        work: impl Future<Output = T>,
    ) -> Result<T, PipelineError> {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            done = work => Ok(done),
            () = shutdown.requested() => {
                Err(PipelineError::Interrupted(service))
            }
        }
    }

    /// Reports one failure of `service`, then waits out the backoff's next wait, or returns
    /// `Interrupted` if shutdown is asked for meanwhile.
    pub async fn wait(
        &self,
        service: Service,
        operation: Operation,
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

    /// Like [`Context::wait`], counted but without a log line: for a wait whose cause was
    /// logged once when it began.
    pub async fn wait_quietly(
        &self,
        service: Service,
        operation: Operation,
        backoff: &mut Backoff,
    ) -> Result<(), PipelineError> {
        let wait = backoff.next_wait();
        self.metrics.record_unavailable(service, operation);
        self.sleep(service, wait).await
    }

    /// Sleeps `wait`, or returns `Interrupted` if shutdown is asked for meanwhile.
    pub async fn sleep(&self, service: Service, wait: Duration) -> Result<(), PipelineError> {
        let mut shutdown = self.shutdown.clone();
        let interrupted = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = shutdown.requested() => true,
        };
        if interrupted {
            return Err(PipelineError::Interrupted(service));
        }
        Ok(())
    }
}
