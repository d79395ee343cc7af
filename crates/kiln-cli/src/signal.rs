//! SIGINT and SIGTERM both start a graceful shutdown; a second signal exits at once.

use std::future::Future;

/// Resolves at the first SIGINT or SIGTERM; the second one ends the process with status 130.
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// role polls it only once it pulls, and a signal between the call and then (a worker that
/// had just said "worker serving") took the default action and killed the process.
pub fn shutdown() -> impl Future<Output = ()> {
    let mut signals = Signals::install();
    async move {
        signals.recv().await;
        tracing::info!("signal received: shutting down gracefully (send it again to exit now)");
        tokio::spawn(async move {
            signals.recv().await;
            crate::log::say(tracing::Level::WARN, "kiln: second signal, exiting now");
            std::process::exit(130);
        });
    }
}

/// Resolves at the first SIGINT or SIGTERM (for commands that clean up and exit on it).
pub fn wait_for_signal() -> impl Future<Output = ()> {
    let mut signals = Signals::install();
    async move { signals.recv().await }
}

/// SIGINT and SIGTERM, caught from the moment this is made.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                interrupt: signal(SignalKind::interrupt()).expect("install a SIGINT handler"),
                terminate: signal(SignalKind::terminate()).expect("install a SIGTERM handler"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
