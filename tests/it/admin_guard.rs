//! The admin endpoint's guard, against real `converge serve` processes: a token for every
//! swap, no swap at all without one, no foreign `Origin`, no form content types, reads open or
//! closed as configured, shadow samples redacted unless asked for with the token; and an
//! address off loopback without a token refused before anything is opened.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use converge::config::AdminConfig;
use converge::entity::Event;
use converge::redact::Secret;
use converge_tests::process::Converge;
use converge_tests::process::StdinServe;
use converge_tests::prometheus::Exposition;
use converge_tests::services::{RedisKeys, free_loopback_addr, unique_prefix};
use converge_tests::{build, config, events};
use reqwest::{Method, Response};

const TOKEN: &str = "supply-admin-token-0123456789abcdef";

/// [`events::event`] with `payload`, as a JSON line.
fn event(key: &str, status: &str, version: u64, payload: &str) -> String {
    serde_json::to_string(&Event {
        payload: payload.to_owned(),
        ..events::event(key, status, version)
    })
    .expect("an event serialises")
}

fn admin(listen: SocketAddr, token: Option<&str>, protect_reads: bool) -> AdminConfig {
    AdminConfig {
        listen,
        token: token.map(Secret::new),
        protect_reads,
        ..AdminConfig::default()
    }
}

/// One instance's admin endpoint, as a client reaches it.
struct Endpoint<'a> {
    client: &'a reqwest::Client,
    at: SocketAddr,
}

