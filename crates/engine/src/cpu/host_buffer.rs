//! Host memory for tensor elements, aligned to a cache line.
//!
//! The system allocator aligns large blocks to 16 bytes only (glibc's `malloc` hands
//! back a page plus a 16-byte header). Then every 64-byte AVX-512 load or store
//! of a kernel that walks a buffer from its start straddles two cache lines, and a
//! DiT training step runs about 7 % slower than with the same buffers aligned
//! (docs/benchmarks.md). PyTorch's host allocator aligns to 64 bytes for the same
//! reason. A [`HostBuffer`] is a fixed-length array whose first element starts a
//! cache line, whatever allocator the program uses.

use crate::error::{Error, Result};
use crate::sizes::try_collect;
use half::{bf16, f16};
use std::alloc::Layout;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The alignment of every buffer's first element, in bytes: one cache line, one
/// AVX-512 register.
pub const ALIGN: usize = 64;

/// Element types a [`HostBuffer`] holds: plain numbers for which a block of zero
/// bytes is the value zero, so that a fresh buffer can come zeroed from the allocator.
///
/// # Safety
/// An implementor must be `Copy`, without drop glue, and valid for all-zero bytes.
pub unsafe trait ZeroIsValid: Copy + Default + Send + Sync + 'static {}

// SAFETY: IEEE floats and integers, whose all-zero bit pattern is +0.0 or 0.
unsafe impl ZeroIsValid for f32 {}
unsafe impl ZeroIsValid for f64 {}
unsafe impl ZeroIsValid for f16 {}
unsafe impl ZeroIsValid for bf16 {}
unsafe impl ZeroIsValid for i64 {}

/// `len` elements of `T` in one block aligned to [`ALIGN`] bytes; dereferences to a
/// slice. Its length is fixed: kernels size their output once and write it in place.
pub struct HostBuffer<T: ZeroIsValid> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: a HostBuffer owns its block, as a Vec<T> does.
unsafe impl<T: ZeroIsValid> Send for HostBuffer<T> {}
unsafe impl<T: ZeroIsValid> Sync for HostBuffer<T> {}

impl<T: ZeroIsValid> HostBuffer<T> {
    /// The empty buffer, which owns no memory (usable in `const` contexts such as a
    /// thread-local's initialiser).
    pub const fn new() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }

    /// The layout of `len` elements, or `None` when its byte size overflows.
    fn layout(len: usize) -> Option<Layout> {
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        Layout::from_size_align(bytes, ALIGN.max(std::mem::align_of::<T>())).ok()
    }

    /// `len` zeros; an error naming `op` and the size when memory cannot hold them.
    /// Large blocks come from the allocator already zeroed (fresh pages), so this
    /// costs no pass over memory there.
    pub fn try_zeroed(op: &'static str, len: usize) -> Result<Self> {
        let refused = || Error::OutOfMemory {
            op,
            what: format!(
                "cannot allocate {len} values of {} bytes: not enough memory",
                std::mem::size_of::<T>()
            ),
        };
        let layout = Self::layout(len).ok_or_else(refused)?;
        if layout.size() == 0 {
            return Ok(Self::default());
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw.cast::<T>()).ok_or_else(refused)?;
        Ok(Self { ptr, len })
    }

    /// `len` zeros, for sizes the engine computed itself from tensors it already holds.
    ///
    /// # Panics
    /// When memory cannot hold them, as `vec![0; len]` does.
    pub fn zeroed(len: usize) -> Self {
        match Self::try_zeroed("host buffer", len) {
            Ok(buffer) => buffer,
            Err(e) => panic!("{e}"),
        }
    }

    /// A copy of `values`; an error naming `op` when memory cannot hold them.
    pub fn try_from_slice(op: &'static str, values: &[T]) -> Result<Self> {
        let mut buffer = Self::try_zeroed(op, values.len())?;
        buffer.copy_from_slice(values);
        Ok(buffer)
    }

    /// The values of `values`; an error naming `op` when memory cannot hold them.
    /// An iterator that knows its exact length is written straight into the buffer;
    /// another is collected first.
    pub fn try_from_iter(op: &'static str, values: impl Iterator<Item = T>) -> Result<Self> {
        match values.size_hint() {
            (lower, Some(upper)) if lower == upper => {
                let mut buffer = Self::try_zeroed(op, lower)?;
                buffer
                    .iter_mut()
                    .zip(values)
                    .for_each(|(slot, v)| *slot = v);
                Ok(buffer)
            }
            _ => Self::try_from_slice(op, &try_collect(op, values)?),
        }
    }
}

impl<T: ZeroIsValid> Default for HostBuffer<T> {
    /// The empty buffer, which owns no memory.
    fn default() -> Self {
        Self::new()
    }
}

impl<T: ZeroIsValid> Drop for HostBuffer<T> {
    fn drop(&mut self) {
        match Self::layout(self.len) {
            // SAFETY: allocated in `try_zeroed` with this same layout.
            Some(layout) if layout.size() > 0 => unsafe {
                std::alloc::dealloc(self.ptr.as_ptr().cast(), layout)
            },
            _ => {}
        }
    }
}

impl<T: ZeroIsValid> Deref for HostBuffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialised elements (or dangles, aligned, for 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroIsValid> DerefMut for HostBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<'a, T: ZeroIsValid> IntoIterator for &'a HostBuffer<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: ZeroIsValid> Clone for HostBuffer<T> {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl<T: ZeroIsValid + std::fmt::Debug> std::fmt::Debug for HostBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ZeroIsValid + PartialEq> PartialEq for HostBuffer<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: ZeroIsValid + PartialEq> PartialEq<Vec<T>> for HostBuffer<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == **other
    }
}

impl<T: ZeroIsValid> From<Vec<T>> for HostBuffer<T> {
    /// The values of `v`, copied into an aligned block.
    fn from(v: Vec<T>) -> Self {
        let mut buffer = Self::zeroed(v.len());
        buffer.copy_from_slice(&v);
        buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_a_cache_line_and_hold_zeros() {
        for len in [1, 3, 17, 1000, 100_001] {
            let b = HostBuffer::<f32>::zeroed(len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0, "len {len}");
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0.0));
        }
        let half = HostBuffer::<bf16>::try_from_slice("t", &[bf16::ONE; 5]).unwrap();
        assert_eq!(half.as_ptr() as usize % ALIGN, 0);
        assert_eq!(&*half, &[bf16::ONE; 5]);
        assert!(HostBuffer::<f64>::default().is_empty());
    }

    #[test]
    fn copies_are_independent_and_sizes_too_large_are_errors() {
        let a = HostBuffer::try_from_iter("t", [1.0f64, 2.0, 3.0].into_iter()).unwrap();
        let mut b = a.clone();
        b[0] = 9.0;
        assert_eq!((&*a, &*b), (&[1.0, 2.0, 3.0][..], &[9.0, 2.0, 3.0][..]));
        let err = HostBuffer::<f32>::try_zeroed("zeros", usize::MAX / 2).unwrap_err();
        assert!(err.to_string().contains("zeros"), "{err}");
        assert!(HostBuffer::<i64>::try_zeroed("t", usize::MAX / 4).is_err());
    }
}
