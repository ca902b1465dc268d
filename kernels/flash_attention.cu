// Fused scaled-dot-product attention, FlashAttention-2 style (crates/engine/src/cuda/
// flash.rs). The inputs q, k, v and dO are read in place as [b, h, t, D] views with
// contiguous rows (`Rows`: head-split views of a [b, t, h, D] product need no copy);
// out, dQ, dK and dV are written where their own `Rows` say (flash.rs stores them
// token-major, [b, t, h, D], so that merging the heads back needs no copy either); lse
// and delta are f32 [bh, tq], lse the natural-log log-sum-exp of the scaled scores of a
// row. With `causal`, key j is masked for query i when j > i (top-left aligned).
//
// Forward: online softmax over key tiles; only out and lse are written. Backward:
// delta = rowsum(dO∘O), then two kernels that recompute the scores tile by tile from
// lse: one per query tile writes dQ, one per key tile writes dK and dV. No atomics, so
// results are identical run to run. JVP (forward mode): the forward and the output's
// tangent along tangents of q, k and v in one pass over the keys (fa_jvp_*), out and
// lse written as the forward writes them.
//
// Two implementations share the file:
// - bf16/f16 (the one that matters for speed): tensor cores (mma.sync m16n8k16, f32
//   accumulation), tiles brought in with 16-byte cp.async and double-buffered, operands
//   read with ldmatrix from padded shared rows, P and dS kept in registers (the
//   accumulator fragment of one product is the A fragment of the next), softmax in
//   base 2 (ex2), dynamic shared memory sized by the host.
// - f32: the plain version (f32 FMAs in the tensor-core fragment layout, element loads,
//   static shared memory), kept simple because f32 attention is the reference dtype,
//   not the fast path.
//
// Lengths are below 2^31 (flash.rs caps the grid at 65535 tiles of ≤ 128 rows), so row
// and key positions are ints; element offsets into the tensors are 64-bit.
#include "common.cuh"
#include "flash_common.cuh"

// ======================= bf16 / f16: tensor cores =======================
//
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 loads four 8×8 matrices: lane
// 8i + r gives the shared address of row r of matrix i (8 contiguous 16-bit elements,
// 16-byte aligned), and register i of lane 4g + t receives, of matrix i, the elements
// (row g, cols 2t, 2t+1) — or with .trans (rows 2t, 2t+1, col g) — the lower index in
// the low half. Each product below states which matrix each quarter-warp addresses.

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1);
template <>
__device__ __forceinline__ void mma16816<bf16>(float (&c)[4], const unsigned (&a)[4],
                                               unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<f16>(float (&c)[4], const unsigned (&a)[4],
                                              unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- shared tiles ----
// Every shared tile of a kernel holds rows of D elements at a row stride of
// LD = D + FA_PAD elements; `base` arguments are shared-window byte addresses of a
// tile's element (0, 0) (16-byte aligned: the dynamic window is, and every tile offset
// and the row stride 2·LD are multiples of 16 bytes).

// Byte offsets, from a tile's (0, 0), of the row this lane addresses in an ldmatrix.x4:
// A operand: rows 0..16 × cols 0..16 of a row-major [row][k] tile. Lanes 0-7 → matrix 0
//   = (rows 0-7, cols 0-7) → a0; lanes 8-15 → (rows 8-15, cols 0-7) → a1; lanes 16-23
//   → (rows 0-7, cols 8-15) → a2; lanes 24-31 → (rows 8-15, cols 8-15) → a3: matrix i's
//   (row g, cols 2t, 2t+1) is exactly a_i's (row, cols).
template <int LD> __device__ __forceinline__ unsigned a_lane(int lane) {
    return ((lane & 15) * LD + ((lane >> 4) << 3)) * 2;
}
// B operand for two 8-column blocks n0 = 0, 8, from a tile stored [n][k] (B = tileᵀ:
//   K for Q·Kᵀ, V for dO·Vᵀ, Q for K·Qᵀ, dO for V·dOᵀ): lanes 0-7 → (n 0-7, k 0-7),
//   lanes 8-15 → (n 0-7, k 8-15), lanes 16-23 → (n 8-15, k 0-7), lanes 24-31 →
//   (n 8-15, k 8-15). Without .trans matrix i gives lane (g, t) tile[n0 + g][k0 + 2t..]
//   = B(k0 + 2t.., n0 + g): r0, r1 = b0, b1 of n-block 0; r2, r3 = b0, b1 of n-block 1.
template <int LD> __device__ __forceinline__ unsigned bnk_lane(int lane) {
    return (((lane & 7) + ((lane >> 4) << 3)) * LD + (((lane >> 3) & 1) << 3)) * 2;
}
// B operand for two 8-column blocks, from a tile stored [k][n] (B = tile: V for P·V,
//   K for dS·K, dO for Pᵀ·dO, Q for dSᵀ·Q): lanes 0-7 → (k 0-7, n 0-7), lanes 8-15 →
//   (k 8-15, n 0-7), lanes 16-23 → (k 0-7, n 8-15), lanes 24-31 → (k 8-15, n 8-15).
//   With .trans matrix i gives lane (g, t) tile[k0 + 2t..][n0 + g] = B(k0 + 2t.., n0 + g):
//   again r0, r1 = b0, b1 of n-block 0; r2, r3 = b0, b1 of n-block 1.
template <int LD> __device__ __forceinline__ unsigned bkn_lane(int lane) {
    return (((lane & 7) + (((lane >> 3) & 1) << 3)) * LD + ((lane >> 4) << 3)) * 2;
}

// A fragments of rows 16m.. of a [row][k] tile, every k-slice: a[m][ks] for m < MT,
// ks < K/16. `a` includes this lane's a_lane offset.
template <int MT, int K, int LD>
__device__ __forceinline__ void load_a(unsigned (&f)[MT][K / 16][4], unsigned a) {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int ks = 0; ks < K / 16; ++ks) ldsm_x4(f[m][ks], a + (16 * m * LD + 16 * ks) * 2);
}

// c[m] (16×N) += A_m (16×K) · B, B = tileᵀ of a [n][k] tile at `b` (with this lane's
// bnk_lane offset), A from registers.
template <typename T, int MT, int K, int N, int LD>
__device__ __forceinline__ void mma_rs_nk(float (&c)[MT][N / 8][4],
                                          const unsigned (&a)[MT][K / 16][4], unsigned b) {
#pragma unroll
    for (int ks = 0; ks < K / 16; ++ks)
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            unsigned f[4];
            ldsm_x4(f, b + (16 * np * LD + 16 * ks) * 2);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                mma16816<T>(c[m][2 * np], a[m][ks], f[0], f[1]);
                mma16816<T>(c[m][2 * np + 1], a[m][ks], f[2], f[3]);
            }
        }
}

// The same with A read from shared memory a k-slice at a time (`a`: the warp's first
// row, with this lane's a_lane offset), where holding all of A would cost too many
// registers.
template <typename T, int MT, int K, int N, int LD>
__device__ __forceinline__ void mma_ss_nk(float (&c)[MT][N / 8][4], unsigned a, unsigned b) {
#pragma unroll
    for (int ks = 0; ks < K / 16; ++ks) {
        unsigned af[MT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m) ldsm_x4(af[m], a + (16 * m * LD + 16 * ks) * 2);
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            unsigned f[4];
            ldsm_x4(f, b + (16 * np * LD + 16 * ks) * 2);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                mma16816<T>(c[m][2 * np], af[m], f[0], f[1]);
                mma16816<T>(c[m][2 * np + 1], af[m], f[2], f[3]);
            }
        }
    }
}

// c[m] (16×N) += A_m (16×K) · B, B = a [k][n] tile at `b` (with this lane's bkn_lane
// offset, read with .trans), A from registers.
template <typename T, int MT, int K, int N, int LD>
__device__ __forceinline__ void mma_rs_kn(float (&c)[MT][N / 8][4],
                                          const unsigned (&a)[MT][K / 16][4], unsigned b) {
#pragma unroll
    for (int ks = 0; ks < K / 16; ++ks)
#pragma unroll
        for (int np = 0; np < N / 16; ++np) {
            unsigned f[4];
            ldsm_x4_t(f, b + (16 * ks * LD + 16 * np) * 2);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                mma16816<T>(c[m][2 * np], a[m][ks], f[0], f[1]);
                mma16816<T>(c[m][2 * np + 1], a[m][ks], f[2], f[3]);
            }
        }
}

// Rows [row0, row0 + R) of the [n, D] matrix `src` (row stride `ld` elements) into the
// shared tile at `dst`, by all NT threads in 16-byte chunks: a row has CPR = D/8
// chunks, and thread x copies chunk x % CPR of rows x / CPR + i·(NT/CPR) (consecutive
// threads read consecutive 16 bytes of a row: coalesced; the column is the same for
// every i, so a thread needs one pointer and fixed offsets). Rows ≥ n are zero-filled
// (the source address is then the matrix's first row, valid as n ≥ 1, and not read).
// Asynchronous: complete after cp_async_wait_all + __syncthreads.
template <typename T, int D, int R, int NT>
__device__ __forceinline__ void cp_tile(unsigned dst, const T* src, u64 ld, int row0, int n) {
    constexpr int CPR = D / 8, LD = D + FA_PAD, STEP = NT / CPR;
    static_assert(NT % CPR == 0 && R % STEP == 0, "tile chunks must divide among the threads");
    const int tr = threadIdx.x / CPR, col = threadIdx.x % CPR * 8;
    const T* s = src + (u64)(row0 + tr) * ld + col;
    dst += (tr * LD + col) * 2;
#pragma unroll
    for (int i = 0; i < R / STEP; ++i) {
        const bool in = row0 + tr + i * STEP < n;
        cp_async16(dst + i * STEP * LD * 2, in ? s + (u64)(i * STEP) * ld : src, in);
    }
}

