//! Hostile and unlucky input against real processes: forged `Kiln-*` headers, a job too large
//! for its routed copy, an error message that echoes a huge input. Each is answered, once,
//! with bounded values, and nothing it carries reaches the metrics unchecked.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use common::{Cluster, snapshot, stdout, wait_for_metrics, wait_for_results};
use kiln_proto::{ErrorKind, MAX_ERROR_MESSAGE, ResultEvent, Status, streams};

const FORGED_ROUTING: &str = r#"{"chosen":"cpu","by":"mallory","predicted_gpu_ms":1.7e308,"predicted_cpu_ms":1.7e308,"reason":"forged"}"#;

/// A heartbeat written by hand into `KILN_WORKERS` (its bucket is open to every client of
/// an open server) claiming more capacity than a number holds twice over: the scheduler
/// panicked adding it up (`attempt to add with overflow`) and, restarted, again at its next
/// read. It goes on routing.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_heartbeat_claiming_absurd_capacity_leaves_the_scheduler_routing() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let workers = js.get_key_value(kiln_proto::BUCKET_WORKERS).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    for name in ["forged-1", "forged-2"] {
        let forged = kiln_proto::WorkerInfo {
            name: name.into(),
            class: kiln_proto::DeviceClass::Cpu,
            device: "cpu".into(),
            backend: "ndarray".into(),
            engines: Default::default(),
            capacity: usize::MAX,
            max_in_flight: usize::MAX,
            in_flight: 0,
            succeeded: 0,
            failed: 0,
            state: "serving".into(),
            running: Vec::new(),
            version: "0".into(),
            started_at: now,
            updated_at: now,
        };
        let body = serde_json::to_vec(&forged).unwrap();
        workers.put(name, body.into()).await.unwrap();
    }
    cluster.spawn("scheduler", &["scheduler"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let body = r#"{"id":"after-forgery","params":{"a":[1,2],"b":[3,4]}}"#;
    publish(&js, "jobs.auto.vector_add", HeaderMap::new(), body.into()).await;
    let results = wait_for_results(&client, &["after-forgery"], Duration::from_secs(30)).await;
    let event = &results["after-forgery"];
    assert_eq!(event.status, Status::Succeeded, "{event:?}");
    assert_eq!(event.output["c"], serde_json::json!([4.0, 6.0]));
}

fn forged_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Kiln-Replay", "5");
    h.insert("Kiln-Routing", FORGED_ROUTING);
    h.insert("Kiln-Enqueued-At", "2020-01-01T00:00:00Z");
    h.insert("Kiln-Handbacks", "19");
    h
}

