//! `kiln status`: queues, consumers and the metrics table, once.

use std::fmt::Write as _;
use std::process::ExitCode;

use async_nats::jetstream;
use kiln_proto::streams::{self, STREAM_DLQ, STREAM_JOBS, STREAM_RESULTS};
use kiln_proto::{DeviceClass, JobState, Phase};

use crate::cli::{NatsArgs, StatusArgs};

pub async fn run(nats: &NatsArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    if let Some(id) = &args.id
        && let Err(message) = super::check_job_id(id)
    {
        eprintln!("kiln: {message}");
        return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
    }
    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client);
    match args.id {
        None => print!("{}", overview(&js).await?),
        Some(id) => {
            let place = locate(&js, &id).await?;
            println!("{}", place.describe(&id));
            // As `kiln result`: a job kiln knows nothing of is not found.
            if matches!(place, Place::Unknown) {
                return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a job is.
pub enum Place {
    /// It has a result.
    Finished(Box<kiln_proto::ResultEvent>),
    /// Its final state is recorded, but its result is no longer stored.
    Gone(JobState),
    /// A live worker holds it: the line saying where.
    Running(String),
    /// Marked cancelled, and neither finished nor running.
    CancelRequested,
    /// Recorded as queued.
    Queued(JobState),
    /// No record, no result, no live worker holds it.
    Unknown,
}

impl Place {
    /// One line for `kiln status <id>`.
    pub fn describe(&self, id: &str) -> String {
        match self {
            Place::Finished(event) => finished(id, event),
            Place::Gone(state) => format!(
                "{id}: {:?}, but its result is no longer stored",
                state.phase
            )
            .to_lowercase(),
            Place::Running(line) => line.clone(),
            Place::CancelRequested => format!(
                "{id}: cancel requested; it will be answered `cancelled` when a worker takes it"
            ),
            Place::Queued(state) => format!(
                "{id}: queued on jobs.{}.{} since {}",
                state.class,
                state.kind,
                state
                    .at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
            Place::Unknown => {
                format!("{id}: unknown: no record, no result and no live worker holds it")
            }
        }
    }
}

/// Where job `id` is: its result (found by its subject), else the live worker holding it
/// (from the heartbeats, at most 2 s old), else cancel requested, queued (from the record
/// `kiln submit` keeps in `KILN_STATE`) or unknown.
pub async fn locate(js: &jetstream::Context, id: &str) -> anyhow::Result<Place> {
    if let Some(event) = super::result::find(js, id, None).await? {
        return Ok(Place::Finished(Box::new(event)));
    }
    if let Some(line) = running(js, id).await {
        // A result stored since the first look wins over a heartbeat not yet refreshed.
        if let Some(event) = super::result::find(js, id, None).await? {
            return Ok(Place::Finished(Box::new(event)));
        }
        return Ok(Place::Running(line));
    }
    let cancelled = match js.get_key_value(kiln_proto::BUCKET_CANCEL).await {
        Ok(store) => store
            .get(kiln_proto::job_key(id))
            .await
            .ok()
            .flatten()
            .is_some(),
        Err(_) => false,
    };
    if cancelled {
        return Ok(Place::CancelRequested);
    }
    Ok(match super::result::state(js, id).await {
        Some(state) if state.phase == Phase::Queued => Place::Queued(state),
        Some(state) => Place::Gone(state),
        None => Place::Unknown,
    })
}

/// "succeeded / failed / cancelled on <device> (<worker>, attempt N[, replay N]) in … ms".
fn finished(id: &str, event: &kiln_proto::ResultEvent) -> String {
    let status = match (&event.status, &event.error) {
        (kiln_proto::Status::Failed, Some(e)) if e.kind == kiln_proto::ErrorKind::Cancelled => {
            format!("cancelled ({})", e.message)
        }
        (kiln_proto::Status::Failed, Some(e)) => format!("failed ({}: {})", e.kind, e.message),
        (kiln_proto::Status::Failed, None) => "failed".to_owned(),
        (kiln_proto::Status::Succeeded, _) => "succeeded".to_owned(),
    };
    let replay = match event.replay {
        0 => String::new(),
        n => format!(", replay {n}"),
    };
    format!(
        "{id}: {status} on {} ({}, attempt {}{replay}) in {:.3} ms",
        event.device, event.worker, event.attempt, event.total_ms
    )
}

/// "running …" when a live worker's heartbeat lists job `id`.
async fn running(js: &jetstream::Context, id: &str) -> Option<String> {
    let workers = streams::live_workers(js).await.unwrap_or_default();
    workers.iter().find_map(|w| {
        w.running.iter().find(|j| j.id == id).map(|job| {
            format!(
                "{id}: running ({}) on {} ({}), attempt {}",
                job.kind, w.device, w.name, job.attempt
            )
        })
    })
}

/// Queue and consumer state, then the per-kind metrics table.
pub async fn overview(js: &jetstream::Context) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut jobs = match js.get_stream(STREAM_JOBS).await {
        Ok(stream) => stream,
        Err(_) => anyhow::bail!("kiln's streams do not exist yet on this server; run `kiln init`"),
    };
    let info = jobs.info().await?;
    let _ = writeln!(
        out,
        "{STREAM_JOBS}: {} job(s) queued, {} bytes",
        info.state.messages, info.state.bytes
    );
    for class in [DeviceClass::Gpu, DeviceClass::Cpu, DeviceClass::Auto] {
        let name = class.consumer();
        match jobs.consumer_info(name).await {
            Ok(c) => {
                let _ = writeln!(
                    out,
                    "  {name:<12} pending {:>8}  in flight {:>6}  redelivered {:>6}  waiting pulls {:>3}",
                    c.num_pending, c.num_ack_pending, c.num_redelivered, c.num_waiting
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  {name:<12} unavailable: {e}");
            }
        }
    }
    match streams::live_workers(js).await {
        Ok(workers) => {
            let _ = writeln!(out, "workers: {} live", workers.len());
            for w in &workers {
                let engines: Vec<String> = w
                    .engines
                    .iter()
                    .map(|(kind, on)| format!("{kind}={on}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<28} {:<4} {:<7} {:<8} {:<10} slots {:>3}  in flight {:>4}  ok {:>8}  failed {:>6}  {}",
                    w.name,
                    w.class,
                    w.device,
                    w.backend,
                    w.state,
                    w.capacity,
                    w.in_flight,
                    w.succeeded,
                    w.failed,
                    engines.join(" ")
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "workers: unavailable: {e}");
        }
    }
    for name in [STREAM_RESULTS, STREAM_DLQ] {
        if let Ok(mut stream) = js.get_stream(name).await
            && let Ok(info) = stream.info().await
        {
            let _ = writeln!(out, "{name}: {} message(s)", info.state.messages);
        }
    }
    let snapshots = streams::latest_metrics(js)
        .await
        .map_err(|e| anyhow::anyhow!("reading metrics: {e}"))?;
    let _ = writeln!(out);
    out.push_str(&crate::table::metrics_table(&snapshots));
    Ok(out)
}
