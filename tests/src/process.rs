//! `converge serve` as a process of its own: started on a configuration file with its log in a
//! file, and stopped with SIGTERM, which it must answer with a clean exit.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    // A serve that ignores SIGTERM must fail the test, not hang it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("serve's status") {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "serve did not stop cleanly: {exit}");
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
