//! Runs rule components safely: compiled once, instantiated cheaply, every call bounded.
//!
//! - A component is compiled once ([`RuleEngine::compile`]) and pre-linked ([`CompiledRule`]), so
//!   a fresh instance costs microseconds.
//! - Its imports are checked against [`crate::rule`] before it is linked: the WASI a toolchain
//!   links in gets deterministic stand-ins or traps (`stand_ins`), anything else is refused.
//! - Every call runs under an epoch deadline and a memory cap (linear memories and table
//!   elements together). A call that traps, runs out of time or memory, or answers a decision
//!   that breaks the contract is reported as a
//!   [`DecideError`]; the instance is dropped and the next call instantiates a fresh one, so a
//!   half-run call never leaks state into the next.
//! - A component is refused before it is compiled (a file: before it is read) when it is larger
//!   than [`EngineLimits::max_component_bytes`], and an instance may create only so many core
//!   instances, memories and tables: compiling and instantiating are work an untrusted
//!   candidate must not be able to make unbounded.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

use super::compile_cache::CompileCache;
use super::imports;
use super::limiter::Limiter;
use super::stand_ins::{self, StandIns};
use crate::entity::{Decision, Event, RuleBindings, RuleBindingsPre, RuleInfo, State};
use crate::rule::{self, ContractViolation, DecideError, Rule};

/// How often the engine's clock ticks; deadlines are rounded up to whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The default of [`EngineLimits::max_component_bytes`] (and of `rule.max_component_bytes`):
/// 64 MiB. A Rust rule is about 100 KB, but a rule built with componentize-py (18 MB) or
/// componentize-js (12 MB) carries its language's interpreter, and such components run 10-40
/// MB; 64 MiB takes them with room to spare and still bounds what an untrusted candidate makes
/// the host read and compile.
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = 64 << 20;

/// The default of [`EngineLimits::memory_cap_bytes`] in MiB (and of `rule.memory_mib` and
/// `--memory-mib`): 64 MiB. The Rust and Python order rules run within it; the JavaScript one
/// does not (SpiderMonkey's heap on a long-lived instance grows to about 85 MiB before its
/// collector holds it there) and is configured with 128 (see `plugin/js/README.md`). The
/// default stays at 64 because it is per instance and `serve` may hold three at once (active,
/// shadow, a candidate being gated) in the 512 MiB its Deployment allows.
pub const DEFAULT_MEMORY_MIB: usize = 64;

/// What one table element is charged against [`EngineLimits::memory_cap_bytes`]: a pointer,
/// what wasmtime stores per `funcref` element (an `externref` takes less).
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// The longest stamp (`name@version`, [`RuleInfo::stamp`]) a rule may give, in bytes: the stamp
/// is stored beside every state the rule writes, carried by every dead letter and used as a
/// metric label, so a rule answering a longer one is refused at load rather than cut (two
/// versions cut to one stamp could no longer be told apart).
pub const MAX_STAMP_BYTES: usize = 256;

/// Limits applied to every rule component and every rule call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// The most memory one rule instance may hold: all its linear memories together with its
    /// tables' elements (each charged [`TABLE_ELEMENT_BYTES`]).
    pub memory_cap_bytes: usize,
    /// How long one call (`decide`, `decide-batch` or `info`) may run.
    pub deadline: Duration,
    /// The largest component compiled, in bytes; a larger one is refused before it is
    /// compiled, and a file before it is read.
    pub max_component_bytes: usize,
    /// The most core instances one rule instance may create (a component instantiates
    /// several core modules).
    pub max_instances: usize,
    /// The most linear memories one rule instance may create.
    pub max_memories: usize,
    /// The most tables one rule instance may create.
    pub max_tables: usize,
}

impl Default for EngineLimits {
    /// [`DEFAULT_MEMORY_MIB`] and 100 ms: a decision takes microseconds (tens to a couple of
    /// hundred in an interpreter) and a few KiB, so these leave room for honest rules while
    /// stopping a runaway one quickly. Components up to [`DEFAULT_MAX_COMPONENT_BYTES`]. A Rust
    /// rule instantiates about four core instances, one memory and two tables; a
    /// componentize-py rule links the Python runtime's shared libraries and creates 33 core
    /// instances: 64 instances, 4 memories and 32 tables leave
    /// room for those and still bound what a hostile component can make the host create.
    fn default() -> Self {
        Self {
            memory_cap_bytes: DEFAULT_MEMORY_MIB << 20,
            deadline: Duration::from_millis(100),
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            max_instances: 64,
            max_memories: 4,
            max_tables: 32,
        }
    }
}

