//! The cost model: how long a job of a given kind and size will take on each device class,
//! and which class will finish it first.
//!
//! Pure and deterministic: no I/O and no clocks; every time is a number passed in.
//!
//! # Service time
//!
//! For each (kind, class) the model keeps a line `t_ms = overhead_ms + flops * ms_per_flop`,
//! fitted online to the `(flops, compute_ms)` of finished jobs:
//!
//! - **Exponential forgetting.** Each new observation multiplies the weight of everything
//!   before it by [`DECAY`] (0.95): an observation's weight halves every 13.5 observations
//!   and the fit effectively remembers the last 20, so it follows a class that slows down.
//! - **Relative least squares.** Service times span orders of magnitude (a 1e5-flop add
//!   and a 1e9-flop matmul) and their noise grows with them, so each observation is also
//!   weighted by `1 / t̂(flops)²`, with `t̂` the current line: the fit minimises relative, not
//!   absolute, error, and the overhead is learned from small jobs instead of being swamped by
//!   the noise of big ones. (In simulation, on ±5 % noise over 1e5..1e9 flops, plain least
//!   squares was off by 16 % in the median and 50 % at the 95th percentile for a CPU-like
//!   line; this fit by under 2 %.)
//! - **Refitted from the recent history.** The decayed sums Σw, Σx, Σy, Σxx, Σxy are
//!   recomputed (centred, in two passes) from the last [`HISTORY`] (128) observations at each
//!   new one, which hold all but 0.95^128 ≈ 0.1 % of the weight. Running sums would have to
//!   freeze each observation's relative weight when it arrives; then after a class slows
//!   down, its old, faster results keep up to 9× the weight of new ones and the fit lags (in
//!   simulation, 60 results after the per-flop cost tripled, running sums were still 11 %
//!   low, this fit 3 %). Recomputing weighs old and new results by the same line, so
//!   forgetting is exactly [`DECAY`] either way.
//! - **Clamped.** A negative fitted slope becomes the best flat line (the weighted mean); a
//!   negative fitted overhead becomes the best line through the origin.
//! - **Degenerate histories.** When every observation had the same flops (relative spread
//!   under 0.1 %), the slope cannot be fitted: the prior's line is scaled to pass through the
//!   mean observed time there.
//! - **Prior.** The fitted line is blended with a per-class prior that counts as
//!   [`PRIOR_WEIGHT`] (3) pseudo-observations made before the first real one, forgotten at
//!   the same rate: it carries the estimate over the first few results (half the weight
//!   after 3), and fades to 8 % of it after 20 and under 1 % after 60.
//!
//! The priors are rough figures that only matter until a few results arrive: CPU 0.05 ms of
//! overhead and 50 GFLOP/s; GPU 0.5 ms (launch and transfers) and 20 TFLOP/s.
//!
//! # Waiting time
//!
//! A class's queue is priced as `backlog * queued_mean_ms / capacity`: the jobs ahead
//! (pending and in flight on its consumer, as last read, plus the jobs routed since and not
//! yet answered) times the mean service time of the jobs in it, spread over its compute
//! slots. That mean is taken over the kinds queued (`ClassState::queued`, jobs per kind as
//! the stream's subjects count them): each kind at its own mean observed compute time on the
//! class, a kind not seen there yet at the class's mean over all kinds (prior 1 ms); both
//! forgotten with [`CLASS_MEAN_DECAY`]. Priced at the class mean alone, a burst of long jobs
//! (a training sweep) behind a history of short ones would look short until most of it had
//! run, and every auto job meanwhile would queue behind it.
//!
//! # Decision
//!
//! A class with no live workers (or no capacity) is no candidate. Of the candidates, the
//! smaller `wait + service` wins. Predictions within [`TIE_RELATIVE`] (1 %) of each other
//! are a tie: a job of at least [`LARGE_JOB_FLOPS`] (1e9) goes to the GPU, which keeps the
//! CPU free for small jobs, a smaller one to the CPU, which spares it a launch and
//! transfers. With no live worker in either class the job goes to the CPU, to wait there.

use std::collections::{BTreeMap, VecDeque};

use kiln_proto::DeviceClass;
use serde::{Deserialize, Serialize};

/// Weight kept by past observations at each new one: a half-life of
/// `ln 0.5 / ln 0.95 ≈ 13.5` observations, an effective memory of `1 / (1 - 0.95) = 20`.
pub const DECAY: f64 = 0.95;

/// Observations kept per (kind, class) to refit from: older ones weigh under 0.1 % together.
pub const HISTORY: usize = 128;

/// The prior counts as this many pseudo-observations, made before the first real one.
pub const PRIOR_WEIGHT: f64 = 3.0;

/// CPU prior: per-job overhead (dispatch, allocation).
pub const CPU_PRIOR_OVERHEAD_MS: f64 = 0.05;
/// CPU prior: 50 GFLOP/s.
pub const CPU_PRIOR_MS_PER_FLOP: f64 = 1e3 / 50e9;
/// GPU prior: per-job overhead (kernel launch, transfers both ways).
pub const GPU_PRIOR_OVERHEAD_MS: f64 = 0.5;
/// GPU prior: 20 TFLOP/s.
pub const GPU_PRIOR_MS_PER_FLOP: f64 = 1e3 / 20e12;

