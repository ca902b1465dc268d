// Fused attention for Hopper (sm_90a): forwards with the same results as fa_fwd of
// flash_attention.cu (out stored where `outr` says, f32 lse [bh, tq], the same masks),
// and the two-kernel backward (as fa_dq and fa_dkdv), with the products on warpgroup
// MMAs (wgmma) reading their operands from shared memory. crates/engine/src/cuda/flash.rs
// launches them on sm_90 cards for bf16/f16 at head dims 64 and 128 when
// `cuda::set_hopper_attention` says so.
//
// A block has CWG consumer warpgroups (4 warps each, 128 threads) and owns M = 64·CWG
// query rows; warpgroup w owns rows 64w..64w+63, its warp i (of 4) rows 16i..16i+15 of
// those. Q stays in shared memory; K and V tiles of BS keys stream through shared
// stages. Per tile, each consumer warpgroup: S = Q·Kᵀ (m64n<BS>k16, D/16 MMAs, both
// operands from shared memory), the online softmax in registers exactly as fa_fwd does
// it, and O += P·V (m64n<D>k16, BS/16 MMAs, A = P from registers, B = the V tile read
// N-major). Two ways to bring the tiles:
// - fa_fwd_sm90: every thread copies with cp.async, two stages, a block barrier a tile
//   (the warpgroups work in step);
// - fa_fwd_tma: a producer warpgroup has the TMA unit copy them, through ST stages with
//   barriers of their own (mbarrier), so the consumers never wait for each other; within
//   a warpgroup a tile's softmax overlaps the previous tile's P·V (FlashAttention-3's
//   overlap); fa_fwd_tma_pp also has the two warpgroups take turns at issuing their
//   MMAs (FlashAttention-3's ping-pong).
// fa_dq_sm90 and fa_dkdv_sm90 (at the end) are the backward's two halves, as fa_dq and
// fa_dkdv (dK and dV with the scores transposed).
//
// wgmma fragments (PTX ISA, wgmma.mma_async .m64nNk16, f32 accumulators): warp i of the
// warpgroup holds rows 16i..16i+15 of the 64×N accumulator, in the C layout of
// mma.m16n8k16 repeated over the N/8 column blocks: register 4nb + e is c[nb][e] of
// flash_common.cuh. An A operand from registers is the 16×16 A fragment of mma.m16n8k16
// per warp and k-step, so pack_a turns S's registers into P's operand as in fa_fwd.
#include "common.cuh"
#include "flash_common.cuh"

// ---- shared tiles in the 128-byte swizzle ----
// A tile of R rows × D columns is stored as D/64 panels of R rows × 64 columns (128
// bytes a row), panel after panel; in a panel, row r's 16-byte chunk c (columns
// 8c..8c+7) lies at r·128 + (c XOR r%8)·16. Every panel starts at a multiple of 1024
// bytes, so this is what wgmma's descriptors call the 128-byte swizzle (the hardware
// XORs address bits 4-6 with bits 7-9: the chunk with the row's place in its 8-row,
// 1024-byte group). The 8 chunks of a row land in 8 distinct 16-byte bank groups, so
// the copies' 16-byte writes of 8 threads of a row do not conflict.
#define SW_ROW 128
#define SW_ATOM 1024

// Byte offset of element (r, col) (col a multiple of 8) in a swizzled tile of R rows.
template <int R> __device__ __forceinline__ unsigned sw_offset(int r, int col) {
    return (col / 64) * R * SW_ROW + r * SW_ROW + ((((col / 8) & 7) ^ (r & 7)) << 4);
}

// Rows [row0, row0 + R) of the [n, D] matrix `src` (row stride `ld`) into the swizzled
// tile at `dst`, by all NT threads in 16-byte chunks, as cp_tile in flash_attention.cu
// copies into padded rows: thread x copies chunk x % (D/8) of rows x / (D/8) + i·STEP
// (STEP a multiple of 8, so the row's swizzle phase r % 8 is the same for every i).
// Rows ≥ n are zero-filled. Asynchronous: complete after cp_async_wait_all.
template <typename T, int D, int R, int NT>
__device__ __forceinline__ void cp_tile_sw(unsigned dst, const T* src, u64 ld, int row0, int n) {
    constexpr int CPR = D / 8, STEP = NT / CPR;
    static_assert(NT % CPR == 0 && R % STEP == 0 && STEP % 8 == 0,
                  "tile chunks must divide among the threads, whole 8-row groups a pass");
    const int tr = threadIdx.x / CPR, col = threadIdx.x % CPR * 8;
    const T* s = src + (u64)(row0 + tr) * ld + col;
    dst += sw_offset<R>(tr, col);
#pragma unroll
    for (int i = 0; i < R / STEP; ++i) {
        const bool in = row0 + tr + i * STEP < n;
        cp_async16(dst + i * STEP * SW_ROW, in ? s + (u64)(i * STEP) * ld : src, in);
    }
}

// wgmma reads shared memory through the async proxy; what this thread wrote through the
// generic proxy (cp.async included) must be fenced before it may be read that way.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// The step that opens iteration j of the loop over key tiles (stage s: K at stages +
// 2s·TILE, V one TILE on), as next_kv_tile in flash_attention.cu: waits for tile j,
// fences the copies for wgmma, and (the barrier also meaning every warpgroup's MMAs on
// tile j−1 are complete: each waits for them before the barrier) starts tile j+1.
template <typename T, int D, int BS, int NT>
__device__ __forceinline__ void next_kv_tile_sw(unsigned stages, int j, int ntiles, const T* k,
                                                Rows kr, const T* v, Rows vr, int nk) {
    constexpr unsigned TILE = BS * D * 2;
    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();
    if (j + 1 < ntiles) {
        const unsigned next = stages + 2 * ((j + 1) & 1) * TILE;
        cp_tile_sw<T, D, BS, NT>(next, k, kr.row, (j + 1) * BS, nk);
        cp_tile_sw<T, D, BS, NT>(next + TILE, v, vr.row, (j + 1) * BS, nk);
    }
    cp_async_commit();
}

