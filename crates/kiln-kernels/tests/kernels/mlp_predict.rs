//! `mlp_predict`: runs a model `train_mlp` stored, checked against a forward pass written
//! here, and refuses models and rows that do not fit together.

use std::sync::OnceLock;

use kiln_data::{HostTensor, Model};
use kiln_kernels::{ComputeDevice, Inputs, Loaded, Progress, Stored, Want, Wanted, find};
use kiln_proto::{Codec, ErrorKind, JobError, Limits, ObjectRef};
use serde_json::{Value, json};

use crate::support::{Recorder, assert_close, floats};
use crate::train_mlp::{CENTRES, blobs, trained_blobs};

/// The blobs model, trained once for every test here.
fn model() -> Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| trained_blobs().0).clone()
}

fn tensor<'m>(model: &'m Model, name: &str) -> &'m HostTensor {
    &model.tensors.iter().find(|(n, _)| n == name).unwrap().1
}

/// The model's probabilities for `rows`, in f64 on the host: standardise, linear layers
/// with ReLU between them, softmax.
fn reference(model: &Model, rows: &[Vec<f32>]) -> Vec<f64> {
    let (mean, std) = (tensor(model, "input.mean"), tensor(model, "input.std"));
    let layers = (model.tensors.len() - 2) / 2;
    let mut out = Vec::new();
    for row in rows {
        let mut a: Vec<f64> = row
            .iter()
            .zip(&mean.data)
            .zip(&std.data)
            .map(|((&v, &m), &s)| (f64::from(v) - f64::from(m)) / f64::from(s))
            .collect();
        for l in 0..layers {
            let w = tensor(model, &format!("layers.{l}.weight"));
            let b = tensor(model, &format!("layers.{l}.bias"));
            let (fan_in, fan_out) = (w.shape[0], w.shape[1]);
            a = (0..fan_out)
                .map(|j| {
                    let z = f64::from(b.data[j])
                        + (0..fan_in)
                            .map(|i| a[i] * f64::from(w.data[i * fan_out + j]))
                            .sum::<f64>();
                    if l + 1 < layers { z.max(0.0) } else { z }
                })
                .collect();
        }
        let top = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = a.iter().map(|z| (z - top).exp()).sum();
        out.extend(a.iter().map(|z| (z - top).exp() / total));
    }
    out
}

/// Decode an `mlp_predict` job from `envelope` (its `params` and the rest), load `model` and
/// `x` (when the job names x as an object), and run it: the output and what it stored.
fn predict_with(
    envelope: Value,
    model: Model,
    x: Option<HostTensor>,
    recorder: &Recorder,
) -> Result<(Value, Option<Stored>), JobError> {
    let body = serde_json::to_vec(&envelope).unwrap();
    let mut job = find("mlp_predict")
        .unwrap()
        .decode(Codec::Json, &body, &Limits::default())?;
    let mut inputs = Inputs::none();
    inputs.insert("model", Loaded::Model(model));
    if let Some(x) = x {
        inputs.insert("x", Loaded::Tensor(x));
    }
    job.load(inputs)?;
    let out = job.run(&ComputeDevice::Cpu, recorder)?;
    Ok((out, job.take_stored()))
}

fn predict(params: Value, model: Model) -> Result<Value, JobError> {
    predict_with(
        json!({ "params": params }),
        model,
        None,
        &Recorder::default(),
    )
    .map(|(out, _)| out)
}

#[test]
fn classifies_the_blob_centres_as_their_classes() {
    let model = model();
    let rows: Vec<Vec<f32>> = CENTRES.iter().map(|c| c.to_vec()).collect();
    let out = predict(json!({"model": {"object": "m"}, "x": rows}), model.clone()).unwrap();
    assert_eq!(out["rows"], 3);
    assert_eq!(out["classes"], json!([0, 1, 2]));
    assert_eq!(
        out["model"],
        json!({"layers": [2, 16, 3], "features": 2, "classes": 3})
    );
    let probabilities = out["probabilities"].as_array().unwrap();
    assert_eq!(probabilities.len(), 3);
    for (class, row) in probabilities.iter().enumerate() {
        let p = floats(row);
        assert_eq!(p.len(), 3);
        let total: f32 = p.iter().sum();
        assert!((total - 1.0).abs() <= 1e-5, "row {class} sums to {total}");
        assert!(p[class] > 0.9, "centre {class}: {p:?}");
    }
    assert_close(
        &floats(&out["probabilities"]),
        &reference(&model, &rows),
        1e-5,
        "probabilities",
    );
    let summary_sum = out["summary"]["checksum"].as_f64().unwrap();
    assert!((summary_sum - 3.0).abs() < 1e-4, "{out}");
}

