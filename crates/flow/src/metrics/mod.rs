//! Sample-quality metrics: distances between two sample sets `[N, D]`, all computed in
//! f64 on the CPU, single-threaded.
//!
//! - [`energy_distance`]: Székely's energy distance `2·E|X−Y| − E|X−X'| − E|Y−Y'|`
//!   (within-set terms as unbiased U-statistics).
//! - [`sliced_wasserstein`]: sliced Wasserstein distance (W2 by default, W1 on request)
//!   over seeded random unit directions.
//! - [`frechet_distance`]: the Fréchet distance between Gaussians fitted to two feature
//!   sets (FID-style), with the matrix square-root trace computed through symmetric
//!   Jacobi eigen-decompositions ([`symmetric_eigen`]).
//! - [`real_floor`] / [`split_floor`]: the same metric between two independent sets of
//!   real samples, the floor to print beside a model's score.
//!
//! Every metric takes [`Samples`] (build them from f64/f32 rows or from a rank-2 engine
//! [`Tensor`]) and fails with [`Error::InvalidArgument`](twinflow_engine::Error) naming
//! the metric and both shapes when a set is empty (or too small), the dimensions differ,
//! or a value is not finite.

mod energy;
mod frechet;
mod linalg;
mod sliced;

pub use energy::energy_distance;
pub use frechet::{frechet_distance, gaussian_frechet, GaussianStats};
pub use linalg::{symmetric_eigen, SymmetricEigen};
pub use sliced::{
    random_directions, sliced_wasserstein, sliced_wasserstein_along, SlicedWasserstein,
    WassersteinOrder,
};

use twinflow_engine::{Error, Result, Tensor};

/// A set of `n` samples of dimension `dim`, stored row-major in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    data: Vec<f64>,
    n: usize,
    dim: usize,
}

impl Samples {
    /// `n = data.len() / dim` samples of dimension `dim` from row-major values. Fails
    /// when `dim` is zero or does not divide `data.len()`. An empty `data` gives an
    /// empty set (which every metric rejects).
    pub fn new(data: Vec<f64>, dim: usize) -> Result<Samples> {
        if dim == 0 {
            return Err(Error::invalid(
                "samples",
                "sample dimension must be positive",
            ));
        }
        if !data.len().is_multiple_of(dim) {
            return Err(Error::invalid(
                "samples",
                format!(
                    "{} values do not split into rows of dimension {dim}",
                    data.len()
                ),
            ));
        }
        Ok(Samples {
            n: data.len() / dim,
            data,
            dim,
        })
    }

    /// Samples from row-major f32 values (e.g. a sampler's output), widened to f64.
    pub fn from_f32(data: &[f32], dim: usize) -> Result<Samples> {
        Samples::new(data.iter().map(|&v| v as f64).collect(), dim)
    }

    /// Samples from rows, which must all have the same, positive length.
    pub fn from_rows(rows: &[Vec<f64>]) -> Result<Samples> {
        let dim = rows.first().map_or(0, Vec::len);
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != dim) {
            return Err(Error::invalid(
                "samples",
                format!("row {i} has length {}, row 0 has length {dim}", r.len()),
            ));
        }
        if rows.is_empty() {
            return Err(Error::invalid("samples", "no rows given"));
        }
        Samples::new(rows.concat(), dim)
    }

    /// Samples from a rank-2 tensor `[N, D]` of any dtype (converted with
    /// [`Tensor::to_vec_f64`]).
    pub fn from_tensor(t: &Tensor) -> Result<Samples> {
        match t.shape() {
            &[n, d] if d > 0 => Ok(Samples {
                data: t.to_vec_f64()?,
                n,
                dim: d,
            }),
            s => Err(Error::invalid(
                "samples",
                format!("expected a [N, D] tensor with D > 0, got shape {s:?}"),
            )),
        }
    }

    /// Number of samples `N`.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the set holds no samples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Dimension `D` of each sample.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The shape `[N, D]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.n, self.dim]
    }

    /// All values, row-major.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// Sample `i` (panics when `i >= len()`).
    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The samples one row at a time.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f64> {
        self.data.chunks_exact(self.dim)
    }

    /// The first `⌊N/2⌋` samples and the rest (for [`split_floor`]).
    pub fn split_halves(&self) -> (Samples, Samples) {
        let h = self.n / 2;
        let (a, b) = self.data.split_at(h * self.dim);
        (
            Samples {
                data: a.to_vec(),
                n: h,
                dim: self.dim,
            },
            Samples {
                data: b.to_vec(),
                n: self.n - h,
                dim: self.dim,
            },
        )
    }
}

