//! Computing a job: on a compute slot with its memory reserved, off the async executor, with
//! progress acks meanwhile; a checkpoint enforces its timeout, cancellation and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use kiln_kernels::{Checkpoint, ComputeDevice, DecodedJob, Progress};
use kiln_proto::{ErrorKind, JobError};
use time::OffsetDateTime;

use crate::admission::{ComputePermit, MemoryHeld};
use crate::config::WorkerConfig;
use crate::shared::Shared;

/// What running a job came to.
pub(crate) struct Ran {
    pub result: Result<serde_json::Value, JobError>,
    pub compute_ms: f64,
    /// The worker gave the job up through no fault of the job's: it was shutting down past
    /// its drain timeout, or its device stopped working. Such a job goes back to the queue
    /// without spending one of its deliveries ([`crate::handback::hand_back`]).
    pub handed_back: bool,
    /// What the job left to store in `KILN_DATA` (its full output, a model).
    pub stored: Option<kiln_kernels::Stored>,
    /// How many jobs shared its launch ([`crate::batch`]); 1 when it ran alone.
    pub batched: usize,
    /// How long it waited on this worker for a compute slot and its memory: queue time,
    /// which its result's `started_at` and `queue_ms` count.
    pub waited: Duration,
    /// Its share of the memory budget, while what it left to store is in memory.
    pub memory: Option<MemoryHeld>,
}

impl Ran {
    /// A job given up before it computed, through no fault of its own.
    pub(crate) fn handed_back(reason: String) -> Self {
        Ran {
            handed_back: true,
            ..Ran::failed(JobError::internal(reason))
        }
    }

    /// A job that failed before it computed.
    fn failed(error: JobError) -> Self {
        Ran {
            result: Err(error),
            compute_ms: 0.0,
            handed_back: false,
            stored: None,
            batched: 1,
            waited: Duration::ZERO,
            memory: None,
        }
    }

    /// A job whose compute task failed (panicked outside the job's own guard).
    fn task_failed(e: impl std::fmt::Display) -> Self {
        Ran::failed(JobError::internal(format!("compute task failed: {e}")))
    }
}

/// Run the job on a compute slot, off the async executor, with progress acks meanwhile.
pub(crate) async fn compute(
    shared: &Arc<Shared>,
    message: &jetstream::Message,
    job: DecodedJob,
    id: &str,
    enqueued_at: OffsetDateTime,
) -> Ran {
    if crate::batch::takes(shared, &job) {
        let mut ticker = shared.ack_wait.progress();
        computing(shared, job.kind.name, id);
        let mut batched = crate::batch::enqueue(shared, job, id, enqueued_at);
        let abandon = abandoned(shared.abandon.subscribe());
        tokio::pin!(abandon);
        loop {
            tokio::select! {
                biased;
                ran = &mut batched => return ran.unwrap_or_else(Ran::task_failed),
                _ = ticker.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
                () = &mut abandon => return Ran::handed_back(ABANDONED.into()),
            }
        }
    }
    if runs_inline(&shared.config, &job) {
        return run_inline(shared, job, id, enqueued_at);
    }
    let mut ticker = shared.ack_wait.progress();
    let waiting = Instant::now();
    let permit = match admit(shared, message, &job, (id, enqueued_at), &mut ticker).await {
        Ok(permit) => permit,
        Err(Interrupted::Stopping) => {
            return Ran::handed_back(
                "worker shutting down before the job started; job handed back".into(),
            );
        }
        Err(Interrupted::Cancelled) => {
            let error = JobError::new(
                ErrorKind::Cancelled,
                "cancelled on request while it waited for a compute slot",
            );
            return Ran {
                waited: waiting.elapsed(),
                ..Ran::failed(error)
            };
        }
    };
    let waited = waiting.elapsed();
    computing(shared, job.kind.name, id);
    let shared = shared.clone();
    let id = id.to_owned();
    let abandon = abandoned(shared.abandon.subscribe());
    tokio::pin!(abandon);
    let task =
        tokio::task::spawn_blocking(move || run_blocking(&shared, job, (&id, enqueued_at), permit));
    tokio::pin!(task);
    loop {
        tokio::select! {
            // A job that finished is answered, not handed back to run again.
            biased;
            joined = &mut task => {
                return Ran { waited, ..joined.unwrap_or_else(Ran::task_failed) };
            }
            _ = ticker.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
            // The computation goes on unseen; the process exits before it ends.
            () = &mut abandon => return Ran::handed_back(ABANDONED.into()),
        }
    }
}

/// Why a job whose computation the stopping worker stopped waiting for was handed back.
const ABANDONED: &str = "worker shutting down past its drain timeout while the job computed (a \
                         step with no checkpoint); job handed back";

