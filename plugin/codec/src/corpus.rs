//! Keys every reader of messages must refuse.

/// One message whose key must be refused, and the refusal under the default [`FieldMapping`].
///
/// [`FieldMapping`]: crate::FieldMapping
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadKey {
    /// What is wrong, for test failures.
    pub case: &'static str,
    /// The message body: a JSON object that would otherwise decode (it has a status).
    pub record: &'static str,
    /// The transport key sent with the message.
    pub transport_key: Option<&'static [u8]>,
    /// The [`DecodeError`](crate::DecodeError) text the default field mapping refuses it with.
    pub refusal: &'static str,
}

const EMPTY: &str = r#"empty key in field "key""#;
const WRONG_TYPE: &str = r#"field "key" must be a string or an integer"#;

const fn bad(
    case: &'static str,
    record: &'static str,
    transport_key: Option<&'static [u8]>,
    refusal: &'static str,
) -> BadKey {
    BadKey {
        case,
        record,
        transport_key,
        refusal,
    }
}

/// Messages whose key must be refused — by the host and by the SmartModule alike, with the
/// same reason: empty and whitespace-only keys (ASCII and Unicode whitespace, escaped and raw,
/// from the key field or the transport key), keys of the wrong JSON type, a missing key, and a
/// transport key that is not UTF-8. A key field, when present, wins over the transport key, so
/// a blank key field is refused even when a good transport key comes with it.
pub const BAD_KEY_CORPUS: &[BadKey] = &[
    bad("empty string", r#"{"key":"","status":"paid"}"#, None, EMPTY),
    bad("spaces", r#"{"key":"   ","status":"paid"}"#, None, EMPTY),
    bad("tab", r#"{"key":"\t","status":"paid"}"#, None, EMPTY),
    bad("newline", r#"{"key":"\n","status":"paid"}"#, None, EMPTY),
    bad(
        "ASCII whitespace mix",
        r#"{"key":" \t\r\n ","status":"paid"}"#,
        None,
        EMPTY,
    ),
    bad(
        "vertical tab and form feed",
        r#"{"key":"\u000b\f","status":"paid"}"#,
        None,
        EMPTY,
    ),
    bad(
        "no-break space",
        r#"{"key":"\u00a0","status":"paid"}"#,
        None,
        EMPTY,
    ),
    bad(
        "ideographic space",
        r#"{"key":"\u3000","status":"paid"}"#,
        None,
        EMPTY,
    ),
    bad(
        "em space",
        r#"{"key":"\u2003","status":"paid"}"#,
        None,
        EMPTY,
    ),
    bad(
        "line separator",
        r#"{"key":"\u2028","status":"paid"}"#,
        None,
        EMPTY,
    ),
    bad(
        "next line (NEL)",
        r#"{"key":"\u0085","status":"paid"}"#,
        None,
        EMPTY,
    ),
    bad(
        "raw Unicode spaces",
        "{\"key\":\" \u{3000}\u{a0}\u{2009} \",\"status\":\"paid\"}",
        None,
        EMPTY,
    ),
    bad(
        "blank key field beside a good transport key",
        r#"{"key":" ","status":"paid"}"#,
        Some(b"o-1"),
        EMPTY,
    ),
    bad(
        "blank key on an id-only message",
        r#"{"key":"  "}"#,
        None,
        EMPTY,
    ),
    bad(
        "boolean",
        r#"{"key":true,"status":"paid"}"#,
        None,
        WRONG_TYPE,
    ),
    bad("float", r#"{"key":1.5,"status":"paid"}"#, None, WRONG_TYPE),
    bad(
        "integral float",
        r#"{"key":1.0,"status":"paid"}"#,
        None,
        WRONG_TYPE,
    ),
    bad(
        "object",
        r#"{"key":{"id":"o-1"},"status":"paid"}"#,
        None,
        WRONG_TYPE,
    ),
    bad(
        "array",
        r#"{"key":["o-1"],"status":"paid"}"#,
        None,
        WRONG_TYPE,
    ),
    bad("null", r#"{"key":null,"status":"paid"}"#, None, WRONG_TYPE),
    bad(
        "null beside a good transport key",
        r#"{"key":null,"status":"paid"}"#,
        Some(b"o-1"),
        WRONG_TYPE,
    ),
    bad(
        "missing key, no transport key",
        r#"{"status":"paid"}"#,
        None,
        r#"missing key: no field "key" and no message key"#,
    ),
    bad(
        "transport key not UTF-8",
        r#"{"status":"paid"}"#,
        Some(b"\xff\xfeo-1"),
        r#"field "message key" is not valid UTF-8"#,
    ),
    bad(
        "empty transport key",
        r#"{"status":"paid"}"#,
        Some(b""),
        EMPTY,
    ),
    bad(
        "spaces as transport key",
        r#"{"status":"paid"}"#,
        Some(b"   "),
        EMPTY,
    ),
    bad(
        "tab and newline as transport key",
        r#"{"status":"paid"}"#,
        Some(b"\t\r\n"),
        EMPTY,
    ),
    bad(
        "Unicode spaces as transport key",
        r#"{"status":"paid"}"#,
        Some("\u{3000}\u{a0}".as_bytes()),
        EMPTY,
    ),
];
