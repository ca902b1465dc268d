#!/usr/bin/env python3
"""PyTorch reference for benches/matmul.rs (square products, then the DiT's products),
benches/op_chain.rs and benches/transpose.rs, eager and under torch.compile.

Same shapes, same op mix, same timing method (untimed warm-up, by count and by time,
then the median wall time of several timed runs, time.perf_counter around the work only), same table
format. benches/run.sh runs this next to the Rust benches, under each allocator it
finds, and merges the results; see docs/benchmarks.md.

    python3 benches/torch_reference.py [--bench matmul|op_chain|transpose|all] [--json]
                                       [--threads N] [--no-compile]

torch.compile (inductor, the default mode) is timed after the eager runs, each
compiled function warmed up like the eager one (the first calls, which compile, are
not timed). For the op chain it fuses the 1,000 element ops into one kernel, so it
measures what a user gets by compiling such a chain, not per-op overhead. A compile
that fails is reported (JSON field `compile_error`) instead of timed.

Threads: by default as many as the machine has cores, which is what rayon (and so
our engine) uses by default; RAYON_NUM_THREADS, when set, is followed too so that
both sides always use the same count.
"""

import argparse
import json
import os
import statistics
import time

import torch

from torch_dit import preloaded_allocator

# Minimum warm-up time per size / measurement, in seconds: as in the Rust benches.
MATMUL_WARMUP_SECS = 0.5
CHAIN_WARMUP_SECS = 0.3

# (n, minimum warm-up products, timed products): as in benches/matmul.rs.
SIZES = [(256, 10, 50), (512, 5, 30), (1024, 3, 15), (2048, 2, 7)]

# The default DiT's products at batch 128, as in benches/matmul.rs: token rows, the
# linear layers (name, inputs, outputs), and (minimum warm-up, timed) products.
DIT_ROWS = 128 * 49
DIT_LAYERS = [("qkv", 128, 384), ("proj", 128, 128), ("fc1", 128, 512), ("fc2", 512, 128)]
DIT_REPS = (3, 15)

# As in benches/op_chain.rs.
CHAIN = 1000
LEN = 128
WARMUP = 20
REPS = 200


def default_threads():
    env = os.environ.get("RAYON_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


def time_product(mm, a, b, warmup, reps):
    """Median seconds of `reps` timed calls of mm(a, b) after the warm-up."""
    start, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - start < MATMUL_WARMUP_SECS:
        c = mm(a, b)
        del c
        done += 1
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        c = mm(a, b)
        dt = time.perf_counter() - t0
        del c
        times.append(dt)
    return statistics.median(times)


def add_compiled(row, flop, compiled, a, b, counts):
    """Sets row["compile_gflops"] for the product `compiled()` returns, timed as the
    eager one (compiling happens on its first, untimed call), or row["compile_error"]:
    a failed compile is reported, not fatal, as eager still stands."""
    try:
        row["compile_gflops"] = flop / time_product(compiled(), a, b, *counts) / 1e9
    except Exception as e:
        row["compile_error"] = f"{type(e).__name__}: {e}"[:200]


def static_product():
    """a @ b compiled for static shapes, afresh: past eight layouts of one function
    dynamo stops recompiling and falls back to eager."""
    torch._dynamo.reset()
    return torch.compile(lambda a, b: a @ b, dynamic=False)


def bench_matmul(emit_json, compile_too):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"# torch {torch.__version__} matmul, f32, CPU, {threads} threads, "
          f"allocator {preloaded_allocator()}")
    print("| n | median ms | GFLOP/s | torch.compile GFLOP/s |")
    print("|---:|---:|---:|---:|")
    for n, warmup, reps in SIZES:
        a = torch.randn(n, n, dtype=torch.float32)
        b = torch.randn(n, n, dtype=torch.float32)
        t = time_product(torch.matmul, a, b, warmup, reps)
        gflops = 2.0 * n**3 / t / 1e9
        row = {
            "bench": "matmul", "impl": "torch", "n": n, "median_s": t, "gflops": gflops,
            "threads": threads, "version": torch.__version__,
            "allocator": preloaded_allocator(),
        }
        if compile_too:
            add_compiled(row, 2.0 * n**3, lambda: torch.compile(lambda x, y: x @ y),
                         a, b, (warmup, reps))
        cell = f"{row['compile_gflops']:.1f}" if "compile_gflops" in row else "–"
        print(f"| {n} | {t * 1e3:.3f} | {gflops:.1f} | {cell} |")
        if emit_json:
            print(json.dumps(row))
    bench_dit_products(emit_json, compile_too, threads)


