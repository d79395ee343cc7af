//! `kiln-bench batching`: small vector_add jobs on one worker with dynamic batching off and
//! on, measured in the same run: throughput of a burst published at once, and the end-to-end
//! latency of lone jobs sent one at a time (what the batch window adds to them). Beside them,
//! the raw JetStream ceiling of the same burst on the same server (the pipeline's, on kiln's
//! stream settings with a connection per role): what any number of single-job messages can
//! reach there, and so the most batching could multiply the one-by-one throughput by.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use kiln_kernels::ComputeDevice;
use kiln_proto::{Codec, HEADER_MSG_ID, streams};
use serde::Serialize;

use crate::cli::BatchingArgs;
use kiln_cli::cli::NatsArgs;

/// One setting's figures.
#[derive(Debug, Clone, Serialize)]
struct Setting {
    batch_window_ms: f64,
    jobs: u64,
    jobs_per_s: f64,
    lone_jobs: u64,
    lone_p50_ms: f64,
    lone_p99_ms: f64,
    lone_max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    machine: String,
    device: String,
    len: u64,
    settings: Vec<Setting>,
    /// Burst throughput with batching ÷ without.
    speedup: f64,
    /// Lone-job p50 with batching − without, ms: at most the window.
    lone_p50_added_ms: f64,
    /// The raw JetStream flow of the same burst (same job and result sizes) on this server,
    /// jobs/s.
    ceiling_jobs_per_s: f64,
    /// Burst throughput with batching ÷ that ceiling.
    batched_share_of_ceiling: f64,
    /// The ceiling ÷ the burst throughput without batching: the most any batching of jobs sent
    /// one message each could multiply it by on this machine.
    ceiling_over_one_by_one: f64,
}

