//! Poison (issue 14): inputs built to break a promise — a dead letter too large for the broker,
//! a rule's endless refusal, an order API that never stops answering, stored state converge
//! cannot read, a configuration that would retry forever. Each runs a real `converge serve` on
//! the real Kafka and Redis, and each must end the same way: the poison is dead-lettered (or the
//! process refuses to start, saying why), every other key converges, the committed offsets reach
//! the end of the topic, and the process that met the poison is the one still running.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use converge::config::{DeadLetterConfig, RedisStreamConfig};
use converge::dead_letter::MAX_REASON_BYTES;
use converge::entity::Event;
use converge_tests::kafka::{Record, TestTopic};
use converge_tests::order_api::OrderApi;
use converge_tests::process::{Converge, Server, tail};
use converge_tests::prometheus::{Exposition, scrape};
use converge_tests::served::Served;
use converge_tests::services::{redis_url, unique_prefix};
use converge_tests::{build, config, orders};

/// The log of `serve`, in the setup's directory.
const LOG: &str = "serve.log";

/// How long a poison may hold things up: generous for a loaded machine, and still a bound, so
/// a partition that stalls fails the test instead of hanging it.
const WITHIN: Duration = Duration::from_secs(90);

/// One `converge serve` with an admin endpoint ([`Served`]), and what these tests ask of it.
struct Poisoned(Served);

impl Deref for Poisoned {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.0
    }
}

impl DerefMut for Poisoned {
    fn deref_mut(&mut self) -> &mut Served {
        &mut self.0
    }
}

impl Poisoned {
    async fn new(test: &str) -> Self {
        Self(Served::new(test, 1).await.with_admin())
    }

    fn start(&self) -> Server {
        self.0.start(LOG)
    }

