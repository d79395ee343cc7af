//! `conv2d`'s filters on the CPU: a direct depthwise convolution, each output map on its own
//! rows, on every core.
//!
//! burn-ndarray's SIMD convolution needs a multiple of the vector width of output channels per
//! group, so a depthwise filter (one or two per group) takes its generic loop, at about a tenth
//! of this one (see `kiln bench kernels`' `conv2d_dw5x5_*` rows, and docs/CPU.md's figures).
//!
//! Each output pixel adds its taps in the order Burn's direct convolution does — for kernel
//! row `i`, for kernel column `j`, `out[x] += k[i][j] · in[y + i − r][x + j − r]`, skipping
//! taps outside the image, starting from zero — so the two agree to the bit (a test holds them
//! to it). The interior of a row, where every tap exists, goes in strips of `STRIP` pixels
//! whose sums stay in registers across all k² taps; the edges go tap by tap over the row. The
//! loop is compiled for baseline x86-64, AVX2 and AVX-512, and runs in the widest the CPU has.

use rayon::prelude::*;

use crate::cpu::simd::Width;

/// The engine's name in results, heartbeats and benchmark rows.
pub const ENGINE: &str = "direct";

/// Output pixels per task on rayon's pool (whole rows of one map).
const PIXELS_PER_TASK: usize = 1 << 15;

/// Below this many output pixels the work stays on the calling thread.
const PARALLEL_FROM: usize = 1 << 17;

/// Pixels summed in registers at once: four AVX-512 or eight AVX2 vectors, enough independent
/// sums to hide the adds' latency.
const STRIP: usize = 64;

/// The strips after the wide ones, so that at most 15 interior pixels a row go tap by tap.
const NARROW_STRIP: usize = 16;

/// The planes of one job and its kernels: `planes` images of `height`×`width` pixels, each
/// filtered by every kernel (square, odd `side`, row-major) with zero "same" padding.
#[derive(Debug, Clone, Copy)]
pub struct Depthwise<'a> {
    /// Images (a batch's channels, one after another).
    pub planes: usize,
    /// Rows of each image.
    pub height: usize,
    /// Columns of each image.
    pub width: usize,
    /// Side of every kernel: odd, square.
    pub side: usize,
    /// The kernels, `side`² values each, row-major; every plane is filtered by each.
    pub kernels: &'a [Vec<f32>],
}

