//! Elementwise maps a product applies to its output while it is still in cache: the
//! GELU after a feed-forward block's first layer, and the GELU's derivative in that
//! block's backward (`ops/mlp.rs`); a gated residual add after a block's last layer
//! (`ops/gated.rs`). On AVX-512 the packed product kernel runs the map
//! on each task's block of rows right after the block's last products
//! (`sgemm_avx512`); elsewhere it is a pass over the finished output. Either way the
//! values are those of the unary op and its backward (`unary_fn`,
//! `unary_derivative`), element for element.

use super::elementwise::{gelu_tanh_with_derivative, unary_derivative, unary_fn};
use super::float::CpuFloat;
use super::isa;
use super::matmul::SharedOut;
use crate::backend::UnaryOp;
use rayon::prelude::*;

/// What a product does to its output `y` (rows `n` apart).
#[derive(Clone, Copy)]
pub enum Epilogue<'a, F> {
    /// Keeps `y` and writes `gelu_tanh(y)` into a second output laid out like `y`.
    Gelu(SharedOut<F>),
    /// Replaces `y` by `gelu_tanh(y)` (when nothing needs `y` itself).
    GeluInPlace,
    /// Replaces `y` by `y·gelu_tanh'(pre)`, `pre` laid out like `y`.
    GeluGrad(&'a [F]),
    /// As `GeluGrad`, and writes `gelu_tanh(pre)` into a second output laid out like
    /// `y`: for a backward whose forward kept `pre` but not the activation (the two
    /// share their sigmoid, so the activation costs a store).
    GeluGradWithAct(&'a [F], SharedOut<F>),
    /// Replaces `y` by `stream + gate·y`: a gated residual around the layer the
    /// product ends (`ops/gated.rs`).
    GatedResidual(GatedRows<'a, F>),
}

/// A gated residual's other operands for an output of rows of `n`, the product's
/// first row being row `first_row` of them.
#[derive(Clone, Copy)]
pub struct GatedRows<'a, F> {
    /// The residual stream, laid out like the whole output, from its row 0.
    pub stream: &'a [F],
    /// The gate, `[groups, n]`: row `r` of the output takes gate row
    /// `r / rows_per_group`.
    pub gate: &'a [F],
    /// Output rows per gate row.
    pub rows_per_group: usize,
    /// The output's row length.
    pub n: usize,
    /// The row of `stream` (and of the gate's groups) where the product's output starts.
    pub first_row: usize,
}

impl<F: CpuFloat> GatedRows<'_, F> {
    /// Where element `at` of the product's output lies in the stream.
    fn stream_index(&self, at: usize) -> usize {
        self.first_row * self.n + at
    }

    /// `y = stream + gate·y` for `y`, elements `at..` of the product's output, row
    /// segment by row segment (a block may start or end inside a row).
    fn apply(&self, y: &mut [F], at: usize) {
        let n = self.n.max(1);
        let mut done = 0;
        while done < y.len() {
            let (row, col) = ((at + done) / n, (at + done) % n);
            let len = (n - col).min(y.len() - done);
            let row = self.first_row + row;
            let stream = &self.stream[self.stream_index(at + done)..][..len];
            let gate = &self.gate[row / self.rows_per_group * n + col..][..len];
            isa::dispatch(
                #[inline(always)]
                |(y, stream, gate): (&mut [F], &[F], &[F])| {
                    for ((y, &s), &g) in y.iter_mut().zip(stream).zip(gate) {
                        // The order of `addcmul`'s `x + a·b`: the same rounding.
                        *y = s + g * *y;
                    }
                },
                (&mut y[done..done + len], stream, gate),
            );
            done += len;
        }
    }
}

