//! A folder of PNG images, one subfolder per class: the user's own data. The class
//! names, sorted, give the labels (`cats/`, `dogs/` → 0, 1); every image must have
//! the same size and the same colour (all grey or all RGB, 8 or 16 bits; palette
//! images count as RGB). Files are read in sorted order, so a folder gives the same
//! dataset on every machine.

use super::images::{scale_byte, ImageDataset, ImageShape};
use std::path::{Path, PathBuf};
use twinflow_engine::{sizes, Error, Result};

/// The largest decoded image read, in bytes (256 MiB, e.g. 9000×9000 RGB): far beyond
/// what the models train on, and a bound on what one file can make the loader
/// allocate.
pub const MAX_IMAGE_BYTES: usize = 256 << 20;

/// How many bytes of decoded image one byte of a PNG file can give at most: deflate
/// expands at most 1032-fold, and a 1-bit palette pixel becomes 3 bytes of RGB, 24
/// times its bits. A header that declares more than its file can hold is refused
/// before its image is allocated.
const MAX_EXPANSION: usize = 1032 * 24;

/// Loads every `*.png` of every subfolder of `dir`.
pub fn load_image_folder(dir: &Path) -> Result<ImageDataset> {
    let fail = |why: String| Error::invalid("image-folder", format!("{}: {why}", dir.display()));
    let classes = sorted_entries(dir, |p| p.is_dir())?;
    if classes.is_empty() {
        return Err(fail(
            "no class subfolders (expected one folder of PNG files per class)".into(),
        ));
    }
    let mut dataset = ImageDataset {
        images: Vec::new(),
        labels: Vec::new(),
        channels: 0,
        rows: 0,
        cols: 0,
        class_names: Vec::new(),
    };
    for (label, class_dir) in classes.iter().enumerate() {
        let files = sorted_entries(class_dir, is_png)?;
        if files.is_empty() {
            return Err(fail(format!(
                "class folder {} holds no .png file",
                class_dir.display()
            )));
        }
        for file in files {
            let bytes = std::fs::read(&file).map_err(|e| Error::io("image-folder", &file, e))?;
            let image = decode_png(&bytes, &file.display().to_string())?;
            add_image(&mut dataset, image, &file)?;
            dataset.labels.push(label as i64);
        }
        let name = class_dir.file_name().unwrap_or_default();
        dataset
            .class_names
            .push(name.to_string_lossy().into_owned());
    }
    dataset.check(&dir.display().to_string())?;
    Ok(dataset)
}

/// One decoded image: its shape and its 8-bit pixels, channel-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PngImage {
    /// Channels (1 grey, 3 RGB), rows and columns.
    pub shape: ImageShape,
    /// `channels·rows·cols` bytes, channel-major (`[C, H, W]`).
    pub pixels: Vec<u8>,
}

/// Appends `image` to `dataset`, which takes the shape of its first image; a later
/// image of another shape is an error naming both files' shapes.
fn add_image(dataset: &mut ImageDataset, image: PngImage, file: &Path) -> Result<()> {
    let ImageShape {
        channels,
        rows,
        cols,
    } = image.shape;
    let shape = (channels, rows, cols);
    if dataset.images.is_empty() {
        (dataset.channels, dataset.rows, dataset.cols) = shape;
    } else if shape != (dataset.channels, dataset.rows, dataset.cols) {
        return Err(Error::invalid(
            "image-folder",
            format!(
                "{} is {}, the images before it {} (every image must have the same size \
                 and colour)",
                file.display(),
                describe(shape),
                describe((dataset.channels, dataset.rows, dataset.cols))
            ),
        ));
    }
    dataset
        .images
        .try_reserve(image.pixels.len())
        .map_err(|_| {
            Error::invalid(
                "image-folder",
                format!(
                    "{}: the images up to this one need more memory than can be allocated \
                     ({} images of {})",
                    file.display(),
                    dataset.labels.len() + 1,
                    describe(shape)
                ),
            )
        })?;
    dataset
        .images
        .extend(image.pixels.iter().map(|&b| scale_byte(b)));
    Ok(())
}

/// `28×28 grey` or `32×32 RGB`.
fn describe((channels, rows, cols): (usize, usize, usize)) -> String {
    let colour = if channels == 1 { "grey" } else { "RGB" };
    format!("{cols}×{rows} {colour}")
}

/// Decodes the PNG file `bytes` to 8-bit grey or RGB, channel-major, as
/// [`load_image_folder`] reads each file; `origin` (the file's name) starts every
/// error. The decoded size the header declares is checked against
/// [`MAX_IMAGE_BYTES`] and against what the file's size can hold before the image is
/// allocated.
pub fn decode_png(bytes: &[u8], origin: &str) -> Result<PngImage> {
    let fail = |why: String| Error::invalid("image-folder", format!("{origin}: {why}"));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let corrupt = |e: png::DecodingError| Error::caused("image-folder", origin.to_string(), e);
    let mut reader = decoder.read_info().map_err(corrupt)?;
    // The PNG standard allows only whole RGB entries; png 0.18 checks the palette's
    // length but not this, and its palette expansion panics on a partial entry.
    if let Some(palette) = reader.info().palette.as_deref() {
        if palette.len() % 3 != 0 {
            return Err(fail(format!(
                "its palette (PLTE chunk) has {} bytes, not a whole number of RGB entries",
                palette.len()
            )));
        }
    }
    let (width, height) = reader.info().size();
    let size = reader
        .output_buffer_size()
        .filter(|&size| size <= MAX_IMAGE_BYTES)
        .ok_or_else(|| {
            fail(format!(
                "{width}×{height} pixels: the image is larger than the {MAX_IMAGE_BYTES} \
                 bytes read"
            ))
        })?;
    if size > bytes.len().saturating_mul(MAX_EXPANSION) {
        return Err(fail(format!(
            "the header declares {width}×{height} pixels, more than a file of {} bytes can \
             hold: truncated or corrupt",
            bytes.len()
        )));
    }
    let mut buf = sizes::try_filled("image-folder", size, 0u8)?;
    let info = reader.next_frame(&mut buf).map_err(corrupt)?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::Rgb => 3,
        other => {
            return Err(fail(format!(
                "colour type {other:?}: only grey and RGB images are read (remove the \
                 alpha channel)"
            )))
        }
    };
    let (rows, cols) = (info.height as usize, info.width as usize);
    let interleaved = buf.get(..info.buffer_size()).ok_or_else(|| {
        fail(format!(
            "the decoder reports {} bytes of pixels, more than the {size} its header declares",
            info.buffer_size()
        ))
    })?;
    Ok(PngImage {
        shape: ImageShape {
            channels,
            rows,
            cols,
        },
        pixels: channel_major(interleaved, channels),
    })
}

/// `[H, W, C]` pixels as `[C, H, W]`.
fn channel_major(interleaved: &[u8], channels: usize) -> Vec<u8> {
    if channels == 1 {
        return interleaved.to_vec();
    }
    (0..channels)
        .flat_map(|c| interleaved.iter().skip(c).step_by(channels).copied())
        .collect()
}

fn is_png(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// The entries of `dir` that `keep`, sorted by name.
fn sorted_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("image-folder", dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io("image-folder", dir, e))?.path();
        if keep(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::channel_major;

    #[test]
    fn interleaved_rgb_becomes_channel_major() {
        let hwc = [1, 2, 3, 4, 5, 6];
        assert_eq!(channel_major(&hwc, 3), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(channel_major(&hwc, 1), hwc.to_vec());
    }
}
