//! Scaled-dot-product attention on `[b, h, t, d]` views, forward and backward: the
//! reference the CUDA kernels are tested against. Each (batch, head) pair is computed
//! with single-threaded products on the strided views directly (`gemm_into`: for f32 on
//! AVX-512, the small-product kernel), in parallel across batch entries; the f32
//! forward over at most 64 keys on AVX-512 runs on a fused kernel instead
//! (`attention_few_keys`). Results are written token-major, `[b, t, h, d]`, as the
//! attention op expects (`token_major` in `ops/attention.rs`).

use super::float::{max_lanes, sum_lanes, CpuFloat};
use super::host_buffer::HostBuffer;
use super::isa;
use super::matmul::{batch_offsets, gemm_into, GemmArgs};
use super::pool;
use super::prefetch::{Prefetcher, Region};
use crate::backend::AttentionSpec;
use crate::layout::Layout;
use gemm::Parallelism::None as OneThread;
use rayon::prelude::*;
use std::ops::Range;

/// One operand: its storage, per-(b, h) offsets and (row, column) strides.
struct Operand<'a, F> {
    data: &'a [F],
    offsets: Vec<usize>,
    heads: usize,
    rows: usize,
    cols: usize,
    strides: (usize, usize),
}

impl<'a, F> Operand<'a, F> {
    fn new(data: &'a [F], l: &Layout) -> Self {
        let s = l.strides();
        Operand {
            data,
            offsets: batch_offsets(l),
            heads: l.shape()[1],
            rows: l.shape()[2],
            cols: l.shape()[3],
            strides: (s[2], s[3]),
        }
    }
    fn at(&self, bh: usize) -> &'a [F] {
        &self.data[self.offsets[bh]..]
    }
    fn transposed(&self) -> (usize, usize) {
        (self.strides.1, self.strides.0)
    }
}

/// Asks for the lines of batch entry `b`'s pairs of every operand in `ops` to be
/// brought into L2 while the entry before it is computed (nothing past the last
/// entry), all at once. On demand, the next entry's strided rows reached the small
/// products from L3 or memory a few lines at a time: prefetched, the DiT's attention
/// ran about 5 % faster (docs/benchmarks.md).
fn prefetch_entry<F>(ops: &[&Operand<F>], b: usize) {
    Prefetcher::new(entry_regions(ops, &[], b), 1).ask_share();
}

/// Entry `b`'s addresses in the operands `ops` and the address ranges `writes`, in
/// address order, overlapping ones (such as q, k and v of one `qkv` tensor) merged.
fn entry_regions<F>(ops: &[&Operand<F>], writes: &[Range<usize>], b: usize) -> Vec<Region> {
    let mut spans: Vec<Range<usize>> = ops.iter().filter_map(|op| op.entry_span(b)).collect();
    spans.extend(writes.iter().filter(|w| w.start < w.end).cloned());
    spans.sort_by_key(|span| span.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged.into_iter().filter_map(Region::span).collect()
}

impl<F> Operand<'_, F> {
    /// The addresses batch entry `b`'s pairs reach, when they lie close together (a
    /// batch-innermost layout would span the whole tensor); `None` past the last
    /// entry.
    fn entry_span(&self, b: usize) -> Option<Range<usize>> {
        let offsets = self.offsets.get(b * self.heads..(b + 1) * self.heads)?;
        let (rs, cs) = self.strides;
        let reach = self.rows.checked_sub(1)? * rs + self.cols.checked_sub(1)? * cs + 1;
        let start = *offsets.iter().min()?;
        let end = (offsets.iter().max()? + reach).min(self.data.len());
        let compact = end - start <= 4 * self.heads * self.rows * self.cols;
        let address = |i: usize| self.data.as_ptr().wrapping_add(i) as usize;
        (start < end && compact).then(|| address(start)..address(end))
    }
}

