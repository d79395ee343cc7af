//! `mlp_predict`: runs a model trained by `train_mlp` on rows of features, giving each row's
//! class probabilities and most likely class.
//!
//! The model is a `kiln-mlp` safetensors object (see [`super::train_mlp`] for its layout). Each
//! row is standardised with the model's `input.mean` and `input.std`, passed through its
//! `Linear` layers with ReLU between them ([`super::mlp::Mlp`]), and turned into probabilities
//! by a softmax, on the job's backend (Burn's kernels on every device), `batch_size` rows at a
//! time. A row's class is the first with the highest probability.

use std::collections::{BTreeMap, HashMap};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData, activation::softmax, backend::Backend};
use kiln_data::{HostTensor, Model};
use kiln_proto::{JobError, Limits, ObjectRef, checked_product};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::mlp::{MODEL_FORMAT, MODEL_VERSION, Mlp};
use crate::io::{Input, Inputs, Placement, Wanted};
use crate::{Kernel, Plan, RunContext, Summary, Want};

/// Rows per forward pass when the job leaves `batch_size` out.
pub const DEFAULT_BATCH_SIZE: u64 = 4096;

/// `{"model": {"object": NAME}, "x": [[..], ..], "batch_size": 4096}`, `x` inline or an
/// object holding a 2-D tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The model, trained by `train_mlp`.
    pub model: ObjectRef,
    /// The rows to classify, one row of features each.
    pub x: Input<Vec<Vec<f32>>>,
    /// Rows per forward pass (default 4096), to bound memory.
    #[serde(default)]
    pub batch_size: Option<u64>,
}

impl Params {
    fn batch_size(&self) -> Result<u64, JobError> {
        match self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE) {
            0 => Err(JobError::invalid_input(
                "mlp_predict needs batch_size >= 1, got 0",
            )),
            b => Ok(b),
        }
    }
}

/// Rows and columns of x, inline or loaded (None while not loaded yet).
fn x_shape(input: &Input<Vec<Vec<f32>>>, inputs: &Inputs) -> Result<Option<(u64, u64)>, JobError> {
    match input {
        Input::Inline(rows) => {
            let cols = rows.first().map_or(0, Vec::len);
            if cols == 0 {
                return Err(JobError::invalid_input(
                    "mlp_predict x is empty; give at least one row with at least one value",
                ));
            }
            if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
                return Err(JobError::invalid_input(format!(
                    "mlp_predict x is ragged: row 0 has {cols} values but row {i} has {}",
                    row.len()
                )));
            }
            Ok(Some((rows.len() as u64, cols as u64)))
        }
        Input::Object(r) => match inputs.shape("x") {
            None => Ok(None),
            Some(&[rows, cols]) if rows > 0 && cols > 0 => Ok(Some((rows as u64, cols as u64))),
            Some(shape) => Err(JobError::invalid_input(format!(
                "mlp_predict x (object {:?}) has shape {shape:?}; it must be a 2-D tensor of \
                 rows by features with at least one of each",
                r.object
            ))),
        },
    }
}

/// A `kiln-mlp` model checked whole: layers from input to output, and the standardisation.
struct Network {
    /// Weight [in, out] and bias [out] of each layer.
    layers: Vec<(HostTensor, HostTensor)>,
    mean: HostTensor,
    std: HostTensor,
}

