"""Model-only throughput of a runner on preprocessed tensors, and a sweep over batch sizes.

The median of many timed calls after a warm-up is used: it ignores one-off stalls (page faults,
clock ramp-up, other processes) that would skew a mean on a shared machine.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

import numpy as np
from polygraphy.backend.base import BaseRunner

from rtq.errors import UserError
from rtq.evaluate.runners import activated, static_batch_size
from rtq.models.io import DetectorIO

log = logging.getLogger(__name__)

RunnerOrFactory: TypeAlias = "BaseRunner | Callable[[int], BaseRunner]"


@dataclass(frozen=True)
class FpsResult:
    """Timing of one batch size: images per second and milliseconds per call and per image."""

    batch: int
    throughput: float  # images / s
    batch_time_ms: float  # median time of one runner.infer call
    per_frame_ms: float  # batch_time_ms / batch

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def measure_fps(
    runner: BaseRunner, feed: Mapping[str, np.ndarray], warmup: int = 10, iterations: int = 50
) -> FpsResult:
    """Time `runner.infer(feed)`: `warmup` untimed calls, then the median of `iterations` timed calls."""
    if iterations <= 0:
        raise UserError(f"iterations={iterations} must be a positive number of timed runs")
    if warmup < 0:
        raise UserError(f"warmup={warmup} must be zero or a positive number of untimed runs")
    batch = int(next(iter(feed.values())).shape[0])
    feed_dict = dict(feed)
    with activated(runner):
        runner.infer(feed_dict)  # checks the feed against the model's inputs once
        for _ in range(max(warmup - 1, 0)):
            runner.infer(feed_dict, check_inputs=False)
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            runner.infer(feed_dict, check_inputs=False)
            times.append(time.perf_counter() - start)
    batch_seconds = statistics.median(times)
    return FpsResult(
        batch=batch,
        throughput=batch / batch_seconds,
        batch_time_ms=1000.0 * batch_seconds,
        per_frame_ms=1000.0 * batch_seconds / batch,
    )


def _feed_for_batch(io: DetectorIO, sample_images: Sequence[np.ndarray], batch: int) -> dict[str, np.ndarray]:
    images = [sample_images[i % len(sample_images)] for i in range(batch)]
    feed, _ = io.preprocess(images)
    return feed


def batch_sweep(
    runner: RunnerOrFactory,
    io: DetectorIO,
    sample_images: Sequence[np.ndarray],
    batches: Sequence[int] = (1, 2, 4, 8),
    warmup: int = 10,
    iterations: int = 50,
) -> list[FpsResult]:
    """`measure_fps` for each batch size, on real images cycled to fill the batch.

    `runner` is one runner used for every batch size, or a factory `batch -> runner` for backends
    that need one engine per batch. A single runner with a static batch is timed only at that batch;
    the other sizes are skipped with a log message.
    """
    if not sample_images:
        raise UserError("batch sweep needs at least one sample image")
    if any(b <= 0 for b in batches):
        raise UserError(f"batch sizes {list(batches)} must all be positive")
    rows: list[FpsResult] = []
    if isinstance(runner, BaseRunner):
        with activated(runner):
            static = static_batch_size(runner)
            for batch in batches:
                if static is not None and batch != static:
                    log.info("batch sweep: skipping batch %d, the model batch is fixed at %d", batch, static)
                    continue
                feed = _feed_for_batch(io, sample_images, batch)
                rows.append(measure_fps(runner, feed, warmup, iterations))
        return rows
    for batch in batches:
        feed = _feed_for_batch(io, sample_images, batch)
        rows.append(measure_fps(runner(batch), feed, warmup, iterations))
    return rows


def fps_table_markdown(rows: Sequence[FpsResult]) -> str:
    """A Markdown table of a batch sweep."""
    lines = [
        "| batch | throughput (img/s) | batch time (ms) | per-frame time (ms) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.batch} | {row.throughput:.1f} | {row.batch_time_ms:.2f} | {row.per_frame_ms:.2f} |"
        )
    return "\n".join(lines) + "\n"
