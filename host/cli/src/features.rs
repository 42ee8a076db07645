//! Which transport features this build of converge has (the library's, which this crate's
//! features turn on), and the error of a command that needs one it lacks.

/// The `--help` footer: which transport features this binary was built with.
pub(crate) fn help() -> String {
    let list: Vec<String> = converge::FEATURES
        .iter()
        .map(|(name, built)| {
            format!(
                "{name} {}",
                if *built {
                    "(built in)"
                } else {
                    "(not built in)"
                }
            )
        })
        .collect();
    format!(
        "Transport features: {}. A command or configuration that needs a feature this build \
         lacks is refused with the feature's name; rebuild with `cargo build --features NAME`.",
        list.join(", ")
    )
}

/// The error of a command (or a part of one) this build of converge was compiled without.
#[cfg(not(all(feature = "kafka", feature = "redis", feature = "http")))]
pub(crate) fn needs_feature(what: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} needs converge built with the `{feature}` feature; this build has {} \
         (rebuild with `cargo build --features {feature}`)",
        built_features()
    )
}

/// `the features kafka, redis` or `no transport features`.
#[cfg(not(all(feature = "kafka", feature = "redis", feature = "http")))]
fn built_features() -> String {
    let built: Vec<&str> = converge::FEATURES
        .iter()
        .filter(|(_, built)| *built)
        .map(|(name, _)| *name)
        .collect();
    if built.is_empty() {
        "no transport features".to_owned()
    } else {
        format!("the features {}", built.join(", "))
    }
}
