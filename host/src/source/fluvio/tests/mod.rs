//! The source against a cluster in memory that misbehaves as the real client does: streams
//! that skip offsets (in the middle, at the start and at the end of a partition, or whenever
//! the fetch is smaller than a batch), streams that end, records evicted by retention, commit
//! streams that begin past their offset and offsets evicted while they are committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;

use super::committer::COMMIT_FETCH_BYTES;
use super::link::{Bounds, CommitRead, ReadError, Records};
use super::*;

/// Partition logs and everything the source asked of them.
#[derive(Debug, Default)]
struct Cluster {
    /// Per partition: the first retained offset and the end (records are `start..end`).
    logs: BTreeMap<u32, (i64, i64)>,
    committed: HashMap<u32, i64>,
    /// Per partition: offset ranges the next stream opened leaves out (the client's gap).
    skip_next_open: HashMap<u32, Vec<(i64, i64)>>,
    /// Per partition: ranges every stream leaves out.
    skip_always: HashMap<u32, (i64, i64)>,
    /// Per partition: a range every stream with a fetch below the size leaves out (a batch
    /// larger than the fetch).
    skip_below_fetch: HashMap<u32, ((i64, i64), i32)>,
    /// Per partition: the log start the cluster reports when it lags the real one.
    reported_start: HashMap<u32, i64>,
    /// Per partition: the next stream opened ends after this many records.
    end_next_open_after: HashMap<u32, usize>,
    /// This many set-up calls fail before one succeeds.
    failing_setup: u32,
    /// Per partition: this many opens fail before one succeeds.
    failing_opens: HashMap<u32, u32>,
    /// Per partition: a commit stream with a fetch below this size begins past its offset
    /// (the fetch cut the record's batch).
    commit_mismatch_below: HashMap<u32, i32>,
    /// Per partition: retention moves the log start to this offset while the next commit
    /// is under way.
    evict_on_commit: HashMap<u32, i64>,
    /// Every stream opened: partition, offset, fetch size.
    opens: Vec<(u32, i64, i32)>,
    /// Every commit asked for: partition, offset, fetch size.
    commit_reads: Vec<(u32, i64, i32)>,
    /// The commits that went through.
    commits: Vec<(u32, i64)>,
}

#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<Cluster>>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Cluster) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The fetch sizes of the streams opened at `offset` of `partition`, in order.
    fn opens_at(&self, partition: u32, offset: i64) -> Vec<i32> {
        self.with(|c| {
            c.opens
                .iter()
                .filter(|open| open.0 == partition && open.1 == offset)
                .map(|open| open.2)
                .collect()
        })
    }

    /// The fetch sizes of the commits asked for at `offset` of `partition`, in order.
    fn commit_reads_at(&self, partition: u32, offset: i64) -> Vec<i32> {
        self.with(|c| {
            c.commit_reads
                .iter()
                .filter(|read| read.0 == partition && read.1 == offset)
                .map(|read| read.2)
                .collect()
        })
    }
}

fn record(partition: u32, offset: i64) -> FluvioRecord {
    FluvioRecord {
        partition,
        offset,
        key: Some(format!("p{partition}-o{offset}").into_bytes()),
        value: format!("{{\"offset\":{offset}}}").into_bytes(),
        timestamp_ms: Some(1_700_000_000_000 + offset),
    }
}

impl Link for Fake {
    async fn partitions(&mut self) -> Result<Option<Vec<u32>>, SourceError> {
        self.with(|c| {
            if c.failing_setup > 0 {
                c.failing_setup -= 1;
                return Err(SourceError::Fluvio(FluvioError::Client {
                    doing: "listing topics",
                    source: "SC unreachable".into(),
                }));
            }
            Ok((!c.logs.is_empty()).then(|| c.logs.keys().copied().collect()))
        })
    }

    async fn committed(&mut self) -> Result<HashMap<u32, i64>, SourceError> {
        Ok(self.with(|c| c.committed.clone()))
    }

    async fn offsets(&mut self, partition: u32) -> Result<Bounds, SourceError> {
        self.with(|c| {
            let (start, end) = c.logs[&partition];
            Ok(Bounds {
                start: c.reported_start.get(&partition).copied().unwrap_or(start),
                end,
            })
        })
    }

