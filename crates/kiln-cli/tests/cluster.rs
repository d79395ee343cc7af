//! A 3-node JetStream cluster started from the committed `nats/cluster/node.conf`, kiln's
//! streams at three replicas (`kiln --replicas 3 init`), and the node leading `KILN_JOBS`
//! SIGKILLed mid-run: every job whose submission was acknowledged ends with exactly one
//! `succeeded` result, counted once by the aggregator.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, jetstream};
use common::{KILN, assert_success, snapshot, wait_for_metrics};
use futures::StreamExt as _;
use kiln_proto::{HEADER_MSG_ID, ResultEvent, Status, streams};
use kiln_testkit::NatsCluster;

/// kiln processes against the cluster, all given every node's URL; killed on drop, their
/// logs shown when the test fails.
struct Processes {
    children: Vec<(String, Child)>,
    logs: tempfile::TempDir,
}

impl Processes {
    fn new() -> Self {
        Processes {
            children: Vec::new(),
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn spawn(&mut self, name: &str, urls: &str, args: &[&str]) {
        let log = std::fs::File::create(self.logs.path().join(name)).unwrap();
        let child = Command::new(KILN)
            .args(args)
            .env("NATS_URL", urls)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kiln");
        self.children.push((name.to_owned(), child));
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let log =
                    std::fs::read_to_string(self.logs.path().join(&*name)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- {name} (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Publish one job, retrying (same id, so the server drops a copy it already stored) until
/// the cluster acknowledges it or `deadline` passes. Returns the number of failed tries, or
/// `None` if it was never acknowledged.
async fn publish_until_acked(js: &jetstream::Context, id: &str, deadline: Instant) -> Option<u32> {
    let body = serde_json::json!({"id": id, "params": {"len": 20000}}).to_string();
    let mut failures = 0;
    while Instant::now() < deadline {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, id);
        let acked = match js
            .publish_with_headers("jobs.cpu.vector_add", headers, body.clone().into())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if acked {
            return Some(failures);
        }
        failures += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Every result event in KILN_RESULTS by job id, with the number of events read; `None`
/// when the cluster could not answer this time (a leader election under way).
async fn try_stored_results(
    js: &jetstream::Context,
) -> Option<(usize, HashMap<String, ResultEvent>)> {
    let mut stream = js.get_stream(streams::STREAM_RESULTS).await.ok()?;
    let total = stream.info().await.ok()?.state.messages as usize;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "results.>".into(),
            ..Default::default()
        })
        .await
        .ok()?;
    let mut messages = consumer.messages().await.ok()?;
    let mut by_id = HashMap::new();
    let mut count = 0;
    while count < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .ok()??
            .ok()?;
        count += 1;
        let event: ResultEvent = serde_json::from_slice(&message.payload).expect("result parses");
        by_id.insert(event.id.clone(), event);
    }
    Some((count, by_id))
}

async fn stored_results(js: &jetstream::Context) -> (usize, HashMap<String, ResultEvent>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(results) = try_stored_results(js).await {
            return results;
        }
        assert!(
            Instant::now() < deadline,
            "could not read KILN_RESULTS for 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kiln --replicas 3 init` against the cluster at `urls`, then a client of every node.
async fn init_at_three_replicas(urls: &str) -> async_nats::Client {
    let init = Command::new(KILN)
        .args(["--replicas", "3", "init"])
        .env("NATS_URL", urls)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kiln init");
    assert_success(&init);
    async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .expect("connect to the cluster")
}

#[tokio::test(flavor = "multi_thread")]
async fn run_completes_without_loss_when_the_jobs_stream_leader_is_killed() {
    const JOBS: usize = 600;
    let started = Instant::now();
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    let client = init_at_three_replicas(&urls).await;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client.clone());
    let mut jobs_stream = js.get_stream(streams::STREAM_JOBS).await.unwrap();
    let info = jobs_stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3, "kiln init made KILN_JOBS R3");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("KILN_JOBS has a leader");
    for name in [
        streams::STREAM_RESULTS,
        streams::STREAM_METRICS,
        streams::STREAM_DLQ,
    ] {
        let mut stream = js.get_stream(name).await.unwrap();
        assert_eq!(
            stream.info().await.unwrap().config.num_replicas,
            3,
            "{name}"
        );
    }

    let mut processes = Processes::new();
    processes.spawn("aggregator", &urls, &["aggregator", "--interval-ms", "100"]);
    for name in ["w0", "w1"] {
        processes.spawn(
            name,
            &urls,
            &[
                "worker",
                "--device",
                "cpu",
                "--name",
                name,
                "--slowdown",
                "20",
                "--max-in-flight",
                "8",
                "--no-warmup",
            ],
        );
    }

    // First half, then wait until the workers are busy.
    let deadline = Instant::now() + Duration::from_secs(120);
    let ids: Vec<String> = (0..JOBS).map(|i| format!("c{i:04}")).collect();
    let mut acked = HashSet::new();
    let mut failed_tries = 0;
    for id in &ids[..JOBS / 2] {
        let tries = publish_until_acked(&js, id, deadline).await;
        failed_tries += tries.unwrap_or(0);
        if tries.is_some() {
            acked.insert(id.clone());
        }
    }
    loop {
        let (_, done) = stored_results(&js).await;
        if done.len() >= 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not start on the jobs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGKILL the node leading KILN_JOBS (the harder case: the stream and, with it, the
    // consumers' leadership move while jobs are being delivered), then submit the second
    // half while the survivors elect a new leader.
    let victim = cluster
        .index_of(&leader)
        .expect("the leader is a cluster node");
    let meta_leader = cluster.meta_leader(victim);
    let (_, done_before_kill) = stored_results(&js).await;
    cluster.kill(victim);
    let killed_at = Instant::now();
    for id in &ids[JOBS / 2..] {
        let tries = publish_until_acked(&js, id, deadline).await;
        failed_tries += tries.unwrap_or(0);
        if tries.is_some() {
            acked.insert(id.clone());
        }
    }
    let new_leader = jobs_stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("KILN_JOBS has a new leader");
    assert_ne!(new_leader, leader);

    // Every acknowledged job ends with one succeeded result.
    let deadline = Instant::now() + Duration::from_secs(240);
    let results = loop {
        let (stored, by_id) = stored_results(&js).await;
        assert_eq!(stored, by_id.len(), "a job id has two stored results");
        if acked.iter().all(|id| by_id.contains_key(id)) {
            break by_id;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged jobs have results",
            acked.iter().filter(|id| by_id.contains_key(*id)).count(),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let results_after_kill = killed_at.elapsed().as_secs_f64();
    let lost = acked.iter().filter(|id| !results.contains_key(*id)).count();
    assert_eq!(lost, 0);
    assert!(
        acked
            .iter()
            .all(|id| results[id].status == Status::Succeeded),
        "a job failed"
    );
    // Results of jobs whose publish was never acknowledged may exist too (stored, ack lost);
    // every result belongs to one of the ids submitted.
    assert!(results.keys().all(|id| ids.contains(id)));
    let redelivered = results.values().filter(|r| r.attempt > 1).count();

    // The aggregator counts each job once.
    let total = results.len() as u64;
    let snapshots = wait_for_metrics(&client, Duration::from_secs(120), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs >= total)
    })
    .await;
    let m = snapshot(&snapshots, "vector_add", "cpu").unwrap();
    assert_eq!((m.jobs, m.succeeded, m.failed), (total, total, 0));
    eprintln!(
        "cluster: {} jobs acknowledged of {JOBS}, {failed_tries} failed publish tries retried, \
         killed {} (KILN_JOBS leader{}) after {} results, new leader {new_leader}, \
         {redelivered} jobs finished on a later attempt, {} duplicate results dropped by the \
         aggregator, lost 0, doubled 0; all results {results_after_kill:.1} s and all counted \
         {:.1} s after the kill, {:.1} s in all",
        acked.len(),
        leader,
        if meta_leader.as_deref() == Some(leader.as_str()) {
            " and meta leader"
        } else {
            ", not the meta leader"
        },
        done_before_kill.len(),
        m.duplicates,
        killed_at.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// On a cluster, puts and removals of one object name at once leave the last object put and
/// no chunks under no name, and none of them fails: a conditional write to a subject that
/// has one still in flight is refused there with error 10164, which async-nats reports as
/// another error than a wrong last sequence, and is read again like one.
#[tokio::test(flavor = "multi_thread")]
async fn racing_puts_and_removals_of_one_object_on_a_cluster_leave_no_chunks() {
    use futures::TryStreamExt as _;
    let cluster = NatsCluster::start();
    let js = jetstream::new(init_at_three_replicas(&cluster.urls()).await);
    let store = kiln_data::store::open(&js).await.unwrap();
    let stream = js.get_stream("OBJ_KILN_DATA").await.unwrap();
    for round in 0..5 {
        let writers: Vec<_> = (0..8u8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let bytes = vec![w; 1000];
                    match w % 4 {
                        3 => kiln_data::store::remove(&store, "raced").await.map(drop),
                        _ => kiln_data::store::put_reader(&store, "raced", &mut &bytes[..])
                            .await
                            .map(drop),
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().expect("no put or removal fails");
        }
        let chunks: Vec<(String, usize)> = stream
            .info_with_subjects("$O.KILN_DATA.C.>")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let held: usize = chunks.iter().map(|(_, n)| n).sum();
        let expected = match store.info("raced").await.unwrap() {
            info if info.deleted => 0,
            _ => 1,
        };
        assert_eq!(held, expected, "round {round}: {chunks:?}");
    }
}
