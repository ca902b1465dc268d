//! Reductions and the row ops over the last dim: softmax, layer/RMS norm, forward and
//! backward (`kernels/reduce.cu`, `softmax.cu`, `norm.cu`). Row kernels read contiguous
//! rows; a strided input is copied first, as on the CPU.

use super::launch::{args, launch, per_element, per_row, per_warp, View};
use super::{acc_dtype, float_only, suffix, CudaDevice, CudaStorage};
use crate::backend::{norm_rows_per_group, BinaryOp, NormSpec, ReduceOp};
use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

/// Outputs at least this many make the one-thread-per-output reduction worthwhile.
const MANY_OUTPUTS: usize = 8192;
/// Contiguous rows at least this long get a block each; shorter ones a warp.
const LONG_ROW: usize = 1024;
/// Blocks a middle-dim reduction aims for (a few waves on the largest GPUs).
const FILL_BLOCKS: usize = 2048;
/// Rows per block of a middle-dim reduction, roughly (see `row_stretches`).
const MIN_STRETCH: usize = 64;
/// CUDA's limit on the grid's y and z dimensions.
const MAX_GRID_YZ: usize = 65535;

/// `op` over the sorted `dims`, in keep-dim shape.
pub(crate) fn reduce(
    x: &CudaStorage,
    l: &Layout,
    dims: &[usize],
    op: ReduceOp,
) -> Result<CudaStorage> {
    float_only("reduce", x.dtype)?;
    let (shape, strides) = (l.shape(), l.strides());
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
    let pick = |ds: &[usize], offset| {
        let sh: Vec<usize> = ds.iter().map(|&d| shape[d]).collect();
        let st: Vec<usize> = ds.iter().map(|&d| strides[d]).collect();
        Layout::new(sh, st, offset)
    };
    let (kl, rl) = (pick(&kept, l.offset()), pick(dims, 0));
    let (n_out, n_red) = (kl.elem_count(), rl.elem_count());
    if n_out == 0 || n_red == 0 {
        let identity = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
        };
        let host = CpuStorage::from_f64_fn(n_out, x.dtype, |_| identity)?;
        return CudaStorage::from_cpu(x.ordinal(), &host);
    }
    let code = op.kernel_code();
    let trailing = (0..dims.len()).all(|i| dims[i] + dims.len() == shape.len() + i);
    if trailing && l.is_contiguous() {
        return reduce_last(x, l, (n_out, n_red), code);
    }
    if let Some(block) = middle_block(shape, dims).filter(|_| l.is_contiguous()) {
        return reduce_middle((x, l), None, block, code);
    }
    let ([kv], [rv]) = (
        View::merged("reduce", [&kl])?,
        View::merged("reduce", [&rl])?,
    );
    let inner_stride = |l: &Layout| {
        let merged: Vec<usize> = (0..l.rank()).filter(|&d| l.shape()[d] != 1).collect();
        merged.last().map_or(0, |&d| l.strides()[d])
    };
    // Columns when neighbouring outputs are neighbours in memory and there are enough
    // of them to fill the GPU; rows (a block per output) otherwise.
    let columns = n_out >= MANY_OUTPUTS && inner_stride(&kl) == 1 && inner_stride(&rl) != 1;
    let out = CudaStorage::alloc(x.dev(), n_out, x.dtype)?;
    let (kind, cfg) = match columns {
        true => ("reduce_cols", per_element(n_out)),
        false => ("reduce_rows", per_row(n_out, n_red)),
    };
    let name = format!("{kind}_{}", suffix(x.dtype));
    let a = args![x.ptr(), kv, rv, out.ptr(), n_out, n_red, code];
    launch(x.dev(), "reduce", ("reduce", &name), cfg, a)?;
    Ok(out)
}

/// (outer, rows, cols) of a shape whose sorted `dims` are one block of dims: the shape
/// seen as `[outer, rows, cols]` with the block as the middle dim.
fn middle_block(shape: &[usize], dims: &[usize]) -> Option<(usize, usize, usize)> {
    let (first, last) = (*dims.first()?, *dims.last()?);
    (last - first + 1 == dims.len()).then(|| {
        let size = |ds: &[usize]| ds.iter().product();
        (
            size(&shape[..first]),
            size(&shape[first..=last]),
            size(&shape[last + 1..]),
        )
    })
}

