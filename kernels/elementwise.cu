// Elementwise kernels on strided views: unary maps and their derivatives, binary maps,
// comparisons, where, addcmul. Every input is a `View` of the output's shape (broadcast
// dims have stride 0), so nothing is materialised; the output is contiguous.
#include "common.cuh"

// Op codes (U_* here, B_* and C_* below): the numbers `UnaryOp`, `BinaryOp` and `CmpOp`
// are passed as, listed in crates/engine/src/kernel_codes.rs. The test
// crates/engine/tests/kernel_codes.rs fails when a name or value here differs.
#define U_NEG 0
#define U_EXP 1
#define U_LOG 2
#define U_SQRT 3
#define U_RSQRT 4
#define U_RECIP 5
#define U_SQUARE 6
#define U_ABS 7
#define U_SIN 8
#define U_COS 9
#define U_TANH 10
#define U_SIGMOID 11
#define U_RELU 12
#define U_GELU_TANH 13
#define U_GELU_ERF 14
#define U_SILU 15
#define U_POWF 16
#define U_CLAMP 17
#define U_AFFINE 18

#define SQRT_2_OVER_PI 0.7978845608028654
#define GELU_CUBIC 0.044715
#define FRAC_1_SQRT_2 0.7071067811865476
#define FRAC_1_SQRT_2PI 0.3989422804014327

// FAST (bf16/f16 storage): the hardware exp and division, whose error (a few f32 ulps)
// vanishes in the storage rounding (2^-9 for bf16) and which halve the math of GELU and
// SiLU, memory-bound only if the math is short.
template <typename A, bool FAST> __device__ __forceinline__ A sigmoid(A x) {
    if constexpr (FAST) return __fdividef(1.f, 1.f + __expf(-x));
    else return (A)1 / ((A)1 + m_exp(-x));
}
template <typename A> __device__ __forceinline__ A gelu_inner(A x) {
    return (A)SQRT_2_OVER_PI * (x + (A)GELU_CUBIC * x * x * x);
}

// op(x), as `unary_fn` in crates/engine/src/cpu/elementwise.rs (FAST: see `sigmoid`).
template <typename A, bool FAST> __device__ __forceinline__ A unary_fn(int op, A x, A p0, A p1) {
    switch (op) {
    case U_NEG: return -x;
    case U_EXP: return m_exp(x);
    case U_LOG: return m_log(x);
    case U_SQRT: return m_sqrt(x);
    case U_RSQRT: return (A)1 / m_sqrt(x);
    case U_RECIP: return (A)1 / x;
    case U_SQUARE: return x * x;
    case U_ABS: return m_abs(x);
    case U_SIN: return m_sin(x);
    case U_COS: return m_cos(x);
    case U_TANH: return m_tanh(x);
    case U_SIGMOID: return sigmoid<A, FAST>(x);
    case U_RELU: return m_max(x, (A)0);
    case U_GELU_TANH: return x * sigmoid<A, FAST>((A)2 * gelu_inner(x));
    case U_GELU_ERF: return (A)0.5 * x * ((A)1 + m_erf(x * (A)FRAC_1_SQRT_2));
    case U_SILU: return x * sigmoid<A, FAST>(x);
    case U_POWF: return m_pow(x, p0);
    case U_CLAMP: return m_min(m_max(x, p0), p1);
    default: return p0 * x + p1;  // U_AFFINE
    }
}

