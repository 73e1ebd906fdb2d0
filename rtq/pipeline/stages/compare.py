"""Stage `compare`: Polygraphy comparison of the model under test against ONNX Runtime.

The reference is the graph before surgery in ORT reference mode; the target is the compiled model,
the surgered graph, or the torch model, whichever the run measures (see `rtq.pipeline.runners`).
Layer-wise, the target is the graph in ONNX Runtime or, with `backend=openvino`, in OpenVINO with
every tensor marked (which changes its fusions: the report says so). Graphs that end before
detections (YOLOX) are decoded by the detector's own post-processing for the detection match.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from rtq.errors import UserError
from rtq.pipeline.inputs import eval_images
from rtq.pipeline.runners import graph_runner, openvino_marking_runner, target_runner
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
    images = eval_images(ctx, int(settings_cfg["num_images"]))
    prepared = [ctx.detector.io.preprocess([image]) for image in images]
    feeds = [feed for feed, _ in prepared]

    def decode(index: int, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw outputs of feed `index` -> detections with a batch axis (graphs without a detection head)."""
        dets = ctx.detector.io.postprocess(dict(outputs), prepared[index][1])[0]
        return {"labels": dets.labels[None], "boxes": dets.boxes[None], "scores": dets.scores[None]}

    out_dir = ctx.run_dir / "compare"
    settings = CompareSettings(
        score_threshold=float(settings_cfg["detection_score_threshold"]),
        top_k=settings_cfg.get("detection_top_k"),
        layer_threshold=float(settings_cfg["layerwise_threshold"]),
    )
    layerwise = bool(settings_cfg.get("layerwise"))
    compiler = art.engine_compiler if art.engine is not None else ""
    if layerwise and compiler == "tensorrt":
        raise UserError(
            "compare.layerwise=true marks tensors of ONNX graphs, but this run built a TensorRT engine; "
            "set compare.layerwise=false (engine outputs are compared output-wise)"
        )
    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # the numbers go to report.md, not the console
        if layerwise:
            target_graph = art.graph
            assert target_graph is not None
            make_target, notes, ran = None, [], {"backend": "onnxruntime"}
            if ctx.section("backend").get("name") == "openvino":
                make_target, ran = openvino_marking_runner(ctx), {"backend": "openvino"}
                notes = [
                    "every compared tensor is marked as an output of the OpenVINO model, and a marked "
                    "tensor must exist in memory: marking breaks the fusions across it, so this measures "
                    "a differently compiled model than the unmarked one (see the non-invasive compare)"
                ]
            report = compare_onnx(
                reference_graph, target_graph, feeds, out_dir, settings, layerwise=True,
                make_target=make_target, decode=decode, notes=notes,
            )
        else:
            reference = graph_runner(ctx, reference_graph, "reference", "reference")
            target, ran = target_runner(ctx, "reference")
            report = compare_runners(reference, target, feeds, out_dir, settings, decode=decode)
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