/// Why a rule could not be loaded. Nothing of a rule that failed to load ever runs a decision.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The rule file cannot be read.
    #[error("cannot read rule {path}: {source}")]
    Read {
        /// The rule file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The component is larger than [`EngineLimits::max_component_bytes`].
    #[error("{what} is {size} bytes, over the cap of {cap} bytes (rule.max_component_bytes)")]
    TooLarge {
        /// What was refused: `the component`, `rule PATH`, `fleet blob HASH`.
        what: String,
        /// Its size in bytes (for a file that grew while read: as far as it was read).
        size: u64,
        /// The cap, in bytes.
        cap: usize,
    },
    /// The bytes do not begin with WebAssembly's magic number: not WebAssembly at all (a text
    /// file, an archive), which wasmtime would report as two dumped byte arrays.
    #[error("not a WebAssembly component: {}", not_wasm(.head))]
    NotWebAssembly {
        /// The first bytes (up to four), where `\0asm` should be.
        head: Vec<u8>,
    },
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("not a valid rule component: {0:#}")]
    Compile(#[source] wasmtime::Error),
    /// The component imports interfaces outside [`crate::rule::ALLOWED_INTERFACES`] (named).
    #[error(
        "rule imports {} outside the allowlist; a rule is a pure function and may not reach \
         sockets, HTTP or any host interface but the WASI converge stands in for",
        .0.join(", ")
    )]
    ForbiddenImports(Vec<String>),
    /// The component does not export what the `converge:rule` world asks for.
    #[error("rule does not implement the converge:rule world: {0:#}")]
    Link(#[source] wasmtime::Error),
    /// Asking the rule for its info failed.
    #[error("rule's info() failed: {0}")]
    Info(#[source] DecideError),
    /// The rule's info is unusable.
    #[error("rule's info() is invalid: {0}")]
    InvalidInfo(#[source] InvalidInfo),
    /// The wasmtime engine (or its clock thread) cannot start.
    #[error("cannot start the rule engine: {0:#}")]
    Engine(#[source] wasmtime::Error),
}

/// What is wrong with a rule's info: nothing could be stamped or checked against it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInfo {
    /// The name is empty or blank.
    #[error("empty name")]
    EmptyName,
    /// The version is empty or blank.
    #[error("empty version")]
    EmptyVersion,
    /// The rule declares no status, so it could store nothing.
    #[error("no statuses")]
    NoStatuses,
    /// A status is declared twice.
    #[error("status {0:?} listed twice")]
    DuplicateStatus(String),
    /// `name@version` is longer than [`MAX_STAMP_BYTES`].
    #[error(
        "name@version is {len} bytes, over the cap of {cap} bytes (it is stored beside every \
         state the rule writes): give the rule a shorter name or version"
    )]
    StampTooLong {
        /// The stamp's length, in bytes.
        len: usize,
        /// [`MAX_STAMP_BYTES`].
        cap: usize,
    },
}