/// `dst (m×n, rows `ldc` apart) = beta·lhs·rhs`.
fn product<F: CpuFloat>(
    dst: Dst<F>,
    lhs: (&[F], (usize, usize)),
    rhs: (&[F], (usize, usize)),
    mkn: (usize, usize, usize),
    beta: F,
) {
    product_into(dst, lhs, rhs, mkn, beta, false);
}

/// `dst = beta·lhs·rhs`, or `dst += beta·lhs·rhs` when `accumulate`.
fn product_into<F: CpuFloat>(
    (dst, ldc): Dst<F>,
    (lhs, lhs_strides): (&[F], (usize, usize)),
    (rhs, rhs_strides): (&[F], (usize, usize)),
    (m, k, n): (usize, usize, usize),
    beta: F,
    accumulate: bool,
) {
    let g = GemmArgs {
        m,
        n,
        k,
        lhs_strides,
        rhs_strides,
        accumulate,
    };
    gemm_into(dst, ldc, lhs, rhs, g, beta, OneThread, None);
}

/// Scores `scale·q·kᵀ` into `s` (`tq × tk`, overwritten) with the causal mask applied
/// (masked entries −∞).
fn scores<F: CpuFloat>(
    (s, ld): (&mut [F], usize),
    q: &Operand<F>,
    k: &Operand<F>,
    bh: usize,
    spec: AttentionSpec,
) {
    let (tq, tk, d) = (q.rows, k.rows, q.cols);
    let (qs, ks) = ((q.at(bh), q.strides), (k.at(bh), k.transposed()));
    product((s, ld), qs, ks, (tq, d, tk), F::c(spec.scale));
    if spec.causal {
        for i in 0..tq {
            s[i * ld + (i + 1).min(tk)..i * ld + tk].fill(F::neg_infinity());
        }
    }
}

/// The row stride of a backward or JVP score buffer of `tk` keys, padded so that every
/// row starts a cache line: the products write and read those rows 64 bytes at a time,
/// and 49-key rows packed back to back straddled lines (padded, the DiT's attention
/// backward ran 4–8 % faster and its JVP 4 %, docs/benchmarks.md).
fn score_stride<F>(tk: usize) -> usize {
    tk.next_multiple_of(64 / std::mem::size_of::<F>())
}

/// An output buffer of `n` values: as the pool hands it out when the kernels write
/// every value (each pair's products overwrite all of their rows), zeros otherwise.
fn output<F: CpuFloat>(n: usize, overwritten: bool) -> HostBuffer<F> {
    match overwritten {
        true => pool::take(n),
        false => pool::take_zeroed(n),
    }
}

/// Scores → probabilities, row by row (rows of `tk` values `ld` apart), with each
/// row's log-sum-exp into `lse`.
#[inline(always)]
fn softmax_rows<F: CpuFloat>(p: &mut [F], lse: &mut [F], (tk, ld): (usize, usize)) {
    for (row, l) in p.chunks_mut(ld.max(1)).zip(lse.iter_mut()) {
        let row = &mut row[..tk];
        *l = max_lanes(row);
        match ld == tk {
            true => row.iter_mut().for_each(|x| *x = *x - *l),
            // Padded rows: their exponentials here, since over the whole buffer the
            // padding's would cost more than the rows' scalar tails.
            false => row.iter_mut().for_each(|x| *x = (*x - *l).exp_v()),
        }
    }
    if ld == tk {
        exp_all(p);
    }
    for (row, l) in p.chunks_mut(ld.max(1)).zip(lse.iter_mut()) {
        let row = &mut row[..tk];
        let sum = sum_lanes([&*row], |[x]| x);
        let inv = sum.recip();
        row.iter_mut().for_each(|x| *x = *x * inv);
        *l = *l + sum.ln();
    }
}

/// eˣ of every value, over the whole `tq × tk` buffer at once: row by row, short rows
/// (49 keys in the default DiT) left a scalar tail of the vector loop in every row,
/// which took most of the exponentials' time.
#[inline(always)]
fn exp_all<F: CpuFloat>(values: &mut [F]) {
    values.iter_mut().for_each(|x| *x = x.exp_v());
}

