"""Stage `compare`: Polygraphy comparison of the model under test against ONNX Runtime.

The reference is the graph before surgery in ORT reference mode; the target is the engine, the
surgered graph, or the torch model, whichever the run measures (see `rtq.pipeline.runners`).
"""

from __future__ import annotations

import logging

from rtq.errors import UserError
from rtq.pipeline.inputs import eval_images
from rtq.pipeline.runners import graph_runner, target_runner
from rtq.pipeline.stage import StageContext, StageResult, register_stage

log = logging.getLogger("rtq")


@register_stage("compare", order=70, section="compare", needs=("qdq_onnx|onnx",), records=("compare",))
def stage_compare(ctx: StageContext) -> StageResult:
    """Compare target and reference on `compare.num_images` images; write `compare/report.{md,json}`."""
    from polygraphy.logger import G_LOGGER

    from rtq.compare.compare import CompareSettings, compare_onnx, compare_runners

    settings_cfg = ctx.section("compare")
    art = ctx.artifacts
    reference_graph = art.reference_graph
    assert reference_graph is not None
    feeds = [
        ctx.detector.io.preprocess([image])[0] for image in eval_images(ctx, int(settings_cfg["num_images"]))
    ]
    out_dir = ctx.run_dir / "compare"
    settings = CompareSettings(
        score_threshold=float(settings_cfg["detection_score_threshold"]),
        top_k=settings_cfg.get("detection_top_k"),
        layer_threshold=float(settings_cfg["layerwise_threshold"]),
    )
    layerwise = bool(settings_cfg.get("layerwise"))
    if layerwise and art.engine is not None:
        raise UserError(
            "compare.layerwise=true compares ONNX graphs in ONNX Runtime, but this run built an engine; "
            "set compare.layerwise=false (engine outputs are compared output-wise)"
        )
    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # the numbers go to report.md, not the console
        if layerwise:
            target_graph = art.graph
            assert target_graph is not None
            report = compare_onnx(reference_graph, target_graph, feeds, out_dir, settings, layerwise=True)
            ran = {"backend": "onnxruntime"}
        else:
            reference = graph_runner(ctx, reference_graph, "reference", "reference")
            target, ran = target_runner(ctx, "reference")
            report = compare_runners(reference, target, feeds, out_dir, settings)
    log.info("comparison report: %s", out_dir / "report.md")
    art.reports["compare"] = out_dir / "report.md"
    record = {
        "compare": {
            "target_backend": ran["backend"],
            "report": str(out_dir / "report.md"),
            "summary": report.get("summary", {}),
        }
    }
    return StageResult(outputs=[out_dir / "report.md", out_dir / "report.json"], record=record)
