//! The command line people use by hand: progress bars, shell completions, the man page.
//!
//! Progress is checked both ways: with stderr a pipe, `check`, `replay` and `simulate` write no
//! byte of a bar; under a pseudo-terminal (util-linux `script`, part of every Debian system),
//! each draws its bar and leaves one summary line per stage above its report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use converge::config::StoreConfig;
use converge_tests::process::{self, Converge};
use converge_tests::{build, config};

/// The shipped sample stream, which `replay` reads.
const SAMPLE: &str = "deploy/sample/orders.jsonl";

/// Settings from the environment that would add lines to stderr or change what a command
/// reads: the assertions on stderr are about the bars alone.
const AMBIENT: [&str; 4] = [
    "RUST_LOG",
    "CONVERGE_LOG_FORMAT",
    "CONVERGE_CONFIG",
    "CONVERGE_RULE",
];

/// A command without the ambient settings above.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for name in AMBIENT {
        command.env_remove(name);
    }
    command
}

/// converge with `args` from the workspace root, without the ambient settings, stdout and
/// stderr captured.
fn piped(args: &[&str]) -> Output {
    AMBIENT
        .iter()
        .fold(Converge::new(args), |converge, name| {
            converge.env_remove(name)
        })
        .output()
}

/// converge with `args` under a pseudo-terminal: stderr (and stdout, unless `stdout_to` names a
/// file) is the terminal, and the returned stdout is everything written to it.
fn on_terminal(args: &[&str], stdout_to: Option<&Path>) -> Output {
    let binary = build::converge_binary();
    let mut line = quote(path(&binary));
    for arg in args {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    if let Some(file) = stdout_to {
        line.push_str(" > ");
        line.push_str(&quote(path(file)));
    }
    process::output_within(
        command("script")
            .args(["--quiet", "--return", "--command", &line, "/dev/null"])
            .current_dir(build::workspace_root())
            // A terminal that can move its cursor: with TERM unset or `dumb` no bar is drawn.
            .env("TERM", "xterm"),
        process::LONG,
    )
}

fn quote(word: &str) -> String {
    assert!(!word.contains('\''), "{word} needs no quoting");
    format!("'{word}'")
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The subcommands `converge --help` lists, but `help`.
fn subcommands() -> Vec<String> {
    let help = text(&piped(&["--help"]).stdout);
    help.lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// What bash's completion offers for `words`, the last being completed.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let current = words.len() - 1;
    let program = format!(
        "source \"$0\"; COMP_WORDS=({}); COMP_CWORD={current}; _converge converge {} {}; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words.join(" "),
        words[current],
        words[current - 1],
    );
    let output = Command::new("bash")
        .args(["-c", &program, path(script)])
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn cli_ux_completions_name_every_subcommand_and_complete_in_bash() {
    let subcommands = subcommands();
    assert!(subcommands.len() >= 9, "{subcommands:?}");
    let scripts = tempfile::tempdir().expect("temp dir");
    for (shell, seed) in [
        ("bash", "--seed"),
        ("zsh", "'--seed=["),
        ("fish", "-l seed"),
    ] {
        let output = piped(&["completions", shell]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
        let script = text(&output.stdout);
        assert!(script.contains(seed), "{shell}: no {seed}");
        for name in &subcommands {
            assert!(script.contains(name.as_str()), "{shell}: no {name}");
        }
        std::fs::write(scripts.path().join(shell), &script).expect("script written");
    }
    assert!(text(&piped(&["completions", "zsh"]).stdout).starts_with("#compdef converge"));

    let bash = scripts.path().join("bash");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .output()
        .expect("bash runs");
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));
    assert_eq!(bash_completes(&bash, &["converge", "se"]), ["serve"]);
    let options = bash_completes(&bash, &["converge", "check", "--se"]);
    assert!(
        options.iter().any(|option| option == "--seed"),
        "{options:?}"
    );
    let shells = bash_completes(&bash, &["converge", "completions", "f"]);
    assert_eq!(shells, ["fish"]);
}

#[test]
fn cli_ux_man_page_is_roff_naming_every_subcommand() {
    let output = piped(&["man"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let page = text(&output.stdout);
    assert!(page.contains("\n.TH converge 1 "), "{page}");
    let name = page.find("\n.SH NAME\n").expect("a NAME section");
    assert!(page[name..].contains("converge \\- Order\\-insensitive stream consumption"));
    let section = page
        .find("\n.SH SUBCOMMANDS\n")
        .expect("a SUBCOMMANDS section");
    let listed = &page[section..];
    for subcommand in subcommands() {
        let entry = format!("converge\\-{}(1)", subcommand.replace('-', "\\-"));
        assert!(listed.contains(&entry), "no {entry} in SUBCOMMANDS");
    }
    // Only pages that exist are pointed to.
    assert!(!page.contains("converge\\-help"), "{page}");

    // groff (man's formatter) reads it without a warning, where it is installed.
    let man = tempfile::tempdir().expect("temp dir");
    let file = man.path().join("converge.1");
    std::fs::write(&file, &page).expect("page written");
    if Command::new("groff").arg("--version").output().is_ok() {
        let rendered = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(&file)
            .output()
            .expect("groff runs");
        assert!(rendered.status.success(), "{}", text(&rendered.stderr));
        assert!(rendered.stderr.is_empty(), "{}", text(&rendered.stderr));
        let shown = text(&rendered.stdout);
        assert!(shown.contains("SUBCOMMANDS"), "{shown}");
        assert!(shown.contains("SYNOPSIS"), "{shown}");
    }
}

#[test]
fn cli_ux_man_dir_writes_a_page_per_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pages = dir.path().join("man1");
    let output = piped(&["man", "--dir", path(&pages)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stdout.is_empty());
    for subcommand in subcommands()
        .iter()
        .map(String::as_str)
        .chain(["rule-sign"])
    {
        let name = format!("converge-{subcommand}");
        let page = std::fs::read_to_string(pages.join(format!("{name}.1")))
            .unwrap_or_else(|error| panic!("no page {name}.1: {error}"));
        let title = format!("\n.TH {name} 1 ");
        assert!(page.contains(&title), "{name}.1 has no {title:?}");
    }
    assert!(pages.join("converge.1").is_file());
}

/// Checks that `stderr` holds no part of a progress bar.
fn assert_no_bar(command: &str, stderr: &[u8]) {
    let stderr = text(stderr);
    for sign in [
        "\r",
        "\x1b",
        "histories",
        "reading",
        "comparing",
        "publishing",
        "[",
    ] {
        assert!(
            !stderr.contains(sign),
            "{command} wrote {sign:?} to a stderr that is not a terminal:\n{stderr}"
        );
    }
}

/// A configuration `replay` can run with here: the order-status rule, an empty memory store
/// (every key differs), the sample stream passed with --input.
fn replay_config(dir: &Path) -> PathBuf {
    let memory = config::kafka_serve("unused", "unused.dlq", "unused", StoreConfig::Memory);
    config::write(dir, &memory)
}

#[test]
fn cli_ux_progress_is_silent_when_stderr_is_not_a_terminal() {
    let rule = build::rule("order-status");
    let check = piped(&["check", path(&rule), "--histories", "20"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));
    assert!(check.stderr.is_empty(), "{}", text(&check.stderr));

    let dir = tempfile::tempdir().expect("temp dir");
    let config = replay_config(dir.path());
    let rule_arg = ["--rule", path(&rule), "--config", path(&config)];
    let replay = piped(&[&["replay", "--input", SAMPLE][..], &rule_arg].concat());
    assert!(text(&replay.stdout).starts_with("replayed "));
    assert!(replay.stderr.is_empty(), "{}", text(&replay.stderr));

    let simulate = piped(&["simulate", "--orders", "300"]);
    assert!(simulate.status.success(), "{}", text(&simulate.stderr));
    assert_no_bar("simulate", &simulate.stderr);
    // Only the summary.
    let stderr = text(&simulate.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stderr).expect("a JSON summary");
    assert_eq!(summary["orders"], 300);

    for (command, output) in [("check", &check), ("replay", &replay)] {
        assert_no_bar(command, &output.stderr);
    }
}

#[test]
fn cli_ux_check_draws_its_bar_on_a_terminal_and_clears_it_before_the_report() {
    let rule = build::rule("order-status");
    let output = on_terminal(&["check", path(&rule), "--histories", "40"], None);
    let screen = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{screen}");
    // The bar, drawn as the stage began, then its summary, then the report.
    let bar = screen.find("checking [").expect("a bar drawn");
    assert!(screen.contains("/40 histories"), "{screen}");
    let summary = screen
        .find("checking: 40 of 40 histories in ")
        .expect("a summary line");
    let report = screen.find("convergence: ok").expect("the report");
    assert!(bar < summary && summary < report, "{screen}");
    // Cleared: nothing of the bar is drawn after the report begins.
    assert!(!screen[report..].contains("histories ["), "{screen}");
    assert!(!screen[report..].contains('\x1b'), "{screen}");

    // With --json and stdout a file, the bar stays on the terminal and the file holds the
    // report alone.
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let json = on_terminal(
        &["check", path(&rule), "--histories", "10", "--json"],
        Some(&report),
    );
    let screen = text(&json.stdout);
    assert!(
        screen.contains("checking: 10 of 10 histories in "),
        "{screen}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report written"))
            .expect("nothing but the JSON report on stdout");
    assert_eq!(report["passed"], true);
}

#[test]
fn cli_ux_replay_and_simulate_draw_their_bars_on_a_terminal() {
    let rule = build::rule("order-status");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = replay_config(dir.path());
    // Bytes: the sample holds a line that is not UTF-8, on purpose.
    let events = std::fs::read(build::workspace_root().join(SAMPLE))
        .expect("sample")
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .count() as u64;
    let replay = on_terminal(
        &[
            "replay",
            "--input",
            SAMPLE,
            "--rule",
            path(&rule),
            "--config",
            path(&config),
        ],
        None,
    );
    let screen = text(&replay.stdout);
    assert!(screen.contains("reading ["), "{screen}");
    let read = screen.find("reading: ").expect("a reading summary");
    assert!(
        screen[read..].contains(&format!("({} events)", indicatif::HumanCount(events))),
        "{screen}"
    );
    let compared = screen.find("comparing: ").expect("a comparing summary");
    let report = screen.find("replayed ").expect("the report");
    assert!(read < compared && compared < report, "{screen}");

    let messages = dir.path().join("orders.jsonl");
    let simulate = on_terminal(&["simulate", "--orders", "500"], Some(&messages));
    let screen = text(&simulate.stdout);
    assert!(simulate.status.success(), "{screen}");
    assert!(screen.contains("publishing ["), "{screen}");
    let published = screen.find("publishing: ").expect("a publishing summary");
    let delivered = screen
        .find("delivering: done in ")
        .expect("a delivering summary");
    let summary = screen.find("{\"orders\":500").expect("the summary");
    assert!(published < delivered && delivered < summary, "{screen}");
    // The messages went to the file, whole and apart from the bar.
    let lines = std::fs::read_to_string(&messages).expect("messages written");
    assert!(lines.lines().count() >= 500);
    assert!(!lines.contains('\x1b') && !lines.contains('\r'));
}
