//! Starting a run from another run's weights (`init_from`, `twinflow train --init-from`):
//! θ and θ⁻ are loaded bit for bit while the step, optimizer, EMA warm-up, random
//! streams and data order start fresh; the method may differ but the network must
//! match, and every mismatch is an error naming the file and the difference; resuming
//! such a run never reads the init file again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use twinflow::flow::train::{TrainConfig, TrainControl, TrainEvent, Trainer};
use twinflow::nn::{Checkpoint, Module};

const BIN: &str = env!("CARGO_BIN_EXE_twinflow");

/// A small MLP for the 2-class toys.
const MLP: &str = r#"kind = "mlp"
[model.mlp]
data_dim = 2
width = 32
depth = 1
emb_dim = 8
num_classes = 2"#;

/// A DiT that fits 2-D points: one 1×1 "pixel" with 2 channels.
const DIT: &str = r#"kind = "dit"
[model.dit]
image_size = 1
channels = 2
patch = 1
dim = 8
depth = 1
heads = 2
mlp_ratio = 1
num_classes = 2"#;

const FLOW_MATCHING: &str = r#"name = "flow_matching""#;

const TWINFLOW: &str = r#"name = "twinflow"
[method.twinflow]
recipe = "full"
[method.twinflow.base]
order = 1"#;

/// A tiny moons run of `steps` steps with `method` and `model` (`[method]` and
/// `[model]` bodies); `top` adds top-level keys.
fn moons_toml(steps: u64, method: &str, model: &str, top: &str) -> String {
    format!(
        r#"
steps = {steps}
seed = 3
ema_decay = 0.9
log_every = 1
sample_nfe = [1]
{top}

[model]
{model}

[method]
{method}

[optimizer]
lr = 2e-3

[data]
dataset = "moons"
batch_size = 32
"#
    )
}

fn config(method: &str, model: &str, top: &str) -> TrainConfig {
    TrainConfig::from_toml(&moons_toml(4, method, model, top), "test.toml").unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinflow-init-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Trains `cfg` for `steps` steps, saves it under `dir` and returns the checkpoint file
/// with the trainer.
fn saved_run(cfg: TrainConfig, steps: usize, dir: &Path) -> (PathBuf, Trainer) {
    let mut trainer = Trainer::new(cfg).unwrap();
    for _ in 0..steps {
        trainer.step().unwrap();
    }
    (trainer.save(dir).unwrap(), trainer)
}

/// `cfg` starting from `path`.
fn init_from(mut cfg: TrainConfig, path: &Path) -> TrainConfig {
    cfg.init_from = Some(path.to_path_buf());
    cfg
}

/// Every parameter's name and values, for bitwise comparisons.
fn values(model: &dyn Module) -> Vec<(String, Vec<u32>)> {
    model
        .named_params()
        .into_iter()
        .map(|(n, t)| {
            let bits = t.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits);
            (n, bits.collect())
        })
        .collect()
}

fn losses(trainer: &mut Trainer, steps: usize) -> Vec<(u64, u64)> {
    (0..steps)
        .map(|_| {
            let r = trainer.step().unwrap();
            (r.step, r.loss.to_bits())
        })
        .collect()
}

/// Why the run cannot start, with the causes, as the command line prints it.
fn init_error(cfg: TrainConfig) -> String {
    twinflow::engine::report(&Trainer::new(cfg).unwrap_err())
}

