//! Rule swaps: a candidate passes the gates ([`crate::rule::Gates`]), then replaces the serving
//! rule — or runs beside it as a shadow — at the pipeline's next batch boundary.
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod config;
mod control;
mod file_watch;
#[cfg(feature = "redis")]
mod fleet;
mod ignore_share;
mod origin;
mod serving;
mod status;

pub use config::{AutoRollbackConfig, FleetConfig, RuleConfig};
pub use control::RuleControl;
#[cfg(feature = "redis")]
pub(crate) use control::now_ms;
pub use file_watch::{RuleFileError, WatchError, read_rule_file, watch_rule_file};
#[cfg(feature = "redis")]
pub use fleet::{Downgrade, Fleet, FleetError, FleetStatus, InstanceReport, RolledBack};
pub use ignore_share::{AutoRollback, IgnoreShare};
pub use origin::{AUTO_ROLLBACK_ORIGIN, Origin};
pub use serving::SwappableRule;
pub use status::{
    Disagreement, REDACTED_DATA, Refusal, Role, RuleRef, RuleStatus, ShadowStatus, SwapRecord,
    SwapResult,
};
