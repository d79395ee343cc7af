//! Seeded inputs made on a CUDA device: the generator kernel's source ([`KERNEL_SOURCE`], compiled
//! at run time by [`crate::vendor::nvrtc`]) and its mirror in plain Rust, which the tests hold to
//! [`crate::seeded_values`] and to [`crate::dtype`]'s conversions bit for bit.
//!
//! `seeded_values(seed, stream, n)` is value `i` = `uniform(word i)` of rand_chacha's
//! `ChaCha8Rng::seed_from_u64(seed)` on stream `stream`. ChaCha makes its words in blocks of 16
//! from a state of 16 words, each block on its own:
//!
//! | words | contents |
//! |---|---|
//! | 0–3 | the constant `"expand 32-byte k"` |
//! | 4–11 | the key: [`key_words`]`(seed)`, rand_core's `seed_from_u64` expansion |
//! | 12–13 | the block counter, low word first: word `i` is in block `i / 16` |
//! | 14–15 | the stream, low word first |
//!
//! and a block's output is its state after 8 rounds (4 double rounds) plus the state. So one GPU
//! thread makes one block and writes its 16 values, and the device makes the same values as the
//! host (the GPU's integer arithmetic is the same, and `uniform` is exact, see
//! [`crate::data`]). For bf16 and f16 jobs the kernel writes the bits of the 16-bit value
//! rounded to nearest, ties to even, as the `half` crate does on the host (written out in the
//! kernel, not taken from `cuda_fp16.h`, whose conversions NVRTC would need the toolkit's
//! headers for).
//!
//! The tests (no GPU needed) hold a Rust mirror of the kernel (`mirror.rs`) to rand_chacha,
//! `seeded_values` and the `half` crate, for every value the generator can make, and run the
//! kernel's own source, compiled for the CPU with a few lines standing in for CUDA's built-ins
//! (`host.cpp`; needs a C++ compiler), against the same values.

/// The generator kernel, CUDA C: `kiln_seeded_f32`, `kiln_seeded_bf16` and `kiln_seeded_f16`
/// write the first `n` seeded values into a device buffer, one ChaCha8 block per thread; the
/// `kiln_seeded_unit_*` entry points write them mapped to [0, 1), `(v + 1) / 2` in f32 before
/// any rounding to 16 bits (conv2d's generated images).
pub(crate) const KERNEL_SOURCE: &str = include_str!("kernel.cu");

/// The names of the kernel's entry points, for f32, bf16 and f16 output.
pub(crate) const ENTRY_F32: &str = "kiln_seeded_f32";
pub(crate) const ENTRY_BF16: &str = "kiln_seeded_bf16";
pub(crate) const ENTRY_F16: &str = "kiln_seeded_f16";

/// The entry points writing the values mapped to [0, 1), for f32, bf16 and f16 output.
pub(crate) const ENTRY_UNIT_F32: &str = "kiln_seeded_unit_f32";
pub(crate) const ENTRY_UNIT_BF16: &str = "kiln_seeded_unit_bf16";
pub(crate) const ENTRY_UNIT_F16: &str = "kiln_seeded_unit_f16";

/// The seeded values as made on the host, mapped to [0, 1) as conv2d's generated images are:
/// `(v + 1) / 2` in f32.
pub(crate) fn unit(v: f32) -> f32 {
    (v + 1.0) / 2.0
}

/// A conv2d job's generated image of `len` values made on the host: `seeded_values(seed, 0,
/// len)` mapped to [0, 1) by [`unit`], as the `unit` entry points make it on the device.
pub(crate) fn image(seed: u64, len: usize) -> Vec<f32> {
    crate::seeded_values(seed, 0, len)
        .into_iter()
        .map(unit)
        .collect()
}

/// Values one GPU thread writes: one ChaCha block.
pub(crate) const VALUES_PER_THREAD: usize = 16;

/// The eight key words of `ChaCha8Rng::seed_from_u64(seed)`: rand_core 0.9's default
/// `seed_from_u64` fills the 32-byte seed with eight outputs of a PCG32 (each written
/// little-endian), and rand_chacha reads the key back as little-endian words, so word `j` is the
/// PCG32's output `j`.
pub(crate) fn key_words(seed: u64) -> [u32; 8] {
    const MUL: u64 = 6_364_136_223_846_793_005;
    const INC: u64 = 11_634_580_027_462_260_723;
    let mut state = seed;
    std::array::from_fn(|_| {
        state = state.wrapping_mul(MUL).wrapping_add(INC);
        let xorshifted = (((state >> 18) ^ state) >> 27) as u32;
        xorshifted.rotate_right((state >> 59) as u32)
    })
}

#[cfg(test)]
mod mirror;
#[cfg(test)]
mod tests;
