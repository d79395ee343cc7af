use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::mirror::{chacha8_block, mirror_values, to_bf16, to_f16};
use super::*;
use crate::data::uniform;
use crate::dtype::{Dtype, to_half};
use crate::seeded_values;

/// Index of the first value whose bits differ, if any.
fn first_difference(a: &[f32], b: &[f32]) -> Option<usize> {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
}

#[test]
fn key_words_are_rand_chachas_key_for_the_seed() {
    for seed in [0, 1, 7, 42, 0xDEAD_BEEF, u64::MAX] {
        let key = ChaCha8Rng::seed_from_u64(seed).get_seed();
        let expected: Vec<u32> = key
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(key_words(seed).to_vec(), expected, "seed {seed}");
    }
}

#[test]
fn blocks_are_rand_chachas_words_at_any_block_and_stream() {
    for (seed, stream, block) in [
        (0, 0, 0),
        (7, 1, 1),
        (42, 3, 4095),
        (42, 3, 4096),
        (9, u64::MAX, (1 << 32) + 5),
        (u64::MAX, 1 << 40, u64::MAX),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        rng.set_word_pos(u128::from(block) * 16);
        let expected: [u32; 16] = std::array::from_fn(|_| rng.next_u32());
        let got = chacha8_block(&key_words(seed), stream, block);
        assert_eq!(got, expected, "seed {seed} stream {stream} block {block}");
    }
}

#[test]
fn the_mirror_makes_seeded_values_bit_for_bit() {
    // Short, not a multiple of 16, one 65,536-value block of the host generator and parts of
    // more (the host starts each block at its own word position), on several streams.
    for (seed, stream, n) in [
        (0, 0, 1),
        (1, 0, 15),
        (1, 1, 16),
        (7, 1, 17),
        (42, 0, 1000),
        (3, 2, 1 << 16),
        (5, 1, (1 << 16) + 9),
        (u64::MAX, 7, 3 * (1 << 16) + 4099),
    ] {
        let mirror = mirror_values(seed, stream, 0, n);
        let host = seeded_values(seed, stream, n);
        assert_eq!(
            first_difference(&mirror, &host),
            None,
            "seed {seed} stream {stream} n {n}"
        );
    }
}

#[test]
fn the_mirror_starts_at_any_block_as_its_threads_do() {
    // Threads far beyond the first 2^16 words make the values there, whatever came before.
    let n = 5 * (1 << 16) + 23;
    let host = seeded_values(11, 1, n);
    for first in [16, 1 << 16, (1 << 16) + 48, 4 * (1 << 16) - 16, n - 23 - 16] {
        let mirror = mirror_values(11, 1, first, n - first);
        assert_eq!(
            first_difference(&mirror, &host[first..]),
            None,
            "from {first}"
        );
    }
}

/// Every value the generator can make: one per 23-bit mantissa, from -1 up to 1 - 2^-22.
fn every_generated_value() -> Vec<f32> {
    (0u32..1 << 23).map(|m| uniform(m << 9)).collect()
}

#[test]
fn every_generated_value_converts_to_bf16_and_f16_as_the_host_does() {
    let values = every_generated_value();
    assert_eq!(values[0], -1.0);
    assert_eq!(*values.last().unwrap(), 1.0 - 2f32.powi(-22));
    // The f16 subnormals (|x| < 2^-14) are in range: the smallest step is 2^-22.
    let subnormal = values.iter().filter(|v| v.abs() < 2f32.powi(-14)).count();
    assert_eq!(subnormal, 2 * (1 << 8) - 1);
    for (dtype, mirror) in [
        (Dtype::Bf16, to_bf16 as fn(f32) -> u16),
        (Dtype::F16, to_f16),
    ] {
        let host = to_half(&values, dtype);
        let wrong = values
            .iter()
            .zip(&host)
            .find(|&(&v, &h)| mirror(v) != h)
            .map(|(&v, &h)| (v, mirror(v), h));
        assert_eq!(wrong, None, "{} (value, mirror, host)", dtype.as_str());
    }
}

