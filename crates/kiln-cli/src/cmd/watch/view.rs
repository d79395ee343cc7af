//! Drawing the dashboard with ratatui: a header, queues and workers side by side, the
//! per-(kind, class) table, and recent failures.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Paragraph, Row, Table};

use time::OffsetDateTime;

use kiln_client::watch::{Dashboard, Series, WINDOW};

const TREND_BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

pub fn render(frame: &mut Frame, d: &Dashboard) {
    let workers_height = (d.workers.len() as u16 + 3).clamp(7, 14);
    let failures_height = (d.failures.len() as u16 + 3).clamp(4, 10);
    // A problem reaching the server gets a line of its own, where it is not cut off.
    let header_height = 1 + u16::from(d.error.is_some());
    let [header, top, kinds, failures] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Length(workers_height),
        Constraint::Min(6),
        Constraint::Length(failures_height),
    ])
    .areas(frame.area());
    let [queues, workers] =
        Layout::horizontal([Constraint::Length(64), Constraint::Min(40)]).areas(top);
    render_header(frame, header, d);
    render_queues(frame, queues, d);
    render_workers(frame, workers, d);
    render_kinds(frame, kinds, d);
    render_failures(frame, failures, d);
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn render_header(frame: &mut Frame, area: Rect, d: &Dashboard) {
    let time = d.now.time();
    let spans = vec![
        Span::styled(" kiln watch ", bold().fg(Color::Black).bg(Color::Cyan)),
        Span::raw(format!(
            " {} · {:02}:{:02}:{:02} UTC · every {} ms · q, Esc or Ctrl-C quits",
            d.server,
            time.hour(),
            time.minute(),
            time.second(),
            d.interval_ms
        )),
    ];
    let mut lines = vec![Line::from(spans)];
    if let Some(e) = &d.error {
        lines.push(Line::styled(format!(" {e}"), Style::new().fg(Color::Red)));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn render_queues(frame: &mut Frame, area: Rect, d: &Dashboard) {
    let title = format!(
        " Queues · KILN_JOBS {} · results {} · dead letters {} ",
        count(d.jobs_queued),
        count(d.results_stored),
        count(d.dead_letters)
    );
    let rows = d.queues.iter().map(|q| match &q.error {
        Some(e) => Row::new(vec![q.name.clone(), format!("unavailable: {e}")]),
        None => {
            let style = if q.pending > 0 {
                Style::new().fg(Color::Yellow)
            } else {
                Style::new()
            };
            Row::new(vec![
                q.name.clone(),
                q.pending.to_string(),
                q.in_flight.to_string(),
                q.redelivered.to_string(),
                q.waiting_pulls.to_string(),
            ])
            .style(style)
        }
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(8),
        ],
    )
    .header(Row::new(["consumer", "pending", "in flight", "redelivered", "pulls"]).style(bold()))
    .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

fn render_workers(frame: &mut Frame, area: Rect, d: &Dashboard) {
    let title = match &d.workers_error {
        Some(e) => format!(" Workers · unavailable: {e} "),
        None => format!(" Workers · {} live ", d.workers.len()),
    };
    let rows = d.workers.iter().map(|w| {
        let running = if w.running.is_empty() {
            "-".to_owned()
        } else {
            let mut ids: Vec<String> = w
                .running
                .iter()
                .take(3)
                .map(|j| format!("{} {}", j.kind, j.id))
                .collect();
            if w.running.len() > 3 {
                ids.push(format!("+{}", w.running.len() - 3));
            }
            ids.join(", ")
        };
        let state = if w.state == "serving" {
            Style::new().fg(Color::Green)
        } else {
            Style::new().fg(Color::Yellow)
        };
        Row::new(vec![
            ratatui::text::Text::raw(w.name.clone()),
            ratatui::text::Text::raw(format!("{} {}", w.class, w.device)),
            ratatui::text::Text::styled(w.state.clone(), state),
            ratatui::text::Text::raw(w.running.len().to_string()),
            ratatui::text::Text::raw(w.capacity.to_string()),
            ratatui::text::Text::raw(w.succeeded.to_string()),
            ratatui::text::Text::raw(w.failed.to_string()),
            ratatui::text::Text::raw(running),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(24),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(5),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([
            "worker", "device", "state", "held", "slots", "ok", "failed", "running",
        ])
        .style(bold()),
    )
    .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

/// The median of `stats`, `-` when it holds no duration.
fn ms_of(stats: &kiln_proto::LatencyStats) -> String {
    if stats.count == 0 {
        "-".to_owned()
    } else {
        ms(stats.p50)
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn trend(values: impl Iterator<Item = f64> + Clone) -> String {
    let max = values.clone().fold(0.0f64, f64::max);
    values
        .map(|v| {
            if max <= 0.0 {
                TREND_BARS[0]
            } else {
                TREND_BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// The kinds table's columns: heading and width.
const KIND_COLUMNS: [(&str, u16); 13] = [
    ("kind", 11),
    ("class", 5),
    ("jobs", 9),
    ("ok", 9),
    ("failed", 7),
    ("jobs/s", 9),
    ("trend", 26),
    ("p50 ms", 9),
    ("p90 ms", 9),
    ("p99 ms", 9),
    ("queue p50", 10),
    ("compute p50", 11),
    ("speedup", 8),
];

fn render_kinds(frame: &mut Frame, area: Rect, d: &Dashboard) {
    let window = WINDOW.as_secs();
    let title = format!(
        " Throughput and latency by kind and class · jobs/s and percentiles over the last {window} s (dim: since the start) "
    );
    let rows = d.series.values().map(|s| {
        // A GPU row's speedup over the CPU row of its kind, as `kiln status` computes it.
        let cpu = d.series.get(&(s.latest.kind.clone(), "cpu".to_owned()));
        let speedup = match (s.latest.class.as_str(), cpu) {
            ("gpu", Some(cpu)) => crate::table::speedup(&cpu.latest, &s.latest),
            _ => None,
        };
        kind_row(s, d.now, speedup)
    });
    let empty = d.series.is_empty();
    let table = Table::new(
        rows,
        KIND_COLUMNS.map(|(_, width)| Constraint::Length(width)),
    )
    .header(Row::new(KIND_COLUMNS.map(|(heading, _)| heading)).style(bold()))
    .block(Block::bordered().title(title));
    frame.render_widget(table, area);
    if empty {
        let inner = Block::bordered().inner(area);
        let note = Rect {
            y: inner.y + 1,
            height: 1,
            ..inner
        };
        frame.render_widget(
            Paragraph::new("no metrics yet: is an aggregator running?"),
            note,
        );
    }
}

/// One (kind, class) line of the kinds table: counts, rate and trend, and the latency
/// percentiles over the window (dim, since the start, when the window holds none), and a GPU
/// row's `speedup` over the CPU.
fn kind_row(s: &Series, now: OffsetDateTime, speedup: Option<f64>) -> Row<'static> {
    let l = &s.latest;
    let rate = s
        .rate(now)
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
    let (p50, p90, p99, style) = match s.window_latency(now) {
        Some(w) => (w.p50, w.p90, w.p99, Style::new()),
        None => (
            l.total_ms.p50,
            l.total_ms.p90,
            l.total_ms.p99,
            Style::new().add_modifier(Modifier::DIM),
        ),
    };
    let failed_style = if l.failed > 0 {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    };
    Row::new(vec![
        Text::raw(l.kind.clone()),
        Text::raw(l.class.clone()),
        Text::raw(l.jobs.to_string()),
        Text::raw(l.succeeded.to_string()),
        Text::styled(l.failed.to_string(), failed_style),
        Text::styled(rate, bold()),
        Text::raw(trend(s.trend.iter().copied())),
        Text::styled(ms(p50), style),
        Text::styled(ms(p90), style),
        Text::styled(ms(p99), style),
        // None timed (every job failed before computing): `-`, as `kiln status` shows it.
        Text::raw(ms_of(&l.queue_ms)),
        Text::raw(ms_of(&l.compute_ms)),
        Text::raw(crate::table::speedup_text(speedup)),
    ])
}

fn render_failures(frame: &mut Frame, area: Rect, d: &Dashboard) {
    let title = format!(" Recent failures · {} ", d.failures.len());
    let lines: Vec<Line> = if d.failures.is_empty() {
        vec![Line::raw("none in the results stream's last 10 minutes")]
    } else {
        d.failures
            .iter()
            .map(|f| {
                let t = f.at.time();
                Line::from(vec![
                    Span::raw(format!(
                        "{:02}:{:02}:{:02} ",
                        t.hour(),
                        t.minute(),
                        t.second()
                    )),
                    Span::styled(format!("{:<10} ", f.kind), bold()),
                    Span::raw(format!("{} ", f.id)),
                    Span::styled(f.error.clone(), Style::new().fg(Color::Red)),
                    Span::raw(format!("  ({}, attempt {})", f.worker, f.attempt)),
                ])
            })
            .collect()
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

#[cfg(test)]
mod tests {
    /// A kind whose jobs all failed before computing showed `0.00` ms of compute.
    #[test]
    fn a_median_of_nothing_is_a_dash() {
        let mut stats = kiln_proto::LatencyStats::default();
        assert_eq!(super::ms_of(&stats), "-");
        (stats.count, stats.p50) = (3, 1.5);
        assert_eq!(super::ms_of(&stats), "1.50");
    }
}