def bench_dit_products(emit_json, compile_too, threads):
    """The DiT's products, each layer's x·Wᵀ, g·W and gᵀ·x on the same views as
    benches/matmul.rs (transposes are views, as there)."""
    print()
    print(f"# the DiT's products at batch 128 ({DIT_ROWS} token rows)")
    print("| product | m × k × n | median ms | GFLOP/s | torch.compile GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    warmup, reps = DIT_REPS
    for layer, inputs, outputs in DIT_LAYERS:
        x = torch.randn(DIT_ROWS, inputs, dtype=torch.float32)
        w = torch.randn(outputs, inputs, dtype=torch.float32)
        g = torch.randn(DIT_ROWS, outputs, dtype=torch.float32)
        for kind, lhs, rhs in [("forward", x, w.t()), ("input grad", g, w),
                               ("weight grad", g.t(), x)]:
            (m, k), n = lhs.shape, rhs.shape[1]
            flop = 2.0 * m * k * n
            t = time_product(torch.matmul, lhs, rhs, warmup, reps)
            row = {
                "bench": "dit_products", "impl": "torch", "product": f"{layer} {kind}",
                "m": m, "k": k, "n": n, "median_s": t, "gflops": flop / t / 1e9,
                "threads": threads, "version": torch.__version__,
                "allocator": preloaded_allocator(),
            }
            if compile_too:
                add_compiled(row, flop, static_product, lhs, rhs, (warmup, reps))
            cell = f"{row['compile_gflops']:.1f}" if "compile_gflops" in row else "–"
            print(f"| {row['product']} | {m} × {k} × {n} | {t * 1e3:.3f} "
                  f"| {row['gflops']:.1f} | {cell} |")
            if emit_json:
                print(json.dumps(row))


def chain(x, c, b):
    y = x
    for i in range(CHAIN):
        k = i % 4
        if k == 0:
            y = y * c
        elif k == 1:
            y = y + b
        elif k == 2:
            y = torch.tanh(y)
        else:
            y = torch.sin(y)
    return y.sum()


def timed(f, setup=None):
    """Median seconds of REPS timed calls of f after at least WARMUP untimed ones and
    CHAIN_WARMUP_SECS of warm-up; what f returns is released after the clock stops
    (freeing the graph is not counted)."""
    start, done = time.perf_counter(), 0
    while done < WARMUP or time.perf_counter() - start < CHAIN_WARMUP_SECS:
        if setup:
            setup()
        out = f()
        del out
        done += 1
    times = []
    for _ in range(REPS):
        if setup:
            setup()
        t0 = time.perf_counter()
        out = f()
        dt = time.perf_counter() - t0
        del out
        times.append(dt)
    return statistics.median(times)


def chain_timings(run):
    """Median seconds of the three measurements, running the chain with `run`."""
    torch.manual_seed(0)
    x = torch.randn(LEN, dtype=torch.float32, requires_grad=True)
    c = 1.0 + 0.1 * torch.randn(LEN, dtype=torch.float32)
    b = 0.1 * torch.randn(LEN, dtype=torch.float32)

    # Sanity: the gradient exists and is finite.
    run(x, c, b).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

    def clear_grad():
        x.grad = None

    def fwd_bwd():
        loss = run(x, c, b)
        loss.backward()
        return loss

    def no_grad_fwd():
        with torch.no_grad():
            return run(x, c, b)

    return [
        ("forward", timed(lambda: run(x, c, b))),
        ("forward+backward", timed(fwd_bwd, setup=clear_grad)),
        ("no-grad forward", timed(no_grad_fwd)),
    ]


def bench_op_chain(emit_json, compile_too):
    results = chain_timings(chain)
    compiled_times, err = {}, None
    if compile_too:
        try:  # compiling happens on the first (sanity) call
            compiled_times = dict(chain_timings(torch.compile(chain)))
        except Exception as e:  # reported, not fatal: eager still stands
            err = f"{type(e).__name__}: {e}"[:200]
    print(f"# torch {torch.__version__} op chain: {CHAIN} ops on [{LEN}] f32 "
          f"(mul, add, tanh, sin), allocator {preloaded_allocator()}")
    print("| measurement | median ms per chain | µs per op | torch.compile µs per op |")
    print("|---|---:|---:|---:|")
    for name, t in results:
        us = t * 1e6 / CHAIN
        row = {
            "bench": "op_chain", "impl": "torch", "mode": name, "median_s": t,
            "us_per_op": us, "ops": CHAIN, "version": torch.__version__,
            "allocator": preloaded_allocator(),
        }
        if name in compiled_times:
            row["compile_us_per_op"] = compiled_times[name] * 1e6 / CHAIN
        elif compile_too:
            row["compile_error"] = err
        cell = f"{row['compile_us_per_op']:.3f}" if "compile_us_per_op" in row else "–"
        print(f"| {name} | {t * 1e3:.3f} | {us:.3f} | {cell} |")
        if emit_json:
            print(json.dumps(row))


# As in benches/transpose.rs: (case, source shape, dtype, permutation).
TRANSPOSES = [
    ("f32 [6272, 512]ᵀ", (6272, 512), torch.float32, (1, 0)),
    ("f32 [1000, 1000]ᵀ", (1000, 1000), torch.float32, (1, 0)),
    ("f32 [4096, 4096]ᵀ", (4096, 4096), torch.float32, (1, 0)),
    ("bf16 [4096, 4096]ᵀ", (4096, 4096), torch.bfloat16, (1, 0)),
    ("f32 NCHW → NHWC [64, 32, 28, 28]", (64, 32, 28, 28), torch.float32, (0, 2, 3, 1)),
    ("f32 NHWC → NCHW [64, 28, 28, 32]", (64, 28, 28, 32), torch.float32, (0, 3, 1, 2)),
]


def bench_transpose(emit_json, compile_too):
    """x.permute(perm).contiguous(), eager and compiled, in GB/s (read + written)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"# torch {torch.__version__} transposed copies, CPU, {threads} threads, "
          f"allocator {preloaded_allocator()}")
    print("| case | median ms | GB/s | torch.compile GB/s |")
    print("|---|---:|---:|---:|")
    for case, shape, dtype, perm in TRANSPOSES:
        x = torch.randn(*shape).to(dtype)
        copy = lambda a, _: a.permute(*perm).contiguous()
        t = time_product(copy, x, None, 3, 15)
        nbytes = 2 * x.numel() * x.element_size()
        row = {
            "bench": "transpose", "impl": "torch", "case": case, "median_s": t,
            "gbps": nbytes / t / 1e9, "threads": threads, "version": torch.__version__,
            "allocator": preloaded_allocator(),
        }
        if compile_too:
            try:
                torch._dynamo.reset()
                compiled = torch.compile(lambda a: a.permute(*perm).contiguous(), dynamic=False)
                row["compile_gbps"] = nbytes / time_product(
                    lambda a, _: compiled(a), x, None, 3, 15) / 1e9
            except Exception as e:  # reported, not fatal: eager still stands
                row["compile_error"] = f"{type(e).__name__}: {e}"[:200]
        cell = f"{row['compile_gbps']:.2f}" if "compile_gbps" in row else "–"
        print(f"| {case} | {t * 1e3:.3f} | {row['gbps']:.2f} | {cell} |")
        if emit_json:
            print(json.dumps(row))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", choices=["matmul", "op_chain", "transpose", "all"], default="all")
    p.add_argument("--json", action="store_true", help="also print JSON lines")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--no-compile", action="store_true",
                   help="time eager mode only (no torch.compile column)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.bench in ("matmul", "all"):
        bench_matmul(args.json, not args.no_compile)
    if args.bench in ("op_chain", "all"):
        bench_op_chain(args.json, not args.no_compile)
    if args.bench in ("transpose", "all"):
        bench_transpose(args.json, not args.no_compile)


if __name__ == "__main__":
    main()
