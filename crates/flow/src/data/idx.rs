//! IDX files (the format of MNIST, Fashion-MNIST and the shipped MNIST-10k): images
//! (magic `0x00000803`) and labels (magic `0x00000801`), gzip-compressed or plain.

use super::images::{scale_byte, ImageDataset};
use std::io::Read;
use std::path::{Path, PathBuf};
use twinflow_engine::{sizes, Error, Result};

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
        ImageDataset::parse_idx(
            (&read_file(images)?, &images.display().to_string()),
            (&read_file(labels)?, &labels.display().to_string()),
        )
    }

    /// [`ImageDataset::load`] for the files' contents already in memory, each with its
    /// origin (the file's name) for errors: `(bytes, origin)` of the images, then of
    /// the labels.
    pub fn parse_idx(images: (&[u8], &str), labels: (&[u8], &str)) -> Result<ImageDataset> {
        let raw = parse_idx_images(images.0, images.1)?;
        let lab = parse_idx_labels(labels.0, labels.1)?;
        if raw.count != lab.len() {
            return Err(Error::invalid(
                "idx",
                format!(
                    "{} holds {} images but {} holds {} labels",
                    images.1,
                    raw.count,
                    labels.1,
                    lab.len()
                ),
            ));
        }
        ImageDataset::from_bytes(raw, &lab)
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

    /// Builds a one-channel dataset from raw IDX contents (pixels scaled to `[−1, 1]`);
    /// an error, not an abort, when memory cannot hold the scaled pixels.
    pub fn from_bytes(raw: IdxImages, labels: &[u8]) -> Result<ImageDataset> {
        Ok(ImageDataset {
            images: sizes::try_collect("idx", raw.pixels.iter().map(|&b| scale_byte(b)))?,
            labels: sizes::try_collect("idx", labels.iter().map(|&l| l as i64))?,
            channels: 1,
            rows: raw.rows,
            cols: raw.cols,
            class_names: Vec::new(),
        })
    }
}

/// Reads an IDX image file (gzip or plain): checks the magic, the dims and that the
/// payload holds exactly `count·rows·cols` bytes.
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    parse_idx_images(&read_file(path)?, &path.display().to_string())
}

/// Reads an IDX label file (gzip or plain): checks the magic and that the payload
/// holds exactly `count` bytes.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    parse_idx_labels(&read_file(path)?, &path.display().to_string())
}

/// [`read_idx_images`] for a file's contents already in memory; `origin` (the file's
/// name) starts every error.
pub fn parse_idx_images(bytes: &[u8], origin: &str) -> Result<IdxImages> {
    let (header, pixels) = contents(bytes, origin, IDX_IMAGES_MAGIC)?;
    Ok(IdxImages {
        count: header[0],
        rows: header[1],
        cols: header[2],
        pixels,
    })
}

/// [`read_idx_labels`] for a file's contents already in memory; `origin` (the file's
/// name) starts every error.
pub fn parse_idx_labels(bytes: &[u8], origin: &str) -> Result<Vec<u8>> {
    Ok(contents(bytes, origin, IDX_LABELS_MAGIC)?.1)
}

fn file_error(origin: &str, msg: impl std::fmt::Display) -> Error {
    Error::invalid("idx", format!("{origin}: {msg}"))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("idx", path, e))
}

