#!/usr/bin/env bash
# Runs our CPU benchmarks and the PyTorch eager reference side by side, in the same
# session, and prints one combined table (results: docs/benchmarks.md), after a header
# with the date, commit, command, CPU and toolchain versions that the table is quoted with.
#
# Setup, once, from the repository root (any torch version; docs/benchmarks.md says
# which one gave the recorded numbers):
#
#     python3 -m venv .venv-bench && .venv-bench/bin/pip install torch numpy
#
# Run, from anywhere:
#
#     PYTHON=.venv-bench/bin/python benches/run.sh
#
# Environment:
#   PYTHON             interpreter with torch (default: python3)
#   ROUNDS             how many times to run the whole set (default: 3). Rounds
#                      alternate which side goes first; each bench is interleaved with
#                      its torch twin, so both see the same machine state.
#   QUIET_WAIT         before each bench, wait up to this many seconds (default: 60)
#                      for the CPUs to be mostly idle (other work on the machine
#                      hurts OpenMP-threaded torch much more than it hurts us)
#   BENCHES            which benches (default: "matmul op_chain transpose dit_step jvp_step")
#   JVP_COMPILE        1 (default) also times torch_jvp.py's torch.compile cases (each
#                      compiles for a minute or two per round); 0 skips them
#   DIT_COMPILE        1 (default) also times torch_dit.py's steps under torch.compile;
#                      0 skips them
#   DIT_BATCHES        the batch sizes of the DiT bench (default: "128 32")
#   TWIN_COMPILE       1 (default) also times torch_reference.py's matmul, op chain and transposes
#                      under torch.compile (about a minute per round); 0 skips it
#   TORCH_ALLOCATORS   the allocators the DiT, matmul and op-chain twins run under, each
#                      in every round (default: "glibc jemalloc tcmalloc", those found;
#                      jemalloc and tcmalloc are preloaded from Debian's libjemalloc2
#                      and libtcmalloc-minimal4). The tables' PyTorch figure is the best
#                      of every allocator, eager and compiled.
#   RAYON_NUM_THREADS  threads for both sides (default: one per core, rayon's default;
#                      torch_reference.py sets torch to the same count)
#
# Every per-round number is the median of several timed runs after warm-up (see the
# bench sources). The combined table takes, for each entry, the best round (highest
# GFLOP/s, lowest µs/op): on a shared, noisy machine that is the least disturbed
# measurement. All rounds are printed too. Under each DiT table: the same comparison
# by round means (ours against the PyTorch configuration with the best mean), and the
# matmul floor: the
# step's product work (counted by the bench) at the best GEMM rate our matmul bench
# reached in this run, and our best step against it.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
QUIET_WAIT=${QUIET_WAIT:-60}
BENCHES=${BENCHES:-matmul op_chain transpose dit_step jvp_step}
JVP_COMPILE=${JVP_COMPILE:-1}
DIT_COMPILE=${DIT_COMPILE:-1}
DIT_BATCHES=${DIT_BATCHES:-128 32}
TWIN_COMPILE=${TWIN_COMPILE:-1}
TORCH_ALLOCATORS=${TORCH_ALLOCATORS:-glibc jemalloc tcmalloc}

# The library LD_PRELOAD needs for an allocator ("" for glibc's own), or nothing when
# it is not installed.
allocator_library() {
    case $1 in
        glibc) echo none ;;
        jemalloc) ls /usr/lib/*-linux-gnu/libjemalloc.so.2 2>/dev/null | head -n1 ;;
        tcmalloc) ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 2>/dev/null | head -n1 ;;
        *) echo "error: unknown allocator $1 in TORCH_ALLOCATORS" >&2; exit 1 ;;
    esac
}
allocators=()
for a in $TORCH_ALLOCATORS; do
    if [ -n "$(allocator_library "$a")" ]; then
        allocators+=("$a")
    else
        echo "note: allocator $a is not installed; the PyTorch twins run without it" >&2
    fi
done

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
    echo "error: $PYTHON cannot import torch; see the setup notes at the top of $0" >&2
    exit 1
fi

raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT

# What docs/benchmarks.md records beside every figure: when, which code, which machine.
provenance() {
    local commit dirty=""
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    git diff --quiet HEAD 2>/dev/null || dirty=" (with uncommitted changes)"
    echo "== date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "== commit: $commit$dirty"
    echo "== command: PYTHON=$PYTHON BENCHES=\"$BENCHES\" ROUNDS=$ROUNDS QUIET_WAIT=$QUIET_WAIT benches/run.sh"
    if command -v lscpu >/dev/null; then
        echo "== cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -n1)," \
            "family $(sed -n 's/^cpu family[[:space:]]*: //p' /proc/cpuinfo | head -n1)" \
            "model $(sed -n 's/^model[[:space:]]*: //p' /proc/cpuinfo | head -n1)," \
            "$(nproc) CPUs; L2 $(lscpu | sed -n 's/^L2 cache: *//p')"
    fi
    echo "== kernel: $(uname -r); $(rustc --version); torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
}
provenance

