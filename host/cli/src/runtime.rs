//! The Tokio runtime a command runs on, and the stop SIGINT or SIGTERM asks of it.

use converge::shutdown::Shutdown;

/// A runtime on as many threads as there are cores, for the commands that talk to servers.
pub(crate) fn multi_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// [`Shutdown::on_signals`]; without handlers (which only fails when the process cannot
/// install any), only the end of the work stops it, and the operator is told.
pub(crate) fn signals(runtime: &tokio::runtime::Runtime) -> Shutdown {
    let _entered = runtime.enter();
    Shutdown::on_signals().unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot listen for SIGINT or SIGTERM; they will kill, not stop");
        Shutdown::never()
    })
}
