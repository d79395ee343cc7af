// The CUDA built-ins kiln's kernels use, as plain C++, for their host builds (host_kernel.rs):
// the launch indices as globals a host.cpp sets for each thread in turn.
#include <cmath>
#include <cstring>

#define __device__
#define __global__
#define __forceinline__ inline

struct KilnDim3 {
    unsigned int x;
};
static KilnDim3 blockIdx, blockDim, threadIdx;

static inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fsqrt_rn(float a) { return std::sqrt(a); }
