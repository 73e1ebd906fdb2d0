"""Does the exported ONNX compute what the torch model computes?

Runs the torch model (FP32 or fake-quant) and the ONNX file in ONNX Runtime with graph
optimizations disabled (so ORT does not fuse Q/DQ into integer kernels) on the same feeds, and
reports how far the outputs are apart. Deploy outputs are top-k sorted by score, and near-tied
scores can swap places between backends, so besides the raw position-wise difference the
comparison sorts scores and pairs detections one-to-one (same label, nearest box) before
measuring boxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

LABEL_MISMATCH_COST = 1e9  # pairs of different labels are only taken when nothing else is left


def ort_session(onnx_path: str | Path) -> Any:
    """A CPU ONNX Runtime session with every graph optimization off (reference semantics)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _torch_outputs(
    model: nn.Module, feed: Mapping[str, np.ndarray], names: list[str]
) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    with torch.no_grad():
        outputs = model(**{k: torch.as_tensor(v).to(device) for k, v in feed.items()})
    return {name: out.detach().cpu().numpy() for name, out in zip(names, outputs, strict=True)}


def match_detections(
    labels_a: np.ndarray, boxes_a: np.ndarray, labels_b: np.ndarray, boxes_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairing of two detection lists of one image: same label first, then nearest box.

    Greedy over pairs by ascending cost (L-inf box distance, plus a large penalty for different
    labels); with near-identical lists every true pair is far cheaper than any wrong one.
    """
    cost = np.abs(boxes_a[:, None, :] - boxes_b[None, :, :]).max(-1).astype(np.float64)
    cost += LABEL_MISMATCH_COST * (labels_a[:, None] != labels_b[None, :])
    used_a = np.zeros(len(boxes_a), dtype=bool)
    used_b = np.zeros(len(boxes_b), dtype=bool)
    rows: list[int] = []
    cols: list[int] = []
    for flat in np.argsort(cost, axis=None, kind="stable"):
        a, b = divmod(int(flat), len(boxes_b))
        if used_a[a] or used_b[b]:
            continue
        used_a[a] = used_b[b] = True
        rows.append(a)
        cols.append(b)
        if len(rows) == min(len(boxes_a), len(boxes_b)):
            break
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def compare_detections(
    reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Order-robust differences between two batches of deploy outputs (labels, boxes, scores)."""
    raw = {f"{name}_max_abs_positional": float(np.abs(
        reference[name].astype(np.float64) - other[name].astype(np.float64)).max()) for name in reference}
    scores_sorted = float(np.abs(
        np.sort(reference["scores"], axis=1) - np.sort(other["scores"], axis=1)).max())
    box_diff = score_diff = 0.0
    label_mismatches = 0
    for i in range(reference["labels"].shape[0]):
        rows, cols = match_detections(reference["labels"][i], reference["boxes"][i],
                                      other["labels"][i], other["boxes"][i])
        label_mismatches += int((reference["labels"][i][rows] != other["labels"][i][cols]).sum())
        same = reference["labels"][i][rows] == other["labels"][i][cols]
        if same.any():
            box_diff = max(box_diff, float(np.abs(
                reference["boxes"][i][rows[same]] - other["boxes"][i][cols[same]]).max()))
            score_diff = max(score_diff, float(np.abs(
                reference["scores"][i][rows[same]] - other["scores"][i][cols[same]]).max()))
    return {
        **raw,
        "scores_max_abs_sorted": scores_sorted,
        "boxes_max_abs_matched": box_diff,
        "scores_max_abs_matched": score_diff,
        "label_mismatches_matched": float(label_mismatches),
    }


def torch_vs_onnx(
    model: nn.Module, onnx_path: str | Path, feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, float]:
    """Worst-case differences over all feeds between torch and ORT (no graph optimizations)."""
    session = ort_session(onnx_path)
    names = [out.name for out in session.get_outputs()]
    model.eval()
    worst: dict[str, float] = {}
    images = 0
    for feed in feeds:
        arrays = {k: np.asarray(v) for k, v in feed.items()}
        reference = _torch_outputs(model, arrays, names)
        onnx_out = dict(zip(names, session.run(names, arrays), strict=True))
        for key, value in compare_detections(reference, onnx_out).items():
            worst[key] = value + worst.get(key, 0.0) if key.startswith("label") else max(
                worst.get(key, 0.0), value)
        images += int(arrays["images"].shape[0])
    worst["images"] = float(images)
    return worst
