//! How `twinflow` keeps runs and outputs whole, with real processes: one `train` per
//! run directory (a second fails naming the holder's PID; `kill -9` frees it); no
//! silent takeover of an existing run (`--resume` or `--overwrite`); the metrics log
//! cut back to the checkpoint on resume; SIGINT and SIGTERM stop after a saved step;
//! outputs that never replace a file of another kind and are checked before the work;
//! resuming from an older checkpoint when the newest is torn; and runs killed with
//! SIGKILL at many points that end bit for bit where an uninterrupted run does.

use super::{fails, ok, run, temp_dir, BIN};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use twinflow::nn::Checkpoint;

/// A moons run that takes well under a millisecond per step on 2 cores: a metrics line
/// every step, a checkpoint every `checkpoint_every`, no sample pictures.
fn quick_toml(steps: u64, checkpoint_every: u64) -> String {
    format!(
        r#"steps = {steps}
seed = 3
log_every = 1
checkpoint_every = {checkpoint_every}
sample_nfe = []

[model]
kind = "mlp"
[model.mlp]
data_dim = 2
width = 32
depth = 1
emb_dim = 8
num_classes = 2

[method]
name = "flow_matching"

[data]
dataset = "moons"
batch_size = 64
"#
    )
}

/// Writes `quick_toml` as `dir/quick.toml`.
fn write_quick_config(dir: &Path, steps: u64, checkpoint_every: u64) {
    std::fs::write(dir.join("quick.toml"), quick_toml(steps, checkpoint_every)).unwrap();
}

