//! The pipeline end to end: real nats-server, real `kiln worker` and `kiln aggregator`
//! processes, jobs from `kiln submit` and from plain NATS publishes.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use common::{Cluster, assert_success, snapshot, stdout, wait_for_metrics, wait_for_results};
use kiln_proto::{ErrorKind, ResultEvent, Status};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn submit_wait(cluster: &Cluster, args: &[&str]) -> ResultEvent {
    let mut all = vec!["submit"];
    all.extend_from_slice(args);
    all.push("--wait");
    let out = cluster.kiln(&all);
    assert_success(&out);
    serde_json::from_str(&stdout(&out)).expect("--wait prints the result event as JSON")
}

fn floats(value: &serde_json::Value) -> Vec<f64> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .flat_map(|v| match v.as_array() {
            Some(inner) => inner
                .iter()
                .flat_map(|x| match x.as_array() {
                    Some(deeper) => deeper
                        .iter()
                        .map(|d| d.as_f64().unwrap())
                        .collect::<Vec<_>>(),
                    None => vec![x.as_f64().unwrap()],
                })
                .collect::<Vec<_>>(),
            None => vec![v.as_f64().unwrap()],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_submitted_with_kiln_submit_yields_a_correct_result() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();

    let add = submit_wait(
        &cluster,
        &[
            "vector_add",
            "--params",
            r#"{"a":[1,2,3.5],"b":[10,20,-3.5]}"#,
        ],
    );
    assert_eq!(add.status, Status::Succeeded, "{add:?}");
    assert_eq!(add.kind, "vector_add");
    assert_eq!(add.device, "cpu");
    assert_eq!(add.worker, "test-worker");
    assert_eq!(add.attempt, 1);
    assert_eq!(floats(&add.output["c"]), vec![11.0, 22.0, 0.0]);
    assert!(add.total_ms >= add.compute_ms && add.total_ms >= add.queue_ms);

    let mm = submit_wait(
        &cluster,
        &[
            "matmul",
            "--params",
            r#"{"a":[[1,2],[3,4]],"b":[[5,6],[7,8]]}"#,
        ],
    );
    assert_eq!(mm.status, Status::Succeeded, "{mm:?}");
    assert_eq!(mm.output["shape"], json!([2, 2]));
    assert_eq!(floats(&mm.output["c"]), vec![19.0, 22.0, 43.0, 50.0]);

    // Generated inputs: a 64×32 by 32×48 product; the checksum must match the same job run
    // directly through the kernel library (same seed → same inputs).
    let generated = submit_wait(
        &cluster,
        &[
            "matmul", "-p", "m=64", "-p", "k=32", "-p", "n=48", "--seed", "7",
        ],
    );
    assert_eq!(generated.status, Status::Succeeded, "{generated:?}");
    assert_eq!(generated.output["shape"], json!([64, 48]));
    let local = kiln_kernels::find("matmul")
        .unwrap()
        .decode(
            kiln_proto::Codec::Json,
            br#"{"params":{"m":64,"k":32,"n":48},"seed":7}"#,
            &kiln_proto::Limits::default(),
        )
        .unwrap()
        .run(
            &kiln_kernels::ComputeDevice::Cpu,
            &kiln_kernels::NoCheckpoint,
        )
        .unwrap();
    let remote_sum = generated.output["summary"]["checksum"].as_f64().unwrap();
    let local_sum = local["summary"]["checksum"].as_f64().unwrap();
    assert!(
        (remote_sum - local_sum).abs() < 1e-6,
        "{remote_sum} vs {local_sum}"
    );

    // A 3×3 box filter over a constant image: the interior stays constant, corners see 4/9.
    let image = json!([[
        [9.0, 9.0, 9.0, 9.0],
        [9.0, 9.0, 9.0, 9.0],
        [9.0, 9.0, 9.0, 9.0]
    ]]);
    let params = json!({"image": image, "filter": "box"}).to_string();
    let conv = submit_wait(&cluster, &["conv2d", "--params", &params]);
    assert_eq!(conv.status, Status::Succeeded, "{conv:?}");
    assert_eq!(conv.output["shape"], json!([1, 1, 3, 4]));
    let pixels = floats(&conv.output["image"]);
    assert_eq!(pixels.len(), 12);
    assert!((pixels[0] - 4.0).abs() < 1e-5, "corner {}", pixels[0]);
    assert!((pixels[5] - 9.0).abs() < 1e-5, "interior {}", pixels[5]);

    let train = submit_wait(
        &cluster,
        &["train_mlp", "-p", "epochs=20", "-p", "samples=1024"],
    );
    assert_eq!(train.status, Status::Succeeded, "{train:?}");
    let epochs = train.output["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 20);
    let first_loss = epochs[0]["loss"].as_f64().unwrap();
    let last_loss = train.output["final_loss"].as_f64().unwrap();
    assert!(last_loss < first_loss, "loss {first_loss} -> {last_loss}");
    assert!(
        train.output["final_accuracy"].as_f64().unwrap() >= 0.8,
        "{:?}",
        train.output
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_json_published_without_kiln_is_processed() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // Exactly what `nats pub jobs.cpu.vector_add '{...}'` sends: a bare JSON body, no headers.
    js.publish(
        "jobs.cpu.vector_add",
        r#"{"id":"raw-1","params":{"a":[1,2],"b":[3,4]}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // No id at all: the job goes by its stream sequence.
    let ack = js
        .publish("jobs.cpu.matmul", r#"{"params":{"n":8}}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let seq_id = format!("seq-{}", ack.sequence);
    let results = wait_for_results(&client, &["raw-1", &seq_id], WAIT).await;
    assert_eq!(results["raw-1"].status, Status::Succeeded);
    assert_eq!(floats(&results["raw-1"].output["c"]), vec![4.0, 6.0]);
    assert_eq!(results["raw-1"].output["engine"], "burn-ndarray");
    assert_eq!(
        results[&seq_id].status,
        Status::Succeeded,
        "{:?}",
        results[&seq_id]
    );
    assert_eq!(results[&seq_id].output["shape"], json!([8, 8]));
}

/// A job answered before it reached a device is said to be so, not "on none".
#[tokio::test(flavor = "multi_thread")]
async fn status_of_a_job_refused_before_computing_says_so() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let body = r#"{"id":"refused-1","params":{"len":-1}}"#;
    js.publish("jobs.cpu.vector_add", body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let results = wait_for_results(&client, &["refused-1"], WAIT).await;
    assert_eq!(results["refused-1"].device, "none");
    let status = stdout(&cluster.kiln(&["status", "refused-1"]));
    assert!(
        status.starts_with("refused-1: failed (invalid_input: "),
        "{status}"
    );
    assert!(
        status.contains(" before computing, by test-worker (attempt 1) in "),
        "{status}"
    );
}

/// A job sent with no id goes by `seq-<stream sequence>`. A `KILN_JOBS` deleted and made
/// again (as the docs advise for a stream made wrong) counted from 1 again: its jobs took the
/// ids of earlier ones whose results `KILN_RESULTS` keeps, and were taken for answered, their
/// own results dropped and the earlier ones shown as theirs.
#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_stream_made_again_gives_jobs_sent_without_an_id_ids_of_their_own() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let send = async |a: f32| {
        let body = format!(r#"{{"params":{{"a":[{a}],"b":[{a}]}}}}"#);
        let ack = js.publish("jobs.cpu.vector_add", body.into()).await;
        format!("seq-{}", ack.unwrap().await.unwrap().sequence)
    };
    let first = send(1.0).await;
    let results = wait_for_results(&client, &[&first], WAIT).await;
    assert_eq!(floats(&results[&first].output["c"]), vec![2.0]);

    cluster.child("worker").kill().unwrap();
    js.delete_stream("KILN_JOBS").await.unwrap();
    assert_success(&cluster.kiln(&["init"]));
    cluster.spawn("worker-2", &["worker", "--device", "cpu", "--name", "w2"]);
    let mut again = Vec::new();
    for a in [5.0, 6.0] {
        again.push(send(a).await);
    }
    assert!(!again.contains(&first), "{first} given again: {again:?}");
    let ids: Vec<&str> = again.iter().map(String::as_str).collect();
    let results = wait_for_results(&client, &ids, WAIT).await;
    assert_eq!(floats(&results[&again[0]].output["c"]), vec![10.0]);
    assert_eq!(floats(&results[&again[1]].output["c"]), vec![12.0]);
    // The earlier job's answer stands.
    let results = wait_for_results(&client, &[&first], WAIT).await;
    assert_eq!(floats(&results[&first].output["c"]), vec![2.0]);
}

/// kiln publishes the job id as `Nats-Msg-Id`, so an id used again within the duplicate
/// window for another kind is dropped by the server: `kiln submit` says so and fails at once,
/// with or without `--wait`, instead of waiting for a result that cannot come.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_used_again_for_another_kind_fails_at_once() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let first = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--id",
        "twokinds",
        "--wait",
    ]);
    assert_success(&first);
    for wait in [true, false] {
        let mut args = vec!["submit", "matmul", "-p", "n=4", "--id", "twokinds"];
        if wait {
            args.extend(["--wait", "--wait-timeout", "120s"]);
        }
        let started = std::time::Instant::now();
        let again = cluster.kiln(&args);
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert_eq!(again.status.code(), Some(1), "wait {wait}: {stderr}");
        assert!(
            again.stdout.is_empty() || wait,
            "no id for a job that will not run"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "wait {wait}: took {:?}",
            started.elapsed()
        );
        assert!(
            stderr.contains("job id twokinds was submitted as a vector_add job")
                && stderr.contains("dropped this matmul job")
                && stderr.contains("submit it under another id"),
            "wait {wait}: {stderr}"
        );
        assert!(!stderr.contains("did not arrive"), "wait {wait}: {stderr}");
    }
    // The same kind again is still a resubmission that answers with the earlier result.
    let same = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--id",
        "twokinds",
        "--wait",
    ]);
    assert_success(&same);
    // An earlier job with no result yet (no GPU worker: it waits) is known by its record.
    let queued = cluster.kiln(&[
        "submit", "matmul", "-p", "n=4", "-d", "gpu", "--id", "waiting",
    ]);
    assert_success(&queued);
    let again = cluster.kiln(&["submit", "vector_add", "-p", "len=4", "--id", "waiting"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("job id waiting was submitted as a matmul job"),
        "{stderr}"
    );
}

