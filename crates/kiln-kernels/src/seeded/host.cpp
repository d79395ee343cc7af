// kernel.cu run on the host, for kiln's tests (seeded/tests.rs): CUDA's built-ins from host_shim.h,
// and every thread of the launch grid in turn.
//
// Usage: host KIND N STREAM K0 .. K7 (KIND f32, bf16 or f16, or unit-f32, unit-bf16 or
// unit-f16 for the values mapped to [0, 1); the key words in decimal). Writes
// the N values' bytes to stdout; exits 3 if a thread wrote past N.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "host_shim.h"
#include "kernel.cu"

// The launch the device gets (vendor/nvrtc.rs): THREADS threads a block, enough blocks for one
// thread per 16 values.
static const unsigned int THREADS = 256;
static const unsigned int GUARD = 64;

int main(int argc, char **argv) {
    if (argc != 12) {
        std::fprintf(stderr, "usage: host KIND N STREAM K0 .. K7\n");
        return 2;
    }
    const char *kind = argv[1];
    int unit = std::strncmp(kind, "unit-", 5) == 0;
    if (unit) {
        kind += 5;
    }
    unsigned long long n = std::strtoull(argv[2], nullptr, 10);
    unsigned long long stream = std::strtoull(argv[3], nullptr, 10);
    KilnKey key;
    for (int i = 0; i < 8; ++i) {
        key.w[i] = (unsigned int)std::strtoul(argv[4 + i], nullptr, 10);
    }
    size_t size = std::strcmp(kind, "f32") == 0 ? 4 : 2;
    size_t bytes = (n + GUARD) * size;
    // Aligned like a device allocation, filled with a pattern the guard is checked against.
    unsigned char *out = (unsigned char *)std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    std::memset(out, 0xA5, bytes);
    unsigned long long blocks = (n + 15) / 16;
    unsigned int grid = (unsigned int)((blocks + THREADS - 1) / THREADS);
    blockDim.x = THREADS;
    for (blockIdx.x = 0; blockIdx.x < grid; ++blockIdx.x) {
        for (threadIdx.x = 0; threadIdx.x < THREADS; ++threadIdx.x) {
            if (size == 4) {
                (unit ? kiln_seeded_unit_f32 : kiln_seeded_f32)((float *)out, n, key, stream);
            } else if (std::strcmp(kind, "bf16") == 0) {
                (unit ? kiln_seeded_unit_bf16 : kiln_seeded_bf16)((unsigned short *)out, n, key,
                                                                  stream);
            } else {
                (unit ? kiln_seeded_unit_f16 : kiln_seeded_f16)((unsigned short *)out, n, key,
                                                                stream);
            }
        }
    }
    for (size_t i = n * size; i < bytes; ++i) {
        if (out[i] != 0xA5) {
            std::fprintf(stderr, "byte %zu past the %llu values was written\n", i, n);
            return 3;
        }
    }
    std::fwrite(out, size, n, stdout);
    std::free(out);
    return 0;
}
