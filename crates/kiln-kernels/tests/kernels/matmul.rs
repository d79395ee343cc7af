//! `matmul` against a triple-loop reference.

use kiln_kernels::{ComputeDevice, Input, NoCheckpoint, find, seeded_values};
use kiln_proto::{Codec, ErrorKind, Job, Limits};
use serde_json::json;

use crate::support::{assert_close, error_kind, floats, run};

/// C = A·B for row-major A (m×k) and B (k×n), accumulated in f64.
fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum();
        }
    }
    c
}

/// The product of the matrices a job with `seed` generates.
fn generated_reference(seed: u64, m: usize, k: usize, n: usize) -> Vec<f64> {
    let a = seeded_values(seed, 0, m * k);
    let b = seeded_values(seed, 1, k * n);
    reference(&a, &b, m, k, n)
}

/// Outputs of generated inputs are summarised, not inlined: run the same product with the
/// seed's matrices sent inline to see every element, after checking that the generated job
/// summarises exactly that product.
fn generated_product(seed: u64, m: usize, k: usize, n: usize) -> Vec<f32> {
    let generated = run("matmul", json!({"m": m, "k": k, "n": n}), seed);
    assert!(
        generated.get("c").is_none(),
        "generated outputs are summarised"
    );
    let rows = |values: Vec<f32>, cols: usize| -> Vec<Vec<f32>> {
        values.chunks(cols).map(<[f32]>::to_vec).collect()
    };
    let a = rows(seeded_values(seed, 0, m * k), k);
    let b = rows(seeded_values(seed, 1, k * n), n);
    let inline = run("matmul", json!({"a": a, "b": b}), seed);
    assert_eq!(
        generated["summary"], inline["summary"],
        "same seed, same inputs"
    );
    floats(&inline["c"])
}

// f32 on the CPU: a dot product of k terms in [-1, 1) is off by at most about k·2⁻²⁴ of
// Σ|a·b|, so 1e-4 relative to (1 + |c|) leaves a wide margin for k <= 100.
const F32_TOL: f64 = 1e-4;

