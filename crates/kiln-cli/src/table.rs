//! Plain-text tables of metrics snapshots (status, watch, demo).

use std::fmt::Write as _;

use kiln_proto::MetricsSnapshot;

/// One row per (kind, class), plus a GPU-vs-CPU speedup column where both classes ran the
/// kind (ratio of mean compute times).
pub fn metrics_table(snapshots: &[MetricsSnapshot]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:<5} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>11} {:>8}",
        "kind",
        "class",
        "jobs",
        "ok",
        "failed",
        "jobs/s",
        "p50 ms",
        "p99 ms",
        "queue p50",
        "compute ms",
        "speedup"
    );
    if snapshots.is_empty() {
        let _ = writeln!(out, "(no results yet)");
        return out;
    }
    for s in snapshots {
        let speedup = if s.class == "gpu" {
            snapshots
                .iter()
                .find(|o| o.kind == s.kind && o.class == "cpu")
                .filter(|cpu| s.compute_ms.mean > 0.0 && cpu.compute_ms.count > 0)
                .map(|cpu| format!("{:.1}x", cpu.compute_ms.mean / s.compute_ms.mean))
                .unwrap_or_else(|| "-".into())
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<11} {:<5} {:>8} {:>8} {:>7} {:>10.1} {:>10.2} {:>10.2} {:>10.2} {:>11.3} {:>8}",
            s.kind,
            s.class,
            s.jobs,
            s.succeeded,
            s.failed,
            s.throughput_per_s,
            s.total_ms.p50,
            s.total_ms.p99,
            s.queue_ms.p50,
            s.compute_ms.mean,
            speedup
        );
    }
    out
}
