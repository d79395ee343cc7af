//! Seeded inputs (identical on every backend) and output summaries.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::cpu::simd::Width;

/// Values per block when generating or summarising: each block is one task on rayon's pool,
/// and its place in the output fixes its random words and its share of the sums, so results do
/// not depend on how many cores did the work.
pub(crate) const BLOCK: usize = 1 << 16;

/// Below this many values the work stays on the calling thread (a task costs microseconds).
const PARALLEL_FROM: usize = 4 * BLOCK;

/// Interleaved accumulators of a block's summary: value `i` of a block goes to lane `i % LANES`
/// (the values after its last whole chunk of `LANES` are added one by one).
pub(crate) const LANES: usize = 8;

/// `n` values uniform in `[-1, 1)`, the same for the same `(seed, stream)` on every machine.
/// `stream` separates the inputs of one job (A and B of a matmul) drawn from one seed.
///
/// Value `i` is rand's `random_range(-1.0f32..1.0)` of word `i` of ChaCha8's `stream` for
/// `seed` (one 32-bit word per value), so a block of values can start at its own word and large
/// inputs are generated on every core, with the same values as one thread drawing them in turn.
pub fn seeded_values(seed: u64, stream: u64, n: usize) -> Vec<f32> {
    let mut values = vec![0.0f32; n];
    let fill = |(index, block): (usize, &mut [f32])| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        rng.set_word_pos((index * BLOCK) as u128);
        // Whole ChaCha blocks into a buffer, then mapped: a fifth faster than word by word.
        let mut words = [0u32; 256];
        for values in block.chunks_mut(words.len()) {
            let words = &mut words[..values.len()];
            rng.fill(words);
            for (value, &word) in values.iter_mut().zip(words.iter()) {
                *value = uniform(word);
            }
        }
    };
    if n >= PARALLEL_FROM {
        values.par_chunks_mut(BLOCK).enumerate().for_each(fill);
    } else {
        values.chunks_mut(BLOCK).enumerate().for_each(fill);
    }
    values
}

/// One word to a value in `[-1, 1)` as rand 0.9's `UniformFloat<f32>` does it: the top 23 bits
/// as the mantissa of a number in `[1, 2)`, moved to `[0, 1)`, scaled by 2 and shifted by -1
/// (the multiply and the add stay two roundings, as in rand).
pub(crate) fn uniform(word: u32) -> f32 {
    let unit = f32::from_bits((word >> 9) | 0x3F80_0000) - 1.0;
    unit * 2.0 + -1.0
}

/// Summary statistics of an output tensor, so that large results can be compared without
/// shipping them. Computed in the widest vectors the CPU has (`crate::cpu::simd`), with the same
/// result at every width.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sum of all values (accumulated in f64).
    pub checksum: f64,
    /// Euclidean norm (Frobenius for matrices).
    pub l2_norm: f64,
    /// Smallest value, NaNs passed over (0 for an empty tensor).
    pub min: f32,
    /// Largest value, NaNs passed over (0 for an empty tensor).
    pub max: f32,
    /// `checksum` over the number of values (0 for an empty tensor).
    pub mean: f64,
    /// Values that are not finite (an overflow to ±inf, a NaN): JSON has no such numbers, so
    /// they and the sums they spoil read `null`; this says how many there were. Left out when
    /// there are none.
    #[serde(skip_serializing_if = "is_zero")]
    pub non_finite: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Summary {
    /// The summary of `values`: accumulated in f64 over blocks of `BLOCK` values (on every
    /// core for large outputs), each block in eight interleaved lanes, combined in order, so the
    /// same values give the same summary on any machine. NaNs make the sums NaN and are passed
    /// over by `min` and `max`.
    pub fn of(values: &[f32]) -> Self {
        Self::of_in(Width::widest(), values)
    }

    fn of_in(width: Width, values: &[f32]) -> Self {
        let partial = |block| Partial::of(width, block);
        let partials: Vec<Partial> = if values.len() >= PARALLEL_FROM {
            values.par_chunks(BLOCK).map(partial).collect()
        } else {
            values.chunks(BLOCK).map(partial).collect()
        };
        let total = partials
            .into_iter()
            .reduce(Partial::then)
            .unwrap_or(Partial::EMPTY);
        // The sums are finite unless a value is not (f32 squares stay far inside f64): only
        // then is there something to count.
        let non_finite = || values.iter().filter(|v| !v.is_finite()).count() as u64;
        Self::of_total(total, values.len(), non_finite)
    }

    /// The summary of `n` values from their lanes as the device makes them ([`LANES`] per
    /// block of [`BLOCK`], blocks in order; see `crate::reduce`) and the values after the last
    /// block's whole chunks of lanes (`tail`, fewer than [`LANES`]): bit for bit what
    /// [`Summary::of`] gives for the values themselves.
    pub(crate) fn of_lanes(n: usize, lanes: &[Lane], tail: &[f32]) -> Self {
        let blocks = lanes.len() / LANES;
        let total = lanes
            .chunks(LANES)
            .enumerate()
            .map(|(i, block)| {
                let whole = block
                    .iter()
                    .map(Lane::partial)
                    .fold(Partial::EMPTY, Partial::then);
                let tail = if i + 1 == blocks { tail } else { &[] };
                tail.iter()
                    .map(|&v| Partial::one(v))
                    .fold(whole, Partial::then)
            })
            .reduce(Partial::then)
            .unwrap_or(Partial::EMPTY);
        let non_finite = || {
            let counted: u64 = lanes.iter().map(|l| l.non_finite).sum();
            counted + tail.iter().filter(|v| !v.is_finite()).count() as u64
        };
        Self::of_total(total, n, non_finite)
    }

    fn of_total(total: Partial, n: usize, non_finite: impl FnOnce() -> u64) -> Self {
        Summary {
            checksum: total.sum,
            l2_norm: total.sq.sqrt(),
            min: if n == 0 { 0.0 } else { total.min },
            max: if n == 0 { 0.0 } else { total.max },
            mean: total.sum / n.max(1) as f64,
            non_finite: if total.sum.is_finite() && total.sq.is_finite() {
                0
            } else {
                non_finite()
            },
        }
    }
}

