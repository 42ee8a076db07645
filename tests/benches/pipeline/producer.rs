//! The load: a backlog published before the consumer starts (throughput), or an open-loop
//! producer in a process of its own, `converge simulate --rate R --seconds S` (latency).
//!
//! The paced producer never waits for the consumer, and each record's timestamp is the time
//! it was scheduled for (start + i / rate), not the time it went out; so a latency measured from
//! it counts every delay, the producer's own included (no coordinated omission).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use converge::entity::Event;
use converge::simulator::{Publisher, Simulator, SimulatorConfig, Summary};
use converge_tests::{build, kafka};

/// Orders of the throughput backlog: shuffled in a window of 1024, 20% duplicated. The same
/// seed every run, so that runs differ only in topic, group and key prefix.
pub fn backlog_config(orders: usize) -> SimulatorConfig {
    SimulatorConfig {
        orders,
        duplicate_percent: 20,
        shuffle_window: 1024,
        ..SimulatorConfig::default()
    }
}

/// Publishes the backlog to `topic` and waits until every message is delivered.
pub async fn backlog(topic: &str, orders: usize) -> Summary {
    let publisher = Publisher::kafka(&kafka::brokers(), topic, &BTreeMap::new()).expect("producer");
    Simulator::new(backlog_config(orders), publisher)
        .run()
        .await
        .expect("the backlog is published")
}

/// What the paced producer process reported (its summary line) and expects stored.
#[derive(Debug)]
pub struct Paced {
    pub published: u64,
    /// From its start until every message was delivered.
    pub seconds: f64,
    /// How far behind schedule it handed a change to its Kafka client, at worst.
    pub max_behind_schedule_ms: f64,
    pub expected: BTreeMap<String, Event>,
}

impl Paced {
    /// Messages actually produced per second.
    pub fn achieved_rate(&self) -> f64 {
        self.published as f64 / self.seconds
    }
}

/// Runs `converge simulate` publishing `rate` changes/s for `seconds` to `topic` (in order,
/// no duplicates: every message is a fresh change, so each one's latency is the pipeline's),
/// and waits for it. Blocking: call it from `spawn_blocking`.
pub fn paced(dir: &Path, topic: &str, rate: u32, seconds: u32, seed: u64) -> Paced {
    let expected = dir.join(format!("{topic}.expected.json"));
    // More orders than the run can finish: the run ends on its duration, mid-lifecycle.
    let orders = (rate as usize * seconds as usize / 2).max(1);
    let output = Command::new(build::converge_binary())
        .arg("simulate")
        .args(["--brokers", &kafka::brokers(), "--topic", topic])
        .args(["--orders", &orders.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(["--duplicate-percent", "0", "--shuffle-window", "1"])
        .args(["--seed", &seed.to_string()])
        .arg("--expected")
        .arg(&expected)
        .stdout(Stdio::null())
        .output()
        .expect("converge simulate starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "converge simulate failed: {stderr}"
    );
    let summary = stderr
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line.get("published").is_some())
        .unwrap_or_else(|| panic!("no summary in converge simulate's output: {stderr}"));
    let number = |field: &str| {
        summary[field]
            .as_f64()
            .unwrap_or_else(|| panic!("no {field} in converge simulate's summary: {summary}"))
    };
    let expected = std::fs::read(&expected).expect("the expected states are written");
    Paced {
        published: number("published") as u64,
        seconds: number("seconds"),
        max_behind_schedule_ms: number("max_behind_schedule_ms"),
        expected: serde_json::from_slice(&expected).expect("expected states"),
    }
}
