//! [`Origin`]: where a rule candidate came from, as logs and status name it.

use std::path::Path;

/// The origin of a rollback the control made by itself (`rule.auto_rollback`).
pub const AUTO_ROLLBACK_ORIGIN: &str = "auto-rollback";

/// Where a rule candidate came from: the `origin` of its swap's log line and of
/// [`RuleRef::origin`](super::RuleRef::origin) and [`SwapRecord::origin`](super::SwapRecord::origin)
/// (kept as text there, since status is read back from other instances).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The rule file `serve` was started with and watches; its value is `file:PATH`, made
    /// once by [`Origin::file`].
    File(String),
    /// The fleet's Redis.
    Fleet,
    /// The admin endpoint (an upload, promote or rollback).
    Admin,
    /// The control itself, rolling a swap back (`rule.auto_rollback`).
    AutoRollback,
}

impl Origin {
    /// The rule file at `path`.
    pub fn file(path: &Path) -> Self {
        Self::File(format!("file:{}", path.display()))
    }

    /// The value logs and status show.
    pub fn as_str(&self) -> &str {
        match self {
            Self::File(value) => value,
            Self::Fleet => "fleet",
            Self::Admin => "admin",
            Self::AutoRollback => AUTO_ROLLBACK_ORIGIN,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_values_are_pinned() {
        for (origin, value) in [
            (
                Origin::file(Path::new("/etc/converge/rule.wasm")),
                "file:/etc/converge/rule.wasm",
            ),
            (Origin::Fleet, "fleet"),
            (Origin::Admin, "admin"),
            (Origin::AutoRollback, "auto-rollback"),
        ] {
            assert_eq!(origin.as_str(), value);
            assert_eq!(origin.to_string(), value);
        }
    }
}
