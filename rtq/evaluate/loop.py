"""COCO evaluation of a detector through a Polygraphy runner, with model-only and end-to-end timing.

Every backend is driven through the same runner API, so the AP and the per-image times of PyTorch,
ONNX Runtime and TensorRT are measured the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rtq.data.coco import CocoDataset
from rtq.errors import UserError
from rtq.evaluate.coco_ap import coco_bbox_stats, detections_to_coco
from rtq.evaluate.runners import activated, static_batch_size
from rtq.models.io import Detections, DetectorIO

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """COCO stats of one evaluation plus its timing, summed over all images."""

    stats: dict[str, float]
    num_images: int
    batch_size: int
    model_seconds: float  # runner.infer only
    e2e_seconds: float  # decode + preprocess + infer + postprocess
    detections: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def model_ms_per_image(self) -> float:
        return 1000.0 * self.model_seconds / max(self.num_images, 1)

    @property
    def e2e_ms_per_image(self) -> float:
        return 1000.0 * self.e2e_seconds / max(self.num_images, 1)

    @property
    def fps_model(self) -> float:
        return self.num_images / self.model_seconds if self.model_seconds > 0 else 0.0

    @property
    def fps_e2e(self) -> float:
        return self.num_images / self.e2e_seconds if self.e2e_seconds > 0 else 0.0

    def to_row(self) -> dict[str, Any]:
        """The numbers a results row carries (without the detections themselves)."""
        return {
            **self.stats,
            "num_images": self.num_images,
            "batch_size": self.batch_size,
            "model_ms_per_image": round(self.model_ms_per_image, 3),
            "e2e_ms_per_image": round(self.e2e_ms_per_image, 3),
            "fps_model": round(self.fps_model, 2),
            "fps_e2e": round(self.fps_e2e, 2),
        }


def _filter_by_score(detections: Detections, score_threshold: float) -> Detections:
    if score_threshold <= 0.0:
        return detections
    keep = np.asarray(detections.scores) >= score_threshold
    return Detections(
        labels=detections.labels[keep], boxes=detections.boxes[keep], scores=detections.scores[keep]
    )


def _progress(enabled: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
    )


def evaluate_detector(
    runner: BaseRunner,
    io: DetectorIO,
    dataset: CocoDataset,
    batch_size: int,
    score_threshold: float = 0.0,
    progress: bool = True,
    warmup_batches: int = 1,
) -> EvalResult:
    """Run the whole dataset through `runner` in batches and score it with COCOeval.

    A model with a static batch gets exactly that many images per call: the last batch is padded
    with copies of its last image whose outputs are dropped. A dynamic-batch model gets a smaller
    last batch. `warmup_batches` untimed runs of the first batch keep one-off start-up costs
    (kernel selection, allocations) out of the timings.
    """
    if batch_size <= 0:
        raise UserError(f"batch_size={batch_size} must be a positive number of images")
    images = dataset.images
    detections: list[dict[str, Any]] = []
    model_seconds = 0.0
    e2e_seconds = 0.0

    with activated(runner):
        static = static_batch_size(runner)
        if static is not None and static != batch_size:
            raise UserError(
                f"batch_size={batch_size} does not fit the model, whose input batch is fixed at {static}; "
                f"evaluate with batch_size={static} or export the model with a dynamic batch"
            )
        pad = static is not None

        if warmup_batches > 0 and images:
            first = [dataset.load_image(item) for item in images[:batch_size]]
            first += [first[-1]] * (batch_size - len(first) if pad else 0)
            feed, _ = io.preprocess(first)
            for _ in range(warmup_batches):
                runner.infer(feed)

        with _progress(progress) as bar:
            task = bar.add_task("COCO eval", total=len(images))
            for start in range(0, len(images), batch_size):
                items = images[start : start + batch_size]
                t_start = time.perf_counter()
                decoded = [dataset.load_image(item) for item in items]
                if pad and len(decoded) < batch_size:
                    decoded += [decoded[-1]] * (batch_size - len(decoded))
                feed, metas = io.preprocess(decoded)
                t_infer = time.perf_counter()
                outputs = runner.infer(feed)
                t_post = time.perf_counter()
                batch_detections = io.postprocess(outputs, metas)[: len(items)]
                t_end = time.perf_counter()
                model_seconds += t_post - t_infer
                e2e_seconds += t_end - t_start

                for item, dets in zip(items, batch_detections, strict=True):
                    detections += detections_to_coco(
                        item.image_id, _filter_by_score(dets, score_threshold), dataset
                    )
                bar.advance(task, len(items))

    stats = coco_bbox_stats(dataset.coco, detections, dataset.image_ids)
    result = EvalResult(
        stats=stats,
        num_images=len(images),
        batch_size=batch_size,
        model_seconds=model_seconds,
        e2e_seconds=e2e_seconds,
        detections=detections,
    )
    log.info(
        "COCO bbox AP %.2f AP50 %.2f on %d images; %.1f ms/img model, %.1f ms/img end-to-end",
        stats["ap"],
        stats["ap50"],
        result.num_images,
        result.model_ms_per_image,
        result.e2e_ms_per_image,
    )
    return result
