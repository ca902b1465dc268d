//! Property-based derivative checks of the structural and fused ops: for each
//! differentiable op, `gradcheck_<op>` compares the gradient from `backward` and
//! `jvpcheck_<op>` the tangent from `jvp` with central differences in f64
//! (`twinflow_engine::gradcheck`, `twinflow_engine::jvpcheck`), both on the same drawn
//! shapes (size-1 dims included), drawn values and, wherever the op accepts them,
//! non-contiguous inputs (transposed, permuted, narrowed and broadcast views), which is
//! how models feed most ops. Each pair is declared once (`derivative_checks!`, in
//! `common`); the body runs in the `mode` it is given.
//!
//! The inputs are contiguous tensors (`gradcheck` hands the closure contiguous copies),
//! so every view is made inside the closure, where its backward and its JVP rule are
//! part of what gets checked.

use proptest::prelude::*;
use proptest::sample::Index;
use twinflow_engine::gradcheck::{GradcheckOptions, GradcheckReport};
use twinflow_engine::{
    gelu_mlp, gelu_mlp_gated, prenorm_gelu_mlp_gated, qkv_attention, scaled_dot_product_attention,
    DType, GatedResidual, PreNorm, Result, Tensor,
};

mod common;
use common::{
    config, derivative_checks, ids, indices, per_group_shape, randn, shape, shape_and_perm,
    swapped, Mode,
};

/// `dim` of a rank-`rank` tensor, written negatively when `neg`.
fn signed(dim: usize, rank: usize, neg: bool) -> isize {
    match neg {
        true => dim as isize - rank as isize,
        false => dim as isize,
    }
}

/// The `mode` check of `f` at `inputs` with default options, also asserting that every
/// element was compared (every float input element, or every output element).
fn check(
    mode: Mode,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) -> Result<GradcheckReport> {
    let report = mode.check(&f, inputs, &GradcheckOptions::default())?;
    let elements = mode.elements(&f, inputs)?;
    assert_eq!(report.checked, elements, "{mode:?} check skipped elements");
    Ok(report)
}

