//! Fault injection with real processes: workers SIGKILLed mid-job and restarted, and the
//! nats-server itself restarted mid-run. Every job whose submission was acknowledged ends with
//! exactly one `succeeded` result, counted once by the aggregator.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Cluster, assert_success, snapshot, stdout, stored_results, wait_for_metrics};
use kiln_proto::Status;

/// Worker flags for these tests: a short ack wait so that a killed worker's jobs come back
/// quickly, and a slowdown so that jobs are still running when the kill comes.
const WORKER: [&str; 10] = [
    "worker",
    "--device",
    "cpu",
    "--ack-wait-s",
    "2",
    "--slowdown",
    "20",
    "--max-in-flight",
    "8",
    "--no-warmup",
];

fn spawn_worker(cluster: &mut Cluster, name: &str) {
    let mut args = WORKER.to_vec();
    args.extend_from_slice(&["--name", name]);
    cluster.spawn(name, &args);
}

async fn wait_until_all_succeeded(
    cluster: &Cluster,
    ids: usize,
    timeout: Duration,
) -> HashMap<String, kiln_proto::ResultEvent> {
    let client = cluster.client().await;
    let deadline = Instant::now() + timeout;
    loop {
        let (stored, by_id) = stored_results(&client).await;
        assert_eq!(stored, by_id.len(), "a job id has two stored results");
        if by_id.len() >= ids {
            return by_id;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {ids} jobs finished",
            by_id.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_survive_workers_killed_and_restarted_at_random() {
    const JOBS: usize = 2000;
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.aggregator();
    spawn_worker(&mut cluster, "w0");
    spawn_worker(&mut cluster, "w1");
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        // Jobs heavy enough (a few ms each) that the burst outlasts several kills.
        "len=400000",
        "--count",
        "2000",
        "--id",
        "k",
    ]);
    assert_success(&out);

    // Kill one of the two workers with SIGKILL every 400–900 ms and start a replacement.
    let mut kills = 0;
    let mut generation = 2;
    let mut seed = 7u64;
    let client = cluster.client().await;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(400 + (seed >> 33) % 500)).await;
        let (_, done) = stored_results(&client).await;
        if done.len() >= JOBS * 3 / 4 || Instant::now() > deadline {
            break;
        }
        let victim = format!("w{}", generation - 2);
        let child = cluster.child(&victim);
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        spawn_worker(&mut cluster, &format!("w{generation}"));
        generation += 1;
    }
    let results = wait_until_all_succeeded(&cluster, JOBS, Duration::from_secs(240)).await;
    assert_eq!(results.len(), JOBS);
    assert!(results.values().all(|r| r.status == Status::Succeeded));
    let redelivered = results.values().filter(|r| r.attempt > 1).count();
    let snapshots = wait_for_metrics(&client, Duration::from_secs(45), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs >= JOBS as u64)
    })
    .await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!(
        (m.jobs, m.succeeded, m.failed),
        (JOBS as u64, JOBS as u64, 0)
    );
    eprintln!(
        "{JOBS} jobs, {kills} workers killed, {redelivered} jobs finished on a later attempt, lost 0, counted twice 0"
    );
    assert!(kills >= 3, "only {kills} kills happened");
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_jobs_survive_a_server_restart() {
    const JOBS: usize = 500;
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.aggregator();
    spawn_worker(&mut cluster, "w0");
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=20000",
        "--count",
        "500",
        "--id",
        "r",
    ]);
    assert_success(&out);
    // Let some finish, then restart the server (SIGKILL, same port, same file store).
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.server.restart();
    let results = wait_until_all_succeeded(&cluster, JOBS, Duration::from_secs(240)).await;
    assert!(results.values().all(|r| r.status == Status::Succeeded));
    let client = cluster.client().await;
    let snapshots = wait_for_metrics(&client, Duration::from_secs(45), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs >= JOBS as u64)
    })
    .await;
    assert_eq!(
        snapshot(&snapshots, "vector_add", "cpu").unwrap().jobs,
        JOBS as u64
    );
    // The live-workers bucket lives in memory, so the restart lost it: the worker's next
    // heartbeats make it again, and the worker is listed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = common::stdout(&cluster.kiln(&["status"]));
        if status.contains("w0") && status.contains("1 live") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never came back in kiln status:\n{status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every result of job `id`, once at least `n` are stored.
async fn results_of(
    client: &async_nats::Client,
    id: &str,
    n: usize,
) -> Vec<kiln_proto::ResultEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mine: Vec<_> = common::all_results(client)
            .await
            .into_iter()
            .filter(|e| e.id == id)
            .collect();
        if mine.len() >= n {
            return mine;
        }
        assert!(
            Instant::now() < deadline,
            "{id} has {} results, want {n}",
            mine.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `KILN_JOBS` holds no job within `within` (acks and deletions are applied as they
/// come).
async fn queue_empties(js: &async_nats::jetstream::Context, within: Duration) -> bool {
    let mut jobs = js
        .get_stream(kiln_proto::streams::STREAM_JOBS)
        .await
        .unwrap();
    let deadline = Instant::now() + within;
    while jobs.info().await.unwrap().state.messages > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Publish a `vector_add` of 64 seeded values as plain JetStream JSON, with the message id
/// `id` and `headers` besides.
async fn publish_vector_add(
    js: &async_nats::jetstream::Context,
    id: &str,
    headers: &[(&str, &str)],
) {
    let mut map = async_nats::HeaderMap::new();
    map.insert("Nats-Msg-Id", id);
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    js.publish_with_headers(
        "jobs.cpu.vector_add",
        map,
        r#"{"params":{"len":64},"seed":7}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Two deliveries, one second each: the server gives up on a job quickly. And a kiln worker
/// named "keeper" that serves the gpu class: it takes no cpu job, but it is the one that
/// answers the advisories (and keeps the dead letters).
async fn give_up_quickly(cluster: &mut Cluster, js: &async_nats::jetstream::Context) {
    let topology = kiln_proto::Topology {
        ack_wait: Duration::from_secs(1),
        max_deliver: 2,
        ..Default::default()
    };
    kiln_proto::streams::update_all(js, &topology)
        .await
        .unwrap();
    let keeper = ["worker", "--device", "cpu", "--serve-class", "gpu"];
    cluster.spawn("keeper", &[&keeper[..], &["--name", "keeper"]].concat());
}

/// A max-deliveries advisory naming stream sequence 0 (no message has it; published by hand,
/// which an open server allows) is dropped, not handed back every 5 s for ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_advisory_for_sequence_zero_is_dropped_not_retried_for_ever() {
    use kiln_proto::streams::{CONSUMER_DEAD_LETTERS, STREAM_ADVISORIES};

    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let client = cluster.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let advisory = r#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-12-07T00:00:00Z","stream":"KILN_JOBS","consumer":"workers-cpu","stream_seq":0,"deliveries":5}"#;
    js.publish(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.KILN_JOBS.workers-cpu",
        advisory.into(),
    )
    .await
    .unwrap()
    .await
    .expect("captured in KILN_ADVISORIES");
    let stream = js.get_stream(STREAM_ADVISORIES).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = stream.consumer_info(CONSUMER_DEAD_LETTERS).await.unwrap();
        if info.delivered.stream_sequence > 0 && info.num_ack_pending == 0 && info.num_pending == 0
        {
            assert_eq!(info.num_redelivered, 0, "{info:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the advisory is never acked: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A role that takes jobs from `consumer` and dies (or stalls) before acking, on every
/// attempt: a real client pulling from it that never acks.
async fn never_acking(
    js: &async_nats::jetstream::Context,
    consumer: &str,
) -> async_nats::jetstream::consumer::PullConsumer {
    js.get_stream(kiln_proto::streams::STREAM_JOBS)
        .await
        .unwrap()
        .get_consumer(consumer)
        .await
        .unwrap()
}

/// An auto job the scheduler's consumer gave up on (a scheduler that stalls on it each time:
/// a client pulling from `scheduler` that never acks) is answered saying so: "no worker
/// acknowledged it" blamed workers that never saw it.
#[tokio::test(flavor = "multi_thread")]
async fn an_auto_job_a_stalled_scheduler_never_routed_is_answered_saying_so() {
    let mut cluster = Cluster::new();
    let client = cluster.client().await;
    let js = async_nats::jetstream::new(client.clone());
    give_up_quickly(&mut cluster, &js).await;
    js.publish(
        "jobs.auto.vector_add",
        r#"{"id":"unrouted","params":{"len":8}}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let stalled = never_acking(&js, kiln_proto::streams::CONSUMER_SCHEDULER).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let answered = loop {
        assert!(Instant::now() < deadline, "the job was never given up");
        let mut batch = stalled
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(1500))
            .messages()
            .await
            .unwrap();
        while futures::StreamExt::next(&mut batch).await.is_some() {}
        let answered: Vec<_> = common::all_results(&client)
            .await
            .into_iter()
            .filter(|e| e.id == "unrouted")
            .collect();
        if !answered.is_empty() {
            break answered;
        }
    };
    let error = answered[0].error.as_ref().expect("failed");
    assert_eq!(
        error.message,
        "gave up after 2 deliveries from scheduler: the scheduler routed it within the ack \
         wait on none of them (it stalled or lost its connection; no worker saw the job); kept \
         in KILN_DLQ, resubmit it with `kiln dlq replay`"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn job_no_worker_acknowledges_is_answered_dead_lettered_and_replayable() {
    use async_nats::jetstream;
    use futures::StreamExt as _;
    use kiln_proto::streams::STREAM_JOBS;

    let mut cluster = Cluster::new();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    give_up_quickly(&mut cluster, &js).await;

    // With a submitter's safeguard, met here, which the dead letter (in KILN_DLQ) and the
    // replay must not carry.
    publish_vector_add(&js, "stuck-1", &[("Nats-Expected-Stream", STREAM_JOBS)]).await;

    let crashing = never_acking(&js, "workers-cpu").await;
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = Vec::new();
    while answered.is_empty() {
        assert!(Instant::now() < deadline, "the job was never dead-lettered");
        let mut batch = crashing
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(1500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(message)) = batch.next().await {
            deliveries += 1;
            assert_eq!(message.info().unwrap().delivered, deliveries);
        }
        answered = common::all_results(&client)
            .await
            .into_iter()
            .filter(|e| e.id == "stuck-1")
            .collect();
    }
    assert_eq!(deliveries, 2, "max_deliver is 2");
    assert_eq!(answered.len(), 1);
    let failed = &answered[0];
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.kind, "vector_add");
    assert_eq!(failed.attempt, 2);
    assert_eq!(failed.worker, "keeper");
    assert_eq!(
        failed.flops, 64.0,
        "its work, as a run would have reported it"
    );
    let error = failed.error.as_ref().unwrap();
    assert_eq!(error.kind, kiln_proto::ErrorKind::Internal);
    assert!(
        error
            .message
            .contains("gave up after 2 deliveries from workers-cpu"),
        "{error}"
    );

    // The job left KILN_JOBS, and waits in the dead-letter queue.
    assert!(
        queue_empties(&js, Duration::from_secs(10)).await,
        "the given-up job stayed in KILN_JOBS"
    );
    let list = cluster.kiln(&["dlq", "list"]);
    assert_success(&list);
    let listed = common::stdout(&list);
    let header = listed.lines().next().unwrap_or_default();
    assert!(
        header.trim_start().starts_with("sequence  subject") && header.ends_with("reason"),
        "{listed}"
    );
    assert!(listed.contains("stuck-1"), "{listed}");
    assert!(listed.contains("jobs.cpu.vector_add"), "{listed}");
    assert!(listed.contains("gave up after 2 deliveries"), "{listed}");

    let status = common::stdout(&cluster.kiln(&["status", "stuck-1"]));
    assert!(
        status.starts_with("stuck-1: failed (internal: "),
        "{status}"
    );
    // Its runs may have computed, killed before they answered: not "before computing".
    assert!(
        status.contains("), answered by keeper (attempt 2) in ") && !status.contains("before"),
        "{status}"
    );

    // A replay the server refuses (its queue full) leaves the letter to be replayed again at
    // once (the replay's claim is undone; it stood, and the letter was never replayed).
    assert_success(&cluster.kiln(&["init", "--max-queued-jobs", "1"]));
    publish_vector_add(&js, "filler", &[]).await;
    let refused = cluster.kiln(&["dlq", "replay", "--all"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("dead letter 1 (stuck-1) was not replayed: KILN_JOBS is full"),
        "{said}"
    );
    let jobs = js.get_stream(STREAM_JOBS).await.unwrap();
    jobs.purge().await.unwrap();
    assert_success(&cluster.kiln(&["init"]));
    // Two operators replay it at the same moment: it is sent once (both sent it, and it ran
    // twice). Until a worker answers the replay, `kiln status` says it is queued again, not
    // the failed run's result.
    let replays: Vec<std::process::Output> = std::thread::scope(|s| {
        let both = [(); 2].map(|()| s.spawn(|| cluster.kiln(&["dlq", "replay", "--all"])));
        both.map(|r| r.join().unwrap()).into()
    });
    let said: Vec<String> = replays.iter().map(common::stdout).collect();
    let sent = said
        .iter()
        .filter(|s| s.contains("1 dead letter(s) resubmitted"))
        .count();
    assert_eq!(sent, 1, "{replays:?}");
    let jobs = js.get_stream(STREAM_JOBS).await.unwrap();
    assert_eq!(jobs.cached_info().state.messages, 1, "{replays:?}");
    for replay in &replays {
        let refused = String::from_utf8_lossy(&replay.stderr);
        assert!(
            replay.status.success() || refused.contains("is being replayed already"),
            "{replay:?}"
        );
    }
    let status = common::stdout(&cluster.kiln(&["status", "stuck-1"]));
    assert!(
        status.starts_with("stuck-1: queued on jobs.cpu.vector_add since ")
            && status.contains("(replay 1 from the dead-letter queue)"),
        "{status}"
    );
    // Once a healthy worker runs, the replay is a new run with its own result.
    spawn_worker(&mut cluster, "healthy");
    let both = results_of(&client, "stuck-1", 2).await;
    let rerun = &both[1];
    assert_eq!(rerun.status, Status::Succeeded, "{rerun:?}");
    assert_eq!(rerun.replay, 1);
    assert_eq!(rerun.output["len"], 64);
    assert_eq!(both[0], *failed, "the failed result stays as it was");
    let empty = cluster.kiln(&["dlq", "list"]);
    assert!(common::stdout(&empty).contains("KILN_DLQ is empty"));
    let status = common::stdout(&cluster.kiln(&["status", "stuck-1"]));
    assert!(
        status.starts_with("stuck-1: succeeded on cpu (healthy, attempt 1, replay 1)"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn job_failing_internally_on_its_last_attempt_is_answered_and_dead_lettered_by_the_worker() {
    last_attempt_answered_by_the_worker(Before::Nothing).await;
}

/// The same with the consumer's max deliveries cut from 5 to 1 while the worker runs (`nats
/// consumer edit`): the worker follows the consumer, so the one delivery it has is the last.
/// A worker that kept the 5 it read at start handed the job back for a delivery the server
/// never made, and nobody answered it.
#[tokio::test(flavor = "multi_thread")]
async fn max_deliveries_cut_while_the_worker_runs_make_its_attempt_the_last() {
    last_attempt_answered_by_the_worker(Before::LimitCut).await;
}

/// A job another run answered while this one ran (delivered again, it finished first) keeps
/// that answer, and is not dead-lettered when this run fails on its last delivery: it needs no
/// replay. (The worker dead-lettered it, and a replay ran an answered job again.)
#[tokio::test(flavor = "multi_thread")]
async fn a_job_answered_by_another_run_is_not_dead_lettered_when_this_run_fails_last() {
    last_attempt_answered_by_the_worker(Before::Answered).await;
}

/// What happens while the job runs, before its run fails.
#[derive(PartialEq)]
enum Before {
    Nothing,
    /// The delivery limit of 1 is set after the worker started (5 before).
    LimitCut,
    /// Another run's result (a succeeded one) is stored for the job.
    Answered,
}

/// A job whose only delivery fails with an internal error is answered `failed` by its worker,
/// with that error, and kept as a dead letter (unless `before` answered it).
async fn last_attempt_answered_by_the_worker(before: Before) {
    use async_nats::jetstream;
    use kiln_proto::streams;

    let mut cluster = Cluster::new();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    // One delivery: the first attempt is the last. A queue of one job: the stopping worker
    // cannot queue the job again unspent (see the next test), so it hands it back as a
    // failed attempt.
    let topology = kiln_proto::Topology {
        max_deliver: 1,
        max_queued_jobs: 1,
        ..Default::default()
    };
    let at_start = kiln_proto::Topology {
        max_deliver: 5,
        ..topology.clone()
    };
    let live = before == Before::LimitCut;
    streams::update_all(&js, if live { &at_start } else { &topology })
        .await
        .unwrap();
    cluster.spawn(
        "worker",
        &[
            "worker",
            "--device",
            "cpu",
            "--name",
            "w1",
            "--drain-timeout-s",
            "1",
        ],
    );
    assert_success(&cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "epochs=5000",
        "-p",
        "samples=2048",
        "--id",
        "last-1",
    ]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = common::stdout(&cluster.kiln(&["status", "last-1"]));
        if state.contains("running (train_mlp) on cpu (w1), attempt 1") {
            break;
        }
        assert!(Instant::now() < deadline, "never seen running: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if live {
        streams::update_all(&js, &topology).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster
            .log("worker")
            .contains("the consumer's max deliveries changed")
        {
            assert!(
                Instant::now() < deadline,
                "the worker never read the new limit:\n{}",
                cluster.report()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if before == Before::Answered {
        store_another_runs_result(&js, "train_mlp", "last-1").await;
    }
    // A shutdown that outlasts the drain timeout stops the job at its next epoch with an
    // internal error; the queue is full, so the job cannot go back unspent, and on its last
    // attempt the worker answers it and keeps a dead letter.
    terminate(&mut cluster, "worker");
    if before == Before::Answered {
        let exit = cluster.child("worker").wait().unwrap();
        assert!(exit.success(), "{}", cluster.report());
        let kept = results_of(&client, "last-1", 1).await;
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].status, kept[0].worker.as_str()),
            (Status::Succeeded, "w0")
        );
        let list = cluster.kiln(&["dlq", "list"]);
        assert_success(&list);
        let listed = common::stdout(&list);
        assert!(!listed.contains("last-1"), "{listed}");
        let log = cluster.log("worker");
        assert!(log.contains("another run of the job answered it"), "{log}");
        assert!(
            queue_empties(&js, Duration::from_secs(10)).await,
            "the job was left queued"
        );
        return;
    }
    let failed = results_of(&client, "last-1", 1).await.remove(0);
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.attempt, 1);
    let error = failed.error.unwrap();
    assert_eq!(error.kind, kiln_proto::ErrorKind::Internal);
    assert!(error.message.contains("shutting down"), "{error}");
    let list = cluster.kiln(&["dlq", "list"]);
    assert_success(&list);
    let listed = common::stdout(&list);
    assert!(listed.contains("last-1"), "{listed}");
    assert!(listed.contains("jobs.cpu.train_mlp"), "{listed}");
    assert!(listed.contains("shutting down"), "{listed}");
}

/// Store a succeeded result of the job (`kind`, `id`), as another run (worker `w0`) would.
async fn store_another_runs_result(js: &async_nats::jetstream::Context, kind: &str, id: &str) {
    let earlier = serde_json::json!({
        "id": id, "kind": kind, "status": "succeeded", "device": "cpu",
        "class": "cpu", "worker": "w0", "attempt": 1,
        "enqueued_at": "2026-12-06T00:00:00Z", "started_at": "2026-12-06T00:00:00Z",
        "finished_at": "2026-12-06T00:00:01Z", "queue_ms": 0.0, "compute_ms": 1000.0,
        "total_ms": 1000.0, "output": {"epochs": 500}
    });
    js.publish(format!("results.{kind}.{id}"), earlier.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A job delivered again after another run stored its result (that run's worker stopped
/// before its ack reached the server) is acked at once, not run again: a training of minutes
/// here, whose result would only be dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_delivered_again_after_it_was_answered_is_acked_without_running() {
    use async_nats::jetstream;
    use futures::StreamExt as _;
    use kiln_proto::streams;

    let mut cluster = Cluster::new();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let topology = kiln_proto::Topology {
        // Redelivered after 3 s; its result is looked up within a third of that.
        ack_wait: Duration::from_secs(3),
        ..Default::default()
    };
    streams::update_all(&js, &topology).await.unwrap();
    // Minutes of training on this machine.
    assert_success(&cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "epochs=10000",
        "-p",
        "samples=4096",
        "--id",
        "again-1",
    ]));
    // The first run: a client takes the delivery and stores the job's result, and its ack
    // never comes.
    let first = never_acking(&js, "workers-cpu").await;
    let mut batch = first.fetch().max_messages(1).messages().await.unwrap();
    let taken = batch.next().await.expect("a delivery").unwrap();
    assert_eq!(taken.info().unwrap().delivered, 1);
    store_another_runs_result(&js, "train_mlp", "again-1").await;
    cluster.spawn("worker", &["worker", "--device", "cpu", "--name", "w1"]);
    assert!(
        queue_empties(&js, Duration::from_secs(30)).await,
        "the answered job was not acked (run again?):\n{}",
        cluster.report()
    );
    let log = cluster.log("worker");
    assert!(log.contains("acked without running it"), "{log}");
    let kept = results_of(&client, "again-1", 1).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].status, kept[0].worker.as_str()),
        (Status::Succeeded, "w0")
    );
}

/// A job the server gave up on (every delivery unacked) whose last run stored its result
/// before it died is removed from the queue, not dead-lettered: it is answered, and a replay
/// would run it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_the_server_gave_up_on_after_it_was_answered_is_removed_not_dead_lettered() {
    use async_nats::jetstream;
    use futures::StreamExt as _;
    use kiln_proto::streams::STREAM_JOBS;

    let mut cluster = Cluster::new();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    give_up_quickly(&mut cluster, &js).await;
    publish_vector_add(&js, "stuck-2", &[]).await;
    // Its runs die before they ack; one of them stored the job's result first.
    store_another_runs_result(&js, "vector_add", "stuck-2").await;
    let crashing = never_acking(&js, "workers-cpu").await;
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut jobs = js.get_stream(STREAM_JOBS).await.unwrap();
        if jobs.info().await.unwrap().state.messages == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the given-up job stayed in KILN_JOBS:\n{}",
            cluster.report()
        );
        let mut batch = crashing
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(_)) = batch.next().await {
            deliveries += 1;
        }
    }
    assert_eq!(deliveries, 2, "max_deliver is 2");
    let list = cluster.kiln(&["dlq", "list"]);
    assert_success(&list);
    let listed = common::stdout(&list);
    assert!(listed.contains("KILN_DLQ is empty"), "{listed}");
    let kept = results_of(&client, "stuck-2", 1).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].status, kept[0].worker.as_str()),
        (Status::Succeeded, "w0")
    );
    let log = cluster.log("keeper");
    assert!(log.contains("removing it without a dead letter"), "{log}");
}

/// Wait until `kiln status <id>` says the job is running on worker `name`.
async fn wait_until_running_on(cluster: &Cluster, id: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = common::stdout(&cluster.kiln(&["status", id]));
        if state.contains("running") && state.contains(&format!("({name})")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never seen running on {name}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn terminate(cluster: &mut Cluster, name: &str) {
    let pid = cluster.child(name).id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn job_a_stopping_worker_hands_back_keeps_its_deliveries_and_succeeds_elsewhere() {
    use async_nats::jetstream;
    use kiln_proto::streams;

    let mut cluster = Cluster::new();
    let client = cluster.client().await;
    // One delivery: a hand-back that spent it would fail the job.
    let topology = kiln_proto::Topology {
        max_deliver: 1,
        ..Default::default()
    };
    let js = jetstream::new(client.clone());
    streams::update_all(&js, &topology).await.unwrap();
    let worker = |name: &'static str| {
        [
            "worker",
            "--device",
            "cpu",
            "--name",
            name,
            "--drain-timeout-s",
            "1",
        ]
    };
    cluster.spawn("w1", &worker("w1"));
    assert_success(&cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "epochs=400",
        "-p",
        "samples=2048",
        "--id",
        "long-1",
    ]));
    let submitted_by = time::OffsetDateTime::now_utc();
    // Stopped twice in the middle of the job, past the drain timeout each time.
    for (name, next) in [("w1", "w2"), ("w2", "w3")] {
        wait_until_running_on(&cluster, "long-1", name).await;
        terminate(&mut cluster, name);
        let deadline = Instant::now() + Duration::from_secs(30);
        let stopped = loop {
            if let Some(status) = cluster.child(name).try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{name} did not stop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // A graceful stop, as in a rolling restart: not an error.
        assert!(stopped.success(), "{name} exited {stopped:?}");
        cluster.spawn(next, &worker(next));
    }
    let done = results_of(&client, "long-1", 1).await;
    assert_eq!(done.len(), 1, "one result: {done:?}");
    let done = &done[0];
    assert_eq!(done.status, Status::Succeeded, "{done:?}");
    assert_eq!(done.worker, "w3");
    assert_eq!(done.attempt, 1, "hand-backs spend no delivery");
    // Its times count from the submission (`Kiln-Enqueued-At`), not from the last copy: the
    // time it spent on the stopped workers is queue time.
    assert!(
        done.enqueued_at <= submitted_by,
        "enqueued at {}, after the submission returned at {submitted_by}",
        done.enqueued_at
    );
    assert!(
        done.queue_ms >= (done.started_at - submitted_by).as_seconds_f64() * 1000.0,
        "{done:?}"
    );
    assert_eq!(done.output["epochs"].as_array().map(Vec::len), Some(400));
    let list = common::stdout(&cluster.kiln(&["dlq", "list"]));
    assert!(list.contains("KILN_DLQ is empty"), "{list}");
    // The job's ack follows its result: the queue empties soon after.
    assert!(
        queue_empties(&js, Duration::from_secs(10)).await,
        "a copy of the job is left queued"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_holds_no_long_job_it_cannot_start_so_an_idle_worker_takes_it() {
    use async_nats::jetstream;

    let mut cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let worker = |name: &'static str| {
        [
            "worker",
            "--device",
            "cpu",
            "--name",
            name,
            "--compute-slots",
            "1",
            "--no-warmup",
        ]
    };
    cluster.spawn("w1", &worker("w1"));
    assert_success(&cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "epochs=300",
        "-p",
        "samples=2048",
        "--count",
        "3",
        "--id",
        "long",
    ]));
    // One compute slot, jobs of seconds: w1 holds the one it runs, the rest stay queued.
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(kiln_proto::streams::STREAM_JOBS)
        .await
        .unwrap()
        .get_consumer("workers-cpu")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.info().await.unwrap().num_ack_pending == 0 {
        assert!(Instant::now() < deadline, "w1 never took a job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        let info = consumer.info().await.unwrap();
        assert_eq!(
            (info.num_ack_pending, info.num_pending),
            (1, 2),
            "held, queued: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.spawn("w2", &worker("w2"));
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for i in 0..3 {
        let done = results_of(&client, &format!("long-{i}"), 1).await.remove(0);
        assert_eq!(done.status, Status::Succeeded, "{done:?}");
        *by_worker.entry(done.worker).or_default() += 1;
    }
    assert_eq!(by_worker.len(), 2, "both workers ran jobs: {by_worker:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregator_coming_back_to_a_backlog_of_thousands_of_results_counts_them_all() {
    use async_nats::jetstream;

    // More results than async-nats lets one client have unacknowledged publishes (5,000):
    // the aggregator stores one job state per result before it acks them.
    const JOBS: u64 = 6000;
    let mut cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    cluster.cpu_worker();
    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=16",
        "--count",
        &JOBS.to_string(),
        "--id",
        "backlog",
    ]));
    let mut results = js
        .get_stream(kiln_proto::streams::STREAM_RESULTS)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while results.info().await.unwrap().state.messages < JOBS {
        assert!(Instant::now() < deadline, "the jobs did not all finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The aggregator was down meanwhile; it comes back to all of them at once, and folds
    // them all into its first snapshot (one flush: 6,000 job states to store).
    cluster.spawn("aggregator", &["aggregator", "--interval-ms", "3000"]);
    let snapshots = wait_for_metrics(&client, Duration::from_secs(45), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs == JOBS)
    })
    .await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!((m.jobs, m.succeeded), (JOBS, JOBS));
    let mut consumer: jetstream::consumer::PullConsumer = results
        .get_consumer(kiln_proto::streams::CONSUMER_AGGREGATOR)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "results left unacked: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every job's final state was stored.
    let last = common::stdout(&cluster.kiln(&["status", &format!("backlog-{}", JOBS - 1)]));
    assert!(last.contains("succeeded"), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn results_the_aggregator_never_received_are_read_from_the_stream_and_counted_once() {
    use async_nats::jetstream::{self, consumer::AckPolicy};
    use futures::StreamExt as _;

    let mut cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    cluster.cpu_worker();
    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=16",
        "--count",
        "10",
        "--id",
        "lost",
        "--wait",
    ]));
    let results = js
        .get_stream(kiln_proto::streams::STREAM_RESULTS)
        .await
        .unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = results
        .get_consumer(kiln_proto::streams::CONSUMER_AGGREGATOR)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.ack_policy, AckPolicy::All);
    assert_eq!(info.config.ack_wait, Duration::from_secs(60));
    // Result 4 is deleted before anyone saw it, then results 1, 2, 3 and 5 are delivered,
    // never to the aggregator: as far as it can tell, deliveries lost on the way right
    // before the ones it gets. The server would send 1, 2, 3 and 5 again only after the 60 s
    // ack wait; the aggregator reads them from the stream at its next snapshot, and learns
    // that 4 is gone. Result 8 is deleted too: the aggregator's deliveries go past it
    // without a lost one.
    assert!(results.delete_message(4).await.unwrap());
    assert!(results.delete_message(8).await.unwrap());
    let mut taken = consumer.fetch().max_messages(4).messages().await.unwrap();
    let mut lost = Vec::new();
    while let Some(message) = taken.next().await {
        lost.push(message.unwrap().info().unwrap().stream_sequence);
    }
    assert_eq!(lost, vec![1, 2, 3, 5]);
    cluster.aggregator();
    let snapshots = wait_for_metrics(&client, Duration::from_secs(45), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.results_through >= 10)
    })
    .await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!((m.jobs, m.succeeded, m.duplicates), (8, 8, 0));
    assert_eq!(
        m.results_through, 10,
        "1, 2, 3 and 5 read, 4 found gone, 8 absent"
    );
    // One cumulative ack covers them all.
    let info = common::aggregator_caught_up(&client, Duration::from_secs(10)).await;
    assert_eq!(info.ack_floor.stream_sequence, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregator_consumer_made_by_an_older_kiln_keeps_explicit_acks_and_acks_each_result() {
    use async_nats::jetstream::{self, consumer::AckPolicy};

    let mut cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let results = js
        .get_stream(kiln_proto::streams::STREAM_RESULTS)
        .await
        .unwrap();
    // The consumer as a kiln before cumulative acks made it.
    results
        .delete_consumer(kiln_proto::streams::CONSUMER_AGGREGATOR)
        .await
        .unwrap();
    let mut older = kiln_proto::Topology::default().aggregator_consumer();
    older.ack_policy = AckPolicy::Explicit;
    results.create_consumer(older).await.unwrap();
    // `kiln init` updates it without touching its ack policy (which cannot change).
    cluster.init().await;
    let policy = |info: jetstream::consumer::Info| info.config.ack_policy;
    let info = results
        .consumer_info(kiln_proto::streams::CONSUMER_AGGREGATOR)
        .await
        .unwrap();
    assert_eq!(policy(info), AckPolicy::Explicit);
    cluster.cpu_worker();
    cluster.aggregator();
    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=16",
        "--count",
        "20",
        "--wait",
    ]));
    wait_for_metrics(&client, Duration::from_secs(30), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs == 20)
    })
    .await;
    let info = common::aggregator_caught_up(&client, Duration::from_secs(10)).await;
    assert_eq!(info.ack_floor.stream_sequence, 20);
    // Switching it as docs/ARCHITECTURE.md says: stop the aggregator, remove the consumer,
    // `kiln init`. The results delivered again are dropped by sequence, counted once.
    let agg = cluster.child("aggregator");
    agg.kill().unwrap();
    agg.wait().unwrap();
    results
        .delete_consumer(kiln_proto::streams::CONSUMER_AGGREGATOR)
        .await
        .unwrap();
    cluster.init().await;
    let info = results
        .consumer_info(kiln_proto::streams::CONSUMER_AGGREGATOR)
        .await
        .unwrap();
    assert_eq!(policy(info), AckPolicy::All);
    cluster.aggregator();
    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=16",
        "--count",
        "5",
        "--wait",
    ]));
    let snapshots = wait_for_metrics(&client, Duration::from_secs(30), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs >= 25 && m.duplicates >= 20)
    })
    .await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!((m.jobs, m.succeeded, m.duplicates), (25, 25, 20));
}

