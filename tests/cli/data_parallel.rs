//! `train --devices` and the rank environment on the CPU: thread ranks train the same
//! run as one process with as many micro-batches (the trainer-level equivalence is in
//! tests/flow/data_parallel.rs), a resume on another world size warns, Ctrl-C stops
//! every rank saved, and bad device lists or rank environments are one-line errors.

use super::reliability::interrupted_run;
use super::{fails, ok, repo, temp_dir, BIN};
use std::path::Path;
use std::process::Command;

/// Every metrics line of a run without its timing.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v.as_object_mut().unwrap().remove("samples_per_sec");
            v
        })
        .collect()
}

#[test]
fn data_parallel_thread_ranks_train_as_micro_batches_do() {
    let dir = temp_dir("dp-threads");
    let config = std::fs::read_to_string(repo("configs/moons-twinflow.toml")).unwrap();
    let micro = config.replacen("\nseed = 7\n", "\nseed = 7\nmicro_batches = 2\n", 1);
    assert_ne!(micro, config);
    std::fs::write(dir.join("one.toml"), &config).unwrap();
    std::fs::write(dir.join("micro.toml"), micro).unwrap();
    let steps = ["--steps", "30"];
    ok(
        &dir,
        &[
            &[
                "train",
                "--config",
                "one.toml",
                "--out",
                "ranks",
                "--devices",
                "cpu,cpu",
            ][..],
            &steps,
        ]
        .concat(),
    );
    ok(
        &dir,
        &[
            &["train", "--config", "micro.toml", "--out", "micro"][..],
            &steps,
        ]
        .concat(),
    );
    let ranks = metrics(&dir.join("ranks"));
    assert_eq!(ranks.len(), 3);
    assert_eq!(ranks, metrics(&dir.join("micro")));

    // Continuing on another number of ranks says what that changes.
    let out = ok(
        &dir,
        &["train", "--out", "ranks", "--resume", "--steps", "40"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("trained on 2 rank(s) and continues on 1"),
        "{stderr}"
    );
    let out = ok(
        &dir,
        &[
            "train",
            "--out",
            "ranks",
            "--resume",
            "--steps",
            "50",
            "--devices",
            "cpu,cpu,cpu,cpu",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("trained on 1 rank(s) and continues on 4"),
        "{stderr}"
    );
    assert_eq!(metrics(&dir.join("ranks")).len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_parallel_ctrl_c_stops_every_thread_rank_saved() {
    let dir = temp_dir("dp-signal");
    let (status, stderr) = interrupted_run(&dir, &["INT"], &["--devices", "cpu,cpu"]);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped by SIGINT"), "{stderr}");
    let out = ok(
        &dir,
        &[
            "train",
            "--out",
            "run",
            "--resume",
            "--steps",
            "1",
            "--devices",
            "cpu,cpu",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to do"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_parallel_bad_devices_and_rank_environments_are_errors() {
    let dir = temp_dir("dp-errors");
    let train = ["train", "--config", "unused.toml"];
    fails(
        &dir,
        &[&train[..], &["--devices", "cpu,gpu"]].concat(),
        "unknown device \"gpu\"",
    );
    fails(
        &dir,
        &[&train[..], &["--devices", "cuda:1,cuda:1"]].concat(),
        "named twice",
    );
    fails(
        &dir,
        &[&train[..], &["--devices", "cpu,cuda:0"]].concat(),
        "mixes the CPU",
    );
    let with_env = |vars: &[(&str, &str)], extra: &[&str], needle: &str| {
        let out = Command::new(BIN)
            .args(["train", "--config", "unused.toml"])
            .args(extra)
            .envs(vars.iter().copied())
            .current_dir(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{stderr}"
        );
    };
    with_env(&[("RANK", "1")], &[], "set together");
    with_env(
        &[("RANK", "3"), ("WORLD_SIZE", "2")],
        &[],
        "not below WORLD_SIZE=2",
    );
    with_env(
        &[("RANK", "0"), ("WORLD_SIZE", "2")],
        &["--devices", "cpu,cpu"],
        "unset RANK",
    );
    // GPU ranks need a build with NCCL; with one, ranks that cannot open their GPU (as
    // on a machine without one) fail, and the launcher says which.
    let gpus = [&train[..], &["--devices", "cuda:0,cuda:1"]].concat();
    match cfg!(feature = "nccl") {
        false => fails(&dir, &gpus, "built without NCCL"),
        true => {
            let out = super::run(&dir, &gpus);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_ne!(out.status.code(), Some(0), "{stderr}");
            assert!(
                stderr.contains("failed") && stderr.contains("stopping the other ranks"),
                "{stderr}"
            );
        }
    }
    // Rank processes need NCCL and GPUs: on the CPU they are refused before training.
    let config = repo("configs/moons-fm.toml");
    let config = config.to_str().unwrap();
    let out = Command::new(BIN)
        .args([
            "train", "--config", config, "--out", "run", "--device", "cpu",
        ])
        .envs([("RANK", "1"), ("WORLD_SIZE", "2")])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--devices cpu,cpu"), "{stderr}");
    assert!(
        !dir.join("run").exists(),
        "a refused rank wrote a run directory"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
