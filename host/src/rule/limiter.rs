//! The memory cap of a rule instance: growth of its memories and tables charged against one
//! budget, and the counts of instances, memories and tables it may create.

use wasmtime::ResourceLimiter;

use super::engine::{EngineLimits, TABLE_ELEMENT_BYTES};

/// Refuses growth past the cap (all the instance's memories and tables together: a table
/// element is charged [`TABLE_ELEMENT_BYTES`]) and remembers the refusal, so the trap that
/// follows (a Rust guest aborts when allocation fails) is reported as what it is; caps the
/// instances, memories and tables a store may create.
pub(super) struct Limiter {
    limits: EngineLimits,
    /// Bytes the store's memories and table elements hold, all together.
    used: usize,
    /// The growth last allowed, taken back if it then fails.
    growing: usize,
    /// The total a refused growth would have made: set when the cap refused one, until taken.
    pub(super) refused: Option<usize>,
}

impl Limiter {
    pub(super) fn new(limits: EngineLimits) -> Self {
        Self {
            limits,
            used: 0,
            growing: 0,
            refused: None,
        }
    }

    /// Charges `growth` bytes against the cap, or remembers the refusal. Growth past the
    /// memory's or table's own maximum is refused without charge (wasmtime would refuse it
    /// too), and is not the cap's doing.
    fn charge(&mut self, growth: usize, over_maximum: bool) -> bool {
        if over_maximum {
            return false;
        }
        let total = self.used.saturating_add(growth);
        if total > self.limits.memory_cap_bytes {
            self.refused = Some(total);
            return false;
        }
        self.used = total;
        self.growing = growth;
        true
    }

    /// Takes back the growth last allowed: it failed.
    fn grow_failed(&mut self) {
        self.used = self.used.saturating_sub(std::mem::take(&mut self.growing));
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.charge(
            desired.saturating_sub(current),
            maximum.is_some_and(|max| desired > max),
        ))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    /// Also called for a table's initial size, when an instance is created.
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.charge(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
            maximum.is_some_and(|max| desired > max),
        ))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        self.limits.max_instances
    }

    fn memories(&self) -> usize {
        self.limits.max_memories
    }

    fn tables(&self) -> usize {
        self.limits.max_tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(cap: usize) -> Limiter {
        Limiter {
            limits: EngineLimits {
                memory_cap_bytes: cap,
                ..EngineLimits::default()
            },
            used: 0,
            growing: 0,
            refused: None,
        }
    }

    #[test]
    fn wedge_table_elements_are_charged_against_the_memory_cap() {
        let mut limiter = limiter(1 << 20);
        // 64 KiB of memory, then a table taking the rest at a pointer per element.
        assert!(limiter.memory_growing(0, 64 << 10, None).expect("asked"));
        let elements = ((1 << 20) - (64 << 10)) / TABLE_ELEMENT_BYTES;
        assert!(limiter.table_growing(0, elements, None).expect("asked"));
        assert_eq!(limiter.refused, None);
        // One element more, or one page more, is past the cap: refused, and remembered as the
        // cap's doing.
        assert!(
            !limiter
                .table_growing(elements, elements + 1, None)
                .expect("asked"),
            "a table element past the cap must be refused"
        );
        assert_eq!(limiter.refused, Some((1 << 20) + TABLE_ELEMENT_BYTES));
        limiter.refused = None;
        assert!(
            !limiter
                .memory_growing(64 << 10, 128 << 10, None)
                .expect("asked")
        );
        assert_eq!(limiter.refused, Some((1 << 20) + (64 << 10)));
        // Many tables of a million elements each (the old per-table bound) no longer fit.
        let mut limiter = limiter_with_default_cap();
        let fitted = (0..32)
            .take_while(|_| limiter.table_growing(0, 1_000_000, None).expect("asked"))
            .count();
        assert!(
            fitted < 32,
            "32 tables of 1,000,000 elements fit in the cap"
        );
        assert!(limiter.refused.is_some());
    }

    fn limiter_with_default_cap() -> Limiter {
        limiter(EngineLimits::default().memory_cap_bytes)
    }

    #[test]
    fn a_failed_growth_is_taken_back_and_a_table_maximum_is_not_the_cap() {
        let mut limiter = limiter(1 << 20);
        assert!(limiter.table_growing(0, 1000, None).expect("asked"));
        limiter
            .table_grow_failed(wasmtime::Error::msg("out of host memory"))
            .expect("taken");
        assert_eq!(limiter.used, 0);
        assert!(!limiter.table_growing(0, 11, Some(10)).expect("asked"));
        assert_eq!(
            limiter.refused, None,
            "a table's own maximum is not the memory cap"
        );
    }
}
