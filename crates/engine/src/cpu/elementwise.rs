//! Elementwise kernels: unary maps and their derivatives, binary maps, comparisons,
//! selection by mask.

use super::float::CpuFloat;
use super::host_buffer::HostBuffer;
use super::isa;
use super::pool::{self, Poolable};
use super::strided::{fill_runs, Runs};
use crate::backend::{BinaryOp, CmpOp, UnaryOp};
use crate::layout::Layout;
use rayon::prelude::*;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;

#[inline(always)]
fn sigmoid<F: CpuFloat>(x: F) -> F {
    F::one() / (F::one() + (-x).exp_v())
}

/// sigmoid(2u) = ½(1 + tanh u) for the tanh-GELU's inner argument
/// u = √(2/π)·(x + 0.044715·x³), with −2u folded into x·(a + b·x²): a multiply, a
/// multiply-add and a multiply before the exponential rather than five dependent
/// operations. That chain bounds the GELU kernels (too few iterations fit in flight
/// to hide it): folded, the AVX-512 GELU ran 9 % faster and the GELU-derivative
/// epilogue 19 % (docs/benchmarks.md).
#[inline(always)]
fn gelu_sigmoid<F: CpuFloat>(x: F) -> F {
    let (a, b) = (-2.0 * SQRT_2_OVER_PI, -2.0 * SQRT_2_OVER_PI * GELU_CUBIC);
    let minus_2u = x * (x * x).mul_add(F::c(b), F::c(a));
    F::one() / (F::one() + minus_2u.exp_v())
}

/// The tanh-GELU's value and derivative at `x`, sharing one sigmoid: bit for bit the
/// values of [`unary_fn`] and [`unary_derivative`] for `UnaryOp::GeluTanh`, for a
/// backward that recomputes the activation it did not keep.
#[inline(always)]
pub fn gelu_tanh_with_derivative<F: CpuFloat>(x: F) -> (F, F) {
    let s = gelu_sigmoid(x);
    let value = x * s;
    (value, gelu_tanh_slope(x, s, value))
}

/// The tanh-GELU's derivative at `x`, given `s` = sigmoid(2u) there and the value
/// `x·s`: s + x·s·(1 − s)·2u'.
#[inline(always)]
fn gelu_tanh_slope<F: CpuFloat>(x: F, s: F, value: F) -> F {
    let two_du = (x * x).mul_add(
        F::c(6.0 * SQRT_2_OVER_PI * GELU_CUBIC),
        F::c(2.0 * SQRT_2_OVER_PI),
    );
    s + value * (F::one() - s) * two_du
}

/// `op(x)` for one element.
#[inline(always)]
pub fn unary_fn<F: CpuFloat>(op: UnaryOp, x: F) -> F {
    let half = F::c(0.5);
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp_v(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => x.sqrt().recip(),
        UnaryOp::Recip => x.recip(),
        UnaryOp::Square => x * x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh_v(),
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Relu => x.max(F::zero()),
        UnaryOp::GeluTanh => x * gelu_sigmoid(x),
        UnaryOp::GeluErf => {
            half * x * (F::one() + (x * F::c(std::f64::consts::FRAC_1_SQRT_2)).erf())
        }
        UnaryOp::Silu => x * sigmoid(x),
        UnaryOp::Powf(p) => x.powf(F::c(p)),
        UnaryOp::Clamp(lo, hi) => x.max(F::c(lo)).min(F::c(hi)),
        UnaryOp::Affine(a, b) => F::c(a) * x + F::c(b),
    }
}

