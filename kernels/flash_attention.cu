// Fused scaled-dot-product attention, FlashAttention-2 style (crates/engine/src/cuda/
// flash.rs). q, k, v, out and their gradients are contiguous [bh, t, D]; lse and delta
// are f32 [bh, tq]. With `causal`, key j is masked for query i when j > i.
//
// A block of W warps owns 16·W rows (queries, or keys for dK/dV); each warp owns 16.
// The other operand streams through shared memory in tiles of BS rows. Products run
// warp-wide on 16×8 output fragments: on tensor cores (mma.sync m16n8k16, f32
// accumulation) for bf16/f16, as f32 FMAs in the same fragment layout for f32, so both
// paths share every line but the product itself. Probabilities and score gradients
// go through a per-warp shared scratch in the storage type (as FlashAttention rounds P
// and dS to bf16/f16 before their products).
//
// Forward: online softmax over the key tiles; only out and the row log-sum-exp are
// written. Backward: delta = rowsum(dO∘O), then two kernels that recompute the scores
// tile by tile: one per query tile writes dQ, one per key tile writes dK and dV. No
// atomics, so results are identical run to run.
#include "common.cuh"

// Shared rows are padded so that consecutive rows start in different banks.
#define FA_PAD 8
#define FA_NEG_INF (-__int_as_float(0x7f800000))

template <typename T> struct IsHalf { static const bool value = true; };
template <> struct IsHalf<float> { static const bool value = false; };

// A matrix in shared memory: element (i, j) at p[i·rs + j·cs] (a transpose swaps rs, cs).
template <typename T> struct Tile {
    const T* p;
    int rs, cs;
    __device__ __forceinline__ T at(int i, int j) const { return p[i * rs + j * cs]; }
    // (i, j) and (i, j+1) packed (16-bit T): one 32-bit load where they are adjacent.
    // Every tile starts 4-byte aligned and every row stride and j used is even.
    __device__ __forceinline__ unsigned pair_j(int i, int j) const {
        if (cs == 1) return *reinterpret_cast<const unsigned*>(p + i * rs + j);
        return (unsigned)at(i, j).x | ((unsigned)at(i, j + 1).x << 16);
    }
    // (i, j) and (i+1, j) packed, likewise.
    __device__ __forceinline__ unsigned pair_i(int i, int j) const {
        if (rs == 1) return *reinterpret_cast<const unsigned*>(p + i + j * cs);
        return (unsigned)at(i, j).x | ((unsigned)at(i + 1, j).x << 16);
    }
};

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]);
template <>
__device__ __forceinline__ void mma16816<bf16>(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<f16>(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// c[16 × N] += a[16 × K] · b[K × N], warp-wide. Lane (g = lane/4, t = lane%4) holds, for
// each 8-column block nb, c[nb] = {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)} of that
// block: the mma accumulator layout, used by the f32 path too.
template <typename T, int K, int N>
__device__ __forceinline__ void warp_mm(float (&c)[N / 8][4], Tile<T> a, Tile<T> b) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if constexpr (IsHalf<T>::value) {
#pragma unroll
        for (int k0 = 0; k0 < K; k0 += 16) {
            const int k = k0 + 2 * t;
            // Pairs along k, the lower index in the low half (mma's operand order).
            const unsigned af[4] = {a.pair_j(g, k), a.pair_j(g + 8, k), a.pair_j(g, k + 8),
                                    a.pair_j(g + 8, k + 8)};
#pragma unroll
            for (int nb = 0; nb < N / 8; ++nb) {
                const int n = nb * 8 + g;
                const unsigned bf[2] = {b.pair_i(k, n), b.pair_i(k + 8, n)};
                mma16816<T>(c[nb], af, bf);
            }
        }
    } else {
#pragma unroll 4
        for (int k = 0; k < K; ++k) {
            const float a0 = a.at(g, k), a1 = a.at(g + 8, k);
#pragma unroll
            for (int nb = 0; nb < N / 8; ++nb) {
                const float b0 = b.at(k, nb * 8 + 2 * t), b1 = b.at(k, nb * 8 + 2 * t + 1);
                c[nb][0] += a0 * b0;
                c[nb][1] += a0 * b1;
                c[nb][2] += a1 * b0;
                c[nb][3] += a1 * b1;
            }
        }
    }
}

// Rows [row0, row0 + rows) of the [n, D] matrix `src` into `dst` (row stride D + FA_PAD),
// zeros past row n, by the whole block.
template <typename T, int D>
__device__ __forceinline__ void load_rows(T* dst, const T* src, i64 row0, int rows, i64 n) {
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        const int r = i / D, c = i % D;
        dst[r * (D + FA_PAD) + c] = row0 + r < n ? src[(row0 + r) * D + c] : T{};
    }
}

