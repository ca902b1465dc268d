//! The GELU feed-forward block `fc2(gelu_tanh(fc1(x)))` as one op, so that the GELU
//! and its derivative run inside the products next to them instead of as passes of
//! their own over the `[tokens, hidden]` activations (the widest tensors of a
//! transformer block): the forward's first product writes `h = fc1(x)` and
//! `gelu_tanh(h)` together (without a graph, `gelu_tanh(h)` alone, in place), and the
//! backward's product `dOut·W2` comes out multiplied by `gelu_tanh'(h)` already. On the
//! CPU the map runs on each product task's block while it is in cache
//! (`cpu/epilogue.rs`); on CUDA, in bf16 and f16, cuBLASLt's GELU
//! epilogues do the same, the backward's also summing the first layer's bias gradient
//! (`cuda/lt.rs`), and otherwise the product and GELU kernels run one after the other.
//! On a CPU with AVX-512, in f32, the forward and the backward (when every gradient is
//! wanted) run in blocks of rows whose hidden activations, and dh, never leave the L2
//! cache (`cpu/mlp_rows.rs`): the forward keeps only h for the backward, which
//! recomputes gelu(h) beside gelu'(h).

use super::matmul::wanted_linear_param_grads;
use super::{check_float, check_same};
use crate::autocast::lowered;
use crate::backend::{BackendStorage, NormSpec, UnaryOp};
use crate::cpu::epilogue::{Epilogue, GatedRows};
use crate::cpu::matmul::{self, SharedOut};
#[cfg(target_arch = "x86_64")]
use crate::cpu::mlp_rows::NormRows;
use crate::cpu::{dispatch_float, pool, ComputeType, CpuStorage, HostBuffer};
#[cfg(feature = "cuda")]
use crate::cuda::CudaStorage;
use crate::error::{Error, Result};
use crate::forward_ad;
use crate::fused::{BackendInputs, FusedOp, View};
use crate::layout::Layout;
use crate::storage::Storage;
use crate::{DType, Device, Tensor};

/// A linear layer's parameters: the weight `[n, k]` and an optional bias `[n]`.
pub type LinearParams<'a> = (&'a Tensor, Option<&'a Tensor>);

/// `fc2(gelu_tanh(fc1(x)))` for `x` `[..., k]`, `fc1` = (`[hidden, k]`, `[hidden]`),
/// `fc2` = (`[n, hidden]`, `[n]`) in PyTorch's layout: the values of
/// `x.linear(w1, b1)?.gelu()?.linear(w2, b2)`, with the GELU and its derivative fused
/// into the neighbouring products (see the module's documentation). Inside `jvp`, for
/// a non-contiguous `x` and for bf16/f16 on the CPU it runs as that composition; under
/// autocast, in the low dtype.
pub fn gelu_mlp(x: &Tensor, (w1, b1): LinearParams, (w2, b2): LinearParams) -> Result<Tensor> {
    const OP: &str = "gelu_mlp";
    let mut inputs = vec![x, w1];
    inputs.extend(b1);
    inputs.push(w2);
    inputs.extend(b2);
    if let Some(l) = lowered(&inputs)? {
        let (b1, rest) = match b1 {
            Some(_) => (Some(&l[2]), &l[3..]),
            None => (None, &l[2..]),
        };
        return gelu_mlp(&l[0], (&l[1], b1), (&rest[0], rest.get(1)));
    }
    let composed = || x.linear(w1, b1)?.gelu()?.linear(w2, b2);
    // bf16/f16 on the CPU compute in f32: the composition rounds h before the GELU.
    let rounds_between = x.device() == Device::Cpu && !matches!(x.dtype(), DType::F32 | DType::F64);
    if forward_ad::wants_tangent(&inputs) || x.rank() < 2 || !x.is_contiguous() || rounds_between {
        return composed();
    }
    check_float(OP, x)?;
    check_same(OP, &inputs)?;
    let k = x.shape()[x.rank() - 1];
    let hidden = w1.shape().first().copied().unwrap_or(0);
    let fits = w1.rank() == 2
        && w2.rank() == 2
        && w1.shape()[1] == k
        && w2.shape()[1] == hidden
        && b1.is_none_or(|b| b.shape() == [hidden])
        && b2.is_none_or(|b| b.shape() == [w2.shape()[0]]);
    if !fits {
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        return Err(Error::shapes(OP, &shapes));
    }
    let n = w2.shape()[0];
    let rows: usize = x.shape()[..x.rank() - 1].iter().product();
    let flat = x.reshape(&[rows, k])?;
    let shape = [&x.shape()[..x.rank() - 1], &[n]].concat();
    let records = crate::autograd::records(&inputs);
    // Only the backward reads the pre-activation h: without a graph the GELU runs in
    // place and the widest tensor of the block is written once, not twice.
    let (out, h, act) = match gelu_mlp_rows(&flat, (w1, b1), (w2, b2), records, (None, None))? {
        Some((out, h)) => (out, h, None),
        None => {
            let (h, act) = linear_gelu(&flat, w1, b1, records)?;
            let lw = w2.layout().permute(&[1, 0]);
            let lb = b2
                .map(|b| b.layout().broadcast_to(OP, &[rows, n]))
                .transpose()?;
            let bias = b2.map(|b| b.storage());
            let bias = bias.as_deref().zip(lb.as_ref());
            let out = act
                .storage()
                .matmul(act.layout(), &w2.storage(), &lw, bias)?;
            (out, h, Some(act))
        }
    };
    if !records {
        return Ok(Tensor::from_storage(out, &shape));
    }
    let has_b1 = b1.is_some();
    Tensor::from_op_in(
        OP,
        out,
        Layout::contiguous(&shape),
        &inputs,
        move |v, _, g| {
            let h = h.as_ref().ok_or_else(|| {
                Error::Autograd("gelu_mlp: the forward ran without a graph".into())
            })?;
            backward(v, (&flat, h, act.as_ref()), g, has_b1)
        },
        |_, _| {
            Err(Error::Autograd(
                "gelu_mlp: forward mode runs the composition".into(),
            ))
        },
    )
}

