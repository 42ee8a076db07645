//! Reads the wall clock: the component imports `wasi:clocks`, which a rule may not. The host must
//! refuse to load it.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

struct ClockReader;

impl Guest for ClockReader {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "clock-reader".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: vec!["created".to_owned()],
        }
    }

    fn decide(_current: Option<State>, mut incoming: Event) -> Decision {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        incoming.timestamp_ms = now;
        Decision::Insert(incoming)
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items.into_iter().map(|(c, i)| Self::decide(c, i)).collect()
    }
}

export!(ClockReader);