derivative_checks! {
    #![proptest_config(config(24))]

    /// 2-D, batched and broadcast-batch products, each operand optionally handed over
    /// transposed (a strided view read in place by the kernel).
    fn gradcheck_matmul / jvpcheck_matmul (
        mode,
        kind in 0usize..4,
        (m, k, n) in (1usize..=4, 1usize..=4, 1usize..=4),
        (b1, b2) in (1usize..=2, 1usize..=3),
        (ta, tb) in (any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        // Batch dims of a and b: none, equal, [b1, 1] × [b2], [b2] × [b1, 1].
        let (ba, bb): (Vec<usize>, Vec<usize>) = match kind {
            0 => (vec![], vec![]),
            1 => (vec![b2], vec![b2]),
            2 => (vec![b1, 1], vec![b2]),
            _ => (vec![b2], vec![b1, 1]),
        };
        let sa = [ba.as_slice(), &[m, k]].concat();
        let sb = [bb.as_slice(), &[k, n]].concat();
        let a = randn(seed, &if ta { swapped(&sa) } else { sa.clone() });
        let b = randn(seed ^ 1, &if tb { swapped(&sb) } else { sb.clone() });
        let r = check(
            mode,
            |x| {
                let a = if ta { x[0].t()? } else { x[0].clone() };
                let b = if tb { x[1].t()? } else { x[1].clone() };
                a.matmul(&b)
            },
            &[a, b],
        );
        if let Err(e) = r { prop_assert!(false, "{e} (a {sa:?} t={ta}, b {sb:?} t={tb})") }
    }

    /// The linear layer's fused product and bias: 1-D, 2-D and batched inputs (the
    /// batched, contiguous case is folded into one product), a transposed input, with
    /// and without bias.
    fn gradcheck_linear / jvpcheck_linear (
        mode,
        lead in prop::collection::vec(1usize..=3, 0..=2),
        (k, n) in (1usize..=4, 1usize..=4),
        (with_bias, transposed) in (any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && !lead.is_empty();
        let sx = [lead.as_slice(), &[k]].concat();
        let x = randn(seed, &if transposed { swapped(&sx) } else { sx.clone() });
        let mut inputs = vec![x, randn(seed ^ 1, &[n, k])];
        if with_bias {
            inputs.push(randn(seed ^ 2, &[n]));
        }
        let r = check(
            mode,
            |v| {
                let x = if transposed { v[0].t()? } else { v[0].clone() };
                x.linear(&v[1], v.get(2))
            },
            &inputs,
        );
        if let Err(e) = r { prop_assert!(false, "{e} (x {sx:?} t={transposed}, n {n}, bias {with_bias})") }
    }

    /// Reshape as a view of contiguous data and as a copy of a transposed view.
    fn gradcheck_reshape / jvpcheck_reshape (
        mode,
        s in shape(1, 4, 3),
        target_kind in 0usize..4,
        split in any::<Index>(),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let n: usize = s.iter().product();
        let divisors: Vec<usize> = (1..=n).filter(|d| n.is_multiple_of(*d)).collect();
        let d = divisors[split.index(divisors.len())];
        let logical = if transposed { swapped(&s) } else { s.clone() };
        let target = match target_kind {
            0 => vec![n],
            1 => vec![d, n / d],
            2 => vec![1, n / d, d, 1],
            _ => logical.iter().rev().copied().collect(),
        };
        let r = check(
            mode,
            |x| {
                let x = if transposed { x[0].t()? } else { x[0].clone() };
                x.reshape(&target)
            },
            &[randn(seed, &s)],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} t={transposed} -> {target:?})") }
    }

    /// A permuted view, optionally permuted again (a view of a view) and squared (so the
    /// backward of the view is fed a non-trivial gradient).
    fn gradcheck_permute / jvpcheck_permute (
        mode,
        (s, perm) in shape_and_perm(1, 4, 3),
        twice in any::<bool>(),
        square in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let r = check(
            mode,
            |x| {
                let mut y = x[0].permute(&perm)?;
                if twice {
                    y = y.permute(&perm)?;
                }
                if square { y.square() } else { Ok(y) }
            },
            &[randn(seed, &s)],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} perm {perm:?} twice={twice})") }
    }

    /// Transpose of any two dims (equal dims included), positive or negative.
    fn gradcheck_transpose / jvpcheck_transpose (
        mode,
        s in shape(2, 4, 3),
        (a, b) in (any::<Index>(), any::<Index>()),
        (na, nb) in (any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let rank = s.len();
        let (a, b) = (signed(a.index(rank), rank, na), signed(b.index(rank), rank, nb));
        let r = check(mode, |x| x[0].transpose(a, b)?.mul_scalar(1.5), &[randn(seed, &s)]);
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} transpose({a}, {b}))") }
    }

    /// Broadcast of size-1 dims and new leading dims; the gradient sums them back.
    fn gradcheck_broadcast_to / jvpcheck_broadcast_to (
        mode,
        s in prop::collection::vec((any::<bool>(), 1usize..=3), 1..=3),
        expand in prop::collection::vec(1usize..=3, 3),
        lead in prop::collection::vec(1usize..=3, 0..=1),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Source dims are 1 (expanded to a drawn size) or a drawn size kept as is.
        let src: Vec<usize> = s.iter().map(|&(one, d)| if one { 1 } else { d }).collect();
        let target: Vec<usize> = lead
            .iter()
            .copied()
            .chain(src.iter().zip(&expand).map(|(&d, &e)| if d == 1 { e } else { d }))
            .collect();
        let transposed = transposed && src.len() >= 2;
        let stored = if transposed { swapped(&src) } else { src.clone() };
        let r = check(
            mode,
            |x| {
                let x = if transposed { x[0].t()? } else { x[0].clone() };
                x.broadcast_to(&target)
            },
            &[randn(seed, &stored)],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({src:?} t={transposed} -> {target:?})") }
    }

    /// Removing a size-1 dim, of a contiguous tensor or of a dims-reversed view.
    fn gradcheck_squeeze / jvpcheck_squeeze (
        mode,
        s in shape(0, 3, 3),
        at in any::<Index>(),
        neg in any::<bool>(),
        reversed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut s = s;
        let p = at.index(s.len() + 1);
        s.insert(p, 1);
        let rank = s.len();
        // The size-1 dim sits at `p`, or at `rank − 1 − p` once dims are reversed.
        let q = if reversed { rank - 1 - p } else { p };
        let dim = signed(q, rank, neg);
        let perm: Vec<usize> = (0..rank).rev().collect();
        let r = check(
            mode,
            |x| {
                let x = if reversed { x[0].permute(&perm)? } else { x[0].clone() };
                x.squeeze(dim)
            },
            &[randn(seed, &s)],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} reversed={reversed} squeeze({dim}))") }
    }

    /// Inserting a size-1 dim (any position, negative ones too), optionally broadcast
    /// out afterwards so the new dim's gradient is a sum.
    fn gradcheck_unsqueeze / jvpcheck_unsqueeze (
        mode,
        s in shape(0, 3, 3),
        at in any::<Index>(),
        neg in any::<bool>(),
        expand in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let rank = s.len();
        let p = at.index(rank + 1);
        let dim = if neg { p as isize - rank as isize - 1 } else { p as isize };
        let mut target = s.clone();
        target.insert(p, expand);
        let r = check(
            mode,
            |x| x[0].unsqueeze(dim)?.broadcast_to(&target),
            &[randn(seed, &s)],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} unsqueeze({dim}) -> {target:?})") }
    }

    /// A narrowed range along a drawn dim, of a contiguous tensor or of a transposed
    /// view, optionally narrowed again along another dim.
    fn gradcheck_narrow / jvpcheck_narrow (
        mode,
        s in shape(1, 3, 4),
        (dim, start, len) in (any::<Index>(), any::<Index>(), any::<Index>()),
        neg in any::<bool>(),
        transposed in any::<bool>(),
        again in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let logical = if transposed { swapped(&s) } else { s.clone() };
        let rank = logical.len();
        let d = dim.index(rank);
        let st = start.index(logical[d]);
        let ln = 1 + len.index(logical[d] - st);
        let dim = signed(d, rank, neg);
        // Second narrow: drop the first element of the first dim where there are two.
        let again = again && logical[0] >= 2 && !(d == 0 && ln < 2);
        let r = check(
            mode,
            |x| {
                let x = if transposed { x[0].t()? } else { x[0].clone() };
                let y = x.narrow(dim, st, ln)?;
                if again {
                    let n0 = y.shape()[0];
                    y.narrow(0, 1, n0 - 1)
                } else {
                    Ok(y)
                }
            },
            &[randn(seed, &s)],
        );
        if let Err(e) = r {
            let case = format!("{s:?} t={transposed} narrow({dim}, {st}, {ln}) again={again}");
            prop_assert!(false, "{e} ({case})")
        }
    }

    /// Concatenation of 1–3 tensors (some handed over transposed), optionally with the
    /// first one repeated so its gradient accumulates.
    fn gradcheck_cat / jvpcheck_cat (
        mode,
        base in shape(1, 3, 3),
        sizes in prop::collection::vec(1usize..=3, 1..=3),
        transposed in prop::collection::vec(any::<bool>(), 3),
        dim in any::<Index>(),
        neg in any::<bool>(),
        repeat_first in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let rank = base.len();
        let d = dim.index(rank);
        let logical: Vec<Vec<usize>> = sizes
            .iter()
            .map(|&n| {
                let mut s = base.clone();
                s[d] = n;
                s
            })
            .collect();
        let t: Vec<bool> = transposed.iter().map(|&t| t && rank >= 2).collect();
        let inputs: Vec<Tensor> = logical
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let stored = if t[i] { swapped(s) } else { s.clone() };
                randn(seed.wrapping_add(i as u64), &stored)
            })
            .collect();
        let dim = signed(d, rank, neg);
        let r = check(
            mode,
            |x| {
                let mut views = x
                    .iter()
                    .enumerate()
                    .map(|(i, x)| if t[i] { x.t() } else { Ok(x.clone()) })
                    .collect::<Result<Vec<_>>>()?;
                if repeat_first {
                    views.push(views[0].clone());
                }
                Tensor::cat(&views.iter().collect::<Vec<_>>(), dim)
            },
            &inputs,
        );
        if let Err(e) = r {
            prop_assert!(false, "{e} ({logical:?} t={t:?} cat dim {dim} repeat={repeat_first})")
        }
    }

    /// Stacking 1–3 tensors of one shape along a new dim (any position).
    fn gradcheck_stack / jvpcheck_stack (
        mode,
        s in shape(0, 3, 3),
        count in 1usize..=3,
        at in any::<Index>(),
        neg in any::<bool>(),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let rank = s.len();
        let transposed = transposed && rank >= 2;
        let p = at.index(rank + 1);
        let dim = if neg { p as isize - rank as isize - 1 } else { p as isize };
        let stored = if transposed { swapped(&s) } else { s.clone() };
        let inputs: Vec<Tensor> = (0..count as u64)
            .map(|i| randn(seed.wrapping_add(i), &stored))
            .collect();
        let r = check(
            mode,
            |x| {
                let views = x
                    .iter()
                    .map(|x| if transposed { x.t() } else { Ok(x.clone()) })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::stack(&views.iter().collect::<Vec<_>>(), dim)
            },
            &inputs,
        );
        if let Err(e) = r {
            prop_assert!(false, "{e} ({count} × {s:?} t={transposed} stack dim {dim})")
        }
    }

    /// Gradients summed into one input from two (possibly overlapping) narrows of it and
    /// from a sum it shares with a second input, in a drawn order. The narrows' backward
    /// adds into the gathered gradient in place when nothing else holds it; here that
    /// gradient is at times a view of `cat`'s gradient or a clone handed to both inputs
    /// of the sum, or shares its storage with the other input's, which must not be
    /// written.
    fn gradcheck_narrows_summed / jvpcheck_narrows_summed (
        mode,
        s in shape(1, 3, 4),
        dim in any::<Index>(),
        ranges in (any::<Index>(), any::<Index>(), any::<Index>(), any::<Index>()),
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
        seed in any::<u64>(),
    ) {
        let d = dim.index(s.len());
        let range = |start: Index, len: Index| {
            let st = start.index(s[d]);
            (st, 1 + len.index(s[d] - st))
        };
        let narrows = [range(ranges.0, ranges.1), range(ranges.2, ranges.3)];
        let r = check(
            mode,
            |x| {
                let piece = |i: usize| match i {
                    // x[1] through two reshapes: its gradient becomes a view sharing
                    // the storage of the one x[0] gathers.
                    2 => x[0].add(&x[1].flatten_all()?.reshape(&s)?)?.mul_scalar(2.0),
                    i => x[0].narrow(d as isize, narrows[i].0, narrows[i].1),
                };
                let pieces = order
                    .iter()
                    .map(|&i| piece(i)?.flatten_all())
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&pieces.iter().collect::<Vec<_>>(), 0)
            },
            &[randn(seed, &s), randn(seed ^ 1, &s)],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} dim {d} {narrows:?} {order:?})") }
    }

    /// One chunk picked by index, and all chunks concatenated back in reverse order.
    fn gradcheck_chunk / jvpcheck_chunk (
        mode,
        s in shape(1, 3, 5),
        n in 1usize..=4,
        dim in any::<Index>(),
        pick in any::<Index>(),
        neg in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let rank = s.len();
        let d = dim.index(rank);
        let dim = signed(d, rank, neg);
        let x = randn(seed, &s);
        let count = x.chunk(n, dim).map(|c| c.len()).unwrap_or(0);
        prop_assert!(count >= 1 && count <= n, "{count} chunks for n = {n} of {s:?}");
        let i = pick.index(count);
        let r = check(mode, |x| Ok(x[0].chunk(n, dim)?.swap_remove(i)), std::slice::from_ref(&x));
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} chunk({n}, {dim})[{i}])") }
        let r = check(
            mode,
            |x| {
                let chunks = x[0].chunk(n, dim)?;
                Tensor::cat(&chunks.iter().rev().collect::<Vec<_>>(), dim)
            },
            &[x],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} cat(rev(chunk({n}, {dim}))))") }
    }

    /// Selection by ids with a guaranteed repeat (so gradients accumulate), along a drawn
    /// dim of a contiguous or transposed source.
    fn gradcheck_index_select / jvpcheck_index_select (
        mode,
        s in shape(1, 3, 3),
        count in 1usize..=5,
        dim in any::<Index>(),
        neg in any::<bool>(),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let logical = if transposed { swapped(&s) } else { s.clone() };
        let rank = logical.len();
        let d = dim.index(rank);
        let mut picked = indices(seed, count, logical[d]);
        picked.push(picked[0]);
        let n = picked.len();
        let dim = signed(d, rank, neg);
        let r = check(
            mode,
            |x| {
                let src = if transposed { x[0].t()? } else { x[0].clone() };
                src.index_select(&x[1], dim)
            },
            &[randn(seed, &s), ids(&picked, &[n])],
        );
        if let Err(e) = r {
            prop_assert!(false, "{e} ({logical:?} t={transposed} index_select({picked:?}, {dim}))")
        }
    }

    /// Gather with ids of the source's rank (smaller or equal off `dim`, any size along
    /// it), values in range, repeats likely.
    fn gradcheck_gather / jvpcheck_gather (
        mode,
        s in shape(1, 3, 3),
        dims in prop::collection::vec(any::<Index>(), 3),
        along in 1usize..=4,
        dim in any::<Index>(),
        neg in any::<bool>(),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let logical = if transposed { swapped(&s) } else { s.clone() };
        let rank = logical.len();
        let d = dim.index(rank);
        let ids_shape: Vec<usize> = (0..rank)
            .map(|i| if i == d { along } else { 1 + dims[i].index(logical[i]) })
            .collect();
        let n: usize = ids_shape.iter().product();
        let picked = indices(seed, n, logical[d]);
        let dim = signed(d, rank, neg);
        let r = check(
            mode,
            |x| {
                let src = if transposed { x[0].t()? } else { x[0].clone() };
                src.gather(&x[1], dim)
            },
            &[randn(seed, &s), ids(&picked, &ids_shape)],
        );
        if let Err(e) = r {
            let case = format!("{logical:?} t={transposed} ids {ids_shape:?} {picked:?} dim {dim}");
            prop_assert!(false, "{e} (gather {case})")
        }
    }

    /// `contiguous` of permuted, narrowed and already-contiguous tensors, the result
    /// then used through a reshape.
    fn gradcheck_contiguous / jvpcheck_contiguous (
        mode,
        (s, perm) in shape_and_perm(1, 4, 3),
        narrowed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let n: usize = s.iter().product();
        let r = check(
            mode,
            |x| {
                let mut y = x[0].permute(&perm)?;
                if narrowed && y.shape()[0] >= 2 {
                    let n0 = y.shape()[0];
                    y = y.narrow(0, 1, n0 - 1)?;
                }
                let c = y.contiguous()?;
                if !c.is_contiguous() {
                    return Err(twinflow_engine::Error::invalid("test", "not contiguous"));
                }
                let m = c.elem_count();
                c.reshape(&[m])?.mul(&c.contiguous()?.reshape(&[m])?)
            },
            &[randn(seed, &s)],
        );
        if let Err(e) = r {
            prop_assert!(false, "{e} ({s:?} perm {perm:?} narrowed={narrowed}, {n} elements)")
        }
    }

    /// Softmax over the last dim, of a contiguous tensor or of a permuted view whose last
    /// dim is strided.
    fn gradcheck_softmax / jvpcheck_softmax (
        mode,
        (s, perm) in shape_and_perm(1, 3, 5),
        permuted in any::<bool>(),
        scale in 0.5f64..3.0,
        seed in any::<u64>(),
    ) {
        let r = check(
            mode,
            |x| {
                let x = if permuted { x[0].permute(&perm)? } else { x[0].clone() };
                x.mul_scalar(scale)?.softmax()
            },
            &[randn(seed, &s)],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} permuted={permuted} by {perm:?})") }
    }

    /// Log-softmax over the last dim, contiguous or through a permuted view.
    fn gradcheck_log_softmax / jvpcheck_log_softmax (
        mode,
        (s, perm) in shape_and_perm(1, 3, 5),
        permuted in any::<bool>(),
        scale in 0.5f64..3.0,
        seed in any::<u64>(),
    ) {
        let r = check(
            mode,
            |x| {
                let x = if permuted { x[0].permute(&perm)? } else { x[0].clone() };
                x.mul_scalar(scale)?.log_softmax()
            },
            &[randn(seed, &s)],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} permuted={permuted} by {perm:?})") }
    }

    /// Layer norm with and without weight and bias, contiguous or through a transposed
    /// view; the weight and bias `[d]`, or one row per group of rows (x's first
    /// `grouped` dims, then ones, then `d`: a DiT's `[B, 1, D]` modulation). On a
    /// residual stream (`x + LN(x)`), the backward adds x's residual gradient into its
    /// own dx.
    fn gradcheck_layer_norm / jvpcheck_layer_norm (
        mode,
        s in shape(1, 3, 5),
        (with_weight, with_bias) in (any::<bool>(), any::<bool>()),
        (transposed, residual) in (any::<bool>(), any::<bool>()),
        grouped in 0usize..3,
        eps in prop::sample::select(vec![1e-5, 1e-2]),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let logical = if transposed { swapped(&s) } else { s.clone() };
        let params = per_group_shape(&logical, grouped);
        let mut inputs = vec![randn(seed, &s)];
        if with_weight {
            inputs.push(randn(seed ^ 1, &params));
        }
        if with_bias {
            inputs.push(randn(seed ^ 2, &params));
        }
        let r = check(
            mode,
            |x| {
                let v = if transposed { x[0].t()? } else { x[0].clone() };
                let w = with_weight.then(|| &x[1]);
                let b = with_bias.then(|| &x[1 + with_weight as usize]);
                let y = v.layer_norm(w, b, eps)?;
                if residual { v.add(&y) } else { Ok(y) }
            },
            &inputs,
        );
        if let Err(e) = r {
            let case = format!("{logical:?} t={transposed} r={residual} w={with_weight}");
            let case = format!("{case} b={with_bias}");
            let case = format!("{case} params={params:?} eps={eps}");
            prop_assert!(false, "{e} ({case})")
        }
    }

    /// RMS norm with and without weight (`[d]` or per group of rows, as for layer
    /// norm), contiguous or through a transposed view.
    fn gradcheck_rms_norm / jvpcheck_rms_norm (
        mode,
        s in shape(1, 3, 5),
        with_weight in any::<bool>(),
        transposed in any::<bool>(),
        grouped in 0usize..3,
        eps in prop::sample::select(vec![1e-6, 1e-2]),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let logical = if transposed { swapped(&s) } else { s.clone() };
        let mut inputs = vec![randn(seed, &s)];
        if with_weight {
            inputs.push(randn(seed ^ 1, &per_group_shape(&logical, grouped)));
        }
        let r = check(
            mode,
            |x| {
                let v = if transposed { x[0].t()? } else { x[0].clone() };
                v.rms_norm(with_weight.then(|| &x[1]), eps)
            },
            &inputs,
        );
        if let Err(e) = r {
            prop_assert!(false, "{e} ({logical:?} t={transposed} w={with_weight} eps={eps})")
        }
    }

    /// Cross-entropy of logits `[n, c]` (contiguous or a transposed view) against i64
    /// labels in range, the labels passed through gradcheck unperturbed.
    fn gradcheck_cross_entropy / jvpcheck_cross_entropy (
        mode,
        (n, c) in (1usize..=5, 1usize..=5),
        scale in 0.5f64..3.0,
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let labels = indices(seed, n, c);
        let logits = randn(seed, &if transposed { vec![c, n] } else { vec![n, c] });
        let r = check(
            mode,
            |x| {
                let l = if transposed { x[0].t()? } else { x[0].clone() };
                l.mul_scalar(scale)?.cross_entropy(&x[1])
            },
            &[logits, ids(&labels, &[n])],
        );
        if let Err(e) = r {
            prop_assert!(false, "{e} ([{n}, {c}] t={transposed} labels {labels:?})")
        }
    }

    /// Mean squared error with both sides differentiable, the target optionally a
    /// transposed view.
    fn gradcheck_mse / jvpcheck_mse (
        mode,
        s in shape(1, 3, 4),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let transposed = transposed && s.len() >= 2;
        let target = randn(seed ^ 1, &if transposed { swapped(&s) } else { s.clone() });
        let r = check(
            mode,
            |x| {
                let t = if transposed { x[1].t()? } else { x[1].clone() };
                x[0].mse(&t)
            },
            &[randn(seed, &s), target],
        );
        if let Err(e) = r { prop_assert!(false, "{e} ({s:?} target t={transposed})") }
    }

    /// Fused attention, causal or not (top-left aligned mask, any tq and tk), default or
    /// drawn scale; q, k, v optionally built as `[b, t, h, d]` and transposed to
    /// `[b, h, t, d]` as models call it.
    fn gradcheck_attention / jvpcheck_attention (
        mode,
        (b, h) in (1usize..=2, 1usize..=2),
        (tq, tk) in (1usize..=5, 1usize..=5),
        (d, dv) in (1usize..=4, 1usize..=4),
        causal in any::<bool>(),
        square in any::<bool>(),
        scale in prop::option::of(0.1f64..2.0),
        bthd in any::<bool>(),
        seed in any::<u64>(),
    ) {
        // Also the common self-attention case tq == tk.
        let tk = if square { tq } else { tk };
        let stored = |t: usize, e: usize| if bthd { vec![b, t, h, e] } else { vec![b, h, t, e] };
        let inputs = [
            randn(seed, &stored(tq, d)),
            randn(seed ^ 1, &stored(tk, d)),
            randn(seed ^ 2, &stored(tk, dv)),
        ];
        let r = check(
            mode,
            |x| {
                let view = |t: &Tensor| if bthd { t.transpose(1, 2) } else { Ok(t.clone()) };
                let (q, k, v) = (view(&x[0])?, view(&x[1])?, view(&x[2])?);
                scaled_dot_product_attention(&q, &k, &v, scale, causal)
            },
            &inputs,
        );
        if let Err(e) = r {
            let case = format!("b={b} h={h} tq={tq} tk={tk} d={d} dv={dv} causal={causal}");
            prop_assert!(false, "{e} ({case} scale={scale:?} bthd={bthd})")
        }
    }

    /// The GELU feed-forward block, with and without biases, on 2-D and 3-D inputs
    /// (the fused op; forward mode runs its composition).
    fn gradcheck_gelu_mlp / jvpcheck_gelu_mlp (
        mode,
        lead in prop::collection::vec(1usize..=3, 1..=2),
        (k, hidden, n) in (1usize..=4, 1usize..=5, 1usize..=4),
        (bias1, bias2) in (any::<bool>(), any::<bool>()),
        seed in any::<u64>(),
    ) {
        let x = randn(seed, &[lead.as_slice(), &[k]].concat());
        let mut inputs = vec![x, randn(seed ^ 1, &[hidden, k]), randn(seed ^ 2, &[n, hidden])];
        if bias1 { inputs.push(randn(seed ^ 3, &[hidden])); }
        if bias2 { inputs.push(randn(seed ^ 4, &[n])); }
        let r = check(
            mode,
            |x| {
                let b1 = bias1.then(|| &x[3]);
                let b2 = bias2.then(|| &x[3 + bias1 as usize]);
                gelu_mlp(&x[0], (&x[1], b1), (&x[2], b2))
            },
            &inputs,
        );
        if let Err(e) = r {
            prop_assert!(false, "{e} (lead {lead:?} k={k} hidden={hidden} n={n} biases {bias1} {bias2})")
        }
    }

    /// The gated residual `stream + gate·linear(x)`, the gate one row per sample
    /// (`[b, 1, n]`) or one for all (`[n]`). With a graph or a tangent it runs as
    /// `addcmul` after the layer (the epilogue fusion is for the no-graph forward), so
    /// this checks that every input's derivative arrives.
    fn gradcheck_linear_gated / jvpcheck_linear_gated (
        mode,
        dims in gated_dims(),
        per_sample in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_gated(mode, GatedLayer::Linear, dims, per_sample, seed)?;
    }

    /// `stream + gate·gelu_mlp(x)`, as `gradcheck_linear_gated`.
    fn gradcheck_gelu_mlp_gated / jvpcheck_gelu_mlp_gated (
        mode,
        dims in gated_dims(),
        per_sample in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_gated(mode, GatedLayer::Mlp, dims, per_sample, seed)?;
    }

    /// `x + gate·gelu_mlp(LN(x)·w + b)`, the pre-norm branch (norm parameters per
    /// sample), as `gradcheck_linear_gated`.
    fn gradcheck_prenorm_gelu_mlp_gated / jvpcheck_prenorm_gelu_mlp_gated (
        mode,
        dims in gated_dims(),
        per_sample in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_gated(mode, GatedLayer::PrenormMlp, dims, per_sample, seed)?;
    }

    /// Attention over the three parts of one `[b, t, 3·h·d]` tensor, causal or not,
    /// default or drawn scale; the tensor optionally a transposed view (its feature
    /// dim strided), as the kernels read any strides in place.
    fn gradcheck_qkv_attention / jvpcheck_qkv_attention (
        mode,
        (b, h) in (1usize..=2, 1usize..=2),
        t in 1usize..=5,
        d in 1usize..=4,
        causal in any::<bool>(),
        scale in prop::option::of(0.1f64..2.0),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let width = 3 * h * d;
        let stored = if transposed { vec![b, width, t] } else { vec![b, t, width] };
        let r = check(
            mode,
            |x| {
                let qkv = if transposed { x[0].transpose(1, 2)? } else { x[0].clone() };
                qkv_attention(&qkv, h, scale, causal)
            },
            &[randn(seed, &stored)],
        );
        if let Err(e) = r {
            let case = format!("b={b} h={h} t={t} d={d} causal={causal} scale={scale:?}");
            prop_assert!(false, "{e} ({case} transposed={transposed})")
        }
    }
}

