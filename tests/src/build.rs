//! Builds what the tests run: rule components (`wasm32-wasip2`), the order-status SmartModule
//! (`wasm32-unknown-unknown`) and the `converge` binary.
//!
//! Each is built once per test process with cargo itself, so `cargo test` alone is enough; the
//! build is a no-op when nothing changed. Building needs the `wasm32-wasip2` and
//! `wasm32-unknown-unknown` targets (`rustup target add`, which the README's test command runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The rule crates the tests use, by the name tests refer to them.
const RULES: &[(&str, &str)] = &[
    ("order-status", "converge-order-rule"),
    ("last-write-wins", "converge-test-rule-last-write-wins"),
    ("faulty", "converge-test-rule-faulty"),
    ("forbidden-import", "converge-test-rule-forbidden-import"),
    ("version-rank", "converge-test-rule-version-rank"),
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo(args: &[&str]) {
    cargo_with(args, &[]);
}

fn cargo_with(args: &[&str], env: &[(&str, &str)]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo {} failed", args.join(" "));
}

/// The order-status rule rebuilt unchanged but stamped `order-status@{version}` (through
/// `CONVERGE_RULE_VERSION`), in a target directory of its own so that builds of different
/// versions do not overwrite each other.
pub fn order_status_version(version: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = target_dir().join("rule-versions").join(version);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.iter().any(|v| v == version) {
        let dir_text = dir.display().to_string();
        cargo_with(
            &[
                "build",
                "--quiet",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                "converge-order-rule",
                "--target-dir",
                &dir_text,
            ],
            &[("CONVERGE_RULE_VERSION", version)],
        );
        built.push(version.to_owned());
    }
    dir.join("wasm32-wasip2/release/converge_order_rule.wasm")
}

/// The compiled component of rule `name` (see [`RULES`]).
pub fn rule(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut args = vec!["build", "--quiet", "--release", "--target", "wasm32-wasip2"];
        for (_, package) in RULES {
            args.extend(["-p", package]);
        }
        cargo(&args);
    });
    let (_, package) = RULES
        .iter()
        .find(|(rule, _)| *rule == name)
        .unwrap_or_else(|| panic!("no test rule named {name}"));
    target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")))
}

/// The order-status rule as a Fluvio SmartModule (a core wasm module).
pub fn smartmodule() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&[
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "converge-order-smartmodule",
        ]);
    });
    target_dir().join("wasm32-unknown-unknown/release/converge_order_smartmodule.wasm")
}

/// The `converge` binary, built with the profile these tests were built with.
pub fn converge_binary() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let release = !cfg!(debug_assertions);
    BUILT.get_or_init(|| {
        let mut args = vec!["build", "--quiet", "-p", "converge", "--bin", "converge"];
        if release {
            args.push("--release");
        }
        cargo(&args);
    });
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("converge")
}
