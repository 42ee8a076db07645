//! `converge` as a process of its own: [`Server`], a `converge serve` started on a
//! configuration file with its log in a file and stopped with SIGTERM, which it must answer
//! with a clean exit; [`Converge`], a command run to its end within a time limit.

use std::ffi::OsStr;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{
    Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio,
};
use std::time::{Duration, Instant};

use converge::config::Config;
use tempfile::NamedTempFile;

use crate::build;

/// A `converge serve` (or any long-running process a test starts), killed if the test fails
/// before it is stopped: a failed assertion must not leave a consumer running. The one handle
/// the tests hold on a process that runs beside them.
#[derive(Debug)]
pub struct Server(Option<Child>);

impl Server {
    /// `converge serve --config config`, its log (`RUST_LOG=info`) written to `log`.
    pub fn start(config: &Path, log: &Path) -> Self {
        Self::start_with_env(config, log, &[])
    }

    /// [`Server::start`] with extra environment variables (e.g. `CONVERGE_CRASH_AT` for the
    /// crash tests).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        Self::spawn(
            Command::new(build::converge_binary())
                .args(["serve", "--config"])
                .arg(config)
                .env("RUST_LOG", "info")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log),
        )
    }

    /// Starts `command` (its standard streams as the caller set them), guarded.
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{command:?} starts: {error}"));
        Self(Some(child))
    }

    /// Its process id (0 once it was stopped).
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0
            .as_mut()
            .and_then(|child| child.try_wait().expect("the process's status"))
    }

    /// Waits up to `within` for it to exit by itself: its exit status, or `None` if it still
    /// runs (it is left running).
    pub fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(exit) = self.exited() {
                return Some(exit);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its standard input, if it was started with one piped (once).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.0.as_mut().and_then(|child| child.stdin.take())
    }

    /// Its standard output, if it was started with one piped (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.0.as_mut().and_then(|child| child.stdout.take())
    }

    /// Its standard error, if it was started with one piped (once).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.0.as_mut().and_then(|child| child.stderr.take())
    }

    /// Sends it `signal` (`STOP`, `CONT`, `TERM`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.id());
    }

    /// A figure of its `/proc/<pid>/status` given in kB (`VmRSS`; `VmHWM`, the peak resident
    /// size), in bytes.
    pub fn memory_bytes(&self, field: &str) -> u64 {
        proc_status_bytes(self.id(), field)
    }

    /// SIGKILL, and its exit reaped: no shutdown at all. Its exit status (`None` if it was
    /// stopped already).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.0.take()?;
        child.kill().expect("SIGKILL");
        Some(child.wait().expect("reaped"))
    }

    /// SIGTERM, and a clean exit within 30 s.
    pub fn terminate(self) {
        let exit = self.stop();
        assert!(exit.success(), "serve did not stop cleanly: {exit}");
    }

    /// SIGTERM, and its exit status within 30 s, clean or not (see [`stop`]).
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("the process runs");
        stop(&mut child)
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

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}

/// The last 8 KiB of a log file (what a failure shows of it).
pub fn tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&text[text.len().saturating_sub(8 << 10)..]).into_owned()
}

/// `converge serve` reading events from its stdin, its log (at `rust_log`) in a file.
#[derive(Debug)]
pub struct StdinServe {
    server: Server,
    stdin: Option<ChildStdin>,
    pub log: PathBuf,
}

impl StdinServe {
    pub fn start(dir: &Path, name: &str, config: &Config, rust_log: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = crate::config::write(&dir, config);
        let log = dir.join("serve.log");
        let mut server = Server::spawn(
            Command::new(build::converge_binary())
                .args(["serve", "--config"])
                .arg(&path)
                .env("RUST_LOG", rust_log)
                .env_remove("CONVERGE_ADMIN_TOKEN")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file")),
        );
        let stdin = server.take_stdin();
        Self { server, stdin, log }
    }

