//! A worker's start: streams and its consumer, its settings as the server has them, its memory
//! budget, its engines, its heartbeat, a GPU's warm-up, and the dead-letter service.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::{self, consumer::PullConsumer};
use kiln_kernels::{ComputeDevice, MemoryBudget};
use kiln_proto::streams::{self, STREAM_JOBS};

use crate::admission::Admission;
use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::heartbeat::Heartbeat;
use crate::shared::{Counters, Shared};

/// The most tensor elements a GPU job may hold: CubeCL indexes tensors with 32-bit integers,
/// and a bigger tensor (seen: a 150000×150000 product) panics inside the GPU runtime and
/// leaves the device unusable for every job after it.
pub const GPU_MAX_ELEMENTS: u64 = u32::MAX as u64;

/// A worker ready to pull jobs, and what runs beside its pull loop until it stops.
pub(crate) struct Started {
    pub shared: Arc<Shared>,
    pub consumer: PullConsumer,
    pub heartbeat: Heartbeat,
    /// Tells the dead-letter service to stop.
    pub stop_dead_letters: tokio::sync::watch::Sender<bool>,
    pub dead_letters: tokio::task::JoinHandle<()>,
    /// Keeps the memory gauges current until the worker stops.
    pub _memory: crate::observe::Sampler,
    /// Keeps the ack wait current until the worker stops.
    pub _ack_wait: crate::ackwait::Following,
}

/// Start a worker: everything before its first pull. `None` when `shutdown` resolved while
/// a GPU warmed up (the worker then stops without serving).
pub(crate) async fn start(
    client: async_nats::Client,
    config: WorkerConfig,
    shutdown: &mut (impl Future + Unpin),
) -> Result<Option<Started>> {
    config.health.watch(&client);
    crate::warmup::record_panics();
    let js = jetstream::new(client);
    streams::ensure_all(&js, &config.topology).await?;
    let (consumer, shared) = open(&js, config).await?;
    let config = &shared.config;
    // Right before the heartbeat starts, which keeps the claim's entry fresh from then on
    // (a claim left unrefreshed through a long open, a GPU's library probes, could be taken
    // over by a second worker as stale).
    crate::heartbeat::claim_name(&js, config).await?;
    let serving = Arc::new(AtomicBool::new(false));
    let heartbeat = streams::patiently("start the heartbeat", || {
        Heartbeat::start(&js, shared.clone(), serving.clone())
    })
    .await
    .map_err(|message| Error::Consumer {
        consumer: kiln_proto::BUCKET_WORKERS.into(),
        message,
    })?;
    match prepare_gpu(&shared, shutdown).await {
        Ok(true) => {}
        stopped => {
            heartbeat.stop().await;
            return stopped.map(|_| None);
        }
    }
    serving.store(true, Ordering::Relaxed);
    let (stop_dead_letters, stopped) = tokio::sync::watch::channel(false);
    let dead_letters = tokio::spawn(crate::deadletter::serve(
        js.clone(),
        (config.name.clone(), shared.result_ids),
        stopped,
    ));
    config.health.serving();
    let _memory = crate::observe::sample_memory(shared.clone());
    let _ack_wait = crate::ackwait::AckWait::follow(shared.ack_wait.clone(), consumer.clone());
    tracing::info!(
        worker = %config.name,
        device = %config.device,
        consumer = config.class.consumer(),
        max_in_flight = shared.admission.max_in_flight(),
        compute_slots = config.compute_slots,
        "worker serving"
    );
    Ok(Some(Started {
        shared,
        consumer,
        heartbeat,
        stop_dead_letters,
        dead_letters,
        _memory,
        _ack_wait,
    }))
}

