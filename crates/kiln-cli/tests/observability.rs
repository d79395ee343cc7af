//! Observability end to end: real nats-server, real `kiln` processes. Their `/metrics` is
//! scraped and parsed as Prometheus text, `/healthz` and `/readyz` follow the NATS
//! connection, and one job's spans, exported over OTLP/HTTP to a receiver in this test, share
//! one trace across the submitter, scheduler, worker and aggregator.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use common::{Cluster, KILN, assert_success, stored_results};
use kiln_proto::Status;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(60);

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").to_string()
}

/// `GET http://<addr><path>`: status and body, or `None` when nothing answers.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Poll `GET addr path` until `accept` holds; panics with the last answer after [`WAIT`].
async fn wait_for(addr: &str, path: &str, accept: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = get(addr, path).await;
        if let Some((status, body)) = &answer
            && accept(*status, body)
        {
            return (*status, body.clone());
        }
        assert!(
            Instant::now() < deadline,
            "GET {addr}{path} did not give the expected answer in {WAIT:?}; last: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A parsed `/metrics` exposition.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("the exposition parses"))
    }

    /// The sum of the samples `name` whose labels include `labels` (`None`: none has them).
    /// A sum, not the first: the counters of every kind and class are exported from the
    /// start, at 0.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(*v),
                _ => None,
            })
            .reduce(|a, b| a + b)
    }

    /// The cumulative bucket counts of histogram `name` with `labels`.
    fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(counts) => {
                    counts.iter().map(|c| (c.less_than, c.count)).collect()
                }
                _ => Vec::new(),
            })
            .unwrap_or_default()
    }
}

/// Scrape `addr` until `done` holds; returns that scrape.
async fn scrape_until(addr: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let (_, text) = wait_for(addr, "/metrics", |status, body| {
        status == 200 && done(&Scrape::parse(body))
    })
    .await;
    Scrape::parse(&text)
}

