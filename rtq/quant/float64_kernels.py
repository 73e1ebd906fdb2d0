"""Float64 forms of the operators ONNX Runtime's CPU provider has no float64 kernel for.

Each rewrite computes the same function with operators that do have one: `Conv` (group 1, no
dilation) as strided slices + one Einsum, `AveragePool` (no padding, windows tiling the input) as
a sum of strided slices, nearest-mode `Resize` as a Gather whose indices ONNX Runtime computes
itself, and `Erf` as its everywhere-convergent series of positive terms (within 2e-15 of libm's
erf). `rtq.quant.float64_twin` calls them while it rewrites a graph node by node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rtq.errors import UserError

TWIN_OPSET = 20
ERF_CLIP = 6.0  # erf(6) = 1 - 2e-17: 1.0 in float64
ERF_TERMS = 160  # the series' terms for |x| <= 6 fall below 1e-17 of the sum well before this


class TwinBuilder(Protocol):
    """What a rewrite needs of the graph being built: new nodes and constants, known values and shapes."""

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs: Any) -> str: ...

    def const(self, value: Any, tag: str) -> str: ...

    def constant_value(self, name: str, node: onnx.NodeProto) -> np.ndarray: ...

    def static_shape(self, name: str, node: onnx.NodeProto) -> list[int]: ...


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def strided_window(
    b: TwinBuilder, x: str, i: int, j: int, stride: Sequence[int], out_hw: Sequence[int]
) -> str:
    """x[:, :, i::sh, j::sw] cut to the output size: one kernel tap of a conv or pool."""
    sh, sw = stride
    ho, wo = out_hw
    return b.op(
        "Slice",
        [
            x,
            b.const(np.array([i, j], np.int64), "starts"),
            b.const(np.array([i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1], np.int64), "ends"),
            b.const(np.array([2, 3], np.int64), "axes"),
            b.const(np.array([sh, sw], np.int64), "steps"),
        ],
    )


def conv(b: TwinBuilder, node: onnx.NodeProto) -> None:
    attrs = attributes(node)
    if int(attrs.get("group", 1)) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise UserError(
            f"float64 twin: Conv `{node.name}` has groups or dilation, which the rewrite does not cover"
        )
    x, weight = node.input[0], node.input[1]
    _, _, height, width = b.static_shape(x, node)
    out_ch, in_ch, kh, kw = b.static_shape(weight, node)
    stride = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    out_hw = (
        (height + pads[0] + pads[2] - kh) // stride[0] + 1,
        (width + pads[1] + pads[3] - kw) // stride[1] + 1,
    )
    if any(pads):
        x = b.op(
            "Pad",
            [x, b.const(np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64), "pads")],
        )
    if (kh, kw) == (1, 1) and stride == [1, 1]:
        columns = x
    else:
        taps = [strided_window(b, x, i, j, stride, out_hw) for i in range(kh) for j in range(kw)]
        columns = b.op("Concat", taps, axis=1)  # channel order (i, j, c)
    kernel = b.op(
        "Reshape",
        [
            b.op("Transpose", [weight], perm=[0, 2, 3, 1]),
            b.const(np.array([out_ch, kh * kw * in_ch], np.int64), "kernel_shape"),
        ],
    )
    has_bias = len(node.input) > 2 and bool(node.input[2])
    y = b.op(
        "Einsum", [columns, kernel], None if has_bias else node.output[0], equation="nkhw,ok->nohw"
    )
    if has_bias:
        bias = b.op(
            "Reshape", [node.input[2], b.const(np.array([1, out_ch, 1, 1], np.int64), "bias_shape")]
        )
        b.op("Add", [y, bias], node.output[0])

def average_pool(b: TwinBuilder, node: onnx.NodeProto) -> None:
    attrs = attributes(node)
    kh, kw = attrs["kernel_shape"]
    stride = list(attrs.get("strides", [1, 1]))
    _, _, height, width = b.static_shape(node.input[0], node)
    if any(attrs.get("pads", [0, 0, 0, 0])) or (height - kh) % stride[0] or (width - kw) % stride[1]:
        raise UserError(
            f"float64 twin: AveragePool `{node.name}` pads or does not tile its {height}x{width} "
            "input, which the rewrite does not cover"
        )
    out_hw = ((height - kh) // stride[0] + 1, (width - kw) // stride[1] + 1)
    total = ""
    for i in range(kh):
        for j in range(kw):
            tap = strided_window(b, node.input[0], i, j, stride, out_hw)
            total = tap if not total else b.op("Add", [total, tap])
    b.op("Div", [total, b.const(np.float64(kh * kw), "window")], node.output[0])

def resize(b: TwinBuilder, node: onnx.NodeProto) -> None:
    attrs = attributes(node)
    if attrs.get("mode", b"nearest") not in (b"nearest", "nearest"):
        raise UserError(
            f"float64 twin: Resize `{node.name}` is not nearest-mode, which the rewrite does not cover"
        )
    _, channels, height, width = b.static_shape(node.input[0], node)
    index = _resize_index(
        node,
        [b.constant_value(name, node) if name else None for name in node.input[1:]],
        height,
        width,
    )
    out_h, out_w = index.shape
    flat = b.op(
        "Reshape", [node.input[0], b.const(np.array([0, channels, height * width], np.int64), "flat")]
    )
    picked = b.op("Gather", [flat, b.const(index.reshape(-1), "index")], axis=2)
    b.op(
        "Reshape",
        [picked, b.const(np.array([0, channels, out_h, out_w], np.int64), "unflat")],
        node.output[0],
    )

def erf(b: TwinBuilder, node: onnx.NodeProto) -> None:
    """erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n x (2x^2)^n / (2n+1)!!: positive terms, no cancellation."""
    x = b.op(
        "Clip",
        [
            node.input[0],
            b.const(np.float64(-ERF_CLIP), "min"),
            b.const(np.float64(ERF_CLIP), "max"),
        ],
    )
    square = b.op("Mul", [x, x])
    ratio = b.op("Mul", [square, b.const(np.float64(2.0), "two")])
    term = total = x
    for n in range(1, ERF_TERMS):
        term = b.op("Div", [b.op("Mul", [term, ratio]), b.const(np.float64(2 * n + 1), "odd")])
        total = b.op("Add", [total, term])
    weight = b.op(
        "Mul",
        [
            b.op("Exp", [b.op("Neg", [square])]),
            b.const(np.float64(2.0 / math.sqrt(math.pi)), "two_over_sqrt_pi"),
        ],
    )
    value = b.op("Mul", [total, weight])
    b.op(
        "Clip",
        [value, b.const(np.float64(-1.0), "min"), b.const(np.float64(1.0), "max")],
        node.output[0],
    )



def _resize_index(
    node: onnx.NodeProto, params: list[np.ndarray | None], height: int, width: int
) -> np.ndarray:
    """Which input pixel each output pixel of a nearest Resize copies, as ONNX Runtime computes it.

    The same Resize runs once in ONNX Runtime on a 1x1xHxW float32 image whose pixels are their own
    flat indices (exact in float32 below 2**24).
    """
    import onnxruntime as ort

    inputs, initializers = ["probe"], []
    for position, value in enumerate(params, start=1):
        if value is None:
            inputs.append("")
            continue
        if position == 3:  # sizes: the probe has one image and one channel
            value = np.concatenate([[1, 1], np.asarray(value)[2:]]).astype(np.int64)
        initializers.append(numpy_helper.from_array(np.asarray(value), f"p{position}"))
        inputs.append(f"p{position}")
    probe_graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["out"], **attributes(node))],
        "resize_index",
        [helper.make_tensor_value_info("probe", TensorProto.FLOAT, [1, 1, height, width])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializers,
    )
    probe_model = helper.make_model(probe_graph, opset_imports=[helper.make_opsetid("", TWIN_OPSET)])
    probe_model.ir_version = 9
    session = ort.InferenceSession(probe_model.SerializeToString(), providers=["CPUExecutionProvider"])
    probe = np.arange(height * width, dtype=np.float32).reshape(1, 1, height, width)
    return np.asarray(session.run(None, {"probe": probe})[0][0, 0], dtype=np.int64)


REWRITES: dict[str, Callable[[TwinBuilder, onnx.NodeProto], None]] = {
    "Conv": conv, "AveragePool": average_pool, "Resize": resize, "Erf": erf,
}
