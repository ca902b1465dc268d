// Softmax and log-softmax over the last dim of contiguous rows, forward and backward:
// one block per row, block reductions for the row max and sums.
#include "common.cuh"

#define SOFTMAX(S, T)                                                                     \
    extern "C" __global__ void softmax_##S(const T* x, T* out, u64 rows, u64 d, int log) { \
        typedef Acc<T>::type A;                                                           \
        for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {                              \
            const T* xr = x + r * d;                                                      \
            T* orow = out + r * d;                                                        \
            A mx = red_identity<A>(RED_MAX);                                              \
            for (u64 j = threadIdx.x; j < d; j += blockDim.x)                             \
                mx = red_combine(RED_MAX, mx, (A)load(xr[j]));                            \
            mx = block_reduce(RED_MAX, mx);                                               \
            A sum = 0;                                                                    \
            for (u64 j = threadIdx.x; j < d; j += blockDim.x) sum += m_exp(load(xr[j]) - mx); \
            sum = block_reduce(RED_SUM, sum);                                             \
            A lse = mx + m_log(sum), inv = (A)1 / sum;                                    \
            for (u64 j = threadIdx.x; j < d; j += blockDim.x) {                           \
                A v = load(xr[j]);                                                        \
                put(orow + j, log ? v - lse : m_exp(v - mx) * inv);                       \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    /* softmax: y·(g − Σ g·y); log-softmax: g − eʸ·Σ g. */                                \
    extern "C" __global__ void softmax_backward_##S(const T* y, const T* g, T* out,       \
                                                    u64 rows, u64 d, int log) {           \
        typedef Acc<T>::type A;                                                           \
        for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {                              \
            const T* yr = y + r * d;                                                      \
            const T* gr = g + r * d;                                                      \
            A s = 0;                                                                      \
            for (u64 j = threadIdx.x; j < d; j += blockDim.x)                             \
                s += log ? (A)load(gr[j]) : (A)load(gr[j]) * (A)load(yr[j]);              \
            s = block_reduce(RED_SUM, s);                                                 \
            for (u64 j = threadIdx.x; j < d; j += blockDim.x) {                           \
                A yv = load(yr[j]), gv = load(gr[j]);                                     \
                put(out + r * d + j, log ? gv - m_exp(yv) * s : yv * (gv - s));           \
            }                                                                             \
        }                                                                                 \
    }

FOR_FLOATS(SOFTMAX)
