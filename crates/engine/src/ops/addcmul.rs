//! `x + a·b` as one fused elementwise op (one pass instead of a product and a sum):
//! the modulation and gated residuals of adaLN transformer blocks.

use super::{check_float, check_same, per_group};
use crate::autocast::promoted;
use crate::backend::BackendStorage;
use crate::cpu::{dispatch_float, elementwise, strided, ComputeType, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{self, CudaStorage};
use crate::error::Result;
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::broadcast_shapes;
use crate::storage::Storage;
use crate::Tensor;

impl Tensor {
    /// `self + a·b`, the three broadcast together.
    pub fn addcmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "addcmul";
        if let Some(x) = promoted(&[self, a, b])? {
            return x[0].addcmul(&x[1], &x[2]);
        }
        check_float(OP, self)?;
        check_same(OP, &[self, a, b])?;
        let shape = broadcast_shapes(OP, self.shape(), a.shape())?;
        let shape = broadcast_shapes(OP, &shape, b.shape())?;
        let l = |t: &Tensor| t.layout().broadcast_to(OP, &shape);
        let (lx, la, lb) = (l(self)?, l(a)?, l(b)?);
        let s = Storage::fused(
            &Addcmul,
            (
                (&self.storage(), &lx),
                (&a.storage(), &la),
                (&b.storage(), &lb),
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
                let ga = a.requires_grad().then(|| g.mul_sum_to_shape(b, a.shape()));
                let gb = b.requires_grad().then(|| g.mul_sum_to_shape(a, b.shape()));
                Ok(vec![gx.transpose()?, ga.transpose()?, gb.transpose()?])
            },
            // tx + ta·b + a·tb, each product one more fused pass.
            |d, _| {
                let (a, b) = (d.primal(1), d.primal(2));
                let mut t = d.tangent_or_zeros(0)?;
                if let Some(ta) = d.tangent(1) {
                    t = t.addcmul(ta, b)?;
                }
                if let Some(tb) = d.tangent(2) {
                    t = t.addcmul(a, tb)?;
                }
                Ok(t)
            },
        )
    }
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
            && full.dtype() == g.dtype()
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
            (&full.storage(), full.layout()),
            (&gate.storage(), gate.layout()),
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
/// gradients of the full factor and of the gate (`None` would leave the product and
/// the sum to run on their own).
struct GatedProductGrads;

impl<'a> FusedOp<'a> for GatedProductGrads {
    const NAME: &'static str = "addcmul_backward";
    type Inputs = (View<'a, Storage>, View<'a, Storage>, View<'a, Storage>);
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
            let dt = g.0.dtype();
            Ok(Some((
                F::store(d_full, dt).into(),
                F::store(d_gate, dt).into(),
            )))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (g, full, gate): BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        let (d_full, d_gate) = cuda::rows::gated_product_grads(g, full, gate)?;
        Ok(Some((d_full.into(), d_gate.into())))
    }
}

/// The kernel: `x + a·b` of three views of the output's shape.
struct Addcmul;

impl<'a> FusedOp<'a> for Addcmul {
    const NAME: &'static str = "addcmul";
    type Inputs = (View<'a, Storage>, View<'a, Storage>, View<'a, Storage>);
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
        Ok(cuda::elementwise::ternary(Self::NAME, "addcmul", x, a, b)?.into())
    }
}
