//! Each role's metrics. Names follow Prometheus conventions: `kiln_` prefix, base units
//! (`_seconds`, `_bytes`), counters exposed with `_total`.

mod aggregator;
mod build;
mod labels;
mod scheduler;
mod worker;

pub use aggregator::AggregatorMetrics;
pub use build::register_build_info;
pub use labels::{
    ClassLabels, ConsumerLabels, FailureLabels, JobLabels, KindClassLabels, KindLabels,
    KindStatusLabels, SizeLabels,
};
pub use scheduler::SchedulerMetrics;
pub use worker::{LatencyHistogram, WorkerMetrics};

use prometheus_client::metrics::histogram::Histogram;

/// Histogram buckets (seconds) of every latency: 100 µs to 5 minutes, about 2.5× apart — a
/// microsecond vector add and a minute of training both land in a bucket that says something.
pub const LATENCY_BUCKETS_S: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 25.0, 60.0, 120.0, 300.0,
];

pub(crate) fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

/// The size bucket of a job of `flops` floating-point operations: its decade, as `"1e6"` for
/// 10⁶ ≤ flops < 10⁷ (`"0"` below 1). A vector add of n elements is n flops, a matmul
/// 2·m·k·n, a conv2d 2·batch·channels·height·width·taps, train_mlp 8·parameters·samples·epochs.
pub fn size_bucket(flops: f64) -> String {
    size_label(flops_decade(flops))
}

/// The label of a [`flops_decade`]: `"1e6"` for 6, `"0"` for -1.
pub fn size_label(decade: i32) -> String {
    match decade {
        ..0 => "0".to_owned(),
        decade => format!("1e{decade}"),
    }
}

/// The decade of `flops` that [`size_bucket`] names (6 for 10⁶ ≤ flops < 10⁷), -1 below 1 or
/// when not finite; for counting by size without making the label each time.
pub fn flops_decade(flops: f64) -> i32 {
    if !flops.is_finite() || flops < 1.0 {
        return -1;
    }
    // log10 of an f64 can land a hair under an exact power of ten; nudge it.
    (flops.log10() + 1e-9).floor() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_buckets_are_decades() {
        assert_eq!(size_bucket(0.0), "0");
        assert_eq!(size_bucket(1.0), "1e0");
        assert_eq!(size_bucket(999.0), "1e2");
        assert_eq!(size_bucket(1000.0), "1e3");
        assert_eq!(size_bucket(2.0 * 512.0 * 512.0 * 512.0), "1e8");
        assert_eq!(size_bucket(f64::NAN), "0");
        assert_eq!((flops_decade(0.5), flops_decade(2e9)), (-1, 9));
        assert_eq!(
            (size_label(-1), size_label(9)),
            ("0".to_owned(), "1e9".to_owned())
        );
    }
}
