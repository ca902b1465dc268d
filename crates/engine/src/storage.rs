//! [`Storage`]: a tensor's buffer on whichever device holds it, dispatching every kernel
//! of [`BackendStorage`] to that device's backend. Operands of one op must share the
//! first operand's device; anything else is an error naming the op and both devices.

use crate::backend::{
    AdamStep, AttentionSpec, BackendStorage, BinaryOp, CmpOp, NormSpec, ReduceOp, UnaryOp,
};
use crate::cpu::CpuStorage;
#[cfg(feature = "cuda")]
use crate::cuda::CudaStorage;
use crate::dtype::DType;
#[cfg(feature = "cuda")]
use crate::error::Error;
use crate::error::Result;
use crate::layout::Layout;
use crate::profile;
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

/// A backend's storage type as seen from [`Storage`].
trait Native: BackendStorage {
    /// The operand as this backend's storage, if it is on `dev`.
    fn of<'a>(op: &'static str, dev: Device, s: &'a Storage) -> Result<&'a Self>;
    /// The same, mutably.
    fn of_mut<'a>(op: &'static str, dev: Device, s: &'a mut Storage) -> Result<&'a mut Self>;
    /// Back into the enum.
    fn wrap(self) -> Storage;
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
    fn wrap(self) -> Storage {
        Storage::Cpu(self)
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
    fn wrap(self) -> Storage {
        Storage::Cuda(self)
    }
}

fn view<'a, B: Native>(
    op: &'static str,
    dev: Device,
    v: (&'a Storage, &'a Layout),
) -> Result<(&'a B, &'a Layout)> {
    Ok((B::of(op, dev, v.0)?, v.1))
}

fn opt<'a, B: Native>(
    op: &'static str,
    dev: Device,
    v: Option<(&'a Storage, &'a Layout)>,
) -> Result<Option<(&'a B, &'a Layout)>> {
    v.map(|v| view(op, dev, v)).transpose()
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

impl Storage {
    /// `n` zeros of `dtype` on `device`.
    pub fn zeros(n: usize, dtype: DType, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::zeros(n, dtype)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::zeros(i, n, dtype)?)),
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
}

impl BackendStorage for Storage {
    fn dtype(&self) -> DType {
        each_backend!(self, |s: B| s.dtype())
    }

    fn device(&self) -> Device {
        each_backend!(self, |s: B| s.device())
    }

