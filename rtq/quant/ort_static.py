"""INT8 the way ONNX Runtime's CPU kernels want it: ORT's own `quantize_static` on an FP32 ONNX.

modelopt's Q/DQ export is placed for TensorRT; ORT's x86 QDQ transformers only fuse groups they
recognise into QLinearConv / QLinearMatMul. ORT's quantizer places Q/DQ where those fusions
match. Which op types are quantized and which name scopes stay float is data (`OrtVariant`, read
from the benchmark's YAML), not code.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtq.errors import UserError

INTEGER_KERNEL_OPS = ("Conv", "MatMul")


@dataclass(frozen=True)
class OrtVariant:
    """An ORT-oriented INT8 variant: the op types `quantize_static` quantizes, and name scopes whose
    non-Conv/MatMul ops stay float (sensitive arithmetic such as the decoder's box refinement)."""

    op_types: tuple[str, ...]
    float_scopes: tuple[str, ...] = ()
    description: str = ""


def ort_variants(entries: Mapping[str, Any]) -> dict[str, OrtVariant]:
    """`{name: {op_types, float_scopes, description}}` from a config -> `OrtVariant`s, checked."""
    variants = {}
    for name, entry in entries.items():
        entry = dict(entry or {})
        unknown = sorted(set(entry) - {"op_types", "float_scopes", "description"})
        if unknown:
            raise UserError(
                f"ORT variant '{name}' has unknown keys {unknown}: use op_types, float_scopes, description"
            )
        op_types = tuple(str(op) for op in entry.get("op_types") or ())
        if not op_types:
            raise UserError(f"ORT variant '{name}' has no op_types: list the ONNX op types to quantize")
        variants[str(name)] = OrtVariant(
            op_types=op_types,
            float_scopes=tuple(str(scope) for scope in entry.get("float_scopes") or ()),
            description=str(entry.get("description") or name),
        )
    return variants


def ort_quantize_static(
    fp32_path: Path,
    out_path: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    op_types: Sequence[str] = INTEGER_KERNEL_OPS,
    float_scopes: Sequence[str] = (),
) -> Path:
    """`_ort_quantize_static` in a fresh process.

    modelopt.onnx patches ONNX Runtime's quantization registries and functions when it runs, so
    after any modelopt ONNX quantization in this process ORT's own `quantize_static` no longer
    behaves as documented; a spawned process has pristine modules.
    """
    args = (fp32_path, out_path, [dict(feed) for feed in feeds], tuple(op_types), tuple(float_scopes))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return Path(pool.apply(_ort_quantize_static, args))


def _ort_quantize_static(
    fp32_path: Path,
    out_path: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    op_types: Sequence[str] = INTEGER_KERNEL_OPS,
    float_scopes: Sequence[str] = (),
) -> Path:
    """Quantize `fp32_path` the way ONNX Runtime's CPU kernels want it.

    uint8 asymmetric activations and int8 symmetric per-channel weights in QDQ format are the
    combination ORT's QDQ transformers fuse into QLinearConv / QLinearMatMul on x86. Only Conv and
    MatMul are quantized by default: those are the ops with integer kernels. The model first goes
    through ORT's quantization pre-processing (its basic graph optimizations, as ORT recommends), so
    the Q/DQ land on the graph ORT actually runs. Min/max calibration reduces each tensor to its
    range inside the calibration graph, so memory stays small. Ops other than Conv/MatMul whose node
    name starts with one of `float_scopes` are left unquantized.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._feeds = iter([dict(feed) for feed in feeds])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(prefix="rtq-ort-pre-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(os.fspath(fp32_path), os.fspath(prepared), skip_symbolic_shape=True)
        graph = onnx.load(os.fspath(prepared), load_external_data=False).graph
        keep_float = [
            node.name
            for node in graph.node
            if node.op_type in op_types
            and node.op_type not in INTEGER_KERNEL_OPS
            and any(node.name.startswith(scope) for scope in float_scopes)
        ]
        quantize_static(
            os.fspath(prepared),
            os.fspath(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return out_path