/// An id submitted again within the duplicate window with other parameters is another job,
/// which the server drops: `kiln submit` says so, writes no `--output` and fails, rather than
/// hand over the earlier job's result as this one's (it wrote `[[2]]` for `[[3]]·[[4]]` and
/// exited 0). The same job sent again is still answered with its result; so is the same file
/// sent again, which each submission stores under a name of its own.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_used_again_with_other_parameters_fails_and_writes_nothing() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let matmul = |a: &str, b: &str, path: &str| {
        let (a, b) = (format!("a={a}"), format!("b={b}"));
        let args = ["submit", "matmul", "-p", &a, "-p", &b, "--id", "dupout-1"];
        cluster.kiln(&[&args[..], &["--output", path]].concat())
    };
    assert_success(&matmul("[[1]]", "[[2]]", &out("x.npy")));
    let other = matmul("[[3]]", "[[4]]", &out("y.npy"));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("job id dupout-1 was submitted within the last 10 min with other parameters")
            && stderr.contains("submit it under another id"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("y.npy").exists(),
        "the earlier job's output is not this one's"
    );
    // The same job again: its result, written.
    assert_success(&matmul("[[1]]", "[[2]]", &out("z.npy")));
    assert_eq!(
        std::fs::read(dir.path().join("z.npy")).unwrap(),
        std::fs::read(dir.path().join("x.npy")).unwrap()
    );
    // The same file twice is the same job; another seed is not.
    let input = out("a.npy");
    std::fs::copy(dir.path().join("x.npy"), &input).unwrap();
    let with_file = |extra: &[&str]| {
        let (a, b) = (format!("a=@{input}"), format!("b=@{input}"));
        let args = [
            "submit",
            "vector_add",
            "--input",
            &a,
            "--input",
            &b,
            "--id",
            "dupfile-1",
        ];
        cluster.kiln(&[&args[..], extra, &["--wait"]].concat())
    };
    assert_success(&with_file(&[]));
    assert_success(&with_file(&[]));
    let seeded = with_file(&["--seed", "7"]);
    assert_eq!(
        seeded.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resubmitted_job_id_runs_once_and_is_counted_once() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.aggregator();
    let client = cluster.client().await;

    let first = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=16",
        "--id",
        "same-id",
        "--wait",
    ]);
    assert_success(&first);
    // Same id again, by kiln and by a raw publish with the id as Nats-Msg-Id.
    let again = cluster.kiln(&["submit", "vector_add", "-p", "len=16", "--id", "same-id"]);
    assert_success(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already submitted"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let js = jetstream::new(client.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "same-id");
    let ack = js
        .publish_with_headers(
            "jobs.cpu.vector_add",
            headers,
            r#"{"params":{"len":16}}"#.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate, "the server must drop the resubmission");
    // A marker job behind them: once it is done, anything queued before it is too.
    let marker = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--id",
        "marker",
        "--wait",
    ]);
    assert_success(&marker);

    let (stored, results) = common::stored_results(&client).await;
    assert_eq!(
        stored, 2,
        "one result for same-id and one for the marker: {results:#?}"
    );
    let snapshots = wait_for_metrics(&client, WAIT, |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs == 2)
    })
    .await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!((m.jobs, m.succeeded, m.failed), (2, 2, 0));
}