// ---- warpgroup MMAs ----
// A shared-memory matrix descriptor of wgmma for a 128-byte-swizzled operand whose
// first element is at shared address `addr`: bits 0-13 the address, 16-29 the leading
// byte offset, 32-45 the stride byte offset (each in 16-byte units), 62-63 the layout
// (1: 128-byte swizzle); the base offset (bits 49-51) stays 0 as every 8-row group
// starts at a multiple of 1024 bytes (a k-step's start 32·kk bytes into a row does not
// change bits 7-9). For a K-major operand (Q, K: 16 k values of a row contiguous) the
// stride is the distance between 8-row groups and the leading offset is unused; for an
// MN-major one (V: 64 n values of a row contiguous, a row per k) the leading offset is
// the distance to the next 64 columns (the next panel) and the stride the distance to
// the next 8 rows of k.
__device__ __forceinline__ u64 sw128_desc(unsigned addr, unsigned lead, unsigned stride) {
    return (u64)((addr >> 4) & 0x3FFF) | (u64)((lead >> 4) & 0x3FFF) << 16 |
           (u64)((stride >> 4) & 0x3FFF) << 32 | 1ull << 62;
}

__device__ __forceinline__ void wg_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
// Waits until at most N of this warp's committed groups are pending; groups complete in
// the order they were committed.
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// The compiler does not know that an MMA in flight still reads and writes its
// accumulators: pinning them before the fence and after the wait keeps every other use
// of those registers out of the window.
template <int N> __device__ __forceinline__ void wg_pin(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (64×N a warpgroup, N/2 registers a thread) += A·B, A and B from shared memory
// (descriptors a, b; both K-major), or d = A·B when `acc` is 0.
template <typename T, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], u64 a, u64 b, int acc);
// d += A·B with A from registers (the m16n8k16 A fragment of the warp's 16 rows) and B
// from shared memory, N-major (the transposed-B form).
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs_tn(float (&d)[N / 2], const unsigned (&a)[4], u64 b);

#define WG_F8(i)                                                                          \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]),           \
        "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_F32 WG_F8(0), WG_F8(8), WG_F8(16), WG_F8(24)
#define WG_F64 WG_F32, WG_F8(32), WG_F8(40), WG_F8(48), WG_F8(56)
#define WG_R32                                                                            \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,"  \
    "%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define WG_R64                                                                            \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,"  \
    "%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43," \
    "%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
// One instantiation of each form for element type T at width N, with the N/2
// accumulator operands first (REGS, OUTS) and the rest numbered from A0.
#define WG_MMA(T, N, REGS, OUTS, A0, A1, A2, A3, A4)                                      \
    template <>                                                                           \
    __device__ __forceinline__ void wgmma_ss<T, N>(float (&d)[N / 2], u64 a, u64 b,       \
                                                   int acc) {                             \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #A2 ", 0;\n"                     \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #T "." #T " " REGS  \
                     ", %" #A0 ", %" #A1 ", p, 1, 1, 0, 0;\n}"                              \
                     : OUTS                                                               \
                     : "l"(a), "l"(b), "r"(acc));                                         \
    }                                                                                     \
    template <>                                                                           \
    __device__ __forceinline__ void wgmma_rs_tn<T, N>(float (&d)[N / 2],                  \
                                                      const unsigned (&a)[4], u64 b) {    \
        asm volatile("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #T "." #T " " REGS \
                     ", {%" #A0 ",%" #A1 ",%" #A2 ",%" #A3 "}, %" #A4 ", 1, 1, 1, 1;"      \
                     : OUTS                                                               \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));               \
    }

WG_MMA(bf16, 64, WG_R32, WG_F32, 32, 33, 34, 35, 36)
WG_MMA(bf16, 128, WG_R64, WG_F64, 64, 65, 66, 67, 68)
WG_MMA(f16, 64, WG_R32, WG_F32, 32, 33, 34, 35, 36)
WG_MMA(f16, 128, WG_R64, WG_F64, 64, 65, 66, 67, 68)

// ---- a consumer warpgroup's work on one key tile (both kernels) ----
// Each thread holds rows r0 + g and r0 + 8 + g of its warp (r0: the warp's first query
// row), as fa_fwd's threads do with one 16-row fragment a warp.
template <int D> struct WgRows {
    float m[2] = {FA_NEG_INF, FA_NEG_INF};  // running max, log2 units
    float l[2] = {0.f, 0.f};                // this lane's share of the row sums
    float o[1][D / 8][4] = {};              // the output accumulator (C layout)
};

// Issues S = Q·Kᵀ for the warpgroup's 64 rows (Q rows at `qa` in a tile of M rows) and
// the BS keys of the tile at `sk` as one group: D/16 MMAs, step kk on columns 16kk.. of
// both, i.e. panel kk/4, 32·(kk%4) bytes into its rows. s is valid after a wait for the
// group and wg_pin(s).
template <typename T, int D, int M, int BS>
__device__ __forceinline__ void issue_scores(float (&s)[BS / 2], unsigned qa, unsigned sk) {
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const unsigned off = (kk % 4) * 32;
        const u64 a = sw128_desc(qa + (kk / 4) * M * SW_ROW + off, 16, SW_ATOM);
        const u64 b = sw128_desc(sk + (kk / 4) * BS * SW_ROW + off, 16, SW_ATOM);
        wgmma_ss<T, BS>(s, a, b, kk > 0);
    }
    wg_commit();
}

// The scores scaled to log2 units, masked, and the online softmax step, exactly as in
// fa_fwd: s becomes P (unnormalised), the running max and sums are updated, and corr[h]
// is what the output rows must be multiplied by (rescale) before P·V is added. Element
// (nb, e) is query r0 + g + 8(e/2), key k0 + 8nb + 2t + e%2.
template <int D, int BS>
__device__ __forceinline__ void softmax_wg(float (&s)[1][BS / 8][4], WgRows<D>& w, float sl2,
                                           int r0, int k0, int nk, int causal, float (&corr)[2]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[0][nb][e] *= sl2;
    if (k0 + BS > nk || (causal && k0 + BS - 1 > r0)) {
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = r0 + g + 8 * (e >> 1), kj = k0 + 8 * nb + 2 * t + (e & 1);
                if (kj >= nk || (causal && kj > i)) s[0][nb][e] = FA_NEG_INF;
            }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float mx = w.m[h];
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb)
            mx = fmaxf(mx, fmaxf(s[0][nb][2 * h], s[0][nb][2 * h + 1]));
        mx = row_max(mx);
        const float ref = mx == FA_NEG_INF ? 0.f : mx;
        corr[h] = ex2(w.m[h] - ref);
        w.m[h] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < BS / 8; ++nb) {
            s[0][nb][2 * h] = ex2(s[0][nb][2 * h] - ref);
            s[0][nb][2 * h + 1] = ex2(s[0][nb][2 * h + 1] - ref);
            sum += s[0][nb][2 * h] + s[0][nb][2 * h + 1];
        }
        w.l[h] = w.l[h] * corr[h] + sum;
    }
}

