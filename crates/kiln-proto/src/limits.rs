//! Limits every job is checked against before anything is allocated.

use serde::{Deserialize, Serialize};

use crate::error::JobError;

/// Upper bounds on what one job may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most tensor elements a job may hold at once (inputs, outputs and intermediates).
    pub max_elements: u64,
    /// Largest job body accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Largest output, in elements, returned inline in a result event for a job whose inputs
    /// were sent inline. Bigger outputs, and outputs of generated inputs, are summarised
    /// (shape, checksum, norms) instead.
    pub max_inline_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // 2^28 f32 elements = 1 GiB of tensors: an 8192² matmul fits, a 16384² does not.
            max_elements: 1 << 28,
            // nats-server's default max_payload.
            max_payload_bytes: 1024 * 1024,
            max_inline_output: 4096,
        }
    }
}

impl Limits {
    /// No bounds: for checking a job's parameters where the worker's limits, the ones that
    /// count, are not known (`kiln submit`).
    pub const UNLIMITED: Limits = Limits {
        max_elements: u64::MAX,
        max_payload_bytes: usize::MAX,
        max_inline_output: 0,
    };

    /// Refuse a job whose tensors would hold more than [`Limits::max_elements`].
    pub fn check_elements(&self, what: &str, elements: u64) -> Result<(), JobError> {
        if elements > self.max_elements {
            return Err(JobError::too_large(format!(
                "{what} needs {elements} tensor elements, over this worker's limit of {} \
                 (--max-elements); submit a smaller job",
                self.max_elements
            )));
        }
        Ok(())
    }

    /// Refuse a body longer than [`Limits::max_payload_bytes`].
    pub fn check_payload(&self, len: usize) -> Result<(), JobError> {
        if len > self.max_payload_bytes {
            return Err(JobError::too_large(format!(
                "job body is {len} bytes, over the limit of {} bytes; generate inputs from a \
                 seed or send fewer values",
                self.max_payload_bytes
            )));
        }
        Ok(())
    }
}

/// Multiply sizes without overflowing: huge numbers are a `too_large` job, not a crash.
pub fn checked_product(what: &str, dims: &[u64]) -> Result<u64, JobError> {
    dims.iter().try_fold(1u64, |acc, &d| {
        acc.checked_mul(d).ok_or_else(|| {
            JobError::too_large(format!(
                "{what} sizes {dims:?} overflow a 64-bit element count"
            ))
        })
    })
}
