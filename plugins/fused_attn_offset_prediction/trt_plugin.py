"""The `rtq::fused_attn_offset_prediction` op as a `tensorrt.plugin` (Python) plugin.

The C++ IPluginV3 (plugin_v3.cpp) is the deployment form; this one exists so an engine with the
fused node can be built and checked with nothing compiled, and so both forms can be compared.
It is selected with `backend.plugin=python` (conf/backend/tensorrt.yaml).

- Importable without TensorRT: registration happens in `register_tensorrt_plugin()`, called by
  the TensorRT backend only when TensorRT is present (and needed in every process that builds
  or runs such an engine, because `@trtp.impl` is a Python callback).
- The computation is reference.py's torch form on the tensors TensorRT hands over (zero-copy
  `torch.as_tensor`), so it follows the single definition of the math.
- Only the one-input form (`x_q` feeding both projections) can be expressed: a
  `tensorrt.plugin` signature has a fixed number of inputs. Graphs where the two projections
  quantize the query with different scales need the C++ plugin.
- No `@trtp.aot_impl`: an AOT kernel receives only the I/O tensor pointers and symbolic int32
  scalars, while this op's weights, scales and biases are node attributes; there is no device
  buffer to hand them over in. The C++ plugin is the engine-embedded path.

No `from __future__ import annotations` here: `tensorrt.plugin` reads the annotations at
registration time and needs real types, not strings.
"""

import sys
from pathlib import Path
from typing import Any

PLUGIN_ID = "rtq::fused_attn_offset_prediction"

_registered = False


def _reference() -> Any:
    """reference.py, importable both as part of the `plugins` namespace and as a loose file."""
    try:
        from plugins.fused_attn_offset_prediction import reference
    except ImportError:
        here = Path(__file__).resolve().parent
        if str(here) not in sys.path:
            sys.path.insert(0, str(here))
        import reference  # type: ignore[no-redef]
    return reference


def params_from_plugin_attributes(attrs: dict[str, Any]) -> Any:
    """`FusedAttnOffsetParams` from the plugin's attributes (numpy arrays / scalars)."""
    ref = _reference()
    return ref.FusedAttnOffsetParams.from_mapping(attrs)


def register_tensorrt_plugin() -> bool:
    """Register the plugin with `tensorrt.plugin`; returns False when TensorRT lacks that module.

    Idempotent, so every entry point that may meet the op can call it.
    """
    global _registered
    if _registered:
        return True
    try:
        import tensorrt.plugin as trtp
    except ImportError:
        return False
    import numpy as np
    import numpy.typing as npt

    @trtp.register(PLUGIN_ID)
    def _describe(
        x_q: trtp.TensorDesc,
        weight_0: npt.NDArray[np.int8],
        weight_scale_0: npt.NDArray[np.float32],
        input_scale_0: float,
        input_zero_point_0: int,
        bias_0: npt.NDArray[np.float32],
        weight_1: npt.NDArray[np.int8],
        weight_scale_1: npt.NDArray[np.float32],
        input_scale_1: float,
        input_zero_point_1: int,
        bias_1: npt.NDArray[np.float32],
    ) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        """Outputs keep every dimension of x_q but the last, which becomes N_0 / N_1."""
        import tensorrt as trt

        outputs = []
        for scales in (weight_scale_0, weight_scale_1):
            shape = list(x_q.shape_expr)
            shape[-1] = int(np.asarray(scales).size)
            outputs.append(trtp.from_shape_expr(tuple(shape), dtype=trt.float32))
        return outputs[0], outputs[1]

    @trtp.autotune(PLUGIN_ID)
    def _formats(
        x_q: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc, trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        """int8 linear in, float32 linear out: the only combination the math is defined for."""
        return [trtp.AutoTuneCombination("INT8, FP32, FP32", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def _compute(
        x_q: trtp.Tensor,
        weight_0: npt.NDArray[np.int8],
        weight_scale_0: npt.NDArray[np.float32],
        input_scale_0: float,
        input_zero_point_0: int,
        bias_0: npt.NDArray[np.float32],
        weight_1: npt.NDArray[np.int8],
        weight_scale_1: npt.NDArray[np.float32],
        input_scale_1: float,
        input_zero_point_1: int,
        bias_1: npt.NDArray[np.float32],
        outputs: tuple[trtp.Tensor, trtp.Tensor],
        stream: int,
    ) -> None:
        import torch

        ref = _reference()
        n0, n1 = int(np.asarray(weight_scale_0).size), int(np.asarray(weight_scale_1).size)
        params = ref.FusedAttnOffsetParams(
            ref.Projection(np.asarray(weight_0).reshape(n0, -1), weight_scale_0, input_scale_0,
                           input_zero_point_0, bias_0),
            ref.Projection(np.asarray(weight_1).reshape(n1, -1), weight_scale_1, input_scale_1,
                           input_zero_point_1, bias_1),
        )
        x = torch.as_tensor(x_q, device="cuda")
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            y0, y1 = ref.fused_attn_offset_prediction_torch(x, None, params)
            torch.as_tensor(outputs[0], device="cuda").copy_(y0)
            torch.as_tensor(outputs[1], device="cuda").copy_(y1)

    _registered = True
    return True
