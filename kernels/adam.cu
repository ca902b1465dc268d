// The fused Adam/AdamW step, as `update` in crates/engine/src/cpu/adam.rs, over a list
// of parameters in one launch (a multi-tensor step, as PyTorch's fused AdamW): per
// element one pass over parameter, gradient and both moments (all f32, contiguous).
// A model's step is some hundred tensors, most of them small (biases, norms' weights);
// a launch each costs more than their update does.
#include "common.cuh"

// Tensors a launch takes. The list travels by value as a kernel parameter, under the
// 4 KB that every driver accepts.
#define ADAM_LIST 64
// Elements a block updates: a block's tensor is found once, by its chunk.
#define ADAM_CHUNK 4096

// Field for field `AdamList` in crates/engine/src/cuda/adam_list.rs: pointer and count
// arrays first, so that no field needs padding on either side.
struct AdamList {
    float* p[ADAM_LIST];
    const float* g[ADAM_LIST];
    float* m[ADAM_LIST];
    float* v[ADAM_LIST];
    u64 n[ADAM_LIST];
    // Tensor i's chunks are first_chunk[i] .. first_chunk[i + 1].
    u64 first_chunk[ADAM_LIST + 1];
    // lr / (1 − β₁ᵗ) and 1 / √(1 − β₂ᵗ): a tensor's own step count t.
    float step_size[ADAM_LIST];
    float inv_sqrt_bc2[ADAM_LIST];
    int count;
    int decoupled;
    float b1, b2, eps, wd, lr, unused;
};
static_assert(sizeof(AdamList) == 64 * 8 * 5 + 65 * 8 + 64 * 4 * 2 + 8 * 4,
              "AdamList must match the host's layout");

// The tensor holding chunk c: the last i with first_chunk[i] <= c (the list's count is
// at least 1 and c below first_chunk[count]).
__device__ __forceinline__ int adam_tensor_of(const AdamList& l, u64 c) {
    int lo = 0, hi = l.count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (l.first_chunk[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
}

extern "C" __global__ void adam_list_f32(const AdamList l) {
    const u64 chunks = l.first_chunk[l.count];
    for (u64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        const int t = adam_tensor_of(l, c);
        const u64 start = (c - l.first_chunk[t]) * ADAM_CHUNK;
        const u64 end = min(start + ADAM_CHUNK, l.n[t]);
        float *p = l.p[t], *m = l.m[t], *v = l.v[t];
        const float* g = l.g[t];
        const float step_size = l.step_size[t], inv_sqrt_bc2 = l.inv_sqrt_bc2[t];
        for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) {
            float gi = l.decoupled ? g[i] : g[i] + l.wd * p[i];
            float mi = l.b1 * m[i] + (1.0f - l.b1) * gi;
            float vi = l.b2 * v[i] + (1.0f - l.b2) * gi * gi;
            float pi = p[i];
            if (l.decoupled) pi -= l.lr * l.wd * pi;
            p[i] = pi - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + l.eps);
            m[i] = mi;
            v[i] = vi;
        }
    }
}
