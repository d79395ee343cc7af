//! `kiln aggregator` metrics: the whole system's view, from result events.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::labels::{
    ClassLabels, ConsumerLabels, FailureLabels, JobLabels, KindClassLabels, SizeLabels,
};
use super::worker::LatencyHistogram;

type FloatGauge = Gauge<f64, AtomicU64>;
type Latencies = Family<KindClassLabels, Histogram, LatencyHistogram>;

/// The aggregator's metrics. Cloning shares them. Counts start at the process's start (the
/// durable totals are the `metrics.<kind>.<class>` snapshots).
#[derive(Clone, Debug)]
pub struct AggregatorMetrics {
    /// `kiln_jobs_total{kind, class, status}`: distinct jobs finished (duplicates dropped).
    pub jobs: Family<JobLabels, Counter>,
    /// `kiln_job_failures_total{kind, class, error}`: failed jobs by error kind.
    pub failures: Family<FailureLabels, Counter>,
    /// `kiln_result_duplicates_total{kind, class}`: result events dropped because their job
    /// was already counted.
    pub duplicates: Family<KindClassLabels, Counter>,
    /// `kiln_results_dropped_unread_total`: results `KILN_RESULTS` dropped (its age or size
    /// limit) before any aggregator read them, which the job counts miss.
    pub dropped_unread: Counter,
    /// `kiln_job_queue_seconds{kind, class}`: enqueue → start on a worker.
    pub queue_seconds: Latencies,
    /// `kiln_job_compute_seconds{kind, class}`: time on the device.
    pub compute_seconds: Latencies,
    /// `kiln_job_total_seconds{kind, class}`: enqueue → finish.
    pub total_seconds: Latencies,
    /// `kiln_throughput_jobs_per_second{kind, class}`: jobs finished per second over the last
    /// snapshot interval (`rate(kiln_jobs_total[…])` says the same over any window).
    pub throughput: Family<KindClassLabels, FloatGauge>,
    /// `kiln_consumer_pending_messages{consumer}`: messages not yet delivered.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// `kiln_consumer_ack_pending_messages{consumer}`: delivered, not yet acknowledged (in
    /// flight).
    pub consumer_ack_pending: Family<ConsumerLabels, Gauge>,
    /// `kiln_backlog_jobs{class}`: pending + in flight on the class's job consumer (`gpu`:
    /// workers-gpu, `cpu`: workers-cpu, `auto`: scheduler).
    pub backlog: Family<ClassLabels, Gauge>,
    /// `kiln_dead_letters`: messages in `KILN_DLQ` (jobs given up on, kept 30 days). One
    /// series with no labels (`set_dead_letters`), absent until `KILN_DLQ` was read: a 0 on
    /// the first scrape, before the first read, then the true count, fired the growth alert
    /// at every aggregator restart.
    pub dead_letters: Family<Vec<(String, String)>, Gauge>,
    /// `kiln_workers_live{class}`: workers with a live heartbeat in `KILN_WORKERS`, by the
    /// class they serve (`gpu`, `cpu`; 0 when none).
    pub workers_live: Family<ClassLabels, Gauge>,
    /// `kiln_gpu_speedup_ratio{kind, size}`: mean CPU compute time ÷ mean GPU compute time of
    /// succeeded jobs of that kind and size bucket; present once both classes ran one.
    pub speedup: Family<SizeLabels, FloatGauge>,
    /// `kiln_scheduler_prediction_error_seconds{kind, class}`: |predicted − measured|
    /// completion time of routed (auto) jobs.
    pub prediction_error_seconds: Latencies,
}

impl Default for AggregatorMetrics {
    fn default() -> Self {
        Self {
            jobs: Family::default(),
            failures: Family::default(),
            duplicates: Family::default(),
            dropped_unread: Counter::default(),
            queue_seconds: Family::new_with_constructor(LatencyHistogram),
            compute_seconds: Family::new_with_constructor(LatencyHistogram),
            total_seconds: Family::new_with_constructor(LatencyHistogram),
            throughput: Family::default(),
            consumer_pending: Family::default(),
            consumer_ack_pending: Family::default(),
            backlog: Family::default(),
            dead_letters: Family::default(),
            workers_live: Family::default(),
            speedup: Family::default(),
            prediction_error_seconds: Family::new_with_constructor(LatencyHistogram),
        }
    }
}

