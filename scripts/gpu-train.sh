#!/usr/bin/env bash
# TwinFlow on a DiT, on a GPU: trains the DiT configs for a fixed time each, scores them
# there, and writes one summary (summary.md, with the sample pictures beside it).
#
#     scripts/gpu-train.sh build                 # here, with Rust: makes gpu-train-bin/
#     scripts/gpu-train.sh run [BIN_DIR [OUT]]   # on the GPU machine, from the repo root
#
# `build` puts the CUDA `twinflow` binary (stripped), the evaluation classifiers
# (runs/classifier/, from `twinflow train-classifier`, trained first where missing)
# and the Fashion-MNIST files (from FASHION_MNIST_DIR, see docs/data.md) in
# gpu-train-bin/ (git-ignored; under the 64 MiB a GPU run can carry). `run` needs the
# repository's data/ (MNIST-10k) and configs/, then runs, each with bf16 autocast and
# the fused attention:
#   1. mnist-twinflow-gpu  (TwinFlow, DiT)      MINUTES of training, eval at 1, 2, 4 NFE
#   2. mnist-fm-gpu        (flow matching, DiT) MINUTES of training, eval at 1, 2, 4, 100
#   3. fashion-twinflow-gpu                     MINUTES of training, eval at 1, 2, 4 NFE
#   4. mnist-twinflow (MLP) 300 steps in f16 with the dynamic loss scaler
#   5. the CUDA `sum_products` op test (the `mul` backward through `sum_product`) when
#      gpu-bin/tests/cuda_ops (scripts/build-gpu-bin.sh) is there
# Environment: MINUTES (default 1.75 per DiT run: the three fit in 8 minutes with their
# evaluations), EVAL_N (samples per NFE, default 2000), DEVICE (default cuda), TWINFLOW
# (the binary; default BIN_DIR/twinflow), EVAL_WEIGHTS (`ema`, the default, or
# `online`: runs of a few hundred steps leave the EMA, decay 0.999, mostly at its initial
# weights, so their EMA samples are noise whatever the training did). DRY_RUN=1 checks
# the whole script on a machine without a GPU in a few minutes: on the CPU, with the
# DiTs shrunk (patch 7, width 32, one block, batch 32), 6-second budgets, 100 samples, at
# most 4 NFE and 5 f16 steps; its numbers mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."

build() {
    set -e
    local out=gpu-train-bin
    rm -rf "$out" && mkdir -p "$out/fashion-mnist"
    cargo build --release --features cuda --bin twinflow
    cp target/release/twinflow "$out/twinflow" && strip "$out/twinflow"
    local fashion=${FASHION_MNIST_DIR:?set FASHION_MNIST_DIR to the folder of the four Fashion-MNIST files (docs/data.md)}
    # A fresh checkout has no classifiers yet: trained here on the CPU (about 1.5 and
    # 4 minutes on 2 cores), once.
    [ -f runs/classifier/classifier.safetensors ] || target/release/twinflow train-classifier
    [ -f runs/classifier/fashion-mnist.safetensors ] \
        || target/release/twinflow train-classifier --dataset fashion-mnist --root "$fashion"
    cp runs/classifier/*.safetensors "$out/"
    cp "$fashion"/*-ubyte.gz "$out/fashion-mnist/"
    du -sh "$out"
}

# The config to train: $1 itself, or for a dry run a shrunk copy in OUT_DIR.
config_for() {
    if [ "${DRY_RUN:-0}" != 1 ]; then echo "$1"; return; fi
    local small=$OUT_DIR/dry-$(basename "$1")
    sed -e 's/^patch = .*/patch = 7/' -e 's/^dim = .*/dim = 32/' -e 's/^depth = .*/depth = 1/' \
        -e 's/^heads = .*/heads = 2/' -e 's/^batch_size = .*/batch_size = 32/' \
        -e 's/^device = .*/device = "cpu"/' "$1" > "$small"
    echo "$small"
}

