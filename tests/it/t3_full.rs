//! T3 (full) and the watcher it runs under.

use std::time::Duration;

use converge::entity::State;
use converge::store::{Store, Write, WriteOutcome, new_writer_id};
use converge_tests::services::TestStore;
use converge_tests::watch::Watcher;
use futures::FutureExt as _;

fn order(key: &str, status: &str, version: u64) -> State {
    State {
        key: key.to_owned(),
        status: status.to_owned(),
        version,
        timestamp_ms: 1_700_000_000_000 + version,
        payload: "{}".to_owned(),
    }
}

/// Writes `state` over revision `expected` (0: absent) and its writer, whatever the rule would
/// say: the compare-and-set checks revisions, not newness. Answers the new revision and writer.
async fn force(store: &impl Store, state: State, expected: (u64, u64)) -> (u64, u64) {
    let writer = new_writer_id();
    let outcome = store
        .write(&[Write {
            key: state.key.clone(),
            expected_revision: expected.0,
            expected_writer: expected.1,
            writer,
            state,
            rule: "test".to_owned(),
            position: "test".to_owned(),
        }])
        .await
        .expect("Redis answers");
    match outcome[..] {
        [WriteOutcome::Written { revision }] => (revision, writer),
        ref other => panic!("the write did not land: {other:?}"),
    }
}

/// The watcher itself: a key written back to an older state between two samples fails
/// `finish`, naming the key and both states; a key moving forward does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_full_watcher_catches_a_key_moving_backward() {
    let redis = TestStore::standalone("t3-full-watcher").await;
    let keys = vec!["order-back".to_owned(), "order-forward".to_owned()];
    let back = force(&redis.store, order("order-back", "paid", 2), (0, 0)).await;
    let forward = force(&redis.store, order("order-forward", "created", 1), (0, 0)).await;
    let watcher = Watcher::start(redis.store.clone(), keys, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    force(&redis.store, order("order-back", "created", 1), back).await;
    force(
        &redis.store,
        order("order-forward", "completed", 3),
        forward,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let failure = std::panic::AssertUnwindSafe(watcher.finish())
        .catch_unwind()
        .await
        .expect_err("the watcher must fail on a key that moved backward");
    let message = failure
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.starts_with("1 time(s) a key moved backward")
            && message.contains("order-back moved backward")
            && message.contains("paid v2")
            && message.contains("-> created v1"),
        "{message}"
    );

    // Unchanged or forward only: it passes, and counts its samples.
    let keys = vec!["order-back".to_owned(), "order-forward".to_owned()];
    let watcher = Watcher::start(redis.store.clone(), keys, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let current = redis
        .store
        .load(&["order-back".to_owned()])
        .await
        .expect("Redis answers")
        .remove(0)
        .expect("stored");
    force(
        &redis.store,
        order("order-back", "refunded", 4),
        (current.revision, current.writer),
    )
    .await;
    let samples = watcher.finish().await;
    assert!(samples >= 5, "only {samples} samples in 300 ms");
}
