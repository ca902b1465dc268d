//! CI check of the bf16/f16 fused attention kernels' index math without a GPU:
//! `scripts/flash_fragments.py` replays the kernels' fragment, address and tile
//! arithmetic (forward, dQ, dK/dV, the single-pass backward and the JVP, at the launch
//! shapes `kernels/flash_attention.cu` instantiates) on a model of `ldmatrix`, `mma`
//! and `cp.async`, against a float64 reference, and checks every `ldmatrix` for
//! alignment and bank conflicts; `scripts/flash_sm90_model.py` does the same for the
//! Hopper kernels on a model of `wgmma`, and runs the GPU attention test's probe on
//! them. Needs a Python with numpy: `$TWINFLOW_PYTHON`, else `python3` (`.ci/run`
//! installs numpy beside NVRTC); skips with a message without one.

use std::path::Path;
use std::process::Command;

/// The Python to run the model with, if it has numpy.
fn python_with_numpy() -> Option<String> {
    let python = std::env::var("TWINFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import numpy"]).output();
    probe.is_ok_and(|o| o.status.success()).then_some(python)
}

/// Runs `scripts/<script>` and fails unless its last line starts with "all match"; skips,
/// saying so, where the script or a Python with numpy is missing.
fn run_model(script: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    if !script.is_file() {
        // A prebuilt test binary run on another machine (scripts/gpu-check.sh).
        eprintln!("skipping: {} is not here", script.display());
        return;
    }
    let Some(python) = python_with_numpy() else {
        eprintln!("skipping: no Python with numpy (set TWINFLOW_PYTHON)");
        return;
    };
    let out = Command::new(&python)
        .arg(&script)
        .output()
        .expect("run the model");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        out.status.success() && last.starts_with("all match"),
        "{} {}: {}\n{}",
        python,
        script.display(),
        last,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flash_attention_index_math_matches_float64() {
    run_model("flash_fragments.py");
}

/// The Hopper forward (`kernels/flash_attention_sm90.cu`) on a model of `wgmma`'s
/// shared-memory descriptors (128-byte swizzle, K- and MN-major operands) and fragments.
#[test]
fn hopper_forward_index_math_matches_float64() {
    run_model("flash_sm90_model.py");
}
