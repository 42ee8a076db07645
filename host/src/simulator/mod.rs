//! The order-system simulator (`converge simulate`): a stand-in for the seed's order system,
//! used by the demo, the tests and the benchmarks.
//!
//! It creates orders and moves each through `created -> paid -> completed [-> refunded]`,
//! stopping some on the way, and serves the latest state of every order at
//! `GET /orders/{id}` — the order-detail API that enrichment calls. Every change is published
//! keyed by order id, either as the full event or as an id-only message (`{"key": id}`), through
//! a simulated network that misbehaves the way the seed's did: it holds messages in a window and
//! lets them out in random order, duplicates some, and delays some. Whatever it does, an
//! order's latest state is the one with the highest version, so a correct consumer ends on the
//! states the simulator reports as expected.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.
//!
//! HTTP: `GET /orders/{id}` (200 with the order, 404), `POST /orders` (creates one, 201),
//! `POST /orders/{id}/advance` (next status, 409 once final), `GET /healthz`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[cfg(feature = "http")]
mod api;
#[cfg(feature = "kafka")]
mod kafka;
mod network;

#[cfg(feature = "kafka")]
pub use kafka::KafkaPublisher;

use network::Network;

use crate::entity::{Event, canonical_json};
use crate::progress::{Progress, Silent, Unit};

/// The order lifecycle, in the order the shipped rule ranks it.
pub const LIFECYCLE: [&str; 4] = ["created", "paid", "completed", "refunded"];

/// What a published message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageShape {
    /// The whole order: key, status, version, timestamp_ms, payload.
    Full,
    /// Only `{"key": id}`: the consumer fetches the order from `GET /orders/{id}`.
    IdOnly,
}

/// How much to simulate and how badly the network behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatorConfig {
    /// Orders created and moved through their lifecycle at start.
    pub orders: usize,
    /// Order ids are this prefix and a number.
    pub key_prefix: String,
    /// What a published message carries.
    pub shape: MessageShape,
    /// Percent of messages published twice.
    pub duplicate_percent: u8,
    /// Messages held at once and let out in random order; 0 or 1 keeps the order.
    pub shuffle_window: usize,
    /// Each message is held up to this long (uniformly at random) before it is published.
    pub max_delay: Duration,
    /// Status changes per second; 0 runs as fast as the producer takes them.
    ///
    /// The pace is open-loop: a change that is late (the producer was busy) goes out at once,
    /// and each Kafka record carries the time it was *meant* to be sent, not when it was, so
    /// that latency measured from the record's timestamp includes the producer's own delays.
    pub rate: u32,
    /// Stop after this long: with a rate, after `rate × duration` changes, without one, when
    /// this much time has passed. Orders not yet final stay on their last status (and are
    /// expected there). `None` runs every order to its end.
    pub duration: Option<Duration>,
    /// Seed of the simulation: the same seed makes the same orders and disorder.
    pub seed: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            orders: 1_000,
            key_prefix: "order-".to_owned(),
            shape: MessageShape::Full,
            duplicate_percent: 20,
            shuffle_window: 256,
            max_delay: Duration::ZERO,
            rate: 0,
            duration: None,
            seed: 1,
        }
    }
}

/// Why the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// The Kafka producer cannot be created.
    #[cfg(feature = "kafka")]
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    /// Kafka refused or failed a message.
    #[cfg(feature = "kafka")]
    #[error("publishing to Kafka failed: {0}")]
    Publish(#[source] rdkafka::error::KafkaError),
    /// The producer dropped a message without a delivery report.
    #[cfg(feature = "kafka")]
    #[error("publishing to Kafka failed: the producer dropped a message")]
    Dropped,
    /// An order cannot be encoded as JSON.
    #[error("cannot encode an order: {0}")]
    Encode(#[source] serde_json::Error),
    /// Writing JSON lines failed.
    #[error("writing messages failed: {0}")]
    Output(#[from] std::io::Error),
}

/// Where messages go: JSON lines on a writer (stdout for `--brokers` unset), or a Kafka topic.
pub enum Publisher {
    /// One JSON line per message.
    Lines(Box<dyn std::io::Write + Send>),
    /// A Kafka topic (feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka(KafkaPublisher),
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Publisher::Lines(_) => f.write_str("Publisher::Lines"),
            #[cfg(feature = "kafka")]
            Publisher::Kafka(kafka) => write!(f, "Publisher::Kafka({kafka:?})"),
        }
    }
}