/// Σ over the sorted `dims` of x·y (views of one shape), keep-dim: fused into the
/// middle-dim reduction when both are contiguous and `dims` are one block of leading or
/// middle dims (the gradients of adaLN's broadcast shifts, scales and gates), so the
/// product never reaches memory; otherwise the product, then its sum.
pub(crate) fn sum_product(
    x: &CudaStorage,
    l: &Layout,
    (y, yl): (&CudaStorage, &Layout),
    dims: &[usize],
) -> Result<CudaStorage> {
    float_only("sum_product", x.dtype)?;
    let trailing = dims.last() == Some(&(l.rank().max(1) - 1));
    let fused = (l.elem_count() > 0 && !trailing && l.is_contiguous() && yl.is_contiguous())
        .then(|| middle_block(l.shape(), dims))
        .flatten();
    match fused {
        Some(block) => reduce_middle((x, l), Some((y, yl)), block, ReduceOp::Sum.kernel_code()),
        None => {
            let product = super::elementwise::binary(x, l, y, yl, BinaryOp::Mul)?;
            reduce(
                &product,
                &Layout::contiguous(l.shape()),
                dims,
                ReduceOp::Sum,
            )
        }
    }
}

/// The gradients of a gated product `full·gate` from the output gradient `g` (views of
/// one shape, `[groups·rows, cols]` as rows; `gate` one row of `cols` per group of rows):
/// `g·gate` elementwise, in full's dtype, and `Σ_rows g·full` per group, in the gate's,
/// from one read of g (`gated_product_grads_*`, then `reduce_middle_finish_*` adding
/// each column's partials in order, so the result is identical run to run). `full` and
/// `gate` have g's dtype, or either or both are bf16 (or both f16) beside an f32 g
/// (autocast's residual around a half-precision product).
pub(crate) fn gated_product_grads(
    (g, gl): (&CudaStorage, &Layout),
    (full, fl): (&CudaStorage, &Layout),
    (gate, gatel): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "addcmul_backward";
    float_only(OP, g.dtype)?;
    let dtypes = [g.dtype, full.dtype, gate.dtype];
    let name = gated_grads_kernel(dtypes).ok_or_else(|| Error::dtypes(OP, &dtypes))?;
    let cols = gl.shape().last().copied().unwrap_or(1).max(1);
    let groups = (gatel.elem_count() / cols).max(1);
    let rows = gl.elem_count() / cols / groups;
    let dev = g.dev();
    let d_full = CudaStorage::alloc(dev, gl.elem_count(), full.dtype)?;
    let (gd, fd, gated) = (g.dense(gl)?, full.dense(fl)?, gate.dense(gatel)?);
    let (chunks, per, cfg) = middle_launch(groups, rows, cols);
    let part = CudaStorage::alloc(dev, groups * chunks * cols, acc_dtype(g.dtype))?;
    let a = args![
        gd.ptr,
        fd.ptr,
        gated.ptr,
        d_full.ptr(),
        part.ptr(),
        groups,
        rows,
        cols,
        per
    ];
    launch(dev, OP, ("reduce", &name), cfg, a)?;
    let sum = ReduceOp::Sum.kernel_code();
    let d_gate = finish_middle(OP, &part, gate.dtype, (groups, chunks, cols), sum)?;
    Ok((d_full, d_gate))
}

/// The kernel of [`gated_product_grads`] for the dtypes of g, the full factor and the
/// gate: all one, or an f32 g beside half factors (either, or both of one half dtype);
/// `None` for other mixes.
fn gated_grads_kernel([g, full, gate]: [DType; 3]) -> Option<String> {
    let half = |d: DType| matches!(d, DType::BF16 | DType::F16);
    let types = match (g, full, gate) {
        (t, f, q) if t == f && t == q => suffix(t).to_string(),
        (DType::F32, f, q) if (half(f) || half(q)) && (f == q || f == g || q == g) => {
            format!("f32_{}_{}", suffix(f), suffix(q))
        }
        _ => return None,
    };
    Some(format!("gated_product_grads_{types}"))
}

/// Op `code` over contiguous rows of `d` elements (a contiguous input reduced over its
/// trailing dims): vector loads, a warp or a block per row (`reduce_last_*`).
fn reduce_last(
    x: &CudaStorage,
    l: &Layout,
    (rows, d): (usize, usize),
    code: i32,
) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(x.dev(), rows, x.dtype)?;
    let (kind, cfg) = match d >= LONG_ROW {
        true => ("reduce_last_block", per_row(rows, d)),
        false => ("reduce_last_warp", per_warp(rows)),
    };
    let name = format!("{kind}_{}", suffix(x.dtype));
    let a = args![x.ptr_at(l.offset()), out.ptr(), rows, d, code];
    launch(x.dev(), "reduce", ("reduce", &name), cfg, a)?;
    Ok(out)
}

