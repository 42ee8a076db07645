//! Issue 24, item 10: what a rule holds stays within what converge bounds.
//! - Table elements count towards the memory cap: a rule growing big tables for one key is
//!   stopped at the cap (`MemoryCap`), that key's event dead-lettered, every other key stored.
//! - The `name@version` stamp written beside every state is capped: a rule whose info gives a
//!   1 MB version is refused at load, before it could serve.
//! - `/metrics` keeps the series of the versions an instance can still serve (active, previous,
//!   shadow): swapping through several versions leaves none of the others'.
//!
//! The table rule is written by hand in WebAssembly text ([`table_hog`]): Rust has no way to
//! emit `table.grow`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use converge::config::{AdminConfig, Config};
use converge::dead_letter::{DeadLetterKind, MemoryDeadLetters};
use converge::entity::{Decision, Event};
use converge::pipeline::{Pipeline, PipelineConfig};
use converge::redact::Secret;
use converge::rule::{
    DecideError, EngineLimits, GateConfig, GateError, Gates, InvalidInfo, LoadError, Rule as _,
    RuleEngine,
};
use converge::source::Position;
use converge::store::MemoryStore;
use converge_tests::process::StdinServe;
use converge_tests::prometheus::{Exposition, scrape};
use converge_tests::services::{RedisKeys, free_loopback_addr, unique_prefix};
use converge_tests::{build, config, line_messages};

/// Tables the hand-written rule declares, each grown by [`ELEMENTS`] for a `table-` key.
const TABLES: u32 = 16;
/// Elements each table grows by: the bound each table had on its own before they counted
/// towards the cap. 16 such tables hold 128 MB of pointers, twice the default cap.
const ELEMENTS: u32 = 1_000_000;

