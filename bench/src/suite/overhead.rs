//! Communication overhead: what a job costs beyond its compute, per kind and size.
//!
//! Jobs run one at a time (the next is submitted when the previous result arrived), so no job
//! waits behind another: the queue wait is the system's own. For each job the client notes
//! when it published and when the result event reached it; the result event carries when the
//! job entered the stream (the server's timestamp), when the worker took it, how long it
//! computed and when it finished. On one machine all clocks are the same clock, and
//!
//! `end to end = submit + queue wait + worker handling + compute + result delivery`
//!
//! where submit is publish → stored (the PubAck), queue wait stored → taken by the worker,
//! worker handling the worker's time outside compute (decode, slot, building the result), and
//! result delivery finished → result received by the client (publish, store, deliver).
//! Transport is submit + result delivery.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use indicatif::ProgressBar;
use kiln_kernels::ComputeDevice;
use kiln_proto::{Codec, DeviceClass, ResultEvent, Status, streams};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use kiln_cli::cli::NatsArgs;
use kiln_cli::cmd::roles::LocalRoles;
use kiln_client::{JobSpec, publish_all};

/// One kind at one size.
pub struct OverheadCase {
    pub kind: &'static str,
    pub size: String,
    /// `generated` (from a seed on the worker) or `inline` (the data travels in the job).
    pub input: &'static str,
    pub params: serde_json::Value,
    pub jobs: usize,
}

/// Medians over the case's jobs, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadRow {
    pub kind: &'static str,
    pub size: String,
    pub input: &'static str,
    pub jobs: usize,
    pub job_bytes: usize,
    pub end_to_end_ms: f64,
    pub end_to_end_p90_ms: f64,
    pub compute_ms: f64,
    /// Median over jobs of end to end − compute.
    pub overhead_ms: f64,
    /// overhead / end to end (medians).
    pub overhead_share: f64,
    pub submit_ms: f64,
    pub queue_ms: f64,
    pub worker_ms: f64,
    pub result_ms: f64,
    /// submit + result delivery (medians).
    pub transport_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub method: &'static str,
    pub rows: Vec<OverheadRow>,
}

pub const METHOD: &str = "one job at a time through a private nats-server and one in-process CPU worker; \
    per job: end to end = client publish → result received; compute from the result event; \
    submit = publish → stored (server timestamp); queue wait = stored → taken by the worker; \
    worker handling = worker time outside compute; result delivery = finished → received; \
    medians over the jobs after one untimed warm-up job per case";

pub fn cases(quick: bool) -> Vec<OverheadCase> {
    let case = |kind, size: &str, input, params, jobs| OverheadCase {
        kind,
        size: size.to_owned(),
        input,
        params,
        jobs,
    };
    let inline = |len: usize| {
        let a: Vec<f32> = (0..len).map(|i| (i % 1000) as f32 * 0.5).collect();
        let b: Vec<f32> = (0..len).map(|i| 1.0 - (i % 997) as f32 * 0.25).collect();
        json!({ "a": a, "b": b })
    };
    if quick {
        return vec![
            case("vector_add", "1K", "generated", json!({"len": 1024}), 3),
            case("vector_add", "1K", "inline", inline(1024), 3),
            case("matmul", "64×64", "generated", json!({"n": 64}), 3),
            case(
                "conv2d",
                "1×3×32×32 sobel",
                "generated",
                json!({"batch": 1, "channels": 3, "height": 32, "width": 32, "filter": "sobel"}),
                3,
            ),
            case(
                "train_mlp",
                "64 samples, 1 epoch",
                "generated",
                json!({"samples": 64, "epochs": 1, "hidden": [8], "batch_size": 32}),
                2,
            ),
        ];
    }
    vec![
        case("vector_add", "1K", "generated", json!({"len": 1024}), 100),
        case("vector_add", "1M", "generated", json!({"len": 1 << 20}), 30),
        case(
            "vector_add",
            "16M",
            "generated",
            json!({"len": 16 << 20}),
            10,
        ),
        case("vector_add", "1K", "inline", inline(1024), 100),
        case("vector_add", "16K", "inline", inline(16 << 10), 30),
        case("matmul", "64×64", "generated", json!({"n": 64}), 100),
        case("matmul", "256×256", "generated", json!({"n": 256}), 30),
        case("matmul", "1024×1024", "generated", json!({"n": 1024}), 10),
        case(
            "conv2d",
            "1×3×256×256 sobel",
            "generated",
            json!({"batch": 1, "channels": 3, "height": 256, "width": 256, "filter": "sobel"}),
            30,
        ),
        case(
            "conv2d",
            "8×3×256×256 gaussian",
            "generated",
            json!({"batch": 8, "channels": 3, "height": 256, "width": 256, "filter": "gaussian"}),
            10,
        ),
        case(
            "train_mlp",
            "512 samples, 2 epochs",
            "generated",
            json!({"samples": 512, "epochs": 2}),
            10,
        ),
        case(
            "train_mlp",
            "2048 samples, 20 epochs (default)",
            "generated",
            json!({}),
            5,
        ),
    ]
}

/// Per-job times, in milliseconds.
struct Sample {
    end_to_end: f64,
    compute: f64,
    submit: f64,
    queue: f64,
    worker: f64,
    result: f64,
}

