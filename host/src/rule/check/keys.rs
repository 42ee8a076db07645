//! The keys histories are for: random ones of four kinds, and realistic shapes beside them — a
//! numbered family (`order-0000` … `order-0009`, every last digit), one key per trailing
//! character class (digit, lower, upper, punctuation, non-ASCII) and lengths around common
//! bounds (15/16/17 … 255/256/257 bytes). [`Siblings`] gives the check a key's siblings — the
//! key ending in every other character, at every bound length, in the other case — to ask the
//! same pair under.

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::generate::pick;

/// Key prefixes and separators of the kinds real identifiers have.
const ASCII_PREFIXES: [&str; 6] = ["order", "Order", "ORD", "cust", "o", "x"];
const UNICODE_PREFIXES: [&str; 6] = ["заказ", "注文", "🍣", "Ölçü", "ǅemal", "İstanbul"];
const SEPARATORS: [&str; 10] = ["-", "_", ":", "/", "|", ".", "#", " ", "{", "}"];
/// The separators of numbered identifiers (`order-0009`, `ORD_0009`, `cust:0009`).
const NUMBER_SEPARATORS: [&str; 6] = ["-", "_", ":", "/", "#", "."];

/// The characters a key may end in, by class: digits, lower case, upper case, ASCII
/// punctuation and space, and non-ASCII ones (accented, a dotted capital and a dotless small
/// letter, Greek, Cyrillic, CJK, an emoji, a combining mark, a zero-width and a no-break
/// space, a title-case digraph).
pub(super) const TAIL_CLASSES: [&str; 5] = [
    "0123456789",
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ ",
    "éßİıΩя注🍣\u{301}\u{200b}\u{a0}ǅ",
];

/// Byte lengths around common bounds (16, 32, 64, 128, 256) that keys are cut or padded to.
pub(super) const KEY_LENGTHS: [usize; 15] = [
    15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257,
];

/// A key of one of four kinds: plain ASCII, non-ASCII, long, or full of separators. Never empty
/// nor blank.
pub(super) fn random_key(rng: &mut StdRng) -> String {
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

/// Keys of the shapes real identifiers have: a numbered family of ten (`order-0000` …
/// `order-0009`, zero-padded, from a random base: every last digit), one key ending in each
/// character class, and a few at lengths around common bounds.
pub(super) fn shaped_keys(rng: &mut StdRng) -> Vec<String> {
    let prefix = if rng.random_bool(0.8) {
        pick(&ASCII_PREFIXES, rng)
    } else {
        pick(&UNICODE_PREFIXES, rng)
    };
    let separator = pick(&NUMBER_SEPARATORS, rng);
    let width = rng.random_range(4..=8);
    let base = rng.random_range(0..10_000u64) * 10;
    let mut keys: Vec<String> = (base..base + 10)
        .map(|number| format!("{prefix}{separator}{number:0width$}"))
        .collect();
    let stem = format!(
        "{}{}{}",
        pick(&ASCII_PREFIXES, rng),
        pick(&NUMBER_SEPARATORS, rng),
        rng.random_range(0..100_000u32)
    );
    for class in TAIL_CLASSES {
        let tails: Vec<char> = class.chars().collect();
        keys.push(format!("{stem}{}", pick(&tails, rng)));
    }
    for _ in 0..4 {
        let key = pick(&keys, rng).clone();
        keys.push(with_length(&key, *pick(&KEY_LENGTHS, rng)));
    }
    keys
}

/// `key` cut or padded to `length` bytes, keeping its first and last characters: padded with
/// `0` before the last character (`order-0009` -> `order-0000000009`), cut in the middle.
fn with_length(key: &str, length: usize) -> String {
    let Some(last) = key.chars().next_back() else {
        return "0".repeat(length);
    };
    let head = &key[..key.len() - last.len_utf8()];
    let room = length.saturating_sub(last.len_utf8());
    let mut cut = room.min(head.len());
    while !head.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut resized = head[..cut].to_owned();
    resized.push_str(&"0".repeat(room - cut));
    resized.push(last);
    resized
}

/// How a key's sibling differs from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sibling {
    /// It ends in this character instead.
    Tail(char),
    /// It is this many bytes long (see [`with_length`]).
    Length(usize),
    /// It is in upper case.
    Upper,
    /// It is in lower case.
    Lower,
}

/// The siblings of keys the check asks pairs under: the key ending in every character of every
/// class, cut or padded to every bound length, in either case; in an order drawn per run.
pub(super) struct Siblings {
    all: Vec<Sibling>,
}

impl Siblings {
    pub(super) fn new(rng: &mut StdRng) -> Self {
        let mut all: Vec<Sibling> = TAIL_CLASSES
            .iter()
            .flat_map(|class| class.chars())
            .map(Sibling::Tail)
            .chain(KEY_LENGTHS.iter().map(|&length| Sibling::Length(length)))
            .chain([Sibling::Upper, Sibling::Lower])
            .collect();
        all.shuffle(rng);
        Self { all }
    }

    /// Every sibling of `key` (none of them `key` itself, nor blank).
    pub(super) fn of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = String> + 'a {
        self.all.iter().filter_map(move |sibling| {
            let renamed = match *sibling {
                Sibling::Tail(tail) => {
                    let mut renamed = key.to_owned();
                    renamed.pop();
                    renamed.push(tail);
                    renamed
                }
                Sibling::Length(length) => with_length(key, length),
                Sibling::Upper => key.to_uppercase(),
                Sibling::Lower => key.to_lowercase(),
            };
            (renamed != key && !renamed.trim().is_empty()).then_some(renamed)
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn siblings_end_in_every_character_and_reach_every_bound_length() {
        let mut rng = StdRng::seed_from_u64(5);
        let siblings = Siblings::new(&mut rng);
        let key = "order-0042";
        let all: Vec<String> = siblings.of(key).collect();
        // All but the key itself (ending in '2', in lower case).
        assert_eq!(all.len(), siblings.all.len() - 2);
        for class in TAIL_CLASSES {
            for tail in class.chars() {
                let expected = format!("order-004{tail}");
                assert!(
                    expected == key || all.contains(&expected),
                    "{expected:?} missing"
                );
            }
        }
        for length in KEY_LENGTHS {
            assert!(all.iter().any(|sibling| sibling.len() == length
                && sibling.starts_with('o')
                && sibling.ends_with('2')));
        }
        assert!(all.contains(&"ORDER-0042".to_owned()));
        // Padded before the last character; cut at a character boundary, whatever the key.
        assert_eq!(with_length("order-0009", 16), "order-0000000009");
        assert_eq!(with_length("order-0009", 7), "order-9");
        assert_eq!(with_length("注文-1🍣", 9), "注00🍣");
    }
}