/// A wasmtime engine configured for rules, with the clock thread that enforces deadlines.
#[derive(Clone, Debug)]
pub struct RuleEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    limits: EngineLimits,
    cache: Option<CompileCache>,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for EngineInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineInner")
            .field("limits", &self.limits)
            .field("cache", &self.cache.as_ref().map(CompileCache::dir))
            .finish_non_exhaustive()
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl RuleEngine {
    /// Starts an engine whose every rule call runs under `limits`, and its clock thread; it
    /// compiles every component it is given.
    pub fn new(limits: EngineLimits) -> Result<Self, LoadError> {
        Self::with_compile_cache(limits, None)
    }

    /// Like [`RuleEngine::new`], loading components compiled before from `cache` (and keeping
    /// those it compiles there) when there is one.
    pub fn with_compile_cache(
        limits: EngineLimits,
        cache: Option<CompileCache>,
    ) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cache(cache.as_ref().map(CompileCache::wasmtime));
        let engine = Engine::new(&config).map_err(LoadError::Engine)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), Arc::clone(&ticker_stop))
            .map_err(|error| LoadError::Engine(error.into()))?;
        Ok(Self {
            inner: Arc::new(EngineInner {
                engine,
                limits,
                cache,
                ticker_stop,
            }),
        })
    }

    /// The limits every rule call runs under.
    pub fn limits(&self) -> EngineLimits {
        self.inner.limits
    }

    /// Reads and compiles the component at `path`; a file over the size cap is not read.
    pub fn compile_file(&self, path: &Path) -> Result<CompiledRule, LoadError> {
        let bytes = read_component(path, self.inner.limits.max_component_bytes)?;
        self.compile(&bytes)
    }

    /// Refuses `size` bytes of component when they are over the size cap.
    pub fn check_size(&self, size: usize) -> Result<(), LoadError> {
        let cap = self.inner.limits.max_component_bytes;
        if size > cap {
            return Err(LoadError::TooLarge {
                what: "the component".to_owned(),
                size: size as u64,
                cap,
            });
        }
        Ok(())
    }

    /// Compiles a component, checks its imports, links it and asks it for its info.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledRule, LoadError> {
        self.check_size(bytes.len())?;
        let inner = &self.inner;
        if !bytes.starts_with(WASM_MAGIC) {
            let head = bytes.iter().take(WASM_MAGIC.len()).copied().collect();
            return Err(LoadError::NotWebAssembly { head });
        }
        let started = Instant::now();
        let hits_before = inner.cache.as_ref().map(CompileCache::hits);
        let component = Component::new(&inner.engine, bytes).map_err(LoadError::Compile)?;
        let compiled = Compiled {
            took: started.elapsed(),
            from_cache: inner.cache.as_ref().map(CompileCache::hits) > hits_before,
        };
        let component_type = component.component_type();
        let forbidden =
            imports::forbidden(component_type.imports(&inner.engine).map(|(name, _)| name));
        if !forbidden.is_empty() {
            return Err(LoadError::ForbiddenImports(forbidden));
        }
        // The allowed imports answer deterministic values (clocks, random, environment,
        // preopens) or trap when called: a rule has no output, files or network, and one that
        // reaches for them (a panic writing its message to stderr, say) fails its call like any
        // other trap.
        let mut linker = Linker::new(&inner.engine);
        stand_ins::link(&mut linker, &component).map_err(LoadError::Link)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(LoadError::Link)?;
        let pre = RuleBindingsPre::new(instance_pre).map_err(LoadError::Link)?;
        let mut live = Live::new(self, &pre).map_err(LoadError::Info)?;
        let info = live.call(self.inner.limits, |store, bindings| {
            bindings.call_info(store)
        });
        let info = info.map_err(LoadError::Info)?;
        check_info(&info).map_err(LoadError::InvalidInfo)?;
        Ok(CompiledRule {
            engine: self.clone(),
            pre,
            info: Arc::new(info),
            compiled,
        })
    }
}

/// How every WebAssembly binary, module or component, begins.
const WASM_MAGIC: &[u8] = b"\0asm";

/// What a file that is not WebAssembly begins with instead, in one line.
fn not_wasm(head: &[u8]) -> String {
    if head.is_empty() {
        "it is empty".to_owned()
    } else {
        format!(
            "it begins with {:?}, not {:?}",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(WASM_MAGIC)
        )
    }
}

