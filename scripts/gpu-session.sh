#!/usr/bin/env bash
# One GPU lease, one command: the CUDA checks and benchmarks (scripts/gpu-check.sh) and
# the DiT training runs (scripts/gpu-train.sh) from a single carried folder.
#
#     scripts/gpu-session.sh pack   # here, with Rust: builds and packs gpu-carry/
#     scripts/gpu-session.sh run    # on the GPU machine, from the repository root
#
# Separately, gpu-bin/ (the test and bench binaries, about 37 MiB) and gpu-train-bin/
# (its own `twinflow`, the classifiers and Fashion-MNIST, about 40 MiB) do not fit the
# 64 MiB a GPU run can carry. `pack` compresses gpu-bin/ into gpu-carry/bin.tar.gz
# (about 12 MiB) and adds gpu-train-bin/ without its binary (the one in gpu-bin/ serves
# both): about 45 MiB in all. `run` unpacks it, runs gpu-check.sh into $OUT/check and
# gpu-train.sh into $OUT/train (sample pictures packed into one archive, since a run
# returns at most 8 files), then prints both summaries. The scripts' variables pass
# through, with defaults here that fit one 15-minute lease with its start (about 7
# minutes of commands): TESTS (default: cuda_ops cuda_flash_attention cuda_train;
# kernels_compile runs in CI), BENCH_GROUPS (default: dit dit_bf16), TEST_TIMEOUT and
# TRAIN for the check (its MNIST bf16 run is left out: it needs the classifier in
# gpu-bin/, a minute of device time), MINUTES, EVAL_N and EVAL_WEIGHTS for the training
# runs (0.4, 1000 and online: about 300 steps are too few for the EMA weights).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=gpu-carry

pack() {
    set -e
    scripts/build-gpu-bin.sh
    scripts/gpu-train.sh build
    rm -rf "$CARRY" && mkdir -p "$CARRY"
    tar czf "$CARRY/bin.tar.gz" --exclude=classifier.safetensors gpu-bin
    cp -r gpu-train-bin "$CARRY/train-bin" && rm "$CARRY/train-bin/twinflow"
    du -sh "$CARRY"
    echo "carry $CARRY (git-ignored): run scripts/gpu-session.sh run there, carrying it"
}

run() {
    local out=${OUT:-gpu-session-out}
    tar xzf "$CARRY/bin.tar.gz" || return 1
    mkdir -p "$out/check" "$out/train"
    TESTS=${TESTS:-cuda_ops cuda_flash_attention cuda_train} BENCH_GROUPS=${BENCH_GROUPS:-dit dit_bf16} \
        TEST_TIMEOUT=${TEST_TIMEOUT:-120} scripts/gpu-check.sh gpu-bin "$out/check" > /dev/null 2>&1
    echo "gpu-check.sh: exit $?"
    MINUTES=${MINUTES:-0.4} EVAL_N=${EVAL_N:-1000} EVAL_WEIGHTS=${EVAL_WEIGHTS:-online} TWINFLOW=gpu-bin/twinflow \
        scripts/gpu-train.sh run "$CARRY/train-bin" "$out/train" > /dev/null 2>&1
    echo "gpu-train.sh: exit $?"
    (cd "$out/train" && tar czf pictures.tar.gz --remove-files ./*.png 2>/dev/null)
    cat "$out/check/summary.md" "$out/train/summary.md"
}

case "${1:-}" in
    pack) pack ;;
    run) run ;;
    *) echo "usage: $0 pack | run" >&2; exit 2 ;;
esac
