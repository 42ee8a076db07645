//! Issue 24 item 13, "gates that catch a bug every time, not sometimes": the quick check the
//! gates run draws a fresh seed per candidate, so its power is a probability. Measured here as
//! the gates run it — [`GateConfig::default`]'s number of histories, values from the rule's
//! embedded vectors — on every subtly wrong rule of the workspace (`tests/rules/bad-*`,
//! including near-ties on one field and bugs for one key shape only) over 20 seeds, each of
//! which must find a counterexample; and on the convergent rules, which must pass every seed.
//!
//! The seeds are fresh per run (printed with the `converge check` line that repeats a miss);
//! `CONVERGE_CHECK_POWER_SEEDS` measures over more of them. Each rule's line (under
//! `--nocapture`) gives its detection rate, the mean and worst history the counterexample was
//! found in (out of the gates' default), and the time per check.

use std::time::{Duration, Instant};

use converge::rule::check::{self, CheckConfig, CheckReport, Corpus};
use converge::rule::{CompiledRule, EngineLimits, GateConfig, RuleEngine, embedded_vectors};
use converge_tests::build;

/// A rule as the gates see it: compiled, with the corpus its vectors give the check.
struct Candidate {
    rule: String,
    compiled: CompiledRule,
    corpus: Corpus,
}

/// The workspace's rule crates whose name `select` accepts, compiled.
fn candidates(select: impl Fn(&str) -> bool) -> Vec<Candidate> {
    let engine = RuleEngine::new(EngineLimits::default()).expect("engine starts");
    build::rule_crates()
        .iter()
        .filter(|rule| select(&rule.rule))
        .map(|rule| {
            let bytes = std::fs::read(build::rule(&rule.rule)).expect("the component");
            let vectors = embedded_vectors(&bytes)
                .expect("embedded vectors parse")
                .map(|file| file.vectors)
                .unwrap_or_default();
            Candidate {
                rule: rule.rule.clone(),
                compiled: engine.compile(&bytes).expect("rule compiles"),
                corpus: Corpus::from_vectors(&vectors),
            }
        })
        .collect()
}

/// How many seeds each rule is checked with.
fn seeds() -> Vec<u64> {
    let count = std::env::var("CONVERGE_CHECK_POWER_SEEDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(20);
    (0..count).map(|_| rand::random()).collect()
}

/// One rule over every seed: each seed's report and how long its check took.
struct Runs {
    rule: String,
    runs: Vec<(CheckReport, Duration)>,
}

impl Runs {
    fn of(candidate: &Candidate, seeds: &[u64]) -> Self {
        let histories = GateConfig::default().check_histories;
        let runs = seeds
            .iter()
            .map(|&seed| {
                let config = CheckConfig {
                    seed: Some(seed),
                    ..CheckConfig::quick(histories)
                };
                let started = Instant::now();
                let report = check::check(&candidate.compiled, &config, &candidate.corpus);
                (report, started.elapsed())
            })
            .collect();
        Self {
            rule: candidate.rule.clone(),
            runs,
        }
    }

    /// The seeds the rule passed.
    fn passed(&self) -> Vec<u64> {
        self.runs
            .iter()
            .filter(|(report, _)| report.passed())
            .map(|(report, _)| report.seed)
            .collect()
    }

    /// One line: detections, where they were found, time and decisions per check.
    fn summary(&self) -> String {
        let total = self.runs.len();
        let found: Vec<usize> = self
            .runs
            .iter()
            .filter(|(report, _)| !report.passed())
            .map(|(report, _)| report.histories)
            .collect();
        let time: Duration = self.runs.iter().map(|(_, time)| *time).sum();
        let per_check = time / u32::try_from(total.max(1)).unwrap_or(u32::MAX);
        let decisions = self
            .runs
            .iter()
            .map(|(report, _)| report.decisions)
            .sum::<u64>()
            / total.max(1) as u64;
        let at = match found.iter().max() {
            Some(worst) => format!(
                ", found in history {:.1} on average, {worst} at worst",
                found.iter().sum::<usize>() as f64 / found.len() as f64
            ),
            None => String::new(),
        };
        format!(
            "{:<32} failed {:>3}/{total}{at}; {per_check:.1?} and {decisions} decisions per check",
            self.rule,
            found.len()
        )
    }
}

/// The seeds `rule` passed, and the command that repeats the first.
fn repeat_with(rule: &str, seeds: &[u64]) -> String {
    let histories = GateConfig::default().check_histories;
    let shown: Vec<String> = seeds.iter().take(10).map(u64::to_string).collect();
    format!(
        "seeds {}{}; `converge check {rule}.wasm --quick --histories {histories} --seed {}` repeats the first",
        shown.join(", "),
        if seeds.len() > shown.len() {
            ", …"
        } else {
            ""
        },
        seeds[0]
    )
}

#[test]
fn wedge_check_power_every_bad_rule_fails_on_every_seed() {
    let bad = candidates(|rule| rule.starts_with("bad-"));
    for required in ["bad-payload-content-tiebreak", "bad-key-shape"] {
        assert!(
            bad.iter().any(|candidate| candidate.rule == required),
            "{required} is a rule crate"
        );
    }
    let seeds = seeds();
    let started = Instant::now();
    let runs: Vec<Runs> = bad.iter().map(|rule| Runs::of(rule, &seeds)).collect();
    for rule in &runs {
        println!("{}", rule.summary());
    }
    println!(
        "{} checks in {:.1?}",
        bad.len() * seeds.len(),
        started.elapsed()
    );
    let missed: Vec<String> = runs
        .iter()
        .filter_map(|rule| {
            let passed = rule.passed();
            (!passed.is_empty()).then(|| {
                format!(
                    "{}: passed {} of {} seeds ({})",
                    rule.rule,
                    passed.len(),
                    seeds.len(),
                    repeat_with(&rule.rule, &passed)
                )
            })
        })
        .collect();
    assert!(
        missed.is_empty(),
        "the gates' check let non-convergent rules through:\n{}",
        missed.join("\n")
    );
}

#[test]
fn wedge_check_power_convergent_rules_pass_on_every_seed() {
    let good = candidates(|rule| rule == "order-status" || rule.starts_with("good-"));
    assert!(good.len() >= 2, "the shipped rule and good-* rules");
    let seeds = seeds();
    for rule in &good {
        let runs = Runs::of(rule, &seeds);
        println!("{}", runs.summary());
        for (report, _) in &runs.runs {
            assert!(
                report.passed(),
                "{} (seed {}): {}",
                rule.rule,
                report.seed,
                report
                    .violation
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
        }
    }
}
