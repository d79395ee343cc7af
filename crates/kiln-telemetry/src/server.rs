//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::health::Health;

/// OpenMetrics text, which Prometheus scrapes natively.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    rss: Gauge,
    connected: Gauge,
    health: Health,
}

/// Listen on `addr` and serve `registry` and `health` until the returned server is dropped.
/// Adds `process_resident_memory_bytes` and `kiln_nats_connected` to the registry. Fails when
/// the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    mut registry: Registry,
    health: Health,
) -> std::io::Result<MetricsServer> {
    let rss = Gauge::default();
    registry.register(
        "process_resident_memory_bytes",
        "Resident memory of this process in bytes",
        rss.clone(),
    );
    // A role cut off from NATS still answers scrapes (`up` stays 1) with the gauges it read
    // last: this says whether they are current.
    let connected = Gauge::default();
    registry.register(
        "kiln_nats_connected",
        "1 while this process is connected to NATS, 0 while it is not (its other gauges are \
         then the last values it read)",
        connected.clone(),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("could not listen on --metrics-addr {addr}: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    let state = AppState {
        registry: Arc::new(registry),
        rss,
        connected,
        health,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(MetricsServer { addr, task })
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.connected.set(i64::from(state.health.connected()));
    // Reading /proc and encoding are blocking work: keep them off the executor.
    let encoded = tokio::task::spawn_blocking(move || {
        if let Some(bytes) = process_resident_memory_bytes() {
            state.rss.set(bytes as i64);
        }
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &state.registry).map(|()| text)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode the metrics\n",
        )
            .into_response(),
    }
}

/// Liveness: the process answers, so its runtime runs. Not tied to NATS (a broken connection
/// is for `/readyz`; restarting the process would not mend the server).
async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// This process's resident set size in bytes, from `/proc/self/status` (Linux); `None`
/// elsewhere. Blocking (a file read).
pub fn process_resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
