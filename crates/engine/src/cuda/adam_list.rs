//! The Adam(W) step over many parameters (`kernels/adam.cu`): lists of up to
//! [`LIST`] tensors that share their hyper-parameters, one launch a list, so that a
//! model's hundred-odd parameters (most of them biases and norm weights of a few
//! hundred values) cost a few launches instead of one each.

use super::launch::{launch, Arg};
use super::{float_only, CudaStorage, Dense};
use crate::backend::AdamStep;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::Layout;
use cudarc::driver::LaunchConfig;

/// Tensors a launch takes (`ADAM_LIST` in the kernel).
const LIST: usize = 64;
/// Elements a block updates (`ADAM_CHUNK`).
const CHUNK: u64 = 4096;
/// Threads a block.
const THREADS: u32 = 256;

/// The kernel's parameter, field for field `AdamList` in `kernels/adam.cu`: device
/// addresses and counts first, so that neither side pads.
#[repr(C)]
pub(crate) struct AdamList {
    p: [u64; LIST],
    g: [u64; LIST],
    m: [u64; LIST],
    v: [u64; LIST],
    n: [u64; LIST],
    first_chunk: [u64; LIST + 1],
    step_size: [f32; LIST],
    inv_sqrt_bc2: [f32; LIST],
    count: i32,
    decoupled: i32,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    lr: f32,
    unused: f32,
}

// The size the kernel's static_assert checks on its side.
const _: () = assert!(std::mem::size_of::<AdamList>() == 64 * 8 * 5 + 65 * 8 + 64 * 4 * 2 + 8 * 4);

/// One parameter's operands: the f32 parameter and moments (contiguous from offset 0,
/// `n` elements) written in place, and the gradient view, converted to dense f32 where
/// it is not already.
pub(crate) struct AdamOperands<'a> {
    pub(crate) p: &'a mut CudaStorage,
    pub(crate) g: (&'a CudaStorage, &'a Layout),
    pub(crate) m: &'a mut CudaStorage,
    pub(crate) v: &'a mut CudaStorage,
    pub(crate) n: usize,
    pub(crate) step: AdamStep,
}

/// The step of every parameter in `items` (all on one device), as the CPU's
/// `adam::update_many`.
pub(crate) fn adam_many(items: &[AdamOperands<'_>]) -> Result<()> {
    const OP: &str = "adam_update";
    let mut grads = Vec::with_capacity(items.len());
    for it in items {
        let dtypes = [it.p.dtype, it.g.0.dtype, it.m.dtype, it.v.dtype];
        if [dtypes[0], dtypes[2], dtypes[3]] != [DType::F32; 3] {
            return Err(Error::dtypes(OP, &dtypes));
        }
        float_only(OP, it.g.0.dtype)?;
        // A contiguous f32 gradient (the usual case) is read where it lies.
        grads.push(it.g.0.dense_as(it.g.1, DType::F32)?);
    }
    let live: Vec<(&AdamOperands, &Dense)> = items
        .iter()
        .zip(&grads)
        .filter(|(it, _)| it.n > 0)
        .collect();
    let mut rest = live.as_slice();
    while let Some((first, _)) = rest.first() {
        let shares = |(it, _): &&(&AdamOperands, &Dense)| same_hyper(&it.step, &first.step);
        let len = rest.iter().take(LIST).take_while(shares).count();
        let (list, tail) = rest.split_at(len);
        launch_list(list, OP)?;
        rest = tail;
    }
    Ok(())
}

/// Whether two steps may share a launch: all but the step count agree.
fn same_hyper(a: &AdamStep, b: &AdamStep) -> bool {
    AdamStep { step: 0, ..*a } == AdamStep { step: 0, ..*b }
}

/// One launch over `list` (1..=LIST tensors of one hyper-parameter set, none empty).
fn launch_list(list: &[(&AdamOperands, &Dense)], op: &'static str) -> Result<()> {
    let s = list[0].0.step;
    let mut l = Box::new(AdamList {
        p: [0; LIST],
        g: [0; LIST],
        m: [0; LIST],
        v: [0; LIST],
        n: [0; LIST],
        first_chunk: [0; LIST + 1],
        step_size: [0.0; LIST],
        inv_sqrt_bc2: [0.0; LIST],
        count: list.len() as i32,
        decoupled: s.decoupled as i32,
        b1: s.beta1 as f32,
        b2: s.beta2 as f32,
        eps: s.eps as f32,
        wd: s.weight_decay as f32,
        lr: s.lr as f32,
        unused: 0.0,
    });
    for (i, (it, g)) in list.iter().enumerate() {
        (l.p[i], l.g[i], l.m[i], l.v[i]) = (it.p.ptr(), g.ptr, it.m.ptr(), it.v.ptr());
        l.n[i] = it.n as u64;
        l.first_chunk[i + 1] = l.first_chunk[i] + (it.n as u64).div_ceil(CHUNK);
        (l.step_size[i], l.inv_sqrt_bc2[i]) = it.step.bias_corrections();
    }
    let chunks = l.first_chunk[list.len()];
    let cfg = LaunchConfig {
        // The kernel loops over chunks past the grid.
        grid_dim: (chunks.min(1 << 20) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        list[0].0.p.dev(),
        op,
        ("adam", "adam_list_f32"),
        cfg,
        &mut [Arg::AdamList(l)],
    )
}
