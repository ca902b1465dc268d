// The in-place moving-average update, as `update` in crates/engine/src/cpu/ema.rs:
// avg <- online + (avg - online) * decay, one pass over both (f32, contiguous).
#include "common.cuh"

extern "C" __global__ void ema_f32(float* avg, const float* online, u64 n, float decay) {
    GRID_STRIDE(i, n) {
        float theta = online[i];
        avg[i] = theta + (avg[i] - theta) * decay;
    }
}
