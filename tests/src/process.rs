//! `converge serve` as a process of its own: started on a configuration file with its log in a
//! file, and stopped with SIGTERM, which it must answer with a clean exit.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use std::time::{Duration, Instant};
use tempfile::NamedTempFile;

use crate::build;

/// Starts `converge serve --config config`, its log (`RUST_LOG=info`) written to `log`.
pub fn serve(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(build::converge_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("converge serve starts")
}

/// A `converge serve` process, killed if the test fails before it is terminated (a failed
/// assertion must not leave a consumer running).
#[derive(Debug)]
pub struct Server(Option<Child>);

impl Server {
    /// [`serve`], guarded.
    pub fn start(config: &Path, log: &Path) -> Self {
        Self(Some(serve(config, log)))
    }

    /// Its process id (0 once it was terminated).
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0
            .as_mut()
            .and_then(|child| child.try_wait().expect("serve's status"))
    }

    /// [`terminate`]: SIGTERM, and a clean exit.
    pub fn terminate(mut self) {
        if let Some(child) = self.0.take() {
            terminate(child);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops a `converge` process with SIGTERM and checks that it exits cleanly within 30 s.
pub fn terminate(mut child: Child) {
    let exit = stop(&mut child);
    assert!(exit.success(), "serve did not stop cleanly: {exit}");
}

/// Sends `child` SIGTERM and waits for its exit; one still running 30 s later is killed and
/// fails the test: a process that ignores SIGTERM must fail the test, not hang it.
fn stop(child: &mut Child) -> ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = child.try_wait().expect("the process's status") {
            return exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`serve`] with extra environment variables (e.g. `CONVERGE_CRASH_AT` for the crash tests).
pub fn serve_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(build::converge_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("converge serve starts")
}

/// Runs `command` to its end, its output captured. One still running after `within` is killed
/// and fails the test with what it printed: a command that hangs must fail its test, not stall
/// the suite until CI gives up on it.
pub fn output_within(command: &mut Command, within: Duration) -> Output {
    let (mut child, stdout, stderr) = spawn_captured(command);
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("the command's status") {
            return captured(status, &stdout, &stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("the command's status");
            let output = captured(status, &stdout, &stderr);
            panic!(
                "{command:?} still ran after {within:?}; it printed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` until its standard error shows `logged`, then stops it with SIGTERM (it must
/// exit cleanly): what it printed. For a process that is right to wait (a store down at its
/// start), where the test's question is what it says while it waits. Fails the test when the
/// command exits first or `within` passes without the line.
pub fn output_once_logged(command: &mut Command, logged: &str, within: Duration) -> Output {
    let (mut child, stdout, stderr) = spawn_captured(command);
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(stderr.path()).unwrap_or_default();
        if text.contains(logged) {
            break;
        }
        if let Some(status) = child.try_wait().expect("the command's status") {
            let output = captured(status, &stdout, &stderr);
            panic!(
                "{command:?} exited ({status}) without logging {logged:?}; it printed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not log {logged:?} within {within:?}; it printed:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = stop(&mut child);
    captured(status, &stdout, &stderr)
}

/// `command` started with its standard output and error in temporary files (a pipe left unread
/// would block a chatty process) and no standard input.
fn spawn_captured(command: &mut Command) -> (Child, NamedTempFile, NamedTempFile) {
    let stdout = NamedTempFile::new().expect("a temporary file");
    let stderr = NamedTempFile::new().expect("a temporary file");
    let child = command
        .stdin(Stdio::null())
        .stdout(stdout.reopen().expect("the file reopens"))
        .stderr(stderr.reopen().expect("the file reopens"))
        .spawn()
        .unwrap_or_else(|error| panic!("{command:?} starts: {error}"));
    (child, stdout, stderr)
}

fn captured(status: ExitStatus, stdout: &NamedTempFile, stderr: &NamedTempFile) -> Output {
    Output {
        status,
        stdout: std::fs::read(stdout.path()).expect("its output"),
        stderr: std::fs::read(stderr.path()).expect("its errors"),
    }
}

/// How long a `converge` command a test runs to its end may take before it counts as hung:
/// far beyond the slowest (a `check` of a slow rule in a loaded suite).
pub const LONG: Duration = Duration::from_secs(600);
