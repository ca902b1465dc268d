// Layer norm and RMS norm over the last dim of contiguous rows, forward and backward.
// Statistics (row mean, reciprocal std dev) are kept in the compute type A.
// The weight and bias hold one row of d values, or one per group of consecutive rows:
// row r reads parameter row r / wg (weight) and r / bg (bias), wg and bg being the rows
// per group (the row count when the parameter has one row).
//
// x, the parameters and dx share the type T. The output y (type Y) and its gradient g
// (type G) are T too, except in the f32 versions for autocast (`_to_bf16`, `_gbf16`,
// and the f16 ones): a norm whose output only feeds bf16 or f16 products writes it in
// that type, and reads its gradient back in it, instead of a cast kernel after the
// forward and another before the backward.
#include "common.cuh"

// The warp-per-row kernels come in versions holding N elements per lane, rows of up to
// 32·N elements: N in 4, 8, 12, 16, 24, 32 (`WARP_LANE_ELEMS` in
// crates/engine/src/cuda/rows.rs), so that a row of 384 (DiT-S) or 768 (DiT-B) keeps
// no unused registers. One size for all (32) took 164 registers a thread in the f32
// backward and left the SMs at a fifth of their warps.

// The sum of v over the warp, in every lane.
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// A warp per row of d ≤ 32·N elements, which it holds in registers: one read
// of x and no block barriers. A block per row (below) leaves most of its threads idle
// on the short rows of a transformer (d = 384 across 256 threads) and pays two block
// reductions per row.
template <typename T, typename Y, typename A, int N>
__device__ __forceinline__ void norm_warp(const T* x, const T* w, const T* b, Y* y, A* mean,
                                          A* rstd, u64 rows, u64 d, u64 wg, u64 bg, A eps,
                                          int rms) {
    const u64 warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (u64 r = (u64)blockIdx.x * warps + (threadIdx.x >> 5); r < rows;
         r += (u64)gridDim.x * warps) {
        const T* xr = x + r * d;
        const T *wr = w ? w + r / wg * d : w, *br = b ? b + r / bg * d : b;
        A v[N], s = 0;
#pragma unroll
        for (int c = 0; c < N; ++c) {
            const u64 j = 32 * c + lane;
            v[c] = j < d ? (A)load(xr[j]) : (A)0;
            s += v[c];
        }
        const A mu = rms ? (A)0 : warp_sum(s) / (A)d;
        A q = 0;
#pragma unroll
        for (int c = 0; c < N; ++c)
            if (32 * c + lane < d) q += (v[c] - mu) * (v[c] - mu);
        const A rs = (A)1 / m_sqrt(warp_sum(q) / (A)d + eps);
#pragma unroll
        for (int c = 0; c < N; ++c) {
            const u64 j = 32 * c + lane;
            if (j >= d) break;
            A o = (v[c] - mu) * rs;
            if (wr) o *= (A)load(wr[j]);
            if (br) o += (A)load(br[j]);
            put(y + r * d + j, o);
        }
        if (lane == 0) {
            mean[r] = mu;
            rstd[r] = rs;
        }
    }
}

// The backward of `norm_warp` (the formula of norm_backward_block below), g and x in
// registers; plus res (a gradient of x gathered elsewhere, contiguous like x) when not
// null.
template <typename T, typename G, typename A, int N>
__device__ __forceinline__ void norm_backward_warp(const T* x, const T* w, const A* mean,
                                                   const A* rstd, const G* g, const T* res,
                                                   T* dx, u64 rows, u64 d, u64 wg, int rms) {
    const u64 warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (u64 r = (u64)blockIdx.x * warps + (threadIdx.x >> 5); r < rows;
         r += (u64)gridDim.x * warps) {
        const T *xr = x + r * d, *wr = w ? w + r / wg * d : w;
        const G* gr = g + r * d;
        const T* rr = res ? res + r * d : res;
        const A mu = mean[r], rs = rstd[r];
        A gh[N], xh[N], sg = 0, sgx = 0;
#pragma unroll
        for (int c = 0; c < N; ++c) {
            const u64 j = 32 * c + lane;
            const bool in = j < d;
            gh[c] = in ? (A)load(gr[j]) * (wr ? (A)load(wr[j]) : (A)1) : (A)0;
            xh[c] = in ? ((A)load(xr[j]) - mu) * rs : (A)0;
            sg += gh[c];
            sgx += gh[c] * xh[c];
        }
        const A mean_g = rms ? (A)0 : warp_sum(sg) / (A)d, mean_gx = warp_sum(sgx) / (A)d;
#pragma unroll
        for (int c = 0; c < N; ++c) {
            const u64 j = 32 * c + lane;
            if (j >= d) break;
            const A v = rs * (gh[c] - mean_g - xh[c] * mean_gx);
            put(dx + r * d + j, rr ? v + (A)load(rr[j]) : v);
        }
    }
}

