//! What the tests of the f32 product kernels share: random operands in three
//! layouts, the f64 reference and the check of the output against it.

use super::matmul::GemmArgs;

/// A product's operands, its output (`m` rows `ldc` apart, three columns past `n`
/// that a kernel must leave alone) and its arguments.
pub struct Case {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
    pub ldc: usize,
    pub g: GemmArgs,
    state: u64,
}

impl Case {
    /// Random operands for `m × k · k × n` with the left and right operands laid out
    /// by `layouts`: 0 row-major, 1 transposed, 2 every other value of wider rows
    /// (neither stride 1).
    pub fn new(
        (m, n, k): (usize, usize, usize),
        layouts: (usize, usize),
        accumulate: bool,
        seed: u64,
    ) -> Case {
        let strides = |layout: usize, rows: usize, cols: usize| match layout {
            0 => (cols, 1),
            1 => (1, rows),
            _ => (2 * cols + 1, 2),
        };
        let g = GemmArgs {
            m,
            n,
            k,
            lhs_strides: strides(layouts.0, m, k),
            rhs_strides: strides(layouts.1, k, n),
            accumulate,
        };
        let ldc = n + 3;
        let mut case = Case {
            a: Vec::new(),
            b: Vec::new(),
            c: Vec::new(),
            ldc,
            g,
            state: seed,
        };
        case.a = case.values(m * k * 3);
        case.b = case.values(k * n * 3);
        case.c = case.values(m * ldc);
        case
    }

    /// `len` more values in [−1, 1) from the case's generator.
    pub fn values(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                self.state = self
                    .state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `beta·A·B (+ C when accumulating)` in f64, laid out as the output.
    pub fn reference(&self, beta: f32) -> Vec<f64> {
        let g = self.g;
        let mut out = vec![0.0; g.m * self.ldc];
        for i in 0..g.m {
            for j in 0..g.n {
                let dot: f64 = (0..g.k)
                    .map(|p| {
                        self.a[i * g.lhs_strides.0 + p * g.lhs_strides.1] as f64
                            * self.b[p * g.rhs_strides.0 + j * g.rhs_strides.1] as f64
                    })
                    .sum();
                let prior = match g.accumulate {
                    true => self.c[i * self.ldc + j] as f64,
                    false => 0.0,
                };
                out[i * self.ldc + j] = beta as f64 * dot + prior;
            }
        }
        out
    }

    /// Whether the output `got` matches `want` within f32 rounding over `k` terms and
    /// leaves the columns past `n` as `before` held them; the first mismatch if not.
    pub fn check(&self, got: &[f32], want: &[f64], before: &[f32]) -> Result<(), String> {
        let (n, ldc) = (self.g.n, self.ldc);
        for i in 0..self.g.m {
            for j in 0..ldc {
                let at = i * ldc + j;
                let tol = 1e-5 * (self.g.k as f64).sqrt() * (1.0 + want[at].abs());
                let bad = match j < n {
                    true => (got[at] as f64 - want[at]).abs() > tol,
                    false => got[at].to_bits() != before[at].to_bits(),
                };
                if bad {
                    return Err(format!("({i}, {j}): {} vs {}", got[at], want[at]));
                }
            }
        }
        Ok(())
    }
}

/// True (after saying so once per test) when this CPU cannot run the AVX-512 kernels.
pub fn skipped(test: &'static str, said: &'static std::sync::Once) -> bool {
    let skip = !super::sgemm_avx512::available();
    if skip {
        said.call_once(|| eprintln!("{test} skipped: this CPU has no AVX-512F"));
    }
    skip
}
