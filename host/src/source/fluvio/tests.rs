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

#[tokio::test]
async fn a_gap_is_read_again_and_every_offset_handed_out_once_in_order() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 300));
        c.logs.insert(1, (0, 300));
        // The client's cut batch: 120..=149 of partition 1 are jumped over, once.
        c.skip_next_open.insert(1, vec![(120, 149)]);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 600).await;
    let per = per_partition(&all);
    assert_eq!(per[&0], (0..300).collect::<Vec<_>>());
    assert_eq!(
        per[&1],
        (0..300).collect::<Vec<_>>(),
        "the skipped range is read again, nothing twice"
    );
    assert!(
        !fake.opens_at(1, 120).is_empty(),
        "partition 1 reopened at its first missing offset: {:?}",
        fake.with(|c| c.opens.clone())
    );
    assert!(all.iter().all(|m| m.lost.is_none()));
    assert_eq!(
        committed(&fake, &[(0, 299), (1, 299)]).await,
        HashMap::from([(0, 299), (1, 299)])
    );
    source.close().await;
}

#[tokio::test]
async fn nothing_is_committed_before_its_batch_is_acknowledged() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 100));
    });
    let mut source = source(&fake, 16).await;
    let first = source.next_batch(10).await.expect("batch");
    assert_eq!(offsets(&first), (0..10).map(|o| (0, o)).collect::<Vec<_>>());
    let second = source.next_batch(10).await.expect("batch");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        fake.with(|c| c.commits.is_empty()),
        "read ahead but nothing acknowledged: nothing committed"
    );
    source.ack(&second).await.expect("ack");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        fake.with(|c| c.commits.is_empty()),
        "the later batch is acknowledged, the earlier one is not: still nothing committed"
    );
    source.ack(&first).await.expect("ack");
    assert_eq!(committed(&fake, &[(0, 19)]).await, HashMap::from([(0, 19)]));
    assert!(
        fake.with(|c| c.commits.iter().all(|(_, offset)| *offset <= 19)),
        "never more than acknowledged: {:?}",
        fake.with(|c| c.commits.clone())
    );
    source.close().await;
}

#[tokio::test]
async fn partitions_acknowledged_out_of_step_are_committed_each_to_its_own_offset() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 40));
        c.logs.insert(1, (0, 40));
        c.logs.insert(2, (0, 40));
    });
    let mut source = source(&fake, 128).await;
    let mut batches = Vec::new();
    let mut seen = 0;
    while seen < 120 {
        let batch = source.next_batch(7).await.expect("batch");
        seen += batch.len();
        batches.push(batch);
    }
    // Acknowledge every batch but the second, in reverse order.
    for batch in batches.iter().enumerate().rev().filter(|(i, _)| *i != 1) {
        source.ack(batch.1).await.expect("ack");
    }
    let held: HashMap<i32, i64> = runs(&batches[1])
        .into_iter()
        .map(|(partition, first, _)| (partition, first))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (partition, offset) in fake.with(|c| c.committed.clone()) {
        if let Some(first_held) = held.get(&(partition as i32)) {
            assert!(
                offset < *first_held,
                "partition {partition} committed {offset}, past its unacknowledged {first_held}"
            );
        } else {
            assert_eq!(offset, 39, "partition {partition} has nothing held back");
        }
    }
    source.ack(&batches[1]).await.expect("ack");
    assert_eq!(
        committed(&fake, &[(0, 39), (1, 39), (2, 39)]).await,
        HashMap::from([(0, 39), (1, 39), (2, 39)])
    );
    source.close().await;
}

#[tokio::test]
async fn a_restart_resumes_each_partition_after_its_own_committed_offset() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 50));
        c.logs.insert(1, (0, 50));
        c.committed.insert(0, 29);
        c.committed.insert(1, 9);
    });
    let mut source = source(&fake, 64).await;
    let all = read_all(&mut source, 20 + 40).await;
    let per = per_partition(&all);
    assert_eq!(per[&0], (30..50).collect::<Vec<_>>());
    assert_eq!(per[&1], (10..50).collect::<Vec<_>>());
    assert!(!fake.opens_at(0, 30).is_empty() && !fake.opens_at(1, 10).is_empty());
    source.close().await;
}

