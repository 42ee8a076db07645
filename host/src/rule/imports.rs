//! The import allowlist: what a rule component may import, and how each allowed interface is
//! linked.
//!
//! A rule must be a pure function of its arguments, so the contract's world imports nothing.
//! Toolchains still link WASI into a component whether or not the rule uses it: a Rust
//! `wasm32-wasip2` component imports the standard streams, the environment and exit; a Go
//! component (through the WASI 0.1 adapter) imports the clocks, randomness and the file system
//! as well, and its runtime reads the clock and random bytes, and asks whether its standard
//! streams are terminals, at start-up, before the rule decides anything. So an allowed
//! interface is linked one of two ways, decided per interface:
//!
//! - a **stand-in** ([`Linked::StandIn`]) answers, always the same: the wall clock stands at
//!   2000-01-01T00:00:00Z, the monotonic clock at one second, random bytes come from a fixed
//!   seed (the same sequence in every instance), the environment, the arguments and the working
//!   directory are empty, the standard streams are no terminal (stdin is closed; stdout and
//!   stderr can be had but not written to, see below), and there is no preopened directory. A
//!   rule that reads them gets a value that depends on nothing, so its decisions still depend
//!   on its arguments alone, and `converge check`'s determinism property (fresh and long-lived
//!   instances) holds.
//! - every other allowed interface **traps when called**: exit, the `wasi:io` stream
//!   operations, polls and errors, and the file-system operations (unreachable anyway: with no
//!   preopened directory a rule holds no descriptor). A rule has no output (a panic writing its
//!   message fails the call like any other trap), cannot exit, and cannot wait (a fixed clock
//!   would never end a wait).
//!
//! Sockets (`wasi:sockets`), HTTP and any interface not named here are refused: a component
//! importing one never loads.

/// How an allowed interface is linked (see the module's documentation for why each is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linked {
    /// Answers a value that never changes: a fixed clock, a fixed-seed random, an empty
    /// environment, standard streams that are no terminal, no preopened directory.
    StandIn,
    /// Every function traps when called.
    Traps,
}

/// Interfaces a rule may import, without version, each with how it is linked.
pub const ALLOWED_INTERFACES: &[(&str, Linked)] = &[
    ("wasi:io/error", Linked::Traps),
    ("wasi:io/poll", Linked::Traps),
    ("wasi:io/streams", Linked::Traps),
    ("wasi:cli/environment", Linked::StandIn),
    ("wasi:cli/exit", Linked::Traps),
    ("wasi:cli/stdin", Linked::StandIn),
    ("wasi:cli/stdout", Linked::StandIn),
    ("wasi:cli/stderr", Linked::StandIn),
    ("wasi:cli/terminal-input", Linked::StandIn),
    ("wasi:cli/terminal-output", Linked::StandIn),
    ("wasi:cli/terminal-stdin", Linked::StandIn),
    ("wasi:cli/terminal-stdout", Linked::StandIn),
    ("wasi:cli/terminal-stderr", Linked::StandIn),
    ("wasi:clocks/wall-clock", Linked::StandIn),
    ("wasi:clocks/monotonic-clock", Linked::StandIn),
    ("wasi:random/random", Linked::StandIn),
    ("wasi:random/insecure", Linked::StandIn),
    ("wasi:random/insecure-seed", Linked::StandIn),
    ("wasi:filesystem/preopens", Linked::StandIn),
    ("wasi:filesystem/types", Linked::Traps),
];

/// The WASI release line the host implements; an allowed interface of another line is refused.
pub const ALLOWED_WASI_VERSION_PREFIX: &str = "0.2.";

/// The interface of an import name (`wasi:cli/stdout@0.2.6` → `wasi:cli/stdout`), if the name is
/// an allowed interface of the allowed WASI line.
pub(super) fn allowed_interface(name: &str) -> Option<(&'static str, Linked)> {
    let (interface, version) = name.split_once('@')?;
    if !version.starts_with(ALLOWED_WASI_VERSION_PREFIX) {
        return None;
    }
    ALLOWED_INTERFACES
        .iter()
        .copied()
        .find(|(allowed, _)| *allowed == interface)
}

/// Whether the import `name` (an allowed one) is linked to a stand-in rather than to traps.
pub(super) fn is_stand_in(name: &str) -> bool {
    allowed_interface(name).is_some_and(|(_, linked)| linked == Linked::StandIn)
}

/// The imports among `names` that are not allowed, in the order given.
pub(super) fn forbidden<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| allowed_interface(name).is_none())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_library_and_runtime_imports_are_allowed() {
        for name in [
            "wasi:io/streams@0.2.6",
            "wasi:cli/terminal-stderr@0.2.0",
            "wasi:clocks/wall-clock@0.2.12",
            "wasi:random/random@0.2.3",
            "wasi:filesystem/preopens@0.2.0",
        ] {
            assert!(allowed_interface(name).is_some(), "{name} must be allowed");
        }
    }

    #[test]
    fn ambient_authority_is_refused() {
        for name in [
            "wasi:sockets/tcp@0.2.6",
            "wasi:sockets/ip-name-lookup@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
            "acme:kv/store",
            "wasi:cli/stdout@0.3.0",
            "wasi:clocks/wall-clock@0.3.0-rc-2025-09-16",
            "wasi:cli/stdout",
        ] {
            assert!(allowed_interface(name).is_none(), "{name} must be refused");
        }
        assert_eq!(
            forbidden(["wasi:io/poll@0.2.0", "wasi:sockets/tcp@0.2.0"]),
            ["wasi:sockets/tcp@0.2.0"]
        );
    }

    #[test]
    fn only_deterministic_interfaces_answer() {
        assert!(is_stand_in("wasi:clocks/monotonic-clock@0.2.0"));
        assert!(is_stand_in("wasi:filesystem/preopens@0.2.12"));
        for name in [
            "wasi:filesystem/types@0.2.0",
            "wasi:io/poll@0.2.0",
            "wasi:cli/exit@0.2.0",
            "wasi:sockets/tcp@0.2.0",
        ] {
            assert!(!is_stand_in(name), "{name} must not answer");
        }
    }
}
