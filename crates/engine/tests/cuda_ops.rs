//! Every engine op on CUDA against the CPU op on the same random inputs, forward and
//! backward, by relative error ‖out − ref‖/‖ref‖ over every element (NaN never passes;
//! output buffers are filled with NaN before kernels write them). Forward mode too:
//! outputs and tangents of `jvp` through ops on CUDA against the CPU. Skips, with a
//! message, where no CUDA driver or device exists.
#![cfg(feature = "cuda")]

use twinflow_engine::{
    autocast, cuda, gelu_mlp, gelu_mlp_gated, jvp, no_grad, prenorm_gelu_mlp_gated,
    scaled_dot_product_attention, AdamStep, DType, Device, GatedResidual, Generator, PreNorm,
    Result, Tensor,
};

mod common;

/// The GPU with fresh buffers poisoned (NaN), or `None` (after saying why).
fn gpu() -> Option<Device> {
    common::gpu().inspect(|_| cuda::set_poison(true))
}

fn tolerance(dt: DType) -> f64 {
    match dt {
        DType::F64 => 1e-10,
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// ‖out − ref‖/‖ref‖ over every element; infinite on a NaN or a length mismatch.
fn rel_err(out: &Tensor, reference: &Tensor) -> f64 {
    let (a, b) = (out.to_vec_f64().unwrap(), reference.to_vec_f64().unwrap());
    if a.len() != b.len() || a.iter().any(|v| v.is_nan()) || out.shape() != reference.shape() {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn assert_close(what: &str, out: &Tensor, reference: &Tensor, tol: f64) {
    assert_eq!(
        out.device(),
        Device::cuda(0).unwrap(),
        "{what}: not on the GPU"
    );
    let e = rel_err(out, reference);
    assert!(e <= tol, "{what}: relative error {e:e} above {tol:e}");
}

/// Runs `f` on the CPU inputs and on their GPU copies; compares the output and the
/// gradients of every float input of a random projection of it.
fn check(name: &str, inputs: &[Tensor], tol: f64, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let Some(dev) = gpu() else { return };
    let leaf = |t: &Tensor| match t.dtype().is_float() {
        true => t.clone().into_variable().unwrap(),
        false => t.clone(),
    };
    let cpu_in: Vec<Tensor> = inputs.iter().map(leaf).collect();
    let gpu_in: Vec<Tensor> = inputs
        .iter()
        .map(|t| leaf(&t.to_device(dev).unwrap().detach()))
        .collect();
    let (out_c, out_g) = (f(&cpu_in).unwrap(), f(&gpu_in).unwrap());
    assert_close(&format!("{name} forward"), &out_g, &out_c, tol);
    if !out_c.dtype().is_float() || !out_c.requires_grad() {
        return;
    }
    let w = Generator::new(7)
        .normal(out_c.shape(), 0.0, 1.0, out_c.dtype(), Device::Cpu)
        .unwrap();
    let loss = |o: &Tensor, w: &Tensor| o.mul(w).unwrap().sum_all().unwrap();
    let gc = loss(&out_c, &w).backward().unwrap();
    let gg = loss(&out_g, &w.to_device(dev).unwrap()).backward().unwrap();
    for (i, (c, g)) in cpu_in.iter().zip(&gpu_in).enumerate() {
        if let (Some(rc), Some(rg)) = (gc.get(c), gg.get(g)) {
            assert_close(&format!("{name} grad {i}"), rg, rc, tol);
        }
    }
}

fn randn(seed: u64, shape: &[usize], dt: DType) -> Tensor {
    Generator::new(seed)
        .normal(shape, 0.0, 1.0, dt, Device::Cpu)
        .unwrap()
}

fn positive(seed: u64, shape: &[usize], dt: DType) -> Tensor {
    Generator::new(seed)
        .uniform(shape, 0.5, 2.0, dt, Device::Cpu)
        .unwrap()
}

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];

#[test]
fn unary_ops() {
    type Op = fn(&Tensor) -> Result<Tensor>;
    let ops: [(&str, Op); 19] = [
        ("neg", |x| x.neg()),
        ("exp", |x| x.exp()),
        ("log", |x| x.log()),
        ("sqrt", |x| x.sqrt()),
        ("rsqrt", |x| x.rsqrt()),
        ("recip", |x| x.recip()),
        ("square", |x| x.square()),
        ("abs", |x| x.abs()),
        ("sin", |x| x.sin()),
        ("cos", |x| x.cos()),
        ("tanh", |x| x.tanh()),
        ("sigmoid", |x| x.sigmoid()),
        ("relu", |x| x.relu()),
        ("gelu", |x| x.gelu()),
        ("gelu_erf", |x| x.gelu_erf()),
        ("silu", |x| x.silu()),
        ("powf", |x| x.powf(1.7)),
        ("clamp", |x| x.clamp(0.7, 1.5)),
        ("affine", |x| x.affine(-0.5, 2.0)),
    ];
    for dt in FLOATS {
        for (i, (name, op)) in ops.iter().enumerate() {
            // Positive inputs keep log, sqrt and powf defined; a transposed view tests
            // strided reads.
            let x = positive(i as u64, &[33, 17], dt);
            check(&format!("{name} {dt}"), &[x], tolerance(dt), |t| {
                op(&t[0].t()?)
            });
        }
    }
}

#[test]
fn binary_and_comparison_ops_with_broadcast() {
    type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let ops: [(&str, Op); 12] = [
        ("add", |a, b| a.add(b)),
        ("sub", |a, b| a.sub(b)),
        ("mul", |a, b| a.mul(b)),
        ("div", |a, b| a.div(b)),
        ("maximum", |a, b| a.maximum(b)),
        ("minimum", |a, b| a.minimum(b)),
        ("eq", |a, b| a.eq(b)),
        ("ne", |a, b| a.ne(b)),
        ("lt", |a, b| a.lt(b)),
        ("le", |a, b| a.le(b)),
        ("gt", |a, b| a.gt(b)),
        ("ge", |a, b| a.ge(b)),
    ];
    for dt in FLOATS {
        for (i, (name, op)) in ops.iter().enumerate() {
            let a = randn(i as u64, &[4, 1, 37], dt);
            let b = positive(100 + i as u64, &[5, 37], dt);
            check(&format!("{name} {dt}"), &[a, b], tolerance(dt), |t| {
                op(&t[0], &t[1])
            });
        }
    }
}

#[test]
fn where_addcmul_and_casts() {
    for dt in FLOATS {
        let (m, a, b) = (
            randn(1, &[6, 40], dt),
            randn(2, &[6, 40], dt),
            randn(3, &[40], dt),
        );
        let inputs = [m, a, b];
        check(&format!("where {dt}"), &inputs, tolerance(dt), |t| {
            t[0].gt(&t[1])?
                .where_cond(&t[1], &t[2].broadcast_to(&[6, 40])?)
        });
        check(&format!("addcmul {dt}"), &inputs, tolerance(dt), |t| {
            t[0].addcmul(&t[1], &t[2])
        });
        for to in [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64] {
            let x = randn(4, &[9, 31], dt).mul_scalar(20.0).unwrap();
            check(&format!("cast {dt} → {to}"), &[x], 0.0, |t| {
                t[0].t()?.to_dtype(to)
            });
        }
    }
}

/// The vectorised kernels for contiguous operands (`*_dense`), on sizes that leave a
/// tail after the 16-byte packs, and views starting at an offset: one that keeps 16-byte
/// alignment (the fast path from an offset) and one that breaks it (the strided kernels).
#[test]
fn contiguous_fast_paths_and_their_fallbacks() {
    const N: usize = 1_000_003;
    for dt in FLOATS {
        let tol = tolerance(dt);
        let aligned = 16 / dt.size_in_bytes();
        for start in [0, aligned, 1] {
            let case = |op: &str| format!("{op} {dt} from {start}");
            let view = |t: &Tensor| t.narrow(0, start, N);
            let (a, b, c) = (
                positive(30, &[N + 8], dt),
                randn(31, &[N + 8], dt),
                randn(32, &[N + 8], dt),
            );
            check(&case("gelu"), std::slice::from_ref(&a), tol, |t| {
                view(&t[0])?.gelu()
            });
            check(&case("affine"), std::slice::from_ref(&b), tol, |t| {
                view(&t[0])?.affine(1.0, 0.0)
            });
            check(&case("add"), &[a.clone(), b.clone()], tol, |t| {
                view(&t[0])?.add(&view(&t[1])?)
            });
            check(&case("div"), &[b.clone(), a.clone()], tol, |t| {
                view(&t[0])?.div(&view(&t[1])?)
            });
            check(&case("ge"), &[b.clone(), c.clone()], tol, |t| {
                view(&t[0])?.ge(&view(&t[1])?)
            });
            check(
                &case("where"),
                &[a.clone(), b.clone(), c.clone()],
                tol,
                |t| {
                    let mask = view(&t[1])?.gt(&view(&t[2])?)?;
                    mask.where_cond(&view(&t[0])?, &view(&t[2])?)
                },
            );
            check(&case("addcmul"), &[a, b.clone(), c], tol, |t| {
                view(&t[0])?.addcmul(&view(&t[1])?, &view(&t[2])?)
            });
            // The autocast casts (`cast_dense_*` between f32 and bf16/f16): exact.
            for to in [DType::F32, DType::BF16, DType::F16] {
                let scaled = b.mul_scalar(20.0).unwrap();
                check(&format!("{} → {to}", case("cast")), &[scaled], 0.0, |t| {
                    view(&t[0])?.to_dtype(to)
                });
            }
        }
    }
}

/// A gated product's two factor gradients from one pass over the output's gradient
/// (`gated_product_grads`; taken with at least two groups a CPU thread, so 128 groups
/// here), the gate either factor, contiguous or a chunk of a wider adaLN row.
#[test]
fn gated_product_gradients() {
    for dt in FLOATS {
        let inputs = [
            randn(51, &[128, 5, 40], dt),
            randn(52, &[128, 1, 40], dt),
            randn(53, &[128, 5, 40], dt),
            randn(54, &[128, 3 * 40], dt),
        ];
        let tol = tolerance(dt);
        check(&format!("gate · y {dt}"), &inputs[..3], tol, |t| {
            t[0].addcmul(&t[1], &t[2])
        });
        check(&format!("y · gate {dt}"), &inputs[..3], tol, |t| {
            t[0].addcmul(&t[2], &t[1])
        });
        let rest = [inputs[0].clone(), inputs[3].clone(), inputs[2].clone()];
        check(&format!("y · adaLN chunk {dt}"), &rest, tol, |t| {
            t[0].addcmul(&t[2], &t[1].narrow(1, 40, 40)?.unsqueeze(1)?)
        });
    }
    // Under autocast, an f32 stream beside a half-precision product, read in its dtype
    // (`addcmul_quads_f32_{a}_{b}` four elements a thread where D is a multiple of 4,
    // else `addcmul_f32_{a}_{b}`; `gated_product_grads_f32_{full}_{gate}`), the gate
    // f32 or half (a chunk of another product, as a DiT's), per sample or shared (the
    // composition, with its casts).
    for low in [DType::BF16, DType::F16] {
        for d in [40, 38] {
            let gates = [
                ([128, 1, d], false),
                ([128, 1, d], true),
                ([1, 1, d], false),
            ];
            for (gate, half_gate) in gates {
                let inputs = [
                    randn(55, &[128, 5, d], DType::F32),
                    randn(56, &gate, DType::F32),
                    randn(57, &[128, 5, 24], DType::F32),
                    randn(58, &[d, 24], DType::F32),
                ];
                let case = format!("x + gate {gate:?} (half {half_gate}) · {low} product");
                check(&case, &inputs, 1e-2, |t| {
                    autocast(low, || {
                        let gate = match half_gate {
                            true => t[1].to_dtype(low)?,
                            false => t[1].clone(),
                        };
                        t[0].addcmul(&gate, &t[2].linear(&t[3], None)?)
                    })?
                });
            }
        }
    }
}

/// The pack-per-thread kernels for strided operands (`*_packed`) on adaLN's pattern: a
/// `[B, 1, D]` chunk of a wider `[B, 7D + pack]` row against `[B, T, D]` activations (unary,
/// unary backward, binary, comparison, where, addcmul, and their gradients), and a
/// broadcast innermost dim (stride 0). Chunks starting off a pack boundary (start 1)
/// and rows that are not whole packs (D = 60 in bf16/f16) take the per-element kernels.
#[test]
fn strided_pack_paths_and_their_fallbacks() {
    for dt in FLOATS {
        let tol = tolerance(dt);
        let pack = 16 / dt.size_in_bytes();
        for (d, start) in [(64, 0), (64, pack), (64, 1), (60, 0)] {
            let case = |op: &str| format!("{op} {dt} d {d} from {start}");
            let chunk = |ada: &Tensor, k: usize| ada.narrow(1, start + k * d, d)?.unsqueeze(1);
            let inputs = [
                randn(40, &[3, 5, d], dt),
                randn(41, &[3, 7 * d + pack], dt),
                randn(42, &[3, 5, d], dt),
            ];
            check(&case("modulate"), &inputs, tol, |t| {
                let scale = chunk(&t[1], 1)?.add_scalar(1.0)?;
                chunk(&t[1], 0)?.addcmul(&t[0], &scale)
            });
            check(&case("gated residual"), &inputs, tol, |t| {
                t[0].addcmul(&chunk(&t[1], 2)?, &t[2])
            });
            check(&case("gelu"), &inputs, tol, |t| chunk(&t[1], 3)?.gelu());
            check(&case("mul"), &inputs, tol, |t| t[0].mul(&chunk(&t[1], 4)?));
            check(&case("sub"), &inputs, tol, |t| chunk(&t[1], 5)?.sub(&t[2]));
            check(&case("ge"), &inputs, tol, |t| t[0].ge(&chunk(&t[1], 6)?));
            check(&case("where"), &inputs, tol, |t| {
                let mask = t[2].gt(&chunk(&t[1], 0)?)?;
                mask.where_cond(&t[0], &chunk(&t[1], 1)?)
            });
            let rows = positive(43, &[3, 5, 1], dt);
            check(
                &case("div by a column"),
                &[inputs[0].clone(), rows],
                tol,
                |t| t[0].div(&t[1]),
            );
        }
    }
}

/// Σ of a product over dims: fused into the middle-dim reduction for contiguous factors
/// reduced over leading or middle dims, the product then a reduction otherwise (trailing
/// dims, a broadcast or a transposed factor).
#[test]
fn sum_products() {
    for dt in FLOATS {
        let tol = tolerance(dt);
        let inputs = [randn(50, &[4, 37, 40], dt), randn(51, &[4, 37, 40], dt)];
        for dims in [&[1][..], &[0], &[0, 1], &[2], &[1, 2]] {
            check(
                &format!("sum_product {dt} over {dims:?}"),
                &inputs,
                tol,
                |t| {
                    t[0].sum_product(
                        &t[1],
                        &dims.iter().map(|&d| d as isize).collect::<Vec<_>>(),
                        false,
                    )
                },
            );
        }
        let column = randn(52, &[4, 37, 1], dt);
        check(
            &format!("sum_product {dt} broadcast"),
            &[inputs[0].clone(), column],
            tol,
            |t| t[0].sum_product(&t[1], &[1], true),
        );
        let square = [randn(53, &[3, 40, 40], dt), randn(54, &[3, 40, 40], dt)];
        check(&format!("sum_product {dt} transposed"), &square, tol, |t| {
            t[0].transpose(1, 2)?.sum_product(&t[1], &[1], false)
        });
    }
}

/// Reductions over the trailing dims of contiguous inputs (`reduce_last_*`): a warp per
/// row below 1024 elements, a block per row above; rows starting at any alignment.
#[test]
fn last_dim_reductions() {
    for dt in FLOATS {
        let tol = tolerance(dt);
        for d in [1, 31, 32, 33, 1000, 4096, 5000] {
            let rows = if d < 1024 { 301 } else { 9 };
            let x = randn(33, &[rows, d], dt);
            type Op = fn(&Tensor, bool) -> Result<Tensor>;
            let ops: [(&str, Op); 3] = [
                ("sum", |x, k| x.sum(&[-1], k)),
                ("max", |x, k| x.max(&[-1], k)),
                ("min", |x, k| x.min(&[-1], k)),
            ];
            for (name, op) in ops {
                check(
                    &format!("{name} last {d} {dt}"),
                    std::slice::from_ref(&x),
                    tol,
                    |t| op(&t[0], true),
                );
                // From row 1: an offset of d elements, so rows start misaligned when d is odd.
                check(
                    &format!("{name} last {d} {dt} from row 1"),
                    std::slice::from_ref(&x),
                    tol,
                    |t| op(&t[0].narrow(0, 1, rows - 1)?, false),
                );
            }
        }
        let x = randn(34, &[5, 6, 70], dt);
        check(&format!("sum last two {dt}"), &[x], tol, |t| {
            t[0].sum(&[1, 2], false)
        });
    }
}

/// Contiguous copies of transposed matrices (`copy_transpose_*`, by element size): sizes
/// off the 32×32 tiles, a source narrowed to an offset and a row stride above its width,
/// and a broadcast column (stride 0).
#[test]
fn transposed_copies() {
    for dt in [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64] {
        for (r, c) in [(33, 17), (1000, 67), (64, 4096)] {
            let x = randn(35, &[r, c], DType::F32).mul_scalar(20.0).unwrap();
            let x = x.to_dtype(dt).unwrap();
            check(&format!("transpose {r}×{c} {dt}"), &[x], 0.0, |t| {
                t[0].t()?.contiguous()
            });
        }
        let x = randn(36, &[50, 70], DType::F32).mul_scalar(20.0).unwrap();
        let x = x.to_dtype(dt).unwrap();
        check(&format!("narrowed transpose {dt}"), &[x], 0.0, |t| {
            t[0].narrow(1, 3, 60)?.t()?.contiguous()
        });
        let col = randn(37, &[45, 1], DType::F32).to_dtype(dt).unwrap();
        // Its gradient sums over the broadcast dim, rounded differently from the CPU.
        check(
            &format!("broadcast column {dt}"),
            &[col],
            tolerance(dt),
            |t| t[0].broadcast_to(&[45, 40])?.contiguous(),
        );
    }
}

#[test]
fn reductions_over_any_dims() {
    for dt in FLOATS {
        let x = randn(5, &[6, 7, 300], dt);
        for dims in [&[2isize][..], &[0], &[1], &[0, 2], &[0, 1, 2]] {
            let tol = tolerance(dt);
            check(
                &format!("sum {dims:?} {dt}"),
                std::slice::from_ref(&x),
                tol,
                |t| t[0].sum(dims, true),
            );
            check(
                &format!("max {dims:?} {dt}"),
                std::slice::from_ref(&x),
                tol,
                |t| t[0].max(dims, false),
            );
            check(
                &format!("min {dims:?} {dt}"),
                std::slice::from_ref(&x),
                tol,
                |t| t[0].min(dims, false),
            );
        }
        // Many outputs in columns of a narrowed (non-contiguous) view: the
        // one-thread-per-output kernel.
        let wide = randn(6, &[50, 9100], dt);
        check(&format!("sum cols {dt}"), &[wide], tolerance(dt), |t| {
            t[0].narrow(1, 0, 9000)?.sum(&[0], false)
        });
    }
}

/// Reductions over one block of dims of a contiguous input, not trailing
/// (`reduce_middle_*`): bias-gradient shapes with many row stretches and a short last
/// one, partial column blocks, an outer dim, several reduced dims.
#[test]
fn middle_dim_reductions() {
    for dt in FLOATS {
        let cases: [(&[usize], &[isize]); 5] = [
            (&[5000, 33], &[0]),
            (&[3, 2000, 40], &[1]),
            (&[4, 3, 5, 70], &[1, 2]),
            (&[70, 1], &[0]),
            (&[2, 1, 300], &[1]),
        ];
        for (i, (shape, dims)) in cases.into_iter().enumerate() {
            let x = randn(20 + i as u64, shape, dt);
            let tol = tolerance(dt);
            let x = std::slice::from_ref(&x);
            check(&format!("sum {shape:?} {dims:?} {dt}"), x, tol, |t| {
                t[0].sum(dims, false)
            });
            check(&format!("max {shape:?} {dims:?} {dt}"), x, tol, |t| {
                t[0].max(dims, true)
            });
            check(&format!("min {shape:?} {dims:?} {dt}"), x, tol, |t| {
                t[0].min(dims, false)
            });
        }
    }
}

#[test]
fn products() {
    for dt in FLOATS {
        let tol = tolerance(dt);
        let (a, b) = (randn(7, &[2, 3, 20, 30], dt), randn(8, &[3, 30, 25], dt));
        check(
            &format!("batched broadcast matmul {dt}"),
            &[a, b],
            tol,
            |t| t[0].matmul(&t[1]),
        );
        let (a, b) = (randn(9, &[30, 20], dt), randn(10, &[25, 30], dt));
        check(&format!("transposed matmul {dt}"), &[a, b], tol, |t| {
            t[0].t()?.matmul(&t[1].t()?)
        });
        let (x, w, bias) = (
            randn(11, &[4, 9, 24], dt),
            randn(12, &[16, 24], dt),
            randn(13, &[16], dt),
        );
        // The weight's and the bias's gradients come from one product with cuBLASLt's
        // BGRADB epilogue where it takes them (f32; bf16 and f16 when asked for), else
        // from a product and a reduction.
        for epilogues in [false, true] {
            cuda::set_half_gradient_epilogues(epilogues);
            check(
                &format!("linear {dt}, half gradient epilogues {epilogues}"),
                &[x.clone(), w.clone(), bias.clone()],
                tol,
                |t| t[0].linear(&t[1], Some(&t[2])),
            );
        }
        cuda::set_half_gradient_epilogues(false);
        // Bias and weight as slices of larger tensors: aligned (cuBLASLt's bias
        // epilogue takes it) and off 256-byte alignment (the plain cuBLAS path).
        let (wide_w, wide_bias) = (randn(16, &[160, 24], dt), randn(17, &[160], dt));
        for start in [0, 1, 128] {
            let inputs = [x.clone(), wide_w.clone(), wide_bias.clone()];
            check(
                &format!("linear {dt} slices from {start}"),
                &inputs,
                tol,
                |t| {
                    let (w, b) = (t[1].narrow(0, start, 16)?, t[2].narrow(0, start, 16)?);
                    t[0].linear(&w, Some(&b))
                },
            );
        }
        let (a, b) = (randn(14, &[3, 8, 5], dt), randn(15, &[5, 8, 4], dt));
        check(&format!("permuted batch matmul {dt}"), &[a, b], tol, |t| {
            t[0].permute(&[1, 0, 2])?.matmul(&t[1].permute(&[1, 0, 2])?)
        });
    }
}

/// The fused GELU feed-forward block against the CPU op (whose f32/f64 kernels fuse the
/// GELU into the products): on CUDA, bf16/f16 with a hidden width that is a multiple
/// of 8 (40) take cuBLASLt's GELU epilogues (the pre-activation kept for the backward,
/// which gets the first bias's gradient from the same epilogue), other widths (36) and
/// f32/f64 the product and GELU kernels in turn; with and without biases, recording a
/// graph and under `no_grad` (the GELU without the pre-activation); the backward with
/// cuBLASLt's DGELU_BGRAD and BGRADB epilogues and without (the default).
#[test]
fn gelu_mlp_block() {
    for (dt, epilogues) in FLOATS.into_iter().flat_map(|dt| [(dt, false), (dt, true)]) {
        cuda::set_half_gradient_epilogues(epilogues);
        for hidden in [40, 36] {
            let (x, w1, w2) = (
                randn(21, &[3, 7, 24], dt),
                randn(22, &[hidden, 24], dt),
                randn(23, &[16, hidden], dt),
            );
            let (b1, b2) = (randn(24, &[hidden], dt), randn(25, &[16], dt));
            let all = [x.clone(), w1.clone(), w2.clone(), b1, b2];
            let with_biases =
                |t: &[Tensor]| gelu_mlp(&t[0], (&t[1], Some(&t[3])), (&t[2], Some(&t[4])));
            let name = |what: &str| {
                format!("gelu_mlp {what}, hidden {hidden}, {dt}, gradient epilogues {epilogues}")
            };
            check(&name("with biases"), &all, tolerance(dt), with_biases);
            check(&name("without a graph"), &all, tolerance(dt), |t| {
                no_grad(|| with_biases(t))
            });
            check(&name("without biases"), &[x, w1, w2], tolerance(dt), |t| {
                gelu_mlp(&t[0], (&t[1], None), (&t[2], None))
            });
        }
    }
    cuda::set_half_gradient_epilogues(false);
}

#[test]
fn tf32_products() {
    let Some(_) = gpu() else { return };
    cuda::set_allow_tf32(true);
    let (a, b) = (
        randn(16, &[128, 256], DType::F32),
        randn(17, &[256, 64], DType::F32),
    );
    check("tf32 matmul", &[a, b], 1e-3, |t| t[0].matmul(&t[1]));
    cuda::set_allow_tf32(false);
}

#[test]
fn softmax_and_norms() {
    for dt in FLOATS {
        let tol = tolerance(dt);
        // Norms: a warp per row up to 1024 elements (every version of 4 to 32 elements
        // per lane, full and partly filled), a block per row beyond.
        for d in [7, 100, 128, 200, 384, 500, 768, 1000, 1024, 1500] {
            let x = randn(18, &[5, 3, d], dt);
            check(
                &format!("softmax {d} {dt}"),
                std::slice::from_ref(&x),
                tol,
                |t| t[0].softmax(),
            );
            check(
                &format!("log_softmax {d} {dt}"),
                std::slice::from_ref(&x),
                tol,
                |t| t[0].log_softmax(),
            );
            let (w, b) = (randn(19, &[d], dt), randn(20, &[d], dt));
            check(
                &format!("layer_norm {d} {dt}"),
                &[x.clone(), w.clone(), b],
                tol,
                |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
            );
            check(
                &format!("layer_norm plain {d} {dt}"),
                std::slice::from_ref(&x),
                tol,
                |t| t[0].layer_norm(None, None, 1e-5),
            );
            check(&format!("rms_norm {d} {dt}"), &[x.clone(), w], tol, |t| {
                t[0].rms_norm(Some(&t[1]), 1e-6)
            });
        }
        // Parameters per group of rows ([B, 1, D], a DiT's modulation): groups of 3 rows
        // (every stretch of the parameter-gradient kernel crosses groups) and of 700
        // (some stretches lie inside one group, some cross).
        for shape in [[600, 3, 100], [2, 700, 100], [5, 3, 1500]] {
            let x = randn(18, &shape, dt);
            let params = [shape[0], 1, shape[2]];
            let (w, b) = (randn(19, &params, dt), randn(20, &params, dt));
            check(
                &format!("layer_norm per group {shape:?} {dt}"),
                &[x.clone(), w.clone(), b],
                tol,
                |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
            );
            check(
                &format!("rms_norm per group {shape:?} {dt}"),
                &[x.clone(), w.clone()],
                tol,
                |t| t[0].rms_norm(Some(&t[1]), 1e-6),
            );
            // On a residual stream the backward adds x's other gradient to dx, in the
            // kernel's pass that writes dx (on both backends).
            check(
                &format!("x + layer_norm(x) per group {shape:?} {dt}"),
                &[x, w],
                tol,
                |t| t[0].add(&t[0].layer_norm(Some(&t[1]), None, 1e-5)?),
            );
        }
    }
}

/// A pre-norm under autocast: f32 statistics, the output written in the scope's low
/// dtype and its gradient read back in it (`norm_*_f32_to_bf16`, `norm_backward_*_f32_gbf16`
/// and the f16 ones), a warp per row and a block per row, per-group parameters.
#[test]
fn prenorm_in_the_low_dtype() {
    for low in [DType::BF16, DType::F16] {
        for shape in [[6, 7, 100], [2, 3, 1500]] {
            let params = [shape[0], 1, shape[2]];
            let inputs = [
                randn(71, &shape, DType::F32),
                randn(72, &params, DType::F32),
                randn(73, &params, DType::F32),
            ];
            check(
                &format!("prenorm {shape:?} → {low}"),
                &inputs,
                1e-2,
                |t| {
                    let norm = PreNorm {
                        weight: Some(&t[1]),
                        bias: Some(&t[2]),
                        eps: 1e-5,
                    };
                    autocast(low, || norm.apply(&t[0]))?
                },
            );
        }
    }
}

/// The gated residuals `stream + gate·layer(x)` (on CUDA the composition, `addcmul`
/// after the layer) against the CPU, whose epilogue fusion and fused gate gradients
/// they must match, gradients included.
#[test]
fn gated_residuals() {
    for dt in [DType::F32, DType::F64] {
        let (b, t, k, hidden, n) = (6, 49, 32, 96, 40);
        let inputs = [
            randn(31, &[b, t, k], dt),
            randn(32, &[b, t, n], dt),
            randn(33, &[b, 1, n], dt),
            randn(34, &[hidden, k], dt),
            randn(35, &[hidden], dt),
            randn(36, &[n, hidden], dt),
            randn(37, &[n], dt),
        ];
        let tol = tolerance(dt);
        check(&format!("linear_gated {dt}"), &inputs[..5], tol, |x| {
            let w = x[3].narrow(0, 0, n)?.contiguous()?;
            let residual = GatedResidual {
                stream: &x[1],
                gate: &x[2],
            };
            x[0].linear_gated(&w, Some(&x[4].narrow(0, 0, n)?), residual)
        });
        check(&format!("gelu_mlp_gated {dt}"), &inputs, tol, |x| {
            let residual = GatedResidual {
                stream: &x[1],
                gate: &x[2],
            };
            gelu_mlp_gated(&x[0], (&x[3], Some(&x[4])), (&x[5], Some(&x[6])), residual)
        });
        // The pre-norm branch x + gate·mlp(LN(x)·w + b) (x is the stream: fc2 maps back
        // to k), norm parameters per sample.
        let prenorm_inputs = [
            inputs[0].clone(),
            randn(38, &[b, 1, k], dt),
            inputs[3].clone(),
            inputs[4].clone(),
            randn(39, &[k, hidden], dt),
            randn(40, &[k], dt),
            randn(41, &[b, 1, k], dt),
            randn(42, &[b, 1, k], dt),
        ];
        check(
            &format!("prenorm_gelu_mlp_gated {dt}"),
            &prenorm_inputs,
            tol,
            |x| {
                let norm = PreNorm {
                    weight: Some(&x[6]),
                    bias: Some(&x[7]),
                    eps: 1e-6,
                };
                let (fc1, fc2) = ((&x[2], Some(&x[3])), (&x[4], Some(&x[5])));
                prenorm_gelu_mlp_gated(&x[0], norm, fc1, fc2, &x[1])
            },
        );
    }
}

#[test]
fn indexing() {
    let ids = Tensor::from_vec(vec![3i64, 0, 3, 1, 4], &[5], Device::Cpu).unwrap();
    let gids = Tensor::from_vec(vec![2i64, 0, 1, 1, 0, 2, 2, 2], &[4, 2], Device::Cpu).unwrap();
    for dt in FLOATS {
        let tol = tolerance(dt);
        let x = randn(21, &[6, 5, 3], dt);
        check(
            &format!("index_select {dt}"),
            &[x.clone(), ids.clone()],
            tol,
            |t| t[0].index_select(&t[1], 1),
        );
        // Many positions per index (index_add's chunks of 64 positions), one index
        // never picked, two leading rows.
        let many: Vec<i64> = (0..300).map(|j| [0, 2, 2, 3][j % 4]).collect();
        let many = Tensor::from_vec(many, &[300], Device::Cpu).unwrap();
        check(
            &format!("index_select repeated {dt}"),
            &[randn(25, &[2, 4, 33], dt), many],
            tol,
            |t| t[0].index_select(&t[1], 1),
        );
        let y = randn(22, &[4, 3], dt);
        check(&format!("gather {dt}"), &[y, gids.clone()], tol, |t| {
            t[0].gather(&t[1], 1)
        });
        check(
            &format!("cat {dt}"),
            &[x.clone(), randn(23, &[6, 2, 3], dt)],
            tol,
            |t| Tensor::cat(&[&t[0], &t[1].t()?.t()?], 1),
        );
    }
    let Some(dev) = gpu() else { return };
    let bad = Tensor::from_vec(vec![9i64], &[1], dev).unwrap();
    let x = randn(24, &[3, 2], DType::F32).to_device(dev).unwrap();
    let err = x.index_select(&bad, 0).unwrap_err().to_string();
    assert!(
        err.contains("index_select") && err.contains("out of range"),
        "{err}"
    );
}

/// The gradients that used to be summed by atomic adds (norm parameters, index_add) are
/// bit-identical from one run to the next: parameters shared by 8,000 rows, per group of
/// 49 rows, and a table of 11 rows picked by 5,000 indices.
#[test]
fn parameter_and_index_gradients_are_identical_run_to_run() {
    let Some(dev) = gpu() else { return };
    let on_gpu = |t: Tensor| t.to_device(dev).unwrap().into_variable().unwrap();
    let grads = |inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
        let out = f(inputs).unwrap();
        let w = randn(26, out.shape(), out.dtype()).to_device(dev).unwrap();
        let g = out.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let bits = |t: &Tensor| g.get(t).map(|t| t.to_vec_f64().unwrap());
        inputs.iter().map(bits).collect::<Vec<_>>()
    };
    for dt in [DType::F32, DType::BF16] {
        for (shape, params) in [([40, 200, 96], &[96][..]), ([300, 49, 64], &[300, 1, 64])] {
            let x = on_gpu(randn(27, &shape, dt));
            let (w, b) = (on_gpu(randn(28, params, dt)), on_gpu(randn(29, params, dt)));
            let inputs = [x, w, b];
            let norm = |t: &[Tensor]| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5);
            let first = grads(&inputs, &norm);
            assert!(
                first.iter().all(Option::is_some),
                "layer_norm {shape:?}: missing"
            );
            assert_eq!(first, grads(&inputs, &norm), "layer_norm {shape:?} {dt}");
        }
        let ids: Vec<i64> = (0..5000u64).map(|j| (j * j % 13 % 11) as i64).collect();
        let ids = Tensor::from_vec(ids, &[5000], dev).unwrap();
        let table = [on_gpu(randn(30, &[11, 96], dt))];
        let select = |t: &[Tensor]| t[0].index_select(&ids, 0);
        assert_eq!(
            grads(&table, &select),
            grads(&table, &select),
            "index_add {dt}"
        );
    }
}

#[test]
fn attention_forward_and_backward() {
    for dt in FLOATS {
        let tol = tolerance(dt);
        for causal in [false, true] {
            // A shape the fused kernels take (head dim 32), also with them turned off;
            // other tests of this binary may run meanwhile on either path, both correct.
            let (q, k, v) = (
                randn(28, &[2, 2, 13, 32], dt),
                randn(29, &[2, 2, 17, 32], dt),
                randn(30, &[2, 2, 17, 32], dt),
            );
            for fused in [true, false] {
                cuda::set_fused_attention(fused);
                check(
                    &format!("attention d32 fused={fused} causal={causal} {dt}"),
                    &[q.clone(), k.clone(), v.clone()],
                    tol,
                    |t| scaled_dot_product_attention(&t[0], &t[1], &t[2], None, causal),
                );
            }
            cuda::set_fused_attention(true);
            let (q, k, v) = (
                randn(25, &[2, 3, 9, 16], dt),
                randn(26, &[2, 3, 11, 16], dt),
                randn(27, &[2, 3, 11, 8], dt),
            );
            check(
                &format!("attention causal={causal} {dt}"),
                &[q, k, v],
                tol,
                |t| scaled_dot_product_attention(&t[0], &t[1], &t[2], None, causal),
            );
        }
    }
}

/// Runs `jvp(f)` on the CPU inputs and on their GPU copies, with random tangents
/// (seeded from `seed`), and compares the outputs and their tangents.
fn check_jvp(
    name: &str,
    inputs: &[Tensor],
    tol: f64,
    seed: u64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let Some(dev) = gpu() else { return };
    let tangents: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| randn(seed + i as u64, x.shape(), x.dtype()))
        .collect();
    let run = |p: &[Tensor], t: &[Tensor]| jvp(|p| Ok(vec![f(p)?]), p, t).unwrap();
    let (out_c, tan_c) = run(inputs, &tangents);
    let on_gpu =
        |x: &[Tensor]| -> Vec<Tensor> { x.iter().map(|t| t.to_device(dev).unwrap()).collect() };
    let (out_g, tan_g) = run(&on_gpu(inputs), &on_gpu(&tangents));
    assert_close(&format!("{name} jvp output"), &out_g[0], &out_c[0], tol);
    assert_eq!(tan_g[0].dtype(), out_g[0].dtype(), "{name}: tangent dtype");
    assert_close(&format!("{name} jvp tangent"), &tan_g[0], &tan_c[0], tol);
}

