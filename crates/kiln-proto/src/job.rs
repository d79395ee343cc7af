//! The job envelope: the same structure in JSON and bincode, with kind-specific `params`.

use serde::{Deserialize, Serialize};

use crate::OutputMode;

/// A job as it travels on `jobs.<class>.<kind>`. `P` is the kind's parameter type, so a
/// worker that knows the kind from the subject decodes the whole body in one pass.
///
/// ```
/// use kiln_proto::{Codec, Job};
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Params { n: u32 }
/// let job: Job<Params> = Codec::Json.decode("job", br#"{"params":{"n":512}}"#).unwrap();
/// assert_eq!(job.params, Params { n: 512 });
/// assert_eq!(job.id, None);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job<P> {
    /// Job id. Absent: the `Nats-Msg-Id` header, else `seq-<stream sequence>`.
    #[serde(default)]
    pub id: Option<String>,
    /// The kind's parameters.
    pub params: P,
    /// Give up on the job after this many milliseconds of compute.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Seed for generated inputs (default 0), so that runs can be reproduced.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Where the output goes: inline, or stored in `KILN_DATA` ([`OutputMode`]).
    #[serde(default)]
    pub output: OutputMode,
}

/// Longest job id accepted; ids travel in headers and subjects of logs.
pub const MAX_ID_LEN: usize = 128;

/// The id a job goes by: its own `id`, else a copy's `Kiln-Job-Id` (routed, handed back or
/// replayed; the caller passes none for a submitted job), else
/// its `Nats-Msg-Id`, else one derived from the stream sequence (unique within the stream). A
/// header id that is not a valid job id ([`valid_job_id`]: a 5,000-character `Nats-Msg-Id`,
/// one with spaces) is passed over: it would not fit in a key-value key or a subject. (A body
/// id is checked when the job is decoded, and refused there.)
pub fn resolve_job_id(
    body_id: Option<&str>,
    job_id_header: Option<&str>,
    msg_id: Option<&str>,
    stream_sequence: u64,
) -> String {
    let valid = |id: &&str| valid_job_id(id);
    body_id
        .filter(|id| !id.is_empty())
        .or(job_id_header.filter(valid))
        .or(msg_id.filter(|id| submittable_job_id(id)))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("seq-{stream_sequence}"))
}

/// Whether a job id is acceptable: 1 to [`MAX_ID_LEN`] ASCII letters, digits, `-` and `_`.
///
/// One grammar checked at every door (the CLI, workers, the scheduler, the aggregator, dead
/// letter replays), so that every subject and key made from an id is valid by construction:
/// an id is one subject token (`results.<kind>.<id>`), a key-value key and an object name part.
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The prefix of the ids kiln gives jobs sent without one (`seq-<stream sequence>`).
pub const ASSIGNED_ID_PREFIX: &str = "seq-";

/// Whether a submitter may name a job `id` (in its body, `kiln submit --id`, or as the
/// `Nats-Msg-Id` it goes by): a valid id ([`valid_job_id`]) outside kiln's own
/// `seq-<sequence>` ids. Those are known to everyone in advance, and a job sent under one
/// before an id-less job reaches that sequence would answer that job with its own result.
pub fn submittable_job_id(id: &str) -> bool {
    valid_job_id(id) && !id.starts_with(ASSIGNED_ID_PREFIX)
}

/// Why a job id that [`valid_job_id`] accepts may not be submitted.
pub const ASSIGNED_ID_RULE: &str =
    "ids starting with \"seq-\" are kiln's own, given to jobs sent without an id";

/// The sentence that says what a valid job id is, for error messages.
pub const JOB_ID_RULE: &str =
    "a job id is 1 to 128 ASCII letters, digits, '-' and '_' (no dots, spaces or wildcards)";

/// A fresh job id: time-ordered and unique enough across submitters.
pub fn new_job_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{:x}", now.as_micros(), std::process::id(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_falls_back_to_header_then_sequence() {
        assert_eq!(resolve_job_id(Some("a"), None, Some("b"), 7), "a");
        assert_eq!(resolve_job_id(None, None, Some("b"), 7), "b");
        assert_eq!(resolve_job_id(None, Some("k"), Some("b"), 7), "k");
        assert_eq!(resolve_job_id(None, None, None, 7), "seq-7");
        assert_eq!(resolve_job_id(Some(""), None, None, 7), "seq-7");
        // Header ids that could not be keys or subjects are passed over.
        assert_eq!(
            resolve_job_id(None, None, Some(&"M".repeat(5000)), 7),
            "seq-7"
        );
        assert_eq!(resolve_job_id(None, None, Some("with spaces"), 7), "seq-7");
        assert_eq!(resolve_job_id(None, Some("\t\t"), Some("b"), 7), "b");
        assert_eq!(resolve_job_id(Some(""), None, Some("b"), 7), "b");
    }

    #[test]
    fn unknown_envelope_fields_are_rejected() {
        let err = crate::Codec::Json
            .decode::<Job<serde_json::Value>>("job", br#"{"params":{},"tiemout_ms":5}"#)
            .unwrap_err();
        assert!(err.to_string().contains("tiemout_ms"), "{err}");
    }

    #[test]
    fn fresh_ids_differ() {
        assert_ne!(new_job_id(), new_job_id());
        assert!(valid_job_id(&new_job_id()));
        assert!(!valid_job_id("has space"));
        for bad in [
            "wedge.",
            ".a",
            "a..b",
            "a.b",
            "*",
            ">",
            "a:b",
            "",
            &"x".repeat(129),
        ] {
            assert!(!valid_job_id(bad), "{bad:?}");
        }
        for good in ["a", "job-1", "JOB_2", &"x".repeat(128)] {
            assert!(valid_job_id(good), "{good:?}");
        }
    }
}
