//! The histories the check folds: one key per history, every field drawn from a small palette
//! chosen for that history, so that ties and duplicates stay common whatever the domain.
//!
//! Palettes mix the obvious (small numbers, the rule's declared statuses) with what rules get
//! wrong: boundary numbers and values that look alike when truncated, statuses the rule does not
//! declare, keys that are long, non-ASCII or full of separators, and values taken from the
//! rule's own vectors and from sample messages ([`Corpus`]). Keys are drawn afresh for every run,
//! so a rule cannot single out the keys it is checked with.

use std::collections::BTreeSet;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use crate::entity::{Entity, Event, RuleInfo};
use crate::rule::vectors::{Expectation, Vector};

/// Numbers rules mishandle: zero and one, the edges of 8, 16, 32 and 64 bits (signed and not)
/// and of the integers a double holds exactly.
const BOUNDARIES: [u64; 16] = [
    0,
    1,
    255,
    256,
    65_535,
    65_536,
    u32::MAX as u64,
    1 << 32,
    (1 << 32) + 1,
    // The same number once read as a double (JSON numbers in JavaScript, `as f64`).
    1 << 53,
    (1 << 53) + 1,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
    // A plausible timestamp in milliseconds (November 2023).
    1_700_000_000_000,
];

/// Bits whose flip leaves a value unchanged once truncated to 16 or 32 bits, or flips its sign
/// when read as a signed number: a value and its twin collide in a rule that narrows them.
const TWIN_BITS: [u64; 3] = [1 << 16, 1 << 32, 1 << 63];

/// An entity's field, as a history varies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Status,
    Version,
    Timestamp,
    Payload,
}

/// Payloads in canonical JSON (compact, keys sorted), as the host hands them to rules: objects
/// with shared and distinct fields (for rules that merge), other JSON types, non-ASCII text.
const PAYLOADS: [&str; 9] = [
    "null",
    r#"{"note":"a"}"#,
    r#"{"note":"b"}"#,
    r#"{"table":4}"#,
    r#"{"items":[1,2],"note":"a"}"#,
    r#"{"note":"ü 🍣","table":-1.5}"#,
    r#""text""#,
    "0",
    "[]",
];

/// Statuses no rule is likely to declare.
const UNDECLARED: [&str; 4] = ["unknown", "cancelled", "支払済み", "paid "];

/// Key prefixes and separators of the kinds real identifiers have.
const ASCII_PREFIXES: [&str; 6] = ["order", "Order", "ORD", "cust", "o", "x"];
const UNICODE_PREFIXES: [&str; 6] = ["заказ", "注文", "🍣", "Ölçü", "ǅemal", "İstanbul"];
const SEPARATORS: [&str; 10] = ["-", "_", ":", "/", "|", ".", "#", " ", "{", "}"];

/// Values to draw from beside generated ones: a rule's conformance vectors and sample messages.
/// Kept in sorted sets so that a run is the same for the same seed whatever order they came in.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    keys: BTreeSet<String>,
    statuses: BTreeSet<String>,
    numbers: BTreeSet<u64>,
    payloads: BTreeSet<String>,
}

/// How many distinct values of each kind a corpus keeps: a large sample must not make every
/// history a sample history, nor hold the whole file in memory.
const CORPUS_CAP: usize = 4_096;

impl Corpus {
    /// An empty corpus: only generated values.
    pub fn new() -> Self {
        Self::default()
    }

    /// The values of every entity in `vectors` (their stored states, events and expected
    /// states).
    pub fn from_vectors(vectors: &[Vector]) -> Self {
        let mut corpus = Self::new();
        corpus.add_vectors(vectors);
        corpus
    }

    /// Adds the values of every entity in `vectors`.
    pub fn add_vectors(&mut self, vectors: &[Vector]) {
        for vector in vectors {
            if let Some(current) = &vector.current {
                self.add(current);
            }
            self.add(&vector.incoming);
            if let Expectation::Insert(state) | Expectation::Update(state) = &vector.expect {
                self.add(state);
            }
        }
    }

    /// Adds the values of one entity (an empty key, which no event has, is left out).
    pub fn add(&mut self, entity: &Entity) {
        fn put<T: Ord>(set: &mut BTreeSet<T>, value: T) {
            if set.len() < CORPUS_CAP {
                set.insert(value);
            }
        }
        if !entity.key.trim().is_empty() {
            put(&mut self.keys, entity.key.clone());
        }
        if !entity.status.is_empty() {
            put(&mut self.statuses, entity.status.clone());
        }
        put(&mut self.numbers, entity.version);
        put(&mut self.numbers, entity.timestamp_ms);
        put(&mut self.payloads, entity.payload.clone());
    }

