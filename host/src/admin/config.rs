//! `[admin]`: where the admin endpoint listens and who may use it, with the defaults and
//! validation.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Problem, invalid};

/// `[admin]`: where the admin endpoint listens and who may use it. `[admin]` alone serves on
/// 127.0.0.1:9898 with rule swaps disabled (no token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// e.g. "127.0.0.1:9898" (the default). An address that is not loopback needs a token.
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
    /// The bearer token the mutating endpoints (`POST /rule`, `/rule/promote`,
    /// `/rule/rollback`) require, at least [`MIN_ADMIN_TOKEN_CHARS`] characters; usually
    /// `"${CONVERGE_ADMIN_TOKEN}"`. When absent, the environment variable
    /// [`ADMIN_TOKEN_ENV`] is taken (by [`Config::load`](crate::config::Config::load)); when neither is set, those
    /// endpoints answer 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::redact::Secret>,
    /// Require the token for `/metrics`, `/rule` and `/rule/status` too (never for `/healthz`
    /// and `/readyz`, which probes call).
    #[serde(default)]
    pub protect_reads: bool,
    /// Origins (`scheme://host[:port]`) whose browser pages may call the mutating endpoints;
    /// a request with any other `Origin` header is refused. Empty (the default): none.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// The environment variable the admin token is taken from when `admin.token` is not set.
pub const ADMIN_TOKEN_ENV: &str = "CONVERGE_ADMIN_TOKEN";

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Where the admin endpoint listens by default: loopback only.
pub const DEFAULT_ADMIN_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9898),
);

fn default_admin_listen() -> std::net::SocketAddr {
    DEFAULT_ADMIN_LISTEN
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN,
            token: None,
            protect_reads: false,
            allowed_origins: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// Takes the token from `from_env` (the value of [`ADMIN_TOKEN_ENV`], if set) when the file
    /// sets none; a file and an environment that set two different tokens are refused, since
    /// either could be the one an operator believes is in force.
    pub fn take_token_from_env(&mut self, from_env: Option<String>) -> Result<(), ConfigError> {
        let Some(from_env) = from_env.filter(|value| !value.is_empty()) else {
            return Ok(());
        };
        match &self.token {
            None => {
                self.token = Some(crate::redact::Secret::new(from_env));
                Ok(())
            }
            Some(token) if token.expose() == from_env => Ok(()),
            Some(_) => invalid("admin.token", Problem::TokenConflict),
        }
    }

    /// Checks the token, the origins, and that an address other than loopback has a token.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(token) = &self.token {
            let token = token.expose();
            if token.chars().count() < MIN_ADMIN_TOKEN_CHARS
                || !token.chars().all(|c| c.is_ascii_graphic())
            {
                return invalid("admin.token", Problem::WeakToken);
            }
        } else if !self.listen.ip().to_canonical().is_loopback() {
            return invalid("admin.listen", Problem::ExposedWithoutToken(self.listen));
        } else if self.protect_reads {
            return invalid("admin.protect_reads", Problem::ProtectedWithoutToken);
        }
        if let Some(origin) = self
            .allowed_origins
            .iter()
            .find(|origin| !is_origin(origin))
        {
            return invalid(
                "admin.allowed_origins",
                Problem::NotAnOrigin(origin.clone()),
            );
        }
        Ok(())
    }
}

/// `scheme://host[:port]`, as a browser sends it in `Origin`: no path, no trailing slash.
fn is_origin(origin: &str) -> bool {
    origin.split_once("://").is_some_and(|(scheme, host)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
            && !host.is_empty()
            && !host.contains(['/', '?', '#', '@'])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_endpoint_off_loopback_needs_a_strong_token() {
        let admin: AdminConfig = toml::from_str("").expect("[admin] alone parses");
        assert_eq!(admin, AdminConfig::default());
        assert!(admin.listen.ip().is_loopback());
        admin
            .validate()
            .expect("loopback without a token is allowed");
        let exposed = AdminConfig {
            listen: "0.0.0.0:9898".parse().expect("address"),
            ..AdminConfig::default()
        };
        let error = exposed.validate().expect_err("refused");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "admin.listen",
                    problem: Problem::ExposedWithoutToken(_)
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains("CONVERGE_ADMIN_TOKEN"),
            "{error}"
        );
        for listen in ["[::]:9898", "[::ffff:10.0.0.1]:9898", "10.1.2.3:9898"] {
            let exposed = AdminConfig {
                listen: listen.parse().expect("address"),
                ..AdminConfig::default()
            };
            assert!(exposed.validate().is_err(), "{listen}");
        }
        for listen in ["127.0.0.2:9898", "[::1]:9898", "[::ffff:127.0.0.1]:9898"] {
            let loopback = AdminConfig {
                listen: listen.parse().expect("address"),
                ..AdminConfig::default()
            };
            loopback.validate().expect(listen);
        }
        let with_token = |token: &str| AdminConfig {
            listen: "0.0.0.0:9898".parse().expect("address"),
            token: Some(crate::redact::Secret::new(token)),
            ..AdminConfig::default()
        };
        with_token("0123456789abcdef")
            .validate()
            .expect("16 characters");
        for weak in ["short", "0123456789abcde", "0123456789 abcdef"] {
            let error = with_token(weak).validate().expect_err(weak);
            // The token itself is never quoted.
            assert!(!error.to_string().contains(weak), "{error}");
        }
        let protected = AdminConfig {
            protect_reads: true,
            ..AdminConfig::default()
        };
        assert!(protected.validate().is_err());
        let origins = |origins: &[&str]| AdminConfig {
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            ..AdminConfig::default()
        };
        origins(&["https://ops.example.com", "http://localhost:3000"])
            .validate()
            .expect("origins");
        assert!(origins(&["https://ops.example.com/"]).validate().is_err());
        assert!(origins(&["ops.example.com"]).validate().is_err());
    }

    #[test]
    fn the_admin_token_comes_from_the_file_or_the_environment_not_two_of_them() {
        let token = "0123456789abcdef-from-env";
        let mut admin = AdminConfig::default();
        admin.take_token_from_env(None).expect("nothing to take");
        assert_eq!(admin.token, None);
        admin
            .take_token_from_env(Some(token.to_owned()))
            .expect("taken");
        assert_eq!(admin.token.as_ref().map(|t| t.expose()), Some(token));
        // The same value twice (`token = "${CONVERGE_ADMIN_TOKEN}"`) is fine.
        admin
            .take_token_from_env(Some(token.to_owned()))
            .expect("same");
        let error = admin
            .take_token_from_env(Some("another-token-0123456789".to_owned()))
            .expect_err("two tokens");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "admin.token",
                    problem: Problem::TokenConflict
                }
            ),
            "{error}"
        );
        // Debug never shows it.
        assert!(!format!("{admin:?}").contains(token));
    }
}
