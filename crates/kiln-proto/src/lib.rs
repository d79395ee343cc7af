#![warn(missing_docs, unreachable_pub)]
//! kiln's wire contract: the types every kiln process and every client agrees on.
//!
//! - [`Job`]: the envelope published on `jobs.<class>.<kind>`, generic over the kind's
//!   parameters, JSON by default and bincode with `Content-Type: application/x-bincode`.
//! - [`ResultEvent`]: published on `results.<kind>.<id>` for every finished job.
//! - [`ObjectRef`], [`ObjectDescriptor`]: inputs and outputs in the `KILN_DATA` object store.
//! - [`MetricsSnapshot`]: published on `metrics.<kind>.<class>` by the aggregator.
//! - [`streams`]: the JetStream streams and durable consumers, created idempotently.
//! - [`Limits`]: what a job may ask for, checked before anything is allocated.
//!
//! ```
//! use kiln_proto::{subject, DeviceClass};
//! assert_eq!(subject::job(DeviceClass::Cpu, "matmul"), "jobs.cpu.matmul");
//! ```

mod codec;
mod data;
mod envelope;
mod error;
mod job;
mod limits;
mod metrics;
mod result;
mod state;
pub mod streams;
pub mod subject;
mod workers;

pub use codec::{
    CONTENT_TYPE_BINCODE, CONTENT_TYPE_JSON, Codec, in_utf16, json_at_path, without_bom,
};
pub use data::{BUCKET_DATA, ObjectDescriptor, ObjectRef, OutputMode, output_object_name};
pub use envelope::{Envelope, MAX_HANDBACKS, MAX_REPLAYS, OWN_HEADERS, cut};
pub use error::{Disposition, Error, ErrorKind, JobError, MAX_ERROR_MESSAGE, Result};
pub use job::{
    ASSIGNED_ID_PREFIX, ASSIGNED_ID_RULE, JOB_ID_RULE, Job, MAX_ID_LEN, new_job_id, resolve_job_id,
    submittable_job_id, valid_job_id,
};
pub use limits::{Limits, checked_product};
pub use metrics::{
    Latency, LatencyStats, MAX_RESULT_RANGES, MetricsSnapshot, PredictionStats, SizeMean,
    size_decade,
};
pub use result::{ResultEvent, Routing, Status, result_msg_id};
pub use state::{BUCKET_STATE, JobState, Phase, state_subject};
pub use streams::{MaxDeliveriesAdvisory, Topology};
pub use subject::{DeviceClass, JobSubject};
pub use workers::{
    BUCKET_CANCEL, BUCKET_WORKERS, RunningJob, WorkerInfo, cancel_applies, instance_name, job_key,
    key_byte,
};

/// Header carrying the job id into JetStream's duplicate detection.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Header naming the job id on a copy of a job (routed, handed back or replayed, whose
/// `Nats-Msg-Id` is [`copy_msg_id`]'s): the original already holds `<id>` in the same
/// stream's duplicate window.
pub const HEADER_JOB_ID: &str = "Kiln-Job-Id";
/// Header carrying a scheduler's [`Routing`] decision (JSON) on a routed job.
pub const HEADER_ROUTING: &str = "Kiln-Routing";
/// Header of a dead letter: why the job was given up.
pub const HEADER_DLQ_REASON: &str = "Kiln-Dlq-Reason";
/// Set on a dead letter whose job body could not be kept (it did not fit beside the
/// letter's headers): why. Such a letter cannot be replayed.
pub const HEADER_DLQ_BODY: &str = "Kiln-Dlq-Body";
/// Header of a dead letter: the subject the job was published on.
pub const HEADER_DLQ_SUBJECT: &str = "Kiln-Dlq-Subject";
/// On a job replayed from the dead-letter queue: how many times it has been replayed (its
/// result then has a `Nats-Msg-Id` of its own, see [`result_msg_id`]).
pub const HEADER_REPLAY: &str = "Kiln-Replay";
/// On a job a worker handed back without running it to its end (it was shutting down, or its
/// device stopped working): how many times that has happened. The copy is a new message, so
/// the hand-back does not spend one of the job's deliveries (`max_deliver`).
pub const HEADER_HANDBACKS: &str = "Kiln-Handbacks";
/// On a copy of a job (a scheduler's routed copy, a worker's hand-back): when the job was first
/// stored in `KILN_JOBS` (RFC 3339, by the server's clock), so that its result's `enqueued_at`,
/// `queue_ms` and `total_ms` count from the submission rather than from the copy.
pub const HEADER_ENQUEUED_AT: &str = "Kiln-Enqueued-At";

