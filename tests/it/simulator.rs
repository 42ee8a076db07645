//! Enrichment end to end: `converge simulate` publishes id-only messages (shuffled, duplicated,
//! delayed) to Kafka and serves the order API; `converge serve` fetches each order and stores
//! it. Every order ends on the simulator's final state; an id the API does not know is
//! dead-lettered with the 404.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge::entity::Event;
use converge_tests::kafka::{self, TestTopic};
use converge_tests::services::TestStore;
use converge_tests::{build, stored_states};

use crate::kafka::{serve, standalone_store, terminate, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_only_messages_from_the_simulator_are_enriched_and_converge() {
    let topic = TestTopic::create("simulated", 3).await;
    let dead_letters = TestTopic::create("simulated-dlq", 1).await;
    let redis = TestStore::standalone("simulated").await;
    let group = format!("{}-group", topic.name);
    let dir = tempfile::tempdir().expect("temp dir");
    let expected_file = dir.path().join("expected.json");
    let key_prefix = format!("order-{:08x}-", rand::random::<u32>());

    let mut simulator = Command::new(build::converge_binary())
        .args(["simulate", "--messages", "id-only", "--orders", "400"])
        .args(["--duplicate-percent", "30", "--shuffle-window", "64"])
        .args(["--max-delay-ms", "20", "--rate", "4000"])
        .args(["--key-prefix", &key_prefix, "--brokers", &kafka::brokers()])
        .args(["--topic", &topic.name, "--listen", "127.0.0.1:0", "--serve"])
        .arg("--expected")
        .arg(&expected_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("converge simulate starts");
    let mut announcements = BufReader::new(simulator.stderr.take().expect("stderr"));
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

    let config = write_config(
        dir.path(),
        &topic.name,
        &dead_letters.name,
        &group,
        &standalone_store(redis.store.prefix()),
        &format!("[enrich]\nurl = \"{api}/orders/{{key}}\"\nconcurrency = 8"),
    );
    let server = serve(&config, &dir.path().join("serve.log"));
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
    let keys: Vec<String> = expected.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let states = stored_states(&redis.store, &keys).await;
        let progress = topic.progress(&group);
        if states == expected && progress.iter().all(|(committed, high)| committed == high) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged: {} of {} orders right, progress {progress:?}; logs in {}",
            states
                .iter()
                .filter(|(k, v)| expected.get(*k) == Some(v))
                .count(),
            keys.len(),
            dir.keep().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let letters = dead_letters.read(1, Duration::from_secs(30));
    assert_eq!(
        letters.len(),
        1,
        "exactly the unknown order is dead-lettered"
    );
    let (body, headers) = &letters[0];
    assert!(String::from_utf8_lossy(body).contains(&unknown));
    assert_eq!(headers["converge-kind"], "not_enriched");
    assert!(
        headers["converge-reason"].contains("404"),
        "{}",
        headers["converge-reason"]
    );

    terminate(server);
    terminate(simulator);
}
