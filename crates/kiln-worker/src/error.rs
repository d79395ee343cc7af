use std::time::Duration;

/// Errors that stop a worker (job failures are result events, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Setup(#[from] kiln_proto::streams::SetupError),
    #[error("could not open consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
    #[error("pulling jobs from {consumer} failed: {message}")]
    Pull { consumer: String, message: String },
    #[error(
        "{0} jobs were still running after the {1:?} drain timeout; they were handed back to the queue (or, where that failed, come back after the ack wait)"
    )]
    DrainTimeout(usize, Duration),
    /// The device failed in a way that leaves it unusable; the worker stopped taking jobs and
    /// handed back what it held. Restart it (its supervisor should).
    #[error("device {device} is unusable, so this worker stopped: {reason}")]
    DevicePoisoned { device: String, reason: String },
    #[error("could not find how much memory {device} has: {reason}; set --max-memory-mb")]
    Memory { device: String, reason: String },
    /// A warm-up job failed: the device or its runtime (libcuda, NVRTC, CUDA headers) is
    /// not usable.
    #[error(
        "warming up {device} failed on {kind} {params}: {reason}; check that libcuda, NVRTC and the CUDA headers (/usr/local/cuda) are installed"
    )]
    Warmup {
        device: String,
        kind: &'static str,
        params: &'static str,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
