"""PyTorch twin of benches/cuda.rs on the same GPU: the same shapes and measurements
(median of 10 timed runs after 3 warm-up runs, synchronised around each), printed as
JSON lines (--json) or a table. The DiT step uses torch_dit.py's model (eager)."""
import json
import sys
import time

import torch

JSON = "--json" in sys.argv
# Bench groups named on the command line (all when none is), as benches/cuda.rs takes them.
GROUPS = [a for a in sys.argv[1:] if not a.startswith("--")]
dev = torch.device("cuda")


def timed(f, warmup=3, runs=10):
    for _ in range(warmup):
        f()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[runs // 2]


def report(bench, case, value, unit):
    if JSON:
        print(json.dumps({"bench": bench, "impl": "torch", "case": case, "value": round(value, 3), "unit": unit}))
    else:
        print(f"| {bench} | {case} | {value:.2f} {unit} |")


def matmuls():
    for label, dtype, tf32 in [("f32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)]:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for n in [1024, 2048, 4096, 8192]:
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            s = timed(lambda: a @ b)
            report("matmul", f"{label} {n}", 2 * n**3 / s / 1e12, "TFLOP/s")
    torch.backends.cuda.matmul.allow_tf32 = False


def bandwidth():
    n = 1 << 28
    a = torch.ones(n // 4096, 4096, device=dev)
    b = torch.ones(n // 4096, 4096, device=dev)
    nbytes = n * 4
    # The memcpy-speed ceiling the elementwise rows are judged against (a read and a write
    # per element); ours has no such row, so the summary shows "-" beside it.
    report("bandwidth", "device copy", 2 * nbytes / timed(lambda: b.copy_(a)) / 1e9, "GB/s")
    report("bandwidth", "copy (x·1 + 0)", 2 * nbytes / timed(lambda: a * 1.0 + 0.0) / 1e9, "GB/s")
    report("bandwidth", "copy (transposed)", 2 * nbytes / timed(lambda: a.t().contiguous()) / 1e9, "GB/s")
    report("bandwidth", "add", 3 * nbytes / timed(lambda: a + b) / 1e9, "GB/s")
    report("bandwidth", "sum last dim", nbytes / timed(lambda: a.sum(1)) / 1e9, "GB/s")


def dit_step():
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from torch_dit import DiT  # the CPU twin's model: the same DiT as ours

    for batch in [128, 1024]:
        torch.manual_seed(0)
        model = DiT().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 784, device=dev)
        t = torch.rand(batch, device=dev)
        tt = torch.rand(batch, device=dev) * t
        labels = torch.arange(batch, device=dev) % 10

        def step():
            out = model(x, t, tt, labels)
            loss = torch.nn.functional.mse_loss(out, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        report("dit_step", f"batch {batch}", timed(step) * 1e3, "ms")


def attention():
    """SDPA on the flash backend, bf16, b·h = 64, T from 256 to 16k, the causal mask from
    T = 1024 on; FLOPs counted as in cuda.rs (halved under the causal mask)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    b, h = 4, 16
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for d in [64, 128]:
            for t in [256, 1024, 4096, 16384]:
                for causal in [False, True]:
                    if causal and t < 1024:
                        continue
                    q, k, v, dout = (torch.randn(b, h, t, d, device=dev, dtype=torch.bfloat16) for _ in range(4))
                    flops = 4 * b * h * t * t * d / (2 if causal else 1)
                    attend = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    fwd = timed(attend)
                    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
                    both = timed(lambda: attend().backward(dout))
                    mask = " causal" if causal else ""
                    report("attention", f"fwd bf16 d{d} T{t}{mask}", flops / fwd / 1e12, "TFLOP/s")
                    report("attention", f"fwd+bwd bf16 d{d} T{t}{mask}", 3.5 * flops / both / 1e12, "TFLOP/s")


def dit_step_bf16():
    """The DiT-S/2-sized step of cuda.rs (32x32x3, patch 2, dim 384, depth 12, 6 heads,
    batch 256), forward under bf16 autocast: eager with the default AdamW, and PyTorch at
    its best here, the model under torch.compile (inductor, default mode) with the fused
    AdamW."""
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from torch_dit import DiT

    batch = 256
    x = torch.randn(batch, 3 * 32 * 32, device=dev)
    t = torch.rand(batch, device=dev)
    tt = torch.rand(batch, device=dev) * t
    labels = torch.arange(batch, device=dev) % 10

    def make_step(compiled):
        torch.manual_seed(0)
        model = DiT(d=384, depth=12, h=6, p=2, img=32, ch=3).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=compiled)
        forward = torch.compile(model) if compiled else model

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = forward(x, t, tt, labels)
                loss = torch.nn.functional.mse_loss(out.float(), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    step = make_step(False)
    report("dit_step", "bf16 S/2 32x32 batch 256", timed(step) * 1e3, "ms")
    print_profile("bf16 DiT-S/2 step, batch 256", step)
    # The compile happens in the first warm-up call; timed() runs three.
    compiled = make_step(True)
    report("dit_step", "bf16 S/2 32x32 batch 256, torch.compile + fused AdamW", timed(compiled) * 1e3, "ms")


def print_profile(what, step, rows=30):
    """The CUDA kernels of one more `step` under torch.profiler, by self GPU time, as a
    table on stderr: the reference beside cuda.rs's per-op profile."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    def gpu_us(e):
        # The attribute's name changed from "cuda" to "device" in torch 2.4.
        us = getattr(e, "self_device_time_total", None)
        return us if us is not None else e.self_cuda_time_total

    total = sum(gpu_us(e) for e in events) or 1
    print(f"\n## torch profile: {what} (CUDA kernels, not synchronised)\n", file=sys.stderr)
    print("| kernel | calls | ms | share |\n|---|---:|---:|---:|", file=sys.stderr)
    for e in sorted(events, key=gpu_us, reverse=True)[:rows]:
        name = e.key.replace("|", "/")[:90]
        print(f"| {name} | {e.count} | {gpu_us(e) / 1e3:.2f} | {100 * gpu_us(e) / total:.1f}% |", file=sys.stderr)
    print(f"| total | | {total / 1e3:.2f} | |", file=sys.stderr)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("skipping: no CUDA device")
        sys.exit(0)
    if not JSON:
        print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}")
        print("| bench | case | torch |")
        print("|---|---|---:|")
    groups = {"matmul": matmuls, "bandwidth": bandwidth, "dit": dit_step,
              "attention": attention, "dit_bf16": dit_step_bf16}
    for name, run in groups.items():
        if not GROUPS or name in GROUPS:
            run()
