"""Auto recipe: keep the most quantization-sensitive groups in float until a target is met.

Greedy on the sensitivity ranking: add the next most sensitive group to the float set, measure the
combined model (sensitivities do not simply add up), stop once the AP drop or the fidelity error is
within the target. The result is a recipe YAML in the schema of `conf/quant/*.yaml`, so
`quant=<name>` / `experiment=int8_<name>` can use it like any shipped recipe: torch models get a
modelopt recipe (`exclude` module globs), ONNX-only models an ONNX PTQ recipe (`level: onnx`,
`exclude_nodes` node regexes), the keys the quantize stage reads for each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtq.debug.sensitivity import Metrics, SensitivityResult
from rtq.errors import UserError
from rtq.files import write_atomic


@dataclass
class AutoRecipeStep:
    """The float set after one greedy step and what it measured."""

    float_groups: list[str]
    metrics: Metrics


@dataclass
class AutoRecipeResult:
    """Chosen float groups, whether the target was reached, and every step on the way."""

    float_groups: list[str]
    met: bool
    steps: list[AutoRecipeStep] = field(default_factory=list)


def target_met(
    metrics: Metrics, fp32: Metrics, max_ap_drop: float | None, max_fidelity: float | None
) -> bool:
    """True when every given target holds (AP drop vs FP32 in points; fidelity error)."""
    if max_ap_drop is None and max_fidelity is None:
        raise UserError("auto recipe needs a target: pass --max-ap-drop POINTS and/or --max-fidelity ERROR")
    if max_ap_drop is not None:
        if metrics.ap is None or fp32.ap is None:
            raise UserError("--max-ap-drop needs COCO labels: pass --coco-root or use --max-fidelity")
        if fp32.ap - metrics.ap > max_ap_drop:
            return False
    return not (max_fidelity is not None and metrics.fidelity > max_fidelity)


def greedy_float_groups(
    sensitivity: SensitivityResult,
    measure: Callable[[Sequence[str]], Metrics],
    max_ap_drop: float | None = None,
    max_fidelity: float | None = None,
    max_groups: int | None = None,
) -> AutoRecipeResult:
    """Add groups to the float set in ranking order until the target is met (or groups run out)."""
    steps = [AutoRecipeStep([], sensitivity.int8)]
    if target_met(sensitivity.int8, sensitivity.fp32, max_ap_drop, max_fidelity):
        return AutoRecipeResult([], True, steps)
    chosen: list[str] = []
    for group in sensitivity.ranked()[: max_groups or None]:
        chosen.append(group.group)
        metrics = measure(list(chosen))
        steps.append(AutoRecipeStep(list(chosen), metrics))
        if target_met(metrics, sensitivity.fp32, max_ap_drop, max_fidelity):
            return AutoRecipeResult(chosen, True, steps)
    return AutoRecipeResult(chosen, False, steps)


def recipe_dict(
    name: str, exclude: Sequence[str], description: str, base_recipe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A recipe mapping: the base recipe's settings with `exclude` extended by the float groups."""
    base = dict(base_recipe or {"base": "INT8_DEFAULT_CFG", "quantizers": [], "exclude": []})
    recipe = {
        "name": name,
        "description": description,
        "base": base.get("base", "INT8_DEFAULT_CFG"),
        "quantizers": list(base.get("quantizers") or []),
        "exclude": [
            *(base.get("exclude") or []),
            *[e for e in exclude if e not in (base.get("exclude") or [])],
        ],
    }
    if "calib" in base:
        recipe["calib"] = base["calib"]
    return recipe


def onnx_recipe_dict(
    name: str,
    exclude_nodes: Sequence[str],
    description: str,
    method: str = "max",
    calib_images: int = 32,
    batch_size: int = 8,
    exclude_op_types: Sequence[str] = (),
) -> dict[str, Any]:
    """An ONNX PTQ recipe (schema of `conf/quant/onnx_int8_max.yaml`) keeping `exclude_nodes` in float.

    The calibration settings should be the ones the sensitivity run measured with, so the pipeline
    reproduces its figures.
    """
    return {
        "name": name,
        "description": description,
        "level": "onnx",
        "method": method,
        "exclude_nodes": list(exclude_nodes),
        "exclude_op_types": list(exclude_op_types),
        "calib": {"max_images": int(calib_images), "batch_size": int(batch_size)},
    }


def write_recipe(recipe: dict[str, Any], path: str | Path, header: str = "") -> Path:
    """Write the recipe YAML (temporary name, then rename)."""
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(recipe, sort_keys=False)
    return write_atomic(path, text)