template <int D>
__device__ __forceinline__ void rescale(float (&o)[1][D / 8][4], const float (&corr)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb) {
            o[0][nb][2 * h] *= corr[h];
            o[0][nb][2 * h + 1] *= corr[h];
        }
}

// Issues O += P·V for the V tile at `sv` as one group: BS/16 MMAs, step kk on keys
// 16kk.. (V rows 16kk.., 2048·kk bytes into each panel; the next 64 columns one panel,
// BS·128 bytes, on), A = P (packed by pack_a). o is valid after a wait for the group and
// wg_pin(o).
template <typename T, int D, int BS>
__device__ __forceinline__ void issue_pv(float (&o)[D / 2], const unsigned (&pf)[1][BS / 16][4],
                                         unsigned sv) {
    wg_pin(o);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < BS / 16; ++kk)
        wgmma_rs_tn<T, D>(o, pf[0][kk], sw128_desc(sv + kk * 16 * SW_ROW, BS * SW_ROW, SW_ATOM));
    wg_commit();
}

// The 1×N/8×4 fragment arrays as the N/2 registers of a wgmma operand list.
template <int N> __device__ __forceinline__ float (&regs(float (&c)[1][N / 8][4]))[N / 2] {
    return reinterpret_cast<float(&)[N / 2]>(c);
}

// The warp's lse and output rows (rows ≥ nq skipped), through padded shared rows at
// `st` (the caller makes sure nothing else uses them), as fa_fwd finishes.
template <typename T, int D>
__device__ __forceinline__ void finish_wg(WgRows<D>& w, T* out, Rows outr, float* lse, T* st,
                                          int r0, int nq) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float inv[1][2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float l = row_sum(w.l[h]);
        inv[0][h] = 1.f / l;
        const int i = r0 + g + 8 * h;
        if (t == 0 && i < nq) lse[i] = w.m[h] * FA_LN2 + logf(l);
    }
    store_rows<T, D, 1>(out, outr.row, w.o, inv, st, r0, nq);
}

// ---- the forward with cp.async copies by every thread ----
// Shared bytes: Q (M rows), two stages of K and V tiles, and room to round the
// window's start up to a multiple of 1024 bytes (the swizzle's period).
template <int D, int CWG, int BS> struct Sm90Smem {
    static constexpr unsigned Q = 64 * CWG * D * 2, TILE = BS * D * 2;
    static constexpr unsigned BYTES = Q + 4 * TILE + SW_ATOM;
};

// Every thread copies; a block barrier opens each tile (next_kv_tile_sw), so the
// warpgroups work in step. The fallback of fa_forward_tma where a tensor map cannot
// describe an input (flash.rs), and the simplest of the three to check a card with.
template <typename T, int D, int CWG, int BS>
__device__ void fa_forward_wg(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                              T* out, Rows outr, float* lse, u64 tq, u64 tk, float scale,
                              int causal) {
    using Smem = Sm90Smem<D, CWG, BS>;
    constexpr int M = 64 * CWG, NT = 128 * CWG;
    static_assert(D % 64 == 0 && BS % 64 == 0, "tiles are whole 64-column panels");
    static_assert(M * (D + FA_PAD) * 2 <= Smem::BYTES, "output rows fit the shared window");
    const int nq = (int)tq, nk = (int)tk;
    check_launch<4 * CWG, M>(Smem::BYTES, nq);
    const int wg = threadIdx.x >> 7, warp = threadIdx.x >> 5;
    const u64 bh = blockIdx.x;
    // The block's, the warpgroup's and the warp's first query rows.
    const int q0 = blockIdx.y * M, w0 = q0 + 64 * wg, r0 = q0 + 16 * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), out += outr.start(bh);
    lse += bh * tq;
    const unsigned base = (smem_addr(fa_smem) + SW_ATOM - 1) & ~(unsigned)(SW_ATOM - 1);
    const unsigned sq = base, stages = base + Smem::Q;
    // Under the causal mask no query of this block sees a key past its last query.
    const int kend = causal ? min(nk, q0 + M) : nk, ntiles = (kend + BS - 1) / BS;
    cp_tile_sw<T, D, M, NT>(sq, q, qr.row, q0, nq);
    cp_tile_sw<T, D, BS, NT>(stages, k, kr.row, 0, nk);
    cp_tile_sw<T, D, BS, NT>(stages + Smem::TILE, v, vr.row, 0, nk);
    cp_async_commit();
    const float sl2 = scale * FA_LOG2E;
    WgRows<D> w;
    for (int j = 0; j < ntiles; ++j) {
        const int k0 = j * BS;
        const unsigned sk = stages + 2 * (j & 1) * Smem::TILE, sv = sk + Smem::TILE;
        next_kv_tile_sw<T, D, BS, NT>(stages, j, ntiles, k, kr, v, vr, nk);
        // Under the causal mask a warpgroup whose last row precedes the tile's first key
        // sees none of it (uniform over the warpgroup, as wgmma needs).
        if (causal && k0 > w0 + 63) continue;
        float s[1][BS / 8][4], corr[2];
        unsigned pf[1][BS / 16][4];
        issue_scores<T, D, M, BS>(regs<BS>(s), sq + 64 * wg * SW_ROW, sk);
        wg_wait<0>();
        wg_pin(regs<BS>(s));
        softmax_wg<D, BS>(s, w, sl2, r0, k0, nk, causal, corr);
        rescale<D>(w.o, corr);
        pack_a<T, 1, BS>(pf, s);
        issue_pv<T, D, BS>(regs<D>(w.o), pf, sv);
        wg_wait<0>();
        wg_pin(regs<D>(w.o));
    }
    // Every warpgroup is done with the shared window before the output goes through its
    // first M padded rows, warp w through rows 16w.. of them.
    cp_async_wait_all();
    __syncthreads();
    finish_wg<T, D>(w, out, outr, lse, reinterpret_cast<T*>(fa_smem) + 16 * warp * (D + FA_PAD),
                    r0, nq);
}