/// Layer norm with `[B, 1, D]` parameters on sizes that take the parallel kernels (the
/// backward then splits the rows by whole groups; with a `[D]` weight beside a
/// grouped bias, by blocks with partial sums): its gradients equal those of the
/// composition `LN(x)·w + b`, which the gradchecks above cover on small sizes.
#[test]
fn grouped_norm_gradients_match_the_composition_on_parallel_sizes() -> Result<()> {
    let (b, t, d) = (40, 49, 24);
    for weight_shape in [vec![b, 1, d], vec![d]] {
        let x = randn(1, &[b, t, d]).into_variable()?;
        let w = randn(2, &weight_shape).into_variable()?;
        let bias = randn(3, &[b, 1, d]).into_variable()?;
        let r = randn(4, &[b, t, d]);
        let fused = x.layer_norm(Some(&w), Some(&bias), 1e-5)?;
        let composed = x.layer_norm(None, None, 1e-5)?.mul(&w)?.add(&bias)?;
        let fused_grads = fused.mul(&r)?.sum_all()?.backward()?;
        let composed_grads = composed.mul(&r)?.sum_all()?.backward()?;
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &bias)] {
            let got = fused_grads.get(v).expect("a gradient").to_vec_f64()?;
            let want = composed_grads.get(v).expect("a gradient").to_vec_f64()?;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let ok = (g - w).abs() <= 1e-10 * w.abs().max(1.0);
                assert!(ok, "d{name}[{i}] of weight {weight_shape:?}: {g} != {w}");
            }
        }
    }
    Ok(())
}