    /// Waits until every key of `expected` holds its state and the group's offsets are at the
    /// end of the topic, failing at once (with the log) if the process exits meanwhile: a
    /// poison that kills `serve` would otherwise only show as a timeout.
    async fn converge(&mut self, server: &mut Server, expected: &BTreeMap<String, Event>) {
        let log = self.log(LOG);
        let converged = self.0.converged(expected, WITHIN);
        let exited = async {
            loop {
                if let Some(status) = server.exited() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let exit = tokio::select! {
            _ = converged => None,
            status = exited => Some(status),
        };
        if let Some(status) = exit {
            self.dir.disable_cleanup(true);
            panic!(
                "serve exited ({status}) before converging; its log:\n{}",
                tail(&log)
            );
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}{path}", self.admin()))
            .await
            .expect("admin answers");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    }

    /// The process is the one started (no exit, so no crash loop) and says it is healthy.
    async fn assert_alive(&self, server: &mut Server) {
        assert!(
            server.exited().is_none(),
            "serve exited; its log:\n{}",
            tail(&self.log(LOG))
        );
        assert_eq!(self.get("/healthz").await.0, 200);
        assert_eq!(self.get("/readyz").await.0, 200);
    }

    /// Asserts each series of `values` is exported with its value; answers the scrape.
    async fn assert_metrics(&self, values: &[(&str, usize)]) -> Exposition {
        let metrics = scrape(self.admin()).await.expect("admin answers");
        for (series, value) in values {
            assert_eq!(
                metrics.value(series),
                *value as f64,
                "{series} in\n{metrics}"
            );
        }
        metrics
    }

    /// Every record of the dead-letter topic: they are acknowledged before their batch's
    /// offsets are committed, so after [`Poisoned::converge`] they are all there.
    fn letters(&self) -> Vec<Record> {
        self.dead_letters.read_records(Duration::from_secs(30))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_a_200_kb_key_with_a_10_mb_body_is_dead_lettered_cut_and_the_partition_moves_on() {
    let mut served = Poisoned::new("poison-key").await;
    let stream = orders::generate("order-", 20, 10, 14);
    // Kafka refuses a record over 1 MB: each of these, dead-lettered whole, would be retried
    // forever. One is refused by the decoder (too large), the other by the rule (unknown
    // status), so both of the pipeline's dead-letter paths carry the huge key.
    let huge_key = |fill: u8| vec![fill; 200 << 10];
    let too_large = format!(
        r#"{{"status":"paid","payload":"{}"}}"#,
        "x".repeat(10 << 20)
    )
    .into_bytes();
    let unknown_status = br#"{"status":"shipped","version":1}"#.to_vec();
    let poison = [
        (huge_key(b'k'), too_large),
        (huge_key(b'q'), unknown_status),
    ];
    let half = stream.events.len() / 2;
    served.topic.produce(&stream.events[..half]).await;
    served.topic.produce_keyed(&poison).await;
    served.topic.produce(&stream.events[half..]).await;

    let mut server = served.start();
    served.converge(&mut server, &stream.expected).await;
    served.assert_alive(&mut server).await;
    served
        .assert_metrics(&[
            ("converge_dead_letters_total{kind=\"undecodable\"}", 1),
            ("converge_dead_letters_total{kind=\"rejected\"}", 1),
            ("converge_messages_total", stream.events.len() + 2),
        ])
        .await;
    let letters = served.letters();
    server.terminate();

    assert_eq!(letters.len(), 2, "one dead letter per poison message");
    let letter_of = |key: &[u8]| {
        letters
            .iter()
            .find(|letter| {
                letter
                    .key
                    .as_deref()
                    .is_some_and(|cut| key.starts_with(cut))
            })
            .unwrap_or_else(|| panic!("no dead letter keyed by a prefix of {:?}…", key[0] as char))
    };
    for ((key, body), (kind, reason)) in poison.iter().zip([
        ("undecodable", "exceeds the limit"),
        ("rejected", "unknown status"),
    ]) {
        let letter = letter_of(key);
        let headers = &letter.headers;
        assert_eq!(headers["converge-kind"], kind);
        assert!(
            headers["converge-reason"].contains(reason),
            "{}",
            headers["converge-reason"]
        );
        assert_eq!(
            letter.key.as_ref().map(Vec::len),
            Some(16 << 10),
            "the key is cut to 16 KiB"
        );
        assert_eq!(
            headers["converge-key-truncated-from"],
            key.len().to_string()
        );
        assert!(
            headers["converge-position"].starts_with(&served.topic.name),
            "{headers:?}"
        );
        assert!(body.starts_with(&letter.body) && !letter.body.is_empty());
        if letter.body.len() < body.len() {
            assert_eq!(headers["converge-truncated-from"], body.len().to_string());
        } else {
            assert!(!headers.contains_key("converge-truncated-from"));
        }
    }
    let cut = letter_of(&poison[0].0);
    assert_eq!(
        cut.body.len(),
        converge::config::DEFAULT_MAX_BODY_BYTES,
        "the 10 MB body is cut to max_body_bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_a_10_mb_rule_reject_reason_is_cut_in_the_dead_letter_and_the_partition_moves_on() {
    let mut served = Poisoned::new("poison-reason").await;
    served.settings.rule = config::rule(&build::rule("huge-reason"));
    // Making and copying 10 MiB takes tens of milliseconds on a busy machine: room for it, so
    // the test is about the reason's size, not the rule's deadline.
    served.settings.rule.deadline_ms = 2_000;
    let stream = orders::generate("order-", 20, 10, 15);
    let poison: Vec<Event> = (1..=2)
        .map(|n| Event {
            key: format!("poison-{n}"),
            status: "poison".to_owned(),
            version: 1,
            timestamp_ms: 0,
            payload: "null".to_owned(),
        })
        .collect();
    let third = stream.events.len() / 3;
    served.topic.produce(&stream.events[..third]).await;
    served.topic.produce(&poison[..1]).await;
    served.topic.produce(&stream.events[third..2 * third]).await;
    served.topic.produce(&poison[1..]).await;
    served.topic.produce(&stream.events[2 * third..]).await;

    let mut server = served.start();
    served.converge(&mut server, &stream.expected).await;
    served.assert_alive(&mut server).await;
    served
        .assert_metrics(&[
            ("converge_dead_letters_total{kind=\"rejected\"}", 2),
            ("converge_decisions_total{decision=\"reject\"}", 2),
            ("converge_rule_info{rule=\"huge-reason@0.1.0\"}", 1),
            ("converge_messages_total", stream.events.len() + 2),
        ])
        .await;
    let letters = served.letters();
    server.terminate();

    assert_eq!(letters.len(), 2, "one dead letter per poison event");
    for event in &poison {
        let letter = letters
            .iter()
            .find(|letter| letter.key.as_deref() == Some(event.key.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter for {}", event.key));
        let headers = &letter.headers;
        assert_eq!(headers["converge-kind"], "rejected");
        assert_eq!(headers["converge-rule"], "huge-reason@0.1.0");
        let reason = &headers["converge-reason"];
        assert!(
            reason.len() <= MAX_REASON_BYTES,
            "reason of {} bytes",
            reason.len()
        );
        assert!(reason.starts_with("poison: xxx"), "{reason:.80}");
        assert!(
            reason.ends_with(&format!("(cut from {} bytes)", 10 << 20)),
            "the cut reason names its size: …{}",
            &reason[reason.len().saturating_sub(80)..]
        );
        let sent: Event = serde_json::from_slice(&letter.body).expect("the event, whole");
        assert_eq!(&sent, event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_an_order_api_streaming_1_gb_is_dead_lettered_as_too_large_in_bounded_memory() {
    /// The API's answer for the poison key: 1 GiB, chunked, generated as it is sent.
    const STREAMED: usize = 1 << 30;
    let mut served = Poisoned::new("poison-api").await;
    let api = OrderApi::start().await;
    let stream = orders::generate("order-", 20, 0, 16);
    api.serve_orders(&stream.expected);
    api.state
        .huge
        .lock()
        .expect("lock")
        .insert("order-endless".to_owned(), STREAMED);
    served.settings.enrich = Some(config::enrich(&format!("{}/orders/{{key}}", api.url)));
    // Id-only messages around the poison: each is completed from the API, so the good keys
    // converge only if the enrichment stage itself moved past the endless body.
    let id_only = |key: &str| format!(r#"{{"key":"{key}"}}"#).into_bytes();
    let keys: Vec<&String> = stream.expected.keys().collect();
    let (before, after) = keys.split_at(keys.len() / 2);
    let mut bodies: Vec<Vec<u8>> = before.iter().map(|key| id_only(key)).collect();
    bodies.push(id_only("order-endless"));
    bodies.extend(after.iter().map(|key| id_only(key)));
    served.topic.produce_raw("", &bodies).await;

    let mut server = served.start();
    served.converge(&mut server, &stream.expected).await;
    served.assert_alive(&mut server).await;
    served
        .assert_metrics(&[
            ("converge_dead_letters_total{kind=\"not_enriched\"}", 1),
            ("converge_messages_total", bodies.len()),
        ])
        .await;
    let peak = server.memory_bytes("VmHWM");
    let letters = served.letters();
    server.terminate();

    assert_eq!(letters.len(), 1, "only the endless answer is dead-lettered");
    let letter = &letters[0];
    assert_eq!(letter.headers["converge-kind"], "not_enriched");
    let reason = &letter.headers["converge-reason"];
    let limit = converge::pipeline::FieldMapping::default().max_message_bytes;
    assert!(
        reason.contains("order-endless") && reason.contains(&format!("over {limit} bytes")),
        "{reason}"
    );
    assert_eq!(letter.body, id_only("order-endless"));
    // Reading the answer whole would hold a gigabyte; a cap at max_message_bytes keeps serve
    // near its usual footprint.
    eprintln!("serve's peak resident memory: {} MiB", peak >> 20);
    assert!(
        peak < (STREAMED / 4) as u64,
        "serve peaked at {} MiB reading an answer of {} MiB",
        peak >> 20,
        STREAMED >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_redis_stream_dead_letters_beside_a_cluster_store_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = format!(
        "converge-test-poison-cluster-{:016x}",
        rand::random::<u64>()
    );
    let mut settings = config::kafka_serve(
        &topic,
        "unused",
        &format!("{topic}-group"),
        config::cluster_store(&unique_prefix("poison-cluster")),
    );
    settings.dead_letter =
        DeadLetterConfig::RedisStream(RedisStreamConfig::named(format!("{topic}:dead-letters")));
    let path = config::write(dir.path(), &settings);
    // Refused while validating, before connecting anywhere: seconds would be slow; a minute
    // means it started serving.
    let refused = Converge::new(&["serve", "--config"])
        .arg(&path)
        .within(Duration::from_secs(60))
        .output();
    let status = refused.status;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!status.success(), "serve exited {status}: {said}");
    assert!(
        said.contains("dead_letter.kind = \"redis-stream\"") && said.contains("Redis Cluster"),
        "the refusal names the combination: {said}"
    );
    // Nothing of the stream was written on the cluster.
    let stream_key = format!("{topic}:dead-letters");
    let mut cluster =
        redis::cluster::ClusterClient::new(converge_tests::services::redis_cluster_urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connects to the cluster");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&stream_key)
        .query_async(&mut cluster)
        .await
        .expect("EXISTS answers");
    assert_eq!(exists, 0, "{stream_key} exists");
}

/// A state key (without the prefix), a text its dead letters' reason must quote, and the
/// command that plants the unreadable value.
type Planted = (&'static str, Option<&'static str>, redis::Cmd);

/// A raw connection to the standalone Redis, for writing what converge never would.
async fn raw_redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects")
}

/// What is stored at `key`, whatever its type: (type, contents), to show it left untouched.
async fn raw_value(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query_async(connection)
        .await
        .expect("TYPE");
    let mut read = match kind.as_str() {
        "hash" => redis::cmd("HGETALL"),
        "string" => redis::cmd("GET"),
        "list" => redis::cmd("LRANGE"),
        other => panic!("{key} holds a {other}"),
    };
    read.arg(key);
    if kind == "list" {
        read.arg(0).arg(-1);
    }
    let contents: redis::Value = read.query_async(connection).await.expect("read");
    format!("{kind}: {contents:?}")
}

/// Stored values converge cannot read, planted at the state keys of `bad` before their events
/// arrive: each key's events are dead-lettered as `unreadable_state` quoting the value (when
/// `marker` is set, it must appear in the reason), the value is left as it was, a metric counts
/// them, and every other key converges with offsets at the end.
async fn unreadable_states_are_set_aside(test: &str, plant: impl Fn(&str) -> Vec<Planted>) {
    let mut served = Poisoned::new(test).await;
    let stream = orders::generate("order-", 30, 10, 17);
    let prefix = served.redis.store.prefix().to_owned();
    let plant = plant(&prefix);
    let mut connection = raw_redis().await;
    let mut planted = BTreeMap::new();
    for (key, _, command) in &plant {
        assert!(stream.expected.contains_key(*key), "{key} is in the stream");
        let _: () = command
            .clone()
            .query_async(&mut connection)
            .await
            .expect("planted");
        let value = raw_value(&mut connection, &format!("{prefix}{key}")).await;
        planted.insert(key.to_string(), value);
    }
    let bad = |key: &str| planted.contains_key(key);
    let expected: BTreeMap<String, Event> = stream
        .expected
        .iter()
        .filter(|(key, _)| !bad(key))
        .map(|(key, event)| (key.clone(), event.clone()))
        .collect();
    let poisoned = stream.events.iter().filter(|e| bad(&e.key)).count();
    served.topic.produce(&stream.events).await;

    let mut server = served.start();
    served.converge(&mut server, &expected).await;
    served.assert_alive(&mut server).await;
    let metrics = served
        .assert_metrics(&[
            (
                "converge_dead_letters_total{kind=\"unreadable_state\"}",
                poisoned,
            ),
            ("converge_messages_total", stream.events.len()),
        ])
        .await;
    let counted = metrics.value("converge_unreadable_states_total") as u64;
    assert!(
        counted >= planted.len() as u64,
        "converge_unreadable_states_total {counted} for {} unreadable keys",
        planted.len()
    );
    let letters = served.letters();
    server.terminate();

    for (key, value) in &planted {
        assert_eq!(
            &raw_value(&mut connection, &format!("{prefix}{key}")).await,
            value,
            "the unreadable value at {key} is left as it was"
        );
    }
    assert_eq!(
        letters.len(),
        poisoned,
        "one dead letter per event of a bad key"
    );
    for letter in &letters {
        let event: Event = serde_json::from_slice(&letter.body).expect("the event, whole");
        assert!(bad(&event.key), "{} was dead-lettered", event.key);
        let headers = &letter.headers;
        assert_eq!(headers["converge-kind"], "unreadable_state");
        let reason = &headers["converge-reason"];
        assert!(reason.contains("unreadable"), "{reason}");
        let (_, marker, _) = plant
            .iter()
            .find(|(key, _, _)| *key == event.key.as_str())
            .expect("planted");
        if let Some(marker) = marker {
            assert!(reason.contains(marker), "quotes the stored value: {reason}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_garbage_in_a_state_hash_is_dead_lettered_and_left_untouched() {
    unreadable_states_are_set_aside("poison-garbage", |prefix| {
        let hash = |key: &str, fields: &[(&str, &str)]| {
            let mut command = redis::cmd("HSET");
            command.arg(format!("{prefix}{key}")).arg(fields);
            command
        };
        let written_by = ("rule", "order-status@0.1.0");
        vec![
            (
                "order-3",
                Some("not-a-revision"),
                hash(
                    "order-3",
                    &[
                        ("rev", "not-a-revision"),
                        ("wid", "1"),
                        ("status", "paid"),
                        ("version", "2"),
                        ("timestamp_ms", "0"),
                        ("payload", "null"),
                        written_by,
                    ],
                ),
            ),
            (
                "order-7",
                Some("two-and-a-bit"),
                hash(
                    "order-7",
                    &[
                        ("rev", "4"),
                        ("wid", "1"),
                        ("status", "paid"),
                        ("version", "two-and-a-bit"),
                        ("timestamp_ms", "0"),
                        ("payload", "null"),
                        written_by,
                    ],
                ),
            ),
        ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_a_state_key_of_the_wrong_type_is_dead_lettered_and_left_untouched() {
    unreadable_states_are_set_aside("poison-wrongtype", |prefix| {
        let mut string = redis::cmd("SET");
        string
            .arg(format!("{prefix}order-4"))
            .arg("plain-string-not-a-hash");
        let mut list = redis::cmd("RPUSH");
        list.arg(format!("{prefix}order-8"))
            .arg("list-item-a")
            .arg("list-item-b");
        vec![
            ("order-4", Some("plain-string-not-a-hash"), string),
            ("order-8", None, list),
        ]
    })
    .await;
}

/// Issue 24, item 2: a fence the script and the loader read differently (`wid` "05" or "+5",
/// `rev` "01", a writer without a revision) conflicted on every write, so one such key made
/// `serve` exit, and every restart meet it again. Each is now unreadable: set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_a_non_canonical_fence_is_set_aside_and_serve_keeps_running() {
    unreadable_states_are_set_aside("wedge-fence", |prefix| {
        let hash = |key: &str, fence: &[(&str, &str)]| {
            let mut command = redis::cmd("HSET");
            command.arg(format!("{prefix}{key}")).arg(fence).arg(&[
                ("status", "created"),
                ("version", "1"),
                ("timestamp_ms", "0"),
                ("payload", "null"),
                ("rule", "order-status@0.1.0"),
            ]);
            command
        };
        vec![
            (
                "order-2",
                Some("\"05\""),
                hash("order-2", &[("rev", "1"), ("wid", "05")]),
            ),
            (
                "order-5",
                Some("\"+5\""),
                hash("order-5", &[("rev", "1"), ("wid", "+5")]),
            ),
            (
                "order-6",
                Some("\"01\""),
                hash("order-6", &[("rev", "01"), ("wid", "5")]),
            ),
            (
                "order-9",
                Some("wid=\"5\""),
                hash("order-9", &[("wid", "5")]),
            ),
        ]
    })
    .await;
}

/// Issue 24, item 12: a Kafka dead-letter topic that refuses a letter for good (here: larger
/// than the topic's `max.message.bytes`) was taken for an outage, so the partition waited
/// forever and said nothing useful. `serve` now stops, naming the topic and what to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_a_dead_letter_topic_that_refuses_for_good_stops_serve_naming_it() {
    let topic = TestTopic::create("wedge-dlq-refuses", 1).await;
    let dead_letters = TestTopic::create_replicated(
        &converge_tests::kafka::brokers(),
        "wedge-dlq-refuses-dlq",
        1,
        1,
        &[("max.message.bytes", "2048")],
    )
    .await;
    let served = Served::on(topic, dead_letters, "wedge-dlq-refuses").await;
    let (topic, dead_letters, group) = (&served.topic, &served.dead_letters, &served.group);
    let log = served.log(LOG);
    let mut server = served.start(LOG);
    // Not JSON, and larger than the dead-letter topic takes.
    topic.produce_raw("poison", &[vec![b'{'; 16 << 10]]).await;
    let status = server.exit_within(WITHIN).unwrap_or_else(|| {
        panic!(
            "serve kept waiting on a topic that refuses the letter; its log:\n{}",
            tail(&log)
        )
    });
    assert!(!status.success(), "serve stopped with an error");
    let log = tail(&log);
    assert!(
        log.contains(&dead_letters.name) && log.contains("refuses dead letters"),
        "the error names the topic:\n{log}"
    );
    // Nothing was acknowledged past the message whose letter could not be sent.
    assert_eq!(topic.progress(group), [(0, 1)], "the poison is read again");
}
