"""COCO bbox AP with the official pycocotools evaluator, as percentages ready for tables."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtq.data.coco import CocoDataset, pycocotools_output_to_debug_log
from rtq.models.io import Detections

# The order of COCOeval.stats for iouType="bbox".
STAT_KEYS: tuple[str, ...] = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar1",
    "ar10",
    "ar100",
    "ar_small",
    "ar_medium",
    "ar_large",
)


def detections_to_coco(image_id: int, detections: Detections, dataset: CocoDataset) -> list[dict[str, Any]]:
    """One image's detections -> COCO result dicts (xywh boxes, category ids, plain Python numbers)."""
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    xywh = boxes.copy()
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    category_ids = dataset.label_to_category_id(np.asarray(detections.labels).reshape(-1))
    scores = np.asarray(detections.scores, dtype=np.float64).reshape(-1)
    return [
        {"image_id": int(image_id), "category_id": int(cat), "bbox": box, "score": score}
        for cat, box, score in zip(category_ids.tolist(), xywh.tolist(), scores.tolist(), strict=True)
    ]


def _empty_results(coco_gt: COCO) -> COCO:
    """A result set with no detections; `COCO.loadRes([])` would fail on an empty list."""
    results = COCO()
    results.dataset = {
        "images": copy.deepcopy(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with pycocotools_output_to_debug_log():
        results.createIndex()
    return results


def coco_bbox_stats(
    coco_gt: COCO, detections: list[dict[str, Any]], image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """The 12 standard COCOeval bbox numbers in percent (2 decimals), restricted to `image_ids`.

    No detections at all scores 0. A value COCO cannot define (no ground truth of that size among
    the images) stays -1.0, unscaled, so it is never mistaken for a score.
    """
    with pycocotools_output_to_debug_log():
        coco_dt = coco_gt.loadRes(detections) if detections else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        key: (round(float(value) * 100.0, 2) if value >= 0 else -1.0)
        for key, value in zip(STAT_KEYS, evaluator.stats, strict=True)
    }
