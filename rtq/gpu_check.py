"""`./workflow.sh gpu-check`: everything rtq can only verify on an NVIDIA GPU, in one command.

    python -m rtq.gpu_check [--out experiments/gpu_check.md] [--checkpoint PATH] [--arch sm_90]

Without a GPU it says so in one line and exits 0. On a GPU machine it runs, and writes a Markdown
report of what ran and what it found:
1. the CUDA kernel of the fused plugin against reference.py (1x300, 4x300, 3x77, K=250, a non-zero
   zero point, two inputs) and its time against torch's float GEMMs, with any Python whose torch
   has CUDA (rtq's own environment has the CPU build);
2. with TensorRT: the C++ plugin built with CMake; a synthetic Q -> plugin engine at batch 1, 3 and 16
   against the reference, with the C++ and the Python plugin, each built and run twice in one process;
   the inspector's entries for the plugin layer and any Myelin layer; the TensorRT tests of the suite
   (they skip without TensorRT elsewhere);
3. given `--checkpoint`, RT-DETRv2 `int8_direct`, `int8_extra_outputs` and `int8_fused_plugin` on
   TensorRT, each compared against ONNX Runtime with AP on the bundled images, and their table.
Exit code 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rtq.errors import StageSkipped
from rtq.files import write_atomic
from rtq.paths import PROJECT_ROOT

PLUGIN_DIR = PROJECT_ROOT / "plugins" / "fused_attn_offset_prediction"
KERNEL_CHECK = PLUGIN_DIR / "test_kernel.py"
PLUGIN_BATCHES = (1, 3, 16)
EXPERIMENTS = ("int8_direct", "int8_extra_outputs", "int8_fused_plugin")


@dataclass
class Step:
    """One check: passed, failed or skipped, with what it printed or why it did not run."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0


def _run(command: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run a command from the project root; its exit code and combined output."""
    try:
        done = subprocess.run(
            list(command), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return done.returncode, (done.stdout + done.stderr).strip()


def cuda_python() -> str | None:
    """A Python whose torch sees the GPU: rtq's own, or the machine's (rtq installs CPU torch)."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    for candidate in dict.fromkeys(
        [sys.executable, shutil.which("python3") or "", shutil.which("python") or ""]
    ):
        if candidate and _run([candidate, "-c", probe], 120)[0] == 0:
            return candidate
    return None


def kernel_step(arch: str | None) -> Step:
    python = cuda_python()
    if python is None:
        return Step(
            "CUDA kernel vs reference.py", "skipped", "no Python with a CUDA build of torch on this machine"
        )
    started = time.perf_counter()
    code, output = _run([python, str(KERNEL_CHECK), *(["--arch", arch] if arch else [])], 600)
    status = {0: "passed", 2: "skipped"}.get(code, "failed")
    return Step(
        "CUDA kernel vs reference.py",
        status,
        f"{python} {KERNEL_CHECK.name}\n\n{output}",
        time.perf_counter() - started,
    )


def cmake_step() -> tuple[Step, Path | None]:
    build = PLUGIN_DIR / "build"
    started = time.perf_counter()
    if shutil.which("cmake") is None:
        return Step("C++ plugin (CMake)", "failed", "cmake not found: install CMake"), None
    code, output = _run(["cmake", "-S", str(PLUGIN_DIR), "-B", str(build)], 300)
    if code == 0:
        code, more = _run(["cmake", "--build", str(build), "-j"], 600)
        output += "\n" + more
    library = next(iter(sorted(build.glob("lib*.so"))), None)
    ok = code == 0 and library is not None
    tail = "\n".join(output.splitlines()[-15:])
    return Step(
        "C++ plugin (CMake)", "passed" if ok else "failed", tail, time.perf_counter() - started
    ), library


