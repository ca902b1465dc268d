//! Parity with PyTorch (the llm.c approach): our models, loaded with the weights of
//! committed fixtures, must reproduce PyTorch's output, MSE loss and every gradient.
//!
//! `tests/fixtures/parity_<case>_inputs.safetensors` (written by
//! `cargo run --release --example export_parity_inputs`) hold a small model's
//! parameters (`param.<name>`, all random and non-zero) and fixed inputs (`input.x`,
//! `input.t`, `input.tt` with negative times, `input.labels` with the null class,
//! `input.target`); `parity_<case>_expected.safetensors` (written by
//! `tests/reference/make_parity_fixtures.py` from them) hold PyTorch's `output`, `loss`
//! and `grad.<name>` / `grad.input.x`, computed in float64 and stored as float32. See
//! `tests/reference/README.md`. No PyTorch is needed here.
//!
//! Tolerances (relative error ‖ours − ref‖ / ‖ref‖ per tensor, in f32): 1e-5 for the
//! output and the loss, 1e-4 for each gradient. `cargo test --test nn parity:: -- --nocapture`
//! prints the measured errors.

use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use twinflow::engine::{DType, Device, Tensor};
use twinflow::nn::{
    Dit, DitConfig, MlpVelocity, MlpVelocityConfig, Module, ParamBuilder, VelocityModel,
};

/// Output and loss: relative error bound.
const FORWARD_TOL: f64 = 1e-5;
/// Each gradient: relative error bound.
const GRAD_TOL: f64 = 1e-4;

/// The tensors and metadata of a safetensors file.
struct SafeTensorsFile {
    path: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
    /// FNV-1a (64-bit) of the whole file, as the Python script records for the inputs.
    fnv1a64: String,
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fnv1a64(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    });
    format!("{h:016x}")
}

/// Reads a safetensors file with the `safetensors` crate (F32, F64 and I64 tensors).
fn read_safetensors(name: &str) -> SafeTensorsFile {
    let path = fixture_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; regenerate the fixtures as tests/reference/README.md says",
            path.display()
        )
    });
    let fail =
        |why: String| -> ! { panic!("{} is not a valid safetensors file: {why}", path.display()) };
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| fail(e.to_string()));
    let metadata = header.metadata().clone().unwrap_or_default();
    let file = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| fail(e.to_string()));
    let mut tensors = BTreeMap::new();
    for (key, view) in file.iter() {
        let (raw, shape, cpu) = (view.data(), view.shape(), Device::Cpu);
        let built = |r: twinflow::engine::Result<Tensor>| {
            r.unwrap_or_else(|e| fail(format!("`{key}`: {e}")))
        };
        let tensor = match view.dtype() {
            Dtype::F32 => built(Tensor::from_vec(le(raw, f32::from_le_bytes), shape, cpu)),
            Dtype::F64 => built(Tensor::from_vec(le(raw, f64::from_le_bytes), shape, cpu)),
            Dtype::I64 => built(Tensor::from_vec(le(raw, i64::from_le_bytes), shape, cpu)),
            other => fail(format!(
                "`{key}` has dtype {other:?} (expected F32, F64 or I64)"
            )),
        };
        tensors.insert(key.to_string(), tensor);
    }
    SafeTensorsFile {
        path,
        tensors,
        metadata: metadata.into_iter().collect(),
        fnv1a64: fnv1a64(&bytes),
    }
}

/// Little-endian bytes as values of `T` (`N` bytes each).
fn le<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| from(c.try_into().unwrap()))
        .collect()
}

impl SafeTensorsFile {
    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{} has no tensor `{name}`", self.path.display()))
    }

    fn meta(&self, key: &str) -> &str {
        self.metadata
            .get(key)
            .unwrap_or_else(|| panic!("{} has no metadata entry `{key}`", self.path.display()))
    }
}

/// One fixture: our model loaded with its weights, its inputs and PyTorch's values.
struct Case {
    name: &'static str,
    model: Box<dyn VelocityModel>,
    inputs: SafeTensorsFile,
    expected: SafeTensorsFile,
}

