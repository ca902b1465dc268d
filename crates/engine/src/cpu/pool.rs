//! A cache of freed host buffers, reused by length.
//!
//! A training step allocates the same activation and gradient sizes every time. Left to
//! the system allocator, large buffers go back to the OS when freed and page-fault in
//! again, zeroed, on the next step; that cost rivals the arithmetic of elementwise ops.
//! Storage dropped by the engine is parked here instead, and kernels take buffers of
//! the exact length they need. Small buffers bypass the cache.

use super::host_buffer::{HostBuffer, ZeroIsValid};
use crate::error::Result;
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Buffers smaller than this go straight to the allocator.
const MIN_BYTES: usize = 64 << 10;
/// At most this many bytes stay cached, over all element types.
const MAX_CACHED_BYTES: usize = 2 << 30;

static CACHED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Free buffers of one element type, by length.
pub struct BufferCache<T: ZeroIsValid>(Mutex<HashMap<usize, Vec<HostBuffer<T>>>>);

/// Element types with a buffer cache.
pub trait Poolable: ZeroIsValid {
    /// This type's cache.
    fn cache() -> &'static BufferCache<Self>;
}

macro_rules! poolable {
    ($($t:ty),*) => {$(
        impl Poolable for $t {
            fn cache() -> &'static BufferCache<Self> {
                static CACHE: std::sync::OnceLock<BufferCache<$t>> = std::sync::OnceLock::new();
                CACHE.get_or_init(|| BufferCache(Mutex::new(HashMap::new())))
            }
        }
    )*};
}
poolable!(f32, f64, bf16, f16, i64);

fn bytes<T>(n: usize) -> usize {
    n.saturating_mul(std::mem::size_of::<T>())
}

/// A buffer of `n` elements whose contents are unspecified (valid values left by an
/// earlier use): for kernels that overwrite every element.
pub fn take<T: Poolable>(n: usize) -> HostBuffer<T> {
    cached(n).unwrap_or_else(|| HostBuffer::zeroed(n))
}

/// A parked buffer of exactly `n` elements, if the cache holds one.
fn cached<T: Poolable>(n: usize) -> Option<HostBuffer<T>> {
    if bytes::<T>(n) < MIN_BYTES {
        return None;
    }
    let mut cache = T::cache().0.lock().unwrap_or_else(|e| e.into_inner());
    let v = cache.get_mut(&n).and_then(Vec::pop)?;
    CACHED_BYTES.fetch_sub(bytes::<T>(n), Ordering::Relaxed);
    Some(v)
}

/// A buffer of `n` zeros (`T::default()`).
pub fn take_zeroed<T: Poolable>(n: usize) -> HostBuffer<T> {
    let mut v = take(n);
    v.fill(T::default());
    v
}

/// [`take`] for a size that may come from a user or a file: a fresh buffer is reserved
/// fallibly, so that a size too large for the machine is an error for `op`.
pub fn try_take<T: Poolable>(op: &'static str, n: usize) -> Result<HostBuffer<T>> {
    match cached(n) {
        Some(v) => Ok(v),
        None => HostBuffer::try_zeroed(op, n),
    }
}

/// [`take_zeroed`] for a size that may come from a user or a file: a fresh buffer is
/// reserved fallibly, so that a size too large for the machine is an error for `op`.
pub fn try_take_zeroed<T: Poolable>(op: &'static str, n: usize) -> Result<HostBuffer<T>> {
    match cached(n) {
        Some(mut v) => {
            v.fill(T::default());
            Ok(v)
        }
        None => HostBuffer::try_zeroed(op, n),
    }
}

/// Parks a buffer for reuse (or frees it when small or the cache is full).
pub fn give<T: Poolable>(v: HostBuffer<T>) {
    let n = v.len();
    let size = bytes::<T>(n);
    if size < MIN_BYTES {
        return;
    }
    if CACHED_BYTES.fetch_add(size, Ordering::Relaxed) + size > MAX_CACHED_BYTES {
        CACHED_BYTES.fetch_sub(size, Ordering::Relaxed);
        return;
    }
    let mut cache = T::cache().0.lock().unwrap_or_else(|e| e.into_inner());
    cache.entry(n).or_default().push(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_large_buffer_is_reused_and_zeroed_on_request() {
        let n = 100_003; // a length no other test uses
        let mut v = take::<f64>(n);
        v.fill(7.0);
        let ptr = v.as_ptr();
        give(v);
        let again = take_zeroed::<f64>(n);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.iter().all(|&x| x == 0.0));
    }
}
