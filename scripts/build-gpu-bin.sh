#!/usr/bin/env bash
# Builds everything the GPU check runs, for a GPU machine that has CUDA and PyTorch but
# no Rust: the CUDA test binaries (crates/engine/tests/cuda_ops.rs and kernels_compile.rs,
# tests/cuda_flash_attention.rs and cuda_train.rs), the CUDA bench (benches/cuda.rs) and
# the `twinflow` binary (with NCCL) and the moons and MNIST configs (CUDA training runs),
# release, --features cuda (nccl for the binary), stripped, into gpu-bin/ (git-ignored),
# beside the PyTorch bench scripts and scripts/gpu-check.sh. Prints the folder's size,
# which must stay under 64 MiB (the limit of what a GPU run can carry).
#
#     scripts/build-gpu-bin.sh && scripts/gpu-check.sh gpu-bin   # the second on the GPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=gpu-bin
LIMIT_MIB=64

# The executables of target kind $1 (test, bench) cargo reports building (one JSON
# message per artifact): not the CLI binary that integration tests also build.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and sys.argv[1] in m["target"]["kind"]:
        print(m["executable"])' "$1"
}

rm -rf "$OUT"
mkdir -p "$OUT/tests" "$OUT/benches"
cargo test --release --features cuda --no-run --message-format=json \
    --test cuda_ops --test cuda_flash_attention --test cuda_train --test kernels_compile \
    | executables test | while read -r exe; do
    # cargo names test binaries name-<hash>; the check runs them by name.
    cp "$exe" "$OUT/tests/$(basename "$exe" | sed 's/-[0-9a-f]*$//')"
done
cargo bench --features cuda --bench cuda --no-run --message-format=json | executables bench \
    | while read -r exe; do cp "$exe" "$OUT/benches/cuda"; done
# The CLI with NCCL too (loaded at run time): gpu-check.sh trains a world-size-1 NCCL run.
cargo build --release --features nccl --bin twinflow
cp target/release/twinflow "$OUT/twinflow"
strip "$OUT"/tests/* "$OUT"/benches/* "$OUT/twinflow"
cp benches/torch_cuda.py benches/torch_dit.py scripts/gpu-check.sh configs/moons-twinflow.toml \
    configs/mnist-twinflow.toml "$OUT/"
# The evaluation classifier, when trained here (`twinflow train-classifier`): the GPU
# check then also trains MNIST in bf16 and scores it.
if [ -f runs/classifier/classifier.safetensors ]; then
    cp runs/classifier/classifier.safetensors "$OUT/"
fi

# The commit the binaries come from (the GPU machine has no git): gpu-check.sh puts it in
# its summary.
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD || commit="$commit-dirty"
echo "$commit" > "$OUT/commit.txt"

size_kib=$(du -sk "$OUT" | cut -f1)
echo "$OUT: $((size_kib / 1024)) MiB ($size_kib KiB): $(ls "$OUT"/tests "$OUT"/benches | grep -v ':$' | xargs)"
if [ "$size_kib" -ge $((LIMIT_MIB * 1024)) ]; then
    echo "error: $OUT is over $LIMIT_MIB MiB" >&2
    exit 1
fi
