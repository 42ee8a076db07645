//! The histories the check folds: one key per history, every field drawn from a small palette
//! chosen for that history, so that ties and duplicates stay common whatever the domain.
//!
//! Palettes mix the obvious (small numbers, the rule's declared statuses) with what rules get
//! wrong: boundary numbers and values that look alike when truncated, statuses the rule does not
//! declare, keys that are long, non-ASCII or full of separators, and values taken from the
//! rule's own vectors and from sample messages ([`Corpus`]). Keys are drawn afresh for every run,
//! so a rule cannot single out the keys it is checked with.
//!
//! Near-ties are weighted rather than left to chance: half the histories vary one field only
//! (every tie-break a rule makes on that field decides them), a quarter vary two (so that the
//! fields' priorities cross), and a varied field's values come in near pairs — a payload and
//! its same-length variants one byte apart, a number and its neighbours, truncation twins and
//! one-digit changes, a declared status and its one-byte misspelling. The keys
//! come from `keys`.

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::entity::{Event, RuleInfo, canonical_json};

use super::corpus::Corpus;
use super::keys::{random_key, shaped_keys};

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
/// with shared and distinct fields (for rules that merge), other JSON types, non-ASCII text,
/// and order-like objects whose digits and letters make same-length variants.
const PAYLOADS: [&str; 11] = [
    "null",
    r#"{"note":"a"}"#,
    r#"{"note":"b"}"#,
    r#"{"table":4}"#,
    r#"{"items":[1,2],"note":"a"}"#,
    r#"{"note":"ü 🍣","table":-1.5}"#,
    r#""text""#,
    "0",
    "[]",
    r#"{"amount":1250,"currency":"EUR"}"#,
    r#"{"items":[{"qty":2,"sku":"A-100"}],"total":39.9}"#,
];

/// Statuses no rule is likely to declare.
const UNDECLARED: [&str; 4] = ["unknown", "cancelled", "支払済み", "paid "];

/// One run's source of histories.
pub(super) struct Generator {
    declared: Vec<String>,
    undeclared: Vec<String>,
    /// Random keys of four kinds (see [`random_key`]).
    keys: Vec<String>,
    /// Keys of realistic shapes (see [`shaped_keys`]).
    shaped: Vec<String>,
    payloads: Vec<String>,
    corpus_keys: Vec<String>,
    corpus_statuses: Vec<String>,
    corpus_numbers: Vec<u64>,
    corpus_payloads: Vec<String>,
}

