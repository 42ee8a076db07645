//! The Kafka source: a consumer-group member that acknowledges by storing offsets.
//!
//! - Cooperative-sticky assignment: a rebalance moves only the partitions it must.
//! - `enable.auto.offset.store=false`: an offset is stored only by [`Source::ack`], i.e. after
//!   the batch's writes and dead letters are acknowledged; stored offsets are committed by the
//!   client every `auto.commit.interval.ms`, synchronously before partitions are revoked, and
//!   on shutdown ([`KafkaSource::close`]). A crash replays at most the unacknowledged tail.
//! - A batch takes the messages that have arrived, up to `batch_size`, and closes at once
//!   (or, with `batch_timeout_ms`, waits that long after its first message for more).
//!   Collecting is cancel-safe: messages taken by a batch that is dropped before it is
//!   returned are kept for the next one.
//! - While the pipeline waits out an outage ([`Source::hold`]), the member pauses its
//!   partitions and keeps polling: it stays in its group however long the wait, instead of
//!   being ejected after `max.poll.interval.ms`; the partitions resume with the next batch.
//! - Consumption errors the client recovers from by itself (brokers down, an ejection after a
//!   stall) are counted as `unavailable_total{service="kafka"}` and polling goes on; only
//!   fatal ones end `serve`.
//! - Rebalances are counted ([`Source::generation`]), so the pipeline can drop what it cached
//!   about partitions it may have lost.
//! - Every librdkafka property (`security.protocol`, `sasl.*`, `ssl.*`, …) passes through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::source::KafkaSourceConfig;
use crate::source::{Message, Position};
use crate::source::{Source, SourceError};
use crate::telemetry::events::Unavailable;
use crate::telemetry::{Metrics, Operation, Service};

/// Commits stored offsets before partitions are taken away, so their next owner starts where
/// this consumer stopped rather than at the last periodic commit; reports consumer lag from
/// the client's periodic statistics.
struct CommitOnRevoke {
    metrics: Arc<Metrics>,
    /// Rebalances seen (assignments and revocations).
    rebalances: AtomicU64,
    /// The pause state while holding, kept true across rebalances (see [`Hold`]).
    hold: Mutex<Hold>,
}

/// What this member paused while holding, kept in step with rebalances. librdkafka keeps a
/// partition's pause across a revoke and a later assignment, so a partition paused here and
/// revoked would come back paused, for good, if it were forgotten; and one assigned during
/// the hold would fetch into memory without bound if it were not paused.
#[derive(Debug, Default)]
struct Hold {
    /// The pipeline is waiting out an outage: partitions assigned meanwhile are paused too.
    holding: bool,
    /// Partitions this member paused and still owns.
    paused: HashSet<(String, i32)>,
    /// Partitions revoked since the source last looked: messages of theirs taken but not
    /// handed out are dropped (their next owner reads them from the committed offset).
    revoked: Vec<(String, i32)>,
}

impl CommitOnRevoke {
    fn hold(&self) -> MutexGuard<'_, Hold> {
        self.hold.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `partitions` as a list for the client.
fn partition_list<'a>(
    partitions: impl IntoIterator<Item = &'a (String, i32)>,
) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    list
}

/// The partitions of `list`.
fn partitions_of(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|element| (element.topic().to_owned(), element.partition()))
        .collect()
}

impl ClientContext for CommitOnRevoke {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let metrics = &self.metrics;
        for (name, topic) in &statistics.topics {
            for partition in topic.partitions.values() {
                // Partition -1 is librdkafka's bookkeeping; a negative lag means "not known yet".
                // The lag behind what this consumer stored is the fresher; a partition it has
                // taken nothing from since it was assigned has only the committed one.
                let lag = if partition.consumer_lag_stored >= 0 {
                    partition.consumer_lag_stored
                } else {
                    partition.consumer_lag
                };
                if partition.partition >= 0 && partition.desired && lag >= 0 {
                    metrics.set_consumer_lag(name, partition.partition, lag);
                }
            }
        }
    }
}

