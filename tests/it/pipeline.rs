//! The embedded pipeline: shuffled and duplicated events converge; bad input and rule faults
//! are dead-lettered with a reason while every other key flows; compare-and-set conflicts are
//! decided again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use converge::dead_letter::{DeadLetterKind, MemoryDeadLetters};
use converge::entity::{DecisionKind, Event, State};
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::Rule as _;
use converge::rule::{EngineLimits, RuleEngine, WasmRule};
use converge::source::JsonLinesSource;
use converge::source::{Message, Position};
use converge::store::{Current, MemoryStore, Store, StoreError, Write, WriteOutcome};
use converge::{Audit, Unconverged};
use converge_tests::{NativeOrderRule, build, line_messages, orders};

fn rule(name: &str) -> WasmRule {
    RuleEngine::new(EngineLimits {
        memory_cap_bytes: 16 << 20,
        deadline: Duration::from_millis(50),
        ..EngineLimits::default()
    })
    .expect("engine starts")
    .compile_file(&build::rule(name))
    .expect("rule loads")
    .instance()
}

fn json_line(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("serialises")
}

fn stored_states(store: &MemoryStore) -> BTreeMap<String, State> {
    store
        .snapshot()
        .into_iter()
        .map(|stored| (stored.state.key.clone(), stored.state))
        .collect()
}

/// The writes of `events` in batches of `batch_size`, the order-status rule deciding: one per
/// key each batch changes (coalesced), and — were each change written on its own — one per
/// event that changes its key.
fn writes(events: &[Event], batch_size: usize) -> (u64, u64) {
    let mut rule = NativeOrderRule::default();
    let mut states: HashMap<String, State> = HashMap::new();
    let (mut coalesced, mut per_change) = (0, 0);
    for batch in events.chunks(batch_size) {
        let mut changed: HashSet<&str> = HashSet::new();
        for event in batch {
            let decision = rule.decide(states.get(&event.key), event).expect("decides");
            if let Some(next) = decision.stored_state() {
                states.insert(event.key.clone(), next.clone());
                changed.insert(&event.key);
                per_change += 1;
            }
        }
        coalesced += changed.len() as u64;
    }
    (coalesced, per_change)
}

async fn run_batches<S: Store>(
    pipeline: &mut Pipeline<WasmRule, S, MemoryDeadLetters>,
    messages: &[Message],
    batch_size: usize,
) {
    for batch in messages.chunks(batch_size) {
        pipeline.process(batch).await.expect("batch processed");
    }
}

/// Runs `lines` through the pipeline as `converge run` does (batches of the pipeline's
/// `batch_size`, the source audited), then verifies every key converged.
async fn run_audited(
    pipeline: &mut Pipeline<WasmRule, MemoryStore, MemoryDeadLetters>,
    lines: &[Vec<u8>],
    verifier: &mut WasmRule,
) -> Vec<Unconverged> {
    let text = lines.join(&b'\n');
    let mut audit = Audit::new(
        JsonLinesSource::new(text.as_slice()),
        pipeline.config().mapping.clone(),
    );
    pipeline
        .run(&mut audit, converge::shutdown::Shutdown::never())
        .await
        .expect("the input is processed");
    audit
        .verify(verifier, pipeline.store())
        .await
        .expect("verifies")
}

#[tokio::test]
async fn shuffled_duplicated_stream_converges_to_each_orders_last_step() {
    let stream = orders::generate("t1-", 400, 30, 11);
    let lines: Vec<Vec<u8>> = stream.events.iter().map(json_line).collect();
    let mut pipeline = Pipeline::new(
        rule("order-status"),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig {
            batch_size: 97,
            ..PipelineConfig::default()
        },
    );
    let unconverged = run_audited(&mut pipeline, &lines, &mut rule("order-status")).await;

    assert_eq!(stored_states(pipeline.store()), stream.expected);
    let stats = pipeline.stats().clone();
    assert_eq!(stats.decisions.get(&DecisionKind::Insert), Some(&400));
    assert_eq!(stats.messages, stream.events.len() as u64);
    // Coalescing: a key is written at most once per batch, and only when the batch changed it.
    let (coalesced, per_change) = writes(&stream.events, 97);
    assert!(
        per_change > coalesced,
        "the stream must change some key twice within a batch ({per_change} changes)"
    );
    assert_eq!(
        stats.writes, coalesced,
        "one write per key changed per batch (writing every change would be {per_change})"
    );
    assert!(pipeline.dead_letters().letters().is_empty());
    assert!(unconverged.is_empty(), "{unconverged:?}");
    // Every stored state carries the stamp of the rule that wrote it.
    assert!(
        pipeline
            .store()
            .snapshot()
            .iter()
            .all(|stored| stored.rule == "order-status@0.1.0")
    );
}

