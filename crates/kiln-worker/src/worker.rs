//! The pull loop: take as many jobs as the worker can start soon, hand each to its own task.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt as _;
use kiln_kernels::ComputeDevice;
use kiln_proto::streams::{self, STREAM_JOBS};
use tokio::sync::Semaphore;

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::handle::{self, Shared};

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Jobs answered with a `succeeded` result.
    pub succeeded: u64,
    /// Jobs answered with a `failed` result.
    pub failed: u64,
    /// Jobs handed back for another attempt.
    pub retried: u64,
    /// Jobs queued again unfinished because the worker stopped (no attempt spent).
    pub handed_back: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub handed_back: AtomicU64,
}

/// The recent pace of a worker's jobs, which decides how many jobs it holds ([`Pace::limit`]).
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// Exponentially weighted mean compute time of the recent jobs, in ms; `None` before the
    /// first job.
    mean_ms: std::sync::Mutex<Option<f64>>,
}

impl Pace {
    /// The weight of the newest job in the mean.
    const WEIGHT: f64 = 0.2;

    /// A job computed in `compute_ms`.
    pub(crate) fn record(&self, compute_ms: f64) {
        let mut mean = self.mean_ms.lock().unwrap_or_else(|e| e.into_inner());
        *mean = Some(match *mean {
            Some(m) => m + Self::WEIGHT * (compute_ms - m),
            None => compute_ms,
        });
    }

