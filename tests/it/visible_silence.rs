//! Visible silence: `ignore` decisions counted by reason, every rule version's ignore share,
//! and the swap rolled back by itself when that share jumps (`[rule.auto_rollback]`).
//!
//! The bad rule is `tests/rules/silent-prefix`: the order-status rule, except that it ignores
//! every update of keys starting with `supply-silent-` — keys the gates never try, so it passes
//! them all. After a direct swap, what it ignored before the rollback was acknowledged and is
//! gone until a replay repairs it; measured as a shadow first, it is refused before anything
//! is lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use converge::config::{AdminConfig, AutoRollbackConfig, Config, FleetConfig, StoreConfig};
use converge::entity::{Decision, Event, State};
use converge::redact::Secret;
use converge::rule::Rule;
use converge::rule::{EngineLimits, GateConfig, Gates, RuleEngine, content_hash};
use converge::swap::{AUTO_ROLLBACK_ORIGIN, Origin, Role, RuleControl, RuleStatus};
use converge::telemetry::Metrics;
use converge_tests::kafka::TestTopic;
use converge_tests::orders::{self, OrderStream};
use converge_tests::process::{Converge, Server};
use converge_tests::prometheus::{Exposition, scrape, scrape_until};
use converge_tests::services::{RedisKeys, TestStore, free_loopback_addr, redis_url};
use converge_tests::{Convergence, build, config, stored_states};

const TOKEN: &str = "supply-silence-token-0123456789";
const ORDER_STATUS: &str = "order-status@0.1.0";
const SILENT: &str = "silent-prefix@0.1.0";

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn limits(min_decisions: u64) -> AutoRollbackConfig {
    AutoRollbackConfig {
        max_ignore_share_increase: 0.2,
        min_decisions,
    }
}

/// Orders under `prefix` (no duplicates), delivered in version order: the order-status rule
/// ignores none of them, and the silent rule all but the first event of each key.
fn in_order(prefix: &str, orders: usize) -> OrderStream {
    let mut stream = orders::generate(prefix, orders, 0, rand::random());
    stream.events.sort_by_key(|event| event.version);
    stream
}

/// A key prefix the silent rule swallows updates of, fresh for each test.
fn silent_prefix(phase: &str) -> String {
    format!("supply-silent-{:08x}-{phase}-", rand::random::<u32>())
}

/// A `converge serve` of one test: its configuration, admin address and log.
struct Instance {
    server: Option<Server>,
    config: PathBuf,
    admin: SocketAddr,
    log: PathBuf,
}

impl Instance {
    fn start(dir: &Path, settings: &Config, admin: SocketAddr) -> Self {
        let config = config::write(dir, settings);
        let log = dir.join("serve.log");
        Self {
            server: Some(Server::start(&config, &log)),
            config,
            admin,
            log,
        }
    }

    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.terminate();
        }
    }

    async fn status(&self) -> RuleStatus {
        let body = reqwest::get(format!("http://{}/rule/status", self.admin))
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("a body");
        serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"))
    }

    async fn metrics(&self) -> Exposition {
        scrape(self.admin).await.expect("admin answers")
    }

    /// Waits (up to 60 s) until the admin endpoint answers and `done` holds for its status.
    async fn until(&self, what: &str, done: impl Fn(&RuleStatus) -> bool) -> RuleStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = reqwest::get(format!("http://{}/rule/status", self.admin)).await
                && let Ok(body) = response.text().await
                && let Ok(status) = serde_json::from_str::<RuleStatus>(&body)
                && done(&status)
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the metrics satisfy `done`, and answers them.
    async fn metrics_until(&self, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
        scrape_until(self.admin, &self.log, what, done).await
    }
}

fn settings(topic: &TestTopic, dlq: &TestTopic, store: StoreConfig, rule: &Path) -> Config {
    let mut settings = config::kafka_serve(
        &topic.name,
        &dlq.name,
        &format!("{}-group", topic.name),
        store,
    );
    settings.rule.path = rule.to_owned();
    settings.admin = Some(AdminConfig {
        listen: free_loopback_addr(),
        token: Some(Secret::new(TOKEN)),
        ..AdminConfig::default()
    });
    settings
}

fn admin_of(settings: &Config) -> SocketAddr {
    settings.admin.as_ref().expect("an admin endpoint").listen
}

