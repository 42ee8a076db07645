//! Rule swaps. The gates and the swap between batches, in process; the watched rule file; and
//! T7 — two `converge serve` instances of one fleet consuming a shuffled, duplicated Kafka
//! stream into Redis while the fleet's rule is republished about once a second, a bad
//! candidate is refused everywhere, and rollback, shadow and promote work fleet-wide.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use converge::entity::Decision;
use converge::rule::Rule;
use converge::rule::vectors::VectorFile;
use converge::rule::{EngineLimits, RuleEngine};
use converge::rule::{GateConfig, Gates, embedded_vectors};
use converge::store::Store;
use converge::swap::FleetStatus;
use converge::swap::{Origin, Role, RuleControl};
use converge::telemetry::Metrics;
use converge_tests::events::event;
use converge_tests::fleet::{self, TestFleet};
use converge_tests::process::Server;
use converge_tests::served::Served;
use converge_tests::{build, orders, stored_states};

fn gates() -> Gates {
    Gates::new(
        RuleEngine::new(EngineLimits::default()).expect("engine"),
        GateConfig::default(),
    )
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Last-write-wins with vectors it passes: it gets past the vector gate and must be stopped by
/// the convergence check.
fn last_write_wins_packed() -> Vec<u8> {
    let vectors: VectorFile = serde_json::from_str(
        r#"{ "vectors": [ { "name": "first event is inserted",
              "incoming": {"key": "o-1", "status": "paid"},
              "expect": {"insert": {"key": "o-1", "status": "paid"}} } ] }"#,
    )
    .expect("vectors");
    converge::rule::pack(&read(&build::rule("last-write-wins")), &vectors).expect("packed")
}

fn control() -> Arc<RuleControl> {
    let gates = gates();
    let initial = gates
        .admit(&read(&build::rule("order-status")), None)
        .expect("order-status passes its gates");
    Arc::new(RuleControl::new(
        gates,
        initial,
        &Origin::Admin,
        Arc::new(Metrics::new()),
    ))
}

#[test]
fn vectors_travel_inside_the_component_and_pack_overrides_them() {
    let order_status = read(&build::rule("order-status"));
    let embedded = embedded_vectors(&order_status)
        .expect("readable")
        .expect("order-status carries its vectors");
    let sidecar =
        VectorFile::load(&build::workspace_root().join("plugin/vectors/order-status.json"))
            .expect("vector file");
    assert_eq!(embedded.vectors.len(), sidecar.vectors.len());

    let one = VectorFile {
        vectors: sidecar.vectors[..1].to_vec(),
    };
    let packed = converge::rule::pack(&order_status, &one).expect("packed");
    let read_back = embedded_vectors(&packed)
        .expect("readable")
        .expect("packed vectors");
    assert_eq!(read_back.vectors.len(), 1, "the packed section must win");
    assert!(
        embedded_vectors(&read(&build::rule("last-write-wins")))
            .expect("readable")
            .is_none()
    );
}

#[test]
fn each_gate_refuses_its_kind_of_bad_rule_and_the_old_rule_keeps_serving() {
    let control = control();
    let mut rule = control.rule();
    let order_status_vectors =
        VectorFile::load(&build::workspace_root().join("plugin/vectors/order-status.json"))
            .expect("vector file");
    let candidates: Vec<(&str, Vec<u8>)> = vec![
        ("compile", b"\0asm but not really".to_vec()),
        ("imports", read(&build::rule("forbidden-import"))),
        // No vectors at all.
        ("vectors", read(&build::rule("last-write-wins"))),
        // Another rule's vectors, which it fails.
        (
            "vectors",
            converge::rule::pack(
                &read(&build::rule("last-write-wins")),
                &order_status_vectors,
            )
            .expect("packed"),
        ),
        ("convergence", last_write_wins_packed()),
    ];
    for (gate, bytes) in candidates {
        let refusal = control
            .offer(&bytes, None, &Origin::Admin, Role::Active)
            .expect_err("a bad rule is refused");
        assert_eq!(refusal.gate.as_str(), gate, "{refusal}");
        let status = control.status();
        assert_eq!(status.active.rule, "order-status@0.1.0");
        let last = status.last_swap.expect("the refusal is recorded");
        assert_eq!(last.result.as_str(), "refused");
        assert_eq!(last.refusal.expect("with its reason").gate.as_str(), gate);
        rule.before_batch();
        assert_eq!(rule.info().stamp(), "order-status@0.1.0");
    }
}

