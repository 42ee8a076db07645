//! The import allowlist: what a rule component may import.
//!
//! A rule must be a pure function of its arguments, so the contract's world imports nothing. A
//! Rust `wasm32-wasip2` component still imports a few WASI 0.2 interfaces that the standard
//! library links in whether or not the rule uses them (environment, exit, the three standard
//! streams, terminals, and the `wasi:io` types those streams are made of). Those, and only
//! those, are allowed — and the host links every one of them to a function that traps when
//! called: a rule has no environment, no input, no output and cannot exit; one that reaches for
//! them (a panic writing its message to stderr, say) fails that call like any other trap.
//! Files (`wasi:filesystem`), sockets (`wasi:sockets`), clocks (`wasi:clocks`), randomness
//! (`wasi:random`) and any interface not named here are refused: a component importing one
//! never loads.

/// Interfaces a rule may import, without version. Every function in them traps when called.
pub const ALLOWED_INTERFACES: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// The WASI release line the host implements; an allowed interface of another line is refused.
pub const ALLOWED_WASI_VERSION_PREFIX: &str = "0.2.";

/// Whether a component may import `name` (e.g. `wasi:cli/stdout@0.2.6`).
fn is_allowed(name: &str) -> bool {
    let Some((interface, version)) = name.split_once('@') else {
        return false;
    };
    ALLOWED_INTERFACES.contains(&interface) && version.starts_with(ALLOWED_WASI_VERSION_PREFIX)
}

/// The imports among `names` that are not allowed, in the order given.
pub(super) fn forbidden<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| !is_allowed(name))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_library_imports_are_allowed() {
        assert!(is_allowed("wasi:io/streams@0.2.6"));
        assert!(is_allowed("wasi:cli/terminal-stderr@0.2.0"));
    }

    #[test]
    fn ambient_authority_is_refused() {
        for name in [
            "wasi:filesystem/types@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:clocks/wall-clock@0.2.6",
            "wasi:random/random@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
            "acme:kv/store",
            "wasi:cli/stdout@0.3.0",
            "wasi:cli/stdout",
        ] {
            assert!(!is_allowed(name), "{name} must be refused");
        }
    }
}
