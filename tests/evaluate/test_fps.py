"""measure_fps and batch_sweep on the tiny detector: structure and bookkeeping, not speed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from polygraphy.backend.base import BaseRunner

from rtq.backends.onnxruntime import make_onnxrt_runner
from rtq.data.coco import CocoDataset
from rtq.errors import UserError
from rtq.evaluate.fps import FpsResult, batch_sweep, fps_table_markdown, measure_fps
from rtq.models.rtdetr import RTDETRIO


@pytest.fixture(scope="module")
def samples(small_dataset: CocoDataset) -> list[np.ndarray]:
    return [small_dataset.load_image(i) for i in range(3)]


def test_measure_fps_reports_consistent_numbers(
    samples: list[np.ndarray], detector_onnx: Callable[[int | None], Path]
) -> None:
    feed, _ = RTDETRIO(input_size=32).preprocess(samples[:2])
    runner = make_onnxrt_runner(detector_onnx(None))
    result = measure_fps(runner, feed, warmup=2, iterations=5)
    assert not runner.is_active
    assert result.batch == 2
    assert result.batch_time_ms > 0
    assert result.per_frame_ms == pytest.approx(result.batch_time_ms / 2)
    assert result.throughput == pytest.approx(2000.0 / result.batch_time_ms)
    with pytest.raises(UserError, match="iterations=0"):
        measure_fps(runner, feed, warmup=1, iterations=0)


def test_sweep_over_dynamic_batches_cycles_the_samples(
    samples: list[np.ndarray], detector_onnx: Callable[[int | None], Path]
) -> None:
    rows = batch_sweep(
        make_onnxrt_runner(detector_onnx(None)), RTDETRIO(input_size=32), samples, (1, 2, 5), 1, 3
    )
    assert [r.batch for r in rows] == [1, 2, 5]
    table = fps_table_markdown(rows)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| batch | throughput")
    assert len(lines) == 2 + 3 and lines[4].startswith("| 5 |")


def test_sweep_of_a_static_batch_model_times_only_its_batch(
    samples: list[np.ndarray], detector_onnx: Callable[[int | None], Path]
) -> None:
    runner = make_onnxrt_runner(detector_onnx(2))
    rows = batch_sweep(runner, RTDETRIO(input_size=32), samples, (1, 2, 4), warmup=1, iterations=2)
    assert [r.batch for r in rows] == [2]


def test_sweep_with_a_runner_per_batch(
    samples: list[np.ndarray], detector_onnx: Callable[[int | None], Path]
) -> None:
    built: list[int] = []

    def factory(batch: int) -> BaseRunner:
        built.append(batch)
        return make_onnxrt_runner(detector_onnx(batch))

    rows = batch_sweep(factory, RTDETRIO(input_size=32), samples, (1, 4), warmup=1, iterations=2)
    assert built == [1, 4]
    assert all(isinstance(r, FpsResult) for r in rows) and [r.batch for r in rows] == [1, 4]
    assert rows[1].to_row()["batch"] == 4
