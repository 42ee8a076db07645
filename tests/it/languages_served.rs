//! Issue 26 item 4: a rule written in Python, JavaScript or Go is served like the Rust rule.
//! Each language's order-status component, packed with its vectors and signed with `converge
//! rule sign`, is swapped in by the fleet (`converge rule publish`) over the Rust rule while
//! orders flow from a real Kafka topic into real Redis under `converge serve`, and swapped out
//! again to a newer Rust release; every key converges. Beside it, a Python rule runs as the
//! shadow of the Rust rule and agrees with it on every event.
//!
//! The fleet requires signatures (`allow_unsigned = false`) and its floor rises with every
//! release: the Rust rule is release 1, the language's rule release 2, the newer Rust rule
//! (0.2.0-next) release 3.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use converge::config::FleetConfig;
use converge::entity::Event;
use converge::rule::{DEFAULT_MEMORY_MIB, PublicKey, content_hash};
use converge::store::Store as _;
use converge::swap::FleetStatus;
use converge_tests::build::{self, Language};
use converge_tests::fleet::TestFleet;
use converge_tests::process::described;
use converge_tests::process::{Server, converge};
use converge_tests::served::Served;
use converge_tests::services::redis_url;
use converge_tests::{orders, prometheus};
use tokio::sync::watch;

/// `rule.memory_mib` for a language's rule: the default, but for JavaScript, whose heap
/// outgrows it on a long-lived instance (`plugin/js/README.md`).
fn memory_mib(language: Language) -> usize {
    match language {
        Language::JavaScript => 128,
        Language::Python | Language::Go => DEFAULT_MEMORY_MIB,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn succeeded(output: &Output) {
    assert!(output.status.success(), "{}", described(output));
}

/// Where this file's signed components and key live: in the tests' target directory, so that
/// a later run signs the same bytes again (Ed25519 signatures are deterministic) and `serve`
/// loads them from the compile cache rather than compiling an 18 MB component once more.
fn signing_dir() -> PathBuf {
    let dir = build::scratch_target("lang-served");
    std::fs::create_dir_all(&dir).expect("the signing directory");
    dir
}

/// The test key, made by `converge rule keygen` the first time, and its public half.
fn signing_key() -> &'static (PathBuf, PublicKey) {
    static KEY: OnceLock<(PathBuf, PublicKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        let path = signing_dir().join("release.key");
        let public = signing_dir().join("release.key.pub");
        if !(path.exists() && public.exists()) {
            let _ = std::fs::remove_file(&path);
            succeeded(&converge(&["rule", "keygen", "--out", path_str(&path)]));
        }
        let public = std::fs::read_to_string(public)
            .expect("KEY.pub")
            .trim()
            .parse()
            .expect("a public key");
        (path, public)
    })
}

/// `component` as release `release`: packed with the shipped vectors first when it does not
/// carry them (a signed component cannot be packed), signed with `converge rule sign`, then
/// loaded once with `memory_mib` so its compiled form is in the compile cache for the
/// processes that load it next (`rule publish`'s local gates, `serve`). Once per process.
fn signed(name: &str, component: &Path, release: u64, pack: bool, memory_mib: usize) -> PathBuf {
    type Slots = HashMap<String, Arc<OnceLock<PathBuf>>>;
    static SIGNED: Mutex<Option<Slots>> = Mutex::new(None);
    let slot = Arc::clone(
        SIGNED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Default::default)
            .entry(format!("{name}-r{release}"))
            .or_default(),
    );
    slot.get_or_init(|| {
        let dir = signing_dir();
        let mut unsigned = component.to_owned();
        if pack {
            unsigned = dir.join(format!("{name}.packed.wasm"));
            let vectors = build::workspace_root().join("plugin/vectors/order-status.json");
            succeeded(&converge(&[
                "rule",
                "pack",
                path_str(component),
                "--vectors",
                path_str(&vectors),
                "-o",
                path_str(&unsigned),
            ]));
        }
        let out = dir.join(format!("{name}-r{release}.wasm"));
        let release = release.to_string();
        succeeded(&converge(&[
            "rule",
            "sign",
            path_str(&unsigned),
            "--key",
            path_str(&signing_key().0),
            "--release",
            &release,
            "-o",
            path_str(&out),
        ]));
        let memory = memory_mib.to_string();
        succeeded(&converge(&[
            "decide",
            "--rule",
            path_str(&out),
            "--incoming",
            r#"{"key":"warm-up","status":"created","version":1}"#,
            "--memory-mib",
            &memory,
        ]));
        out
    })
    .clone()
}