/// A server that restarts can deliver a job again while a worker runs it (its record of the
/// delivery not yet on disk); the worker ran the second delivery too, a whole training a
/// second time on its compute slot, and dropped its result. The server is made to deliver
/// again here by a NAK of the job's sequence, as its consumer would after such a restart:
/// the worker leaves the delivery to the attempt running, whose ack removes the job.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_delivered_again_while_its_worker_runs_it_runs_once() {
    use async_nats::jetstream;
    use kiln_proto::streams;

    let mut cluster = Cluster::new();
    cluster.init().await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    cluster.spawn("w1", &["worker", "--device", "cpu", "--name", "w1"]);
    assert_success(&cluster.kiln(&[
        "submit",
        "train_mlp",
        "-p",
        "epochs=300",
        "-p",
        "samples=2048",
        "--id",
        "again-1",
    ]));
    let mut jobs = js.get_stream(streams::STREAM_JOBS).await.unwrap();
    let sequence = jobs.info().await.unwrap().state.last_sequence;
    wait_until_running_on(&cluster, "again-1", "w1").await;
    let mut consumer: jetstream::consumer::PullConsumer = jobs
        .get_consumer(streams::CONSUMER_WORKERS_CPU)
        .await
        .unwrap();
    let delivered = consumer.info().await.unwrap().delivered.consumer_sequence;
    client
        .publish(
            format!(
                "$JS.ACK.{}.{}.1.{sequence}.{delivered}.0.0",
                streams::STREAM_JOBS,
                streams::CONSUMER_WORKERS_CPU
            ),
            "-NAK".into(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumer.info().await.unwrap().delivered.consumer_sequence == delivered {
        assert!(Instant::now() < deadline, "the job was not delivered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = results_of(&client, "again-1", 1).await;
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].status, Status::Succeeded, "{done:?}");
    assert_eq!(
        done[0].attempt, 1,
        "answered by the attempt that was running"
    );
    // The running attempt's ack counts for the job whichever delivery it names.
    assert!(
        queue_empties(&js, Duration::from_secs(10)).await,
        "the job is left queued: {:?}",
        consumer.info().await.unwrap()
    );
    // Nothing ran a second time: no second run's result was dropped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = cluster.log("w1");
    assert!(
        log.contains("delivered again; left to the attempt running"),
        "{log}"
    );
    assert!(!log.contains("result is dropped"), "{log}");
}

/// One id sent as two kinds is two jobs: when no worker acknowledges either, each is answered
/// and each keeps its own dead letter, replayable. The letters' message id was `dlq-<id>`, so
/// the server's duplicate window dropped the second kind's letter, while its job was gone
/// from KILN_JOBS and its result said it was kept in KILN_DLQ.
#[tokio::test(flavor = "multi_thread")]
async fn one_id_as_two_kinds_keeps_two_dead_letters() {
    use async_nats::jetstream;
    use futures::StreamExt as _;
    use kiln_proto::streams::STREAM_DLQ;

    let mut cluster = Cluster::new();
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    give_up_quickly(&mut cluster, &js).await;
    for (subject, body) in [
        (
            "jobs.cpu.vector_add",
            r#"{"id":"twin","params":{"len":64}}"#,
        ),
        ("jobs.cpu.matmul", r#"{"id":"twin","params":{"n":8}}"#),
    ] {
        js.publish(subject, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let crashing = never_acking(&js, "workers-cpu").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = Vec::new();
    while answered.len() < 2 {
        assert!(Instant::now() < deadline, "not both given up: {answered:?}");
        let mut batch = crashing
            .fetch()
            .max_messages(2)
            .expires(Duration::from_millis(1500))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(_)) = batch.next().await {}
        answered = common::all_results(&client)
            .await
            .into_iter()
            .filter(|e| e.id == "twin")
            .collect();
    }
    let mut kinds: Vec<&str> = answered.iter().map(|e| e.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["matmul", "vector_add"]);
    for event in &answered {
        assert_eq!(event.status, Status::Failed, "{event:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut letters = Vec::new();
    while letters.len() < 2 {
        assert!(Instant::now() < deadline, "letters: {letters:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut dlq = js.get_stream(STREAM_DLQ).await.unwrap();
        let last = dlq.info().await.unwrap().state.last_sequence;
        letters = Vec::new();
        for sequence in 1..=last {
            if let Ok(m) = dlq.get_raw_message(sequence).await {
                letters.push(m.subject.to_string());
            }
        }
    }
    letters.sort_unstable();
    assert_eq!(letters, ["dlq.matmul", "dlq.vector_add"]);
    let list = common::stdout(&cluster.kiln(&["dlq", "list"]));
    assert_eq!(list.matches("twin").count(), 2, "{list}");
}

/// `kiln submit --wait` gets the results stored while it was reconnecting to a restarted
/// server: they reach no subscriber, and it looks them up in KILN_RESULTS once it is back.
/// Before, it waited out its `--wait-timeout`, then said they did not arrive (exit 1).
#[tokio::test(flavor = "multi_thread")]
async fn submit_wait_gets_the_results_stored_while_the_server_restarted() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    let submit = std::process::Command::new(common::KILN)
        .args([
            "submit",
            "train_mlp",
            "-p",
            "epochs=150",
            "-n",
            "2",
            "--id",
            "rs",
            "--wait",
            "--wait-timeout",
            "40s",
        ])
        .env("NATS_URL", cluster.server.url())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln submit");
    // Both held by the worker (it acks each once its result is stored), then the server goes
    // down for longer than they take, and comes back. The consumer's counts, not `kiln
    // status`: a heartbeat every 2 s can miss a job of a second and a half.
    let client = cluster.client().await;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        async_nats::jetstream::new(client)
            .get_stream(kiln_proto::streams::STREAM_JOBS)
            .await
            .unwrap()
            .get_consumer("workers-cpu")
            .await
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = consumer.info().await.unwrap();
        if (info.num_ack_pending, info.num_pending) == (2, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "never both held: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let out = restart_server_around(&mut cluster, Duration::from_secs(6), submit).await;
    let waited = started.elapsed();
    let stdout = common::stdout(&out);
    assert!(out.status.success(), "{out:?}");
    for id in ["rs-0", "rs-1"] {
        assert!(stdout.contains(id), "{stdout}");
    }
    assert!(waited < Duration::from_secs(25), "waited {waited:?}");
}

/// Kill the server under `child` (a `kiln` command talking to it), start it again `down`
/// later, and wait for the command's output.
async fn restart_server_around(
    cluster: &mut Cluster,
    down: Duration,
    child: std::process::Child,
) -> std::process::Output {
    cluster.server.kill();
    tokio::time::sleep(down).await;
    cluster.server.start_again();
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

/// A submission cut off by a server crash said that jobs the server had stored were refused
/// ("0 of 2000 job(s) were stored"): they ran, and the same submission again was refused. The
/// jobs whose PubAck did not come are sent again under their ids once the server is back,
/// and each is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn a_submission_cut_off_by_a_server_crash_stores_every_job_once() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let count = 20_000;
    let submit = std::process::Command::new(common::KILN)
        .args(["submit", "vector_add", "-p", "len=4", "--id", "cut"])
        .args(["--count", &count.to_string()])
        .env("NATS_URL", cluster.server.url())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln submit");
    let js = async_nats::jetstream::new(cluster.client().await);
    let mut jobs = js
        .get_stream(kiln_proto::streams::STREAM_JOBS)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stored_before = loop {
        let stored = jobs.info().await.unwrap().state.messages;
        if stored >= 500 {
            break stored;
        }
        assert!(Instant::now() < deadline, "only {stored} stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let out = restart_server_around(&mut cluster, Duration::from_secs(2), submit).await;
    assert!(stored_before < count, "the crash came after the last job");
    assert!(out.status.success(), "{out:?}");
    assert!(
        common::stdout(&out).contains(&format!("submitted {count} jobs")),
        "{out:?}"
    );
    let js = async_nats::jetstream::new(cluster.client().await);
    let mut jobs = js
        .get_stream(kiln_proto::streams::STREAM_JOBS)
        .await
        .unwrap();
    assert_eq!(jobs.info().await.unwrap().state.messages, count);
}

/// A worker whose log reader goes away (a closed `| tee`, a log collector restarting) goes on
/// serving and stops cleanly: it exited 101 at its next line, a panic in the middle of its
/// jobs, since every line that could not be written was reported with a panicking `eprintln!`.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_log_reader_goes_away_keeps_serving_and_stops_cleanly() {
    use std::io::BufRead as _;
    let cluster = Cluster::new();
    cluster.init().await;
    let mut worker = std::process::Command::new(common::KILN)
        .args(["worker", "--device", "cpu", "--name", "unlogged"])
        .env("NATS_URL", cluster.server.url())
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kiln worker");
    // Its first line read, then the reader gone.
    let stderr = worker.stderr.take().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(stderr)
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    drop(worker.stdout.take());
    let out = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=64",
        "-d",
        "cpu",
        "--id",
        "unlogged-1",
        "--wait",
        "--wait-timeout",
        "30s",
    ]);
    assert_success(&out);
    assert!(common::stdout(&out).contains("\"succeeded\""), "{out:?}");
    let pid = worker.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(killed.unwrap().success());
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the worker stopped with {status}");
}

/// A worker stalled past its entry's TTL (SIGSTOP, a frozen VM) while another started under
/// its name finds the other's entry at its next beat and stops with an error, its entry left
/// to the other: both served under one entry before, `kiln workers` showed one of them, and
/// the scheduler counted one worker too few.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_worker_whose_name_was_taken_meanwhile_stops() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let worker = ["worker", "--device", "cpu", "--name", "twin"];
    cluster.spawn("first", &worker);
    wait_for_worker(&cluster, "twin").await;
    let first = cluster.child("first").id().to_string();
    let signal = |which: &str| {
        let sent = std::process::Command::new("kill")
            .args([which, first.as_str()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");
    // Its entry lives three heartbeats (6 s): then the name is free to take.
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.spawn("second", &worker);
    wait_for_worker(&cluster, "twin").await;
    signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = cluster.child("first").try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the first worker serves on:\n{}",
            cluster.report()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "{status}");
    let said = cluster.log("first");
    assert!(
        said.contains("already sends heartbeats under this worker's --name"),
        "{said}"
    );
    // The second serves on, its entry in place.
    assert!(cluster.child("second").try_wait().unwrap().is_none());
    let out = cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_worker(&cluster, "twin").await;
}

/// Wait until `kiln workers` lists `name` as serving.
async fn wait_for_worker(cluster: &Cluster, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cluster.kiln(&["workers", "-o", "json"]);
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let serving = listed.as_array().is_some_and(|all| {
            all.iter()
                .any(|w| w["name"] == name && w["state"] == "serving")
        });
        if serving {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never served: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A rolling restart under one name: the old worker drains while its successor takes the
/// name and writes the entry. The old one stops beating and exits 0 (a rolling restart is
/// not an error), where it took the successor's entry for a stolen name.
#[tokio::test(flavor = "multi_thread")]
async fn a_draining_worker_hands_its_name_to_its_successor_quietly() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let worker = ["worker", "--device", "cpu", "--name", "rolling"];
    // Every job takes 8 s: the old worker is still draining when the new one has beaten.
    let slow = [
        &worker[..],
        &["--sim-overhead-ms", "8000", "--drain-timeout", "60s"],
    ]
    .concat();
    cluster.spawn("old", &slow);
    wait_for_worker(&cluster, "rolling").await;
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--id", "slow-1"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stdout(&cluster.kiln(&["status", "slow-1"])).contains("running") {
        assert!(Instant::now() < deadline, "slow-1 never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    terminate(&mut cluster, "old");
    cluster.spawn("new", &worker);
    let status = cluster.child("old").wait().unwrap();
    assert!(status.success(), "{status}\n{}", cluster.report());
    // The job finished on the old one, and the new one serves under the name.
    let result = cluster.kiln(&["result", "slow-1"]);
    assert_success(&result);
    wait_for_worker(&cluster, "rolling").await;
}

/// A job's simulated time (`--sim-overhead`, `--slowdown`) is a step like its real one: a
/// timeout or a cancel stops it within a checkpoint. It slept on to the end: a job cancelled
/// 3 s into a simulated 30 s was answered 27 s later, and one with a 300 ms timeout reported
/// the whole 30 s as compute.
#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_simulated_time_stops_for_a_timeout_or_a_cancel() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let worker = ["worker", "--device", "cpu", "--sim-overhead", "30s"];
    cluster.spawn("worker", &worker);
    let client = cluster.client().await;
    let timed = [
        "submit",
        "vector_add",
        "-p",
        "len=8",
        "--id",
        "timed",
        "--timeout",
        "300ms",
    ];
    assert_success(&cluster.kiln(&timed));
    assert_success(&cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--id", "dropped"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stdout(&cluster.kiln(&["status", "dropped"])).contains("running") {
        assert!(Instant::now() < deadline, "dropped never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled_at = Instant::now();
    assert_success(&cluster.kiln(&["cancel", "dropped"]));
    let results =
        common::wait_for_results(&client, &["timed", "dropped"], Duration::from_secs(10)).await;
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));
    let timed = &results["timed"];
    let error = timed.error.as_ref().expect("timed out");
    assert_eq!(error.kind, kiln_proto::ErrorKind::Timeout, "{error:?}");
    assert!(timed.compute_ms < 2_000.0, "{timed:?}");
    let dropped = &results["dropped"];
    let error = dropped.error.as_ref().expect("cancelled");
    assert_eq!(error.kind, kiln_proto::ErrorKind::Cancelled, "{error:?}");
    assert!(dropped.compute_ms < 25_000.0, "{dropped:?}");
}

/// A worker cut off from the server says so once (its connection's log), not "heartbeat
/// failed: timed out" every 5 s of the outage; it beats again once the server is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_from_the_server_does_not_warn_at_every_heartbeat() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.spawn(
        "worker",
        &["worker", "--device", "cpu", "--name", "cut-off"],
    );
    wait_for_worker(&cluster, "cut-off").await;
    cluster.server.kill();
    tokio::time::sleep(Duration::from_secs(16)).await;
    cluster.server.start_again();
    wait_for_worker(&cluster, "cut-off").await;
    let log = cluster.log("worker");
    // (One beat may have left just as the server went, before the client knew.)
    let warned = log.matches("heartbeat failed").count();
    assert!(warned <= 1, "{warned} warnings: {log}");
}