/// Op `code` over the middle dim of a contiguous `[outer, rows, cols]` view (the reduced
/// dims are one block, not trailing: bias gradients, broadcast gradients) of x, or of
/// x·y elementwise when `y` (a contiguous view of the same shape) is given: column
/// partials over stretches of rows, then one combine per output (`reduce_middle_*`).
fn reduce_middle(
    (x, l): (&CudaStorage, &Layout),
    y: Option<(&CudaStorage, &Layout)>,
    (outer, rows, cols): (usize, usize, usize),
    code: i32,
) -> Result<CudaStorage> {
    let (chunks, per, cfg) = middle_launch(outer, rows, cols);
    let part = CudaStorage::alloc(x.dev(), outer * chunks * cols, acc_dtype(x.dtype))?;
    let name = format!("reduce_middle_{}", suffix(x.dtype));
    let a = args![
        x.ptr_at(l.offset()),
        y.map_or(0, |(y, yl)| y.ptr_at(yl.offset())),
        part.ptr(),
        outer,
        rows,
        cols,
        per,
        code
    ];
    launch(x.dev(), "reduce", ("reduce", &name), cfg, a)?;
    finish_middle("reduce", &part, x.dtype, (outer, chunks, cols), code)
}

/// `[outer, cols]` in `dtype` from the compute-type partials `[outer, chunks, cols]` of
/// a middle-dim reduction, each output combining its column's partials in order
/// (`reduce_middle_finish_*`), so the result is identical run to run.
fn finish_middle(
    op: &'static str,
    part: &CudaStorage,
    dtype: DType,
    (outer, chunks, cols): (usize, usize, usize),
    code: i32,
) -> Result<CudaStorage> {
    let out = CudaStorage::alloc(part.dev(), outer * cols, dtype)?;
    let name = format!("reduce_middle_finish_{}", suffix(dtype));
    let a = args![part.ptr(), out.ptr(), outer, chunks, cols, code];
    launch(
        part.dev(),
        op,
        ("reduce", &name),
        per_element(outer * cols),
        a,
    )?;
    Ok(out)
}

/// How a middle-dim reduction splits its `rows` (≥ 1) among `blocks` blocks of columns:
/// (stretches, rows per stretch): enough stretches to fill the GPU, no more than one
/// per `MIN_STRETCH` rows (so a stretch has at least half that many), within CUDA's
/// grid limit, and none empty.
fn row_stretches(rows: usize, blocks: usize) -> (usize, usize) {
    let wanted = FILL_BLOCKS.div_ceil(blocks);
    let chunks = wanted.clamp(1, rows.div_ceil(MIN_STRETCH).clamp(1, MAX_GRID_YZ));
    let per = rows.div_ceil(chunks);
    (rows.div_ceil(per), per)
}

