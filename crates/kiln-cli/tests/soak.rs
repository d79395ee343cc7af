//! Soak (not in CI: `just soak`). `KILN_SOAK_JOBS` mixed jobs (default 1,000,000: vector_add,
//! matmul, conv2d and now and then train_mlp, a fifth of them through the scheduler on
//! `jobs.auto.*`) through a 3-node JetStream cluster (`kiln --replicas 3 init`) while, every
//! `KILN_SOAK_KILL_EVERY_S` seconds (default 20; 0: no kills), one of a worker, the scheduler,
//! the aggregator or a cluster node is SIGKILLed and started again a few seconds later (never
//! two things down at once). Then: every acknowledged job answered exactly once, the
//! aggregator's counts equal to the stored results, and every role's resident memory flat
//! over each of its processes' lifetimes. `KILN_SOAK_SEED` repeats a run's choices (the seed is
//! printed at the start).

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, jetstream};
use common::{KILN, assert_success};
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use kiln_proto::{ErrorKind, HEADER_MSG_ID, MetricsSnapshot, ResultEvent, Status, streams};
use kiln_testkit::NatsCluster;

/// PubAck futures in flight at once.
const WINDOW: usize = 1_000;
/// Acknowledged jobs without a stored result at most before publishing waits: the run stays
/// a stream of jobs under chaos, not a bulk load followed by a drain.
const BACKLOG: usize = 20_000;
/// How long an unacknowledged job waits before it is published again (a leader election
/// answers at once with "no responders": retried at once, a window would spin).
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How often progress is printed and every role's memory sampled.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A process lifetime's memory is judged from this many samples on.
const MIN_SAMPLES: usize = 6;
/// Allowed growth of the median RSS from the first third of a lifetime's samples to the
/// last third: 50% plus 20 MiB.
const GROWTH_FACTOR: f64 = 1.5;
const GROWTH_SLACK_KIB: u64 = 20 * 1024;
const WORKERS: [&str; 3] = ["w1", "w2", "w3"];

struct Settings {
    jobs: usize,
    /// Zero: no kills.
    kill_every: Duration,
    seed: u64,
}

impl Settings {
    fn from_env() -> Self {
        let seed = env_number("KILN_SOAK_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        let jobs: usize = env_number("KILN_SOAK_JOBS").unwrap_or(1_000_000);
        assert!(jobs > 0, "KILN_SOAK_JOBS must be at least 1");
        let kill_every: f64 = env_number("KILN_SOAK_KILL_EVERY_S").unwrap_or(20.0);
        assert!(
            kill_every.is_finite() && kill_every >= 0.0,
            "KILN_SOAK_KILL_EVERY_S must be a number of seconds, 0 or more"
        );
        Settings {
            jobs,
            kill_every: Duration::from_secs_f64(kill_every),
            seed,
        }
    }
}

/// `name` parsed as a number (underscores allowed: `1_000_000`), when set.
fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    let parsed = value.trim().replace('_', "").parse();
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

/// A 64-bit LCG (Knuth's MMIX constants), its state mixed once from the seed; the output is
/// the state's upper half.
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        // splitmix64's finaliser, so that neighbouring seeds start far apart.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Lcg(z ^ (z >> 31))
    }

    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 32
    }

    /// Uniform in `0..n` (near enough for n far below 2^32).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

fn job_id(i: usize) -> String {
    format!("soak-{i}")
}

fn job_index(id: &str, jobs: usize) -> Option<usize> {
    let i: usize = id.strip_prefix("soak-")?.parse().ok()?;
    (i < jobs && job_id(i) == id).then_some(i)
}

/// Job `i` of a run: made again from the seed whenever it is needed (a retry publishes the
/// same body under the same id; the check compares each result's kind with its job's).
struct Job {
    id: String,
    kind: &'static str,
    subject: String,
    body: String,
}

