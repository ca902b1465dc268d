//! [`Storage`]: a tensor's buffer on whichever device holds it, dispatching every kernel
//! of [`BackendStorage`], and every fused op (`Storage::fused`), to that device's
//! backend. Operands of one op must share the first operand's device; anything else is
//! an error naming the op and both devices.

use crate::backend::{BackendStorage, BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::cpu::CpuStorage;
#[cfg(feature = "cuda")]
use crate::cuda::CudaStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fused::{FusedOp, Operand, Operands};
use crate::layout::Layout;
use crate::profile::{self, ProductShape};
use crate::Device;

/// A buffer of elements on one device.
#[derive(Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
    /// GPU memory.
    #[cfg(feature = "cuda")]
    Cuda(CudaStorage),
}

impl From<CpuStorage> for Storage {
    fn from(s: CpuStorage) -> Self {
        Storage::Cpu(s)
    }
}

#[cfg(feature = "cuda")]
impl From<CudaStorage> for Storage {
    fn from(s: CudaStorage) -> Self {
        Storage::Cuda(s)
    }
}

/// A backend's storage type as seen from [`Storage`].
pub(crate) trait Native: BackendStorage + Into<Storage> + 'static {
    /// The operand as this backend's storage, if it is on `dev`.
    fn of<'a>(op: &'static str, dev: Device, s: &'a Storage) -> Result<&'a Self>;
    /// The same, mutably.
    fn of_mut<'a>(op: &'static str, dev: Device, s: &'a mut Storage) -> Result<&'a mut Self>;
}

#[cfg(feature = "cuda")]
fn mismatch(op: &'static str, dev: Device, other: Device) -> Error {
    Error::DeviceMismatch {
        op,
        lhs: dev.to_string(),
        rhs: other.to_string(),
    }
}

impl Native for CpuStorage {
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn of<'a>(op: &'static str, dev: Device, s: &'a Storage) -> Result<&'a Self> {
        match s {
            Storage::Cpu(c) => Ok(c),
            #[cfg(feature = "cuda")]
            other => Err(mismatch(op, dev, other.device())),
        }
    }
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn of_mut<'a>(op: &'static str, dev: Device, s: &'a mut Storage) -> Result<&'a mut Self> {
        match s {
            Storage::Cpu(c) => Ok(c),
            #[cfg(feature = "cuda")]
            other => Err(mismatch(op, dev, other.device())),
        }
    }
}

#[cfg(feature = "cuda")]
impl Native for CudaStorage {
    fn of<'a>(op: &'static str, dev: Device, s: &'a Storage) -> Result<&'a Self> {
        match s {
            Storage::Cuda(c) if c.device() == dev => Ok(c),
            other => Err(mismatch(op, dev, other.device())),
        }
    }
    fn of_mut<'a>(op: &'static str, dev: Device, s: &'a mut Storage) -> Result<&'a mut Self> {
        let on = s.device();
        match s {
            Storage::Cuda(c) if on == dev => Ok(c),
            _ => Err(mismatch(op, dev, on)),
        }
    }
}

/// Runs `$body` with `$s` bound to the backend storage inside `$self` and the type
/// alias `$B` set to its type, so that one body serves every backend.
macro_rules! each_backend {
    ($self:expr, |$s:ident: $B:ident| $body:expr) => {
        match $self {
            Storage::Cpu($s) => {
                #[allow(dead_code)]
                type $B = CpuStorage;
                $body
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda($s) => {
                #[allow(dead_code)]
                type $B = CudaStorage;
                $body
            }
        }
    };
}

/// [`each_backend`] inside the op profiler's scope `$op`, which records the dtype and
/// device of `$self` and the element count of its view `$layout`: the body of every
/// kernel method of [`Storage`].
macro_rules! profiled {
    ($op:literal, $self:expr, $layout:expr, |$s:ident: $B:ident| $body:expr) => {{
        let _profiled = profile::scope($op, || {
            ($self.dtype(), $layout.elem_count(), $self.device())
        });
        each_backend!($self, |$s: $B| $body)
    }};
}

impl Storage {
    /// `n` zeros of `dtype` on `device`.
    pub fn zeros(n: usize, dtype: DType, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::zeros(n, dtype)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::zeros(i, n, dtype)?)),
        }
    }

    /// Elements in the buffer.
    pub(crate) fn len(&self) -> usize {
        match self {
            Storage::Cpu(c) => c.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => c.len(),
        }
    }

    /// Host data moved onto `device`.
    pub fn from_cpu(data: CpuStorage, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::from_cpu(i, &data)?)),
        }
    }

    /// The whole buffer copied to the host.
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(c) => Ok(c.clone()),
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => c.to_cpu(),
        }
    }

    /// The view's elements, contiguous, in host memory.
    pub(crate) fn view_to_cpu(&self, layout: &Layout) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(c) => c.copy_strided(layout),
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => c.copy_strided(layout)?.to_cpu(),
        }
    }

    /// Runs the fused op `op` (see [`crate::fused`]) on the backend of its lead
    /// operand, inside the op profiler's scope: the other operands must be on the lead's
    /// device (`Error::DeviceMismatch`) and the views it reads must share a dtype
    /// (`Error::DTypeMismatch`), both errors naming the op.
    pub(crate) fn fused<'a, Op: FusedOp<'a>>(op: &Op, inputs: Op::Inputs) -> Result<Op::Output> {
        let (dtype, elements, device) = inputs.lead();
        let _profiled = profile::scope(Op::NAME, || (dtype, elements, device));
        let dtypes = inputs.read_dtypes();
        let same_dtypes = || match dtypes.iter().all(|&d| d == dtypes[0]) {
            true => Ok(()),
            false => Err(Error::dtypes(Op::NAME, &dtypes)),
        };
        match device {
            Device::Cpu => {
                let inputs = inputs.on::<CpuStorage>(Op::NAME, device)?;
                same_dtypes()?;
                op.cpu(inputs)
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => {
                let inputs = inputs.on::<CudaStorage>(Op::NAME, device)?;
                same_dtypes()?;
                op.cuda(inputs)
            }
        }
    }
}

