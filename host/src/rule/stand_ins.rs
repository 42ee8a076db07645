//! The world a rule instance sees: WASI stand-ins that answer the same in every instance, and a
//! trap for every other function it may import (which interface is which: [`super::imports`]).
//!
//! The stand-ins are wasmtime's own WASI (`wasmtime-wasi`), configured to depend on nothing: a
//! fixed wall clock and monotonic clock, random bytes from a fixed seed, an empty environment,
//! standard streams that are no terminal (stdin closed, stdout and stderr discarding), no
//! preopened directory. Only interfaces whose every function answers at once are linked
//! from it: wasmtime's blocking WASI functions (waiting on a pollable, blocking stream
//! operations, file operations) run a Tokio `block_on`, which would stall or panic on the
//! pipeline's task, and a rule has no business waiting — a fixed clock would never let a wait
//! end — so those trap.

use std::sync::LazyLock;
use std::time::Duration;

use rand::{RngCore as _, SeedableRng as _};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, Resource, ResourceTable, ResourceType};
use wasmtime::{StoreContextMut, bail};
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::{
    Deterministic, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView,
    WasiView,
};

use super::imports;

/// What the wall clock says, always: 2000-01-01T00:00:00Z, a date no one takes for today.
pub const WALL_CLOCK: Duration = Duration::from_secs(946_684_800);

/// What the monotonic clock says, always, in nanoseconds: one second. Not zero, which runtimes
/// may take for "not read yet".
pub const MONOTONIC_CLOCK_NS: u64 = 1_000_000_000;

/// The seed of the random bytes every instance reads, in the same order.
pub const RANDOM_SEED: u64 = 0x636f_6e76_6572_6765; // "converge"

/// How many random bytes the seed gives before the sequence starts over. Runtimes read a few
/// dozen at start-up (hash seeds); a rule that reads more gets the same bytes again, which a
/// pure rule cannot tell from any other fixed sequence.
const RANDOM_PERIOD: usize = 4096;

/// The most random bytes one call may ask for; a larger request traps rather than make the
/// host allocate it (wasmtime's default is 64 MiB).
const MAX_RANDOM_REQUEST: u64 = RANDOM_PERIOD as u64;

/// The most host resources (pollables, in practice: a clock subscription) one instance may hold
/// at once; one more traps, so a rule cannot grow the host's table without bound.
const MAX_RESOURCES: usize = 256;

/// The fixed random sequence, drawn once from [`RANDOM_SEED`] (ChaCha12).
static RANDOM_BYTES: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut bytes = vec![0; RANDOM_PERIOD];
    rand::rngs::StdRng::seed_from_u64(RANDOM_SEED).fill_bytes(&mut bytes);
    bytes
});

/// The WASI state of one rule instance: a context that depends on nothing, and the table of
/// the host resources the instance holds.
pub(super) struct StandIns {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl StandIns {
    /// A fresh world, the same for every instance.
    pub(super) fn new() -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let ctx = WasiCtxBuilder::new()
            .wall_clock(FixedClock)
            .monotonic_clock(FixedClock)
            .secure_random(Deterministic::new(RANDOM_BYTES.clone()))
            .insecure_random(Deterministic::new(RANDOM_BYTES.clone()))
            .insecure_random_seed(u128::from(RANDOM_SEED))
            .max_random_size(MAX_RANDOM_REQUEST)
            .build();
        Self { ctx, table }
    }

    /// The view wasmtime's WASI works through.
    pub(super) fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// A clock that never moves.
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        WALL_CLOCK
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        MONOTONIC_CLOCK_NS
    }
}

/// Links what `component` imports: the stand-ins from wasmtime's WASI, every other allowed
/// import to functions that trap. The imports must have passed [`imports::forbidden`].
pub(super) fn link<T: WasiView + 'static>(
    linker: &mut Linker<T>,
    component: &Component,
) -> wasmtime::Result<()> {
    // Defined under wasmtime's own WASI version; an import of another 0.2.x resolves to them.
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(linker, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(linker, T::clocks)?;
    random::random::add_to_linker::<T, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<T, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(linker, |t| t.ctx().ctx.random())?;
    cli::environment::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(linker, T::cli)?;
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(linker, T::filesystem)?;

    // The rest under the component's own import names: an exact name is looked up first.
    let engine = linker.engine().clone();
    let component_type = component.component_type();
    for (name, import) in component_type.imports(&engine) {
        if imports::is_stand_in(name) {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = import.ty else {
            bail!("import `{name}` is not an interface");
        };
        let mut linked = linker.instance(name)?;
        for (item, export) in instance.exports(&engine) {
            match export.ty {
                ComponentItem::ComponentFunc(_) => {
                    let function = format!("{name}#{item}");
                    linked.func_new(item, move |_, _, _, _| {
                        bail!("`{function}` is not available to a rule (it traps)")
                    })?;
                }
                ComponentItem::Resource(_) => define_resource::<T>(&mut linked, item)?,
                _ => {}
            }
        }
    }
    Ok(())
}

/// Defines resource `item` of a trapping interface. A resource a stand-in hands out (a clock's
/// pollable, a standard stream, a preopened descriptor) must have the type wasmtime's WASI gives it — in every
/// interface that names it, as `wasi:io/streams` names `wasi:io/poll`'s pollable — and is dropped
/// from the instance's table; any other can never be created.
fn define_resource<T: WasiView + 'static>(
    linked: &mut wasmtime::component::LinkerInstance<'_, T>,
    item: &str,
) -> wasmtime::Result<()> {
    match item {
        "pollable" => linked.resource(
            item,
            ResourceType::host::<DynPollable>(),
            drop::<T, DynPollable>,
        ),
        "input-stream" => linked.resource(
            item,
            ResourceType::host::<DynInputStream>(),
            drop::<T, DynInputStream>,
        ),
        "output-stream" => linked.resource(
            item,
            ResourceType::host::<DynOutputStream>(),
            drop::<T, DynOutputStream>,
        ),
        "descriptor" => linked.resource(
            item,
            ResourceType::host::<Descriptor>(),
            drop::<T, Descriptor>,
        ),
        _ => linked.resource(item, ResourceType::host::<()>(), |_, _| Ok(())),
    }
}

/// Drops a resource the instance held from its table.
fn drop<T: WasiView, R: 'static>(
    mut store: StoreContextMut<'_, T>,
    rep: u32,
) -> wasmtime::Result<()> {
    store
        .data_mut()
        .ctx()
        .table
        .delete(Resource::<R>::new_own(rep))?;
    Ok(())
}