// Writes fragment values `c` (rows g, g+8 of a warp's 16) scaled by `mul[half]` into
// `dst` (row stride `ld`), only rows below `limit - row0`.
template <typename T, int N>
__device__ __forceinline__ void store_frag(T* dst, int ld, const float (&c)[N / 8][4],
                                           const float (&mul)[2], i64 row0, i64 limit) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = g + 8 * h;
        if (row0 + r >= limit) continue;
#pragma unroll
        for (int nb = 0; nb < N / 8; ++nb) {
            put(&dst[r * ld + nb * 8 + 2 * t], c[nb][2 * h] * mul[h]);
            put(&dst[r * ld + nb * 8 + 2 * t + 1], c[nb][2 * h + 1] * mul[h]);
        }
    }
}

// Whether query `i` sees key `j`.
__device__ __forceinline__ bool visible(i64 i, i64 j, i64 tq, i64 tk, int causal) {
    return i < tq && j < tk && !(causal && j > i);
}

// Max and sum over the 4 lanes that share a fragment row.
__device__ __forceinline__ float row_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float row_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

template <typename T, int D, int W, int BS>
__device__ void fa_forward(const T* q, const T* k, const T* v, T* out, float* lse, u64 tq,
                           u64 tk, float scale, int causal) {
    __shared__ __align__(16) T sq[16 * W][D + FA_PAD];
    __shared__ __align__(16) T sk[BS][D + FA_PAD];
    __shared__ __align__(16) T sv[BS][D + FA_PAD];
    __shared__ __align__(16) T sp[W][16][BS + FA_PAD];
    if (blockDim.x != 32 * W) __trap();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const i64 q0 = (i64)blockIdx.y * 16 * W, r0 = q0 + 16 * warp;
    q += bh * tq * D, k += bh * tk * D, v += bh * tk * D, out += bh * tq * D, lse += bh * tq;
    load_rows<T, D>(&sq[0][0], q, q0, 16 * W, tq);
    float m[2] = {FA_NEG_INF, FA_NEG_INF}, l[2] = {0.f, 0.f};
    float o[D / 8][4] = {};
    // Under the causal mask no query of this block sees a key past its last query.
    const i64 kend = causal ? min((i64)tk, q0 + 16 * W) : (i64)tk;
    for (i64 k0 = 0; k0 < kend; k0 += BS) {
        __syncthreads();
        load_rows<T, D>(&sk[0][0], k, k0, BS, tk);
        load_rows<T, D>(&sv[0][0], v, k0, BS, tk);
        __syncthreads();
        float s[BS / 8][4] = {};
        warp_mm<T, D, BS>(s, Tile<T>{&sq[16 * warp][0], D + FA_PAD, 1}, Tile<T>{&sk[0][0], 1, D + FA_PAD});
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const i64 i = r0 + g + 8 * (e >> 1), j = k0 + nb * 8 + 2 * t + (e & 1);
                s[nb][e] = visible(i, j, tq, tk, causal) ? s[nb][e] * scale : FA_NEG_INF;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[nb][e]);
            }
        float base[2], corr[2], sum[2] = {0.f, 0.f};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            mx[h] = row_max(mx[h]);
            // A row with every key so far masked keeps 0 as its reference (no ∞ − ∞).
            base[h] = mx[h] == FA_NEG_INF ? 0.f : mx[h];
            corr[h] = expf(m[h] - base[h]);
            m[h] = mx[h];
        }
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nb][e] = expf(s[nb][e] - base[e >> 1]);
                sum[e >> 1] += s[nb][e];
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) l[h] = l[h] * corr[h] + row_sum(sum[h]);
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[nb][e] *= corr[e >> 1];
        T* pw = &sp[warp][0][0];
        const float one[2] = {1.f, 1.f};
        store_frag<T, BS>(pw, BS + FA_PAD, s, one, 0, 16);
        __syncwarp();
        warp_mm<T, BS, D>(o, Tile<T>{pw, BS + FA_PAD, 1}, Tile<T>{&sv[0][0], D + FA_PAD, 1});
        __syncwarp();
    }
    const float inv[2] = {1.f / l[0], 1.f / l[1]};
    store_frag<T, D>(out + r0 * D, D, o, inv, r0, tq);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 i = r0 + g + 8 * h;
        if (t == 0 && i < (i64)tq) lse[i] = m[h] + logf(l[h]);
    }
}

// delta[r] = Σ_c dO[r, c]·O[r, c], one warp per row.
template <typename T>
__device__ void fa_delta(const T* dout, const T* out, float* delta, u64 rows, u64 d) {
    const u64 r = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    float acc = 0.f;
    for (u64 c = threadIdx.x & 31; c < d; c += 32) acc += load(dout[r * d + c]) * load(out[r * d + c]);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) delta[r] = acc;
}

