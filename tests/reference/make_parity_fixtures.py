"""Builds the PyTorch reference values of the parity fixtures checked by tests/nn/parity.rs.

Regenerate every fixture from the repository root, in this order:

    cargo run --release --example export_parity_inputs
    .venv-bench/bin/python tests/reference/make_parity_fixtures.py

The first command writes tests/fixtures/parity_<case>_inputs.safetensors (a small model
whose parameters are all seeded random non-zero values, and fixed inputs x, t, tt,
labels, target); this script rebuilds the same model in PyTorch, loads those weights
with `load_state_dict(strict=True)` (so every parameter name must match exactly), runs
the inputs through it, and writes tests/fixtures/parity_<case>_expected.safetensors:

    output              the velocity F(x, t, tt, labels)            [B, D]
    loss                mean((output - target)^2)                   []
    grad.<param name>   d loss / d parameter, for every parameter
    grad.input.x        d loss / d x                                [B, D]

Precision: the reference is computed in float64 (model.double(), inputs upcast from
their exact float32 values) and stored as float32. A float32 reference carries its own
rounding noise of the same order as ours, so the tolerance would have to absorb both;
the float64 one is the exact result of the float32 weights and inputs up to float32
storage rounding (relative 6e-8), so the measured error is ours alone. The only piece
kept in float32 is the one the model defines that way: the sinusoid frequencies of the
anchor's `sincos`, which it builds in PyTorch's default float32 (`torch.arange` and
`torch.exp` without a dtype) in float64 runs as well; the angles t * freqs * 1000 and
everything after them are float64. The metadata also records how far PyTorch's own
float32 run is from this reference (`torch_f32_rel_err`): the noise floor of an
independent float32 implementation. It is dominated by the float32 rounding of the
angles (up to 1000 rad, so up to 3e-5 rad off), which every float32 run of the model
shares: about 3.5e-6 on the DiT output and 1e-5 on the time-embedding gradients, against
3e-7 and 6e-7 when PyTorch's float32 run is given exact angles.

The output files are written with a fixed header order, so regenerating unchanged
values gives byte-identical files.

Models: the DiT is the anchor's (benches/torch_dit.py, the project's reference DiT;
override with TWINFLOW_TORCH_ANCHOR) with its sizes generalised (image size, channels, patch, width,
depth, heads, MLP ratio, classes); for the anchor-sized case the anchor's own `DiT` is
run too and must give identical values. The patch embedding of the generalised model is
cross-checked against the `Conv2d`-style formulation. The MLP velocity network is
crates/nn/src/models/mlp_velocity.rs re-implemented line by line. The anchor's default
`DiT()` state_dict names, shapes and parameter count are compared with those of
`Dit::new(.., DitConfig::default())` exported by the example, and stored in the DiT
expected files (`anchor_state_dict`) for tests/nn/parity.rs to check in CI.

Needs PyTorch, numpy and safetensors; CI does not run it (the fixtures are committed).
"""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
ANCHOR = Path(os.environ.get("TWINFLOW_TORCH_ANCHOR", ROOT / "benches" / "torch_dit.py"))
CASES = ["dit", "dit_rgb", "mlp"]


# --- The anchor's DiT, generalised by the config (same code, same parameter names) ---


def sincos(t, dim):
    # Verbatim from the anchor: the frequencies are float32 (the default dtype) whatever
    # t's dtype; t * freqs promotes to t's dtype.
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    a = t[:, None] * freqs[None] * 1000
    return torch.cat([a.cos(), a.sin()], dim=1)


