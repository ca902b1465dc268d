//! `x + a·b` as one fused elementwise op (one pass instead of a product and a sum):
//! the modulation and gated residuals of adaLN transformer blocks.

use super::{check_float, check_same, per_group};
use crate::autocast::{autocast_dtype, promoted};
use crate::backend::BackendStorage;
use crate::cpu::{dispatch_float, elementwise, strided, ComputeType, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{self, CudaStorage};
use crate::error::Result;
use crate::fused::{AnyFloat, BackendInputs, FusedOp, View};
use crate::layout::broadcast_shapes;
use crate::storage::Storage;
use crate::{DType, Tensor};

impl Tensor {
    /// `self + a·b`, the three broadcast together.
    ///
    /// Inside an autocast scope, an f32 `self` beside bf16 or f16 factors (a gated
    /// residual around a half-precision product, its gate f32 or half too) reads them in
    /// their own dtype, where the widest-dtype rule would first cast them to f32: the
    /// same values (the casts are exact), an f32 result, and each factor's gradient in
    /// its dtype.
    pub fn addcmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "addcmul";
        let half_factors = autocast_dtype().is_some() && reads_half_factors(self, a, b);
        if !half_factors {
            if let Some(x) = promoted(&[self, a, b])? {
                return x[0].addcmul(&x[1], &x[2]);
            }
            check_float(OP, self)?;
            check_same(OP, &[self, a, b])?;
        }
        let shape = broadcast_shapes(OP, self.shape(), a.shape())?;
        let shape = broadcast_shapes(OP, &shape, b.shape())?;
        let l = |t: &Tensor| t.layout().broadcast_to(OP, &shape);
        let (lx, la, lb) = (l(self)?, l(a)?, l(b)?);
        let s = Storage::fused(
            &Addcmul,
            (
                (&self.storage(), &lx),
                AnyFloat((&a.storage(), &la)),
                AnyFloat((&b.storage(), &lb)),
            ),
        )?;
        Tensor::from_op(
            OP,
            s,
            &shape,
            &[self, a, b],
            |v, _, g| {
                let (x, a, b) = (&v[0], &v[1], &v[2]);
                let gx = x.requires_grad().then(|| g.sum_to_shape(x.shape()));
                if let Some((ga, gb)) = gated_product_grads(g, a, b)? {
                    return Ok(vec![gx.transpose()?, Some(ga), Some(gb)]);
                }
                // A half factor is read in g's dtype, and its gradient returned in its own
                // (the backward runs outside autocast, where mixed dtypes are refused).
                let grad = |other: &Tensor, of: &Tensor| {
                    g.mul_sum_to_shape(&other.to_dtype(g.dtype())?, of.shape())?
                        .to_dtype(of.dtype())
                };
                let ga = a.requires_grad().then(|| grad(b, a));
                let gb = b.requires_grad().then(|| grad(a, b));
                Ok(vec![gx.transpose()?, ga.transpose()?, gb.transpose()?])
            },
            // tx + ta·b + a·tb, each product one more fused pass. Tangent rules run
            // outside autocast: half factors (and their tangents) are widened to the
            // output's dtype, exactly, as the widest-dtype rule's casts would have.
            |d, _| {
                let wide = |t: &Tensor| t.to_dtype(d.primal(0).dtype());
                let (a, b) = (wide(d.primal(1))?, wide(d.primal(2))?);
                let mut t = d.tangent_or_zeros(0)?;
                if let Some(ta) = d.tangent(1) {
                    t = t.addcmul(&wide(ta)?, &b)?;
                }
                if let Some(tb) = d.tangent(2) {
                    t = t.addcmul(&a, &wide(tb)?)?;
                }
                Ok(t)
            },
        )
    }
}

/// Whether `x + a·b` is an f32 x beside one bf16 or f16 factor and an f32 one, or two of
/// the same half dtype: the mixed dtypes the addcmul kernels read as they are.
fn reads_half_factors(x: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    let half = |t: &Tensor| matches!(t.dtype(), DType::BF16 | DType::F16);
    let f32 = |t: &Tensor| t.dtype() == DType::F32;
    let factors = (half(a) && (f32(b) || b.dtype() == a.dtype())) || (f32(a) && half(b));
    f32(x) && factors
}

