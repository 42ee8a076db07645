//! One partition's reader: hands out every offset exactly once and in order, re-reading what
//! the stream skipped and reopening the stream when it fails or ends.
//!
//! A skipped range shows in two ways: a record past the next offset due (a gap in the middle,
//! or at the head of a partition never committed, whose reading starts at the log start the
//! cluster reports), or a stream that stays quiet while the cluster reports records past the
//! next offset due (a gap at the tail, which no later record would reveal).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc;

use super::FluvioRecord;
use super::link::{Link, ReadError};
use crate::backoff::Backoff;
use crate::shutdown::Shutdown;
use crate::source::{Lost, Message, Position};
use crate::telemetry::Metrics;
use crate::telemetry::events::{SourceGap, SourceReconnect};

/// How often the same gap is read again before its range is reported as lost. A re-read
/// starts the fetch at the first missing record, with twice the fetch of the read before (up
/// to the cluster's cap), so a gap the client made by cutting a batch does not come back; one
/// that does, ten times over, is not going to be read.
pub(super) const MAX_REREADS: u32 = 10;

/// While a partition stays quiet, the wait between two checks of its end doubles from the
/// first (`idle_check`) up to this many times it.
const IDLE_CHECK_GROWTH: u32 = 32;

/// What ended one stream of the partition.
enum Ended {
    /// Shutdown was asked for, or the source was dropped.
    Stopped,
    /// Open the stream again at the next offset to hand out; after a failure, `pause` first.
    Reopen { pause: bool },
}

/// Reads one partition into the source's channel until stopped.
pub(super) struct Reader<L> {
    pub link: L,
    pub topic: Arc<str>,
    pub partition: u32,
    /// The next offset to hand out; `None` for a partition this consumer never committed,
    /// until its log start is read.
    pub next: Option<i64>,
    /// Nothing handed out yet of a partition never committed: records retention removes
    /// before the first read are not lost to this consumer, which reads from the first
    /// record left.
    pub fresh: bool,
    pub out: mpsc::Sender<Message>,
    pub stop: Shutdown,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// The fetch size of a stream; each re-read of the same gap doubles it.
    pub fetch: i32,
    /// The largest fetch a re-read asks for.
    pub fetch_cap: i32,
    /// How long a stream may yield nothing before the partition's end is checked.
    pub idle_check: Duration,
    /// The gap being re-read and how often it came back.
    pub rereads: Option<(i64, u32)>,
}

/// The fetch size of the `times`-th re-read: `fetch` doubled that often, at most `cap`.
fn grown(fetch: i32, times: u32, cap: i32) -> i32 {
    let grown = i64::from(fetch) << times.min(32);
    i32::try_from(grown.min(i64::from(cap))).unwrap_or(cap)
}

impl<L: Link> Reader<L> {
    pub async fn run(mut self) {
        let mut opened_before = false;
        loop {
            if self.stop.is_requested() {
                return;
            }
            let next = match self.next {
                Some(next) => next,
                None => match self.log_start().await {
                    Some(start) => start,
                    None => return,
                },
            };
            if opened_before {
                self.metrics.emit(SourceReconnect {
                    topic: &self.topic,
                    partition: self.partition,
                    from_offset: Some(next),
                });
            }
            opened_before = true;
            let max_bytes = self.fetch_size(next);
            let mut stop = self.stop.clone();
            let opened = tokio::select! {
                biased;
                () = stop.requested() => return,
                opened = self.link.open(self.partition, next, max_bytes) => opened,
            };
            let ended = match opened {
                Ok(records) => self.drain(records).await,
                Err(error) => {
                    tracing::warn!(
                        topic = %self.topic,
                        partition = self.partition,
                        next,
                        error = %error,
                        "cannot open the partition's stream; retrying after a backoff"
                    );
                    Ended::Reopen { pause: true }
                }
            };
            match ended {
                Ended::Stopped => return,
                Ended::Reopen { pause: true } => {
                    self.link.reset();
                    if !self.pause().await {
                        return;
                    }
                }
                Ended::Reopen { pause: false } => {}
            }
        }
    }

