//! Log lines on stderr: text for people or JSON for log collectors, at the level RUST_LOG sets
//! (default `warn`).

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Installs the process's log subscriber.
pub(crate) fn init(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        // Whichever crate logs a URL, its password does not reach the log; nor does a log
        // line break a progress bar.
        .with_writer(crate::progress_bar::log_writer)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
