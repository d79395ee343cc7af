//! kiln followed live (what `kiln watch` shows): a [`Dashboard`] of queues from consumer
//! info, live workers from `KILN_WORKERS`, per-(kind, class) throughput and latency from
//! successive metrics snapshots, and recent failures from the results stream, fed by
//! [`Feeds`] and refreshed by [`Dashboard::refresh`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use kiln_proto::streams::{STREAM_DLQ, STREAM_JOBS, STREAM_METRICS, STREAM_RESULTS};
use kiln_proto::{JobError, Latency, LatencyStats, MetricsSnapshot, Status, WorkerInfo};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::cluster::ConsumerState;

/// Throughput and windowed latency are measured over this much time.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Failures kept for the failures panel.
pub const MAX_FAILURES: usize = 50;
/// Throughput samples kept per (kind, class) for the trend column.
const TREND: usize = 24;
/// How long a refresh waits for the server's answers before it calls the server unreachable.
/// A request to a server that went away waits for the client's request timeout (10 s), one
/// after the other: a refresh of a few of them would leave the figures silently stale. A
/// refresh is a dozen requests and one per live worker, one after the other: at 50 ms a round
/// trip, 2 s cut off every refresh of a cluster of 27 workers, so it is 10 s (keys and signals
/// are handled beside it, at once).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Why a refresh read nothing from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The connection is down; the client is reconnecting.
    ConnectionLost,
    /// Connected, but the server did not answer within [`ANSWER_WITHIN`].
    NoAnswer,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::ConnectionLost => {
                f.write_str("server unreachable: the connection is lost, reconnecting")
            }
            Unreachable::NoAnswer => write!(
                f,
                "server unreachable: no answer within {} s, retrying",
                ANSWER_WITHIN.as_secs()
            ),
        }
    }
}

/// Whether the connection behind `js` is up (not reconnecting).
pub fn connected(js: &jetstream::Context) -> bool {
    js.client().connection_state() == async_nats::connection::State::Connected
}

/// `read` (requests to the server behind `js`), unless the connection is down or the answers
/// take longer than [`ANSWER_WITHIN`]: then why, and `read` is dropped unfinished.
pub async fn within_reach<T>(
    js: &jetstream::Context,
    read: impl Future<Output = T>,
) -> Result<T, Unreachable> {
    if !connected(js) {
        return Err(Unreachable::ConnectionLost);
    }
    // A connection lost during the read ends it at once: its requests would wait out their
    // own timeout (seconds) for answers that cannot come.
    let lost = async {
        while connected(js) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        read = tokio::time::timeout(ANSWER_WITHIN, read) => read.map_err(|_| Unreachable::NoAnswer),
        () = lost => Err(Unreachable::ConnectionLost),
    }
}

/// A failed job, from its result event.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// When it finished.
    pub at: OffsetDateTime,
    /// The job's id.
    pub id: String,
    /// The job's kind.
    pub kind: String,
    /// The worker that answered it.
    pub worker: String,
    /// The delivery attempt, from 1.
    pub attempt: u64,
    /// Its error: kind and message.
    pub error: String,
}

/// One snapshot as the dashboard remembers it.
#[derive(Debug, Clone)]
struct Seen {
    at: OffsetDateTime,
    jobs: u64,
    first_finished_at: Option<OffsetDateTime>,
    total: Option<Latency>,
}

