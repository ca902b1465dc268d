//! The fused CUDA attention (`kernels/flash_attention.cu`) against a float64 CPU
//! reference of the attention op on the same inputs: forward and all three gradients,
//! for f32, bf16 and f16, head dims 32, 64, 128, awkward lengths (1, 7, 49, 63, 65,
//! 257; equal and unequal query and key lengths), with and without the causal mask.
//! Output buffers are poisoned with NaN first, so an element left unwritten fails.
//! `qkv_attention` (one tensor's three parts, one joint gradient) against the CPU and
//! against attention on the three views. The single-pass backward
//! (`cuda::set_single_pass_attention_backward`) likewise, with keys enough for several
//! key blocks per split, and the Hopper forward (`cuda::set_hopper_attention`, sm_90
//! cards), both after a probe whose inputs make each output name the key and the v
//! column it read (so that a wrong operand layout shows as a map, not a norm). Also:
//! identical results run to run, and a 200-step training run whose bf16 autocast loss
//! curve stays within 5% (10-step window means) of the f32 one. Forward mode: the
//! fused JVP kernel's output and tangent (and the gradients the backward computes from
//! the output and log-sum-exp it stores) against the float64 CPU `jvp` at awkward
//! lengths, every head dim, dtype and mask; and the unfused CUDA JVP (head dims the
//! fused kernels do not cover, f64) likewise. Skips, with a message, where no CUDA
//! driver or device exists.
#![cfg(feature = "cuda")]

use std::sync::{Mutex, MutexGuard};
use twinflow::engine::{
    autocast,
    cuda::{self, HopperAttention},
    jvp, qkv_attention, scaled_dot_product_attention, DType, Device, Generator, Result, Tensor,
};
use twinflow::nn::{
    Adam, AdamConfig, Forward, LinearConfig, Module, Optimizer, ParamBuilder, TransformerBlock,
    TransformerBlockConfig,
};

mod common;

/// The attention kernels' paths (the single-pass backward, the Hopper forward) are
/// process-wide settings: the tests that compare results to the bit hold this lock,
/// and a test that switches a path on holds it while the setting is on.
static ATTENTION_PATH: Mutex<()> = Mutex::new(());

