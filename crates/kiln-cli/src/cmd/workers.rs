//! `kiln workers`: the live workers, from their heartbeats in `KILN_WORKERS`.

use std::process::ExitCode;

use async_nats::jetstream;
use kiln_proto::WorkerInfo;
use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::{Format, NatsArgs};

/// One worker in `kiln workers -o json`: its heartbeat, and how old that is.
#[derive(Serialize)]
struct Worker<'a> {
    #[serde(flatten)]
    heartbeat: &'a WorkerInfo,
    /// Milliseconds since the worker wrote its heartbeat.
    heartbeat_age_ms: u64,
}

pub async fn run(nats: &NatsArgs, format: Format) -> anyhow::Result<ExitCode> {
    let client = kiln_client::connect_to_jetstream(&nats.connect_options()).await?;
    let workers = kiln_client::cluster::workers(&jetstream::new(client)).await?;
    let now = OffsetDateTime::now_utc();
    let age_ms = |w: &WorkerInfo| {
        let ms = (now - w.updated_at).whole_milliseconds().max(0);
        u64::try_from(ms).unwrap_or(u64::MAX)
    };
    if format == Format::Json {
        let rows: Vec<Worker> = workers
            .iter()
            .map(|w| Worker {
                heartbeat: w,
                heartbeat_age_ms: age_ms(w),
            })
            .collect();
        super::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if workers.is_empty() {
        println!("no live workers");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<5} {:<7} {:<8} {:<10} {:>5} {:>9} {:>8} {:>6} {:>10}  engines",
        "name",
        "class",
        "device",
        "backend",
        "state",
        "slots",
        "held/max",
        "ok",
        "failed",
        "heartbeat"
    );
    for w in &workers {
        let engines: Vec<String> = w
            .engines
            .iter()
            .map(|(k, on)| format!("{k}={on}"))
            .collect();
        println!(
            "{:<28} {:<5} {:<7} {:<8} {:<10} {:>5} {:>9} {:>8} {:>6} {:>8.1} s  {}",
            w.name,
            w.class,
            w.device,
            w.backend,
            w.state,
            w.capacity,
            format!("{}/{}", w.in_flight, w.max_in_flight),
            w.succeeded,
            w.failed,
            age_ms(w) as f64 / 1000.0,
            engines.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