/// `op'(x)`, the derivative, for one element. At kinks (relu, abs, clamp at 0 or the
/// bounds) it takes the value PyTorch takes.
#[inline(always)]
pub fn unary_derivative<F: CpuFloat>(op: UnaryOp, x: F) -> F {
    let (zero, one, half) = (F::zero(), F::one(), F::c(0.5));
    let step = |c: bool| if c { one } else { zero };
    match op {
        UnaryOp::Neg => -one,
        UnaryOp::Exp => x.exp_v(),
        UnaryOp::Log => x.recip(),
        UnaryOp::Sqrt => half / x.sqrt(),
        UnaryOp::Rsqrt => -half * x.powf(F::c(-1.5)),
        UnaryOp::Recip => -(x * x).recip(),
        UnaryOp::Square => F::c(2.0) * x,
        UnaryOp::Abs => x.signum() * step(x != zero),
        UnaryOp::Sin => x.cos(),
        UnaryOp::Cos => -x.sin(),
        UnaryOp::Tanh => {
            let t = x.tanh_v();
            one - t * t
        }
        UnaryOp::Sigmoid => sigmoid(x) * (one - sigmoid(x)),
        UnaryOp::Relu => step(x > zero),
        UnaryOp::GeluTanh => {
            let s = gelu_sigmoid(x);
            gelu_tanh_slope(x, s, x * s)
        }
        UnaryOp::GeluErf => {
            let cdf = half * (one + (x * F::c(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = (-half * x * x).exp() * F::c(0.398_942_280_401_432_7);
            cdf + x * pdf
        }
        UnaryOp::Silu => {
            let s = sigmoid(x);
            s * (one + x * (one - s))
        }
        UnaryOp::Powf(p) => F::c(p) * x.powf(F::c(p - 1.0)),
        UnaryOp::Clamp(lo, hi) => step(x >= F::c(lo) && x <= F::c(hi)),
        UnaryOp::Affine(a, _) => F::c(a),
    }
}

/// `f` applied to every element of a view; contiguous output.
pub fn map<F: CpuFloat, O: Poolable>(
    x: &[F],
    layout: &Layout,
    f: impl Fn(F) -> O + Sync + Copy,
) -> HostBuffer<O> {
    let runs = Runs::new(layout.shape(), [(layout.strides(), layout.offset())]);
    let mut out = pool::take(layout.elem_count());
    let stride = runs.inner[0];
    fill_runs(&mut out, &runs, |o, [s]| {
        isa::dispatch(
            #[inline(always)]
            |(o, x)| map_run(o, x, stride, f),
            (o, &x[s..]),
        )
    });
    out
}

/// One run of [`map`]: `o[i] = f(x[i·stride])`.
#[inline(always)]
fn map_run<F: CpuFloat, O>(o: &mut [O], x: &[F], stride: usize, f: impl Fn(F) -> O) {
    match stride {
        1 => o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)),
        st => o
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = f(x[i * st])),
    }
}

pub fn zip_map<F: CpuFloat, O: Poolable>(
    a: (&[F], &Layout),
    b: (&[F], &Layout),
    f: impl Fn(F, F) -> O + Sync + Copy,
) -> HostBuffer<O> {
    let (la, lb) = (a.1, b.1);
    let runs = Runs::new(
        la.shape(),
        [(la.strides(), la.offset()), (lb.strides(), lb.offset())],
    );
    let mut out = pool::take(la.elem_count());
    let strides = runs.inner;
    fill_runs(&mut out, &runs, |o, [sa, sb]| {
        let args = (o, &a.0[sa..], &b.0[sb..]);
        isa::dispatch(
            #[inline(always)]
            |(o, x, y)| zip_run(o, x, y, strides, f),
            args,
        )
    });
    out
}

