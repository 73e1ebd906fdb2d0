"""The benchmark's `raw` fidelity: raw-head outputs as tensors and as decoded, matched detections."""

from __future__ import annotations

import numpy as np
import pytest

from rtq.evaluate.bench_run import raw_fidelity_report
from rtq.models.adapters.yolox import YoloxIO
from rtq.models.io import ImageMeta


def _raw(score: float, extra: bool = False) -> dict[str, np.ndarray]:
    """A YOLOX head output for one 32-pixel image: 21 anchors, 2 classes, one box at anchor 0."""
    raw = np.zeros((1, 21, 7), np.float32)
    raw[0, 0, 4:7] = [1.0, score, 0.0]  # objectness 1, class 0 at `score`
    if extra:
        raw[0, 20, 4:7] = [1.0, 0.0, 0.9]  # a second, class-1 box the reference does not have
    return {"output": raw}


def test_raw_fidelity_scores_the_tensor_and_matches_the_decoded_detections() -> None:
    io = YoloxIO(input_size=32, strides=(8, 16, 32))
    metas = [ImageMeta(width=32, height=32)]
    same = raw_fidelity_report(_raw(0.8), _raw(0.8), io, metas)
    assert same["relative_l2"] == 0.0 and same["max_abs_diff"] == 0.0
    assert same["matched"] == same["reference_detections"] == 1 and same["matched_fraction"] == 1.0
    other = raw_fidelity_report(_raw(0.8), _raw(0.7, extra=True), io, metas)
    assert other["relative_l2"] > 0 and other["max_abs_diff"] == pytest.approx(1.0)  # the new objectness
    assert other["matched_fraction"] == 1.0 and other["target_matched_fraction"] == 0.5
    assert other["score_abs_error_max"] == pytest.approx(0.1, abs=1e-6)
