//! A real pipeline — the compiled order-status rule, a [`KafkaSource`] and a [`RedisStore`] —
//! whose store never answers one write call, for the in-flight tests (`tests/it/in_flight.rs`):
//! the batch of that call stays in flight forever while the batches after it finish their
//! writes. The test reads what happened from standard output and kills the process with
//! SIGKILL.
//!
//! ```text
//! slow-write --brokers B --group G --topic T --redis URL --prefix P --rule RULE.wasm
//!            [--slow-call K] [--batch-size N]
//! ```
//!
//! Standard output, one line per event, flushed as it happens:
//! - `BATCH <i> <partition>:<first>-<last>:<count> …`: batch `i` (from 1) was delivered, with
//!   its offsets per partition;
//! - `ACK <i>`: batch `i` was acknowledged to the source (its offsets are stored, to be
//!   committed);
//! - `SLOW <call> <position> …`: write call `K` started, with the positions of its writes; it
//!   never returns;
//! - `DONE <call> <written> <writes>`: a write call after `K` returned from Redis, `written`
//!   of its `writes` stored (the others refused by compare-and-set).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use converge::config::KafkaSourceConfig;
use converge::dead_letter::MemoryDeadLetters;
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::rule::{EngineLimits, RuleEngine};
use converge::source::{KafkaSource, Message, Position, Source, SourceError};
use converge::store::{Current, RedisStore, Store, StoreError, Write, WriteOutcome};
use converge::telemetry::Metrics;

/// One line on standard output, flushed at once (the test reads it while this runs).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A Redis store whose `slow_call`-th write call (from 1) never returns; 0 stalls none.
struct StallingStore {
    inner: RedisStore,
    calls: AtomicU64,
    slow_call: u64,
}

impl Store for StallingStore {
    async fn load(&self, keys: &[String]) -> Result<Vec<Option<Current>>, StoreError> {
        self.inner.load(keys).await
    }

    async fn write(&self, writes: &[Write]) -> Result<Vec<WriteOutcome>, StoreError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call == self.slow_call {
            let positions: Vec<&str> = writes.iter().map(|w| w.position.as_str()).collect();
            say(&format!("SLOW {call} {}", positions.join(" ")));
            std::future::pending::<()>().await;
        }
        let outcomes = self.inner.write(writes).await?;
        if self.slow_call > 0 && call > self.slow_call {
            let written = outcomes
                .iter()
                .filter(|outcome| matches!(outcome, WriteOutcome::Written { .. }))
                .count();
            say(&format!("DONE {call} {written} {}", writes.len()));
        }
        Ok(outcomes)
    }
}

/// The Kafka source, numbering its batches as delivered and naming each one acknowledged (by
/// its first message, so an acknowledgement out of order shows as such).
struct Numbered {
    inner: KafkaSource,
    delivered: u64,
    first_positions: HashMap<Position, u64>,
}

impl Source for Numbered {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        let batch = self.inner.next_batch(max).await?;
        if let Some(first) = batch.first() {
            self.delivered += 1;
            self.first_positions
                .insert(first.position.clone(), self.delivered);
            // partition -> (first, last, count)
            let mut ranges: BTreeMap<i32, (i64, i64, u64)> = BTreeMap::new();
            for message in &batch {
                if let Position::Partition {
                    partition, offset, ..
                } = &message.position
                {
                    let range = ranges.entry(*partition).or_insert((*offset, *offset, 0));
                    range.0 = range.0.min(*offset);
                    range.1 = range.1.max(*offset);
                    range.2 += 1;
                }
            }
            let ranges: Vec<String> = ranges
                .iter()
                .map(|(partition, (first, last, count))| {
                    format!("{partition}:{first}-{last}:{count}")
                })
                .collect();
            say(&format!("BATCH {} {}", self.delivered, ranges.join(" ")));
        }
        Ok(batch)
    }

    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    async fn ack(&mut self, batch: &[Message]) -> Result<(), SourceError> {
        self.inner.ack(batch).await?;
        let number = batch
            .first()
            .and_then(|first| self.first_positions.remove(&first.position))
            .map_or_else(|| "?".to_owned(), |number| number.to_string());
        say(&format!("ACK {number}"));
        Ok(())
    }
}

/// `--name value` pairs.
fn args() -> anyhow::Result<HashMap<String, String>> {
    let mut args = std::env::args().skip(1);
    let mut named = HashMap::new();
    while let Some(name) = args.next() {
        let name = name
            .strip_prefix("--")
            .with_context(|| format!("expected --name, got {name:?}"))?
            .to_owned();
        let value = args
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        named.insert(name, value);
    }
    Ok(named)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let arg = |name: &str| {
        args.get(name)
            .cloned()
            .with_context(|| format!("--{name} is required"))
    };
    let slow_call: u64 = args.get("slow-call").map_or(Ok(3), |k| k.parse())?;
    let batch_size: usize = args.get("batch-size").map_or(Ok(100), |n| n.parse())?;

    let rule = RuleEngine::new(EngineLimits {
        memory_cap_bytes: 16 << 20,
        // Generous: a busy two-core machine must not make a call miss its deadline.
        deadline: Duration::from_secs(2),
        ..EngineLimits::default()
    })?
    .compile_file(&PathBuf::from(arg("rule")?))?
    .instance();
    let store = StallingStore {
        inner: RedisStore::connect(&arg("redis")?, &arg("prefix")?).await?,
        calls: AtomicU64::new(0),
        slow_call,
    };
    let metrics = Arc::new(Metrics::new());
    let config = KafkaSourceConfig {
        brokers: arg("brokers")?,
        group_id: arg("group")?,
        topics: vec![arg("topic")?],
        batch_timeout_ms: 0,
        // Once killed, this member is out of the group after 6 s (the broker's minimum)
        // rather than the default 45 s, so a restart is assigned its partitions soon.
        properties: BTreeMap::from([("session.timeout.ms".to_owned(), "6000".to_owned())]),
    };
    let mut source = Numbered {
        inner: KafkaSource::subscribe(&config, Arc::clone(&metrics))?,
        delivered: 0,
        first_positions: HashMap::new(),
    };
    let mut pipeline = Pipeline::new(
        rule,
        store,
        MemoryDeadLetters::new(),
        PipelineConfig {
            batch_size,
            ..PipelineConfig::default()
        },
    )
    .with_metrics(metrics);
    // Runs until killed: the stalled call keeps its batch in flight, and the window fills.
    pipeline
        .run(&mut source, converge::shutdown::Shutdown::never())
        .await?;
    say("STOPPED");
    Ok(())
}
