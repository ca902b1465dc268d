#!/usr/bin/env bash
# Runs the prebuilt CUDA tests and benchmarks (scripts/build-gpu-bin.sh) on a GPU
# machine that has CUDA and PyTorch but no Rust, then PyTorch's twin benchmark, and
# writes a short summary (summary.md) and an archive of every log (logs.tar.gz) to the
# output folder.
#
#     scripts/gpu-check.sh [BIN_DIR [OUT_DIR]]
#
# BIN_DIR defaults to gpu-bin (or this script's own folder when it sits in one);
# OUT_DIR to $OUT, else gpu-check-out. PYTHON picks the interpreter with torch
# (default python3); BENCH_GROUPS (space-separated: matmul bandwidth dit attention
# dit_bf16) limits both benches to those groups; TESTS (space-separated test binary
# names) limits the tests; TEST_TIMEOUT (default 240) bounds each test binary's run;
# a failed binary runs once more without cuBLASLt unless RETRY_WITHOUT_CUBLASLT
# (space-separated names) leaves it out; TRAIN=0 skips the training runs. Without a
# GPU everything still runs: the tests and benches skip.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-$([ -d "$here/tests" ] && echo "$here" || echo gpu-bin)}
OUT_DIR=${2:-${OUT:-gpu-check-out}}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
BIN=$(cd "$BIN" && pwd)
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# libcublas / libnvrtc / libnccl: the CUDA install and PyTorch's nvidia wheel folders.
libs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/*/lib \
    $("$PYTHON" -c 'import glob, os, nvidia; [print(p) for b in nvidia.__path__ for p in glob.glob(os.path.join(b, "*", "lib"))]' 2>/dev/null); do
    if ls "$d"/libcublas.so* "$d"/libnvrtc.so* "$d"/libnccl.so* >/dev/null 2>&1; then libs+=("$d"); fi
done
LD_LIBRARY_PATH="$(IFS=:; echo "${libs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
{
    echo "# GPU check $(date -u +%FT%TZ), binaries from commit $(cat "$BIN/commit.txt" 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "no torch"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    # Linear layers use cuBLASLt's bias epilogue when this library loads.
    for d in "${libs[@]}"; do ls "$d"/libcublasLt.so* 2>/dev/null; done | head -n1 \
        | sed 's/^/cuBLASLt: /' || true
} > "$OUT_DIR/environment.txt"

# "; failed: NAME NAME" for the failed tests a test binary's LOG names, else nothing.
failed_tests() {
    local names
    names=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$1" | tr '\n' ' ')
    [ -n "$names" ] && printf '; failed: %s' "${names% }"
}

status=0
: > "$OUT_DIR/tests.tsv"
for t in "$BIN"/tests/*; do
    [ -e "$t" ] || continue
    name=$(basename "$t")
    case " ${TESTS:-$name} " in *" $name "*) ;; *) continue ;; esac
    # A hung kernel must not eat the whole GPU lease: each binary gets TEST_TIMEOUT.
    timeout "${TEST_TIMEOUT:-240}" "$t" --test-threads=1 --nocapture > "$OUT_DIR/test-$name.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    result=$(grep -E '^test result:' "$OUT_DIR/test-$name.log" | tail -n1)
    skipped=$(grep -c '^skipping' "$OUT_DIR/test-$name.log")
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "${result:-no result}$(failed_tests "$OUT_DIR/test-$name.log")" \
        "$skipped" >> "$OUT_DIR/tests.tsv"
    # On a failure, the same binary once more without cuBLASLt (its bias and GELU
    # epilogues, not all run on a GPU yet): tells whether they are the cause.
    # RETRY_WITHOUT_CUBLASLT names the binaries to rerun (default: every one).
    retry=" ${RETRY_WITHOUT_CUBLASLT-$name} "
    if [ $rc -ne 0 ] && [[ $retry == *" $name "* ]]; then
        TWINFLOW_CUBLASLT=0 timeout "${TEST_TIMEOUT:-240}" "$t" --test-threads=1 --nocapture \
            > "$OUT_DIR/test-$name-no-cublaslt.log" 2>&1
        rc=$?
        result=$(grep -E '^test result:' "$OUT_DIR/test-$name-no-cublaslt.log" | tail -n1)
        printf '%s (TWINFLOW_CUBLASLT=0)\t%s\t%s\t%s\n' "$name" "$rc" \
            "${result:-no result}$(failed_tests "$OUT_DIR/test-$name-no-cublaslt.log")" \
            "$(grep -c '^skipping' "$OUT_DIR/test-$name-no-cublaslt.log")" >> "$OUT_DIR/tests.tsv"
    fi
done
# Training runs on the GPU through the CLI, each then scored by `eval` (NAME CONFIG
# EVAL_ARGS TRAIN_ARGS...): one row of tests.tsv each, logs in train-NAME.log.
train_check() {
    local name=$1 config=$2 eval_args=$3
    shift 3
    local start rc=0
    start=$(date +%s)
    timeout "${TRAIN_TIMEOUT:-240}" "$BIN/twinflow" train --config "$config" --device cuda \
        --out "$OUT_DIR/$name" "$@" > "$OUT_DIR/train-$name.log" 2>&1 || rc=1
    # shellcheck disable=SC2086
    [ $rc -eq 0 ] && { "$BIN/twinflow" eval --device cuda --checkpoint \
        "$OUT_DIR/$name/checkpoints/latest.safetensors" $eval_args >> "$OUT_DIR/train-$name.log" 2>&1 || rc=1; }
    [ $rc -ne 0 ] && status=1
    printf 'twinflow train --device cuda %s\t%s\t%s s\t0\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$OUT_DIR/tests.tsv"
    rm -rf "$OUT_DIR/$name/checkpoints"
}
if [ "${TRAIN:-1}" != 0 ] && [ -x "$BIN/twinflow" ] && [ -f "$BIN/moons-twinflow.toml" ]; then
    train_check moons-twinflow "$BIN/moons-twinflow.toml" "--nfe 1,2,4"
fi
# MNIST in bf16 needs the shipped data (run from the repository root) and the classifier.
if [ "${TRAIN:-1}" != 0 ] && [ -x "$BIN/twinflow" ] && [ -f "$BIN/mnist-twinflow.toml" ] \
    && [ -f "$BIN/classifier.safetensors" ] \
    && [ -d data/mnist-10k ]; then
    train_check mnist-twinflow-bf16 "$BIN/mnist-twinflow.toml" \
        "--nfe 1,2,4 --ema --classifier $BIN/classifier.safetensors" --precision bf16
fi
# Data parallel through NCCL at world size 1 (NCCL refuses two ranks on one GPU): the
# rank environment, NCCL group id, broadcast of the weights, bucketed all-reduce and the
# per-step stop agreement, which must train exactly as the plain run (metrics equal
# but for the timing column).
nccl_check() {
    local start rc=0 cfg=$BIN/moons-twinflow.toml
    start=$(date +%s)
    for run in plain nccl; do
        local env=()
        [ $run = nccl ] && env=(RANK=0 WORLD_SIZE=1 MASTER_PORT=$((20000 + RANDOM % 20000)))
        env "${env[@]}" timeout 120 "$BIN/twinflow" train --config "$cfg" --device cuda \
            --steps 300 --out "$OUT_DIR/dp-$run" >> "$OUT_DIR/train-nccl-world-1.log" 2>&1 || rc=1
    done
    [ $rc -eq 0 ] && { "$PYTHON" - "$OUT_DIR/dp-plain" "$OUT_DIR/dp-nccl" >> "$OUT_DIR/train-nccl-world-1.log" 2>&1 || rc=1; } <<'PY'
import json, sys
def metrics(d):
    rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
    for r in rows:
        r.pop("samples_per_sec")
    return rows
a, b = metrics(sys.argv[1]), metrics(sys.argv[2])
same = len(a) > 0 and a == b
print(f"world-size-1 NCCL run vs plain run: {len(a)} metrics lines, identical: {same}")
sys.exit(0 if same else 1)
PY
    [ $rc -ne 0 ] && status=1
    printf 'twinflow train RANK=0 WORLD_SIZE=1 (NCCL) == plain\t%s\t%s s\t0\n' "$rc" "$(( $(date +%s) - start ))" >> "$OUT_DIR/tests.tsv"
    rm -rf "$OUT_DIR"/dp-*/checkpoints
}
if [ "${TRAIN:-1}" != 0 ] && [ -x "$BIN/twinflow" ] && [ -f "$BIN/moons-twinflow.toml" ]; then
    nccl_check
