"""AP-free distance between two detectors' outputs on the same images: the benchmark's fidelity.

Timing an INT8 model says nothing about whether it still detects the same things; without a
trained checkpoint (no AP) the sorted score profile and the top-1 label are what can be compared.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def score_fidelity(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AP-free distance of two detectors' outputs on the same images.

    `scores` are each image's top-K sorted descending, so comparing them position by position
    compares the confidence profiles without matching boxes; the top-1 label agreement says
    whether the most confident detection kept its class.
    """
    ref, got = np.asarray(reference["scores"]), np.asarray(other["scores"])
    if ref.shape != got.shape:
        raise ValueError(f"score shapes differ: {ref.shape} vs {got.shape}")
    diff = np.abs(ref - got)
    top = min(10, ref.shape[1])
    ref_top1 = float(ref[:, 0].mean())
    same_top1 = np.asarray(reference["labels"])[:, 0] == np.asarray(other["labels"])[:, 0]
    return {
        "max_abs_score_diff": float(diff.max()),
        "max_abs_top10_score_diff": float(diff[:, :top].max()),
        "mean_abs_score_diff": float(diff.mean()),
        "top1_label_agreement": float(same_top1.mean()),
        "reference_top1_score": ref_top1,
    }
