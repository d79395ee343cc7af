use std::time::Duration;

/// Errors that stop a worker (job failures are result events, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stream, consumer or bucket could not be created or opened.
    #[error(transparent)]
    Setup(#[from] kiln_proto::streams::SetupError),
    /// A live worker already sends heartbeats under this worker's name.
    #[error(
        "a live worker named {name:?} (on {device}, started {started_at}) already sends heartbeats under this worker's --name (names that differ only in characters other than letters, digits and -_=. share an entry): two workers with one entry overwrite each other's, so `kiln workers` and `kiln status` would show one of them; give each worker its own --name (or leave it out for a unique one)"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The other worker's device.
        device: String,
        /// When the other worker started (RFC 3339).
        started_at: String,
    },
    /// A consumer, or a bucket the worker watches, could not be opened.
    #[error("could not open consumer {consumer}: {message}")]
    Consumer {
        /// The consumer's name, or the bucket's (`KILN_CANCEL`, `KILN_WORKERS`).
        consumer: String,
        /// The server's or client's error.
        message: String,
    },
    /// Jobs could not be pulled from a consumer.
    #[error("pulling jobs from {consumer} failed: {message}")]
    Pull {
        /// The consumer's name.
        consumer: String,
        /// The server's or client's error.
        message: String,
    },
    /// Jobs still ran when the drain timeout passed after a stop: how many, how many of them
    /// went back to the queue unspent (the others were answered, or retried as a failed
    /// attempt where the queue had no room), and the timeout.
    #[error(
        "{running} job(s) were not yet answered after the {timeout:?} drain timeout (computing, waiting for a compute slot or memory, or publishing their results); {handed_back} went back to the queue without spending a delivery"
    )]
    DrainTimeout {
        /// Jobs held when the drain timeout passed.
        running: usize,
        /// Of them, jobs queued again unspent.
        handed_back: usize,
        /// The drain timeout.
        timeout: Duration,
    },
    /// The device failed in a way that leaves it unusable; the worker stopped taking jobs and
    /// handed back what it held. Restart it (its supervisor should).
    #[error("device {device} is unusable, so this worker stopped: {reason}")]
    DevicePoisoned {
        /// The device: `cuda:0`, ….
        device: String,
        /// What failed on it.
        reason: String,
    },
    /// The device's memory size could not be found (and `--max-memory-mb` was not given).
    #[error("could not find how much memory {device} has: {reason}; set --max-memory-mb")]
    Memory {
        /// The device: `cpu`, `cuda:0`, ….
        device: String,
        /// Why its size could not be read.
        reason: String,
    },
    /// A warm-up job failed: the device or its runtime (libcuda, NVRTC, CUDA headers) is
    /// not usable.
    #[error(
        "warming up {device} failed on {kind} {params}: {reason}; check that libcuda, NVRTC and the CUDA headers (/usr/local/cuda) are installed"
    )]
    Warmup {
        /// The device: `cuda:0`, ….
        device: String,
        /// The warm-up job's kind (`all` when the warm-up task itself failed).
        kind: &'static str,
        /// The warm-up job's parameters, JSON (empty when the task itself failed).
        params: &'static str,
        /// Why it failed.
        reason: String,
    },
}

/// A result whose error is a worker [`Error`] unless said otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;