#[test]
fn conversions_match_the_host_over_all_of_f32() {
    // A sample of every f32 bit pattern (both signs, subnormals, infinities, NaNs) plus the
    // edges of rounding: halfway points, the largest finite f16, the f16 subnormal limits.
    let mut bits: Vec<u32> = (0..=u32::MAX).step_by(4093).collect();
    for edge in [
        0x0000_0000,
        0x0000_0001,
        0x3380_0000, // 2^-24, the smallest f16 subnormal
        0x3300_0000, // 2^-25, halfway to it: rounds to 0
        0x3300_0001,
        0x3880_0000, // 2^-14, the smallest normal f16
        0x387F_E000,
        0x387F_F000,
        0x477F_E000, // 65504, the largest f16
        0x477F_EFFF,
        0x477F_F000, // 65520: rounds to infinity
        0x7F7F_FFFF,
        0x7F80_0000,
        0x7F80_0001,
        0x7FC0_0000,
        0x3F80_8000, // bf16 halfway, even below
        0x3F81_8000, // bf16 halfway, odd below
    ] {
        bits.push(edge);
        bits.push(edge | 0x8000_0000);
    }
    let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
    for (dtype, mirror) in [
        (Dtype::Bf16, to_bf16 as fn(f32) -> u16),
        (Dtype::F16, to_f16),
    ] {
        let host = to_half(&values, dtype);
        for (&v, &h) in values.iter().zip(&host) {
            assert_eq!(mirror(v), h, "{} of {:#010x}", dtype.as_str(), v.to_bits());
        }
    }
}

/// The kernel's own source compiled for this CPU (`host.cpp`); its path.
fn host_build_of_the_kernel() -> std::path::PathBuf {
    crate::host_kernel::build("seeded", KERNEL_SOURCE, include_str!("host.cpp"))
}

/// The kernel's output for `n` values of `(seed, stream)` as `kind` (f32, bf16, f16), run on
/// the host build: raw little-endian bytes.
fn run_host_kernel(exe: &std::path::Path, kind: &str, seed: u64, stream: u64, n: usize) -> Vec<u8> {
    let key = key_words(seed).map(|w| w.to_string());
    let out = std::process::Command::new(exe)
        .args([kind, &n.to_string(), &stream.to_string()])
        .args(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{kind} n {n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_kernel_source_run_on_the_cpu_makes_the_hosts_values() {
    let exe = host_build_of_the_kernel();
    for (seed, stream, n) in [
        (0, 0, 1),
        (1, 0, 16),
        (7, 1, 17),
        (42, 0, 1000),
        (9, 1, (1 << 16) + 37),
        (u64::MAX, 3, 3 * (1 << 16) + 4099),
    ] {
        let signed = seeded_values(seed, stream, n);
        let unit: Vec<f32> = signed.iter().map(|&v| super::unit(v)).collect();
        for (prefix, host) in [("", signed), ("unit-", unit)] {
            let bytes = run_host_kernel(&exe, &format!("{prefix}f32"), seed, stream, n);
            let kernel: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(
                first_difference(&kernel, &host),
                None,
                "{prefix}f32 seed {seed} stream {stream} n {n}"
            );
            for dtype in [Dtype::Bf16, Dtype::F16] {
                let kind = format!("{prefix}{}", dtype.as_str());
                let bytes = run_host_kernel(&exe, &kind, seed, stream, n);
                let kernel: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let expected = to_half(&host, dtype);
                let wrong = kernel.iter().zip(&expected).position(|(a, b)| a != b);
                assert_eq!(kernel.len(), n);
                assert_eq!(wrong, None, "{kind} seed {seed} stream {stream} n {n}");
            }
        }
    }
    std::fs::remove_dir_all(exe.parent().unwrap()).unwrap();
}