impl Publisher {
    /// A Kafka producer for `topic`; `properties` pass through to librdkafka.
    #[cfg(feature = "kafka")]
    pub fn kafka(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Self, SimulatorError> {
        Ok(Publisher::Kafka(KafkaPublisher::new(
            brokers, topic, properties,
        )?))
    }

    /// Publishes one message; `timestamp_ms` (Unix ms) becomes a Kafka record's timestamp,
    /// the producer's clock when `None`.
    async fn publish(
        &mut self,
        key: &str,
        body: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<(), SimulatorError> {
        match self {
            Publisher::Lines(out) => {
                // Lines carry the key inside the body, and no timestamp.
                let _ = (key, timestamp_ms);
                out.write_all(body)?;
                out.write_all(b"\n")?;
                Ok(())
            }
            #[cfg(feature = "kafka")]
            Publisher::Kafka(kafka) => kafka.publish(key, body, timestamp_ms).await,
        }
    }

    /// Waits until everything published so far is delivered.
    async fn flush(&mut self) -> Result<(), SimulatorError> {
        match self {
            Publisher::Lines(out) => Ok(out.flush()?),
            #[cfg(feature = "kafka")]
            Publisher::Kafka(kafka) => kafka.flush().await,
        }
    }
}

/// The orders and the network they are published through; shared with the HTTP API.
struct OrderSystem {
    orders: Mutex<HashMap<String, Event>>,
    /// Taken by whoever publishes; tokio's lock, as it is held across the publish.
    network: tokio::sync::Mutex<Network>,
    shape: MessageShape,
    key_prefix: String,
    next_number: Mutex<u64>,
}

impl OrderSystem {
    fn lock_orders(&self) -> std::sync::MutexGuard<'_, HashMap<String, Event>> {
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new_key(&self) -> String {
        let mut next = self
            .next_number
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *next += 1;
        format!("{}{}", self.key_prefix, *next)
    }

    /// Moves `key` to its next status (creating it if new) and publishes the change, stamped
    /// `stamp` (Unix ms) if given; `None` when the order is already final.
    async fn advance(
        &self,
        key: &str,
        stamp: Option<i64>,
    ) -> Result<Option<Event>, SimulatorError> {
        let event = {
            let mut orders = self.lock_orders();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64);
            let next = match orders.get(key) {
                None => Some(order_state(key, 0, now_ms)),
                Some(current) => {
                    let step = LIFECYCLE
                        .iter()
                        .position(|status| *status == current.status)
                        .map_or(LIFECYCLE.len(), |step| step + 1);
                    (step < LIFECYCLE.len()).then(|| {
                        // Later changes never carry an earlier time, even if the clock steps back.
                        order_state(key, step, now_ms.max(current.timestamp_ms + 1))
                    })
                }
            };
            let Some(next) = next else {
                return Ok(None);
            };
            orders.insert(key.to_owned(), next.clone());
            next
        };
        let body = match self.shape {
            MessageShape::Full => serde_json::to_vec(&event),
            MessageShape::IdOnly => serde_json::to_vec(&serde_json::json!({ "key": key })),
        }
        .map_err(SimulatorError::Encode)?;
        self.network
            .lock()
            .await
            .send((key.to_owned(), body, stamp))
            .await?;
        Ok(Some(event))
    }
}

/// The state of order `key` at lifecycle step `step`.
fn order_state(key: &str, step: usize, timestamp_ms: u64) -> Event {
    // A stable, key-derived order content, so that payloads differ between orders.
    let seed = key.bytes().fold(0u64, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(u64::from(byte))
    });
    let mut payload = serde_json::json!({
        "table": seed % 40 + 1,
        "dishes": seed % 7 + 1,
        "total_cents": 1_000 + seed % 9_000,
    });
    if step >= 1 {
        payload["paid_cents"] = payload["total_cents"].clone();
    }
    if step >= 3 {
        payload["refunded_cents"] = payload["total_cents"].clone();
    }
    Event {
        key: key.to_owned(),
        status: LIFECYCLE[step].to_owned(),
        version: step as u64 + 1,
        timestamp_ms,
        payload: canonical_json(&payload),
    }
}

/// Unix time for `Instant`s: the wall clock read once, so that stamps follow the monotonic
/// clock's spacing exactly.
struct UnixClock {
    at: Instant,
    unix_ms: i64,
}

