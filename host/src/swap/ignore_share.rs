//! The ignore share of each rule version, and the judgement that rolls a swap back by itself.
//!
//! An `ignore` is acknowledged and leaves no trace in the store, so a rule that passes every
//! gate yet ignores what it should not (keys the gates never try, say) loses events in
//! silence. What it cannot hide is *how often* it ignores: every version the control knows has
//! a [`VersionBook`] counting its decisions and ignores, fed by the pipeline's rule as it
//! decides (the active rule's and the shadow's, each in its own book). With
//! `[rule.auto_rollback]` set, a version made active by a swap is on probation for as long as it
//! serves: once it has made `min_decisions` decisions, its share (over its last ~10,000) is
//! compared after every call with the share the version before it had when it last served, and
//! a jump of more than `max_ignore_share_increase` rolls it back (see
//! [`crate::swap::RuleControl`]). Judging once would let a rule behave for its first
//! `min_decisions` and go quiet afterwards; judging on is what a frozen baseline allows. A shadow is measured the same way on the very events the
//! active rule decides, so a promotion can be refused before anything is lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::config::AutoRollbackConfig;
use crate::telemetry::{KindCounts, RuleMeter};

/// Decisions per bucket of the window.
const BUCKET_DECISIONS: u64 = 1_000;
/// Closed buckets the window keeps besides the one filling: the share covers about the last
/// `BUCKET_DECISIONS * WINDOW_BUCKETS` decisions.
const WINDOW_BUCKETS: usize = 10;

/// How often a rule version answered `ignore`, as status reports it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct IgnoreShare {
    /// Decisions it made since this instance loaded it (or, for a shadow, since it started).
    pub decisions: u64,
    /// How many of them were `ignore`.
    pub ignores: u64,
    /// Ignores per decision over its most recent decisions (about the last 10,000); 0 before
    /// the first.
    pub share: f64,
}

/// Shares are equal when their counts are and their shares are the same number (bit for
/// bit: a share is never NaN).
impl PartialEq for IgnoreShare {
    fn eq(&self, other: &Self) -> bool {
        self.decisions == other.decisions
            && self.ignores == other.ignores
            && self.share.to_bits() == other.share.to_bits()
    }
}

impl Eq for IgnoreShare {}

impl std::fmt::Display for IgnoreShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}% ({} ignores in {} decisions)",
            self.share * 100.0,
            self.ignores,
            self.decisions
        )
    }
}

/// An automatic rollback, as status reports it in the last swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRollback {
    /// `name@version` of the version rolled back.
    pub rule: String,
    /// Its content hash, refused by this instance from now on.
    pub hash: String,
    /// Its ignore share when it was judged.
    pub share: IgnoreShare,
    /// The ignore share of the version it returned to, as that one last served.
    pub previous_share: IgnoreShare,
    /// Why, in words.
    pub reason: String,
}

/// Ignores among decisions: totals, and the share over a sliding window of recent decisions.
///
/// The window is a ring of buckets of about [`BUCKET_DECISIONS`] decisions: the share is an
/// exact ratio of counts over (about) the last 10,000 decisions, which an operator can check
/// against the counters, and adding a batch costs two additions. An exponentially decayed
/// share would need a decay rate to tune, leans towards its starting value until enough
/// decisions have passed, and could not be recomputed from the counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window {
    decisions: u64,
    ignores: u64,
    /// Closed buckets, oldest first: (decisions, ignores).
    closed: VecDeque<(u64, u64)>,
    /// The bucket filling.
    open: (u64, u64),
    /// Sums over `closed` and `open`.
    in_window: (u64, u64),
}

impl Window {
    /// Adds `decisions` decisions, `ignores` of them `ignore`.
    pub(crate) fn add(&mut self, decisions: u64, ignores: u64) {
        self.decisions += decisions;
        self.ignores += ignores;
        self.open.0 += decisions;
        self.open.1 += ignores;
        self.in_window.0 += decisions;
        self.in_window.1 += ignores;
        if self.open.0 >= BUCKET_DECISIONS {
            self.closed.push_back(std::mem::take(&mut self.open));
            if self.closed.len() > WINDOW_BUCKETS
                && let Some((decisions, ignores)) = self.closed.pop_front()
            {
                self.in_window.0 -= decisions;
                self.in_window.1 -= ignores;
            }
        }
    }

