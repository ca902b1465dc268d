//! Seeded 2-D toy distributions with class labels, drawn fresh for every batch.
//!
//! Each is defined precisely (formulas, noise, scaling, labels) in `docs/data.md`.

use std::f64::consts::{FRAC_PI_4, PI};
use twinflow_engine::{sizes, DType, Device, Error, Generator, Result, Tensor};

/// Standard deviation of the Gaussian noise of `moons`, in the unscaled (sklearn) units.
pub const MOONS_NOISE: f64 = 0.1;
/// Scale of `moons`: the centred sklearn points are divided by this.
pub const MOONS_SCALE: f64 = 1.5;
/// Radius of the circle that holds the centres of `8gaussians`.
pub const GAUSSIANS_RADIUS: f64 = 0.8;
/// Standard deviation of each component of `8gaussians`.
pub const GAUSSIANS_STD: f64 = 0.08;
/// Standard deviation of the Gaussian noise of `spirals`.
pub const SPIRALS_NOISE: f64 = 0.03;
/// Number of turns of angle of each spiral arm, in radians (1.5 turns).
pub const SPIRALS_MAX_ANGLE: f64 = 3.0 * PI;

/// A 2-D toy distribution (a mixture over classes, each sample's class drawn uniformly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Toy2d {
    /// Two interleaved half circles (sklearn's `make_moons`); 2 classes (which moon).
    Moons,
    /// Eight Gaussians on a circle; 8 classes (which Gaussian).
    EightGaussians,
    /// The 8 dark squares of a 4×4 checkerboard over `[−1, 1)²`; 8 classes (which square).
    Checkerboard,
    /// Two interleaved spiral arms; 2 classes (which arm).
    Spirals,
}

impl Toy2d {
    /// Every toy distribution, in the order of [`Toy2d::name`]s in the docs.
    pub const ALL: [Toy2d; 4] = [
        Toy2d::Moons,
        Toy2d::EightGaussians,
        Toy2d::Checkerboard,
        Toy2d::Spirals,
    ];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Toy2d::Moons => "moons",
            Toy2d::EightGaussians => "8gaussians",
            Toy2d::Checkerboard => "checkerboard",
            Toy2d::Spirals => "spirals",
        }
    }

    /// The distribution called `name`, if any.
    pub fn from_name(name: &str) -> Option<Toy2d> {
        Toy2d::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Number of classes (labels are `0..num_classes()`).
    pub fn num_classes(self) -> usize {
        match self {
            Toy2d::Moons | Toy2d::Spirals => 2,
            Toy2d::EightGaussians | Toy2d::Checkerboard => 8,
        }
    }

    /// Values per sample: always 2.
    pub fn dim(self) -> usize {
        2
    }

    /// `n` fresh samples: the points, row-major `[n, 2]`, and their class labels.
    ///
    /// Draws exactly two tensors from `gen` (uniforms `[n, 3]`, then normals `[n, 2]`),
    /// so the generator advances by `2n` whatever the distribution.
    pub fn sample(self, n: usize, gen: &mut Generator) -> Result<(Vec<f32>, Vec<i64>)> {
        let u = gen
            .uniform(&[n, 3], 0.0, 1.0, DType::F64, Device::Cpu)?
            .to_vec_f64()?;
        let e = gen.randn(&[n, 2], DType::F64, Device::Cpu)?.to_vec_f64()?;
        let k = self.num_classes();
        // `2n` fits: the uniforms' `3n` did.
        let mut points = sizes::try_vec("toy data", 2 * n)?;
        let mut labels = sizes::try_vec("toy data", n)?;
        for i in 0..n {
            let (u0, u1, u2) = (u[3 * i], u[3 * i + 1], u[3 * i + 2]);
            let (e0, e1) = (e[2 * i], e[2 * i + 1]);
            let c = ((u0 * k as f64) as usize).min(k - 1);
            let (x, y) = match self {
                Toy2d::Moons => {
                    let th = PI * u1;
                    let (mx, my) = if c == 0 {
                        (th.cos(), th.sin())
                    } else {
                        (1.0 - th.cos(), 0.5 - th.sin())
                    };
                    (
                        (mx + MOONS_NOISE * e0 - 0.5) / MOONS_SCALE,
                        (my + MOONS_NOISE * e1 - 0.25) / MOONS_SCALE,
                    )
                }
                Toy2d::EightGaussians => {
                    let a = c as f64 * FRAC_PI_4;
                    (
                        GAUSSIANS_RADIUS * a.cos() + GAUSSIANS_STD * e0,
                        GAUSSIANS_RADIUS * a.sin() + GAUSSIANS_STD * e1,
                    )
                }
                Toy2d::Checkerboard => {
                    let row = c / 2;
                    let col = 2 * (c % 2) + row % 2;
                    (
                        -1.0 + 0.5 * (col as f64 + u1),
                        -1.0 + 0.5 * (row as f64 + u2),
                    )
                }
                Toy2d::Spirals => {
                    let th = u1.sqrt() * SPIRALS_MAX_ANGLE;
                    let r = th / SPIRALS_MAX_ANGLE;
                    let s = if c == 0 { 1.0 } else { -1.0 };
                    (
                        s * r * -th.cos() + SPIRALS_NOISE * e0,
                        s * r * th.sin() + SPIRALS_NOISE * e1,
                    )
                }
            };
            points.push(x as f32);
            points.push(y as f32);
            labels.push(c as i64);
        }
        Ok((points, labels))
    }

    /// `n` fresh samples as tensors: points `[n, 2]` f32 and labels `[n]` i64.
    pub fn sample_tensors(self, n: usize, gen: &mut Generator) -> Result<(Tensor, Tensor)> {
        let (x, y) = self.sample(n, gen)?;
        Ok((
            Tensor::from_vec(x, &[n, 2], Device::Cpu)?,
            Tensor::from_vec(y, &[n], Device::Cpu)?,
        ))
    }
}

impl std::fmt::Display for Toy2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Toy2d {
    type Err = Error;

    fn from_str(s: &str) -> Result<Toy2d> {
        Toy2d::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Toy2d::ALL.iter().map(|t| t.name()).collect();
            Error::invalid(
                "toy2d",
                format!(
                    "unknown toy distribution {s:?} (valid: {})",
                    names.join(", ")
                ),
            )
        })
    }
}