// The step that opens iteration j of a loop over key tiles streamed through two shared
// stages (stage s: K at stages + 2s·TILE, V one TILE on): waits until tile j has landed
// (this thread's copies; the barrier publishes everyone's) and every warp is done with
// tile j−1, then starts copying tile j+1 into that freed stage. The commit makes an
// empty group past the last tile, so every iteration waits on the same count.
template <typename T, int D, int BS, int NT>
__device__ __forceinline__ void next_kv_tile(unsigned stages, int j, int ntiles, const T* k,
                                             Rows kr, const T* v, Rows vr, int nk) {
    constexpr int TILE = BS * (D + FA_PAD) * 2;
    cp_async_wait_all();
    __syncthreads();
    if (j + 1 < ntiles) {
        const unsigned next = stages + 2 * ((j + 1) & 1) * TILE;
        cp_tile<T, D, BS, NT>(next, k, kr.row, (j + 1) * BS, nk);
        cp_tile<T, D, BS, NT>(next + TILE, v, vr.row, (j + 1) * BS, nk);
    }
    cp_async_commit();
}

// Shared bytes of each kernel (the `smem` formulas of flash.rs).
template <int D, int M, int BS, bool QREG> struct FwdSmem {
    // Two stages of (K, V) tiles. With QREG, Q (M rows) is first brought into stage 1
    // and moved to registers before stage 1 is refilled, so it needs room only beyond
    // 2·BS rows; without, Q stays resident in M rows of its own ahead of the stages.
    static constexpr int ROWS = QREG ? 2 * BS + (M > 2 * BS ? M : 2 * BS) : M + 4 * BS;
    static constexpr unsigned BYTES = ROWS * (D + FA_PAD) * 2;
};
template <int D, int M, int BS> struct BwdSmem {
    // The block's two resident M-row tiles and two stages of two BS-row tiles, then (dK/
    // dV only) two stages of BS lse and BS delta values.
    static constexpr int ROWS = 2 * M + 4 * BS;
    static constexpr unsigned TILES = ROWS * (D + FA_PAD) * 2;
    static constexpr unsigned BYTES_DQ = TILES;
    static constexpr unsigned BYTES_DKDV = TILES + 4 * BS * 4;
    // The single-pass backward adds the dSᵀ tile: M keys by BS queries, rows padded.
    static constexpr unsigned BYTES_BWD = BYTES_DKDV + M * (BS + FA_PAD) * 2;
};

// Forward. A block of W warps owns M = 16·MT·W query rows; warp w owns rows
// 16·MT·w + 16m + {g, g+8} (m < MT). With QREG its Q fragments are loaded once into
// registers; without, Q stays in shared memory and S = Q·Kᵀ reads it a k-slice at a
// time (at d = 128, where Q's 64 registers a thread go to a second m-tile instead: see
// FA_TC). K and V tiles of BS keys stream through two shared stages (tile j+1 is copied
// while tile j is computed). Per tile: S = Q·Kᵀ (B = K tile as [n][k]), scaled to log2
// units and masked, the online softmax (running max m in log2 units, per-lane partial
// row sums l), then O += P·V with P packed from S's registers (B = V tile as [k][n]).
template <typename T, int D, int MT, int W, int BS, bool QREG>
__device__ void fa_forward_tc(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                              T* out, Rows outr, float* lse, u64 tq, u64 tk, float scale,
                              int causal) {
    constexpr int LD = D + FA_PAD, M = 16 * MT * W, NT = 32 * W, TILE = BS * LD * 2;
    static_assert(BS % 16 == 0 && D % 16 == 0, "tiles are whole 16×16 fragments");
    // The output rows are staged through the first M rows of the window at the end.
    static_assert(M <= FwdSmem<D, M, BS, QREG>::ROWS, "output rows fit the shared window");
    const int nq = (int)tq, nk = (int)tk;
    check_launch<W, M>(FwdSmem<D, M, BS, QREG>::BYTES, nq);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const int q0 = blockIdx.y * M, r0 = q0 + 16 * MT * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), out += outr.start(bh);
    lse += bh * tq;
    // Stage s: K at stages + 2s·TILE, V one TILE on. With QREG the stages start at byte 0
    // and Q arrives at stage 1's K; without, Q is at byte 0 and the stages M rows on.
    const unsigned base = smem_addr(fa_smem), stages = QREG ? base : base + M * LD * 2;
    const unsigned sq = QREG ? base + 2 * TILE : base;
    // Under the causal mask no query of this block sees a key past its last query.
    const int kend = causal ? min(nk, q0 + M) : nk, ntiles = (kend + BS - 1) / BS;
    cp_tile<T, D, M, NT>(sq, q, qr.row, q0, nq);
    cp_tile<T, D, BS, NT>(stages, k, kr.row, 0, nk);
    cp_tile<T, D, BS, NT>(stages + TILE, v, vr.row, 0, nk);
    cp_async_commit();
    const unsigned aq = sq + 16 * MT * warp * LD * 2 + a_lane<LD>(lane);
    unsigned qf[QREG ? MT : 1][QREG ? D / 16 : 1][4];
    if constexpr (QREG) {
        cp_async_wait_all();
        __syncthreads();
        load_a<MT, D, LD>(qf, aq);
    }
    const float sl2 = scale * FA_LOG2E;
    float mrow[MT][2], lrow[MT][2] = {}, o[MT][D / 8][4] = {};
#pragma unroll
    for (int m = 0; m < MT; ++m) mrow[m][0] = mrow[m][1] = FA_NEG_INF;
    for (int j = 0; j < ntiles; ++j) {
        const int k0 = j * BS;
        const unsigned sk = stages + 2 * (j & 1) * TILE, sv = sk + TILE;
        // For j = 0 the barrier also means, with QREG, that every warp is done reading Q
        // out of stage 1, and without, that Q has landed.
        next_kv_tile<T, D, BS, NT>(stages, j, ntiles, k, kr, v, vr, nk);
        // Under the causal mask a warp whose last row precedes the tile's first key
        // sees none of it (warp-uniform: the collectives below stay whole-warp).
        if (causal && k0 > r0 + 16 * MT - 1) continue;
        float s[MT][BS / 8][4] = {};
        if constexpr (QREG)
            mma_rs_nk<T, MT, D, BS, LD>(s, qf, sk + bnk_lane<LD>(lane));
        else
            mma_ss_nk<T, MT, D, BS, LD>(s, aq, sk + bnk_lane<LD>(lane));
        // Scale before masking: any sign of scale keeps the mask at −inf.
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[m][nb][e] *= sl2;
        // Element (m, nb, e) is query r0 + 16m + g + 8(e/2), key k0 + 8nb + 2t + e%2.
        // Masking is needed only for keys ≥ tk or keys past the warp's first row (rows
        // ≥ tq need none: their Q rows are zeros, their outputs are not stored).
        if (k0 + BS > nk || (causal && k0 + BS - 1 > r0)) {
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = r0 + 16 * m + g + 8 * (e >> 1), kj = k0 + 8 * nb + 2 * t + (e & 1);
                        if (kj >= nk || (causal && kj > i)) s[m][nb][e] = FA_NEG_INF;
                    }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = mrow[m][h];
#pragma unroll
                for (int nb = 0; nb < BS / 8; ++nb)
                    mx = fmaxf(mx, fmaxf(s[m][nb][2 * h], s[m][nb][2 * h + 1]));
                mx = row_max(mx);
                // A row with every key so far masked keeps 0 as its reference (no ∞ − ∞);
                // ex2(−inf) = 0 then zeroes the (empty) history.
                const float ref = mx == FA_NEG_INF ? 0.f : mx, corr = ex2(mrow[m][h] - ref);
                mrow[m][h] = mx;
                float sum = 0.f;
#pragma unroll
                for (int nb = 0; nb < BS / 8; ++nb) {
                    s[m][nb][2 * h] = ex2(s[m][nb][2 * h] - ref);
                    s[m][nb][2 * h + 1] = ex2(s[m][nb][2 * h + 1] - ref);
                    sum += s[m][nb][2 * h] + s[m][nb][2 * h + 1];
                }
                // Each lane sums its own columns; corr is the same on the row's 4 lanes,
                // so the partial sums are combined once, after the last tile.
                lrow[m][h] = lrow[m][h] * corr + sum;
#pragma unroll
                for (int nb = 0; nb < D / 8; ++nb) {
                    o[m][nb][2 * h] *= corr;
                    o[m][nb][2 * h + 1] *= corr;
                }
            }
        unsigned pf[MT][BS / 16][4];
        pack_a<T, MT, BS>(pf, s);
        mma_rs_kn<T, MT, BS, D, LD>(o, pf, sv + bkn_lane<LD>(lane));
    }
    // Every warp is done with the shared window before the output goes through its first
    // M rows (stages with QREG, Q without), warp w through rows 16·MT·w.. of them.
    cp_async_wait_all();
    __syncthreads();
    float inv[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float l = row_sum(lrow[m][h]);
            inv[m][h] = 1.f / l;
            // Natural-log lse from the base-2 running max: ln Σ e^(s·scale) =
            // ln 2 · m + ln l, with m = max s·scale·log2(e) and l = Σ 2^(s·scale·log2 e − m).
            const int i = r0 + 16 * m + g + 8 * h;
            if (t == 0 && i < nq) lse[i] = mrow[m][h] * FA_LN2 + logf(l);
        }
    T* st = reinterpret_cast<T*>(fa_smem) + 16 * MT * warp * LD;
    store_rows<T, D, MT>(out, outr.row, o, inv, st, r0, nq);
}

