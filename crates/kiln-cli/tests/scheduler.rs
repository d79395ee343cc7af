//! The scheduler with real processes: two CPU workers stand in for the two classes (one serves
//! the GPU consumer via --serve-class, the other is slowed down with --slowdown), so that the
//! tests run on machines without a GPU.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{Cluster, assert_success, stdout};
use kiln_proto::{DeviceClass, ErrorKind, ResultEvent, Status};

/// Products large enough (about 0.5 ms with OpenBLAS here) that compute, not overhead,
/// separates the classes.
const MATMUL: [&str; 4] = ["-p", "m=256", "-p", "n=256"];

/// Submit one job and wait for its result.
fn submit(cluster: &Cluster, device: &str, id: &str) -> ResultEvent {
    let mut args = vec!["submit", "matmul", "--device", device, "--id", id, "--wait"];
    args.extend_from_slice(&MATMUL);
    let out = cluster.kiln(&args);
    assert_success(&out);
    serde_json::from_str(&stdout(&out)).expect("a result event")
}

fn routed_to(event: &ResultEvent) -> DeviceClass {
    let routing = event
        .routing
        .as_ref()
        .expect("auto jobs carry their routing");
    assert_eq!(
        routing.chosen, event.class,
        "the job ran where it was routed"
    );
    assert!(routing.by.contains("sched"), "{routing:?}");
    routing.chosen
}

/// A cluster with one CPU worker and a scheduler.
fn cpu_worker_and_scheduler() -> Cluster {
    let mut cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init"]));
    cluster.cpu_worker();
    cluster.spawn("scheduler", &["scheduler", "--name", "sched-1"]);
    cluster
}

/// A fast "gpu" class and a slow cpu class, a scheduler, and a model taught by a few explicit
/// jobs on each.
fn cluster_with_two_classes(cpu_slowdown: &str) -> Cluster {
    let mut cluster = Cluster::new();
    let init = cluster.kiln(&["init"]);
    assert_success(&init);
    cluster.spawn(
        "gpu",
        &[
            "worker",
            "--device",
            "cpu",
            "--serve-class",
            "gpu",
            "--name",
            "sim-gpu",
            "--compute-slots",
            "1",
        ],
    );
    cluster.spawn(
        "cpu",
        &[
            "worker",
            "--device",
            "cpu",
            "--name",
            "slow-cpu",
            "--compute-slots",
            "1",
            "--slowdown",
            cpu_slowdown,
        ],
    );
    cluster.spawn(
        "scheduler",
        &[
            "scheduler",
            "--name",
            "test-scheduler",
            "--refresh-ms",
            "100",
        ],
    );
    // Let the scheduler see results of both classes (it learns from every result event).
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        assert_eq!(
            submit(&cluster, "gpu", &format!("teach-gpu-{i}")).status,
            Status::Succeeded
        );
        assert_eq!(
            submit(&cluster, "cpu", &format!("teach-cpu-{i}")).status,
            Status::Succeeded
        );
    }
    // Idle means idle as the scheduler sees it: it re-reads the queues every 100 ms, and one
    // read can still count the last teaching job, finished but not yet acknowledged.
    std::thread::sleep(Duration::from_millis(300));
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_jobs_shift_away_from_a_backlogged_class_and_back() {
    let cluster = cluster_with_two_classes("30");
    // Idle: the faster class wins.
    for i in 0..4 {
        let r = submit(&cluster, "auto", &format!("idle-{i}"));
        assert_eq!(routed_to(&r), DeviceClass::Gpu, "{:?}", r.routing);
    }
    // Backlog the gpu class with explicit jobs: auto jobs go to the cpu class meanwhile.
    let mut args = vec![
        "submit", "matmul", "--device", "gpu", "--count", "2000", "--id", "backlog",
    ];
    args.extend_from_slice(&MATMUL);
    assert_success(&cluster.kiln(&args));
    std::thread::sleep(Duration::from_millis(200));
    let r = submit(&cluster, "auto", "during-backlog");
    assert_eq!(routed_to(&r), DeviceClass::Cpu, "{:?}", r.routing);
    let routing = r.routing.as_ref().unwrap();
    assert!(
        routing.predicted_gpu_ms.unwrap() > routing.predicted_cpu_ms.unwrap(),
        "{routing:?}"
    );
    // Drained: back to the faster class.
    let client = cluster.client().await;
    let js = jetstream::new(client);
    let stream = js.get_stream("KILN_JOBS").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = stream.consumer_info("workers-gpu").await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the gpu backlog never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = submit(&cluster, "auto", "after-backlog");
    assert_eq!(routed_to(&r), DeviceClass::Gpu, "{:?}", r.routing);
}

