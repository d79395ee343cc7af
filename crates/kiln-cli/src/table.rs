//! Plain-text tables of metrics snapshots (status, watch, demo).

use std::fmt::Write as _;

use kiln_proto::MetricsSnapshot;

/// One row per (kind, class), plus a GPU-vs-CPU speedup column where both classes ran the
/// kind (ratio of mean compute times of succeeded jobs; `-` where a class has none).
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
                .filter(|cpu| {
                    s.compute_ms.count > 0 && s.compute_ms.mean > 0.0 && cpu.compute_ms.count > 0
                })
                .map(|cpu| format!("{:.1}x", cpu.compute_ms.mean / s.compute_ms.mean))
                .unwrap_or_else(|| "-".into())
        } else {
            "-".into()
        };
        let compute = match s.compute_ms.count {
            0 => "-".to_owned(),
            _ => format!("{:.3}", s.compute_ms.mean),
        };
        let _ = writeln!(
            out,
            "{:<11} {:<5} {:>8} {:>8} {:>7} {:>10.1} {:>10.2} {:>10.2} {:>10.2} {:>11} {:>8}",
            s.kind,
            s.class,
            s.jobs,
            s.succeeded,
            s.failed,
            s.throughput_per_s,
            s.total_ms.p50,
            s.total_ms.p99,
            s.queue_ms.p50,
            compute,
            speedup
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use kiln_aggregator::{ErrorHead, Folds, ResultHead};
    use kiln_proto::{DeviceClass, ErrorKind, Status};
    use time::OffsetDateTime;

    fn result(id: &str, class: DeviceClass, status: Status, compute_ms: f64) -> ResultHead {
        ResultHead {
            id: id.into(),
            kind: "train_mlp".into(),
            status,
            device: "none".into(),
            class,
            worker: "w".into(),
            attempt: 1,
            finished_at: OffsetDateTime::now_utc(),
            queue_ms: 1.0,
            compute_ms,
            total_ms: compute_ms + 1.0,
            error: (status == Status::Failed).then_some(ErrorHead {
                kind: ErrorKind::InvalidInput,
            }),
            routing: None,
            replay: 0,
            flops: 0.0,
        }
    }

    fn row<'a>(table: &'a str, class: &str) -> Vec<&'a str> {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(class))
            .unwrap_or_else(|| panic!("no {class} row in\n{table}"))
            .split_whitespace()
            .collect()
    }

    /// A class whose jobs all failed before reaching a device has no compute time and no
    /// speedup, not the CPU's mean over zero.
    #[test]
    fn failed_jobs_make_no_compute_time_or_speedup() {
        let mut folds = Folds::default();
        folds.add(&result("c", DeviceClass::Cpu, Status::Succeeded, 80.0));
        folds.add(&result("g1", DeviceClass::Gpu, Status::Failed, 0.0));
        folds.add(&result("g2", DeviceClass::Gpu, Status::Failed, 0.0));
        let first = folds.snapshots(OffsetDateTime::now_utc());
        let table = super::metrics_table(&first);
        let gpu = row(&table, "gpu");
        assert_eq!((gpu[2], gpu[3], gpu[4]), ("2", "0", "2"), "{table}");
        assert_eq!(&gpu[9..], ["-", "-"], "compute ms and speedup:\n{table}");
        let cpu = row(&table, "cpu");
        let ms = |cell: &str| cell.parse::<f64>().expect("a time in ms");
        // The histograms keep three significant digits.
        assert!((ms(cpu[9]) - 80.0).abs() < 0.1, "{table}");

        // Once the GPU has succeeded once, the speedup is the ratio of the succeeded means.
        folds.add(&result("g3", DeviceClass::Gpu, Status::Succeeded, 20.0));
        // Only the changed (gpu) snapshot is new; the cpu one stands.
        let mut latest = folds.snapshots(OffsetDateTime::now_utc());
        latest.extend(first.into_iter().filter(|s| s.class == "cpu"));
        let table = super::metrics_table(&latest);
        let gpu = row(&table, "gpu");
        assert!((ms(gpu[9]) - 20.0).abs() < 0.1, "{table}");
        assert_eq!(gpu[10], "4.0x", "{table}");
    }
}
