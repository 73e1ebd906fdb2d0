"""Every way rtq measures how far a candidate's outputs are from a reference's, in one place.

A *metric* turns the outputs of two runs over the same feeds into one number, larger is worse, so
any search (sensitivity, fusion-bug localisation, fidelity) can take any of them:

    Metric = (reference outputs per feed, candidate outputs per feed) -> float

Metrics are made by factories registered under a name (`metric("relative_l2")`,
`metric("detection_match", score_threshold=0.5)`), so a config or a command line can pick one.
The reports that tables show (per-output error statistics, detection matching, paired deploy
outputs, score profiles) are plain functions here too: each metric is one number out of one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rtq.errors import UserError
from rtq.models.io import DETECTION_OUTPUTS
from rtq.registry import Registry

Outputs = Mapping[str, np.ndarray]
Metric = Callable[[Sequence[Outputs], Sequence[Outputs]], float]
MetricFactory = Callable[..., Metric]

REL_EPS = 1e-6  # keeps relative error finite where the reference is zero
LABEL_MISMATCH_COST = 1e9  # pairs of different labels are only taken when nothing else is left
METRICS: Registry[MetricFactory] = Registry("metric")
register_metric = METRICS.register  # decorator: make a metric factory available under a name


def known_metrics() -> list[str]:
    return METRICS.names()


def metric(name: str, **options: Any) -> Metric:
    """The metric registered as ``name`` with ``options``; a `UserError` listing the known ones otherwise."""
    return METRICS.get(name)(**options)


def _concat(outputs: Sequence[Outputs], name: str) -> np.ndarray:
    """One output of every feed joined along the batch axis."""
    return np.concatenate([np.asarray(o[name]) for o in outputs], axis=0)


# ---- per-output statistics -------------------------------------------------------------------------

def error_stats(reference: Any, target: Any) -> dict[str, float | bool | list[int]]:
    """max/mean/median/p99 of absolute and relative error, plus the reference magnitude.

    Relative error is |t - r| / (|r| + 1e-6): defined everywhere, large only where it matters.
    Shapes that differ are reported, not broadcast.
    """
    r = np.asarray(reference)
    t = np.asarray(target)
    if r.shape != t.shape:
        return {"shape_mismatch": True, "reference_shape": list(r.shape), "target_shape": list(t.shape)}
    r64 = r.astype(np.float64).reshape(-1)
    t64 = t.astype(np.float64).reshape(-1)
    if r64.size == 0:
        return {"shape_mismatch": False, "size": 0}
    finite = np.isfinite(r64) & np.isfinite(t64)
    abs_err = np.abs(t64 - r64)[finite]
    rel_err = abs_err / (np.abs(r64[finite]) + REL_EPS)
    if abs_err.size == 0:
        abs_err = rel_err = np.array([np.inf])
    return {
        "shape_mismatch": False,
        "size": int(r64.size),
        "nonfinite": int((~finite).sum()),
        "max_abs": float(abs_err.max()),
        "mean_abs": float(abs_err.mean()),
        "median_abs": float(np.median(abs_err)),
        "p99_abs": float(np.quantile(abs_err, 0.99)),
        "max_rel": float(rel_err.max()),
        "mean_rel": float(rel_err.mean()),
        "median_rel": float(np.median(rel_err)),
        "p99_rel": float(np.quantile(rel_err, 0.99)),
        "ref_max_abs": float(np.abs(r64[finite]).max()) if finite.any() else float("nan"),
    }


def normalised_error(stats: Mapping[str, Any]) -> float:
    """max_abs relative to the reference's largest magnitude: one scale-free number per tensor."""
    if stats.get("shape_mismatch"):
        return float("inf")
    if not stats.get("size"):
        return 0.0
    return float(stats["max_abs"]) / (float(stats["ref_max_abs"]) + REL_EPS)