fn job(seed: u64, i: usize) -> Job {
    let mut rng = Lcg::new(seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let id = job_id(i);
    let (kind, params) = match rng.below(100) {
        0 => ("train_mlp", serde_json::json!({"samples": 64, "epochs": 1})),
        1..=45 => (
            "vector_add",
            serde_json::json!({"len": rng.between(16, 1024)}),
        ),
        46..=75 => ("matmul", serde_json::json!({"n": rng.between(8, 64)})),
        _ => (
            "conv2d",
            serde_json::json!({"batch": 1, "channels": 1, "height": 16, "width": 16, "filter": "sobel"}),
        ),
    };
    let class = if rng.below(5) == 0 { "auto" } else { "cpu" };
    let body = serde_json::json!({"id": id, "params": params, "seed": rng.below(1_000)});
    Job {
        subject: format!("jobs.{class}.{kind}"),
        id,
        kind,
        body: body.to_string(),
    }
}

/// One kiln process (aggregator, scheduler, worker), started again after each kill.
struct Role {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
    /// Index in [`Lab::lifetimes`] of the running process.
    lifetime: usize,
}

/// One process of a role, from its start to its kill: resident memory sampled every
/// [`SAMPLE_EVERY`], in KiB.
struct Lifetime {
    role: String,
    pid: u32,
    rss_kib: Vec<u64>,
}

/// The kiln processes against the cluster, all given every node's URL; each role logs (at
/// `info`, every lifetime appended) to its own file. Killed on drop; when the test fails, the
/// last lines of their logs are shown and the logs kept.
struct Lab {
    urls: String,
    roles: Vec<Role>,
    lifetimes: Vec<Lifetime>,
    /// Processes that exited without being killed.
    crashes: Vec<String>,
    logs: tempfile::TempDir,
}

impl Lab {
    fn new(urls: String) -> Self {
        Lab {
            urls,
            roles: Vec::new(),
            lifetimes: Vec::new(),
            crashes: Vec::new(),
            logs: tempfile::Builder::new()
                .prefix("kiln-soak-logs-")
                .tempdir()
                .expect("a folder for the processes' logs"),
        }
    }

    fn add(&mut self, name: &str, args: &[&str]) {
        self.roles.push(Role {
            name: name.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            lifetime: 0,
        });
        self.spawn(self.roles.len() - 1);
    }

    fn spawn(&mut self, r: usize) {
        let role = &self.roles[r];
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.logs.path().join(&role.name))
            .expect("open a process log");
        let child = Command::new(KILN)
            .args(&role.args)
            .env("NATS_URL", &self.urls)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("share the process log"))
            .stderr(log)
            .spawn()
            .expect("start kiln");
        self.lifetimes.push(Lifetime {
            role: role.name.clone(),
            pid: child.id(),
            rss_kib: Vec::new(),
        });
        let role = &mut self.roles[r];
        role.lifetime = self.lifetimes.len() - 1;
        role.child = Some(child);
    }

    /// SIGKILL role `r`'s process; returns its pid.
    fn kill(&mut self, r: usize) -> u32 {
        let mut child = self.roles[r].child.take().expect("the role is running");
        let _ = child.kill();
        let _ = child.wait();
        child.id()
    }

    /// Record every running role's RSS; a process that exited on its own is recorded as a
    /// crash and started again.
    fn sample(&mut self, since: Instant) {
        for r in 0..self.roles.len() {
            let Some(child) = self.roles[r].child.as_mut() else {
                continue;
            };
            match child.try_wait() {
                Ok(None) => {
                    if let Some(kib) = rss_kib(child.id()) {
                        let lifetime = self.roles[r].lifetime;
                        self.lifetimes[lifetime].rss_kib.push(kib);
                    }
                }
                Ok(Some(status)) => {
                    let pid = child.id();
                    let crash = format!(
                        "{} (pid {pid}) exited by itself after {:.0} s of the run: {status}",
                        self.roles[r].name,
                        since.elapsed().as_secs_f64()
                    );
                    eprintln!("soak: {crash}; starting it again");
                    self.crashes.push(crash);
                    self.roles[r].child = None;
                    self.spawn(r);
                }
                Err(e) => panic!("could not check on {}: {e}", self.roles[r].name),
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.logs.disable_cleanup(true);
            eprintln!(
                "soak: every process's whole log (the nodes' too) is kept in {}",
                self.logs.path().display()
            );
        }
        for role in &mut self.roles {
            if let Some(child) = role.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if std::thread::panicking() {
                let log =
                    std::fs::read_to_string(self.logs.path().join(&role.name)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- {} (last lines of all its lifetimes) ---", role.name);
                for line in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A process's resident set (`VmRSS` in `/proc/<pid>/status`), in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The cluster, its nodes' logs copied into the kiln processes' log folder when the test
/// fails.
struct KeepLogs(NatsCluster, PathBuf);

impl Drop for KeepLogs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..NatsCluster::SIZE {
                let _ = std::fs::write(self.1.join(self.0.name(i)), self.0.log(i));
            }
        }
    }
}

fn lock(lab: &Mutex<Lab>) -> MutexGuard<'_, Lab> {
    lab.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Kills by what was killed.
#[derive(Debug, Default)]
struct Kills {
    workers: usize,
    scheduler: usize,
    aggregator: usize,
    nodes: usize,
}

impl Kills {
    fn total(&self) -> usize {
        self.workers + self.scheduler + self.aggregator + self.nodes
    }
}

enum Victim {
    Role(usize),
    Node(usize),
}

/// The thread that samples memory and kills: it owns the cluster (a node's restart waits for
/// the cluster to be ready again) and gives it back when stopped, with everything running.
/// Dropped while running (the test failed), it is stopped and joined, so no process outlives
/// the test.
struct Chaos {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(NatsCluster, Kills)>>,
    logs: PathBuf,
}

impl Chaos {
    fn start(
        cluster: NatsCluster,
        lab: Arc<Mutex<Lab>>,
        settings: &Settings,
        kills: Arc<AtomicUsize>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (seed, kill_every) = (settings.seed, settings.kill_every);
        let logs = lock(&lab).logs.path().to_owned();
        let handle = std::thread::Builder::new()
            .name("soak-chaos".into())
            .spawn({
                let stop = stop.clone();
                move || chaos(cluster, &lab, &stop, seed, kill_every, &kills)
            })
            .expect("start the chaos thread");
        Chaos {
            stop,
            handle: Some(handle),
            logs,
        }
    }

    /// Fail the test now if the chaos thread has (a node that did not come back, say).
    fn check(&mut self) {
        if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            self.finish();
            panic!("the chaos thread stopped early");
        }
    }

    /// Stop killing, start what is down, and take the cluster back.
    fn finish(&mut self) -> (KeepLogs, Kills) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.handle.take().expect("the chaos thread runs");
        let (cluster, kills) = handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (KeepLogs(cluster, self.logs.clone()), kills)
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take()
            && let Ok((cluster, _)) = handle.join()
        {
            drop(KeepLogs(cluster, self.logs.clone()));
        }
    }
}