/// Resolves once the worker abandons the computations still running ([`Shared::abandon`]).
async fn abandoned(mut abandon: tokio::sync::watch::Receiver<bool>) {
    if abandon.wait_for(|abandon| *abandon).await.is_err() {
        std::future::pending().await
    }
}

/// Note for the heartbeat that job `id` of `kind` has its compute slot (or joined a batch).
fn computing(shared: &Shared, kind: &str, id: &str) {
    let mut running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(held) = running.get_mut(&(kind.to_owned(), id.to_owned())) {
        held.waiting = false;
    }
}

/// How a wait for a permit ended before the permit came.
pub(crate) enum Interrupted {
    /// The worker stops past its drain timeout (it hands back the jobs still waiting too).
    Stopping,
    /// `kiln cancel` marked the job meanwhile.
    Cancelled,
}

/// Wait for `permit` (a compute slot, a place to load objects), looking five times a second
/// whether the worker stops or, given the job's id and when it was enqueued, the job was
/// cancelled.
pub(crate) async fn watched<T>(
    shared: &Shared,
    job: Option<(&str, OffsetDateTime)>,
    permit: impl Future<Output = T>,
) -> Result<T, Interrupted> {
    tokio::pin!(permit);
    let mut look = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            permit = &mut permit => return Ok(permit),
            _ = look.tick() => {
                if shared.stopping.load(Ordering::Relaxed) {
                    return Err(Interrupted::Stopping);
                }
                if job.is_some_and(|(id, at)| shared.cancelled.cancels(id, at)) {
                    return Err(Interrupted::Cancelled);
                }
            }
        }
    }
}

/// Wait for a compute slot and the job's memory ([`watched`]), with progress acks meanwhile.
async fn admit(
    shared: &Shared,
    message: &jetstream::Message,
    job: &DecodedJob,
    named: (&str, OffsetDateTime),
    ticker: &mut crate::ackwait::Progress,
) -> Result<ComputePermit, Interrupted> {
    let admitted = watched(
        shared,
        Some(named),
        shared.admission.compute_permit(job.plan.elements),
    );
    tokio::pin!(admitted);
    loop {
        tokio::select! {
            admitted = &mut admitted => return admitted,
            _ = ticker.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
        }
    }
}

/// Run a job too small to be worth a thread hand-off on the async executor.
fn run_inline(shared: &Shared, job: DecodedJob, id: &str, enqueued_at: OffsetDateTime) -> Ran {
    let start = Instant::now();
    let handed_back = AtomicBool::new(false);
    let guard = Guard::new(shared, &job, (id, enqueued_at), start, &handed_back);
    let device = &shared.config.device;
    let result =
        crate::warmup::run_guarded(device, || job.run_with(device, shared.engines, &guard));
    Ran {
        result,
        compute_ms: start.elapsed().as_secs_f64() * 1000.0,
        handed_back: handed_back.into_inner(),
        stored: job.take_stored(),
        batched: 1,
        waited: Duration::ZERO,
        memory: None,
    }
}

/// Run a job on the blocking pool, holding `permit` (its compute slot and memory; the memory
/// until the output it leaves to store is stored).
fn run_blocking(
    shared: &Shared,
    job: DecodedJob,
    named: (&str, OffsetDateTime),
    permit: ComputePermit,
) -> Ran {
    let device = shared.config.device.clone();
    let start = Instant::now();
    let handed_back = AtomicBool::new(false);
    let guard = Guard::new(shared, &job, named, start, &handed_back);
    if let Some(reason) = shared.poisoned.get() {
        return Ran::handed_back(format!(
            "device {device} is unusable ({reason}); job handed back"
        ));
    }
    let mut result = crate::warmup::run_guarded(&device, || {
        guard.checkpoint(Progress { done: 0, total: 1 })?;
        job.run_with(&device, shared.engines, &guard)
    });
    if let Err(e) = &result {
        check_device(shared, e);
    } else if let Err(stopped) = simulate(&shared.config, start, Some(&guard)) {
        result = Err(stopped);
    }
    let stored = job.take_stored();
    let memory = stored.as_ref().map(|_| permit.computed());
    Ran {
        result,
        compute_ms: start.elapsed().as_secs_f64() * 1000.0,
        handed_back: handed_back.into_inner(),
        stored,
        batched: 1,
        waited: Duration::ZERO,
        memory,
    }
}

