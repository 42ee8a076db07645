//! Reads what a Go runtime reads at start-up — the wall clock, the monotonic clock, random
//! bytes, the environment and the preopened directories — and answers them as its decision's
//! payload, so a test can see that converge's stand-ins give every call and every instance the
//! same values. The component imports `wasi:clocks`, `wasi:random`, `wasi:cli/environment` and
//! `wasi:filesystem`.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct WasiReader;

impl Guest for WasiReader {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "wasi-reader".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: vec!["created".to_owned()],
        }
    }

    fn decide(_current: Option<State>, mut incoming: Event) -> Decision {
        let started = Instant::now();
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let mut random = [0u8; 16];
        let random = match getrandom::fill(&mut random) {
            Ok(()) => random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            Err(error) => return Decision::Reject(format!("no random bytes: {error}")),
        };
        let environment = std::env::vars().count();
        // The preopened directories: with none, any path is unreachable.
        let directories = std::fs::read_dir("/").map(|d| d.count()).ok();
        let elapsed_ns = started.elapsed().as_nanos();
        incoming.payload = format!(
            r#"{{"directories":{},"elapsed_ns":{elapsed_ns},"environment":{environment},"random":"{random}","wall_ms":{wall_ms}}}"#,
            directories.map_or("null".to_owned(), |n| n.to_string()),
        );
        Decision::Insert(incoming)
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items.into_iter().map(|(c, i)| Self::decide(c, i)).collect()
    }
}

export!(WasiReader);
