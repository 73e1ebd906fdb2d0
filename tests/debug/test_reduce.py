"""`rtq.debug.reduce` on hand-built graphs with and without OpenVINO's Concat -> Q/DQ -> Conv defect.

OpenVINO 2026.4 CPU loses the activation scale of a QuantizeLinear (int8, zero point 0) that sits
between a Concat and a Conv with int8 weights; the same interval written as uint8 / zero point 128
runs correctly. Harmless nodes before the Concat and after the Conv give the reducer something to cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino")

from rtq.debug.__main__ import main  # noqa: E402
from rtq.debug.reduce import INPUTS_FILE, ONNX_FILE, load_inputs, reduce_mismatch  # noqa: E402
from rtq.errors import UserError  # noqa: E402

SCALE = 255 / 127  # the YOLOX Focus input's activation scale: pixels 0..255


def concat_qdq_conv(unsigned: bool = False) -> onnx.ModelProto:
    """a, b -> (Add, Sub | Neg, Neg) -> Concat -> Q/DQ -> Conv 1x1 (int8 identity weights) -> Mul."""
    zero_point = np.array(128, np.uint8) if unsigned else np.array(0, np.int8)
    initializers = [
        numpy_helper.from_array(np.array(SCALE, np.float32), "s"),
        numpy_helper.from_array(zero_point, "zp"),
        numpy_helper.from_array((127 * np.eye(2)).astype(np.int8).reshape(2, 2, 1, 1), "w_q"),
        numpy_helper.from_array(np.array(1 / 127, np.float32), "w_s"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Add", ["a", "one"], ["a1"], name="pre_add"),
        helper.make_node("Sub", ["a1", "one"], ["x0"], name="pre_sub"),
        helper.make_node("Neg", ["b"], ["b1"], name="pre_neg"),
        helper.make_node("Neg", ["b1"], ["x1"], name="pre_neg2"),
        helper.make_node("Concat", ["x0", "x1"], ["cat"], axis=1, name="concat"),
        helper.make_node("QuantizeLinear", ["cat", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], name="w_dq"),
        helper.make_node("Conv", ["dq", "w"], ["y"], kernel_shape=[1, 1], name="conv"),
        helper.make_node("Mul", ["y", "half"], ["out"], name="post_mul"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 1, 64]) for n in ("a", "b")]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "concat_qdq_conv", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def _feeds() -> dict[str, np.ndarray]:
    pixels = (np.arange(64, dtype=np.float32) * 4).reshape(1, 1, 1, 64)  # whole grey levels 0..252
    return {"a": pixels, "b": pixels[..., ::-1].copy()}


def test_reducer_keeps_the_failing_pattern_and_drops_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(concat_qdq_conv(), str(path))
    result = reduce_mismatch(path, _feeds(), tmp_path / "out")

    kept = {n["name"] for n in result.nodes}
    assert kept == {"concat", "q", "dq", "conv", "w_dq"}  # weights travel with the Conv
    assert result.output == "y" and result.minimal.nodes == 4 and result.whole.nodes == 9
    assert [i["name"] for i in result.inputs] == ["x0", "x1"]
    assert result.minimal.fails and result.minimal.error > 0.3  # OpenVINO saturates at 127, not 255
    assert result.ort_replay_max_abs == 0.0
    # the saved repro stands alone: pixel inputs come back as the graph's float32, unchanged
    feeds = load_inputs(tmp_path / "out" / INPUTS_FILE, tmp_path / "out" / ONNX_FILE)
    assert feeds["x0"].dtype == np.float32 and np.array_equal(feeds["x0"], _feeds()["a"])
    assert len(onnx.load(str(tmp_path / "out" / ONNX_FILE)).graph.node) == 5
    report = (tmp_path / "out" / "report.md").read_text()
    assert "`concat`" in report and "## Replay" in report
    assert (tmp_path / "out" / "report.json").is_file()


def test_agreeing_model_is_a_clear_user_error(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    onnx.save(concat_qdq_conv(unsigned=True), str(path))
    with pytest.raises(UserError, match="no mismatch above threshold 0.05"):
        reduce_mismatch(path, _feeds(), tmp_path / "out")
    assert not (tmp_path / "out" / ONNX_FILE).exists()


def test_cli_bad_path_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["reduce", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "missing.onnx does not exist" in err and "\n" not in err
