"""The `localize` pipeline stage: fusion-bug search on the run's Q/DQ ONNX.

Reads the `localize:` config block, builds the oracle it names (the CPU fault simulator or real
TensorRT engines), runs `localize` and writes `localize/report.{json,md}` plus the patched ONNX
into the run directory, so the stage's answer can be opened without rtq.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from rtq.errors import UserError

if TYPE_CHECKING:
    from rtq.stages import RunContext

log = logging.getLogger("rtq")

DEFAULTS: dict[str, Any] = {
    "oracle": "fault",  # fault: CPU fault-injection simulator | tensorrt: real engine builds
    "fault_layers": [1],  # simulator: decoder layers whose cross-attention fusion is faulty
    "fault_match": "sampling_offsets",  # simulator: regex on the faulty cluster's node names
    "fault": "wrong_scale",  # simulator: wrong_scale | fp16 | bf16
    "wrong_scale_factor": 0.05,
    "threshold": None,  # error counted as fixed (None: 5 % above the all-marked error)
    "include": None,  # regex restricting the candidate tensors
    "num_images": 1,
    "verify_equivalents": True,
}


def localize_settings(cfg: DictConfig) -> dict[str, Any]:
    """The `localize:` block over the defaults; an unknown key is a user error (typos fail early)."""
    given = cfg.get("localize") or {}
    own = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig) else dict(given)
    assert isinstance(own, dict)
    unknown = sorted(set(own) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown key localize.{unknown[0]}; known keys: {', '.join(DEFAULTS)}")
    settings = {**DEFAULTS, **own}
    if settings["oracle"] not in ("fault", "tensorrt"):
        raise UserError(f"localize.oracle={settings['oracle']!r} is not known; use fault or tensorrt")
    if int(settings["num_images"]) < 1:
        raise UserError(f"localize.num_images={settings['num_images']} must be at least 1")
    return settings


def stage_localize(ctx: RunContext) -> list[Path]:
    """Find the minimal set of extra outputs that restores the Q/DQ model's outputs (see localize.py)."""
    import onnx

    from rtq.debug.localize import localize
    from rtq.debug.oracles import FaultInjectionOracle, Oracle, TensorRTOracle
    from rtq.debug.structure import find_fusion_clusters, select_clusters
    from rtq.stages import _eval_images

    settings = localize_settings(ctx.cfg)
    if ctx.onnx_qdq is None:
        raise UserError(
            "the localize stage needs a Q/DQ ONNX: put export (and quantize) before it in `stages`"
        )
    out_dir = ctx.run_dir / "localize"
    model = onnx.load(str(ctx.onnx_qdq))
    images = _eval_images(ctx, int(settings["num_images"]))
    feeds = ctx.detector.io.preprocess(images)[0]
    oracle: Oracle
    if settings["oracle"] == "tensorrt":
        oracle = TensorRTOracle(
            ctx.onnx_qdq, feeds, work_dir=out_dir / "engines", build_config=_build_config(ctx)
        )
    else:
        layers = [int(x) for x in settings["fault_layers"]] if settings["fault_layers"] is not None else None
        clusters = select_clusters(find_fusion_clusters(model), settings["fault_match"], layers)
        if not clusters:
            raise UserError(
                f"no fusion cluster matches localize.fault_match={settings['fault_match']!r} in "
                f"localize.fault_layers={layers}; pick layers the model has"
            )
        oracle = FaultInjectionOracle(
            model, feeds, clusters, settings["fault"], float(settings["wrong_scale_factor"])
        )
    result = localize(
        model,
        oracle,
        include=settings["include"],
        threshold=None if settings["threshold"] is None else float(settings["threshold"]),
        verify_equivalents=bool(settings["verify_equivalents"]),
        out_dir=out_dir,
        name=ctx.detector.name,
    )
    ctx.row["localize"] = {
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
        if settings["oracle"] == "tensorrt":
            # a real fix: later stages (build, compare, evaluate) use the graph that avoids the bad fusion
            ctx.onnx = Path(result.patched_onnx)
    return outputs


def _build_config(ctx: RunContext) -> Any:
    """The run's TensorRT settings when the backend is TensorRT, else the builder's defaults."""
    if str(ctx.cfg.backend.get("name", "")) != "tensorrt":
        return None
    from rtq.backends.tensorrt.build import EngineBuildConfig
    from rtq.paths import PROJECT_ROOT

    backend = OmegaConf.to_container(ctx.cfg.backend, resolve=True)
    assert isinstance(backend, dict)
    return EngineBuildConfig.from_mapping({str(k): v for k, v in backend.items()}, base_dir=PROJECT_ROOT)
