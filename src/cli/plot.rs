//! PNG pictures of samples: a scatter plot for 2-D data, a grid for images; written
//! atomically and never over a file of another kind ([`super::output`]).

use super::error::CliResult;
use super::output::{write_output, OutputKind};
use std::path::Path;
use twinflow::engine::Error;
use twinflow::flow::data::ImageShape;

/// Colours of classes 0, 1, … (cycled beyond ten).
const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    data: &[u8],
) -> CliResult<()> {
    let fail = |e| Error::caused("png", path.display().to_string(), e);
    let mut encoded = Vec::new();
    let mut enc = png::Encoder::new(&mut encoded, width, height);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(fail)?;
    writer.write_image_data(data).map_err(fail)?;
    writer.finish().map_err(fail)?;
    write_output(path, OutputKind::Png, &encoded)
}

/// Samples `x` (`dim` values each) as a picture: a scatter plot for 2-D points, a grid
/// with one row per class for images of shape `image`; an error for anything else.
pub fn picture(
    path: &Path,
    x: &[f32],
    labels: &[i64],
    dim: usize,
    image: Option<ImageShape>,
    classes: usize,
) -> CliResult<()> {
    match image {
        _ if dim == 2 => scatter(path, x, labels, 512),
        Some(shape) => image_grid(path, x, labels, shape, classes),
        None => Err(format!(
            "cannot draw {dim}-dimensional samples as a picture (only 2-D points and grey \
             or RGB images); write .npy instead"
        )
        .into()),
    }
}

/// A `size`×`size` scatter plot of 2-D points `xy` (`[n, 2]` row-major), coloured by
/// label; the square view is fitted to the points (at least [−2, 2]² is not forced).
pub fn scatter(path: &Path, xy: &[f32], labels: &[i64], size: u32) -> CliResult<()> {
    let n = labels.len();
    let finite = |v: f32| v.is_finite();
    let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for p in xy.chunks_exact(2).filter(|p| finite(p[0]) && finite(p[1])) {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    if !lo[0].is_finite() {
        // No finite point: show the default view.
        lo = [-2.0; 2];
        hi = [2.0; 2];
    }
    let half = ((hi[0] - lo[0]).max(hi[1] - lo[1]) * 0.55).max(1e-3);
    let centre = [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0];
    let s = size as usize;
    let mut img = vec![255u8; s * s * 3];
    let to_px = |v: f32, c: f32| ((v - c + half) / (2.0 * half) * (s as f32 - 1.0)).round();
    // Axes through the origin, light grey, when in view.
    let (ox, oy) = (
        to_px(0.0, centre[0]),
        s as f32 - 1.0 - to_px(0.0, centre[1]),
    );
    for i in 0..s {
        if (0.0..s as f32).contains(&ox) {
            img[(i * s + ox as usize) * 3..][..3].copy_from_slice(&[220; 3]);
        }
        if (0.0..s as f32).contains(&oy) {
            img[(oy as usize * s + i) * 3..][..3].copy_from_slice(&[220; 3]);
        }
    }
    for i in 0..n {
        let (x, y) = (xy[2 * i], xy[2 * i + 1]);
        if !(finite(x) && finite(y)) {
            continue;
        }
        let px = to_px(x, centre[0]) as i64;
        let py = s as i64 - 1 - to_px(y, centre[1]) as i64;
        let colour = PALETTE[labels[i].rem_euclid(PALETTE.len() as i64) as usize];
        for dy in -1..=1 {
            for dx in -1..=1 {
                let (cx, cy) = (px + dx, py + dy);
                if (0..s as i64).contains(&cx) && (0..s as i64).contains(&cy) {
                    let at = (cy as usize * s + cx as usize) * 3;
                    img[at..at + 3].copy_from_slice(&colour);
                }
            }
        }
    }
    write_png(path, size, size, png::ColorType::Rgb, &img)
}

/// Images smaller than this many pixels a side are drawn enlarged.
const MIN_DISPLAY_SIDE: usize = 28;

/// The whole factor that draws an image of `rows × cols` at least
/// [`MIN_DISPLAY_SIDE`] pixels a side (1 for MNIST's 28 × 28 and larger).
fn display_scale(rows: usize, cols: usize) -> usize {
    MIN_DISPLAY_SIDE.div_ceil(rows.min(cols).max(1)).max(1)
}

/// A grid of images (grey or RGB, values in [−1, 1], clipped for display; samples
/// channel-major `[C, H, W]`), one grid row per class in `0..classes`, samples of a
/// class left to right. Images under 28 pixels a side are enlarged (nearest pixel)
/// to at least 28.
pub fn image_grid(
    path: &Path,
    x: &[f32],
    labels: &[i64],
    shape: ImageShape,
    classes: usize,
) -> CliResult<()> {
    let (channels, rows, cols) = (shape.channels, shape.rows, shape.cols);
    let d = shape.dim();
    let k = display_scale(rows, cols);
    let classes = classes.max(1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[(l.max(0) as usize).min(classes - 1)].push(i);
    }
    let by_class: Vec<Vec<usize>> = by_class.into_iter().filter(|c| !c.is_empty()).collect();
    let per_row = by_class.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let gap = 2;
    let width = per_row * (k * cols + gap) + gap;
    let height = by_class.len().max(1) * (k * rows + gap) + gap;
    let mut img = vec![0u8; width * height * channels];
    for (r, members) in by_class.iter().enumerate() {
        for (c, &i) in members.iter().enumerate() {
            let sample = &x[i * d..(i + 1) * d];
            let (top, left) = (gap + r * (k * rows + gap), gap + c * (k * cols + gap));
            for ch in 0..channels {
                for y in 0..k * rows {
                    for xx in 0..k * cols {
                        let v = sample[(ch * rows + y / k) * cols + xx / k];
                        let v = if v.is_finite() {
                            v.clamp(-1.0, 1.0)
                        } else {
                            -1.0
                        };
                        let at = ((top + y) * width + left + xx) * channels + ch;
                        img[at] = ((v + 1.0) * 127.5).round() as u8;
                    }
                }
            }
        }
    }
    let colour = if channels == 3 {
        png::ColorType::Rgb
    } else {
        png::ColorType::Grayscale
    };
    write_png(path, width as u32, height as u32, colour, &img)
}

#[cfg(test)]
mod tests {
    use super::display_scale;

    #[test]
    fn small_images_are_enlarged_to_at_least_28_pixels() {
        assert_eq!(display_scale(28, 28), 1);
        assert_eq!(display_scale(32, 32), 1);
        assert_eq!(display_scale(16, 16), 2);
        assert_eq!(display_scale(8, 12), 4);
        assert_eq!(display_scale(0, 0), 28);
    }
}
