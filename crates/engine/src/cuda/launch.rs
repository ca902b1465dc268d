//! Launching kernels: the `View` struct kernels read strided operands through, launch
//! shapes, and the launch call itself.

use super::device::CudaDevice;
use crate::error::{Error, Result};
use crate::layout::Layout;
use cudarc::driver::{result, LaunchConfig};
use std::ffi::c_void;

/// Most dims a kernel view holds (after merging); `MAX_DIMS` in `kernels/common.cuh`.
pub(crate) const MAX_DIMS: usize = 8;

/// A strided view as kernels take it, by value; `View` in `kernels/common.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct View {
    shape: [u64; MAX_DIMS],
    strides: [u64; MAX_DIMS],
    offset: u64,
    rank: u64,
}

impl View {
    /// The view exactly as given (dims keep their positions, as indexing kernels need).
    pub(crate) fn exact(
        op: &'static str,
        shape: &[usize],
        strides: &[usize],
        offset: usize,
    ) -> Result<View> {
        if shape.len() > MAX_DIMS {
            return Err(Error::invalid(
                op,
                format!("rank {} is above the CUDA kernels' {MAX_DIMS}", shape.len()),
            ));
        }
        let mut v = View {
            offset: offset as u64,
            rank: shape.len() as u64,
            ..View::default()
        };
        for (d, (&n, &s)) in shape.iter().zip(strides).enumerate() {
            v.shape[d] = n as u64;
            v.strides[d] = s as u64;
        }
        Ok(v)
    }

    /// Views of `N` layouts sharing one shape, read in row-major order, with size-1
    /// dims dropped and neighbouring dims merged where every operand allows it (as the
    /// CPU's `Runs`): a contiguous or simply broadcast view becomes rank 1 or 2.
    pub(crate) fn merged<const N: usize>(
        op: &'static str,
        layouts: [&Layout; N],
    ) -> Result<[View; N]> {
        let shape = layouts[0].shape();
        let mut dims: Vec<(usize, [usize; N])> = Vec::with_capacity(shape.len());
        for (d, &n) in shape.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let strides: [usize; N] = std::array::from_fn(|k| layouts[k].strides()[d]);
            match dims.last_mut() {
                Some((m, prev)) if (0..N).all(|k| prev[k] == strides[k] * n) => {
                    *m *= n;
                    *prev = strides;
                }
                _ => dims.push((n, strides)),
            }
        }
        let sizes: Vec<usize> = dims.iter().map(|d| d.0).collect();
        let mut views = [View::default(); N];
        for (k, view) in views.iter_mut().enumerate() {
            let strides: Vec<usize> = dims.iter().map(|d| d.1[k]).collect();
            *view = View::exact(op, &sizes, &strides, layouts[k].offset())?;
        }
        Ok(views)
    }
}

impl View {
    /// (rows, cols, ld) of a merged 2-D view whose outer dim has unit stride: a
    /// transposed matrix, element (r, c) at offset + c·ld + r (`copy_transpose_*`).
    pub(crate) fn transposed(&self) -> Option<(u64, u64, u64)> {
        (self.rank == 2 && self.strides[0] == 1).then_some((
            self.shape[0],
            self.shape[1],
            self.strides[1],
        ))
    }
}

impl View {
    /// Whether the `*_packed` kernels can read this operand of a merged view in packs of
    /// `pack` elements: the innermost dim is whole packs, and it either has unit stride
    /// with every pack starting at a multiple of `pack` elements (so a 16-byte load from
    /// an aligned buffer is aligned) or is broadcast (stride 0: one element repeated).
    pub(crate) fn fits_packs(&self, pack: u64) -> bool {
        let rank = self.rank as usize;
        if rank == 0 || !self.shape[rank - 1].is_multiple_of(pack) {
            return false;
        }
        match self.strides[rank - 1] {
            0 => true,
            1 => {
                self.offset.is_multiple_of(pack)
                    && self.strides[..rank - 1].iter().all(|s| s % pack == 0)
            }
            _ => false,
        }
    }
}

// SAFETY: plain `#[repr(C)]` data, laid out as the C struct of the same name.
unsafe impl cudarc::driver::DeviceRepr for View {}

/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;
/// Enough blocks to fill any current GPU; grid-stride loops cover the rest.
const MAX_BLOCKS: u64 = 1 << 16;