/// The launch of a middle-dim kernel over `outer` groups of `rows` rows of `cols`
/// columns (`reduce_middle_*` and the kernels built like it): blocks (32, 8) over 32
/// columns and [`row_stretches`] of the rows, the groups along z (grid-stride past
/// CUDA's limit). Returns (stretches, rows per stretch, the launch).
fn middle_launch(outer: usize, rows: usize, cols: usize) -> (usize, usize, LaunchConfig) {
    let (column_blocks, outer_blocks) = (cols.div_ceil(32), outer.min(MAX_GRID_YZ));
    let (chunks, per) = row_stretches(rows, column_blocks * outer_blocks);
    let cfg = LaunchConfig {
        grid_dim: (column_blocks as u32, chunks as u32, outer_blocks as u32),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    (chunks, per, cfg)
}

/// (rows, row length) of a view split at its last dim.
fn rows_of(l: &Layout) -> (usize, usize) {
    let d = l.shape().last().copied().unwrap_or(1);
    (l.elem_count().checked_div(d).unwrap_or(0), d)
}

pub(crate) fn softmax(x: &CudaStorage, l: &Layout, log: bool) -> Result<CudaStorage> {
    float_only("softmax", x.dtype)?;
    let (rows, d) = rows_of(l);
    let out = CudaStorage::alloc(x.dev(), l.elem_count(), x.dtype)?;
    if rows * d > 0 {
        let xd = x.dense(l)?;
        let name = format!("softmax_{}", suffix(x.dtype));
        let a = args![xd.ptr, out.ptr(), rows, d, log];
        launch(x.dev(), "softmax", ("softmax", &name), per_row(rows, d), a)?;
    }
    Ok(out)
}

pub(crate) fn softmax_backward(
    y: &CudaStorage,
    l: &Layout,
    g: &CudaStorage,
    gl: &Layout,
    log: bool,
) -> Result<CudaStorage> {
    float_only("softmax_backward", y.dtype)?;
    let (rows, d) = rows_of(l);
    let out = CudaStorage::alloc(y.dev(), l.elem_count(), y.dtype)?;
    if rows * d > 0 {
        let (yd, gd) = (y.dense(l)?, g.dense(gl)?);
        let name = format!("softmax_backward_{}", suffix(y.dtype));
        let a = args![yd.ptr, gd.ptr, out.ptr(), rows, d, log];
        let cfg = per_row(rows, d);
        launch(y.dev(), "softmax_backward", ("softmax", &name), cfg, a)?;
    }
    Ok(out)
}

/// Elements per lane of the warp-per-row norm kernels' versions (`NORM` in
/// `kernels/norm.cu`): rows of up to 32 times as many.
const WARP_LANE_ELEMS: [usize; 6] = [4, 8, 12, 16, 24, 32];

/// The norm kernel (`{kernel}_warp{N}` holding N elements per lane, the smallest that
/// takes a row, for rows of up to 1024; else the block per row `{kernel}`) and its
/// launch shape.
fn norm_kernel(kernel: &str, rows: usize, d: usize) -> (String, LaunchConfig) {
    match WARP_LANE_ELEMS.iter().find(|&&n| d <= 32 * n) {
        Some(n) => (format!("{kernel}_warp{n}"), per_warp(rows)),
        None => (kernel.to_string(), per_row(rows, d)),
    }
}

/// The norm kernels' name suffix for x of dtype `x` beside an output or output
/// gradient of dtype `other`: x's own where they agree, the f32 versions for autocast
/// (`f32{sep}bf16`, `f32{sep}f16`: `_to_` for the output, `_g` for its gradient) where x
/// is f32 and `other` a half type; `None` for other pairs, which have no kernel.
fn norm_suffix(x: DType, other: DType, sep: &str) -> Option<String> {
    match (x, other) {
        _ if x == other => Some(suffix(x).to_string()),
        (DType::F32, DType::BF16 | DType::F16) => Some(format!("f32{sep}{}", suffix(other))),
        _ => None,
    }
}

/// The norm of x's rows (with the weight and bias, one row or one per group of rows)
/// written in dtype `out` (x's, or bf16 or f16 beside an f32 x), and the row means and
/// reciprocal std devs.
pub(crate) fn norm(
    x: &CudaStorage,
    l: &Layout,
    weight: Option<(&CudaStorage, &Layout)>,
    bias: Option<(&CudaStorage, &Layout)>,
    spec: NormSpec,
    out: DType,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    float_only("norm", x.dtype)?;
    let name_suffix =
        norm_suffix(x.dtype, out, "_to_").ok_or_else(|| Error::dtypes("norm", &[x.dtype, out]))?;
    let (rows, d) = rows_of(l);
    let (dev, st) = (x.dev(), acc_dtype(x.dtype));
    let y = CudaStorage::alloc(dev, l.elem_count(), out)?;
    let (mean, rstd) = (
        CudaStorage::alloc(dev, rows, st)?,
        CudaStorage::alloc(dev, rows, st)?,
    );
    if rows * d > 0 {
        let xd = x.dense(l)?;
        let (w, b) = (dense_opt(weight)?, dense_opt(bias)?);
        let ptr = |p: &Option<super::Dense>| p.as_ref().map_or(0, |p| p.ptr);
        let len = |p: Option<(&CudaStorage, &Layout)>| p.map(|(_, l)| l.elem_count());
        let (wg, bg) = (
            norm_rows_per_group(len(weight), rows, d),
            norm_rows_per_group(len(bias), rows, d),
        );
        let (kernel, cfg) = norm_kernel("norm", rows, d);
        let name = format!("{kernel}_{name_suffix}");
        let a = args![
            xd.ptr,
            ptr(&w),
            ptr(&b),
            y.ptr(),
            mean.ptr(),
            rstd.ptr(),
            rows,
            d,
            wg,
            bg,
            spec.eps,
            spec.rms
        ];
        launch(dev, "norm", ("norm", &name), cfg, a)?;
    }
    Ok((y, mean, rstd))
}

fn dense_opt(p: Option<(&CudaStorage, &Layout)>) -> Result<Option<super::Dense>> {
    p.map(|(s, l)| s.dense(l)).transpose()
}

/// dx, and dweight and dbias where the forward had them, from x, the weight, the
/// forward's row statistics and the output gradient `g`; dx plus `residual` (a gradient
/// of x gathered elsewhere) where one is given, added by the same kernel as it writes dx.
/// The gradients have x's dtype; `g` has it too, or is bf16 or f16 beside an f32 x (a
/// norm that wrote its output for products in that dtype).
pub(crate) fn norm_backward(
    x: &CudaStorage,
    l: &Layout,
    weight: Option<(&CudaStorage, &Layout)>,
    bias_len: Option<usize>,
    (mean, rstd): (&CudaStorage, &CudaStorage),
    ((g, gl), residual): ((&CudaStorage, &Layout), Option<(&CudaStorage, &Layout)>),
    spec: NormSpec,
) -> Result<(CudaStorage, Option<CudaStorage>, Option<CudaStorage>)> {
    float_only("norm_backward", x.dtype)?;
    let (rows, d) = rows_of(l);
    let dev = x.dev();
    let dx = CudaStorage::alloc(dev, l.elem_count(), x.dtype)?;
    let w_len = weight.map(|(_, wl)| wl.elem_count());
    let (wg, bg) = (
        norm_rows_per_group(w_len, rows, d),
        norm_rows_per_group(bias_len, rows, d),
    );
    if rows * d == 0 {
        let zeros = |n: Option<usize>| {
            n.map(|n| CudaStorage::zeros_on(dev, n, x.dtype))
                .transpose()
        };
        return Ok((dx, zeros(w_len)?, zeros(bias_len)?));
    }
    let name_suffix = norm_suffix(x.dtype, g.dtype, "_g")
        .ok_or_else(|| Error::dtypes("norm_backward", &[x.dtype, g.dtype]))?;
    let (xd, gd, w) = (x.dense(l)?, g.dense(gl)?, dense_opt(weight)?);
    let res = dense_opt(residual)?;
    let ptr = |p: &Option<super::Dense>| p.as_ref().map_or(0, |p| p.ptr);
    let (kernel, cfg) = norm_kernel("norm_backward", rows, d);
    let name = format!("{kernel}_{name_suffix}");
    let a = args![
        xd.ptr,
        ptr(&w),
        mean.ptr(),
        rstd.ptr(),
        gd.ptr,
        ptr(&res),
        dx.ptr(),
        rows,
        d,
        wg,
        spec.rms
    ];
    launch(dev, "norm_backward", ("norm", &name), cfg, a)?;
    let sums = NormSums {
        dev,
        x: &xd,
        stats: (mean, rstd),
        g: &gd,
        dtype: x.dtype,
        name_suffix: &name_suffix,
        rows,
        d,
    };
    // One pass for both gradients when they share their groups, else one each.
    let (dw, db) = match (w_len, bias_len) {
        (Some(_), Some(_)) if wg != bg => (
            sums.param_grads(wg, true, false)?.0,
            sums.param_grads(bg, false, true)?.1,
        ),
        (w, b) => sums.param_grads(if w.is_some() { wg } else { bg }, w.is_some(), b.is_some())?,
    };
    Ok((dx, dw, db))
}

/// What the norm's parameter gradients are summed from: x, its row statistics and the
/// output gradient g (contiguous `[rows, d]`).
struct NormSums<'a> {
    dev: &'a Arc<CudaDevice>,
    x: &'a super::Dense,
    stats: (&'a CudaStorage, &'a CudaStorage),
    g: &'a super::Dense,
    dtype: DType,
    /// The kernels' suffix for the dtypes of x and g.
    name_suffix: &'a str,
    rows: usize,
    d: usize,
}

