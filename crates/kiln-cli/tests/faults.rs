//! Fault injection with real processes: workers SIGKILLed mid-job and restarted, and the
//! nats-server itself restarted mid-run. Every job whose submission was acknowledged ends with
//! exactly one `succeeded` result, counted once by the aggregator.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Cluster, assert_success, snapshot, stored_results, wait_for_metrics};
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
        "len=20000",
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
    let snapshots = wait_for_metrics(&client, Duration::from_secs(60), |s| {
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
    let snapshots = wait_for_metrics(&client, Duration::from_secs(60), |s| {
        snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs >= JOBS as u64)
    })
    .await;
    assert_eq!(
        snapshot(&snapshots, "vector_add", "cpu").unwrap().jobs,
        JOBS as u64
    );
}