    /// Reads where a partition never committed starts, waiting out failures; `None` when
    /// stopped.
    async fn log_start(&mut self) -> Option<i64> {
        loop {
            let mut stop = self.stop.clone();
            let offsets = tokio::select! {
                biased;
                () = stop.requested() => return None,
                offsets = self.link.offsets(self.partition) => offsets,
            };
            match offsets {
                Ok(bounds) => {
                    tracing::info!(
                        topic = %self.topic,
                        partition = self.partition,
                        start = bounds.start,
                        "never committed: reading the partition from its log start"
                    );
                    self.next = Some(bounds.start);
                    return Some(bounds.start);
                }
                Err(error) => {
                    tracing::warn!(
                        topic = %self.topic,
                        partition = self.partition,
                        error = %error,
                        "cannot read where the partition starts; retrying after a backoff"
                    );
                    self.link.reset();
                    if !self.pause().await {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits the next backoff; false when stopped meanwhile.
    async fn pause(&mut self) -> bool {
        let wait = self.backoff.next_wait();
        let mut stop = self.stop.clone();
        tokio::select! {
            biased;
            () = stop.requested() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    /// The fetch size of a stream opened at `next`: grown when it re-reads a gap there.
    fn fetch_size(&self, next: i64) -> i32 {
        match self.rereads {
            Some((at, times)) if at == next => grown(self.fetch, times, self.fetch_cap),
            _ => self.fetch,
        }
    }

    fn partition_label(&self) -> i32 {
        i32::try_from(self.partition).unwrap_or(i32::MAX)
    }

    /// Hands out the stream's records until it fails, ends, skips offsets or is stopped.
    async fn drain(&mut self, mut records: super::link::Records) -> Ended {
        let longest_quiet = self.idle_check.saturating_mul(IDLE_CHECK_GROWTH);
        let mut quiet = self.idle_check;
        loop {
            let mut stop = self.stop.clone();
            let item = tokio::select! {
                biased;
                () = stop.requested() => return Ended::Stopped,
                item = records.next() => Some(item),
                () = tokio::time::sleep(quiet) => None,
            };
            let Some(item) = item else {
                // Quiet: a range the stream skipped at the partition's end would never be
                // followed by a record that reveals it, so ask the cluster where the end is.
                quiet = quiet.saturating_mul(2).min(longest_quiet);
                if let Some(ended) = self.check_end().await {
                    return ended;
                }
                continue;
            };
            quiet = self.idle_check;
            match item {
                None => {
                    tracing::warn!(
                        topic = %self.topic,
                        partition = self.partition,
                        next = ?self.next,
                        "the partition's stream ended; reopening it where it stopped"
                    );
                    return Ended::Reopen { pause: true };
                }
                Some(Err(ReadError::Failed(error))) => {
                    tracing::warn!(
                        topic = %self.topic,
                        partition = self.partition,
                        next = ?self.next,
                        error = %error,
                        "the partition's stream failed; reopening it where it stopped"
                    );
                    return Ended::Reopen { pause: true };
                }
                Some(Err(ReadError::Evicted { next_available })) => {
                    if let Some(first) = self.next
                        && next_available > first
                    {
                        if self.fresh {
                            // Never committed, nothing read yet: the partition now starts at
                            // `next_available`, and that is where reading it starts.
                            tracing::info!(
                                topic = %self.topic,
                                partition = self.partition,
                                first,
                                next_available,
                                "the log start moved before the first read; reading from the \
                                 first record left"
                            );
                        } else {
                            let reason = format!(
                                "records {first}..={} of {}[{}] were removed by retention \
                                 before they were read; the partition now starts at \
                                 {next_available}",
                                next_available - 1,
                                self.topic,
                                self.partition
                            );
                            if !self.hand_out_lost(first, next_available - 1, reason).await {
                                return Ended::Stopped;
                            }
                        }
                    }
                    self.next = Some(next_available);
                    return Ended::Reopen { pause: false };
                }
                Some(Ok(record)) => {
                    // Every stream is opened at the next offset, so it is known by now.
                    let next = self.next.unwrap_or(record.offset);
                    if record.offset < next {
                        // Already handed out (a stream may begin before its offset).
                    } else if record.offset > next {
                        let last_missing = record.offset - 1;
                        if let Some(ended) = self.gap(next, last_missing, Some(record)).await {
                            return ended;
                        }
                    } else if !self.hand_out(record).await {
                        return Ended::Stopped;
                    }
                }
            }
        }
    }

    /// The stream has been quiet: when the cluster reports records from the next offset on,
    /// the stream skipped them. Returns how the stream ends, or `None` to keep reading it.
    async fn check_end(&mut self) -> Option<Ended> {
        let next = self.next?;
        let mut stop = self.stop.clone();
        let offsets = tokio::select! {
            biased;
            () = stop.requested() => return Some(Ended::Stopped),
            offsets = self.link.offsets(self.partition) => offsets,
        };
        match offsets {
            Ok(bounds) if bounds.end > next => {
                tracing::debug!(
                    topic = %self.topic,
                    partition = self.partition,
                    next,
                    end = bounds.end,
                    "the stream is quiet short of the partition's end"
                );
                self.gap(next, bounds.end - 1, None).await
            }
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(
                    topic = %self.topic,
                    partition = self.partition,
                    error = %error,
                    "cannot read the partition's end; checking again when the stream stays quiet"
                );
                None
            }
        }
    }

    /// The stream skipped `next..=last_missing`: it yielded `record` where `next` was due, or
    /// (`None`) stayed quiet short of the partition's end. Returns how the stream ends, or
    /// `None` when the range was reported as lost and reading goes on.
    async fn gap(
        &mut self,
        next: i64,
        last_missing: i64,
        record: Option<FluvioRecord>,
    ) -> Option<Ended> {
        let times = match self.rereads {
            Some((at, times)) if at == next => times + 1,
            _ => 1,
        };
        self.rereads = Some((next, times));
        let reread = times <= MAX_REREADS;
        self.metrics.emit(SourceGap {
            topic: &self.topic,
            partition: self.partition,
            first_missing: next,
            last_missing,
            rereads: times,
            reread,
        });
        if reread {
            return Some(Ended::Reopen { pause: times > 1 });
        }
        let reason = format!(
            "records {next}..={last_missing} of {}[{}] were skipped by every one of \
             {MAX_REREADS} re-reads (fetches of {} up to {} bytes)",
            self.topic,
            self.partition,
            grown(self.fetch, 1, self.fetch_cap),
            grown(self.fetch, MAX_REREADS, self.fetch_cap),
        );
        if !self.hand_out_lost(next, last_missing, reason).await {
            return Some(Ended::Stopped);
        }
        if let Some(record) = record
            && !self.hand_out(record).await
        {
            return Some(Ended::Stopped);
        }
        None
    }

    async fn hand_out(&mut self, record: FluvioRecord) -> bool {
        let offset = record.offset;
        let message = Message {
            position: self.position(offset),
            key: record.key,
            payload: Some(record.value),
            produced_at_ms: record.timestamp_ms,
            lost: None,
        };
        if !self.send(message).await {
            return false;
        }
        self.next = Some(offset + 1);
        self.fresh = false;
        self.backoff.reset();
        true
    }

    async fn hand_out_lost(&mut self, first: i64, last: i64, reason: String) -> bool {
        tracing::error!(
            topic = %self.topic,
            partition = self.partition,
            first,
            last,
            %reason,
            "records lost; dead-lettering their range"
        );
        let message = Message {
            position: self.position(first),
            key: None,
            payload: None,
            produced_at_ms: None,
            lost: Some(Lost {
                last_offset: last,
                reason,
            }),
        };
        if !self.send(message).await {
            return false;
        }
        self.next = Some(last + 1);
        self.fresh = false;
        true
    }

    fn position(&self, offset: i64) -> Position {
        Position::Partition {
            topic: self.topic.to_string(),
            partition: self.partition_label(),
            offset,
        }
    }

    /// Sends one message to the source; false when stopped or the source is gone.
    async fn send(&mut self, message: Message) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            biased;
            () = stop.requested() => false,
            sent = self.out.send(message) => sent.is_ok(),
        }
    }
}
