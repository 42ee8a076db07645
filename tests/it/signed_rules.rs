//! Signed rules and the limits on every rule path (issue 15, "Signed rules" and "Limits
//! everywhere"): keys, signing and verifying through the command line; the signature gate on
//! start, file watch, fleet, publish and admin; blobs, pointers and history written straight
//! into the fleet's Redis, refused by two running instances while orders flow; key rotation;
//! the component size cap, the engine's instance, memory and table caps, and the bounded
//! refused-history.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use converge::rule::{
    EngineLimits, GateConfig, GateError, Gates, LoadError, PublicKey, RuleEngine, SignatureError,
    SigningKey, TrustedKeys, content_hash, sign,
};
use converge::swap::{Origin, Role, RuleControl, SwapRecord};
use converge::telemetry::Metrics;
use converge_tests::fleet::{TestFleet, instance_config, refused_swaps};
use converge_tests::process::described;
use converge_tests::process::{Converge, Server};
use converge_tests::served::Served;
use converge_tests::{build, config, orders};
use redis::AsyncCommands as _;
use wasm_encoder::ComponentSection as _;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn key() -> SigningKey {
    SigningKey::generate().expect("a signing key")
}

fn signed(component: &[u8], key: &SigningKey) -> Vec<u8> {
    sign(component, key).expect("signs").component
}

/// `component` with a custom section appended after it was signed: what an attacker's edit of
/// a signed blob looks like (anything else changed breaks the signature just the same).
fn altered(component: &[u8]) -> Vec<u8> {
    let mut altered = component.to_vec();
    wasm_encoder::CustomSection {
        name: "planted".into(),
        data: b"changed after signing".as_slice().into(),
    }
    .append_to_component(&mut altered);
    altered
}

fn engine(limits: EngineLimits) -> RuleEngine {
    RuleEngine::new(limits).expect("engine")
}

fn gates_trusting(keys: &[PublicKey]) -> Gates {
    Gates::new(engine(EngineLimits::default()), GateConfig::default())
        .with_trusted_keys(TrustedKeys::new(keys.iter().copied()))
}

fn control(gates: Gates, initial: &[u8]) -> Arc<RuleControl> {
    let admitted = gates.admit(initial, None).expect("the initial rule passes");
    Arc::new(RuleControl::new(
        gates,
        admitted,
        &Origin::Admin,
        Arc::new(Metrics::new()),
    ))
}

fn order_status() -> Vec<u8> {
    read(&build::rule("order-status"))
}

fn order_status_next() -> Vec<u8> {
    read(&build::order_status_version("0.2.0-next"))
}

/// Runs `converge ARGS` with `env`, to its end.
fn converge(args: &[&str], env: &[(&str, &str)]) -> Output {
    Converge::new(args).envs(env).output()
}

