//! `kiln demo`: the whole system on one machine, with a local nats-server when none is
//! reachable.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use kiln_kernels::ComputeDevice;
use kiln_proto::{Codec, DeviceClass, Status, Topology, streams};
use serde_json::json;

use super::roles::LocalRoles;
use super::submit::progress_bar;
use crate::cli::{DemoArgs, NatsArgs};
use crate::local_nats::LocalNats;
use kiln_client::{JobSpec, ResultCollector, publish_all};

pub async fn run(nats: &NatsArgs, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (nats, embedded) = server(nats, args.no_embedded).await?;
    // SIGINT or SIGTERM to the demo alone (`timeout`, `kill`, a cancelled CI job) ended it
    // at once and left its private nats-server running with its store: now the demo stops
    // and drops the server, which stops it and removes the store.
    let outcome = tokio::select! {
        outcome = demo(&nats, &args) => outcome,
        () = crate::signal::wait_for_signal() => {
            eprintln!("kiln demo: interrupted; stopping");
            Ok(ExitCode::from(130))
        }
    };
    drop(embedded);
    outcome
}

/// The demo on the server `nats` names.
async fn demo(nats: &NatsArgs, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let client = kiln_client::connect(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    let topology = super::topology(nats);
    streams::ensure_all(&js, &topology).await?;
    let (roles, devices) = start_roles(&client, &topology);

    // A mixed workload of every kind, for every device class that has a worker.
    // Every class with a worker gets the workload, and the scheduler routes a share of it.
    let mut classes: Vec<DeviceClass> = devices.iter().map(|d| d.class()).collect();
    classes.push(DeviceClass::Auto);
    let jobs = workload(&classes, args.scale)?;
    let outcome = submit_and_collect(&client, &js, &classes, jobs).await?;
    outcome.print();

    roles.stop().await?;
    // Close the connection before the private server stops, so that its end is not reported
    // as a lost connection.
    let _ = client.drain().await;
    Ok(
        if outcome.finished == outcome.total && outcome.failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// Use the configured server when it answers; otherwise start a private one. Returns the
/// settings to connect with, and the private server (stopped when dropped).
async fn server(
    nats: &NatsArgs,
    no_embedded: bool,
) -> anyhow::Result<(NatsArgs, Option<LocalNats>)> {
    let mut nats = nats.clone();
    let embedded = match kiln_client::connect(&nats.connect_options()).await {
        Ok(_) => {
            eprintln!("using the NATS server at {}", nats.nats_url);
            None
        }
        Err(e) if no_embedded => return Err(e.into()),
        Err(_) => {
            let server = LocalNats::start()
                .await
                .with_context(|| format!("no NATS server at {}", nats.nats_url))?;
            eprintln!(
                "no NATS server at {}: started nats-server -js on {} (store in a temporary directory)",
                nats.nats_url,
                server.url()
            );
            nats.nats_url = server.url();
            Some(server)
        }
    };
    Ok((nats, embedded))
}

/// The roles, in this process: aggregator, scheduler, a CPU worker, and a CUDA worker
/// when present. Returns them and the workers' devices.
fn start_roles(
    client: &async_nats::Client,
    topology: &Topology,
) -> (LocalRoles, Vec<ComputeDevice>) {
    let mut roles = LocalRoles::default();
    roles.aggregator(
        client,
        kiln_aggregator::AggregatorConfig {
            interval: Duration::from_millis(250),
            topology: topology.clone(),
            ..Default::default()
        },
    );
    let mut scheduler = kiln_scheduler::SchedulerConfig::new("demo-scheduler".into());
    scheduler.topology = topology.clone();
    roles.scheduler(client, scheduler);
    let mut devices = vec![ComputeDevice::Cpu];
    if kiln_kernels::cuda_device_count() > 0 {
        devices.push(ComputeDevice::Cuda(0));
    } else {
        eprintln!("no CUDA device found: running the CPU side only");
    }
    for device in &devices {
        let mut config = kiln_worker::WorkerConfig::new(device.clone());
        config.topology = topology.clone();
        roles.worker(client, config);
    }
    (roles, devices)
}

/// What came of the demo's workload.
struct Outcome {
    /// Jobs submitted.
    total: u64,
    /// Results that came.
    finished: u64,
    /// One line per failed job: kind, id and error.
    failures: Vec<String>,
    /// From the first publish to the last result.
    elapsed: Duration,
    /// This run's results folded as the aggregator folds them, per kind and class: the
    /// aggregator's own snapshots on a server with history count earlier runs' jobs too.
    snapshots: Vec<kiln_proto::MetricsSnapshot>,
}

/// Submit the jobs and wait (up to 10 minutes) for their results, with a progress bar.
async fn submit_and_collect(
    client: &async_nats::Client,
    js: &jetstream::Context,
    classes: &[DeviceClass],
    jobs: Vec<JobSpec>,
) -> anyhow::Result<Outcome> {
    let ids: HashSet<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let total = jobs.len() as u64;
    eprintln!(
        "submitting {total} jobs (vector_add, matmul, conv2d, train_mlp) to {}",
        classes
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let mut collector = ResultCollector::subscribe(client, None, &[]).await?;
    let started = Instant::now();
    publish_all(js, jobs, true, || {}).await?;
    let bar = progress_bar(total, "finished");
    let mut failures = Vec::new();
    let mut folds = kiln_aggregator::Folds::default();
    let results = collector
        .collect(ids, Duration::from_secs(600), |event| {
            bar.inc(1);
            folds.add(&kiln_aggregator::ResultHead::from(event));
            if event.status == Status::Failed {
                failures.push(format!(
                    "{} {}: {}",
                    event.kind,
                    event.id,
                    event
                        .error
                        .as_ref()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                ));
            }
        })
        .await;
    bar.finish();
    Ok(Outcome {
        total,
        finished: results.len() as u64,
        failures,
        elapsed: started.elapsed(),
        snapshots: folds.snapshots(time::OffsetDateTime::now_utc()),
    })
}

impl Outcome {
    /// The metrics table of this run's jobs, then how many finished and which failed.
    fn print(&self) {
        println!();
        print!("{}", crate::table::metrics_table(&self.snapshots));
        println!(
            "\n{} of {} jobs finished in {:.1} s ({} failed); total latency is submit → result, compute is time on the device",
            self.finished,
            self.total,
            self.elapsed.as_secs_f64(),
            self.failures.len()
        );
        for failure in &self.failures {
            println!("failed: {failure}");
        }
    }
}

/// The largest `--scale`: about 370,000 jobs a class, which a laptop still holds in memory
/// while publishing (a larger or infinite one would try to allocate without bound).
pub const MAX_SCALE: f64 = 1000.0;

/// `--scale`'s help: how many jobs scale 1 submits.
pub fn scale_help() -> String {
    let count = |class| per_class(class, 1.0).iter().sum::<usize>();
    let cpu = count(DeviceClass::Cpu);
    let routed = count(DeviceClass::Auto);
    format!(
        "Scale of the workload: 1 = {cpu} jobs per device class with a worker plus {routed} for \
         the scheduler to route ({} without a GPU, a few seconds on two CPU cores; {} with one)",
        cpu + routed,
        2 * cpu + routed
    )
}

/// The demo's jobs: many small vector adds, matrix products of growing size, image filters
/// and a few training runs.
fn workload(classes: &[DeviceClass], scale: f64) -> anyhow::Result<Vec<JobSpec>> {
    let run = kiln_proto::new_job_id();
    let mut jobs = Vec::new();
    let mut push = |class: DeviceClass, kind: &str, params: serde_json::Value, i: usize| {
        let entry = kiln_kernels::find(kind).expect("demo kinds are registered");
        let id = format!("demo-{run}-{class}-{kind}-{i}");
        JobSpec::new(entry, class, params, id, i as u64, None, Codec::Json)
            .map(|job| jobs.push(job))
    };
    for &class in classes {
        let [adds, products, filtered, trainings] = per_class(class, scale);
        for i in 0..adds {
            push(class, "vector_add", json!({ "len": 1024 << (i % 7) }), i)?;
        }
        for i in 0..products {
            push(class, "matmul", json!({ "n": 64 << (i % 4) }), i)?;
        }
        let filters = ["gaussian", "sobel", "sharpen", "box"];
        for i in 0..filtered {
            let params = json!({
                "batch": 1 + i % 2, "channels": 3, "height": 256, "width": 256,
                "filter": filters[i % filters.len()],
            });
            push(class, "conv2d", params, i)?;
        }
        for i in 0..trainings {
            push(class, "train_mlp", json!({ "epochs": 10 + 5 * (i % 3) }), i)?;
        }
    }
    Ok(jobs)
}

/// How many vector_add, matmul, conv2d and train_mlp jobs the demo gives `class`.
fn per_class(class: DeviceClass, scale: f64) -> [usize; 4] {
    // The scheduler's share is a tenth of a class's.
    let share = if class == DeviceClass::Auto { 0.1 } else { 1.0 };
    [300.0, 40.0, 24.0, 4.0].map(|count: f64| ((count * scale * share).round() as usize).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_help_counts_the_jobs_the_demo_submits() {
        let without_gpu = workload(&[DeviceClass::Cpu, DeviceClass::Auto], 1.0)
            .unwrap()
            .len();
        let with_gpu = workload(
            &[DeviceClass::Cpu, DeviceClass::Gpu, DeviceClass::Auto],
            1.0,
        )
        .unwrap()
        .len();
        let help = scale_help();
        assert!(
            help.contains(&format!("({without_gpu} without a GPU")),
            "{help}"
        );
        assert!(help.contains(&format!("{with_gpu} with one")), "{help}");
    }
}
