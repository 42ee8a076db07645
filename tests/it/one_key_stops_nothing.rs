//! Wedge (issue 24): one key, one partition, one rebalance or one file event must never stop,
//! crash or silently weaken the fleet. Each test arranges its trigger — a key another writer
//! keeps rewriting, a key the order API always fails, a swap during a repair — and checks that
//! the pipeline goes on, loses nothing and says what happened.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use converge::config::AutoRollbackConfig;
use converge::config::{EnrichConfig, OnUnavailable};
use converge::dead_letter::{
    DeadLetter, DeadLetterKind, DeadLetterSink, MemoryDeadLetters, RedisDeadLetters,
};
use converge::entity::{Decision, Event, RuleInfo, State};
use converge::pipeline::{Enricher, Pipeline, PipelineConfig};
use converge::rule::{DecideError, EngineLimits, GateConfig, Gates, Rule, RuleEngine};
use converge::source::{Message, Position, Source, SourceError};
use converge::store::{Current, MemoryStore, RedisStore, Store, StoreError, Write, WriteOutcome};
use converge::swap::{Origin, Role, RuleControl};
use converge::telemetry::Metrics;
use converge_tests::events::event;
use converge_tests::events::id_only;
use converge_tests::order_api::OrderApi;
use converge_tests::prometheus::Exposition;
use converge_tests::services::{TestStore, redis_url, unique_prefix};
use converge_tests::{NativeOrderRule, build, config, event_messages, orders, stored_states};

/// The real Redis store, and a second writer that rewrites a key just before each of the
/// pipeline's first `rounds` writes of it: the pipeline loses every one of those races, as it
/// would against another instance hammering the same key.
struct HammeredStore {
    inner: RedisStore,
    key: String,
    rounds: AtomicUsize,
    /// The competitor's writes that landed.
    landed: Mutex<Vec<u64>>,
}

impl HammeredStore {
    /// Rewrites the key's stored state unchanged under a new writer id: a competitor that
    /// agrees with the stored state, so only the race itself is tested.
    async fn hammer(&self) {
        let keys = [self.key.clone()];
        let current = self.inner.load(&keys).await.expect("competitor loads")[0]
            .clone()
            .expect("the key is stored");
        let write = Write {
            key: self.key.clone(),
            expected_revision: current.revision,
            expected_writer: current.writer,
            writer: converge::store::new_writer_id(),
            state: current.state,
            rule: "competitor@1".to_owned(),
            position: "elsewhere".to_owned(),
        };
        let outcome = self.inner.write(&[write]).await.expect("competitor writes");
        let WriteOutcome::Written { revision } = outcome[0] else {
            panic!("the competitor's write is refused: {outcome:?}");
        };
        self.landed.lock().expect("not poisoned").push(revision);
    }
}

impl Store for HammeredStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
        self.inner.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let ours = writes.iter().any(|write| write.key == self.key);
        if ours
            && self
                .rounds
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.hammer().await;
        }
        self.inner.write(writes).await
    }
}

