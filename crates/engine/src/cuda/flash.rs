//! The fused attention of `kernels/flash_attention.cu` (FlashAttention-2 style): the
//! forward keeps only the output and the row log-sum-exp, the backward recomputes the
//! scores tile by tile (in two kernels, or in one with dQ's shares summed per split:
//! [`super::set_single_pass_attention_backward`]), and the JVP kernel computes the
//! forward and the output's tangent together in one pass over the keys (forward mode).
//! On Hopper cards the forward can run on warpgroup MMAs instead
//! (`kernels/flash_attention_sm90.cu`, [`super::set_hopper_attention`]). It covers f32,
//! bf16 and f16 (bf16/f16 on tensor cores) at head dims 32, 64 and 128 with equal q/k
//! and v head dims; [`super::attention`] falls back
//! to its cuBLAS path for anything else (f64, other head dims). Inputs are read in
//! place where their rows are contiguous (head-split views are): see [`Rows`].

use super::device::CudaDevice;
use super::device::HopperAttention;
use super::launch::{args, launch, Arg};
use super::tma::{self, TensorMap};
use super::CudaStorage;
use crate::backend::{AttentionSpec, BackendStorage};
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::Layout;
use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaFunction, LaunchConfig};
use std::sync::Arc;

/// The kernel file of every kernel but the Hopper forward.
const FILE: &str = "flash_attention";
/// The Hopper forward's kernel file (compiled for sm_90 cards only, as sm_90a).
const FILE_SM90: &str = "flash_attention_sm90";
/// Head dims the kernels are instantiated for.
const HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// The grid's y dimension (row tiles) is limited to this by CUDA.
const MAX_TILES: usize = 65535;
/// Dynamic shared memory a kernel gets without opting in.
const DEFAULT_SMEM: usize = 48 << 10;
/// Padding of each shared row, in elements (`FA_PAD` in the kernel file).
const PAD: usize = 8;
/// The Hopper forwards' query rows a block (two warpgroups of 64) and keys a tile (`CWG`
/// and `BS` of the `FA_SM90` lines).
const SM90_ROWS: usize = 128;
const SM90_KEYS: usize = 128;
/// The Hopper backward's streamed tiles: the dK/dV kernel's query rows a tile (`BQ` of
/// its `FA_DKDV_SM90` lines) and the dQ kernel's keys a tile (`BK` of `FA_DQ_SM90`);
/// their blocks hold SM90_ROWS keys or query rows.
const SM90_QUERIES: usize = 64;

/// The row-tiled kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Output and log-sum-exp, a block per query tile.
    Fwd,
    /// The same on Hopper's warpgroup MMAs (bf16/f16, head dims 64 and 128), the tiles
    /// copied by every thread.
    FwdSm90,
    /// The same with the tiles copied by the TMA unit for a producer warpgroup.
    FwdTma,
    /// The same with the consumer warpgroups taking turns at their MMAs.
    FwdTmaPp,
    /// dK and dV on Hopper's warpgroup MMAs (bf16/f16, head dims 64 and 128), a block
    /// per 128 keys.
    DkdvSm90,
    /// dQ on Hopper's warpgroup MMAs, a block per 128 query rows.
    DqSm90,
    /// dQ, a block per query tile.
    Dq,
    /// dK and dV, a block per key tile.
    Dkdv,
    /// dK, dV and dQ's f32 shares, a block per split of the key tiles (the single-pass
    /// backward).
    Bwd,
    /// Output, log-sum-exp and the output's tangent, a block per query tile.
    Jvp,
}

impl Kernel {
    /// The instantiation of this kernel for `dtype` at head dim `d` in the kernel file.
    fn entry(self, dtype: DType, d: usize) -> String {
        format!("fa_{}_{}_d{d}", self.name(), dtype.as_str())
    }

    /// The kernel file it is in.
    fn file(self) -> &'static str {
        match self {
            Kernel::FwdSm90
            | Kernel::FwdTma
            | Kernel::FwdTmaPp
            | Kernel::DkdvSm90
            | Kernel::DqSm90 => FILE_SM90,
            _ => FILE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::Fwd => "fwd",
            Kernel::FwdSm90 => "fwd_sm90",
            Kernel::FwdTma => "fwd_tma",
            Kernel::FwdTmaPp => "fwd_tma_pp",
            Kernel::DkdvSm90 => "dkdv_sm90",
            Kernel::DqSm90 => "dq_sm90",
            Kernel::Dq => "dq",
            Kernel::Dkdv => "dkdv",
            Kernel::Bwd => "bwd",
            Kernel::Jvp => "jvp",
        }
    }
}

/// The launch shape of one kernel: warps per block, rows (queries, or keys for dK/dV)
/// per block, and bytes of dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    warps: usize,
    rows: usize,
    smem: usize,
}

