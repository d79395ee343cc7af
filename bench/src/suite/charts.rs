//! The suite's charts, as SVG (plotters): each with a title, axes with units and a legend.

use plotters::prelude::*;

use super::data::{Section as DataSection, Split};
use super::kernels::{self, KernelRow, Speedup};
use super::overhead::OverheadRow;
use super::scaling::ScalingRow;
use crate::pipeline::Report as PipelineReport;

const FONT: &str = "sans-serif";
const CPU_COLOR: RGBColor = RGBColor(0x4c, 0x72, 0xb0);
const GPU_COLOR: RGBColor = RGBColor(0xdd, 0x84, 0x52);
const PALETTE: [RGBColor; 5] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

/// A line through `points` with a marker on each, shown in the legend as `label`.
fn line_with_markers<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: impl Into<String>,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate<From = (f64, f64)>,
{
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
        .map_err(err)?;
    Ok(())
}

/// The legend box of the line charts: white, framed, 12-point labels.
fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()
        .map_err(err)
}

/// Median time per operation against size, one panel per workload, one line per backend
/// (log-scale time).
pub fn kernels(rows: &[KernelRow]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 800)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                "Kernel time per operation by size (median; lower is better)",
                (FONT, 22),
            )
            .map_err(err)?;
        let panels = root.split_evenly((2, 2));
        for (panel, workload) in panels.iter().zip(kernels::WORKLOADS) {
            kernel_panel(panel, workload, rows)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn kernel_panel(area: &Area<'_>, workload: &str, rows: &[KernelRow]) -> anyhow::Result<()> {
    // The sizes of this workload in case order (the CPU's list), without the small job.
    let ours: Vec<&KernelRow> = rows
        .iter()
        .filter(|r| r.workload == workload && r.row.family != "small_vector_add")
        .collect();
    let mut sizes: Vec<&str> = Vec::new();
    for r in &ours {
        if !sizes.contains(&r.size.as_str()) {
            sizes.push(&r.size);
        }
    }
    let ms: Vec<f64> = ours
        .iter()
        .filter_map(|r| r.row.median_s.filter(|_| r.row.status == "ok"))
        .map(|s| s * 1e3)
        .collect();
    let lo = ms.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ms.iter().copied().fold(0.0f64, f64::max);
    let (lo, hi) = if ms.is_empty() {
        (0.001, 1.0)
    } else {
        (lo / 2.0, hi * 2.0)
    };
    let n = sizes.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(workload, (FONT, 17))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..n - 0.5, (lo..hi).log_scale())
        .map_err(err)?;
    let labels = sizes.clone();
    let short = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        labels
            .get(i as usize)
            .map(|s| s.split(',').next().unwrap_or(s).to_owned())
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .x_labels(sizes.len().max(1))
        .x_label_formatter(&short)
        .y_label_formatter(&|v| significant(*v))
        .x_desc("size")
        .y_desc("milliseconds (log scale)")
        .disable_x_mesh()
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    let mut devices: Vec<&str> = Vec::new();
    for r in &ours {
        if !devices.contains(&r.row.device.as_str()) {
            devices.push(&r.row.device);
        }
    }
    for device in devices {
        let color = if device == "cpu" {
            CPU_COLOR
        } else {
            GPU_COLOR
        };
        let points: Vec<(f64, f64)> = ours
            .iter()
            .filter(|r| r.row.device == device && r.row.status == "ok")
            .filter_map(|r| {
                let x = sizes.iter().position(|s| *s == r.size)? as f64;
                Some((x, r.row.median_s? * 1e3))
            })
            .collect();
        // Every backend of the device's points, in order (matmul: the BLAS, then Burn's rows).
        let mut backends: Vec<&str> = Vec::new();
        for r in ours.iter().filter(|r| r.row.device == device) {
            if !backends.contains(&r.row.backend.as_str()) {
                backends.push(&r.row.backend);
            }
        }
        let label = format!(
            "{} ({})",
            if device == "cpu" { "CPU" } else { device },
            backends.join(", ")
        );
        line_with_markers(&mut chart, points, color, label)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// GPU speedup over the CPU per case (log scale), only where both ran.
pub fn speedup(rows: &[Speedup]) -> anyhow::Result<String> {
    let labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.kind, r.size.split(',').next().unwrap_or("")))
        .collect();
    let values: Vec<f64> = rows.iter().map(|r| r.speedup).collect();
    horizontal_bars(
        "GPU speedup over the CPU (CPU time / GPU time, same run)",
        "speedup (×, log scale; 1 = as fast)",
        "CPU time / GPU time",
        &labels,
        &values,
    )
}

