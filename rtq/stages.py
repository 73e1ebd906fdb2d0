"""The stages of an experiment and the chain that runs them.

Each stage takes the run context (config, run directory, artifacts so far), writes its artifacts
into the run directory and records itself in `stages.json`. A stage that cannot run on this
machine (no TensorRT) raises `StageSkipped`; the chain goes on with the stages that do not need it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rtq.cache import ArtifactCache, cache_key, code_digest, file_digest
from rtq.debug.stage import stage_localize
from rtq.errors import StageSkipped, UserError
from rtq.files import write_atomic
from rtq.models.io import DetectorIO

if TYPE_CHECKING:
    from rtq.backends.onnxruntime import Mode as OrtMode

log = logging.getLogger("rtq")


@dataclass
class StageRecord:
    """One line of `stages.json`: what a stage read, wrote and how long it took."""

    stage: str
    status: str  # ok | skipped | cached
    seconds: float
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class Detector:
    """The model under test: its pre/post-processing and its torch module or source ONNX."""

    name: str
    family: str
    io: DetectorIO
    torch_model: Any = None  # deploy-form nn.Module (fake-quant after the quantize stage)
    source_onnx: Path | None = None  # detectors that exist only as ONNX
    random_weights: bool = False


@dataclass
class RunContext:
    """Everything the stages share: the config, the run directory and the artifacts so far."""

    cfg: DictConfig
    run_dir: Path
    detector: Detector
    cache: ArtifactCache
    onnx: Path | None = None  # the current ONNX (after export / quantize / surgery)
    onnx_qdq: Path | None = None  # the quantized (or FP32) ONNX before surgery: comparison reference
    engine: Path | None = None
    row: dict[str, Any] = field(default_factory=dict)
    records: list[StageRecord] = field(default_factory=list)
    pending_inputs: list[str] = field(default_factory=list)

    def calib_source(self) -> str:
        """Calibration images: the recipe's own `quant.calib.source` if set, else the dataset's."""
        own = self.cfg.quant.get("calib", {}).get("source")
        return str(own or self.cfg.data.calib.source)


StageFn = Callable[[RunContext], list[Path]]


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


# ----------------------------------------------------------------------------------- model loading


def load_detector(cfg: DictConfig) -> Detector:
    """Build the detector named by `cfg.model` (RT-DETR in torch, or an ONNX file + adapter)."""
    family = str(cfg.model.get("family", "rtdetr"))
    name = str(cfg.model.name)
    if family == "rtdetr":
        from rtq.models import build_deploy_model
        from rtq.models.rtdetr import RTDETRIO

        checkpoint = cfg.model.get("checkpoint")
        model = build_deploy_model(name, checkpoint)
        return Detector(name, family, RTDETRIO(), torch_model=model, random_weights=checkpoint is None)
    if family == "onnx":
        from rtq.models.adapters import build_adapter

        path = Path(str(cfg.model.onnx_path))
        if not path.is_file():
            raise UserError(f"model.onnx_path={path} does not exist; point it at the detector's ONNX file")
        io = build_adapter(str(cfg.model.adapter), **(_container(cfg.model.get("adapter_options")) or {}))
        return Detector(name, family, io, source_onnx=path)
    raise UserError(f"model.family={family!r} is not known; use 'rtdetr' or 'onnx'")


# ---------------------------------------------------------------------------------------- stages


def _quant_enabled(cfg: DictConfig) -> bool:
    return str(cfg.quant.get("name", "none")) != "none"


def _torch_export_key(ctx: RunContext) -> str:
    """Everything that determines the exported (and possibly calibrated) ONNX of a torch model."""
    cfg = ctx.cfg
    checkpoint = cfg.model.get("checkpoint")
    return cache_key(
        model=_container(cfg.model),
        checkpoint=file_digest(checkpoint) if checkpoint else None,
        quant=_container(cfg.quant),
        calib=_container(cfg.data.calib) if _quant_enabled(cfg) else None,
        export=_container(cfg.export),
        code=code_digest(),
    )


def stage_quantize(ctx: RunContext) -> list[Path]:
    """Calibrate with a modelopt recipe: torch fake-quant, or ONNX PTQ for ONNX-only detectors."""
    cfg = ctx.cfg
    if not _quant_enabled(cfg):
        raise StageSkipped("quant=none: nothing to quantize")
    if ctx.detector.torch_model is not None:
        key = _torch_export_key(ctx)
        if ctx.cache.lookup("onnx", key, "model.onnx") is not None:
            ctx.row["cache"] = "calibrated ONNX reused"
            raise _Cached(f"calibrated ONNX found in the cache ({key})")
        from rtq.quant.calibrate import calibration_feeds, quantize_model
        from rtq.quant.recipes import check_module_globs, recipe_from_dict
        from rtq.quant.summary import print_summary, quantizer_summary

        recipe = recipe_from_dict(_container(cfg.quant))
        check_module_globs(recipe, ctx.detector.torch_model)
        feeds = calibration_feeds(recipe, ctx.detector.io, source=ctx.calib_source())
        log.info("calibrating %s with recipe %s on %d batches", ctx.detector.name, recipe.name, len(feeds))
        quantize_model(ctx.detector.torch_model, recipe, feeds)
        summary = quantizer_summary(ctx.detector.torch_model)
        print_summary(summary)
        ctx.row["quantizers"] = summary
        ctx.pending_inputs.append(ctx.calib_source())
        return []
    # ONNX-only detector: post-training quantization of the (batch-rewritten) ONNX.
    if ctx.onnx is None:
        raise UserError("the quantize stage of an ONNX detector needs the export stage before it")
    from rtq.data.calib import CalibrationImages, calibration_batches
    from rtq.quant.onnx_ptq import qdq_summary, quantize_onnx

    quant = cfg.quant
    key = cache_key(onnx=file_digest(ctx.onnx), quant=_container(quant), calib=_container(cfg.data.calib))
    out = ctx.run_dir / "model.int8.onnx"
    cached = ctx.cache.lookup("onnx_ptq", key, "model.int8.onnx")
    if cached is None:
        images = CalibrationImages(ctx.calib_source(), max_images=quant.calib.get("max_images"))
        feeds = list(calibration_batches(images, ctx.detector.io, int(quant.calib.get("batch_size", 8))))
        if not feeds:
            raise UserError(f"no calibration images in {ctx.calib_source()}; set data.calib.source=PATH")
        quantize_onnx(
            ctx.onnx,
            out,
            feeds,
            method=str(quant.method),
            exclude_nodes=list(quant.get("exclude_nodes", []) or []),
            exclude_op_types=list(quant.get("exclude_op_types", []) or []),
        )
        ctx.cache.store("onnx_ptq", key, out)
    else:
        out.write_bytes(cached.read_bytes())
        ctx.row["cache"] = "quantized ONNX reused"
    import onnx

    qdq = qdq_summary(onnx.load(str(out)))
    log.info("%s", qdq.line())
    ctx.row["quantizers"] = {
        "quantize_nodes": qdq.quantize_nodes,
        "dequantize_nodes": qdq.dequantize_nodes,
        "int8_by_op": qdq.int8_by_op,
        "float_by_op": qdq.float_by_op,
        "float_nodes": qdq.float_compute,
    }
    ctx.onnx = ctx.onnx_qdq = out
    return [out]


class _Cached(StageSkipped):
    """The stage's artifact came from the cache."""


