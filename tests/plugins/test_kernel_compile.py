"""The CUDA kernel compiles for Ada (sm_89) and Hopper (sm_90); the TensorRT plugin parses."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins" / "fused_attn_offset_prediction"


def _tensorrt_include_dir() -> Path | None:
    """Headers from $TENSORRT_ROOT, the usual system folders, or beside the Python package."""
    candidates = []
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    candidates += [
        Path("/usr/include/x86_64-linux-gnu"),
        Path("/usr/include"),
        Path("/usr/local/TensorRT/include"),
    ]
    for folder in candidates:
        if (folder / "NvInferRuntime.h").is_file():
            return folder
    return None


def _cuda_include_dir(nvcc: str) -> Path:
    """cuda_runtime.h: $CUDA_HOME, /usr/local/cuda, or beside nvcc (which may be a wrapper script)."""
    roots = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    roots += [Path("/usr/local/cuda"), Path(nvcc).resolve().parent.parent]
    for root in roots:
        if (root / "include" / "cuda_runtime.h").is_file():
            return root / "include"
    return roots[-1] / "include"


@pytest.mark.parametrize("arch", ["sm_89", "sm_90"])
def test_kernel_compiles(arch: str, tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    out = tmp_path / f"kernel_{arch}.cubin"
    result = subprocess.run(
        [nvcc, "-std=c++17", f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-o", str(out),
         str(PLUGIN_DIR / "kernel.cu")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    assert "fusedAttnOffsetPredictionKernel" in result.stderr  # ptxas reports the kernel it built
    assert "spill stores" not in result.stderr or "0 bytes spill stores" in result.stderr


def test_plugin_source_parses() -> None:
    include = _tensorrt_include_dir()
    if include is None:
        pytest.skip("TensorRT not installed")
    gxx, nvcc = shutil.which("g++"), shutil.which("nvcc")
    if gxx is None or nvcc is None:
        pytest.skip("g++ or nvcc not found")
    result = subprocess.run(
        [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wno-deprecated-declarations", f"-I{include}",
         f"-I{_cuda_include_dir(nvcc)}", str(PLUGIN_DIR / "plugin_v3.cpp")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
