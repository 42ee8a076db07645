//! Rule swaps: a candidate passes the gates ([`crate::rule::Gates`]), then replaces the serving
//! rule — or runs beside it as a shadow — at the pipeline's next batch boundary.
//!
//! # Layout
//! - `config`: `[rule]` ([`RuleConfig`]), its defaults and validation;
//! - `status`: what status reports ([`RuleStatus`], [`SwapRecord`], [`Refusal`], the shadow's
//!   [`Disagreement`]s) and its redacted form;
//! - `control`: [`RuleControl`], shared by every way a candidate arrives: gates, applies,
//!   promotes, rolls back;
//! - `origin`: where a candidate came from ([`Origin`]);
//! - `serving`: the [`SwappableRule`] the pipeline runs, which follows the control between
//!   batches and runs the shadow beside the active rule;
//! - `file_watch`: the watched rule file ([`watch_rule_file`]);
//! - `fleet` (feature `redis`): rules published to every instance through Redis ([`Fleet`]);
//! - `ignore_share`: each version's share of `ignore` decisions ([`IgnoreShare`]) and the
//!   judgement that rolls a swap back by itself (`rule.auto_rollback`).

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
