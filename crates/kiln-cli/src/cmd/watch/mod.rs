//! `kiln watch`: a live terminal dashboard (ratatui) of queues, workers, per-kind throughput
//! and latency, and recent failures, refreshed from the metrics stream. `--once` prints the
//! plain-text status once; a stdout that is not a terminal gets it every interval instead.

mod view;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use kiln_client::watch::{Dashboard, Feeds, Unreachable, connected, within_reach};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::cli::{NatsArgs, WatchArgs};

pub async fn run(nats: &NatsArgs, args: WatchArgs) -> anyhow::Result<ExitCode> {
    let client = kiln_client::connect_to_jetstream(&nats.connect_options()).await?;
    // Its requests wait longer than a refresh does (`ANSWER_WITHIN`): a server that stops
    // answering is said to be unreachable, rather than by a request's own timeout error.
    let js = jetstream::ContextBuilder::new()
        .timeout(kiln_client::watch::ANSWER_WITHIN + Duration::from_secs(5))
        .build(client);
    let interval = args.interval().max(Duration::from_millis(100));
    if args.once {
        print!("{}", super::status::overview(&js).await?);
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdout().is_terminal() {
        plain(&js, interval).await;
        return Ok(ExitCode::SUCCESS);
    }
    let dashboard = Dashboard::new(nats.nats_url.clone(), interval.as_millis() as u64);
    let mut screen = crate::screen::Screen::enter()?;
    live(js, screen.terminal(), dashboard, interval).await?;
    Ok(ExitCode::SUCCESS)
}

/// A ticker for refreshes that may take longer than `interval`: the next one waits a whole
/// interval rather than starting at once.
fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Not a terminal: the plain status every interval, without escape codes, until SIGINT or
/// SIGTERM (which stop it at once, also in the middle of a read).
async fn plain(js: &jetstream::Context, interval: Duration) {
    let print = async {
        let mut ticker = ticker(interval);
        loop {
            ticker.tick().await;
            let body = match within_reach(js, super::status::overview(js)).await {
                Ok(Ok(body)) => body,
                // A read that failed as the connection went: the server is unreachable,
                // not in error.
                Ok(Err(_)) if !connected(js) => format!("{}\n", Unreachable::ConnectionLost),
                Ok(Err(e)) => format!("{e:#}\n"),
                Err(why) => format!("{why}\n"),
            };
            // RFC 3339 to the millisecond (Display wrote `1:19:28.112339945 +00:00:00`).
            let now = time::OffsetDateTime::now_utc();
            let now = now
                .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
                .unwrap_or(now);
            let at = now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            println!("--- {at}\n{body}");
        }
    };
    tokio::select! {
        _ = crate::signal::shutdown() => {}
        _ = print => {}
    }
}

/// Keys, read on a thread of their own (crossterm's read blocks).
fn keys() -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while !tx.is_closed() {
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

fn quits(ev: &Event) -> bool {
    match ev {
        Event::Key(key) if key.kind != KeyEventKind::Release => {
            matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

/// Keys and signals here, the server's figures read by a task of their own: however long the
/// server takes to answer (or not), a key or a signal is handled at once.
async fn live(
    js: jetstream::Context,
    terminal: &mut ratatui::DefaultTerminal,
    dashboard: Dashboard,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut keys = keys();
    // Without a readable terminal on stdin there are no keys; signals still stop it.
    let mut keys_open = true;
    let (refreshed, mut latest) = watch::channel(dashboard.clone());
    let reader = tokio::spawn(read(js, dashboard, interval, refreshed));
    let shutdown = crate::signal::shutdown();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            key = keys.recv(), if keys_open => match key {
                Some(ev) if quits(&ev) => break Ok(()),
                Some(_) => {
                    let d = latest.borrow();
                    if let Err(e) = terminal.draw(|f| view::render(f, &d)) {
                        break Err(e.into());
                    }
                }
                None => keys_open = false,
            },
            Ok(()) = latest.changed() => {
                let d = latest.borrow_and_update();
                if let Err(e) = terminal.draw(|f| view::render(f, &d)) {
                    break Err(e.into());
                }
            }
        }
    };
    reader.abort();
    outcome
}

/// Feed `dashboard` from the server and send it to `refreshed` after every refresh, until the
/// receiver is gone.
async fn read(
    js: jetstream::Context,
    mut dashboard: Dashboard,
    interval: Duration,
    refreshed: watch::Sender<Dashboard>,
) {
    // Opened by the first refresh, within its time limit.
    let mut feeds = Feeds::default();
    let mut ticker = ticker(interval);
    loop {
        tokio::select! {
            update = feeds.next() => dashboard.take(update),
            _ = ticker.tick() => {
                dashboard.refresh(&js, &mut feeds).await;
                if refreshed.send(dashboard.clone()).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kiln_kernels::ComputeDevice;
    use kiln_proto::{Codec, DeviceClass, streams};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    use super::*;
    use crate::cmd::roles::LocalRoles;
    use kiln_client::{JobSpec, ResultCollector, publish_all};

    fn screen(terminal: &Terminal<TestBackend>) -> Vec<String> {
        let buffer = terminal.backend().buffer();
        let area = buffer.area;
        (0..area.height)
            .map(|y| {
                (0..area.width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    // Borders, so that a row splits into its cells' words.
                    .replace(['│', '┌', '┐', '└', '┘'], " ")
            })
            .collect()
    }

    /// A real server, worker and aggregator; 20 vector adds and one job that fails; the
    /// dashboard built the way `kiln watch` builds it, drawn into a 160×45 test terminal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dashboard_shows_queues_workers_kinds_and_failures() {
        let server = kiln_testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let topology = kiln_proto::Topology::default();
        streams::ensure_all(&js, &topology).await.unwrap();
        let mut roles = LocalRoles::default();
        let mut config = kiln_worker::WorkerConfig::new(ComputeDevice::Cpu);
        config.name = "watch-test-worker".into();
        config.topology = topology.clone();
        roles.worker(&client, config);
        roles.aggregator(
            &client,
            kiln_aggregator::AggregatorConfig {
                interval: Duration::from_millis(100),
                topology: topology.clone(),
                ..Default::default()
            },
        );

        let add = kiln_kernels::find("vector_add").unwrap();
        let mut jobs: Vec<JobSpec> = (0..20)
            .map(|i| {
                let id = format!("watch-ok-{i}");
                JobSpec::new(
                    add,
                    DeviceClass::Cpu,
                    json!({"len": 1024}),
                    id,
                    i,
                    None,
                    Codec::Json,
                )
                .unwrap()
            })
            .collect();
        // Inputs of different lengths: `kiln submit` would refuse it, the worker answers it
        // with invalid_input.
        jobs.push(JobSpec {
            id: "watch-bad-1".into(),
            subject: kiln_proto::subject::job(DeviceClass::Cpu, "vector_add"),
            body: br#"{"id":"watch-bad-1","params":{"a":[1.0,2.0],"b":[1.0]}}"#.to_vec(),
            codec: Codec::Json,
            digest: None,
        });
        let ids = jobs.iter().map(|j| j.id.clone()).collect();
        let mut collector = ResultCollector::subscribe(&client, None, &[])
            .await
            .unwrap();
        publish_all(&js, jobs, true, || {}).await.unwrap();
        let results = collector
            .collect(ids, Duration::from_secs(60), |_| {})
            .await;
        assert_eq!(results.len(), 21);

        let mut dashboard = Dashboard::new(server.url(), 1000);
        let mut feeds = Feeds::open(&js).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            feeds
                .drain(&mut dashboard, Duration::from_millis(200))
                .await;
            let counted: u64 = dashboard.series.values().map(|s| s.latest.jobs).sum();
            if counted == 21 && !dashboard.failures.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the dashboard saw {counted} of 21 jobs and {} failure(s)",
                dashboard.failures.len()
            );
        }
        // The worker's counts come with its heartbeat (every 2 s).
        loop {
            dashboard.poll(&js).await;
            let done = dashboard
                .workers
                .iter()
                .any(|w| w.name == "watch-test-worker" && w.succeeded == 20 && w.failed == 1);
            if done {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no heartbeat with the worker's counts: {:?}",
                dashboard.workers
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let mut terminal = Terminal::new(TestBackend::new(160, 45)).unwrap();
        terminal.draw(|f| view::render(f, &dashboard)).unwrap();
        let lines = screen(&terminal);
        let text = lines.join("\n");
        let line = |needle: &str| {
            lines
                .iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
                .clone()
        };
        assert!(
            lines[0].contains("kiln watch") && lines[0].contains(&server.url()),
            "{text}"
        );
        // Queues: the cpu consumer with nothing pending and nothing in flight.
        let cpu_queue: Vec<String> = line("workers-cpu")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let at = cpu_queue.iter().position(|w| w == "workers-cpu").unwrap();
        assert_eq!(cpu_queue[at + 1..at + 3], ["0", "0"], "{text}");
        // Workers: ours, serving, 20 succeeded and 1 failed.
        let worker = line("watch-test-worker");
        assert!(worker.contains("serving"), "{worker}");
        let words: Vec<&str> = worker.split_whitespace().collect();
        assert!(words.windows(2).any(|w| w == ["20", "1"]), "{worker}");
        // Kinds: vector_add on cpu, 21 jobs, 20 ok, 1 failed.
        let kind = line("vector_add  cpu");
        let words: Vec<&str> = kind.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "cpu").unwrap();
        assert_eq!(words[at + 1..at + 4], ["21", "20", "1"], "{kind}");
        // Failures: the bad job with its error kind.
        let failure = line("watch-bad-1");
        assert!(failure.contains("invalid_input"), "{failure}");
        assert!(text.contains("Recent failures · 1"), "{text}");

        roles.stop().await.unwrap();
    }

    /// With the server gone, a refresh says so at once (on a line of its own under the header)
    /// and keeps the figures last read, and their time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_with_the_server_gone_says_so_and_keeps_the_figures() {
        let mut server = kiln_testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        streams::ensure_all(&js, &kiln_proto::Topology::default())
            .await
            .unwrap();
        let mut dashboard = Dashboard::new(server.url(), 1000);
        let mut feeds = Feeds::default();
        dashboard.refresh(&js, &mut feeds).await;
        assert_eq!(dashboard.error, None);
        assert_eq!(dashboard.jobs_queued, Some(0));
        let queues: Vec<String> = dashboard.queues.iter().map(|q| q.name.clone()).collect();
        assert_eq!(queues, ["workers-gpu", "workers-cpu", "scheduler"]);
        let read_at = dashboard.now;

        server.kill();
        while client.connection_state() == async_nats::connection::State::Connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Bounded, so that a refresh that waits for the server fails here rather than hangs.
        tokio::time::timeout(Duration::from_secs(10), dashboard.refresh(&js, &mut feeds))
            .await
            .expect("a refresh returns with the server gone");
        let error = dashboard.error.clone().expect("the dashboard says why");
        assert!(
            error.starts_with("server unreachable: the connection is lost"),
            "{error}"
        );
        assert_eq!(dashboard.now, read_at);
        assert_eq!(dashboard.jobs_queued, Some(0));
        assert_eq!(dashboard.queues.len(), queues.len());

        let mut terminal = Terminal::new(TestBackend::new(160, 30)).unwrap();
        terminal.draw(|f| view::render(f, &dashboard)).unwrap();
        let lines = screen(&terminal);
        assert!(lines[0].contains("q, Esc or Ctrl-C quits"), "{}", lines[0]);
        assert_eq!(lines[1].trim(), error);
        assert!(lines[2].contains("Queues · KILN_JOBS 0"), "{}", lines[2]);
    }

    /// The kinds table gives a GPU row its speedup over the CPU row of the same kind, as
    /// `kiln status` does (jobs of one size compared); the CPU row has none.
    #[test]
    fn a_gpu_rows_speedup_over_the_cpu_is_shown() {
        use kiln_aggregator::{Folds, ResultHead};
        let now = time::OffsetDateTime::now_utc();
        let result = |id: &str, class, compute_ms| ResultHead {
            id: id.into(),
            kind: "matmul".into(),
            status: kiln_proto::Status::Succeeded,
            device: "none".into(),
            class,
            worker: "w".into(),
            attempt: 1,
            finished_at: now,
            queue_ms: 1.0,
            compute_ms,
            total_ms: compute_ms + 1.0,
            error: None,
            routing: None,
            replay: 0,
            flops: 2e9,
        };
        let mut folds = Folds::default();
        folds.add(&result("c", DeviceClass::Cpu, 100.0));
        folds.add(&result("g", DeviceClass::Gpu, 4.0));
        let mut dashboard = Dashboard::new("nats://127.0.0.1:4222".into(), 1000);
        for snapshot in folds.snapshots(now) {
            dashboard.snapshot(snapshot);
        }
        let mut terminal = Terminal::new(TestBackend::new(160, 30)).unwrap();
        terminal.draw(|f| view::render(f, &dashboard)).unwrap();
        let lines = screen(&terminal);
        let text = lines.join("\n");
        let last_word = |needle: &str| {
            let line = lines.iter().find(|l| l.contains(needle));
            let line = line.unwrap_or_else(|| panic!("no {needle:?} row in\n{text}"));
            line.split_whitespace().last().unwrap().to_owned()
        };
        assert!(text.contains("speedup"), "{text}");
        assert_eq!(last_word("matmul      gpu"), "25.0x", "{text}");
        assert_eq!(last_word("matmul      cpu"), "-", "{text}");
    }
}
