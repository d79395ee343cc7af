// kernel.cu run on the host, for kiln's tests (reduce/tests.rs): CUDA's built-ins from host_shim.h,
// and every thread of the launch grid in turn.
//
// Usage: host < VALUES (little-endian f32). Writes each thread's lane as the kernel writes it
// (32 bytes: sum and square as f64, min and max as f32, the non-finite count as u64,
// little-endian), in thread order.
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
    // Filled with a pattern first, as the device's lanes are not cleared: a lane the kernel
    // skipped shows in the test.
    std::vector<KilnLane> out(lanes);
    std::memset(out.data(), 0xFF, lanes * sizeof(KilnLane));
    unsigned int grid = (unsigned int)((lanes + THREADS - 1) / THREADS);
    blockDim.x = THREADS;
    for (blockIdx.x = 0; blockIdx.x < grid; ++blockIdx.x) {
        for (threadIdx.x = 0; threadIdx.x < THREADS; ++threadIdx.x) {
            kiln_summary_f32(values.data(), n, out.data());
        }
    }
    std::fwrite(out.data(), sizeof(KilnLane), lanes, stdout);
    return 0;
}
