"""Stage `build`: compile the newest graph for the configured compiler (TensorRT today)."""

from __future__ import annotations

from pathlib import Path

from rtq.errors import StageSkipped
from rtq.paths import PROJECT_ROOT
from rtq.pipeline.stage import StageContext, StageResult, register_stage


@register_stage(
    "build", order=60, section="backend", needs=("surgered_onnx|qdq_onnx|onnx",), makes=("engine",)
)
def stage_build(ctx: StageContext) -> StageResult:
    """Build (or reuse from the engine cache) a TensorRT engine of the newest graph."""
    backend = ctx.section("backend")
    if backend.get("name") != "tensorrt":
        raise StageSkipped(f"backend={backend.get('name')} compiles nothing; set backend=tensorrt to build")
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
