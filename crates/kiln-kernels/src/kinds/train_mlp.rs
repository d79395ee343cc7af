//! `train_mlp`: trains a small multi-layer perceptron on a user's dataset or a seeded synthetic
//! one, reports loss and accuracy per epoch, and hands back the trained model.
//!
//! **A user's dataset** (`"dataset": {"object": NAME}`, CSV `features…,label` or safetensors
//! `x` and `y`, read by the worker) sets the sizes: samples and features from `x`, classes
//! from the largest label + 1. A `validation_split` fraction (default 0.2) is held out: the
//! sample indices are shuffled by the job's seed (ChaCha8 stream [`STREAM_SPLIT`]) and the last
//! `round(samples · split)` form the validation set. Features are standardised with the
//! training set's mean and standard deviation (a constant feature's deviation counts as 1).
//!
//! **Without a dataset** the data set is **concentric shells** ([`super::shells`]): nested
//! shells, one per class, which an MLP separates and no linear model can. Everything random is
//! drawn on the host from ChaCha8 streams of the job's seed, so every backend trains on the
//! same data, the same batches and the same initial weights: stream 0 the data, stream 1 the
//! per-epoch shuffles, streams 2 + 2l and 3 + 2l the weights and biases of layer l (uniform in
//! ±1/√fan_in, Burn's default `Linear` initialisation).
//!
//! Training: `Linear` layers with ReLU between them (none after the last; [`Mlp`]), softmax
//! cross-entropy, Adam (β = 0.9, 0.999, ε = 1e-5) at a constant learning rate, mini-batches of
//! a fresh shuffle every epoch. An empty `hidden` trains softmax regression.
//!
//! **The result** lists a record per epoch in `epochs` (`epoch`, `loss` — the mean of its
//! mini-batch losses —, `accuracy`, and `val_loss`, `val_accuracy` with held-out samples), then
//! the last one's as `final_*`; past 1,000 epochs every `history_every`-th and the last.
//!
//! **The model** (stored for every dataset job, and for a shells job whose `output` asks for an
//! object) is the safetensors file [`Mlp::export`] writes (docs/DATA.md); `mlp_predict` runs it.

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData, backend::Backend};
use kiln_data::Dataset;
use kiln_proto::{ErrorKind, JobError, Limits, ObjectRef, checked_product};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::mlp::{Mlp, Standardisation};
use crate::io::{Inputs, Wanted};
use crate::{Kernel, Plan, RunContext, Want};

/// Widest hidden layer accepted.
pub const MAX_HIDDEN: u64 = 4096;
/// Most hidden layers accepted.
pub const MAX_LAYERS: usize = 64;
/// Most epochs accepted.
pub const MAX_EPOCHS: u64 = 10_000;
/// Largest `validation_split` accepted.
pub const MAX_VALIDATION_SPLIT: f64 = 0.9;
/// `validation_split` of a dataset job that leaves it out.
pub const DEFAULT_VALIDATION_SPLIT: f64 = 0.2;
/// Rows per forward pass when measuring training-set accuracy (at least a batch).
const EVAL_ROWS: u64 = 4096;

const STREAM_SHUFFLE: u64 = 1;
/// The shuffle that picks the validation samples: far past the weights' streams
/// (2 + 2 · layers).
pub const STREAM_SPLIT: u64 = 1 << 32;

/// `{"samples": 2048, "features": 2, "classes": 3, "hidden": [64, 64], "epochs": 20,
/// "batch_size": 128, "lr": 0.01}`, every field optional with these defaults; or
/// `{"dataset": {"object": NAME}, "validation_split": 0.2, …}` without the three sizes.
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
    /// A labelled dataset in `KILN_DATA` to train on instead of the shells.
    #[serde(default)]
    pub dataset: Option<ObjectRef>,
    /// Fraction of the samples held out for validation, 0 to 0.9 (default 0.2 with a
    /// dataset, 0 for the shells).
    #[serde(default)]
    pub validation_split: Option<f64>,
}

/// The sizes of the data a job trains on.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sizes {
    samples: u64,
    features: u64,
    classes: u64,
}

impl Params {
    fn validation_split(&self) -> f64 {
        self.validation_split.unwrap_or(if self.dataset.is_some() {
            DEFAULT_VALIDATION_SPLIT
        } else {
            0.0
        })
    }