#[test]
fn init_from_loads_online_and_ema_weights_bit_for_bit() {
    let dir = temp_dir("weights");
    // (source ema_decay, new ema_decay): with and without an EMA on either side, and a
    // frozen θ⁻ (decay target 1) that must be the loaded one, not the random init.
    for (source_decay, new_decay) in [(0.9, 0.9), (0.0, 0.9), (0.9, 0.0), (0.9, 1.0)] {
        let case = dir.join(format!("{source_decay}-{new_decay}"));
        let mut source_cfg = config(FLOW_MATCHING, MLP, "");
        source_cfg.ema_decay = source_decay;
        let (path, source) = saved_run(source_cfg, 3, &case);
        let source_ema = values(source.ema_model());
        if source_decay > 0.0 {
            assert_ne!(
                source_ema,
                values(source.model()),
                "θ⁻ should differ from θ"
            );
        }

        let mut cfg = init_from(config(FLOW_MATCHING, MLP, ""), &path);
        cfg.seed = 11;
        cfg.ema_decay = new_decay;
        let mut trainer = Trainer::new(cfg).unwrap();
        assert_eq!(trainer.step_count(), 0);
        assert_eq!(values(trainer.model()), values(source.model()));
        let expected_ema = match (source_decay > 0.0, new_decay > 0.0) {
            (_, false) => values(source.model()), // θ⁻ is θ
            (true, true) => source_ema,
            (false, true) => values(source.model()),
        };
        assert_eq!(values(trainer.ema_model()), expected_ema, "{case:?}");
        if new_decay == 1.0 {
            trainer.step().unwrap();
            assert_eq!(values(trainer.ema_model()), expected_ema, "frozen θ⁻");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn init_from_starts_everything_but_the_weights_fresh() {
    let dir = temp_dir("fresh");
    let (path, _) = saved_run(config(FLOW_MATCHING, MLP, ""), 3, &dir.join("source"));
    let mut cfg = config(TWINFLOW, MLP, "");
    cfg.seed = 11;
    let started = Trainer::new(init_from(cfg.clone(), &path)).unwrap();
    let fresh = Trainer::new(cfg).unwrap();
    // Saved at step 0, the two runs differ in their weights and the `init_from` key only.
    let a = Checkpoint::load(started.save(dir.join("started")).unwrap()).unwrap();
    let b = Checkpoint::load(fresh.save(dir.join("fresh")).unwrap()).unwrap();
    assert_eq!((a.step, b.step), (0, 0));
    assert_eq!(a.rng, b.rng, "generators");
    let (ea, eb) = (a.ema.as_ref().unwrap(), b.ema.as_ref().unwrap());
    assert_eq!(ea.state, eb.state, "EMA warm-up");
    assert_eq!(ea.state.updates, 0);
    let (oa, ob) = (a.optimizer.as_ref().unwrap(), b.optimizer.as_ref().unwrap());
    assert_eq!(oa.record, ob.record, "optimizer record");
    for ((n, x), (_, y)) in oa.tensors.iter().zip(&ob.tensors) {
        assert_eq!(
            x.to_vec::<f32>().unwrap(),
            y.to_vec::<f32>().unwrap(),
            "{n}"
        );
    }
    let mut meta = a.config.clone().unwrap();
    assert_eq!(
        meta["train"]["init_from"].as_str(),
        Some(path.to_str().unwrap())
    );
    meta["train"].as_object_mut().unwrap().remove("init_from");
    assert_eq!(meta, b.config.clone().unwrap(), "config and data state");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flow_matching_run_initialises_a_twinflow_run() {
    let dir = temp_dir("methods");
    let (path, source) = saved_run(config(FLOW_MATCHING, MLP, ""), 3, &dir.join("source"));
    // The key as written in a config file.
    let top = format!("init_from = {:?}", path.to_str().unwrap());
    let toml = moons_toml(2, TWINFLOW, MLP, &top);
    let cfg = TrainConfig::from_toml(&toml, "twinflow.toml").unwrap();
    assert_eq!(cfg.init_from.as_deref(), Some(path.as_path()));
    let mut trainer = Trainer::new(cfg).unwrap();
    assert_eq!(values(trainer.model()), values(source.model()));
    let run = dir.join("run");
    let mut records = Vec::new();
    trainer
        .train(&run, |_, event| {
            if let TrainEvent::Step(record) = event {
                records.push(record.clone());
            }
            Ok(TrainControl::Continue)
        })
        .unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.loss.is_finite() && !r.skipped));
    assert_ne!(values(trainer.model()), values(source.model()));
    // The run's resolved config says where it started.
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("init_from"), "{resolved}");
    let reread = TrainConfig::from_toml(&resolved, "config.toml").unwrap();
    assert_eq!(&reread, trainer.config());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_different_network_is_refused_naming_the_difference() {
    let dir = temp_dir("mismatch");
    let source_cfg = config(FLOW_MATCHING, MLP, "");
    let (path, source) = saved_run(source_cfg, 0, &dir.join("mlp"));
    let file = path.to_str().unwrap();

    // Width: every misshapen parameter is named with both shapes.
    let narrow = MLP.replace("width = 32", "width = 16");
    let cfg = config(FLOW_MATCHING, &narrow, "");
    let ours = Trainer::new(cfg.clone()).unwrap();
    let err = init_error(init_from(cfg, &path));
    assert!(err.contains("init_from") && err.contains(file), "{err}");
    let theirs = source.model().named_params();
    let mut differing = 0;
    for ((name, mine), (_, saved)) in ours.model().named_params().iter().zip(&theirs) {
        if mine.shape() != saved.shape() {
            differing += 1;
            let sentence = format!(
                "`model.{name}` has shape {:?}, expected {:?}",
                saved.shape(),
                mine.shape()
            );
            assert!(err.contains(&sentence), "{err} lacks {sentence}");
        }
    }
    assert!(differing > 0);

    // A parameter too many or too few.
    let gated = MLP.replace("num_classes = 2", "num_classes = 2\ntime_gated_skip = true");
    let err = init_error(init_from(config(FLOW_MATCHING, &gated, ""), &path));
    assert!(
        err.contains(file) && err.contains("missing tensor"),
        "{err}"
    );
    let gated_cfg = config(FLOW_MATCHING, &gated, "");
    let (gated_path, _) = saved_run(gated_cfg, 0, &dir.join("gated"));
    let err = init_error(init_from(config(FLOW_MATCHING, MLP, ""), &gated_path));
    assert!(err.contains("unexpected tensor"), "{err}");

    // Model kind.
    let (dit_path, _) = saved_run(config(FLOW_MATCHING, DIT, ""), 0, &dir.join("dit"));
    let err = init_error(init_from(config(FLOW_MATCHING, MLP, ""), &dit_path));
    assert!(err.contains(dit_path.to_str().unwrap()), "{err}");
    assert!(
        err.contains("model.kind") && err.contains("\"dit\"") && err.contains("\"mlp\""),
        "{err}"
    );

    // Class count: 8gaussians has 8 classes, moons 2.
    let eight_classes = MLP.replace("num_classes = 2", "num_classes = 8");
    let mut eight = config(FLOW_MATCHING, &eight_classes, "");
    eight.data.dataset = "8gaussians".into();
    let (eight_path, _) = saved_run(eight, 0, &dir.join("eight"));
    let err = init_error(init_from(config(FLOW_MATCHING, MLP, ""), &eight_path));
    assert!(err.contains(eight_path.to_str().unwrap()), "{err}");
    assert!(
        err.contains("8 classes") && err.contains("model.mlp.num_classes"),
        "{err}"
    );
    assert!(err.contains("this run's 2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_or_foreign_file_is_refused_naming_it() {
    let dir = temp_dir("missing");
    let missing = dir.join("nope.safetensors");
    let err = init_error(init_from(config(FLOW_MATCHING, MLP, ""), &missing));
    assert!(
        err.contains("init_from") && err.contains(missing.to_str().unwrap()),
        "{err}"
    );

    // A checkpoint of a model alone (no training config) is not a trainer checkpoint.
    let trainer = Trainer::new(config(FLOW_MATCHING, MLP, "")).unwrap();
    let bare = dir.join("bare.safetensors");
    Checkpoint::new(0, trainer.model()).save(&bare).unwrap();
    let err = init_error(init_from(config(FLOW_MATCHING, MLP, ""), &bare));
    assert!(
        err.contains(bare.to_str().unwrap()) && err.contains("not a trainer checkpoint"),
        "{err}"
    );

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let err = init_error(init_from(config(FLOW_MATCHING, MLP, ""), &garbage));
    assert!(err.contains(garbage.to_str().unwrap()), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resuming_an_init_from_run_does_not_need_the_init_file() {
    let dir = temp_dir("resume");
    let source_dir = dir.join("source");
    let (path, _) = saved_run(config(FLOW_MATCHING, MLP, ""), 3, &source_dir);
    let cfg = init_from(config(TWINFLOW, MLP, ""), &path);
    let (k, m) = (3, 3);

    let mut whole = Trainer::new(cfg.clone()).unwrap();
    let expected = losses(&mut whole, k + m);

    let run = dir.join("run");
    let mut first = Trainer::new(cfg.clone()).unwrap();
    assert_eq!(losses(&mut first, k), expected[..k]);
    first.save(&run).unwrap();
    drop(first);
    std::fs::remove_dir_all(&source_dir).unwrap();
    let err = init_error(cfg);
    assert!(err.contains(path.to_str().unwrap()), "{err}");

    let mut resumed = Trainer::resume(&run).unwrap();
    assert_eq!(resumed.step_count(), k as u64);
    assert_eq!(resumed.config().init_from.as_deref(), Some(path.as_path()));
    assert_eq!(losses(&mut resumed, m), expected[k..]);
    assert_eq!(values(resumed.model()), values(whole.model()));
    assert_eq!(values(resumed.ema_model()), values(whole.ema_model()));
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn cli_init_from_trains_and_is_refused_with_resume() {
    let dir = temp_dir("cli");
    let (path, _) = saved_run(config(FLOW_MATCHING, MLP, ""), 3, &dir.join("source"));
    let ck = path.to_str().unwrap();
    std::fs::write(dir.join("tiny.toml"), moons_toml(4, TWINFLOW, MLP, "")).unwrap();
    let train = ["train", "--config", "tiny.toml", "--out", "run"];

    let out = run_cli(
        &dir,
        &[&train[..], &["--init-from", ck, "--steps", "2"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(dir.join("run/checkpoints/step-2.safetensors").is_file());
    let resolved = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    let resolved = TrainConfig::from_toml(&resolved, "config.toml").unwrap();
    assert_eq!(resolved.init_from.as_deref(), Some(path.as_path()));

    let out = run_cli(
        &dir,
        &[&train[..], &["--resume", "--init-from", ck]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains("--init-from cannot be combined with --resume"),
        "{stderr}"
    );

    // Over the run (--overwrite), a missing init file fails before the old run is
    // deleted.
    let out = run_cli(
        &dir,
        &[
            &train[..],
            &["--overwrite", "--init-from", "gone.safetensors"],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gone.safetensors") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(dir.join("run/checkpoints/step-2.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
