//! Tensors to and from safetensors' little-endian bytes, and the file itself: an
//! 8-byte little-endian header length, the JSON header, the tensors' bytes.
//!
//! The file is written here rather than by `safetensors::serialize_to_file`, whose
//! header lists the metadata in hash order: here the metadata keys and the tensors are
//! in a fixed order, so the same checkpoint always gives the same bytes.

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::io::Write;
use twinflow_engine::{DType, Device, Result, Tensor};

/// A tensor as stored: safetensors dtype, shape and little-endian bytes.
pub(super) struct Encoded {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The safetensors header is padded with spaces to a multiple of this, as the format's
/// own writer does, so the tensor data after it stays aligned.
const HEADER_ALIGNMENT: usize = 8;

/// The tensors in the order their bytes are stored: safetensors' own order (larger
/// dtypes first, which keeps every tensor aligned to its element size, then by name).
fn storage_order(tensors: &BTreeMap<String, Encoded>) -> Vec<(&String, &Encoded)> {
    let mut order: Vec<_> = tensors.iter().collect();
    order.sort_by_key(|(name, e)| (Reverse(e.dtype), *name));
    order
}

/// The JSON header, padded: `__metadata__` (keys sorted) and each tensor's dtype, shape
/// and byte range, in [`storage_order`].
pub(super) fn header(
    tensors: &BTreeMap<String, Encoded>,
    metadata: &BTreeMap<String, String>,
) -> serde_json::Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    let mut offset = 0usize;
    for (name, e) in storage_order(tensors) {
        let end = offset + e.bytes.len();
        let info = serde_json::json!({
            "dtype": e.dtype,
            "shape": e.shape,
            "data_offsets": [offset, end],
        });
        header.insert(name.clone(), info);
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&header)?;
    bytes.resize(bytes.len().next_multiple_of(HEADER_ALIGNMENT), b' ');
    Ok(bytes)
}

/// Writes the file: the length of `header`, `header`, then every tensor's bytes in
/// [`storage_order`].
pub(super) fn write(
    file: &mut std::fs::File,
    header: &[u8],
    tensors: &BTreeMap<String, Encoded>,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header)?;
    for (_, e) in storage_order(tensors) {
        out.write_all(&e.bytes)?;
    }
    out.flush()
}

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
