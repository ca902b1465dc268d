//! The module library's layers and models: shapes, parameter names and counts (the DiT's
//! must be those of the PyTorch reference), patch order against the reference's index
//! formula, sinusoidal time features against their formula, the run-time randomness
//! (dropout, label dropout) and its reproducibility, train/eval mode and freezing.

use twinflow::engine::{scaled_dot_product_attention, DType, Device, Result, Tensor};
use twinflow::nn::{
    sincos, Classifier, ClassifierConfig, Dit, DitBlock, DitConfig, Dropout, Embedding, Forward,
    Init, LabelEmbedding, LayerNorm, Linear, LinearConfig, MlpVelocity, MlpVelocityConfig, Module,
    ParamBuilder, PatchGrid, RmsNorm, SelfAttention, SwiGlu, TransformerBlock,
    TransformerBlockConfig, VelocityModel, DEFAULT_TIME_SCALE,
};

use crate::common::{f64_builder, labels, randn_as, randomize};

/// A tensor of `values` of shape `[values.len()]` and `dtype`.
fn vector(values: &[f64], dtype: DType) -> Tensor {
    Tensor::from_f64s(values, &[values.len()], dtype, Device::Cpu).expect("vector")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn names(m: &dyn Module) -> Vec<String> {
    m.named_params().into_iter().map(|(n, _)| n).collect()
}

fn shape_of(m: &dyn Module, name: &str) -> Vec<usize> {
    let (_, t) = m
        .named_params()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    t.shape().to_vec()
}

// ---------------------------------------------------------------- DiT

#[test]
fn dit_default_matches_the_reference_parameters() -> Result<()> {
    let dit = Dit::new(&mut ParamBuilder::new(0), DitConfig::default())?;
    assert_eq!(dit.param_count(), 1_298_320);
    let names = names(&dit);
    // The reference's state_dict order: own parameter first, then children.
    assert_eq!(
        names[..4],
        ["pos", "patch.weight", "patch.bias", "temb.0.weight"]
    );
    assert_eq!(names.len(), 1 + 2 + 4 + 4 + 1 + 4 * 10 + 2 + 2);
    for n in [
        "temb.2.bias",
        "ttemb.0.weight",
        "ttemb.2.weight",
        "yemb.weight",
        "blocks.0.qkv.weight",
        "blocks.0.proj.bias",
        "blocks.2.fc1.weight",
        "blocks.3.fc2.bias",
        "blocks.3.ada.weight",
        "adaf.bias",
        "out.weight",
        "out.bias",
    ] {
        assert!(names.iter().any(|x| x == n), "missing {n}");
    }
    assert_eq!(shape_of(&dit, "pos"), [1, 49, 128]);
    assert_eq!(shape_of(&dit, "patch.weight"), [128, 16]);
    assert_eq!(shape_of(&dit, "yemb.weight"), [11, 128]);
    assert_eq!(shape_of(&dit, "blocks.1.qkv.weight"), [384, 128]);
    assert_eq!(shape_of(&dit, "blocks.1.ada.weight"), [768, 128]);
    assert_eq!(shape_of(&dit, "out.weight"), [16, 128]);
    assert_eq!(dit.null_label(), 10);
    Ok(())
}

#[test]
fn dit_starts_at_zero_and_predicts_image_shaped_velocities() -> Result<()> {
    let mut dit = Dit::new(&mut ParamBuilder::new(1), DitConfig::default())?;
    let (x, t, tt) = (
        randn_as(2, &[3, 784], DType::F32),
        vector(&[0.9, -0.4, 1.0], DType::F32),
        vector(&[0.2, -0.4, 0.0], DType::F32),
    );
    let y = labels(&[0, 9, 10]);
    let v = dit.velocity(&x, &t, &tt, &y)?;
    assert_eq!(v.shape(), [3, 784]);
    // adaLN-Zero: the output layer is zero, so is the first prediction.
    assert!(v.to_vec::<f32>()?.iter().all(|&a| a == 0.0));
    randomize(&mut dit, 3, 0.05);
    let v = dit.velocity(&x, &t, &tt, &y)?;
    assert!(v
        .to_vec::<f32>()?
        .iter()
        .all(|a| a.is_finite() && *a != 0.0));
    Ok(())
}

#[test]
fn dit_generalises_to_colour_images() -> Result<()> {
    let cfg = DitConfig {
        image_size: 8,
        channels: 3,
        patch: 2,
        dim: 16,
        depth: 2,
        heads: 2,
        mlp_ratio: 2,
        num_classes: 4,
        label_dropout: 0.1,
        ..DitConfig::default()
    };
    let dit = Dit::new(&mut ParamBuilder::new(0), cfg)?;
    assert_eq!(shape_of(&dit, "patch.weight"), [16, 12]);
    assert_eq!(shape_of(&dit, "pos"), [1, 16, 16]);
    let x = randn_as(1, &[2, 192], DType::F32);
    let t = vector(&[0.5, -0.5], DType::F32);
    let v = dit.velocity(&x, &t, &t, &labels(&[1, 4]))?;
    assert_eq!(v.shape(), [2, 192]);
    Ok(())
}

#[test]
fn dit_refuses_bad_inputs_and_configs() -> Result<()> {
    let dit = Dit::new(&mut ParamBuilder::new(0), DitConfig::default())?;
    let x = randn_as(0, &[2, 784], DType::F32);
    let t = vector(&[0.5, 0.1], DType::F32);
    let y = labels(&[1, 2]);
    assert!(dit.velocity(&x, &t, &t, &y).is_ok());
    let bad_x = randn_as(0, &[2, 783], DType::F32);
    assert!(dit.velocity(&bad_x, &t, &t, &y).is_err());
    assert!(dit
        .velocity(&x, &vector(&[0.5], DType::F32), &t, &y)
        .is_err());
    assert!(dit
        .velocity(&x, &vector(&[0.5, 0.1], DType::F64), &t, &y)
        .is_err());
    assert!(dit.velocity(&x, &t, &t, &labels(&[1, 11])).is_err());
    assert!(dit.velocity(&x, &t, &t, &labels(&[-1, 0])).is_err());
    assert!(dit.velocity(&x, &t, &t, &t).is_err());
    let bad = |cfg: DitConfig| Dit::new(&mut ParamBuilder::new(0), cfg).is_err();
    assert!(bad(DitConfig {
        patch: 5,
        ..DitConfig::default()
    }));
    assert!(bad(DitConfig {
        heads: 3,
        ..DitConfig::default()
    }));
    assert!(bad(DitConfig {
        label_dropout: 1.0,
        ..DitConfig::default()
    }));
    Ok(())
}

/// A DiT block written out literally in f64 (layer norm from mean and variance,
/// attention from matmul and softmax, heads sliced by hand) as in the reference.
fn literal_dit_block(b: &DitBlock, x: &Tensor, c: &Tensor, heads: usize) -> Result<Tensor> {
    let &[bs, t, d] = x.shape() else { panic!() };
    let dh = d / heads;
    let ln = |x: &Tensor| -> Result<Tensor> {
        let mu = x.mean(&[-1], true)?;
        let xc = x.sub(&mu)?;
        xc.div(&xc.square()?.mean(&[-1], true)?.add_scalar(1e-6)?.sqrt()?)
    };
    let lin = |l: &Linear, x: &Tensor| -> Result<Tensor> {
        x.matmul(&l.weight.t()?)?.add(l.bias.as_ref().unwrap())
    };
    let m = lin(&b.ada, &c.silu()?)?;
    let part = |i: usize| m.narrow(1, i * d, d).unwrap().unsqueeze(1).unwrap();
    let y = ln(x)?.mul(&part(1).add_scalar(1.0)?)?.add(&part(0))?;
    let qkv = lin(&b.attn.qkv, &y)?;
    let mut outs = Vec::new();
    for h in 0..heads {
        let q = qkv.narrow(2, h * dh, dh)?;
        let k = qkv.narrow(2, d + h * dh, dh)?;
        let v = qkv.narrow(2, 2 * d + h * dh, dh)?;
        let s = q.matmul(&k.t()?)?.mul_scalar(1.0 / (dh as f64).sqrt())?;
        outs.push(s.softmax()?.matmul(&v)?);
    }
    let att = Tensor::cat(&outs.iter().collect::<Vec<_>>(), 2)?;
    assert_eq!(att.shape(), [bs, t, d]);
    let x = x.add(&part(2).mul(&lin(&b.attn.proj, &att)?)?)?;
    let y = ln(&x)?.mul(&part(4).add_scalar(1.0)?)?.add(&part(3))?;
    let h = lin(&b.mlp.fc1, &y)?.gelu()?;
    x.add(&part(5).mul(&lin(&b.mlp.fc2, &h)?)?)
}

#[test]
fn dit_block_matches_the_reference_formulas() -> Result<()> {
    let mut block = DitBlock::new(&mut f64_builder(0), 12, 3, 4)?;
    randomize(&mut block, 1, 0.3);
    assert_eq!(
        names(&block),
        [
            "qkv.weight",
            "qkv.bias",
            "proj.weight",
            "proj.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "ada.weight",
            "ada.bias"
        ]
    );
    let x = randn_as(2, &[2, 5, 12], DType::F64);
    let c = randn_as(3, &[2, 12], DType::F64);
    let got = block.forward(&x, &c)?;
    let want = literal_dit_block(&block, &x, &c, 3)?;
    assert!(max_abs_diff(&got, &want) < 1e-12);
    Ok(())
}

// ---------------------------------------------------------------- layers

#[test]
fn layers_have_the_expected_shapes_and_names() -> Result<()> {
    let pb = &mut ParamBuilder::new(0);
    let lin = Linear::new(pb, 6, 4, LinearConfig::default())?;
    assert_eq!(
        lin.forward(&randn_as(0, &[2, 3, 6], DType::F32))?.shape(),
        [2, 3, 4]
    );

    let emb = Embedding::new(pb, 5, 3, Init::Normal(1.0))?;
    let ids = Tensor::from_vec(vec![0i64, 4, 2, 2, 1, 0], &[2, 3], Device::Cpu)?;
    let e = emb.forward(&ids)?;
    assert_eq!(e.shape(), [2, 3, 3]);
    let rows = emb.weight.to_vec::<f32>()?;
    assert_eq!(e.to_vec::<f32>()?[3..6], rows[12..15]);
    assert!(emb.forward(&labels(&[5])).is_err());

    let sa = SelfAttention::new(pb, 8, 2, LinearConfig::default())?;
    assert_eq!(
        sa.forward(&randn_as(1, &[2, 5, 8], DType::F32))?.shape(),
        [2, 5, 8]
    );
    assert!(SelfAttention::new(pb, 8, 3, LinearConfig::default()).is_err());
    assert!(sa.forward(&randn_as(1, &[5, 8], DType::F32)).is_err());

    let sw = SwiGlu::new(pb, 8, 12, LinearConfig::default())?;
    assert_eq!(
        sw.forward(&randn_as(1, &[3, 8], DType::F32))?.shape(),
        [3, 8]
    );
    assert_eq!(names(&sw)[..3], ["gate.weight", "gate.bias", "up.weight"]);

    let tb = TransformerBlock::new(
        pb,
        TransformerBlockConfig::new(8, 2),
        LinearConfig::default(),
    )?;
    assert_eq!(
        tb.forward(&randn_as(2, &[2, 5, 8], DType::F32))?.shape(),
        [2, 5, 8]
    );
    let n = names(&tb);
    for want in [
        "ln1.weight",
        "attn.qkv.weight",
        "attn.proj.bias",
        "ln2.bias",
        "mlp.fc1.weight",
    ] {
        assert!(n.iter().any(|x| x == want), "missing {want}");
    }
    assert_eq!(
        tb.param_count(),
        4 * 8 + (8 * 24 + 24) + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8)
    );
    Ok(())
}

