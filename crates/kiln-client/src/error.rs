/// An error the source of another one.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong talking to kiln. Every message says what was wrong and, where the user
/// can act, what to do; the cause (if any) is the error's [`source`](std::error::Error::source),
/// so `{:#}` through anyhow prints "what: cause".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection settings or a NATS context are unusable.
    #[error("{message}")]
    Config {
        /// What is wrong and what to do.
        message: String,
        /// Why, when something failed underneath (reading a file, parsing it).
        #[source]
        source: Option<Cause>,
    },
    /// The server could not be reached, refused the credentials, or TLS failed.
    #[error("{message}")]
    Connect {
        /// What failed and what to check.
        message: String,
        /// The client's error, when not already named in the message.
        #[source]
        source: Option<async_nats::ConnectError>,
    },
    /// A job or request kiln refuses before sending it (an unknown kind, a bad id, a file
    /// name it cannot use).
    #[error("{0}")]
    Invalid(String),
    /// kiln's streams, consumers or buckets could not be created or opened.
    #[error(transparent)]
    Setup(#[from] kiln_proto::streams::SetupError),
    /// The server refused or failed an operation, or the client could not complete it.
    #[error("{what}")]
    Nats {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: Cause,
    },
    /// Data in the `KILN_DATA` object store could not be stored, fetched or used.
    #[error("{0}")]
    Data(String),
    /// A local file could not be read or written.
    #[error("{what}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A [`Error::Config`] without a cause.
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
            source: None,
        }
    }
}

/// Naming what a failed NATS or file operation was doing.
pub(crate) trait Context<T> {
    /// An [`Error::Nats`]: `what` was being done when it failed.
    fn nats(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn nats(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Nats {
            what: what(),
            source: Box::new(source),
        })
    }
}

/// An [`Error::Io`] about `what`.
pub(crate) fn io(what: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what(),
        source,
    }
}

/// What a missing stream means.
pub(crate) const NOT_INITIALISED: &str =
    "kiln's streams do not exist yet on this server; run `kiln init`";

/// Open kiln's stream `name`. A stream the server does not have is [`NOT_INITIALISED`]; any
/// other failure (a user not allowed to read it, a server gone) is said as it is: the advice
/// to run `kiln init` then was wrong, and an init without the operator's flags resets every
/// limit to its default.
pub(crate) async fn open_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Result<async_nats::jetstream::stream::Stream> {
    use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind};
    js.get_stream(name).await.map_err(|e| match e.kind() {
        GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            Error::config(NOT_INITIALISED)
        }
        _ => Error::Nats {
            what: format!("reading {name}"),
            source: Box::new(e),
        },
    })
}
