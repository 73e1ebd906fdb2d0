"""ONNX Runtime (CPU) form of ``fused_attn_offset_prediction``, so fused graphs run without TensorRT.

The op is an onnxruntime-extensions Python op in the ``ai.onnx.contrib`` domain that calls the
reference math. Those Python ops accept only scalar int/float/string attributes, so the model ORT
runs is a copy made by ``plugins.fused_attn_offset_prediction.ort_model.to_ort_domain``: the weights, weight
scales and biases become constant inputs, in this order:
``x_q0, x_q1, weight_0, weight_scale_0, bias_0, weight_1, weight_scale_1, bias_1`` (``x_q1`` repeats
``x_q0`` when one input feeds both projections); ``input_scale_i`` / ``input_zero_point_i`` stay
attributes. Importing this module registers the op; `session_options()` loads the library into a
session.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnxruntime_extensions import PyCustomOpDef, onnx_op

from plugins.fused_attn_offset_prediction.reference import (
    OP_TYPE,
    FusedAttnOffsetParams,
    Projection,
    fused_attn_offset_prediction,
)

_T = PyCustomOpDef


@onnx_op(
    op_type=OP_TYPE,
    inputs=[_T.dt_int8, _T.dt_int8, _T.dt_int8, _T.dt_float, _T.dt_float, _T.dt_int8, _T.dt_float,
            _T.dt_float],
    outputs=[_T.dt_float, _T.dt_float],
    attrs={"input_scale_0": _T.dt_float, "input_zero_point_0": _T.dt_int64,
           "input_scale_1": _T.dt_float, "input_zero_point_1": _T.dt_int64},
)
def fused_attn_offset_prediction_ort(x_q0: np.ndarray, x_q1: np.ndarray, weight_0: np.ndarray,
                                     weight_scale_0: np.ndarray, bias_0: np.ndarray, weight_1: np.ndarray,
                                     weight_scale_1: np.ndarray, bias_1: np.ndarray,
                                     **attrs: Any) -> tuple[np.ndarray, np.ndarray]:
    params = FusedAttnOffsetParams(
        Projection(weight_0, weight_scale_0, float(attrs.get("input_scale_0", 1.0)),
                   int(attrs.get("input_zero_point_0", 0)), bias_0),
        Projection(weight_1, weight_scale_1, float(attrs.get("input_scale_1", 1.0)),
                   int(attrs.get("input_zero_point_1", 0)), bias_1),
    )
    return fused_attn_offset_prediction(x_q0, x_q1, params)


def session_options() -> Any:
    """``onnxruntime.SessionOptions`` with the onnxruntime-extensions library (and this op) loaded."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(get_library_path())
    return opts
