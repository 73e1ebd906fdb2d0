"""COCO bbox AP with the official pycocotools evaluator, as percentages ready for tables."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtq.data.coco import CocoDataset, pycocotools_output_to_debug_log
from rtq.evaluate.coco_accumulate import StreamingAccumulator
from rtq.models.io import Detections

# Images evaluated per COCOeval pass: pycocotools copies their detections (dicts, about 1 KB each)
# only for the pass, so this bounds the transient part of peak memory.
CHUNK_IMAGES = 100
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


def compact(detections: Sequence[dict[str, Any]]) -> np.ndarray:
    """One image's COCO result dicts as a float64 array [N, 6] (x, y, w, h, score, category id):
    about a tenth of the memory of the dicts, for runs that keep millions of detections."""
    rows = [[*d["bbox"], d["score"], d["category_id"]] for d in detections]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def as_coco_dicts(image_id: int, detections: Sequence[dict[str, Any]] | np.ndarray) -> list[dict[str, Any]]:
    """COCO result dicts of one image from either form (`compact` rows or dicts)."""
    if not isinstance(detections, np.ndarray):
        return list(detections)
    return [
        {
            "image_id": int(image_id),
            "category_id": int(row[5]),
            "bbox": row[:4].tolist(),
            "score": float(row[4]),
        }
        for row in detections
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
    per_image: dict[int, list[dict[str, Any]]] = {}
    for detection in detections:
        per_image.setdefault(int(detection["image_id"]), []).append(detection)
    ids = sorted(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds()))
    return coco_bbox_stats_by_image(coco_gt, per_image, ids)


def coco_bbox_stats_by_image(
    coco_gt: COCO,
    per_image: Mapping[int, Sequence[dict[str, Any]] | np.ndarray],
    image_ids: Sequence[int],
    chunk_images: int = CHUNK_IMAGES,
) -> dict[str, float]:
    """`coco_bbox_stats` from detections grouped by image, evaluated `chunk_images` images at a time.

    pycocotools matches each (image, category) on its own (`COCOeval.evaluateImg`) and only
    `accumulate` needs all of them, so each chunk's matches are reduced to flat arrays
    (`StreamingAccumulator`) and the chunk's detection copies and per-image dicts are freed: memory
    holds the detections and no per-image bookkeeping. The numbers are COCOeval's own, whatever
    the chunking.
    """
    ids = sorted(int(i) for i in image_ids)
    with pycocotools_output_to_debug_log():
        final = COCOeval(coco_gt, None, iouType="bbox")
        final.params.imgIds = ids
        accumulator = StreamingAccumulator(final.params)
        for start in range(0, len(ids), max(chunk_images, 1)):
            chunk = ids[start : start + chunk_images]
            detections = [
                d for image_id in chunk for d in as_coco_dicts(image_id, per_image.get(image_id, ()))
            ]
            coco_dt = coco_gt.loadRes(detections) if detections else _empty_results(coco_gt)
            part = COCOeval(coco_gt, coco_dt, iouType="bbox")
            part.params.imgIds = chunk
            part.evaluate()
            accumulator.add_chunk(part.evalImgs, len(chunk))
            del coco_dt, part, detections
        final.eval = accumulator.result()
        final.summarize()
    return {
        key: (round(float(value) * 100.0, 2) if value >= 0 else -1.0)
        for key, value in zip(STAT_KEYS, final.stats, strict=True)
    }