/// What a window's figures are measured from.
enum Base<'a> {
    /// The last snapshot at or before the window's start.
    Before(&'a Seen),
    /// The oldest snapshot kept, inside the window.
    Oldest(&'a Seen),
    /// Zero: the pair's first job finished inside the window.
    Nothing,
    /// One snapshot inside the window, of jobs that started before it.
    Unknown,
}

/// A (kind, class) pair: its latest snapshot, the snapshots of the last window, and the
/// throughput measured at each refresh.
#[derive(Debug, Clone)]
pub struct Series {
    /// The latest snapshot.
    pub latest: MetricsSnapshot,
    seen: VecDeque<Seen>,
    /// Jobs per second at each of the last refreshes, oldest first.
    pub trend: VecDeque<f64>,
}

impl Series {
    /// Jobs per second over the last [`WINDOW`] up to `now`: from the last snapshot at or
    /// before the window's start to the latest; when every snapshot kept is inside the
    /// window, from the oldest kept, or from nothing at all when the pair's first job
    /// finished inside the window. `None` when there is nothing to difference yet.
    pub fn rate(&self, now: OffsetDateTime) -> Option<f64> {
        let latest = self.seen.back()?;
        let start = now - WINDOW;
        let (base_at, base_jobs) = match self.base(start) {
            Base::Before(base) if std::ptr::eq(base, latest) => return Some(0.0),
            Base::Before(base) | Base::Oldest(base) => (base.at, base.jobs),
            Base::Nothing => (start, 0),
            Base::Unknown => return None,
        };
        let span = (now - base_at).as_seconds_f64();
        (span > 0.0).then(|| latest.jobs.saturating_sub(base_jobs) as f64 / span)
    }

    /// Submit → result latency of the jobs finished in the window (the latest histogram less
    /// the base's, chosen as for [`Series::rate`]); `None` when none finished in it.
    pub fn window_latency(&self, now: OffsetDateTime) -> Option<LatencyStats> {
        let latest = self.seen.back()?.total.as_ref()?;
        let window = match self.base(now - WINDOW) {
            Base::Before(base) | Base::Oldest(base) => latest.since(base.total.as_ref()?)?,
            Base::Nothing => latest.clone(),
            Base::Unknown => return None,
        };
        (window.count() > 0).then(|| window.stats())
    }

    fn base(&self, start: OffsetDateTime) -> Base<'_> {
        if let Some(before) = self.seen.iter().rev().find(|s| s.at <= start) {
            return Base::Before(before);
        }
        let (Some(oldest), Some(latest)) = (self.seen.front(), self.seen.back()) else {
            return Base::Unknown;
        };
        if latest.first_finished_at.is_some_and(|f| f >= start) {
            Base::Nothing
        } else if self.seen.len() > 1 {
            Base::Oldest(oldest)
        } else {
            Base::Unknown
        }
    }

    fn push(&mut self, snapshot: MetricsSnapshot) {
        let seen = Seen {
            at: snapshot.updated_at,
            jobs: snapshot.jobs,
            first_finished_at: snapshot.first_finished_at,
            total: Latency::from_stats(&snapshot.total_ms),
        };
        if self.seen.back().is_some_and(|s| s.at >= seen.at) {
            return;
        }
        self.seen.push_back(seen);
        self.latest = snapshot;
        // Keep one snapshot older than two windows as a base, drop the rest.
        let horizon = self.latest.updated_at - 2 * WINDOW;
        while self.seen.len() > 2 && self.seen[1].at <= horizon {
            self.seen.pop_front();
        }
    }
}

/// Everything a dashboard shows.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// The server's URL, as given.
    pub server: String,
    /// Milliseconds between refreshes.
    pub interval_ms: u64,
    /// When it was last refreshed.
    pub now: OffsetDateTime,
    /// Jobs in `KILN_JOBS` (`None`: unreadable).
    pub jobs_queued: Option<u64>,
    /// Result events in `KILN_RESULTS`.
    pub results_stored: Option<u64>,
    /// Dead letters in `KILN_DLQ`.
    pub dead_letters: Option<u64>,
    /// The job consumers' backlogs.
    pub queues: Vec<ConsumerState>,
    /// Live workers.
    pub workers: Vec<WorkerInfo>,
    /// Why the workers could not be read, when they could not.
    pub workers_error: Option<String>,
    /// Every (kind, class) seen in the metrics.
    pub series: BTreeMap<(String, String), Series>,
    /// Newest first.
    pub failures: VecDeque<Failure>,
    /// A problem reaching the server, shown in the header.
    pub error: Option<String>,
}