/// One bar per label, horizontal, on a log-scale value axis.
fn horizontal_bars(
    title: &str,
    x_desc: &str,
    legend: &str,
    labels: &[String],
    values: &[f64],
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let height = 140 + 34 * labels.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let hi = values.iter().copied().fold(1.0f64, f64::max) * 2.0;
        let lo = values.iter().copied().fold(1.0f64, f64::min) / 2.0;
        let n = labels.len().max(1) as f64;
        let y_labels = labels.to_vec();
        let name = move |y: &f64| {
            let i = y.round();
            if (y - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            y_labels.get(i as usize).cloned().unwrap_or_default()
        };
        {
            let mut chart = ChartBuilder::on(&root)
                .caption(title, (FONT, 20))
                .margin(14)
                .x_label_area_size(45)
                .y_label_area_size(280)
                .build_cartesian_2d((lo..hi).log_scale(), -0.5f64..n - 0.5)
                .map_err(err)?;
            chart
                .configure_mesh()
                .y_labels(labels.len().max(1))
                .y_label_formatter(&name)
                .x_label_formatter(&|v| significant(*v))
                .x_desc(x_desc)
                .y_desc("case")
                .disable_y_mesh()
                .label_style((FONT, 12))
                .draw()
                .map_err(err)?;
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let y = i as f64;
                    Rectangle::new([(lo, y - 0.35), (v, y + 0.35)], GPU_COLOR.filled())
                }))
                .map_err(err)?
                .label(legend)
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], GPU_COLOR.filled()));
            chart
                .draw_series(
                    values.iter().enumerate().map(|(i, &v)| {
                        Text::new(format!("{v:.2}×"), (v, i as f64 - 0.1), (FONT, 12))
                    }),
                )
                .map_err(err)?;
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Jobs per second of the two ceilings and of kiln, medians of the runs.
pub fn pipeline(report: &PipelineReport) -> anyhow::Result<String> {
    let bars = [
        (
            format!(
                "raw JetStream, kiln-sized messages ({} B job, {} B result)",
                report.job_bytes, report.result_bytes
            ),
            report.ceiling_same_bytes_jobs_per_s,
            PALETTE[0],
        ),
        (
            "raw JetStream, 16-byte messages".to_owned(),
            report.ceiling_small_jobs_per_s,
            PALETTE[2],
        ),
        (
            format!(
                "kiln end to end ({:.3} of the same-size ceiling)",
                report.ratio_same_bytes
            ),
            report.kiln_jobs_per_s,
            PALETTE[1],
        ),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let hi = bars.iter().map(|b| b.1).fold(1.0f64, f64::max) * 1.25;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Pipeline: {} small jobs (vector_add len {}) vs the raw JetStream ceiling, same run",
                    report.jobs_per_run, report.vector_len
                ),
                (FONT, 18),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.5f64..2.5, 0f64..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(3)
            .x_label_formatter(&|x| match x.round() as i64 {
                0 if (x - x.round()).abs() < 1e-6 => "ceiling (same bytes)".into(),
                1 if (x - x.round()).abs() < 1e-6 => "ceiling (16 B)".into(),
                2 if (x - x.round()).abs() < 1e-6 => "kiln".into(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("flow")
            .y_desc("jobs per second (median of runs)")
            .disable_x_mesh()
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        for (i, (label, value, color)) in bars.iter().enumerate() {
            let x = i as f64;
            let color = *color;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.3, 0.0), (x + 0.3, *value)],
                    color.filled(),
                )))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{value:.0}/s"),
                    (x - 0.12, value + hi * 0.03),
                    (FONT, 13),
                )))
                .map_err(err)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Where a job's time goes besides compute, per kind and size: stacked horizontal bars of
