//! The real Kafka broker the tests use (started by `deploy/scripts/kafka.sh`): topics under
//! unique names, producing, reading a topic to its end, and a group's committed offsets;
//! [`PrivateKafka`], a broker of one test's own that it may kill and restart; and
//! [`KafkaCluster`], the shared three-node cluster of `kafka.sh --cluster 3`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use converge::entity::Event;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The broker; `CONVERGE_TEST_KAFKA` overrides.
pub fn brokers() -> String {
    std::env::var("CONVERGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// One record as read back: key, body and headers (values as lossy UTF-8).
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// A topic with a unique name, deleted when dropped.
#[derive(Debug)]
pub struct TestTopic {
    pub name: String,
    pub partitions: i32,
    /// The broker it lives on.
    brokers: String,
}

impl TestTopic {
    /// A topic on the tests' Kafka ([`brokers`]).
    pub async fn create(test: &str, partitions: i32) -> Self {
        Self::create_on(&brokers(), test, partitions).await
    }

    /// A topic on the Kafka at `brokers` (a [`PrivateKafka`], say); everything done with it
    /// goes there.
    pub async fn create_on(brokers: &str, test: &str, partitions: i32) -> Self {
        Self::create_replicated(brokers, test, partitions, 1, &[]).await
    }

    /// A topic on the Kafka at `brokers` (a [`KafkaCluster`], say) with `replication` replicas
    /// of each partition and the topic configuration `settings` (`min.insync.replicas`, say).
    pub async fn create_replicated(
        brokers: &str,
        test: &str,
        partitions: i32,
        replication: i32,
        settings: &[(&str, &str)],
    ) -> Self {
        let name = format!("converge-test-{test}-{:016x}", rand::random::<u64>());
        let admin: AdminClient<DefaultClientContext> =
            client(brokers).create().expect("admin client");
        let mut topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(replication));
        for (setting, value) in settings {
            topic = topic.set(setting, value);
        }
        let results = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .unwrap_or_else(|error| {
                panic!("Kafka at {brokers} (start it with deploy/scripts/kafka.sh): {error}")
            });
        for result in results {
            result.unwrap_or_else(|(topic, error)| panic!("creating topic {topic}: {error}"));
        }
        Self {
            name,
            partitions,
            brokers: brokers.to_owned(),
        }
    }

    /// The broker the topic lives on.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Produces each event keyed by its key (so one key stays in one partition), in order.
    pub async fn produce(&self, events: &[Event]) {
        let producer: FutureProducer = client(&self.brokers)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let sends = events.iter().map(|event| {
            let body = serde_json::to_vec(event).expect("serialises");
            let producer = &producer;
            let topic = self.name.as_str();
            let key = event.key.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&body),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(error, _)| error)
            }
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.expect("delivered");
        }
    }

    /// Produces each event keyed by its key into the partition `partition` chooses for it
    /// (`None`: the key's, as [`TestTopic::produce`] does; `Some(p)`: partition `p`, whatever
    /// the key, as a producer partitioning by anything else would), acknowledged by every
    /// in-sync replica (`acks=all`, idempotent: a retry after a broker failure is neither lost
    /// nor doubled). A partition without a leader, or with fewer in-sync replicas than its
    /// `min.insync.replicas`, is waited for (the client retries, for up to two minutes) rather
    /// than failing the test. Answers where each event was stored: (partition, offset).
    pub async fn produce_acked(
        &self,
        events: &[Event],
        mut partition: impl FnMut(&Event) -> Option<i32>,
    ) -> Vec<(i32, i64)> {
        let producer: FutureProducer = client(&self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .create()
            .expect("producer");
        let sends: Vec<_> = events
            .iter()
            .map(|event| {
                let body = serde_json::to_vec(event).expect("serialises");
                let chosen = partition(event);
                let producer = &producer;
                let topic = self.name.as_str();
                let key = event.key.clone();
                async move {
                    let mut record = FutureRecord::to(topic).key(&key).payload(&body);
                    if let Some(chosen) = chosen {
                        record = record.partition(chosen);
                    }
                    producer
                        .send(record, Duration::from_secs(120))
                        .await
                        .map_err(|(error, _)| error)
                }
            })
            .collect();
        futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|delivery| {
                let delivery = delivery.expect("delivered");
                (delivery.partition, delivery.offset)
            })
            .collect()
    }

    /// The leader of each partition (`-1`: none right now), by partition, from the metadata of
    /// whichever broker answers; one that does not (down, or slow on a busy machine) is asked
    /// again, for up to a minute.
    pub fn leaders(&self) -> Vec<i32> {
        let consumer: BaseConsumer = client(&self.brokers).create().expect("consumer");
        let metadata = patiently("metadata", || {
            consumer.fetch_metadata(Some(&self.name), Duration::from_secs(10))
        });
        let topic = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == self.name)
            .expect("the topic in its metadata");
        let mut leaders = vec![-1; usize::try_from(self.partitions).expect("partitions")];
        for partition in topic.partitions() {
            if let Some(slot) = usize::try_from(partition.id())
                .ok()
                .and_then(|id| leaders.get_mut(id))
            {
                *slot = partition.leader();
            }
        }
        leaders
    }

    /// Produces raw bodies (for bad input), keyed by `key`.
    pub async fn produce_raw(&self, key: &str, bodies: &[Vec<u8>]) {
        let records: Vec<(Vec<u8>, Vec<u8>)> = bodies
            .iter()
            .map(|body| (key.as_bytes().to_vec(), body.clone()))
            .collect();
        self.produce_keyed(&records).await;
    }

    /// Produces raw (key, body) records, each under its own key (a key too large for a dead
    /// letter, say).
    pub async fn produce_keyed(&self, records: &[(Vec<u8>, Vec<u8>)]) {
        // Room for the 10 MB messages of the bad-input tests (the broker allows 16 MiB).
        let producer: FutureProducer = client(&self.brokers)
            .set("message.max.bytes", "16777216")
            .create()
            .expect("producer");
        for (key, body) in records {
            producer
                .send(
                    FutureRecord::to(&self.name).key(key).payload(body),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(error, _)| error)
                .expect("delivered");
        }
    }

    /// Reads every record of the topic, from the start of each partition to its end as it is
    /// now: (body, headers) each. Panics unless it reaches the end of every partition within
    /// `timeout`, so an empty answer means the topic is empty, not that nothing was read.
    pub fn read_all(&self, timeout: Duration) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
        self.read_records(timeout)
            .into_iter()
            .map(|record| (record.body, record.headers))
            .collect()
    }

    /// [`TestTopic::read_all`] with each record's key.
    pub fn read_records(&self, timeout: Duration) -> Vec<Record> {
        let consumer: BaseConsumer = client(&self.brokers)
            .set("group.id", format!("{}-reader", self.name))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut partitions = TopicPartitionList::new();
        // The next offset to read and the end, per partition.
        let mut progress: Vec<(i64, i64)> = Vec::new();
        for partition in 0..self.partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.name, partition, Duration::from_secs(10))
                .expect("watermarks");
            partitions
                .add_partition_offset(&self.name, partition, Offset::Beginning)
                .expect("partition");
            progress.push((low, high));
        }
        consumer.assign(&partitions).expect("assigned");
        let deadline = std::time::Instant::now() + timeout;
        let mut records = Vec::new();
        while progress.iter().any(|(next, end)| next < end) {
            assert!(
                std::time::Instant::now() < deadline,
                "read {} records of {} but not to the end of every partition within {timeout:?}: \
                 (next, end) {progress:?}",
                records.len(),
                self.name
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = match message {
                Ok(message) => message,
                // A broker bounced by a test running beside this one (t3_full): the client
                // reconnects by itself, and the deadline above catches one that never returns.
                Err(KafkaError::MessageConsumption(_)) => continue,
                Err(error) => panic!("record: {error}"),
            };
            let partition = usize::try_from(message.partition()).expect("a partition index");
            progress[partition].0 = message.offset() + 1;
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                key: message.key().map(<[u8]>::to_vec),
                body: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        records
    }

    /// Panics unless the topic holds nothing: a marker is produced and must be all a read to
    /// the end finds (a read that saw nothing would not prove the topic was read at all).
    /// For a dead-letter topic that must have stayed empty.
    pub async fn assert_empty(&self) {
        let marker = format!("end of {} {:016x}", self.name, rand::random::<u64>());
        self.produce_raw("marker", &[marker.clone().into_bytes()])
            .await;
        let records: Vec<String> = self
            .read_all(Duration::from_secs(30))
            .into_iter()
            .map(|(body, _)| String::from_utf8_lossy(&body).into_owned())
            .collect();
        assert_eq!(
            records,
            [marker],
            "{} holds records (dead letters?), or was not read",
            self.name
        );
    }

    /// (committed offset of `group`, high watermark) per partition.
    pub fn progress(&self, group: &str) -> Vec<(i64, i64)> {
        let consumer: BaseConsumer = client(&self.brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut partitions = TopicPartitionList::new();
        for partition in 0..self.partitions {
            partitions.add_partition(&self.name, partition);
        }
        let committed = consumer
            .committed_offsets(partitions, Duration::from_secs(10))
            .expect("committed offsets");
        (0..self.partitions)
            .map(|partition| {
                let offset = match committed
                    .find_partition(&self.name, partition)
                    .map(|p| p.offset())
                {
                    Some(Offset::Offset(offset)) => offset,
                    _ => 0,
                };
                let (_, high) = consumer
                    .fetch_watermarks(&self.name, partition, Duration::from_secs(10))
                    .expect("watermarks");
                (offset, high)
            })
            .collect()
    }
}

impl Drop for TestTopic {
    fn drop(&mut self) {
        let name = self.name.clone();
        let brokers = self.brokers.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin: AdminClient<DefaultClientContext> =
                    client(&brokers).create().map_err(std::io::Error::other)?;
                // Bounded: a private broker may be gone already.
                let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
                let _ = admin.delete_topics(&[&name], &options).await;
                Ok::<(), std::io::Error>(())
            })
        })
        .join();
    }
}