impl Dashboard {
    /// An empty dashboard of the server at `server`, refreshed every `interval_ms`.
    pub fn new(server: String, interval_ms: u64) -> Self {
        Dashboard {
            server,
            interval_ms,
            now: OffsetDateTime::now_utc(),
            jobs_queued: None,
            results_stored: None,
            dead_letters: None,
            queues: Vec::new(),
            workers: Vec::new(),
            workers_error: None,
            series: BTreeMap::new(),
            failures: VecDeque::new(),
            error: None,
        }
    }

    /// Take in a message from [`Feeds`].
    pub fn take(&mut self, update: Update) {
        match update {
            Update::Metrics(snapshot) => self.snapshot(*snapshot),
            Update::Result(payload) => self.result(&payload),
        }
    }

    /// Take in a metrics snapshot.
    pub fn snapshot(&mut self, snapshot: MetricsSnapshot) {
        let key = (snapshot.kind.clone(), snapshot.class.clone());
        match self.series.get_mut(&key) {
            Some(series) => series.push(snapshot),
            None => {
                let mut series = Series {
                    latest: snapshot.clone(),
                    seen: VecDeque::new(),
                    trend: VecDeque::new(),
                };
                series.push(snapshot);
                self.series.insert(key, series);
            }
        }
    }

    /// Take in a result event's body; failed ones go to the failures panel.
    pub fn result(&mut self, payload: &[u8]) {
        // Most results succeed: skip them without decoding.
        if !contains(payload, br#""status":"failed""#) {
            return;
        }
        #[derive(Deserialize)]
        struct Brief {
            id: String,
            kind: String,
            status: Status,
            #[serde(default)]
            worker: String,
            #[serde(default)]
            attempt: u64,
            #[serde(with = "time::serde::rfc3339")]
            finished_at: OffsetDateTime,
            #[serde(default)]
            error: Option<JobError>,
        }
        let Ok(brief) = serde_json::from_slice::<Brief>(payload) else {
            return;
        };
        if brief.status != Status::Failed {
            return;
        }
        self.failures.push_front(Failure {
            at: brief.finished_at,
            id: brief.id,
            kind: brief.kind,
            worker: brief.worker,
            attempt: brief.attempt,
            error: brief
                .error
                .map_or_else(|| "no error given".into(), |e| e.to_string()),
        });
        self.failures.truncate(MAX_FAILURES);
    }

    /// Open the feeds still closed and [`Dashboard::poll`], within [`within_reach`]. When the
    /// server is unreachable the figures last read stay (as of `now`, left as it was) and
    /// `error` says so.
    pub async fn refresh(&mut self, js: &jetstream::Context, feeds: &mut Feeds) {
        let last = self.now;
        let read = async {
            feeds.reopen(js).await;
            self.poll(js).await;
        };
        if let Err(why) = within_reach(js, read).await {
            self.now = last;
            let t = last.time();
            self.error = Some(format!(
                "{why}; the figures are from {:02}:{:02}:{:02} UTC",
                t.hour(),
                t.minute(),
                t.second()
            ));
        }
    }

    /// Re-read queues, workers and stream sizes; sample every series' throughput.
    pub async fn poll(&mut self, js: &jetstream::Context) {
        self.now = OffsetDateTime::now_utc();
        self.error = None;
        match js.get_stream(STREAM_JOBS).await {
            Ok(mut jobs) => {
                self.jobs_queued = jobs.info().await.ok().map(|i| i.state.messages);
                self.queues = crate::cluster::consumers(&mut jobs).await;
            }
            Err(e) => {
                self.error = Some(format!(
                    "{STREAM_JOBS} unavailable ({e}); run `kiln init` or start a kiln role"
                ));
            }
        }
        for (name, slot) in [
            (STREAM_RESULTS, &mut self.results_stored),
            (STREAM_DLQ, &mut self.dead_letters),
        ] {
            *slot = match js.get_stream(name).await {
                Ok(mut s) => s.info().await.ok().map(|i| i.state.messages),
                Err(_) => None,
            };
        }
        match kiln_proto::streams::live_workers(js).await {
            Ok(workers) => {
                self.workers = workers;
                self.workers_error = None;
            }
            Err(e) => self.workers_error = Some(e),
        }
        let now = self.now;
        for series in self.series.values_mut() {
            if let Some(rate) = series.rate(now) {
                series.trend.push_back(rate);
                if series.trend.len() > TREND {
                    series.trend.pop_front();
                }
            }
        }
    }
}

