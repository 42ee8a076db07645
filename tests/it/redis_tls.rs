//! Redis over TLS with an ACL user: `converge serve` reaches a TLS-only server through a
//! `rediss://user:${PASSWORD}@host:port` URL, the password taken from the environment and the
//! server's certificate checked against the CA named by `SSL_CERT_FILE`. An untrusted
//! certificate or a wrong password stops it at start-up with exit 2 and the reason.

use std::path::Path;
use std::process::Output;

use converge::config::{
    Config, DeadLetterConfig, FileSourceConfig, RedisStreamConfig, SourceConfig,
};
use converge::pipeline::PipelineConfig;
use converge::store::RedisStore;
use converge_tests::process::Converge;
use converge_tests::services::{PrivateRedis, unique_prefix};
use converge_tests::{build, config, orders, stored_states};

const USER: &str = "converge";
const PASSWORD: &str = "tls-test-s3cret";

fn serve_file(config: &Path, ca: Option<&Path>, password: &str) -> Output {
    let command = Converge::new(&["serve", "--config"])
        .arg(config)
        .env("CONVERGE_TEST_REDIS_PASSWORD", password);
    match ca {
        Some(ca) => command.env("SSL_CERT_FILE", ca),
        None => command.env_remove("SSL_CERT_FILE"),
    }
    .output()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_over_tls_as_an_acl_user() {
    let redis = PrivateRedis::start_tls(USER, PASSWORD);
    let ca = redis.dir.path().join("ca.pem");
    let prefix = unique_prefix("tls");
    let stream = orders::generate("order-", 200, 20, 8);
    let input = redis.dir.path().join("orders.jsonl");
    std::fs::write(&input, stream.to_json_lines() + "{not json\n").expect("input written");
    // The password stays out of the file: `serve` expands `${NAME}` from its environment.
    let config = config::write(
        redis.dir.path(),
        &Config {
            rule: config::rule(&build::rule("order-status")),
            source: SourceConfig::File(FileSourceConfig { path: input }),
            store: config::redis_store(
                &format!(
                    "rediss://{USER}:${{CONVERGE_TEST_REDIS_PASSWORD}}@127.0.0.1:{}",
                    redis.port
                ),
                &prefix,
            ),
            dead_letter: DeadLetterConfig::RedisStream(RedisStreamConfig::named(format!(
                "{prefix}dead-letters"
            ))),
            enrich: None,
            admin: None,
            pipeline: PipelineConfig::default(),
        },
    );

    let untrusted = serve_file(&config, None, PASSWORD);
    assert_eq!(untrusted.status.code(), Some(2), "{untrusted:?}");
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("cannot open the store"),
        "{untrusted:?}"
    );
    let refused = serve_file(&config, Some(&ca), "wrong-password");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    let served = serve_file(&config, Some(&ca), PASSWORD);
    assert!(served.status.success(), "{served:?}");

    // The test reads back over TLS too, without checking the certificate this time.
    let reader = RedisStore::connect(
        &format!(
            "rediss://{USER}:{PASSWORD}@127.0.0.1:{}/#insecure",
            redis.port
        ),
        &prefix,
    )
    .await
    .expect("connects over TLS");
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    assert_eq!(stored_states(&reader, &keys).await, stream.expected);
    let client = redis::Client::open(format!(
        "rediss://{USER}:{PASSWORD}@127.0.0.1:{}/#insecure",
        redis.port
    ))
    .expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let dead_letters: u64 = redis::cmd("XLEN")
        .arg(format!("{prefix}dead-letters"))
        .query_async(&mut connection)
        .await
        .expect("XLEN");
    assert_eq!(
        dead_letters, 1,
        "the bad line is dead-lettered on the TLS server"
    );
}
