//! [`Shutdown`]: how anything long-running in converge is asked to stop.

use tokio::sync::watch;

/// A request to stop, shared by clones; it is made once, by its [`ShutdownTrigger`] or a
/// signal, and every clone sees it.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Makes the request that every [`Shutdown`] made with it sees. Dropped without
/// [`ShutdownTrigger::trigger`], it never asks.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    /// A shutdown and the trigger that requests it.
    pub fn new() -> (ShutdownTrigger, Self) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger(sender), Self(receiver))
    }

    /// A shutdown that is never requested (a run that ends with its input).
    pub fn never() -> Self {
        Self::new().1
    }

    /// Requested by SIGINT or SIGTERM. The handlers are installed before this returns, not at
    /// the first poll: a signal that arrives while a process is still starting (compiling and
    /// gating its rule) is a request to stop, which it honours at its next wait, instead of the
    /// default action that kills it mid-start. Needs a Tokio runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        let (trigger, shutdown) = Self::new();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut interrupt = signal(SignalKind::interrupt())?;
            let mut terminate = signal(SignalKind::terminate())?;
            tokio::spawn(async move {
                let name = tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                };
                tracing::info!(signal = name, "shutdown requested");
                trigger.trigger();
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("shutdown requested");
                trigger.trigger();
            }
        });
        Ok(shutdown)
    }

    /// Whether the stop was requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the stop is requested (never, if its trigger was dropped unused).
    pub async fn requested(&mut self) {
        if self.0.wait_for(|requested| *requested).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// [`Shutdown::requested`] as an owned future, for APIs that take `impl Future`.
    pub async fn wait(mut self) {
        self.requested().await
    }
}

impl ShutdownTrigger {
    /// Requests the stop; every [`Shutdown`] made with this trigger sees it.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Another [`Shutdown`] this trigger requests.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_reaches_every_clone_and_a_dropped_one_never_asks() {
        let (trigger, shutdown) = Shutdown::new();
        let mut clone = shutdown.clone();
        assert!(!shutdown.is_requested());
        trigger.trigger();
        clone.requested().await;
        assert!(shutdown.is_requested());

        let never = Shutdown::never();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), never.wait()).await;
        assert!(waited.is_err(), "a dropped trigger requested a stop");
    }
}