// op'(x), as `unary_derivative` on the CPU (PyTorch's values at the kinks).
template <typename A, bool FAST>
__device__ __forceinline__ A unary_derivative(int op, A x, A p0, A p1) {
    switch (op) {
    case U_NEG: return (A)-1;
    case U_EXP: return m_exp(x);
    case U_LOG: return (A)1 / x;
    case U_SQRT: return (A)0.5 / m_sqrt(x);
    case U_RSQRT: return (A)-0.5 * m_pow(x, (A)-1.5);
    case U_RECIP: return -(A)1 / (x * x);
    case U_SQUARE: return (A)2 * x;
    case U_ABS: return x > (A)0 ? (A)1 : (x < (A)0 ? (A)-1 : x * (A)0);
    case U_SIN: return m_cos(x);
    case U_COS: return -m_sin(x);
    case U_TANH: { A t = m_tanh(x); return (A)1 - t * t; }
    case U_SIGMOID: { A s = sigmoid<A, FAST>(x); return s * ((A)1 - s); }
    case U_RELU: return x > (A)0 ? (A)1 : (A)0;
    case U_GELU_TANH: {
        A s = sigmoid<A, FAST>((A)2 * gelu_inner(x));
        A du = (A)SQRT_2_OVER_PI * ((A)1 + (A)(3.0 * GELU_CUBIC) * x * x);
        return s + (A)2 * x * s * ((A)1 - s) * du;
    }
    case U_GELU_ERF: {
        A cdf = (A)0.5 * ((A)1 + m_erf(x * (A)FRAC_1_SQRT_2));
        return cdf + x * m_exp((A)-0.5 * x * x) * (A)FRAC_1_SQRT_2PI;
    }
    case U_SILU: { A s = sigmoid<A, FAST>(x); return s * ((A)1 + x * ((A)1 - s)); }
    case U_POWF: return p0 * m_pow(x, p0 - (A)1);
    case U_CLAMP: return (x >= p0 && x <= p1) ? (A)1 : (A)0;
    default: return p0;  // U_AFFINE
    }
}

// Whether storage type T takes the FAST math of `sigmoid` (bf16, f16).
template <typename T> constexpr bool low_precision = sizeof(T) == 2;

// An op code known at compile time, converting to int.
template <int K> struct OpCode {
    __device__ constexpr operator int() const { return K; }
};

// Calls FN(code, args...) with the code as a compile-time `OpCode` for the activations
// applied to whole activation tensors (GELU, SiLU), so that, unary_fn inlined, their
// math is straight-line code the compiler interleaves across a pack (not a branch tree
// per element); any other op passes the runtime code.
#define WITH_OP_CODE(op, FN, ...)                                   \
    switch (op) {                                                   \
    case U_GELU_TANH: FN(OpCode<U_GELU_TANH>{}, __VA_ARGS__); break; \
    case U_GELU_ERF: FN(OpCode<U_GELU_ERF>{}, __VA_ARGS__); break;   \
    case U_SILU: FN(OpCode<U_SILU>{}, __VA_ARGS__); break;           \
    default: FN(op, __VA_ARGS__);                                    \
    }

#define B_ADD 0
#define B_SUB 1
#define B_MUL 2
#define B_DIV 3
#define B_MAX 4
#define B_MIN 5

template <typename A> __device__ __forceinline__ A binary_fn(int op, A a, A b) {
    switch (op) {
    case B_ADD: return a + b;
    case B_SUB: return a - b;
    case B_MUL: return a * b;
    case B_DIV: return a / b;
    case B_MAX: return m_max(a, b);
    default: return m_min(a, b);
    }
}

#define C_EQ 0
#define C_NE 1
#define C_LT 2
#define C_LE 3
#define C_GT 4
#define C_GE 5

template <typename A> __device__ __forceinline__ bool cmp_fn(int op, A a, A b) {
    switch (op) {
    case C_EQ: return a == b;
    case C_NE: return a != b;
    case C_LT: return a < b;
    case C_LE: return a <= b;
    case C_GT: return a > b;
    default: return a >= b;
    }
}

// Offsets of element i in two or three views of one shape, sharing the divisions (index
// type I as in `offset_of`).
template <typename I>
__device__ __forceinline__ void offsets2(const View& a, const View& b, I i, I& oa, I& ob) {
    oa = (I)a.offset;
    ob = (I)b.offset;
    for (int d = (int)a.rank - 1; d > 0; --d) {
        I c = i % (I)a.shape[d];
        i /= (I)a.shape[d];
        oa += c * (I)a.strides[d];
        ob += c * (I)b.strides[d];
    }
    if (a.rank > 0) {
        oa += i * (I)a.strides[0];
        ob += i * (I)b.strides[0];
    }
}

