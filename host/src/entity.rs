//! The rule's vocabulary on the host side, generated from `wit/rule.wit`, and its JSON form.
//!
//! The host uses the generated types directly so that a decision crosses into and out of the
//! component without conversion. Their JSON form (vectors, `converge decide`, reports) writes the
//! payload as a JSON value rather than as the canonical text the rule sees.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod bindings {
    wasmtime::component::bindgen!({
        world: "rule",
        path: "../wit",
        additional_derives: [PartialEq, Eq, Hash],
    });
}

pub(crate) use bindings::Rule as RuleBindings;
pub(crate) use bindings::RulePre as RuleBindingsPre;
pub use bindings::{Decision, Entity, Event, RuleInfo, State};

pub use converge_codec::{NULL_PAYLOAD, canonical_json};

impl Entity {
    /// The payload parsed back into a JSON value (a string value if it is not JSON text).
    pub fn payload_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|_| serde_json::Value::String(self.payload.clone()))
    }
}

impl Decision {
    /// The variant's name as logs, metrics and JSON spell it.
    pub fn kind(&self) -> DecisionKind {
        match self {
            Decision::Insert(_) => DecisionKind::Insert,
            Decision::Update(_) => DecisionKind::Update,
            Decision::Ignore(_) => DecisionKind::Ignore,
            Decision::Reject(_) => DecisionKind::Reject,
        }
    }

    /// The state the decision stores, if it stores one.
    pub fn stored_state(&self) -> Option<&State> {
        match self {
            Decision::Insert(state) | Decision::Update(state) => Some(state),
            Decision::Ignore(_) | Decision::Reject(_) => None,
        }
    }
}

/// The four outcomes of a decision, without their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    /// Store a state for a key that has none.
    Insert,
    /// Replace the key's stored state.
    Update,
    /// Keep the stored state: the event is stale or a duplicate.
    Ignore,
    /// Keep the stored state and dead-letter the event: it is invalid.
    Reject,
}

impl DecisionKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [DecisionKind; 4] = [Self::Insert, Self::Update, Self::Ignore, Self::Reject];

    /// `insert`, `update`, `ignore` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Ignore => "ignore",
            Self::Reject => "reject",
        }
    }
}

impl std::fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityJson {
    key: String,
    status: String,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    timestamp_ms: u64,
    #[serde(default)]
    payload: serde_json::Value,
}

impl Serialize for Entity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EntityJson {
            key: self.key.clone(),
            status: self.status.clone(),
            version: self.version,
            timestamp_ms: self.timestamp_ms,
            payload: self.payload_value(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Entity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = EntityJson::deserialize(deserializer)?;
        Ok(Entity {
            key: json.key,
            status: json.status,
            version: json.version,
            timestamp_ms: json.timestamp_ms,
            payload: canonical_json(&json.payload),
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum DecisionJson {
    Insert(Entity),
    Update(Entity),
    Ignore(String),
    Reject(String),
}

impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.clone() {
            Decision::Insert(state) => DecisionJson::Insert(state),
            Decision::Update(state) => DecisionJson::Update(state),
            Decision::Ignore(reason) => DecisionJson::Ignore(reason),
            Decision::Reject(reason) => DecisionJson::Reject(reason),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Decision {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match DecisionJson::deserialize(deserializer)? {
            DecisionJson::Insert(state) => Decision::Insert(state),
            DecisionJson::Update(state) => Decision::Update(state),
            DecisionJson::Ignore(reason) => Decision::Ignore(reason),
            DecisionJson::Reject(reason) => Decision::Reject(reason),
        })
    }
}

impl Serialize for RuleInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct RuleInfoJson<'a> {
            name: &'a str,
            version: &'a str,
            statuses: &'a [String],
        }
        RuleInfoJson {
            name: &self.name,
            version: &self.version,
            statuses: &self.statuses,
        }
        .serialize(serializer)
    }
}

impl RuleInfo {
    /// `name@version`, the stamp stored beside every state the rule writes.
    pub fn stamp(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_text_is_canonical() {
        let entity: Entity = serde_json::from_str(
            r#"{"key":"o-1","status":"paid","payload":{ "b": 1, "a": [true, null] }}"#,
        )
        .expect("valid entity");
        assert_eq!(entity.payload, r#"{"a":[true,null],"b":1}"#);
        assert_eq!(entity.version, 0);
        assert_eq!(entity.timestamp_ms, 0);
    }

    #[test]
    fn missing_payload_is_null() {
        let entity: Entity =
            serde_json::from_str(r#"{"key":"o-1","status":"paid"}"#).expect("valid entity");
        assert_eq!(entity.payload, NULL_PAYLOAD);
    }

    #[test]
    fn decision_json_round_trips() {
        let text = r#"{"update":{"key":"o-1","status":"paid","version":2,"timestamp_ms":5,"payload":{"t":1}}}"#;
        let decision: Decision = serde_json::from_str(text).expect("valid decision");
        assert_eq!(decision.kind(), DecisionKind::Update);
        assert_eq!(serde_json::to_string(&decision).expect("serialises"), text);
        let ignore: Decision = serde_json::from_str(r#"{"ignore":"stale"}"#).expect("valid");
        assert_eq!(ignore, Decision::Ignore("stale".to_owned()));
    }
}
