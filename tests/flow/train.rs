//! The trainer of `twinflow::flow::train`: TwinFlow learns moons (1-NFE samples get
//! much closer to the data), resuming from a checkpoint reproduces an uninterrupted
//! run's losses bitwise (also with `t ~ Beta(a, b)·s`, whose rejection sampler draws a
//! varying number of values), the `[time]` table reaches the method, non-finite losses
//! stop or skip by config, and config errors name the offending key.

use std::path::PathBuf;
use std::time::Instant;
use twinflow::engine::Error;
use twinflow::engine::{Device, Generator, Tensor};
use twinflow::flow::data::Toy2d;
use twinflow::flow::eval::{sample_batched, SampleLabels};
use twinflow::flow::method::{Batch, TimeDistribution};
use twinflow::flow::metrics::{energy_distance, Samples};
use twinflow::flow::sampler::SamplerConfig;
use twinflow::flow::train::{
    NanPolicy, StepRecord, TrainConfig, TrainControl, TrainEvent, Trainer,
};
use twinflow::nn::Module;

/// A small moons config for `method` (a `[method]` table body and sub-tables).
fn moons_toml(steps: u64, method: &str, extra: &str) -> String {
    format!(
        r#"
steps = {steps}
seed = 7
ema_decay = 0.99
log_every = 10
{extra}

[model]
kind = "mlp"
[model.mlp]
data_dim = 2
width = 96
depth = 2
emb_dim = 16
num_classes = 2

[method]
{method}

[optimizer]
lr = 2e-3
weight_decay = 0.0

[data]
dataset = "moons"
batch_size = 256
"#
    )
}

const TWINFLOW: &str = r#"name = "twinflow"
[method.twinflow]
recipe = "full"
[method.twinflow.base]
order = 1
"#;

/// TwinFlow's `split` recipe with N = 2 (fast enough to learn moons in seconds).
const TWINFLOW_SPLIT: &str = r#"name = "twinflow"
[method.twinflow]
recipe = "split"
[method.twinflow.base]
order = 2
"#;

const FLOW_MATCHING: &str = r#"name = "flow_matching""#;

