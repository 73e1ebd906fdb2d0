"""The math of the ``fused_attn_offset_prediction`` node: the single definition every form follows.

The node replaces, in each RT-DETRv2 decoder layer's cross attention, the two INT8 projections that
read the same quantized query: ``sampling_offsets`` (index 0) and ``attention_weights`` (index 1).
The graph pass writes it, the ONNX Runtime op and the CUDA kernel compute it, and their tests compare
against this module, so any change of semantics happens here first.

Node contract (TensorRT form: domain ``""``; ONNX Runtime copy: domain ``ai.onnx.contrib``)
    op_type ``fused_attn_offset_prediction``; attributes ``plugin_version="1"``,
    ``plugin_namespace="rtq"``; inputs ``x_q`` int8 [B, Q, K] (or ``x_q0``, ``x_q1`` when the two
    projections quantize the query with different scales); outputs ``y0`` float32 [B, Q, N0] and ``y1``
    float32 [B, Q, N1]; for i in {0, 1}: ``weight_i`` TENSOR int8 [N_i, K] (PyTorch Linear layout),
    ``weight_scale_i`` FLOATS [N_i] (weight zero points are 0), ``input_scale_i`` FLOAT,
    ``input_zero_point_i`` INT, ``bias_i`` FLOATS [N_i].

Math (int32 accumulation, then one float32 rescale)::

    y_i[b, q, n] = float32(sum_k (int32(x_q_i[b, q, k]) - zp_i) * int32(weight_i[n, k]))
                   * float32(input_scale_i * weight_scale_i[n]) + bias_i[n]

The product ``input_scale_i * weight_scale_i[n]`` is formed in float32.

Public API
    ``fused_attn_offset_prediction(x_q0: np.ndarray, x_q1: np.ndarray | None,
    params: FusedAttnOffsetParams) -> tuple[np.ndarray, np.ndarray]`` (NumPy; ``x_q1=None`` means one
    input feeds both projections), ``fused_attn_offset_prediction_torch(...)`` (same, torch tensors),
    ``Projection``, ``FusedAttnOffsetParams`` (``from_attributes`` / ``to_attributes`` for ONNX
    nodes, ``from_gs_attrs`` / ``to_gs_attrs`` for onnx-graphsurgeon nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

OP_TYPE = "fused_attn_offset_prediction"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "rtq"
ORT_DOMAIN = "ai.onnx.contrib"


@dataclass
class Projection:
    """One INT8 Linear layer: quantized weight, per-output-channel scales, input quantization, bias."""

    weight: np.ndarray  # int8 [N, K], row n = output channel n
    weight_scale: np.ndarray  # float32 [N]
    input_scale: float
    input_zero_point: int
    bias: np.ndarray  # float32 [N]

    def __post_init__(self) -> None:
        self.weight = np.ascontiguousarray(self.weight, dtype=np.int8)
        self.weight_scale = np.asarray(self.weight_scale, dtype=np.float32).reshape(-1)
        self.bias = np.asarray(self.bias, dtype=np.float32).reshape(-1)
        self.input_scale = float(np.float32(self.input_scale))
        self.input_zero_point = int(self.input_zero_point)
        n = self.weight.shape[0]
        if self.weight.ndim != 2 or self.weight_scale.shape != (n,) or self.bias.shape != (n,):
            raise ValueError(f"inconsistent projection shapes: weight {self.weight.shape}, "
                             f"weight_scale {self.weight_scale.shape}, bias {self.bias.shape}")

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def combined_scale(self) -> np.ndarray:
        """float32 [N]: input scale times each weight scale, the rescale of the int32 accumulator."""
        return (np.float32(self.input_scale) * self.weight_scale).astype(np.float32)


@dataclass
class FusedAttnOffsetParams:
    """Both projections of one decoder layer (0 = sampling_offsets, 1 = attention_weights)."""

    sampling_offsets: Projection
    attention_weights: Projection

    def __post_init__(self) -> None:
        if self.sampling_offsets.in_features != self.attention_weights.in_features:
            raise ValueError("both projections must read the same query width K")

    @property
    def projections(self) -> tuple[Projection, Projection]:
        return self.sampling_offsets, self.attention_weights

    @property
    def shares_input(self) -> bool:
        """True when one quantized query feeds both projections (same scale and zero point)."""
        a, b = self.projections
        return a.input_scale == b.input_scale and a.input_zero_point == b.input_zero_point

    # ---- ONNX attributes -------------------------------------------------------------------------
    def to_attributes(self) -> dict[str, Any]:
        """Keyword arguments for ``onnx.helper.make_node`` (weights as TensorProto)."""
        from onnx import numpy_helper

        attrs: dict[str, Any] = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}
        for i, p in enumerate(self.projections):
            attrs[f"weight_{i}"] = numpy_helper.from_array(p.weight, name=f"weight_{i}")
            attrs[f"weight_scale_{i}"] = [float(v) for v in p.weight_scale]
            attrs[f"input_scale_{i}"] = float(p.input_scale)
            attrs[f"input_zero_point_{i}"] = int(p.input_zero_point)
            attrs[f"bias_{i}"] = [float(v) for v in p.bias]
        return attrs

    def to_gs_attrs(self) -> dict[str, Any]:
        """Attributes for an onnx-graphsurgeon node (weights as ``gs.Constant``)."""
        import onnx_graphsurgeon as gs

        attrs = self.to_attributes()
        for i, p in enumerate(self.projections):
            attrs[f"weight_{i}"] = gs.Constant(f"weight_{i}", p.weight)
        return attrs

    @classmethod
    def from_mapping(cls, attrs: Mapping[str, Any]) -> FusedAttnOffsetParams:
        """Build from decoded attribute values (arrays, lists, numbers, or gs/ONNX tensors)."""
        projections = []
        for i in range(2):
            try:
                projections.append(Projection(
                    weight=_as_array(attrs[f"weight_{i}"]),
                    weight_scale=_as_array(attrs[f"weight_scale_{i}"]),
                    input_scale=float(_scalar(attrs[f"input_scale_{i}"])),
                    input_zero_point=int(_scalar(attrs.get(f"input_zero_point_{i}", 0))),
                    bias=_as_array(attrs[f"bias_{i}"]),
                ))
            except KeyError as missing:
                raise ValueError(f"{OP_TYPE} node lacks attribute {missing}") from None
        return cls(*projections)

    @classmethod
    def from_attributes(cls, node: Any) -> FusedAttnOffsetParams:
        """Read an ``onnx.NodeProto``."""
        from onnx import helper

        return cls.from_mapping({a.name: helper.get_attribute_value(a) for a in node.attribute})

    @classmethod
    def from_gs_attrs(cls, attrs: Mapping[str, Any]) -> FusedAttnOffsetParams:
        return cls.from_mapping(attrs)


def _scalar(value: Any) -> Any:
    """A scalar attribute as a Python number, also when it arrives as a one-element array (TensorRT
    hands plugin fields over as 1-D arrays; NumPy >= 2.4 refuses ``float()`` of those)."""
    array = np.asarray(value).reshape(-1)
    if array.size != 1:
        raise ValueError(f"expected one value for a scalar attribute, got {array.size}")
    return array[0].item()


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "values"):  # onnx-graphsurgeon Constant
        return np.asarray(value.values)
    if type(value).__name__ == "TensorProto":
        from onnx import numpy_helper

        return numpy_helper.to_array(value)
    return np.asarray(value)


def _project(x_q: np.ndarray, p: Projection) -> np.ndarray:
    if x_q.dtype != np.int8:
        raise TypeError(f"x_q must be int8, got {x_q.dtype}")
    if x_q.shape[-1] != p.in_features:
        raise ValueError(f"x_q last dim {x_q.shape[-1]} != weight K {p.in_features}")
    x = x_q.astype(np.int32) - np.int32(p.input_zero_point)
    acc = x.reshape(-1, p.in_features) @ p.weight.astype(np.int32).T  # int32 accumulation
    y = acc.astype(np.float32) * p.combined_scale() + p.bias
    return y.astype(np.float32).reshape(*x_q.shape[:-1], p.out_features)


def fused_attn_offset_prediction(x_q0: np.ndarray, x_q1: np.ndarray | None,
                                 params: FusedAttnOffsetParams) -> tuple[np.ndarray, np.ndarray]:
    """(sampling offsets, attention weights) from the int8 query(s); ``x_q1=None`` reuses ``x_q0``."""
    x_q1 = x_q0 if x_q1 is None else x_q1
    return _project(np.asarray(x_q0), params.sampling_offsets), _project(np.asarray(x_q1),
                                                                          params.attention_weights)


@dataclass
class TorchProjection:
    """One Projection's tensors on one device, made once so a caller that runs many times (the
    TensorRT Python plugin's enqueue) copies nothing host -> device per call."""

    weight: Any  # float64 [N, K]: int8 products summed exactly (|acc| < 2**53)
    input_zero_point: float
    scale: Any  # float32 [N], input scale x weight scale
    bias: Any  # float32 [N]

    @classmethod
    def of(cls, p: Projection, device: Any) -> TorchProjection:
        import torch

        return cls(
            weight=torch.as_tensor(p.weight, device=device).to(torch.float64),
            input_zero_point=float(p.input_zero_point),
            scale=torch.as_tensor(p.combined_scale(), device=device),
            bias=torch.as_tensor(p.bias, device=device),
        )

    def __call__(self, x_q: Any) -> Any:
        import torch

        x = x_q.to(torch.float64) - self.input_zero_point
        acc = (x @ self.weight.T).to(torch.float32)
        return acc * self.scale + self.bias


def torch_projections(params: FusedAttnOffsetParams, device: Any) -> tuple[TorchProjection, TorchProjection]:
    """Both projections' tensors on `device` (see TorchProjection)."""
    return tuple(TorchProjection.of(p, device) for p in params.projections)  # type: ignore[return-value]


def fused_attn_offset_prediction_torch(
    x_q0: Any, x_q1: Any, params: FusedAttnOffsetParams | tuple[TorchProjection, TorchProjection]
) -> tuple[Any, Any]:
    """Torch form of the same math (any device); `params` may be prepared once with `torch_projections`."""
    if isinstance(params, FusedAttnOffsetParams):
        params = torch_projections(params, x_q0.device)
    x_q1 = x_q0 if x_q1 is None else x_q1
    return params[0](x_q0), params[1](x_q1)
