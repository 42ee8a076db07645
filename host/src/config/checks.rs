//! What no one section can check alone: each section validated, then how the source, store
//! and dead-letter queue fit together, and that every choice is compiled in.

use super::error::{invalid, needs};
use super::{Config, ConfigError, DeadLetterConfig, Problem, SourceConfig, StoreConfig};

impl Config {
    /// Checks what can be checked without connecting anywhere: values, the combination of
    /// source, store and dead-letter queue, and that every choice is compiled in.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.rule.validate()?;
        self.pipeline.validate()?;
        self.source.validate()?;
        if let SourceConfig::Kafka(kafka) = &self.source {
            // The dead-letter producer shares the source's properties.
            let dead_letters_to_kafka = matches!(self.dead_letter, DeadLetterConfig::Kafka(_));
            if let Some(problem) = kafka.at_least_once_breaker(dead_letters_to_kafka) {
                return invalid("source.properties", problem);
            }
        }
        self.store.validate()?;
        if let Some(enrich) = &self.enrich {
            needs("enrich", "http", cfg!(feature = "http"))?;
            enrich.validate()?;
        }
        if let Some(admin) = &self.admin {
            needs("admin", "http", cfg!(feature = "http"))?;
            admin.validate()?;
        }
        self.validate_dead_letter()
    }

    /// A Kafka dead-letter topic is reached through the Kafka source's brokers, a Redis stream
    /// through the standalone Redis store's server.
    fn validate_dead_letter(&self) -> Result<(), ConfigError> {
        match (&self.dead_letter, &self.source, &self.store) {
            (DeadLetterConfig::Kafka(_), SourceConfig::Kafka(_), _) => needs(
                "dead_letter.kind = \"kafka\"",
                "kafka",
                cfg!(feature = "kafka"),
            ),
            (DeadLetterConfig::Kafka(_), _, _) => {
                invalid("dead_letter.kind = \"kafka\"", Problem::NeedsKafkaSource)
            }
            (DeadLetterConfig::RedisStream(_), _, StoreConfig::Memory) => invalid(
                "dead_letter.kind = \"redis-stream\"",
                Problem::NeedsRedisStore,
            ),
            (DeadLetterConfig::RedisStream(_), _, StoreConfig::RedisCluster(_)) => {
                invalid("dead_letter.kind = \"redis-stream\"", Problem::NotOnCluster)
            }
            (DeadLetterConfig::RedisStream(_), _, _) => needs(
                "dead_letter.kind = \"redis-stream\"",
                "redis",
                cfg!(feature = "redis"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{VALID, parse};
    use crate::config::*;

    #[test]
    fn a_full_configuration_parses_and_validates() {
        let config = parse(VALID).expect("parses");
        assert!(
            matches!(config.store, StoreConfig::Redis(ref redis) if redis.common.prefix == "converge:state:")
        );
        assert_eq!(config.pipeline, PipelineConfig::default());
        let validated = config.validate();
        if cfg!(all(feature = "kafka", feature = "redis")) {
            validated.expect("valid");
        } else {
            // A build without the transports refuses it, naming the feature.
            assert!(
                matches!(validated, Err(ConfigError::NeedsFeature { .. })),
                "{validated:?}"
            );
        }
    }

    #[test]
    fn properties_that_break_at_least_once_are_refused_by_name() {
        let with = |property: &str, value: &str| {
            let mut config = parse(VALID).expect("parses");
            if let SourceConfig::Kafka(kafka) = &mut config.source {
                kafka
                    .properties
                    .insert(property.to_owned(), value.to_owned());
            }
            config.validate()
        };
        if !cfg!(feature = "kafka") {
            // Without Kafka the source itself is refused, before its properties.
            assert!(matches!(
                with("acks", "1"),
                Err(ConfigError::NeedsFeature { .. })
            ));
            return;
        }
        for (property, value) in [
            ("enable.auto.offset.store", "true"),
            ("enable.auto.offset.store", "1"),
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
            ("auto.offset.reset", "latest"),
            ("auto.offset.reset", "largest"),
            ("isolation.level", "read_uncommitted"),
        ] {
            let error = with(property, value).expect_err(property);
            let ConfigError::Invalid {
                setting: "source.properties",
                problem:
                    Problem::BreaksAtLeastOnce {
                        property: named, ..
                    },
            } = &error
            else {
                panic!("{property} = {value}: {error}");
            };
            assert_eq!(named, property);
            assert!(error.to_string().contains(property), "{error}");
        }
        // What keeps the guarantee passes (in a build with the transports).
        if cfg!(all(feature = "kafka", feature = "redis")) {
            with("enable.auto.offset.store", "false").expect("valid");
            with("acks", "all").expect("valid");
            with("acks", "-1").expect("valid");
            with("auto.offset.reset", "earliest").expect("valid");
            with("isolation.level", "read_committed").expect("valid");
            with("security.protocol", "SASL_SSL").expect("valid");
        }
    }

    #[test]
    fn wedge_a_fleet_without_trusted_keys_is_refused_unless_unsigned_rules_are_allowed() {
        if !cfg!(all(feature = "kafka", feature = "redis")) {
            // The configuration names transports this build refuses first.
            return;
        }
        let mut config = parse(VALID).expect("parses");
        config.rule.trusted_keys.clear();
        config.rule.fleet = Some(FleetConfig {
            redis: "redis://127.0.0.1:6379".to_owned(),
            name: "kitchen".to_owned(),
            instance: None,
            allow_unsigned: false,
        });
        let error = config.validate().expect_err("refused");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "rule.fleet",
                    problem: Problem::UnsignedFleet
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("allow_unsigned"), "{error}");
        if let Some(fleet) = &mut config.rule.fleet {
            fleet.allow_unsigned = true;
        }
        config.validate().expect("allowed explicitly");
    }

    #[test]
    fn redis_stream_dead_letters_are_refused_beside_a_cluster_store() {
        let mut config = parse(VALID).expect("parses");
        config.source = SourceConfig::File(FileSourceConfig { path: "-".into() });
        config.store = StoreConfig::RedisCluster(RedisClusterConfig {
            urls: vec!["redis://127.0.0.1:7000".to_owned()],
            common: RedisStoreCommon::default(),
        });
        config.dead_letter =
            DeadLetterConfig::RedisStream(RedisStreamConfig::named("converge:dead-letters"));
        let error = config.validate().expect_err("refused");
        if !cfg!(feature = "redis") {
            // Without Redis the store itself is refused first.
            assert!(matches!(error, ConfigError::NeedsFeature { .. }), "{error}");
            return;
        }
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    problem: Problem::NotOnCluster,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("Redis Cluster"), "{error}");
    }

    #[test]
    fn inconsistent_choices_are_refused_before_connecting() {
        let mut config = parse(VALID).expect("parses");
        config.source = SourceConfig::File(FileSourceConfig { path: "-".into() });
        assert!(config.validate().is_err());
        let mut config = parse(VALID).expect("parses");
        config.rule.path = "does/not/exist.wasm".into();
        assert!(config.validate().is_err());
    }
}
