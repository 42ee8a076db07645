//! T2 and friends against a real Redis (and a real Redis Cluster): the compare-and-set script,
//! many concurrent writers on the same keys, script-cache loss, cluster convergence.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use converge::dead_letter::MemoryDeadLetters;
use converge::entity::State;
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::{CompiledRule, EngineLimits, RuleEngine};
use converge::store::{Current, Store, Write, WriteOutcome};
use converge_tests::services::TestStore;
use converge_tests::{build, event_messages, orders, stored_states};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

fn compiled_rule() -> CompiledRule {
    RuleEngine::new(EngineLimits::default())
        .expect("engine starts")
        .compile_file(&build::rule("order-status"))
        .expect("rule loads")
}

fn state(key: &str, status: &str, version: u64) -> State {
    State {
        key: key.to_owned(),
        status: status.to_owned(),
        version,
        timestamp_ms: 1,
        payload: r#"{"table":1}"#.to_owned(),
    }
}

/// A write over `expected_revision`. Writers are numbered after the revision they store, so the
/// write of revision r has writer r and a write over it expects writer r.
fn write(key: &str, expected_revision: u64, status: &str, version: u64) -> Write {
    Write {
        key: key.to_owned(),
        expected_revision,
        expected_writer: expected_revision,
        writer: expected_revision + 1,
        state: state(key, status, version),
        rule: "order-status@0.1.0".to_owned(),
        position: "orders[0]@1".to_owned(),
    }
}

#[tokio::test]
async fn compare_and_set_writes_only_over_the_expected_revision() {
    let test = TestStore::standalone("cas").await;
    let store = &test.store;
    let outcomes = store
        .write(&[write("o-1", 0, "created", 1), write("o-2", 0, "paid", 2)])
        .await
        .expect("writes");
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written { revision: 1 },
            WriteOutcome::Written { revision: 1 }
        ]
    );
    // A second writer that also saw "absent", and one that saw a stale revision, both lose.
    let outcomes = store
        .write(&[
            write("o-1", 0, "paid", 2),
            write("o-2", 7, "refunded", 4),
            write("o-1", 1, "completed", 3),
        ])
        .await
        .expect("writes");
    // A refused write answers what is stored, so the key can be decided again without a load.
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Conflict {
                current: Some(Current {
                    state: state("o-1", "created", 1),
                    revision: 1,
                    writer: 1,
                })
            },
            WriteOutcome::Conflict {
                current: Some(Current {
                    state: state("o-2", "paid", 2),
                    revision: 1,
                    writer: 1,
                })
            },
            WriteOutcome::Written { revision: 2 }
        ]
    );
    let loaded = store
        .load(&["o-1".to_owned(), "o-2".to_owned(), "absent".to_owned()])
        .await
        .expect("loads");
    let first = loaded[0].as_ref().expect("o-1 stored");
    assert_eq!(first.state, state("o-1", "completed", 3));
    assert_eq!(first.revision, 2);
    assert_eq!(first.writer, 2);
    assert_eq!(
        loaded[1].as_ref().map(|s| s.state.status.as_str()),
        Some("paid")
    );
    assert_eq!(loaded[2], None);
    let inspected = store
        .inspect(&["o-1".to_owned(), "absent".to_owned()])
        .await
        .expect("inspects");
    let first = inspected[0].as_ref().expect("o-1 stored");
    assert_eq!(first.state, state("o-1", "completed", 3));
    assert_eq!(first.rule, "order-status@0.1.0");
    assert_eq!(first.position, "orders[0]@1");
    assert_eq!(inspected[1], None);
    // A write to an absent key that expected a state answers that the key is absent.
    let outcomes = store
        .write(&[write("never-written", 3, "paid", 2)])
        .await
        .expect("writes");
    assert_eq!(outcomes, [WriteOutcome::Conflict { current: None }]);
}

#[tokio::test]
async fn a_write_fenced_on_another_writer_is_refused_even_when_the_revision_matches() {
    let test = TestStore::standalone("fence").await;
    let store = &test.store;
    store
        .write(&[write("o-1", 0, "created", 1)])
        .await
        .expect("writes");
    // Decided on a write of our own that lost the race: same revision, another writer.
    let fenced = Write {
        expected_writer: 99,
        ..write("o-1", 1, "paid", 2)
    };
    let outcomes = store.write(&[fenced]).await.expect("writes");
    assert!(
        matches!(&outcomes[0], WriteOutcome::Conflict { current: Some(c) } if c.writer == 1),
        "{outcomes:?}"
    );
    let loaded = store.load(&["o-1".to_owned()]).await.expect("loads");
    assert_eq!(
        loaded[0].as_ref().map(|c| c.state.status.as_str()),
        Some("created")
    );
}

#[tokio::test]
async fn writes_survive_a_flushed_script_cache() {
    let test = TestStore::standalone("noscript").await;
    let store = &test.store;
    store
        .write(&[write("o-1", 0, "created", 1)])
        .await
        .expect("writes");
    // What a restart or failover does to the script cache.
    let client = redis::Client::open(converge_tests::services::redis_url()).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .expect("flushes");
    let outcomes = store
        .write(&[write("o-1", 1, "paid", 2), write("o-1", 1, "completed", 3)])
        .await
        .expect("writes after the flush");
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written { revision: 2 },
            WriteOutcome::Conflict {
                current: Some(Current {
                    state: state("o-1", "paid", 2),
                    revision: 2,
                    writer: 2,
                })
            }
        ]
    );
}

