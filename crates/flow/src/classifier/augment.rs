//! Shift augmentation of image batches.

use twinflow_engine::{DType, Device, Generator, Result};

/// Background value of images in `[−1, 1]` (a 0 byte): what shifted-in pixels get.
const BACKGROUND: f32 = -1.0;

/// Each of the row-major `rows × cols` images in `images` moved by its own random whole
/// number of pixels `(dy, dx)`, each uniform in `−max_shift..=max_shift`, drawn from
/// `gen`; pixels moved out are dropped and the uncovered border is background.
pub fn random_shifts(
    images: &[f32],
    rows: usize,
    cols: usize,
    max_shift: usize,
    gen: &mut Generator,
) -> Result<Vec<f32>> {
    let dim = rows * cols;
    let n = images.len() / dim.max(1);
    let choices = (2 * max_shift + 1) as f64;
    let draws = gen
        .uniform(&[n, 2], 0.0, choices, DType::F64, Device::Cpu)?
        .to_vec::<f64>()?;
    // `min` guards the (measure-zero) draw of exactly `choices`.
    let max = max_shift as isize;
    let offset = |u: f64| (u.floor() as isize).min(2 * max) - max;
    let mut out = vec![BACKGROUND; images.len()];
    for (i, (src, dst)) in images
        .chunks_exact(dim)
        .zip(out.chunks_exact_mut(dim))
        .enumerate()
    {
        let (dy, dx) = (offset(draws[2 * i]), offset(draws[2 * i + 1]));
        shift_into(src, dst, rows, cols, dy, dx);
    }
    Ok(out)
}

/// Copies `src` moved down by `dy` and right by `dx` into `dst` (already background).
fn shift_into(src: &[f32], dst: &mut [f32], rows: usize, cols: usize, dy: isize, dx: isize) {
    for y in 0..rows as isize {
        let sy = y - dy;
        if sy < 0 || sy >= rows as isize {
            continue;
        }
        let (x0, x1) = (dx.max(0), (cols as isize + dx).min(cols as isize));
        if x0 >= x1 {
            continue;
        }
        let to = y as usize * cols;
        let from = sy as usize * cols;
        dst[to + x0 as usize..to + x1 as usize]
            .copy_from_slice(&src[from + (x0 - dx) as usize..from + (x1 - dx) as usize]);
    }
}