def stage_export(ctx: RunContext) -> list[Path]:
    """Torch deploy model -> ONNX with symbolic batch; an ONNX-only detector gets its batch made dynamic."""
    cfg = ctx.cfg
    out = ctx.run_dir / "model.onnx"
    if ctx.detector.source_onnx is not None:
        from rtq.models.onnx_source import dynamic_batch_onnx

        dynamic_batch_onnx(ctx.detector.source_onnx, out)
        ctx.onnx = ctx.onnx_qdq = out
        return [out]
    key = _torch_export_key(ctx)
    cached = ctx.cache.lookup("onnx", key, "model.onnx")
    if cached is not None:
        out.write_bytes(cached.read_bytes())
        meta = cached.with_name("meta.json")
        if meta.is_file():
            ctx.row.update(json.loads(meta.read_text()))
        ctx.onnx = ctx.onnx_qdq = out
        ctx.row["cache"] = "exported ONNX reused"
        return [out]
    from rtq.export.onnx_export import export_onnx

    export_onnx(
        ctx.detector.torch_model,
        out,
        image_size=int(cfg.model.get("input_size", 640)),
        opset=int(cfg.export.opset),
        dynamic_batch=True,
        simplify=bool(cfg.export.simplify),
    )
    if _quant_enabled(cfg) and cfg.export.get("fidelity_images", 0):
        ctx.row["fidelity"] = _fidelity(ctx, out)
    stored = ctx.cache.store("onnx", key, out)
    cached_row = {k: ctx.row[k] for k in ("quantizers", "fidelity") if k in ctx.row}
    stored.with_name("meta.json").write_text(json.dumps(cached_row, default=str))
    ctx.onnx = ctx.onnx_qdq = out
    return [out]