impl ConsumerContext for CommitOnRevoke {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        self.metrics.record_rebalance();
        if let Rebalance::Assign(assigned) = rebalance {
            let mut hold = self.hold();
            if hold.holding && assigned.count() > 0 {
                match consumer.pause(assigned) {
                    Ok(()) => {
                        tracing::info!(
                            partitions = assigned.count(),
                            "paused partitions assigned while the pipeline waits"
                        );
                        hold.paused.extend(partitions_of(assigned));
                    }
                    Err(error) => tracing::warn!(%error, "pausing assigned partitions failed"),
                }
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            for partition in partitions.elements() {
                self.metrics
                    .forget_consumer_lag(partition.topic(), partition.partition());
            }
            {
                // A pause must not outlive the ownership: resumed on the way out, whoever
                // paused it, so that it is fetched when it is assigned again.
                let mut hold = self.hold();
                let revoked = partitions_of(partitions);
                if let Err(error) = consumer.resume(partitions) {
                    tracing::warn!(%error, "resuming revoked partitions failed");
                }
                for partition in &revoked {
                    hold.paused.remove(partition);
                }
                hold.revoked.extend(revoked);
            }
            // Nothing stored since the last commit is not an error.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::info!(
                    partitions = partitions.count(),
                    "committed offsets before revoke"
                ),
                Err(error) => tracing::debug!(%error, "no offsets committed before revoke"),
            }
        }
    }
}

/// A Kafka consumer-group member delivering batches.
pub struct KafkaSource {
    consumer: StreamConsumer<CommitOnRevoke>,
    batch_timeout: Duration,
    /// Messages taken for a batch that was dropped before it was returned, or while holding.
    collected: Vec<Message>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Creates the consumer and subscribes; the group is joined on the first poll. Each
    /// partition's lag behind its end (from the last acknowledged message) is
    /// reported every `statistics.interval.ms` (default 5 s).
    pub fn subscribe(
        config: &KafkaSourceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        client.set("statistics.interval.ms", "5000");
        for (name, value) in &config.properties {
            client.set(name, value);
        }
        let consumer: StreamConsumer<CommitOnRevoke> =
            client.create_with_context(CommitOnRevoke {
                metrics,
                rebalances: AtomicU64::new(0),
                hold: Mutex::default(),
            })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer,
            batch_timeout: Duration::from_millis(config.batch_timeout_ms),
            collected: Vec::new(),
        })
    }

    /// Commits what was acknowledged and leaves the group, handing partitions over at once.
    pub fn close(self) {
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "nothing to commit at shutdown");
        }
        self.consumer.unsubscribe();
    }

    fn owned(message: &rdkafka::message::BorrowedMessage<'_>) -> Message {
        Message {
            position: Position::Partition {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            },
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            produced_at_ms: match message.timestamp() {
                rdkafka::Timestamp::CreateTime(ms) => Some(ms),
                _ => None,
            },
            lost: None,
        }
    }
}

/// Whether a consumption error is one the client recovers from by itself, so converge goes on
/// polling rather than exiting: a broker down or unreachable (the client reconnects), or the
/// member ejected from its group for not polling in `max.poll.interval.ms` after a stall the
/// hold did not cover (it rejoins on the next poll, and the rebalance that follows clears what
/// the pipeline cached). librdkafka reports the errors it cannot recover from as fatal.
fn recovers(error: &rdkafka::error::KafkaError) -> bool {
    matches!(error, rdkafka::error::KafkaError::MessageConsumption(_))
}

impl KafkaSource {
    /// Reports a consumption error the client recovers from (one log line, one count).
    fn report(&self, error: &rdkafka::error::KafkaError) {
        self.consumer.context().metrics.emit(Unavailable {
            service: Service::Kafka,
            operation: Operation::Consume,
            reason: error,
            retry_in: Duration::ZERO,
        });
    }
}

/// How long the pipeline may be busy before a held member pauses its partitions: a batch's
/// ordinary work ends well before, and pausing drops what the client had fetched ahead.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How often a held member polls (far below any `max.poll.interval.ms`, whose least
/// useful value is the session timeout's least, 6 s by default).
const HOLD_POLL: Duration = Duration::from_millis(250);

impl KafkaSource {
    /// Stops holding: resumes the whole current assignment (a partition paused by the hold
    /// and assigned again by a rebalance included), and drops what was taken from partitions
    /// revoked meanwhile.
    fn stop_holding(&mut self) {
        let revoked = {
            let context = self.consumer.context();
            let mut hold = context.hold();
            if hold.holding || !hold.paused.is_empty() {
                hold.holding = false;
                hold.paused.clear();
                match self.consumer.assignment() {
                    Ok(assigned) => match self.consumer.resume(&assigned) {
                        Ok(()) => {
                            tracing::info!(partitions = assigned.count(), "resumed partitions");
                        }
                        Err(error) => tracing::warn!(%error, "resuming partitions failed"),
                    },
                    Err(error) => tracing::warn!(%error, "reading the assignment failed"),
                }
            }
            std::mem::take(&mut hold.revoked)
        };
        self.drop_revoked(&revoked);
    }

