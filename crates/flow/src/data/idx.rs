//! IDX files (the format of MNIST, Fashion-MNIST and the shipped MNIST-10k): images
//! (magic `0x00000803`) and labels (magic `0x00000801`), gzip-compressed or plain.

use super::images::{scale_byte, ImageDataset};
use std::io::Read;
use std::path::{Path, PathBuf};
use twinflow_engine::{Error, Result};

/// Magic number of an IDX file of unsigned-byte images (3 dims: count, rows, cols).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned-byte labels (1 dim: count).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Where the shipped MNIST-10k lives, relative to the repository root.
pub const MNIST_10K_DIR: &str = "data/mnist-10k";
/// File name of the shipped MNIST-10k images.
pub const MNIST_10K_IMAGES: &str = "images-idx3-ubyte.gz";
/// File name of the shipped MNIST-10k labels.
pub const MNIST_10K_LABELS: &str = "labels-idx1-ubyte.gz";

/// The raw contents of an IDX image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count·rows·cols` bytes, row-major, image after image.
    pub pixels: Vec<u8>,
}

impl ImageDataset {
    /// Loads an image file and a label file (each gzip or plain IDX) and checks that
    /// they hold the same number of samples.
    pub fn load(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<ImageDataset> {
        let (images, labels) = (images.as_ref(), labels.as_ref());
        let raw = read_idx_images(images)?;
        let lab = read_idx_labels(labels)?;
        if raw.count != lab.len() {
            return Err(Error::invalid(
                "idx",
                format!(
                    "{} holds {} images but {} holds {} labels",
                    images.display(),
                    raw.count,
                    labels.display(),
                    lab.len()
                ),
            ));
        }
        Ok(ImageDataset::from_bytes(raw, &lab))
    }

    /// Loads the shipped MNIST-10k from `repo_root/data/mnist-10k`.
    pub fn mnist_10k(repo_root: impl AsRef<Path>) -> Result<ImageDataset> {
        let (images, labels) = mnist_10k_paths(&repo_root);
        if !images.is_file() {
            return Err(Error::invalid(
                "data",
                format!(
                    "MNIST-10k not found at {}: run from the repository root (which holds \
                     {MNIST_10K_DIR}/) or give the directory holding data/ (config key \
                     data.root, flag --root)",
                    images.display()
                ),
            ));
        }
        ImageDataset::load(images, labels)
    }

    /// Builds a one-channel dataset from raw IDX contents (pixels scaled to `[−1, 1]`).
    pub fn from_bytes(raw: IdxImages, labels: &[u8]) -> ImageDataset {
        ImageDataset {
            images: raw.pixels.iter().map(|&b| scale_byte(b)).collect(),
            labels: labels.iter().map(|&l| l as i64).collect(),
            channels: 1,
            rows: raw.rows,
            cols: raw.cols,
            class_names: Vec::new(),
        }
    }
}

/// Reads an IDX image file (gzip or plain): checks the magic, the dims and that the
/// payload holds exactly `count·rows·cols` bytes.
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    let bytes = read_maybe_gzip(path)?;
    let header = parse_header(path, &bytes, IDX_IMAGES_MAGIC, 3)?;
    let (count, rows, cols) = (header[0], header[1], header[2]);
    if rows == 0 || cols == 0 {
        return Err(file_error(
            path,
            format!("image dims {rows}×{cols} must be positive"),
        ));
    }
    let expected = count
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| file_error(path, format!("header dims {count}×{rows}×{cols} overflow")))?;
    let payload = &bytes[16..];
    check_payload(
        path,
        payload.len(),
        expected,
        &format!("{count}×{rows}×{cols}"),
    )?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: payload.to_vec(),
    })
}

/// Reads an IDX label file (gzip or plain): checks the magic and that the payload
/// holds exactly `count` bytes.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let bytes = read_maybe_gzip(path)?;
    let header = parse_header(path, &bytes, IDX_LABELS_MAGIC, 1)?;
    let payload = &bytes[8..];
    check_payload(path, payload.len(), header[0], &header[0].to_string())?;
    Ok(payload.to_vec())
}

fn file_error(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::invalid("idx", format!("{}: {msg}", path.display()))
}

/// The file's bytes, decompressed when it starts with the gzip header `1f 8b`.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io("idx", path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                let what = format!("{}: corrupt or truncated gzip stream", path.display());
                Error::caused("idx", what, e)
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Checks the magic and returns the `ndims` big-endian u32 dims that follow it.
fn parse_header(path: &Path, bytes: &[u8], magic: u32, ndims: usize) -> Result<Vec<usize>> {
    let kind = if magic == IDX_IMAGES_MAGIC {
        "IDX images"
    } else {
        "IDX labels"
    };
    let need = 4 + 4 * ndims;
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() >= 4 && word(0) != magic {
        return Err(file_error(
            path,
            format!(
                "wrong magic number 0x{:08x}, expected 0x{magic:08x} ({kind})",
                word(0)
            ),
        ));
    }
    if bytes.len() < need {
        return Err(file_error(
            path,
            format!(
                "truncated header: {} bytes, a {kind} header needs {need}",
                bytes.len()
            ),
        ));
    }
    Ok((0..ndims).map(|d| word(4 + 4 * d) as usize).collect())
}

fn check_payload(path: &Path, got: usize, expected: usize, dims: &str) -> Result<()> {
    if got < expected {
        return Err(file_error(
            path,
            format!("truncated payload: {got} bytes, the header's dims {dims} need {expected}"),
        ));
    }
    if got > expected {
        return Err(file_error(
            path,
            format!(
                "size mismatch: {got} payload bytes, the header's dims {dims} need {expected} ({} extra)",
                got - expected
            ),
        ));
    }
    Ok(())
}

/// The image and label paths of the shipped MNIST-10k under `repo_root`.
pub fn mnist_10k_paths(repo_root: impl AsRef<Path>) -> (PathBuf, PathBuf) {
    let dir = repo_root.as_ref().join(MNIST_10K_DIR);
    (dir.join(MNIST_10K_IMAGES), dir.join(MNIST_10K_LABELS))
}
