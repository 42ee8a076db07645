//! Last write wins: every event replaces the stored state. Plausible, and wrong: the stored
//! state depends on delivery order, so `converge check` must fail it with a counterexample.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

struct LastWriteWins;

impl Guest for LastWriteWins {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "last-write-wins".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: ["created", "paid", "completed", "refunded"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn decide(current: Option<State>, incoming: Event) -> Decision {
        match current {
            None => Decision::Insert(incoming),
            Some(_) => Decision::Update(incoming),
        }
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items.into_iter().map(|(c, i)| Self::decide(c, i)).collect()
    }
}

export!(LastWriteWins);