/// Output, stored `[b, tq, h, dv]`, and log-sum-exp `[b, h, tq]`.
pub fn attention<F: CpuFloat>(
    q: (&[F], &Layout),
    k: (&[F], &Layout),
    v: (&[F], &Layout),
    spec: AttentionSpec,
) -> (HostBuffer<F>, HostBuffer<F>) {
    let (q, k, v) = (
        Operand::new(q.0, q.1),
        Operand::new(k.0, k.1),
        Operand::new(v.0, v.1),
    );
    let (bh, h, tq, tk, dv) = (q.offsets.len(), q.heads, q.rows, k.rows, v.cols);
    let mut out = output(bh * tq * dv, tk > 0);
    let mut lse = output(bh * tq, tk > 0);
    if bh == 0 || tq == 0 || dv == 0 {
        return (out, lse);
    }
    // A batch entry's heads interleave in the token-major output: one task per entry,
    // with one score buffer for all of its heads.
    out.par_chunks_mut(tq * h * dv)
        .zip(lse.par_chunks_mut(h * tq))
        .enumerate()
        .for_each(|(b, (o, l))| {
            prefetch_entry(&[&q, &k, &v], b + 1);
            let mut p = Vec::new();
            for (head, l) in l.chunks_mut(tq).enumerate() {
                let i = b * h + head;
                let o = (&mut o[head * dv..], h * dv);
                if few_keys_pair((&q, &k, &v), i, spec, (&mut *o.0, o.1), l) {
                    continue;
                }
                p.resize(tq * tk, F::zero());
                scores((&mut p, k.rows), &q, &k, i, spec);
                isa::dispatch(
                    #[inline(always)]
                    |(p, l)| softmax_rows(p, l, (tk, tk)),
                    (&mut p, l),
                );
                product(
                    o,
                    (&p, (tk, 1)),
                    (v.at(i), v.strides),
                    (tq, tk, dv),
                    F::one(),
                );
            }
        });
    (out, lse)
}

/// Pair `i`'s output and log-sum-exp on the few-keys kernel (`attention_few_keys`)
/// when it takes the pair (f32 on AVX-512, at most 64 keys, heads of at most 64);
/// false, with nothing written, otherwise.
fn few_keys_pair<'a, F: CpuFloat>(
    (q, k, v): (&Operand<'a, F>, &Operand<'a, F>, &Operand<'a, F>),
    i: usize,
    spec: AttentionSpec,
    (o, ldo): Dst<F>,
    lse: &mut [F],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>() {
        use super::attention_few_keys::{covers, forward, Rows};
        use super::matmul::{as_f32_slice, as_f32_slice_mut};
        let rows = |op: &Operand<'a, F>| Rows {
            data: as_f32_slice(op.at(i)),
            rows: op.rows,
            cols: op.cols,
            strides: op.strides,
        };
        let (q, k, v) = (rows(q), rows(k), rows(v));
        if covers(&q, &k, &v) {
            let (o, lse) = (as_f32_slice_mut(o), as_f32_slice_mut(lse));
            forward((q, k, v), (spec.scale as f32, spec.causal), (o, ldo), lse);
            return true;
        }
    }
    false
}

/// dS = P∘(dP − rowsum(P∘dP)) in place of dP (`ds`), rows of `tk` values `ld` apart.
/// The row sums equal the usual rowsum(dO∘O) (O = P·V and dP = dO·Vᵀ), taken here from
/// the two rows just computed instead of from the forward's output, which the backward
/// then never reads: a fifth less to fetch from memory per pair. The softmax's Jacobian
/// is symmetric, so the JVP's tP = P∘(tS − rowsum(P∘tS)) is this same map of tS.
#[inline(always)]
fn score_grads<F: CpuFloat>(ds: &mut [F], p: &[F], (tk, ld): (usize, usize)) {
    for (ds, p) in ds.chunks_mut(ld).zip(p.chunks(ld)) {
        let (ds, p) = (&mut ds[..tk], &p[..tk]);
        let di = sum_lanes([&*ds, p], |[dp, p]| dp * p);
        for (ds, &p) in ds.iter_mut().zip(p) {
            *ds = p * (*ds - di);
        }
    }
}

