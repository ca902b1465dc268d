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

// A 2-D view whose inner dim is the source's outer one (a transpose, `a.t().contiguous()`):
// dst[r·cols + c] = src[c·ld + r]. A strided copy reads (or writes) one element per
// 32-byte sector; here a block stages 32×32 tiles in shared memory (33 columns, so the
// column reads fall in distinct banks) and both sides move whole rows. One-dimensional
// grid over the tiles, so neither extent meets the 65535 limit of grid.y.
#define TRANSPOSE(S, T)                                                                   \
    extern "C" __global__ void copy_transpose_##S(const T* src, u64 rows, u64 cols,       \
                                                  u64 ld, T* dst) {                       \
        __shared__ T tile[32][33];                                                        \
        const u64 tiles_r = (rows + 31) / 32, tiles = tiles_r * ((cols + 31) / 32);       \
        for (u64 t = blockIdx.x; t < tiles; t += gridDim.x) {                             \
            const u64 r0 = (t % tiles_r) * 32, c0 = (t / tiles_r) * 32;                   \
            for (u64 j = threadIdx.y; j < 32; j += blockDim.y) {                          \
                u64 r = r0 + threadIdx.x, c = c0 + j;                                     \
                if (r < rows && c < cols) tile[j][threadIdx.x] = src[c * ld + r];          \
            }                                                                             \
            __syncthreads();                                                              \
            for (u64 j = threadIdx.y; j < 32; j += blockDim.y) {                          \
                u64 r = r0 + j, c = c0 + threadIdx.x;                                     \
                if (r < rows && c < cols) dst[r * cols + c] = tile[threadIdx.x][j];       \
            }                                                                             \
            __syncthreads();                                                              \
        }                                                                                 \
    }

COPY(b2, unsigned short)
COPY(b4, unsigned int)
COPY(b8, u64)
TRANSPOSE(b2, unsigned short)
TRANSPOSE(b4, unsigned int)
TRANSPOSE(b8, u64)
