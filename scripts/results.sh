#!/usr/bin/env bash
# Reproduces the tables of docs/results.md: trains the moons and MNIST configs of
# configs/ (TwinFlow, RCGM alone, flow matching: same network, data and step budget)
# and scores each with `twinflow eval`. Run from the repository root; CPU only; about
# 25 minutes on 2 cores for MNIST, 2 for moons. Results land in runs/results/<config>/
# (eval.json beside each run's checkpoints) and the tables are printed.
#
# Usage: scripts/results.sh [moons|mnist|all]   (default: all)
# BIN=path/to/twinflow uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
fi
bin="${BIN:-target/release/twinflow}"
out=runs/results

# NFEs per method: TwinFlow at 1, 2, 4; RCGM at 1 (and 2, 4 for reference); flow
# matching at 1, 4, 10, 100 (Euler steps, its config's sampler).
nfe_for() {
    case "$1" in
        *-twinflow) echo 1,2,4 ;;
        *-rcgm) echo 1,2,4 ;;
        *-fm) echo 1,4,10,100 ;;
    esac
}

run() {
    local config=$1
    shift
    echo "== $config"
    "$bin" train --config "configs/$config.toml" --out "$out/$config"
    "$bin" eval --checkpoint "$out/$config/checkpoints/latest.safetensors" \
        --nfe "$(nfe_for "$config")" "$@"
}

if [ "$which" = moons ] || [ "$which" = all ]; then
    for m in twinflow rcgm fm; do run "moons-$m" --n 2000; done
fi
if [ "$which" = mnist ] || [ "$which" = all ]; then
    [ -f runs/classifier/classifier.safetensors ] || "$bin" train-classifier
    for m in twinflow rcgm fm; do run "mnist-$m" --n 2000 --ema; done
fi