/// One run of [`zip_map`]: `o[i] = f(x[i·sx], y[i·sy])`, with the common stride
/// patterns (contiguous, one side broadcast) as loops of their own.
#[inline(always)]
fn zip_run<F: CpuFloat, O>(
    o: &mut [O],
    x: &[F],
    y: &[F],
    [sx, sy]: [usize; 2],
    f: impl Fn(F, F) -> O,
) {
    let n = o.len();
    match (sx, sy) {
        (1, 1) => {
            let (x, y) = (&x[..n], &y[..n]);
            for i in 0..n {
                o[i] = f(x[i], y[i]);
            }
        }
        (1, 0) => o
            .iter_mut()
            .zip(&x[..n])
            .for_each(|(o, &x)| *o = f(x, y[0])),
        (0, 1) => o
            .iter_mut()
            .zip(&y[..n])
            .for_each(|(o, &y)| *o = f(x[0], y)),
        (sx, sy) => {
            for (i, o) in o.iter_mut().enumerate() {
                *o = f(x[i * sx], y[i * sy]);
            }
        }
    }
}

/// Runs `$body` with the constant `$O` set to `$op`'s variant, for the variants without
/// parameters, so that each op's element loop is compiled on its own (branch-free,
/// vectorisable); a captured runtime op would be matched per element. `$param` handles
/// the variants with parameters.
macro_rules! specialise {
    ($op:expr, |$O:ident| $body:expr, $param:expr) => {
        match $op {
            UnaryOp::Neg => {
                const $O: UnaryOp = UnaryOp::Neg;
                $body
            }
            UnaryOp::Exp => {
                const $O: UnaryOp = UnaryOp::Exp;
                $body
            }
            UnaryOp::Log => {
                const $O: UnaryOp = UnaryOp::Log;
                $body
            }
            UnaryOp::Sqrt => {
                const $O: UnaryOp = UnaryOp::Sqrt;
                $body
            }
            UnaryOp::Rsqrt => {
                const $O: UnaryOp = UnaryOp::Rsqrt;
                $body
            }
            UnaryOp::Recip => {
                const $O: UnaryOp = UnaryOp::Recip;
                $body
            }
            UnaryOp::Square => {
                const $O: UnaryOp = UnaryOp::Square;
                $body
            }
            UnaryOp::Abs => {
                const $O: UnaryOp = UnaryOp::Abs;
                $body
            }
            UnaryOp::Sin => {
                const $O: UnaryOp = UnaryOp::Sin;
                $body
            }
            UnaryOp::Cos => {
                const $O: UnaryOp = UnaryOp::Cos;
                $body
            }
            UnaryOp::Tanh => {
                const $O: UnaryOp = UnaryOp::Tanh;
                $body
            }
            UnaryOp::Sigmoid => {
                const $O: UnaryOp = UnaryOp::Sigmoid;
                $body
            }
            UnaryOp::Relu => {
                const $O: UnaryOp = UnaryOp::Relu;
                $body
            }
            UnaryOp::GeluTanh => {
                const $O: UnaryOp = UnaryOp::GeluTanh;
                $body
            }
            UnaryOp::GeluErf => {
                const $O: UnaryOp = UnaryOp::GeluErf;
                $body
            }
            UnaryOp::Silu => {
                const $O: UnaryOp = UnaryOp::Silu;
                $body
            }
            UnaryOp::Powf(_) | UnaryOp::Clamp(..) | UnaryOp::Affine(..) => $param,
        }
    };
}

/// `op(x)` elementwise.
pub fn unary<F: CpuFloat>(x: &[F], layout: &Layout, op: UnaryOp) -> HostBuffer<F> {
    specialise!(
        op,
        |OP| map(x, layout, |x| unary_fn(OP, x)),
        match op {
            UnaryOp::Powf(p) => map(x, layout, move |x| x.powf(F::c(p))),
            UnaryOp::Clamp(lo, hi) => map(x, layout, move |x| x.max(F::c(lo)).min(F::c(hi))),
            _ => {
                let (a, b) = match op {
                    UnaryOp::Affine(a, b) => (F::c(a), F::c(b)),
                    _ => (F::one(), F::zero()),
                };
                map(x, layout, move |x| a * x + b)
            }
        }
    )
}

