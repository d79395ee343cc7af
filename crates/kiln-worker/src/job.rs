//! One job, from arrival to ack: decode → validate → load its objects → compute → store its
//! output → answer (or hand it back) → ack.

use std::sync::Arc;

use kiln_kernels::{ComputeDevice, DecodedJob, Stored};
use kiln_proto::{ErrorKind, JobError, OutputMode};

use crate::admission::LoadPermit;
use crate::answer::{self, Outcome};
use crate::arrival::Arrival;
use crate::compute::{self, Ran};
use crate::data::Unloaded;
use crate::shared::Shared;

/// Handle one job to the end: answered, handed back for another attempt, or handed back
/// unfinished.
pub(crate) async fn handle(shared: &Arc<Shared>, arrival: Arrival) {
    let arriving = Arriving(shared);
    let decoded = if arrival.message.payload.len() < DECODE_ON_THE_POOL {
        decode(shared, &arrival)
    } else {
        // Boxed: rare, and kept out of every job's future.
        Box::pin(decode_on_the_pool(shared, &arrival)).await
    };
    let (id, outcome) = match decoded {
        Ok(job) => {
            let id = arrival.id(job.id.as_deref());
            // Delivered again (its ack lost, its worker gone) or handed back: another run may
            // have answered it meanwhile. Boxed: rare, and kept out of every job's future.
            if (arrival.attempt > 1 || arrival.envelope.handbacks > 0)
                && Box::pin(answer::has_result(
                    shared,
                    &arrival.kind,
                    &id,
                    arrival.envelope.replay,
                ))
                .await
            {
                return Box::pin(answer::already_answered(shared, &arrival, &id)).await;
            }
            match run(shared, &arrival, job, &id, arriving).await {
                Some(outcome) => (id, outcome),
                None => return,
            }
        }
        Err((error, flops)) => (
            arrival.undecoded_id(),
            Outcome {
                result: Err(error),
                compute_ms: 0.0,
                flops,
                waited: std::time::Duration::ZERO,
            },
        ),
    };
    if let Some(trace) = &arrival.trace {
        trace.id(&id);
    }
    answer::finish(shared, &arrival, id, outcome).await;
}

/// A job counted in [`Shared::arriving`] until this is dropped: at its compute step, or when
/// it is answered before one.
struct Arriving<'a>(&'a Shared);

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.0
            .arriving
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bodies this large are decoded on the blocking pool: a megabyte of inline JSON takes
/// milliseconds to read, which on the async threads (one by default, `--async-threads`) would
/// hold up every other job's messages meanwhile.
const DECODE_ON_THE_POOL: usize = 64 * 1024;

/// A job that was not decoded, or too large to run: the error, and the job's flops where its
/// parameters were read (0 where they could not be).
type Undecoded = (JobError, f64);

/// Decode and validate the job; every problem becomes a specific [`JobError`].
fn decode(shared: &Shared, arrival: &Arrival) -> Result<DecodedJob, Undecoded> {
    let kernel = arrival.kernel.clone().map_err(unread)?;
    let codec = arrival.codec.clone().map_err(unread)?;
    let job = decode_body(
        kernel,
        codec,
        &arrival.message.payload,
        &shared.config.limits,
    )?;
    fits(shared, job)
}

/// [`decode`], on the blocking pool.
async fn decode_on_the_pool(
    shared: &Arc<Shared>,
    arrival: &Arrival,
) -> Result<DecodedJob, Undecoded> {
    let kernel = arrival.kernel.clone().map_err(unread)?;
    let codec = arrival.codec.clone().map_err(unread)?;
    let body = arrival.message.payload.clone();
    let limits = shared.config.limits;
    let job = tokio::task::spawn_blocking(move || decode_body(kernel, codec, &body, &limits))
        .await
        .map_err(|e| unread(JobError::internal(format!("decoding the job failed: {e}"))))??;
    fits(shared, job)
}

fn unread(error: JobError) -> Undecoded {
    (error, 0.0)
}

