//! T13 (issue 13, item 6): batches in flight are acknowledged in the order they were
//! delivered. While batch N's write is slow, batches N+1, … finish their writes, yet no offset
//! past batch N is stored; a SIGKILL in that window loses nothing: a restart re-reads from the
//! end of batch N-1, every key ends on its final state and the committed offsets reach the end.
//!
//! The batches in flight with N hold keys N does not: a key of N in a later batch is decided on
//! N's state in flight and its write fenced on N's, so it is refused while N's has not landed,
//! and the window is drained (waiting for N) whatever order acknowledgements follow. Only later
//! batches that land clean tell acknowledging in delivery order from acknowledging in
//! completion order, so the streams open with orders of one event each (distinct keys).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use converge::config::KafkaSourceConfig;
use converge::dead_letter::MemoryDeadLetters;
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::{EngineLimits, RuleEngine};
use converge::source::{KafkaSource, Message, Position, Source, SourceError};
use converge::store::{Current, MemoryStore, Store, StoreError, Write, WriteOutcome};
use converge::telemetry::Metrics;
use converge_tests::kafka::{self, TestTopic};
use converge_tests::process::Server;
use converge_tests::services::{self, TestStore};
use converge_tests::{Convergence, NativeOrderRule, build, event_messages, orders};

/// The write call of the slow-write process that never returns (its batch is batch N).
const SLOW_CALL: u64 = 3;
/// Messages per batch in the slow-write process and the restart: many small batches.
const BATCH_SIZE: usize = 100;

/// Kafka properties of both consumers: a SIGKILLed member leaves the group after 6 s (the
/// broker's minimum) instead of 45 s, so the restart is assigned its partitions soon.
fn consumer_properties() -> BTreeMap<String, String> {
    BTreeMap::from([("session.timeout.ms".to_owned(), "6000".to_owned())])
}

/// `orders` orders of one event each — the last step of a generated history, inserted as is —
/// with distinct keys `{prefix}{n}`: batches of them share no key.
fn single_event_orders(prefix: &str, orders: usize, seed: u64) -> orders::OrderStream {
    let histories = orders::generate(prefix, orders, 0, seed);
    orders::OrderStream {
        events: histories.expected.values().cloned().collect(),
        expected: histories.expected,
    }
}

/// Offsets of one partition in one batch: (first, last, count).
type Range = (i64, i64, u64);

/// What the slow-write process printed so far.
#[derive(Debug, Default)]
struct Report {
    /// Batches in delivery order (batch i at index i-1): partition -> offsets.
    batches: Vec<BTreeMap<i32, Range>>,
    /// Batches acknowledged to the source, in the order acknowledged (their numbers).
    acks: Vec<String>,
    /// The stalled write call's writes: (partition, offset) of each one's last event.
    slow: Option<Vec<(i32, i64)>>,
    /// Write calls after the stalled one that returned: (call, writes stored, writes).
    done: Vec<(u64, usize, usize)>,
    /// Every line, for failure messages.
    lines: Vec<String>,
}

impl Report {
    fn take(&mut self, line: String, topic: &str) {
        let mut words = line.split(' ');
        match words.next() {
            Some("BATCH") => {
                let number: usize = words.next().and_then(|n| n.parse().ok()).expect("number");
                assert_eq!(number, self.batches.len() + 1, "batches numbered in order");
                let ranges = words
                    .map(|range| {
                        let (partition, rest) = range.split_once(':').expect("p:first-last:n");
                        let (span, count) = rest.split_once(':').expect("first-last:n");
                        let (first, last) = span.split_once('-').expect("first-last");
                        let parse = |n: &str| n.parse::<i64>().expect("a number");
                        (
                            partition.parse().expect("a partition"),
                            (parse(first), parse(last), count.parse().expect("a count")),
                        )
                    })
                    .collect();
                self.batches.push(ranges);
            }
            Some("ACK") => self.acks.push(words.next().expect("number").to_owned()),
            Some("SLOW") => {
                let _call = words.next();
                let positions = words
                    .map(|position| {
                        // "{topic}[{partition}]@{offset}"
                        let (rest, offset) = position.rsplit_once('@').expect("an offset");
                        let (name, partition) = rest
                            .strip_suffix(']')
                            .and_then(|rest| rest.rsplit_once('['))
                            .expect("a partition");
                        assert_eq!(name, topic, "{position} is not on the test's topic");
                        (
                            partition.parse().expect("a partition"),
                            offset.parse().expect("an offset"),
                        )
                    })
                    .collect();
                self.slow = Some(positions);
            }
            Some("DONE") => {
                let mut number = || words.next().and_then(|n| n.parse().ok()).expect("a number");
                let (call, written, writes) = (number(), number(), number());
                self.done.push((call, written as usize, writes as usize));
            }
            _ => {}
        }
        self.lines.push(line);
    }