/// Builds the case's model from the config in its inputs file (any seed: every
/// parameter is then overwritten), in eval mode, and loads the exported weights by
/// name, refusing missing, unexpected or misshapen tensors.
fn load_case(name: &'static str) -> Case {
    let inputs = read_safetensors(&format!("parity_{name}_inputs.safetensors"));
    let expected = read_safetensors(&format!("parity_{name}_expected.safetensors"));
    assert_eq!(
        expected.meta("inputs_fnv1a64"),
        inputs.fnv1a64,
        "{} was made from other inputs than {}: rerun tests/reference/make_parity_fixtures.py",
        expected.path.display(),
        inputs.path.display()
    );
    assert_eq!(expected.meta("config"), inputs.meta("config"));
    let config = inputs.meta("config");
    let mut pb = ParamBuilder::new(7);
    let mut model: Box<dyn VelocityModel> = match inputs.meta("model") {
        "dit" => {
            let cfg: DitConfig = serde_json::from_str(config).unwrap();
            Box::new(Dit::new(&mut pb, cfg).unwrap())
        }
        "mlp_velocity" => {
            let cfg: MlpVelocityConfig = serde_json::from_str(config).unwrap();
            Box::new(MlpVelocity::new(&mut pb, cfg).unwrap())
        }
        other => panic!("unknown model `{other}` in {}", inputs.path.display()),
    };
    model.set_training(false);

    let mut problems = Vec::new();
    let params = model.named_params();
    for (pname, p) in &params {
        match inputs.tensors.get(&format!("param.{pname}")) {
            None => problems.push(format!("missing `param.{pname}` {:?}", p.shape())),
            Some(v) if v.shape() != p.shape() => problems.push(format!(
                "`param.{pname}` has shape {:?}, the model {:?}",
                v.shape(),
                p.shape()
            )),
            Some(v) => p.assign(v).unwrap(),
        }
    }
    let ours: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    for key in inputs.tensors.keys() {
        if let Some(pname) = key.strip_prefix("param.") {
            if !ours.contains(&pname) {
                problems.push(format!("unexpected `{key}`"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} does not fit the model: {}",
        inputs.path.display(),
        problems.join("; ")
    );
    Case {
        name,
        model,
        inputs,
        expected,
    }
}

/// Our output and loss, and the gradients of the loss by the expected file's names
/// (`grad.<param>`, `grad.input.x`).
struct Run {
    output: Tensor,
    loss: Tensor,
    grads: BTreeMap<String, Tensor>,
}

fn run(case: &Case) -> Run {
    let input = |n: &str| case.inputs.tensor(&format!("input.{n}"));
    let x = input("x").clone().into_variable().unwrap();
    let output = case
        .model
        .velocity(&x, input("t"), input("tt"), input("labels"))
        .unwrap();
    assert_eq!(output.dtype(), DType::F32);
    let loss = output.mse(input("target")).unwrap();
    let grads = loss.backward().unwrap();
    let mut named = BTreeMap::new();
    for (pname, p) in case.model.named_params() {
        let g = grads
            .get(&p)
            .unwrap_or_else(|| panic!("{}: no gradient reaches `{pname}`", case.name));
        named.insert(format!("grad.{pname}"), g.clone());
    }
    named.insert(
        "grad.input.x".to_string(),
        grads.get(&x).expect("a gradient reaches x").clone(),
    );
    Run {
        output,
        loss,
        grads: named,
    }
}

/// ‖ours − reference‖ / ‖reference‖, in f64.
fn rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.shape(), reference.shape());
    let (a, b) = (ours.to_vec_f64().unwrap(), reference.to_vec_f64().unwrap());
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (diff / norm).sqrt()
}

/// Compares each named tensor with the expected file's, printing every error and
/// failing with every tensor over `tol`, named, with its error.
fn check(case: &Case, what: &str, ours: &[(&str, &Tensor)], tol: f64) {
    let mut failures = Vec::new();
    let mut worst = (0.0f64, "");
    for &(name, t) in ours {
        let reference = case.expected.tensor(name);
        if t.shape() != reference.shape() {
            failures.push(format!(
                "`{name}`: shape {:?}, reference {:?}",
                t.shape(),
                reference.shape()
            ));
            continue;
        }
        let err = rel_err(t, reference);
        println!("{}: {name:<28} relative error {err:.3e}", case.name);
        if err > worst.0 {
            worst = (err, name);
        }
        if err.is_nan() || err >= tol {
            failures.push(format!("`{name}`: relative error {err:.3e} > {tol:e}"));
        }
    }
    println!(
        "{}: {what}: worst relative error {:.3e} ({}) over {} tensor(s), tolerance {tol:e}",
        case.name,
        worst.0,
        worst.1,
        ours.len()
    );
    assert!(
        failures.is_empty(),
        "{}: {what} differ from PyTorch ({}):\n  {}",
        case.name,
        case.expected.path.display(),
        failures.join("\n  ")
    );
}

fn check_forward(case: &Case, run: &Run) {
    check(case, "output", &[("output", &run.output)], FORWARD_TOL);
}

fn check_loss_and_gradients(case: &Case, run: &Run) {
    check(case, "loss", &[("loss", &run.loss)], FORWARD_TOL);
    // The expected file has a gradient for every parameter and for x, and no other.
    let expected: Vec<&String> = (case.expected.tensors.keys())
        .filter(|k| k.starts_with("grad."))
        .collect();
    let ours: Vec<&String> = run.grads.keys().collect();
    assert_eq!(
        ours, expected,
        "{}: our gradients and the reference's are not of the same tensors",
        case.name
    );
    let grads: Vec<(&str, &Tensor)> = run.grads.iter().map(|(n, g)| (n.as_str(), g)).collect();
    check(case, "gradients", &grads, GRAD_TOL);
}

#[test]
fn parity_dit_forward() {
    let case = load_case("dit");
    check_forward(&case, &run(&case));
}

#[test]
fn parity_dit_loss_and_gradients() {
    let case = load_case("dit");
    check_loss_and_gradients(&case, &run(&case));
}

/// Three channels (channel-major tokens), three heads, MLP ratio 2.
#[test]
fn parity_dit_rgb_forward_loss_and_gradients() {
    let case = load_case("dit_rgb");
    let run = run(&case);
    check_forward(&case, &run);
    check_loss_and_gradients(&case, &run);
}

#[test]
fn parity_mlp_velocity_forward() {
    let case = load_case("mlp");
    check_forward(&case, &run(&case));
}

#[test]
fn parity_mlp_velocity_gradients() {
    let case = load_case("mlp");
    check_loss_and_gradients(&case, &run(&case));
}

/// The default DiT's parameter names, shapes and order are those of the PyTorch
/// anchor's `DiT().state_dict()`, as the Python script recorded them.
#[test]
fn parity_dit_default_names_match_the_pytorch_anchor() {
    let expected = read_safetensors("parity_dit_expected.safetensors");
    let anchor: Vec<(String, Vec<usize>)> =
        serde_json::from_str(expected.meta("anchor_state_dict")).unwrap();
    let anchor_count: usize = expected.meta("anchor_param_count").parse().unwrap();
    let model = Dit::new(&mut ParamBuilder::new(0), DitConfig::default()).unwrap();
    let ours: Vec<(String, Vec<usize>)> = model
        .named_params()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    let differences: Vec<String> = (0..ours.len().max(anchor.len()))
        .filter(|&i| ours.get(i) != anchor.get(i))
        .map(|i| format!("#{i}: ours {:?}, anchor {:?}", ours.get(i), anchor.get(i)))
        .collect();
    assert!(
        differences.is_empty(),
        "Dit::new(DitConfig::default()) and the anchor's DiT() state_dict differ:\n  {}",
        differences.join("\n  ")
    );
    assert_eq!(model.param_count(), anchor_count);
    assert_eq!(model.param_count(), 1_298_320);
}