fn attention_path() -> MutexGuard<'static, ()> {
    ATTENTION_PATH.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path switched on by `on()` until dropped, when `off()` switches it back (also when
/// a test fails).
struct Switched {
    off: fn(),
    _path: MutexGuard<'static, ()>,
}

impl Switched {
    fn on(on: impl FnOnce(), off: fn()) -> Self {
        let path = attention_path();
        on();
        Switched { off, _path: path }
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        (self.off)();
    }
}

/// The GPU with fresh buffers poisoned (NaN), or `None` (after saying why).
fn gpu() -> Option<Device> {
    common::gpu().inspect(|_| cuda::set_poison(true))
}

/// ‖out − ref‖/‖ref‖; infinite on a NaN or a shape mismatch. A reference that is zero
/// up to rounding (dq and dk with a single key: the softmax is constant) is compared by
/// the root mean square of the error instead, the inputs being of unit scale.
fn rel_err(out: &Tensor, reference: &Tensor) -> f64 {
    let (a, b) = (out.to_vec_f64().unwrap(), reference.to_vec_f64().unwrap());
    if a.iter().any(|v| v.is_nan()) || out.shape() != reference.shape() {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    match den > 1e-20 * b.len() as f64 {
        true => (num / den).sqrt(),
        false => (num / b.len() as f64).sqrt(),
    }
}

fn randn(seed: u64, shape: &[usize], dt: DType) -> Tensor {
    Generator::new(seed)
        .normal(shape, 0.0, 1.0, dt, Device::Cpu)
        .unwrap()
}

/// Output and (dq, dk, dv) of attention on `inputs` under the output projection `w`.
fn run(inputs: &[Tensor], w: &Tensor, causal: bool) -> Vec<Tensor> {
    run_scaled(inputs, w, None, causal)
}

/// [`run`] with the attention's `scale` (`None`: 1/√d).
fn run_scaled(inputs: &[Tensor], w: &Tensor, scale: Option<f64>, causal: bool) -> Vec<Tensor> {
    let vars: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.detach().into_variable().unwrap())
        .collect();
    let out = scaled_dot_product_attention(&vars[0], &vars[1], &vars[2], scale, causal).unwrap();
    let grads = out.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
    let mut all = vec![out];
    all.extend(vars.iter().map(|v| grads.get(v).expect("gradient").clone()));
    all
}

/// f32 runs in f32; bf16/f16 round P and dS to the storage type, as FlashAttention does.
fn tolerance(dt: DType) -> f64 {
    match dt {
        DType::F64 => 1e-10,
        DType::F32 => 1e-5,
        _ => 2e-2,
    }
}

/// Forward mode through attention: the output and its tangent along `tangents`, then
/// (dq, dk, dv) of the primal output under the projection `w` (the backward reads the
/// output and log-sum-exp that the JVP kernel stored).
fn run_jvp(primals: &[Tensor], tangents: &[Tensor], w: &Tensor, causal: bool) -> Vec<Tensor> {
    let vars: Vec<Tensor> = primals
        .iter()
        .map(|t| t.detach().into_variable().unwrap())
        .collect();
    let f = |p: &[Tensor]| {
        Ok(vec![scaled_dot_product_attention(
            &p[0], &p[1], &p[2], None, causal,
        )?])
    };
    let (out, tangent) = jvp(f, &vars, tangents).unwrap();
    let grads = out[0]
        .mul(w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut all = vec![out[0].clone(), tangent[0].clone()];
    all.extend(vars.iter().map(|v| grads.get(v).expect("gradient").clone()));
    all
}

/// Runs [`run_jvp`] on the GPU and in float64 on the CPU for q `[2, 2, tq, d]`, k
/// `[2, 2, tk, d]`, v `[2, 2, tk, dv]` of `dt` and tangents alike, and returns a line
/// per result whose relative error exceeds the tolerance of `dt`.
fn jvp_failures(
    dev: Device,
    dt: DType,
    (tq, tk, d, dv): (usize, usize, usize, usize),
    causal: bool,
    seed: u64,
) -> Vec<String> {
    let shapes = [[2, 2, tq, d], [2, 2, tk, d], [2, 2, tk, dv]];
    // Inputs rounded to dt once; the reference computes on them in f64.
    let primals = [0, 1, 2].map(|i| randn(seed + i, &shapes[i as usize], dt));
    let tangents = [0, 1, 2].map(|i| randn(seed + 3 + i, &shapes[i as usize], dt));
    let w = randn(seed + 6, &[2, 2, tq, dv], dt);
    let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let reference = run_jvp(
        &primals.each_ref().map(wide),
        &tangents.each_ref().map(wide),
        &wide(&w),
        causal,
    );
    let on_gpu = |t: &Tensor| t.to_device(dev).unwrap();
    let got = run_jvp(
        &primals.each_ref().map(on_gpu),
        &tangents.each_ref().map(on_gpu),
        &on_gpu(&w),
        causal,
    );
    let mut failures = Vec::new();
    for (what, (g, r)) in ["out", "tangent", "dq", "dk", "dv"]
        .iter()
        .zip(got.iter().zip(&reference))
    {
        let wrong_place = g.device() != dev || g.dtype() != dt;
        let e = rel_err(&g.to_device(Device::Cpu).unwrap(), r);
        if wrong_place || e > tolerance(dt) {
            failures.push(format!(
                "{dt} d={d} dv={dv} tq={tq} tk={tk} causal={causal} {what}: {e:e} ({} {})",
                g.device(),
                g.dtype()
            ));
        }
    }
    failures
}

/// The fused JVP kernel (one pass over the keys: output, log-sum-exp and tangent with
/// the online softmax) against the float64 CPU `jvp`.
#[test]
fn flash_attention_jvp_matches_cpu_at_awkward_lengths() {
    let Some(dev) = gpu() else { return };
    let lengths = [
        (1, 1),
        (17, 17),
        (63, 63),
        (130, 130),
        (257, 257),
        (17, 130),
        (130, 17),
        (63, 257),
    ];
    let mut failures = Vec::new();
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for d in [32, 64, 128] {
            for (i, &(tq, tk)) in lengths.iter().enumerate() {
                for causal in [false, true] {
                    let seed = 1000 + 100 * d as u64 + 10 * i as u64;
                    failures.extend(jvp_failures(dev, dt, (tq, tk, d, d), causal, seed));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The unfused CUDA JVP (cuBLAS products and the softmax-backward row kernel), which
/// runs where the fused kernels do not: head dims 16 and 48, a v head dim unlike q's,
/// and f64.
#[test]
fn unfused_attention_jvp_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let cases = [
        (DType::F32, 16, 16),
        (DType::F32, 48, 48),
        (DType::F32, 32, 16),
        (DType::BF16, 16, 16),
        (DType::BF16, 48, 48),
        (DType::F16, 48, 48),
        (DType::F64, 64, 64),
    ];
    let mut failures = Vec::new();
    for (n, &(dt, d, dv)) in cases.iter().enumerate() {
        for (i, &(tq, tk)) in [(1, 1), (17, 63), (63, 17), (130, 130)].iter().enumerate() {
            for causal in [false, true] {
                let seed = 5000 + 100 * n as u64 + 10 * i as u64;
                failures.extend(jvp_failures(dev, dt, (tq, tk, d, dv), causal, seed));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Forward mode through head-split views read in place, and through bf16/f16 views that
/// must be copied first: output and tangent equal to the bit to those of contiguous
/// inputs and tangents.
#[test]
fn flash_attention_jvp_reads_views() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let (b, t, h, d) = (2, 33, 3, 64);
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let x = randn(7, &[b, t, h, d + 8], dt).to_device(dev)?;
        let tx = randn(8, &[b, t, h, d + 8], dt).to_device(dev)?;
        for start in [0, 1] {
            let heads = |x: &Tensor| x.narrow(3, start, d)?.permute(&[0, 2, 1, 3]);
            let (xs, txs) = (heads(&x)?, heads(&tx)?);
            let attend = |x: &Tensor, tx: &Tensor| -> Result<Vec<Vec<f64>>> {
                let f = |p: &[Tensor]| {
                    Ok(vec![scaled_dot_product_attention(
                        &p[0], &p[0], &p[0], None, true,
                    )?])
                };
                let (out, tangent) = jvp(f, std::slice::from_ref(x), std::slice::from_ref(tx))?;
                Ok(vec![out[0].to_vec_f64()?, tangent[0].to_vec_f64()?])
            };
            let got = attend(&xs, &txs)?;
            let want = attend(&xs.contiguous()?, &txs.contiguous()?)?;
            assert!(got == want, "{dt} from {start}: output or tangent differs");
        }
    }
    Ok(())
}

#[test]
fn flash_attention_matches_cpu_at_awkward_lengths() {
    let Some(dev) = gpu() else { return };
    let lengths = [
        (1, 1),
        (7, 7),
        (49, 49),
        (63, 63),
        (65, 65),
        (257, 257),
        (65, 7),
        (7, 257),
    ];
    let dtypes = [DType::F32, DType::BF16, DType::F16];
    let failures = failures_against_cpu(dev, &dtypes, &lengths);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The single-pass backward against the float64 CPU op at awkward lengths, bf16 and
/// f16, every head dim, with and without the mask, including 1,100 keys (nine key
/// blocks of 128 over five splits, eighteen of 64 at d = 128 over six: two and three
/// blocks a split); the same results run to run; `qkv_attention`'s joint gradient.
#[test]
fn single_pass_backward_matches_cpu_and_repeats() {
    let Some(dev) = gpu() else { return };
    let _on = Switched::on(
        || cuda::set_single_pass_attention_backward(true),
        || cuda::set_single_pass_attention_backward(false),
    );
    let lengths = [(1, 1), (49, 49), (65, 65), (257, 257), (7, 257), (65, 1100)];
    let mut failures = probe_failures(dev, DType::BF16);
    failures.extend(failures_against_cpu(
        dev,
        &[DType::BF16, DType::F16],
        &lengths,
    ));
    failures.extend(qkv_failures(dev, &[DType::BF16]));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_repeats(dev, &[DType::BF16, DType::F16]);
}

/// The Hopper forwards (`cuda::set_hopper_attention`: sm_90 cards, bf16/f16, head dims
/// 64 and 128), each with the backward from its output and log-sum-exp (on warpgroup
/// MMAs too, `fa_dq_sm90` and `fa_dkdv_sm90`): first on the probe's inputs, which on a
/// failure say which key or v column each output read (checked on the default kernels
/// first); then against the CPU at lengths over several 128-key tiles (and several uses
/// of each TMA stage) and unequal lengths both ways, through `qkv_attention` too; and
/// the same results run to run.
#[test]
fn hopper_forwards_match_cpu_and_repeat() {
    let Some(dev) = gpu() else { return };
    let arch = cuda::arch(0).expect("the device's architecture");
    if arch != "sm_90" {
        eprintln!("skipping: the Hopper forwards run on sm_90 cards, this one is {arch}");
        return;
    }
    let modes = [
        HopperAttention::CpAsync,
        HopperAttention::Tma,
        HopperAttention::TmaPingPong,
    ];
    // The probe on the default kernels first: a failure of the Hopper kernels' probe
    // below then says where they read, not that the probe is wrong.
    let control = {
        let _path = attention_path();
        probe_failures(dev, DType::BF16)
    };
    assert!(
        control.is_empty(),
        "the default kernels fail the probe:\n{}",
        control.join("\n")
    );
    for mode in modes {
        let _on = Switched::on(
            || cuda::set_hopper_attention(mode),
            || cuda::set_hopper_attention(HopperAttention::Off),
        );
        let lengths = [(1, 1), (49, 49), (129, 129), (7, 300), (300, 7), (65, 1100)];
        let mut failures = probe_failures(dev, DType::BF16);
        failures.extend(failures_against_cpu(
            dev,
            &[DType::BF16, DType::F16],
            &lengths,
        ));
        failures.extend(qkv_failures(dev, &[DType::BF16]));
        assert!(failures.is_empty(), "{mode:?}:\n{}", failures.join("\n"));
        assert_repeats(dev, &[DType::BF16, DType::F16]);
    }
}

/// The probe's inputs (`[1, 2, 2d, d]`, two heads) make a kernel show what it read:
/// query i of head h attends to key σₕ(i) alone (q and k rows are ± rows of a Hadamard
/// matrix, so a score is d for the chosen key and 0 or −d for every other, and with the
/// scale 1 the softmax is one-hot to the last bit), and v's row j holds j in column 0
/// and c in each column c ≥ 1; the output's gradient holds i in column 0 of row i and
/// zeros elsewhere. So column 0 of the output names the key each query was matched
/// with and its other columns the v column each was read from; column 0 of dv names the
/// query each key was matched with; dq and dk are zero (a one-hot softmax has no score
/// gradient). With `pairs`, query i attends to σₕ(i) and to the next Hadamard row of the
/// same sign, half each (its q row the sum of the two codes), v's column 0 holds j mod 64
/// and the output's gradient is 1 in column 0: then dS is ±(v_a − v_b)/4 on the two
/// keys, and dq and dk show where their products read it. Every value is a multiple of
/// 1/4 with at most 8 significant bits, exact in bf16 and f16. `scripts/flash_fragments.py` builds the same inputs.
fn probe_inputs(d: usize, dt: DType, pairs: bool) -> ([Tensor; 3], Tensor) {
    let t = 2 * d;
    let hadamard = |i: usize, j: usize| {
        if (i & j).count_ones().is_multiple_of(2) {
            1.0
        } else {
            -1.0
        }
    };
    // Key j's code: Hadamard row j for j < d, its negation for the next d.
    let code = |j: usize, c: usize| {
        let sign = if j < d { 1.0 } else { -1.0 };
        sign * hadamard(j % d, c)
    };
    // Key j's partner under `pairs`: the next Hadamard row, of the same sign.
    let partner = |j: usize| j / d * d + (j % d + 1) % d;
    // σₕ: a shuffle of 0..t by a linear congruential generator seeded with the head.
    let sigma = [0u64, 1].map(|h| {
        let mut order: Vec<usize> = (0..t).collect();
        let mut state = 0x9e37_79b9 + h;
        for i in (1..t).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(i, (state >> 33) as usize % (i + 1));
        }
        order
    });
    let fill = |f: &dyn Fn(usize, usize, usize) -> f64| {
        let values: Vec<f64> = (0..2 * t * d)
            .map(|n| f(n / (t * d), n / d % t, n % d))
            .collect();
        Tensor::from_f64s(&values, &[1, 2, t, d], dt, Device::Cpu).unwrap()
    };
    let q = fill(&|h, i, c| {
        let a = sigma[h][i];
        code(a, c) + if pairs { code(partner(a), c) } else { 0.0 }
    });
    let k = fill(&|_, j, c| code(j, c));
    // Under `pairs` an output is the mean of two rows: j mod 64 in column 0 keeps it
    // exact in bf16 (j itself needs nine bits for the half at d = 128).
    let v = fill(&|_, j, c| match (c, pairs) {
        (0, false) => j as f64,
        (0, true) => (j % 64) as f64,
        _ => c as f64,
    });
    let w = fill(&|_, i, c| match (c, pairs) {
        (0, false) => i as f64,
        (0, true) => 1.0,
        _ => 0.0,
    });
    ([q, k, v], w)
}

/// Output and (dq, dk, dv) of attention with scale 1 on `inputs` moved to `dev`,
/// under the output projection `w`, as values.
fn probe_run(dev: Device, inputs: &[Tensor; 3], w: &Tensor) -> [Vec<f64>; 4] {
    let on = |x: &Tensor| x.to_device(dev).unwrap();
    let results = run_scaled(&inputs.each_ref().map(on), &on(w), Some(1.0), false);
    let values = |x: &Tensor| x.to_device(Device::Cpu).unwrap().to_vec_f64().unwrap();
    std::array::from_fn(|i| values(&results[i]))
}

/// Runs the probe (`probe_inputs`, one-hot and in pairs) in `dt` on `dev` at head dims
/// 64 and 128 against the float64 CPU op on the same (exact) values: one line per
/// result with mismatches, its count and first places (head, row, column: got, want);
/// empty on a correct kernel. On a wrong one, the lines give the map that the kernels'
/// models (`--probe` of `scripts/flash_fragments.py` and `flash_sm90_model.py`) can be
/// set against.
fn probe_failures(dev: Device, dt: DType) -> Vec<String> {
    let mut failures = Vec::new();
    for pairs in [false, true] {
        for d in [64, 128] {
            let (inputs, w) = probe_inputs(d, dt, pairs);
            let got = probe_run(dev, &inputs, &w);
            let wide = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
            let want = probe_run(Device::Cpu, &inputs.each_ref().map(wide), &wide(&w));
            let kind = if pairs { "probe in pairs" } else { "probe" };
            for (what, (got, want)) in ["out", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                let t = 2 * d;
                let wrong: Vec<String> = (0..got.len())
                    .filter(|&n| {
                        let off = (got[n] - want[n]).abs();
                        off.is_nan() || off > 1e-2
                    })
                    .map(|n| {
                        let (h, row, c) = (n / (t * d), n / d % t, n % d);
                        format!("h{h} r{row} c{c}: {:.3} (want {:.3})", got[n], want[n])
                    })
                    .collect();
                if !wrong.is_empty() {
                    let first = wrong[..wrong.len().min(6)].join(", ");
                    failures.push(format!(
                        "{kind} {dt} d={d} {what}: {} wrong, e.g. {first}",
                        wrong.len()
                    ));
                }
            }
        }
    }
    failures
}

/// The probe's values are exact on the CPU, in f32 and bf16 (the f64 op gives the same
/// to the bit), and its one-hot outputs name what they should: so the GPU's failures
/// are the kernels'.
#[test]
fn probe_reads_back_its_permutations_on_the_cpu() {
    for dt in [DType::F32, DType::BF16] {
        let failures = probe_failures(Device::Cpu, dt);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
    for d in [64, 128] {
        let t = 2 * d;
        // One-hot: out's and dv's column 0 are permutations of 0..t in each head, dq
        // and dk zero (in f64 up to the other keys' weights, e⁻⁶⁴ each).
        let (inputs, w) = probe_inputs(d, DType::F64, false);
        let [out, dq, dk, dv] = probe_run(Device::Cpu, &inputs, &w);
        for values in [&out, &dv] {
            for h in 0..2 {
                let mut column: Vec<f64> = (0..t).map(|r| values[(h * t + r) * d]).collect();
                column.sort_by(f64::total_cmp);
                assert!(column
                    .iter()
                    .enumerate()
                    .all(|(r, &x)| (x - r as f64).abs() < 1e-6));
            }
        }
        assert!(dq.iter().chain(&dk).all(|x| x.abs() < 1e-6));
        // In pairs: the score gradients are not zero, so dq and dk are not either.
        let (inputs, w) = probe_inputs(d, DType::F64, true);
        let [_, dq, dk, _] = probe_run(Device::Cpu, &inputs, &w);
        let nonzero = |x: &[f64]| x.iter().filter(|v| v.abs() > 0.1).count();
        assert!(nonzero(&dq) > t && nonzero(&dk) > t);
    }
}

/// Output and gradients of attention of `dtypes` on the GPU against the float64 CPU op
/// at head dims 32, 64 and 128, each (tq, tk) of `lengths`, with and without the mask:
/// one line per result off by more than the dtype's tolerance.
fn failures_against_cpu(dev: Device, dtypes: &[DType], lengths: &[(usize, usize)]) -> Vec<String> {
    let mut failures = Vec::new();
    for &dt in dtypes {
        for d in [32, 64, 128] {
            for (i, &(tq, tk)) in lengths.iter().enumerate() {
                for causal in [false, true] {
                    let seed = 100 * d as u64 + i as u64;
                    // Inputs rounded to dt once; the reference computes on them in f64.
                    let inputs = [
                        randn(seed, &[2, 2, tq, d], dt),
                        randn(seed + 1, &[2, 2, tk, d], dt),
                        randn(seed + 2, &[2, 2, tk, d], dt),
                    ];
                    let w = randn(seed + 3, &[2, 2, tq, d], dt);
                    let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                    let reference = run(&inputs.each_ref().map(wide), &wide(&w), causal);
                    let on_gpu = |t: &Tensor| t.to_device(dev).unwrap();
                    let got = run(&inputs.each_ref().map(on_gpu), &on_gpu(&w), causal);
                    for (what, (g, r)) in ["out", "dq", "dk", "dv"]
                        .iter()
                        .zip(got.iter().zip(&reference))
                    {
                        let e = rel_err(&g.to_device(Device::Cpu).unwrap(), r);
                        if e > tolerance(dt) {
                            failures.push(format!(
                                "{dt} d={d} tq={tq} tk={tk} causal={causal} {what}: {e:e}"
                            ));
                        }
                    }
                }
            }
        }
    }
    failures
}

/// Output and gradient of `qkv_attention` on `qkv` `[b, t, 3·h·d]` under `w`, and the
/// same through `scaled_dot_product_attention` on its three head views.
fn run_qkv(qkv: &Tensor, w: &Tensor, heads: usize, causal: bool) -> [Tensor; 4] {
    let x = qkv.detach().into_variable().unwrap();
    let [b, t, width] = [0, 1, 2].map(|i| x.shape()[i]);
    let hd = width / 3;
    let out = qkv_attention(&x, heads, None, causal).unwrap();
    let grad = |y: &Tensor| {
        let g = y.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
        g.get(&x).expect("gradient").clone()
    };
    let part = |i: usize| {
        let p = x.narrow(2, i * hd, hd).unwrap();
        let p = p.reshape(&[b, t, heads, hd / heads]).unwrap();
        p.transpose(1, 2).unwrap()
    };
    let composed = scaled_dot_product_attention(&part(0), &part(1), &part(2), None, causal)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape(&[b, t, hd])
        .unwrap();
    let (g, gc) = (grad(&out), grad(&composed));
    [out, g, composed, gc]
}

/// `qkv_attention` on the GPU (the fused kernels writing the joint gradient at head
/// dims 32 and 64, and the unfused path interleaving three at 8): output and gradient
/// against the float64 CPU op, and equal, to the bit, to attention on the three views
/// of the same tensor on the GPU, whose separate gradients the views' backward pads
/// and adds.
#[test]
fn qkv_attention_matches_cpu_and_the_three_views() {
    let Some(dev) = gpu() else { return };
    let _path = attention_path();
    let failures = qkv_failures(dev, &[DType::F32, DType::BF16]);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `qkv_attention` of `dtypes` against the float64 CPU op and, to the bit, attention on
/// the three views: one line per difference.
fn qkv_failures(dev: Device, dtypes: &[DType]) -> Vec<String> {
    let mut failures = Vec::new();
    for &dt in dtypes {
        for (d, heads) in [(8, 2), (32, 4), (64, 2)] {
            for t in [7, 49, 65] {
                for causal in [false, true] {
                    let seed = 7 * d as u64 + t as u64;
                    let qkv = randn(seed, &[2, t, 3 * heads * d], dt);
                    let w = randn(seed + 1, &[2, t, heads * d], dt);
                    let wide = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
                    let reference = run_qkv(&wide(&qkv), &wide(&w), heads, causal);
                    let on_gpu = |x: &Tensor| x.to_device(dev).unwrap();
                    let got = run_qkv(&on_gpu(&qkv), &on_gpu(&w), heads, causal);
                    let case = format!("{dt} d={d} h={heads} t={t} causal={causal}");
                    for (what, i) in [("out", 0), ("gradient", 1)] {
                        let e = rel_err(&got[i].to_device(Device::Cpu).unwrap(), &reference[i]);
                        if e > tolerance(dt) {
                            failures.push(format!("{case} {what}: {e:e}"));
                        }
                        let bits = |x: &Tensor| x.to_vec_f64().unwrap();
                        if bits(&got[i]) != bits(&got[i + 2]) {
                            failures.push(format!("{case} {what} differs from the views'"));
                        }
                    }
                }
            }
        }
    }
    failures
}

/// Output and input gradient of causal self-attention of `x` (as a variable), the loss
/// taken through a permute so that the output gradient arrives as a view too.
fn self_attention(x: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor)> {
    let x = x.detach().into_variable()?;
    let out = scaled_dot_product_attention(&x, &x, &x, None, true)?;
    let loss = out.permute(&[0, 2, 1, 3])?.mul(w)?.sum_all()?;
    let grad = loss.backward()?.remove(&x).expect("gradient");
    Ok((out, grad))
}

/// Views as attention layers make them (heads split out of [b, t, h·d], read in place)
/// and views that must be copied first (bf16/f16 starting off 16-byte alignment) give
/// the same output and gradients, to the bit, as contiguous inputs.
#[test]
fn flash_attention_reads_views() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let _path = attention_path();
    let (b, t, h, d) = (2, 33, 3, 64);
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let x = randn(5, &[b, t, h, d + 8], dt).to_device(dev)?;
        let w = randn(6, &[b, t, h, d], dt).to_device(dev)?;
        for start in [0, 1] {
            let heads = x.narrow(3, start, d)?.permute(&[0, 2, 1, 3])?;
            let (out, grad) = self_attention(&heads, &w)?;
            let (want_out, want_grad) = self_attention(&heads.contiguous()?, &w)?;
            let bits = |t: &Tensor| t.to_vec_f64().unwrap();
            assert_eq!(bits(&out), bits(&want_out), "{dt} from {start}: output");
            assert_eq!(bits(&grad), bits(&want_grad), "{dt} from {start}: gradient");
        }
    }
    Ok(())
}

#[test]
fn flash_attention_is_deterministic() {
    let Some(dev) = gpu() else { return };
    let _path = attention_path();
    assert_repeats(dev, &[DType::F32, DType::BF16, DType::F16]);
}

/// Causal attention of `dtypes` and its gradients, four times on the same inputs:
/// the same values to the bit every time.
fn assert_repeats(dev: Device, dtypes: &[DType]) {
    for &dt in dtypes {
        let inputs = [0, 1, 2].map(|s| randn(s, &[2, 4, 257, 64], dt).to_device(dev).unwrap());
        let w = randn(3, &[2, 4, 257, 64], dt).to_device(dev).unwrap();
        let first: Vec<Vec<f64>> = run(&inputs, &w, true)
            .iter()
            .map(|t| t.to_vec_f64().unwrap())
            .collect();
        for _ in 0..3 {
            let again: Vec<Vec<f64>> = run(&inputs, &w, true)
                .iter()
                .map(|t| t.to_vec_f64().unwrap())
                .collect();
            assert!(first == again, "{dt}: results differ between runs");
        }
    }
}

/// 200 Adam steps of a transformer block regressing a fixed target, in f32 and under
/// bf16 autocast from the same initialisation: 10-step window means of the two loss
/// curves stay within 5% of each other.
#[test]
fn flash_attention_bf16_training_tracks_f32() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let curve = |low: Option<DType>| -> Result<Vec<f64>> {
        let mut pb = ParamBuilder::new(11).with_device(dev);
        let block = TransformerBlock::new(
            &mut pb,
            TransformerBlockConfig::new(128, 2),
            LinearConfig::default(),
        )?;
        let mut opt = Adam::new(
            block.named_params(),
            AdamConfig {
                lr: 1e-3,
                ..AdamConfig::adamw()
            },
        )?;
        let x = randn(12, &[8, 64, 128], DType::F32).to_device(dev)?;
        let target = randn(13, &[8, 64, 128], DType::F32).to_device(dev)?;
        let mut losses = Vec::new();
        for _ in 0..200 {
            let forward = || block.forward(&x)?.mse(&target);
            let loss = match low {
                Some(dt) => autocast(dt, forward)??,
                None => forward()?,
            };
            losses.push(loss.item()?);
            opt.step(&loss.backward()?)?;
        }
        Ok(losses)
    };
    let (full, mixed) = (curve(None)?, curve(Some(DType::BF16))?);
    assert!(
        full[199] < full[0],
        "the f32 run does not learn: {} → {}",
        full[0],
        full[199]
    );
    for (a, b) in full.chunks(10).zip(mixed.chunks(10)) {
        let (ma, mb) = (a.iter().sum::<f64>() / 10.0, b.iter().sum::<f64>() / 10.0);
        assert!((ma - mb).abs() <= 0.05 * ma, "f32 {ma} vs bf16 {mb}");
    }
    Ok(())
}
