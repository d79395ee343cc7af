// kernel.cu run on the host, for kiln's tests (reduce/tests.rs): CUDA's built-ins from host_shim.h,
// and every thread of the launch grid in turn.
//
// Usage: host < VALUES (little-endian f32). Writes, for each thread, its sum and square (f64),
// min and max (f32) and non-finite count (u64), little-endian, in thread order.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "host_shim.h"
#include "kernel.cu"

// The launch the device gets (vendor/nvrtc.rs): THREADS threads a block, a thread per lane.
static const unsigned int THREADS = 256;

int main() {
    std::vector<float> values;
    float v;
    while (std::fread(&v, sizeof v, 1, stdin) == 1) {
        values.push_back(v);
    }
    unsigned long long n = values.size();
    unsigned long long lanes = (n + KILN_SUMMARY_BLOCK - 1) / KILN_SUMMARY_BLOCK * KILN_SUMMARY_LANES;
    std::vector<double> sums(lanes), squares(lanes);
    std::vector<float> mins(lanes), maxs(lanes);
    std::vector<unsigned long long> bad(lanes);
    unsigned int grid = (unsigned int)((lanes + THREADS - 1) / THREADS);
    blockDim.x = THREADS;
    for (blockIdx.x = 0; blockIdx.x < grid; ++blockIdx.x) {
        for (threadIdx.x = 0; threadIdx.x < THREADS; ++threadIdx.x) {
            kiln_summary_f32(values.data(), n, sums.data(), squares.data(), mins.data(),
                             maxs.data(), bad.data());
        }
    }
    for (unsigned long long t = 0; t < lanes; ++t) {
        std::fwrite(&sums[t], 8, 1, stdout);
        std::fwrite(&squares[t], 8, 1, stdout);
        std::fwrite(&mins[t], 4, 1, stdout);
        std::fwrite(&maxs[t], 4, 1, stdout);
        std::fwrite(&bad[t], 8, 1, stdout);
    }
    return 0;
}