    /// The shells' sizes: as given, or the defaults.
    fn shell_sizes(&self) -> Sizes {
        Sizes {
            samples: self.samples.unwrap_or(2048),
            features: self.features.unwrap_or(2),
            classes: self.classes.unwrap_or(3),
        }
    }

    /// A dataset's sizes, refusing sizes the job gave that disagree with it. `classes` is
    /// `None` while the labels are not read (planning): the given count, else 2, stands in.
    fn dataset_sizes(
        &self,
        object: &str,
        samples: u64,
        features: u64,
        classes: Option<u64>,
    ) -> Result<Sizes, JobError> {
        for (name, given, actual) in [
            ("samples", self.samples, Some(samples)),
            ("features", self.features, Some(features)),
            ("classes", self.classes, classes),
        ] {
            if let (Some(given), Some(actual)) = (given, actual)
                && given != actual
            {
                return Err(JobError::invalid_input(format!(
                    "train_mlp {name} {given} disagrees with dataset {object:?}'s {actual}; \
                     leave the sizes out when sending a dataset"
                )));
            }
        }
        Ok(Sizes {
            samples,
            features,
            classes: classes.or(self.classes).unwrap_or(2),
        })
    }
}

/// The shape of the dataset's `x` as samples and features, refusing any other.
fn dataset_shape(object: &str, shape: &[usize]) -> Result<(u64, u64), JobError> {
    match *shape {
        [samples, features] if samples > 0 && features > 0 => Ok((samples as u64, features as u64)),
        _ => Err(JobError::invalid_input(format!(
            "train_mlp dataset {object:?} has features shaped {shape:?}; it needs one row per \
             sample and at least one sample and one feature"
        ))),
    }
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
    /// Samples held out for validation (0: none).
    held_out: u64,
}

fn invalid<T>(message: String) -> Result<T, JobError> {
    Err(JobError::invalid_input(format!("train_mlp {message}")))
}

impl Config {
    /// The job's training settings for data of `sizes`, validated.
    fn new(p: &Params, sizes: Sizes) -> Result<Self, JobError> {
        let Sizes {
            samples,
            features,
            classes,
        } = sizes;
        if classes < 2 {
            return invalid(format!("needs classes >= 2, got {classes}"));
        }
        // A dataset may leave a class out; the shells give every class a sample.
        if p.dataset.is_none() && samples < classes {
            return invalid(format!(
                "needs samples >= classes, got {samples} samples for {classes} classes"
            ));
        }
        if features == 0 {
            return invalid("needs features >= 1, got 0".into());
        }
        let mut c = Config::training(p)?;
        let split = p.validation_split();
        c.held_out = (samples as f64 * split).round() as u64;
        if split > 0.0 && c.held_out == 0 {
            return invalid(format!(
                "validation_split {split} of {samples} samples holds out none; send more \
                 samples or set validation_split to 0"
            ));
        }
        if c.held_out >= samples {
            return invalid(format!(
                "validation_split {split} of {samples} samples leaves none to train on; send \
                 more samples or lower validation_split"
            ));
        }
        (c.samples, c.features, c.classes) = (samples, features, classes);
        Ok(c)
    }

