//! Sizes from the command line and from files, with the real binary: a network, batch
//! or sample count too large for the machine, and a checkpoint whose config declares
//! a network other than the one it holds, are each one `error:` line with exit status
//! 1, never a panic or an abort; `--resume` says when it ignores a different
//! `--config`.

use super::{fails, ok, run, temp_dir};
use std::path::Path;
use twinflow::nn::Checkpoint;

/// A moons config whose `[model.mlp]` width and `[data]` batch size are given.
fn moons(width: &str, batch_size: &str, steps: u64, lr: &str) -> String {
    format!(
        r#"steps = {steps}
sample_nfe = []
[model]
kind = "mlp"
[model.mlp]
data_dim = 2
width = {width}
depth = 1
emb_dim = 4
num_classes = 2
[method]
name = "flow_matching"
[optimizer]
lr = {lr}
[data]
dataset = "moons"
batch_size = {batch_size}
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    std::fs::write(dir.join(name), text).unwrap();
    name.to_string()
}

#[test]
fn huge_sizes_are_one_line_errors() {
    let dir = temp_dir("huge");
    let wide = write(&dir, "wide.toml", &moons("10000000000", "8", 2, "1e-3"));
    fails(
        &dir,
        &["train", "--config", &wide, "--out", "wide"],
        "model.mlp",
    );
    fails(
        &dir,
        &["train", "--config", &wide, "--out", "wide"],
        "parameters",
    );
    let batch = write(
        &dir,
        "batch.toml",
        &moons("8", "1000000000000000", 2, "1e-3"),
    );
    fails(
        &dir,
        &["train", "--config", &batch, "--out", "batch"],
        "allocate",
    );
    let small = write(&dir, "small.toml", &moons("8", "8", 2, "1e-3"));
    ok(&dir, &["train", "--config", &small, "--out", "run"]);
    let checkpoint = "run/checkpoints/latest.safetensors";
    let max = u64::MAX.to_string();
    fails(
        &dir,
        &[
            "sample",
            "--checkpoint",
            checkpoint,
            "--n",
            &max,
            "--out",
            "s.npy",
        ],
        &format!("--n {max}"),
    );
    fails(
        &dir,
        &["data", "--dataset", "moons", "--n", &max, "--out", "d.npy"],
        &format!("--n {max}"),
    );
    fails(
        &dir,
        &[
            "eval",
            "--checkpoint",
            checkpoint,
            "--n",
            &max,
            "--nfe",
            "1,2",
        ],
        "more than can be counted",
    );
    fails(
        &dir,
        &[
            "sample",
            "--checkpoint",
            checkpoint,
            "--n",
            "1",
            "--nfe",
            &max,
            "--out",
            "s.npy",
        ],
        "steps must lie in",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_declaring_a_huge_network_is_refused_by_sample_eval_and_resume() {
    let dir = temp_dir("crafted");
    let small = write(&dir, "small.toml", &moons("8", "8", 2, "1e-3"));
    ok(&dir, &["train", "--config", &small, "--out", "run"]);
    // The metadata of a small file (its tensors stay those of width 8) rewritten to
    // declare a network of width 10^7: 10^14 parameters if it were built.
    let latest = dir.join("run/checkpoints/latest.safetensors");
    let mut ck = Checkpoint::load(&latest).unwrap();
    ck.config.as_mut().unwrap()["train"]["model"]["mlp"]["width"] = serde_json::json!(10_000_000);
    ck.save(&latest).unwrap();
    assert!(std::fs::metadata(&latest).unwrap().len() < 700_000);
    let checkpoint = "run/checkpoints/latest.safetensors";
    let declared = "declares a network";
    fails(
        &dir,
        &[
            "sample",
            "--checkpoint",
            checkpoint,
            "--n",
            "4",
            "--out",
            "s.npy",
        ],
        declared,
    );
    fails(
        &dir,
        &["eval", "--checkpoint", checkpoint, "--n", "8"],
        declared,
    );
    // The file reads as a checkpoint, so resume does not pass over it: it refuses it.
    fails(
        &dir,
        &["train", "--out", "run", "--resume", "--steps", "3"],
        declared,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_warns_when_it_ignores_a_different_config() {
    let dir = temp_dir("ignored");
    let first = write(&dir, "first.toml", &moons("8", "8", 2, "1e-3"));
    ok(&dir, &["train", "--config", &first, "--out", "run"]);
    // The same config: no warning.
    let same = run(
        &dir,
        &["train", "--config", &first, "--out", "run", "--resume"],
    );
    let stderr = String::from_utf8_lossy(&same.stderr);
    assert!(
        same.status.success() && !stderr.contains("warning"),
        "{stderr}"
    );
    // Edited: more steps and another learning rate, which the resumed run does not use.
    let edited = write(&dir, "edited.toml", &moons("8", "8", 5, "2e-3"));
    let out = ok(
        &dir,
        &["train", "--config", &edited, "--out", "run", "--resume"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("optimizer.lr") && stderr.contains("steps"),
        "{stderr}"
    );
    assert!(stderr.contains("already at step 2"), "{stderr}");
    // --steps applies to a resumed run, so a different `steps` in the file is not
    // reported then.
    let out = ok(
        &dir,
        &[
            "train", "--config", &edited, "--out", "run", "--resume", "--steps", "3",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("optimizer.lr") && !stderr.contains("steps,"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