/// Runs `converge serve` on `config`, which must stop on its own within a minute; one that
/// serves instead is stopped and fails the test.
fn refused_start(config: &Path) -> Output {
    Converge::new(&["serve", "--config"])
        .arg(config)
        .within(Duration::from_secs(60))
        .output()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn last_refusal_gate(record: Option<&SwapRecord>) -> Option<&str> {
    record
        .filter(|swap| swap.result.as_str() == "refused")
        .and_then(|swap| swap.refusal.as_ref())
        .map(|refusal| refusal.gate.as_str())
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn supply_keygen_sign_and_verify_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = dir.path().join("release.key");
    let key_arg = path_str(&key_path);
    let made = converge(&["rule", "keygen", "--out", key_arg], &[]);
    assert!(made.status.success(), "{}", described(&made));
    let public_line = std::fs::read_to_string(dir.path().join("release.key.pub")).expect("KEY.pub");
    let public: PublicKey = public_line
        .trim()
        .parse()
        .expect("KEY.pub holds a public key");
    let printed = String::from_utf8_lossy(&made.stdout);
    assert!(printed.contains(public_line.trim()), "{printed}");
    assert!(printed.contains(&public.id()), "{printed}");
    let private = std::fs::read_to_string(&key_path).expect("the private key");
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is its owner's only");
    }
    // Never overwritten.
    let again = converge(&["rule", "keygen", "--out", key_arg], &[]);
    assert!(!again.status.success(), "{}", described(&again));
    assert!(
        described(&again).contains("not overwriting"),
        "{}",
        described(&again)
    );
    assert_eq!(std::fs::read_to_string(&key_path).expect("key"), private);

    // Sign, and verify against the key.
    let rule = build::rule("order-status");
    let signed_path = dir.path().join("order-status.signed.wasm");
    let signing = converge(
        &[
            "rule",
            "sign",
            path_str(&rule),
            "--key",
            key_arg,
            "-o",
            path_str(&signed_path),
        ],
        &[],
    );
    assert!(signing.status.success(), "{}", described(&signing));
    let trusted = public.to_string();
    let verified = converge(
        &[
            "rule",
            "verify",
            path_str(&signed_path),
            "--trusted-key",
            &trusted,
        ],
        &[],
    );
    assert!(verified.status.success(), "{}", described(&verified));
    assert!(
        described(&verified).contains("PASS"),
        "{}",
        described(&verified)
    );

    // Another key (here through the environment) does not trust it; the message names both.
    let other = key().public_key();
    let untrusted = converge(
        &["rule", "verify", path_str(&signed_path)],
        &[("CONVERGE_TRUSTED_KEYS", &other.to_string())],
    );
    assert_eq!(
        untrusted.status.code(),
        Some(1),
        "{}",
        described(&untrusted)
    );
    assert!(
        described(&untrusted).contains(&public.id()),
        "{}",
        described(&untrusted)
    );
    assert!(
        described(&untrusted).contains(&other.id()),
        "{}",
        described(&untrusted)
    );
    // The unsigned original is not signed.
    let unsigned = converge(
        &["rule", "verify", path_str(&rule), "--trusted-key", &trusted],
        &[],
    );
    assert_eq!(unsigned.status.code(), Some(1), "{}", described(&unsigned));
    assert!(
        described(&unsigned).contains("not signed"),
        "{}",
        described(&unsigned)
    );

    // Vectors packed after signing break the signature, and the message says what to do.
    let packed = dir.path().join("packed.wasm");
    let vectors = build::workspace_root().join("plugin/vectors/order-status.json");
    let pack = converge(
        &[
            "rule",
            "pack",
            path_str(&signed_path),
            "--vectors",
            path_str(&vectors),
            "-o",
            path_str(&packed),
        ],
        &[],
    );
    assert!(pack.status.success(), "{}", described(&pack));
    let broken = converge(
        &[
            "rule",
            "verify",
            path_str(&packed),
            "--trusted-key",
            &trusted,
        ],
        &[],
    );
    assert_eq!(broken.status.code(), Some(1), "{}", described(&broken));
    assert!(
        described(&broken).contains("does not verify"),
        "{}",
        described(&broken)
    );
    assert!(
        described(&broken).contains("pack first, then sign"),
        "{}",
        described(&broken)
    );

    // The signed component is the rule it was: it passes every gate under the key.
    let admitted = gates_trusting(&[public])
        .admit(&read(&signed_path), None)
        .expect("the signed rule passes every gate");
    assert_eq!(admitted.compiled.info().stamp(), "order-status@0.1.0");
    assert!(matches!(
        gates_trusting(&[public]).admit(&order_status(), None),
        Err(GateError::Signature(SignatureError::Unsigned { .. }))
    ));
}

