"""Interleaved timing: bookkeeping of every backend at every batch, quartiles, paired ratios (never speed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_onnx import conv_model, random_feeds

from rtq.backends.onnxruntime import make_onnxrt_runner
from rtq.errors import UserError
from rtq.evaluate.timing import Timing, interleaved_timing, paired_speedups, quartiles


def test_interleaved_timing_times_every_backend_at_every_batch(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "tiny.onnx")
    runners = {
        "a": make_onnxrt_runner(path, providers=["CPUExecutionProvider"], intra_op_threads=1, name="a"),
        "b": make_onnxrt_runner(path, mode="reference", providers=["CPUExecutionProvider"],
                                intra_op_threads=1, name="b"),
    }
    feeds = {1: random_feeds(1, 1)[0], 3: random_feeds(1, 3)[0]}
    timings = interleaved_timing(runners, feeds, warmup=1, iterations=3)
    assert set(timings) == {("a", 1), ("a", 3), ("b", 1), ("b", 3)}
    for (name, batch), cell in timings.items():
        assert cell.backend == name and cell.batch == batch and len(cell.seconds) == 3
        result = cell.result()
        assert result.throughput > 0
        assert result.per_frame_ms == pytest.approx(result.batch_time_ms / batch)
    assert not any(r.is_active for r in runners.values())
    with pytest.raises(UserError, match="iterations=0"):
        interleaved_timing(runners, feeds, iterations=0)
    with pytest.raises(UserError, match="warmup=-1"):
        interleaved_timing(runners, feeds, warmup=-1)


def test_quartiles_and_paired_speedups() -> None:
    cell = Timing("a", 2, [0.10, 0.20, 0.30, 0.40, 0.50])
    assert quartiles(cell.seconds) == pytest.approx((0.2, 0.3, 0.4))
    assert cell.quartiles_ms() == pytest.approx((200.0, 400.0))
    assert Timing("a", 1, [0.25]).quartiles_ms() == (250.0, 250.0)
    assert cell.result().throughput == pytest.approx(2 / 0.3)
    timings = {("ref", 1): Timing("ref", 1, [0.2, 0.4]), ("int8", 1): Timing("int8", 1, [0.1, 0.1])}
    assert paired_speedups(timings, "ref", "int8", 1) == pytest.approx([2.0, 4.0])