#[test]
fn many_rows_go_to_an_object_in_batches() {
    let model = model();
    let data = blobs(2000, 99);
    let rows = data.y.len();
    let recorder = Recorder::default();
    let (out, stored) = predict_with(
        json!({"params": {"model": {"object": "m"}, "x": {"object": "x"}, "batch_size": 1000},
               "output": "object"}),
        model.clone(),
        Some(data.x.clone()),
        &recorder,
    )
    .unwrap();
    assert_eq!(out["rows"], rows);
    // Too many rows for the classes inline, and the probabilities went to the store.
    assert!(
        out.get("classes").is_none() && out.get("probabilities").is_none(),
        "{out}"
    );
    let Some(Stored::Tensor { name, tensor }) = stored else {
        panic!("the probabilities are stored")
    };
    assert_eq!(name, "probabilities");
    assert_eq!(tensor.shape, [rows, 3]);
    let correct = tensor
        .data
        .chunks_exact(3)
        .zip(&data.y)
        .filter(|(p, y)| (0..3).all(|c| p[**y as usize] >= p[c]))
        .count();
    assert!(
        correct as f64 / rows as f64 > 0.95,
        "{correct} of {rows} right"
    );
    let x_rows: Vec<Vec<f32>> = data.x.data.chunks_exact(2).map(<[f32]>::to_vec).collect();
    assert_close(
        &tensor.data,
        &reference(&model, &x_rows),
        1e-5,
        "stored probabilities",
    );
    // One checkpoint a batch.
    let expected: Vec<Progress> = (1..=6).map(|done| Progress { done, total: 6 }).collect();
    assert_eq!(*recorder.calls.lock().unwrap(), expected);
}

/// A large network runs a batch in pieces of about a matmul's work between checkpoints, so
/// a timeout or a cancel stops it within one: 250 rows through 4096-wide layers (33.6 MFLOP a
/// row, 119 rows a piece on a CPU) take three, whatever `batch_size` says.
#[test]
fn a_large_network_checkpoints_within_a_batch() {
    let mut model = model();
    let wide = 4096;
    let layers = [(1, wide), (wide, wide), (wide, 2)];
    model
        .tensors
        .retain(|(name, _)| !name.starts_with("layers."));
    for (i, (fan_in, fan_out)) in layers.into_iter().enumerate() {
        let weight = HostTensor::new(vec![fan_in, fan_out], vec![0.0; fan_in * fan_out]);
        model.tensors.push((format!("layers.{i}.weight"), weight));
        let bias = HostTensor::new(vec![fan_out], vec![0.0; fan_out]);
        model.tensors.push((format!("layers.{i}.bias"), bias));
    }
    for name in ["input.mean", "input.std"] {
        let (_, t) = model.tensors.iter_mut().find(|(n, _)| n == name).unwrap();
        *t = HostTensor::new(vec![1], vec![1.0]);
    }
    for (key, value) in [("features", "1"), ("classes", "2"), ("hidden", "4096,4096")] {
        model.metadata.insert(key.into(), value.into());
    }
    let recorder = Recorder::default();
    let x: Vec<Vec<f32>> = (0..250).map(|i| vec![i as f32]).collect();
    let envelope = json!({"params": {"model": {"object": "m"}, "x": x, "batch_size": 4096}});
    let (out, _) = predict_with(envelope, model, None, &recorder).unwrap();
    assert_eq!(out["rows"], 250);
    let expected: Vec<Progress> = (1..=3).map(|done| Progress { done, total: 3 }).collect();
    assert_eq!(*recorder.calls.lock().unwrap(), expected);
}

