"""Sensitivity metrics: what one number per variant says."""

from __future__ import annotations

import numpy as np


def test_sorted_scores_metric_ignores_detection_order_but_not_confidence() -> None:
    from rtq.compare.metrics import metric

    relative_l2, sorted_scores_l2 = metric("relative_l2"), metric("sorted_scores_l2")

    scores = np.array([[0.9, 0.5, 0.2, 0.1]])
    reference = [{"scores": scores, "boxes": np.arange(16.0).reshape(1, 4, 4)}]
    shuffled = [{"scores": scores[:, ::-1].copy(), "boxes": np.arange(16.0)[::-1].reshape(1, 4, 4)}]
    assert sorted_scores_l2(reference, shuffled) == 0.0
    assert relative_l2(reference, shuffled) > 0.5  # the positional metric reads reordering as error
    lower = [{"scores": scores * 0.9, "boxes": reference[0]["boxes"]}]
    assert abs(sorted_scores_l2(reference, lower) - 0.1) < 1e-12