/// The gradients of `gelu_mlp`'s inputs (`v`: x, w1, b1?, w2, b2?) from the output's
/// gradient `g`, with `x` flattened to `[rows, k]`, the pre-activation `h` and, where
/// the forward kept it, the activation `act` (else recomputed from `h`).
fn backward(
    v: &[Tensor],
    (x, h, act): (&Tensor, &Tensor, Option<&Tensor>),
    g: &Tensor,
    has_b1: bool,
) -> Result<Vec<Option<Tensor>>> {
    let (w1, b1) = (&v[1], has_b1.then(|| &v[2]));
    let (w2, b2) = (&v[2 + has_b1 as usize], v.get(3 + has_b1 as usize));
    let g = g.reshape(&[h.shape()[0], w2.shape()[0]])?;
    let wants = |t: &Tensor| t.requires_grad();
    // Every gradient asked for (training): on the CPU's f32 AVX-512 products, the whole
    // backward in blocks of rows, dh never leaving the cache (`cpu/mlp_rows.rs`).
    let all_wanted = [&v[0], w1, w2].into_iter().chain(b1).chain(b2).all(wants);
    if all_wanted {
        let biases = (b1.is_some(), b2.is_some());
        if let Some([dx, dw1, db1, dw2, db2]) = backward_rows((&g, x, h, act), (w1, w2), biases)? {
            let dx = dx.map(|dx| dx.reshape(v[0].shape())).transpose()?;
            return Ok(in_input_order([dx, dw1, db1, dw2, db2], biases));
        }
    }
    let recomputed;
    let act = match act {
        Some(act) => act,
        None => {
            let gelu = h.storage().unary(h.layout(), UnaryOp::GeluTanh)?;
            recomputed = Tensor::from_storage(gelu, h.shape());
            &recomputed
        }
    };
    let (dw2, db2) = wanted_linear_param_grads(&g, act, (wants(w2), b2.is_some_and(wants)))?;
    let wants_b1 = b1.is_some_and(wants);
    let (dh, fused_db1) = linear_gelu_grad(&g, w2, h, wants_b1)?;
    let (dw1, db1) = match fused_db1 {
        // Summed with dh's product (cuBLASLt's `DGELU_BGRAD`).
        Some(db1) => (wants(w1).then(|| dh.t()?.matmul(x)).transpose()?, Some(db1)),
        None => wanted_linear_param_grads(&dh, x, (wants(w1), wants_b1))?,
    };
    let dx = wants(&v[0])
        .then(|| dh.matmul(w1)?.reshape(v[0].shape()))
        .transpose()?;
    Ok(in_input_order(
        [dx, dw1, db1, dw2, db2],
        (has_b1, b2.is_some()),
    ))
}