    /// Starts holding, or goes on: pauses every assigned partition not paused yet.
    fn pause_assigned(&mut self) {
        let revoked = {
            let context = self.consumer.context();
            let mut hold = context.hold();
            hold.holding = true;
            if let Ok(assigned) = self.consumer.assignment() {
                let fresh: Vec<(String, i32)> = partitions_of(&assigned)
                    .into_iter()
                    .filter(|partition| !hold.paused.contains(partition))
                    .collect();
                if !fresh.is_empty() {
                    match self.consumer.pause(&partition_list(&fresh)) {
                        Ok(()) => {
                            tracing::info!(
                                partitions = fresh.len(),
                                "paused partitions while the pipeline waits; polling on to \
                                 stay in the group"
                            );
                            hold.paused.extend(fresh);
                        }
                        Err(error) => tracing::warn!(%error, "pausing partitions failed"),
                    }
                }
            }
            std::mem::take(&mut hold.revoked)
        };
        self.drop_revoked(&revoked);
    }

    /// Drops messages taken from `revoked` partitions and not handed out yet.
    fn drop_revoked(&mut self, revoked: &[(String, i32)]) {
        if revoked.is_empty() {
            return;
        }
        let before = self.collected.len();
        self.collected.retain(|message| match &message.position {
            Position::Partition {
                topic, partition, ..
            } => !revoked.iter().any(|(t, p)| t == topic && p == partition),
            _ => true,
        });
        let dropped = before - self.collected.len();
        if dropped > 0 {
            tracing::info!(
                dropped,
                "dropped messages of revoked partitions; their next owner reads them"
            );
        }
    }
}

impl Source for KafkaSource {
    async fn hold(&mut self) {
        tokio::time::sleep(PAUSE_AFTER).await;
        loop {
            self.pause_assigned();
            // Each poll tells the client the application is alive, and serves rebalances.
            match tokio::time::timeout(HOLD_POLL, self.consumer.recv()).await {
                Ok(Ok(received)) => self.collected.push(Self::owned(&received)),
                Ok(Err(error)) => tracing::warn!(%error, "polling while holding"),
                Err(_quiet) => {}
            }
        }
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        self.stop_holding();
        let max = max.max(1);
        // One stream for the whole batch: each `recv` would register a new waker.
        let mut stream = self.consumer.stream();
        while self.collected.is_empty() {
            match stream.next().await.ok_or(SourceError::StreamEnded)? {
                Ok(first) => self.collected.push(Self::owned(&first)),
                Err(error) if recovers(&error) => self.report(&error),
                Err(error) => return Err(error.into()),
            }
        }
        // What has already arrived, without waiting.
        while self.collected.len() < max {
            match stream.next().now_or_never() {
                Some(Some(Ok(received))) => self.collected.push(Self::owned(&received)),
                Some(Some(Err(error))) if recovers(&error) => self.report(&error),
                Some(Some(Err(error))) => return Err(error.into()),
                _ => break,
            }
        }
        if !self.batch_timeout.is_zero() {
            let deadline = tokio::time::Instant::now() + self.batch_timeout;
            while self.collected.len() < max {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(received))) => self.collected.push(Self::owned(&received)),
                    Ok(Some(Err(error))) if recovers(&error) => self.report(&error),
                    Ok(Some(Err(error))) => return Err(error.into()),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if self.collected.len() > max {
            // Held messages may be more than one batch.
            let rest = self.collected.split_off(max);
            return Ok(std::mem::replace(&mut self.collected, rest));
        }
        Ok(std::mem::take(&mut self.collected))
    }

    fn generation(&self) -> u64 {
        self.consumer.context().rebalances.load(Ordering::Relaxed)
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        let mut highest: HashMap<(&str, i32), i64> = HashMap::new();
        for message in batch {
            if let Position::Partition {
                topic,
                partition,
                offset,
            } = &message.position
            {
                let entry = highest
                    .entry((topic.as_str(), *partition))
                    .or_insert(*offset);
                *entry = (*entry).max(*offset);
            }
        }
        let mut offsets = TopicPartitionList::new();
        for (&(topic, partition), &offset) in &highest {
            // The offset to commit is the next one to read.
            offsets.add_partition_offset(topic, partition, Offset::Offset(offset + 1))?;
        }

        if let Err(error) = self.consumer.store_offsets(&offsets) {
            // A partition revoked while its batch was in flight: its new owner re-reads the
            // batch, which the rule makes harmless.
            tracing::warn!(%error, "offsets not stored; a rebalance moved their partitions");
        }
        Ok(())
    }
}

