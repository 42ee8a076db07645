//! T3 (basic): Kafka -> rule -> Redis with two `converge serve` processes in one consumer group,
//! one killed with SIGKILL mid-stream and restarted. Afterwards every key holds its order's
//! final state and the group's committed offsets reach the end of every partition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use converge_tests::served::{self, Served};
use converge_tests::{orders, stored_states};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_two_consumers_one_killed_and_restarted_converge() {
    two_consumers_one_killed(Served::new("t3", 6).await).await;
}

/// T3 again with the states on the Redis Cluster: keys spread over three masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_on_redis_cluster_converges() {
    two_consumers_one_killed(Served::on_cluster("t3-cluster", 6).await).await;
}

async fn two_consumers_one_killed(mut served: Served) {
    let stream = orders::generate("order-", 1_500, 30, 3);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let (first_half, second_half) = stream.events.split_at(stream.events.len() / 2);
    served.topic.produce(first_half).await;

    let mut first = served.start("first.log");
    let second = served.start("second.log");

    // Kill the first consumer once the group is writing, while the rest is still arriving.
    let started = Instant::now();
    while stored_states(&served.redis.store, &keys).await.len() < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress; see {}",
            served.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let producing = served.topic.produce(second_half);
    first.kill();
    producing.await;
    let restarted = served.start("restarted.log");

    let positions = served
        .converged(&stream.expected, Duration::from_secs(120))
        .await;
    assert_eq!(served::messages(&positions), stream.events.len());

    second.terminate();
    restarted.terminate();
    // Nothing in this stream is bad: nothing may have been dead-lettered.
    served.dead_letters.assert_empty().await;
}

/// T8 over Kafka: each bad message lands on the dead-letter topic with its original bytes and
/// its reason in a header; the good ones are stored and the partition does not stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_go_to_the_dead_letter_topic_and_the_partition_moves_on() {
    let mut served = Served::new("t8", 1).await.with_admin();
    let (topic, admin) = (Arc::clone(&served.topic), served.admin());

    let bad: Vec<(Vec<u8>, &str)> = vec![
        (
            b"{\"key\":\"order-x\",\"status\":".to_vec(),
            "malformed JSON",
        ),
        (
            b"{\"key\":\"order-\xff\",\"status\":\"paid\"}".to_vec(),
            "UTF-8",
        ),
        (br#"{"status":"paid","version":1}"#.to_vec(), "empty key"),
        (
            br#"{"key":"order-9","status":"shipped"}"#.to_vec(),
            "unknown status",
        ),
        (
            format!(
                r#"{{"key":"big","status":"paid","payload":"{}"}}"#,
                "x".repeat(10 << 20)
            )
            .into_bytes(),
            "exceeds the limit",
        ),
    ];
    let stream = orders::generate("order-", 20, 0, 4);
    topic.produce(&stream.events[..10]).await;
    // Keyed by "": a missing "key" field falls back to the record key, which is empty here.
    topic
        .produce_raw(
            "",
            &bad.iter().map(|(body, _)| body.clone()).collect::<Vec<_>>(),
        )
        .await;
    topic.produce(&stream.events[10..]).await;

    let server = served.start("serve.log");
    // The partition must not stall: every good message stored, every offset committed.
    served
        .converged(&stream.expected, Duration::from_secs(60))
        .await;
    // Dead letters are acknowledged before the offsets of their batch are committed: all of
    // them are on the topic now, and nothing else may be.
    let letters = served.dead_letters.read_all(Duration::from_secs(30));
    let get = |path: &str| {
        let url = format!("http://{admin}{path}");
        async move {
            let response = reqwest::get(&url).await.expect("admin answers");
            (
                response.status().as_u16(),
                response.text().await.expect("body"),
            )
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "converge_dead_letters_total{kind=\"undecodable\"} 4",
        "converge_dead_letters_total{kind=\"rejected\"} 1",
        "converge_decisions_total{decision=\"insert\"} 20",
        "converge_rule_info{rule=\"order-status@0.1.0\"} 1",
        &format!(
            "converge_messages_total {}",
            stream.events.len() + bad.len()
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert!(get("/rule").await.1.contains("\"statuses\""));
    server.terminate();

    assert_eq!(letters.len(), bad.len());
    // Rejections are decided after decoding, so the topic's order is not the input's: match by
    // body. The 10 MB body is cut to fit the dead-letter topic, its size in a header.
    for (sent, reason) in &bad {
        let (body, headers) = letters
            .iter()
            .find(|(body, _)| sent.starts_with(body) && !body.is_empty())
            .unwrap_or_else(|| {
                panic!("no dead letter for the message that should fail with {reason}")
            });
        if body.len() < sent.len() {
            assert_eq!(
                headers["converge-truncated-from"],
                sent.len().to_string(),
                "a cut body must say so"
            );
        }
        let got = &headers["converge-reason"];
        assert!(got.contains(reason), "{got} should mention {reason}");
        assert_eq!(headers["converge-rule"], "order-status@0.1.0");
        assert!(headers["converge-position"].starts_with(&topic.name));
    }
}