fi
# Our bench one group a process: a kernel fault ends its process (a CUDA error is the
# whole context's), and must not take the other groups' figures with it; each process
# compiles the kernels it uses again (seconds). A failed group's exit code and last
# lines go to bench-failures.txt (and the summary). The default list is every group
# benches/cuda.rs has, in its order.
: > "$OUT_DIR/bench-ours.jsonl"
: > "$OUT_DIR/bench-ours.log"
rm -f "$OUT_DIR/bench-failures.txt"
for group in ${BENCH_GROUPS:-matmul bandwidth dit attention dit_bf16}; do
    "$BIN/benches/cuda" --json "$group" >> "$OUT_DIR/bench-ours.jsonl" 2> "$OUT_DIR/bench-group.log"
    rc=$?
    cat "$OUT_DIR/bench-group.log" >> "$OUT_DIR/bench-ours.log"
    if [ $rc -ne 0 ]; then
        status=1
        { echo "bench group $group: exit $rc"; tail -n 3 "$OUT_DIR/bench-group.log"; } \
            >> "$OUT_DIR/bench-failures.txt"
    fi
done
rm -f "$OUT_DIR/bench-group.log"
# Word splitting of BENCH_GROUPS is intended: one argument per group.
# shellcheck disable=SC2086
"$PYTHON" "$BIN/torch_cuda.py" --json ${BENCH_GROUPS:-} > "$OUT_DIR/bench-torch.jsonl" 2> "$OUT_DIR/bench-torch.log" || status=1

