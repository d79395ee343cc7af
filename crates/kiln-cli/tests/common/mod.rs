//! A real nats-server and real `kiln` processes for end-to-end tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use kiln_proto::{MetricsSnapshot, ResultEvent, streams};
use kiln_testkit::NatsServer;

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A server plus the kiln processes started against it; everything stops on drop. Each
/// process logs (at `info`) to its own file; a failing test prints every process's exit status
/// and the end of its log, so a role that died or hung explains itself.
pub struct Cluster {
    pub server: NatsServer,
    children: Vec<(String, Child)>,
    logs: tempfile::TempDir,
}

impl Cluster {
    pub fn new() -> Self {
        Cluster::on(NatsServer::start())
    }

    /// A cluster around `server` (one started with a configuration of the test's own).
    pub fn on(server: NatsServer) -> Self {
        Cluster {
            server,
            children: Vec::new(),
            logs: tempfile::Builder::new()
                .prefix("kiln-test-logs-")
                .tempdir()
                .expect("a folder for the processes' logs"),
        }
    }

    /// `kiln <args>` against this cluster's server, waiting for it to finish.
    pub fn kiln(&self, args: &[&str]) -> Output {
        Command::new(KILN)
            .args(args)
            .env("NATS_URL", self.server.url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run kiln")
    }

    /// [`Cluster::kiln`] run in folder `dir`.
    pub fn kiln_in(&self, dir: &std::path::Path, args: &[&str]) -> Output {
        Command::new(KILN)
            .args(args)
            .current_dir(dir)
            .env("NATS_URL", self.server.url())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run kiln")
    }

    /// [`Cluster::kiln`] with `input` on its standard input.
    pub fn kiln_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(KILN)
            .args(args)
            .env("NATS_URL", self.server.url())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kiln");
        let mut stdin = child.stdin.take().expect("kiln's standard input");
        stdin.write_all(input).expect("write kiln's standard input");
        drop(stdin);
        child.wait_with_output().expect("run kiln")
    }