/// What an IDX file of `magic` holds: its header's dims and its payload, checked
/// against each other. A gzip stream (first bytes `1f 8b`) is decompressed up to the
/// size its header declares, into a buffer reserved for that size: a stream longer
/// than declared is an error found after that many bytes, never a buffer that grows
/// with it.
fn contents(bytes: &[u8], origin: &str, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let header_len = 4 + 4 * dims_of(magic);
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        let header = parse_header(origin, bytes, magic)?;
        let expected = payload_len(origin, magic, &header)?;
        let payload = &bytes[header_len..];
        check_payload(origin, payload.len(), expected, &header)?;
        let mut copy = sizes::try_vec("idx", payload.len())?;
        copy.extend_from_slice(payload);
        return Ok((header, copy));
    }
    let corrupt = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::OutOfMemory => file_error(
            origin,
            "decompressing the gzip stream needs more memory than can be allocated",
        ),
        _ => Error::caused(
            "idx",
            format!("{origin}: corrupt or truncated gzip stream"),
            e,
        ),
    };
    let mut stream = flate2::read::MultiGzDecoder::new(bytes);
    let mut head = Vec::with_capacity(header_len);
    (&mut stream)
        .take(header_len as u64)
        .read_to_end(&mut head)
        .map_err(corrupt)?;
    let header = parse_header(origin, &head, magic)?;
    let expected = payload_len(origin, magic, &header)?;
    let mut payload = sizes::try_vec::<u8>("idx", expected).map_err(|_| {
        file_error(
            origin,
            format!(
                "the header's dims {} need {expected} bytes, more memory than can be \
                 allocated",
                describe_dims(&header)
            ),
        )
    })?;
    // One byte past the declared size tells a stream that is too long.
    (&mut stream)
        .take(expected as u64 + 1)
        .read_to_end(&mut payload)
        .map_err(corrupt)?;
    let got = match payload.len() > expected {
        // The rest is counted without being kept.
        true => {
            let rest = std::io::copy(&mut stream, &mut std::io::sink()).map_err(corrupt)?;
            usize::try_from(rest)
                .ok()
                .and_then(|rest| payload.len().checked_add(rest))
                .unwrap_or(usize::MAX)
        }
        false => payload.len(),
    };
    check_payload(origin, got, expected, &header)?;
    Ok((header, payload))
}

/// Dims in a header of `magic`: count, rows, cols for images; count for labels.
fn dims_of(magic: u32) -> usize {
    match magic {
        IDX_IMAGES_MAGIC => 3,
        _ => 1,
    }
}

/// `4×28×28` or `10`.
fn describe_dims(header: &[usize]) -> String {
    let dims: Vec<String> = header.iter().map(usize::to_string).collect();
    dims.join("×")
}

/// Payload bytes the header declares; image dims must be positive and their product
/// must fit.
fn payload_len(origin: &str, magic: u32, header: &[usize]) -> Result<usize> {
    if magic == IDX_IMAGES_MAGIC && (header[1] == 0 || header[2] == 0) {
        return Err(file_error(
            origin,
            format!("image dims {}×{} must be positive", header[1], header[2]),
        ));
    }
    header
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            file_error(
                origin,
                format!("header dims {} overflow", describe_dims(header)),
            )
        })
}

/// Checks the magic and returns the big-endian u32 dims that follow it.
fn parse_header(origin: &str, bytes: &[u8], magic: u32) -> Result<Vec<usize>> {
    let kind = if magic == IDX_IMAGES_MAGIC {
        "IDX images"
    } else {
        "IDX labels"
    };
    let need = 4 + 4 * dims_of(magic);
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() >= 4 && word(0) != magic {
        return Err(file_error(
            origin,
            format!(
                "wrong magic number 0x{:08x}, expected 0x{magic:08x} ({kind})",
                word(0)
            ),
        ));
    }
    if bytes.len() < need {
        return Err(file_error(
            origin,
            format!(
                "truncated header: {} bytes, a {kind} header needs {need}",
                bytes.len()
            ),
        ));
    }
    Ok((0..dims_of(magic))
        .map(|d| word(4 + 4 * d) as usize)
        .collect())
}

fn check_payload(origin: &str, got: usize, expected: usize, header: &[usize]) -> Result<()> {
    let dims = describe_dims(header);
    if got < expected {
        return Err(file_error(
            origin,
            format!("truncated payload: {got} bytes, the header's dims {dims} need {expected}"),
        ));
    }
    if got > expected {
        return Err(file_error(
            origin,
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
