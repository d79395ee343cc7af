//! Job state: one entry per job id in the `KILN_STATE` key-value bucket, so that
//! `kiln status <id>` and `kiln result <id>` answer from one lookup instead of a scan.
//!
//! `kiln submit` writes `queued`; the aggregator writes the final state (`succeeded`,
//! `failed`, `cancelled`) with the result's sequence in `KILN_RESULTS` once it has folded it.
//! Where a job is running comes from the workers' heartbeats (`KILN_WORKERS`), which list
//! the jobs each holds, so no per-job write slows the worker.

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
    Queued,
    Succeeded,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn is_final(self) -> bool {
        !matches!(self, Phase::Queued)
    }
}

/// One job's entry in `KILN_STATE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    pub phase: Phase,
    pub kind: String,
    /// The class it was submitted to (`auto` until routed) or that ran it.
    pub class: DeviceClass,
    /// When it entered this phase.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Final states: the device and worker that answered, and on which attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// Dead-letter replays before this run.
    #[serde(default)]
    pub replay: u32,
    /// Final states: the result event's sequence in `KILN_RESULTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
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
        }
    }
}

/// The subject a raw publish uses to put `id`'s state (what `kv.put` does, without waiting
/// for each acknowledgement).
pub fn state_subject(id: &str) -> String {
    format!("$KV.{BUCKET_STATE}.{}", crate::job_key(id))
}