def _eval_images(ctx: RunContext, count: int) -> list[np.ndarray]:
    from rtq.data.coco import CocoDataset

    dataset = CocoDataset(str(ctx.cfg.data.root), max_images=ctx.cfg.data.get("max_images"))
    return [dataset.load_image(image) for image in dataset.images[:count]]


def _fidelity(ctx: RunContext, onnx_path: Path) -> dict[str, float]:
    """Torch fake-quant model vs its exported ONNX in ORT reference mode, on real images."""
    from rtq.quant.fidelity import float64_verdict, torch_vs_onnx

    images = _eval_images(ctx, int(ctx.cfg.export.fidelity_images))
    feeds = [ctx.detector.io.preprocess([image])[0] for image in images]
    result = torch_vs_onnx(ctx.detector.torch_model, onnx_path, feeds,
                           float64=bool(ctx.cfg.export.get("fidelity_float64", True)))
    log.info("fidelity torch vs ONNX (ORT reference mode): %s", result)
    verdict = float64_verdict(result, float(ctx.cfg.export.get("fidelity_tolerance", 1e-4)))
    if verdict is not None:
        within, message = verdict
        result["raw_float64_within_tolerance"] = float(within)
        if within:
            log.info(message)
        else:
            log.warning("%s: the exported graph does not compute what the torch model computes", message)
    return result


