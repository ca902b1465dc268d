//! Where a tensor's storage lives.

use crate::error::{Error, Result};

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
    /// The device called `name`, opened: `cpu`, or `cuda` / `cuda:N` (GPU 0 / GPU N) in
    /// a build with the `cuda` feature. Errors say what is wrong with the name, that the
    /// build lacks CUDA, or why the GPU cannot be opened.
    pub fn open(name: &str) -> Result<Device> {
        let bad = || {
            Error::invalid(
                "device",
                format!("unknown device {name:?} (valid: cpu, cuda, cuda:N)"),
            )
        };
        let ordinal = match name.trim() {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => 0,
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(bad)?,
        };
        Device::open_cuda(ordinal)
    }

    #[cfg(feature = "cuda")]
    fn open_cuda(ordinal: usize) -> Result<Device> {
        Device::cuda(ordinal)
    }

    #[cfg(not(feature = "cuda"))]
    fn open_cuda(ordinal: usize) -> Result<Device> {
        Err(Error::invalid(
            "device",
            format!(
                "cuda:{ordinal} asked for, but this binary was built without CUDA support \
                 (rebuild with `--features cuda`)"
            ),
        ))
    }

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
