"""Pass ``unsigned_activations``: write activation Q/DQ pairs as uint8 (zero point 128) instead of int8 (0).

Why: OpenVINO's CPU plugin (seen with 2026.4) mis-executes the pattern
``Concat -> QuantizeLinear(int8, zero point 0) -> DequantizeLinear -> Conv (int8 weights via DQ)`` that
TensorRT-style Q/DQ exporters (modelopt) write. Its low-precision pipeline moves the FakeQuantize across
the Concat onto each Concat input and, because the interval is signed while its Convs take only u8
activations, the moved FakeQuantizes emit the dequantized values as if they were integer codes: the
quantization step becomes 1.0 instead of the scale ``s`` and everything above 127 saturates. YOLOX-Nano
INT8 drops from ~30 AP (ONNX Runtime) to ~0 AP in OpenVINO; tests/backends/test_openvino_qdq_regression.py
holds a 5-node reproducer.

The rewrite is exact under ONNX semantics: ``Q_u8(x; s, 128) = clip(round(x / s) + 128, 0, 255)
= Q_i8(x; s, 0) + 128``, so the codes shift by 128 and every DequantizeLinear gives the same values
(``(q + 128 - 128) * s``). OpenVINO lowers the unsigned interval correctly. TensorRT's explicit
quantization wants symmetric int8 activations (zero point 0), so apply this pass only to the graph
deployed with OpenVINO, never to the TensorRT-bound one.

Options:
  ``after``: ``concat`` (default; only QuantizeLinear nodes whose input a Concat produces, through
  Casts: the affected pattern and the minimal change) or ``all`` (every activation Q/DQ pair).
A pair is rewritten when the QuantizeLinear reads a computed tensor (weights, constant inputs, stay
int8), has an int8 zero point of all zeros and every consumer of its output is a DequantizeLinear.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from rtq.errors import UserError
from rtq.surgery.base import PassReport, Unmatched, register_pass
from rtq.surgery.patterns import const_value, producer, skip_casts

PASS_NAME = "unsigned_activations"
AFTER = ("concat", "all")
UNSIGNED_ZERO_POINT = 128


@dataclass
class _Census:
    """What the pass saw, to explain a run that changed nothing in one line."""

    quantizers: int = 0
    activations: int = 0
    selected: int = 0
    unsigned: int = 0


def _is_empty(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Variable) and not tensor.name


def _zero_point(node: gs.Node) -> np.ndarray | str | None:
    """A Q/DQ node's zero point; its element type's name when absent (the default); None if not constant."""
    if len(node.inputs) < 3 or _is_empty(node.inputs[2]):
        output_dtype = node.attrs.get("output_dtype", 0) if node.op == "QuantizeLinear" else 0
        if output_dtype:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(output_dtype))).name
        if node.op == "DequantizeLinear":
            return "input"  # DQ without a zero point: 0 of its input's type
        return "uint8"
    return const_value(node.inputs[2])


def _int8_zero(zp: np.ndarray | str | None) -> bool:
    if isinstance(zp, str):
        return zp in ("int8", "input")
    return zp is not None and zp.dtype == np.int8 and not np.any(zp)


def _is_uint8(zp: np.ndarray | str | None) -> bool:
    return zp == "uint8" if isinstance(zp, str) else zp is not None and zp.dtype == np.uint8


def _unique_name(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _set_zero_point(node: gs.Node, zp: gs.Constant) -> None:
    if len(node.inputs) >= 3:
        node.inputs[2] = zp
    else:
        node.inputs.append(zp)


def _describe(q: gs.Node) -> str:
    return f"QuantizeLinear '{q.name or q.outputs[0].name}'"


@register_pass(PASS_NAME)
def unsigned_activations(graph: gs.Graph, options: Mapping[str, Any]) -> PassReport:
    """Rewrite activation Q/DQ pairs with int8 zero point 0 to uint8 zero point 128 (see module doc)."""
    unknown = sorted(set(options) - {"after"})
    if unknown:
        raise UserError(f"pass {PASS_NAME!r}: unknown option(s) {unknown}; the only option is "
                        f"'after' ({' | '.join(AFTER)})")
    after = str(options.get("after", "concat"))
    if after not in AFTER:
        raise UserError(f"pass {PASS_NAME!r}: after={after!r}; use one of {', '.join(AFTER)}")
    report = PassReport(PASS_NAME)
    report.notes.append(f"after: {after}")
    census = _Census()
    taken = set(graph.tensors())
    outputs = {id(t) for t in graph.outputs}

    for q in list(graph.nodes):
        if q.op != "QuantizeLinear":
            continue
        census.quantizers += 1
        if isinstance(q.inputs[0], gs.Constant) or const_value(q.inputs[0]) is not None:
            continue  # a weight quantizer: weights stay int8 symmetric
        census.activations += 1
        source = producer(skip_casts(q.inputs[0]))
        if after == "concat" and (source is None or source.op != "Concat"):
            continue
        census.selected += 1
        zp = _zero_point(q)
        if not _int8_zero(zp):
            census.unsigned += _is_uint8(zp)
            continue
        where = _describe(q)
        if source is not None and source.op == "Concat":
            where += f" after Concat '{source.name}'"
        report.matched.append(where)
        quantized = q.outputs[0]
        consumers = list(quantized.outputs)
        if id(quantized) in outputs:
            report.unmatched.append(Unmatched(where, f"its output '{quantized.name}' is a graph output; "
                                                     "retyping it would change the model's interface"))
            continue
        others = sorted({n.op for n in consumers if n.op != "DequantizeLinear"})
        if not consumers or others:
            why = f"its output also feeds {', '.join(others)}" if consumers else "its output has no consumer"
            report.unmatched.append(Unmatched(where, why + "; only pairs read by DequantizeLinear alone are "
                                                             "rewritten"))
            continue
        bad = [dq.name for dq in consumers if not _int8_zero(_zero_point(dq))]
        if bad:
            report.unmatched.append(Unmatched(where, f"DequantizeLinear '{bad[0]}' has a zero point other "
                                                     "than int8 0"))
            continue
        shape = np.shape(zp) if isinstance(zp, np.ndarray) else ()
        new_zp = gs.Constant(_unique_name(f"{quantized.name}_zero_point_u8", taken),
                             np.full(shape, UNSIGNED_ZERO_POINT, dtype=np.uint8))
        _set_zero_point(q, new_zp)
        if q.attrs.get("output_dtype"):
            q.attrs["output_dtype"] = onnx.TensorProto.UINT8
        for dq in consumers:
            _set_zero_point(dq, new_zp)
        quantized.dtype = np.uint8
        report.changed.append(f"{where}: zero point int8 0 -> uint8 {UNSIGNED_ZERO_POINT} "
                              f"(Q + {len(consumers)} DQ; '{quantized.name}' now uint8)")

    if not report.matched:
        report.unmatched.insert(0, Unmatched(graph.name or "graph", _why_none(census)))
    return report


def _why_none(census: _Census) -> str:
    if not census.quantizers:
        return "no QuantizeLinear node: not a Q/DQ graph (an FP32 model?)"
    if not census.activations:
        return f"all {census.quantizers} QuantizeLinear nodes read constants (weights stay int8)"
    if not census.selected:
        return (f"none of the {census.activations} activation QuantizeLinear nodes reads a Concat output "
                "(after: concat); after: all would consider them all")
    if census.unsigned == census.selected:
        return f"all {census.selected} selected activation QuantizeLinear nodes are already uint8"
    return (f"none of the {census.selected} selected activation QuantizeLinear nodes has an int8 zero point "
            "of 0 (what TensorRT-style exporters write)")
