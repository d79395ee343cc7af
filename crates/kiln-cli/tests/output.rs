//! `-o json` on the commands that read, and the duration-valued flags, against a real
//! nats-server and real `kiln` processes.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use common::{Cluster, assert_success, stdout};
use kiln_proto::{ErrorKind, ResultEvent, Status};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Standard output as one JSON document (the whole of it).
fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            stdout(output),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `kiln <args>` until `done` holds for its JSON output, for at most [`WAIT`].
fn json_until(cluster: &Cluster, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let out = cluster.kiln(args);
        assert_success(&out);
        let value = json(&out);
        if done(&value) {
            return value;
        }
        assert!(
            started.elapsed() < WAIT,
            "kiln {args:?} never got there: {value:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A dead letter as a worker writes it after a job's last attempt.
async fn dead_letter(cluster: &Cluster, id: &str) {
    let js = jetstream::new(cluster.client().await);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("dlq-{id}").as_str());
    headers.insert("Kiln-Job-Id", id);
    headers.insert("Kiln-Dlq-Reason", "internal: kernel panicked: boom");
    headers.insert("Kiln-Dlq-Subject", "jobs.cpu.vector_add");
    let body = format!(r#"{{"id":"{id}","params":{{"a":[1],"b":[2]}}}}"#);
    js.publish_with_headers("dlq.vector_add", headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_commands_print_one_json_document_with_values() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.aggregator();
    for i in 0..3 {
        let id = format!("json-ok-{i}");
        let args = ["submit", "vector_add", "-p", "len=8", "--id", &id, "--wait"];
        assert_success(&cluster.kiln(&args));
    }

    // kiln status: queues, workers and metrics, as numbers.
    let status = json_until(&cluster, &["status", "-o", "json"], |s| {
        s["metrics"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["kind"] == "vector_add" && m["jobs"] == 3)
        }) && s["workers"][0]["succeeded"] == 3
    });
    assert_eq!(status["queued_jobs"], 0, "{status:#}");
    assert_eq!(status["results"], 3, "{status:#}");
    assert_eq!(status["dead_letters"], 0, "{status:#}");
    let consumers: Vec<&str> = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(consumers, ["workers-gpu", "workers-cpu", "scheduler"]);
    assert_eq!(status["consumers"][1]["pending"], 0);
    assert_eq!(status["consumers"][1]["in_flight"], 0);
    let worker = &status["workers"][0];
    assert_eq!(worker["name"], "test-worker");
    assert_eq!(
        (worker["class"].as_str(), worker["failed"].as_u64()),
        (Some("cpu"), Some(0))
    );
    let metrics = &status["metrics"][0];
    assert_eq!(
        (metrics["class"].as_str(), metrics["succeeded"].as_u64()),
        (Some("cpu"), Some(3))
    );
    assert!(metrics["total_ms"]["p50"].as_f64().is_some(), "{metrics:#}");

    // kiln status <id>: where the job is, with its result.
    let job = json(&cluster.kiln(&["status", "json-ok-1", "-o", "json"]));
    assert_eq!(job["id"], "json-ok-1");
    assert_eq!(job["state"], "finished");
    assert_eq!(job["result"]["status"], "succeeded");
    assert_eq!(job["result"]["worker"], "test-worker");
    assert_eq!(job["result"]["attempt"], 1);
    assert!(job["result"]["compute_ms"].as_f64().is_some(), "{job:#}");

    // Unknown and invalid ids: exit status 2, as in text, and a JSON object saying so.
    let unknown = cluster.kiln(&["status", "json-nope", "-o", "json"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert_eq!(
        json(&unknown),
        serde_json::json!({"id": "json-nope", "state": "unknown"})
    );
    let invalid = cluster.kiln(&["status", "a/b", "--output", "json"]);
    assert_eq!(invalid.status.code(), Some(2));
    let invalid = json(&invalid);
    assert_eq!(
        (invalid["id"].as_str(), invalid["state"].as_str()),
        (Some("a/b"), Some("invalid"))
    );
    assert!(
        invalid["message"]
            .as_str()
            .unwrap()
            .contains("is not a job id")
    );

    // kiln result: the event; no result: exit 2 and a JSON object.
    let result = cluster.kiln(&["result", "json-ok-2", "-o", "json"]);
    assert_success(&result);
    let event: ResultEvent = serde_json::from_value(json(&result)).unwrap();
    assert_eq!(
        (event.id.as_str(), event.status),
        ("json-ok-2", Status::Succeeded)
    );
    assert_eq!(event.output["len"], 8, "{:#}", event.output);
    assert!(
        event.output["summary"]["l2_norm"].as_f64().is_some(),
        "{:#}",
        event.output
    );
    let missing = cluster.kiln(&["result", "json-nope", "-o", "json"]);
    assert_eq!(missing.status.code(), Some(2));
    let missing = json(&missing);
    assert_eq!(
        (missing["id"].as_str(), missing["state"].as_str()),
        (Some("json-nope"), Some("no_result"))
    );

    // kiln workers: heartbeats, with their age.
    let workers = json_until(&cluster, &["workers", "-o", "json"], |w| {
        w[0]["succeeded"] == 3
    });
    let worker = &workers[0];
    assert_eq!(workers.as_array().unwrap().len(), 1);
    assert_eq!(
        (worker["name"].as_str(), worker["device"].as_str()),
        (Some("test-worker"), Some("cpu"))
    );
    assert_eq!(
        (worker["in_flight"].as_u64(), worker["state"].as_str()),
        (Some(0), Some("serving"))
    );
    assert!(worker["capacity"].as_u64().unwrap() >= 1, "{worker:#}");
    assert!(worker["max_in_flight"].as_u64().unwrap() >= 1, "{worker:#}");
    assert!(
        worker["engines"].is_object() && worker["running"].is_array(),
        "{worker:#}"
    );
    assert!(
        worker["heartbeat_age_ms"].as_u64().unwrap() < 30_000,
        "{worker:#}"
    );
    let text = cluster.kiln(&["workers"]);
    assert_success(&text);
    assert!(stdout(&text).contains("test-worker"), "{}", stdout(&text));

    // kiln kinds: every kind, its parameters as lines.
    let kinds = json(&cluster.kiln(&["kinds", "-o", "json"]));
    let names: Vec<&str> = kinds
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    for kind in ["vector_add", "matmul", "conv2d", "train_mlp"] {
        assert!(names.contains(&kind), "{names:?}");
    }
    assert!(
        kinds[0]["params"].as_array().is_some_and(|p| !p.is_empty()),
        "{kinds:#}"
    );

    // kiln dlq list: the letters, sequence as a number.
    let empty = json(&cluster.kiln(&["dlq", "list", "-o", "json"]));
    assert_eq!(empty, serde_json::json!([]));
    dead_letter(&cluster, "json-lost-1").await;
    let letters = json(&cluster.kiln(&["dlq", "list", "-o", "json"]));
    assert_eq!(letters.as_array().unwrap().len(), 1, "{letters:#}");
    let letter = &letters[0];
    assert_eq!(letter["id"], "json-lost-1");
    assert_eq!(letter["subject"], "dlq.vector_add");
    assert_eq!(letter["original_subject"], "jobs.cpu.vector_add");
    assert_eq!(letter["reason"], "internal: kernel panicked: boom");
    assert!(
        letter["sequence"].as_u64().is_some_and(|s| s >= 1),
        "{letter:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duration_flags_take_durations_and_the_old_spellings_still_work() {
    let mut cluster = Cluster::new();
    cluster.init().await;
    let worker = [
        "worker",
        "--device",
        "cpu",
        "--ack-wait",
        "20s",
        "--drain-timeout",
        "2s",
    ];
    cluster.spawn("worker", &worker);
    cluster.spawn("aggregator", &["aggregator", "--interval", "100ms"]);
    cluster.spawn("scheduler", &["scheduler", "--refresh", "100ms"]);

    // --timeout 1ms: the job gives up at its first checkpoint.
    let args = [
        "submit",
        "train_mlp",
        "-p",
        "epochs=400",
        "--timeout",
        "1ms",
        "--wait",
    ];
    let out = cluster.kiln(&[&args[..], &["--id", "short", "--wait-timeout", "1m"]].concat());
    assert!(!out.status.success(), "a timed-out job makes --wait fail");
    let event: ResultEvent = serde_json::from_str(&stdout(&out)).unwrap();
    let error = event.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(
        error.message.contains("timeout_ms of 1"),
        "{}",
        error.message
    );

    // The older spelling, in its own unit; auto jobs routed by the scheduler.
    let old = [
        "submit",
        "vector_add",
        "-p",
        "len=8",
        "-d",
        "auto",
        "--timeout-ms",
        "60000",
        "--wait",
    ];
    let out = cluster.kiln(&[&old[..], &["--wait-timeout-s", "60", "--id", "routed"]].concat());
    assert_success(&out);
    let event: ResultEvent = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(event.status, Status::Succeeded);

    // Both spellings of one setting: refused.
    let both = cluster.kiln(&[
        "submit",
        "vector_add",
        "--timeout",
        "1s",
        "--timeout-ms",
        "9",
    ]);
    assert_eq!(both.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    // A bare number is not a duration.
    let bare = cluster.kiln(&["submit", "vector_add", "--timeout", "30"]);
    assert!(!bare.status.success());
    // A zero timeout would fail every job at its first checkpoint: refused before sending,
    // as a usage error naming the flag given.
    for zero in [&["--timeout", "0s"][..], &["--timeout-ms", "0"][..]] {
        let out = cluster.kiln(&[&["submit", "vector_add"][..], zero].concat());
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("for '{} ", zero[0]))
                && stderr.contains("must be more than 0"),
            "{stderr}"
        );
    }

    // Every job is built before the first is sent: ten billion aborted on allocation.
    // Refused as a usage error, before connecting.
    for count in ["0", "1000001", "10000000000"] {
        let out = cluster.kiln(&["submit", "vector_add", "-n", count]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("'--count <COUNT>'") && stderr.contains("1..=1000000"),
            "{stderr}"
        );
    }

    // Job i gets seed + i: one past the largest seed panicked (exit 101).
    let past = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--seed",
        "18446744073709551614",
        "-n",
        "3",
    ]);
    assert_eq!(past.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&past.stderr);
    assert!(stderr.contains("past the largest seed"), "{stderr}");
    let last = cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=4",
        "--seed",
        "18446744073709551615",
    ]);
    assert_success(&last);

    // The aggregator's 100ms interval: metrics appear; watch takes both spellings.
    let status = json_until(&cluster, &["status", "-o", "json"], |s| {
        s["metrics"].as_array().is_some_and(|m| m.len() == 2)
    });
    assert_eq!(status["dead_letters"], 0);
    for interval in [&["--interval", "500ms"][..], &["--interval-ms", "500"][..]] {
        let out = cluster.kiln(&[&["watch", "--once"][..], interval].concat());
        assert_success(&out);
        assert!(stdout(&out).contains("KILN_JOBS"), "{}", stdout(&out));
        assert!(stdout(&out).contains("train_mlp"), "{}", stdout(&out));
    }
}