    /// Ignores per decision over the window; 0 before the first decision.
    pub(crate) fn share(&self) -> f64 {
        if self.in_window.0 == 0 {
            0.0
        } else {
            self.in_window.1 as f64 / self.in_window.0 as f64
        }
    }

    /// The counts and share, as status reports them.
    pub(crate) fn snapshot(&self) -> IgnoreShare {
        IgnoreShare {
            decisions: self.decisions,
            ignores: self.ignores,
            share: self.share(),
        }
    }
}

/// A version made active by a swap, waiting to be judged against the version before it.
#[derive(Debug, Clone)]
pub(crate) struct Probation {
    /// The book of the version it replaced.
    pub baseline: Arc<VersionBook>,
    /// `name@version` of that version.
    pub baseline_rule: String,
    pub limits: AutoRollbackConfig,
}

/// A share that jumped: the judgement's verdict.
#[derive(Debug, Clone)]
pub(crate) struct Jump {
    pub share: IgnoreShare,
    pub baseline: IgnoreShare,
    pub baseline_rule: String,
    pub limits: AutoRollbackConfig,
}

impl Jump {
    /// The verdict in words, naming `rule`, the version judged.
    pub(crate) fn reason(&self, rule: &str) -> String {
        format!(
            "{rule} ignored {} of its decisions, {:.1} points above {}'s {}; at most {:.1} points \
             more are allowed (rule.auto_rollback.max_ignore_share_increase)",
            self.share,
            (self.share.share - self.baseline.share) * 100.0,
            self.baseline_rule,
            self.baseline,
            self.limits.max_ignore_share_increase * 100.0
        )
    }
}

/// Whether `share` exceeds `baseline` by more than `limits` allow, both having made enough
/// decisions to be judged.
pub(crate) fn jumped(
    share: &IgnoreShare,
    baseline: &IgnoreShare,
    limits: &AutoRollbackConfig,
) -> bool {
    share.decisions >= limits.min_decisions
        && baseline.decisions >= limits.min_decisions
        && share.share - baseline.share > limits.max_ignore_share_increase
}

/// One rule version's decisions on this instance, while the control knows it (as active,
/// previous or shadow).
#[derive(Debug, Default)]
pub(crate) struct VersionBook {
    state: Mutex<BookState>,
}

#[derive(Debug, Default)]
struct BookState {
    window: Window,
    probation: Option<Probation>,
}

impl VersionBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BookState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The version's counts and share now.
    pub(crate) fn snapshot(&self) -> IgnoreShare {
        self.lock().window.snapshot()
    }

    /// Puts the version on probation, or (`None`) ends it.
    pub(crate) fn set_probation(&self, probation: Option<Probation>) {
        self.lock().probation = probation;
    }

    /// Adds a call's decisions. Returns the version's share, and the verdict when it is on
    /// probation, has made `min_decisions` decisions and its share has jumped; the probation
    /// ends with that verdict (or at once when the version before decided too little to
    /// compare with).
    pub(crate) fn record(&self, counts: &KindCounts) -> (f64, Option<Jump>) {
        let (snapshot, probation) = {
            let mut state = self.lock();
            state.window.add(counts.total(), counts.ignores());
            let snapshot = state.window.snapshot();
            // (An Arc and two numbers: nothing allocated per call.)
            let due = state
                .probation
                .as_ref()
                .filter(|probation| snapshot.decisions >= probation.limits.min_decisions)
                .map(|probation| (Arc::clone(&probation.baseline), probation.limits));
            (snapshot, due)
        };
        let Some((baseline, limits)) = probation else {
            return (snapshot.share, None);
        };
        // The baseline's lock is taken only after this book's is released: two books are
        // never held at once. The baseline no longer decides, so its share is fixed.
        let baseline = baseline.snapshot();
        let too_little = baseline.decisions < limits.min_decisions;
        if !too_little && !jumped(&snapshot, &baseline, &limits) {
            return (snapshot.share, None);
        }
        // Either way the probation ends here.
        let Some(probation) = self.lock().probation.take() else {
            return (snapshot.share, None);
        };
        if too_little {
            tracing::info!(
                baseline = %probation.baseline_rule,
                decisions = baseline.decisions,
                min_decisions = limits.min_decisions,
                "the version before decided too little here to compare ignore shares with; the new version is not judged"
            );
            return (snapshot.share, None);
        }
        let jump = Jump {
            share: snapshot,
            baseline,
            baseline_rule: probation.baseline_rule,
            limits,
        };
        (snapshot.share, Some(jump))
    }
}