impl Network {
    /// The network in `model`, refusing one that is not a complete `kiln-mlp` model.
    fn of(object: &str, model: Model) -> Result<Self, JobError> {
        let refuse = |what: String| {
            JobError::invalid_input(format!(
                "mlp_predict model {object:?} {what}; train one with train_mlp"
            ))
        };
        check_metadata(&model.metadata, &refuse)?;
        let mut tensors: HashMap<String, HostTensor> = model.tensors.into_iter().collect();
        let mean = take(&mut tensors, "input.mean", &refuse)?;
        let std = take(&mut tensors, "input.std", &refuse)?;
        let layers = take_layers(&mut tensors, &refuse)?;
        let features = layers[0].0.shape[0];
        for (name, t) in [("input.mean", &mean), ("input.std", &std)] {
            if t.shape != [features] {
                return Err(refuse(format!(
                    "has {name} shaped {:?}; it must be [{features}], one per feature",
                    t.shape
                )));
            }
        }
        if std.data.iter().any(|d| !(d.is_finite() && *d > 0.0)) {
            return Err(refuse(
                "has an input.std value that is not a positive number".into(),
            ));
        }
        // A NaN weight made every class's score NaN, and the argmax of NaNs came back as a
        // confident class 0; one in the first layer could even give finite probabilities (ReLU
        // passes it over). A training that diverged leaves such a model.
        let named = layers.iter().enumerate().flat_map(|(i, (w, b))| {
            [
                (format!("layers.{i}.weight"), w),
                (format!("layers.{i}.bias"), b),
            ]
        });
        for (name, t) in std::iter::once(("input.mean".to_owned(), &mean)).chain(named) {
            if let Some(at) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(refuse(format!(
                    "has {} at element {at} of {name}: its training diverged (lower lr) or \
                     the file is damaged",
                    t.data[at]
                )));
            }
        }
        let network = Network { layers, mean, std };
        for (key, actual) in [
            ("features", network.features()),
            ("classes", network.classes()),
        ] {
            if let Some(given) = model.metadata.get(key)
                && given.parse::<usize>().ok() != Some(actual)
            {
                return Err(refuse(format!(
                    "says {key}={given} in its metadata but its tensors have {actual}"
                )));
            }
        }
        let hidden = network.layers[..network.layers.len().saturating_sub(1)]
            .iter()
            .map(|(w, _)| w.shape[1].to_string())
            .collect::<Vec<_>>()
            .join(",");
        if let Some(given) = model.metadata.get("hidden")
            && given
                .split(',')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(",")
                != hidden
        {
            return Err(refuse(format!(
                "says hidden={given:?} in its metadata but its tensors have hidden layers of \
                 {hidden:?}"
            )));
        }
        Ok(network)
    }

    fn features(&self) -> usize {
        self.mean.shape[0]
    }

    fn classes(&self) -> usize {
        self.layers.last().map_or(0, |(w, _)| w.shape[1])
    }

    /// Its sizes, as [`ModelSize`] counts them (the parameters: weights and biases).
    fn size(&self) -> ModelSize {
        ModelSize {
            parameters: self.parameters(),
            macs: self.macs(),
            widths: self.layers.iter().map(|(w, _)| w.shape[1] as u64).sum(),
            classes: self.classes() as u64,
        }
    }

    /// Layer widths from input to output.
    fn widths(&self) -> Vec<usize> {
        std::iter::once(self.features())
            .chain(self.layers.iter().map(|(w, _)| w.shape[1]))
            .collect()
    }

    /// Weights and biases.
    fn parameters(&self) -> u64 {
        self.layers
            .iter()
            .map(|(w, b)| (w.len() + b.len()) as u64)
            .sum()
    }

    /// Multiply-adds per row.
    fn macs(&self) -> u64 {
        self.layers.iter().map(|(w, _)| w.len() as u64).sum()
    }

    /// The class probabilities of each row of `x` (row-major, the network's features wide),
    /// `batch` rows at a time (fewer for a large network) on the job's backend, with a
    /// checkpoint after each batch.
    fn predict<B: Backend>(
        &self,
        x: &[f32],
        batch: usize,
        ctx: &RunContext<'_, B>,
    ) -> Result<Vec<f32>, JobError> {
        let device = &ctx.device;
        let features = self.features();
        let mlp = self.module::<B>(device);
        let row_of = |t: &HostTensor| {
            Tensor::<B, 1>::from_data(TensorData::new(t.data.clone(), [features]), device)
                .reshape([1, features])
        };
        let (mean, std) = (row_of(&self.mean), row_of(&self.std));
        // The job's batch, within a piece of work between checkpoints as a matmul's: 40,000
        // rows through 4096-wide layers in one batch ran 17.8 s past a 1 s timeout.
        let piece = match ctx.is_gpu {
            true => super::matmul::GPU_PIECE_FLOPS,
            false => super::matmul::CPU_PIECE_FLOPS,
        };
        let batch = batch.min((piece / (2.0 * self.macs().max(1) as f64)).max(1.0) as usize);
        let rows = x.len() / features;
        let batches = rows.div_ceil(batch) as u64;
        let mut probabilities = Vec::with_capacity(rows * self.classes());
        for (done, chunk) in x.chunks(batch * features).enumerate() {
            let n = chunk.len() / features;
            let x =
                Tensor::<B, 2>::from_data(TensorData::new(chunk.to_vec(), [n, features]), device);
            let x = (x - mean.clone()) / std.clone();
            let p = softmax(mlp.forward(x), 1)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| JobError::internal(format!("reading mlp_predict output: {e:?}")))?;
            probabilities.extend(p);
            ctx.checkpoint(done as u64 + 1, batches)?;
        }
        Ok(probabilities)
    }

    /// The layers as Burn modules on `device`.
    fn module<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        let param = |t: &HostTensor| TensorData::new(t.data.clone(), t.shape.clone());
        Mlp::from_layers(
            self.layers
                .iter()
                .map(|(w, b)| Linear {
                    weight: Param::from_data(param(w), device),
                    bias: Some(Param::from_data(param(b), device)),
                })
                .collect(),
        )
    }
}