/// The gradients of `a` and `b` in one pass over the output gradient `g`, when both
/// are wanted and one is a gate: `[B, 1, D]` against the other's `[B, T, D]` (a
/// per-group factor, see [`per_group`], of at least two groups a thread, so that tasks
/// can own whole groups); `None` otherwise, and on backends without the fused kernel.
/// The gated residual `x + gate·y` of adaLN blocks is the case: its gate's gradient
/// (a sum over tokens) and y's (a product) each read all of `g` otherwise.
fn gated_product_grads(g: &Tensor, a: &Tensor, b: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    if !(a.requires_grad() && b.requires_grad()) {
        return Ok(None);
    }
    let gated = |full: &Tensor, gate: &Tensor| {
        let groups = gate.elem_count() / gate.shape().last().copied().unwrap_or(1).max(1);
        full.shape() == g.shape()
            && gate.shape() != g.shape()
            && per_group(g.shape(), gate.shape())
            && g.elem_count() > 0
            && groups >= 2 * rayon::current_num_threads()
            && ([full, gate].iter().all(|t| t.dtype() == g.dtype())
                || reads_half_factors(g, gate, full))
    };
    let (full, gate, gate_first) = match (gated(b, a), gated(a, b)) {
        (true, _) => (b, a, true),
        (_, true) => (a, b, false),
        _ => return Ok(None),
    };
    let grads = Storage::fused(
        &GatedProductGrads,
        (
            (&g.storage(), g.layout()),
            AnyFloat((&full.storage(), full.layout())),
            AnyFloat((&gate.storage(), gate.layout())),
        ),
    )?;
    Ok(grads.map(|(d_full, d_gate)| {
        let d_full = Tensor::from_storage(d_full, full.shape());
        let d_gate = Tensor::from_storage(d_gate, gate.shape());
        match gate_first {
            true => (d_gate, d_full),
            false => (d_full, d_gate),
        }
    }))
}

/// The kernel of [`gated_product_grads`]: from g, the full factor and the gate, the
/// gradients of the full factor and of the gate, each in its dtype (g's, or a half
/// dtype beside an f32 g; `None` would leave the product and the sum to run on their
/// own).
struct GatedProductGrads;

impl<'a> FusedOp<'a> for GatedProductGrads {
    const NAME: &'static str = "addcmul_backward";
    type Inputs = (View<'a, Storage>, AnyFloat<'a>, AnyFloat<'a>);
    type Output = Option<(Storage, Storage)>;

    fn cpu(&self, (g, full, gate): BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output> {
        dispatch_float!(Self::NAME, g.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (gv, fv, gatev) = (view(g.0)?, view(full.0)?, view(gate.0)?);
            let (gv, fv) = (
                strided::contiguous(&gv, g.1),
                strided::contiguous(&fv, full.1),
            );
            let gatev = strided::contiguous(&gatev, gate.1);
            let d = g.1.shape().last().copied().unwrap_or(1);
            let (d_full, d_gate) = elementwise::gated_product_grads(&gv, &fv, &gatev, d);
            Ok(Some((
                F::store(d_full, full.0.dtype()).into(),
                F::store(d_gate, gate.0.dtype()).into(),
            )))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (g, full, gate): BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        let (d_full, d_gate) = cuda::rows::gated_product_grads(g, full, gate)?;
        Ok(Some((d_full.into(), d_gate.into())))
    }
}

/// The kernel: `x + a·b` of three views of the output's shape, all of one dtype, or an
/// f32 x and factor beside a half factor (see [`Tensor::addcmul`]).
struct Addcmul;

impl<'a> FusedOp<'a> for Addcmul {
    const NAME: &'static str = "addcmul";
    type Inputs = (View<'a, Storage>, AnyFloat<'a>, AnyFloat<'a>);
    type Output = Storage;

    fn cpu(&self, (x, a, b): BackendInputs<'a, Self, CpuStorage>) -> Result<Storage> {
        dispatch_float!(Self::NAME, x.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (xv, av, bv) = (view(x.0)?, view(a.0)?, view(b.0)?);
            let out = elementwise::addcmul((&xv, x.1), (&av, a.1), (&bv, b.1));
            Ok(F::store(out, x.0.dtype()).into())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (x, a, b): BackendInputs<'a, Self, CudaStorage>) -> Result<Storage> {
        use cuda::elementwise::{addcmul_half_factors, ternary};
        let out = match (a.0.dtype() == x.0.dtype(), b.0.dtype() == x.0.dtype()) {
            (true, true) => ternary(Self::NAME, "addcmul", x, a, b)?,
            // x + a·b = x + b·a: a half factor is the kernel's last.
            (_, false) => addcmul_half_factors(Self::NAME, x, a, b)?,
            (false, true) => addcmul_half_factors(Self::NAME, x, b, a)?,
        };
        Ok(out.into())
    }
}
