"""GPU check of kernel.cu against reference.py, and its speed against a float GEMM in torch.

    python plugins/fused_attn_offset_prediction/test_kernel.py [--arch sm_90] [--iters 200]

Compiles kernel.cu with nvcc into a small shared library, calls
`launchFusedAttnOffsetPrediction` through ctypes on torch CUDA buffers (on torch's current
stream), and compares both outputs with `reference.fused_attn_offset_prediction` for the
RT-DETRv2 r18vd sizes (K=256, N0=192, N1=96) at M = 1x300, 4x300, an odd 3x77, plus a
non-zero input zero point, two different inputs, and a K that is not a multiple of 4.
Exit code 0 when every case matches; 1 on a mismatch; 2 when there is no GPU / nvcc / torch CUDA.
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reference  # noqa: E402  (reference.py beside this file: the single definition of the math)


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    queries: int
    k: int = 256
    n0: int = 192
    n1: int = 96
    zero_point: int = 0
    two_inputs: bool = False


CASES = [
    Case("1x300", 1, 300),
    Case("4x300", 4, 300),
    Case("3x77 (odd)", 3, 77),
    Case("2x300 zp=3", 2, 300, zero_point=3),
    Case("2x300 two inputs", 2, 300, two_inputs=True),
    Case("2x33 K=250", 2, 33, k=250),
]


def compile_kernel(arch: str, out_dir: Path) -> Path:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("nvcc not found: install the CUDA toolkit or put nvcc on PATH")
    library = out_dir / "libfused_attn_kernel.so"
    command = [nvcc, "-O3", "-std=c++17", f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC",
               "-o", str(library), str(HERE / "kernel.cu")]
    subprocess.run(command, check=True)
    return library


def load_launcher(library: Path) -> Any:
    lib = ctypes.CDLL(str(library))
    launch = lib.launchFusedAttnOffsetPrediction
    p, i = ctypes.c_void_p, ctypes.c_int
    launch.argtypes = [p, p, i, i, p, p, p, i, i, p, p, p, i, i, p, p, p]
    launch.restype = ctypes.c_int
    return launch


def random_params(case: Case, rng: np.random.Generator) -> reference.FusedAttnOffsetParams:
    def projection(n: int, zero_point: int, input_scale: float) -> reference.Projection:
        return reference.Projection(
            weight=rng.integers(-127, 128, size=(n, case.k), dtype=np.int8),
            weight_scale=rng.uniform(1e-3, 2e-2, size=n).astype(np.float32),
            input_scale=input_scale,
            input_zero_point=zero_point,
            bias=rng.normal(0, 0.5, size=n).astype(np.float32),
        )

    second_scale = 0.031 if case.two_inputs else 0.025
    return reference.FusedAttnOffsetParams(
        projection(case.n0, case.zero_point, 0.025), projection(case.n1, case.zero_point, second_scale)
    )


def run_case(case: Case, launch: Any, iters: int, rng: np.random.Generator) -> tuple[bool, str]:
    import torch

    params = random_params(case, rng)
    m = case.batch * case.queries
    x0 = rng.integers(-128, 128, size=(case.batch, case.queries, case.k), dtype=np.int8)
    x1 = rng.integers(-128, 128, size=x0.shape, dtype=np.int8) if case.two_inputs else None
    want0, want1 = reference.fused_attn_offset_prediction(x0, x1, params)

    dev = torch.device("cuda")
    p0, p1 = params.projections
    d_x0 = torch.from_numpy(x0).to(dev)
    d_x1 = torch.from_numpy(x1).to(dev) if x1 is not None else d_x0
    d_w0, d_w1 = torch.from_numpy(p0.weight).to(dev), torch.from_numpy(p1.weight).to(dev)
    d_s0, d_s1 = (torch.from_numpy(p.combined_scale()).to(dev) for p in (p0, p1))
    d_b0, d_b1 = torch.from_numpy(p0.bias).to(dev), torch.from_numpy(p1.bias).to(dev)
    y0 = torch.full((m, case.n0), float("nan"), device=dev)  # NaN: unwritten cells fail the check
    y1 = torch.full((m, case.n1), float("nan"), device=dev)
    stream = torch.cuda.current_stream()

    def call() -> int:
        return int(launch(
            d_x0.data_ptr(), d_x1.data_ptr(), m, case.k,
            d_w0.data_ptr(), d_s0.data_ptr(), d_b0.data_ptr(), case.n0, p0.input_zero_point,
            d_w1.data_ptr(), d_s1.data_ptr(), d_b1.data_ptr(), case.n1, p1.input_zero_point,
            y0.data_ptr(), y1.data_ptr(), stream.cuda_stream,
        ))

    status = call()
    torch.cuda.synchronize()
    if status != 0:
        return False, f"{case.name}: launch returned cudaError {status}"
    got0 = y0.cpu().numpy().reshape(want0.shape)
    got1 = y1.cpu().numpy().reshape(want1.shape)
    ok = True
    messages = []
    for label, got, want in (("y0", got0, want0), ("y1", got1, want1)):
        # FMA contraction in the kernel may differ from NumPy's separate multiply-add by 1 ulp.
        tolerance = 1e-5 * (1.0 + np.abs(want))
        error = np.abs(got - want)
        if not np.all(error <= tolerance):  # NaN (an unwritten cell) fails here too
            ok = False
            bad = np.argwhere(~(error <= tolerance))[0]
            where = tuple(bad)
            messages.append(f"{label} mismatch at {where}: got {got[where]}, want {want[where]}")
    if not ok:
        return False, f"{case.name}: " + "; ".join(messages)

    kernel_ms = time_cuda(call, iters)
    xf0 = d_x0.reshape(m, case.k).float()
    xf1 = d_x1.reshape(m, case.k).float()
    wf0, wf1 = d_w0.float(), d_w1.float()

    def float_gemm() -> None:
        torch.addmm(d_b0, xf0, wf0.T)
        torch.addmm(d_b1, xf1, wf1.T)

    gemm_ms = time_cuda(float_gemm, iters)
    return True, (f"{case.name:>18}  M={m:5d} K={case.k}  max|err| y0={np.abs(got0 - want0).max():.2e} "
                  f"y1={np.abs(got1 - want1).max():.2e}  kernel {kernel_ms * 1e3:8.2f} us  "
                  f"torch fp32 GEMMs {gemm_ms * 1e3:8.2f} us")


def time_cuda(fn: object, iters: int) -> float:
    """Mean milliseconds per call, timed with CUDA events on the current stream."""
    import torch

    assert callable(fn)
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) / iters


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default=None, help="nvcc -arch (default: the GPU's, e.g. sm_90)")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("torch not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("no CUDA GPU available", file=sys.stderr)
        return 2
    major, minor = torch.cuda.get_device_capability()
    arch = args.arch or f"sm_{major}{minor}"
    print(f"GPU: {torch.cuda.get_device_name()} ({arch})")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        launch = load_launcher(compile_kernel(arch, Path(tmp)))
        failures = 0
        for case in CASES:
            ok, line = run_case(case, launch, args.iters, rng)
            failures += not ok
            print(("PASS " if ok else "FAIL ") + line)
    print(f"{len(CASES) - failures}/{len(CASES)} cases match reference.py")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