/// The launch shape of `kernel` for `dtype` at head dim `d`. Must match the `FA_TC(...)`,
/// `FA32(...)`, `FA_TC_JVP(...)` and `FA32_JVP(...)` instantiations of
/// `kernels/flash_attention.cu` and its `FwdSmem`, `BwdSmem` and `JvpSmem` sizes: each kernel traps on a block size, a grid or a shared size that does
/// not (asking for more shared memory than it uses would pass, less would not).
fn shape(kernel: Kernel, dtype: DType, d: usize) -> Shape {
    if dtype == DType::F32 {
        // The plain kernels: 16 rows per warp, static shared memory within 48 KiB: four
        // warps at d = 32 (two for the JVP, which streams four tiles), two at d = 64,
        // one at d = 128.
        let warps = match (kernel, d) {
            (_, 128) => 1,
            (_, 64) | (Kernel::Jvp, _) => 2,
            _ => 4,
        };
        return Shape {
            warps,
            rows: 16 * warps,
            smem: 0,
        };
    }
    match kernel {
        // Two warpgroups of 64 query rows, key tiles of 128 rows: Q and two stages of K
        // and V in 128-byte-swizzled panels (no padding), and 1 KiB to align them.
        Kernel::FwdSm90 => {
            return Shape {
                warps: SM90_ROWS / 16,
                rows: SM90_ROWS,
                smem: (SM90_ROWS + 4 * SM90_KEYS) * d * 2 + 1024,
            }
        }
        // The same and a producer warpgroup, with tma_stages(d) stages and their barriers
        // (Q's, and four a stage: 8 bytes each), then the waits' deadline (8 bytes).
        Kernel::FwdTma | Kernel::FwdTmaPp => {
            let stages = tma_stages(d);
            return Shape {
                warps: SM90_ROWS / 16 + 4,
                rows: SM90_ROWS,
                smem: (SM90_ROWS + 2 * stages * SM90_KEYS) * d * 2 + 8 * (2 + 4 * stages) + 1024,
            };
        }
        // Two warpgroups of 64 keys: K and V resident, two stages of Q and dO tiles of
        // SM90_QUERIES rows and of their lse and delta, and 1 KiB to align them.
        Kernel::DkdvSm90 => {
            return Shape {
                warps: 8,
                rows: SM90_ROWS,
                smem: (2 * SM90_ROWS + 4 * SM90_QUERIES) * d * 2 + 4 * SM90_QUERIES * 4 + 1024,
            }
        }
        // Two warpgroups of 64 query rows: Q and dO resident, two stages of K and V tiles
        // of SM90_QUERIES keys (the same 64), and 1 KiB to align them.
        Kernel::DqSm90 => {
            return Shape {
                warps: 8,
                rows: SM90_ROWS,
                smem: (2 * SM90_ROWS + 4 * SM90_QUERIES) * d * 2 + 1024,
            }
        }
        _ => {}
    }
    // bf16/f16: (warps, rows per block, rows of a streamed tile).
    let (warps, rows, tile) = match (kernel, d) {
        // 4 warps of 32 rows, so that each K and V fragment read from shared memory feeds
        // two 16-row tiles (shared-memory bandwidth bounds 16 rows a warp at d = 128); at
        // d = 128 Q stays in shared memory and the key tiles are 32 rows, to stay within
        // 255 registers and 99 KiB.
        (Kernel::Fwd, 128) => (4, 128, 32),
        (Kernel::Fwd, _) => (4, 128, 64),
        // The JVP holds two accumulators (O and tO) and two score tiles (S and tS): one
        // 16-row m-tile a warp, and tiles that keep Q and tQ resident plus two stages of
        // K, V, tK and tV within 99 KiB (16 keys at d = 128).
        (Kernel::Jvp, 32) => (4, 64, 64),
        (Kernel::Jvp, 64) => (4, 64, 32),
        (Kernel::Jvp, _) => (4, 64, 16),
        // The backward holds two accumulators (dK and dV) or Q and dO fragments: smaller
        // blocks and tiles at d = 128 keep it within 255 registers and 99 KiB.
        (_, 128) => (4, 64, 32),
        _ => (8, 128, 64),
    };
    let row_bytes = (d + PAD) * 2;
    let smem = match kernel {
        // Two stages of K and V tiles; at d = 128 Q resident in rows of its own...
        Kernel::Fwd if d == 128 => (rows + 4 * tile) * row_bytes,
        // ... elsewhere Q passes through the second stage on its way to registers.
        Kernel::Fwd => (2 * tile + rows.max(2 * tile)) * row_bytes,
        // Two resident blocks of rows and two stages of two tiles...
        Kernel::Dq => (2 * rows + 4 * tile) * row_bytes,
        // ... and two stages of the tile's f32 lse and delta...
        Kernel::Dkdv => (2 * rows + 4 * tile) * row_bytes + 4 * tile * 4,
        // ... and the dSᵀ tile (keys × the tile's queries, rows padded).
        Kernel::Bwd => (2 * rows + 4 * tile) * row_bytes + 4 * tile * 4 + rows * (tile + PAD) * 2,
        // Q and tQ resident, two stages of four tiles.
        Kernel::Jvp => (2 * rows + 8 * tile) * row_bytes,
        Kernel::FwdSm90 | Kernel::FwdTma | Kernel::FwdTmaPp | Kernel::DkdvSm90 | Kernel::DqSm90 => {
            unreachable!("sized above")
        }
    };
    Shape { warps, rows, smem }
}

/// Whether the fused kernels (forward, backward and JVP alike) cover attention of
/// `dtype` with head dims `d` (q, k) and `dv` (v) over `tq` queries and `tk` keys.
pub(crate) fn covers(dtype: DType, d: usize, dv: usize, (tq, tk): (usize, usize)) -> bool {
    super::device::fused_attention()
        && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        && d == dv
        && HEAD_DIMS.contains(&d)
        && [Kernel::Fwd, Kernel::Dq, Kernel::Dkdv, Kernel::Jvp]
            .iter()
            .all(|&k| tq.max(tk).div_ceil(shape(k, dtype, d).rows) <= MAX_TILES)
}