impl UnixClock {
    fn now() -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        Self {
            at: Instant::now(),
            unix_ms,
        }
    }

    fn unix_ms(&self, instant: Instant) -> i64 {
        if instant >= self.at {
            self.unix_ms + (instant - self.at).as_millis() as i64
        } else {
            self.unix_ms - (self.at - instant).as_millis() as i64
        }
    }
}

/// What a simulation did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Orders created.
    pub orders: usize,
    /// Status changes, one message each before duplication.
    pub changes: u64,
    /// Messages published, duplicates included.
    pub published: u64,
    /// Messages published a second time.
    pub duplicated: u64,
    /// How long the simulation took, until every message was delivered.
    pub seconds: f64,
    /// With a rate: how far behind its schedule the simulator handed a change to the
    /// producer, at worst (the producer's queue was full, or the process did not get the CPU).
    /// Records are stamped with their scheduled time regardless.
    pub max_behind_schedule_ms: f64,
    /// Every order's latest state: what a converged consumer stores.
    #[serde(skip)]
    pub expected: BTreeMap<String, Event>,
}

/// A running simulator.
pub struct Simulator {
    system: Arc<OrderSystem>,
    config: SimulatorConfig,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// A simulator of `config`'s orders, publishing through `publisher`.
    pub fn new(config: SimulatorConfig, publisher: Publisher) -> Self {
        let network = Network::new(publisher, &config);
        let system = Arc::new(OrderSystem {
            orders: Mutex::new(HashMap::new()),
            network: tokio::sync::Mutex::new(network),
            shape: config.shape,
            key_prefix: config.key_prefix.clone(),
            next_number: Mutex::new(0),
        });
        Self { system, config }
    }

    /// Serves the order API (the order-detail and order-creation endpoints) on `listener`
    /// until `shutdown` resolves.
    #[cfg(feature = "http")]
    pub fn serve_api(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        api::serve(Arc::clone(&self.system), listener, shutdown)
    }

    /// Creates `config.orders` orders and moves each through its lifecycle, changes of
    /// different orders interleaved at random; then lets every held message out and waits
    /// for their delivery.
    pub async fn run(&self) -> Result<Summary, SimulatorError> {
        self.run_with_progress(&Silent).await
    }

    /// [`Simulator::run`], reporting to `progress`: the stage `publishing` counts status
    /// changes handed to the network, of every change the orders will go through (or of the
    /// rate × duration cap), then `delivering` lasts until every held message is delivered.
    pub async fn run_with_progress(
        &self,
        progress: &dyn Progress,
    ) -> Result<Summary, SimulatorError> {
        let started = Instant::now();
        let mut rng = StdRng::seed_from_u64(self.config.seed);
        // (key, status changes left): 10% stop at created, 10% at paid, 60% completed,
        // 20% refunded.
        let mut active: Vec<(String, usize)> = (0..self.config.orders)
            .map(|_| {
                let roll = rng.random_range(0..100);
                let steps = match roll {
                    0..10 => 1,
                    10..20 => 2,
                    20..80 => 3,
                    _ => 4,
                };
                (self.system.new_key(), steps)
            })
            .collect();
        let mut pace = (self.config.rate > 0).then(|| {
            let mut interval =
                tokio::time::interval(Duration::from_secs(1) / self.config.rate.max(1));
            // Late ticks fire at once, each still reporting the time it was due.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            interval
        });
        let max_changes = match (self.config.duration, self.config.rate) {
            (Some(duration), rate) if rate > 0 => {
                Some((duration.as_secs_f64() * f64::from(rate)).round() as u64)
            }
            _ => None,
        };
        let planned: u64 = active.iter().map(|(_, steps)| *steps as u64).sum();
        progress.stage(
            "publishing",
            Unit::Items("changes"),
            Some(max_changes.map_or(planned, |max| max.min(planned))),
        );
        let clock = UnixClock::now();
        let mut max_behind = Duration::ZERO;
        let mut changes = 0;
        while !active.is_empty() {
            if max_changes.is_some_and(|max| changes >= max)
                || (max_changes.is_none()
                    && self.config.duration.is_some_and(|d| started.elapsed() >= d))
            {
                break;
            }
            let stamp = match &mut pace {
                Some(pace) => {
                    let due = pace.tick().await.into_std();
                    max_behind = max_behind.max(due.elapsed());
                    Some(clock.unix_ms(due))
                }
                None => None,
            };
            let pick = rng.random_range(0..active.len());
            let key = active[pick].0.clone();
            self.system.advance(&key, stamp).await?;
            changes += 1;
            progress.advance(1);
            active[pick].1 -= 1;
            if active[pick].1 == 0 {
                active.swap_remove(pick);
            }
        }
        progress.stage("delivering", Unit::Nothing, None);
        let mut network = self.system.network.lock().await;
        network.drain().await?;
        let expected: BTreeMap<String, Event> = self
            .system
            .lock_orders()
            .iter()
            .map(|(key, event)| (key.clone(), event.clone()))
            .collect();
        Ok(Summary {
            orders: expected.len(),
            changes,
            published: network.published,
            duplicated: network.duplicated,
            seconds: started.elapsed().as_secs_f64(),
            max_behind_schedule_ms: max_behind.as_secs_f64() * 1000.0,
            expected,
        })
    }

