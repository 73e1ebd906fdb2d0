"""Each metric against hand-computed values, and the registry that makes them by name."""

from __future__ import annotations

import numpy as np
import pytest

from rtq.compare.metrics import (
    error_stats,
    known_metrics,
    metric,
    normalised_error,
    paired_detection_report,
    register_metric,
    score_fidelity_report,
)
from rtq.errors import UserError


def _detections(scores: list[float], labels: list[int]) -> dict[str, np.ndarray]:
    boxes = np.array([[10.0 * i, 0.0, 10.0 * i + 5, 5.0] for i in range(len(scores))], np.float32)
    return {"scores": np.array([scores], np.float32), "labels": np.array([labels], np.int64),
            "boxes": boxes[None]}


def test_registry_makes_every_metric_by_name_and_rejects_unknown_names() -> None:
    assert {"relative_l2", "sorted_scores_l2", "output_error", "normalised_error", "score_fidelity",
            "detection_match", "paired_detections"} <= set(known_metrics())
    with pytest.raises(UserError, match="unknown metric 'nope'.*relative_l2"):
        metric("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_metric("relative_l2")(lambda: lambda r, c: 0.0)


def test_relative_l2_is_the_l2_ratio_over_float_outputs_only() -> None:
    reference = [{"x": np.array([3.0, 4.0]), "labels": np.array([1, 2])}]
    candidate = [{"x": np.array([3.0, 4.5]), "labels": np.array([7, 7])}]
    assert metric("relative_l2")(reference, candidate) == pytest.approx(0.5 / 5.0, abs=1e-15)
    assert metric("relative_l2")(reference, reference) == 0.0


def test_sorted_scores_l2_ignores_order_and_measures_the_profile() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.1, 1.0, size=(2, 30)).astype(np.float32)
    reference = [{"scores": scores, "boxes": rng.normal(size=(2, 30, 4))}]
    shuffled = [{"scores": scores[:, rng.permutation(30)], "boxes": rng.normal(size=(2, 30, 4))}]
    assert metric("sorted_scores_l2")(reference, shuffled) == 0.0
    assert metric("relative_l2")(reference, shuffled) > 0.5
    lower = [{"scores": scores * np.float32(0.9)}]
    assert abs(metric("sorted_scores_l2")(reference, lower) - 0.1) < 1e-7


def test_output_error_is_relative_to_each_outputs_magnitude_and_worst_over_feeds() -> None:
    error = metric("output_error")
    reference = [{"boxes": np.array([100.0, 200.0]), "scores": np.array([0.5])}, {"scores": np.array([1.0])}]
    candidate = [{"boxes": np.array([100.0, 202.0]), "scores": np.array([0.5])}, {"scores": np.array([0.95])}]
    assert error(reference, candidate) == pytest.approx(0.05)
    assert error(reference[:1], candidate[:1]) == pytest.approx(0.01)
    assert error([{"a": np.ones(3)}], [{"a": np.ones(2)}]) == float("inf")
    assert error([{"a": np.ones(3)}], [{"a": np.array([1.0, np.nan, 1.0])}]) == float("inf")


def test_error_stats_and_normalised_error() -> None:
    stats = error_stats(np.array([1.0, -2.0, 4.0, 0.0]), np.array([1.0, -2.0, 3.0, 0.0]))
    assert stats["max_abs"] == 1.0 and stats["ref_max_abs"] == 4.0
    assert normalised_error(stats) == pytest.approx(0.25)
    assert normalised_error(error_stats(np.ones(2), np.ones(3))) == float("inf")
    per_output = metric("normalised_error", outputs=["b"])
    reference = [{"a": np.array([1.0]), "b": np.array([2.0, 4.0])}]
    candidate = [{"a": np.array([9.0]), "b": np.array([2.0, 5.0])}]
    assert per_output(reference, candidate) == pytest.approx(0.25)
    assert metric("normalised_error")(reference, candidate) == pytest.approx(8.0)


def test_score_fidelity_report_and_metric() -> None:
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.4, 0.2]], np.float32)
    labels = np.array([[1, 2, 3], [4, 5, 6]])
    other_scores = scores - np.array([[0.0, 0.25, 0.0], [0.5, 0.0, 0.0]], np.float32)
    other_labels = np.array([[1, 2, 3], [7, 5, 6]])
    report = score_fidelity_report({"scores": scores, "labels": labels},
                                   {"scores": other_scores, "labels": other_labels})
    assert report["max_abs_score_diff"] == pytest.approx(0.5)
    assert report["mean_abs_score_diff"] == pytest.approx(0.75 / 6)
    assert report["top1_label_agreement"] == 0.5
    assert report["reference_top1_score"] == pytest.approx(0.85)
    with pytest.raises(ValueError, match="score shapes differ"):
        score_fidelity_report({"scores": scores, "labels": labels},
                              {"scores": scores[:, :2], "labels": labels})
    split = ([{"scores": scores[i:i + 1], "labels": labels[i:i + 1]} for i in range(2)],
             [{"scores": other_scores[i:i + 1], "labels": other_labels[i:i + 1]} for i in range(2)])
    assert metric("score_fidelity")(*split) == pytest.approx(0.5)
    assert metric("score_fidelity", key="top1_label_disagreement")(*split) == 0.5
    with pytest.raises(UserError, match="score_fidelity key 'top1'"):
        metric("score_fidelity", key="top1")


def test_detection_match_counts_unmatched_reference_detections() -> None:
    reference = _detections([0.9, 0.8, 0.7, 0.1], [1, 2, 3, 4])
    candidate = _detections([0.9, 0.8, 0.7, 0.1], [1, 2, 9, 4])  # third detection changed class
    assert metric("detection_match")([reference], [reference]) == 0.0
    assert metric("detection_match")([reference], [candidate]) == pytest.approx(1 / 3)
    assert metric("detection_match", top_k=4)([reference], [candidate]) == pytest.approx(1 / 4)


def test_paired_detections_pair_by_label_and_nearest_box_not_position() -> None:
    reference = _detections([0.9, 0.8, 0.7], [1, 2, 3])
    order = [2, 0, 1]
    swapped = {k: v[:, order] for k, v in reference.items()}
    swapped["scores"] = swapped["scores"] + np.float32(0.01) * (swapped["labels"] == 2)
    report = paired_detection_report(reference, swapped)
    assert report["label_mismatches_matched"] == 0.0 and report["boxes_max_abs_matched"] == 0.0
    assert report["scores_max_abs_matched"] == pytest.approx(0.01, abs=1e-6)
    assert report["boxes_max_abs_positional"] == 20.0
    assert metric("paired_detections")([reference], [swapped]) == pytest.approx(0.01, abs=1e-6)
    relabelled = {**reference, "labels": np.array([[1, 2, 5]])}
    assert metric("paired_detections", key="label_mismatches_matched")(
        [reference, reference], [relabelled, relabelled]) == 2.0