// ---- TMA and mbarriers ----
// A tensor map (CUtensorMap, encoded by the host: cuda/tma.rs), passed by value as a
// __grid_constant__ parameter so that its address is valid for the TMA unit.
struct __align__(64) TensorMap {
    u64 opaque[16];
};

// Shared-memory barriers (mbarrier): a count of arrivals and of bytes to land (the
// transaction count); a phase completes when both reach zero, and waiting names the
// parity of the phase waited for (0 for the first, 1 for the second, …).
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Arrives and adds `bytes` to the phase's transaction count (the copies then subtract
// what they write).
__device__ __forceinline__ void mbar_arrive_expect(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}
// One try: whether the phase of `parity` has completed, the thread held for up to a
// millisecond (the hint, in nanoseconds) while it has not.
__device__ __forceinline__ bool mbar_try(unsigned bar, unsigned parity) {
    unsigned done;
    asm volatile("{\n.reg .pred p;\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2, 1000000;\n"
                 "selp.u32 %0, 1, 0, p;\n}"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return done;
}
// Ends the kernel with an error the host sees (an illegal address: a store to 0). Not
// `__trap()`: inside the consumers' loop ptxas then serialises their MMAs and spills
// their accumulators at d = 128 (its log says so), where this store costs nothing.
__device__ __forceinline__ void fault() {
    asm volatile("st.global.u32 [%0], %1;" ::"l"(0ull), "r"(0u) : "memory");
}
__device__ __forceinline__ u64 global_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
// Waits for the phase of `parity`, or faults once the clock passes the block's deadline
// (the u64 at shared address `deadline`, set when the block starts): a wait that a
// protocol error leaves without its arrivals or bytes would otherwise spin until the
// process is killed, where now the launch fails with an error the host reports. The
// deadline is read from shared memory after a failed try rather than kept in a
// register: one more live register spills the consumers' accumulators at d = 128.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity, unsigned deadline) {
    while (!mbar_try(bar, parity)) {
        u64 until;
        asm volatile("ld.shared.u64 %0, [%1];" : "=l"(until) : "r"(deadline) : "memory");
        if (global_ns() > until) fault();
    }
}
// How long a block may take from its start before a wait gives up: 10 s, where a
// stage's copy or release takes microseconds and a block's whole run milliseconds.
constexpr u64 MBAR_DEADLINE_NS = 10000000000ull;

// Rows [row0, row0 + R) of head (bb, hh) of the tensor `map` describes (4-d: columns,
// rows, heads, batch; boxes of 64 columns × R rows) into the swizzled tile at `dst`, a
// box a panel, completing on barrier `bar`. The TMA unit writes a box in the 128-byte
// swizzle itself (the map says so) and zero-fills rows past the tensor's end.
template <int D, int R>
__device__ __forceinline__ void tma_tile(unsigned dst, const TensorMap& map, int row0, int hh,
                                         int bb, unsigned bar) {
#pragma unroll
    for (int p = 0; p < D / 64; ++p)
        asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                     " [%0], [%1, {%2, %3, %4, %5}], [%6];" ::"r"(dst + p * R * SW_ROW),
                     "l"(&map), "r"(64 * p), "r"(row0), "r"(hh), "r"(bb), "r"(bar)
                     : "memory");
}

// ---- the forward with TMA copies by a producer warpgroup ----
// Shared bytes: Q, ST stages of K and V tiles, the barriers, and room to align.
template <int D, int CWG, int BS, int ST> struct TmaSmem {
    static constexpr unsigned Q = 64 * CWG * D * 2, TILE = BS * D * 2;
    static constexpr unsigned BARRIERS = Q + 2 * ST * TILE;  // offset from the aligned base
    // The barriers (Q, then four a stage), then the waits' deadline (`mbar_wait`).
    static constexpr unsigned BYTES = BARRIERS + 8 * (2 + 4 * ST) + SW_ATOM;
};