#[test]
fn jvp_through_ops() {
    for dt in FLOATS {
        let tol = tolerance(dt);
        let (a, b) = (randn(40, &[2, 3, 20, 30], dt), randn(41, &[3, 30, 25], dt));
        check_jvp(&format!("matmul {dt}"), &[a, b], tol, 42, |t| {
            t[0].matmul(&t[1])
        });
        let x = randn(43, &[5, 3, 100], dt);
        check_jvp(
            &format!("softmax {dt}"),
            std::slice::from_ref(&x),
            tol,
            44,
            |t| t[0].softmax(),
        );
        let (w, bias) = (randn(45, &[100], dt), randn(46, &[100], dt));
        check_jvp(
            &format!("layer_norm {dt}"),
            &[x.clone(), w, bias],
            tol,
            47,
            |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
        );
        check_jvp(
            &format!("gelu {dt}"),
            std::slice::from_ref(&x),
            tol,
            48,
            |t| t[0].gelu(),
        );
        let row = randn(49, &[3, 1], dt);
        check_jvp(
            &format!("broadcast mul {dt}"),
            &[x.clone(), row],
            tol,
            50,
            |t| t[0].mul(&t[1]),
        );
        check_jvp(
            &format!("sum {dt}"),
            std::slice::from_ref(&x),
            tol,
            51,
            |t| t[0].sum(&[0, 2], false),
        );
        // A chain: linear, GELU, layer norm, softmax-weighted sum.
        let (x, w1) = (randn(52, &[4, 7, 24], dt), randn(53, &[16, 24], dt));
        check_jvp(&format!("chain {dt}"), &[x, w1], tol, 54, |t| {
            let h = t[0]
                .linear(&t[1], None)?
                .gelu()?
                .layer_norm(None, None, 1e-5)?;
            h.softmax()?.mul(&h)?.sum(&[2], false)
        });
    }
}

