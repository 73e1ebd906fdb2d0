"""Sensitivity of an ONNX detector: ONNX PTQ with node groups left in float, run in ONNX Runtime."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rtq.compare.metrics import metric
from rtq.debug.sensitivity import Feeds, GroupSensitivity, Metrics, SensitivityResult
from rtq.models.io import DetectorIO


def _exact(names: Sequence[str]) -> list[str]:
    return [f"^{re.escape(n)}$" for n in names]


def _run_onnx(path: Path, feeds: Feeds) -> list[dict[str, np.ndarray]]:
    from rtq.backends.onnxruntime import make_onnxrt_runner

    runner = make_onnxrt_runner(path, mode="fast")
    with runner:
        return [{k: np.array(v) for k, v in runner.infer(feed).items()} for feed in feeds]


def _coco_ap_onnx(
    path: Path, io: DetectorIO, coco_root: Path | None, max_images: int | None
) -> tuple[float | None, float | None]:
    if coco_root is None:
        return None, None
    from rtq.backends.onnxruntime import make_onnxrt_runner
    from rtq.data.coco import CocoDataset
    from rtq.evaluate.loop import evaluate_detector

    dataset = CocoDataset(coco_root, max_images=max_images)
    result = evaluate_detector(make_onnxrt_runner(path, mode="fast"), io, dataset, 1, progress=False)
    return result.stats["ap"], result.stats["ap50"]


class OnnxProbe:
    """Quantizes an ONNX model with some node groups left in float and measures the result."""

    def __init__(
        self,
        onnx_path: str | Path,
        io: DetectorIO,
        calib_feeds: Feeds,
        groups: dict[str, list[str]],
        coco_root: str | Path | None = None,
        eval_images: int | None = None,
        method: str = "max",
        work_dir: str | Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.onnx_path = Path(onnx_path)
        self.io = io
        self.calib_feeds = calib_feeds
        self.groups = groups
        self.coco_root = Path(coco_root) if coco_root is not None else None
        self.eval_images = eval_images
        self.method = method
        self.work = Path(work_dir or tempfile.mkdtemp(prefix="rtq_sensitivity_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.reference = _run_onnx(self.onnx_path, calib_feeds)

    def fp32(self) -> Metrics:
        ap, ap50 = _coco_ap_onnx(self.onnx_path, self.io, self.coco_root, self.eval_images)
        self.log(f"  {'fp32':<28} AP {ap}")
        return Metrics(0.0, ap, ap50)

    def float_nodes(self, float_groups: Sequence[str]) -> list[str]:
        """Node-name regexes (anchored) of the groups to leave in float."""
        return _exact([n for g in float_groups for n in self.groups[g]])

    def measure(self, float_groups: Sequence[str], tag: str | None = None) -> Metrics:
        """Quantize everything except `float_groups`, return fidelity and AP."""
        if tag is None:
            tag = "float_" + "+".join(float_groups) if float_groups else "int8_all"
        out = self.work / f"{tag}.onnx"
        quantize_onnx_excluding(
            self.onnx_path, out, self.calib_feeds, self.method, self.float_nodes(float_groups)
        )
        fidelity = metric("relative_l2")(self.reference, _run_onnx(out, self.calib_feeds))
        ap, ap50 = _coco_ap_onnx(out, self.io, self.coco_root, self.eval_images)
        self.log(f"  {tag:<28} fidelity {fidelity:.4f}  AP {ap}")
        return Metrics(fidelity, ap, ap50)


def quantize_onnx_excluding(
    src: Path, out: Path, calib_feeds: Feeds, method: str, exclude: list[str]
) -> Path:
    """`quantize_onnx` with node exclusions (separate so tests can see what is excluded)."""
    from rtq.quant.onnx_ptq import quantize_onnx

    return quantize_onnx(src, out, calib_feeds, method=method, exclude_nodes=exclude)


def onnx_sensitivity(probe: OnnxProbe) -> SensitivityResult:
    """Per group: quantize only it, and quantize everything but it (the float-fallback gain)."""
    started = time.perf_counter()
    fp32 = probe.fp32()
    int8 = probe.measure([])
    rows = []
    for name, nodes in probe.groups.items():
        others = [g for g in probe.groups if g != name]
        rows.append(
            GroupSensitivity(
                group=name,
                size=len(nodes),
                only_quantized=probe.measure(others, tag=f"only_{name}_int8"),
                only_float=probe.measure([name], tag=f"only_{name}_float"),
            )
        )
    return SensitivityResult(
        model=probe.onnx_path.stem,
        fp32=fp32,
        int8=int8,
        groups=rows,
        seconds=time.perf_counter() - started,
        settings={
            "calibration_images": sum(len(next(iter(f.values()))) for f in probe.calib_feeds),
            "method": probe.method,
            "eval_images": probe.eval_images,
            "coco_root": str(probe.coco_root) if probe.coco_root else None,
        },
    )
