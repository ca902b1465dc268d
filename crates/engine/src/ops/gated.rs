//! Gated residuals around a layer, `stream + gate·layer(x)`: the residual branches of
//! an adaLN-Zero (DiT) block, whose gate is one row per sample (`[B, 1, D]` against
//! tokens `[B, T, D]`).
//!
//! Run as ops, the layer writes its output and `addcmul` reads it back beside the
//! stream: two passes over a `[tokens, D]` tensor that only memory bandwidth limits.
//! Where no graph is recorded and no tangent carried (sampling, evaluation), on the
//! CPU in f32 or f64, the add runs instead in the epilogue of the layer's last product
//! (`cpu/epilogue.rs`), on each block of the output while it is in cache. Elsewhere,
//! and so for every gradient and tangent, these functions are that composition
//! (`addcmul(stream, gate, layer(x))`, bit for bit the same values): the training
//! step's backward needs the layer's output for the gate's gradient, and its fused
//! backward is `addcmul`'s.

use super::mlp::{gelu_mlp, gelu_mlp_rows, LinearParams};
use super::per_group;
use crate::autocast::autocast_dtype;
use crate::backend::BackendStorage;
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
            rows_per_group: rows / (gate.elem_count() / n),
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
        let shape = [&self.shape()[..self.rank().saturating_sub(1)], &[n]].concat();
        let Some(ops) = fits
            .then(|| residual.epilogue_operands(&layer, &shape))
            .flatten()
        else {
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
    let composed = || residual.around(&gelu_mlp(x, fc1, fc2)?);
    let (w1, b1) = fc1;
    let (w2, b2) = fc2;
    let mut layer = vec![x, w1, w2];
    layer.extend(b1.into_iter().chain(b2));
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
    let shape = [&x.shape()[..x.rank().saturating_sub(1)], &[n]].concat();
    let Some(ops) = fits
        .then(|| residual.epilogue_operands(&layer, &shape))
        .flatten()
    else {
        return composed();
    };
    let rows = x.elem_count() / k.max(1);
    let flat = x.reshape(&[rows, k])?;
    let gated = (residual.stream, &ops.gate, ops.rows_per_group);
    match gelu_mlp_rows(&flat, fc1, fc2, false, Some(gated))? {
        Some((out, _)) => Ok(Tensor::from_storage(out, &shape)),
        None => composed(),
    }
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
