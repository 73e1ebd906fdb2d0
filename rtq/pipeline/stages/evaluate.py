"""Stage `evaluate`: COCO AP and FPS of the model under test, through the same runner interface
for every backend, plus the optional batch-size throughput sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rtq.evaluate.detections_cache import DetectionsCache
from rtq.pipeline.runners import target_runner
from rtq.pipeline.stage import StageContext, StageResult, register_stage


def _needs(cfg: DictConfig) -> tuple[str, ...]:
    if str(cfg.backend.get("name")) == "torch":
        return ("quantized_model|torch_model",)
    return ("engine|surgered_onnx|qdq_onnx|onnx",)


@register_stage("evaluate", order=90, section="evaluate", needs=_needs, records=("evaluation", "sweep"))
def stage_evaluate(ctx: StageContext) -> StageResult:
    """COCO bbox AP over `data`, FPS at `evaluate.batch_size`, and the `sweep_batches` throughput."""
    from rtq.data.coco import CocoDataset
    from rtq.evaluate.fps import batch_sweep, fps_table_markdown
    from rtq.evaluate.loop import evaluate_detector
    from rtq.files import write_atomic

    cfg = ctx.cfg
    ev = ctx.section("evaluate")
    dataset = CocoDataset(str(cfg.data.root), max_images=cfg.data.get("max_images"))
    runner, ran = target_runner(ctx, "fast")
    cache = None
    if ev.get("resume", True):
        cache = DetectionsCache(Path(str(cfg.cache_dir)) / "detections", _detections_key(ctx, ran))
    result = evaluate_detector(
        runner,
        ctx.detector.io,
        dataset,
        int(ev["batch_size"]),
        score_threshold=float(ev["score_threshold"]),
        cache=cache,
    )
    outputs = []
    sweep_rows = []
    if ev.get("sweep_batches"):
        batches = [int(b) for b in ev["sweep_batches"]]
        images = [dataset.load_image(image) for image in dataset.images[: max(batches)]]
        sweep = batch_sweep(
            runner, ctx.detector.io, images, batches, int(ev["warmup"]), int(ev["iterations"])
        )
        sweep_rows = [row.to_row() for row in sweep]
        outputs.append(write_atomic(ctx.run_dir / "throughput.md", fps_table_markdown(sweep)))
    evaluation = {"ran": ran, **result.to_row()}
    return StageResult(outputs=outputs, record={"evaluation": evaluation, "sweep": sweep_rows})


def _detections_key(ctx: StageContext, ran: dict[str, Any]) -> str:
    """What decides the detections: the model file under test, what ran it, the dataset and the threshold."""
    from rtq.cache import file_digest
    from rtq.pipeline.caching import stage_key

    art = ctx.artifacts
    model = art.engine or art.graph
    return stage_key(
        ctx,
        model_file=file_digest(model) if model is not None and Path(model).is_file() else "torch",
        ran={k: v for k, v in ran.items() if k != "compiler"},
        data=OmegaConf.to_container(ctx.cfg.data, resolve=True),
        evaluate={k: ctx.section("evaluate")[k] for k in ("batch_size", "score_threshold")},
    )