/// Forward mode under bf16 autocast on CUDA: a linear layer, causal self-attention on
/// its head-split output (the fused bf16 JVP kernel, reading the views in place) and
/// an output projection, against the CPU under the same autocast. The output and its
/// tangent come back bf16, like the lowered ops.
#[test]
fn jvp_under_bf16_autocast() {
    let Some(dev) = gpu() else { return };
    let (b, t, h, d) = (2, 19, 2, 32);
    let x = randn(60, &[b, t, h * d], DType::F32);
    let tx = randn(61, &[b, t, h * d], DType::F32);
    let w_qkv = randn(62, &[3 * h * d, h * d], DType::F32)
        .mul_scalar(0.2)
        .unwrap();
    let w_out = randn(63, &[h * d, h * d], DType::F32)
        .mul_scalar(0.2)
        .unwrap();
    let run = |dev: Device| -> Result<(Tensor, Tensor)> {
        let (w_qkv, w_out) = (w_qkv.to_device(dev)?, w_out.to_device(dev)?);
        let f = |p: &[Tensor]| -> Result<Vec<Tensor>> {
            let qkv = p[0].linear(&w_qkv, None)?.reshape(&[b, t, 3, h, d])?;
            let part = |i: usize| -> Result<Tensor> {
                qkv.narrow(2, i, 1)?
                    .reshape(&[b, t, h, d])?
                    .permute(&[0, 2, 1, 3])
            };
            let (q, k, v) = (part(0)?, part(1)?, part(2)?);
            let a = scaled_dot_product_attention(&q, &k, &v, None, true)?;
            let merged = a.permute(&[0, 2, 1, 3])?.reshape(&[b, t, h * d])?;
            Ok(vec![merged.linear(&w_out, None)?])
        };
        let (x, tx) = (x.to_device(dev)?, tx.to_device(dev)?);
        let (out, tan) = autocast(DType::BF16, || {
            jvp(f, std::slice::from_ref(&x), std::slice::from_ref(&tx))
        })??;
        Ok((out[0].clone(), tan[0].clone()))
    };
    let (out_c, tan_c) = run(Device::Cpu).unwrap();
    let (out_g, tan_g) = run(dev).unwrap();
    assert_eq!((out_g.dtype(), tan_g.dtype()), (DType::BF16, DType::BF16));
    assert_eq!((out_c.dtype(), tan_c.dtype()), (DType::BF16, DType::BF16));
    assert_close("autocast jvp output", &out_g, &out_c, 2e-2);
    assert_close("autocast jvp tangent", &tan_g, &tan_c, 2e-2);
}

