"""Stage `localize`: fusion-bug search on the run's Q/DQ ONNX (see `rtq.debug.localize`).

Reads the `localize:` config section (its defaults live in `conf/config.yaml` alone), builds the
oracle it names (the CPU fault simulator, real TensorRT engines, or real OpenVINO compiles), and writes
`localize/report.{json,md}` plus the patched ONNX, so the answer can be opened without rtq.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rtq.errors import UserError
from rtq.paths import PROJECT_ROOT
from rtq.pipeline.inputs import eval_images
from rtq.pipeline.stage import StageContext, StageResult, register_stage

log = logging.getLogger("rtq")
ORACLES = ("fault", "tensorrt", "openvino")
REAL_ORACLES = ("tensorrt", "openvino")


def _makes(cfg: DictConfig, available: frozenset[str]) -> frozenset[str]:
    oracle = str((cfg.get("localize") or {}).get("oracle", "fault"))
    return frozenset({"surgered_onnx"}) if oracle in REAL_ORACLES else frozenset()


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The `localize:` section, checked (one line naming a bad value)."""
    if settings.get("oracle") not in ORACLES:
        raise UserError(
            f"localize.oracle={settings.get('oracle')!r} is not known; use one of {', '.join(ORACLES)}"
        )
    if int(settings.get("num_images", 1)) < 1:
        raise UserError(f"localize.num_images={settings['num_images']} must be at least 1")
    return settings


@register_stage(
    "localize", order=80, section="localize", needs=("qdq_onnx",), makes=_makes, records=("localize",)
)
def stage_localize(ctx: StageContext) -> StageResult:
    """Find the minimal set of extra outputs that restores the Q/DQ model's outputs."""
    import onnx

    from rtq.debug.localize import localize
    from rtq.debug.oracles import FaultInjectionOracle, Oracle, TensorRTOracle
    from rtq.debug.structure import find_fusion_clusters, select_clusters

    settings = check_settings(ctx.section("localize"))
    qdq = ctx.artifacts.qdq_onnx
    assert qdq is not None
    out_dir = ctx.run_dir / "localize"
    model = onnx.load(str(qdq))
    feeds = ctx.detector.io.preprocess(eval_images(ctx, int(settings["num_images"])))[0]
    oracle: Oracle
    candidates = None
    if settings["oracle"] == "tensorrt":
        oracle = TensorRTOracle(qdq, feeds, work_dir=out_dir / "engines", build_config=_build_config(ctx))
    elif settings["oracle"] == "openvino":
        from rtq.backends.openvino.compile import OpenVinoSettings
        from rtq.debug.openvino_oracle import OpenVinoOracle

        backend = ctx.section("backend")
        ov_settings = OpenVinoSettings.from_mapping(backend) if backend.get("name") == "openvino" else None
        from rtq.compare.metrics import metric

        error = metric(str(settings.get("metric") or "output_error"))
        ov_oracle = OpenVinoOracle(qdq, feeds, ov_settings, metric=error)
        candidates = ov_oracle.candidates(settings.get("include"))
        oracle = ov_oracle
    else:
        layers = (
            [int(x) for x in settings["fault_layers"]] if settings.get("fault_layers") is not None else None
        )
        clusters = select_clusters(find_fusion_clusters(model), settings["fault_match"], layers)
        if not clusters:
            raise UserError(
                f"no fusion cluster matches localize.fault_match={settings['fault_match']!r} in "
                f"localize.fault_layers={layers}; pick layers the model has"
            )
        oracle = FaultInjectionOracle(
            model, feeds, clusters, settings["fault"], float(settings["wrong_scale_factor"])
        )
    threshold = settings.get("threshold")
    result = localize(
        model,
        oracle,
        include=settings.get("include"),
        threshold=None if threshold is None else float(threshold),
        verify_equivalents=bool(settings.get("verify_equivalents", True)),
        out_dir=out_dir,
        name=ctx.detector.name,
        candidates=candidates,
    )
    record = {
        "oracle": settings["oracle"],
        "status": result.status,
        "minimal_set": result.minimal_set,
        "builds": result.builds,
        "candidates": result.num_candidates,
        "error_before": result.error_before,
        "error_after": result.error_after,
        "report": str(out_dir / "report.md"),
    }
    log.info(
        "localize (%s oracle): %s, minimal set %s, %d builds for %d candidates; report %s",
        settings["oracle"],
        result.status,
        result.minimal_set,
        result.builds,
        result.num_candidates,
        out_dir / "report.md",
    )
    outputs = [out_dir / "report.md", out_dir / "report.json"]
    if result.patched_onnx:
        outputs.append(Path(result.patched_onnx))
        if settings["oracle"] in REAL_ORACLES:
            # a real fix: later stages (build, compare, evaluate) use the graph that avoids the bad fusion
            ctx.artifacts.surgered_onnx = Path(result.patched_onnx)
    ctx.artifacts.reports["localize"] = out_dir / "report.md"
    return StageResult(outputs=outputs, record={"localize": record})


def _build_config(ctx: StageContext) -> Any:
    """The run's TensorRT settings when the backend is TensorRT, else the builder's defaults."""
    backend = ctx.section("backend")
    if backend.get("name") != "tensorrt":
        return None
    from rtq.backends.tensorrt.build import EngineBuildConfig

    return EngineBuildConfig.from_mapping(backend, base_dir=PROJECT_ROOT)
