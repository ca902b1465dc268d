//! Bad input gets an error that names the op and the shapes (or dtypes), never a panic.

use twinflow_engine::{
    gelu_mlp, qkv_attention, scaled_dot_product_attention, DType, Device, Tensor,
};

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, Device::Cpu).unwrap()
}

fn error_of(r: twinflow_engine::Result<Tensor>) -> String {
    r.expect_err("the op should refuse its input").to_string()
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not mention {p:?}");
    }
}

#[test]
fn matmul_shape_mismatch_names_both_shapes() {
    let msg = error_of(zeros(&[2, 3]).matmul(&zeros(&[4, 5])));
    assert_names(&msg, &["matmul", "[2, 3]", "[4, 5]"]);
    let msg = error_of(zeros(&[2, 2, 3]).matmul(&zeros(&[3, 3, 4])));
    assert_names(&msg, &["matmul", "[2, 2, 3]", "[3, 3, 4]"]);
    let msg = error_of(zeros(&[3]).matmul(&zeros(&[3, 4])));
    assert_names(&msg, &["matmul", "[3]"]);
}

#[test]
fn linear_shape_mismatch_names_the_shapes() {
    let msg = error_of(zeros(&[2, 3]).linear(&zeros(&[4, 5]), None));
    assert_names(&msg, &["linear", "[2, 3]", "[4, 5]"]);
    let msg = error_of(zeros(&[2, 3]).linear(&zeros(&[4, 3]), Some(&zeros(&[5]))));
    assert_names(&msg, &["linear", "[4, 3]", "[5]"]);
}

#[test]
fn broadcast_mismatch_names_both_shapes() {
    let msg = error_of(zeros(&[2, 3]).add(&zeros(&[4, 3])));
    assert_names(&msg, &["add", "[2, 3]", "[4, 3]"]);
    let msg = error_of(zeros(&[3]).broadcast_to(&[2, 4]));
    assert_names(&msg, &["broadcast_to", "[3]", "[2, 4]"]);
    let msg = error_of(zeros(&[2]).where_cond(&zeros(&[3]), &zeros(&[2])));
    assert_names(&msg, &["where_cond", "[2]", "[3]"]);
}

#[test]
fn cat_mismatch_names_every_shape() {
    let msg = error_of(Tensor::cat(
        &[&zeros(&[2, 3]), &zeros(&[2, 4]), &zeros(&[3, 3])],
        0,
    ));
    assert_names(&msg, &["cat", "[2, 3]", "[2, 4]", "[3, 3]"]);
    assert!(Tensor::cat(&[], 0).is_err());
    assert!(Tensor::cat(&[&zeros(&[2])], 1).is_err());
}

#[test]
fn attention_mismatch_names_the_shapes() {
    let q = zeros(&[1, 2, 4, 8]);
    let msg = error_of(scaled_dot_product_attention(
        &q,
        &zeros(&[1, 2, 4, 7]),
        &zeros(&[1, 2, 4, 8]),
        None,
        false,
    ));
    assert_names(&msg, &["attention", "[1, 2, 4, 8]", "[1, 2, 4, 7]"]);
    let msg = error_of(scaled_dot_product_attention(
        &q,
        &q,
        &zeros(&[1, 2, 5, 8]),
        None,
        false,
    ));
    assert_names(&msg, &["attention", "[1, 2, 5, 8]"]);
    assert!(scaled_dot_product_attention(&zeros(&[2, 4, 8]), &q, &q, None, false).is_err());
}

#[test]
fn qkv_attention_names_the_shape_and_heads() {
    let msg = error_of(qkv_attention(&zeros(&[1, 4, 10]), 2, None, false));
    assert_names(&msg, &["qkv_attention", "[1, 4, 10]", "heads = 2"]);
    let msg = error_of(qkv_attention(&zeros(&[4, 12]), 2, None, false));
    assert_names(&msg, &["qkv_attention", "[4, 12]"]);
    assert!(qkv_attention(&zeros(&[1, 4, 12]), 0, None, false).is_err());
}

#[test]
fn gelu_mlp_names_the_shapes() {
    let (x, w1, w2) = (zeros(&[4, 3]), zeros(&[5, 3]), zeros(&[2, 6]));
    let msg = error_of(gelu_mlp(&x, (&w1, None), (&w2, None)));
    assert_names(&msg, &["gelu_mlp", "[4, 3]", "[5, 3]", "[2, 6]"]);
    let b1 = zeros(&[4]);
    let msg = error_of(gelu_mlp(&x, (&w1, Some(&b1)), (&zeros(&[2, 5]), None)));
    assert_names(&msg, &["gelu_mlp", "[4]"]);
}

