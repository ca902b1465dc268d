// Shared by every kernel file: element types and their f32/f64 conversions, strided
// views, grid-stride loops and block reductions. No CUDA header is included, so NVRTC
// needs no include path (bf16/f16 conversions are written out below).
#pragma once

typedef unsigned long long u64;
typedef long long i64;

// Storage types of half precision: raw bits, converted to f32 for arithmetic.
struct bf16 { unsigned short x; };
struct f16 { unsigned short x; };

// A strided view, flattened by the host (dims merged, size-1 dims dropped). Must match
// `View` in crates/engine/src/cuda/launch.rs field for field.
#define MAX_DIMS 8
struct View {
    u64 shape[MAX_DIMS];
    u64 strides[MAX_DIMS];
    u64 offset;
    u64 rank;
};

// The compute type of a storage type: f64 for f64, f32 for everything else.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

// ---- loads and stores: every storage type to/from its compute type ----
__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ double load(double v) { return v; }
__device__ __forceinline__ float load(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }
__device__ __forceinline__ float load(f16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x));
    return f;
}

__device__ __forceinline__ void put(float* p, float v) { *p = v; }
__device__ __forceinline__ void put(double* p, double v) { *p = v; }
// Round to nearest even, NaN kept quiet (as the `half` crate does on the CPU).
__device__ __forceinline__ void put(bf16* p, float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        p->x = (unsigned short)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    p->x = (unsigned short)(u >> 16);
}
__device__ __forceinline__ void put(f16* p, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p->x = h;
}

