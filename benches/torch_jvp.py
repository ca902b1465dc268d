#!/usr/bin/env python3
"""PyTorch twin of benches/jvp_step.rs: a MeanFlow-class step (one forward under
torch.func.jvp) against a plain flow-matching step, on the DiT of torch_dit.py.

The model, its sizes and the timing (medians of 10 steps after 3 warm-up steps) come
from torch_dit.py, imported; batch 128, threads as there (the machine's core count or
RAYON_NUM_THREADS). Data x, noise z ~ N(0, I), t ~ U(0, 1), r = U(0, 1)*t, labels
i mod 10; x_t = t*z + (1 - t)*x and v = z - x are made once, outside the timed steps.

- fm: u = F(x_t, t, t, c), loss = mse(u, v), backward (default attention backend:
  on the CPU, the flash kernel).
- fm_math: the same with the math attention backend.
- meanflow: (u, du/dt) = torch.func.jvp(F(., ., ., c), (x_t, t, r), (v, 1, 0)) under
  the math attention backend (the flash and efficient kernels have no forward AD),
  target = (v - (t - r)*du/dt).detach(), loss = mse(u, target), backward.
- compile_fm, compile_meanflow: the loss functions of fm and meanflow under
  torch.compile (default mode, inductor), backward outside them.

No optimiser step (model.zero_grad(set_to_none=True) before each step). Each case runs
in a child process of its own; the child reads its resident set after building the
model and the batch, resets the high-water mark (/proc/self/clear_refs), and reports
the peak growth (VmHWM minus that baseline) over the warm-up and timed steps. For the
compiled cases the reset comes after the warm-up (which compiles), so their memory
would be the timed steps' peak over the RSS the compiler left, not comparable with the
eager cases': it is not reported.

    python3 benches/torch_jvp.py [--json] [--batch N] [--threads N] [--no-compile]
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from torch_dit import DiT, STEPS, WARMUP, time_ms

EAGER = ["fm", "fm_math", "meanflow"]
COMPILED = ["compile_fm", "compile_meanflow"]
# Seconds a compiled case may take, compilation included (2 cores: about 2 minutes).
COMPILE_TIMEOUT = 1200


def status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_steps(model, n):
    torch.manual_seed(1)
    x = torch.randn(n, 784)
    z = torch.randn(n, 784)
    t = torch.rand(n)
    r = torch.rand(n) * t
    y = torch.arange(n) % 10
    x_t = t[:, None] * z + (1 - t[:, None]) * x
    v = z - x
    t_minus_r = (t - r)[:, None]

    def fm_loss(x_t, t, v, y):
        return (model(x_t, t, t, y) - v).pow(2).mean()

    def meanflow_loss(x_t, t, r, v, t_minus_r, y):
        with sdpa_kernel(SDPBackend.MATH):
            u, du_dt = torch.func.jvp(lambda a, b, c: model(a, b, c, y), (x_t, t, r),
                                      (v, torch.ones_like(t), torch.zeros_like(r)))
        target = (v - t_minus_r * du_dt).detach()
        return (u - target).pow(2).mean()

    def step(loss_fn, *args):
        def run():
            model.zero_grad(set_to_none=True)
            loss_fn(*args).backward()
        return run

    def fm_math():
        with sdpa_kernel(SDPBackend.MATH):
            model.zero_grad(set_to_none=True)
            fm_loss(x_t, t, v, y).backward()

    # Made on demand: an eager case does not import the compiler.
    return {
        "fm": lambda: step(fm_loss, x_t, t, v, y),
        "fm_math": lambda: fm_math,
        "meanflow": lambda: step(meanflow_loss, x_t, t, r, v, t_minus_r, y),
        "compile_fm": lambda: step(torch.compile(fm_loss), x_t, t, v, y),
        "compile_meanflow": lambda: step(torch.compile(meanflow_loss), x_t, t, r, v,
                                         t_minus_r, y),
    }


def run_case(case, n):
    """Runs one case in this process; prints its JSON line for the parent."""
    torch.manual_seed(0)
    model = DiT()
    run = make_steps(model, n)[case]()
    out = {"case": case, "params": sum(p.numel() for p in model.parameters())}
    try:
        base = status_mib("VmRSS")
        out["hwm_reset"] = reset_peak_rss()
        if case in COMPILED:
            t0 = time.perf_counter()
            for _ in range(WARMUP):
                run()
            out["warmup_s"] = round(time.perf_counter() - t0, 1)
            base = status_mib("VmRSS")
            out["hwm_reset"] = reset_peak_rss()
            times = []
            for _ in range(STEPS):
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) * 1e3)
            out["ms"] = sorted(times)[len(times) // 2]
        else:
            out["ms"] = time_ms(run)
        out["base_rss_mib"] = base
        out["peak_rss_mib"] = status_mib("VmHWM")
    except Exception as e:  # a compiled case that fails is recorded, not fatal
        traceback.print_exc(limit=4, file=sys.stderr)
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
    print(json.dumps(out), flush=True)


def spawn_case(case, n, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--case", case,
           "--batch", str(n), "--threads", str(threads)]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                           timeout=COMPILE_TIMEOUT if case in COMPILED else None)
    except subprocess.TimeoutExpired:
        return {"case": case, "error": f"timed out after {COMPILE_TIMEOUT} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return {"case": case, "error": f"child exited with {p.returncode} and no result"}
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS") or 0) or os.cpu_count())
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    ap.add_argument("--case", choices=EAGER + COMPILED, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.batch
    if args.case:
        return run_case(args.case, n)

    cases = EAGER + ([] if args.no_compile else COMPILED)
    res = {c: spawn_case(c, n, args.threads) for c in cases}
    for c in EAGER:
        if "error" in res[c]:
            sys.exit(f"error: the eager case {c} failed: {res[c]['error']}")

    def growth(c):
        return res[c]["peak_rss_mib"] - res[c]["base_rss_mib"]

    fm, fm_math, mf = (res[c]["ms"] for c in EAGER)
    row = {"bench": "jvp", "impl": "torch", "version": torch.__version__, "batch": n,
           "params": res["fm"]["params"], "threads": torch.get_num_threads(),
           "fm_step_ms": round(fm, 1), "fm_math_step_ms": round(fm_math, 1),
           "meanflow_step_ms": round(mf, 1), "meanflow_over_fm": round(mf / fm, 3),
           "meanflow_over_fm_math": round(mf / fm_math, 3),
           "fm_peak_growth_mib": round(growth("fm")),
           "meanflow_peak_growth_mib": round(growth("meanflow")),
           "fm_peak_rss_mib": round(res["fm"]["peak_rss_mib"]),
           "meanflow_peak_rss_mib": round(res["meanflow"]["peak_rss_mib"])}
    compile_errors = {c: res[c]["error"] for c in COMPILED if c in res and "error" in res[c]}
    for c in COMPILED:
        if c in res and "error" not in res[c]:
            row[c + "_step_ms"] = round(res[c]["ms"], 1)
            row[c + "_warmup_s"] = res[c]["warmup_s"]
    if "compile_fm_step_ms" in row and "compile_meanflow_step_ms" in row:
        row["compile_meanflow_over_fm"] = round(
            row["compile_meanflow_step_ms"] / row["compile_fm_step_ms"], 3)
    if compile_errors:
        row["compile_errors"] = compile_errors

    if args.json:
        print(json.dumps(row))
    else:
        print(f"# torch {torch.__version__}: DiT {row['params']} params, batch {n}, "
              f"{row['threads']} threads; each step in its own process")
        print("| step (no optimiser) | ms | peak RSS growth (MiB) | peak RSS (MiB) |")
        print("|---|---:|---:|---:|")
        for c, label in [("fm", "FM (fwd, MSE, bwd)"),
                         ("fm_math", "FM, math attention"),
                         ("meanflow", "MeanFlow (jvp fwd, MSE, bwd), math attention")]:
            print(f"| {label} | {res[c]['ms']:.1f} | {growth(c):.0f} | {res[c]['peak_rss_mib']:.0f} |")
        print(f"| MeanFlow / FM | {mf / fm:.2f} | | |")
        print(f"| MeanFlow / FM (math attention) | {mf / fm_math:.2f} | | |")
        for c in COMPILED:
            if c not in res:
                continue
            if "error" in res[c]:
                print(f"| {c} | failed: {res[c]['error']} | | |")
            else:
                print(f"| {c} (after {res[c]['warmup_s']} s of warm-up with compilation) "
                      f"| {res[c]['ms']:.1f} | | |")
        if "compile_meanflow_over_fm" in row:
            print(f"| compiled MeanFlow / FM | {row['compile_meanflow_over_fm']:.2f} | | |")


if __name__ == "__main__":
    main()