impl Endpoint<'_> {
    /// `method path`, with `token` as the bearer when given, then `headers` and `body`; the
    /// guard under test answers every request, so a request that gets no answer fails the test.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Response {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.at));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for &(name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        request.send().await.expect("answers")
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.send(Method::GET, path, token, &[], None).await
    }

    /// The body of a read without the token.
    async fn text(&self, path: &str) -> String {
        self.get(path, None).await.text().await.expect("body")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_admin_without_a_token_gives_401_and_a_foreign_origin_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = unique_prefix("supply-admin");
    let _keys = RedisKeys::under(&prefix);
    let (guarded_at, open_at, closed_at) = (
        free_loopback_addr(),
        free_loopback_addr(),
        free_loopback_addr(),
    );
    let start = |name: &str, at: SocketAddr, token: Option<&str>, protect_reads: bool| {
        let store = config::standalone_store(&format!("{prefix}{name}:"));
        let settings = config::stdin_serve(
            store,
            &format!("{prefix}{name}:"),
            Some(admin(at, token, protect_reads)),
        );
        StdinServe::start(dir.path(), name, &settings, "info")
    };
    // Three instances: a token with reads open (the default), no token at all, and a token
    // that closes the reads too.
    let mut guarded = start("guarded", guarded_at, Some(TOKEN), false);
    let mut open = start("open", open_at, None, false);
    let mut closed = start("closed", closed_at, Some(TOKEN), true);
    guarded.ready(guarded_at).await;
    open.ready(open_at).await;
    closed.ready(closed_at).await;

    let client = reqwest::Client::new();
    let endpoint = |at: SocketAddr| Endpoint {
        client: &client,
        at,
    };
    let (guarded_api, open_api, closed_api) =
        (endpoint(guarded_at), endpoint(open_at), endpoint(closed_at));
    let shadow = std::fs::read(build::rule("version-rank")).expect("version-rank built");
    let upload = async |token: Option<&str>, headers: &[(&str, &str)]| {
        guarded_api
            .send(
                Method::POST,
                "/rule?role=shadow",
                token,
                headers,
                Some(shadow.clone()),
            )
            .await
    };
    let wasm = [("content-type", "application/wasm")];

    // Reads are open by default.
    for path in ["/healthz", "/readyz", "/metrics", "/rule", "/rule/status"] {
        let response = guarded_api.get(path, None).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }

    // No token, a wrong one: 401 with a Bearer challenge.
    let response = upload(None, &wasm).await;
    assert_eq!(response.status().as_u16(), 401);
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    let response = upload(Some("not-the-admin-token-0123456789"), &wasm).await;
    assert_eq!(response.status().as_u16(), 401);
    // The right token from a foreign page: 403.
    let response = upload(
        Some(TOKEN),
        &[wasm[0], ("origin", "http://attacker.example")],
    )
    .await;
    assert_eq!(response.status().as_u16(), 403);
    // The content types a page can send cross-site without asking: 415.
    for form in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let response = upload(Some(TOKEN), &[("content-type", form)]).await;
        assert_eq!(response.status().as_u16(), 415, "{form}");
    }
    let response = guarded_api
        .send(
            Method::POST,
            "/rule/rollback",
            Some(TOKEN),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(b"a=1".to_vec()),
        )
        .await;
    assert_eq!(response.status().as_u16(), 415);
    // Nothing refused reached the rule control.
    let status = guarded_api.text("/rule/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert!(status["shadow"].is_null(), "{status}");
    assert!(status["last_swap"].is_null(), "{status}");

    // The right token and content type swap the shadow in.
    let response = upload(Some(TOKEN), &wasm).await;
    assert_eq!(response.status().as_u16(), 200);

    // A planted disagreement: a later status with a lower version (order-status updates,
    // version-rank ignores), about a key and payload no one without the token may read.
    let key = format!("customer-{:016x}", rand::random::<u64>());
    let card = format!("4111-{:016x}", rand::random::<u64>());
    let payload = format!("{{\"card\":\"{card}\"}}");
    guarded.send_lines(&[
        event(&key, "paid", 5, &payload),
        event(&key, "refunded", 1, &payload),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let redacted = loop {
        let text = guarded_api.text("/rule/status").await;
        let status: serde_json::Value = serde_json::from_str(&text).expect("status JSON");
        if status["shadow"]["disagreements"].as_u64() >= Some(1) {
            break text;
        }
        assert!(Instant::now() < deadline, "no disagreement in 60 s: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!redacted.contains(&key), "{redacted}");
    assert!(!redacted.contains(&card), "{redacted}");
    assert!(redacted.contains("<redacted>"), "{redacted}");
    assert!(
        redacted.contains("refunded"),
        "statuses are kept: {redacted}"
    );
    // In full only with the token.
    let response = guarded_api.get("/rule/status?samples=full", None).await;
    assert_eq!(response.status().as_u16(), 401);
    let full = guarded_api
        .get("/rule/status?samples=full", Some(TOKEN))
        .await;
    assert_eq!(full.status().as_u16(), 200);
    let full = full.text().await.expect("body");
    assert!(full.contains(&key) && full.contains(&card), "{full}");

    // Promote and rollback: no body, the token.
    for path in ["/rule/promote", "/rule/rollback"] {
        let response = guarded_api
            .send(Method::POST, path, Some(TOKEN), &[], None)
            .await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }

    // Every refusal counted by reason.
    let metrics = Exposition::parse(&guarded_api.text("/metrics").await);
    let refusals = |reason: &str| {
        metrics.value(&format!(
            "converge_admin_refusals_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(refusals("no_token"), 2.0, "{metrics}");
    assert_eq!(refusals("bad_token"), 1.0, "{metrics}");
    assert_eq!(refusals("origin"), 1.0, "{metrics}");
    assert_eq!(refusals("content_type"), 4.0, "{metrics}");

    // Without a token, swaps are disabled whatever the request says.
    let response = open_api
        .send(Method::POST, "/rule/rollback", Some(TOKEN), &[], None)
        .await;
    assert_eq!(response.status().as_u16(), 403);
    assert!(
        response.text().await.expect("body").contains("admin.token"),
        "the refusal says how to enable swaps"
    );
    let response = open_api.get("/rule/status?samples=full", Some(TOKEN)).await;
    assert_eq!(response.status().as_u16(), 403);
    for path in ["/metrics", "/rule/status"] {
        let response = open_api.get(path, None).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }

    // protect_reads: the reads need the token, the probes never do.
    for path in ["/metrics", "/rule", "/rule/status"] {
        let response = closed_api.get(path, None).await;
        assert_eq!(response.status().as_u16(), 401, "{path}");
        let response = closed_api.get(path, Some(TOKEN)).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    for path in ["/healthz", "/readyz"] {
        let response = closed_api.get(path, None).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }

    let log = guarded.stop();
    assert!(log.contains("admin request refused"), "{log}");
    assert!(!log.contains(TOKEN), "the token is never logged:\n{log}");
    open.stop();
    closed.stop();
}

fn serve_once(config: &Path, env: &[(&str, &str)], overrides: &[&str]) -> Output {
    serve_command(config, env, overrides).output()
}

/// `converge serve --config CONFIG --set OVERRIDE…` with `env`, given a minute.
fn serve_command(config: &Path, env: &[(&str, &str)], overrides: &[&str]) -> Converge {
    Converge::new(&["serve", "--config"])
        .arg(config)
        .envs(env)
        .args(
            overrides
                .iter()
                .flat_map(|assignment| ["--set", assignment]),
        )
        .within(Duration::from_secs(60))
}

#[test]
fn supply_non_loopback_admin_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = unique_prefix("supply-admin-exposed");
    // Nothing listens here: had serve connected anywhere before refusing, it would say so.
    let closed_port = free_loopback_addr().port();
    let exposed: SocketAddr = format!("0.0.0.0:{}", free_loopback_addr().port())
        .parse()
        .expect("address");
    let config = config::write(
        dir.path(),
        &config::stdin_serve(
            config::redis_store(&format!("redis://127.0.0.1:{closed_port}"), &prefix),
            &prefix,
            Some(admin(exposed, None, false)),
        ),
    );

    let refused = |output: &Output, setting: &str| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(setting), "{stderr}");
        assert!(
            !stderr.contains("store"),
            "refused before connecting: {stderr}"
        );
        stderr.into_owned()
    };
    let stderr = refused(&serve_once(&config, &[], &[]), "admin.listen");
    assert!(
        stderr.contains(&exposed.to_string())
            && stderr.contains("admin.token")
            && stderr.contains("CONVERGE_ADMIN_TOKEN"),
        "the message names the address and how to set a token: {stderr}"
    );
    let ipv6 = format!("admin.listen=[::]:{}", exposed.port());
    refused(&serve_once(&config, &[], &[&ipv6]), "admin.listen");
    // A token too short to be one, from the environment, is refused as such.
    refused(
        &serve_once(&config, &[("CONVERGE_ADMIN_TOKEN", "short")], &[]),
        "admin.token",
    );
    // A file and an environment with two different tokens: which one holds is unclear.
    refused(
        &serve_once(
            &config,
            &[("CONVERGE_ADMIN_TOKEN", "environment-token-0123456789")],
            &["admin.token=file-token-0123456789abcdef"],
        ),
        "admin.token",
    );
    // With a token from the environment it goes on, and waits for the unreachable store.
    let output = serve_command(
        &config,
        &[("CONVERGE_ADMIN_TOKEN", "environment-token-0123456789")],
        &[],
    )
    .output_once_logged("unavailable; retrying");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("store") && !stderr.contains("admin.listen"),
        "{stderr}"
    );
}
