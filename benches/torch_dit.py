#!/usr/bin/env python3
"""PyTorch eager twin of benches/dit_step.rs: the same DiT, batch and timing.

The model is the project's PyTorch reference DiT, the "anchor" that the Rust `Dit`
follows name for name (docs/nn.md); its classes live here, and
tests/reference/make_parity_fixtures.py loads them from this file. Sizes: dim 128,
depth 4, 4 heads, patch 4 on 28x28x1 (49 tokens, 1,298,320 parameters), batch 128. A training step is forward, MSE against the input,
backward and AdamW (lr 1e-4); a no-grad forward is timed too. Times are medians of
10 runs after 3 warm-up runs; the peak resident memory (VmHWM) of the process is
reported.

    python3 benches/torch_dit.py [--json] [--batch N] [--threads N]

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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DiT()
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
    params = sum(p.numel() for p in model.parameters())
    peak = peak_rss_mib()
    if args.json:
        print(json.dumps({"bench": "dit", "impl": "torch", "version": torch.__version__,
                          "batch": n, "params": params, "threads": torch.get_num_threads(),
                          "train_step_ms": round(train, 1), "forward_nograd_ms": round(fwd, 1),
                          "peak_rss_mib": round(peak)}))
    else:
        print(f"# torch {torch.__version__}: DiT {params} params, batch {n}, {torch.get_num_threads()} threads")
        print("| measurement | ms |")
        print("|---|---:|")
        print(f"| train step (fwd, MSE, bwd, AdamW) | {train:.1f} |")
        print(f"| no-grad forward | {fwd:.1f} |")
        print(f"| peak RSS (MiB) | {peak:.0f} |")


if __name__ == "__main__":
    main()