// dQ = scale · Σ_j dS_ij K_j with dS = P∘(dP − delta), dP = dO·Vᵀ, P recomputed from lse.
// A block of W warps owns M = 16·MT·W query rows; Q and dO stay in shared memory (in
// registers too when QREG), K and V tiles of BS keys stream through two stages. dS goes
// from the accumulator registers straight into dS·K (B = K tile as [k][n]).
template <typename T, int D, int MT, int W, int BS, bool QREG>
__device__ void fa_dq_tc(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                         const T* dout, Rows dr, const float* lse, const float* delta, T* dq,
                         Rows dqr, u64 tq, u64 tk, float scale, int causal) {
    constexpr int LD = D + FA_PAD, M = 16 * MT * W, NT = 32 * W, TILE = BS * LD * 2;
    const int nq = (int)tq, nk = (int)tk;
    check_launch<W, M>(BwdSmem<D, M, BS>::BYTES_DQ, nq);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const int q0 = blockIdx.y * M, r0 = q0 + 16 * MT * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), dout += dr.start(bh);
    dq += dqr.start(bh), lse += bh * tq, delta += bh * tq;
    // Q at byte 0, dO at M·LD·2, then stage s: K at 2M·LD·2 + 2s·TILE, V one TILE on.
    const unsigned base = smem_addr(fa_smem), sq = base, sdo = base + M * LD * 2;
    const unsigned stages = base + 2 * M * LD * 2;
    const int kend = causal ? min(nk, q0 + M) : nk, ntiles = (kend + BS - 1) / BS;
    cp_tile<T, D, M, NT>(sq, q, qr.row, q0, nq);
    cp_tile<T, D, M, NT>(sdo, dout, dr.row, q0, nq);
    cp_tile<T, D, BS, NT>(stages, k, kr.row, 0, nk);
    cp_tile<T, D, BS, NT>(stages + TILE, v, vr.row, 0, nk);
    cp_async_commit();
    // lse in log2 units (P = e^(s·scale − lse) = 2^(s·scale·log2 e − lse·log2 e)) and
    // delta of the lane's rows; rows ≥ tq get 0 (their dQ is not stored).
    float l2[MT][2], dl[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int i = r0 + 16 * m + g + 8 * h;
            l2[m][h] = i < nq ? lse[i] * FA_LOG2E : 0.f;
            dl[m][h] = i < nq ? delta[i] : 0.f;
        }
    const unsigned aq = sq + 16 * MT * warp * LD * 2 + a_lane<LD>(lane);
    const unsigned ado = sdo + 16 * MT * warp * LD * 2 + a_lane<LD>(lane);
    // With QREG, Q's and dO's fragments are read once (the loop's first barrier is then
    // a no-op wait); otherwise a k-slice at a time in each product.
    unsigned qf[QREG ? MT : 1][QREG ? D / 16 : 1][4], dof[QREG ? MT : 1][QREG ? D / 16 : 1][4];
    if constexpr (QREG) {
        cp_async_wait_all();
        __syncthreads();
        load_a<MT, D, LD>(qf, aq);
        load_a<MT, D, LD>(dof, ado);
    }
    const float sl2 = scale * FA_LOG2E;
    float acc[MT][D / 8][4] = {};
    for (int j = 0; j < ntiles; ++j) {
        const int k0 = j * BS;
        const unsigned sk = stages + 2 * (j & 1) * TILE, sv = sk + TILE;
        // At j = 0 Q and dO have landed too.
        next_kv_tile<T, D, BS, NT>(stages, j, ntiles, k, kr, v, vr, nk);
        if (causal && k0 > r0 + 16 * MT - 1) continue;
        float s[MT][BS / 8][4] = {}, dp[MT][BS / 8][4] = {};
        if constexpr (QREG) {
            mma_rs_nk<T, MT, D, BS, LD>(s, qf, sk + bnk_lane<LD>(lane));
            mma_rs_nk<T, MT, D, BS, LD>(dp, dof, sv + bnk_lane<LD>(lane));
        } else {
            mma_ss_nk<T, MT, D, BS, LD>(s, aq, sk + bnk_lane<LD>(lane));
            mma_ss_nk<T, MT, D, BS, LD>(dp, ado, sv + bnk_lane<LD>(lane));
        }
        // Element (m, nb, e): query r0 + 16m + g + 8(e/2), key k0 + 8nb + 2t + e%2.
        const bool full = k0 + BS <= nk && !(causal && k0 + BS - 1 > r0);
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int h = e >> 1, i = r0 + 16 * m + g + 8 * h, kj = k0 + 8 * nb + 2 * t + (e & 1);
                    float p = ex2(s[m][nb][e] * sl2 - l2[m][h]);
                    if (!full && (kj >= nk || (causal && kj > i))) p = 0.f;
                    dp[m][nb][e] = p * (dp[m][nb][e] - dl[m][h]);
                }
        unsigned df[MT][BS / 16][4];
        pack_a<T, MT, BS>(df, dp);
        mma_rs_kn<T, MT, BS, D, LD>(acc, df, sk + bkn_lane<LD>(lane));
    }
    cp_async_wait_all();
    __syncthreads();
    float mul[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m) mul[m][0] = mul[m][1] = scale;
    T* st = reinterpret_cast<T*>(fa_smem) + 16 * MT * warp * LD;
    store_rows<T, D, MT>(dq, dqr.row, acc, mul, st, r0, nq);
}

// A warp's dSᵀ accumulator (its keys as rows from `row0`, the tile's queries as
// columns) into the shared dSᵀ tile `sds` (row stride BS + FA_PAD), rounded to T.
template <typename T, int MT, int BS>
__device__ __forceinline__ void store_ds(T* sds, const float (&dp)[MT][BS / 8][4], int row0) {
    constexpr int LDS = BS + FA_PAD;
    float one[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m) one[m][0] = one[m][1] = 1.f;
    stage_rows<T, BS, MT>(sds + row0 * LDS, LDS, dp, one);
}

// The single-pass backward's share of dQ from one query tile: part[qb + i] += Σ_j dS_ij K_j
// over the block's M keys, for the tile's BS queries (unscaled; fa_dq_sum scales). Every
// warp's dSᵀ rows are in the shared tile at `sds` (keys × queries). Warp w takes the 16
// queries of m-tile w % (BS/16) and the CW columns of group w / (BS/16). A = dS, the
// tile transposed: ldmatrix.trans with bnk_lane offsets gives the A fragment of a tile
// stored [k][m] (matrix i covers keys 8·(i/2).. and queries 8·(i%2)..); B = the resident
// K as [k][n] (bkn_lane, .trans, as mma_rs_kn). `part` is this block's split of dQ in
// f32: no other block writes it, and each element is added to by one lane, in the order
// of the block's key blocks (a thread's adds to one address take effect in program
// order), so the sums are the same every run.
template <typename T, int D, int M, int W, int BS>
__device__ __forceinline__ void dq_share(float* part, unsigned sds, unsigned sk, int qb, int nq) {
    constexpr int LD = D + FA_PAD, LDS = BS + FA_PAD, MQ = BS / 16, CW = D / (W / MQ);
    // Columns a pass: 32 at most, so that at d = 128 (64 columns a warp) the
    // accumulator fits beside dK's and dV's without spilling.
    constexpr int CC = CW < 32 ? CW : 32;
    static_assert(W % MQ == 0 && CW % CC == 0 && CC % 16 == 0, "the warps share a tile's dQ evenly");
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int mq = warp % MQ;
    const unsigned a = sds + bnk_lane<LDS>(lane) + 16 * mq * 2;
#pragma unroll
    for (int c0 = warp / MQ * CW; c0 < (warp / MQ + 1) * CW; c0 += CC) {
        const unsigned b = sk + bkn_lane<LD>(lane) + c0 * 2;
        float acc[CC / 8][4] = {};
#pragma unroll
        for (int ks = 0; ks < M / 16; ++ks) {
            unsigned af[4];
            ldsm_x4_t(af, a + 16 * ks * LDS * 2);
#pragma unroll
            for (int np = 0; np < CC / 16; ++np) {
                unsigned f[4];
                ldsm_x4_t(f, b + (16 * ks * LD + 16 * np) * 2);
                mma16816<T>(acc[2 * np], af, f[0], f[1]);
                mma16816<T>(acc[2 * np + 1], af, f[2], f[3]);
            }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int i = qb + 16 * mq + g + 8 * h;
            if (i >= nq) continue;
            float* row = part + (u64)i * D + c0 + 2 * t;
            // Reductions performed at L2 (the sums are not read back), so that a warp does
            // not stall on memory here: a block revisits its part's tile only after a
            // sweep over every query tile, long after L2 has let it go. One writer per
            // element, in program order: still the same sums every run.
#pragma unroll
            for (int nb = 0; nb < CC / 8; ++nb) {
                atomicAdd(row + 8 * nb, acc[nb][2 * h]);
                atomicAdd(row + 8 * nb + 1, acc[nb][2 * h + 1]);
            }
        }
    }
}

