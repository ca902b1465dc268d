#!/usr/bin/env bash
# Reproduces docs/results.md: trains the moons and MNIST-10k configs of configs/ and
# scores each with `twinflow eval`, then rewrites the generated tables of
# docs/results.md (between its `results:begin` and `results:end` markers) from the
# eval.json files, each row with the commands that made it. CPU only, run from the
# repository root; about 3 minutes for moons and 60 for MNIST on 2 cores.
#
# Usage: scripts/results.sh [moons|mnist|all]   (default: all)
# BIN=path/to/twinflow uses that binary instead of building one. Needs python3 for
# the table step only.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
fi
bin="${BIN:-target/release/twinflow}"
out=runs/results

# train NAME [extra train flags]: trains configs/NAME.toml into $out/NAME, recording
# the command and the wall-clock seconds beside the run.
train() {
    local name=$1
    shift
    local dir="$out/$name"
    local cmd="twinflow train --config configs/$name.toml --out $dir $*"
    echo "== $cmd"
    rm -rf "$dir"
    mkdir -p "$dir"
    local start
    start=$(date +%s.%N)
    "$bin" train --config "configs/$name.toml" --out "$dir" "$@"
    echo "$(date +%s.%N) - $start" | bc > "$dir/train_seconds"
    echo "$cmd" > "$dir/train_command"
}

# evaluate NAME TAG NFES [extra eval flags]: scores $out/NAME's checkpoint into
# $out/NAME/eval-TAG.json.
evaluate() {
    local name=$1 tag=$2 nfe=$3
    shift 3
    local dir="$out/$name"
    local cmd="twinflow eval --checkpoint $dir/checkpoints/latest.safetensors --nfe $nfe --n 2000 $*"
    echo "== $cmd"
    "$bin" eval --checkpoint "$dir/checkpoints/latest.safetensors" --nfe "$nfe" --n 2000 \
        --json "$dir/eval-$tag.json" "$@"
    echo "$cmd --json $dir/eval-$tag.json" > "$dir/eval-$tag.command"
}

if [ "$which" = moons ] || [ "$which" = all ]; then
    train moons-twinflow && evaluate moons-twinflow main 1,2,4
    train moons-rcgm && evaluate moons-rcgm main 1,2,4
    train moons-fm && evaluate moons-fm main 1,4,10,100
fi
if [ "$which" = mnist ] || [ "$which" = all ]; then
    [ -f runs/classifier/classifier.safetensors ] || "$bin" train-classifier
    train mnist-twinflow && evaluate mnist-twinflow main 1,2,4 --ema
    # The same model sampled without the reference's few-step presets.
    evaluate mnist-twinflow no-presets 2,4 --ema --presets off
    train mnist-rcgm && evaluate mnist-rcgm main 1,2,4 --ema
    train mnist-fm && evaluate mnist-fm main 1,4,10,100 --ema
    # Flow matching given TwinFlow's wall-clock time (more, cheaper steps).
    train mnist-fm-wallclock && evaluate mnist-fm-wallclock main 10,100 --ema
    # The paper's setting: flow-matching pretraining, then TwinFlow fine-tuning.
    train mnist-fm-pretrain && evaluate mnist-fm-pretrain main 1,100 --ema
    train mnist-fm-then-twinflow --init-from "$out/mnist-fm-pretrain/checkpoints/latest.safetensors" \
        && evaluate mnist-fm-then-twinflow main 1,2,4 --ema
    # Ablations of the recipe.
    train mnist-twinflow-l2 && evaluate mnist-twinflow-l2 main 1,2,4 --ema
    train mnist-twinflow-label-dropout && evaluate mnist-twinflow-label-dropout main 1,2,4 --ema
fi
python3 scripts/results_tables.py "$out" docs/results.md
