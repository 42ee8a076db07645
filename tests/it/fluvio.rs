//! The Fluvio source against a real cluster, when one is given: `CONVERGE_TEST_FLUVIO=host:port`
//! (the cluster's SC endpoint). CI has no Fluvio cluster (its binaries are not on crates.io),
//! so there the test says so and returns; the source's gap checks, commit bookkeeping and
//! reconnects are tested without a cluster in `host/src/fluvio_source/tests.rs`.
//!
//! 20,000 orders' shuffled, duplicated events (several megabytes per partition, past the
//! client's 1 MB fetch cap where the fluvio client skips records) go to a fresh three-partition
//! topic. `converge serve` reads them through the Fluvio source into Redis; it is killed
//! (SIGKILL) mid-stream and restarted, and the cluster's SPU is restarted under it. Then every
//! order must be on its final state, nothing may be dead-lettered, every record's position must
//! be committed, and `serve` must stop within 30 s of SIGTERM.
//!
//! The SPU is restarted by `CONVERGE_TEST_FLUVIO_SPU_RESTART` (a shell command) when set, or
//! else by stopping the local `fluvio-run spu` process and starting it again with the same
//! command line, environment and directory (a cluster from `fluvio cluster start --local`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use converge_tests::services::TestStore;
use converge_tests::{build, orders, stored_states};
use fluvio::metadata::topic::TopicSpec;

use crate::kafka::{serve, terminate};

const ORDERS: usize = 20_000;
const PARTITIONS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluvio_source_converges_across_kills_and_an_spu_restart() {
    let Ok(endpoint) = std::env::var("CONVERGE_TEST_FLUVIO") else {
        eprintln!("no Fluvio cluster given (CONVERGE_TEST_FLUVIO=host:port); not run");
        return;
    };
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
    let producer = fluvio.topic_producer(&topic).await.expect("producer");
    let mut bytes = 0;
    for event in &stream.events {
        let body = serde_json::to_vec(event).expect("serialises");
        bytes += body.len() + event.key.len();
        producer.send(event.key.clone(), body).await.expect("sent");
    }
    producer.flush().await.expect("flushed");
    assert!(
        bytes / PARTITIONS as usize > 2 << 20,
        "the stream must exceed the client's 1 MB fetch several times per partition \
         ({bytes} bytes)"
    );
    let total = stream.events.len() as i64;
    eprintln!("{total} records, {bytes} bytes, over {PARTITIONS} partitions of {topic}");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("converge.toml");
    let dead_letters = format!("{}dead-letters", redis.store.prefix());
    std::fs::write(
        &config,
        format!(
            r#"
[rule]
path = "{rule}"
[source]
kind = "fluvio"
endpoint = "{endpoint}"
topic = "{topic}"
consumer = "{topic}-consumer"
[store]
kind = "redis"
url = "{redis}"
prefix = "{prefix}"
[dead_letter]
kind = "redis-stream"
stream = "{dead_letters}"
"#,
            rule = build::rule("order-status").display(),
            redis = converge_tests::services::redis_url(),
            prefix = redis.store.prefix(),
        ),
    )
    .expect("config written");

    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let logs = dir.path().to_owned();
    let wait_for_keys = async |count: usize, what: &str| {
        let started = Instant::now();
        while stored_states(&redis.store, &keys).await.len() < count {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no progress {what}; logs in {}",
                logs.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let mut first = serve(&config, &dir.path().join("first.log"));
    wait_for_keys(ORDERS / 10, "before the kill").await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");

    let restarted = serve(&config, &dir.path().join("restarted.log"));
    wait_for_keys(ORDERS / 3, "after the restart").await;
    restart_spu();

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stored = stored_states(&redis.store, &keys).await;
        if stored == stream.expected {
            break;
        }
        if Instant::now() > deadline {
            let wrong = stream
                .expected
                .iter()
                .filter(|(key, event)| stored.get(*key).is_none_or(|state| state != *event))
                .count();
            panic!(
                "{wrong} of {ORDERS} orders not on their final state; logs in {}",
                dir.keep().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every record's position is committed once its write is acknowledged, the last ones too,
    // and not one more: the committed offsets of the partitions add up to the records.
    let consumer = format!("{topic}-consumer");
    let committed = |offsets: &[fluvio::consumer::ConsumerOffset]| -> i64 {
        offsets
            .iter()
            .filter(|o| o.consumer_id == consumer && o.topic == topic)
            .map(|o| o.offset + 1)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = match fluvio.consumer_offsets().await {
            Ok(offsets) => offsets,
            // The test's own client may still be reconnecting after the SPU restart.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(error) => panic!("consumer offsets: {error:#}"),
        };
        if committed(&offsets) == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets cover {} of {total} records",
            committed(&offsets)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    terminate(restarted);

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
    Command::new(executable)
        .args(&args[1..])
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("SPU log"))
        .stderr(std::fs::File::create(&log).expect("SPU log"))
        .spawn()
        .expect("the SPU starts again");
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