// dV = Σ_i Pᵀ_ji dO_i and dK = scale · Σ_i dSᵀ_ji Q_i for the M = 16·MT·W keys from k0,
// by a block of W warps (K and V resident in shared memory); Q and dO tiles of BS
// queries, with their lse and delta, stream through two stages. The scores are
// recomputed transposed (Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, B = Q and dO tiles as [n][k]), so Pᵀ and
// dSᵀ come out with keys as rows: exactly the A operand of Pᵀ·dO and dSᵀ·Q (B = dO and Q
// tiles as [k][n]), which then need neither a transpose nor shared memory. With DQ (the
// single-pass backward), each tile's dSᵀ also goes through shared memory into its share
// of dQ (dq_share, into `dq_part`), so that no other kernel recomputes the scores.
template <typename T, int D, int MT, int W, int BS, bool DQ>
__device__ void dkdv_block(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                           const T* dout, Rows dr, const float* lse, const float* delta, T* dk,
                           T* dv, Rows dkvr, float* dq_part, u64 tq, u64 tk, float scale,
                           int causal, int k0) {
    constexpr int LD = D + FA_PAD, M = 16 * MT * W, NT = 32 * W, TILE = BS * LD * 2;
    static_assert(2 * BS <= NT, "one thread per lse and delta value of a tile");
    const int nq = (int)tq, nk = (int)tk;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const int r0 = k0 + 16 * MT * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), dout += dr.start(bh);
    lse += bh * tq, delta += bh * tq;
    // K at byte 0, V at M·LD·2; stage s: Q at 2M·LD·2 + 2s·TILE, dO one TILE on; then
    // stage s's lse (BS f32) at 2M·LD·2 + 4·TILE + 2s·BS·4, its delta BS·4 on.
    const unsigned base = smem_addr(fa_smem), sk = base, sv = base + M * LD * 2;
    const unsigned stages = base + 2 * M * LD * 2, rows = stages + 4 * TILE;
    const float* srows = reinterpret_cast<const float*>(fa_smem + 2 * M * LD * 2 + 4 * TILE);
    // With DQ, the dSᵀ tile after the stages' lse and delta.
    T* sds = reinterpret_cast<T*>(fa_smem + 2 * M * LD * 2 + 4 * TILE + 4 * BS * 4);
    // Under the causal mask no query before the block's first key sees any of its keys.
    const int qs = causal ? min(k0, nq) : 0, ntiles = (nq - qs + BS - 1) / BS;
    // One group: K, V and the first query tile.
    auto issue = [&](int qb, int stage) {
        const unsigned sq = stages + 2 * stage * TILE;
        cp_tile<T, D, BS, NT>(sq, q, qr.row, qb, nq);
        cp_tile<T, D, BS, NT>(sq + TILE, dout, dr.row, qb, nq);
        cp_lse_delta<BS>(rows + 2 * stage * BS * 4, lse, delta, qb, nq);
    };
    cp_tile<T, D, M, NT>(sk, k, kr.row, k0, nk);
    cp_tile<T, D, M, NT>(sv, v, vr.row, k0, nk);
    if (ntiles > 0) issue(qs, 0);
    cp_async_commit();
    const unsigned ak = sk + 16 * MT * warp * LD * 2 + a_lane<LD>(lane);
    const unsigned av = sv + 16 * MT * warp * LD * 2 + a_lane<LD>(lane);
    const float sl2 = scale * FA_LOG2E;
    float dka[MT][D / 8][4] = {}, dva[MT][D / 8][4] = {};
    for (int j = 0; j < ntiles; ++j) {
        const int qb = qs + j * BS, stage = j & 1;
        const unsigned sq = stages + 2 * stage * TILE, sdo = sq + TILE;
        const float* sl = srows + 2 * stage * BS;
        const float* sd = sl + BS;
        cp_async_wait_all();
        __syncthreads();
        if (j + 1 < ntiles) issue(qb + BS, stage ^ 1);
        cp_async_commit();
        float dp[MT][BS / 8][4] = {};
        // Every key of this warp comes after every query of the tile: all masked (dS = 0).
        if (!(causal && r0 > qb + BS - 1)) {
            float s[MT][BS / 8][4] = {};
            mma_ss_nk<T, MT, D, BS, LD>(s, ak, sq + bnk_lane<LD>(lane));
            mma_ss_nk<T, MT, D, BS, LD>(dp, av, sdo + bnk_lane<LD>(lane));
            // Element (m, nb, e): key r0 + 16m + g + 8(e/2) (row), query qb + 8nb + 2t + e%2
            // (column); its lse and delta are shared[col], read as one 8-byte pair.
            const bool full = qb + BS <= nq && !(causal && r0 + 16 * MT - 1 > qb);
#pragma unroll
            for (int nb = 0; nb < BS / 8; ++nb) {
                const int c = 8 * nb + 2 * t;
                const float2 lv = *reinterpret_cast<const float2*>(sl + c);
                const float2 dlv = *reinterpret_cast<const float2*>(sd + c);
                const float lc[2] = {lv.x * FA_LOG2E, lv.y * FA_LOG2E}, dc[2] = {dlv.x, dlv.y};
#pragma unroll
                for (int m = 0; m < MT; ++m)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int kj = r0 + 16 * m + g + 8 * (e >> 1), i = qb + c + (e & 1);
                        float p = ex2(s[m][nb][e] * sl2 - lc[e & 1]);
                        if (!full && (i >= nq || (causal && kj > i))) p = 0.f;
                        s[m][nb][e] = p;
                        dp[m][nb][e] = p * (dp[m][nb][e] - dc[e & 1]);
                    }
            }
            // dSᵀ out to shared memory now, while dp is live anyway (stored after the
            // products, it would stay live through them and spill at d = 128).
            if constexpr (DQ) store_ds<T, MT, BS>(sds, dp, 16 * MT * warp);
            unsigned af[MT][BS / 16][4];
            pack_a<T, MT, BS>(af, s);
            mma_rs_kn<T, MT, BS, D, LD>(dva, af, sdo + bkn_lane<LD>(lane));
            pack_a<T, MT, BS>(af, dp);
            mma_rs_kn<T, MT, BS, D, LD>(dka, af, sq + bkn_lane<LD>(lane));
        } else if constexpr (DQ) {
            store_ds<T, MT, BS>(sds, dp, 16 * MT * warp);
        }
        if constexpr (DQ) {
            // Every warp's rows are in; the next tile's opening barrier keeps the tile
            // until every warp has read it.
            __syncthreads();
            dq_share<T, D, M, W, BS>(dq_part, smem_addr(sds), sk, qb, nq);
        }
    }
    cp_async_wait_all();
    __syncthreads();
    float mk[MT][2], mv[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m) mk[m][0] = mk[m][1] = scale, mv[m][0] = mv[m][1] = 1.f;
    // The warp's own rows of the K and V tiles are free scratch now.
    T* st = reinterpret_cast<T*>(fa_smem) + 16 * MT * warp * LD;
    // The output pointers only now: at d = 128 this kernel is at the register limit.
    dk += dkvr.start(bh), dv += dkvr.start(bh);
    store_rows<T, D, MT>(dk, dkvr.row, dka, mk, st, r0, nk);
    store_rows<T, D, MT>(dv, dkvr.row, dva, mv, st + M * LD, r0, nk);
}

// The dK/dV kernel of the two-kernel backward: a block per key block.
template <typename T, int D, int MT, int W, int BS>
__device__ void fa_dkdv_tc(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                           const T* dout, Rows dr, const float* lse, const float* delta, T* dk,
                           T* dv, Rows dkvr, u64 tq, u64 tk, float scale, int causal) {
    constexpr int M = 16 * MT * W;
    check_launch<W, M>(BwdSmem<D, M, BS>::BYTES_DKDV, (int)tk);
    dkdv_block<T, D, MT, W, BS, false>(q, qr, k, kr, v, vr, dout, dr, lse, delta, dk, dv, dkvr,
                                       nullptr, tq, tk, scale, causal, blockIdx.y * M);
}

// The single-pass backward: dK, dV and the shares of dQ in one pass over the scores.
// gridDim.y splits per head; the block of split y takes key blocks y, y + splits, … in
// turn, adding their dQ shares to its own f32 part of dq_parts ([splits][b·h][tq][D],
// zeroed by the host), which fa_dq_sum then adds up in split order. One writer per
// element and a fixed order: results are the same every run on a given device and
// launch shape.
template <typename T, int D, int MT, int W, int BS>
__device__ void fa_bwd_tc(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                          const T* dout, Rows dr, const float* lse, const float* delta, T* dk,
                          T* dv, Rows dkvr, float* dq_parts, u64 tq, u64 tk, float scale,
                          int causal) {
    constexpr int M = 16 * MT * W;
    if (blockDim.x != 32 * W || dynamic_smem_bytes() < BwdSmem<D, M, BS>::BYTES_BWD) __trap();
    float* part = dq_parts + ((u64)blockIdx.y * gridDim.x + blockIdx.x) * tq * D;
    for (int kb = blockIdx.y; kb * M < (int)tk; kb += gridDim.y) {
        dkdv_block<T, D, MT, W, BS, true>(q, qr, k, kr, v, vr, dout, dr, lse, delta, dk, dv,
                                          dkvr, part, tq, tk, scale, causal, kb * M);
        // The next key block's K and V overwrite rows the warps just stored from.
        __syncthreads();
    }
}

// dQ of the single-pass backward: scale · Σ_s parts[s], in split order, rounded to T and
// stored where `dqr` says. A warp per row of d values (the row's place worked out once,
// its 64-bit divisions shared by the row's values), a lane per pair of values (d even):
// reads and writes coalesced along the row.
template <typename T>
__device__ void fa_dq_sum(const float* parts, int splits, T* dq, Rows dqr, u64 rows, u64 tq,
                          u64 d, float scale) {
    const u64 n = rows * d, warps = (u64)gridDim.x * (blockDim.x >> 5);
    for (u64 r = blockIdx.x * (u64)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        T* out = dq + dqr.start(r / tq) + r % tq * dqr.row;
        for (u64 c = 2 * (threadIdx.x & 31); c < d; c += 64) {
            float2 sum = make_float2(0.f, 0.f);
            for (int s = 0; s < splits; ++s) {
                const float2 p = *reinterpret_cast<const float2*>(parts + s * n + r * d + c);
                sum.x += p.x;
                sum.y += p.y;
            }
            *reinterpret_cast<unsigned*>(out + c) = pack2<T>(sum.x * scale, sum.y * scale);
        }
    }
}

// ---- the forward with its JVP ----
//
// O, the row lse and the tangent tO of O along tangents tQ, tK, tV of the inputs, in one
// pass over the keys (the JVP of flash attention, Lu & Song 2024, sCM, appendix). With
// s_j = scale·q·k_j, p_j = softmax(s)_j and ts_j = scale·(tq·k_j + q·tk_j) (the scores'
// tangent): tO = Σ_j p_j (ts_j v_j + tv_j) − μ·O with μ = Σ_j p_j ts_j. Online, beside
// the forward's running max m and sum l, with unnormalised p̃_j = e^(s_j − m):
// acc_O = Σ p̃_j v_j, acc_tO = Σ p̃_j (ts_j v_j + tv_j) = (P̃∘tS)·V + P̃·tV and
// acc_μ = Σ p̃_j ts_j, every one rescaled by e^(m_old − m_new) when m moves. At the end
// O = acc_O / l, μ = acc_μ / l, tO = (acc_tO − μ·acc_O) / l, lse = m + ln l.

