// Sum, max and min over any set of dims. The host splits the input into a view of the
// kept dims and a view of the reduced dims (offset 0), so output o and reduced element j
// sit at offset_of(kept, o) + offset_of(red, j).
#include "common.cuh"

#define REDUCE(S, T)                                                                      \
    /* One block per output: the reduced elements are spread over the threads and      */ \
    /* combined with warp shuffles. Best when the reduced elements are close together. */ \
    extern "C" __global__ void reduce_rows_##S(const T* x, View kept, View red, T* out,   \
                                               u64 n_out, u64 n_red, int op) {            \
        typedef Acc<T>::type A;                                                           \
        for (u64 o = blockIdx.x; o < n_out; o += gridDim.x) {                             \
            u64 base = offset_of(kept, o);                                                \
            A acc = red_identity<A>(op);                                                  \
            for (u64 j = threadIdx.x; j < n_red; j += blockDim.x)                         \
                acc = red_combine(op, acc, (A)load(x[base + offset_of(red, j)]));         \
            acc = block_reduce(op, acc);                                                  \
            if (threadIdx.x == 0) put(out + o, acc);                                      \
        }                                                                                 \
    }                                                                                     \
    /* One thread per output: neighbouring threads read neighbouring columns, which    */ \
    /* keeps reads coalesced when the kept dims are innermost (bias gradients).        */ \
    extern "C" __global__ void reduce_cols_##S(const T* x, View kept, View red, T* out,   \
                                               u64 n_out, u64 n_red, int op) {            \
        typedef Acc<T>::type A;                                                           \
        GRID_STRIDE(o, n_out) {                                                           \
            u64 base = offset_of(kept, o);                                                \
            A acc = red_identity<A>(op);                                                  \
            for (u64 j = 0; j < n_red; ++j)                                               \
                acc = red_combine(op, acc, (A)load(x[base + offset_of(red, j)]));         \
            put(out + o, acc);                                                            \
        }                                                                                 \
    }

FOR_FLOATS(REDUCE)

// `op` over the middle dim of a contiguous [outer, rows, cols] input x, or of x·y when y
// (of the same shape) is not null: reduced dims that form one block of dims, not
// trailing (a bias gradient is [rows, cols] → [cols], with outer = 1; the gradient of a
// broadcast factor is the sum of a product, which then never reaches memory). Block (32, 8): x over 32 adjacent columns (coalesced reads), y over rows;
// blockIdx.y takes rows [y·per, (y+1)·per), blockIdx.z (grid-stride) the outer index.
// Each block leaves its partial in part[p][y][c] (accumulation type), and
// reduce_middle_finish combines a column's partials in order. The split depends only
// on the shape, so results are identical run to run.
#define REDUCE_MIDDLE(S, T)                                                               \
    extern "C" __global__ void reduce_middle_##S(const T* x, const T* y,                  \
                                                 Acc<T>::type* part, u64 outer, u64 rows, \
                                                 u64 cols, u64 per, int op) {             \
        typedef Acc<T>::type A;                                                           \
        __shared__ A partial[8][33];                                                      \
        const u64 c = (u64)blockIdx.x * 32 + threadIdx.x;                                 \
        const u64 r0 = (u64)blockIdx.y * per;                                             \
        const u64 r1 = r0 + per < rows ? r0 + per : rows;                                 \
        for (u64 p = blockIdx.z; p < outer; p += gridDim.z) {                             \
            const u64 base = p * rows * cols;                                             \
            A acc = red_identity<A>(op);                                                  \
            if (c < cols)                                                                 \
                for (u64 r = r0 + threadIdx.y; r < r1; r += 8) {                          \
                    const u64 i = base + r * cols + c;                                    \
                    const A v = (A)load(x[i]) * (y ? (A)load(y[i]) : (A)1);              \
                    acc = red_combine(op, acc, v);                                        \
                }                                                                         \
            partial[threadIdx.y][threadIdx.x] = acc;                                      \
            __syncthreads();                                                              \
            if (threadIdx.y == 0 && c < cols) {                                           \
                for (int i = 1; i < 8; ++i)                                               \
                    acc = red_combine(op, acc, partial[i][threadIdx.x]);                  \
                part[(p * gridDim.y + blockIdx.y) * cols + c] = acc;                      \
            }                                                                             \
            __syncthreads();                                                              \
        }                                                                                 \
    }                                                                                     \
    extern "C" __global__ void reduce_middle_finish_##S(const Acc<T>::type* part, T* out, \
                                                        u64 outer, u64 chunks, u64 cols,  \
                                                        int op) {                         \
        typedef Acc<T>::type A;                                                           \
        GRID_STRIDE(o, outer * cols) {                                                    \
            const u64 p = o / cols, c = o % cols;                                         \
            A acc = red_identity<A>(op);                                                  \
            for (u64 k = 0; k < chunks; ++k)                                              \
                acc = red_combine(op, acc, part[(p * chunks + k) * cols + c]);            \
            put(out + o, acc);                                                            \
        }                                                                                 \
    }

FOR_FLOATS(REDUCE_MIDDLE)

