// The row kernels of the straightforward attention (the products run in cuBLAS, see
// crates/engine/src/cuda/attention.rs). Scores and probabilities are [rows, tk] in the
// compute type A, rows = b·h·tq; with `causal`, key j is masked for query i when j > i.
#include "common.cuh"

#define ATTN_A(S, A)                                                                      \
    /* Scores → probabilities in place, and the row log-sum-exp. */                       \
    extern "C" __global__ void attn_softmax_##S(A* s, A* lse, u64 rows, u64 tq, u64 tk,   \
                                                int causal) {                             \
        for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {                              \
            A* sr = s + r * tk;                                                           \
            u64 len = causal ? min(r % tq + 1, tk) : tk;                                  \
            A mx = red_identity<A>(RED_MAX);                                              \
            for (u64 j = threadIdx.x; j < len; j += blockDim.x) mx = red_combine(RED_MAX, mx, sr[j]); \
            mx = block_reduce(RED_MAX, mx);                                               \
            A sum = 0;                                                                    \
            for (u64 j = threadIdx.x; j < len; j += blockDim.x) sum += m_exp(sr[j] - mx); \
            sum = block_reduce(RED_SUM, sum);                                             \
            A inv = (A)1 / sum;                                                           \
            for (u64 j = threadIdx.x; j < tk; j += blockDim.x)                            \
                sr[j] = j < len ? m_exp(sr[j] - mx) * inv : (A)0;                         \
            if (threadIdx.x == 0) lse[r] = mx + m_log(sum);                               \
        }                                                                                 \
    }                                                                                     \
    /* Scores → probabilities in place from the saved log-sum-exp (the backward). */      \
    extern "C" __global__ void attn_probs_##S(A* s, const A* lse, u64 rows, u64 tq,       \
                                              u64 tk, int causal) {                       \
        GRID_STRIDE(p, rows * tk) {                                                       \
            u64 r = p / tk, j = p % tk;                                                   \
            s[p] = (causal && j > r % tq) ? (A)0 : m_exp(s[p] - lse[r]);                  \
        }                                                                                 \
    }

ATTN_A(f32, float)
ATTN_A(f64, double)

#define ATTN_T(S, T)                                                                      \
    /* dP → dS = P∘(dP − Σ dO∘O) in place, one block per row. */                          \
    extern "C" __global__ void attn_dscores_##S(const Acc<T>::type* p, Acc<T>::type* dp,  \
                                                const T* dout, const T* out, u64 rows,    \
                                                u64 tk, u64 dv) {                         \
        typedef Acc<T>::type A;                                                           \
        for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {                              \
            A di = 0;                                                                     \
            for (u64 c = threadIdx.x; c < dv; c += blockDim.x)                            \
                di += (A)load(dout[r * dv + c]) * (A)load(out[r * dv + c]);               \
            di = block_reduce(RED_SUM, di);                                               \
            for (u64 j = threadIdx.x; j < tk; j += blockDim.x)                            \
                dp[r * tk + j] = p[r * tk + j] * (dp[r * tk + j] - di);                   \
        }                                                                                 \
    }

FOR_FLOATS(ATTN_T)
