//! The Fluvio source: each partition of a topic read by a stream of its own and checked for
//! gaps, batches handed to the pipeline, and exactly the acknowledged offsets committed under
//! a named offset consumer.
//!
//! # Why it is built this way
//!
//! The fluvio client (0.50.1, the newest on crates.io) cannot be trusted with positions:
//! - a fetch is capped in bytes, and a record batch cut by the cap is taken as complete: the
//!   stream jumps past the rest of it (about one gap per megabyte of a partition);
//! - its reconnecting wrapper keeps one next offset for all partitions of a stream, and jumps
//!   over records removed by retention without a word;
//! - a stream commits only "the highest offset it has handed out", and a pending read blocks
//!   a commit until the next record arrives.
//!
//! So converge keeps the positions itself:
//! - **one reader per partition** ([`reader`]) hands out every offset once and in order. A
//!   partition never committed is read from the log start the cluster reports, not from
//!   whatever record comes first. A record past the next expected offset is a gap, and so is
//!   a stream that stays quiet while the cluster reports records past it (a cut at the end
//!   of a quiet partition, which no later record reveals): it is counted, logged, and the
//!   stream is reopened at the first missing offset with a fetch twice as large each time
//!   (up to the cluster's cap). Records removed by retention are handed out as one `lost`
//!   message naming their range (dead-lettered); a gap that comes back on every one of ten
//!   re-reads is reported the same way. Nothing is skipped in silence.
//! - A stream that fails or ends is reopened with backoff at that partition's own next offset.
//! - Readers never commit, so a read given up on is harmless, and batches can close on a
//!   timeout (`batch_timeout_ms`).
//! - **Acknowledgements** go into a per-partition ledger ([`ledger`]); the committable offset
//!   is the end of the longest acknowledged prefix of handed-out batches.
//! - **One committer per partition** ([`committer`]) commits that offset exactly: it opens a
//!   short-lived stream at the offset, reads that one record, commits and flushes, with a
//!   larger fetch while the record does not come out whole. An offset removed by retention
//!   before its commit is passed over (the next committable offset is committed), not
//!   retried. Commits run beside the pipeline and coalesce (the newest committable offset
//!   wins), and [`FluvioSource::close`] commits the last one before the process exits.
//!
//! At-least-once holds: nothing is committed past an unacknowledged record, and a restart (or
//! a SIGKILL) re-reads from the last committed offset + 1; the rule makes the redelivered
//! tail harmless.
//!
//! Fluvio has no consumer groups: run several instances with disjoint `partitions`.

mod committer;
mod error;
mod ledger;
mod link;
mod reader;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::config::PipelineConfig;
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::source::{FluvioSourceConfig, FluvioTls};
use crate::source::{Message, Position};
use crate::source::{Source, SourceError};
use crate::telemetry::Metrics;

pub use error::FluvioError;
use link::{FluvioLink, Link};

/// What the readers and committers run with: the configuration section, with the pipeline's
/// batch size and backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// The cluster's SC endpoint (`host:port`); `None` uses the fluvio CLI's current profile.
    endpoint: Option<String>,
    /// Client certificate and CA for a TLS endpoint.
    tls: Option<FluvioTls>,
    /// The topic read.
    topic: String,
    /// Partitions to read; empty reads them all.
    partitions: Vec<u32>,
    /// The offset consumer under which committed offsets are kept.
    consumer: String,
    /// The most bytes the SPU sends in one response of a partition's stream.
    fetch_max_bytes: i32,
    /// The largest fetch a re-read of a gap, or a commit, grows to.
    fetch_cap: i32,
    /// How long a partition's stream may stay quiet before its end is checked for records
    /// the stream skipped.
    idle_check: Duration,
    /// How long a batch waits for more records after its first one.
    batch_timeout: Duration,
    /// Records read ahead of the pipeline, over all partitions.
    read_ahead: usize,
    /// The first wait before a failed stream or commit is tried again; it doubles up to
    /// `max_backoff` while the cluster stays unreachable.
    backoff: Duration,
    /// The longest wait between two attempts.
    max_backoff: Duration,
}

/// The cluster's cap on a fetch: the SPU's default largest produce request
/// (`STORAGE_MAX_REQUEST_SIZE` of fluvio-types 0.50), so no record batch is larger. A
/// configured `fetch_max_bytes` above it raises it.
const CLUSTER_FETCH_CAP: i32 = 32 << 20;

