//! Checkpoints: exact round trips of parameters, EMA, optimizer and RNG state (so that a
//! resumed run continues exactly as an uninterrupted one), every dtype, mismatch and
//! corruption reports, and replacement through a temporary file.

use std::fs;
use std::path::{Path, PathBuf};
use twinflow::engine::{DType, Device, Generator, Tensor};
use twinflow::nn::{
    impl_module, Adam, AdamConfig, Checkpoint, CheckpointError, Ema, Forward, Linear, LinearConfig,
    Module, Optimizer, ParamBuilder,
};

use crate::common::vals;

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinflow-ckpt-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A small two-layer network built from `Linear`.
#[derive(Clone)]
struct TwoLayer {
    fc1: Linear,
    fc2: Linear,
}

impl TwoLayer {
    fn new(seed: u64) -> Self {
        let mut pb = ParamBuilder::new(seed);
        TwoLayer {
            fc1: Linear::new(&mut pb, 3, 8, LinearConfig::default()).unwrap(),
            fc2: Linear::new(&mut pb, 8, 2, LinearConfig::default()).unwrap(),
        }
    }
}

impl Forward for TwoLayer {
    fn forward(&self, x: &Tensor) -> twinflow::engine::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.tanh()?)
    }
}

impl_module! { TwoLayer { fc1, fc2 } }

/// A module with whatever parameters a test lists.
#[derive(Clone)]
struct Params(Vec<(String, Tensor)>);

impl Params {
    fn of(spec: &[(&str, &[usize], DType)]) -> Self {
        let tensor = |shape: &[usize], dtype| {
            let n: usize = shape.iter().product();
            let data: Vec<f64> = (0..n).map(|i| i as f64 - 1.5).collect();
            Tensor::from_f64s(&data, shape, DType::F64, Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        Params(
            spec.iter()
                .map(|(n, s, d)| (n.to_string(), tensor(s, *d)))
                .collect(),
        )
    }
}

// Written by hand: the parameters and their names are chosen at run time, not fields.
impl Module for Params {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        self.0.iter().for_each(|(n, t)| f(n, t));
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.0.iter_mut().for_each(|(n, t)| f(n, t));
    }
}

fn input() -> Tensor {
    let data = [0.3, -1.2, 0.8, 2.0, 0.1, -0.4];
    Tensor::from_f64s(&data, &[2, 3], DType::F32, Device::Cpu).unwrap()
}

#[test]
fn a_restored_model_has_identical_parameters_and_outputs() {
    let dir = scratch("round-trip");
    let path = dir.join("model.safetensors");
    let saved = TwoLayer::new(1);
    let config = serde_json::json!({"hidden": 8, "activation": "tanh"});
    Checkpoint::new(7, &saved)
        .with_config(config.clone())
        .save(&path)
        .unwrap();

    let mut fresh = TwoLayer::new(2);
    assert_ne!(vals(&fresh.fc1.weight), vals(&saved.fc1.weight));
    let ckpt = Checkpoint::load(&path).unwrap();
    ckpt.restore_model(&mut fresh).unwrap();
    assert_eq!((ckpt.step, ckpt.config), (7, Some(config)));
    for ((n, a), (m, b)) in saved.named_params().iter().zip(fresh.named_params()) {
        assert_eq!((n, vals(a)), (&m, vals(&b)));
        assert!(b.is_variable(), "{m} must stay trainable");
    }
    let (y_saved, y_fresh) = (saved.forward(&input()), fresh.forward(&input()));
    assert_eq!(vals(&y_saved.unwrap()), vals(&y_fresh.unwrap()));
    fs::remove_dir_all(dir).unwrap();
}

/// The training state of the resume test.
struct Run {
    model: TwoLayer,
    opt: Adam,
    ema: Ema<TwoLayer>,
    data: Generator,
}

impl Run {
    fn new(seed: u64) -> Self {
        let model = TwoLayer::new(seed);
        let cfg = AdamConfig {
            lr: 0.01,
            ..AdamConfig::adamw()
        };
        let opt = Adam::new(model.named_params(), cfg).unwrap();
        let ema = Ema::new(&model, 0.9).unwrap();
        Run {
            model,
            opt,
            ema,
            data: Generator::new(seed + 100),
        }
    }

    /// One step on a random batch drawn from the run's data stream.
    fn step(&mut self) {
        let x = self.data.randn(&[4, 3], DType::F32, Device::Cpu).unwrap();
        let y = self.model.forward(&x).unwrap();
        let grads = y.square().unwrap().mean_all().unwrap().backward().unwrap();
        self.opt.step(&grads).unwrap();
        self.ema.update(&self.model).unwrap();
    }

