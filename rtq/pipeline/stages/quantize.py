"""Stage `quantize`: a fake-quant copy of the torch model, calibrated with a modelopt recipe.

The calibrated model is cached as modelopt's own checkpoint (`mto.save`: quantizer state and
weights), so a re-run restores the same quantized model instead of skipping the stage: every
later stage (export, fidelity, a torch evaluation) sees the model the recipe made.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from rtq.errors import StageSkipped
from rtq.pipeline.caching import stage_key
from rtq.pipeline.inputs import calibration_source
from rtq.pipeline.stage import StageContext, StageResult, made_if_quantized, quant_enabled, register_stage

log = logging.getLogger("rtq")


def _source_listing(folder: str) -> list[str]:
    from rtq.data.calib import find_calibration_images

    return [f"{p.name}:{p.stat().st_size}" for p in find_calibration_images(folder)]


@register_stage(
    "quantize",
    order=10,
    section="quant",
    needs=("torch_model",),
    makes=made_if_quantized("quantized_model"),
    records=("quantizers",),
)
def stage_quantize(ctx: StageContext) -> StageResult:
    """Calibrate a copy of the torch model with the `quant` recipe (modelopt fake-quant)."""
    from rtq.quant.recipes import check_module_globs, prepare_model, recipe_from_dict

    if not quant_enabled(ctx.cfg):
        raise StageSkipped("quant=none: nothing to quantize")
    recipe = recipe_from_dict(ctx.section("quant"))
    source = calibration_source(ctx.cfg)
    fp32 = ctx.detector.torch_model
    check_module_globs(recipe, fp32)  # before the cache and modelopt's import: a bad glob fails at once

    import modelopt.torch.opt as mto

    from rtq.quant.calibrate import calibration_feeds
    from rtq.quant.quantize import quantize
    from rtq.quant.summary import print_summary, quantizer_summary

    key = stage_key(ctx, quant=ctx.section("quant"), calib=_source_listing(source))
    cached = ctx.cache.lookup("quantized", key, "modelopt_state.pth")
    if cached is not None:
        model = mto.restore(prepare_model(copy.deepcopy(fp32), recipe), str(cached))  # the saved form
        how = f"calibrated model restored from the cache ({key})"
    else:
        feeds = calibration_feeds(recipe, ctx.detector.io, source=source)
        log.info("calibrating %s with recipe %s on %d batches", ctx.detector.name, recipe.name, len(feeds))
        model = quantize(fp32, recipe, feeds, progress=True)  # a calibrated copy; the FP32 model stays
        out = ctx.run_dir / "modelopt_state.pth"
        mto.save(model, str(out))
        ctx.cache.store("quantized", key, Path(out))
        how = ""
    model.eval()
    summary = quantizer_summary(model)
    print_summary(summary)
    ctx.artifacts.quantized_model, ctx.artifacts.quantized_key = model, key
    return StageResult(inputs=[source], record={"quantizers": summary}, cached=how)