/// A `[b, h, t, d]` view of a storage.
pub(crate) type View4<'a> = (&'a CudaStorage, &'a Layout);

/// Shapes of one call: (b·h, tq, tk, d).
pub(crate) type Dims = (usize, usize, usize, usize);

/// Launches `kernel` with one block per (b·h, tile of `t` rows).
fn launch_tiled(
    dev: &Arc<CudaDevice>,
    op: &'static str,
    kernel: Kernel,
    (dt, dims, t): (DType, Dims, usize),
    args: &mut [Arg],
) -> Result<()> {
    let tiles = t.div_ceil(shape(kernel, dt, dims.3).rows);
    launch_blocks(dev, op, kernel, (dt, dims, tiles), args)
}

/// Launches `kernel` with `(b·h, y)` blocks, opting in to more than 48 KiB of dynamic
/// shared memory where its shape needs it.
fn launch_blocks(
    dev: &Arc<CudaDevice>,
    op: &'static str,
    kernel: Kernel,
    (dt, (bh, _, _, d), y): (DType, Dims, usize),
    args: &mut [Arg],
) -> Result<()> {
    let s = shape(kernel, dt, d);
    let name = kernel.entry(dt, d);
    opted_in(dev, op, (kernel.file(), &name), s.smem)?;
    let cfg = LaunchConfig {
        grid_dim: (bh as u32, y as u32, 1),
        block_dim: (32 * s.warps as u32, 1, 1),
        shared_mem_bytes: s.smem as u32,
    };
    launch(dev, op, (kernel.file(), &name), cfg, args)
}

/// Kernel `name` of kernel file `file`, allowed `smem` bytes of dynamic shared memory
/// where that is more than a kernel gets without opting in; the device's context is
/// current on return (for the caller's driver queries too).
fn opted_in(
    dev: &Arc<CudaDevice>,
    op: &'static str,
    (file, name): (&'static str, &str),
    smem: usize,
) -> Result<CudaFunction> {
    let f = dev.function(file, name)?;
    dev.bind().map_err(|e| dev.error(op, e))?;
    if smem > DEFAULT_SMEM {
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
            .map_err(|e| dev.error(op, format!("{name}: {e}")))?;
    }
    Ok(f)
}

/// Where a matrix's rows lie (an input's or a result's), as the kernels take it (`Rows`
/// in the kernel file): row `i` of head `bh` starts `(bh / heads)·batch +
/// (bh % heads)·head + i·row` elements after its address, and its `d` elements are
/// contiguous.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rows {
    batch: u64,
    head: u64,
    row: u64,
    heads: u64,
}

// SAFETY: plain `#[repr(C)]` data, laid out as the C struct of the same name.
unsafe impl cudarc::driver::DeviceRepr for Rows {}

impl Rows {
    /// The rows of a `[b, h, t, d]` result stored token-major, `[b, t, h, d]`, as the
    /// attention op expects (`token_major` in `ops/attention.rs`).
    fn token_major(heads: usize, t: usize, d: usize) -> Rows {
        Rows::interleaved(heads, t, d, 1)
    }

    /// The rows of one of `parts` `[b, h, t, d]` results stored together as
    /// `[b, t, parts, h, d]`, each part's first row `h·d` elements after the previous
    /// part's (`parts` = 1: token-major).
    fn interleaved(heads: usize, t: usize, d: usize, parts: usize) -> Rows {
        let (h, t, d, parts) = (heads as u64, t as u64, d as u64, parts as u64);
        Rows {
            batch: t * parts * h * d,
            head: d,
            row: parts * h * d,
            heads: h,
        }
    }

    /// How the kernels read a `[b, h, t, d]` view of `dtype` with these strides starting
    /// at device address `ptr` in place, or `None` when they cannot: its rows must be
    /// contiguous (a head split of a `[b, t, h·d]` product's are) and, for bf16/f16,
    /// its address and strides multiples of 16 bytes (rows are copied with 16-byte
    /// `cp.async`).
    fn in_place(l: &Layout, ptr: u64, dtype: DType) -> Option<Rows> {
        let (shape, strides) = (l.shape(), l.strides());
        // A stride matters only where its dim has more than one element.
        let stride = |i: usize| if shape[i] > 1 { strides[i] as u64 } else { 0 };
        let rows = Rows {
            batch: stride(0),
            head: stride(1),
            row: stride(2),
            heads: shape[1] as u64,
        };
        let unit = (16 / dtype.size_in_bytes()) as u64;
        let strides_fit = [rows.batch, rows.head, rows.row]
            .iter()
            .all(|s| s % unit == 0);
        let aligned = dtype == DType::F32 || (ptr.is_multiple_of(16) && strides_fit);
        // Broadcasts over b, h or t (a zero stride) read fine; over d they do not.
        let contiguous_rows = shape[3] <= 1 || strides[3] == 1;
        (contiguous_rows && aligned).then_some(rows)
    }
}

/// An input as the kernels read it: its address and row placement, and the contiguous
/// copy made when its own layout does not suit them.
struct Input {
    ptr: u64,
    rows: Rows,
    _copy: Option<CudaStorage>,
}

