"""The float64 twin computes what the float32 graph computes, at float64 precision."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from rtq.errors import UserError
from rtq.quant.float64_twin import float64_session, float64_twin, intended_float64


def _model(
    nodes: list[onnx.NodeProto], shape: list[int], inits: list[onnx.TensorProto], opset: int = 17
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run64(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    out = float64_session(model).run(None, {"x": x.astype(np.float64)})[0]
    assert out.dtype == np.float64
    return np.asarray(out)


def _run32(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x.astype(np.float32)})[0])


@pytest.mark.parametrize(
    ("kernel", "stride", "pads", "bias"),
    [
        (3, 2, [1, 1, 1, 1], True),
        (3, 1, [1, 1, 1, 1], False),
        (1, 1, [0, 0, 0, 0], True),
        (2, 2, [0, 1, 0, 1], True),
    ],
)
def test_conv_equals_torch_float64(kernel: int, stride: int, pads: list[int], bias: bool) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(5, 3, kernel, kernel))
    b = rng.normal(size=5)
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(b.astype(np.float32), "b"))
        inputs.append("b")
    model = _model(
        [
            helper.make_node(
                "Conv", inputs, ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=pads
            )
        ],
        [2, 3, 9, 9],
        inits,
    )
    x = rng.normal(size=(2, 3, 9, 9))
    padded = F.pad(torch.as_tensor(x), (pads[1], pads[3], pads[0], pads[2]))
    expected = F.conv2d(
        padded,
        torch.as_tensor(weight.astype(np.float32).astype(np.float64)),
        torch.as_tensor(b.astype(np.float32).astype(np.float64)) if bias else None,
        stride=stride,
    ).numpy()
    got = _run64(model, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, _run32(model, x), rtol=0, atol=1e-4)  # same function as the float32 graph


def test_average_pool_resize_and_erf() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = _model(
        [
            helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
            helper.make_node(
                "Resize",
                ["p", "", "scales"],
                ["r"],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            ),
            helper.make_node("Erf", ["r"], ["y"]),
        ],
        [1, 2, 8, 6],
        [scales],
    )
    x = np.random.default_rng(1).normal(scale=3.0, size=(3, 2, 8, 6))
    pooled = x.reshape(3, 2, 4, 2, 3, 2).mean(axis=(3, 5))
    expected = np.vectorize(math.erf)(pooled.repeat(2, axis=2).repeat(2, axis=3))
    got = _run64(model, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got, _run32(model, x), rtol=0, atol=1e-6)


def test_erf_series_covers_the_whole_line() -> None:
    model = _model([helper.make_node("Erf", ["x"], ["y"])], [1, 2001], [])
    x = np.concatenate([np.linspace(-9, 9, 2001)[None]])
    np.testing.assert_allclose(_run64(model, x), np.vectorize(math.erf)(x), rtol=0, atol=2e-15)


def test_quantize_dequantize_per_tensor_and_per_axis_including_ties() -> None:
    scale = np.float32(0.1)
    channel_scales = np.array([0.5, 0.25, 0.125], np.float32)
    weight = np.random.default_rng(2).normal(size=(3, 3, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(scale), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(channel_scales, "ws"),
        numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
    ]
    model = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
            helper.make_node("Conv", ["xd", "wd"], ["y"]),
        ],
        [1, 3, 4, 4],
        inits,
    )
    # Values on exact ties (k + 0.5 steps, rounded to even) and beyond the INT8 range (saturated).
    x = ((np.arange(48, dtype=np.float64).reshape(1, 3, 4, 4) - 24) + 0.5) * np.float64(scale)
    x[0, 0, 0, :2] = [100.0, -100.0]
    levels = np.clip(np.round(x / np.float64(scale)), -128, 127)
    w_levels = np.clip(np.round(weight.astype(np.float64) / channel_scales.reshape(3, 1, 1, 1)), -128, 127)
    expected = np.einsum(
        "nchw,oc->nohw",
        levels * np.float64(scale),
        (w_levels * channel_scales.reshape(3, 1, 1, 1))[:, :, 0, 0],
    )
    np.testing.assert_allclose(_run64(model, x), expected, rtol=0, atol=1e-12)


def test_zero_point_behind_a_cast_keeps_the_cast_type() -> None:
    """modelopt writes the zero point as a float Constant cast to INT8: the range must be INT8's."""
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "s"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zf"),
    ]
    model = _model(
        [
            helper.make_node("Cast", ["zf"], ["z"], to=TensorProto.INT8),
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        [1, 3],
        inits,
    )
    x = np.array([[1000.0, -1000.0, 0.74]])
    np.testing.assert_array_equal(_run64(model, x), [[63.5, -64.0, 0.5]])


@pytest.mark.parametrize(
    ("single", "intended"),
    [
        (1.4142135381698608, math.sqrt(2.0)),
        (9.999999747378752e-06, 1e-5),
        (0.17677669, 32**-0.5),
        (0.5, 0.5),
        (-1.4142135, -math.sqrt(2.0)),
        (0.1608848, float(np.float32(0.1608848))),
        (0.0, 0.0),
    ],
)
def test_scalar_constants_get_the_value_the_code_wrote(single: float, intended: float) -> None:
    assert intended_float64(single) == intended
    assert np.float32(intended_float64(single)) == np.float32(single)  # the float32 meaning is kept


def test_exported_gelu_matches_torch_gelu_in_float64() -> None:
    """The exporter writes GELU as x * 0.5 * (1 + erf(x / 1.4142135)): sqrt(2) rounded to float32."""
    const = [numpy_helper.from_array(np.array(v, np.float32)) for v in (math.sqrt(2.0), 1.0, 0.5)]
    model = _model(
        [
            helper.make_node("Constant", [], ["c_sqrt2"], value=const[0]),
            helper.make_node("Constant", [], ["c_one"], value=const[1]),
            helper.make_node("Constant", [], ["c_half"], value=const[2]),
            helper.make_node("Div", ["x", "c_sqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "c_one"], ["a"]),
            helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "c_half"], ["y"]),
        ],
        [1, 4001],
        [],
    )
    x = np.linspace(-8, 8, 4001)[None]
    expected = F.gelu(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(_run64(model, x), expected, rtol=1e-14, atol=2e-14)  # erf to 2e-15, times |x|


def test_input_model_is_left_unchanged_and_twin_is_valid() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [1, 4], [])
    before = model.SerializeToString()
    twin = float64_twin(model)
    assert model.SerializeToString() == before
    onnx.checker.check_model(twin)
    assert twin.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE


def test_grouped_conv_is_refused_by_name() -> None:
    weight = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=4, name="depthwise", kernel_shape=[3, 3])
    with pytest.raises(UserError, match="depthwise.*groups"):
        float64_twin(_model([node], [1, 4, 8, 8], [weight]))
