//! The order-status rule with planted faults, chosen by the event's key prefix, so one instance
//! can show that a fault on one key leaves every other key flowing:
//! - `loop-…`: spins forever (the host's deadline must stop it);
//! - `bomb-…`: allocates without bound (the host's memory cap must stop it);
//! - `trap-…`: panics, which traps the instance;
//! - `bad-insert-…`: answers `insert` even when a state is stored (the host must call it a rule bug);
//! - `wrong-key-…`: answers with a state of another key (likewise).
//!
//! Every other key keeps the observation with the highest (version, timestamp, status, payload).

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

struct Faulty;

impl Guest for Faulty {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "faulty".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: ["created", "paid", "completed", "refunded"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn decide(current: Option<State>, incoming: Event) -> Decision {
        let key = incoming.key.clone();
        if key.starts_with("loop-") {
            let mut spins: u64 = 0;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        if key.starts_with("bomb-") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        if key.starts_with("trap-") {
            panic!("planted trap for {key}");
        }
        if key.starts_with("bad-insert-") {
            return Decision::Insert(incoming);
        }
        if key.starts_with("wrong-key-") {
            let mut other = incoming;
            other.key.push_str("-elsewhere");
            return match current {
                None => Decision::Insert(other),
                Some(_) => Decision::Update(other),
            };
        }
        let newness = |e: &State| {
            (
                e.version,
                e.timestamp_ms,
                e.status.clone(),
                e.payload.clone(),
            )
        };
        match current {
            None => Decision::Insert(incoming),
            Some(current) if newness(&incoming) > newness(&current) => Decision::Update(incoming),
            Some(_) => Decision::Ignore("not newer".to_owned()),
        }
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items.into_iter().map(|(c, i)| Self::decide(c, i)).collect()
    }
}

export!(Faulty);