/// How long a partition's stream may stay quiet before its end is checked; the wait doubles
/// while the partition stays quiet.
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl Settings {
    fn new(config: &FluvioSourceConfig, pipeline: &PipelineConfig) -> Self {
        // Validation keeps it within 1 MiB..=2 GiB.
        let fetch_max_bytes = i32::try_from(config.fetch_max_bytes).unwrap_or(i32::MAX);
        Self {
            endpoint: config.endpoint.clone(),
            tls: config.tls.clone(),
            topic: config.topic.clone(),
            partitions: config.partitions.clone(),
            consumer: config.consumer.clone(),
            fetch_max_bytes,
            fetch_cap: fetch_max_bytes.max(CLUSTER_FETCH_CAP),
            idle_check: IDLE_CHECK,
            batch_timeout: Duration::from_millis(config.batch_timeout_ms),
            read_ahead: pipeline.batch_size.saturating_mul(2),
            backoff: Duration::from_millis(pipeline.backoff_ms),
            max_backoff: Duration::from_millis(pipeline.max_backoff_ms),
        }
    }
}

/// One record as the source needs it, whatever the client's record type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FluvioRecord {
    /// The partition it was read from.
    partition: u32,
    /// Its offset in the partition.
    offset: i64,
    /// The record key, if any.
    key: Option<Vec<u8>>,
    /// The record value.
    value: Vec<u8>,
    /// Unix milliseconds, if the record carries a timestamp.
    timestamp_ms: Option<i64>,
}

/// A partition's bookkeeping on the source's side.
#[derive(Debug)]
struct Partition {
    ledger: ledger::Ledger,
    /// The committable offset, watched by the partition's committer.
    acked: watch::Sender<Option<i64>>,
}

/// Records of a topic's partitions, in batches; commits on acknowledgement.
#[derive(Debug)]
pub struct FluvioSource {
    topic: Arc<str>,
    records: mpsc::Receiver<Message>,
    batch_timeout: Duration,
    /// Records taken for a batch that was dropped before it was returned.
    collected: Vec<Message>,
    partitions: HashMap<i32, Partition>,
    stop: ShutdownTrigger,
    readers: Vec<JoinHandle<()>>,
    committers: Vec<JoinHandle<()>>,
}

/// How long [`FluvioSource::close`] waits for the last commits.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

impl FluvioSource {
    /// Connects to the cluster and starts reading every configured partition after its
    /// committed offset (from its log start for a partition never committed).
    /// Read-ahead is twice the pipeline's batch size; a failed stream or commit is retried with
    /// the pipeline's backoff.
    pub async fn connect(
        config: &FluvioSourceConfig,
        pipeline: &PipelineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        let settings = Settings::new(config, pipeline);
        let link = FluvioLink::new(&settings)?;
        let another = link.another();
        Self::start(link, move || another.another(), &settings, metrics).await
    }

