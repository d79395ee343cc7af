//! Dynamic batching: small jobs of one kind that arrive within the batch window run as one
//! launch (as NVIDIA Triton's dynamic batcher does), each still answered as its own job with
//! its own result or error. A lone job waits at most the window; a full batch runs at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_kernels::{Checkpoint, DecodedJob, Progress};
use kiln_proto::{ErrorKind, JobError};
use tokio::sync::oneshot;

use crate::admission::ComputePermit;
use crate::compute::{Guard, Ran};
use crate::shared::Shared;

/// Most tensor elements one launch holds (256 MiB of f32), whatever the job count.
const MAX_BATCH_ELEMENTS: u64 = 1 << 26;

/// The jobs waiting to share a launch, by kind.
#[derive(Default)]
pub(crate) struct Batcher {
    pending: Mutex<HashMap<&'static str, Pending>>,
}

/// One kind's batch being gathered.
struct Pending {
    /// Which batch this is, so that the window's timer flushes only its own.
    number: u64,
    elements: u64,
    jobs: Vec<Waiting>,
}

struct Waiting {
    job: DecodedJob,
    id: String,
    enqueued_at: time::OffsetDateTime,
    done: oneshot::Sender<Ran>,
}

/// Whether `job` should wait for others to share its launch.
pub(crate) fn takes(shared: &Shared, job: &DecodedJob) -> bool {
    !shared.config.batch_window.is_zero() && shared.config.batch_max_jobs > 1 && job.batchable()
}

/// Put `job` in its kind's batch; the receiver gets its own [`Ran`] once the batch ran.
pub(crate) fn enqueue(
    shared: &Arc<Shared>,
    job: DecodedJob,
    id: &str,
    enqueued_at: time::OffsetDateTime,
) -> oneshot::Receiver<Ran> {
    static NUMBERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (done, receiver) = oneshot::channel();
    let kind = job.kind.name;
    let elements = job.plan.elements;
    let mut pending = shared
        .batcher
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // A batch holds the memory of all its jobs while it runs: one this job would take past
    // the worker's whole budget runs now without it (it waited for memory it could never
    // get, and every job behind it on the worker with it), and this one starts the next.
    if let Some(batch) = pending.get(kind)
        && !shared
            .admission
            .fits_together(batch.elements.saturating_add(elements))
    {
        let jobs = pending.remove(kind).map(|b| b.jobs).unwrap_or_default();
        tokio::spawn(run(shared.clone(), jobs));
    }
    let batch = pending.entry(kind).or_insert_with(|| Pending {
        number: NUMBERS.fetch_add(1, Ordering::Relaxed),
        elements: 0,
        jobs: Vec::new(),
    });
    batch.elements += elements;
    batch.jobs.push(Waiting {
        job,
        id: id.to_owned(),
        enqueued_at,
        done,
    });
    // Full, or nothing else on its way to join (a lone job, the last of a pull's jobs): no
    // reason to wait.
    let now = batch.jobs.len() >= shared.config.batch_max_jobs
        || batch.elements >= MAX_BATCH_ELEMENTS
        || shared.arriving.load(Ordering::Relaxed) == 0;
    if now {
        let jobs = pending.remove(kind).map(|b| b.jobs).unwrap_or_default();
        tokio::spawn(run(shared.clone(), jobs));
    } else if batch.jobs.len() == 1 {
        let (shared, number) = (shared.clone(), batch.number);
        tokio::spawn(async move {
            tokio::time::sleep(shared.config.batch_window).await;
            let jobs = {
                let mut pending = shared
                    .batcher
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match pending.get(kind) {
                    Some(batch) if batch.number == number => pending.remove(kind).map(|b| b.jobs),
                    _ => None,
                }
            };
            if let Some(jobs) = jobs {
                run(shared, jobs).await;
            }
        });
    }
    receiver
}

/// Run one batch on a compute slot holding the memory of all its jobs, then answer each.
async fn run(shared: Arc<Shared>, jobs: Vec<Waiting>) {
    let elements = jobs.iter().map(|w| w.job.plan.elements).sum();
    let admitted =
        crate::compute::watched(&shared, None, shared.admission.compute_permit(elements));
    let Ok(permit) = admitted.await else {
        for waiting in jobs {
            let _ = waiting.done.send(Ran::handed_back(
                "worker shutting down before the job started; job handed back".into(),
            ));
        }
        return;
    };
    let task = tokio::task::spawn_blocking(move || run_blocking(&shared, jobs, permit));
    if let Err(e) = task.await {
        // The senders went down with the task: every job's receiver sees it and fails.
        tracing::error!("a batch's compute task failed: {e}");
    }
}

fn run_blocking(shared: &Shared, jobs: Vec<Waiting>, _permit: ComputePermit) {
    let device = &shared.config.device;
    if let Some(reason) = shared.poisoned.get() {
        for waiting in jobs {
            let _ = waiting.done.send(Ran::handed_back(format!(
                "device {device} is unusable ({reason}); job handed back"
            )));
        }
        return;
    }
    let start = Instant::now();
    let handed_back: Vec<AtomicBool> = jobs.iter().map(|_| AtomicBool::new(false)).collect();
    let guards: Vec<Guard<'_>> = jobs
        .iter()
        .zip(&handed_back)
        .map(|(w, flag)| Guard::new(shared, &w.job, (&w.id, w.enqueued_at), start, flag))
        .collect();
    // Each job passes its checkpoint before the launch (timed out, cancelled, or the worker
    // stopping): those that do not are answered so, and the others share the launch.
    let mut results: Vec<Option<Result<serde_json::Value, JobError>>> = guards
        .iter()
        .map(|guard| {
            guard
                .checkpoint(Progress { done: 0, total: 1 })
                .err()
                .map(Err)
        })
        .collect();
    let batch: Vec<(&DecodedJob, &dyn Checkpoint)> = jobs
        .iter()
        .zip(&guards)
        .zip(&results)
        .filter(|(_, stopped)| stopped.is_none())
        .map(|((w, guard), _)| (&w.job, guard as &dyn Checkpoint))
        .collect();
    let count = batch.len();
    let ran = crate::warmup::run_guarded(device, || {
        Ok(kiln_kernels::run_batch(device, shared.engines, &batch))
    });
    let mut ran = match ran {
        Ok(ran) => ran,
        Err(e) => vec![Err(e); count],
    }
    .into_iter();
    for slot in results.iter_mut().filter(|slot| slot.is_none()) {
        *slot = ran.next();
    }
    let compute_ms = start.elapsed().as_secs_f64() * 1000.0;
    let failed = results.iter().flatten().filter_map(|r| r.as_ref().err());
    if let Some(e) = failed
        .into_iter()
        .find(|e| matches!(e.kind, ErrorKind::OutOfMemory | ErrorKind::Internal))
    {
        crate::compute::check_device(shared, e);
    }
    drop(batch);
    drop(guards);
    for ((waiting, result), flag) in jobs.into_iter().zip(results).zip(handed_back) {
        let result = result.unwrap_or_else(|| Err(JobError::internal("the batch lost this job")));
        let _ = waiting.done.send(Ran {
            result,
            compute_ms,
            handed_back: flag.into_inner(),
            stored: waiting.job.take_stored(),
            batched: count,
            waited: std::time::Duration::ZERO,
            memory: None,
        });
    }
}
