"""ORT graph inspection: op counts and leftover Q/DQ nodes of the graph ORT runs (never its speed)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from rtq.evaluate.ort_profile import profile_graph, unfused_markdown


def test_profile_graph_lists_leftover_qdq_by_neighbour() -> None:
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"], name="q0"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq0"),
        helper.make_node("Add", ["d", "d"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        initializer=[scale, zero],
    )
    profile = profile_graph(helper.make_model(graph), source="g.onnx")
    assert profile.unfused_dq == {"DQ feeding Add": 1}
    assert profile.unfused_q == {"Q fed by Conv": 1}
    assert profile.examples["DQ feeding Add"] == ["dq0"]
    assert profile.count("float_conv") == 1 and profile.integer_compute == 0
    assert profile.quantized_float_compute == {}  # the Conv reads the graph input, not a DQ
    table = unfused_markdown(profile)
    assert "| DQ feeding Add | 1 | `dq0` |" in table


def test_quantized_float_compute_names_the_op_that_blocks_the_fusion() -> None:
    """DQ -> Conv -> BatchNormalization: the Conv reads int8 data but has no Q after it to fuse with."""
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    bn = [numpy_helper.from_array(np.ones(1, dtype=np.float32), name) for name in ("g", "b", "m", "v")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q0"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq0"),
        helper.make_node("Conv", ["d", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        initializer=[scale, zero, *bn],
    )
    profile = profile_graph(helper.make_model(graph))
    assert profile.quantized_float_compute == {"Conv -> BatchNormalization": 1}
    assert profile.unfused_q == {"Q fed by graph input / initializer": 1}
    assert "Conv -> BatchNormalization (1)" in unfused_markdown(profile)