/// The gradients of q, k and v, stored token-major like the output.
pub struct AttentionGrads<F: CpuFloat> {
    /// Gradient of q, stored `[b, tq, h, d]`.
    pub dq: HostBuffer<F>,
    /// Gradient of k, stored `[b, tk, h, d]`.
    pub dk: HostBuffer<F>,
    /// Gradient of v, stored `[b, tk, h, dv]`.
    pub dv: HostBuffer<F>,
}

/// The backward's inputs: q, k, v, the forward's log-sum-exp and the output's
/// gradient.
pub struct BackwardInputs<'a, F> {
    /// q `[b, h, tq, d]`.
    pub q: (&'a [F], &'a Layout),
    /// k `[b, h, tk, d]`.
    pub k: (&'a [F], &'a Layout),
    /// v `[b, h, tk, dv]`.
    pub v: (&'a [F], &'a Layout),
    /// The forward's row log-sum-exp `[b, h, tq]`.
    pub lse: &'a [F],
    /// The output's gradient, a `[b, h, tq, dv]` view.
    pub grad: (&'a [F], &'a Layout),
}

/// Backward: with P recomputed from the saved log-sum-exp,
/// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP − rowsum(P∘dP)), dQ = scale·dS·K, dK = scale·dSᵀ·Q.
pub fn attention_backward<F: CpuFloat>(
    x: BackwardInputs<F>,
    spec: AttentionSpec,
) -> AttentionGrads<F> {
    let ops = BackwardOperands::new(&x);
    let (bh, h, tq, tk) = (ops.q.offsets.len(), ops.q.heads, ops.q.rows, ops.k.rows);
    let (d, dv) = (ops.q.cols, ops.v.cols);
    // Without queries or keys every gradient is zero.
    let overwritten = tq > 0 && tk > 0;
    let mut grads = AttentionGrads {
        dq: output(bh * tq * d, overwritten),
        dk: output(bh * tk * d, overwritten),
        dv: output(bh * tk * dv, overwritten),
    };
    if bh == 0 || tq == 0 || tk == 0 {
        return grads;
    }
    let written = [
        EntryAddresses::of(&grads.dq, tq * h * d),
        EntryAddresses::of(&grads.dk, tk * h * d),
        EntryAddresses::of(&grads.dv, tk * h * dv),
    ];
    // A batch entry's heads interleave in the token-major gradients: one task per entry.
    grads
        .dq
        .par_chunks_mut(tq * h * d.max(1))
        .zip(grads.dk.par_chunks_mut(tk * h * d.max(1)))
        .zip(grads.dv.par_chunks_mut(tk * h * dv.max(1)))
        .enumerate()
        .for_each(|(b, ((dq, dk), dvo))| {
            let mut work = EntryWork::new(&ops, &written.map(|w| w.entry(b + 1)), b);
            for head in 0..h {
                let dst = PairGrads::Separate([
                    (&mut dq[head * d..], h * d),
                    (&mut dk[head * d..], h * d),
                    (&mut dvo[head * dv..], h * dv),
                ]);
                work.pair(&ops, (x.lse, spec), b * h + head, dst);
            }
        });
    grads
}

/// The products of a pair's backward, each followed by a share of the next entry's
/// lines: the backward's entry reads about 2,000 lines and writes 1,200, too many to
/// ask for at once (`prefetch`).
const PRODUCTS: usize = 5;

/// What a batch entry's pairs share in the backward: two `tq × tk` score buffers (rows
/// [`score_stride`] apart) and the next entry's lines still to ask for.
struct EntryWork<F: CpuFloat> {
    scratch: [HostBuffer<F>; 2],
    ahead: Prefetcher,
}

