//! `--matmul-engine burn` and `--conv2d-engine burn` on the CPU: matmul and conv2d jobs run on
//! burn-ndarray and say so, and agree with the OpenBLAS product where OpenBLAS is installed and
//! with the direct depthwise loop. The engines travel with each run, so both run side by side.

use kiln_kernels::{ComputeDevice, ConvEngine, Engines, MatmulEngine, NoCheckpoint, find};
use kiln_proto::{Codec, Limits};
use serde_json::{Value, json};

/// Run a `kind` job with seed 11 on the CPU, on `engines`.
fn run_on(engines: Engines, kind: &str, params: Value) -> Value {
    let body = serde_json::to_vec(&json!({ "params": params, "seed": 11 })).unwrap();
    let job = find(kind)
        .unwrap()
        .decode(Codec::Json, &body, &Limits::default())
        .unwrap();
    job.run_with(&ComputeDevice::Cpu, engines, &NoCheckpoint)
        .unwrap()
}

fn matmul_on(matmul: MatmulEngine, params: Value) -> Value {
    let engines = Engines {
        matmul,
        ..Engines::default()
    };
    run_on(engines, "matmul", params)
}

fn conv2d_on(conv: ConvEngine, params: Value) -> Value {
    let engines = Engines {
        conv,
        ..Engines::default()
    };
    run_on(engines, "conv2d", params)
}

#[test]
fn burn_engine_runs_matmul_on_burn_ndarray_and_agrees_with_openblas() {
    let params = json!({"m": 96, "k": 200, "n": 64});
    let burn = matmul_on(MatmulEngine::Burn, params.clone());
    assert_eq!(burn["engine"], "burn-ndarray");
    assert_eq!(burn["dtype"], "f32");

    let blas = matmul_on(MatmulEngine::Blas, params);
    if !kiln_kernels::vendor::openblas::available() {
        eprintln!(
            "SKIPPED the OpenBLAS half: {:?}",
            kiln_kernels::vendor::openblas::probe()
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

#[test]
fn burn_engine_filters_images_on_burn_ndarray_exactly_as_the_direct_loop_does() {
    let image: Vec<Vec<Vec<f32>>> = (0..2)
        .map(|c| {
            (0..9)
                .map(|y| {
                    (0..13)
                        .map(|x| ((c * 31 + y * 7 + x * 3) % 17) as f32 / 16.0)
                        .collect()
                })
                .collect()
        })
        .collect();
    for params in [
        json!({"image": image, "filter": "sobel"}),
        json!({"image": image, "filter": "gaussian"}),
        json!({"batch": 2, "channels": 3, "height": 120, "width": 250, "filter": "sharpen"}),
    ] {
        let burn = conv2d_on(ConvEngine::Burn, params.clone());
        let direct = conv2d_on(ConvEngine::Native, params);
        assert_eq!(burn["engine"], "burn-ndarray");
        assert_eq!(direct["engine"], "direct");
        // Same order of additions: the same bits, image and summary.
        assert_eq!(burn["image"], direct["image"]);
        assert_eq!(burn["summary"], direct["summary"]);
        assert!(burn["summary"]["l2_norm"].as_f64().unwrap() > 0.0);
    }
}
