//! The throughput backlog through a Fluvio topic and the Fluvio source, when
//! `CONVERGE_BENCH_FLUVIO=host:port` names a cluster's SC. Built like the Kafka runs: `serve`'s
//! configuration with only what must be set (dead letters to a Redis stream, as a Fluvio
//! source has no Kafka brokers to use).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use converge::simulator::{Publisher, Simulator};
use converge::telemetry::Metrics;
use converge_tests::Convergence;
use converge_tests::services::unique_prefix;
use fluvio::metadata::topic::TopicSpec;
use tokio::sync::watch;

use crate::producer::backlog_config;
use crate::run::{self, Run};

/// A `Write` into a buffer the caller keeps: the simulator's JSON lines, collected.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Collected {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Publishes the backlog of `orders` (the Kafka runs' seed, so the same messages) to a fresh
/// topic of 6 partitions, keyed by order, then drains it; checks convergence.
pub async fn throughput(dir: &Path, rule: &Path, endpoint: &str, orders: usize) -> Run {
    let lines = Collected::default();
    let backlog = Simulator::new(
        backlog_config(orders),
        Publisher::Lines(Box::new(lines.clone())),
    )
    .run()
    .await
    .expect("simulated");
    let lines = std::mem::take(&mut *lines.0.lock().unwrap_or_else(PoisonError::into_inner));

    let cluster = fluvio::FluvioClusterConfig::new(endpoint);
    let client = fluvio::Fluvio::connect_with_config(&cluster)
        .await
        .expect("the Fluvio cluster answers");
    let topic = format!("converge-bench-{:016x}", rand::random::<u64>());
    let admin = client.admin().await;
    admin
        .create(topic.clone(), false, TopicSpec::new_computed(6, 1, None))
        .await
        .expect("topic created");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let producer = client.topic_producer(&topic).await.expect("producer");
    for line in lines.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
        let key = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|body| body.get("key")?.as_str().map(str::to_owned))
            .expect("every simulated message has a key");
        producer.send(key, line.to_vec()).await.expect("sent");
    }
    producer.flush().await.expect("flushed");

    let prefix = unique_prefix("bench-fluvio");
    let config = run::fluvio_config(
        dir,
        rule,
        endpoint,
        &topic,
        &format!("{topic}-bench"),
        &prefix,
    );
    let metrics = Arc::new(Metrics::new());
    let control = run::load_rule(&config.rule, &metrics);
    let (_fixed, target) = watch::channel(backlog.published as usize);
    let measured = run::run(&config, control.rule(), metrics, target).await;
    let check = run::check_store(run::StoreKind::Standalone, &prefix).await;
    Convergence::new(&check.store, &backlog.expected)
        .assert_now()
        .await;
    let _ = admin.delete::<TopicSpec>(topic).await;
    measured
}