/// A single-node Kafka of one test's own, which the test may kill and restart: started by
/// `deploy/scripts/kafka.sh` in the foreground (`KAFKA_FOREGROUND=1`), so the process is the
/// test's child, on a free port pair (the controller on the port after the broker's). Its data
/// and log live in `$CONVERGE_HOME/kafka-{port}`, beside the jars the script installed, and are
/// deleted on drop — kept, with their path printed, when the test is failing.
#[derive(Debug)]
pub struct PrivateKafka {
    pub port: u16,
    instance: PathBuf,
    process: Option<Child>,
}

impl PrivateKafka {
    /// Starts a fresh broker and waits until it answers.
    pub fn start() -> Self {
        let port = free_port_pair();
        let instance = converge_home().join(format!("kafka-{port}"));
        // Left by an earlier run that died: nothing listens on the port, so nothing uses it.
        let _ = std::fs::remove_dir_all(&instance);
        let mut kafka = Self {
            port,
            instance,
            process: None,
        };
        kafka.restart();
        kafka
    }

    /// `bootstrap.servers` for it.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log, appended to by every start.
    pub fn log(&self) -> PathBuf {
        self.instance.join("kafka.log")
    }

    /// Starts the broker (again) on the same port and data, and waits until it answers a
    /// metadata request naming itself.
    pub fn restart(&mut self) {
        assert!(
            self.process.is_none(),
            "the private Kafka is running already"
        );
        let script = crate::build::workspace_root().join("deploy/scripts/kafka.sh");
        let process = Command::new("bash")
            .arg(&script)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_FOREGROUND", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{} starts: {error}", script.display()));
        self.process = Some(process);
        // A JVM, and the first time two more to format the storage, on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.process.as_mut().and_then(|p| p.try_wait().transpose());
            if let Some(status) = status {
                self.process = None;
                panic!(
                    "the private Kafka on port {} exited ({status:?}); see {}",
                    self.port,
                    self.log().display()
                );
            }
            if answers(&self.brokers()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private Kafka on port {} did not answer within 120 s; see {}",
                self.port,
                self.log().display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGKILL: no controlled shutdown; clients see connections refused until [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "the private Kafka's data and log are kept in {}",
                self.instance.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.instance);
        }
    }
}

