//! Builds what the tests run: rule components (`wasm32-wasip2`), the order-status SmartModule
//! (`wasm32-unknown-unknown`) and the `converge` binary.
//!
//! Each is built once per test process with cargo itself, so `cargo test` alone is enough; the
//! build is a no-op when nothing changed. Building needs the `wasm32-wasip2` and
//! `wasm32-unknown-unknown` targets (`rustup target add`, which the README's test command runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// A rule crate of the workspace: a package declaring `[package.metadata.converge] rule =
/// "<name>"`, the name tests refer to it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCrate {
    /// The name tests use (`build::rule("order-status")`).
    pub rule: String,
    /// The cargo package.
    pub package: String,
    /// The component's file name: the package's `cdylib` target, as cargo names its output.
    pub file: String,
}

/// The workspace's rule crates, as `cargo metadata` describes them: the list is written once,
/// in the crates' own manifests (`deploy/scripts/rule-crates.sh` reads the same metadata).
pub fn rule_crates() -> &'static [RuleCrate] {
    static CRATES: OnceLock<Vec<RuleCrate>> = OnceLock::new();
    CRATES.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(workspace_root())
            .output()
            .expect("cargo metadata runs");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("cargo metadata answers JSON");
        let crates: Vec<RuleCrate> = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .filter_map(|package| {
                let rule = package["metadata"]["converge"]["rule"].as_str()?;
                let name = package["name"].as_str().expect("a package name");
                let target = package["targets"]
                    .as_array()
                    .expect("targets")
                    .iter()
                    .find(|target| {
                        target["crate_types"]
                            .as_array()
                            .is_some_and(|types| types.iter().any(|t| t == "cdylib"))
                    })
                    .unwrap_or_else(|| panic!("rule crate {name} has no cdylib target"));
                let target = target["name"].as_str().expect("a target name");
                Some(RuleCrate {
                    rule: rule.to_owned(),
                    package: name.to_owned(),
                    file: format!("{}.wasm", target.replace('-', "_")),
                })
            })
            .collect();
        assert!(
            crates.iter().any(|c| c.rule == "order-status"),
            "no rule crate declares rule = \"order-status\" in cargo metadata"
        );
        crates
    })
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_owned()
}

/// A target directory of the tests' own, `name`, for builds outside the workspace (a rule
/// written by `converge new`, say), so their dependencies are compiled once per machine.
pub fn scratch_target(name: &str) -> PathBuf {
    target_dir().join("scratch").join(name)
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
    let order_status = rule_crate("order-status");
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
                &order_status.package,
                "--target-dir",
                &dir_text,
            ],
            &[("CONVERGE_RULE_VERSION", version)],
        );
        built.push(version.to_owned());
    }
    dir.join("wasm32-wasip2/release").join(&order_status.file)
}

/// The compiled component of rule `name` (see [`rule_crates`]).
pub fn rule(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut args = vec!["build", "--quiet", "--release", "--target", "wasm32-wasip2"];
        for rule in rule_crates() {
            args.extend(["-p", &rule.package]);
        }
        cargo(&args);
    });
    target_dir()
        .join("wasm32-wasip2/release")
        .join(&rule_crate(name).file)
}

fn rule_crate(name: &str) -> &'static RuleCrate {
    rule_crates()
        .iter()
        .find(|rule| rule.rule == name)
        .unwrap_or_else(|| panic!("no rule crate declares rule = {name:?}"))
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

/// The `converge` binary (package `converge-cli`), built with the profile these tests were
/// built with.
pub fn converge_binary() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let release = !cfg!(debug_assertions);
    BUILT.get_or_init(|| {
        // With the crash points of the crash tests, as the tests' own build of the library
        // has them (one build of it serves both; the binary's feature turns on the library's);
        // they do nothing unless asked for.
        let mut args = vec![
            "build",
            "--quiet",
            "-p",
            "converge-cli",
            "--bin",
            "converge",
            "--features",
            "fault-injection",
        ];
        if release {
            args.push("--release");
        }
        cargo(&args);
    });
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("converge")
}

/// A language a rule may be written in besides Rust, with its project in `plugin/<lang>`: a
/// `build.sh` (a call of the language's template builder, `plugin/templates/<lang>/build.sh`)
/// that installs the toolchain (cached under `~/.cache/converge/rule-toolchains`: minutes the
/// first time on a machine for Go, seconds after) and writes the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// componentize-py (`plugin/python`).
    Python,
    /// componentize-js (`plugin/js`).
    JavaScript,
    /// Go, wit-bindgen's Go bindings and wasm-tools (`plugin/go`).
    Go,
}

impl Language {
    /// Its folder under `plugin/`, and its `--lang` for `converge new`.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::JavaScript => "js",
            Self::Go => "go",
        }
    }

    /// What `build.sh` takes as a rule's source in `dir`: the folder (with `app.py`, or Go's
    /// package `rule`), or the module `rule.js`.
    fn source(self, dir: PathBuf) -> PathBuf {
        match self {
            Self::Python | Self::Go => dir,
            Self::JavaScript => dir.join("rule.js"),
        }
    }
}

/// The order-status rule written in `language`, built by its `build.sh` once per test process,
/// with its vectors beside it (`order-status.vectors.json`), as `converge check` finds them.
pub fn language_rule(language: Language) -> PathBuf {
    let source = language.source(workspace_root().join("plugin").join(language.dir()));
    let vectors = workspace_root().join("plugin/vectors/order-status.json");
    built_language_rule(language, "order-status", &source, Some(&vectors))
}

/// A test rule (`tests/rules/<name>`) as ported to `language`, built once per test process.
pub fn language_test_rule(language: Language, name: &str) -> PathBuf {
    let source = language.source(
        workspace_root()
            .join("tests/rules")
            .join(name)
            .join(language.dir()),
    );
    built_language_rule(language, name, &source, None)
}

fn built_language_rule(
    language: Language,
    name: &str,
    source: &Path,
    vectors: Option<&Path>,
) -> PathBuf {
    type Built = std::collections::HashMap<(Language, String), Arc<OnceLock<PathBuf>>>;
    static BUILT: std::sync::Mutex<Option<Built>> = std::sync::Mutex::new(None);
    // One slot per rule, taken out of the map's lock: two rules build at once, one rule once.
    let slot = Arc::clone(
        BUILT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(Default::default)
            .entry((language, name.to_owned()))
            .or_default(),
    );
    slot.get_or_init(|| {
        let dir = target_dir().join("rule-languages").join(language.dir());
        std::fs::create_dir_all(&dir).expect("the output directory");
        let out = dir.join(format!("{name}.wasm"));
        let script = workspace_root()
            .join("plugin")
            .join(language.dir())
            .join("build.sh");
        let mut command = Command::new("bash");
        command.arg(&script).arg(source).arg(&out);
        if let Some(vectors) = vectors {
            command.arg(vectors);
        }
        let status = command.status().expect("bash runs");
        assert!(status.success(), "{} failed for {name}", script.display());
        out
    })
    .clone()
}
