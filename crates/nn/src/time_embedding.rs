//! Embeddings of the (signed) times `t` and `tt`: the sinusoidal features of the
//! reference DiT (`sincos`) and the `Linear → SiLU → Linear` MLP that follows them.

use crate::impl_module;
use crate::init::ParamBuilder;
use crate::linear::{Linear, LinearConfig};
use crate::module::Forward;
use twinflow_engine::{DType, Device, Error, Result, Tensor};

/// The scale the reference DiT puts on times in `[0, 1]` before [`sincos`]: its
/// diffusion timesteps run to 1000.
pub const DEFAULT_TIME_SCALE: f64 = 1000.0;

/// Refuses a time scale that is not a finite number above zero, naming `op`.
pub(crate) fn check_time_scale(op: &'static str, scale: f64) -> Result<()> {
    match scale.is_finite() && scale > 0.0 {
        true => Ok(()),
        false => Err(Error::invalid(
            op,
            format!("time_scale must be a finite number above zero, got {scale}"),
        )),
    }
}

/// `[cos(a), sin(a)]` with `a = t·freqs·scale` and `freqs = exp(−ln(10000)·i/half)`,
/// `i < half = dim/2`: t `[B]` (any float dtype) → `[B, dim]` of t's dtype (computed
/// in f64 for f64 times, else in f32). `scale` is [`DEFAULT_TIME_SCALE`] for the
/// reference TwinFlow networks; MeanFlow's reference embeds t itself (scale 1), which
/// keeps the network's time derivative, part of its training target, small.
///
/// The signed value of `t` enters (never `|t|`), so a negative time (TwinFlow's fake
/// trajectory) gets a different embedding from its positive twin: the cosine half is
/// even in `t`, the sine half odd. `dim` must be even and positive.
pub fn sincos(t: &Tensor, dim: usize, scale: f64) -> Result<Tensor> {
    if dim == 0 || !dim.is_multiple_of(2) {
        return Err(Error::invalid(
            "sincos",
            format!("dim must be even and positive, got {dim}"),
        ));
    }
    if t.rank() != 1 {
        return Err(Error::invalid(
            "sincos",
            format!("expects times of shape [B], got {:?}", t.shape()),
        ));
    }
    // Half-precision times are embedded in f32, as PyTorch's type promotion against its
    // f32 frequencies does: an angle of up to 1000 radians needs f32's mantissa.
    let work = match t.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let freqs = frequencies(dim / 2, work, t.device())?;
    let a = t
        .to_dtype(work)?
        .unsqueeze(1)?
        .mul(&freqs.unsqueeze(0)?)?
        .mul_scalar(scale)?;
    Tensor::cat(&[&a.cos()?, &a.sin()?], 1)?.to_dtype(t.dtype())
}

/// `exp(−ln(10000)·i/half)` for `i < half`, of `dtype` (f32 or f64). In f32 they are
/// computed with PyTorch's order of operations (f32 is its default dtype), so that the
/// f32 model sees the reference's frequencies, up to the exponential's last ulp.
fn frequencies(half: usize, dtype: DType, device: Device) -> Result<Tensor> {
    let values: Vec<f64> = match dtype {
        DType::F64 => (0..half)
            .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp())
            .collect(),
        _ => (0..half)
            .map(|i| ((-(10000f64.ln()) as f32) * i as f32 / half as f32).exp() as f64)
            .collect(),
    };
    Tensor::from_f64s(&values, &[half], dtype, device)
}

/// `Linear(freq_dim, dim) → SiLU → Linear(dim, dim)` on [`sincos`] features, parameter
/// names `0.weight`, `0.bias`, `2.weight`, `2.bias` (those of PyTorch's
/// `nn.Sequential(Linear, SiLU, Linear)`).
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    /// First layer, `freq_dim → dim`.
    pub fc1: Linear,
    /// Second layer, `dim → dim`.
    pub fc2: Linear,
    freq_dim: usize,
    scale: f64,
}

impl TimeEmbedding {
    /// An embedding of `freq_dim` sinusoidal features (even) of times scaled by
    /// `scale` (see [`sincos`]) into `dim`.
    pub fn new(
        pb: &mut ParamBuilder,
        (freq_dim, scale): (usize, f64),
        dim: usize,
        cfg: LinearConfig,
    ) -> Result<Self> {
        if freq_dim == 0 || freq_dim % 2 != 0 {
            return Err(Error::invalid(
                "time_embedding",
                format!("freq_dim must be even and positive, got {freq_dim}"),
            ));
        }
        Ok(TimeEmbedding {
            fc1: Linear::new(pb, freq_dim, dim, cfg)?,
            fc2: Linear::new(pb, dim, dim, cfg)?,
            freq_dim,
            scale,
        })
    }
}

impl Forward for TimeEmbedding {
    /// Times `[B]` → `[B, dim]`.
    fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let h = self
            .fc1
            .forward(&sincos(t, self.freq_dim, self.scale)?)?
            .silu()?;
        self.fc2.forward(&h)
    }
}

// Named by their indices in PyTorch's `nn.Sequential(Linear, SiLU, Linear)`.
impl_module! { TimeEmbedding { fc1 as "0", fc2 as "2" } }
