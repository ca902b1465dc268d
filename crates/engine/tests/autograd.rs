//! The autodiff machinery itself: accumulation, stop-gradients, no-grad scopes, graph
//! lifetime, variables updated in place, and reproducible random streams.

use twinflow_engine::{no_grad, DType, Device, Generator, Tensor};

fn var(values: &[f64]) -> Tensor {
    Tensor::from_slice(values, &[values.len()], Device::Cpu)
        .unwrap()
        .into_variable()
        .unwrap()
}

#[test]
fn gradients_accumulate_where_a_tensor_is_used_twice() {
    let x = var(&[1.0, -2.0, 3.0]);
    // f = Σ x·x + x  →  df/dx = 2x + 1
    let f = x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap();
    let g = f.backward().unwrap();
    assert_eq!(
        g.get(&x).unwrap().to_vec_f64().unwrap(),
        vec![3.0, -3.0, 7.0]
    );
}

#[test]
fn detach_stops_the_gradient() {
    let x = var(&[2.0, 5.0]);
    // f = Σ x · stop(x)  →  df/dx = stop(x) only
    let f = x.mul(&x.detach()).unwrap().sum_all().unwrap();
    let g = f.backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec_f64().unwrap(), vec![2.0, 5.0]);
}

#[test]
fn no_grad_scope_records_nothing() {
    let x = var(&[1.0]);
    let y = no_grad(|| x.exp().unwrap());
    assert!(!y.requires_grad());
    assert!(y.sum_all().unwrap().backward().is_err());
    // Recording resumes after the scope.
    assert!(x.exp().unwrap().requires_grad());
}

#[test]
fn a_second_backward_through_a_freed_graph_is_an_error() {
    let x = var(&[1.0, 2.0]);
    let f = x.square().unwrap().sum_all().unwrap();
    f.backward().unwrap();
    let err = f.backward().unwrap_err().to_string();
    assert!(err.contains("already freed"), "{err}");
}

#[test]
fn backward_of_a_non_scalar_needs_an_output_gradient() {
    let x = var(&[1.0, 2.0]);
    let y = x.mul_scalar(3.0).unwrap();
    assert!(y.backward().is_err());
    let g = y.backward_with(&Tensor::from_slice(&[1.0, 10.0], &[2], Device::Cpu).unwrap());
    assert_eq!(
        g.unwrap().get(&x).unwrap().to_vec_f64().unwrap(),
        vec![3.0, 30.0]
    );
}

#[test]
fn only_variables_keep_gradients() {
    let x = var(&[1.0, 2.0]);
    let hidden = x.exp().unwrap();
    let g = hidden.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.len(), 1);
    assert!(g.get(&hidden).is_none());
}

#[test]
fn assign_updates_a_variable_in_place_for_every_view() {
    let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2], Device::Cpu)
        .unwrap()
        .into_variable()
        .unwrap();
    let view = w.t().unwrap();
    let update = Tensor::from_slice(&[10.0f32, 20.0, 30.0, 40.0], &[2, 2], Device::Cpu).unwrap();
    w.assign(&update).unwrap();
    assert_eq!(view.to_vec::<f32>().unwrap(), vec![10.0, 30.0, 20.0, 40.0]);
    // Assigning a transposed view of itself reads before writing.
    w.assign(&w.t().unwrap()).unwrap();
    assert_eq!(w.to_vec::<f32>().unwrap(), vec![10.0, 30.0, 20.0, 40.0]);
    assert!(w
        .assign(&Tensor::zeros(&[3], DType::F32, Device::Cpu).unwrap())
        .is_err());
}

#[test]
fn a_deep_chain_backpropagates_and_drops_without_overflowing_the_stack() {
    let x = var(&[0.5]);
    let mut y = x.clone();
    for _ in 0..50_000 {
        y = y.mul_scalar(1.0).unwrap();
    }
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec_f64().unwrap(), vec![1.0]);
    // A deep graph dropped without a backward is freed iteratively too.
    let mut z = x.clone();
    for _ in 0..50_000 {
        z = z.add_scalar(0.0).unwrap();
    }
    drop(z);
}

#[test]
fn gradients_flow_back_through_dtype_casts() {
    let x = var(&[1.5, -0.5]);
    let f = x
        .to_dtype(DType::BF16)
        .unwrap()
        .square()
        .unwrap()
        .sum_all()
        .unwrap();
    let g = f.backward().unwrap();
    let gx = g.get(&x).unwrap();
    assert_eq!(gx.dtype(), DType::F64);
    assert_eq!(gx.to_vec_f64().unwrap(), vec![3.0, -1.0]);
}

#[test]
fn generator_state_round_trips_and_seeds_differ() {
    let mut a = Generator::new(42);
    let first = a
        .randn(&[16], DType::F32, Device::Cpu)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let mut b = Generator::new(42);
    assert_eq!(
        b.randn(&[16], DType::F32, Device::Cpu)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        first
    );
    let mut c = Generator::new(43);
    assert_ne!(
        c.randn(&[16], DType::F32, Device::Cpu)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        first
    );
    let u = a
        .uniform(&[1000], -1.0, 2.0, DType::F64, Device::Cpu)
        .unwrap()
        .to_vec_f64()
        .unwrap();
    assert!(u.iter().all(|&v| (-1.0..2.0).contains(&v)));
}

#[test]
fn normal_draws_have_the_requested_moments() {
    let x = Generator::new(3)
        .normal(&[100_000], 1.5, 2.0, DType::F64, Device::Cpu)
        .unwrap();
    let mean = x.mean_all().unwrap().item().unwrap();
    let std = x.var(&[0], 1, false).unwrap().item().unwrap().sqrt();
    assert!((mean - 1.5).abs() < 0.03, "mean {mean}");
    assert!((std - 2.0).abs() < 0.03, "std {std}");
}

#[test]
fn permutation_is_a_permutation() {
    let mut p = Generator::new(9).permutation(1000);
    p.sort_unstable();
    assert_eq!(p, (0..1000).collect::<Vec<i64>>());
}

#[test]
fn backward_refuses_inputs_modified_in_place_after_the_forward() {
    let x = var(&[5.0, 6.0, 7.0]);
    let f = x.square().unwrap().sum_all().unwrap();
    x.assign(&Tensor::zeros(&[3], DType::F64, Device::Cpu).unwrap())
        .unwrap();
    let err = f.backward().unwrap_err().to_string();
    assert!(err.contains("modified in place"), "{err}");
}

#[test]
fn casting_to_integers_carries_no_gradient() {
    let x = var(&[1.0, 2.0]);
    assert!(!x.to_dtype(DType::I64).unwrap().requires_grad());
}
