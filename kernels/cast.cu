// Dtype conversions of a strided view into contiguous storage. Every value goes through
// f64, which holds all values of every dtype exactly (i64 up to 2^53), as on the CPU.
// The autocast casts between f32 and bf16/f16 of contiguous tensors have their own
// vectorised kernels (`cast_dense_*`, same results).
#include "common.cuh"

__device__ __forceinline__ double wide(float v) { return v; }
__device__ __forceinline__ double wide(double v) { return v; }
__device__ __forceinline__ double wide(bf16 v) { return load(v); }
__device__ __forceinline__ double wide(f16 v) { return load(v); }
__device__ __forceinline__ double wide(i64 v) { return (double)v; }

// f64 → f32 rounded to odd: rounding that to bf16/f16 gives the correctly rounded
// result, which two roundings to nearest do not (see `round_to_odd_f32` on the CPU).
__device__ __forceinline__ float round_to_odd(double v) {
    float nearest = (float)v;
    if ((double)nearest == v || isinf(nearest) || isnan(nearest)) return nearest;
    float toward_zero = __double2float_rz(v);
    return __uint_as_float(__float_as_uint(toward_zero) | 1u);
}

__device__ __forceinline__ void narrow(float* p, double v) { *p = (float)v; }
__device__ __forceinline__ void narrow(double* p, double v) { *p = v; }
__device__ __forceinline__ void narrow(bf16* p, double v) { put(p, round_to_odd(v)); }
__device__ __forceinline__ void narrow(f16* p, double v) { put(p, round_to_odd(v)); }
// Truncation toward zero, saturating, NaN to 0: Rust's `as i64`.
__device__ __forceinline__ void narrow(i64* p, double v) {
    *p = v != v ? 0 : (v >= 9.2233720368547758e18 ? 0x7fffffffffffffffLL
                       : (v <= -9.2233720368547758e18 ? (i64)(-0x7fffffffffffffffLL - 1) : (i64)v));
}

#define CAST(S1, T1, S2, T2)                                                              \
    extern "C" __global__ void cast_##S1##_##S2(const T1* src, View sv, T2* dst, u64 n) {  \
        GRID_STRIDE(i, n) narrow(dst + i, wide(src[offset_of(sv, i)]));                   \
    }
#define CAST_FROM(S1, T1) \
    CAST(S1, T1, f32, float) CAST(S1, T1, f64, double) CAST(S1, T1, bf16, bf16) \
    CAST(S1, T1, f16, f16) CAST(S1, T1, i64, i64)

CAST_FROM(f32, float)
CAST_FROM(f64, double)
CAST_FROM(bf16, bf16)
CAST_FROM(f16, f16)
CAST_FROM(i64, i64)

// Contiguous, 16-byte aligned casts between f32 and bf16/f16 (the casts autocast makes):
// 8 elements a thread, one 16-byte pack of the half type and two of f32. f32 → half
// needs no detour through f64 (the one rounding to nearest even is what the f64 path
// gives for an f32 source), half → f32 is exact.
template <typename H>
__device__ __forceinline__ void narrow_dense(const float* __restrict__ x, H* __restrict__ out,
                                             u64 n) {
    const u64 groups = n / 8;
    GRID_STRIDE(k, groups) {
        Pack<float> a[2];
        a[0].u = ((const uint4*)x)[2 * k];
        a[1].u = ((const uint4*)x)[2 * k + 1];
        Pack<H> o;
#pragma unroll
        for (int j = 0; j < 8; ++j) put(&o.v[j], a[j / 4].v[j % 4]);
        ((uint4*)out)[k] = o.u;
    }
    GRID_STRIDE(t, n - groups * 8) put(out + groups * 8 + t, x[groups * 8 + t]);
}
template <typename H>
__device__ __forceinline__ void widen_dense(const H* __restrict__ x, float* __restrict__ out,
                                            u64 n) {
    const u64 groups = n / 8;
    GRID_STRIDE(k, groups) {
        Pack<H> a;
        a.u = ((const uint4*)x)[k];
        Pack<float> o[2];
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j / 4].v[j % 4] = load(a.v[j]);
        ((uint4*)out)[2 * k] = o[0].u;
        ((uint4*)out)[2 * k + 1] = o[1].u;
    }
    GRID_STRIDE(t, n - groups * 8) out[groups * 8 + t] = load(x[groups * 8 + t]);
}

#define CAST_DENSE(S, H)                                                                  \
    extern "C" __global__ void cast_dense_f32_##S(const float* x, H* out, u64 n) {        \
        narrow_dense<H>(x, out, n);                                                       \
    }                                                                                     \
    extern "C" __global__ void cast_dense_##S##_f32(const H* x, float* out, u64 n) {      \
        widen_dense<H>(x, out, n);                                                        \
    }
CAST_DENSE(bf16, bf16)
CAST_DENSE(f16, f16)