// Shared bytes of the JVP kernel (the Jvp `smem` formula of flash.rs): Q and tQ
// resident (M rows each), then two stages of four BS-row tiles (K, V, tK, tV).
template <int D, int M, int BS> struct JvpSmem {
    static constexpr int ROWS = 2 * M + 8 * BS;
    static constexpr unsigned BYTES = ROWS * (D + FA_PAD) * 2;
};

// next_kv_tile with four tiles a stage (stage s: K at stages + 4s·TILE, then V, tK and
// tV a TILE apart each).
template <typename T, int D, int BS, int NT>
__device__ __forceinline__ void next_jvp_tile(unsigned stages, int j, int ntiles, const T* k,
                                              Rows kr, const T* v, Rows vr, const T* k_dot,
                                              Rows kdr, const T* v_dot, Rows vdr, int nk) {
    constexpr int TILE = BS * (D + FA_PAD) * 2;
    cp_async_wait_all();
    __syncthreads();
    if (j + 1 < ntiles) {
        const unsigned next = stages + 4 * ((j + 1) & 1) * TILE;
        const int row0 = (j + 1) * BS;
        cp_tile<T, D, BS, NT>(next, k, kr.row, row0, nk);
        cp_tile<T, D, BS, NT>(next + TILE, v, vr.row, row0, nk);
        cp_tile<T, D, BS, NT>(next + 2 * TILE, k_dot, kdr.row, row0, nk);
        cp_tile<T, D, BS, NT>(next + 3 * TILE, v_dot, vdr.row, row0, nk);
    }
    cp_async_commit();
}

// A block of W warps owns M = 16·MT·W query rows, as in the forward: warp w owns rows
// 16·MT·w + 16m + {g, g+8}. Q at byte 0 and tQ M rows on stay in shared memory for the
// whole loop (and in registers too with QREG); K, V, tK and tV tiles of BS keys stream
// through two stages. Per tile: S = Q·Kᵀ and tS = tQ·Kᵀ + Q·tKᵀ (B = K and tK tiles as
// [n][k]), S scaled to log2 units and masked, tS scaled; the online softmax of the
// forward, then P̃∘tS in place of tS, and O += P̃·V, tO += (P̃∘tS)·V + P̃·tV (B = V and tV
// tiles as [k][n]) with P̃ and P̃∘tS packed from their accumulators' registers.
template <typename T, int D, int MT, int W, int BS, bool QREG>
__device__ void fa_jvp_tc(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                          const T* q_dot, Rows qdr, const T* k_dot, Rows kdr, const T* v_dot,
                          Rows vdr, T* out, T* out_dot, Rows outr, float* lse, u64 tq, u64 tk,
                          float scale, int causal) {
    constexpr int LD = D + FA_PAD, M = 16 * MT * W, NT = 32 * W, TILE = BS * LD * 2;
    static_assert(BS % 16 == 0 && D % 16 == 0, "tiles are whole 16×16 fragments");
    const int nq = (int)tq, nk = (int)tk;
    check_launch<W, M>(JvpSmem<D, M, BS>::BYTES, nq);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const int q0 = blockIdx.y * M, r0 = q0 + 16 * MT * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh);
    q_dot += qdr.start(bh), k_dot += kdr.start(bh), v_dot += vdr.start(bh);
    lse += bh * tq;
    // Q at byte 0, tQ at M·LD·2, then stage s: K at 2M·LD·2 + 4s·TILE, V, tK and tV a
    // TILE apart each.
    const unsigned base = smem_addr(fa_smem), sq = base, sqd = base + M * LD * 2;
    const unsigned stages = base + 2 * M * LD * 2;
    // Under the causal mask no query of this block sees a key past its last query.
    const int kend = causal ? min(nk, q0 + M) : nk, ntiles = (kend + BS - 1) / BS;
    cp_tile<T, D, M, NT>(sq, q, qr.row, q0, nq);
    cp_tile<T, D, M, NT>(sqd, q_dot, qdr.row, q0, nq);
    cp_tile<T, D, BS, NT>(stages, k, kr.row, 0, nk);
    cp_tile<T, D, BS, NT>(stages + TILE, v, vr.row, 0, nk);
    cp_tile<T, D, BS, NT>(stages + 2 * TILE, k_dot, kdr.row, 0, nk);
    cp_tile<T, D, BS, NT>(stages + 3 * TILE, v_dot, vdr.row, 0, nk);
    cp_async_commit();
    const unsigned aq = sq + 16 * MT * warp * LD * 2 + a_lane<LD>(lane);
    const unsigned aqd = sqd + 16 * MT * warp * LD * 2 + a_lane<LD>(lane);
    // With QREG, Q's and tQ's fragments are read once (the loop's first barrier is then
    // a no-op wait); otherwise a k-slice at a time in each product.
    unsigned qf[QREG ? MT : 1][QREG ? D / 16 : 1][4], qdf[QREG ? MT : 1][QREG ? D / 16 : 1][4];
    if constexpr (QREG) {
        cp_async_wait_all();
        __syncthreads();
        load_a<MT, D, LD>(qf, aq);
        load_a<MT, D, LD>(qdf, aqd);
    }
    const float sl2 = scale * FA_LOG2E;
    // Per-lane partial sums l and μ (over the lane's own columns) as in the forward.
    float mrow[MT][2], lrow[MT][2] = {}, murow[MT][2] = {};
    float o[MT][D / 8][4] = {}, od[MT][D / 8][4] = {};
#pragma unroll
    for (int m = 0; m < MT; ++m) mrow[m][0] = mrow[m][1] = FA_NEG_INF;
    for (int j = 0; j < ntiles; ++j) {
        const int k0 = j * BS;
        const unsigned sk = stages + 4 * (j & 1) * TILE, sv = sk + TILE;
        const unsigned skd = sk + 2 * TILE, svd = sk + 3 * TILE;
        // At j = 0 Q, tQ and the first tiles have landed too.
        next_jvp_tile<T, D, BS, NT>(stages, j, ntiles, k, kr, v, vr, k_dot, kdr, v_dot, vdr, nk);
        // Under the causal mask a warp whose last row precedes the tile's first key
        // sees none of it (warp-uniform: the collectives below stay whole-warp).
        if (causal && k0 > r0 + 16 * MT - 1) continue;
        float s[MT][BS / 8][4] = {}, sd[MT][BS / 8][4] = {};
        if constexpr (QREG) {
            mma_rs_nk<T, MT, D, BS, LD>(s, qf, sk + bnk_lane<LD>(lane));
            mma_rs_nk<T, MT, D, BS, LD>(sd, qdf, sk + bnk_lane<LD>(lane));
            mma_rs_nk<T, MT, D, BS, LD>(sd, qf, skd + bnk_lane<LD>(lane));
        } else {
            mma_ss_nk<T, MT, D, BS, LD>(s, aq, sk + bnk_lane<LD>(lane));
            mma_ss_nk<T, MT, D, BS, LD>(sd, aqd, sk + bnk_lane<LD>(lane));
            mma_ss_nk<T, MT, D, BS, LD>(sd, aq, skd + bnk_lane<LD>(lane));
        }
        // S to log2 units (scaled before masking: any sign of scale keeps the mask at
        // −inf), tS to natural units. Masked scores' tS stay finite (their rows of K and
        // tK are zeros or real keys) and meet p̃ = 0 below.
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[m][nb][e] *= sl2, sd[m][nb][e] *= scale;
        // Element (m, nb, e) is query r0 + 16m + g + 8(e/2), key k0 + 8nb + 2t + e%2.
        if (k0 + BS > nk || (causal && k0 + BS - 1 > r0)) {
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int i = r0 + 16 * m + g + 8 * (e >> 1), kj = k0 + 8 * nb + 2 * t + (e & 1);
                        if (kj >= nk || (causal && kj > i)) s[m][nb][e] = FA_NEG_INF;
                    }
        }
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = mrow[m][h];
#pragma unroll
                for (int nb = 0; nb < BS / 8; ++nb)
                    mx = fmaxf(mx, fmaxf(s[m][nb][2 * h], s[m][nb][2 * h + 1]));
                mx = row_max(mx);
                // A row with every key so far masked keeps 0 as its reference (no ∞ − ∞);
                // ex2(−inf) = 0 then zeroes the (empty) history.
                const float ref = mx == FA_NEG_INF ? 0.f : mx, corr = ex2(mrow[m][h] - ref);
                mrow[m][h] = mx;
                float sum = 0.f, musum = 0.f;
#pragma unroll
                for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const float p = ex2(s[m][nb][2 * h + c] - ref);
                        const float pd = p * sd[m][nb][2 * h + c];
                        s[m][nb][2 * h + c] = p;
                        sd[m][nb][2 * h + c] = pd;
                        sum += p;
                        musum += pd;
                    }
                lrow[m][h] = lrow[m][h] * corr + sum;
                murow[m][h] = murow[m][h] * corr + musum;
#pragma unroll
                for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        o[m][nb][2 * h + c] *= corr;
                        od[m][nb][2 * h + c] *= corr;
                    }
            }
        unsigned pf[MT][BS / 16][4];
        pack_a<T, MT, BS>(pf, s);
        mma_rs_kn<T, MT, BS, D, LD>(o, pf, sv + bkn_lane<LD>(lane));
        mma_rs_kn<T, MT, BS, D, LD>(od, pf, svd + bkn_lane<LD>(lane));
        pack_a<T, MT, BS>(pf, sd);
        mma_rs_kn<T, MT, BS, D, LD>(od, pf, sv + bkn_lane<LD>(lane));
    }
    // Every warp is done with the shared window before the outputs go through Q's rows
    // (O) and tQ's (tO), warp w through rows 16·MT·w.. of each.
    cp_async_wait_all();
    __syncthreads();
    float inv[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float l = row_sum(lrow[m][h]), mu = row_sum(murow[m][h]) / l;
            inv[m][h] = 1.f / l;
            // tO·l = acc_tO − μ·acc_O.
#pragma unroll
            for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
                for (int c = 0; c < 2; ++c) od[m][nb][2 * h + c] -= mu * o[m][nb][2 * h + c];
            const int i = r0 + 16 * m + g + 8 * h;
            if (t == 0 && i < nq) lse[i] = mrow[m][h] * FA_LN2 + logf(l);
        }
    T* st = reinterpret_cast<T*>(fa_smem) + 16 * MT * warp * LD;
    out += outr.start(bh), out_dot += outr.start(bh);
    store_rows<T, D, MT>(out, outr.row, o, inv, st, r0, nq);
    store_rows<T, D, MT>(out_dot, outr.row, od, inv, st + M * LD, r0, nq);
}

