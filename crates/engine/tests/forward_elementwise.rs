//! Forward values of the elementwise ops, reductions, comparisons and casts, checked
//! against plain f64 loops written here (index arithmetic for broadcasting, strided
//! views and reductions), on random shapes, broadcasts and non-contiguous inputs.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::f64::consts::PI;
use twinflow_engine::{AdamTensors, DType, Device, Result, Tensor};

mod common;
use common::elementwise::{
    arg_of, broadcast_shapes, nonzero, positive, reduction, shape, view, Arg,
};
use common::{config, ravel, unravel};

type TestResult = std::result::Result<(), TestCaseError>;

// ---------------------------------------------------------------------------------------
// Index arithmetic (row-major)
// ---------------------------------------------------------------------------------------

/// NumPy broadcasting of two shapes (assumed compatible).
fn broadcast(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    let at = |s: &[usize], d: usize| match d + s.len() >= r {
        true => s[d + s.len() - r],
        false => 1,
    };
    (0..r).map(|d| at(a, d).max(at(b, d))).collect()
}

/// The flat position, in an operand of `shape`, of element `idx` of a result it was
/// broadcast into (dims aligned right; size-1 dims always read element 0).
fn broadcast_offset(idx: &[usize], shape: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    let own: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if n == 1 { 0 } else { idx[lead + d] })
        .collect();
    ravel(&own, shape)
}

// ---------------------------------------------------------------------------------------
// Inputs: shapes, strided views, values
// ---------------------------------------------------------------------------------------

/// This file's methods of the shared `Arg`.
impl Arg {
    /// The engine's view of `values` stored as `dtype`.
    fn tensor(&self, values: &[f64], dtype: DType) -> Result<Tensor> {
        let stored = self.view.stored_shape(&self.shape);
        self.view
            .apply(&Tensor::from_f64s(values, &stored, dtype, Device::Cpu)?)
    }

    /// Reference: the values the op sees.
    fn read(&self, values: &[f64]) -> Vec<f64> {
        self.view.read(values, &self.shape)
    }
}

/// `k` inputs whose shapes broadcast together.
fn broadcast_args(k: usize) -> impl Strategy<Value = Vec<Arg>> {
    let views = prop::collection::vec(view(), k);
    (broadcast_shapes(k), views, any::<u64>()).prop_map(|(shapes, views, seed)| {
        (shapes.into_iter().zip(views).enumerate())
            .map(|(i, (shape, view))| Arg {
                shape,
                view,
                seed: seed.wrapping_add(i as u64),
            })
            .collect()
    })
}

fn scaled(x: f64) -> f64 {
    2.0 * x
}

/// Asserts `got` has `shape` and matches `want` within `atol + rtol·|want|`.
fn assert_close(
    what: &str,
    got: &Tensor,
    shape: &[usize],
    want: &[f64],
    rtol: f64,
    atol: f64,
) -> TestResult {
    prop_assert_eq!(got.shape(), shape, "{}: shape", what);
    let got = got.to_vec_f64()?;
    prop_assert_eq!(got.len(), want.len(), "{}: length", what);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        prop_assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g:e}, want {w:e}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reference formulas
// ---------------------------------------------------------------------------------------

/// erf x = (2/√π)·e^{−x²}·Σ_{n≥0} 2ⁿx^{2n+1}/(1·3·…·(2n+1)). Every term has x's sign, so
/// the series has no cancellation and is accurate to ~1e-15 relative up to |x| = 6,
/// beyond which erf x rounds to ±1 (erfc 6 ≈ 2e-17).
fn erf(x: f64) -> f64 {
    if x.abs() >= 6.0 {
        return x.signum();
    }
    let (mut term, mut sum) = (x, x);
    for n in 1.. {
        term *= 2.0 * x * x / (2 * n + 1) as f64;
        sum += term;
        if term.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    2.0 / PI.sqrt() * (-x * x).exp() * sum
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / 2f64.sqrt()))
}

/// A unary op: name, input domain, the engine's op, the reference formula.
type Unary = (
    &'static str,
    fn(f64) -> f64,
    fn(&Tensor) -> Result<Tensor>,
    fn(f64) -> f64,
);