/// Item 2: a key that loses its compare-and-set on every attempt used to fail the batch as
/// `Contended` — fatal for `serve`, and met again by the restart. Now the key is waited out
/// with backoff, counted, and lands once the other writer lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_a_key_contended_past_every_attempt_is_waited_out_and_lands() {
    let redis = TestStore::standalone("wedge-contended").await;
    let seeded = event("order-1", "created", 1);
    redis
        .store
        .write(&[Write {
            key: seeded.key.clone(),
            expected_revision: 0,
            expected_writer: 0,
            writer: converge::store::new_writer_id(),
            state: State::from(seeded.clone()),
            rule: "seed@1".to_owned(),
            position: "seed".to_owned(),
        }])
        .await
        .expect("seeded");
    let config = PipelineConfig {
        max_write_attempts: 3,
        backoff_ms: 1,
        max_backoff_ms: 20,
        ..PipelineConfig::default()
    };
    // Twice as many lost races as attempts: the old pipeline gave up after the third.
    let attempts = config.max_write_attempts as usize;
    let rounds = 2 * attempts;
    let store = HammeredStore {
        inner: redis.store.clone(),
        key: "order-1".to_owned(),
        rounds: AtomicUsize::new(rounds),
        landed: Mutex::new(Vec::new()),
    };
    let metrics = Arc::new(Metrics::new());
    let mut pipeline = Pipeline::new(
        NativeOrderRule::default(),
        store,
        MemoryDeadLetters::new(),
        config,
    )
    .with_metrics(metrics.clone());
    let events = [event("order-1", "paid", 2), event("order-2", "created", 1)];
    tokio::time::timeout(
        Duration::from_secs(60),
        pipeline.process(&event_messages(&events)),
    )
    .await
    .expect("the contended key lands once the competitor stops")
    .expect("a contended key is not a failed batch");

    let store = pipeline.store();
    assert_eq!(store.landed.lock().expect("not poisoned").len(), rounds);
    let keys = ["order-1".to_owned(), "order-2".to_owned()];
    let stored = redis.store.load(&keys).await.expect("loads");
    let status = |i: usize| stored[i].as_ref().map(|c| c.state.status.clone());
    assert_eq!(
        status(0).as_deref(),
        Some("paid"),
        "the contended key landed"
    );
    assert_eq!(
        status(1).as_deref(),
        Some("created"),
        "the other key landed"
    );
    assert_eq!(
        stored[0].as_ref().map(|c| c.revision),
        Some(rounds as u64 + 2),
        "seed, every competitor write, then ours"
    );
    assert_eq!(pipeline.stats().conflicts, rounds as u64);
    assert!(pipeline.dead_letters().letters().is_empty());
    let waits = Exposition::parse(&metrics.render())
        .value("converge_unavailable_total{service=\"store\",operation=\"contended\"}")
        as u64;
    assert!(
        waits >= (rounds - attempts) as u64,
        "every wait past the attempts is counted: {waits}"
    );
}

/// Item 3: under the default `on_unavailable = "wait"`, a key the order API answers 5xx
/// forever was retried forever on the main task, holding every partition. Now a key that keeps
/// failing while the API answers others is dead-lettered after `key_give_up_ms` — in a batch
/// with other keys, and alone in a batch (the API is asked about another key to tell) — while
/// a failure of every key is still an outage, waited out and never dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_one_key_the_order_api_always_fails_is_dead_lettered_while_an_outage_waits() {
    let api = OrderApi::start().await;
    let stream = orders::generate("order-", 6, 0, 24);
    api.serve_orders(&stream.expected);
    let broken = "order-3";
    let failing = |keys: &[&str]| {
        let mut failing = api.state.failing.lock().expect("not poisoned");
        failing.clear();
        failing.extend(keys.iter().map(|key| (key.to_string(), usize::MAX)));
    };
    failing(&[broken]);
    let give_up = Duration::from_millis(400);
    let enrich = EnrichConfig {
        backoff_ms: 5,
        max_backoff_ms: 50,
        key_give_up_ms: give_up.as_millis() as u64,
        ..config::enrich(&format!("{}/orders/{{key}}", api.url))
    };
    assert_eq!(enrich.on_unavailable, OnUnavailable::Wait, "the default");
    let mut pipeline = Pipeline::new(
        NativeOrderRule::default(),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    )
    .with_enricher(Enricher::new(enrich).expect("valid enrichment"));
    let within = Duration::from_secs(30);
    let stored = |pipeline: &Pipeline<NativeOrderRule, MemoryStore, MemoryDeadLetters>| {
        pipeline
            .store()
            .snapshot()
            .into_iter()
            .map(|s| (s.state.key.clone(), s.state))
            .collect::<std::collections::BTreeMap<_, _>>()
    };

    // 1. The broken key among others.
    let keys: Vec<&String> = stream.expected.keys().collect();
    let batch: Vec<Message> = (1..)
        .zip(&keys)
        .map(|(line, key)| id_only(key, line))
        .collect();
    tokio::time::timeout(within, pipeline.process(&batch))
        .await
        .expect("one failing key does not hold the batch")
        .expect("processed");
    let mut expected = stream.expected.clone();
    expected.remove(broken);
    assert_eq!(stored(&pipeline), expected, "every other key is stored");
    let letters = pipeline.dead_letters().letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].kind, DeadLetterKind::NotEnriched);
    assert!(
        letters[0].reason.contains(broken)
            && letters[0].reason.contains("HTTP 500")
            && letters[0].reason.contains("answered other keys"),
        "names the key and the last answer: {}",
        letters[0].reason
    );

    // 2. The broken key alone in its batch: nothing else is fetched meanwhile.
    tokio::time::timeout(within, pipeline.process(&[id_only(broken, 100)]))
        .await
        .expect("a batch of only the failing key does not hang")
        .expect("processed");
    let letters = pipeline.dead_letters().letters();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[1].position, Position::Line { line: 100 });

    // 3. Every key failing is an outage: waited out well past `key_give_up_ms`, then the
    // batch completes with nothing dead-lettered.
    failing(&keys.iter().map(|key| key.as_str()).collect::<Vec<_>>());
    let outage = vec![id_only(keys[0], 200), id_only(keys[1], 201)];
    {
        let running = pipeline.process(&outage);
        tokio::pin!(running);
        let waited = tokio::time::timeout(4 * give_up, &mut running).await;
        assert!(waited.is_err(), "an outage of every key is waited out");
        failing(&[]);
        tokio::time::timeout(within, running)
            .await
            .expect("the batch completes once the API is back")
            .expect("processed");
    }
    assert_eq!(
        pipeline.dead_letters().letters().len(),
        2,
        "nothing of the outage is dead-lettered"
    );
}

