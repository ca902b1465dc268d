//! The run directory as a whole (`twinflow::flow::train::run_dir`): one lock holder at a
//! time, the checkpoint an existing run holds, starting over without touching other
//! files, cutting the metrics log back to a checkpoint, and removing a killed save's
//! temporaries. (`tests/cli/reliability.rs` does the same with real processes.)

use std::path::PathBuf;
use twinflow::flow::train::run_dir::{self, MetricsRepair, RunLock};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twinflow-rundir-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_lock_has_one_holder_and_names_it() {
    let dir = temp_dir("lock").join("run");
    let lock = RunLock::acquire(&dir).unwrap();
    assert_eq!(lock.path(), dir.join("train.lock"));
    let pid = std::process::id().to_string();
    assert_eq!(std::fs::read_to_string(lock.path()).unwrap().trim(), pid);
    // A second lock (another open file, as another process would have) is refused.
    let err = RunLock::acquire(&dir).unwrap_err().to_string();
    assert!(err.contains(&format!("PID {pid}")), "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");
    drop(lock);
    RunLock::acquire(&dir).unwrap();
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn metrics_are_cut_back_to_the_checkpoint() {
    let dir = temp_dir("metrics");
    let path = dir.join("metrics.jsonl");
    // Nothing to do without a log.
    assert_eq!(
        run_dir::reconcile_metrics(&dir, 5).unwrap(),
        MetricsRepair::default()
    );
    // Steps 1 to 4, a resume from step 2 (3 and 4 again, as an older version appended),
    // a step after the checkpoint and a torn last line.
    let log = [
        r#"{"step":1,"loss":1.0}"#,
        r#"{"step":2,"loss":2.0}"#,
        r#"{"step":3,"loss":3.0}"#,
        r#"{"step":4,"loss":4.0}"#,
        r#"{"step":3,"loss":3.5}"#,
        r#"{"step":4,"loss":4.5}"#,
        r#"{"step":6,"loss":6.0}"#,
        r#"{"step":7,"lo"#,
    ]
    .join("\n");
    std::fs::write(&path, log).unwrap();
    let repair = run_dir::reconcile_metrics(&dir, 5).unwrap();
    assert_eq!(
        repair,
        MetricsRepair {
            kept: 4,
            after_checkpoint: 1,
            superseded: 2,
            unreadable: 1
        }
    );
    let kept = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        kept,
        "{\"step\":1,\"loss\":1.0}\n{\"step\":2,\"loss\":2.0}\n{\"step\":3,\"loss\":3.5}\n\
         {\"step\":4,\"loss\":4.5}\n"
    );
    // A log already in step is left alone; a fresh start keeps nothing.
    assert!(!run_dir::reconcile_metrics(&dir, 4).unwrap().changed());
    assert_eq!(
        run_dir::reconcile_metrics(&dir, 0)
            .unwrap()
            .after_checkpoint,
        4
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, ["metrics.jsonl"], "a temporary was left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clearing_a_run_keeps_other_files_and_stale_temporaries_go() {
    let dir = temp_dir("clear");
    assert_eq!(run_dir::existing_checkpoint(&dir).unwrap(), None);
    let checkpoints = dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    for name in [
        "step-5.safetensors",
        "step-40.safetensors",
        "step-x.safetensors",
    ] {
        std::fs::write(checkpoints.join(name), b"").unwrap();
    }
    let steps: Vec<u64> = run_dir::step_checkpoints(&dir)
        .unwrap()
        .into_iter()
        .map(|(step, _)| step)
        .collect();
    assert_eq!(steps, vec![5, 40]);
    assert_eq!(
        run_dir::existing_checkpoint(&dir).unwrap(),
        Some(checkpoints.join("step-40.safetensors"))
    );
    std::fs::write(checkpoints.join("latest.safetensors"), b"").unwrap();
    assert_eq!(
        run_dir::existing_checkpoint(&dir).unwrap(),
        Some(checkpoints.join("latest.safetensors"))
    );

    let stale = checkpoints.join(".latest.safetensors.123-4.tmp");
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(checkpoints.join("notes.tmp"), b"mine").unwrap();
    assert_eq!(
        run_dir::remove_stale_temporaries(&dir).unwrap(),
        vec![stale]
    );
    assert!(checkpoints.join("notes.tmp").is_file());

    for file in ["metrics.jsonl", "config.toml", "eval.json", "notes.txt"] {
        std::fs::write(dir.join(file), b"x").unwrap();
    }
    std::fs::create_dir_all(dir.join("samples")).unwrap();
    run_dir::clear_run(&dir).unwrap();
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["notes.txt"]);
    let _ = std::fs::remove_dir_all(&dir);
}
