//! The convergence property check: does a rule's stored state depend on delivery order, or on
//! anything but the events themselves?
//!
//! Each run draws a fresh random seed (printed, and given back with [`CheckConfig::seed`] to
//! repeat the run exactly). From it the check generates histories of events for one key each
//! (see `generate`: several keys per run, palettes small enough that ties and duplicates are
//! common, boundary numbers, undeclared statuses, values from the rule's vectors and from sample
//! messages — the [`Corpus`]). It folds every history through the rule in every delivery order
//! (histories of up to [`CheckConfig::exhaustive_up_to`] events) or in
//! [`CheckConfig::random_orders`] random orders (longer ones), and requires:
//!
//! - **convergence**: every order ends on the same stored state;
//! - **no regression**: whenever the stored state changes, re-delivering any event applied
//!   before leaves it unchanged, so no redelivery can move the key backward;
//! - **idempotence**: the same holds for an exact duplicate of the event that was just applied;
//! - **no silence**: an event for a key with nothing stored is inserted or rejected, never
//!   ignored (`ignore` means stale or duplicate of the stored state; with nothing stored it would
//!   make the event vanish without a trace);
//! - **determinism**: the same (current, incoming) gets the same decision every time it is
//!   asked, on the instance that has decided everything before (every answer is remembered and
//!   compared on every repeat) and on a fresh instance (asked for a sample of pairs);
//! - **no failures**: the rule never traps, times out or answers against the contract. An
//!   event of a status the rule does not declare may be accepted: the host refuses to store the
//!   state and dead-letters the event, so for convergence it counts as rejected.
//!
//! A failing history is shrunk (events dropped one at a time while it still fails), then
//! replayed on fresh instances: a counterexample that a fresh instance does not reproduce is
//! reported as non-determinism, with the two answers the rule gave to the same inputs.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod corpus;
mod generate;
mod keys;
mod report;
mod shrink;
mod walk;

pub use corpus::Corpus;
pub use report::{Answer, CheckReport, Delivery, Outcome, Violation};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::progress::{HumanCount, Progress, Silent, Unit};
use crate::rule::{CompiledRule, Rule};

use generate::Generator;
use keys::Siblings;
use walk::{Checker, MAX_SUSPECTS, with_key};

/// Makes fresh instances of a rule: ones that have decided nothing yet. The check decides most
/// pairs on one long-lived instance and compares a sample with fresh ones, so a rule that keeps
/// state between calls is caught.
pub trait RuleFactory {
    /// A fresh instance.
    fn fresh(&self) -> Box<dyn Rule>;
}

impl RuleFactory for CompiledRule {
    fn fresh(&self) -> Box<dyn Rule> {
        Box::new(self.instance())
    }
}

/// Any closure making a rule, e.g. `|| MyRule::default()` for a native rule.
impl<F, R> RuleFactory for F
where
    F: Fn() -> R,
    R: Rule + 'static,
{
    fn fresh(&self) -> Box<dyn Rule> {
        Box::new(self())
    }
}

/// How hard to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckConfig {
    /// How many histories to generate.
    pub histories: usize,
    /// The longest history generated.
    pub max_events: usize,
    /// Histories up to this length are checked in every order (7 events: 5,040 orders).
    pub exhaustive_up_to: usize,
    /// How many random orders a longer history is checked in.
    pub random_orders: usize,
    /// At most how many of a history's (current, incoming) pairs are also asked of a fresh
    /// instance; every repeated pair is compared anyway, at no cost.
    pub fresh_per_history: usize,
    /// Seed of the generator: the same seed (with the same corpus) checks the same histories
    /// and finds the same counterexample. `None`: a fresh random seed, reported in
    /// [`CheckReport::seed`].
    pub seed: Option<u64>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            histories: 200,
            max_events: 10,
            exhaustive_up_to: 7,
            random_orders: 1_000,
            fresh_per_history: 3,
            seed: None,
        }
    }
}

impl CheckConfig {
    /// The quick check the gates run before a rule may serve (`converge check --quick`): shorter
    /// histories, `histories` of them.
    pub fn quick(histories: usize) -> Self {
        Self {
            histories,
            max_events: 6,
            exhaustive_up_to: 5,
            random_orders: 100,
            ..Self::default()
        }
    }
}

/// Runs the property check against instances of `rules`, drawing values from `corpus` beside
/// generated ones.
pub fn check(rules: &dyn RuleFactory, config: &CheckConfig, corpus: &Corpus) -> CheckReport {
    check_with_progress(rules, config, corpus, &Silent)
}

/// [`check`], reporting to `progress`: the stage `checking` counts histories (noting the
/// orders folded and decisions asked), then, when one fails, `shrinking` counts the smaller
/// histories tried (noting the property broken).
pub fn check_with_progress(
    rules: &dyn RuleFactory,
    config: &CheckConfig,
    corpus: &Corpus,
    progress: &dyn Progress,
) -> CheckReport {
    let seed = config.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let warm = rules.fresh();
    let info = warm.info().clone();
    let generator = Generator::new(&info, corpus, &mut rng);
    let siblings = Siblings::new(&mut rng);
    let mut checker = Checker::new(rules, config, progress, warm, info, siblings, seed);
    progress.stage(
        "checking",
        Unit::Items("histories"),
        Some(config.histories as u64),
    );
    // The first histories pair every two declared statuses (see `Generator::status_pairs`):
    // a deterministic sweep, at most half the budget, before the random histories.
    let mut sweep = generator
        .status_pairs(config.histories / 2, &mut rng)
        .into_iter();
    for done in 0..config.histories {
        let mut events = sweep
            .next()
            .unwrap_or_else(|| generator.history(config.max_events, &mut rng));
        // Once the rule has treated a key apart from its siblings, half the histories are
        // checked under such a key.
        if !checker.suspects.is_empty() && rng.random_bool(0.5) {
            let key = &checker.suspects[rng.random_range(0..checker.suspects.len())];
            events = with_key(&events, key);
        }
        checker.probing = true;
        let mut checked = checker.check_history(&events, &mut rng);
        // Every two distinct events on their own, and crossed: what the whole history masks.
        if checked.is_ok() {
            checked = checker.check_pairs(&events, &mut rng);
        }
        checker.probing = false;
        // Each sibling of the key the rule decided one of this history's pairs otherwise
        // under: the same history under that key.
        for key in std::mem::take(&mut checker.new_suspects) {
            if checked.is_err() {
                break;
            }
            checked = checker.check_history(&with_key(&events, &key), &mut rng);
            if checker.suspects.len() < MAX_SUSPECTS {
                checker.suspects.push(key);
            }
        }
        progress.advance(1);
        progress.note(format_args!(
            "{} orders, {} decisions",
            HumanCount(checker.orders),
            HumanCount(checker.decisions)
        ));
        if let Err(violation) = checked {
            progress.stage("shrinking", Unit::Items("histories"), None);
            progress.note(format_args!("{}", violation.property()));
            let violation = checker.shrink(violation, &mut rng);
            let violation = checker.confirm(violation);
            return CheckReport {
                seed,
                histories: done + 1,
                orders: checker.orders,
                decisions: checker.decisions,
                violation: Some(*violation),
            };
        }
    }
    CheckReport {
        seed,
        histories: config.histories,
        orders: checker.orders,
        decisions: checker.decisions,
        violation: None,
    }
}