// One block per row, for rows over 1024: mean (layer norm only), variance, then y. w and
// b may be null.
template <typename T, typename Y, typename A>
__device__ __forceinline__ void norm_block(const T* x, const T* w, const T* b, Y* y, A* mean,
                                           A* rstd, u64 rows, u64 d, u64 wg, u64 bg, A eps,
                                           int rms) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * d;
        const T *wr = w ? w + r / wg * d : w, *br = b ? b + r / bg * d : b;
        A mu = 0;
        if (!rms) {
            for (u64 j = threadIdx.x; j < d; j += blockDim.x) mu += load(xr[j]);
            mu = block_reduce(RED_SUM, mu) / (A)d;
        }
        A var = 0;
        for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
            A c = (A)load(xr[j]) - mu;
            var += c * c;
        }
        var = block_reduce(RED_SUM, var) / (A)d;
        A rs = (A)1 / m_sqrt(var + eps);
        for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
            A v = ((A)load(xr[j]) - mu) * rs;
            if (wr) v *= (A)load(wr[j]);
            if (br) v += (A)load(br[j]);
            put(y + r * d + j, v);
        }
        if (threadIdx.x == 0) {
            mean[r] = mu;
            rstd[r] = rs;
        }
    }
}

// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), ĝ = g·w; no mean(ĝ) term for RMS norm; plus
// res (a gradient of x gathered elsewhere, contiguous like x) when not null.
template <typename T, typename G, typename A>
__device__ __forceinline__ void norm_backward_block(const T* x, const T* w, const A* mean,
                                                    const A* rstd, const G* g, const T* res,
                                                    T* dx, u64 rows, u64 d, u64 wg, int rms) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * d;
        const G* gr = g + r * d;
        const T* wr = w ? w + r / wg * d : w;
        const T* rr = res ? res + r * d : res;
        A mu = mean[r], rs = rstd[r], sg = 0, sgx = 0;
        for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
            A gh = (A)load(gr[j]) * (wr ? (A)load(wr[j]) : (A)1);
            sg += gh;
            sgx += gh * ((A)load(xr[j]) - mu) * rs;
        }
        sg = block_reduce(RED_SUM, sg);
        sgx = block_reduce(RED_SUM, sgx);
        A mean_g = rms ? (A)0 : sg / (A)d, mean_gx = sgx / (A)d;
        for (u64 j = threadIdx.x; j < d; j += blockDim.x) {
            A gh = (A)load(gr[j]) * (wr ? (A)load(wr[j]) : (A)1);
            A xh = ((A)load(xr[j]) - mu) * rs;
            A v = rs * (gh - mean_g - xh * mean_gx);
            put(dx + r * d + j, rr ? v + (A)load(rr[j]) : v);
        }
    }
}

// Partials of dw = Σ g·x̂ and db = Σ g over the rows of each group, x being seen as
// [groups, rows, d] (rows per group): block (32, 8), x over 32 columns, y over rows;
// blockIdx.y takes the group's rows [y·per, (y+1)·per), blockIdx.z (grid-stride) the
// group. Each block leaves its sums in pw/pb[g][y][c] (either may be null), which
// reduce_middle_finish (reduce.cu) adds up in order: no atomics, so the gradients are
// identical run to run.
template <typename T, typename G, typename A>
__device__ __forceinline__ void norm_param_grads(const T* x, const A* mean, const A* rstd,
                                                 const G* g, A* pw, A* pb, u64 groups,
                                                 u64 rows, u64 d, u64 per) {
    __shared__ A sw[8][33];
    __shared__ A sb[8][33];
    const u64 c = (u64)blockIdx.x * 32 + threadIdx.x;
    const u64 r0 = (u64)blockIdx.y * per;
    const u64 r1 = r0 + per < rows ? r0 + per : rows;
    for (u64 p = blockIdx.z; p < groups; p += gridDim.z) {
        A aw = 0, ab = 0;
        if (c < d)
            for (u64 r = p * rows + r0 + threadIdx.y; r < p * rows + r1; r += 8) {
                const A gv = load(g[r * d + c]);
                if (pw) aw += gv * ((A)load(x[r * d + c]) - mean[r]) * rstd[r];
                ab += gv;
            }
        sw[threadIdx.y][threadIdx.x] = aw;
        sb[threadIdx.y][threadIdx.x] = ab;
        __syncthreads();
        if (threadIdx.y == 0 && c < d) {
            for (int i = 1; i < 8; ++i) {
                aw += sw[i][threadIdx.x];
                ab += sb[i][threadIdx.x];
            }
            const u64 o = (p * gridDim.y + blockIdx.y) * d + c;
            if (pw) pw[o] = aw;
            if (pb) pb[o] = ab;
        }
        __syncthreads();
    }
}

