//! `--metrics-addr`: the Prometheus and health endpoint of the long-running roles.

use anyhow::Context as _;
use kiln_telemetry::{Health, MetricsServer, Registry};

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` (a HOST:PORT) with
/// `kiln_build_info{role}` and the metrics `register` adds; nothing when `addr` is `None`. Started before the role connects, so that
/// `/healthz` answers (and `/readyz` says why not ready) while NATS is still unreachable.
pub async fn serve(
    addr: Option<&str>,
    role: &str,
    health: &Health,
    register: impl FnOnce(&mut Registry),
) -> anyhow::Result<Option<MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let resolved = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr:?}: give a HOST:PORT such as 0.0.0.0:9464"))?
        .next()
        .with_context(|| format!("--metrics-addr {addr:?}: the host has no address"))?;
    let mut registry = Registry::default();
    kiln_telemetry::register_build_info(&mut registry, role);
    register(&mut registry);
    let server = kiln_telemetry::serve(resolved, registry, health.clone()).await?;
    Ok(Some(server))
}
