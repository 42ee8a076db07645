//! Issue 24 item 11: signed, monotonic releases. A fleet's floor is the highest release it has
//! made active; its instances refuse an active pointer to a release below it — a replay of an
//! older, legitimately signed version by someone who can write the fleet's Redis — and hold to
//! the highest floor they have seen, so lowering the floor key does not lower theirs. A
//! rollback to an older release is an explicit, recorded downgrade (`--allow-downgrade`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use converge::config::{AdminConfig, FleetConfig};
use converge::rule::{EngineLimits, GateConfig, Gates, PublicKey, RuleEngine, TrustedKeys};
use converge::swap::{Fleet, Origin, RuleControl, SwapRecord};
use converge::telemetry::Metrics;
use converge_tests::fleet::{TestFleet, refused_swaps};
use converge_tests::process::described;
use converge_tests::process::{Server, converge};
use converge_tests::served::Served;
use converge_tests::services::{free_loopback_addr, redis_url};
use converge_tests::{build, config, orders};
use redis::AsyncCommands as _;

const R1_STAMP: &str = "order-status@0.1.0";
const R2_STAMP: &str = "order-status@0.2.0-next";

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// A signing key made by `converge rule keygen`, and the two versions of the order-status
/// rule signed with it through `converge rule sign`: release 1 (0.1.0) and release 2
/// (0.2.0-next), and 0.1.0 signed without a release (release 0, as before releases existed).
struct Releases {
    key: PublicKey,
    r0: PathBuf,
    r1: PathBuf,
    r2: PathBuf,
}

impl Releases {
    fn sign(dir: &Path) -> Self {
        let key_path = dir.join("release.key");
        let made = converge(&["rule", "keygen", "--out", path_str(&key_path)]);
        assert!(made.status.success(), "{}", described(&made));
        let key = std::fs::read_to_string(dir.join("release.key.pub"))
            .expect("KEY.pub")
            .trim()
            .parse()
            .expect("a public key");
        let sign = |rule: &Path, name: &str, release: Option<&str>| {
            let output = dir.join(name);
            let mut args = vec![
                "rule",
                "sign",
                path_str(rule),
                "--key",
                path_str(&key_path),
                "-o",
                path_str(&output),
            ];
            if let Some(release) = release {
                args.extend(["--release", release]);
            }
            let signed = converge(&args);
            assert!(signed.status.success(), "{}", described(&signed));
            let verified = converge(&["rule", "verify", path_str(&output)]);
            assert!(
                String::from_utf8_lossy(&verified.stdout)
                    .contains(&format!("release {}", release.unwrap_or("0"))),
                "{}",
                described(&verified)
            );
            output
        };
        let v1 = build::rule("order-status");
        let v2 = build::order_status_version("0.2.0-next");
        Self {
            key,
            r0: sign(&v1, "r0.wasm", None),
            r1: sign(&v1, "r1.wasm", Some("1")),
            r2: sign(&v2, "r2.wasm", Some("2")),
        }
    }

    fn hash(path: &Path) -> String {
        converge::rule::content_hash(&std::fs::read(path).expect("signed rule"))
    }
}

