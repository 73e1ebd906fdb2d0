"""Stage `export`: the deploy ONNX with a symbolic batch (Q/DQ when the model was quantized).

A torch family exports its deploy model (the fake-quant copy after `quantize`); an ONNX family
writes its source file with the batch made symbolic. Either way the file is cached by a key of
everything that shapes it.
"""

from __future__ import annotations

from omegaconf import DictConfig

from rtq.pipeline.caching import reuse_or_make, stage_key
from rtq.pipeline.stage import StageContext, StageResult, register_stage


def _makes(cfg: DictConfig, available: frozenset[str]) -> frozenset[str]:
    return frozenset({"qdq_onnx"} if "quantized_model" in available else {"onnx"})


@register_stage("export", order=20, section="export", needs=("torch_model|source_onnx",), makes=_makes)
def stage_export(ctx: StageContext) -> StageResult:
    """Write `model.onnx` (FP32) or `model.int8.onnx` (Q/DQ), symbolic batch `N`."""
    art = ctx.artifacts
    quantized = art.quantized_model is not None
    model = art.deployed_torch_model
    out = ctx.run_dir / ("model.int8.onnx" if quantized else "model.onnx")
    settings = ctx.section("export")
    opset, simplify = int(settings.get("opset", 17)), bool(settings.get("simplify", False))
    shaping = {"opset": opset, "simplify": simplify}
    key = stage_key(ctx, export=shaping, quantized=art.quantized_key if quantized else None)
    hit = reuse_or_make(
        ctx,
        "onnx",
        key,
        out,
        lambda path: ctx.detector.family.export(ctx.detector, model, path, opset, simplify),
    )
    if quantized:
        art.qdq_onnx = out
    else:
        art.onnx = out
    return StageResult(outputs=[out], cached=f"exported ONNX reused ({key})" if hit else "")