#[tokio::test]
async fn the_same_events_in_another_order_store_the_same_states() {
    let stream = orders::generate("order-", 200, 25, 5);
    let mut reversed = stream.events.clone();
    reversed.reverse();
    let mut finals = Vec::new();
    for (events, batch_size) in [(&stream.events, 1), (&reversed, 500)] {
        let lines: Vec<Vec<u8>> = events.iter().map(json_line).collect();
        let mut pipeline = Pipeline::new(
            rule("order-status"),
            MemoryStore::new(),
            MemoryDeadLetters::new(),
            PipelineConfig::default(),
        );
        run_batches(&mut pipeline, &line_messages(&lines), batch_size).await;
        finals.push(stored_states(pipeline.store()));
    }
    assert_eq!(finals[0], finals[1]);
    assert_eq!(finals[0], stream.expected);
}

#[tokio::test]
async fn last_write_wins_does_not_converge_and_verify_says_so() {
    let stream = orders::generate("lww-", 100, 0, 3);
    let lines: Vec<Vec<u8>> = stream.events.iter().map(json_line).collect();
    let mut pipeline = Pipeline::new(
        rule("last-write-wins"),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig {
            batch_size: 64,
            ..PipelineConfig::default()
        },
    );
    let unconverged = run_audited(&mut pipeline, &lines, &mut rule("last-write-wins")).await;
    assert_ne!(stored_states(pipeline.store()), stream.expected);
    assert!(!unconverged.is_empty());
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_a_reason_and_good_events_flow() {
    let good = |key: &str, status: &str| {
        format!(r#"{{"key":"{key}","status":"{status}","version":1}}"#).into_bytes()
    };
    let deep = format!(
        r#"{{"key":"deep","status":"paid","payload":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let huge = format!(
        r#"{{"key":"huge","status":"paid","payload":"{}"}}"#,
        "x".repeat(10 << 20)
    );
    let lines: Vec<Vec<u8>> = vec![
        good("order-1", "created"),
        b"{\"key\":\"order-x\",\"status\":".to_vec(),
        b"{\"key\":\"order-\xff\",\"status\":\"paid\"}".to_vec(),
        br#"{"status":"paid"}"#.to_vec(),
        br#"{"key":"","status":"paid"}"#.to_vec(),
        br#"{"key":"order-9","status":"shipped"}"#.to_vec(),
        deep.into_bytes(),
        huge.into_bytes(),
        br#"{"key":"order-7"}"#.to_vec(),
        good("order-2", "paid"),
    ];
    let mut batch = line_messages(&lines);
    batch.push(Message {
        position: Position::Line { line: 11 },
        key: Some(b"order-3".to_vec()),
        payload: None,
        produced_at_ms: None,
        lost: None,
    });
    let mut pipeline = Pipeline::new(
        rule("order-status"),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    );
    pipeline.process(&batch).await.expect("batch processed");

    let keys: Vec<String> = stored_states(pipeline.store()).into_keys().collect();
    assert_eq!(keys, ["order-1", "order-2"]);
    let letters = pipeline.dead_letters().letters();
    let by_line: BTreeMap<u64, (DeadLetterKind, String)> = letters
        .iter()
        .map(|letter| match &letter.position {
            Position::Line { line } => (*line, (letter.kind, letter.reason.clone())),
            other => panic!("unexpected position {other}"),
        })
        .collect();
    let expected: [(u64, DeadLetterKind, &str); 9] = [
        (2, DeadLetterKind::Undecodable, "malformed JSON"),
        (3, DeadLetterKind::Undecodable, "UTF-8"),
        (4, DeadLetterKind::Undecodable, "missing key"),
        (5, DeadLetterKind::Undecodable, "empty key"),
        (6, DeadLetterKind::Rejected, "unknown status"),
        (7, DeadLetterKind::Undecodable, "recursion limit"),
        (8, DeadLetterKind::Undecodable, "exceeds the limit"),
        (9, DeadLetterKind::NotEnriched, "id-only"),
        (11, DeadLetterKind::Undecodable, "tombstone"),
    ];
    assert_eq!(by_line.len(), expected.len(), "{by_line:#?}");
    for (line, kind, reason) in expected {
        let (got_kind, got_reason) = &by_line[&line];
        assert_eq!(*got_kind, kind, "line {line}: {got_reason}");
        assert!(got_reason.contains(reason), "line {line}: {got_reason}");
    }
    // The original bytes travel with the dead letter.
    let unknown = letters
        .iter()
        .find(|l| l.kind == DeadLetterKind::Rejected)
        .expect("rejected");
    assert_eq!(unknown.bytes, lines[5]);
    assert_eq!(unknown.rule, "order-status@0.1.0");
}

#[tokio::test]
async fn rule_faults_are_dead_lettered_and_other_keys_keep_flowing() {
    let event = |key: &str| Event {
        key: key.to_owned(),
        status: "paid".to_owned(),
        version: 1,
        timestamp_ms: 1,
        payload: "null".to_owned(),
    };
    let keys = [
        "order-1", "loop-1", "order-2", "bomb-1", "trap-1", "order-3",
    ];
    let lines: Vec<Vec<u8>> = keys.iter().map(|key| json_line(&event(key))).collect();
    let mut pipeline = Pipeline::new(
        rule("faulty"),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    );
    pipeline
        .process(&line_messages(&lines))
        .await
        .expect("batch processed");

    let stored: Vec<String> = stored_states(pipeline.store()).into_keys().collect();
    assert_eq!(stored, ["order-1", "order-2", "order-3"]);
    let letters = pipeline.dead_letters().letters();
    let reasons: BTreeMap<u64, String> = letters
        .iter()
        .map(|letter| match (&letter.position, letter.kind) {
            (Position::Line { line }, DeadLetterKind::RuleFailed) => (*line, letter.reason.clone()),
            other => panic!("unexpected dead letter {other:?}"),
        })
        .collect();
    assert!(reasons[&2].contains("deadline"), "{reasons:?}");
    assert!(reasons[&4].contains("memory"), "{reasons:?}");
    assert!(reasons[&5].contains("trapped"), "{reasons:?}");
    assert_eq!(reasons.len(), 3);
}

/// A store that lets a competitor write a newer state of `key` between the pipeline's load and
/// its write, the race two consumers on one key run.
struct RacingStore {
    inner: MemoryStore,
    competitor: std::sync::Mutex<Option<Write>>,
}

impl Store for RacingStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
        self.inner.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let competitor = self.competitor.lock().expect("not poisoned").take();
        if let Some(competitor) = competitor {
            let outcome = self.inner.write(std::slice::from_ref(&competitor)).await?;
            assert!(matches!(outcome[0], WriteOutcome::Written { .. }));
        }
        self.inner.write(writes).await
    }
}

