/// Errors that stop the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stream, consumer or bucket could not be created or opened.
    #[error(transparent)]
    Setup(#[from] kiln_proto::streams::SetupError),
    /// Something on the server could not be read.
    #[error("could not read {what}: {message}")]
    Read {
        /// What: `the results stream`, `result events`, ….
        what: &'static str,
        /// The server's or client's error.
        message: String,
    },
    /// Another aggregator stored a snapshot of `subject` since this one last read or wrote
    /// it: two were counting, and this one stands by.
    #[error("another aggregator stored {subject} since this one last read it")]
    Superseded {
        /// The snapshot's subject.
        subject: String,
    },
    /// A snapshot or job state could not be stored.
    #[error("could not store {subject} (a metrics snapshot or a job state): {message}")]
    Publish {
        /// The subject it was published on.
        subject: String,
        /// The server's or client's error.
        message: String,
    },
}

/// A result whose error is an aggregator [`Error`] unless said otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;