#[test]
fn self_attention_splits_heads_like_pytorch() -> Result<()> {
    let (b, t, d, h) = (2, 5, 12, 3);
    let sa = SelfAttention::new(&mut f64_builder(4), d, h, LinearConfig::default())?;
    let x = randn_as(5, &[b, t, d], DType::F64);
    // The reference: qkv(x).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4), written with a
    // contiguous copy so that the engine's strided path is compared with a plain one.
    let qkv = sa.qkv.forward(&x)?.reshape(&[b, t, 3, h, d / h])?;
    let qkv = qkv.permute(&[2, 0, 3, 1, 4])?.contiguous()?;
    let [q, k, v] = [0, 1, 2].map(|i| qkv.narrow(0, i, 1).unwrap().squeeze(0).unwrap());
    let y = scaled_dot_product_attention(&q, &k, &v, None, false)?;
    let want = sa
        .proj
        .forward(&y.transpose(1, 2)?.contiguous()?.reshape(&[b, t, d])?)?;
    assert!(max_abs_diff(&sa.forward(&x)?, &want) < 1e-12);
    Ok(())
}

#[test]
fn norms_normalise_the_last_dim() -> Result<()> {
    let x = randn_as(0, &[3, 16], DType::F64).affine(2.0, 5.0)?;
    let ln = LayerNorm::plain(1e-6).forward(&x)?;
    for row in ln.to_vec_f64()?.chunks(16) {
        let mean = row.iter().sum::<f64>() / 16.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 16.0;
        assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-5);
    }
    let pb = &mut f64_builder(0);
    let affine = LayerNorm::affine(pb, 16, 1e-6)?;
    assert!(max_abs_diff(&affine.forward(&x)?, &ln) < 1e-12);
    assert_eq!(names(&affine), ["weight", "bias"]);
    let rms = RmsNorm::plain(1e-8).forward(&x)?;
    for row in rms.to_vec_f64()?.chunks(16) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / 16.0;
        assert!((ms - 1.0).abs() < 1e-6);
    }
    assert_eq!(names(&RmsNorm::weighted(pb, 16, 1e-6)?), ["weight"]);
    assert!(names(&RmsNorm::plain(1e-6)).is_empty());
    Ok(())
}

