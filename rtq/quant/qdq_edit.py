"""Keep chosen compute nodes of a Q/DQ graph in float, without recalibrating anything else.

Mixed precision measured on a compiler needs many variants of one quantized graph that differ only
in which layers stay float; re-running PTQ per variant would change every other scale too. Here a
kept node reads its activation from before the QuantizeLinear/DequantizeLinear pair and its weight
as the dequantized float tensor, so every other quantizer is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from rtq.errors import UserError

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes reading at least one DequantizeLinear output (Conv, MatMul, and the Concat/Add/... a
    recipe quantized too), in graph order: the units a float-keep search chooses among."""
    producer = _producers(model.graph)
    return [
        node.name
        for node in model.graph.node
        if node.op_type not in QDQ_OPS
        and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input)
    ]


def _dequantized_constant(dq: onnx.NodeProto, constants: dict[str, np.ndarray]) -> np.ndarray | None:
    """The float value of DQ(constant), following ONNX's per-tensor / per-axis rule; None if not constant."""
    if dq.input[0] not in constants:
        return None
    q = constants[dq.input[0]].astype(np.float64)
    scale = constants.get(dq.input[1])
    if scale is None:
        return None
    zero = constants.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis % q.ndim] = scale.size
    zero_value = zero.astype(np.float64).reshape(shape) if zero is not None else 0.0
    return ((q - zero_value) * scale.astype(np.float64).reshape(shape)).astype(np.float32)


def keep_float(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` where the named compute nodes bypass their input Q/DQ pairs."""
    wanted = set(names)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    known = {node.name for node in graph.node}
    missing = sorted(wanted - known)
    if missing:
        raise UserError(
            f"node {missing[0]!r} is not in the graph ({len(missing)} unknown); name nodes it has"
        )
    producer = _producers(graph)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    new_initializers: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.name not in wanted:
            continue
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            weight = _dequantized_constant(dq, constants)
            if weight is not None:
                float_name = f"{name}_float"
                if float_name not in constants:
                    constants[float_name] = weight
                    new_initializers.append(numpy_helper.from_array(weight, float_name))
                node.input[index] = float_name
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
    graph.initializer.extend(new_initializers)
    _drop_unused(graph)
    return out


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes and initializers nothing reads any more (the bypassed Q/DQ pairs)."""
    while True:
        used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if node.output and not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for node in graph.node for i in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
