//! `train_mlp`: trains a small multi-layer perceptron on a seeded synthetic data set and
//! reports loss and accuracy per epoch.
//!
//! The data set is **concentric shells**: sample `i` belongs to class `i % classes`; its
//! point is `r · u` with `u` a uniformly random direction in `features` dimensions (a
//! normalised Gaussian vector; ±1 when `features` is 1) and radius
//! `r = 2 · (class + 0.5 + U(−0.3, 0.3)) / classes`, so class `c` fills the shell between
//! radii `2(c + 0.2)/classes` and `2(c + 0.8)/classes`, with empty gaps between shells. The
//! classes are separable by the distance from the origin, which an MLP learns; no linear
//! model can separate nested shells (it stays near chance). Everything random is drawn on the
//! host from ChaCha8 streams of the job's seed, so every backend trains on the same data, the
//! same batches and the same initial weights:
//! stream 0 the data, stream 1 the per-epoch shuffles, streams 2 + 2l and 3 + 2l the weights
//! and biases of layer l (uniform in ±1/√fan_in, Burn's default `Linear` initialisation).
//!
//! Training: `Linear` layers with ReLU between them (no activation after the last), softmax
//! cross-entropy, Adam (β = 0.9, 0.999, ε = 1e-5) at a constant learning rate, mini-batches
//! of a fresh shuffle every epoch (the last batch of an epoch may be smaller). An empty
//! `hidden` trains softmax regression, the linear baseline.

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{
    ElementConversion, Int, Tensor, TensorData, activation::relu, backend::Backend,
};
use kiln_proto::{JobError, Limits, checked_product};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Kernel, Plan, RunContext, seeded_values};

/// Widest hidden layer accepted.
pub const MAX_HIDDEN: u64 = 4096;
/// Most hidden layers accepted.
pub const MAX_LAYERS: usize = 64;
/// Most epochs accepted.
pub const MAX_EPOCHS: u64 = 10_000;
/// Rows per forward pass when measuring training-set accuracy (at least a batch).
const EVAL_ROWS: u64 = 4096;

const STREAM_DATA: u64 = 0;
const STREAM_SHUFFLE: u64 = 1;
const STREAM_WEIGHTS: u64 = 2;

/// `{"samples": 2048, "features": 2, "classes": 3, "hidden": [64, 64], "epochs": 20,
/// "batch_size": 128, "lr": 0.01}`, every field optional with these defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Points in the data set (default 2048).
    #[serde(default)]
    pub samples: Option<u64>,
    /// Dimensions of a point (default 2).
    #[serde(default)]
    pub features: Option<u64>,
    /// Classes, one shell each (default 3).
    #[serde(default)]
    pub classes: Option<u64>,
    /// Widths of the hidden layers (default [64, 64]; [] is softmax regression).
    #[serde(default)]
    pub hidden: Option<Vec<u64>>,
    /// Passes over the data set (default 20).
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Samples per optimiser step (default 128; capped at `samples`).
    #[serde(default)]
    pub batch_size: Option<u64>,
    /// Adam's learning rate (default 0.01).
    #[serde(default)]
    pub lr: Option<f64>,
}

/// Parameters with defaults applied, validated.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    samples: u64,
    features: u64,
    classes: u64,
    hidden: Vec<u64>,
    epochs: u64,
    batch_size: u64,
    lr: f64,
}

impl Config {
    fn from_params(p: &Params) -> Result<Self, JobError> {
        let c = Config {
            samples: p.samples.unwrap_or(2048),
            features: p.features.unwrap_or(2),
            classes: p.classes.unwrap_or(3),
            hidden: p.hidden.clone().unwrap_or_else(|| vec![64, 64]),
            epochs: p.epochs.unwrap_or(20),
            batch_size: p.batch_size.unwrap_or(128),
            lr: p.lr.unwrap_or(0.01),
        };
        let invalid = |m: String| Err(JobError::invalid_input(format!("train_mlp {m}")));
        if c.classes < 2 {
            return invalid(format!("needs classes >= 2, got {}", c.classes));
        }
        if c.samples < c.classes {
            return invalid(format!(
                "needs samples >= classes, got {} samples for {} classes",
                c.samples, c.classes
            ));
        }
        if c.features == 0 {
            return invalid("needs features >= 1, got 0".into());
        }
        if c.hidden.len() > MAX_LAYERS {
            return invalid(format!(
                "takes at most {MAX_LAYERS} hidden layers, got {}",
                c.hidden.len()
            ));
        }
        if let Some(h) = c.hidden.iter().find(|&&h| !(1..=MAX_HIDDEN).contains(&h)) {
            return invalid(format!(
                "needs hidden sizes from 1 to {MAX_HIDDEN}, got {h}"
            ));
        }
        if !(1..=MAX_EPOCHS).contains(&c.epochs) {
            return invalid(format!(
                "needs epochs from 1 to {MAX_EPOCHS}, got {}",
                c.epochs
            ));
        }
        if c.batch_size == 0 {
            return invalid("needs batch_size >= 1, got 0".into());
        }
        if !(c.lr.is_finite() && c.lr > 0.0) {
            return invalid(format!("needs a finite lr > 0, got {}", c.lr));
        }
        Ok(c)
    }

