//! `--set PATH=VALUE`: a setting replaced from the command line before the configuration is
//! read as one.

use super::{ConfigError, OverrideProblem};

/// Sets `a.b.c=value` in `table`, creating tables on the way. A VALUE that parses as TOML is
/// taken as such (`1024`, `true`, `["a","b"]`), anything else as a string.
pub(super) fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let refuse = |problem| ConfigError::Override {
        assignment: assignment.to_owned(),
        problem,
    };
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| refuse(OverrideProblem::NotAnAssignment))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut parsed| parsed.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let mut names: Vec<&str> = path.trim().split('.').collect();
    let last = names.pop().filter(|name| !name.is_empty());
    let last = last.ok_or_else(|| refuse(OverrideProblem::EmptyName))?;
    let mut current = table;
    for name in names {
        let entry = current
            .entry(name.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| refuse(OverrideProblem::NotATable(name.to_owned())))?;
    }
    current.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize as _;

    use super::*;
    use crate::config::tests::VALID;
    use crate::config::{Config, SourceConfig};

    #[test]
    fn overrides_replace_settings_and_keep_types() {
        let mut table: toml::Table = toml::from_str(VALID).expect("parses");
        apply_override(&mut table, "source.brokers=kafka-1:9092,kafka-2:9092").expect("set");
        apply_override(&mut table, "pipeline.batch_size=1024").expect("set");
        apply_override(&mut table, "source.topics=[\"a\", \"b\"]").expect("set");
        // A setting of the part the Redis stores share.
        apply_override(&mut table, "store.timeout_ms=500").expect("set");
        let config = Config::deserialize(table).expect("still a configuration");
        assert_eq!(config.pipeline.batch_size, 1024);
        match config.source {
            SourceConfig::Kafka(kafka) => {
                assert_eq!(kafka.brokers, "kafka-1:9092,kafka-2:9092");
                assert_eq!(kafka.topics, ["a", "b"]);
            }
            other => panic!("source changed kind: {other:?}"),
        }
        assert!(
            matches!(config.store, crate::config::StoreConfig::Redis(ref redis) if redis.common.timeout_ms == 500),
            "{:?}",
            config.store
        );
        let mut table: toml::Table = toml::from_str(VALID).expect("parses");
        assert!(apply_override(&mut table, "no-equals-sign").is_err());
        assert!(apply_override(&mut table, "rule.path.deeper=1").is_err());
    }
}
