"""Timing runners on preprocessed tensors: the one loop every throughput figure comes from.

Backends are timed interleaved: repetition `i` runs every runner at every batch once, in an
order rotated by `i`, so a burst of load from other processes on a shared machine hits all of
them alike and no backend always runs right after the same neighbour (cache state, clock ramps).
One runner at one batch is the degenerate case (`rtq.evaluate.fps.measure_fps`). The median is
kept: it ignores one-off stalls that would skew a mean; quartiles say how far to trust it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner

from rtq.errors import UserError


@dataclass(frozen=True)
class FpsResult:
    """Timing of one batch size: images per second and milliseconds per call and per image."""

    batch: int
    throughput: float  # images / s
    batch_time_ms: float  # median time of one runner.infer call
    per_frame_ms: float  # batch_time_ms / batch

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Timing:
    """All timed calls of one backend at one batch size (seconds)."""

    backend: str
    batch: int
    seconds: list[float] = field(default_factory=list)

    def result(self) -> FpsResult:
        """Median call time as throughput and per-call / per-image milliseconds."""
        median = statistics.median(self.seconds)
        return FpsResult(
            batch=self.batch,
            throughput=self.batch / median,
            batch_time_ms=1000.0 * median,
            per_frame_ms=1000.0 * median / self.batch,
        )

    def quartiles_ms(self) -> tuple[float, float]:
        """25th and 75th percentile of the batch time: the spread a reader should trust the median to."""
        q1, _, q3 = quartiles(self.seconds)
        return 1000.0 * q1, 1000.0 * q3


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """25th percentile, median and 75th percentile (all three equal for a single value)."""
    if not values:
        raise ValueError("quartiles of no values")
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def check_counts(warmup: int, iterations: int) -> None:
    """Reject a timing request that would time nothing, before any runner is loaded."""
    if iterations <= 0:
        raise UserError(f"iterations={iterations} must be a positive number of timed repetitions")
    if warmup < 0:
        raise UserError(f"warmup={warmup} must be zero or a positive number of untimed runs")


def interleaved_timing(
    runners: Mapping[str, BaseRunner],
    feeds: Mapping[int, Mapping[str, np.ndarray]],
    warmup: int = 2,
    iterations: int = 10,
) -> dict[tuple[str, int], Timing]:
    """Time every runner on every batch's feed, interleaved, after `warmup` untimed calls each.

    Runners that are already active are used as they are (one engine load shared with other
    work); the others are activated for the timing and deactivated after.
    """
    check_counts(warmup, iterations)
    names = list(runners)
    timings = {(name, batch): Timing(name, batch) for name in names for batch in feeds}
    with contextlib.ExitStack() as stack:
        for runner in runners.values():
            if not runner.is_active:
                stack.enter_context(runner)
        for feed in feeds.values():
            for name in names:
                runners[name].infer(dict(feed))  # checks the feed against the model's inputs once
                for _ in range(max(warmup - 1, 0)):
                    runners[name].infer(dict(feed), check_inputs=False)
        for i in range(iterations):
            order = names[i % len(names) :] + names[: i % len(names)]
            for batch, feed in feeds.items():
                feed_dict = dict(feed)
                for name in order:
                    start = time.perf_counter()
                    runners[name].infer(feed_dict, check_inputs=False)
                    timings[(name, batch)].seconds.append(time.perf_counter() - start)
    return timings


def paired_speedups(
    timings: Mapping[tuple[str, int], Timing], reference: str, name: str, batch: int
) -> list[float]:
    """`reference` time / `name` time within each repetition.

    Both calls of a pair ran moments apart in the same repetition, so a burst of load from other
    processes mostly cancels out of the ratio; the spread of these ratios is the honest noise figure.
    """
    ref, got = timings[(reference, batch)].seconds, timings[(name, batch)].seconds
    return [r / g for r, g in zip(ref, got, strict=False) if g > 0]