/// A linear layer's f32 weight and bias gradients on sizes that take each product path
/// (split over the inner dimension, one parallel product, one single-threaded product,
/// a small product; and split over 64 threads, whose parts are too small for the
/// AVX-512 kernel): equal to the f64 layer's within f32 rounding. On CPUs with AVX-512
/// the bias gradient comes out of the weight gradient's product (its micro-kernel adds
/// up the `gᵀ` values it reads); the gradchecks, in f64, take another path.
#[test]
fn linear_f32_parameter_gradients_match_f64_on_every_product_path() -> Result<()> {
    // (rows, in, out): split-k (4.2 M flops, rows ≫ in, out), parallel (8.4 M flops),
    // single-threaded (2¹⁷ multiply-adds), small.
    for (rows, k, n) in [(8192, 16, 16), (64, 256, 256), (32, 64, 64), (5, 3, 7)] {
        linear_f32_gradients_match_f64(rows, k, n)?;
    }
    let many = rayon::ThreadPoolBuilder::new()
        .num_threads(64)
        .build()
        .expect("a pool");
    many.install(|| linear_f32_gradients_match_f64(8192, 16, 16))
}

/// [`linear_f32_parameter_gradients_match_f64_on_every_product_path`] at one size.
fn linear_f32_gradients_match_f64(rows: usize, k: usize, n: usize) -> Result<()> {
    let (x, w, b, r) = (
        randn(1, &[rows, k]),
        randn(2, &[n, k]),
        randn(3, &[n]),
        randn(4, &[rows, n]),
    );
    let grads = |dtype: DType| -> Result<Vec<Vec<f64>>> {
        let [x, w, b, r] = [&x, &w, &b, &r].map(|t| t.to_dtype(dtype).expect("cast"));
        let (w, b) = (w.into_variable()?, b.into_variable()?);
        let grads = x.linear(&w, Some(&b))?.mul(&r)?.sum_all()?.backward()?;
        [&w, &b]
            .iter()
            .map(|v| grads.get(v).expect("a gradient").to_vec_f64())
            .collect()
    };
    let (got, want) = (grads(DType::F32)?, grads(DType::F64)?);
    for (name, got, want) in [("weight", &got[0], &want[0]), ("bias", &got[1], &want[1])] {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let tol = 1e-5 * (rows as f64).sqrt() * (1.0 + w.abs());
            assert!(
                (g - w).abs() <= tol,
                "d{name}[{i}] at {rows}×{k}→{n}: {g} != {w}"
            );
        }
    }
    Ok(())
}