// The block is CWG consumer warpgroups (warps 0..4·CWG−1) and a producer warpgroup,
// whose first thread issues every copy: Q once, then tile j's K and V into stage j % ST
// as soon as both warpgroups have released that stage's previous tile. Each stage has
// four barriers: K landed, V landed (one arrival, the producer's, plus the bytes), K
// released, V released (an arrival from each consumer warp once its MMAs on the tile
// are complete). Consumers never wait for each other: one warpgroup's softmax can run
// while the other's MMAs do. Use n of a stage (j = n·ST + s) waits for phase n of its
// landed barriers (parity n & 1); the producer's use n ≥ 1 waits for phase n − 1 of the
// released ones. Registers: a multiprocessor's four schedulers each hold a quarter of its
// registers and one warp of each warpgroup, so 3 warpgroups could have 168 registers a
// thread, too few for a consumer's accumulators and scores (ptxas then serialises the
// MMAs); the producer gives its share up (setmaxnreg: 24) and the consumers take it
// (240: a scheduler's three warps then hold 32·(240 + 240 + 24) = 16,128 of its 16,384).
template <typename T, int D, int CWG, int BS, int ST, bool PP>
__device__ void fa_forward_tma(const TensorMap& qm, const TensorMap& km, const TensorMap& vm,
                               u64 heads, T* out, Rows outr, float* lse, u64 tq, u64 tk,
                               float scale, int causal) {
    using Smem = TmaSmem<D, CWG, BS, ST>;
    constexpr int M = 64 * CWG, CW = 4 * CWG;
    static_assert(D % 64 == 0 && BS % 64 == 0, "tiles are whole 64-column panels");
    static_assert(M * (D + FA_PAD) * 2 <= Smem::BARRIERS, "output rows fit the tiles' window");
    static_assert(!PP || CWG == 2, "the ping-pong is between two warpgroups");
    const int nq = (int)tq, nk = (int)tk;
    check_launch<CW + 4, M>(Smem::BYTES, nq);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wg = warp >> 2;
    const u64 bh = blockIdx.x;
    const int q0 = blockIdx.y * M, r0 = q0 + 16 * warp;
    const int hh = (int)(bh % heads), bb = (int)(bh / heads);
    const unsigned base = (smem_addr(fa_smem) + SW_ATOM - 1) & ~(unsigned)(SW_ATOM - 1);
    const unsigned sq = base, stages = base + Smem::Q, bars = base + Smem::BARRIERS;
    // Barriers: Q landed, then per stage s: K landed, V landed, K released, V released.
    const unsigned q_full = bars, deadline = bars + 8 * (1 + 4 * ST);
    auto bar = [&](int kind, int s) { return bars + 8 * (1 + 4 * s + kind); };
    enum { K_FULL, V_FULL, K_FREE, V_FREE };
    if (threadIdx.x == 0) {
        const u64 until = global_ns() + MBAR_DEADLINE_NS;
        asm volatile("st.shared.u64 [%0], %1;" ::"r"(deadline), "l"(until) : "memory");
        mbar_init(q_full, 1);
        for (int s = 0; s < ST; ++s) {
            mbar_init(bar(K_FULL, s), 1);
            mbar_init(bar(V_FULL, s), 1);
            mbar_init(bar(K_FREE, s), CW);
            mbar_init(bar(V_FREE, s), CW);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    const int kend = causal ? min(nk, q0 + M) : nk, ntiles = (kend + BS - 1) / BS;
    if (warp >= CW) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
        if (warp == CW && lane == 0) {
            mbar_arrive_expect(q_full, Smem::Q);
            tma_tile<D, M>(sq, qm, q0, hh, bb, q_full);
            for (int j = 0; j < ntiles; ++j) {
                const int s = j % ST, n = j / ST;
                const unsigned sk = stages + 2 * s * Smem::TILE;
                if (n > 0) mbar_wait(bar(K_FREE, s), (n - 1) & 1, deadline);
                mbar_arrive_expect(bar(K_FULL, s), Smem::TILE);
                tma_tile<D, BS>(sk, km, j * BS, hh, bb, bar(K_FULL, s));
                if (n > 0) mbar_wait(bar(V_FREE, s), (n - 1) & 1, deadline);
                mbar_arrive_expect(bar(V_FULL, s), Smem::TILE);
                tma_tile<D, BS>(sk + Smem::TILE, vm, j * BS, hh, bb, bar(V_FULL, s));
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
    out += outr.start(bh);
    lse += bh * tq;
    const float sl2 = scale * FA_LOG2E;
    WgRows<D> w;
    mbar_wait(q_full, 0, deadline);
    // Tile j's S = Q·Kᵀ is issued before tile j − 1's P·V, and its softmax runs while
    // that product does (FlashAttention-3's overlap within a warpgroup): O is rescaled
    // for tile j's running max only once P_{j−1}·V_{j−1}, computed at the max before it,
    // has been added. Every tile is computed, also one the causal mask hides from a
    // warpgroup's rows entirely (masked to P = 0, it changes nothing), so that the
    // waits and releases are the same for every warp. Tile 0 (no product before it) and
    // the last P·V are outside the loop, so that every MMA group is waited for on the
    // path that issued it (ptxas serialises the MMAs where it cannot tell).
    //
    // With PP the two warpgroups take turns at issuing their MMAs (named barriers 2 and
    // 3, one a warpgroup: it waits for its turn, issues, and hands the turn over), so
    // that one's softmax runs while the other's MMAs do (FlashAttention-3's ping-pong).
    // Warpgroup 1 hands warpgroup 0 the first turn and keeps its own last one, so that
    // every arrival at a barrier is matched by a wait.
    float s[1][BS / 8][4], corr[2];
    unsigned pf[1][BS / 16][4];
    const unsigned qa = sq + 64 * wg * SW_ROW;
    auto tile = [&](int j) { return stages + 2 * (j % ST) * Smem::TILE; };
    auto wait_k = [&](int j) { mbar_wait(bar(K_FULL, j % ST), (j / ST) & 1, deadline); };
    auto wait_v = [&](int j) { mbar_wait(bar(V_FULL, j % ST), (j / ST) & 1, deadline); };
    auto issue_s = [&](int j) { issue_scores<T, D, M, BS>(regs<BS>(s), qa, tile(j)); };
    auto issue_o = [&](int j) {
        issue_pv<T, D, BS>(regs<D>(w.o), pf, tile(j) + Smem::TILE);
    };
    // (Barrier ids as immediates: with an id in a register ptxas reserves all 16.)
    auto take_turn = [&] {
        if constexpr (PP) {
            if (wg == 0) asm volatile("bar.sync 2, 256;" ::: "memory");
            else asm volatile("bar.sync 3, 256;" ::: "memory");
        }
    };
    auto hand_over = [&](bool last) {
        if constexpr (PP) {
            if (wg == 0) asm volatile("bar.arrive 3, 256;" ::: "memory");
            else if (!last) asm volatile("bar.arrive 2, 256;" ::: "memory");
        }
    };
    auto softmax_s = [&](int j) {
        wg_pin(regs<BS>(s));
        if (lane == 0) mbar_arrive(bar(K_FREE, j % ST));
        softmax_wg<D, BS>(s, w, sl2, r0, j * BS, nk, causal, corr);
    };
    auto release_o = [&](int j) {
        wg_pin(regs<D>(w.o));
        if (lane == 0) mbar_arrive(bar(V_FREE, j % ST));
    };
    if (ntiles > 0) {
        if (PP && wg == 1) asm volatile("bar.arrive 2, 256;" ::: "memory");
        wait_k(0);
        take_turn();
        issue_s(0);
        hand_over(false);
        wg_wait<0>();
        softmax_s(0);
        rescale<D>(w.o, corr);
        pack_a<T, 1, BS>(pf, s);
    }
    for (int j = 1; j < ntiles; ++j) {
        wait_k(j);
        wait_v(j - 1);
        take_turn();
        issue_s(j);
        issue_o(j - 1);
        hand_over(false);
        wg_wait<1>();
        softmax_s(j);
        wg_wait<0>();
        release_o(j - 1);
        rescale<D>(w.o, corr);
        pack_a<T, 1, BS>(pf, s);
    }
    if (ntiles > 0) {
        wait_v(ntiles - 1);
        take_turn();
        issue_o(ntiles - 1);
        hand_over(true);
        wg_wait<0>();
        release_o(ntiles - 1);
    }
    // Every consumer warp is done with the tiles (all copies issued have landed: each
    // was waited for) before the output goes through the window's first M padded rows.
    asm volatile("bar.sync 1, %0;" ::"n"(32 * CW) : "memory");
    finish_wg<T, D>(w, out, outr, lse, reinterpret_cast<T*>(fa_smem) + 16 * warp * (D + FA_PAD),
                    r0, nq);
}

// ---- the backward's dQ half on wgmma ----
// Shared bytes: Q and dO (M = 128 query rows), two stages of K and V tiles of BK keys,
// and room to align.
template <int D, int BK> struct DqSm90Smem {
    static constexpr unsigned QD = 128 * D * 2, TILE = BK * D * 2;
    static constexpr unsigned BYTES = 2 * QD + 4 * TILE + SW_ATOM;
};

// dQ of a block of 128 query rows, as fa_dq in flash_attention.cu computes it, with the
// products on wgmma: warpgroup w owns rows 64w..64w+63 (Q and dO resident); per key tile
// of BK (K and V streamed as in fa_forward_wg), S = Q·Kᵀ and dP = dO·Vᵀ (m64n<BK>k16,
// both operands K-major from shared memory), P from the row's lse and dS = P∘(dP −
// delta) in registers, then dQ += dS·K (m64n<D>k16, A from registers, B = the K tile
// read N-major, as V in the forward).
template <typename T, int D, int BK>
__device__ void fa_dq_wg(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                         const T* dout, Rows dr, const float* lse, const float* delta, T* dq,
                         Rows dqr, u64 tq, u64 tk, float scale, int causal) {
    using Smem = DqSm90Smem<D, BK>;
    constexpr int M = 128, NT = 256;
    static_assert(D % 64 == 0 && BK % 64 == 0, "tiles are whole 64-column panels");
    static_assert(M * (D + FA_PAD) * 2 <= Smem::BYTES - SW_ATOM, "dQ rows fit the window");
    const int nq = (int)tq, nk = (int)tk;
    check_launch<8, M>(Smem::BYTES, nq);
    const int wg = threadIdx.x >> 7, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    const int q0 = blockIdx.y * M, w0 = q0 + 64 * wg, r0 = q0 + 16 * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), dout += dr.start(bh);
    lse += bh * tq, delta += bh * tq;
    const unsigned base = (smem_addr(fa_smem) + SW_ATOM - 1) & ~(unsigned)(SW_ATOM - 1);
    const unsigned sq = base, sdo = base + Smem::QD, stages = base + 2 * Smem::QD;
    const int kend = causal ? min(nk, q0 + M) : nk, ntiles = (kend + BK - 1) / BK;
    cp_tile_sw<T, D, M, NT>(sq, q, qr.row, q0, nq);
    cp_tile_sw<T, D, M, NT>(sdo, dout, dr.row, q0, nq);
    cp_tile_sw<T, D, BK, NT>(stages, k, kr.row, 0, nk);
    cp_tile_sw<T, D, BK, NT>(stages + Smem::TILE, v, vr.row, 0, nk);
    cp_async_commit();
    // This thread's two rows' lse (in log2 units) and delta (rows past nq: 0, not stored).
    float l2[2], dl[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int i = r0 + g + 8 * h;
        l2[h] = i < nq ? lse[i] * FA_LOG2E : 0.f;
        dl[h] = i < nq ? delta[i] : 0.f;
    }
    const float sl2 = scale * FA_LOG2E;
    float dqa[1][D / 8][4] = {};
    for (int j = 0; j < ntiles; ++j) {
        const int k0 = j * BK;
        const unsigned sk = stages + 2 * (j & 1) * Smem::TILE, sv = sk + Smem::TILE;
        next_kv_tile_sw<T, D, BK, NT>(stages, j, ntiles, k, kr, v, vr, nk);
        if (causal && k0 > w0 + 63) continue;
        float s[1][BK / 8][4], dp[1][BK / 8][4];
        issue_scores<T, D, M, BK>(regs<BK>(s), sq + 64 * wg * SW_ROW, sk);
        issue_scores<T, D, M, BK>(regs<BK>(dp), sdo + 64 * wg * SW_ROW, sv);
        wg_wait<0>();
        wg_pin(regs<BK>(s));
        wg_pin(regs<BK>(dp));
        // Element (nb, e): query r0 + g + 8(e/2), key k0 + 8nb + 2t + e%2.
        const bool full = k0 + BK <= nk && !(causal && k0 + BK - 1 > r0);
#pragma unroll
        for (int nb = 0; nb < BK / 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1, i = r0 + g + 8 * h, kj = k0 + 8 * nb + 2 * t + (e & 1);
                float p = ex2(s[0][nb][e] * sl2 - l2[h]);
                if (!full && (kj >= nk || (causal && kj > i))) p = 0.f;
                dp[0][nb][e] = p * (dp[0][nb][e] - dl[h]);
            }
        unsigned dsf[1][BK / 16][4];
        pack_a<T, 1, BK>(dsf, dp);
        issue_pv<T, D, BK>(regs<D>(dqa), dsf, sk);
        wg_wait<0>();
        wg_pin(regs<D>(dqa));
    }
    cp_async_wait_all();
    __syncthreads();
    float mq[1][2] = {{scale, scale}};
    T* st = reinterpret_cast<T*>(fa_smem) + 16 * warp * (D + FA_PAD);
    dq += dqr.start(bh);
    store_rows<T, D, 1>(dq, dqr.row, dqa, mq, st, r0, nq);
}

// ---- the backward's dK/dV half on wgmma ----
// Shared bytes: K and V (M = 128 keys), two stages of Q and dO tiles of BQ queries, two
// stages of the tiles' lse and delta, and room to align.
template <int D, int BQ> struct DkdvSm90Smem {
    static constexpr unsigned KV = 128 * D * 2, TILE = BQ * D * 2;
    static constexpr unsigned ROWS = 2 * KV + 4 * TILE;  // lse and delta, from the base
    static constexpr unsigned BYTES = ROWS + 4 * BQ * 4 + SW_ATOM;
};

// dK and dV of a block of 128 keys, as fa_dkdv in flash_attention.cu computes them
// (dkdv_block without DQ: the scores transposed, keys as rows), with the products on
// wgmma: warpgroup w owns keys 64w..64w+63; per query tile of BQ rows (streamed with
// cp.async by every thread, two stages, a block barrier a tile), Sᵀ = K·Qᵀ and
// dPᵀ = V·dOᵀ (m64n<BQ>k16, both operands K-major from shared memory), Pᵀ from lse and
// dSᵀ = Pᵀ∘(dPᵀ − delta) in registers, then dV += Pᵀ·dO and dK += dSᵀ·Q (m64n<D>k16, A
// from registers, B = the dO and Q tiles read N-major, as V in the forward). dQ stays
// with fa_dq_sm90 (flash.rs runs both in the two-kernel backward with a Hopper forward
// switched on).
template <typename T, int D, int BQ>
__device__ void fa_dkdv_wg(const T* q, Rows qr, const T* k, Rows kr, const T* v, Rows vr,
                           const T* dout, Rows dr, const float* lse, const float* delta, T* dk,
                           T* dv, Rows dkvr, u64 tq, u64 tk, float scale, int causal) {
    using Smem = DkdvSm90Smem<D, BQ>;
    constexpr int M = 128, NT = 256;
    static_assert(D % 64 == 0 && BQ % 64 == 0, "tiles are whole 64-column panels");
    static_assert(2 * M * (D + FA_PAD) * 2 <= Smem::ROWS, "dK and dV rows fit the window");
    const int nq = (int)tq, nk = (int)tk;
    check_launch<8, M>(Smem::BYTES, nk);
    const int wg = threadIdx.x >> 7, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const u64 bh = blockIdx.x;
    // The block's, the warpgroup's and the warp's first keys.
    const int k0 = blockIdx.y * M, w0 = k0 + 64 * wg, r0 = k0 + 16 * warp;
    q += qr.start(bh), k += kr.start(bh), v += vr.start(bh), dout += dr.start(bh);
    lse += bh * tq, delta += bh * tq;
    // K at the base, V one KV on; stage s: Q at 2·KV + 2s·TILE, dO one TILE on; then
    // stage s's lse (BQ f32) at ROWS + 2s·BQ·4, its delta BQ·4 on.
    const unsigned window = smem_addr(fa_smem);
    const unsigned base = (window + SW_ATOM - 1) & ~(unsigned)(SW_ATOM - 1);
    const unsigned sk = base, sv = base + Smem::KV, stages = base + 2 * Smem::KV;
    const unsigned rows = base + Smem::ROWS;
    const float* srows = reinterpret_cast<const float*>(fa_smem + (rows - window));
    // Under the causal mask no query before the block's first key sees any of its keys.
    const int qs = causal ? min(k0, nq) : 0, ntiles = (nq - qs + BQ - 1) / BQ;
    auto issue = [&](int qb, int stage) {
        const unsigned sq = stages + 2 * stage * Smem::TILE;
        cp_tile_sw<T, D, BQ, NT>(sq, q, qr.row, qb, nq);
        cp_tile_sw<T, D, BQ, NT>(sq + Smem::TILE, dout, dr.row, qb, nq);
        cp_lse_delta<BQ>(rows + 2 * stage * BQ * 4, lse, delta, qb, nq);
    };
    cp_tile_sw<T, D, M, NT>(sk, k, kr.row, k0, nk);
    cp_tile_sw<T, D, M, NT>(sv, v, vr.row, k0, nk);
    if (ntiles > 0) issue(qs, 0);
    cp_async_commit();
    const float sl2 = scale * FA_LOG2E;
    float dka[1][D / 8][4] = {}, dva[1][D / 8][4] = {};
    for (int j = 0; j < ntiles; ++j) {
        const int qb = qs + j * BQ, stage = j & 1;
        const unsigned sq = stages + 2 * stage * Smem::TILE, sdo = sq + Smem::TILE;
        const float* sl = srows + 2 * stage * BQ;
        const float* sd = sl + BQ;
        cp_async_wait_all();
        fence_proxy_async();
        __syncthreads();
        if (j + 1 < ntiles) issue(qb + BQ, stage ^ 1);
        cp_async_commit();
        // Every key of this warpgroup comes after every query of the tile: all masked
        // (uniform over the warpgroup, as wgmma needs).
        if (causal && w0 > qb + BQ - 1) continue;
        float s[1][BQ / 8][4], dp[1][BQ / 8][4];
        issue_scores<T, D, M, BQ>(regs<BQ>(s), sk + 64 * wg * SW_ROW, sq);
        issue_scores<T, D, M, BQ>(regs<BQ>(dp), sv + 64 * wg * SW_ROW, sdo);
        wg_wait<0>();
        wg_pin(regs<BQ>(s));
        wg_pin(regs<BQ>(dp));
        // Element (nb, e): key r0 + g + 8(e/2) (row), query qb + 8nb + 2t + e%2 (column);
        // its lse and delta are shared[col], read as one 8-byte pair.
        const bool full = qb + BQ <= nq && !(causal && r0 + 15 > qb);
#pragma unroll
        for (int nb = 0; nb < BQ / 8; ++nb) {
            const int c = 8 * nb + 2 * t;
            const float2 lv = *reinterpret_cast<const float2*>(sl + c);
            const float2 dlv = *reinterpret_cast<const float2*>(sd + c);
            const float lc[2] = {lv.x * FA_LOG2E, lv.y * FA_LOG2E}, dc[2] = {dlv.x, dlv.y};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int kj = r0 + g + 8 * (e >> 1), i = qb + c + (e & 1);
                float p = ex2(s[0][nb][e] * sl2 - lc[e & 1]);
                if (!full && (i >= nq || (causal && kj > i))) p = 0.f;
                s[0][nb][e] = p;
                dp[0][nb][e] = p * (dp[0][nb][e] - dc[e & 1]);
            }
        }
        unsigned pf[1][BQ / 16][4], dsf[1][BQ / 16][4];
        pack_a<T, 1, BQ>(pf, s);
        pack_a<T, 1, BQ>(dsf, dp);
        issue_pv<T, D, BQ>(regs<D>(dva), pf, sdo);
        issue_pv<T, D, BQ>(regs<D>(dka), dsf, sq);
        wg_wait<0>();
        wg_pin(regs<D>(dva));
        wg_pin(regs<D>(dka));
    }
    cp_async_wait_all();
    __syncthreads();
    float mk[1][2] = {{scale, scale}}, mv[1][2] = {{1.f, 1.f}};
    // The tiles are free scratch now: dK's rows staged in the first M padded rows, dV's in
    // the M after them.
    T* st = reinterpret_cast<T*>(fa_smem) + 16 * warp * (D + FA_PAD);
    dk += dkvr.start(bh), dv += dkvr.start(bh);
    store_rows<T, D, 1>(dk, dkvr.row, dka, mk, st, r0, nk);
    store_rows<T, D, 1>(dv, dkvr.row, dva, mv, st + M * (D + FA_PAD), r0, nk);
}

// bf16/f16 at head dim D: CWG warpgroups of 64 query rows, key tiles of BS, and (TMA)
// ST stages. At d = 128 one block a multiprocessor (161 KiB of shared memory; 2 stages),
// at d = 64 one (cp.async: 81 KiB) or one with 3 stages (TMA: 113 KiB). The TMA forward
// with and without the ping-pong of its warpgroups (fa_fwd_tma_pp, fa_fwd_tma).
#define FA_TMA(S, T, D, CWG, BS, ST, PP, NAME)                                            \
    extern "C" __global__ void __launch_bounds__(128 * CWG + 128, 1) NAME##_##S##_d##D(  \
        const __grid_constant__ TensorMap qm, const __grid_constant__ TensorMap km,         \
        const __grid_constant__ TensorMap vm, u64 heads, T* out, Rows outr, float* lse,     \
        u64 tq, u64 tk, float scale, int causal) {                                          \
        fa_forward_tma<T, D, CWG, BS, ST, PP>(qm, km, vm, heads, out, outr, lse, tq, tk,    \
                                              scale, causal);                               \
    }
#define FA_SM90(S, T, D, CWG, BS, ST)                                                     \
    extern "C" __global__ void __launch_bounds__(128 * CWG, 1)                            \
        fa_fwd_sm90_##S##_d##D(FA_PARAMS_FWD(T)) {                                        \
        fa_forward_wg<T, D, CWG, BS>(FA_QKV, out, outr, lse, tq, tk, scale, causal);      \
    }                                                                                     \
    FA_TMA(S, T, D, CWG, BS, ST, false, fa_fwd_tma)                                       \
    FA_TMA(S, T, D, CWG, BS, ST, true, fa_fwd_tma_pp)

