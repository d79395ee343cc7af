//! GPU warm-up: run each kind's typical jobs before taking real ones, and tell a device that
//! merely ran out of memory from one that is broken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kiln_kernels::{ComputeDevice, Engines, NoCheckpoint};
use kiln_proto::{Codec, ErrorKind, JobError, Limits};

use crate::error::Error;

/// Run every registered kind's [`kiln_kernels::Kernel::WARMUP`] jobs on `device` and
/// `engines`, stopping early (between jobs) once `stop` is set. Blocking.
pub(crate) fn warm_up(
    device: &ComputeDevice,
    engines: Engines,
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
            run_guarded(device, || job.run_with(device, engines, &NoCheckpoint))
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
///
/// CubeCL runs each GPU's work on its own device thread: when an allocation fails there, that
/// thread panics with the reason ("can't allocate buffer of size: …") and the job's thread sees
/// only that the channel to it broke ("CallError"). So such a failure is matched with the
/// panics [`record_panics`] saw in the seconds before it.
pub(crate) fn panic_error(device: &ComputeDevice, message: &str) -> JobError {
    let first_line = message.lines().next().unwrap_or(message).trim();
    if !is_out_of_memory(message)
        && message.contains("CallError")
        && let Some(cause) = recent_panic(std::time::Duration::from_secs(10), is_out_of_memory)
    {
        let cause = cause.lines().next().unwrap_or(&cause).trim().to_owned();
        return JobError::new(
            ErrorKind::OutOfMemory,
            format!(
                "{device} ran out of memory for this job ({cause}, on the GPU runtime's device thread); submit a smaller job or run it on a device with more memory"
            ),
        );
    }
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
        "can't allocate",
        "cannot allocate",
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

/// The last panic messages of any thread in this process, newest last, with when they happened.
static PANICS: std::sync::Mutex<Vec<(std::time::Instant, String)>> =
    std::sync::Mutex::new(Vec::new());

/// Keep the messages of panics on every thread (the previous hook still prints them), so that
/// [`panic_error`] can find out why a GPU runtime's device thread broke. Installed once.
pub(crate) fn record_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = panic_text(info.payload());
            if let Ok(mut panics) = PANICS.lock() {
                if panics.len() >= 16 {
                    panics.remove(0);
                }
                panics.push((std::time::Instant::now(), text));
            }
            previous(info);
        }));
    });
}

/// The newest panic of the last `within` whose message satisfies `wanted`.
fn recent_panic(within: std::time::Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
    let panics = PANICS.lock().ok()?;
    panics
        .iter()
        .rev()
        .take_while(|(at, _)| at.elapsed() <= within)
        .find(|(_, text)| wanted(text))
        .map(|(_, text)| text.clone())
}

/// After a failure on a GPU, check with a tiny job whether the device still computes.
/// `Err` carries why it does not.
pub(crate) fn probe(device: &ComputeDevice, engines: Engines) -> Result<(), String> {
    let kind = kiln_kernels::find("vector_add").ok_or("vector_add is not registered")?;
    let job = kind
        .decode(
            Codec::Json,
            br#"{"params":{"a":[1,2],"b":[3,4]}}"#,
            &Limits::default(),
        )
        .map_err(|e| e.to_string())?;
    let out = run_guarded(device, || job.run_with(device, engines, &NoCheckpoint))
        .map_err(|e| e.message)?;
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
        assert_eq!(probe(&ComputeDevice::Cpu, Engines::default()), Ok(()));
    }

    #[test]
    fn a_device_thread_that_could_not_allocate_makes_the_job_out_of_memory() {
        record_panics();
        let device = ComputeDevice::Cuda(0);
        let thread = std::thread::Builder::new()
            .name("DSD-test".into())
            .spawn(|| panic!("called `Result::unwrap()` on an `Err` value: can't allocate buffer of size: 9381867520"))
            .unwrap();
        assert!(thread.join().is_err());
        let e = panic_error(
            &device,
            "called `Result::unwrap()` on an `Err` value: CallError",
        );
        assert_eq!(e.kind, ErrorKind::OutOfMemory);
        assert!(
            e.message
                .contains("can't allocate buffer of size: 9381867520"),
            "{}",
            e.message
        );
        // A broken channel with no allocation failure behind it stays internal.
        assert!(recent_panic(std::time::Duration::ZERO, is_out_of_memory).is_none());
    }
}