/// The f32 attention gradients against the f64 ones (which the gradchecks cover) on
/// sizes whose forward takes the CPU's few-keys kernel (on AVX-512: at most 64 keys,
/// heads of at most 64, rows of k and v contiguous), a DiT's 49 tokens among them, and
/// past it (65 keys), where the f32 backward runs on the small-product kernel:
/// `scaled_dot_product_attention` on `[b, t, h, d]` views and `qkv_attention`, causal
/// or not. Equal within f32 rounding.
#[test]
fn attention_f32_gradients_match_f64_with_few_and_many_keys() -> Result<()> {
    for (t, d) in [(1, 8), (17, 32), (49, 32), (64, 64), (65, 16)] {
        for causal in [false, true] {
            let (b, h) = (2, 3);
            let (qkv, r) = (randn(1, &[b, t, 3 * h * d]), randn(2, &[b, t, h * d]));
            let grads = |dtype: DType, joint: bool| -> Result<Vec<f64>> {
                let qkv = qkv.to_dtype(dtype)?.into_variable()?;
                let out = match joint {
                    true => qkv_attention(&qkv, h, None, causal)?,
                    false => {
                        let parts = qkv.reshape(&[b, t, 3, h, d])?;
                        let part = |i| parts.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2);
                        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
                        let o = scaled_dot_product_attention(&q, &k, &v, None, causal)?;
                        o.transpose(1, 2)?.reshape(&[b, t, h * d])?
                    }
                };
                let grads = out.mul(&r.to_dtype(dtype)?)?.sum_all()?.backward()?;
                grads.get(&qkv).expect("a gradient").to_vec_f64()
            };
            for joint in [false, true] {
                let (got, want) = (grads(DType::F32, joint)?, grads(DType::F64, joint)?);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * ((t + d) as f64).sqrt() * (1.0 + w.abs());
                    let case = format!("t={t} d={d} causal={causal} joint={joint}");
                    assert!((g - w).abs() <= tol, "dqkv[{i}] ({case}): {g} vs {w}");
                }
            }
        }
    }
    Ok(())
}