/// How far back the failures feed starts reading the results stream.
const FAILURES_SINCE: Duration = Duration::from_secs(10 * 60);

/// What a dashboard reads continuously: every metrics snapshot (the latest per subject
/// first, then each new one) and the result events of the last ten minutes. The default is
/// both closed, for [`Feeds::reopen`] to open.
#[derive(Default)]
pub struct Feeds {
    metrics: Option<consumer::pull::Ordered>,
    results: Option<consumer::pull::Ordered>,
}

/// One message from [`Feeds`], for [`Dashboard::take`].
#[derive(Debug)]
pub enum Update {
    /// A metrics snapshot.
    Metrics(Box<MetricsSnapshot>),
    /// A result event's body.
    Result(bytes::Bytes),
}

impl Feeds {
    /// Open both feeds; one whose stream does not exist yet stays closed until
    /// [`Feeds::reopen`].
    pub async fn open(js: &jetstream::Context) -> Self {
        let since = OffsetDateTime::now_utc() - FAILURES_SINCE;
        let (metrics, results) = tokio::join!(
            ordered(
                js,
                STREAM_METRICS,
                "metrics.>",
                consumer::DeliverPolicy::LastPerSubject
            ),
            ordered(
                js,
                STREAM_RESULTS,
                "results.>",
                consumer::DeliverPolicy::ByStartTime { start_time: since }
            ),
        );
        Feeds { metrics, results }
    }

    /// Open the feeds still closed (their streams appear when the first kiln process starts).
    pub async fn reopen(&mut self, js: &jetstream::Context) {
        if self.metrics.is_some() && self.results.is_some() {
            return;
        }
        let reopened = Feeds::open(js).await;
        self.metrics = self.metrics.take().or(reopened.metrics);
        self.results = self.results.take().or(reopened.results);
    }

    /// The next message of either feed (never, while both are closed). Cancel-safe.
    pub async fn next(&mut self) -> Update {
        loop {
            tokio::select! {
                Some(m) = next(&mut self.metrics) => {
                    if let Ok(m) = m
                        && let Ok(snapshot) = serde_json::from_slice(&m.payload)
                    {
                        return Update::Metrics(snapshot);
                    }
                }
                Some(r) = next(&mut self.results) => {
                    if let Ok(r) = r {
                        return Update::Result(r.payload.clone());
                    }
                }
                // Both feeds ended: nothing more comes.
                else => return std::future::pending().await,
            }
        }
    }

    /// Take into `dashboard` whatever arrives for `wait`.
    pub async fn drain(&mut self, dashboard: &mut Dashboard, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(update) = tokio::time::timeout_at(deadline, self.next()).await {
            dashboard.take(update);
        }
    }
}

/// An ordered consumer of `stream` from `deliver`, or `None` when it cannot be made.
async fn ordered(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    deliver: consumer::DeliverPolicy,
) -> Option<consumer::pull::Ordered> {
    js.get_stream(stream)
        .await
        .ok()?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.into(),
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .ok()?
        .messages()
        .await
        .ok()
}

type Delivery = Result<jetstream::Message, consumer::pull::OrderedError>;

