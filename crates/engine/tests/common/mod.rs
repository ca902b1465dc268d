//! Helpers shared by the engine's integration tests (and, through `tests/common`, the
//! facade's): each test file declares `mod common;` and imports what it uses. Not
//! every test binary uses every helper, hence the allow.

#![allow(dead_code)]

use proptest::prelude::*;
use twinflow_engine::gradcheck::{gradcheck, GradcheckOptions, GradcheckReport};
use twinflow_engine::jvpcheck::jvpcheck;
use twinflow_engine::{no_grad, DType, Device, Generator, Result, Tensor};

// ---------------------------------------------------------------------------------------
// Profiles and optimizer lists
// ---------------------------------------------------------------------------------------

/// (op, calls, elements) of every row of a profile, sorted: what two timings of the
/// same work must agree on.
pub fn op_counts(r: &twinflow_engine::profile::Profile) -> Vec<(&'static str, u64, u64)> {
    let mut c: Vec<_> = r
        .ops
        .iter()
        .map(|o| (o.op, o.stats.calls, o.stats.elements))
        .collect();
    c.sort();
    c
}

/// The Adam list of `tensors` (parameter, gradient, m, v each), entry `i` at `step(i)`.
pub fn adam_list(
    tensors: &[[Tensor; 4]],
    step: impl Fn(usize) -> twinflow_engine::AdamStep,
) -> Vec<twinflow_engine::AdamTensors<'_>> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, [p, g, m, v])| twinflow_engine::AdamTensors {
            param: p,
            grad: g,
            exp_avg: m,
            exp_avg_sq: v,
            step: step(i),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// CUDA
// ---------------------------------------------------------------------------------------

/// CUDA device 0, or `None` after printing why the calling GPU test skips (no driver
/// library, no device).
#[cfg(feature = "cuda")]
pub fn gpu() -> Option<Device> {
    if !twinflow_engine::cuda::driver_present() {
        eprintln!("skipping: no CUDA driver/device");
        return None;
    }
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipping: no CUDA driver/device ({e})");
            None
        }
    }
}

/// The AdamW step the optimizer-update tests take (third step, weight decay 0.1).
pub fn adamw_step() -> twinflow_engine::AdamStep {
    twinflow_engine::AdamStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        decoupled: true,
        step: 3,
    }
}

// ---------------------------------------------------------------------------------------
// Proptest configuration
// ---------------------------------------------------------------------------------------

/// `cases` cases per test, without regression files: failures are reported (with the
/// case), not written to `proptest-regressions/` files.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Derivative checks: both modes from one test body
// ---------------------------------------------------------------------------------------

/// Which derivative a finite-difference check compares with central differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reverse mode: the gradient from `backward`, through `gradcheck`.
    Gradient,
    /// Forward mode: the tangent from `jvp`, through `jvpcheck`.
    Jvp,
}

impl Mode {
    /// `gradcheck` or `jvpcheck` of `f` at `inputs`.
    pub fn check(
        self,
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
        opts: &GradcheckOptions,
    ) -> Result<GradcheckReport> {
        match self {
            Mode::Gradient => gradcheck(f, inputs, opts),
            Mode::Jvp => jvpcheck(f, inputs, opts),
        }
    }

    /// How many elements a full check of `f` at `inputs` compares: every float input
    /// element (a gradient), or every output element once per direction (a tangent:
    /// all float inputs together, then, when there are several, each alone).
    pub fn elements(
        self,
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
    ) -> Result<usize> {
        Ok(match self {
            Mode::Gradient => inputs
                .iter()
                .filter(|t| t.dtype().is_float())
                .map(Tensor::elem_count)
                .sum(),
            Mode::Jvp => {
                let floats = inputs.iter().filter(|t| t.dtype().is_float()).count();
                let directions = if floats > 1 { floats + 1 } else { 1 };
                no_grad(|| f(inputs))?.elem_count() * directions
            }
        })
    }
}

