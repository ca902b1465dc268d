//! Parameter creation: initialisers and the [`ParamBuilder`] that every layer's
//! constructor draws its parameters from, so that a model built with the same seed,
//! dtype and device is the same model.

use std::sync::{Arc, Mutex, MutexGuard};
use twinflow_engine::{DType, Device, Error, Generator, GeneratorState, Result, Tensor};

/// How to fill a new parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros (biases, adaLN-Zero modulation and output layers).
    Zeros,
    /// All equal to the value (norm weights: 1).
    Const(f64),
    /// Normal with mean 0 and this standard deviation (DiT uses 0.02).
    Normal(f64),
    /// Uniform in ±√(6/(fan_in + fan_out)) (Glorot/Xavier).
    XavierUniform,
    /// Uniform in ±1/√fan_in: PyTorch's default for `nn.Linear` weights and biases.
    KaimingUniform,
}

/// The random stream of a model's forward passes (dropout masks, label dropout),
/// shared by all its layers, like PyTorch's global generator but owned by the model.
/// Saving its state before a forward and restoring it before a second one gives both
/// the same masks, as TwinFlow's paired forwards need; [`ForwardRng::with_copies`]
/// gives the same masks to the copies of one forward over inputs stacked along the
/// batch.
#[derive(Debug, Clone)]
pub struct ForwardRng(Arc<Mutex<Stream>>);

/// The generator and how many stacked copies the current forward runs.
#[derive(Debug)]
struct Stream {
    generator: Generator,
    copies: usize,
}

impl ForwardRng {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        ForwardRng(Arc::new(Mutex::new(Stream {
            generator: Generator::new(seed),
            copies: 1,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Stream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state, to restore later.
    pub fn state(&self) -> GeneratorState {
        self.lock().generator.state()
    }

    /// Rewinds (or advances) the stream to a saved state.
    pub fn set_state(&self, state: GeneratorState) {
        self.lock().generator.set_state(state)
    }

    /// Values uniform in `[lo, hi)` of `shape`, whose first dim is the batch. Inside
    /// [`ForwardRng::with_copies`]`(k, …)` the batch is `k` stacked copies: the values
    /// of one copy are drawn and repeated `k` times, and the stream advances as one
    /// copy's forward would advance it. `op` names the caller in the error raised when
    /// the batch does not split into `k` copies.
    pub fn uniform(
        &self,
        op: &'static str,
        shape: &[usize],
        (lo, hi): (f64, f64),
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let mut stream = self.lock();
        let copies = stream.copies;
        let batch = shape.first().copied().unwrap_or(1);
        if copies == 1 {
            return stream.generator.uniform(shape, lo, hi, dtype, device);
        }
        if batch % copies != 0 {
            return Err(Error::invalid(
                op,
                format!("a batch of {batch} does not split into {copies} stacked copies"),
            ));
        }
        let mut one = shape.to_vec();
        one[0] = batch / copies;
        let values = stream.generator.uniform(&one, lo, hi, dtype, device)?;
        Tensor::cat(&vec![&values; copies], 0)
    }

    /// Runs `f`, a forward over `copies` inputs stacked along the batch, with every
    /// draw repeated for each copy (see [`ForwardRng::uniform`]), then returns to one
    /// copy.
    pub fn with_copies<T>(&self, copies: usize, f: impl FnOnce() -> T) -> T {
        let before = std::mem::replace(&mut self.lock().copies, copies.max(1));
        let out = f();
        self.lock().copies = before;
        out
    }
}

/// Creates parameters: the random streams, dtype and device every layer uses.
#[derive(Debug, Clone)]
pub struct ParamBuilder {
    /// The stream initialisers draw from.
    pub rng: Generator,
    /// The forward-pass stream handed to layers that draw at run time (dropout).
    pub forward_rng: ForwardRng,
    /// Dtype of new parameters (f32 for training, f64 for gradient checks).
    pub dtype: DType,
    /// Device of new parameters.
    pub device: Device,
}

impl ParamBuilder {
    /// f32 parameters on the CPU, drawn from the stream of `seed` (the forward stream
    /// is seeded from it too).
    pub fn new(seed: u64) -> Self {
        ParamBuilder {
            rng: Generator::new(seed),
            forward_rng: ForwardRng::new(seed ^ 0x5EED_F0D0_F0D0_5EED),
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }

    /// The same builder making parameters of `dtype`.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The same builder making parameters on `device`.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// A new trainable parameter of `shape` filled by `init`; `fan` is
    /// (fan_in, fan_out) for the fan-based initialisers.
    pub fn param(&mut self, shape: &[usize], init: Init, fan: (usize, usize)) -> Result<Tensor> {
        let (dtype, device) = (self.dtype, self.device);
        let t = match init {
            Init::Zeros => Tensor::zeros(shape, dtype, device)?,
            Init::Const(v) => Tensor::full(v, shape, dtype, device)?,
            Init::Normal(std) => self.rng.normal(shape, 0.0, std, dtype, device)?,
            Init::XavierUniform => {
                let a = (6.0 / (fan.0 + fan.1).max(1) as f64).sqrt();
                self.rng.uniform(shape, -a, a, dtype, device)?
            }
            Init::KaimingUniform => {
                let a = 1.0 / (fan.0.max(1) as f64).sqrt();
                self.rng.uniform(shape, -a, a, dtype, device)?
            }
        };
        t.into_variable()
    }

    /// A parameter of `shape` holding `values` (row-major, in the builder's dtype and
    /// device), drawing nothing from the init stream.
    pub fn param_from(&mut self, shape: &[usize], values: Vec<f64>) -> Result<Tensor> {
        Tensor::from_vec(values, shape, self.device)?
            .to_dtype(self.dtype)?
            .into_variable()
    }
}