    /// Lets out messages published through the HTTP API since the last call and waits for
    /// their delivery.
    pub async fn drain(&self) -> Result<(), SimulatorError> {
        self.system.network.lock().await.drain().await
    }

    /// Every order's latest state.
    pub fn orders(&self) -> BTreeMap<String, Event> {
        self.system
            .lock_orders()
            .iter()
            .map(|(key, event)| (key.clone(), event.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
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

    fn lines(out: &Shared) -> Vec<Event> {
        let bytes = out.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("an event"))
            .collect()
    }

    #[tokio::test]
    async fn every_change_is_published_shuffled_and_duplicated() {
        let out = Shared::default();
        let config = SimulatorConfig {
            orders: 200,
            duplicate_percent: 30,
            shuffle_window: 64,
            ..SimulatorConfig::default()
        };
        let simulator = Simulator::new(config, Publisher::Lines(Box::new(out.clone())));
        let summary = simulator.run().await.expect("runs");
        let events = lines(&out);
        assert_eq!(events.len() as u64, summary.published);
        assert_eq!(summary.published, summary.changes + summary.duplicated);
        assert!(summary.duplicated > 0);
        assert_eq!(summary.expected.len(), 200);
        // The network reordered changes: some order's later status arrives before an earlier.
        let mut seen: HashMap<&str, u64> = HashMap::new();
        let mut reordered = false;
        for event in &events {
            let highest = seen.entry(&event.key).or_default();
            reordered |= event.version < *highest;
            *highest = (*highest).max(event.version);
        }
        assert!(reordered, "no message was reordered");
        // The highest version published per order is its expected final state.
        for (key, expected) in &summary.expected {
            let last = events
                .iter()
                .filter(|event| &event.key == key)
                .max_by_key(|event| event.version)
                .expect("published");
            assert_eq!(last, expected);
        }
    }

    #[tokio::test]
    async fn a_paced_run_with_a_duration_publishes_rate_times_duration_changes() {
        let out = Shared::default();
        let config = SimulatorConfig {
            orders: 1_000,
            duplicate_percent: 0,
            shuffle_window: 1,
            rate: 1_000,
            duration: Some(Duration::from_millis(50)),
            ..SimulatorConfig::default()
        };
        let simulator = Simulator::new(config, Publisher::Lines(Box::new(out.clone())));
        let summary = simulator.run().await.expect("runs");
        assert_eq!(summary.changes, 50);
        assert_eq!(lines(&out).len(), 50);
        // Orders cut short are expected on the status they reached.
        for event in lines(&out) {
            assert!(summary.expected[&event.key].version >= event.version);
        }
    }

    #[tokio::test]
    async fn id_only_messages_carry_just_the_key_and_the_api_serves_the_order() {
        let out = Shared::default();
        let config = SimulatorConfig {
            orders: 5,
            shape: MessageShape::IdOnly,
            max_delay: Duration::from_millis(5),
            ..SimulatorConfig::default()
        };
        let simulator = Simulator::new(config, Publisher::Lines(Box::new(out.clone())));
        simulator.run().await.expect("runs");
        let bytes = out.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let text = String::from_utf8(bytes).expect("utf-8");
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
            let object = value.as_object().expect("an object");
            assert_eq!(object.len(), 1, "{line}");
            assert!(
                object["key"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("order-"))
            );
        }
        let orders = simulator.orders();
        assert_eq!(orders.len(), 5);
        let order = orders.values().next().expect("an order");
        assert!(LIFECYCLE.contains(&order.status.as_str()));
        assert_eq!(
            order.version,
            LIFECYCLE
                .iter()
                .position(|status| *status == order.status)
                .map(|step| step as u64 + 1)
                .expect("a lifecycle status")
        );
    }
}
