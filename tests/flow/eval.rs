//! Evaluation of trained flow models (`twinflow::flow::eval`): batched sampling does not
//! depend on the batch size (beyond rounding), takes cycled or given labels, refuses bad
//! input with errors naming it and leaves the model's forward stream as it was; toy
//! scores sit above the real-vs-real floor for an untrained model and move towards it
//! with training, image evaluation needs and uses a classifier, and the report
//! serialises to the documented JSON.

use twinflow::flow::eval::{evaluate, sample_batched, EvalConfig, SampleLabels};
use twinflow::flow::sampler::SamplerConfig;
use twinflow::flow::train::{TrainConfig, Trainer};
use twinflow::nn::{Classifier, ClassifierConfig, ParamBuilder, VelocityModel};

fn trainer(toml: &str) -> Trainer {
    Trainer::new(TrainConfig::from_toml(toml, "test").unwrap()).unwrap()
}

fn moons(steps: u64) -> Trainer {
    let mut t = trainer(&format!(
        r#"
steps = {steps}
seed = 7
[model]
kind = "mlp"
[model.mlp]
data_dim = 2
width = 64
depth = 2
emb_dim = 16
num_classes = 2
[method]
name = "flow_matching"
[optimizer]
lr = 5e-3
weight_decay = 0.0
[data]
dataset = "moons"
batch_size = 256
"#
    ));
    while t.step_count() < steps {
        t.step().unwrap();
    }
    t
}

fn mnist() -> Trainer {
    trainer(&format!(
        r#"
steps = 1
[model]
kind = "mlp"
[model.mlp]
data_dim = 784
width = 32
depth = 1
emb_dim = 8
num_classes = 10
[method]
name = "flow_matching"
[data]
dataset = "mnist"
batch_size = 8
root = "{}"
"#,
        env!("CARGO_MANIFEST_DIR")
    ))
}

#[test]
fn batched_sampling_does_not_depend_on_the_batch_size() {
    let t = moons(20);
    let sampler = SamplerConfig {
        steps: 3,
        ..SamplerConfig::default()
    };
    let cycle = SampleLabels::Cycle { n: 50 };
    let mut progress = Vec::new();
    let (a, labels) =
        sample_batched(&t, &sampler, &cycle, 3, true, 7, |d| progress.push(d)).unwrap();
    let (b, _) = sample_batched(&t, &sampler, &cycle, 3, true, 500, |_| {}).unwrap();
    assert_eq!(a.len(), 100);
    // Equal up to the rounding of products of other shapes.
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
    assert_eq!(labels[..4], [0, 1, 0, 1]);
    assert_eq!(progress, [7, 14, 21, 28, 35, 42, 49, 50]);
    let (c, _) = sample_batched(&t, &sampler, &cycle, 4, true, 7, |_| {}).unwrap();
    assert_ne!(a, c, "another seed, other noise");

    // Given labels: the same noise rows, conditioned on those labels; the cycle's own
    // labels written out give the cycle's samples.
    let (d, given) = sample_batched(
        &t,
        &sampler,
        &SampleLabels::Given(labels.clone()),
        3,
        true,
        7,
        |_| {},
    )
    .unwrap();
    assert_eq!((d, given), (a.clone(), labels));
    let ones = SampleLabels::Given(vec![1; 50]);
    let (e, given) = sample_batched(&t, &sampler, &ones, 3, true, 7, |_| {}).unwrap();
    assert_eq!(given, vec![1; 50]);
    assert_eq!(e[2..4], a[2..4], "sample 1 has label 1 either way");
    assert_ne!(e[..2], a[..2], "sample 0 has another label");
}

#[test]
fn batched_sampling_refuses_bad_input_and_keeps_the_forward_stream() {
    let t = moons(2);
    let sampler = SamplerConfig::default();
    let fails = |labels: SampleLabels, batch: usize, needle: &str| {
        let e = sample_batched(&t, &sampler, &labels, 0, false, batch, |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e} lacks {needle:?}");
    };
    fails(SampleLabels::Cycle { n: 0 }, 7, "n = 0");
    fails(SampleLabels::Given(Vec::new()), 7, "no samples");
    fails(SampleLabels::Cycle { n: 5 }, 0, "batch size");
    fails(SampleLabels::Given(vec![0, 1, 2]), 7, "label 2 of sample 2");
    fails(SampleLabels::Given(vec![-1]), 7, "label -1 of sample 0");
    let bad_sampler = SamplerConfig {
        steps: 0,
        ..SamplerConfig::default()
    };
    let cycle = SampleLabels::Cycle { n: 3 };
    assert!(sample_batched(&t, &bad_sampler, &cycle, 0, false, 7, |_| {}).is_err());

    // The model's forward stream (shared by θ, θ⁻ and the trainer) is left as it was.
    let before = t.model().forward_rng().state();
    let stochastic = SamplerConfig {
        steps: 4,
        stochastic_ratio: 0.5,
        ..SamplerConfig::default()
    };
    for ema in [false, true] {
        sample_batched(&t, &stochastic, &cycle, 0, ema, 2, |_| {}).unwrap();
    }
    assert_eq!(t.model().forward_rng().state(), before);
}

