#!/usr/bin/env python3
"""PyTorch eager reference for benches/matmul.rs and benches/op_chain.rs.

Same shapes, same op mix, same timing method (untimed warm-up, by count and by time,
then the median wall time of several timed runs, time.perf_counter around the work only), same table
format. benches/run.sh runs this next to the Rust benches and merges the results; see
docs/benchmarks.md.

    python3 benches/torch_reference.py [--bench matmul|op_chain|all] [--json]
                                       [--threads N]

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

# Minimum warm-up time per size / measurement, in seconds: as in the Rust benches.
MATMUL_WARMUP_SECS = 0.5
CHAIN_WARMUP_SECS = 0.3

# (n, minimum warm-up products, timed products): as in benches/matmul.rs.
SIZES = [(256, 10, 50), (512, 5, 30), (1024, 3, 15), (2048, 2, 7)]

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


def bench_matmul(emit_json):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(f"# torch {torch.__version__} matmul, f32, CPU, {threads} threads")
    print("| n | median ms | GFLOP/s |")
    print("|---:|---:|---:|")
    for n, warmup, reps in SIZES:
        a = torch.randn(n, n, dtype=torch.float32)
        b = torch.randn(n, n, dtype=torch.float32)
        start, done = time.perf_counter(), 0
        while done < warmup or time.perf_counter() - start < MATMUL_WARMUP_SECS:
            c = a @ b
            del c
            done += 1
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            c = a @ b
            dt = time.perf_counter() - t0
            del c
            times.append(dt)
        t = statistics.median(times)
        gflops = 2.0 * n**3 / t / 1e9
        print(f"| {n} | {t * 1e3:.3f} | {gflops:.1f} |")
        if emit_json:
            print(json.dumps({
                "bench": "matmul", "impl": "torch", "n": n, "median_s": t,
                "gflops": gflops, "threads": threads, "version": torch.__version__,
            }))


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


def bench_op_chain(emit_json):
    torch.manual_seed(0)
    x = torch.randn(LEN, dtype=torch.float32, requires_grad=True)
    c = 1.0 + 0.1 * torch.randn(LEN, dtype=torch.float32)
    b = 0.1 * torch.randn(LEN, dtype=torch.float32)

    # Sanity: the gradient exists and is finite.
    chain(x, c, b).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

    def clear_grad():
        x.grad = None

    def fwd_bwd():
        loss = chain(x, c, b)
        loss.backward()
        return loss

    def no_grad_fwd():
        with torch.no_grad():
            return chain(x, c, b)

    results = [
        ("forward", timed(lambda: chain(x, c, b))),
        ("forward+backward", timed(fwd_bwd, setup=clear_grad)),
        ("no-grad forward", timed(no_grad_fwd)),
    ]
    print(f"# torch {torch.__version__} op chain: {CHAIN} ops on [{LEN}] f32 "
          "(mul, add, tanh, sin)")
    print("| measurement | median ms per chain | µs per op |")
    print("|---|---:|---:|")
    for name, t in results:
        us = t * 1e6 / CHAIN
        print(f"| {name} | {t * 1e3:.3f} | {us:.3f} |")
        if emit_json:
            print(json.dumps({
                "bench": "op_chain", "impl": "torch", "mode": name, "median_s": t,
                "us_per_op": us, "ops": CHAIN, "version": torch.__version__,
            }))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", choices=["matmul", "op_chain", "all"], default="all")
    p.add_argument("--json", action="store_true", help="also print JSON lines")
    p.add_argument("--threads", type=int, default=default_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.bench in ("matmul", "all"):
        bench_matmul(args.json)
    if args.bench in ("op_chain", "all"):
        bench_op_chain(args.json)


if __name__ == "__main__":
    main()