/// Open the worker's consumer and set up the state its jobs share.
async fn open(
    js: &jetstream::Context,
    mut config: WorkerConfig,
) -> Result<(PullConsumer, Arc<Shared>)> {
    let consumer_name = config.class.consumer();
    let consumer_error = |e: String| Error::Consumer {
        consumer: consumer_name.into(),
        message: e,
    };
    let mut consumer: PullConsumer = streams::patiently("open the jobs consumer", || async {
        js.get_stream(STREAM_JOBS)
            .await
            .map_err(|e| consumer_error(e.to_string()))?
            .get_consumer(consumer_name)
            .await
            .map_err(|e| consumer_error(e.to_string()))
    })
    .await?;
    adopt_consumer_settings(&mut consumer, &mut config).await;
    bound_gpu_jobs(&mut config);
    let memory = memory_budget(&config)?;
    let cancelled = streams::patiently("watch cancellations", || {
        crate::cancel::Cancellations::watch(js)
    })
    .await
    .map_err(|message| Error::Consumer {
        consumer: kiln_proto::BUCKET_CANCEL.into(),
        message,
    })?;
    // Before the first heartbeat: a CPU worker announces itself serving, so it must be ready.
    let engines = kiln_kernels::Engines {
        matmul: crate::engines::choose_matmul_engine(config.device.clone(), config.matmul_engine)
            .await,
        conv: crate::engines::choose_conv_engine(config.device.clone(), config.conv_engine).await,
    };
    let shared = Arc::new(Shared {
        js: js.clone(),
        client: js.client(),
        engines,
        admission: Admission::new(&config, memory),
        counters: Counters::default(),
        stopping: AtomicBool::new(false),
        abandon: tokio::sync::watch::Sender::new(false),
        poisoned: std::sync::OnceLock::new(),
        name_taken: std::sync::OnceLock::new(),
        cancelled,
        running: Default::default(),
        batcher: Default::default(),
        arriving: Default::default(),
        result_ids: crate::publish::ResultIds::of(js).await,
        data: tokio::sync::OnceCell::new(),
        acks: crate::acks::Acks::start(js.client()),
        ack_wait: Arc::new(crate::ackwait::AckWait::new(
            config.topology.ack_wait,
            config.topology.max_deliver,
        )),
        holding: Default::default(),
        config,
    });
    Ok((consumer, shared))
}

/// The consumer as it is on the server decides when a job is redelivered and when it is
/// given up: progress acks and the last-attempt decision follow it, not this worker's
/// defaults (an operator may have set other values with `kiln init`).
async fn adopt_consumer_settings(consumer: &mut PullConsumer, config: &mut WorkerConfig) {
    let Ok(info) = consumer.info().await else {
        return;
    };
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

/// Keep a GPU worker's jobs within what one GPU job can index ([`GPU_MAX_ELEMENTS`]).
fn bound_gpu_jobs(config: &mut WorkerConfig) {
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
}

/// The memory the worker's jobs may hold together: configured, or found on the device.
fn memory_budget(config: &WorkerConfig) -> Result<MemoryBudget> {
    let memory = match config.memory.clone() {
        Some(budget) => budget,
        None => MemoryBudget::detect(&config.device).map_err(|reason| Error::Memory {
            device: config.device.to_string(),
            reason,
        })?,
    };
    tracing::info!(device = %config.device, limit = %kiln_kernels::Bytes(memory.bytes), source = %memory.source, "job memory limit");
    Ok(memory)
}

/// On a GPU: use the kernel cache, and warm up when asked to. `Ok(false)` when `shutdown`
/// resolved during the warm-up.
async fn prepare_gpu(shared: &Shared, shutdown: &mut (impl Future + Unpin)) -> Result<bool> {
    let config = &shared.config;
    let ComputeDevice::Cuda(_) = config.device else {
        return Ok(true);
    };
    if let Some(dir) = &config.cache_dir {
        match kiln_kernels::use_cache_dir(dir) {
            Ok(()) => {
                tracing::info!(cache_dir = %dir.display(), "GPU autotune and kernel caches")
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    if !config.warmup {
        return Ok(true);
    }
    config.health.warming_up();
    tracing::info!(device = %config.device, "warming up: JIT and autotune of each kind's typical sizes");
    let device = config.device.clone();
    let limits = config.limits;
    let engines = shared.engines;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_warmup = stop.clone();
    let mut warm = tokio::task::spawn_blocking(move || {
        crate::warmup::warm_up(&device, engines, &limits, &stop_warmup)
    });
    let joined = tokio::select! {
        _ = shutdown => {
            // Let the warm-up job on the device finish (within the drain timeout):
            // exiting while a GPU kernel runs can crash the process in CUDA's teardown.
            stop.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: waiting for the running warm-up job");
            let _ = tokio::time::timeout(config.drain_timeout, &mut warm).await;
            return Ok(false);
        }
        joined = &mut warm => joined,
    };
    joined
        .map_err(|e| Error::Warmup {
            device: config.device.to_string(),
            kind: "all",
            params: "",
            reason: e.to_string(),
        })
        .and_then(|result| result)
        .map(|()| true)
}