// ======================= f32: FMAs =======================

// f32 shared rows are padded by 4 floats: a row stride of D + 4 (or BS + 4) words is four
// times an odd number for every D and BS here, so the 16-byte reads of the products
// below, of 8 rows g (or 4 rows 2t) a warp, fall in distinct 4-bank groups.
#define FA32_PAD 4

// A row-major matrix in shared memory: element (i, j) at p[i·ld + j], ld a multiple of
// 4 and p 16-byte aligned.
struct Tile32 {
    const float* p;
    int ld;
    __device__ __forceinline__ float4 quad(int i, int j) const {
        return *reinterpret_cast<const float4*>(p + i * ld + j);
    }
    __device__ __forceinline__ float2 pair(int i, int j) const {
        return *reinterpret_cast<const float2*>(p + i * ld + j);
    }
};

// c + a·b over four k, in k order (four FMAs, as the one-k-at-a-time loop summed).
__device__ __forceinline__ float fma4(float4 a, float4 b, float c) {
    return fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, c))));
}

// c[16 × N] += a[16 × K] · b[N × K]ᵀ, warp-wide, in the mma accumulator layout (see
// the tensor-core section): lane (g, t) holds, for each 8-column block nb,
// c[nb] = {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}. Both operands run along k in
// their rows, so each lane reads 4 k at a time (one 16-byte read per row it needs):
// 2 + N/4 reads per 16·N/8 FMAs, where one scalar read per FMA pair made the f32
// kernels shared-memory bound.
template <int K, int N>
__device__ __forceinline__ void warp_mm32_abt(float (&c)[N / 8][4], Tile32 a, Tile32 b) {
    static_assert(K % 4 == 0, "k runs in fours");
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll 2
    for (int k = 0; k < K; k += 4) {
        const float4 a0 = a.quad(g, k), a1 = a.quad(g + 8, k);
#pragma unroll
        for (int nb = 0; nb < N / 8; ++nb) {
            const float4 b0 = b.quad(nb * 8 + 2 * t, k), b1 = b.quad(nb * 8 + 2 * t + 1, k);
            c[nb][0] = fma4(a0, b0, c[nb][0]);
            c[nb][1] = fma4(a0, b1, c[nb][1]);
            c[nb][2] = fma4(a1, b0, c[nb][2]);
            c[nb][3] = fma4(a1, b1, c[nb][3]);
        }
    }
}

// c[16 × N] += a[16 × K] · b[K × N], likewise: a read 4 k at a time, b in pairs of
// columns (2t, 2t+1) of a row.
template <int K, int N>
__device__ __forceinline__ void warp_mm32_ab(float (&c)[N / 8][4], Tile32 a, Tile32 b) {
    static_assert(K % 4 == 0, "k runs in fours");
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll 2
    for (int k = 0; k < K; k += 4) {
        const float4 q0 = a.quad(g, k), q1 = a.quad(g + 8, k);
        const float a0[4] = {q0.x, q0.y, q0.z, q0.w}, a1[4] = {q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int nb = 0; nb < N / 8; ++nb) {
                const float2 bv = b.pair(k + kk, nb * 8 + 2 * t);
                c[nb][0] += a0[kk] * bv.x;
                c[nb][1] += a0[kk] * bv.y;
                c[nb][2] += a1[kk] * bv.x;
                c[nb][3] += a1[kk] * bv.y;
            }
    }
}

// Rows [row0, row0 + rows) of the [n, D] matrix `src` (row stride `ld`) into `dst` (row
// stride D + FA32_PAD), zeros past row n, by the whole block: 16 bytes a read when every
// row starts 16-byte aligned (as head-split views of a product's rows do), else one
// float a read. The choice is the same for the whole block.
template <int D>
__device__ __forceinline__ void load_rows32(float* dst, const float* src, u64 ld, i64 row0,
                                            int rows, i64 n) {
    if ((reinterpret_cast<u64>(src) & 15) == 0 && (ld & 3) == 0) {
        for (int i = threadIdx.x; i < rows * (D / 4); i += blockDim.x) {
            const int r = i / (D / 4), c = 4 * (i % (D / 4));
            float4 x = {0.f, 0.f, 0.f, 0.f};
            if (row0 + r < n) x = *reinterpret_cast<const float4*>(src + (u64)(row0 + r) * ld + c);
            *reinterpret_cast<float4*>(dst + r * (D + FA32_PAD) + c) = x;
        }
        return;
    }
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        const int r = i / D, c = i % D;
        dst[r * (D + FA32_PAD) + c] = row0 + r < n ? src[(u64)(row0 + r) * ld + c] : 0.f;
    }
}

// Writes fragment values `c` (rows g, g+8 of a warp's 16) scaled by `mul[half]` into
// `dst` (row stride `ld`), only rows below `limit - row0`.
template <int N>
__device__ __forceinline__ void store_frag32(float* dst, int ld, const float (&c)[N / 8][4],
                                             const float (&mul)[2], i64 row0, i64 limit) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = g + 8 * h;
        if (row0 + r >= limit) continue;
#pragma unroll
        for (int nb = 0; nb < N / 8; ++nb) {
            dst[r * ld + nb * 8 + 2 * t] = c[nb][2 * h] * mul[h];
            dst[r * ld + nb * 8 + 2 * t + 1] = c[nb][2 * h + 1] * mul[h];
        }
    }
}

// Whether query `i` sees key `j`.
__device__ __forceinline__ bool visible(i64 i, i64 j, i64 tq, i64 tk, int causal) {
    return i < tq && j < tk && !(causal && j > i);
}

// The f32 kernels: a block of W warps owns 16·W rows, each warp 16; the other operand
// streams through static shared memory in tiles of BS rows; P and dS go through a
// per-warp shared scratch.
template <int D, int W, int BS>
__device__ void fa_forward32(const float* q, Rows qr, const float* k, Rows kr, const float* v,
                             Rows vr, float* out, Rows outr, float* lse, u64 tq, u64 tk,
                             float scale, int causal) {
    __shared__ __align__(16) float sq[16 * W][D + FA32_PAD];
    __shared__ __align__(16) float sk[BS][D + FA32_PAD];
    __shared__ __align__(16) float sv[BS][D + FA32_PAD];
    __shared__ __align__(16) float sp[W][16][BS + FA32_PAD];
    if (blockDim.x != 32 * W || (u64)gridDim.y != (tq + 16 * W - 1) / (16 * W)) __trap();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const i64 q0 = (i64)blockIdx.y * 16 * W, r0 = q0 + 16 * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), out += outr.start(bh);
    lse += bh * tq;
    load_rows32<D>(&sq[0][0], q, qr.row, q0, 16 * W, tq);
    float m[2] = {FA_NEG_INF, FA_NEG_INF}, l[2] = {0.f, 0.f};
    float o[D / 8][4] = {};
    // Under the causal mask no query of this block sees a key past its last query.
    const i64 kend = causal ? min((i64)tk, q0 + 16 * W) : (i64)tk;
    for (i64 k0 = 0; k0 < kend; k0 += BS) {
        __syncthreads();
        load_rows32<D>(&sk[0][0], k, kr.row, k0, BS, tk);
        load_rows32<D>(&sv[0][0], v, vr.row, k0, BS, tk);
        __syncthreads();
        float s[BS / 8][4] = {};
        warp_mm32_abt<D, BS>(s, Tile32{&sq[16 * warp][0], D + FA32_PAD}, Tile32{&sk[0][0], D + FA32_PAD});
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
        float* pw = &sp[warp][0][0];
        const float one[2] = {1.f, 1.f};
        store_frag32<BS>(pw, BS + FA32_PAD, s, one, 0, 16);
        __syncwarp();
        warp_mm32_ab<BS, D>(o, Tile32{pw, BS + FA32_PAD}, Tile32{&sv[0][0], D + FA32_PAD});
        __syncwarp();
    }
    const float inv[2] = {1.f / l[0], 1.f / l[1]};
    store_frag32<D>(out + r0 * outr.row, (int)outr.row, o, inv, r0, tq);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 i = r0 + g + 8 * h;
        if (t == 0 && i < (i64)tq) lse[i] = m[h] + logf(l[h]);
    }
}