/// A collector reads its results off the subscription as they come, while its caller is
/// busy elsewhere (publishing the jobs), and looks them up several at once. async-nats holds
/// a subscription's messages unread up to a capacity (65,536 by default, 512 here: what one read of the socket brings fits) and drops
/// the rest: `kiln submit -n 300000 --wait` read nothing while it published, then one result
/// per lookup's round trip, and said 223,224 stored results never came.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_busy_elsewhere_misses_no_results() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(512)
        .connect(cluster.server.url())
        .await
        .unwrap();
    // Past 1,000 ids: one subscription to every vector_add result.
    let ids: Vec<String> = (0..1500).map(|i| format!("burst-{i}")).collect();
    let mut collector = kiln_client::ResultCollector::subscribe(&client, Some("vector_add"), &ids)
        .await
        .unwrap();
    let vector_add = kiln_kernels::find("vector_add").unwrap();
    let jobs = ids.iter().map(|id| {
        kiln_client::JobSpec::new(
            vector_add,
            kiln_proto::DeviceClass::Cpu,
            json!({"len": 8}),
            id.clone(),
            0,
            None,
            kiln_proto::Codec::Json,
        )
        .unwrap()
    });
    let js = jetstream::new(client.clone());
    kiln_client::publish_all(&js, jobs, false, || {})
        .await
        .unwrap();
    // Every result stored before the collector is asked for them.
    let mut stream = js.get_stream("KILN_RESULTS").await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while stream.info().await.unwrap().state.messages < 1500 {
        assert!(std::time::Instant::now() < deadline, "{}", cluster.report());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = std::time::Instant::now();
    let waiting = ids.iter().cloned().collect();
    let got = collector
        .collect(waiting, Duration::from_secs(60), |_| {})
        .await;
    assert_eq!(got.len(), 1500);
    assert!(got.values().all(|event| event.status == Status::Succeeded));
    // Heard, not found by the last look after the wait's 60 s.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// A job of a kind its workers do not run (sent by a `kiln` newer than they are) is answered
/// on `results.unknown.<id>`, its error naming the kind: a collector takes that answer, where
/// it waited for one on `results.<kind>.<id>` that never came, and said it never came. Another
/// kind's job answered `unknown` under the same id is not this job's answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_takes_the_answer_of_workers_that_do_not_run_the_kind() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // Another kind's job under "newer-2", answered first.
    js.publish("jobs.cpu.sort", r#"{"id":"newer-2"}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let other = common::wait_for_results(&client, &["newer-2"], WAIT).await;
    assert_eq!(other["newer-2"].kind, "unknown");
    let ids = ["newer-1".to_owned(), "newer-2".to_owned()];
    let mut collector = kiln_client::ResultCollector::subscribe(&client, Some("fft"), &ids)
        .await
        .unwrap();
    for id in &ids {
        let body = format!(r#"{{"id":"{id}","params":{{"n":8}}}}"#);
        js.publish("jobs.cpu.fft", body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let waiting = ids.iter().cloned().collect();
    let got = collector
        .collect(waiting, Duration::from_secs(30), |_| {})
        .await;
    let answer = &got["newer-1"];
    assert_eq!(
        (answer.kind.as_str(), answer.status),
        ("unknown", Status::Failed)
    );
    let error = answer.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    assert!(error.message.contains(r#""fft""#), "{error:?}");
    // newer-2's fft job ran and its answer was refused (the id kept sort's): the one heard
    // is all it gets, and sort's stored answer is not taken for it.
    let heard = &got["newer-2"];
    assert!(
        heard.error.as_ref().unwrap().message.contains(r#""fft""#),
        "{heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_submitter_gets_the_stored_answer_not_a_refused_one() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let first = submit_wait(
        &cluster,
        &["vector_add", "--id", "twice", "-p", "a=[1]", "-p", "b=[1]"],
    );
    assert_eq!(floats(&first.output["c"]), [2.0]);

    // The id again under another message id (as after the duplicate window): it runs, its
    // result is refused, and a subscriber still hears of it; the collector answers with the
    // stored one.
    let mut collector =
        kiln_client::ResultCollector::subscribe(&client, Some("vector_add"), &["twice".into()])
            .await
            .unwrap();
    let js = jetstream::new(client.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "twice-again");
    js.publish_with_headers(
        "jobs.cpu.vector_add",
        headers,
        r#"{"id":"twice","params":{"a":[9],"b":[9]}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let ids = std::collections::HashSet::from(["twice".to_owned()]);
    let got = collector.collect(ids, WAIT, |_| {}).await;
    assert_eq!(floats(&got["twice"].output["c"]), [2.0], "{got:?}");
    assert!(collector.answered_before().contains("twice"));

    // `kiln submit --wait` of an id a job sent without a message id answered: this job runs,
    // and the command says the answer is the earlier job's, not its own (it printed the
    // earlier answer as its own, exit 0), and fails.
    js.publish(
        "jobs.cpu.vector_add",
        r#"{"id":"raw-first","params":{"a":[1],"b":[1]}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_for_results(&client, &["raw-first"], WAIT).await;
    let again = cluster.kiln(&[
        "submit",
        "vector_add",
        "--id",
        "raw-first",
        "-p",
        "a=[5]",
        "-p",
        "b=[5]",
        "--wait",
    ]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 job id(s) already had an answer, from an earlier job under the same id"),
        "{stderr}"
    );
    let printed: ResultEvent = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(floats(&printed.output["c"]), [2.0]);
}

/// A `--wait-timeout` past what a clock can add waits as long as it takes: it panicked once
/// the jobs were published.
#[tokio::test(flavor = "multi_thread")]
async fn a_wait_timeout_past_the_clocks_range_waits_for_the_result() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--wait",
        "--wait-timeout-s",
        "18446744073709551615",
    ]);
    assert_success(&out);
}

/// An answer `--wait` finds only by looking it up (its own result refused unheard during a
/// reconnection, or never published by a redelivery that found the answer stored), of a job
/// enqueued days before this one, is said to be the earlier job's: it was printed and written
/// as this job's, exit 0. Here no worker runs: the wait ends, and the last look finds it.
#[tokio::test(flavor = "multi_thread")]
async fn an_earlier_answer_found_only_by_lookup_is_said_to_be_the_earlier_jobs() {
    let cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    let long_ago = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    let earlier = ResultEvent {
        id: "old-answer".into(),
        kind: "vector_add".into(),
        status: Status::Succeeded,
        device: "cpu".into(),
        class: kiln_proto::DeviceClass::Cpu,
        worker: "w".into(),
        attempt: 1,
        enqueued_at: long_ago,
        started_at: long_ago,
        finished_at: long_ago,
        queue_ms: 0.0,
        compute_ms: 0.0,
        total_ms: 0.0,
        output: json!({"c": [2.0]}),
        error: None,
        flops: 1.0,
        routing: None,
        replay: 0,
    };
    let js = jetstream::new(client.clone());
    js.publish(
        "results.vector_add.old-answer",
        serde_json::to_vec(&earlier).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "--id",
        "old-answer",
        "-p",
        "a=[5]",
        "-p",
        "b=[5]",
        "--wait",
        "--wait-timeout",
        "2s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 job id(s) already had an answer, from an earlier job under the same id"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_jobs_get_failed_results_and_the_worker_keeps_serving() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.aggregator();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let publish = |subject: &'static str, id: &'static str, body: &'static str| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id);
            js.publish_with_headers(subject, headers, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish("jobs.cpu.matmul", "malformed", r#"{"params":{"n":5"#).await;
    publish("jobs.cpu.fft", "unknown-kind", r#"{"params":{"n":5}}"#).await;
    publish("jobs.cpu.matmul", "oversized", r#"{"params":{"n":100000}}"#).await;
    publish(
        "jobs.cpu.matmul",
        "wrong-type",
        r#"{"params":{"n":"large"}}"#,
    )
    .await;
    publish(
        "jobs.cpu.vector_add",
        "negative",
        r#"{"params":{"len":-3}}"#,
    )
    .await;
    publish(
        "jobs.cpu.vector_add",
        "after",
        r#"{"params":{"a":[1],"b":[2]}}"#,
    )
    .await;

    let ids = [
        "malformed",
        "unknown-kind",
        "oversized",
        "wrong-type",
        "negative",
        "after",
    ];
    let results = wait_for_results(&client, &ids, WAIT).await;
    let expect = |id: &str, kind: ErrorKind, needle: &str| {
        let r = &results[id];
        assert_eq!(r.status, Status::Failed, "{id}: {r:?}");
        let error = r.error.as_ref().unwrap();
        assert_eq!(error.kind, kind, "{id}: {error:?}");
        assert!(
            error.message.contains(needle),
            "{id}: {:?} lacks {needle:?}",
            error.message
        );
    };
    expect("malformed", ErrorKind::InvalidInput, "EOF");
    expect(
        "unknown-kind",
        ErrorKind::InvalidInput,
        "unknown job kind \"fft\"",
    );
    expect("oversized", ErrorKind::TooLarge, "limit");
    // Read, though refused for its size: its result reports the work it asked for (0 is for
    // a job that could not be read, such as "malformed").
    assert_eq!(results["oversized"].flops, 2.0 * 1e15);
    assert_eq!(results["malformed"].flops, 0.0);
    expect("wrong-type", ErrorKind::InvalidInput, "invalid type");
    expect("negative", ErrorKind::InvalidInput, "invalid value");
    assert_eq!(
        results["after"].status,
        Status::Succeeded,
        "the worker keeps serving"
    );
    // Answered under `unknown`: one metrics row and label for every kind no build runs.
    assert_eq!(results["unknown-kind"].kind, "unknown");
    // And looked up as that kind (`--kind unknown` was refused as no kind).
    let looked_up = cluster.kiln(&["result", "unknown-kind", "--kind", "unknown"]);
    common::assert_success(&looked_up);
    let event: ResultEvent = serde_json::from_str(&common::stdout(&looked_up)).unwrap();
    assert_eq!(
        (event.id.as_str(), event.kind.as_str()),
        ("unknown-kind", "unknown")
    );

    let snapshots = wait_for_metrics(&client, WAIT, |s| {
        snapshot(s, "matmul", "cpu").is_some_and(|m| m.jobs == 3)
            && snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs == 2)
            && snapshot(s, "unknown", "cpu").is_some_and(|m| m.jobs == 1)
    })
    .await;
    let matmul = snapshot(&snapshots, "matmul", "cpu").unwrap();
    assert_eq!((matmul.succeeded, matmul.failed), (0, 3));
    assert_eq!(matmul.failures.get("invalid_input"), Some(&2));
    assert_eq!(matmul.failures.get("too_large"), Some(&1));
    let add = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!((add.succeeded, add.failed), (1, 1));

    // `kiln submit` refuses a dtype only GPUs compute for the cpu class before publishing;
    // the same job sent to the cpu class anyway is refused by the worker, naming the way out.
    let out = cluster.kiln(&["submit", "conv2d", "-p", "dtype=bf16", "-d", "cpu"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "conv2d with dtype \"bf16\" runs on GPU workers only (CPU workers compute f32): \
             submit it with --device gpu or --device auto"
        ),
        "{said}"
    );
    publish(
        "jobs.cpu.conv2d",
        "bf16-on-cpu",
        r#"{"params":{"height":8,"width":8,"dtype":"bf16"}}"#,
    )
    .await;
    let refused = &wait_for_results(&client, &["bf16-on-cpu"], WAIT).await["bf16-on-cpu"];
    assert_eq!(refused.status, Status::Failed);
    let error = refused.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    assert_eq!(
        error.message,
        "dtype bf16 needs a GPU worker; submit to jobs.gpu.conv2d or use f32"
    );
    // Refused before it reached the device, as every other validation failure is.
    assert_eq!((refused.device.as_str(), refused.compute_ms), ("none", 0.0));
    // Read, so its work is reported (0 is for a job that could not be read).
    assert!(refused.flops > 0.0, "{refused:?}");
}

/// A CPU worker standing in for the gpu class refuses a GPU-only dtype saying so: it told
/// the job, already on jobs.gpu.conv2d, to be submitted to jobs.gpu.conv2d.
#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_worker_serving_the_gpu_class_refuses_bf16_saying_why() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.spawn(
        "worker",
        &["worker", "--device", "cpu", "--serve-class", "gpu"],
    );
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "bf16-on-stand-in");
    let body = r#"{"params":{"height":8,"width":8,"dtype":"bf16"}}"#;
    js.publish_with_headers("jobs.gpu.conv2d", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let refused = &wait_for_results(&client, &["bf16-on-stand-in"], WAIT).await["bf16-on-stand-in"];
    let error = refused.error.as_ref().expect("refused");
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    assert_eq!(
        error.message,
        "dtype bf16 needs a GPU worker: this worker serves class gpu on a CPU (--serve-class); \
         run one on a GPU for it, or use f32"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregator_counts_match_what_was_submitted() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.aggregator();
    let client = cluster.client().await;
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=256",
        "--count",
        "200",
        "--wait",
    ]);
    assert_success(&out);
    let out = cluster.kiln(&[
        "submit",
        "matmul",
        "-p",
        "n=32",
        "--count",
        "30",
        "--bincode",
        "--wait",
    ]);
    assert_success(&out);
    assert_eq!(stdout(&out).lines().count(), 30, "one result line per job");
    let snapshots = wait_for_metrics(&client, WAIT, |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs >= 200)
            && snapshot(s, "matmul", "cpu").is_some_and(|m| m.jobs >= 30)
    })
    .await;
    let add = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!(
        (add.jobs, add.succeeded, add.failed, add.duplicates),
        (200, 200, 0, 0)
    );
    assert_eq!(add.total_ms.count, 200);
    assert!(add.total_ms.p50 > 0.0 && add.total_ms.p99 >= add.total_ms.p50);
    assert_eq!(add.devices.get("cpu"), Some(&200));
    let matmul = snapshot(&snapshots, "matmul", "cpu").unwrap();
    assert_eq!((matmul.jobs, matmul.succeeded), (30, 30));

    // A restarted aggregator carries on from its snapshots instead of starting over.
    let agg = cluster.child("aggregator");
    agg.kill().unwrap();
    agg.wait().unwrap();
    cluster.aggregator();
    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=8",
        "--count",
        "5",
        "--wait",
    ]));
    let snapshots = wait_for_metrics(&client, WAIT, |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs >= 205)
    })
    .await;
    assert_eq!(snapshot(&snapshots, "vector_add", "cpu").unwrap().jobs, 205);
    // It acks every result it counted: nothing is left pending.
    common::aggregator_caught_up(&client, WAIT).await;
    // Results carry no message id: KILN_RESULTS's one message per subject keeps them once.
    let first = jetstream::new(client.clone())
        .get_stream("KILN_RESULTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    assert!(first.subject.starts_with("results.vector_add."));
    assert!(
        first.headers.get(kiln_proto::HEADER_MSG_ID).is_none(),
        "{:?}",
        first.headers
    );

    let status = cluster.kiln(&["status"]);
    assert_success(&status);
    let text = stdout(&status);
    assert!(text.contains("KILN_JOBS: 0 job(s) queued"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("vector_add") && l.contains(" 205 ")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn result_command_finds_a_finished_job() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--id",
        "find-me",
        "--wait",
    ]));
    let out = cluster.kiln(&["result", "find-me"]);
    assert_success(&out);
    let event: ResultEvent = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(event.id, "find-me");
    assert_eq!(event.status, Status::Succeeded);
    // An id kiln knows nothing of is said to be so (it said "queued, running, or older than
    // the results stream keeps", as for any job without a result); a queued one, queued.
    let missing = cluster.kiln(&["result", "no-such-job"]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("no result for job \"no-such-job\": kiln has no record of it"),
        "{stderr}"
    );
    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "-d",
        "gpu",
        "--id",
        "held",
    ]));
    let queued = cluster.kiln(&["result", "held"]);
    assert_eq!(queued.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&queued.stderr);
    assert!(
        stderr.contains("no result for job \"held\": it is queued"),
        "{stderr}"
    );
    // --kind finds only a result of that kind, and says what the job's result is.
    let same = cluster.kiln(&["result", "find-me", "--kind", "vector_add"]);
    assert_success(&same);
    let other = cluster.kiln(&["result", "find-me", "--kind", "matmul"]);
    assert_eq!(other.status.code(), Some(2), "{other:?}");
    assert!(other.stdout.is_empty(), "{}", stdout(&other));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("no matmul result for job \"find-me\": its result is a vector_add result"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_drains_and_exits_cleanly_on_sigterm() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker_with(&["--drain-timeout-s", "120"]);
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=4", "--wait"]));
    // A job far too long to finish on its own, running when the worker is told to stop.
    let long = [
        "-p",
        "epochs=10000",
        "-p",
        "samples=1024",
        "--id",
        "drained",
    ];
    assert_success(&cluster.kiln(&[&["submit", "train_mlp"][..], &long].concat()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !stdout(&cluster.kiln(&["status", "drained"])).contains("running") {
        assert!(std::time::Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = cluster.child("worker").id().to_string();
    let signalled = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // While it runs the job, its heartbeat says it is draining, and still holds the job:
    // said at once, not at its next beat (up to 2 s later, while the scheduler could route
    // jobs to its class as if it served them).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = stdout(&cluster.kiln(&["workers", "-o", "json"]));
        let workers: serde_json::Value = serde_json::from_str(&listed).unwrap();
        if workers[0]["state"] == "draining" {
            assert_eq!(workers[0]["running"][0]["id"], "drained", "{workers}");
            let entry = jetstream::new(cluster.client().await)
                .get_key_value("KILN_WORKERS")
                .await
                .unwrap()
                .entry("test-worker")
                .await
                .unwrap()
                .expect("its entry");
            let said = entry.created - time::OffsetDateTime::now_utc() + signalled.elapsed();
            assert!(
                said < time::Duration::milliseconds(800),
                "draining said {said} after SIGTERM"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never draining: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stopped by a cancel, the job is answered, and the drained worker exits.
    assert_success(&cluster.kiln(&["cancel", "drained"]));
    let worker = cluster.child("worker");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = worker.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "worker exited with {exit}");
    let client = cluster.client().await;
    let results = wait_for_results(&client, &["drained"], WAIT).await;
    let error = results["drained"].error.clone().expect("it was cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled, "{error}");
    // A clean stop removes the worker's heartbeat entry at once, not after its TTL.
    let js = jetstream::new(client);
    let workers = kiln_proto::streams::live_workers(&js).await.unwrap();
    assert!(workers.is_empty(), "{workers:?}");
}

#[test]
fn cuda_device_without_cuda_is_a_clear_error() {
    if kiln_kernels::cuda_device_count() > 0 {
        eprintln!("skipped: this machine has CUDA");
        return;
    }
    let cluster = Cluster::new();
    let out = cluster.kiln(&["worker", "--device", "cuda"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no CUDA device found"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn demo_runs_to_completion_with_an_embedded_server() {
    // Nothing listens on this port, so the demo starts its own nats-server.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", free.local_addr().unwrap());
    drop(free);
    let out = std::process::Command::new(common::KILN)
        .args(["demo", "--scale", "0.05"])
        .env("NATS_URL", &url)
        .env("NATS_SERVER_BIN", kiln_testkit::nats_server_bin())
        .output()
        .unwrap();
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("started nats-server"), "{stderr}");
    let text = stdout(&out);
    for kind in ["vector_add", "matmul", "conv2d", "train_mlp"] {
        assert!(
            text.lines().any(|l| l.starts_with(kind)),
            "no {kind} row in:\n{text}"
        );
    }
    assert!(text.contains("(0 failed)"), "{text}");
}

/// SIGTERM to the demo alone (as `timeout` or a cancelled CI job sends it) stops its private
/// nats-server (dropping it also removes its store); the server was left running.
#[test]
fn a_demo_stopped_by_a_signal_takes_its_server_with_it() {
    use std::io::{BufRead as _, BufReader};
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", free.local_addr().unwrap());
    drop(free);
    let mut demo = std::process::Command::new(common::KILN)
        .args(["demo", "--scale", "20"])
        .env("NATS_URL", &url)
        .env("NATS_SERVER_BIN", kiln_testkit::nats_server_bin())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(demo.stderr.take().unwrap());
    let mut line = String::new();
    let server = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the demo ended first"
        );
        if let Some((_, rest)) = line.split_once("started nats-server -js on nats://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status();
    let status = demo.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&server).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo's nats-server at {server} still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// On a server that has run jobs before, the demo's table counts this run's jobs only: a
/// second, smaller demo on one server shows as many jobs as it ran (it showed the first run's
/// table, whose count already reached the second's, or both runs' jobs).
#[test]
fn a_second_demo_on_one_server_tables_its_own_jobs() {
    let cluster = Cluster::new();
    for (run, scale) in [(1, "0.1"), (2, "0.05")] {
        let out = std::process::Command::new(common::KILN)
            .args(["demo", "--scale", scale])
            .env("NATS_URL", cluster.server.url())
            .output()
            .unwrap();
        assert_success(&out);
        let text = stdout(&out);
        let finished: u64 = text
            .lines()
            .find_map(|l| l.split_once(" of ").map(|(n, _)| n.trim().parse().ok()))
            .flatten()
            .unwrap_or_else(|| panic!("no \"N of M jobs finished\" line in:\n{text}"));
        let tabled: u64 = ["vector_add", "matmul", "conv2d", "train_mlp"]
            .iter()
            .flat_map(|kind| text.lines().filter(move |l| l.starts_with(kind)))
            .map(|row| {
                row.split_whitespace()
                    .nth(2)
                    .and_then(|jobs| jobs.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no job count in {row:?}"))
            })
            .sum();
        assert!(finished > 0, "run {run}:\n{text}");
        assert_eq!(tabled, finished, "run {run}: the table's jobs\n{text}");
    }
}

/// Set the `workers-cpu` consumer's ack wait to 1 s; the one it had.
async fn ack_wait_of_one_second(stream: &jetstream::stream::Stream) -> Duration {
    let mut config = stream.consumer_info("workers-cpu").await.unwrap().config;
    let before = config.ack_wait;
    config.ack_wait = Duration::from_secs(1);
    stream
        .update_consumer(config)
        .await
        .expect("set a 1 s ack wait");
    before
}

#[tokio::test(flavor = "multi_thread")]
async fn long_job_is_kept_alive_by_progress_acks_and_runs_once() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    // An ack wait of 1 s on the consumer (which the worker follows), and a training job that
    // runs for several seconds: only the in-progress acks keep the server from redelivering it.
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("KILN_JOBS").await.unwrap();
    ack_wait_of_one_second(&stream).await;
    cluster.spawn(
        "worker",
        &["worker", "--device", "cpu", "--name", "slow-worker"],
    );
    let event = submit_wait(
        &cluster,
        &[
            "train_mlp",
            "-p",
            "epochs=1500",
            "-p",
            "samples=1024",
            "--id",
            "long",
        ],
    );
    assert_eq!(event.status, Status::Succeeded, "{event:?}");
    assert!(
        event.compute_ms > 2_000.0,
        "the job must outlast the ack wait: {} ms",
        event.compute_ms
    );
    assert_eq!(event.attempt, 1);
    // The worker acks a millisecond or two after the result is stored: wait for that.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = stream.consumer_info("workers-cpu").await.unwrap();
        if info.num_ack_pending == 0 || std::time::Instant::now() > deadline {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(info.config.ack_wait, Duration::from_secs(1));
    assert_eq!(info.num_redelivered, 0, "no redelivery while the job ran");
    assert_eq!(info.num_ack_pending, 0);
    let (stored, _) = common::stored_results(&client).await;
    assert_eq!(stored, 1);
}

/// The consumer's ack wait cut from 30 s to 1 s while a worker runs (`nats consumer edit`, or
/// an older `kiln init` undoing a worker's `--ack-wait`): the worker's progress acks follow
/// it. They came every 10 s, a third of the wait read at start, so the server delivered the
/// running job again every second, and once its five deliveries were spent it was answered
/// `failed` and dead-lettered while it still computed. `kiln init` leaves the wait as it is.
#[tokio::test(flavor = "multi_thread")]
async fn progress_acks_follow_an_ack_wait_changed_while_the_worker_runs() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    // Serving, with the consumer's 30 s read.
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=4", "--wait"]));
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("KILN_JOBS").await.unwrap();
    assert_eq!(
        ack_wait_of_one_second(&stream).await,
        Duration::from_secs(30)
    );
    let event = submit_wait(
        &cluster,
        &[
            "train_mlp",
            "-p",
            // About 8 s here, more than the 6 s the check below needs: 800 epochs took
            // 5.9 s once on a quiet machine.
            "epochs=1200",
            "-p",
            "samples=1024",
            "--id",
            "long-after-change",
        ],
    );
    assert_eq!(event.status, Status::Succeeded, "{event:?}");
    assert!(
        event.compute_ms > 6_000.0,
        "the job must outlast five ack waits: {} ms",
        event.compute_ms
    );
    assert_eq!(event.attempt, 1);
    let mut dlq = js.get_stream("KILN_DLQ").await.unwrap();
    assert_eq!(
        dlq.info().await.unwrap().state.messages,
        0,
        "nothing dead-lettered"
    );
    let (stored, _) = common::stored_results(&client).await;
    assert_eq!(stored, 2);
    // `kiln init` has no say in the workers' ack wait and deliveries: they stay.
    assert_success(&cluster.kiln(&["init"]));
    let info = stream.consumer_info("workers-cpu").await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(1));
    assert_eq!(info.config.max_deliver, 5);
}

/// A result the server cannot store for a while (here its stream is gone until `kiln init`
/// makes it again) is retried with pauses growing to 5 s, and the job is held meanwhile with
/// progress acks at the ack wait's pace: with a 1 s ack wait, one progress ack per try let
/// the server deliver it again during the longer pauses.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_retried_past_the_ack_wait_keeps_its_job_held() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("KILN_JOBS").await.unwrap();
    ack_wait_of_one_second(&stream).await;
    cluster.cpu_worker();
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=4", "--wait"]));
    js.delete_stream("KILN_RESULTS").await.unwrap();
    // Published as `nats pub` would (`kiln submit` makes missing streams first).
    let job = r#"{"id":"held","params":{"len":4}}"#;
    js.publish("jobs.cpu.vector_add", job.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Tries at 0.2, 0.6, 1.4, 3.0 and 6.2 s: the last pauses are longer than the ack wait.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_success(&cluster.kiln(&["init"]));
    let results = wait_for_results(&client, &["held"], Duration::from_secs(30)).await;
    assert_eq!(results["held"].status, Status::Succeeded);
    assert_eq!(results["held"].attempt, 1);
    // Every delivery takes a consumer sequence: two jobs, two deliveries, none again.
    let info = stream.consumer_info("workers-cpu").await.unwrap();
    assert_eq!(
        info.delivered.consumer_sequence, 2,
        "held by progress acks throughout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_workers_are_listed_and_expire_when_killed() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Its first heartbeat may come while it still warms up: wait for it to serve.
    let workers = loop {
        let workers = kiln_proto::streams::live_workers(&js).await.unwrap();
        if workers.iter().any(|w| w.state == "serving") {
            break workers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never announced itself serving: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(workers.len(), 1);
    // Listing them leaves nothing on the server (a key listing is a consumer that lingers
    // for 30 s: the scheduler's four reads a second piled them up to the account's limit).
    for _ in 0..20 {
        assert_eq!(
            kiln_proto::streams::live_workers(&js).await.unwrap().len(),
            1
        );
    }
    let mut bucket = js.get_stream("KV_KILN_WORKERS").await.unwrap();
    assert_eq!(bucket.info().await.unwrap().state.consumer_count, 0);
    let w = &workers[0];
    assert_eq!(w.name, "test-worker");
    assert_eq!(w.class, kiln_proto::DeviceClass::Cpu);
    assert_eq!((w.device.as_str(), w.backend.as_str()), ("cpu", "ndarray"));
    // OpenBLAS where it loads (./dev provides one everywhere), the direct loop for conv2d.
    let matmul = if kiln_kernels::vendor::openblas::available() {
        "openblas"
    } else {
        "burn-ndarray"
    };
    assert_eq!(
        w.engines,
        [
            ("conv2d", "direct"),
            ("matmul", matmul),
            ("vector_add", "burn-ndarray")
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    );
    assert_eq!(w.state, "serving");
    assert!(w.capacity >= 1);
    let status = stdout(&cluster.kiln(&["status"]));
    assert!(
        status.contains("workers: 1 live")
            && status.contains("test-worker")
            && status.contains(&format!("conv2d=direct matmul={matmul}")),
        "{status}"
    );

    // Killed without a chance to say goodbye: the entry expires after three heartbeats (6 s).
    let worker = cluster.child("worker");
    worker.kill().unwrap();
    worker.wait().unwrap();
    let killed = std::time::Instant::now();
    loop {
        if kiln_proto::streams::live_workers(&js)
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the dead worker is still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "expired before its TTL"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn job_past_its_timeout_fails_with_timeout_at_a_checkpoint() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let out = cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "epochs=400",
        "--timeout-ms",
        "50",
        "--id",
        "slow",
        "--wait",
    ]);
    assert!(
        !out.status.success(),
        "a failed job makes --wait exit non-zero"
    );
    let event: ResultEvent = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(event.status, Status::Failed);
    let error = event.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(
        error.message.contains("timeout_ms of 50: stopped after "),
        "{}",
        error.message
    );
    // Stopped at a step's checkpoint, long before the 400 epochs' last step.
    let (done, total) = error
        .message
        .split_once("while running (")
        .and_then(|(_, rest)| rest.split_once(" steps done"))
        .and_then(|(counts, _)| counts.split_once(" of "))
        .map(|(d, t)| (d.parse::<u64>().unwrap(), t.parse::<u64>().unwrap()))
        .unwrap_or_else(|| panic!("no step counts in {:?}", error.message));
    assert!(total % 400 == 0 && done < total / 4, "{}", error.message);
    // The worker keeps serving.
    let ok = cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--wait"]);
    assert_success(&ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_replayed() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // A dead letter as a worker writes it after a job's last attempt.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "dlq-lost-1");
    headers.insert(
        "Kiln-Dlq-Reason",
        "internal: kernel panicked on cuda:0: boom",
    );
    headers.insert("Kiln-Dlq-Subject", "jobs.cpu.vector_add");
    js.publish_with_headers(
        "dlq.vector_add",
        headers,
        r#"{"id":"lost-1","params":{"a":[1],"b":[2]}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let list = cluster.kiln(&["dlq", "list"]);
    assert_success(&list);
    let text = stdout(&list);
    assert!(
        text.contains("lost-1")
            && text.contains("kernel panicked")
            && text.contains("jobs.cpu.vector_add"),
        "{text}"
    );
    let replay = cluster.kiln(&["dlq", "replay", "--all"]);
    assert_success(&replay);
    assert!(
        stdout(&replay).contains("1 dead letter(s) resubmitted"),
        "{}",
        stdout(&replay)
    );
    let results = wait_for_results(&client, &["lost-1"], WAIT).await;
    assert_eq!(results["lost-1"].status, Status::Succeeded);
    assert_eq!(floats(&results["lost-1"].output["c"]), vec![3.0]);
    assert!(stdout(&cluster.kiln(&["dlq", "list"])).contains("KILN_DLQ is empty"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_job_stream_refuses_submissions_with_a_clear_error() {
    let cluster = Cluster::new();
    // No workers, room for 5 jobs.
    assert_success(&cluster.kiln(&["init", "--max-queued-jobs", "5"]));
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--count",
        "8",
        "--max-queued-jobs",
        "5",
    ]);
    assert!(!out.status.success(), "submitting past the limit must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("KILN_JOBS stream is full"),
        "{stderr}"
    );
    // Which ones got in, so that a script resubmits only the others.
    assert!(stderr.contains("5 of 8 job(s) were stored"), "{stderr}");
    let js = jetstream::new(cluster.client().await);
    let mut stream = js.get_stream("KILN_JOBS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        5,
        "the first five are kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_answers_queued_jobs_and_stops_running_ones_at_a_checkpoint() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    // Queued: no worker yet.
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--id", "queued-1"]));
    assert_success(&cluster.kiln(&["cancel", "queued-1"]));
    // A job a stopping worker handed back, cancelled before it ran again: said so.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "handback-1-handed-1.0");
    headers.insert("Kiln-Job-Id", "handed-1");
    headers.insert("Kiln-Handbacks", "1");
    let body = r#"{"id":"handed-1","params":{"len":8}}"#;
    let js = jetstream::new(client.clone());
    js.publish_with_headers("jobs.cpu.vector_add.copy", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_success(&cluster.kiln(&["cancel", "handed-1"]));
    cluster.cpu_worker();
    let results = wait_for_results(&client, &["queued-1", "handed-1"], WAIT).await;
    let error = results["queued-1"].error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert_eq!(error.message, "cancelled on request before it ran");
    let error = results["handed-1"].error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert_eq!(
        error.message,
        "cancelled on request before it ran again (an earlier run of it was cut short)"
    );

    // Running: a long training job, cancelled a moment after it starts.
    assert_success(&cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "epochs=5000",
        "-p",
        "samples=1024",
        "--id",
        "running-1",
    ]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_success(&cluster.kiln(&["cancel", "running-1"]));
    let results = wait_for_results(&client, &["running-1"], WAIT).await;
    let r = &results["running-1"];
    let error = r.error.clone().unwrap();
    assert_eq!(error.kind, ErrorKind::Cancelled, "{r:?}");
    assert!(
        error.message.contains("while running") && error.message.contains(" steps done)"),
        "{}",
        error.message
    );
    assert!(r.compute_ms > 500.0, "it was running: {} ms", r.compute_ms);
    // The worker keeps serving.
    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=8",
        "--id",
        "done-1",
        "--wait",
    ]));
    // A finished job is not marked: the mark would cancel a later run of the same id.
    let finished = cluster.kiln(&["cancel", "done-1"]);
    assert_success(&finished);
    assert!(
        stdout(&finished).contains("done-1: succeeded") && stdout(&finished).contains("not marked"),
        "{}",
        stdout(&finished)
    );
    let js = jetstream::new(client.clone());
    let marks = js.get_key_value(kiln_proto::BUCKET_CANCEL).await.unwrap();
    assert_eq!(marks.get("done-1").await.unwrap(), None);
    assert!(marks.get("queued-1").await.unwrap().is_some());
    // Ids no worker would take are refused, and nothing is marked.
    let invalid = cluster.kiln(&["cancel", "later-1", "a b/c.d*"]);
    assert_eq!(invalid.status.code(), Some(2), "{invalid:?}");
    assert!(
        String::from_utf8_lossy(&invalid.stderr).contains("\"a b/c.d*\" is not a job id"),
        "{}",
        String::from_utf8_lossy(&invalid.stderr)
    );
    assert_eq!(marks.get("later-1").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_of_a_job_follows_it_from_queued_to_running_to_succeeded() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let state = |cluster: &Cluster, id: &str| stdout(&cluster.kiln(&["status", id]));
    assert_success(&cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "epochs=1000",
        "-p",
        "samples=1024",
        "--id",
        "followed",
    ]));
    let queued = state(&cluster, "followed");
    assert!(
        queued.contains("followed: queued on jobs.cpu.train_mlp since 20"),
        "{queued}"
    );
    cluster.cpu_worker();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = state(&cluster, "followed");
        if s.contains("running (train_mlp) on cpu (test-worker), attempt 1") {
            break;
        }
        assert!(
            !s.contains("succeeded"),
            "finished before it was seen running: {s}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "never seen running: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = cluster.client().await;
    wait_for_results(&client, &["followed"], WAIT).await;
    // No aggregator yet: the record still says queued, and status finds the result.
    let s = state(&cluster, "followed");
    assert!(
        s.contains("followed: succeeded on cpu (test-worker, attempt 1)"),
        "{s}"
    );
    // The result is found by its subject: nothing is written per job when it finishes, so
    // the record kiln submit made still says queued.
    let js = async_nats::jetstream::new(client.clone());
    let store = js.get_key_value(kiln_proto::BUCKET_STATE).await.unwrap();
    let value = store.get("followed").await.unwrap().unwrap();
    let recorded: kiln_proto::JobState = serde_json::from_slice(&value).unwrap();
    assert_eq!(recorded.phase, kiln_proto::Phase::Queued);
    let stored = js
        .get_stream(kiln_proto::streams::STREAM_RESULTS)
        .await
        .unwrap()
        .get_last_raw_message_by_subject("results.train_mlp.followed")
        .await
        .expect("the result on its own subject");
    let event: ResultEvent = serde_json::from_slice(&stored.payload).unwrap();
    assert_eq!(event.worker, "test-worker");
    let s = state(&cluster, "followed");
    assert!(
        s.contains("followed: succeeded on cpu (test-worker, attempt 1)"),
        "{s}"
    );
    let result = stdout(&cluster.kiln(&["result", "followed"]));
    assert!(result.contains("\"status\": \"succeeded\""), "{result}");
    assert!(state(&cluster, "nobody").contains("nobody: unknown"));
    assert_success(&cluster.kiln(&["cancel", "never-submitted"]));
    // Marked all the same (a job published without `kiln submit` has no record), but with
    // no promise that a job of that id will be answered.
    let marked = state(&cluster, "never-submitted");
    assert!(
        marked.contains("never-submitted: cancel requested, and nothing else is known of it"),
        "{marked}"
    );
    assert!(!marked.contains("it will be answered"), "{marked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_job_says_it_waits_and_is_cancelled_while_it_waits() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    // One compute slot, and work held far ahead of it once the worker has a pace.
    cluster.cpu_worker_with(&["--compute-slots", "1", "--prefetch-ms", "600000"]);
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--wait"]));
    // Two jobs far too long to finish during the test: one computes, the other waits.
    for id in ["one", "two"] {
        let job = ["-p", "epochs=10000", "-p", "samples=1024", "--id", id];
        assert_success(&cluster.kiln(&[&["submit", "train_mlp"][..], &job].concat()));
    }
    let state = |id: &str| stdout(&cluster.kiln(&["status", id]));
    let held = "held, waiting for a compute slot (train_mlp) on cpu (test-worker), attempt 1";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (running, waiting) = loop {
        let (one, two) = (state("one"), state("two"));
        if one.contains("running (train_mlp)") && two.contains(held) {
            break ("one", "two");
        }
        if two.contains("running (train_mlp)") && one.contains(held) {
            break ("two", "one");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never one running and one held: {one} / {two}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Cancelled while held: answered at once, while the other still computes (it waited for
    // the slot, ~7 s in an outside test), its wait counted as queue time (it was in none).
    let held_since = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_success(&cluster.kiln(&["cancel", waiting]));
    let client = cluster.client().await;
    let results = wait_for_results(&client, &[waiting], Duration::from_secs(10)).await;
    let cancelled = &results[waiting];
    let error = cancelled.error.clone().expect("it was cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert_eq!(
        error.message,
        "cancelled on request while it waited for a compute slot"
    );
    assert!(cancelled.started_at > held_since, "{cancelled:?}");
    assert!(cancelled.queue_ms >= 500.0, "{cancelled:?}");
    assert!(state(running).contains("running (train_mlp)"));

    assert_success(&cluster.kiln(&["cancel", running]));
    let results = wait_for_results(&client, &[running], WAIT).await;
    let stopped = results[running].error.clone().expect("it was cancelled");
    assert_eq!(stopped.kind, ErrorKind::Cancelled);
    assert!(stopped.message.contains("while running"), "{stopped}");
}

#[tokio::test(flavor = "multi_thread")]
async fn job_bigger_than_the_workers_memory_is_refused_naming_the_limit() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.spawn(
        "worker",
        &["worker", "--device", "cpu", "--max-memory-mb", "64"],
    );
    // 3 × 4096² f32 = 192 MiB of tensors: within --max-elements, over the memory limit.
    let out = cluster.kiln(&["submit", "matmul", "-p", "n=4096", "--wait"]);
    assert!(!out.status.success(), "a refused job makes --wait fail");
    let event: ResultEvent = serde_json::from_str(&stdout(&out)).expect("the result event");
    assert_eq!(event.status, Status::Failed);
    let error = event.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::TooLarge);
    assert!(error.message.contains("192.0 MiB"), "{}", error.message);
    assert!(error.message.contains("64.0 MiB"), "{}", error.message);
    assert!(
        error.message.contains("--max-memory-mb"),
        "{}",
        error.message
    );
    assert_eq!(event.compute_ms, 0.0, "refused before it ran");
    assert_eq!(
        event.flops,
        2.0 * 4096f64.powi(3),
        "its work, though refused"
    );
    // A job that fits (3 × 1024² f32 = 12 MiB) runs on the same worker.
    let fits = submit_wait(&cluster, &["matmul", "-p", "n=1024"]);
    assert_eq!(fits.status, Status::Succeeded, "{fits:?}");
}

/// An id sent first by a plain NATS publish (no record of what it computes), then by `kiln
/// submit` with other inputs: the server drops the second, and `--wait` says it cannot tell
/// whether the stored result is for its inputs and fails. It printed the earlier job's result
/// (200 for 1 + 1) and exited 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_resubmitted_id_whose_earlier_job_left_no_record_is_not_taken_for_this_one() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "raw-first");
    let body = r#"{"id":"raw-first","params":{"a":[100],"b":[100]}}"#;
    js.publish_with_headers("jobs.cpu.vector_add", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let results = wait_for_results(&client, &["raw-first"], WAIT).await;
    assert_eq!(results["raw-first"].output["c"], json!([200.0]));

    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "--id",
        "raw-first",
        "-p",
        "a=[1]",
        "-p",
        "b=[1]",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "job id raw-first was submitted within the last 10 min by a client whose \
                         record of what its job computes kiln cannot compare with this one's"
        ) && stderr.contains("this one will not run"),
        "{stderr}"
    );
    assert!(!stdout(&out).contains("200"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn resubmitted_ids_answer_with_the_earlier_results() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    let submit = [
        "submit",
        "vector_add",
        "-p",
        "len=10",
        "--count",
        "3",
        "--id",
        "batch",
    ];
    // Queued while no worker runs; a resubmission with --wait waits for the earlier one's
    // results.
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=4", "--id", "early"]));
    let waiting = std::process::Command::new(common::KILN)
        .args([
            "submit",
            "vector_add",
            "-p",
            "len=4",
            "--id",
            "early",
            "--wait",
        ])
        .env("NATS_URL", cluster.server.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cluster.cpu_worker();
    cluster.aggregator();
    let waited = waiting.wait_with_output().unwrap();
    assert_success(&waited);
    let event: ResultEvent = serde_json::from_str(&stdout(&waited)).unwrap();
    assert_eq!(
        (event.id.as_str(), event.status),
        ("early", Status::Succeeded)
    );

    let mut all = submit.to_vec();
    all.push("--wait");
    assert_success(&cluster.kiln(&all));
    // A resubmission answers at once with the same results, found by their subjects (not
    // after --wait-timeout-s).
    all.extend(["--wait-timeout-s", "600"]);
    let again = cluster.kiln(&all);
    assert_success(&again);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("3 job id(s) were already submitted")
            && stderr.contains("batch-0, batch-1, batch-2"),
        "{stderr}"
    );
    let mut ids: Vec<String> = stdout(&again)
        .lines()
        .map(|line| serde_json::from_str::<ResultEvent>(line).unwrap())
        .inspect(|event| assert_eq!(event.status, Status::Succeeded, "{event:?}"))
        .map(|event| event.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["batch-0", "batch-1", "batch-2"]);
    let status = cluster.kiln(&["status", "batch-0"]);
    assert!(
        stdout(&status).contains("batch-0: succeeded"),
        "{}",
        stdout(&status)
    );
    // Each ran once.
    let (stored, _) = common::stored_results(&client).await;
    assert_eq!(stored, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_or_unknown_ids_and_sequences_exit_with_status_2() {
    let cluster = Cluster::new();
    cluster.init().await;
    let long = "x".repeat(5000);
    for args in [
        vec!["status", long.as_str()],
        vec!["result", long.as_str()],
        vec!["cancel", long.as_str()],
        vec!["submit", "vector_add", "-p", "len=4", "--id", "caf\u{e9}"],
    ] {
        let out = cluster.kiln(&args);
        assert_eq!(out.status.code(), Some(2), "{args:.2?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is not a job id") && stderr.contains("1 to 128 ASCII"),
            "{args:.2?}: {stderr}"
        );
        assert!(stderr.len() < 400, "the id is cut short: {stderr}");
    }
    let unknown = cluster.kiln(&["status", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stdout(&unknown).contains("nobody: unknown"),
        "{}",
        stdout(&unknown)
    );
    let replay = cluster.kiln(&["dlq", "replay", "999"]);
    assert_eq!(replay.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&replay.stderr).contains("no dead letter with sequence 999"),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(stdout(&replay), "", "nothing was there to resubmit");
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_wait_names_the_jobs_whose_results_did_not_arrive() {
    let cluster = Cluster::new();
    cluster.init().await;
    // No worker: nothing arrives.
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--count",
        "12",
        "--id",
        "late",
        "--wait",
        "--wait-timeout-s",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("12 of 12 result(s) did not arrive within 1 s: late-0, late-1, late-2")
            && stderr.contains("late-9 and 2 more"),
        "{stderr}"
    );
    let one = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--id",
        "alone",
        "--wait",
        "--wait-timeout-s",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&one.stderr);
    assert!(
        stderr.contains("did not arrive within 1 s: alone;"),
        "{stderr}"
    );
}

/// The server gone while `kiln submit --wait` waits: that is why nothing arrived, and it says
/// so (it said only that the results did not arrive), at about its deadline (its last lookup
/// waited 5 s for a server that was not there: 4 s took 9).
#[test]
fn wait_says_when_the_server_is_unreachable() {
    let mut cluster = Cluster::new();
    let init = cluster.kiln(&["init"]);
    assert_success(&init);
    let submit = std::process::Command::new(common::KILN)
        .args(["submit", "vector_add", "-p", "len=4", "--id", "cut-off"])
        .args(["--wait", "--wait-timeout", "4s"])
        .env("NATS_URL", cluster.server.url())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    cluster.server.kill();
    let out = submit.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(6500), "{took:?}");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "1 of 1 result(s) did not arrive within 4 s (the NATS server is unreachable now: \
             they may have run meanwhile): cut-off"
        ),
        "{stderr}"
    );
}

/// Ctrl-C or SIGTERM while `kiln submit --wait` waits: the jobs go on, and the command names
/// them (an id kiln made up was printed nowhere, so the job could be neither followed nor
/// cancelled) and exits 130.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_wait_names_the_jobs_it_leaves() {
    let cluster = Cluster::new();
    cluster.init().await;
    let js = jetstream::new(cluster.client().await);
    // No worker: the jobs stay queued.
    for (signal, queued) in [("INT", 2), ("TERM", 4)] {
        let id = format!("left-{signal}");
        let args = [
            "vector_add",
            "-p",
            "len=16",
            "--count",
            "2",
            "--id",
            &id,
            "--wait",
        ];
        let child = submitting(&cluster, &args);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut jobs = js.get_stream("KILN_JOBS").await.unwrap();
            if jobs.info().await.unwrap().state.messages == queued {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the jobs were not queued"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Past the publish: the command waits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stderr = interrupt(child, signal);
        assert!(
            stderr.contains(&format!(
                "kiln: interrupted; stopped waiting for {id}-0, {id}-1, still queued or running"
            )),
            "SIG{signal}: {stderr}"
        );
    }
}

/// `kiln submit ARGS` against the cluster, running, its output piped.
fn submitting(cluster: &Cluster, args: &[&str]) -> std::process::Child {
    std::process::Command::new(common::KILN)
        .arg("submit")
        .args(args)
        .env("NATS_URL", cluster.server.url())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Send SIG`signal` to `child`, which must exit 130: its standard error.
fn interrupt(child: std::process::Child, signal: &str) -> String {
    let killed = std::process::Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "SIG{signal}: {stderr}");
    stderr
}

/// SIGINT or SIGTERM while a long `--count` is still being sent: the command says how many
/// jobs the server stored (they run) and which ids to ask about, and exits 130. It was killed
/// by the signal without a word, with thousands of jobs sent under ids it had printed nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_submission_says_what_it_sent() {
    let cluster = Cluster::new();
    cluster.init().await;
    let js = jetstream::new(cluster.client().await);
    let queued = || async {
        let mut jobs = js.get_stream("KILN_JOBS").await.unwrap();
        jobs.info().await.unwrap().state.messages
    };
    // No worker: the jobs stay queued.
    for (signal, wait) in [("INT", true), ("TERM", false)] {
        let before = queued().await;
        let id = format!("sending-{signal}");
        let mut args = vec!["vector_add", "-p", "len=4", "-n", "200000", "--id", &id];
        if wait {
            args.push("--wait");
        }
        let child = submitting(&cluster, &args);
        let deadline = tokio::time::Instant::now() + WAIT;
        while queued().await < before + 1000 {
            assert!(tokio::time::Instant::now() < deadline, "no jobs were sent");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stderr = interrupt(child, signal);
        let said = stderr
            .split("the server had stored at least ")
            .nth(1)
            .and_then(|rest| rest.split(" of 200000 jobs").next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("SIG{signal}: {stderr}"));
        assert!(
            stderr.contains(&format!("({id}-0 .. {id}-199999), which run")),
            "SIG{signal}: {stderr}"
        );
        assert!(said > 0, "SIG{signal}: {stderr}");
        // Every job it said was stored is, and those whose PubAck was on its way.
        let stored = queued().await - before;
        assert!(
            stored >= said && stored < 200_000,
            "{stored} stored; {stderr}"
        );
        assert_eq!(
            stderr.contains("their results were not waited for"),
            wait,
            "SIG{signal}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn params_are_read_from_a_file_or_standard_input() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let dir = tempfile::tempdir().unwrap();
    // Bigger than the command line takes in one argument (128 KiB on Linux).
    let n = 40_000;
    let params = json!({ "a": vec![1.5; n], "b": vec![2.0; n] }).to_string();
    assert!(params.len() > 128 * 1024);
    let file = dir.path().join("big.json");
    std::fs::write(&file, &params).unwrap();
    let at_file = format!("@{}", file.display());
    for out in [
        cluster.kiln(&["submit", "vector_add", "--params", &at_file, "--wait"]),
        cluster.kiln_with_input(
            &["submit", "vector_add", "--params", "@-", "--wait"],
            params.as_bytes(),
        ),
    ] {
        assert_success(&out);
        let event: ResultEvent = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(event.status, Status::Succeeded, "{event:?}");
        assert_eq!(event.output["len"], json!(n));
        assert_eq!(event.output["summary"]["mean"], json!(3.5));
    }
    // One parameter from a file, another from standard input.
    let a = dir.path().join("a.json");
    std::fs::write(&a, "[1, 2]").unwrap();
    let out = cluster.kiln_with_input(
        &[
            "submit",
            "vector_add",
            "-p",
            &format!("a=@{}", a.display()),
            "-p",
            "b=@-",
            "--wait",
        ],
        b"[10, 20]",
    );
    assert_success(&out);
    let event: ResultEvent = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(floats(&event.output["c"]), vec![11.0, 22.0]);
    let missing = cluster.kiln(&["submit", "vector_add", "--params", "@/no/such/file.json"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("reading JSON from /no/such/file.json"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
