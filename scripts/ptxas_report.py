#!/usr/bin/env python3
"""Registers, spills and shared memory per kernel of a kernels/*.cu file, without a GPU.

Compiles the file with NVRTC exactly as crates/engine/src/cuda/kernels.rs does (the headers
pasted in, --std=c++17, --gpu-architecture=ARCH), prints NVRTC's log (empty is the
target) and runs `ptxas -v` on the PTX. Needs the NVRTC and ptxas of CUDA 13.0 from
PyPI in .venv-nvrtc (as .ci/run sets up, plus nvcc for ptxas):

    .venv-nvrtc/bin/pip install nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-nvcc==13.0.88
    python3 scripts/ptxas_report.py flash_attention sm_90
"""
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
name, arch = (sys.argv[1:3] + ["flash_attention", "sm_90"][len(sys.argv[1:3]):])[:2]
cu13 = glob.glob(f"{root}/.venv-nvrtc/lib/python3*/site-packages/nvidia/cu13")
if not cu13:
    sys.exit("no .venv-nvrtc with the nvidia cu13 wheels (see the docstring)")
lib = f"{cu13[0]}/lib"
# NVRTC opens its builtins library by name; loaded here first, no LD_LIBRARY_PATH needed.
ctypes.CDLL(f"{lib}/libnvrtc-builtins.so.13.0", mode=ctypes.RTLD_GLOBAL)
nvrtc = ctypes.CDLL(f"{lib}/libnvrtc.so.13")
src = open(f"{root}/kernels/{name}.cu").read()
for header in ["common.cuh", "flash_common.cuh"]:
    src = src.replace(f'#include "{header}"', open(f"{root}/kernels/{header}").read())
prog = ctypes.c_void_p()
assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f"{name}.cu".encode(), 0, None, None) == 0
opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
rc = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(prog, log)
print(f"{name}.cu ({arch}) NVRTC log: {log.value.decode().strip()!r}")
if rc:
    sys.exit(1)
nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
ptx = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetPTX(prog, ptx)
with tempfile.NamedTemporaryFile(suffix=".ptx") as f:
    f.write(ptx.value)
    f.flush()
    out = subprocess.run([f"{cu13[0]}/bin/ptxas", f"-arch={arch}", "-v", f.name, "-o", os.devnull],
                         capture_output=True, text=True)
rows, fn, spill = [], None, ""
for line in (out.stdout + out.stderr).splitlines():
    if m := re.search(r"Compiling entry function '(\w+)'", line):
        fn = m.group(1)
    elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
        spill = f"{m.group(1)}/{m.group(2)}"
    elif m := re.search(r"Used (\d+) registers", line):
        smem = re.search(r"(\d+) bytes smem", line)
        rows.append((fn, m.group(1), spill, smem.group(1) if smem else "0"))
    elif "error" in line or "warning" in line:
        print(line)
print(f"{'kernel':24} {'registers':>9} {'spill st/ld':>12} {'static smem':>12}")
for fn, regs, spill, smem in sorted(rows):
    print(f"{fn:24} {regs:>9} {spill:>12} {smem:>12}")
sys.exit(out.returncode)
