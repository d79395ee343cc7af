//! The kinds on a CUDA GPU against the same references. Marked `#[ignore = "needs CUDA"]`, so
//! `cargo test` lists them as ignored where they did not run instead of passing them: run them
//! with `cargo test -p kiln-kernels --test kernels -- --ignored cuda_` on a CUDA machine (`just
//! gpu-check` runs the bundled test binary so). Without a CUDA device they fail, saying so.
//!
//! Tolerances are bounds, not measurements: each test prints the largest error it saw.

use kiln_kernels::{ComputeDevice, NoCheckpoint, cuda_device_count, seeded_values};
use kiln_proto::Limits;
use serde_json::{Value, json};

use crate::conv2d::{generated, named};
use crate::support::{floats, run_on};

/// Inline every output the tests look at.
const LIMITS: Limits = Limits {
    max_elements: 1 << 28,
    max_payload_bytes: 1 << 20,
    max_inline_output: 1 << 20,
};

/// Fails the test, saying why, on a machine without CUDA.
fn require_gpu(test: &str) {
    assert!(
        cuda_device_count() > 0,
        "{test} needs a CUDA device (libcuda.so.1 and /dev/nvidia*); it is ignored by default"
    );
}

fn run_gpu(kind: &str, params: Value, seed: u64) -> Value {
    run_on(
        &ComputeDevice::Cuda(0),
        kind,
        params.clone(),
        seed,
        &LIMITS,
        &NoCheckpoint,
    )
    .unwrap_or_else(|e| panic!("{kind} {params} on cuda:0 failed: {e}"))
}

