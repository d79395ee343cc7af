//! [`DataError`], and the messages the decoders share.

use std::io;

/// What was wrong with some data, in words a user can act on. `what` in each message is the
/// name the caller gave (an object name, a file name).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    /// The data is not in a format kiln reads, or is corrupt or truncated.
    #[error("{0}")]
    Invalid(String),
    /// The data holds more values than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// Reading the data failed (the connection, the store).
    #[error("{0}")]
    Io(String),
}

impl From<DataError> for kiln_proto::JobError {
    /// Bad data fails the job; a failed read is internal, so a worker retries it.
    fn from(error: DataError) -> Self {
        match error {
            DataError::Invalid(message) => kiln_proto::JobError::invalid_input(message),
            DataError::TooLarge(message) => kiln_proto::JobError::too_large(message),
            DataError::Io(message) => kiln_proto::JobError::internal(message),
        }
    }
}

pub(super) fn invalid(message: String) -> DataError {
    DataError::Invalid(message)
}

pub(super) fn io_error(what: &str, error: &io::Error) -> DataError {
    DataError::Io(format!("{what}: reading failed ({error}); try again"))
}

pub(super) fn truncated(what: &str, expected: u64, found: u64) -> DataError {
    invalid(format!(
        "{what}: truncated: header says {expected} bytes of values, found {found}; \
         upload the whole file again"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_become_job_errors_of_the_right_kind() {
        use kiln_proto::{ErrorKind, JobError};
        let kind = |e: DataError| JobError::from(e).kind;
        assert_eq!(
            kind(DataError::Invalid("x".into())),
            ErrorKind::InvalidInput
        );
        assert_eq!(kind(DataError::TooLarge("x".into())), ErrorKind::TooLarge);
        assert_eq!(kind(DataError::Io("x".into())), ErrorKind::Internal);
        assert_eq!(JobError::from(DataError::Invalid("m".into())).message, "m");
    }
}