    /// Start a long-running `kiln <args>` (worker, aggregator) in the background.
    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        self.spawn_with_env(name, args, &[]);
    }

    /// [`Cluster::spawn`] with extra environment variables.
    pub fn spawn_with_env(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) {
        let log = log_path(self.logs.path(), self.children.len(), name);
        let file = std::fs::File::create(&log).expect("create a process log");
        let child = Command::new(KILN)
            .args(args)
            .envs(env.iter().copied())
            .env("NATS_URL", self.server.url())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(file.try_clone().expect("share the process log"))
            .stderr(file)
            .spawn()
            .expect("start kiln");
        self.children.push((name.to_owned(), child));
    }

    /// Each process's name, exit status (if it has exited) and the last lines of its log.
    pub fn report(&mut self) -> String {
        const TAIL: usize = 40;
        let mut out = String::new();
        for (i, (name, child)) in self.children.iter_mut().enumerate() {
            let status = match child.try_wait() {
                Ok(Some(status)) => format!("exited: {status}"),
                Ok(None) => "running".to_owned(),
                Err(e) => format!("unknown: {e}"),
            };
            let log =
                std::fs::read_to_string(log_path(self.logs.path(), i, name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let skipped = lines.len().saturating_sub(TAIL);
            out.push_str(&format!(
                "--- {name} (pid {}, {status}), {} log lines{}\n",
                child.id(),
                lines.len(),
                if skipped > 0 {
                    format!(", the last {TAIL}")
                } else {
                    String::new()
                }
            ));
            for line in &lines[skipped..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        // JetStream sizes its store from the free disk when it starts: a nearly full disk
        // refuses writes ("insufficient resources") long before the disk is full.
        let log = self.server.log();
        let lines: Vec<&str> = log.lines().collect();
        out.push_str("--- nats-server: its limits, then the end of its log\n");
        for line in lines
            .iter()
            .filter(|l| l.contains("Max Storage") || l.contains("Max Memory"))
        {
            out.push_str(line);
            out.push('\n');
        }
        for line in &lines[lines.len().saturating_sub(20)..] {
            out.push_str(line);
            out.push('\n');
        }
        if let Ok(df) = Command::new("df")
            .arg("-h")
            .arg(self.server.store_dir())
            .output()
        {
            out.push_str(&String::from_utf8_lossy(&df.stdout));
        }
        out
    }

    pub fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("a child of that name")
            .1
    }

    /// What the process named `name` has logged so far.
    pub fn log(&self, name: &str) -> String {
        let index = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .expect("a child of that name");
        std::fs::read_to_string(log_path(self.logs.path(), index, name)).unwrap_or_default()
    }

    pub fn cpu_worker(&mut self) {
        self.cpu_worker_with(&[]);
    }

    /// The CPU worker `test-worker`, with these flags as well.
    pub fn cpu_worker_with(&mut self, flags: &[&str]) {
        let base = ["worker", "--device", "cpu", "--name", "test-worker"];
        self.spawn("worker", &[&base[..], flags].concat());
    }

    pub fn aggregator(&mut self) {
        self.spawn("aggregator", &["aggregator", "--interval-ms", "100"]);
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.server.url())
            .await
            .expect("connect to the test server")
    }

    /// Create the streams the way every kiln process does.
    pub async fn init(&self) {
        let out = self.kiln(&["init"]);
        assert!(
            out.status.success(),
            "kiln init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The log of the `index`-th process a cluster started, named `name`, in its log folder.
fn log_path(logs: &std::path::Path, index: usize, name: &str) -> std::path::PathBuf {
    logs.join(format!("{index}-{name}.log"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the cluster's processes when the test failed:\n{}",
                self.report()
            );
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every result event stored in KILN_RESULTS, by job id (each id must appear once).
pub async fn stored_results(client: &async_nats::Client) -> (usize, HashMap<String, ResultEvent>) {
    let all = all_results(client).await;
    let count = all.len();
    (count, all.into_iter().map(|e| (e.id.clone(), e)).collect())
}

/// Every result event stored in KILN_RESULTS, in stream order.
pub async fn all_results(client: &async_nats::Client) -> Vec<ResultEvent> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(streams::STREAM_RESULTS)
        .await
        .expect("results stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "results.>".into(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut info_stream = js.get_stream(streams::STREAM_RESULTS).await.unwrap();
    let total = info_stream.info().await.unwrap().state.messages as usize;
    let mut messages = consumer.messages().await.expect("messages");
    let mut all = Vec::with_capacity(total);
    while all.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("results arrive")
            .expect("stream open")
            .expect("message");
        all.push(serde_json::from_slice(&message.payload).expect("result parses"));
    }
    all
}

/// Wait until `ids` all have results in KILN_RESULTS; returns them.
pub async fn wait_for_results(
    client: &async_nats::Client,
    ids: &[&str],
    timeout: Duration,
) -> HashMap<String, ResultEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, results) = stored_results(client).await;
        if ids.iter().all(|id| results.contains_key(*id)) {
            return results;
        }
        assert!(
            Instant::now() < deadline,
            "results for {:?} did not all arrive in {timeout:?}; have {:?}",
            ids,
            results.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the aggregator's snapshots satisfy `done`; returns them.
pub async fn wait_for_metrics(
    client: &async_nats::Client,
    timeout: Duration,
    done: impl Fn(&[MetricsSnapshot]) -> bool,
) -> Vec<MetricsSnapshot> {
    let js = jetstream::new(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let snapshots = streams::latest_metrics(&js).await.unwrap_or_default();
        if done(&snapshots) {
            return snapshots;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not reach the expected state in {timeout:?}: {snapshots:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn snapshot<'a>(
    snapshots: &'a [MetricsSnapshot],
    kind: &str,
    class: &str,
) -> Option<&'a MetricsSnapshot> {
    snapshots
        .iter()
        .find(|s| s.kind == kind && s.class == class)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "kiln failed with {}:\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The aggregator's consumer once it has acked every result in `KILN_RESULTS`, with none
/// pending (fails after `timeout`).
pub async fn aggregator_caught_up(
    client: &async_nats::Client,
    timeout: Duration,
) -> jetstream::consumer::Info {
    let mut results = jetstream::new(client.clone())
        .get_stream(streams::STREAM_RESULTS)
        .await
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let last = results.info().await.unwrap().state.last_sequence;
        let info = results
            .consumer_info(streams::CONSUMER_AGGREGATOR)
            .await
            .unwrap();
        if info.ack_floor.stream_sequence == last && info.num_ack_pending == 0 {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "aggregator did not ack through {last}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