// dQ = scale · Σ_j dS_ij K_j with dS = P∘(dP − delta), P recomputed from lse.
template <typename T, int D, int W, int BS>
__device__ void fa_dq(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                      const float* delta, T* dq, u64 tq, u64 tk, float scale, int causal) {
    __shared__ __align__(16) T sq[16 * W][D + FA_PAD];
    __shared__ __align__(16) T sdo[16 * W][D + FA_PAD];
    __shared__ __align__(16) T sk[BS][D + FA_PAD];
    __shared__ __align__(16) T sv[BS][D + FA_PAD];
    __shared__ __align__(16) T sds[W][16][BS + FA_PAD];
    if (blockDim.x != 32 * W) __trap();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const i64 q0 = (i64)blockIdx.y * 16 * W, r0 = q0 + 16 * warp;
    q += bh * tq * D, k += bh * tk * D, v += bh * tk * D, dout += bh * tq * D, dq += bh * tq * D;
    lse += bh * tq, delta += bh * tq;
    load_rows<T, D>(&sq[0][0], q, q0, 16 * W, tq);
    load_rows<T, D>(&sdo[0][0], dout, q0, 16 * W, tq);
    float rl[2], rd[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 i = r0 + g + 8 * h;
        rl[h] = i < (i64)tq ? lse[i] : 0.f;
        rd[h] = i < (i64)tq ? delta[i] : 0.f;
    }
    float acc[D / 8][4] = {};
    const i64 kend = causal ? min((i64)tk, q0 + 16 * W) : (i64)tk;
    for (i64 k0 = 0; k0 < kend; k0 += BS) {
        __syncthreads();
        load_rows<T, D>(&sk[0][0], k, k0, BS, tk);
        load_rows<T, D>(&sv[0][0], v, k0, BS, tk);
        __syncthreads();
        float s[BS / 8][4] = {}, dp[BS / 8][4] = {};
        warp_mm<T, D, BS>(s, Tile<T>{&sq[16 * warp][0], D + FA_PAD, 1}, Tile<T>{&sk[0][0], 1, D + FA_PAD});
        warp_mm<T, D, BS>(dp, Tile<T>{&sdo[16 * warp][0], D + FA_PAD, 1}, Tile<T>{&sv[0][0], 1, D + FA_PAD});
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const i64 i = r0 + g + 8 * (e >> 1), j = k0 + nb * 8 + 2 * t + (e & 1);
                const float p = visible(i, j, tq, tk, causal) ? expf(s[nb][e] * scale - rl[e >> 1]) : 0.f;
                dp[nb][e] = p * (dp[nb][e] - rd[e >> 1]);
            }
        T* dw = &sds[warp][0][0];
        const float one[2] = {1.f, 1.f};
        store_frag<T, BS>(dw, BS + FA_PAD, dp, one, 0, 16);
        __syncwarp();
        warp_mm<T, BS, D>(acc, Tile<T>{dw, BS + FA_PAD, 1}, Tile<T>{&sk[0][0], D + FA_PAD, 1});
        __syncwarp();
    }
    const float mul[2] = {scale, scale};
    store_frag<T, D>(dq + r0 * D, D, acc, mul, r0, tq);
}

