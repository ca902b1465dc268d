//! Writes the inputs of the PyTorch parity fixtures (`tests/nn/parity.rs`): small models
//! with every parameter refilled with seeded random non-zero values (so that the
//! zero-initialised adaLN-Zero and output layers do not make the gradients trivial),
//! plus fixed inputs, as safetensors files PyTorch reads.
//!
//! Regenerate all fixtures from the repository root, in this order:
//!
//! ```text
//! cargo run --release --example export_parity_inputs
//! .venv-bench/bin/python tests/reference/make_parity_fixtures.py
//! ```
//!
//! Each `tests/fixtures/parity_<case>_inputs.safetensors` holds:
//! - `param.<name>`: every parameter of the model under its `named_params` name (f32);
//! - `input.x [B, D]`, `input.t [B]`, `input.tt [B]` (f32; negative times included, as
//!   on TwinFlow's fake trajectory), `input.labels [B]` (i64, the null class included,
//!   one label repeated so that the table's gradient accumulates), `input.target [B, D]`;
//! - metadata: `model` (`dit` or `mlp_velocity`), `config` (the model's config as
//!   JSON), `batch`, `seed`, and for the DiT cases `default_param_names`: the names and
//!   shapes of `Dit::new(.., DitConfig::default())` in order, which the Python script
//!   compares with the PyTorch anchor's `state_dict`.
//!
//! The files are written deterministically: running this twice gives identical bytes
//! (`tests/nn/parity.rs` checks that the expected files were made from these exact bytes).
//! The `safetensors` crate's own writer cannot promise that: it writes the metadata map
//! in `HashMap` order, which changes from run to run. So the header is assembled here
//! from the crate's `TensorInfo` entries with every map in sorted order, and the file is
//! read back with the crate before it is written.

use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;
use twinflow::engine::{DType, Device, Generator, Tensor};
use twinflow::nn::{Dit, DitConfig, MlpVelocity, MlpVelocityConfig, Module, ParamBuilder};

type Res<T> = std::result::Result<T, Box<dyn Error>>;

/// One fixture: a model and its inputs.
struct Case {
    /// File stem: `tests/fixtures/parity_<name>_inputs.safetensors`.
    name: &'static str,
    /// `dit` or `mlp_velocity`.
    kind: &'static str,
    /// The model's config as JSON.
    config: serde_json::Value,
    /// Values per sample.
    data_dim: usize,
    /// Seed of the parameter refill and of x and the target.
    seed: u64,
    t: Vec<f32>,
    tt: Vec<f32>,
    labels: Vec<i64>,
}

/// A tensor to write: its safetensors dtype, shape and little-endian bytes.
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Entry {
    /// i64 tensors as I64, every float tensor as F32.
    fn of(t: &Tensor) -> Res<Entry> {
        let (dtype, bytes) = match t.dtype() {
            DType::I64 => {
                let v = t.to_vec::<i64>()?;
                (
                    Dtype::I64,
                    v.into_iter().flat_map(i64::to_le_bytes).collect(),
                )
            }
            _ => {
                let v = t.to_dtype(DType::F32)?.to_vec::<f32>()?;
                (
                    Dtype::F32,
                    v.into_iter().flat_map(f32::to_le_bytes).collect(),
                )
            }
        };
        Ok(Entry {
            dtype,
            shape: t.shape().to_vec(),
            bytes,
        })
    }
}

/// Writes `tensors` and the string map `metadata` as a safetensors file: the 8-byte
/// little-endian header length, the JSON header (`__metadata__`, then one `TensorInfo`
/// per tensor in name order, keys sorted, padded with spaces to a multiple of 8 bytes),
/// then the tensors' bytes back to back in name order.
fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Entry>,
    metadata: &BTreeMap<String, String>,
) -> Res<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    let mut data = Vec::new();
    for (name, e) in tensors {
        let info = TensorInfo {
            dtype: e.dtype,
            shape: e.shape.clone(),
            data_offsets: (data.len(), data.len() + e.bytes.len()),
        };
        header.insert(name.clone(), serde_json::to_value(info)?);
        data.extend_from_slice(&e.bytes);
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend(json);
    file.extend(data);

    // The crate must read back every tensor, with its dtype and shape, and the metadata.
    let (_, parsed) = SafeTensors::read_metadata(&file)?;
    let read = SafeTensors::deserialize(&file)?;
    let round_trip = read.len() == tensors.len()
        && tensors.iter().all(|(name, e)| {
            read.tensor(name)
                .is_ok_and(|v| v.dtype() == e.dtype && v.shape() == e.shape.as_slice())
        })
        && parsed.metadata().as_ref().is_some_and(|m| {
            m.len() == metadata.len() && metadata.iter().all(|(k, v)| m.get(k) == Some(v))
        });
    if !round_trip {
        return Err(format!(
            "{}: the safetensors crate reads it back differently",
            path.display()
        )
        .into());
    }
    std::fs::write(path, file)?;
    Ok(())
}