// ---------------------------------------------------------------- patches

#[test]
fn patchify_follows_the_reference_index_formula_for_one_channel() -> Result<()> {
    let (b, size, p) = (2, 28, 4);
    let g = size / p;
    let grid = PatchGrid::new(1, size, p)?;
    let data: Vec<f64> = (0..b * size * size).map(|i| i as f64).collect();
    let x = Tensor::from_vec(data.clone(), &[b, size * size], Device::Cpu)?;
    let tokens = grid.patchify(&x)?;
    assert_eq!(tokens.shape(), [b, 49, 16]);
    let tok = tokens.to_vec::<f64>()?;
    // x.view(B, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(B, g*g, p*p)
    for n in 0..b {
        for (i, j, u, v) in (0..g).flat_map(|i| {
            (0..g).flat_map(move |j| (0..p).flat_map(move |u| (0..p).map(move |v| (i, j, u, v))))
        }) {
            let got = tok[(n * g * g + i * g + j) * p * p + u * p + v];
            let want = data[n * size * size + (i * p + u) * size + j * p + v];
            assert_eq!(got, want);
        }
    }
    assert_eq!(grid.unpatchify(&tokens)?.to_vec::<f64>()?, data);
    Ok(())
}

#[test]
fn patchify_is_channel_major_inside_a_token_and_round_trips() -> Result<()> {
    let (b, c, size, p) = (2, 3, 6, 2);
    let g = size / p;
    let grid = PatchGrid::new(c, size, p)?;
    assert_eq!(
        (grid.tokens(), grid.token_dim(), grid.image_dim()),
        (9, 12, 108)
    );
    let data: Vec<f64> = (0..b * c * size * size).map(|i| i as f64).collect();
    let x = Tensor::from_vec(data.clone(), &[b, c * size * size], Device::Cpu)?;
    let tokens = grid.patchify(&x)?;
    let tok = tokens.to_vec::<f64>()?;
    let (i, j, ch, u, v) = (1, 2, 2, 1, 0);
    let got = tok[(g * g + i * g + j) * c * p * p + ch * p * p + u * p + v];
    let want = data[c * size * size + ch * size * size + (i * p + u) * size + j * p + v];
    assert_eq!(got, want);
    assert_eq!(grid.unpatchify(&tokens)?.to_vec::<f64>()?, data);
    assert!(grid.patchify(&tokens).is_err());
    assert!(grid.unpatchify(&x).is_err());
    assert!(PatchGrid::new(1, 28, 5).is_err());
    Ok(())
}