    fn snapshot(&self) -> Vec<Vec<f64>> {
        let ema = self.ema.shadow().unwrap().named_params();
        let all = self.model.named_params().into_iter().chain(ema);
        all.map(|(_, t)| vals(&t)).collect()
    }
}

#[test]
fn a_resumed_run_continues_exactly_like_an_uninterrupted_one() {
    let dir = scratch("resume");
    let path = dir.join("run.safetensors");
    let mut run = Run::new(10);
    for _ in 0..3 {
        run.step();
    }
    Checkpoint::new(3, &run.model)
        .with_ema(&run.ema)
        .with_optimizer(&run.opt)
        .with_rng("data", run.data.state())
        .save(&path)
        .unwrap();
    for _ in 0..2 {
        run.step();
    }

    let mut resumed = Run::new(99);
    let ckpt = Checkpoint::load(&path).unwrap();
    ckpt.restore_model(&mut resumed.model).unwrap();
    ckpt.restore_ema(&mut resumed.ema).unwrap();
    ckpt.restore_optimizer(&mut resumed.opt).unwrap();
    resumed.data.set_state(ckpt.rng("data").unwrap());
    assert_eq!(resumed.ema.state(), {
        let mut r = Run::new(10);
        (0..3).for_each(|_| r.step());
        r.ema.state()
    });
    for _ in 0..2 {
        resumed.step();
    }
    assert_eq!(resumed.snapshot(), run.snapshot());
    assert_eq!(resumed.opt.config(), run.opt.config());
    let err = ckpt.rng("noise").unwrap_err().to_string();
    assert!(err.contains("`noise`") && err.contains("data"), "{err}");
    fs::remove_dir_all(dir).unwrap();
}

const ALL_DTYPES: &[(&str, &[usize], DType)] = &[
    ("w32", &[2, 3], DType::F32),
    ("w64", &[3], DType::F64),
    ("wbf16", &[2, 2], DType::BF16),
    ("wf16", &[4], DType::F16),
    ("ids", &[5], DType::I64),
    ("scalar", &[], DType::F32),
];

/// Set `TWINFLOW_REFERENCE_CHECKPOINT=<file>` to also write this checkpoint there for
/// `tests/reference/load_checkpoint.py`.
#[test]
fn every_dtype_survives_a_round_trip() {
    let dir = scratch("dtypes");
    let path = dir.join("all.safetensors");
    let saved = Params::of(ALL_DTYPES);
    let ckpt = Checkpoint::new(42, &saved)
        .with_rng("forward", Generator::new(5).state())
        .with_config(serde_json::json!({"dtypes": "all"}));
    ckpt.save(&path).unwrap();
    if let Ok(reference) = std::env::var("TWINFLOW_REFERENCE_CHECKPOINT") {
        ckpt.save(reference).unwrap();
    }
    let mut loaded = Params::of(ALL_DTYPES);
    loaded
        .0
        .iter()
        .for_each(|(_, t)| t.assign(&t.zeros_like().unwrap()).unwrap());
    let back = Checkpoint::load(&path).unwrap();
    back.restore_model(&mut loaded).unwrap();
    for ((name, a), (_, b)) in saved.0.iter().zip(&loaded.0) {
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
        assert_eq!(vals(a), vals(b), "{name}");
    }
    assert_eq!(back.rng("forward").unwrap(), Generator::new(5).state());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_mismatched_model_is_refused_with_every_problem_named() {
    let dir = scratch("mismatch");
    let path = dir.join("ckpt.safetensors");
    let saved = Params::of(&[
        ("kept", &[2], DType::F32),
        ("extra", &[3], DType::F32),
        ("misshapen", &[2, 3], DType::F32),
        ("mistyped", &[2], DType::F64),
    ]);
    Checkpoint::new(0, &saved).save(&path).unwrap();
    let mut target = Params::of(&[
        ("kept", &[2], DType::F32),
        ("missing", &[4], DType::F32),
        ("misshapen", &[3, 2], DType::F32),
        ("mistyped", &[2], DType::F32),
    ]);
    let before = vals(&target.0[0].1);
    let err = Checkpoint::load(&path)
        .unwrap()
        .restore_model(&mut target)
        .unwrap_err();
    assert!(matches!(err, CheckpointError::Mismatch { ref problems, .. } if problems.len() == 4));
    let msg = err.to_string();
    for needle in [
        "missing tensor `model.missing`",
        "unexpected tensor `model.extra`",
        "`model.misshapen` has shape [2, 3], expected [3, 2]",
        "`model.mistyped` has dtype f64, expected f32",
        "ckpt.safetensors",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    // Nothing was changed.
    assert_eq!(vals(&target.0[0].1), before);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_ema_or_optimizer_that_does_not_fit_is_refused() {
    let dir = scratch("parts");
    let path = dir.join("ckpt.safetensors");
    let run = Run::new(1);
    Checkpoint::new(0, &run.model)
        .with_ema(&run.ema)
        .save(&path)
        .unwrap();
    let ckpt = Checkpoint::load(&path).unwrap();
    let mut other_target = Ema::new(&run.model, 0.5).unwrap();
    let err = ckpt.restore_ema(&mut other_target).unwrap_err().to_string();
    assert!(err.contains("decay target 0.9"), "{err}");
    let mut opt = Adam::new(run.model.named_params(), AdamConfig::default()).unwrap();
    let err = ckpt.restore_optimizer(&mut opt).unwrap_err().to_string();
    assert!(err.contains("no optimizer state"), "{err}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_or_corrupt_files_give_clear_errors() {
    let dir = scratch("corrupt");
    let path = dir.join("good.safetensors");
    Checkpoint::new(1, &TwoLayer::new(1)).save(&path).unwrap();
    let bytes = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("empty", vec![], "too few for the 8-byte header length"),
        (
            "header",
            bytes[..8 + header_len / 2].to_vec(),
            "runs past the end",
        ),
        ("data", bytes[..bytes.len() - 10].to_vec(), "truncated"),
        (
            "garbage",
            b"\x10\0\0\0\0\0\0\0not json at all!".to_vec(),
            "not valid",
        ),
        (
            "foreign",
            foreign_safetensors(),
            "not a TwinFlow checkpoint",
        ),
    ];
    for (name, content, needle) in cases {
        let bad = dir.join(format!("{name}.safetensors"));
        fs::write(&bad, content).unwrap();
        let err = Checkpoint::load(&bad).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Corrupt { .. }),
            "{name}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(needle) && msg.contains(&*bad.to_string_lossy()),
            "{name}: {msg}"
        );
    }
    let err = Checkpoint::load(dir.join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert!(err.to_string().contains("absent.safetensors"), "{err}");
    fs::remove_dir_all(dir).unwrap();
}

/// A valid safetensors file without TwinFlow's metadata: a single 4-byte F32 tensor.
fn foreign_safetensors() -> Vec<u8> {
    let header = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&1.0f32.to_le_bytes());
    out
}

#[test]
fn saving_over_a_checkpoint_replaces_it_whole_and_leaves_no_temporary_file() {
    let dir = scratch("replace");
    let path = dir.join("latest.safetensors");
    Checkpoint::new(1, &TwoLayer::new(1)).save(&path).unwrap();
    let newer = TwoLayer::new(2);
    Checkpoint::new(2, &newer).save(&path).unwrap();
    assert_eq!(files_in(&dir), ["latest.safetensors"]);
    let ckpt = Checkpoint::load(&path).unwrap();
    assert_eq!(ckpt.step, 2);
    let mut restored = TwoLayer::new(3);
    ckpt.restore_model(&mut restored).unwrap();
    assert_eq!(
        vals(&restored.fc2.bias.unwrap()),
        vals(&newer.fc2.bias.unwrap())
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failed_save_leaves_the_directory_as_it_was() {
    let dir = scratch("failed-save");
    // The rename over a non-empty directory fails after the temporary file is written.
    let blocked = dir.join("blocked.safetensors");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("keep"), b"x").unwrap();
    let err = Checkpoint::new(1, &TwoLayer::new(1))
        .save(&blocked)
        .unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert!(err.to_string().contains("blocked.safetensors"), "{err}");
    assert_eq!(files_in(&dir), ["blocked.safetensors"]);
    assert_eq!(files_in(&blocked), ["keep"]);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn checkpoint_errors_convert_to_engine_errors() {
    fn load_step(path: &Path) -> twinflow::engine::Result<u64> {
        Ok(Checkpoint::load(path)?.step)
    }
    let err = load_step(Path::new("/nonexistent/dir/x.safetensors")).unwrap_err();
    assert!(err.to_string().contains("x.safetensors"), "{err}");
}

#[test]
fn errors_above_the_engine_keep_their_causes() {
    use std::error::Error as _;
    use twinflow::engine::{report, Error};
    use twinflow::nn::{Checkpoint, CheckpointError};

    let missing = std::path::Path::new("no/such/dir/file.bin");
    let io = std::fs::read(missing).unwrap_err();
    let err = Error::io("config", missing, io);
    assert_eq!(err.to_string(), "config: no/such/dir/file.bin");
    let line = report(&err);
    assert!(line.starts_with("config: no/such/dir/file.bin: "), "{line}");
    assert!(err.source().unwrap().is::<std::io::Error>());

    // A checkpoint error reaches engine-level callers whole, and can be downcast.
    let ck_err = Checkpoint::load(missing).unwrap_err();
    let wrapped = Error::caused("train", "init_from", ck_err);
    let line = report(&wrapped);
    assert!(
        line.starts_with("train: init_from: checkpoint no/such/dir/file.bin: "),
        "{line}"
    );
    let cause = wrapped.source().unwrap();
    assert!(matches!(
        cause.downcast_ref::<CheckpointError>(),
        Some(CheckpointError::Io { .. })
    ));
    let passed: Error = Checkpoint::load(missing).unwrap_err().into();
    assert!(matches!(passed, Error::External(_)));
    assert_eq!(
        report(&passed).matches("no/such/dir/file.bin").count(),
        1,
        "each level says its part once: {}",
        report(&passed)
    );
}

/// Floats that serde_json's default parser reads back one ulp off (found by search);
/// the `float_roundtrip` feature reads every one back exactly.
const ULP_SENSITIVE: [f64; 4] = [
    0.9393907037017981,
    0.9175286716854033,
    0.9849407209570331,
    1.0715660391465826e-75,
];

#[test]
fn metadata_floats_round_trip_exactly() {
    let dir = scratch("floats");
    let path = dir.join("floats.safetensors");
    let run = Run::new(3);
    let mut ckpt = Checkpoint::new(1, &run.model).with_ema(&run.ema);
    let snapshot = ckpt.ema.as_mut().unwrap();
    snapshot.state.decay = ULP_SENSITIVE[0];
    snapshot.state.target = ULP_SENSITIVE[1];
    let mut g = Generator::new(5);
    let random = g
        .uniform(&[2000], -1.0, 1.0, DType::F64, Device::Cpu)
        .unwrap();
    let mut floats = ULP_SENSITIVE.to_vec();
    floats.extend(random.to_vec::<f64>().unwrap().iter().map(|v| v * 1e-3));
    ckpt = ckpt.with_config(serde_json::json!({ "floats": floats }));
    ckpt.save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    let state = loaded.ema.as_ref().unwrap().state;
    assert_eq!(state.decay.to_bits(), ULP_SENSITIVE[0].to_bits());
    assert_eq!(state.target.to_bits(), ULP_SENSITIVE[1].to_bits());
    let back: Vec<f64> = serde_json::from_value(loaded.config.unwrap()["floats"].clone()).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back), bits(&floats));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_same_checkpoint_always_gives_the_same_bytes() {
    let dir = scratch("same-bytes");
    let mut run = Run::new(4);
    run.step();
    let config = serde_json::json!({"b": 1, "a": {"z": 0.5, "y": [1, 2]}, "c": "text"});
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let path = dir.join(format!("{i}.safetensors"));
            Checkpoint::new(1, &run.model)
                .with_ema(&run.ema)
                .with_optimizer(&run.opt)
                .with_rng("data", run.data.state())
                .with_rng("noise", Generator::new(9).state())
                .with_config(config.clone())
                .save(&path)
                .unwrap();
            fs::read(&path).unwrap()
        })
        .collect();
    assert!(files.windows(2).all(|w| w[0] == w[1]));
    // Still a safetensors file any reader takes: the format's own parser, and the
    // metadata keys in order.
    let parsed = safetensors::SafeTensors::deserialize(&files[0]).unwrap();
    assert_eq!(
        parsed.names().len(),
        Checkpoint::load(dir.join("0.safetensors"))
            .unwrap()
            .model
            .len()
            * 4
    );
    let header_len = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
    assert_eq!(header_len % 8, 0);
    let header = std::str::from_utf8(&files[0][8..8 + header_len]).unwrap();
    let keys = [
        "\"config\"",
        "\"ema\"",
        "\"format\"",
        "\"optimizer\"",
        "\"rng\"",
        "\"step\"",
    ];
    let at: Vec<usize> = keys.iter().map(|k| header.find(k).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{header}");
    fs::remove_dir_all(dir).unwrap();
}
