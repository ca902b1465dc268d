//! Element types: which dtypes exist and how Rust scalars map onto them.

use crate::cpu::{CpuStorage, HostBuffer};
use crate::error::Result;
use half::{bf16, f16};

/// The element type of a tensor.
///
/// `F32` and `F64` are computed natively; `BF16` and `F16` are storage types whose
/// arithmetic runs in f32 on the CPU; `I64` holds indices and labels and takes part only
/// in indexing, copies and casts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE half precision.
    F16,
    /// bfloat16: f32's exponent range with 8 bits of mantissa.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integers, for indices and labels.
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// True for the floating-point dtypes, the only ones with gradients.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I64)
    }

    /// The lower-case name used in configs and checkpoints (`"f32"`, `"bf16"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust scalar type that a tensor can hold.
pub trait Element: Copy + Send + Sync + 'static + std::fmt::Debug {
    /// The dtype of tensors holding this type.
    const DTYPE: DType;
    /// Converts from f64 (rounding to the nearest representable value).
    fn from_f64(v: f64) -> Self;
    /// Converts to f64 exactly (or, for i64, to the nearest f64).
    fn to_f64(self) -> f64;
    /// Host storage holding a copy of `values` (in a cache-line-aligned buffer); an
    /// error naming `op` when memory cannot hold it.
    fn to_storage(op: &'static str, values: &[Self]) -> Result<CpuStorage>;
    /// The values of a host storage of this type.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// The values of a host storage of this type, mutably.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! element {
    ($t:ty, $dtype:ident, $from:expr, $to:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dtype;
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
            fn to_storage(op: &'static str, values: &[Self]) -> Result<CpuStorage> {
                Ok(CpuStorage::$dtype(HostBuffer::try_from_slice(op, values)?))
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$dtype(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$dtype(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

element!(f32, F32, |v| v as f32, |v: f32| v as f64);
element!(f64, F64, |v| v, |v| v);
element!(bf16, BF16, bf16::from_f64, bf16::to_f64);
element!(f16, F16, f16::from_f64, f16::to_f64);
element!(i64, I64, |v| v as i64, |v| v as f64);