    /// Layer widths from input to output: features, hidden.., classes.
    fn widths(&self) -> Vec<u64> {
        let mut w = Vec::with_capacity(self.hidden.len() + 2);
        w.push(self.features);
        w.extend(&self.hidden);
        w.push(self.classes);
        w
    }

    /// Weights and biases of the whole network.
    fn parameters(&self) -> Result<u64, JobError> {
        self.widths().windows(2).try_fold(0u64, |acc, pair| {
            checked_product(
                "train_mlp",
                &[pair[0].checked_add(1).ok_or_else(overflow)?, pair[1]],
            )?
            .checked_add(acc)
            .ok_or_else(overflow)
        })
    }

    /// Rows in one forward pass: a training batch, or an accuracy slice.
    fn batch_rows(&self) -> u64 {
        self.batch_size.min(self.samples)
    }

    fn eval_rows(&self) -> u64 {
        self.batch_rows().max(EVAL_ROWS).min(self.samples)
    }
}

fn overflow() -> JobError {
    JobError::too_large("train_mlp sizes overflow a 64-bit element count")
}

/// The network: `Linear` layers with ReLU between them.
#[derive(Module, Debug)]
pub(crate) struct Mlp<B: Backend> {
    layers: Vec<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    /// Burn's default `Linear` initialisation (uniform in ±1/√fan_in), drawn on the host.
    pub(crate) fn init(widths: &[usize], seed: u64, device: &B::Device) -> Self {
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

    pub(crate) fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            let y = layer.forward(x);
            if i < last { relu(y) } else { y }
        })
    }

    /// How many rows of `x` the network classifies as `y` says, `rows` at a time.
    fn correct(&self, x: &Tensor<B, 2>, y: &Tensor<B, 1, Int>, rows: usize) -> i64 {
        let [samples, _] = x.dims();
        let device = x.device();
        let mut correct = Tensor::<B, 1, Int>::zeros([1], &device);
        for start in (0..samples).step_by(rows) {
            let end = (start + rows).min(samples);
            let predicted = self
                .forward(x.clone().slice(start..end))
                .argmax(1)
                .reshape([end - start]);
            correct = correct + predicted.equal(y.clone().slice(start..end)).int().sum();
        }
        correct.into_scalar().elem::<i64>()
    }
}