    /// Waits until `/readyz` at `admin` answers 200, failing at once if serve exits.
    pub async fn ready(&mut self, admin: SocketAddr) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(exit) = self.server.exited() {
                panic!("serve exited with {exit}:\n{}", self.log_text());
            }
            let ready = client
                .get(format!("http://{admin}/readyz"))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "serve not ready in 120 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Feeds events as JSON lines.
    pub fn send_lines(&mut self, lines: &[String]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        for line in lines {
            writeln!(stdin, "{line}").expect("serve reads its stdin");
        }
        stdin.flush().expect("flushed");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Closes stdin, then SIGTERM and a clean exit; answers the log. (Stdin first: a blocking
    /// read of an open stdin holds serve's runtime at exit.)
    pub fn stop(mut self) -> String {
        self.stdin.take();
        self.server.terminate();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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

/// `converge ARGS`, run to its end within [`LONG`]: the usual [`Converge`].
pub fn converge(args: &[&str]) -> Output {
    Converge::new(args).output()
}

/// A `converge` command a test runs to its end: the binary the tests built, from the workspace
/// root (where the paths the tests name are relative to), without the caller's
/// `CONVERGE_TRUSTED_KEYS` or `CONVERGE_ADMIN_TOKEN` (a developer's shell must not change what
/// a test sees), bounded in time.
#[derive(Debug)]
pub struct Converge {
    command: Command,
    within: Duration,
    /// The file its standard input reads; none: no standard input.
    stdin: Option<PathBuf>,
}

impl Converge {
    pub fn new(args: &[&str]) -> Self {
        let mut command = Command::new(build::converge_binary());
        command
            .args(args)
            .current_dir(build::workspace_root())
            .env_remove("CONVERGE_TRUSTED_KEYS")
            .env_remove("CONVERGE_ADMIN_TOKEN");
        Self {
            command,
            within: LONG,
            stdin: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    /// More arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.command.args(args);
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        self.command.envs(env.iter().copied());
        self
    }

    pub fn env_remove(mut self, name: &str) -> Self {
        self.command.env_remove(name);
        self
    }

    /// Its standard input read from `file` (`converge run < file`).
    pub fn stdin(mut self, file: &Path) -> Self {
        self.stdin = Some(file.to_owned());
        self
    }

    /// How long it may run before it counts as hung ([`LONG`] unless said).
    pub fn within(mut self, within: Duration) -> Self {
        self.within = within;
        self
    }

    /// Runs it to its end ([`output_within`]).
    pub fn output(mut self) -> Output {
        let stdin = self.stdin.map_or_else(Stdio::null, |file| {
            std::fs::File::open(&file)
                .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
                .into()
        });
        output_from(&mut self.command, stdin, self.within)
    }

    /// Runs it until it logs `logged`, then stops it ([`output_once_logged`]).
    pub fn output_once_logged(mut self, logged: &str) -> Output {
        output_once_logged(&mut self.command, logged, self.within)
    }
}

/// Runs `command` to its end, its output captured. One still running after `within` is killed
/// and fails the test with what it printed: a command that hangs must fail its test, not stall
/// the suite until CI gives up on it.
pub fn output_within(command: &mut Command, within: Duration) -> Output {
    output_from(command, Stdio::null(), within)
}

/// [`output_within`] with `stdin` as its standard input.
fn output_from(command: &mut Command, stdin: Stdio, within: Duration) -> Output {
    let (mut child, stdout, stderr) = spawn_captured(command, stdin);
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
    let (mut child, stdout, stderr) = spawn_captured(command, Stdio::null());
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
/// would block a chatty process) and `stdin` as its standard input.
fn spawn_captured(command: &mut Command, stdin: Stdio) -> (Child, NamedTempFile, NamedTempFile) {
    let stdout = NamedTempFile::new().expect("a temporary file");
    let stderr = NamedTempFile::new().expect("a temporary file");
    let child = command
        .stdin(stdin)
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

/// A finished command's exit code and both streams, for an assertion's message.
pub fn described(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
