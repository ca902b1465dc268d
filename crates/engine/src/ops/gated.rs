//! Gated residuals around a layer, `stream + gate·layer(x)`: the residual branches of
//! an adaLN-Zero (DiT) block, whose gate is one row per sample (`[B, 1, D]` against
//! tokens `[B, T, D]`).
//!
//! Run as ops, the layer writes its output and `addcmul` reads it back beside the
//! stream: two passes over a `[tokens, D]` tensor that only memory bandwidth limits.
//! Where no graph is recorded and no tangent carried (sampling, evaluation), on the
//! CPU in f32 or f64, the add runs instead in the epilogue of the layer's last product
//! (`cpu/epilogue.rs`), on each block of the output while it is in cache;
//! [`prenorm_gelu_mlp_gated`] also normalises x's rows block by block before the
//! first product, so that a pre-norm feed-forward branch goes from x to its sum in
//! row blocks. Elsewhere, and so for every gradient and tangent, these functions are
//! the composition (`addcmul(stream, gate, layer(x))`): a training step's backward
//! needs the layer's output for the gate's gradient (writing both from the product
//! was slower, docs/benchmarks.md), and `addcmul`'s backward is fused already. The
//! fused paths add in `addcmul`'s order; their products may sum in another order than
//! the plain layer's, a difference of f32 rounding.

use super::mlp::{gelu_mlp, gelu_mlp_rows, LinearParams};
use super::per_group;
use crate::autocast::autocast_dtype;
use crate::backend::{norm_rows_per_group, BackendStorage, NormSpec};
use crate::cpu::epilogue::{Epilogue, GatedRows};
use crate::cpu::{dispatch_float, matmul, ComputeType, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::CudaStorage;
use crate::error::Result;
use crate::fused::{BackendInputs, FusedOp, View};
use crate::storage::Storage;
use crate::{autograd, forward_ad, DType, Device, Tensor};

/// The residual around a layer: the gated result is `stream + gate·layer(x)`.
#[derive(Debug, Clone, Copy)]
pub struct GatedResidual<'a> {
    /// The residual stream, of the layer's output shape.
    pub stream: &'a Tensor,
    /// The gate, broadcast to the output's shape (as `addcmul` broadcasts).
    pub gate: &'a Tensor,
}

impl GatedResidual<'_> {
    /// `stream + gate·y` by `addcmul`.
    pub fn around(&self, y: &Tensor) -> Result<Tensor> {
        self.stream.addcmul(self.gate, y)
    }

    /// For a layer from x to `n` features (whose other inputs are `layer`, and whose
    /// shapes `fits` says fit), the epilogue's operands and the output's shape, when
    /// the add can run in the epilogue (see [`GatedResidual::epilogue_operands`]).
    fn plan(
        &self,
        fits: bool,
        layer: &[&Tensor],
        x: &Tensor,
        n: usize,
    ) -> Option<(EpilogueOperands, Vec<usize>)> {
        let shape = [&x.shape()[..x.rank().saturating_sub(1)], &[n]].concat();
        let ops = fits
            .then(|| self.epilogue_operands(layer, &shape))
            .flatten()?;
        Some((ops, shape))
    }

    /// The operands for a product epilogue, when the add can run there for a layer
    /// of output shape `shape` whose other inputs are `layer`: nothing recorded or
    /// carrying a tangent, no autocast, all on the CPU in f32 or f64, the stream
    /// contiguous of shape `shape` and the gate one row per group of the output's
    /// rows (see [`per_group`]). `None` otherwise.
    fn epilogue_operands(&self, layer: &[&Tensor], shape: &[usize]) -> Option<EpilogueOperands> {
        let mut all = layer.to_vec();
        all.extend([self.stream, self.gate]);
        let dtype = self.stream.dtype();
        let plain = !autograd::records(&all)
            && !forward_ad::wants_tangent(&all)
            && autocast_dtype().is_none()
            && matches!(dtype, DType::F32 | DType::F64)
            && all
                .iter()
                .all(|t| t.device() == Device::Cpu && t.dtype() == dtype);
        let fits = self.stream.shape() == shape
            && self.stream.is_contiguous()
            && shape.len() >= 2
            && shape.iter().all(|&d| d > 0)
            && per_group(shape, self.gate.shape());
        if !(plain && fits) {
            return None;
        }
        let n = shape[shape.len() - 1];
        let rows = self.stream.elem_count() / n;
        let gate = self.gate.contiguous().ok()?;
        Some(EpilogueOperands {
            rows_per_group: norm_rows_per_group(Some(gate.elem_count()), rows, n),
            gate,
        })
    }
}

/// The gate made contiguous `[groups, n]`, and how many output rows share a row of it.
struct EpilogueOperands {
    gate: Tensor,
    rows_per_group: usize,
}

