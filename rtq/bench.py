"""CPU benchmark: PyTorch FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8 (Q/DQ), and why.

`python -m rtq.bench` builds (or takes from the artifact cache) the FP32 ONNX, the modelopt INT8
Q/DQ ONNX (the TensorRT-oriented export, unchanged) and an ORT-oriented INT8 variant of the same
model (ORT's own `quantize_static`: uint8 activations, int8 per-channel weights, QDQ), then times
every backend in one process on the same real preprocessed images. Timing is interleaved: each
repetition runs every backend at every batch size once, in a rotating order, so a burst of load
from other processes on a shared machine hits all backends alike; the median per cell is kept and
the inter-quartile range is reported as the noise. ORT's optimized graph of each ONNX is then
counted by op kind (`rtq.evaluate.ort_profile`) to say whether the INT8 kernels were used at all.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner

from rtq.cache import ArtifactCache, cache_key, code_digest, file_digest
from rtq.errors import UserError, exit_on_user_error
from rtq.evaluate.fps import FpsResult
from rtq.evaluate.ort_profile import OrtGraphProfile, profile_onnxrt, profiles_markdown, unfused_markdown
from rtq.files import write_atomic
from rtq.paths import PROJECT_ROOT, SHARED_DIR

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = SHARED_DIR / "fixtures" / "rtdetrv2_r18vd_parity" / "checkpoint.pth"
DEFAULT_IMAGES = PROJECT_ROOT / "data" / "coco_val2017_mini"
DEFAULT_CALIB = PROJECT_ROOT / "data" / "coco_calib"
DEFAULT_CACHE = PROJECT_ROOT / "runs" / ".cache"
ANALYSIS_HEADING = "## Analysis"  # hand-written section of the report, kept when it is regenerated
GOAL_SPEEDUP = 1.5
REFERENCE = "ort_fp32"
INTEGER_KERNEL_OPS = ("Conv", "MatMul")


@dataclass(frozen=True)
class OrtVariant:
    """An ORT-oriented INT8 variant: the op types `quantize_static` quantizes, and name scopes whose
    non-Conv/MatMul ops stay float (sensitive arithmetic such as the decoder's box refinement)."""

    op_types: tuple[str, ...]
    float_scopes: tuple[str, ...] = ()
    description: str = ""


# Conv/MatMul have integer kernels; Add/Mul/Relu/Sigmoid in Q/DQ become QLinearAdd/QLinearMul/...
# and spare the float round trips between the integer kernels (SiLU, residual adds, attention).
_WIDE = ("Conv", "MatMul", "Add", "Mul", "Relu", "Sigmoid")
ORT_VARIANTS: dict[str, OrtVariant] = {
    "ort_int8_ortqdq": OrtVariant(
        INTEGER_KERNEL_OPS, description="ORT INT8, ORT quantize_static QDQ on Conv/MatMul"
    ),
    "ort_int8_ortqdq_wide": OrtVariant(
        _WIDE, description="ORT INT8, ORT quantize_static QDQ on Conv/MatMul/Add/Mul/Relu/Sigmoid"
    ),
    "ort_int8_ortqdq_wide_dec": OrtVariant(
        _WIDE,
        float_scopes=("/model/decoder/",),
        description="ORT INT8, as above but the decoder's Add/Mul/Relu/Sigmoid float",
    ),
}


@dataclass
class Timing:
    """All timed calls of one backend at one batch size (seconds)."""

    backend: str
    batch: int
    seconds: list[float] = field(default_factory=list)

    def result(self) -> FpsResult:
        median = statistics.median(self.seconds)
        return FpsResult(
            batch=self.batch,
            throughput=self.batch / median,
            batch_time_ms=1000.0 * median,
            per_frame_ms=1000.0 * median / self.batch,
        )

    def quartiles_ms(self) -> tuple[float, float]:
        """25th and 75th percentile of the batch time: the spread a reader should trust the median to."""
        if len(self.seconds) < 2:
            value = 1000.0 * self.seconds[0]
            return value, value
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return 1000.0 * q1, 1000.0 * q3


def interleaved_timing(
    runners: Mapping[str, BaseRunner],
    feeds: Mapping[int, Mapping[str, np.ndarray]],
    warmup: int = 2,
    iterations: int = 10,
) -> dict[tuple[str, int], Timing]:
    """Time every runner on every batch's feed, interleaved, after `warmup` untimed calls each.

    Repetition `i` visits the runners in an order rotated by `i`, so no backend always runs right
    after the same neighbour (cache state, clock ramps).
    """
    if iterations <= 0:
        raise UserError(f"iterations={iterations} must be a positive number of timed repetitions")
    if warmup < 0:
        raise UserError(f"warmup={warmup} must be zero or a positive number of untimed runs")
    names = list(runners)
    timings = {(name, batch): Timing(name, batch) for name in names for batch in feeds}
    with contextlib.ExitStack() as stack:
        for runner in runners.values():
            if not runner.is_active:
                stack.enter_context(runner)
        for feed in feeds.values():
            for name in names:
                runners[name].infer(dict(feed))  # checks the feed once
                for _ in range(max(warmup - 1, 0)):
                    runners[name].infer(dict(feed), check_inputs=False)
        for i in range(iterations):
            order = names[i % len(names) :] + names[: i % len(names)]
            for batch, feed in feeds.items():
                feed_dict = dict(feed)
                for name in order:
                    start = time.perf_counter()
                    runners[name].infer(feed_dict, check_inputs=False)
                    timings[(name, batch)].seconds.append(time.perf_counter() - start)
    return timings


# ------------------------------------------------------------------------------------ environment


def cpu_description(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model name and the integer-dot-product flags that decide whether INT8 kernels can win."""
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
        **{flag: flag in flags for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")},
    }


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
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
    return found


# ------------------------------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class BenchSettings:
    """Everything that decides the artifacts and the timing."""

    model: str = "rtdetrv2_r18vd"
    checkpoint: Path | None = DEFAULT_CHECKPOINT
    batches: tuple[int, ...] = (1, 4)
    iterations: int = 10
    warmup: int = 2
    recipe: str = "int8_default"
    calib_images: int = 8
    calib_source: Path = DEFAULT_CALIB
    images: Path = DEFAULT_IMAGES
    threads: int = max(os.cpu_count() or 1, 1)
    ort_variant: bool = True
    cache_dir: Path = DEFAULT_CACHE
    out: Path = PROJECT_ROOT / "experiments" / "bench_rtdetrv2_r18vd.md"
    opset: int = 17


def _calibration_images(settings: BenchSettings) -> list[np.ndarray]:
    from rtq.data.calib import CalibrationImages

    return list(CalibrationImages(settings.calib_source, max_images=settings.calib_images))


def _timing_images(settings: BenchSettings, count: int) -> list[np.ndarray]:
    from rtq.data.coco import CocoDataset

    dataset = CocoDataset(settings.images, max_images=count)
    return [dataset.load_image(i) for i in range(len(dataset))]


class Artifacts:
    """Builds the three ONNX files once and keeps them in the artifact cache."""

    def __init__(self, settings: BenchSettings, torch_model: Any, io: Any) -> None:

        self.settings = settings
        self.torch_model = torch_model
        self.io = io
        self.cache = ArtifactCache(settings.cache_dir)
        checkpoint = settings.checkpoint
        self.base_key = dict(
            model=settings.model,
            checkpoint=file_digest(checkpoint) if checkpoint is not None else None,
            opset=settings.opset,
            code=code_digest(),
        )
        self.sources: dict[str, str] = {}

    def _cached(self, kind: str, key: str, filename: str, build: Callable[[Path], None]) -> Path:
        found = self.cache.lookup(kind, key, filename)
        if found is not None:
            self.sources[kind] = f"cache {kind}/{key}"
            return found
        with tempfile.TemporaryDirectory(prefix="rtq-bench-") as tmp:
            path = Path(tmp) / filename
            start = time.perf_counter()
            build(path)
            self.sources[kind] = f"built in {time.perf_counter() - start:.0f} s, cached as {kind}/{key}"
            return self.cache.store(kind, key, path)

    def fp32(self) -> Path:
        from rtq.export.onnx_export import export_onnx

        key = cache_key(**self.base_key, kind="fp32")
        return self._cached(
            "bench_fp32",
            key,
            "model.onnx",
            lambda path: _discard(export_onnx(self.torch_model, path, opset=self.settings.opset)),
        )

    def _recipe(self) -> Any:
        from rtq.quant.recipes import load_recipe

        recipe = load_recipe(self.settings.recipe)
        calib = dataclasses.replace(
            recipe.calib,
            max_images=self.settings.calib_images,
            batch_size=min(recipe.calib.batch_size, self.settings.calib_images),
        )
        return dataclasses.replace(recipe, calib=calib)

    def _calib_key(self) -> dict[str, Any]:
        return dict(source=str(self.settings.calib_source), images=self.settings.calib_images)

    def modelopt_int8(self) -> Path:
        """The TensorRT-oriented Q/DQ export, exactly as the pipeline makes it."""
        from rtq.export.onnx_export import export_onnx
        from rtq.quant.calibrate import calibration_feeds, quantize_model

        recipe = self._recipe()
        key = cache_key(
            **self.base_key, kind="modelopt", recipe=dataclasses.asdict(recipe), **self._calib_key()
        )

        def build(path: Path) -> None:
            model = copy.deepcopy(self.torch_model)
            feeds = calibration_feeds(recipe, self.io, source=self.settings.calib_source)
            quantize_model(model, recipe, feeds, progress=False)
            export_onnx(model, path, opset=self.settings.opset)

        return self._cached("bench_int8_modelopt", key, "model.int8.onnx", build)

    def ort_int8(self, fp32_path: Path, name: str, variant: OrtVariant) -> Path:
        """ORT-oriented variant: `quantize_static` QDQ, uint8 activations, int8 per-channel weights."""
        key = cache_key(
            **self.base_key,
            kind="ort_qdq",
            fp32=file_digest(fp32_path),
            op_types=list(variant.op_types),
            float_scopes=list(variant.float_scopes),
            **self._calib_key(),
        )

        def build(path: Path) -> None:
            feeds = [self.io.preprocess([image])[0] for image in _calibration_images(self.settings)]
            ort_quantize_static(
                fp32_path, path, feeds, op_types=variant.op_types, float_scopes=variant.float_scopes
            )

        return self._cached(f"bench_{name}", key, "model.int8_ort.onnx", build)


def _discard(_: object) -> None:
    return None


def ort_quantize_static(
    fp32_path: Path,
    out_path: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    op_types: Sequence[str] = INTEGER_KERNEL_OPS,
    float_scopes: Sequence[str] = (),
) -> Path:
    """`_ort_quantize_static` in a fresh process.

    modelopt.onnx patches ONNX Runtime's quantization registries and functions when it runs, so
    after any modelopt ONNX quantization in this process ORT's own `quantize_static` no longer
    behaves as documented; a spawned process has pristine modules.
    """
    import multiprocessing

    args = (fp32_path, out_path, [dict(feed) for feed in feeds], tuple(op_types), tuple(float_scopes))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return Path(pool.apply(_ort_quantize_static, args))


def _ort_quantize_static(
    fp32_path: Path,
    out_path: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    op_types: Sequence[str] = INTEGER_KERNEL_OPS,
    float_scopes: Sequence[str] = (),
) -> Path:
    """Quantize `fp32_path` the way ONNX Runtime's CPU kernels want it.

    uint8 asymmetric activations and int8 symmetric per-channel weights in QDQ format are the
    combination ORT's QDQ transformers fuse into QLinearConv / QLinearMatMul on x86. Only Conv and
    MatMul are quantized by default: those are the ops with integer kernels. The model first goes
    through ORT's quantization pre-processing (its basic graph optimizations, as ORT recommends), so
    the Q/DQ land on the graph ORT actually runs. Min/max calibration reduces each tensor to its
    range inside the calibration graph, so memory stays small. Ops other than Conv/MatMul whose node
    name starts with one of `float_scopes` are left unquantized.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._feeds = iter([dict(feed) for feed in feeds])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(prefix="rtq-ort-pre-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(os.fspath(fp32_path), os.fspath(prepared), skip_symbolic_shape=True)
        graph = onnx.load(os.fspath(prepared), load_external_data=False).graph
        keep_float = [
            node.name
            for node in graph.node
            if node.op_type in op_types
            and node.op_type not in INTEGER_KERNEL_OPS
            and any(node.name.startswith(scope) for scope in float_scopes)
        ]
        quantize_static(
            os.fspath(prepared),
            os.fspath(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return out_path


# ---------------------------------------------------------------------------------------- fidelity


def score_fidelity(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AP-free distance of two detectors' outputs on the same images.

    `scores` are each image's top-K sorted descending, so comparing them position by position
    compares the confidence profiles without matching boxes; the top-1 label agreement says
    whether the most confident detection kept its class.
    """
    ref, got = np.asarray(reference["scores"]), np.asarray(other["scores"])
    if ref.shape != got.shape:
        raise ValueError(f"score shapes differ: {ref.shape} vs {got.shape}")
    diff = np.abs(ref - got)
    top = min(10, ref.shape[1])
    ref_top1 = float(ref[:, 0].mean())
    same_top1 = np.asarray(reference["labels"])[:, 0] == np.asarray(other["labels"])[:, 0]
    return {
        "max_abs_score_diff": float(diff.max()),
        "max_abs_top10_score_diff": float(diff[:, :top].max()),
        "mean_abs_score_diff": float(diff.mean()),
        "top1_label_agreement": float(same_top1.mean()),
        "reference_top1_score": ref_top1,
    }


# ------------------------------------------------------------------------------------------ report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def timing_markdown(
    timings: Mapping[tuple[str, int], Timing], descriptions: Mapping[str, str], reference: str = REFERENCE
) -> str:
    """Throughput, batch and per-frame time with their spread, and ratios to ORT FP32 and to batch 1."""
    batches = sorted({batch for _, batch in timings})
    names = list(dict.fromkeys(name for name, _ in timings))
    lines = [
        "| backend | batch | img/s | batch time ms (median) | IQR ms | per-frame ms | vs ORT FP32 "
        f"(same batch) | throughput vs batch {batches[0]} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        first = timings[(name, batches[0])].result()
        for batch in batches:
            cell = timings[(name, batch)]
            res = cell.result()
            q1, q3 = cell.quartiles_ms()
            ref = timings.get((reference, batch))
            vs_ref = _ratio(res.throughput, ref.result().throughput) if ref is not None else "-"
            lines.append(
                f"| {descriptions.get(name, name)} | {batch} | {res.throughput:.2f} | "
                f"{res.batch_time_ms:.1f} | "
                f"{q1:.1f}-{q3:.1f} | {res.per_frame_ms:.1f} | {vs_ref} | "
                f"{_ratio(res.throughput, first.throughput)} |"
            )
    return "\n".join(lines) + "\n"


def paired_speedups(timings: Mapping[tuple[str, int], Timing], name: str, batch: int) -> list[float]:
    """ORT FP32 time / `name` time within each repetition.

    Both calls of a pair ran moments apart in the same repetition, so a burst of load from other
    processes mostly cancels out of the ratio; the spread of these ratios is the honest noise figure.
    """
    ref, got = timings[(REFERENCE, batch)].seconds, timings[(name, batch)].seconds
    return [r / g for r, g in zip(ref, got, strict=False) if g > 0]


def _spread(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}x" if values else "-"
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{median:.2f}x (IQR {q1:.2f}-{q3:.2f}x)"


def speedup_lines(
    timings: Mapping[tuple[str, int], Timing], int8_names: Sequence[str], descriptions: Mapping[str, str]
) -> list[str]:
    """One line per INT8 backend: its speed-up over ORT FP32 at each batch against the goal.

    The first figure is the ratio of the median throughputs (the table's); the paired figure is the
    median of per-repetition ratios, the one to trust on a loaded machine and the one the verdict
    uses.
    """
    batches = sorted({batch for _, batch in timings})
    lines = []
    for name in int8_names:
        ratios = []
        for batch in batches:
            ref, got = timings.get((REFERENCE, batch)), timings.get((name, batch))
            if ref is None or got is None:
                continue
            pairs = paired_speedups(timings, name, batch)
            ratios.append((batch, got.result().throughput / ref.result().throughput, pairs))
        if not ratios:
            continue
        met = all(statistics.median(p) >= GOAL_SPEEDUP for _, _, p in ratios if p)
        shown = ", ".join(f"batch {b}: {r:.2f}x, paired per repetition {_spread(p)}" for b, r, p in ratios)
        verdict = "meets" if met else "misses"
        label = descriptions.get(name, name)
        lines.append(f"- {label}: {shown} of ORT FP32 (paired median {verdict} the {GOAL_SPEEDUP}x goal)")
    return lines


def preserved_analysis(path: Path) -> str:
    """The hand-written analysis section of an existing report, so regenerating keeps it."""
    if not path.is_file():
        return ""
    text = path.read_text()
    index = text.find(f"\n{ANALYSIS_HEADING}")
    return text[index + 1 :] if index >= 0 else ""


def render_report(
    settings: BenchSettings,
    command: str,
    environment: Mapping[str, Any],
    timings: Mapping[tuple[str, int], Timing],
    descriptions: Mapping[str, str],
    profiles: Mapping[str, OrtGraphProfile],
    fidelity: Mapping[str, Mapping[str, float]],
    sources: Mapping[str, str],
    analysis: str = "",
) -> str:
    """The Markdown report: setup, timing table, speed-ups, ORT graph breakdown, fidelity."""
    cpu = environment["cpu"]
    flags = ", ".join(
        f"{flag} {'yes' if cpu[flag] else 'no'}" for flag in ("avx512_vnni", "avx_vnni", "amx_int8")
    )
    vers = ", ".join(f"{k} {v}" for k, v in environment["versions"].items())
    int8_names = [name for name in descriptions if name not in (REFERENCE, "torch_fp32")]
    parts = [
        f"# CPU benchmark: {settings.model} at 640, PyTorch FP32 vs ONNX Runtime FP32 vs ONNX Runtime INT8\n",
        "Generated by `python -m rtq.bench`; model-only time of `runner.infer` on preprocessed tensors "
        f"(real COCO val images, the first {max(settings.batches)} of `{settings.images.name}`, "
        "cycled to fill the batch), "
        f"{settings.warmup} untimed warm-up calls per backend and batch, then {settings.iterations} "
        "interleaved repetitions (every backend at every batch once per repetition, rotating order). "
        "Median batch time; IQR = 25th-75th percentile.\n",
        "```\n" + command + "\n```\n",
        f"- CPU: {cpu['model']}, {cpu['cores']} logical cores; {flags}",
        f"- threads: ORT intra-op {settings.threads} (inter-op 1, sequential), torch {settings.threads}",
        f"- load average (1/5/15 min) before: {environment['load_before']}, "
        f"after: {environment['load_after']}",
        f"- versions: {vers}",
        f"- checkpoint: `{settings.checkpoint}`"
        if settings.checkpoint
        else "- checkpoint: none (random weights)",
        f"- INT8 calibration: recipe `{settings.recipe}`, first {settings.calib_images} images of "
        f"`{settings.calib_source.name}`",
        "- artifacts: " + "; ".join(f"{k}: {v}" for k, v in sources.items()) + "\n",
        "## Throughput\n",
        timing_markdown(timings, descriptions),
        "Speed-up of each INT8 model over ORT FP32 (ratio of medians; then the median and IQR of the "
        "per-repetition ratios, which cancel most of the load from other processes):\n",
        *speedup_lines(timings, int8_names, descriptions),
        "",
        "## What ONNX Runtime runs (its optimized graph, `ORT_ENABLE_ALL`)\n",
        profiles_markdown({descriptions.get(k, k): v for k, v in profiles.items()}),
    ]
    for name, profile in profiles.items():
        if profile.count("QuantizeLinear") or profile.count("DequantizeLinear"):
            label = descriptions.get(name, name)
            parts += [f"Q/DQ nodes ORT left unfused in {label}:\n", unfused_markdown(profile)]
    if fidelity:
        parts += [
            "## Fidelity vs ORT FP32 (same images, no AP)\n",
            "Scores are each image's top-300 sorted descending, compared position by position; the "
            f"ORT FP32 top-1 score averages {next(iter(fidelity.values()))['reference_top1_score']:.4f} "
            "on these images, the scale to read the differences against.\n",
            "| backend | max abs score diff | max abs diff, top 10 | mean abs diff | top-1 label agreement |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, values in fidelity.items():
            parts.append(
                f"| {descriptions.get(name, name)} | {values['max_abs_score_diff']:.4f} | "
                f"{values['max_abs_top10_score_diff']:.4f} | {values['mean_abs_score_diff']:.4f} | "
                f"{values['top1_label_agreement']:.2f} |"
            )
        parts.append("")
    text = "\n".join(parts)
    if analysis:
        text = text.rstrip("\n") + "\n\n" + analysis.rstrip("\n") + "\n"
    return text


# -------------------------------------------------------------------------------------------- main


def run_bench(settings: BenchSettings, command: str) -> str:
    """Build or reuse the artifacts, time every backend, profile ORT's graphs, write the report."""
    from rtq.backends.onnxruntime import make_onnxrt_runner
    from rtq.backends.torch import make_torch_runner
    from rtq.models import build_deploy_model
    from rtq.models.rtdetr import RTDETRIO

    if not settings.batches or any(b <= 0 for b in settings.batches):
        raise UserError(f"--batches {list(settings.batches)} must be positive batch sizes")
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise UserError(f"--checkpoint {settings.checkpoint} does not exist; give the path of a .pth file")
    load_before = load_average()
    io = RTDETRIO()
    model = build_deploy_model(settings.model, settings.checkpoint)
    artifacts = Artifacts(settings, model, io)
    log.info("building / loading the ONNX artifacts")
    fp32 = artifacts.fp32()
    int8 = artifacts.modelopt_int8()
    onnx_paths = {REFERENCE: fp32, "ort_int8_modelopt": int8}
    if settings.ort_variant:
        for name, variant in ORT_VARIANTS.items():
            onnx_paths[name] = artifacts.ort_int8(fp32, name, variant)

    descriptions = {
        "torch_fp32": "PyTorch FP32",
        REFERENCE: "ORT FP32",
        "ort_int8_modelopt": "ORT INT8, modelopt Q/DQ (TensorRT export)",
        **{name: variant.description for name, variant in ORT_VARIANTS.items()},
    }
    runners: dict[str, BaseRunner] = {
        "torch_fp32": make_torch_runner(model, num_threads=settings.threads, name="torch_fp32")
    }
    for name, path in onnx_paths.items():
        runners[name] = make_onnxrt_runner(
            path,
            mode="fast",
            providers=["CPUExecutionProvider"],
            intra_op_threads=settings.threads,
            name=name,
        )
    descriptions = {k: v for k, v in descriptions.items() if k in runners}

    images = _timing_images(settings, max(settings.batches))
    feeds = {b: io.preprocess([images[i % len(images)] for i in range(b)])[0] for b in settings.batches}
    log.info(
        "timing %s at batches %s, %d repetitions", list(runners), list(settings.batches), settings.iterations
    )
    timings = interleaved_timing(runners, feeds, warmup=settings.warmup, iterations=settings.iterations)

    fidelity: dict[str, dict[str, float]] = {}
    largest = feeds[max(settings.batches)]
    outputs = {}
    for name in ["torch_fp32", *onnx_paths]:
        with runners[name] as runner:
            outputs[name] = runner.infer(dict(largest))
    for name in outputs:
        if name != REFERENCE:
            fidelity[name] = score_fidelity(outputs[REFERENCE], outputs[name])

    with tempfile.TemporaryDirectory(prefix="rtq-ort-graph-") as tmp:
        profiles = {
            name: profile_onnxrt(path, tmp, intra_op_threads=settings.threads)
            for name, path in onnx_paths.items()
        }
    environment = {
        "cpu": cpu_description(),
        "versions": versions(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    report = render_report(
        settings,
        command,
        environment,
        timings,
        descriptions,
        profiles,
        fidelity,
        artifacts.sources,
        analysis=preserved_analysis(settings.out),
    )
    write_atomic(settings.out, report)
    return report


def parse_args(argv: Sequence[str] | None = None) -> BenchSettings:
    """Command-line options -> `BenchSettings`."""
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(prog="python -m rtq.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=defaults.checkpoint,
        help="RT-DETRv2 .pth; 'none' for random weights",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=list(defaults.batches))
    parser.add_argument("--iterations", type=int, default=defaults.iterations, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--recipe", default=defaults.recipe, help="quantization recipe name or YAML path")
    parser.add_argument("--calib-images", type=int, default=defaults.calib_images)
    parser.add_argument("--calib-source", type=Path, default=defaults.calib_source)
    parser.add_argument(
        "--images", type=Path, default=defaults.images, help="COCO-layout folder of timing images"
    )
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--no-ort-variant", action="store_true", help="skip the ORT-oriented INT8 variants")
    parser.add_argument("--cache-dir", type=Path, default=defaults.cache_dir)
    parser.add_argument("--out", type=Path, default=defaults.out)
    args = parser.parse_args(argv)
    checkpoint = None if str(args.checkpoint).lower() == "none" else args.checkpoint
    if args.calib_images <= 0:
        raise UserError(f"--calib-images {args.calib_images} must be a positive number of images")
    if args.iterations <= 0 or args.warmup < 0:
        raise UserError(
            f"--iterations {args.iterations} / --warmup {args.warmup}: iterations must be positive and "
            "warmup zero or more"
        )
    if args.threads <= 0:
        raise UserError(f"--threads {args.threads} must be a positive number of threads")
    from rtq.models.registry import get_variant

    get_variant(args.model)
    return BenchSettings(
        model=args.model,
        checkpoint=checkpoint,
        batches=tuple(args.batches),
        iterations=args.iterations,
        warmup=args.warmup,
        recipe=args.recipe,
        calib_images=args.calib_images,
        calib_source=args.calib_source,
        images=args.images,
        threads=args.threads,
        ort_variant=not args.no_ort_variant,
        cache_dir=args.cache_dir,
        out=args.out,
    )


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    settings = parse_args(args)
    command = "python -m rtq.bench " + " ".join(shlex.quote(a) for a in args)
    report = run_bench(settings, command.strip())
    print(report)
    print(f"report written to {settings.out}")


if __name__ == "__main__":
    main()