#[test]
fn dtype_mismatch_names_the_dtypes() {
    let a = zeros(&[2]);
    let b = Tensor::zeros(&[2], DType::F64, Device::Cpu).unwrap();
    let msg = error_of(a.add(&b));
    assert_names(&msg, &["add", "f32", "f64"]);
    let ids = Tensor::from_vec(vec![0i64, 1], &[2], Device::Cpu).unwrap();
    assert_names(&error_of(ids.exp()), &["exp", "i64"]);
    assert_names(&error_of(a.index_select(&a, 0)), &["index_select", "i64"]);
}

#[test]
fn bad_dims_and_indices_are_errors() {
    let x = zeros(&[2, 3]);
    assert_names(&error_of(x.sum(&[2], false)), &["sum", "dim 2", "[2, 3]"]);
    assert_names(&error_of(x.transpose(0, -3)), &["transpose", "-3"]);
    assert!(x.narrow(1, 2, 2).is_err());
    assert!(x.squeeze(0).is_err());
    assert!(x.reshape(&[4]).is_err());
    assert!(x.permute(&[0, 0]).is_err());
    assert!(x.chunk(0, 0).is_err());
    let ids = Tensor::from_vec(vec![0i64, 5], &[2], Device::Cpu).unwrap();
    assert_names(
        &error_of(x.index_select(&ids, 1)),
        &["index_select", "index 5", "size 3"],
    );
    let neg = Tensor::from_vec(vec![-1i64, 0], &[2, 1], Device::Cpu).unwrap();
    assert_names(&error_of(x.gather(&neg, 1)), &["gather", "index -1"]);
    let labels = Tensor::from_vec(vec![0i64, 1, 2], &[3], Device::Cpu).unwrap();
    assert_names(
        &error_of(x.cross_entropy(&labels)),
        &["cross_entropy", "[2, 3]", "[3]"],
    );
    assert!(x.var(&[0, 1], 6, false).is_err());
    assert!(x.layer_norm(Some(&zeros(&[2])), None, 1e-5).is_err());
}

#[test]
fn a_norm_parameter_that_does_not_fit_is_named() {
    let x = zeros(&[2, 3, 4]);
    // Per group of rows ([B, 1, D]) and per row fit; per token across the batch does not.
    assert!(x.layer_norm(Some(&zeros(&[2, 1, 4])), None, 1e-5).is_ok());
    assert!(x.layer_norm(None, Some(&zeros(&[2, 3, 4])), 1e-5).is_ok());
    let e = error_of(x.layer_norm(Some(&zeros(&[3, 4])), None, 1e-5));
    assert_names(&e, &["layer_norm", "[3, 4]", "[2, 3, 4]", "[2, 1, 4]"]);
    let e = error_of(x.rms_norm(Some(&zeros(&[2, 1, 5])), 1e-5));
    assert_names(&e, &["rms_norm", "[2, 1, 5]"]);
}

#[test]
fn from_vec_with_the_wrong_length_is_an_error() {
    let r = Tensor::from_vec(vec![1.0f32; 5], &[2, 3], Device::Cpu);
    assert_names(&error_of(r), &["from_vec", "5", "[2, 3]"]);
    assert!(zeros(&[2, 3]).to_vec::<f64>().is_err());
    assert!(zeros(&[2]).item().is_err());
}

#[test]
fn ema_update_refuses_what_it_cannot_update_in_place() {
    let avg = zeros(&[4, 3]);
    let online = zeros(&[4, 3]);
    let err = |r: twinflow_engine::Result<()>| r.expect_err("refused").to_string();
    let msg = err(avg.ema_update(&zeros(&[3, 4]), 0.9));
    assert_names(&msg, &["ema_update", "[4, 3]", "[3, 4]"]);
    let msg = err(avg.t().unwrap().ema_update(&online.t().unwrap(), 0.9));
    assert_names(&msg, &["ema_update", "contiguous"]);
    let msg = err(avg.ema_update(&avg.reshape(&[4, 3]).unwrap(), 0.9));
    assert_names(&msg, &["ema_update", "share storage"]);
    let f64_avg = Tensor::zeros(&[4, 3], DType::F64, Device::Cpu).unwrap();
    assert_names(
        &err(f64_avg.ema_update(&online, 0.9)),
        &["ema_update", "f64"],
    );
    let labels = Tensor::zeros(&[4, 3], DType::I64, Device::Cpu).unwrap();
    assert_names(&err(avg.ema_update(&labels, 0.9)), &["ema_update"]);
}
