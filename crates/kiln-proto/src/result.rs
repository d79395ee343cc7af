//! Result events, published on `results.<kind>` for every finished job.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::JobError;
use crate::subject::DeviceClass;

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It ran to the end; `output` holds what it computed.
    Succeeded,
    /// It did not; `error` says why.
    Failed,
}

/// One finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEvent {
    /// The job's id.
    pub id: String,
    /// The job's kind (`unknown` for a kind this build does not run).
    pub kind: String,
    /// Whether it succeeded.
    pub status: Status,
    /// The device that ran it: `cpu`, `cuda:0`; `none` when the job never reached a device.
    pub device: String,
    /// The device class whose consumer delivered the job.
    pub class: DeviceClass,
    /// The worker's name.
    pub worker: String,
    /// Delivery attempt that produced this result, from 1.
    pub attempt: u64,
    /// When the job was submitted: it entered `KILN_JOBS` (for a routed or handed-back copy,
    /// when the original did: [`crate::HEADER_ENQUEUED_AT`]).
    #[serde(with = "time::serde::rfc3339")]
    pub enqueued_at: OffsetDateTime,
    /// When the worker started on it.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When the worker finished it.
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// Time in the queue: from enqueue to start.
    pub queue_ms: f64,
    /// Time on the device, inputs and read-back included.
    pub compute_ms: f64,
    /// From enqueue to finish.
    pub total_ms: f64,
    /// Kind-specific output summary (shape, checksum, norms, loss curve …).
    #[serde(default)]
    pub output: serde_json::Value,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The job's work in floating-point operations, as its kind computes it (0 when it
    /// failed before that).
    #[serde(default)]
    pub flops: f64,
    /// How the scheduler routed the job, for jobs submitted to `jobs.auto.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// How many times the job was replayed from the dead-letter queue (`kiln dlq replay`)
    /// before this run: 0 for a job's first life. A replay is a new run with its own result.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replay: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A scheduler's routing decision, carried from the routed job (header `Kiln-Routing`) into
/// its result event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    /// The class the job was sent to.
    pub chosen: DeviceClass,
    /// The scheduler that decided.
    pub by: String,
    /// Predicted completion time (queue wait + run) on the GPU class, if it had live workers.
    #[serde(default)]
    pub predicted_gpu_ms: Option<f64>,
    /// Predicted completion time on the CPU class, if it had live workers.
    #[serde(default)]
    pub predicted_cpu_ms: Option<f64>,
    /// Why, in a sentence.
    #[serde(default)]
    pub reason: String,
}

impl Routing {
    /// The prediction for the class that was chosen.
    pub fn predicted_ms(&self) -> Option<f64> {
        match self.chosen {
            DeviceClass::Gpu => self.predicted_gpu_ms,
            _ => self.predicted_cpu_ms,
        }
    }
}

impl ResultEvent {
    /// The `Nats-Msg-Id` of this result: derived from the job's kind and id, so that a job
    /// delivered twice is stored (and counted) once.
    pub fn msg_id(&self) -> String {
        result_msg_id(&self.kind, &self.id, self.replay)
    }
}

/// The `Nats-Msg-Id` of the result of job `id` of `kind` (in its `replay`th life from the
/// dead-letter queue): one stored result per job and run, however often the job is delivered.
/// The kind is part of it as it is of the result's subject: the same id sent as two kinds is
/// two jobs, and the second's result is no duplicate of the first's.
pub fn result_msg_id(kind: &str, id: &str, replay: u32) -> String {
    match replay {
        0 => format!("result-{kind}-{id}"),
        n => format!("result-{kind}-{id}-replay-{n}"),
    }
}