/// submit, queue wait, worker handling and result delivery (medians, ms).
pub fn overhead(rows: &[OverheadRow]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let height = 170 + 34 * rows.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let parts = |r: &OverheadRow| {
            [
                r.submit_ms.max(0.0),
                r.queue_ms.max(0.0),
                r.worker_ms.max(0.0),
                r.result_ms.max(0.0),
            ]
        };
        let hi = rows
            .iter()
            .map(|r| parts(r).iter().sum::<f64>())
            .fold(0.1f64, f64::max)
            * 1.9;
        let labels: Vec<String> = rows
            .iter()
            .map(|r| format!("{} {} ({})", r.kind, r.size, r.input))
            .collect();
        let n = rows.len().max(1) as f64;
        let name = move |y: &f64| {
            let i = y.round();
            if (y - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            labels.get(i as usize).cloned().unwrap_or_default()
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Communication overhead per job: end to end minus compute (medians, one job at a time)",
                (FONT, 18),
            )
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(300)
            .build_cartesian_2d(0f64..hi, -0.5f64..n - 0.5)
            .map_err(err)?;
        chart
            .configure_mesh()
            .y_labels(rows.len().max(1))
            .y_label_formatter(&name)
            .x_label_formatter(&|v| significant(*v))
            .x_desc("milliseconds")
            .y_desc("kind, size (input)")
            .disable_y_mesh()
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        let names = [
            "submit (publish → stored)",
            "queue wait (stored → worker)",
            "worker handling (outside compute)",
            "result delivery (finished → client)",
        ];
        for (k, part) in names.iter().enumerate() {
            let color = PALETTE[k];
            chart
                .draw_series(rows.iter().enumerate().map(|(i, r)| {
                    let p = parts(r);
                    let x0: f64 = p[..k].iter().sum();
                    let y = i as f64;
                    Rectangle::new([(x0, y - 0.35), (x0 + p[k], y + 0.35)], color.filled())
                }))
                .map_err(err)?
                .label(*part)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let total: f64 = parts(r).iter().sum();
                Text::new(
                    format!("{:.2} ms", r.overhead_ms),
                    (total + hi * 0.01, i as f64 - 0.1),
                    (FONT, 11),
                )
            }))
            .map_err(err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Where a job's time goes when its data travels through the object store: the matmul by
/// object against the raw store's same transfers (top), the JPEG through conv2d (bottom).
pub fn data(d: &DataSection) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (top, bottom) = root.split_vertically(260);
        let t = &d.transfer;
        let mut raw = vec![0.0; STAGES.len()];
        raw[0] = t.raw_ms;
        stacked_panel(
            &top,
            &format!("{}: raw object store vs kiln (medians)", t.case),
            &[
                "raw put + get, same bytes".to_owned(),
                "kiln job".to_owned(),
            ],
            &[raw, stages(&t.split)],
        )?;
        stacked_panel(
            &bottom,
            &format!("{} (medians)", d.image.case),
            &["kiln job".to_owned()],
            &[stages(&d.image.split)],
        )?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

const STAGES: [(&str, RGBColor); 8] = [
    ("raw object store transfers", RGBColor(0x99, 0x99, 0x99)),
    ("upload", RGBColor(0x4c, 0x72, 0xb0)),
    ("submit", RGBColor(0x64, 0xb5, 0xcd)),
    ("queue wait", RGBColor(0x81, 0x72, 0xb3)),
    ("worker handling (load, store)", RGBColor(0xdd, 0x84, 0x52)),
    ("compute", RGBColor(0x55, 0xa8, 0x68)),
    ("result delivery", RGBColor(0xc4, 0x4e, 0x52)),
    ("download", RGBColor(0xcc, 0xb9, 0x74)),
];

fn stages(s: &Split) -> Vec<f64> {
    [
        0.0,
        s.upload_ms,
        s.submit_ms,
        s.queue_ms,
        s.worker_ms,
        s.compute_ms,
        s.result_ms,
        s.download_ms,
    ]
    .iter()
    .map(|v| v.max(0.0))
    .collect()
}

/// Horizontal bars, one per label, each stacked from `values[i]` in [`STAGES`] order.
fn stacked_panel(
    area: &Area<'_>,
    title: &str,
    labels: &[String],
    values: &[Vec<f64>],
) -> anyhow::Result<()> {
    let hi = values
        .iter()
        .map(|v| v.iter().sum::<f64>())
        .fold(0.1f64, f64::max)
        * 1.6;
    let n = labels.len().max(1) as f64;
    let names = labels.to_vec();
    let name = move |y: &f64| {
        let i = y.round();
        if (y - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        names.get(i as usize).cloned().unwrap_or_default()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..hi, -0.6f64..n - 0.4)
        .map_err(err)?;
    chart
        .configure_mesh()
        .y_labels(labels.len().max(1))
        .y_label_formatter(&name)
        .x_label_formatter(&|v| significant(*v))
        .x_desc("milliseconds")
        .disable_y_mesh()
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    for (k, (part, color)) in STAGES.iter().enumerate() {
        if values
            .iter()
            .all(|v| v.get(k).copied().unwrap_or(0.0) <= 0.0)
        {
            continue;
        }
        let color = *color;
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let x0: f64 = v[..k].iter().sum();
                let y = i as f64;
                Rectangle::new([(x0, y - 0.3), (x0 + v[k], y + 0.3)], color.filled())
            }))
            .map_err(err)?
            .label(*part)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(values.iter().enumerate().map(|(i, v)| {
            let total: f64 = v.iter().sum();
            Text::new(
                super::report::ms(total),
                (total + hi * 0.01, i as f64 - 0.05),
                (FONT, 11),
            )
        }))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 11))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Throughput relative to one worker against worker processes, one line per workload, with
