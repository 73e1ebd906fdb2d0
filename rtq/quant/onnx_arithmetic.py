"""Evaluate modelopt's INT8 quantizers with the arithmetic of the exported QuantizeLinear/DequantizeLinear.

modelopt fake-quantizes as `round(x * (127 / amax)) / (127 / amax)`, always in float32; the exported
graph computes `round(x / s) * s` with `s = float32(amax / 127)`, in the tensor's own dtype. The two
are the same function except where `x / s` lies within an ulp of a rounding tie, and there one INT8
level apart. For an exact torch-vs-ONNX check that difference is noise to remove, so this module
registers a modelopt quant backend (modelopt's own extension point) computing the ONNX formula,
and a context manager that switches a model's quantizers to it and back. It changes nothing of
calibration or export: the export always goes through modelopt's own Q/DQ symbolic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

BACKEND = "rtq_onnx_qdq"


def _top_level(quantizer: Any) -> int:
    return (1 << (int(quantizer.num_bits) - 1 + int(bool(quantizer.unsigned)))) - 1


def exported_scale(quantizer: Any) -> torch.Tensor:
    """The float32 scale modelopt's INT8 export writes: `amax / (2**(bits-1) - 1)`, a zero amax -> 1."""
    scale = torch.as_tensor(quantizer.amax).detach().to(torch.float32) / _top_level(quantizer)
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def onnx_fake_quant(inputs: torch.Tensor, quantizer: Any) -> torch.Tensor:
    """`DequantizeLinear(QuantizeLinear(inputs))` with the scale and range the export writes.

    Scale: `exported_scale`; saturation: the full INT8/UINT8 range, as ONNX QuantizeLinear
    saturates; rounding: half to even; everything in the input's dtype, so a float64 model stays
    float64.
    """
    top = _top_level(quantizer)
    bottom = 0 if quantizer.unsigned else -top - 1
    scale = exported_scale(quantizer).to(inputs.device, inputs.dtype)
    return torch.clamp(torch.round(inputs / scale), bottom, top) * scale


def _register() -> None:
    from modelopt.torch.quantization.nn.modules.tensor_quantizer import (
        is_registered_quant_backend,
        register_quant_backend,
    )

    if not is_registered_quant_backend(BACKEND):
        register_quant_backend(BACKEND, onnx_fake_quant)


def _exported_as_int_qdq(quantizer: Any) -> bool:
    """Quantizers whose export is one INT8 QuantizeLinear/DequantizeLinear pair with a static scale."""
    return (
        quantizer.is_enabled
        and isinstance(quantizer.num_bits, int)
        and quantizer.num_bits == 8
        and not getattr(quantizer, "_dynamic", False)
        and quantizer.block_sizes is None
        and quantizer.amax is not None
        and getattr(quantizer, "backend", None) is None
    )


@contextmanager
def onnx_quantizer_arithmetic(model: nn.Module) -> Iterator[int]:
    """Within the block, every static INT8 quantizer of `model` computes the ONNX Q/DQ formula.

    Yields how many quantizers were switched; restores modelopt's own arithmetic on exit.
    """
    from modelopt.torch.quantization.nn import TensorQuantizer

    _register()
    switched = [
        module
        for module in model.modules()
        if isinstance(module, TensorQuantizer) and _exported_as_int_qdq(module)
    ]
    for quantizer in switched:
        quantizer.backend = BACKEND
    try:
        yield len(switched)
    finally:
        for quantizer in switched:
            quantizer.backend = None
