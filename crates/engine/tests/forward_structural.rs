//! Forward results of the structural and fused ops checked against plain f64 reference
//! loops written here, independent of the engine's kernels: matmul against a triple
//! loop, softmax/norms/losses/attention against their formulas, views and indexing
//! against index arithmetic on the stored (contiguous) data. Non-contiguous operands
//! (transposed, permuted, `[b, t, h, d]` transposed to `[b, h, t, d]`) are drawn
//! throughout; the reference reads them from the stored data by index arithmetic.
//! The last test compares bf16/f16 against f32 and f32 against f64.

use proptest::prelude::*;
use proptest::sample::Index;
use twinflow_engine::{
    gelu_mlp, gelu_mlp_gated, no_grad, prenorm_gelu_mlp_gated, qkv_attention,
    scaled_dot_product_attention, DType, GatedResidual, PreNorm, Tensor,
};

mod common;
use common::{
    config, ids, indices, per_group_shape, randn_vec, ravel, shape, shape_and_perm, swapped,
    tensor, unravel, vals,
};

/// Row-major values and shape of the permutation `perm` of `data` (shape `shape`):
/// dim `i` of the result is dim `perm[i]` of the source.
fn permuted(data: &[f64], shape: &[usize], perm: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let n = data.len();
    let values = (0..n)
        .map(|o| {
            let oi = unravel(o, &out_shape);
            let mut si = vec![0; shape.len()];
            perm.iter().zip(&oi).for_each(|(&p, &i)| si[p] = i);
            data[ravel(&si, shape)]
        })
        .collect();
    (values, out_shape)
}

/// The permutation swapping the last two of `rank` dims.
fn swap_last2(rank: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..rank).collect();
    p.swap(rank - 2, rank - 1);
    p
}

/// Asserts `|got − want| ≤ tol(want, i)` element by element, naming the first miss.
fn assert_close(
    what: &str,
    got: &[f64],
    want: &[f64],
    tol: impl Fn(f64, usize) -> f64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: lengths differ", what);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let t = tol(w, i);
        prop_assert!(
            (g - w).abs() <= t,
            "{}: element {} got {:e}, want {:e} (tolerance {:e})",
            what,
            i,
            g,
            w,
            t
        );
    }
    Ok(())
}

/// Reference matmul with broadcast batch dims, on row-major logical operands; also
/// returns Σ|a||b| per output element (the scale of its rounding error).
fn ref_matmul(
    a: &[f64],
    sa: &[usize],
    b: &[f64],
    sb: &[usize],
) -> (Vec<f64>, Vec<f64>, Vec<usize>) {
    let (ra, rb) = (sa.len(), sb.len());
    let (m, k, n) = (sa[ra - 2], sa[ra - 1], sb[rb - 1]);
    let (ba, bb) = (&sa[..ra - 2], &sb[..rb - 2]);
    let rank = ba.len().max(bb.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(ba), pad(bb));
    let batch: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let nb: usize = batch.iter().product();
    let mut out = vec![0.0; nb * m * n];
    let mut scale = vec![0.0; nb * m * n];
    for bi in 0..nb {
        let idx = unravel(bi, &batch);
        let pick = |p: &[usize]| -> Vec<usize> {
            idx.iter()
                .zip(p)
                .map(|(&i, &d)| if d == 1 { 0 } else { i })
                .collect()
        };
        let (oa, ob) = (
            ravel(&pick(&pa), &pa) * m * k,
            ravel(&pick(&pb), &pb) * k * n,
        );
        for i in 0..m {
            for j in 0..n {
                let (mut acc, mut mag) = (0.0, 0.0);
                for p in 0..k {
                    let (x, y) = (a[oa + i * k + p], b[ob + p * n + j]);
                    acc += x * y;
                    mag += (x * y).abs();
                }
                out[(bi * m + i) * n + j] = acc;
                scale[(bi * m + i) * n + j] = mag;
            }
        }
    }
    let shape = [batch.as_slice(), &[m, n]].concat();
    (out, scale, shape)
}

