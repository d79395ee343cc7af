//! Metrics snapshots, published on `metrics.<kind>.<class>` (stream `KILN_METRICS`, latest
//! per subject), and the latency histogram they carry.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Latency summary of one measure (queue, compute or total time), in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Durations recorded.
    pub count: u64,
    /// Their mean (0 when none).
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Longest recorded.
    pub max: f64,
    /// The full histogram (HdrHistogram V2, base64), so that a restarted aggregator can
    /// carry on from the last snapshot.
    #[serde(default)]
    pub hist: String,
}

/// Counts and latencies of one (kind, device class) pair, since the results stream began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Job kind (`matmul`, …; `unknown` for jobs of a kind this build does not run).
    pub kind: String,
    /// Device class the jobs ran on: `gpu` or `cpu`.
    pub class: String,
    /// Distinct jobs finished.
    pub jobs: u64,
    /// Of them, jobs whose result is `succeeded`.
    pub succeeded: u64,
    /// Of them, jobs whose result is `failed`.
    pub failed: u64,
    /// Failed jobs by error kind.
    #[serde(default)]
    pub failures: BTreeMap<String, u64>,
    /// Result events dropped because their job id was already counted.
    #[serde(default)]
    pub duplicates: u64,
    /// Devices that ran these jobs, with their job counts.
    #[serde(default)]
    pub devices: BTreeMap<String, u64>,
    /// Earliest `finished_at` of the jobs counted (`None`: no job yet).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub first_finished_at: Option<OffsetDateTime>,
    /// Latest `finished_at` of the jobs counted (`None`: no job yet).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_finished_at: Option<OffsetDateTime>,
    /// Jobs per second between the first and the last finish.
    pub throughput_per_s: f64,
    /// Jobs per second since the previous snapshot.
    pub recent_per_s: f64,
    /// Time in the queue, from enqueue to start, of the jobs counted.
    pub queue_ms: LatencyStats,
    /// Time on the device, inputs and read-back included, of the jobs counted.
    pub compute_ms: LatencyStats,
    /// Mean compute time of the succeeded jobs by size, the decade of their flops (`1e6`,
    /// `1e9`; `0` when a kind reports none), as `kiln_gpu_speedup_ratio`'s `size` label: a
    /// GPU-vs-CPU speedup compares jobs of one size, not two classes' different mixes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compute_by_size: BTreeMap<String, SizeMean>,
    /// Time from enqueue to finish of the jobs counted.
    pub total_ms: LatencyStats,
    /// How well the scheduler predicted these jobs' completion times (auto jobs only).
    #[serde(default)]
    pub prediction: PredictionStats,
    /// When the aggregator made this snapshot.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// A `KILN_RESULTS` sequence at or below which every result had been delivered to the
    /// aggregator that stored this snapshot (or acked before it started), and so is counted
    /// (0: not recorded). The aggregator acks results only after the snapshot that counts
    /// them is stored; one that restarts between the two gets those results again, and skips
    /// the ones at or below this sequence instead of counting them twice.
    #[serde(default)]
    pub results_through: u64,
    /// Ranges `[first, last]` of `KILN_RESULTS` sequences above `results_through` that the
    /// aggregator storing this snapshot had also counted (results delivered out of order:
    /// after a restart, older unacked ones come back only after the ack wait, behind newer
    /// ones). A restarted aggregator skips these too; at most [`MAX_RESULT_RANGES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results_above: Vec<[u64; 2]>,
}

/// The mean compute time of the succeeded jobs of one size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SizeMean {
    /// Jobs of that size counted.
    pub jobs: u64,
    /// Their mean compute time, ms.
    pub mean_ms: f64,
}

/// The decade a size label of [`MetricsSnapshot::compute_by_size`] stands for (`1e6` → 6,
/// `0` → -1; `None` for another label).
pub fn size_decade(label: &str) -> Option<i32> {
    match label {
        "0" => Some(-1),
        _ => label.strip_prefix("1e")?.parse().ok(),
    }
}

/// Most ranges a snapshot's `results_above` holds.
pub const MAX_RESULT_RANGES: usize = 256;

/// The scheduler's prediction error for routed jobs: predicted completion (queue wait + run
/// on the chosen class) against the measured `total_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PredictionStats {
    /// Routed jobs counted.
    pub routed: u64,
    /// Mean of |predicted − measured|, in milliseconds.
    pub mean_abs_error_ms: f64,
    /// Mean of predicted − measured (negative: the scheduler was optimistic).
    pub mean_error_ms: f64,
}

/// A latency histogram in microseconds, from 1 µs to about 3 days, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 1 << 38, 3).expect("static histogram bounds are valid"))
    }
}

impl Latency {
    /// Record one duration in milliseconds (negative or NaN values count as zero).
    pub fn record_ms(&mut self, ms: f64) {
        let micros = if ms.is_finite() && ms > 0.0 {
            (ms * 1000.0) as u64
        } else {
            0
        };
        self.0.saturating_record(micros.max(1));
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// The summary in milliseconds, with the histogram itself for a restart to carry on from.
    pub fn stats(&self) -> LatencyStats {
        let mut bytes = Vec::new();
        // Serialising into memory cannot fail for a valid histogram.
        let hist = match V2Serializer::new().serialize(&self.0, &mut bytes) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(&bytes),
            Err(_) => String::new(),
        };
        if self.0.is_empty() {
            return LatencyStats {
                hist,
                ..LatencyStats::default()
            };
        }
        LatencyStats {
            count: self.0.len(),
            mean: self.0.mean() / 1000.0,
            p50: self.quantile_ms(0.5),
            p90: self.quantile_ms(0.9),
            p99: self.quantile_ms(0.99),
            max: self.0.max() as f64 / 1000.0,
            hist,
        }
    }

    /// Rebuild a histogram from [`LatencyStats::hist`]; `None` when it is absent or corrupt.
    pub fn from_stats(stats: &LatencyStats) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&stats.hist)
            .ok()?;
        let hist: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .ok()?;
        let mut latency = Latency::default();
        latency.0.add(&hist).ok()?;
        Some(latency)
    }

    /// The values recorded here but not in `earlier`, a histogram of the same measure taken
    /// before this one: the latencies of the jobs finished in between. `None` when `earlier`
    /// holds values this one does not (a reset aggregator).
    pub fn since(&self, earlier: &Latency) -> Option<Latency> {
        let mut hist = self.0.clone();
        hist.subtract(&earlier.0).ok()?;
        Some(Latency(hist))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_round_trip() {
        let mut latency = Latency::default();
        for ms in 1..=100 {
            latency.record_ms(ms as f64);
        }
        let stats = latency.stats();
        assert_eq!(stats.count, 100);
        assert!((stats.p50 - 50.0).abs() < 0.1, "{}", stats.p50);
        assert!((stats.p99 - 99.0).abs() < 0.1, "{}", stats.p99);
        assert!((stats.max - 100.0).abs() < 0.1, "{}", stats.max);
        let back = Latency::from_stats(&stats).unwrap();
        assert_eq!(back.count(), 100);
        assert_eq!(back.stats().p90, stats.p90);
    }

    #[test]
    fn since_keeps_only_the_later_values() {
        let mut earlier = Latency::default();
        for _ in 0..10 {
            earlier.record_ms(1.0);
        }
        let mut later = earlier.clone();
        for _ in 0..5 {
            later.record_ms(50.0);
        }
        let window = later.since(&earlier).unwrap();
        assert_eq!(window.count(), 5);
        assert!((window.quantile_ms(0.5) - 50.0).abs() < 0.1);
        assert!(earlier.since(&later).is_none());
    }
}
