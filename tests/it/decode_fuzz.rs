//! Fuzzing the decode path with property tests: arbitrary bytes, JSON objects whose fields have
//! random types, numbers no integer holds, invalid UTF-8, NUL bytes, deep nesting and random
//! field mappings. Decoding never panics; every refusal is a [`DecodeError`] that says what is
//! wrong in a short line; every event it accepts is what the message says; valid events
//! round-trip. Then the whole pipeline, on the memory store with the compiled order-status
//! rule, over random mixes of good events and garbage: every message is decided or
//! dead-lettered (the counts add up), and every good key converges.
//!
//! Inputs are random on every run (proptest shrinks and prints a failing one), so each run
//! explores new cases; the case counts keep a run to seconds.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use converge::dead_letter::{DeadLetterKind, MemoryDeadLetters};
use converge::entity::{DecisionKind, Event, canonical_json};
use converge::pipeline::{
    DecodeError, Decoded, FieldMapping, Pipeline, PipelineConfig, decode, decode_bytes,
};
use converge::rule::{CompiledRule, EngineLimits, RuleEngine};
use converge::source::{Message, Position};
use converge::store::MemoryStore;
use converge_tests::{build, orders};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// Numbers JSON allows and no u64 or i64 holds, or that only look like integers.
const AWKWARD_NUMBERS: &[&str] = &[
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890123456789",
    "1e400",
    "-1e400",
    "1e-400",
    "1e19",
    "1E+2",
    "-0",
    "0.0",
    "4.5",
    "-1",
];

/// A field name: one of the default mapping's, or anything (NUL and other controls included).
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&["key", "status", "version", "timestamp_ms", "payload"][..])
            .prop_map(str::to_owned),
        1 => "(?s).{0,6}",
    ]
}

/// A random mapping: names may coincide with each other, the size limit may be tiny.
fn any_mapping() -> impl Strategy<Value = FieldMapping> {
    (
        [
            field_name(),
            field_name(),
            field_name(),
            field_name(),
            field_name(),
        ],
        prop_oneof![Just(1usize << 20), 0usize..600],
    )
        .prop_map(
            |([key, status, version, timestamp, payload], max)| FieldMapping {
                key,
                status,
                version,
                timestamp,
                payload,
                max_message_bytes: max,
            },
        )
}

/// A random mapping whose five names are distinct (each ends with its own index), so an event
/// written with it reads back field by field.
fn distinct_mapping() -> impl Strategy<Value = FieldMapping> {
    prop::array::uniform5("(?s).{0,6}").prop_map(|names| {
        let [key, status, version, timestamp, payload] = names;
        FieldMapping {
            key: format!("{key}0"),
            status: format!("{status}1"),
            version: format!("{version}2"),
            timestamp: format!("{timestamp}3"),
            payload: format!("{payload}4"),
            max_message_bytes: 1 << 20,
        }
    })
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// JSON text of any shape, nested a few levels: awkward numbers, strings with NULs and escapes.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        prop::sample::select(AWKWARD_NUMBERS).prop_map(str::to_owned),
        any::<String>().prop_map(|s| quoted(&s)),
        "[a-z ]{0,3}".prop_map(|s| quoted(&s)),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((field_name(), inner), 0..5).prop_map(|fields| object(&fields)),
        ]
    })
}

fn object(fields: &[(String, String)]) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}:{value}", quoted(name)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// A message body that is often nearly an event: an object of mapping-like fields with values
/// of random types, then sometimes damaged (cut short, a random byte put in, blanked).
fn message_body() -> impl Strategy<Value = Vec<u8>> {
    let fields = prop::collection::vec((field_name(), json_text()), 0..7);
    (fields, 0u8..6, any::<Index>(), any::<u8>()).prop_map(|(fields, damage, at, byte)| {
        let mut body = object(&fields).into_bytes();
        match damage {
            0 => body.truncate(at.index(body.len() + 1)),
            1 => body.insert(at.index(body.len() + 1), byte),
            2 => body.insert(at.index(body.len() + 1), 0xff),
            3 => body = vec![b' '; at.index(4)],
            _ => {}
        }
        body
    })
}

