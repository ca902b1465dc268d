//! The fused attention of `kernels/flash_attention.cu` (FlashAttention-2 style): the
//! forward keeps only the output and the row log-sum-exp, the backward recomputes the
//! scores tile by tile. It covers f32, bf16 and f16 (bf16/f16 on tensor cores) at head
//! dims 32, 64 and 128 with equal q/k and v head dims; [`super::attention`] falls back
//! to its cuBLAS path for anything else (f64, other head dims).

use super::device::CudaDevice;
use super::launch::{args, launch};
use super::{CudaStorage, Dense};
use crate::backend::AttentionSpec;
use crate::dtype::DType;
use crate::error::Result;
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

/// The kernel file.
const FILE: &str = "flash_attention";
/// Head dims the kernels are instantiated for.
const HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// The grid's y dimension (row tiles) is limited to this by CUDA.
const MAX_TILES: usize = 65535;

/// Warps per block (each owns 16 rows) for `dtype` and head dim `d`: must match the
/// `FA(...)` instantiations of `kernels/flash_attention.cu` (a kernel traps otherwise).
fn warps(dtype: DType, d: usize) -> usize {
    match (dtype, d) {
        (DType::F32, 128) => 1,
        (DType::F32, _) => 2,
        _ => 4,
    }
}

/// Whether the fused kernels cover attention of `dtype` with head dims `d` (q, k) and
/// `dv` (v) over `tq` queries and `tk` keys.
pub(crate) fn covers(dtype: DType, d: usize, dv: usize, (tq, tk): (usize, usize)) -> bool {
    let rows = 16 * warps(dtype, d);
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        && d == dv
        && HEAD_DIMS.contains(&d)
        && tq.max(tk).div_ceil(rows) <= MAX_TILES
}

/// Shapes of one call: (b·h, tq, tk, d).
pub(crate) type Dims = (usize, usize, usize, usize);

/// One block per (b·h, tile of `t` rows).
fn grid(dt: DType, (bh, _, _, d): Dims, t: usize) -> LaunchConfig {
    let w = warps(dt, d);
    LaunchConfig {
        grid_dim: (bh as u32, t.div_ceil(16 * w) as u32, 1),
        block_dim: (32 * w as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn name(kernel: &str, dt: DType, d: usize) -> String {
    format!("fa_{kernel}_{}_d{d}", dt.as_str())
}

/// The output `[bh, tq, d]` and the f32 row log-sum-exp `[bh, tq]` of contiguous q, k, v.
pub(crate) fn forward(
    dev: &Arc<CudaDevice>,
    (q, k, v): (&Dense, &Dense, &Dense),
    dt: DType,
    dims: Dims,
    spec: AttentionSpec,
) -> Result<(CudaStorage, CudaStorage)> {
    let (bh, tq, tk, d) = dims;
    let out = CudaStorage::alloc(dev, bh * tq * d, dt)?;
    let lse = CudaStorage::alloc(dev, bh * tq, DType::F32)?;
    let (scale, causal) = (spec.scale as f32, spec.causal);
    let a = args![
        q.ptr,
        k.ptr,
        v.ptr,
        out.ptr(),
        lse.ptr(),
        tq,
        tk,
        scale,
        causal
    ];
    let f = name("fwd", dt, d);
    launch(dev, "attention", (FILE, &f), grid(dt, dims, tq), a)?;
    Ok((out, lse))
}

/// (dq, dk, dv) of contiguous q, k, v, the forward's output `o` and log-sum-exp, and
/// the output gradient `g`.
pub(crate) fn backward(
    dev: &Arc<CudaDevice>,
    (q, k, v): (&Dense, &Dense, &Dense),
    (o, lse, g): (&Dense, &CudaStorage, &Dense),
    dt: DType,
    dims: Dims,
    spec: AttentionSpec,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "attention_backward";
    let (bh, tq, tk, d) = dims;
    let rows = bh * tq;
    // delta = rowsum(dO∘O), one warp per row.
    let delta = CudaStorage::alloc(dev, rows, DType::F32)?;
    let per_warp = LaunchConfig {
        grid_dim: (rows.div_ceil(8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = format!("fa_delta_{}", dt.as_str());
    let a = args![g.ptr, o.ptr, delta.ptr(), rows, d];
    launch(dev, OP, (FILE, &f), per_warp, a)?;
    let dq = CudaStorage::alloc(dev, rows * d, dt)?;
    let dk = CudaStorage::alloc(dev, bh * tk * d, dt)?;
    let dv = CudaStorage::alloc(dev, bh * tk * d, dt)?;
    let (scale, causal) = (spec.scale as f32, spec.causal);
    let (l, dl) = (lse.ptr(), delta.ptr());
    let a = args![
        q.ptr,
        k.ptr,
        v.ptr,
        g.ptr,
        l,
        dl,
        dq.ptr(),
        tq,
        tk,
        scale,
        causal
    ];
    let f = name("dq", dt, d);
    launch(dev, OP, (FILE, &f), grid(dt, dims, tq), a)?;
    let (pk, pv) = (dk.ptr(), dv.ptr());
    let a = args![q.ptr, k.ptr, v.ptr, g.ptr, l, dl, pk, pv, tq, tk, scale, causal];
    let f = name("dkdv", dt, d);
    launch(dev, OP, (FILE, &f), grid(dt, dims, tk), a)?;
    Ok((dq, dk, dv))
}
