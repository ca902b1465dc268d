// Dtype conversions of a strided view into contiguous storage. Every value goes through
// f64, which holds all values of every dtype exactly (i64 up to 2^53), as on the CPU.
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