/// A version's book with the metric handles of the role it decides in: what the pipeline's
/// rule counts each call's decisions into.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    pub book: Arc<VersionBook>,
    pub metrics: RuleMeter,
}

impl Meter {
    /// Counts a call's decisions; the verdict when the version's judgement fell now and its
    /// share jumped.
    pub(crate) fn record(&self, counts: &KindCounts) -> Option<Jump> {
        if counts.total() == 0 {
            return None;
        }
        let (share, jump) = self.book.record(counts);
        self.metrics.record(counts, share);
        jump
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: f64, min: u64) -> AutoRollbackConfig {
        AutoRollbackConfig {
            max_ignore_share_increase: max,
            min_decisions: min,
        }
    }

    fn counts(decisions: u64, ignores: u64) -> KindCounts {
        KindCounts([decisions - ignores, 0, ignores, 0])
    }

    #[test]
    fn the_share_covers_about_the_last_ten_thousand_decisions() {
        let mut window = Window::default();
        assert_eq!(window.share(), 0.0);
        // 10,000 decisions with half ignored, then 10,000 with none: the old half leaves.
        for _ in 0..100 {
            window.add(100, 50);
        }
        assert_eq!(window.share(), 0.5);
        for _ in 0..100 {
            window.add(100, 0);
        }
        let snapshot = window.snapshot();
        assert_eq!((snapshot.decisions, snapshot.ignores), (20_000, 5_000));
        assert_eq!(snapshot.share, 0.0);
        // A big batch is one bucket; the share still follows it.
        window.add(50_000, 50_000);
        assert!(window.share() > 0.8, "{}", window.share());
    }

    #[test]
    fn a_version_on_probation_is_judged_from_min_decisions_on_until_it_jumps() {
        let baseline = Arc::new(VersionBook::default());
        baseline.record(&counts(2_000, 200));
        let book = VersionBook::default();
        book.set_probation(Some(Probation {
            baseline: Arc::clone(&baseline),
            baseline_rule: "r@1".to_owned(),
            limits: limits(0.2, 1_000),
        }));
        assert!(book.record(&counts(500, 500)).1.is_none(), "too early");
        // Quiet enough from `min_decisions` on: a rule cannot buy its way past the judgement
        // with its first decisions.
        assert!(book.record(&counts(4_500, 0)).1.is_none());
        assert!(book.record(&counts(5_000, 0)).1.is_none());
        let (share, jump) = book.record(&counts(10_000, 10_000));
        assert_eq!(share, 10_500.0 / 20_000.0);
        let jump = jump.expect("a jump from 10% to 52.5%");
        assert_eq!(jump.baseline.share, 0.1);
        let reason = jump.reason("r@2");
        assert!(
            reason.contains("r@2 ignored 52.5% (10500 ignores in 20000 decisions)")
                && reason.contains("42.5 points above r@1's 10.0%"),
            "{reason}"
        );
        assert!(
            book.record(&counts(10, 10)).1.is_none(),
            "a verdict ends the probation"
        );
    }

    #[test]
    fn a_small_increase_or_a_baseline_that_decided_too_little_is_not_a_jump() {
        let baseline = Arc::new(VersionBook::default());
        baseline.record(&counts(2_000, 200));
        let book = VersionBook::default();
        book.set_probation(Some(Probation {
            baseline: Arc::clone(&baseline),
            baseline_rule: "r@1".to_owned(),
            limits: limits(0.2, 1_000),
        }));
        assert!(
            book.record(&counts(1_000, 290)).1.is_none(),
            "29% is within 20 points"
        );

        let young = Arc::new(VersionBook::default());
        young.record(&counts(10, 0));
        let book = VersionBook::default();
        book.set_probation(Some(Probation {
            baseline: young,
            baseline_rule: "r@1".to_owned(),
            limits: limits(0.2, 1_000),
        }));
        assert!(book.record(&counts(1_000, 1_000)).1.is_none());
        assert!(
            book.lock().probation.is_none(),
            "nothing to compare with: not judged"
        );
    }
}