/// Reads the component file at `path`, refusing one over `cap` bytes by its size before reading
/// it, and again if it grows past the cap while it is read (only `cap + 1` bytes are ever read).
pub fn read_component(path: &Path, cap: usize) -> Result<Vec<u8>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let too_large = |size| LoadError::TooLarge {
        what: format!("rule {}", path.display()),
        size,
        cap,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    if size > cap as u64 {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(cap));
    file.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > cap {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

fn check_info(info: &RuleInfo) -> Result<(), InvalidInfo> {
    if info.name.trim().is_empty() {
        return Err(InvalidInfo::EmptyName);
    }
    if info.version.trim().is_empty() {
        return Err(InvalidInfo::EmptyVersion);
    }
    // `name@version`, measured without building it.
    let len = info.name.len() + 1 + info.version.len();
    if len > MAX_STAMP_BYTES {
        return Err(InvalidInfo::StampTooLong {
            len,
            cap: MAX_STAMP_BYTES,
        });
    }
    if info.statuses.is_empty() {
        return Err(InvalidInfo::NoStatuses);
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(duplicate) = info.statuses.iter().find(|s| !seen.insert(s.as_str())) {
        return Err(InvalidInfo::DuplicateStatus(duplicate.clone()));
    }
    Ok(())
}

/// Advances the engine's epoch every tick until `stop` is set, so deadlines fire.
fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("converge-epoch".to_owned())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
    Ok(())
}

/// A compiled, linked rule: cheap to clone, cheap to instantiate.
#[derive(Clone)]
pub struct CompiledRule {
    engine: RuleEngine,
    pre: RuleBindingsPre<RuleCtx>,
    info: Arc<RuleInfo>,
    compiled: Compiled,
}

/// How a component became native code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compiled {
    /// How long compiling (or loading from the compile cache) took.
    pub took: Duration,
    /// Loaded from the engine's compile cache rather than compiled. Counted from the cache's
    /// hits, so two engines sharing one cache that load at the same instant may both see a hit.
    pub from_cache: bool,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl CompiledRule {
    /// The rule's name, version and statuses, as it answered when compiled.
    pub fn info(&self) -> &RuleInfo {
        &self.info
    }

    /// How the component became native code: compiled, or loaded from the compile cache.
    pub fn compiled(&self) -> Compiled {
        self.compiled
    }

    /// A rule to call. The instance is created on first use and again after any failed call.
    pub fn instance(&self) -> WasmRule {
        WasmRule {
            compiled: self.clone(),
            live: None,
        }
    }
}

/// A rule component ready to decide. Not `Sync`: give each worker its own.
pub struct WasmRule {
    compiled: CompiledRule,
    live: Option<Live>,
}

impl std::fmt::Debug for WasmRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRule")
            .field("info", &self.compiled.info)
            .field("instantiated", &self.live.is_some())
            .finish()
    }
}

impl WasmRule {
    /// Creates the instance now, if there is none, so that the next call does not: a rule
    /// taken up on a latency-sensitive task (the pipeline's, at a swap) is instantiated
    /// beforehand elsewhere, since a big component (an interpreter) takes milliseconds.
    pub fn instantiate(&mut self) -> Result<(), DecideError> {
        if self.live.is_none() {
            self.live = Some(Live::new(&self.compiled.engine, &self.compiled.pre)?);
        }
        Ok(())
    }

    /// Whether it holds a live instance: its next call creates none.
    pub fn is_instantiated(&self) -> bool {
        self.live.is_some()
    }

    /// Runs one call on the live instance (creating it if needed); drops the instance if the
    /// call fails, so that no state of a half-run call survives.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Store<RuleCtx>, &RuleBindings) -> wasmtime::Result<T>,
    ) -> Result<T, DecideError> {
        let limits = self.compiled.engine.limits();
        let mut live = match self.live.take() {
            Some(live) => live,
            None => Live::new(&self.compiled.engine, &self.compiled.pre)?,
        };
        let result = live.call(limits, f);
        if result.is_ok() {
            self.live = Some(live);
        }
        result
    }
}

impl Rule for WasmRule {
    fn info(&self) -> &RuleInfo {
        &self.compiled.info
    }

    fn decide(
        &mut self,
        current: Option<&State>,
        incoming: &Event,
    ) -> Result<Decision, DecideError> {
        let decision =
            self.call(|store, bindings| bindings.call_decide(store, current, incoming))?;
        rule::validate(&self.compiled.info, current, incoming, &decision)?;
        Ok(decision)
    }

    fn decide_batch(
        &mut self,
        items: &[(Option<State>, Event)],
    ) -> Result<Vec<Decision>, DecideError> {
        let decisions = self.call(|store, bindings| bindings.call_decide_batch(store, items))?;
        if decisions.len() != items.len() {
            return Err(DecideError::InvalidDecision(
                ContractViolation::BatchLength {
                    answered: decisions.len(),
                    asked: items.len(),
                },
            ));
        }
        for ((current, incoming), decision) in items.iter().zip(&decisions) {
            rule::validate(&self.compiled.info, current.as_ref(), incoming, decision)?;
        }
        Ok(decisions)
    }
}