/// Starts `twinflow` in `dir` without waiting for it.
fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` and returns its status and stderr.
fn finish(child: Child) -> (ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends `signal` (`INT`, `TERM`) to `child` with the system's `kill`.
fn send(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal} failed");
}

/// Waits until `done` holds (polling), or panics after a minute.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lines of `run/metrics.jsonl` (empty when missing).
fn metrics_lines(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
}

/// The steps of the metrics log, every line parsed as JSON.
fn metrics_steps(run: &Path) -> Vec<u64> {
    metrics_lines(run)
        .iter()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            v["step"].as_u64().unwrap()
        })
        .collect()
}

/// The step saved in `run/checkpoints/latest.safetensors`.
fn latest_step(run: &Path) -> u64 {
    Checkpoint::load(run.join("checkpoints/latest.safetensors"))
        .unwrap()
        .step
}

/// Whether `run` holds a checkpoint to resume from.
fn has_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        })
        .unwrap_or(false)
}

/// The names of the `.tmp` files in `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_second_train_in_a_locked_run_directory_fails_naming_the_holder() {
    let dir = temp_dir("lock");
    write_quick_config(&dir, 10_000_000, 200);
    let mut first = spawn(&dir, &["train", "--config", "quick.toml", "--out", "run"]);
    let run_dir = dir.join("run");
    wait_for("the first run's checkpoint", || {
        run_dir.join("checkpoints/latest.safetensors").is_file()
    });
    let holder = format!("PID {}", first.id());
    // Whatever the second one asks for, it fails at once naming the holder.
    for args in [
        &["train", "--config", "quick.toml", "--out", "run"][..],
        &["train", "--out", "run", "--resume"],
        &[
            "train",
            "--config",
            "quick.toml",
            "--out",
            "run",
            "--overwrite",
        ],
    ] {
        let started = Instant::now();
        fails(&dir, args, &holder);
        fails(&dir, args, "is in use by another `twinflow train`");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{args:?} waited"
        );
    }
    // SIGKILL: no clean-up code runs, and the kernel still releases the lock.
    first.kill().unwrap();
    first.wait().unwrap();
    let step = latest_step(&run_dir);
    let target = (step + 10).to_string();
    ok(
        &dir,
        &["train", "--out", "run", "--resume", "--steps", &target],
    );
    assert_eq!(latest_step(&run_dir), step + 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_into_an_existing_run_needs_resume_or_overwrite() {
    let dir = temp_dir("overwrite");
    write_quick_config(&dir, 10, 5);
    let train = ["train", "--config", "quick.toml", "--out", "run"];
    // A directory that exists but holds no checkpoint is fine.
    std::fs::create_dir_all(dir.join("run")).unwrap();
    ok(&dir, &train);
    let run_dir = dir.join("run");
    let latest = run_dir.join("checkpoints/latest.safetensors");
    let saved = std::fs::read(&latest).unwrap();

    fails(&dir, &train, "--resume");
    fails(&dir, &train, "--overwrite");
    fails(
        &dir,
        &[&train[..], &["--steps", "3"]].concat(),
        "already holds a run",
    );
    assert_eq!(
        std::fs::read(&latest).unwrap(),
        saved,
        "a refused run wrote"
    );
    assert_eq!(metrics_steps(&run_dir), (1..=10).collect::<Vec<_>>());
    // Both at once is a usage error.
    let both = run(&dir, &["train", "--out", "run", "--resume", "--overwrite"]);
    assert_eq!(both.status.code(), Some(2));
    // --overwrite with a config that cannot be built deletes nothing.
    fails(
        &dir,
        &[&train[..], &["--overwrite", "--device", "gpu"]].concat(),
        "unknown device",
    );
    assert_eq!(std::fs::read(&latest).unwrap(), saved);

    // --overwrite clears the old run's files and starts again; other files stay.
    std::fs::write(run_dir.join("eval.json"), "{}").unwrap();
    std::fs::write(run_dir.join("notes.txt"), "mine").unwrap();
    ok(
        &dir,
        &[&train[..], &["--overwrite", "--steps", "4"]].concat(),
    );
    assert!(!run_dir.join("checkpoints/step-10.safetensors").exists());
    assert!(!run_dir.join("eval.json").exists());
    assert!(run_dir.join("notes.txt").is_file());
    assert_eq!(latest_step(&run_dir), 4);
    assert_eq!(metrics_steps(&run_dir), vec![1, 2, 3, 4]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_cuts_the_metrics_log_back_to_the_checkpoint() {
    let dir = temp_dir("metrics");
    write_quick_config(&dir, 20, 10);
    ok(&dir, &["train", "--config", "quick.toml", "--out", "run"]);
    let run_dir = dir.join("run");
    // A run that went on past its checkpoint and was killed mid-line: steps 21 to 23
    // logged, step 24 torn, none of them saved.
    let mut log = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    for step in 21..=23 {
        log.push_str(&format!("{{\"step\":{step},\"loss\":1.0}}\n"));
    }
    log.push_str("{\"step\":24,\"lo");
    std::fs::write(run_dir.join("metrics.jsonl"), log).unwrap();
    let out = ok(
        &dir,
        &["train", "--out", "run", "--resume", "--steps", "26"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("removed 3 line(s) after step 20") && stderr.contains("1 unreadable"),
        "{stderr}"
    );
    assert_eq!(metrics_steps(&run_dir), (1..=26).collect::<Vec<_>>());
    // A fresh run in a directory without checkpoints keeps nothing of an earlier log.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("metrics.jsonl"), "{\"step\":1,\"loss\":9.0}\n").unwrap();
    ok(
        &dir,
        &[
            "train",
            "--config",
            "quick.toml",
            "--out",
            "fresh",
            "--steps",
            "3",
        ],
    );
    assert_eq!(metrics_steps(&fresh), vec![1, 2, 3]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Starts a long run (with `extra` train flags), waits for 50 metrics lines, sends
/// `signals` (`kill -s` names), and returns the exit status and stderr.
pub(super) fn interrupted_run(
    dir: &Path,
    signals: &[&str],
    extra: &[&str],
) -> (ExitStatus, String) {
    write_quick_config(dir, 10_000_000, 1_000_000);
    let train = ["train", "--config", "quick.toml", "--out", "run"];
    let child = spawn(dir, &[&train[..], extra].concat());
    let run_dir = dir.join("run");
    wait_for("50 metrics lines", || metrics_lines(&run_dir).len() >= 50);
    for signal in signals {
        send(&child, signal);
    }
    finish(child)
}

#[test]
fn sigint_stops_after_a_saved_step_and_resume_continues() {
    let dir = temp_dir("sigint");
    let (status, stderr) = interrupted_run(&dir, &["INT"], &[]);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopped by SIGINT"), "{stderr}");
    let run_dir = dir.join("run");
    // The step it reached is saved (off the checkpoint cadence) and logged, once.
    let step = latest_step(&run_dir);
    assert!(step >= 50, "{step}");
    let step_file = run_dir.join(format!("checkpoints/step-{step}.safetensors"));
    assert!(step_file.is_file(), "{}", step_file.display());
    assert_eq!(metrics_steps(&run_dir), (1..=step).collect::<Vec<_>>());
    let target = (step + 20).to_string();
    ok(
        &dir,
        &["train", "--out", "run", "--resume", "--steps", &target],
    );
    assert_eq!(latest_step(&run_dir), step + 20);
    assert_eq!(metrics_steps(&run_dir), (1..=step + 20).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_stops_with_143_and_a_second_signal_stops_at_once() {
    let dir = temp_dir("sigterm");
    let (status, stderr) = interrupted_run(&dir, &["TERM"], &[]);
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    let step = latest_step(&dir.join("run"));
    assert_eq!(
        metrics_steps(&dir.join("run")),
        (1..=step).collect::<Vec<_>>()
    );

    // Two Ctrl-Cs: the second ends the process without waiting for the save; whatever
    // it had saved is whole, and the run resumes.
    let dir = temp_dir("sigint-twice");
    let (status, stderr) = interrupted_run(&dir, &["INT", "INT"], &[]);
    assert_eq!(status.code(), Some(130), "{stderr}");
    let run_dir = dir.join("run");
    let saved: Vec<u64> = std::fs::read_dir(run_dir.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|x| x == "safetensors"))
        .map(|path| {
            Checkpoint::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .step
        })
        .collect();
    if let Some(newest) = saved.iter().max() {
        let target = (newest + 5).to_string();
        ok(
            &dir,
            &["train", "--out", "run", "--resume", "--steps", &target],
        );
        assert_eq!(latest_step(&run_dir), newest + 5);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn outputs_are_checked_first_and_never_replace_another_kind_of_file() {
    let dir = temp_dir("outputs");
    write_quick_config(&dir, 5, 5);
    ok(&dir, &["train", "--config", "quick.toml", "--out", "run"]);
    let ck = "run/checkpoints/latest.safetensors";
    let saved = std::fs::read(dir.join(ck)).unwrap();
    let eval = ["eval", "--checkpoint", ck, "--n", "20", "--nfe", "1"];

    // `eval --json` pointed at the checkpoint: refused, the checkpoint intact.
    fails(&dir, &[&eval[..], &["--json", ck]].concat(), "--json");
    fails(
        &dir,
        &[&eval[..], &["--json", ck]].concat(),
        "a training checkpoint",
    );
    assert_eq!(std::fs::read(dir.join(ck)).unwrap(), saved);
    // A JSON report replaces a JSON report, leaving no temporary behind.
    ok(&dir, &[&eval[..], &["--json", "e.json"]].concat());
    ok(&dir, &[&eval[..], &["--json", "e.json"]].concat());
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
    // A path under a regular file cannot be written: said before any work.
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    fails(
        &dir,
        &[&eval[..], &["--json", "notes.txt/e.json"]].concat(),
        "cannot write in notes.txt",
    );
    fails(
        &dir,
        &[
            "sample",
            "--checkpoint",
            "absent.safetensors",
            "--n",
            "4",
            "--out",
            "notes.txt/s.npy",
        ],
        "--out notes.txt/s.npy",
    );

    // `sample` and `data` refuse to replace other kinds, and directories.
    ok(
        &dir,
        &["sample", "--checkpoint", ck, "--n", "4", "--out", "s.png"],
    );
    std::fs::copy(dir.join("s.png"), dir.join("p.npy")).unwrap();
    fails(
        &dir,
        &["sample", "--checkpoint", ck, "--n", "4", "--out", "p.npy"],
        "it is a PNG picture, not a NumPy .npy array",
    );
    std::fs::create_dir_all(dir.join("d.png")).unwrap();
    fails(
        &dir,
        &["sample", "--checkpoint", ck, "--n", "4", "--out", "d.png"],
        "is a directory",
    );
    std::fs::write(dir.join("m.labels.npy"), "{\"mine\": 1}").unwrap();
    fails(
        &dir,
        &["data", "--dataset", "moons", "--n", "5", "--out", "m.npy"],
        "m.labels.npy",
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("m.labels.npy")).unwrap(),
        "{\"mine\": 1}"
    );

    // `train-classifier` refuses a training checkpoint before it trains (or reads data).
    fails(
        &dir,
        &["train-classifier", "--root", "no-such-dir", "--out", ck],
        "a training checkpoint",
    );
    assert_eq!(std::fs::read(dir.join(ck)).unwrap(), saved);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_falls_back_to_an_older_checkpoint_and_removes_stale_temporaries() {
    let dir = temp_dir("fallback");
    write_quick_config(&dir, 20, 10);
    ok(&dir, &["train", "--config", "quick.toml", "--out", "run"]);
    let run_dir = dir.join("run");
    let checkpoints = run_dir.join("checkpoints");
    // latest torn in half, step-20 gone, a temporary of a killed save left behind.
    let latest = checkpoints.join("latest.safetensors");
    let bytes = std::fs::read(&latest).unwrap();
    std::fs::write(&latest, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(checkpoints.join("step-20.safetensors")).unwrap();
    std::fs::write(checkpoints.join(".latest.safetensors.4242-0.tmp"), b"half").unwrap();
    let out = ok(
        &dir,
        &["train", "--out", "run", "--resume", "--steps", "25"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("passed over an unreadable checkpoint"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resuming from") && stderr.contains("step-10"),
        "{stderr}"
    );
    assert!(stderr.contains("removed 1 temporary file"), "{stderr}");
    assert!(temporaries(&checkpoints).is_empty());
    assert_eq!(latest_step(&run_dir), 25);
    assert_eq!(metrics_steps(&run_dir), (1..=25).collect::<Vec<_>>());

    // Nothing readable at all: one line naming the files.
    for entry in std::fs::read_dir(&checkpoints).unwrap().flatten() {
        std::fs::write(entry.path(), b"junk").unwrap();
    }
    fails(
        &dir,
        &["train", "--out", "run", "--resume"],
        "no readable checkpoint",
    );
    // A directory given as --config.
    fails(
        &dir,
        &["train", "--config", "run"],
        "--config run is a directory",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every tensor of a checkpoint by name (model, EMA, optimizer), as raw bytes.
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

/// `(step, loss)` of every metrics line.
fn losses(run: &Path) -> Vec<(u64, String)> {
    metrics_lines(run)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

#[test]
fn runs_killed_at_many_points_end_where_an_uninterrupted_run_does() {
    const STEPS: u64 = 1500;
    let dir = temp_dir("crash");
    write_quick_config(&dir, STEPS, 25);
    let config = ["train", "--config", "quick.toml", "--out"];
    ok(&dir, &[&config[..], &["reference"]].concat());

    // SIGKILL once the log reaches these lines (the kill lands a little later, at a
    // step that varies from run to run: mid-step, mid-save, before the first save).
    let run_dir = dir.join("run");
    // The log's length at each kill, for the failure message.
    let mut killed_at = Vec::new();
    for kill_at in [7, 160, 333, 612, 777, 1013, 1290] {
        let child = if has_checkpoint(&run_dir) {
            spawn(&dir, &["train", "--out", "run", "--resume"])
        } else {
            spawn(&dir, &[&config[..], &["run"]].concat())
        };
        let mut child = child;
        wait_for("the log or the end of the run", || {
            metrics_lines(&run_dir).len() >= kill_at || child.try_wait().unwrap().is_some()
        });
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            killed_at.push(metrics_lines(&run_dir).len());
        }
        child.wait().unwrap();
    }
    assert!(
        killed_at.len() >= 4,
        "only {} runs were killed before their end (logs of {killed_at:?} lines)",
        killed_at.len()
    );
    eprintln!("killed with logs of {killed_at:?} lines");
    ok(&dir, &["train", "--out", "run", "--resume"]);

    let reference = dir.join("reference");
    assert_eq!(
        tensors(&run_dir.join("checkpoints/latest.safetensors")),
        tensors(&reference.join("checkpoints/latest.safetensors")),
        "the resumed run's final checkpoint differs from the uninterrupted run's"
    );
    assert_eq!(metrics_steps(&run_dir), (1..=STEPS).collect::<Vec<_>>());
    assert_eq!(losses(&run_dir), losses(&reference));
    assert!(temporaries(&run_dir.join("checkpoints")).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