/// What a decode answered must be what the message says, or a short, non-empty refusal.
fn check_decoded(
    mapping: &FieldMapping,
    body: Option<&[u8]>,
    transport_key: Option<&[u8]>,
    decoded: &Result<Decoded, DecodeError>,
) -> Result<(), TestCaseError> {
    let decoded = match decoded {
        Err(error) => {
            let said = error.to_string();
            prop_assert!(!said.trim().is_empty(), "{error:?} says nothing");
            // A refusal names the problem; it must not echo the message (a 10 MB body would
            // make a 10 MB reason).
            prop_assert!(
                said.len() < 512,
                "a {}-byte refusal: {said:.200}",
                said.len()
            );
            if let DecodeError::TooLarge { size, limit } = error {
                prop_assert_eq!(*limit, mapping.max_message_bytes);
                prop_assert!(*size > *limit);
            }
            return Ok(());
        }
        Ok(decoded) => decoded,
    };
    let body = body.expect("a tombstone never decodes");
    prop_assert!(body.len() <= mapping.max_message_bytes);
    let value: Value = serde_json::from_slice(body).expect("an accepted body is JSON");
    let object = value.as_object().expect("an accepted body is an object");
    let key = match decoded {
        Decoded::Event(event) => &event.key,
        Decoded::IdOnly { key } => key,
    };
    prop_assert!(!key.trim().is_empty(), "blank key {key:?}");
    let expected_key = match object.get(&mapping.key) {
        Some(Value::String(key)) => key.clone(),
        Some(Value::Number(number)) => number.to_string(),
        Some(other) => return Err(TestCaseError::fail(format!("key field {other} accepted"))),
        None => String::from_utf8(
            transport_key
                .expect("no key field, a transport key")
                .to_vec(),
        )
        .expect("an accepted transport key is UTF-8"),
    };
    prop_assert_eq!(key, &expected_key);
    match decoded {
        Decoded::IdOnly { .. } => prop_assert!(!object.contains_key(&mapping.status)),
        Decoded::Event(event) => {
            prop_assert_eq!(
                Some(event.status.as_str()),
                object.get(&mapping.status).and_then(Value::as_str)
            );
            prop_assert!(!event.status.is_empty());
            let counter = |field: &str| object.get(field).and_then(Value::as_u64).unwrap_or(0);
            prop_assert_eq!(event.version, counter(&mapping.version));
            prop_assert_eq!(event.timestamp_ms, counter(&mapping.timestamp));
            let payload = object
                .get(&mapping.payload)
                .map_or_else(|| "null".to_owned(), canonical_json);
            prop_assert_eq!(&event.payload, &payload);
            // The payload a rule gets is canonical: it reads back as itself.
            let reread: Value = serde_json::from_str(&event.payload).expect("payload is JSON");
            prop_assert_eq!(canonical_json(&reread), event.payload.clone());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_decode_arbitrary_bytes_never_panics(
        mapping in any_mapping(),
        body in prop::option::weighted(0.95, prop::collection::vec(any::<u8>(), 0..256)),
        transport_key in prop::option::of(prop::collection::vec(any::<u8>(), 0..12)),
    ) {
        let decoded = decode_bytes(&mapping, body.as_deref(), transport_key.as_deref());
        check_decoded(&mapping, body.as_deref(), transport_key.as_deref(), &decoded)?;
    }

    #[test]
    fn fuzz_decode_json_objects_with_random_field_types(
        mapping in any_mapping(),
        body in message_body(),
        transport_key in prop::option::of(prop_oneof![
            "(?s).{0,8}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..8),
        ]),
    ) {
        let decoded = decode_bytes(&mapping, Some(&body), transport_key.as_deref());
        check_decoded(&mapping, Some(&body), transport_key.as_deref(), &decoded)?;
        // The message form agrees with the bytes form.
        let message = Message {
            position: Position::Line { line: 1 },
            key: transport_key,
            payload: Some(body),
            produced_at_ms: None,
            lost: None,
        };
        prop_assert_eq!(decode(&mapping, &message), decoded);
    }

    #[test]
    fn fuzz_valid_events_round_trip(
        mapping in distinct_mapping(),
        key in "(?s).{0,12}".prop_filter("a key is not blank", |k| !k.trim().is_empty()),
        integer_key in prop::option::weighted(0.1, any::<i64>()),
        status in "(?s).{1,12}",
        version in prop::option::of(any::<u64>()),
        timestamp in prop::option::of(any::<u64>()),
        payload in prop::option::of(json_text()),
        id_only in prop::bool::weighted(0.1),
        spaces in "[ \t\r\n]{0,3}",
    ) {
        // Only payloads serde_json reads back (no out-of-range numbers) make a valid event.
        let payload = payload.filter(|text| serde_json::from_str::<Value>(text).is_ok());
        let mut fields = vec![(
            mapping.key.clone(),
            integer_key.map_or_else(|| quoted(&key), |n| n.to_string()),
        )];
        if !id_only {
            fields.push((mapping.status.clone(), quoted(&status)));
        }
        if let Some(version) = version {
            fields.push((mapping.version.clone(), version.to_string()));
        }
        if let Some(timestamp) = timestamp {
            fields.push((mapping.timestamp.clone(), timestamp.to_string()));
        }
        if let Some(payload) = &payload {
            fields.push((mapping.payload.clone(), payload.clone()));
        }
        let body = format!("{spaces}{}{spaces}", object(&fields)).into_bytes();
        let key = integer_key.map_or(key, |n| n.to_string());
        let expected = if id_only {
            Decoded::IdOnly { key }
        } else {
            Decoded::Event(Event {
                key,
                status,
                version: version.unwrap_or(0),
                timestamp_ms: timestamp.unwrap_or(0),
                payload: payload.map_or_else(
                    || "null".to_owned(),
                    |text| canonical_json(&serde_json::from_str(&text).expect("JSON")),
                ),
            })
        };
        prop_assert_eq!(decode_bytes(&mapping, Some(&body), None), Ok(expected.clone()));
        // An event the host serialises (the order API's answer, say) reads back as itself:
        // its canonical payload is a fixed point (serde_json's `float_roundtrip`; without it,
        // 123456789012345678901234567890123456789 read again came back one step off).
        if let Decoded::Event(event) = &expected {
            let reread: Value = serde_json::from_str(&event.payload).expect("canonical JSON");
            prop_assert_eq!(canonical_json(&reread), event.payload.clone());
            let default = FieldMapping::default();
            let text = serde_json::to_vec(event).expect("serialises");
            prop_assert_eq!(decode_bytes(&default, Some(&text), None), Ok(expected.clone()));
        }
    }

    #[test]
    fn fuzz_deep_nesting_is_refused_or_read_never_overflows(
        depth in 0usize..4000,
        objects in any::<bool>(),
    ) {
        let (open, close) = if objects { (r#"{"a":"#, "}") } else { ("[", "]") };
        let nested = format!("{}0{}", open.repeat(depth), close.repeat(depth));
        let body = format!(r#"{{"key":"deep","status":"paid","payload":{nested}}}"#);
        match decode_bytes(&FieldMapping::default(), Some(body.as_bytes()), None) {
            Ok(Decoded::Event(event)) => prop_assert_eq!(event.payload, nested),
            Ok(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
            Err(DecodeError::MalformedJson(error)) => {
                prop_assert!(depth > 100, "depth {depth} refused: {error}");
            }
            Err(DecodeError::TooLarge { .. }) => prop_assert!(body.len() > 1 << 20),
            Err(other) => return Err(TestCaseError::fail(format!("{other}"))),
        }
    }
}

/// The order-status component, compiled once for every case.
fn order_status() -> &'static CompiledRule {
    static RULE: OnceLock<CompiledRule> = OnceLock::new();
    RULE.get_or_init(|| {
        RuleEngine::new(EngineLimits::default())
            .expect("engine starts")
            .compile_file(&build::rule("order-status"))
            .expect("rule loads")
    })
}

/// One message of a mix: a good event, or garbage (refused by decode, an unknown status the
/// rule rejects, an id-only message nothing can enrich, or a tombstone).
#[derive(Debug, Clone)]
enum Mixed {
    Good(usize),
    Garbage(Option<Vec<u8>>, Option<Vec<u8>>),
}

fn garbage() -> impl Strategy<Value = Mixed> {
    let transport_key = prop::option::of(prop::collection::vec(any::<u8>(), 0..6));
    prop_oneof![
        4 => (message_body(), transport_key.clone())
            .prop_map(|(body, key)| Mixed::Garbage(Some(body), key)),
        1 => (prop::collection::vec(any::<u8>(), 0..64), transport_key.clone())
            .prop_map(|(body, key)| Mixed::Garbage(Some(body), key)),
        1 => ("(?s).{1,8}", any::<u64>()).prop_map(|(status, version)| {
            let body = object(&[
                ("key".to_owned(), quoted("fuzz-rejected")),
                ("status".to_owned(), quoted(&format!("not-{status}"))),
                ("version".to_owned(), version.to_string()),
            ]);
            Mixed::Garbage(Some(body.into_bytes()), None)
        }),
        1 => transport_key.prop_map(|key| Mixed::Garbage(None, key)),
    ]
}

/// Good events (by index into the stream) with garbage put in at random places.
fn mix() -> impl Strategy<Value = (u64, usize, Vec<Mixed>, usize)> {
    (any::<u64>(), 1usize..40, 1usize..64).prop_flat_map(|(seed, orders, batch_size)| {
        let events = orders::generate("fuzz-order-", orders, 30, seed)
            .events
            .len();
        let good: Vec<Mixed> = (0..events).map(Mixed::Good).collect();
        (
            Just(seed),
            Just(orders),
            prop::collection::vec((garbage(), any::<Index>()), 0..48).prop_map(move |bad| {
                let mut mixed = good.clone();
                for (garbage, at) in bad {
                    mixed.insert(at.index(mixed.len() + 1), garbage);
                }
                mixed
            }),
            Just(batch_size),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_pipeline_over_good_and_garbage_loses_nothing_and_good_keys_converge(
        (seed, orders, mixed, batch_size) in mix(),
    ) {
        let stream = orders::generate("fuzz-order-", orders, 30, seed);
        let messages: Vec<Message> = mixed
            .iter()
            .enumerate()
            .map(|(index, mixed)| {
                let (payload, key) = match mixed {
                    Mixed::Good(n) => {
                        let event = &stream.events[*n];
                        (
                            Some(serde_json::to_vec(event).expect("serialises")),
                            Some(event.key.clone().into_bytes()),
                        )
                    }
                    Mixed::Garbage(payload, key) => (payload.clone(), key.clone()),
                };
                Message {
                    position: Position::Line { line: index as u64 + 1 },
                    key,
                    payload,
                    produced_at_ms: None,
                    lost: None,
                }
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut pipeline = Pipeline::new(
            order_status().instance(),
            MemoryStore::new(),
            MemoryDeadLetters::new(),
            PipelineConfig {
                batch_size,
                ..PipelineConfig::default()
            },
        );
        runtime.block_on(async {
            for batch in messages.chunks(batch_size) {
                pipeline.process(batch).await.expect("a batch is processed");
            }
        });

        let stats = pipeline.stats().clone();
        let letters = pipeline.dead_letters().letters();
        let decided = |kind| stats.decisions.get(&kind).copied().unwrap_or(0);
        prop_assert_eq!(stats.messages, messages.len() as u64);
        // Each message ends one way: applied or ignored by the rule, or dead-lettered (a
        // rejection is both a decision and a dead letter).
        prop_assert_eq!(
            decided(DecisionKind::Insert)
                + decided(DecisionKind::Update)
                + decided(DecisionKind::Ignore)
                + letters.len() as u64,
            messages.len() as u64,
            "decisions {:?}, dead letters {:?}", stats.decisions, stats.dead_letters
        );
        prop_assert_eq!(
            decided(DecisionKind::Reject),
            stats.dead_letters.get(&DeadLetterKind::Rejected).copied().unwrap_or(0)
        );
        // No message is dead-lettered twice, and every refusal of decode is one of them.
        let mut lettered: BTreeMap<u64, DeadLetterKind> = BTreeMap::new();
        for letter in &letters {
            let Position::Line { line } = letter.position else {
                return Err(TestCaseError::fail(format!("{:?}", letter.position)));
            };
            prop_assert!(lettered.insert(line, letter.kind).is_none(), "line {line} twice");
            prop_assert!(!letter.reason.trim().is_empty());
        }
        let mapping = FieldMapping::default();
        for message in &messages {
            let Position::Line { line } = message.position else { unreachable!() };
            match decode(&mapping, message) {
                Err(_) => prop_assert_eq!(lettered.get(&line), Some(&DeadLetterKind::Undecodable)),
                Ok(Decoded::IdOnly { .. }) => {
                    prop_assert_eq!(lettered.get(&line), Some(&DeadLetterKind::NotEnriched));
                }
                Ok(Decoded::Event(_)) => prop_assert!(
                    !matches!(
                        lettered.get(&line),
                        Some(DeadLetterKind::Undecodable | DeadLetterKind::NotEnriched)
                    ),
                    "a decodable event dead-lettered as {:?}", lettered.get(&line)
                ),
            }
        }
        for (n, mixed) in mixed.iter().enumerate() {
            if let Mixed::Good(_) = mixed {
                prop_assert!(!lettered.contains_key(&(n as u64 + 1)), "good line {} dead-lettered", n + 1);
            }
        }
        let stored: BTreeMap<String, Event> = pipeline
            .store()
            .snapshot()
            .into_iter()
            .filter(|stored| stored.state.key.starts_with("fuzz-order-"))
            .map(|stored| (stored.state.key.clone(), stored.state))
            .collect();
        prop_assert_eq!(stored, stream.expected);
    }
}
