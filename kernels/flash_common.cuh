// What the fused attention kernels share (kernels/flash_attention.cu, the
// FlashAttention-2 style kernels for every card; kernels/flash_attention_sm90.cu, the
// Hopper forward): where a head's rows lie, the row reductions of the tensor-core
// fragment layout, asynchronous copies, base-2 exponentials, packing accumulators as the
// next product's operand, staging and storing output rows, and the launch check. Pasted
// after common.cuh by the loader (crates/engine/src/cuda/kernels.rs).

// Where a matrix's rows lie: row i of head bh starts (bh / heads)·batch +
// (bh % heads)·head + i·row elements after its address; its D elements are contiguous.
// `Rows` in flash.rs; for bf16/f16 every stride is a multiple of 8 and the address
// 16-byte aligned (the host copies an input that is not), as 16-byte cp.async and
// stores need.
struct Rows {
    u64 batch, head, row, heads;
    __device__ __forceinline__ u64 start(u64 bh) const {
        return (bh / heads) * batch + (bh % heads) * head;
    }
};

// Shared rows are padded by 8 elements (16 bytes for halves), so that the 8 row
// addresses of one ldmatrix 8×8 matrix (and one 8-thread phase of 16-byte accesses)
// fall in 8 distinct 4-bank groups: a half row is D/2 + 4 words = 20, 36, 68 for
// D = 32, 64, 128, i.e. 20, 4, 4 (mod 32), and 8 consecutive multiples of either visit
// every 4-bank group once (scripts/flash_fragments.py checks every ldmatrix).
#define FA_PAD 8
#define FA_NEG_INF (-__int_as_float(0x7f800000))
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

// Max and sum over the 4 lanes that share a fragment row (lanes 4g … 4g+3).
__device__ __forceinline__ float row_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float row_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16/.f16 inputs and f32 accumulators;
// these are the layouts the previous version of this file relied on and that passed
// its GPU tests). Lane = 4g + t (g = lane/4 in 0..8, t = lane%4). A 32-bit register
// holds two 16-bit elements, the lower column (or row, for B) in the low 16 bits.
//   A (16×16, row-major), a[0..4]: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..2t+1),
//       a2 = (g, 2t+8..2t+9), a3 = (g+8, 2t+8..2t+9)          [(row, cols)]
//   B (16×8), b[0..2]: b0 = (2t..2t+1, g), b1 = (2t+8..2t+9, g)  [(rows k, col n)]
//   C (16×8, f32), c[0..4]: c0, c1 = (g, 2t), (g, 2t+1); c2, c3 = (g+8, 2t), (g+8, 2t+1)
// A warp's fragments of a 16×N accumulator are c[N/8][4], one per 8-column block nb.

extern __shared__ __align__(16) unsigned char fa_smem[];

// The shared-window address of a generic pointer into shared memory (what ldmatrix and
// cp.async take).
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// Bytes of dynamic shared memory this launch got (the host computes the size; each
// kernel traps if it is short).
__device__ __forceinline__ unsigned dynamic_smem_bytes() {
    unsigned r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}

// 16 bytes global → shared without passing through registers (sm_80). With `full`
// false the source size is 0: nothing is read and the 16 bytes are zero-filled, which
// is how rows past the end of a matrix become zeros. .cg: cached in L2 only (each tile
// is read once per block; L1 would only be polluted).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool full) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(full ? 16 : 0)
                 : "memory");
}
// 4 bytes, as cp_async16 copies 16 (.ca: .cg allows only 16-byte copies).
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, bool full) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src),
                 "r"(full ? 4 : 0)
                 : "memory");
}
// Closes the group of this thread's cp.async issued since the last commit (an empty
// group when there were none: it counts, and is complete at once).
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
// Waits until every group this thread committed is complete. Other threads' copies
// become visible only after a following __syncthreads().
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_group 0;" ::: "memory");
}

// 2^x (ex2.approx: relative error about 2^-22, −inf → +0, subnormal results flushed to
// zero). The softmax runs in base 2 with log2(e) folded into the score scale, so each
// probability costs one add (or FMA) and one MUFU.EX2 instead of expf's range
// reduction and multiply.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// (lo, hi) rounded to nearest even and packed, lo in the low 16 bits. cvt.rn.{b}f16x2
// puts its first source in the upper half, hence (hi, lo).
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<bf16>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ unsigned pack2<f16>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// An accumulator (16×N, C layout) as the A operand of a product over its N columns,
// rounded to T: for k-slice kk (columns 16kk..16kk+16), a0 = (g, 2t..) and a1 =
// (g+8, 2t..) are c0,c1 and c2,c3 of column block 2kk; a2, a3 the same of block 2kk+1
// (its columns are the slice's 8 + 2t..). So P and dS never leave registers.
template <typename T, int MT, int N>
__device__ __forceinline__ void pack_a(unsigned (&a)[MT][N / 16][4], const float (&c)[MT][N / 8][4]) {
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int kk = 0; kk < N / 16; ++kk) {
            a[m][kk][0] = pack2<T>(c[m][2 * kk][0], c[m][2 * kk][1]);
            a[m][kk][1] = pack2<T>(c[m][2 * kk][2], c[m][2 * kk][3]);
            a[m][kk][2] = pack2<T>(c[m][2 * kk + 1][0], c[m][2 * kk + 1][1]);
            a[m][kk][3] = pack2<T>(c[m][2 * kk + 1][2], c[m][2 * kk + 1][3]);
        }
}