/// A burst of long jobs on a class whose recent results were short ones is priced as long:
/// the scheduler reads which kinds are queued and prices each at its own mean, where the class
/// mean of its recent results would price the burst at almost nothing and send auto jobs to
/// wait behind it.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_long_jobs_is_priced_by_its_kind_not_by_the_recent_results() {
    let cluster = cluster_with_two_classes("30");
    let train = [
        "submit",
        "train_mlp",
        "--device",
        "gpu",
        "-p",
        "samples=1024",
        "-p",
        "epochs=100",
    ];
    // The scheduler learns what a training job takes on the gpu class ...
    let mut train_ms = f64::INFINITY;
    for i in 0..2 {
        let id = format!("teach-train-{i}");
        let mut args = train.to_vec();
        args.extend_from_slice(&["--id", &id, "--wait"]);
        let out = cluster.kiln(&args);
        assert_success(&out);
        let event: ResultEvent = serde_json::from_str(&stdout(&out)).expect("a result event");
        train_ms = train_ms.min(event.compute_ms);
    }
    // ... then sees 200 short products there, after which the class mean over all kinds has
    // all but forgotten them (0.98^200: under 2 % of their weight).
    let mut args = vec![
        "submit", "matmul", "--device", "gpu", "--count", "200", "--id", "short", "--wait",
    ];
    args.extend_from_slice(&MATMUL);
    assert_success(&cluster.kiln(&args));
    // A burst of eight training jobs on the gpu class's one compute slot, seen by the
    // scheduler (it re-reads the queues every 100 ms).
    let mut args = train.to_vec();
    args.extend_from_slice(&["--count", "8", "--id", "burst"]);
    assert_success(&cluster.kiln(&args));
    std::thread::sleep(Duration::from_millis(300));
    let js = jetstream::new(cluster.client().await);
    let stream = js.get_stream("KILN_JOBS").await.unwrap();
    let info = stream.consumer_info("workers-gpu").await.unwrap();
    let left = info.num_pending + info.num_ack_pending as u64;
    assert!(
        left >= 3,
        "the burst of 8 ran down to {left} already ({train_ms:.0} ms a job)"
    );
    let r = submit(&cluster, "auto", "behind-the-burst");
    let routing = r.routing.clone().expect("routing");
    assert_eq!(
        routed_to(&r),
        DeviceClass::Cpu,
        "{left} training jobs of {train_ms:.0} ms ahead: {routing:?}"
    );
    assert!(
        routing.predicted_gpu_ms.unwrap() > train_ms,
        "at least one training job of {train_ms:.0} ms ahead: {routing:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_jobs_go_to_cpu_once_the_gpu_worker_is_gone_and_none_are_lost() {
    // The cpu class thirty times slower, so that the live gpu class wins clearly even on a
    // loaded machine (with 3× the first routing was seen to go to cpu once under `./dev test`,
    // and 10× on 96×96 products, 0.07 ms of compute, left too little margin once).
    let mut cluster = cluster_with_two_classes("30");
    let first = submit(&cluster, "auto", "before-kill");
    assert_eq!(routed_to(&first), DeviceClass::Gpu, "{:?}", first.routing);

    let gpu = cluster.child("gpu");
    gpu.kill().unwrap();
    gpu.wait().unwrap();
    let killed = Instant::now();
    // Submit without waiting, one every 250 ms, until one lands on the cpu class.
    let client = cluster.client().await;
    let mut results = client.subscribe("results.matmul.>").await.unwrap();
    let mut ids = Vec::new();
    let mut routed = HashMap::new();
    let switched_after = loop {
        let id = format!("after-kill-{}", ids.len());
        let mut args = vec!["submit", "matmul", "--device", "auto", "--id", &id];
        args.extend_from_slice(&MATMUL);
        assert_success(&cluster.kiln(&args));
        ids.push(id.clone());
        let mut landed_on_cpu = false;
        let until = Instant::now() + Duration::from_millis(250);
        while let Ok(Some(m)) =
            tokio::time::timeout_at(until.into(), futures::StreamExt::next(&mut results)).await
        {
            let event: ResultEvent = serde_json::from_slice(&m.payload).unwrap();
            if event.class == DeviceClass::Cpu && event.id.starts_with("after-kill-") {
                landed_on_cpu = true;
            }
            routed.insert(event.id.clone(), event);
        }
        if landed_on_cpu {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "auto jobs never moved to the cpu class"
        );
    };
    // Heartbeats expire after 6 s; the scheduler re-reads live workers every 100 ms.
    assert!(
        switched_after < Duration::from_secs(10),
        "took {switched_after:?}"
    );

    // A job only a GPU can run (a bf16 product) never goes to the cpu class, which would
    // refuse it, even while the gpu class is backed up or its worker gone: it waits there.
    let mut args = vec![
        "submit",
        "matmul",
        "--device",
        "auto",
        "--id",
        "bf16-after-kill",
        "-p",
        "dtype=bf16",
    ];
    args.extend_from_slice(&MATMUL);
    assert_success(&cluster.kiln(&args));

    // Jobs routed to the gpu class before the expiry wait there; a new gpu worker finishes
    // them: every submitted job gets exactly one result.
    cluster.spawn(
        "gpu2",
        &[
            "worker",
            "--device",
            "cpu",
            "--serve-class",
            "gpu",
            "--name",
            "sim-gpu-2",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids
        .iter()
        .chain(["bf16-after-kill".to_owned()].iter())
        .any(|id| !routed.contains_key(id))
    {
        assert!(
            Instant::now() < deadline,
            "lost: {:?}",
            ids.iter()
                .filter(|id| !routed.contains_key(*id))
                .collect::<Vec<_>>()
        );
        if let Ok(Some(m)) = tokio::time::timeout(
            Duration::from_millis(500),
            futures::StreamExt::next(&mut results),
        )
        .await
        {
            let event: ResultEvent = serde_json::from_slice(&m.payload).unwrap();
            routed.insert(event.id.clone(), event);
        }
    }
    let (stored, by_id) = common::stored_results(&client).await;
    assert_eq!(stored, by_id.len(), "no job has two results");
    for id in &ids {
        assert_eq!(by_id[id].status, Status::Succeeded, "{id}");
    }
    // The bf16 job reached the gpu class; the stand-in gpu worker is a CPU, which refuses it.
    let bf16 = &routed["bf16-after-kill"];
    assert_eq!(routed_to(bf16), DeviceClass::Gpu);
    // Whether the killed worker's heartbeat had expired yet decides which of the two reasons.
    let reason = &bf16.routing.as_ref().unwrap().reason;
    assert!(
        reason.ends_with("; its dtype needs a gpu")
            || reason == "its dtype needs a gpu and none is live: gpu, to wait for one",
        "{reason}"
    );
    let error = bf16.error.as_ref().expect("the cpu stand-in refuses bf16");
    assert_eq!(
        error.message,
        "dtype bf16 needs a GPU worker: this worker serves class gpu on a CPU (--serve-class); \
         run one on a GPU for it, or use f32"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_job_is_routed_even_when_a_job_named_like_its_routed_copy_exists() {
    let cluster = cpu_worker_and_scheduler();
    // A job whose id is what the routed copy of `job7` was once named.
    let first = submit(&cluster, "cpu", "routed-job7");
    assert_eq!(first.status, Status::Succeeded, "{first:?}");
    let routed = submit(&cluster, "auto", "job7");
    assert_eq!(routed.status, Status::Succeeded, "{routed:?}");
    assert_eq!(routed.id, "job7");
    assert_eq!(routed_to(&routed), DeviceClass::Cpu);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_job_whose_kind_is_no_kind_name_is_answered_not_dropped() {
    let cluster = cpu_worker_and_scheduler();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "odd-kind-1");
    js.publish_with_headers("jobs.auto.mat+mul", headers, "{\"params\":{}}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let results = common::wait_for_results(&client, &["odd-kind-1"], Duration::from_secs(60)).await;
    let answer = &results["odd-kind-1"];
    assert_eq!(answer.status, Status::Failed, "{answer:?}");
    assert_eq!(answer.kind, "unknown");
    let error = answer.error.as_ref().unwrap();
    assert_eq!(error.kind, kiln_proto::ErrorKind::InvalidInput, "{error}");
}

/// An auto job published without headers (`nats pub`) whose parameters are wrong, or whose
/// body goes wrong after its id (in JSON or in bincode), is answered under the id its body
/// gives, where its submitter waits, as a job submitted to a class directly is.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_auto_job_is_answered_under_its_body_id() {
    let cluster = cpu_worker_and_scheduler();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    for body in [
        r#"{"id":"bad-params","params":{"n":-1}}"#,
        r#"{"id":"bad-after-id","params":{"n":[NaN]}}"#,
    ] {
        js.publish("jobs.auto.matmul", body.as_bytes().to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The same in bincode: a whole job followed by bytes that are not part of it.
    let matmul = kiln_kernels::find("matmul").unwrap();
    let spec = kiln_client::JobSpec::new(
        matmul,
        kiln_proto::DeviceClass::Auto,
        serde_json::json!({"n": 4}),
        "bad-bincode".into(),
        0,
        None,
        kiln_proto::Codec::Bincode,
    )
    .unwrap();
    let mut body = spec.body;
    body.extend_from_slice(b"trailing");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", kiln_proto::Codec::Bincode.content_type());
    js.publish_with_headers("jobs.auto.matmul", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let ids = ["bad-params", "bad-after-id", "bad-bincode"];
    let results = common::wait_for_results(&client, &ids, Duration::from_secs(60)).await;
    for id in ids {
        let answer = &results[id];
        assert_eq!(answer.status, Status::Failed, "{answer:?}");
        let error = answer.error.as_ref().unwrap();
        assert_eq!(error.kind, kiln_proto::ErrorKind::InvalidInput, "{error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_job_published_with_conditions_is_routed_without_them() {
    let cluster = cpu_worker_and_scheduler();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // Conditions the original meets when it is submitted, and its routed copy, published
    // into the same stream afterwards, never could.
    let last = js
        .get_stream(kiln_proto::streams::STREAM_JOBS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "guarded-1");
    headers.insert("Nats-Expected-Stream", kiln_proto::streams::STREAM_JOBS);
    headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
    js.publish_with_headers(
        "jobs.auto.vector_add",
        headers,
        r#"{"params":{"len":8}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let results = common::wait_for_results(&client, &["guarded-1"], Duration::from_secs(60)).await;
    let answer = &results["guarded-1"];
    assert_eq!(answer.status, Status::Succeeded, "{answer:?}");
    assert_eq!(routed_to(answer), DeviceClass::Cpu);
}

/// Auto jobs the server accepted into a full `KILN_JOBS` wait for room for their routed copies
/// (held with progress acks, not handed back: each nak spends a delivery, and five in five
/// seconds dead-lettered them as if workers had crashed on them), and run once workers make
/// room.
#[tokio::test(flavor = "multi_thread")]
async fn auto_jobs_in_a_full_queue_wait_for_room_instead_of_being_dead_lettered() {
    let mut cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init", "--max-queued-jobs", "12"]));
    cluster.spawn("scheduler", &["scheduler", "--name", "sched-1"]);
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // Nine CPU jobs no worker takes yet and three auto jobs fill the queue.
    let mut ids = Vec::new();
    for (device, n) in [("cpu", 9), ("auto", 3)] {
        for i in 0..n {
            let id = format!("{device}-{i}");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let body = format!(r#"{{"id":"{id}","params":{{"len":8}}}}"#);
            js.publish_with_headers(format!("jobs.{device}.vector_add"), headers, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
            ids.push(id);
        }
    }
    // Long enough for the old five 1 s hand-backs to have dead-lettered the auto jobs.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (stored, _) = common::stored_results(&client).await;
    assert_eq!(stored, 0, "nothing is answered while no worker runs");
    cluster.cpu_worker();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = common::wait_for_results(&client, &ids, Duration::from_secs(90)).await;
    for id in &ids {
        let answer = &results[*id];
        assert_eq!(answer.status, Status::Succeeded, "{answer:?}");
        assert_eq!(answer.attempt, 1, "{answer:?}");
    }
    for i in 0..3 {
        assert_eq!(routed_to(&results[&format!("auto-{i}")]), DeviceClass::Cpu);
    }
    let dlq = js
        .get_stream(kiln_proto::streams::STREAM_DLQ)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dlq, 0, "no job was dead-lettered");
    let scheduler = cluster.child("scheduler").try_wait().unwrap();
    assert!(scheduler.is_none(), "the scheduler exited: {scheduler:?}");
}

/// An auto job held for room is cancelled by `kiln cancel` within a hold's pause: the
/// scheduler looks for a mark before holding it again. It was held on and answered "no
/// room" after two minutes while `kiln status` said a worker would answer it cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_auto_job_is_answered_cancelled_when_cancelled() {
    let mut cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init", "--max-queued-jobs", "4"]));
    let client = cluster.client().await;
    let submit = [
        "submit",
        "vector_add",
        "-d",
        "auto",
        "-p",
        "len=10",
        "-n",
        "4",
        "--id",
        "fq",
    ];
    assert_success(&cluster.kiln(&submit));
    // Started once the queue is full: a scheduler running meanwhile could route the first
    // jobs' copies while the last were sent, and fill the queue before them.
    cluster.spawn("scheduler", &["scheduler", "--name", "sched-1"]);
    // Held: the queue has no room for any copy, as `kiln status` says (it said they waited
    // to be routed, nothing of the hold).
    let held = "4 auto job(s) wait to be routed, 4 of them held by the scheduler: KILN_JOBS is \
                full (4 jobs, ";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = stdout(&cluster.kiln(&["status", "fq-1"]));
        if status.contains(held) {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_success(&cluster.kiln(&["cancel", "fq-1"]));
    let results = common::wait_for_results(&client, &["fq-1"], Duration::from_secs(15)).await;
    let answer = &results["fq-1"];
    assert_eq!(answer.status, Status::Failed, "{answer:?}");
    let error = answer.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Cancelled, "{error:?}");
    assert_eq!(error.message, "cancelled on request before it ran");
    assert_eq!((answer.device.as_str(), answer.flops), ("none", 10.0));
    // The others wait on, unanswered.
    let (stored, _) = common::stored_results(&client).await;
    assert_eq!(stored, 1);
}

/// A routed copy the server refuses for another reason than room or size (here the
/// scheduler's user may not publish copies) is answered on the job's last delivery, naming
/// the refusal, instead of the server giving up on it and a dead letter blaming workers that
/// never saw the job.
#[tokio::test(flavor = "multi_thread")]
async fn an_auto_job_whose_copy_is_always_refused_is_answered_with_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        r#"
jetstream { store_dir: $KILN_STORE_DIR }
accounts {
  KILN {
    jetstream: enabled
    users: [
      { user: admin, password: admin }
      { user: sched, password: sched, permissions: { publish: { allow: ">", deny: "jobs.*.*.copy" } } }
    ]
  }
}
no_auth_user: admin
"#,
    )
    .unwrap();
    let mut cluster = Cluster::new();
    cluster.server = kiln_testkit::NatsServer::start_with_config(&config, &[]);
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // Two deliveries: the scheduler's consumer gives up quickly.
    let topology = kiln_proto::Topology {
        max_deliver: 2,
        ..Default::default()
    };
    kiln_proto::streams::update_all(&js, &topology)
        .await
        .unwrap();
    // The scheduler as the user who may not publish copies.
    cluster.spawn(
        "scheduler",
        &["scheduler", "--user", "sched", "--password", "sched"],
    );
    let submit = cluster.kiln(&[
        "submit",
        "vector_add",
        "--device",
        "auto",
        "--id",
        "fenced",
        "-p",
        "len=4",
    ]);
    assert_success(&submit);
    // A job with no headers whose parameters do not decode: the scheduler answers it under
    // the id its body gives, as a worker would (it was `seq-<n>`).
    js.publish(
        "jobs.auto.vector_add",
        r#"{"id":"fenced-broken","params":{"len":-1}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let ids = ["fenced", "fenced-broken"];
    let results = common::wait_for_results(&client, &ids, Duration::from_secs(90)).await;
    for id in ids {
        let event = &results[id];
        assert_eq!(event.status, Status::Failed, "{event:?}");
        let error = event.error.as_ref().unwrap();
        assert_eq!(error.kind, kiln_proto::ErrorKind::Internal, "{error}");
        assert!(
            error
                .message
                .contains("the scheduler could not store the job's routed copy on jobs."),
            "{error}"
        );
        assert!(!error.message.contains("no worker acknowledged"), "{error}");
    }
    // Answered and acked: the server does not give up on it, nothing is dead-lettered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let list = stdout(&cluster.kiln(&["dlq", "list"]));
    assert!(list.contains("KILN_DLQ is empty"), "{list}");

    // Replayed from the dead-letter queue, the job is a run of its own: the scheduler's
    // answer to the replay is stored beside the first (not refused by it), and `kiln status`
    // shows it rather than "queued" for ever.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "dlq-fenced");
    headers.insert("Kiln-Dlq-Reason", "internal: as a worker writes it");
    headers.insert("Kiln-Dlq-Subject", "jobs.auto.vector_add");
    headers.insert("Kiln-Job-Id", "fenced");
    js.publish_with_headers(
        "dlq.vector_add",
        headers,
        r#"{"id":"fenced","params":{"len":4}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_success(&cluster.kiln(&["dlq", "replay", "--all"]));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = stdout(&cluster.kiln(&["status", "fenced"]));
        if status.starts_with("fenced: failed (internal: the scheduler could not store") {
            assert!(status.contains("replay 1"), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replay was never answered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kiln status <id>` of an auto job the scheduler routed to a class with no live worker
/// says it waits there: its record still says auto (routing does not rewrite it), but the
/// auto queue is empty, and the class's backlog and workers are named. Before, it said only
/// "queued on jobs.auto.matmul", with no sign that no worker could take it.
#[tokio::test(flavor = "multi_thread")]
async fn status_of_a_routed_auto_job_names_the_class_queues_and_their_workers() {
    let cluster = cpu_worker_and_scheduler();
    let submit = [
        "submit",
        "matmul",
        "-d",
        "auto",
        "-p",
        "n=8",
        "-p",
        "dtype=bf16",
        "--id",
        "au-bf16",
    ];
    assert_success(&cluster.kiln(&submit));
    // Routed, with the worker live and the copy stored: until then (a worker still starting,
    // a copy read between its store and the original's ack) the lines say so truthfully.
    let expected = [
        "routed: the scheduler has taken every auto job",
        "jobs.gpu.matmul: 1 job(s) of the class waiting, no live worker",
        "jobs.cpu.matmul: 0 job(s) of the class waiting, 1 live worker(s)",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = stdout(&cluster.kiln(&["status", "au-bf16"]));
        if expected.iter().all(|line| status.contains(line)) {
            break status;
        }
        assert!(Instant::now() < deadline, "never routed: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        status.starts_with("au-bf16: queued on jobs.auto.matmul"),
        "{status}"
    );
    assert!(!status.contains("   "), "one space between words: {status}");
}

/// An auto job routed to a class whose only worker was killed holding it is neither waiting
/// nor on a live worker until that worker's ack wait ends. `kiln status <id>` said "0 job(s)
/// of the class waiting, no live worker", as if the job were nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn status_of_a_routed_job_held_by_a_killed_worker_says_it_was_taken() {
    let mut cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init"]));
    // The job is handed out again only after 2 minutes: long after its heartbeat expires.
    cluster.cpu_worker_with(&["--ack-wait", "2m", "--no-warmup"]);
    cluster.spawn("scheduler", &["scheduler", "--name", "sched-1"]);
    let submit = [
        "submit",
        "train_mlp",
        "-d",
        "auto",
        "-p",
        "epochs=10000",
        "-p",
        "samples=2048",
        "--id",
        "au-held",
    ];
    assert_success(&cluster.kiln(&submit));
    // And one sent to the class directly.
    let direct = [
        &submit[..2],
        &["-d", "cpu"],
        &submit[4..9],
        &["direct-held"],
    ]
    .concat();
    assert_success(&cluster.kiln(&direct));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = stdout(&cluster.kiln(&["status", "au-held"]));
        let direct = stdout(&cluster.kiln(&["status", "direct-held"]));
        let status = format!("{held}{direct}");
        if held.contains("au-held: running (train_mlp) on cpu (test-worker)")
            && direct.contains("direct-held: running (train_mlp) on cpu (test-worker)")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never seen running: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.child("worker").kill().expect("SIGKILL the worker");
    let expected = "jobs.cpu.train_mlp: 0 job(s) of the class waiting, 2 taken by a worker no \
                    longer live (handed out again once its ack wait ends, to the next worker of the \
                    class that pulls, or answered failed if that was its last delivery), no live \
                    worker";
    // Its heartbeat expires 6 s after the last one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = stdout(&cluster.kiln(&["status", "au-held"]));
        if status.contains(expected) {
            assert!(
                status.starts_with("au-held: queued on jobs.auto.train_mlp"),
                "{status}"
            );
            // The job sent to the class directly says where it is too (it said "queued"
            // alone).
            let direct = stdout(&cluster.kiln(&["status", "direct-held"]));
            assert!(
                direct.starts_with("direct-held: queued on jobs.cpu.train_mlp"),
                "{direct}"
            );
            assert!(direct.contains(expected), "{direct}");
            break;
        }
        assert!(Instant::now() < deadline, "not said: {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A job submitted to that class now waits too: said, though the consumer still counts
    // the killed worker's job as taken (which kept the note about nothing pulling quiet).
    let out = cluster.kiln(&["submit", "vector_add", "-p", "len=4"]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("note: no cpu worker is live right now"),
        "{stderr}"
    );
}

/// A stopping scheduler routes the auto jobs already delivered to it (buffered by its pull)
/// and flushes its acks before it exits: none is left delivered to it, waiting out the ack
/// wait with a delivery spent.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_scheduler_leaves_no_job_delivered_to_it() {
    use kiln_proto::streams::STREAM_JOBS;

    let mut cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init"]));
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let mut acks = Vec::new();
    for n in 0..3000 {
        let body = format!(r#"{{"id":"stop-{n}","params":{{"len":8}}}}"#);
        acks.push(
            js.publish("jobs.auto.vector_add", body.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    cluster.spawn("scheduler", &["scheduler", "--name", "sched-stop"]);
    let stream = js.get_stream(STREAM_JOBS).await.unwrap();
    // Stopped while it routes: some routed, some delivered to it and not yet taken.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = stream.consumer_info("scheduler").await.unwrap();
        if info.delivered.stream_sequence > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the scheduler took no job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = cluster.child("scheduler").id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = cluster.child("scheduler").wait().unwrap();
    assert!(status.success(), "{status:?}");
    // (Acks flushed before it exited may reach the consumer's state a moment later.)
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut info = stream.consumer_info("scheduler").await.unwrap();
    while info.num_ack_pending > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = stream.consumer_info("scheduler").await.unwrap();
    }
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    // Every job is either routed (its copy queued for the cpu class) or still queued.
    let cpu = stream.consumer_info("workers-cpu").await.unwrap();
    assert_eq!(cpu.num_pending + info.num_pending, 3000, "{cpu:?} {info:?}");
}