/// Declares an op's two finite-difference property tests from one body: `gradcheck_<op>`
/// (reverse mode) and `jvpcheck_<op>` (forward mode). Both draw the same cases; the
/// first parameter names the [`Mode`] the body runs in, which it hands to its check
/// helpers. `#[test]` is added; doc comments and other attributes go on both tests.
///
/// ```ignore
/// derivative_checks! {
///     #![proptest_config(config(24))]
///
///     fn gradcheck_add / jvpcheck_add (mode, args in arg_pair()) {
///         check_binary(mode, &args, any_real, |a, b| a.add(b))?;
///     }
/// }
/// ```
#[allow(unused_macros)] // unused by the test binaries without derivative checks
macro_rules! derivative_checks {
    (
        #![proptest_config($config:expr)]
        $(
            $(#[$meta:meta])*
            fn $grad:ident / $jvp:ident ($mode:ident, $($args:tt)+) $body:block
        )*
    ) => {
        ::proptest::proptest! {
            #![proptest_config($config)]
            $(
                $(#[$meta])*
                #[test]
                fn $grad($($args)+) {
                    let $mode = $crate::common::Mode::Gradient;
                    $body
                }

                $(#[$meta])*
                #[test]
                fn $jvp($($args)+) {
                    let $mode = $crate::common::Mode::Jvp;
                    $body
                }
            )*
        }
    };
}
#[allow(unused_imports)] // unused there too
pub(crate) use derivative_checks;

// ---------------------------------------------------------------------------------------
// Tensors and values
// ---------------------------------------------------------------------------------------

/// Standard normal values of `shape` and `dtype`, from `seed`.
pub fn randn_as(seed: u64, shape: &[usize], dtype: DType) -> Tensor {
    Generator::new(seed)
        .randn(shape, dtype, Device::Cpu)
        .expect("randn")
}

/// Standard normal f64 values of `shape`, from `seed`.
pub fn randn(seed: u64, shape: &[usize]) -> Tensor {
    randn_as(seed, shape, DType::F64)
}

/// Standard normal f64 values (as a Vec) of `shape`, from `seed`.
pub fn randn_vec(seed: u64, shape: &[usize]) -> Vec<f64> {
    Generator::new(seed)
        .randn(shape, DType::F64, Device::Cpu)
        .and_then(|t| t.to_vec_f64())
        .expect("randn")
}

/// A tensor of `dtype` holding `data`.
pub fn tensor(data: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f64s(data, shape, dtype, Device::Cpu).expect("tensor")
}

/// The elements of `t` as f64.
pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64().expect("to_vec_f64")
}

/// An i64 tensor of `shape`.
pub fn ids(values: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, Device::Cpu).expect("ids")
}

/// An i64 tensor of shape `[values.len()]`.
pub fn labels(values: &[i64]) -> Tensor {
    Tensor::from_slice(values, &[values.len()], Device::Cpu).expect("labels")
}

/// `n` pseudo-random indices in `0..hi` from `seed` (splitmix64).
pub fn indices(seed: u64, n: usize, hi: usize) -> Vec<i64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % hi as u64) as i64
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Index arithmetic (row-major) and shapes
// ---------------------------------------------------------------------------------------

/// The multi-index of row-major position `i` in `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// The row-major position of multi-index `idx` in `shape`.
pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// A norm parameter's shape for x of shape `x`: x's first `groups` dims (at most all
/// but the last), then ones, then the last dim; `groups = 0` gives `[d]`.
pub fn per_group_shape(x: &[usize], groups: usize) -> Vec<usize> {
    let lead = groups.min(x.len() - 1);
    if lead == 0 {
        return vec![x[x.len() - 1]];
    }
    let mut shape = x[..lead].to_vec();
    shape.resize(x.len() - 1, 1);
    shape.push(x[x.len() - 1]);
    shape
}

/// `shape` with its last two dims swapped: how a tensor is stored when the op is handed
/// its `.t()` view.
pub fn swapped(shape: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    let r = s.len();
    s.swap(r - 2, r - 1);
    s
}

/// Shapes of rank `lo..=hi` with dims in `1..=max`.
pub fn shape(lo: usize, hi: usize, max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=max, lo..=hi)
}

