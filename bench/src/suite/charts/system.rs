//! The charts of kiln as a system: the pipeline against its ceilings, communication overhead,
//! the data path's stages and throughput against worker processes.

use plotters::prelude::*;

use super::super::data::{Section as DataSection, Split};
use super::super::overhead::OverheadRow;
use super::super::scaling::ScalingRow;
use super::{
    Area, FONT, PALETTE, category, err, legend, line_with_markers, significant, svg_chart, unique,
};
use crate::pipeline::Report as PipelineReport;

/// Jobs per second of the two ceilings and of kiln, medians of the runs.
pub fn pipeline(report: &PipelineReport) -> anyhow::Result<String> {
    let columns = [
        Column {
            name: "ceiling (same bytes)",
            label: format!(
                "raw JetStream, kiln-sized messages ({} B job, {} B result)",
                report.job_bytes, report.result_bytes
            ),
            value: report.ceiling_same_bytes_jobs_per_s,
            color: PALETTE[0],
        },
        Column {
            name: "ceiling (16 B)",
            label: "raw JetStream, 16-byte messages".to_owned(),
            value: report.ceiling_small_jobs_per_s,
            color: PALETTE[2],
        },
        Column {
            name: "ceiling (3 conn.)",
            label: "raw JetStream, kiln-sized messages, a connection per role".to_owned(),
            value: report.ceiling_three_connections_jobs_per_s,
            color: PALETTE[3],
        },
        Column {
            name: "ceiling (kiln's streams)",
            label: "raw JetStream, kiln-sized messages, a connection per role, kiln's stream \
                    and consumer settings"
                .to_owned(),
            value: report.ceiling_kiln_streams_jobs_per_s,
            color: PALETTE[4],
        },
        Column {
            name: "kiln",
            label: format!(
                "kiln end to end ({:.3} of the same-size ceiling)",
                report.ratio_same_bytes
            ),
            value: report.kiln_jobs_per_s,
            color: PALETTE[1],
        },
    ];
    let title = format!(
        "Pipeline: {} small jobs (vector_add len {}) vs the raw JetStream ceiling, same run",
        report.jobs_per_run, report.vector_len
    );
    svg_chart((900, 520), |root| rate_columns(root, &title, &columns))
}

/// A column of [`rate_columns`]: its name on the axis, its label in the legend, its jobs
/// per second and color.
struct Column {
    name: &'static str,
    label: String,
    value: f64,
    color: RGBColor,
}

/// One column per flow, its jobs per second written above it.
fn rate_columns(area: &Area<'_>, title: &str, columns: &[Column]) -> anyhow::Result<()> {
    let hi = columns.iter().map(|c| c.value).fold(1.0f64, f64::max) * 1.25;
    let n = columns.len() as f64;
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(columns.len())
        .x_label_formatter(&|x| category(&names, *x).to_owned())
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("flow")
        .y_desc("jobs per second (median of runs)")
        .disable_x_mesh()
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    for (i, column) in columns.iter().enumerate() {
        let (x, value, color) = (i as f64, column.value, column.color);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.3, 0.0), (x + 0.3, value)],
                color.filled(),
            )))
            .map_err(err)?
            .label(column.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{value:.0}/s"),
                (x - 0.12, value + hi * 0.03),
                (FONT, 13),
            )))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Where a job's time goes besides compute, per kind and size: stacked horizontal bars of
/// submit, queue wait, worker handling and result delivery (medians, ms).
pub fn overhead(rows: &[OverheadRow]) -> anyhow::Result<String> {
    let labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {} ({})", r.kind, r.size, r.input))
        .collect();
    let values: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            [r.submit_ms, r.queue_ms, r.worker_ms, r.result_ms]
                .iter()
                .map(|v| v.max(0.0))
                .collect()
        })
        .collect();
    let ends: Vec<String> = rows
        .iter()
        .map(|r| format!("{:.2} ms", r.overhead_ms))
        .collect();
    let height = 170 + 34 * rows.len() as u32;
    svg_chart((1000, height), |root| {
        stacked_bars(
            root,
            &StackedBars {
                title: "Communication overhead per job: end to end minus compute (medians, one job at a time)",
                labels: &labels,
                y_desc: Some("kind, size (input)"),
                parts: &OVERHEAD_PARTS,
                values: &values,
                ends: &ends,
                label_width: 300,
                headroom: 1.9,
            },
        )
    })
}

/// The parts of a job's time outside compute, in the overhead chart.
const OVERHEAD_PARTS: [(&str, RGBColor); 4] = [
    ("submit (publish → stored)", PALETTE[0]),
    ("queue wait (stored → worker)", PALETTE[1]),
    ("worker handling (outside compute)", PALETTE[2]),
    ("result delivery (finished → client)", PALETTE[3]),
];