#[tokio::test]
async fn a_lost_compare_and_set_is_decided_again_and_never_moves_backward() {
    let state = |status: &str, version: u64| State {
        key: "order-1".to_owned(),
        status: status.to_owned(),
        version,
        timestamp_ms: 0,
        payload: "null".to_owned(),
    };
    let store = RacingStore {
        inner: MemoryStore::new(),
        competitor: std::sync::Mutex::new(Some(Write {
            key: "order-1".to_owned(),
            expected_revision: 0,
            expected_writer: 0,
            writer: 42,
            state: state("refunded", 4),
            rule: "competitor".to_owned(),
            position: "elsewhere".to_owned(),
        })),
    };
    let mut pipeline = Pipeline::new(
        rule("order-status"),
        store,
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    );
    let lines = vec![
        json_line(&state("paid", 2)),
        json_line(&state("created", 1)),
    ];
    pipeline
        .process(&line_messages(&lines))
        .await
        .expect("batch processed");

    let stored = pipeline.store().inner.snapshot();
    assert_eq!(stored.len(), 1);
    // The competitor's newer state survives: the pipeline's paid (based on nothing) lost the
    // compare-and-set, was decided again over refunded, and ignored.
    assert_eq!(stored[0].state, state("refunded", 4));
    assert_eq!(stored[0].revision, 1);
    assert_eq!(pipeline.stats().conflicts, 1);
    assert_eq!(
        pipeline.stats().decisions.get(&DecisionKind::Ignore),
        Some(&2)
    );
}

#[tokio::test]
async fn memory_store_compare_and_set() {
    let store = MemoryStore::new();
    let current = |revision: u64, status: &str| Current {
        state: State {
            key: "k".to_owned(),
            status: status.to_owned(),
            version: 0,
            timestamp_ms: 0,
            payload: "null".to_owned(),
        },
        revision,
        writer: revision,
    };
    let write = |expected_revision: u64, status: &str| Write {
        key: "k".to_owned(),
        expected_revision,
        expected_writer: expected_revision,
        writer: expected_revision + 1,
        state: State {
            key: "k".to_owned(),
            status: status.to_owned(),
            version: 0,
            timestamp_ms: 0,
            payload: "null".to_owned(),
        },
        rule: "r@1".to_owned(),
        position: "line 1".to_owned(),
    };
    let outcomes = store
        .write(&[
            write(0, "created"),
            write(0, "paid"),
            write(1, "paid"),
            write(1, "completed"),
        ])
        .await
        .expect("writes");
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written { revision: 1 },
            WriteOutcome::Conflict {
                current: Some(current(1, "created"))
            },
            WriteOutcome::Written { revision: 2 },
            WriteOutcome::Conflict {
                current: Some(current(2, "paid"))
            },
        ]
    );
    let loaded = store
        .load(&["k".to_owned(), "absent".to_owned()])
        .await
        .expect("loads");
    assert_eq!(
        loaded[0].as_ref().map(|s| s.state.status.as_str()),
        Some("paid")
    );
    assert_eq!(loaded[1], None);
}