/// The layer inside a gated residual (`ops/gated.rs`).
#[derive(Debug, Clone, Copy)]
enum GatedLayer {
    Linear,
    Mlp,
    PrenormMlp,
}

/// (b, t, k, hidden, n) of a gated residual's derivative check.
fn gated_dims() -> impl Strategy<Value = (usize, usize, usize, usize, usize)> {
    (1usize..=3, 1usize..=3, 1usize..=4, 1usize..=4, 1usize..=3)
}

/// The `mode` check of the gated residual around `layer`, x `[b, t, k]`, the layers
/// `k → hidden → n` (`k → n` for a linear layer; n = k for the pre-norm branch, whose
/// stream is x itself), the gate `[b, 1, n]` or `[n]`.
fn check_gated(
    mode: Mode,
    layer: GatedLayer,
    (b, t, k, hidden, n): (usize, usize, usize, usize, usize),
    per_sample: bool,
    seed: u64,
) -> std::result::Result<(), TestCaseError> {
    let n = if matches!(layer, GatedLayer::PrenormMlp) {
        k
    } else {
        n
    };
    let gate = if per_sample { vec![b, 1, n] } else { vec![n] };
    let first = if matches!(layer, GatedLayer::Linear) {
        vec![n, k]
    } else {
        vec![hidden, k]
    };
    let inputs = [
        randn(seed, &[b, t, k]),
        randn(seed ^ 1, &[b, t, n]),
        randn(seed ^ 2, &gate),
        randn(seed ^ 3, &first),
        randn(seed ^ 4, &[first[0]]),
        randn(seed ^ 5, &[n, hidden]),
        randn(seed ^ 6, &[n]),
        randn(seed ^ 7, &[b, 1, k]),
        randn(seed ^ 8, &[b, 1, k]),
    ];
    // The pre-norm branch has no stream of its own (x is the stream): input 1 unused.
    let used: Vec<Tensor> = match layer {
        GatedLayer::Linear => inputs[..5].to_vec(),
        GatedLayer::Mlp => inputs[..7].to_vec(),
        GatedLayer::PrenormMlp => [0, 2, 3, 4, 5, 6, 7, 8].map(|i| inputs[i].clone()).to_vec(),
    };
    let r = check(
        mode,
        |x| match layer {
            GatedLayer::Linear => {
                let residual = GatedResidual {
                    stream: &x[1],
                    gate: &x[2],
                };
                x[0].linear_gated(&x[3], Some(&x[4]), residual)
            }
            GatedLayer::Mlp => {
                let residual = GatedResidual {
                    stream: &x[1],
                    gate: &x[2],
                };
                gelu_mlp_gated(&x[0], (&x[3], Some(&x[4])), (&x[5], Some(&x[6])), residual)
            }
            GatedLayer::PrenormMlp => {
                let norm = PreNorm {
                    weight: Some(&x[6]),
                    bias: Some(&x[7]),
                    eps: 1e-5,
                };
                let (fc1, fc2) = ((&x[2], Some(&x[3])), (&x[4], Some(&x[5])));
                prenorm_gelu_mlp_gated(&x[0], norm, fc1, fc2, &x[1])
            }
        },
        &used,
    );
    if let Err(e) = r {
        let case = format!("b={b} t={t} k={k} hidden={hidden} n={n} gate {gate:?}");
        prop_assert!(false, "{e} ({layer:?} {case})")
    }
    Ok(())
}
