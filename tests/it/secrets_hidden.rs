//! No password of a URL reaches what converge prints: the fleet commands against an
//! unreachable or refusing Redis, `--help`, `serve` failing at a store, a cluster or a fleet
//! it cannot reach or log into, a configuration error quoting a URL, and a `serve` at
//! `RUST_LOG=debug` that logs into its store and fleet and dead-letters through an order API
//! with credentials in its URL.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use converge::config::FleetConfig;
use converge::config::{OnUnavailable, RedisClusterConfig, StoreConfig};
use converge_tests::build;
use converge_tests::config;
use converge_tests::process::Converge;
use converge_tests::process::StdinServe;
use converge_tests::services::{PrivateRedis, free_loopback_addr, unique_prefix};

/// `converge ARGS` at `RUST_LOG=debug` (what a secret would leak through), with `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> Converge {
    Converge::new(args)
        .env("RUST_LOG", "debug")
        .envs(env)
        .within(Duration::from_secs(120))
}

fn converge(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output()
}

/// Everything `output` printed, with `what` for failure messages.
fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_hidden(text: &str, secret: &str, what: &str) {
    assert!(
        !text.contains(secret),
        "{what} printed the password:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_password_never_appears_in_output() {
    let password = format!("Pw{:016x}Zq", rand::random::<u64>());
    let wrong = format!("Wr{:016x}Zq", rand::random::<u64>());
    let redis = PrivateRedis::start_with_password(&password);
    let closed = free_loopback_addr().port();
    let dir = tempfile::tempdir().expect("temp dir");
    let rule = build::rule("order-status");
    let rule = rule.to_str().expect("a UTF-8 path");
    let fleet = format!("supply-secrets-{:08x}", rand::random::<u32>());

    // The fleet commands, against a Redis that is not there and one that refuses the password.
    for url in [
        format!("redis://:{password}@127.0.0.1:{closed}"),
        format!("redis://converge:{password}@127.0.0.1:{closed}"),
        format!("redis://:{wrong}@127.0.0.1:{}", redis.port),
    ] {
        let secret = if url.contains(&wrong) {
            &wrong
        } else {
            &password
        };
        for command in [
            vec!["rule", "status", "--redis", &url, "--fleet", &fleet],
            vec!["rule", "promote", "--redis", &url, "--fleet", &fleet],
            vec!["rule", "rollback", "--redis", &url, "--fleet", &fleet],
            vec!["rule", "publish", rule, "--redis", &url, "--fleet", &fleet],
        ] {
            let output = converge(&command, &[]);
            let text = printed(&output);
            assert!(!output.status.success(), "{command:?}: {text}");
            assert_hidden(&text, secret, &format!("{command:?}"));
            if url.contains(&closed.to_string()) {
                assert!(text.contains(":***@127.0.0.1"), "{command:?}: {text}");
            }
        }
        // Through the environment, and in `--help`, which shows the variable's value.
        let output = converge(
            &["rule", "status", "--fleet", &fleet],
            &[("CONVERGE_FLEET_REDIS", &url)],
        );
        assert!(!output.status.success());
        assert_hidden(
            &printed(&output),
            secret,
            "rule status from the environment",
        );
        let output = converge(
            &["rule", "status", "--help"],
            &[("CONVERGE_FLEET_REDIS", &url)],
        );
        assert!(output.status.success());
        assert_hidden(&printed(&output), secret, "rule status --help");
    }

    // `serve` failing at a store or a fleet that refuses its password, and waiting for a store
    // or a cluster that is not there: what it prints meanwhile never holds the password.
    let prefix = unique_prefix("supply-secrets");
    let store_at = |url: &str| config::redis_store(url, &prefix);
    let failing = [
        (
            "store refusing the password",
            config::stdin_serve(
                store_at(&format!("redis://:{wrong}@127.0.0.1:{}", redis.port)),
                &prefix,
                None,
            ),
            &wrong,
            false,
        ),
        (
            "store not there",
            config::stdin_serve(
                store_at(&format!("redis://:{password}@127.0.0.1:{closed}")),
                &prefix,
                None,
            ),
            &password,
            true,
        ),
        (
            "cluster not there",
            // Redis-stream dead letters are refused beside a cluster: Kafka ones, never
            // reached, as the store fails first.
            config::kafka_serve(
                "unused",
                "unused",
                "unused",
                StoreConfig::RedisCluster(RedisClusterConfig {
                    urls: vec![format!("redis://:{password}@127.0.0.1:{closed}")],
                    common: converge::config::RedisStoreCommon {
                        prefix: prefix.clone(),
                        timeout_ms: converge::config::DEFAULT_STORE_TIMEOUT_MS,
                        wait_replicas: 0,
                        wait_timeout_ms: converge::config::DEFAULT_WAIT_TIMEOUT_MS,
                    },
                }),
            ),
            &password,
            true,
        ),
        (
            "fleet refusing the password",
            {
                let mut settings = config::stdin_serve(
                    store_at(&format!("redis://:{password}@127.0.0.1:{}", redis.port)),
                    &prefix,
                    None,
                );
                settings.rule.fleet = Some(FleetConfig {
                    redis: format!("redis://:{wrong}@127.0.0.1:{}", redis.port),
                    name: fleet.clone(),
                    instance: None,
                    allow_unsigned: true,
                });
                settings
            },
            &wrong,
            false,
        ),
    ];
    for (what, settings, secret, waits) in failing {
        let config = write_config(dir.path(), what, &settings);
        let args = ["serve", "--config", path(&config)];
        let text = if waits {
            let output = command(&args, &[])
                .within(Duration::from_secs(60))
                .output_once_logged("unavailable; retrying");
            printed(&output)
        } else {
            let output = converge(&args, &[]);
            let text = printed(&output);
            assert_eq!(output.status.code(), Some(2), "{what}: {text}");
            text
        };
        assert_hidden(&text, secret, what);
    }

    // A configuration error quoting a URL, and a file that does not parse around one.
    let mut settings = config::stdin_serve(store_at("redis://127.0.0.1:6379"), &prefix, None);
    settings.enrich = Some(config::enrich(&format!(
        "http://api:{password}@127.0.0.1:{closed}/orders"
    )));
    let config = write_config(dir.path(), "no placeholder", &settings);
    let output = converge(&["serve", "--config", path(&config)], &[]);
    let text = printed(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_hidden(&text, &password, "an invalid enrichment URL");
    assert!(text.contains("api:***@127.0.0.1"), "{text}");
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!("[store]\nkind = \"redis\"\nurl = \"redis://:{password}@127.0.0.1:6379\" oops\n"),
    )
    .expect("written");
    let output = converge(&["serve", "--config", path(&broken)], &[]);
    let text = printed(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_hidden(&text, &password, "a TOML error");

    // A serve that works, logging at debug: into its store and its fleet with the password,
    // dead-lettering an id-only message through an order API with credentials in its URL.
    let authorised = format!("redis://:{password}@127.0.0.1:{}", redis.port);
    let mut settings = config::stdin_serve(store_at(&authorised), &prefix, None);
    settings.rule.fleet = Some(FleetConfig {
        redis: authorised.clone(),
        name: fleet.clone(),
        instance: Some("supply-secrets".to_owned()),
        allow_unsigned: true,
    });
    let mut enrich = config::enrich(&format!(
        "http://api:{password}@127.0.0.1:{closed}/orders/{{key}}?api_key={password}"
    ));
    enrich.on_unavailable = OnUnavailable::DeadLetter;
    enrich.retries = 1;
    enrich.backoff_ms = 1;
    settings.enrich = Some(enrich);
    let mut serve = StdinServe::start(dir.path(), "working", &settings, "debug");
    serve.send_lines(&["{\"key\":\"order-1\"}".to_owned()]);
    let client = redis::Client::open(authorised.as_str()).expect("URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("the password Redis answers");
    let stream = format!("{prefix}dead-letters");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let length: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut connection)
            .await
            .expect("XLEN");
        if length >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing dead-lettered in 60 s:\n{}",
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letters: redis::Value = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE");
    assert_hidden(&format!("{letters:?}"), &password, "the dead letter");
    // The fleet's view of this instance, as `converge rule status` prints it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = converge(
            &["rule", "status", "--redis", &authorised, "--fleet", &fleet],
            &[],
        );
        let text = printed(&output);
        assert!(output.status.success(), "{text}");
        assert_hidden(&text, &password, "rule status");
        if text.contains("supply-secrets:") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the instance never reported: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = serve.stop();
    assert!(log.contains("DEBUG"), "logged at debug: {log}");
    assert!(log.contains("dead-lettered"), "{log}");
    assert_hidden(&log, &password, "serve's debug log");
}

fn write_config(dir: &Path, name: &str, settings: &converge::config::Config) -> std::path::PathBuf {
    let dir = dir.join(name.replace(' ', "-"));
    std::fs::create_dir_all(&dir).expect("dir");
    config::write(&dir, settings)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}