/// Whether a refused publish was refused because its stream is full (`KILN_JOBS` at
/// `--max-queued-jobs` or its byte limit, with discard-new): room comes back as jobs finish.
pub fn refused_for_room(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("maximum messages exceeded") || error.contains("maximum bytes exceeded")
}

/// Whether a refused publish was refused for its size: by the client against the server's
/// `max_payload`, or by a stream's `max_msg_size`.
pub fn refused_for_size(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("max payload")
        || error.contains("payload size limit")
        || error.contains("message size exceeds")
}

/// Whether a refused result publish says its subject already holds a result: the job was
/// answered before. `KILN_RESULTS` refuses it for the condition [`expect_no_result`] puts on
/// every result (`wrong last sequence`), or, as made by kiln before 2026-12, for its limit of
/// one message a subject with new ones discarded.
pub fn already_answered(error: &str) -> bool {
    wrong_last_sequence(error) || error.contains("maximum messages per subject exceeded")
}

/// Whether a refused conditional publish (`Nats-Expected-Last-Subject-Sequence`, a key-value
/// update at a revision) says another write to its subject came first: the server's "wrong
/// last sequence", error 10071, or, on a cluster since nats-server 2.11, error 10164 for a
/// write to the subject still in flight, which async-nats 0.51 reports as `Other` (so its
/// error kinds alone miss it). Read from the error's text, source included.
pub fn wrong_last_sequence(error: &str) -> bool {
    error.contains("wrong last sequence")
}

/// Whether a refused conditional publish says the stream could not check its condition yet
/// (error 10163, "expected last sequence per subject temporarily unavailable", a cluster
/// catching up): worth sending again a moment later.
pub fn last_sequence_not_ready(error: &str) -> bool {
    error.contains("expected last sequence per subject temporarily unavailable")
}

/// Publish a result only onto a subject that holds none yet
/// (`Nats-Expected-Last-Subject-Sequence: 0`): a job is answered once, for as long as its
/// result is kept, however often it is delivered.
pub fn expect_no_result(headers: &mut async_nats::HeaderMap) {
    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
}

/// The `Nats-Msg-Id` of a copy kiln publishes of a job into `KILN_JOBS` (`what` is `routed`,
/// `handback` or `replay`, `sequence` the original's in its stream): `<what>-<sequence>-<id>.`
/// and 64 random bits in hex. Without the random part anyone allowed to submit could compute
/// it (job ids and sequences are no secret) and publish a job under it first: the server
/// would then drop kiln's copy as a duplicate, report it stored, and the job would never
/// run. The price: a copy whose storing was not confirmed (its router died before acking the
/// original, or the PubAck was lost and the original handed back) is made again under a new
/// id, so the job runs twice and keeps its first answer (a job id is answered once).
pub fn copy_msg_id(what: &str, sequence: u64, id: &str) -> String {
    format!("{what}-{sequence}-{id}.{:016x}", rand::random::<u64>())
}