# Built once: every round runs the same binaries even if the sources change meanwhile.
bench_args=$(printf -- '--bench %s ' $BENCHES)
echo "== building: cargo bench --no-run $bench_args" >&2
declare -A exe
while read -r name path; do exe[$name]=$path; done < <(
    cargo bench --no-run $bench_args --message-format=json |
        "$PYTHON" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and "bench" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])')
for bench in $BENCHES; do
    [ -n "${exe[$bench]:-}" ] || { echo "error: no executable for bench $bench" >&2; exit 1; }
done

# cpu_busy, wait_quiet.
source benches/quiet.sh

# Runs a PyTorch twin's command once under each allocator (preloaded), each run after
# waiting for the machine to be quiet.
under_each_allocator() {
    local alloc lib
    for alloc in "${allocators[@]}"; do
        lib=$(allocator_library "$alloc")
        [ "$lib" = none ] && lib=
        wait_quiet
        LD_PRELOAD=$lib "$@"
    done
}

# Runs one bench of one side, showing its table and keeping its JSON lines.
run_one() { # side bench round
    local side=$1 bench=$2 round=$3 out="$raw/$3.jsonl"
    wait_quiet
    local batch
    if [ "$side" = ours ] && [ "$bench" = dit_step ]; then
        for batch in $DIT_BATCHES; do
            "${exe[$bench]}" --bench --json --batch "$batch"
        done
    elif [ "$side" = ours ]; then
        "${exe[$bench]}" --bench --json # what `cargo bench --bench $bench -- --json` runs
    elif [ "$bench" = dit_step ]; then
        local flags=()
        [ "$DIT_COMPILE" = 1 ] || flags=(--no-compile)
        for batch in $DIT_BATCHES; do
            under_each_allocator "$PYTHON" benches/torch_dit.py --json --batch "$batch" "${flags[@]}"
        done
    elif [ "$bench" = jvp_step ]; then
        if [ "$JVP_COMPILE" = 1 ]; then
            "$PYTHON" benches/torch_jvp.py --json
        else
            "$PYTHON" benches/torch_jvp.py --json --no-compile
        fi
    else
        local flags=()
        [ "$TWIN_COMPILE" = 1 ] || flags=(--no-compile)
        under_each_allocator "$PYTHON" benches/torch_reference.py --bench "$bench" --json "${flags[@]}"
    fi >"$raw/last.out"
    grep -v '^{' "$raw/last.out" || true
    grep '^{' "$raw/last.out" >>"$out" || true
}

for round in $(seq 1 "$ROUNDS"); do
    echo
    echo "== round $round/$ROUNDS (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
    if [ $((round % 2)) -eq 1 ]; then sides="ours torch"; else sides="torch ours"; fi
    for bench in $BENCHES; do
        for side in $sides; do
            run_one "$side" "$bench" "$round"
        done
    done
done

"$PYTHON" - "$raw" <<'EOF'
import glob, json, os, sys

rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "[0-9]*.jsonl"))):
    rnd = int(os.path.basename(path).split(".")[0])
    with open(path) as f:
        rows += [dict(json.loads(line), round=rnd) for line in f if line.strip()]

def pick(bench, impl, key, value, field):
    return [r[field] for r in rows
            if r["bench"] == bench and r["impl"] == impl and r[key] == value]

version = next((r["version"] for r in rows if r["impl"] == "torch" and "version" in r), "?")
threads = next((r["threads"] for r in rows if "threads" in r), "?")
rounds = len({r["round"] for r in rows})