"$PYTHON" - "$OUT_DIR" > "$OUT_DIR/summary.md" <<'PY'
import json, os, re, sys
out = sys.argv[1]
env = os.path.join(out, "environment.txt")
print("\n".join(open(env).read().splitlines()[:3]) if os.path.exists(env) else "")
print("\n| test binary | exit | result | skips |\n|---|---:|---|---:|")
for line in open(os.path.join(out, "tests.tsv")):
    name, rc, result, skips = line.rstrip("\n").split("\t")
    print(f"| {name} | {rc} | {result.replace('test result: ', '')} | {skips} |")
def load(name):
    rows, said = {}, set()
    path = os.path.join(out, name)
    for line in open(path) if os.path.exists(path) else []:
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[(r["bench"], r["case"])] = (r["value"], r["unit"])
        elif line and line not in said:
            said.add(line)
            print(f"\n{name}: {line}")
    return rows
failures = os.path.join(out, "bench-failures.txt")
if os.path.exists(failures):
    print("\n## bench groups that failed\n\n```\n" + open(failures).read().rstrip() + "\n```")
# Dense (no sparsity) tensor-core and FP32 peaks of NVIDIA's datasheets, TFLOP/s, by the
# card's name as nvidia-smi gives it (the more specific names first).
PEAKS = [
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "f32": 51.2}),
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "f32": 60.0}),
    ("H200 NVL", {"bf16": 835.5, "tf32": 417.5, "f32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "f32": 66.9}),
    ("H200", {"bf16": 989.4, "tf32": 494.7, "f32": 66.9}),
]
card = open(env).read().splitlines()[1] if os.path.exists(env) else ""
peaks = next((p for name, p in PEAKS if name in card), {})
def peak_share(value, unit, case):
    """ours as a share of the card's peak for the case's dtype (a word of its name)."""
    dtype = next((w for w in case.split() if w in peaks), None)
    return f"{100 * value / peaks[dtype]:.0f} % of {peaks[dtype]:g}" if unit == "TFLOP/s" and dtype else ""
ours, torch = load("bench-ours.jsonl"), load("bench-torch.jsonl")
if ours or torch:
    print("\n| bench | case | ours | torch | ours/torch | ours, of the card's peak |")
    print("|---|---|---:|---:|---:|---:|")
    def twin(key):
        """PyTorch's figure for our case, or for the case our variant is of (a
        single-pass backward, the Hopper forward, cuBLASLt epilogues: PyTorch has one
        way)."""
        bench, case = key
        base = re.sub(r" (single-pass|sm90 \S+)", "", case).split(", ")[0]
        return torch.get(key) or torch.get((bench, base))
    for key in sorted(set(ours) | set(torch)):
        o, t = ours.get(key), twin(key)
        unit = (o or t)[1]
        ratio = f"{o[0] / t[0]:.2f}" if o and t and t[0] else ""
        fmt = lambda v: f"{v[0]:.2f} {unit}" if v else "-"
        share = peak_share(o[0], unit, key[1]) if o else ""
        print(f"| {key[0]} | {key[1]} | {fmt(o)} | {fmt(t)} | {ratio} | {share} |")
    if peaks:
        print(f"\nPeaks: NVIDIA's datasheet dense figures for the {card.split(',')[0]} (bf16 and TF32 on"
              " tensor cores, f32 on CUDA cores), TFLOP/s.")
# The per-op profiles both benches print on stderr (print_profile in benches/cuda.rs
# and benches/torch_cuda.py).
for name in ["bench-ours.log", "bench-torch.log"]:
    log = os.path.join(out, name)
    lines = open(log).read().splitlines() if os.path.exists(log) else []
    for l in lines:
        if l.startswith("## "):
            print(f"\n{l}\n")
        elif l.startswith("|"):
            print(l)
# What each training run's evaluation printed (the end of its log).
for name in sorted(os.listdir(out)):
    if name.startswith("train-") and name.endswith(".log"):
        tail = open(os.path.join(out, name)).read().splitlines()[-12:]
        print(f"\n## {name} (last lines)\n\n```\n" + "\n".join(tail) + "\n```")
PY
cat "$OUT_DIR/summary.md"
# The device tool brings back only a few files: everything but the summary goes into
# one archive (written elsewhere first: tar fails on a folder that changes under it).
archive=$(mktemp)
(cd "$OUT_DIR" && tar czf "$archive" --exclude=summary.md . \
    && find . -mindepth 1 -maxdepth 1 ! -name summary.md -exec rm -rf {} + \
    && mv "$archive" logs.tar.gz)
exit $status