/// Reference softmax (or log-softmax) over the last dim of row-major `x`.
fn ref_softmax(x: &[f64], d: usize, log: bool) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            row.iter()
                .map(|v| match log {
                    true => v - max - sum.ln(),
                    false => (v - max).exp() / sum,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Reference layer norm (or RMS norm) over the last dim of row-major `x`.
fn ref_norm(
    x: &[f64],
    d: usize,
    w: Option<&[f64]>,
    b: Option<&[f64]>,
    eps: f64,
    rms: bool,
) -> Vec<f64> {
    let rows = x.len() / d;
    // Row i of x takes parameter row i / (rows / parameter rows).
    let param = |p: &[f64], i: usize, k: usize| p[i / (rows / (p.len() / d)) * d + k];
    x.chunks(d)
        .enumerate()
        .flat_map(|(i, row)| {
            let mean = if rms {
                0.0
            } else {
                row.iter().sum::<f64>() / d as f64
            };
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            (0..d)
                .map(|k| {
                    let mut y = (row[k] - mean) * rstd;
                    if let Some(w) = w {
                        y *= param(w, i, k);
                    }
                    if let Some(b) = b {
                        y += param(b, i, k);
                    }
                    y
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Reference attention on row-major `[b, h, t, e]` operands: for each query i, keys
/// j > i are masked when causal (top-left aligned).
#[allow(clippy::too_many_arguments)]
fn ref_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    (bh, tq, tk, d, dv): (usize, usize, usize, usize, usize),
    scale: f64,
    causal: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; bh * tq * dv];
    for p in 0..bh {
        for i in 0..tq {
            let keys = if causal { (i + 1).min(tk) } else { tk };
            let s: Vec<f64> = (0..keys)
                .map(|j| {
                    (0..d)
                        .map(|c| q[(p * tq + i) * d + c] * k[(p * tk + j) * d + c])
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for c in 0..dv {
                out[(p * tq + i) * dv + c] = (0..keys)
                    .map(|j| e[j] / sum * v[(p * tk + j) * dv + c])
                    .sum();
            }
        }
    }
    out
}

/// A shape of over 2^15 elements (where the CPU kernels go parallel) with a
/// permutation of its dims.
fn big_shape_and_perm() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (Just(vec![64, 9, 60]), Just(vec![0, 1, 2]).prop_shuffle())
}

/// A matmul case: stored shapes of a and b, whether each is handed over transposed.
#[derive(Debug, Clone)]
struct MatmulCase {
    sa: Vec<usize>,
    sb: Vec<usize>,
    ta: bool,
    tb: bool,
}

impl MatmulCase {
    /// The logical (row-major) operand values and shapes from stored data.
    fn logical(&self, a: &[f64], b: &[f64]) -> (Vec<f64>, Vec<usize>, Vec<f64>, Vec<usize>) {
        let view = |x: &[f64], s: &[usize], t: bool| match t {
            true => permuted(x, s, &swap_last2(s.len())),
            false => (x.to_vec(), s.to_vec()),
        };
        let (la, lsa) = view(a, &self.sa, self.ta);
        let (lb, lsb) = view(b, &self.sb, self.tb);
        (la, lsa, lb, lsb)
    }

    /// The engine's product of the stored tensors (transposed where drawn).
    fn run(&self, a: &Tensor, b: &Tensor) -> Tensor {
        let a = if self.ta { a.t().unwrap() } else { a.clone() };
        let b = if self.tb { b.t().unwrap() } else { b.clone() };
        a.matmul(&b).expect("matmul")
    }
}

/// 2-D, equal-batch and broadcast-batch products ([b1, 1, m, k] · [b2, k, n] and the
/// other way round), sizes up to 33 to cross the kernel's blocking.
fn matmul_case(max: usize) -> impl Strategy<Value = MatmulCase> {
    (
        0usize..4,
        (1..=max, 1..=max, 1..=max),
        (1usize..=3, 1usize..=3),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(|(kind, (m, k, n), (b1, b2), (ta, tb))| {
            let (ba, bb): (Vec<usize>, Vec<usize>) = match kind {
                0 => (vec![], vec![]),
                1 => (vec![b2], vec![b2]),
                2 => (vec![b1, 1], vec![b2]),
                _ => (vec![b2], vec![b1, 1]),
            };
            let stored = |batch: &[usize], r: usize, c: usize, t: bool| match t {
                true => [batch, &[c, r]].concat(),
                false => [batch, &[r, c]].concat(),
            };
            MatmulCase {
                sa: stored(&ba, m, k, ta),
                sb: stored(&bb, k, n, tb),
                ta,
                tb,
            }
        })
}

proptest! {
    #![proptest_config(config(32))]

    /// Matmul (2-D, batched, broadcast batch, transposed operands) against a triple loop.
    #[test]
    fn forward_matmul_matches_reference(case in matmul_case(33), seed in any::<u64>()) {
        let (a, b) = (randn_vec(seed, &case.sa), randn_vec(seed ^ 1, &case.sb));
        let got = case.run(&tensor(&a, &case.sa, DType::F64), &tensor(&b, &case.sb, DType::F64));
        let (la, lsa, lb, lsb) = case.logical(&a, &b);
        let (want, scale, shape) = ref_matmul(&la, &lsa, &lb, &lsb);
        prop_assert_eq!(got.shape(), shape.as_slice());
        let tol = |_, i: usize| 1e-12 * scale[i] + 1e-300;
        assert_close(&format!("matmul {case:?}"), &vals(&got), &want, tol)?;
    }

    /// The linear layer (`x·wᵀ + b`, the bias added by the product's kernel) on 2-D and
    /// batched inputs, against a plain loop; long inner dims take the split-k path.
    #[test]
    fn forward_linear_matches_reference(
        lead in prop::collection::vec(1usize..=5, 1..=2),
        (k, n) in prop_oneof![3 => (1usize..=40, 1usize..=40), 1 => Just((8192, 16))],
        with_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let rows: usize = lead.iter().product();
        let sx = [lead.as_slice(), &[k]].concat();
        let (x, w, b) = (randn_vec(seed, &sx), randn_vec(seed ^ 1, &[n, k]), randn_vec(seed ^ 2, &[n]));
        let bias = with_bias.then(|| tensor(&b, &[n], DType::F64));
        let got = tensor(&x, &sx, DType::F64)
            .linear(&tensor(&w, &[n, k], DType::F64), bias.as_ref())
            .unwrap();
        let want_shape = [lead.as_slice(), &[n]].concat();
        prop_assert_eq!(got.shape(), want_shape.as_slice());
        let mut want = vec![0.0; rows * n];
        let mut scale = vec![0.0; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let terms = (0..k).map(|i| x[r * k + i] * w[j * k + i]);
                let bias = if with_bias { b[j] } else { 0.0 };
                want[r * n + j] = terms.clone().sum::<f64>() + bias;
                scale[r * n + j] = terms.map(f64::abs).sum::<f64>() + bias.abs();
            }
        }
        assert_close("linear", &vals(&got), &want, |_, i| 1e-12 * scale[i] + 1e-300)?;
    }

    /// f32 products large enough for the AVX-512 kernel (on CPUs that have it; the
    /// `gemm` crate's elsewhere), batched, with transposed operands, and the linear
    /// layer with its bias, against the same products in f64 (always `gemm`'s).
    #[test]
    fn forward_f32_large_products_match_f64(
        (rows, k, n) in (256usize..400, 64usize..160, 33usize..100),
        batch in 1usize..=2,
        (ta, tb) in (any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let stored = |r: usize, c: usize, t: bool| if t { vec![batch, c, r] } else { vec![batch, r, c] };
        let case = MatmulCase { sa: stored(rows, k, ta), sb: stored(k, n, tb), ta, tb };
        let (a, b) = (randn_vec(seed, &case.sa), randn_vec(seed ^ 1, &case.sb));
        let product = |dtype| vals(&case.run(&tensor(&a, &case.sa, dtype), &tensor(&b, &case.sb, dtype)));
        let (la, lsa, lb, lsb) = case.logical(&a, &b);
        let scale = ref_matmul(&la, &lsa, &lb, &lsb).1;
        let tol = |_, i: usize| 1e-5 * scale[i] + 1e-30;
        assert_close("f32 vs f64 matmul", &product(DType::F32), &product(DType::F64), tol)?;

        let sx = [batch, rows, k];
        let (w, bias) = (randn_vec(seed ^ 2, &[n, k]), randn_vec(seed ^ 3, &[n]));
        let linear = |dtype| {
            let bias = tensor(&bias, &[n], dtype);
            vals(&tensor(&a, &sx, dtype).linear(&tensor(&w, &[n, k], dtype), Some(&bias)).unwrap())
        };
        let (want, got) = (linear(DType::F64), linear(DType::F32));
        let scale: Vec<f64> = want.iter().map(|v| v.abs() + (k as f64).sqrt() * 4.0).collect();
        assert_close("f32 vs f64 linear", &got, &want, |_, i| 1e-5 * scale[i])?;
    }

    /// The sum (read in storage order, in parallel pieces) and the sum of squares of
    /// every element of a large permuted view against a plain f64 sum.
    #[test]
    fn forward_full_reductions_of_permuted_views_match_reference(
        (s, perm) in big_shape_and_perm(),
        dtype in prop::sample::select(vec![DType::F32, DType::F64]),
        seed in any::<u64>(),
    ) {
        let data = randn_vec(seed, &s);
        let x = tensor(&data, &s, dtype).permute(&perm).unwrap();
        let every: Vec<isize> = (0..s.len() as isize).collect();
        let sum = x.sum_all().unwrap().item().unwrap();
        let squares = x.sum_product(&x, &every, false).unwrap().item().unwrap();
        let (want_sum, want_squares) = (data.iter().sum::<f64>(), data.iter().map(|v| v * v).sum::<f64>());
        let tol = if dtype == DType::F32 { 1e-4 } else { 1e-10 };
        prop_assert!((sum - want_sum).abs() <= tol * data.len() as f64, "{sum} vs {want_sum}");
        prop_assert!((squares - want_squares).abs() <= tol * want_squares, "{squares} vs {want_squares}");
    }

    /// Softmax and log-softmax over the last dim, of contiguous tensors and permuted
    /// views, with large logits (stability), small and large (parallel) sizes, against
    /// the formula.
    #[test]
    fn forward_softmax_matches_reference(
        (s, perm) in prop_oneof![4 => shape_and_perm(1, 4, 6), 1 => big_shape_and_perm()],
        permuted_view in any::<bool>(),
        scale in prop::sample::select(vec![1.0, 10.0, 300.0]),
        seed in any::<u64>(),
    ) {
        let data: Vec<f64> = randn_vec(seed, &s).iter().map(|v| v * scale).collect();
        let x = tensor(&data, &s, DType::F64);
        let (x, (logical, ls)) = match permuted_view {
            true => (x.permute(&perm).unwrap(), permuted(&data, &s, &perm)),
            false => (x, (data.clone(), s.clone())),
        };
        let d = *ls.last().unwrap();
        let got = x.softmax().unwrap();
        prop_assert_eq!(got.shape(), ls.as_slice());
        assert_close("softmax", &vals(&got), &ref_softmax(&logical, d, false), |_, _| 1e-13)?;
        let got = x.log_softmax().unwrap();
        let want = ref_softmax(&logical, d, true);
        // log-softmax is x − lse: near 0 for a row's largest logit, its rounding error
        // is that of logits of size `scale`, not of the result.
        assert_close("log_softmax", &vals(&got), &want, |w, _| 1e-13 * w.abs().max(scale))?;
    }

    /// Layer norm (with/without weight and bias) and RMS norm (with/without weight), of
    /// contiguous tensors and transposed views, small and large (parallel) sizes, with
    /// parameters `[d]` or one row per group of rows (`grouped` leading dims of x),
    /// against the formula.
    #[test]
    fn forward_norm_matches_reference(
        s in prop_oneof![4 => shape(1, 3, 8), 1 => Just(vec![300, 120]), 1 => Just(vec![40, 49, 24])],
        (with_weight, with_bias) in (any::<bool>(), any::<bool>()),
        transposed in any::<bool>(),
        grouped in 0usize..3,
        eps in prop::sample::select(vec![1e-6, 1e-5, 0.1]),
        offset in -3.0f64..3.0,
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let data: Vec<f64> = randn_vec(seed, &s).iter().map(|v| v + offset).collect();
        let x = tensor(&data, &s, DType::F64);
        let (x, (logical, ls)) = match transposed {
            true => (x.t().unwrap(), permuted(&data, &s, &swap_last2(s.len()))),
            false => (x, (data.clone(), s.clone())),
        };
        let d = *ls.last().unwrap();
        let params = per_group_shape(&ls, grouped);
        let w = randn_vec(seed ^ 1, &params);
        let b = randn_vec(seed ^ 2, &params);
        let (wt, bt) = (tensor(&w, &params, DType::F64), tensor(&b, &params, DType::F64));
        let (wo, bo) = (with_weight.then_some(&wt), with_bias.then_some(&bt));
        let tol = |w: f64, _| 1e-12 * w.abs().max(1.0);

        let got = x.layer_norm(wo, bo, eps).unwrap();
        prop_assert_eq!(got.shape(), ls.as_slice());
        let (wr, br) = (with_weight.then_some(&w[..]), with_bias.then_some(&b[..]));
        let want = ref_norm(&logical, d, wr, br, eps, false);
        assert_close("layer_norm", &vals(&got), &want, tol)?;

        let got = x.rms_norm(wo, eps).unwrap();
        let want = ref_norm(&logical, d, wr, None, eps, true);
        assert_close("rms_norm", &vals(&got), &want, tol)?;
    }

    /// Cross-entropy (logits contiguous or a transposed view, labels in range) and MSE
    /// against their formulas.
    #[test]
    fn forward_loss_matches_reference(
        (n, c) in (1usize..=8, 1usize..=8),
        transposed in any::<bool>(),
        scale in prop::sample::select(vec![1.0, 20.0]),
        seed in any::<u64>(),
    ) {
        let stored = if transposed { [c, n] } else { [n, c] };
        let data: Vec<f64> = randn_vec(seed, &stored).iter().map(|v| v * scale).collect();
        let x = tensor(&data, &stored, DType::F64);
        let (x, logits) = match transposed {
            true => (x.t().unwrap(), permuted(&data, &stored, &[1, 0]).0),
            false => (x, data.clone()),
        };
        let labels = indices(seed, n, c);
        let got = x.cross_entropy(&ids(&labels, &[n])).unwrap();
        prop_assert_eq!(got.shape(), &[] as &[usize]);
        let want = -(0..n)
            .map(|i| {
                let row = &logits[i * c..(i + 1) * c];
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                row[labels[i] as usize] - lse
            })
            .sum::<f64>()
            / n as f64;
        let tol = |w: f64, _| 1e-12 * w.abs().max(1.0);
        let what = format!("cross_entropy labels {labels:?}");
        assert_close(&what, &[got.item().unwrap()], &[want], tol)?;

        let target = randn_vec(seed ^ 1, &[n, c]);
        let got = x.mse(&tensor(&target, &[n, c], DType::F64)).unwrap().item().unwrap();
        let sq: f64 = logits.iter().zip(&target).map(|(a, b)| (a - b).powi(2)).sum();
        assert_close("mse", &[got], &[sq / (n * c) as f64], tol)?;
    }

    /// Attention (causal and not, any tq and tk, default or drawn scale; operands
    /// `[b, h, t, e]` or `[b, t, h, e]` transposed) against naive loops.
    #[test]
    fn forward_attention_matches_reference(
        (b, h) in (1usize..=2, 1usize..=3),
        (tq, tk) in (1usize..=9, 1usize..=9),
        (d, dv) in (1usize..=6, 1usize..=6),
        causal in any::<bool>(),
        scale in prop::option::of(0.1f64..2.0),
        bthd in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Stored as [b, t, h, e] when bthd; the reference reads the [b, h, t, e] order.
        let make = |seed: u64, t: usize, e: usize| {
            let stored = if bthd { vec![b, t, h, e] } else { vec![b, h, t, e] };
            let data = randn_vec(seed, &stored);
            let x = tensor(&data, &stored, DType::F64);
            match bthd {
                true => (x.transpose(1, 2).unwrap(), permuted(&data, &stored, &[0, 2, 1, 3]).0),
                false => (x, data),
            }
        };
        let (q, qv) = make(seed, tq, d);
        let (k, kv) = make(seed ^ 1, tk, d);
        let (v, vv) = make(seed ^ 2, tk, dv);
        let got = scaled_dot_product_attention(&q, &k, &v, scale, causal).unwrap();
        prop_assert_eq!(got.shape(), &[b, h, tq, dv]);
        let s = scale.unwrap_or(1.0 / (d as f64).sqrt());
        let want = ref_attention(&qv, &kv, &vv, (b * h, tq, tk, d, dv), s, causal);
        let what = format!("attention causal={causal} scale={scale:?} bthd={bthd}");
        assert_close(&what, &vals(&got), &want, |_, _| 1e-12)?;
    }

    /// Attention over the three parts of one `[b, t, 3·h·d]` tensor against
    /// [`scaled_dot_product_attention`] on its three head views, heads merged: the same
    /// outputs and the same gradient of the tensor. In f32 the sizes reach the
    /// AVX-512 kernels (the few-keys forward up to 64 keys, the small products) the
    /// f64 checks do not take; the backward writes one gradient there instead of three.
    #[test]
    fn qkv_attention_matches_attention_on_its_parts(
        b in 1usize..=3,
        h in 1usize..=4,
        t in prop_oneof![1usize..=9, 40usize..=70],
        d in prop_oneof![Just(1usize), Just(8), Just(32), Just(64)],
        causal in any::<bool>(),
        f32_dtype in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dtype = if f32_dtype { DType::F32 } else { DType::F64 };
        let width = 3 * h * d;
        let qkv = tensor(&randn_vec(seed, &[b, t, width]), &[b, t, width], dtype)
            .into_variable()
            .unwrap();
        let weights = tensor(&randn_vec(seed ^ 1, &[b, t, h * d]), &[b, t, h * d], dtype);
        let got = qkv_attention(&qkv, h, None, causal).unwrap();
        let part = |i: usize| {
            let x = qkv.narrow(2, i * h * d, h * d)?.reshape(&[b, t, h, d])?;
            x.transpose(1, 2)
        };
        let (q, k, v) = (part(0).unwrap(), part(1).unwrap(), part(2).unwrap());
        let want = scaled_dot_product_attention(&q, &k, &v, None, causal)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape(&[b, t, h * d])
            .unwrap();
        prop_assert_eq!(got.shape(), &[b, t, h * d]);
        let tol = |w: f64, _| if f32_dtype { 1e-5 * w.abs().max(1.0) } else { 1e-12 };
        let what = format!("qkv_attention b={b} h={h} t={t} d={d} causal={causal} {dtype:?}");
        assert_close(&what, &vals(&got), &vals(&want), tol)?;
        let grad_of = |y: &Tensor| {
            let grads = y.mul(&weights)?.sum_all()?.backward()?;
            grads.get(&qkv).cloned().ok_or_else(|| twinflow_engine::Error::Autograd("no grad".into()))
        };
        let (g_got, g_want) = (grad_of(&got).unwrap(), grad_of(&want).unwrap());
        prop_assert_eq!(g_got.shape(), &[b, t, width]);
        assert_close(&format!("{what}, gradient"), &vals(&g_got), &vals(&g_want), tol)?;
    }

    /// `gelu_mlp` against its composition `linear → gelu → linear`: outputs and every
    /// gradient. In f32 with 49 or more rows the products run on the AVX-512 kernel
    /// with the GELU (forward) and its derivative (backward) applied by each task to
    /// its block; the small sizes and f64 apply them in a pass after the product.
    /// Without a graph (no-grad) the same values, within the same tolerance: on that
    /// kernel the block then runs in blocks of rows (`cpu/mlp_rows.rs`), whose sums may
    /// be added in another order than the whole product's (split over the inner
    /// dimension).
    #[test]
    fn gelu_mlp_matches_its_composition(
        rows in prop_oneof![1usize..=8, 49usize..=200],
        (k, hidden, n) in prop_oneof![
            (1usize..=6, 1usize..=9, 1usize..=6),
            (Just(128usize), Just(512usize), Just(128usize)),
            (16usize..=64, 64usize..=300, 8usize..=40),
        ],
        biases in (any::<bool>(), any::<bool>()),
        f32_dtype in any::<bool>(),
        x_tracked in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dtype = if f32_dtype { DType::F32 } else { DType::F64 };
        let var = |seed: u64, shape: &[usize]| {
            tensor(&randn_vec(seed, shape), shape, dtype).into_variable().unwrap()
        };
        // An untracked x takes the backward's other path (not every gradient wanted).
        let x = match x_tracked {
            true => var(seed, &[rows, k]),
            false => tensor(&randn_vec(seed, &[rows, k]), &[rows, k], dtype),
        };
        let (w1, w2) = (var(seed ^ 1, &[hidden, k]), var(seed ^ 2, &[n, hidden]));
        let b1 = biases.0.then(|| var(seed ^ 3, &[hidden]));
        let b2 = biases.1.then(|| var(seed ^ 4, &[n]));
        let weights = tensor(&randn_vec(seed ^ 5, &[rows, n]), &[rows, n], dtype);
        let got = gelu_mlp(&x, (&w1, b1.as_ref()), (&w2, b2.as_ref())).unwrap();
        let want = x
            .linear(&w1, b1.as_ref())
            .and_then(|h| h.gelu())
            .and_then(|a| a.linear(&w2, b2.as_ref()))
            .unwrap();
        // Each output is a sum of `hidden` terms that may cancel: in f32, relative to the
        // output's largest value, as for the gradients below (the fused op and the
        // composition split the inner dimension differently: one block of 512, split-k).
        let scale = vals(&want).iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let tol = |_, _| if f32_dtype { 1e-5 * scale } else { 1e-12 };
        let what = format!("gelu_mlp rows={rows} k={k} hidden={hidden} n={n} {biases:?} {dtype:?}");
        assert_close(&what, &vals(&got), &vals(&want), tol)?;
        // Without a graph the GELU runs in place of the pre-activation: same values.
        let untracked = no_grad(|| gelu_mlp(&x, (&w1, b1.as_ref()), (&w2, b2.as_ref()))).unwrap();
        prop_assert!(!untracked.requires_grad());
        assert_close(&format!("{what} without a graph"), &vals(&untracked), &vals(&got), tol)?;
        let mut params = vec![&w1, &w2];
        params.extend(x_tracked.then_some(&x));
        params.extend(b1.as_ref());
        params.extend(b2.as_ref());
        let grads = |y: &Tensor| y.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (g_got, g_want) = (grads(&got), grads(&want));
        // Gradients are sums over up to `rows` and `hidden` terms that cancel: in f32,
        // relative to the gradient's largest value (the backward in row blocks adds
        // them in another order than the composition's products).
        for (i, p) in params.iter().enumerate() {
            let (a, b) = (vals(g_got.get(p).unwrap()), vals(g_want.get(p).unwrap()));
            let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let tol = |_, _| if f32_dtype { 1e-5 * scale } else { 1e-12 };
            assert_close(&format!("{what}, gradient {i}"), &a, &b, tol)?;
        }
    }

    /// The gated residuals `stream + gate·layer(x)` without a graph (the add in the
    /// layer's last product, for a gate of one row per sample or one for all) against
    /// `addcmul` after the layer, for `linear` and `gelu_mlp`, the gate and x possibly
    /// strided views. In f32 with 49 or more rows the products run on the AVX-512
    /// kernel, whose tasks may start and end inside rows; the layer's own products may
    /// split their sums differently there (relative tolerance), the add is the same.
    #[test]
    fn gated_residual_layers_match_their_composition(
        (b, t) in prop_oneof![(1usize..=3, 1usize..=4), (2usize..=8, 25usize..=60)],
        (k, hidden, n) in prop_oneof![
            (1usize..=6, 1usize..=9, 1usize..=6),
            (Just(128usize), Just(512usize), Just(128usize)),
            (16usize..=64, 64usize..=300, 8usize..=40),
        ],
        (gate_per_sample, gate_strided, bias) in (any::<bool>(), any::<bool>(), any::<bool>()),
        f32_dtype in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dtype = if f32_dtype { DType::F32 } else { DType::F64 };
        let make = |seed: u64, shape: &[usize]| tensor(&randn_vec(seed, shape), shape, dtype);
        let x = make(seed, &[b, t, k]);
        let (w1, w2) = (make(seed ^ 1, &[hidden, k]), make(seed ^ 2, &[n, hidden]));
        let (b1, b2) = (make(seed ^ 3, &[hidden]), make(seed ^ 4, &[n]));
        let w_linear = make(seed ^ 7, &[n, k]);
        let stream = make(seed ^ 5, &[b, t, n]);
        // A strided gate, as a DiT's: one of the chunks of a wider modulation output.
        let gate_rows = if gate_per_sample { b } else { 1 };
        let wide = make(seed ^ 6, &[gate_rows, 1, 2 * n]);
        let gate = match gate_strided {
            true => wide.narrow(2, n, n).unwrap(),
            false => wide.narrow(2, 0, n).unwrap().contiguous().unwrap(),
        };
        let gate = if gate_per_sample { gate } else { gate.reshape(&[n]).unwrap() };
        let residual = GatedResidual { stream: &stream, gate: &gate };
        let (b1, b2) = (bias.then_some(&b1), bias.then_some(&b2));
        let what = format!("b={b} t={t} k={k} hidden={hidden} n={n} gate {:?} {dtype:?}", gate.shape());
        let check = |name: &str, got: Tensor, layer: Tensor| -> Result<(), TestCaseError> {
            let want = stream.addcmul(&gate, &layer).unwrap();
            let scale = vals(&want).iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let tol = |_, _| if f32_dtype { 1e-5 * scale } else { 1e-12 };
            prop_assert_eq!(got.shape(), want.shape());
            assert_close(&format!("{name} {what}"), &vals(&got), &vals(&want), tol)
        };
        no_grad(|| -> Result<(), TestCaseError> {
            let got = x.linear_gated(&w_linear, b2, residual).unwrap();
            check("linear_gated", got, x.linear(&w_linear, b2).unwrap())?;
            let got = gelu_mlp_gated(&x, (&w1, b1), (&w2, b2), residual).unwrap();
            check("gelu_mlp_gated", got, gelu_mlp(&x, (&w1, b1), (&w2, b2)).unwrap())
        })?;
        // The pre-norm branch x + gate·mlp(LN(x)·w + b): its stream is x, so fc2 maps
        // back to k; the norm's parameters per sample (a DiT's modulation) or shared,
        // or absent.
        let w2k = make(seed ^ 9, &[k, hidden]);
        let b2k = bias.then(|| make(seed ^ 10, &[k]));
        let params = if gate_per_sample { vec![b, 1, k] } else { vec![k] };
        let (nw, nb) = (make(seed ^ 11, &params), make(seed ^ 12, &params));
        let gate_k = make(seed ^ 13, &[b, 1, k]);
        let norm = PreNorm { weight: Some(&nw), bias: bias.then_some(&nb), eps: 1e-6 };
        let fc2 = (&w2k, b2k.as_ref());
        let got = no_grad(|| prenorm_gelu_mlp_gated(&x, norm, (&w1, b1), fc2, &gate_k)).unwrap();
        let normed = x.layer_norm(norm.weight, norm.bias, norm.eps).unwrap();
        let want = x.addcmul(&gate_k, &gelu_mlp(&normed, (&w1, b1), fc2).unwrap()).unwrap();
        let scale = vals(&want).iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let tol = |_, _| if f32_dtype { 1e-5 * scale } else { 1e-12 };
        let name = format!("prenorm_gelu_mlp_gated {what} norm {params:?}");
        assert_close(&name, &vals(&got), &vals(&want), tol)?;
    }

    /// cat (operands optionally transposed views) and stack against index arithmetic.
    #[test]
    fn forward_cat_stack_matches_reference(
        base in shape(1, 3, 4),
        sizes in prop::collection::vec(1usize..=4, 1..=4),
        transposed in prop::collection::vec(any::<bool>(), 4),
        shifts in prop::collection::vec(0usize..3, 4),
        dim in any::<Index>(),
        neg in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let rank = base.len();
        let d = dim.index(rank);
        let sdim = if neg { d as isize - rank as isize } else { d as isize };
        // cat: part i has size sizes[i] along d; stored transposed where drawn, and
        // `shifts[i]` values into a larger storage (a contiguous view at an offset).
        let mut parts = Vec::new();
        let mut logical = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let mut s = base.clone();
            s[d] = n;
            let t = transposed[i] && rank >= 2;
            let stored = if t { swapped(&s) } else { s.clone() };
            let data = randn_vec(seed.wrapping_add(i as u64), &stored);
            let padded: Vec<f64> = vec![7.0; shifts[i]].into_iter().chain(data.iter().copied()).collect();
            let x = tensor(&padded, &[padded.len()], DType::F64)
                .narrow(0, shifts[i], data.len())
                .unwrap()
                .reshape(&stored)
                .unwrap();
            parts.push(if t { x.t().unwrap() } else { x });
            logical.push(if t { permuted(&data, &stored, &swap_last2(rank)).0 } else { data });
        }
        let got = Tensor::cat(&parts.iter().collect::<Vec<_>>(), sdim).unwrap();
        let mut out_shape = base.clone();
        out_shape[d] = sizes.iter().sum();
        prop_assert_eq!(got.shape(), out_shape.as_slice());
        let want: Vec<f64> = (0..out_shape.iter().product())
            .map(|o| {
                let mut idx = unravel(o, &out_shape);
                let mut part = 0;
                while idx[d] >= sizes[part] {
                    idx[d] -= sizes[part];
                    part += 1;
                }
                let mut s = base.clone();
                s[d] = sizes[part];
                logical[part][ravel(&idx, &s)]
            })
            .collect();
        assert_close(&format!("cat {sizes:?} along {sdim}"), &vals(&got), &want, |_, _| 0.0)?;

        // stack: base-shaped tensors (transposed views where drawn) along a new dim.
        let stacked: Vec<(Tensor, Vec<f64>)> = (0..sizes.len())
            .map(|i| {
                let t = transposed[i] && rank >= 2;
                let stored = if t { swapped(&base) } else { base.clone() };
                let data = randn_vec(seed ^ (100 + i as u64), &stored);
                let x = tensor(&data, &stored, DType::F64);
                match t {
                    true => (x.t().unwrap(), permuted(&data, &stored, &swap_last2(rank)).0),
                    false => (x, data),
                }
            })
            .collect();
        let at = dim.index(rank + 1);
        let sat = if neg { at as isize - rank as isize - 1 } else { at as isize };
        let got = Tensor::stack(&stacked.iter().map(|(t, _)| t).collect::<Vec<_>>(), sat).unwrap();
        let mut out_shape = base.clone();
        out_shape.insert(at, stacked.len());
        prop_assert_eq!(got.shape(), out_shape.as_slice());
        let want: Vec<f64> = (0..out_shape.iter().product())
            .map(|o| {
                let mut idx = unravel(o, &out_shape);
                let which = idx.remove(at);
                stacked[which].1[ravel(&idx, &base)]
            })
            .collect();
        assert_close(&format!("stack along {sat}"), &vals(&got), &want, |_, _| 0.0)?;
    }

    /// permute (and permute + contiguous + reshape), narrow and chunk against index
    /// arithmetic.
    #[test]
    fn forward_narrow_permute_matches_reference(
        (s, perm) in shape_and_perm(1, 4, 5),
        (dim, start, len) in (any::<Index>(), any::<Index>(), any::<Index>()),
        chunks in 1usize..=4,
        seed in any::<u64>(),
    ) {
        let data = randn_vec(seed, &s);
        let x = tensor(&data, &s, DType::F64);

        let p = x.permute(&perm).unwrap();
        let (want, ps) = permuted(&data, &s, &perm);
        prop_assert_eq!(p.shape(), ps.as_slice());
        assert_close(&format!("permute {perm:?}"), &vals(&p), &want, |_, _| 0.0)?;
        let flat = p.contiguous().unwrap().reshape(&[data.len()]).unwrap();
        assert_close("permute+contiguous+reshape", &vals(&flat), &want, |_, _| 0.0)?;

        // narrow of the permuted view.
        let d = dim.index(ps.len());
        let st = start.index(ps[d]);
        let ln = 1 + len.index(ps[d] - st);
        let nw = p.narrow(d as isize, st, ln).unwrap();
        let mut ns = ps.clone();
        ns[d] = ln;
        prop_assert_eq!(nw.shape(), ns.as_slice());
        let want_n: Vec<f64> = (0..ns.iter().product())
            .map(|o| {
                let mut idx = unravel(o, &ns);
                idx[d] += st;
                want[ravel(&idx, &ps)]
            })
            .collect();
        assert_close(&format!("narrow({d}, {st}, {ln})"), &vals(&nw), &want_n, |_, _| 0.0)?;

        // chunk of the permuted view: sizes ceil(n / chunks), the last smaller.
        let parts = p.chunk(chunks, d as isize).unwrap();
        let size = ps[d].div_ceil(chunks);
        prop_assert_eq!(parts.len(), ps[d].div_ceil(size));
        let mut at = 0;
        for c in &parts {
            let ln = c.shape()[d];
            prop_assert_eq!(ln, size.min(ps[d] - at));
            let want_c: Vec<f64> = (0..c.elem_count())
                .map(|o| {
                    let mut idx = unravel(o, c.shape());
                    idx[d] += at;
                    want[ravel(&idx, &ps)]
                })
                .collect();
            assert_close("chunk", &vals(c), &want_c, |_, _| 0.0)?;
            at += ln;
        }
        prop_assert_eq!(at, ps[d]);
    }

    /// index_select (with repeats) and gather (ids of the source's rank) along a drawn
    /// dim of a contiguous or transposed source, against index arithmetic.
    #[test]
    fn forward_index_select_gather_matches_reference(
        s in shape(1, 3, 4),
        count in 1usize..=6,
        ids_dims in prop::collection::vec(any::<Index>(), 3),
        along in 1usize..=5,
        dim in any::<Index>(),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let data = randn_vec(seed, &s);
        let x = tensor(&data, &s, DType::F64);
        let (x, (logical, ls)) = match transposed {
            true => (x.t().unwrap(), permuted(&data, &s, &swap_last2(s.len()))),
            false => (x, (data.clone(), s.clone())),
        };
        let rank = ls.len();
        let d = dim.index(rank);

        let picked = indices(seed ^ 7, count, ls[d]);
        let got = x.index_select(&ids(&picked, &[count]), d as isize).unwrap();
        let mut os = ls.clone();
        os[d] = count;
        prop_assert_eq!(got.shape(), os.as_slice());
        let want: Vec<f64> = (0..os.iter().product())
            .map(|o| {
                let mut idx = unravel(o, &os);
                idx[d] = picked[idx[d]] as usize;
                logical[ravel(&idx, &ls)]
            })
            .collect();
        assert_close(&format!("index_select {picked:?} dim {d}"), &vals(&got), &want, |_, _| 0.0)?;

        let is: Vec<usize> = (0..rank)
            .map(|i| if i == d { along } else { 1 + ids_dims[i].index(ls[i]) })
            .collect();
        let gi = indices(seed ^ 9, is.iter().product(), ls[d]);
        let got = x.gather(&ids(&gi, &is), d as isize).unwrap();
        prop_assert_eq!(got.shape(), is.as_slice());
        let want: Vec<f64> = (0..gi.len())
            .map(|o| {
                let mut idx = unravel(o, &is);
                idx[d] = gi[o] as usize;
                logical[ravel(&idx, &ls)]
            })
            .collect();
        assert_close(&format!("gather ids {is:?} dim {d}"), &vals(&got), &want, |_, _| 0.0)?;
    }

    /// f32 matches f64 within 1e-5 relative (to the output's scale), and bf16/f16
    /// match f32 on the same (rounded) inputs within their unit roundoff, for matmul,
    /// softmax and layer norm.
    #[test]
    fn forward_low_precision_matches_reference(
        case in matmul_case(24),
        rows in shape(1, 2, 4),
        d in 1usize..=24,
        logit_scale in prop::sample::select(vec![1.0, 8.0]),
        seed in any::<u64>(),
    ) {
        let (a, b) = (randn_vec(seed, &case.sa), randn_vec(seed ^ 1, &case.sb));
        let xs = [rows.as_slice(), &[d]].concat();
        let x: Vec<f64> = randn_vec(seed ^ 2, &xs).iter().map(|v| v * logit_scale).collect();
        let (w, bias) = (randn_vec(seed ^ 3, &[d]), randn_vec(seed ^ 4, &[d]));

        // Each op on tensors of one dtype, made from the given f64 data.
        let ops = |dtype: DType, a: &[f64], b: &[f64], x: &[f64], w: &[f64], bias: &[f64]| {
            let mm = case.run(&tensor(a, &case.sa, dtype), &tensor(b, &case.sb, dtype));
            let xt = tensor(x, &xs, dtype);
            let sm = xt.softmax().unwrap();
            let ln = xt
                .layer_norm(Some(&tensor(w, &[d], dtype)), Some(&tensor(bias, &[d], dtype)), 1e-5)
                .unwrap();
            for t in [&mm, &sm, &ln] {
                assert_eq!(t.dtype(), dtype);
            }
            [vals(&mm), vals(&sm), vals(&ln)]
        };
        // The scale of each output's rounding error: Σ|a||b| for matmul; 1 for softmax
        // (outputs in [0, 1]); for layer norm max|x|·rstd·|w| + |bias| of the element's
        // row (x − mean cancels when a row's values are close, so what f32 can resolve
        // is relative to |x|, not to the normalized output).
        let (la, lsa, lb, lsb) = case.logical(&a, &b);
        let mm_scale = ref_matmul(&la, &lsa, &lb, &lsb).1;
        let ln_scale: Vec<f64> = x
            .chunks(d)
            .flat_map(|row| {
                let mean = row.iter().sum::<f64>() / d as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
                let big = row.iter().fold(0.0f64, |m, v| m.max(v.abs())) / (var + 1e-5).sqrt();
                (0..d).map(|k| big * w[k].abs() + bias[k].abs()).collect::<Vec<_>>()
            })
            .collect();
        let scale = |op: usize, i: usize| match op {
            0 => mm_scale[i],
            1 => 1.0,
            _ => ln_scale[i],
        };
        let names = ["matmul", "softmax", "layer_norm"];

        let r64 = ops(DType::F64, &a, &b, &x, &w, &bias);
        let r32 = ops(DType::F32, &a, &b, &x, &w, &bias);
        for op in 0..3 {
            assert_close(&format!("f32 vs f64 {}", names[op]), &r32[op], &r64[op], |v, i| {
                1e-5 * v.abs().max(scale(op, i)) + 1e-30
            })?;
        }

        for (dtype, u) in [(DType::BF16, 2f64.powi(-8)), (DType::F16, 2f64.powi(-11))] {
            // The inputs rounded to `dtype`, so both sides see the same values.
            let round = |v: &[f64]| vals(&tensor(v, &[v.len()], dtype));
            let (a, b, x, w, bias) = (round(&a), round(&b), round(&x), round(&w), round(&bias));
            let low = ops(dtype, &a, &b, &x, &w, &bias);
            let f32s = ops(DType::F32, &a, &b, &x, &w, &bias);
            for op in 0..3 {
                // Rounding the output costs at most u·|y| (plus f16's subnormal spacing);
                // the f32 arithmetic itself may differ by a few f32 ulps of the scale.
                assert_close(&format!("{dtype} vs f32 {}", names[op]), &low[op], &f32s[op], |v, i| {
                    1.001 * u * v.abs() + 1e-6 * scale(op, i) + 6e-8
                })?;
            }
        }
    }
}