fn config(steps: u64, method: &str, extra: &str) -> TrainConfig {
    TrainConfig::from_toml(&moons_toml(steps, method, extra), "test.toml").unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinflow-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn energy_to_moons(trainer: &Trainer, ema: bool) -> f64 {
    let n = 1000;
    let cycle = SampleLabels::Cycle { n };
    let (fake, _) = sample_batched(
        trainer,
        &SamplerConfig::default(),
        &cycle,
        1234,
        ema,
        n,
        |_| {},
    )
    .unwrap();
    let fake = Samples::from_f32(&fake, 2).unwrap();
    let mut gen = Generator::new(99);
    let (real, _) = Toy2d::Moons.sample_tensors(n, &mut gen).unwrap();
    let real = Samples::from_tensor(&real).unwrap();
    energy_distance(&fake, &real).unwrap()
}

/// Trains to the config's steps in `dir`, returning every step's record.
fn train_collecting(trainer: &mut Trainer, dir: &std::path::Path) -> Vec<StepRecord> {
    let mut records = Vec::new();
    trainer
        .train(dir, |_, event| {
            if let TrainEvent::Step(record) = event {
                records.push(record.clone());
            }
            Ok(TrainControl::Continue)
        })
        .unwrap();
    records
}

/// One event of the training loop, written out.
fn describe(event: &TrainEvent<'_>) -> String {
    match event {
        TrainEvent::Step(r) => format!("step {}", r.step),
        TrainEvent::Saved(path) => format!("saved {}", path.file_name().unwrap().to_string_lossy()),
        TrainEvent::SamplesDue { last } => format!("samples last={last}"),
    }
}

#[test]
fn the_training_loop_logs_saves_and_asks_for_samples_on_schedule() {
    let dir = temp_dir("loop");
    let mut cfg = config(5, FLOW_MATCHING, "checkpoint_every = 3\nsample_every = 2");
    cfg.log_every = 2;
    let mut trainer = Trainer::new(cfg).unwrap();
    let mut events = Vec::new();
    let summary = trainer
        .train_to(6, &dir, |t, event| {
            assert!(t.step_count() > 0);
            events.push(describe(&event));
            Ok(TrainControl::Continue)
        })
        .unwrap();
    let want = [
        "step 1",
        "step 2",
        "samples last=false",
        "step 3",
        "saved step-3.safetensors",
        "step 4",
        "samples last=false",
        "step 5",
        "step 6",
        "saved step-6.safetensors",
        "samples last=true",
    ];
    assert_eq!(events, want);
    assert_eq!(summary.start, 0);
    assert_eq!(summary.last.as_ref().map(|r| r.step), Some(6));
    assert!(summary
        .checkpoint
        .unwrap()
        .ends_with("checkpoints/step-6.safetensors"));
    // The resolved config records the target; a metrics line every 2 steps.
    let resolved = TrainConfig::load(dir.join("config.toml")).unwrap();
    assert_eq!(resolved.steps, 6);
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);

    // A run at its target does nothing; an error of the caller stops the run.
    let summary = trainer
        .train_to(6, &dir, |_, _| panic!("no event"))
        .unwrap();
    assert!(summary.last.is_none() && summary.checkpoint.is_none());
    let err = trainer
        .train_to(9, &dir, |_, event| match event {
            TrainEvent::Step(r) if r.step == 8 => Err(Error::invalid("caller", "stop here")),
            _ => Ok(TrainControl::Continue),
        })
        .unwrap_err();
    assert!(err.to_string().contains("stop here"), "{err}");
    assert_eq!(trainer.step_count(), 8);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn twinflow_split_learns_moons_at_one_nfe() {
    let start = Instant::now();
    let dir = temp_dir("learn");
    let steps = 800;
    let toml = moons_toml(steps, TWINFLOW_SPLIT, "").replace("lr = 2e-3", "lr = 5e-3");
    let mut trainer = Trainer::new(TrainConfig::from_toml(&toml, "moons.toml").unwrap()).unwrap();
    let before = energy_to_moons(&trainer, false);
    let records = train_collecting(&mut trainer, &dir);
    assert_eq!(records.len() as u64, steps);
    assert!(records.iter().all(|r| r.loss.is_finite() && !r.skipped));
    let online = energy_to_moons(&trainer, false);
    let ema = energy_to_moons(&trainer, true);
    println!(
        "energy distance at 1 NFE: untrained {before:.4}, online {online:.4}, EMA {ema:.4} \
         ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    assert!(
        online < 0.5 * before,
        "online {online} vs untrained {before}"
    );
    assert!(ema < 0.5 * before, "EMA {ema} vs untrained {before}");

    // Metrics: one line per 10 steps with every term; the config and checkpoints exist.
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, steps / 10);
    assert_eq!(lines[0]["step"], 10);
    for key in ["loss", "lr", "grad_norm", "samples_per_sec"] {
        assert!(lines[0][key].is_number(), "{key} missing in {}", lines[0]);
    }
    for (term, _) in &records[9].terms {
        assert!(lines[0][term].is_number(), "term {term} missing");
    }
    assert!(dir.join("checkpoints/latest.safetensors").is_file());
    assert!(dir.join("checkpoints/step-800.safetensors").is_file());
    let resolved = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let reread = TrainConfig::from_toml(&resolved, "config.toml").unwrap();
    assert_eq!(&reread, trainer.config());
    let _ = std::fs::remove_dir_all(&dir);
}

fn losses(trainer: &mut Trainer, steps: usize) -> Vec<(u64, u64, Vec<u64>)> {
    (0..steps)
        .map(|_| {
            let r = trainer.step().unwrap();
            let terms = r.terms.iter().map(|(_, v)| v.to_bits()).collect();
            (r.step, r.loss.to_bits(), terms)
        })
        .collect()
}

/// A `[time]` table with a < 1 (the boosted Gamma) and s < 1.
const BETA_TIME: &str = "[time]\nbeta_a = 0.7\nbeta_b = 1.8\nscale = 0.9";

#[test]
fn resume_reproduces_the_uninterrupted_run_bitwise() {
    // Label dropout makes the model's own generator matter too.
    let toml = moons_toml(100, TWINFLOW, "grad_clip = 1.0\nclean_non_finite = true")
        .replace("num_classes = 2", "num_classes = 2\nlabel_dropout = 0.1")
        .replace(
            "[optimizer]",
            "[schedule]\nkind = \"warmup_cosine\"\npeak_lr = 2e-3\nwarmup_steps = 5\n\
             total_steps = 30\nmin_lr = 1e-4\n\n[optimizer]",
        );
    assert_resume_is_bitwise(&toml, "resume");
}

#[test]
fn resume_with_beta_times_reproduces_the_uninterrupted_run_bitwise() {
    for (method, name) in [
        (TWINFLOW, "resume-beta-full"),
        (TWINFLOW_SPLIT, "resume-beta-split"),
    ] {
        assert_resume_is_bitwise(&moons_toml(100, method, BETA_TIME), name);
    }
}

