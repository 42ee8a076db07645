//! The Fluvio source against a real cluster. CI has no Fluvio cluster (its binaries are not on
//! crates.io), so the test is `#[ignore]`d, and a plain run reports it as ignored with its
//! reason; with a cluster, give its SC endpoint and ask for ignored tests:
//!
//! ```text
//! CONVERGE_TEST_FLUVIO=127.0.0.1:9003 cargo test --release -p converge-tests --test it fluvio:: -- --ignored
//! ```
//!
//! Run that way without `CONVERGE_TEST_FLUVIO`, it fails saying so. The source's gap checks,
//! commit bookkeeping and reconnects are tested without a cluster in
//! `host/src/source/fluvio/tests/`.
//!
//! 20,000 orders' shuffled, duplicated events (several megabytes per partition, past the
//! client's 1 MB fetch cap where the fluvio client skips records) go to a fresh three-partition
//! topic. `converge serve` reads them through the Fluvio source into Redis; it is killed
//! (SIGKILL) mid-stream and restarted, and the cluster's SPU is restarted under it. Then every
//! order must be on its final state, nothing may be dead-lettered, every record's position must
//! be committed, and `serve` must stop within 30 s of SIGTERM.
//!
//! The source reads with the client's default 1 MiB fetch, where the fluvio client cuts record
//! batches and skips the rest of them: the run converges only if every gap is caught and read
//! again (with the source of November, 106 of the 20,000 orders ended wrong).
//!
//! The SPU is restarted by `CONVERGE_TEST_FLUVIO_SPU_RESTART` (a shell command) when set, or
//! else by stopping the local `fluvio-run spu` process and starting it again with the same
//! command line, environment and directory (a cluster from `fluvio cluster start --local`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use converge::config::{
    Config, DeadLetterConfig, FluvioSourceConfig, RedisStreamConfig, SourceConfig,
};
use converge::entity::Event;
use converge::pipeline::PipelineConfig;
use converge_tests::process::Server;
use converge_tests::services::TestStore;
use converge_tests::{Convergence, build, config, orders};
use fluvio::metadata::topic::TopicSpec;

