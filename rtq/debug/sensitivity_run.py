"""One sensitivity analysis of a detector, as the CLI and the pipeline stage both run it.

The detector's family picks the probe: ONNX families get modelopt ONNX PTQ per variant (with COCO AP
where a COCO folder is given), torch families get `rtq.quant.quantize` of copies of the torch model
with the sorted-score fidelity. The settings come from the `sensitivity:` section of
`conf/config.yaml` (the CLI overrides them), so a default lives in one place.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from rtq.debug.sensitivity import Metrics, SensitivityResult
from rtq.errors import UserError
from rtq.models.family import Detector

Measure = Callable[[Sequence[str]], Metrics]
MakeRecipe = Callable[[list[str], str], dict[str, Any]]


@dataclass(frozen=True)
class SensitivitySettings:
    """The `sensitivity:` config section."""

    calib_images: int = 16
    method: str = "max"  # ONNX probe calibration
    recipe: str = "int8_default"  # torch probe base recipe
    coco_root: str | None = None  # AP for ONNX probes (None: fidelity only)
    eval_images: int | None = None
    auto_recipe: str | None = None  # name of the recipe to emit
    max_ap_drop: float | None = None
    max_fidelity: float | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SensitivitySettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown setting sensitivity.{unknown[0]}; known: {', '.join(sorted(known))}")
        return cls(**dict(values))


@dataclass
class SensitivityRun:
    """A prepared analysis: run it, measure a float-group set, write a recipe from a set."""

    run: Callable[[], SensitivityResult]
    measure: Measure
    make_recipe: MakeRecipe


def prepare(
    detector: Detector, settings: SensitivitySettings, images: list[np.ndarray], work_dir: Path
) -> SensitivityRun:
    """The probe of the detector's family over its quantization groups."""
    groups = detector.family.quant_groups(detector)
    setup = _onnx_probe if detector.family.source == "onnx" else _torch_probe
    return setup(detector, settings, groups, images, work_dir)


def _onnx_probe(
    detector: Detector,
    settings: SensitivitySettings,
    groups: dict[str, Any],
    images: list[np.ndarray],
    work_dir: Path,
) -> SensitivityRun:
    """ONNX PTQ of the detector's source graph, with AP where a COCO folder is given."""
    from rtq.data.calib import calibration_batches
    from rtq.debug.auto_recipe import onnx_recipe_dict
    from rtq.debug.onnx_probe import OnnxProbe, onnx_sensitivity

    if detector.source_onnx is None:
        raise UserError(f"{detector.name} has no source ONNX; set model.onnx_path")
    coco = Path(settings.coco_root) if settings.coco_root else None
    feeds = list(calibration_batches(images, detector.io, batch_size=1))
    probe = OnnxProbe(
        detector.source_onnx,
        detector.io,
        feeds,
        groups,
        coco,
        settings.eval_images,
        settings.method,
        work_dir / "models",
    )

    def make_recipe(float_groups: list[str], description: str) -> dict[str, Any]:
        return onnx_recipe_dict(
            str(settings.auto_recipe),
            probe.float_nodes(float_groups),
            description,
            method=settings.method,
            calib_images=settings.calib_images,
        )

    return SensitivityRun(lambda: onnx_sensitivity(probe), probe.measure, make_recipe)


def _torch_probe(
    detector: Detector,
    settings: SensitivitySettings,
    groups: dict[str, Any],
    images: list[np.ndarray],
    work_dir: Path,
) -> SensitivityRun:
    """`rtq.quant.quantize` of copies of the detector's torch model; fidelity of the sorted scores."""
    from rtq.compare.metrics import metric
    from rtq.debug.auto_recipe import recipe_dict
    from rtq.debug.torch_probe import TorchProbe, torch_sensitivity

    if settings.max_ap_drop is not None:
        raise UserError(f"{detector.name} sensitivity measures fidelity: set max_fidelity, not max_ap_drop")
    probe = TorchProbe(
        detector.torch_model,
        [detector.io.preprocess([image])[0] for image in images],
        groups,
        recipe=settings.recipe,
        metric=metric("sorted_scores_l2"),
        metric_name="relative L2 error of the sorted detection scores vs FP32",
    )

    def make_recipe(float_groups: list[str], description: str) -> dict[str, Any]:
        import yaml

        from rtq.quant.recipes import RECIPE_DIR

        base_path = RECIPE_DIR / f"{settings.recipe}.yaml"
        base = yaml.safe_load(base_path.read_text()) if base_path.is_file() else None
        return recipe_dict(str(settings.auto_recipe), [groups[g] for g in float_groups], description, base)

    return SensitivityRun(lambda: torch_sensitivity(probe, detector.name), probe.measure, make_recipe)


def analyse(
    detector: Detector,
    settings: SensitivitySettings,
    images: list[np.ndarray],
    out: Path,
    command: str,
    reused: SensitivityResult | None = None,
) -> tuple[SensitivityResult, list[Path]]:
    """Rank the groups (or take `reused`), write the reports and, if asked, the auto recipe."""
    from rtq.debug.auto_recipe import greedy_float_groups, write_recipe
    from rtq.debug.sensitivity_report import write_reports

    with tempfile.TemporaryDirectory(prefix="rtq-sensitivity-") as work:  # quantized variants, not kept
        prepared = prepare(detector, settings, images, Path(work))
        if reused is not None:
            result = reused
        else:
            result = prepared.run()
            result.command = command
        json_path, md_path = write_reports(result, out, stem=f"sensitivity_{detector.name}")
        written = [json_path, md_path]
        if settings.auto_recipe:
            chosen = greedy_float_groups(
                result, prepared.measure, settings.max_ap_drop, settings.max_fidelity
            )
            last = chosen.steps[-1].metrics
            recipe = prepared.make_recipe(
                chosen.float_groups,
                f"auto recipe for {detector.name}: float groups {chosen.float_groups} "
                f"(target met: {chosen.met}; measured AP {last.ap}, fidelity {last.fidelity:.4f})",
            )
            header = f"Produced by: {command}"
            if reused is not None and reused.command:
                header += f"\nRanking measured by: {reused.command}"
            written.append(write_recipe(recipe, out / f"{settings.auto_recipe}.yaml", header=header))
            print(
                f"auto recipe: float groups {chosen.float_groups}, target met: {chosen.met} -> {written[-1]}"
            )
    return result, written
