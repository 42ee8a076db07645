//! Builds the shipped order-status rule (`plugin/`) as a WebAssembly component, for
//! `src/shipped_rule.rs` to embed: `converge run` and `converge decide` use it when no `--rule`
//! is given.
//!
//! The rule is built by a cargo of its own, in release, for `wasm32-wasip2`, into a target
//! directory of its own: the cargo building this script holds the lock of its target directory,
//! so a nested build there would wait for it forever. That directory is
//! `$CARGO_TARGET_DIR/embedded-rule` when the variable is an absolute path, else
//! `<workspace>/target/embedded-rule`, so every build of converge (each feature set, each
//! profile) shares one build of the rule, and cargo rebuilds it only when its sources changed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

const TARGET: &str = "wasm32-wasip2";
const PACKAGE: &str = "converge-order-rule";
const FILE: &str = "converge_order_rule.wasm";

fn main() -> ExitCode {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("host/cli sits two levels below the workspace root")
        .to_owned();
    for input in [
        "plugin/src",
        "plugin/Cargo.toml",
        "wit",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(input).display()
        );
    }
    // The rule's version stamp can be set at build time (plugin/src/core.rs).
    println!("cargo::rerun-if-env-changed=CONVERGE_RULE_VERSION");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");

    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    if !target_installed(&rustc) {
        println!(
            "cargo::error=converge embeds the shipped order-status rule, a {TARGET} component, \
             and this Rust toolchain cannot build for {TARGET}: run `rustup target add {TARGET}`"
        );
        return ExitCode::SUCCESS;
    }

    let target_dir = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("embedded-rule"),
        _ => workspace.join("target/embedded-rule"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--target", TARGET, "-p", PACKAGE])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&workspace)
        // Cargo reads this script's stdout for directives: the nested build's output is
        // diagnostics, shown when this script fails.
        .stdout(Stdio::from(std::io::stderr()));
    // What cargo set for this script (its features, cfgs, flags) or a wrapper (clippy) is not
    // for the rule's build; the jobserver (CARGO_MAKEFLAGS) is, so the two builds share the cores.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_FEATURE_")
            || name.starts_with("CARGO_CFG_")
            || [
                "CARGO_ENCODED_RUSTFLAGS",
                "RUSTFLAGS",
                "RUSTC_WORKSPACE_WRAPPER",
                "CLIPPY_ARGS",
                "CARGO_TARGET_DIR",
                "CARGO_BUILD_TARGET",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    let status = match build.status() {
        Ok(status) => status,
        Err(error) => {
            println!("cargo::error=cannot run cargo to build the shipped rule: {error}");
            return ExitCode::SUCCESS;
        }
    };
    if !status.success() {
        println!(
            "cargo::error=building the shipped rule ({PACKAGE} for {TARGET}) failed: {status}; \
             its errors are above"
        );
        return ExitCode::SUCCESS;
    }
    let built = target_dir.join(TARGET).join("release").join(FILE);
    let embedded = PathBuf::from(env("OUT_DIR")).join("order-status.wasm");
    if let Err(error) = std::fs::copy(&built, &embedded) {
        println!(
            "cargo::error=cannot copy the shipped rule {} to {}: {error}",
            built.display(),
            embedded.display()
        );
    }
    ExitCode::SUCCESS
}

/// Whether the toolchain has the standard library for [`TARGET`]: rustc names the directory
/// whether or not it is there.
fn target_installed(rustc: &std::ffi::OsStr) -> bool {
    Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .is_some_and(|output| Path::new(String::from_utf8_lossy(&output.stdout).trim()).is_dir())
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}
