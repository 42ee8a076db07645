//! Opens a TCP connection: the component imports `wasi:sockets`, which a rule may not (there is
//! no deterministic stand-in for a network). The host must refuse to load it.

wit_bindgen::generate!({ world: "rule", path: "../../../wit" });

struct Connector;

impl Guest for Connector {
    fn info() -> RuleInfo {
        RuleInfo {
            name: "connector".to_owned(),
            version: "0.1.0".to_owned(),
            statuses: vec!["created".to_owned()],
        }
    }

    fn decide(_current: Option<State>, incoming: Event) -> Decision {
        match std::net::TcpStream::connect(("127.0.0.1", 6379)) {
            Ok(_) => Decision::Insert(incoming),
            Err(error) => Decision::Reject(error.to_string()),
        }
    }

    fn decide_batch(items: Vec<(Option<State>, Event)>) -> Vec<Decision> {
        items.into_iter().map(|(c, i)| Self::decide(c, i)).collect()
    }
}

export!(Connector);