/// One instance and the store that owns it.
struct Live {
    store: Store<RuleCtx>,
    bindings: RuleBindings,
}

impl Live {
    fn new(engine: &RuleEngine, pre: &RuleBindingsPre<RuleCtx>) -> Result<Self, DecideError> {
        let limits = engine.limits();
        let ctx = RuleCtx {
            limiter: Limiter::new(limits),
            stand_ins: StandIns::new(),
        };
        let mut store = Store::new(&engine.inner.engine, ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        store.set_epoch_deadline(deadline_ticks(limits.deadline));
        let bindings = pre.instantiate(&mut store).map_err(|error| {
            let error = over_counts(error, limits);
            classify(error, &mut store, limits, DecideError::Instantiate)
        })?;
        Ok(Self { store, bindings })
    }

    fn call<T>(
        &mut self,
        limits: EngineLimits,
        f: impl FnOnce(&mut Store<RuleCtx>, &RuleBindings) -> wasmtime::Result<T>,
    ) -> Result<T, DecideError> {
        self.store
            .set_epoch_deadline(deadline_ticks(limits.deadline));
        // A refusal the previous call survived (a failed `memory.grow` or `table.grow` it
        // handled) does not explain this call's failure.
        self.store.data_mut().limiter.refused = None;
        f(&mut self.store, &self.bindings)
            .map_err(|error| classify(error, &mut self.store, limits, DecideError::Trap))
    }
}

/// Names the caps when instantiation failed on one of them: wasmtime's own message ("resource
/// limit exceeded: memory count too high at 5") does not say that they are converge's.
fn over_counts(error: wasmtime::Error, limits: EngineLimits) -> wasmtime::Error {
    if !format!("{error:#}").contains("resource limit exceeded") {
        return error;
    }
    error.context(format!(
        "the rule creates more than converge allows one rule instance: {} core instances, {} \
         memories, {} tables",
        limits.max_instances, limits.max_memories, limits.max_tables
    ))
}

/// Turns a wasmtime error into the reason a call failed.
fn classify(
    error: wasmtime::Error,
    store: &mut Store<RuleCtx>,
    limits: EngineLimits,
    otherwise: fn(rule::WasmError) -> DecideError,
) -> DecideError {
    if let Some(requested) = store.data_mut().limiter.refused.take() {
        return DecideError::MemoryCap {
            requested,
            cap: limits.memory_cap_bytes,
        };
    }
    if matches!(
        error.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    ) {
        return DecideError::Deadline(limits.deadline);
    }
    otherwise(error.into())
}

fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    u64::try_from(deadline.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What a rule's store holds: its limiter and the deterministic WASI it may read.
struct RuleCtx {
    limiter: Limiter,
    stand_ins: StandIns,
}

impl wasmtime_wasi::WasiView for RuleCtx {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        self.stand_ins.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, version: &str) -> RuleInfo {
        RuleInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            statuses: vec!["paid".to_owned()],
        }
    }

    #[test]
    fn wedge_a_rule_stamp_over_the_cap_is_refused_at_load() {
        let long = "v".repeat(1 << 20);
        for (name, version) in [("huge", long.as_str()), (long.as_str(), "1.0.0")] {
            match check_info(&info(name, version)) {
                Err(error @ InvalidInfo::StampTooLong { len, cap }) => {
                    assert_eq!(
                        (len, cap),
                        (name.len() + 1 + version.len(), MAX_STAMP_BYTES)
                    );
                    let message = error.to_string();
                    assert!(message.contains("name@version"), "{message}");
                    assert!(message.contains("256"), "{message}");
                }
                other => panic!("a {} byte stamp must be refused, got {other:?}", long.len()),
            }
        }
        // At the cap exactly it passes.
        let name = "n".repeat(MAX_STAMP_BYTES - 6);
        assert_eq!(info(&name, "1.0.0").stamp().len(), MAX_STAMP_BYTES);
        assert_eq!(check_info(&info(&name, "1.0.0")), Ok(()));
    }
}