// ---------------------------------------------------------------- time features

#[test]
fn sincos_matches_its_formula_and_keeps_the_sign() -> Result<()> {
    let ts = [-0.7, -0.001, 0.0, 0.001, 0.3, 1.0];
    let dim = 16;
    let half = dim / 2;
    let e = sincos(&vector(&ts, DType::F64), dim, DEFAULT_TIME_SCALE)?;
    assert_eq!(e.shape(), [6, dim]);
    let e = e.to_vec_f64()?;
    for (r, &t) in ts.iter().enumerate() {
        for i in 0..half {
            let a = t * (-(10000f64.ln()) * i as f64 / half as f64).exp() * 1000.0;
            assert!((e[r * dim + i] - a.cos()).abs() < 1e-12);
            assert!((e[r * dim + half + i] - a.sin()).abs() < 1e-12);
        }
    }
    // −t and t: equal cosines, opposite (non-zero) sines.
    let (neg, pos) = (&e[3 * dim..4 * dim], &e[dim..2 * dim]);
    assert_eq!(neg[..half], pos[..half]);
    for i in 0..half {
        assert_eq!(neg[half + i], -pos[half + i]);
    }
    assert!(pos[half] != 0.0);
    let e32 = sincos(&vector(&ts, DType::F32), dim, DEFAULT_TIME_SCALE)?;
    assert_eq!(e32.dtype(), DType::F32);
    let e64 = Tensor::from_vec(e, &[6, dim], Device::Cpu)?;
    assert!(max_abs_diff(&e32, &e64) < 1e-3);
    let t16 = vector(&ts, DType::BF16);
    let e16 = sincos(&t16, dim, DEFAULT_TIME_SCALE)?;
    assert_eq!(e16.dtype(), DType::BF16);
    let e16_in_f32 = sincos(&t16.to_dtype(DType::F32)?, dim, DEFAULT_TIME_SCALE)?;
    assert!(
        max_abs_diff(&e16, &e16_in_f32) < 4e-3,
        "embedded in f32, rounded once"
    );
    assert!(sincos(&vector(&ts, DType::F64), 7, DEFAULT_TIME_SCALE).is_err());
    // Another scale is the same features of rescaled times (MeanFlow's scale 1).
    let scaled: Vec<f64> = ts.iter().map(|t| t / DEFAULT_TIME_SCALE).collect();
    let unit = sincos(&vector(&ts, DType::F64), dim, 1.0)?;
    let same = sincos(&vector(&scaled, DType::F64), dim, DEFAULT_TIME_SCALE)?;
    assert!(max_abs_diff(&unit, &same) < 1e-12);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let cfg = MlpVelocityConfig {
            time_scale: bad,
            ..MlpVelocityConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("time_scale"), "{e}");
    }
    Ok(())
}

