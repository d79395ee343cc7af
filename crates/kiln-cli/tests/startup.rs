//! A role started before JetStream answers — a cluster still electing its leader under
//! `docker compose up`, a server restarted with JetStream a moment later — waits for it
//! instead of exiting, and says so.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, KILN, assert_success};
use kiln_testkit::NatsServer;

#[test]
fn init_waits_for_jetstream_to_come_up() {
    // A server without JetStream: the JetStream API has no responders.
    let mut plain = NatsServer::start_with_args(&["-js=false"]);
    let port = plain.port();
    let url = plain.url();
    let mut init = Command::new(KILN)
        .arg("init")
        .env("NATS_URL", &url)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln init");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        init.try_wait().unwrap().is_none(),
        "kiln init gave up while JetStream was not answering"
    );

    // The same address, now with JetStream: init finishes and the streams are there.
    plain.kill();
    let server = NatsServer::start_with_args(&["-p", &port.to_string()]);
    assert_eq!(server.port(), port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while init.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "kiln init did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = init.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kiln init failed: {stderr}");
    assert!(
        stderr.contains("JetStream is not answering yet"),
        "the wait is logged: {stderr}"
    );
    let status = Command::new(KILN)
        .arg("status")
        .env("NATS_URL", server.url())
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("KILN_JOBS"));
}