impl Tensor {
    /// `residual.stream + residual.gate · self.linear(weight, bias)`, with the add in
    /// the product's epilogue where the module's documentation says; otherwise exactly
    /// that composition.
    pub fn linear_gated(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        residual: GatedResidual,
    ) -> Result<Tensor> {
        let composed = || residual.around(&self.linear(weight, bias)?);
        let mut layer = vec![self, weight];
        layer.extend(bias);
        let k = self.shape().last().copied().unwrap_or(0);
        let n = weight.shape().first().copied().unwrap_or(0);
        let fits = self.rank() >= 2
            && self.is_contiguous()
            && weight.rank() == 2
            && weight.shape()[1] == k
            && bias.is_none_or(|b| b.shape() == [n]);
        let Some((ops, shape)) = residual.plan(fits, &layer, self, n) else {
            return composed();
        };
        let rows = self.elem_count() / k.max(1);
        let x = self.reshape(&[rows, k])?;
        let lw = weight.layout().permute(&[1, 0]);
        let lb = bias
            .map(|b| b.layout().broadcast_to(GatedLinear::NAME, &[rows, n]))
            .transpose()?;
        let sb = bias.map(|b| b.storage());
        let out = Storage::fused(
            &GatedLinear {
                rows_per_group: ops.rows_per_group,
            },
            (
                (&x.storage(), x.layout()),
                (&weight.storage(), &lw),
                sb.as_deref().zip(lb.as_ref()),
                (&residual.stream.storage(), residual.stream.layout()),
                (&ops.gate.storage(), ops.gate.layout()),
            ),
        )?;
        match out {
            Some(out) => Ok(Tensor::from_storage(out, &shape)),
            None => composed(),
        }
    }
}

/// `residual.stream + residual.gate · gelu_mlp(x, fc1, fc2)`, with the add in the
/// second product's epilogue where the module's documentation says (and the block
/// runs in row blocks, `cpu/mlp_rows.rs`); otherwise exactly that composition.
pub fn gelu_mlp_gated(
    x: &Tensor,
    fc1: LinearParams,
    fc2: LinearParams,
    residual: GatedResidual,
) -> Result<Tensor> {
    match gated_rows(x, (fc1, fc2), residual, None)? {
        Some(out) => Ok(out),
        None => residual.around(&gelu_mlp(x, fc1, fc2)?),
    }
}

/// A layer norm over the last dim run before a layer: `x.layer_norm(weight, bias,
/// eps)`, the parameters `[d]` or one row per group of x's rows.
#[derive(Debug, Clone, Copy)]
pub struct PreNorm<'a> {
    /// The norm's weight (a DiT's `1 + scale`), if any.
    pub weight: Option<&'a Tensor>,
    /// The norm's bias (a DiT's `shift`), if any.
    pub bias: Option<&'a Tensor>,
    /// Added to the variance.
    pub eps: f64,
}

impl PreNorm<'_> {
    /// `x.layer_norm(weight, bias, eps)`, for the layer whose products follow: inside
    /// an autocast scope the output of an f32 (or half) x is written in the scope's low
    /// dtype, which those products would cast it to (the same values and gradients,
    /// without a cast after the norm and another before its backward). f64 stays f64,
    /// as autocast never lowers it.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let spec = NormSpec {
            eps: self.eps,
            rms: false,
        };
        let out = autocast_dtype().filter(|_| x.dtype() != DType::F64);
        x.norm_op("layer_norm", (self.weight, self.bias), spec, out)
    }

    /// The parameters for the row blocks over x (`[rows, k]` once flattened): each
    /// contiguous (ones or zeros `[k]` where absent) with x's rows per parameter row;
    /// `None` when a parameter does not fit x (see [`per_group`]).
    fn row_operands(&self, x: &Tensor) -> Option<((Tensor, usize), (Tensor, usize))> {
        let k = *x.shape().last()?;
        let rows = x.elem_count() / k.max(1);
        let param = |p: Option<&Tensor>, fill: f64| -> Option<(Tensor, usize)> {
            let p = match p {
                Some(p) if per_group(x.shape(), p.shape()) => p.detach().contiguous().ok()?,
                Some(_) => return None,
                None => Tensor::full(fill, &[k], x.dtype(), x.device()).ok()?,
            };
            let per_row = norm_rows_per_group(Some(p.elem_count()), rows, k);
            Some((p, per_row))
        };
        Some((param(self.weight, 1.0)?, param(self.bias, 0.0)?))
    }
}