/// Where a job's time goes when its data travels through the object store: the matmul by
/// object against the raw store's same transfers (top), the JPEG through conv2d (bottom).
pub fn data(d: &DataSection) -> anyhow::Result<String> {
    svg_chart((1000, 460), |root| {
        let (top, bottom) = root.split_vertically(260);
        let t = &d.transfer;
        let mut raw = vec![0.0; STAGES.len()];
        raw[0] = t.raw_ms;
        stages_panel(
            &top,
            &format!("{}: raw object store vs kiln (medians)", t.case),
            &[
                "raw put + get, same bytes".to_owned(),
                "kiln job".to_owned(),
            ],
            &[raw, stages(&t.split)],
        )?;
        stages_panel(
            &bottom,
            &format!("{} (medians)", d.image.case),
            &["kiln job".to_owned()],
            &[stages(&d.image.split)],
        )
    })
}

/// A panel of the data chart: one bar per label, stacked from `values[i]` in [`STAGES`]
/// order, its total at its end.
fn stages_panel(
    area: &Area<'_>,
    title: &str,
    labels: &[String],
    values: &[Vec<f64>],
) -> anyhow::Result<()> {
    let totals: Vec<String> = values
        .iter()
        .map(|v| super::super::report::ms(v.iter().sum()))
        .collect();
    stacked_bars(
        area,
        &StackedBars {
            title,
            labels,
            y_desc: None,
            parts: &STAGES,
            values,
            ends: &totals,
            label_width: 190,
            headroom: 1.6,
        },
    )
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

/// Horizontal bars, one per label, each stacked from its values in `parts` order, with a
/// text at its end (the overhead chart, and each panel of the data chart).
struct StackedBars<'a> {
    title: &'a str,
    /// The bars' names, on the axis.
    labels: &'a [String],
    /// What the names are, on the axis when given.
    y_desc: Option<&'a str>,
    /// Each part's name in the legend and its color; a part that is zero in every bar is
    /// left out.
    parts: &'a [(&'a str, RGBColor)],
    /// One value per part for each bar, in milliseconds.
    values: &'a [Vec<f64>],
    /// The text at the end of each bar.
    ends: &'a [String],
    /// The width of the names' column, in pixels.
    label_width: u32,
    /// The value axis's length over the longest bar's (room for the end texts and legend).
    headroom: f64,
}

fn stacked_bars(area: &Area<'_>, bars: &StackedBars<'_>) -> anyhow::Result<()> {
    let values = bars.values;
    let hi = values
        .iter()
        .map(|v| v.iter().sum::<f64>())
        .fold(0.1f64, f64::max)
        * bars.headroom;
    let n = bars.labels.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(bars.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(bars.label_width)
        .build_cartesian_2d(0f64..hi, -0.6f64..n - 0.4)
        .map_err(err)?;
    let name = |y: &f64| category(bars.labels, *y).to_owned();
    let mut mesh = chart.configure_mesh();
    mesh.y_labels(bars.labels.len().max(1))
        .y_label_formatter(&name)
        .x_label_formatter(&|v| significant(*v))
        .x_desc("milliseconds")
        .disable_y_mesh()
        .label_style((FONT, 12));
    if let Some(y_desc) = bars.y_desc {
        mesh.y_desc(y_desc);
    }
    mesh.draw().map_err(err)?;
    for (k, &(part, color)) in bars.parts.iter().enumerate() {
        if values
            .iter()
            .all(|v| v.get(k).copied().unwrap_or(0.0) <= 0.0)
        {
            continue;
        }
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let x0: f64 = v[..k].iter().sum();
                let y = i as f64;
                Rectangle::new([(x0, y - 0.3), (x0 + v[k], y + 0.3)], color.filled())
            }))
            .map_err(err)?
            .label(part)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(
            values
                .iter()
                .zip(bars.ends)
                .enumerate()
                .map(|(i, (v, end))| {
                    let total: f64 = v.iter().sum();
                    Text::new(
                        end.clone(),
                        (total + hi * 0.01, i as f64 - 0.05),
                        (FONT, 11),
                    )
                }),
        )
        .map_err(err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 11))
        .draw()
        .map_err(err)
}

/// Throughput relative to one worker against worker processes, one line per workload, with
/// the ideal (linear) line and the machine's core count.
pub fn scaling(rows: &[ScalingRow], cores: usize) -> anyhow::Result<String> {
    svg_chart((900, 560), |root| {
        let max_workers = rows.iter().map(|r| r.workers).max().unwrap_or(1) as f64;
        let hi = rows.iter().map(|r| r.relative).fold(max_workers, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(root)
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
        let workloads = unique(rows.iter().map(|r| r.workload));
        for (k, workload) in workloads.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.workload == *workload)
                .map(|r| (r.workers as f64, r.relative))
                .collect();
            line_with_markers(&mut chart, points, color, *workload)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}
