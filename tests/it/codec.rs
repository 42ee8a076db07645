//! One codec, two readers: every message of the codec's bad-key corpus is refused by the
//! SmartModule's logic (passed through unjudged, never remembered) and by the decode the host
//! uses (an error, so a dead letter), with the same reason word for word.

use converge_codec::{BAD_KEY_CORPUS, FieldMapping};
use converge_order_smartmodule::{Latest, Verdict};

#[test]
fn host_and_smartmodule_refuse_the_same_bad_keys_for_the_same_reason() {
    assert!(!BAD_KEY_CORPUS.is_empty());
    let mapping = FieldMapping::default();
    // A memory already holding an order: bad records must leave it as it is.
    let mut warm = Latest::new();
    warm.warm(None, br#"{"key":"o-1","status":"created","version":1}"#);
    assert_eq!(warm.len(), 1);
    for case in BAD_KEY_CORPUS {
        let body = case.record.as_bytes();
        let host = mapping
            .decode(Some(body), case.transport_key)
            .expect_err(case.case)
            .to_string();
        assert_eq!(host, case.refusal, "{}: the corpus's refusal", case.case);

        let mut fresh = Latest::new();
        let verdict = fresh.judge(case.transport_key, body);
        assert_eq!(verdict, Verdict::Unjudged(host.clone()), "{}", case.case);
        assert!(verdict.passes(), "{}: an unjudged record passes", case.case);
        assert!(fresh.is_empty(), "{}: remembered", case.case);
        fresh.warm(case.transport_key, body);
        assert!(fresh.is_empty(), "{}: remembered on look-back", case.case);

        assert_eq!(
            warm.judge(case.transport_key, body),
            Verdict::Unjudged(host),
            "{}",
            case.case
        );
        assert_eq!(warm.len(), 1, "{}", case.case);
    }
    // The order's state is still the one it had: the next status advances it, a repeat does not.
    let created = br#"{"key":"o-1","status":"created","version":1}"#;
    assert_eq!(warm.judge(None, created), Verdict::Stale);
    let paid = br#"{"key":"o-1","status":"paid","version":2}"#;
    assert_eq!(warm.judge(None, paid), Verdict::Advance);
}
