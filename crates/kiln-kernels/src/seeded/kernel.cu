// kiln's seeded inputs made on the device (see mod.rs beside this file, whose Rust mirror of
// every function here the tests hold to the host's values bit for bit). Compiled at run time by
// NVRTC with no headers: only built-in types and intrinsics.
//
// Thread t makes ChaCha8 block t (16 words) of (key, stream) and writes values 16t .. 16t+15,
// those below n: as f32 (uniform in [-1, 1), exact), or as the bits of bf16 or f16, rounded to
// nearest, ties to even. The `unit` entry points write (v + 1) / 2 instead, in [0, 1) (conv2d's
// generated images), computed in f32 before any rounding to 16 bits, as the host does. `out` is
// the start of a device allocation (aligned to 256 bytes), so a thread's 16 values start 16-byte
// aligned and whole blocks go out in 16-byte stores.

struct KilnKey {
    unsigned int w[8];
};

struct alignas(16) KilnVec4 {
    unsigned int w[4];
};

#define KILN_ROTL(v, s) (((v) << (s)) | ((v) >> (32 - (s))))
#define KILN_QUARTER(a, b, c, d)                                                                   \
    x[a] += x[b];                                                                                  \
    x[d] = KILN_ROTL(x[d] ^ x[a], 16);                                                             \
    x[c] += x[d];                                                                                  \
    x[b] = KILN_ROTL(x[b] ^ x[c], 12);                                                             \
    x[a] += x[b];                                                                                  \
    x[d] = KILN_ROTL(x[d] ^ x[a], 8);                                                              \
    x[c] += x[d];                                                                                  \
    x[b] = KILN_ROTL(x[b] ^ x[c], 7);

// Block `block` of ChaCha8 (4 double rounds) with `key` on `stream`: "expand 32-byte k", the
// key, the 64-bit block counter and the 64-bit stream, low words first; output = rounds + input.
__device__ __forceinline__ void kiln_chacha8_block(const KilnKey &key, unsigned long long stream,
                                                   unsigned long long block, unsigned int out[16]) {
    unsigned int input[16] = {
        0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u,
        key.w[0], key.w[1], key.w[2], key.w[3], key.w[4], key.w[5], key.w[6], key.w[7],
        (unsigned int)block, (unsigned int)(block >> 32),
        (unsigned int)stream, (unsigned int)(stream >> 32),
    };
    unsigned int x[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        x[i] = input[i];
    }
#pragma unroll
    for (int round = 0; round < 4; ++round) {
        KILN_QUARTER(0, 4, 8, 12)
        KILN_QUARTER(1, 5, 9, 13)
        KILN_QUARTER(2, 6, 10, 14)
        KILN_QUARTER(3, 7, 11, 15)
        KILN_QUARTER(0, 5, 10, 15)
        KILN_QUARTER(1, 6, 11, 12)
        KILN_QUARTER(2, 7, 8, 13)
        KILN_QUARTER(3, 4, 9, 14)
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        out[i] = x[i] + input[i];
    }
}

// A word to a value in [-1, 1) as rand's UniformFloat<f32>: the top 23 bits as the mantissa of
// a number in [1, 2), minus 1, times 2, minus 1 (each step exact; the _rn intrinsics keep them
// separate operations whatever the compiler's contraction setting).
__device__ __forceinline__ float kiln_uniform(unsigned int word) {
    float unit = __fsub_rn(__uint_as_float((word >> 9) | 0x3F800000u), 1.0f);
    return __fadd_rn(__fmul_rn(unit, 2.0f), -1.0f);
}

// The value a word makes: uniform, or mapped to [0, 1) when `unit` ((v + 1) / 2: the sum is
// exact, and halving it is too).
__device__ __forceinline__ float kiln_value(unsigned int word, int unit) {
    float v = kiln_uniform(word);
    return unit ? __fmul_rn(__fadd_rn(v, 1.0f), 0.5f) : v;
}

// f32 to bf16 bits, to nearest, ties to even; a NaN stays a NaN (quiet).
__device__ __forceinline__ unsigned int kiln_bf16_bits(float value) {
    unsigned int x = __float_as_uint(value);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
        return ((x >> 16) | 0x0040u) & 0xFFFFu;
    }
    const unsigned int round_bit = 0x00008000u;
    unsigned int up = ((x & round_bit) != 0u && (x & (3u * round_bit - 1u)) != 0u) ? 1u : 0u;
    return ((x >> 16) + up) & 0xFFFFu;
}

