use std::process::ExitCode;

// The data path allocates and frees many small strings per event from a few threads (the
// runtime, librdkafka's); glibc's allocator spent a fifth of converge's CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match converge::run_cli() {
        Ok(code) => code,
        // A reader that stopped reading (`converge run | head`) is not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // An error may quote a URL (a Redis client's, a request's): never its password.
            eprintln!("converge: {}", converge::redact::redact(&report(&error)));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, joined by ": ". A cause is left out when the messages before it
/// already say it: converge's errors spell out their cause and also keep it as their source.
fn report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::report;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read rule.wasm: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(Read { source: missing }).context("cannot load the rule");
        assert_eq!(
            report(&error),
            "cannot load the rule: cannot read rule.wasm: no such file"
        );
    }
}