impl<'a, F: CpuFloat> Epilogue<'a, F> {
    /// The same epilogue typed as f32, for the f32 product kernel; only called where `F`
    /// is f32 (asserted).
    pub fn as_f32(self) -> Epilogue<'a, f32> {
        assert_eq!(std::any::TypeId::of::<F>(), std::any::TypeId::of::<f32>());
        match self {
            Epilogue::Gelu(act) => Epilogue::Gelu(act.cast()),
            Epilogue::GeluInPlace => Epilogue::GeluInPlace,
            // SAFETY: F is f32 (asserted), so the cast changes no type.
            Epilogue::GeluGrad(pre) => Epilogue::GeluGrad(unsafe { as_f32(pre) }),
            // SAFETY: as above.
            Epilogue::GeluGradWithAct(pre, act) => {
                Epilogue::GeluGradWithAct(unsafe { as_f32(pre) }, act.cast())
            }
            // SAFETY: as above.
            Epilogue::GatedResidual(r) => Epilogue::GatedResidual(GatedRows {
                stream: unsafe { as_f32(r.stream) },
                gate: unsafe { as_f32(r.gate) },
                rows_per_group: r.rows_per_group,
                n: r.n,
                first_row: r.first_row,
            }),
        }
    }

    /// Applies the map to `y`, the output's elements from index `at` on.
    ///
    /// # Safety
    /// No other thread reads or writes elements `at..at + y.len()` of a [`SharedOut`]
    /// output meanwhile.
    pub unsafe fn apply(&self, y: &mut [F], at: usize) {
        match *self {
            Epilogue::Gelu(act) => {
                let act = act.slice(at, y.len());
                isa::dispatch(
                    #[inline(always)]
                    |(act, y): (&mut [F], &[F])| {
                        for (a, &y) in act.iter_mut().zip(y) {
                            *a = unary_fn(UnaryOp::GeluTanh, y);
                        }
                    },
                    (act, &*y),
                );
            }
            Epilogue::GeluInPlace => isa::dispatch(
                #[inline(always)]
                |y: &mut [F]| {
                    for y in y.iter_mut() {
                        *y = unary_fn(UnaryOp::GeluTanh, *y);
                    }
                },
                y,
            ),
            Epilogue::GeluGrad(pre) => {
                let pre = &pre[at..at + y.len()];
                isa::dispatch(
                    #[inline(always)]
                    |(y, pre): (&mut [F], &[F])| {
                        for (y, &x) in y.iter_mut().zip(pre) {
                            *y = *y * unary_derivative(UnaryOp::GeluTanh, x);
                        }
                    },
                    (y, pre),
                );
            }
            Epilogue::GeluGradWithAct(pre, act) => {
                let (pre, act) = (&pre[at..at + y.len()], act.slice(at, y.len()));
                isa::dispatch(
                    #[inline(always)]
                    |(y, pre, act): (&mut [F], &[F], &mut [F])| {
                        for ((y, &x), a) in y.iter_mut().zip(pre).zip(act) {
                            let (value, slope) = gelu_tanh_with_derivative(x);
                            *y = *y * slope;
                            *a = value;
                        }
                    },
                    (y, pre, act),
                );
            }
            Epilogue::GatedResidual(rows) => rows.apply(y, at),
        }
    }

    /// Asks for the cache lines of the operand the map reads beside the output for the
    /// output's elements `at..at + len`, where that operand comes from memory: the
    /// pre-activation h of the GELU's derivative (which the forward wrote out long
    /// before), the residual stream of a gated residual. A product finishing its rows
    /// asks for those of a few rows ahead (`sgemm_avx512`): on demand, each row arrived
    /// one short run at a time, and the pass over h took longer than the GELU's
    /// arithmetic (docs/benchmarks.md).
    #[cfg(target_arch = "x86_64")]
    pub fn prefetch(&self, at: usize, len: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (values, start) = match *self {
            Epilogue::GeluGrad(pre) | Epilogue::GeluGradWithAct(pre, _) => (pre, at),
            Epilogue::GatedResidual(r) => (r.stream, r.stream_index(at)),
            _ => return,
        };
        let values = values
            .get(start..start.saturating_add(len))
            .unwrap_or_default();
        for line in values.chunks((64 / std::mem::size_of::<F>()).max(1)) {
            // SAFETY: a prefetch does not fault (the addresses are in the operand anyway).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }

    /// Applies the map to a whole finished output `y` (rows of `n`), rows in parallel.
    pub fn apply_all(&self, y: &mut [F], n: usize) {
        y.par_chunks_mut(ROWS_PER_TASK * n.max(1))
            .enumerate()
            .for_each(|(block, rows)| {
                // SAFETY: each task covers its own rows.
                unsafe { self.apply(rows, block * ROWS_PER_TASK * n) }
            });
    }
}

/// `values` as f32 where `F` is f32.
///
/// # Safety
/// `F` is f32.
unsafe fn as_f32<F>(values: &[F]) -> &[f32] {
    // SAFETY: the same type (the caller's promise).
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) }
}

/// Rows per task of [`Epilogue::apply_all`].
const ROWS_PER_TASK: usize = 64;
