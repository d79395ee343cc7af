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
    #[error("{0} jobs were still running after the {1:?} drain timeout; they will be redelivered")]
    DrainTimeout(usize, Duration),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