@register_metric("normalised_error")
def normalised_error_metric(outputs: Sequence[str] | None = None) -> Metric:
    """Worst `normalised_error` of `outputs` (default: every reference output), all feeds stacked."""

    def measure(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
        names = list(outputs) if outputs is not None else list(reference[0]) if reference else []
        worst = 0.0
        for name in names:
            if any(np.asarray(r[name]).shape != np.asarray(c[name]).shape
                   for r, c in zip(reference, candidate, strict=True)):
                return float("inf")
            stacked = [np.concatenate([np.asarray(o[name]).reshape(-1) for o in side])
                       for side in (reference, candidate)]
            worst = max(worst, normalised_error(error_stats(*stacked)))
        return worst

    return measure


@register_metric("output_error")
def output_error() -> Metric:
    """Largest absolute difference of any output, relative to that output's largest magnitude.

    Relative so one threshold works for scores (0..1) and boxes (pixels) alike; integer outputs
    (labels) count too, since a changed label is an error. Worst case over feeds.
    """

    def measure(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
        worst = 0.0
        for ref_feed, got_feed in zip(reference, candidate, strict=True):
            for name, ref in ref_feed.items():
                ref64 = np.asarray(ref, dtype=np.float64)
                got64 = np.asarray(got_feed[name], dtype=np.float64)
                if ref64.shape != got64.shape:
                    return float("inf")
                if ref64.size == 0:
                    continue
                diff = np.abs(ref64 - got64)
                if not np.all(np.isfinite(diff)):
                    return float("inf")
                worst = max(worst, float(diff.max()) / max(float(np.abs(ref64).max()), 1e-6))
        return worst

    return measure


@register_metric("relative_l2")
def relative_l2() -> Metric:
    """||q - f|| / ||f|| over every float output of every feed: one number, scale-free."""

    def measure(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
        num = 0.0
        den = 0.0
        for ref, got in zip(reference, candidate, strict=True):
            for name, value in ref.items():
                if not np.issubdtype(np.asarray(value).dtype, np.floating):
                    continue
                diff = np.asarray(got[name], np.float64) - np.asarray(value, np.float64)
                num += float(np.sum(diff * diff))
                den += float(np.sum(np.asarray(value, np.float64) ** 2))
        return float(np.sqrt(num / max(den, 1e-30)))

    return measure


@register_metric("sorted_scores_l2")
def sorted_scores_l2() -> Metric:
    """`relative_l2` of each image's detection scores sorted high to low: blind to detection order.

    An RT-DETR's top-k detections come from a top-k over near-tied encoder scores, so any change
    anywhere reorders them and a positional comparison reads the same large error for every group;
    the sorted score profile moves with how much quantization shifts the confidences.
    """
    positional = relative_l2()

    def profile(outputs: Sequence[Outputs]) -> list[Outputs]:
        return [{"scores": -np.sort(-np.asarray(o["scores"], np.float64), axis=-1)} for o in outputs]

    return lambda reference, candidate: positional(profile(reference), profile(candidate))


# ---- score profiles ----------------------------------------------------------------------------

def score_fidelity_report(reference: Outputs, other: Outputs) -> dict[str, float]:
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


SCORE_FIDELITY_KEYS = ("max_abs_score_diff", "max_abs_top10_score_diff", "mean_abs_score_diff",
                       "top1_label_disagreement")


@register_metric("score_fidelity")
def score_fidelity(key: str = "max_abs_score_diff") -> Metric:
    """One number of `score_fidelity_report` over all feeds stacked (`top1_label_disagreement` is
    1 - `top1_label_agreement`, so that larger is worse here too)."""
    if key not in SCORE_FIDELITY_KEYS:
        raise UserError(f"score_fidelity key {key!r} is unknown; use one of {', '.join(SCORE_FIDELITY_KEYS)}")

    def measure(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
        report = score_fidelity_report({k: _concat(reference, k) for k in ("scores", "labels")},
                                       {k: _concat(candidate, k) for k in ("scores", "labels")})
        if key == "top1_label_disagreement":
            return 1.0 - report["top1_label_agreement"]
        return report[key]

    return measure


# ---- detections matched by IoU (thresholded or top-k, greedy) ---------------------------------------

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
    order = order[:top_k] if top_k is not None else order[scores[order] >= score_threshold]
    return labels[order], boxes[order], scores[order]


def match_image(ref: Outputs, tgt: Outputs, score_threshold: float = 0.3, iou_threshold: float = 0.5,
                top_k: int | None = None) -> tuple[int, int, int, list[float]]:
    """(reference count, target count, matched count, |score error| of each match) for one image.

    Detections above a score threshold (or the top-k by score) are matched greedily by IoU (same
    label, IoU >= iou_threshold), highest reference score first: two engines can return the same
    detections in a different order, so element-wise errors on boxes say little.
    """
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


def detection_match_report(reference: Sequence[Outputs], target: Sequence[Outputs],
                           score_threshold: float = 0.3, iou_threshold: float = 0.5,
                           top_k: int | None = None) -> dict[str, Any]:
    """Matched fraction and score error (`match_image`) over all images of all feeds."""
    n_ref = n_tgt = n_match = 0
    errors: list[float] = []
    for ref, tgt in zip(reference, target, strict=True):
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


@register_metric("detection_match")
def detection_match(score_threshold: float = 0.3, iou_threshold: float = 0.5,
                    top_k: int | None = None) -> Metric:
    """1 - the fraction of reference detections the candidate matches (`detection_match_report`)."""
    return lambda reference, candidate: 1.0 - float(detection_match_report(
        reference, candidate, score_threshold, iou_threshold, top_k)["matched_fraction"])


# ---- deploy outputs paired one-to-one (all detections, nearest box) ----------------------------------

def pair_detections(
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


def paired_detection_report(reference: Outputs, other: Outputs) -> dict[str, float]:
    """Order-robust differences between two batches of deploy outputs (labels, boxes, scores).

    Every detection is kept (no threshold): scores are compared sorted, boxes and scores also
    over `pair_detections` pairs of the same label; the positional differences are kept for contrast.
    """
    raw = {f"{name}_max_abs_positional": float(np.abs(
        reference[name].astype(np.float64) - other[name].astype(np.float64)).max()) for name in reference}
    scores_sorted = float(np.abs(
        np.sort(reference["scores"], axis=1) - np.sort(other["scores"], axis=1)).max())
    box_diff = score_diff = 0.0
    label_mismatches = 0
    for i in range(reference["labels"].shape[0]):
        rows, cols = pair_detections(reference["labels"][i], reference["boxes"][i],
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


PAIRED_DETECTION_KEYS = ("scores_max_abs_sorted", "boxes_max_abs_matched", "scores_max_abs_matched",
                         "label_mismatches_matched")


@register_metric("paired_detections")
def paired_detections(key: str = "scores_max_abs_sorted") -> Metric:
    """One number of `paired_detection_report`: label mismatches summed over feeds, the rest worst case."""
    if key not in PAIRED_DETECTION_KEYS:
        raise UserError(f"paired_detections key {key!r} is unknown; "
                        f"use one of {', '.join(PAIRED_DETECTION_KEYS)}")

    def measure(reference: Sequence[Outputs], candidate: Sequence[Outputs]) -> float:
        values = [paired_detection_report(r, c)[key] for r, c in zip(reference, candidate, strict=True)]
        if key == "label_mismatches_matched":
            return float(sum(values))
        return max(values, default=0.0)

    return measure
