"""Pass ``fuse_attn_offset_prediction``: one plugin node per decoder layer for both INT8 projections.

TensorRT fuses the ``sampling_offsets`` and ``attention_weights`` MatMuls of a layer, their weight
DQs, the input DQ and the bias Adds into one Myelin layer that loses INT8 accuracy (31 -> 1 AP on
RT-DETRv2). Replacing that subgraph, from the int8 output of the input QuantizeLinear to the two Add
outputs, with the ``fused_attn_offset_prediction`` plugin node takes it out of TensorRT's hands. The
node's math and attributes are defined in ``plugins/fused_attn_offset_prediction/reference.py``.

Options: ``layers`` (regex on the decoder layer prefix; default all layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from plugins.fused_attn_offset_prediction.reference import (
    OP_TYPE,
    FusedAttnOffsetParams,
    Projection,
)
from rtq.surgery.base import PassReport, Unmatched, register_pass
from rtq.surgery.patterns import LinearBranch, const_value, find_projection_pairs, producer, weight_source

PASS_NAME = "fuse_attn_offset_prediction"


@dataclass
class QuantBranch:
    """The INT8 facts of one projection branch, read from its Q/DQ nodes."""

    quantize: gs.Node  # the input QuantizeLinear; its int8 output feeds the fused node
    projection: Projection


def _scalar(tensor: gs.Tensor, what: str) -> float | str:
    value = const_value(tensor)
    if value is None or value.size != 1:
        return f"{what} is not a constant scalar"
    return float(value.reshape(-1)[0])


def _quantize_weight(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear on a constant float weight (round half to even, saturate to int8)."""
    shape = [1] * w.ndim
    if scale.size > 1:
        shape[axis] = -1
    q = np.rint(w.astype(np.float32) / scale.astype(np.float32).reshape(shape)) + zp.reshape(shape)
    return np.clip(q, -128, 127).astype(np.int8)


def analyse_quant_branch(branch: LinearBranch) -> QuantBranch | str:
    """The branch's int8 weight, scales and bias, or which node broke the Q/DQ pattern."""
    mm = branch.matmul
    who = f"MatMul '{mm.name}'"
    dq_x = producer(mm.inputs[0])
    if dq_x is None or dq_x.op != "DequantizeLinear":
        return f"{who} input 0 is not a DequantizeLinear"
    q_x = producer(dq_x.inputs[0])
    if q_x is None or q_x.op != "QuantizeLinear":
        return f"{who}: input DequantizeLinear '{dq_x.name}' is not fed by a QuantizeLinear"
    s_x = _scalar(q_x.inputs[1], f"QuantizeLinear '{q_x.name}' scale")
    if isinstance(s_x, str):
        return f"{who}: {s_x} (per-tensor input quantization expected)"
    zp_x_arr = const_value(q_x.inputs[2]) if len(q_x.inputs) > 2 else None
    if zp_x_arr is not None and zp_x_arr.dtype != np.int8:
        return f"{who}: QuantizeLinear '{q_x.name}' zero point is {zp_x_arr.dtype}, not int8"
    zp_x = int(zp_x_arr.reshape(-1)[0]) if zp_x_arr is not None else 0
    if zp_x_arr is None and len(q_x.inputs) <= 2:
        return f"{who}: QuantizeLinear '{q_x.name}' has no zero point, so its output would be uint8"
    dq_scale = _scalar(dq_x.inputs[1], f"DequantizeLinear '{dq_x.name}' scale")
    if dq_scale != s_x:
        return f"{who}: input Q and DQ scales differ ({s_x} vs {dq_scale})"

    src, transposed = weight_source(mm)
    if src is None or src.op != "DequantizeLinear":
        return f"{who} input 1 is not a DequantizeLinear"
    w_scale = const_value(src.inputs[1])
    w_zp = const_value(src.inputs[2]) if len(src.inputs) > 2 else np.zeros(1, np.int8)
    if w_scale is None or w_zp is None:
        return f"{who}: weight DequantizeLinear '{src.name}' scale or zero point is not constant"
    if np.any(w_zp != 0):
        return f"{who}: weight DequantizeLinear '{src.name}' has non-zero zero points"
    axis = int(src.attrs.get("axis", 1))
    w_q = const_value(src.inputs[0])
    if w_q is None:
        q_w = producer(src.inputs[0])
        w_f = const_value(q_w.inputs[0]) if q_w is not None and q_w.op == "QuantizeLinear" else None
        if q_w is None or w_f is None:
            return f"{who}: weight DequantizeLinear '{src.name}' does not read an int8 constant"
        q_scale = const_value(q_w.inputs[1])
        q_zp = const_value(q_w.inputs[2]) if len(q_w.inputs) > 2 else None
        if q_scale is None or q_zp is None or q_zp.dtype != np.int8:
            return f"{who}: weight QuantizeLinear '{q_w.name}' lacks constant scale or int8 zero point"
        if not np.array_equal(q_scale, w_scale) or int(q_w.attrs.get("axis", 1)) != axis:
            return f"{who}: weight Q '{q_w.name}' and DQ '{src.name}' quantize differently"
        w_q = _quantize_weight(w_f, q_scale, q_zp, axis % w_f.ndim)
    if w_q.dtype != np.int8 or w_q.ndim != 2:
        return f"{who}: weight of DequantizeLinear '{src.name}' is {w_q.dtype} rank {w_q.ndim}, not int8 2-D"
    weight = w_q if transposed else w_q.T  # -> [N, K]
    channel_axis = 0 if transposed else 1
    n = weight.shape[0]
    if w_scale.size == 1:
        scales = np.full(n, float(w_scale.reshape(-1)[0]), np.float32)
    elif w_scale.size == n and axis % 2 == channel_axis:
        scales = w_scale.reshape(-1).astype(np.float32)
    else:
        return (f"{who}: weight DequantizeLinear '{src.name}' is quantized along axis {axis}, "
                f"not the output-channel axis {channel_axis}")
    bias_t = [t for t in branch.add.inputs if t is not mm.outputs[0]][0]
    bias = const_value(bias_t)
    assert bias is not None  # analyse_linear checked it
    projection = Projection(weight=weight, weight_scale=scales, input_scale=s_x,
                            input_zero_point=zp_x, bias=bias.reshape(-1).astype(np.float32))
    return QuantBranch(q_x, projection)


