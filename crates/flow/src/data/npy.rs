//! NumPy `.npy` arrays as training data: float32 or uint8 images `[N, C, H, W]`
//! (`[N, H, W]` for grey) or vectors `[N, D]`, with int64 labels `[N]` in a second file.
//! Only what `numpy.save` writes for a C-ordered array of those types is read; anything
//! else is an error naming the file and what it holds.

use super::images::{scale_byte, ImageDataset};
use std::path::Path;
use twinflow_engine::{excerpt, sizes, Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The element types read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    U8,
    I64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::U8 => 1,
            Dtype::I64 => 8,
        }
    }
}

/// A parsed `.npy` file: element type, shape and the raw little-endian payload.
#[derive(Debug)]
struct NpyArray {
    dtype: Dtype,
    shape: Vec<usize>,
    payload: Vec<u8>,
}

/// Loads images (or vectors) from `data` and their labels from `labels`.
pub fn load_npy_dataset(data: &Path, labels: &Path) -> Result<ImageDataset> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| Error::io("npy", path, e));
    parse_npy_dataset(
        (&read(data)?, &data.display().to_string()),
        (&read(labels)?, &labels.display().to_string()),
    )
}

/// [`load_npy_dataset`] for the files' contents already in memory, each with its
/// origin (the file's name) for errors: `(bytes, origin)` of the data, then of the
/// labels.
pub fn parse_npy_dataset(data: (&[u8], &str), labels: (&[u8], &str)) -> Result<ImageDataset> {
    let (bytes, origin) = data;
    let fail = |why: String| Error::invalid("npy", format!("{origin}: {why}"));
    let array = parse_npy(bytes).map_err(fail)?;
    let (n, channels, rows, cols) = match array.shape[..] {
        [n, c, h, w] if c == 1 || c == 3 => (n, c, h, w),
        [_, c, _, _] => {
            return Err(fail(format!(
                "{c} channels: images [N, C, H, W] need C = 1 (grey) or 3 (RGB)"
            )))
        }
        [n, h, w] => (n, 1, h, w),
        // Vectors: one row of `d` values per sample.
        [n, d] => (n, 1, 1, d),
        _ => {
            return Err(fail(format!(
                "shape {:?}: expected [N, C, H, W], [N, H, W] or [N, D]",
                array.shape
            )))
        }
    };
    let images = match array.dtype {
        Dtype::U8 => sizes::try_collect("npy", array.payload.iter().map(|&b| scale_byte(b)))?,
        Dtype::F32 => {
            let values: Vec<f32> = array
                .payload
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(fail(format!("value {i} is {}", values[i])));
            }
            values
        }
        Dtype::I64 => return Err(fail("int64 data: expected float32 or uint8".into())),
    };
    let labels = parse_labels(labels, n)?;
    let dataset = ImageDataset {
        images,
        labels,
        channels,
        rows,
        cols,
        class_names: Vec::new(),
    };
    dataset.check(origin)?;
    Ok(dataset)
}

/// The int64 labels `[n]` in `labels` (its bytes and origin).
fn parse_labels((bytes, origin): (&[u8], &str), n: usize) -> Result<Vec<i64>> {
    let fail = |why: String| Error::invalid("npy", format!("{origin}: {why}"));
    let array = parse_npy(bytes).map_err(fail)?;
    if array.dtype != Dtype::I64 {
        return Err(fail("labels must be int64".into()));
    }
    if array.shape != [n] {
        return Err(fail(format!(
            "labels of shape {:?}, the data hold {n} samples (expected [{n}])",
            array.shape
        )));
    }
    Ok(array
        .payload
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect())
}

/// The array in `bytes`, or why it is not one this reader takes.
fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("not a .npy file (no \\x93NUMPY header)".into());
    }
    let (header_len, header_start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (len as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let payload_start = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(&bytes[header_start..payload_start])
        .map_err(|_| "the header is not text")?;
    let dtype = match dict_value(header, "descr")? {
        "'<f4'" => Dtype::F32,
        "'|u1'" | "'<u1'" => Dtype::U8,
        "'<i8'" => Dtype::I64,
        other => {
            return Err(format!(
                "element type {}: expected float32, uint8 or int64",
                excerpt(other)
            ))
        }
    };
    if dict_value(header, "fortran_order")? != "False" {
        return Err("Fortran-ordered array: save it C-ordered (numpy.ascontiguousarray)".into());
    }
    let shape = parse_shape(dict_value(header, "shape")?)?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let payload = &bytes[payload_start..];
    if payload.len() != count {
        return Err(format!(
            "{} payload bytes, shape {shape:?} needs {count}",
            payload.len()
        ));
    }
    Ok(NpyArray {
        dtype,
        shape,
        payload: payload.to_vec(),
    })
}

/// The text of `key`'s value in the header's Python dict literal (up to the next
/// top-level comma or the closing brace).
fn dict_value<'a>(header: &'a str, key: &str) -> std::result::Result<&'a str, String> {
    let quoted = format!("'{key}':");
    let start = header
        .find(&quoted)
        .map(|i| i + quoted.len())
        .ok_or_else(|| format!("the header has no '{key}'"))?;
    let rest = header[start..].trim_start();
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return Ok(rest[..i].trim()),
            _ => {}
        }
    }
    Err(format!("the header's '{key}' is not terminated"))
}

/// `(3, 28, 28)` or `(10,)` as dims.
fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("shape {} is not a tuple", excerpt(text)))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse()
                .map_err(|_| format!("shape {}: {} is not a size", excerpt(text), excerpt(d)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn parses_what_numpy_writes() {
        let a = parse_npy(&npy("|u1", "(2, 1, 2, 2)", &[0; 8])).unwrap();
        assert_eq!((a.dtype, a.shape), (Dtype::U8, vec![2, 1, 2, 2]));
        let b = parse_npy(&npy("<i8", "(3,)", &[0; 24])).unwrap();
        assert_eq!(b.shape, vec![3]);
        let c = parse_npy(&npy("<f4", "(1, 2)", &[0; 8])).unwrap();
        assert_eq!((c.dtype, c.payload.len()), (Dtype::F32, 8));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let cases = [
            (npy("<f8", "(2,)", &[0; 16]), "element type"),
            (npy("|u1", "(2, 2)", &[0; 3]), "payload bytes"),
            (
                npy("|u1", "(99999999999, 99999999999, 9999)", &[]),
                "overflows",
            ),
            (npy("|u1", "[2]", &[0; 2]), "not a tuple"),
            (b"PK\x03\x04 zip".to_vec(), "not a .npy"),
        ];
        for (bytes, why) in cases {
            let err = parse_npy(&bytes).unwrap_err();
            assert!(err.contains(why), "{err} lacks {why}");
        }
        let mut fortran = npy("|u1", "(1,)", &[0]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(parse_npy(&fortran).unwrap_err().contains("Fortran"));
    }
}
