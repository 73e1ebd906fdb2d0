"""Stage `build`: compile the newest graph for the configured compiler (TensorRT or OpenVINO).

The chain does not care which compiler: the stage leaves `engine` (the compiled model) and
`engine_compiler`, and the runners pick it up. Beside the compiled model it writes the layer list
(`<stem>.layers.json`) and, for OpenVINO, a readable report (`layers.md`: precision per layer,
top layers by time, the fusion list) and, when a surgery changed the graph, the fusion diff of the
direct Q/DQ graph against the surgered one (`fusion_diff.md`): which fusions the surgery removed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rtq.errors import StageSkipped
from rtq.paths import PROJECT_ROOT
from rtq.pipeline.stage import StageContext, StageResult, register_stage

COMPILERS = ("tensorrt", "openvino")
log = logging.getLogger("rtq")


@register_stage(
    "build", order=60, section="backend", needs=("surgered_onnx|qdq_onnx|onnx",), makes=("engine",)
)
def stage_build(ctx: StageContext) -> StageResult:
    """Build (or reuse from the compiled-model cache) the newest graph for the backend's compiler."""
    backend = ctx.section("backend")
    name = backend.get("name")
    if name == "openvino":
        return _build_openvino(ctx)
    if name != "tensorrt":
        raise StageSkipped(f"backend={name} compiles nothing; set backend to one of {', '.join(COMPILERS)}")
    from rtq.backends.tensorrt.build import EngineBuildConfig, build_engine
    from rtq.backends.tensorrt.compat import import_tensorrt

    import_tensorrt()  # StageSkipped("TensorRT not installed") when absent
    graph = ctx.artifacts.graph
    assert graph is not None
    config = EngineBuildConfig.from_mapping(backend, base_dir=PROJECT_ROOT)
    out = ctx.run_dir / "model.plan"
    build_engine(graph, out, config, cache_dir=Path(str(ctx.cfg.cache_dir)) / "engines")
    ctx.artifacts.engine, ctx.artifacts.engine_compiler = out, "tensorrt"
    return StageResult(outputs=[out])


def _build_openvino(ctx: StageContext) -> StageResult:
    from rtq.backends.layers import diff_engines, load_layer_list, write_diff_report
    from rtq.backends.openvino.compile import OpenVinoSettings, build_compiled, layers_json_path
    from rtq.backends.openvino.inspect import fusions, inspection_markdown, onnx_op_types
    from rtq.files import write_atomic

    art = ctx.artifacts
    graph = art.graph
    assert graph is not None
    settings = OpenVinoSettings.from_mapping(ctx.section("backend"))
    cache_dir = Path(str(ctx.cfg.cache_dir)) / "compiled"
    out = ctx.run_dir / "model.blob"
    build_compiled(graph, out, settings, cache_dir=cache_dir)
    layers = load_layer_list(layers_json_path(out))
    op_types = onnx_op_types(graph)
    report = ctx.run_dir / "layers.md"
    touching = [str(n) for n in (ctx.section("backend").get("report_touching") or [])]
    write_atomic(report, inspection_markdown(layers, op_types, f"OpenVINO: {graph.name}", touching=touching))
    outputs = [out, layers_json_path(out), report]
    precisions = sorted(
        {layer.precision for layer in layers if layer.type in ("Convolution", "FullyConnected")}
    )
    log.info(
        "OpenVINO (%s, %s): %d layers, %d fusions, Conv/FC precisions %s; %s",
        settings.inference_precision,
        settings.performance_hint,
        len(layers),
        len(fusions(layers, op_types)),
        ",".join(precisions),
        report,
    )
    direct = art.qdq_onnx or art.onnx
    if art.surgered_onnx is not None and direct is not None:
        direct_blob = ctx.run_dir / "direct" / "model.blob"
        build_compiled(direct, direct_blob, settings, cache_dir=cache_dir)
        diff = diff_engines(
            load_layer_list(layers_json_path(direct_blob)), layers, "direct", "surgered", ignore_unmapped=True
        )
        outputs += list(write_diff_report(diff, ctx.run_dir / "fusion_diff"))
        log.info(
            "fusion diff, direct vs surgered graph: %d fusion changes (%s)",
            len(diff.fusion_changes),
            ctx.run_dir / "fusion_diff.md",
        )
        art.reports["fusion_diff"] = ctx.run_dir / "fusion_diff.md"
    art.engine, art.engine_compiler = out, "openvino"
    art.reports["layers"] = report
    return StageResult(outputs=outputs)