/// The gradients of x, w1, b1, w2, b2 in the op's input order, without the biases the
/// op was not given (`biases`: whether b1 and b2 were).
fn in_input_order(
    [dx, dw1, db1, dw2, db2]: [Option<Tensor>; 5],
    biases: (bool, bool),
) -> Vec<Option<Tensor>> {
    let mut grads = vec![dx, dw1];
    if biases.0 {
        grads.push(db1);
    }
    grads.push(dw2);
    if biases.1 {
        grads.push(db2);
    }
    grads
}

/// A gated residual as the row-block path adds it (`ops/gated.rs`): the stream
/// (contiguous, of the output's shape), the gate (contiguous `[groups, n]`) and the
/// output rows per gate row.
pub(super) type GatedOperands<'a> = (&'a Tensor, &'a Tensor, usize);

/// A layer norm of x's rows before the block, as the row-block path runs it
/// (`ops/gated.rs`): the weight and the bias (each contiguous `[groups, k]`) with the
/// rows of x per parameter row, and the norm's spec.
pub(super) type NormOperands<'a> = ((&'a Tensor, usize), (&'a Tensor, usize), NormSpec);

/// The whole block for a contiguous `[rows, k]` x, and h = x·w1ᵀ + b1 when
/// `keep_pre`, in blocks of rows whose hidden activations stay in cache
/// (`cpu/mlp_rows.rs`), where the backend has that path (f32 products on a CPU with
/// AVX-512); `None` elsewhere. With `residual`, the output is `stream + gate·output`.
pub(super) fn gelu_mlp_rows(
    x: &Tensor,
    (w1, b1): LinearParams,
    (w2, b2): LinearParams,
    keep_pre: bool,
    (residual, prenorm): (Option<GatedOperands>, Option<NormOperands>),
) -> Result<Option<(Storage, Option<Tensor>)>> {
    let rows = x.shape()[0];
    let (hidden, n) = (w1.shape()[0], w2.shape()[0]);
    let (lw1, lw2) = (w1.layout().permute(&[1, 0]), w2.layout().permute(&[1, 0]));
    let broadcast = |b: Option<&Tensor>, n| {
        b.map(|b| b.layout().broadcast_to(GeluMlpRows::NAME, &[rows, n]))
            .transpose()
    };
    let (lb1, lb2) = (broadcast(b1, hidden)?, broadcast(b2, n)?);
    let (sb1, sb2) = (b1.map(|b| b.storage()), b2.map(|b| b.storage()));
    let (stream, gate) = (
        residual.map(|r| r.0.storage()),
        residual.map(|r| r.1.storage()),
    );
    let (norm_w, norm_b) = (prenorm.map(|p| p.0 .0), prenorm.map(|p| p.1 .0));
    let (sw, sb) = (norm_w.map(|t| t.storage()), norm_b.map(|t| t.storage()));
    let out = Storage::fused(
        &GeluMlpRows {
            keep_pre,
            rows_per_group: residual.map(|r| r.2),
            prenorm: prenorm.map(|p| (p.0 .1, p.1 .1, p.2)),
        },
        (
            (&x.storage(), x.layout()),
            (&w1.storage(), &lw1),
            sb1.as_deref().zip(lb1.as_ref()),
            (&w2.storage(), &lw2),
            sb2.as_deref().zip(lb2.as_ref()),
            stream.as_deref().zip(residual.map(|r| r.0.layout())),
            gate.as_deref().zip(residual.map(|r| r.1.layout())),
            sw.as_deref().zip(norm_w.map(|t| t.layout())),
            sb.as_deref().zip(norm_b.map(|t| t.layout())),
        ),
    )?;
    let pre = |h: Storage| Tensor::from_storage(h, &[rows, hidden]);
    Ok(out.map(|(out, h)| (out, h.map(pre))))
}

/// The block in row blocks (see [`gelu_mlp_rows`]): x `[rows, k]` contiguous, both
/// weights as `[k, n]` views, both biases broadcast to the outputs, a gated
/// residual's stream and gate, and a first norm's weight and bias, where given.
struct GeluMlpRows {
    /// Whether h is kept for a backward.
    keep_pre: bool,
    /// Output rows per gate row, with a gated residual.
    rows_per_group: Option<usize>,
    /// With a first norm: x's rows per weight row and per bias row, and its spec.
    prenorm: Option<(usize, usize, NormSpec)>,
}

impl<'a> FusedOp<'a> for GeluMlpRows {
    const NAME: &'static str = "gelu_mlp";
    type Inputs = (
        View<'a, Storage>,
        View<'a, Storage>,
        Option<View<'a, Storage>>,
        View<'a, Storage>,
        Option<View<'a, Storage>>,
        Option<View<'a, Storage>>,
        Option<View<'a, Storage>>,
        Option<View<'a, Storage>>,
        Option<View<'a, Storage>>,
    );
    /// The output and h (when kept), or `None` where the backend has no row-block
    /// path.
    type Output = Option<(Storage, Option<Storage>)>;

    fn cpu(
        &self,
        (x, w1, b1, w2, b2, stream, gate, norm_w, norm_b): BackendInputs<'a, Self, CpuStorage>,
    ) -> Result<Self::Output> {
        #[cfg(target_arch = "x86_64")]
        {
            let f32s = |(s, l): View<'a, CpuStorage>| Some(&s.as_slice::<f32>()?[l.offset()..]);
            let residual = match (stream, gate, self.rows_per_group) {
                (Some(stream), Some(gate), Some(rows_per_group)) => {
                    let Some((stream, gate)) = f32s(stream).zip(f32s(gate)) else {
                        return Ok(None);
                    };
                    let n = w2.1.shape()[1];
                    let first_row = 0;
                    Some(GatedRows {
                        stream,
                        gate,
                        rows_per_group,
                        n,
                        first_row,
                    })
                }
                _ => None,
            };
            let prenorm = match (norm_w, norm_b, self.prenorm) {
                (Some(w), Some(b), Some((per_w, per_b, spec))) => {
                    let Some((w, b)) = f32s(w).zip(f32s(b)) else {
                        return Ok(None);
                    };
                    let (weight, bias) = ((w, per_w), (b, per_b));
                    Some(NormRows { weight, bias, spec })
                }
                _ => None,
            };
            let mode = (self.keep_pre, residual, prenorm);
            if let Some((out, h)) = crate::cpu::mlp_rows::from_views(x, (w1, b1), (w2, b2), mode) {
                let store = |v: HostBuffer<f32>| -> Storage { CpuStorage::F32(v).into() };
                return Ok(Some((store(out), h.map(store))));
            }
        }
        let _ = (x, w1, b1, w2, b2, stream, gate, norm_w, norm_b);
        Ok(None)
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, _: BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        Ok(None)
    }
}

/// dx `[rows, k]`, dw1, db1, dw2, db2 (the biases' where `biases` says they exist) of
/// the block from g `[rows, n]`, x `[rows, k]`, h and (where the forward kept it) act
/// `[rows, hidden]`, in blocks of rows (`cpu/mlp_rows.rs`) where the backend has that
/// path; `None` elsewhere.
fn backward_rows(
    (g, x, h, act): (&Tensor, &Tensor, &Tensor, Option<&Tensor>),
    (w1, w2): (&Tensor, &Tensor),
    biases: (bool, bool),
) -> Result<Option<[Option<Tensor>; 5]>> {
    let views = [g, x, h, w1, w2];
    let storages: Vec<_> = views.iter().map(|t| t.storage()).collect();
    let view = |i: usize| (&*storages[i], views[i].layout());
    let act_storage = act.map(|a| a.storage());
    let act = act_storage.as_deref().zip(act.map(|a| a.layout()));
    let grads = Storage::fused(
        &GeluMlpBackwardRows { biases },
        (view(0), view(1), view(2), view(3), view(4), act),
    )?;
    let tensor = |s: Storage, t: &Tensor| Tensor::from_storage(s, t.shape());
    Ok(grads.map(|[dx, dw1, db1, dw2, db2]| {
        let bias = |s: Option<Storage>, n| s.map(|s| Tensor::from_storage(s, &[n]));
        [
            dx.map(|s| tensor(s, x)),
            dw1.map(|s| tensor(s, w1)),
            bias(db1, w1.shape()[0]),
            dw2.map(|s| tensor(s, w2)),
            bias(db2, w2.shape()[0]),
        ]
    }))
}

/// The training backward in row blocks (see [`backward_rows`]).
struct GeluMlpBackwardRows {
    /// Whether the first and second layers have biases (whose gradients are then
    /// summed with the weights').
    biases: (bool, bool),
}

impl<'a> FusedOp<'a> for GeluMlpBackwardRows {
    const NAME: &'static str = "gelu_mlp_backward";
    /// g, x, h, w1, w2, and act where the forward kept it.
    type Inputs = (
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
        View<'a, Storage>,
        Option<View<'a, Storage>>,
    );
    /// dx, dw1, db1, dw2, db2 (each `None` where absent), or `None` where the backend
    /// has no row-block path.
    type Output = Option<[Option<Storage>; 5]>;

    fn cpu(&self, views: BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output> {
        #[cfg(target_arch = "x86_64")]
        {
            let (g, x, h, w1, w2, act) = views;
            let views = ([g, x, h, w1, w2], act);
            if let Some(r) = crate::cpu::mlp_rows::backward_from_views(views, self.biases) {
                let store = |v: HostBuffer<f32>| -> Storage { CpuStorage::F32(v).into() };
                return Ok(Some([
                    Some(store(r.dx)),
                    Some(store(r.dw1)),
                    r.db1.map(store),
                    Some(store(r.dw2)),
                    r.db2.map(store),
                ]));
            }
        }
        let _ = views;
        Ok(None)
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, _: BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        Ok(None)
    }
}

/// `h = x·w1ᵀ (+ b1)` (when `keep_pre`) and `gelu_tanh(h)` of a `[rows, k]` x, as
/// tensors outside the graph.
fn linear_gelu(
    x: &Tensor,
    w1: &Tensor,
    b1: Option<&Tensor>,
    keep_pre: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let shape = [x.shape()[0], w1.shape()[0]];
    let lw = w1.layout().permute(&[1, 0]);
    let lb = b1
        .map(|b| b.layout().broadcast_to(LinearGelu::NAME, &shape))
        .transpose()?;
    let bias = b1.map(|b| b.storage());
    let (h, act) = Storage::fused(
        &LinearGelu { keep_pre },
        (
            (&x.storage(), x.layout()),
            (&w1.storage(), &lw),
            bias.as_deref().zip(lb.as_ref()),
        ),
    )?;
    Ok((
        h.map(|h| Tensor::from_storage(h, &shape)),
        Tensor::from_storage(act, &shape),
    ))
}

/// `dh = (g·w2) ∘ gelu_tanh'(h)` for `g` `[rows, n]`, `w2` `[n, hidden]`, `h`
/// `[rows, hidden]`, and, when `bias_grad` and the backend's product computes them with
/// it (cuBLASLt's `DGELU_BGRAD`), the column sums of `dh` (the first layer's bias
/// gradient); `None` leaves them to the caller.
fn linear_gelu_grad(
    g: &Tensor,
    w2: &Tensor,
    h: &Tensor,
    bias_grad: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (dh, sums) = Storage::fused(
        &LinearGeluGrad { bias_grad },
        (
            (&g.storage(), g.layout()),
            (&w2.storage(), w2.layout()),
            (&h.storage(), h.layout()),
        ),
    )?;
    let dh = Tensor::from_storage(dh, h.shape());
    let sums = sums
        .filter(|_| bias_grad)
        .map(|s| Tensor::from_storage(s, &[h.shape()[1]]));
    Ok((dh, sums))
}

/// The forward's first product: `h = x·w (+ bias)` and `gelu_tanh(h)`, for 2-D views
/// `x` `[rows, k]` and `w` `[k, hidden]` and a bias view of `[rows, hidden]`.
struct LinearGelu {
    /// Whether `h` is kept (for a backward) beside `gelu_tanh(h)`.
    keep_pre: bool,
}

impl<'a> FusedOp<'a> for LinearGelu {
    const NAME: &'static str = "linear_gelu";
    type Inputs = (
        View<'a, Storage>,
        View<'a, Storage>,
        Option<View<'a, Storage>>,
    );
    /// `h` (when kept) and `gelu_tanh(h)`, contiguous.
    type Output = (Option<Storage>, Storage);

    fn cpu(&self, (x, w, bias): BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output> {
        let dt = x.0.dtype();
        dispatch_float!(Self::NAME, x.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (xv, wv) = (view(x.0)?, view(w.0)?);
            let bv = bias.map(|b| view(b.0)).transpose()?;
            let bias = bv.as_deref().zip(bias.map(|b| b.1));
            let product = |epilogue| matmul::matmul_then((&xv, x.1), (&wv, w.1), bias, epilogue);
            if !self.keep_pre {
                let act = product(Epilogue::GeluInPlace);
                return Ok((None, F::store(act, dt).into()));
            }
            let mut act = pool::take(x.1.shape()[0] * w.1.shape()[1]);
            let h = product(Epilogue::Gelu(SharedOut::new(&mut act)));
            Ok((Some(F::store(h, dt).into()), F::store(act, dt).into()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (x, w, bias): BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        use crate::cuda::matmul::linear_gelu;
        if let Some((h, act)) = linear_gelu(x, w, bias, self.keep_pre)? {
            return Ok((h.map(Into::into), act.into()));
        }
        let h = x.0.matmul(x.1, w.0, w.1, bias)?;
        let lh = Layout::contiguous(&[x.1.shape()[0], w.1.shape()[1]]);
        let act = h.unary(&lh, UnaryOp::GeluTanh)?;
        Ok((self.keep_pre.then(|| h.into()), act.into()))
    }
}

/// The backward's product through the GELU: `(g·w) ∘ gelu_tanh'(h)` for 2-D views `g`
/// `[rows, n]`, `w` `[n, hidden]` and `h` `[rows, hidden]` (contiguous).
struct LinearGeluGrad {
    /// Whether the result's column sums (the first layer's bias gradient) are wanted:
    /// read where a backend computes them with the product (CUDA); the CPU leaves
    /// them to the caller.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    bias_grad: bool,
}

impl<'a> FusedOp<'a> for LinearGeluGrad {
    const NAME: &'static str = "linear_gelu_grad";
    type Inputs = (View<'a, Storage>, View<'a, Storage>, View<'a, Storage>);
    /// The result, and its column sums where the backend computes them with it
    /// (cuBLASLt's epilogue); `None` leaves the sum to the caller.
    type Output = (Storage, Option<Storage>);

    fn cpu(&self, (g, w, h): BackendInputs<'a, Self, CpuStorage>) -> Result<Self::Output> {
        let dt = g.0.dtype();
        dispatch_float!(Self::NAME, g.0, |F| {
            let view = |s| F::view(s, Self::NAME);
            let (gv, wv, hv) = (view(g.0)?, view(w.0)?, view(h.0)?);
            assert!(
                h.1.is_contiguous(),
                "linear_gelu_grad: h is the forward's own buffer"
            );
            let pre = &hv[h.1.offset()..];
            let epilogue = Epilogue::GeluGrad(pre);
            let dh = matmul::matmul_then((&gv, g.1), (&wv, w.1), None, epilogue);
            Ok((F::store(dh, dt).into(), None))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (g, w, h): BackendInputs<'a, Self, CudaStorage>) -> Result<Self::Output> {
        use crate::cuda::matmul::linear_gelu_grad;
        if let Some((dh, sums)) = linear_gelu_grad(g, w, h, self.bias_grad)? {
            return Ok((dh.into(), sums.map(Into::into)));
        }
        let y = g.0.matmul(g.1, w.0, w.1, None)?;
        let ly = Layout::contiguous(&[g.1.shape()[0], w.1.shape()[1]]);
        Ok((
            h.0.unary_backward(h.1, &y, &ly, UnaryOp::GeluTanh)?.into(),
            None,
        ))
    }
}
