//! The pull loop: take as many jobs as the worker can start soon, hand each to its own task.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::admission::Admission;
use crate::arrival::Arrival;
use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::shared::{Counters, Shared, WorkerStats};
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt as _;
use kiln_kernels::ComputeDevice;
use kiln_proto::streams::{self, STREAM_JOBS};

/// The most tensor elements a GPU job may hold: CubeCL indexes tensors with 32-bit integers,
/// and a bigger tensor (seen: a 150000×150000 product) panics inside the GPU runtime and
/// leaves the device unusable for every job after it.
pub const GPU_MAX_ELEMENTS: u64 = u32::MAX as u64;

/// How long one pull request waits for jobs before it is renewed. Short, so that a shutdown
/// leaves few jobs delivered-but-unhandled (those are redelivered after the ack wait).
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// Serve jobs until `shutdown` resolves, then drain: stop pulling, let running jobs finish
/// (up to the drain timeout), and return.
pub async fn run(
    client: async_nats::Client,
    config: WorkerConfig,
    shutdown: impl Future<Output = impl Sized>,
) -> Result<WorkerStats> {
    config.health.watch(&client);
    crate::warmup::record_panics();
    let js = jetstream::new(client);
    streams::ensure_all(&js, &config.topology).await?;
    let class = config.class;
    let consumer_name = class.consumer();
    let mut consumer: PullConsumer = js
        .get_stream(STREAM_JOBS)
        .await
        .map_err(|e| Error::Consumer {
            consumer: consumer_name.into(),
            message: e.to_string(),
        })?
        .get_consumer(consumer_name)
        .await
        .map_err(|e| Error::Consumer {
            consumer: consumer_name.into(),
            message: e.to_string(),
        })?;

    let mut config = config;
    // The consumer as it is on the server decides when a job is redelivered and when it is
    // given up: progress acks and the last-attempt decision follow it, not this worker's
    // defaults (an operator may have set other values with `kiln init`).
    if let Ok(info) = consumer.info().await {
        let (ack_wait, max_deliver) = (info.config.ack_wait, info.config.max_deliver);
        if !ack_wait.is_zero() && ack_wait != config.topology.ack_wait {
            tracing::info!(?ack_wait, "using the consumer's ack wait");
            config.topology.ack_wait = ack_wait;
        }
        if max_deliver != config.topology.max_deliver {
            tracing::info!(max_deliver, "using the consumer's max deliveries");
            config.topology.max_deliver = max_deliver;
        }
    }
    if matches!(config.device, ComputeDevice::Cuda(_))
        && config.limits.max_elements > GPU_MAX_ELEMENTS
    {
        tracing::warn!(
            requested = config.limits.max_elements,
            limit = GPU_MAX_ELEMENTS,
            "--max-elements is above what one GPU job can index; using the limit"
        );
        config.limits.max_elements = GPU_MAX_ELEMENTS;
    }
    let memory = match config.memory.clone() {
        Some(budget) => budget,
        None => {
            kiln_kernels::MemoryBudget::detect(&config.device).map_err(|reason| Error::Memory {
                device: config.device.to_string(),
                reason,
            })?
        }
    };
    tracing::info!(device = %config.device, limit = %kiln_kernels::Bytes(memory.bytes), source = %memory.source, "job memory limit");
    let shared = Arc::new(Shared {
        js: js.clone(),
        admission: Admission::new(&config, memory),
        counters: Counters::default(),
        stopping: AtomicBool::new(false),
        poisoned: std::sync::OnceLock::new(),
        cancelled: crate::cancel::Cancellations::watch(&js)
            .await
            .map_err(|message| Error::Consumer {
                consumer: kiln_proto::BUCKET_CANCEL.into(),
                message,
            })?,
        running: Default::default(),
        data: tokio::sync::OnceCell::new(),
        config,
    });
    tokio::pin!(shutdown);
    // Before the first heartbeat: a CPU worker announces itself serving, so it must be ready.
    crate::engines::choose_matmul_engine(shared.config.device.clone(), shared.config.matmul_engine)
        .await;
    crate::engines::choose_conv_engine(shared.config.device.clone(), shared.config.conv_engine)
        .await;
    let serving = Arc::new(AtomicBool::new(false));
    let heartbeat = crate::heartbeat::Heartbeat::start(&js, shared.clone(), serving.clone())
        .await
        .map_err(|message| Error::Consumer {
            consumer: kiln_proto::BUCKET_WORKERS.into(),
            message,
        })?;
    if let ComputeDevice::Cuda(_) = shared.config.device {
        if let Some(dir) = &shared.config.cache_dir {
            match kiln_kernels::use_cache_dir(dir) {
                Ok(()) => {
                    tracing::info!(cache_dir = %dir.display(), "GPU autotune and kernel caches")
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if shared.config.warmup {
            shared.config.health.warming_up();
            tracing::info!(device = %shared.config.device, "warming up: JIT and autotune of each kind's typical sizes");
            let device = shared.config.device.clone();
            let limits = shared.config.limits;
            let stop = Arc::new(AtomicBool::new(false));
            let stop_warmup = stop.clone();
            let mut warm = tokio::task::spawn_blocking(move || {
                crate::warmup::warm_up(&device, &limits, &stop_warmup)
            });
            let joined = tokio::select! {
                _ = &mut shutdown => {
                    // Let the warm-up job on the device finish (within the drain timeout):
                    // exiting while a GPU kernel runs can crash the process in CUDA's teardown.
                    stop.store(true, Ordering::SeqCst);
                    tracing::info!("shutting down: waiting for the running warm-up job");
                    let _ = tokio::time::timeout(shared.config.drain_timeout, &mut warm).await;
                    heartbeat.stop().await;
                    return Ok(WorkerStats::default());
                }
                joined = &mut warm => joined,
            };
            let warmed = joined
                .map_err(|e| Error::Warmup {
                    device: shared.config.device.to_string(),
                    kind: "all",
                    params: "",
                    reason: e.to_string(),
                })
                .and_then(|result| result);
            if let Err(e) = warmed {
                heartbeat.stop().await;
                return Err(e);
            }
        }
    }
    serving.store(true, Ordering::Relaxed);
    let (stop_dead_letters, stopped) = tokio::sync::watch::channel(false);
    let dead_letters = tokio::spawn(crate::deadletter::serve(
        js.clone(),
        shared.config.name.clone(),
        stopped,
    ));
    shared.config.health.serving();
    let _memory = crate::observe::sample_memory(shared.clone());
    tracing::info!(
        worker = %shared.config.name,
        device = %shared.config.device,
        consumer = consumer_name,
        max_in_flight = shared.admission.max_in_flight(),
        compute_slots = shared.config.compute_slots,
        "worker serving"
    );

    'pull: loop {
        if shared.poisoned.get().is_some() {
            break 'pull;
        }
        let Some(room) = shared.admission.room() else {
            tokio::select! {
                _ = &mut shutdown => break 'pull,
                _ = shared.admission.released() => continue 'pull,
            }
        };
        let mut permits = tokio::select! {
            _ = &mut shutdown => break 'pull,
            permits = shared.admission.reserve(room) => permits,
        };
        let mut batch = match consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "pull request failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = &mut shutdown => break 'pull,
                next = batch.next() => next,
            };
            match next {
                None => break,
                Some(Ok(message)) => {
                    if shared.poisoned.get().is_some() {
                        let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
                        break 'pull;
                    }
                    let Some(permit) = permits.pop() else {
                        // The server never sends more than asked; hand back anything extra.
                        let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
                        continue;
                    };
                    let shared = shared.clone();
                    shared.config.metrics.in_flight.inc();
                    tokio::spawn(async move {
                        if let Some(arrival) = Arrival::read(message, &shared.config) {
                            crate::job::handle(&shared, arrival).await;
                        }
                        shared.config.metrics.in_flight.dec();
                        shared.admission.release(permit);
                    });
                }
                Some(Err(e)) => {
                    // A server without a leader for the consumer (an election in a cluster)
                    // answers every pull at once: pause rather than ask again in a hot loop.
                    tracing::warn!(error = %e, "error while pulling jobs; pulling again in 250 ms");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    break;
                }
            }
        }
    }

    // Drain: no new pulls; wait for running jobs, then tell stragglers to hand back.
    shared.config.health.stopping();
    tracing::info!(worker = %shared.config.name, "shutting down: draining running jobs");
    let _ = stop_dead_letters.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), dead_letters).await;
    let drain = shared.config.drain_timeout;
    let drained = shared.admission.all_released(drain).await;
    heartbeat.stop().await;
    let stats = shared.stats();
    if !drained {
        shared.stopping.store(true, Ordering::SeqCst);
        let running = shared.admission.held();
        // Give checkpointing kernels a moment to notice and hand their jobs back (a hand-back
        // is a publish and a confirmed ack: milliseconds, seconds if the server is slow).
        shared.admission.all_released(Duration::from_secs(10)).await;
        return Err(Error::DrainTimeout(running, drain));
    }
    if let Some(reason) = shared.poisoned.get() {
        return Err(Error::DevicePoisoned {
            device: shared.config.device.to_string(),
            reason: reason.clone(),
        });
    }
    tracing::info!(
        succeeded = stats.succeeded,
        failed = stats.failed,
        retried = stats.retried,
        handed_back = stats.handed_back,
        "worker stopped"
    );
    Ok(stats)
}