// ---------------------------------------------------------------- randomness and modes

#[test]
fn label_dropout_replaces_labels_at_rate_p_in_train_mode_only() -> Result<()> {
    let pb = &mut f64_builder(0);
    let mut emb = LabelEmbedding::new(pb, 10, 4, 0.3, Init::Normal(1.0))?;
    assert_eq!(emb.null_label(), 10);
    let n = 4000;
    let y = labels(&vec![3; n]);
    let null_row = emb.table.weight.narrow(0, 10, 1)?.to_vec_f64()?;
    let null_share = |e: &Tensor| {
        let v = e.to_vec_f64().unwrap();
        v.chunks(4).filter(|r| *r == null_row.as_slice()).count() as f64 / n as f64
    };
    let rate = null_share(&emb.forward(&y)?);
    assert!((rate - 0.3).abs() < 0.03, "rate {rate}");
    emb.set_training(false);
    assert_eq!(null_share(&emb.forward(&y)?), 0.0);
    // An explicit null label is looked up as such.
    assert_eq!(null_share(&emb.forward(&labels(&vec![10; n]))?), 1.0);
    assert!(emb.forward(&vector(&[1.0], DType::F64)).is_err());
    assert!(LabelEmbedding::new(pb, 10, 4, 1.0, Init::Zeros).is_err());
    Ok(())
}

#[test]
fn dropout_scales_survivors_and_repeats_masks_after_restoring_the_rng() -> Result<()> {
    let pb = ParamBuilder::new(0);
    let mut drop = Dropout::new(&pb, 0.25)?;
    let x = Tensor::ones(&[100, 100], DType::F32, Device::Cpu)?;
    let rng = &pb.forward_rng;
    let saved = rng.state();
    let a = drop.forward(&x)?.to_vec::<f32>()?;
    let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
    assert!((zeros - 0.25).abs() < 0.02, "dropped {zeros}");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let b = drop.forward(&x)?.to_vec::<f32>()?;
    assert_ne!(a, b);
    rng.set_state(saved);
    assert_eq!(drop.forward(&x)?.to_vec::<f32>()?, a);
    drop.set_training(false);
    assert!(!drop.is_training());
    assert_eq!(drop.forward(&x)?.to_vec::<f32>()?, x.to_vec::<f32>()?);
    assert!(Dropout::new(&pb, 1.0).is_err());
    assert!(Dropout::new(&pb, -0.1).is_err());
    Ok(())
}

fn tiny_mlp_velocity(label_dropout: f64) -> Result<MlpVelocity> {
    let cfg = MlpVelocityConfig {
        data_dim: 4,
        width: 16,
        depth: 2,
        emb_dim: 6,
        num_classes: 3,
        label_dropout,
        time_gated_skip: false,
        ..MlpVelocityConfig::default()
    };
    MlpVelocity::new(&mut ParamBuilder::new(7), cfg)
}