/// `x + gate · gelu_mlp(norm(x), fc1, fc2)`, a pre-norm block's gated feed-forward
/// branch (a DiT's `x + g·mlp(LN(x)·(1 + scale) + shift)`). Without a graph, on the
/// CPU in f32 with AVX-512, the whole branch runs in blocks of rows: each block of x
/// normalised into the thread's buffer, through both products, and added back to x
/// in the last product's epilogue, so the norm's output never goes to memory;
/// otherwise exactly `gelu_mlp_gated(&norm.apply(x)?, fc1, fc2, GatedResidual {
/// stream: x, gate })`.
pub fn prenorm_gelu_mlp_gated(
    x: &Tensor,
    norm: PreNorm,
    fc1: LinearParams,
    fc2: LinearParams,
    gate: &Tensor,
) -> Result<Tensor> {
    let residual = GatedResidual { stream: x, gate };
    let mut inputs = vec![x, gate, fc1.0, fc2.0];
    inputs.extend([fc1.1, fc2.1, norm.weight, norm.bias].into_iter().flatten());
    // With a graph (training) the composition, without building the rows' operands.
    let plain = !autograd::records(&inputs) && x.dtype() == DType::F32;
    let fused = match plain.then(|| norm.row_operands(x)).flatten() {
        Some(((w, per_w), (b, per_b))) => {
            let spec = NormSpec {
                eps: norm.eps,
                rms: false,
            };
            let params: Vec<&Tensor> = norm.weight.into_iter().chain(norm.bias).collect();
            gated_rows(
                x,
                (fc1, fc2),
                residual,
                Some(((&w, per_w), (&b, per_b), spec, &params)),
            )?
        }
        _ => None,
    };
    match fused {
        Some(out) => Ok(out),
        None => gelu_mlp_gated(&norm.apply(x)?, fc1, fc2, residual),
    }
}

/// A first norm for [`gated_rows`]: the row blocks' operands, and the norm's own
/// parameter tensors (for the checks of graph, device and dtype).
type FirstNorm<'a> = (
    (&'a Tensor, usize),
    (&'a Tensor, usize),
    NormSpec,
    &'a [&'a Tensor],
);

/// The feed-forward block over x (after `norm`, where given) with the gated residual
/// added in its last product's epilogue, in row blocks, where the module's
/// documentation says it runs so; `None` where it does not.
fn gated_rows(
    x: &Tensor,
    ((w1, b1), (w2, b2)): (LinearParams, LinearParams),
    residual: GatedResidual,
    norm: Option<FirstNorm>,
) -> Result<Option<Tensor>> {
    let mut layer = vec![x, w1, w2];
    layer.extend(b1.into_iter().chain(b2));
    layer.extend(norm.map_or(&[][..], |n| n.3));
    let k = x.shape().last().copied().unwrap_or(0);
    let hidden = w1.shape().first().copied().unwrap_or(0);
    let n = w2.shape().first().copied().unwrap_or(0);
    let fits = x.rank() >= 2
        && x.is_contiguous()
        && w1.rank() == 2
        && w2.rank() == 2
        && w1.shape()[1] == k
        && w2.shape()[1] == hidden
        && b1.is_none_or(|b| b.shape() == [hidden])
        && b2.is_none_or(|b| b.shape() == [n]);
    let Some((ops, shape)) = residual.plan(fits, &layer, x, n) else {
        return Ok(None);
    };
    let rows = x.elem_count() / k.max(1);
    let flat = x.reshape(&[rows, k])?;
    let gated = (residual.stream, &ops.gate, ops.rows_per_group);
    let norm = norm.map(|(w, b, spec, _)| (w, b, spec));
    let out = gelu_mlp_rows(&flat, (w1, b1), (w2, b2), false, (Some(gated), norm))?;
    Ok(out.map(|(out, _)| Tensor::from_storage(out, &shape)))
}

/// The product of [`Tensor::linear_gated`] with the add in its epilogue: x `[rows, k]`,
/// the weight as a `[k, n]` view, the bias broadcast to `[rows, n]`, the stream
/// `[rows, n]` contiguous and the gate `[groups, n]` contiguous.
struct GatedLinear {
    rows_per_group: usize,
}

impl<'a> FusedOp<'a> for GatedLinear {
    const NAME: &'static str = "linear_gated";
    type Inputs = (
        View<'a, Storage>,
        View<'a, Storage>,
        Option<View<'a, Storage>>,
        View<'a, Storage>,
        View<'a, Storage>,
    );
    /// The gated output, or `None` where the backend has no such epilogue.
    type Output = Option<Storage>;

    fn cpu(
        &self,
        (x, w, bias, stream, gate): BackendInputs<'a, Self, CpuStorage>,
    ) -> Result<Self::Output> {
        let dt = x.0.dtype();
        dispatch_float!(Self::NAME, x.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (xv, wv) = (view(x.0)?, view(w.0)?);
            let (sv, gv) = (view(stream.0)?, view(gate.0)?);
            let bv = bias.map(|b| view(b.0)).transpose()?;
            let bias = bv.as_deref().zip(bias.map(|b| b.1));
            let n = w.1.shape()[1];
            let rows = GatedRows {
                stream: &sv[stream.1.offset()..],
                gate: &gv[gate.1.offset()..],
                rows_per_group: self.rows_per_group,
                n,
                first_row: 0,
            };
            let epilogue = Epilogue::GatedResidual(rows);
            let out = matmul::matmul_then((&xv, x.1), (&wv, w.1), bias, epilogue);
            Ok(Some(F::store(out, dt).into()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, _: BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        Ok(None)
    }
}
