// The fused Adam/AdamW step, as `update` in crates/engine/src/cpu/adam.rs: one pass over
// parameter, gradient and both moments (all f32, contiguous).
#include "common.cuh"

extern "C" __global__ void adam_f32(float* p, const float* g, float* m, float* v, u64 n,
                                    float b1, float b2, float step_size, float inv_sqrt_bc2,
                                    float eps, float wd, float lr, int decoupled) {
    GRID_STRIDE(i, n) {
        float gi = decoupled ? g[i] : g[i] + wd * p[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        float pi = p[i];
        if (decoupled) pi -= lr * wd * pi;
        p[i] = pi - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        m[i] = mi;
        v[i] = vi;
    }
}
