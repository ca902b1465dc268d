//! Tensors to and from safetensors' little-endian bytes.

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use twinflow_engine::{DType, Device, Result, Tensor};

/// A tensor's safetensors dtype and its elements as little-endian bytes, row-major.
pub(super) fn encode(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    Ok(match t.dtype() {
        DType::F16 => (Dtype::F16, le_bytes(t.to_vec::<f16>()?, f16::to_le_bytes)),
        DType::BF16 => (
            Dtype::BF16,
            le_bytes(t.to_vec::<bf16>()?, bf16::to_le_bytes),
        ),
        DType::F32 => (Dtype::F32, le_bytes(t.to_vec::<f32>()?, f32::to_le_bytes)),
        DType::F64 => (Dtype::F64, le_bytes(t.to_vec::<f64>()?, f64::to_le_bytes)),
        DType::I64 => (Dtype::I64, le_bytes(t.to_vec::<i64>()?, i64::to_le_bytes)),
    })
}

/// A CPU tensor from a stored view, or what is wrong with it (a dtype the engine does
/// not have).
pub(super) fn decode(view: &TensorView<'_>) -> std::result::Result<Tensor, String> {
    let (bytes, shape) = (view.data(), view.shape());
    let tensor = match view.dtype() {
        Dtype::F16 => Tensor::from_vec(from_le(bytes, f16::from_le_bytes), shape, Device::Cpu),
        Dtype::BF16 => Tensor::from_vec(from_le(bytes, bf16::from_le_bytes), shape, Device::Cpu),
        Dtype::F32 => Tensor::from_vec(from_le(bytes, f32::from_le_bytes), shape, Device::Cpu),
        Dtype::F64 => Tensor::from_vec(from_le(bytes, f64::from_le_bytes), shape, Device::Cpu),
        Dtype::I64 => Tensor::from_vec(from_le(bytes, i64::from_le_bytes), shape, Device::Cpu),
        other => {
            return Err(format!(
                "dtype {other:?} (supported: F16, BF16, F32, F64, I64)"
            ))
        }
    };
    tensor.map_err(|e| e.to_string())
}

fn le_bytes<T, const N: usize>(values: Vec<T>, to_bytes: fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(to_bytes).collect()
}

fn from_le<T, const N: usize>(bytes: &[u8], from_bytes: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut word = [0u8; N];
            word.copy_from_slice(chunk);
            from_bytes(word)
        })
        .collect()
}
