//! Tensor maps for Hopper's TMA copies (`cp.async.bulk.tensor` in
//! `kernels/flash_attention_sm90.cu`): the driver encodes, from a tensor's address,
//! sizes and strides, how the copy unit reads boxes of it into shared memory; a kernel
//! takes the map by value and names a box by its coordinates.

use crate::dtype::DType;
use cudarc::driver::sys;

/// An encoded tensor map, as a kernel parameter (`TensorMap` in the kernel file: 128
/// bytes, 64-byte aligned, opaque).
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct TensorMap([u64; 16]);

/// The map of a `[b, h, t, d]` tensor of `dtype` (bf16 or f16) at device address `ptr`
/// whose row `i` of head `(bi, hi)` starts `bi·batch + hi·head + i·row` elements in
/// (`strides` = `[row, head, batch]`; its `d` elements contiguous), read in boxes of 64
/// columns × `box_rows` rows of one head, written into shared memory in the 128-byte
/// swizzle; rows past `t` read as zeros. Its dimensions, innermost first: columns, rows,
/// heads, batch (a kernel's box coordinates). `None` where the copy unit cannot read the
/// tensor so: an address or a stride that is not a multiple of 16 bytes, a zero stride
/// over more than one element (a broadcast), a size past its limits, or the driver
/// refusing the map; the caller then copies another way.
pub(crate) fn head_rows_map(
    ptr: u64,
    dtype: DType,
    [b, h, t, d]: [usize; 4],
    strides: [u64; 3],
    box_rows: usize,
) -> Option<TensorMap> {
    let data_type = match dtype {
        DType::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        _ => return None,
    };
    let size = dtype.size_in_bytes() as u64;
    let dims = [d, t, h, b].map(|n| n as u64);
    let outer = [t, h, b];
    // A stride over a single element is never used: any valid one (16 bytes) will do.
    let mut byte_strides = [0u64; 3];
    for i in 0..3 {
        byte_strides[i] = match (outer[i], strides[i]) {
            (1, _) => 16,
            (_, 0) => return None,
            (_, s) => s.checked_mul(size)?,
        };
    }
    let fits = ptr.is_multiple_of(16)
        && byte_strides
            .iter()
            .all(|s| s.is_multiple_of(16) && *s < 1 << 40)
        && dims.iter().all(|&n| (1..=1 << 32).contains(&n))
        && d.is_multiple_of(64)
        && (1..=256).contains(&box_rows);
    if !fits {
        return None;
    }
    let boxes: [u32; 4] = [64, box_rows as u32, 1, 1];
    let unit = [1u32; 4];
    let mut map = TensorMap([0; 16]);
    // SAFETY: `map` is 128 bytes, 64-byte aligned (the driver's CUtensorMap); the arrays
    // hold the rank's entries (strides: rank − 1); the driver reads nothing else and
    // touches no device memory (the address is only recorded).
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map as *mut TensorMap as *mut sys::CUtensorMap,
            data_type,
            4,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            byte_strides.as_ptr(),
            boxes.as_ptr(),
            unit.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    (status == sys::CUresult::CUDA_SUCCESS).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the copy unit cannot read is refused before the driver is asked (so these
    /// run without a GPU): misaligned addresses and strides, broadcasts, head dims that
    /// are not whole 64-column boxes, other dtypes.
    #[test]
    fn maps_the_copy_unit_cannot_use_are_refused() {
        let dims = [2, 3, 100, 64];
        let strides = [192, 64, 19200];
        assert!(head_rows_map(8, DType::BF16, dims, strides, 128).is_none());
        assert!(head_rows_map(256, DType::BF16, dims, [196, 64, 19200], 128).is_none());
        assert!(head_rows_map(256, DType::BF16, dims, [192, 0, 19200], 128).is_none());
        assert!(head_rows_map(256, DType::BF16, [2, 3, 100, 32], strides, 128).is_none());
        assert!(head_rows_map(256, DType::F32, dims, strides, 128).is_none());
        assert!(head_rows_map(256, DType::BF16, dims, strides, 512).is_none());
    }
}
