//! A job message as it arrives: its delivery, subject and envelope read once, so that the
//! rest of the worker takes one checked value instead of reading headers piecemeal.

use async_nats::HeaderMap;
use async_nats::jetstream;
use kiln_kernels::KindEntry;
use kiln_proto::{Codec, DeviceClass, Envelope, JobError, JobSubject};
use time::OffsetDateTime;

use crate::config::WorkerConfig;
use crate::trace::JobTrace;

/// The kind a job is answered under when its subject names no kind this build runs.
pub(crate) const UNKNOWN_KIND: &str = "unknown";

/// A delivered job: the message, and what its delivery, subject and headers say.
pub(crate) struct Arrival {
    /// The message itself: its body, and the handle to ack it.
    pub message: jetstream::Message,
    /// The kind it is answered under: its subject's, or [`UNKNOWN_KIND`] when this build does
    /// not run that kind (result, metrics and Prometheus subjects stay one per real kind,
    /// whatever subjects people publish to).
    pub kind: String,
    /// The class its subject names (the worker's own when the subject is not a job's).
    pub class: DeviceClass,
    /// The kernel that runs it, or why none does (a subject that is not a job's, an unknown
    /// kind): `invalid_input`.
    pub kernel: Result<&'static KindEntry, JobError>,
    /// How its body is encoded (`Content-Type`), or why that is not known: `invalid_input`.
    pub codec: Result<Codec, JobError>,
    /// This delivery's number, from 1.
    pub attempt: u64,
    /// When this worker took it.
    pub started_at: OffsetDateTime,
    /// Its sequence in `KILN_JOBS`.
    pub stream_sequence: u64,
    /// What its subject and headers say, checked: id, enqueue time, routing, replay,
    /// hand-backs.
    pub envelope: Envelope,
    /// Its W3C trace context as it came (`traceparent`, `tracestate`), passed on to its
    /// result when this worker does not trace.
    pub trace_context: HeaderMap,
    /// Its spans on this worker, when tracing is on.
    pub trace: Option<JobTrace>,
}

impl Arrival {
    /// Read a delivered message; `None` (after a warning) when it carries no JetStream
    /// metadata, which no message of a pull consumer lacks.
    pub(crate) fn read(message: jetstream::Message, config: &WorkerConfig) -> Option<Self> {
        let started_at = OffsetDateTime::now_utc();
        let info = match message.info() {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, subject = %message.subject, "job without JetStream metadata; ignoring");
                return None;
            }
        };
        let (attempt, published) = (info.delivered.max(1) as u64, info.published);
        let stream_sequence = info.stream_sequence;
        let subject = JobSubject::parse(message.subject.as_str());
        // A routed or handed-back copy counts from the job's submission; kiln's own headers
        // are believed only on a copy's subject.
        let copy = kiln_proto::subject::is_copy_subject(message.subject.as_str());
        let envelope = Envelope::read(copy, message.headers.as_ref(), published);
        let (kind, class) = answered_as(&subject, config.class);
        let kernel = match &subject {
            Ok(s) => kiln_kernels::find(s.kind).ok_or_else(|| unknown_kind(s.kind)),
            Err(e) => Err(JobError::invalid_input(e.to_string())),
        };
        let codec = Codec::from_headers(message.headers.as_ref())
            .map_err(|e| JobError::invalid_input(e.to_string()));
        let mut trace_context = HeaderMap::new();
        kiln_telemetry::trace::forward(message.headers.as_ref(), &mut trace_context);
        let trace = JobTrace::start(
            &message, &kind, class, attempt, published, started_at, config,
        );
        Some(Arrival {
            message,
            kind,
            class,
            kernel,
            codec,
            attempt,
            started_at,
            stream_sequence,
            envelope,
            trace_context,
            trace,
        })
    }

    /// The id of the job, given the `id` in its decoded body (see [`Envelope::id`]).
    pub(crate) fn id(&self, body_id: Option<&str>) -> String {
        self.envelope.id(body_id, self.stream_sequence)
    }

    /// The id of a job whose body could not be decoded (see [`Envelope::undecoded_id`]).
    pub(crate) fn undecoded_id(&self) -> String {
        self.envelope
            .undecoded_id(&self.message.payload, self.stream_sequence)
    }

    /// The subject a copy of this job (a hand-back) goes to.
    pub(crate) fn copy_subject(&self) -> String {
        kiln_proto::subject::job_copy(self.class, &self.kind)
    }
}

/// The kind and class a job on `subject` is answered under: its subject's, with
/// [`UNKNOWN_KIND`] for a kind this build does not run, and `fallback` for the class of a
/// subject that is not a job's.
pub(crate) fn answered_as(
    subject: &Result<JobSubject<'_>, kiln_proto::Error>,
    fallback: DeviceClass,
) -> (String, DeviceClass) {
    match subject {
        Ok(s) if kiln_kernels::find(s.kind).is_some() => (s.kind.to_owned(), s.class),
        Ok(s) => (UNKNOWN_KIND.to_owned(), s.class),
        Err(_) => (UNKNOWN_KIND.to_owned(), fallback),
    }
}

/// Why a subject's kind is not run here.
fn unknown_kind(kind: &str) -> JobError {
    JobError::invalid_input(format!(
        "unknown job kind {kind:?}; known kinds: {}",
        kiln_kernels::kind_names().join(", ")
    ))
}
