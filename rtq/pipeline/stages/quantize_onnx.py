"""Stage `quantize_onnx`: modelopt ONNX post-training quantization of an FP32 ONNX (ONNX families)."""

from __future__ import annotations

import logging
from pathlib import Path

from rtq.errors import StageSkipped, UserError
from rtq.pipeline.caching import reuse_or_make, stage_key
from rtq.pipeline.inputs import calibration_source
from rtq.pipeline.stage import StageContext, StageResult, made_if_quantized, quant_enabled, register_stage

log = logging.getLogger("rtq")


@register_stage(
    "quantize_onnx",
    order=30,
    section="quant",
    needs=("onnx",),
    makes=made_if_quantized("qdq_onnx"),
    records=("quantizers",),
)
def stage_quantize_onnx(ctx: StageContext) -> StageResult:
    """Calibrate the FP32 ONNX on images and write `model.int8.onnx` (Q/DQ) with the `quant` recipe."""
    import onnx

    from rtq.cache import file_digest
    from rtq.data.calib import CalibrationImages, calibration_batches
    from rtq.quant.onnx_ptq import qdq_summary, quantize_onnx

    if not quant_enabled(ctx.cfg):
        raise StageSkipped("quant=none: nothing to quantize")
    quant = ctx.section("quant")
    if quant.get("level") != "onnx":
        raise UserError(
            f"quant={quant.get('name')} is a torch recipe; stage quantize_onnx takes `level: onnx` recipes "
            "(e.g. quant=onnx_int8_max), or use stage quantize before export"
        )
    source = calibration_source(ctx.cfg)
    fp32 = ctx.artifacts.onnx
    assert fp32 is not None  # the driver checked `needs`
    out = ctx.run_dir / "model.int8.onnx"
    calib = dict(quant.get("calib") or {})

    def make(path: Path) -> None:
        images = CalibrationImages(source, max_images=calib.get("max_images"))
        feeds = list(calibration_batches(images, ctx.detector.io, int(calib.get("batch_size", 8))))
        if not feeds:
            raise UserError(f"no calibration images in {source}; set data.calib.source=PATH")
        quantize_onnx(
            fp32,
            path,
            feeds,
            method=str(quant["method"]),
            exclude_nodes=list(quant.get("exclude_nodes") or []),
            exclude_op_types=list(quant.get("exclude_op_types") or []),
        )

    key = stage_key(ctx, onnx=file_digest(fp32), quant=quant, calib=source)
    hit = reuse_or_make(ctx, "onnx_ptq", key, out, make)
    qdq = qdq_summary(onnx.load(str(out)))
    log.info("%s", qdq.line())
    ctx.artifacts.qdq_onnx = out
    record = {
        "quantizers": {
            "quantize_nodes": qdq.quantize_nodes,
            "dequantize_nodes": qdq.dequantize_nodes,
            "int8_by_op": qdq.int8_by_op,
            "float_by_op": qdq.float_by_op,
            "float_nodes": qdq.float_compute,
        }
    }
    return StageResult(
        outputs=[out], inputs=[source], record=record, cached=f"quantized ONNX reused ({key})" if hit else ""
    )
