//! Least privilege and TLS against a real nats-server started from the committed
//! `nats/secure/secure.conf` (and `tls.conf`): every role works as its own user, each is
//! refused what it has no business doing, unknown users are refused at connect, and TLS
//! clients verify the server while plaintext ones are turned away.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use common::{KILN, assert_success, stdout};
use futures::StreamExt as _;
use kiln_proto::streams;
use kiln_testkit::NatsServer;

/// Test passwords; the config reads them from the environment.
const USERS: [(&str, &str, &str); 5] = [
    ("admin", "KILN_ADMIN_PASSWORD", "pwAdmin4f2c9"),
    ("submitter", "KILN_SUBMITTER_PASSWORD", "pwSubmit81d0"),
    ("worker", "KILN_WORKER_PASSWORD", "pwWorker5be3"),
    ("scheduler", "KILN_SCHEDULER_PASSWORD", "pwSched02aa7"),
    ("aggregator", "KILN_AGGREGATOR_PASSWORD", "pwAggr9c41e"),
];

fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _, _)| *u == user)
        .map(|(_, _, p)| *p)
        .expect("a known user")
}

fn config(name: &str) -> PathBuf {
    kiln_testkit::workspace_root().join(format!("nats/secure/{name}"))
}

/// How a kiln process authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    User(&'a str),
    Password(&'a str, &'a str),
    /// The worker nkey (seed file written by `Secure::start`).
    WorkerNkey,
    /// No credentials at all.
    Nothing,
}

/// A server started from the committed least-privilege config, plus kiln processes.
struct Secure {
    server: NatsServer,
    dir: tempfile::TempDir,
    tls: bool,
    children: Vec<Child>,
}