print()
print(f"== combined: twinflow vs torch {version} (CPU, f32, {threads} threads, "
      f"best of {rounds} round(s))")
print()
def twin_figures(bench, key, value, field):
    """Every torch figure of one entry, rounds in order: (value, variant, allocator)."""
    return [(r[pre + field], name, r.get("allocator", "glibc"))
            for r in rows if r["bench"] == bench and r["impl"] == "torch" and r[key] == value
            for pre, name in [("", "eager"), ("compile_", "compile")] if pre + field in r]

def twin_best(bench, key, value, field, agg):
    """The torch twin's best figure for one entry: per variant (eager, compile) over
    every allocator and round, and the overall best with where it came from."""
    found = twin_figures(bench, key, value, field)
    per = {name: agg((v for v, n, _ in found if n == name), default=float("nan"))
           for name in ["eager", "compile"]}
    best = agg(found, key=lambda f: f[0], default=(float("nan"), "–", "–"))
    return per, best

def rate_table(header, align, bench, key, entries, field="gflops", unit="GFLOP/s", digits=1):
    """A rate (higher is better), ours beside the torch twin's best, one row per (value
    of `key`, label)."""
    print(f"| {header} | ours {unit} | torch eager | torch.compile "
          "| best torch (variant, allocator) | ours/best torch |")
    print(f"|{align}|---:|---:|---:|---:|---:|")
    for value, label in entries:
        ours = max(pick(bench, "twinflow", key, value, field), default=float("nan"))
        per, (best, variant, alloc) = twin_best(bench, key, value, field, max)
        print(f"| {label} | {ours:.{digits}f} | {per['eager']:.{digits}f} "
              f"| {per['compile']:.{digits}f} | {best:.{digits}f} ({variant}, {alloc}) "
              f"| {ours / best:.2f} |")

sizes = sorted({r["n"] for r in rows if r["bench"] == "matmul"})
if sizes:
    rate_table("n", "---:", "matmul", "n", [(n, n) for n in sizes])
products = list(dict.fromkeys(r["product"] for r in rows if r["bench"] == "dit_products"))
if products:
    shapes = {r["product"]: f"{r['m']} × {r['k']} × {r['n']}" for r in rows
              if r["bench"] == "dit_products"}
    print()
    rate_table("DiT product, batch 128 (m × k × n)", "---", "dit_products", "product",
                 [(p, f"{p} ({shapes[p]})") for p in products])
modes = [m for m in ["forward", "forward+backward", "no-grad forward"]
         if any(r["bench"] == "op_chain" and r["mode"] == m for r in rows)]
