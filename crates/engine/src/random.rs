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

    /// Four random words for each of the next `n` counters.
    fn next_blocks(&mut self, n: usize) -> impl Iterator<Item = [u32; 4]> {
        let GeneratorState { seed, offset } = self.state;
        // The counter wraps like Philox's own 64-bit counter would: a state restored
        // from a file may hold any offset.
        self.state.offset = offset.wrapping_add(n as u64);
        let key = [seed as u32, (seed >> 32) as u32];
        (0..n as u64).map(move |i| {
            let c = offset.wrapping_add(i);
            philox4x32([c as u32, (c >> 32) as u32, 0, 0], key)
        })
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
        let values = self
            .next_blocks(n)
            .map(|b| lo + (hi - lo) * unit(b[0], b[1]));
        from_values(values, shape, dtype, device)
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
        let values = self.next_blocks(n).map(|b| {
            // 1 − u lies in (0, 1], so the logarithm is finite.
            let (u1, u2) = (1.0 - unit(b[0], b[1]), unit(b[2], b[3]));
            mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        });
        from_values(values, shape, dtype, device)
    }

    /// Standard normal values (mean 0, std 1).
    pub fn randn(&mut self, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        self.normal(shape, 0.0, 1.0, dtype, device)
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates), as i64.
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut p: Vec<i64> = (0..n as i64).collect();
        let draws: Vec<[u32; 4]> = self.next_blocks(n).collect();
        for i in (1..n).rev() {
            let j = (unit(draws[i][0], draws[i][1]) * (i + 1) as f64) as usize;
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

fn from_values(
    values: impl Iterator<Item = f64>,
    shape: &[usize],
    dtype: DType,
    device: Device,
) -> Result<Tensor> {
    let cpu = CpuStorage::from_f64_iter(values, dtype)?;
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
