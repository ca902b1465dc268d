"""PyTorch twin of benches/cuda.rs on the same GPU: the same shapes and measurements
(median of 10 timed runs after 3 warm-up runs, synchronised around each), printed as
JSON lines (--json) or a table. The DiT step uses torch_dit.py's model (eager)."""
import json
import sys
import time

import torch

JSON = "--json" in sys.argv
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


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("skipping: no CUDA device")
        sys.exit(0)
    if not JSON:
        print(f"# torch {torch.__version__} on {torch.cuda.get_device_name()}")
        print("| bench | case | torch |")
        print("|---|---|---:|")
    matmuls()
    bandwidth()
    dit_step()
