//! Plain-text tables of metrics snapshots (status, watch, demo).

use std::fmt::Write as _;

use kiln_proto::MetricsSnapshot;

/// One row per (kind, class), plus a GPU-vs-CPU speedup column where both classes ran the
/// kind: mean CPU compute time over mean GPU compute time of succeeded jobs of one size (the
/// largest decade of flops both classes ran), so that two classes given different mixes of
/// sizes are not compared; `-` where they share no size.
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
        let cpu = snapshots
            .iter()
            .find(|o| o.kind == s.kind && o.class == "cpu");
        let speedup = match (s.class.as_str(), cpu) {
            ("gpu", Some(cpu)) => speedup_text(speedup(cpu, s)),
            _ => speedup_text(None),
        };
        let compute = match s.compute_ms.count {
            0 => "-".to_owned(),
            _ => format!("{:.3}", s.compute_ms.mean),
        };
        let _ = writeln!(
            out,
            "{:<11} {:<5} {:>8} {:>8} {:>7} {:>10} {:>10.2} {:>10.2} {:>10.2} {:>11} {:>8}",
            s.kind,
            s.class,
            s.jobs,
            s.succeeded,
            s.failed,
            rate_text(s),
            s.total_ms.p50,
            s.total_ms.p99,
            s.queue_ms.p50,
            compute,
            speedup
        );
    }
    out
}

/// `jobs/s` as the table shows it: over the jobs' first finish to their last, `-` where
/// those are less than 100 ms apart (two jobs 0.2 ms apart read as 4,096 jobs/s).
fn rate_text(s: &MetricsSnapshot) -> String {
    let span = match (s.first_finished_at, s.last_finished_at) {
        (Some(first), Some(last)) => (last - first).as_seconds_f64(),
        _ => 0.0,
    };
    match span >= 0.1 {
        true => format!("{:.1}", s.throughput_per_s),
        false => "-".to_owned(),
    }
}

/// A speedup as the tables show it: `12.3x`, or `-` where there is none.
pub(crate) fn speedup_text(speedup: Option<f64>) -> String {
    speedup.map_or_else(|| "-".into(), |x| format!("{x:.1}x"))
}

/// Mean CPU compute time over mean GPU compute time of one kind's succeeded jobs of the
/// largest size both classes ran. Where a class has no sizes (its snapshots come from an
/// aggregator older than them, or carried on from one), the two classes' overall means.
pub(crate) fn speedup(cpu: &MetricsSnapshot, gpu: &MetricsSnapshot) -> Option<f64> {
    let ratio = |cpu_ms: f64, gpu_ms: f64| (gpu_ms > 0.0 && cpu_ms > 0.0).then(|| cpu_ms / gpu_ms);
    if cpu.compute_by_size.is_empty() || gpu.compute_by_size.is_empty() {
        let counted = cpu.compute_ms.count > 0 && gpu.compute_ms.count > 0;
        return ratio(cpu.compute_ms.mean, gpu.compute_ms.mean).filter(|_| counted);
    }
    gpu.compute_by_size
        .iter()
        .filter_map(|(size, g)| {
            let c = cpu.compute_by_size.get(size)?;
            let both = c.jobs > 0 && g.jobs > 0;
            Some((
                kiln_proto::size_decade(size)?,
                ratio(c.mean_ms, g.mean_ms).filter(|_| both)?,
            ))
        })
        .max_by_key(|&(decade, _)| decade)
        .map(|(_, x)| x)
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

    /// jobs/s is shown over finishes at least 100 ms apart: two jobs 0.2 ms apart read as
    /// 4,096 jobs/s.
    #[test]
    fn a_rate_over_less_than_100_ms_is_not_shown() {
        let at = |id: &str, ms: i64| {
            let mut r = result(id, DeviceClass::Cpu, Status::Succeeded, 1.0);
            r.finished_at = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms);
            r
        };
        let mut folds = Folds::default();
        folds.add(&at("a", 0));
        folds.add(&at("b", 0));
        let table = super::metrics_table(&folds.snapshots(OffsetDateTime::now_utc()));
        assert_eq!(row(&table, "cpu")[5], "-", "{table}");
        folds.add(&at("c", 500));
        let table = super::metrics_table(&folds.snapshots(OffsetDateTime::now_utc()));
        assert_eq!(row(&table, "cpu")[5], "4.0", "{table}");
    }

    /// Two classes given different mixes of sizes: the speedup compares jobs of one size
    /// (the largest both ran), not the CPU's many small jobs with the GPU's few large ones.
    #[test]
    fn the_speedup_compares_jobs_of_one_size() {
        let sized = |id: &str, class, compute_ms, flops| {
            let mut r = result(id, class, Status::Succeeded, compute_ms);
            r.flops = flops;
            r
        };
        let mut folds = Folds::default();
        for i in 0..9 {
            folds.add(&sized(&format!("c{i}"), DeviceClass::Cpu, 1.0, 2e3));
        }
        folds.add(&sized("gbig", DeviceClass::Gpu, 5.0, 3e9));
        // No size in common yet: no speedup, rather than 1.0 ms against 5.0 ms.
        let table = super::metrics_table(&folds.snapshots(OffsetDateTime::now_utc()));
        assert_eq!(row(&table, "gpu")[10], "-", "{table}");

        folds.add(&sized("cbig", DeviceClass::Cpu, 100.0, 4e9));
        folds.add(&sized("gsmall", DeviceClass::Gpu, 0.5, 2e3));
        let snapshots = folds.snapshots(OffsetDateTime::now_utc());
        let table = super::metrics_table(&snapshots);
        // 1e9: 100 ms on the CPU, 5 ms on the GPU (the overall means would say 10.9 / 2.75).
        assert_eq!(row(&table, "gpu")[10], "20.0x", "{table}");
        let cpu = snapshots.iter().find(|s| s.class == "cpu").unwrap();
        let big = cpu.compute_by_size["1e9"];
        assert_eq!((big.jobs, big.mean_ms), (1, 100.0));
        assert_eq!(cpu.compute_by_size["1e3"].jobs, 9);

        // A restarted aggregator carries the sizes on from its last snapshot.
        let restored = kiln_aggregator::Fold::restore(cpu);
        assert_eq!(restored.compute_by_size[&9], (1, 100.0));
    }
}
