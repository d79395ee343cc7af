//! Running jobs the way a worker does: decode through the registry, run on the CPU.

use std::sync::Mutex;

use kiln_kernels::{Checkpoint, ComputeDevice, NoCheckpoint, Progress, find};
use kiln_proto::{Codec, ErrorKind, JobError, Limits};
use serde_json::{Value, json};

/// Decode `{"params": params, "seed": seed}` as a `kind` job and run it on the CPU.
pub fn run_with(
    kind: &str,
    params: Value,
    seed: u64,
    checkpoint: &dyn Checkpoint,
) -> Result<Value, JobError> {
    run_on(
        &ComputeDevice::Cpu,
        kind,
        params,
        seed,
        &Limits::default(),
        checkpoint,
    )
}

/// Decode `{"params": params, "seed": seed}` as a `kind` job under `limits`, run it on
/// `device`.
pub fn run_on(
    device: &ComputeDevice,
    kind: &str,
    params: Value,
    seed: u64,
    limits: &Limits,
    checkpoint: &dyn Checkpoint,
) -> Result<Value, JobError> {
    let body = serde_json::to_vec(&json!({ "params": params, "seed": seed })).unwrap();
    let job = find(kind)
        .unwrap_or_else(|| panic!("{kind} is not registered"))
        .decode(Codec::Json, &body, limits)?;
    job.run(device, checkpoint)
}

/// Run a job that must succeed.
pub fn run(kind: &str, params: Value, seed: u64) -> Value {
    run_with(kind, params.clone(), seed, &NoCheckpoint)
        .unwrap_or_else(|e| panic!("{kind} {params} failed: {e}"))
}

/// The kind of error a job fails with, whether at decode time or when it runs.
pub fn error_kind(kind: &str, params: Value) -> ErrorKind {
    match run_with(kind, params.clone(), 0, &NoCheckpoint) {
        Ok(out) => panic!("{kind} {params} should fail but gave {out}"),
        Err(e) => e.kind,
    }
}

/// A JSON array of numbers (any nesting) flattened to f32s.
pub fn floats(value: &Value) -> Vec<f32> {
    match value {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("expected numbers, got {other}"),
    }
}

/// Asserts `actual` and `expected` agree element-wise within `tol · (1 + |expected|)`.
pub fn assert_close(actual: &[f32], expected: &[f64], tol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a as f64 - e).abs();
        assert!(
            err <= tol * (1.0 + e.abs()),
            "{what}: element {i} is {a}, expected {e} (error {err:e} over {tol:e})"
        );
    }
}

/// A checkpoint that records every call and fails at `fail_at` (an epoch, say).
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<Progress>>,
    pub fail_at: Option<u64>,
}

impl Checkpoint for Recorder {
    fn checkpoint(&self, progress: Progress) -> Result<(), JobError> {
        self.calls.lock().unwrap().push(progress);
        match self.fail_at {
            Some(at) if progress.done == at => {
                Err(JobError::new(ErrorKind::Cancelled, "cancelled by the test"))
            }
            _ => Ok(()),
        }
    }
}