template <typename I>
__device__ __forceinline__ void offsets3(const View& a, const View& b, const View& c, I i,
                                         I& oa, I& ob, I& oc) {
    oa = (I)a.offset;
    ob = (I)b.offset;
    oc = (I)c.offset;
    for (int d = (int)a.rank - 1; d > 0; --d) {
        I k = i % (I)a.shape[d];
        i /= (I)a.shape[d];
        oa += k * (I)a.strides[d];
        ob += k * (I)b.strides[d];
        oc += k * (I)c.strides[d];
    }
    if (a.rank > 0) {
        oa += i * (I)a.strides[0];
        ob += i * (I)b.strides[0];
        oc += i * (I)c.strides[0];
    }
}

// `addcmul_{S}`: x + a·b on strided views, an element per thread; x and the output of
// type TX, the factors of TA and TB (one type for all but autocast's, below).
#define ADDCMUL_STRIDED(S, TX, TA, TB)                                                     \
    extern "C" __global__ void addcmul_##S(const TX* x, View xv, const TA* a, View av,     \
                                           const TB* b, View bv, TX* out, u64 n) {         \
        GRID_STRIDE(i, n) {                                                                \
            u64 ox, oa, ob;                                                                \
            offsets3(xv, av, bv, i, ox, oa, ob);                                           \
            put(out + i, load(x[ox]) + load(a[oa]) * load(b[ob]));                         \
        }                                                                                  \
    }

#define ELEMENTWISE(S, T)                                                                    \
    extern "C" __global__ void unary_##S(const T* x, View xv, T* out, u64 n, int op,       \
                                         double p0, double p1) {                           \
        typedef Acc<T>::type A;                                                              \
        GRID_STRIDE(i, n) put(out + i, unary_fn<A, low_precision<T>>(op, load(x[offset_of(xv, i)]), (A)p0, (A)p1)); \
    }                                                                                        \
    extern "C" __global__ void unary_backward_##S(const T* x, View xv, const T* g, View gv, \
                                                  T* out, u64 n, int op, double p0,        \
                                                  double p1) {                             \
        typedef Acc<T>::type A;                                                              \
        GRID_STRIDE(i, n) {                                                                  \
            u64 ox, og;                                                                      \
            offsets2(xv, gv, i, ox, og);                                                     \
            put(out + i, load(g[og]) * unary_derivative<A, low_precision<T>>(op, load(x[ox]), (A)p0, (A)p1));  \
        }                                                                                    \
    }                                                                                        \
    extern "C" __global__ void binary_##S(const T* a, View av, const T* b, View bv, T* out, \
                                          u64 n, int op) {                                 \
        GRID_STRIDE(i, n) {                                                                  \
            u64 oa, ob;                                                                      \
            offsets2(av, bv, i, oa, ob);                                                     \
            put(out + i, binary_fn(op, load(a[oa]), load(b[ob])));                           \
        }                                                                                    \
    }                                                                                        \
    extern "C" __global__ void cmp_##S(const T* a, View av, const T* b, View bv, T* out,    \
                                       u64 n, int op) {                                    \
        typedef Acc<T>::type A;                                                              \
        GRID_STRIDE(i, n) {                                                                  \
            u64 oa, ob;                                                                      \
            offsets2(av, bv, i, oa, ob);                                                     \
            put(out + i, cmp_fn(op, load(a[oa]), load(b[ob])) ? (A)1 : (A)0);                \
        }                                                                                    \
    }                                                                                        \
    extern "C" __global__ void where_##S(const T* m, View mv, const T* t, View tv,          \
                                         const T* f, View fv, T* out, u64 n) {             \
        GRID_STRIDE(i, n) {                                                                  \
            u64 om, ot, of;                                                                  \
            offsets3(mv, tv, fv, i, om, ot, of);                                             \
            out[i] = load(m[om]) != 0 ? t[ot] : f[of];                                       \
        }                                                                                    \
    }                                                                                        \
    ADDCMUL_STRIDED(S, T, T, T)

FOR_FLOATS(ELEMENTWISE)

// x + a·b for an f32 x beside a bf16 or f16 b, and a f32 or of b's type
// (`addcmul_f32_{a}_{b}`, by ADDCMUL_STRIDED above), each read in its own type:
// autocast's gated residual around a half-precision product (its gate a chunk of
// another), without casting the factors to f32 first (the same values: the casts are
// exact).

