"""A float64 copy of an exported ONNX graph that ONNX Runtime's CPU provider can run.

Why: an INT8 network is discontinuous. Torch and ONNX Runtime add the same float32 numbers in a
different order, an activation lands on the other side of a rounding boundary now and then, and
each such flip moves the next layer by a whole quantization step; after 200 quantizers the raw
outputs differ by O(1) even when the export is exact. Computed in float64 on both sides, the
float noise drops from ~1e-7 to ~1e-16 relative and flips become vanishingly rare, so what is
left of the difference is what the export got wrong (a scale, an axis, a missing quantizer, a
constant).

The twin computes the same function as the original graph, with float tensors in float64:

- float initializers, constants and `Cast(to=FLOAT)` become float64; graph inputs and outputs too;
  a one-element constant the code wrote gets back the value the code meant (`intended_float64`:
  GELU's `sqrt(2)`, an `eps` of `1e-5`), since torch in float64 uses that, not its float32 rounding;
- `QuantizeLinear` becomes `Clip(Round(x / s) + z)` and `DequantizeLinear` `(q - z) * s` with the
  graph's own scales and zero points (the INT8 values are carried as integral float64);
- operators without a float64 CPU kernel are rewritten: `Conv` (group 1, no dilation) as strided
  slices + one Einsum, `AveragePool` (no padding, windows tiling the input) as a sum of strided
  slices, nearest-mode `Resize` as a Gather whose indices ONNX Runtime computes itself, and `Erf`
  as its everywhere-convergent series of positive terms (within 2e-15 of libm's erf);
- the opset is raised to 20, where `GridSample` has a float64 kernel.

Anything else without a float64 kernel ends in a `UserError` naming the operator.
"""

from __future__ import annotations

import fractions
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rtq.errors import UserError

TWIN_OPSET = 20
ERF_CLIP = 6.0  # erf(6) = 1 - 2e-17: 1.0 in float64
ERF_TERMS = 160  # the series' terms for |x| <= 6 fall below 1e-17 of the sum well before this
KEEP_FLOAT32 = {"Resize": (1, 2)}  # inputs the ONNX spec types as float32 (roi, scales)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def intended_float64(value: float) -> float:
    """The float64 a float32 scalar constant of the code stands for.

    The exporter rounds the model's float64 constants to float32 (GELU's `x / sqrt(2)` becomes
    `x / 1.4142135`); kept as is, each carries a 3e-8 relative error that torch in float64 does not
    have, enough to flip an INT8 level now and then. Candidates, in order: a decimal literal of at
    most 6 significant digits (`1e-5`), and the square root of a small fraction p/q (q <= 64).
    A candidate is used only if it rounds to the same float32, so the graph's float32 meaning is
    kept; anything else (a computed value) stays the float32 value.
    """
    single = np.float32(value)
    exact = float(single)
    if not math.isfinite(exact) or exact == 0.0:
        return exact
    mantissa = np.format_float_scientific(single, unique=True).split("e")[0]
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0")
    square = fractions.Fraction(exact * exact).limit_denominator(64)
    candidates = [float(np.format_float_scientific(single, unique=True))] if len(digits) <= 6 else []
    candidates.append(math.copysign(math.sqrt(square), exact))
    return next((c for c in candidates if np.float32(c) == single), exact)


def _as_float64(tensor: onnx.TensorProto, scalar_from_code: bool = False) -> onnx.TensorProto:
    """`tensor` in float64; a one-element constant the code wrote (not a weight) gets its intended value."""
    array = numpy_helper.to_array(tensor).astype(np.float64)
    if scalar_from_code and array.size == 1:
        array = np.full(array.shape, intended_float64(float(array.reshape(-1)[0])))
    return numpy_helper.from_array(array, tensor.name)


