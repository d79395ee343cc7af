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

/// One job's answer from its kernel.
type Answer = Result<serde_json::Value, JobError>;

/// Run `batch` as one launch with `run`, one answer per job. When the launch runs out of
/// device memory, the jobs it failed so run again one at a time: each may fit alone, and a job
/// is not to fail for the company it was batched with (a lone job's `out_of_memory` is final).
fn launch<J>(batch: &[J], run: impl Fn(&[J]) -> Result<Vec<Answer>, JobError>) -> Vec<Answer> {
    let mut answers = match run(batch) {
        Ok(answers) if answers.len() == batch.len() => answers,
        Ok(_) => vec![Err(JobError::internal("the batch lost this job")); batch.len()],
        Err(e) => vec![Err(e); batch.len()],
    };
    if batch.len() > 1 {
        for (i, answer) in answers.iter_mut().enumerate() {
            if matches!(answer, Err(e) if e.kind == ErrorKind::OutOfMemory) {
                *answer = match run(&batch[i..=i]) {
                    Ok(mut alone) if alone.len() == 1 => alone.remove(0),
                    Ok(_) => Err(JobError::internal("the launch lost this job")),
                    Err(e) => Err(e),
                };
            }
        }
    }
    answers
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
    let mut results: Vec<Option<Answer>> = guards
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
    let mut ran = launch(&batch, |part| {
        crate::warmup::run_guarded(device, || {
            Ok(kiln_kernels::run_batch(device, shared.engines, part))
        })
    })
    .into_iter();
    for slot in results.iter_mut().filter(|slot| slot.is_none()) {
        *slot = ran.next();
    }
    // A simulated slower device (`--slowdown`, `--sim-overhead`) as for a job alone: the
    // launch is slowed, and pays the fixed overhead once, as a launch does.
    let _ = crate::compute::simulate(&shared.config, start, None);
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn out_of_memory() -> JobError {
        JobError::new(ErrorKind::OutOfMemory, "can't allocate buffer")
    }

    /// A device that holds at most `room` elements at once, and records each launch.
    fn device(
        room: u64,
        launches: &RefCell<Vec<Vec<u64>>>,
    ) -> impl Fn(&[u64]) -> Result<Vec<Answer>, JobError> {
        move |jobs: &[u64]| {
            launches.borrow_mut().push(jobs.to_vec());
            if jobs.iter().sum::<u64>() > room {
                return Err(out_of_memory());
            }
            Ok(jobs.iter().map(|n| Ok(serde_json::json!(n))).collect())
        }
    }

    #[test]
    fn a_batch_out_of_device_memory_runs_its_jobs_one_at_a_time() {
        let launches = RefCell::new(Vec::new());
        let answers = launch(&[3, 4, 9], device(8, &launches));
        assert_eq!(answers[0].as_ref().unwrap(), &serde_json::json!(3));
        assert_eq!(answers[1].as_ref().unwrap(), &serde_json::json!(4));
        // A job too big even alone keeps its out_of_memory.
        assert_eq!(
            answers[2].as_ref().unwrap_err().kind,
            ErrorKind::OutOfMemory
        );
        assert_eq!(
            *launches.borrow(),
            vec![vec![3, 4, 9], vec![3], vec![4], vec![9]]
        );
    }

    #[test]
    fn a_batch_that_fits_launches_once_and_other_errors_are_not_retried() {
        let launches = RefCell::new(Vec::new());
        let answers = launch(&[1, 2], device(8, &launches));
        assert_eq!(answers.len(), 2);
        assert!(answers.iter().all(Result::is_ok));
        assert_eq!(launches.borrow().len(), 1);

        let calls = RefCell::new(0);
        let answers = launch(&[1, 2], |_| {
            *calls.borrow_mut() += 1;
            Err(JobError::new(ErrorKind::InvalidInput, "bad"))
        });
        assert!(
            answers
                .iter()
                .all(|a| a.as_ref().unwrap_err().kind == ErrorKind::InvalidInput)
        );
        assert_eq!(*calls.borrow(), 1);

        // A lone job's out_of_memory is its answer: it is not run again.
        let launches = RefCell::new(Vec::new());
        let answers = launch(&[9], device(8, &launches));
        assert_eq!(
            answers[0].as_ref().unwrap_err().kind,
            ErrorKind::OutOfMemory
        );
        assert_eq!(launches.borrow().len(), 1);
    }
}