impl<F: CpuFloat> EntryWork<F> {
    /// The work of entry `b`, whose pairs ask for the next entry's operand lines and
    /// the address ranges `writes`, a share after each product.
    fn new(ops: &BackwardOperands<F>, writes: &[Range<usize>], b: usize) -> Self {
        let (heads, tq, tk) = (ops.q.heads, ops.q.rows, ops.k.rows);
        EntryWork {
            scratch: [(); 2].map(|_| HostBuffer::zeroed(tq * score_stride::<F>(tk))),
            ahead: Prefetcher::new(entry_regions(&ops.all(), writes, b + 1), heads * PRODUCTS),
        }
    }

    /// The gradients of pair `i` into `dst`.
    fn pair(
        &mut self,
        ops: &BackwardOperands<F>,
        (lse, spec): (&[F], AttentionSpec),
        i: usize,
        dst: PairGrads<F>,
    ) {
        let buffers = (&mut self.scratch, &mut self.ahead);
        pair_grads(ops, (lse, spec), i, dst, buffers);
    }
}

/// Where a buffer cut into batch entries lies: to ask for an entry's lines ahead
/// while another thread may be writing it, by address only.
#[derive(Clone, Copy)]
struct EntryAddresses {
    base: usize,
    bytes: usize,
    entry_bytes: usize,
}

impl EntryAddresses {
    fn of<F>(buffer: &[F], entry_len: usize) -> Self {
        let size = std::mem::size_of::<F>();
        EntryAddresses {
            base: buffer.as_ptr() as usize,
            bytes: std::mem::size_of_val(buffer),
            entry_bytes: entry_len * size,
        }
    }

    /// Entry `b`'s addresses (empty past the buffer's end).
    fn entry(&self, b: usize) -> Range<usize> {
        let start = (b * self.entry_bytes).min(self.bytes);
        let end = (start + self.entry_bytes).min(self.bytes);
        self.base + start..self.base + end
    }
}

/// The backward of self-attention whose q, k and v are the three parts of one
/// `[b, t, 3, h, d]` tensor (a `qkv` projection's output): the gradients written into
/// one buffer laid out the same way, which is that tensor's gradient, so that the
/// projection's backward needs no assembly of three gradients. q, k and v share
/// `[b, h, t, d]`.
pub fn attention_backward_joint<F: CpuFloat>(
    x: BackwardInputs<F>,
    spec: AttentionSpec,
) -> HostBuffer<F> {
    let ops = BackwardOperands::new(&x);
    let (bh, h, t, d) = (ops.q.offsets.len(), ops.q.heads, ops.q.rows, ops.q.cols);
    assert!(ops.k.rows == t && ops.v.rows == t && ops.v.cols == d);
    let mut grads = output(bh * t * 3 * d, t > 0);
    if bh == 0 || t == 0 || d == 0 {
        return grads;
    }
    let row = 3 * h * d;
    let written = EntryAddresses::of(&grads, t * row);
    grads
        .par_chunks_mut(t * row)
        .enumerate()
        .for_each(|(b, entry)| {
            let mut work = EntryWork::new(&ops, &[written.entry(b + 1)], b);
            for head in 0..h {
                let at = [0, 1, 2].map(|part| part * h * d + head * d);
                let dst = PairGrads::Joint(&mut *entry, at, row);
                work.pair(&ops, (x.lse, spec), b * h + head, dst);
            }
        });
    grads
}

/// A destination matrix and the distance between its rows.
type Dst<'a, F> = (&'a mut [F], usize);