#[tokio::test]
async fn a_stream_that_ends_or_fails_to_open_is_reopened_at_its_partitions_own_position() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 100));
        c.logs.insert(1, (0, 100));
        c.end_next_open_after.insert(0, 37);
        c.end_next_open_after.insert(1, 61);
        c.failing_opens.insert(1, 2);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 200).await;
    let per = per_partition(&all);
    assert_eq!(per[&0], (0..100).collect::<Vec<_>>());
    assert_eq!(per[&1], (0..100).collect::<Vec<_>>());
    assert!(
        !fake.opens_at(0, 37).is_empty() && !fake.opens_at(1, 61).is_empty(),
        "each partition reopened where it stopped: {:?}",
        fake.with(|c| c.opens.clone())
    );
    source.close().await;
}

#[tokio::test]
async fn records_removed_by_retention_are_handed_out_as_one_lost_range() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (500, 600));
        c.committed.insert(0, 99);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 101).await;
    let lost = all[0]
        .lost
        .as_ref()
        .expect("the first message is the lost range");
    assert_eq!(offsets(&all[..1]), [(0, 100)]);
    assert_eq!(lost.last_offset, 499);
    assert!(lost.reason.contains("100..=499"), "{}", lost.reason);
    assert!(lost.reason.contains("retention"), "{}", lost.reason);
    assert_eq!(
        offsets(&all[1..]),
        (500..600).map(|o| (0, o)).collect::<Vec<_>>()
    );
    assert_eq!(
        committed(&fake, &[(0, 599)]).await,
        HashMap::from([(0, 599)])
    );
    source.close().await;
}

#[tokio::test]
async fn a_gap_on_every_reread_is_reported_as_lost_not_skipped() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 30));
        c.skip_always.insert(0, (10, 12));
    });
    let mut source = source_with(&fake, small_fetch(256)).await;
    let all = tokio::time::timeout(Duration::from_secs(60), read_all(&mut source, 28))
        .await
        .expect("the partition does not stall");
    let lost: Vec<_> = all.iter().filter(|m| m.lost.is_some()).collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(offsets(&[lost[0].clone()]), [(0, 10)]);
    assert_eq!(lost[0].lost.as_ref().map(|l| l.last_offset), Some(12));
    assert_eq!(
        fake.opens_at(0, 10),
        [2, 4, 8, 16, 32, 32, 32, 32, 32, 32].map(|mib| mib * MIB),
        "every re-read doubles the fetch, up to the cluster's cap"
    );
    assert_eq!(committed(&fake, &[(0, 29)]).await, HashMap::from([(0, 29)]));
    source.close().await;
}

#[tokio::test]
async fn close_commits_the_last_acknowledged_offset() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 1000));
    });
    let mut source = source(&fake, 64).await;
    let batch = source.next_batch(50).await.expect("batch");
    source.ack(&batch).await.expect("ack");
    source.close().await;
    assert_eq!(fake.with(|c| c.committed.get(&0).copied()), Some(49));
}

#[tokio::test]
async fn an_unreachable_cluster_at_start_is_waited_for() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 10));
        c.failing_setup = 3;
    });
    let mut source = source(&fake, 64).await;
    let all = read_all(&mut source, 10).await;
    assert_eq!(per_partition(&all)[&0], (0..10).collect::<Vec<_>>());
    source.close().await;
}

#[tokio::test]
async fn a_topic_that_does_not_exist_is_an_error_at_once() {
    let fake = Fake::default();
    let another = fake.clone();
    let error = FluvioSource::start(
        fake.clone(),
        move || another.clone(),
        &config(8),
        Arc::new(Metrics::new()),
    )
    .await
    .expect_err("no such topic");
    assert!(
        error.to_string().contains("topic orders does not exist"),
        "{error}"
    );
}

