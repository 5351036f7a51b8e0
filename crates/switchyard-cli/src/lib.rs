//! The `yard` command's library side: the services `yard serve` starts — the example listener
//! of microservices_connector's tutorial and the echo test service — shared by `yard demo` and
//! the tests.

pub mod echo;
pub mod tutorial;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (what service managers and container
/// runtimes send): long-running commands then stop taking work, finish what is in flight, and
/// exit.
pub async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
