//! Fused softmax and log-softmax over the last dim, with hand-written backwards. They
//! run in f32 inside an autocast scope (see [`crate::autocast`]).

use super::check_float;
use crate::autocast::widened;
use crate::backend::BackendStorage;
use crate::cpu::{dispatch_float, softmax, ComputeType, CpuStorage};
#[cfg(feature = "cuda")]
use crate::cuda::{rows, CudaStorage};
use crate::error::{Error, Result};
use crate::fused::{BackendInputs, FusedOp, View};
use crate::storage::Storage;
use crate::Tensor;

impl Tensor {
    fn softmax_op(&self, name: &'static str, log: bool) -> Result<Tensor> {
        if let Some(x) = widened(&[self])? {
            return x[0].softmax_op(name, log);
        }
        check_float(name, self)?;
        if self.rank() == 0 {
            return Err(Error::invalid(name, "needs at least one dim"));
        }
        let x = (&*self.storage(), self.layout());
        let s = Storage::fused(&SoftmaxForward { log }, (x,))?;
        Tensor::from_op(
            name,
            s,
            self.shape(),
            &[self],
            move |_, y, g| Ok(vec![Some(softmax_backward(y, g, log)?)]),
            move |d, y| {
                let t = d.tangent_or_zeros(0)?;
                match log {
                    // Softmax's Jacobian is symmetric: the backward kernel is its JVP.
                    false => softmax_backward(y, &t, false),
                    // log_softmax's is not: t − Σ softmax·t.
                    true => t.sub(&y.exp()?.sum_product_keepdim(&t, &[-1])?),
                }
            },
        )
    }

    /// Softmax over the last dim.
    pub fn softmax(&self) -> Result<Tensor> {
        self.softmax_op("softmax", false)
    }

    /// Log-softmax over the last dim (stable: x − logsumexp(x)).
    pub fn log_softmax(&self) -> Result<Tensor> {
        self.softmax_op("log_softmax", true)
    }
}

/// The backward kernel run on the output `y` and a row-wise gradient `g`.
fn softmax_backward(y: &Tensor, g: &Tensor, log: bool) -> Result<Tensor> {
    let (y_view, g_view) = ((&*y.storage(), y.layout()), (&*g.storage(), g.layout()));
    let s = Storage::fused(&SoftmaxBackward { log }, (y_view, g_view))?;
    Ok(Tensor::from_storage(s, y.shape()))
}

/// The forward kernel: softmax, or log-softmax when `log`, of each row.
struct SoftmaxForward {
    log: bool,
}

impl<'a> FusedOp<'a> for SoftmaxForward {
    const NAME: &'static str = "softmax_last";
    type Inputs = (View<'a, Storage>,);
    type Output = Storage;

    fn cpu(&self, ((x, l),): BackendInputs<'a, Self, CpuStorage>) -> Result<Storage> {
        dispatch_float!(Self::NAME, x, |F| {
            let xv = F::view(x, Self::NAME)?;
            Ok(F::store(softmax::softmax_last(&xv, l, self.log), x.dtype()).into())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, ((x, l),): BackendInputs<'a, Self, CudaStorage>) -> Result<Storage> {
        Ok(rows::softmax(x, l, self.log)?.into())
    }
}

/// The backward kernel: the input gradient from the forward's output y and the output
/// gradient.
struct SoftmaxBackward {
    log: bool,
}

impl<'a> FusedOp<'a> for SoftmaxBackward {
    const NAME: &'static str = "softmax_last_backward";
    type Inputs = (View<'a, Storage>, View<'a, Storage>);
    type Output = Storage;

    fn cpu(&self, (y, g): BackendInputs<'a, Self, CpuStorage>) -> Result<Storage> {
        dispatch_float!(Self::NAME, y.0, |F| {
            let (yv, gv) = (F::view(y.0, Self::NAME)?, F::view(g.0, Self::NAME)?);
            let out = softmax::softmax_last_backward((&yv, y.1), (&gv, g.1), self.log);
            Ok(F::store(out, y.0.dtype()).into())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self, (y, g): BackendInputs<'a, Self, CudaStorage>) -> Result<Storage> {
        Ok(rows::softmax_backward(y.0, y.1, g.0, g.1, self.log)?.into())
    }
}
