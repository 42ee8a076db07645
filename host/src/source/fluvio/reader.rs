//! One partition's reader: hands out every offset exactly once and in order, re-reading what
//! the stream skipped and reopening the stream when it fails or ends.

use std::sync::Arc;

use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};

use super::FluvioRecord;
use super::link::{Link, ReadError, Start};
use crate::backoff::Backoff;
use crate::source::{Lost, Message, Position};
use crate::telemetry::Metrics;
use crate::telemetry::events::{SourceGap, SourceReconnect};

/// How often the same gap is read again before its range is reported as lost. A re-read
/// starts the fetch at the first missing record, so a gap the client made by cutting a batch
/// does not come back; one that does, ten times over, is not going to be read.
pub(super) const MAX_REREADS: u32 = 10;

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
    /// The next offset to hand out; `None` until the first record of a partition this
    /// consumer never committed.
    pub next: Option<i64>,
    pub out: mpsc::Sender<Message>,
    pub stop: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
    /// The gap being re-read and how often it came back.
    pub rereads: Option<(i64, u32)>,
}

impl<L: Link> Reader<L> {
    pub async fn run(mut self) {
        let mut opened_before = false;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let start = self.next.map_or(Start::Beginning, Start::At);
            if opened_before {
                self.metrics.emit(SourceReconnect {
                    topic: &self.topic,
                    partition: self.partition,
                    from_offset: self.next,
                });
            }
            opened_before = true;
            let mut stop = self.stop.clone();
            let opened = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return,
                opened = self.link.open(self.partition, start) => opened,
            };
            let ended = match opened {
                Ok(records) => self.drain(records).await,
                Err(error) => {
                    tracing::warn!(
                        topic = %self.topic,
                        partition = self.partition,
                        ?start,
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
                    let wait = self.backoff.next_wait();
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        biased;
                        _ = stop.wait_for(|stop| *stop) => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Ended::Reopen { pause: false } => {}
            }
        }
    }

    fn partition_label(&self) -> i32 {
        i32::try_from(self.partition).unwrap_or(i32::MAX)
    }

    /// Hands out the stream's records until it fails, ends, skips offsets or is stopped.
    async fn drain(&mut self, mut records: super::link::Records) -> Ended {
        loop {
            let mut stop = self.stop.clone();
            let item = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return Ended::Stopped,
                item = records.next() => item,
            };
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
                        let reason = format!(
                            "records {first}..={} of {}[{}] were removed by retention before \
                             they were read; the partition now starts at {next_available}",
                            next_available - 1,
                            self.topic,
                            self.partition
                        );
                        if !self.hand_out_lost(first, next_available - 1, reason).await {
                            return Ended::Stopped;
                        }
                    }
                    self.next = Some(next_available);
                    return Ended::Reopen { pause: false };
                }
                Some(Ok(record)) => match self.next {
                    // Already handed out (a reopened stream may begin before the position).
                    Some(next) if record.offset < next => {}
                    Some(next) if record.offset > next => {
                        if let Some(ended) = self.gap(next, record).await {
                            return ended;
                        }
                    }
                    _ => {
                        if !self.hand_out(record).await {
                            return Ended::Stopped;
                        }
                    }
                },
            }
        }
    }

    /// The stream yielded `record` where `next` was due. Returns how the stream ends, or
    /// `None` when the gap was reported as lost and reading goes on.
    async fn gap(&mut self, next: i64, record: FluvioRecord) -> Option<Ended> {
        let last_missing = record.offset - 1;
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
             {MAX_REREADS} re-reads",
            self.topic, self.partition
        );
        if !self.hand_out_lost(next, last_missing, reason).await || !self.hand_out(record).await {
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
            _ = stop.wait_for(|stop| *stop) => false,
            sent = self.out.send(message) => sent.is_ok(),
        }
    }
}