/// Prior for a class's mean service time, the price of each job in its backlog.
pub const PRIOR_MEAN_SERVICE_MS: f64 = 1.0;
/// Forgetting of the class mean service time: slower than [`DECAY`] (half-life ≈ 34
/// observations) because it averages a mix of kinds and should not jump with each one.
pub const CLASS_MEAN_DECAY: f64 = 0.98;

/// Jobs of at least this many flops go to the GPU when the classes tie.
pub const LARGE_JOB_FLOPS: f64 = 1e9;
/// Predicted totals closer than this fraction of the larger one are a tie.
pub const TIE_RELATIVE: f64 = 0.01;

/// Observations with more work than this are ignored as nonsense (an exaflop machine busy
/// for eleven days); larger requested flops are priced as this.
const MAX_FLOPS: f64 = 1e24;
/// Observed times longer than this (about 31 years) are ignored as nonsense.
const MAX_MS: f64 = 1e12;
/// The overhead is floored to this in the relative weights (`1 / t̂²`), so a line through
/// the origin does not give jobs of no work an infinite weight.
const MIN_SCALE_MS: f64 = 1e-3;
/// Flops whose weighted spread is under this fraction of their mean cannot fit a slope.
const MIN_RELATIVE_SPREAD: f64 = 1e-3;

/// Learned service times per (kind, device class), and each class's mean service time.
#[derive(Debug, Clone, Default)]
pub struct CostModel {
    /// Per kind: `[gpu, cpu]`.
    fits: BTreeMap<String, [Fit; 2]>,
    /// `[gpu, cpu]`.
    means: [ClassMean; 2],
    /// Per kind: `[gpu, cpu]` mean observed compute time, to price the jobs queued.
    kind_means: BTreeMap<String, [ClassMean; 2]>,
}

/// What the scheduler knows of one device class right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassState {
    /// Workers with a fresh heartbeat.
    pub live_workers: usize,
    /// Total compute slots of the live workers.
    pub capacity: usize,
    /// Jobs pending or in flight on the class's consumer.
    pub backlog: u64,
    /// The mix of the jobs in `backlog`, as far as it is known: jobs per kind. Empty: the
    /// backlog is priced at the class's mean over all kinds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queued: BTreeMap<String, u64>,
}

/// The predicted completion of a job on one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The class predicted for.
    pub class: DeviceClass,
    /// Time behind the class's backlog.
    pub wait_ms: f64,
    /// Time on the device.
    pub service_ms: f64,
    /// `wait_ms + service_ms`.
    pub total_ms: f64,
}

/// Where a job goes, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The class the job goes to: `gpu` or `cpu`.
    pub chosen: DeviceClass,
    /// `None` when the GPU class has no live workers.
    pub gpu: Option<Prediction>,
    /// `None` when the CPU class has no live workers.
    pub cpu: Option<Prediction>,
    /// A short sentence for logs and result events.
    pub reason: String,
}

/// The fitted line of one (kind, class), for logs and `kiln status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitView {
    /// The job kind.
    pub kind: String,
    /// The class it ran on: `gpu` or `cpu`.
    pub class: DeviceClass,
    /// Fitted time of a job of no work, in milliseconds: the line's intercept.
    pub overhead_ms: f64,
    /// Fitted milliseconds per floating-point operation: the line's slope.
    pub ms_per_flop: f64,
    /// Results learned from (all of them, not only the ones still remembered).
    pub observations: u64,
}

/// `t_ms = overhead_ms + flops * ms_per_flop`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    overhead_ms: f64,
    ms_per_flop: f64,
}

impl Line {
    fn at(self, flops: f64) -> f64 {
        self.overhead_ms + flops * self.ms_per_flop
    }

    fn prior(class: DeviceClass) -> Line {
        match class {
            DeviceClass::Gpu => Line {
                overhead_ms: GPU_PRIOR_OVERHEAD_MS,
                ms_per_flop: GPU_PRIOR_MS_PER_FLOP,
            },
            _ => Line {
                overhead_ms: CPU_PRIOR_OVERHEAD_MS,
                ms_per_flop: CPU_PRIOR_MS_PER_FLOP,
            },
        }
    }
}

/// Exponentially weighted, relative least squares of time on flops over the recent history.
#[derive(Debug, Clone, Default)]
struct Fit {
    /// Results learned from, all of them.
    observations: u64,
    /// The last [`HISTORY`] `(flops, ms)`, oldest first.
    history: VecDeque<(f64, f64)>,
    /// The line fitted to `history` alone; `None` before the first result (or if the
    /// weights underflowed, which the bounds on inputs rule out).
    fitted: Option<Line>,
}

impl Fit {
    fn observe(&mut self, class: DeviceClass, flops: f64, ms: f64) {
        // Weights from the line as it stood: the same for every result in the history.
        let shape = self.line(class);
        self.observations += 1;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((flops, ms));
        self.fitted = fit(&self.history, shape, Line::prior(class));
    }

