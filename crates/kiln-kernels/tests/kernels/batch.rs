//! Jobs that share one launch (`run_batch`) get exactly what each would get alone, each with
//! its own inputs, seed, checkpoint and output, and say how many shared it.

use kiln_kernels::{Checkpoint, ComputeDevice, DecodedJob, Engines, NoCheckpoint, find, run_batch};
use kiln_proto::{Codec, ErrorKind, JobError, Limits};
use serde_json::{Value, json};

fn decode(kind: &str, params: Value, seed: u64) -> DecodedJob {
    let body = serde_json::to_vec(&json!({ "params": params, "seed": seed })).unwrap();
    find(kind)
        .unwrap()
        .decode(Codec::Json, &body, &Limits::default())
        .unwrap()
}

/// A checkpoint that stops the job as if it was cancelled.
struct Cancelled;

impl Checkpoint for Cancelled {
    fn checkpoint(&self, _: kiln_kernels::Progress) -> Result<(), JobError> {
        Err(JobError::new(ErrorKind::Cancelled, "cancelled"))
    }
}

#[test]
fn vector_adds_in_one_launch_match_their_runs_alone() {
    let jobs = [
        decode("vector_add", json!({"len": 1024}), 1),
        decode("vector_add", json!({"len": 7}), 2),
        decode(
            "vector_add",
            json!({"a": [1.5, 2.0, -3.0], "b": [0.25, 4.0, 3.0]}),
            0,
        ),
        decode("vector_add", json!({"len": 5000}), 1),
    ];
    assert!(jobs.iter().all(DecodedJob::batchable));
    let batch: Vec<(&DecodedJob, &dyn Checkpoint)> = jobs
        .iter()
        .map(|j| (j, &NoCheckpoint as &dyn Checkpoint))
        .collect();
    let together = run_batch(&ComputeDevice::Cpu, Engines::default(), &batch);
    assert_eq!(together.len(), jobs.len());
    for (job, batched) in jobs.iter().zip(together) {
        let mut batched = batched.unwrap();
        assert_eq!(batched["batched"], 4, "{batched}");
        batched.as_object_mut().unwrap().remove("batched");
        let alone = job.run(&ComputeDevice::Cpu, &NoCheckpoint).unwrap();
        assert_eq!(batched, alone);
    }
    let inline = run_batch(&ComputeDevice::Cpu, Engines::default(), &batch[2..3]);
    let inline = inline[0].as_ref().unwrap();
    assert_eq!(inline["c"], json!([1.75, 6.0, 0.0]));
    assert!(
        inline.get("batched").is_none(),
        "a batch of one is not marked"
    );
}

#[test]
fn a_stopped_job_fails_alone_and_the_rest_of_its_batch_runs() {
    let jobs = [
        decode("vector_add", json!({"len": 16}), 1),
        decode("vector_add", json!({"len": 16}), 2),
        decode("vector_add", json!({"len": 16}), 3),
    ];
    let batch: Vec<(&DecodedJob, &dyn Checkpoint)> = vec![
        (&jobs[0], &NoCheckpoint),
        (&jobs[1], &Cancelled),
        (&jobs[2], &NoCheckpoint),
    ];
    let results = run_batch(&ComputeDevice::Cpu, Engines::BURN, &batch);
    assert_eq!(results[1].as_ref().unwrap_err().kind, ErrorKind::Cancelled);
    for i in [0, 2] {
        let out = results[i].as_ref().unwrap();
        assert_eq!(out["batched"], 2, "two of the three shared the launch");
        let alone = jobs[i]
            .run_with(&ComputeDevice::Cpu, Engines::BURN, &NoCheckpoint)
            .unwrap();
        assert_eq!(out["summary"], alone["summary"]);
    }
}

#[test]
fn kinds_without_a_batched_path_or_big_jobs_are_not_batchable_and_run_one_by_one() {
    assert!(!decode("matmul", json!({"n": 8}), 1).batchable());
    assert!(!decode("vector_add", json!({"len": 1 << 20}), 1).batchable());
    let mixed = [
        decode("vector_add", json!({"len": 8}), 1),
        decode("matmul", json!({"n": 8}), 1),
    ];
    let batch: Vec<(&DecodedJob, &dyn Checkpoint)> = mixed
        .iter()
        .map(|j| (j, &NoCheckpoint as &dyn Checkpoint))
        .collect();
    let results = run_batch(&ComputeDevice::Cpu, Engines::default(), &batch);
    for (job, result) in mixed.iter().zip(results) {
        assert_eq!(
            result.unwrap(),
            job.run(&ComputeDevice::Cpu, &NoCheckpoint).unwrap()
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_vector_adds_in_one_launch_match_their_runs_alone() {
    assert!(
        kiln_kernels::cuda_device_count() > 0,
        "needs a CUDA device (libcuda.so.1 and /dev/nvidia*); it is ignored by default"
    );
    let device = ComputeDevice::Cuda(0);
    let jobs: Vec<DecodedJob> = (0..64)
        .map(|i| decode("vector_add", json!({"len": 1000 + i}), i))
        .collect();
    let batch: Vec<(&DecodedJob, &dyn Checkpoint)> = jobs
        .iter()
        .map(|j| (j, &NoCheckpoint as &dyn Checkpoint))
        .collect();
    for engines in [Engines::default(), Engines::BURN] {
        let together = run_batch(&device, engines, &batch);
        for (job, batched) in jobs.iter().zip(together) {
            let mut batched = batched.unwrap();
            assert_eq!(batched["batched"], 64);
            batched.as_object_mut().unwrap().remove("batched");
            // Alone on cuBLAS a job makes its inputs on the GPU; batched, on the host: the same
            // values either way.
            let mut alone = job.run_with(&device, engines, &NoCheckpoint).unwrap();
            let made = alone.as_object_mut().unwrap().remove("inputs");
            let expected = (engines == Engines::default()).then(|| json!("device"));
            assert_eq!(made, expected);
            assert_eq!(batched, alone);
        }
    }
}