def _batch_symbol(graph: gs.Graph) -> str:
    for t in graph.inputs:
        if t.shape and isinstance(t.shape[0], str):
            return t.shape[0]
    return "batch"


def _same_quantizer(a: gs.Node, b: gs.Node) -> bool:
    if a is b:
        return True
    va = [const_value(t) for t in a.inputs[1:]]
    vb = [const_value(t) for t in b.inputs[1:]]
    return all(x is not None and y is not None and np.array_equal(x, y) and x.dtype == y.dtype
               for x, y in zip(va, vb, strict=False)) and len(va) == len(vb)


@register_pass(PASS_NAME)
def fuse_attn_offset_prediction(graph: gs.Graph, options: Mapping[str, Any]) -> PassReport:
    """Replace each decoder layer's two INT8 projections with one plugin node."""
    report = PassReport(PASS_NAME)
    if not any(n.op == "QuantizeLinear" for n in graph.nodes):
        report.unmatched.append(Unmatched(
            graph.name or "graph",
            "no QuantizeLinear nodes: the graph is not quantized; run a quant recipe first"))
        return report
    search = find_projection_pairs(graph, options.get("layers"))
    report.unmatched.extend(search.unmatched)
    if not search.pairs and not search.unmatched:
        where = f" in layers matching {options['layers']!r}" if options.get("layers") else ""
        report.unmatched.append(Unmatched(graph.name or "graph", (
            f"no pair of Linear projections (sampling_offsets / attention_weights) reading one "
            f"quantized tensor{where}; is this an RT-DETRv2 decoder?")))
    for pair in search.pairs:
        quant = [analyse_quant_branch(b) for b in pair.branches]
        failures = [q for q in quant if isinstance(q, str)]
        if failures:
            report.unmatched.extend(Unmatched(pair.layer, f) for f in failures)
            continue
        so, aw = (q for q in quant if isinstance(q, QuantBranch))
        params = FusedAttnOffsetParams(so.projection, aw.projection)
        x0 = so.quantize.outputs[0]
        shared = params.shares_input and _same_quantizer(so.quantize, aw.quantize)
        inputs = [x0] if shared else [x0, aw.quantize.outputs[0]]
        outputs = [b.output for b in pair.branches]
        for out, proj in zip(outputs, params.projections, strict=True):
            out.dtype = np.float32
            if out.shape is None:  # [B, Q, N]: lets later passes mark it as a typed graph output
                lead = list(x0.shape[:-1]) if x0.shape else [_batch_symbol(graph), "num_queries"]
                out.shape = [*lead, proj.out_features]
            out.inputs.clear()  # detach from the Add so the old branch becomes dead
        node = gs.Node(op=OP_TYPE, name=f"{pair.layer}/{OP_TYPE}", attrs=params.to_gs_attrs(),
                       inputs=inputs, outputs=outputs)
        graph.nodes.append(node)
        report.matched.append(pair.layer)
        report.changed.append(
            f"{pair.layer}: '{pair.sampling_offsets.matmul.name}' + '{pair.attention_weights.matmul.name}'"
            f" -> {OP_TYPE} (K={params.sampling_offsets.in_features}, "
            f"N0={params.sampling_offsets.out_features}, N1={params.attention_weights.out_features}, "
            f"{'one input' if shared else 'two inputs: the projections use different input scales'})")
    return report
