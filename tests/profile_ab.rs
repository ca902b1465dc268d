//! `scripts/profile_ab.py`, which `scripts/profile-ab.sh` runs on the output of
//! alternating bench runs: the medians, ranges and changes it reports for the timed
//! measurements and for each op of the profile tables. Needs `python3` (standard
//! library only; `$TWINFLOW_PYTHON` if set); skips, saying so, without one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One run's output as `dit_step --json --profile` prints it (stdout, then stderr),
/// with the given step time and times of the two ops.
fn run_output(step_ms: f64, matmul_ms: f64, norm_ms: f64) -> String {
    format!(
        "{{\"bench\":\"dit\",\"batch\":32,\"train_step_ms\":{step_ms:.1},\"peak_rss_mib\":240}}\n\
         ## op profile: train step\n\n\
         | op | dtype | calls | M elements | ms | share |\n\
         |---|---|---:|---:|---:|---:|\n\
         | matmul | F32 | 35 | 20.9 | {matmul_ms:.2} | 80.0% |\n\
         | norm | F32 | 9 | 7.2 | {norm_ms:.2} | 20.0% |\n\
         | total | | | | {:.2} | |\n\n\
         ## products by shape: train step\n\n\
         | op | dtype | batch × m × k × n | layouts | calls | ms | GFLOP/s | share |\n\
         |---|---|---|---|---:|---:|---:|---:|\n\
         | matmul | F32 | 1 × 6272 × 128 × 384 | NT | 4 | {matmul_ms:.2} | 250.0 | 100.0% |\n",
        matmul_ms + norm_ms
    )
}

fn write_runs(dir: &Path, side: &str, runs: &[(f64, f64, f64)]) -> Vec<PathBuf> {
    runs.iter()
        .enumerate()
        .map(|(i, &(step, matmul, norm))| {
            let path = dir.join(format!("{side}.{i}.txt"));
            std::fs::write(&path, run_output(step, matmul, norm)).unwrap();
            path
        })
        .collect()
}

#[test]
fn profile_ab_reports_medians_ranges_and_changes() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/profile_ab.py");
    let python = std::env::var("TWINFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&python).arg("--version").output().is_err() {
        eprintln!("skipping: no {python} to run {}", script.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("twinflow-profile-ab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A's medians: step 40, matmul 10, norm 2; B's: step 30, matmul 8 (norm unchanged).
    let a = write_runs(
        &dir,
        "a",
        &[(41.0, 10.0, 2.0), (40.0, 9.0, 1.5), (39.0, 10.5, 2.5)],
    );
    let b = write_runs(
        &dir,
        "b",
        &[(30.0, 8.0, 2.0), (28.0, 7.5, 2.5), (33.0, 8.5, 1.0)],
    );
    let out = Command::new(&python)
        .arg(&script)
        .args(["--labels", "base", "head"])
        .args(&a)
        .arg("--")
        .args(&b)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in\n{text}"))
    };
    assert!(line("A = base, B = head; 3 and 3 runs").contains("alternating"));
    assert_eq!(
        line("| train_step_ms |"),
        "| train_step_ms | 40.00 (39.00–41.00) | 30.00 (28.00–33.00) | -25.0 % |"
    );
    assert_eq!(
        line("| matmul | F32 | 10"),
        "| matmul | F32 | 10.00 (9.00–10.50) | 8.00 (7.50–8.50) | -20.0 % |"
    );
    assert_eq!(
        line("| norm |"),
        "| norm | F32 | 2.00 (1.50–2.50) | 2.00 (1.00–2.50) | +0.0 % |"
    );
    assert!(
        line("| matmul | F32 | 1 × 6272 × 128 × 384 | NT |").ends_with("| -20.0 % |"),
        "{text}"
    );
    // Each table lists its largest op first and its total last.
    let ops: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("## op profile"))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| op "))
        .take(3)
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    assert_eq!(ops, ["matmul", "norm", "total"]);
    assert!(!text.contains("peak_rss"), "only *_ms fields are timings");
}
