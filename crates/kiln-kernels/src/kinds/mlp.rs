//! The network both MLP kinds run — `train_mlp` trains it, `mlp_predict` runs one a
//! `train_mlp` job stored, the kernel benchmark times its training step — and the format it is
//! stored in (see [`super::train_mlp`]).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{
    ElementConversion, IndexingUpdateOp, Int, Tensor, TensorData, activation::relu,
    backend::Backend,
};
use kiln_data::{HostTensor, Model};
use kiln_proto::JobError;

use crate::seeded_values;

/// The stored model's `format` metadata.
pub const MODEL_FORMAT: &str = "kiln-mlp";
/// The stored model's `version` metadata.
pub const MODEL_VERSION: &str = "1";

/// The first of the seed's ChaCha8 streams the initial weights are drawn from: streams
/// 2 + 2l and 3 + 2l hold the weights and biases of layer l.
pub(crate) const STREAM_WEIGHTS: u64 = 2;

/// One training step's loss, the mean softmax cross-entropy of `logits` against `labels`,
/// and the scalar to call `backward` on: the logits times that loss's gradient with respect
/// to them, `(softmax − one-hot) / rows`, held constant, summed, whose gradient is the loss's.
///
/// burn's `CrossEntropyLoss` differentiates through `log`, whose backward takes
/// burn-ndarray's `recip`: an approximate reciprocal (x86 `rcp`, 12 to 14 bits) on the part
/// of a buffer aligned for SIMD and an exact one on the rest, so the gradients changed in
/// their last bits with where the allocator put a buffer, and one seed trained a different
/// model from one run to the next. These gradients take an exact division.
pub fn training_loss<B: AutodiffBackend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B::InnerBackend, 1, Int>,
) -> (Tensor<B::InnerBackend, 1>, Tensor<B, 1>) {
    let scores = logits.clone().inner();
    let [rows, _] = scores.dims();
    let device = scores.device();
    let shifted = scores.clone() - scores.max_dim(1);
    let exp = shifted.clone().exp();
    let total = exp.clone().sum_dim(1);
    let labels = labels.reshape([rows, 1]);
    let picked = shifted.gather(1, labels.clone());
    let loss = (total.clone().log() - picked).mean();
    let minus_one = Tensor::full([rows, 1], -1.0, &device);
    let gradient = (exp / total)
        .scatter(1, labels, minus_one, IndexingUpdateOp::Add)
        .div_scalar(rows as f32);
    (loss, (logits * Tensor::from_inner(gradient)).sum())
}