fn chaos(
    mut cluster: NatsCluster,
    lab: &Mutex<Lab>,
    stop: &AtomicBool,
    seed: u64,
    kill_every: Duration,
    total_kills: &AtomicUsize,
) -> (NatsCluster, Kills) {
    let started = Instant::now();
    let mut rng = Lcg::new(seed ^ 0xC4A0_5C4A_05C4_A05C);
    let mut kills = Kills::default();
    let mut next_sample = started;
    let mut next_kill = started + kill_every;
    let mut down: Option<(Victim, Instant)> = None;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now = Instant::now();
        if now >= next_sample {
            lock(lab).sample(started);
            next_sample = now + SAMPLE_EVERY;
        }
        if let Some((victim, at)) = &down
            && (stopping || now >= *at)
        {
            match *victim {
                Victim::Role(r) => lock(lab).spawn(r),
                Victim::Node(i) => {
                    cluster.restart(i);
                    eprintln!(
                        "soak: {:.0} s: {} is back, the cluster ready after {:.1} s",
                        started.elapsed().as_secs_f64(),
                        cluster.name(i),
                        now.elapsed().as_secs_f64()
                    );
                }
            }
            down = None;
        }
        if stopping && down.is_none() {
            return (cluster, kills);
        }
        if !stopping && !kill_every.is_zero() && down.is_none() && now >= next_kill {
            let back_in = Duration::from_millis(rng.between(2_000, 5_000));
            let (victim, what) = match rng.below(4) {
                0 => {
                    let i = rng.below(NatsCluster::SIZE as u64) as usize;
                    cluster.kill(i);
                    kills.nodes += 1;
                    (Victim::Node(i), format!("node {}", cluster.name(i)))
                }
                n => {
                    let mut lab = lock(lab);
                    let r = match n {
                        1 => {
                            kills.aggregator += 1;
                            0
                        }
                        2 => {
                            kills.scheduler += 1;
                            1
                        }
                        _ => {
                            kills.workers += 1;
                            2 + rng.below(WORKERS.len() as u64) as usize
                        }
                    };
                    let pid = lab.kill(r);
                    (
                        Victim::Role(r),
                        format!("{} (pid {pid})", lab.roles[r].name),
                    )
                }
            };
            total_kills.fetch_add(1, Ordering::SeqCst);
            eprintln!(
                "soak: {:.0} s: SIGKILL {what}, back in {:.1} s",
                started.elapsed().as_secs_f64(),
                back_in.as_secs_f64()
            );
            down = Some((victim, now + back_in));
            next_kill = now + kill_every;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `KILN_RESULTS`'s message count, from stream info; `None` while the cluster cannot say.
async fn results_stored(stream: &mut jetstream::stream::Stream) -> Option<usize> {
    let info = tokio::time::timeout(Duration::from_secs(5), stream.info())
        .await
        .ok()?
        .ok()?;
    Some(info.state.messages as usize)
}

/// What one pass over `KILN_RESULTS` found.
#[derive(Default)]
struct Pass {
    stored: usize,
    /// Results per job index.
    answers: Vec<u32>,
    /// Results of ids this run never sent.
    foreign: Vec<String>,
    /// Results whose kind or subject is not their job's.
    misplaced: Vec<String>,
    redelivered: usize,
    /// Failed results: error kind, message.
    failures: Vec<(ErrorKind, String)>,
    /// Stored results by (kind, class), as the aggregator folds them.
    rows: BTreeMap<(String, String), u64>,
}

/// Every result in `KILN_RESULTS`, once, through an ordered consumer; `None` when the
/// cluster could not answer this time.
async fn try_pass(js: &jetstream::Context, seed: u64, jobs: usize) -> Option<Pass> {
    let mut stream = js.get_stream(streams::STREAM_RESULTS).await.ok()?;
    let total = results_stored(&mut stream).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "results.>".into(),
            ..Default::default()
        })
        .await
        .ok()?;
    let mut messages = consumer.messages().await.ok()?;
    let mut pass = Pass {
        answers: vec![0; jobs],
        ..Pass::default()
    };
    while pass.stored < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .ok()??
            .ok()?;
        pass.stored += 1;
        let event: ResultEvent = serde_json::from_slice(&message.payload).expect("result parses");
        *pass
            .rows
            .entry((event.kind.clone(), event.class.as_str().to_owned()))
            .or_default() += 1;
        if event.attempt > 1 {
            pass.redelivered += 1;
        }
        if event.status == Status::Failed {
            let error = event.error.as_ref();
            pass.failures.push((
                error.map_or(ErrorKind::Internal, |e| e.kind),
                error.map_or_else(|| "(no error)".to_owned(), |e| e.message.clone()),
            ));
        }
        let Some(i) = job_index(&event.id, jobs) else {
            pass.foreign
                .push(format!("{} ({})", event.id, message.subject));
            continue;
        };
        pass.answers[i] += 1;
        let expected = job(seed, i);
        let subject = format!("results.{}.{}", expected.kind, expected.id);
        if event.kind != expected.kind || message.subject.as_str() != subject {
            pass.misplaced.push(format!(
                "{} ({} job) answered as {} on {}",
                event.id, expected.kind, event.kind, message.subject
            ));
        }
    }
    Some(pass)
}