/// the ideal (linear) line and the machine's core count.
pub fn scaling(rows: &[ScalingRow], cores: usize) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let max_workers = rows.iter().map(|r| r.workers).max().unwrap_or(1) as f64;
        let hi = rows.iter().map(|r| r.relative).fold(max_workers, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Scaling: throughput against worker processes ({cores} CPU cores available)"
                ),
                (FONT, 18),
            )
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5f64..max_workers + 0.5, 0f64..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(max_workers as usize + 1)
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{v:.1}×"))
            .x_desc("worker processes (one compute thread each)")
            .y_desc("throughput relative to the first count (×)")
            .label_style((FONT, 12))
            .draw()
            .map_err(err)?;
        let first = rows.iter().map(|r| r.workers).min().unwrap_or(1) as f64;
        chart
            .draw_series(LineSeries::new(
                [(first, 1.0), (max_workers, max_workers / first)],
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(err)?
            .label("ideal (linear)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
        chart
            .draw_series(LineSeries::new(
                [(cores as f64, 0.0), (cores as f64, hi)],
                RED.mix(0.4).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("cores available ({cores})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.mix(0.4)));
        let mut workloads: Vec<&str> = Vec::new();
        for r in rows {
            if !workloads.contains(&r.workload) {
                workloads.push(r.workload);
            }
        }
        for (k, workload) in workloads.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.workload == *workload)
                .map(|r| (r.workers as f64, r.relative))
                .collect();
            line_with_markers(&mut chart, points, color, *workload)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Three significant digits for axis labels.
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.decimals$}")
}