/// A rule component written by hand, stamped `name@version`, that stores the first event of a
/// key (`insert`) and ignores later ones ("not newer"), and for a key starting with `table-`
/// first grows each of its [`TABLES`] tables by [`ELEMENTS`] elements: it traps if any growth
/// is refused, and decides as for any key if all succeed (their memory then escaped the cap).
fn table_hog(name: &str, version: &str) -> Vec<u8> {
    // Static data: the strings at fixed places, the info record at 128, its statuses at 160;
    // the name and version (which may be long) from 64 KiB, the bump heap after them.
    let version_at = 65_536 + name.len();
    let heap = (version_at + version.len()).next_multiple_of(8) + 4096;
    let pages = (heap + 65_536).div_ceil(65_536);
    let le = |value: usize| {
        u32::try_from(value)
            .expect("fits in 32 bits")
            .to_le_bytes()
            .iter()
            .map(|byte| format!("\\{byte:02x}"))
            .collect::<String>()
    };
    let info = [65_536, name.len(), version_at, version.len(), 160, 1]
        .map(le)
        .concat();
    let tables: String = (0..TABLES)
        .map(|table| format!("(table $t{table} 0 funcref)\n"))
        .collect();
    let grows: String = (0..TABLES)
        .map(|table| {
            format!(
                "(if (i32.eq (table.grow $t{table} (ref.null func) (i32.const {ELEMENTS})) \
                 (i32.const -1)) (then (return (i32.const 0))))\n"
            )
        })
        .collect();
    let text = format!(
        r#"
(component
  (core module $m
    (memory (export "memory") {pages})
    {tables}
    (global $heap (mut i32) (i32.const {heap}))
    (data (i32.const 32) "paid")
    (data (i32.const 64) "not newer")
    (data (i32.const 96) "table-")
    (data (i32.const 128) "{info}")
    (data (i32.const 160) "\20\00\00\00\04\00\00\00")
    (data (i32.const 65536) "{name}")
    (data (i32.const {version_at}) "{version}")

    (func $realloc (export "cabi_realloc")
      (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32) (local $end i32)
      (local.set $at (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
      (local.set $end (i32.add (local.get $at) (local.get $size)))
      (block $room
        (loop $grow
          (br_if $room (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
          (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
          (br $grow)))
      (global.set $heap (local.get $end))
      (if (local.get $old)
        (then (memory.copy (local.get $at) (local.get $old) (local.get $old_size))))
      (local.get $at))

    ;; Every call's allocations are dropped once the host has read its answer.
    (func (export "reset") (param i32) (global.set $heap (i32.const {heap})))

    (func (export "info") (result i32) (i32.const 128))

    (func $hog_key (param $at i32) (param $len i32) (result i32)
      (local $i i32)
      (if (i32.lt_u (local.get $len) (i32.const 6)) (then (return (i32.const 0))))
      (block $done
        (loop $each
          (br_if $done (i32.eq (local.get $i) (i32.const 6)))
          (if (i32.ne
                (i32.load8_u (i32.add (local.get $at) (local.get $i)))
                (i32.load8_u (i32.add (i32.const 96) (local.get $i))))
            (then (return (i32.const 0))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $each)))
      (i32.const 1))

    ;; 1 when every table grew.
    (func $hog (result i32)
      {grows}
      (i32.const 1))

    ;; The (option<state>, event) at $item (88 bytes: the option at 0, the event at 48)
    ;; decided into the decision at $out (48 bytes: the case at 0, its payload at 8).
    (func $decide_into (param $item i32) (param $out i32)
      (if (call $hog_key
            (i32.load (i32.add (local.get $item) (i32.const 48)))
            (i32.load (i32.add (local.get $item) (i32.const 52))))
        (then (if (i32.eqz (call $hog)) (then unreachable))))
      (if (i32.eqz (i32.load8_u (local.get $item)))
        (then
          (i32.store8 (local.get $out) (i32.const 0))
          (memory.copy
            (i32.add (local.get $out) (i32.const 8))
            (i32.add (local.get $item) (i32.const 48))
            (i32.const 40)))
        (else
          (i32.store8 (local.get $out) (i32.const 2))
          (i32.store (i32.add (local.get $out) (i32.const 8)) (i32.const 64))
          (i32.store (i32.add (local.get $out) (i32.const 12)) (i32.const 9)))))

    (func (export "decide") (param $args i32) (result i32)
      (local $out i32)
      (local.set $out (call $realloc (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 48)))
      (call $decide_into (local.get $args) (local.get $out))
      (local.get $out))

    (func (export "decide-batch") (param $items i32) (param $count i32) (result i32)
      (local $list i32) (local $out i32) (local $i i32)
      (local.set $list (call $realloc (i32.const 0) (i32.const 0) (i32.const 8)
        (i32.mul (local.get $count) (i32.const 48))))
      (block $done
        (loop $each
          (br_if $done (i32.eq (local.get $i) (local.get $count)))
          (call $decide_into
            (i32.add (local.get $items) (i32.mul (local.get $i) (i32.const 88)))
            (i32.add (local.get $list) (i32.mul (local.get $i) (i32.const 48))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $each)))
      (local.set $out (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 8)))
      (i32.store (local.get $out) (local.get $list))
      (i32.store (i32.add (local.get $out) (i32.const 4)) (local.get $count))
      (local.get $out))
  )
  (core instance $i (instantiate $m))

  (type $entity (record
    (field "key" string) (field "status" string) (field "version" u64)
    (field "timestamp-ms" u64) (field "payload" string)))
  (export $entity' "entity" (type $entity))
  (type $decision (variant
    (case "insert" $entity') (case "update" $entity') (case "ignore" string)
    (case "reject" string)))
  (export $decision' "decision" (type $decision))
  (type $rule-info (record
    (field "name" string) (field "version" string) (field "statuses" (list string))))
  (export $rule-info' "rule-info" (type $rule-info))

  (func $info (result $rule-info')
    (canon lift (core func $i "info") (memory $i "memory")
      (realloc (func $i "cabi_realloc")) (post-return (func $i "reset"))))
  (func $decide (param "current" (option $entity')) (param "incoming" $entity')
    (result $decision')
    (canon lift (core func $i "decide") (memory $i "memory")
      (realloc (func $i "cabi_realloc")) (post-return (func $i "reset"))))
  (func $decide-batch (param "items" (list (tuple (option $entity') $entity')))
    (result (list $decision'))
    (canon lift (core func $i "decide-batch") (memory $i "memory")
      (realloc (func $i "cabi_realloc")) (post-return (func $i "reset"))))
  (export "info" (func $info))
  (export "decide" (func $decide))
  (export "decide-batch" (func $decide-batch))
)
"#
    );
    wat::parse_str(&text).expect("the hand-written component parses")
}

fn event(key: &str) -> Event {
    Event {
        key: key.to_owned(),
        status: "paid".to_owned(),
        version: 1,
        timestamp_ms: 1,
        payload: "null".to_owned(),
    }
}

/// The engine as `serve` runs it by default (64 MiB), with a deadline long enough that only
/// the cap can stop the table rule.
fn engine() -> RuleEngine {
    RuleEngine::new(EngineLimits {
        deadline: Duration::from_secs(5),
        ..EngineLimits::default()
    })
    .expect("engine starts")
}

#[tokio::test]
async fn wedge_a_rule_growing_big_tables_hits_the_memory_cap_and_other_keys_flow() {
    let engine = engine();
    let cap = engine.limits().memory_cap_bytes;
    let compiled = engine
        .compile(&table_hog("table-hog", "0.1.0"))
        .expect("the table rule loads: its tables start empty");

    // Alone: the growth is refused at the cap, and the trap that follows reported as such.
    let mut rule = compiled.instance();
    assert_eq!(
        rule.decide(None, &event("order-1")),
        Ok(Decision::Insert(event("order-1")))
    );
    match rule.decide(None, &event("table-1")) {
        Err(DecideError::MemoryCap { requested, cap: at }) => {
            assert_eq!(at, cap);
            assert!(requested > cap, "{requested} > {cap}");
        }
        other => panic!(
            "{TABLES} tables of {ELEMENTS} elements must hit the {cap}-byte memory cap, got \
             {other:?}"
        ),
    }
    assert_eq!(
        rule.decide(None, &event("order-2")),
        Ok(Decision::Insert(event("order-2"))),
        "the rule serves on after the fault"
    );

    // In the pipeline: that key's event dead-lettered, every other key stored.
    let keys = ["order-1", "table-1", "order-2", "order-3"];
    let lines: Vec<Vec<u8>> = keys
        .iter()
        .map(|key| serde_json::to_vec(&event(key)).expect("serialises"))
        .collect();
    let mut pipeline = Pipeline::new(
        compiled.instance(),
        MemoryStore::new(),
        MemoryDeadLetters::new(),
        PipelineConfig::default(),
    );
    pipeline
        .process(&line_messages(&lines))
        .await
        .expect("batch processed");
    let stored: Vec<String> = pipeline
        .store()
        .snapshot()
        .into_iter()
        .map(|stored| stored.state.key)
        .collect();
    assert_eq!(
        stored,
        ["order-1", "order-2", "order-3"],
        "table-1 must be dead-lettered, not stored (its tables escaped the memory cap)"
    );
    let letters = pipeline.dead_letters().letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].kind, DeadLetterKind::RuleFailed);
    assert_eq!(letters[0].position, Position::Line { line: 2 });
    let reason = &letters[0].reason;
    assert!(
        reason.contains("memory") && reason.contains(&format!("cap of {cap} bytes")),
        "{reason}"
    );
}

#[test]
fn wedge_a_rule_stamp_of_a_megabyte_is_refused_at_load() {
    let megabyte = "9".repeat(1 << 20);
    let engine = engine();
    for (name, version) in [("table-hog", megabyte.as_str()), (megabyte.as_str(), "1")] {
        let component = table_hog(name, version);
        match engine.compile(&component) {
            Err(LoadError::InvalidInfo(InvalidInfo::StampTooLong { len, cap })) => {
                assert_eq!(len, name.len() + 1 + version.len());
                assert!(cap <= 1024, "a cap of {cap} bytes");
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(compiled) => panic!(
                "a rule stamped with {} bytes loaded: it would write them beside every state",
                compiled.info().stamp().len()
            ),
        }
        // The gates say so, naming the cause.
        let gates = Gates::new(
            engine.clone(),
            GateConfig {
                require_vectors: false,
                ..GateConfig::default()
            },
        );
        let error = match gates.admit(&component, None) {
            Err(error) => error,
            Ok(_) => panic!("the gates admitted a {} byte stamp", megabyte.len()),
        };
        assert!(matches!(error, GateError::Load(_)), "{error}");
        let message = error.to_string();
        assert!(message.contains("name@version"), "{message}");
        assert!(message.len() < 4096, "the refusal quotes the stamp");
    }
    // A stamp of ordinary length loads.
    engine
        .compile(&table_hog("table-hog", "0.1.0"))
        .expect("an ordinary stamp loads");
}

const TOKEN: &str = "wedge-rule-resources-token-0123456789";

/// `serve` reading JSON lines from stdin with an admin endpoint on `admin` (with the token),
/// uploads gated without vectors (the test rules bring none).
fn metrics_config(prefix: &str, admin: SocketAddr) -> Config {
    let mut settings = config::stdin_serve(
        config::standalone_store(prefix),
        prefix,
        Some(AdminConfig {
            listen: admin,
            token: Some(Secret::new(TOKEN)),
            ..AdminConfig::default()
        }),
    );
    settings.rule.gates.require_vectors = false;
    settings
}

/// The stamps that label a series (its `rule` label) in a scrape.
fn stamps(metrics: &Exposition) -> std::collections::BTreeSet<String> {
    metrics
        .samples()
        .iter()
        .filter_map(|sample| sample.labels.get("rule").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_metric_series_of_versions_no_longer_served_are_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = unique_prefix("wedge-series");
    let _keys = RedisKeys::under(&prefix);
    let admin = free_loopback_addr();
    let mut serve = StdinServe::start(dir.path(), "serve", &metrics_config(&prefix, admin), "info");
    serve.ready(admin).await;
    let client = reqwest::Client::new();

    // order-status serves from the file; four more versions follow it through the admin
    // endpoint, each deciding an insert and an ignore before the next.
    let versions = [
        ("order-status@0.1.0", None),
        ("good-timestamp-first@0.1.0", Some("good-timestamp-first")),
        (
            "good-lowest-payload-wins@0.1.0",
            Some("good-lowest-payload-wins"),
        ),
        ("good-fieldwise-max@0.1.0", Some("good-fieldwise-max")),
        ("version-rank@0.1.0", Some("version-rank")),
    ];
    for (n, (stamp, rule)) in versions.iter().enumerate() {
        if let Some(rule) = rule {
            let component = std::fs::read(build::rule(rule)).expect("rule built");
            let response = client
                .post(format!("http://{admin}/rule"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/wasm")
                .body(component)
                .send()
                .await
                .expect("answers");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 200, "{stamp}: {body}");
        }
        let line = serde_json::to_string(&event(&format!("k-{n}"))).expect("serialises");
        serve.send_lines(&[line.clone(), line]);
        // Absent until the first such decision.
        let decided = |metrics: &Exposition| {
            ["insert", "ignore"].iter().all(|decision| {
                metrics
                    .try_value(&format!(
                        "converge_rule_decisions_total{{rule=\"{stamp}\",role=\"active\",decision=\"{decision}\"}}"
                    ))
                    .is_some_and(|decided| decided >= 1.0)
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let metrics = scrape(admin).await.expect("metrics");
            if decided(&metrics) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{stamp} decided no insert and ignore in 60 s:\n{metrics}\n{}",
                serve.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Active: version-rank; previous: good-fieldwise-max; no shadow. Nothing else is labelled.
    let metrics = scrape(admin).await.expect("metrics");
    let kept: std::collections::BTreeSet<String> = [
        "good-fieldwise-max@0.1.0".to_owned(),
        "version-rank@0.1.0".to_owned(),
    ]
    .into();
    assert_eq!(
        stamps(&metrics),
        kept,
        "series of versions neither active, previous nor shadow remain:\n{metrics}"
    );
    assert_eq!(
        metrics.value("converge_rule_info{rule=\"version-rank@0.1.0\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("converge_rule_info{rule=\"good-fieldwise-max@0.1.0\"}"),
        0.0
    );
    assert!(
        metrics.has("converge_ignores_total", "rule", "version-rank@0.1.0"),
        "{metrics}"
    );
    serve.stop();
}
