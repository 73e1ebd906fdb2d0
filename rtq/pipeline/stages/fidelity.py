"""Stage `fidelity`: does the Q/DQ ONNX compute what the fake-quant torch model computes?

Torch vs ONNX Runtime (graph optimizations off) on real images, in float32 as deployed and in
float64 (the criterion; see docs/DESIGN.md). The verdict is logged and recorded; a failing
verdict is a warning, since the stage is a diagnostic, not a gate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rtq.cache import file_digest
from rtq.files import write_atomic
from rtq.pipeline.caching import reuse_or_make, stage_key
from rtq.pipeline.inputs import eval_images
from rtq.pipeline.stage import StageContext, StageResult, register_stage

log = logging.getLogger("rtq")


@register_stage(
    "fidelity", order=40, section="export", needs=("quantized_model", "qdq_onnx"), records=("fidelity",)
)
def stage_fidelity(ctx: StageContext) -> StageResult:
    """Compare the fake-quant torch model with its Q/DQ ONNX on `export.fidelity_images` images."""
    from rtq.quant.fidelity import float64_verdict, torch_vs_onnx

    settings = ctx.section("export")
    count = int(settings.get("fidelity_images", 2))
    float64 = bool(settings.get("fidelity_float64", True))
    tolerance = float(settings.get("fidelity_tolerance", 1e-4))
    qdq = ctx.artifacts.qdq_onnx
    assert qdq is not None
    out = ctx.run_dir / "fidelity.json"

    def measure(path: Path) -> None:
        images = eval_images(ctx, count)
        feeds = [ctx.detector.io.preprocess([image])[0] for image in images]
        model = ctx.artifacts.quantized_model
        raw = ctx.detector.family.raw_outputs(model)  # None: the family has no pre-top-k form
        result = torch_vs_onnx(model, qdq, feeds, float64=float64, raw_outputs=raw)
        write_atomic(path, json.dumps(result, indent=2, default=str))

    key = stage_key(ctx, qdq=file_digest(qdq), images=count, float64=float64, data=str(ctx.cfg.data.root))
    hit = reuse_or_make(ctx, "fidelity", key, out, measure)
    result = json.loads(out.read_text())
    log.info("fidelity torch vs ONNX (ORT reference mode): %s", result)
    verdict = float64_verdict(result, tolerance)
    if verdict is not None:
        within, message = verdict
        result["raw_float64_within_tolerance"] = float(within)
        if within:
            log.info(message)
        else:
            log.warning("%s: the exported graph does not compute what the torch model computes", message)
    return StageResult(
        outputs=[out], record={"fidelity": result}, cached=f"fidelity measured before ({key})" if hit else ""
    )