/// The N-node Kafka cluster of `deploy/scripts/kafka.sh --cluster N` (KRaft, every node broker
/// and controller) on loopback, shared like the single broker: [`KafkaCluster::ensure`] starts
/// what is not running and leaves it running. Node `i` (1..=N, its `node.id`) listens on
/// `KAFKA_CLUSTER_PORT + i - 1` (default 9192) and keeps its pid in
/// `$CONVERGE_HOME/kafka-cluster-{port}/kafka.pid`, where a test finds it to kill it.
#[derive(Debug)]
pub struct KafkaCluster {
    nodes: i32,
    base: u16,
}

impl KafkaCluster {
    /// Starts the cluster's nodes that are not running (none, when it runs) and waits until
    /// every node is in the cluster's metadata.
    pub fn ensure(nodes: i32) -> Self {
        let base = std::env::var("KAFKA_CLUSTER_PORT")
            .ok()
            .map_or(9192, |port| {
                port.parse().expect("KAFKA_CLUSTER_PORT is a port")
            });
        let cluster = Self { nodes, base };
        cluster.script(None);
        cluster.wait_for_nodes(1..=nodes);
        cluster
    }

    /// `bootstrap.servers`: every node.
    pub fn brokers(&self) -> String {
        (1..=self.nodes)
            .map(|node| format!("127.0.0.1:{}", self.port(node)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `node`'s broker port.
    pub fn port(&self, node: i32) -> u16 {
        self.base + u16::try_from(node - 1).expect("a node number from 1")
    }

    /// Node `node`'s directory: data, `kafka.log`, `kafka.pid`.
    pub fn dir(&self, node: i32) -> PathBuf {
        converge_home().join(format!("kafka-cluster-{}", self.port(node)))
    }

    /// SIGKILL to node `node` (no controlled shutdown: its leaderships move only once the
    /// controllers miss its heartbeats); returns once its port refuses connections.
    pub fn kill(&self, node: i32) {
        let pid_file = self.dir(node).join("kafka.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|error| panic!("{}: {error}", pid_file.display()));
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -KILL {} (node {node})", pid.trim());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port(node)));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "node {node} still listens 30 s after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `node` again (on its data) and waits until it is in the cluster's metadata.
    pub fn restart(&self, node: i32) {
        self.script(Some(node));
        self.wait_for_nodes(node..=node);
    }

    fn script(&self, node: Option<i32>) {
        let script = crate::build::workspace_root().join("deploy/scripts/kafka.sh");
        let mut command = Command::new("bash");
        command
            .arg(&script)
            .args(["--cluster", &self.nodes.to_string()])
            .env("KAFKA_CLUSTER_PORT", self.base.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(node) = node {
            command.args(["--node", &node.to_string()]);
        }
        let status = command
            .status()
            .unwrap_or_else(|error| panic!("{} runs: {error}", script.display()));
        assert!(
            status.success(),
            "{} --cluster {} failed ({status}); see {}",
            script.display(),
            self.nodes,
            converge_home().display()
        );
    }

    /// Waits until the metadata names each of `nodes` as a broker.
    fn wait_for_nodes(&self, nodes: std::ops::RangeInclusive<i32>) {
        let consumer: BaseConsumer = client(&self.brokers()).create().expect("consumer");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let known: Vec<i32> = consumer
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|metadata| metadata.brokers().iter().map(|b| b.id()).collect())
                .unwrap_or_default();
            if nodes.clone().all(|node| known.contains(&node)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster's metadata names brokers {known:?}, not all of {nodes:?}, after \
                 120 s; see the logs in {}/kafka-cluster-*",
                converge_home().display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `ask`'s answer, asked again while it fails, for up to a minute; then a panic naming `what`.
fn patiently<T>(what: &str, mut ask: impl FnMut() -> Result<T, KafkaError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ask() {
            Ok(answer) => return answer,
            Err(error) if Instant::now() < deadline => {
                eprintln!("{what}: {error}; asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => panic!("{what}: {error}, for a minute"),
        }
    }
}

/// Where `deploy/scripts/*.sh` keep services: `$CONVERGE_HOME`, default `~/.cache/converge`.
fn converge_home() -> PathBuf {
    match std::env::var_os("CONVERGE_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/converge"),
    }
}

/// A port free now whose next port is free too. Below Linux's ephemeral range (32768 and up)
/// so that no client connection takes one as its local port while the broker is down.
fn free_port_pair() -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..1_000 {
        let port = rand::random_range(20_000..32_000);
        if free(port) && free(port + 1) {
            return port;
        }
    }
    panic!("no two consecutive free loopback ports in 20000..32000");
}

/// Whether the broker at `brokers` answers a metadata request naming a broker.
fn answers(brokers: &str) -> bool {
    // A refused connection answers at once, without a client's threads.
    let listening = brokers
        .parse::<std::net::SocketAddr>()
        .map(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        .unwrap_or(true);
    if !listening {
        return false;
    }
    let Ok(consumer) = client(brokers).create::<BaseConsumer>() else {
        return false;
    };
    consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .is_ok_and(|metadata| !metadata.brokers().is_empty())
}