/// The Rust rule (0.1.0, its vectors embedded) as release 1.
fn rust_release_1() -> PathBuf {
    signed(
        "rust",
        &build::rule("order-status"),
        1,
        false,
        DEFAULT_MEMORY_MIB,
    )
}

/// The newer Rust rule (0.2.0-next) as release 3.
fn rust_release_3() -> PathBuf {
    signed(
        "rust-next",
        &build::order_status_version("0.2.0-next"),
        3,
        false,
        DEFAULT_MEMORY_MIB,
    )
}

/// The language's rule, packed with its vectors, as release 2.
fn language_release_2(language: Language) -> PathBuf {
    signed(
        language.dir(),
        &build::language_rule(language),
        2,
        true,
        memory_mib(language),
    )
}

fn hash(path: &Path) -> String {
    content_hash(&std::fs::read(path).expect("a signed rule"))
}

/// One `serve` instance of a fleet of its own that serves only rules signed with the test
/// key, starting from `initial` (published first, as an operator would), with an admin
/// endpoint for its metrics.
struct Instance {
    served: Served,
    fleet: TestFleet,
    memory_mib: usize,
    server: Option<Server>,
}

impl Instance {
    async fn start(test: &str, initial: &Path, memory_mib: usize) -> Self {
        let mut served = Served::new(test, 4).await.with_admin();
        let fleet = TestFleet::new(test).await;
        let rule = &mut served.settings.rule;
        rule.path = initial.to_owned();
        rule.memory_mib = memory_mib;
        rule.trusted_keys = vec![signing_key().1];
        rule.fleet = Some(FleetConfig {
            redis: redis_url(),
            name: fleet.name.clone(),
            instance: Some("only".to_owned()),
            allow_unsigned: false,
        });
        let mut instance = Self {
            served,
            fleet,
            memory_mib,
            server: None,
        };
        instance.publish(initial, false);
        instance.server = Some(instance.served.start("serve.log"));
        let initial = hash(initial);
        instance
            .until("the instance to serve the initial rule", |report| {
                report.rule.active.hash == initial
            })
            .await;
        instance
    }

    fn admin(&self) -> SocketAddr {
        self.served.admin()
    }

    /// `converge rule publish RULE [--shadow]`, its local gates with the instance's memory.
    fn publish(&self, rule: &Path, shadow: bool) {
        let memory = self.memory_mib.to_string();
        let mut args = vec!["rule", "publish", path_str(rule), "--memory-mib", &memory];
        if shadow {
            args.push("--shadow");
        }
        // The command waits for its process: off the runtime's async workers.
        let output =
            tokio::task::block_in_place(|| self.fleet.cli_trusting(&args, &signing_key().1));
        succeeded(&output);
    }

    /// Waits until the instance's report satisfies `check`.
    async fn until(&self, what: &str, check: impl Fn(&converge::swap::InstanceReport) -> bool) {
        self.fleet
            .until(what, 1, |status: &FleetStatus| check(&status.instances[0]))
            .await;
    }

    /// The instance's metrics now.
    async fn metrics(&self) -> prometheus::Exposition {
        prometheus::scrape(self.admin())
            .await
            .expect("the metrics answer")
    }

    /// Messages the instance has processed so far.
    async fn messages(&self) -> u64 {
        self.metrics().await.sum("converge_messages_total", &[]) as u64
    }

