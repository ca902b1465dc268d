"""Checks that a TwinFlow checkpoint loads in PyTorch with `safetensors.torch.load_file`.

Not run by CI (it needs PyTorch and the `safetensors` Python package). Run by hand from
the repository root:

    TWINFLOW_REFERENCE_CHECKPOINT=/tmp/twinflow_ref.safetensors \
        cargo test --release --test nn checkpoint::every_dtype_survives_a_round_trip
    .venv-bench/bin/python tests/reference/load_checkpoint.py /tmp/twinflow_ref.safetensors

The checkpoint is the one `every_dtype_survives_a_round_trip` in tests/nn/checkpoint.rs
writes: tensor `model.<name>` holds 0 - 1.5, 1 - 1.5, ... in the listed dtype and shape.
"""

import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

EXPECTED = {
    "model.w32": ([2, 3], torch.float32),
    "model.w64": ([3], torch.float64),
    "model.wbf16": ([2, 2], torch.bfloat16),
    "model.wf16": ([4], torch.float16),
    "model.ids": ([5], torch.int64),
    "model.scalar": ([], torch.float32),
}


def main(path: str) -> None:
    tensors = load_file(path)
    assert set(tensors) == set(EXPECTED), sorted(tensors)
    for name, (shape, dtype) in EXPECTED.items():
        t = tensors[name]
        assert list(t.shape) == shape and t.dtype == dtype, (name, t.shape, t.dtype)
        n = t.numel()
        # i64 holds i - 1.5 truncated toward zero, as both the engine and PyTorch cast.
        want = torch.arange(n, dtype=torch.float64).sub(1.5).to(dtype).reshape(shape)
        assert torch.equal(t, want), (name, t, want)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["twinflow_checkpoint"] == "1", meta
    assert meta["step"] == "42", meta
    assert json.loads(meta["config"]) == {"dtypes": "all"}, meta
    assert json.loads(meta["rng"]) == {"forward": {"seed": 5, "offset": 0}}, meta
    print(f"ok: {len(tensors)} tensors and the metadata of {path} load in PyTorch {torch.__version__}")


if __name__ == "__main__":
    main(sys.argv[1])