/// The order-status rule, marking every state it stores with its own version in the payload,
/// so that a stored state tells which rule decided it.
#[derive(Debug)]
struct Marking {
    inner: NativeOrderRule,
    info: RuleInfo,
}

impl Marking {
    fn new(version: &str) -> Self {
        let inner = NativeOrderRule::default();
        let info = RuleInfo {
            version: version.to_owned(),
            ..inner.info().clone()
        };
        Self { inner, info }
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        let mark = |mut state: State| {
            state.payload = format!("{{\"decided_by\":\"{}\"}}", self.info.version);
            state
        };
        Ok(match self.inner.decide(current, incoming)? {
            Decision::Insert(state) => Decision::Insert(mark(state)),
            Decision::Update(state) => Decision::Update(mark(state)),
            other => other,
        })
    }
}

/// Two marking rules, the second taken up at the first batch boundary after `swap` is set.
#[derive(Debug)]
struct Swapping {
    rules: [Marking; 2],
    serving: usize,
    swap: Arc<AtomicBool>,
}

impl Rule for Swapping {
    fn info(&self) -> &RuleInfo {
        &self.rules[self.serving].info
    }

    fn swap_pending(&self) -> bool {
        self.swap.load(Ordering::SeqCst) && self.serving == 0
    }

    fn before_batch(&mut self) {
        if self.swap.load(Ordering::SeqCst) {
            self.serving = 1;
        }
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        self.rules[self.serving].decide(current, incoming)
    }
}

/// The real Redis store, whose first write call asks for a rule swap, waits (so the next
/// batch arrives meanwhile) and fails without writing: a write cut by a connection reset.
struct CutOnce {
    inner: RedisStore,
    swap: Arc<AtomicBool>,
    cut: AtomicBool,
}

impl Store for CutOnce {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
        self.inner.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        if !self.cut.swap(true, Ordering::SeqCst) {
            self.swap.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Err(StoreError::Unavailable(
                "connection reset by the test".into(),
            ));
        }
        self.inner.write(writes).await
    }
}

/// Batches handed out from a list, then the end.
struct Batches(std::collections::VecDeque<Vec<Message>>);

impl Source for Batches {
    async fn next_batch(&mut self, _max: usize) -> Result<Vec<Message>, SourceError> {
        Ok(self.0.pop_front().unwrap_or_default())
    }