#[test]
fn toy_scores_sit_above_the_floor_and_fall_with_training() {
    let cfg = EvalConfig {
        nfe: vec![1, 8],
        n: 400,
        ..EvalConfig::default()
    };
    let untrained = evaluate(&moons(0), &cfg, None, |_, _| {}).unwrap();
    let trained = evaluate(&moons(300), &cfg, None, |_, _| {}).unwrap();
    assert_eq!(
        untrained.floor, trained.floor,
        "the floor depends on the seed only"
    );
    let keys: Vec<&str> = trained.floor.keys().map(String::as_str).collect();
    assert_eq!(keys, ["energy", "sliced_w2"]);
    for (u, t) in untrained.rows.iter().zip(&trained.rows) {
        for name in keys.iter().map(|k| k.to_string()) {
            let floor = trained.floor[&name];
            assert!(u.metrics[&name] > 5.0 * floor.abs(), "{name} {u:?}");
            assert!(
                t.metrics[&name] < 0.5 * u.metrics[&name],
                "{name} {t:?} vs {u:?}"
            );
        }
    }
    assert_eq!(
        trained.rows.iter().map(|r| r.nfe).collect::<Vec<_>>(),
        [1, 8]
    );
    assert_eq!(
        (trained.method.as_str(), trained.dataset.as_str()),
        ("flow_matching", "moons")
    );
    assert_eq!(trained.step, 300);

    let json = serde_json::to_value(&trained).unwrap();
    for key in [
        "checkpoint",
        "method",
        "dataset",
        "step",
        "n",
        "seed",
        "sampler",
        "ema",
        "rows",
        "floor",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["rows"][1]["nfe"], 8);
    assert!(json["rows"][0]["energy"].is_number());
    assert!(json["floor"]["sliced_w2"].is_number());
}

#[test]
fn eval_settings_are_checked() {
    let t = moons(0);
    for cfg in [
        EvalConfig {
            nfe: vec![],
            ..EvalConfig::default()
        },
        EvalConfig {
            nfe: vec![1, 0],
            ..EvalConfig::default()
        },
        EvalConfig {
            n: 1,
            ..EvalConfig::default()
        },
    ] {
        assert!(evaluate(&t, &cfg, None, |_, _| {}).is_err(), "{cfg:?}");
    }
}

#[test]
fn image_evaluation_needs_and_uses_a_classifier() {
    let t = mnist();
    let cfg = EvalConfig {
        nfe: vec![1],
        n: 30,
        ..EvalConfig::default()
    };
    let err = evaluate(&t, &cfg, None, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("needs a classifier"), "{err}");
    let small = ClassifierConfig {
        conv: vec![4],
        hidden: 8,
        ..ClassifierConfig::default()
    };
    let classifier = Classifier::new(&mut ParamBuilder::new(0), &small).unwrap();
    let report = evaluate(&t, &cfg, Some(&classifier), |_, _| {}).unwrap();
    let keys: Vec<&str> = report.floor.keys().map(String::as_str).collect();
    assert_eq!(keys, ["accuracy", "frechet"]);
    let row = &report.rows[0].metrics;
    assert!((0.0..=1.0).contains(&row["accuracy"]));
    // Untrained flow model: its samples are noise, far from the real features.
    assert!(
        row["frechet"] > 10.0 * report.floor["frechet"],
        "{report:?}"
    );
    let wrong = ClassifierConfig {
        image_size: 8,
        ..small
    };
    let wrong = Classifier::new(&mut ParamBuilder::new(0), &wrong).unwrap();
    assert!(evaluate(&t, &cfg, Some(&wrong), |_, _| {}).is_err());
}