#[test]
fn commands_against_a_server_without_jetstream_say_so_at_once() {
    let plain = NatsServer::start_with_args(&["-js=false"]);
    for args in [
        vec!["submit", "vector_add", "-p", "len=4"],
        vec!["status"],
        vec!["status", "some-job"],
        vec!["result", "some-job"],
        vec!["dlq", "list"],
    ] {
        let started = Instant::now();
        let out = Command::new(KILN)
            .args(&args)
            .env("NATS_URL", plain.url())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("runs without JetStream")
                && stderr.contains("start it with -js")
                && !stderr.contains("kiln init"),
            "{args:?}: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

/// A server with less JetStream storage than kiln's default limits reserve (17 GiB; a small
/// disk grants less): `kiln init` and the roles say so and what to do, not that the user
/// lacks a permission; with smaller limits `kiln init` works.
#[test]
fn a_server_short_of_storage_for_the_limits_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.conf");
    std::fs::write(
        &config,
        "jetstream { store_dir: $KILN_STORE_DIR, max_file_store: 4GB }\n",
    )
    .unwrap();
    let cluster = Cluster::on(NatsServer::start_with_config(&config, &[]));
    for args in [&["init"][..], &["submit", "vector_add", "-p", "len=4"]] {
        let out = cluster.kiln(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("The server has not the JetStream storage that kiln's limits reserve")
                && stderr.contains("--data-max-bytes")
                && !stderr.contains("this user could not create it"),
            "{args:?}: {stderr}"
        );
    }
    assert_success(&cluster.kiln(&[
        "init",
        "--data-max-bytes",
        "1GiB",
        "--results-max-bytes",
        "536870912",
    ]));
}

#[test]
fn unusable_credential_files_are_named_not_blamed_on_the_server() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "not a seed").unwrap();
    let garbage = garbage.to_str().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    for (args, said) in [
        (vec!["--nkey", garbage], "holds no valid nkey seed"),
        (vec!["--tls-ca", missing], "reading --tls-ca certificate"),
        (
            vec!["--tls-cert", garbage, "--tls-key", missing],
            "reading --tls-key private key",
        ),
    ] {
        let out = Command::new(KILN)
            .arg("status")
            .args(&args)
            .env("NATS_URL", server.url())
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("could not reach") && !stderr.contains("TLS with the NATS server"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_is_refused_the_name_of_a_live_one() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let twin = ["worker", "--device", "cpu", "--name", "twin", "--no-warmup"];
    cluster.spawn("first", &twin);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::stdout(&cluster.kiln(&["workers"])).contains("twin") {
        assert!(
            Instant::now() < deadline,
            "the first worker never showed up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = cluster.kiln(&twin);
    assert!(!out.status.success(), "a second worker started as twin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a live worker named \"twin\" (on cpu, started ")
            && stderr.contains("give each worker its own --name"),
        "{stderr}"
    );
    // The first one serves on, under its name.
    let ok = cluster.kiln(&["submit", "vector_add", "-p", "len=8", "--wait"]);
    assert_success(&ok);
    assert!(common::stdout(&ok).contains("\"worker\": \"twin\""));
}

/// `kiln init --replicas 3` on a single server says what the server's refusal means: it
/// passed the server's error on, twice over ("jetstream error: replicas > 1 not supported in
/// non-clustered mode (code 500, error code 10074): jetstream error: …").
#[test]
fn init_with_replicas_on_a_single_server_says_a_cluster_is_needed() {
    let cluster = Cluster::new();
    let out = Command::new(KILN)
        .args(["init", "--replicas", "3"])
        .env("NATS_URL", cluster.server.url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "kiln: --replicas 3 needs a JetStream cluster of at least 3 servers, and this \
         nats-server is not clustered: use --replicas 1 (the default) with it"
    );
}

/// A creation the server refuses with a reason of its own is said as that reason, not as a
/// permission the user lacks: `KILN_REPLICAS=3` on a single server said "this user could not
/// create it: run `kiln init` as a user allowed to create streams".
#[test]
fn a_creation_the_server_refuses_says_why_not_that_permission_is_missing() {
    let cluster = Cluster::new();
    let out = Command::new(KILN)
        .args(["worker", "--device", "cpu", "--no-warmup"])
        .env("NATS_URL", cluster.server.url())
        .env("KILN_REPLICAS", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the server refused to create it")
            && stderr.contains("replicas > 1 not supported"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("this user could not create it"),
        "{stderr}"
    );
}

/// On a server kiln has not set up, the commands that read say so, and what to do, alike:
/// `kiln workers` said "no live workers" (exit 0) where the others said to run `kiln init`.
#[test]
fn commands_that_read_say_to_run_init_on_a_server_without_kiln() {
    let cluster = Cluster::new();
    for args in [&["workers"][..], &["status"], &["dlq", "list"]] {
        let out = cluster.kiln(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("kiln's streams do not exist yet on this server; run `kiln init`"),
            "{args:?}: {stderr}"
        );
    }
}

/// The live-workers bucket is kept in memory: after a server restart it is missing until a
/// worker beats again. `kiln workers` and `kiln status` then say there are none; they failed
/// with "stream not found".
#[tokio::test(flavor = "multi_thread")]
async fn no_workers_bucket_means_no_live_workers() {
    let cluster = Cluster::new();
    cluster.init().await;
    let js = async_nats::jetstream::new(cluster.client().await);
    js.delete_stream(format!("KV_{}", kiln_proto::BUCKET_WORKERS))
        .await
        .unwrap();
    let out = cluster.kiln(&["workers"]);
    assert_success(&out);
    assert!(common::stdout(&out).contains("no live workers"));
    let out = cluster.kiln(&["workers", "-o", "json"]);
    assert_success(&out);
    let listed: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(listed, serde_json::json!([]));
    let out = cluster.kiln(&["status"]);
    assert_success(&out);
    assert!(
        !common::stdout(&out).contains("unavailable"),
        "{}",
        common::stdout(&out)
    );
}

/// The aggregator turns transparent huge pages off for itself (its small allocations touched
/// a little of many 2 MiB pages, each zeroed whole); a worker keeps the system's setting.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_aggregator_runs_without_huge_pages_and_a_worker_as_the_system_has_them() {
    let thp = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_owned())
    };
    let Some(ours) = thp(std::process::id()) else {
        eprintln!("this kernel does not report THP_enabled: skipping");
        return;
    };
    if ours == "0" {
        eprintln!("huge pages are off for this test already (inherited): skipping");
        return;
    }
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.aggregator();
    cluster.cpu_worker();
    // The aggregator turns them off at start, before its runtime; the worker keeps what it
    // inherits.
    let aggregator = cluster.child("aggregator").id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while thp(aggregator).as_deref() != Some("0") {
        assert!(Instant::now() < deadline, "{}", cluster.report());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let worker = cluster.child("worker").id();
    assert_eq!(thp(worker), Some(ours), "{}", cluster.report());
}

#[tokio::test]
async fn workers_and_aggregators_run_their_messages_on_one_thread_unless_told_otherwise() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.spawn_with_env(
        "aggregator",
        &["aggregator", "--interval-ms", "100"],
        &[("KILN_ASYNC_THREADS", "3")],
    );
    cluster.spawn(
        "worker-2",
        &[
            "worker",
            "--device",
            "cpu",
            "--name",
            "w2",
            "--async-threads",
            "2",
        ],
    );
    // The runtime's own count of its worker threads and its flavour, as each process logs
    // them at start. One thread is a current-thread runtime: its tasks run in the order they
    // were woken, so a burst of jobs' results leaves in one write (docs/BENCHMARKS.md).
    let threads = |log: &str| {
        log.lines()
            .find(|l| l.contains("async runtime"))
            .and_then(|l| l.split("threads=").nth(1))
            .map(|rest| rest.trim().to_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = [
        ("worker", "1 flavor=\"current_thread\""),
        ("aggregator", "3 flavor=\"multi_thread\""),
        ("worker-2", "2 flavor=\"multi_thread\""),
    ];
    while want
        .iter()
        .any(|(name, n)| threads(&cluster.log(name)).as_deref() != Some(*n))
    {
        assert!(Instant::now() < deadline, "{}", cluster.report());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = cluster.kiln(&["worker", "--device", "cpu", "--async-threads", "0"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--async-threads") && stderr.contains("at least 1"),
        "{stderr}"
    );
}

/// `kiln init --data-max-age` under the 2-minute duplicate window the server made
/// `KILN_DATA`'s stream with: the window follows the age down. The server refused the
/// update ("duplicates window can not be larger then max age"), and init failed saying the
/// bucket did not exist, after it had changed the streams before it.
#[tokio::test]
async fn a_data_age_under_two_minutes_is_set_on_an_existing_bucket() {
    let cluster = Cluster::new();
    cluster.init().await;
    let init = cluster.kiln(&["init", "--data-max-age", "30s"]);
    assert_success(&init);
    let js = async_nats::jetstream::new(cluster.client().await);
    let mut stream = js.get_stream("OBJ_KILN_DATA").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(30));
    assert!(config.duplicate_window <= Duration::from_secs(30));
    let back = cluster.kiln(&["init", "--data-max-age", "7d"]);
    assert_success(&back);
    let mut stream = js.get_stream("OBJ_KILN_DATA").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
}