/// Where one pair's dq, dk and dv go.
enum PairGrads<'a, F> {
    /// Each in its own buffer.
    Separate([Dst<'a, F>; 3]),
    /// Interleaved in one buffer: where each starts, and the distance between rows.
    Joint(&'a mut [F], [usize; 3], usize),
}

impl<F> PairGrads<'_, F> {
    /// The destination of gradient `part` (0: dq, 1: dk, 2: dv).
    fn get(&mut self, part: usize) -> Dst<'_, F> {
        match self {
            PairGrads::Separate(dst) => (&mut *dst[part].0, dst[part].1),
            PairGrads::Joint(buffer, at, row) => (&mut buffer[at[part]..], *row),
        }
    }
}

/// The operands of the backward: q, k, v and the output's gradient.
struct BackwardOperands<'a, F> {
    q: Operand<'a, F>,
    k: Operand<'a, F>,
    v: Operand<'a, F>,
    g: Operand<'a, F>,
}

impl<'a, F> BackwardOperands<'a, F> {
    /// Every operand, for the next entry's prefetch.
    fn all(&self) -> [&Operand<'a, F>; 4] {
        [&self.q, &self.k, &self.v, &self.g]
    }

    fn new(x: &BackwardInputs<'a, F>) -> Self {
        let op = |(data, l): (&'a [F], &'a Layout)| Operand::new(data, l);
        BackwardOperands {
            q: op(x.q),
            k: op(x.k),
            v: op(x.v),
            g: op(x.grad),
        }
    }
}

/// The gradients of pair `i` into `dst`; `scratch` holds two `tq × tk` buffers
/// (probabilities and score gradients, rows [`score_stride`] apart), overwritten; a
/// share of `ahead` is asked for after each product.
fn pair_grads<F: CpuFloat>(
    x: &BackwardOperands<F>,
    (lse, spec): (&[F], AttentionSpec),
    i: usize,
    mut dst: PairGrads<F>,
    ([p, ds], ahead): (&mut [HostBuffer<F>; 2], &mut Prefetcher),
) {
    let (q, k, v, g) = (&x.q, &x.k, &x.v, &x.g);
    let (tq, tk, d, dv) = (q.rows, k.rows, q.cols, v.cols);
    let scale = F::c(spec.scale);
    let ld = score_stride::<F>(tk);
    scores((p, ld), q, k, i, spec);
    ahead.ask_share();
    let lse = &lse[i * tq..(i + 1) * tq];
    isa::dispatch(
        #[inline(always)]
        |p| {
            // Row by row: over the whole buffer (`exp_all`) the padding's exponentials
            // cost more than the rows' scalar tails.
            for (row, &l) in p.chunks_mut(ld).zip(lse) {
                row[..tk].iter_mut().for_each(|x| *x = (*x - l).exp_v());
            }
        },
        &mut p[..],
    );
    let dout = (g.at(i), g.strides);
    product(dst.get(2), (p, (1, ld)), dout, (tk, tq, dv), F::one());
    ahead.ask_share();
    let v_t = (v.at(i), v.transposed());
    product((ds, ld), dout, v_t, (tq, dv, tk), F::one());
    ahead.ask_share();
    isa::dispatch(
        #[inline(always)]
        |ds| score_grads(ds, p, (tk, ld)),
        &mut ds[..],
    );
    let k_rows = (k.at(i), k.strides);
    product(dst.get(0), (ds, (ld, 1)), k_rows, (tq, tk, d), scale);
    ahead.ask_share();
    product(
        dst.get(1),
        (ds, (1, ld)),
        (q.at(i), q.strides),
        (tk, tq, d),
        scale,
    );
    ahead.ask_share();
}

/// The output, its log-sum-exp and its tangent, the output stored like
/// [`attention`]'s and the tangent token-major too.
pub struct AttentionJvp<F: CpuFloat> {
    /// The output, stored `[b, tq, h, dv]`.
    pub out: HostBuffer<F>,
    /// The row log-sum-exp, `[b, h, tq]`.
    pub lse: HostBuffer<F>,
    /// The output's tangent, stored `[b, tq, h, dv]`.
    pub tangent: HostBuffer<F>,
}