#[test]
fn large_inline_rows_are_stored_without_being_asked() {
    let rows: Vec<Vec<f32>> = (0..1500).map(|i| CENTRES[i % 3].to_vec()).collect();
    let (out, stored) = predict_with(
        json!({"params": {"model": {"object": "m"}, "x": rows}}),
        model(),
        None,
        &Recorder::default(),
    )
    .unwrap();
    // 1500 classes fit inline, 4500 probabilities do not.
    let classes = out["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 1500);
    assert_eq!(classes[..3], [json!(0), json!(1), json!(2)]);
    assert!(out.get("probabilities").is_none());
    assert!(matches!(stored, Some(Stored::Tensor { tensor, .. }) if tensor.shape == [1500, 3]));
}

#[test]
fn rows_with_a_nan_or_infinity_are_invalid_input_naming_where() {
    // JSON has no NaN: it comes in a tensor object.
    let x = HostTensor::new(vec![3, 2], vec![0.0, 0.0, 1.0, f32::NAN, 2.0, 2.0]);
    let err = predict_with(
        json!({"params": {"model": {"object": "m"}, "x": {"object": "x"}}}),
        model(),
        Some(x),
        &Recorder::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(
        err.message.contains("x row 1 holds NaN at feature 1"),
        "{}",
        err.message
    );
}

/// Finite rows the model overflows on came back `succeeded` with null probabilities and a
/// made-up class 0 (the argmax of NaNs).
#[test]
fn rows_the_model_overflows_on_are_invalid_input_naming_the_row() {
    let err = predict(
        json!({"model": {"object": "m"}, "x": [[1.0, 0.0], [3e38, 3e38], [-3e38, 1.0]]}),
        model(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(
        err.message
            .starts_with("mlp_predict x row 1 overflows the model: its class probabilities"),
        "{}",
        err.message
    );
}

#[test]
fn rows_of_the_wrong_width_are_invalid_input() {
    let err = predict(
        json!({"model": {"object": "m"}, "x": [[1.0, 2.0, 3.0]]}),
        model(),
    )
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(
        err.message.contains("expects 2 features, x has 3"),
        "{}",
        err.message
    );
}

#[test]
fn incomplete_or_foreign_models_are_invalid_input() {
    let x = json!([[100.0, -5.0]]);
    let refused = |model: Model, needle: &str| {
        let err = predict(json!({"model": {"object": "m"}, "x": x}), model).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{}", err.message);
        assert!(
            err.message.contains(needle) && err.message.contains("\"m\""),
            "{needle}: {}",
            err.message
        );
    };
    let mut m = model();
    m.tensors.retain(|(n, _)| n != "layers.1.bias");
    refused(m, "layers.1.bias");
    let mut m = model();
    m.tensors.retain(|(n, _)| n != "input.std");
    refused(m, "input.std");
    let mut m = model();
    m.metadata.insert("format".into(), "pytorch".into());
    refused(m, "kiln-mlp");
    let mut m = model();
    m.metadata.remove("format");
    refused(m, "format");
    let mut m = model();
    m.tensors[2].1 = HostTensor::new(vec![8, 3], vec![0.0; 24]);
    refused(m, "layers.1.weight");
    let mut m = model();
    m.metadata.insert("classes".into(), "4".into());
    refused(m, "classes=4");
    // The hidden widths it names must be its tensors' (this one has one hidden layer).
    let widths = tensor(&model(), "layers.0.weight").shape[1];
    let mut m = model();
    m.metadata
        .insert("hidden".into(), format!("{widths},{widths}"));
    refused(m, &format!("hidden layers of \"{widths}\""));
    let mut m = model();
    m.metadata.insert("hidden".into(), format!(" {widths}"));
    predict(json!({"model": {"object": "m"}, "x": x}), m).expect("the same widths, spaced");
    // A layer index at usize's end counted the layers by an overflowing add (a panic).
    let mut m = model();
    m.tensors.push((
        format!("layers.{}.weight", usize::MAX),
        HostTensor::new(vec![1, 1], vec![0.0]),
    ));
    refused(m, "layers.");
    // Values that are not numbers, as a diverged training leaves them: a NaN weight in the
    // first layer gave finite probabilities, NaNs in the last a confident class 0.
    for (name, value) in [
        ("layers.0.weight", f32::NAN),
        ("layers.1.bias", f32::INFINITY),
        ("input.mean", f32::NEG_INFINITY),
    ] {
        let mut m = model();
        let (_, t) = m.tensors.iter_mut().find(|(n, _)| n == name).unwrap();
        let last = t.data.len() - 1;
        t.data[last] = value;
        refused(m, &format!("element {last} of {name}"));
    }
}

#[test]
fn the_job_names_its_objects_and_plans_the_rows() {
    let kind = find("mlp_predict").unwrap();
    let body = br#"{"params":{"model":{"object":"m"},"x":{"object":"x"}}}"#;
    let job = kind.decode(Codec::Json, body, &Limits::default()).unwrap();
    assert_eq!(
        job.objects(),
        [
            Wanted {
                param: "model",
                reference: ObjectRef::new("m"),
                want: Want::Model,
            },
            Wanted {
                param: "x",
                reference: ObjectRef::new("x"),
                want: Want::Tensor,
            },
        ]
    );
    assert_eq!(job.plan.elements, 0);
    let plan = kind
        .check_params(
            json!({"model": {"object": "m"}, "x": [[1, 2, 3], [4, 5, 6]]}),
            &Limits::default(),
        )
        .unwrap();
    assert_eq!(plan.elements, 6);
}

/// Once the model is loaded the plan counts what the job holds and computes: the rows, the
/// probabilities, the parameters and a batch's activations, and the model's multiply-adds
/// per row. (It counted the rows alone, so the memory budget never saw a model's size, and
/// a large model ran on the worker's async threads as a job too small for a compute slot.)
#[test]
fn a_loaded_model_is_planned_in_full() {
    let model = model();
    let widths: Vec<[usize; 2]> = (0..)
        .map_while(|i| {
            let name = format!("layers.{i}.weight");
            model
                .tensors
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| [t.shape[0], t.shape[1]])
        })
        .collect();
    let parameters: usize = model.tensors.iter().map(|(_, t)| t.data.len()).sum();
    let macs: usize = widths.iter().map(|[i, o]| i * o).sum();
    let outs: usize = widths.iter().map(|[_, o]| o).sum();
    let classes = widths.last().unwrap()[1];
    let body =
        br#"{"params":{"model":{"object":"m"},"x":[[1, 2], [3, 4], [5, 6]],"batch_size":2}}"#;
    let mut job = find("mlp_predict")
        .unwrap()
        .decode(Codec::Json, body, &Limits::default())
        .unwrap();
    assert_eq!(job.plan.elements, 6, "x alone before the model is loaded");
    let mut inputs = Inputs::none();
    inputs.insert("model", Loaded::Model(model));
    job.load(inputs).unwrap();
    let rows = 3;
    assert_eq!(
        job.plan.elements as usize,
        rows * 2 + rows * classes + parameters + 2 * (2 + outs)
    );
    assert_eq!(job.plan.flops, 2.0 * (rows * macs) as f64);
    // And the job still runs with the model the plan looked at.
    let out = job.run(&ComputeDevice::Cpu, &Recorder::default()).unwrap();
    assert_eq!(out["rows"], 3);
}

#[test]
fn bad_params_are_invalid_input() {
    let kind = find("mlp_predict").unwrap();
    for params in [
        json!({"x": [[1.0]]}),
        json!({"model": {"object": "m"}}),
        json!({"model": {"object": "m"}, "x": []}),
        json!({"model": {"object": "m"}, "x": [[1.0, 2.0], [3.0]]}),
        json!({"model": {"object": "m"}, "x": [[1.0]], "batch_size": 0}),
        json!({"model": {"object": "m"}, "x": [[1.0]], "rows": 1}),
    ] {
        let err = kind
            .check_params(params.clone(), &Limits::default())
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{params}");
    }
}

#[test]
fn bincode_carries_the_params() {
    let params = kiln_kernels::kinds::mlp_predict::Params {
        model: ObjectRef::new("m"),
        x: kiln_kernels::Input::Inline(vec![CENTRES[1].to_vec()]),
        batch_size: Some(7),
    };
    let job = kiln_proto::Job {
        id: None,
        params,
        timeout_ms: None,
        seed: None,
        output: Default::default(),
    };
    let body = Codec::Bincode.encode("job", &job).unwrap();
    let mut decoded = find("mlp_predict")
        .unwrap()
        .decode(Codec::Bincode, &body, &Limits::default())
        .unwrap();
    let mut inputs = Inputs::none();
    inputs.insert("model", Loaded::Model(model()));
    decoded.load(inputs).unwrap();
    let out = decoded
        .run(&ComputeDevice::Cpu, &Recorder::default())
        .unwrap();
    assert_eq!(out["classes"], json!([1]));
}