def plugin_engine_steps(library: Path | None) -> list[Step]:
    from rtq.backends.tensorrt.plugin_check import TOLERANCE, plugin_layers, run_plugin

    steps: list[Step] = []
    layers_json: Path | None = None
    with tempfile.TemporaryDirectory(prefix="rtq_gpu_check_") as tmp:
        for plugin in ("cpp", "python"):
            lines, ok = [], True
            started = time.perf_counter()
            for attempt in (1, 2):
                if plugin == "cpp" and library is None:
                    lines.append("not built (see the CMake step)")
                    ok = False
                    break
                run, made = run_plugin(plugin, attempt, Path(tmp), PLUGIN_BATCHES, library)
                layers_json = layers_json or made
                ok = ok and run.ok
                errors = ", ".join(f"batch {b}: {e:.2e}" for b, e in sorted(run.max_error.items()))
                lines.append(f"build and run {attempt}: {run.error or errors} (tolerance {TOLERANCE:g})")
            steps.append(
                Step(
                    f"Q -> {plugin} plugin engine, batches {list(PLUGIN_BATCHES)}",
                    "passed" if ok else "failed",
                    "\n".join(lines),
                    time.perf_counter() - started,
                )
            )
        if layers_json is not None:
            entries = plugin_layers(layers_json)
            steps.append(
                Step(
                    "inspector entries: plugin and Myelin layers",
                    "passed" if entries else "failed",
                    json.dumps(entries, indent=2)[:6000] or "no plugin layer in the engine",
                )
            )
    return steps


def tensorrt_tests_step() -> Step:
    started = time.perf_counter()
    code, output = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "tests/backends",
            "tests/plugins",
            "-k",
            "tensorrt or plugin or kernel",
        ],
        900,
    )
    tail = "\n".join(output.splitlines()[-25:])
    return Step(
        "TensorRT tests of the suite",
        "passed" if code == 0 else "failed",
        tail,
        time.perf_counter() - started,
    )


def rtdetr_steps(checkpoint: Path) -> list[Step]:
    steps = []
    for experiment in EXPERIMENTS:
        started = time.perf_counter()
        code, output = _run(
            [
                sys.executable,
                "-m",
                "rtq.run",
                f"experiment={experiment}",
                "backend=tensorrt",
                f"model.checkpoint={checkpoint}",
            ],
            1200,
        )
        tail = "\n".join(output.splitlines()[-20:])
        steps.append(
            Step(
                f"RT-DETRv2 {experiment} on TensorRT",
                "passed" if code == 0 else "failed",
                tail,
                time.perf_counter() - started,
            )
        )
    return steps


def report(gpu: str, steps: Sequence[Step], environment: dict[str, str]) -> str:
    lines = [
        "# GPU check",
        "",
        "Generated by `./workflow.sh gpu-check` (`python -m rtq.gpu_check`).",
        "",
        f"- GPU: {gpu}",
        *(f"- {key}: {value}" for key, value in environment.items()),
        "",
        "| check | result | seconds |",
        "| --- | --- | ---: |",
        *(f"| {s.name} | {s.status} | {s.seconds:.0f} |" for s in steps),
        "",
    ]
    for step in steps:
        lines += [f"## {step.name}: {step.status}", "", "```", step.detail.strip(), "```", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "experiments" / "gpu_check.md")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="RT-DETRv2-R18 checkpoint for the model runs"
    )
    parser.add_argument("--arch", default=None, help="nvcc -arch for the kernel (default: the GPU's)")
    args = parser.parse_args(argv)
    from rtq.backends.tensorrt import compat

    try:
        gpu = compat.gpu_name()
    except StageSkipped as err:
        print(f"gpu-check: {err}; nothing to check on this machine")
        return 0
    if args.checkpoint is not None and not args.checkpoint.is_file():
        print(
            f"gpu-check: --checkpoint {args.checkpoint} does not exist: pass an RT-DETRv2-R18 .pth",
            file=sys.stderr,
        )
        return 2
    environment = {"python": sys.version.split()[0]}
    steps = [kernel_step(args.arch)]
    print(f"gpu-check: {steps[-1].name}: {steps[-1].status}", flush=True)
    if compat.tensorrt_available():
        environment["tensorrt"] = str(compat.import_tensorrt().__version__)
        cmake, library = cmake_step()
        steps.append(cmake)
        steps += plugin_engine_steps(library)
        steps.append(tensorrt_tests_step())
        if args.checkpoint is not None:
            steps += rtdetr_steps(args.checkpoint)
    else:
        steps.append(Step("TensorRT checks", "skipped", f"{compat.TRT_MISSING} in {sys.executable}"))
    for step in steps[1:]:
        print(f"gpu-check: {step.name}: {step.status}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, report(gpu, steps, environment).encode())
    print(f"gpu-check: report written to {args.out}")
    return 1 if any(s.status == "failed" for s in steps) else 0


if __name__ == "__main__":
    raise SystemExit(main())
