"""Detectors that exist only as an ONNX file: load them and give them a symbolic batch dimension.

Third-party exports such as YOLOX's are often traced at batch 1, with the 1 baked into the graph
inputs/outputs, every recorded intermediate shape and the shape constants (`rtq.models.batch_axis`
follows the batch through them, merged with windows or heads too). The rest of rtq (batched
evaluation, FPS sweeps, TensorRT optimisation profiles) needs batch `N`, so
`make_batch_dynamic` rewrites those places and `check_dynamic_batch` proves the result by running
it: each image of a batch must get the outputs it gets alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from rtq.errors import UserError
from rtq.files import save_onnx_atomic
from rtq.models.batch_axis import BatchAxes, BatchAxisError, fold_constants, track_batch_axis

BATCH_DIM = "N"


@dataclass
class BatchRewrite(BatchAxes):
    """What `make_batch_dynamic` changed, for the stage log (the constants: see `BatchAxes`)."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


ONNX_PATH_FIX = "set model.onnx_path=PATH to the detector's exported .onnx file (e.g. models/yolox_nano.onnx)"


def _first_line(err: Exception) -> str:
    """ONNX and protobuf errors run over several lines; the first one says what is wrong."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def load_detector_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX detector, failing with a fix when the path is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"ONNX model {str(path)!r} does not exist: set model.onnx_path to an existing .onnx file"
        )
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for a file of other bytes
        raise UserError(
            f"{str(path)!r} is not a readable ONNX model ({_first_line(err)}): {ONNX_PATH_FIX}"
        ) from None
    if model.ir_version == 0 or len(model.graph.node) == 0:  # empty or text files can parse as protobuf
        raise UserError(f"{str(path)!r} is not a readable ONNX model (no graph in it): {ONNX_PATH_FIX}")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as err:
        raise UserError(
            f"{str(path)!r} is not a valid ONNX model ({_first_line(err)}): re-export it, or {ONNX_PATH_FIX}"
        ) from None
    check_image_input(model, path)
    return model


def tensor_dims(info: onnx.ValueInfoProto) -> list[int | str]:
    """Dims of a graph input or output: numbers where static, else the symbol (or "?")."""
    shape = info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in shape.dim]


def check_image_input(model: onnx.ModelProto, path: Path) -> None:
    """Detector adapters feed one image batch [N, 3, H, W]; any other graph cannot be evaluated."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [info for info in model.graph.input if info.name not in weights]
    if len(inputs) == 1:
        dims = tensor_dims(inputs[0])
        if len(dims) == 4 and (dims[1] == 3 or isinstance(dims[1], str)):
            return
    found = ", ".join(f"{info.name}{tensor_dims(info)}" for info in inputs) or "none"
    raise UserError(
        f"{str(path)!r} is an ONNX model but not an image detector: its inputs are {found}, expected "
        f"one image input [N, 3, H, W]; {ONNX_PATH_FIX}"
    )


def _static_batch(model: onnx.ModelProto) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 0 or not dims[0].HasField("dim_value"):
        return None
    return int(dims[0].dim_value)


def make_batch_dynamic(
    model: onnx.ModelProto, dim_name: str = BATCH_DIM
) -> tuple[onnx.ModelProto, BatchRewrite]:
    """Copy of `model` with the static leading batch of every input/output replaced by `dim_name`.

    Shape constants that carry the batch follow it (`rtq.models.batch_axis`): each `Reshape` target
    infers the batch axis (0 = "copy from the input" where the batch stays on the same axis, else
    -1 with the other entries explicit), and batch-free tensors that meet batched ones in a
    non-broadcasting op are tiled by N. Shapes the graph computes at run time (TorchScript's
    `Shape -> Gather -> Concat`) are folded at the static batch first when they stop that.
    Recorded intermediate shapes are dropped and re-inferred, since they all carry the old batch.
    Raises `BatchAxisError` where the batch cannot be followed.
    """
    batch = _static_batch(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    report = BatchRewrite()
    if batch is None:
        return out, report
    try:
        track_batch_axis(out, batch, report)
    except BatchAxisError:  # shapes computed at run time: fold them at the static batch, then follow
        out, report = fold_constants(model), BatchRewrite()
        track_batch_axis(out, batch, report)
    for value, names in ((out.graph.input, report.inputs), (out.graph.output, report.outputs)):
        for info in value:
            dims = info.type.tensor_type.shape.dim
            if len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
                dims[0].dim_param = dim_name
                names.append(info.name)
    del out.graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    return out, report


def check_dynamic_batch(
    model_path: str | Path,
    make_feed: Callable[[int], dict[str, np.ndarray]],
    batch: int = 4,
    atol: float = 1e-4,
) -> float:
    """Run the model at batch `batch` and image by image; return the largest output difference.

    Raises when ONNX Runtime cannot infer shapes or the per-image outputs differ by more than
    `atol`, which is what a batch constant left in the graph would cause.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feed = make_feed(batch)
    batched = session.run(None, feed)
    worst = 0.0
    for i in range(batch):
        single = session.run(None, {k: v[i : i + 1] for k, v in feed.items()})
        for whole, alone in zip(batched, single, strict=True):
            if whole.shape[1:] != alone.shape[1:] or whole.shape[0] != batch:
                raise RuntimeError(f"batch {batch} output shape {whole.shape} vs single {alone.shape}")
            worst = max(worst, float(np.max(np.abs(whole[i : i + 1].astype(np.float64) - alone))))
    if worst > atol:
        raise RuntimeError(
            f"per-image outputs differ by {worst:g} between batch {batch} and 1 (atol {atol:g})"
        )
    return worst


def dynamic_batch_onnx(
    src: str | Path, dst: str | Path, dim_name: str = BATCH_DIM
) -> tuple[Path, BatchRewrite]:
    """Load `src`, rewrite its batch to `dim_name` and save it to `dst` (written atomically)."""
    try:
        model, report = make_batch_dynamic(load_detector_onnx(src), dim_name)
    except BatchAxisError as err:
        raise UserError(
            f"cannot make the static batch of {str(src)!r} symbolic ({err}): export it with a dynamic "
            "batch axis instead (rfdetr: model.export(dynamic_batch=True))"
        ) from None
    return save_onnx_atomic(model, dst), report
