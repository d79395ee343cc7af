//! The suite's charts, as SVG (plotters): each with a title, axes with units and a legend.

use plotters::prelude::*;

use super::kernels::{self, KernelRow, Speedup};
use super::original::{OriginalRow, OriginalSpeedup};

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

mod system;

pub use system::{data, overhead, pipeline, scaling};

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

/// An SVG of `size` pixels on white, drawn by `draw`.
fn svg_chart(
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The name at position `x` of a category axis (categories at 0, 1, …); nothing between.
fn category<S: AsRef<str>>(names: &[S], x: f64) -> &str {
    let i = x.round();
    if (x - i).abs() > 1e-6 || i < 0.0 {
        return "";
    }
    names.get(i as usize).map_or("", |s| s.as_ref())
}

/// Each distinct item once, in order of first appearance.
fn unique<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

/// Median time per operation against size, one panel per workload, one line per backend
/// (log-scale time).
pub fn kernels(rows: &[KernelRow]) -> anyhow::Result<String> {
    per_workload(
        "Kernel time per operation by size (median; lower is better)",
        |panel, workload| kernel_panel(panel, workload, rows),
    )
}

/// A chart titled `title` of four panels, one per workload, each drawn by `panel`.
fn per_workload(
    title: &str,
    panel: impl Fn(&Area<'_>, &str) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    svg_chart((1100, 800), |root| {
        let root = root.titled(title, (FONT, 20)).map_err(err)?;
        let panels = root.split_evenly((2, 2));
        for (area, workload) in panels.iter().zip(kernels::WORKLOADS) {
            panel(area, workload)?;
        }
        Ok(())
    })
}

/// One workload's panel: a line per device through its sizes.
fn kernel_panel(area: &Area<'_>, workload: &str, rows: &[KernelRow]) -> anyhow::Result<()> {
    // The sizes of this workload in case order (the CPU's list), without the small job.
    let ours: Vec<&KernelRow> = rows
        .iter()
        .filter(|r| r.workload == workload && r.row.family != "small_vector_add")
        .collect();
    let sizes = unique(ours.iter().map(|r| r.size.as_str()));
    let (lo, hi) = time_range(&ours);
    let mut chart = time_by_size(area, workload, &sizes, (lo, hi))?;
    for device in unique(ours.iter().map(|r| r.row.device.as_str())) {
        let color = if device == "cpu" {
            CPU_COLOR
        } else {
            GPU_COLOR
        };
        let (points, label) = device_line(&ours, &sizes, device);
        line_with_markers(&mut chart, points, color, label)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// A panel's axes: `sizes` along x (each label up to its first comma), milliseconds from
/// `lo` to `hi` up y on a log scale, titled `workload`.
fn time_by_size<'a, 'b>(
    area: &'a Area<'b>,
    workload: &str,
    sizes: &[&str],
    (lo, hi): (f64, f64),
) -> anyhow::Result<ChartContext<'a, SVGBackend<'b>, TimeBySize>> {
    let n = sizes.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(workload, (FONT, 17))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..n - 0.5, (lo..hi).log_scale())
        .map_err(err)?;
    let short = |x: &f64| {
        let size = category(sizes, *x);
        size.split(',').next().unwrap_or(size).to_owned()
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
    Ok(chart)
}

type TimeBySize = Cartesian2d<
    plotters::coord::types::RangedCoordf64,
    plotters::coord::combinators::LogCoord<f64>,
>;

/// The time axis of a kernel panel, in milliseconds: half the fastest to twice the slowest
/// median.
fn time_range(rows: &[&KernelRow]) -> (f64, f64) {
    let ms: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.row.median_s.filter(|_| r.row.status == "ok"))
        .map(|s| s * 1e3)
        .collect();
    if ms.is_empty() {
        return (0.001, 1.0);
    }
    let lo = ms.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ms.iter().copied().fold(0.0f64, f64::max);
    (lo / 2.0, hi * 2.0)
}

/// A device's line in a kernel panel: (size position, median ms) of its measured rows, and
/// its label, the device and the backends of its rows.
fn device_line(rows: &[&KernelRow], sizes: &[&str], device: &str) -> (Vec<(f64, f64)>, String) {
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.row.device == device && r.row.status == "ok")
        .filter_map(|r| {
            let x = sizes.iter().position(|s| *s == r.size)? as f64;
            Some((x, r.row.median_s? * 1e3))
        })
        .collect();
    // Every backend of the device's points, in order (matmul: the BLAS, then Burn's rows).
    let backends = unique(
        rows.iter()
            .filter(|r| r.row.device == device)
            .map(|r| r.row.backend.as_str()),
    );
    let label = format!(
        "{} ({})",
        if device == "cpu" { "CPU" } else { device },
        backends.join(", ")
    );
    (points, label)
}

