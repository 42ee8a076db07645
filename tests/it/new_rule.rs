//! `converge new`: the folder it writes builds with its own `build.sh` and passes
//! `converge check` as generated, outside this repository; it never writes over a folder in use.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use converge_tests::build;
use converge_tests::process::Converge;

/// Writes rule `name` in `lang` under `parent` with `converge new`, builds it with its
/// `build.sh`, and answers the component's path.
fn new_and_build(parent: &Path, name: &str, lang: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    let new = Converge::new(&["new", name, "--lang", lang, "--dir"])
        .arg(&dir)
        .output();
    assert!(
        new.status.success(),
        "converge new failed: {}",
        String::from_utf8_lossy(&new.stderr)
    );
    let status = Command::new(dir.join("build.sh"))
        .current_dir(&dir)
        .env(
            "CARGO_TARGET_DIR",
            build::scratch_target(&format!("new-{lang}")),
        )
        .status()
        .expect("build.sh runs");
    assert!(
        status.success(),
        "{lang} template's build.sh failed: {status}"
    );
    let component = dir.join(format!("{name}.wasm"));
    assert!(
        component.is_file(),
        "build.sh wrote no {}",
        component.display()
    );
    component
}

/// `converge check` (vectors beside the component, then the full convergence check) passes,
/// with `flags` (what the template's README asks for).
fn assert_check_passes(component: &Path, flags: &[&str]) {
    let check = Converge::new(&["check"])
        .arg(component)
        .args(flags)
        .within(Duration::from_secs(600))
        .output();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "converge check failed on the template:\n{stdout}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("vectors: ok"),
        "vectors did not run:\n{stdout}"
    );
    assert!(stdout.contains("convergence: ok"), "{stdout}");
    assert!(stdout.contains("PASS"), "{stdout}");
}

/// `converge new r --lang LANG` in a temporary directory, outside this repository, built by
/// its `build.sh`, passes `converge check` run with `flags`.
fn new_rule_builds_and_passes_check(lang: &str, flags: &[&str]) {
    let parent = tempfile::tempdir().expect("temp dir");
    let component = new_and_build(parent.path(), "r", lang);
    assert_check_passes(&component, flags);
}

#[test]
fn new_rust_rule_builds_and_passes_check() {
    new_rule_builds_and_passes_check("rust", &[]);
}

#[test]
fn new_python_rule_builds_and_passes_check() {
    new_rule_builds_and_passes_check("python", &[]);
}

#[test]
fn new_js_rule_builds_and_passes_check() {
    // SpiderMonkey's heap outgrows the default 64 MiB on a long-lived instance (its README).
    // What the template's README asks for: 128 MiB and a 1 s deadline per call.
    new_rule_builds_and_passes_check("js", &["--memory-mib", "128", "--deadline-ms", "1000"]);
}

#[test]
fn new_go_rule_builds_and_passes_check() {
    new_rule_builds_and_passes_check("go", &[]);
}

#[test]
fn new_refuses_an_unknown_language_listing_the_languages() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("r");
    let refused = Converge::new(&["new", "r", "--lang", "cobol", "--dir"])
        .arg(&dir)
        .output();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid value 'cobol'"), "{stderr}");
    assert!(
        stderr.contains("[possible values: rust, python, js, go]"),
        "{stderr}"
    );
    assert!(
        !dir.exists(),
        "converge new wrote a folder for an unknown language"
    );
}

#[test]
fn new_refuses_a_folder_in_use_and_a_bad_name() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("taken");
    std::fs::create_dir(&dir).expect("create");
    std::fs::write(dir.join("keep.txt"), "mine").expect("write");
    let refused = Converge::new(&["new", "taken", "--lang", "rust", "--dir"])
        .arg(&dir)
        .output();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("exists and is not empty"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&dir).expect("read").count(),
        1,
        "converge new wrote into a folder in use"
    );

    let bad = Converge::new(&["new", "My_Rule", "--lang", "rust", "--dir"])
        .arg(parent.path().join("bad"))
        .output();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(!parent.path().join("bad").exists());
}
