//! The worker library in-process against a real nats-server: jobs published to `KILN_JOBS`,
//! answers read back from `KILN_RESULTS`, the worker stopped through its shutdown future.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, consumer::PullConsumer, stream::Stream};
use kiln_kernels::{ComputeDevice, JobMeta, MemoryBudget};
use kiln_proto::streams::{self, STREAM_JOBS, STREAM_RESULTS};
use kiln_proto::{Codec, ErrorKind, Limits, ResultEvent, Status, Topology};
use kiln_testkit::NatsServer;
use kiln_worker::{Error, WorkerConfig, WorkerStats};
use tokio::sync::oneshot;

/// Generous: how long anything here may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// A server with kiln's streams, and a client of it.
struct Setup {
    server: NatsServer,
    js: jetstream::Context,
}

impl Setup {
    async fn new() -> Self {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        streams::ensure_all(&js, &Topology::default())
            .await
            .expect("streams");
        Setup { server, js }
    }

    /// Start a worker on its own connection, as a process would.
    async fn worker(&self, config: WorkerConfig) -> Worker {
        let client = async_nats::connect(self.server.url())
            .await
            .expect("connect");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kiln_worker::run(client, config, stopped));
        Worker { stop, task }
    }

    /// Publish a job and wait until `KILN_JOBS` stores it.
    async fn submit(&self, subject: &str, headers: HeaderMap, body: Vec<u8>) {
        self.js
            .publish_with_headers(subject.to_owned(), headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("job stored");
    }

    /// Wait until the cpu workers' consumer has no job left, pending or unacked.
    async fn drained(&self) {
        let jobs = self.js.get_stream(STREAM_JOBS).await.expect("jobs");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let info = jobs.consumer_info("workers-cpu").await.expect("consumer");
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs left: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The result stored for job `id` of `kind`, waiting for it.
    async fn result(&self, kind: &str, id: &str) -> ResultEvent {
        let message = self.stored_result(kind, id).await;
        serde_json::from_slice(&message.payload).expect("a result event")
    }

    /// The message holding the result of job `id` of `kind` (headers and body), waiting for it.
    async fn stored_result(&self, kind: &str, id: &str) -> jetstream::message::StreamMessage {
        let subject = kiln_proto::subject::result(kind, id);
        let stream = self.js.get_stream(STREAM_RESULTS).await.expect("results");
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(message) = stream.get_last_raw_message_by_subject(&subject).await {
                    return message;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("no result on {subject}"))
    }

    async fn jobs(&self) -> Stream {
        self.js.get_stream(STREAM_JOBS).await.expect("jobs stream")
    }

    /// The `workers-cpu` consumer once `done` holds of it, waiting for that.
    async fn cpu_consumer_when(&self, done: impl Fn(&consumer::Info) -> bool) -> consumer::Info {
        let mut consumer: PullConsumer = self
            .jobs()
            .await
            .get_consumer(streams::CONSUMER_WORKERS_CPU)
            .await
            .expect("workers-cpu");
        let reached = tokio::time::timeout(PATIENCE, async {
            loop {
                let info = consumer.info().await.expect("consumer info");
                if done(info) {
                    return info.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        reached
            .await
            .expect("the consumer reaches the expected state")
    }

    /// The jobs left in `KILN_JOBS`, in stream order.
    async fn queued(&self) -> Vec<Queued> {
        let mut jobs = self.jobs().await;
        let state = jobs.info().await.expect("jobs stream info").state.clone();
        let mut queued = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(job) = jobs.get_raw_message(seq).await else {
                continue; // acked and gone
            };
            let header = |name: &str| job.headers.get(name).map(|v| v.as_str().to_owned());
            let body: serde_json::Value = serde_json::from_slice(&job.payload).expect("JSON");
            queued.push(Queued {
                subject: job.subject.to_string(),
                id: body["id"].as_str().expect("an id in the body").to_owned(),
                job_id: header(kiln_proto::HEADER_JOB_ID),
                handbacks: header(kiln_proto::HEADER_HANDBACKS),
            });
        }
        queued
    }
}

/// A job waiting in `KILN_JOBS`.
#[derive(Debug)]
struct Queued {
    subject: String,
    /// The `id` in its body.
    id: String,
    /// Its `Kiln-Job-Id` header.
    job_id: Option<String>,
    /// Its `Kiln-Handbacks` header.
    handbacks: Option<String>,
}

/// A worker running in this process.
struct Worker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<kiln_worker::Result<WorkerStats>>,
}

impl Worker {
    /// Resolve its shutdown future and wait for `run` to return.
    async fn stop(self) -> kiln_worker::Result<WorkerStats> {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the worker returns within its drain bound")
            .expect("the worker task does not panic")
    }
}

/// A CPU worker with a fixed memory budget (nothing detected from the machine).
fn cpu_worker(name: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new(ComputeDevice::Cpu);
    config.name = name.into();
    config.compute_slots = 2;
    config.memory = Some(MemoryBudget::configured(1024));
    config
}

fn msg_id(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(kiln_proto::HEADER_MSG_ID, id);
    headers
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_vector_add_jobs_in_either_codec_with_their_sums() {
    let setup = Setup::new().await;
    let worker = setup.worker(cpu_worker("adder")).await;
    let json = br#"{"id":"add-json","params":{"a":[1,2,3],"b":[10,20,30]}}"#;
    setup
        .submit("jobs.cpu.vector_add", HeaderMap::new(), json.to_vec())
        .await;
    let kind = kiln_kernels::find("vector_add").unwrap();
    let meta = JobMeta {
        id: Some("add-bincode".into()),
        ..Default::default()
    };
    let params = serde_json::json!({"a": [0.5, 1.5], "b": [2, 4]});
    let bincode = kind.encode_job(params, meta, Codec::Bincode).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", Codec::Bincode.content_type());
    setup.submit("jobs.cpu.vector_add", headers, bincode).await;

    let sum = setup.result("vector_add", "add-json").await;
    assert_eq!(sum.status, Status::Succeeded, "{:?}", sum.error);
    assert_eq!(sum.output["c"], serde_json::json!([11.0, 22.0, 33.0]));
    assert_eq!(
        (sum.kind.as_str(), sum.worker.as_str(), sum.device.as_str()),
        ("vector_add", "adder", "cpu")
    );
    assert_eq!(sum.attempt, 1);
    let sum = setup.result("vector_add", "add-bincode").await;
    assert_eq!(sum.status, Status::Succeeded, "{:?}", sum.error);
    assert_eq!(sum.output["c"], serde_json::json!([2.5, 5.5]));

    let stats = worker.stop().await.expect("a clean stop");
    assert_eq!(
        stats,
        WorkerStats {
            succeeded: 2,
            ..Default::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_malformed_jobs_invalid_input_and_acks_them() {
    let setup = Setup::new().await;
    let worker = setup.worker(cpu_worker("strict")).await;
    // A body that is not JSON: its id comes from Nats-Msg-Id.
    setup
        .submit("jobs.cpu.vector_add", msg_id("not-json"), b"{nope".to_vec())
        .await;
    // Vectors of different lengths.
    let uneven = br#"{"id":"uneven","params":{"a":[1,2],"b":[1]}}"#;
    setup
        .submit("jobs.cpu.vector_add", HeaderMap::new(), uneven.to_vec())
        .await;
    // A kind this build does not run is answered under `unknown`.
    setup
        .submit("jobs.cpu.no_such_kind", msg_id("odd-kind"), b"{}".to_vec())
        .await;
    // A content type nobody can decode.
    let mut headers = msg_id("odd-codec");
    headers.insert("Content-Type", "application/x-pickle");
    setup
        .submit("jobs.cpu.vector_add", headers, b"{}".to_vec())
        .await;

    for (kind, id, says) in [
        ("vector_add", "not-json", "vector_add"),
        ("vector_add", "uneven", "length"),
        ("unknown", "odd-kind", "unknown job kind \"no_such_kind\""),
        ("vector_add", "odd-codec", "application/x-pickle"),
    ] {
        let answer = setup.result(kind, id).await;
        assert_eq!(answer.status, Status::Failed, "{id}");
        let error = answer.error.expect("a failure says why");
        assert_eq!(error.kind, ErrorKind::InvalidInput, "{id}: {error}");
        assert!(error.message.contains(says), "{id}: {error}");
        assert_eq!(answer.device, "none", "{id} never reached the device");
        assert_eq!(answer.attempt, 1, "{id} was not retried");
    }

    // Every job was acked: none is pending or redelivered, and the work queue is empty.
    let info = setup
        .cpu_consumer_when(|i| i.num_ack_pending == 0 && i.num_pending == 0)
        .await;
    assert_eq!(info.num_redelivered, 0);
    assert!(
        setup.queued().await.is_empty(),
        "acked jobs leave the work queue"
    );

    let stats = worker.stop().await.expect("a clean stop");
    assert_eq!((stats.succeeded, stats.failed, stats.retried), (0, 4, 0));
}

/// A `train_mlp` job long enough to be running still when its worker stops; it passes a
/// checkpoint every epoch.
fn long_job(id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "params": {"samples": 8192, "features": 2, "classes": 2, "hidden": [64, 64],
                   "epochs": 10000, "batch_size": 128},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_hands_back_held_jobs_without_spending_deliveries_and_returns() {
    let setup = Setup::new().await;
    // Room for exactly one such job in memory, four held: one computes, three wait for the
    // memory the first holds.
    let plan = kiln_kernels::find("train_mlp")
        .unwrap()
        .decode(Codec::Json, &long_job("probe"), &Limits::default())
        .expect("a valid job")
        .plan;
    let mib = (plan.elements * kiln_kernels::BYTES_PER_ELEMENT).div_ceil(1 << 20);
    let mut config = cpu_worker("drainer");
    config.compute_slots = 4;
    config.max_in_flight = 4;
    config.memory = Some(MemoryBudget::configured(mib));
    config.drain_timeout = Duration::from_millis(500);
    let metrics = config.metrics.clone();
    let worker = setup.worker(config).await;
    for n in 1..=6 {
        let id = format!("long-{n}");
        setup
            .submit("jobs.cpu.train_mlp", HeaderMap::new(), long_job(&id))
            .await;
    }

    // The worker holds as many jobs as it may and leaves the rest in the queue.
    let info = setup.cpu_consumer_when(|i| i.num_ack_pending == 4).await;
    assert_eq!(info.num_pending, 2, "never more than max_in_flight held");

    // Past the drain timeout, the running job stops at its next checkpoint and the three
    // waiting ones never start: all four go back to the queue.
    match worker.stop().await {
        Err(Error::DrainTimeout {
            running,
            handed_back,
            timeout,
        }) => {
            assert_eq!(
                (running, handed_back, timeout),
                (4, 4, Duration::from_millis(500))
            );
        }
        other => panic!("expected a drain timeout, got {other:?}"),
    }
    let handed_back = metrics
        .jobs
        .get_or_create(&kiln_telemetry::KindStatusLabels {
            kind: "train_mlp".into(),
            status: "handed_back".into(),
        })
        .get();
    assert_eq!(handed_back, 4);
    assert_eq!(
        metrics.in_flight.get(),
        0,
        "nothing is held after run returns"
    );

    // In the queue: the four held jobs as copies that count one hand-back each (a copy is a
    // new message: none of its deliveries is spent), and the two never taken, as they were.
    let (mut copies, mut untouched) = (BTreeSet::new(), BTreeSet::new());
    for job in setup.queued().await {
        match job.subject.as_str() {
            "jobs.cpu.train_mlp.copy" => {
                assert_eq!(job.handbacks.as_deref(), Some("1"), "{job:?}");
                assert_eq!(job.job_id.as_deref(), Some(job.id.as_str()), "{job:?}");
                copies.insert(job.id);
            }
            "jobs.cpu.train_mlp" => {
                assert_eq!(job.handbacks, None, "{job:?}");
                untouched.insert(job.id);
            }
            other => panic!("unexpected job on {other}"),
        }
    }
    let ids = |ns: &[u32]| ns.iter().map(|n| format!("long-{n}")).collect();
    assert_eq!(copies, ids(&[1, 2, 3, 4]));
    assert_eq!(untouched, ids(&[5, 6]));
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_hands_back_a_job_computing_a_step_with_no_checkpoint_and_returns() {
    let setup = Setup::new().await;
    // The simulated overhead is slept after the computation, with no checkpoint in it: the
    // job cannot stop itself, as a long step of a real kernel cannot.
    let mut config = cpu_worker("sleeper");
    config.sim_overhead = Duration::from_secs(20);
    config.drain_timeout = Duration::from_millis(500);
    let worker = setup.worker(config).await;
    let body = br#"{"id": "stuck-in-a-step", "params": {"len": 64}}"#.to_vec();
    setup
        .submit("jobs.cpu.vector_add", HeaderMap::new(), body)
        .await;
    setup.cpu_consumer_when(|i| i.num_ack_pending == 1).await;

    let started = std::time::Instant::now();
    match worker.stop().await {
        Err(Error::DrainTimeout {
            running,
            handed_back,
            ..
        }) => assert_eq!((running, handed_back), (1, 1)),
        other => panic!("expected a drain timeout, got {other:?}"),
    }
    // The drain timeout, the checkpoints' grace (10 s), then the hand-back: not the
    // computation's 20 s, nor an ack wait before the job runs elsewhere.
    assert!(
        started.elapsed() < Duration::from_secs(16),
        "stopped after {:?}",
        started.elapsed()
    );
    let queued = setup.queued().await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].subject, "jobs.cpu.vector_add.copy");
    assert_eq!(queued[0].id, "stuck-in-a-step");
    assert_eq!(queued[0].handbacks.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn small_jobs_arriving_together_share_launches_and_each_gets_its_own_answer() {
    let setup = Setup::new().await;
    let kind = kiln_kernels::find("vector_add").unwrap();
    let mut expected = Vec::new();
    // Queued before the worker starts, so that they arrive together.
    for i in 0..40u64 {
        let id = format!("batch-{i}");
        let meta = JobMeta {
            id: Some(id.clone()),
            seed: Some(i),
            ..JobMeta::default()
        };
        let params = serde_json::json!({"len": 100 + i});
        let body = kind.encode_job(params, meta, Codec::Json).unwrap();
        let alone = kind
            .decode(Codec::Json, &body, &Limits::default())
            .unwrap()
            .run(&ComputeDevice::Cpu, &kiln_kernels::NoCheckpoint)
            .unwrap();
        setup.submit("jobs.cpu.vector_add", msg_id(&id), body).await;
        expected.push((id, alone));
    }
    let mut config = cpu_worker("batching");
    config.batch_window = Duration::from_millis(50);
    config.batch_max_jobs = 16;
    config.compute_slots = 1;
    let worker = setup.worker(config).await;
    let mut shared_launch = 0;
    for (id, alone) in &expected {
        let event = setup.result("vector_add", id).await;
        assert_eq!(event.status, Status::Succeeded, "{event:?}");
        let mut output = event.output.clone();
        let batched = output
            .as_object_mut()
            .unwrap()
            .remove("batched")
            .map_or(1, |n| n.as_u64().unwrap());
        assert!(
            batched <= 16,
            "at most batch_max_jobs share a launch: {batched}"
        );
        shared_launch += usize::from(batched > 1);
        // The summary's sums may add in another order on another thread: equal to 1e-12.
        for field in ["checksum", "l2_norm", "max", "mean", "min"] {
            let (got, want) = (&output["summary"][field], &alone["summary"][field]);
            let (got, want) = (got.as_f64().unwrap(), want.as_f64().unwrap());
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "job {id}: {field} {got} alone {want}"
            );
        }
        assert_eq!(output["len"], alone["len"]);
        assert_eq!(output["engine"], alone["engine"]);
    }
    assert!(
        shared_launch >= 20,
        "most jobs shared a launch: {shared_launch} of 40"
    );

    // A lone job waits for the window, no longer, and runs alone.
    let body = kind
        .encode_job(
            serde_json::json!({"len": 8}),
            JobMeta {
                id: Some("lone".into()),
                ..JobMeta::default()
            },
            Codec::Json,
        )
        .unwrap();
    setup
        .submit("jobs.cpu.vector_add", msg_id("lone"), body)
        .await;
    let lone = setup.result("vector_add", "lone").await;
    assert_eq!(lone.status, Status::Succeeded);
    assert!(lone.output.get("batched").is_none(), "{}", lone.output);
    let stats = worker.stop().await.expect("the worker stops cleanly");
    assert_eq!(stats.succeeded, 41);
    assert_eq!(stats.failed, 0);
}

/// A simulated slower class (`--sim-overhead`) with batching on: a batch's launch pays the
/// overhead, as a job alone does (batched jobs skipped it, and a simulated GPU class looked
/// as fast as the CPU to the scheduler).
#[tokio::test(flavor = "multi_thread")]
async fn a_batched_launch_pays_the_simulated_overhead() {
    let setup = Setup::new().await;
    let kind = kiln_kernels::find("vector_add").unwrap();
    let ids: Vec<String> = (0..6).map(|i| format!("slow-{i}")).collect();
    for id in &ids {
        let meta = JobMeta {
            id: Some(id.clone()),
            ..JobMeta::default()
        };
        let body = kind
            .encode_job(serde_json::json!({"len": 64}), meta, Codec::Json)
            .unwrap();
        setup.submit("jobs.cpu.vector_add", msg_id(id), body).await;
    }
    let mut config = cpu_worker("simulated");
    config.batch_window = Duration::from_millis(50);
    config.batch_max_jobs = 16;
    config.sim_overhead = Duration::from_millis(200);
    let worker = setup.worker(config).await;
    let mut batched = 0;
    for id in &ids {
        let event = setup.result("vector_add", id).await;
        assert_eq!(event.status, Status::Succeeded, "{event:?}");
        assert!(event.compute_ms >= 200.0, "{id}: {event:?}");
        batched += usize::from(event.output.get("batched").is_some());
    }
    assert!(batched > 0, "some shared a launch");
    worker.stop().await.expect("the worker stops cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_never_reserves_more_than_the_whole_memory_budget() {
    // Each job reserves 4 MiB (900,000 elements) and fits a 16 MiB budget alone; ten that
    // arrive together made one batch of 35 MiB, which waited for ever for its memory, and
    // every job behind it on the worker with it.
    let setup = Setup::new().await;
    let kind = kiln_kernels::find("vector_add").unwrap();
    for i in 0..10u64 {
        let id = format!("big-{i}");
        let meta = JobMeta {
            id: Some(id.clone()),
            seed: Some(i),
            ..JobMeta::default()
        };
        let body = kind
            .encode_job(serde_json::json!({"len": 300_000}), meta, Codec::Json)
            .unwrap();
        setup.submit("jobs.cpu.vector_add", msg_id(&id), body).await;
    }
    let mut config = cpu_worker("small-budget");
    config.memory = Some(MemoryBudget::configured(16));
    config.batch_window = Duration::from_millis(50);
    config.batch_max_jobs = 16;
    config.compute_slots = 1;
    let worker = setup.worker(config).await;
    let mut shared_launch = 0;
    for i in 0..10 {
        let event = setup.result("vector_add", &format!("big-{i}")).await;
        assert_eq!(event.status, Status::Succeeded, "{event:?}");
        assert_eq!(event.output["len"], 300_000);
        let batched = event
            .output
            .get("batched")
            .map_or(1, |n| n.as_u64().unwrap());
        assert!(batched <= 4, "four jobs of 4 MiB fill 16 MiB: {batched}");
        shared_launch += usize::from(batched > 1);
    }
    assert!(
        shared_launch >= 2,
        "jobs still share launches: {shared_launch}"
    );
    let stats = worker.stop().await.expect("the worker stops cleanly");
    assert_eq!((stats.succeeded, stats.failed), (10, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_worker_takes_the_jobs_delivered_to_it_that_it_had_not_started() {
    // Stopped while a pull's jobs arrive, a worker left those it had not read yet to the
    // server as delivered to it: no other worker could take them before the ack wait (30 s)
    // ran out.
    let setup = Setup::new().await;
    for i in 0..3000 {
        let body = format!(r#"{{"id":"many-{i}","params":{{"len":8}}}}"#);
        setup
            .submit(
                "jobs.cpu.vector_add",
                msg_id(&format!("many-{i}")),
                body.into_bytes(),
            )
            .await;
    }
    let first = setup.worker(cpu_worker("stopping")).await;
    setup
        .cpu_consumer_when(|info| info.delivered.consumer_sequence >= 600)
        .await;
    // (On a machine fast enough to answer all 3000 before the stop lands, nothing is left
    // to take over: the test still holds, without testing anything.)
    let stopped = first.stop().await.expect("the worker stops cleanly");
    let second = setup.worker(cpu_worker("taking-over")).await;
    let took_over = tokio::time::Instant::now();
    let info = setup
        .cpu_consumer_when(|info| info.num_pending == 0 && info.num_ack_pending == 0)
        .await;
    let waited = took_over.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "the other worker answered the rest in {waited:?}, not after the ack wait: {info:?}"
    );
    let rest = second.stop().await.expect("the worker stops cleanly");
    assert_eq!(
        stopped.succeeded + rest.succeeded,
        3000,
        "{stopped:?} {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn results_carry_a_message_id_only_where_the_stream_does_not_keep_one_per_subject() {
    // kiln's results stream keeps one message per subject, and a result goes only onto an
    // empty subject: its one header is that condition, no id.
    let setup = Setup::new().await;
    let stored = answer_one(&setup, "plain").await;
    let names: Vec<String> = stored.headers.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(names, ["Nats-Expected-Last-Subject-Sequence"]);

    // A results stream made by an older kiln, without that limit: the id still keeps a
    // redelivered job's result from being stored twice, so results carry it.
    let mut old = Topology::default().results_stream();
    old.max_messages_per_subject = 0;
    old.discard_new_per_subject = false;
    old.discard = jetstream::stream::DiscardPolicy::Old;
    setup.js.delete_stream(STREAM_RESULTS).await.unwrap();
    setup.js.create_stream(old).await.unwrap();
    let stored = answer_one(&setup, "older").await;
    assert_eq!(
        stored
            .headers
            .get(kiln_proto::HEADER_MSG_ID)
            .map(|v| v.as_str()),
        Some(kiln_proto::result_msg_id("vector_add", "older-1", 0).as_str())
    );
}

/// A results stream that holds all it may makes room by dropping its oldest results: every
/// job is still answered (with `discard: new` a full stream refused every result, and the
/// worker held its jobs retrying), and a second result for a job whose result is kept is
/// still refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_results_stream_drops_its_oldest_results_and_jobs_are_still_answered() {
    let setup = Setup::new().await;
    let small = Topology {
        results_max_bytes: 32 * 1024,
        ..Topology::default()
    };
    setup.js.delete_stream(STREAM_RESULTS).await.unwrap();
    setup
        .js
        .create_stream(small.results_stream())
        .await
        .unwrap();
    let worker = setup.worker(cpu_worker("full")).await;
    // Each result is about 600 bytes: 300 of them fill the stream five times over.
    let jobs: u64 = 300;
    let job = |i: u64| format!(r#"{{"id":"full-{i}","params":{{"len":8}}}}"#).into_bytes();
    for i in 0..jobs {
        setup
            .submit("jobs.cpu.vector_add", HeaderMap::new(), job(i))
            .await;
    }
    let last_id = format!("full-{}", jobs - 1);
    let first = setup.stored_result("vector_add", &last_id).await;
    // The same job id again, while its result is kept: answered once, by the first run.
    setup
        .submit("jobs.cpu.vector_add", HeaderMap::new(), job(jobs - 1))
        .await;
    setup.drained().await;
    let stats = worker.stop().await.expect("the worker stops cleanly");
    // The second run of the last id is no answer, and is not counted as one.
    assert_eq!(stats.succeeded, jobs, "{stats:?}");
    assert_eq!(stats.retried + stats.handed_back, 0, "{stats:?}");
    let mut stream = setup.js.get_stream(STREAM_RESULTS).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert!(state.bytes <= 32 * 1024, "{state:?}");
    assert!(
        state.messages < jobs,
        "the oldest results made room: {state:?}"
    );
    assert_eq!(state.last_sequence, jobs, "the second result was refused");
    let kept = setup.stored_result("vector_add", &last_id).await;
    assert_eq!(kept.sequence, first.sequence, "the first result stays");
}

/// A results stream made by an older kiln (discard new per subject, which also refuses every
/// result once the stream is full) still answers each job once, and `kiln init` (which
/// updates every stream) turns it into one that makes room.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_results_stream_answers_once_and_kiln_init_lets_it_make_room() {
    let setup = Setup::new().await;
    let mut old = Topology::default().results_stream();
    old.discard = jetstream::stream::DiscardPolicy::New;
    old.discard_new_per_subject = true;
    setup.js.delete_stream(STREAM_RESULTS).await.unwrap();
    setup.js.create_stream(old).await.unwrap();
    let worker = setup.worker(cpu_worker("old")).await;
    for _ in 0..2 {
        // The same job twice: the second result is refused, by either rule.
        let job = br#"{"id":"old-1","params":{"len":8}}"#.to_vec();
        setup
            .submit("jobs.cpu.vector_add", HeaderMap::new(), job)
            .await;
    }
    setup.drained().await;
    let stats = worker.stop().await.expect("a clean stop");
    assert_eq!(
        stats.succeeded, 1,
        "one answer; the second run's result was dropped"
    );
    let mut stream = setup.js.get_stream(STREAM_RESULTS).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.last_sequence, 1);

    streams::update_all(&setup.js, &Topology::default())
        .await
        .expect("kiln init");
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.discard, jetstream::stream::DiscardPolicy::Old);
    assert!(!config.discard_new_per_subject);
    assert_eq!(config.max_messages_per_subject, 1);
}

/// A worker `name` answers one vector add, `<name>-1`, and stops: the stored result message.
async fn answer_one(setup: &Setup, name: &str) -> jetstream::message::StreamMessage {
    let worker = setup.worker(cpu_worker(name)).await;
    let id = format!("{name}-1");
    let job = format!(r#"{{"id":"{id}","params":{{"len":8}}}}"#);
    setup
        .submit("jobs.cpu.vector_add", HeaderMap::new(), job.into_bytes())
        .await;
    let stored = setup.stored_result("vector_add", &id).await;
    let event: ResultEvent = serde_json::from_slice(&stored.payload).expect("a result event");
    assert_eq!(event.status, Status::Succeeded, "{:?}", event.error);
    worker.stop().await.expect("a clean stop");
    stored
}

/// A stopped worker leaves nothing running on its client, which may live on (an in-process
/// worker's, in `kiln demo` and the benchmarks): its watch of the cancellations bucket goes
/// with it. (Left running, the watch panicked inside async-nats once the client closed.)
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_worker_leaves_no_watch_on_its_client() {
    let setup = Setup::new().await;
    let client = async_nats::connect(setup.server.url())
        .await
        .expect("connect");
    let mut bucket = setup
        .js
        .get_stream(format!("KV_{}", kiln_proto::BUCKET_CANCEL))
        .await
        .expect("the cancellations bucket");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(kiln_worker::run(client.clone(), cpu_worker("w"), stopped));
    let watching = |n: usize| n >= 1;
    let consumers = consumers_until(&mut bucket, watching).await;
    assert!(watching(consumers), "the worker watches the bucket");

    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, task)
        .await
        .expect("the worker returns")
        .expect("no panic")
        .expect("the worker stops cleanly");
    // The client is still connected: only the worker's own ending can take the watch away.
    let consumers = consumers_until(&mut bucket, |n| n == 0).await;
    assert_eq!(consumers, 0, "a watch outlived the worker");
    assert_eq!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
}

/// The consumers of `stream` once `done` says so of their number, or after [`PATIENCE`].
async fn consumers_until(stream: &mut Stream, done: impl Fn(usize) -> bool) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let n = stream
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count;
        if done(n) || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