#[test]
fn set_training_reaches_every_random_layer() -> Result<()> {
    let mut m = tiny_mlp_velocity(0.5)?;
    randomize(&mut m, 1, 0.5);
    let x = randn_as(0, &[16, 4], DType::F32);
    let t = Tensor::full(0.5, &[16], DType::F32, Device::Cpu)?;
    let y = labels(&[1; 16]);
    let run = |m: &MlpVelocity| m.velocity(&x, &t, &t, &y).unwrap().to_vec::<f32>().unwrap();
    assert_ne!(run(&m), run(&m), "train mode drops labels");
    let saved = m.forward_rng().state();
    let first = run(&m);
    m.forward_rng().set_state(saved);
    assert_eq!(run(&m), first, "restoring the stream repeats the drops");
    m.set_training(false);
    assert_eq!(run(&m), run(&m));

    let mut clf = Classifier::new(&mut ParamBuilder::new(0), &ClassifierConfig::default())?;
    let img = randn_as(1, &[4, 784], DType::F32);
    let logits = |c: &Classifier| c.forward(&img).unwrap().to_vec::<f32>().unwrap();
    assert_ne!(logits(&clf), logits(&clf));
    clf.set_training(false);
    assert_eq!(logits(&clf), logits(&clf));

    let cfg = DitConfig {
        label_dropout: 0.5,
        ..tiny_dit_config()
    };
    let mut dit = Dit::new(&mut ParamBuilder::new(0), cfg)?;
    randomize(&mut dit, 2, 0.3);
    let x = randn_as(0, &[16, 16], DType::F32);
    let run = |d: &Dit| d.velocity(&x, &t, &t, &y).unwrap().to_vec::<f32>().unwrap();
    assert_ne!(run(&dit), run(&dit));
    dit.set_training(false);
    assert_eq!(run(&dit), run(&dit));
    Ok(())
}

/// `velocity_stacked` against one `velocity` per input, each started from the same
/// saved stream state: the same values, and the stream left where one forward leaves
/// it. Half the labels are dropped (label dropout 0.5), so giving the second copy its
/// own draws instead of the first copy's fails the comparison.
fn check_stacked_matches_replayed<M: VelocityModel>(m: &M, dim: usize) -> Result<()> {
    let b = 16;
    let x = randn_as(3, &[b, dim], DType::F32);
    let (t, neg) = (
        Tensor::full(0.4, &[b], DType::F32, Device::Cpu)?,
        Tensor::full(-0.7, &[b], DType::F32, Device::Cpu)?,
    );
    let (y, y_null) = (labels(&[1; 16]), labels(&[3; 16]));
    let inputs = [
        (&x, &t, &t, &y),
        (&x, &neg, &t, &y_null),
        (&x, &t, &neg, &y),
    ];
    let rng = m.forward_rng();
    let saved = rng.state();
    let mut want = Vec::new();
    for &(x, t, tt, c) in &inputs {
        rng.set_state(saved);
        want.push(m.velocity(x, t, tt, c)?);
    }
    let after_one = rng.state();
    rng.set_state(saved);
    let got = m.velocity_stacked(&inputs)?;
    assert_eq!(got.len(), inputs.len());
    // Equal up to f32 rounding: small products may add in another order for a
    // larger batch.
    for (g, w) in got.iter().zip(&want) {
        let scale = w.to_vec_f64()?.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        assert!(
            max_abs_diff(g, w) <= 1e-5 * scale,
            "{} at scale {scale}",
            max_abs_diff(g, w)
        );
    }
    assert_eq!(
        rng.state(),
        after_one,
        "the stream advances as one forward does"
    );
    // The stacked copies really do share draws that differ between forwards.
    let again = m.velocity_stacked(&inputs)?;
    assert!(
        max_abs_diff(&again[0], &got[0]) > 1e-3,
        "label dropout draws anew"
    );

    let short = randn_as(4, &[b - 1, dim], DType::F32);
    let (t_short, y_short) = (t.narrow(0, 0, b - 1)?, y.narrow(0, 0, b - 1)?);
    let e = m
        .velocity_stacked(&[(&x, &t, &t, &y), (&short, &t_short, &t_short, &y_short)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("velocity_stacked") && e.contains("same batch size"),
        "{e}"
    );
    assert!(m.velocity_stacked(&[])?.is_empty());
    Ok(())
}

#[test]
fn velocity_stacked_matches_one_replayed_forward_per_input() -> Result<()> {
    let mut mlp = tiny_mlp_velocity(0.5)?;
    randomize(&mut mlp, 1, 0.5);
    check_stacked_matches_replayed(&mlp, 4)?;
    let cfg = DitConfig {
        label_dropout: 0.5,
        ..tiny_dit_config()
    };
    let mut dit = Dit::new(&mut ParamBuilder::new(0), cfg)?;
    randomize(&mut dit, 2, 0.3);
    check_stacked_matches_replayed(&dit, 16)
}

#[test]
fn stacked_dropout_repeats_one_mask_per_copy() -> Result<()> {
    let pb = ParamBuilder::new(0);
    let drop = Dropout::new(&pb, 0.5)?;
    let x = Tensor::ones(&[6, 50], DType::F32, Device::Cpu)?;
    let rng = &pb.forward_rng;
    let saved = rng.state();
    let one = drop.forward(&x.narrow(0, 0, 2)?)?.to_vec::<f32>()?;
    let after_one = rng.state();
    rng.set_state(saved);
    let three = rng.with_copies(3, || drop.forward(&x))?.to_vec::<f32>()?;
    assert_eq!(three, [one.clone(), one.clone(), one].concat());
    assert_eq!(rng.state(), after_one);
    // Back to one copy afterwards; a batch that does not split is an error.
    assert_ne!(drop.forward(&x)?.to_vec::<f32>()?, three);
    let e = rng
        .with_copies(4, || drop.forward(&x))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dropout") && e.contains("4 stacked copies"),
        "{e}"
    );
    Ok(())
}

