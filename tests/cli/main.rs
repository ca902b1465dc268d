//! The `twinflow` binary: `train` writes a run directory and resumes it, `sample` writes
//! .npy/.png files, `data` writes real samples, and every error is one `error:` line
//! with exit code 1. The training run's sample pictures, `sample` and `eval` draw the
//! same samples from the same seed, sampler and labels. How runs survive concurrency,
//! mistakes, signals and crashes is in `reliability.rs`; huge sizes and crafted files in
//! `limits.rs`.

mod data_parallel;
mod limits;
mod reliability;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use twinflow::flow::data::Toy2d;
use twinflow::flow::eval::{sample_batched, Reference, SampleLabels};
use twinflow::flow::sampler::{JumpTarget, SamplerConfig};
use twinflow::flow::train::Trainer;

const BIN: &str = env!("CARGO_BIN_EXE_twinflow");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinflow-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must fail with exit code 1 and a one-line `error:` message
/// containing `needle`.
fn fails(dir: &Path, args: &[&str], needle: &str) {
    let out = run(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr} lacks {needle:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

/// Parses a version 1.0 .npy file: (descr, shape, data length in bytes).
fn read_npy(path: &Path) -> (String, Vec<usize>, usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!(&bytes[6..8], &[1, 0]);
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 16, 0, "header not aligned");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.ends_with('\n'));
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header.split("'descr': '").nth(1).unwrap();
    let descr = descr[..descr.find('\'').unwrap()].to_string();
    let shape = header.split("'shape': (").nth(1).unwrap();
    let shape: Vec<usize> = shape[..shape.find(')').unwrap()]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (descr, shape, bytes.len() - 10 - len)
}

/// The values of an .npy file written by `sample` (f32 samples or i64 labels), as raw
/// little-endian words.
fn npy_words<const N: usize>(path: &Path) -> Vec<[u8; N]> {
    let bytes = std::fs::read(path).unwrap();
    let (_, _, data) = read_npy(path);
    bytes[bytes.len() - data..]
        .chunks_exact(N)
        .map(|c| c.try_into().unwrap())
        .collect()
}

/// The samples and labels of `FILE.npy` and `FILE.labels.npy` in `dir`.
fn read_samples(dir: &Path, file: &str) -> (Vec<f32>, Vec<i64>) {
    let x = npy_words::<4>(&dir.join(format!("{file}.npy")));
    let labels = npy_words::<8>(&dir.join(format!("{file}.labels.npy")));
    (
        x.into_iter().map(f32::from_le_bytes).collect(),
        labels.into_iter().map(i64::from_le_bytes).collect(),
    )
}

fn check_npy_pair(path: &Path, n: usize, d: usize) {
    let (descr, shape, data) = read_npy(path);
    assert_eq!(
        (descr.as_str(), shape, data),
        ("<f4", vec![n, d], n * d * 4)
    );
    let labels = path.with_file_name(
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".npy", ".labels.npy"),
    );
    let (descr, shape, data) = read_npy(&labels);
    assert_eq!((descr.as_str(), shape, data), ("<i8", vec![n], n * 8));
}