const UNARY: &[Unary] = &[
    ("neg", scaled, |x| x.neg(), |x| -x),
    ("exp", scaled, |x| x.exp(), f64::exp),
    ("log", positive, |x| x.log(), f64::ln),
    ("sqrt", positive, |x| x.sqrt(), f64::sqrt),
    ("rsqrt", positive, |x| x.rsqrt(), |x| 1.0 / x.sqrt()),
    ("recip", nonzero, |x| x.recip(), |x| 1.0 / x),
    ("square", scaled, |x| x.square(), |x| x * x),
    ("powf(2.5)", positive, |x| x.powf(2.5), |x| x.powf(2.5)),
    ("powf(-1.5)", positive, |x| x.powf(-1.5), |x| x.powf(-1.5)),
    ("abs", scaled, |x| x.abs(), f64::abs),
    ("sin", scaled, |x| x.sin(), f64::sin),
    ("cos", scaled, |x| x.cos(), f64::cos),
    ("tanh", scaled, |x| x.tanh(), f64::tanh),
    ("sigmoid", scaled, |x| x.sigmoid(), sigmoid),
    ("relu", scaled, |x| x.relu(), |x| x.max(0.0)),
    ("gelu", scaled, |x| x.gelu(), gelu_tanh),
    ("gelu_erf", scaled, |x| x.gelu_erf(), gelu_erf),
    ("silu", scaled, |x| x.silu(), |x| x * sigmoid(x)),
    (
        "clamp",
        scaled,
        |x| x.clamp(-0.7, 1.2),
        |x| x.clamp(-0.7, 1.2),
    ),
    (
        "affine",
        scaled,
        |x| x.affine(-1.5, 0.25),
        |x| -1.5 * x + 0.25,
    ),
];

/// A binary op: name, the engine's op, the reference formula.
type Binary = (
    &'static str,
    fn(&Tensor, &Tensor) -> Result<Tensor>,
    fn(f64, f64) -> f64,
);

const BINARY: &[Binary] = &[
    ("add", |a, b| a.add(b), |a, b| a + b),
    ("sub", |a, b| a.sub(b), |a, b| a - b),
    ("mul", |a, b| a.mul(b), |a, b| a * b),
    ("div", |a, b| a.div(b), |a, b| a / b),
    ("maximum", |a, b| a.maximum(b), f64::max),
    ("minimum", |a, b| a.minimum(b), f64::min),
];

/// Reference of a broadcast binary map: the result's shape and values.
fn zip_broadcast(
    (a, sa): (&[f64], &[usize]),
    (b, sb): (&[f64], &[usize]),
    f: impl Fn(f64, f64) -> f64,
) -> (Vec<usize>, Vec<f64>) {
    let shape = broadcast(sa, sb);
    let n = shape.iter().product();
    let values = (0..n)
        .map(|i| {
            let idx = unravel(i, &shape);
            f(a[broadcast_offset(&idx, sa)], b[broadcast_offset(&idx, sb)])
        })
        .collect();
    (shape, values)
}

/// The values of each output of a reduction over `dims` (non-negative) of `x` (of
/// `shape`), in output order, and the keep-dim output shape.
fn groups(x: &[f64], shape: &[usize], dims: &[usize]) -> (Vec<Vec<f64>>, Vec<usize>) {
    let mut out_shape = shape.to_vec();
    dims.iter().for_each(|&d| out_shape[d] = 1);
    let mut groups = vec![Vec::new(); out_shape.iter().product()];
    for (i, &v) in x.iter().enumerate() {
        let mut idx = unravel(i, shape);
        dims.iter().for_each(|&d| idx[d] = 0);
        groups[ravel(&idx, &out_shape)].push(v);
    }
    (groups, out_shape)
}

fn sum(g: &[f64]) -> f64 {
    g.iter().sum()
}

fn mean(g: &[f64]) -> f64 {
    sum(g) / g.len() as f64
}

fn var(g: &[f64], correction: usize) -> f64 {
    let m = mean(g);
    g.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (g.len() - correction) as f64
}

