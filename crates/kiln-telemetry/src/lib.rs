#![warn(missing_docs, unreachable_pub)]
//! kiln's observability, shared by the long-running roles (worker, aggregator, scheduler) and
//! by `kiln submit`:
//!
//! - [`serve`]: the HTTP endpoint behind `--metrics-addr` — `GET /metrics` (Prometheus /
//!   OpenMetrics text), `GET /healthz` (liveness), `GET /readyz` (connected to NATS and, for
//!   workers, warmed up; 503 with a one-line reason otherwise);
//! - [`WorkerMetrics`], [`AggregatorMetrics`], [`SchedulerMetrics`]: each role's metrics,
//!   named per Prometheus conventions (`kiln_` prefix, `_total` counters, `_seconds`
//!   histograms); a role's config carries a default, unregistered set, so that code that does
//!   not serve metrics pays only for a few atomic adds; [`register_build_info`] adds
//!   `kiln_build_info{version, role}` to any role's registry;
//! - [`trace`]: OpenTelemetry spans linked across processes by W3C trace context
//!   (`traceparent`, `tracestate`) in NATS headers, exported over OTLP only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set — otherwise nothing is created per job.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use kiln_telemetry::{Health, Registry, WorkerMetrics};
//! let mut registry = Registry::default();
//! let metrics = WorkerMetrics::default();
//! metrics.register(&mut registry, "host-cpu-1", "cpu", "cpu");
//! let health = Health::default();
//! let addr = "127.0.0.1:9464".parse().unwrap();
//! let server = kiln_telemetry::serve(addr, registry, health.clone()).await?;
//! health.serving();
//! # drop(server); Ok(()) }
//! ```

mod export;
mod health;
mod metrics;
mod server;
pub mod trace;

pub use health::Health;
pub use metrics::{
    AggregatorMetrics, ClassLabels, ConsumerLabels, FailureLabels, JobLabels, KindClassLabels,
    KindLabels, KindStatusLabels, LATENCY_BUCKETS_S, LatencyHistogram, SchedulerMetrics,
    SizeLabels, WorkerMetrics, flops_decade, register_build_info, size_bucket, size_label,
};
pub use prometheus_client::registry::Registry;
pub use server::{MetricsServer, process_resident_memory_bytes, serve};