    /// How many jobs to hold at once: one per compute slot, plus as many as the slots get
    /// through in `prefetch` at the recent pace (none before the first job), at most `max`.
    pub(crate) fn limit(&self, compute_slots: usize, prefetch: Duration, max: usize) -> usize {
        let mean = *self.mean_ms.lock().unwrap_or_else(|e| e.into_inner());
        let ahead = match mean {
            Some(ms) => {
                let per_slot = prefetch.as_secs_f64() * 1000.0 / ms.max(1e-3);
                (per_slot * compute_slots as f64).min(max as f64) as usize
            }
            None => 0,
        };
        compute_slots.saturating_add(ahead).clamp(1, max.max(1))
    }
}

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
    let max_in_flight = config.max_in_flight.max(1);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    // Before the first heartbeat: a CPU worker announces itself serving, so it must be ready.
    let engines = kiln_kernels::Engines {
        matmul: choose_matmul_engine(config.device.clone(), config.matmul_engine).await,
        conv: choose_conv_engine(config.device.clone(), config.conv_engine).await,
    };
    let shared = Arc::new(Shared {
        js: js.clone(),
        engines,
        compute: Arc::new(Semaphore::new(config.compute_slots.max(1))),
        memory_mib: Arc::new(Semaphore::new(mib(memory.bytes) as usize)),
        memory,
        counters: Counters::default(),
        pace: Pace::default(),
        finished: tokio::sync::Notify::new(),
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
                crate::warmup::warm_up(&device, engines, &limits, &stop_warmup)
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
        max_in_flight,
        compute_slots = shared.config.compute_slots,
        "worker serving"
    );

    'pull: loop {
        if shared.poisoned.get().is_some() {
            break 'pull;
        }
        // Hold one job per compute slot, plus as many as the slots get through in
        // `--prefetch-ms` at the recent pace: small jobs keep the slots busy between pulls,
        // while a long job stays in the queue, where an idle worker (or a new one KEDA
        // starts for the backlog) can take it, instead of waiting here behind another.
        let limit = shared.pace.limit(
            shared.config.compute_slots.max(1),
            shared.config.prefetch,
            max_in_flight,
        );
        let held = max_in_flight - slots.available_permits();
        if held >= limit {
            tokio::select! {
                _ = &mut shutdown => break 'pull,
                _ = shared.finished.notified() => continue 'pull,
            }
        }
        let room = limit - held;
        // Each pull request is a subscription on the server: ask for jobs in chunks of at
        // least a quarter of the limit, so that a busy worker does not pull one job at a time.
        let chunk = (limit / 4).clamp(1, room) as u32;
        let first = tokio::select! {
            _ = &mut shutdown => break 'pull,
            permit = slots.clone().acquire_many_owned(chunk) => permit.expect("semaphore is never closed"),
        };
        let mut first = first;
        let mut permits = Vec::with_capacity(max_in_flight);
        for _ in 1..chunk {
            permits.push(first.split(1).expect("the chunk holds this many permits"));
        }
        permits.push(first);
        while permits.len() < room {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
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
                        handle::handle(&shared, message).await;
                        shared.config.metrics.in_flight.dec();
                        drop(permit);
                        shared.finished.notify_one();
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
    let all = max_in_flight as u32;
    let drained = tokio::time::timeout(drain, slots.acquire_many(all)).await;
    heartbeat.stop().await;
    let stats = shared.stats();
    if drained.is_err() {
        shared.stopping.store(true, Ordering::SeqCst);
        let running = max_in_flight - slots.available_permits();
        // Give checkpointing kernels a moment to notice and hand their jobs back (a hand-back
        // is a publish and a confirmed ack: milliseconds, seconds if the server is slow).
        let _ = tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(all)).await;
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

/// Whole MiB, at least one, within what a semaphore can count: the unit jobs reserve
/// memory in.
pub(crate) fn mib(bytes: u64) -> u32 {
    bytes.div_ceil(1 << 20).clamp(1, u32::MAX as u64) as u32
}

impl Shared {
    pub(crate) fn stats(&self) -> WorkerStats {
        WorkerStats {
            succeeded: self.counters.succeeded.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            handed_back: self.counters.handed_back.load(Ordering::Relaxed),
        }
    }
}

/// What this worker's `conv2d` jobs run on: on CUDA, cuDNN when asked for and it works (a
/// small dense and a small depthwise convolution check it against the host), else Burn's
/// kernels, saying why; on the CPU, the direct depthwise loop (plain Rust, nothing to check) or
/// Burn, as asked.
async fn choose_conv_engine(
    device: ComputeDevice,
    wanted: kiln_kernels::ConvEngine,
) -> kiln_kernels::ConvEngine {
    use kiln_kernels::ConvEngine;
    if wanted == ConvEngine::Burn {
        tracing::info!(engine = "burn", "conv2d engine (--conv2d-engine burn)");
        return ConvEngine::Burn;
    }
    let ComputeDevice::Cuda(index) = device else {
        tracing::info!(engine = "direct", "conv2d engine");
        return ConvEngine::Native;
    };
    let checked = tokio::task::spawn_blocking(move || kiln_kernels::vendor::cudnn::probe(index))
        .await
        .unwrap_or_else(|e| Err(format!("the check itself failed: {e}")));
    match checked {
        Ok(()) => {
            tracing::info!(engine = "cudnn", library = %format!("cuDNN on cuda:{index}"), "conv2d engine");
            ConvEngine::Native
        }
        Err(reason) => {
            tracing::warn!(
                "cuDNN is not usable, so conv2d jobs run on Burn's kernels (f32 at TF32-like precision): {reason}"
            );
            ConvEngine::Burn
        }
    }
}

/// What this worker's `matmul` jobs run on: the device's BLAS when asked for and it works (a
/// tiny product checks it), else Burn's kernels, saying why.
async fn choose_matmul_engine(
    device: ComputeDevice,
    wanted: kiln_kernels::MatmulEngine,
) -> kiln_kernels::MatmulEngine {
    use kiln_kernels::MatmulEngine;
    if wanted == MatmulEngine::Burn {
        tracing::info!(engine = "burn", "matmul engine (--matmul-engine burn)");
        return MatmulEngine::Burn;
    }
    let probed = device.clone();
    let checked = tokio::task::spawn_blocking(move || match probed {
        ComputeDevice::Cuda(index) => {
            kiln_kernels::vendor::cublas::probe(index).map(|()| format!("cuBLAS on cuda:{index}"))
        }
        ComputeDevice::Cpu => kiln_kernels::vendor::openblas::probe(),
    })
    .await
    .unwrap_or_else(|e| Err(format!("the check itself failed: {e}")));
    match checked {
        Ok(library) => {
            tracing::info!(engine = "blas", %library, "matmul engine");
            MatmulEngine::Blas
        }
        Err(reason) => {
            match device {
                ComputeDevice::Cuda(_) => tracing::warn!(
                    "cuBLAS is not usable, so matmul and vector_add jobs run on Burn's kernels (matmul's f32 at TF32-like precision): {reason}"
                ),
                ComputeDevice::Cpu => tracing::info!(
                    "matmul jobs run on burn-ndarray, about half of OpenBLAS's speed: {reason}"
                ),
            }
            MatmulEngine::Burn
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(100);

    #[test]
    fn a_new_worker_holds_one_job_per_compute_slot() {
        assert_eq!(Pace::default().limit(4, WINDOW, 256), 4);
    }

    #[test]
    fn small_jobs_are_held_ahead_and_long_ones_are_not() {
        let pace = Pace::default();
        pace.record(2.0);
        // 2 slots get through 100 jobs of 2 ms in 100 ms.
        assert_eq!(pace.limit(2, WINDOW, 256), 102);
        assert_eq!(pace.limit(2, WINDOW, 64), 64, "never above --max-in-flight");
        assert_eq!(pace.limit(2, Duration::ZERO, 256), 2, "--prefetch-ms 0");
        let long = Pace::default();
        long.record(3000.0);
        assert_eq!(long.limit(2, WINDOW, 256), 2);
        let tiny = Pace::default();
        tiny.record(0.0);
        assert_eq!(
            tiny.limit(2, WINDOW, 256),
            256,
            "a zero mean is not a division by zero"
        );
    }

    #[test]
    fn the_pace_follows_recent_jobs() {
        let pace = Pace::default();
        pace.record(1.0);
        for _ in 0..30 {
            pace.record(1000.0);
        }
        // After a run of one-second jobs the worker holds no more than its slots again.
        assert_eq!(pace.limit(2, WINDOW, 256), 2);
        for _ in 0..40 {
            pace.record(1.0);
        }
        assert!(pace.limit(2, WINDOW, 256) > 100);
    }
}