    async fn open(
        &mut self,
        partition: u32,
        at: i64,
        max_bytes: i32,
    ) -> Result<Records, SourceError> {
        self.with(|c| {
            c.opens.push((partition, at, max_bytes));
            if let Some(failing) = c.failing_opens.get_mut(&partition)
                && *failing > 0
            {
                *failing -= 1;
                return Err(SourceError::Fluvio(FluvioError::Client {
                    doing: "opening a stream",
                    source: "SPU unreachable".into(),
                }));
            }
            let (log_start, end) = c.logs[&partition];
            if at < log_start {
                let evicted: Vec<Result<FluvioRecord, ReadError>> = vec![Err(ReadError::Evicted {
                    next_available: log_start,
                })];
                return Ok(futures::stream::iter(evicted)
                    .chain(futures::stream::pending())
                    .boxed());
            }
            let skips = c.skip_next_open.remove(&partition).unwrap_or_default();
            let always = c.skip_always.get(&partition).copied();
            let below_fetch = c
                .skip_below_fetch
                .get(&partition)
                .filter(|(_, size)| max_bytes < *size)
                .map(|(range, _)| *range);
            let skipped = |offset: i64| {
                skips
                    .iter()
                    .chain(always.iter())
                    .chain(below_fetch.iter())
                    .any(|(a, b)| (*a..=*b).contains(&offset))
            };
            // A real stream may start at the beginning of the batch holding `at`.
            let mut records: Vec<Result<FluvioRecord, ReadError>> = ((at - 2).max(log_start)..end)
                .filter(|offset| !skipped(*offset))
                .map(|offset| Ok(record(partition, offset)))
                .collect();
            match c.end_next_open_after.remove(&partition) {
                Some(count) => {
                    records.truncate(count);
                    Ok(futures::stream::iter(records).boxed())
                }
                None => Ok(futures::stream::iter(records)
                    .chain(futures::stream::pending())
                    .boxed()),
            }
        })
    }

    async fn commit(
        &mut self,
        partition: u32,
        offset: i64,
        max_bytes: i32,
    ) -> Result<CommitRead, SourceError> {
        Ok(self.with(|c| {
            c.commit_reads.push((partition, offset, max_bytes));
            if let Some(start) = c.evict_on_commit.remove(&partition)
                && let Some(log) = c.logs.get_mut(&partition)
            {
                log.0 = start;
            }
            let (log_start, _) = c.logs[&partition];
            if offset < log_start {
                return CommitRead::Evicted {
                    next_available: log_start,
                };
            }
            if c.commit_mismatch_below
                .get(&partition)
                .is_some_and(|size| max_bytes < *size)
            {
                return CommitRead::Mismatch { found: offset + 1 };
            }
            c.commits.push((partition, offset));
            c.committed.insert(partition, offset);
            CommitRead::Committed
        }))
    }

    fn reset(&mut self) {}
}

fn config(read_ahead: usize) -> Settings {
    Settings {
        endpoint: None,
        tls: None,
        topic: "orders".to_owned(),
        partitions: Vec::new(),
        consumer: "converge".to_owned(),
        fetch_max_bytes: crate::source::DEFAULT_FETCH_MAX_BYTES as i32,
        fetch_cap: CLUSTER_FETCH_CAP,
        idle_check: Duration::from_millis(10),
        batch_timeout: Duration::from_millis(5),
        read_ahead,
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

async fn source(fake: &Fake, read_ahead: usize) -> FluvioSource {
    source_with(fake, config(read_ahead)).await
}

async fn source_with(fake: &Fake, config: Settings) -> FluvioSource {
    let another = fake.clone();
    FluvioSource::start(
        fake.clone(),
        move || another.clone(),
        &config,
        Arc::new(Metrics::new()),
    )
    .await
    .expect("source starts")
}

/// The settings with a 1 MiB fetch (the client's default), so that re-reads can grow it.
fn small_fetch(read_ahead: usize) -> Settings {
    Settings {
        fetch_max_bytes: MIB,
        ..config(read_ahead)
    }
}

const MIB: i32 = 1 << 20;

fn offsets(batch: &[Message]) -> Vec<(i32, i64)> {
    batch
        .iter()
        .map(|message| match &message.position {
            Position::Partition {
                partition, offset, ..
            } => (*partition, *offset),
            Position::Line { .. } => panic!("a line position from the Fluvio source"),
        })
        .collect()
}

/// Reads batches until `count` messages arrived, acknowledging each.
async fn read_all(source: &mut FluvioSource, count: usize) -> Vec<Message> {
    let mut all = Vec::new();
    while all.len() < count {
        let Ok(batch) = tokio::time::timeout(Duration::from_secs(5), source.next_batch(64)).await
        else {
            panic!(
                "no batch within 5 s: {} of {count} messages read, the last {:?}",
                all.len(),
                offsets(&all).last()
            );
        };
        let batch = batch.expect("batch");
        source.ack(&batch).await.expect("ack");
        all.extend(batch);
    }
    all
}

/// Waits until the committers caught up with `expected`.
async fn committed(fake: &Fake, expected: &[(u32, i64)]) -> HashMap<u32, i64> {
    let expected: HashMap<u32, i64> = expected.iter().copied().collect();
    for _ in 0..500 {
        let committed = fake.with(|c| c.committed.clone());
        if committed == expected {
            return committed;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.with(|c| c.committed.clone())
}

fn per_partition(messages: &[Message]) -> BTreeMap<i32, Vec<i64>> {
    let mut per: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (partition, offset) in offsets(messages) {
        per.entry(partition).or_default().push(offset);
    }
    per
}

/// The lost messages among `messages`, as (first offset, last offset, reason).
fn lost(messages: &[Message]) -> Vec<(i64, i64, String)> {
    messages
        .iter()
        .filter_map(|message| {
            let lost = message.lost.as_ref()?;
            let (_, first) = offsets(std::slice::from_ref(message))[0];
            Some((first, lost.last_offset, lost.reason.clone()))
        })
        .collect()
}

mod committing;
mod reading;