// f32 to f16 bits, to nearest, ties to even; subnormals below 2^-14, infinity from 65520 on, a
// NaN stays a NaN (quiet).
__device__ __forceinline__ unsigned int kiln_f16_bits(float value) {
    unsigned int x = __float_as_uint(value);
    unsigned int sign = (x & 0x80000000u) >> 16;
    unsigned int exp = x & 0x7F800000u;
    unsigned int man = x & 0x007FFFFFu;
    if (exp == 0x7F800000u) {
        unsigned int nan = man == 0u ? 0u : 0x0200u;
        return sign | 0x7C00u | nan | (man >> 13);
    }
    int half_exp = (int)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1F) {
        return sign | 0x7C00u;
    }
    if (half_exp <= 0) {
        if (14 - half_exp > 24) {
            return sign;
        }
        man |= 0x00800000u;
        unsigned int round_bit = 1u << (13 - half_exp);
        unsigned int up = ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) ? 1u : 0u;
        return sign | ((man >> (14 - half_exp)) + up);
    }
    const unsigned int round_bit = 0x00001000u;
    unsigned int up = ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) ? 1u : 0u;
    return ((sign | ((unsigned int)half_exp << 10) | (man >> 13)) + up) & 0xFFFFu;
}

// The thread's block and the index of its first value; false when it has nothing to write.
__device__ __forceinline__ bool kiln_thread_block(unsigned long long n, unsigned long long *block,
                                                  unsigned long long *first) {
    *block = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    *first = *block * 16ull;
    return *first < n;
}

__device__ __forceinline__ void kiln_seeded_full(float *out, unsigned long long n,
                                                 const KilnKey &key, unsigned long long stream,
                                                 int unit) {
    unsigned long long block, first;
    if (!kiln_thread_block(n, &block, &first)) {
        return;
    }
    unsigned int w[16];
    kiln_chacha8_block(key, stream, block, w);
    float *dst = out + first;
    if (n - first >= 16ull) {
        KilnVec4 *vec = reinterpret_cast<KilnVec4 *>(dst);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            KilnVec4 v;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                v.w[j] = __float_as_uint(kiln_value(w[4 * q + j], unit));
            }
            vec[q] = v;
        }
    } else {
        unsigned int rest = (unsigned int)(n - first);
        for (unsigned int j = 0; j < rest; ++j) {
            dst[j] = kiln_value(w[j], unit);
        }
    }
}

extern "C" __global__ void kiln_seeded_f32(float *out, unsigned long long n, KilnKey key,
                                           unsigned long long stream) {
    kiln_seeded_full(out, n, key, stream, 0);
}

extern "C" __global__ void kiln_seeded_unit_f32(float *out, unsigned long long n, KilnKey key,
                                                unsigned long long stream) {
    kiln_seeded_full(out, n, key, stream, 1);
}

// The 16-bit variants: `f16` is 0 for bf16, 1 for f16.
__device__ __forceinline__ unsigned int kiln_half_bits(float value, int f16) {
    return f16 ? kiln_f16_bits(value) : kiln_bf16_bits(value);
}

__device__ __forceinline__ void kiln_seeded_half(unsigned short *out, unsigned long long n,
                                                 const KilnKey &key, unsigned long long stream,
                                                 int f16, int unit) {
    unsigned long long block, first;
    if (!kiln_thread_block(n, &block, &first)) {
        return;
    }
    unsigned int w[16];
    kiln_chacha8_block(key, stream, block, w);
    unsigned short *dst = out + first;
    if (n - first >= 16ull) {
        // Two values to a word, the first in the low half (little-endian, as the host lays
        // them out).
        KilnVec4 *vec = reinterpret_cast<KilnVec4 *>(dst);
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            KilnVec4 v;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                unsigned int lo = kiln_half_bits(kiln_value(w[8 * q + 2 * j], unit), f16);
                unsigned int hi = kiln_half_bits(kiln_value(w[8 * q + 2 * j + 1], unit), f16);
                v.w[j] = lo | (hi << 16);
            }
            vec[q] = v;
        }
    } else {
        unsigned int rest = (unsigned int)(n - first);
        for (unsigned int j = 0; j < rest; ++j) {
            dst[j] = (unsigned short)kiln_half_bits(kiln_value(w[j], unit), f16);
        }
    }
}

extern "C" __global__ void kiln_seeded_bf16(unsigned short *out, unsigned long long n, KilnKey key,
                                            unsigned long long stream) {
    kiln_seeded_half(out, n, key, stream, 0, 0);
}

extern "C" __global__ void kiln_seeded_f16(unsigned short *out, unsigned long long n, KilnKey key,
                                           unsigned long long stream) {
    kiln_seeded_half(out, n, key, stream, 1, 0);
}

extern "C" __global__ void kiln_seeded_unit_bf16(unsigned short *out, unsigned long long n,
                                                 KilnKey key, unsigned long long stream) {
    kiln_seeded_half(out, n, key, stream, 0, 1);
}

extern "C" __global__ void kiln_seeded_unit_f16(unsigned short *out, unsigned long long n,
                                                KilnKey key, unsigned long long stream) {
    kiln_seeded_half(out, n, key, stream, 1, 1);
}