    /// Takes every line received until `until` holds; panics after `within`.
    fn read_until(
        &mut self,
        lines: &Receiver<String>,
        topic: &str,
        within: Duration,
        until: impl Fn(&Self) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !until(self) {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.take(line, topic),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("slow-write: not there within {within:?}; it printed {self:#?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("slow-write exited; it printed {self:#?}")
                }
            }
        }
    }

    /// Takes every line received so far.
    fn read_available(&mut self, lines: &Receiver<String>, topic: &str) {
        while let Ok(line) = lines.try_recv() {
            self.take(line, topic);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_in_flight_slow_write_holds_offsets_back_through_a_sigkill() {
    let topic = TestTopic::create("t13", 3).await;
    let redis = TestStore::standalone("t13").await;
    let group = format!("{}-group", topic.name);
    let rule = build::rule("order-status");
    // First 3,000 orders of one event each, about 1,000 per partition: the first batches, N
    // and the ones in flight with it included, share no key. Then 3,000 order histories,
    // shuffled, with duplicates.
    let singles = single_event_orders("single-", 3_000, 31);
    let histories = orders::generate("order-", 3_000, 30, 13);
    topic.produce(&singles.events).await;
    topic.produce(&histories.events).await;
    let mut expected = singles.expected.clone();
    expected.extend(histories.expected.clone());
    let total = singles.events.len() + histories.events.len();

    // Killed when dropped: a failing test leaves no stalled pipeline behind.
    let mut child = Server::spawn(
        Command::new(env!("CARGO_BIN_EXE_slow-write"))
            .arg("--brokers")
            .arg(kafka::brokers())
            .args(["--group", &group, "--topic", &topic.name])
            .arg("--redis")
            .arg(services::redis_url())
            .args(["--prefix", redis.store.prefix()])
            .arg("--rule")
            .arg(&rule)
            .args(["--slow-call", &SLOW_CALL.to_string()])
            .args(["--batch-size", &BATCH_SIZE.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let stdout = child.take_stdout().expect("piped");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });

    // Batch N's write is stalled and a later write call returned: batch N+1 finished first.
    let mut report = Report::default();
    report.read_until(&lines, &topic.name, Duration::from_secs(90), |report| {
        report.slow.is_some() && !report.done.is_empty()
    });
    // Longer than the auto-commit interval (1 s): whatever was stored is committed by now.
    std::thread::sleep(Duration::from_secs(3));
    report.read_available(&lines, &topic.name);

    // Batch N: the delivered batch holding every position of the stalled write.
    let slow = report.slow.clone().expect("seen");
    assert!(!slow.is_empty(), "the stalled call wrote something");
    let contains = |batch: &BTreeMap<i32, Range>, (partition, offset): &(i32, i64)| {
        batch
            .get(partition)
            .is_some_and(|(first, last, _)| (first..=last).contains(&offset))
    };
    let n = 1 + report
        .batches
        .iter()
        .position(|batch| slow.iter().all(|position| contains(batch, position)))
        .unwrap_or_else(|| panic!("no delivered batch holds the stalled writes: {report:#?}"));
    assert!(
        report.batches.len() > n,
        "a batch after N was delivered: {report:#?}"
    );
    // Not vacuous: batches before N were acknowledged (and below, committed), and a batch
    // after N landed clean while N's write hung — acknowledging in completion order would
    // have acknowledged it.
    assert!(n > 1, "batch N is not the first: {report:#?}");
    assert!(
        report
            .done
            .iter()
            .any(|(_, written, writes)| written == writes && *writes > 0),
        "a later batch's writes all landed while N's hung: {report:#?}"
    );

    // Per partition, the offset after batch N-1's: where batch N and the batches after it
    // start. Batches deliver each partition in order, so acknowledging anything from batch N
    // on stores a higher offset for some partition. Acknowledging in completion order would
    // acknowledge a later batch that landed clean (checked above) and store its offsets,
    // above this for a partition it reads, failing the check below whichever partitions
    // batch N itself reads. (Checked: with the pipeline's window made a `FuturesUnordered`
    // completing whichever flight landed first, this test fails here, committed offsets
    // far past N, and so does the in-process test below.)
    let mut committable: BTreeMap<i32, i64> = (0..topic.partitions).map(|p| (p, 0)).collect();
    for batch in &report.batches[..n - 1] {
        for (partition, (_, last, _)) in batch {
            let offset = committable.entry(*partition).or_default();
            *offset = (*offset).max(last + 1);
        }
    }
    // The smallest offset of each partition among the stalled writes: nothing at or past it
    // may be committed.
    let mut slow_first: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset) in &slow {
        let first = slow_first.entry(*partition).or_insert(*offset);
        *first = (*first).min(*offset);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let committed = loop {
        let progress = topic.progress(&group);
        let committed: BTreeMap<i32, i64> = (0..topic.partitions)
            .zip(progress.iter().map(|(c, _)| *c))
            .collect();
        for (partition, offset) in &committed {
            assert!(
                *offset <= committable[partition],
                "partition {partition}: offset {offset} committed, but the batches before \
                 N = {n} end at {}: an offset of batch N or a later one was stored while N's \
                 write is in flight; committed {committed:?}; {report:#?}",
                committable[partition]
            );
            if let Some(first) = slow_first.get(partition) {
                assert!(offset <= first, "partition {partition}: {offset} > {first}");
            }
        }
        if committed == committable {
            break committed;
        }
        assert!(
            Instant::now() < deadline,
            "batches before N = {n} were acknowledged but not committed: committed \
             {committed:?}, expected {committable:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        committed.values().sum::<i64>() > 0,
        "something was committed before N"
    );
    eprintln!(
        "batch N = {n} of {} delivered; write calls returned after N's stalled: {:?}; \
         committed {committed:?}; stalled writes' first offsets {slow_first:?}",
        report.batches.len(),
        report.done
    );
    // What the process says it acknowledged: the batches before N, in order, and no other.
    report.read_available(&lines, &topic.name);
    let acked_before: Vec<String> = (1..n).map(|i| i.to_string()).collect();
    assert_eq!(
        report.acks, acked_before,
        "exactly the batches before N = {n} are acknowledged, in order"
    );

    // SIGKILL in the window.
    let status = child.kill().expect("running until killed");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");

    // Restart in process, same group: every key right, committed offsets at the end.
    let (stop, stopped) = converge::shutdown::Shutdown::new();
    let config = KafkaSourceConfig {
        brokers: kafka::brokers(),
        group_id: group.clone(),
        topics: vec![topic.name.clone()],
        batch_timeout_ms: 0,
        properties: consumer_properties(),
    };
    let store = redis.store.clone();
    let restarted = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let rule = RuleEngine::new(EngineLimits {
                memory_cap_bytes: 16 << 20,
                deadline: Duration::from_secs(2),
                ..EngineLimits::default()
            })
            .expect("engine starts")
            .compile_file(&rule)
            .expect("rule loads")
            .instance();
            let metrics = Arc::new(Metrics::new());
            let mut source =
                KafkaSource::subscribe(&config, Arc::clone(&metrics)).expect("subscribed");
            let mut pipeline = Pipeline::new(
                rule,
                store,
                MemoryDeadLetters::new(),
                PipelineConfig {
                    batch_size: BATCH_SIZE,
                    ..PipelineConfig::default()
                },
            )
            .with_metrics(metrics);
            // Stops when told to.
            let result = pipeline.run(&mut source, stopped).await;
            source.close();
            result.expect("the restarted pipeline runs");
            (
                pipeline.stats().clone(),
                pipeline.dead_letters().letters().len(),
            )
        })
    });
    let positions = Convergence::new(&redis.store, &expected)
        .within(Duration::from_secs(120))
        .every(Duration::from_millis(250))
        .wait_with_offsets(async || topic.progress(&group))
        .await;
    assert_eq!(
        positions.iter().map(|(_, end)| end).sum::<i64>(),
        total as i64
    );
    stop.trigger();
    let (stats, letters) = restarted.join().expect("the restart stopped");
    assert_eq!(letters, 0, "nothing in this stream is bad");
    // The restart read from where the commits stopped — the end of batch N-1 — to the end.
    let before: i64 = committed.values().sum();
    assert_eq!(
        stats.messages,
        (total as i64 - before) as u64,
        "the restart re-read batch N and everything after it, nothing before"
    );
}

/// What the in-process test saw, in one order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A write call returned; the batches its writes came from.
    Written {
        call: usize,
        batches: BTreeSet<usize>,
    },
    /// A batch was acknowledged to the source.
    Acked(usize),
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn log(log: &Log, seen: Seen) {
    log.lock().expect("not poisoned").push(seen);
}

/// The batch a line belongs to (batches of `batch_size` lines, counted from 0).
fn batch_of_line(line: u64, batch_size: usize) -> usize {
    (line as usize - 1) / batch_size
}

/// Batches handed out from a list; acknowledgements logged by batch.
struct ScriptedSource {
    batches: VecDeque<Vec<Message>>,
    batch_size: usize,
    log: Log,
}

impl Source for ScriptedSource {
    async fn next_batch(&mut self, _max: usize) -> Result<Vec<Message>, SourceError> {
        Ok(self.batches.pop_front().unwrap_or_default())
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        let batches: BTreeSet<usize> = batch
            .iter()
            .map(|message| match message.position {
                Position::Line { line } => batch_of_line(line, self.batch_size),
                ref other => panic!("unexpected position {other}"),
            })
            .collect();
        assert_eq!(batches.len(), 1, "one batch acknowledged at a time");
        log(
            &self.log,
            Seen::Acked(batches.into_iter().next().expect("a batch")),
        );
        Ok(())
    }
}

/// A memory store whose first write call is held until `hold_until` later write calls have
/// returned (or 10 s, recorded as a timeout).
struct HeldStore {
    inner: MemoryStore,
    calls: AtomicUsize,
    later_returned: AtomicUsize,
    returned: tokio::sync::Notify,
    hold_until: usize,
    timed_out: AtomicBool,
    batch_size: usize,
    log: Log,
}

impl Store for HeldStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
        self.inner.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call == 1 {
            let held = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    // Registered before the check, so a return in between is not missed.
                    let returned = self.returned.notified();
                    if self.later_returned.load(Ordering::SeqCst) >= self.hold_until {
                        break;
                    }
                    returned.await;
                }
            })
            .await;
            self.timed_out.store(held.is_err(), Ordering::SeqCst);
        }
        let outcomes = self.inner.write(writes).await?;
        let batches = writes
            .iter()
            .map(|write| {
                let line = write
                    .position
                    .strip_prefix("line ")
                    .and_then(|line| line.parse().ok())
                    .expect("a line position");
                batch_of_line(line, self.batch_size)
            })
            .collect();
        log(&self.log, Seen::Written { call, batches });
        if call > 1 {
            self.later_returned.fetch_add(1, Ordering::SeqCst);
            self.returned.notify_waiters();
        }
        Ok(outcomes)
    }
}

