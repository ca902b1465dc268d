#!/usr/bin/env python3
"""PyTorch twin of benches/dit_step.rs: the same DiT, batch and timing, eager and
under torch.compile.

The model is the project's PyTorch reference DiT, the "anchor" that the Rust `Dit`
follows name for name (docs/nn.md); its classes live here, and
tests/reference/make_parity_fixtures.py loads them from this file. Sizes: dim 128,
depth 4, 4 heads, patch 4 on 28x28x1 (49 tokens, 1,298,320 parameters), batch 128. A training step is forward, MSE against the input,
backward and AdamW (lr 1e-4); a no-grad forward is timed too. Times are medians of
10 runs after 3 warm-up runs; the peak resident memory (VmHWM) of the process is
reported.

PyTorch at its best: before any timing, matrix products run for half a second (MKL and
oneDNN pick their kernels and thread teams on first use); the steps are then timed
eagerly and, unless --no-compile, with the model under torch.compile (inductor,
default mode; compilation happens in the warm-up, not in the times). The allocator
is whatever the process was started with: benches/run.sh runs this script under
glibc's, jemalloc and tcmalloc (LD_PRELOAD) and reports the best; the JSON line
names the one it saw.

    python3 benches/torch_dit.py [--json] [--batch N] [--threads N] [--no-compile]

Threads default to the machine's core count, as rayon's do for benches/dit_step.rs.
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

WARMUP, STEPS = 3, 10


def sincos(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    a = t[:, None] * freqs[None] * 1000
    return torch.cat([a.cos(), a.sin()], dim=1)


class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.h = h
        s.n1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        s.n2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        s.qkv = nn.Linear(d, 3 * d)
        s.proj = nn.Linear(d, d)
        s.fc1 = nn.Linear(d, 4 * d)
        s.fc2 = nn.Linear(4 * d, d)
        s.ada = nn.Linear(d, 6 * d)

    def forward(s, x, c):
        B, T, D = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = s.ada(F.silu(c)).chunk(6, dim=1)
        y = s.n1(x) * (1 + sc1[:, None]) + sh1[:, None]
        q, k, v = s.qkv(y).view(B, T, 3, s.h, D // s.h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + g1[:, None] * s.proj(y)
        y = s.n2(x) * (1 + sc2[:, None]) + sh2[:, None]
        return x + g2[:, None] * s.fc2(F.gelu(s.fc1(y), approximate="tanh"))


class DiT(nn.Module):
    # img/ch: image side and channels (28x28x1 here; benches/torch_cuda.py's bf16 step
    # uses 32x32x3). Patches are flattened channel-last, as the engine's PatchGrid.
    def __init__(s, d=128, depth=4, h=4, p=4, classes=10, img=28, ch=1):
        super().__init__()
        s.p, s.d, s.img, s.ch = p, d, img, ch
        s.patch = nn.Linear(p * p * ch, d)
        s.pos = nn.Parameter(torch.randn(1, (img // p) ** 2, d) * 0.02)
        s.temb = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        s.ttemb = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        s.yemb = nn.Embedding(classes + 1, d)
        s.blocks = nn.ModuleList([Block(d, h) for _ in range(depth)])
        s.nf = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        s.adaf = nn.Linear(d, 2 * d)
        s.out = nn.Linear(d, p * p * ch)

    def forward(s, x, t, tt, y):
        B = x.shape[0]
        p, ch = s.p, s.ch
        g = s.img // p
        x = x.view(B, ch, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, p * p * ch)
        x = s.patch(x) + s.pos
        c = s.temb(sincos(t, s.d)) + s.ttemb(sincos(tt, s.d)) + s.yemb(y)
        for b in s.blocks:
            x = b(x, c)
        sh, sc = s.adaf(F.silu(c)).chunk(2, dim=1)
        x = s.out(s.nf(x) * (1 + sc[:, None]) + sh[:, None])
        x = x.view(B, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, ch * s.img * s.img)


def time_ms(fn):
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def warm_up_products(seconds=0.5):
    """Runs 1024x1024 products for `seconds`, as a user's first real work would."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b


def preloaded_allocator():
    """The allocator LD_PRELOAD put in front of glibc's, by library name."""
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc"):
        if name in preload:
            return name
    return "glibc"


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS") or 0) or os.cpu_count())
    ap.add_argument("--no-compile", action="store_true", help="time eager mode only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warm_up_products()
    eager = DiT()
    model = eager
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = args.batch
    x = torch.randn(n, 784)
    t = torch.rand(n)
    tt = torch.rand(n) * t
    y = torch.arange(n) % 10

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = (model(x, t, tt, y) - x).pow(2).mean()
        loss.backward()
        opt.step()

    def forward_nograd():
        with torch.no_grad():
            model(x, t, tt, y)

    train = time_ms(train_step)
    fwd = time_ms(forward_nograd)
    # Peak memory of eager mode only: compiling takes far more than a step.
    peak = peak_rss_mib()
    compiled = {}
    if not args.no_compile:
        model = torch.compile(eager)
        try:
            compiled["compile_train_step_ms"] = round(time_ms(train_step), 1)
            compiled["compile_forward_nograd_ms"] = round(time_ms(forward_nograd), 1)
        except Exception as e:  # reported, not fatal: eager still stands
            compiled["compile_error"] = f"{type(e).__name__}: {e}"[:200]
    params = sum(p.numel() for p in eager.parameters())
    if args.json:
        print(json.dumps({"bench": "dit", "impl": "torch", "version": torch.__version__,
                          "batch": n, "params": params, "threads": torch.get_num_threads(),
                          "allocator": preloaded_allocator(),
                          "train_step_ms": round(train, 1), "forward_nograd_ms": round(fwd, 1),
                          "peak_rss_mib": round(peak), **compiled}))
    else:
        print(f"# torch {torch.__version__}: DiT {params} params, batch {n}, "
              f"{torch.get_num_threads()} threads, {preloaded_allocator()} allocator")
        print("| measurement | eager ms | torch.compile ms |")
        print("|---|---:|---:|")
        print(f"| train step (fwd, MSE, bwd, AdamW) | {train:.1f} | "
              f"{compiled.get('compile_train_step_ms', '–')} |")
        print(f"| no-grad forward | {fwd:.1f} | {compiled.get('compile_forward_nograd_ms', '–')} |")
        print(f"| peak RSS, eager (MiB) | {peak:.0f} | |")
        if "compile_error" in compiled:
            print(f"torch.compile failed: {compiled['compile_error']}")


if __name__ == "__main__":
    main()
