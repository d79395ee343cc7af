//! `report.md`: the suite's figures as markdown tables with their charts, and a short summary
//! for the terminal. Ratios are truncated, never rounded up, to the digits shown.

use std::fmt::Write as _;

use super::Suite;

mod sections;

use sections::{
    data_path, gpu_vs_cpu, kernel_table, numpy, original, overhead, pipeline, scaling, scheduler,
};

/// Where the GPU figures recorded so far are (`just gpu-check` on an H200, 2026-11-26), from the
/// repository root and relative to a report in `bench/results/<date>/`.
const RECORDED_GPU: &[(&str, &str)] = &[
    (
        "bench/results/2026-11-26/h200/kernels.md",
        "../2026-11-26/h200/kernels.md",
    ),
    (
        "bench/results/2026-11-26/h200/gpu-check.md",
        "../2026-11-26/h200/gpu-check.md",
    ),
];

/// `x` cut (not rounded) to `decimals` digits.
pub fn down(x: f64, decimals: i32) -> String {
    let scale = 10f64.powi(decimals);
    let cut = (x * scale).floor() / scale;
    format!("{cut:.prec$}", prec = decimals.max(0) as usize)
}

/// Milliseconds with about three significant digits.
pub fn ms(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0} ms")
    } else if v.abs() >= 10.0 {
        format!("{v:.1} ms")
    } else if v.abs() >= 1.0 {
        format!("{v:.2} ms")
    } else if v.abs() >= 0.01 {
        format!("{v:.3} ms")
    } else {
        format!("{:.2} µs", v * 1e3)
    }
}