/// An invalid value set in an environment variable is named as that variable (a Deployment's
/// `KILN_ACK_WAIT_S`), not as the flag nobody typed; typed, it is named as the flag.
#[test]
fn an_invalid_value_from_the_environment_names_its_variable() {
    use std::process::Command;
    let run_with = |envs: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(common::KILN)
            .args(args)
            .envs(envs.iter().copied())
            .env("NATS_URL", "nats://127.0.0.1:1")
            .output()
            .expect("run kiln");
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let run = |env: (&str, &str), args: &[&str]| run_with(&[env], args);
    let worker = ["worker", "--device", "cpu"];
    // The server URL too (it was blamed on --nats-url, with exit 1); its credentials hidden.
    let with_url = |url: &str, args: &[&str]| {
        let out = Command::new(common::KILN)
            .args(args)
            .env("NATS_URL", url)
            .output()
            .expect("run kiln");
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = with_url("http://u:secret@x:1", &["status"]);
    assert!(
        stderr
            .contains("\"http://***@x:1\" in the environment variable NATS_URL is not a NATS URL")
            && !stderr.contains("secret"),
        "{stderr}"
    );
    let stderr = with_url("nats://127.0.0.1:1", &["status", "-s", "nats://h:99999"]);
    assert!(
        stderr.contains("\"nats://h:99999\" in --nats-url is not"),
        "{stderr}"
    );
    // A command that needs no server runs whatever the variable holds.
    let kinds = Command::new(common::KILN)
        .arg("kinds")
        .env("NATS_URL", "http://x:1")
        .output()
        .expect("run kiln");
    assert!(kinds.status.success(), "{kinds:?}");
    let stderr = run(("KILN_ACK_WAIT_S", "abc"), &worker);
    assert!(
        stderr.contains(
            "invalid value 'abc' in the environment variable KILN_ACK_WAIT_S (the setting of \
             --ack-wait-s): invalid digit found in string"
        ),
        "{stderr}"
    );
    // A value from a list: the list.
    let stderr = run(("KILN_LOG_FORMAT", "xml"), &["kinds"]);
    assert!(
        stderr.contains("environment variable KILN_LOG_FORMAT (the setting of --log-format)"),
        "{stderr}"
    );
    assert!(stderr.contains("[possible values: text, json]"), "{stderr}");
    // Device classes and devices are checked as they are read, so named the same way.
    let stderr = run(("KILN_SUBMIT_DEVICE", "GPU"), &["submit", "vector_add"]);
    assert!(
        stderr.contains(
            "invalid value 'GPU' in the environment variable KILN_SUBMIT_DEVICE (the setting \
             of --device): unknown device class \"GPU\": use gpu, cpu or auto"
        ),
        "{stderr}"
    );
    let stderr = run(("KILN_DEVICE", "tpu"), &["worker"]);
    assert!(
        stderr.contains("KILN_DEVICE (the setting of --device)"),
        "{stderr}"
    );
    // Two commands' --device set alike: the one of the command run is named.
    let both = [("KILN_DEVICE", "GPU"), ("KILN_SUBMIT_DEVICE", "GPU")];
    let stderr = run_with(&both, &["submit", "vector_add"]);
    assert!(stderr.contains("variable KILN_SUBMIT_DEVICE"), "{stderr}");
    let stderr = run(("KILN_SERVE_CLASS", "auto"), &worker);
    assert!(
        stderr.contains(
            "variable KILN_SERVE_CLASS (the setting of --serve-class): workers serve gpu or cpu"
        ),
        "{stderr}"
    );
    // Typed as a short flag: clap's message.
    let stderr = run(
        ("KILN_SUBMIT_DEVICE", "GPU"),
        &["submit", "vector_add", "-dGPU"],
    );
    assert!(stderr.contains("for '--device"), "{stderr}");
    // Typed on the command line: clap's own message, naming the flag.
    let typed = [&worker[..], &["--ack-wait-s", "xyz"]].concat();
    let stderr = run(("KILN_ACK_WAIT_S", "abc"), &typed);
    assert!(
        stderr.contains("invalid value 'xyz' for '--ack-wait-s"),
        "{stderr}"
    );
    assert!(!stderr.contains("environment variable"), "{stderr}");
    // An address with no port is refused before the role starts (it was exit 1, after).
    let stderr = run(("KILN_METRICS_ADDR", "bogus"), &["scheduler"]);
    assert!(
        stderr.contains(
            "invalid value 'bogus' in the environment variable KILN_METRICS_ADDR (the setting \
             of --metrics-addr): no port: give a HOST:PORT such as 0.0.0.0:9464"
        ),
        "{stderr}"
    );
    // A flag and the older spelling's variable: the variable is named, not a flag nobody
    // typed.
    let typed = [&worker[..], &["--ack-wait", "5s"]].concat();
    let stderr = run(("KILN_ACK_WAIT_S", "5"), &typed);
    assert!(
        stderr.contains(
            "--ack-wait cannot be used with the environment variable KILN_ACK_WAIT_S \
             (--ack-wait-s): they set the same thing; give one"
        ),
        "{stderr}"
    );
}

/// A command whose reader goes away (`kiln completions bash | head -1`, `kiln watch | head`)
/// ends quietly, killed by SIGPIPE as Unix tools are, not with a panic and a backtrace.
#[test]
fn a_command_whose_reader_goes_away_ends_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::KILN)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln");
    // The reader is gone before kiln has printed anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("run kiln");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "kiln panicked:\n{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "kiln should end by SIGPIPE: {:?}\n{stderr}",
        out.status
    );
}