    /// Waits until the instance has processed more than `than` messages; answers how many.
    async fn messages_above(&self, than: u64, what: &str) -> u64 {
        let log = self.served.log("serve.log");
        let metrics = prometheus::scrape_until(self.admin(), &log, what, |metrics| {
            metrics
                .try_sum("converge_messages_total", &[])
                .is_some_and(|messages| messages as u64 > than)
        })
        .await;
        metrics.sum("converge_messages_total", &[]) as u64
    }

    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.terminate();
        }
    }
}

/// The stream in three parts, as owned vectors a producing task can take.
fn thirds(events: &[Event]) -> Vec<Vec<Event>> {
    events
        .chunks(events.len().div_ceil(3))
        .map(<[Event]>::to_vec)
        .collect()
}

/// Produces `parts` in small paced chunks, part `i` once `swaps` says `i` swaps have been
/// seen: the first part flows while the first swap is published and taken up, the second
/// while the second is, the last after both.
fn produce_between_swaps(
    instance: &Instance,
    parts: Vec<Vec<Event>>,
    mut swaps: watch::Receiver<usize>,
) -> tokio::task::JoinHandle<()> {
    let topic = Arc::clone(&instance.served.topic);
    tokio::spawn(async move {
        for (index, part) in parts.into_iter().enumerate() {
            swaps
                .wait_for(|seen| *seen >= index)
                .await
                .expect("the test watches the swaps");
            for chunk in part.chunks(50) {
                topic.produce(chunk).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    })
}

/// What the instance had processed around one swap: before the publish (all of it decided by
/// the rule swapped out) and once the instance served the new rule.
#[derive(Debug)]
struct SwapMark {
    published_after: u64,
    served_after: u64,
}

/// Publishes `rule` once the instance has processed more than `since` messages, and waits
/// until it serves it.
async fn swap_in_flow(instance: &Instance, rule: &Path, since: u64, what: &str) -> SwapMark {
    let published_after = instance
        .messages_above(since, &format!("events decided before {what}"))
        .await;
    instance.publish(rule, false);
    let rule_hash = hash(rule);
    instance
        .until(what, |report| {
            report.rule.active.hash == rule_hash
                && report
                    .rule
                    .last_swap
                    .as_ref()
                    .is_some_and(|swap| swap.hash == rule_hash && swap.result.as_str() == "applied")
        })
        .await;
    SwapMark {
        published_after,
        served_after: instance.messages().await,
    }
}

/// The language's rule swapped in over the Rust rule, and out again to a newer Rust release,
/// each while orders flow; every key converges.
async fn swapped_in_and_out_while_orders_flow(language: Language, seed: u64) {
    let test = format!("lang-served-{}", language.dir());
    let (rust, written, newer) = (
        rust_release_1(),
        language_release_2(language),
        rust_release_3(),
    );
    let mut instance = Instance::start(&test, &rust, memory_mib(language)).await;
    let stream = orders::generate(&format!("{test}-"), 2_000, 30, seed);
    let total = stream.events.len() as u64;
    let (swaps, seen) = watch::channel(0);
    let producing = produce_between_swaps(&instance, thirds(&stream.events), seen);

    let swap_in = swap_in_flow(&instance, &written, 0, "the language's rule to serve").await;
    swaps.send_replace(1);
    let swap_out = swap_in_flow(
        &instance,
        &newer,
        swap_in.served_after,
        "the newer Rust rule to serve",
    )
    .await;
    swaps.send_replace(2);
    producing.await.expect("the producer finishes");
    eprintln!("{language:?}: {total} events; in {swap_in:?}, out {swap_out:?}");

    let positions = instance
        .served
        .converged(&stream.expected, Duration::from_secs(120))
        .await;
    assert_eq!(
        converge_tests::served::messages(&positions) as u64,
        total,
        "every event produced once"
    );
    // Each rule decided events: the Rust rule before the first publish, the language's rule
    // after it served and before the second publish, the newer rule after that.
    let processed = instance.messages().await;
    assert!(swap_in.published_after > 0, "{swap_in:?}");
    assert!(
        swap_out.published_after > swap_in.served_after,
        "the language's rule decided nothing: {swap_in:?} {swap_out:?}"
    );
    assert!(
        processed > swap_out.served_after,
        "nothing was decided after the swap out: {swap_out:?}, {processed} processed"
    );
    let status = instance.fleet.cli_status();
    assert_eq!(
        status.history,
        [hash(&newer), hash(&written), hash(&rust)],
        "the fleet's swaps, newest first"
    );
    assert_eq!(status.floor, 3);
    let metrics = instance.metrics().await;
    assert_eq!(
        metrics.try_sum("converge_rule_swaps_total", &[("result", "refused")]),
        None,
        "no candidate refused:\n{metrics}"
    );
    // The keys the last part of the stream touched were written by the newer rule.
    let stored = instance
        .served
        .redis
        .store
        .inspect(&stream.expected.keys().cloned().collect::<Vec<_>>())
        .await
        .expect("inspected");
    let stamps: std::collections::BTreeSet<&str> = stored
        .iter()
        .flatten()
        .map(|stored| stored.rule.as_str())
        .collect();
    assert!(
        stamps.contains("order-status@0.2.0-next")
            && stamps.is_subset(&["order-status@0.1.0", "order-status@0.2.0-next"].into()),
        "{stamps:?}"
    );
    instance.served.dead_letters.assert_empty().await;
    instance.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lang_served_python_rule_is_swapped_in_and_out_while_orders_flow() {
    swapped_in_and_out_while_orders_flow(Language::Python, 2601).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lang_served_js_rule_is_swapped_in_and_out_while_orders_flow() {
    swapped_in_and_out_while_orders_flow(Language::JavaScript, 2602).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lang_served_go_rule_is_swapped_in_and_out_while_orders_flow() {
    swapped_in_and_out_while_orders_flow(Language::Go, 2603).await;
}

/// The Python rule as the shadow of the Rust rule: it decides every event beside it and never
/// disagrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lang_served_python_shadow_agrees_with_the_rust_rule() {
    let (rust, python) = (rust_release_1(), language_release_2(Language::Python));
    let mut instance = Instance::start("lang-served-shadow", &rust, DEFAULT_MEMORY_MIB).await;
    instance.publish(&python, true);
    let python_hash = hash(&python);
    instance
        .until("the Python rule to run as the shadow", |report| {
            report
                .rule
                .shadow
                .as_ref()
                .is_some_and(|shadow| shadow.rule.hash == python_hash)
        })
        .await;

    let stream = orders::generate("lang-served-shadow-", 2_000, 30, 2604);
    instance.served.topic.produce(&stream.events).await;
    instance
        .served
        .converged(&stream.expected, Duration::from_secs(120))
        .await;

    let metrics = instance.metrics().await;
    let decided = |role| metrics.sum("converge_rule_decisions_total", &[("role", role)]) as u64;
    let (active, shadow) = (decided("active"), decided("shadow"));
    let events = stream.events.len() as u64;
    assert!(
        active >= events,
        "{active} active decisions, {events} events"
    );
    assert_eq!(
        shadow, active,
        "the shadow decided what the active rule did"
    );
    assert_eq!(
        metrics.sum("converge_shadow_decisions_total", &[]) as u64,
        active,
        "{metrics}"
    );
    assert_eq!(
        metrics.sum("converge_shadow_disagreements_total", &[]),
        0.0,
        "{metrics}"
    );
    instance
        .until("the report to count the shadow's decisions", |report| {
            report
                .rule
                .shadow
                .as_ref()
                .is_some_and(|shadow| shadow.rule.hash == python_hash && shadow.decisions == active)
        })
        .await;
    let report = instance.fleet.cli_status().instances.remove(0);
    let shadow = report.rule.shadow.expect("the shadow runs");
    assert_eq!(
        (shadow.disagreements, shadow.samples.len()),
        (0, 0),
        "{shadow:#?}"
    );
    assert_eq!(report.rule.active.hash, hash(&rust));
    instance.served.dead_letters.assert_empty().await;
    instance.stop();
}
