//! 10,000 malformed payloads against a real worker, aggregator and scheduler: nothing crashes,
//! every payload is answered exactly once, and valid jobs sent in between all succeed.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use common::{Cluster, snapshot, wait_for_metrics};
use futures::StreamExt as _;
use kiln_proto::{ErrorKind, ResultEvent, Status};
use serde_json::{Value, json};

/// A tiny deterministic generator, so that a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
}

/// Values that are wrong for most parameters, and a few that are right and small.
fn odd_value(rng: &mut Lcg) -> Value {
    let values = [
        json!(-1),
        json!(0),
        json!(1),
        json!(2),
        json!(4294967296u64),
        json!(u64::MAX),
        json!(1e300),
        json!(-0.5),
        json!(3.5),
        json!("x"),
        json!("gaussian"),
        json!("bf16"),
        json!([]),
        json!([1, 2]),
        json!([[1, 2], [3]]),
        json!([[[1.0]]]),
        json!({}),
        json!(null),
        json!(true),
    ];
    rng.pick(&values).clone()
}

const KINDS: [&str; 6] = ["matmul", "vector_add", "conv2d", "train_mlp", "fft", "nope"];
const PARAMS: [&str; 16] = [
    "n", "m", "k", "len", "a", "b", "dtype", "batch", "channels", "height", "width", "filter",
    "kernel", "image", "epochs", "hidden",
];

/// (subject, body, content type) of payload `i`; `None` content type = no header.
fn payload(i: usize, rng: &mut Lcg) -> (String, Vec<u8>, Option<&'static str>, bool) {
    let kind = *rng.pick(&KINDS);
    let class = *rng.pick(&["cpu", "cpu", "cpu", "auto"]);
    let subject = format!("jobs.{class}.{kind}");
    match i % 8 {
        // A valid small job, which must succeed.
        0 => (
            "jobs.cpu.vector_add".into(),
            br#"{"params":{"len":16}}"#.to_vec(),
            None,
            true,
        ),
        // Random bytes.
        1 => {
            let len = rng.next() as usize % 300;
            let bytes = (0..len).map(|_| rng.next() as u8).collect();
            (subject, bytes, None, false)
        }
        // Truncated JSON.
        2 => {
            let full = format!(
                r#"{{"params":{{"n":{},"dtype":"f32"}},"seed":3}}"#,
                rng.next() % 64
            );
            let cut = rng.next() as usize % full.len();
            (subject, full.as_bytes()[..cut].to_vec(), None, false)
        }
        // Wrong content types.
        3 => {
            let ct = *rng.pick(&["text/xml", "application/x-bincode", "application/msgpack"]);
            (
                subject,
                br#"{"params":{"len":16}}"#.to_vec(),
                Some(ct),
                false,
            )
        }
        // Structured nonsense: random parameters with odd values, odd envelopes.
        _ => {
            let mut params = serde_json::Map::new();
            for _ in 0..(1 + rng.next() % 3) {
                params.insert(rng.pick(&PARAMS).to_string(), odd_value(rng));
            }
            let mut body = json!({ "params": params, "timeout_ms": 200 });
            if rng.next().is_multiple_of(5) {
                body["seed"] = odd_value(rng);
            }
            if rng.next().is_multiple_of(7) {
                body = odd_value(rng);
            }
            (subject, serde_json::to_vec(&body).unwrap(), None, false)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_malformed_payloads_are_all_answered_and_nothing_crashes() {
    const PAYLOADS: usize = 10_000;
    let mut cluster = Cluster::new();
    cluster.init().await;
    cluster.cpu_worker();
    cluster.aggregator();
    cluster.spawn("scheduler", &["scheduler", "--refresh-ms", "100"]);
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let mut results = client.subscribe("results.>").await.unwrap();

    let mut rng = Lcg(0x5eed);
    let mut valid = Vec::new();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..PAYLOADS {
        let (subject, body, content_type, is_valid) = payload(i, &mut rng);
        let id = format!("fz-{i}");
        if is_valid {
            valid.push(id.clone());
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        if let Some(ct) = content_type {
            headers.insert("Content-Type", ct);
        }
        let ack = js
            .publish_with_headers(subject, headers, body.into())
            .await
            .unwrap();
        acks.push(ack.into_future());
        if acks.len() >= 512 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(ack) = acks.next().await {
        ack.unwrap();
    }

    let mut answered: HashMap<String, ResultEvent> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while answered.len() < PAYLOADS {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(message)) = tokio::time::timeout(left, results.next()).await else {
            panic!("{} of {PAYLOADS} payloads answered", answered.len());
        };
        let event: ResultEvent = serde_json::from_slice(&message.payload).unwrap();
        if event.id.starts_with("fz-") {
            assert!(
                answered.insert(event.id.clone(), event).is_none(),
                "answered twice"
            );
        }
    }

    // Nothing crashed.
    for role in ["worker", "aggregator", "scheduler"] {
        assert!(
            cluster.child(role).try_wait().unwrap().is_none(),
            "the {role} died"
        );
    }
    // Valid jobs all succeeded; everything else failed with a specific, user-caused kind
    // (or, for the few well-formed ones among the random parameters, succeeded or timed out).
    for id in &valid {
        assert_eq!(answered[id].status, Status::Succeeded, "{:?}", answered[id]);
    }
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for event in answered.values() {
        let key = match &event.error {
            None => "succeeded".to_string(),
            Some(e) => {
                assert!(
                    matches!(
                        e.kind,
                        ErrorKind::InvalidInput | ErrorKind::TooLarge | ErrorKind::Timeout
                    ),
                    "{}: {e}",
                    event.id
                );
                assert!(!e.message.is_empty());
                e.kind.to_string()
            }
        };
        *kinds.entry(key).or_default() += 1;
    }
    eprintln!("outcomes of {PAYLOADS} payloads: {kinds:?}");
    assert!(kinds["invalid_input"] > PAYLOADS / 2, "{kinds:?}");

    // The aggregator counted each exactly once.
    let snapshots = wait_for_metrics(&client, Duration::from_secs(60), |s| {
        s.iter().map(|m| m.jobs).sum::<u64>() >= PAYLOADS as u64
    })
    .await;
    assert_eq!(
        snapshots.iter().map(|m| m.jobs).sum::<u64>(),
        PAYLOADS as u64
    );
    assert!(snapshot(&snapshots, "vector_add", "cpu").unwrap().succeeded >= valid.len() as u64);
}