impl Depthwise<'_> {
    /// The maps of `pixels` (`planes`·`height`·`width` values, plane by plane, row-major), laid
    /// out `[plane][kernel][pixel]` (as `conv2d`'s `magnitude` takes them), in the widest vectors
    /// the CPU has and on every core for large inputs.
    pub fn run(&self, pixels: &[f32]) -> Vec<f32> {
        self.run_in(Width::widest(), pixels)
    }

    /// [`Depthwise::run`] into `maps` (`planes`·kernels·`height`·`width` values, zeroed):
    /// a job's pieces go straight into its output, not through a piece of their own each
    /// (which held a third copy of a one-plane image).
    pub fn run_into(&self, pixels: &[f32], maps: &mut [f32]) {
        self.fill(Width::widest(), pixels, maps);
    }

    fn run_in(&self, width: Width, pixels: &[f32]) -> Vec<f32> {
        let mut maps = vec![0.0f32; self.planes * self.kernels.len() * self.height * self.width];
        self.fill(width, pixels, &mut maps);
        maps
    }

    fn fill(&self, width: Width, pixels: &[f32], maps: &mut [f32]) {
        let plane = self.height * self.width;
        debug_assert_eq!(pixels.len(), self.planes * plane);
        let passes = self.kernels.len();
        debug_assert_eq!(maps.len(), self.planes * passes * plane);
        if maps.is_empty() {
            return;
        }
        // Tasks of whole rows of one map: map `index` filters plane `index / passes` with
        // kernel `index % passes`.
        let task = (PIXELS_PER_TASK / self.width).max(1) * self.width;
        let fill = |(index, block, rows): (usize, usize, &mut [f32])| {
            let input = &pixels[(index / passes) * plane..][..plane];
            let first_row = block * task / self.width;
            self.rows(width, input, &self.kernels[index % passes], first_row, rows);
        };
        if maps.len() >= PARALLEL_FROM {
            maps.par_chunks_mut(plane)
                .enumerate()
                .flat_map(|(index, map)| {
                    let blocks = map.par_chunks_mut(task).enumerate();
                    blocks.map(move |(block, rows)| (index, block, rows))
                })
                .for_each(fill);
        } else {
            maps.chunks_mut(plane)
                .enumerate()
                .flat_map(|(index, map)| {
                    let blocks = map.chunks_mut(task).enumerate();
                    blocks.map(move |(block, rows)| (index, block, rows))
                })
                .for_each(fill);
        }
    }

    /// Output rows `first..` of one map (`out` holds whole rows, zeroed) from its input plane,
    /// in vectors of `width` (the same operations in the same order at every width, so the
    /// maps do not depend on the machine).
    fn rows(&self, width: Width, input: &[f32], kernel: &[f32], first: usize, out: &mut [f32]) {
        match width {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512` holds a `Detected`, made only where the CPU has AVX-512F.
            #[allow(unsafe_code)]
            Width::Avx512(_) => unsafe { self.rows_avx512(input, kernel, first, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` holds a `Detected`, made only where the CPU has AVX2.
            #[allow(unsafe_code)]
            Width::Avx2(_) => unsafe { self.rows_avx2(input, kernel, first, out) },
            Width::Baseline => self.rows_portable::<STRIP>(input, kernel, first, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn rows_avx512(&self, input: &[f32], kernel: &[f32], first: usize, out: &mut [f32]) {
        self.rows_portable::<STRIP>(input, kernel, first, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn rows_avx2(&self, input: &[f32], kernel: &[f32], first: usize, out: &mut [f32]) {
        self.rows_portable::<STRIP>(input, kernel, first, out)
    }

    /// The interior of each row — the columns every tap of a kernel row reaches — goes in
    /// strips of `L` pixels whose sums stay in registers across all k² taps, then in strips of
    /// [`NARROW_STRIP`]; the `r` columns at each edge and what is left of the interior go tap
    /// by tap over the row. All of them add each pixel's taps in the same order, from zero.
    #[inline(always)]
    fn rows_portable<const L: usize>(
        &self,
        input: &[f32],
        kernel: &[f32],
        first: usize,
        out: &mut [f32],
    ) {
        let (h, w, k) = (self.height, self.width, self.side);
        let r = k / 2;
        // Interior columns [r, w − r).
        let interior_end = r + w.saturating_sub(2 * r);
        for (dy, row) in out.chunks_exact_mut(w).enumerate() {
            let y = first + dy;
            // The kernel rows whose input row y + i − r exists.
            let valid = r.saturating_sub(y)..(h + r - y).min(k);
            let rows = Rows {
                input,
                kernel,
                width: w,
                side: k,
                first_input_row: y,
                valid,
            };
            let wide_end = rows.strips::<L>(row, r, interior_end);
            let strips_end = rows.strips::<NARROW_STRIP>(row, wide_end, interior_end);
            rows.taps(row, 0, r.min(w));
            rows.taps(row, strips_end.max(r.min(w)), w);
        }
    }
}

/// One output row's inputs: the kernel rows `valid` whose input rows exist, input row
/// `first_input_row + i − r` for kernel row `i`.
struct Rows<'a> {
    input: &'a [f32],
    kernel: &'a [f32],
    width: usize,
    side: usize,
    first_input_row: usize,
    valid: std::ops::Range<usize>,
}

impl Rows<'_> {
    fn source(&self, i: usize) -> &[f32] {
        let (w, r) = (self.width, self.side / 2);
        &self.input[(self.first_input_row + i - r) * w..][..w]
    }

    /// Whole strips of `L` interior pixels from `from` while they end by `to` (where every tap
    /// of every strip pixel exists); returns where they stopped.
    #[inline(always)]
    fn strips<const L: usize>(&self, row: &mut [f32], from: usize, to: usize) -> usize {
        let (k, r) = (self.side, self.side / 2);
        let mut x0 = from;
        while x0 + L <= to {
            let mut sums = [0.0f32; L];
            for i in self.valid.clone() {
                let source = self.source(i);
                for (j, &weight) in self.kernel[i * k..][..k].iter().enumerate() {
                    let taps = &source[x0 + j - r..][..L];
                    for (sum, &v) in sums.iter_mut().zip(taps) {
                        *sum += v * weight;
                    }
                }
            }
            row[x0..x0 + L].copy_from_slice(&sums);
            x0 += L;
        }
        x0
    }

    /// Columns `[from, to)` tap by tap over the row (`row` zeroed there), skipping the taps
    /// that fall outside the image.
    #[inline(always)]
    fn taps(&self, row: &mut [f32], from: usize, to: usize) {
        let (w, k, r) = (self.width, self.side, self.side / 2);
        if from >= to {
            return;
        }
        for i in self.valid.clone() {
            let source = self.source(i);
            for j in 0..k {
                let weight = self.kernel[i * k + j];
                // Columns x in [from, to) with 0 ≤ x + j − r < w.
                let start = from.max(r.saturating_sub(j));
                let end = to.min((w + r).saturating_sub(j));
                if start >= end {
                    continue;
                }
                let taps = &source[start + j - r..end + j - r];
                for (o, &v) in row[start..end].iter_mut().zip(taps) {
                    *o += v * weight;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData, module::conv2d, ops::ConvOptions};

    use super::*;
    use crate::{CpuBackend, seeded_values};

    /// Burn's convolution of the same planes, depthwise (a group per plane, a map per kernel).
    fn burn(d: &Depthwise<'_>, pixels: &[f32]) -> Vec<f32> {
        let (passes, k) = (d.kernels.len(), d.side);
        let weights: Vec<f32> = (0..d.planes).flat_map(|_| d.kernels.concat()).collect();
        let device = Default::default();
        let x = Tensor::<CpuBackend, 4>::from_data(
            TensorData::new(pixels.to_vec(), [1, d.planes, d.height, d.width]),
            &device,
        );
        let w = Tensor::<CpuBackend, 4>::from_data(
            TensorData::new(weights, [d.planes * passes, 1, k, k]),
            &device,
        );
        let options = ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], d.planes);
        let maps = conv2d(x, w, None, options);
        let n = maps.dims().iter().product::<usize>();
        maps.reshape([n]).into_data().into_vec::<f32>().unwrap()
    }

    #[test]
    fn agrees_with_burns_convolution_to_the_bit() {
        // (planes, height, width, side, kernels): a pixel, kernels wider and taller than the
        // image, a single row and column, Sobel's two passes, rows of exactly one strip
        // between the edges and of one pixel more, and sizes on rayon's pool whose maps split
        // into several row blocks, the last one short. Every vector width this CPU has.
        for (planes, height, width, side, passes) in [
            (1, 1, 1, 1, 1),
            (1, 1, 1, 5, 1),
            (2, 3, 4, 3, 2),
            (3, 7, 5, 5, 1),
            (1, 2, 40, 31, 1),
            (2, 33, 1, 3, 1),
            (1, 1, 29, 7, 2),
            (1, 9, STRIP + 4, 5, 1),
            (2, 6, STRIP + 3, 3, 2),
            (1, 4, 2 * STRIP + 7, 7, 1),
            (2, 5, STRIP + NARROW_STRIP + 7, 5, 2),
            (1, 3, NARROW_STRIP + 2, 3, 1),
            (2, 300, 257, 3, 2),
            (3, 129, 1031, 5, 1),
        ] {
            let pixels = seeded_values(5, 0, planes * height * width);
            let kernels: Vec<Vec<f32>> = (0..passes)
                .map(|p| seeded_values(5, 1 + p as u64, side * side))
                .collect();
            let d = Depthwise {
                planes,
                height,
                width,
                side,
                kernels: &kernels,
            };
            let expected = burn(&d, &pixels);
            for vectors in Width::all() {
                let direct = d.run_in(vectors, &pixels);
                assert_eq!(direct.len(), expected.len());
                let first_difference = direct
                    .iter()
                    .zip(&expected)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert_eq!(
                    first_difference.map(|i| (i, direct[i], expected[i])),
                    None,
                    "{vectors:?}: {planes}x{height}x{width}, {side}x{side}, {passes} kernel(s)"
                );
            }
        }
    }
}