async fn converged(
    redis: &TestStore,
    topic: &TestTopic,
    expected: &BTreeMap<String, Event>,
    dir: &mut tempfile::TempDir,
) {
    let group = format!("{}-group", topic.name);
    Convergence::new(&redis.store, expected)
        .logs(dir)
        .wait_with_offsets(async || topic.progress(&group))
        .await;
}

fn merged(streams: &[&OrderStream]) -> BTreeMap<String, Event> {
    streams
        .iter()
        .flat_map(|stream| stream.expected.clone())
        .collect()
}

const KINDS: [&str; 4] = ["insert", "update", "ignore", "reject"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_ignores_are_counted_by_reason_and_share_per_rule_version() {
    let topic = TestTopic::create("supply-silence-count", 2).await;
    let dlq = TestTopic::create("supply-silence-count-dlq", 1).await;
    let redis = TestStore::standalone("supply-silence-count").await;
    let mut dir = tempfile::tempdir().expect("temp dir");
    let settings = settings(
        &topic,
        &dlq,
        config::standalone_store(redis.store.prefix()),
        &build::rule("order-status"),
    );
    let mut instance = Instance::start(dir.path(), &settings, admin_of(&settings));

    // Shuffled and 30% duplicated: order-status ignores stale and duplicate events.
    let prefix = format!("supply-count-{:08x}-", rand::random::<u32>());
    let stream = orders::generate(&prefix, 300, 30, rand::random());
    topic.produce(&stream.events).await;
    converged(&redis, &topic, &stream.expected, &mut dir).await;
    let events = stream.events.len() as f64;
    let metrics = instance
        .metrics_until("every event to be counted", |m| {
            m.try_sum("converge_decisions_total", &[]) == Some(events)
        })
        .await;

    // One instance, nobody else writing: every key decided once, so the rule's own count of
    // its decisions is the pipeline's.
    assert_eq!(metrics.sum("converge_conflicts_total", &[]), 0.0);
    let ignored = metrics.sum("converge_decisions_total", &[("decision", "ignore")]);
    assert!(ignored > 0.0, "a shuffled, duplicated stream has ignores");
    let by_reason: BTreeMap<String, f64> = metrics
        .matching("converge_ignores_total", &[("rule", ORDER_STATUS)])
        .map(|sample| (sample.labels["reason"].clone(), sample.value))
        .collect();
    assert_eq!(
        by_reason.keys().map(String::as_str).collect::<Vec<_>>(),
        ["duplicate", "stale"],
        "{by_reason:?}"
    );
    assert_eq!(by_reason.values().sum::<f64>(), ignored, "{by_reason:?}");
    // A kind the stream never had is absent from both: none on either side.
    for kind in KINDS {
        assert_eq!(
            metrics
                .try_sum(
                    "converge_rule_decisions_total",
                    &[
                        ("rule", ORDER_STATUS),
                        ("role", "active"),
                        ("decision", kind)
                    ]
                )
                .unwrap_or(0.0),
            metrics
                .try_sum("converge_decisions_total", &[("decision", kind)])
                .unwrap_or(0.0),
            "{kind}"
        );
    }
    // Fewer than 10,000 decisions: the window holds them all.
    let share = metrics.sum(
        "converge_ignore_share",
        &[("rule", ORDER_STATUS), ("role", "active")],
    );
    assert!(
        (share - ignored / events).abs() < 1e-9,
        "{share} vs {ignored}/{events}"
    );
    let status = instance.status().await;
    let active = status.active.ignores.expect("the active rule's counts");
    assert_eq!(
        (active.decisions as f64, active.ignores as f64),
        (events, ignored)
    );
    assert!((active.share - share).abs() < 1e-9);

    // Another version, as a shadow: counted on its own, on the same events, and its ignores
    // are not the applied ones.
    let uploaded = reqwest::Client::new()
        .post(format!("http://{}/rule?role=shadow", instance.admin))
        .bearer_auth(TOKEN)
        .header("content-type", "application/wasm")
        .body(read(&build::rule("version-rank")))
        .send()
        .await
        .expect("admin answers");
    assert!(uploaded.status().is_success(), "{uploaded:?}");
    let second = orders::generate(&format!("{prefix}second-"), 200, 30, rand::random());
    topic.produce(&second.events).await;
    converged(&redis, &topic, &second.expected, &mut dir).await;
    let all_events = events + second.events.len() as f64;
    let metrics = instance
        .metrics_until("every event to be counted", |m| {
            m.try_sum("converge_decisions_total", &[]) == Some(all_events)
        })
        .await;
    let shadow_decisions = metrics.sum(
        "converge_rule_decisions_total",
        &[("rule", "version-rank@0.1.0"), ("role", "shadow")],
    );
    assert_eq!(shadow_decisions, second.events.len() as f64);
    let status = instance.status().await;
    let shadow = status.shadow.expect("the shadow runs");
    let shadow_share = shadow.rule.ignores.expect("the shadow's counts");
    let beside = shadow
        .active_ignores
        .expect("the active rule's counts beside it");
    assert_eq!(shadow_share.decisions as f64, shadow_decisions);
    assert_eq!(
        (beside.decisions, shadow.decisions),
        (shadow_share.decisions, shadow_share.decisions)
    );
    assert_eq!(
        shadow_share.ignores as f64,
        metrics.sum(
            "converge_rule_decisions_total",
            &[
                ("rule", "version-rank@0.1.0"),
                ("role", "shadow"),
                ("decision", "ignore")
            ]
        )
    );
    assert!(
        (metrics.sum(
            "converge_ignore_share",
            &[("rule", "version-rank@0.1.0"), ("role", "shadow")]
        ) - shadow_share.share)
            .abs()
            < 1e-9
    );
    let ignored = metrics.sum("converge_decisions_total", &[("decision", "ignore")]);
    assert_eq!(
        metrics.sum("converge_ignores_total", &[("rule", ORDER_STATUS)]),
        ignored,
        "only the applied ignores count by reason"
    );
    // The shadow's ignores are not applied: none counted (no series, or one at zero).
    assert_eq!(
        metrics
            .try_sum("converge_ignores_total", &[("rule", "version-rank@0.1.0")])
            .unwrap_or(0.0),
        0.0
    );
    instance.stop();
}

/// A `serve` watching its rule file, whose swap (through the file) to the silent rule was
/// rolled back by itself when its ignore share jumped.
struct RolledBack {
    topic: TestTopic,
    redis: TestStore,
    dir: tempfile::TempDir,
    rule_file: PathBuf,
    order_status: PathBuf,
    instance: Instance,
    before: OrderStream,
    after: OrderStream,
    silent: Vec<u8>,
    /// The status that shows the rollback.
    status: RuleStatus,
}

/// Serves a baseline with order-status, swaps to the silent rule through the watched file,
/// and waits for the control to roll it back by itself.
async fn rolled_back_by_itself(test: &str) -> RolledBack {
    let topic = TestTopic::create(test, 2).await;
    let dlq = TestTopic::create(&format!("{test}-dlq"), 1).await;
    let redis = TestStore::standalone(test).await;
    let mut dir = tempfile::tempdir().expect("temp dir");
    let rule_file = dir.path().join("rule.wasm");
    let order_status = build::rule("order-status");
    std::fs::copy(&order_status, &rule_file).expect("rule file");
    let mut settings = settings(
        &topic,
        &dlq,
        config::standalone_store(redis.store.prefix()),
        &rule_file,
    );
    settings.rule.watch = true;
    settings.rule.auto_rollback = Some(limits(300));
    let instance = Instance::start(dir.path(), &settings, admin_of(&settings));

    // The version serving first sets the baseline: no ignores.
    let before = in_order(&silent_prefix("before"), 200);
    topic.produce(&before.events).await;
    converged(&redis, &topic, &before.expected, &mut dir).await;
    instance
        .until("the baseline to be counted", |status| {
            status
                .active
                .ignores
                .is_some_and(|i| i.decisions == before.events.len() as u64 && i.ignores == 0)
        })
        .await;

    // A direct swap to the silent rule, through the watched file.
    let silent = read(&build::rule("silent-prefix"));
    let staged = dir.path().join("rule.wasm.new");
    std::fs::write(&staged, &silent).expect("staged");
    std::fs::rename(&staged, &rule_file).expect("renamed");
    instance
        .until("the silent rule to serve", |status| {
            status.active.rule == SILENT
        })
        .await;

    let after = in_order(&silent_prefix("after"), 400);
    topic.produce(&after.events).await;
    let status = instance
        .until("the control to roll back by itself", |status| {
            status.active.rule == ORDER_STATUS
                && status
                    .last_swap
                    .as_ref()
                    .is_some_and(|swap| swap.origin == AUTO_ROLLBACK_ORIGIN)
        })
        .await;
    RolledBack {
        topic,
        redis,
        dir,
        rule_file,
        order_status,
        instance,
        before,
        after,
        silent,
        status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_auto_rollback_when_the_ignore_share_jumps() {
    let RolledBack {
        topic,
        redis,
        mut dir,
        order_status,
        mut instance,
        before,
        after,
        silent,
        status,
        ..
    } = rolled_back_by_itself("supply-silence-rollback").await;
    let swap = status.last_swap.expect("the rollback is the last swap");
    assert_eq!(swap.rule.as_deref(), Some(ORDER_STATUS));
    assert_eq!(swap.result.as_str(), "applied");
    let rolled_back = swap.auto_rollback.expect("why, with both shares");
    assert_eq!(rolled_back.rule, SILENT);
    assert_eq!(rolled_back.hash, content_hash(&silent));
    assert!(rolled_back.share.decisions >= 300, "{rolled_back:?}");
    assert!(rolled_back.share.share > 0.2, "{rolled_back:?}");
    assert_eq!(rolled_back.previous_share.ignores, 0, "{rolled_back:?}");
    assert!(
        rolled_back.reason.contains(SILENT) && rolled_back.reason.contains(ORDER_STATUS),
        "{}",
        rolled_back.reason
    );
    let previous = status
        .previous
        .expect("the rolled-back version is the previous");
    assert_eq!(previous.rule, SILENT);

    // The rest of the stream is decided by the version serving again; the partitions end.
    let group = format!("{}-group", topic.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !topic.progress(&group).iter().all(|(at, end)| at == end) {
        assert!(Instant::now() < deadline, "the stream was not consumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = instance.metrics().await;
    assert_eq!(metrics.sum("converge_rule_auto_rollbacks_total", &[]), 1.0);
    let held_back = metrics.sum(
        "converge_ignores_total",
        &[("rule", SILENT), ("reason", "held back")],
    );
    assert!(held_back > 0.0);
    let log = std::fs::read_to_string(&instance.log).expect("log");
    assert_eq!(
        log.matches("rule rolled back by itself").count(),
        1,
        "{log}"
    );
    instance.stop();

    // What the silent rule ignored before the rollback was acknowledged: those keys are
    // behind, and nothing serving will bring them forward.
    let keys: Vec<String> = after.expected.keys().cloned().collect();
    let stored = stored_states(&redis.store, &keys).await;
    let behind: Vec<&String> = keys
        .iter()
        .filter(|key| stored.get(*key) != Some(&after.expected[*key]))
        .collect();
    assert!(
        !behind.is_empty(),
        "events ignored before the rollback must be missing until replayed"
    );
    // A replay of the topic through the rule serving again repairs them.
    let replay = Converge::new(&["replay", "--rebuild", "--rule"])
        .arg(&order_status)
        .arg("--config")
        .arg(&instance.config)
        .output();
    assert!(
        replay.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&replay.stderr)
    );
    Convergence::new(&redis.store, &merged(&[&before, &after]))
        .logs(&mut dir)
        .assert_now()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_shadow_measures_the_ignore_share_before_promotion() {
    let topic = TestTopic::create("supply-silence-shadow", 2).await;
    let dlq = TestTopic::create("supply-silence-shadow-dlq", 1).await;
    let redis = TestStore::standalone("supply-silence-shadow").await;
    let fleet = format!("supply-silence-{:016x}", rand::random::<u64>());
    let _fleet_keys = RedisKeys::of_fleet(&fleet);
    let mut dir = tempfile::tempdir().expect("temp dir");
    let mut settings = settings(
        &topic,
        &dlq,
        config::standalone_store(redis.store.prefix()),
        &build::rule("order-status"),
    );
    settings.rule.auto_rollback = Some(limits(300));
    settings.rule.fleet = Some(FleetConfig {
        redis: redis_url(),
        name: fleet.clone(),
        instance: Some("only".to_owned()),
        allow_unsigned: true,
    });
    let mut instance = Instance::start(dir.path(), &settings, admin_of(&settings));
    let cli = |args: &[&str]| {
        let output = Converge::new(args)
            .args(["--redis", &redis_url(), "--fleet", &fleet])
            .output();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let before = in_order(&silent_prefix("before"), 200);
    topic.produce(&before.events).await;
    converged(&redis, &topic, &before.expected, &mut dir).await;

    let silent = build::rule("silent-prefix");
    cli(&[
        "rule",
        "publish",
        silent.to_str().expect("utf-8"),
        "--shadow",
    ]);
    instance
        .until("the shadow to run", |status| {
            status
                .shadow
                .as_ref()
                .is_some_and(|s| s.rule.rule == SILENT)
        })
        .await;

    // Only the active rule's decisions apply: nothing the shadow would ignore is lost.
    let after = in_order(&silent_prefix("after"), 400);
    topic.produce(&after.events).await;
    converged(&redis, &topic, &after.expected, &mut dir).await;
    let status = instance
        .until("the shadow to be measured", |status| {
            status.shadow.as_ref().is_some_and(|s| {
                s.decisions == after.events.len() as u64
                    && s.rule.ignores.is_some_and(|i| i.decisions == s.decisions)
            })
        })
        .await;
    let shadow = status.shadow.expect("the shadow");
    let (shadow_share, active_share) = (
        shadow.rule.ignores.expect("counts"),
        shadow.active_ignores.expect("counts"),
    );
    assert_eq!(
        active_share.ignores, 0,
        "order-status ignores nothing in order"
    );
    assert!(shadow_share.share > 0.5, "{shadow_share:?}");
    // `rule status` reads the reports instances write to the fleet every 2 s: wait for the one
    // written after the shadow was measured.
    let expected = format!(
        "ignore share {shadow_share}; the active rule's on the same events: {active_share}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = cli(&["rule", "status"]);
        if text.contains(&expected) {
            break;
        }
        assert!(Instant::now() < deadline, "{expected:?} not in:\n{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Promotion through the admin endpoint: refused, with both shares.
    let promoted = reqwest::Client::new()
        .post(format!("http://{}/rule/promote", instance.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin answers");
    assert_eq!(promoted.status().as_u16(), 422);
    let body = promoted.text().await.expect("body");
    assert!(
        body.contains("ignore_share")
            && body.contains(&format!("{shadow_share}"))
            && body.contains(&format!("{active_share}")),
        "{body}"
    );
    let status = instance.status().await;
    assert_eq!(status.active.rule, ORDER_STATUS);
    let refusal = status
        .last_swap
        .and_then(|swap| swap.refusal)
        .expect("the refusal shows");
    assert_eq!(refusal.gate.as_str(), "ignore_share");

    // Promotion through the fleet: the instance refuses the pointer, the fleet records it as
    // refused (rollback will skip it), and the shadow stops with the shadow pointer.
    cli(&["rule", "promote"]);
    instance
        .until("the shadow to stop", |status| {
            status.shadow.is_none() && status.active.rule == ORDER_STATUS
        })
        .await;
    let silent_hash = content_hash(&read(&silent));
    let mut connection = redis::Client::open(redis_url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    // (A sorted set: the newest refusals are kept.)
    let refused: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("converge:fleet:{{{fleet}}}:rule:refused"))
        .arg(&silent_hash)
        .query_async(&mut connection)
        .await
        .expect("zscore");
    assert!(refused.is_some(), "the fleet records the refusal");
    Convergence::new(&redis.store, &merged(&[&before, &after]))
        .logs(&mut dir)
        .assert_now()
        .await;

    // The instance goes on following the fleet.
    let version_rank = build::rule("version-rank");
    cli(&["rule", "publish", version_rank.to_str().expect("utf-8")]);
    instance
        .until("the next published version to serve", |status| {
            status.active.rule == "version-rank@0.1.0"
        })
        .await;
    instance.stop();
}

/// Tells `rule` that `decisions` were applied, as the pipeline does when their batch is
/// finished: the active rule's share is judged on applied decisions.
fn applied(rule: &mut impl Rule, decisions: &[Decision]) {
    let mut tally = std::collections::BTreeMap::new();
    for decision in decisions {
        *tally.entry(decision.kind()).or_insert(0) += 1;
    }
    rule.applied(&tally);
}

/// In process, with the rule the pipeline runs: the judgement, the rollback, the refusal that
/// sticks, and a promotion refused on both paths (`promote`, and a fleet's offer of the
/// shadow's hash as active).
#[test]
fn supply_in_process_a_jump_rolls_back_and_a_measured_shadow_is_not_promoted() {
    let gates = || {
        Gates::new(
            RuleEngine::new(EngineLimits::default()).expect("engine"),
            GateConfig::default(),
        )
    };
    let order_status = read(&build::rule("order-status"));
    let silent = read(&build::rule("silent-prefix"));
    let new_control = |metrics: &Arc<Metrics>| {
        let gates = gates();
        let initial = gates.admit(&order_status, None).expect("admitted");
        Arc::new(
            RuleControl::new(gates, initial, &Origin::Admin, Arc::clone(metrics))
                .with_auto_rollback(Some(limits(100))),
        )
    };
    let event = |n: usize, version: u64| Event {
        key: format!("supply-silent-in-process-{n}"),
        status: "paid".to_owned(),
        version,
        timestamp_ms: version,
        payload: "null".to_owned(),
    };
    let inserts: Vec<(Option<State>, Event)> = (0..150).map(|n| (None, event(n, 1))).collect();
    let updates: Vec<(Option<State>, Event)> =
        (0..150).map(|n| (Some(event(n, 1)), event(n, 2))).collect();

    let metrics = Arc::new(Metrics::new());
    let control = new_control(&metrics);
    let mut rule = control.rule();
    rule.before_batch();
    let decided = rule.decide_batch(&updates).expect("decided");
    applied(&mut rule, &decided);
    control
        .offer(&silent, None, &Origin::Admin, Role::Active)
        .expect("the silent rule passes every gate");
    rule.before_batch();
    assert_eq!(rule.info().stamp(), SILENT);
    // Its first decisions look fine...
    let decided = rule.decide_batch(&inserts).expect("decided");
    assert!(decided.iter().all(|d| matches!(d, Decision::Insert(_))));
    applied(&mut rule, &decided);
    assert_eq!(control.status().active.rule, SILENT);
    // ...then it goes quiet, and is rolled back.
    let decided = rule.decide_batch(&updates).expect("decided");
    assert!(decided.iter().all(|d| matches!(d, Decision::Ignore(_))));
    applied(&mut rule, &decided);
    let status = control.status();
    assert_eq!(status.active.rule, ORDER_STATUS);
    let rolled_back = status
        .last_swap
        .and_then(|swap| swap.auto_rollback)
        .expect("an automatic rollback");
    assert_eq!(
        (rolled_back.share.decisions, rolled_back.share.ignores),
        (300, 150)
    );
    assert_eq!(rolled_back.previous_share.decisions, 150);
    rule.before_batch();
    assert_eq!(rule.info().stamp(), ORDER_STATUS);
    let refusal = control
        .offer(&silent, None, &Origin::Fleet, Role::Active)
        .expect_err("the rolled-back version stays refused");
    assert_eq!(refusal.gate.as_str(), "ignore_share");
    assert!(
        metrics
            .render()
            .contains("converge_rule_auto_rollbacks_total 1"),
        "{}",
        metrics.render()
    );

    // As a shadow, measured on the same events, it never serves.
    let metrics = Arc::new(Metrics::new());
    let control = new_control(&metrics);
    let mut rule = control.rule();
    control
        .offer(&silent, None, &Origin::Admin, Role::Shadow)
        .expect("a shadow");
    rule.before_batch();
    rule.decide_batch(&inserts).expect("decided");
    // Both insert alike: nothing to hold against it yet.
    let shadow = control.status().shadow.expect("shadow");
    assert_eq!(shadow.rule.ignores.map(|i| i.ignores), Some(0));
    rule.decide_batch(&updates).expect("decided");
    let shadow = control.status().shadow.expect("shadow");
    assert_eq!(
        (
            shadow.rule.ignores.map(|i| i.share),
            shadow.active_ignores.map(|i| i.share)
        ),
        (Some(0.5), Some(0.0))
    );
    // A fleet's promotion is an offer of the shadow's hash as the active rule...
    let refusal = control
        .offer(&silent, None, &Origin::Fleet, Role::Active)
        .expect_err("the share jumped");
    assert_eq!(refusal.gate.as_str(), "ignore_share");
    assert!(
        refusal.reason.contains("50.0%") && refusal.reason.contains("0.0%"),
        "{}",
        refusal.reason
    );
    assert_eq!(control.status().active.rule, ORDER_STATUS);
    // ...and the admin's is `promote`.
    let refusal = control
        .promote(&Origin::Admin)
        .expect_err("the share jumped");
    assert_eq!(refusal.gate.as_str(), "ignore_share");
    assert_eq!(control.status().active.rule, ORDER_STATUS);
    rule.before_batch();
    assert_eq!(rule.info().stamp(), ORDER_STATUS);
}

/// Issue 24, item 1: a version rolled back for its ignore share came back unjudged as soon as
/// its file or a sidecar beside it changed (the refusal was skipped whenever a sidecar was
/// present, and as the previous version it skipped the gates and its probation). It stays
/// refused, whatever the sidecar says, and a mere `touch` of the file offers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_a_refused_rule_stays_refused_after_its_sidecar_changes() {
    let rolled = rolled_back_by_itself("wedge-refused-sidecar").await;
    let rolled_back_at = rolled
        .status
        .last_swap
        .as_ref()
        .expect("the rollback is the last swap")
        .at_ms;
    // The README's layout: vectors beside the rule file (which still holds the silent rule).
    let sidecar = converge::rule::vectors::VectorFile::sidecar_path(&rolled.rule_file);
    std::fs::write(
        &sidecar,
        r#"{ "vectors": [ { "name": "first event is inserted",
              "incoming": {"key": "o-1", "status": "paid"},
              "expect": {"insert": {"key": "o-1", "status": "paid"}} } ] }"#,
    )
    .expect("sidecar written");
    let status = rolled
        .instance
        .until("the watched file to be offered again", |status| {
            status
                .last_swap
                .as_ref()
                .is_some_and(|swap| swap.origin.starts_with("file:") && swap.at_ms > rolled_back_at)
        })
        .await;
    let swap = status.last_swap.expect("the offer is the last swap");
    assert_eq!(
        (swap.result.as_str(), swap.hash.as_str()),
        ("refused", content_hash(&rolled.silent).as_str()),
        "the rolled-back version came back: {swap:?}"
    );
    assert_eq!(
        swap.refusal.map(|refusal| refusal.gate.as_str()),
        Some("ignore_share")
    );
    assert_eq!(status.active.rule, ORDER_STATUS);
    let refused_at = swap.at_ms;

    // Touching the file (same bytes, same sidecar) offers nothing: the last swap stays.
    let bytes = read(&rolled.rule_file);
    std::fs::write(&rolled.rule_file, &bytes).expect("rewritten");
    // The watch reads a change after 300 ms of quiet; give it well past that.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = rolled.instance.status().await;
    assert_eq!(
        status.last_swap.map(|swap| swap.at_ms),
        Some(refused_at),
        "a touch offered the file again"
    );
    assert_eq!(status.active.rule, ORDER_STATUS);

    // The admin's rollback to the previous (refused) version is refused too...
    let rollback = |query: &'static str| {
        reqwest::Client::new()
            .post(format!(
                "http://{}/rule/rollback{query}",
                rolled.instance.admin
            ))
            .bearer_auth(TOKEN)
            .send()
    };
    let refused = rollback("").await.expect("admin answers");
    assert_eq!(refused.status().as_u16(), 422, "{refused:?}");
    assert_eq!(rolled.instance.status().await.active.rule, ORDER_STATUS);
    // ...unless an operator overrides the refusal: logged, counted, and on probation again.
    let forced = rollback("?force=true").await.expect("admin answers");
    assert!(forced.status().is_success(), "{forced:?}");
    let status = rolled.instance.status().await;
    assert_eq!(status.active.rule, SILENT);
    let metrics = rolled.instance.metrics().await;
    assert_eq!(
        metrics.sum(
            "converge_rule_swaps_total",
            &[("result", "overridden"), ("gate", "ignore_share")]
        ),
        1.0
    );
    let forced_at = status.last_swap.expect("the override").at_ms;
    let again = in_order(&silent_prefix("again"), 400);
    rolled.topic.produce(&again.events).await;
    rolled
        .instance
        .until(
            "the forced version to be judged and rolled back again",
            |status| {
                status.active.rule == ORDER_STATUS
                    && status.last_swap.as_ref().is_some_and(|swap| {
                        swap.origin == AUTO_ROLLBACK_ORIGIN && swap.at_ms > forced_at
                    })
            },
        )
        .await;
}