/// Overwrites every parameter in place with uniform values of standard deviation
/// `1/√fan_in` (the last dim) for matrices and tables, and in ±0.5 for vectors: all
/// non-zero, activations of order one.
fn refill(model: &dyn Module, rng: &mut Generator) -> Res<()> {
    for (_, p) in model.named_params() {
        let bound = match p.shape() {
            [.., last] if p.rank() >= 2 => (3.0 / *last as f64).sqrt(),
            _ => 0.5,
        };
        p.assign(&rng.uniform(p.shape(), -bound, bound, p.dtype(), p.device())?)?;
    }
    Ok(())
}

/// `[[name, shape], ...]` of a model's parameters, in order, as JSON.
fn names_and_shapes(model: &dyn Module) -> serde_json::Value {
    let list: Vec<serde_json::Value> = model
        .named_params()
        .iter()
        .map(|(n, t)| serde_json::json!([n, t.shape()]))
        .collect();
    serde_json::Value::Array(list)
}

fn export(case: &Case, dir: &Path) -> Res<()> {
    let mut pb = ParamBuilder::new(case.seed);
    let mut model: Box<dyn Module> = match case.kind {
        "dit" => Box::new(Dit::new(
            &mut pb,
            serde_json::from_value(case.config.clone())?,
        )?),
        _ => Box::new(MlpVelocity::new(
            &mut pb,
            serde_json::from_value(case.config.clone())?,
        )?),
    };
    model.set_training(false);
    let mut rng = Generator::new(case.seed);
    refill(model.as_ref(), &mut rng)?;

    let (b, dev) = (case.labels.len(), Device::Cpu);
    let mut tensors = BTreeMap::new();
    for (name, p) in model.named_params() {
        tensors.insert(format!("param.{name}"), Entry::of(&p)?);
    }
    let x = rng.randn(&[b, case.data_dim], DType::F32, dev)?;
    let target = rng.randn(&[b, case.data_dim], DType::F32, dev)?;
    let inputs = [
        ("x", x),
        ("t", Tensor::from_slice(&case.t, &[b], dev)?),
        ("tt", Tensor::from_slice(&case.tt, &[b], dev)?),
        ("labels", Tensor::from_slice(&case.labels, &[b], dev)?),
        ("target", target),
    ];
    for (name, t) in &inputs {
        tensors.insert(format!("input.{name}"), Entry::of(t)?);
    }

    let mut metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("model".to_string(), case.kind.to_string()),
        ("config".to_string(), case.config.to_string()),
        ("batch".to_string(), b.to_string()),
        ("seed".to_string(), case.seed.to_string()),
        (
            "generator".to_string(),
            "cargo run --release --example export_parity_inputs".to_string(),
        ),
    ]);
    if case.kind == "dit" {
        let default = Dit::new(&mut ParamBuilder::new(0), DitConfig::default())?;
        metadata.insert(
            "default_param_names".to_string(),
            names_and_shapes(&default).to_string(),
        );
    }
    let path = dir.join(format!("parity_{}_inputs.safetensors", case.name));
    write_safetensors(&path, &tensors, &metadata)?;
    println!(
        "{}: {} parameters ({} tensors), batch {b}, {} bytes",
        path.display(),
        model.param_count(),
        model.named_params().len(),
        std::fs::metadata(&path)?.len()
    );
    Ok(())
}

fn main() -> Res<()> {
    let dit = DitConfig {
        image_size: 28,
        channels: 1,
        patch: 4,
        dim: 32,
        depth: 2,
        heads: 2,
        mlp_ratio: 4,
        num_classes: 10,
        label_dropout: 0.0,
        ..DitConfig::default()
    };
    // Several channels (channel-major tokens), three heads, another MLP ratio.
    let dit_rgb = DitConfig {
        image_size: 8,
        channels: 3,
        patch: 2,
        dim: 24,
        depth: 1,
        heads: 3,
        mlp_ratio: 2,
        num_classes: 5,
        label_dropout: 0.0,
        ..DitConfig::default()
    };
    let mlp = MlpVelocityConfig {
        data_dim: 784,
        width: 32,
        depth: 2,
        emb_dim: 32,
        num_classes: 10,
        label_dropout: 0.0,
        time_gated_skip: false,
        ..MlpVelocityConfig::default()
    };
    let cases = [
        Case {
            name: "dit",
            kind: "dit",
            config: serde_json::to_value(dit)?,
            data_dim: 784,
            seed: 1001,
            t: vec![0.9, -0.45, 0.3, -1.0],
            tt: vec![0.25, -0.1, 0.0, -0.6],
            labels: vec![3, 10, 3, 7],
        },
        Case {
            name: "dit_rgb",
            kind: "dit",
            config: serde_json::to_value(dit_rgb)?,
            data_dim: 3 * 8 * 8,
            seed: 1002,
            t: vec![0.7, -0.3, -0.85],
            tt: vec![0.2, -0.3, -0.05],
            labels: vec![5, 1, 1],
        },
        Case {
            name: "mlp",
            kind: "mlp_velocity",
            config: serde_json::to_value(mlp)?,
            data_dim: 784,
            seed: 1003,
            t: vec![1.0, -0.8, 0.5, -0.2, 0.05],
            tt: vec![0.4, -0.8, 0.0, -0.05, 0.01],
            labels: vec![0, 9, 10, 4, 9],
        },
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::create_dir_all(&dir)?;
    for case in &cases {
        export(case, &dir)?;
    }
    Ok(())
}
