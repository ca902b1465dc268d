//! Sizes that come from users and files (a config's width, a batch size, `--n`, a
//! checkpoint's shapes): element counts computed with checked arithmetic and buffers
//! reserved fallibly, so that a size too large for the machine is an
//! [`Error::OutOfMemory`] naming what was asked for, never a "capacity overflow" panic
//! or an allocation abort.

use crate::error::{Error, Result};

/// The number of elements of `shape`. Errors, naming `op` and the shape, when the dims
/// multiply past `usize`, counting zero dims as 1 there: a tensor's strides are such
/// products too, and must fit even when the tensor is empty.
pub fn elem_count(op: &'static str, shape: &[usize]) -> Result<usize> {
    let strides_fit = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)));
    match strides_fit {
        Some(_) => Ok(shape.iter().product()),
        None => Err(Error::OutOfMemory {
            op,
            what: format!("shape {shape:?} has more elements than memory can address"),
        }),
    }
}

/// `n` values of `bytes_each` bytes as a phrase: `2000 values of 4 bytes (8000 bytes)`.
fn describe(n: usize, bytes_each: usize) -> String {
    let total = n as u128 * bytes_each as u128;
    format!("{n} values of {bytes_each} bytes ({total} bytes)")
}

/// An empty vector with room for `n` values of `T`, reserved without aborting: errors
/// naming `op` and the size when the allocator refuses or the byte size overflows.
pub fn try_vec<T>(op: &'static str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        op,
        what: format!(
            "cannot allocate {}: not enough memory",
            describe(n, std::mem::size_of::<T>())
        ),
    })?;
    Ok(v)
}

/// `n` copies of `value`, allocated as [`try_vec`] does.
pub fn try_filled<T: Clone>(op: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = try_vec(op, n)?;
    v.resize(n, value);
    Ok(v)
}

/// The values of `values`, collected into a vector reserved as [`try_vec`] does for
/// the iterator's length (its lower size bound).
pub fn try_collect<T>(op: &'static str, values: impl Iterator<Item = T>) -> Result<Vec<T>> {
    let mut v = try_vec(op, values.size_hint().0)?;
    v.extend(values);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_sizes_are_errors_not_aborts() {
        assert_eq!(elem_count("t", &[2, 3, 4]).unwrap(), 24);
        assert_eq!(elem_count("t", &[0, 5]).unwrap(), 0);
        let overflow = elem_count("t", &[0, usize::MAX, 2]).unwrap_err();
        assert!(overflow.to_string().contains("more elements"), "{overflow}");
        let err = try_vec::<f32>("zeros", usize::MAX / 2).unwrap_err();
        assert!(err.to_string().contains("not enough memory"), "{err}");
        // Past `isize::MAX` bytes: refused before the allocator is asked, whatever the
        // machine's overcommit policy.
        assert!(try_filled("t", usize::MAX / 4, 0u64).is_err());
        assert_eq!(try_filled("t", 3, 7u8).unwrap(), vec![7, 7, 7]);
        assert_eq!(try_collect("t", 0..4).unwrap(), vec![0, 1, 2, 3]);
    }
}
