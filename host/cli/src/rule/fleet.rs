//! The fleet the `rule` subcommands publish to and move (its Redis and name), and what they
//! share: the connection, the move of a pointer (promote, rollback) and the record of a
//! downgrade in one line.

use clap::Args;

use super::trust::TrustArgs;

#[derive(Debug, Args)]
pub(crate) struct FleetArgs {
    /// The Redis holding the fleet's rules. Prefer the environment variable when the URL holds
    /// a password: a command line is visible to every user of the host.
    // hide_env_values: `--help` would print the variable's value, password and all.
    #[arg(
        long,
        env = "CONVERGE_FLEET_REDIS",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) redis: String,
    /// The fleet's name (`rule.fleet.name` of its instances).
    #[arg(long, env = "CONVERGE_FLEET", value_name = "NAME")]
    pub(crate) fleet: String,
}

/// A fleet, and what its target rule's signature must be by (rollback, promote).
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[command(flatten)]
    pub(crate) trust: TrustArgs,
    /// The largest component read, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = converge::rule::DEFAULT_MAX_COMPONENT_BYTES)]
    pub(crate) max_component_bytes: usize,
}

#[cfg(feature = "redis")]
pub(crate) use with_redis::*;

/// What needs the fleet's Redis client (the `redis` feature).
#[cfg(feature = "redis")]
mod with_redis {
    use std::process::ExitCode;

    use anyhow::Context as _;
    use converge::rule::TrustedKeys;
    use converge::swap::{Downgrade, Fleet, FleetError};

    use super::{FleetArgs, TargetArgs};
    use crate::EXIT_FAILED;

    impl FleetArgs {
        /// Connects to the fleet's Redis.
        pub(crate) async fn connect(&self) -> anyhow::Result<Fleet> {
            Fleet::connect(&self.redis, &self.fleet)
                .await
                .with_context(|| {
                    format!(
                        "cannot reach the fleet's Redis at {}",
                        converge::redact::redact(&self.redis)
                    )
                })
        }
    }

    /// A downgrade in one line: when, who, from and to.
    pub(crate) fn describe_downgrade(downgrade: &Downgrade) -> String {
        format!(
            "at {} by {}: {} -> {} (release {}, floor {} -> {})",
            utc(downgrade.at_ms),
            downgrade.by,
            downgrade.from.as_deref().map_or("-", short),
            short(&downgrade.to),
            downgrade.release,
            downgrade.floor_before,
            downgrade.release
        )
    }

    /// `at_ms` (since the Unix epoch) as an RFC 3339 UTC time, to the second.
    fn utc(at_ms: u64) -> String {
        let seconds = at_ms / 1000;
        let days = i64::try_from(seconds / 86_400).unwrap_or(i64::MAX / 2);
        let time = seconds % 86_400;
        // Days to a civil date (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_index + 2) / 5 + 1;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            time / 3600,
            time % 3600 / 60,
            time % 60
        )
    }

    /// Rollback or promote: a refused target (tampered, missing, unsigned, below the floor) exits
    /// 1 with why; nothing changed.
    pub(crate) fn move_pointer(
        args: &TargetArgs,
        done: &str,
        act: impl AsyncFnOnce(&Fleet, &TrustedKeys) -> Result<String, FleetError>,
    ) -> anyhow::Result<ExitCode> {
        let trusted = args.trust.trusted()?;
        crate::runtime::multi_thread()?.block_on(async {
            let fleet = args.fleet.connect().await?;
            match act(&fleet, &trusted).await {
                Ok(outcome) => {
                    println!("fleet {} {done}: {outcome}", args.fleet.fleet);
                    Ok(ExitCode::SUCCESS)
                }
                Err(
                    error @ (FleetError::Integrity(_)
                    | FleetError::TooLarge { .. }
                    | FleetError::SignatureRefused { .. }
                    | FleetError::MissingBlob { .. }
                    | FleetError::BelowFloor { .. }
                    | FleetError::Downgrade { .. }),
                ) => {
                    eprintln!("not {done}: {error}");
                    Ok(ExitCode::from(EXIT_FAILED))
                }
                Err(error) => Err(error.into()),
            }
        })
    }

    pub(crate) fn short(hash: &str) -> &str {
        hash.get(..12).unwrap_or(hash)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn wedge_a_downgrade_record_prints_its_time_in_utc() {
            assert_eq!(utc(0), "1970-01-01T00:00:00Z");
            assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
            assert_eq!(utc(1_700_000_000_999), "2023-11-14T22:13:20Z");
            assert_eq!(utc(4_102_444_799_000), "2099-12-31T23:59:59Z");
            let line = describe_downgrade(&Downgrade {
                at_ms: 1_700_000_000_000,
                by: "ops@host".to_owned(),
                from: Some("b".repeat(64)),
                to: "a".repeat(64),
                release: 1,
                floor_before: 2,
            });
            assert_eq!(
                line,
                "at 2023-11-14T22:13:20Z by ops@host: bbbbbbbbbbbb -> aaaaaaaaaaaa (release 1, \
                 floor 2 -> 1)"
            );
        }
    }
}