/// `body` decoded against `limits`. A job refused for its size was read all the same: its
/// result reports the work it asked for (read again without the element limit).
fn decode_body(
    kernel: &'static kiln_kernels::KindEntry,
    codec: kiln_proto::Codec,
    body: &[u8],
    limits: &kiln_proto::Limits,
) -> Result<DecodedJob, Undecoded> {
    kernel.decode(codec, body, limits).map_err(|error| {
        let unbounded = kiln_proto::Limits {
            max_elements: u64::MAX,
            ..*limits
        };
        let flops = match error.kind {
            ErrorKind::TooLarge => kernel
                .decode(codec, body, &unbounded)
                .map_or(0.0, |job| job.plan.flops),
            _ => 0.0,
        };
        (error, flops)
    })
}

/// `job`, if it fits this worker's memory budget.
fn fits(shared: &Shared, job: DecodedJob) -> Result<DecodedJob, Undecoded> {
    match shared.admission.fits(job.kind.name, job.plan.elements) {
        Ok(()) => Ok(job),
        Err(error) => Err((error, job.plan.flops)),
    }
}

/// Run a decoded job: refused when cancelled, its objects loaded, computed, its output
/// stored. `None` when it was handed back unfinished (nothing more to answer).
async fn run(
    shared: &Arc<Shared>,
    arrival: &Arrival,
    mut job: DecodedJob,
    id: &str,
    arriving: Arriving<'_>,
) -> Option<Outcome> {
    if let Some(refused) = refused_at_once(shared, arrival, &job, id) {
        return Some(refused);
    }
    // A job reading objects may wait for a place to load them: `kiln status` finds it held.
    let loads = !job.objects().is_empty();
    // Held until the job has computed and stored its output: its objects are in memory until
    // then.
    let loaded = match load(shared, arrival, &mut job, id, loads).await {
        Ok(loaded) => loaded,
        Err(answer) => return answer,
    };
    let flops = job.plan.flops;
    let output_mode = job.output;
    // A job run inline is done in microseconds, before any heartbeat could report it.
    let tracked = loads || !compute::runs_inline(&shared.config, &job);
    if tracked && !loads {
        track(shared, id, arrival, true);
    }
    drop(arriving);
    let Ran {
        mut result,
        compute_ms,
        handed_back,
        stored,
        batched,
        waited,
        memory,
    } = compute::compute(
        shared,
        &arrival.message,
        job,
        id,
        arrival.envelope.enqueued_at,
    )
    .await;
    if let Some(stored) = stored {
        store_output(shared, arrival, id, output_mode, stored, &mut result).await;
    }
    drop((memory, loaded));
    if tracked {
        track(shared, id, arrival, false);
    }
    let kind = &arrival.kind;
    // Only jobs that reached the device: one cancelled, timed out or handed back while it
    // waited for a compute slot took none of its time (`compute_ms` 0, `device: none`).
    if compute_ms > 0.0 {
        shared.config.metrics.compute(kind, compute_ms / 1000.0);
    }
    if let Some(trace) = &arrival.trace {
        trace.compute(compute_ms, &result);
    }
    if let (true, Err(error)) = (handed_back, &result) {
        if let Some(trace) = &arrival.trace {
            trace.id(id);
        }
        if crate::handback::hand_back(shared, arrival, id, error).await {
            return None;
        }
    } else if compute_ms > 0.0 {
        // A launch shared by `batched` jobs took each of them 1/batched of the device.
        shared.admission.record(compute_ms / batched as f64);
    }
    Some(Outcome {
        result,
        compute_ms,
        flops,
        waited,
    })
}