/// One lane's share of a block's summary, as the device's summary kernel makes it
/// (`crate::reduce`): the sum and sum of squares of its values in f64, their smallest and
/// largest (NaNs passed over), and how many are not finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lane {
    pub sum: f64,
    pub sq: f64,
    pub min: f32,
    pub max: f32,
    pub non_finite: u64,
}

impl Lane {
    /// Bytes of one lane as the summary kernel writes it (its `KilnLane`).
    pub(crate) const BYTES: usize = 32;

    /// A lane from the summary kernel's 32 bytes (little-endian: sum and square as f64 at 0
    /// and 8, min and max as f32 at 16 and 20, the non-finite count as u64 at 24).
    pub(crate) fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let f64_at = |i: usize| f64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let f32_at = |i: usize| f32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Lane {
            sum: f64_at(0),
            sq: f64_at(8),
            min: f32_at(16),
            max: f32_at(20),
            non_finite: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        }
    }

    fn partial(&self) -> Partial {
        Partial {
            sum: self.sum,
            sq: self.sq,
            min: self.min,
            max: self.max,
        }
    }
}

/// Sums and extremes of a run of values.
#[derive(Debug, Clone, Copy)]
struct Partial {
    sum: f64,
    sq: f64,
    min: f32,
    max: f32,
}

impl Partial {
    const EMPTY: Partial = Partial {
        sum: 0.0,
        sq: 0.0,
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };

