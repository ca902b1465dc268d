//! Small dense f64 linear algebra for the metrics: symmetric eigen-decomposition by the
//! cyclic Jacobi method and a plain matrix product.

use twinflow_engine::{Error, Result};

/// The eigen-decomposition `A = V·diag(values)·Vᵀ` of a symmetric matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricEigen {
    /// Matrix size `n`.
    pub n: usize,
    /// The eigenvalues, in ascending order.
    pub values: Vec<f64>,
    /// The orthonormal eigenvectors, row-major `n × n`: column `j` (entries
    /// `vectors[i·n + j]`) belongs to `values[j]`.
    pub vectors: Vec<f64>,
}

impl SymmetricEigen {
    /// `V·diag(f(λ))·Vᵀ` (row-major `n × n`), e.g. the matrix square root with
    /// `f = |λ| √max(λ, 0)`.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Vec<f64> {
        let n = self.n;
        let fl: Vec<f64> = self.values.iter().map(|&l| f(l)).collect();
        // W = V·diag(f(λ)), then W·Vᵀ.
        let mut w = self.vectors.clone();
        for row in w.chunks_exact_mut(n) {
            row.iter_mut().zip(&fl).for_each(|(a, l)| *a *= l);
        }
        let vt = transpose(&self.vectors, n);
        matmul(&w, &vt, n)
    }
}

/// Row-major transpose of an `n × n` matrix.
pub(crate) fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = a[i * n + j];
        }
    }
    t
}

/// Row-major product of two `n × n` matrices.
pub(crate) fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        let ci = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            ci.iter_mut()
                .zip(&b[k * n..(k + 1) * n])
                .for_each(|(c, b)| *c += aik * b);
        }
    }
    c
}

/// The eigen-decomposition of the symmetric `n × n` matrix `a` (row-major) by the
/// cyclic Jacobi method, in f64.
///
/// Each sweep rotates away every off-diagonal pair `(p, q)` in turn; sweeps repeat
/// until the off-diagonal Frobenius norm is below `1e-14` of the matrix's (at most 100
/// sweeps; convergence is quadratic, typically well under 15 sweeps). Eigenvalues come
/// back ascending, eigenvectors orthonormal. Only the upper triangle's symmetry is
/// assumed: the input is symmetrised as `(A + Aᵀ)/2` first. Fails when
/// `a.len() != n²` or an entry is not finite. `O(n³)` per sweep: `n = 256` takes a
/// fraction of a second in release.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Result<SymmetricEigen> {
    const OP: &str = "symmetric_eigen";
    if a.len() != n * n {
        return Err(Error::invalid(
            OP,
            format!("expected {n}×{n} = {} values, got {}", n * n, a.len()),
        ));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("non-finite entry in the {n}×{n} matrix"),
        ));
    }
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            m[i * n + j] = 0.5 * (a[i * n + j] + a[j * n + i]);
        }
    }
    // vt holds Vᵀ (row k = eigenvector k) so rotations update contiguous rows.
    let mut vt = vec![0.0; n * n];
    for i in 0..n {
        vt[i * n + i] = 1.0;
    }
    let fro = m.iter().map(|v| v * v).sum::<f64>().sqrt();
    let skip = 1e-18 * fro / n.max(1) as f64;
    for _sweep in 0..100 {
        let mut off = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                off += 2.0 * m[i * n + j] * m[i * n + j];
            }
        }
        if off.sqrt() <= 1e-14 * fro {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() <= skip {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + theta.hypot(1.0));
                let c = 1.0 / t.hypot(1.0);
                let s = t * c;
                // A ← A·J (columns p, q), then A ← Jᵀ·A (rows p, q).
                for k in 0..n {
                    let (akp, akq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * akp - s * akq;
                    m[k * n + q] = s * akp + c * akq;
                }
                rotate_rows(&mut m, n, p, q, c, s);
                m[p * n + q] = 0.0;
                m[q * n + p] = 0.0;
                // V ← V·J, i.e. Vᵀ ← Jᵀ·Vᵀ.
                rotate_rows(&mut vt, n, p, q, c, s);
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[i * n + i].total_cmp(&m[j * n + j]));
    let values = order.iter().map(|&k| m[k * n + k]).collect();
    let mut vectors = vec![0.0; n * n];
    for (j, &k) in order.iter().enumerate() {
        for i in 0..n {
            vectors[i * n + j] = vt[k * n + i];
        }
    }
    Ok(SymmetricEigen { n, values, vectors })
}

/// Rows `p`, `q` of a row-major `n`-column matrix ← `Jᵀ` applied: `(c·r_p − s·r_q,
/// s·r_p + c·r_q)`.
fn rotate_rows(m: &mut [f64], n: usize, p: usize, q: usize, c: f64, s: f64) {
    let (head, tail) = m.split_at_mut(q * n);
    let rp = &mut head[p * n..(p + 1) * n];
    let rq = &mut tail[..n];
    for (a, b) in rp.iter_mut().zip(rq.iter_mut()) {
        let (x, y) = (*a, *b);
        *a = c * x - s * y;
        *b = s * x + c * y;
    }
}
