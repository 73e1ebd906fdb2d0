"""evaluate_detector through real runners (ONNX Runtime, PyTorch) on bundled COCO images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tiny_detector import BUNDLED, FullImageDetector

from rtq.backends.onnxruntime import make_onnxrt_runner
from rtq.backends.torch import make_torch_runner
from rtq.data.coco import CocoDataset
from rtq.errors import UserError
from rtq.evaluate.coco_ap import STAT_KEYS
from rtq.evaluate.loop import evaluate_detector
from rtq.models.rtdetr import RTDETRIO
from rtq.paths import SHARED_DIR

YOLOX_ONNX = SHARED_DIR / "models" / "yolox_nano.onnx"


def expected_scores(dataset: CocoDataset, io: RTDETRIO) -> np.ndarray:
    feed, _ = io.preprocess([dataset.load_image(item) for item in dataset])
    return feed["images"].mean(axis=(1, 2, 3))


def check_detections(result_dets: list[dict], dataset: CocoDataset, scores: np.ndarray) -> None:
    assert [d["image_id"] for d in result_dets] == dataset.image_ids
    for det, item, score in zip(result_dets, dataset, scores, strict=True):
        assert det["category_id"] == dataset.category_ids[0]
        assert det["bbox"] == [0.0, 0.0, float(item.width), float(item.height)]
        assert det["score"] == pytest.approx(float(score), rel=1e-5)


def test_torch_runner_dynamic_batch_with_smaller_last_batch(small_dataset: CocoDataset) -> None:
    io = RTDETRIO(input_size=32)
    runner = make_torch_runner(FullImageDetector())
    result = evaluate_detector(runner, io, small_dataset, batch_size=3, progress=False)
    assert not runner.is_active
    check_detections(result.detections, small_dataset, expected_scores(small_dataset, io))
    assert list(result.stats) == list(STAT_KEYS)
    assert result.num_images == 7 and result.batch_size == 3
    assert 0 < result.model_seconds <= result.e2e_seconds
    row = result.to_row()
    assert row["fps_e2e"] > 0 and row["fps_model"] >= row["fps_e2e"]
    assert row["ap"] == result.stats["ap"]


def test_static_batch_model_gets_padded_last_batch(
    small_dataset: CocoDataset, detector_onnx: Callable[[int | None], Path]
) -> None:
    io = RTDETRIO(input_size=32)
    runner = make_onnxrt_runner(detector_onnx(3), mode="reference")
    result = evaluate_detector(runner, io, small_dataset, batch_size=3, progress=False)
    check_detections(result.detections, small_dataset, expected_scores(small_dataset, io))
    with pytest.raises(UserError, match="fixed at 3"):
        evaluate_detector(runner, io, small_dataset, batch_size=2, progress=False)


def test_active_runner_stays_active_and_threshold_filters(
    small_dataset: CocoDataset, detector_onnx: Callable[[int | None], Path]
) -> None:
    io = RTDETRIO(input_size=32)
    with make_onnxrt_runner(detector_onnx(None)) as runner:
        everything = evaluate_detector(runner, io, small_dataset, batch_size=4, progress=False)
        assert runner.is_active
        nothing = evaluate_detector(runner, io, small_dataset, 4, score_threshold=1.01, progress=False)
    assert len(everything.detections) == 7
    assert nothing.detections == [] and nothing.stats["ap"] == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not YOLOX_ONNX.is_file(), reason=f"{YOLOX_ONNX} not found (../shared is absent)")
def test_yolox_nano_reaches_its_known_ap() -> None:
    from rtq.models.adapters.yolox import YoloxIO

    dataset = CocoDataset(BUNDLED)
    runner = make_onnxrt_runner(YOLOX_ONNX, mode="fast")
    result = evaluate_detector(runner, YoloxIO(), dataset, batch_size=1, progress=False)
    # Measured independently with ONNX Runtime and pycocotools: AP 30.95, AP50 48.17.
    assert result.stats["ap"] == pytest.approx(30.95, abs=0.5)
    assert result.stats["ap50"] == pytest.approx(48.17, abs=1.0)
