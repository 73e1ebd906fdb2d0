"""Error statistics between a reference and a target array, the numbers every comparison table shows."""

from __future__ import annotations

from typing import Any

import numpy as np

REL_EPS = 1e-6  # keeps relative error finite where the reference is zero


def error_stats(reference: Any, target: Any) -> dict[str, float | bool | list[int]]:
    """max/mean/median/p99 of absolute and relative error, plus the reference magnitude.

    Relative error is |t - r| / (|r| + 1e-6): defined everywhere, large only where it matters.
    Shapes that differ are reported, not broadcast.
    """
    r = np.asarray(reference)
    t = np.asarray(target)
    if r.shape != t.shape:
        return {"shape_mismatch": True, "reference_shape": list(r.shape), "target_shape": list(t.shape)}
    r64 = r.astype(np.float64).reshape(-1)
    t64 = t.astype(np.float64).reshape(-1)
    if r64.size == 0:
        return {"shape_mismatch": False, "size": 0}
    finite = np.isfinite(r64) & np.isfinite(t64)
    abs_err = np.abs(t64 - r64)[finite]
    rel_err = abs_err / (np.abs(r64[finite]) + REL_EPS)
    if abs_err.size == 0:
        abs_err = rel_err = np.array([np.inf])
    return {
        "shape_mismatch": False,
        "size": int(r64.size),
        "nonfinite": int((~finite).sum()),
        "max_abs": float(abs_err.max()),
        "mean_abs": float(abs_err.mean()),
        "median_abs": float(np.median(abs_err)),
        "p99_abs": float(np.quantile(abs_err, 0.99)),
        "max_rel": float(rel_err.max()),
        "mean_rel": float(rel_err.mean()),
        "median_rel": float(np.median(rel_err)),
        "p99_rel": float(np.quantile(rel_err, 0.99)),
        "ref_max_abs": float(np.abs(r64[finite]).max()) if finite.any() else float("nan"),
    }


def normalised_error(stats: dict[str, Any]) -> float:
    """max_abs relative to the reference's largest magnitude: one scale-free number per tensor."""
    if stats.get("shape_mismatch"):
        return float("inf")
    if not stats.get("size"):
        return 0.0
    return float(stats["max_abs"]) / (float(stats["ref_max_abs"]) + REL_EPS)
