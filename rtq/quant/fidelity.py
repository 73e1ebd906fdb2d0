"""Does the exported ONNX compute what the torch model computes?

Runs the torch model (FP32 or fake-quant) and the ONNX file in ONNX Runtime with graph
optimizations disabled (so ORT does not fuse Q/DQ into integer kernels) on the same feeds, and
reports how far the outputs are apart:

- deploy outputs (`rtq.compare.metrics.paired_detection_report`): top-k sorted by score, so
  near-tied scores can swap places; scores are sorted and detections paired one-to-one.
- raw outputs (`raw_output_fidelity`): `pred_logits` / `pred_boxes` of every query, rows realigned
  by `enc_topk_index` (query selection is a top-k over encoder scores, so the two backends can pick
  a few different memory positions), plus the detections decoded from them.

`rtq.quant.quantizer_fidelity` goes one level deeper, to every exported Q/DQ pair.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from rtq.backends.onnxruntime import reference_session
from rtq.compare.metrics import paired_detection_report
from rtq.errors import UserError
from rtq.export.onnx_export import export_raw_onnx
from rtq.models.rtdetr import RAW_OUTPUT_NAMES, decode_raw, last_topk_index, raw_network
from rtq.quant.float64_twin import float64_session
from rtq.quant.onnx_arithmetic import onnx_quantizer_arithmetic

log = logging.getLogger(__name__)


def _torch_outputs(
    model: nn.Module, feed: Mapping[str, np.ndarray], names: list[str]
) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    with torch.no_grad():
        outputs = model(**{k: torch.as_tensor(v).to(device) for k, v in feed.items()})
    return {name: out.detach().cpu().numpy() for name, out in zip(names, outputs, strict=True)}


def raw_output_fidelity(
    model: nn.Module,
    onnx_path: str | Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    top_k: int = 300,
    float64: bool = False,
) -> dict[str, float]:
    """Torch vs ORT on raw outputs, queries realigned by `enc_topk_index` (worst case over feeds).

    `model` is the RT-DETR network or its deploy wrapper (FP32 or fake-quant); `onnx_path` is its
    raw export (`export_raw_onnx`). Keys: `pred_logits_max_abs`, `pred_boxes_max_abs` (over the
    queries both backends selected), `pred_logits_mean_abs`, `queries_selected_differently` and
    `queries` (counts: logits and boxes of a query only one side selected are not compared, so
    any selected differently is a disagreement of its own), `detections_label_mismatches` (top-k
    detections decoded from the raw outputs, paired order-independently), `detections_scores_max_abs_sorted`,
    `detections_boxes_max_abs_matched` (pixels when feeds carry `orig_target_sizes`), `images`.

    `float64=True` compares a float64 copy of the network, its quantizers computing the ONNX Q/DQ
    formula (`rtq.quant.onnx_arithmetic`), with the float64 twin of the graph
    (`rtq.quant.float64_twin`): float noise no longer flips INT8 levels, so an exact export agrees
    to ~1e-12 and any larger difference is the export's.
    """
    network = raw_network(model)
    network.eval()
    arithmetic: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    dtype: type[np.floating[Any]] = np.float32
    if float64:
        network = copy.deepcopy(network).double()
        session = float64_session(onnx_path)
        arithmetic, dtype = onnx_quantizer_arithmetic(network), np.float64
    else:
        session = reference_session(Path(onnx_path))
    with arithmetic:
        return _raw_fidelity_loop(network, session, feeds, top_k, dtype)


def _raw_fidelity_loop(
    network: nn.Module, session: Any, feeds: Iterable[Mapping[str, np.ndarray]], top_k: int,
    dtype: type[np.floating[Any]],
) -> dict[str, float]:
    device = next(network.parameters()).device
    worst = dict.fromkeys(("pred_logits_max_abs", "pred_boxes_max_abs", "detections_scores_max_abs_sorted",
                           "detections_boxes_max_abs_matched"), 0.0)
    logit_sum = 0.0
    counts = {"queries_selected_differently": 0, "queries": 0, "detections_label_mismatches": 0, "images": 0}
    common_rows = 0
    for feed in feeds:
        images = np.asarray(feed["images"], dtype=dtype)
        with torch.no_grad():
            out = network(torch.as_tensor(images).to(device))
        index = last_topk_index(network)
        ours = (out["pred_logits"].cpu().numpy(), out["pred_boxes"].cpu().numpy(), index.cpu().numpy())
        theirs = session.run(list(RAW_OUTPUT_NAMES), {"images": images})
        sizes = feed.get("orig_target_sizes")
        for i in range(images.shape[0]):
            _, rows_a, rows_b = np.intersect1d(ours[2][i], theirs[2][i], return_indices=True)
            counts["queries"] += int(ours[2].shape[1])
            counts["queries_selected_differently"] += int(ours[2].shape[1] - rows_a.size)
            logit_diff = np.abs(ours[0][i][rows_a] - theirs[0][i][rows_b])
            box_diff = np.abs(ours[1][i][rows_a] - theirs[1][i][rows_b])
            worst["pred_logits_max_abs"] = max(worst["pred_logits_max_abs"], float(logit_diff.max(initial=0)))
            worst["pred_boxes_max_abs"] = max(worst["pred_boxes_max_abs"], float(box_diff.max(initial=0)))
            logit_sum += float(logit_diff.sum())
            common_rows += logit_diff.size
            size = None if sizes is None else np.asarray(sizes)[i]
            detections = paired_detection_report(decode_raw(ours[0][i], ours[1][i], size, top_k),
                                            decode_raw(theirs[0][i], theirs[1][i], size, top_k))
            counts["detections_label_mismatches"] += int(detections["label_mismatches_matched"])
            worst["detections_scores_max_abs_sorted"] = max(
                worst["detections_scores_max_abs_sorted"], detections["scores_max_abs_sorted"])
            worst["detections_boxes_max_abs_matched"] = max(
                worst["detections_boxes_max_abs_matched"], detections["boxes_max_abs_matched"])
            counts["images"] += 1
    return {**worst, "pred_logits_mean_abs": logit_sum / max(common_rows, 1),
            **{k: float(v) for k, v in counts.items()}}


def torch_vs_onnx(
    model: nn.Module,
    onnx_path: str | Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    float64: bool = True,
    raw_outputs: nn.Module | None = None,
) -> dict[str, float]:
    """Worst-case differences over all feeds between torch and ORT (no graph optimizations).

    Deploy-output keys as in `rtq.compare.metrics.paired_detection_report` (label mismatches
    summed, the rest worst case) plus `images`; given the family's raw-output wrapper of `model`
    (`DetectorFamily.raw_outputs`), also the raw-output keys of `raw_output_fidelity`, prefixed
    `raw_`, measured on a raw export written next to nothing (a temporary directory), and with
    `float64` the same keys of the float64 comparison, prefixed `raw_float64_`.
    """
    feeds = [{k: np.asarray(v) for k, v in feed.items()} for feed in feeds]
    session = reference_session(Path(onnx_path))
    names = [out.name for out in session.get_outputs()]
    model.eval()
    worst: dict[str, float] = {}
    images = 0
    for arrays in feeds:
        reference = _torch_outputs(model, arrays, names)
        onnx_out = dict(zip(names, session.run(names, arrays), strict=True))
        for key, value in paired_detection_report(reference, onnx_out).items():
            worst[key] = value + worst.get(key, 0.0) if key.startswith("label") else max(
                worst.get(key, 0.0), value)
        images += int(arrays["images"].shape[0])
    worst["images"] = float(images)
    if raw_outputs is not None:
        with tempfile.TemporaryDirectory(prefix="rtq_raw_") as work:
            size = int(feeds[0]["images"].shape[-1]) if feeds else 640
            raw_path = export_raw_onnx(raw_outputs, Path(work) / "raw.onnx", image_size=size)
            raw = raw_output_fidelity(model, raw_path, feeds)
            worst.update({f"raw_{key}": value for key, value in raw.items() if key != "images"})
            if float64:
                worst.update(_float64_keys(model, raw_path, feeds))
    return worst


def _float64_keys(
    model: nn.Module, raw_path: Path, feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, Any]:
    """`raw_float64_*` keys, or `raw_float64_error` when the graph has no float64 twin (a diagnostic only)."""
    try:
        raw = raw_output_fidelity(model, raw_path, feeds, float64=True)
    except UserError as error:
        log.warning("no float64 fidelity: %s", error)
        return {"raw_float64_error": str(error)}
    return {f"raw_float64_{key}": value for key, value in raw.items() if key != "images"}


def float64_verdict(result: Mapping[str, float], tolerance: float) -> tuple[bool, str] | None:
    """Whether the float64 raw outputs agree, and a one-line account; None without them.

    Agreement needs both sides to select the same queries (logits and boxes are compared over the
    queries both selected, so they cannot see the others) and those to be within `tolerance`.
    """
    try:
        logits, boxes = result["raw_float64_pred_logits_max_abs"], result["raw_float64_pred_boxes_max_abs"]
    except KeyError:
        return None
    different = result.get("raw_float64_queries_selected_differently", 0.0)
    selection = (f"{different:.0f}/{result.get('raw_float64_queries', 0):.0f} queries selected differently "
                 "in float64; " if different else "")
    return different == 0 and max(logits, boxes) <= tolerance, (
        f"fidelity, raw outputs in float64: {selection}logits {logits:.2g}, boxes {boxes:.2g} "
        f"(tolerance {tolerance:g}); "
        f"float32 as deployed: logits {result.get('raw_pred_logits_max_abs', float('nan')):.2g}, "
        f"{result.get('raw_queries_selected_differently', 0):.0f}/{result.get('raw_queries', 0):.0f} queries "
        "selected differently (INT8 levels flipped by float noise)"
    )