impl BackendStorage for Storage {
    fn dtype(&self) -> DType {
        each_backend!(self, |s: B| s.dtype())
    }

    fn device(&self) -> Device {
        each_backend!(self, |s: B| s.device())
    }

    fn copy_strided(&self, l: &Layout) -> Result<Self> {
        profiled!("copy_strided", self, l, |s: B| Ok(s
            .copy_strided(l)?
            .into()))
    }

    fn copy_into(&self, l: &Layout, dst: &mut Self, dl: &Layout) -> Result<()> {
        profiled!("copy_into", self, l, |s: B| {
            s.copy_into(l, B::of_mut("copy_into", s.device(), dst)?, dl)
        })
    }

    fn to_dtype(&self, l: &Layout, dtype: DType) -> Result<Self> {
        profiled!("to_dtype", self, l, |s: B| Ok(s.to_dtype(l, dtype)?.into()))
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Self> {
        profiled!("unary", self, l, |s: B| Ok(s.unary(l, op)?.into()))
    }

    fn unary_backward(&self, l: &Layout, g: &Self, gl: &Layout, op: UnaryOp) -> Result<Self> {
        profiled!("unary_backward", self, l, |s: B| {
            let g = g.on::<B>("unary_backward", s.device())?;
            Ok(s.unary_backward(l, g, gl, op)?.into())
        })
    }

    fn binary(&self, l: &Layout, rhs: &Self, rl: &Layout, op: BinaryOp) -> Result<Self> {
        profiled!("binary", self, l, |s: B| {
            let rhs = rhs.on::<B>("binary", s.device())?;
            Ok(s.binary(l, rhs, rl, op)?.into())
        })
    }

    fn cmp(&self, l: &Layout, rhs: &Self, rl: &Layout, op: CmpOp) -> Result<Self> {
        profiled!("cmp", self, l, |s: B| {
            let rhs = rhs.on::<B>("cmp", s.device())?;
            Ok(s.cmp(l, rhs, rl, op)?.into())
        })
    }

    fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self> {
        profiled!("reduce", self, l, |s: B| Ok(s.reduce(l, dims, op)?.into()))
    }

    fn matmul(
        &self,
        l: &Layout,
        rhs: &Self,
        rl: &Layout,
        bias: Option<(&Self, &Layout)>,
    ) -> Result<Self> {
        let _product = profile::product_scope("matmul", || {
            (self.dtype(), self.device(), ProductShape::of_views(l, rl))
        });
        profiled!("matmul", self, l, |s: B| {
            let dev = s.device();
            let (rhs, bias) = (rhs.on::<B>("matmul", dev)?, bias.on::<B>("matmul", dev)?);
            Ok(s.matmul(l, rhs, rl, bias)?.into())
        })
    }

    fn index_select(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        profiled!("index_select", self, l, |s: B| {
            let ids = ids.on::<B>("index_select", s.device())?;
            Ok(s.index_select(l, ids, il, dim)?.into())
        })
    }

    fn index_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        profiled!("index_add", self, l, |s: B| {
            let ids = ids.on::<B>("index_add", s.device())?;
            Ok(s.index_add(l, ids, il, dim, shape)?.into())
        })
    }

    fn gather(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        profiled!("gather", self, l, |s: B| {
            let ids = ids.on::<B>("gather", s.device())?;
            Ok(s.gather(l, ids, il, dim)?.into())
        })
    }

    fn scatter_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        profiled!("scatter_add", self, l, |s: B| {
            let ids = ids.on::<B>("scatter_add", s.device())?;
            Ok(s.scatter_add(l, ids, il, dim, shape)?.into())
        })
    }
}
