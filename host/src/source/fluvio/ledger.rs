//! Which of a partition's handed-out offsets are acknowledged, and so how far the partition
//! may be committed.

use std::collections::BTreeMap;

/// One partition's handed-out runs of offsets (one run per batch), in offset order.
///
/// The committable offset is the last offset of the longest prefix of runs that are all
/// acknowledged: batches may be acknowledged out of step, but nothing is committed past an
/// offset whose batch is still in flight.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// First offset of a run → (its last offset, acknowledged).
    runs: BTreeMap<i64, (i64, bool)>,
    committable: Option<i64>,
}

/// An acknowledgement for offsets that were not handed out as one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offsets {first}..={last} were acknowledged but never handed out as one batch")]
pub(super) struct UnknownRun {
    pub first: i64,
    pub last: i64,
}

impl Ledger {
    /// Records a run of offsets handed out in one batch.
    pub fn handed_out(&mut self, first: i64, last: i64) {
        self.runs.insert(first, (last, false));
    }

    /// Marks a run acknowledged; returns the new committable offset if it moved.
    pub fn acknowledged(&mut self, first: i64, last: i64) -> Result<Option<i64>, UnknownRun> {
        match self.runs.get_mut(&first) {
            Some((run_last, acked)) if *run_last == last => *acked = true,
            _ => return Err(UnknownRun { first, last }),
        }
        let before = self.committable;
        while let Some(entry) = self.runs.first_entry() {
            let (last, acked) = *entry.get();
            if !acked {
                break;
            }
            entry.remove();
            self.committable = Some(last);
        }
        Ok((self.committable != before)
            .then_some(self.committable)
            .flatten())
    }

    /// Runs handed out and not yet committable.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_in_order_the_committable_offset_follows() {
        let mut ledger = Ledger::default();
        ledger.handed_out(0, 9);
        ledger.handed_out(10, 19);
        assert_eq!(ledger.acknowledged(0, 9), Ok(Some(9)));
        assert_eq!(ledger.acknowledged(10, 19), Ok(Some(19)));
        assert_eq!(ledger.in_flight(), 0);
    }

    #[test]
    fn a_later_batch_acknowledged_first_is_not_committed_past_the_earlier_one() {
        let mut ledger = Ledger::default();
        ledger.handed_out(0, 9);
        ledger.handed_out(10, 19);
        ledger.handed_out(20, 29);
        assert_eq!(
            ledger.acknowledged(20, 29),
            Ok(None),
            "0..=19 still in flight"
        );
        assert_eq!(
            ledger.acknowledged(10, 19),
            Ok(None),
            "0..=9 still in flight"
        );
        assert_eq!(
            ledger.acknowledged(0, 9),
            Ok(Some(29)),
            "the whole prefix at once"
        );
    }

    #[test]
    fn an_acknowledgement_of_offsets_never_handed_out_is_refused() {
        let mut ledger = Ledger::default();
        ledger.handed_out(5, 9);
        assert_eq!(
            ledger.acknowledged(5, 12),
            Err(UnknownRun { first: 5, last: 12 })
        );
        assert_eq!(
            ledger.acknowledged(0, 4),
            Err(UnknownRun { first: 0, last: 4 })
        );
        assert_eq!(ledger.acknowledged(5, 9), Ok(Some(9)));
    }
}
