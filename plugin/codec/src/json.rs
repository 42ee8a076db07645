//! A payload's text as a rule sees it.

/// The payload of an entity that came with none.
pub const NULL_PAYLOAD: &str = "null";

/// The canonical text of a JSON value: compact, object keys sorted. Two payloads that differ
/// only in whitespace or key order are the same payload to a rule.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // serde_json's default map is a BTreeMap, so serialising sorts keys. The unit test
    // `canonical_text_is_compact_and_sorted` fails if a dependency turns on `preserve_order`.
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_is_compact_and_sorted() {
        let value: serde_json::Value =
            serde_json::from_str(r#"{ "b": 1, "a": [true, null, {"d": 2, "c": 3}] }"#)
                .expect("valid JSON");
        assert_eq!(
            canonical_json(&value),
            r#"{"a":[true,null,{"c":3,"d":2}],"b":1}"#
        );
        assert_eq!(canonical_json(&serde_json::Value::Null), NULL_PAYLOAD);
    }

    /// An event re-serialised (an order-API answer, `decide --current`) must carry the same
    /// payload as the message it came from: canonical text read again is the same text.
    /// Without serde_json's `float_roundtrip` this number came back one step off.
    #[test]
    fn canonical_text_reads_back_as_itself() {
        for text in [
            "123456789012345678901234567890123456789",
            "0.1",
            "1e308",
            "-2.2250738585072014e-308",
            "{\"total\":9007199254740993.5}",
        ] {
            let value: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
            let canonical = canonical_json(&value);
            let again: serde_json::Value = serde_json::from_str(&canonical).expect("valid JSON");
            assert_eq!(canonical_json(&again), canonical, "{text}");
        }
    }
}
