//! A minimal writer of NumPy `.npy` files (format version 1.0, little-endian), written
//! atomically and never over a file of another kind ([`super::output`]).

use super::error::CliResult;
use super::output::{write_output, OutputKind};
use std::path::Path;

/// The header of a version 1.0 `.npy` file for `descr` and `shape`, padded with spaces
/// and a final newline so that the data starts at a multiple of 16 bytes.
fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    // magic (6) + version (2) + header length (2) + dict + '\n'
    let unpadded = 10 + dict.len() + 1;
    let pad = (16 - unpadded % 16) % 16;
    dict.extend(std::iter::repeat_n(' ', pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

fn write(path: &Path, mut header: Vec<u8>, data: &[u8]) -> CliResult<()> {
    header.extend_from_slice(data);
    write_output(path, OutputKind::Npy, &header)
}

/// Writes `values` as a float32 array `[rows, cols]`.
pub fn write_f32(path: &Path, values: &[f32], rows: usize, cols: usize) -> CliResult<()> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(path, header("<f4", &[rows, cols]), &data)
}

/// Writes `values` as an int64 array `[n]`.
pub fn write_i64(path: &Path, values: &[i64]) -> CliResult<()> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write(path, header("<i8", &[values.len()]), &data)
}

/// `x.npy` → `x.labels.npy`.
pub fn labels_path(path: &Path) -> std::path::PathBuf {
    let s = path.to_string_lossy();
    let stem = s.strip_suffix(".npy").unwrap_or(&s);
    std::path::PathBuf::from(format!("{stem}.labels.npy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned() {
        for shape in [&[3usize, 2][..], &[7][..], &[100000, 784][..]] {
            let h = header("<f4", shape);
            assert_eq!(h.len() % 16, 0);
            assert_eq!(*h.last().unwrap(), b'\n');
        }
    }
}