    /// Starts reading with `first` for the set-up calls and `new_link()` for every reader and
    /// committer: the cluster behind a [`Link`], real or a test's own. An unreachable cluster
    /// is waited for with backoff; a topic that does not exist is an error.
    async fn start<L: Link>(
        mut first: L,
        new_link: impl Fn() -> L,
        config: &Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        // The cluster may be down when converge starts: wait for it as for a lost connection.
        let mut backoff = Backoff::new(config.backoff, config.max_backoff);
        let (available, committed) = loop {
            let setup = async {
                let Some(available) = first.partitions().await? else {
                    return Ok(None);
                };
                Ok::<_, SourceError>(Some((available, first.committed().await?)))
            };
            match setup.await {
                Ok(Some(found)) => break found,
                Ok(None) => {
                    return Err(SourceError::Fluvio(FluvioError::TopicMissing {
                        topic: config.topic.clone(),
                    }));
                }
                Err(error) => {
                    tracing::warn!(
                        topic = %config.topic,
                        error = %error,
                        "cannot reach the Fluvio cluster; retrying after a backoff"
                    );
                    first.reset();
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        };
        let partitions = if config.partitions.is_empty() {
            available
        } else {
            if let Some(&missing) = config.partitions.iter().find(|p| !available.contains(p)) {
                return Err(SourceError::Fluvio(FluvioError::NoPartition {
                    topic: config.topic.clone(),
                    partition: missing,
                    available: available.len(),
                }));
            }
            config.partitions.clone()
        };
        let topic: Arc<str> = Arc::from(config.topic.as_str());
        let (out, records) = mpsc::channel(config.read_ahead.max(1));
        let (stop, _) = Shutdown::new();
        let backoff = Backoff::new(config.backoff, config.max_backoff);
        let mut source = Self {
            topic: Arc::clone(&topic),
            records,
            batch_timeout: config.batch_timeout,
            collected: Vec::new(),
            partitions: HashMap::new(),
            stop,
            readers: Vec::new(),
            committers: Vec::new(),
        };
        for partition in partitions {
            let committed = committed.get(&partition).copied();
            tracing::info!(
                %topic,
                partition,
                committed = ?committed,
                "reading partition"
            );
            let (acked, watched) = watch::channel(committed);
            source.readers.push(tokio::spawn(
                reader::Reader {
                    link: new_link(),
                    topic: Arc::clone(&topic),
                    partition,
                    next: committed.map(|offset| offset + 1),
                    fresh: committed.is_none(),
                    out: out.clone(),
                    stop: source.stop.subscribe(),
                    metrics: metrics.clone(),
                    backoff: backoff.clone(),
                    fetch: config.fetch_max_bytes,
                    fetch_cap: config.fetch_cap,
                    idle_check: config.idle_check,
                    rereads: None,
                }
                .run(),
            ));
            source
                .committers
                .push(tokio::spawn(committer::commit_partition(
                    new_link(),
                    Arc::clone(&topic),
                    partition,
                    watched,
                    committed,
                    backoff.clone(),
                    config.fetch_cap,
                )));
            source.partitions.insert(
                i32::try_from(partition).unwrap_or(i32::MAX),
                Partition {
                    ledger: ledger::Ledger::default(),
                    acked,
                },
            );
        }
        Ok(source)
    }

    /// Stops reading and commits the last acknowledged offsets, waiting up to 10 s for the
    /// cluster. Records handed out but not acknowledged are read again after a restart.
    pub async fn close(mut self) {
        self.stop.trigger();
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        // Dropping the senders tells each committer to commit its last offset and return.
        self.partitions.clear();
        let committers = std::mem::take(&mut self.committers);
        let aborts: Vec<_> = committers.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(CLOSE_TIMEOUT, futures::future::join_all(committers))
            .await
            .is_err()
        {
            tracing::warn!(
                topic = %self.topic,
                "the last commits did not finish within {CLOSE_TIMEOUT:?}; a restart re-reads \
                 from the offsets committed before"
            );
            for abort in aborts {
                abort.abort();
            }
        }
    }
}

impl Drop for FluvioSource {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// Each partition's first and last offset in `batch` (a lost range counts to its end).
fn runs(batch: &[Message]) -> Vec<(i32, i64, i64)> {
    let mut runs: Vec<(i32, i64, i64)> = Vec::new();
    for message in batch {
        let Position::Partition {
            partition, offset, ..
        } = &message.position
        else {
            continue;
        };
        let last = message
            .lost
            .as_ref()
            .map_or(*offset, |lost| lost.last_offset);
        match runs.iter_mut().find(|run| run.0 == *partition) {
            Some(run) => {
                run.1 = run.1.min(*offset);
                run.2 = run.2.max(last);
            }
            None => runs.push((*partition, *offset, last)),
        }
    }
    runs
}

impl Source for FluvioSource {
    /// Up to `max` records, waiting at most `batch_timeout` for more after the first. Readers
    /// only stop on shutdown, so a closed channel is an error, not the end of the input.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        let max = max.max(1);
        if self.collected.is_empty() {
            let Some(first) = self.records.recv().await else {
                return Err(SourceError::Fluvio(FluvioError::ReadersStopped {
                    topic: self.topic.to_string(),
                }));
            };
            self.collected.push(first);
        }
        while self.collected.len() < max {
            match self.records.try_recv() {
                Ok(message) => self.collected.push(message),
                Err(_empty_or_closed) => break,
            }
        }
        if !self.batch_timeout.is_zero() {
            let linger = tokio::time::sleep(self.batch_timeout);
            tokio::pin!(linger);
            while self.collected.len() < max {
                tokio::select! {
                    biased;
                    message = self.records.recv() => match message {
                        Some(message) => self.collected.push(message),
                        None => break,
                    },
                    () = &mut linger => break,
                }
            }
        }
        let batch = std::mem::take(&mut self.collected);
        for (partition, first, last) in runs(&batch) {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.ledger.handed_out(first, last);
            }
        }
        Ok(batch)
    }

    /// Marks the batch's offsets acknowledged; the committers commit the new committable
    /// offsets beside the pipeline.
    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        for (partition, first, last) in runs(batch) {
            let Some(state) = self.partitions.get_mut(&partition) else {
                return Err(SourceError::Fluvio(FluvioError::NotReadHere {
                    topic: self.topic.to_string(),
                    partition,
                }));
            };
            match state.ledger.acknowledged(first, last) {
                Ok(Some(offset)) => {
                    state.acked.send_replace(Some(offset));
                }
                Ok(None) => {}
                Err(ledger::UnknownRun { first, last }) => {
                    return Err(SourceError::Fluvio(FluvioError::NotHandedOut {
                        topic: self.topic.to_string(),
                        partition,
                        first,
                        last,
                    }));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
