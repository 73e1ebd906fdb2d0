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
- operators without a float64 CPU kernel (`Conv`, `AveragePool`, nearest `Resize`, `Erf`) are
  rewritten with operators that have one (`rtq.quant.float64_kernels`);
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
from rtq.quant.float64_kernels import REWRITES, TWIN_OPSET, attributes

KEEP_FLOAT32 = {"Resize": (1, 2)}  # inputs the ONNX spec types as float32 (roi, scales)


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
            target = helper.tensor_dtype_to_np_dtype(int(attributes(source)["to"]))
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

    # -- node rewrites -----------------------------------------------------------------------
    def rewrite(self, node: onnx.NodeProto) -> None:
        kernel = REWRITES.get(node.op_type)
        handler: Callable[[onnx.NodeProto], None] | None = getattr(self, f"_rewrite_{node.op_type}", None)
        if kernel is not None:
            kernel(self, node)
        elif handler is not None:
            handler(node)
        else:
            self._retype(node)
            self.nodes.append(node)

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
            shape[int(attributes(node).get("axis", 1)) % rank] = -1
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