// dV = Σ_i Pᵀ_ji dO_i and dK = scale · Σ_i dSᵀ_ji Q_i, per key tile, the scores
// recomputed transposed (Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ).
template <typename T, int D, int W, int BS>
__device__ void fa_dkdv(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                        const float* delta, T* dk, T* dv, u64 tq, u64 tk, float scale, int causal) {
    __shared__ __align__(16) T sk[16 * W][D + FA_PAD];
    __shared__ __align__(16) T sv[16 * W][D + FA_PAD];
    __shared__ __align__(16) T sq[BS][D + FA_PAD];
    __shared__ __align__(16) T sdo[BS][D + FA_PAD];
    __shared__ __align__(16) T sw[W][16][BS + FA_PAD];
    __shared__ float sl[BS], sd[BS];
    if (blockDim.x != 32 * W) __trap();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const i64 k0 = (i64)blockIdx.y * 16 * W, r0 = k0 + 16 * warp;
    q += bh * tq * D, k += bh * tk * D, v += bh * tk * D, dout += bh * tq * D;
    dk += bh * tk * D, dv += bh * tk * D, lse += bh * tq, delta += bh * tq;
    load_rows<T, D>(&sk[0][0], k, k0, 16 * W, tk);
    load_rows<T, D>(&sv[0][0], v, k0, 16 * W, tk);
    float dka[D / 8][4] = {}, dva[D / 8][4] = {};
    // Under the causal mask no query before the block's first key sees any of its keys.
    const i64 qstart = causal ? min(k0, (i64)tq) : 0;
    for (i64 qb = qstart; qb < (i64)tq; qb += BS) {
        __syncthreads();
        load_rows<T, D>(&sq[0][0], q, qb, BS, tq);
        load_rows<T, D>(&sdo[0][0], dout, qb, BS, tq);
        for (int i = threadIdx.x; i < BS; i += blockDim.x) {
            sl[i] = qb + i < (i64)tq ? lse[qb + i] : 0.f;
            sd[i] = qb + i < (i64)tq ? delta[qb + i] : 0.f;
        }
        __syncthreads();
        float s[BS / 8][4] = {}, dp[BS / 8][4] = {};
        warp_mm<T, D, BS>(s, Tile<T>{&sk[16 * warp][0], D + FA_PAD, 1}, Tile<T>{&sq[0][0], 1, D + FA_PAD});
        warp_mm<T, D, BS>(dp, Tile<T>{&sv[16 * warp][0], D + FA_PAD, 1}, Tile<T>{&sdo[0][0], 1, D + FA_PAD});
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = nb * 8 + 2 * t + (e & 1);
                const i64 j = r0 + g + 8 * (e >> 1), i = qb + c;
                const float p = visible(i, j, tq, tk, causal) ? expf(s[nb][e] * scale - sl[c]) : 0.f;
                dp[nb][e] = p * (dp[nb][e] - sd[c]);
                s[nb][e] = p;
            }
        T* pw = &sw[warp][0][0];
        const float one[2] = {1.f, 1.f};
        store_frag<T, BS>(pw, BS + FA_PAD, s, one, 0, 16);
        __syncwarp();
        warp_mm<T, BS, D>(dva, Tile<T>{pw, BS + FA_PAD, 1}, Tile<T>{&sdo[0][0], D + FA_PAD, 1});
        __syncwarp();
        store_frag<T, BS>(pw, BS + FA_PAD, dp, one, 0, 16);
        __syncwarp();
        warp_mm<T, BS, D>(dka, Tile<T>{pw, BS + FA_PAD, 1}, Tile<T>{&sq[0][0], D + FA_PAD, 1});
        __syncwarp();
    }
    const float mul_k[2] = {scale, scale}, one[2] = {1.f, 1.f};
    store_frag<T, D>(dk + r0 * D, D, dka, mul_k, r0, tk);
    store_frag<T, D>(dv + r0 * D, D, dva, one, r0, tk);
}

// Instantiates the kernels of one (dtype, head dim): W warps per block, key tiles of
// BSF rows in the forward and BSB in the backward (sized to 48 KiB of static shared
// memory). The warp counts must match `warps` in crates/engine/src/cuda/flash.rs.
#define FA(S, T, D, W, BSF, BSB)                                                          \
    extern "C" __global__ void __launch_bounds__(32 * W)                                  \
        fa_fwd_##S##_d##D(const T* q, const T* k, const T* v, T* out, float* lse, u64 tq, \
                          u64 tk, float scale, int causal) {                              \
        fa_forward<T, D, W, BSF>(q, k, v, out, lse, tq, tk, scale, causal);               \
    }                                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * W)                                  \
        fa_dq_##S##_d##D(const T* q, const T* k, const T* v, const T* dout,               \
                         const float* lse, const float* delta, T* dq, u64 tq, u64 tk,     \
                         float scale, int causal) {                                       \
        fa_dq<T, D, W, BSB>(q, k, v, dout, lse, delta, dq, tq, tk, scale, causal);        \
    }                                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * W)                                  \
        fa_dkdv_##S##_d##D(const T* q, const T* k, const T* v, const T* dout,             \
                           const float* lse, const float* delta, T* dk, T* dv, u64 tq,    \
                           u64 tk, float scale, int causal) {                             \
        fa_dkdv<T, D, W, BSB>(q, k, v, dout, lse, delta, dk, dv, tq, tk, scale, causal);  \
    }

FA(bf16, bf16, 32, 4, 64, 64)
FA(bf16, bf16, 64, 4, 64, 64)
FA(bf16, bf16, 128, 4, 32, 16)
FA(f16, f16, 32, 4, 64, 64)
FA(f16, f16, 64, 4, 64, 64)
FA(f16, f16, 128, 4, 32, 16)
FA(f32, float, 32, 2, 32, 32)
FA(f32, float, 64, 2, 32, 32)
FA(f32, float, 128, 1, 16, 16)

#define FA_DELTA(S, T)                                                                    \
    extern "C" __global__ void fa_delta_##S(const T* dout, const T* out, float* delta,    \
                                            u64 rows, u64 d) {                            \
        fa_delta<T>(dout, out, delta, rows, d);                                           \
    }
FA_DELTA(bf16, bf16)
FA_DELTA(f16, f16)
FA_DELTA(f32, float)