/// `grad · op'(x)` elementwise.
pub fn unary_backward<F: CpuFloat>(
    x: (&[F], &Layout),
    grad: (&[F], &Layout),
    op: UnaryOp,
) -> HostBuffer<F> {
    let (zero, one) = (F::zero(), F::one());
    specialise!(
        op,
        |OP| zip_map(x, grad, |x, g| g * unary_derivative(OP, x)),
        match op {
            UnaryOp::Powf(p) => {
                let (p, q) = (F::c(p), F::c(p - 1.0));
                zip_map(x, grad, move |x, g| g * p * x.powf(q))
            }
            UnaryOp::Clamp(lo, hi) => {
                let (lo, hi) = (F::c(lo), F::c(hi));
                zip_map(
                    x,
                    grad,
                    move |x, g| if x >= lo && x <= hi { g } else { zero },
                )
            }
            _ => {
                let a = match op {
                    UnaryOp::Affine(a, _) => F::c(a),
                    _ => one,
                };
                zip_map(x, grad, move |_, g| g * a)
            }
        }
    )
}

/// `op(a, b)` elementwise.
pub fn binary<F: CpuFloat>(a: (&[F], &Layout), b: (&[F], &Layout), op: BinaryOp) -> HostBuffer<F> {
    match op {
        BinaryOp::Add => zip_map(a, b, |x, y| x + y),
        BinaryOp::Sub => zip_map(a, b, |x, y| x - y),
        BinaryOp::Mul => zip_map(a, b, |x, y| x * y),
        BinaryOp::Div => zip_map(a, b, |x, y| x / y),
        BinaryOp::Maximum => zip_map(a, b, |x, y| x.max(y)),
        BinaryOp::Minimum => zip_map(a, b, |x, y| x.min(y)),
    }
}

/// 1 where `op(a, b)` holds, 0 elsewhere.
pub fn cmp<F: CpuFloat>(a: (&[F], &Layout), b: (&[F], &Layout), op: CmpOp) -> HostBuffer<F> {
    let bit = |c: bool| if c { F::one() } else { F::zero() };
    match op {
        CmpOp::Eq => zip_map(a, b, |x, y| bit(x == y)),
        CmpOp::Ne => zip_map(a, b, |x, y| bit(x != y)),
        CmpOp::Lt => zip_map(a, b, |x, y| bit(x < y)),
        CmpOp::Le => zip_map(a, b, |x, y| bit(x <= y)),
        CmpOp::Gt => zip_map(a, b, |x, y| bit(x > y)),
        CmpOp::Ge => zip_map(a, b, |x, y| bit(x >= y)),
    }
}

/// `f` applied to triples of elements of three views of the same shape; contiguous
/// output.
fn zip3_map<F: CpuFloat>(
    a: (&[F], &Layout),
    b: (&[F], &Layout),
    c: (&[F], &Layout),
    f: impl Fn(F, F, F) -> F + Sync + Copy,
) -> HostBuffer<F> {
    fn view(l: &Layout) -> (&[usize], usize) {
        (l.strides(), l.offset())
    }
    let runs = Runs::new(a.1.shape(), [view(a.1), view(b.1), view(c.1)]);
    let mut out = pool::take(a.1.elem_count());
    let [sa, sb, sc] = runs.inner;
    fill_runs(&mut out, &runs, |o, [a0, b0, c0]| {
        let args = (o, &a.0[a0..], &b.0[b0..], &c.0[c0..]);
        isa::dispatch(
            #[inline(always)]
            |args| zip3_run(args, [sa, sb, sc], f),
            args,
        )
    });
    out
}

/// One run of `zip3_map`; the all-unit-stride case (the common one: broadcast operands
/// repeat along outer dims, not along the run) gets a loop that vectorises.
#[inline(always)]
fn zip3_run<F: CpuFloat>(
    (o, x, y, z): (&mut [F], &[F], &[F], &[F]),
    [sx, sy, sz]: [usize; 3],
    f: impl Fn(F, F, F) -> F,
) {
    let n = o.len();
    if (sx, sy, sz) == (1, 1, 1) {
        let (x, y, z) = (&x[..n], &y[..n], &z[..n]);
        for i in 0..n {
            o[i] = f(x[i], y[i], z[i]);
        }
    } else {
        for (i, o) in o.iter_mut().enumerate() {
            *o = f(x[i * sx], y[i * sy], z[i * sz]);
        }
    }
}

