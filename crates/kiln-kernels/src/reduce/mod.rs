//! Output summaries made on a CUDA device: the summary kernel's source ([`KERNEL_SOURCE`],
//! compiled at run time by [`crate::vendor::nvrtc`]), whose per-lane partial sums the host folds
//! into a [`crate::Summary`] with `Summary::of_lanes`.
//!
//! A job whose output only comes back as its summary (generated inputs, no `output` object)
//! does not need the output on the host: a 100M-element vector add copied 400 MB back over
//! PCIe to sum it there (42 ms of its 43 ms on an H200). The kernel computes exactly what
//! `Summary::of` computes on the host, in the same order with the same roundings (blocks of
//! 65,536 values, eight f64 lanes each, no FMA), and only the lanes (32 bytes each, one per
//! eight thousand values, in one copy) and the last block's few leftover values come back, so
//! the summary is the host's, bit for bit.
//!
//! The tests (no GPU needed) run the kernel's own source compiled for the CPU with a few lines
//! standing in for CUDA's built-ins (`host.cpp`; needs a C++ compiler) and hold the summary the
//! host folds from its lanes to `Summary::of`, field by field, bit for bit.

/// The summary kernel, CUDA C: `kiln_summary_f32` writes one lane partial per thread.
pub(crate) const KERNEL_SOURCE: &str = include_str!("kernel.cu");

/// The kernel's entry point.
pub(crate) const ENTRY_F32: &str = "kiln_summary_f32";

/// Outputs of fewer values are read back and summarised on the host, where the copy costs
/// less than the kernel's launch, allocations and read-backs. On an H200 a 10^6-value output
/// took 0.29–0.32 ms less with the kernel than copied back; the threshold, 1 MiB of f32, is
/// estimated from that (the copy's cost grows with the size, the kernel's hardly), not measured.
pub(crate) const DEVICE_FROM: usize = 1 << 18;

/// Values per block and lanes per block: the kernel's `KILN_SUMMARY_BLOCK` and
/// `KILN_SUMMARY_LANES`.
pub(crate) use crate::data::{BLOCK, LANES};

/// The lanes (threads) the kernel has for `n` values.
pub(crate) fn lanes(n: usize) -> usize {
    n.div_ceil(BLOCK) * LANES
}

/// Where the values after the last whole chunk of lanes start (the host adds them).
pub(crate) fn tail_start(n: usize) -> usize {
    let last = n.saturating_sub(1) / BLOCK * BLOCK;
    last + (n - last) / LANES * LANES
}

#[cfg(test)]
mod tests;
