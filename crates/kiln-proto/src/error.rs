//! Errors of the wire layer and the machine-readable error kinds of failed jobs.

use serde::{Deserialize, Serialize};

/// Errors raised while encoding, decoding or validating kiln messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body could not be decoded as the structure its subject calls for.
    #[error("could not decode {what} as {codec}: {message}")]
    Decode {
        /// What the body holds, as the caller names it (`job`, say).
        what: &'static str,
        /// The codec's name: `JSON` or `bincode`.
        codec: &'static str,
        /// The decoder's own message.
        message: String,
    },
    /// The body could not be encoded.
    #[error("could not encode {what} as {codec}: {message}")]
    Encode {
        /// What the body holds, as the caller names it (`job`, say).
        what: &'static str,
        /// The codec's name: `JSON` or `bincode`.
        codec: &'static str,
        /// The encoder's own message.
        message: String,
    },
    /// The `Content-Type` header names an encoding kiln does not speak.
    #[error(
        "unsupported content type {0:?}: send application/json (in UTF-8; the default) or application/x-bincode"
    )]
    ContentType(String),
    /// A subject that is not part of kiln's contract.
    #[error("subject {0:?} is not a kiln subject (expected jobs.<gpu|cpu|auto>.<kind>)")]
    Subject(String),
    /// A device class that is not `gpu`, `cpu` or `auto`.
    #[error("unknown device class {0:?}: use gpu, cpu or auto")]
    DeviceClass(String),
}

/// A result whose error is a wire-layer [`Error`] unless said otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The machine-readable kind of a job failure, carried in failed result events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The job's body or parameters are wrong; retrying cannot help.
    InvalidInput,
    /// The job asks for more than the limits allow; retrying cannot help.
    TooLarge,
    /// The device ran out of memory while running the job.
    OutOfMemory,
    /// The job ran past its `timeout_ms`.
    Timeout,
    /// The job was cancelled.
    Cancelled,
    /// Something went wrong inside kiln; a retry may succeed.
    Internal,
}

/// What a worker does with a job that failed with a given [`ErrorKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Answer with a `failed` result and terminate the message: retrying cannot help.
    Fail,
    /// Hand the job back (nak with a delay) so another attempt can succeed; after the
    /// last allowed delivery it is answered as failed and dead-lettered.
    Retry,
}

impl ErrorKind {
    /// Every kind, in the order above.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::InvalidInput,
        ErrorKind::TooLarge,
        ErrorKind::OutOfMemory,
        ErrorKind::Timeout,
        ErrorKind::Cancelled,
        ErrorKind::Internal,
    ];

    /// Whether a failure of this kind is worth another attempt.
    pub fn disposition(self) -> Disposition {
        match self {
            ErrorKind::Internal => Disposition::Retry,
            ErrorKind::InvalidInput
            | ErrorKind::TooLarge
            | ErrorKind::OutOfMemory
            | ErrorKind::Timeout
            | ErrorKind::Cancelled => Disposition::Fail,
        }
    }

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed: a machine-readable kind and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct JobError {
    /// What sort of failure it is, which decides whether it is retried.
    pub kind: ErrorKind,
    /// What went wrong, for people; [`JobError::bounded`] cuts it to [`MAX_ERROR_MESSAGE`]
    /// characters.
    pub message: String,
}

impl JobError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// An [`ErrorKind::InvalidInput`] error: the job is wrong and retrying cannot help.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// A [`ErrorKind::TooLarge`] error: the job asks for more than the limits allow.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }

    /// An [`ErrorKind::Internal`] error: a fault inside kiln, worth another attempt.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// This error with its message cut to [`MAX_ERROR_MESSAGE`] characters: a message can
    /// echo input (a bad id, a parameter, a server's reply), and every result and dead
    /// letter that carries it must fit in a message.
    pub fn bounded(mut self) -> Self {
        if self.message.chars().nth(MAX_ERROR_MESSAGE).is_some() {
            self.message = crate::cut(&self.message, MAX_ERROR_MESSAGE);
        }
        self
    }
}

/// Most characters of an error message kiln publishes.
pub const MAX_ERROR_MESSAGE: usize = 1024;