/// The forward and its JVP in one pass over each (batch, head) pair. With S the
/// scores, P = softmax(S) and tS = scale·(tQ·Kᵀ + Q·tKᵀ):
/// tP = P∘(tS − rowsum(P∘tS)) and tO = tP·V + P·tV.
pub fn attention_jvp<F: CpuFloat>(
    (q, k, v): (Input<F>, Input<F>, Input<F>),
    (tq, tk, tv): (Input<F>, Input<F>, Input<F>),
    spec: AttentionSpec,
) -> AttentionJvp<F> {
    let primals = [q, k, v].map(|(d, l)| Operand::new(d, l));
    let tangents = [tq, tk, tv].map(|(d, l)| Operand::new(d, l));
    let [q, _, v] = &primals;
    let (bh, h, rows, dv) = (q.offsets.len(), q.heads, q.rows, v.cols);
    let mut r = AttentionJvp {
        out: pool::take_zeroed(bh * rows * dv),
        lse: pool::take_zeroed(bh * rows),
        tangent: pool::take_zeroed(bh * rows * dv),
    };
    if bh == 0 || rows == 0 || dv == 0 {
        return r;
    }
    r.out
        .par_chunks_mut(rows * h * dv)
        .zip(r.tangent.par_chunks_mut(rows * h * dv))
        .zip(r.lse.par_chunks_mut(h * rows))
        .enumerate()
        .for_each(|(b, ((o, to), l))| {
            for (head, l) in l.chunks_mut(rows).enumerate() {
                let dst = (&mut o[head * dv..], &mut to[head * dv..], h * dv);
                pair_jvp(&primals, &tangents, b * h + head, spec, (dst, l));
            }
        });
    r
}

/// A pair's output and tangent destinations (token-major: rows `ldo` apart).
type PairOutputs<'a, F> = (&'a mut [F], &'a mut [F], usize);

/// A kernel operand: the storage and its layout.
type Input<'a, F> = (&'a [F], &'a Layout);

/// The output, log-sum-exp and tangent of pair `i`.
fn pair_jvp<F: CpuFloat>(
    [q, k, v]: &[Operand<F>; 3],
    [tq, tk, tv]: &[Operand<F>; 3],
    i: usize,
    spec: AttentionSpec,
    ((o, to, ldo), lse): (PairOutputs<F>, &mut [F]),
) {
    let (rows, keys, d, dv) = (q.rows, k.rows, q.cols, v.cols);
    let ld = score_stride::<F>(keys);
    let mut p = HostBuffer::<F>::zeroed(rows * ld);
    scores((&mut p, ld), q, k, i, spec);
    isa::dispatch(
        #[inline(always)]
        |(p, l)| softmax_rows(p, l, (keys, ld)),
        (&mut p, lse),
    );
    let scale = F::c(spec.scale);
    let mut tp = HostBuffer::<F>::zeroed(rows * ld);
    let dims = (rows, d, keys);
    product(
        (&mut tp, ld),
        (tq.at(i), tq.strides),
        (k.at(i), k.transposed()),
        dims,
        scale,
    );
    let q_tk = ((q.at(i), q.strides), (tk.at(i), tk.transposed()));
    product_into((&mut tp, ld), q_tk.0, q_tk.1, dims, scale, true);
    // Masked scores have P = 0, so their tangents vanish here whatever tS holds.
    isa::dispatch(
        #[inline(always)]
        |tp: &mut [F]| score_grads(tp, &p, (keys, ld)),
        &mut tp[..],
    );
    let p_rows = (&p[..], (ld, 1));
    product(
        (o, ldo),
        p_rows,
        (v.at(i), v.strides),
        (rows, keys, dv),
        F::one(),
    );
    product(
        (&mut *to, ldo),
        (&tp, (ld, 1)),
        (v.at(i), v.strides),
        (rows, keys, dv),
        F::one(),
    );
    product_into(
        (to, ldo),
        p_rows,
        (tv.at(i), tv.strides),
        (rows, keys, dv),
        F::one(),
        true,
    );
}
