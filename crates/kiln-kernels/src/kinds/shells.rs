//! The concentric-shells data set `train_mlp` trains on without a dataset: sample `i` belongs
//! to class `i % classes`; its point is `r · u` with `u` a uniformly random direction in
//! `features` dimensions (a normalised Gaussian vector; ±1 when `features` is 1) and radius
//! `r = 2 · (class + 0.5 + U(−0.3, 0.3)) / classes`, so class `c` fills the shell between
//! radii `2(c + 0.2)/classes` and `2(c + 0.8)/classes`, with empty gaps between shells. The
//! classes are separable by the distance from the origin, which an MLP learns; no linear
//! model can separate nested shells (it stays near chance). Drawn from ChaCha8 stream
//! [`STREAM_DATA`] of the job's seed, on the host, so every backend trains on the same points.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The seed's ChaCha8 stream the points are drawn from.
pub(crate) const STREAM_DATA: u64 = 0;

/// The concentric-shells data set: points row-major, and labels.
pub(crate) fn shells(
    seed: u64,
    samples: usize,
    features: usize,
    classes: usize,
) -> (Vec<f32>, Vec<i64>) {
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