pub async fn measure(nats: &NatsArgs, quick: bool, bar: &ProgressBar) -> anyhow::Result<Section> {
    let (server, nats) = crate::private_server(nats)?;
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    let topology = kiln_cli::cmd::topology(&nats);
    streams::ensure_all(&js, &topology).await?;
    let mut roles = LocalRoles::default();
    let mut config = kiln_worker::WorkerConfig::new(ComputeDevice::Cpu);
    config.topology = topology.clone();
    roles.worker(&client, config);
    let mut results = client.subscribe("results.>").await?;

    let cases = cases(quick);
    bar.set_length(cases.iter().map(|c| c.jobs as u64 + 1).sum());
    let run = kiln_proto::new_job_id();
    let mut rows = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        bar.set_message(format!("{} {} ({})", case.kind, case.size, case.input));
        let entry = kiln_kernels::find(case.kind).context("the suite's kinds are registered")?;
        let mut samples = Vec::with_capacity(case.jobs);
        let mut job_bytes = 0;
        // Job 0 is the untimed warm-up.
        for i in 0..=case.jobs {
            let id = format!("overhead-{run}-{c}-{i}");
            let spec = JobSpec::new(
                entry,
                DeviceClass::Cpu,
                case.params.clone(),
                id,
                i as u64,
                None,
                Codec::Json,
            )?;
            job_bytes = spec.body.len();
            let what = format!("{} {}", case.kind, case.size);
            let done = one_job(&js, &mut results, spec, &what, Duration::from_secs(300)).await?;
            bar.inc(1);
            let (event, submitted, received) = (done.event, done.submitted, done.received);
            if i == 0 {
                continue;
            }
            let ms = |d: time::Duration| d.as_seconds_f64() * 1e3;
            samples.push(Sample {
                end_to_end: ms(received - submitted),
                compute: event.compute_ms,
                submit: ms(event.enqueued_at - submitted),
                queue: event.queue_ms,
                worker: event.total_ms - event.queue_ms - event.compute_ms,
                result: ms(received - event.finished_at),
            });
        }
        rows.push(row(case, job_bytes, &samples));
    }
    roles.stop().await?;
    drop(server);
    Ok(Section {
        method: METHOD,
        rows,
    })
}

/// A job that succeeded: its result event, when it was published and when the result came.
pub(super) struct Done {
    pub event: ResultEvent,
    pub submitted: OffsetDateTime,
    pub received: OffsetDateTime,
}

/// Publish `spec` and wait (up to `within`) for its result among those `results` receives;
/// an error unless the job succeeded (`what` names it).
pub(super) async fn one_job(
    js: &jetstream::Context,
    results: &mut async_nats::Subscriber,
    spec: JobSpec,
    what: &str,
    within: Duration,
) -> anyhow::Result<Done> {
    let id = spec.id.clone();
    let submitted = OffsetDateTime::now_utc();
    publish_all(js, [spec], false, || {}).await?;
    let event = wait_for(results, &id, within).await?;
    let received = OffsetDateTime::now_utc();
    anyhow::ensure!(
        event.status == Status::Succeeded,
        "{what} failed: {}",
        event.error.map(|e| e.to_string()).unwrap_or_default()
    );
    Ok(Done {
        event,
        submitted,
        received,
    })
}

/// The result event of job `id` among those `results` receives, within `within`.
pub(super) async fn wait_for(
    results: &mut async_nats::Subscriber,
    id: &str,
    within: Duration,
) -> anyhow::Result<ResultEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, results.next())
            .await
            .map_err(|_| anyhow::anyhow!("no result for job {id} within {} s", within.as_secs()))?
            .context("the result subscription ended")?;
        if let Ok(event) = serde_json::from_slice::<ResultEvent>(&message.payload)
            && event.id == id
        {
            return Ok(event);
        }
    }
}

fn row(case: &OverheadCase, job_bytes: usize, samples: &[Sample]) -> OverheadRow {
    let median = |f: &dyn Fn(&Sample) -> f64| quantile(samples.iter().map(f).collect(), 0.5);
    let end_to_end = median(&|s| s.end_to_end);
    let submit = median(&|s| s.submit);
    let result = median(&|s| s.result);
    let overhead = median(&|s| s.end_to_end - s.compute);
    OverheadRow {
        kind: case.kind,
        size: case.size.clone(),
        input: case.input,
        jobs: samples.len(),
        job_bytes,
        end_to_end_ms: end_to_end,
        end_to_end_p90_ms: quantile(samples.iter().map(|s| s.end_to_end).collect(), 0.9),
        compute_ms: median(&|s| s.compute),
        overhead_ms: overhead,
        overhead_share: if end_to_end > 0.0 {
            overhead / end_to_end
        } else {
            0.0
        },
        submit_ms: submit,
        queue_ms: median(&|s| s.queue),
        worker_ms: median(&|s| s.worker),
        result_ms: result,
        transport_ms: submit + result,
    }
}

/// The `q` quantile (nearest rank) of `values`; 0 for none.
pub fn quantile(mut values: Vec<f64>, q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(v.clone(), 0.5), 5.0);
        assert_eq!(quantile(v.clone(), 0.9), 9.0);
        assert_eq!(quantile(v, 1.0), 10.0);
        assert_eq!(quantile(vec![], 0.5), 0.0);
    }

    #[test]
    fn components_add_up_to_end_to_end() {
        let s = Sample {
            end_to_end: 10.0,
            compute: 4.0,
            submit: 1.0,
            queue: 2.0,
            worker: 0.5,
            result: 2.5,
        };
        let case = &cases(true)[0];
        let r = row(case, 100, &[s]);
        let sum = r.submit_ms + r.queue_ms + r.worker_ms + r.compute_ms + r.result_ms;
        assert!((sum - r.end_to_end_ms).abs() < 1e-9);
        assert!((r.overhead_ms - 6.0).abs() < 1e-9);
        assert!((r.overhead_share - 0.6).abs() < 1e-9);
    }
}
