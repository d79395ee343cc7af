// kiln's output summaries made on the device (see mod.rs beside this file): the lane partials
// `Partial::of` (crate::data) computes on the host, in the same order with the same roundings,
// so that the host folds them into the same Summary, bit for bit, from a few kilobytes instead
// of the whole output. Compiled at run time by NVRTC with no headers and without contraction
// into FMAs (a square is one f64 product, then one f64 add, as on the host).
//
// The values are taken in blocks of KILN_SUMMARY_BLOCK (data.rs's BLOCK). Thread t sums lane
// t % 8 of block t / 8: the values at offsets lane, lane + 8, ... of the block's whole chunks
// of 8, in f64, with their smallest and largest (NaNs passed over) and how many are not
// finite. The values after the last whole chunk (at most 7, in the last block) are the host's.

#define KILN_SUMMARY_BLOCK 65536ull
#define KILN_SUMMARY_LANES 8ull

// One lane's partials, 32 bytes, as the host reads them back in one copy (`Lane::from_bytes`
// in crate::data): sum and square at 0 and 8, min and max at 16 and 20, the count at 24.
struct KilnLane {
    double sum;
    double square;
    float min;
    float max;
    unsigned long long non_finite;
};
static_assert(sizeof(KilnLane) == 32 && alignof(KilnLane) == 8, "a lane as the host reads it");

extern "C" __global__ void kiln_summary_f32(const float *values, unsigned long long n,
                                            KilnLane *lanes) {
    unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long blocks = (n + KILN_SUMMARY_BLOCK - 1) / KILN_SUMMARY_BLOCK;
    if (t >= blocks * KILN_SUMMARY_LANES) {
        return;
    }
    unsigned long long start = t / KILN_SUMMARY_LANES * KILN_SUMMARY_BLOCK;
    unsigned long long len = n - start < KILN_SUMMARY_BLOCK ? n - start : KILN_SUMMARY_BLOCK;
    unsigned long long whole = len - len % KILN_SUMMARY_LANES;
    const float *block = values + start;
    double sum = 0.0;
    double square = 0.0;
    float lo = __uint_as_float(0x7f800000u);
    float hi = __uint_as_float(0xff800000u);
    unsigned long long bad = 0;
#pragma unroll 16
    for (unsigned long long i = t % KILN_SUMMARY_LANES; i < whole; i += KILN_SUMMARY_LANES) {
        float x = block[i];
        double d = (double)x;
        sum = sum + d;
        square = square + d * d;
        // A NaN compares false: the running value stays, as f32::min and f32::max keep it.
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
        bad += (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u ? 1ull : 0ull;
    }
    KilnLane lane;
    lane.sum = sum;
    lane.square = square;
    lane.min = lo;
    lane.max = hi;
    lane.non_finite = bad;
    lanes[t] = lane;
}