async fn pass(js: &jetstream::Context, seed: u64, jobs: usize) -> Pass {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(pass) = try_pass(js, seed, jobs).await {
            return pass;
        }
        assert!(
            Instant::now() < deadline,
            "could not read KILN_RESULTS for 300 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn median(samples: &[u64]) -> u64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Snapshot rows summed by (kind, class), and the duplicates they dropped.
fn aggregated(snapshots: &[MetricsSnapshot]) -> (BTreeMap<(String, String), u64>, u64) {
    let rows = snapshots
        .iter()
        .filter(|m| m.jobs > 0)
        .map(|m| ((m.kind.clone(), m.class.clone()), m.jobs))
        .collect();
    (rows, snapshots.iter().map(|m| m.duplicates).sum())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: run with just soak"]
async fn mixed_jobs_under_random_kills_are_answered_once_counted_once_with_flat_memory() {
    let settings = Settings::from_env();
    let (jobs, seed) = (settings.jobs, settings.seed);
    eprintln!(
        "soak: {jobs} jobs, a kill every {:?}, seed {seed} (KILN_SOAK_SEED={seed} repeats the \
         jobs and the choice of victims)",
        settings.kill_every
    );
    let started = Instant::now();
    let cluster = NatsCluster::start();
    let urls = cluster.urls();
    let init = Command::new(KILN)
        .args(["--replicas", "3", "init"])
        .env("NATS_URL", &urls)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .expect("run kiln init");
    assert_success(&init);

    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .expect("connect to the cluster");
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client.clone());

    // Roles 0 and 1 are the aggregator and the scheduler, then the workers (`chaos` picks
    // them by these places).
    let lab = Arc::new(Mutex::new(Lab::new(urls.clone())));
    {
        let mut lab = lock(&lab);
        lab.add("aggregator", &["aggregator", "--interval-ms", "500"]);
        lab.add("scheduler", &["scheduler"]);
        for name in WORKERS {
            lab.add(
                name,
                &["worker", "--device", "cpu", "--name", name, "--no-warmup"],
            );
        }
    }
    let total_kills = Arc::new(AtomicUsize::new(0));
    let mut chaos = Chaos::start(cluster, lab.clone(), &settings, total_kills.clone());
    eprintln!(
        "soak: the processes log into {} (kept if the test fails)",
        chaos.logs.display()
    );

    // Publish with up to WINDOW acks in flight, each unacknowledged job again under its id
    // (the server drops a copy it already stored), until all are acknowledged.
    let deadline = Instant::now() + Duration::from_secs_f64(300.0 + jobs as f64 * 0.02);
    let mut results_stream = js.get_stream(streams::STREAM_RESULTS).await.unwrap();
    let mut acked = vec![false; jobs];
    let mut acked_count = 0;
    let mut next_job = 0;
    // Jobs to publish again, each with the time it may go (in that order).
    let mut retry: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut failed_tries = 0u64;
    let mut stored = 0;
    let mut next_count = Instant::now();
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    let progress = |acked: usize, stored: usize, failed_tries: u64| {
        eprintln!(
            "soak: {:.0} s: {acked} of {jobs} jobs acknowledged ({failed_tries} publish tries \
             retried), {stored} results stored, {} kills",
            started.elapsed().as_secs_f64(),
            total_kills.load(Ordering::SeqCst)
        );
    };
    while acked_count < jobs {
        chaos.check();
        let now = Instant::now();
        if now >= next_count {
            stored = results_stored(&mut results_stream).await.unwrap_or(stored);
            next_count = now + Duration::from_secs(1);
        }
        if now >= next_progress {
            progress(acked_count, stored, failed_tries);
            next_progress = now + PROGRESS_EVERY;
        }
        assert!(
            now < deadline,
            "{acked_count} of {jobs} jobs acknowledged by the deadline"
        );
        while in_flight.len() < WINDOW && acked_count.saturating_sub(stored) < BACKLOG {
            let i = if retry.front().is_some_and(|&(_, at)| at <= now) {
                retry.pop_front().map(|(i, _)| i)
            } else {
                (next_job < jobs).then(|| {
                    next_job += 1;
                    next_job - 1
                })
            };
            let Some(i) = i else {
                break;
            };
            let job = job(seed, i);
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_MSG_ID, job.id.as_str());
            match js
                .publish_with_headers(job.subject, headers, job.body.into())
                .await
            {
                Ok(ack) => in_flight.push(async move { (i, ack.await) }),
                Err(_) => {
                    failed_tries += 1;
                    retry.push_back((i, Instant::now() + RETRY_AFTER));
                    break;
                }
            }
        }
        let first = match tokio::time::timeout(Duration::from_millis(250), in_flight.next()).await {
            Ok(Some(done)) => Some(done),
            Ok(None) => {
                // Nothing in flight: the backlog is full, or only retries not yet due.
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
            Err(_) => None,
        };
        let mut done = first;
        while let Some((i, ack)) = done {
            match ack {
                Ok(_) if !acked[i] => {
                    acked[i] = true;
                    acked_count += 1;
                }
                Ok(_) => {}
                Err(_) => {
                    failed_tries += 1;
                    retry.push_back((i, Instant::now() + RETRY_AFTER));
                }
            }
            done = in_flight.next().now_or_never().flatten();
        }
    }
    let published_s = started.elapsed().as_secs_f64();
    progress(acked_count, stored, failed_tries);

    // Wait for the results under chaos, counting them cheaply.
    while stored < jobs && Instant::now() < deadline {
        chaos.check();
        tokio::time::sleep(Duration::from_secs(1)).await;
        stored = results_stored(&mut results_stream).await.unwrap_or(stored);
        if Instant::now() >= next_progress {
            progress(acked_count, stored, failed_tries);
            next_progress = Instant::now() + PROGRESS_EVERY;
        }
    }
    let answered_s = started.elapsed().as_secs_f64();
    let (_cluster, kills) = chaos.finish();
    progress(acked_count, stored, failed_tries);

    // Exactly once: one result per id, under its job's kind, for every acknowledged job.
    // Every check adds to `problems`; all are printed, with the memory table and the
    // summary, before the test fails on them.
    let mut problems: Vec<String> = Vec::new();
    let pass = pass(&js, seed, jobs).await;
    let distinct = pass.answers.iter().filter(|&&n| n > 0).count() + pass.foreign.len();
    if !pass.foreign.is_empty() {
        problems.push(format!(
            "{} results of ids never sent: {:?}",
            pass.foreign.len(),
            first(&pass.foreign)
        ));
    }
    if !pass.misplaced.is_empty() {
        problems.push(format!(
            "{} results under another kind or subject than their job's: {:?}",
            pass.misplaced.len(),
            first(&pass.misplaced)
        ));
    }
    if pass.stored != distinct {
        let doubled: Vec<String> = (0..jobs)
            .filter(|&i| pass.answers[i] > 1)
            .map(|i| format!("{} ({} results)", job_id(i), pass.answers[i]))
            .collect();
        problems.push(format!(
            "{} results stored for {distinct} job ids; answered more than once: {:?}",
            pass.stored,
            first(&doubled)
        ));
    }
    let unanswered: Vec<String> = (0..jobs)
        .filter(|&i| acked[i] && pass.answers[i] == 0)
        .map(|i| {
            let job = job(seed, i);
            format!("{} on {}", job.id, job.subject)
        })
        .collect();
    if !unanswered.is_empty() {
        problems.push(format!(
            "{} of {acked_count} acknowledged jobs have no result {answered_s:.0} s into the \
             run: {:?}",
            unanswered.len(),
            first(&unanswered)
        ));
    }
    // A job may fail only as documented under chaos: given up after its last delivery.
    let unexpected: Vec<String> = pass
        .failures
        .iter()
        .filter(|(kind, message)| {
            *kind != ErrorKind::Internal || !message.starts_with("gave up after")
        })
        .map(|(kind, message)| format!("{kind}: {message}"))
        .collect();
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} jobs failed otherwise than given up after their last delivery: {:?}",
            unexpected.len(),
            first(&unexpected)
        ));
    }

    // The aggregator counts every stored result once: wait until it has counted as many,
    // then a few snapshots more (a result counted twice late would show).
    let total = pass.stored as u64;
    let sum = |snapshots: &[MetricsSnapshot]| snapshots.iter().map(|m| m.jobs).sum::<u64>();
    let metrics = jetstream::new(client.clone());
    let counted_by = Instant::now() + Duration::from_secs_f64(300.0 + jobs as f64 * 0.002);
    loop {
        let snapshots = streams::latest_metrics(&metrics).await.unwrap_or_default();
        if sum(&snapshots) >= total || Instant::now() >= counted_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let snapshots = streams::latest_metrics(&metrics).await.unwrap_or_default();
    let (rows, duplicates) = aggregated(&snapshots);
    let counted = sum(&snapshots);
    let differing: Vec<String> = rows
        .keys()
        .chain(pass.rows.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|key| rows.get(*key) != pass.rows.get(*key))
        .map(|(kind, class)| {
            let key = (kind.clone(), class.clone());
            format!(
                "{kind}/{class}: counted {}, stored {}",
                rows.get(&key).copied().unwrap_or(0),
                pass.rows.get(&key).copied().unwrap_or(0)
            )
        })
        .collect();
    if counted != total || !differing.is_empty() {
        problems.push(format!(
            "the aggregator counted {counted} jobs over every kind and class for {total} \
             stored results ({duplicates} duplicates dropped); by kind/class: {differing:?}"
        ));
    }

    // Memory: every process lifetime long enough to judge.
    let lab = lock(&lab);
    eprintln!(
        "soak: resident memory, median of the first and the last third of each lifetime's \
         samples (every {} s)",
        SAMPLE_EVERY.as_secs()
    );
    eprintln!(
        "  {:<11} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "role", "pid", "samples", "first MiB", "last MiB", "growth"
    );
    for lifetime in &lab.lifetimes {
        let samples = &lifetime.rss_kib;
        let n = samples.len();
        if n < MIN_SAMPLES {
            eprintln!(
                "  {:<11} {:>8} {:>8} {:>10} {:>10} {:>8}",
                lifetime.role, lifetime.pid, n, "-", "-", "too short"
            );
            continue;
        }
        let (first, last) = (median(&samples[..n / 3]), median(&samples[n - n / 3..]));
        let growth = last as f64 / first.max(1) as f64 - 1.0;
        eprintln!(
            "  {:<11} {:>8} {:>8} {:>10.1} {:>10.1} {:>7.0}%",
            lifetime.role,
            lifetime.pid,
            n,
            mib(first),
            mib(last),
            growth * 100.0
        );
        if last as f64 >= first as f64 * GROWTH_FACTOR + GROWTH_SLACK_KIB as f64 {
            problems.push(format!(
                "{} (pid {}): resident memory grew by 50% + 20 MiB or more, {:.1} MiB -> \
                 {:.1} MiB over {n} samples",
                lifetime.role,
                lifetime.pid,
                mib(first),
                mib(last)
            ));
        }
    }
    problems.extend(lab.crashes.iter().cloned());

    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "soak: {jobs} jobs in {elapsed:.0} s ({:.0} jobs/s; all acknowledged after \
         {published_s:.0} s, all answered after {answered_s:.0} s), {} kills (workers {}, \
         scheduler {}, aggregator {}, nodes {}), {} redelivered (attempt > 1), {} failed, \
         {duplicates} duplicate results dropped by the aggregator, {failed_tries} publish tries \
         retried, {} processes exited by themselves; {} lost, {} answered twice",
        jobs as f64 / answered_s,
        kills.total(),
        kills.workers,
        kills.scheduler,
        kills.aggregator,
        kills.nodes,
        pass.redelivered,
        pass.failures.len(),
        lab.crashes.len(),
        unanswered.len(),
        pass.answers.iter().filter(|&&n| n > 1).count()
    );
    assert!(
        problems.is_empty(),
        "the soak found {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The first few of a long list, for a message.
fn first(items: &[String]) -> &[String] {
    &items[..items.len().min(20)]
}