// The forward's entry points `norm_warp{N}_{S}` and `norm_{S}`: x of type T, y of Y.
#define NORM_FORWARD_WARP(S, T, Y, N)                                                     \
    extern "C" __global__ void norm_warp##N##_##S(const T* x, const T* w, const T* b,     \
                                                  Y* y, Acc<T>::type* mean,               \
                                                  Acc<T>::type* rstd, u64 rows, u64 d,    \
                                                  u64 wg, u64 bg, double eps, int rms) {  \
        norm_warp<T, Y, Acc<T>::type, N>(x, w, b, y, mean, rstd, rows, d, wg, bg,         \
                                         (Acc<T>::type)eps, rms);                         \
    }
// Every warp version of kernel macro M: N in 4, 8, 12, 16, 24 and 32 elements a lane.
#define FOR_LANE_ELEMS(M, S, T, U)                                                        \
    M(S, T, U, 4) M(S, T, U, 8) M(S, T, U, 12) M(S, T, U, 16) M(S, T, U, 24) M(S, T, U, 32)

#define NORM_FORWARD(S, T, Y)                                                             \
    FOR_LANE_ELEMS(NORM_FORWARD_WARP, S, T, Y)                                            \
    extern "C" __global__ void norm_##S(const T* x, const T* w, const T* b, Y* y,         \
                                        Acc<T>::type* mean, Acc<T>::type* rstd, u64 rows,  \
                                        u64 d, u64 wg, u64 bg, double eps, int rms) {     \
        norm_block<T, Y, Acc<T>::type>(x, w, b, y, mean, rstd, rows, d, wg, bg,           \
                                       (Acc<T>::type)eps, rms);                           \
    }

// The backward's entry points `norm_backward_warp{N}_{S}`, `norm_backward_{S}` and
// `norm_param_grads_{S}`: x, w, res and dx of type T, g of G.
#define NORM_BACKWARD_WARP(S, T, G, N)                                                    \
    extern "C" __global__ void norm_backward_warp##N##_##S(                               \
        const T* x, const T* w, const Acc<T>::type* mean, const Acc<T>::type* rstd,       \
        const G* g, const T* res, T* dx, u64 rows, u64 d, u64 wg, int rms) {              \
        norm_backward_warp<T, G, Acc<T>::type, N>(x, w, mean, rstd, g, res, dx, rows, d,  \
                                                  wg, rms);                               \
    }
#define NORM_BACKWARD(S, T, G)                                                            \
    FOR_LANE_ELEMS(NORM_BACKWARD_WARP, S, T, G)                                           \
    extern "C" __global__ void norm_backward_##S(                                         \
        const T* x, const T* w, const Acc<T>::type* mean, const Acc<T>::type* rstd,       \
        const G* g, const T* res, T* dx, u64 rows, u64 d, u64 wg, int rms) {              \
        norm_backward_block<T, G, Acc<T>::type>(x, w, mean, rstd, g, res, dx, rows, d, wg, \
                                                rms);                                     \
    }                                                                                     \
    extern "C" __global__ void norm_param_grads_##S(                                      \
        const T* x, const Acc<T>::type* mean, const Acc<T>::type* rstd, const G* g,       \
        Acc<T>::type* pw, Acc<T>::type* pb, u64 groups, u64 rows, u64 d, u64 per) {       \
        norm_param_grads<T, G, Acc<T>::type>(x, mean, rstd, g, pw, pb, groups, rows, d,   \
                                             per);                                        \
    }

#define NORM(S, T) NORM_FORWARD(S, T, T) NORM_BACKWARD(S, T, T)

FOR_FLOATS(NORM)

// f32 norms whose output feeds bf16 or f16 products (see the top of the file).
NORM_FORWARD(f32_to_bf16, float, bf16)
NORM_FORWARD(f32_to_f16, float, f16)
NORM_BACKWARD(f32_gbf16, float, bf16)
NORM_BACKWARD(f32_gf16, float, f16)