// The gradients of a gated product `full·gate` (in a gated residual `stream + gate·full`;
// gate one row of `cols` per group of `rows` consecutive rows of `full`) from the output
// gradient g: d_full = g·gate elementwise, and the gate's gradient Σ_rows g·full as
// reduce_middle's partials, which reduce_middle_finish adds up in order. One read of g
// for both, where a product kernel and a reduction read it once each. Block (32, 8) and
// grid as reduce_middle's, blockIdx.z over the groups. full and d_full are of type F and
// the gate of Q: g's type T, or bf16/f16 beside an f32 g (autocast's residual around a
// half-precision product, `_f32_{full}_{gate}`).
template <typename T, typename F, typename Q>
__device__ __forceinline__ void gated_product_grads(const T* g, const F* full, const Q* gate,
                                                    F* d_full, typename Acc<T>::type* part,
                                                    u64 groups, u64 rows, u64 cols, u64 per) {
    typedef typename Acc<T>::type A;
    __shared__ A partial[8][33];
    const u64 c = (u64)blockIdx.x * 32 + threadIdx.x;
    const u64 r0 = (u64)blockIdx.y * per;
    const u64 r1 = r0 + per < rows ? r0 + per : rows;
    for (u64 p = blockIdx.z; p < groups; p += gridDim.z) {
        const u64 base = p * rows * cols;
        A acc = 0;
        if (c < cols) {
            const A f = (A)load(gate[p * cols + c]);
            for (u64 r = r0 + threadIdx.y; r < r1; r += 8) {
                const u64 i = base + r * cols + c;
                const A gv = (A)load(g[i]);
                put(d_full + i, gv * f);
                acc += gv * (A)load(full[i]);
            }
        }
        partial[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && c < cols) {
            for (int i = 1; i < 8; ++i) acc += partial[i][threadIdx.x];
            part[(p * gridDim.y + blockIdx.y) * cols + c] = acc;
        }
        __syncthreads();
    }
}

#define GATED_PRODUCT_GRADS(S, T, F, Q)                                                   \
    extern "C" __global__ void gated_product_grads_##S(                                   \
        const T* g, const F* full, const Q* gate, F* d_full, Acc<T>::type* part,          \
        u64 groups, u64 rows, u64 cols, u64 per) {                                        \
        gated_product_grads<T, F, Q>(g, full, gate, d_full, part, groups, rows, cols,     \
                                     per);                                                \
    }
#define GATED_PRODUCT_GRADS_SAME(S, T) GATED_PRODUCT_GRADS(S, T, T, T)
#define GATED_PRODUCT_GRADS_HALF(S, H)                                                    \
    GATED_PRODUCT_GRADS(f32_##S##_f32, float, H, float)                                   \
    GATED_PRODUCT_GRADS(f32_##S##_##S, float, H, H)                                       \
    GATED_PRODUCT_GRADS(f32_f32_##S, float, float, H)

FOR_FLOATS(GATED_PRODUCT_GRADS_SAME)
GATED_PRODUCT_GRADS_HALF(bf16, bf16)
GATED_PRODUCT_GRADS_HALF(f16, f16)

// This thread's share of `op` over a contiguous row of d elements, the group of
// `threads` threads (a warp or a block) being numbered by `t`: the elements before the
// first 16-byte boundary, then 16-byte packs, then the tail. Rows start anywhere (d need
// not be a multiple of a pack), so each row finds its own boundary.
template <typename T, typename A>
__device__ __forceinline__ A row_partial(const T* __restrict__ row, u64 d, int op, u64 t,
                                         u64 threads) {
    const u64 w = 16 / sizeof(T);
    u64 head = ((16 - ((u64)row & 15)) & 15) / sizeof(T);
    head = head < d ? head : d;
    const u64 packs = (d - head) / w;
    const uint4* p = (const uint4*)(row + head);
    A acc = red_identity<A>(op);
    for (u64 j = t; j < head; j += threads) acc = red_combine(op, acc, (A)load(row[j]));
#pragma unroll 4
    for (u64 k = t; k < packs; k += threads) {
        Pack<T> v;
        v.u = p[k];
#pragma unroll
        for (int j = 0; j < (int)w; ++j) acc = red_combine(op, acc, (A)load(v.v[j]));
    }
    for (u64 j = head + packs * w + t; j < d; j += threads)
        acc = red_combine(op, acc, (A)load(row[j]));
    return acc;
}

// `op` over the last d elements of contiguous rows (reduced dims trailing and the input
// contiguous): x points at the first element, row r starts at x + r·d.
#define REDUCE_LAST(S, T)                                                                 \
    /* A warp per row, for rows shorter than a block's worth of work. */                  \
    extern "C" __global__ void reduce_last_warp_##S(const T* x, T* out, u64 rows, u64 d,  \
                                                    int op) {                             \
        typedef Acc<T>::type A;                                                           \
        const u64 warps = blockDim.x >> 5, lane = threadIdx.x & 31;                       \
        for (u64 r = (u64)blockIdx.x * warps + (threadIdx.x >> 5); r < rows;              \
             r += (u64)gridDim.x * warps) {                                               \
            A acc = warp_reduce(op, row_partial<T, A>(x + r * d, d, op, lane, 32));       \
            if (lane == 0) put(out + r, acc);                                             \
        }                                                                                 \
    }                                                                                     \
    /* A block per row, for long rows. */                                                 \
    extern "C" __global__ void reduce_last_block_##S(const T* x, T* out, u64 rows, u64 d, \
                                                     int op) {                            \
        typedef Acc<T>::type A;                                                           \
        for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {                              \
            A acc = row_partial<T, A>(x + r * d, d, op, threadIdx.x, blockDim.x);         \
            acc = block_reduce(op, acc);                                                  \
            if (threadIdx.x == 0) put(out + r, acc);                                      \
        }                                                                                 \
    }

FOR_FLOATS(REDUCE_LAST)
