"""COCO bbox AP on the bundled annotations: ground truth scores 100, perturbed less, nothing 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtq.data.coco import CocoDataset
from rtq.evaluate.coco_ap import STAT_KEYS, coco_bbox_stats, detections_to_coco
from rtq.models.io import Detections

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "coco_val2017_mini"


@pytest.fixture(scope="module")
def dataset() -> CocoDataset:
    return CocoDataset(BUNDLED)


def ground_truth_as_detections(dataset: CocoDataset, image_ids: list[int]) -> list[dict[str, Any]]:
    """Every non-crowd ground-truth box as a detection of score 1 (crowd regions are ignored by COCO)."""
    anns = dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=image_ids, iscrowd=False))
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in anns
    ]


def test_ground_truth_scores_100(dataset: CocoDataset) -> None:
    detections = ground_truth_as_detections(dataset, dataset.image_ids)
    stats = coco_bbox_stats(dataset.coco, detections, dataset.image_ids)
    assert list(stats) == list(STAT_KEYS)
    assert stats["ap"] == 100.0 and stats["ap50"] == 100.0 and stats["ap75"] == 100.0
    assert stats["ar100"] == 100.0


def test_shifted_boxes_score_lower(dataset: CocoDataset) -> None:
    shifted = ground_truth_as_detections(dataset, dataset.image_ids)
    for det in shifted:
        x, y, w, h = det["bbox"]
        det["bbox"] = [x + 0.2 * w, y + 0.2 * h, w, h]  # IoU 0.47: misses at 0.5 and above
    stats = coco_bbox_stats(dataset.coco, shifted, dataset.image_ids)
    assert stats["ap"] < 5.0
    assert stats["ap50"] < 5.0  # a few shifted boxes still hit a neighbouring object of their class

    slightly = ground_truth_as_detections(dataset, dataset.image_ids)
    for det in slightly:
        x, y, w, h = det["bbox"]
        det["bbox"] = [x + 0.05 * w, y, w, h]  # IoU 0.90
    stats = coco_bbox_stats(dataset.coco, slightly, dataset.image_ids)
    assert stats["ap50"] == 100.0
    assert 50.0 < stats["ap"] < 100.0


def test_no_detections_scores_zero(dataset: CocoDataset) -> None:
    stats = coco_bbox_stats(dataset.coco, [], dataset.image_ids)
    assert stats["ap"] == 0.0 and stats["ap50"] == 0.0 and stats["ar100"] == 0.0


def test_image_ids_restrict_the_evaluation(dataset: CocoDataset) -> None:
    first_ten = dataset.image_ids[:10]
    dets = ground_truth_as_detections(dataset, first_ten)
    assert coco_bbox_stats(dataset.coco, dets, first_ten)["ap"] == 100.0
    assert coco_bbox_stats(dataset.coco, dets, dataset.image_ids)["ar100"] < 50.0


def test_detections_to_coco_converts_boxes_and_labels(dataset: CocoDataset) -> None:
    dets = Detections(
        labels=np.array([0, 79], dtype=np.int64),
        boxes=np.array([[10, 20, 40, 60], [0, 0, 5.5, 2]], dtype=np.float32),
        scores=np.array([0.9, 0.25], dtype=np.float32),
    )
    out = detections_to_coco(42, dets, dataset)
    assert out[0] == {"image_id": 42, "category_id": 1, "bbox": [10, 20, 30, 40], "score": pytest.approx(0.9)}
    assert out[1]["category_id"] == 90 and out[1]["bbox"] == [0.0, 0.0, 5.5, 2.0]
    assert all(isinstance(v, float) for v in out[0]["bbox"])
    empty = Detections(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    assert detections_to_coco(42, empty, dataset) == []


def test_chunked_evaluation_gives_cocoevals_numbers(dataset: CocoDataset) -> None:
    """Evaluating a few images per COCOeval pass and accumulating once equals one pass over all."""
    from pycocotools.cocoeval import COCOeval

    from rtq.data.coco import pycocotools_output_to_debug_log
    from rtq.evaluate.coco_ap import coco_bbox_stats_by_image

    rng = np.random.default_rng(0)
    detections = []
    for d in ground_truth_as_detections(dataset, dataset.image_ids):
        x, y, w, h = d["bbox"]
        jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
        detections.append({**d, "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                           "score": float(rng.random())})  # fmt: skip
        if rng.random() < 0.3:  # a false positive of another category
            detections.append({**d, "category_id": dataset.category_ids[int(rng.integers(80))], "score": 0.5})
    with pycocotools_output_to_debug_log():
        whole = COCOeval(dataset.coco, dataset.coco.loadRes(detections), iouType="bbox")
        whole.params.imgIds = list(dataset.image_ids)
        whole.evaluate()
        whole.accumulate()
        whole.summarize()
    per_image: dict[int, list[dict[str, Any]]] = {}
    for d in detections:
        per_image.setdefault(d["image_id"], []).append(d)
    chunked = coco_bbox_stats_by_image(dataset.coco, per_image, dataset.image_ids, chunk_images=7)
    assert list(chunked.values()) == [round(float(v) * 100.0, 2) if v >= 0 else -1.0 for v in whole.stats]
    assert 0 < chunked["ap"] < 100


def test_streaming_accumulator_equals_cocoeval_accumulate(dataset: CocoDataset) -> None:
    """Precision, recall and scores arrays identical to pycocotools' `accumulate`, chunked by 7 images,
    with over 100 detections in some (image, category) and tied scores (the maxDet cut and the stable
    sort both matter)."""
    from pycocotools.cocoeval import COCOeval

    from rtq.data.coco import pycocotools_output_to_debug_log
    from rtq.evaluate.coco_accumulate import StreamingAccumulator

    rng = np.random.default_rng(1)
    detections = []
    for d in ground_truth_as_detections(dataset, dataset.image_ids):
        x, y, w, h = d["bbox"]
        for _ in range(int(rng.integers(1, 6))):
            jitter = rng.normal(0, 0.2, 4) * [w, h, w, h]
            score = float(np.round(rng.random(), 1))  # ties
            box = [x + jitter[0], y + jitter[1], w + abs(jitter[2]), h]
            detections.append({**d, "bbox": box, "score": score})
    crowded = dataset.image_ids[0]
    category = dataset.category_ids[0]
    detections += [
        {"image_id": crowded, "category_id": category, "bbox": [i, i, 30.0, 30.0], "score": score}
        for i, score in enumerate(rng.random(130).tolist())
    ]
    ids = sorted(dataset.image_ids)
    with pycocotools_output_to_debug_log():
        whole = COCOeval(dataset.coco, dataset.coco.loadRes(detections), iouType="bbox")
        whole.params.imgIds = ids
        whole.evaluate()
        whole.accumulate()
        streaming = StreamingAccumulator(whole.params)
        for start in range(0, len(ids), 7):
            chunk = ids[start : start + 7]
            in_chunk = [d for d in detections if d["image_id"] in chunk]
            part = COCOeval(dataset.coco, dataset.coco.loadRes(in_chunk), iouType="bbox")
            part.params.imgIds = chunk
            part.evaluate()
            streaming.add_chunk(part.evalImgs, len(chunk))
    result = streaming.result()
    for key in ("precision", "recall", "scores"):
        np.testing.assert_array_equal(result[key], whole.eval[key])
    assert (result["precision"] > 0).any()
