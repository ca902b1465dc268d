//! The per-op profile (`engine::profile`) of one DiT training step under bf16 autocast:
//! which backend ops run, how often, on how many elements. The model is the DiT-S/2 of
//! the GPU benchmark (dim 384, depth 12, 6 heads, 32×32×3 images, patch 2); the batch is
//! small so that it runs on a CPU (bf16 emulated there), and the call counts do not
//! depend on it.
//!
//! Run: `cargo run --release --example profile_step -- [batch]` (default 4).

use twinflow::engine::profile::profile;
use twinflow::engine::{autocast, DType, Device, Generator, Result, Tensor};
use twinflow::nn::{
    Adam, AdamConfig, Dit, DitConfig, Module, Optimizer, ParamBuilder, VelocityModel,
};

fn main() -> Result<()> {
    let batch = match std::env::args().nth(1) {
        Some(b) => b.parse().map_err(|_| {
            twinflow::engine::Error::invalid("profile_step", format!("batch {b:?} is not a count"))
        })?,
        None => 4,
    };
    let cfg = DitConfig::s2(32, 3);
    let model = Dit::new(&mut ParamBuilder::new(0), cfg)?;
    let adam = AdamConfig {
        lr: 1e-4,
        ..AdamConfig::adamw()
    };
    let mut opt = Adam::new(model.named_params(), adam)?;
    let mut g = Generator::new(1);
    let x = g.randn(&[batch, 3 * 32 * 32], DType::F32, Device::Cpu)?;
    let t = g.uniform(&[batch], 0.0, 1.0, DType::F32, Device::Cpu)?;
    let tt = g
        .uniform(&[batch], 0.0, 1.0, DType::F32, Device::Cpu)?
        .mul(&t)?;
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
    let labels = Tensor::from_vec(labels, &[batch], Device::Cpu)?;
    let mut step = || -> Result<()> {
        let loss = autocast(DType::BF16, || {
            model.velocity(&x, &t, &tt, &labels)?.mse(&x)
        })??;
        opt.step(&loss.backward()?)
    };
    step()?; // the first step creates the optimizer state
    let (done, report) = profile(false, step);
    done?;
    println!("{}", report.table());
    Ok(())
}