async fn publish_raw(client: &async_nats::Client, subject: &str, id: &str, body: &str) {
    let js = jetstream::new(client.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(subject.to_owned(), headers, body.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("the server stores the job");
}

/// Auto jobs of kinds a sender made up are counted under `unknown`, not under a label each:
/// one series per made-up name would grow the scheduler's metrics without bound.
#[tokio::test(flavor = "multi_thread")]
async fn made_up_auto_kinds_are_routed_under_one_unknown_label() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let scheduler = free_addr();
    cluster.spawn("scheduler", &["scheduler", "--metrics-addr", &scheduler]);
    let client = cluster.client().await;
    for (kind, id) in [("madeup1", "made-up-1"), ("madeup2", "made-up-2")] {
        let subject = format!("jobs.auto.{kind}");
        publish_raw(&client, &subject, id, &format!("{{\"id\":\"{id}\"}}")).await;
    }
    let results = common::wait_for_results(
        &client,
        &["made-up-1", "made-up-2"],
        Duration::from_secs(60),
    )
    .await;
    for result in results.values() {
        assert_eq!(result.status, Status::Failed, "{result:?}");
        assert_eq!(result.kind, "unknown");
    }
    let unknown = [("kind", "unknown"), ("class", "cpu")];
    let scrape = scrape_until(&scheduler, |s| {
        s.value("kiln_scheduler_routed_jobs_total", &unknown) == Some(2.0)
    })
    .await;
    for kind in ["madeup1", "madeup2"] {
        let made_up = [("kind", kind)];
        assert_eq!(
            scrape.value("kiln_scheduler_routed_jobs_total", &made_up),
            None
        );
    }
}

/// Results `KILN_RESULTS` dropped (its size limit) while no aggregator ran are missing from
/// the counts for good: the aggregator says how many, in a log line and a counter, so that
/// the counts plus the dropped make the jobs answered (they went missing without a word).
#[tokio::test(flavor = "multi_thread")]
async fn results_dropped_before_the_aggregator_read_them_are_counted_as_such() {
    let mut cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init", "--results-max-bytes", "1MiB"]));
    cluster.cpu_worker();
    let jobs: u64 = 3000;
    let count = jobs.to_string();
    let submit = ["submit", "vector_add", "-p", "len=1000", "--count", &count];
    let out = cluster.kiln(&submit);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // All answered (the stream's last sequence counts every result stored, dropped or not).
    let js = jetstream::new(cluster.client().await);
    let mut results = js.get_stream("KILN_RESULTS").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while results.info().await.unwrap().state.last_sequence < jobs {
        assert!(Instant::now() < deadline, "the jobs were not all answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let aggregator = free_addr();
    cluster.spawn("aggregator", &["aggregator", "--metrics-addr", &aggregator]);
    let total = |s: &Scrape| {
        let counted = s.value(
            "kiln_jobs_total",
            &[("kind", "vector_add"), ("status", "succeeded")],
        );
        let dropped = s.value("kiln_results_dropped_unread_total", &[]);
        counted.unwrap_or(0.0) + dropped.unwrap_or(0.0)
    };
    let scrape = scrape_until(&aggregator, |s| total(s) >= jobs as f64).await;
    assert_eq!(total(&scrape), jobs as f64);
    let dropped = scrape
        .value("kiln_results_dropped_unread_total", &[])
        .unwrap();
    assert!(dropped > 0.0, "1 MiB holds fewer than {jobs} results");
    assert!(
        cluster
            .log("aggregator")
            .contains("results were dropped from KILN_RESULTS")
    );
}

/// A job cancelled while it waited for the worker's compute slot took no device time: it is
/// not in `kiln_worker_compute_seconds` (it was counted there as a 0 s job, dragging the
/// quantiles down), while the training cancelled on the slot is.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_cancelled_before_the_device_has_no_compute_time() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let worker = free_addr();
    cluster.cpu_worker_with(&["--compute-slots", "1", "--metrics-addr", &worker]);
    // Small jobs first: the worker then holds jobs ahead of its compute slot.
    let small = ["submit", "vector_add", "-p", "len=8", "-n", "50", "--wait"];
    assert_success(&cluster.kiln(&small));
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let deadline = Instant::now() + WAIT;
    for (id, subject, body, waiting) in [
        (
            "slot",
            "jobs.cpu.train_mlp",
            r#"{"id":"slot","params":{"epochs":10000}}"#,
            false,
        ),
        (
            "waits",
            "jobs.cpu.matmul",
            r#"{"id":"waits","params":{"n":256}}"#,
            true,
        ),
    ] {
        publish_raw(&client, subject, id, body).await;
        // Held as expected (the training on the slot, the product waiting for it).
        loop {
            let workers = kiln_proto::streams::live_workers(&js)
                .await
                .unwrap_or_default();
            let held = workers
                .iter()
                .flat_map(|w| &w.running)
                .any(|j| j.id == id && j.waiting == waiting);
            if held {
                break;
            }
            assert!(Instant::now() < deadline, "{id} never held");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The waiting one first: with the slot still taken, it is answered as it waits.
    assert_success(&cluster.kiln(&["cancel", "waits"]));
    let waits = common::wait_for_results(&client, &["waits"], WAIT).await;
    assert_eq!(waits["waits"].compute_ms, 0.0);
    assert_success(&cluster.kiln(&["cancel", "slot"]));
    let slot = common::wait_for_results(&client, &["slot"], WAIT).await;
    assert!(slot["slot"].compute_ms > 0.0);
    let scraped = scrape_until(&worker, |s| {
        s.value(
            "kiln_worker_jobs_total",
            &[("kind", "train_mlp"), ("status", "failed")],
        ) == Some(1.0)
            && s.value(
                "kiln_worker_jobs_total",
                &[("kind", "matmul"), ("status", "failed")],
            ) == Some(1.0)
    })
    .await;
    let count = |kind| scraped.value("kiln_worker_compute_seconds_count", &[("kind", kind)]);
    assert_eq!(count("train_mlp"), Some(1.0));
    assert_eq!(count("matmul"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_of_worker_and_aggregator_count_jobs_latencies_backlog_and_speedup() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let worker = free_addr();
    let aggregator = free_addr();
    cluster.spawn(
        "worker",
        &[
            "worker",
            "--device",
            "cpu",
            "--name",
            "obs-worker",
            "--metrics-addr",
            &worker,
        ],
    );
    cluster.spawn(
        "aggregator",
        &[
            "aggregator",
            "--interval-ms",
            "100",
            "--metrics-addr",
            &aggregator,
        ],
    );
    wait_for(&worker, "/readyz", |s, _| s == 200).await;
    wait_for(&aggregator, "/readyz", |s, _| s == 200).await;

    // 20 jobs that succeed, 2 that fail validation.
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=64",
        "--count",
        "20",
        "--id",
        "ok",
        "--wait",
    ]);
    assert_success(&out);
    let client = cluster.client().await;
    for i in 0..2 {
        let id = format!("bad-{i}");
        let body = format!(r#"{{"id":"{id}","params":{{"len":"many"}}}}"#);
        publish_raw(&client, "jobs.cpu.vector_add", &id, &body).await;
    }

    let cpu_ok = [
        ("kind", "vector_add"),
        ("class", "cpu"),
        ("status", "succeeded"),
    ];
    let cpu_failed = [
        ("kind", "vector_add"),
        ("class", "cpu"),
        ("status", "failed"),
    ];
    let agg = scrape_until(&aggregator, |s| {
        s.value("kiln_jobs_total", &cpu_ok) == Some(20.0)
            && s.value("kiln_jobs_total", &cpu_failed) == Some(2.0)
    })
    .await;
    let kc = [("kind", "vector_add"), ("class", "cpu")];
    assert_eq!(
        agg.value(
            "kiln_job_failures_total",
            &[
                ("kind", "vector_add"),
                ("class", "cpu"),
                ("error", "invalid_input")
            ]
        ),
        Some(2.0)
    );
    for histogram in [
        "kiln_job_queue_seconds",
        "kiln_job_compute_seconds",
        "kiln_job_total_seconds",
    ] {
        // Compute times are the succeeded jobs' (20), the others every job's.
        let count = match histogram {
            "kiln_job_compute_seconds" => 20.0,
            _ => 22.0,
        };
        assert_eq!(
            agg.value(&format!("{histogram}_count"), &kc),
            Some(count),
            "{histogram}"
        );
        let buckets = agg.buckets(histogram, &kc);
        assert_eq!(buckets.len(), kiln_telemetry::LATENCY_BUCKETS_S.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert_eq!(buckets.last().map(|b| b.1), Some(count), "{histogram} +Inf");
    }
    // The histogram's sum is the results' own total_ms, in seconds.
    let (_, results) = stored_results(&client).await;
    let total_s: f64 = results.values().map(|r| r.total_ms / 1000.0).sum();
    let sum = agg.value("kiln_job_total_seconds_sum", &kc).expect("a sum");
    assert!((sum - total_s).abs() < 1e-6, "{sum} vs {total_s}");
    assert_eq!(agg.value("kiln_result_duplicates_total", &kc), None);
    // Throughput is set at the end of each snapshot interval.
    let ticked = scrape_until(&aggregator, |s| {
        s.value("kiln_throughput_jobs_per_second", &kc).is_some()
    })
    .await;
    assert!(
        ticked
            .value("kiln_throughput_jobs_per_second", &kc)
            .is_some_and(|v| v.is_finite() && v >= 0.0)
    );
    assert!(agg.value("process_resident_memory_bytes", &[]).unwrap() > 0.0);

    // The worker counts a job after its result is stored, and reads memory every 2 s.
    let kind_ok = [("kind", "vector_add"), ("status", "succeeded")];
    let kind_failed = [("kind", "vector_add"), ("status", "failed")];
    let served = scrape_until(&worker, |s| {
        s.value("kiln_worker_device_memory_in_use_bytes", &[])
            .is_some_and(|v| v > 0.0)
            && s.value("kiln_worker_jobs_total", &kind_failed) == Some(2.0)
            && s.value("kiln_worker_jobs_in_flight", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(served.value("kiln_worker_jobs_total", &kind_ok), Some(20.0));
    assert_eq!(
        served.value("kiln_worker_jobs_total", &kind_failed),
        Some(2.0)
    );
    // Jobs that failed validation never reach the device.
    assert_eq!(
        served.value(
            "kiln_worker_compute_seconds_count",
            &[("kind", "vector_add")]
        ),
        Some(20.0)
    );
    assert_eq!(served.value("kiln_worker_jobs_in_flight", &[]), Some(0.0));
    assert_eq!(
        served.value(
            "kiln_worker_info",
            &[
                ("worker", "obs-worker"),
                ("device", "cpu"),
                ("class", "cpu")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        served.value("kiln_worker_device_memory_reserved_bytes", &[]),
        Some(0.0)
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        served.value(
            "kiln_build_info",
            &[("version", version), ("role", "worker")]
        ),
        Some(1.0)
    );
    assert_eq!(
        agg.value(
            "kiln_build_info",
            &[("version", version), ("role", "aggregator")]
        ),
        Some(1.0)
    );

    // Live workers per class, from the heartbeat bucket; none of the GPU class yet. Two jobs
    // kept as dead letters (as a worker keeps one) are counted from KILN_DLQ.
    for i in 0..2 {
        let id = format!("dlq-obs-{i}");
        publish_raw(&client, "dlq.vector_add", &id, r#"{"params":{"len":8}}"#).await;
    }
    let sampled = scrape_until(&aggregator, |s| {
        s.value("kiln_workers_live", &[("class", "cpu")]) == Some(1.0)
            && s.value("kiln_dead_letters", &[]) == Some(2.0)
    })
    .await;
    assert_eq!(
        sampled.value("kiln_workers_live", &[("class", "gpu")]),
        Some(0.0)
    );

    // Five jobs for a class nobody serves yet: the aggregator sees them waiting.
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-d",
        "gpu",
        "-p",
        "len=64",
        "--count",
        "5",
        "--id",
        "gpu",
    ]);
    assert_success(&out);
    // Consumers are read every 2 s, one after the other: wait for a sweep that saw it all.
    let waiting = scrape_until(&aggregator, |s| {
        s.value("kiln_backlog_jobs", &[("class", "gpu")]) == Some(5.0)
            && s.value("kiln_backlog_jobs", &[("class", "cpu")]) == Some(0.0)
            && s.value(
                "kiln_consumer_pending_messages",
                &[("consumer", "aggregator")],
            ) == Some(0.0)
    })
    .await;
    assert_eq!(
        waiting.value(
            "kiln_consumer_pending_messages",
            &[("consumer", "workers-gpu")]
        ),
        Some(5.0)
    );
    assert_eq!(
        waiting.value("kiln_backlog_jobs", &[("class", "cpu")]),
        Some(0.0)
    );
    assert_eq!(
        waiting.value(
            "kiln_consumer_pending_messages",
            &[("consumer", "aggregator")]
        ),
        Some(0.0)
    );

    // A CPU worker standing in for the GPU class serves them; the speedup of the same kind
    // and size bucket is mean CPU compute over mean "GPU" compute, from the results.
    cluster.spawn(
        "gpu-worker",
        &[
            "worker",
            "--device",
            "cpu",
            "--serve-class",
            "gpu",
            "--name",
            "obs-gpu",
        ],
    );
    let gpu_ok = [
        ("kind", "vector_add"),
        ("class", "gpu"),
        ("status", "succeeded"),
    ];
    scrape_until(&aggregator, |s| {
        s.value("kiln_jobs_total", &gpu_ok) == Some(5.0)
    })
    .await;
    let (_, results) = stored_results(&client).await;
    let mean = |class: kiln_proto::DeviceClass| {
        let ms: Vec<f64> = results
            .values()
            .filter(|r| r.class == class && r.status == Status::Succeeded)
            .map(|r| r.compute_ms)
            .collect();
        ms.iter().sum::<f64>() / ms.len() as f64
    };
    let expected = mean(kiln_proto::DeviceClass::Cpu) / mean(kiln_proto::DeviceClass::Gpu);
    let size = kiln_telemetry::size_bucket(64.0);
    assert_eq!(size, "1e1");
    let speedup_labels = [("kind", "vector_add"), ("size", size.as_str())];
    let agg = scrape_until(&aggregator, |s| {
        s.value("kiln_gpu_speedup_ratio", &speedup_labels)
            .is_some_and(|v| (v - expected).abs() <= 1e-9 * expected)
    })
    .await;
    assert_eq!(
        agg.value(
            "kiln_job_compute_seconds_count",
            &[("kind", "vector_add"), ("class", "gpu")]
        ),
        Some(5.0)
    );
    scrape_until(&aggregator, |s| {
        s.value("kiln_backlog_jobs", &[("class", "gpu")]) == Some(0.0)
            && s.value("kiln_workers_live", &[("class", "gpu")]) == Some(1.0)
            && s.value("kiln_workers_live", &[("class", "cpu")]) == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_endpoints_follow_the_nats_connection_of_every_role() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let roles = [
        ("worker", free_addr()),
        ("aggregator", free_addr()),
        ("scheduler", free_addr()),
    ];
    for (role, addr) in &roles {
        let mut args = vec![*role, "--metrics-addr", addr.as_str()];
        if *role == "worker" {
            args.extend(["--device", "cpu"]);
        }
        cluster.spawn(role, &args);
    }
    for (role, addr) in &roles {
        let (_, body) = wait_for(addr, "/readyz", |s, _| s == 200).await;
        assert_eq!(body, "ready\n", "{role}");
        assert_eq!(
            get(addr, "/healthz").await,
            Some((200, "ok\n".into())),
            "{role}"
        );
        // Every role says which kiln it is.
        let (_, text) = wait_for(addr, "/metrics", |s, _| s == 200).await;
        assert_eq!(
            Scrape::parse(&text).value(
                "kiln_build_info",
                &[("version", env!("CARGO_PKG_VERSION")), ("role", role)]
            ),
            Some(1.0),
            "{role}"
        );
        let connected = scrape_until(addr, |s| s.value("kiln_nats_connected", &[]).is_some());
        assert_eq!(
            connected.await.value("kiln_nats_connected", &[]),
            Some(1.0),
            "{role}"
        );
    }

    cluster.server.kill();
    for (role, addr) in &roles {
        let (_, body) = wait_for(addr, "/readyz", |s, _| s == 503).await;
        assert_eq!(
            body, "not ready: disconnected from NATS; reconnecting\n",
            "{role}"
        );
        // Still scraped (`up` is 1), saying its gauges are stale.
        let (_, text) = wait_for(addr, "/metrics", |s, _| s == 200).await;
        assert_eq!(
            Scrape::parse(&text).value("kiln_nats_connected", &[]),
            Some(0.0),
            "{role}"
        );
        // Alive all the same: restarting the process would not bring the server back.
        assert_eq!(
            get(addr, "/healthz").await,
            Some((200, "ok\n".into())),
            "{role}"
        );
    }

    cluster.server.start_again();
    for (role, addr) in &roles {
        let (_, body) = wait_for(addr, "/readyz", |s, _| s == 200).await;
        assert_eq!(body, "ready\n", "{role}");
        let connected = scrape_until(addr, |s| s.value("kiln_nats_connected", &[]) == Some(1.0));
        connected.await;
    }
    // And they work again: a job goes through worker and aggregator.
    let out = cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--wait"]);
    assert_success(&out);
}

/// One span as the OTLP/JSON export gives it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

fn spans(requests: &[serde_json::Value]) -> Vec<Span> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let attributes = |list: &serde_json::Value| -> HashMap<String, String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let value = &kv["value"];
                let value = value
                    .get("stringValue")
                    .map(text)
                    .unwrap_or_else(|| value.to_string());
                (text(&kv["key"]), value)
            })
            .collect()
    };
    let mut out = Vec::new();
    for request in requests {
        for resource in request["resourceSpans"].as_array().into_iter().flatten() {
            let service = attributes(&resource["resource"]["attributes"])
                .remove("service.name")
                .unwrap_or_default();
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    out.push(Span {
                        service: service.clone(),
                        name: text(&span["name"]),
                        trace_id: text(&span["traceId"]),
                        span_id: text(&span["spanId"]),
                        parent: span.get("parentSpanId").map(text).unwrap_or_default(),
                        attributes: attributes(&span["attributes"]),
                    });
                }
            }
        }
    }
    out
}

/// An OTLP/HTTP receiver: keeps every JSON export request posted to `/v1/traces`.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use axum::extract::State;
    type Received = Arc<Mutex<Vec<serde_json::Value>>>;
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(
                |State(received): State<Received>, body: axum::body::Bytes| async move {
                    if let Ok(request) = serde_json::from_slice(&body) {
                        received.lock().unwrap().push(request);
                    }
                    ([("content-type", "application/json")], "{}")
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (endpoint, received)
}

/// Wait until the receiver holds spans satisfying `done`; returns them all.
async fn wait_for_spans(
    received: &Mutex<Vec<serde_json::Value>>,
    done: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    let deadline = Instant::now() + WAIT;
    loop {
        let all = spans(&received.lock().unwrap());
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "the expected spans did not arrive in {WAIT:?}; have {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_spans_submitter_scheduler_worker_and_aggregator() {
    let (endpoint, received) = otlp_receiver().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut cluster = Cluster::new();
    cluster.init().await;
    let worker = free_addr();
    cluster.spawn_with_env(
        "worker",
        &["worker", "--device", "cpu", "--metrics-addr", &worker],
        &otel,
    );
    let scheduler = free_addr();
    let aggregator = free_addr();
    cluster.spawn_with_env(
        "scheduler",
        &["scheduler", "--metrics-addr", &scheduler],
        &otel,
    );
    cluster.spawn_with_env(
        "aggregator",
        &[
            "aggregator",
            "--interval-ms",
            "100",
            "--metrics-addr",
            &aggregator,
        ],
        &otel,
    );
    for addr in [&worker, &scheduler, &aggregator] {
        wait_for(addr, "/readyz", |s, _| s == 200).await;
    }

    let out = Command::new(KILN)
        .args([
            "submit",
            "vector_add",
            "-d",
            "auto",
            "-p",
            "len=16",
            "--id",
            "traced",
            "--wait",
        ])
        .env("NATS_URL", cluster.server.url())
        .envs(otel)
        .output()
        .expect("run kiln submit");
    assert_success(&out);

    let named = |all: &[Span], name: &str, trace: &str| -> Option<Span> {
        all.iter()
            .find(|s| s.name == name && s.trace_id == trace)
            .cloned()
    };
    let submit_of = |all: &[Span]| -> Option<Span> {
        all.iter()
            .find(|s| {
                s.name == "kiln.submit"
                    && s.attributes.get("kiln.job.id").map(String::as_str) == Some("traced")
            })
            .cloned()
    };
    let all = wait_for_spans(&received, |all| {
        submit_of(all)
            .is_some_and(|submit| named(all, "kiln.aggregate", &submit.trace_id).is_some())
    })
    .await;
    let submit = submit_of(&all).unwrap();
    let trace = submit.trace_id.as_str();
    assert_eq!(trace.len(), 32, "{submit:?}");
    let span =
        |name: &str| named(&all, name, trace).unwrap_or_else(|| panic!("no {name} in {all:#?}"));
    let route = span("kiln.route");
    let job = span("kiln.job");
    let queue = span("kiln.queue_wait");
    let compute = span("kiln.compute");
    let publish = span("kiln.publish_result");
    let aggregate = span("kiln.aggregate");

    assert_eq!(submit.service, "kiln-submit");
    assert_eq!(submit.parent, "", "the submitter starts the trace");
    assert_eq!(route.service, "kiln-scheduler");
    assert_eq!(route.parent, submit.span_id);
    assert_eq!(route.attributes["kiln.route.chosen"], "cpu");
    assert_eq!(job.service, "kiln-worker");
    assert_eq!(job.parent, route.span_id);
    assert_eq!(job.attributes["kiln.job.id"], "traced");
    assert_eq!(job.attributes["kiln.job.status"], "succeeded");
    for child in [&queue, &compute, &publish] {
        assert_eq!(child.service, "kiln-worker", "{child:?}");
        assert_eq!(child.parent, job.span_id, "{child:?}");
    }
    assert_eq!(aggregate.service, "kiln-aggregator");
    assert_eq!(aggregate.parent, publish.span_id);
    assert_eq!(aggregate.attributes["kiln.job.id"], "traced");

    // The routing is counted by the scheduler, and its prediction error by the aggregator.
    let kc = [("kind", "vector_add"), ("class", "cpu")];
    let routed = scrape_until(&scheduler, |s| {
        s.value("kiln_scheduler_routed_jobs_total", &kc).is_some()
    })
    .await;
    assert_eq!(
        routed.value("kiln_scheduler_routed_jobs_total", &kc),
        Some(1.0)
    );
    assert_eq!(
        routed.value("kiln_scheduler_route_failures_total", &[]),
        Some(0.0)
    );
    let agg = scrape_until(&aggregator, |s| {
        s.value(
            "kiln_jobs_total",
            &[("kind", "vector_add"), ("status", "succeeded")],
        ) == Some(1.0)
    })
    .await;
    // The scheduler predicts only for a class it has seen a live worker of; a job routed
    // before its first look at the workers carries no prediction.
    let result: kiln_proto::ResultEvent =
        serde_json::from_slice(&out.stdout).expect("--wait prints the result event");
    let predicted = result
        .routing
        .as_ref()
        .expect("an auto job carries its routing")
        .predicted_ms();
    assert_eq!(
        agg.value("kiln_scheduler_prediction_error_seconds_count", &kc),
        predicted.map(|_| 1.0),
        "{result:?}"
    );
    if let Some(predicted) = predicted {
        let error = (predicted - result.total_ms).abs() / 1000.0;
        let sum = agg
            .value("kiln_scheduler_prediction_error_seconds_sum", &kc)
            .expect("a sum");
        assert!((sum - error).abs() < 1e-9, "{sum} vs {error}");
    }

    // A job published without trace context starts a new trace at the worker, which the
    // aggregator continues.
    let client = cluster.client().await;
    publish_raw(
        &client,
        "jobs.cpu.vector_add",
        "untraced",
        r#"{"id":"untraced","params":{"len":4}}"#,
    )
    .await;
    let job_of = |all: &[Span]| -> Option<Span> {
        all.iter()
            .find(|s| {
                s.name == "kiln.job"
                    && s.attributes.get("kiln.job.id").map(String::as_str) == Some("untraced")
            })
            .cloned()
    };
    let all = wait_for_spans(&received, |all| {
        job_of(all).is_some_and(|job| named(all, "kiln.aggregate", &job.trace_id).is_some())
    })
    .await;
    let job = job_of(&all).unwrap();
    assert_eq!(job.parent, "", "{job:?}");
    assert_ne!(job.trace_id, trace);
    let publish = named(&all, "kiln.publish_result", &job.trace_id).unwrap();
    let aggregate = named(&all, "kiln.aggregate", &job.trace_id).unwrap();
    assert_eq!(publish.parent, job.span_id);
    assert_eq!(aggregate.parent, publish.span_id);
    assert_eq!(aggregate.service, "kiln-aggregator");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_exporter_the_worker_forwards_the_trace_context_it_got() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let mut results = client
        .subscribe("results.vector_add.>")
        .await
        .expect("subscribe");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "forwarded");
    headers.insert("traceparent", traceparent);
    headers.insert("tracestate", "vendor=value");
    jetstream::new(client.clone())
        .publish_with_headers(
            "jobs.cpu.vector_add",
            headers,
            r#"{"id":"forwarded","params":{"len":4}}"#.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    let result = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut results))
        .await
        .expect("a result in time")
        .expect("subscription open");
    let headers = result.headers.expect("the result has headers");
    assert_eq!(
        headers.get("traceparent").map(|v| v.as_str()),
        Some(traceparent)
    );
    assert_eq!(
        headers.get("tracestate").map(|v| v.as_str()),
        Some("vendor=value")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_without_a_server_say_once_which_url_they_cannot_reach_in_plain_text() {
    // Nothing listens there.
    let url = format!("nats://{}", free_addr());
    let logs = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for role in ["worker", "aggregator", "scheduler"] {
        let log = logs.path().join(format!("{role}.log"));
        let child = Command::new(KILN)
            .args([role])
            .env("NATS_URL", &url)
            .env("KILN_DEVICE", "cpu")
            // The default filter and colours: stderr is a file here, not a terminal.
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        children.push((role, log, child));
    }
    let deadline = Instant::now() + WAIT;
    for (role, log, _) in &children {
        while !std::fs::read_to_string(log)
            .unwrap()
            .contains("could not reach NATS")
        {
            assert!(
                Instant::now() < deadline,
                "{role} never said it could not connect"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The client retries many times a second at first: none of them is logged again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (role, log, mut child) in children {
        assert_eq!(child.try_wait().unwrap(), None, "{role} keeps retrying");
        child.kill().unwrap();
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("NATS")).collect();
        assert_eq!(lines.len(), 1, "{role}:\n{text}");
        assert!(
            lines[0].contains(" WARN ")
                && lines[0].contains(&format!("could not reach NATS at {url}"))
                && lines[0].contains("Connection refused"),
            "{role}:\n{text}"
        );
        assert!(!text.contains("client error"), "{role}:\n{text}");
        assert!(
            !text.contains('\x1b'),
            "colour codes in a log file, {role}:\n{text}"
        );
    }
}

/// A cluster with a CPU worker, a first aggregator counting and a second one started after
/// it (standing by); their metrics addresses.
async fn standby_pair() -> (Cluster, String, String) {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let (first, second) = (free_addr(), free_addr());
    cluster.spawn("aggregator-1", &["aggregator", "--metrics-addr", &first]);
    wait_for(&first, "/readyz", |status, _| status == 200).await;
    cluster.spawn("aggregator-2", &["aggregator", "--metrics-addr", &second]);
    wait_for(&second, "/metrics", |status, _| status == 200).await;
    (cluster, first, second)
}

/// Succeeded vector_add jobs in an aggregator's `kiln_jobs_total`.
fn vector_adds(s: &Scrape) -> f64 {
    s.value(
        "kiln_jobs_total",
        &[("kind", "vector_add"), ("status", "succeeded")],
    )
    .unwrap_or(0.0)
}

/// Two aggregators each counted their share and stored their own snapshots, and the last to
/// store erased the other's counts. A second one now stands by while the first counts (it
/// pulls no result: its Prometheus counts stay empty) and takes over, from the first's
/// snapshots, when the first is gone: every job is counted once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_aggregator_stands_by_and_takes_over_when_the_first_is_gone() {
    let (mut cluster, first, second) = standby_pair().await;
    let client = cluster.client().await;
    let total = |n: u64| {
        move |snapshots: &[kiln_proto::MetricsSnapshot]| {
            common::snapshot(snapshots, "vector_add", "cpu").is_some_and(|s| s.jobs == n)
        }
    };
    for (batch, count) in [("a", "150"), ("b", "150")] {
        let out = cluster.kiln(&[
            "submit",
            "vector_add",
            "-p",
            "len=16",
            "--count",
            count,
            "--id",
            batch,
        ]);
        assert_success(&out);
    }
    scrape_until(&first, |s| vector_adds(s) == 300.0).await;
    common::wait_for_metrics(&client, WAIT, total(300)).await;
    let (_, text) = get(&second, "/metrics").await.expect("the second answers");
    let standing_by = Scrape::parse(&text);
    assert_eq!(vector_adds(&standing_by), 0.0, "the second stood by");
    // Every kind's counters are there from the start, at 0: a series that first appeared at
    // the count of the first fold after the take-over had no increase to Prometheus (a burst
    // of failures fired no alert).
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            standing_by.value(name, labels),
            Some(0.0),
            "{name} {labels:?}"
        );
    };
    zero(
        "kiln_jobs_total",
        &[
            ("kind", "train_mlp"),
            ("class", "cpu"),
            ("status", "failed"),
        ],
    );
    zero(
        "kiln_job_failures_total",
        &[("kind", "matmul"), ("class", "gpu"), ("error", "timeout")],
    );
    // `auto`: the scheduler's own answers.
    zero(
        "kiln_job_failures_total",
        &[
            ("kind", "vector_add"),
            ("class", "auto"),
            ("error", "cancelled"),
        ],
    );
    let (status, why) = get(&second, "/readyz").await.expect("the second answers");
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("standing by"), "{why}");

    let first_process = cluster.child("aggregator-1");
    first_process.kill().unwrap();
    first_process.wait().unwrap();
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=16",
        "--count",
        "200",
        "--id",
        "c",
    ]);
    assert_success(&out);
    scrape_until(&second, |s| vector_adds(s) == 200.0).await;
    let snapshots = common::wait_for_metrics(&client, WAIT, total(500)).await;
    let s = common::snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!(s.succeeded, 500, "{s:?}");
    let (stored, _) = stored_results(&client).await;
    assert_eq!(stored, 500);
}

/// An aggregator whose snapshot finds another stored since it read one (two started at once,
/// or one was cut off long enough for another to take over) does not overwrite it: it stops,
/// stands by, and carries on from the snapshot it found.
#[tokio::test(flavor = "multi_thread")]
async fn an_aggregator_never_overwrites_a_snapshot_it_did_not_read() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.aggregator();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let total = |n: u64| {
        move |snapshots: &[kiln_proto::MetricsSnapshot]| {
            common::snapshot(snapshots, "vector_add", "cpu").is_some_and(|s| s.jobs == n)
        }
    };
    let submit = |batch: &str| {
        let out = cluster.kiln(&[
            "submit",
            "vector_add",
            "-p",
            "len=16",
            "--count",
            "100",
            "--id",
            batch,
        ]);
        assert_success(&out);
    };
    submit("a");
    let snapshots = common::wait_for_metrics(&client, WAIT, total(100)).await;
    // Another aggregator's snapshot: the same one, 1,000 jobs further on.
    let mut other = common::snapshot(&snapshots, "vector_add", "cpu")
        .unwrap()
        .clone();
    other.jobs += 1000;
    other.succeeded += 1000;
    js.publish(
        "metrics.vector_add.cpu",
        serde_json::to_vec(&other).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    submit("b");
    let snapshots = common::wait_for_metrics(&client, WAIT, total(1200)).await;
    let s = common::snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!(s.succeeded, 1200, "{s:?}");
    // And it stays there: nothing counted twice, nothing erased.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let snapshots = kiln_proto::streams::latest_metrics(&js).await.unwrap();
    let s = common::snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!(s.jobs, 1200, "{s:?}");
}

/// With `--log-format json` (the images' and manifests' setting) every line a role writes is
/// JSON, its last line and a fatal error included: "worker stopped: …" and "kiln: <why it
/// exited>" were plain text, which a JSON log collector fails to parse exactly when it
/// matters. They are written even when `RUST_LOG` leaves kiln's own target out.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_json_to_the_last_line_and_the_fatal_error() {
    use std::io::{BufRead as _, BufReader};
    let cluster = Cluster::new();
    cluster.init().await;
    let mut worker = Command::new(KILN)
        .args(["--log-format", "json", "worker", "--device", "cpu"])
        .env("NATS_URL", cluster.server.url())
        .env("RUST_LOG", "kiln_worker=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(worker.stderr.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    while !line.contains("worker serving") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{lines:?}");
        lines.push(line.clone());
    }
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let rest: Vec<String> = stderr.lines().map(Result::unwrap).collect();
    assert!(worker.wait().unwrap().success());
    lines.extend(rest);
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = events.last().unwrap();
    assert_eq!(last["level"], "INFO", "{last}");
    assert_eq!(
        last["fields"]["message"],
        "worker stopped: 0 succeeded, 0 failed, 0 handed back for retry, 0 handed back \
         unfinished"
    );

    // A fatal error: the metrics port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(KILN)
        .args(["aggregator", "--metrics-addr", &addr])
        .env("NATS_URL", cluster.server.url())
        .env("KILN_LOG_FORMAT", "json")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    let fatal: serde_json::Value = serde_json::from_str(text.trim()).expect(&text);
    assert_eq!(fatal["level"], "ERROR");
    assert_eq!(fatal["target"], "kiln");
    let message = fatal["fields"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("kiln: could not listen on --metrics-addr {addr}")),
        "{message}"
    );
}

/// An aggregator paused (SIGSTOP, a stalled VM) while the standby took over woke up, counted
/// in its Prometheus counters the results it had been sent before the pause, and only then
/// found at its next snapshot that the other counts now: `sum(kiln_jobs_total)` over the two
/// counted those jobs twice. Its counters now take a result only with the snapshot that
/// counts it stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_aggregator_paused_through_a_takeover_counts_nothing_twice() {
    let (mut cluster, first, second) = standby_pair().await;
    let submit = |cluster: &Cluster, id: &str, count: &str| {
        assert_success(&cluster.kiln(&[
            "submit",
            "vector_add",
            "-p",
            "len=16",
            "--count",
            count,
            "--id",
            id,
        ]));
    };
    submit(&cluster, "a", "50");
    scrape_until(&first, |s| vector_adds(s) == 50.0).await;
    let signal = |which: &str, pid: u32| {
        let _ = Command::new("kill")
            .args([which, &pid.to_string()])
            .status();
    };
    let paused = cluster.child("aggregator-1").id();
    signal("-STOP", paused);
    // Delivered to the paused one's waiting pull request, or to the second once it takes
    // over; the second counts them all in the end (after the ack wait for the first kind).
    submit(&cluster, "b", "20");
    scrape_until(&second, |s| vector_adds(s) == 20.0).await;
    signal("-CONT", paused);
    let deadline = Instant::now() + WAIT;
    while !cluster.log("aggregator-1").contains("two were counting") {
        assert!(Instant::now() < deadline, "the first never stood by");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = get(&first, "/metrics").await.expect("the first answers");
    assert_eq!(
        vector_adds(&Scrape::parse(&text)),
        50.0,
        "the first counted b too"
    );
    let (_, text) = get(&second, "/metrics").await.expect("the second answers");
    assert_eq!(vector_adds(&Scrape::parse(&text)), 20.0);
    let client = cluster.client().await;
    let snapshots = common::wait_for_metrics(&client, WAIT, |snapshots| {
        common::snapshot(snapshots, "vector_add", "cpu").is_some_and(|s| s.jobs == 70)
    })
    .await;
    assert_eq!(
        common::snapshot(&snapshots, "vector_add", "cpu")
            .unwrap()
            .succeeded,
        70
    );
}

/// A role whose OTLP endpoint refuses every export says so in its log (once, then once a
/// minute), and goes on serving. Before, the spans were dropped without a word.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_says_when_its_spans_cannot_be_exported() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    // A port nothing listens on: every export is refused.
    let refused = format!("http://{}", free_addr());
    cluster.spawn_with_env(
        "worker",
        &["worker", "--device", "cpu"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", refused.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let out = cluster.kiln(&["submit", "vector_add", "-p", "len=8", "-n", "3", "--wait"]);
    assert_success(&out);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let log = cluster.log("worker");
        if log.contains("could not export trace spans to the OTLP endpoint") {
            assert!(log.contains("span(s) dropped"), "{log}");
            assert_eq!(
                log.matches("could not export trace spans").count(),
                1,
                "{log}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never said: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still serving, untraced.
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--wait"]));
}

/// A lone aggregator whose snapshot the server stored while it restarted, the acknowledgement
/// lost with the connection: it took that snapshot for a second aggregator's, stood by, and its
/// Prometheus count never counted the job (a black-box run found it, 3 times in 3). It now
/// knows its own snapshots by their header and goes on counting.
#[tokio::test(flavor = "multi_thread")]
async fn an_aggregator_knows_its_own_snapshot_stored_across_a_server_restart() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let addr = free_addr();
    cluster.spawn(
        "aggregator",
        &["aggregator", "--metrics-addr", &addr, "--interval", "2s"],
    );
    wait_for(&addr, "/readyz", |status, _| status == 200).await;
    common::assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--wait"]));
    // Down before the next snapshot (every 2 s) and past its acknowledgement's wait (5 s).
    cluster.server.kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.server.start_again();
    let counted = scrape_until(&addr, |s| vector_adds(s) == 1.0).await;
    assert_eq!(vector_adds(&counted), 1.0);
    // Still the one counting, and a second job counts too.
    common::assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--wait"]));
    scrape_until(&addr, |s| vector_adds(s) == 2.0).await;
    let (status, _) = get(&addr, "/readyz").await.expect("readyz answers");
    assert_eq!(status, 200);
    let log = cluster.log("aggregator");
    assert!(
        !log.contains("another aggregator stored a snapshot"),
        "{log}"
    );
}