/// `t` where `mask` is non-zero, else `f`.
pub fn where_cond<F: CpuFloat>(
    mask: (&[F], &Layout),
    t: (&[F], &Layout),
    f: (&[F], &Layout),
) -> HostBuffer<F> {
    zip3_map(mask, t, f, |m, t, f| if m != F::zero() { t } else { f })
}

/// `x + a·b` elementwise.
pub fn addcmul<F: CpuFloat>(
    x: (&[F], &Layout),
    a: (&[F], &Layout),
    b: (&[F], &Layout),
) -> HostBuffer<F> {
    zip3_map(x, a, b, |x, a, b| x + a * b)
}

/// The gradients of the factors of `full·factor` (as in `x + full·factor`) from the
/// output gradient `g`, in one pass over `g`: `g·factor` for `full` and, for each row
/// of `factor` (`[groups, d]`, one row per group of consecutive rows of `g`), the sum
/// over its group of `g·full`. `g` and `full` are contiguous `[groups·group_rows, d]`.
/// Tasks own whole groups, so each row of the factor's gradient is summed by one task
/// in row order.
pub fn gated_product_grads<F: CpuFloat>(
    g: &[F],
    full: &[F],
    factor: &[F],
    d: usize,
) -> (HostBuffer<F>, HostBuffer<F>) {
    let d = d.max(1);
    let groups = factor.len() / d;
    let group_len = g.len() / groups.max(1);
    let mut d_full = pool::take(g.len());
    let mut d_factor = pool::take_zeroed(factor.len());
    let group = |(i, (dfull, dfac)): (usize, (&mut [F], &mut [F]))| {
        let (g, full) = (
            &g[i * group_len..][..group_len],
            &full[i * group_len..][..group_len],
        );
        let fac = &factor[i * d..][..d];
        isa::dispatch(
            #[inline(always)]
            |(dfull, dfac): (&mut [F], &mut [F])| {
                let rows = dfull.chunks_mut(d).zip(g.chunks(d)).zip(full.chunks(d));
                for ((dfull, g), full) in rows {
                    let lanes = dfull.iter_mut().zip(g).zip(full).zip(fac);
                    for ((((df, &g), &x), &f), acc) in lanes.zip(dfac.iter_mut()) {
                        *df = g * f;
                        *acc = *acc + g * x;
                    }
                }
            },
            (dfull, dfac),
        )
    };
    if g.len() >= super::strided::PARALLEL_CUTOFF {
        let parts = d_full
            .par_chunks_mut(group_len)
            .zip(d_factor.par_chunks_mut(d));
        parts.enumerate().for_each(group);
    } else {
        let parts = d_full.chunks_mut(group_len).zip(d_factor.chunks_mut(d));
        parts.enumerate().for_each(group);
    }
    (d_full, d_factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recomputed activation and derivative are the forward's and the unary
    /// backward's own values, bit for bit (a backward mixing them would otherwise
    /// differ from one that kept the activation).
    #[test]
    fn gelu_tanh_with_derivative_is_bitwise_the_unary_ops() {
        for i in -40_000..40_000 {
            let x = i as f32 * 2.5e-4 + 1e-5;
            let (value, slope) = gelu_tanh_with_derivative(x);
            assert_eq!(
                value.to_bits(),
                unary_fn(UnaryOp::GeluTanh, x).to_bits(),
                "{x}"
            );
            let want = unary_derivative(UnaryOp::GeluTanh, x);
            assert_eq!(slope.to_bits(), want.to_bits(), "{x}");
        }
    }
}