// The accumulator fragments `c` (16·MT rows of N columns, C layout), row (m, h) times
// mul[m][h], rounded to T into the shared rows at `st` (row stride `ld` elements): each
// lane writes its 32-bit pairs. The strides in use (D + FA_PAD, and BS + FA_PAD for the
// dSᵀ tile) are 20, 36 or 68 words, so lane (g, t) writes word 20g + t or 4g + t
// (mod 32) plus 4nb: the 32 lanes of a store hit 32 distinct banks.
template <typename T, int N, int MT>
__device__ __forceinline__ void stage_rows(T* st, int ld, const float (&c)[MT][N / 8][4],
                                           const float (&mul)[MT][2]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int nb = 0; nb < N / 8; ++nb)
                *reinterpret_cast<unsigned*>(st + (16 * m + g + 8 * h) * ld + 8 * nb + 2 * t) =
                    pack2<T>(c[m][nb][2 * h] * mul[m][h], c[m][nb][2 * h + 1] * mul[m][h]);
}

// Writes a warp's 16·MT accumulator rows (C layout, row (m, h) = 16m + g + 8h times
// mul[m][h]) to rows [row0, row0 + 16·MT) of the [n, D] matrix `dst` (row stride `ld`),
// skipping rows ≥ n, through the warp's own rows of shared scratch `st` (row stride
// LD): each lane writes its 32-bit pairs there (conflict-free: see FA_PAD), then the
// warp stores whole rows as 16-byte vectors (coalesced). The caller makes sure no
// other warp uses those scratch rows.
template <typename T, int D, int MT>
__device__ __forceinline__ void store_rows(T* dst, u64 ld, const float (&c)[MT][D / 8][4],
                                           const float (&mul)[MT][2], T* st, int row0, int n) {
    constexpr int LD = D + FA_PAD, CPR = D / 8, R = 16 * MT;
    const int lane = threadIdx.x & 31;
    stage_rows<T, D, MT>(st, LD, c, mul);
    __syncwarp();
    // Lane x stores chunk x % CPR of rows x / CPR + i·(32/CPR), as cp_tile loads.
    const int lr = lane / CPR, col = lane % CPR * 8;
#pragma unroll
    for (int i = 0; i < R / (32 / CPR); ++i) {
        const int r = lr + i * (32 / CPR);
        if (row0 + r < n)
            *reinterpret_cast<uint4*>(dst + (u64)(row0 + r) * ld + col) =
                *reinterpret_cast<const uint4*>(st + r * LD + col);
    }
}

// The lse and delta of queries [qb, qb + BQ) (f32 [tq] rows of one head) into the shared
// floats at `dst` (BQ lse values, then BQ delta values): thread x < BQ copies lse of
// query qb + x, BQ ≤ x < 2·BQ delta of qb + x − BQ, 4 bytes each; past nq zero-filled.
// Asynchronous, as cp_tile.
template <int BQ>
__device__ __forceinline__ void cp_lse_delta(unsigned dst, const float* lse, const float* delta,
                                             int qb, int nq) {
    const int x = threadIdx.x;
    if (x < 2 * BQ) {
        const int c = x < BQ ? x : x - BQ, i = qb + c;
        const float* src = (x < BQ ? lse : delta) + (i < nq ? i : 0);
        cp_async4(dst + x * 4, src, i < nq);
    }
}

// The launch must match the instantiation: W warps, at least `smem` bytes of dynamic
// shared memory, and ⌈rows / M⌉ blocks along y (M rows each). flash.rs computes these
// from the same table; a mismatch would read or write out of bounds, so trap instead.
template <int W, int M>
__device__ __forceinline__ void check_launch(unsigned smem, int rows) {
    if (blockDim.x != 32 * W || dynamic_smem_bytes() < smem ||
        (int)gridDim.y != (rows + M - 1) / M)
        __trap();
}

// The forward's, dQ's and the dK/dV kernels' parameters (both files' take them: `forward`
// and `backward` in flash.rs).
#define FA_PARAMS_FWD(T)                                                                    \
    const T *q, Rows qr, const T *k, Rows kr, const T *v, Rows vr, T *out, Rows outr,      \
        float *lse, u64 tq, u64 tk, float scale, int causal
#define FA_PARAMS_DQ(T)                                                                     \
    const T *q, Rows qr, const T *k, Rows kr, const T *v, Rows vr, const T *dout, Rows dr, \
        const float *lse, const float *delta, T *dq, Rows dqr, u64 tq, u64 tk, float scale, \
        int causal
#define FA_PARAMS_DKDV(T)                                                                   \
    const T *q, Rows qr, const T *k, Rows kr, const T *v, Rows vr, const T *dout, Rows dr, \
        const float *lse, const float *delta, T *dk, T *dv, Rows dkvr, u64 tq, u64 tk,     \
        float scale, int causal
// The three inputs and their row placements, as every kernel takes them first.
#define FA_QKV q, qr, k, kr, v, vr
