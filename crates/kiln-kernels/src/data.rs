//! Seeded inputs (identical on every backend) and output summaries.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// `n` values uniform in `[-1, 1)`, the same for the same `(seed, stream)` on every machine.
/// `stream` separates the inputs of one job (A and B of a matmul) drawn from one seed.
pub fn seeded_values(seed: u64, stream: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The lowercase name of a tensor's element type (`f32`, `bf16`, `f16` …).
pub(crate) fn dtype_name(dtype: burn::tensor::DType) -> String {
    use burn::tensor::DType;
    match dtype {
        DType::F32 => "f32".into(),
        DType::BF16 => "bf16".into(),
        DType::F16 => "f16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Summary statistics of an output tensor, so that large results can be compared without
/// shipping them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sum of all values (accumulated in f64).
    pub checksum: f64,
    /// Euclidean norm (Frobenius for matrices).
    pub l2_norm: f64,
    pub min: f32,
    pub max: f32,
    pub mean: f64,
}

impl Summary {
    pub fn of(values: &[f32]) -> Self {
        let mut sum = 0.0f64;
        let mut sq = 0.0f64;
        let mut min = f32::INFINITY;
        let mut max = f32::NEG_INFINITY;
        for &v in values {
            sum += v as f64;
            sq += (v as f64) * (v as f64);
            min = min.min(v);
            max = max.max(v);
        }
        let n = values.len().max(1) as f64;
        Summary {
            checksum: sum,
            l2_norm: sq.sqrt(),
            min: if values.is_empty() { 0.0 } else { min },
            max: if values.is_empty() { 0.0 } else { max },
            mean: sum / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_values_are_reproducible_and_streams_differ() {
        let a = seeded_values(7, 0, 16);
        assert_eq!(a, seeded_values(7, 0, 16));
        assert_ne!(a, seeded_values(7, 1, 16));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    }

    #[test]
    fn summary_of_known_values() {
        let s = Summary::of(&[3.0, -4.0]);
        assert_eq!(s.checksum, -1.0);
        assert_eq!(s.l2_norm, 5.0);
        assert_eq!((s.min, s.max), (-4.0, 3.0));
    }
}
