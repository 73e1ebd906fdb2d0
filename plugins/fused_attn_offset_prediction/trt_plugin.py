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
    """`FusedAttnOffsetParams` from the plugin's attributes as TensorRT hands them over: every field a
    1-D array (scalars as one-element arrays), the int8 weights flattened."""
    import numpy as np

    fields = dict(attrs)
    for i in range(2):
        n = int(np.asarray(fields[f"weight_scale_{i}"]).size)
        fields[f"weight_{i}"] = np.asarray(fields[f"weight_{i}"]).reshape(n, -1)
    return _reference().FusedAttnOffsetParams.from_mapping(fields)


class DeviceParams:
    """Each plugin instance's projections on the GPU, uploaded on its first enqueue and reused.

    `tensorrt.plugin` passes an instance's attributes as the same NumPy objects on every enqueue (a
    clone shares them), so `weight_0`'s identity names the instance; holding the array keeps the id
    from being reused while the entry lives.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], tuple[Any, Any]] = {}

    def get(self, attrs: dict[str, Any], device: Any) -> Any:
        key = (id(attrs["weight_0"]), str(device))
        entry = self._entries.get(key)
        if entry is None or entry[0] is not attrs["weight_0"]:
            params = params_from_plugin_attributes(attrs)
            entry = (attrs["weight_0"], _reference().torch_projections(params, device))
            self._entries[key] = entry
        return entry[1]


DEVICE_PARAMS = DeviceParams()


def _already_registered(trtp: Any) -> bool:
    """Whether this process's `tensorrt.plugin` registry already holds the op (registering it again
    raises ValueError "... already has a defintion ...")."""
    namespace, name = PLUGIN_ID.split("::")
    return hasattr(getattr(trtp.op, namespace, None), name)


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
    if _already_registered(trtp):
        _registered = True
        return True
    import numpy as np
    import numpy.typing as npt

    # Scalars are declared as arrays: the creator converts a non-array annotation with
    # `annotation(field.data)` on a 1-D array, which NumPy >= 2.4 rejects.
    @trtp.register(PLUGIN_ID)
    def _describe(
        x_q: trtp.TensorDesc,
        weight_0: npt.NDArray[np.int8],
        weight_scale_0: npt.NDArray[np.float32],
        input_scale_0: npt.NDArray[np.float32],
        input_zero_point_0: npt.NDArray[np.int32],
        bias_0: npt.NDArray[np.float32],
        weight_1: npt.NDArray[np.int8],
        weight_scale_1: npt.NDArray[np.float32],
        input_scale_1: npt.NDArray[np.float32],
        input_zero_point_1: npt.NDArray[np.int32],
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
        input_scale_0: npt.NDArray[np.float32],
        input_zero_point_0: npt.NDArray[np.int32],
        bias_0: npt.NDArray[np.float32],
        weight_1: npt.NDArray[np.int8],
        weight_scale_1: npt.NDArray[np.float32],
        input_scale_1: npt.NDArray[np.float32],
        input_zero_point_1: npt.NDArray[np.int32],
        bias_1: npt.NDArray[np.float32],
        outputs: tuple[trtp.Tensor, trtp.Tensor],
        stream: int,
    ) -> None:
        import torch

        attrs = {
            "weight_0": weight_0, "weight_scale_0": weight_scale_0, "input_scale_0": input_scale_0,
            "input_zero_point_0": input_zero_point_0, "bias_0": bias_0,
            "weight_1": weight_1, "weight_scale_1": weight_scale_1, "input_scale_1": input_scale_1,
            "input_zero_point_1": input_zero_point_1, "bias_1": bias_1,
        }  # fmt: skip
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            x = torch.as_tensor(x_q, device="cuda")
            projections = DEVICE_PARAMS.get(attrs, x.device)
            y0, y1 = _reference().fused_attn_offset_prediction_torch(x, None, projections)
            torch.as_tensor(outputs[0], device="cuda").copy_(y0)
            torch.as_tensor(outputs[1], device="cuda").copy_(y1)

    _registered = True
    return True
