// Indexing: index_select and gather (data movement, instantiated by element size, so
// every dtype is served) and their backwards index_add (ordered sums, below) and
// scatter_add (atomic adds into a zeroed buffer of the compute type, so its sums can
// differ in the last bits from run to run). The host has checked every index.
#include "common.cuh"

// Offset of element i (row-major over v.shape) of view v with coordinate `dim`
// replaced by `idx`.
__device__ __forceinline__ u64 offset_at(const View& v, u64 i, u64 dim, u64 idx) {
    u64 off = v.offset;
    for (int d = (int)v.rank - 1; d >= 0; --d) {
        u64 c = i % v.shape[d];
        i /= v.shape[d];
        off += ((u64)d == dim ? idx : c) * v.strides[d];
    }
    return off;
}

#define MOVE(S, T)                                                                        \
    /* out[o, j, i] = x[o, ids[j], i] for a contiguous x of shape [outer, mid, inner]. */ \
    extern "C" __global__ void index_select_##S(const T* x, const i64* ids, T* out,      \
                                                u64 mid, u64 nids, u64 inner, u64 n) {    \
        GRID_STRIDE(p, n) {                                                               \
            u64 i = p % inner, j = (p / inner) % nids, o = p / (inner * nids);            \
            out[p] = x[(o * mid + (u64)ids[j]) * inner + i];                              \
        }                                                                                 \
    }                                                                                     \
    /* out[p] = x[p with coordinate dim replaced by ids[p]]; xv has the ids' shape and */ \
    /* x's strides; ids contiguous.                                                    */ \
    extern "C" __global__ void gather_##S(const T* x, View xv, const i64* ids, u64 dim,   \
                                          T* out, u64 n) {                                \
        GRID_STRIDE(p, n) out[p] = x[offset_at(xv, p, dim, (u64)ids[p])];                 \
    }

MOVE(b2, unsigned short)
MOVE(b4, unsigned int)
MOVE(b8, u64)

#define ADD(S, T)                                                                         \
    /* index_add in two ordered passes, so that its sums are identical run to run. The  */ \
    /* host sorts the positions j of ids by index, stably (order), and cuts that list   */ \
    /* into chunks [cb[c], cb[c+1]) of one index each; the chunks of index m are        */ \
    /* [seg[m], seg[m+1]). First part[o, c, i] = Σ src[o, order[q], i] over chunk c,    */ \
    /* src contiguous [outer, nids, inner] ...                                          */ \
    extern "C" __global__ void index_add_chunks_##S(const T* src, const i64* order,       \
                                                    const i64* cb, Acc<T>::type* part,    \
                                                    u64 nids, u64 chunks, u64 inner,      \
                                                    u64 n) {                              \
        typedef Acc<T>::type A;                                                           \
        GRID_STRIDE(p, n) {                                                               \
            const u64 i = p % inner, c = (p / inner) % chunks, o = p / (inner * chunks);  \
            A acc = 0;                                                                    \
            for (i64 q = cb[c]; q < cb[c + 1]; ++q)                                       \
                acc += (A)load(src[(o * nids + (u64)order[q]) * inner + i]);              \
            part[p] = acc;                                                                \
        }                                                                                 \
    }                                                                                     \
    /* ... then out[o, m, i] = Σ part[o, c, i] over index m's chunks (0 for none).      */ \
    extern "C" __global__ void index_add_segments_##S(const Acc<T>::type* part,           \
                                                      const i64* seg, T* out, u64 mid,    \
                                                      u64 chunks, u64 inner, u64 n) {     \
        typedef Acc<T>::type A;                                                           \
        GRID_STRIDE(p, n) {                                                               \
            const u64 i = p % inner, m = (p / inner) % mid, o = p / (inner * mid);        \
            A acc = 0;                                                                    \
            for (i64 c = seg[m]; c < seg[m + 1]; ++c)                                     \
                acc += part[(o * chunks + c) * inner + i];                                \
            put(out + p, acc);                                                            \
        }                                                                                 \
    }                                                                                     \
    /* out[p with coordinate dim replaced by ids[p]] += src[p]; sv is src's view, dv   */ \
    /* has the ids' shape and out's contiguous strides.                                */ \
    extern "C" __global__ void scatter_add_##S(const T* src, View sv, const i64* ids,     \
                                               View dv, u64 dim, Acc<T>::type* out,       \
                                               u64 n) {                                   \
        GRID_STRIDE(p, n)                                                                 \
            atomicAdd(out + offset_at(dv, p, dim, (u64)ids[p]), load(src[offset_of(sv, p)])); \
    }

FOR_FLOATS(ADD)
