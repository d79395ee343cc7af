//! `--matmul-engine burn` on the CPU: matmul jobs run on burn-ndarray and say so, and agree with
//! the OpenBLAS product where OpenBLAS is installed. A test binary of its own, because the engine
//! is chosen per process.

use kiln_kernels::{ComputeDevice, MatmulEngine, NoCheckpoint, find, set_matmul_engine};
use kiln_proto::{Codec, Limits};
use serde_json::{Value, json};

fn run(params: Value) -> Value {
    let body = serde_json::to_vec(&json!({ "params": params, "seed": 11 })).unwrap();
    let job = find("matmul")
        .unwrap()
        .decode(Codec::Json, &body, &Limits::default())
        .unwrap();
    job.run(&ComputeDevice::Cpu, &NoCheckpoint).unwrap()
}

#[test]
fn burn_engine_runs_matmul_on_burn_ndarray_and_agrees_with_openblas() {
    let params = json!({"m": 96, "k": 200, "n": 64});
    set_matmul_engine(MatmulEngine::Burn);
    let burn = run(params.clone());
    assert_eq!(burn["engine"], "burn-ndarray");
    assert_eq!(burn["dtype"], "f32");

    set_matmul_engine(MatmulEngine::Blas);
    let blas = run(params);
    if !kiln_kernels::openblas::available() {
        eprintln!(
            "SKIPPED the OpenBLAS half: {:?}",
            kiln_kernels::openblas::probe()
        );
        assert_eq!(blas["engine"], "burn-ndarray");
        return;
    }
    assert_eq!(blas["engine"], "openblas");
    // Same inputs, f32 both; only the order of the additions differs.
    for stat in ["checksum", "l2_norm", "min", "max"] {
        let (a, b) = (
            burn["summary"][stat].as_f64().unwrap(),
            blas["summary"][stat].as_f64().unwrap(),
        );
        let scale = burn["summary"]["l2_norm"].as_f64().unwrap();
        assert!(
            (a - b).abs() <= 1e-5 * scale,
            "{stat}: burn {a} vs openblas {b}"
        );
    }
}