/// The network: `Linear` layers with ReLU between them.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    layers: Vec<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    /// A network of layers `widths` wide from input to output (at least two widths), with
    /// Burn's default `Linear` initialisation (uniform in ±1/√fan_in) drawn on the host from
    /// `seed`, so that every backend starts from the same weights.
    pub fn init(widths: &[usize], seed: u64, device: &B::Device) -> Self {
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(l, pair)| {
                let (fan_in, fan_out) = (pair[0], pair[1]);
                let bound = 1.0 / (fan_in as f32).sqrt();
                let stream = STREAM_WEIGHTS + 2 * l as u64;
                let draw = |stream, n| {
                    seeded_values(seed, stream, n)
                        .into_iter()
                        .map(|v| v * bound)
                        .collect::<Vec<f32>>()
                };
                Linear {
                    weight: Param::from_data(
                        TensorData::new(draw(stream, fan_in * fan_out), [fan_in, fan_out]),
                        device,
                    ),
                    bias: Some(Param::from_data(
                        TensorData::new(draw(stream + 1, fan_out), [fan_out]),
                        device,
                    )),
                }
            })
            .collect();
        Mlp { layers }
    }

    /// The network of these layers, input first.
    pub(crate) fn from_layers(layers: Vec<Linear<B>>) -> Self {
        Mlp { layers }
    }

    /// The logits of each row of `x` (ReLU between layers, nothing after the last).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            let y = layer.forward(x);
            if i < last { relu(y) } else { y }
        })
    }

    /// How many rows of `x` the network classifies as `y` says, `rows` at a time, calling
    /// `checkpoint` between two slices (the job stops at its error).
    pub(crate) fn correct(
        &self,
        x: &Tensor<B, 2>,
        y: &Tensor<B, 1, Int>,
        rows: usize,
        checkpoint: &dyn Fn() -> Result<(), JobError>,
    ) -> Result<i64, JobError> {
        let [samples, _] = x.dims();
        let device = x.device();
        let mut correct = Tensor::<B, 1, Int>::zeros([1], &device);
        for start in (0..samples).step_by(rows.max(1)) {
            if start > 0 {
                checkpoint()?;
            }
            let end = (start + rows).min(samples);
            let logits = self.forward(x.clone().slice(start..end));
            correct = correct + classified(logits, y.clone().slice(start..end));
        }
        Ok(correct.into_scalar().elem::<i64>())
    }

    /// Mean cross-entropy and the number classified right on `x` and `y`, `rows` at a time,
    /// calling `checkpoint` between two slices.
    pub(crate) fn evaluate(
        &self,
        x: &Tensor<B, 2>,
        y: &Tensor<B, 1, Int>,
        rows: usize,
        checkpoint: &dyn Fn() -> Result<(), JobError>,
    ) -> Result<(f64, i64), JobError> {
        let [samples, _] = x.dims();
        let device = x.device();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let mut loss_sum = Tensor::<B, 1>::zeros([1], &device);
        let mut correct = Tensor::<B, 1, Int>::zeros([1], &device);
        for start in (0..samples).step_by(rows.max(1)) {
            if start > 0 {
                checkpoint()?;
            }
            let end = (start + rows).min(samples);
            let logits = self.forward(x.clone().slice(start..end));
            let labels = y.clone().slice(start..end);
            correct = correct + classified(logits.clone(), labels.clone());
            loss_sum = loss_sum + loss_fn.forward(logits, labels) * (end - start) as f32;
        }
        Ok((
            loss_sum.into_scalar().elem::<f64>() / samples as f64,
            correct.into_scalar().elem::<i64>(),
        ))
    }

    /// The model in kiln's format (see the module docs), with the inputs' standardisation.
    pub(crate) fn export(
        &self,
        standard: Standardisation,
        widths: &[usize],
        hidden: &[u64],
    ) -> Result<Model, JobError> {
        let mut tensors = Vec::with_capacity(2 * self.layers.len() + 2);
        for (i, layer) in self.layers.iter().enumerate() {
            tensors.push((format!("layers.{i}.weight"), host(layer.weight.val())?));
            let bias = match &layer.bias {
                Some(bias) => host(bias.val())?,
                None => HostTensor::new(vec![widths[i + 1]], vec![0.0; widths[i + 1]]),
            };
            tensors.push((format!("layers.{i}.bias"), bias));
        }
        let features = standard.mean.len();
        tensors.push((
            "input.mean".into(),
            HostTensor::new(vec![features], standard.mean),
        ));
        tensors.push((
            "input.std".into(),
            HostTensor::new(vec![features], standard.std),
        ));
        let hidden: Vec<String> = hidden.iter().map(u64::to_string).collect();
        let metadata = [
            ("format", MODEL_FORMAT.to_owned()),
            ("version", MODEL_VERSION.to_owned()),
            ("features", features.to_string()),
            ("classes", widths[widths.len() - 1].to_string()),
            ("hidden", hidden.join(",")),
            ("activation", "relu".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(Model { tensors, metadata })
    }
}

/// A tensor's values copied to the host.
fn host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<HostTensor, JobError> {
    let shape = tensor.dims().to_vec();
    let data = tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| JobError::internal(format!("reading train_mlp weights: {e:?}")))?;
    Ok(HostTensor::new(shape, data))
}

/// Per-feature mean and standard deviation the inputs are standardised with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Standardisation {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Standardisation {
    /// Inputs left as they are.
    pub(crate) fn identity(features: usize) -> Self {
        Self {
            mean: vec![0.0; features],
            std: vec![1.0; features],
        }
    }

    /// The mean and (population) standard deviation of each column of `x`, accumulated in
    /// f64; a constant column's deviation counts as 1.
    pub(crate) fn of(x: &[f32], features: usize) -> Self {
        let rows = (x.len() / features).max(1) as f64;
        let mut mean = vec![0.0f64; features];
        for row in x.chunks_exact(features) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, &v)| *m += f64::from(v));
        }
        mean.iter_mut().for_each(|m| *m /= rows);
        let mut var = vec![0.0f64; features];
        for row in x.chunks_exact(features) {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (f64::from(v) - m).powi(2);
            }
        }
        let std = var
            .iter()
            .map(|s| match (s / rows).sqrt() as f32 {
                d if d > 0.0 && d.is_finite() => d,
                _ => 1.0,
            })
            .collect();
        Self {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    pub(crate) fn apply(&self, x: &mut [f32]) {
        let features = self.mean.len();
        for row in x.chunks_exact_mut(features) {
            for ((v, m), d) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / d;
            }
        }
    }
}

/// How many rows `logits` classify as `labels` says. A row with a logit that is not finite is
/// classified as nothing: the argmax of NaNs is class 0, which counted a diverged network as
/// right on every sample of class 0.
fn classified<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1, Int> {
    let [rows, _] = logits.dims();
    // x - x is 0 for a finite x, NaN for an infinity or a NaN; a row's sum of them is 0 only
    // when every logit is finite.
    let finite = (logits.clone() - logits.clone())
        .sum_dim(1)
        .reshape([rows])
        .equal_elem(0.0)
        .int();
    let predicted = logits.argmax(1).reshape([rows]);
    (predicted.equal(labels).int() * finite).sum()
}