#[test]
fn a_swap_takes_effect_at_the_next_batch_and_rollback_returns() {
    let control = control();
    let mut rule = control.rule();
    let next = read(&build::order_status_version("0.2.0-next"));
    let applied = control
        .offer(&next, None, &Origin::Admin, Role::Active)
        .expect("an equivalent rule passes");
    assert_eq!(applied.rule, "order-status@0.2.0-next");
    // Mid-batch, the rule deciding does not change...
    assert_eq!(rule.info().stamp(), "order-status@0.1.0");
    // ...the next batch is decided by the new one.
    rule.before_batch();
    assert_eq!(rule.info().stamp(), "order-status@0.2.0-next");
    let decision = rule
        .decide(None, &event("o-1", "paid", 1))
        .expect("decides");
    assert!(matches!(decision, Decision::Insert(_)));

    let back = control
        .rollback(&Origin::Admin)
        .expect("a previous rule exists");
    assert_eq!(back.rule, "order-status@0.1.0");
    rule.before_batch();
    assert_eq!(rule.info().stamp(), "order-status@0.1.0");
    assert_eq!(
        control.status().previous.expect("previous").rule,
        "order-status@0.2.0-next"
    );
    assert_eq!(
        control
            .promote(&Origin::Admin)
            .expect_err("no shadow")
            .gate
            .as_str(),
        "swap"
    );
}

/// Instantiating a big component (componentize-py's interpreter) takes milliseconds: a swap
/// does it where the version is offered, so the pipeline's task takes up a ready instance and
/// its first batch on the new version creates none.
#[test]
fn a_swapped_in_version_is_instantiated_before_the_pipeline_takes_it_up() {
    let control = control();
    let mut rule = control.rule();
    let v1 = read(&build::rule("order-status"));
    let vectors = embedded_vectors(&v1).expect("readable").expect("vectors");
    // Other bytes, the same rule.
    let v2 = converge::rule::pack(&v1, &vectors).expect("packed");
    for (version, bytes) in [("v2", &v2), ("v1", &v1)] {
        control
            .offer(bytes, None, &Origin::Admin, Role::Active)
            .expect("admitted");
        assert!(rule.swap_pending(), "{version} is pending");
        rule.before_batch();
        assert!(
            rule.active_rule().is_instantiated(),
            "{version} was taken up without an instance: the first batch would create it on \
             the pipeline's task"
        );
    }
}

#[test]
fn a_shadow_counts_and_samples_disagreements_without_applying_them() {
    let control = control();
    let mut rule = control.rule();
    control
        .offer(
            &read(&build::rule("version-rank")),
            None,
            &Origin::Admin,
            Role::Shadow,
        )
        .expect("version-rank passes its gates");
    rule.before_batch();

    let stored = event("o-1", "paid", 5);
    // Both rules agree: a higher status with a higher version is newer.
    let agreed = rule
        .decide(Some(&stored), &event("o-1", "completed", 6))
        .expect("decides");
    assert!(matches!(agreed, Decision::Update(_)));
    // Planted: a later status with a lower version. order-status updates, version-rank ignores.
    let planted = event("o-1", "refunded", 1);
    let active = rule.decide(Some(&stored), &planted).expect("decides");
    assert!(
        matches!(&active, Decision::Update(state) if state.status == "refunded"),
        "the active rule's decision is the one applied: {active:?}"
    );

    let shadow = control.status().shadow.expect("a shadow runs");
    assert_eq!(shadow.rule.rule, "version-rank@0.1.0");
    assert_eq!(shadow.decisions, 2);
    assert_eq!(shadow.disagreements, 1);
    let sample = &shadow.samples[0];
    assert_eq!(sample.incoming, planted);
    assert_eq!(sample.current.as_ref(), Some(&stored));
    assert!(matches!(sample.active, Decision::Update(_)));
    assert!(matches!(sample.shadow, Ok(Decision::Ignore(_))));

    let promoted = control
        .promote(&Origin::Admin)
        .expect("the shadow is promoted");
    assert_eq!(promoted.rule, "version-rank@0.1.0");
    assert!(control.status().shadow.is_none());
    rule.before_batch();
    assert_eq!(rule.info().stamp(), "version-rank@0.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rule_file_is_gated_and_swapped_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rule.wasm");
    std::fs::write(&path, read(&build::rule("order-status"))).expect("written");
    let control = control();
    let (stop, stopped) = converge::shutdown::Shutdown::new();
    let watching = converge::swap::watch_rule_file(path.clone(), Arc::clone(&control), stopped)
        .expect("watching");

    // Deploy tools replace a file by renaming a complete one over it.
    let replace = |bytes: Vec<u8>| {
        let staged = dir.path().join("rule.wasm.new");
        std::fs::write(&staged, bytes).expect("staged");
        std::fs::rename(&staged, &path).expect("renamed");
    };
    replace(read(&build::order_status_version("0.2.0-next")));
    wait_for("the new file to serve", Duration::from_secs(20), || {
        control.status().active.rule == "order-status@0.2.0-next"
    })
    .await;

    replace(last_write_wins_packed());
    wait_for(
        "the bad file to be refused",
        Duration::from_secs(20),
        || {
            control
                .status()
                .last_swap
                .is_some_and(|swap| swap.result.as_str() == "refused")
        },
    )
    .await;
    assert_eq!(control.status().active.rule, "order-status@0.2.0-next");

    stop.trigger();
    watching.await.expect("watcher stops");
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The admin token of the T7 instances (rule uploads need one).
const ADMIN_TOKEN: &str = "t7-admin-token-0123456789";

fn all_active(rule: &str) -> impl Fn(&FleetStatus) -> bool + '_ {
    move |status| status.instances.iter().all(|i| i.rule.active.rule == rule)
}