if modes:
    print()
    print("| op chain (1000 ops, [128] f32), µs/op | ours | torch eager | torch.compile "
          "| best torch (variant, allocator) | best torch/ours |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in modes:
        ours = min(pick("op_chain", "twinflow", "mode", mode, "us_per_op"), default=float("nan"))
        per, (best, variant, alloc) = twin_best("op_chain", "mode", mode, "us_per_op", min)
        print(f"| {mode} | {ours:.3f} | {per['eager']:.3f} | {per['compile']:.3f} "
              f"| {best:.3f} ({variant}, {alloc}) | {best / ours:.2f} |")
cases = list(dict.fromkeys(r["case"] for r in rows if r["bench"] == "transpose"))
if cases:
    print()
    rate_table("transposed copy", "---", "transpose", "case", [(c, c) for c in cases],
               field="gbps", unit="GB/s", digits=2)
for r in rows:
    if r["bench"] in ("matmul", "dit_products", "op_chain", "transpose") and "compile_error" in r:
        print(f"torch.compile failed ({r['bench']}, {r.get('allocator')}): {r['compile_error']}")
for dit in [[r for r in rows if r["bench"] == "dit" and r["batch"] == b]
            for b in sorted({r["batch"] for r in rows if r["bench"] == "dit"}, reverse=True)]:
    print()
    allocs = sorted({r.get("allocator", "glibc") for r in dit if r["impl"] == "torch"})
    cols = [(f"eager {a}", a, "") for a in allocs] + [(f"compile {a}", a, "compile_") for a in allocs]
    cols = [c for c in cols if any(c[2] + "train_step_ms" in r and r.get("allocator", "glibc") == c[1]
                                   for r in dit if r["impl"] == "torch")]
    print("| DiT, batch %s | ours ms | %s | best torch ms | torch best/ours |"
          % (dit[0]["batch"], " | ".join(c[0] + " ms" for c in cols)))
    print("|---|---:|" + "---:|" * len(cols) + "---:|---:|")
    mean_lines = []
    for key, label in [("train_step_ms", "train step (fwd, MSE, bwd, AdamW)"),
                       ("forward_nograd_ms", "no-grad forward")]:
        ours = min((r[key] for r in dit if r["impl"] == "twinflow"), default=float("nan"))
        cells = [min((r[pre + key] for r in dit if r["impl"] == "torch" and pre + key in r
                      and r.get("allocator", "glibc") == a), default=float("nan"))
                 for _, a, pre in cols]
        best = min((c for c in cells if c == c), default=float("nan"))
        print(f"| {label} | {ours:.1f} | " + " | ".join(f"{c:.1f}" for c in cells)
              + f" | {best:.1f} | {best / ours:.2f} |")
        # The best of many configurations' best rounds favours the side with more
        # samples on a noisy machine; the round means, configuration by configuration,
        # do not.
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        our_mean = mean([r[key] for r in dit if r["impl"] == "twinflow"])
        means = [(mean([r[pre + key] for r in dit if r["impl"] == "torch" and pre + key in r
                        and r.get("allocator", "glibc") == a]), name)
                 for name, a, pre in cols]
        best_mean = min((m for m in means if m[0] == m[0]), default=(float("nan"), "–"))
        mean_lines.append(f"{label}: ours {our_mean:.1f} ms, best torch configuration "
                          f"{best_mean[1]} {best_mean[0]:.1f} ms, torch/ours "
                          f"{best_mean[0] / our_mean:.2f}")
    print("by round means: " + "; ".join(mean_lines))
    for r in dit:
        if "compile_error" in r:
            print(f"torch.compile failed ({r.get('allocator')}): {r['compile_error']}")
    ours = max((r["peak_rss_mib"] for r in dit if r["impl"] == "twinflow"), default=float("nan"))
    torch = max((r["peak_rss_mib"] for r in dit if r["impl"] == "torch"), default=float("nan"))
    print(f"peak RSS of the process (MiB): ours {ours:.0f}, torch eager {torch:.0f}")
    # The matmul floor: the products' work (the bench's count) at this run's best GEMM
    # rate (our matmul bench, any size and round).
    rate = max((r["gflops"] for r in rows if r["bench"] == "matmul" and r["impl"] == "twinflow"),
               default=float("nan"))
    mine = [r for r in dit if r["impl"] == "twinflow" and "train_step_gflop" in r]
    if mine and rate == rate:
        parts = []
        for key, work, label in [("train_step_ms", "train_step_gflop", "train step"),
                                 ("forward_nograd_ms", "forward_gflop", "no-grad forward")]:
            floor = 1e3 * mine[0][work] / rate
            ours = min(r[key] for r in mine)
            parts.append(f"{label} {mine[0][work]:.2f} GFLOP, floor {floor:.1f} ms, "
                         f"ours/floor {ours / floor:.2f}")
        print(f"matmul floor at this run's best GEMM rate ({rate:.1f} GFLOP/s): " + "; ".join(parts))
dit = [r for r in rows if r["bench"] == "dit"]
jvp = [r for r in rows if r["bench"] == "jvp"]
nan = float("nan")
def best(impl, key, agg=min):
    return agg((r[key] for r in jvp if r["impl"] == impl and key in r), default=nan)
if jvp:
    print()
    print("| DiT, batch %s, step without optimiser | ours ms | torch eager ms | torch/ours "
          "| torch.compile ms |" % jvp[0]["batch"])
    print("|---|---:|---:|---:|---:|")
    for key, label in [("fm_step_ms", "FM step (fwd, MSE, bwd)"),
                       ("meanflow_step_ms", "MeanFlow step (jvp fwd, MSE, bwd)")]:
        ours, torch = best("twinflow", key), best("torch", key)
        comp = best("torch", "compile_" + key)
        print(f"| {label} | {ours:.1f} | {torch:.1f} | {torch / ours:.2f} | {comp:.1f} |")
    print(f"| FM step, math attention | – | {best('torch', 'fm_math_step_ms'):.1f} | | |")
    ours = best("twinflow", "meanflow_step_ms") / best("twinflow", "fm_step_ms")
    torch = best("torch", "meanflow_step_ms") / best("torch", "fm_step_ms")
    comp = best("torch", "compile_meanflow_step_ms") / best("torch", "compile_fm_step_ms")
    print(f"| MeanFlow / FM (best rounds) | {ours:.2f} | {torch:.2f} | | {comp:.2f} |")
    for key, label in [("fm_peak_growth_mib", "FM peak RSS growth (MiB)"),
                       ("meanflow_peak_growth_mib", "MeanFlow peak RSS growth (MiB)"),
                       ("fm_peak_rss_mib", "FM process peak RSS (MiB)"),
                       ("meanflow_peak_rss_mib", "MeanFlow process peak RSS (MiB)")]:
        ours, torch = best("twinflow", key, max), best("torch", key, max)
        print(f"| {label} | {ours:.0f} | {torch:.0f} | {torch / ours:.2f} | |")
    errors = {k: v for r in jvp for k, v in r.get("compile_errors", {}).items()}
    for case, err in errors.items():
        print(f"torch.compile {case} failed: {err}")
print()
print("ratios > 1: ours faster (or smaller). Every round (ours / torch):")
def twin_rounds(bench, key, value, field, fmt):
    """Every torch figure of one entry, as `value (variant allocator)`."""
    return ", ".join(f"{v:{fmt}} ({variant} {alloc})"
                     for v, variant, alloc in twin_figures(bench, key, value, field))
for n in sizes:
    o = pick("matmul", "twinflow", "n", n, "gflops")
    print(f"  matmul n={n}, GFLOP/s, ours: " + ", ".join(f"{a:.0f}" for a in o)
          + "; torch: " + twin_rounds("matmul", "n", n, "gflops", ".0f"))
for p in products:
    o = pick("dit_products", "twinflow", "product", p, "gflops")
    print(f"  {p}, GFLOP/s, ours: " + ", ".join(f"{a:.0f}" for a in o)
          + "; torch: " + twin_rounds("dit_products", "product", p, "gflops", ".0f"))
for c in cases:
    o = pick("transpose", "twinflow", "case", c, "gbps")
    print(f"  transpose {c}, GB/s, ours: " + ", ".join(f"{a:.1f}" for a in o)
          + "; torch: " + twin_rounds("transpose", "case", c, "gbps", ".1f"))
for mode in modes:
    o = pick("op_chain", "twinflow", "mode", mode, "us_per_op")
    print(f"  op chain {mode}, µs/op, ours: " + ", ".join(f"{a:.2f}" for a in o)
          + "; torch: " + twin_rounds("op_chain", "mode", mode, "us_per_op", ".2f"))
for b in sorted({r["batch"] for r in dit}, reverse=True):
    for key in ["train_step_ms", "forward_nograd_ms"]:
        o = [r[key] for r in dit if r["impl"] == "twinflow" and r["batch"] == b]
        if o:
            print(f"  dit batch {b} {key}, ours: " + ", ".join(f"{a:.1f}" for a in o))
        for pre in ["", "compile_"]:
            t = [f"{r[pre + key]:.1f} ({r.get('allocator', 'glibc')})" for r in dit
                 if r["impl"] == "torch" and r["batch"] == b and pre + key in r]
            if t:
                print(f"  dit batch {b} {pre}{key}, torch: " + ", ".join(t))
for key in ["fm_step_ms", "meanflow_step_ms", "meanflow_over_fm"]:
    o = [r[key] for r in jvp if r["impl"] == "twinflow"]
    t = [r[key] for r in jvp if r["impl"] == "torch"]
    if o:
        print(f"  jvp {key}: " + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(o, t)))
for key in ["fm_math_step_ms", "compile_fm_step_ms", "compile_meanflow_step_ms",
            "compile_meanflow_over_fm"]:
    t = [r.get(key, nan) for r in jvp if r["impl"] == "torch"]
    if t:
        print(f"  jvp torch {key}: " + ", ".join(f"{b:.2f}" for b in t))
EOF
