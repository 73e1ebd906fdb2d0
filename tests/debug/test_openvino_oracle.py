"""The localiser's `openvino` oracle: real compiles, candidates from the compiled fusions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtq.debug.localize import localize
from rtq.debug.openvino_oracle import OpenVinoOracle
from tests.backends.test_openvino import conv_relu_add


def test_candidates_are_tensors_inside_compiled_fusions_and_marking_splits_them(tmp_path: Path) -> None:
    path = conv_relu_add(tmp_path / "m.onnx")
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)}
    oracle = OpenVinoOracle(path, feeds)
    candidates = oracle.candidates()
    assert "c1" in {c.tensor for c in candidates}  # Conv output inside the fused Conv+Relu layer
    assert oracle.evaluate(frozenset({"c1"})) < 1e-4  # an FP32 graph: OpenVINO agrees with ORT
    assert oracle.builds == 2
    assert oracle.fusion_diff(frozenset(), frozenset({"c1"}))  # the marking changed the fusion


def test_localize_on_a_correct_compile_says_there_is_no_error(tmp_path: Path) -> None:
    path = conv_relu_add(tmp_path / "m.onnx")
    feeds = {"x": np.ones((1, 8, 16, 16), np.float32)}
    oracle = OpenVinoOracle(path, feeds)
    result = localize(path, oracle, candidates=oracle.candidates(), threshold=1e-3, out_dir=tmp_path / "out")
    assert result.status == "no_error" and not result.minimal_set
    assert "no_error" in (tmp_path / "out" / "report.md").read_text()
