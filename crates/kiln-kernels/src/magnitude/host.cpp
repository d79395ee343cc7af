// kernel.cu run on the host, for kiln's tests (magnitude/tests.rs): CUDA's built-ins from
// host_shim.h, and every thread of the launch grid in turn.
//
// Usage: host KIND PLANE PASSES < MAPS (KIND f32, bf16 or f16; the maps' little-endian values or
// bits). Writes the output's f32 values, little-endian.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "host_shim.h"
#include "kernel.cu"

// The launch the device gets (vendor/nvrtc.rs): THREADS threads a block, a thread per value.
static const unsigned int THREADS = 256;

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: host KIND PLANE PASSES < MAPS\n");
        return 2;
    }
    const char *kind = argv[1];
    unsigned long long plane = std::strtoull(argv[2], nullptr, 10);
    unsigned int passes = (unsigned int)std::strtoul(argv[3], nullptr, 10);
    size_t size = std::strcmp(kind, "f32") == 0 ? 4 : 2;
    std::vector<unsigned char> bytes;
    int c;
    while ((c = std::getchar()) != EOF) {
        bytes.push_back((unsigned char)c);
    }
    unsigned long long maps = bytes.size() / size;
    unsigned long long n = maps / passes;
    std::vector<float> full(size == 4 ? maps : 0);
    std::vector<unsigned short> half(size == 2 ? maps : 0);
    if (size == 4) {
        std::memcpy(full.data(), bytes.data(), maps * 4);
    } else {
        std::memcpy(half.data(), bytes.data(), maps * 2);
    }
    std::vector<float> out(n);
    unsigned int grid = (unsigned int)((n + THREADS - 1) / THREADS);
    blockDim.x = THREADS;
    for (blockIdx.x = 0; blockIdx.x < grid; ++blockIdx.x) {
        for (threadIdx.x = 0; threadIdx.x < THREADS; ++threadIdx.x) {
            if (size == 4) {
                kiln_magnitude_f32(full.data(), out.data(), n, plane, passes);
            } else if (std::strcmp(kind, "bf16") == 0) {
                kiln_magnitude_bf16(half.data(), out.data(), n, plane, passes);
            } else {
                kiln_magnitude_f16(half.data(), out.data(), n, plane, passes);
            }
        }
    }
    std::fwrite(out.data(), 4, n, stdout);
    return 0;
}
