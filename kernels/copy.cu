// Copies between strided views. Copies move bits, so they are instantiated by element
// size (2, 4, 8 bytes) and serve every dtype, i64 included.
#include "common.cuh"

#define COPY(S, T)                                                                        \
    /* A contiguous copy of the view. */                                                  \
    extern "C" __global__ void copy_strided_##S(const T* src, View sv, T* dst, u64 n) {  \
        GRID_STRIDE(i, n) dst[i] = src[offset_of(sv, i)];                                 \
    }                                                                                     \
    /* Writes the view of src into the view of dst (same shape). */                       \
    extern "C" __global__ void copy_into_##S(const T* src, View sv, T* dst, View dv,      \
                                             u64 n) {                                     \
        GRID_STRIDE(i, n) dst[offset_of(dv, i)] = src[offset_of(sv, i)];                  \
    }

COPY(b2, unsigned short)
COPY(b4, unsigned int)
COPY(b8, u64)