impl NormSums<'_> {
    /// dw = Σ g·x̂ and db = Σ g (those asked for) over each group of `group_rows`
    /// consecutive rows, `[rows / group_rows, d]` in the input's dtype: column partials
    /// over stretches of a group's rows (`norm_param_grads_*`), then their sums in
    /// order, as a middle-dim reduction does: identical run to run.
    fn param_grads(
        &self,
        group_rows: usize,
        want_w: bool,
        want_b: bool,
    ) -> Result<(Option<CudaStorage>, Option<CudaStorage>)> {
        if !want_w && !want_b {
            return Ok((None, None));
        }
        let (dev, d) = (self.dev, self.d);
        let groups = self.rows / group_rows;
        let (chunks, per, cfg) = middle_launch(groups, group_rows, d);
        let partials = |wanted: bool| {
            wanted
                .then(|| CudaStorage::alloc(dev, groups * chunks * d, acc_dtype(self.dtype)))
                .transpose()
        };
        let (pw, pb) = (partials(want_w)?, partials(want_b)?);
        let ptr = |p: &Option<CudaStorage>| p.as_ref().map_or(0, |p| p.ptr());
        let name = format!("norm_param_grads_{}", self.name_suffix);
        let (mean, rstd) = self.stats;
        let a = args![
            self.x.ptr,
            mean.ptr(),
            rstd.ptr(),
            self.g.ptr,
            ptr(&pw),
            ptr(&pb),
            groups,
            group_rows,
            d,
            per
        ];
        launch(dev, "norm_backward", ("norm", &name), cfg, a)?;
        let sum = |p: Option<CudaStorage>| {
            p.map(|p| {
                let code = ReduceOp::Sum.kernel_code();
                finish_middle("norm_backward", &p, self.dtype, (groups, chunks, d), code)
            })
            .transpose()
        };
        Ok((sum(pw)?, sum(pb)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::elementwise::addcmul_half_kernel;
    use crate::cuda::kernels;

    /// The names the launchers build for every dtype mix they take (the norms' for
    /// warp and block rows, the gated residual's) are entries of the compiled kernel
    /// files: a wrong one would otherwise only fail on a GPU. Needs NVRTC, as
    /// `kernels_compile` does.
    #[test]
    fn launchers_name_kernels_that_exist() {
        if !kernels::nvrtc_present() {
            eprintln!("skipping launchers_name_kernels_that_exist: NVRTC not found");
            return;
        }
        let ptx = |file| kernels::compile(file, "sm_90").expect("compiles").ptx;
        let modules = [ptx("norm"), ptx("reduce"), ptx("elementwise")];
        let exists = |name: &str| {
            let entry = format!(".entry {name}(");
            assert!(
                modules.iter().any(|m| m.contains(&entry)),
                "no kernel {name}"
            );
        };
        use DType::{BF16, F16, F32, F64};
        let same = [F32, F64, BF16, F16].map(|t| (t, t));
        for (x, other) in same.into_iter().chain([(F32, BF16), (F32, F16)]) {
            for d in [100, 384, 1000, 1500] {
                let fwd = norm_suffix(x, other, "_to_").expect("a forward kernel");
                let bwd = norm_suffix(x, other, "_g").expect("a backward kernel");
                exists(&format!("{}_{fwd}", norm_kernel("norm", 4, d).0));
                exists(&format!("{}_{bwd}", norm_kernel("norm_backward", 4, d).0));
                exists(&format!("norm_param_grads_{bwd}"));
            }
        }
        for half in [BF16, F16] {
            for mix in [[F32, half, F32], [F32, half, half], [F32, F32, half]] {
                exists(&gated_grads_kernel(mix).expect("a mixed kernel"));
            }
            for (a, quads) in [(F32, true), (F32, false), (half, true), (half, false)] {
                exists(&addcmul_half_kernel(a, half, quads));
            }
        }
        for t in [F32, F64, BF16, F16] {
            exists(&gated_grads_kernel([t; 3]).expect("a kernel"));
        }
        assert_eq!(gated_grads_kernel([F32, BF16, F16]), None);
        assert_eq!(norm_suffix(F64, BF16, "_to_"), None);
    }

    #[test]
    fn row_stretches_cover_every_row_once() {
        for rows in [1, 7, 63, 64, 65, 5000, 65_536, 1 << 20, 1 << 26] {
            for blocks in [1, 2, 12, 72, 3072, 100_000] {
                let (chunks, per) = row_stretches(rows, blocks);
                assert!(chunks * per >= rows && (chunks - 1) * per < rows);
                assert!((1..=MAX_GRID_YZ).contains(&chunks), "{rows} {blocks}");
                assert!(chunks == 1 || per >= MIN_STRETCH / 2, "{rows} {blocks}");
            }
        }
        // A bias gradient of 65,536 rows and 384 columns: a few waves of blocks.
        assert_eq!(row_stretches(65_536, 12), (171, 384));
    }
}