/// `x` viewed by `l` as `[b, h, t, d]`, read in place where [`Rows::in_place`] allows,
/// copied to a contiguous buffer otherwise.
fn input(x: &CudaStorage, l: &Layout) -> Result<Input> {
    let ptr = x.ptr_at(l.offset());
    if let Some(rows) = Rows::in_place(l, ptr, x.dtype) {
        return Ok(Input {
            ptr,
            rows,
            _copy: None,
        });
    }
    let copy = x.copy_strided(l)?;
    let contiguous = Layout::contiguous(l.shape());
    let rows = Rows::in_place(&contiguous, copy.ptr(), x.dtype).ok_or_else(|| {
        let why = "a fresh contiguous buffer is not 16-byte aligned";
        x.dev().error("attention", why)
    })?;
    Ok(Input {
        ptr: copy.ptr(),
        rows,
        _copy: Some(copy),
    })
}

/// The output (stored token-major, `[b, tq, h, d]`) and the f32 row log-sum-exp
/// `[bh, tq]` of q, k, v `[b, h, t, d]` views.
pub(crate) fn forward(
    (q, lq): (&CudaStorage, &Layout),
    (k, lk): (&CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
    dims: Dims,
    spec: AttentionSpec,
) -> Result<(CudaStorage, CudaStorage)> {
    let (dev, dt) = (q.dev(), q.dtype);
    let (bh, tq, _, d) = dims;
    let (qi, ki, vi) = (input(q, lq)?, input(k, lk)?, input(v, lv)?);
    let out = CudaStorage::alloc(dev, bh * tq * d, dt)?;
    let outr = Rows::token_major(lq.shape()[1], tq, d);
    let lse = CudaStorage::alloc(dev, bh * tq, DType::F32)?;
    let (scale, causal) = (spec.scale as f32, spec.causal);
    let mode = hopper_mode(dev, dt, d);
    let tma = match mode {
        HopperAttention::Tma => Some(Kernel::FwdTma),
        HopperAttention::TmaPingPong => Some(Kernel::FwdTmaPp),
        _ => None,
    };
    if let Some(kernel) = tma {
        if let Some([qm, km, vm]) = tensor_maps([(&qi, lq), (&ki, lk), (&vi, lv)], dt) {
            let heads = lq.shape()[1];
            let a = args![
                qm,
                km,
                vm,
                heads,
                out.ptr(),
                outr,
                lse.ptr(),
                tq,
                dims.2,
                scale,
                causal
            ];
            launch_tiled(dev, "attention", kernel, (dt, dims, tq), a)?;
            return Ok((out, lse));
        }
    }
    let a = args![
        qi.ptr,
        qi.rows,
        ki.ptr,
        ki.rows,
        vi.ptr,
        vi.rows,
        out.ptr(),
        outr,
        lse.ptr(),
        tq,
        dims.2,
        scale,
        causal
    ];
    let kernel = match mode {
        HopperAttention::Off => Kernel::Fwd,
        _ => Kernel::FwdSm90,
    };
    launch_tiled(dev, "attention", kernel, (dt, dims, tq), a)?;
    Ok((out, lse))
}

/// The Hopper forward for `dt` at head dim `d` on `dev`: the one switched on
/// ([`super::set_hopper_attention`]) on an sm_90 card for bf16/f16 at head dim 64 or
/// 128, `Off` elsewhere.
fn hopper_mode(dev: &CudaDevice, dt: DType, d: usize) -> HopperAttention {
    let fits =
        dev.arch() == "sm_90" && matches!(dt, DType::BF16 | DType::F16) && matches!(d, 64 | 128);
    match fits {
        true => super::device::hopper_attention(),
        false => HopperAttention::Off,
    }
}

/// Stages of K and V tiles the TMA forward streams through at head dim `d` (`ST` of its
/// `FA_SM90` lines): three where they fit beside Q at d = 64, two at d = 128.
fn tma_stages(d: usize) -> usize {
    if d == 64 {
        3
    } else {
        2
    }
}

/// The TMA forward's maps of q (boxes of a block's query rows) and k, v (a tile's keys),
/// or `None` where one of them cannot be made ([`tma::head_rows_map`]).
fn tensor_maps(inputs: [(&Input, &Layout); 3], dt: DType) -> Option<[TensorMap; 3]> {
    let map = |(x, l): (&Input, &Layout), box_rows| {
        let s = l.shape();
        let strides = [x.rows.row, x.rows.head, x.rows.batch];
        tma::head_rows_map(x.ptr, dt, [s[0], s[1], s[2], s[3]], strides, box_rows)
    };
    Some([
        map(inputs[0], SM90_ROWS)?,
        map(inputs[1], SM90_KEYS)?,
        map(inputs[2], SM90_KEYS)?,
    ])
}

/// dq, dk and dv, stored token-major, of q, k, v `[b, h, t, d]` views, the forward's
/// output `o` and log-sum-exp, and the output gradient `g` (views like the inputs); or,
/// `joint` (tq = tk), one `[b, t, 3, h, d]` storage holding all three (the gradient of
/// the tensor whose parts q, k and v are).
pub(crate) fn backward(
    (q, lq): (&CudaStorage, &Layout),
    (k, lk): (&CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
    ((o, lo), lse, (g, lg)): (View4<'_>, &CudaStorage, View4<'_>),
    dims: Dims,
    spec: AttentionSpec,
    joint: bool,
) -> Result<Vec<CudaStorage>> {
    const OP: &str = "attention_backward";
    let (dev, dt) = (q.dev(), q.dtype);
    let (bh, tq, tk, d) = dims;
    let rows = bh * tq;
    let (qi, ki, vi, gi) = (input(q, lq)?, input(k, lk)?, input(v, lv)?, input(g, lg)?);
    let oi = input(o, lo)?;
    // delta = rowsum(dO∘O), one warp per row.
    let delta = CudaStorage::alloc(dev, rows, DType::F32)?;
    let per_warp = LaunchConfig {
        grid_dim: (rows.div_ceil(8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = format!("fa_delta_{}", dt.as_str());
    let a = args![gi.ptr, gi.rows, oi.ptr, oi.rows, delta.ptr(), rows, tq, d];
    launch(dev, OP, (FILE, &f), per_warp, a)?;
    let heads = lq.shape()[1];
    // Separate: three token-major buffers. Joint: one `[b, t, 3, h, d]` buffer whose
    // rows hold a token's q, k and v gradients side by side.
    let (grads, [pq, pk, pv], dqr, dkvr) = match joint {
        false => {
            let grads = [rows * d, bh * tk * d, bh * tk * d]
                .map(|n| CudaStorage::alloc(dev, n, dt))
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            let ptrs = [0, 1, 2].map(|i| grads[i].ptr());
            let (dqr, dkvr) = (
                Rows::token_major(heads, tq, d),
                Rows::token_major(heads, tk, d),
            );
            (grads, ptrs, dqr, dkvr)
        }
        true => {
            let joint = CudaStorage::alloc(dev, 3 * rows * d, dt)?;
            let ptrs = [0, 1, 2].map(|i| joint.ptr_at(i * heads * d));
            let r = Rows::interleaved(heads, tq, d, 3);
            (vec![joint], ptrs, r, r)
        }
    };
    let (scale, causal) = (spec.scale as f32, spec.causal);
    let (l, dl) = (lse.ptr(), delta.ptr());
    let (qp, kp, vp, gp) = (qi.ptr, ki.ptr, vi.ptr, gi.ptr);
    let (qr, kr, vr, gr) = (qi.rows, ki.rows, vi.rows, gi.rows);
    if dt != DType::F32 && super::device::single_pass_attention_backward() {
        let splits = splits_on(dev, OP, dt, dims)?;
        let parts = CudaStorage::zeros_on(dev, splits * rows * d, DType::F32)?;
        let pp = parts.ptr();
        let a =
            args![qp, qr, kp, kr, vp, vr, gp, gr, l, dl, pk, pv, dkvr, pp, tq, tk, scale, causal];
        launch_blocks(dev, OP, Kernel::Bwd, (dt, dims, splits), a)?;
        sum_dq_parts(dev, OP, (dt, dims), (&parts, splits), (pq, dqr), scale)?;
        return Ok(grads);
    }
    // With a Hopper forward switched on, both halves run on warpgroup MMAs too.
    let (dq, dkdv) = match hopper_mode(dev, dt, d) {
        HopperAttention::Off => (Kernel::Dq, Kernel::Dkdv),
        _ => (Kernel::DqSm90, Kernel::DkdvSm90),
    };
    let a = args![qp, qr, kp, kr, vp, vr, gp, gr, l, dl, pq, dqr, tq, tk, scale, causal];
    launch_tiled(dev, OP, dq, (dt, dims, tq), a)?;
    let a = args![qp, qr, kp, kr, vp, vr, gp, gr, l, dl, pk, pv, dkvr, tq, tk, scale, causal];
    launch_tiled(dev, OP, dkdv, (dt, dims, tk), a)?;
    Ok(grads)
}

/// The splits of the single-pass backward ([`splits`]) for `dims` on `dev`: its
/// multiprocessors times the blocks of `fa_bwd` the driver says each holds.
fn splits_on(dev: &Arc<CudaDevice>, op: &'static str, dt: DType, dims: Dims) -> Result<usize> {
    let (bh, _, tk, d) = dims;
    let s = shape(Kernel::Bwd, dt, d);
    let name = Kernel::Bwd.entry(dt, d);
    let per_sm = opted_in(dev, op, (FILE, &name), s.smem)?
        .occupancy_max_active_blocks_per_multiprocessor((32 * s.warps) as u32, s.smem, None)
        .map_err(|e| dev.error(op, format!("{name}: {e}")))?;
    let slots = dev.sm_count() * (per_sm as usize).max(1);
    Ok(splits(slots, bh, tk.div_ceil(s.rows)))
}

/// dQ = scale · Σ the single-pass backward's `splits` f32 parts (`[splits][b·h][tq][d]`),
/// in split order (`fa_dq_sum`), rounded to `dt` and stored at `dq` where `dqr` says.
fn sum_dq_parts(
    dev: &Arc<CudaDevice>,
    op: &'static str,
    (dt, (bh, tq, _, d)): (DType, Dims),
    (parts, splits): (&CudaStorage, usize),
    (dq, dqr): (u64, Rows),
    scale: f32,
) -> Result<()> {
    // A warp per row, eight a block.
    let rows = bh * tq;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(8).min(1 << 16) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = format!("fa_dq_sum_{}", dt.as_str());
    let (pp, splits) = (parts.ptr(), splits as i32);
    launch(
        dev,
        op,
        (FILE, &f),
        cfg,
        args![pp, splits, dq, dqr, rows, tq, d, scale],
    )
}

/// At most this many splits of the key blocks per head: each holds an f32 copy of the
/// head's dQ (`splits·b·h·tq·d·4` bytes in all).
const MAX_SPLITS: usize = 8;

/// Splits of the single-pass backward's `key_blocks` per head, for `bh` heads on a
/// card that runs `slots` blocks at once: the count (at most one per key block, at most
/// [`MAX_SPLITS`]) that leaves the least work on the busiest slot, i.e. the fewest waves
/// of `bh·splits` blocks times the key blocks each block takes in turn; the fewest
/// splits among equals (less memory, a shorter sum). The same shape on the same card
/// always gives the same splits, so the same order of dQ's sums.
fn splits(slots: usize, bh: usize, key_blocks: usize) -> usize {
    (1..=MAX_SPLITS.min(key_blocks).max(1))
        .min_by_key(|&s| ((bh * s).div_ceil(slots.max(1)) * key_blocks.div_ceil(s), s))
        .unwrap_or(1)
}

/// The output, the f32 row log-sum-exp `[bh, tq]` and the output's tangent of q, k, v
/// `[b, h, t, d]` views along tangents `tq`, `tk`, `tv` (views like the inputs, of the
/// same dtype), in one pass: output and tangent stored token-major, `[b, tq, h, d]`,
/// and the output and log-sum-exp exactly as [`forward`] stores them, so that
/// [`backward`] reads them.
pub(crate) fn jvp(
    (q, k, v): (View4<'_>, View4<'_>, View4<'_>),
    (tq, tk, tv): (View4<'_>, View4<'_>, View4<'_>),
    dims: Dims,
    spec: AttentionSpec,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "attention_jvp";
    let (dev, dt) = (q.0.dev(), q.0.dtype);
    let (bh, rows, keys, d) = dims;
    let (qi, ki, vi) = (input(q.0, q.1)?, input(k.0, k.1)?, input(v.0, v.1)?);
    let (tqi, tki, tvi) = (input(tq.0, tq.1)?, input(tk.0, tk.1)?, input(tv.0, tv.1)?);
    let out = CudaStorage::alloc(dev, bh * rows * d, dt)?;
    let out_dot = CudaStorage::alloc(dev, bh * rows * d, dt)?;
    let outr = Rows::token_major(q.1.shape()[1], rows, d);
    let lse = CudaStorage::alloc(dev, bh * rows, DType::F32)?;
    let (scale, causal) = (spec.scale as f32, spec.causal);
    let a = args![
        qi.ptr,
        qi.rows,
        ki.ptr,
        ki.rows,
        vi.ptr,
        vi.rows,
        tqi.ptr,
        tqi.rows,
        tki.ptr,
        tki.rows,
        tvi.ptr,
        tvi.rows,
        out.ptr(),
        out_dot.ptr(),
        outr,
        lse.ptr(),
        rows,
        keys,
        scale,
        causal
    ];
    launch_tiled(dev, OP, Kernel::Jvp, (dt, dims, rows), a)?;
    Ok((out, lse, out_dot))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes the kernel file's instantiations and size formulas give (worked out
    /// by hand from `FA_TC(...)`, `FwdSmem` and `BwdSmem`): all within the 99 KiB that
    /// every sm_80+ GPU allows a block.
    #[test]
    fn shapes_match_the_kernel_instantiations() {
        let s = |warps, rows, smem| Shape { warps, rows, smem };
        for dt in [DType::BF16, DType::F16] {
            assert_eq!(shape(Kernel::Fwd, dt, 32), s(4, 128, 20480));
            assert_eq!(shape(Kernel::Fwd, dt, 64), s(4, 128, 36864));
            // Q's 128 rows and two stages of 32-row K and V tiles, 272 bytes a row.
            assert_eq!(shape(Kernel::Fwd, dt, 128), s(4, 128, (128 + 4 * 32) * 272));
            assert_eq!(shape(Kernel::Dq, dt, 32), s(8, 128, 40960));
            assert_eq!(shape(Kernel::Dq, dt, 64), s(8, 128, 73728));
            assert_eq!(shape(Kernel::Dq, dt, 128), s(4, 64, 69632));
            assert_eq!(shape(Kernel::Dkdv, dt, 32), s(8, 128, 41984));
            assert_eq!(shape(Kernel::Dkdv, dt, 64), s(8, 128, 74752));
            assert_eq!(shape(Kernel::Dkdv, dt, 128), s(4, 64, 70144));
            // dK/dV's, and the dSᵀ tile: 128 keys × 72, or 64 × 40 at d = 128.
            assert_eq!(shape(Kernel::Bwd, dt, 32), s(8, 128, 41984 + 18432));
            assert_eq!(shape(Kernel::Bwd, dt, 64), s(8, 128, 74752 + 18432));
            assert_eq!(shape(Kernel::Bwd, dt, 128), s(4, 64, 70144 + 5120));
            for d in HEAD_DIMS {
                assert!(shape(Kernel::Bwd, dt, d).smem <= 99 << 10, "{dt} d={d}");
            }
        }
        for dt in [DType::BF16, DType::F16] {
            // Q and tQ (64 rows each) and two stages of four tiles: 64, 32 and 16 keys.
            assert_eq!(shape(Kernel::Jvp, dt, 32), s(4, 64, (128 + 8 * 64) * 80));
            assert_eq!(shape(Kernel::Jvp, dt, 64), s(4, 64, (128 + 8 * 32) * 144));
            assert_eq!(shape(Kernel::Jvp, dt, 128), s(4, 64, (128 + 8 * 16) * 272));
            for d in HEAD_DIMS {
                assert!(shape(Kernel::Jvp, dt, d).smem <= 99 << 10, "{dt} d={d}");
            }
        }
        assert_eq!(shape(Kernel::Jvp, DType::F32, 128), s(1, 16, 0));
        assert_eq!(shape(Kernel::Jvp, DType::F32, 32), s(2, 32, 0));
        assert_eq!(shape(Kernel::Dkdv, DType::F32, 128), s(1, 16, 0));
        assert_eq!(shape(Kernel::Fwd, DType::F32, 64), s(2, 32, 0));
    }

    /// The fewest waves of blocks times key blocks a block, the fewest splits among
    /// equals; never more splits than key blocks or [`MAX_SPLITS`], never none.
    #[test]
    fn single_pass_splits_balance_the_card() {
        // 132 one-block multiprocessors, b·h = 64 at T = 4096 (32 key blocks): two
        // splits, one wave of 128 blocks of 16 key blocks; five would take three waves.
        assert_eq!(splits(132, 64, 32), 2);
        // A DiT's 1,536 heads of 2 key blocks: one split (two give the same work).
        assert_eq!(splits(132, 1536, 2), 1);
        // Few heads: a split per key block, then at most MAX_SPLITS.
        assert_eq!(splits(264, 4, 3), 3);
        assert_eq!(splits(132, 1, 256), MAX_SPLITS);
        assert_eq!(splits(132, 0, 0), 1);
    }

    /// The JVP shapes against the `FA_TC_JVP(S, T, D, MT, W, BS, QREG)` and
    /// `FA32_JVP(D, W, BS)` lines of the kernel file itself: W warps, 16·MT·W rows, and
    /// `JvpSmem`'s bytes (Q and tQ, then two stages of four BS-row tiles); the f32
    /// forward and backward against its `FA32(D, W, BSF, BSB)` lines.
    /// The arguments of each `name(...)` line of kernel file `file`.
    fn instantiations(file: &str, name: &str) -> Vec<Vec<String>> {
        let (_, src) = crate::cuda::kernels::SOURCES
            .iter()
            .find(|(n, _)| *n == file)
            .unwrap();
        src.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix('('))
            .filter_map(|l| l.strip_suffix(')'))
            .map(|l| l.split(',').map(|a| a.trim().to_string()).collect())
            .collect()
    }

    /// The numeric arguments (after the dtype's two) of each `name(...)` line of the
    /// Hopper kernel file.
    fn sm90_instantiations(name: &str) -> Vec<Vec<usize>> {
        let lines = instantiations(FILE_SM90, name);
        let number = |a: &String| a.parse().unwrap();
        lines
            .iter()
            .map(|a| a[2..].iter().map(number).collect())
            .collect()
    }

    #[test]
    fn jvp_and_f32_shapes_match_the_kernel_file() {
        let calls = |name: &str| instantiations(FILE, name);
        let n = |a: &str| a.parse::<usize>().unwrap();
        let tc = calls("FA_TC_JVP");
        assert_eq!(tc.len(), 6, "{tc:?}");
        for a in &tc {
            let dt = if a[0] == "bf16" {
                DType::BF16
            } else {
                DType::F16
            };
            let (d, mt, w, bs) = (n(&a[2]), n(&a[3]), n(&a[4]), n(&a[5]));
            let rows = 16 * mt * w;
            let smem = (2 * rows + 8 * bs) * (d + PAD) * 2;
            let want = Shape {
                warps: w,
                rows,
                smem,
            };
            assert_eq!(shape(Kernel::Jvp, dt, d), want, "{a:?}");
        }
        // The f32 kernels' lines: (D, W, ...) → W warps of 16 rows, static shared memory.
        let plain = [
            ("FA32_JVP", &[Kernel::Jvp][..]),
            ("FA32", &[Kernel::Fwd, Kernel::Dq, Kernel::Dkdv][..]),
        ];
        for (name, kernels) in plain {
            let lines = calls(name);
            assert_eq!(lines.len(), 3, "{name}: {lines:?}");
            for a in &lines {
                let (d, w) = (n(&a[0]), n(&a[1]));
                let want = Shape {
                    warps: w,
                    rows: 16 * w,
                    smem: 0,
                };
                for &kernel in kernels {
                    assert_eq!(shape(kernel, DType::F32, d), want, "{kernel:?} {a:?}");
                }
            }
        }
    }

    /// The Hopper kernels' shapes against the `FA_SM90(S, T, D, CWG, BS, ST)`,
    /// `FA_DKDV_SM90(S, T, D, BQ)` and `FA_DQ_SM90(S, T, D, BK)` lines of their kernel file: 4·CWG warps (and the TMA forward's producer warpgroup), 64·CWG rows,
    /// and `Sm90Smem`'s and `TmaSmem`'s bytes (Q, two or ST stages of K and V, the
    /// barriers, 1 KiB to align them), within the 227 KiB an sm_90 block may have; only
    /// head dims 64 and 128.
    #[test]
    fn hopper_shapes_match_the_kernel_file() {
        let lines = sm90_instantiations("FA_SM90");
        assert_eq!(lines.len(), 4, "{lines:?}");
        for a in &lines {
            let (d, cwg, bs, st) = (a[0], a[1], a[2], a[3]);
            let copying = Shape {
                warps: 4 * cwg,
                rows: 64 * cwg,
                smem: (64 * cwg + 4 * bs) * d * 2 + 1024,
            };
            let tma = Shape {
                warps: 4 * cwg + 4,
                rows: 64 * cwg,
                smem: (64 * cwg + 2 * st * bs) * d * 2 + 8 * (2 + 4 * st) + 1024,
            };
            for dt in [DType::BF16, DType::F16] {
                assert_eq!(shape(Kernel::FwdSm90, dt, d), copying, "{a:?}");
                assert_eq!(shape(Kernel::FwdTma, dt, d), tma, "{a:?}");
                assert_eq!(shape(Kernel::FwdTmaPp, dt, d), tma, "{a:?}");
            }
            assert!(copying.smem.max(tma.smem) <= 227 << 10, "{a:?}");
            assert!(matches!(d, 64 | 128), "{a:?}");
        }
        // FA_DKDV_SM90(S, T, D, BQ): 8 warps, 128 keys, `DkdvSm90Smem`'s bytes.
        let lines = sm90_instantiations("FA_DKDV_SM90");
        assert_eq!(lines.len(), 4, "{lines:?}");
        for a in &lines {
            let (d, bq) = (a[0], a[1]);
            let want = Shape {
                warps: 8,
                rows: 128,
                smem: (2 * 128 + 4 * bq) * d * 2 + 4 * bq * 4 + 1024,
            };
            for dt in [DType::BF16, DType::F16] {
                assert_eq!(shape(Kernel::DkdvSm90, dt, d), want, "{a:?}");
            }
            assert!(want.smem <= 227 << 10, "{a:?}");
        }
        // FA_DQ_SM90(S, T, D, BK): 8 warps, 128 query rows, `DqSm90Smem`'s bytes.
        let lines = sm90_instantiations("FA_DQ_SM90");
        assert_eq!(lines.len(), 4, "{lines:?}");
        for a in &lines {
            let (d, bk) = (a[0], a[1]);
            let want = Shape {
                warps: 8,
                rows: 128,
                smem: (2 * 128 + 4 * bk) * d * 2 + 1024,
            };
            for dt in [DType::BF16, DType::F16] {
                assert_eq!(shape(Kernel::DqSm90, dt, d), want, "{a:?}");
            }
            assert!(want.smem <= 227 << 10, "{a:?}");
        }
    }

    /// `[b, h, t, d]` = `[2, 3, 5, 64]` heads split out of a contiguous `[b, t, h, d]`.
    fn head_split() -> Layout {
        Layout::contiguous(&[2, 5, 3, 64]).permute(&[0, 2, 1, 3])
    }

    #[test]
    fn head_split_views_are_read_in_place() {
        let want = Rows {
            batch: 5 * 3 * 64,
            head: 64,
            row: 3 * 64,
            heads: 3,
        };
        for dt in [DType::F32, DType::BF16, DType::F16] {
            assert_eq!(Rows::in_place(&head_split(), 256, dt), Some(want), "{dt}");
        }
        // The token-major layout the kernels write is the same placement.
        assert_eq!(Rows::token_major(3, 5, 64), want);
        let contiguous = Layout::contiguous(&[2, 3, 5, 64]);
        let rows = Rows::in_place(&contiguous, 0, DType::BF16).unwrap();
        assert_eq!((rows.batch, rows.head, rows.row), (3 * 5 * 64, 5 * 64, 64));
    }

    #[test]
    fn views_the_kernels_cannot_read_are_refused() {
        // A start off 16 bytes: bf16/f16 rows are copied with 16-byte cp.async.
        assert_eq!(Rows::in_place(&head_split(), 258, DType::BF16), None);
        assert!(Rows::in_place(&head_split(), 260, DType::F32).is_some());
        // Rows 63 elements apart: not 16-byte aligned.
        let odd = Layout::new(vec![1, 1, 4, 32], vec![4 * 63, 4 * 63, 63, 1], 0);
        assert_eq!(Rows::in_place(&odd, 0, DType::F16), None);
        // A broadcast along d: each row is one element repeated, not d contiguous ones.
        let repeated = Layout::new(vec![1, 1, 4, 32], vec![128, 128, 32, 0], 0);
        assert_eq!(Rows::in_place(&repeated, 0, DType::F32), None);
        // Broadcasts over heads read in place: every head reads the same rows.
        let shared = Layout::new(vec![2, 3, 4, 32], vec![128, 0, 32, 1], 0);
        assert_eq!(
            Rows::in_place(&shared, 0, DType::BF16).map(|r| r.head),
            Some(0)
        );
        // Columns not contiguous (a transposed view).
        let transposed = Layout::contiguous(&[2, 3, 64, 5]).permute(&[0, 1, 3, 2]);
        assert_eq!(Rows::in_place(&transposed, 0, DType::F32), None);
        // Size-1 dims: their strides do not matter.
        let single = Layout::new(vec![1, 1, 1, 32], vec![7, 9, 11, 1], 0);
        let rows = Rows::in_place(&single, 0, DType::BF16).unwrap();
        assert_eq!((rows.batch, rows.head, rows.row, rows.heads), (0, 0, 0, 1));
    }
}
