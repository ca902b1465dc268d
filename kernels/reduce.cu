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