class _TwinBuilder:
    """Rewrites one graph node by node; `fresh` names never collide with the graph's own."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.shapes: dict[str, list[int | None]] = {}
        for value in [*graph.value_info, *graph.input, *graph.output]:
            self.shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
            ]
        self.shapes.update({init.name: list(init.dims) for init in graph.initializer})
        self.initializers = {init.name: init for init in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output}
        # Constant values as exported, read by Q/DQ rewrites after the Constant nodes were retyped.
        self.constants = {
            node.output[0]: numpy_helper.to_array(node.attribute[0].t)
            for node in graph.node
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
        }
        self.keep_float32 = {
            node.input[i]
            for node in graph.node
            for i in KEEP_FLOAT32.get(node.op_type, ())
            if i < len(node.input)
        }
        self.nodes: list[onnx.NodeProto] = []
        self.new_initializers: list[onnx.TensorProto] = []
        self.counter = 0

    # -- helpers ---------------------------------------------------------------------------
    def fresh(self, tag: str) -> str:
        self.counter += 1
        return f"float64_twin/{self.counter}/{tag}"

    def const(self, value: Any, tag: str) -> str:
        name = self.fresh(tag)
        self.new_initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs: Any) -> str:
        out = output or self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def constant_value(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        """The value of a constant input (initializer, Constant, or Cast/Identity of one)."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.constants:
            return self.constants[name]
        source = self.producers.get(name)
        if source is not None and source.op_type == "Identity":
            return self.constant_value(source.input[0], node)
        if source is not None and source.op_type == "Cast":
            target = helper.tensor_dtype_to_np_dtype(int(_attributes(source)["to"]))
            return self.constant_value(source.input[0], node).astype(target)
        raise UserError(
            f"float64 twin: input `{name}` of {node.op_type} node `{node.name}` is not a constant"
        )

    def static_shape(self, name: str, node: onnx.NodeProto) -> list[int]:
        shape = self.shapes.get(name)
        if shape is None or any(d is None for d in shape[1:]):
            raise UserError(
                f"float64 twin: {node.op_type} node `{node.name}` needs a static shape for `{name}` "
                f"(got {shape}); export with a fixed image size"
            )
        return [d if d is not None else 0 for d in shape]

    def strided_window(self, x: str, i: int, j: int, stride: Sequence[int], out_hw: Sequence[int]) -> str:
        """x[:, :, i::sh, j::sw] cut to the output size: one kernel tap of a conv or pool."""
        sh, sw = stride
        ho, wo = out_hw
        return self.op(
            "Slice",
            [
                x,
                self.const(np.array([i, j], np.int64), "starts"),
                self.const(np.array([i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1], np.int64), "ends"),
                self.const(np.array([2, 3], np.int64), "axes"),
                self.const(np.array([sh, sw], np.int64), "steps"),
            ],
        )

    # -- node rewrites -----------------------------------------------------------------------
    def rewrite(self, node: onnx.NodeProto) -> None:
        handler: Callable[[onnx.NodeProto], None] | None = getattr(self, f"_rewrite_{node.op_type}", None)
        if handler is None:
            self._retype(node)
            self.nodes.append(node)
        else:
            handler(node)

    def _retype(self, node: onnx.NodeProto) -> None:
        """Float constants and casts to float become float64, in place."""
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
            elif (
                attribute.type == onnx.AttributeProto.TENSOR
                and attribute.t.data_type == TensorProto.FLOAT
                and not (node.output and node.output[0] in self.keep_float32)
            ):
                attribute.t.CopyFrom(_as_float64(attribute.t, scalar_from_code=node.op_type == "Constant"))
            elif attribute.name == "value_float" and node.op_type == "Constant":
                value = attribute.f
                del node.attribute[:]
                node.attribute.append(
                    helper.make_attribute("value", numpy_helper.from_array(np.asarray(value, np.float64)))
                )
                break

    def _scale_and_zero(self, node: onnx.NodeProto, rank: int) -> tuple[str, str, np.dtype[Any]]:
        scale = self.constant_value(node.input[1], node).astype(np.float64)
        zero = (
            self.constant_value(node.input[2], node)
            if len(node.input) > 2 and node.input[2]
            else np.zeros((), np.uint8)
        )
        zero_float = zero.astype(np.float64)
        if scale.size > 1:  # per-axis: broadcast along `axis`
            shape = [1] * rank
            shape[int(_attributes(node).get("axis", 1)) % rank] = -1
            scale, zero_float = scale.reshape(shape), zero_float.reshape(shape)
        return self.const(scale, "scale"), self.const(zero_float, "zero_point"), zero.dtype

    def _rank(self, name: str) -> int:
        return len(self.shapes.get(name) or [])

    def _rewrite_QuantizeLinear(self, node: onnx.NodeProto) -> None:  # noqa: N802 - ONNX op names
        scale, zero, dtype = self._scale_and_zero(node, self._rank(node.input[0]))
        info = np.iinfo(dtype)
        level = self.op("Add", [self.op("Round", [self.op("Div", [node.input[0], scale])]), zero])
        self.op(
            "Clip",
            [level, self.const(np.float64(info.min), "min"), self.const(np.float64(info.max), "max")],
            node.output[0],
        )

    def _rewrite_DequantizeLinear(self, node: onnx.NodeProto) -> None:  # noqa: N802
        scale, zero, _ = self._scale_and_zero(node, self._rank(node.output[0]))
        self.op("Mul", [self.op("Sub", [node.input[0], zero]), scale], node.output[0])

    def _rewrite_Conv(self, node: onnx.NodeProto) -> None:  # noqa: N802
        attrs = _attributes(node)
        if int(attrs.get("group", 1)) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise UserError(
                f"float64 twin: Conv `{node.name}` has groups or dilation, which the rewrite does not cover"
            )
        x, weight = node.input[0], node.input[1]
        _, _, height, width = self.static_shape(x, node)
        out_ch, in_ch, kh, kw = self.static_shape(weight, node)
        stride = list(attrs.get("strides", [1, 1]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        out_hw = (
            (height + pads[0] + pads[2] - kh) // stride[0] + 1,
            (width + pads[1] + pads[3] - kw) // stride[1] + 1,
        )
        if any(pads):
            x = self.op(
                "Pad",
                [x, self.const(np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64), "pads")],
            )
        if (kh, kw) == (1, 1) and stride == [1, 1]:
            columns = x
        else:
            taps = [self.strided_window(x, i, j, stride, out_hw) for i in range(kh) for j in range(kw)]
            columns = self.op("Concat", taps, axis=1)  # channel order (i, j, c)
        kernel = self.op(
            "Reshape",
            [
                self.op("Transpose", [weight], perm=[0, 2, 3, 1]),
                self.const(np.array([out_ch, kh * kw * in_ch], np.int64), "kernel_shape"),
            ],
        )
        has_bias = len(node.input) > 2 and bool(node.input[2])
        y = self.op(
            "Einsum", [columns, kernel], None if has_bias else node.output[0], equation="nkhw,ok->nohw"
        )
        if has_bias:
            bias = self.op(
                "Reshape", [node.input[2], self.const(np.array([1, out_ch, 1, 1], np.int64), "bias_shape")]
            )
            self.op("Add", [y, bias], node.output[0])

    def _rewrite_AveragePool(self, node: onnx.NodeProto) -> None:  # noqa: N802
        attrs = _attributes(node)
        kh, kw = attrs["kernel_shape"]
        stride = list(attrs.get("strides", [1, 1]))
        _, _, height, width = self.static_shape(node.input[0], node)
        if any(attrs.get("pads", [0, 0, 0, 0])) or (height - kh) % stride[0] or (width - kw) % stride[1]:
            raise UserError(
                f"float64 twin: AveragePool `{node.name}` pads or does not tile its {height}x{width} "
                "input, which the rewrite does not cover"
            )
        out_hw = ((height - kh) // stride[0] + 1, (width - kw) // stride[1] + 1)
        total = ""
        for i in range(kh):
            for j in range(kw):
                tap = self.strided_window(node.input[0], i, j, stride, out_hw)
                total = tap if not total else self.op("Add", [total, tap])
        self.op("Div", [total, self.const(np.float64(kh * kw), "window")], node.output[0])

    def _rewrite_Resize(self, node: onnx.NodeProto) -> None:  # noqa: N802
        attrs = _attributes(node)
        if attrs.get("mode", b"nearest") not in (b"nearest", "nearest"):
            raise UserError(
                f"float64 twin: Resize `{node.name}` is not nearest-mode, which the rewrite does not cover"
            )
        _, channels, height, width = self.static_shape(node.input[0], node)
        index = _resize_index(
            node,
            [self.constant_value(name, node) if name else None for name in node.input[1:]],
            height,
            width,
        )
        out_h, out_w = index.shape
        flat = self.op(
            "Reshape", [node.input[0], self.const(np.array([0, channels, height * width], np.int64), "flat")]
        )
        picked = self.op("Gather", [flat, self.const(index.reshape(-1), "index")], axis=2)
        self.op(
            "Reshape",
            [picked, self.const(np.array([0, channels, out_h, out_w], np.int64), "unflat")],
            node.output[0],
        )

    def _rewrite_Erf(self, node: onnx.NodeProto) -> None:  # noqa: N802
        """erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n x (2x^2)^n / (2n+1)!!: positive terms, no cancellation."""
        x = self.op(
            "Clip",
            [
                node.input[0],
                self.const(np.float64(-ERF_CLIP), "min"),
                self.const(np.float64(ERF_CLIP), "max"),
            ],
        )
        square = self.op("Mul", [x, x])
        ratio = self.op("Mul", [square, self.const(np.float64(2.0), "two")])
        term = total = x
        for n in range(1, ERF_TERMS):
            term = self.op("Div", [self.op("Mul", [term, ratio]), self.const(np.float64(2 * n + 1), "odd")])
            total = self.op("Add", [total, term])
        weight = self.op(
            "Mul",
            [
                self.op("Exp", [self.op("Neg", [square])]),
                self.const(np.float64(2.0 / math.sqrt(math.pi)), "two_over_sqrt_pi"),
            ],
        )
        value = self.op("Mul", [total, weight])
        self.op(
            "Clip",
            [value, self.const(np.float64(-1.0), "min"), self.const(np.float64(1.0), "max")],
            node.output[0],
        )

    # -- whole graph ---------------------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        graph = self.model.graph
        for init in graph.initializer:
            if init.data_type == TensorProto.FLOAT and init.name not in self.keep_float32:
                init.CopyFrom(_as_float64(init))
        for node in list(graph.node):
            self.rewrite(node)
        del graph.node[:]
        graph.node.extend(self.nodes)
        graph.initializer.extend(self.new_initializers)
        for value in [*graph.input, *graph.output]:
            if value.type.tensor_type.elem_type == TensorProto.FLOAT:
                value.type.tensor_type.elem_type = TensorProto.DOUBLE
        del graph.value_info[:]
        return self.model


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
        [helper.make_node("Resize", inputs, ["out"], **_attributes(node))],
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


def float64_twin(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """The float64 twin of `model` (a path or a loaded model, which is left unchanged)."""
    import onnx.version_converter

    proto = (
        onnx.load(str(model))
        if isinstance(model, (str, Path))
        else onnx.ModelProto.FromString(model.SerializeToString())
    )
    default = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), TWIN_OPSET)
    if default < TWIN_OPSET:
        proto = onnx.version_converter.convert_version(proto, TWIN_OPSET)
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    return _TwinBuilder(proto).build()


def float64_session(model: onnx.ModelProto | str | Path) -> Any:
    """ORT CPU session (graph optimizations off) on the float64 twin of `model`."""
    from rtq.backends.onnxruntime import reference_session

    twin = float64_twin(model)
    try:  # quiet: the twin leaves the original scales unused, and ORT warns once per initializer
        return reference_session(twin.SerializeToString(), quiet=True)
    except Exception as error:  # noqa: BLE001 - ORT reports a missing kernel as a generic failure
        raise UserError(f"float64 twin: ONNX Runtime cannot run it: {str(error).splitlines()[0]}") from error