/// Checks two sets for a metric: each holds at least `min_n` samples, the dimensions
/// agree, and every value is finite. Errors name `op` and both shapes.
pub(crate) fn check_pair(op: &'static str, x: &Samples, y: &Samples, min_n: usize) -> Result<()> {
    let shapes = format!("{:?} and {:?}", x.shape(), y.shape());
    if x.len() < min_n || y.len() < min_n {
        let what = if min_n <= 1 {
            "an empty sample set".to_string()
        } else {
            format!("a sample set with fewer than {min_n} samples")
        };
        return Err(Error::invalid(op, format!("{what}: shapes {shapes}")));
    }
    if x.dim() != y.dim() {
        return Err(Error::invalid(
            op,
            format!("sample dimensions differ: shapes {shapes}"),
        ));
    }
    for (name, s) in [("first", x), ("second", y)] {
        if let Some(i) = s.as_slice().iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                op,
                format!(
                    "non-finite value in the {name} set (sample {}, shapes {shapes})",
                    i / s.dim()
                ),
            ));
        }
    }
    Ok(())
}

/// A metric between two sample sets, as a value (e.g. to compute a model's score and
/// the real-vs-real floor the same way).
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// [`energy_distance`].
    Energy,
    /// [`sliced_wasserstein`] with this configuration (directions from its seed, so
    /// every call uses the same directions).
    SlicedWasserstein(SlicedWasserstein),
    /// [`frechet_distance`].
    Frechet,
}

impl Metric {
    /// A short name for tables and JSON (`"energy"`, `"sliced_w2"`, `"sliced_w1"`,
    /// `"frechet"`).
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Energy => "energy",
            Metric::SlicedWasserstein(c) => match c.order {
                WassersteinOrder::W1 => "sliced_w1",
                WassersteinOrder::W2 => "sliced_w2",
            },
            Metric::Frechet => "frechet",
        }
    }

    /// The metric between `x` and `y`.
    pub fn compute(&self, x: &Samples, y: &Samples) -> Result<f64> {
        match self {
            Metric::Energy => energy_distance(x, y),
            Metric::SlicedWasserstein(c) => sliced_wasserstein(x, y, c),
            Metric::Frechet => frechet_distance(x, y),
        }
    }
}

/// The real-vs-real floor: `metric` between two independent draws of real samples,
/// each obtained by calling `draw` once (e.g. two fresh batches of a toy distribution,
/// of the same size as the model's samples). Sampling noise keeps a finite-sample
/// metric above zero even for a perfect model; print this beside the model's score.
pub fn real_floor(metric: &Metric, mut draw: impl FnMut() -> Result<Samples>) -> Result<f64> {
    let a = draw()?;
    let b = draw()?;
    metric.compute(&a, &b)
}

/// The real-vs-real floor from one finite set of real samples (e.g. held-out image
/// features): `metric` between its first and second halves (see
/// [`Samples::split_halves`]). Note each half holds `N/2` samples, so compare against
/// model scores computed from sets of about that size.
pub fn split_floor(metric: &Metric, real: &Samples) -> Result<f64> {
    let (a, b) = real.split_halves();
    metric.compute(&a, &b)
}