class Block(nn.Module):
    def __init__(s, d, h, mlp_ratio):
        super().__init__()
        s.h = h
        s.n1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        s.n2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        s.qkv = nn.Linear(d, 3 * d)
        s.proj = nn.Linear(d, d)
        s.fc1 = nn.Linear(d, mlp_ratio * d)
        s.fc2 = nn.Linear(mlp_ratio * d, d)
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
    def __init__(s, cfg):
        super().__init__()
        d, p, C = cfg["dim"], cfg["patch"], cfg["channels"]
        s.C, s.p, s.d, s.size = C, p, d, cfg["image_size"]
        s.g = s.size // p
        s.patch = nn.Linear(C * p * p, d)
        s.pos = nn.Parameter(torch.randn(1, s.g**2, d) * 0.02)
        s.temb = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        s.ttemb = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        s.yemb = nn.Embedding(cfg["num_classes"] + 1, d)
        s.blocks = nn.ModuleList(
            [Block(d, cfg["heads"], cfg["mlp_ratio"]) for _ in range(cfg["depth"])]
        )
        s.nf = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        s.adaf = nn.Linear(d, 2 * d)
        s.out = nn.Linear(d, C * p * p)

    def patchify(s, x):
        # Tokens row by row over the g x g grid, channel-major inside a token; for C = 1
        # the anchor's view(B,g,p,g,p).permute(0,1,3,2,4).reshape(B,g*g,p*p).
        B, C, g, p = x.shape[0], s.C, s.g, s.p
        return x.view(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)

    def unpatchify(s, x):
        B, C, g, p = x.shape[0], s.C, s.g, s.p
        return x.view(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C * s.size**2)

    def forward(s, x, t, tt, y):
        x = s.patch(s.patchify(x)) + s.pos
        c = s.temb(sincos(t, s.d)) + s.ttemb(sincos(tt, s.d)) + s.yemb(y)
        for b in s.blocks:
            x = b(x, c)
        sh, sc = s.adaf(F.silu(c)).chunk(2, dim=1)
        x = s.out(s.nf(x) * (1 + sc[:, None]) + sh[:, None])
        return s.unpatchify(x)


# --- crates/nn/src/models/mlp_velocity.rs ---


class ResidualBlock(nn.Module):
    def __init__(s, width):
        super().__init__()
        s.fc1 = nn.Linear(width, width)
        s.fc2 = nn.Linear(width, width)

    def forward(s, h):
        return h + s.fc2(F.silu(s.fc1(F.silu(h))))


class MlpVelocity(nn.Module):
    def __init__(s, cfg):
        super().__init__()
        e, w = cfg["emb_dim"], cfg["width"]
        s.e = e
        s.yemb = nn.Embedding(cfg["num_classes"] + 1, e)
        s.input = nn.Linear(cfg["data_dim"] + 3 * e, w)
        s.blocks = nn.ModuleList([ResidualBlock(w) for _ in range(cfg["depth"])])
        s.out = nn.Linear(w, cfg["data_dim"])

    def forward(s, x, t, tt, y):
        h = s.input(torch.cat([x, sincos(t, s.e), sincos(tt, s.e), s.yemb(y)], dim=1))
        for b in s.blocks:
            h = b(h)
        return s.out(F.silu(h))


# --- helpers ---


