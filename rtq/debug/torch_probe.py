"""Sensitivity of a torch detector: `rtq.quant.quantize` with module groups left in float.

Each variant is the base recipe plus exclusions, quantized exactly as the pipeline quantizes
(glob check, calibration, histogram finishing, weights snapped to the INT8 grid), on a copy of
the FP32 model, so the ranking measures the quantization that would be deployed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rtq.compare.metrics import Metric
from rtq.compare.metrics import metric as metric_factory
from rtq.debug.sensitivity import Feeds, GroupSensitivity, Metrics, SensitivityResult
from rtq.quant.recipes import Recipe


class TorchProbe:
    """Quantizes copies of a PyTorch model (modelopt fake-quant) with some module groups left in float.

    Fidelity only: the error of the outputs against the FP32 model on the calibration feeds (AP
    would need the whole evaluation per variant; the pipeline measures the chosen one).
    """

    def __init__(
        self,
        model: Any,
        calib_feeds: Feeds,
        groups: dict[str, str],
        recipe: Recipe | str = "int8_default",
        log: Callable[[str], None] = print,
        metric: Metric | None = None,
        metric_name: str = "relative L2 error of the outputs vs FP32",
    ) -> None:
        from rtq.quant.recipes import load_recipe

        self.model = model.eval()  # FP32, never modified: every variant quantizes a copy
        self.calib_feeds = calib_feeds
        self.groups = groups
        self.base = load_recipe(recipe) if isinstance(recipe, str) else recipe
        self.metric: Metric = metric if metric is not None else metric_factory("relative_l2")
        self.metric_name = metric_name
        self.log = log
        self.reference = self._outputs(self.model)

    @property
    def recipe(self) -> str:
        return self.base.name

    def _outputs(self, model: Any) -> list[dict[str, np.ndarray]]:
        import torch

        results = []
        with torch.no_grad():
            for feed in self.calib_feeds:
                out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
                if not isinstance(out, dict):
                    out = dict(zip(("labels", "boxes", "scores"), out, strict=False))
                results.append({k: v.float().numpy() for k, v in out.items()})
        return results

    def recipe_without(self, float_groups: Sequence[str]) -> Recipe:
        """The base recipe with `float_groups` added to its exclusions."""
        return replace(self.base, exclude=(*self.base.exclude, *(self.groups[g] for g in float_groups)))

    def measure(self, float_groups: Sequence[str], tag: str | None = None) -> Metrics:
        """Quantize everything except `float_groups` (recipe exclusions), return the fidelity."""
        from rtq.quant.quantize import NothingToQuantize, quantize

        if tag is None:
            tag = "float_" + "+".join(float_groups) if float_groups else "int8_all"
        try:
            model = quantize(self.model, self.recipe_without(float_groups), self.calib_feeds)
        except NothingToQuantize:
            self.log(f"  {tag:<28} nothing left to quantize: the FP32 model")
            return Metrics(0.0)
        fidelity = self.metric(self.reference, self._outputs(model))
        self.log(f"  {tag:<28} fidelity {fidelity:.4f}")
        return Metrics(fidelity)


def torch_sensitivity(probe: TorchProbe, model_name: str = "pytorch") -> SensitivityResult:
    """Fidelity sensitivity of a PyTorch model: per group, quantize only it and everything but it."""
    started = time.perf_counter()
    int8 = probe.measure([])
    rows = []
    for name in probe.groups:
        others = [g for g in probe.groups if g != name]
        rows.append(
            GroupSensitivity(
                name,
                1,
                probe.measure(others, tag=f"only_{name}_int8"),
                probe.measure([name], tag=f"only_{name}_float"),
            )
        )
    return SensitivityResult(
        model=model_name,
        fp32=Metrics(0.0),
        int8=int8,
        groups=rows,
        fidelity_metric=probe.metric_name,
        seconds=time.perf_counter() - started,
        settings={
            "recipe": probe.recipe,
            "calibration_images": sum(len(next(iter(f.values()))) for f in probe.calib_feeds),
        },
    )