/// `at` as a `Kiln-Enqueued-At` value.
pub fn enqueued_at_value(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The headers of a job's copy (a scheduler's routed copy, a worker's hand-back, a dead
/// letter, a replay): the
/// original's, less the `Nats-Expected-*` conditions its own publish had to meet. Those name
/// the stream's state when the job was submitted (`Nats-Expected-Last-Sequence: 41`), which
/// the copy, published later into the same stream, could never meet: it would be refused, and
/// the job would go round until it was dead-lettered without running.
pub fn copy_headers(original: Option<&async_nats::HeaderMap>) -> async_nats::HeaderMap {
    copy_headers_except(original, &[])
}

/// [`copy_headers`], leaving out the headers named in `also` as well (names compared ignoring
/// case). A header of over [`COPIED_HEADER_MAX`] bytes is left out too, and other people's
/// headers past [`COPIED_HEADERS_MAX`] in all: the server refuses a message whose headers pass
/// 64 KiB, and a job that came with nearly that much would otherwise have no copy, hand-back
/// or dead letter the server takes, and go round for ever unanswered.
pub fn copy_headers_except(
    original: Option<&async_nats::HeaderMap>,
    also: &[&str],
) -> async_nats::HeaderMap {
    let mut copy = async_nats::HeaderMap::new();
    let mut others = 0usize;
    for (name, values) in original.into_iter().flat_map(async_nats::HeaderMap::iter) {
        let text: &str = name.as_ref();
        let starts = |prefix: &str| {
            text.get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
        };
        let condition = starts(EXPECTED_PREFIX);
        let left_out = also.iter().any(|n| n.eq_ignore_ascii_case(text));
        let size = text.len() + values.iter().map(|v| v.as_str().len()).sum::<usize>();
        // Only the headers kiln reads go beyond the cap (each at most 4 KiB): 16 made-up
        // `Nats-Pad-N` headers of 4,000 bytes each passed as NATS's own, and the dead letter
        // of such a job was refused for its headers' size, again every 5 s, for ever.
        let own = text.eq_ignore_ascii_case(HEADER_MSG_ID)
            || READ_HEADERS.iter().any(|n| n.eq_ignore_ascii_case(text))
            || OWN_HEADERS.iter().any(|n| n.eq_ignore_ascii_case(text));
        let copied = !condition && !left_out;
        let room = size <= COPIED_HEADER_MAX && (own || others + size <= COPIED_HEADERS_MAX);
        if copied && !own && room {
            others += size;
        }
        if copied && room {
            // Appended one by one: collecting into a HeaderMap keeps only a name's last value.
            for value in values {
                copy.append(name.clone(), value.clone());
            }
        }
    }
    copy
}

/// Headers of others' that kiln reads on a job, kept on its copies beyond the cap on the
/// rest: how its body is encoded (`kiln submit --bincode`), and its trace context.
const READ_HEADERS: [&str; 3] = ["Content-Type", "traceparent", "tracestate"];

/// The most bytes of one header, name and values, that a job's copy keeps.
pub const COPIED_HEADER_MAX: usize = 4096;

/// The most bytes of headers other than `Nats-Msg-Id` and kiln's own ([`OWN_HEADERS`]) that
/// a job's copy keeps.
pub const COPIED_HEADERS_MAX: usize = 16 * 1024;

/// The prefix of JetStream's publish conditions (`Nats-Expected-Stream`,
/// `Nats-Expected-Last-Sequence`, `Nats-Expected-Last-Subject-Sequence`,
/// `Nats-Expected-Last-Msg-Id`).
const EXPECTED_PREFIX: &str = "Nats-Expected-";

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy's message id names what it is and of which job, and cannot be worked out in
    /// advance: two copies of the same job at the same sequence differ.
    #[test]
    fn a_copys_message_id_cannot_be_known_in_advance() {
        let first = copy_msg_id("routed", 41, "mm-1");
        let second = copy_msg_id("routed", 41, "mm-1");
        assert_ne!(first, second);
        for id in [&first, &second] {
            let (named, random) = id.rsplit_once('.').unwrap();
            assert_eq!(named, "routed-41-mm-1");
            assert_eq!(random.len(), 16, "{id}");
            assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
    }

    #[test]
    fn a_copy_keeps_every_header_but_the_publish_conditions() {
        let mut original = async_nats::HeaderMap::new();
        original.insert(HEADER_MSG_ID, "job-1");
        original.insert("traceparent", "00-abc-def-01");
        original.append("Kiln-Note", "one");
        original.append("Kiln-Note", "two");
        original.insert("Nats-Expected-Last-Sequence", "41");
        original.insert("nats-expected-stream", "KILN_JOBS");
        original.insert("Nats-Expected-Last-Subject-Sequence", "7");
        let copy = copy_headers(Some(&original));
        assert_eq!(copy.len(), 3, "{copy:?}");
        assert_eq!(copy.get(HEADER_MSG_ID).unwrap().as_str(), "job-1");
        assert_eq!(copy.get("traceparent").unwrap().as_str(), "00-abc-def-01");
        let notes: Vec<&str> = copy.get_all("Kiln-Note").map(|v| v.as_str()).collect();
        assert_eq!(notes, ["one", "two"]);
        assert!(copy.get("Nats-Expected-Last-Sequence").is_none());
        assert!(copy_headers(None).is_empty());
        let less = copy_headers_except(Some(&original), &["kiln-note"]);
        assert_eq!(less.len(), 2, "{less:?}");
        assert!(less.get("Kiln-Note").is_none());
    }

    #[test]
    fn a_copy_leaves_out_huge_headers_and_keeps_its_own_within_64_kib() {
        let mut original = async_nats::HeaderMap::new();
        original.insert(HEADER_MSG_ID, "job-1");
        original.insert("traceparent", "a".repeat(65_000).as_str());
        original.insert("Kiln-Routing", "b".repeat(5_000).as_str());
        for i in 0..10 {
            original.insert(format!("X-Note-{i}").as_str(), "c".repeat(3_000).as_str());
        }
        let copy = copy_headers(Some(&original));
        assert_eq!(copy.get(HEADER_MSG_ID).unwrap().as_str(), "job-1");
        assert!(copy.get("traceparent").is_none() && copy.get("Kiln-Routing").is_none());
        let notes = (0..10)
            .filter(|i| copy.get(format!("X-Note-{i}").as_str()).is_some())
            .count();
        assert_eq!(notes, 5, "16 KiB holds five notes of 3,008 bytes: {copy:?}");
        // Headers named like NATS's or kiln's but read by neither count as others.
        let mut original = async_nats::HeaderMap::new();
        original.insert(HEADER_JOB_ID, "job-1");
        for i in 0..16 {
            original.insert(format!("Nats-Pad-{i}").as_str(), "d".repeat(4_000).as_str());
            original.insert(format!("Kiln-Pad-{i}").as_str(), "e".repeat(4_000).as_str());
        }
        original.insert("Content-Type", "application/x-bincode");
        original.insert("traceparent", "00-abc-def-01");
        let copy = copy_headers(Some(&original));
        assert_eq!(copy.get(HEADER_JOB_ID).unwrap().as_str(), "job-1");
        // What kiln reads is kept, however many others came first.
        assert_eq!(
            copy.get("Content-Type").unwrap().as_str(),
            "application/x-bincode"
        );
        assert_eq!(copy.get("traceparent").unwrap().as_str(), "00-abc-def-01");
        let size: usize = copy
            .iter()
            .map(|(name, values)| {
                let name: &str = name.as_ref();
                name.len() + values.iter().map(|v| v.as_str().len()).sum::<usize>()
            })
            .sum();
        assert!(size <= COPIED_HEADERS_MAX + 200, "{size} bytes");
    }

    #[test]
    fn a_copy_counts_from_the_submission_and_nothing_later() {
        use time::macros::datetime;
        let published = datetime!(2026-11-27 10:00:05 UTC);
        let submitted = datetime!(2026-11-27 09:58:00.25 UTC);
        let enqueued_at = |h: Option<&async_nats::HeaderMap>, published| {
            Envelope::read(true, h, published).enqueued_at
        };
        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(enqueued_at(None, published), published);
        assert_eq!(enqueued_at(Some(&headers), published), published);
        headers.insert(HEADER_ENQUEUED_AT, enqueued_at_value(submitted).as_str());
        assert_eq!(
            headers.get(HEADER_ENQUEUED_AT).unwrap().as_str(),
            "2026-11-27T09:58:00.25Z"
        );
        assert_eq!(enqueued_at(Some(&headers), published), submitted);
        // A time after the copy's own (forged, or another clock) or no time at all is not
        // believed.
        for value in ["2026-11-27T10:00:06Z", "yesterday", ""] {
            headers.insert(HEADER_ENQUEUED_AT, value);
            assert_eq!(enqueued_at(Some(&headers), published), published, "{value}");
        }
    }
}