/// Refuse a model whose metadata is not `kiln-mlp`'s, in a version and with an activation this
/// worker runs (`refuse` words the error).
fn check_metadata(
    metadata: &BTreeMap<String, String>,
    refuse: &dyn Fn(String) -> JobError,
) -> Result<(), JobError> {
    match metadata.get("format").map(String::as_str) {
        Some(MODEL_FORMAT) => {}
        Some(other) => {
            return Err(refuse(format!(
                "has format {other:?}, not {MODEL_FORMAT:?}"
            )));
        }
        None => {
            return Err(refuse(format!(
                "has no \"format\" metadata (it must be {MODEL_FORMAT:?})"
            )));
        }
    }
    match metadata.get("version").map(String::as_str) {
        Some(MODEL_VERSION) => {}
        Some(other) => {
            return Err(refuse(format!(
                "has version {other:?}; this worker reads version {MODEL_VERSION:?}"
            )));
        }
        None => {
            return Err(refuse(format!(
                "has no \"version\" metadata (it must be {MODEL_VERSION:?})"
            )));
        }
    }
    if let Some(activation) = metadata.get("activation")
        && activation != "relu"
    {
        return Err(refuse(format!(
            "uses activation {activation:?}; only relu is supported"
        )));
    }
    Ok(())
}

/// Tensor `name` of a model, taken out of `tensors`.
fn take(
    tensors: &mut HashMap<String, HostTensor>,
    name: &str,
    refuse: &dyn Fn(String) -> JobError,
) -> Result<HostTensor, JobError> {
    tensors
        .remove(name)
        .ok_or_else(|| refuse(format!("lacks tensor {name:?}")))
}

/// Weight [in, out] and bias [out] of each layer `layers.{i}`, from input to output, checked
/// to fit together; at least one.
fn take_layers(
    tensors: &mut HashMap<String, HostTensor>,
    refuse: &dyn Fn(String) -> JobError,
) -> Result<Vec<(HostTensor, HostTensor)>, JobError> {
    let count = tensors
        .keys()
        .filter_map(|name| {
            let (index, part) = name.strip_prefix("layers.")?.split_once('.')?;
            matches!(part, "weight" | "bias").then(|| index.parse::<usize>().ok())?
        })
        .max()
        // Saturating: a crafted `layers.18446744073709551615.weight` is refused as a missing
        // layer below, not an overflow.
        .map_or(0, |last: usize| last.saturating_add(1));
    if count == 0 {
        return Err(refuse(
            "has no layers (tensors \"layers.0.weight\", \"layers.0.bias\", …)".into(),
        ));
    }
    let mut layers = Vec::new();
    let mut width = None;
    for i in 0..count {
        let (weight, bias) = (format!("layers.{i}.weight"), format!("layers.{i}.bias"));
        let (w, b) = (
            take(tensors, &weight, refuse)?,
            take(tensors, &bias, refuse)?,
        );
        let [fan_in, fan_out] = match *w.shape {
            [fan_in, fan_out] if fan_in > 0 && fan_out > 0 => [fan_in, fan_out],
            _ => {
                return Err(refuse(format!(
                    "has {weight} shaped {:?}; it must be [in, out]",
                    w.shape
                )));
            }
        };
        if width.is_some_and(|width| width != fan_in) {
            return Err(refuse(format!(
                "has {weight} shaped {:?}, but the layer before gives {} values",
                w.shape,
                width.unwrap_or_default()
            )));
        }
        if b.shape != [fan_out] {
            return Err(refuse(format!(
                "has {bias} shaped {:?}; it must be [{fan_out}]",
                b.shape
            )));
        }
        width = Some(fan_out);
        layers.push((w, b));
    }
    Ok(layers)
}