/// One thread per element (grid-stride beyond `MAX_BLOCKS` blocks).
pub(crate) fn per_element(n: usize) -> LaunchConfig {
    let blocks = (n as u64).div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per 16-byte pack of `n` elements of `elem_bytes` bytes (the `*_dense`
/// kernels; the < 16-byte tail goes to the first threads).
pub(crate) fn per_pack(n: usize, elem_bytes: usize) -> LaunchConfig {
    per_element(n.div_ceil(16 / elem_bytes))
}

/// One block per row of `width` elements: a warp for short rows, up to 256 threads.
pub(crate) fn per_row(rows: usize, width: usize) -> LaunchConfig {
    let threads = (width.next_power_of_two() as u32).clamp(32, THREADS);
    LaunchConfig {
        grid_dim: ((rows as u64).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A block of 32×8 threads per 32×32 tile, for `tiles` tiles (grid-stride beyond
/// `MAX_BLOCKS`).
pub(crate) fn per_tile(tiles: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (tiles.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// One warp per item, `THREADS / 32` warps a block (grid-stride beyond `MAX_BLOCKS`).
pub(crate) fn per_warp(items: usize) -> LaunchConfig {
    let blocks = (items as u64)
        .div_ceil(THREADS as u64 / 32)
        .clamp(1, MAX_BLOCKS);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel argument, held by value until the launch has read it.
pub(crate) enum Arg {
    /// A device pointer or a count.
    U64(u64),
    /// A flag or op code.
    I32(i32),
    /// An f32 parameter.
    F32(f32),
    /// An f64 parameter.
    F64(f64),
    /// A strided view.
    View(View),
    /// Where a fused-attention input's rows lie.
    Rows(super::flash::Rows),
    /// The tensors of a multi-tensor Adam step (3.6 KB, so boxed).
    AdamList(Box<super::adam_list::AdamList>),
    /// A TMA tensor map (128 bytes, so boxed).
    TensorMap(Box<super::tma::TensorMap>),
}

impl Arg {
    fn as_ptr(&mut self) -> *mut c_void {
        match self {
            Arg::U64(v) => v as *mut u64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
            Arg::F64(v) => v as *mut f64 as *mut c_void,
            Arg::View(v) => v as *mut View as *mut c_void,
            Arg::Rows(v) => v as *mut super::flash::Rows as *mut c_void,
            Arg::AdamList(l) => &mut **l as *mut super::adam_list::AdamList as *mut c_void,
            Arg::TensorMap(m) => &mut **m as *mut super::tma::TensorMap as *mut c_void,
        }
    }
}

impl From<u64> for Arg {
    fn from(v: u64) -> Self {
        Arg::U64(v)
    }
}
impl From<usize> for Arg {
    fn from(v: usize) -> Self {
        Arg::U64(v as u64)
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Self {
        Arg::I32(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::I32(v as i32)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Self {
        Arg::F32(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::F64(v)
    }
}
impl From<View> for Arg {
    fn from(v: View) -> Self {
        Arg::View(v)
    }
}
impl From<super::flash::Rows> for Arg {
    fn from(v: super::flash::Rows) -> Self {
        Arg::Rows(v)
    }
}
impl From<super::tma::TensorMap> for Arg {
    fn from(v: super::tma::TensorMap) -> Self {
        Arg::TensorMap(Box::new(v))
    }
}

/// Queues kernel `name` of kernel file `file` on the device's stream; a failure names
/// `op`. Arguments must match the kernel's parameters in order and type.
pub(crate) fn launch(
    dev: &CudaDevice,
    op: &'static str,
    (file, name): (&'static str, &str),
    cfg: LaunchConfig,
    args: &mut [Arg],
) -> Result<()> {
    let f = dev.function(file, name)?;
    let mut params: Vec<*mut c_void> = args.iter_mut().map(Arg::as_ptr).collect();
    dev.bind().map_err(|e| dev.error(op, e))?;
    // SAFETY: `params` point into `args`, alive until this call returns (the driver
    // copies parameter values at launch); the caller passes the kernel's signature.
    unsafe {
        result::launch_kernel(
            f.cu_function(),
            cfg.grid_dim,
            cfg.block_dim,
            cfg.shared_mem_bytes,
            dev.stream.cu_stream(),
            &mut params,
        )
    }
    .map_err(|e| dev.error(op, format!("{name}: {e}")))
}

/// Builds the argument list of a launch from values convertible to [`Arg`].
macro_rules! args {
    ($($a:expr),* $(,)?) => { &mut [$($crate::cuda::launch::Arg::from($a)),*] };
}
pub(crate) use args;

#[cfg(test)]
mod tests {
    use super::*;

    /// adaLN's `[B, 1, D]` chunk of a `[B, width]` row, from column `start`, as a view
    /// broadcast against `[B, T, D]` activations, merged with them.
    fn chunk_and_activations(d: usize, width: usize, start: usize) -> [View; 2] {
        let shape = [3, 5, d];
        let chunk = Layout::contiguous(&[3, width])
            .narrow(1, start, d)
            .unsqueeze(1)
            .broadcast_to("test", &shape)
            .unwrap();
        View::merged("test", [&chunk, &Layout::contiguous(&shape)]).unwrap()
    }

    #[test]
    fn packs_fit_whole_aligned_unit_stride_rows_and_broadcasts() {
        let fits = |views: [View; 2], pack| views.map(|v| v.fits_packs(pack));
        assert_eq!(fits(chunk_and_activations(64, 448, 128), 8), [true, true]);
        // A chunk starting off a pack boundary, a row stride that is not whole packs,
        // rows that are not whole packs.
        assert_eq!(fits(chunk_and_activations(64, 448, 1), 8), [false, true]);
        assert_eq!(fits(chunk_and_activations(64, 450, 0), 8), [false, true]);
        assert_eq!(fits(chunk_and_activations(60, 448, 0), 8), [false, false]);
        assert_eq!(fits(chunk_and_activations(60, 448, 0), 4), [true, true]);
        // A column broadcast along the rows: stride 0 innermost.
        let column = Layout::contiguous(&[15, 1])
            .broadcast_to("test", &[15, 64])
            .unwrap();
        let [v] = View::merged("test", [&column]).unwrap();
        assert!(v.fits_packs(8));
        // A transposed matrix: no unit stride innermost.
        let [t] = View::merged("test", [&Layout::contiguous(&[64, 16]).permute(&[1, 0])]).unwrap();
        assert!(!t.fits_packs(8));
    }
}