fn logsumexp(g: &[f64]) -> f64 {
    let m = g.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + g.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

// ---------------------------------------------------------------------------------------
// Storage precision of bf16 and f16
// ---------------------------------------------------------------------------------------

/// Explicit mantissa bits and smallest normal exponent of a float dtype.
fn format(dtype: DType) -> (i32, i32) {
    match dtype {
        DType::BF16 => (7, -126),
        DType::F16 => (10, -14),
        DType::F32 => (23, -126),
        _ => (52, -1022),
    }
}

/// The spacing of `dtype`'s values around `x` (subnormal spacing below the normals).
fn ulp(x: f64, dtype: DType) -> f64 {
    let (mantissa, min_exp) = format(dtype);
    let exp = ((x.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023;
    2f64.powi(exp.max(min_exp) - mantissa)
}

/// `x` rounded to the nearest value of `dtype` (ties to even).
fn round_to(x: f64, dtype: DType) -> f64 {
    let q = ulp(x, dtype);
    (x / q).round_ties_even() * q
}

/// A value `ulp·2^-k` from the tie between `x`'s nearest `dtype` value `q` and the next
/// one up, on the side of the odd one of the two: correctly rounded it goes to the odd
/// neighbour, while a cast that loses the `2^-k` (truncating first, or rounding to a
/// wider intermediate) sees a tie and picks the even one.
fn near_tie(x: f64, dtype: DType, k: i32) -> f64 {
    let q = round_to(x, dtype);
    let u = ulp(q, dtype);
    let q_even = ((q / u).round() as i64).rem_euclid(2) == 0;
    let side = if q_even { 1.0 } else { -1.0 };
    q + u / 2.0 + side * u * 2f64.powi(-k)
}

/// Asserts that each `got` is a nearest `dtype` value to the f32 result `want`.
fn assert_rounded(what: &str, got: &Tensor, want: &Tensor, dtype: DType) -> TestResult {
    prop_assert_eq!(got.dtype(), dtype, "{}: dtype", what);
    prop_assert_eq!(got.shape(), want.shape(), "{}: shape", what);
    let (got, want) = (got.to_vec_f64()?, want.to_vec_f64()?);
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        prop_assert!(
            (g - w).abs() <= 0.5 * ulp(w, dtype),
            "{what} in {dtype}: element {i}: got {g:e}, f32 result {w:e}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(32))]

    /// Every unary op in f64 against its formula, on a possibly strided view.
    #[test]
    fn forward_unary_matches_reference(a in arg_of(shape(0, 3))) {
        for &(name, domain, op, reference) in UNARY {
            let values = a.values(domain);
            let got = op(&a.tensor(&values, DType::F64)?)?;
            let want: Vec<f64> = a.read(&values).into_iter().map(reference).collect();
            // gelu_erf: the reference erf differs from libm's by ~1e-15, which
            // 1 + erf turns into an absolute error for large negative x.
            assert_close(name, &got, &a.shape, &want, 1e-12, 1e-13)?;
        }
    }

    /// Every binary op in f64 with broadcasting (either side), on strided views.
    #[test]
    fn forward_binary_broadcast_matches_reference(args in broadcast_args(2)) {
        let (a, b) = (&args[0], &args[1]);
        let va = a.values(scaled);
        let vb = b.values(nonzero);
        let (ta, tb) = (a.tensor(&va, DType::F64)?, b.tensor(&vb, DType::F64)?);
        let (ra, rb) = (a.read(&va), b.read(&vb));
        for &(name, op, reference) in BINARY {
            let (shape, want) = zip_broadcast((&ra, &a.shape), (&rb, &b.shape), reference);
            assert_close(name, &op(&ta, &tb)?, &shape, &want, 1e-15, 0.0)?;
            // Swapped operands broadcast the other way round.
            let (_, want) = zip_broadcast((&rb, &b.shape), (&ra, &a.shape), reference);
            assert_close(name, &op(&tb, &ta)?, &shape, &want, 1e-15, 0.0)?;
        }
    }

    /// sum, mean, max, min, var, logsumexp over random dims (negative, unordered),
    /// with and without keepdim, plus sum_all and mean_all.
    #[test]
    fn forward_reductions_match_reference(r in reduction()) {
        let values = r.arg.values(scaled);
        let x = r.arg.tensor(&values, DType::F64)?;
        let read = r.arg.read(&values);
        let (groups, keep) = groups(&read, &r.arg.shape, &r.dims());
        let shape = r.out_shape(&keep);
        let (d, k) = (r.dims.as_slice(), r.keepdim);
        // Sums may be accumulated in another order: tolerance relative to Σ|x|.
        let scale = read.iter().map(|x| x.abs()).sum::<f64>();
        let atol = 1e-14 * (1.0 + scale);
        let each = |f: fn(&[f64]) -> f64| groups.iter().map(|g| f(g)).collect::<Vec<_>>();
        assert_close("sum", &x.sum(d, k)?, &shape, &each(sum), 0.0, atol)?;
        assert_close("mean", &x.mean(d, k)?, &shape, &each(mean), 1e-14, atol)?;
        let max = |g: &[f64]| g.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = |g: &[f64]| g.iter().copied().fold(f64::INFINITY, f64::min);
        assert_close("max", &x.max(d, k)?, &shape, &each(max), 0.0, 0.0)?;
        assert_close("min", &x.min(d, k)?, &shape, &each(min), 0.0, 0.0)?;
        let lse = x.logsumexp(d, k)?;
        assert_close("logsumexp", &lse, &shape, &each(logsumexp), 1e-13, atol)?;
        let var0 = x.var(d, 0, k)?;
        assert_close("var(0)", &var0, &shape, &each(|g| var(g, 0)), 1e-12, atol)?;
        if groups[0].len() > 1 {
            let var1 = x.var(d, 1, k)?;
            assert_close("var(1)", &var1, &shape, &each(|g| var(g, 1)), 1e-12, atol)?;
        } else {
            prop_assert!(x.var(d, 1, k).is_err(), "var(1) of one element must fail");
        }
        assert_close("sum_all", &x.sum_all()?, &[], &[sum(&read)], 0.0, atol)?;
        assert_close("mean_all", &x.mean_all()?, &[], &[mean(&read)], 1e-14, atol)?;
    }

    /// bf16 and f16 are storage types computed in f32: each primitive op's result is
    /// the f32 result rounded to the storage type, and the f32 result itself matches
    /// the f64 reference to f32 precision.
    #[test]
    fn forward_bf16_f16_compute_in_f32(
        args in broadcast_args(2),
        r in reduction(),
        dtype in prop_oneof![Just(DType::BF16), Just(DType::F16)],
    ) {
        let (a, b) = (&args[0], &args[1]);
        // Inputs representable in the storage type, so all dtypes see the same values.
        let exact = |v: Vec<f64>| v.into_iter().map(|x| round_to(x, dtype)).collect::<Vec<_>>();
        let (va, vb) = (exact(a.values(scaled)), exact(b.values(nonzero)));

        // Storing representable values is exact.
        assert_close("store", &a.tensor(&va, dtype)?, &a.shape, &a.read(&va), 0.0, 0.0)?;

        for &(name, domain, op, reference) in UNARY {
            let v = exact(a.values(domain));
            let (low, wide) = (a.tensor(&v, dtype)?, a.tensor(&v, DType::F32)?);
            let f32_result = op(&wide)?;
            let want: Vec<f64> = a.read(&v).into_iter().map(reference).collect();
            assert_close(name, &f32_result, &a.shape, &want, 1e-6, 1e-6)?;
            assert_rounded(name, &op(&low)?, &f32_result, dtype)?;
        }

        let (la, lb) = (a.tensor(&va, dtype)?, b.tensor(&vb, dtype)?);
        let (wa, wb) = (a.tensor(&va, DType::F32)?, b.tensor(&vb, DType::F32)?);
        for &(name, op, reference) in BINARY {
            let f32_result = op(&wa, &wb)?;
            let (shape, want) =
                zip_broadcast((&a.read(&va), &a.shape), (&b.read(&vb), &b.shape), reference);
            assert_close(name, &f32_result, &shape, &want, 1e-6, 0.0)?;
            assert_rounded(name, &op(&la, &lb)?, &f32_result, dtype)?;
        }

        let v = exact(r.arg.values(scaled));
        let (low, wide) = (r.arg.tensor(&v, dtype)?, r.arg.tensor(&v, DType::F32)?);
        let (d, k) = (r.dims.as_slice(), r.keepdim);
        let (groups, keep) = groups(&r.arg.read(&v), &r.arg.shape, &r.dims());
        let shape = r.out_shape(&keep);
        let atol = 1e-6 * (1.0 + v.iter().map(|x| x.abs()).sum::<f64>());
        let want: Vec<f64> = groups.iter().map(|g| sum(g)).collect();
        assert_close("sum", &wide.sum(d, k)?, &shape, &want, 0.0, atol)?;
        assert_rounded("sum", &low.sum(d, k)?, &wide.sum(d, k)?, dtype)?;
        assert_rounded("max", &low.max(d, k)?, &wide.max(d, k)?, dtype)?;
        assert_rounded("min", &low.min(d, k)?, &wide.min(d, k)?, dtype)?;
    }

    /// Casts round to the nearest value of the target dtype (ties to even), from f64
    /// and from f32 sources on strided views: random values, and values a hair
    /// (2^-k of a bf16/f16 spacing) off a tie (see `near_tie`). Widening casts are exact.
    #[test]
    fn forward_casts_round_to_nearest(a in arg_of(shape(1, 3))) {
        let raw = a.values(scaled);
        let mut failures = Vec::new();
        for src in [DType::F64, DType::F32] {
            // The source values, exactly as the source dtype holds them.
            let held = |v: Vec<f64>| match src {
                DType::F32 => v.into_iter().map(|x| x as f32 as f64).collect::<Vec<_>>(),
                _ => v,
            };
            for dst in [DType::BF16, DType::F16] {
                let near = [12, 14, 16].map(|k| {
                    held(raw.iter().map(|&x| near_tie(x, dst, k)).collect())
                });
                for v in std::iter::once(held(raw.clone())).chain(near) {
                    let got = a.tensor(&v, src)?.to_dtype(dst)?;
                    prop_assert_eq!(got.dtype(), dst);
                    let got = got.to_vec_f64()?;
                    let wrong = (a.read(&v).into_iter().zip(got))
                        .find(|&(x, g)| g != round_to(x, dst));
                    if let Some((x, g)) = wrong {
                        let want = round_to(x, dst);
                        failures.push(format!("{src} {x:e} -> {dst}: got {g:e}, nearest {want:e}"));
                        break;
                    }
                }
            }
        }
        prop_assert!(failures.is_empty(), "{}", failures.join("\n"));

        // f64 -> f32 rounds to nearest; widening casts are exact.
        let to_f32 = a.tensor(&raw, DType::F64)?.to_dtype(DType::F32)?;
        let want: Vec<f64> = a.read(&raw).into_iter().map(|x| x as f32 as f64).collect();
        assert_close("f64 -> f32", &to_f32, &a.shape, &want, 0.0, 0.0)?;
        for (src, dst) in [
            (DType::BF16, DType::F32),
            (DType::BF16, DType::F64),
            (DType::F16, DType::F32),
            (DType::F16, DType::F64),
            (DType::F32, DType::F64),
        ] {
            let v: Vec<f64> = raw.iter().map(|&x| round_to(x, src)).collect();
            let got = a.tensor(&v, src)?.to_dtype(dst)?;
            prop_assert_eq!(got.dtype(), dst);
            assert_close(&format!("{src} -> {dst}"), &got, &a.shape, &a.read(&v), 0.0, 0.0)?;
        }
    }

    /// Comparisons give 1/0 masks of the operands' dtype (broadcasting, strided views,
    /// with equal values present); where_cond picks `on_true` wherever the mask is
    /// non-zero (not only 1), all three broadcast together.
    #[test]
    fn forward_comparisons_and_where(pair in broadcast_args(2), three in broadcast_args(3)) {
        // A coarse grid, so that equal values occur.
        let coarse = |x: f64| (2.0 * x).round() / 2.0;
        let (a, b) = (&pair[0], &pair[1]);
        let (va, vb) = (a.values(coarse), b.values(coarse));
        let (ta, tb) = (a.tensor(&va, DType::F64)?, b.tensor(&vb, DType::F64)?);
        let (ra, rb) = (a.read(&va), b.read(&vb));
        type Cmp = (&'static str, fn(&Tensor, &Tensor) -> Result<Tensor>, fn(f64, f64) -> bool);
        let cmps: [Cmp; 6] = [
            ("eq", |a, b| a.eq(b), |a, b| a == b),
            ("ne", |a, b| a.ne(b), |a, b| a != b),
            ("lt", |a, b| a.lt(b), |a, b| a < b),
            ("le", |a, b| a.le(b), |a, b| a <= b),
            ("gt", |a, b| a.gt(b), |a, b| a > b),
            ("ge", |a, b| a.ge(b), |a, b| a >= b),
        ];
        for (name, op, reference) in cmps {
            let got = op(&ta, &tb)?;
            prop_assert_eq!(got.dtype(), DType::F64);
            let bit = |x, y| if reference(x, y) { 1.0 } else { 0.0 };
            let (shape, want) = zip_broadcast((&ra, &a.shape), (&rb, &b.shape), bit);
            assert_close(name, &got, &shape, &want, 0.0, 0.0)?;
        }

        // Mask values on the coarse grid: zeros and non-zeros of either sign.
        let (m, t, f) = (&three[0], &three[1], &three[2]);
        let (vm, vt, vf) = (m.values(coarse), t.values(scaled), f.values(scaled));
        let got = m.tensor(&vm, DType::F64)?
            .where_cond(&t.tensor(&vt, DType::F64)?, &f.tensor(&vf, DType::F64)?)?;
        let shape = broadcast(&broadcast(&m.shape, &t.shape), &f.shape);
        let (rm, rt, rf) = (m.read(&vm), t.read(&vt), f.read(&vf));
        let want: Vec<f64> = (0..shape.iter().product())
            .map(|i| {
                let idx = unravel(i, &shape);
                match rm[broadcast_offset(&idx, &m.shape)] != 0.0 {
                    true => rt[broadcast_offset(&idx, &t.shape)],
                    false => rf[broadcast_offset(&idx, &f.shape)],
                }
            })
            .collect();
        assert_close("where_cond", &got, &shape, &want, 0.0, 0.0)?;
    }

    /// `x + a·b` with all three broadcast together, against index arithmetic.
    #[test]
    fn forward_addcmul_matches_reference(three in broadcast_args(3)) {
        let (x, a, b) = (&three[0], &three[1], &three[2]);
        let (vx, va, vb) = (x.values(scaled), a.values(scaled), b.values(scaled));
        let got = x.tensor(&vx, DType::F64)?
            .addcmul(&a.tensor(&va, DType::F64)?, &b.tensor(&vb, DType::F64)?)?;
        let shape = broadcast(&broadcast(&x.shape, &a.shape), &b.shape);
        let (rx, ra, rb) = (x.read(&vx), a.read(&va), b.read(&vb));
        let want: Vec<f64> = (0..shape.iter().product())
            .map(|i| {
                let idx = unravel(i, &shape);
                let at = |r: &[f64], s: &[usize]| r[broadcast_offset(&idx, s)];
                at(&rx, &x.shape) + at(&ra, &a.shape) * at(&rb, &b.shape)
            })
            .collect();
        assert_close("addcmul", &got, &shape, &want, 1e-15, 1e-300)?;
    }
}

/// The in-place moving-average update is the two-op formula
/// `online + (avg − online)·decay` bit for bit, for a contiguous f32 online tensor
/// (read in place) and a transposed bf16 one (converted), below and above the size
/// at which it runs in parallel.
#[test]
fn ema_update_is_the_two_op_formula_bit_for_bit() -> Result<()> {
    let mut gen = twinflow_engine::Generator::new(7);
    for (rows, cols) in [(7, 9), (300, 257)] {
        for dtype in [DType::F32, DType::BF16] {
            let avg = gen.randn(&[rows, cols], DType::F32, Device::Cpu)?;
            let online = gen.randn(&[cols, rows], dtype, Device::Cpu)?.t()?;
            let decay = Tensor::scalar(0.97, DType::F32, Device::Cpu)?;
            let online32 = online.to_dtype(DType::F32)?;
            let want = online32.addcmul(&avg.sub(&online32)?, &decay)?;
            avg.ema_update(&online, 0.97)?;
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.to_vec::<f32>()?.iter().map(|v| v.to_bits()).collect())
            };
            assert_eq!(bits(&avg)?, bits(&want)?, "{rows}x{cols} {dtype:?}");
        }
    }
    Ok(())
}

/// The multi-tensor step gives each parameter the bits of its own `adam_update` (its
/// own step count and hyper-parameters; small and large parameters, a transposed
/// gradient among contiguous ones); a gradient that views another listed
/// parameter is read before that parameter is written; a tensor written twice is
/// refused, naming its shape.
#[test]
fn adam_update_many_steps_each_as_alone() -> Result<()> {
    let mut gen = twinflow_engine::Generator::new(9);
    let plain = common::adamw_step();
    let shapes = [vec![3, 5], vec![0], vec![300, 257], vec![1]];
    let fresh = |gen: &mut twinflow_engine::Generator| -> Result<Vec<[Tensor; 4]>> {
        let mut out = Vec::new();
        for s in &shapes {
            // One gradient a transposed view, which the step reads through a copy.
            let g = match s[..] {
                [rows, cols] if rows > 100 => {
                    gen.randn(&[cols, rows], DType::F32, Device::Cpu)?.t()?
                }
                _ => gen.randn(s, DType::F32, Device::Cpu)?,
            };
            out.push([
                gen.randn(s, DType::F32, Device::Cpu)?,
                g,
                gen.randn(s, DType::F32, Device::Cpu)?,
                gen.uniform(s, 0.5, 2.0, DType::F32, Device::Cpu)?,
            ]);
        }
        Ok(out)
    };
    let step = |i: usize| twinflow_engine::AdamStep {
        step: 1 + i as u64,
        lr: plain.lr * (1.0 + i as f64),
        ..plain
    };
    let bits = |t: &Tensor| {
        t.to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    let alone = fresh(&mut twinflow_engine::Generator::new(10))?;
    for (i, [p, g, m, v]) in alone.iter().enumerate() {
        p.adam_update(g, m, v, &step(i))?;
    }
    let listed = fresh(&mut twinflow_engine::Generator::new(10))?;
    let list = common::adam_list(&listed, step);
    Tensor::adam_update_many(&list)?;
    for (i, (a, b)) in alone.iter().zip(&listed).enumerate() {
        for k in [0, 2, 3] {
            assert_eq!(bits(&a[k]), bits(&b[k]), "tensor {i}, buffer {k}");
        }
    }

    // The second parameter's gradient is the first parameter itself.
    let [a, b] = [fresh(&mut gen)?, fresh(&mut gen)?].map(|mut t| t.swap_remove(0));
    let copy = |t: &Tensor| Tensor::from_vec(t.to_vec::<f32>()?, t.shape(), Device::Cpu);
    let [want, wm, wv] = [copy(&b[0])?, copy(&b[2])?, copy(&b[3])?];
    want.adam_update(&copy(&a[0])?, &wm, &wv, &plain)?;
    let list = [
        AdamTensors {
            param: &a[0],
            grad: &a[1],
            exp_avg: &a[2],
            exp_avg_sq: &a[3],
            step: plain,
        },
        AdamTensors {
            param: &b[0],
            grad: &a[0],
            exp_avg: &b[2],
            exp_avg_sq: &b[3],
            step: plain,
        },
    ];
    Tensor::adam_update_many(&list)?;
    assert_eq!(
        bits(&b[0]),
        bits(&want),
        "gradient read before its storage was written"
    );

    let twice = [
        list[0],
        AdamTensors {
            grad: &b[1],
            ..list[0]
        },
    ];
    let err = Tensor::adam_update_many(&twice).unwrap_err().to_string();
    assert!(
        err.contains("listed twice") && err.contains("[3, 5]"),
        "{err}"
    );
    Ok(())
}

/// The in-place Adam update reads a contiguous f32 gradient where it lies and converts
/// any other (a transposed view, bf16): the same parameters and moments bit for bit as
/// from a contiguous f32 copy, below and above the size at which it runs in parallel.
#[test]
fn adam_update_reads_any_gradient_view_alike() -> Result<()> {
    let mut gen = twinflow_engine::Generator::new(8);
    let step = common::adamw_step();
    for (rows, cols) in [(7, 9), (300, 257)] {
        let start = [
            gen.randn(&[rows, cols], DType::F32, Device::Cpu)?,
            gen.randn(&[rows, cols], DType::F32, Device::Cpu)?,
            gen.uniform(&[rows, cols], 0.5, 2.0, DType::F32, Device::Cpu)?,
        ];
        let bits = |grad: &Tensor| -> Result<Vec<Vec<u32>>> {
            let copy =
                |t: &Tensor| Tensor::from_vec(t.to_vec::<f32>().unwrap(), t.shape(), Device::Cpu);
            let [p, m, v] = [copy(&start[0])?, copy(&start[1])?, copy(&start[2])?];
            p.adam_update(grad, &m, &v, &step)?;
            [p, m, v]
                .iter()
                .map(|t| Ok(t.to_vec::<f32>()?.iter().map(|x| x.to_bits()).collect()))
                .collect()
        };
        let transposed = gen.randn(&[cols, rows], DType::F32, Device::Cpu)?.t()?;
        let want = bits(&transposed.contiguous()?)?;
        assert_eq!(bits(&transposed)?, want, "{rows}x{cols} transposed");
        let low = transposed.to_dtype(DType::BF16)?;
        let want = bits(&low.to_dtype(DType::F32)?.contiguous()?)?;
        assert_eq!(bits(&low)?, want, "{rows}x{cols} bf16");
    }
    Ok(())
}
