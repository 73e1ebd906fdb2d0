"""ONNX Runtime (CPU) form of ``EfficientNMS_TRT``: an onnxruntime-extensions Python op in the
``ai.onnx.contrib`` domain that runs reference.py, so an End2End graph written for TensorRT is
checked on CPU. Importing this module registers the op; `to_ort_domain` makes the copy ORT runs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from plugins.efficient_nms_trt.reference import OP_TYPE, ORT_DOMAIN, EfficientNmsAttributes, efficient_nms

_T = PyCustomOpDef
_ATTRS = {
    "score_threshold": _T.dt_float,
    "iou_threshold": _T.dt_float,
    "max_output_boxes": _T.dt_int64,
    "background_class": _T.dt_int64,
    "class_agnostic": _T.dt_int64,
    "box_coding": _T.dt_int64,
    "score_activation": _T.dt_int64,
}


@onnx_op(
    op_type=OP_TYPE,
    inputs=[_T.dt_float, _T.dt_float],
    outputs=[_T.dt_int32, _T.dt_float, _T.dt_float, _T.dt_int32],
    attrs=_ATTRS,
)
def efficient_nms_ort(boxes: np.ndarray, scores: np.ndarray, **attrs: Any) -> tuple[np.ndarray, ...]:
    defaults = {"background_class": -1, "class_agnostic": 0, "box_coding": 0, "score_activation": 0}
    values = {**defaults, **{k: v for k, v in attrs.items() if k in _ATTRS}}
    return efficient_nms(boxes, scores, EfficientNmsAttributes(**values))


def to_ort_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose EfficientNMS_TRT nodes are in the ``ai.onnx.contrib`` domain (the op
    takes the same inputs and scalar attributes; the string ``plugin_version`` is dropped)."""
    out = copy.deepcopy(model)
    for node in out.graph.node:
        if node.op_type != OP_TYPE or node.domain != "":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in _ATTRS}
        node.CopyFrom(
            helper.make_node(
                OP_TYPE, list(node.input), list(node.output), name=node.name, domain=ORT_DOMAIN, **attrs
            )
        )
    if not any(o.domain == ORT_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
    return out