/// The original system's sizes: one panel per workload, milliseconds against size (log
/// scale), a line for each of end to end and compute per device, and PyTorch's where it ran.
pub fn original(rows: &[OriginalRow]) -> anyhow::Result<String> {
    per_workload(
        "The original system's sizes as kiln jobs: end to end and compute, GPU and CPU \
         (median; lower is better)",
        |panel, workload| original_panel(panel, workload, rows),
    )
}

fn original_panel(area: &Area<'_>, workload: &str, rows: &[OriginalRow]) -> anyhow::Result<()> {
    let ours: Vec<&OriginalRow> = rows.iter().filter(|r| r.workload == workload).collect();
    let sizes = unique(ours.iter().map(|r| r.size.as_str()));
    let times = ours
        .iter()
        .flat_map(|r| [Some(r.end_to_end_ms), Some(r.compute_ms), r.torch_ms])
        .flatten()
        .filter(|v| *v > 0.0);
    let (lo, hi) = times.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (0.001, 1.0)
    };
    let mut chart = time_by_size(area, workload, &sizes, (lo, hi))?;
    type Pick = fn(&OriginalRow) -> Option<f64>;
    let series: [(&str, Pick); 3] = [
        ("end to end", |r| Some(r.end_to_end_ms)),
        ("compute", |r| Some(r.compute_ms)),
        ("PyTorch, same job", |r| r.torch_ms),
    ];
    let mut color = PALETTE.iter().cycle();
    for device in unique(ours.iter().map(|r| r.device.as_str())) {
        let name = if device == "cpu" { "CPU" } else { device };
        for (what, pick) in series {
            let points: Vec<(f64, f64)> = ours
                .iter()
                .filter(|r| r.device == device)
                .filter_map(|r| {
                    let x = sizes.iter().position(|s| *s == r.size)? as f64;
                    Some((x, pick(r)?))
                })
                .collect();
            if !points.is_empty() {
                let c = *color.next().expect("a cycle");
                line_with_markers(&mut chart, points, c, format!("{name}: {what}"))?;
            }
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// GPU speedup over the CPU at the original sizes, end to end and compute, per case.
pub fn original_speedup(rows: &[OriginalSpeedup]) -> anyhow::Result<String> {
    let mut labels = Vec::new();
    let mut values = Vec::new();
    for r in rows {
        labels.push(format!("{} {}, end to end", r.workload, r.size));
        values.push(r.end_to_end_speedup);
        labels.push(format!("{} {}, compute", r.workload, r.size));
        values.push(r.compute_speedup);
    }
    horizontal_bars(
        "GPU speedup over the CPU at the original system's sizes (same run)",
        "speedup (×, log scale; 1 = as fast)",
        "CPU time / GPU time",
        &labels,
        &values,
    )
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
    let height = 140 + 34 * labels.len() as u32;
    svg_chart((1000, height), |root| {
        let hi = values.iter().copied().fold(1.0f64, f64::max) * 2.0;
        let lo = values.iter().copied().fold(1.0f64, f64::min) / 2.0;
        let n = labels.len().max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(14)
            .x_label_area_size(45)
            .y_label_area_size(280)
            .build_cartesian_2d((lo..hi).log_scale(), -0.5f64..n - 0.5)
            .map_err(err)?;
        chart
            .configure_mesh()
            .y_labels(labels.len().max(1))
            .y_label_formatter(&|y| category(labels, *y).to_owned())
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
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| Text::new(format!("{v:.2}×"), (v, i as f64 - 0.1), (FONT, 12))),
            )
            .map_err(err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)
    })
}

/// Three significant digits for axis labels.
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.decimals$}")
}