/// T7: swaps under load, a refused candidate, rollback, shadow and promote, fleet-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_fleet_swaps_under_load_keep_every_invariant() {
    let mut served = Served::new("t7", 4).await;
    let fleet = TestFleet::new("t7").await;
    let dir = served.dir.path().to_owned();
    let instance = |name| {
        fleet::instance_config(
            &dir,
            name,
            served.settings.clone(),
            &fleet.name,
            Some(ADMIN_TOKEN),
        )
    };
    let (first_config, first_admin) = instance("first");
    let (second_config, _) = instance("second");
    let v1 = read(&build::rule("order-status"));
    let v2 = read(&build::order_status_version("0.2.0-next"));
    let stamps: BTreeSet<&str> = ["order-status@0.1.0", "order-status@0.2.0-next"].into();

    let mut stream = orders::generate("order-", 1_200, 30, 7);
    let keys: Vec<String> = stream.expected.keys().cloned().collect();
    let first = Server::start(&first_config, &dir.join("first.log"));
    let second = Server::start(&second_config, &dir.join("second.log"));
    fleet
        .until(
            "both instances to report",
            2,
            all_active("order-status@0.1.0"),
        )
        .await;

    // Events arrive for about six seconds while the fleet's rule flips every second.
    let producing = async {
        for chunk in stream.events.chunks(stream.events.len() / 12 + 1) {
            served.topic.produce(chunk).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let swapping = async {
        for round in 0..6 {
            let next = if round % 2 == 0 { &v2 } else { &v1 };
            fleet
                .fleet
                .publish(next, Role::Active)
                .await
                .expect("published");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::join!(producing, swapping);

    // A candidate that fails its gates: refused on every instance, the rule keeps serving.
    let serving = fleet.status().await.active.expect("an active rule");
    let bad = last_write_wins_packed();
    let bad_hash = converge::rule::content_hash(&bad);
    let published = fleet
        .fleet
        .publish(&bad, Role::Active)
        .await
        .expect("published");
    assert_eq!(published, bad_hash);
    fleet
        .until("both instances to refuse the bad rule", 2, |status| {
            status.instances.iter().all(|instance| {
                instance.rule.active.hash == serving
                    && instance.rule.last_swap.as_ref().is_some_and(|swap| {
                        swap.hash == bad_hash
                            && swap
                                .refusal
                                .as_ref()
                                .is_some_and(|r| r.gate.as_str() == "convergence")
                    })
            })
        })
        .await;

    // One publish switches both instances.
    let switched = Instant::now();
    fleet
        .fleet
        .publish(&v2, Role::Active)
        .await
        .expect("published");
    fleet
        .until(
            "both instances to serve 0.2.0",
            2,
            all_active("order-status@0.2.0-next"),
        )
        .await;
    eprintln!("fleet switched in {:?}", switched.elapsed());

    // Orders that had not reached their last status move on: their states must be written by
    // the rule now serving.
    let mut advanced = Vec::new();
    for last in stream.expected.values_mut() {
        if last.status != "refunded" && advanced.len() < 100 {
            last.status = "refunded".to_owned();
            last.version += 1;
            last.timestamp_ms += 1;
            advanced.push(last.clone());
        }
    }
    served.topic.produce(&advanced).await;

    served
        .converged(&stream.expected, Duration::from_secs(90))
        .await;
    let stored = served.redis.store.inspect(&keys).await.expect("inspected");
    for stored in stored.iter().flatten() {
        assert!(
            stamps.contains(stored.rule.as_str()),
            "{} stamped {}",
            stored.state.key,
            stored.rule
        );
    }
    for event in &advanced {
        let index = keys.iter().position(|k| *k == event.key).expect("a key");
        let stamp = &stored[index].as_ref().expect("stored").rule;
        assert_eq!(stamp, "order-status@0.2.0-next", "{}", event.key);
    }
    assert!(
        stored
            .iter()
            .flatten()
            .any(|s| s.rule == "order-status@0.1.0"),
        "the swaps under load must have left states of both versions"
    );

    // Rollback, through the command line, returns both instances to the version before.
    let rollback = fleet.cli(&["rule", "rollback"]);
    assert!(rollback.status.success(), "{rollback:?}");
    fleet
        .until(
            "both instances to roll back",
            2,
            all_active("order-status@0.1.0"),
        )
        .await;

    // Shadow: published beside the active rule, a planted disagreement is counted and sampled,
    // and only the active rule's decision is stored.
    let version_rank = build::rule("version-rank");
    let shadow = fleet.cli(&[
        "rule",
        "publish",
        version_rank.to_str().expect("utf-8 path"),
        "--shadow",
    ]);
    assert!(shadow.status.success(), "{shadow:?}");
    fleet
        .until("both instances to run the shadow", 2, |status| {
            status.instances.iter().all(|i| {
                i.rule
                    .shadow
                    .as_ref()
                    .is_some_and(|s| s.rule.rule == "version-rank@0.1.0")
            })
        })
        .await;
    let planted_key = format!("planted-{:08x}", rand::random::<u32>());
    served
        .topic
        .produce(&[event(&planted_key, "paid", 5)])
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    served
        .topic
        .produce(&[event(&planted_key, "refunded", 1)])
        .await;
    fleet
        .until("the disagreement to be counted", 2, |status| {
            status.instances.iter().any(|i| {
                // Instance reports carry redacted samples: the planted one shows by its shape.
                i.rule.shadow.as_ref().is_some_and(|s| {
                    s.disagreements >= 1
                        && s.samples.iter().any(|d| {
                            d.incoming.key == converge::swap::REDACTED_DATA
                                && d.incoming.status == "refunded"
                                && d.incoming.version == 1
                        })
                })
            })
        })
        .await;
    let planted = stored_states(&served.redis.store, std::slice::from_ref(&planted_key)).await;
    assert_eq!(planted[&planted_key].status, "refunded");

    let status = fleet.cli(&["rule", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("disagreements"),
        "{text}"
    );

    let promote = fleet.cli(&["rule", "promote"]);
    assert!(promote.status.success(), "{promote:?}");
    fleet
        .until("both instances to serve the promoted rule", 2, |status| {
            all_active("version-rank@0.1.0")(status)
                && status.instances.iter().all(|i| i.rule.shadow.is_none())
        })
        .await;

    // The admin endpoint swaps one instance only; a bad upload is refused with its gate.
    let client = reqwest::Client::new();
    let refused = client
        .post(format!("http://{first_admin}/rule"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(read(&build::rule("forbidden-import")))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(refused.status().as_u16(), 422);
    assert!(refused.text().await.expect("body").contains("imports"));
    let uploaded = client
        .post(format!("http://{first_admin}/rule"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/wasm")
        .body(v2.clone())
        .send()
        .await
        .expect("admin answers");
    assert!(uploaded.status().is_success());
    fleet
        .until("only the first instance to switch", 2, |status| {
            status.instances.iter().all(|i| {
                let expected = if i.instance == "first" {
                    "order-status@0.2.0-next"
                } else {
                    "version-rank@0.1.0"
                };
                i.rule.active.rule == expected
            })
        })
        .await;

    first.terminate();
    second.terminate();
}
