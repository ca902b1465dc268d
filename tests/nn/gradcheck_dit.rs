//! Finite-difference gradient checks (f64) of whole modules: a DiT block with respect to
//! its inputs and every parameter, a whole tiny DiT and the MLP velocity network with
//! respect to every parameter (and the data), and a pre-norm transformer block.
//!
//! `gradcheck` perturbs only the tensors it is given, so the parameters are passed as
//! inputs and the closure rebuilds the model around them ([`with_params`]). Every
//! parameter is first re-filled with small random values: with the zero initialisation
//! of adaLN-Zero gates and output layers most gradients would vanish trivially.
//! The times stay constants: `sincos` multiplies them by up to 1000, which finite
//! differences cannot follow at a useful step size.

use twinflow::engine::gradcheck::{gradcheck, GradcheckOptions, GradcheckReport};
use twinflow::engine::{Device, Result, Tensor};
use twinflow::nn::{
    Dit, DitBlock, DitConfig, Forward, LinearConfig, MlpVelocity, MlpVelocityConfig, Module,
    TransformerBlock, TransformerBlockConfig, VelocityModel,
};

use crate::common::{f64_builder, labels, randn, randomize};

fn times(values: &[f64]) -> Tensor {
    Tensor::from_slice(values, &[values.len()], Device::Cpu).expect("times")
}

/// The parameters in visiting order.
fn params(m: &dyn Module) -> Vec<Tensor> {
    m.named_params().into_iter().map(|(_, t)| t).collect()
}

/// A copy of `m` whose parameters are `values`, in visiting order.
fn with_params<M: Module + Clone>(m: &M, values: &[Tensor]) -> M {
    let mut m = m.clone();
    let mut values = values.iter();
    m.visit_params_mut(&mut |name, p| {
        *p = values
            .next()
            .unwrap_or_else(|| panic!("no value for {name}"))
            .clone();
    });
    assert!(values.next().is_none(), "more values than parameters");
    m
}

/// `[leading..., params...]` as one input list.
fn inputs(leading: &[Tensor], m: &dyn Module) -> Vec<Tensor> {
    leading.iter().cloned().chain(params(m)).collect()
}

/// Fails unless every input gets a gradient with a non-zero element through `f`: a
/// gradient check of vanishing gradients (a dead gate, a parameter the closure does not
/// use) would pass trivially.
fn assert_live_gradients(f: &impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    let vars: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.detach().into_variable().expect("variable"))
        .collect();
    let grads = f(&vars)
        .and_then(|y| y.square()?.sum_all()?.backward())
        .expect("backward");
    for (i, v) in vars.iter().enumerate() {
        let g = grads
            .get(v)
            .unwrap_or_else(|| panic!("input {i}: no gradient"));
        let live = g.to_vec_f64().expect("grad").iter().any(|&x| x != 0.0);
        assert!(live, "input {i} (shape {:?}): all-zero gradient", v.shape());
    }
}

fn check(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    expected: usize,
) -> GradcheckReport {
    assert_live_gradients(&f, inputs);
    let report = gradcheck(f, inputs, &GradcheckOptions::default()).expect("gradcheck");
    assert_eq!(report.checked, expected);
    report
}

#[test]
fn dit_block_gradients_wrt_inputs_and_params() -> Result<()> {
    let (b, t, d, heads) = (2, 4, 8, 2);
    let mut block = DitBlock::new(&mut f64_builder(0), d, heads, 4)?;
    randomize(&mut block, 1, 0.3);
    let xs = inputs(&[randn(2, &[b, t, d]), randn(3, &[b, d])], &block);
    let n = block.param_count() + b * t * d + b * d;
    check(
        |xs| with_params(&block, &xs[2..]).forward(&xs[0], &xs[1]),
        &xs,
        n,
    );
    Ok(())
}

#[test]
fn whole_dit_gradients_wrt_data_and_params() -> Result<()> {
    let cfg = DitConfig {
        image_size: 4,
        channels: 1,
        patch: 2,
        dim: 8,
        depth: 1,
        heads: 2,
        mlp_ratio: 4,
        num_classes: 3,
        label_dropout: 0.0,
        ..DitConfig::default()
    };
    let mut dit = Dit::new(&mut f64_builder(0), cfg)?;
    randomize(&mut dit, 1, 0.3);
    let (t, tt, y) = (times(&[0.7, -0.4]), times(&[0.2, -0.4]), labels(&[2, 3]));
    let xs = inputs(&[randn(2, &[2, 16])], &dit);
    check(
        |xs| with_params(&dit, &xs[1..]).velocity(&xs[0], &t, &tt, &y),
        &xs,
        dit.param_count() + 32,
    );
    Ok(())
}

#[test]
fn mlp_velocity_gradients_wrt_data_and_params() -> Result<()> {
    let cfg = MlpVelocityConfig {
        data_dim: 3,
        width: 8,
        depth: 2,
        emb_dim: 4,
        num_classes: 3,
        label_dropout: 0.0,
        time_gated_skip: true,
        ..MlpVelocityConfig::default()
    };
    let mut m = MlpVelocity::new(&mut f64_builder(0), cfg)?;
    randomize(&mut m, 1, 0.3);
    let (t, tt, y) = (times(&[1.0, -0.5]), times(&[0.0, -0.5]), labels(&[0, 3]));
    let xs = inputs(&[randn(2, &[2, 3])], &m);
    check(
        |xs| with_params(&m, &xs[1..]).velocity(&xs[0], &t, &tt, &y),
        &xs,
        m.param_count() + 6,
    );
    Ok(())
}

#[test]
fn transformer_block_gradients_wrt_input_and_params() -> Result<()> {
    let cfg = TransformerBlockConfig::new(8, 2);
    let mut block = TransformerBlock::new(&mut f64_builder(0), cfg, LinearConfig::default())?;
    randomize(&mut block, 1, 0.3);
    let xs = inputs(&[randn(2, &[2, 3, 8])], &block);
    check(
        |xs| with_params(&block, &xs[1..]).forward(&xs[0]),
        &xs,
        block.param_count() + 48,
    );
    Ok(())
}