/// The concentric-shells data set (see the module docs): points row-major, and labels.
fn shells(seed: u64, samples: usize, features: usize, classes: usize) -> (Vec<f32>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(STREAM_DATA);
    let mut points = Vec::with_capacity(samples * features);
    let mut labels = Vec::with_capacity(samples);
    let mut direction = vec![0.0f32; features];
    for i in 0..samples {
        let class = i % classes;
        loop {
            direction.iter_mut().for_each(|d| *d = normal(&mut rng));
            let norm = direction.iter().map(|d| d * d).sum::<f32>().sqrt();
            if norm > 1e-6 {
                direction.iter_mut().for_each(|d| *d /= norm);
                break;
            }
        }
        let radius = 2.0 * (class as f32 + 0.5 + rng.random_range(-0.3f32..0.3)) / classes as f32;
        points.extend(direction.iter().map(|d| d * radius));
        labels.push(class as i64);
    }
    (points, labels)
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = 1.0 - rng.random::<f32>(); // (0, 1]: ln is finite
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

pub struct TrainMlp;

impl Kernel for TrainMlp {
    const NAME: &'static str = "train_mlp";
    const SUMMARY: &'static str =
        "trains an MLP on seeded concentric shells; loss and accuracy per epoch";
    const PARAMS_HELP: &'static str = "samples: points in the data set (2048)\n\
         features: dimensions of a point (2)\n\
         classes: classes, one concentric shell each (3)\n\
         hidden: hidden layer widths, each 1 to 4096 ([64, 64]; [] = softmax regression)\n\
         epochs: passes over the data, 1 to 10000 (20)\n\
         batch_size: samples per Adam step (128)\n\
         lr: Adam learning rate (0.01)";
    const WARMUP: &'static [&'static str] = &[r#"{"epochs": 1}"#];
    type Params = Params;

    fn plan(params: &Params, _limits: &Limits) -> Result<Plan, JobError> {
        let c = Config::from_params(params)?;
        let what = "train_mlp";
        let parameters = c.parameters()?;
        // Points and labels.
        let data = checked_product(
            what,
            &[c.samples, c.features.checked_add(1).ok_or_else(overflow)?],
        )?;
        // Weights, their gradients and Adam's two moments.
        let state = checked_product(what, &[parameters, 4])?;
        // Activations of every layer, and their gradients, for the widest pass.
        let width_sum = c
            .widths()
            .iter()
            .try_fold(0u64, |acc, &w| acc.checked_add(w))
            .ok_or_else(overflow)?;
        let activations = checked_product(what, &[c.eval_rows(), width_sum, 2])?;
        let elements = [data, state, activations]
            .into_iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e))
            .ok_or_else(overflow)?;
        // Forward 2, backward 4 per parameter and sample; the accuracy pass another 2.
        let flops = 8.0 * parameters as f64 * c.samples as f64 * c.epochs as f64;
        Ok(Plan {
            elements,
            flops,
            gpu_only: false,
        })
    }

    fn run<B: Backend>(
        params: &Params,
        ctx: &RunContext<'_, B>,
    ) -> Result<serde_json::Value, JobError> {
        let c = Config::from_params(params)?;
        let [samples, features, classes] = [c.samples, c.features, c.classes].map(|v| v as usize);
        let (batch_rows, eval_rows) = (c.batch_rows() as usize, c.eval_rows() as usize);
        let widths: Vec<usize> = c.widths().iter().map(|&w| w as usize).collect();
        let device = &ctx.device;

        let (points, labels) = shells(ctx.seed, samples, features, classes);
        let x = Tensor::<B, 2>::from_data(TensorData::new(points, [samples, features]), device);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [samples]), device);
        let x_ad = Tensor::<Autodiff<B>, 2>::from_inner(x.clone());
        let y_ad = Tensor::<Autodiff<B>, 1, Int>::from_inner(y.clone());

        let mut model = Mlp::<Autodiff<B>>::init(&widths, ctx.seed, device);
        let parameters = model.num_params();
        let mut optim = AdamConfig::new().init::<Autodiff<B>, Mlp<Autodiff<B>>>();
        let loss_fn = CrossEntropyLossConfig::new().init(device);

        let mut shuffle = ChaCha8Rng::seed_from_u64(ctx.seed);
        shuffle.set_stream(STREAM_SHUFFLE);
        let mut order: Vec<i64> = (0..samples as i64).collect();
        let batches = samples.div_ceil(batch_rows);
        let mut history = Vec::with_capacity(c.epochs as usize);
        for epoch in 1..=c.epochs {
            order.shuffle(&mut shuffle);
            let order_t = Tensor::<Autodiff<B>, 1, Int>::from_data(
                TensorData::new(order.clone(), [samples]),
                device,
            );
            let mut loss_sum = Tensor::<B, 1>::zeros([1], device);
            for start in (0..samples).step_by(batch_rows) {
                let idx = order_t
                    .clone()
                    .slice(start..(start + batch_rows).min(samples));
                let logits = model.forward(x_ad.clone().select(0, idx.clone()));
                let loss = loss_fn.forward(logits, y_ad.clone().select(0, idx));
                loss_sum = loss_sum + loss.clone().inner();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(c.lr, model, grads);
            }
            let loss = loss_sum.into_scalar().elem::<f64>() / batches as f64;
            let correct = model.valid().correct(&x, &y, eval_rows);
            let accuracy = correct as f64 / samples as f64;
            history.push(json!({"epoch": epoch, "loss": loss, "accuracy": accuracy}));
            ctx.checkpoint(epoch, c.epochs)?;
        }

        let last = history.last().cloned().unwrap_or_default();
        Ok(json!({
            "epochs": history,
            "final_loss": last["loss"],
            "final_accuracy": last["accuracy"],
            "parameters": parameters,
            "dataset": "concentric_shells",
        }))
    }
}
