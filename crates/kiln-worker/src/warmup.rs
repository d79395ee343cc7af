//! GPU warm-up: run each kind's typical jobs before taking real ones, and tell a device that
//! merely ran out of memory from one that is broken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kiln_kernels::{ComputeDevice, NoCheckpoint};
use kiln_proto::{Codec, ErrorKind, JobError, Limits};

use crate::error::Error;

/// Run every registered kind's [`kiln_kernels::Kernel::WARMUP`] jobs on `device`, stopping
/// early (between jobs) once `stop` is set. Blocking.
pub(crate) fn warm_up(
    device: &ComputeDevice,
    limits: &Limits,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut count = 0;
    for kind in kiln_kernels::KINDS {
        for params in kind.warmup {
            if stop.load(Ordering::SeqCst) {
                tracing::info!(jobs = count, "warm-up stopped early");
                return Ok(());
            }
            let t = Instant::now();
            let fail = |reason: String| Error::Warmup {
                device: device.to_string(),
                kind: kind.name,
                params,
                reason,
            };
            let body = format!(r#"{{"params":{params}}}"#);
            let job = kind
                .decode(Codec::Json, body.as_bytes(), limits)
                .map_err(|e| fail(e.to_string()))?;
            run_guarded(device, || job.run(device, &NoCheckpoint))
                .map_err(|e| fail(e.to_string()))?;
            count += 1;
            tracing::info!(
                kind = kind.name,
                params,
                ms = t.elapsed().as_secs_f64() * 1000.0,
                "warm-up job done"
            );
        }
    }
    tracing::info!(
        device = %device,
        jobs = count,
        seconds = started.elapsed().as_secs_f64(),
        "warm-up finished"
    );
    Ok(())
}

/// Run `f`, turning a panic (how Burn's GPU backends report device failures) into a
/// [`JobError`]: `out_of_memory` when the message says so, `internal` otherwise.
pub(crate) fn run_guarded<T>(
    device: &ComputeDevice,
    f: impl FnOnce() -> Result<T, JobError>,
) -> Result<T, JobError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(panic_error(device, &panic_text(payload.as_ref()))))
}

/// The error a panic on `device` becomes.
pub(crate) fn panic_error(device: &ComputeDevice, message: &str) -> JobError {
    let first_line = message.lines().next().unwrap_or(message).trim();
    if is_out_of_memory(message) {
        JobError::new(
            ErrorKind::OutOfMemory,
            format!(
                "{device} ran out of memory for this job ({first_line}); submit a smaller job or run it on a device with more memory"
            ),
        )
    } else {
        JobError::internal(format!("kernel panicked on {device}: {first_line}"))
    }
}

fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "out-of-memory",
        "outofmemory",
        "out_of_memory",
        "failed to allocate",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// After a failure on a GPU, check with a tiny job whether the device still computes.
/// `Err` carries why it does not.
pub(crate) fn probe(device: &ComputeDevice) -> Result<(), String> {
    let kind = kiln_kernels::find("vector_add").ok_or("vector_add is not registered")?;
    let job = kind
        .decode(
            Codec::Json,
            br#"{"params":{"a":[1,2],"b":[3,4]}}"#,
            &Limits::default(),
        )
        .map_err(|e| e.to_string())?;
    let out = run_guarded(device, || job.run(device, &NoCheckpoint)).map_err(|e| e.message)?;
    if out["c"] == serde_json::json!([4.0, 6.0]) {
        Ok(())
    } else {
        Err(format!(
            "a probe 1+3, 2+4 on {device} returned {}",
            out["c"]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_panics_become_out_of_memory_errors() {
        let e = panic_error(
            &ComputeDevice::Cuda(0),
            "An out-of-memory error happened during launch\nCaused by:\n  too big",
        );
        assert_eq!(e.kind, ErrorKind::OutOfMemory);
        assert!(
            e.message.contains("cuda:0 ran out of memory"),
            "{}",
            e.message
        );
        let e = panic_error(&ComputeDevice::Cuda(1), "CUDA_ERROR_ILLEGAL_ADDRESS");
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message.contains("cuda:1"), "{}", e.message);
    }

    #[test]
    fn probe_passes_on_a_working_cpu() {
        assert_eq!(probe(&ComputeDevice::Cpu), Ok(()));
    }
}