/// A shape of rank `lo..=hi` with a permutation of its dims.
pub fn shape_and_perm(
    lo: usize,
    hi: usize,
    max: usize,
) -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    shape(lo, hi, max).prop_flat_map(|s| {
        let r = s.len();
        (Just(s), Just((0..r).collect::<Vec<_>>()).prop_shuffle())
    })
}

// ---------------------------------------------------------------------------------------
// Inputs of the elementwise ops: shapes, broadcasts, strided views, reductions, domains
// ---------------------------------------------------------------------------------------

pub mod elementwise {
    use super::{randn_vec, ravel, unravel};
    use proptest::prelude::*;
    use twinflow_engine::{Result, Tensor};

    /// Extra elements of the last dim of a stored tensor that `View::Narrowed` cuts off.
    pub const NARROW_PAD: usize = 2;

    /// How an input is viewed before the op, so that the ops' strided kernels (and, in
    /// gradient checks, the backward of the views) are checked, not only contiguous ones.
    #[derive(Debug, Clone, Copy)]
    pub enum View {
        /// Used as stored (contiguous).
        Plain,
        /// Dims rotated by `permute` (a transpose at rank 2): no unit inner stride.
        Permuted,
        /// The last dim cut out of a wider stored one, starting at 1: an offset and gaps
        /// between rows.
        Narrowed,
    }

    impl View {
        /// The permutation `Permuted` applies: dim `i` of the view is dim `i + 1` stored.
        pub fn rotation(rank: usize) -> Vec<usize> {
            (0..rank).map(|i| (i + 1) % rank).collect()
        }

        /// The shape to store so that the view of it has `shape`.
        pub fn stored_shape(self, shape: &[usize]) -> Vec<usize> {
            let r = shape.len();
            match self {
                View::Plain => shape.to_vec(),
                View::Permuted => (0..r).map(|j| shape[(j + r - 1) % r]).collect(),
                View::Narrowed => {
                    let mut s = shape.to_vec();
                    if let Some(last) = s.last_mut() {
                        *last += NARROW_PAD;
                    }
                    s
                }
            }
        }

        /// The engine's view of a stored tensor.
        pub fn apply(self, x: &Tensor) -> Result<Tensor> {
            match self {
                View::Plain => Ok(x.clone()),
                View::Permuted => x.permute(&View::rotation(x.rank())),
                View::Narrowed if x.rank() == 0 => Ok(x.clone()),
                View::Narrowed => x.narrow(-1, 1, x.dim(-1)? - NARROW_PAD),
            }
        }

        /// Reference: the elements of the view of `stored`, row-major, where `shape` is
        /// the view's shape. Dim `k` of a `Permuted` view is stored dim `(k + 1) % rank`.
        pub fn read(self, stored: &[f64], shape: &[usize]) -> Vec<f64> {
            let st = self.stored_shape(shape);
            let r = shape.len();
            let n: usize = shape.iter().product();
            (0..n)
                .map(|i| {
                    let idx = unravel(i, shape);
                    let at = match self {
                        View::Plain => idx,
                        View::Permuted => {
                            let mut j = vec![0; r];
                            (0..r).for_each(|k| j[(k + 1) % r] = idx[k]);
                            j
                        }
                        View::Narrowed => {
                            let mut j = idx;
                            if let Some(last) = j.last_mut() {
                                *last += 1;
                            }
                            j
                        }
                    };
                    stored[ravel(&at, &st)]
                })
                .collect()
        }
    }

    pub fn view() -> impl Strategy<Value = View> {
        prop_oneof![
            Just(View::Plain),
            Just(View::Permuted),
            Just(View::Narrowed)
        ]
    }

    /// A shape of rank `min_rank..=max_rank` (higher ranks drawn more often) with dims
    /// 1..=4 (size-1 dims included).
    pub fn shape(min_rank: usize, max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
        let rank = prop::sample::select((min_rank..=max_rank).collect::<Vec<_>>());
        let rank = (rank.clone(), rank).prop_map(|(a, b)| a.max(b));
        rank.prop_flat_map(|r| prop::collection::vec(1usize..=4, r))
    }