#[test]
fn multiplies_given_matrices_exactly() {
    let out = run(
        "matmul",
        json!({"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}),
        0,
    );
    assert_eq!(out["shape"], json!([2, 2]));
    assert_eq!(out["dtype"], "f32");
    // The CPU's BLAS where it is installed, burn-ndarray elsewhere (and with --matmul-engine
    // burn: engines.rs).
    let engine = if kiln_kernels::vendor::openblas::available() {
        "openblas"
    } else {
        "burn-ndarray"
    };
    assert_eq!(out["engine"], engine);
    assert_eq!(out["c"], json!([[19.0, 22.0], [43.0, 50.0]]));
    assert_eq!(out["summary"]["checksum"], 134.0);

    let out = run(
        "matmul",
        json!({"a": [[1, 0, 2], [0, 1, -1]], "b": [[3], [4], [5]]}),
        0,
    );
    assert_eq!(out["shape"], json!([2, 1]));
    assert_eq!(out["c"], json!([[13.0], [-1.0]]));
}

#[test]
fn generated_rectangular_product_matches_reference() {
    let (m, k, n) = (33, 17, 9);
    let out = run("matmul", json!({"m": m, "k": k, "n": n}), 5);
    assert_eq!(out["shape"], json!([m, n]));
    assert_close(
        &generated_product(5, m, k, n),
        &generated_reference(5, m, k, n),
        F32_TOL,
        "33x17x9",
    );
}

#[test]
fn large_product_is_summarised_not_inlined() {
    // 65 × 65 = 4225 outputs, over the default inline limit of 4096.
    let n = 65;
    let out = run("matmul", json!({"n": n}), 3);
    assert!(out.get("c").is_none(), "65x65 output should not be inline");
    let expected = generated_reference(3, n, n, n);
    let checksum: f64 = expected.iter().sum();
    let l2: f64 = expected.iter().map(|v| v * v).sum::<f64>().sqrt();
    let summary = &out["summary"];
    // Sums of 4225 values each off by ~1e-6: 1e-3 absolute on the checksum, 1e-5 relative
    // on the norm.
    assert!((summary["checksum"].as_f64().unwrap() - checksum).abs() < 1e-3);
    assert!((summary["l2_norm"].as_f64().unwrap() - l2).abs() < 1e-5 * l2);
}

#[test]
fn missing_sizes_default_to_n_then_m_then_k() {
    let square = run("matmul", json!({"n": 6}), 1);
    assert_eq!(square, run("matmul", json!({"m": 6, "k": 6, "n": 6}), 1));

    // k defaults to n: a 4×8 times an 8×8.
    let out = run("matmul", json!({"m": 4, "n": 8}), 2);
    assert_eq!(out["shape"], json!([4, 8]));
    assert_close(
        &generated_product(2, 4, 8, 8),
        &generated_reference(2, 4, 8, 8),
        F32_TOL,
        "m=4 n=8",
    );

    // Without n, the missing sizes take m; with k alone, everything is k.
    assert_eq!(
        run("matmul", json!({"m": 3, "k": 5}), 2)["shape"],
        json!([3, 3])
    );
    assert_eq!(run("matmul", json!({"k": 5}), 2)["shape"], json!([5, 5]));
}

#[test]
fn generated_inputs_depend_only_on_the_seed() {
    let params = json!({"m": 7, "k": 3, "n": 5});
    assert_eq!(
        run("matmul", params.clone(), 9),
        run("matmul", params.clone(), 9)
    );
    assert_ne!(
        run("matmul", params.clone(), 9)["summary"],
        run("matmul", params, 10)["summary"]
    );
}

#[test]
fn explicit_f32_dtype_is_accepted() {
    let out = run("matmul", json!({"n": 4, "dtype": "f32"}), 0);
    assert_eq!(out["dtype"], "f32");
}

#[test]
fn gpu_precisions_on_a_cpu_worker_are_invalid_input() {
    for dtype in ["tf32", "bf16", "f16"] {
        let err =
            crate::support::run_with("matmul", json!({"n": 4, "dtype": dtype}), 0, &NoCheckpoint)
                .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(err.message.contains("jobs.gpu.matmul"), "{}", err.message);
    }
}

#[test]
fn bincode_carries_the_same_params() {
    let params = kiln_kernels::kinds::matmul::Params {
        a: Some(Input::Inline(vec![vec![1.0, 2.0]])),
        b: Some(Input::Inline(vec![vec![3.0], vec![4.0]])),
        dtype: Some(kiln_kernels::Dtype::F32),
        ..Default::default()
    };
    let job = Job {
        id: Some("mm-1".into()),
        params,
        timeout_ms: None,
        seed: Some(1),
        output: Default::default(),
    };
    let body = Codec::Bincode.encode("job", &job).unwrap();
    let decoded = find("matmul")
        .unwrap()
        .decode(Codec::Bincode, &body, &Limits::default())
        .unwrap();
    let out = decoded.run(&ComputeDevice::Cpu, &NoCheckpoint).unwrap();
    assert_eq!(out["c"], json!([[11.0]]));
}

#[test]
fn plan_counts_elements_and_flops() {
    let plan = find("matmul")
        .unwrap()
        .check_params(json!({"m": 2, "k": 3, "n": 4}), &Limits::default())
        .unwrap();
    assert_eq!(plan.elements, 2 * 3 + 3 * 4 + 2 * 4);
    assert_eq!(plan.flops, 2.0 * 2.0 * 3.0 * 4.0);
}

#[test]
fn bad_matrices_are_invalid_input() {
    for params in [
        json!({"a": [[1, 2], [3]], "b": [[1], [2]]}), // ragged a
        json!({"a": [[1, 2]], "b": [[1, 2], [3]]}),   // ragged b
        json!({"a": [], "b": [[1]]}),                 // empty a
        json!({"a": [[]], "b": [[1]]}),               // a with an empty row
        json!({"a": [[1, 2, 3]], "b": [[1], [2]]}),   // 1×3 · 2×1
        json!({"a": [[1]]}),                          // b missing
        json!({"a": [[1]], "b": [[1]], "n": 1}),      // matrices and sizes
        json!({}),                                    // nothing
        json!({"n": 0}),
        json!({"m": 4, "k": 0, "n": 4}),
        json!({"n": 4, "dtype": "f64"}),  // unknown dtype
        json!({"n": 4, "dtype": "BF16"}), // dtypes are lowercase
        json!({"n": 4, "size": 4}),       // unknown field
        json!({"n": -4}),
    ] {
        assert_eq!(
            error_kind("matmul", params.clone()),
            ErrorKind::InvalidInput,
            "{params}"
        );
    }
}

#[test]
fn huge_sizes_are_too_large_not_a_crash() {
    for params in [
        json!({"n": 100_000}),
        json!({"m": u64::MAX, "k": 2, "n": 2}),
        json!({"m": u64::MAX, "k": u64::MAX, "n": u64::MAX}),
        json!({"m": 1u64 << 32, "k": 1u64 << 32, "n": 1}),
    ] {
        assert_eq!(
            error_kind("matmul", params.clone()),
            ErrorKind::TooLarge,
            "{params}"
        );
    }
}

/// A UTF-8 byte-order mark before the JSON (Windows tools write one) is passed over, as RFC
/// 8259 allows; a NaN or an infinity, which JSON has no word for, is named as such.
#[test]
fn a_byte_order_mark_is_passed_over_and_nan_is_named() {
    let entry = find("matmul").unwrap();
    let body = b"\xEF\xBB\xBF{\"id\": \"bom-1\", \"params\": {\"n\": 4}}";
    let job = entry.decode(Codec::Json, body, &Limits::default()).unwrap();
    assert_eq!(job.id.as_deref(), Some("bom-1"));
    for body in [
        &b"{\"params\": {\"a\": [[1, NaN]], \"b\": [[1], [2]]}}"[..],
        b"{\"params\": {\"a\": [[1,\n Infinity]], \"b\": [[1], [2]]}}",
        b"{\"params\": {\"a\": [[-Infinity, 1]], \"b\": [[1], [2]]}}",
    ] {
        let Err(err) = entry.decode(Codec::Json, body, &Limits::default()) else {
            panic!("{} was decoded", String::from_utf8_lossy(body));
        };
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(
            err.message.contains("JSON has no NaN or infinities"),
            "{err}"
        );
    }
    // Other errors get no such word.
    let body = b"{\"params\": {\"a\": [[1, x]], \"b\": [[1], [2]]}}";
    let err = entry
        .decode(Codec::Json, body, &Limits::default())
        .unwrap_err();
    assert!(!err.message.contains("NaN"), "{err}");
}

#[test]
fn a_body_that_is_not_a_json_object_says_so() {
    let entry = find("matmul").unwrap();
    for (body, what) in [
        (&b"[1, 2, 3]"[..], "an array"),
        (b"  \"params\"", "a string"),
        (b"42", "a number"),
        (b"null", "null"),
        (b" true", "a boolean"),
        // Not JSON, whatever its first letter looks like.
        (b"this is not json", "something that is not JSON"),
        (b"nonsense", "something that is not JSON"),
        (
            b"\"abc",
            "something that is not JSON (EOF while parsing a string",
        ),
        (b"-x", "something that is not JSON"),
        (b"true x", "something that is not JSON (trailing characters"),
    ] {
        let Err(err) = entry.decode(Codec::Json, body, &Limits::default()) else {
            panic!("{} was decoded", String::from_utf8_lossy(body));
        };
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(
            err.message.contains("must be a JSON object") && err.message.contains(what),
            "{err}"
        );
        assert!(!err.message.contains("UTF-16"), "{err}");
    }
    // UTF-16 (PowerShell's Out-File, .NET's Encoding.Unicode), with a byte-order mark or
    // big-endian, fails before the JSON is read: said there too.
    let text = r#"{"params":{}}"#;
    let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    for body in [[&[0xFF, 0xFE][..], &le].concat(), be, le] {
        let Err(err) = entry.decode(Codec::Json, &body, &Limits::default()) else {
            panic!("a UTF-16 body was decoded");
        };
        assert!(err.message.contains("looks like UTF-16 text"), "{err}");
    }
}
