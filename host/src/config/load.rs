//! Reading a configuration file: TOML, then `--set` overrides, then `${NAME}` expansion, then
//! the sections, then validation.

use std::path::Path;

use serde::Deserialize as _;

use super::env::{UnsetVariable, expand_strings};
use super::overrides::apply_override;
use super::{ADMIN_TOKEN_ENV, Config, ConfigError};

impl Config {
    /// Reads, expands `${NAME}` references and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_overrides(path, &[] as &[&str])
    }

    /// As [`Config::load`], with settings replaced by `PATH=VALUE` overrides (from flags) before
    /// the result is validated. A VALUE that parses as TOML is taken as such (`1024`, `true`,
    /// `["a","b"]`), anything else as a string.
    pub fn load_with_overrides(
        path: &Path,
        overrides: &[impl AsRef<str>],
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        for assignment in overrides {
            apply_override(&mut table, assignment.as_ref())?;
        }
        // In string values only: a comment may mention ${NAME}, and a secret's characters
        // cannot change the file's structure.
        expand_strings(&mut table, &|name| std::env::var(name).ok()).map_err(
            |UnsetVariable(name)| ConfigError::MissingVariable {
                path: path.to_owned(),
                name,
            },
        )?;
        let mut config = Config::deserialize(table).map_err(parse_error)?;
        if let Some(admin) = &mut config.admin {
            admin.take_token_from_env(std::env::var(ADMIN_TOKEN_ENV).ok())?;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::tests::parse;
    use crate::config::{Config, ConfigError, SourceConfig};

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/converge.example.toml");
        // Loaded as `serve` loads it (variables expanded), short of validating the rule path.
        let error = Config::load(&path).expect_err("the example's rule is not built here");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "rule.path",
                    ..
                }
            ),
            "{error}"
        );
        let example = include_str!("../../../deploy/converge.example.toml");
        let config = parse(example).expect("deploy/converge.example.toml parses");
        assert!(config.admin.is_some());
        assert!(matches!(config.source, SourceConfig::Kafka(_)));
    }
}
