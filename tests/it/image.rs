//! The container image: built with deploy/scripts/image.sh, it runs the demo and `serve` against
//! loopback Kafka and Redis.
//!
//! Every container runs through `image.sh run` (podman with the flags this machine needs), in the
//! foreground, so its exit status is the child's. The image is built once per test process;
//! without podman the build installs it, and a build that fails fails the tests — they never
//! skip.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use converge_tests::kafka::TestTopic;
use converge_tests::process::{self, Server};
use converge_tests::services::{TestStore, free_loopback_addr};
use converge_tests::{Convergence, build, config, orders};
use serde_json::Value;

const IMAGE: &str = "localhost/converge:latest";
/// Where the image holds the shipped rule (deploy/kubernetes/configmap.yaml names it too).
const RULE_IN_IMAGE: &str = "/usr/share/converge/rules/order-status.wasm";
const SAMPLE_IN_IMAGE: &str = "/usr/share/converge/sample/orders.jsonl";
/// The image's non-root user, as the Dockerfile's USER names it.
const USER: &str = "65532";

fn image_sh() -> Command {
    let root = build::workspace_root();
    let mut command = Command::new("bash");
    command
        .arg(root.join("deploy/scripts/image.sh"))
        .current_dir(root)
        .stdin(Stdio::null());
    command
}