fn value(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

pub fn markdown(s: &Suite) -> String {
    let mut o = String::new();
    let m = &s.machine;
    let _ = writeln!(o, "# kiln benchmark report, {}\n", s.started_at.date());
    let _ = writeln!(
        o,
        "`kiln-bench suite` ({} settings{}), kiln {}, started {} UTC, {:.0} s in all. \
         Every ratio below compares figures measured in this run on this machine.\n",
        s.mode,
        if s.mode == "quick" {
            ": tiny sizes, a smoke run, not figures to quote"
        } else {
            ""
        },
        s.version,
        s.started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        s.seconds
    );
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| CPU | {} |", m.cpu);
    let _ = writeln!(o, "| cores available | {} |", m.cores);
    let _ = writeln!(o, "| memory | {:.1} GiB |", m.memory_gib);
    let _ = writeln!(o, "| OS | {} |", m.os);
    let _ = writeln!(o, "| GPU | {} |", m.gpu);
    let load = |l: Option<f64>| l.map_or_else(|| "unknown".into(), |l| format!("{l:.2}"));
    let _ = writeln!(
        o,
        "| load average (1 min) at start / end | {} / {} |\n",
        load(m.load_at_start),
        load(m.load_at_end)
    );
    if m.load_at_start.is_some_and(|l| l > m.cores as f64 * 0.5) {
        let _ = writeln!(
            o,
            "The machine was busy with other work when the suite started (load {} on {} cores): \
             CPU figures are lower and noisier than on a quiet machine.\n",
            load(m.load_at_start),
            m.cores
        );
    }

    let _ = writeln!(o, "## Steps\n\n| step | seconds | outcome |\n|---|---|---|");
    for step in &s.steps {
        let _ = writeln!(
            o,
            "| {} | {:.1} | {} |",
            step.name,
            step.seconds,
            step.error
                .as_deref()
                .map_or_else(|| "ok".to_owned(), |e| format!("failed: {}", cell(e)))
        );
    }
    o.push('\n');

    gpu_vs_cpu(&mut o, s);
    kernel_table(&mut o, s);
    numpy(&mut o, s);
    original(&mut o, s);
    pipeline(&mut o, s);
    overhead(&mut o, s);
    data_path(&mut o, s);
    scaling(&mut o, s);
    scheduler(&mut o, s);

    let _ = writeln!(o, "## Files\n");
    for f in &s.files {
        let _ = writeln!(o, "- [`{f}`]({f})");
    }
    o
}

/// A table cell: no pipes or newlines.
fn cell(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

/// Where the README's generated part starts and ends.
pub const README_START: &str = "<!-- bench:start -->";
pub const README_END: &str = "<!-- bench:end -->";

/// The generated part of the benchmarks page: the machine, the GPU-vs-CPU table and every
/// section but the full kernel table, with links made relative to that page's folder through
/// `base` (the report's folder, e.g. `../bench/results/2026-11-26/`).
pub fn readme_section(s: &Suite, base: &str) -> String {
    let m = &s.machine;
    let mut o = String::new();
    let load = m.load_at_start.map_or_else(String::new, |l| {
        format!("; load average {l:.2} at the start")
    });
    let _ = writeln!(
        o,
        "Latest run: {}, `kiln-bench suite` ({} settings, {:.0} s) on {}, {} cores, {:.1} GiB; GPU: {}{load}. Full report: [`{base}report.md`]({base}report.md).\n",
        s.started_at.date(),
        s.mode,
        s.seconds,
        m.cpu,
        m.cores,
        m.memory_gib,
        m.gpu
    );
    let mut body = String::new();
    gpu_vs_cpu(&mut body, s);
    let _ = writeln!(body, "![Kernel times by size](kernels.svg)\n");
    numpy(&mut body, s);
    original(&mut body, s);
    pipeline(&mut body, s);
    overhead(&mut body, s);
    data_path(&mut body, s);
    scaling(&mut body, s);
    scheduler(&mut body, s);
    // Headings one level down; links from the repository root.
    let names: Vec<&str> = s.files.iter().map(String::as_str).collect();
    // `../x` from the report's folder is `x` in the folder above it.
    let parent = base
        .trim_end_matches('/')
        .rsplit_once('/')
        .map_or(String::new(), |(p, _)| format!("{p}/"));
    for line in body.lines() {
        let mut line = match line.strip_prefix("## ") {
            Some(rest) => format!("### {rest}"),
            None => line.to_owned(),
        };
        line = line.replace("](../", &format!("]({parent}"));
        for name in &names {
            line = line.replace(&format!("]({name}"), &format!("]({base}{name}"));
        }
        o.push_str(&line);
        o.push('\n');
    }
    o
}

/// `text` with the part between the markers replaced by `section`; `None` without markers.
pub fn splice(text: &str, section: &str) -> Option<String> {
    let start = text.find(README_START)? + README_START.len();
    let end = start + text[start..].find(README_END)?;
    Some(format!(
        "{}\n<!-- Written by `kiln-bench suite --readme` (`./dev bench`); edits here are overwritten. -->\n\n{}\n{}",
        &text[..start],
        section.trim_end(),
        &text[end..]
    ))
}

/// A few lines for the terminal.
pub fn summary(s: &Suite) -> String {
    let mut o = String::new();
    if let Some(k) = &s.kernels {
        match &k.gpu_device {
            Some(d) => {
                let _ = writeln!(o, "GPU vs CPU on {d}:");
                for x in &k.speedups {
                    let _ = writeln!(
                        o,
                        "  {:<28} {:<44} CPU {:>10}  GPU {:>10}  {}×",
                        x.workload,
                        x.size,
                        ms(x.cpu_ms),
                        ms(x.gpu_ms),
                        down(x.speedup, 2)
                    );
                }
            }
            None => {
                let _ = writeln!(
                    o,
                    "GPU skipped ({}); recorded H200 figures: {}",
                    k.gpu_skipped.as_deref().unwrap_or("no CUDA device"),
                    RECORDED_GPU[0].0
                );
            }
        }
    }
    if let Some(x) = &s.original {
        for r in &x.speedups {
            let _ = writeln!(
                o,
                "original sizes: {:<28} {:<14} GPU speedup {}× end to end, {}× compute",
                r.workload,
                r.size,
                down(r.end_to_end_speedup, 2),
                down(r.compute_speedup, 2)
            );
        }
    }
    if let Some(p) = &s.pipeline {
        let _ = writeln!(
            o,
            "pipeline: kiln {:.0} jobs/s = {} of the raw JetStream ceiling (same bytes)",
            p.kiln_jobs_per_s,
            down(p.ratio_same_bytes, 3)
        );
    }
    if let Some(d) = &s.data {
        let t = &d.transfer;
        let _ = writeln!(
            o,
            "data: {}: kiln moves data at {} of the raw object store's rate; worker peak {} × its tensors",
            t.case,
            down(t.rate_ratio, 3),
            down(t.memory_ratio, 3)
        );
        let _ = writeln!(
            o,
            "data: {}: {} end to end, {} of it compute",
            d.image.case,
            ms(d.image.split.end_to_end_ms),
            ms(d.image.split.compute_ms)
        );
    }
    if let Some(sc) = &s.scaling {
        for r in &sc.rows {
            let _ = writeln!(
                o,
                "scaling: {} worker(s), {}: {:.0} jobs/s ({}×)",
                r.workers,
                r.workload,
                r.jobs_per_s,
                down(r.relative, 2)
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let text = "before\n<!-- bench:start -->\nold\n<!-- bench:end -->\nafter\n";
        let out = splice(text, "new table\n").unwrap();
        assert!(out.starts_with("before\n<!-- bench:start -->"));
        assert!(out.contains("new table\n<!-- bench:end -->\nafter\n"));
        assert!(!out.contains("old"));
        // Again: the same result, nothing piles up.
        assert_eq!(splice(&out, "new table\n").unwrap(), out);
        assert!(splice("no markers", "x").is_none());
    }

    #[test]
    fn ratios_are_cut_not_rounded_up() {
        assert_eq!(down(0.5639, 3), "0.563");
        assert_eq!(down(1.999, 2), "1.99");
        assert_eq!(down(2.0, 2), "2.00");
        assert_eq!(ms(0.004), "4.00 µs");
        assert_eq!(ms(12.345), "12.3 ms");
    }
}