#[tokio::test]
async fn an_acknowledgement_of_a_batch_not_handed_out_here_is_refused() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 10));
    });
    let mut source = source(&fake, 16).await;
    let message = |partition: i32, offset: i64| Message {
        position: Position::Partition {
            topic: "orders".to_owned(),
            partition,
            offset,
        },
        key: None,
        payload: None,
        produced_at_ms: None,
        lost: None,
    };
    let error = source
        .ack(&[message(7, 0)])
        .await
        .expect_err("partition 7 is not read");
    assert!(
        matches!(
            error,
            SourceError::Fluvio(FluvioError::NotReadHere { partition: 7, .. })
        ),
        "{error}"
    );
    let error = source
        .ack(&[message(0, 3)])
        .await
        .expect_err("offset 3 was never handed out");
    assert!(
        matches!(
            error,
            SourceError::Fluvio(FluvioError::NotHandedOut {
                partition: 0,
                first: 3,
                last: 3,
                ..
            })
        ),
        "{error}"
    );
    assert!(fake.with(|c| c.commits.is_empty()), "nothing committed");
    source.close().await;
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

#[tokio::test]
async fn wedge_a_cut_at_the_end_of_a_quiet_partition_is_read_again() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 100));
        c.logs.insert(1, (0, 100));
        // The client's cut batch at the very end of partition 0: no later record comes to
        // show the gap.
        c.skip_next_open.insert(0, vec![(90, 99)]);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 200).await;
    let per = per_partition(&all);
    assert_eq!(
        per[&0],
        (0..100).collect::<Vec<_>>(),
        "the tail is read again"
    );
    assert_eq!(per[&1], (0..100).collect::<Vec<_>>());
    assert!(
        !fake.opens_at(0, 90).is_empty(),
        "partition 0 reopened at its first missing offset: {:?}",
        fake.with(|c| c.opens.clone())
    );
    assert!(lost(&all).is_empty());
    assert_eq!(
        committed(&fake, &[(0, 99), (1, 99)]).await,
        HashMap::from([(0, 99), (1, 99)])
    );
    source.close().await;
}

#[tokio::test]
async fn wedge_a_tail_skipped_by_every_reread_is_dead_lettered_as_lost_with_its_offsets() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 30));
        c.skip_always.insert(0, (25, 29));
    });
    let mut source = source_with(&fake, small_fetch(256)).await;
    let all = read_all(&mut source, 26).await;
    assert_eq!(
        offsets(&all),
        (0..26).map(|o| (0, o)).collect::<Vec<_>>(),
        "0..=24, then the lost range at 25"
    );
    let lost = lost(&all);
    assert_eq!(lost.len(), 1, "{lost:?}");
    let (first, last, reason) = &lost[0];
    assert_eq!((*first, *last), (25, 29));
    assert!(
        reason.contains("25..=29"),
        "the letter names the offsets: {reason}"
    );
    assert!(reason.contains("re-reads"), "{reason}");
    assert_eq!(
        fake.opens_at(0, 25),
        [2, 4, 8, 16, 32, 32, 32, 32, 32, 32].map(|mib| mib * MIB),
        "every re-read doubles the fetch, up to the cluster's cap"
    );
    assert_eq!(committed(&fake, &[(0, 29)]).await, HashMap::from([(0, 29)]));
    source.close().await;
}