impl AggregatorMetrics {
    /// `kiln_jobs_total` of every status and `kiln_job_failures_total` of every error in
    /// `errors`, for each of `kinds` on each class, at 0 from the start: a series that first
    /// appears at 30 (an aggregator's first fold after a restart or a take-over counts a whole
    /// batch at once) has no increase to Prometheus, so a burst of failures of a kind not
    /// seen since the restart fired no alert.
    pub fn zeroed(&self, kinds: &[&str], errors: &[&str]) {
        for kind in kinds {
            // `auto`: the scheduler's own answers (no room, too large, cancelled while held).
            for class in ["gpu", "cpu", "auto"] {
                for status in ["succeeded", "failed"] {
                    let _ = self.jobs.get_or_create(&JobLabels {
                        kind: (*kind).to_owned(),
                        class: class.to_owned(),
                        status: status.to_owned(),
                    });
                }
                for error in errors {
                    let _ = self.failures.get_or_create(&FailureLabels {
                        kind: (*kind).to_owned(),
                        class: class.to_owned(),
                        error: (*error).to_owned(),
                    });
                }
            }
        }
    }

    /// `kiln_dead_letters` is `count`.
    pub fn set_dead_letters(&self, count: u64) {
        self.dead_letters
            .get_or_create(&Vec::new())
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Register every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kiln_jobs",
            "Distinct jobs finished, by kind, device class and status",
            self.jobs.clone(),
        );
        registry.register(
            "kiln_job_failures",
            "Failed jobs by kind, device class and error kind",
            self.failures.clone(),
        );
        registry.register(
            "kiln_result_duplicates",
            "Result events dropped because their job was already counted",
            self.duplicates.clone(),
        );
        registry.register(
            "kiln_results_dropped_unread",
            "Results dropped from KILN_RESULTS (its age or size limit) before any aggregator \
             read them: missing from the job counts",
            self.dropped_unread.clone(),
        );
        registry.register(
            "kiln_job_queue_seconds",
            "Time from enqueue to the start on a worker",
            self.queue_seconds.clone(),
        );
        registry.register(
            "kiln_job_compute_seconds",
            "Time on the device, inputs and read-back included",
            self.compute_seconds.clone(),
        );
        registry.register(
            "kiln_job_total_seconds",
            "Time from enqueue to finish",
            self.total_seconds.clone(),
        );
        registry.register(
            "kiln_throughput_jobs_per_second",
            "Jobs finished per second over the last snapshot interval",
            self.throughput.clone(),
        );
        registry.register(
            "kiln_consumer_pending_messages",
            "Messages of a durable consumer not yet delivered",
            self.consumer_pending.clone(),
        );
        registry.register(
            "kiln_consumer_ack_pending_messages",
            "Messages of a durable consumer delivered and not yet acknowledged",
            self.consumer_ack_pending.clone(),
        );
        registry.register(
            "kiln_backlog_jobs",
            "Jobs pending or in flight on a device class's consumer",
            self.backlog.clone(),
        );
        registry.register(
            "kiln_dead_letters",
            "Messages in the dead-letter stream KILN_DLQ",
            self.dead_letters.clone(),
        );
        registry.register(
            "kiln_workers_live",
            "Workers with a live heartbeat in KILN_WORKERS, by the device class they serve",
            self.workers_live.clone(),
        );
        registry.register(
            "kiln_gpu_speedup_ratio",
            "Mean CPU compute time over mean GPU compute time, by kind and flops decade",
            self.speedup.clone(),
        );
        registry.register(
            "kiln_scheduler_prediction_error_seconds",
            "Absolute error of the scheduler's predicted completion time for routed jobs",
            self.prediction_error_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &AggregatorMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn dead_letters_are_absent_until_read() {
        let metrics = AggregatorMetrics::default();
        let before = exposition(&metrics);
        assert!(!before.contains("\nkiln_dead_letters "), "{before}");
        metrics.set_dead_letters(3);
        let after = exposition(&metrics);
        assert!(after.contains("\nkiln_dead_letters 3\n"), "{after}");
    }
}
