"""The machine a timing ran on: CPU, integer-dot-product flags, load and library versions.

Throughput figures mean little without it: INT8 kernels only win on CPUs with VNNI/AMX, OpenVINO
runs float layers in bf16 only where the CPU has avx512_bf16/AMX, and a shared machine's load
average says how much of the spread is other people's work.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model name, the integer-dot-product flags that decide whether INT8 kernels can win and the
    bf16 flags that decide whether OpenVINO's bf16 inference precision has native kernels."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model: str | None = None
    flags: set[str] | None = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    flags = flags or set()
    return {
        "model": model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        **{flag: flag in flags for flag in (*INT8_FLAGS, *BF16_FLAGS)},
    }


def load_average() -> str:
    """The 1/5/15-minute load average, to judge how busy a shared machine was."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries whose kernels and exporters the timings depend on."""
    import onnx
    import onnxruntime
    import torch

    found = {
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
    with contextlib.suppress(ImportError):
        import modelopt

        found["modelopt"] = modelopt.__version__
    with contextlib.suppress(ImportError):
        import openvino

        found["openvino"] = str(openvino.get_version()).split("-")[0]
    with contextlib.suppress(ImportError):
        import nncf

        found["nncf"] = str(nncf.__version__)
    return found


def fingerprint(load_before: str) -> dict[str, Any]:
    """Everything above in one mapping; `load_before` was read before the work started."""
    return {
        "cpu": cpu_description(),
        "versions": versions(),
        "load_before": load_before,
        "load_after": load_average(),
    }