/// Make a run that began at `start` take as long as on the simulated slower device
/// (`--slowdown`, `--sim-overhead`; both off by default). Blocking. With a `guard`, the
/// simulated time is a step like any other: a cancel, a timeout or a stopping worker ends it
/// within [`SIMULATED_CHECKPOINT`], with the error that stops the job.
pub(crate) fn simulate(
    config: &WorkerConfig,
    start: Instant,
    guard: Option<&dyn Checkpoint>,
) -> Result<(), JobError> {
    let slowdown = config.slowdown;
    // Past `Duration`'s range (a factor the command line refuses), no simulated time at all
    // rather than a panic for every job.
    let slower = match slowdown > 1.0 {
        true => Duration::try_from_secs_f64(start.elapsed().as_secs_f64() * (slowdown - 1.0))
            .unwrap_or_default(),
        false => Duration::ZERO,
    };
    let until = Instant::now() + slower.saturating_add(config.sim_overhead);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let Some(guard) = guard else {
            std::thread::sleep(left);
            return Ok(());
        };
        std::thread::sleep(left.min(SIMULATED_CHECKPOINT));
        guard.checkpoint(Progress { done: 1, total: 1 })?;
    }
}

/// How often a job's simulated time checks whether it is to stop.
const SIMULATED_CHECKPOINT: Duration = Duration::from_millis(20);

/// A GPU that failed may be broken for every job that follows: after an out-of-memory or
/// internal error, probe it, and if it no longer computes, stop this worker (it exits
/// non-zero for its supervisor). Blocking.
pub(crate) fn check_device(shared: &Shared, error: &JobError) {
    let device = &shared.config.device;
    if *device != ComputeDevice::Cpu
        && matches!(error.kind, ErrorKind::OutOfMemory | ErrorKind::Internal)
        && let Err(reason) = crate::warmup::probe(device, shared.engines)
    {
        let _ = shared
            .poisoned
            .set(format!("after {}: {reason}", error.message));
    }
}

/// The checkpoint kernels call: enforces `timeout_ms` and hands jobs back on shutdown.
pub(crate) struct Guard<'a> {
    start: Instant,
    timeout: Option<Duration>,
    stopping: &'a AtomicBool,
    /// Set when the job is stopped because the worker is stopping.
    handed_back: &'a AtomicBool,
    id: &'a str,
    /// When the job was enqueued: a cancellation mark older than that is not for it.
    enqueued_at: OffsetDateTime,
    cancelled: &'a crate::cancel::Cancellations,
}

impl<'a> Guard<'a> {
    /// The guard of `job` (called `id`, enqueued at `enqueued_at`), started at `start`;
    /// `handed_back` is set when it stops the job because the worker is stopping.
    pub(crate) fn new(
        shared: &'a Shared,
        job: &DecodedJob,
        (id, enqueued_at): (&'a str, OffsetDateTime),
        start: Instant,
        handed_back: &'a AtomicBool,
    ) -> Self {
        Guard {
            start,
            timeout: job.timeout_ms.map(Duration::from_millis),
            stopping: &shared.stopping,
            handed_back,
            id,
            enqueued_at,
            cancelled: &shared.cancelled,
        }
    }
}

impl Checkpoint for Guard<'_> {
    fn checkpoint(&self, progress: Progress) -> Result<(), JobError> {
        // Before the first step (every job passes a checkpoint just before it starts, after
        // its inputs are loaded and made, which counts towards its time), or how far it got.
        let when = || match progress.done {
            0 => "before its first step".to_owned(),
            done => format!("while running ({done} of {} steps done)", progress.total),
        };
        let elapsed = self.start.elapsed();
        if let Some(timeout) = self.timeout
            && elapsed > timeout
        {
            return Err(JobError::new(
                ErrorKind::Timeout,
                format!(
                    "job ran past its timeout_ms of {}: stopped after {:.0} ms, {}",
                    timeout.as_millis(),
                    elapsed.as_secs_f64() * 1e3,
                    when()
                ),
            ));
        }
        if self.cancelled.cancels(self.id, self.enqueued_at) {
            return Err(JobError::new(
                ErrorKind::Cancelled,
                format!("cancelled on request {}", when()),
            ));
        }
        if self.stopping.load(Ordering::Relaxed) {
            self.handed_back.store(true, Ordering::Relaxed);
            return Err(JobError::internal("worker shutting down; job handed back"));
        }
        Ok(())
    }
}

/// Most work (floating-point operations, and tensor elements) a CPU job may have to run
/// directly on the async executor: a few microseconds, less than handing it to the blocking
/// pool costs in thread wake-ups. Everything bigger, and every GPU job, runs on the pool.
const INLINE_MAX_WORK: u64 = 1 << 16;

pub(crate) fn runs_inline(config: &WorkerConfig, job: &DecodedJob) -> bool {
    config.device == ComputeDevice::Cpu
        && config.slowdown <= 1.0
        && config.sim_overhead.is_zero()
        && job.plan.flops <= INLINE_MAX_WORK as f64
        && job.plan.elements <= INLINE_MAX_WORK
}
