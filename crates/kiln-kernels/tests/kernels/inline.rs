//! Inline values too large for f32: JSON has no infinities, so `1e39` is a mistake to refuse
//! by name, never a value to compute with (or, re-encoded by a client, to send as `null`).

use kiln_kernels::{JobMeta, find};
use kiln_proto::{Codec, ErrorKind, OutputMode};
use serde_json::{Value, json};

use crate::support::run_with;

fn refused(kind: &str, params: Value) -> String {
    match run_with(kind, params.clone(), 0, &kiln_kernels::NoCheckpoint) {
        Ok(out) => panic!("{kind} {params} should be refused but gave {out}"),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{kind}: {}", e.message);
            e.message
        }
    }
}

#[test]
fn values_past_f32_are_invalid_input_naming_where() {
    for (kind, params, place) in [
        (
            "vector_add",
            json!({"a": [1.0, 1e39], "b": [1.0, 2.0]}),
            "params.a",
        ),
        (
            "vector_add",
            json!({"a": [1.0, 2.0], "b": [-4e38, 2.0]}),
            "params.b",
        ),
        (
            "matmul",
            json!({"a": [[1.0, 2.0], [3.0, 1e300]], "b": [[1.0], [2.0]]}),
            "params.a",
        ),
        (
            "conv2d",
            json!({"image": [[[1.0, 2.0], [3.0, 1e40]]]}),
            "params.image",
        ),
        (
            "mlp_predict",
            json!({"model": {"object": "m"}, "x": [[0.5, 1e39]]}),
            "params.x",
        ),
    ] {
        let message = refused(kind, params);
        assert!(message.contains(place), "{kind}: {message}");
        assert!(message.contains("outside f32's range"), "{kind}: {message}");
    }
    let message = refused("vector_add", json!({"a": [1.0, 1e39], "b": [1.0, 2.0]}));
    assert!(message.contains("element [1]"), "{message}");
    let message = refused(
        "conv2d",
        json!({"image": [[[1.0, 2.0], [3.0, 4.0]]], "kernel": [[1e39]]}),
    );
    assert!(
        message.contains("kernel element [0][0] is outside f32's range"),
        "{message}"
    );
}

#[test]
fn values_f32_holds_still_run() {
    // The largest f32 and the smallest subnormals are values, not mistakes.
    let out = crate::support::run(
        "vector_add",
        json!({"a": [3.4028235e38, 1e-45], "b": [0.0, 0.0]}),
        0,
    );
    assert_eq!(out["c"][0].as_f64().unwrap() as f32, f32::MAX, "{out}");
}

#[test]
fn clients_encoding_jobs_refuse_them_too() {
    // What `kiln submit -p 'a=[1e39]'` goes through before anything is sent.
    let meta = JobMeta {
        id: Some("j".into()),
        seed: Some(0),
        timeout_ms: None,
        output: OutputMode::Auto,
    };
    for codec in [Codec::Json, Codec::Bincode] {
        let err = find("vector_add")
            .unwrap()
            .encode_job(json!({"a": [1e39], "b": [1.0]}), meta.clone(), codec)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(
            err.message.contains("outside f32's range"),
            "{}",
            err.message
        );
    }
}

#[test]
fn binary_bodies_with_nan_or_infinity_are_invalid_input_too() {
    use kiln_kernels::Input;
    use kiln_kernels::kinds::vector_add::Params;
    for bad in [f32::NAN, f32::INFINITY] {
        let job = kiln_proto::Job {
            id: Some("j".into()),
            params: Params {
                len: None,
                a: Some(Input::Inline(vec![1.0, bad])),
                b: Some(Input::Inline(vec![1.0, 2.0])),
            },
            timeout_ms: None,
            seed: None,
            output: OutputMode::Auto,
        };
        let body = Codec::Bincode.encode("job", &job).unwrap();
        let err = find("vector_add")
            .unwrap()
            .decode(Codec::Bincode, &body, &kiln_proto::Limits::default())
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(
            err.message.contains("element [1] is NaN or infinite"),
            "{}",
            err.message
        );
    }
}

/// A parameter of the wrong form is refused with its help line: serde's own words
/// ("invalid type: integer 0, expected a sequence") do not say what the parameter is.
#[test]
fn a_parameter_of_the_wrong_form_is_refused_with_its_help() {
    let message = refused(
        "conv2d",
        json!({"image": [[0, 1], [1, 0]], "filter": "box"}),
    );
    assert!(
        message.contains("expected a sequence")
            && message.contains("(image: the image as [channels][height][width]"),
        "{message}"
    );
    let message = refused("vector_add", json!({"a": [[1, 2]], "b": [[1, 1]]}));
    assert!(message.contains("(a: the vectors themselves"), "{message}");
    // The same when a client checks the parameters before sending.
    let entry = find("mlp_predict").unwrap();
    let error = entry
        .check_params(
            json!({"model": "m.safetensors", "x": [[1.0]]}),
            &Default::default(),
        )
        .unwrap_err();
    assert!(
        error
            .message
            .contains("(model: {\"object\": NAME} in KILN_DATA"),
        "{}",
        error.message
    );
}