pub async fn run(nats: &NatsArgs, args: BatchingArgs) -> anyhow::Result<ExitCode> {
    let device = kiln_cli::cmd::worker::parse_device(&args.device)?;
    let (_server, nats) = crate::private_server(nats)?;
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    streams::ensure_all(&js, &kiln_proto::Topology::default()).await?;
    let machine = crate::machine::describe_machine();
    println!("machine: {machine}");
    println!(
        "{} vector_add jobs of len {} at once, then {} one at a time, on {device}; batching off, then --batch-window {:?}",
        args.jobs, args.len, args.lone, args.window
    );
    let mut settings = Vec::new();
    for window in [Duration::ZERO, args.window] {
        settings.push(measure(&nats, &client, &device, window, &args).await?);
    }
    let ceiling = ceiling_rate(&nats, &js, &args).await?;
    let (off, on) = (&settings[0], &settings[1]);
    let report = Report {
        machine,
        device: device.to_string(),
        len: args.len,
        speedup: on.jobs_per_s / off.jobs_per_s,
        lone_p50_added_ms: on.lone_p50_ms - off.lone_p50_ms,
        settings: settings.clone(),
        ceiling_jobs_per_s: ceiling,
        batched_share_of_ceiling: on.jobs_per_s / ceiling,
        ceiling_over_one_by_one: ceiling / off.jobs_per_s,
    };
    println!();
    println!(
        "{:>14} {:>10} {:>14} {:>14} {:>14}",
        "batch window", "jobs/s", "lone p50 ms", "lone p99 ms", "lone max ms"
    );
    for s in &settings {
        println!(
            "{:>11.3} ms {:>10.0} {:>14.3} {:>14.3} {:>14.3}",
            s.batch_window_ms, s.jobs_per_s, s.lone_p50_ms, s.lone_p99_ms, s.lone_max_ms
        );
    }
    println!(
        "with batching / without: {:.3}× the burst throughput; a lone job's p50 {:+.3} ms (window {:.3} ms)",
        report.speedup,
        report.lone_p50_added_ms,
        args.window.as_secs_f64() * 1000.0
    );
    println!(
        "JetStream ceiling of the same burst on this server: {:.0} jobs/s; with batching kiln \
         reached {:.3} of it; one message per job cannot go past {:.3}× the throughput without \
         batching here",
        report.ceiling_jobs_per_s, report.batched_share_of_ceiling, report.ceiling_over_one_by_one
    );
    if let Some(path) = &args.json {
        crate::write_json(path, &report)?;
        println!("figures written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The raw JetStream ceiling of the burst: `args.jobs` messages of a job's size through
/// streams set up as kiln's, a result of a real result's size for each, a connection per role
/// ([`crate::pipeline::ceiling`]); jobs/s.
async fn ceiling_rate(
    nats: &NatsArgs,
    js: &jetstream::Context,
    args: &BatchingArgs,
) -> anyhow::Result<f64> {
    let kind = kiln_kernels::find("vector_add").context("vector_add is registered")?;
    let meta = kiln_kernels::JobMeta {
        id: Some(format!("{}-0", kiln_proto::new_job_id())),
        seed: Some(0),
        ..Default::default()
    };
    let job_bytes = kind
        .encode_job(serde_json::json!({"len": args.len}), meta, Codec::Json)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .len();
    let shape = crate::pipeline::Shape {
        jobs: args.jobs,
        job_bytes,
        result_bytes: crate::pipeline::sample_result_bytes(args.len)?,
        streams: crate::pipeline::Streams::Kiln,
    };
    let roles = crate::pipeline::separate_roles(nats, js).await?;
    println!("the JetStream ceiling of the same burst (kiln's stream settings, a role each)");
    let topology = kiln_proto::Topology::default();
    let seconds = crate::pipeline::ceiling(&roles, &topology, shape, 0).await?;
    Ok(args.jobs as f64 / seconds)
}

/// One worker with `window`: a warm-up job, the burst, then the lone jobs.
async fn measure(
    nats: &NatsArgs,
    client: &async_nats::Client,
    device: &ComputeDevice,
    window: Duration,
    args: &BatchingArgs,
) -> anyhow::Result<Setting> {
    let mut config = kiln_worker::WorkerConfig::new(device.clone());
    config.batch_window = window;
    config.warmup = false;
    let worker_client = kiln_client::connect(&nats.connect_options()).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(kiln_worker::run(worker_client, config, stopped));
    let tag = kiln_proto::new_job_id();
    // This run's worker is the only one answering on this private server.
    let mut results = client.subscribe("results.vector_add.*").await?;
    let js = jetstream::new(client.clone());
    let subject = kiln_proto::subject::job(device.class(), "vector_add");
    let job = |i: u64| -> anyhow::Result<(String, Vec<u8>)> {
        let id = format!("{tag}-{i}");
        let meta = kiln_kernels::JobMeta {
            id: Some(id.clone()),
            seed: Some(i),
            ..Default::default()
        };
        let kind = kiln_kernels::find("vector_add").context("vector_add is registered")?;
        let body = kind
            .encode_job(serde_json::json!({"len": args.len}), meta, Codec::Json)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((id, body))
    };
    // A first job: the device and the worker are up, and one kernel compiled.
    send(&js, &subject, job(u64::MAX)?).await?.await?;
    next_result(&mut results).await?;

    let started = Instant::now();
    let mut acks = Vec::with_capacity(args.jobs as usize);
    for i in 0..args.jobs {
        acks.push(send(&js, &subject, job(i)?).await?);
    }
    for ack in acks {
        ack.await?;
    }
    for _ in 0..args.jobs {
        next_result(&mut results).await?;
    }
    let jobs_per_s = args.jobs as f64 / started.elapsed().as_secs_f64();

    let mut lone = Histogram::<u64>::new(3)?;
    for i in 0..args.lone {
        let sent = Instant::now();
        send(&js, &subject, job(args.jobs + i)?).await?.await?;
        next_result(&mut results).await?;
        lone.record(sent.elapsed().as_micros() as u64)?;
    }
    let _ = stop.send(());
    worker.await??;
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(Setting {
        batch_window_ms: window.as_secs_f64() * 1000.0,
        jobs: args.jobs,
        jobs_per_s,
        lone_jobs: args.lone,
        lone_p50_ms: ms(lone.value_at_quantile(0.5)),
        lone_p99_ms: ms(lone.value_at_quantile(0.99)),
        lone_max_ms: ms(lone.max()),
    })
}

/// Publish a job to `subject` as any client would; the future is its PubAck.
async fn send(
    js: &jetstream::Context,
    subject: &str,
    (id, body): (String, Vec<u8>),
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_MSG_ID, id.as_str());
    Ok(js
        .publish_with_headers(subject.to_owned(), headers, body.into())
        .await?)
}

async fn next_result(results: &mut async_nats::Subscriber) -> anyhow::Result<()> {
    let message = tokio::time::timeout(Duration::from_secs(120), results.next())
        .await
        .context("no result within 2 minutes")?
        .context("the result subscription ended")?;
    let event: kiln_proto::ResultEvent = serde_json::from_slice(&message.payload)?;
    anyhow::ensure!(
        event.status == kiln_proto::Status::Succeeded,
        "job {} failed: {:?}",
        event.id,
        event.error
    );
    Ok(())
}