// The dK/dV kernel at head dim D with query tiles of BQ.
#define FA_DKDV_SM90(S, T, D, BQ)                                                         \
    extern "C" __global__ void __launch_bounds__(256, 1) fa_dkdv_sm90_##S##_d##D(         \
        FA_PARAMS_DKDV(T)) {                                                              \
        fa_dkdv_wg<T, D, BQ>(FA_QKV, dout, dr, lse, delta, dk, dv, dkvr, tq, tk, scale,    \
                             causal);                                                     \
    }

FA_SM90(bf16, bf16, 64, 2, 128, 3)
FA_SM90(bf16, bf16, 128, 2, 128, 2)
FA_SM90(f16, f16, 64, 2, 128, 3)
FA_SM90(f16, f16, 128, 2, 128, 2)
// The dQ kernel at head dim D with key tiles of BK.
#define FA_DQ_SM90(S, T, D, BK)                                                           \
    extern "C" __global__ void __launch_bounds__(256, 1) fa_dq_sm90_##S##_d##D(           \
        FA_PARAMS_DQ(T)) {                                                                \
        fa_dq_wg<T, D, BK>(FA_QKV, dout, dr, lse, delta, dq, dqr, tq, tk, scale, causal);  \
    }

FA_DKDV_SM90(bf16, bf16, 64, 64)
FA_DKDV_SM90(bf16, bf16, 128, 64)
FA_DKDV_SM90(f16, f16, 64, 64)
FA_DKDV_SM90(f16, f16, 128, 64)
FA_DQ_SM90(bf16, bf16, 64, 64)
FA_DQ_SM90(bf16, bf16, 128, 64)
FA_DQ_SM90(f16, f16, 64, 64)
FA_DQ_SM90(f16, f16, 128, 64)
