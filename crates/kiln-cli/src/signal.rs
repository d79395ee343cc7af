//! SIGINT and SIGTERM both start a graceful shutdown; a second signal exits at once.

/// Resolves at the first SIGINT or SIGTERM; the second one ends the process with status 130.
pub async fn shutdown() {
    wait_for_signal().await;
    tracing::info!("signal received: shutting down gracefully (send it again to exit now)");
    tokio::spawn(async {
        wait_for_signal().await;
        crate::log::say(tracing::Level::WARN, "kiln: second signal, exiting now");
        std::process::exit(130);
    });
}

/// Resolves at the first SIGINT or SIGTERM (for commands that clean up and exit on it).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