/// A model's sizes: of a loaded one read from its tensors' shapes before it is checked
/// (saturating: the checks that follow refuse a model whose shapes make no sense), or of a
/// checked [`Network`].
struct ModelSize {
    /// Values in its tensors.
    parameters: u64,
    /// Multiply-adds per row: the weights' [in, out] products.
    macs: u64,
    /// The layers' output widths together.
    widths: u64,
    /// The last layer's output width.
    classes: u64,
}

impl ModelSize {
    fn of(model: &Model) -> Self {
        let mut size = ModelSize {
            parameters: 0,
            macs: 0,
            widths: 0,
            classes: 0,
        };
        let mut last = None;
        for (name, tensor) in &model.tensors {
            size.parameters = size.parameters.saturating_add(tensor.data.len() as u64);
            let layer = name
                .strip_prefix("layers.")
                .and_then(|rest| rest.strip_suffix(".weight"))
                .and_then(|index| index.parse::<usize>().ok());
            if let (Some(index), &[fan_in, fan_out]) = (layer, &tensor.shape[..]) {
                let (fan_in, fan_out) = (fan_in as u64, fan_out as u64);
                size.macs = size.macs.saturating_add(fan_in.saturating_mul(fan_out));
                size.widths = size.widths.saturating_add(fan_out);
                if last.is_none_or(|l| index > l) {
                    last = Some(index);
                    size.classes = fan_out;
                }
            }
        }
        size
    }

    /// What classifying `rows` rows of `features` costs, `batch` rows at a time: x, the
    /// probabilities, the parameters and a batch's activations; the multiply-adds.
    fn cost(&self, features: u64, rows: u64, batch: u64) -> Result<Plan, JobError> {
        let what = "mlp_predict";
        let overflow = || JobError::too_large("mlp_predict sizes overflow a 64-bit element count");
        let widths = features.checked_add(self.widths).ok_or_else(overflow)?;
        let elements = [
            checked_product(what, &[rows, features])?,
            checked_product(what, &[rows, self.classes])?,
            self.parameters,
            checked_product(what, &[batch.min(rows), widths])?,
        ]
        .into_iter()
        .try_fold(0u64, u64::checked_add)
        .ok_or_else(overflow)?;
        Ok(Plan {
            elements,
            flops: 2.0 * rows as f64 * self.macs as f64,
            gpu_only: false,
        })
    }
}

/// The `mlp_predict` kind: classifies rows with a model a `train_mlp` job stored.
pub struct MlpPredict;

impl Kernel for MlpPredict {
    const NAME: &'static str = "mlp_predict";
    const SUMMARY: &'static str =
        "classifies rows with a model trained by train_mlp; probabilities and classes";
    const PARAMS_HELP: &'static str = "model: {\"object\": NAME} in KILN_DATA, a model stored \
         by train_mlp (required)\n\
         x: the rows to classify, one row of features each: inline, or {\"object\": NAME} \
         (2-D .npy or safetensors) (required)\n\
         batch_size: rows per forward pass, to bound memory (4096)";
    type Params = Params;

    fn objects(params: &Params) -> Vec<Wanted> {
        let model = Wanted {
            param: "model",
            reference: params.model.clone(),
            want: Want::Model,
        };
        let x = params.x.object().map(|reference| Wanted {
            param: "x",
            reference: reference.clone(),
            want: Want::Tensor,
        });
        std::iter::once(model).chain(x).collect()
    }