def stage_surgery(ctx: RunContext) -> list[Path]:
    """Apply the configured graph passes; each writes a report."""
    passes = _container(ctx.cfg.surgery.passes) or []
    if not passes:
        raise StageSkipped("surgery.passes is empty")
    if ctx.onnx is None:
        raise UserError("the surgery stage needs an ONNX model: put export before it in `stages`")
    from rtq.surgery.base import reports_markdown, run_passes

    names = "_".join(p if isinstance(p, str) else str(p["name"]) for p in passes)
    out = ctx.run_dir / f"model.{names}.onnx"
    reports = run_passes(ctx.onnx, out, passes)
    report_md = ctx.run_dir / "surgery.md"
    report_md.write_text(reports_markdown(reports))
    (ctx.run_dir / "surgery.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    ctx.row["surgery"] = [r.name for r in reports]
    ctx.onnx = out
    return [out, report_md]


def stage_build(ctx: RunContext) -> list[Path]:
    """Build (or reuse) a TensorRT engine of the current ONNX."""
    from rtq.backends.tensorrt.build import EngineBuildConfig, build_engine
    from rtq.backends.tensorrt.compat import import_tensorrt

    import_tensorrt()  # StageSkipped("TensorRT not installed") when absent
    if ctx.onnx is None:
        raise UserError("the build stage needs an ONNX model: put export before it in `stages`")
    from rtq.paths import PROJECT_ROOT

    config = EngineBuildConfig.from_mapping(_container(ctx.cfg.backend), base_dir=PROJECT_ROOT)
    out = ctx.run_dir / "model.plan"
    build_engine(ctx.onnx, out, config, cache_dir=Path(str(ctx.cfg.cache_dir)) / "engines")
    ctx.engine = out
    return [out]


def _onnx_runner(ctx: RunContext, path: Path, name: str, mode: OrtMode) -> Any:
    from rtq.backends.onnxruntime import make_graph_runner

    return make_graph_runner(path, name, ctx.run_dir / "ort", mode=mode)


def _target_runner(ctx: RunContext, mode: OrtMode) -> tuple[Any, str]:
    """The runner for the model under test: the engine when built, else the current ONNX in ORT."""
    backend = str(ctx.cfg.backend.name)
    if ctx.engine is not None:
        from rtq.backends.tensorrt.runner import make_trt_runner

        return make_trt_runner(ctx.engine), "tensorrt"
    if backend == "torch" and ctx.detector.torch_model is not None and ctx.onnx is None:
        from rtq.backends.torch import make_torch_runner

        return make_torch_runner(
            ctx.detector.torch_model, num_threads=ctx.cfg.backend.get("num_threads")
        ), "torch"
    if ctx.onnx is None:
        raise UserError(f"backend={backend} needs an ONNX model: add export to `stages`")
    return _onnx_runner(ctx, ctx.onnx, "target", mode), "onnxruntime"


def stage_compare(ctx: RunContext) -> list[Path]:
    """Polygraphy comparison: ORT reference mode on the unsurgered ONNX vs the model under test."""
    if ctx.onnx_qdq is None:
        raise UserError("the compare stage needs an exported ONNX: put export before it in `stages`")
    from rtq.compare.compare import CompareSettings, compare_runners

    settings_cfg = ctx.cfg.compare
    images = _eval_images(ctx, int(settings_cfg.num_images))
    feeds = [ctx.detector.io.preprocess([image])[0] for image in images]
    out_dir = ctx.run_dir / "compare"
    settings = CompareSettings(
        score_threshold=float(settings_cfg.detection_score_threshold),
        top_k=settings_cfg.get("detection_top_k"),
        layer_threshold=float(settings_cfg.layerwise_threshold),
    )
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # the numbers go to report.md, not the console
        if settings_cfg.layerwise and ctx.engine is None and ctx.onnx is not None:
            from rtq.compare.compare import compare_onnx

            backend = "onnxruntime"
            report = compare_onnx(ctx.onnx_qdq, ctx.onnx, feeds, out_dir, settings, layerwise=True)
        else:
            reference = _onnx_runner(ctx, ctx.onnx_qdq, "reference", "reference")
            target, backend = _target_runner(ctx, "reference")
            report = compare_runners(reference, target, feeds, out_dir, settings)
    log.info("comparison report: %s", out_dir / "report.md")
    ctx.row["compare"] = {
        "target_backend": backend,
        "report": str(out_dir / "report.md"),
        "summary": report.get("summary", {}),
    }
    return [out_dir / "report.md", out_dir / "report.json"]


def stage_evaluate(ctx: RunContext) -> list[Path]:
    """COCO AP and FPS of the model under test, through the same runner interface for every backend."""
    from rtq.data.coco import CocoDataset
    from rtq.evaluate.fps import batch_sweep, fps_table_markdown
    from rtq.evaluate.loop import evaluate_detector
    from rtq.results.store import append_to_store, write_results

    cfg = ctx.cfg
    ev = cfg.evaluate
    dataset = CocoDataset(str(cfg.data.root), max_images=cfg.data.get("max_images"))
    runner, backend = _target_runner(ctx, "fast")
    result = evaluate_detector(
        runner, ctx.detector.io, dataset, int(ev.batch_size), score_threshold=float(ev.score_threshold)
    )
    sweep_rows = []
    if ev.sweep_batches:
        images = [dataset.load_image(image) for image in dataset.images[: max(ev.sweep_batches)]]
        sweep = batch_sweep(
            runner, ctx.detector.io, images, list(ev.sweep_batches), int(ev.warmup), int(ev.iterations)
        )
        sweep_rows = [row.to_row() for row in sweep]
        (ctx.run_dir / "throughput.md").write_text(fps_table_markdown(sweep))
    row = _result_row(ctx, backend, dataset.root, result.to_row(), sweep_rows)
    path = write_results(ctx.run_dir, row)
    append_to_store(Path(str(cfg.results.store)), row)
    _print_row(row)
    return [path]


def _result_row(
    ctx: RunContext, backend: str, dataset_root: Any, evaluation: dict[str, Any], sweep: list[dict[str, Any]]
) -> dict[str, Any]:
    cfg = ctx.cfg
    quantized = _quant_enabled(cfg)
    precision = "int8" if quantized else str(cfg.backend.get("precision", "fp32"))
    row: dict[str, Any] = {
        "experiment": str(cfg.experiment_name),
        "model": ctx.detector.name,
        "weights": _weights_label(ctx),
        "backend": backend,
        "precision": precision,
        "recipe": str(cfg.quant.name) if quantized else "-",
        "dataset": str(cfg.data.name),
        "data_root": str(dataset_root),
    }
    row.update(evaluation)
    row.update(ctx.row)
    row["sweep"] = sweep
    row["run_dir"] = str(ctx.run_dir)
    row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    skipped = [r.stage + ": " + r.reason for r in ctx.records if r.status == "skipped"]
    if skipped:
        row["skipped"] = skipped
    return row


def _weights_label(ctx: RunContext) -> str:
    """'random', or the file the weights came from (checkpoint or source ONNX)."""
    if ctx.detector.random_weights:
        return "random"
    if ctx.detector.source_onnx is not None:
        return ctx.detector.source_onnx.name
    return Path(str(ctx.cfg.model.checkpoint)).name


def _print_row(row: dict[str, Any]) -> None:
    from rtq.results.table import markdown_table

    print(markdown_table([row]))


STAGES: dict[str, StageFn] = {
    "quantize": stage_quantize,
    "export": stage_export,
    "surgery": stage_surgery,
    "build": stage_build,
    "compare": stage_compare,
    "evaluate": stage_evaluate,
    "localize": stage_localize,
}


def _write_stage_log(ctx: RunContext) -> None:
    write_atomic(ctx.run_dir / "stages.json", json.dumps([r.__dict__ for r in ctx.records], indent=2))


def check_inputs(cfg: DictConfig) -> None:
    """Fail on a bad dataset or calibration path before any expensive stage runs."""
    from rtq.data.calib import find_calibration_images
    from rtq.data.coco import CocoDataset

    if "evaluate" in cfg.stages or "compare" in cfg.stages:
        CocoDataset(str(cfg.data.root), max_images=cfg.data.get("max_images"))
    if "quantize" in cfg.stages and _quant_enabled(cfg):
        own = cfg.quant.get("calib", {}).get("source")
        find_calibration_images(str(own or cfg.data.calib.source))


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the stages `cfg.stages` lists, in order, logging each to `stages.json`."""
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r} in `stages`; known stages: {', '.join(STAGES)}")
    check_inputs(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    detector = load_detector(cfg)
    if detector.random_weights:
        log.warning("%s has random weights (no model.checkpoint): AP is not meaningful", detector.name)
    ctx = RunContext(cfg, run_dir, detector, ArtifactCache(str(cfg.cache_dir)))
    for name in stages:
        before = str(ctx.onnx) if ctx.onnx else ""
        started = time.perf_counter()
        try:
            outputs = STAGES[name](ctx)
            status, reason = "ok", ""
        except _Cached as cached:
            outputs, status, reason = [], "cached", str(cached)
            log.info("%s: %s", name, reason)
        except StageSkipped as skipped:
            outputs, status, reason = [], "skipped", str(skipped)
            print(f"[rtq] stage {name} skipped: {reason}")
        inputs = [before] if before else []
        inputs += ctx.pending_inputs
        ctx.pending_inputs = []
        ctx.records.append(
            StageRecord(
                name,
                status,
                round(time.perf_counter() - started, 3),
                inputs,
                [str(p) for p in outputs],
                reason,
            )
        )
        _write_stage_log(ctx)
    return ctx.row