/// Publish and wait for the job to be stored; its stream sequence.
async fn publish(js: &jetstream::Context, subject: &str, headers: HeaderMap, body: Vec<u8>) -> u64 {
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

/// The result stored on exactly `subject`.
async fn result_on(js: &jetstream::Context, subject: &str) -> Option<ResultEvent> {
    let stream = js.get_stream(streams::STREAM_RESULTS).await.unwrap();
    let message = stream.get_last_raw_message_by_subject(subject).await.ok()?;
    Some(serde_json::from_slice(&message.payload).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn kilns_own_headers_are_believed_only_on_a_copy_and_always_bounded() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.aggregator();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());

    // A submitted job claiming to be a replay, routed, handed back and six years old.
    publish(
        &js,
        "jobs.cpu.vector_add",
        forged_headers(),
        br#"{"id":"forged-1","params":{"len":16}}"#.to_vec(),
    )
    .await;
    // The same headers on a copy's subject: believed where they make sense, bounded where not.
    publish(
        &js,
        "jobs.cpu.vector_add.copy",
        forged_headers(),
        br#"{"id":"copied-1","params":{"len":16}}"#.to_vec(),
    )
    .await;
    // A job sent without an id, claiming one in `Kiln-Job-Id`: it keeps its own `seq-` id (a
    // forged `Kiln-Job-Id` took another job's, and its answer).
    let mut claims = HeaderMap::new();
    claims.insert("Kiln-Job-Id", "victim-1");
    let sequence = publish(
        &js,
        "jobs.cpu.vector_add",
        claims,
        br#"{"params":{"len":16}}"#.to_vec(),
    )
    .await;
    let own = format!("seq-{sequence}");
    let results = wait_for_results(
        &client,
        &["forged-1", "copied-1", own.as_str()],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(results[own.as_str()].status, Status::Succeeded);
    assert!(
        result_on(&js, "results.vector_add.victim-1")
            .await
            .is_none(),
        "a submitted job took the id its Kiln-Job-Id claimed"
    );

    let forged = &results["forged-1"];
    assert_eq!(forged.status, Status::Succeeded, "{forged:?}");
    assert_eq!(forged.replay, 0, "a submitter cannot claim a replay");
    assert!(forged.routing.is_none(), "{:?}", forged.routing);
    assert!(forged.queue_ms < 60_000.0, "queue_ms {}", forged.queue_ms);
    assert!(
        result_on(&js, "results.vector_add.forged-1")
            .await
            .is_some(),
        "the result is on the job's own subject, not a replay's"
    );
    assert!(
        result_on(&js, "results.vector_add.forged-1.replay-5")
            .await
            .is_none()
    );

    let copied = &results["copied-1"];
    assert_eq!(copied.status, Status::Succeeded, "{copied:?}");
    assert_eq!(copied.replay, 5);
    let routing = copied.routing.as_ref().expect("a copy's routing is read");
    assert_eq!(
        (routing.predicted_gpu_ms, routing.predicted_cpu_ms),
        (None, None),
        "predictions of 1.7e308 ms are dropped"
    );
    assert!(
        copied.queue_ms < 60_000.0,
        "a submit time older than any job lives is not believed: {}",
        copied.queue_ms
    );

    // The aggregator counts all three, and its snapshot stays readable.
    let snapshots = wait_for_metrics(&client, Duration::from_secs(30), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.succeeded >= 3)
    })
    .await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!(m.succeeded, 3, "{m:?}");

    // Something that is no snapshot on the snapshot's subject (metrics.> open to all): the
    // aggregator replaces it with its counts and counts on. It took it for a second
    // aggregator's, stood by, and started again from nothing.
    publish(
        &js,
        "metrics.vector_add.cpu",
        HeaderMap::new(),
        b"garbage\xff".to_vec(),
    )
    .await;
    for id in ["after-1", "after-2"] {
        let body = format!(r#"{{"id":"{id}","params":{{"len":16}}}}"#);
        publish(
            &js,
            "jobs.cpu.vector_add",
            HeaderMap::new(),
            body.into_bytes(),
        )
        .await;
    }
    let snapshots = wait_for_metrics(&client, Duration::from_secs(30), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.succeeded >= 5)
    })
    .await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!((m.jobs, m.succeeded), (5, 5), "{m:?}");

    // A result on one job's subject whose body names another job (one that never ran) is
    // not counted: it was, as a sixth job.
    let results = wait_for_results(&client, &["after-1"], Duration::from_secs(30)).await;
    let mut ghost = results["after-1"].clone();
    ghost.id = "ghost-1".into();
    publish(
        &js,
        "results.vector_add.forged-1",
        HeaderMap::new(),
        serde_json::to_vec(&ghost).unwrap(),
    )
    .await;
    let body = r#"{"id":"after-3","params":{"len":16}}"#;
    publish(&js, "jobs.cpu.vector_add", HeaderMap::new(), body.into()).await;
    wait_for_results(&client, &["after-3"], Duration::from_secs(30)).await;
    wait_for_metrics(&client, Duration::from_secs(30), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.succeeded >= 6)
    })
    .await;
    // Folded in stream order, the forged result before after-3's: a few snapshots later
    // the count holds both, had the forged one counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snapshots = wait_for_metrics(&client, Duration::from_secs(30), |_| true).await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!((m.jobs, m.succeeded), (6, 6), "{m:?}");
    let status = cluster.kiln(&["status"]);
    assert!(status.status.success(), "{}", common::stdout(&status));
    assert!(common::stdout(&status).contains("vector_add"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_too_large_for_its_routed_copy_is_answered_too_large() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.spawn("scheduler", &["scheduler"]);
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let max_payload = client.server_info().max_payload;

    // A valid inline vector_add whose JSON is 64 bytes short of max_payload: it is stored,
    // but its routed copy's headers no longer fit.
    let len = max_payload / 16;
    let values = vec!["0.25"; len].join(",");
    let mut body = format!(r#"{{"id":"huge-1","params":{{"a":[{values}],"b":[{values}]}}}}"#);
    assert!(body.len() < max_payload - 64, "{} bytes", body.len());
    body.push_str(&" ".repeat(max_payload - 64 - body.len()));
    // The same id as another kind is another job, answered on its own (the scheduler's answer
    // to it was once dropped by the server as a duplicate of the first's).
    for kind in ["vector_add", "matmul"] {
        let subject = format!("jobs.auto.{kind}");
        publish(&js, &subject, HeaderMap::new(), body.clone().into_bytes()).await;
    }

    let results = wait_for_results(&client, &["huge-1"], Duration::from_secs(60)).await;
    let event = &results["huge-1"];
    assert_eq!(event.status, Status::Failed, "{event:?}");
    let error = event.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::TooLarge, "{error}");
    assert!(error.message.contains("routed copy"), "{error}");
    assert!(error.message.contains("kiln put"), "{error}");
    let results_stream = js.get_stream(streams::STREAM_RESULTS).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let other = loop {
        match results_stream
            .get_last_raw_message_by_subject("results.matmul.huge-1")
            .await
        {
            Ok(other) => break other,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the matmul job under the same id is not answered: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let other: kiln_proto::ResultEvent = serde_json::from_slice(&other.payload).unwrap();
    assert_eq!(
        (other.kind.as_str(), other.status),
        ("matmul", Status::Failed)
    );
    assert_eq!(other.error.unwrap().kind, ErrorKind::TooLarge);
    // Answered once, and the queue is empty: nothing goes round.
    let mut stream = js.get_stream(streams::STREAM_JOBS).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stream.info().await.unwrap().state.messages > 0 {
        assert!(std::time::Instant::now() < deadline, "the job stays queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_that_echoes_a_huge_input_is_cut_and_answered_at_once() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());

    // An unknown parameter whose 600 KB name the decoder's error repeats.
    let name = "x".repeat(600_000);
    let body = format!(r#"{{"id":"echo-1","params":{{"{name}":1}}}}"#);
    let started = std::time::Instant::now();
    publish(&js, "jobs.cpu.matmul", HeaderMap::new(), body.into_bytes()).await;
    let results = wait_for_results(&client, &["echo-1"], Duration::from_secs(60)).await;
    let event = &results["echo-1"];
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered after {:?}",
        started.elapsed()
    );
    let error = event.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::InvalidInput, "{error}");
    assert!(
        error.message.contains("unknown field"),
        "{}",
        &error.message[..200]
    );
    assert!(
        error.message.chars().count() <= MAX_ERROR_MESSAGE,
        "{} characters",
        error.message.chars().count()
    );
    assert!(error.message.ends_with('…'));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_product_stops_at_its_timeout_and_at_a_cancel() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());

    // 2048³ is 17 GFLOP: several pieces, so a 1 ms timeout lands inside the product.
    publish(
        &js,
        "jobs.cpu.matmul",
        HeaderMap::new(),
        br#"{"id":"short-fuse","params":{"n":2048},"timeout_ms":1}"#.to_vec(),
    )
    .await;
    let results = wait_for_results(&client, &["short-fuse"], Duration::from_secs(120)).await;
    let error = results["short-fuse"].error.as_ref().expect("it failed");
    assert_eq!(error.kind, ErrorKind::Timeout, "{error}");

    // 6144³ is 464 GFLOP, seconds on any CPU: cancelled while it runs, it stops within a
    // couple of seconds, not when the product is done.
    publish(
        &js,
        "jobs.cpu.matmul",
        HeaderMap::new(),
        br#"{"id":"long-product","params":{"n":6144}}"#.to_vec(),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = common::stdout(&cluster.kiln(&["status", "long-product"]));
        if status.contains("running") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ran: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled_at = std::time::Instant::now();
    common::assert_success(&cluster.kiln(&["cancel", "long-product"]));
    let results = wait_for_results(&client, &["long-product"], Duration::from_secs(120)).await;
    let stopped_after = cancelled_at.elapsed();
    let event = &results["long-product"];
    let error = event.error.as_ref().expect("it was stopped");
    assert_eq!(error.kind, ErrorKind::Cancelled, "{error}");
    assert!(error.message.contains("while running"), "{error}");
    assert!(
        stopped_after < Duration::from_secs(5),
        "stopped {stopped_after:?} after the cancel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_stream_without_copy_subjects_is_named_at_start_and_fixed_by_init() {
    let mut cluster = Cluster::new();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // KILN_JOBS as kiln made it before copies had subjects of their own.
    js.create_stream(jetstream::stream::Config {
        name: streams::STREAM_JOBS.into(),
        subjects: vec![
            "jobs.gpu.*".into(),
            "jobs.cpu.*".into(),
            "jobs.auto.*".into(),
        ],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    for (name, filter) in [
        (streams::CONSUMER_WORKERS_CPU, "jobs.cpu.*"),
        ("scheduler", "jobs.auto.*"),
    ] {
        js.get_stream(streams::STREAM_JOBS)
            .await
            .unwrap()
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(name.into()),
                filter_subject: filter.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let out = cluster.kiln(&["worker", "--device", "cpu", "--no-warmup"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jobs.cpu.*.copy") && stderr.contains("run `kiln init` once"),
        "{stderr}"
    );
    cluster.init().await;
    cluster.spawn("scheduler", &["scheduler"]);
    cluster.cpu_worker();
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--device",
        "auto",
        "--id",
        "after-init",
        "--wait",
    ]);
    common::assert_success(&out);
}

/// A flood of submissions fills `KILN_STATE`, which is kept within `--results-max-bytes`: the
/// oldest job states make room for new ones instead of the bucket refusing every new state
/// (or, without a limit, growing until the server's storage is gone and every stream refuses
/// writes). A bucket made by an older kiln (no limit, discard new) is fixed by `kiln init`.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_job_state_bucket_drops_its_oldest_states() {
    use async_nats::jetstream::stream::DiscardPolicy;

    // The smallest limit `kiln init` takes (1 MiB, one message of the server's default size).
    const LIMIT: i64 = 1 << 20;
    const STATES: usize = 20_000;
    let cluster = Cluster::new();
    let js = jetstream::new(cluster.client().await);
    // The bucket as an older kiln made it.
    js.create_key_value(jetstream::kv::Config {
        bucket: kiln_proto::BUCKET_STATE.into(),
        history: 1,
        ..Default::default()
    })
    .await
    .expect("an older kiln's bucket");
    let out = cluster.kiln(&["init", "--results-max-bytes", &LIMIT.to_string()]);
    common::assert_success(&out);
    let mut stream = js
        .get_stream(format!("KV_{}", kiln_proto::BUCKET_STATE))
        .await
        .expect("the bucket's stream");
    let config = stream.info().await.expect("stream info").config.clone();
    assert_eq!(config.discard, DiscardPolicy::Old);
    assert_eq!(config.max_bytes, LIMIT);

    // 20,000 queued states, as `kiln submit` records them (about 150 bytes each): several
    // times what the bucket holds.
    let state = serde_json::to_vec(&kiln_proto::JobState::queued(
        "vector_add",
        kiln_proto::DeviceClass::Cpu,
    ))
    .expect("a job state");
    for first in (0..STATES).step_by(500) {
        let mut acks = Vec::with_capacity(500);
        for i in first..first + 500 {
            let subject = kiln_proto::state_subject(&format!("flood-{i}"));
            let ack = js.publish(subject, state.clone().into()).await;
            acks.push((i, ack.expect("publish")));
        }
        for (i, ack) in acks {
            ack.await
                .unwrap_or_else(|e| panic!("state {i} refused by a full bucket: {e}"));
        }
    }
    let info = stream.info().await.expect("stream info");
    assert!(info.state.bytes <= LIMIT as u64, "{:?}", info.state);
    assert!(info.state.messages < STATES as u64 / 2, "{:?}", info.state);
    let bucket = js
        .get_key_value(kiln_proto::BUCKET_STATE)
        .await
        .expect("the bucket");
    let newest = bucket
        .get(kiln_proto::job_key(&format!("flood-{}", STATES - 1)))
        .await
        .expect("read the newest state");
    assert!(newest.is_some(), "the newest state is kept");
    let oldest = bucket
        .get(kiln_proto::job_key("flood-0"))
        .await
        .expect("read the oldest state");
    assert!(oldest.is_none(), "the oldest state made room");
}

/// No submitter can take the id kiln gives a job sent without one (`seq-<its sequence>`,
/// known to everyone in advance): a job naming one in its body is refused under an id of its
/// own, one whose `Nats-Msg-Id` is one goes by its sequence, and the id-less job is answered
/// with its own result.
#[tokio::test(flavor = "multi_thread")]
async fn no_job_can_take_the_id_kiln_gives_a_job_sent_without_one() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let last = js
        .get_stream(streams::STREAM_JOBS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    let victim = format!("seq-{}", last + 3);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "planted-body");
    let body = format!(r#"{{"id":"{victim}","params":{{"a":[666],"b":[0]}}}}"#);
    publish(&js, "jobs.cpu.vector_add", headers, body.into_bytes()).await;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", victim.as_str());
    let body = r#"{"params":{"a":[777],"b":[0]}}"#;
    publish(&js, "jobs.cpu.vector_add", headers, body.into()).await;
    // The job sent without an id, at the sequence both aimed at.
    let body = r#"{"params":{"a":[1],"b":[1]}}"#;
    publish(&js, "jobs.cpu.vector_add", HeaderMap::new(), body.into()).await;

    let second = format!("seq-{}", last + 2);
    let ids = ["planted-body", second.as_str(), victim.as_str()];
    let results = wait_for_results(&client, &ids, Duration::from_secs(60)).await;
    let planted = &results["planted-body"];
    assert_eq!(planted.status, Status::Failed, "{planted:?}");
    let error = planted.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::InvalidInput, "{error}");
    assert!(error.message.contains("kiln's own"), "{error}");
    assert_eq!(
        results[second.as_str()].output["c"],
        serde_json::json!([777.0])
    );
    let own = &results[victim.as_str()];
    assert_eq!(own.status, Status::Succeeded, "{own:?}");
    assert_eq!(own.output["c"], serde_json::json!([2.0]), "{own:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn values_past_f32_and_parameters_given_twice_are_refused_by_name() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("a.npy");
    std::fs::write(
        &npy,
        kiln_data::formats::encode_npy(&kiln_data::HostTensor::new(vec![1], vec![1.0])),
    )
    .unwrap();
    let npy = format!("a=@{}", npy.display());
    // Each is refused by `kiln submit` before anything is sent (a value too large for f32
    // was sent on as `null`, a parameter given twice quietly took the last value).
    for (args, said) in [
        (
            vec!["-p", "a=[1e39, 1]", "-p", "b=[1, 2]"],
            "outside f32's range",
        ),
        (
            vec!["-p", "a=[1]", "-p", "a=[2]", "-p", "b=[1]"],
            "-p a=… is given twice",
        ),
        (
            vec!["--input", &npy, "--input", "a=other", "-p", "b=[1]"],
            "--input a=… is given twice",
        ),
        (
            vec!["--input", &npy, "-p", "a=[1]", "-p", "b=[1]"],
            "a is given both by -p and by --input",
        ),
    ] {
        let mut all = vec!["submit", "vector_add", "--id", "never"];
        all.extend(args.iter().copied());
        let out = cluster.kiln(&all);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    let status = String::from_utf8_lossy(&cluster.kiln(&["status", "never"]).stdout).into_owned();
    assert!(status.contains("never: unknown"), "{status}");

    // Sent as raw JSON (`nats pub`), the worker answers it invalid_input, naming the place.
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "too-big");
    let body = r#"{"id":"too-big","params":{"a":[1, 2, 1e39],"b":[1, 2, 3]}}"#;
    publish(&js, "jobs.cpu.vector_add", headers, body.into()).await;
    let results = wait_for_results(&client, &["too-big"], Duration::from_secs(60)).await;
    let event = &results["too-big"];
    assert_eq!(event.status, Status::Failed, "{event:?}");
    let error = event.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::InvalidInput, "{error}");
    assert!(
        error
            .message
            .contains("params.a: element [2] is outside f32's range"),
        "{error}"
    );
}

/// kiln's copies of a job go by message ids no submitter can know in advance. A job
/// published first under the id a routed copy or a dead-letter replay would have had
/// (`routed-<sequence>-<id>`, `replay-<letter>-<id>`: sequences and ids are no secret) made the
/// server drop the copy as a duplicate while kiln took it as stored: the auto job was acked
/// and never ran, and the replayed letter was removed with nothing queued.
#[tokio::test(flavor = "multi_thread")]
async fn a_planted_message_id_cannot_take_the_place_of_a_copy() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.spawn("scheduler", &["scheduler", "--name", "sched-1"]);
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let jobs = || async {
        let mut stream = js.get_stream(streams::STREAM_JOBS).await.unwrap();
        stream.info().await.unwrap().state.last_sequence
    };
    let last = jobs().await;
    // Twenty planted jobs, each under the routed copy's old id for one of the twenty
    // sequences after them: the victim's is among them.
    let planted = |n: u64| format!(r#"{{"id":"planted-{n}","params":{{"a":[0],"b":[0]}}}}"#);
    for k in 1..=20 {
        let mut headers = HeaderMap::new();
        let aimed = format!("routed-{}-victim-routed", last + 20 + k);
        headers.insert("Nats-Msg-Id", aimed.as_str());
        publish(&js, "jobs.cpu.vector_add", headers, planted(k).into_bytes()).await;
    }
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "victim-routed");
    let body = r#"{"id":"victim-routed","params":{"a":[1],"b":[2]}}"#;
    let sequence = publish(&js, "jobs.auto.vector_add", headers, body.into()).await;
    assert!(sequence > last + 20 && sequence <= last + 40, "{sequence}");

    // A dead letter, and a job planted under its replay's old id.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "dlq-victim-replayed");
    headers.insert("Kiln-Job-Id", "victim-replayed");
    headers.insert(
        "Kiln-Dlq-Reason",
        "internal: kernel panicked on cuda:0: boom",
    );
    headers.insert("Kiln-Dlq-Subject", "jobs.cpu.vector_add");
    let body = r#"{"id":"victim-replayed","params":{"a":[3],"b":[4]}}"#;
    let letter = publish(&js, "dlq.vector_add", headers, body.into()).await;
    let mut headers = HeaderMap::new();
    let aimed = format!("replay-{letter}-victim-replayed");
    headers.insert("Nats-Msg-Id", aimed.as_str());
    publish(
        &js,
        "jobs.cpu.vector_add",
        headers,
        planted(21).into_bytes(),
    )
    .await;
    let replay = cluster.kiln(&["dlq", "replay", "--all"]);
    common::assert_success(&replay);

    let ids = [
        "victim-routed",
        "victim-replayed",
        "planted-1",
        "planted-21",
    ];
    let results = wait_for_results(&client, &ids, Duration::from_secs(60)).await;
    let routed = &results["victim-routed"];
    assert_eq!(routed.status, Status::Succeeded, "{routed:?}");
    assert_eq!(routed.output["c"], serde_json::json!([3.0]), "{routed:?}");
    assert!(routed.routing.is_some(), "{routed:?}");
    let replayed = &results["victim-replayed"];
    assert_eq!(replayed.status, Status::Succeeded, "{replayed:?}");
    assert_eq!(replayed.replay, 1, "{replayed:?}");
    assert_eq!(
        replayed.output["c"],
        serde_json::json!([7.0]),
        "{replayed:?}"
    );
}

/// A `KILN_JOBS` made by hand that would lose jobs is refused at start, with what to do: one
/// that keeps messages as a limits stream (`kiln init` cannot change retention), and one that
/// drops its oldest jobs when full, or stores subjects no consumer reads (`kiln init` fixes
/// those). Before, a worker ran on the first, `kiln submit --count 20` exited 0 with 10 jobs
/// lost, and `kiln init` said only "can not change retention policy".
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_made_jobs_stream_that_would_lose_jobs_is_refused_with_what_to_do() {
    let cluster = Cluster::new();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let made = |retention, subjects: Vec<String>| jetstream::stream::Config {
        name: streams::STREAM_JOBS.into(),
        subjects,
        retention,
        max_messages: 10,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let kiln_subjects_again = || kiln_proto::Topology::default().jobs_stream().subjects;
    let kiln_subjects = kiln_subjects_again();
    js.create_stream(made(
        jetstream::stream::RetentionPolicy::Limits,
        kiln_subjects,
    ))
    .await
    .unwrap();
    for args in [
        &["worker", "--device", "cpu", "--no-warmup"][..],
        &["submit", "vector_add", "-p", "len=4", "--count", "20"],
        &["init"],
    ] {
        let out = cluster.kiln(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("by Limits retention") && stderr.contains("nats stream rm KILN_JOBS"),
            "{args:?}: {stderr}"
        );
    }
    let stored = js.get_stream(streams::STREAM_JOBS).await.unwrap();
    assert_eq!(stored.cached_info().state.messages, 0, "nothing submitted");

    // Work queues that store what no consumer reads, or drop their oldest jobs: each named,
    // then fixed by `kiln init`.
    for (subjects, said) in [
        (vec!["jobs.>".to_owned()], "which no kiln consumer reads"),
        (kiln_subjects_again(), "drops its oldest queued jobs"),
    ] {
        let _ = js.delete_stream(streams::STREAM_JOBS).await;
        js.create_stream(made(
            jetstream::stream::RetentionPolicy::WorkQueue,
            subjects,
        ))
        .await
        .unwrap();
        let out = cluster.kiln(&["submit", "vector_add", "-p", "len=4"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(said) && stderr.contains("run `kiln init` once"),
            "{stderr}"
        );
    }
    common::assert_success(&cluster.kiln(&["init"]));
    let info = js
        .get_stream(streams::STREAM_JOBS)
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.discard, jetstream::stream::DiscardPolicy::New);
}

/// An aggregator or scheduler whose consumer is deleted under it stops with a failure that
/// says so: it exited 0 as if told to stop, which a supervisor restarting failures only would
/// leave down, results uncounted or auto jobs unrouted.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_whose_consumer_is_deleted_fails_saying_so() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.aggregator();
    cluster.spawn("scheduler", &["scheduler", "--name", "sched-1"]);
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // Both serving: their pull requests wait on their consumers.
    let waiting = |stream: &'static str, consumer: &'static str| {
        let js = js.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let stream = js.get_stream(stream).await.unwrap();
                if stream
                    .consumer_info(consumer)
                    .await
                    .is_ok_and(|i| i.num_waiting > 0)
                {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{consumer} never pulled"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    waiting(streams::STREAM_RESULTS, streams::CONSUMER_AGGREGATOR).await;
    waiting(streams::STREAM_JOBS, streams::CONSUMER_SCHEDULER).await;
    for (stream, consumer) in [
        (streams::STREAM_RESULTS, streams::CONSUMER_AGGREGATOR),
        (streams::STREAM_JOBS, streams::CONSUMER_SCHEDULER),
    ] {
        let stream = js.get_stream(stream).await.unwrap();
        stream.delete_consumer(consumer).await.unwrap();
    }
    for name in ["aggregator", "scheduler"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = cluster.child(name).try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} still runs:\n{}",
                cluster.report()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let report = cluster.report();
        assert!(!status.success(), "{name}: {status}\n{report}");
        let said = format!("the {name} consumer stopped delivering them");
        assert!(report.contains(&said), "{name}: {report}");
    }
}

/// A job cancelled while no worker was up is answered `cancelled` by the first worker to
/// start, even behind many other marks: a worker reads the whole `KILN_CANCEL` bucket before
/// it serves a job. Before, it started serving while its mirror of the bucket was still
/// filling, and behind 100,000 marks it ran the cancelled job (`succeeded`).
#[tokio::test(flavor = "multi_thread")]
async fn a_job_cancelled_before_any_worker_started_is_never_run() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let submit = ["submit", "vector_add", "-p", "len=8", "--id", "victim"];
    assert!(cluster.kiln(&submit).status.success());
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // Other jobs' marks first, published a batch at a time.
    let marks = 100_000;
    for batch in (0..marks).collect::<Vec<_>>().chunks(5_000) {
        let mut acks = Vec::with_capacity(batch.len());
        for i in batch {
            let subject = format!("$KV.{}.other-{i}", kiln_proto::BUCKET_CANCEL);
            acks.push(js.publish(subject, "".into()).await.expect("publish"));
        }
        for ack in acks {
            ack.await.expect("stored");
        }
    }
    let cancel = cluster.kiln(&["cancel", "victim"]);
    assert!(cancel.status.success(), "{cancel:?}");
    cluster.cpu_worker();
    let results = wait_for_results(&client, &["victim"], Duration::from_secs(60)).await;
    let event = &results["victim"];
    assert_eq!(event.status, Status::Failed, "{event:?}");
    let error = event.error.as_ref().expect("an error");
    assert_eq!(error.kind, ErrorKind::Cancelled, "{}", error.message);
}

/// `kiln cancel` of an id with no job yet marks it (a job published without a record may
/// wait in the queue: that one is cancelled), but the mark, kept a day, does not cancel a job
/// sent under the id after it. Before, a typo or a cancel before the submit made the next job
/// under that id fail `cancelled` without running.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_before_a_job_is_sent_does_not_cancel_it() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    // Published with no record, as `nats pub` does, then cancelled: cancelled.
    let client = cluster.client().await;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "queued-bare");
    let body = r#"{"id": "queued-bare", "params": {"len": 8}}"#;
    let js = jetstream::new(client.clone());
    js.publish_with_headers("jobs.cpu.vector_add", headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    for id in ["queued-bare", "later"] {
        assert!(cluster.kiln(&["cancel", id]).status.success());
    }
    // Past the clocks' second of slack.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = cluster.kiln(&["status", "later"]);
    assert!(stdout(&status).contains("cancel requested"), "{status:?}");
    cluster.cpu_worker();
    let submit = [
        "submit",
        "vector_add",
        "-p",
        "len=8",
        "--id",
        "later",
        "--wait",
    ];
    let out = cluster.kiln(&submit);
    assert!(out.status.success(), "{out:?}");
    let event: ResultEvent = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(event.status, Status::Succeeded, "{event:?}");
    let results = wait_for_results(&client, &["queued-bare"], Duration::from_secs(30)).await;
    let error = results["queued-bare"].error.as_ref().expect("cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled, "{}", error.message);
}

/// One id sent as two kinds is two jobs: with one answered, `kiln cancel` still stops the
/// other while it runs. Before, it said the id was finished and marked nothing.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_running_kind_of_an_id_whose_other_kind_finished() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let twin = |kind: &str, params: &str| {
        (
            format!("jobs.cpu.{kind}"),
            format!(r#"{{"id":"twin","params":{params}}}"#).into_bytes(),
        )
    };
    let (subject, body) = twin("matmul", r#"{"n":8}"#);
    publish(&js, &subject, HeaderMap::new(), body).await;
    let answered = wait_for_results(&client, &["twin"], Duration::from_secs(30)).await;
    assert_eq!(answered["twin"].kind, "matmul");
    let (subject, body) = twin("train_mlp", r#"{"epochs":10000}"#);
    publish(&js, &subject, HeaderMap::new(), body).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let workers = streams::live_workers(&js).await.unwrap_or_default();
        let held = workers.iter().flat_map(|w| &w.running);
        if held
            .into_iter()
            .any(|j| j.id == "twin" && j.kind == "train_mlp" && !j.waiting)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never seen running: {workers:?} {:?}",
            result_on(&js, "results.train_mlp.twin").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cluster.kiln(&["cancel", "twin"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("marked; it stops at its next checkpoint"),
        "{stdout}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let event = loop {
        if let Some(event) = result_on(&js, "results.train_mlp.twin").await {
            break event;
        }
        assert!(std::time::Instant::now() < deadline, "never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = event.error.expect("cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled, "{}", error.message);
}

/// One id held as two kinds at once is two entries in the worker's heartbeat: a training on
/// the only compute slot and a product waiting for it. Before, the heartbeat kept one entry per
/// id, so the second job hid the first from `kiln status` and from `kiln cancel`.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_lists_both_kinds_of_an_id_it_holds() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker_with(&["--compute-slots", "1"]);
    // Small jobs first: the worker then holds jobs ahead of its compute slot.
    let small = ["submit", "vector_add", "-p", "len=8", "-n", "50", "--wait"];
    assert!(cluster.kiln(&small).status.success());
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // The product is sent once the training holds the slot: sent together, the product
    // could take the slot first and be answered before the heartbeat shows both.
    let mut expected = Vec::new();
    for (kind, params, waiting) in [
        ("train_mlp", r#"{"epochs":10000}"#, false),
        ("matmul", r#"{"n":256}"#, true),
    ] {
        let body = format!(r#"{{"id":"pair","params":{params}}}"#).into_bytes();
        publish(&js, &format!("jobs.cpu.{kind}"), HeaderMap::new(), body).await;
        expected.push((kind.to_owned(), waiting));
        expected.sort();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let workers = streams::live_workers(&js).await.unwrap_or_default();
            let mut held: Vec<(String, bool)> = workers
                .iter()
                .flat_map(|w| &w.running)
                .filter(|j| j.id == "pair")
                .map(|j| (j.kind.clone(), j.waiting))
                .collect();
            held.sort();
            if held == expected {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "held: {held:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(cluster.kiln(&["cancel", "pair"]).status.success());
    for kind in ["matmul", "train_mlp"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let event = loop {
            if let Some(event) = result_on(&js, &format!("results.{kind}.pair")).await {
                break event;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{kind} never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let error = event.error.expect("cancelled");
        assert_eq!(
            error.kind,
            ErrorKind::Cancelled,
            "{kind}: {}",
            error.message
        );
    }
}

/// `kiln status` of an id answered as one kind also shows it running as another (two jobs
/// under one id): it said only "succeeded" while the other ran on for seconds.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_an_id_running_as_another_kind_after_one_answered() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let js = jetstream::new(cluster.client().await);
    let body = br#"{"id":"dual","params":{"epochs":10000}}"#.to_vec();
    publish(&js, "jobs.cpu.train_mlp", HeaderMap::new(), body).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !streams::live_workers(&js)
        .await
        .unwrap_or_default()
        .iter()
        .flat_map(|w| &w.running)
        .any(|j| j.id == "dual" && !j.waiting)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the training never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = br#"{"id":"dual","params":{"len":3}}"#.to_vec();
    publish(&js, "jobs.cpu.vector_add", HeaderMap::new(), body).await;
    while result_on(&js, "results.vector_add.dual").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "vector_add never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = cluster.kiln(&["status", "dual"]);
    assert!(out.status.success());
    let said = stdout(&out);
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines[0].starts_with("dual: succeeded"), "{said}");
    assert!(
        lines[1].starts_with("dual: running (train_mlp) on cpu"),
        "{said}"
    );
    let out = cluster.kiln(&["status", "dual", "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["state"], "finished", "{shown}");
    assert_eq!(shown["also_running"]["state"], "running", "{shown}");
    assert_eq!(shown["also_running"]["kind"], "train_mlp", "{shown}");
    assert!(cluster.kiln(&["cancel", "dual"]).status.success());

    // The same kind sent again under an answered id: shown, and cancelled (cancel said the
    // id was finished and marked nothing, and it ran on for its whole length).
    let quick = br#"{"id":"again","params":{"epochs":1}}"#.to_vec();
    publish(&js, "jobs.cpu.train_mlp", HeaderMap::new(), quick).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while result_on(&js, "results.train_mlp.again").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let long = br#"{"id":"again","params":{"epochs":10000}}"#.to_vec();
    publish(&js, "jobs.cpu.train_mlp", HeaderMap::new(), long).await;
    let held = async |id: &str| {
        streams::live_workers(&js)
            .await
            .unwrap_or_default()
            .iter()
            .flat_map(|w| &w.running)
            .any(|j| j.id == id && !j.waiting)
    };
    while !held("again").await {
        assert!(std::time::Instant::now() < deadline, "the second never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said = stdout(&cluster.kiln(&["status", "again"]));
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines[0].starts_with("again: succeeded"), "{said}");
    assert!(
        lines[1].starts_with("again: running (train_mlp) on cpu"),
        "{said}"
    );
    assert!(lines[2].contains("sent again under its id"), "{said}");
    assert!(cluster.kiln(&["cancel", "again"]).status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while held("again").await {
        assert!(
            std::time::Instant::now() < deadline,
            "the second was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A job just answered stays in its worker's heartbeat until the next one (up to 2 s):
    // that is no job sent again, nor one `kiln cancel` should mark.
    let long = br#"{"id":"stale","params":{"epochs":10000}}"#.to_vec();
    publish(&js, "jobs.cpu.train_mlp", HeaderMap::new(), long).await;
    while !held("stale").await {
        assert!(std::time::Instant::now() < deadline, "it never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.kiln(&["cancel", "stale"]).status.success());
    while result_on(&js, "results.train_mlp.stale").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "it was never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let said = stdout(&cluster.kiln(&["status", "stale"]));
    assert_eq!(said.lines().count(), 1, "{said}");
    let out = cluster.kiln(&["cancel", "stale"]);
    assert!(stdout(&out).contains("not marked"), "{out:?}");
}

/// A job recorded as queued whose message is gone from KILN_JOBS (an operator purged the
/// stream) is shown as such by `kiln status <id>`, not as queued for ever: `gone` in its JSON
/// too, and a resubmission under its id, which the server drops as a duplicate, is not waited
/// for.
#[tokio::test(flavor = "multi_thread")]
async fn status_says_when_a_queued_job_is_no_longer_in_the_stream() {
    let cluster = Cluster::new();
    cluster.init().await;
    let submit = [
        "submit",
        "vector_add",
        "-d",
        "cpu",
        "-p",
        "len=8",
        "--id",
        "purged-1",
    ];
    assert!(cluster.kiln(&submit).status.success());
    let status = |cluster: &Cluster| {
        String::from_utf8_lossy(&cluster.kiln(&["status", "purged-1"]).stdout).into_owned()
    };
    let before = status(&cluster);
    assert!(
        before.starts_with("purged-1: queued on jobs.cpu.vector_add"),
        "{before}"
    );
    assert!(!before.contains("no longer there"), "{before}");
    let js = jetstream::new(cluster.client().await);
    js.get_stream(streams::STREAM_JOBS)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let after = status(&cluster);
    assert!(
        after.starts_with(
            "purged-1: gone: no longer in KILN_JOBS and never answered: the stream was purged"
        ),
        "{after}"
    );
    assert!(
        after.contains("submit it again under another id"),
        "{after}"
    );
    // Scripts read the same from the JSON form (it said `queued`).
    let json = cluster.kiln(&["status", "purged-1", "-o", "json"]);
    assert!(json.status.success());
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["state"], "gone", "{json}");
    assert_eq!(json["record"]["phase"], "queued", "{json}");
    assert!(
        json["reason"].as_str().unwrap().contains("never answered"),
        "{json}"
    );
    // The same job again, inside the duplicate window: dropped, and not waited for.
    let started = std::time::Instant::now();
    let again = cluster.kiln(&[&submit[..], &["--wait"]].concat());
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("the earlier job purged-1 will not be answered: no longer in KILN_JOBS"),
        "{stderr}"
    );
    assert!(!stderr.contains("did not arrive"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it waited {:?}",
        started.elapsed()
    );
}

/// A queued job deleted from KILN_JOBS is gone though another job of its kind waits on its
/// subject (that one hid it: `kiln status` said queued, and `--wait` waited out its timeout).
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_job_is_gone_while_others_of_its_kind_wait() {
    let cluster = Cluster::new();
    cluster.init().await;
    for id in ["kept-1", "deleted-1"] {
        let submit = [
            "submit",
            "vector_add",
            "-d",
            "cpu",
            "-p",
            "len=8",
            "--id",
            id,
        ];
        assert!(cluster.kiln(&submit).status.success());
    }
    let status = |id: &str| {
        let out = cluster.kiln(&["status", id, "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let record = status("deleted-1");
    assert_eq!(record["state"], "queued", "{record}");
    let seq = record["record"]["job_seq"]
        .as_u64()
        .expect("the record names its sequence");
    let js = jetstream::new(cluster.client().await);
    let jobs = js.get_stream(streams::STREAM_JOBS).await.unwrap();
    let message = jobs.get_raw_message(seq).await.unwrap();
    assert_eq!(
        message.headers.get("Nats-Msg-Id").unwrap().as_str(),
        "deleted-1"
    );
    jobs.delete_message(seq).await.unwrap();
    let after = status("deleted-1");
    assert_eq!(after["state"], "gone", "{after}");
    assert!(
        after["reason"].as_str().unwrap().contains("never answered"),
        "{after}"
    );
    assert_eq!(status("kept-1")["state"], "queued");
}

/// `kiln submit --wait` on a results stream too small for the burst's results: some are
/// dropped for room before the submitter looks them up. They were waited for for ever; those
/// heard of are taken as heard.
#[tokio::test(flavor = "multi_thread")]
async fn wait_ends_when_results_are_dropped_for_room_before_they_are_read() {
    let mut cluster = Cluster::new();
    common::assert_success(&cluster.kiln(&["init", "--results-max-bytes", "1MiB"]));
    cluster.cpu_worker();
    let submit = [
        "submit",
        "vector_add",
        "-p",
        "len=1000",
        "--count",
        "3000",
        "--wait",
        "--wait-timeout",
        "2m",
    ];
    let started = std::time::Instant::now();
    let out = cluster.kiln(&submit);
    common::assert_success(&out);
    assert_eq!(stdout(&out).lines().count(), 3000);
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "{:?}",
        started.elapsed()
    );
}

/// A job answered long ago whose result `KILN_RESULTS` has since dropped to stay within its
/// size limit is not "queued": `kiln status` and `kiln result` say its result was most likely
/// dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_result_was_dropped_for_room_is_gone_not_queued() {
    let mut cluster = Cluster::new();
    common::assert_success(&cluster.kiln(&["init", "--results-max-bytes", "1MiB"]));
    cluster.cpu_worker();
    let submit = [
        "submit",
        "vector_add",
        "-d",
        "cpu",
        "-p",
        "len=8",
        "--id",
        "early-1",
        "--wait",
    ];
    let first = cluster.kiln(&submit);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // Later results, 1.5 MiB of them: the oldest, early-1's, makes room.
    let js = jetstream::new(cluster.client().await);
    for i in 0..24 {
        let body = format!(r#"{{"filler": "{}"}}"#, "x".repeat(64 * 1024));
        publish(
            &js,
            &format!("results.vector_add.filler-{i}"),
            HeaderMap::new(),
            body.into_bytes(),
        )
        .await;
    }
    let status = cluster.kiln(&["status", "early-1"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.starts_with(
            "early-1: gone: no longer in KILN_JOBS and no result stored: most likely it was \
             answered and its result has since been dropped from KILN_RESULTS"
        ),
        "{text}"
    );
    assert!(text.contains("the oldest kept is from"), "{text}");
    let result = cluster.kiln(&["result", "early-1"]);
    assert_eq!(result.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("most likely it was answered"), "{stderr}");
}

/// One id as two kinds, one answered and the other still queued (its record, as `kiln
/// submit` writes it once the duplicate window has passed, names the other kind): `kiln
/// cancel` marks it. Before, it said the id was finished and marked nothing.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_marks_the_queued_kind_of_an_id_whose_other_kind_finished() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let submit = [
        "submit", "matmul", "-d", "cpu", "-p", "n=8", "--id", "twin3", "--wait",
    ];
    assert!(cluster.kiln(&submit).status.success());
    // The other kind waits for a GPU worker that is not there, recorded as queued.
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let body = br#"{"id":"twin3","params":{"epochs":5}}"#.to_vec();
    publish(&js, "jobs.gpu.train_mlp", HeaderMap::new(), body).await;
    let record = kiln_proto::JobState::queued("train_mlp", kiln_proto::DeviceClass::Gpu);
    js.publish(
        kiln_proto::state_subject("twin3"),
        serde_json::to_vec(&record).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let out = cluster.kiln(&["cancel", "twin3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("twin3: queued: marked"), "{stdout}");
    let marks = js.get_key_value(kiln_proto::BUCKET_CANCEL).await.unwrap();
    assert!(
        marks
            .get(kiln_proto::job_key("twin3"))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_inline_job_is_decoded_off_the_async_thread_and_answered_in_full() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());

    // 4,096 elements a side, written long: a body of about 100 KB, which the worker decodes
    // on its blocking pool (small bodies are decoded where they arrive), and an output small
    // enough to come back inline.
    let a: Vec<f32> = (0..4096).map(|i| i as f32 * 0.123_456_7).collect();
    let b: Vec<f32> = (0..4096).map(|i| 1.0 - i as f32 * 0.012_345_6).collect();
    let body = serde_json::json!({"id": "long-1", "params": {"a": a, "b": b}}).to_string();
    assert!(body.len() > 64 * 1024, "{} bytes", body.len());
    publish(
        &js,
        "jobs.cpu.vector_add",
        HeaderMap::new(),
        body.into_bytes(),
    )
    .await;
    // And a small one behind it, decoded on the async thread.
    let small = br#"{"id":"short-1","params":{"a":[1,2],"b":[3,4]}}"#.to_vec();
    publish(&js, "jobs.cpu.vector_add", HeaderMap::new(), small).await;

    let results = wait_for_results(&client, &["long-1", "short-1"], Duration::from_secs(60)).await;
    let long = &results["long-1"];
    assert_eq!(long.status, Status::Succeeded, "{long:?}");
    let c: Vec<f32> = serde_json::from_value(long.output["c"].clone()).unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(c, want);
    assert_eq!(
        results["short-1"].output["c"],
        serde_json::json!([4.0, 6.0])
    );
}

/// A dead letter that cannot be replayed (its body was dropped) is removed with `kiln dlq rm`,
/// which the replay's refusal names; before, it stayed for the queue's 30 days, and every
/// `kiln dlq replay --all` exited 1 for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_that_cannot_be_replayed_is_removed_with_dlq_rm() {
    let cluster = Cluster::new();
    cluster.init().await;
    let js = jetstream::new(cluster.client().await);
    let mut headers = HeaderMap::new();
    headers.insert("Kiln-Job-Id", "bodiless-1");
    headers.insert("Kiln-Dlq-Reason", "internal: gave up after 5 deliveries");
    headers.insert("Kiln-Dlq-Subject", "jobs.cpu.vector_add");
    headers.insert(
        "Kiln-Dlq-Body",
        "dropped: 1048000 bytes, over the server's max_payload",
    );
    let letter = publish(&js, "dlq.vector_add", headers, Vec::new()).await;

    let replay = cluster.kiln(&["dlq", "replay", "--all"]);
    assert_eq!(replay.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(stderr.contains("holds no job to replay"), "{stderr}");
    assert!(
        stderr.contains(&format!("`kiln dlq rm {letter}` removes it")),
        "{stderr}"
    );

    let rm = cluster.kiln(&["dlq", "rm", &letter.to_string()]);
    common::assert_success(&rm);
    assert_eq!(stdout(&rm).trim(), format!("removed {letter} (bodiless-1)"));
    let list = cluster.kiln(&["dlq", "list", "-o", "json"]);
    assert_eq!(stdout(&list).trim(), "[]");
    common::assert_success(&cluster.kiln(&["dlq", "replay", "--all"]));
    // Gone already: not found.
    let again = cluster.kiln(&["dlq", "rm", &letter.to_string()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains(&format!(
        "no dead letter with sequence {letter} in KILN_DLQ"
    )),);
}

/// One message with `Nats-Rollup: all`, which anyone allowed to write one key may send,
/// wiped a whole bucket: every cancel mark (a job cancelled while no worker was up then
/// ran) or every job state. kiln's buckets refuse rollups.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollup_cannot_wipe_the_cancel_marks_or_the_job_states() {
    let cluster = Cluster::new();
    cluster.init().await;
    common::assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--id",
        "kept-1",
    ]));
    common::assert_success(&cluster.kiln(&["cancel", "kept-1"]));
    let js = jetstream::new(cluster.client().await);
    for bucket in ["KILN_CANCEL", "KILN_STATE"] {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "all");
        let stored = js
            .publish_with_headers(format!("$KV.{bucket}.zz"), headers, "x".into())
            .await
            .unwrap()
            .await;
        let error = stored.expect_err("a rollup is refused").to_string();
        assert!(error.contains("rollup"), "{bucket}: {error}");
    }
    let status = common::stdout(&cluster.kiln(&["status", "kept-1"]));
    assert!(
        status.contains("kept-1: cancel requested; queued on jobs.cpu.vector_add"),
        "{status}"
    );
}