# Trains config $2 as run $1 for MINUTES (extra train flags after $4), then evaluates it
# at NFEs $3 with classifier $4; one line of runs.tsv.
train_and_eval() {
    local name=$1 config nfe=$3 classifier=$4
    config=$(config_for "$2")
    [ "${DRY_RUN:-0}" = 1 ] && nfe=${nfe%,100}
    shift 4
    local start rc=0
    start=$(date +%s)
    "$TWINFLOW" train --config "$config" --device "$DEVICE" --out "$OUT_DIR/$name" \
        --minutes "$MINUTES" "$@" > "$OUT_DIR/train-$name.log" 2>&1 || rc=1
    local trained=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ]; then
        local weights=()
        [ "${EVAL_WEIGHTS:-ema}" = ema ] && weights=(--ema)
        "$TWINFLOW" eval --device "$DEVICE" "${weights[@]}" --nfe "$nfe" --n "$EVAL_N" \
            --classifier "$classifier" \
            --checkpoint "$OUT_DIR/$name/checkpoints/latest.safetensors" \
            >> "$OUT_DIR/train-$name.log" 2>&1 || rc=1
    fi
    [ $rc -ne 0 ] && status=1
    printf '%s\t%s\t%s\n' "$name" "$rc" "$trained" >> "$OUT_DIR/runs.tsv"
    rm -rf "$OUT_DIR/$name/checkpoints"
}

run() {
    BIN=$(cd "${1:-gpu-train-bin}" && pwd)
    OUT_DIR=${2:-${OUT:-gpu-train-out}}
    mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
    TWINFLOW=${TWINFLOW:-$BIN/twinflow}
    MINUTES=${MINUTES:-1.75}
    EVAL_N=${EVAL_N:-2000}
    DEVICE=${DEVICE:-cuda}
    local f16_steps=300
    if [ "${DRY_RUN:-0}" = 1 ]; then
        MINUTES=0.1 EVAL_N=100 DEVICE=cpu f16_steps=5
    fi
    PYTHON=${PYTHON:-python3}
    status=0
    # libcublas / libnvrtc: the CUDA install and PyTorch's nvidia wheel folders.
    local libs=() d
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib \
        $("$PYTHON" -c 'import glob, os, nvidia; [print(p) for b in nvidia.__path__ for p in glob.glob(os.path.join(b, "*", "lib"))]' 2>/dev/null); do
        if ls "$d"/libcublas.so* "$d"/libnvrtc.so* >/dev/null 2>&1; then libs+=("$d"); fi
    done
    export LD_LIBRARY_PATH="$(IFS=:; echo "${libs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    {
        echo "# GPU training $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
            || echo "no nvidia-smi (device $DEVICE)"
        echo "MINUTES=$MINUTES EVAL_N=$EVAL_N DRY_RUN=${DRY_RUN:-0}"
    } > "$OUT_DIR/environment.txt"
    : > "$OUT_DIR/runs.tsv"
    local mnist_cls=$BIN/classifier.safetensors fashion_cls=$BIN/fashion-mnist.safetensors
    train_and_eval mnist-twinflow-dit configs/mnist-twinflow-gpu.toml 1,2,4 "$mnist_cls" \
        --precision bf16
    train_and_eval mnist-fm-dit configs/mnist-fm-gpu.toml 1,2,4,100 "$mnist_cls" \
        --precision bf16
    train_and_eval fashion-twinflow-dit configs/fashion-twinflow-gpu.toml 1,2,4 "$fashion_cls" \
        --precision bf16 --root "$BIN/fashion-mnist"
    # f16 with the loss scaler: a fixed step count, not a time budget.
    MINUTES=100 train_and_eval mnist-twinflow-f16 configs/mnist-twinflow.toml 1 "$mnist_cls" \
        --precision f16 --steps "$f16_steps"
    if [ -x gpu-bin/tests/cuda_ops ]; then
        gpu-bin/tests/cuda_ops sum_products --test-threads=1 > "$OUT_DIR/test-sum_products.log" 2>&1
        printf 'cuda_ops sum_products\t%s\t-\n' "$?" >> "$OUT_DIR/runs.tsv"
    fi
    "$PYTHON" scripts/gpu_train_summary.py "$OUT_DIR" > "$OUT_DIR/summary.md" || status=1
    cat "$OUT_DIR/summary.md"
    return $status
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 build | run [BIN_DIR [OUT_DIR]]" >&2; exit 2 ;;
esac