/// T2: writers race on the same keys, each delivering the whole stream in its own order and
/// batching; a watcher keeps reading. No key is ever seen moving backward, and every key ends
/// on its order's last step.
async fn concurrent_writers_converge(test: TestStore) {
    const WRITERS: u64 = 4;
    let stream = orders::generate("order-", 300, 30, 42);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let compiled = compiled_rule();
    let done = Arc::new(AtomicBool::new(false));

    let watcher = {
        let store = test.store.clone();
        let keys = keys.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            let mut reads = 0;
            while !done.load(Ordering::Acquire) {
                for stored in store
                    .load(&keys)
                    .await
                    .expect("watcher loads")
                    .into_iter()
                    .flatten()
                {
                    let now = (stored.revision, stored.state.version);
                    let before = seen.insert(stored.state.key.clone(), now).unwrap_or((0, 0));
                    assert!(
                        now.0 >= before.0 && now.1 >= before.1,
                        "{} moved backward: (revision, version) {before:?} -> {now:?}",
                        stored.state.key
                    );
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            reads
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let mut events = stream.events.clone();
            events.shuffle(&mut StdRng::seed_from_u64(writer));
            let store = test.store.clone();
            let rule = compiled.instance();
            // Each writer is a consumer with its own runtime, as separate processes would be.
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let mut pipeline = Pipeline::new(
                        rule,
                        store,
                        MemoryDeadLetters::new(),
                        PipelineConfig::default(),
                    );
                    for batch in event_messages(&events).chunks(8 + writer as usize * 13) {
                        pipeline.process(batch).await.expect("batch processed");
                    }
                    pipeline.stats().clone()
                })
            })
        })
        .collect();
    let stats: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("writer finished"))
        .collect();
    done.store(true, Ordering::Release);
    let reads = watcher.await.expect("watcher finished");

    assert!(reads > 0);
    assert_eq!(stored_states(&test.store, &keys).await, stream.expected);
    let written: u64 = stats.iter().map(|s| s.writes).sum();
    assert!(written >= keys.len() as u64);
    assert!(stats.iter().all(|s| s.dead_letters.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_concurrent_writers_on_standalone_redis() {
    concurrent_writers_converge(TestStore::standalone("t2").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_concurrent_writers_on_redis_cluster() {
    concurrent_writers_converge(TestStore::cluster("t2-cluster").await).await;
}

#[tokio::test]
async fn cleanup_removes_only_the_test_prefix() {
    let test = TestStore::standalone("cleanup").await;
    test.store
        .write(&[write("a", 0, "paid", 1), write("b", 0, "paid", 1)])
        .await
        .expect("writes");
    let other = TestStore::standalone("cleanup-other").await;
    other
        .store
        .write(&[write("a", 0, "paid", 1)])
        .await
        .expect("writes");
    assert_eq!(test.store.delete_all().await.expect("deletes"), 2);
    assert_eq!(
        other
            .store
            .load(&["a".to_owned()])
            .await
            .expect("loads")
            .len(),
        1
    );
    assert!(other.store.load(&["a".to_owned()]).await.expect("loads")[0].is_some());
}

/// A value at a state key that converge cannot read (a field that does not parse, a value of
/// another type, bytes that are not UTF-8) fails a load naming each such key, with what is
/// wrong and an excerpt of what is stored; a compare-and-set over it is refused the same way.
/// Retrying would not change it, so it must not look like an outage.
#[tokio::test]
async fn unreadable_states_are_named_with_an_excerpt_and_are_not_an_outage() {
    let test = TestStore::standalone("unreadable").await;
    let store = &test.store;
    store
        .write(&[write("fine", 0, "created", 1)])
        .await
        .expect("writes");
    let client = redis::Client::open(converge_tests::services::redis_url()).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let prefix = store.prefix().to_owned();
    redis::pipe()
        .cmd("HSET")
        .arg(format!("{prefix}garbled"))
        .arg(&[
            "rev",
            "1",
            "status",
            "paid",
            "version",
            "seven",
            "timestamp_ms",
            "1",
        ])
        .arg(&["payload", "{}"])
        .cmd("SET")
        .arg(format!("{prefix}a-string"))
        .arg("left here by another program")
        .cmd("HSET")
        .arg(format!("{prefix}binary"))
        .arg(&["rev", "1", "status"])
        .arg(b"\xff\xfe".as_slice())
        .arg(&["version", "1", "timestamp_ms", "1", "payload", "{}"])
        .exec_async(&mut raw)
        .await
        .expect("garbage written");

    let keys: Vec<String> = ["fine", "garbled", "a-string", "binary"]
        .map(str::to_owned)
        .to_vec();
    let error = store
        .load(&keys)
        .await
        .expect_err("unreadable states fail the load");
    assert!(!error.is_transient(), "{error}");
    let converge::store::StoreError::Unreadable(found) = error else {
        panic!("expected Unreadable, got {error}");
    };
    let by_key: BTreeMap<&str, _> = found.iter().map(|u| (u.key.as_str(), u)).collect();
    assert_eq!(by_key.len(), 3, "{found:?}");
    assert!(by_key["garbled"].why.contains("version"), "{found:?}");
    assert!(by_key["garbled"].stored.contains("seven"), "{found:?}");
    assert!(by_key["a-string"].why.contains("string"), "{found:?}");
    assert!(
        by_key["a-string"]
            .stored
            .contains("left here by another program"),
        "{found:?}"
    );
    assert!(by_key["binary"].why.contains("status"), "{found:?}");
    // The readable key alone loads.
    assert_eq!(stored_states(store, &keys[..1]).await.len(), 1);

    // A write over a garbled state is refused as unreadable, not applied.
    let error = store
        .write(&[write("garbled", 1, "paid", 8)])
        .await
        .expect_err("refused");
    assert!(
        matches!(error, converge::store::StoreError::Unreadable(_)),
        "{error}"
    );
}