    /// `full` with its first `drop` dims removed and the dims whose bit is set in `ones`
    /// set to 1: a shape that broadcasts to `full`.
    pub fn squash(full: &[usize], drop: usize, ones: u8) -> Vec<usize> {
        full[drop.min(full.len())..]
            .iter()
            .enumerate()
            .map(|(i, &d)| if ones >> i & 1 == 1 { 1 } else { d })
            .collect()
    }

    /// `k` shapes that broadcast together: each is a common shape with (less often) some
    /// leading dims dropped and (each with probability 1/4) some dims set to 1.
    pub fn broadcast_shapes(k: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
        let drop = prop_oneof![3 => Just(0usize), 1 => 1usize..=3];
        let part = (drop, any::<u8>(), any::<u8>());
        (shape(0, 3), prop::collection::vec(part, k)).prop_map(|(full, parts)| {
            parts
                .into_iter()
                .map(|(drop, ones1, ones2)| squash(&full, drop, ones1 & ones2))
                .collect()
        })
    }

    /// One input: its shape as the op sees it, how it is viewed, and the seed of its
    /// values. Each test file adds the methods that make its tensors.
    #[derive(Debug, Clone)]
    pub struct Arg {
        pub shape: Vec<usize>,
        pub view: View,
        pub seed: u64,
    }

    impl Arg {
        /// The stored values: standard normal draws mapped through `domain`.
        pub fn values(&self, domain: impl Fn(f64) -> f64) -> Vec<f64> {
            let n = self.view.stored_shape(&self.shape).iter().product();
            randn_vec(self.seed, &[n]).into_iter().map(domain).collect()
        }
    }

    pub fn arg_of(shape: impl Strategy<Value = Vec<usize>>) -> impl Strategy<Value = Arg> {
        (shape, view(), any::<u64>()).prop_map(|(shape, view, seed)| Arg { shape, view, seed })
    }

    /// An input of rank 1..=3 with a non-empty set of dims to reduce (some written
    /// negative, in either order) and `keepdim`.
    #[derive(Debug, Clone)]
    pub struct Reduction {
        pub arg: Arg,
        pub dims: Vec<isize>,
        pub keepdim: bool,
    }

    impl Reduction {
        /// The reduced dims as non-negative indices.
        pub fn dims(&self) -> Vec<usize> {
            let r = self.arg.shape.len() as isize;
            self.dims
                .iter()
                .map(|&d| d.rem_euclid(r) as usize)
                .collect()
        }

        /// The output shape, from the keep-dim one.
        pub fn out_shape(&self, keep: &[usize]) -> Vec<usize> {
            let dims = self.dims();
            match self.keepdim {
                true => keep.to_vec(),
                false => (keep.iter().enumerate())
                    .filter(|(d, _)| !dims.contains(d))
                    .map(|(_, &n)| n)
                    .collect(),
            }
        }

        /// How many elements each output combines.
        pub fn count(&self) -> usize {
            let r = self.arg.shape.len() as isize;
            self.dims
                .iter()
                .map(|&d| self.arg.shape[d.rem_euclid(r) as usize])
                .product()
        }
    }

    pub fn reduction() -> impl Strategy<Value = Reduction> {
        let flags = (any::<u8>(), any::<u8>(), any::<bool>(), any::<bool>());
        (arg_of(shape(1, 3)), flags).prop_map(|(arg, (pick, neg, reverse, keepdim))| {
            let r = arg.shape.len();
            // No bit picked: reduce over every dim.
            let pick = match pick as usize % (1 << r) {
                0 => (1 << r) - 1,
                p => p,
            };
            let mut dims: Vec<isize> = (0..r)
                .filter(|&d| pick >> d & 1 == 1)
                .map(|d| match neg >> d & 1 {
                    1 => d as isize - r as isize,
                    _ => d as isize,
                })
                .collect();
            if reverse {
                dims.reverse();
            }
            Reduction { arg, dims, keepdim }
        })
    }

    // Domains: maps from standard normal values into an op's domain.

    /// Positive, bounded away from 0 (log, sqrt, rsqrt, powf).
    pub fn positive(x: f64) -> f64 {
        x.abs() + 0.5
    }

    /// Either sign, bounded away from 0 (recip, denominators).
    pub fn nonzero(x: f64) -> f64 {
        x.signum() * (x.abs() + 0.5)
    }
}