/// Trains 12 + 10 steps uninterrupted (sampling in between) and 12, save, resume, 10:
/// the losses, terms and final parameters must agree bit for bit.
fn assert_resume_is_bitwise(toml: &str, name: &str) {
    let dir = temp_dir(name);
    let cfg = TrainConfig::from_toml(toml, "resume.toml").unwrap();
    let (k, m) = (12, 10);

    // The uninterrupted run draws samples mid-run, as its sample pictures do; that
    // must not change its later steps.
    let mut whole = Trainer::new(cfg.clone()).unwrap();
    let mut expected = losses(&mut whole, k);
    let stochastic = SamplerConfig {
        steps: 3,
        stochastic_ratio: 0.5,
        ..SamplerConfig::default()
    };
    for ema in [false, true] {
        let labels = SampleLabels::Cycle { n: 16 };
        sample_batched(&whole, &stochastic, &labels, 0, ema, 5, |_| {}).unwrap();
    }
    expected.extend(losses(&mut whole, m));

    let mut first = Trainer::new(cfg).unwrap();
    let head = losses(&mut first, k);
    first.save(&dir).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&dir).unwrap();
    assert_eq!(resumed.step_count(), k as u64);
    let tail = losses(&mut resumed, m);

    assert_eq!(head, expected[..k]);
    assert_eq!(
        tail,
        expected[k..],
        "resumed losses differ from the uninterrupted run"
    );
    // The parameters end up identical too.
    for ((n, a), (_, b)) in whole
        .model()
        .named_params()
        .iter()
        .zip(resumed.model().named_params())
    {
        assert_eq!(
            a.to_vec::<f32>().unwrap(),
            b.to_vec::<f32>().unwrap(),
            "parameter {n}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn nan_batch() -> Batch {
    let x = Tensor::from_vec(vec![f32::NAN; 8], &[4, 2], Device::Cpu).unwrap();
    let labels = Tensor::from_vec(vec![0i64, 1, 0, 1], &[4], Device::Cpu).unwrap();
    Batch::new(x, labels)
}

fn param_values(trainer: &Trainer) -> Vec<Vec<f32>> {
    trainer
        .model()
        .named_params()
        .iter()
        .map(|(_, t)| t.to_vec::<f32>().unwrap())
        .collect()
}

#[test]
fn nan_loss_stops_naming_the_step_and_keeps_the_checkpoint() {
    let dir = temp_dir("nan-stop");
    let mut trainer = Trainer::new(config(100, FLOW_MATCHING, "")).unwrap();
    assert_eq!(trainer.config().nan_policy, NanPolicy::Stop);
    for _ in 0..3 {
        trainer.step().unwrap();
    }
    trainer.save(&dir).unwrap();
    let saved = std::fs::read(dir.join("checkpoints/latest.safetensors")).unwrap();
    let err = trainer.step_on(&nan_batch()).unwrap_err().to_string();
    assert!(err.contains("step 4"), "{err}");
    assert!(err.contains("non-finite loss"), "{err}");
    // No more steps, and no save over the good checkpoint.
    assert!(trainer.step().is_err());
    assert!(trainer.save(&dir).is_err());
    assert_eq!(
        std::fs::read(dir.join("checkpoints/latest.safetensors")).unwrap(),
        saved
    );
    let resumed = Trainer::resume(&dir).unwrap();
    assert_eq!(resumed.step_count(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nan_loss_with_skip_policy_skips_the_update() {
    let mut trainer = Trainer::new(config(100, FLOW_MATCHING, "nan_policy = \"skip\"")).unwrap();
    trainer.step().unwrap();
    let before = param_values(&trainer);
    let r = trainer.step_on(&nan_batch()).unwrap();
    assert!(r.skipped && r.loss.is_nan() && r.step == 2);
    assert_eq!(trainer.skipped(), 1);
    assert_eq!(trainer.step_count(), 2);
    assert_eq!(
        param_values(&trainer),
        before,
        "a skipped step changed the model"
    );
    let r = trainer.step().unwrap();
    assert!(!r.skipped && r.loss.is_finite() && r.step == 3);
    assert_ne!(param_values(&trainer), before);
}

#[test]
fn config_errors_name_the_key() {
    let bad_key = moons_toml(10, FLOW_MATCHING, "").replace("batch_size", "batchsize");
    let err = TrainConfig::from_toml(&bad_key, "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.toml") && err.contains("batchsize"),
        "{err}"
    );

    let nested = moons_toml(10, TWINFLOW, "").replace("order = 1", "order = 1\nordr = 2");
    let err = TrainConfig::from_toml(&nested, "nested.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ordr"), "{err}");

    let wrong_type = moons_toml(10, FLOW_MATCHING, "").replace("lr = 2e-3", "lr = \"fast\"");
    let err = TrainConfig::from_toml(&wrong_type, "type.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("type.toml") && err.contains("`lr`"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");

    let bad_policy = moons_toml(10, FLOW_MATCHING, "nan_policy = \"ignore\"");
    let err = TrainConfig::from_toml(&bad_policy, "p.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nan_policy"), "{err}");

    let wrong_section = moons_toml(10, FLOW_MATCHING, "").replace(
        "name = \"flow_matching\"",
        "name = \"flow_matching\"\n[method.rcgm]\norder = 2",
    );
    let err = TrainConfig::from_toml(&wrong_section, "s.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("method.rcgm"), "{err}");

    let dim = moons_toml(10, FLOW_MATCHING, "").replace("data_dim = 2", "data_dim = 3");
    let err = Trainer::new(TrainConfig::from_toml(&dim, "d.toml").unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_dim"), "{err}");

    for (table, key) in [
        ("[time]\nbeta_a = 0.0", "time.beta_a"),
        ("[time]\nbeta_a = nan", "time.beta_a"),
        ("[time]\nbeta_b = -1.0", "time.beta_b"),
        ("[time]\nscale = 1.5", "time.scale"),
        ("[time]\nscale = 0.0", "time.scale"),
        ("[time]\nbeta_c = 2.0", "beta_c"),
    ] {
        let err = TrainConfig::from_toml(&moons_toml(10, FLOW_MATCHING, table), "time.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("time.toml") && err.contains(key), "{err}");
    }

    let missing = Trainer::from_config_file("/nonexistent/x.toml")
        .unwrap_err()
        .to_string();
    assert!(missing.contains("/nonexistent/x.toml"), "{missing}");
}

#[test]
fn the_time_table_reaches_every_method() {
    for method in [FLOW_MATCHING, "name = \"rcgm\"", TWINFLOW, TWINFLOW_SPLIT] {
        let first_losses = |extra: &str| {
            let mut trainer = Trainer::new(config(10, method, extra)).unwrap();
            losses(&mut trainer, 2)
        };
        let default = first_losses("");
        // The default written out is the default: the same bits.
        let explicit = "[time]\nbeta_a = 1.0\nbeta_b = 1.0\nscale = 1.0";
        assert_eq!(first_losses(explicit), default, "{method}");
        assert_ne!(first_losses(BETA_TIME), default, "{method}");
        // Uniform times on [0, ½) are another distribution too.
        assert_ne!(first_losses("[time]\nscale = 0.5"), default, "{method}");
    }
    // The resolved config keeps a non-default table and leaves the default out.
    let cfg = config(10, TWINFLOW_SPLIT, BETA_TIME);
    let expected = TimeDistribution {
        beta_a: 0.7,
        beta_b: 1.8,
        scale: 0.9,
    };
    assert_eq!(cfg.time, expected);
    let resolved = cfg.to_toml().unwrap();
    assert!(resolved.contains("[time]"), "{resolved}");
    assert_eq!(TrainConfig::from_toml(&resolved, "r.toml").unwrap(), cfg);
    let plain = config(10, TWINFLOW_SPLIT, "").to_toml().unwrap();
    assert!(!plain.contains("[time]"), "{plain}");
}

#[test]
fn skip_policy_stops_after_too_many_skips_in_a_row() {
    let dir = temp_dir("skip-in-a-row");
    let extra = "nan_policy = \"skip\"\nmax_consecutive_skips = 3";
    let mut trainer = Trainer::new(config(100, FLOW_MATCHING, extra)).unwrap();
    trainer.step().unwrap();
    trainer.save(&dir).unwrap();
    // A good step between skips starts the count again.
    for _ in 0..3 {
        assert!(trainer.step_on(&nan_batch()).unwrap().skipped);
    }
    assert!(!trainer.step().unwrap().skipped);
    for _ in 0..3 {
        assert!(trainer.step_on(&nan_batch()).unwrap().skipped);
    }
    let err = trainer.step_on(&nan_batch()).unwrap_err().to_string();
    assert!(err.contains("at step 9"), "{err}");
    assert!(
        err.contains("4 skipped steps in a row, more than max_consecutive_skips = 3"),
        "{err}"
    );
    // Stopped as with nan_policy = "stop": no more steps, no save over step 1's.
    assert!(trainer.step().is_err());
    assert!(trainer.save(&dir).is_err());
    assert_eq!(Trainer::resume(&dir).unwrap().step_count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn skip_policy_stops_past_the_skipped_fraction() {
    let extra = "nan_policy = \"skip\"\nmax_skip_fraction = 0.25\nskip_fraction_min_steps = 8";
    let mut trainer = Trainer::new(config(100, FLOW_MATCHING, extra)).unwrap();
    // Steps 1 and 2 skipped: half of the run, but before skip_fraction_min_steps.
    for _ in 0..2 {
        trainer.step_on(&nan_batch()).unwrap();
    }
    for _ in 0..6 {
        trainer.step().unwrap();
    }
    // Step 9: 3 of 9 skipped (33%).
    let err = trainer.step_on(&nan_batch()).unwrap_err().to_string();
    assert!(
        err.contains("3 of 9 steps skipped") && err.contains("max_skip_fraction = 0.25"),
        "{err}"
    );

    // The counts travel with the checkpoint: a resumed run stops where the whole one does.
    let dir = temp_dir("skip-fraction");
    let extra = "nan_policy = \"skip\"\nmax_consecutive_skips = 2";
    let mut trainer = Trainer::new(config(100, FLOW_MATCHING, extra)).unwrap();
    trainer.step_on(&nan_batch()).unwrap();
    trainer.step_on(&nan_batch()).unwrap();
    trainer.save(&dir).unwrap();
    let mut resumed = Trainer::resume(&dir).unwrap();
    assert!(resumed.step_on(&nan_batch()).is_err());
    let _ = std::fs::remove_dir_all(&dir);

    let bad = TrainConfig::from_toml(
        &moons_toml(10, FLOW_MATCHING, "max_skip_fraction = 1.5"),
        "bad.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("bad.toml") && bad.contains("max_skip_fraction"),
        "{bad}"
    );
}

#[test]
fn save_refuses_parameters_that_are_not_finite() {
    let dir = temp_dir("non-finite-save");
    let mut trainer = Trainer::new(config(100, FLOW_MATCHING, "")).unwrap();
    trainer.step().unwrap();
    trainer.save(&dir).unwrap();
    let saved = std::fs::read(dir.join("checkpoints/latest.safetensors")).unwrap();
    // A learning rate beyond f32's range: the loss and gradients of the step are
    // finite, the update is not.
    let huge = moons_toml(100, FLOW_MATCHING, "").replace("lr = 2e-3", "lr = 1e300");
    let mut diverged = Trainer::new(TrainConfig::from_toml(&huge, "huge.toml").unwrap()).unwrap();
    diverged.step().unwrap();
    let err = diverged.save(&dir).unwrap_err().to_string();
    assert!(err.contains("refusing to save step 1"), "{err}");
    assert!(err.contains("parameter model."), "{err}");
    assert_eq!(
        std::fs::read(dir.join("checkpoints/latest.safetensors")).unwrap(),
        saved
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stopping_the_loop_early_saves_the_step_it_reached() {
    let dir = temp_dir("stop-early");
    let mut cfg = config(
        20,
        FLOW_MATCHING,
        "checkpoint_every = 100\nsample_every = 3",
    );
    cfg.log_every = 4;
    let mut trainer = Trainer::new(cfg).unwrap();
    let mut events = Vec::new();
    let summary = trainer
        .train_to(20, &dir, |_, event| {
            events.push(describe(&event));
            Ok(match event {
                TrainEvent::Step(r) if r.step == 6 => TrainControl::Stop,
                _ => TrainControl::Continue,
            })
        })
        .unwrap();
    // No pictures after the stop (neither step 6's nor the end's).
    let want = [
        "step 1",
        "step 2",
        "step 3",
        "samples last=false",
        "step 4",
        "step 5",
        "step 6",
        "saved step-6.safetensors",
    ];
    assert_eq!(events, want);
    assert!(summary.stopped_early);
    assert_eq!(summary.last.as_ref().map(|r| r.step), Some(6));
    // Step 6's metrics line is written although log_every is 4.
    let steps: Vec<u64> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![4, 6]);
    let mut resumed = Trainer::resume(&dir).unwrap();
    assert_eq!(resumed.step_count(), 6);
    let summary = resumed
        .train_to(8, &dir, |_, _| Ok(TrainControl::Continue))
        .unwrap();
    assert!(!summary.stopped_early);
    assert_eq!(resumed.step_count(), 8);
    let _ = std::fs::remove_dir_all(&dir);
}
