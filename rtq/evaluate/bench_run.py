"""CPU benchmark run: PyTorch FP32, ONNX Runtime FP32/INT8 and OpenVINO FP32/INT8, and why.

Builds (or takes from the artifact cache) the FP32 ONNX, the modelopt INT8 Q/DQ ONNX (the
TensorRT-oriented export, unchanged), the ORT-oriented INT8 variants of the same model and NNCF's
PTQ for OpenVINO, then times every backend in one process on the same real preprocessed images,
interleaved (`rtq.evaluate.timing`); OpenVINO rows are also scored against ORT running their
ONNX source, and their per-layer times profiled (`rtq.evaluate.bench_openvino`). ORT's optimized
graph of each ONNX is counted by op kind (`rtq.evaluate.ort_profile`) to say whether the INT8
kernels were used at all. Fidelity is scored as the config's `fidelity` says: sorted scores for
RT-DETR, raw-output relative L2 plus decoded-detection match for a raw-head model (YOLOX). The
figures go to JSON, the report to Markdown with the hand-written analysis filled from those figures.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner

from rtq.compare.metrics import detection_match_report, relative_l2, score_fidelity_report
from rtq.errors import UserError
from rtq.evaluate.bench_settings import (
    MATCH_IOU,
    MATCH_SCORE,
    MODELOPT_INT8,
    REFERENCE,
    TORCH_FP32,
    BenchSettings,
)
from rtq.evaluate.environment import fingerprint, load_average
from rtq.evaluate.ort_profile import profile_onnxrt
from rtq.evaluate.timing import interleaved_timing
from rtq.files import write_atomic
from rtq.results.analysis import analysis_section
from rtq.results.bench_figures import bench_figures
from rtq.results.bench_report import render_report

log = logging.getLogger(__name__)


def _timing_images(settings: BenchSettings, count: int) -> list[np.ndarray]:
    from rtq.data.coco import CocoDataset

    dataset = CocoDataset(settings.images, max_images=count)
    return [dataset.load_image(i) for i in range(len(dataset))]


def raw_fidelity_report(
    reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], io: Any, metas: Sequence[Any]
) -> dict[str, Any]:
    """Raw outputs compared as tensors (`relative_l2` over every float output, and the largest
    absolute difference), then decoded by `io.postprocess` and matched as detections (score >=
    MATCH_SCORE, same label, IoU >= MATCH_IOU; `detection_match_report`)."""
    rel = relative_l2()([dict(reference)], [dict(other)])
    max_abs = max(
        float(np.max(np.abs(np.asarray(other[k], np.float64) - np.asarray(v, np.float64))))
        for k, v in reference.items()
        if np.issubdtype(np.asarray(v).dtype, np.floating)
    )

    def per_image(outputs: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [
            {"labels": d.labels[None], "boxes": d.boxes[None], "scores": d.scores[None]}
            for d in io.postprocess(dict(outputs), list(metas))
        ]

    match = detection_match_report(per_image(reference), per_image(other), MATCH_SCORE, MATCH_IOU)
    return {"relative_l2": rel, "max_abs_diff": max_abs, **match}


def _fidelity(
    runners: dict[str, BaseRunner],
    feed: dict[str, np.ndarray],
    settings: BenchSettings,
    io: Any = None,
    metas: Sequence[Any] = (),
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each backend's outputs on one feed against the reference's; each OpenVINO row's against ORT
    running the ONNX it came from (what the row should compute)."""
    outputs = {}
    for name, runner in runners.items():
        with runner:
            outputs[name] = runner.infer(dict(feed))

    def score(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> dict[str, Any]:
        if settings.fidelity == "raw":
            return raw_fidelity_report(reference, other, io, metas)
        return score_fidelity_report(reference, other)

    fidelity = {
        name: score(outputs[REFERENCE], output) for name, output in outputs.items() if name != REFERENCE
    }
    vs_source = {
        name: {"source": row.source_backend, **score(outputs[row.source_backend], outputs[name])}
        for name, row in settings.openvino.items()
        if name in outputs and row.source_backend in outputs
    }
    return fidelity, vs_source


def _coco_ap(runners: dict[str, BaseRunner], io: Any, settings: BenchSettings) -> dict[str, dict[str, float]]:
    """COCO bbox AP / AP50 of every row on the timing images' folder (batch 1), for the report's figures."""
    from rtq.data.coco import CocoDataset
    from rtq.evaluate.loop import evaluate_detector

    dataset = CocoDataset(settings.images)
    out = {}
    for name, runner in runners.items():
        log.info("COCO AP of %s on %d images", name, len(dataset.images))
        result = evaluate_detector(runner, io, dataset, 1, progress=False)
        out[name] = {"coco_ap": float(result.stats["ap"]), "coco_ap50": float(result.stats["ap50"])}
    return out


def rerender_analysis(settings: BenchSettings) -> Path:
    """Re-render the hand-written analysis of the last report from the figures its run wrote (no
    timing): the prose may change, every number stays that run's."""
    from rtq.results.analysis import ANALYSIS_HEADING

    if not settings.out.is_file() or not settings.figures_path.is_file():
        raise UserError(
            f"no report {settings.out} with figures {settings.figures_path}; run the benchmark first"
        )
    head = settings.out.read_text().split(ANALYSIS_HEADING)[0].rstrip("\n")
    section = analysis_section(settings.analysis_path, json.loads(settings.figures_path.read_text()))
    write_atomic(settings.out, f"{head}\n\n{section}" if section else f"{head}\n")
    return settings.out


def run_bench(settings: BenchSettings, command: str) -> str:
    """Build or reuse the artifacts, time every backend, profile ORT's graphs, write figures and report."""
    from rtq.backends.onnxruntime import make_onnxrt_runner
    from rtq.backends.torch import make_torch_runner
    from rtq.evaluate.bench_artifacts import build_artifacts
    from rtq.evaluate.bench_openvino import layer_profiles, openvino_records, openvino_runner

    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        raise UserError(f"--checkpoint {settings.checkpoint} does not exist; give the path of a .pth file")
    load_before = load_average()
    log.info("building / loading the ONNX artifacts (through the experiment pipeline)")
    artifacts = build_artifacts(settings)
    io, model = artifacts.detector.io, artifacts.detector.torch_model
    descriptions = {
        TORCH_FP32: "PyTorch FP32",
        REFERENCE: "ORT FP32",
        MODELOPT_INT8: settings.int8_description,
        **{name: variant.description for name, variant in settings.ort_variants.items()},
    }
    runners: dict[str, BaseRunner] = {}
    if settings.torch_row:
        if model is None:
            raise UserError(f"{settings.model} has no PyTorch model; set `torch: false` in its bench config")
        runners[TORCH_FP32] = make_torch_runner(model, num_threads=settings.threads, name=TORCH_FP32)
    for name, path in artifacts.paths.items():
        runners[name] = make_onnxrt_runner(
            path,
            mode="fast",
            providers=["CPUExecutionProvider"],
            intra_op_threads=settings.threads,
            name=name,
        )
    for name, row in settings.openvino.items():
        descriptions[name] = row.description
        runners[name] = openvino_runner(name, row, artifacts.openvino[name], artifacts.openvino_onnx[name])
    descriptions = {k: v for k, v in descriptions.items() if k in runners}

    images = _timing_images(settings, max(settings.batches))
    prepared = {b: io.preprocess([images[i % len(images)] for i in range(b)]) for b in settings.batches}
    feeds = {b: feed for b, (feed, _) in prepared.items()}
    log.info(
        "timing %s at batches %s, %d repetitions", list(runners), list(settings.batches), settings.iterations
    )
    timings = interleaved_timing(runners, feeds, warmup=settings.warmup, iterations=settings.iterations)
    feed, metas = prepared[max(settings.batches)]
    fidelity, vs_source = _fidelity(runners, feed, settings, io=io, metas=metas)
    coco = _coco_ap(runners, io, settings) if settings.coco_ap else {}
    log.info("profiling OpenVINO layers of %s", list(settings.profile_rows))
    layers_md, layer_figures = layer_profiles(
        settings, artifacts.openvino, artifacts.openvino_onnx, feeds[min(settings.batches)], descriptions
    )
    openvino = {
        name: {
            **record,
            **({"fidelity_vs_source": vs_source[name]} if name in vs_source else {}),
            **({"layer_profile": layer_figures[name]} if name in layer_figures else {}),
        }
        for name, record in openvino_records(settings, artifacts.openvino).items()
    }
    with tempfile.TemporaryDirectory(prefix="rtq-ort-graph-") as tmp:
        profiles = {
            name: profile_onnxrt(path, tmp, intra_op_threads=settings.threads)
            for name, path in artifacts.paths.items()
        }
    environment = fingerprint(load_before)
    figures: dict[str, Any] = bench_figures(
        settings.figures(),
        environment,
        timings,
        descriptions,
        profiles,
        fidelity,
        reference=REFERENCE,
        goal=settings.goal_speedup,
        openvino=openvino,
        goals=settings.goals(),
    )
    for name, stats in coco.items():
        figures[name]["coco"] = stats
    if settings.profile_rows:
        write_atomic(settings.layers_path, layers_md)
    write_atomic(settings.figures_path, json.dumps(figures, indent=2) + "\n")
    try:
        analysis = analysis_section(settings.analysis_path, figures)
    except UserError as err:
        kept = f"this run's figures are in {settings.figures_path}; the report was not rewritten"
        raise UserError(f"{err} ({kept})") from None
    report = render_report(
        settings,
        command,
        environment,
        timings,
        descriptions,
        profiles,
        fidelity,
        artifacts.sources,
        analysis=analysis,
        openvino=openvino,
        layers_file=settings.layers_path.name if settings.profile_rows else "",
    )
    write_atomic(settings.out, report)
    return report
