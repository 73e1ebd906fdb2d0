"""COCO evaluation of a detector through a Polygraphy runner, with model-only and end-to-end timing.

Every backend is driven through the same runner API, so the AP and the per-image times of PyTorch,
ONNX Runtime and TensorRT are measured the same way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from rtq.data.coco import CocoDataset
from rtq.errors import UserError
from rtq.evaluate.coco_ap import as_coco_dicts, coco_bbox_stats_by_image, compact, detections_to_coco
from rtq.evaluate.detections_cache import DetectionsCache
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
    # Each image's detections as `coco_ap.compact` rows (x, y, w, h, score, category id).
    per_image: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    resumed_images: int = 0  # images whose detections came from an interrupted run (not timed)

    @property
    def detections(self) -> list[dict[str, Any]]:
        """All detections as COCO result dicts (made on demand: millions of dicts cost memory)."""
        return [d for image_id, rows in self.per_image.items() for d in as_coco_dicts(image_id, rows)]

    @property
    def num_detections(self) -> int:
        return sum(len(rows) for rows in self.per_image.values())

    @property
    def timed_images(self) -> int:
        return self.num_images - self.resumed_images

    @property
    def model_ms_per_image(self) -> float:
        return 1000.0 * self.model_seconds / max(self.timed_images, 1)

    @property
    def e2e_ms_per_image(self) -> float:
        return 1000.0 * self.e2e_seconds / max(self.timed_images, 1)

    @property
    def fps_model(self) -> float:
        return self.timed_images / self.model_seconds if self.model_seconds > 0 else 0.0

    @property
    def fps_e2e(self) -> float:
        return self.timed_images / self.e2e_seconds if self.e2e_seconds > 0 else 0.0

    def to_row(self) -> dict[str, Any]:
        """The numbers a results row carries (without the detections themselves)."""
        return {
            **self.stats,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "batch_size": self.batch_size,
            "model_ms_per_image": round(self.model_ms_per_image, 3),
            "e2e_ms_per_image": round(self.e2e_ms_per_image, 3),
            "fps_model": round(self.fps_model, 2),
            "fps_e2e": round(self.fps_e2e, 2),
            **({"resumed_images": self.resumed_images} if self.resumed_images else {}),
        }


def _filter_by_score(detections: Detections, score_threshold: float) -> Detections:
    if score_threshold <= 0.0:
        return detections
    keep = np.asarray(detections.scores) >= score_threshold
    return Detections(
        labels=detections.labels[keep], boxes=detections.boxes[keep], scores=detections.scores[keep]
    )


class _RateColumn(ProgressColumn):
    """Images per second over the recent window."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "- img/s")


class _EvalProgress:
    """A progress bar with rate and ETA on a terminal; elsewhere (logs, CI, cluster jobs) a log line
    about every tenth of the images, so long evaluations show progress either way."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        console = Console(stderr=True)
        self.bar_enabled = enabled and console.is_terminal
        self.log_enabled = enabled and not self.bar_enabled
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
            TimeRemainingColumn(), console=console, disable=not self.bar_enabled,
        )  # fmt: skip
        self.total, self.done, self.started = total, done, 0.0
        self.timed, self.next_log = 0, done + max(total // 10, 1)
        self.task = self.bar.add_task("COCO eval", total=total, completed=done)

    def __enter__(self) -> _EvalProgress:
        self.bar.__enter__()
        self.started = time.perf_counter()  # the rate counts inference, not model start-up
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def advance(self, count: int) -> None:
        self.bar.advance(self.task, count)
        self.done += count
        self.timed += count
        if self.log_enabled and (self.done >= self.next_log or self.done == self.total):
            rate = self.timed / max(time.perf_counter() - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            log.info("COCO eval %d/%d images, %.1f img/s, ETA %.0f s", self.done, self.total, rate, eta)
            self.next_log = self.done + max(self.total // 10, 1)


def _run_batches(
    runner: BaseRunner,
    io: DetectorIO,
    dataset: CocoDataset,
    images: list[Any],
    batch_size: int,
    score_threshold: float,
    per_image: dict[int, np.ndarray],
    cache: DetectionsCache | None,
    bar: _EvalProgress,
    warmup_batches: int,
) -> tuple[float, float]:
    """Infer `images` in batches into `per_image` (and the cache); (model seconds, end-to-end seconds)."""
    model_seconds = e2e_seconds = 0.0
    with activated(runner):
        static = static_batch_size(runner)
        if static is not None and static != batch_size:
            raise UserError(
                f"batch_size={batch_size} does not fit the model, whose input batch is fixed at "
                f"{static}; evaluate with batch_size={static} or export the model with a dynamic batch"
            )
        pad = static is not None

        if warmup_batches > 0 and images:
            first = [dataset.load_image(item) for item in images[:batch_size]]
            first += [first[-1]] * (batch_size - len(first) if pad else 0)
            feed, _ = io.preprocess(first)
            for _ in range(warmup_batches):
                runner.infer(feed)

        with bar:
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
                    coco = detections_to_coco(item.image_id, _filter_by_score(dets, score_threshold), dataset)
                    per_image[item.image_id] = compact(coco)
                    if cache is not None:
                        cache.add(item.image_id, coco)
                bar.advance(len(items))
    return model_seconds, e2e_seconds


def evaluate_detector(
    runner: BaseRunner,
    io: DetectorIO,
    dataset: CocoDataset,
    batch_size: int,
    score_threshold: float = 0.0,
    progress: bool = True,
    warmup_batches: int = 1,
    cache: DetectionsCache | None = None,
) -> EvalResult:
    """Run the whole dataset through `runner` in batches and score it with COCOeval.

    A model with a static batch gets exactly that many images per call: the last batch is padded
    with copies of its last image whose outputs are dropped. A dynamic-batch model gets a smaller
    last batch. `warmup_batches` untimed runs of the first batch keep one-off start-up costs
    (kernel selection, allocations) out of the timings. Images are decoded a batch at a time, so
    memory stays flat in the number of images apart from the detections. With a `cache`, each
    image's detections are written as they are made and an interrupted run of the same key resumes.
    """
    if batch_size <= 0:
        raise UserError(f"batch_size={batch_size} must be a positive number of images")
    done = cache.load() if cache is not None else {}
    images = [item for item in dataset.images if item.image_id not in done]
    per_image = {image_id: compact(dets) for image_id, dets in done.items()}
    session = cache.session(done) if cache is not None else contextlib.nullcontext()
    with session:  # an interruption leaves the cache file for the rerun
        model_seconds, e2e_seconds = _run_batches(
            runner, io, dataset, images, batch_size, score_threshold, per_image, cache,
            _EvalProgress(progress, len(dataset.images), len(done)), warmup_batches,
        )  # fmt: skip

    stats = coco_bbox_stats_by_image(dataset.coco, per_image, dataset.image_ids)
    if cache is not None:
        cache.close(completed=True)
    result = EvalResult(
        stats=stats,
        num_images=len(dataset.images),
        resumed_images=len(done),
        batch_size=batch_size,
        model_seconds=model_seconds,
        e2e_seconds=e2e_seconds,
        per_image=per_image,
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
