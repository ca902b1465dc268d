//! Seeded random tensors from a counter-based generator (Philox 4×32-10).
//!
//! Element `i` of a draw depends only on (seed, offset + i), so a draw is reproducible,
//! parallel kernels (and a future CUDA kernel) produce the same stream, and the whole
//! state is two integers that checkpoints save and restore.

use crate::cpu::CpuStorage;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::sizes;
use crate::storage::Storage;
use crate::{Device, Tensor};

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox 4×32 with 10 rounds: four random u32 for a 128-bit counter and a 64-bit key.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (PHILOX_M0 as u64) * (c[0] as u64);
        let p1 = (PHILOX_M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
    }
    c
}

/// The saved state of a [`Generator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorState {
    /// The seed (the Philox key).
    pub seed: u64,
    /// How many values have been drawn so far (the Philox counter).
    pub offset: u64,
}

/// A seeded source of random tensors.
#[derive(Debug, Clone)]
pub struct Generator {
    state: GeneratorState,
}

impl Generator {
    /// A generator at the start of the stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Generator {
            state: GeneratorState { seed, offset: 0 },
        }
    }

    /// The current state, to save.
    pub fn state(&self) -> GeneratorState {
        self.state
    }

    /// Resumes from a saved state.
    pub fn set_state(&mut self, state: GeneratorState) {
        self.state = state;
    }

    /// The next `n` counters, taken: a map from index `i < n` to the four random
    /// words of counter `offset + i`.
    fn take_blocks(&mut self, n: usize) -> impl Fn(usize) -> [u32; 4] + Sync {
        let GeneratorState { seed, offset } = self.state;
        // The counter wraps like Philox's own 64-bit counter would: a state restored
        // from a file may hold any offset.
        self.state.offset = offset.wrapping_add(n as u64);
        let key = [seed as u32, (seed >> 32) as u32];
        move |i| {
            let c = offset.wrapping_add(i as u64);
            philox4x32([c as u32, (c >> 32) as u32, 0, 0], key)
        }
    }

    /// Uniform values in `[lo, hi)`, drawn in f64 and converted to `dtype`.
    pub fn uniform(
        &mut self,
        shape: &[usize],
        lo: f64,
        hi: f64,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        check_float_dtype("uniform", dtype)?;
        let n = sizes::elem_count("uniform", shape)?;
        let block = self.take_blocks(n);
        let value = |i| {
            let b = block(i);
            lo + (hi - lo) * unit(b[0], b[1])
        };
        from_values((n, value), shape, dtype, device)
    }

    /// Normal values with the given mean and standard deviation (Box–Muller), drawn in
    /// f64 and converted to `dtype`.
    pub fn normal(
        &mut self,
        shape: &[usize],
        mean: f64,
        std: f64,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        check_float_dtype("normal", dtype)?;
        let n = sizes::elem_count("normal", shape)?;
        let block = self.take_blocks(n);
        let value = |i| {
            let b = block(i);
            // 1 − u lies in (0, 1], so the logarithm is finite.
            let (u1, u2) = (1.0 - unit(b[0], b[1]), unit(b[2], b[3]));
            mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        from_values((n, value), shape, dtype, device)
    }

    /// Standard normal values (mean 0, std 1).
    pub fn randn(&mut self, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        self.normal(shape, 0.0, 1.0, dtype, device)
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates), as i64.
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut p: Vec<i64> = (0..n as i64).collect();
        let block = self.take_blocks(n);
        for i in (1..n).rev() {
            let draw = block(i);
            let j = (unit(draw[0], draw[1]) * (i + 1) as f64) as usize;
            p.swap(i, j.min(i));
        }
        p
    }
}

/// A uniform f64 in [0, 1) from 53 random bits.
fn unit(hi: u32, lo: u32) -> f64 {
    let bits = ((hi as u64) << 21) ^ ((lo as u64) >> 11);
    (bits & ((1 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn check_float_dtype(op: &'static str, dtype: DType) -> Result<()> {
    match dtype.is_float() {
        true => Ok(()),
        false => Err(Error::dtypes(op, &[dtype])),
    }
}

/// A tensor of the `n` values `value(0), value(1), …` (filled in parallel on the CPU,
/// then moved to `device`).
fn from_values(
    (n, value): (usize, impl Fn(usize) -> f64 + Sync),
    shape: &[usize],
    dtype: DType,
    device: Device,
) -> Result<Tensor> {
    let cpu = CpuStorage::from_f64_fn(n, dtype, value)?;
    Ok(Tensor::from_storage(Storage::from_cpu(cpu, device)?, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answer() {
        // Known-answer vector of Random123 (philox4x32_10, counter and key all ones).
        let out = philox4x32([u32::MAX; 4], [u32::MAX; 2]);
        assert_eq!(out, [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
    }

    /// A draw long enough to be filled in parallel blocks is the stream in order: the
    /// same values as two shorter (serial) draws one after the other, and value `i` the
    /// Box–Muller transform of counter `i`.
    #[test]
    fn a_parallel_draw_is_the_serial_stream() {
        let n = 3 * 4096 + 17;
        let draw = |g: &mut Generator, n| {
            let t = g.randn(&[n], DType::F64, Device::Cpu).unwrap();
            t.to_vec_f64().unwrap()
        };
        let whole = draw(&mut Generator::new(3), n);
        let mut g = Generator::new(3);
        let mut halves = draw(&mut g, n / 2);
        halves.extend(draw(&mut g, n - n / 2));
        assert_eq!(whole, halves);
        for i in [0, 4095, 4096, 8191, 8192, n - 1] {
            let b = philox4x32([i as u32, 0, 0, 0], [3, 0]);
            let (u1, u2) = (1.0 - unit(b[0], b[1]), unit(b[2], b[3]));
            let want = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            assert_eq!(whole[i].to_bits(), want.to_bits(), "value {i}");
        }
    }

    #[test]
    fn restoring_the_state_repeats_the_draw() {
        let mut g = Generator::new(7);
        let _ = g.randn(&[5], DType::F32, Device::Cpu).unwrap();
        let saved = g.state();
        let a = g
            .randn(&[9], DType::F64, Device::Cpu)
            .unwrap()
            .to_vec_f64()
            .unwrap();
        g.set_state(saved);
        let b = g
            .randn(&[9], DType::F64, Device::Cpu)
            .unwrap()
            .to_vec_f64()
            .unwrap();
        assert_eq!(a, b);
    }
}
