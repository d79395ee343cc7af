/// Errors that stop the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Setup(#[from] kiln_proto::streams::SetupError),
    #[error("could not read {what}: {message}")]
    Read { what: &'static str, message: String },
    #[error("could not store {subject} (a metrics snapshot or a job state): {message}")]
    Publish { subject: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