impl Secure {
    fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nkey = nkeys::KeyPair::new_user();
        std::fs::write(dir.path().join("worker.nk"), nkey.seed().unwrap()).unwrap();
        let public = nkey.public_key();
        let mut env: Vec<(&str, String)> = USERS
            .iter()
            .map(|(_, var, pw)| (*var, (*pw).to_owned()))
            .collect();
        env.push(("KILN_WORKER_NKEY", public));
        let file = if tls {
            make_certificates(dir.path());
            env.push((
                "KILN_TLS_CERT",
                dir.path().join("server.pem").display().to_string(),
            ));
            env.push((
                "KILN_TLS_KEY",
                dir.path().join("server.key").display().to_string(),
            ));
            "tls.conf"
        } else {
            "secure.conf"
        };
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = NatsServer::start_with_config(&config(file), &env);
        Secure {
            server,
            dir,
            tls,
            children: Vec::new(),
        }
    }

    fn command(&self, auth: Auth, args: &[&str]) -> Command {
        let mut cmd = Command::new(KILN);
        cmd.args(args)
            .env("NATS_URL", self.server.url())
            .env("RUST_LOG", "warn")
            .env_remove("NATS_USER")
            .env_remove("NATS_PASSWORD")
            .env_remove("NATS_NKEY")
            .env_remove("NATS_CREDS")
            .env_remove("NATS_CA");
        match auth {
            Auth::User(user) => {
                cmd.env("NATS_USER", user)
                    .env("NATS_PASSWORD", password(user));
            }
            Auth::Password(user, password) => {
                cmd.env("NATS_USER", user).env("NATS_PASSWORD", password);
            }
            Auth::WorkerNkey => {
                cmd.env("NATS_NKEY", self.dir.path().join("worker.nk"));
            }
            Auth::Nothing => {}
        }
        if self.tls {
            cmd.env("NATS_CA", self.dir.path().join("ca.pem"));
        }
        cmd
    }

    fn kiln(&self, auth: Auth, args: &[&str]) -> Output {
        self.command(auth, args).output().expect("run kiln")
    }

    fn spawn(&mut self, auth: Auth, args: &[&str]) {
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("kiln-{}.log", self.children.len())),
        )
        .unwrap();
        let child = self
            .command(auth, args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kiln");
        self.children.push(child);
    }

    fn init(&self) {
        assert_success(&self.kiln(Auth::User("admin"), &["init"]));
    }

    /// A client as `user`, and the server errors (permission violations) it is told about.
    async fn client(&self, user: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        let client =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password(user).into())
                .event_callback(move |event| {
                    let sink = sink.clone();
                    async move {
                        if let async_nats::Event::ServerError(e) = event {
                            sink.lock().unwrap().push(e.to_string());
                        }
                    }
                })
                .connect(self.server.url())
                .await
                .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        (client, errors)
    }

    /// Violations the server logged so far.
    fn violations(&self) -> Vec<String> {
        self.server
            .log()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Secure {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 / localhost, made with the openssl CLI.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (install it: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        &[
            &["req", "-x509", "-nodes", "-days", "1"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=kiln test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ]);
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Wait until `errors` holds one mentioning `subject`.
async fn saw_violation(errors: &Mutex<Vec<String>>, subject: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("Permissions Violation") && e.contains(subject))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn jobs_in_stream(admin: &async_nats::Client) -> u64 {
    let js = jetstream::new(admin.clone());
    let mut stream = js.get_stream(streams::STREAM_JOBS).await.unwrap();
    stream.info().await.unwrap().state.messages
}

fn assert_refused_publish(output: &Output, subject: &str) {
    assert!(!output.status.success(), "{}", stdout(output));
    let err = stderr(output);
    assert!(
        err.contains(&format!("Permissions Violation for Publish to \"{subject}")),
        "stderr does not name the refused subject {subject}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_works_as_its_own_user_without_a_single_violation() {
    let mut secure = Secure::start(false);
    secure.init();
    secure.spawn(
        Auth::User("worker"),
        &[
            "worker",
            "--device",
            "cpu",
            "--name",
            "pw-worker",
            "--no-warmup",
        ],
    );
    secure.spawn(
        Auth::WorkerNkey,
        &[
            "worker",
            "--device",
            "cpu",
            "--name",
            "nkey-worker",
            "--no-warmup",
        ],
    );
    secure.spawn(
        Auth::User("aggregator"),
        &["aggregator", "--interval-ms", "100"],
    );
    secure.spawn(Auth::User("scheduler"), &["scheduler"]);
    let submitter = Auth::User("submitter");

    // Both workers heartbeat (one with a password, one with an nkey).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = secure.kiln(submitter, &["status"]);
        assert_success(&out);
        if stdout(&out).contains("workers: 2 live") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two workers never showed up:\n{}",
            stdout(&out)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    for (id, device) in [("sec-cpu", "cpu"), ("sec-auto", "auto")] {
        let out = secure.kiln(
            submitter,
            &[
                "submit",
                "vector_add",
                "-p",
                "len=1000",
                "--device",
                device,
                "--id",
                id,
                "--wait",
            ],
        );
        assert_success(&out);
        assert!(
            stdout(&out).contains("\"status\": \"succeeded\""),
            "{device}: {}",
            stdout(&out)
        );
    }
    let out = secure.kiln(submitter, &["result", "sec-auto"]);
    assert_success(&out);
    assert!(stdout(&out).contains("sec-auto"), "{}", stdout(&out));
    let out = secure.kiln(submitter, &["status", "sec-cpu"]);
    assert_success(&out);
    assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));
    let out = secure.kiln(submitter, &["cancel", "sec-later"]);
    assert_success(&out);
    let out = secure.kiln(submitter, &["status", "sec-later"]);
    assert_success(&out);
    assert!(
        stdout(&out).contains("cancel requested"),
        "{}",
        stdout(&out)
    );

    // A submitter stores, lists and removes objects, abandoned chunks included.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.csv");
    std::fs::write(&file, "1,2\n3,4\n").unwrap();
    for args in [
        &["put", file.to_str().unwrap(), "--name", "mine/x.csv"][..],
        &["ls", "mine/"],
        &["rm", "--prefix", "mine/", "--orphans"],
    ] {
        let out = secure.kiln(submitter, args);
        assert_success(&out);
        if args[0] == "ls" {
            assert!(stdout(&out).contains("mine/x.csv"), "{}", stdout(&out));
        }
    }

    // The aggregator counted both (it may publish and ack as its own user).
    let (admin, _) = secure.client("admin").await;
    common::wait_for_metrics(&admin, Duration::from_secs(60), |s| {
        common::snapshot(s, "vector_add", "cpu").is_some_and(|m| m.jobs == 2)
    })
    .await;
    // The aggregator may read results it never received in one pass of an ordered consumer
    // (what it does after a delivery was lost; no fault here makes it, so it is done by hand).
    let (aggregator, _) = secure.client("aggregator").await;
    let results = async_nats::jetstream::new(aggregator)
        .get_stream(streams::STREAM_RESULTS)
        .await
        .unwrap();
    let reader = results
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            name: Some(format!("{}-holes", streams::CONSUMER_AGGREGATOR)),
            filter_subject: "results.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut read = reader.messages().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut read))
        .await
        .expect("a result within 10 s")
        .unwrap()
        .unwrap();
    assert!(first.subject.starts_with("results."), "{}", first.subject);
    // A worker may read a job's result by its subject (it looks one up for a job delivered
    // again, handed back or given up on; no fault here makes one, so it is done by hand).
    let (worker, _) = secure.client("worker").await;
    let answered = async_nats::jetstream::new(worker)
        .get_stream_no_info(streams::STREAM_RESULTS)
        .await
        .unwrap()
        .get_last_raw_message_by_subject("results.vector_add.sec-cpu")
        .await
        .unwrap();
    let answered: kiln_proto::ResultEvent = serde_json::from_slice(&answered.payload).unwrap();
    assert_eq!(answered.id, "sec-cpu");
    // Nothing any role did was refused: the config grants exactly what kiln calls.
    assert_eq!(secure.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cannot_publish_jobs_for_the_scheduler() {
    let secure = Secure::start(false);
    secure.init();
    // Workers may queue an unfinished job again on its own class's subject (a hand-back when
    // they stop), never on the scheduler's.
    let out = secure.kiln(
        Auth::User("worker"),
        &[
            "submit",
            "vector_add",
            "-p",
            "len=10",
            "--id",
            "forged",
            "--device",
            "auto",
        ],
    );
    assert_refused_publish(&out, "jobs.auto.vector_add");

    let (worker, errors) = secure.client("worker").await;
    worker
        .publish("jobs.auto.matmul", "{\"params\":{\"n\":4}}".into())
        .await
        .unwrap();
    worker.flush().await.unwrap();
    assert!(saw_violation(&errors, "jobs.auto.matmul").await);
    // The same worker may publish results (its job).
    let (admin, _) = secure.client("admin").await;
    assert_eq!(jobs_in_stream(&admin).await, 0, "a forged job was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submitter_cannot_consume_jobs_read_dead_letters_or_delete_streams() {
    let secure = Secure::start(false);
    secure.init();
    assert_success(&secure.kiln(
        Auth::User("submitter"),
        &["submit", "vector_add", "-p", "len=10", "--id", "queued-1"],
    ));
    let (admin, _) = secure.client("admin").await;
    assert_eq!(jobs_in_stream(&admin).await, 1);

    let (client, errors) = secure.client("submitter").await;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client);
    let jobs = js.get_stream(streams::STREAM_JOBS).await.unwrap();
    // Its own consumer on the jobs…
    let created = jobs
        .create_consumer(consumer::pull::Config {
            durable_name: Some("thief".into()),
            filter_subject: "jobs.>".into(),
            ..Default::default()
        })
        .await;
    assert!(
        created.is_err(),
        "a submitter created a consumer on KILN_JOBS"
    );
    assert!(saw_violation(&errors, "$JS.API.CONSUMER.CREATE.KILN_JOBS").await);
    // …or pulling from the workers' one.
    let workers: consumer::PullConsumer = jobs
        .get_consumer(streams::CONSUMER_WORKERS_CPU)
        .await
        .unwrap();
    let mut batch = workers
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut taken = 0;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(3), batch.next()).await {
        if message.is_ok() {
            taken += 1;
        }
    }
    assert_eq!(taken, 0, "a submitter pulled a job");
    assert!(saw_violation(&errors, "$JS.API.CONSUMER.MSG.NEXT.KILN_JOBS.workers-cpu").await);
    // The aggregator's consumer is protected too.
    let results = js.get_stream(streams::STREAM_RESULTS).await.unwrap();
    let aggregator: consumer::PullConsumer = results
        .get_consumer(streams::CONSUMER_AGGREGATOR)
        .await
        .unwrap();
    let _ = aggregator
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await;
    assert!(saw_violation(&errors, "$JS.API.CONSUMER.MSG.NEXT.KILN_RESULTS.aggregator").await);
    // Nor can it be replaced through a create request with no consumer name in its subject,
    // naming the aggregator's in its body with another filter.
    let body = serde_json::json!({
        "stream_name": "KILN_RESULTS",
        "config": {
            "name": "aggregator",
            "durable_name": "aggregator",
            "filter_subject": "results.nothing",
            "ack_policy": "explicit"
        }
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        js.client().request(
            "$JS.API.CONSUMER.CREATE.KILN_RESULTS",
            serde_json::to_vec(&body).unwrap().into(),
        ),
    )
    .await;
    assert!(saw_violation(&errors, "$JS.API.CONSUMER.CREATE.KILN_RESULTS").await);
    // kiln's copies of jobs (whose Kiln-* headers workers believe) are kiln's own.
    let copy = js
        .publish("jobs.cpu.vector_add.copy", r#"{"params":{"len":4}}"#.into())
        .await;
    if let Ok(ack) = copy {
        assert!(ack.await.is_err(), "a submitter stored a copy of a job");
    }
    assert!(saw_violation(&errors, "jobs.cpu.vector_add.copy").await);

    // Dead letters are for operators.
    let out = secure.kiln(Auth::User("submitter"), &["dlq", "list"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    eprintln!("kiln dlq list as submitter: {}", stderr(&out));
    let dlq = js.get_stream(streams::STREAM_DLQ).await.unwrap();
    let reader = dlq
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "dlq.>".into(),
            ..Default::default()
        })
        .await;
    assert!(reader.is_err(), "a submitter made a reader on KILN_DLQ");
    assert!(saw_violation(&errors, "$JS.API.CONSUMER.CREATE.KILN_DLQ").await);

    // Deleting streams or consumers is refused.
    assert!(js.delete_stream(streams::STREAM_JOBS).await.is_err());
    assert!(saw_violation(&errors, "$JS.API.STREAM.DELETE.KILN_JOBS").await);
    assert!(
        js.delete_consumer_from_stream(streams::CONSUMER_AGGREGATOR, streams::STREAM_RESULTS)
            .await
            .is_err()
    );

    // The job is still queued for the workers, and the streams and consumers are intact.
    let admin_js = jetstream::new(admin.clone());
    let stream = admin_js.get_stream(streams::STREAM_JOBS).await.unwrap();
    let mut info = stream
        .consumer_info(streams::CONSUMER_WORKERS_CPU)
        .await
        .unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (1, 0));
    assert!(stream.consumer_info("thief").await.is_err());
    info = admin_js
        .get_stream(streams::STREAM_RESULTS)
        .await
        .unwrap()
        .consumer_info(streams::CONSUMER_AGGREGATOR)
        .await
        .unwrap()
        .clone();
    assert_eq!(info.name, streams::CONSUMER_AGGREGATOR);
    assert_eq!(info.config.filter_subject, "results.>");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_and_wrong_passwords_are_refused_at_connect() {
    let secure = Secure::start(false);
    for auth in [
        Auth::Password("nobody", "guess"),
        Auth::Password("worker", "wrong-password"),
    ] {
        let out = secure.kiln(auth, &["status"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("refused these credentials"),
            "{}",
            stderr(&out)
        );
    }
    // A service does not wait forever for credentials that will never work.
    let out = secure.kiln(
        Auth::Password("worker", "wrong-password"),
        &["worker", "--device", "cpu", "--no-warmup"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("refused these credentials"));
    // No credentials at all: said so, not that these were refused.
    let out = secure.kiln(Auth::Nothing, &["status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("requires credentials, and none were given: give --user/--password"),
        "{}",
        stderr(&out)
    );
    let refused = async_nats::connect(secure.server.url()).await;
    assert!(matches!(
        refused.map_err(|e| e.kind()),
        Err(async_nats::ConnectErrorKind::AuthorizationViolation)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_that_may_not_create_streams_say_to_run_kiln_init() {
    let secure = Secure::start(false);
    // No `kiln init` yet: the worker may not create what it needs.
    let out = secure.kiln(
        Auth::User("worker"),
        &["worker", "--device", "cpu", "--no-warmup"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("stream KILN_JOBS does not exist") && err.contains("run `kiln init`"),
        "{err}"
    );
    // After the admin's init the same user starts (it finds everything and creates nothing).
    secure.init();
    let out = secure.kiln(Auth::User("submitter"), &["status"]);
    assert_success(&out);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_clients_verify_the_server_and_plaintext_is_refused() {
    let mut secure = Secure::start(true);
    secure.init();
    secure.spawn(
        Auth::User("worker"),
        &[
            "worker",
            "--device",
            "cpu",
            "--name",
            "tls-worker",
            "--no-warmup",
        ],
    );
    let out = secure.kiln(
        Auth::User("submitter"),
        &[
            "submit",
            "vector_add",
            "-p",
            "len=100",
            "--id",
            "tls-1",
            "--wait",
        ],
    );
    assert_success(&out);
    assert!(stdout(&out).contains("\"status\": \"succeeded\""));

    // Without the CA the server's certificate is not trusted.
    let out = secure
        .command(Auth::User("submitter"), &["status"])
        .env_remove("NATS_CA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    // A CA file that holds no PEM is named as such, before any handshake (it was reported
    // as an unknown issuer).
    let der = secure.dir.path().join("ca.der");
    std::fs::write(&der, [0x30u8, 0x82, 0x01, 0x0a]).unwrap();
    let out = secure
        .command(Auth::User("submitter"), &["status"])
        .env("NATS_CA", &der)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ca.der holds no PEM block"),
        "{}",
        stderr(&out)
    );

    // A plaintext client gets no further than the server's INFO, which demands TLS.
    let stream = TcpStream::connect(("127.0.0.1", secure.server.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    let user = "submitter";
    // The server may already have closed the connection (a broken pipe here is a refusal too);
    // if the CONNECT gets through, the answer is not a PONG.
    let sent = write!(
        &stream,
        "CONNECT {{\"verbose\":false,\"user\":\"{user}\",\"pass\":\"{}\"}}\r\nPING\r\n",
        password(user)
    );
    let mut answer = String::new();
    if sent.is_ok() {
        let _ = reader.read_line(&mut answer);
    }
    assert!(!answer.starts_with("PONG"), "plaintext accepted: {answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_wants_the_tls_handshake_first_is_reached_with_tls_first() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let file = dir.path().join("tls-first.conf");
    std::fs::write(
        &file,
        format!(
            "jetstream {{ store_dir: $KILN_STORE_DIR }}\n\
             tls {{ cert_file: \"{0}/server.pem\", key_file: \"{0}/server.key\", \
             handshake_first: true }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let server = NatsServer::start_with_config(&file, &[]);
    let ca = dir.path().join("ca.pem");
    let kiln = |args: &[&str]| {
        Command::new(KILN)
            .args(args)
            .env("NATS_URL", server.url())
            .env("NATS_CA", &ca)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    // The server waits for a TLS handshake before anything else: a client that reads its
    // INFO first gets nowhere.
    let out = kiln(&["status"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = kiln(&["--tls-first", "init"]);
    assert_success(&out);
    let out = kiln(&["--tls-first", "status"]);
    assert_success(&out);
    assert!(stdout(&out).contains("KILN_JOBS"), "{}", stdout(&out));
}

/// A user who may not read kiln's streams is told the request failed, not that kiln's streams
/// do not exist: `kiln status`, `kiln result` and `kiln dlq list` each said to run `kiln init`,
/// which without the operator's flags resets every limit to its default.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_may_not_read_the_streams_is_not_told_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("narrow.conf");
    std::fs::write(
        &file,
        "jetstream { store_dir: $KILN_STORE_DIR }\n\
         accounts { KILN { jetstream: enabled, users: [\n\
           { user: admin, password: pwAdminNarrow1 }\n\
           { user: narrow, password: pwNarrow1, permissions: {\n\
               publish: [\"jobs.*.*\"], subscribe: [\"_INBOX.>\"] } }\n\
         ] } }\n",
    )
    .unwrap();
    let server = NatsServer::start_with_config(&file, &[]);
    let kiln = |user: &str, password: &str, args: &[&str]| {
        Command::new(KILN)
            .args(args)
            .env("NATS_URL", server.url())
            .env("NATS_USER", user)
            .env("NATS_PASSWORD", password)
            .env("RUST_LOG", "error")
            .env_remove("NATS_CONTEXT")
            .output()
            .unwrap()
    };
    assert_success(&kiln("admin", "pwAdminNarrow1", &["init"]));
    for args in [&["status"][..], &["result", "some-job"], &["dlq", "list"]] {
        let out = kiln("narrow", "pwNarrow1", args);
        let said = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {}", stdout(&out));
        assert!(!said.contains("kiln init"), "{args:?}: {said}");
        assert!(said.contains("reading KILN_"), "{args:?}: {said}");
    }
}

/// Credentials in `NATS_URL` are never shown, `--help` included (it printed the variable's
/// value, password and all, as the default of --nats-url).
#[test]
fn help_does_not_show_the_credentials_in_nats_url() {
    for args in [
        &["status", "--help"][..],
        &["worker", "--help"],
        &["--help"],
    ] {
        let out = Command::new(KILN)
            .args(args)
            .env("NATS_URL", "nats://admin:s3cretPw@127.0.0.1:4222")
            .output()
            .unwrap();
        assert_success(&out);
        let help = stdout(&out);
        assert!(help.contains("NATS_URL"), "{args:?}: {help}");
        assert!(!help.contains("s3cretPw"), "{args:?}: {help}");
    }
}

/// Reads the documented flows make, allowed: the Python client's object reads look up the
/// stream by subject (`$JS.API.STREAM.NAMES`; a submitter's `client.get` timed out), and an
/// aggregator reads the last message of a snapshot subject that holds another's from the
/// stream (it was refused, and the aggregator stood by for nothing).
#[tokio::test(flavor = "multi_thread")]
async fn the_reads_of_documented_flows_are_allowed() {
    let secure = Secure::start(false);
    secure.init();
    let (client, errors) = secure.client("submitter").await;
    let js = jetstream::new(client);
    let stream = js.stream_by_subject("$O.KILN_DATA.C.x").await;
    assert_eq!(stream.unwrap(), "OBJ_KILN_DATA");
    let (client, aggregator_errors) = secure.client("aggregator").await;
    let js = jetstream::new(client);
    let metrics = js.get_stream(streams::STREAM_METRICS).await.unwrap();
    let last = metrics
        .get_last_raw_message_by_subject("metrics.vector_add.cpu")
        .await;
    assert_eq!(
        last.map(|_| ()).map_err(|e| e.kind()),
        Err(async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock());
    assert!(
        aggregator_errors.lock().unwrap().is_empty(),
        "{:?}",
        aggregator_errors.lock()
    );
}

/// The scheduler's user may read `kiln cancel`'s marks: a held auto job cancelled is answered
/// `cancelled` at its next try. The lookup was refused, and the job held for two minutes,
/// each try stalling the routing loop for a timeout.
#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_answers_a_held_job_cancelled_as_its_own_user() {
    let mut secure = Secure::start(false);
    let admin = Auth::User("admin");
    assert_success(&secure.kiln(admin, &["init", "--max-queued-jobs", "2"]));
    let submitter = Auth::User("submitter");
    let submit = [
        "submit",
        "vector_add",
        "-d",
        "auto",
        "-p",
        "len=4",
        "-n",
        "2",
        "--id",
        "sh",
    ];
    assert_success(&secure.kiln(submitter, &submit));
    // Started once the queue is full, so that it holds both (see scheduler.rs).
    secure.spawn(Auth::User("scheduler"), &["scheduler"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_success(&secure.kiln(submitter, &["cancel", "sh-0"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = secure.kiln(submitter, &["result", "sh-0"]);
        if out.status.success() {
            let event: kiln_proto::ResultEvent = serde_json::from_str(&stdout(&out)).unwrap();
            let error = event.error.expect("cancelled");
            assert_eq!(error.kind, kiln_proto::ErrorKind::Cancelled, "{error:?}");
            break;
        }
        assert!(Instant::now() < deadline, "sh-0 was not answered cancelled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
