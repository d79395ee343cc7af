//! `conv2d`'s filters on the CPU: a direct depthwise convolution, each output map on its own
//! rows, on every core.
//!
//! burn-ndarray's SIMD convolution needs a multiple of the vector width of output channels per
//! group, so a depthwise filter (one or two per group) takes its generic loop, at about a tenth
//! of this one (see `kiln bench kernels`' `conv2d_dw5x5_*` rows, and the README's figures).
//!
//! Each output row is accumulated tap by tap — for kernel row `i`, for kernel column `j`,
//! `out[x] += k[i][j] · in[y + i − r][x + j − r]` over the columns where the input exists —
//! which is the order Burn's direct convolution accumulates in, so the two agree to the bit
//! (a test holds them to it). Each tap is a contiguous multiply-add over a row, which the
//! compiler vectorises; the row stays in the L1 cache across the taps.

use rayon::prelude::*;

/// The engine's name in results, heartbeats and benchmark rows.
pub(crate) const ENGINE: &str = "direct";

/// Output pixels per task on rayon's pool (whole rows of one map).
const PIXELS_PER_TASK: usize = 1 << 15;

/// Below this many output pixels the work stays on the calling thread.
const PARALLEL_FROM: usize = 1 << 17;

/// The planes of one job and its kernels: `planes` images of `height`×`width` pixels, each
/// filtered by every kernel (square, odd `side`, row-major) with zero "same" padding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Depthwise<'a> {
    pub planes: usize,
    pub height: usize,
    pub width: usize,
    pub side: usize,
    pub kernels: &'a [Vec<f32>],
}

impl Depthwise<'_> {
    /// The maps, laid out [plane][kernel][pixel] (as `conv2d`'s `magnitude` takes them).
    pub(crate) fn run(&self, pixels: &[f32]) -> Vec<f32> {
        let plane = self.height * self.width;
        debug_assert_eq!(pixels.len(), self.planes * plane);
        let passes = self.kernels.len();
        let mut maps = vec![0.0f32; self.planes * passes * plane];
        if maps.is_empty() {
            return maps;
        }
        // Tasks of whole rows of one map: map `index` filters plane `index / passes` with
        // kernel `index % passes`.
        let task = (PIXELS_PER_TASK / self.width).max(1) * self.width;
        let fill = |(index, block, rows): (usize, usize, &mut [f32])| {
            let input = &pixels[(index / passes) * plane..][..plane];
            let first_row = block * task / self.width;
            self.rows(input, &self.kernels[index % passes], first_row, rows);
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
        maps
    }

    /// Output rows `first..` of one map (`out` holds whole rows, zeroed) from its input plane.
    fn rows(&self, input: &[f32], kernel: &[f32], first: usize, out: &mut [f32]) {
        let (h, w, k) = (self.height, self.width, self.side);
        let r = k / 2;
        for (dy, row) in out.chunks_exact_mut(w).enumerate() {
            let y = first + dy;
            for i in 0..k {
                // Input row y + i − r, when it exists.
                let Some(iy) = (y + i).checked_sub(r).filter(|&iy| iy < h) else {
                    continue;
                };
                let source = &input[iy * w..][..w];
                for j in 0..k {
                    let weight = kernel[i * k + j];
                    // Columns x with 0 ≤ x + j − r < w.
                    let start = r.saturating_sub(j);
                    let end = (w + r).saturating_sub(j).min(w);
                    if start >= end {
                        continue;
                    }
                    let from = start + j - r;
                    let taps = &source[from..from + (end - start)];
                    for (o, &v) in row[start..end].iter_mut().zip(taps) {
                        *o += v * weight;
                    }
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
        // image, a single row and column, Sobel's two passes, and sizes on rayon's pool whose
        // maps split into several row blocks, the last one short.
        for (planes, height, width, side, passes) in [
            (1, 1, 1, 1, 1),
            (1, 1, 1, 5, 1),
            (2, 3, 4, 3, 2),
            (3, 7, 5, 5, 1),
            (1, 2, 40, 31, 1),
            (2, 33, 1, 3, 1),
            (1, 1, 29, 7, 2),
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
            let direct = d.run(&pixels);
            let expected = burn(&d, &pixels);
            assert_eq!(direct.len(), expected.len());
            let first_difference = direct
                .iter()
                .zip(&expected)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(
                first_difference.map(|i| (i, direct[i], expected[i])),
                None,
                "{planes}x{height}x{width}, {side}x{side}, {passes} kernel(s)"
            );
        }
    }
}