/// An output that overflows to infinity, small as it is, is stored as `.npy`, which keeps
/// the infinities, rather than sent inline, where JSON's `null` came back a NaN to every
/// client. A finite output of the same jobs stays inline.
#[test]
fn a_small_output_holding_infinities_is_stored_not_inline() {
    use kiln_kernels::{ComputeDevice, Engines, NoCheckpoint, Stored};
    let big = 3e38f32;
    for (kind, params, name, expected) in [
        (
            "vector_add",
            json!({"a": [big, -big, 1.0], "b": [big, -big, 1.0]}),
            "c",
            vec![f32::INFINITY, f32::NEG_INFINITY, 2.0],
        ),
        (
            "matmul",
            json!({"a": [[big, big]], "b": [[2.0], [1.0]]}),
            "c",
            vec![f32::INFINITY],
        ),
        (
            "conv2d",
            json!({"image": [[[big]]], "kernel": [[4.0]]}),
            "image",
            vec![f32::INFINITY],
        ),
    ] {
        let body = serde_json::to_vec(&json!({ "params": params })).unwrap();
        let job = find(kind)
            .unwrap()
            .decode(Codec::Json, &body, &kiln_proto::Limits::default())
            .unwrap();
        let out = job
            .run_with(&ComputeDevice::Cpu, Engines::default(), &NoCheckpoint)
            .unwrap();
        assert!(out.get(name).is_none(), "{kind}: inline {out}");
        match job.take_stored() {
            Some(Stored::Tensor {
                name: stored,
                tensor,
            }) => {
                assert_eq!(stored, name, "{kind}");
                assert_eq!(tensor.data, expected, "{kind}");
            }
            other => panic!("{kind}: expected a stored tensor, got {other:?}"),
        }
    }
    let finite = crate::support::run("vector_add", json!({"a": [1.0], "b": [2.0]}), 0);
    assert_eq!(finite["c"], json!([3.0]));
}

#[test]
fn a_timeout_of_zero_is_invalid_input_not_a_timeout() {
    let decode = |body: &str| {
        find("vector_add").unwrap().decode(
            Codec::Json,
            body.as_bytes(),
            &kiln_proto::Limits::default(),
        )
    };
    // It ran and failed `timeout` after doing nothing.
    let error = decode(r#"{"params": {"len": 4}, "timeout_ms": 0}"#).unwrap_err();
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    assert!(
        error.message.starts_with("timeout_ms is 0"),
        "{}",
        error.message
    );
    let job = decode(r#"{"params": {"len": 4}, "timeout_ms": 1}"#).unwrap();
    assert_eq!(job.timeout_ms, Some(1));
}

#[test]
fn inline_integers_round_to_f32_once() {
    // numpy's int64 -> float32 rounds the exact integer once; by way of f64, one past 2^53
    // rounded twice and could land on the other f32 (2^53 + 2^29 + 1 came back as 2^53), so
    // one int array computed apart inline and as an `.npy`.
    let ints: Vec<i64> = vec![
        (1 << 53) + (1 << 29) + 1,
        -((1 << 53) + (1 << 29) + 1),
        (1 << 62) + (1 << 38) + 1,
        i64::MIN,
        16_777_217,
        -0,
    ];
    let unsigned = u64::MAX - (1 << 39);
    let mut a: Vec<serde_json::Value> = ints.iter().map(|&i| json!(i)).collect();
    a.push(json!(unsigned));
    let out = crate::support::run("vector_add", json!({"a": a, "b": vec![0.0; a.len()]}), 0);
    let got = crate::support::floats(&out["c"]);
    let mut want: Vec<f32> = ints.iter().map(|&i| i as f32).collect();
    want.push(unsigned as f32);
    assert_eq!(got, want);
    assert_eq!(got[0], 9_007_200_328_482_816.0);
}

/// Numbers halfway between two f32s, as the f64 texts a client sends them in (JSON writes the
/// shortest text that reads back as the f64).
fn f32_midpoints(count: usize) -> Vec<f64> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let below = f32::from_bits((x >> 32) as u32 & 0x7f7f_ffff);
        let above = f32::from_bits(below.to_bits() + 1);
        if below.is_finite() && above.is_finite() && below.is_normal() {
            out.push((f64::from(below) + f64::from(above)) / 2.0);
        }
    }
    out
}

#[test]
fn inline_values_round_to_f32_as_numpy_does() {
    // numpy reads JSON's numbers as f64 and rounds those to f32 (ties to even); serde_json's
    // own f32 reading, or its default f64 reading (up to an ulp off), rounded some of these
    // midpoints the other way, so inline and `.npy` inputs of one array computed apart.
    let wide = f32_midpoints(2_000);
    let out = crate::support::run(
        "vector_add",
        json!({"a": wide, "b": vec![0.0; wide.len()]}),
        0,
    );
    let got = crate::support::floats(&out["c"]);
    assert_eq!(got.len(), wide.len());
    for (g, w) in got.iter().zip(&wide) {
        assert_eq!(g.to_bits(), (*w as f32).to_bits(), "{w:e}: {g:e}");
    }
    // A user kernel, which is never an object, is read the same way.
    for w in &wide[..200] {
        let out = crate::support::run("conv2d", json!({"image": [[[1.0]]], "kernel": [[w]]}), 0);
        let got = crate::support::floats(&out["image"]);
        assert_eq!(got, vec![*w as f32], "{w:e}");
    }
}
