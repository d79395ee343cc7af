// conv2d's output made on the device from cuDNN's maps (see mod.rs beside this file): the values
// `magnitude` (kinds/conv2d.rs) makes on the host, bit for bit but for a NaN's bits (the GPU's
// arithmetic makes its own NaN where the CPU passes its operand's on; both are NaN). Compiled at
// run time by NVRTC with no headers and without contraction into FMAs.
//
// The maps are laid out [image][channel][pass][row][column] (a depthwise convolution's output
// channel `channel * passes + pass`), in f32 or as the bits of bf16 or f16. Thread i writes
// output value i of `n` = images × channels × `plane`: with one pass, the map's value as f32;
// with two (Sobel's x and y derivatives), the magnitude sqrt(gx * gx + gy * gy) in f32, each
// product and the sum rounded on their own, the square root correctly rounded.

// bf16 bits to f32: exact; a NaN comes out quiet (as the `half` crate converts).
__device__ __forceinline__ float kiln_from_bf16(unsigned int h) {
    if ((h & 0x7FFFu) > 0x7F80u) {
        h |= 0x0040u;
    }
    return __uint_as_float(h << 16);
}

// f16 bits to f32: exact; a NaN comes out quiet with its payload (as the `half` crate converts).
__device__ __forceinline__ float kiln_from_f16(unsigned int h) {
    unsigned int sign = (h & 0x8000u) << 16;
    unsigned int exp = (h >> 10) & 0x1Fu;
    unsigned int man = h & 0x3FFu;
    if (exp == 0x1Fu) {
        return __uint_as_float(sign | 0x7F800000u | (man == 0u ? 0u : 0x00400000u | (man << 13)));
    }
    if (exp == 0u) {
        // Zero or subnormal: man · 2^-24, both factors exact and so is their product.
        float magnitude = __fmul_rn((float)man, 5.9604644775390625e-8f);
        return __uint_as_float(sign | __float_as_uint(magnitude));
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// Output value i from its maps' values at `a` (and `b`, the second pass, when `passes` is 2).
__device__ __forceinline__ float kiln_magnitude_of(float a, float b, unsigned int passes) {
    if (passes == 1u) {
        return a;
    }
    return __fsqrt_rn(__fadd_rn(__fmul_rn(a, a), __fmul_rn(b, b)));
}

// The thread's output index and where its maps' values are; false when it has nothing to write.
__device__ __forceinline__ bool kiln_magnitude_at(unsigned long long n, unsigned long long plane,
                                                  unsigned int passes, unsigned long long *i,
                                                  unsigned long long *first) {
    *i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (*i >= n) {
        return false;
    }
    *first = (*i / plane) * passes * plane + *i % plane;
    return true;
}

extern "C" __global__ void kiln_magnitude_f32(const float *maps, float *out, unsigned long long n,
                                              unsigned long long plane, unsigned int passes) {
    unsigned long long i, first;
    if (!kiln_magnitude_at(n, plane, passes, &i, &first)) {
        return;
    }
    float b = passes == 1u ? 0.0f : maps[first + plane];
    out[i] = kiln_magnitude_of(maps[first], b, passes);
}

// The 16-bit variants: `f16` is 0 for bf16, 1 for f16.
__device__ __forceinline__ void kiln_magnitude_half(const unsigned short *maps, float *out,
                                                    unsigned long long n, unsigned long long plane,
                                                    unsigned int passes, int f16) {
    unsigned long long i, first;
    if (!kiln_magnitude_at(n, plane, passes, &i, &first)) {
        return;
    }
    float a = f16 ? kiln_from_f16(maps[first]) : kiln_from_bf16(maps[first]);
    float b = 0.0f;
    if (passes != 1u) {
        b = f16 ? kiln_from_f16(maps[first + plane]) : kiln_from_bf16(maps[first + plane]);
    }
    out[i] = kiln_magnitude_of(a, b, passes);
}

extern "C" __global__ void kiln_magnitude_bf16(const unsigned short *maps, float *out,
                                               unsigned long long n, unsigned long long plane,
                                               unsigned int passes) {
    kiln_magnitude_half(maps, out, n, plane, passes, 0);
}

extern "C" __global__ void kiln_magnitude_f16(const unsigned short *maps, float *out,
                                              unsigned long long n, unsigned long long plane,
                                              unsigned int passes) {
    kiln_magnitude_half(maps, out, n, plane, passes, 1);
}