// The unsigned vector type of `BYTES` bytes (four elements of one type).
template <int BYTES> struct QuadBits;
template <> struct QuadBits<16> { typedef uint4 type; };
template <> struct QuadBits<8> { typedef uint2 type; };

// Four consecutive elements from element offset `off` of an operand whose innermost dim
// has unit stride (one 4·sizeof(T)-byte load: the host checks the alignment) or stride
// 0 (one element, repeated), in f32.
template <typename T, typename I>
__device__ __forceinline__ void load_quad(const T* __restrict__ p, const View& v, I off,
                                          float (&q)[4]) {
    if (v.strides[v.rank - 1] == 1) {
        typedef typename QuadBits<4 * sizeof(T)>::type Bits;
        union {
            T v[4];
            Bits u;
        } r;
        r.u = *(const Bits*)(p + off);
#pragma unroll
        for (int j = 0; j < 4; ++j) q[j] = load(r.v[j]);
    } else {
        const float e = load(p[off]);
#pragma unroll
        for (int j = 0; j < 4; ++j) q[j] = e;
    }
}

// The same four elements a thread, one offset computation per four (in 32-bit
// arithmetic when `narrow`), as the `*_packed` kernels do for operands of one type: the
// gated residual's gate is broadcast over the tokens, whose per-element offsets cost
// two 64-bit divisions each. Every view's innermost dim a multiple of 4 elements.
template <typename TA, typename TB, typename I>
__device__ __forceinline__ void addcmul_quads(const float* x, const View& xv, const TA* a,
                                              const View& av, const TB* b, const View& bv,
                                              float* out, u64 quads) {
    GRID_STRIDE(k, quads) {
        I ox, oa, ob;
        offsets3<I>(xv, av, bv, (I)k * 4, ox, oa, ob);
        float xs[4], as[4], bs[4];
        load_quad<float, I>(x, xv, ox, xs);
        load_quad<TA, I>(a, av, oa, as);
        load_quad<TB, I>(b, bv, ob, bs);
        float4 o;
        o.x = xs[0] + as[0] * bs[0];
        o.y = xs[1] + as[1] * bs[1];
        o.z = xs[2] + as[2] * bs[2];
        o.w = xs[3] + as[3] * bs[3];
        ((float4*)out)[k] = o;
    }
}

#define ADDCMUL_HALF_QUADS(S, TA, TB)                                                      \
    extern "C" __global__ void addcmul_quads_##S(const float* x, View xv, const TA* a,     \
                                                 View av, const TB* b, View bv, float* out, \
                                                 u64 quads, int narrow) {                  \
        if (narrow)                                                                        \
            addcmul_quads<TA, TB, unsigned>(x, xv, a, av, b, bv, out, quads);              \
        else                                                                               \
            addcmul_quads<TA, TB, u64>(x, xv, a, av, b, bv, out, quads);                   \
    }
#define ADDCMUL_HALF(S, TA, TB) ADDCMUL_STRIDED(S, float, TA, TB) ADDCMUL_HALF_QUADS(S, TA, TB)

ADDCMUL_HALF(f32_f32_bf16, float, bf16)
ADDCMUL_HALF(f32_f32_f16, float, f16)
ADDCMUL_HALF(f32_bf16_bf16, bf16, bf16)
ADDCMUL_HALF(f32_f16_f16, f16, f16)

// A compute-type value rounded to storage type T.
template <typename T> __device__ __forceinline__ T stored(typename Acc<T>::type v) {
    T r;
    put(&r, v);
    return r;
}

