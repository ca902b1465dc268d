//! Fits a small MLP to y = sin(3x) on 256 points of [-1, 1] with the engine's autodiff
//! and plain gradient descent written inline.
//!
//! Run: `cargo run --release --example quickstart`

use twinflow::engine::{no_grad, DType, Device, Generator, Result, Tensor};

fn main() -> Result<()> {
    let (n, hidden, lr, steps) = (256, 32, 0.1, 2000);
    let (dt, dev) = (DType::F32, Device::Cpu);
    // Inputs [n, 1] evenly spaced in [-1, 1]; targets sin(3x).
    let x = Tensor::arange(n, dt, dev)?
        .affine(2.0 / (n - 1) as f64, -1.0)?
        .reshape(&[n, 1])?;
    let y = x.mul_scalar(3.0)?.sin()?;

    // Parameters of a 1 → 32 → 1 tanh MLP: trainable variables.
    let mut rng = Generator::new(0);
    let w1 = rng
        .normal(&[1, hidden], 0.0, 2.0, dt, dev)?
        .into_variable()?;
    let b1 = rng.normal(&[hidden], 0.0, 1.0, dt, dev)?.into_variable()?;
    let w2 = rng.normal(&[hidden, 1], 0.0, (1.0 / hidden as f64).sqrt(), dt, dev)?;
    let w2 = w2.into_variable()?;
    let b2 = Tensor::zeros(&[1], dt, dev)?.into_variable()?;
    let params = [&w1, &b1, &w2, &b2];
    let loss_fn = || {
        x.matmul(&w1)?
            .add(&b1)?
            .tanh()?
            .matmul(&w2)?
            .add(&b2)?
            .mse(&y)
    };

    for step in 0..steps {
        let loss = loss_fn()?;
        let grads = loss.backward()?;
        // SGD, in place; the update itself is not recorded in the graph.
        no_grad(|| -> Result<()> {
            for p in params {
                let g = grads.get(p).expect("every parameter reaches the loss");
                p.assign(&p.sub(&g.mul_scalar(lr)?)?)?;
            }
            Ok(())
        })?;
        if step % 200 == 0 {
            println!("step {step:>4}  loss {:.6}", loss.item()?);
        }
    }
    let final_loss = no_grad(loss_fn)?.item()?;
    println!("final      loss {final_loss:.6}");
    Ok(())
}