fn refused_by(swap: Option<&SwapRecord>, hash: &str, gate: &str) -> bool {
    swap.is_some_and(|swap| {
        swap.hash == hash
            && swap.result.as_str() == "refused"
            && swap
                .refusal
                .as_ref()
                .is_some_and(|refusal| refusal.gate.as_str() == gate)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_release_an_older_signed_release_in_redis_is_refused_by_every_instance() {
    let mut served = Served::new("wedge-release", 2).await;
    let fleet = TestFleet::new("wedge-release").await;
    let dir = served.dir.path().to_owned();
    let releases = Releases::sign(&dir);
    let (r0, r1, r2) = (
        Releases::hash(&releases.r0),
        Releases::hash(&releases.r1),
        Releases::hash(&releases.r2),
    );

    // Two instances trusting the key, starting from release 1.
    let mut admins = Vec::new();
    let mut instances = Vec::new();
    for name in ["first", "second"] {
        let admin = free_loopback_addr();
        let mut settings = served.settings.clone();
        settings.admin = Some(AdminConfig {
            listen: admin,
            ..AdminConfig::default()
        });
        settings.rule.path = releases.r1.clone();
        settings.rule.trusted_keys = vec![releases.key];
        settings.rule.fleet = Some(FleetConfig {
            redis: redis_url(),
            name: fleet.name.clone(),
            instance: Some(name.to_owned()),
            allow_unsigned: false,
        });
        let instance_dir = dir.join(name);
        std::fs::create_dir_all(&instance_dir).expect("dir");
        let config_path = config::write(&instance_dir, &settings);
        admins.push(admin);
        instances.push(Server::start(
            &config_path,
            &dir.join(format!("{name}.log")),
        ));
    }

    // Release 1, then release 2, published the ordinary way.
    for rule in [&releases.r1, &releases.r2] {
        let published = fleet.cli_trusting(&["rule", "publish", path_str(rule)], &releases.key);
        assert!(published.status.success(), "{}", described(&published));
    }
    fleet
        .until("both instances to serve release 2", 2, |status| {
            status.instances.iter().all(|i| i.rule.active.hash == r2)
        })
        .await;
    assert_eq!(fleet.cli_status().floor, 2);
    assert_eq!(fleet.get("rule:floor").await.as_deref(), Some("2"));

    let stream = orders::generate("order-", 1_000, 20, 24);
    let mut parts = stream.events.chunks(stream.events.len() / 3 + 1);
    served.topic.produce(parts.next().expect("a part")).await;

    // 1. Someone who can write Redis points the fleet back at release 1, whose blob is still
    // stored (and perfectly signed): every instance refuses it and serves release 2 on.
    fleet.set("rule:active", &r1).await;
    served.topic.produce(parts.next().expect("a part")).await;
    fleet
        .until("both instances to refuse release 1", 2, |status| {
            status.instances.iter().all(|instance| {
                instance.rule.active.hash == r2
                    && refused_by(instance.rule.last_swap.as_ref(), &r1, "integrity")
            })
        })
        .await;
    for instance in fleet.cli_status().instances {
        let refusal = instance.rule.last_swap.and_then(|swap| swap.refusal);
        let reason = refusal.map(|refusal| refusal.reason).unwrap_or_default();
        assert!(
            reason.contains("release 1, below the fleet's floor 2"),
            "{}: {reason}",
            instance.instance
        );
    }

    // 2. The same, with the floor key deleted first and a release signed before releases
    // existed (release 0) published through the ordinary command: Redis takes it (its floor is
    // gone), and the instances, which hold to the floor they have seen, refuse it.
    fleet.del("rule:floor").await;
    let replayed = fleet.cli_trusting(&["rule", "publish", path_str(&releases.r0)], &releases.key);
    assert!(replayed.status.success(), "{}", described(&replayed));
    assert_eq!(fleet.get("rule:active").await.as_deref(), Some(r0.as_str()));
    fleet
        .until("both instances to refuse release 0", 2, |status| {
            status.instances.iter().all(|instance| {
                instance.rule.active.hash == r2
                    && refused_by(instance.rule.last_swap.as_ref(), &r0, "integrity")
            })
        })
        .await;

    // The operator puts release 2 back; nothing changes on the instances, which serve it.
    let restored = fleet.cli_trusting(&["rule", "publish", path_str(&releases.r2)], &releases.key);
    assert!(restored.status.success(), "{}", described(&restored));
    assert_eq!(fleet.cli_status().floor, 2);
    for part in parts {
        served.topic.produce(part).await;
    }

    served
        .converged(&stream.expected, Duration::from_secs(90))
        .await;
    served.assert_written_by(&stream.expected, R2_STAMP).await;
    served.dead_letters.assert_empty().await;
    for admin in &admins {
        assert_eq!(refused_swaps(*admin, "integrity").await, 2, "{admin}");
    }
    for instance in fleet.cli_status().instances {
        assert_eq!(instance.rule.active.hash, r2, "{}", instance.instance);
        assert_eq!(instance.rule.active.rule, R2_STAMP);
    }
    for instance in instances {
        instance.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedge_release_rollback_below_the_floor_needs_allow_downgrade_and_is_recorded() {
    let fleet = TestFleet::new("wedge-downgrade").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let releases = Releases::sign(dir.path());
    let (r1, r2) = (Releases::hash(&releases.r1), Releases::hash(&releases.r2));
    let key = releases.key;

    // An instance of the fleet, in this process: the fleet's rule is offered to its control
    // on every sync, as `serve` does every 2 s.
    let gates = Gates::new(
        RuleEngine::new(EngineLimits::default()).expect("engine"),
        GateConfig::default(),
    )
    .with_trusted_keys(TrustedKeys::new([key]));
    let initial = std::fs::read(&releases.r1).expect("release 1");
    let admitted = gates.admit(&initial, None).expect("release 1 passes");
    let control = Arc::new(RuleControl::new(
        gates,
        admitted,
        &Origin::Admin,
        Arc::new(Metrics::new()),
    ));
    let instance = Fleet::connect(&redis_url(), &fleet.name)
        .await
        .expect("fleet");
    let mut seen = (None, None);
    let sync = async |seen: &mut (Option<String>, Option<String>)| {
        instance.sync(&control, seen).await.expect("synced");
    };

    for rule in [&releases.r1, &releases.r2] {
        let published = fleet.cli_trusting(&["rule", "publish", path_str(rule)], &key);
        assert!(published.status.success(), "{}", described(&published));
        sync(&mut seen).await;
    }
    assert_eq!(control.active_hash(), r2);
    let before = fleet.cli_status();
    assert_eq!((before.floor, before.downgrades.len()), (2, 0));
    assert_eq!(before.history, [r2.as_str(), r1.as_str()]);

    // Release 1 cannot be published again over release 2.
    let republished = fleet.cli_trusting(&["rule", "publish", path_str(&releases.r1)], &key);
    assert_eq!(
        republished.status.code(),
        Some(1),
        "{}",
        described(&republished)
    );
    assert!(
        described(&republished).contains("release 1, below fleet"),
        "{}",
        described(&republished)
    );

    // A rollback to release 1 is a downgrade: refused without --allow-downgrade, and nothing
    // changes.
    let refused = fleet.cli_trusting(&["rule", "rollback"], &key);
    assert_eq!(refused.status.code(), Some(1), "{}", described(&refused));
    let said = described(&refused);
    assert!(said.contains("is a downgrade"), "{said}");
    assert!(said.contains("--allow-downgrade"), "{said}");
    let unchanged = fleet.cli_status();
    assert_eq!(unchanged.active.as_deref(), Some(r2.as_str()));
    assert_eq!(unchanged.history, before.history);
    assert_eq!((unchanged.floor, unchanged.downgrades.len()), (2, 0));

    // With it: the pointer moves, the floor is lowered, the downgrade recorded.
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let downgraded = fleet.cli_trusting(&["rule", "rollback", "--allow-downgrade"], &key);
    assert!(downgraded.status.success(), "{}", described(&downgraded));
    assert!(
        described(&downgraded).contains("DOWNGRADED"),
        "{}",
        described(&downgraded)
    );
    let after = fleet.cli_status();
    assert_eq!(after.active.as_deref(), Some(r1.as_str()));
    assert_eq!(after.floor, 1);
    assert_eq!(after.history, [r1.as_str()]);
    let [record] = after.downgrades.as_slice() else {
        panic!("one downgrade recorded: {after:#?}");
    };
    assert_eq!(record.from.as_deref(), Some(r2.as_str()));
    assert_eq!(record.to, r1);
    assert_eq!((record.release, record.floor_before), (1, 2));
    assert!(record.at_ms >= started_ms, "{record:?}");
    assert!(record.by.contains('@'), "{record:?}");
    let url = redis_url();
    let shown = converge(&["rule", "status", "--redis", &url, "--fleet", &fleet.name]);
    assert!(shown.status.success(), "{}", described(&shown));
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("release floor 1"), "{shown}");
    assert!(
        shown.contains("downgrade at ") && shown.contains(&record.by),
        "{shown}"
    );

    // The instance follows the recorded downgrade.
    sync(&mut seen).await;
    assert_eq!(control.active_hash(), r1);
    assert_eq!(control.status().active.rule, R1_STAMP);

    // Release 2 again, then an attacker lowers the floor key and points at release 1 without
    // recording a downgrade: the instance holds to floor 2 and refuses it.
    let forward = fleet.cli_trusting(&["rule", "publish", path_str(&releases.r2)], &key);
    assert!(forward.status.success(), "{}", described(&forward));
    sync(&mut seen).await;
    assert_eq!(control.active_hash(), r2);
    fleet.set("rule:floor", "1").await;
    fleet.set("rule:active", &r1).await;
    sync(&mut seen).await;
    assert_eq!(control.active_hash(), r2);
    let status = control.status();
    assert!(
        refused_by(status.last_swap.as_ref(), &r1, "integrity"),
        "{:?}",
        status.last_swap
    );

    // A floor key of another type is no error for the instance: the pointer is refused.
    fleet.del("rule:floor").await;
    let _: () = fleet
        .redis()
        .rpush(fleet.key("rule:floor"), "9")
        .await
        .expect("a list");
    let r0 = Releases::hash(&releases.r0);
    let r0_blob = std::fs::read(&releases.r0).expect("release 0");
    fleet.plant_blob(&r0, &r0_blob).await;
    fleet.set("rule:active", &r0).await;
    sync(&mut seen).await;
    assert_eq!(control.active_hash(), r2);
    let status = control.status();
    assert!(
        refused_by(status.last_swap.as_ref(), &r0, "integrity"),
        "{:?}",
        status.last_swap
    );
    let reason = status
        .last_swap
        .and_then(|swap| swap.refusal)
        .map(|refusal| refusal.reason)
        .unwrap_or_default();
    assert!(reason.contains("floor holds \"(a list)\""), "{reason}");
}