const ORDERS: usize = 20_000;
const PARTITIONS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Fluvio cluster, which CI lacks: run it with CONVERGE_TEST_FLUVIO=host:port \
            (the cluster's SC) and `-- --ignored`"]
async fn fluvio_source_converges_across_kills_and_an_spu_restart() {
    let endpoint = std::env::var("CONVERGE_TEST_FLUVIO").expect(
        "CONVERGE_TEST_FLUVIO=host:port names the Fluvio cluster's SC endpoint this test runs \
         against",
    );
    let fluvio = fluvio::Fluvio::connect_with_config(&fluvio::FluvioClusterConfig::new(&endpoint))
        .await
        .expect("the Fluvio cluster answers");
    let topic = format!("converge-test-{:016x}", rand::random::<u64>());
    let admin = fluvio.admin().await;
    admin
        .create(
            topic.clone(),
            false,
            TopicSpec::new_computed(PARTITIONS, 1, None),
        )
        .await
        .expect("topic created");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let redis = TestStore::standalone("fluvio").await;
    let stream = orders::generate("order-", ORDERS, 30, 31);
    // The first half is produced before `serve` starts, the second after the SPU restart: only
    // a source that reconnects reads it.
    let (first_half, second_half) = stream.events.split_at(stream.events.len() / 2);
    let bytes = produce(&fluvio, &topic, first_half).await + {
        let mut size = 0;
        for event in second_half {
            size += serde_json::to_vec(event).expect("serialises").len() + event.key.len();
        }
        size
    };
    assert!(
        bytes / PARTITIONS as usize > 2 << 20,
        "the stream must exceed the client's 1 MB fetch several times per partition \
         ({bytes} bytes)"
    );
    let total = stream.events.len() as i64;
    eprintln!("{total} records, {bytes} bytes, over {PARTITIONS} partitions of {topic}");

    let mut dir = tempfile::tempdir().expect("temp dir");
    let dead_letters = format!("{}dead-letters", redis.store.prefix());
    let consumer = format!("{topic}-consumer");
    let config = config::write(
        dir.path(),
        &Config {
            rule: config::rule(&build::rule("order-status")),
            source: SourceConfig::Fluvio(FluvioSourceConfig {
                // The client's default fetch, where it cuts batches and skips records: the gap
                // checks must catch every one (the default, 32 MiB, makes the cut rare).
                fetch_max_bytes: 1 << 20,
                ..config::fluvio_source(&endpoint, &topic, &consumer)
            }),
            store: config::standalone_store(redis.store.prefix()),
            dead_letter: DeadLetterConfig::RedisStream(RedisStreamConfig::named(
                dead_letters.clone(),
            )),
            enrich: None,
            admin: None,
            pipeline: PipelineConfig::default(),
        },
    );

    let committed = async || -> i64 {
        // The test's own client may be reconnecting after the SPU restart: ask again.
        for _ in 0..100 {
            if let Ok(offsets) = fluvio.consumer_offsets().await {
                return offsets
                    .iter()
                    .filter(|o| o.consumer_id == consumer && o.topic == topic)
                    .map(|o| o.offset + 1)
                    .sum();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("the cluster does not answer for consumer offsets");
    };
    let logs = dir.path().to_owned();
    let wait_for_commits = async |at_least: i64, what: &str| {
        let started = Instant::now();
        loop {
            let covered = committed().await;
            if covered >= at_least {
                return covered;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "{what}: committed offsets cover {covered} of {at_least} records; logs in {}",
                logs.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    // Killed as soon as it has committed anything: mid-stream.
    let mut first = Server::start(&config, &dir.path().join("first.log"));
    let covered = wait_for_commits(1, "before the kill").await;
    first.kill();
    eprintln!(
        "killed after {covered} of {} records were committed",
        first_half.len()
    );

    // Restarted, it reads the rest of the first half and waits at the end of each partition;
    // then the SPU goes away under its streams, comes back, and the second half is produced.
    let restarted = Server::start(&config, &dir.path().join("restarted.log"));
    wait_for_commits(first_half.len() as i64, "after the restart").await;
    restart_spu();
    produce(&fluvio, &topic, second_half).await;

    // Every order on its final state, and every record's position committed once its write is
    // acknowledged, the last ones too, and not one more: the committed offsets of the
    // partitions add up to the records.
    Convergence::new(&redis.store, &stream.expected)
        .within(Duration::from_secs(300))
        .every(Duration::from_millis(500))
        .logs(&mut dir)
        .wait_with_offsets(async || vec![(committed().await, total)])
        .await;
    restarted.terminate();
    // What the source caught: the client's skipped ranges (read again) and reconnects.
    for log in ["first.log", "restarted.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
        eprintln!(
            "{log}: {} skipped ranges read again, {} streams reopened after a failure",
            text.matches("the stream skipped records").count(),
            text.matches("reopening it where it stopped").count(),
        );
    }

    let mut connection = redis::Client::open(converge_tests::services::redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let letters: u64 = redis::cmd("XLEN")
        .arg(&dead_letters)
        .query_async(&mut connection)
        .await
        .expect("XLEN");
    assert_eq!(
        letters,
        0,
        "nothing in the stream is bad: no dead letters (a lost range would be one); logs in {}",
        dir.keep().display()
    );
    let _ = admin.delete::<TopicSpec>(topic).await;
}

/// Produces `events` keyed by order; returns their size in bytes. A new producer each time: the
/// SPU may have restarted since the last.
async fn produce(fluvio: &fluvio::Fluvio, topic: &str, events: &[Event]) -> usize {
    let mut bytes = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let producer = loop {
        match fluvio.topic_producer(topic).await {
            Ok(producer) => break producer,
            Err(error) if Instant::now() < deadline => {
                eprintln!("producer not ready yet: {error:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => panic!("producer: {error:#}"),
        }
    };
    for event in events {
        let body = serde_json::to_vec(event).expect("serialises");
        bytes += body.len() + event.key.len();
        producer.send(event.key.clone(), body).await.expect("sent");
    }
    producer.flush().await.expect("flushed");
    bytes
}

/// Restarts the cluster's SPU (see the module docs) and waits until it runs again.
fn restart_spu() {
    if let Ok(command) = std::env::var("CONVERGE_TEST_FLUVIO_SPU_RESTART") {
        let status = Command::new("sh")
            .args(["-c", &command])
            .status()
            .expect("the SPU restart command runs");
        assert!(status.success(), "the SPU restart command failed: {status}");
        return;
    }
    let pid = local_spu().expect(
        "no local `fluvio-run spu` process to restart; set CONVERGE_TEST_FLUVIO_SPU_RESTART",
    );
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let args: Vec<String> = std::fs::read(proc.join("cmdline"))
        .expect("the SPU's command line")
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    let env: Vec<(String, String)> = std::fs::read(proc.join("environ"))
        .expect("the SPU's environment")
        .split(|b| *b == 0)
        .filter_map(|pair| {
            let pair = String::from_utf8_lossy(pair);
            let (name, value) = pair.split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();
    let cwd = std::fs::read_link(proc.join("cwd")).expect("the SPU's directory");
    let executable = std::fs::read_link(proc.join("exe")).expect("the SPU's executable");
    eprintln!("restarting the SPU (pid {pid}): {}", args.join(" "));
    let signal = |name: &str| {
        Command::new("kill")
            .args([name, &pid.to_string()])
            .status()
            .expect("kill runs")
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    while proc.exists() {
        if Instant::now() > deadline {
            signal("-KILL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::env::temp_dir().join(format!("converge-test-spu-{pid}.log"));
    // Started by a shell that returns at once: the SPU outlives the test, like the cluster.
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null &"#)
        .arg("sh")
        .arg(&log)
        .arg(executable)
        .args(&args[1..])
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .status()
        .expect("the SPU starts again");
    assert!(status.success(), "the SPU did not start again: {status}");
    // Back when its public port answers (`-p host:port`), plus time to register with the SC.
    let port = args
        .windows(2)
        .find(|pair| pair[0] == "-p" || pair[0] == "--public-server")
        .and_then(|pair| pair[1].rsplit(':').next()?.parse::<u16>().ok())
        .unwrap_or(9010);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the SPU did not come back on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("SPU restarted; its log is {}", log.display());
}

/// The pid of the local cluster's SPU process, if there is one.
fn local_spu() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.first().is_some_and(|exe| exe.ends_with(b"fluvio-run"))
                    && args.get(1).is_some_and(|arg| *arg == b"spu")
            })
        })
}
