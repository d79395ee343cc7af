//! The kernel in plain Rust, function for function (`kiln_chacha8_block`, `kiln_uniform`,
//! `kiln_bf16_bits`, `kiln_f16_bits`, a thread's 16 values), for the tests in `tests.rs`, which
//! hold it to rand_chacha, `seeded_values` and the `half` crate.

use super::{VALUES_PER_THREAD, key_words};
use crate::data::uniform;

/// ChaCha's constant, "expand 32-byte k" as four little-endian words.
const CONSTANT: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// ChaCha's quarter round on words `a`, `b`, `c`, `d` of `x`.
fn quarter_round(x: &mut [u32; 16], [a, b, c, d]: [usize; 4]) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
}

/// Block `block` of ChaCha8 with `key` on `stream`: 16 words, as the kernel's
/// `kiln_chacha8_block` makes them.
pub(super) fn chacha8_block(key: &[u32; 8], stream: u64, block: u64) -> [u32; 16] {
    let mut input = [0u32; 16];
    input[..4].copy_from_slice(&CONSTANT);
    input[4..12].copy_from_slice(key);
    input[12] = block as u32;
    input[13] = (block >> 32) as u32;
    input[14] = stream as u32;
    input[15] = (stream >> 32) as u32;
    let mut x = input;
    for _ in 0..4 {
        // A column round, then a diagonal round.
        quarter_round(&mut x, [0, 4, 8, 12]);
        quarter_round(&mut x, [1, 5, 9, 13]);
        quarter_round(&mut x, [2, 6, 10, 14]);
        quarter_round(&mut x, [3, 7, 11, 15]);
        quarter_round(&mut x, [0, 5, 10, 15]);
        quarter_round(&mut x, [1, 6, 11, 12]);
        quarter_round(&mut x, [2, 7, 8, 13]);
        quarter_round(&mut x, [3, 4, 9, 14]);
    }
    std::array::from_fn(|i| x[i].wrapping_add(input[i]))
}

/// Values `first..first + n` of `seeded_values(seed, stream, ..)` as the kernel makes them,
/// thread by thread (`first` a multiple of 16, so the first thread starts a block).
pub(super) fn mirror_values(seed: u64, stream: u64, first: usize, n: usize) -> Vec<f32> {
    assert_eq!(first % VALUES_PER_THREAD, 0, "a thread starts a block");
    let key = key_words(seed);
    let mut values = Vec::with_capacity(n);
    let first_block = (first / VALUES_PER_THREAD) as u64;
    for block in first_block.. {
        if values.len() == n {
            break;
        }
        let words = chacha8_block(&key, stream, block);
        let take = (n - values.len()).min(VALUES_PER_THREAD);
        values.extend(words[..take].iter().map(|&w| uniform(w)));
    }
    values
}

/// f32 to bf16 bits, rounded to nearest, ties to even (a NaN stays a NaN, quiet), as
/// `half::bf16::from_f32` and the kernel's `kiln_bf16_bits`.
pub(super) fn to_bf16(value: f32) -> u16 {
    let x = value.to_bits();
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((x >> 16) | 0x0040) as u16;
    }
    // Round up when the dropped half is over one half, or exactly one half and the kept part
    // is odd: the round bit is set and a bit below it or the lowest kept bit is too.
    let round_bit = 0x0000_8000;
    let up = x & round_bit != 0 && x & (3 * round_bit - 1) != 0;
    ((x >> 16) + u32::from(up)) as u16
}

/// f32 to IEEE half bits, rounded to nearest, ties to even; below 2^-14 to subnormals, from
/// 65520 on to infinity (a NaN stays a NaN, quiet), as `half::f16::from_f32` and the kernel's
/// `kiln_f16_bits`.
pub(super) fn to_f16(value: f32) -> u16 {
    let x = value.to_bits();
    let sign = (x & 0x8000_0000) >> 16;
    let exp = x & 0x7F80_0000;
    let man = x & 0x007F_FFFF;
    if exp == 0x7F80_0000 {
        let nan = if man == 0 { 0 } else { 0x0200 };
        return (sign | 0x7C00 | nan | (man >> 13)) as u16;
    }
    let half_exp = (exp >> 23) as i32 - 127 + 15;
    if half_exp >= 0x1F {
        return (sign | 0x7C00) as u16;
    }
    if half_exp <= 0 {
        // A subnormal (or zero): the mantissa with its leading 1, shifted right by 14 - half_exp.
        if 14 - half_exp > 24 {
            return sign as u16;
        }
        let man = man | 0x0080_0000;
        let round_bit = 1u32 << (13 - half_exp);
        let up = man & round_bit != 0 && man & (3 * round_bit - 1) != 0;
        return (sign | ((man >> (14 - half_exp)) + u32::from(up))) as u16;
    }
    let round_bit = 0x0000_1000;
    let up = man & round_bit != 0 && man & (3 * round_bit - 1) != 0;
    // A carry out of the mantissa moves into the exponent (and up to infinity): still right.
    (sign | ((half_exp as u32) << 10) | (man >> 13)) as u16 + u16::from(up)
}