#[test]
fn train_resume_and_sample() {
    let dir = temp_dir("train");
    let config = repo("configs/moons-twinflow.toml");
    let config = config.to_str().unwrap();
    ok(
        &dir,
        &["train", "--config", config, "--out", "run", "--steps", "20"],
    );
    let run_dir = dir.join("run");
    assert!(run_dir.join("config.toml").is_file());
    assert!(run_dir.join("checkpoints/latest.safetensors").is_file());
    assert!(run_dir.join("checkpoints/step-20.safetensors").is_file());
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{metrics}");
    assert_eq!(lines[1]["step"], 20);
    // The curves picture: one panel per kind, every loss term named in the legend.
    let curves = std::fs::read_to_string(run_dir.join("curves.svg")).unwrap();
    assert!(curves.starts_with("<svg"), "{curves}");
    for text in ["loss terms", "learning rate", "gradient norm", "base"] {
        assert!(curves.contains(text), "curves.svg lacks {text}");
    }
    assert!(lines[1]["loss"].is_number());
    let resolved = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(resolved.contains("steps = 20"), "{resolved}");
    for nfe in [1, 2, 4] {
        let grid = run_dir.join(format!("samples/step-0000020-nfe{nfe}.png"));
        let png = std::fs::read(&grid).unwrap_or_else(|e| panic!("{}: {e}", grid.display()));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    // Resume continues to a higher step and appends to the metrics.
    ok(
        &dir,
        &["train", "--out", "run", "--resume", "--steps", "30"],
    );
    assert!(run_dir.join("checkpoints/step-30.safetensors").is_file());
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 30);

    let ck = run_dir.join("checkpoints/latest.safetensors");
    let ck = ck.to_str().unwrap();
    let common = ["sample", "--checkpoint", ck, "--nfe", "2", "--n", "9"];
    ok(&dir, &[&common[..], &["--out", "s.npy"]].concat());
    check_npy_pair(&dir.join("s.npy"), 9, 2);
    ok(
        &dir,
        &[&common[..], &["--labels", "1", "--ema", "--out", "one.npy"]].concat(),
    );
    let labels = std::fs::read(dir.join("one.labels.npy")).unwrap();
    let values: Vec<i64> = labels[labels.len() - 72..]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, vec![1; 9]);
    ok(
        &dir,
        &[&common[..], &["--guidance", "1.5", "--out", "s.png"]].concat(),
    );
    let png = std::fs::read(dir.join("s.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let flags = [
        "--stochastic-ratio",
        "1",
        "--gaps",
        "0.001,0.6",
        "--kumaraswamy",
        "1,1,1",
        "--jump",
        "any_step",
    ];
    ok(&dir, &[&common[..], &flags, &["--out", "u.npy"]].concat());
    check_npy_pair(&dir.join("u.npy"), 9, 2);
    ok(
        &dir,
        &[
            &common[..],
            &flags,
            &["--batch-size", "4", "--out", "u4.npy"],
        ]
        .concat(),
    );

    // `sample` is `sample_batched` (the path of `eval` and the pictures): the same
    // numbers, bit for bit, for cycled and fixed labels and the stochastic sampler.
    let trainer = Trainer::from_checkpoint(run_dir.join("checkpoints/latest.safetensors")).unwrap();
    // A TwinFlow run: at 2 steps the reference's few-step preset (ρ = 1, gaps) applies.
    let base = trainer.config().sampler().at_steps(2);
    assert_eq!(
        (base.stochastic_ratio, base.gaps),
        (1.0, [0.001, 0.6]),
        "{base:?}"
    );
    let stochastic = SamplerConfig {
        stochastic_ratio: 1.0,
        gaps: [0.001, 0.6],
        kumaraswamy: [1.0, 1.0, 1.0],
        jump: Some(JumpTarget::AnyStep),
        ..base
    };
    let cycle = SampleLabels::Cycle { n: 9 };
    let ones = SampleLabels::Given(vec![1; 9]);
    for (file, sampler, labels, ema, batch) in [
        ("s", base, &cycle, false, 500),
        ("one", base, &ones, true, 500),
        ("u", stochastic, &cycle, false, 500),
        ("u4", stochastic, &cycle, false, 4),
    ] {
        let expected = sample_batched(&trainer, &sampler, labels, 0, ema, batch, |_| {}).unwrap();
        assert_eq!(read_samples(&dir, file), expected, "{file}.npy");
    }
    let (u, _) = read_samples(&dir, "u");
    let (u4, _) = read_samples(&dir, "u4");
    assert_ne!(u, u4, "the stochastic sampler's noise follows the batches");

    // The run's last pictures are what `sample` draws from its last checkpoint with
    // seed 0 (EMA weights, labels cycling, 2,000 points).
    for nfe in ["1", "2", "4"] {
        let out = format!("grid{nfe}.png");
        let args = [
            "--nfe", nfe, "--n", "2000", "--seed", "0", "--ema", "--out", &out,
        ];
        ok(&dir, &[&["sample", "--checkpoint", ck][..], &args].concat());
        let grid = run_dir.join(format!("samples/step-0000030-nfe{nfe}.png"));
        assert!(
            std::fs::read(dir.join(&out)).unwrap() == std::fs::read(&grid).unwrap(),
            "{out} differs from {}",
            grid.display()
        );
    }
    ok(
        &dir,
        &[&common[..], &["--sampler", "heun", "--out", "h.npy"]].concat(),
    );
    // A malformed flag value is clap's usage error: exit code 2, naming the flag.
    let bad = run(
        &dir,
        &[&common[..], &["--gaps", "0.1", "--out", "x.npy"]].concat(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--gaps"));
    fails(
        &dir,
        &[
            &common[..],
            &["--sampler", "euler", "--jump", "any_step", "--out", "x.npy"],
        ]
        .concat(),
        "jump",
    );

    // Sampling errors.
    fails(&dir, &[&common[..], &["--out", "s.txt"]].concat(), "--out");
    fails(
        &dir,
        &[&common[..], &["--labels", "5", "--out", "x.npy"]].concat(),
        "--labels 5",
    );
    fails(
        &dir,
        &[&common[..], &["--batch-size", "0", "--out", "x.npy"]].concat(),
        "--batch-size",
    );
    fails(
        &dir,
        &["sample", "--checkpoint", ck, "--n", "0", "--out", "x.npy"],
        "--n",
    );
    fails(
        &dir,
        &[
            "sample",
            "--checkpoint",
            "missing.safetensors",
            "--n",
            "3",
            "--out",
            "x.npy",
        ],
        "missing.safetensors",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_writes_real_samples() {
    let dir = temp_dir("data");
    ok(
        &dir,
        &[
            "data",
            "--dataset",
            "moons",
            "--n",
            "50",
            "--seed",
            "3",
            "--out",
            "m.npy",
        ],
    );
    check_npy_pair(&dir.join("m.npy"), 50, 2);
    fails(
        &dir,
        &["data", "--dataset", "nope", "--n", "5", "--out", "x.npy"],
        "nope",
    );
    fails(
        &dir,
        &["data", "--dataset", "moons", "--n", "5", "--out", "x.txt"],
        "--out",
    );
    // Pictures: a scatter plot for the toys, a grid for images.
    ok(
        &dir,
        &["data", "--dataset", "moons", "--n", "50", "--out", "m.png"],
    );
    let root = repo(".");
    let root = root.to_str().unwrap();
    let args = [
        "data",
        "--dataset",
        "mnist",
        "--root",
        root,
        "--n",
        "20",
        "--out",
        "d.png",
    ];
    ok(&dir, &args);
    for png in ["m.png", "d.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png}");
    }
    fails(
        &dir,
        &["data", "--dataset", "npy", "--n", "5", "--out", "x.npy"],
        "--path",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_errors_are_one_line() {
    let dir = temp_dir("config");
    fails(&dir, &["train", "--config", "absent.toml"], "absent.toml");
    let text = std::fs::read_to_string(repo("configs/moons-fm.toml")).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        text.replace("batch_size", "batchsize"),
    )
    .unwrap();
    fails(
        &dir,
        &["train", "--config", "bad.toml", "--steps", "2"],
        "batchsize",
    );
    fails(
        &dir,
        &["train", "--out", "nowhere", "--resume"],
        "latest.safetensors",
    );
    let moons = repo("configs/moons-fm.toml");
    let moons = moons.to_str().unwrap();
    for bad in ["gpu", "cuda:x"] {
        fails(
            &dir,
            &["train", "--config", moons, "--steps", "2", "--device", bad],
            "unknown device",
        );
    }
    // clap's own usage errors keep exit code 2.
    assert_eq!(run(&dir, &["train", "--bogus"]).status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--minutes` stops a run at its time budget, saved, with its pictures and exit 0.
#[test]
fn train_stops_at_its_time_budget() {
    let dir = temp_dir("minutes");
    let config = repo("configs/moons-fm.toml");
    let args = [
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        "run",
    ];
    let out = ok(&dir, &[&args[..], &["--minutes", "0.0005"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the --minutes budget ran out at step"),
        "{stderr}"
    );
    assert!(dir.join("run/checkpoints/latest.safetensors").exists());
    assert!(std::fs::read_dir(dir.join("run/samples")).unwrap().count() > 0);
    for bad in ["0", "-1", "inf", "soon"] {
        let out = run(
            &dir,
            &[&args[..], &["--overwrite", "--minutes", bad]].concat(),
        );
        assert_eq!(out.status.code(), Some(2), "--minutes {bad}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shipped_configs_load() {
    use twinflow::flow::train::TrainConfig;
    let mut names: Vec<PathBuf> = std::fs::read_dir(repo("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    for name in &names {
        let cfg = TrainConfig::load(name).unwrap_or_else(|e| panic!("{}: {e}", name.display()));
        assert!(
            cfg.checkpoint_every > 0 && cfg.log_every > 0,
            "{}",
            name.display()
        );
    }
}

#[test]
fn train_classifier_quick_run_and_errors() {
    let dir = temp_dir("classifier");
    let root = repo("");
    let root = root.to_str().unwrap();
    let base = ["train-classifier", "--root", root];
    let quick = [&base[..], &["--epochs", "1", "--train-images", "640"]].concat();
    let out = ok(
        &dir,
        &[&quick[..], &["--out", "c/clf.safetensors"]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("epoch 1/1"), "{stderr}");
    assert!(stderr.contains("held-out accuracy"), "{stderr}");
    let (clf, meta) =
        twinflow::flow::classifier::load_classifier(dir.join("c/clf.safetensors")).unwrap();
    assert_eq!(meta.epochs.len(), 1);
    assert_eq!(clf.config().num_classes, 10);

    fails(
        &dir,
        &[&base[..], &["--train-images", "0"]].concat(),
        "--train-images",
    );
    fails(&dir, &[&base[..], &["--epochs", "0"]].concat(), "--epochs");
    fails(
        &dir,
        &["train-classifier", "--root", "no-such-dir"],
        "no-such-dir",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A folder of 8×8 grey PNG images, one subfolder per class: dark and bright squares
/// with a varying dot, `per_class` of each.
fn image_folder(dir: &Path, per_class: usize) {
    for (class, base) in [("dark", 30u8), ("bright", 220)] {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_class {
            let mut pixels = vec![base; 64];
            pixels[i % 64] = 255 - base;
            let file = std::fs::File::create(folder.join(format!("{i:03}.png"))).unwrap();
            let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 8, 8);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(&pixels).unwrap();
        }
    }
}

#[test]
fn a_classifier_per_dataset_scores_runs_on_that_dataset_only() {
    let dir = temp_dir("user-classifier");
    image_folder(&dir.join("shapes"), 20);
    image_folder(&dir.join("other"), 10);
    let train_classifier = |folder: &str, out: &str| {
        let args = [
            "train-classifier",
            "--dataset",
            "image-folder",
            "--path",
            folder,
        ];
        ok(
            &dir,
            &[&args[..], &["--epochs", "2", "--out", out]].concat(),
        )
    };
    let out = train_classifier("shapes", "shapes.safetensors");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a fixed random 4 of the 40 images"),
        "{stderr}"
    );
    train_classifier("other", "other.safetensors");
    let (_, meta) =
        twinflow::flow::classifier::load_classifier(dir.join("shapes.safetensors")).unwrap();
    assert_eq!(meta.dataset(), "image-folder shapes");

    let config = r#"steps = 4
[model]
kind = "mlp"
[model.mlp]
data_dim = 64
width = 32
depth = 1
emb_dim = 8
num_classes = 2
[method]
name = "flow_matching"
[data]
dataset = "image-folder"
path = "shapes"
batch_size = 8
"#;
    std::fs::write(dir.join("run.toml"), config).unwrap();
    ok(&dir, &["train", "--config", "run.toml", "--out", "run"]);
    let checkpoint = "run/checkpoints/latest.safetensors";
    let eval = [
        "eval",
        "--checkpoint",
        checkpoint,
        "--nfe",
        "1",
        "--n",
        "16",
    ];
    ok(
        &dir,
        &[&eval[..], &["--classifier", "shapes.safetensors"]].concat(),
    );
    let report = std::fs::read_to_string(dir.join("run/eval.json")).unwrap();
    assert!(
        report.contains("accuracy") && report.contains("fixed random 4"),
        "{report}"
    );
    fails(
        &dir,
        &[&eval[..], &["--classifier", "other.safetensors"]].concat(),
        "trained on image-folder other, the run on image-folder shapes",
    );
    fails(&dir, &eval, "train-classifier --dataset image-folder");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_writes_a_table_and_json_and_reports_errors() {
    let dir = temp_dir("eval");
    let config = repo("configs/moons-fm.toml");
    let config = config.to_str().unwrap();
    ok(
        &dir,
        &["train", "--config", config, "--out", "run", "--steps", "20"],
    );
    let ck = "run/checkpoints/latest.safetensors";
    let out = ok(
        &dir,
        &["eval", "--checkpoint", ck, "--nfe", "1,4,100", "--n", "200"],
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("energy") && table.contains("sliced_w2"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.trim_start().starts_with("100 ")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.trim_start().starts_with("real ")),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/eval.json")).unwrap()).unwrap();
    assert_eq!(json["checkpoint"], ck);
    assert_eq!(json["method"], "flow_matching");
    assert_eq!(json["dataset"], "moons");
    assert_eq!(json["step"], 20);
    assert_eq!(json["n"], 200);
    assert_eq!(json["rows"].as_array().unwrap().len(), 3);
    assert_eq!(json["rows"][2]["nfe"], 100);
    assert!(json["floor"]["energy"].is_number());
    // `eval` scores the samples `sample` draws with the same seed, n and NFE.
    ok(
        &dir,
        &[
            "sample",
            "--checkpoint",
            ck,
            "--nfe",
            "4",
            "--n",
            "200",
            "--out",
            "e4.npy",
        ],
    );
    let (x, labels) = read_samples(&dir, "e4");
    let scores = Reference::toy(Toy2d::Moons, 200, 0)
        .unwrap()
        .score(&x, &labels, 2)
        .unwrap();
    for (name, value) in &scores {
        let reported = json["rows"][1][name].as_f64().unwrap();
        // Equal up to the JSON round trip of the number.
        assert!(
            (reported - value).abs() <= 1e-12 * value.abs(),
            "{name}: eval {reported}, sample {value}"
        );
    }
    ok(
        &dir,
        &[
            "eval",
            "--checkpoint",
            ck,
            "--n",
            "50",
            "--ema",
            "--guidance",
            "1.5",
            "--json",
            "e.json",
        ],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("e.json")).unwrap()).unwrap();
    assert_eq!(
        (json["ema"].clone(), json["sampler"]["guidance"].clone()),
        (true.into(), 1.5.into())
    );

    for bad in ["1,,2", "0", "two", ""] {
        fails(&dir, &["eval", "--checkpoint", ck, "--nfe", bad], "--nfe");
    }
    fails(&dir, &["eval", "--checkpoint", ck, "--n", "1"], "--n");
    fails(
        &dir,
        &["eval", "--checkpoint", "absent.safetensors"],
        "absent.safetensors",
    );
    std::fs::write(dir.join("junk.safetensors"), b"junk").unwrap();
    fails(
        &dir,
        &["eval", "--checkpoint", "junk.safetensors"],
        "junk.safetensors",
    );

    // Image data without a classifier: one line pointing at train-classifier.
    let mnist = format!(
        "steps = 1\n[model]\nkind = \"mlp\"\n[model.mlp]\ndata_dim = 784\nwidth = 16\n\
         depth = 1\nemb_dim = 8\nnum_classes = 10\n[method]\nname = \"flow_matching\"\n\
         [data]\ndataset = \"mnist\"\nbatch_size = 4\nroot = {:?}\n",
        repo("").to_str().unwrap()
    );
    std::fs::write(dir.join("mnist.toml"), mnist).unwrap();
    ok(&dir, &["train", "--config", "mnist.toml", "--out", "m"]);
    fails(
        &dir,
        &[
            "eval",
            "--checkpoint",
            "m/checkpoints/latest.safetensors",
            "--classifier",
            "none.safetensors",
        ],
        "twinflow train-classifier",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn default_config_trains_mnist_from_the_repository_root() {
    let dir = temp_dir("default");
    // Elsewhere, the default (MNIST) run says where it looked for the data.
    fails(&dir, &["train", "--steps", "1"], "MNIST-10k not found");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    ok(&repo(""), &["train", "--steps", "2", "--out", out]);
    let run_dir = dir.join("run");
    let resolved = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(resolved.contains("dataset = \"mnist\""), "{resolved}");
    assert!(run_dir.join("checkpoints/latest.safetensors").is_file());
    for nfe in [1, 2, 4] {
        let grid = run_dir.join(format!("samples/step-0000002-nfe{nfe}.png"));
        assert!(grid.is_file(), "{} missing", grid.display());
    }
    // Away from the repository, the run's relative data root is given with --root,
    // which the error recommends, to sample, evaluate and resume.
    let root = repo("");
    let root = root.to_str().unwrap();
    let checkpoint = "run/checkpoints/latest.safetensors";
    let sample = [
        "sample",
        "--checkpoint",
        checkpoint,
        "--n",
        "2",
        "--out",
        "s.npy",
    ];
    fails(&dir, &sample, "flag --root");
    ok(&dir, &[&sample[..], &["--root", root]].concat());
    let eval = [
        "eval",
        "--checkpoint",
        checkpoint,
        "--n",
        "4",
        "--classifier",
        "none",
    ];
    fails(&dir, &eval, "flag --root");
    fails(
        &dir,
        &[&eval[..], &["--root", root]].concat(),
        "no classifier at none",
    );
    let resume = ["train", "--out", "run", "--resume", "--steps", "3"];
    fails(&dir, &resume, "flag --root");
    ok(&dir, &[&resume[..], &["--root", root]].concat());
    std::fs::remove_dir_all(&dir).unwrap();
}
