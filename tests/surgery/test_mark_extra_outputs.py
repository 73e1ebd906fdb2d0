"""mark_extra_outputs: presets found by structure, names, regex; typed outputs, originals first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rtq.errors import UserError
from rtq.surgery.base import run_passes
from rtq.surgery.example_model import export_example


@pytest.fixture(scope="module")
def qdq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_example(tmp_path_factory.mktemp("mark") / "qdq.onnx", num_layers=3)


def _outputs(path: Path) -> list[tuple[str, int, list]]:
    model = onnx.load(str(path))
    return [(o.name, o.type.tensor_type.elem_type,
             [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output]


def test_preset_both_marks_two_tensors_per_layer(qdq: Path, tmp_path: Path) -> None:
    out = tmp_path / "marked.onnx"
    reports = run_passes(qdq, out, [{"name": "mark_extra_outputs", "options": {"preset": "both"}}])
    outputs = _outputs(out)
    assert outputs[0] == _outputs(qdq)[0]  # the original output first, its type untouched
    expected = [f"/layers.{i}/{p}/Add_output_0"
                for i in range(3) for p in ("sampling_offsets", "attention_weights")]
    assert [o[0] for o in outputs[1:]] == expected
    for name, dtype, shape in outputs[1:]:
        assert dtype == onnx.TensorProto.FLOAT
        assert shape == ["N", 10, 48 if "sampling_offsets" in name else 24]
    assert len(reports[0].changed) == 6
    feed = {"query": np.random.default_rng(0).normal(size=(2, 10, 32)).astype(np.float32)}
    original = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, feed)
    marked = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)
    assert len(marked) == 7 and marked[1].shape == (2, 10, 48)
    np.testing.assert_array_equal(marked[0], original[0])


def test_single_presets_and_regex(qdq: Path, tmp_path: Path) -> None:
    out = tmp_path / "so.onnx"
    run_passes(qdq, out, [{"name": "mark_extra_outputs", "options": {"preset": "attention_weights"}}])
    assert [o[0] for o in _outputs(out)[1:]] == [f"/layers.{i}/attention_weights/Add_output_0"
                                                 for i in range(3)]
    run_passes(qdq, out, [{"name": "mark_extra_outputs", "options": {"regex": r"layers\.1/Softmax_output"}}])
    assert [o[0] for o in _outputs(out)] == ["output", "/layers.1/Softmax_output_0"]


def test_names_and_unknown_names(qdq: Path, tmp_path: Path) -> None:
    out = tmp_path / "n.onnx"
    name = "/layers.2/sampling_offsets/input_quantizer/QuantizeLinear_output_0"
    reports = run_passes(qdq, out, [{"name": "mark_extra_outputs", "options": {"names": [name, "nope"]}}])
    assert _outputs(out)[1][:2] == (name, onnx.TensorProto.INT8)
    assert [u.where for u in reports[0].unmatched] == ["nope"]
    with pytest.raises(UserError, match="mark_extra_outputs.*nope.*no computed tensor"):
        run_passes(qdq, out, [{"name": "mark_extra_outputs", "options": {"names": ["nope"]}}])


def test_bad_options_are_user_errors(qdq: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs options"):
        run_passes(qdq, tmp_path / "x.onnx", ["mark_extra_outputs"])
    with pytest.raises(UserError, match="unknown preset 'offsets'"):
        run_passes(qdq, tmp_path / "x.onnx",
                   [{"name": "mark_extra_outputs", "options": {"preset": "offsets"}}])
    with pytest.raises(UserError, match="bad regex"):
        run_passes(qdq, tmp_path / "x.onnx", [{"name": "mark_extra_outputs", "options": {"regex": "("}}])


def test_preset_on_fp32_graph(tmp_path: Path) -> None:
    fp32 = export_example(tmp_path / "fp32.onnx", num_layers=2, quantize=False)
    out = tmp_path / "m.onnx"
    run_passes(fp32, out, [{"name": "mark_extra_outputs", "options": {"preset": "sampling_offsets"}}])
    assert [o[0] for o in _outputs(out)[1:]] == [f"/layers.{i}/sampling_offsets/Add_output_0"
                                                 for i in range(2)]