    /// The settings that do not depend on the data, validated (sizes left at 0).
    fn training(p: &Params) -> Result<Self, JobError> {
        let c = Config {
            samples: 0,
            features: 0,
            classes: 0,
            hidden: p.hidden.clone().unwrap_or_else(|| vec![64, 64]),
            epochs: p.epochs.unwrap_or(20),
            batch_size: p.batch_size.unwrap_or(128),
            lr: p.lr.unwrap_or(0.01),
            held_out: 0,
        };
        let split = p.validation_split();
        if !(0.0..=MAX_VALIDATION_SPLIT).contains(&split) {
            return invalid(format!(
                "needs validation_split from 0 to {MAX_VALIDATION_SPLIT}, got {split:?}"
            ));
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
        // Training computes in f32: an lr that f32 rounds to infinity or to 0 is no lr.
        let in_f32 = c.lr as f32;
        if !(c.lr.is_finite() && c.lr > 0.0 && in_f32.is_finite() && in_f32 > 0.0) {
            return invalid(format!(
                // `{:?}`: 1e300 as `1e300`, not its 301 digits.
                "needs a finite lr > 0 that f32 holds (at most {:e}, at least {:e}), got {:?}",
                f32::MAX,
                f32::from_bits(1),
                c.lr
            ));
        }
        Ok(c)
    }

    /// Layer widths from input to output, as the network takes them.
    fn layer_widths(&self) -> Vec<usize> {
        self.widths().iter().map(|&w| w as usize).collect()
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

    /// Samples trained on.
    fn training_samples(&self) -> u64 {
        self.samples - self.held_out
    }

    /// Rows in one forward pass: a training batch, or an accuracy slice.
    fn batch_rows(&self) -> u64 {
        self.batch_size.min(self.training_samples())
    }

    /// Rows in one forward pass of an evaluation: [`EVAL_ROWS`] (at least a batch), fewer
    /// where they are more than a matmul's piece of work between checkpoints (an evaluation of
    /// 90% of 4,000 samples through 4096-wide layers ran 3.5 times past its timeout).
    fn eval_rows(&self, gpu: bool) -> u64 {
        let piece = match gpu {
            true => super::matmul::GPU_PIECE_FLOPS,
            false => super::matmul::CPU_PIECE_FLOPS,
        };
        let macs: u64 = self
            .widths()
            .windows(2)
            .map(|w| w[0].saturating_mul(w[1]))
            .fold(0, u64::saturating_add);
        let within = (piece / (2.0 * macs.max(1) as f64)).max(1.0) as u64;
        self.batch_rows()
            .max(EVAL_ROWS)
            .min(within)
            .min(self.samples)
    }
}

fn overflow() -> JobError {
    JobError::too_large("train_mlp sizes overflow a 64-bit element count")
}

/// Points (row-major) and their labels.
struct Samples {
    x: Vec<f32>,
    y: Vec<i64>,
}

impl Samples {
    fn len(&self) -> usize {
        self.y.len()
    }

    /// Training and validation sets: with `held_out` > 0, the last `held_out` samples of a
    /// shuffle by `seed` are held out; with none, every sample trains, in order.
    fn split(self, features: usize, held_out: usize, seed: u64) -> (Samples, Samples) {
        let none = Samples {
            x: Vec::new(),
            y: Vec::new(),
        };
        if held_out == 0 {
            return (self, none);
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(STREAM_SPLIT);
        order.shuffle(&mut rng);
        let (train, validation) = order.split_at(order.len() - held_out);
        let gather = |indices: &[usize]| Samples {
            x: indices
                .iter()
                .flat_map(|&i| &self.x[i * features..(i + 1) * features])
                .copied()
                .collect(),
            y: indices.iter().map(|&i| self.y[i]).collect(),
        };
        (gather(train), gather(validation))
    }

    /// The points as a tensor and the labels as another, on `device`.
    fn tensors<B: Backend>(
        self,
        features: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let rows = self.len();
        (
            Tensor::from_data(TensorData::new(self.x, [rows, features]), device),
            Tensor::from_data(TensorData::new(self.y, [rows]), device),
        )
    }
}

/// The most classes a dataset's labels may make (its largest label + 1).
const MAX_DATASET_CLASSES: u64 = 65_536;

/// Refuse a dataset whose largest label makes more than [`MAX_DATASET_CLASSES`] classes.
fn check_classes(object: &str, classes: u64) -> Result<(), JobError> {
    if classes > MAX_DATASET_CLASSES {
        return invalid(format!(
            "dataset {object:?}'s largest label is {}, which makes {classes} classes (labels \
             are class numbers from 0, and the largest sets how many there are), over the \
             {MAX_DATASET_CLASSES} kiln trains; number the classes 0 to N-1",
            classes - 1
        ));
    }
    Ok(())
}

/// A user's dataset as samples, with its sizes; refuses one kiln cannot train on.
fn dataset_samples(
    params: &Params,
    object: &str,
    data: Dataset,
) -> Result<(Samples, Sizes), JobError> {
    let (samples, features) = dataset_shape(object, &data.x.shape)?;
    if data.y.len() as u64 != samples {
        return invalid(format!(
            "dataset {object:?} has {samples} samples but {} labels; it needs one label per sample",
            data.y.len()
        ));
    }
    if let Some(i) = data.x.data.iter().position(|v| !v.is_finite()) {
        return invalid(format!(
            "dataset {object:?} has a value that is not a finite number (sample {}, feature {}); \
             clean the data and upload it again",
            i as u64 / features,
            i as u64 % features
        ));
    }
    let classes = data.y.iter().max().map_or(0, |&m| u64::from(m) + 1);
    check_classes(object, classes)?;
    let sizes = params.dataset_sizes(object, samples, features, Some(classes))?;
    let y = data.y.into_iter().map(i64::from).collect();
    Ok((Samples { x: data.x.data, y }, sizes))
}

/// The `train_mlp` kind: trains an MLP with Adam; loss and accuracy per epoch, and the model.
pub struct TrainMlp;

/// What training on data of `c`'s sizes costs.
fn cost(c: &Config) -> Result<Plan, JobError> {
    let what = "train_mlp";
    let parameters = c.parameters()?;
    // Per sample, on the host and as a tensor: features, label and place in the epoch's
    // shuffle as i64, two f32s each (features and label alone were a quarter of the peak).
    let per_sample = c.features.checked_add(4).ok_or_else(overflow)?;
    let data = checked_product(what, &[c.samples, per_sample, 2])?;
    // Weights, their gradients and Adam's two moments.
    let state = checked_product(what, &[parameters, 4])?;
    // Activations of every layer, and their gradients, for the widest pass (on a GPU, which
    // takes the larger evaluation slices).
    let width_sum = c
        .widths()
        .iter()
        .try_fold(0u64, |acc, &w| acc.checked_add(w))
        .ok_or_else(overflow)?;
    let activations = checked_product(what, &[c.eval_rows(true), width_sum, 2])?;
    let elements = [data, state, activations]
        .into_iter()
        .try_fold(0u64, |acc, e| acc.checked_add(e))
        .ok_or_else(overflow)?;
    // Forward 2, backward 4 per parameter and sample; the accuracy pass of a recorded epoch
    // another 2.
    let recorded = c.epochs.div_ceil(history_every(c.epochs)) as f64;
    let flops = 2.0 * parameters as f64 * c.samples as f64 * (3.0 * c.epochs as f64 + recorded);
    Ok(Plan {
        elements,
        flops,
        gpu_only: false,
    })
}

impl Kernel for TrainMlp {
    const NAME: &'static str = "train_mlp";
    const SUMMARY: &'static str = "trains an MLP on a dataset object or seeded concentric shells; \
         loss and accuracy per epoch, and the trained model";
    const PARAMS_HELP: &'static str = "dataset: {\"object\": NAME} in KILN_DATA, CSV \
         features...,label or safetensors x and y (instead of the generated shells)\n\
         validation_split: fraction of the samples held out for validation, 0 to 0.9 (0.2 \
         with a dataset, else 0)\n\
         samples: points in the generated data set (2048)\n\
         features: dimensions of a point (2)\n\
         classes: classes, one concentric shell each (3)\n\
         hidden: hidden layer widths, each 1 to 4096 ([64, 64]; [] = softmax regression)\n\
         epochs: passes over the data, 1 to 10000 (20)\n\
         batch_size: samples per Adam step (128)\n\
         lr: Adam learning rate (0.01)";
    const WARMUP: &'static [&'static str] = &[r#"{"epochs": 1}"#];
    type Params = Params;

    fn objects(params: &Params) -> Vec<Wanted> {
        params
            .dataset
            .iter()
            .map(|reference| Wanted {
                param: "dataset",
                reference: reference.clone(),
                want: Want::Dataset,
            })
            .collect()
    }

    fn plan(params: &Params, inputs: &Inputs, _limits: &Limits) -> Result<Plan, JobError> {
        let sizes = match &params.dataset {
            None => params.shell_sizes(),
            Some(reference) => match inputs.shape("dataset") {
                // Not loaded yet: checked again once it is.
                None => {
                    Config::training(params)?;
                    return Ok(Plan::default());
                }
                // Its labels make the classes (the output layer, so the cost): too many are
                // refused before the other sizes are checked against them.
                Some(shape) => {
                    let (samples, features) = dataset_shape(&reference.object, shape)?;
                    let classes = inputs
                        .with_dataset("dataset", |d| d.y.iter().max().map(|&m| u64::from(m) + 1))
                        .flatten();
                    if let Some(classes) = classes {
                        check_classes(&reference.object, classes)?;
                    }
                    params.dataset_sizes(&reference.object, samples, features, classes)?
                }
            },
        };
        cost(&Config::new(params, sizes)?)
    }

    fn run<B: Backend>(params: &Params, ctx: &RunContext<'_, B>) -> Result<Value, JobError> {
        let (data, c) = training_data(params, ctx)?;
        let [features, held_out] = [c.features, c.held_out].map(|v| v as usize);
        let (mut train, mut validation) = data.split(features, held_out, ctx.seed);
        // The shells are centred and of unit scale by construction, and train as they are.
        let standard = match params.dataset {
            Some(_) => Standardisation::of(&train.x, features),
            None => Standardisation::identity(features),
        };
        if params.dataset.is_some() {
            standard.apply(&mut train.x);
            standard.apply(&mut validation.x);
        }
        let (model, history, parameters) = train_model(&c, train, validation, ctx)?;
        let mut out = summary(params, &c, &history, parameters);
        if params.dataset.is_some() || ctx.output.stores() {
            let widths = c.layer_widths();
            ctx.sink
                .put_model(model.export(standard, &widths, &c.hidden)?);
            out["model"] = json!({
                "layers": widths,
                "features": c.features,
                "classes": c.classes,
            });
        }
        Ok(out)
    }
}

/// The samples a job trains on (the user's dataset or the shells) and its settings, checked
/// against the worker's limits once the labels are known.
fn training_data<B: Backend>(
    params: &Params,
    ctx: &RunContext<'_, B>,
) -> Result<(Samples, Config), JobError> {
    match &params.dataset {
        Some(reference) => {
            let data = ctx.inputs.take_dataset("dataset")?;
            let (data, sizes) = dataset_samples(params, &reference.object, data)?;
            let c = Config::new(params, sizes)?;
            // The plan could not know the classes (labels are read only now).
            ctx.limits
                .check_elements(TrainMlp::NAME, cost(&c)?.elements)?;
            Ok((data, c))
        }
        None => {
            let c = Config::new(params, params.shell_sizes())?;
            let [samples, features, classes] =
                [c.samples, c.features, c.classes].map(|v| v as usize);
            let (x, y) = super::shells::shells(ctx.seed, samples, features, classes);
            Ok((Samples { x, y }, c))
        }
    }
}

/// Train the network `c` describes on `train` with Adam, one record of loss and accuracy (and
/// validation loss and accuracy when `validation` holds samples) per recorded epoch (see
/// [`recorded`]: every epoch up to [`MAX_HISTORY`]; others are not evaluated), with a checkpoint
/// before each step and after each epoch's evaluation (an epoch of a large network on many
/// samples runs for minutes, past any timeout or cancel checked only between epochs); returns
/// the trained network, the records and the number of parameters.
fn train_model<B: Backend>(
    c: &Config,
    train: Samples,
    validation: Samples,
    ctx: &RunContext<'_, B>,
) -> Result<(Mlp<B>, Vec<Value>, usize), JobError> {
    let [features, held_out] = [c.features, c.held_out].map(|v| v as usize);
    let samples = c.training_samples() as usize;
    let (batch_rows, eval_rows) = (c.batch_rows() as usize, c.eval_rows(ctx.is_gpu) as usize);
    let device = &ctx.device;
    let (x, y) = train.tensors::<B>(features, device);
    let (val_x, val_y) = validation.tensors::<B>(features, device);
    let x_ad = Tensor::<Autodiff<B>, 2>::from_inner(x.clone());

    let mut model = Mlp::<Autodiff<B>>::init(&c.layer_widths(), ctx.seed, device);
    let parameters = model.num_params();
    let mut optim = AdamConfig::new().init::<Autodiff<B>, Mlp<Autodiff<B>>>();

    let mut shuffle = ChaCha8Rng::seed_from_u64(ctx.seed);
    shuffle.set_stream(STREAM_SHUFFLE);
    let mut order: Vec<i64> = (0..samples as i64).collect();
    let batches = samples.div_ceil(batch_rows);
    let steps = c.epochs.saturating_mul(batches as u64);
    let mut history = Vec::with_capacity(c.epochs.min(MAX_HISTORY) as usize);
    for epoch in 1..=c.epochs {
        let done = (epoch - 1) * batches as u64;
        order.shuffle(&mut shuffle);
        let order_t = Tensor::<Autodiff<B>, 1, Int>::from_data(
            TensorData::new(order.clone(), [samples]),
            device,
        );
        let mut loss_sum = Tensor::<B, 1>::zeros([1], device);
        for (step, start) in (0..samples).step_by(batch_rows).enumerate() {
            ctx.checkpoint(done + step as u64, steps)?;
            let idx = order_t
                .clone()
                .slice(start..(start + batch_rows).min(samples));
            let logits = model.forward(x_ad.clone().select(0, idx.clone()));
            let (loss, to_differentiate) =
                super::mlp::training_loss(logits, y.clone().select(0, idx.inner()));
            loss_sum = loss_sum + loss;
            let grads = GradientsParams::from_grads(to_differentiate.backward(), &model);
            model = optim.step(c.lr, model, grads);
        }
        if !recorded(epoch, c.epochs) {
            ctx.checkpoint(epoch * batches as u64, steps)?;
            continue;
        }
        let loss = loss_sum.into_scalar().elem::<f64>() / batches as f64;
        // A loss that is no number leaves a network of NaNs, which no prediction can use:
        // answered as a failure, not stored as a model that "succeeded".
        if !loss.is_finite() {
            return Err(JobError::new(
                ErrorKind::InvalidInput,
                format!(
                    "the training diverged: its loss is {loss} at epoch {epoch}; lower the \
                     learning rate (lr {:?}) or scale the features to about [-1, 1]",
                    c.lr
                ),
            ));
        }
        let trained = model.valid();
        let evaluating = || ctx.checkpoint(epoch * batches as u64, steps);
        let correct = trained.correct(&x, &y, eval_rows, &evaluating)?;
        // A validation loss that diverged spoils the accuracy too (NaN scores): null.
        let share = |loss: f64, n: i64, of: usize| loss.is_finite().then(|| n as f64 / of as f64);
        let accuracy = share(loss, correct, samples);
        let mut record = json!({"epoch": epoch, "loss": loss, "accuracy": accuracy});
        if held_out > 0 {
            let (val_loss, val_correct) =
                trained.evaluate(&val_x, &val_y, eval_rows, &evaluating)?;
            record["val_loss"] = json!(val_loss);
            record["val_accuracy"] = json!(share(val_loss, val_correct, held_out));
        }
        history.push(record);
        ctx.checkpoint(epoch * batches as u64, steps)?;
    }
    Ok((model.valid(), history, parameters))
}

/// Most epochs a result lists: 10,000 epochs of records with validation figures came to 1.1 MB,
/// over a NATS message, and the model's object does not carry them.
const MAX_HISTORY: u64 = 1000;

/// Every how many epochs the history records one: 1 up to [`MAX_HISTORY`] epochs, then enough
/// to keep at most that many records.
fn history_every(epochs: u64) -> u64 {
    epochs.div_ceil(MAX_HISTORY).max(1)
}

/// Whether `epoch` of `epochs` is recorded (and evaluated): every [`history_every`]-th, and
/// always the last.
fn recorded(epoch: u64, epochs: u64) -> bool {
    epoch.is_multiple_of(history_every(epochs)) || epoch == epochs
}

/// The job's result from its epochs' records: the history, the final figures and the data
/// trained on.
fn summary(params: &Params, c: &Config, history: &[Value], parameters: usize) -> Value {
    let last = history.last().cloned().unwrap_or_default();
    let mut out = json!({
        "epochs": history,
        "history_every": history_every(c.epochs),
        "final_loss": last["loss"],
        "final_accuracy": last["accuracy"],
        "parameters": parameters,
        "dataset": params
            .dataset
            .as_ref()
            .map_or("concentric_shells", |r| r.object.as_str()),
    });
    if params.dataset.is_some() {
        out["samples"] = json!(c.samples);
    }
    if c.held_out > 0 {
        out["final_val_loss"] = last["val_loss"].clone();
        out["final_val_accuracy"] = last["val_accuracy"].clone();
        out["validation_samples"] = json!(c.held_out);
    }
    out
}
