//! `kiln worker` metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::labels::{KindLabels, KindStatusLabels};

/// Builds latency histograms with [`LATENCY_BUCKETS_S`](crate::LATENCY_BUCKETS_S).
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        super::latency_histogram()
    }
}

/// A worker's metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    /// `kiln_worker_jobs_total{kind, status}`: jobs answered (`succeeded`, `failed`), handed
    /// back for another attempt (`retried`), or queued again unfinished because the worker
    /// stopped (`handed_back`, which spends no attempt).
    pub jobs: Family<KindStatusLabels, Counter>,
    /// `kiln_worker_jobs_in_flight`: jobs held now (computing, waiting for a compute slot, or
    /// publishing their result).
    pub in_flight: Gauge,
    /// `kiln_worker_compute_seconds{kind}`: time on the device per job.
    pub compute_seconds: Family<KindLabels, Histogram, LatencyHistogram>,
    /// `kiln_worker_device_memory_in_use_bytes`: CUDA: bytes CubeCL has allocated to live
    /// tensors; CPU: the process's resident memory.
    pub memory_in_use_bytes: Gauge,
    /// `kiln_worker_device_memory_reserved_bytes`: CUDA: bytes CubeCL holds from the driver
    /// (in use, padding and pooled); CPU: 0.
    pub memory_reserved_bytes: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            jobs: Family::default(),
            in_flight: Gauge::default(),
            compute_seconds: Family::new_with_constructor(LatencyHistogram),
            memory_in_use_bytes: Gauge::default(),
            memory_reserved_bytes: Gauge::default(),
        }
    }
}

impl WorkerMetrics {
    /// `kiln_worker_jobs_total` of every status for each of `kinds`, at 0 from the start (a
    /// series that first appears at a count other than 0 has no increase to Prometheus).
    pub fn zeroed(&self, kinds: &[&str]) {
        for kind in kinds {
            for status in ["succeeded", "failed", "retried", "handed_back"] {
                let _ = self.jobs.get_or_create(&KindStatusLabels {
                    kind: (*kind).to_owned(),
                    status: status.to_owned(),
                });
            }
        }
    }

    /// Register every metric, plus `kiln_worker_info{worker, device, class}` = 1.
    pub fn register(&self, registry: &mut Registry, worker: &str, device: &str, class: &str) {
        registry.register(
            "kiln_worker_jobs",
            "Jobs this worker answered (succeeded, failed), handed back (retried) or queued again unfinished (handed_back)",
            self.jobs.clone(),
        );
        registry.register(
            "kiln_worker_jobs_in_flight",
            "Jobs held now: computing, waiting for a compute slot, or publishing the result",
            self.in_flight.clone(),
        );
        registry.register(
            "kiln_worker_compute_seconds",
            "Time on the device per job, inputs and read-back included",
            self.compute_seconds.clone(),
        );
        registry.register(
            "kiln_worker_device_memory_in_use_bytes",
            "Device memory in use: CubeCL's live allocations on CUDA, resident memory on the CPU",
            self.memory_in_use_bytes.clone(),
        );
        registry.register(
            "kiln_worker_device_memory_reserved_bytes",
            "Device memory CubeCL holds from the CUDA driver (0 on CPU workers)",
            self.memory_reserved_bytes.clone(),
        );
        registry.register(
            "kiln_worker",
            "This worker: name, device and the class it serves",
            Info::new(vec![
                ("worker".to_owned(), worker.to_owned()),
                ("device".to_owned(), device.to_owned()),
                ("class".to_owned(), class.to_owned()),
            ]),
        );
    }

    /// Count one job by kind and status.
    pub fn job(&self, kind: &str, status: &str) {
        self.jobs
            .get_or_create(&KindStatusLabels {
                kind: kind.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// Record one job's compute time.
    pub fn compute(&self, kind: &str, seconds: f64) {
        self.compute_seconds
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(seconds);
    }
}