    async fn ack(&mut self, _batch: &[Message]) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Item 6: a swap requested while a batch's write fails was taken up by the next batch before
/// the failed one was repaired, so the repair decided with the new rule and stamped the old.
/// Each state must be decided and stamped by one rule: the stamp names the rule whose mark
/// the state carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_a_swap_during_a_repair_leaves_every_state_stamped_by_the_rule_that_decided_it() {
    let redis = TestStore::standalone("wedge-swap-repair").await;
    let swap = Arc::new(AtomicBool::new(false));
    let rule = Swapping {
        rules: [Marking::new("1.0.0-a"), Marking::new("2.0.0-b")],
        serving: 0,
        swap: Arc::clone(&swap),
    };
    let store = CutOnce {
        inner: redis.store.clone(),
        swap: Arc::clone(&swap),
        cut: AtomicBool::new(false),
    };
    let config = PipelineConfig {
        backoff_ms: 1,
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::new(rule, store, MemoryDeadLetters::new(), config);
    let first: Vec<Event> = (0..20)
        .map(|n| event(&format!("a-{n}"), "created", 1))
        .collect();
    let second: Vec<Event> = (0..20)
        .map(|n| event(&format!("b-{n}"), "created", 1))
        .collect();
    let mut source = Batches(
        [event_messages(&first), event_messages(&second)]
            .into_iter()
            .collect(),
    );
    tokio::time::timeout(
        Duration::from_secs(60),
        pipeline.run(&mut source, converge::shutdown::Shutdown::never()),
    )
    .await
    .expect("the run ends with its source")
    .expect("runs");
    assert!(swap.load(Ordering::SeqCst), "the write was cut");

    let keys: Vec<String> = first.iter().chain(&second).map(|e| e.key.clone()).collect();
    let stored = redis.store.inspect(&keys).await.expect("inspects");
    for (key, stored) in keys.iter().zip(stored) {
        let stored = stored.unwrap_or_else(|| panic!("{key} is stored"));
        let decided_by = stored
            .state
            .payload
            .split('"')
            .nth(3)
            .unwrap_or_default()
            .to_owned();
        assert!(
            stored.rule.ends_with(&format!("@{decided_by}")),
            "{key}: stamped {} but decided by {decided_by}",
            stored.rule
        );
    }
}

/// The real Redis store, whose writes land but whose answers are lost while `lose` is set: a
/// connection reset between the write and its reply.
struct LostAnswers {
    inner: RedisStore,
    lose: AtomicBool,
}

impl Store for LostAnswers {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
        self.inner.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let outcomes = self.inner.write(writes).await?;
        if self.lose.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("reply lost by the test".into()));
        }
        Ok(outcomes)
    }
}

/// Item 7: a batch whose write answers were lost was decided again over its own landed
/// states, and those re-decisions counted as fresh `ignore`s — so one Redis reset could make a
/// healthy rule on probation look silent and roll it back. Only applied decisions count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_a_store_fault_under_a_rule_on_probation_does_not_roll_it_back() {
    let read = |rule: &str| std::fs::read(build::rule(rule)).expect("rule component");
    let gates = Gates::new(
        RuleEngine::new(EngineLimits::default()).expect("engine"),
        GateConfig::default(),
    );
    let initial = gates
        .admit(&read("order-status"), None)
        .expect("order-status passes its gates");
    let metrics = Arc::new(Metrics::new());
    let control = Arc::new(
        RuleControl::new(gates, initial, &Origin::Admin, Arc::clone(&metrics)).with_auto_rollback(
            Some(AutoRollbackConfig {
                max_ignore_share_increase: 0.2,
                min_decisions: 100,
            }),
        ),
    );
    let redis = TestStore::standalone("wedge-probation").await;
    let store = LostAnswers {
        inner: redis.store.clone(),
        lose: AtomicBool::new(false),
    };
    let config = PipelineConfig {
        backoff_ms: 1,
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::new(control.rule(), store, MemoryDeadLetters::new(), config)
        .with_metrics(Arc::clone(&metrics));
    let inserts = |prefix: &str| -> Vec<Event> {
        (0..150)
            .map(|n| event(&format!("{prefix}-{n}"), "created", 1))
            .collect()
    };

    // The serving version's share: no ignores.
    let baseline = inserts("baseline");
    pipeline
        .process(&event_messages(&baseline))
        .await
        .expect("baseline");
    let version_rank = control
        .offer(&read("version-rank"), None, &Origin::Admin, Role::Active)
        .expect("version-rank passes its gates");

    // On probation, every write's answer is lost: each batch is repaired.
    pipeline.store().lose.store(true, Ordering::SeqCst);
    let probed = inserts("probation");
    pipeline
        .process(&event_messages(&probed))
        .await
        .expect("repaired");
    let status = control.status();
    assert_eq!(
        status.active.rule, version_rank.rule,
        "a healthy rule on probation was rolled back: {:?}",
        status.last_swap
    );
    let share = status.active.ignores.expect("counted");
    assert_eq!(
        (share.decisions, share.ignores),
        (150, 0),
        "one applied decision per event"
    );
    let keys: Vec<String> = probed.iter().map(|e| e.key.clone()).collect();
    let stored = stored_states(&redis.store, &keys).await;
    assert_eq!(stored.len(), probed.len(), "every write landed");
}