    fn copy_strided(&self, l: &Layout) -> Result<Self> {
        let _profiled = profile::scope("copy_strided", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        each_backend!(self, |s: B| Ok(s.copy_strided(l)?.wrap()))
    }

    fn copy_into(&self, l: &Layout, dst: &mut Self, dl: &Layout) -> Result<()> {
        let _profiled = profile::scope("copy_into", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let dev = self.device();
        each_backend!(self, |s: B| s.copy_into(
            l,
            B::of_mut("copy_into", dev, dst)?,
            dl
        ))
    }

    fn to_dtype(&self, l: &Layout, dtype: DType) -> Result<Self> {
        let _profiled =
            profile::scope("to_dtype", || (self.dtype(), l.elem_count(), self.device()));
        each_backend!(self, |s: B| Ok(s.to_dtype(l, dtype)?.wrap()))
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Self> {
        let _profiled = profile::scope("unary", || (self.dtype(), l.elem_count(), self.device()));
        each_backend!(self, |s: B| Ok(s.unary(l, op)?.wrap()))
    }

    fn unary_backward(&self, l: &Layout, g: &Self, gl: &Layout, op: UnaryOp) -> Result<Self> {
        let _profiled = profile::scope("unary_backward", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let (dev, name) = (self.device(), "unary_backward");
        each_backend!(self, |s: B| Ok(s
            .unary_backward(l, B::of(name, dev, g)?, gl, op)?
            .wrap()))
    }

    fn binary(&self, l: &Layout, rhs: &Self, rl: &Layout, op: BinaryOp) -> Result<Self> {
        let _profiled = profile::scope("binary", || (self.dtype(), l.elem_count(), self.device()));
        let dev = self.device();
        each_backend!(self, |s: B| Ok(s
            .binary(l, B::of("binary", dev, rhs)?, rl, op)?
            .wrap()))
    }

    fn cmp(&self, l: &Layout, rhs: &Self, rl: &Layout, op: CmpOp) -> Result<Self> {
        let _profiled = profile::scope("cmp", || (self.dtype(), l.elem_count(), self.device()));
        let dev = self.device();
        each_backend!(self, |s: B| Ok(s
            .cmp(l, B::of("cmp", dev, rhs)?, rl, op)?
            .wrap()))
    }

    fn where_cond(&self, l: &Layout, t: (&Self, &Layout), f: (&Self, &Layout)) -> Result<Self> {
        let _profiled = profile::scope("where_cond", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let (dev, name) = (self.device(), "where_cond");
        each_backend!(self, |s: B| Ok(s
            .where_cond(l, view::<B>(name, dev, t)?, view::<B>(name, dev, f)?)?
            .wrap()))
    }

    fn addcmul(&self, l: &Layout, a: (&Self, &Layout), b: (&Self, &Layout)) -> Result<Self> {
        let _profiled = profile::scope("addcmul", || (self.dtype(), l.elem_count(), self.device()));
        let (dev, name) = (self.device(), "addcmul");
        each_backend!(self, |s: B| Ok(s
            .addcmul(l, view::<B>(name, dev, a)?, view::<B>(name, dev, b)?)?
            .wrap()))
    }

    fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self> {
        let _profiled = profile::scope("reduce", || (self.dtype(), l.elem_count(), self.device()));
        each_backend!(self, |s: B| Ok(s.reduce(l, dims, op)?.wrap()))
    }

    fn sum_product(&self, l: &Layout, other: (&Self, &Layout), dims: &[usize]) -> Result<Self> {
        let _profiled = profile::scope("sum_product", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let (dev, name) = (self.device(), "sum_product");
        each_backend!(self, |s: B| Ok(s
            .sum_product(l, view::<B>(name, dev, other)?, dims)?
            .wrap()))
    }

    fn matmul(
        &self,
        l: &Layout,
        rhs: &Self,
        rl: &Layout,
        bias: Option<(&Self, &Layout)>,
    ) -> Result<Self> {
        let _profiled = profile::scope("matmul", || (self.dtype(), l.elem_count(), self.device()));
        let (dev, name) = (self.device(), "matmul");
        each_backend!(self, |s: B| Ok(s
            .matmul(l, B::of(name, dev, rhs)?, rl, opt::<B>(name, dev, bias)?)?
            .wrap()))
    }

    fn index_select(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        let _profiled = profile::scope("index_select", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let dev = self.device();
        each_backend!(self, |s: B| Ok(s
            .index_select(l, B::of("index_select", dev, ids)?, il, dim)?
            .wrap()))
    }

    fn index_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        let _profiled = profile::scope("index_add", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let dev = self.device();
        each_backend!(self, |s: B| Ok(s
            .index_add(l, B::of("index_add", dev, ids)?, il, dim, shape)?
            .wrap()))
    }

    fn gather(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        let _profiled = profile::scope("gather", || (self.dtype(), l.elem_count(), self.device()));
        let dev = self.device();
        each_backend!(self, |s: B| Ok(s
            .gather(l, B::of("gather", dev, ids)?, il, dim)?
            .wrap()))
    }

    fn scatter_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        let _profiled = profile::scope("scatter_add", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let dev = self.device();
        each_backend!(self, |s: B| Ok(s
            .scatter_add(l, B::of("scatter_add", dev, ids)?, il, dim, shape)?
            .wrap()))
    }

    fn softmax_last(&self, l: &Layout, log: bool) -> Result<Self> {
        let _profiled = profile::scope("softmax_last", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        each_backend!(self, |s: B| Ok(s.softmax_last(l, log)?.wrap()))
    }

    fn softmax_last_backward(&self, l: &Layout, g: &Self, gl: &Layout, log: bool) -> Result<Self> {
        let _profiled = profile::scope("softmax_last_backward", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let dev = self.device();
        each_backend!(self, |s: B| Ok(s
            .softmax_last_backward(l, B::of("softmax_backward", dev, g)?, gl, log)?
            .wrap()))
    }

    fn norm(
        &self,
        l: &Layout,
        weight: Option<(&Self, &Layout)>,
        bias: Option<(&Self, &Layout)>,
        spec: NormSpec,
    ) -> Result<(Self, Self, Self)> {
        let _profiled = profile::scope("norm", || (self.dtype(), l.elem_count(), self.device()));
        let (dev, name) = (self.device(), "norm");
        each_backend!(self, |s: B| {
            let (w, b) = (opt::<B>(name, dev, weight)?, opt::<B>(name, dev, bias)?);
            let (y, m, r) = s.norm(l, w, b, spec)?;
            Ok((y.wrap(), m.wrap(), r.wrap()))
        })
    }

    fn norm_backward(
        &self,
        l: &Layout,
        weight: Option<(&Self, &Layout)>,
        has_bias: bool,
        mean: &Self,
        rstd: &Self,
        grad: (&Self, &Layout),
        spec: NormSpec,
    ) -> Result<(Self, Option<Self>, Option<Self>)> {
        let _profiled = profile::scope("norm_backward", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let (dev, name) = (self.device(), "norm_backward");
        each_backend!(self, |s: B| {
            let (w, g) = (opt::<B>(name, dev, weight)?, view::<B>(name, dev, grad)?);
            let (m, r) = (B::of(name, dev, mean)?, B::of(name, dev, rstd)?);
            let (dx, dw, db) = s.norm_backward(l, w, has_bias, m, r, g, spec)?;
            Ok((dx.wrap(), dw.map(B::wrap), db.map(B::wrap)))
        })
    }

    fn attention(
        &self,
        l: &Layout,
        k: (&Self, &Layout),
        v: (&Self, &Layout),
        spec: AttentionSpec,
    ) -> Result<(Self, Self)> {
        let _profiled = profile::scope("attention", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let (dev, name) = (self.device(), "attention");
        each_backend!(self, |s: B| {
            let (k, v) = (view::<B>(name, dev, k)?, view::<B>(name, dev, v)?);
            let (o, lse) = s.attention(l, k, v, spec)?;
            Ok((o.wrap(), lse.wrap()))
        })
    }

    fn adam_update(
        &mut self,
        n: usize,
        grad: (&Self, &Layout),
        m: &mut Self,
        v: &mut Self,
        step: &AdamStep,
    ) -> Result<()> {
        let _profiled = profile::scope("adam_update", || (self.dtype(), n, self.device()));
        let (dev, name) = (self.device(), "adam_update");
        each_backend!(self, |s: B| {
            let (m, v) = (B::of_mut(name, dev, m)?, B::of_mut(name, dev, v)?);
            s.adam_update(n, view::<B>(name, dev, grad)?, m, v, step)
        })
    }

    fn attention_backward(
        &self,
        l: &Layout,
        k: (&Self, &Layout),
        v: (&Self, &Layout),
        out: (&Self, &Layout),
        lse: &Self,
        grad: (&Self, &Layout),
        spec: AttentionSpec,
    ) -> Result<(Self, Self, Self)> {
        let _profiled = profile::scope("attention_backward", || {
            (self.dtype(), l.elem_count(), self.device())
        });
        let (dev, name) = (self.device(), "attention_backward");
        each_backend!(self, |s: B| {
            let (k, v) = (view::<B>(name, dev, k)?, view::<B>(name, dev, v)?);
            let (o, g) = (view::<B>(name, dev, out)?, view::<B>(name, dev, grad)?);
            let lse = B::of(name, dev, lse)?;
            let (dq, dk, dv) = s.attention_backward(l, k, v, o, lse, g, spec)?;
            Ok((dq.wrap(), dk.wrap(), dv.wrap()))
        })
    }
}