    /// The fitted line blended with the prior, which fades as observations arrive.
    fn line(&self, class: DeviceClass) -> Line {
        let prior = Line::prior(class);
        let Some(fitted) = self.fitted else {
            return prior;
        };
        // Σ DECAY^age over the history, and the prior's pseudo-observations aged as much.
        let n = (1.0 - DECAY.powi(self.history.len() as i32)) / (1.0 - DECAY);
        let p = PRIOR_WEIGHT * DECAY.powf(self.observations as f64);
        let blend = |f: f64, p0: f64| (n * f + p * p0) / (n + p);
        let line = Line {
            overhead_ms: blend(fitted.overhead_ms, prior.overhead_ms),
            ms_per_flop: blend(fitted.ms_per_flop, prior.ms_per_flop),
        };
        // Both parts are ≥ 0 by construction; anything else falls back to the prior.
        if line.overhead_ms >= 0.0 && line.ms_per_flop >= 0.0 && line.at(1.0).is_finite() {
            line
        } else {
            prior
        }
    }
}

/// The weighted least-squares line through `history` (oldest first): weights
/// `DECAY^age / shape(flops)²`, slope and overhead clamped to ≥ 0, and the prior's shape
/// scaled through the mean when all flops are (nearly) the same. `None` when the weights
/// are not usable (an empty history).
fn fit(history: &VecDeque<(f64, f64)>, shape: Line, prior: Line) -> Option<Line> {
    let overhead = shape.overhead_ms.max(MIN_SCALE_MS);
    let weights = || {
        let mut decay = 1.0;
        history.iter().rev().map(move |&(x, y)| {
            let scale = overhead + shape.ms_per_flop * x;
            let w = decay / (scale * scale);
            decay *= DECAY;
            (w, x, y)
        })
    };
    let (mut weight, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for (w, x, y) in weights() {
        weight += w;
        sx += w * x;
        sy += w * y;
    }
    if !weight.is_normal() {
        return None;
    }
    let (mean_flops, mean_ms) = (sx / weight, sy / weight);
    let (mut cxx, mut cxy) = (0.0, 0.0);
    for (w, x, y) in weights() {
        cxx += w * (x - mean_flops) * (x - mean_flops);
        cxy += w * (x - mean_flops) * (y - mean_ms);
    }

    let floor = MIN_RELATIVE_SPREAD * mean_flops;
    let spread = cxx / weight;
    if spread.is_nan() || spread <= floor * floor {
        // All at (nearly) the same flops: keep the prior's shape, through the mean there.
        // The prior's overhead is positive, so the division is safe.
        let scale = mean_ms / prior.at(mean_flops);
        return Some(Line {
            overhead_ms: prior.overhead_ms * scale,
            ms_per_flop: prior.ms_per_flop * scale,
        });
    }
    let ms_per_flop = cxy / cxx;
    let overhead_ms = mean_ms - ms_per_flop * mean_flops;
    if ms_per_flop < 0.0 {
        // Bigger jobs were not slower: the best flat line.
        return Some(Line {
            overhead_ms: mean_ms,
            ms_per_flop: 0.0,
        });
    }
    if overhead_ms < 0.0 {
        // The best line through the origin, from the uncentred sums.
        let sxx = cxx + weight * mean_flops * mean_flops;
        let sxy = cxy + weight * mean_flops * mean_ms;
        return Some(Line {
            overhead_ms: 0.0,
            ms_per_flop: (sxy / sxx).max(0.0),
        });
    }
    Some(Line {
        overhead_ms,
        ms_per_flop,
    })
}

/// Exponentially weighted mean of a class's service times, with a prior.
#[derive(Debug, Clone, Copy, Default)]
struct ClassMean {
    observations: u64,
    sum_ms: f64,
    weight: f64,
}

impl ClassMean {
    fn observe(&mut self, ms: f64) {
        self.observations += 1;
        self.sum_ms = self.sum_ms * CLASS_MEAN_DECAY + ms;
        self.weight = self.weight * CLASS_MEAN_DECAY + 1.0;
    }

    /// The mean of the observations alone, without the prior; `None` before the first.
    fn observed_ms(&self) -> Option<f64> {
        let mean = self.sum_ms / self.weight;
        (self.observations > 0 && mean.is_finite()).then(|| mean.max(0.0))
    }

    fn mean_ms(&self) -> f64 {
        let p = PRIOR_WEIGHT * CLASS_MEAN_DECAY.powf(self.observations as f64);
        let mean = (self.sum_ms + p * PRIOR_MEAN_SERVICE_MS) / (self.weight + p);
        if mean.is_finite() {
            mean.max(0.0)
        } else {
            PRIOR_MEAN_SERVICE_MS
        }
    }
}

/// `[gpu, cpu]` index of a modelled class; `Auto` is not one.
fn slot(class: DeviceClass) -> Option<usize> {
    match class {
        DeviceClass::Gpu => Some(0),
        DeviceClass::Cpu => Some(1),
        DeviceClass::Auto => None,
    }
}

/// Requested work as the model prices it: missing or negative counts as none.
fn sanitize_flops(flops: f64) -> f64 {
    if flops.is_nan() || flops <= 0.0 {
        0.0
    } else {
        flops.min(MAX_FLOPS)
    }
}

/// Milliseconds for a sentence: one decimal, three under 1 ms.
fn ms(v: f64) -> String {
    if v >= 1.0 || v == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

impl Prediction {
    /// `gpu: 12.3 ms (wait 10.0 + run 2.3)`
    fn describe(&self) -> String {
        format!(
            "{}: {} ms (wait {} + run {})",
            self.class,
            ms(self.total_ms),
            ms(self.wait_ms),
            ms(self.service_ms)
        )
    }
}

impl CostModel {
    /// A model that has learned nothing yet: it predicts from the built-in priors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns from one finished job. Ignores the `Auto` class, non-finite or negative
    /// numbers, and absurdly large ones.
    pub fn observe(&mut self, kind: &str, class: DeviceClass, flops: f64, compute_ms: f64) {
        let Some(i) = slot(class) else { return };
        let valid = |v: f64, max: f64| v.is_finite() && (0.0..=max).contains(&v);
        if !valid(flops, MAX_FLOPS) || !valid(compute_ms, MAX_MS) {
            return;
        }
        match self.fits.get_mut(kind) {
            Some(fits) => fits[i].observe(class, flops, compute_ms),
            None => {
                let mut fits = [Fit::default(), Fit::default()];
                fits[i].observe(class, flops, compute_ms);
                self.fits.insert(kind.to_owned(), fits);
            }
        }
        self.means[i].observe(compute_ms);
        match self.kind_means.get_mut(kind) {
            Some(means) => means[i].observe(compute_ms),
            None => {
                let mut means = [ClassMean::default(); 2];
                means[i].observe(compute_ms);
                self.kind_means.insert(kind.to_owned(), means);
            }
        }
    }

    /// Expected time on the device, in ms, of a `kind` job of `flops` on `class`; for
    /// `Auto`, the faster of the two classes.
    pub fn estimate(&self, kind: &str, class: DeviceClass, flops: f64) -> f64 {
        let flops = sanitize_flops(flops);
        let Some(i) = slot(class) else {
            return self
                .estimate(kind, DeviceClass::Gpu, flops)
                .min(self.estimate(kind, DeviceClass::Cpu, flops));
        };
        match self.fits.get(kind) {
            Some(fits) => fits[i].line(class).at(flops),
            None => Line::prior(class).at(flops),
        }
    }

    /// The mean service time of a job queued on `class`, over all kinds; for `Auto`, the
    /// smaller of the two classes'.
    pub fn mean_service_ms(&self, class: DeviceClass) -> f64 {
        match slot(class) {
            Some(i) => self.means[i].mean_ms(),
            None => self.means[0].mean_ms().min(self.means[1].mean_ms()),
        }
    }

    /// The mean service time of a job in `queued` (jobs per kind) on `class`: each kind at
    /// its own mean observed compute time there, a kind not seen there at the class's mean;
    /// with nothing known of the mix, the class's mean. `Auto` as in [`Self::mean_service_ms`].
    pub fn queued_mean_ms(&self, class: DeviceClass, queued: &BTreeMap<String, u64>) -> f64 {
        let class_mean = self.mean_service_ms(class);
        let Some(i) = slot(class) else {
            return class_mean;
        };
        let (mut jobs, mut total_ms) = (0.0, 0.0);
        for (kind, &count) in queued {
            let mean = self
                .kind_means
                .get(kind)
                .and_then(|means| means[i].observed_ms())
                .unwrap_or(class_mean);
            jobs += count as f64;
            total_ms += count as f64 * mean;
        }
        let mean = total_ms / jobs;
        if jobs > 0.0 && mean.is_finite() {
            mean
        } else {
            class_mean
        }
    }

    /// The predicted completion of a job on `class` in `state`; `None` when the class has
    /// no live workers or no capacity, or is `Auto`.
    pub fn predict(
        &self,
        kind: &str,
        class: DeviceClass,
        flops: f64,
        state: &ClassState,
    ) -> Option<Prediction> {
        slot(class)?;
        if state.live_workers == 0 || state.capacity == 0 {
            return None;
        }
        let service_ms = self.estimate(kind, class, flops);
        let wait_ms = if state.backlog == 0 {
            0.0
        } else {
            state.backlog as f64 * self.queued_mean_ms(class, &state.queued) / state.capacity as f64
        };
        Some(Prediction {
            class,
            wait_ms,
            service_ms,
            total_ms: wait_ms + service_ms,
        })
    }

    /// Chooses the class that will finish a `kind` job of `flops` first.
    pub fn decide(&self, kind: &str, flops: f64, gpu: &ClassState, cpu: &ClassState) -> Decision {
        let flops = sanitize_flops(flops);
        let g = self.predict(kind, DeviceClass::Gpu, flops, gpu);
        let c = self.predict(kind, DeviceClass::Cpu, flops, cpu);
        let (chosen, reason) = match (&g, &c) {
            (None, None) => (
                DeviceClass::Cpu,
                "no live workers in either class: cpu, to wait for one".to_owned(),
            ),
            (Some(g), None) => (
                DeviceClass::Gpu,
                format!("{}; no live cpu workers", g.describe()),
            ),
            (None, Some(c)) => (
                DeviceClass::Cpu,
                format!("{}; no live gpu workers", c.describe()),
            ),
            (Some(g), Some(c)) => {
                let tie =
                    (g.total_ms - c.total_ms).abs() <= TIE_RELATIVE * g.total_ms.max(c.total_ms);
                if tie {
                    let (chosen, why) = if flops >= LARGE_JOB_FLOPS {
                        (DeviceClass::Gpu, "gpu for a large job")
                    } else {
                        (DeviceClass::Cpu, "cpu for a small job")
                    };
                    (
                        chosen,
                        format!("{} ~ {}: a tie, {why}", g.describe(), c.describe()),
                    )
                } else if g.total_ms < c.total_ms {
                    (
                        DeviceClass::Gpu,
                        format!("{} < {}", g.describe(), c.describe()),
                    )
                } else {
                    (
                        DeviceClass::Cpu,
                        format!("{} < {}", c.describe(), g.describe()),
                    )
                }
            }
        };
        Decision {
            chosen,
            gpu: g,
            cpu: c,
            reason,
        }
    }

    /// The decision for a job only a GPU can run (a `dtype` other than f32): the GPU class,
    /// with its prediction when it has live workers, else to wait there for one.
    pub fn decide_gpu_only(&self, kind: &str, flops: f64, gpu: &ClassState) -> Decision {
        let g = self.predict(kind, DeviceClass::Gpu, sanitize_flops(flops), gpu);
        let reason = match &g {
            Some(g) => format!("{}; its dtype needs a gpu", g.describe()),
            None => "its dtype needs a gpu and none is live: gpu, to wait for one".to_owned(),
        };
        Decision {
            chosen: DeviceClass::Gpu,
            gpu: g,
            cpu: None,
            reason,
        }
    }

    /// The fitted line of every (kind, class) seen, by kind then class, with its
    /// observation count (0: the prior alone).
    pub fn snapshot(&self) -> Vec<FitView> {
        self.fits
            .iter()
            .flat_map(|(kind, fits)| {
                [DeviceClass::Gpu, DeviceClass::Cpu]
                    .into_iter()
                    .zip(fits)
                    .map(move |(class, fit)| {
                        let line = fit.line(class);
                        FitView {
                            kind: kind.clone(),
                            class,
                            overhead_ms: line.overhead_ms,
                            ms_per_flop: line.ms_per_flop,
                            observations: fit.observations,
                        }
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use DeviceClass::{Cpu, Gpu};

    /// A tiny deterministic generator (Knuth's MMIX LCG): uniform in [0, 1).
    struct Lcg(u64);

    impl Lcg {
        fn unit(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A true service-time line.
    #[derive(Clone, Copy)]
    struct Truth {
        overhead_ms: f64,
        ms_per_flop: f64,
    }

    impl Truth {
        fn at(self, flops: f64) -> f64 {
            self.overhead_ms + flops * self.ms_per_flop
        }
    }

    /// Feeds `n` observations from `truth` with ±5 % noise, flops log-uniform in 1e5..1e9.
    fn feed(model: &mut CostModel, rng: &mut Lcg, class: DeviceClass, truth: Truth, n: usize) {
        for _ in 0..n {
            let flops = 10f64.powf(5.0 + 4.0 * rng.unit());
            let noise = 1.0 + 0.05 * (2.0 * rng.unit() - 1.0);
            model.observe("matmul", class, flops, truth.at(flops) * noise);
        }
    }

    fn assert_within(what: &str, got: f64, want: f64, tolerance: f64) {
        let error = (got - want).abs() / want;
        assert!(
            error <= tolerance,
            "{what}: got {got}, want {want} ± {:.0}% (off by {:.1}%)",
            tolerance * 100.0,
            error * 100.0
        );
    }

    fn live(capacity: usize, backlog: u64) -> ClassState {
        ClassState {
            live_workers: 1,
            capacity,
            backlog,
            ..ClassState::default()
        }
    }

    const CPU_TRUTH: Truth = Truth {
        overhead_ms: 0.05,
        ms_per_flop: 2e-8,
    };
    const GPU_TRUTH: Truth = Truth {
        overhead_ms: 0.5,
        ms_per_flop: 5e-11,
    };

    #[test]
    fn converges_to_a_noisy_line_within_ten_percent() {
        let truth = Truth {
            overhead_ms: 0.3,
            ms_per_flop: 2e-8,
        };
        let mut model = CostModel::new();
        let mut rng = Lcg(7);
        feed(&mut model, &mut rng, Cpu, truth, 200);
        // Tolerance 10 % at every size, from overhead-bound to flop-bound.
        for flops in [1e5, 1e6, 1e7, 1e8, 5e8, 1e9] {
            let got = model.estimate("matmul", Cpu, flops);
            assert_within(
                &format!("estimate at {flops:e}"),
                got,
                truth.at(flops),
                0.10,
            );
        }
        let view = model.snapshot();
        assert_eq!(view.len(), 2);
        let cpu = view.iter().find(|v| v.class == Cpu).unwrap();
        assert_eq!(cpu.observations, 200);
        assert_within("overhead", cpu.overhead_ms, 0.3, 0.10);
        assert_within("ms per flop", cpu.ms_per_flop, 2e-8, 0.10);
        // The other class of the kind is still the prior.
        let gpu = view.iter().find(|v| v.class == Gpu).unwrap();
        assert_eq!(gpu.observations, 0);
        assert_eq!(gpu.overhead_ms, GPU_PRIOR_OVERHEAD_MS);
        assert_eq!(gpu.ms_per_flop, GPU_PRIOR_MS_PER_FLOP);
        // The class mean follows the observed times (which average several ms here).
        assert!(model.mean_service_ms(Cpu) > 1.0);
        assert_eq!(model.mean_service_ms(Gpu), PRIOR_MEAN_SERVICE_MS);
    }

    #[test]
    fn adapts_within_sixty_observations_when_the_cpu_slows_down() {
        let mut model = CostModel::new();
        let mut rng = Lcg(11);
        feed(&mut model, &mut rng, Cpu, CPU_TRUTH, 200);
        feed(&mut model, &mut rng, Gpu, GPU_TRUTH, 200);
        let idle = live(4, 0);
        // A mid-size job: 0.35 ms on the CPU, 0.50 ms on the GPU.
        let mid = 1.5e7;
        let before = model.decide("matmul", mid, &idle, &idle);
        assert_eq!(before.chosen, Cpu, "{}", before.reason);
        assert!(before.reason.starts_with("cpu: "), "{}", before.reason);

        // The CPU's per-flop cost triples (shared with a noisy neighbour, say).
        let slow = Truth {
            ms_per_flop: 3.0 * CPU_TRUTH.ms_per_flop,
            ..CPU_TRUTH
        };
        const K: usize = 60;
        feed(&mut model, &mut rng, Cpu, slow, K);
        // Tolerance 15 % after K = 60 observations (the old line keeps 0.95^60 ≈ 5 % weight).
        for flops in [1e6, 1e7, 1e8, 1e9] {
            let got = model.estimate("matmul", Cpu, flops);
            assert_within(
                &format!("slowed estimate at {flops:e}"),
                got,
                slow.at(flops),
                0.15,
            );
        }
        // The GPU's estimate did not move.
        assert_within(
            "gpu estimate",
            model.estimate("matmul", Gpu, mid),
            GPU_TRUTH.at(mid),
            0.10,
        );
        // Now 0.95 ms on the CPU against 0.50 on the GPU.
        let after = model.decide("matmul", mid, &idle, &idle);
        assert_eq!(after.chosen, Gpu, "{}", after.reason);
        assert!(after.reason.starts_with("gpu: "), "{}", after.reason);
    }

    #[test]
    fn a_class_with_no_history_uses_its_prior() {
        let mut model = CostModel::new();
        for flops in [0.0, 1e5, 1e9, 1e12] {
            assert_eq!(
                model.estimate("vector_add", Cpu, flops),
                CPU_PRIOR_OVERHEAD_MS + flops * CPU_PRIOR_MS_PER_FLOP
            );
            assert_eq!(
                model.estimate("vector_add", Gpu, flops),
                GPU_PRIOR_OVERHEAD_MS + flops * GPU_PRIOR_MS_PER_FLOP
            );
        }
        // History of another kind does not leak into this one.
        let mut rng = Lcg(3);
        feed(&mut model, &mut rng, Cpu, CPU_TRUTH, 50);
        assert_eq!(
            model.estimate("vector_add", Cpu, 1e6),
            CPU_PRIOR_OVERHEAD_MS + 1e6 * CPU_PRIOR_MS_PER_FLOP
        );

        let model = CostModel::new();
        let idle = live(2, 0);
        let none = ClassState::default();
        // By the priors alone: small jobs to the CPU, large ones to the GPU.
        assert_eq!(model.decide("vector_add", 1e5, &idle, &idle).chosen, Cpu);
        assert_eq!(model.decide("vector_add", 1e10, &idle, &idle).chosen, Gpu);
        // Only the CPU is live: even a huge job goes there.
        let d = model.decide("matmul", 1e12, &none, &idle);
        assert_eq!(d.chosen, Cpu);
        assert!(d.gpu.is_none());
        let cpu = d.cpu.unwrap();
        assert_eq!(cpu.wait_ms, 0.0);
        assert_eq!(cpu.service_ms, cpu.total_ms);
        assert!(d.reason.contains("no live gpu workers"), "{}", d.reason);
        // Nobody is live: the CPU, where the job waits.
        let d = model.decide("matmul", 1e12, &none, &none);
        assert_eq!(d.chosen, Cpu);
        assert!(d.gpu.is_none() && d.cpu.is_none());
        assert!(d.reason.contains("no live workers"), "{}", d.reason);
    }

    #[test]
    fn a_large_backlog_sends_jobs_to_the_other_class_until_it_clears() {
        // Both classes learn the same line from the same history; after 200 results their
        // different priors are forgotten (weight 3 * 0.95^200 ≈ 1e-4).
        let same = Truth {
            overhead_ms: 0.2,
            ms_per_flop: 1e-9,
        };
        let mut model = CostModel::new();
        feed(&mut model, &mut Lcg(5), Gpu, same, 200);
        feed(&mut model, &mut Lcg(5), Cpu, same, 200);
        let large = 2e9;
        // Tolerance 0.1 %, well inside the 1 % that makes a tie.
        assert_within(
            "gpu against cpu",
            model.estimate("matmul", Gpu, large),
            model.estimate("matmul", Cpu, large),
            1e-3,
        );
        assert_eq!(model.mean_service_ms(Gpu), model.mean_service_ms(Cpu));
        let idle = live(2, 0);
        // A tie: the large job goes to the GPU, a small one to the CPU.
        let d = model.decide("matmul", large, &idle, &idle);
        assert_eq!(d.chosen, Gpu, "{}", d.reason);
        assert!(d.reason.contains("tie"), "{}", d.reason);
        assert_eq!(model.decide("matmul", 1e5, &idle, &idle).chosen, Cpu);

        // 500 jobs queued on the GPU's 2 slots.
        let busy = live(2, 500);
        let d = model.decide("matmul", large, &busy, &idle);
        assert_eq!(d.chosen, Cpu, "{}", d.reason);
        let gpu = d.gpu.unwrap();
        let expected_wait = 500.0 * model.mean_service_ms(Gpu) / 2.0;
        assert_within("gpu wait", gpu.wait_ms, expected_wait, 1e-12);
        assert!(gpu.wait_ms > 50.0, "{gpu:?}");
        assert_eq!(d.cpu.unwrap().wait_ms, 0.0);
        assert!(d.reason.starts_with("cpu: "), "{}", d.reason);

        // Drained: back to the GPU.
        assert_eq!(model.decide("matmul", large, &idle, &idle).chosen, Gpu);
    }

    #[test]
    fn a_queue_is_priced_by_the_kinds_in_it_not_by_the_last_results() {
        let mut model = CostModel::new();
        // The GPU class trained three long jobs a while ago, then ran 400 short products;
        // the CPU class ran short products, each 40 times slower.
        for _ in 0..3 {
            model.observe("train_mlp", Gpu, 1e9, 800.0);
        }
        for _ in 0..400 {
            model.observe("matmul", Gpu, 1e6, 0.5);
            model.observe("matmul", Cpu, 1e6, 20.0);
        }
        // The class mean has all but forgotten the long jobs.
        assert!(
            model.mean_service_ms(Gpu) < 1.0,
            "{}",
            model.mean_service_ms(Gpu)
        );
        let idle = live(1, 0);
        let mut burst = live(1, 4);
        // Four long jobs queued on the GPU's one slot: 3.2 s behind them.
        burst.queued.insert("train_mlp".into(), 4);
        let d = model.decide("matmul", 1e6, &burst, &idle);
        assert_eq!(d.chosen, Cpu, "{}", d.reason);
        assert_within("gpu wait", d.gpu.unwrap().wait_ms, 4.0 * 800.0, 1e-9);
        // With the mix unknown, the same backlog is priced at the class mean, as before.
        let unknown = live(1, 4);
        let d = model.decide("matmul", 1e6, &unknown, &idle);
        assert_eq!(d.chosen, Gpu, "{}", d.reason);
        assert_within(
            "gpu wait, mix unknown",
            d.gpu.unwrap().wait_ms,
            4.0 * model.mean_service_ms(Gpu),
            1e-12,
        );
        // A mix: each kind at its own mean, a kind never seen on the class at the class mean.
        let mut mixed = live(2, 10);
        mixed.queued.insert("train_mlp".into(), 1);
        mixed.queued.insert("matmul".into(), 2);
        mixed.queued.insert("conv2d".into(), 1);
        let per_job = (800.0 + 2.0 * 0.5 + model.mean_service_ms(Gpu)) / 4.0;
        let got = model.predict("matmul", Gpu, 1e6, &mixed).unwrap().wait_ms;
        assert_within("mixed wait", got, 10.0 * per_job / 2.0, 1e-9);
    }

    #[test]
    fn a_class_without_live_workers_is_never_chosen() {
        let mut model = CostModel::new();
        let mut rng = Lcg(13);
        feed(&mut model, &mut rng, Cpu, CPU_TRUTH, 100);
        feed(&mut model, &mut rng, Gpu, GPU_TRUTH, 100);
        let gone = ClassState {
            live_workers: 0,
            capacity: 8,
            backlog: 0,
            ..ClassState::default()
        };
        let no_slots = ClassState {
            live_workers: 3,
            capacity: 0,
            backlog: 0,
            ..ClassState::default()
        };
        for flops in [0.0, 1e3, 1e6, 1e9, 1e12] {
            for backlog in [0, 10, 10_000] {
                let swamped = live(1, backlog);
                // The GPU is far faster on big jobs but gone: the CPU, however backed up.
                let d = model.decide("matmul", flops, &gone, &swamped);
                assert_eq!(d.chosen, Cpu, "{}", d.reason);
                assert!(d.gpu.is_none());
                // The CPU has workers but no slots: the GPU, however backed up.
                let d = model.decide("matmul", flops, &swamped, &no_slots);
                assert_eq!(d.chosen, Gpu, "{}", d.reason);
                assert!(d.cpu.is_none());
            }
        }
    }

    #[test]
    fn a_job_only_a_gpu_can_run_goes_to_the_gpu_however_backed_up() {
        let mut model = CostModel::new();
        let mut rng = Lcg(17);
        feed(&mut model, &mut rng, Cpu, CPU_TRUTH, 100);
        feed(&mut model, &mut rng, Gpu, GPU_TRUTH, 100);
        let swamped = live(1, 10_000);
        let d = model.decide_gpu_only("matmul", 1e3, &swamped);
        assert_eq!(d.chosen, Gpu, "{}", d.reason);
        assert!(d.cpu.is_none());
        assert!(d.gpu.is_some_and(|g| g.total_ms > 0.0));
        assert!(d.reason.ends_with("its dtype needs a gpu"), "{}", d.reason);
        let gone = ClassState::default();
        let d = model.decide_gpu_only("conv2d", 1e9, &gone);
        assert_eq!(d.chosen, Gpu);
        assert!(d.gpu.is_none());
        assert_eq!(
            d.reason,
            "its dtype needs a gpu and none is live: gpu, to wait for one"
        );
    }

    #[test]
    fn degenerate_inputs_never_give_nan_or_negative_estimates() {
        let mut model = CostModel::new();
        // Garbage is ignored: the estimates stay the prior.
        for (flops, ms) in [
            (f64::NAN, 1.0),
            (1e6, f64::NAN),
            (f64::INFINITY, 1.0),
            (1e6, f64::INFINITY),
            (-1.0, 1.0),
            (1e6, -1.0),
            (1e30, 1.0),
        ] {
            model.observe("matmul", Cpu, flops, ms);
        }
        model.observe("matmul", DeviceClass::Auto, 1e6, 1.0);
        assert!(model.snapshot().is_empty());
        assert_eq!(model.mean_service_ms(Cpu), PRIOR_MEAN_SERVICE_MS);
        assert_eq!(
            model.estimate("matmul", Cpu, 1e6),
            CPU_PRIOR_OVERHEAD_MS + 1e6 * CPU_PRIOR_MS_PER_FLOP
        );
        // Garbage requested flops price as none.
        for flops in [f64::NAN, -5.0, f64::NEG_INFINITY] {
            assert_eq!(model.estimate("matmul", Cpu, flops), CPU_PRIOR_OVERHEAD_MS);
        }
        assert!(model.estimate("matmul", Cpu, f64::INFINITY).is_finite());

        // Every job the same size: the prior's shape, scaled through the observed mean.
        for _ in 0..100 {
            model.observe("same", Gpu, 1e6, 2.0);
        }
        // Tolerance 1 %: the prior's remaining weight is 3 * 0.95^100 ≈ 0.02 against 20.
        assert_within(
            "same-size estimate",
            model.estimate("same", Gpu, 1e6),
            2.0,
            0.01,
        );
        // Jobs with no work and no time: zero, not NaN.
        for _ in 0..50 {
            model.observe("empty", Cpu, 0.0, 0.0);
        }
        // A flat or falling history: a non-negative slope.
        for i in 0..50 {
            let flops = 1e5 * (1 + i % 10) as f64;
            model.observe("falling", Cpu, flops, 10.0 - flops * 5e-6);
        }
        // A history whose fitted line crosses below zero: a non-negative overhead.
        for i in 0..50 {
            let flops = 1e6 * (1 + i % 10) as f64;
            model.observe("negative", Gpu, flops, (flops * 1e-6 - 0.9).max(0.0));
        }
        for view in model.snapshot() {
            assert!(
                view.overhead_ms.is_finite() && view.overhead_ms >= 0.0,
                "{view:?}"
            );
            assert!(
                view.ms_per_flop.is_finite() && view.ms_per_flop >= 0.0,
                "{view:?}"
            );
        }
        for kind in ["same", "empty", "falling", "negative", "unseen"] {
            for class in [Gpu, Cpu] {
                for flops in [0.0, 1.0, 1e5, 1e9, 1e15, f64::NAN, -1.0] {
                    let t = model.estimate(kind, class, flops);
                    assert!(t.is_finite() && t >= 0.0, "{kind} {class} {flops}: {t}");
                }
            }
        }
        let falling = model
            .snapshot()
            .into_iter()
            .find(|v| v.kind == "falling")
            .unwrap();
        assert!(
            falling.ms_per_flop < 0.05 * CPU_PRIOR_MS_PER_FLOP,
            "{falling:?}"
        );
        let negative = model
            .snapshot()
            .into_iter()
            .find(|v| v.kind == "negative")
            .unwrap();
        assert!(negative.overhead_ms < 0.05, "{negative:?}");
        assert!(model.mean_service_ms(Cpu).is_finite());

        // Decisions on garbage work are still decisions.
        let idle = live(1, 0);
        let d = model.decide("matmul", f64::NAN, &idle, &idle);
        assert_eq!(d.chosen, Cpu);
        assert!(d.gpu.unwrap().total_ms.is_finite() && d.cpu.unwrap().total_ms.is_finite());
    }
}
