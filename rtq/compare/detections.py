"""Order-independent comparison of two detectors' outputs (labels / boxes / scores).

Two engines can return the same detections in a different order, so element-wise errors on
``boxes`` say little. Detections above a score threshold (or the top-k by score) are matched
greedily by IoU (same label, IoU >= 0.5), highest reference score first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rtq.models.io import DETECTION_OUTPUTS


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a [M, 4] and b [N, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _select(labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, score_threshold: float,
            top_k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    else:
        order = order[scores[order] >= score_threshold]
    return labels[order], boxes[order], scores[order]


def match_image(ref: Mapping[str, np.ndarray], tgt: Mapping[str, np.ndarray], score_threshold: float = 0.3,
                iou_threshold: float = 0.5, top_k: int | None = None) -> tuple[int, int, int, list[float]]:
    """(reference count, target count, matched count, |score error| of each match) for one image."""
    rl, rb, rs = _select(np.asarray(ref["labels"]), np.asarray(ref["boxes"]), np.asarray(ref["scores"]),
                         score_threshold, top_k)
    tl, tb, ts = _select(np.asarray(tgt["labels"]), np.asarray(tgt["boxes"]), np.asarray(tgt["scores"]),
                         score_threshold, top_k)
    if len(rl) == 0 or len(tl) == 0:
        return len(rl), len(tl), 0, []
    iou = box_iou(rb.astype(np.float64), tb.astype(np.float64))
    iou[rl[:, None] != tl[None, :]] = -1.0
    used = np.zeros(len(tl), bool)
    errors: list[float] = []
    for i in range(len(rl)):  # reference sorted by score: strongest detections claim first
        cand = np.where(~used & (iou[i] >= iou_threshold))[0]
        if cand.size:
            j = cand[np.argmax(iou[i, cand])]
            used[j] = True
            errors.append(abs(float(ts[j]) - float(rs[i])))
    return len(rl), len(tl), len(errors), errors


def compare_detections(ref_batches: Sequence[Mapping[str, Any]], tgt_batches: Sequence[Mapping[str, Any]],
                       score_threshold: float = 0.3, iou_threshold: float = 0.5,
                       top_k: int | None = None) -> dict[str, Any]:
    """Matched fraction and score error over all images of all iterations."""
    n_ref = n_tgt = n_match = 0
    errors: list[float] = []
    for ref, tgt in zip(ref_batches, tgt_batches, strict=True):
        for b in range(np.asarray(ref["labels"]).shape[0]):
            r = {k: np.asarray(ref[k])[b] for k in DETECTION_OUTPUTS}
            t = {k: np.asarray(tgt[k])[b] for k in DETECTION_OUTPUTS}
            a, c, m, e = match_image(r, t, score_threshold, iou_threshold, top_k)
            n_ref, n_tgt, n_match = n_ref + a, n_tgt + c, n_match + m
            errors += e
    return {
        "selection": f"top {top_k} by score" if top_k is not None else f"score >= {score_threshold}",
        "iou_threshold": iou_threshold,
        "reference_detections": n_ref,
        "target_detections": n_tgt,
        "matched": n_match,
        "matched_fraction": n_match / n_ref if n_ref else (1.0 if n_tgt == 0 else 0.0),
        "target_matched_fraction": n_match / n_tgt if n_tgt else (1.0 if n_ref == 0 else 0.0),
        "score_abs_error_max": max(errors) if errors else 0.0,
        "score_abs_error_mean": float(np.mean(errors)) if errors else 0.0,
    }


def has_detection_outputs(names: Sequence[str]) -> bool:
    return all(k in names for k in DETECTION_OUTPUTS)
