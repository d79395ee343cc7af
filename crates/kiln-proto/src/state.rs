//! Job state: one entry per job id in the `KILN_STATE` key-value bucket.
//!
//! `kiln submit` writes `queued` (with when and where), which `kiln status <id>` shows for a
//! job not answered yet. A job's answer is found by its own result subject
//! (`results.<kind>.<id>`), not here: nothing writes the final phases any more, which a
//! reader of an older bucket may still find. Where a job is running comes from the workers'
//! heartbeats (`KILN_WORKERS`), which list the jobs each holds, so no per-job write slows the
//! worker.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::ErrorKind;
use crate::subject::DeviceClass;

/// The job-state bucket.
pub const BUCKET_STATE: &str = "KILN_STATE";

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Stored in `KILN_JOBS` and not yet answered.
    Queued,
    /// Answered with a `succeeded` result.
    Succeeded,
    /// Answered with a `failed` result for any reason but cancellation.
    Failed,
    /// Answered with a `failed` result of kind `cancelled`.
    Cancelled,
}

impl Phase {
    /// Whether the job has been answered (every phase but `Queued`).
    pub fn is_final(self) -> bool {
        !matches!(self, Phase::Queued)
    }
}

/// One job's entry in `KILN_STATE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// Where the job is.
    pub phase: Phase,
    /// The job's kind.
    pub kind: String,
    /// The class it was submitted to (`auto` until routed) or that ran it.
    pub class: DeviceClass,
    /// When it entered this phase.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Final states: the device and worker that answered, and on which attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Final states: the name of the worker that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Final states: the delivery attempt that answered, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// Dead-letter replays before this run.
    #[serde(default)]
    pub replay: u32,
    /// Final states: the result event's sequence in `KILN_RESULTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_seq: Option<u64>,
    /// A failed job's error kind (`None` unless the phase is `Failed` or `Cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    /// `queued` by `kiln submit`: what the job computes (`JobSpec::digest`), by which a
    /// second submission of its id is told to be the same job or another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `queued` by `kiln submit` (and the Python client): the job's sequence in `KILN_JOBS`,
    /// by which `kiln status` tells it is still there (another job of its kind queued on its
    /// subject hid that it was gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_seq: Option<u64>,
}

impl JobState {
    /// A job just submitted.
    pub fn queued(kind: &str, class: DeviceClass) -> Self {
        Self {
            phase: Phase::Queued,
            kind: kind.to_owned(),
            class,
            at: OffsetDateTime::now_utc(),
            device: None,
            worker: None,
            attempt: None,
            replay: 0,
            result_seq: None,
            error: None,
            digest: None,
            job_seq: None,
        }
    }
}

/// The subject a raw publish uses to put `id`'s state (what `kv.put` does, without waiting
/// for each acknowledgement).
pub fn state_subject(id: &str) -> String {
    format!("$KV.{BUCKET_STATE}.{}", crate::job_key(id))
}