template <int D, int W, int BS>
__device__ void fa_dq32(const float* q, Rows qr, const float* k, Rows kr, const float* v,
                        Rows vr, const float* dout, Rows dr, const float* lse,
                        const float* delta, float* dq, Rows dqr, u64 tq, u64 tk, float scale,
                        int causal) {
    __shared__ __align__(16) float sq[16 * W][D + FA32_PAD];
    __shared__ __align__(16) float sdo[16 * W][D + FA32_PAD];
    __shared__ __align__(16) float sk[BS][D + FA32_PAD];
    __shared__ __align__(16) float sv[BS][D + FA32_PAD];
    __shared__ __align__(16) float sds[W][16][BS + FA32_PAD];
    if (blockDim.x != 32 * W || (u64)gridDim.y != (tq + 16 * W - 1) / (16 * W)) __trap();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const i64 q0 = (i64)blockIdx.y * 16 * W, r0 = q0 + 16 * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), dout += dr.start(bh);
    dq += dqr.start(bh), lse += bh * tq, delta += bh * tq;
    load_rows32<D>(&sq[0][0], q, qr.row, q0, 16 * W, tq);
    load_rows32<D>(&sdo[0][0], dout, dr.row, q0, 16 * W, tq);
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
        load_rows32<D>(&sk[0][0], k, kr.row, k0, BS, tk);
        load_rows32<D>(&sv[0][0], v, vr.row, k0, BS, tk);
        __syncthreads();
        float s[BS / 8][4] = {}, dp[BS / 8][4] = {};
        warp_mm32_abt<D, BS>(s, Tile32{&sq[16 * warp][0], D + FA32_PAD}, Tile32{&sk[0][0], D + FA32_PAD});
        warp_mm32_abt<D, BS>(dp, Tile32{&sdo[16 * warp][0], D + FA32_PAD}, Tile32{&sv[0][0], D + FA32_PAD});
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const i64 i = r0 + g + 8 * (e >> 1), j = k0 + nb * 8 + 2 * t + (e & 1);
                const float p = visible(i, j, tq, tk, causal) ? expf(s[nb][e] * scale - rl[e >> 1]) : 0.f;
                dp[nb][e] = p * (dp[nb][e] - rd[e >> 1]);
            }
        float* dw = &sds[warp][0][0];
        const float one[2] = {1.f, 1.f};
        store_frag32<BS>(dw, BS + FA32_PAD, dp, one, 0, 16);
        __syncwarp();
        warp_mm32_ab<BS, D>(acc, Tile32{dw, BS + FA32_PAD}, Tile32{&sk[0][0], D + FA32_PAD});
        __syncwarp();
    }
    const float mul[2] = {scale, scale};
    store_frag32<D>(dq + r0 * dqr.row, (int)dqr.row, acc, mul, r0, tq);
}

template <int D, int W, int BS>
__device__ void fa_dkdv32(const float* q, Rows qr, const float* k, Rows kr, const float* v,
                          Rows vr, const float* dout, Rows dr, const float* lse,
                          const float* delta, float* dk, float* dv, Rows dkvr, u64 tq,
                          u64 tk, float scale, int causal) {
    __shared__ __align__(16) float sk[16 * W][D + FA32_PAD];
    __shared__ __align__(16) float sv[16 * W][D + FA32_PAD];
    __shared__ __align__(16) float sq[BS][D + FA32_PAD];
    __shared__ __align__(16) float sdo[BS][D + FA32_PAD];
    __shared__ __align__(16) float sw[W][16][BS + FA32_PAD];
    __shared__ float sl[BS], sd[BS];
    if (blockDim.x != 32 * W || (u64)gridDim.y != (tk + 16 * W - 1) / (16 * W)) __trap();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const i64 k0 = (i64)blockIdx.y * 16 * W, r0 = k0 + 16 * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), dout += dr.start(bh);
    dk += dkvr.start(bh), dv += dkvr.start(bh), lse += bh * tq, delta += bh * tq;
    load_rows32<D>(&sk[0][0], k, kr.row, k0, 16 * W, tk);
    load_rows32<D>(&sv[0][0], v, vr.row, k0, 16 * W, tk);
    float dka[D / 8][4] = {}, dva[D / 8][4] = {};
    // Under the causal mask no query before the block's first key sees any of its keys.
    const i64 qstart = causal ? min(k0, (i64)tq) : 0;
    for (i64 qb = qstart; qb < (i64)tq; qb += BS) {
        __syncthreads();
        load_rows32<D>(&sq[0][0], q, qr.row, qb, BS, tq);
        load_rows32<D>(&sdo[0][0], dout, dr.row, qb, BS, tq);
        for (int i = threadIdx.x; i < BS; i += blockDim.x) {
            sl[i] = qb + i < (i64)tq ? lse[qb + i] : 0.f;
            sd[i] = qb + i < (i64)tq ? delta[qb + i] : 0.f;
        }
        __syncthreads();
        float s[BS / 8][4] = {}, dp[BS / 8][4] = {};
        warp_mm32_abt<D, BS>(s, Tile32{&sk[16 * warp][0], D + FA32_PAD}, Tile32{&sq[0][0], D + FA32_PAD});
        warp_mm32_abt<D, BS>(dp, Tile32{&sv[16 * warp][0], D + FA32_PAD}, Tile32{&sdo[0][0], D + FA32_PAD});
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
        float* pw = &sw[warp][0][0];
        const float one[2] = {1.f, 1.f};
        store_frag32<BS>(pw, BS + FA32_PAD, s, one, 0, 16);
        __syncwarp();
        warp_mm32_ab<BS, D>(dva, Tile32{pw, BS + FA32_PAD}, Tile32{&sdo[0][0], D + FA32_PAD});
        __syncwarp();
        store_frag32<BS>(pw, BS + FA32_PAD, dp, one, 0, 16);
        __syncwarp();
        warp_mm32_ab<BS, D>(dka, Tile32{pw, BS + FA32_PAD}, Tile32{&sq[0][0], D + FA32_PAD});
        __syncwarp();
    }
    const float mul_k[2] = {scale, scale}, one[2] = {1.f, 1.f};
    store_frag32<D>(dk + r0 * dkvr.row, (int)dkvr.row, dka, mul_k, r0, tk);
    store_frag32<D>(dv + r0 * dkvr.row, (int)dkvr.row, dva, one, r0, tk);
}

// The forward with its JVP (see fa_jvp_tc): O, lse and tO, W warps of 16 rows, Q and tQ
// resident, K, V, tK and tV tiles of BS keys; P̃ and P̃∘tS go through two per-warp
// shared scratches.
template <int D, int W, int BS>
__device__ void fa_jvp32(const float* q, Rows qr, const float* k, Rows kr, const float* v,
                         Rows vr, const float* q_dot, Rows qdr, const float* k_dot, Rows kdr,
                         const float* v_dot, Rows vdr, float* out, float* out_dot, Rows outr,
                         float* lse, u64 tq, u64 tk, float scale, int causal) {
    __shared__ __align__(16) float sq[16 * W][D + FA32_PAD];
    __shared__ __align__(16) float sqd[16 * W][D + FA32_PAD];
    __shared__ __align__(16) float sk[BS][D + FA32_PAD];
    __shared__ __align__(16) float sv[BS][D + FA32_PAD];
    __shared__ __align__(16) float skd[BS][D + FA32_PAD];
    __shared__ __align__(16) float svd[BS][D + FA32_PAD];
    __shared__ __align__(16) float sp[W][16][BS + FA32_PAD];
    __shared__ __align__(16) float spd[W][16][BS + FA32_PAD];
    if (blockDim.x != 32 * W || (u64)gridDim.y != (tq + 16 * W - 1) / (16 * W)) __trap();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const i64 q0 = (i64)blockIdx.y * 16 * W, r0 = q0 + 16 * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh);
    q_dot += qdr.start(bh), k_dot += kdr.start(bh), v_dot += vdr.start(bh);
    out += outr.start(bh), out_dot += outr.start(bh), lse += bh * tq;
    load_rows32<D>(&sq[0][0], q, qr.row, q0, 16 * W, tq);
    load_rows32<D>(&sqd[0][0], q_dot, qdr.row, q0, 16 * W, tq);
    float m[2] = {FA_NEG_INF, FA_NEG_INF}, l[2] = {0.f, 0.f}, mu[2] = {0.f, 0.f};
    float o[D / 8][4] = {}, od[D / 8][4] = {};
    // Under the causal mask no query of this block sees a key past its last query.
    const i64 kend = causal ? min((i64)tk, q0 + 16 * W) : (i64)tk;
    for (i64 k0 = 0; k0 < kend; k0 += BS) {
        __syncthreads();
        load_rows32<D>(&sk[0][0], k, kr.row, k0, BS, tk);
        load_rows32<D>(&sv[0][0], v, vr.row, k0, BS, tk);
        load_rows32<D>(&skd[0][0], k_dot, kdr.row, k0, BS, tk);
        load_rows32<D>(&svd[0][0], v_dot, vdr.row, k0, BS, tk);
        __syncthreads();
        float s[BS / 8][4] = {}, sd[BS / 8][4] = {};
        const Tile32 aq{&sq[16 * warp][0], D + FA32_PAD}, aqd{&sqd[16 * warp][0], D + FA32_PAD};
        warp_mm32_abt<D, BS>(s, aq, Tile32{&sk[0][0], D + FA32_PAD});
        warp_mm32_abt<D, BS>(sd, aqd, Tile32{&sk[0][0], D + FA32_PAD});
        warp_mm32_abt<D, BS>(sd, aq, Tile32{&skd[0][0], D + FA32_PAD});
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const i64 i = r0 + g + 8 * (e >> 1), j = k0 + nb * 8 + 2 * t + (e & 1);
                s[nb][e] = visible(i, j, tq, tk, causal) ? s[nb][e] * scale : FA_NEG_INF;
                sd[nb][e] *= scale;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[nb][e]);
            }
        float base[2], corr[2], sum[2] = {0.f, 0.f}, musum[2] = {0.f, 0.f};
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
                sd[nb][e] *= s[nb][e];
                sum[e >> 1] += s[nb][e];
                musum[e >> 1] += sd[nb][e];
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            l[h] = l[h] * corr[h] + row_sum(sum[h]);
            mu[h] = mu[h] * corr[h] + row_sum(musum[h]);
        }
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[nb][e] *= corr[e >> 1], od[nb][e] *= corr[e >> 1];
        float *pw = &sp[warp][0][0], *pdw = &spd[warp][0][0];
        const float one[2] = {1.f, 1.f};
        store_frag32<BS>(pw, BS + FA32_PAD, s, one, 0, 16);
        store_frag32<BS>(pdw, BS + FA32_PAD, sd, one, 0, 16);
        __syncwarp();
        const Tile32 ap{pw, BS + FA32_PAD};
        warp_mm32_ab<BS, D>(o, ap, Tile32{&sv[0][0], D + FA32_PAD});
        warp_mm32_ab<BS, D>(od, ap, Tile32{&svd[0][0], D + FA32_PAD});
        warp_mm32_ab<BS, D>(od, Tile32{pdw, BS + FA32_PAD}, Tile32{&sv[0][0], D + FA32_PAD});
        __syncwarp();
    }
    // tO·l = acc_tO − μ·acc_O with μ = acc_μ / l.
    const float inv[2] = {1.f / l[0], 1.f / l[1]}, mun[2] = {mu[0] * inv[0], mu[1] * inv[1]};