/// Topics read from their first retained offset to their end as of opening, outside any
/// consumer group (nothing is committed): what `converge replay` reads.
pub struct KafkaRange {
    consumer: StreamConsumer,
    /// Per partition, the offset where reading stops (the end when the range was opened).
    ends: HashMap<(String, i32), i64>,
    /// Records in the range when it was opened: end less first offset, summed.
    records: u64,
    batch_timeout: Duration,
}

impl std::fmt::Debug for KafkaRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaRange")
            .field("ends", &self.ends)
            .finish_non_exhaustive()
    }
}

impl KafkaRange {
    /// Assigns every partition of `topics` from its beginning. Blocks while it asks the
    /// brokers for partitions and ends.
    pub fn open(
        brokers: &str,
        topics: &[String],
        properties: &BTreeMap<String, String>,
    ) -> Result<Self, SourceError> {
        const ASK: Duration = Duration::from_secs(10);
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", brokers)
            // librdkafka wants a group id even for assigned partitions; nothing is committed.
            .set(
                "group.id",
                format!("converge-replay-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        for (name, value) in properties {
            client.set(name, value);
        }
        let consumer: StreamConsumer = client.create()?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        let mut records = 0;
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), ASK)?;
            let partitions = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect::<Vec<_>>();
            if partitions.is_empty() {
                return Err(SourceError::NoPartitions {
                    topic: topic.clone(),
                });
            }
            for partition in partitions {
                let (low, high) = consumer.fetch_watermarks(topic, partition, ASK)?;
                if high > low {
                    assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
                    ends.insert((topic.clone(), partition), high);
                    records += u64::try_from(high - low).unwrap_or(0);
                }
            }
        }
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            ends,
            records,
            batch_timeout: Duration::from_millis(100),
        })
    }

    /// How many records the range held when it was opened; compaction and transaction
    /// markers may leave fewer to read.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// How long a range waits for a record before checking whether its partitions are done.
const IDLE: Duration = Duration::from_secs(2);

impl KafkaRange {
    fn drop_finished(&mut self) -> Result<(), SourceError> {
        let positions = self.consumer.position()?;
        for element in positions.elements() {
            if let Offset::Offset(position) = element.offset() {
                let partition = (element.topic().to_owned(), element.partition());
                if self
                    .ends
                    .get(&partition)
                    .is_some_and(|&end| position >= end)
                {
                    self.ends.remove(&partition);
                }
            }
        }
        Ok(())
    }
}

impl Source for KafkaRange {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        let mut batch = Vec::new();
        let mut deadline = None;
        while batch.len() < max && !self.ends.is_empty() {
            let received = match deadline {
                None => match tokio::time::timeout(IDLE, self.consumer.recv()).await {
                    Ok(received) => received?,
                    Err(_idle) => {
                        // Compaction or transaction markers can leave a partition's last
                        // offsets without a record: its position tells it is done.
                        self.drop_finished()?;
                        continue;
                    }
                },
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                        Ok(received) => received?,
                        Err(_elapsed) => break,
                    }
                }
            };
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.batch_timeout);
            let partition = (received.topic().to_owned(), received.partition());
            let Some(&end) = self.ends.get(&partition) else {
                continue;
            };
            if received.offset() >= end {
                self.ends.remove(&partition);
                continue;
            }
            batch.push(KafkaSource::owned(&received));
            if received.offset() + 1 >= end {
                self.ends.remove(&partition);
            }
        }
        Ok(batch)
    }

    async fn ack(&mut self, _batch: &[Message]) -> Result<(), SourceError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn consumption_errors_the_client_recovers_from_are_not_fatal() {
        for code in [
            RDKafkaErrorCode::PollExceeded,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert!(super::recovers(&KafkaError::MessageConsumption(code)));
        }
        assert!(!super::recovers(&KafkaError::MessageConsumptionFatal(
            RDKafkaErrorCode::Fatal
        )));
        assert!(!super::recovers(&KafkaError::Canceled));
    }
}
