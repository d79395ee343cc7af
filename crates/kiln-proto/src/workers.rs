//! Live workers: each worker keeps an entry in the `KILN_WORKERS` key-value bucket fresh with
//! a heartbeat; an entry not refreshed within the bucket's TTL expires, so the bucket's keys
//! are exactly the live workers.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::subject::DeviceClass;

/// The key-value bucket of live workers (one key per worker name).
pub const BUCKET_WORKERS: &str = "KILN_WORKERS";

/// What a worker announces about itself at every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's name, also its key in `KILN_WORKERS`.
    pub name: String,
    /// The class whose consumer it serves.
    pub class: DeviceClass,
    /// `cpu`, `cuda:0` …
    pub device: String,
    /// The Burn backend: `ndarray` or `cuda`.
    pub backend: String,
    /// What the kinds with a choice of library run on, as their result events name it:
    /// `{"matmul": "cublas" | "openblas" | "burn-…", "conv2d": "cudnn" | "burn-…"}`. A GPU
    /// worker on `burn-cuda` has no cuBLAS or cuDNN (its log says why) and runs 2–4× slower.
    #[serde(default)]
    pub engines: std::collections::BTreeMap<String, String>,
    /// Jobs it computes at once.
    pub capacity: usize,
    /// Jobs it holds at most (computing, waiting for a slot, publishing).
    pub max_in_flight: usize,
    /// Jobs it holds now.
    pub in_flight: usize,
    /// Jobs it answered with a `succeeded` result since it started.
    pub succeeded: u64,
    /// Jobs it answered with a `failed` result since it started.
    pub failed: u64,
    /// `warming_up`, `serving`, or `draining` (stopping: it takes no new jobs and finishes or
    /// hands back those it holds).
    pub state: String,
    /// The jobs it holds now (at most the first 1,000).
    #[serde(default)]
    pub running: Vec<RunningJob>,
    /// kiln's version.
    pub version: String,
    /// When the worker started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it wrote this heartbeat.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl WorkerInfo {
    /// Whether it takes new jobs of `class`: it serves that class and is not draining.
    pub fn takes(&self, class: crate::DeviceClass) -> bool {
        self.class == class && self.state != "draining"
    }
}

/// A job a worker holds, as its heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJob {
    /// The job's id.
    pub id: String,
    /// The job's kind.
    pub kind: String,
    /// Its delivery attempt, from 1.
    pub attempt: u64,
    /// Held but not computing yet: waiting for a compute slot and memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

/// The key-value bucket of cancelled job ids (`kiln cancel`); entries expire after a day.
pub const BUCKET_CANCEL: &str = "KILN_CANCEL";

/// Whether a cancel mark stored at `marked` (the server's time of its entry) cancels a job of
/// its id enqueued at `enqueued`: one enqueued before the mark, give or take a second (the
/// servers of a cluster stamp the two by their own clocks). A job sent under the id later is
/// not cancelled: a `kiln cancel` of an id with no job yet (a typo, a cancel before the
/// submit) marked it, and the mark, kept a day, cancelled the next job under that id.
pub fn cancel_applies(marked: time::OffsetDateTime, enqueued: time::OffsetDateTime) -> bool {
    enqueued <= marked + time::Duration::seconds(1)
}

/// Whether kiln writes byte `b` in a key-value key as it is: letters, digits and `-_=.`
/// (job keys, worker names; other bytes are encoded or replaced).
pub fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_=.".contains(&b)
}

/// The key of job `id` in a key-value bucket: the id itself when it only uses the characters
/// keys allow, else `x-` and its bytes in hex.
pub fn job_key(id: &str) -> String {
    if !id.is_empty() && !id.starts_with("x-") && id.bytes().all(key_byte) {
        id.to_owned()
    } else {
        let mut key = String::from("x-");
        for b in id.bytes() {
            key.push_str(&format!("{b:02x}"));
        }
        key
    }
}

/// A default name for one running role: `<host>-<role>-<pid>-<random>`. The random part keeps
/// apart two containers on one host network, which share the host name and both run as pid 1.
pub fn instance_name(role: &str) -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    // RandomState is seeded from the OS's randomness for each process.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "{host}-{role}-{}-{:04x}",
        std::process::id(),
        random & 0xffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_are_valid_and_distinct() {
        assert_eq!(job_key("job-1.a"), "job-1.a");
        assert_eq!(job_key("a:b"), "x-613a62");
        assert_ne!(job_key("x-61"), "x-61");
    }
}