    /// Adds a key alone (an id-only message names no more).
    pub fn add_key(&mut self, key: &str) {
        if !key.trim().is_empty() && self.keys.len() < CORPUS_CAP {
            self.keys.insert(key.to_owned());
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.statuses.is_empty()
            && self.numbers.is_empty()
            && self.payloads.is_empty()
    }
}

/// One run's source of histories.
pub(super) struct Generator {
    declared: Vec<String>,
    undeclared: Vec<String>,
    keys: Vec<String>,
    payloads: Vec<String>,
    corpus_keys: Vec<String>,
    corpus_statuses: Vec<String>,
    corpus_numbers: Vec<u64>,
    corpus_payloads: Vec<String>,
}

impl Generator {
    /// Draws this run's keys (4 to 8 of every kind) and its long payload.
    pub(super) fn new(info: &RuleInfo, corpus: &Corpus, rng: &mut StdRng) -> Self {
        let declared = info.statuses.clone();
        let mut undeclared: Vec<String> = UNDECLARED.iter().map(|s| (*s).to_owned()).collect();
        // A declared status in another case: a rule must not take "PAID" for "paid".
        undeclared.extend(declared.iter().map(|status| status.to_uppercase()));
        undeclared.retain(|status| !status.is_empty() && !declared.contains(status));
        let count = rng.random_range(4..=8);
        let keys = (0..count).map(|_| random_key(rng)).collect();
        let mut payloads: Vec<String> = PAYLOADS.iter().map(|p| (*p).to_owned()).collect();
        payloads.push(format!(r#"{{"note":"{}"}}"#, "x".repeat(600)));
        Self {
            declared,
            undeclared,
            keys,
            payloads,
            corpus_keys: corpus.keys.iter().cloned().collect(),
            corpus_statuses: corpus.statuses.iter().cloned().collect(),
            corpus_numbers: corpus.numbers.iter().copied().collect(),
            corpus_payloads: corpus.payloads.iter().cloned().collect(),
        }
    }

    /// Events for one key (2 to `max_events`); about a quarter are duplicates of earlier ones.
    pub(super) fn history(&self, max_events: usize, rng: &mut StdRng) -> Vec<Event> {
        let key = self.key(rng);
        let mut statuses = self.status_palette(rng);
        let mut versions = self.number_palette(rng);
        let mut timestamps = self.number_palette(rng);
        let mut payloads = self.payload_palette(rng);
        // Many histories differ in one field only: every tie-break a rule makes on that field
        // (and only that one) decides them.
        if rng.random_bool(0.4) {
            // Numbers most often: that is where rules narrow, wrap and special-case.
            let varied = match rng.random_range(0..20) {
                0..=1 => Field::Status,
                2..=8 => Field::Version,
                9..=15 => Field::Timestamp,
                _ => Field::Payload,
            };
            if varied != Field::Status {
                statuses.truncate(1);
            }
            if varied != Field::Payload {
                payloads.truncate(1);
            }
            for (field, palette) in [
                (Field::Version, &mut versions),
                (Field::Timestamp, &mut timestamps),
            ] {
                if varied != field {
                    palette.truncate(1);
                } else if rng.random_bool(0.5) {
                    // A value and its twin: the pair a narrowing rule cannot tell apart.
                    palette.truncate(1);
                    palette.push(palette[0] ^ *pick(&TWIN_BITS, rng));
                }
            }
        }
        let len = rng.random_range(2..=max_events.max(2));
        let mut events: Vec<Event> = Vec::with_capacity(len);
        while events.len() < len {
            if !events.is_empty() && rng.random_bool(0.25) {
                let earlier = events[rng.random_range(0..events.len())].clone();
                events.push(earlier);
                continue;
            }
            events.push(Event {
                key: key.clone(),
                status: pick(&statuses, rng).clone(),
                version: *pick(&versions, rng),
                timestamp_ms: *pick(&timestamps, rng),
                payload: pick(&payloads, rng).clone(),
            });
        }
        events
    }

    fn key(&self, rng: &mut StdRng) -> String {
        if !self.corpus_keys.is_empty() && rng.random_bool(0.25) {
            return pick(&self.corpus_keys, rng).clone();
        }
        pick(&self.keys, rng).clone()
    }

    /// One to three declared statuses; sometimes one from the corpus, sometimes an undeclared
    /// one (which the rule must reject).
    fn status_palette(&self, rng: &mut StdRng) -> Vec<String> {
        let count = rng.random_range(1..=self.declared.len().clamp(1, 3));
        let mut palette: Vec<String> = self.declared.choose_multiple(rng, count).cloned().collect();
        if !self.corpus_statuses.is_empty() && rng.random_bool(0.2) {
            palette.push(pick(&self.corpus_statuses, rng).clone());
        }
        if palette.is_empty() || rng.random_bool(0.15) {
            palette.push(pick(&self.undeclared, rng).clone());
        }
        palette
    }

    /// One to three numbers: mostly small (ties), else a boundary, any number or one from the
    /// corpus; sometimes with its truncation twin or its predecessor.
    fn number_palette(&self, rng: &mut StdRng) -> Vec<u64> {
        let count = rng.random_range(1..=3);
        let mut palette = Vec::with_capacity(2 * count);
        for _ in 0..count {
            let value = match rng.random_range(0..20) {
                0..=7 => rng.random_range(0..=3),
                // The one value where `+ 1` overflows, so more often than the others.
                8..=10 => u64::MAX,
                11..=16 => *pick(&BOUNDARIES, rng),
                17 => rng.random(),
                _ if !self.corpus_numbers.is_empty() => *pick(&self.corpus_numbers, rng),
                _ => rng.random_range(0..=3),
            };
            palette.push(value);
            match rng.random_range(0..10) {
                0..=2 => palette.push(value ^ *pick(&TWIN_BITS, rng)),
                3 => palette.push(value.wrapping_sub(1)),
                _ => {}
            }
        }
        palette
    }

    fn payload_palette(&self, rng: &mut StdRng) -> Vec<String> {
        let count = rng.random_range(1..=3);
        (0..count)
            .map(|_| {
                if !self.corpus_payloads.is_empty() && rng.random_bool(0.25) {
                    pick(&self.corpus_payloads, rng).clone()
                } else {
                    pick(&self.payloads, rng).clone()
                }
            })
            .collect()
    }
}

/// A random element of a slice the generator made non-empty.
fn pick<'a, T>(items: &'a [T], rng: &mut StdRng) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A key of one of four kinds: plain ASCII, non-ASCII, long, or full of separators. Never empty
/// nor blank.
fn random_key(rng: &mut StdRng) -> String {
    let number: u32 = rng.random_range(0..100_000);
    let separator = pick(&SEPARATORS, rng);
    match rng.random_range(0..4) {
        0 => format!("{}{separator}{number}", pick(&ASCII_PREFIXES, rng)),
        1 => format!("{}{separator}{number}", pick(&UNICODE_PREFIXES, rng)),
        2 => {
            let length = rng.random_range(256..=600);
            let mut key = format!("{}-{number}-", pick(&ASCII_PREFIXES, rng));
            while key.len() < length {
                let (separator, prefix) = (pick(&SEPARATORS, rng), pick(&ASCII_PREFIXES, rng));
                key.push_str(separator);
                key.push_str(prefix);
            }
            key
        }
        _ => {
            let mut key = pick(&ASCII_PREFIXES, rng).to_string();
            for _ in 0..rng.random_range(2..=4) {
                let separator = pick(&SEPARATORS, rng);
                key.push_str(separator);
                key.push_str(&rng.random_range(0..1_000u32).to_string());
            }
            key
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn info() -> RuleInfo {
        RuleInfo {
            name: "t".to_owned(),
            version: "1".to_owned(),
            statuses: vec!["created".to_owned(), "paid".to_owned()],
        }
    }

    #[test]
    fn histories_cover_keys_boundaries_and_undeclared_statuses() {
        let mut rng = StdRng::seed_from_u64(1);
        let generator = Generator::new(&info(), &Corpus::new(), &mut rng);
        let mut keys = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        let mut undeclared = false;
        for _ in 0..200 {
            for event in generator.history(10, &mut rng) {
                assert!(!event.key.trim().is_empty());
                keys.insert(event.key.clone());
                numbers.insert(event.version);
                numbers.insert(event.timestamp_ms);
                undeclared |= !info().statuses.contains(&event.status);
            }
        }
        assert!(keys.len() >= 4, "{keys:?}");
        assert!(!keys.contains("order-1"));
        for boundary in [0, 1, 255, 256, 1 << 32, u64::MAX - 1, u64::MAX] {
            assert!(numbers.contains(&boundary), "{boundary} never drawn");
        }
        assert!(undeclared);
    }

    #[test]
    fn the_same_seed_draws_the_same_histories() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let generator = Generator::new(&info(), &Corpus::new(), &mut rng);
            (0..5)
                .map(|_| generator.history(6, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }
}