fn tiny_dit_config() -> DitConfig {
    DitConfig {
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
    }
}

#[test]
fn frozen_parameters_get_no_gradient() -> Result<()> {
    let mut m = tiny_mlp_velocity(0.0)?;
    randomize(&mut m, 1, 0.5);
    let x = randn_as(0, &[5, 4], DType::F32);
    let t = Tensor::full(0.5, &[5], DType::F32, Device::Cpu)?;
    let y = labels(&[0, 1, 2, 3, 1]);
    let grads_of = |m: &MlpVelocity| -> Result<Vec<(String, bool)>> {
        let g = m
            .velocity(&x, &t, &t, &y)?
            .square()?
            .sum_all()?
            .backward()?;
        Ok(m.named_params()
            .into_iter()
            .map(|(n, p)| (n, g.get(&p).is_some()))
            .collect())
    };
    assert!(grads_of(&m)?.iter().all(|(_, has)| *has));
    m.yemb.freeze();
    m.blocks[1].freeze();
    for (name, has) in grads_of(&m)? {
        let frozen = name.starts_with("yemb.") || name.starts_with("blocks.1.");
        assert_eq!(has, !frozen, "{name}");
    }
    m.unfreeze()?;
    assert!(grads_of(&m)?.iter().all(|(_, has)| *has));
    Ok(())
}

// ---------------------------------------------------------------- models

