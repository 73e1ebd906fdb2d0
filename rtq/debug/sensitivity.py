"""Quantization sensitivity: which part of a detector loses accuracy when it runs in INT8?

For each group of nodes (ONNX models) or modules (PyTorch models) two variants are measured:
"only this group quantized" (its own INT8 cost) and "everything quantized except this group" (what
keeping it in float buys back). Each variant gets a fidelity metric (relative L2 error of the raw
outputs against FP32 on calibration images) and, where labels exist, COCO AP. Ranking by what
leaving a group in float buys back is what the auto recipe consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Feeds = list[dict[str, np.ndarray]]


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