#[test]
fn adam_update_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let step = common::adamw_step();
    // A bf16 gradient (converted first) and an f32 one (read in place).
    for grad_dtype in [DType::BF16, DType::F32] {
        let make = |d: Device| {
            let p = randn(28, &[1000], DType::F32).to_device(d).unwrap();
            let m = randn(29, &[1000], DType::F32)
                .mul_scalar(0.1)
                .unwrap()
                .to_device(d)
                .unwrap();
            let v = positive(30, &[1000], DType::F32).to_device(d).unwrap();
            let g = randn(31, &[1000], grad_dtype).to_device(d).unwrap();
            p.adam_update(&g, &m, &v, &step).unwrap();
            (p, m, v)
        };
        let (c, g) = (make(Device::Cpu), make(dev));
        assert_close(&format!("adam p {grad_dtype}"), &g.0, &c.0, 1e-6);
        assert_close(&format!("adam m {grad_dtype}"), &g.1, &c.1, 1e-6);
        assert_close(&format!("adam v {grad_dtype}"), &g.2, &c.2, 1e-6);
    }
}

/// The multi-tensor step on a list longer than a launch takes (64), of sizes around a
/// block's chunk (4096), an empty tensor, per-tensor step counts and a second
/// hyper-parameter set in the middle (a launch of its own), with bf16 and transposed
/// gradients among the f32 ones.
#[test]
fn adam_update_many_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let sizes = [1, 7, 4095, 4096, 4097, 10_000, 0, 300];
    let shape = |i: usize| [sizes[i % sizes.len()], 1 + i % 3];
    let plain = common::adamw_step();
    let run = |d: Device| {
        let tensors: Vec<[Tensor; 4]> = (0..150)
            .map(|i| {
                let seed = 100 + 4 * i as u64;
                let [r, c] = shape(i);
                let grad = match i % 5 {
                    0 => randn(seed, &[r, c], DType::BF16),
                    1 => randn(seed, &[c, r], DType::F32).t().unwrap(),
                    _ => randn(seed, &[r, c], DType::F32),
                };
                [
                    randn(seed + 1, &[r, c], DType::F32),
                    grad,
                    randn(seed + 2, &[r, c], DType::F32)
                        .mul_scalar(0.1)
                        .unwrap(),
                    positive(seed + 3, &[r, c], DType::F32),
                ]
                .map(|t| t.to_device(d).unwrap())
            })
            .collect();
        let list = common::adam_list(&tensors, |i| AdamStep {
            step: 1 + (i % 4) as u64,
            lr: if (100..110).contains(&i) {
                3e-3
            } else {
                plain.lr
            },
            ..plain
        });
        Tensor::adam_update_many(&list).unwrap();
        tensors
    };
    let (cpu, gpu) = (run(Device::Cpu), run(dev));
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        for (what, k) in [("p", 0), ("m", 2), ("v", 3)] {
            assert_close(&format!("adam list {what} #{i}"), &g[k], &c[k], 1e-6);
        }
    }
}