/// Every model's `(name, shape)` list in `named_params()` order, as recorded in
/// `fixtures/param_names.txt` (one `== title` line per model, then `name [shape]` lines)
/// from the hand-written visitors before `impl_module!` replaced them. Checkpoints are
/// saved by these names and the parity fixtures load by them, so a change must be
/// deliberate: then regenerate the file.
#[test]
fn parameter_names_and_order_are_as_recorded() -> Result<()> {
    let pb = &mut ParamBuilder::new(0);
    let skip = MlpVelocityConfig {
        data_dim: 4,
        width: 8,
        depth: 2,
        emb_dim: 4,
        num_classes: 3,
        label_dropout: 0.0,
        time_gated_skip: true,
        ..MlpVelocityConfig::default()
    };
    let no_bias = LinearConfig {
        bias_init: None,
        ..LinearConfig::default()
    };
    let mut models: Vec<(&str, Box<dyn Module>)> = vec![
        (
            "Dit, DitConfig::default()",
            Box::new(Dit::new(pb, DitConfig::default())?),
        ),
        (
            "MlpVelocity, MlpVelocityConfig::default()",
            Box::new(MlpVelocity::new(pb, MlpVelocityConfig::default())?),
        ),
        (
            "MlpVelocity, depth 2, time-gated skip",
            Box::new(MlpVelocity::new(pb, skip)?),
        ),
        (
            "Classifier, ClassifierConfig::default()",
            Box::new(Classifier::new(pb, &ClassifierConfig::default())?),
        ),
        (
            "TransformerBlock",
            Box::new(TransformerBlock::new(
                pb,
                TransformerBlockConfig::new(8, 2),
                LinearConfig::default(),
            )?),
        ),
        (
            "SwiGlu",
            Box::new(SwiGlu::new(pb, 8, 12, LinearConfig::default())?),
        ),
        (
            "RmsNorm::weighted",
            Box::new(RmsNorm::weighted(pb, 8, 1e-6)?),
        ),
        ("LayerNorm::plain", Box::new(LayerNorm::plain(1e-6))),
        (
            "Linear without bias",
            Box::new(Linear::new(pb, 3, 2, no_bias)?),
        ),
    ];
    let mut listing = Vec::new();
    for (title, model) in &mut models {
        listing.push(format!("== {title}"));
        let named = model.named_params();
        listing.extend(named.iter().map(|(n, t)| format!("{n} {:?}", t.shape())));
        // The mutable visitor (freezing, EMA copies, checkpoint restores) must agree.
        let mut mutable = Vec::new();
        model.visit_params_mut(&mut |n, _| mutable.push(n.to_string()));
        assert!(named.iter().map(|(n, _)| n).eq(&mutable), "{title}");
    }
    let recorded: Vec<&str> = include_str!("../fixtures/param_names.txt")
        .lines()
        .collect();
    assert_eq!(listing, recorded);
    Ok(())
}

#[test]
fn mlp_velocity_has_the_documented_layout() -> Result<()> {
    let m = MlpVelocity::new(&mut ParamBuilder::new(0), MlpVelocityConfig::default())?;
    let width = 1024;
    let inputs = 784 + 3 * 128;
    let want =
        11 * 128 + (inputs * width + width) + 3 * 2 * (width * width + width) + (width * 784 + 784);
    assert_eq!(m.param_count(), want);
    let n = names(&m);
    assert_eq!(n[..3], ["yemb.weight", "input.weight", "input.bias"]);
    assert!(n.iter().any(|x| x == "blocks.2.fc2.weight"));
    assert_eq!(n.last().map(String::as_str), Some("out.bias"));
    assert_eq!(m.null_label(), 10);
    let x = randn_as(0, &[2, 784], DType::F32);
    let t = vector(&[1.0, -0.3], DType::F32);
    let model: &dyn VelocityModel = &m;
    let v = model.velocity(&x, &t, &t, &labels(&[2, 10]))?;
    assert_eq!(v.shape(), [2, 784]);
    assert!(
        v.to_vec::<f32>()?.iter().all(|&a| a == 0.0),
        "zero-initialised output"
    );
    assert!(tiny_mlp_velocity(0.0)?
        .velocity(&randn_as(0, &[2, 5], DType::F32), &t, &t, &labels(&[0, 1]))
        .is_err());
    Ok(())
}

#[test]
fn classifier_gives_logits_and_penultimate_features() -> Result<()> {
    let cfg = ClassifierConfig::default();
    let mut clf = Classifier::new(&mut ParamBuilder::new(0), &cfg)?;
    clf.set_training(false);
    assert_eq!(
        clf.param_count(),
        (16 * 9 + 16) + (32 * 16 * 9 + 32) + (32 * 7 * 7 * 128 + 128) + (128 * 10 + 10)
    );
    assert_eq!(
        names(&clf),
        [
            "convs.0.weight",
            "convs.0.bias",
            "convs.1.weight",
            "convs.1.bias",
            "hidden.weight",
            "hidden.bias",
            "head.weight",
            "head.bias"
        ]
    );
    let x = randn_as(0, &[3, 784], DType::F32);
    assert_eq!(clf.forward(&x)?.shape(), [3, 10]);
    assert_eq!(clf.features(&x)?.shape(), [3, 128]);
    assert!(clf.forward(&randn_as(0, &[3, 783], DType::F32)).is_err());
    let odd = ClassifierConfig {
        image_size: 30,
        conv: vec![4, 4],
        ..cfg.clone()
    };
    assert!(Classifier::new(&mut ParamBuilder::new(0), &odd).is_err());
    let empty = ClassifierConfig { hidden: 0, ..cfg };
    assert!(Classifier::new(&mut ParamBuilder::new(0), &empty).is_err());
    Ok(())
}