    /// The partial of a block, in vectors of `width` (the same at every width).
    fn of(width: Width, values: &[f32]) -> Self {
        match width {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512` holds a `Detected`, made only where the CPU has AVX-512F.
            #[allow(unsafe_code)]
            Width::Avx512(_) => unsafe { Self::of_avx512(values) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` holds a `Detected`, made only where the CPU has AVX2.
            #[allow(unsafe_code)]
            Width::Avx2(_) => unsafe { Self::of_avx2(values) },
            Width::Baseline => Self::of_lanes(values),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn of_avx512(values: &[f32]) -> Self {
        Self::of_lanes(values)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn of_avx2(values: &[f32]) -> Self {
        Self::of_lanes(values)
    }

    /// Eight independent lanes let the compiler keep the loop in vector registers (one f64
    /// chain would serialise on the adder's latency).
    #[inline(always)]
    fn of_lanes(values: &[f32]) -> Self {
        let mut sum = [0.0f64; LANES];
        let mut sq = [0.0f64; LANES];
        let mut min = [f32::INFINITY; LANES];
        let mut max = [f32::NEG_INFINITY; LANES];
        let chunks = values.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for lane in 0..LANES {
                let v = chunk[lane];
                let d = f64::from(v);
                sum[lane] += d;
                sq[lane] += d * d;
                // Written out rather than f32::min/max, whose choice between -0 and +0 differs
                // between CPUs: as the device's summary kernel compares (a NaN keeps the lane's).
                min[lane] = if v < min[lane] { v } else { min[lane] };
                max[lane] = if v > max[lane] { v } else { max[lane] };
            }
        }
        let mut total = (0..LANES)
            .map(|lane| Partial {
                sum: sum[lane],
                sq: sq[lane],
                min: min[lane],
                max: max[lane],
            })
            .fold(Partial::EMPTY, Partial::then);
        for &v in tail {
            total = total.then(Partial::one(v));
        }
        total
    }

    /// The partial of one value.
    fn one(v: f32) -> Self {
        let d = f64::from(v);
        Partial {
            sum: d,
            sq: d * d,
            min: v,
            max: v,
        }
    }

    fn then(self, next: Partial) -> Partial {
        Partial {
            sum: self.sum + next.sum,
            sq: self.sq + next.sq,
            // As in the lanes: a NaN (a lone value's) is passed over, and ±0 ties keep `self`.
            min: if next.min < self.min {
                next.min
            } else {
                self.min
            },
            max: if next.max > self.max {
                next.max
            } else {
                self.max
            },
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

    /// The definition `seeded_values` must keep: one thread drawing `random_range` in turn.
    fn drawn_in_turn(seed: u64, stream: u64, n: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    #[test]
    fn seeded_values_are_rands_values_drawn_in_turn_whatever_the_blocks() {
        // Short, a few blocks on this thread, and enough for blocks on rayon's pool, each
        // ending mid-block.
        for (seed, stream, n) in [
            (0, 0, 1),
            (7, 1, 1000),
            (42, 0, 3 * BLOCK + 17),
            (u64::MAX, 3, PARALLEL_FROM + BLOCK / 2 + 5),
        ] {
            let values = seeded_values(seed, stream, n);
            let expected = drawn_in_turn(seed, stream, n);
            let first_difference = values
                .iter()
                .zip(&expected)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(first_difference, None, "seed {seed} stream {stream} n {n}");
            assert_eq!(values.len(), n);
        }
    }

    #[test]
    fn summaries_do_not_depend_on_the_number_of_cores() {
        let values = seeded_values(3, 0, PARALLEL_FROM * 2 + 11);
        let on_one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| Summary::of(&values));
        let on_four = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap()
            .install(|| Summary::of(&values));
        assert_eq!(on_one, on_four);
        // The same at every vector width this CPU has.
        for width in Width::all() {
            assert_eq!(Summary::of_in(width, &values), on_one, "{width:?}");
        }
        // And they are the sums: against one f64 chain, within the summation error bound of
        // n·ε·Σ|v| (for both orders).
        let n = values.len() as f64;
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let sum_abs: f64 = values.iter().map(|&v| f64::from(v).abs()).sum();
        let sq: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((on_one.checksum - sum).abs() <= 2.0 * n * f64::EPSILON * sum_abs);
        assert!((on_one.l2_norm.powi(2) - sq).abs() <= 2.0 * n * f64::EPSILON * sq);
        let min = values.iter().copied().fold(f32::INFINITY, f32::min);
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!((on_one.min, on_one.max), (min, max));
        assert_eq!(on_one.mean, on_one.checksum / values.len() as f64);
    }

    #[test]
    fn summary_passes_over_nans_in_extremes_and_reports_them_in_sums() {
        let mut values = vec![1.0f32; 20];
        values[3] = f32::NAN;
        values[11] = -2.0;
        let s = Summary::of(&values);
        assert!(s.checksum.is_nan() && s.l2_norm.is_nan());
        assert_eq!((s.min, s.max), (-2.0, 1.0));
        assert_eq!(s.non_finite, 1);
        values[5] = f32::INFINITY;
        let s = Summary::of(&values);
        assert_eq!(s.non_finite, 2);
        let json = serde_json::to_value(&s).unwrap();
        assert!(
            json["checksum"].is_null() && json["non_finite"] == 2,
            "{json}"
        );
        let fine = serde_json::to_value(Summary::of(&[1.0, 2.0])).unwrap();
        assert!(
            fine.get("non_finite").is_none(),
            "left out when none: {fine}"
        );
        let empty = Summary::of(&[]);
        assert_eq!((empty.checksum, empty.min, empty.max), (0.0, 0.0, 0.0));
    }

    #[test]
    fn summary_of_known_values() {
        let s = Summary::of(&[3.0, -4.0]);
        assert_eq!(s.checksum, -1.0);
        assert_eq!(s.l2_norm, 5.0);
        assert_eq!((s.min, s.max), (-4.0, 3.0));
    }
}