/// Builds the image (once per test process; quick when nothing changed).
fn image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let output = image_sh()
            .output()
            .expect("bash runs deploy/scripts/image.sh");
        assert!(
            output.status.success(),
            "deploy/scripts/image.sh did not build {IMAGE} (it needs podman, runc and musl-tools, \
             which it installs with apt-get when they are missing):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

/// `podman ARGS` with this machine's global flags; panics unless it succeeds.
fn podman(args: &[&str]) -> String {
    let output = image_sh()
        .arg("podman")
        .args(args)
        .output()
        .expect("image.sh podman runs");
    assert!(
        output.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A container of the image, named with a random suffix, removed (and its `podman run` reaped)
/// when dropped, whatever the test's outcome.
struct Container {
    name: String,
    process: Option<Server>,
}

impl Container {
    /// The container, not started yet, and `image.sh run --name … PODMAN_ARGS --
    /// CONVERGE_ARGS` (no CONVERGE_ARGS: the image's default command) to start it.
    fn run(podman_args: &[&str], converge_args: &[&str]) -> (Self, Command) {
        image();
        let name = format!("converge-test-{:016x}", rand::random::<u64>());
        let mut command = image_sh();
        command
            .args(["run", "--name", &name])
            .args(podman_args)
            .arg("--")
            .args(converge_args);
        (
            Self {
                name,
                process: None,
            },
            command,
        )
    }

    /// Started, its output where `stdout` and `stderr` say.
    fn start(podman_args: &[&str], converge_args: &[&str], stdout: Stdio, stderr: Stdio) -> Self {
        let (mut container, mut command) = Self::run(podman_args, converge_args);
        container.process = Some(Server::spawn(command.stdout(stdout).stderr(stderr)));
        container
    }

    /// Runs to its end (within [`process::LONG`]); its output.
    fn output(podman_args: &[&str], converge_args: &[&str]) -> Output {
        let (_container, mut command) = Self::run(podman_args, converge_args);
        process::output_within(&mut command, process::LONG)
    }

    /// Panics (with converge's log) if the container has exited.
    fn check_running(&mut self, log: &Path) {
        let process = self.process.as_mut().expect("started");
        if let Some(status) = process.exited() {
            self.process = None;
            panic!(
                "the container exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }

    /// `podman stop` (SIGTERM, SIGKILL after 60 s) and the container's exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        podman(&["stop", "--time", "60", &self.name]);
        // Stopped: its `podman run` has ended or is ending.
        let mut process = self.process.take().expect("started");
        process
            .exit_within(Duration::from_secs(120))
            .expect("podman run ends once its container is stopped")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Removing the container ends its `podman run` too.
        let _ = image_sh()
            .args(["podman", "rm", "--force", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // And a `podman run` still running is killed.
        drop(self.process.take());
    }
}

/// The README's first command, in the image: the default command runs the shipped rule over the
/// shipped sample, on a read-only root file system, as the image's non-root user; the JSON
/// report holds exactly the final states and bad lines the sample's generator recorded.
#[test]
fn image_runs_the_demo_read_only_as_its_non_root_user_and_converges() {
    image();
    let user = podman(&["image", "inspect", "--format", "{{.Config.User}}", IMAGE]);
    assert_eq!(user.trim(), format!("{USER}:{USER}"));

    let demo = Container::output(&["--read-only"], &[]);
    let text = String::from_utf8_lossy(&demo.stdout);
    assert_eq!(
        demo.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    assert!(text.contains("converged: every one of 800 keys"), "{text}");

    let json = Container::output(
        &["--read-only"],
        &["run", "--input", SAMPLE_IN_IMAGE, "--json"],
    );
    assert_eq!(
        json.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let report: Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    let expected = build::workspace_root().join("deploy/sample/orders.expected.json");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(expected).expect("expected file")).expect("JSON");
    assert_eq!(report["converged"], Value::Bool(true));
    assert_eq!(report["stats"]["messages"], expected["events"]);
    // Each list as the values of one field of its items, in order.
    let field = |list: &Value, pointer: &str| -> Value {
        let items = list.as_array().expect("a list");
        items
            .iter()
            .map(|item| item.pointer(pointer).cloned())
            .collect()
    };
    assert_eq!(field(&report["states"], "/state"), expected["final_states"]);
    assert_eq!(
        field(&report["dead_letters"], "/position/line/line"),
        field(&expected["bad_lines"], "/line")
    );
}

/// `serve` in the image, against the loopback Kafka and Redis (host network), on a read-only
/// root with the configuration mounted read-only: several thousand shuffled, duplicated order
/// events converge in Redis, nothing is dead-lettered, the admin endpoint answers, the process
/// runs as the non-root user, and `podman stop` (SIGTERM) ends it with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_serve_converges_against_loopback_kafka_and_redis() {
    image();
    let topic = TestTopic::create("image", 6).await;
    let dead_letters = TestTopic::create("image-dlq", 1).await;
    let redis = TestStore::standalone("image").await;
    let group = format!("{}-group", topic.name);
    let mut dir = tempfile::tempdir().expect("temp dir");
    let admin = free_loopback_addr();
    let mut settings = config::kafka_serve_with_admin(
        &topic.name,
        &dead_letters.name,
        &group,
        redis.store.prefix(),
        admin,
    );
    // The rule the image ships, not the one this workspace built.
    settings.rule = config::rule(Path::new(RULE_IN_IMAGE));
    let config = config::write(dir.path(), &settings);

    let stream = orders::generate("order-", 2_000, 30, 16);
    assert!(stream.events.len() >= 5_000, "{}", stream.events.len());
    let (first_half, second_half) = stream.events.split_at(stream.events.len() / 2);
    topic.produce(first_half).await;

    let log = dir.path().join("serve.log");
    let mount = format!("{}:/etc/converge/converge.toml:ro", config.display());
    // No --config: the image's CONVERGE_CONFIG names the mounted file.
    let mut container = Container::start(
        &[
            "--network=host",
            "--read-only",
            "--env",
            "RUST_LOG=info",
            "--volume",
            &mount,
        ],
        &["serve"],
        Stdio::null(),
        std::fs::File::create(&log).expect("log file").into(),
    );
    topic.produce(second_half).await;

    let positions = Convergence::new(&redis.store, &stream.expected)
        .within(Duration::from_secs(180))
        .every(Duration::from_millis(250))
        .logs(&mut dir)
        .wait_with_offsets(async || {
            container.check_running(&log);
            topic.progress(&group)
        })
        .await;
    assert_eq!(
        positions.iter().map(|(_, end)| end).sum::<i64>(),
        stream.events.len() as i64
    );
    dead_letters.assert_empty().await;

    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .expect("the admin endpoint answers on the host's loopback");
    assert_eq!(ready.status(), 200);

    // The process as the host sees it: every user id (real, effective, saved, file system) is
    // the image's user.
    let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &container.name]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
        .expect("the container's process is visible");
    let uids: Vec<&str> = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .expect("a Uid line")
        .split_whitespace()
        .collect();
    assert_eq!(uids, [USER; 4]);

    let exit = container.stop();
    assert_eq!(
        exit.code(),
        Some(0),
        "serve in the container did not stop cleanly:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
