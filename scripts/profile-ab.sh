#!/usr/bin/env bash
# The per-op profile before and after a change: builds a CPU bench at two revisions,
# runs the two binaries alternately with --json --profile and prints the medians of
# every timed measurement and every op of the profile side by side
# (scripts/profile_ab.py), with their ranges.
#
#   scripts/profile-ab.sh [-b BENCH] [-r ROUNDS] BASE [HEAD] [-- BENCH_ARGS...]
#
#   BENCH       dit_step (default), jvp_step or train_step
#   ROUNDS      runs of each binary (default 6), the order flipped every round
#   BASE, HEAD  git revisions; HEAD left out means the working tree as it is,
#               uncommitted changes included
#   BENCH_ARGS  passed to both binaries (dit_step: --batch 32; train_step:
#               --config FILE)
#
# Environment: QUIET_WAIT (default 30) seconds to wait before each run for the CPUs to
# be mostly idle, as benches/run.sh does. The revisions are built in git worktrees
# under target/profile-ab/ (removed afterwards) with the checkout's target directory,
# so the dependencies compile once; the runs' raw output stays in the directory the
# last line names. Timings move by several percent from run to run on a shared
# machine: read a change against the ranges beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench=dit_step
rounds=6
usage() { sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while getopts "b:r:h" opt; do
    case $opt in
        b) bench=$OPTARG ;;
        r) rounds=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
base=$1
shift
head_rev=
if [ $# -ge 1 ] && [ "$1" != "--" ]; then
    head_rev=$1
    shift
fi
[ "${1:-}" = "--" ] && shift
bench_args=("$@")
case $bench in
    dit_step | jvp_step | train_step) ;;
    *) echo "profile-ab: unknown bench '$bench' (dit_step, jvp_step or train_step)" >&2; exit 2 ;;
esac
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "profile-ab: ROUNDS must be a positive integer" >&2; exit 2; }
QUIET_WAIT=${QUIET_WAIT:-30}

work=$(mktemp -d "${TMPDIR:-/tmp}/profile-ab.XXXXXX")
trees=()
cleanup() {
    for tree in "${trees[@]}"; do git worktree remove --force "$tree" 2>/dev/null || true; done
}
trap cleanup EXIT

# Builds the bench from source tree $1 into $2.
build_in() {
    local src=$1 dest=$2 exe
    exe=$(cd "$src" && CARGO_TARGET_DIR="$root/target" cargo bench --bench "$bench" --no-run \
        --message-format=json 2>"$work/build.log" |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["executable"])') || { cat "$work/build.log" >&2; exit 1; }
    [ -n "$exe" ] || { cat "$work/build.log" >&2; echo "profile-ab: no $bench binary built in $src" >&2; exit 1; }
    cp "$exe" "$dest"
}

# Builds revision $1 (empty: the working tree) into $2; sets `label` to its name.
build_rev() {
    local rev=$1 dest=$2
    if [ -z "$rev" ]; then
        build_in "$root" "$dest"
        local dirty=
        git diff --quiet HEAD || dirty=" with uncommitted changes"
        label="the working tree ($(git rev-parse --short HEAD)$dirty)"
        return
    fi
    local commit tree
    commit=$(git rev-parse --verify --quiet --short "$rev^{commit}") ||
        { echo "profile-ab: no revision '$rev'" >&2; exit 2; }
    tree="$root/target/profile-ab/$commit"
    git worktree remove --force "$tree" 2>/dev/null || true
    git worktree add --detach --force "$tree" "$commit" >/dev/null
    trees+=("$tree")
    build_in "$tree" "$dest"
    label=$commit
}

# cpu_busy, wait_quiet.
source benches/quiet.sh

label=
echo "== building $bench at $base" >&2
build_rev "$base" "$work/a"
label_a=$label
echo "== building $bench at ${head_rev:-the working tree}" >&2
build_rev "$head_rev" "$work/b"
label_b=$label

echo "== $rounds rounds, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs" >&2
for round in $(seq "$rounds"); do
    order="a b"
    [ $((round % 2)) -eq 0 ] && order="b a"
    for side in $order; do
        wait_quiet
        run="$work/$side.$round"
        if ! "$work/$side" --json --profile "${bench_args[@]}" >"$run.out" 2>"$run.err"; then
            echo "profile-ab: run $round of side $side failed:" >&2
            cat "$run.err" >&2
            exit 1
        fi
        cat "$run.out" "$run.err" >"$run.txt"
    done
    echo "   round $round of $rounds done" >&2
done

echo "## profile-ab: $bench ${bench_args[*]}"
echo
runs() { for round in $(seq "$rounds"); do echo "$work/$1.$round.txt"; done; }
python3 scripts/profile_ab.py --labels "$label_a" "$label_b" $(runs a) -- $(runs b)
echo
echo "raw runs: $work"
