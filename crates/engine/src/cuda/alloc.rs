//! The caching allocator: freed buffers go back to a per-device cache of size buckets
//! and are handed out again, so that a training step does no `cuMemAlloc` once the
//! shapes of one step have been seen.
//!
//! Reuse is safe without events because every kernel, copy and cuBLAS call of a device
//! runs on its one stream: work on a reused buffer is queued after the work that last
//! used it.

use super::device::CudaDevice;
use crate::error::Result;
use cudarc::driver::{result, DriverError};
use std::collections::HashMap;
use std::sync::Arc;

/// Memory counters of one device, in bytes (of bucket sizes) and calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live buffers.
    pub in_use: usize,
    /// Bytes of freed buffers kept for reuse.
    pub cached: usize,
    /// The largest `in_use` seen.
    pub peak_in_use: usize,
    /// `cuMemAlloc` calls so far (flat after warm-up).
    pub device_allocs: u64,
    /// Requests served from the cache.
    pub reuses: u64,
}

/// The free buffers of a device by bucket size, and its counters.
#[derive(Default)]
pub(crate) struct Cache {
    free: HashMap<usize, Vec<u64>>,
    pub(crate) stats: MemoryStats,
}

/// The bucket a request of `bytes` is served from: powers of two up to 1 MiB (small
/// tensors vary most), multiples of 2 MiB beyond (little waste on large ones).
fn bucket(bytes: usize) -> usize {
    const SMALL: usize = 1 << 20;
    const LARGE_STEP: usize = 2 << 20;
    match bytes {
        0..=SMALL => bytes.next_power_of_two().max(512),
        _ => bytes.div_ceil(LARGE_STEP) * LARGE_STEP,
    }
}

/// Device memory from the cache; returns to it when dropped.
pub(crate) struct Buffer {
    ptr: u64,
    bytes: usize,
    dev: Arc<CudaDevice>,
}

impl Buffer {
    /// The device address.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The device the memory is on.
    pub(crate) fn dev(&self) -> &Arc<CudaDevice> {
        &self.dev
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut cache = self.dev.cache.lock();
        cache.free.entry(self.bytes).or_default().push(self.ptr);
        cache.stats.in_use -= self.bytes;
        cache.stats.cached += self.bytes;
    }
}

impl Cache {
    fn take(&mut self, bytes: usize) -> Option<u64> {
        let ptr = self.free.get_mut(&bytes)?.pop()?;
        self.stats.cached -= bytes;
        self.stats.reuses += 1;
        Some(ptr)
    }

    fn count_in_use(&mut self, bytes: usize) {
        self.stats.in_use += bytes;
        self.stats.peak_in_use = self.stats.peak_in_use.max(self.stats.in_use);
    }
}

/// Allocates at least `bytes` on `dev` (contents undefined): from the cache when a
/// buffer of the bucket is free, else with `cuMemAlloc`, emptying the cache and trying
/// once more when the device is out of memory.
pub(crate) fn alloc(dev: &Arc<CudaDevice>, bytes: usize) -> Result<Buffer> {
    let size = bucket(bytes);
    let mut cache = dev.cache.lock();
    let ptr = match cache.take(size) {
        Some(ptr) => ptr,
        None => {
            let fresh = device_alloc(dev, size).or_else(|_| {
                free_all(dev, &mut cache)?;
                device_alloc(dev, size)
            });
            let ptr = fresh.map_err(|e| dev.error("alloc", e))?;
            cache.stats.device_allocs += 1;
            ptr
        }
    };
    cache.count_in_use(size);
    Ok(Buffer {
        ptr,
        bytes: size,
        dev: dev.clone(),
    })
}

fn device_alloc(dev: &CudaDevice, bytes: usize) -> std::result::Result<u64, DriverError> {
    dev.bind()?;
    // SAFETY: a plain allocation in the device's (now current) context.
    unsafe { result::malloc_sync(bytes) }
}

/// Returns every cached buffer to the driver (after the stream has finished with them).
pub(crate) fn free_all(
    dev: &CudaDevice,
    cache: &mut Cache,
) -> std::result::Result<(), DriverError> {
    dev.bind()?;
    dev.stream.synchronize()?;
    for (_, ptrs) in cache.free.drain() {
        for ptr in ptrs {
            // SAFETY: cached pointers came from `malloc_sync` and are owned by no buffer.
            unsafe { result::free_sync(ptr) }?;
        }
    }
    cache.stats.cached = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_round_up() {
        assert_eq!(bucket(0), 512);
        assert_eq!(bucket(513), 1024);
        assert_eq!(bucket(1 << 20), 1 << 20);
        assert_eq!(bucket((1 << 20) + 1), 2 << 20);
        assert_eq!(bucket((2 << 20) + 1), 4 << 20);
        assert_eq!(bucket(5 << 20), 6 << 20);
    }
}