    /// Before the model is loaded only x is known; once it is, the plan counts what the job
    /// holds (x, the probabilities, the parameters, a batch's activations) and computes, from
    /// the model's tensors' shapes, so that the memory budget refuses or reserves all of it
    /// and a large model runs on a compute slot. (It counted x alone: a model of 4096-wide
    /// layers took a worker with a 64 MiB budget to 668 MB, on its async threads.) The run
    /// checks the model itself, and the job against the limits again.
    fn plan(params: &Params, inputs: &Inputs, _limits: &Limits) -> Result<Plan, JobError> {
        let batch = params.batch_size()?;
        let Some((rows, features)) = x_shape(&params.x, inputs)? else {
            return Ok(Plan::default());
        };
        match inputs.with_model("model", ModelSize::of) {
            Some(size) => size.cost(features, rows, batch),
            None => Ok(Plan {
                elements: checked_product("mlp_predict", &[rows, features])?,
                flops: 0.0,
                gpu_only: false,
            }),
        }
    }

    fn run<B: Backend>(
        params: &Params,
        ctx: &RunContext<'_, B>,
    ) -> Result<serde_json::Value, JobError> {
        let network = Network::of(&params.model.object, ctx.inputs.take_model("model")?)?;
        let batch = params.batch_size()?;
        let Some((rows, features)) = x_shape(&params.x, ctx.inputs)? else {
            return Err(JobError::internal("mlp_predict ran before x was loaded"));
        };
        if features as usize != network.features() {
            return Err(JobError::invalid_input(format!(
                "mlp_predict model {:?} expects {} features, x has {features}",
                params.model.object,
                network.features()
            )));
        }
        ctx.limits.check_elements(
            Self::NAME,
            network.size().cost(features, rows, batch)?.elements,
        )?;
        let x = match &params.x {
            Input::Inline(r) => r.concat(),
            Input::Object(_) => ctx.inputs.take_tensor("x")?.data,
        };

        let (rows, features) = (rows as usize, features as usize);
        finite_rows(&x, features)?;
        let classes = network.classes();
        let probabilities = network.predict(&x, batch as usize, ctx)?;
        finite_probabilities(&probabilities, classes)?;
        let predicted: Vec<usize> = probabilities
            .chunks_exact(classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
                        if p > best.1 { (i, p) } else { best }
                    })
                    .0
            })
            .collect();

        let mut out = json!({
            "rows": rows,
            "model": {
                "layers": network.widths(),
                "features": features,
                "classes": classes,
            },
            "summary": Summary::of(&probabilities),
        });
        if rows <= ctx.limits.max_inline_output {
            out["classes"] = json!(predicted);
        }
        match ctx.place(true, rows * classes).finite(&probabilities) {
            Placement::Inline => {
                out["probabilities"] =
                    json!(probabilities.chunks_exact(classes).collect::<Vec<_>>());
            }
            Placement::Object => ctx.sink.put(
                "probabilities",
                HostTensor::new(vec![rows, classes], probabilities),
            ),
            Placement::Summary => {}
        }
        Ok(out)
    }
}

/// A NaN went through the network as 0 (ReLU passes it over) and came back a confident class;
/// training refuses such rows, and so does prediction.
fn finite_rows(x: &[f32], features: usize) -> Result<(), JobError> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(at) => Err(JobError::invalid_input(format!(
            "mlp_predict x row {} holds {} at feature {}: the model cannot classify it (drop or \
             fill the row)",
            at / features.max(1),
            x[at],
            at % features.max(1)
        ))),
    }
}

/// Finite values the model overflows on (3e38 through large weights) score NaN, and the argmax
/// of NaNs made up class 0: refused as a NaN in x is.
fn finite_probabilities(probabilities: &[f32], classes: usize) -> Result<(), JobError> {
    match probabilities.iter().position(|p| !p.is_finite()) {
        None => Ok(()),
        Some(at) => Err(JobError::invalid_input(format!(
            "mlp_predict x row {} overflows the model: its class probabilities are not finite \
             (scale its features as the training data was)",
            at / classes.max(1)
        ))),
    }
}