#[test]
fn supply_rotation_accepts_either_key_during_the_overlap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keygen = |name: &str| {
        let path = dir.path().join(name);
        let made = converge(&["rule", "keygen", "--out", path_str(&path)], &[]);
        assert!(made.status.success(), "{}", described(&made));
        let public: PublicKey = std::fs::read_to_string(dir.path().join(format!("{name}.pub")))
            .expect("KEY.pub")
            .trim()
            .parse()
            .expect("a public key");
        (path, public)
    };
    let (old_path, old) = keygen("old.key");
    let (new_path, new) = keygen("new.key");
    let rule = build::rule("order-status");
    let sign_with = |input: &Path, key: &Path, output: &Path| {
        let signing = converge(
            &[
                "rule",
                "sign",
                path_str(input),
                "--key",
                path_str(key),
                "-o",
                path_str(output),
            ],
            &[],
        );
        assert!(signing.status.success(), "{}", described(&signing));
    };
    let by_old = dir.path().join("by-old.wasm");
    let by_new = dir.path().join("by-new.wasm");
    let by_both = dir.path().join("by-both.wasm");
    sign_with(&rule, &old_path, &by_old);
    sign_with(&rule, &new_path, &by_new);
    // During the overlap, releases are signed with both keys: the second signature is added.
    sign_with(&by_old, &new_path, &by_both);
    let listed = converge(
        &[
            "rule",
            "verify",
            path_str(&by_both),
            "--trusted-key",
            &new.to_string(),
        ],
        &[],
    );
    assert!(listed.status.success(), "{}", described(&listed));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout)
            .matches("verifies")
            .count(),
        2,
        "{}",
        described(&listed)
    );

    let admits = |trusted: &[PublicKey], component: &Path| {
        gates_trusting(trusted).admit(&read(component), None)
    };
    // 1. Both keys trusted everywhere: a rule signed by either (or both) passes.
    for component in [&by_old, &by_new, &by_both] {
        admits(&[old, new], component).expect("either key is trusted during the overlap");
    }
    // 2. The old key removed: what only it signed is refused, naming the key; the rest passes.
    match admits(&[new], &by_old) {
        Err(GateError::Signature(SignatureError::Untrusted { signers, trusted })) => {
            assert_eq!(signers, [old.id()]);
            assert_eq!(trusted, [new.id()]);
        }
        other => panic!("expected an untrusted signer, got {other:?}"),
    }
    admits(&[new], &by_new).expect("signed by the new key");
    admits(&[new], &by_both).expect("signed by both keys");
    // Before the new key is trusted, a rule signed only by it is refused.
    assert!(admits(&[old], &by_new).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_file_watch_refuses_an_unsigned_rule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rule.wasm");
    let trusted = key();
    let v1 = signed(&order_status(), &trusted);
    let next = order_status_next();
    std::fs::write(&path, &v1).expect("written");
    // A cap above every candidate here but the padded one.
    let cap = v1.len().max(next.len()) + 4096;
    let gates = Gates::new(
        engine(EngineLimits {
            max_component_bytes: cap,
            ..EngineLimits::default()
        }),
        GateConfig::default(),
    )
    .with_trusted_keys(TrustedKeys::new([trusted.public_key()]));
    let metrics = Arc::new(Metrics::new());
    let admitted = gates.admit(&v1, None).expect("the signed rule passes");
    let control = Arc::new(RuleControl::new(
        gates,
        admitted,
        &Origin::Admin,
        Arc::clone(&metrics),
    ));
    let (stop, stopped) = converge::shutdown::Shutdown::new();
    let watching = converge::swap::watch_rule_file(path.clone(), Arc::clone(&control), stopped)
        .expect("watching");
    let replace = |bytes: &[u8]| {
        let staged = dir.path().join("rule.wasm.new");
        std::fs::write(&staged, bytes).expect("staged");
        std::fs::rename(&staged, &path).expect("renamed");
    };

    // Unsigned: refused at the signature gate, named in status and metrics; v1 serves on.
    replace(&next);
    wait_for("the unsigned rule to be refused", || {
        control
            .status()
            .last_swap
            .is_some_and(|swap| swap.hash == content_hash(&next))
    })
    .await;
    let status = control.status();
    assert_eq!(
        last_refusal_gate(status.last_swap.as_ref()),
        Some("signature")
    );
    assert_eq!(status.active.rule, "order-status@0.1.0");
    assert!(
        metrics
            .render()
            .lines()
            .any(|line| line.contains("result=\"refused\"") && line.contains("gate=\"signature\"")),
        "{}",
        metrics.render()
    );

    // Over the size cap: refused unread, at the size gate.
    let mut padded = signed(&next, &trusted);
    wasm_encoder::CustomSection {
        name: "padding".into(),
        data: vec![0u8; cap].into(),
    }
    .append_to_component(&mut padded);
    replace(&padded);
    wait_for("the oversized rule to be refused", || {
        last_refusal_gate(control.status().last_swap.as_ref()) == Some("size")
    })
    .await;
    assert_eq!(control.status().active.rule, "order-status@0.1.0");

    // Signed by the trusted key: swapped in.
    replace(&signed(&next, &trusted));
    wait_for("the signed rule to serve", || {
        control.status().active.rule == "order-status@0.2.0-next"
    })
    .await;

    stop.trigger();
    watching.await.expect("the watch stops");
}

