"""Stage `sensitivity`: which quantization groups of the detector cost the most accuracy.

The same analysis as `python -m rtq.debug sensitivity` (`rtq.debug.sensitivity_run`), on the run's
detector and calibration images, with the `sensitivity:` config section; it writes
`sensitivity/sensitivity_<model>.{json,md}` and, when `sensitivity.auto_recipe` names one, the
recipe that keeps the worst groups in float.
"""

from __future__ import annotations

from rtq.pipeline.inputs import calibration_source
from rtq.pipeline.stage import StageContext, StageResult, register_stage


@register_stage(
    "sensitivity",
    order=85,
    section="sensitivity",
    needs=("torch_model|source_onnx",),
    records=("sensitivity",),
)
def stage_sensitivity(ctx: StageContext) -> StageResult:
    """Rank the detector's quantization groups; optionally write an auto recipe."""
    from rtq.data.calib import CalibrationImages
    from rtq.debug.sensitivity_run import SensitivitySettings, analyse
    from rtq.pipeline.stage import quant_enabled

    settings = SensitivitySettings.from_mapping(ctx.section("sensitivity"))
    if quant_enabled(ctx.cfg) and ctx.detector.family.source == "torch":
        settings = SensitivitySettings(**{**settings.__dict__, "recipe": str(ctx.cfg.quant.name)})
    source = calibration_source(ctx.cfg)
    images = list(CalibrationImages(source, max_images=settings.calib_images))
    out = ctx.run_dir / "sensitivity"
    command = f"python -m rtq.run experiment={ctx.cfg.experiment_name} (stage sensitivity)"
    result, written = analyse(ctx.detector, settings, images, out, command)
    ranked = sorted(result.groups, key=lambda g: g.only_float.fidelity)
    record = {
        "int8_fidelity": result.int8.fidelity,
        "int8_ap": result.int8.ap,
        "most_sensitive": [g.group for g in ranked[:5]],
        "report": str(written[1]),
        "auto_recipe": str(written[2]) if len(written) > 2 else None,
    }
    ctx.artifacts.reports["sensitivity"] = written[1]
    return StageResult(outputs=written, inputs=[source], record={"sensitivity": record})