#pragma unroll
    for (int nb = 0; nb < D / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) od[nb][e] -= mun[e >> 1] * o[nb][e];
    store_frag32<D>(out + r0 * outr.row, (int)outr.row, o, inv, r0, tq);
    store_frag32<D>(out_dot + r0 * outr.row, (int)outr.row, od, inv, r0, tq);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const i64 i = r0 + g + 8 * h;
        if (t == 0 && i < (i64)tq) lse[i] = m[h] + logf(l[h]);
    }
}

// delta[r] = Σ_c dO[r, c]·O[r, c], one warp per row r = bh·tq + i (dO and O placed by
// `dr` and `outr`).
template <typename T>
__device__ void fa_delta(const T* dout, Rows dr, const T* out, Rows outr, float* delta,
                         u64 rows, u64 tq, u64 d) {
    const u64 r = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const u64 bh = r / tq, i = r % tq;
    const T* g = dout + dr.start(bh) + i * dr.row;
    const T* o = out + outr.start(bh) + i * outr.row;
    float acc = 0.f;
    for (u64 c = threadIdx.x & 31; c < d; c += 32) acc += load(g[c]) * load(o[c]);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) delta[r] = acc;
}

// ======================= instantiations =======================
// The launch shapes must match `shape` in crates/engine/src/cuda/flash.rs (every kernel
// traps on a block size, grid or shared size that does not). The forward's, dQ's and the
// dK/dV kernels' parameters (FA_PARAMS_FWD, _DQ, _DKDV) and FA_QKV are in flash_common.cuh.

#define FA_PARAMS_BWD(T)                                                                    \
    const T *q, Rows qr, const T *k, Rows kr, const T *v, Rows vr, const T *dout, Rows dr, \
        const float *lse, const float *delta, T *dk, T *dv, Rows dkvr, float *dq_parts,    \
        u64 tq, u64 tk, float scale, int causal
#define FA_PARAMS_JVP(T)                                                                    \
    const T *q, Rows qr, const T *k, Rows kr, const T *v, Rows vr, const T *q_dot, Rows qdr, \
        const T *k_dot, Rows kdr, const T *v_dot, Rows vdr, T *out, T *out_dot, Rows outr,   \
        float *lse, u64 tq, u64 tk, float scale, int causal
// Their tangents, likewise (the JVP kernels take them next).
#define FA_QKV_DOT q_dot, qdr, k_dot, kdr, v_dot, vdr

// bf16/f16 at head dim D: forward with MT 16-row fragments per warp, FW warps, key tiles
// of FBS and Q in registers when FQREG; dQ and dK/dV with one fragment per warp, BW
// warps, tiles of BBS, Q and dO in registers in dQ when BQREG. Sized for at most 99 KiB
// of shared memory per block (the sm_86/sm_89 limit; sm_80 allows 163 KiB, sm_90
// 227 KiB). The forward runs 4 warps of 32 rows (MT = 2) at every head dim: every K and
// V fragment a warp reads from shared memory feeds two m-tiles, which halves the K and
// V ldmatrix bytes per row and key (2·2D/16 → 2·2D/32: 32 → 16 at d = 128, where 8
// warps of 16 rows were bound by shared-memory bandwidth). At d = 128 two m-tiles of O
// take 128 registers a thread, so Q stays in shared memory (FQREG false; re-reading it
// adds 2D/BS = 8 bytes per row and key) and the key tiles are 32 rows: S then takes 32
// registers, and Q's 128 rows plus two stages of 32-row K and V tiles are 68 KiB
// (64-row tiles would need 104 KiB).
#define FA_TC(S, T, D, MT, FW, FBS, FQREG, BW, BBS, BQREG)                                  \
    extern "C" __global__ void __launch_bounds__(32 * FW) fa_fwd_##S##_d##D(FA_PARAMS_FWD(T)) { \
        fa_forward_tc<T, D, MT, FW, FBS, FQREG>(FA_QKV, out, outr, lse, tq, tk, scale,      \
                                                causal);                                    \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * BW) fa_dq_##S##_d##D(FA_PARAMS_DQ(T)) { \
        fa_dq_tc<T, D, 1, BW, BBS, BQREG>(FA_QKV, dout, dr, lse, delta, dq, dqr, tq, tk,    \
                                          scale, causal);                                   \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * BW)                                   \
        fa_dkdv_##S##_d##D(FA_PARAMS_DKDV(T)) {                                             \
        fa_dkdv_tc<T, D, 1, BW, BBS>(FA_QKV, dout, dr, lse, delta, dk, dv, dkvr, tq, tk,    \
                                     scale, causal);                                        \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * BW) fa_bwd_##S##_d##D(FA_PARAMS_BWD(T)) { \
        fa_bwd_tc<T, D, 1, BW, BBS>(FA_QKV, dout, dr, lse, delta, dk, dv, dkvr, dq_parts,   \
                                    tq, tk, scale, causal);                                 \
    }

FA_TC(bf16, bf16, 32, 2, 4, 64, true, 8, 64, true)
FA_TC(bf16, bf16, 64, 2, 4, 64, true, 8, 64, true)
FA_TC(bf16, bf16, 128, 2, 4, 32, false, 4, 32, false)
FA_TC(f16, f16, 32, 2, 4, 64, true, 8, 64, true)
FA_TC(f16, f16, 64, 2, 4, 64, true, 8, 64, true)
FA_TC(f16, f16, 128, 2, 4, 32, false, 4, 32, false)

// f32 at head dim D: W warps of 16 rows, key tiles of BSF rows in the forward and BSB in
// the backward (within 48 KiB of static shared memory). At d = 32, 64-row blocks: a
// DiT's 49 tokens are one block, so K and V are read once per head, not twice.
#define FA32(D, W, BSF, BSB)                                                                \
    extern "C" __global__ void __launch_bounds__(32 * W) fa_fwd_f32_d##D(FA_PARAMS_FWD(float)) { \
        fa_forward32<D, W, BSF>(FA_QKV, out, outr, lse, tq, tk, scale, causal);            \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * W) fa_dq_f32_d##D(FA_PARAMS_DQ(float)) { \
        fa_dq32<D, W, BSB>(FA_QKV, dout, dr, lse, delta, dq, dqr, tq, tk, scale, causal);  \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * W)                                    \
        fa_dkdv_f32_d##D(FA_PARAMS_DKDV(float)) {                                           \
        fa_dkdv32<D, W, BSB>(FA_QKV, dout, dr, lse, delta, dk, dv, dkvr, tq, tk, scale,     \
                             causal);                                                       \
    }

FA32(32, 4, 32, 32)
FA32(64, 2, 32, 32)
FA32(128, 1, 16, 16)

// The forward with its JVP, bf16/f16 at head dim D: MT 16-row fragments per warp, W
// warps, tiles of BS keys, Q and tQ in registers when QREG. Two accumulators (O and tO)
// and two score tiles (S and tS) a warp: one m-tile a warp at every head dim, and at
// d = 128 Q and tQ in shared memory and 16-key tiles, to stay within 255 registers and
// 99 KiB (Q and tQ resident plus two stages of four tiles).
#define FA_TC_JVP(S, T, D, MT, W, BS, QREG)                                                \
    extern "C" __global__ void __launch_bounds__(32 * W) fa_jvp_##S##_d##D(FA_PARAMS_JVP(T)) { \
        fa_jvp_tc<T, D, MT, W, BS, QREG>(FA_QKV, FA_QKV_DOT, out, out_dot, outr, lse, tq,   \
                                         tk, scale, causal);                                \
    }

FA_TC_JVP(bf16, bf16, 32, 1, 4, 64, true)
FA_TC_JVP(bf16, bf16, 64, 1, 4, 32, true)
FA_TC_JVP(bf16, bf16, 128, 1, 4, 16, false)
FA_TC_JVP(f16, f16, 32, 1, 4, 64, true)
FA_TC_JVP(f16, f16, 64, 1, 4, 32, true)
FA_TC_JVP(f16, f16, 128, 1, 4, 16, false)

// f32 at head dim D: W warps of 16 rows (as the forward) and tiles of BS keys, within
// 48 KiB of static shared memory with four streamed tiles and two scratches.
#define FA32_JVP(D, W, BS)                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * W) fa_jvp_f32_d##D(FA_PARAMS_JVP(float)) { \
        fa_jvp32<D, W, BS>(FA_QKV, FA_QKV_DOT, out, out_dot, outr, lse, tq, tk, scale,      \
                           causal);                                                         \
    }

FA32_JVP(32, 2, 32)
FA32_JVP(64, 2, 16)
FA32_JVP(128, 1, 8)

#define FA_DELTA(S, T)                                                                    \
    extern "C" __global__ void fa_delta_##S(const T* dout, Rows dr, const T* out,         \
                                            Rows outr, float* delta, u64 rows, u64 tq,    \
                                            u64 d) {                                      \
        fa_delta<T>(dout, dr, out, outr, delta, rows, tq, d);                             \
    }
FA_DELTA(bf16, bf16)
FA_DELTA(f16, f16)
FA_DELTA(f32, float)

#define FA_DQ_SUM(S, T)                                                                   \
    extern "C" __global__ void fa_dq_sum_##S(const float* parts, int splits, T* dq,       \
                                             Rows dqr, u64 rows, u64 tq, u64 d, float scale) { \
        fa_dq_sum<T>(parts, splits, dq, dqr, rows, tq, d, scale);                          \
    }
FA_DQ_SUM(bf16, bf16)
FA_DQ_SUM(f16, f16)
