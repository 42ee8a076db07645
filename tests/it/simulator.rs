//! Enrichment end to end: `converge simulate` publishes id-only messages (shuffled, duplicated,
//! delayed) to Kafka and serves the order API; `converge serve` fetches each order and stores
//! it. Every order ends on the simulator's final state; an id the API does not know is
//! dead-lettered with the 404.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge::config::EnrichConfig;
use converge::entity::Event;
use converge_tests::kafka::{self, TestTopic};
use converge_tests::process::Server;
use converge_tests::services::TestStore;
use converge_tests::{Convergence, build, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_only_messages_from_the_simulator_are_enriched_and_converge() {
    let topic = TestTopic::create("simulated", 3).await;
    let dead_letters = TestTopic::create("simulated-dlq", 1).await;
    let redis = TestStore::standalone("simulated").await;
    let group = format!("{}-group", topic.name);
    let mut dir = tempfile::tempdir().expect("temp dir");
    let expected_file = dir.path().join("expected.json");
    let key_prefix = format!("order-{:08x}-", rand::random::<u32>());

    let mut simulator = Server::spawn(
        Command::new(build::converge_binary())
            .args(["simulate", "--messages", "id-only", "--orders", "400"])
            .args(["--duplicate-percent", "30", "--shuffle-window", "64"])
            .args(["--max-delay-ms", "20", "--rate", "4000"])
            .args(["--key-prefix", &key_prefix, "--brokers", &kafka::brokers()])
            .args(["--topic", &topic.name, "--listen", "127.0.0.1:0", "--serve"])
            .arg("--expected")
            .arg(&expected_file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let mut announcements = BufReader::new(simulator.take_stderr().expect("stderr"));
    let mut first = String::new();
    announcements.read_line(&mut first).expect("announcement");
    let api = first
        .trim()
        .strip_prefix("order API on ")
        .and_then(|url| url.strip_suffix("/orders/{id}"))
        .unwrap_or_else(|| panic!("unexpected first line from simulate: {first:?}"))
        .to_owned();
    // Keep draining stderr so the simulator never blocks on a full pipe.
    std::thread::spawn(move || for _ in announcements.lines() {});

    let mut settings = config::kafka_serve(
        &topic.name,
        &dead_letters.name,
        &group,
        config::standalone_store(redis.store.prefix()),
    );
    settings.enrich = Some(EnrichConfig {
        concurrency: 8,
        ..config::enrich(&format!("{api}/orders/{{key}}"))
    });
    let config = config::write(dir.path(), &settings);
    let server = Server::start(&config, &dir.path().join("serve.log"));
    // An order the API never heard of.
    let unknown = format!("{key_prefix}unknown");
    topic
        .produce_raw(
            &unknown,
            &[format!(r#"{{"key":"{unknown}"}}"#).into_bytes()],
        )
        .await;

    let started = Instant::now();
    while !expected_file.is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the simulator did not finish publishing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: BTreeMap<String, Event> =
        serde_json::from_slice(&std::fs::read(&expected_file).expect("expected states"))
            .expect("expected states are JSON");
    assert_eq!(expected.len(), 400);
    Convergence::new(&redis.store, &expected)
        .logs(&mut dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;

    // Dead letters are acknowledged before their batch's offsets are committed: every one is
    // on the topic by now. Read them all: exactly one, the unknown order.
    let letters = dead_letters.read_all(Duration::from_secs(30));
    assert_eq!(
        letters.len(),
        1,
        "exactly the unknown order is dead-lettered: {:?}",
        letters
            .iter()
            .map(|(body, headers)| (String::from_utf8_lossy(body), headers))
            .collect::<Vec<_>>()
    );
    let (body, headers) = &letters[0];
    assert!(String::from_utf8_lossy(body).contains(&unknown));
    assert_eq!(headers["converge-kind"], "not_enriched");
    assert!(
        headers["converge-reason"].contains("404"),
        "{}",
        headers["converge-reason"]
    );

    server.terminate();
    simulator.terminate();
}