#[test]
fn supply_serve_refuses_to_start_with_an_unsigned_rule_when_keys_are_trusted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trusted = key();
    let stranger = key();
    let start = |name: &str, rule: &[u8], keys: Vec<PublicKey>| {
        let rule_path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&rule_path, rule).expect("rule written");
        let config_dir = dir.path().join(name);
        std::fs::create_dir_all(&config_dir).expect("dir");
        // Nothing is connected before the rule is admitted: the names need not exist.
        let mut settings = config::kafka_serve(
            "supply-never-read",
            "supply-never-written",
            "supply-never-joined",
            config::standalone_store("supply-never-stored:"),
        );
        settings.rule = config::rule(&rule_path);
        settings.rule.trusted_keys = keys;
        let config_path = config::write(&config_dir, &settings);
        refused_start(&config_path)
    };
    let public = trusted.public_key();

    let unsigned = start("unsigned", &order_status(), vec![public]);
    assert_eq!(unsigned.status.code(), Some(2), "{}", described(&unsigned));
    let said = described(&unsigned);
    assert!(said.contains("refused by the signature gate"), "{said}");
    assert!(said.contains("not signed"), "{said}");
    assert!(said.contains(&public.id()), "{said}");

    let by_stranger = start(
        "stranger",
        &signed(&order_status(), &stranger),
        vec![public],
    );
    assert_eq!(
        by_stranger.status.code(),
        Some(2),
        "{}",
        described(&by_stranger)
    );
    assert!(
        described(&by_stranger).contains(&stranger.public_key().id()),
        "{}",
        described(&by_stranger)
    );

    // A forged signature is refused even with no key trusted.
    let forged = start(
        "forged",
        &altered(&signed(&order_status(), &trusted)),
        vec![],
    );
    assert_eq!(forged.status.code(), Some(2), "{}", described(&forged));
    assert!(
        described(&forged).contains("does not verify"),
        "{}",
        described(&forged)
    );

    // The same key twice is refused with the configuration.
    let twice = start(
        "twice",
        &signed(&order_status(), &trusted),
        vec![public, public],
    );
    assert_eq!(twice.status.code(), Some(2), "{}", described(&twice));
    assert!(
        described(&twice).contains("rule.trusted_keys"),
        "{}",
        described(&twice)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_publish_skip_local_gates_still_checks_the_signature() {
    let fleet = TestFleet::new("supply-publish").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let trusted = key();
    let stranger = key();
    let trusted_arg = trusted.public_key().to_string();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("written");
        path
    };
    let unsigned = write("unsigned.wasm", &order_status());
    let by_stranger = write("stranger.wasm", &signed(&order_status(), &stranger));
    let forged = write("forged.wasm", &altered(&signed(&order_status(), &trusted)));
    let good = write("good.wasm", &signed(&order_status(), &trusted));

    for (rule, trust) in [
        (&unsigned, Some(&trusted_arg)),
        (&by_stranger, Some(&trusted_arg)),
        // A signature that does not verify is refused with no key given.
        (&forged, None),
    ] {
        let mut args = vec!["rule", "publish", path_str(rule), "--skip-local-gates"];
        if let Some(key) = trust {
            args.extend(["--trusted-key", key]);
        }
        let refused = fleet.cli(&args);
        assert_eq!(refused.status.code(), Some(1), "{}", described(&refused));
        assert!(
            described(&refused).contains("refused by the signature gate"),
            "{}",
            described(&refused)
        );
        assert_eq!(fleet.active().await, None, "nothing may be published");
    }
    // Without --skip-local-gates the same.
    let gated = fleet.cli(&[
        "rule",
        "publish",
        path_str(&unsigned),
        "--trusted-key",
        &trusted_arg,
    ]);
    assert_eq!(gated.status.code(), Some(1), "{}", described(&gated));

    // Vectors cannot be packed into a signed component.
    let vectors = build::workspace_root().join("plugin/vectors/order-status.json");
    let packing = fleet.cli(&[
        "rule",
        "publish",
        path_str(&good),
        "--vectors",
        path_str(&vectors),
    ]);
    assert!(!packing.status.success(), "{}", described(&packing));
    assert!(
        described(&packing).contains("is signed"),
        "{}",
        described(&packing)
    );
    assert_eq!(fleet.active().await, None);

    let published = fleet.cli(&[
        "rule",
        "publish",
        path_str(&good),
        "--skip-local-gates",
        "--trusted-key",
        &trusted_arg,
    ]);
    assert!(published.status.success(), "{}", described(&published));
    assert_eq!(fleet.active().await, Some(content_hash(&read(&good))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_unsigned_or_forged_blobs_in_redis_are_refused_by_two_instances_while_orders_flow() {
    let mut served = Served::new("supply-sig", 4).await;
    let fleet = TestFleet::new("supply-sig").await;
    let dir = served.dir.path().to_owned();
    let trusted = key();
    let stranger = key();
    let public = trusted.public_key();

    let v1 = signed(&order_status(), &trusted);
    let v1_hash = content_hash(&v1);
    let v1_path = dir.join("order-status.signed.wasm");
    std::fs::write(&v1_path, &v1).expect("written");
    let mut base = served.settings.clone();
    base.rule.path = v1_path.clone();
    base.rule.trusted_keys = vec![public];
    let mut admins = Vec::new();
    let mut instances = Vec::new();
    for name in ["first", "second"] {
        let (config_path, admin) = instance_config(&dir, name, base.clone(), &fleet.name, None);
        admins.push(admin);
        instances.push(Server::start(
            &config_path,
            &dir.join(format!("{name}.log")),
        ));
    }
    // The fleet's rule is the signed one, published the ordinary way.
    let published = fleet.cli(&[
        "rule",
        "publish",
        path_str(&v1_path),
        "--trusted-key",
        &public.to_string(),
    ]);
    assert!(published.status.success(), "{}", described(&published));
    fleet
        .until("both instances to serve the signed rule", 2, |status| {
            status
                .instances
                .iter()
                .all(|i| i.rule.active.hash == v1_hash)
        })
        .await;

    // 2,000 orders, produced in parts while the fleet's keys are tampered with.
    let stream = orders::generate("order-", 2_000, 20, 15);
    let mut parts = stream.events.chunks(stream.events.len() / 8 + 1);
    served.topic.produce(parts.next().expect("a part")).await;

    let next = order_status_next();
    let unsigned_hash = content_hash(&next);
    let by_stranger = signed(&next, &stranger);
    let forged = altered(&signed(&next, &trusted));
    let not_its_own = content_hash(b"not the hash of what is stored here");
    let garbage = "../../rule:blob:nothing";
    // (what, the pointer, the gate that must refuse it)
    let attacks: Vec<(&str, String, &str)> = vec![
        ("an unsigned blob", unsigned_hash.clone(), "signature"),
        (
            "a blob signed by an untrusted key",
            content_hash(&by_stranger),
            "signature",
        ),
        (
            "a signed blob altered after signing",
            content_hash(&forged),
            "signature",
        ),
        (
            "a signed blob under a hash not its own",
            not_its_own.clone(),
            "integrity",
        ),
        (
            "a pointer that is not a hash",
            garbage.to_owned(),
            "integrity",
        ),
    ];
    fleet.plant_blob(&unsigned_hash, &next).await;
    fleet
        .plant_blob(&content_hash(&by_stranger), &by_stranger)
        .await;
    fleet.plant_blob(&content_hash(&forged), &forged).await;
    // A perfectly signed rule: only where it is stored is wrong.
    fleet
        .plant_blob(&not_its_own, &signed(&next, &trusted))
        .await;
    for (what, pointer, gate) in &attacks {
        fleet.point_at(pointer).await;
        if let Some(part) = parts.next() {
            served.topic.produce(part).await;
        }
        fleet
            .until(&format!("both instances to refuse {what}"), 2, |status| {
                status.instances.iter().all(|instance| {
                    let swap = instance.rule.last_swap.as_ref();
                    instance.rule.active.hash == v1_hash
                        && swap.is_some_and(|swap| swap.hash == *pointer)
                        && last_refusal_gate(swap) == Some(*gate)
                })
            })
            .await;
        // As `converge rule status --json` shows it.
        for instance in fleet.cli_status().instances {
            let swap = instance.rule.last_swap.as_ref();
            assert_eq!(last_refusal_gate(swap), Some(*gate), "{what}: {swap:?}");
            assert_eq!(instance.rule.active.rule, "order-status@0.1.0");
        }
    }

    // Rollback from the planted pointer: the history's newest entry is the signed rule, which
    // is checked and pointed at again.
    let rolled = fleet.cli(&["rule", "rollback", "--trusted-key", &public.to_string()]);
    assert!(rolled.status.success(), "{}", described(&rolled));
    assert_eq!(fleet.active().await, Some(v1_hash.clone()));

    // An edited history: rollback refuses to follow it and changes nothing.
    let unsigned_rank = read(&build::rule("version-rank"));
    let unsigned_rank_hash = content_hash(&unsigned_rank);
    fleet.plant_blob(&unsigned_rank_hash, &unsigned_rank).await;
    let elsewhere = content_hash(b"another hash that is not its blob's");
    fleet.plant_blob(&elsewhere, &signed(&next, &trusted)).await;
    for (entry, refusal) in [
        ("not-a-hash", "not a content hash"),
        (elsewhere.as_str(), "altered or planted"),
        (unsigned_rank_hash.as_str(), "not signed"),
    ] {
        fleet.set_history(&[&v1_hash, entry]).await;
        let refused = fleet.cli(&["rule", "rollback", "--trusted-key", &public.to_string()]);
        assert_eq!(refused.status.code(), Some(1), "{}", described(&refused));
        assert!(
            described(&refused).contains(refusal),
            "{}",
            described(&refused)
        );
        assert_eq!(fleet.active().await, Some(v1_hash.clone()), "{entry}");
        assert_eq!(fleet.history().await, [v1_hash.as_str(), entry]);
    }
    for part in parts {
        served.topic.produce(part).await;
    }

    served
        .converged(&stream.expected, Duration::from_secs(90))
        .await;
    served
        .assert_written_by(&stream.expected, "order-status@0.1.0")
        .await;
    served.dead_letters.assert_empty().await;
    for admin in &admins {
        assert_eq!(refused_swaps(*admin, "signature").await, 3, "{admin}");
        assert_eq!(refused_swaps(*admin, "integrity").await, 2, "{admin}");
    }
    for instance in fleet.cli_status().instances {
        assert_eq!(instance.rule.active.hash, v1_hash, "{}", instance.instance);
    }
    for instance in instances {
        instance.terminate();
    }
}

/// The top-level core modules of `component`: the index the next module appended gets.
fn core_modules(component: &[u8]) -> u32 {
    let mut depth = 0usize;
    let mut modules = 0;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.expect("a component") {
            wasmparser::Payload::ModuleSection { .. } => {
                if depth == 0 {
                    modules += 1;
                }
                depth += 1;
            }
            wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    modules
}

/// `component` with `module` appended and instantiated `times` times beside the rule: what a
/// hostile component does to reserve instances, memories or tables.
fn with_instances(component: &[u8], module: &wasm_encoder::Module, times: u32) -> Vec<u8> {
    let index = core_modules(component);
    let mut bytes = component.to_vec();
    wasm_encoder::ModuleSection(module).append_to_component(&mut bytes);
    let mut instances = wasm_encoder::InstanceSection::new();
    for _ in 0..times {
        instances.instantiate(index, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    instances.append_to_component(&mut bytes);
    bytes
}

fn module_with(memories: u32, memory_pages: u64, tables: u32) -> wasm_encoder::Module {
    let mut module = wasm_encoder::Module::new();
    if tables > 0 {
        let mut section = wasm_encoder::TableSection::new();
        for _ in 0..tables {
            section.table(wasm_encoder::TableType {
                element_type: wasm_encoder::RefType::FUNCREF,
                table64: false,
                minimum: 1,
                maximum: None,
                shared: false,
            });
        }
        module.section(&section);
    }
    if memories > 0 {
        let mut section = wasm_encoder::MemorySection::new();
        for _ in 0..memories {
            section.memory(wasm_encoder::MemoryType {
                minimum: memory_pages,
                maximum: None,
                memory64: false,
                shared: false,
                page_size_log2: None,
            });
        }
        module.section(&section);
    }
    module
}

#[test]
fn supply_rules_over_the_instance_memory_or_table_caps_fail_to_instantiate() {
    let limits = EngineLimits {
        memory_cap_bytes: 16 << 20,
        ..EngineLimits::default()
    };
    let gates = Gates::new(engine(limits), GateConfig::default());
    let rule = order_status();
    let refusal = |component: &[u8]| match gates.admit(component, None) {
        Err(error) => {
            assert_eq!(error.gate().as_str(), "compile", "{error}");
            error.to_string()
        }
        Ok(_) => panic!("a component over the caps must be refused"),
    };
    // Within the caps the appended instances change nothing: the rule passes.
    let empty = wasm_encoder::Module::new();
    gates
        .admit(&with_instances(&rule, &empty, 2), None)
        .expect("a few extra instances are within the caps");
    gates
        .admit(&with_instances(&rule, &module_with(1, 1, 1), 1), None)
        .expect("one more memory and table are within the caps");

    let instances = refusal(&with_instances(&rule, &empty, limits.max_instances as u32));
    assert!(instances.contains("instance count too high"), "{instances}");
    assert!(
        instances.contains(&format!("{} core instances", limits.max_instances)),
        "{instances}"
    );
    let memories = refusal(&with_instances(
        &rule,
        &module_with(1, 1, 0),
        limits.max_memories as u32,
    ));
    assert!(memories.contains("memory count too high"), "{memories}");
    let tables = refusal(&with_instances(
        &rule,
        &module_with(0, 0, limits.max_tables as u32 + 1),
        1,
    ));
    assert!(tables.contains("table count too high"), "{tables}");
    // The memory cap holds for all the memories together: two of 10 MiB pass each on its own
    // but not beside each other under 16 MiB.
    let ten_mib_pages = (10 << 20) / 65_536;
    gates
        .admit(
            &with_instances(&rule, &module_with(1, ten_mib_pages, 0), 1),
            None,
        )
        .expect("one 10 MiB memory fits beside the rule's");
    match gates.admit(
        &with_instances(&rule, &module_with(1, ten_mib_pages, 0), 2),
        None,
    ) {
        Err(GateError::Load(LoadError::Info(converge::rule::DecideError::MemoryCap {
            cap,
            ..
        }))) => assert_eq!(cap, 16 << 20),
        other => panic!("expected the memory cap, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_a_component_over_the_size_cap_is_refused_on_every_path() {
    let rule = order_status();
    let next = order_status_next();
    let cap = rule.len().max(next.len()) + 1024;
    let mut big = next.clone();
    wasm_encoder::CustomSection {
        name: "padding".into(),
        data: vec![7u8; cap].into(),
    }
    .append_to_component(&mut big);
    let limits = EngineLimits {
        max_component_bytes: cap,
        ..EngineLimits::default()
    };
    let gates = Gates::new(engine(limits), GateConfig::default());
    // The gates, in memory.
    match gates.admit(&big, None) {
        Err(error) => assert_eq!(error.gate().as_str(), "size", "{error}"),
        Ok(_) => panic!("over the cap"),
    }
    // A file: refused by its size, unread.
    let dir = tempfile::tempdir().expect("temp dir");
    let big_path = dir.path().join("big.wasm");
    std::fs::write(&big_path, &big).expect("written");
    assert!(matches!(
        converge::rule::read_component(&big_path, cap),
        Err(LoadError::TooLarge { .. })
    ));
    let cap_arg = cap.to_string();
    for args in [
        vec![
            "check",
            path_str(&big_path),
            "--max-component-bytes",
            &cap_arg,
        ],
        vec![
            "rule",
            "verify",
            path_str(&big_path),
            "--max-component-bytes",
            &cap_arg,
        ],
    ] {
        let refused = converge(&args, &[]);
        assert!(!refused.status.success(), "{}", described(&refused));
        assert!(
            described(&refused).contains("over the cap"),
            "{}",
            described(&refused)
        );
    }

    // The fleet: the blob's length is asked before it is read; the refusal is recorded on the
    // instance and remembered by the fleet.
    let fleet = TestFleet::new("supply-size").await;
    let control = control(gates, &rule);
    let mut seen = (None, None);
    let big_hash = fleet
        .fleet
        .publish(&big, Role::Active)
        .await
        .expect("published");
    fleet.fleet.sync(&control, &mut seen).await.expect("synced");
    let status = control.status();
    assert_eq!(last_refusal_gate(status.last_swap.as_ref()), Some("size"));
    assert_eq!(status.active.rule, "order-status@0.1.0");
    let score: Option<f64> = fleet
        .redis()
        .zscore(fleet.key("rule:refused"), &big_hash)
        .await
        .expect("zscore");
    assert!(score.is_some(), "the fleet remembers the refusal");

    // The refused-history stays bounded however many bad candidates arrive.
    for n in 0..300u32 {
        let garbage = format!("not a rule {n}").into_bytes();
        fleet
            .fleet
            .publish(&garbage, Role::Active)
            .await
            .expect("published");
        fleet.fleet.sync(&control, &mut seen).await.expect("synced");
    }
    assert_eq!(fleet.refused_count().await, 256);
    assert_eq!(
        last_refusal_gate(control.status().last_swap.as_ref()),
        Some("compile")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supply_admin_refuses_an_unsigned_rule_when_keys_are_trusted() {
    let mut served = Served::new("supply-admin-sig", 1).await.with_admin();
    let admin = served.admin();
    let trusted = key();
    let v1 = signed(&order_status(), &trusted);
    let rule_path = served.dir.path().join("rule.wasm");
    std::fs::write(&rule_path, &v1).expect("written");
    let token = "supply-signature-admin-token";
    let settings = &mut served.settings;
    settings.rule.path = rule_path;
    settings.rule.trusted_keys = vec![trusted.public_key()];
    settings.rule.max_component_bytes = v1.len() * 4;
    if let Some(admin) = &mut settings.admin {
        admin.token = Some(converge::redact::Secret::new(token));
    }
    let instance = served.start("serve.log");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|answer| answer.status().is_success())
    {
        assert!(Instant::now() < deadline, "serve did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upload = |body: Vec<u8>| {
        client
            .post(format!("http://{admin}/rule"))
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(body)
            .send()
    };

    let refused = upload(order_status_next()).await.expect("admin answers");
    assert_eq!(refused.status().as_u16(), 422);
    let body = refused.text().await.expect("body");
    assert!(body.contains("\"gate\":\"signature\""), "{body}");
    let mut huge = signed(&order_status_next(), &trusted);
    wasm_encoder::CustomSection {
        name: "padding".into(),
        data: vec![0u8; v1.len() * 4].into(),
    }
    .append_to_component(&mut huge);
    let too_large = upload(huge).await.expect("admin answers");
    assert_eq!(too_large.status().as_u16(), 413);
    let status = client
        .get(format!("http://{admin}/rule/status"))
        .send()
        .await
        .expect("status")
        .text()
        .await
        .expect("status body");
    let status: converge::swap::RuleStatus = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(
        last_refusal_gate(status.last_swap.as_ref()),
        Some("signature")
    );
    assert_eq!(status.active.rule, "order-status@0.1.0");
    assert_eq!(refused_swaps(admin, "signature").await, 1);

    let applied = upload(signed(&order_status_next(), &trusted))
        .await
        .expect("admin answers");
    assert!(applied.status().is_success(), "{:?}", applied.text().await);
    instance.terminate();
}