// The same ops on contiguous, 16-byte aligned operands of the output's size (no
// broadcast): vector loads and stores, no index arithmetic (`map*` in common.cuh).
// Unary ops take their code as an int or an `OpCode` (`WITH_OP_CODE`).
template <typename T, typename Code>
__device__ __forceinline__ void unary_dense(Code code, const T* x, T* out, u64 n, double p0,
                                            double p1) {
    typedef typename Acc<T>::type A;
    const A q0 = (A)p0, q1 = (A)p1;
    map1(x, out, n, [=](T v) {
        return stored<T>(unary_fn<A, low_precision<T>>(code, load(v), q0, q1));
    });
}
template <typename T, typename Code>
__device__ __forceinline__ void unary_backward_dense(Code code, const T* x, const T* g, T* out,
                                                     u64 n, double p0, double p1) {
    typedef typename Acc<T>::type A;
    const A q0 = (A)p0, q1 = (A)p1;
    map2(x, g, out, n, [=](T v, T gv) {
        return stored<T>(load(gv) * unary_derivative<A, low_precision<T>>(code, load(v), q0, q1));
    });
}
#define DENSE(S, T)                                                                       \
    extern "C" __global__ void unary_dense_##S(const T* x, T* out, u64 n, int op,         \
                                               double p0, double p1) {                    \
        WITH_OP_CODE(op, unary_dense<T>, x, out, n, p0, p1)                               \
    }                                                                                     \
    extern "C" __global__ void unary_backward_dense_##S(const T* x, const T* g, T* out,   \
                                                        u64 n, int op, double p0,         \
                                                        double p1) {                      \
        WITH_OP_CODE(op, unary_backward_dense<T>, x, g, out, n, p0, p1)                   \
    }                                                                                     \
    extern "C" __global__ void binary_dense_##S(const T* a, const T* b, T* out, u64 n,    \
                                                int op) {                                 \
        map2(a, b, out, n, [=](T u, T v) { return stored<T>(binary_fn(op, load(u), load(v))); }); \
    }                                                                                     \
    extern "C" __global__ void cmp_dense_##S(const T* a, const T* b, T* out, u64 n,       \
                                             int op) {                                    \
        typedef Acc<T>::type A;                                                           \
        map2(a, b, out, n, [=](T u, T v) {                                                \
            return stored<T>(cmp_fn(op, load(u), load(v)) ? (A)1 : (A)0);                \
        });                                                                               \
    }                                                                                     \
    extern "C" __global__ void where_dense_##S(const T* m, const T* t, const T* f, T* out, \
                                               u64 n) {                                   \
        map3(m, t, f, out, n, [](T c, T u, T v) { return load(c) != 0 ? u : v; });        \
    }                                                                                     \
    extern "C" __global__ void addcmul_dense_##S(const T* x, const T* a, const T* b,      \
                                                 T* out, u64 n) {                         \
        map3(x, a, b, out, n, [](T u, T v, T w) {                                         \
            return stored<T>(load(u) + load(v) * load(w));                                \
        });                                                                               \
    }

FOR_FLOATS(DENSE)

// The same ops on strided operands whose innermost dim has unit stride or is broadcast
// and is a whole number of 16-byte packs (adaLN's [B, 1, D] shifts, scales and gates
// against [B, T, D] activations, and their gradients): a pack per thread, so one offset
// computation per pack instead of one per element, in 32-bit arithmetic when `narrow`
// (the host's promise that every offset is below 2^32). Outputs are contiguous.
template <typename T, typename I, typename F>
__device__ __forceinline__ void packs1(const T* x, const View& xv, T* out, u64 packs, F f) {
    constexpr int W = 16 / sizeof(T);
    GRID_STRIDE(k, packs) {
        const Pack<T> a = load_pack<T, I>(x, xv, offset_of<I>(xv, (I)k * W));
        Pack<T> o;
#pragma unroll
        for (int j = 0; j < W; ++j) o.v[j] = f(a.v[j]);
        ((uint4*)out)[k] = o.u;
    }
}

template <typename T, typename I, typename F>
__device__ __forceinline__ void packs2(const T* x, const View& xv, const T* y, const View& yv,
                                       T* out, u64 packs, F f) {
    constexpr int W = 16 / sizeof(T);
    GRID_STRIDE(k, packs) {
        I ox, oy;
        offsets2<I>(xv, yv, (I)k * W, ox, oy);
        const Pack<T> a = load_pack<T, I>(x, xv, ox), b = load_pack<T, I>(y, yv, oy);
        Pack<T> o;
#pragma unroll
        for (int j = 0; j < W; ++j) o.v[j] = f(a.v[j], b.v[j]);
        ((uint4*)out)[k] = o.u;
    }
}