/// What answers `job` before anything is loaded or run: a dtype only GPUs compute, on a CPU
/// worker (`"device": "none"`, under the id its body gives), or a `kiln cancel` mark.
fn refused_at_once(
    shared: &Shared,
    arrival: &Arrival,
    job: &DecodedJob,
    id: &str,
) -> Option<Outcome> {
    // Refused, but read: its result reports its work all the same.
    let refused = |error: JobError| Outcome {
        result: Err(error),
        compute_ms: 0.0,
        flops: job.plan.flops,
        waited: std::time::Duration::ZERO,
    };
    if let (ComputeDevice::Cpu, Some(mut refusal)) = (&shared.config.device, job.refusal_on_cpu()) {
        // A CPU worker serving another class (`--serve-class gpu`, a stand-in): the job was
        // sent where the message says to send it.
        let class = shared.config.class;
        if class != kiln_proto::DeviceClass::Cpu {
            let needs = refusal.message.split(';').next().unwrap_or_default();
            refusal.message = format!(
                "{needs}: this worker serves class {class} on a CPU (--serve-class); run one \
                 on a GPU for it, or use f32"
            );
        }
        return Some(refused(refusal));
    }
    if shared.cancelled.cancels(id, arrival.envelope.enqueued_at) {
        // On request: `kiln cancel`, or a client's (the Python client's `job.cancel()`).
        let when = match arrival.attempt > 1 || arrival.envelope.handbacks > 0 {
            true => "before it ran again (an earlier run of it was cut short)",
            false => "before it ran",
        };
        let error = JobError::new(ErrorKind::Cancelled, format!("cancelled on request {when}"));
        return Some(refused(error));
    }
    None
}

/// Load the objects of `job` (which `loads` them: tracked as held meanwhile); `Err` with what
/// to answer when they were not loaded (`None`: handed back).
async fn load(
    shared: &Shared,
    arrival: &Arrival,
    job: &mut DecodedJob,
    id: &str,
    loads: bool,
) -> Result<Option<LoadPermit>, Option<Outcome>> {
    if loads {
        track(shared, id, arrival, true);
    }
    let named = (id, arrival.envelope.enqueued_at);
    let unloaded = match crate::data::load(shared, &arrival.message, job, named).await {
        Ok(loaded) => return Ok(loaded),
        Err(unloaded) => unloaded,
    };
    // The plan as far as the objects told it (sizes read from them, when they were loaded).
    let flops = job.plan.flops;
    let refused = |error| Outcome {
        result: Err(error),
        compute_ms: 0.0,
        flops,
        waited: std::time::Duration::ZERO,
    };
    if loads {
        track(shared, id, arrival, false);
    }
    Err(match unloaded {
        Unloaded::Failed(error) => Some(refused(error)),
        Unloaded::Stopping(error) => {
            if crate::handback::hand_back(shared, arrival, id, &error).await {
                return Err(None);
            }
            Some(refused(error))
        }
    })
}

/// Store an output too large to travel in the result in the object store, and name it in the
/// result; a failure to store it fails the job.
async fn store_output(
    shared: &Shared,
    arrival: &Arrival,
    id: &str,
    mode: OutputMode,
    stored: Stored,
    result: &mut Result<serde_json::Value, JobError>,
) {
    let Ok(output) = result else { return };
    let format = crate::data::format_of(&stored, mode);
    let name = kiln_proto::output_object_name(
        id,
        arrival.envelope.replay,
        arrival.stream_sequence,
        arrival.attempt,
        format,
    );
    let message = &arrival.message;
    if let Err(error) =
        crate::data::store_output(shared, message, &name, format, stored, output).await
    {
        *result = Err(error);
    }
}

/// Note a job as held (waiting for a compute slot; or no longer held) for the heartbeat.
fn track(shared: &Shared, id: &str, arrival: &Arrival, holding: bool) {
    let mut running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
    if holding {
        running.insert(
            (arrival.kind.clone(), id.to_owned()),
            kiln_proto::RunningJob {
                id: id.to_owned(),
                kind: arrival.kind.clone(),
                attempt: arrival.attempt,
                waiting: true,
            },
        );
    } else {
        running.remove(&(arrival.kind.clone(), id.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every job's future is boxed when it is spawned, which copies all of it, and an async
    /// fn's future is as large as its largest path. The object store's and dead-lettering
    /// paths are boxed where they are taken, so a plain job does not carry them: 28,272 bytes
    /// before, 5,024 after (the copy was 6.6% of the worker's samples in `kiln-bench
    /// pipeline`).
    #[test]
    fn a_jobs_future_stays_small() {
        fn size<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let job = size(|s: &'static Arc<Shared>, a: Arrival| handle(s, a));
        assert!(job <= 8 * 1024, "a job's future is {job} bytes");
    }
}