#[tokio::test]
async fn wedge_a_first_record_past_the_log_start_of_a_never_committed_partition_is_a_gap() {
    let fake = Fake::default();
    fake.with(|c| {
        // Never committed; retention left partition 0 starting at 40.
        c.logs.insert(0, (40, 100));
        c.logs.insert(1, (0, 50));
        // The client's cut batch at the very start of each partition.
        c.skip_next_open.insert(0, vec![(40, 44)]);
        c.skip_next_open.insert(1, vec![(0, 2)]);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 60 + 50).await;
    let per = per_partition(&all);
    assert_eq!(per[&0], (40..100).collect::<Vec<_>>(), "from the log start");
    assert_eq!(per[&1], (0..50).collect::<Vec<_>>(), "from the log start");
    assert!(lost(&all).is_empty());
    assert_eq!(
        fake.opens_at(0, 40).len(),
        2,
        "opened, then re-read at the start"
    );
    assert_eq!(
        fake.opens_at(1, 0).len(),
        2,
        "opened, then re-read at the start"
    );
    assert_eq!(
        committed(&fake, &[(0, 99), (1, 49)]).await,
        HashMap::from([(0, 99), (1, 49)])
    );
    source.close().await;
}

#[tokio::test]
async fn a_never_committed_partition_whose_start_moved_is_read_from_its_first_record_left() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (50, 100));
        // The cluster still reports the start from before retention ran.
        c.reported_start.insert(0, 20);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 50).await;
    assert_eq!(per_partition(&all)[&0], (50..100).collect::<Vec<_>>());
    assert!(
        lost(&all).is_empty(),
        "records removed before a never-committed partition was first read are not lost"
    );
    source.close().await;
}

#[tokio::test]
async fn wedge_a_gap_is_read_again_with_a_growing_fetch_before_it_is_called_lost() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 60));
        // A batch no fetch below 8 MiB returns whole.
        c.skip_below_fetch.insert(0, ((20, 29), 8 * MIB));
    });
    let mut source = source_with(&fake, small_fetch(256)).await;
    let all = read_all(&mut source, 60).await;
    assert_eq!(per_partition(&all)[&0], (0..60).collect::<Vec<_>>());
    assert!(lost(&all).is_empty(), "{:?}", lost(&all));
    assert_eq!(
        fake.opens_at(0, 20),
        [2 * MIB, 4 * MIB, 8 * MIB],
        "each re-read doubles the fetch until the batch comes whole"
    );
    source.close().await;
}

#[tokio::test]
async fn wedge_a_commit_stream_beginning_past_its_offset_is_asked_again_with_a_larger_fetch() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 40));
        // A commit stream with less than 4 MiB of fetch begins past its offset.
        c.commit_mismatch_below.insert(0, 4 * MIB);
    });
    let mut source = source(&fake, 256).await;
    let all = read_all(&mut source, 40).await;
    assert_eq!(per_partition(&all)[&0], (0..40).collect::<Vec<_>>());
    assert_eq!(
        committed(&fake, &[(0, 39)]).await,
        HashMap::from([(0, 39)]),
        "committed despite the mismatches; fetch sizes of the commits asked for: {:?}",
        fake.commit_reads_at(0, 39)
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(
        fake.commit_reads_at(0, 39),
        [
            COMMIT_FETCH_BYTES,
            4 * COMMIT_FETCH_BYTES,
            16 * COMMIT_FETCH_BYTES
        ],
        "the commit fetch grows fourfold until the record comes first"
    );
    source.close().await;
}

#[tokio::test]
async fn wedge_an_offset_evicted_during_its_commit_is_passed_over_not_retried() {
    let fake = Fake::default();
    fake.with(|c| {
        c.logs.insert(0, (0, 100));
        // Retention removes everything below 80 while the first commit is under way.
        c.evict_on_commit.insert(0, 80);
    });
    let mut source = source(&fake, 256).await;
    let first = source.next_batch(50).await.expect("batch");
    let (_, last) = *offsets(&first).last().expect("a record");
    assert!(last < 80);
    source.ack(&first).await.expect("ack");
    for _ in 0..500 {
        if !fake.commit_reads_at(0, last).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Room for a committer that retries the evicted offset to show it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        fake.commit_reads_at(0, last).len(),
        1,
        "offset {last} is gone: asked once, not again and again: {:?}",
        fake.with(|c| c.commit_reads.clone())
    );
    // The rest was read before retention ran; once it is acknowledged, the partition is
    // committed past the removed range.
    let rest = read_all(&mut source, 100 - first.len()).await;
    assert!(lost(&rest).is_empty());
    assert_eq!(committed(&fake, &[(0, 99)]).await, HashMap::from([(0, 99)]));
    assert_eq!(fake.commit_reads_at(0, last).len(), 1);
    source.close().await;
}