template <typename T, typename I, typename F>
__device__ __forceinline__ void packs3(const T* x, const View& xv, const T* y, const View& yv,
                                       const T* z, const View& zv, T* out, u64 packs, F f) {
    constexpr int W = 16 / sizeof(T);
    GRID_STRIDE(k, packs) {
        I ox, oy, oz;
        offsets3<I>(xv, yv, zv, (I)k * W, ox, oy, oz);
        const Pack<T> a = load_pack<T, I>(x, xv, ox), b = load_pack<T, I>(y, yv, oy),
                      c = load_pack<T, I>(z, zv, oz);
        Pack<T> o;
#pragma unroll
        for (int j = 0; j < W; ++j) o.v[j] = f(a.v[j], b.v[j], c.v[j]);
        ((uint4*)out)[k] = o.u;
    }
}

// Runs packsN<T, I> with I = unsigned when `narrow`, else u64 (a warp-uniform branch).
#define BY_INDEX(N, T, ...)                                           \
    if (narrow) packs##N<T, unsigned>(__VA_ARGS__);                   \
    else packs##N<T, u64>(__VA_ARGS__)

#define PACKED(S, T)                                                                        \
    extern "C" __global__ void unary_packed_##S(const T* x, View xv, T* out, u64 packs,     \
                                                int narrow, int op, double p0,              \
                                                double p1) {                                \
        typedef Acc<T>::type A;                                                             \
        A q0 = (A)p0, q1 = (A)p1;                                                           \
        auto f = [=](T v) { return stored<T>(unary_fn<A, low_precision<T>>(op, load(v), q0, q1)); };          \
        BY_INDEX(1, T, x, xv, out, packs, f);                                               \
    }                                                                                       \
    extern "C" __global__ void unary_backward_packed_##S(const T* x, View xv, const T* g,   \
                                                         View gv, T* out, u64 packs,        \
                                                         int narrow, int op, double p0,     \
                                                         double p1) {                       \
        typedef Acc<T>::type A;                                                             \
        A q0 = (A)p0, q1 = (A)p1;                                                           \
        auto f = [=](T v, T gv) {                                                           \
            return stored<T>(load(gv) * unary_derivative<A, low_precision<T>>(op, load(v), q0, q1));          \
        };                                                                                  \
        BY_INDEX(2, T, x, xv, g, gv, out, packs, f);                                        \
    }                                                                                       \
    extern "C" __global__ void binary_packed_##S(const T* a, View av, const T* b, View bv,  \
                                                 T* out, u64 packs, int narrow, int op) {   \
        auto f = [=](T u, T v) { return stored<T>(binary_fn(op, load(u), load(v))); };      \
        BY_INDEX(2, T, a, av, b, bv, out, packs, f);                                        \
    }                                                                                       \
    extern "C" __global__ void cmp_packed_##S(const T* a, View av, const T* b, View bv,     \
                                              T* out, u64 packs, int narrow, int op) {      \
        typedef Acc<T>::type A;                                                             \
        auto f = [=](T u, T v) {                                                            \
            return stored<T>(cmp_fn(op, load(u), load(v)) ? (A)1 : (A)0);                   \
        };                                                                                  \
        BY_INDEX(2, T, a, av, b, bv, out, packs, f);                                        \
    }                                                                                       \
    extern "C" __global__ void where_packed_##S(const T* m, View mv, const T* t, View tv,   \
                                                const T* f, View fv, T* out, u64 packs,     \
                                                int narrow) {                               \
        auto pick = [](T c, T u, T v) { return load(c) != 0 ? u : v; };                     \
        BY_INDEX(3, T, m, mv, t, tv, f, fv, out, packs, pick);                              \
    }                                                                                       \
    extern "C" __global__ void addcmul_packed_##S(const T* x, View xv, const T* a,          \
                                                  View av, const T* b, View bv, T* out,     \
                                                  u64 packs, int narrow) {                  \
        auto f = [](T u, T v, T w) { return stored<T>(load(u) + load(v) * load(w)); };      \
        BY_INDEX(3, T, x, xv, a, av, b, bv, out, packs, f);                                 \
    }

FOR_FLOATS(PACKED)