#[tokio::test]
async fn t13_in_flight_acks_in_order_while_the_first_write_is_held() {
    const BATCH: usize = 50;
    // Five batches of distinct keys first (so the batches in flight with the first one land
    // clean, see the module's doc), then order histories, shuffled, with duplicates.
    let singles = single_event_orders("t13-single-", 5 * BATCH, 8);
    let histories = orders::generate("t13-", 200, 30, 7);
    let mut events = singles.events.clone();
    events.extend(histories.events.iter().cloned());
    let mut expected = singles.expected.clone();
    expected.extend(histories.expected.clone());
    let messages = event_messages(&events);
    let batches: VecDeque<Vec<Message>> = messages.chunks(BATCH).map(<[_]>::to_vec).collect();
    let count = batches.len();
    let config = PipelineConfig {
        batch_size: BATCH,
        ..PipelineConfig::default()
    };
    assert!(config.max_in_flight > 1, "several batches in flight");
    let log = Log::default();
    let store = HeldStore {
        inner: MemoryStore::new(),
        calls: AtomicUsize::new(0),
        later_returned: AtomicUsize::new(0),
        returned: tokio::sync::Notify::new(),
        // Every other batch the window holds finishes its write while the first's is held.
        hold_until: config.max_in_flight - 1,
        timed_out: AtomicBool::new(false),
        batch_size: BATCH,
        log: Arc::clone(&log),
    };
    let mut source = ScriptedSource {
        batches,
        batch_size: BATCH,
        log: Arc::clone(&log),
    };
    let mut pipeline = Pipeline::new(
        NativeOrderRule::default(),
        store,
        MemoryDeadLetters::new(),
        config,
    );
    pipeline
        .run(&mut source, converge::shutdown::Shutdown::never())
        .await
        .expect("the input is processed");

    let seen = log.lock().expect("not poisoned").clone();
    // The held write: call 1, batch 0's.
    let held = seen
        .iter()
        .position(|entry| matches!(entry, Seen::Written { call: 1, .. }))
        .expect("the held write returned");
    assert_eq!(
        seen[held],
        Seen::Written {
            call: 1,
            batches: BTreeSet::from([0])
        }
    );
    assert!(
        !seen[..held]
            .iter()
            .any(|entry| matches!(entry, Seen::Acked(_))),
        "something was acknowledged while the first batch's write was held: {seen:?}"
    );
    // No batch is acknowledged before the writes of every batch up to it returned.
    let mut returned_at: HashMap<usize, usize> = HashMap::new();
    for (at, entry) in seen.iter().enumerate() {
        if let Seen::Written { batches, .. } = entry {
            for batch in batches {
                returned_at.insert(*batch, at);
            }
        }
    }
    for (at, entry) in seen.iter().enumerate() {
        if let Seen::Acked(acked) = entry {
            for batch in 0..=*acked {
                if let Some(returned) = returned_at.get(&batch) {
                    assert!(
                        *returned < at,
                        "batch {acked} acknowledged before batch {batch}'s write returned: \
                         {seen:?}"
                    );
                }
            }
        }
    }
    let acks: Vec<usize> = seen
        .iter()
        .filter_map(|entry| match entry {
            Seen::Acked(batch) => Some(*batch),
            Seen::Written { .. } => None,
        })
        .collect();
    assert_eq!(
        acks,
        (0..count).collect::<Vec<_>>(),
        "every batch acknowledged once, in delivery order"
    );
    // Not vacuous: the other batches of the window finished their writes while the first
    // batch's was held.
    let store = pipeline.store();
    assert!(
        !store.timed_out.load(Ordering::SeqCst),
        "later batches' writes did not return while the first batch's was held: {seen:?}"
    );
    let finished_first = seen[..held]
        .iter()
        .filter(|entry| matches!(entry, Seen::Written { .. }))
        .count();
    assert_eq!(
        finished_first,
        pipeline.config().max_in_flight - 1,
        "later batches finished first: {seen:?}"
    );
    let keys: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(converge_tests::stored_states(store, &keys).await, expected);
    assert!(pipeline.dead_letters().letters().is_empty());
}
