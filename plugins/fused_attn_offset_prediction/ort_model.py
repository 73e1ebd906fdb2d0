"""The ONNX Runtime form of a graph with ``fused_attn_offset_prediction`` nodes.

Surgery writes the TensorRT form (weights as attributes, default domain); ONNX Runtime runs the
node through the onnxruntime-extensions op of ``ort_op.py``, which takes only scalar attributes.
Both the surgery tests and the ONNX Runtime backend make this copy, so it lives with the plugin.
"""

from __future__ import annotations

import copy
from typing import Any

import onnx
from onnx import helper, numpy_helper

from plugins.fused_attn_offset_prediction.reference import OP_TYPE, ORT_DOMAIN, FusedAttnOffsetParams


def to_ort_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that ONNX Runtime (with onnxruntime-extensions) can run.

    onnxruntime-extensions Python ops accept only scalar int/float/string attributes, so in this copy
    each fused node reads its weights, weight scales and biases as extra constant inputs
    (``x_q0, x_q1, weight_0, weight_scale_0, bias_0, weight_1, weight_scale_1, bias_1``; ``x_q1`` repeats
    ``x_q0`` for a one-input node), keeps ``input_scale_i`` / ``input_zero_point_i`` as attributes and
    moves to the ``ai.onnx.contrib`` domain. The TensorRT form of the model is left untouched.
    """
    out = copy.deepcopy(model)
    for idx, node in enumerate(out.graph.node):
        if node.op_type != OP_TYPE or node.domain != "":
            continue
        params = FusedAttnOffsetParams.from_attributes(node)
        x0 = node.input[0]
        x1 = node.input[1] if len(node.input) > 1 else x0
        extra = []
        for i, p in enumerate(params.projections):
            for field_name, arr in (("weight", p.weight), ("weight_scale", p.weight_scale), ("bias", p.bias)):
                name = f"{node.name or OP_TYPE}_{idx}/{field_name}_{i}"
                out.graph.initializer.append(numpy_helper.from_array(arr, name=name))
                extra.append(name)
        attrs: dict[str, Any] = {}
        for i, p in enumerate(params.projections):
            attrs[f"input_scale_{i}"] = float(p.input_scale)
            attrs[f"input_zero_point_{i}"] = int(p.input_zero_point)
        new = helper.make_node(OP_TYPE, [x0, x1, *extra], list(node.output), name=node.name,
                               domain=ORT_DOMAIN, **attrs)
        node.CopyFrom(new)
    if not any(o.domain == ORT_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
    return out
