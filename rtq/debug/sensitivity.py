"""Quantization sensitivity: which part of a detector loses accuracy when it runs in INT8?

For each group of nodes (ONNX models) or modules (PyTorch models) two variants are measured:
"only this group quantized" (its own INT8 cost) and "everything quantized except this group" (what
keeping it in float buys back). Each variant gets a fidelity metric (relative L2 error of the raw
outputs against FP32 on calibration images) and, where labels exist, COCO AP. Ranking by what
leaving a group in float buys back is what the auto recipe consumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Feeds = list[dict[str, np.ndarray]]
Outputs = Sequence[dict[str, np.ndarray]]
Metric = Callable[[Outputs, Outputs], float]


@dataclass
class Metrics:
    """Fidelity (lower is better) and COCO AP in percent (None without labels)."""

    fidelity: float
    ap: float | None = None
    ap50: float | None = None


@dataclass
class GroupSensitivity:
    """One group's two measurements."""

    group: str
    size: int  # nodes (ONNX) or modules (PyTorch) in the group
    only_quantized: Metrics
    only_float: Metrics


@dataclass
class SensitivityResult:
    """Everything a sensitivity run measured, plus how it was produced."""

    model: str
    fp32: Metrics
    int8: Metrics
    groups: list[GroupSensitivity]
    fidelity_metric: str = "relative L2 error of raw outputs vs FP32"
    command: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def ranked(self) -> list[GroupSensitivity]:
        """Most sensitive first: largest AP recovered by leaving the group in float (fidelity if no AP)."""
        return sorted(self.groups, key=lambda g: -recovery(self, g))


def recovery(result: SensitivityResult, group: GroupSensitivity) -> float:
    """What keeping `group` in float buys back: AP points, or the fidelity error removed."""
    if group.only_float.ap is not None and result.int8.ap is not None:
        return group.only_float.ap - result.int8.ap
    return result.int8.fidelity - group.only_float.fidelity


def relative_l2(
    reference: Sequence[dict[str, np.ndarray]], candidate: Sequence[dict[str, np.ndarray]]
) -> float:
    """||q - f|| / ||f|| over every float output of every image: one number, scale-free."""
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


def sorted_scores_l2(
    reference: Sequence[dict[str, np.ndarray]], candidate: Sequence[dict[str, np.ndarray]]
) -> float:
    """`relative_l2` of each image's detection scores sorted high to low: blind to detection order.

    An RT-DETR's top-k detections come from a top-k over near-tied encoder scores, so any change
    anywhere reorders them and a positional comparison reads the same large error for every group;
    the sorted score profile moves with how much quantization shifts the confidences.
    """

    def profile(outputs: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [{"scores": -np.sort(-np.asarray(o["scores"], np.float64), axis=-1)} for o in outputs]

    return relative_l2(profile(reference), profile(candidate))