// ---- math overloads for both compute types ----
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_sin(float x) { return sinf(x); }
__device__ __forceinline__ double m_sin(double x) { return sin(x); }
__device__ __forceinline__ float m_cos(float x) { return cosf(x); }
__device__ __forceinline__ double m_cos(double x) { return cos(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_erf(float x) { return erff(x); }
__device__ __forceinline__ double m_erf(double x) { return erf(x); }
__device__ __forceinline__ float m_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double m_pow(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }
// max/min that ignore a NaN operand (Rust's f32::max, which the CPU kernels use).
__device__ __forceinline__ float m_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double m_max(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float m_min(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double m_min(double a, double b) { return fmin(a, b); }

// ---- strided indexing ----
// Storage offset of the i-th element (row-major) of a view. The outermost dim needs no
// division, so a merged contiguous or broadcast view costs none. I is the index type:
// u64, or unsigned where the caller knows every offset is below 2^32 (a 32-bit division
// is several times cheaper than a 64-bit one, which the GPU emulates).
template <typename I> __device__ __forceinline__ I offset_of(const View& v, I i) {
    I off = (I)v.offset;
    for (int d = (int)v.rank - 1; d > 0; --d) {
        I c = i % (I)v.shape[d];
        i /= (I)v.shape[d];
        off += c * (I)v.strides[d];
    }
    return v.rank > 0 ? off + i * (I)v.strides[0] : off;
}

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// ---- contiguous operands: 16-byte vector loads and stores ----
// Memory-bound kernels reach full bandwidth only with 128-bit accesses. A pack is 16
// bytes of one storage type; the host takes these paths only when every operand is
// contiguous and starts 16-byte aligned.
template <typename T> union Pack {
    uint4 u;
    T v[16 / sizeof(T)];
};

// out[i] = f(x[i]) over n contiguous elements: whole packs, then the (< 8) tail ones.
template <typename T, typename F>
__device__ __forceinline__ void map1(const T* __restrict__ x, T* __restrict__ out, u64 n, F f) {
    const u64 w = 16 / sizeof(T), packs = n / w;
    GRID_STRIDE(k, packs) {
        Pack<T> a, o;
        a.u = ((const uint4*)x)[k];
#pragma unroll
        for (int j = 0; j < (int)w; ++j) o.v[j] = f(a.v[j]);
        ((uint4*)out)[k] = o.u;
    }
    GRID_STRIDE(t, n - packs * w) out[packs * w + t] = f(x[packs * w + t]);
}

// out[i] = f(x[i], y[i]).
template <typename T, typename F>
__device__ __forceinline__ void map2(const T* __restrict__ x, const T* __restrict__ y,
                                     T* __restrict__ out, u64 n, F f) {
    const u64 w = 16 / sizeof(T), packs = n / w;
    GRID_STRIDE(k, packs) {
        Pack<T> a, b, o;
        a.u = ((const uint4*)x)[k];
        b.u = ((const uint4*)y)[k];
#pragma unroll
        for (int j = 0; j < (int)w; ++j) o.v[j] = f(a.v[j], b.v[j]);
        ((uint4*)out)[k] = o.u;
    }
    GRID_STRIDE(t, n - packs * w) {
        u64 i = packs * w + t;
        out[i] = f(x[i], y[i]);
    }
}

// out[i] = f(x[i], y[i], z[i]).
template <typename T, typename F>
__device__ __forceinline__ void map3(const T* __restrict__ x, const T* __restrict__ y,
                                     const T* __restrict__ z, T* __restrict__ out, u64 n, F f) {
    const u64 w = 16 / sizeof(T), packs = n / w;
    GRID_STRIDE(k, packs) {
        Pack<T> a, b, c, o;
        a.u = ((const uint4*)x)[k];
        b.u = ((const uint4*)y)[k];
        c.u = ((const uint4*)z)[k];
#pragma unroll
        for (int j = 0; j < (int)w; ++j) o.v[j] = f(a.v[j], b.v[j], c.v[j]);
        ((uint4*)out)[k] = o.u;
    }
    GRID_STRIDE(t, n - packs * w) {
        u64 i = packs * w + t;
        out[i] = f(x[i], y[i], z[i]);
    }
}

// ---- strided operands in 16-byte packs ----
// The pack of 16 / sizeof(T) elements starting at element offset `off` of an operand
// whose innermost dim has unit stride (one 16-byte load: the host checks alignment) or
// stride 0 (one element, repeated).
template <typename T, typename I>
__device__ __forceinline__ Pack<T> load_pack(const T* __restrict__ p, const View& v, I off) {
    Pack<T> r;
    if (v.strides[v.rank - 1] == 1) {
        r.u = *(const uint4*)(p + off);
    } else {
        const T e = p[off];
#pragma unroll
        for (int j = 0; j < (int)(16 / sizeof(T)); ++j) r.v[j] = e;
    }
    return r;
}

// ---- reductions ----
// The codes of `ReduceOp`, listed in crates/engine/src/kernel_codes.rs and checked
// against these by crates/engine/tests/kernel_codes.rs.
#define RED_SUM 0
#define RED_MAX 1
#define RED_MIN 2

template <typename A> __device__ __forceinline__ A red_identity(int op) {
    return op == RED_SUM ? (A)0 : (op == RED_MAX ? (A)(-__int_as_float(0x7f800000)) : (A)__int_as_float(0x7f800000));
}

// max and min that propagate NaN, as PyTorch's (and the CPU backend's) reductions do.
template <typename A> __device__ __forceinline__ A red_combine(int op, A a, A b) {
    if (op == RED_SUM) return a + b;
    if (a != a) return a;
    if (b != b) return b;
    if (op == RED_MAX) return a > b ? a : b;
    return a < b ? a : b;
}

template <typename A> __device__ __forceinline__ A warp_reduce(int op, A v) {
    for (int o = 16; o > 0; o >>= 1) v = red_combine(op, v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

// Reduces `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. Starts and ends with a barrier, so consecutive calls may reuse the
// shared scratch.
template <typename A> __device__ A block_reduce(int op, A v) {
    __shared__ A scratch[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    v = warp_reduce(op, v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : red_identity<A>(op);
    v = warp_reduce(op, v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    return scratch[0];
}

// Instantiates `M(suffix, type)` for every float storage type.
#define FOR_FLOATS(M) M(f32, float) M(f64, double) M(bf16, bf16) M(f16, f16)