/// Largest |actual − expected| / scale over all elements, asserting it is under `tol`.
fn check_scaled(actual: &[f32], expected: &[f64], scale: &[f64], tol: f64, what: &str) -> f64 {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let mut worst = 0.0f64;
    for (i, ((&a, &e), &s)) in actual.iter().zip(expected).zip(scale).enumerate() {
        let err = (a as f64 - e).abs() / s.max(1e-30);
        assert!(
            err <= tol,
            "{what}: element {i} is {a}, expected {e} (scaled error {err:e} over {tol:e})"
        );
        worst = worst.max(err);
    }
    println!("{what}: largest error {worst:.3e} of the scale (bound {tol:.1e})");
    worst
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_matmul_matches_reference_in_every_dtype() {
    require_gpu("cuda_matmul_matches_reference_in_every_dtype");
    let (m, k, n) = (96, 256, 80);
    let a = seeded_values(3, 0, m * k);
    let b = seeded_values(3, 1, k * n);
    let mut exact = vec![0.0f64; m * n];
    // The scale of each output: Σ|a·b|, what rounding errors are proportional to.
    let mut scale = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let t = a[i * k + p] as f64 * b[p * n + j] as f64;
                exact[i * n + j] += t;
                scale[i * n + j] += t.abs();
            }
        }
    }
    // Matmul jobs run on cuBLAS: f32 is true f32 (k·2⁻²⁴ ≈ 1.5e-5 of the scale at most, for
    // k = 256 sequential roundings). Otherwise inputs are rounded to the product's precision
    // (TF32 10-bit mantissa, f16 10 bits, bf16 7 bits), each product off by about two
    // roundings, f32 accumulation, and (f16/bf16) one rounding of the result: 2·2⁻¹¹ ≈ 1e-3
    // of the scale for TF32 and f16, 2·2⁻⁸ ≈ 8e-3 for bf16. The bounds below double those.
    for (dtype, tol) in [
        ("f32", 3e-5),
        ("tf32", 2e-3),
        ("f16", 2e-3),
        ("bf16", 1.6e-2),
    ] {
        // Sent inline (outputs of generated inputs are summarised, not returned).
        let rows = |v: &[f32], cols: usize| -> Vec<Vec<f32>> {
            v.chunks(cols).map(<[f32]>::to_vec).collect()
        };
        let params = json!({"a": rows(&a, k), "b": rows(&b, n), "dtype": dtype});
        let out = run_gpu("matmul", params, 3);
        assert_eq!(out["dtype"], dtype);
        assert_eq!(out["engine"], "cublas");
        assert_eq!(out["shape"], json!([m, n]));
        check_scaled(
            &floats(&out["c"]),
            &exact,
            &scale,
            tol,
            &format!("cuda matmul {dtype}"),
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_conv2d_matches_reference_for_every_filter() {
    require_gpu("cuda_conv2d_matches_reference_for_every_filter");
    let (c, h, w) = (3, 40, 50);
    let pixels = generated(6, c * h * w);
    // Pixels are in [0, 1): an output is off by at most (Σ|kernel|)·(rounding). conv2d jobs
    // run on cuDNN in true f32 (at most 25 roundings of 2⁻²⁴: 1e-5 is a wide bound).
    // Σ|kernel| is 1 (gaussian, box), 9 (sharpen) and 8 per derivative (sobel).
    for (filter, abs_sum) in [
        ("gaussian", 1.0),
        ("sobel", 8.0),
        ("sharpen", 9.0),
        ("box", 1.0),
    ] {
        let image: Vec<Vec<Vec<f32>>> = pixels
            .chunks(h * w)
            .map(|plane| plane.chunks(w).map(<[f32]>::to_vec).collect())
            .collect();
        let out = run_gpu("conv2d", json!({"image": image, "filter": filter}), 6);
        assert_eq!(out["shape"], json!([1, c, h, w]));
        assert_eq!(out["engine"], "cudnn");
        assert_eq!(out["dtype"], "f32");
        let expected = named(filter, &pixels, h, w);
        let scale = vec![abs_sum; expected.len()];
        check_scaled(
            &floats(&out["image"]),
            &expected,
            &scale,
            1e-5,
            &format!("cuda conv2d {filter}"),
        );
    }
    // Lower precisions: inputs rounded to the dtype (f16 and TF32 10-bit mantissas, bf16 7),
    // f32 accumulation, the output rounded once more (f16, bf16): about 2·2⁻¹¹ ≈ 1e-3 and
    // 2·2⁻⁸ ≈ 8e-3 of Σ|kernel|; the bounds double those.
    let image: Vec<Vec<Vec<f32>>> = pixels
        .chunks(h * w)
        .map(|plane| plane.chunks(w).map(<[f32]>::to_vec).collect())
        .collect();
    for (dtype, tol) in [("tf32", 2e-3), ("f16", 2e-3), ("bf16", 1.6e-2)] {
        let out = run_gpu(
            "conv2d",
            json!({"image": image, "filter": "sharpen", "dtype": dtype}),
            6,
        );
        assert_eq!(out["dtype"], dtype);
        let expected = named("sharpen", &pixels, h, w);
        check_scaled(
            &floats(&out["image"]),
            &expected,
            &vec![9.0; expected.len()],
            tol,
            &format!("cuda conv2d sharpen {dtype}"),
        );
    }
    let out = run_gpu(
        "conv2d",
        json!({"image": [[[1, 2, 3], [4, 5, 6]]], "kernel": [[0, 0, 0], [0, 0, 1], [0, 0, 0]]}),
        0,
    );
    assert_eq!(out["image"], json!([[[2.0, 3.0, 0.0], [5.0, 6.0, 0.0]]]));
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_train_mlp_learns_like_the_cpu() {
    require_gpu("cuda_train_mlp_learns_like_the_cpu");
    for seed in 0..2 {
        let started = std::time::Instant::now();
        let gpu_out = run_gpu("train_mlp", json!({}), seed);
        let gpu_time = started.elapsed();
        let cpu_out = crate::support::run("train_mlp", json!({}), seed);
        let curve = |out: &Value, key: &str| -> Vec<f64> {
            out["epochs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e[key].as_f64().unwrap())
                .collect()
        };
        println!(
            "cuda train_mlp seed {seed} ({gpu_time:?} incl. JIT): accuracy {:?}\n  loss {:?}\n  cpu loss {:?}",
            curve(&gpu_out, "accuracy"),
            curve(&gpu_out, "loss"),
            curve(&cpu_out, "loss"),
        );
        assert!(
            gpu_out["final_accuracy"].as_f64().unwrap() >= 0.9,
            "{gpu_out}"
        );
        let loss = curve(&gpu_out, "loss");
        assert!(loss[19] < loss[0] / 10.0, "{loss:?}");
        // Same data, batches and initial weights: the first epoch's loss agrees closely.
        let first_cpu = curve(&cpu_out, "loss")[0];
        assert!(
            (loss[0] - first_cpu).abs() < 0.02 * first_cpu,
            "{} vs {first_cpu}",
            loss[0]
        );
    }
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_vector_add_matches_the_cpu_exactly() {
    require_gpu("cuda_vector_add_matches_the_cpu_exactly");
    // One f32 addition per element, correctly rounded on both: bit-identical. On cuBLAS the
    // vectors are added as 4096-row matrices plus a one-column rest: lengths below, at and
    // past a whole number of rows.
    for len in [1, 1024, 4096, 1 << 20, (1 << 20) + 3] {
        let params = json!({ "len": len });
        let gpu = run_gpu("vector_add", params.clone(), 9);
        let cpu = crate::support::run("vector_add", params, 9);
        assert_eq!(gpu["engine"], "cublas", "len {len}");
        assert_eq!(cpu["engine"], "burn-ndarray", "len {len}");
        assert_eq!(gpu["summary"], cpu["summary"], "len {len}");
    }
    // Vectors sent inline come back inline, element for element.
    let a: Vec<f32> = (0..5000).map(|i| i as f32 * 0.25).collect();
    let b: Vec<f32> = (0..5000).map(|i| 1.0 - i as f32).collect();
    let out = run_gpu("vector_add", json!({"a": a, "b": b}), 9);
    let expected: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(floats(&out["c"]), expected);
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_cudnn_dense_convolutions_match_the_host_reference() {
    use kiln_kernels::Dtype;
    use kiln_kernels::vendor::cudnn::{ConvShape, conv2d, conv2d_reference, probe};
    require_gpu("cuda_cudnn_dense_convolutions_match_the_host_reference");
    probe(0).expect("cuDNN's start-up check");
    // A dense 3x3 convolution like the benchmark's, small, with odd sizes; and a grouped one.
    for shape in [
        ConvShape {
            batch: 2,
            channels: 16,
            height: 17,
            width: 23,
            out_channels: 8,
            kernel: [3, 3],
            padding: [1, 1],
            groups: 1,
        },
        ConvShape {
            batch: 1,
            channels: 8,
            height: 9,
            width: 9,
            out_channels: 8,
            kernel: [5, 3],
            padding: [2, 0],
            groups: 4,
        },
    ] {
        let x = seeded_values(4, 0, shape.input_len());
        let w = seeded_values(4, 1, shape.weight_len());
        let want: Vec<f64> = conv2d_reference(&x, &w, &shape)
            .into_iter()
            .map(f64::from)
            .collect();
        // Inputs in [-1, 1): Σ|x·w| is at most the taps per output.
        let taps = (shape.channels / shape.groups * shape.kernel[0] * shape.kernel[1]) as f64;
        for (dtype, tol) in [
            (Dtype::F32, 1e-5),
            (Dtype::Tf32, 2e-3),
            (Dtype::F16, 2e-3),
            (Dtype::Bf16, 1.6e-2),
        ] {
            let got = conv2d(0, &x, &w, &shape, dtype).expect("cuDNN conv2d");
            check_scaled(
                &got,
                &want,
                &vec![taps; want.len()],
                tol,
                &format!("cudnn {shape:?} {}", dtype.as_str()),
            );
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_seeded_inputs_made_on_the_device_are_the_hosts_bit_for_bit() {
    use kiln_kernels::Dtype;
    use kiln_kernels::vendor::nvrtc::{OnDevice, seeded_on_device};
    require_gpu("cuda_seeded_inputs_made_on_the_device_are_the_hosts_bit_for_bit");
    // One value, part of a thread's 16, a whole number of threads, past the host's 65,536-value
    // blocks, and about 10M, on both streams.
    for (seed, stream, n) in [
        (0, 0, 1),
        (7, 1, 17),
        (42, 0, 4096),
        (9, 1, (1 << 16) + 37),
        (3, 0, (1 << 20) + 3),
        (11, 1, 10_000_003),
    ] {
        let host = seeded_values(seed, stream, n);
        let what = format!("seed {seed} stream {stream} n {n}");
        match seeded_on_device(0, (seed, stream), n, Dtype::F32) {
            Ok(OnDevice::F32(device)) => {
                assert_eq!(device.len(), n, "{what}");
                let wrong = device
                    .iter()
                    .zip(&host)
                    .position(|(d, h)| d.to_bits() != h.to_bits());
                assert_eq!(wrong, None, "f32 {what}: first differing index");
            }
            other => panic!("f32 {what}: {other:?}"),
        }
        // The host's bf16/f16 inputs: `half`'s round-to-nearest-even conversion (what
        // kiln-kernels' `to_half` calls).
        for dtype in [Dtype::Bf16, Dtype::F16] {
            let expected: Vec<u16> = match dtype {
                Dtype::F16 => host
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect(),
                _ => host
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect(),
            };
            match seeded_on_device(0, (seed, stream), n, dtype) {
                Ok(OnDevice::Half(device)) => {
                    assert_eq!(device.len(), n, "{what}");
                    let wrong = device.iter().zip(&expected).position(|(d, h)| d != h);
                    assert_eq!(
                        wrong,
                        None,
                        "{} {what}: first differing index",
                        dtype.as_str()
                    );
                }
                other => panic!("{} {what}: {other:?}", dtype.as_str()),
            }
        }
    }
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_jobs_with_generated_inputs_make_them_on_the_device_with_the_same_results() {
    require_gpu("cuda_jobs_with_generated_inputs_make_them_on_the_device_with_the_same_results");
    // A product of generated matrices against the same matrices sent inline (uploaded from the
    // host): the same bits into the same cuBLAS call, the same summary.
    let (m, k, n) = (96, 256, 80);
    let rows = |v: Vec<f32>, cols: usize| -> Vec<Vec<f32>> {
        v.chunks(cols).map(<[f32]>::to_vec).collect()
    };
    let a = rows(seeded_values(5, 0, m * k), k);
    let b = rows(seeded_values(5, 1, k * n), n);
    for dtype in ["f32", "tf32", "bf16", "f16"] {
        let made = run_gpu("matmul", json!({"m": m, "k": k, "n": n, "dtype": dtype}), 5);
        let sent = run_gpu("matmul", json!({"a": a, "b": b, "dtype": dtype}), 5);
        assert_eq!(made["inputs"], "device", "matmul {dtype}");
        assert!(sent.get("inputs").is_none(), "matmul {dtype}: {sent}");
        assert_eq!(made["summary"], sent["summary"], "matmul {dtype}");
        assert_eq!(made["dtype"], dtype);
    }
    // A vector add of generated vectors against the CPU's (exact on both).
    for len in [1, 17, (1 << 20) + 3, 10_000_000] {
        let params = json!({ "len": len });
        let gpu = run_gpu("vector_add", params.clone(), 4);
        let cpu = crate::support::run("vector_add", params, 4);
        assert_eq!(gpu["inputs"], "device", "len {len}");
        assert!(cpu.get("inputs").is_none(), "len {len}");
        assert_eq!(gpu["summary"], cpu["summary"], "len {len}");
    }
    print_seeded_times(10_000_000);
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_conv2d_jobs_make_their_images_and_outputs_on_the_device() {
    require_gpu("cuda_conv2d_jobs_make_their_images_and_outputs_on_the_device");
    // A generated image against the same image sent inline (uploaded from the host): the same
    // bits into the same cuDNN plan. The generated job's output is made on the device (Sobel's
    // magnitude, 16-bit maps widened) and, at 360,000 values, summarised there; the sent one's
    // comes back whole and is summarised on the host: the same summary, bit for bit.
    let (c, h, w) = (3, 400, 300);
    let image: Vec<Vec<Vec<f32>>> = generated(8, c * h * w)
        .chunks(h * w)
        .map(|plane| plane.chunks(w).map(<[f32]>::to_vec).collect())
        .collect();
    for dtype in ["f32", "tf32", "bf16", "f16"] {
        for filter in ["sobel", "gaussian"] {
            let what = format!("conv2d {filter} {dtype}");
            let params = json!({
                "channels": c, "height": h, "width": w, "filter": filter, "dtype": dtype
            });
            let made = run_gpu("conv2d", params, 8);
            let sent = run_gpu(
                "conv2d",
                json!({"image": image, "filter": filter, "dtype": dtype}),
                8,
            );
            assert_eq!(made["inputs"], "device", "{what}: {made}");
            assert!(sent.get("inputs").is_none(), "{what}: {sent}");
            assert_eq!(made["engine"], "cudnn", "{what}");
            assert_eq!(made["shape"], json!([1, c, h, w]), "{what}");
            assert!(made.get("image").is_none(), "{what}: the summary only");
            assert_eq!(made["summary"], sent["summary"], "{what}");
        }
    }
}

/// What making inputs on the device saves a 10M-element vector add on cuBLAS (upload, add,
/// read back), best of three each way; printed for the GPU check (`--nocapture`), not
/// asserted: a test is no benchmark.
fn print_seeded_times(len: usize) {
    use kiln_kernels::vendor::cublas::{ReadBack, Source, vector_add_from};
    let best = |run: &dyn Fn() -> f64| (0..3).map(|_| run()).fold(f64::INFINITY, f64::min);
    let read = ReadBack::Values;
    let device = best(&|| {
        let start = std::time::Instant::now();
        vector_add_from(0, Source::Seeded(9), len, read).expect("device inputs");
        start.elapsed().as_secs_f64() * 1e3
    });
    let host = best(&|| {
        let start = std::time::Instant::now();
        let (a, b) = (seeded_values(9, 0, len), seeded_values(9, 1, len));
        vector_add_from(0, Source::Host(&a, &b), len, read).expect("host inputs");
        start.elapsed().as_secs_f64() * 1e3
    });
    println!(
        "seeded inputs, vector_add {len} on cuBLAS: made on the device {device:.2} ms, made on \
         the host and uploaded {host:.2} ms ({:.1}x)",
        host / device
    );
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_output_summaries_made_on_the_device_are_the_hosts_bit_for_bit() {
    use kiln_kernels::vendor::cublas::{Output, ReadBack, Source, matmul_from, vector_add_from};
    use kiln_kernels::vendor::nvrtc::summary_on_device;
    use kiln_kernels::{Dtype, Summary};
    require_gpu("cuda_output_summaries_made_on_the_device_are_the_hosts_bit_for_bit");
    // Bit for bit, but for a NaN's sign: the GPU's sums make the positive quiet NaN where the
    // CPU's make the negative one (both read null in a result).
    let bits = |s: &Summary| {
        let f = |x: f64| if x.is_nan() { f64::NAN } else { x }.to_bits();
        let g = |x: f32| x.to_bits();
        (
            f(s.checksum),
            f(s.l2_norm),
            g(s.min),
            g(s.max),
            f(s.mean),
            s.non_finite,
        )
    };
    // The kernel itself, at any length: magnitudes far apart, zeros of both signs, and values
    // that are not finite inside whole chunks and in the tail.
    let block = 1 << 16;
    for len in [1, 7, 8, 1000, block + 5, 3 * block + 4099] {
        let mut values = seeded_values(len as u64, 0, len);
        for (i, v) in values.iter_mut().enumerate() {
            *v *= [1.0, 1e-7, 3e7, 1e30, 0.0, -0.0][i % 6];
        }
        for (what, special) in [
            ("finite", None),
            ("nan", Some(f32::NAN)),
            ("inf", Some(f32::INFINITY)),
        ] {
            let mut values = values.clone();
            if let Some(x) = special {
                values[len / 2] = x;
                values[len - 1] = -x;
            }
            let made = summary_on_device(0, &values).expect("summary on the device");
            let host = Summary::of(&values);
            assert_eq!(
                bits(&made),
                bits(&host),
                "{len} values, {what}: {made:?} vs {host:?}"
            );
        }
    }
    // Through the jobs' path: a vector add and an f32 product big enough to be summarised on
    // the device, and a bf16 product (read back and summarised on the host).
    let len = 10_000_001;
    let source = Source::Seeded(11);
    let (values, _) = vector_add_from(0, source, len, ReadBack::Values).expect("values");
    let (made, _) = vector_add_from(0, source, len, ReadBack::Summary).expect("summary");
    let Output::Summary(made) = made else {
        panic!("vector_add {len}: values came back");
    };
    let host = Summary::of(values.values().expect("values read back"));
    assert_eq!(bits(&made), bits(&host), "vector_add {len}");
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let dims = (1100, 256, 1024);
        let (values, _) =
            matmul_from(0, Source::Seeded(3), dims, dtype, ReadBack::Values).expect("values");
        let (made, _) =
            matmul_from(0, Source::Seeded(3), dims, dtype, ReadBack::Summary).expect("summary");
        let host = Summary::of(values.values().expect("values read back"));
        let Output::Summary(made) = made else {
            panic!("matmul {}: values came back", dtype.as_str());
        };
        assert_eq!(bits(&made), bits(&host), "matmul {}", dtype.as_str());
    }
    // What it saves a 100M-element vector add (inputs made on the device): printed for the GPU
    // check, not asserted.
    let len = 100_000_000;
    let best = |read: ReadBack| {
        (0..3)
            .map(|_| {
                let start = std::time::Instant::now();
                vector_add_from(0, Source::Seeded(1), len, read).expect("vector_add");
                start.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    let (summary, values) = (best(ReadBack::Summary), best(ReadBack::Values));
    println!(
        "output summary, vector_add {len} on cuBLAS: made on the device {summary:.2} ms, c read \
         back and summarised on the host {values:.2} ms ({:.1}x)",
        values / summary
    );
}
