"""What a deployable model takes and gives: names, element types, dims and its batch range.

Triton needs the I/O of the file it serves. An ONNX file says it directly. A TensorRT engine says
it only through `tensorrt` (with a GPU), which most machines lack, so otherwise the engine's I/O is
read from the ONNX it was built from: the `model.build.json` rtq writes beside every engine names
that file and the optimisation profile, whose batch range bounds what Triton may send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rtq.backends.tensorrt.build import read_build_info
from rtq.backends.tensorrt.compat import tensorrt_available
from rtq.errors import UserError

Dim = int | str  # a size, or the name of a symbolic dimension ("?" when unnamed)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    dtype: np.dtype[Any]
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class ModelSignature:
    """A model's inputs and outputs, and the batch range its producer guarantees (engine profiles)."""

    source: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_range: tuple[int, int] | None = None  # (min, max) batch of a TensorRT optimisation profile
    notes: list[str] = field(default_factory=list)  # how the I/O was read, for the log


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def _tensor_spec(info: onnx.ValueInfoProto, path: Path) -> TensorSpec:
    tensor = info.type.tensor_type
    if not info.type.HasField("tensor_type") or tensor.elem_type == onnx.TensorProto.UNDEFINED:
        raise UserError(f"{info.name!r} in {str(path)!r} is not a typed tensor: "
                        "re-export the model with tensor I/O")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, ValueError, TypeError):
        name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise UserError(f"{info.name!r} in {str(path)!r} has element type {name}, which Triton cannot carry: "
                        "export it with a standard type (float, int, bool)") from None
    if not tensor.HasField("shape"):
        raise UserError(f"{info.name!r} in {str(path)!r} has no shape: re-export the model with shaped I/O")
    dims: list[Dim] = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
    ]
    return TensorSpec(info.name, dtype, tuple(dims))


def onnx_signature(path: str | Path) -> ModelSignature:
    """The I/O of an ONNX file (weights listed as graph inputs are not inputs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {str(path)!r} does not exist: pass an existing .onnx or .plan file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for a file of other bytes
        raise UserError(f"{str(path)!r} is not a readable ONNX model ({_first_line(err)}): "
                        "pass an ONNX file written by rtq's export") from None
    if model.ir_version == 0 or not model.graph.node:
        raise UserError(f"{str(path)!r} is not a readable ONNX model (no graph in it): "
                        "pass an ONNX file written by rtq's export")
    weights = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_spec(i, path) for i in model.graph.input if i.name not in weights)
    outputs = tuple(_tensor_spec(o, path) for o in model.graph.output)
    if not inputs:
        raise UserError(f"{str(path)!r} has no graph inputs: Triton serves a model that takes a tensor; "
                        "export the model with its image input")
    if not outputs:
        raise UserError(f"{str(path)!r} has no graph outputs: re-export the model with its outputs")
    return ModelSignature(path, inputs, outputs)


def profile_batch_range(info: dict[str, Any] | None) -> tuple[int, int] | None:
    """(min, max) batch the engine's optimisation profile covers on every input, if recorded."""
    profiles = ((info or {}).get("config") or {}).get("profiles") or {}
    if not profiles:
        return None
    lows = [int(p["min"][0]) for p in profiles.values() if p.get("min")]
    highs = [int(p["max"][0]) for p in profiles.values() if p.get("max")]
    return (max(lows), min(highs)) if lows and highs else None


def _engine_io_from_tensorrt(engine: Path) -> ModelSignature | None:
    """The engine's own I/O, when `tensorrt` and a GPU can deserialize it; None otherwise."""
    if not tensorrt_available():
        return None
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    try:
        cuda_engine = runtime.deserialize_cuda_engine(engine.read_bytes())
    except Exception:  # noqa: BLE001 - no GPU, or a plan of another TensorRT version
        cuda_engine = None
    if cuda_engine is None:
        return None
    inputs, outputs, highs, lows = [], [], [], []
    for index in range(cuda_engine.num_io_tensors):
        name = cuda_engine.get_tensor_name(index)
        dims = tuple(int(d) if int(d) >= 0 else "?" for d in cuda_engine.get_tensor_shape(name))
        spec = TensorSpec(name, np.dtype(trt.nptype(cuda_engine.get_tensor_dtype(name))), dims)
        if cuda_engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(spec)
            if dims and dims[0] == "?":
                low, _, high = cuda_engine.get_tensor_profile_shape(name, 0)
                lows.append(int(low[0]))
                highs.append(int(high[0]))
        else:
            outputs.append(spec)
    batch = (max(lows), min(highs)) if lows else None
    notes = [f"I/O read from {engine} by TensorRT"]
    return ModelSignature(engine, tuple(inputs), tuple(outputs), batch, notes)


def engine_signature(engine: str | Path, onnx_path: str | Path | None = None) -> ModelSignature:
    """The I/O of a TensorRT engine: from TensorRT when it can read the plan, else from its ONNX.

    The ONNX is `onnx_path` when given, else the one `model.build.json` beside the engine names.
    """
    engine = Path(engine)
    if not engine.is_file():
        raise UserError(f"engine {str(engine)!r} does not exist: pass an existing .plan file")
    info = read_build_info(engine)
    own = _engine_io_from_tensorrt(engine)
    if own is not None:
        return own
    source = Path(onnx_path) if onnx_path else None
    if source is None and info and info.get("onnx"):
        source = Path(str(info["onnx"]))
        if not source.is_absolute() and not source.is_file():
            source = engine.parent / source.name
    if source is None:
        raise UserError(
            f"cannot read the I/O of engine {str(engine)!r}: TensorRT is not usable here and no "
            f"{engine.stem}.build.json names its ONNX; pass --onnx with the ONNX it was built from"
        )
    if not source.is_file():
        raise UserError(f"the ONNX engine {str(engine)!r} was built from, {str(source)!r}, does not exist: "
                        "pass --onnx with the ONNX it was built from")
    onnx_io = onnx_signature(source)
    notes = [f"I/O of {engine.name} read from {source} (TensorRT not usable here)"]
    return ModelSignature(engine, onnx_io.inputs, onnx_io.outputs, profile_batch_range(info), notes)