def load_anchor():
    spec = importlib.util.spec_from_file_location("torch_dit_anchor", ANCHOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fnv1a64(data: bytes) -> str:
    """FNV-1a (64-bit) of the inputs file; tests/nn/parity.rs recomputes it to catch an
    expected file made from other inputs."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def save_sorted(tensors, path, metadata):
    """`safetensors.torch.save_file` with the header in a fixed order (it writes the
    metadata map in hash order), so that regenerating unchanged values gives identical
    bytes: an 8-byte little-endian header length, the JSON header padded with spaces
    to a multiple of 8, then the float32 tensors in name order."""
    header, chunks, offset = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        assert t.dtype == torch.float32, name
        data = t.contiguous().numpy().astype("<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text.encode() + b"".join(chunks))
    reread = load_file(path)  # the reference reader accepts it, with the same values
    assert reread.keys() == tensors.keys()
    assert all(torch.equal(reread[k], v) for k, v in tensors.items()), path


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def run(model, inputs, dtype):
    """Output, loss, and gradients (by name, plus `input.x`) of the MSE loss in dtype."""
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    x = inputs["input.x"].to(dtype, copy=True).requires_grad_(True)
    t, tt = inputs["input.t"].to(dtype), inputs["input.tt"].to(dtype)
    out = model(x, t, tt, inputs["input.labels"])
    loss = (out - inputs["input.target"].to(dtype)).pow(2).mean()
    loss.backward()
    grads = {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()}
    grads["grad.input.x"] = x.grad.detach().clone()
    return out.detach(), loss.detach(), grads


def build(kind, cfg, inputs):
    model = DiT(cfg) if kind == "dit" else MlpVelocity(cfg)
    state = {k[len("param."):]: v for k, v in inputs.items() if k.startswith("param.")}
    model.load_state_dict(state, strict=True)  # every name, both ways, and every shape
    return model.eval()


def check_anchor_equivalence(anchor, cfg, model, inputs):
    """For a config the anchor can express, its own DiT gives identical values."""
    expressible = (
        cfg["image_size"] == 28 and cfg["channels"] == 1 and cfg["mlp_ratio"] == 4
    )
    if not expressible:
        return False
    reference = anchor.DiT(
        d=cfg["dim"], depth=cfg["depth"], h=cfg["heads"], p=cfg["patch"], classes=cfg["num_classes"]
    )
    reference.load_state_dict(model.state_dict(), strict=True)
    reference = reference.double().eval()
    args = [inputs[f"input.{n}"] for n in ("x", "t", "tt")]
    args = [a.double() for a in args] + [inputs["input.labels"]]
    with torch.no_grad():
        ours, theirs = model.double()(*args), reference(*args)
    assert torch.equal(ours, theirs), "the generalised DiT differs from the anchor's"
    return True


def check_patch_embedding(model, x):
    """patch(patchify(x)) equals a stride-p convolution with the weight viewed as
    [D, C, p, p]: the channel-major token layout of crates/nn/src/patch.rs."""
    B, C, p, size = x.shape[0], model.C, model.p, model.size
    x = x.double()
    with torch.no_grad():
        tokens = model.patch.double()(model.patchify(x))
        w = model.patch.weight.double().view(-1, C, p, p)
        conv = F.conv2d(x.view(B, C, size, size), w, model.patch.bias.double(), stride=p)
        conv = conv.flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, conv, rtol=0, atol=1e-12), "patchify != conv2d"


def compare_default_names(anchor, meta):
    """The anchor's default DiT state_dict against Dit::new(.., DitConfig::default())."""
    reference = anchor.DiT()
    theirs = [[k, list(v.shape)] for k, v in reference.state_dict().items()]
    count = sum(p.numel() for p in reference.parameters())
    ours = json.loads(meta["default_param_names"])
    ours_count = sum(math.prod(s) for _, s in ours)
    if theirs == ours and count == ours_count:
        print(f"  anchor DiT(): {len(theirs)} tensors, {count} parameters, same names, "
              f"shapes and order as Dit::new(DitConfig::default())")
    else:
        print(f"  WARNING: anchor DiT() ({count} parameters) differs from "
              f"Dit::new(DitConfig::default()) ({ours_count}):", file=sys.stderr)
        for i in range(max(len(theirs), len(ours))):
            a = theirs[i] if i < len(theirs) else None
            b = ours[i] if i < len(ours) else None
            if a != b:
                print(f"    #{i}: anchor {a}  rust {b}", file=sys.stderr)
    return theirs, count


def make(case, anchor):
    path = FIXTURES / f"parity_{case}_inputs.safetensors"
    inputs = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    kind, cfg = meta["model"], json.loads(meta["config"])
    print(f"{case}: {kind} {cfg}")
    model = build(kind, cfg, inputs)
    extra = {}
    if kind == "dit":
        check_patch_embedding(model, inputs["input.x"])
        if check_anchor_equivalence(anchor, cfg, model, inputs):
            print("  the anchor's own DiT gives identical float64 values")
        names, count = compare_default_names(anchor, meta)
        extra["anchor_state_dict"] = json.dumps(names)
        extra["anchor_param_count"] = str(count)

    out, loss, grads = run(model, inputs, torch.float64)
    # The noise floor: PyTorch's own float32 run against the float64 reference.
    out32, loss32, grads32 = run(build(kind, cfg, inputs), inputs, torch.float32)
    floor = {
        "output": rel_err(out32, out),
        "loss": rel_err(loss32, loss),
        "max_grad": max(rel_err(grads32[n], g) for n, g in grads.items()),
    }
    worst = max(grads, key=lambda n: rel_err(grads32[n], grads[n]))
    print(f"  loss {loss.item():.6f}; torch float32 vs float64: output {floor['output']:.2e}, "
          f"loss {floor['loss']:.2e}, worst gradient {floor['max_grad']:.2e} ({worst})")
    for name, g in grads.items():
        assert g.norm() > 0, f"{name} is zero: the fixture would not test it"

    tensors = {"output": out, "loss": loss, **grads}
    tensors = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}
    metadata = {
        "format": "pt",
        "model": kind,
        "config": meta["config"],
        "inputs": path.name,
        "inputs_fnv1a64": fnv1a64(path.read_bytes()),
        "reference_dtype": "float64 (stored as float32)",
        "torch": torch.__version__,
        "torch_f32_rel_err": json.dumps(floor),
        "generator": "tests/reference/make_parity_fixtures.py",
        **extra,
    }
    target = FIXTURES / f"parity_{case}_expected.safetensors"
    save_sorted(tensors, target, metadata)
    print(f"  wrote {target.relative_to(ROOT)} ({target.stat().st_size} bytes)")


def main():
    torch.manual_seed(0)  # only the throw-away initial values of the models use it
    torch.set_num_threads(1)
    anchor = load_anchor()
    for case in CASES:
        make(case, anchor)


if __name__ == "__main__":
    main()
