//! [`Storage`]: a tensor's buffer on whichever device holds it, dispatching every kernel
//! of [`BackendStorage`] to that device's backend.

use crate::backend::{
    AdamStep, AttentionSpec, BackendStorage, BinaryOp, CmpOp, NormSpec, ReduceOp, UnaryOp,
};
use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::Result;
use crate::layout::Layout;
use crate::Device;

/// A buffer of elements on one device.
#[derive(Debug, Clone)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
}

/// The CPU buffer of an operand that must share the CPU with the op's first operand.
fn cpu(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
    }
}

fn cpu_view<'a>(v: (&'a Storage, &'a Layout)) -> Result<(&'a CpuStorage, &'a Layout)> {
    Ok((cpu(v.0)?, v.1))
}

fn cpu_opt<'a>(
    v: Option<(&'a Storage, &'a Layout)>,
) -> Result<Option<(&'a CpuStorage, &'a Layout)>> {
    v.map(cpu_view).transpose()
}

impl Storage {
    /// `n` zeros of `dtype` on `device`.
    pub fn zeros(n: usize, dtype: DType, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::zeros(n, dtype))),
        }
    }

    /// Host data moved onto `device`.
    pub fn from_cpu(data: CpuStorage, device: Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(data)),
        }
    }

    /// The whole buffer copied to the host.
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        match self {
            Storage::Cpu(c) => Ok(c.clone()),
        }
    }
}

impl BackendStorage for Storage {
    fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(c) => c.dtype(),
        }
    }

    fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    fn copy_strided(&self, l: &Layout) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.copy_strided(l)?)),
        }
    }

    fn copy_into(&self, l: &Layout, dst: &mut Self, dl: &Layout) -> Result<()> {
        match (self, dst) {
            (Storage::Cpu(a), Storage::Cpu(b)) => a.copy_into(l, b, dl),
        }
    }

    fn to_dtype(&self, l: &Layout, dtype: DType) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.to_dtype(l, dtype)?)),
        }
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.unary(l, op)?)),
        }
    }

    fn unary_backward(&self, l: &Layout, g: &Self, gl: &Layout, op: UnaryOp) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.unary_backward(l, cpu(g)?, gl, op)?)),
        }
    }

    fn binary(&self, l: &Layout, rhs: &Self, rl: &Layout, op: BinaryOp) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.binary(l, cpu(rhs)?, rl, op)?)),
        }
    }

    fn cmp(&self, l: &Layout, rhs: &Self, rl: &Layout, op: CmpOp) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.cmp(l, cpu(rhs)?, rl, op)?)),
        }
    }

    fn where_cond(&self, l: &Layout, t: (&Self, &Layout), f: (&Self, &Layout)) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.where_cond(l, cpu_view(t)?, cpu_view(f)?)?)),
        }
    }

    fn addcmul(&self, l: &Layout, a: (&Self, &Layout), b: (&Self, &Layout)) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.addcmul(l, cpu_view(a)?, cpu_view(b)?)?)),
        }
    }

    fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.reduce(l, dims, op)?)),
        }
    }

    fn matmul(
        &self,
        l: &Layout,
        rhs: &Self,
        rl: &Layout,
        bias: Option<(&Self, &Layout)>,
    ) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.matmul(l, cpu(rhs)?, rl, cpu_opt(bias)?)?)),
        }
    }

    fn index_select(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.index_select(l, cpu(ids)?, il, dim)?)),
        }
    }

    fn index_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.index_add(l, cpu(ids)?, il, dim, shape)?)),
        }
    }

    fn gather(&self, l: &Layout, ids: &Self, il: &Layout, dim: usize) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.gather(l, cpu(ids)?, il, dim)?)),
        }
    }

    fn scatter_add(
        &self,
        l: &Layout,
        ids: &Self,
        il: &Layout,
        dim: usize,
        shape: &[usize],
    ) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.scatter_add(l, cpu(ids)?, il, dim, shape)?)),
        }
    }

    fn softmax_last(&self, l: &Layout, log: bool) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.softmax_last(l, log)?)),
        }
    }

    fn softmax_last_backward(&self, l: &Layout, g: &Self, gl: &Layout, log: bool) -> Result<Self> {
        match self {
            Storage::Cpu(c) => Ok(Storage::Cpu(c.softmax_last_backward(
                l,
                cpu(g)?,
                gl,
                log,
            )?)),
        }
    }

    fn norm(
        &self,
        l: &Layout,
        weight: Option<(&Self, &Layout)>,
        bias: Option<(&Self, &Layout)>,
        spec: NormSpec,
    ) -> Result<(Self, Self, Self)> {
        match self {
            Storage::Cpu(c) => {
                let (y, m, r) = c.norm(l, cpu_opt(weight)?, cpu_opt(bias)?, spec)?;
                Ok((Storage::Cpu(y), Storage::Cpu(m), Storage::Cpu(r)))
            }
        }
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
        match self {
            Storage::Cpu(c) => {
                let (w, g) = (cpu_opt(weight)?, cpu_view(grad)?);
                let (dx, dw, db) =
                    c.norm_backward(l, w, has_bias, cpu(mean)?, cpu(rstd)?, g, spec)?;
                Ok((Storage::Cpu(dx), dw.map(Storage::Cpu), db.map(Storage::Cpu)))
            }
        }
    }

    fn attention(
        &self,
        l: &Layout,
        k: (&Self, &Layout),
        v: (&Self, &Layout),
        spec: AttentionSpec,
    ) -> Result<(Self, Self)> {
        match self {
            Storage::Cpu(c) => {
                let (o, lse) = c.attention(l, cpu_view(k)?, cpu_view(v)?, spec)?;
                Ok((Storage::Cpu(o), Storage::Cpu(lse)))
            }
        }
    }

    fn adam_update(
        &mut self,
        n: usize,
        grad: (&Self, &Layout),
        m: &mut Self,
        v: &mut Self,
        step: &AdamStep,
    ) -> Result<()> {
        match (self, m, v) {
            (Storage::Cpu(p), Storage::Cpu(m), Storage::Cpu(v)) => {
                p.adam_update(n, cpu_view(grad)?, m, v, step)
            }
        }
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
        match self {
            Storage::Cpu(c) => {
                let (k, v, o, g) = (cpu_view(k)?, cpu_view(v)?, cpu_view(out)?, cpu_view(grad)?);
                let (dq, dk, dv) = c.attention_backward(l, k, v, o, cpu(lse)?, g, spec)?;
                Ok((Storage::Cpu(dq), Storage::Cpu(dk), Storage::Cpu(dv)))
            }
        }
    }
}