async fn next(feed: &mut Option<consumer::pull::Ordered>) -> Option<Delivery> {
    match feed {
        Some(messages) => messages.next().await,
        None => std::future::pending().await,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(at: OffsetDateTime, jobs: u64, latencies_ms: &[f64]) -> MetricsSnapshot {
        snapshot_from(at, None, jobs, latencies_ms)
    }

    fn snapshot_from(
        at: OffsetDateTime,
        first: Option<OffsetDateTime>,
        jobs: u64,
        latencies_ms: &[f64],
    ) -> MetricsSnapshot {
        let mut total = Latency::default();
        for &ms in latencies_ms {
            total.record_ms(ms);
        }
        MetricsSnapshot {
            kind: "vector_add".into(),
            class: "cpu".into(),
            jobs,
            succeeded: jobs,
            failed: 0,
            failures: Default::default(),
            duplicates: 0,
            devices: Default::default(),
            first_finished_at: first,
            last_finished_at: None,
            throughput_per_s: 0.0,
            recent_per_s: 0.0,
            queue_ms: Default::default(),
            compute_ms: Default::default(),
            compute_by_size: Default::default(),
            total_ms: total.stats(),
            prediction: Default::default(),
            updated_at: at,
            results_through: 0,
            results_above: Vec::new(),
        }
    }

    #[test]
    fn throughput_and_latency_come_from_successive_snapshots() {
        let t0 = OffsetDateTime::now_utc() - Duration::from_secs(30);
        let mut d = Dashboard::new("nats://x".into(), 1000);
        let old: Vec<f64> = vec![1.0; 100];
        d.snapshot(snapshot(t0, 100, &old));
        let key = ("vector_add".to_owned(), "cpu".to_owned());
        // One snapshot, long ago: nothing finished since.
        assert_eq!(d.series[&key].rate(t0 + Duration::from_secs(20)), Some(0.0));
        // 200 more jobs at 50 ms in the next 10 s.
        let mut all = old.clone();
        all.extend(vec![50.0; 200]);
        d.snapshot(snapshot(t0 + Duration::from_secs(10), 300, &all));
        let now = t0 + Duration::from_secs(10);
        let series = &d.series[&key];
        let rate = series.rate(now).unwrap();
        assert!((rate - 20.0).abs() < 1e-9, "{rate}");
        let window = series.window_latency(now).unwrap();
        assert_eq!(window.count, 200);
        assert!((window.p50 - 50.0).abs() < 0.1, "{}", window.p50);
        // Twenty seconds later, no new snapshot: the rate falls to zero, no window latency.
        let later = now + Duration::from_secs(20);
        assert_eq!(series.rate(later), Some(0.0));
        assert!(series.window_latency(later).is_none());
    }

    #[test]
    fn a_pair_first_seen_inside_the_window_has_a_rate_at_once() {
        let now = OffsetDateTime::now_utc();
        let mut d = Dashboard::new("nats://x".into(), 1000);
        let first = now - Duration::from_secs(4);
        d.snapshot(snapshot_from(
            now - Duration::from_secs(1),
            Some(first),
            30,
            &[5.0; 30],
        ));
        let series = d.series.values().next().unwrap();
        // 30 jobs, all in the last 10 s.
        assert!((series.rate(now).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(series.window_latency(now).unwrap().count, 30);
        // The same snapshot of jobs that began long ago: no rate until a second one.
        let mut d = Dashboard::new("nats://x".into(), 1000);
        let long_ago = now - Duration::from_secs(3600);
        d.snapshot(snapshot_from(
            now - Duration::from_secs(1),
            Some(long_ago),
            30,
            &[5.0; 30],
        ));
        let series = d.series.values().next().unwrap();
        assert_eq!(series.rate(now), None);
        assert!(series.window_latency(now).is_none());
    }

    #[test]
    fn failures_are_kept_newest_first() {
        let mut d = Dashboard::new("nats://x".into(), 1000);
        d.result(br#"{"id":"ok-1","kind":"matmul","status":"succeeded","finished_at":"2026-11-26T20:00:00Z"}"#);
        d.result(br#"{"id":"bad-1","kind":"matmul","status":"failed","worker":"w","attempt":1,"finished_at":"2026-11-26T20:00:01Z","error":{"kind":"invalid_input","message":"no"}}"#);
        d.result(br#"{"id":"bad-2","kind":"conv2d","status":"failed","worker":"w","attempt":2,"finished_at":"2026-11-26T20:00:02Z","error":{"kind":"timeout","message":"slow"}}"#);
        let ids: Vec<&str> = d.failures.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["bad-2", "bad-1"]);
        assert!(
            d.failures[0].error.contains("timeout"),
            "{}",
            d.failures[0].error
        );
    }
}
