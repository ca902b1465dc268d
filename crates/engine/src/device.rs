//! Where a tensor's storage lives.

#[cfg(feature = "cuda")]
use crate::error::Result;

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, computed by the CPU backend (`crate::cpu`).
    #[default]
    Cpu,
    /// NVIDIA GPU number `n` (the CUDA ordinal), computed by the CUDA backend
    /// (`crate::cuda`). Open one with [`Device::cuda`].
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

impl Device {
    /// CUDA device `ordinal`, opened now (context, stream, cuBLAS), or an error that
    /// says why it cannot be: no driver library, NVRTC missing, no such device.
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: usize) -> Result<Device> {
        crate::cuda::open(ordinal)?;
        Ok(Device::Cuda(ordinal))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
