"""The benchmark's AP-free fidelity figure: sorted score profiles and top-1 labels."""

from __future__ import annotations

import numpy as np
import pytest

from rtq.compare.metrics import score_fidelity_report as score_fidelity


def test_score_fidelity() -> None:
    scores = np.array([[0.9, 0.5, 0.1]], dtype=np.float32)
    labels = np.array([[3, 1, 2]])
    same = score_fidelity({"scores": scores, "labels": labels}, {"scores": scores, "labels": labels})
    assert same["max_abs_score_diff"] == 0.0 and same["top1_label_agreement"] == 1.0
    other = score_fidelity({"scores": scores, "labels": labels},
                           {"scores": scores - 0.25, "labels": labels + 1})
    assert other["max_abs_score_diff"] == pytest.approx(0.25) and other["top1_label_agreement"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        score_fidelity({"scores": scores, "labels": labels}, {"scores": scores[:, :2], "labels": labels})