/// The profiler's device clock: GPU ops counted as under wall time, each with a
/// positive device time, and the spans (one stream: they cannot overlap) adding up to
/// no more than the run took, the wait for the last event included.
#[test]
fn device_clock_profile_times_gpu_ops() {
    use twinflow_engine::profile::{profile_with, Timing};
    let Some(dev) = gpu() else { return };
    let x = randn(40, &[512, 512], DType::F32).to_device(dev).unwrap();
    let run = |timing| {
        let started = std::time::Instant::now();
        let (y, report) = profile_with(timing, || -> Result<Tensor> {
            let mut y = x.clone();
            for _ in 0..10 {
                y = y.matmul(&x)?.tanh()?;
            }
            Ok(y)
        });
        y.unwrap();
        (report, started.elapsed().as_secs_f64())
    };
    let (wall, _) = run(Timing::Wall);
    let (device, elapsed) = run(Timing::DeviceEvents);
    assert_eq!(common::op_counts(&device), common::op_counts(&wall));
    for op in &device.ops {
        let s = op.stats.seconds;
        assert!(s.is_finite() && s > 0.0, "{}: {s} s", op.op);
    }
    assert!(
        device.seconds() <= elapsed,
        "{} s of spans in {elapsed} s",
        device.seconds()
    );
}