impl Generator {
    /// Draws this run's keys (4 to 8 random ones and a set of realistic shapes) and its long
    /// payload.
    pub(super) fn new(info: &RuleInfo, corpus: &Corpus, rng: &mut StdRng) -> Self {
        let declared = info.statuses.clone();
        let mut undeclared: Vec<String> = UNDECLARED.iter().map(|s| (*s).to_owned()).collect();
        // A declared status in another case, or one byte off: a rule must not take "PAID" or
        // "paie" for "paid".
        undeclared.extend(declared.iter().map(|status| status.to_uppercase()));
        undeclared.extend(
            declared
                .iter()
                .filter_map(|status| one_byte_off(status, rng)),
        );
        undeclared.retain(|status| !status.is_empty() && !declared.contains(status));
        let count = rng.random_range(4..=8);
        let keys = (0..count).map(|_| random_key(rng)).collect();
        let shaped = shaped_keys(rng);
        let mut payloads: Vec<String> = PAYLOADS.iter().map(|p| (*p).to_owned()).collect();
        payloads.push(format!(r#"{{"note":"{}"}}"#, "x".repeat(600)));
        Self {
            declared,
            undeclared,
            keys,
            shaped,
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
        // Most histories differ in one field only, so that every tie-break a rule makes on
        // that field (and only that one) decides them, or in two, so that the two fields'
        // priorities cross; each varied field has at least two values, near ones by choice.
        let varied: &[Field] = match rng.random_range(0..20) {
            0..=9 => std::slice::from_ref(pick(&ONE_FIELD, rng)),
            10..=14 => TWO_FIELDS[rng.random_range(0..TWO_FIELDS.len())],
            _ => &[],
        };
        if !varied.is_empty() {
            if varied.contains(&Field::Status) {
                self.widen_statuses(&mut statuses, rng);
            } else {
                statuses.truncate(1);
            }
            if varied.contains(&Field::Payload) {
                self.widen_payloads(&mut payloads, rng);
            } else {
                payloads.truncate(1);
            }
            for (field, palette) in [
                (Field::Version, &mut versions),
                (Field::Timestamp, &mut timestamps),
            ] {
                if !varied.contains(&field) {
                    palette.truncate(1);
                } else if rng.random_bool(0.5) {
                    // A value and a near one: the pair a narrowing or off-by-one rule cannot
                    // tell apart.
                    palette.truncate(1);
                    palette.push(near_number(palette[0], rng));
                } else if palette.len() < 2 {
                    palette.push(near_number(palette[0], rng));
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

    /// Every two statuses the rule declares, each with itself too, as two events of one key
    /// that differ in every other field. Checked with their crossings (exchanges of fields,
    /// see `check_pairs`), each status meets each other with a lower and a higher version,
    /// timestamp and payload: the comparisons a rule that special-cases one status (a terminal
    /// one reopened by a higher version, say) gets wrong, which random histories reach only
    /// when they happen to draw that status beside another. At most `max` pairs, drawn at
    /// random when the rule declares more.
    pub(super) fn status_pairs(&self, max: usize, rng: &mut StdRng) -> Vec<Vec<Event>> {
        let count = self.declared.len();
        let mut pairs: Vec<(usize, usize)> = (0..count)
            .flat_map(|first| (first..count).map(move |second| (first, second)))
            .collect();
        if pairs.len() > max {
            pairs.shuffle(rng);
            pairs.truncate(max);
        }
        pairs
            .into_iter()
            .map(|(first, second)| {
                let key = self.key(rng);
                let (first_version, second_version) = self.two_numbers(rng);
                let (first_timestamp, second_timestamp) = self.two_numbers(rng);
                let (first_payload, second_payload) = self.two_payloads(rng);
                vec![
                    Event {
                        key: key.clone(),
                        status: self.declared[first].clone(),
                        version: first_version,
                        timestamp_ms: first_timestamp,
                        payload: first_payload,
                    },
                    Event {
                        key,
                        status: self.declared[second].clone(),
                        version: second_version,
                        timestamp_ms: second_timestamp,
                        payload: second_payload,
                    },
                ]
            })
            .collect()
    }

    /// Two different numbers of a number palette, half the time near each other (truncation
    /// twins, neighbours, one digit apart).
    fn two_numbers(&self, rng: &mut StdRng) -> (u64, u64) {
        let palette = self.number_palette(rng);
        let first = *pick(&palette, rng);
        let second = *pick(&palette, rng);
        let second = if second == first || rng.random_bool(0.5) {
            near_number(first, rng)
        } else {
            second
        };
        // `near_number` may give the value back (a digit changed to itself cannot happen, a
        // twin bit of a number that has it set can).
        (first, if second == first { first ^ 1 } else { second })
    }

    /// Two different payloads, a third of the time one byte apart.
    fn two_payloads(&self, rng: &mut StdRng) -> (String, String) {
        let first = self.any_payload(rng);
        let variant = if rng.random_bool(0.33) {
            one_byte_variant(&first, rng)
        } else {
            None
        };
        let second = variant
            .or_else(|| {
                let others: Vec<&String> = self.payloads.iter().filter(|p| **p != first).collect();
                others.choose(rng).map(|payload| (*payload).clone())
            })
            .unwrap_or_else(|| format!(r#"{{"other":{first}}}"#));
        (first, second)
    }

    /// A key from the corpus (a quarter of the time, when it has any), else a shaped or a
    /// random one, evenly.
    fn key(&self, rng: &mut StdRng) -> String {
        if !self.corpus_keys.is_empty() && rng.random_bool(0.25) {
            return pick(&self.corpus_keys, rng).clone();
        }
        if rng.random_bool(0.5) {
            pick(&self.shaped, rng).clone()
        } else {
            pick(&self.keys, rng).clone()
        }
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

    /// A varied status palette: a second status when it has one only, a declared one or, a
    /// third of the time, the first one misspelt by one byte.
    fn widen_statuses(&self, palette: &mut Vec<String>, rng: &mut StdRng) {
        if palette.len() >= 2 && !rng.random_bool(0.3) {
            return;
        }
        palette.truncate(1);
        let near = if rng.random_bool(0.33) {
            one_byte_off(&palette[0], rng)
        } else {
            None
        };
        let other = near.or_else(|| {
            let others: Vec<&String> = self
                .declared
                .iter()
                .chain(&self.undeclared)
                .filter(|status| **status != palette[0])
                .collect();
            others.choose(rng).map(|status| (*status).clone())
        });
        palette.extend(other);
    }

    /// One to three numbers: mostly small (ties), else a boundary, any number or one from the
    /// corpus; sometimes with a near one (its truncation twin, a neighbour, one digit changed).
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
            if rng.random_bool(0.4) {
                palette.push(near_number(value, rng));
            }
        }
        palette
    }

    fn payload_palette(&self, rng: &mut StdRng) -> Vec<String> {
        let count = rng.random_range(1..=3);
        let mut palette: Vec<String> = (0..count).map(|_| self.any_payload(rng)).collect();
        if rng.random_bool(0.3) {
            palette.extend(one_byte_variant(&palette[0], rng));
        }
        palette
    }

    fn any_payload(&self, rng: &mut StdRng) -> String {
        if !self.corpus_payloads.is_empty() && rng.random_bool(0.25) {
            pick(&self.corpus_payloads, rng).clone()
        } else {
            pick(&self.payloads, rng).clone()
        }
    }

    /// A varied payload palette: most often one payload and one or two variants of the same
    /// length one byte apart (a rule that compares lengths, prefixes or hashes ties them),
    /// else at least two payloads of any kind.
    fn widen_payloads(&self, palette: &mut Vec<String>, rng: &mut StdRng) {
        if rng.random_bool(0.7) {
            // A payload that has variants: tried a few times, as "[]" or "null" have none.
            for _ in 0..4 {
                let base = self.any_payload(rng);
                if let Some(variant) = one_byte_variant(&base, rng) {
                    let second = one_byte_variant(&base, rng).filter(|_| rng.random_bool(0.5));
                    *palette = vec![base, variant];
                    palette.extend(second);
                    return;
                }
            }
        }
        while palette.len() < 2 {
            palette.push(self.any_payload(rng));
        }
    }
}

/// The fields a one-field history varies, numbers and payloads most often: that is where rules
/// narrow, wrap, special-case and break ties.
const ONE_FIELD: [Field; 7] = [
    Field::Status,
    Field::Version,
    Field::Version,
    Field::Timestamp,
    Field::Timestamp,
    Field::Payload,
    Field::Payload,
];

/// The pairs of fields a two-field history varies: every pair, so that each field's priority
/// over each other is decided by some history.
const TWO_FIELDS: [&[Field]; 6] = [
    &[Field::Status, Field::Version],
    &[Field::Status, Field::Timestamp],
    &[Field::Status, Field::Payload],
    &[Field::Version, Field::Timestamp],
    &[Field::Version, Field::Payload],
    &[Field::Timestamp, Field::Payload],
];

/// A random element of a slice the generator made non-empty.
pub(super) fn pick<'a, T>(items: &'a [T], rng: &mut StdRng) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A number near `value`: its truncation twin, its predecessor or successor (wrapping), or
/// `value` with one decimal digit changed (a one-byte change of its text).
fn near_number(value: u64, rng: &mut StdRng) -> u64 {
    match rng.random_range(0..10) {
        0..=3 => value ^ *pick(&TWIN_BITS, rng),
        4..=5 => value.wrapping_sub(1),
        6..=7 => value.wrapping_add(1),
        _ => {
            let text = value.to_string();
            one_byte_off(&text, rng)
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(|| value.wrapping_add(1))
        }
    }
}

/// `text` with one ASCII digit or letter replaced by another of its kind (digit, lower or
/// upper case): the same length, one byte apart. A number's text keeps no leading zero.
/// `None` when it has no such character.
fn one_byte_off(text: &str, rng: &mut StdRng) -> Option<String> {
    let at: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|(_, byte)| byte.is_ascii_alphanumeric())
        .map(|(at, _)| at)
        .collect();
    let &at = at.choose(rng)?;
    let mut bytes = text.as_bytes().to_vec();
    let old = bytes[at];
    let kind: &[u8] = if old.is_ascii_digit() {
        // A leading digit of a number of several digits is never made zero.
        if at == 0 && bytes.len() > 1 && bytes.iter().all(u8::is_ascii_digit) {
            b"123456789"
        } else {
            b"0123456789"
        }
    } else if old.is_ascii_lowercase() {
        b"abcdefghijklmnopqrstuvwxyz"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    };
    let others: Vec<u8> = kind.iter().copied().filter(|&b| b != old).collect();
    bytes[at] = *others.choose(rng)?;
    // ASCII replaced by ASCII: still UTF-8.
    String::from_utf8(bytes).ok()
}

/// A payload of the same length as `payload`, one byte apart, still canonical JSON (as the host
/// hands payloads to rules); `None` when none is found in a few tries (`[]`, `null`).
fn one_byte_variant(payload: &str, rng: &mut StdRng) -> Option<String> {
    (0..8).find_map(|_| {
        let variant = one_byte_off(payload, rng)?;
        let value: serde_json::Value = serde_json::from_str(&variant).ok()?;
        (canonical_json(&value) == variant).then_some(variant)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::SeedableRng;

    use super::*;
    use crate::rule::check::keys::{KEY_LENGTHS, TAIL_CLASSES};

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

    /// The fields two events differ in.
    fn differing(a: &Event, b: &Event) -> Vec<Field> {
        let mut fields = Vec::new();
        if a.status != b.status {
            fields.push(Field::Status);
        }
        if a.version != b.version {
            fields.push(Field::Version);
        }
        if a.timestamp_ms != b.timestamp_ms {
            fields.push(Field::Timestamp);
        }
        if a.payload != b.payload {
            fields.push(Field::Payload);
        }
        fields
    }

    #[test]
    fn near_ties_are_weighted_not_left_to_chance() {
        let mut rng = StdRng::seed_from_u64(7);
        let generator = Generator::new(&info(), &Corpus::new(), &mut rng);
        let histories = 100;
        let (mut same_length_payloads, mut one_field, mut near_numbers, mut near_statuses) =
            (0, 0, 0, 0);
        for _ in 0..histories {
            let events = generator.history(6, &mut rng);
            let pairs: Vec<(&Event, &Event)> = events
                .iter()
                .enumerate()
                .flat_map(|(i, a)| events[i + 1..].iter().map(move |b| (a, b)))
                .collect();
            let fields: Vec<Vec<Field>> = pairs.iter().map(|(a, b)| differing(a, b)).collect();
            let only = |field: Field| {
                pairs
                    .iter()
                    .zip(&fields)
                    .filter(move |(_, fields)| fields.as_slice() == [field])
                    .map(|(pair, _)| *pair)
            };
            if fields.iter().all(|fields| fields.len() <= 1) && fields.iter().any(|f| f.len() == 1)
            {
                one_field += 1;
            }
            same_length_payloads +=
                usize::from(only(Field::Payload).any(|(a, b)| a.payload.len() == b.payload.len()));
            near_numbers += usize::from(only(Field::Version).chain(only(Field::Timestamp)).any(
                |(a, b)| {
                    let (x, y) = if a.version != b.version {
                        (a.version, b.version)
                    } else {
                        (a.timestamp_ms, b.timestamp_ms)
                    };
                    x.abs_diff(y) == 1 || (x ^ y).count_ones() == 1
                },
            ));
            near_statuses += usize::from(only(Field::Status).any(|(a, b)| {
                a.status.len() == b.status.len()
                    && a.status
                        .bytes()
                        .zip(b.status.bytes())
                        .filter(|(x, y)| x != y)
                        .count()
                        == 1
            }));
        }
        // Each measured over 100 histories, the gates' default; expected about 45, 12, 12, 1.
        assert!(
            one_field >= 30,
            "{one_field} of {histories} differ in one field"
        );
        assert!(
            same_length_payloads >= 6,
            "{same_length_payloads} of {histories} hold same-length payloads in a near-tie"
        );
        assert!(
            near_numbers >= 6,
            "{near_numbers} of {histories}: near numbers"
        );
        assert!(
            near_statuses >= 1,
            "{near_statuses} of {histories}: near statuses"
        );
    }

    #[test]
    fn keys_come_in_realistic_shapes() {
        let mut rng = StdRng::seed_from_u64(3);
        let generator = Generator::new(&info(), &Corpus::new(), &mut rng);
        let shaped = &generator.shaped;
        // A numbered family of ten: every last digit, zero-padded.
        for digit in '0'..='9' {
            assert!(
                shaped
                    .iter()
                    .any(|key| key.ends_with(digit) && key.contains("000")),
                "no numbered key ending in {digit}: {shaped:?}"
            );
        }
        // One key per trailing class.
        for class in TAIL_CLASSES {
            assert!(
                shaped
                    .iter()
                    .any(|key| key.chars().next_back().is_some_and(|c| class.contains(c))),
                "no key ending in one of {class:?}: {shaped:?}"
            );
        }
        // Some at lengths around the bounds.
        assert!(
            shaped
                .iter()
                .any(|key| KEY_LENGTHS.contains(&key.len()) && key.len() > 14),
            "{shaped:?}"
        );
        // Histories draw them beside the random ones.
        let mut used = BTreeSet::new();
        for _ in 0..200 {
            used.insert(generator.history(2, &mut rng)[0].key.clone());
        }
        assert!(used.iter().any(|key| shaped.contains(key)));
        assert!(used.iter().any(|key| generator.keys.contains(key)));
    }

    #[test]
    fn one_byte_variants_are_canonical_json_of_the_same_length() {
        let mut rng = StdRng::seed_from_u64(11);
        for payload in PAYLOADS {
            for _ in 0..20 {
                if let Some(variant) = one_byte_variant(payload, &mut rng) {
                    assert_eq!(variant.len(), payload.len());
                    assert_ne!(variant, payload);
                    let value: serde_json::Value =
                        serde_json::from_str(&variant).expect("still JSON");
                    assert_eq!(canonical_json(&value), variant);
                }
            }
        }
        assert_eq!(one_byte_variant("[]", &mut rng), None);
        for _ in 0..100 {
            let near: u64 = one_byte_off("1000", &mut rng)
                .expect("digits")
                .parse()
                .expect("a number");
            assert!((1000..10_000).contains(&near) && near != 1000, "{near}");
        }
    }

    #[test]
    fn status_pairs_meet_every_two_statuses_differing_in_every_other_field() {
        let statuses = ["created", "paid", "completed", "refunded"];
        let info = RuleInfo {
            statuses: statuses.map(str::to_owned).to_vec(),
            ..info()
        };
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let generator = Generator::new(&info, &Corpus::new(), &mut rng);
            let pairs = generator.status_pairs(100, &mut rng);
            let met: BTreeSet<(&str, &str)> = pairs
                .iter()
                .map(|pair| (pair[0].status.as_str(), pair[1].status.as_str()))
                .collect();
            assert_eq!(
                met.len(),
                10,
                "each unordered pair once, with itself: {met:?}"
            );
            for pair in &pairs {
                let [first, second] = &pair[..] else {
                    panic!("two events: {pair:?}");
                };
                assert_eq!(first.key, second.key);
                assert_ne!(first.version, second.version, "{pair:?}");
                assert_ne!(first.timestamp_ms, second.timestamp_ms, "{pair:?}");
                assert_ne!(first.payload, second.payload, "{pair:?}");
            }
            assert_eq!(generator.status_pairs(3, &mut rng).len(), 3);
        }
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
