"""Model-only throughput of one runner on preprocessed tensors, and a sweep over batch sizes.

The timing itself is `rtq.evaluate.timing`'s loop (median of many timed calls after a warm-up);
this module adds what the pipeline needs around it: real images cycled to fill each batch,
static-batch models timed only at their batch, one runner per batch where a backend needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

import numpy as np
from polygraphy.backend.base import BaseRunner

from rtq.errors import UserError
from rtq.evaluate.runners import activated, static_batch_size
from rtq.evaluate.timing import FpsResult, interleaved_timing
from rtq.models.io import DetectorIO

log = logging.getLogger(__name__)

RunnerOrFactory: TypeAlias = "BaseRunner | Callable[[int], BaseRunner]"

__all__ = ["FpsResult", "batch_sweep", "fps_table_markdown", "measure_fps"]


def measure_fps(
    runner: BaseRunner, feed: Mapping[str, np.ndarray], warmup: int = 10, iterations: int = 50
) -> FpsResult:
    """Time `runner.infer(feed)`: `warmup` untimed calls, then the median of `iterations` timed calls."""
    batch = int(next(iter(feed.values())).shape[0])
    timings = interleaved_timing({"runner": runner}, {batch: feed}, warmup=warmup, iterations=iterations)
    return timings[("runner", batch)].result()


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