#[test]
fn ema_update_matches_cpu() {
    let Some(dev) = gpu() else { return };
    // A strided bf16 online view exercises the conversion; the f32 one the plain path.
    for dtype in [DType::F32, DType::BF16] {
        let make = |d: Device| {
            let avg = randn(33, &[40, 25], DType::F32).to_device(d).unwrap();
            let online = randn(34, &[25, 40], dtype).to_device(d).unwrap();
            avg.ema_update(&online.t().unwrap(), 0.9).unwrap();
            avg
        };
        assert_close("ema average", &make(dev), &make(Device::Cpu), 1e-6);
    }
}

#[test]
fn mixing_devices_is_an_error() {
    let Some(dev) = gpu() else { return };
    let a = randn(32, &[3], DType::F32);
    let b = a.to_device(dev).unwrap();
    let err = a.add(&b).unwrap_err().to_string();
    assert!(
        err.contains("add") && err.contains("cpu") && err.contains("cuda:0"),
        "{err}"
    );
}

#[test]
fn allocator_reuses_buffers() {
    let Some(dev) = gpu() else { return };
    let step = || {
        let x = Tensor::ones(&[256, 256], DType::F32, dev).unwrap();
        x.matmul(&x)
            .unwrap()
            .exp()
            .unwrap()
            .sum_all()
            .unwrap()
            .item()
            .unwrap()
    };
    step();
    let before = cuda::memory_stats(0).unwrap();
    step();
    let after = cuda::memory_stats(0).unwrap();
    assert_eq!(before.device_allocs, after.device_allocs, "{after:?}");
    assert!(after.reuses > before.reuses && after.peak_in_use > 0);
}