/// Item 8: Redis-stream dead letters kept whole bodies (a 10 MB message made a 10 MB entry)
/// and were bounded by count only, so a flood of large bad messages could fill the store's
/// Redis. Bodies are cut as the Kafka sink cuts them, and the stream keeps about `max_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_stream_dead_letters_are_cut_and_kept_within_their_byte_budget() {
    let stream = format!("{}dead-letters", unique_prefix("wedge-stream"));
    let sink = RedisDeadLetters::connect(&redis_url(), &stream)
        .await
        .expect("connects")
        .with_max_len(1_000_000)
        .with_max_bytes(1 << 20)
        .with_max_body_bytes(16 << 10);
    let body = vec![b'x'; 200 << 10];
    let letters: Vec<DeadLetter> = (0..600)
        .map(|n| DeadLetter {
            kind: DeadLetterKind::Undecodable,
            reason: "not JSON".to_owned(),
            position: Position::Line { line: n },
            key: Some(format!("key-{n}").into_bytes()),
            bytes: body.clone(),
            rule: "order-status@0.1.0".to_owned(),
        })
        .collect();
    for chunk in letters.chunks(50) {
        sink.send(chunk).await.expect("sent");
    }
    let mut redis = redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .expect("XLEN");
    let last: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .expect("XREVRANGE");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .expect("DEL");
    let (_, fields) = last.into_iter().next().expect("an entry");
    assert_eq!(fields["bytes"].len(), 16 << 10, "the body is cut");
    assert_eq!(
        fields["truncated_from"],
        (200 << 10).to_string().into_bytes()
    );
    // About 1 MiB of 16 KiB entries is some 60; `MAXLEN ~` trims whole nodes of 100.
    assert!(length <= 200, "{length} entries kept of 600 sent");
}

/// A supervisor's SIGTERM while `serve` is still starting (its rule being gated, before any
/// connection) is a clean stop: exit 0 without serving. Before, the handler was installed at
/// the first wait, so a signal during the start took the default action and killed the
/// process, which a supervisor records as a crash (and a test as a failed stop).
#[test]
fn wedge_sigterm_while_serve_starts_is_a_clean_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = unique_prefix("sigterm-start");
    // Nobody listens on the store's port: whatever the signal's timing, nothing is written.
    let closed = converge_tests::services::free_loopback_addr();
    let mut settings = converge_tests::config::stdin_serve(
        config::redis_store(&format!("redis://{closed}"), &prefix),
        &prefix,
        None,
    );
    // Gating at this many histories takes seconds: the signal lands inside it.
    settings.rule.gates.check_histories = 4_000;
    let config = config::write(dir.path(), &settings);
    let log = dir.path().join("serve.log");
    let server = converge_tests::process::Server::start(&config, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !logged().contains("starting") {
        assert!(
            std::time::Instant::now() < deadline,
            "serve never logged its start:\n{}",
            logged()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !logged().contains("rule loaded"),
        "the rule was gated before the signal could be sent; the test did not arrange its \
         trigger:\n{}",
        logged()
    );
    server.terminate();
    let text = logged();
    assert!(text.contains("shutdown requested"), "{text}");
    assert!(!text.contains("serving"), "{text}");
}
