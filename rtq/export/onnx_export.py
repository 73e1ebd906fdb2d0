"""Torch detector (FP32 or modelopt fake-quant) -> ONNX with a symbolic batch `N`.

The TorchScript exporter (`dynamo=False`) is the one that turns modelopt's `TensorQuantizer`
into QuantizeLinear/DequantizeLinear pairs, so it is the only path used. A silently static batch
of 1 is the classic way a deploy ONNX goes wrong, so every graph input and output is checked to
carry `dim_param == "N"` on axis 0 after export (and again after simplification).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from rtq.errors import UserError
from rtq.export.export_fixes import fixes_for_op, known_fixes_line
from rtq.files import atomic_target
from rtq.models.io import DETECTION_INPUTS, DETECTION_OUTPUTS

BATCH_DIM = "N"
EXAMPLE_BATCH = 2  # not 1: a traced size-1 dimension is easy to specialise by accident

_OP_PATTERN = re.compile(r"operator '([\w:.]+)'|Couldn't export Python operator (\w+)")


class ExportCheckError(RuntimeError):
    """The exported graph is not what deployment needs (e.g. a static batch)."""


def example_inputs(image_size: int, batch: int = EXAMPLE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Feeds with the runner layout: images float32 [N,3,H,W] in 0..1, orig_target_sizes int64 [N,2]."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, image_size, image_size, generator=generator)
    sizes = torch.tensor([[image_size, image_size]] * batch, dtype=torch.int64)
    return images, sizes


def _module_calling(model: nn.Module, inputs: tuple[torch.Tensor, ...], op: str) -> str | None:
    """Name of the innermost module whose forward calls op `op` (found by one eager forward).

    The op is looked for both as a torch function (`torch.linalg.eigvals` is `linalg_eigvals`)
    and as an aten kernel, since composite ops are decomposed before they reach the dispatcher.
    """
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[str] = []
    found: list[str] = []
    wanted = op.split("::")[-1]

    def note(name: str) -> None:
        if not found and name == wanted:
            found.append(stack[-1] if stack else "")

    class FunctionSpy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            note(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    class DispatchSpy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            note(func._schema.name.split("::")[-1])
            return func(*args, **(kwargs or {}))

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: stack.append(name)

    def leave(*_: object) -> None:  # returns None so the module's output is left alone
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    # traced first: code may take another branch while tracing (torch.jit.is_tracing()), and that
    # branch is what the exporter saw; eager as a fallback for modules that cannot be traced
    runs: tuple[Callable[[], object], ...] = (
        lambda: torch.jit.trace(model, inputs, check_trace=False, strict=False),
        lambda: model(*inputs),
    )
    try:
        for run in runs:
            stack.clear()
            try:
                with torch.no_grad(), _quiet_export(), FunctionSpy(), DispatchSpy():
                    run()
            except Exception:  # noqa: BLE001 - best effort: the export error is what gets reported
                pass
            if found:
                break
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _export_error(err: Exception, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> UserError:
    """Turn an exporter exception into a one-line UserError naming the op and, if found, its module."""
    text = str(err)
    match = _OP_PATTERN.search(text)
    if match is None:
        first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return UserError(f"ONNX export failed: {first_line}")
    op = match.group(1) or match.group(2)
    where = _module_calling(model, inputs, op) if match.group(1) else None
    module = f" in module {where!r} ({type(model.get_submodule(where)).__name__})" if where else ""
    fixes = fixes_for_op(op)
    if fixes:
        return UserError(
            f"ONNX export cannot convert op {op!r}{module}: apply export fix {' or '.join(fixes)} "
            "(rtq.export.export_fixes; model.export_fixes for the rfdetr family)"
        )
    return UserError(
        f"ONNX export cannot convert op {op!r}{module}: no export fix handles it (known fixes: "
        f"{known_fixes_line()}); replace it with exportable ops, exclude that module from export, "
        "or raise the opset (export.opset)"
    )


def check_symbolic_batch(model: onnx.ModelProto) -> None:
    """Every graph input and output must have `dim_param == "N"` on axis 0."""
    bad = []
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_param != BATCH_DIM:
            shown = "none" if not dims else (dims[0].dim_param or dims[0].dim_value)
            bad.append(f"{value.name} (dim 0 = {shown})")
    if bad:
        raise ExportCheckError(f"exported graph lacks the symbolic batch {BATCH_DIM!r}: {', '.join(bad)}")


def _readable_ir_version(model: onnx.ModelProto) -> int:
    """The lowest IR version that can hold the model's opsets, so older runtimes can open it."""
    return int(onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    simplified = onnxslim.slim(model)
    if not isinstance(simplified, onnx.ModelProto):
        raise ExportCheckError("onnxslim returned no model")
    return simplified


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Tracer warnings from modelopt's quantizer code are expected and drown real messages."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def export_module(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[tuple[str, ...], tuple[str, ...]],
    opset: int,
    dynamic_batch: bool,
    simplify: bool,
) -> Path:
    """TorchScript export of any module to a temporary name, checks, then rename (no partial files)."""
    input_names, output_names = names
    dynamic_axes = (
        {name: {0: BATCH_DIM} for name in input_names + output_names} if dynamic_batch else None
    )
    model.eval()
    with atomic_target(path) as tmp:
        try:
            with torch.no_grad(), _quiet_export():
                torch.onnx.export(
                    model,
                    inputs,
                    str(tmp),
                    input_names=list(input_names),
                    output_names=list(output_names),
                    opset_version=opset,
                    dynamic_axes=dynamic_axes,
                    do_constant_folding=True,
                    dynamo=False,
                )
        except (torch.onnx.errors.OnnxExporterError, RuntimeError) as err:
            raise _export_error(err, model, inputs) from err
        proto = onnx.load(str(tmp))
        if simplify:
            proto = _simplify(proto)
        proto.ir_version = _readable_ir_version(proto)
        if dynamic_batch:
            check_symbolic_batch(proto)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
    return path


def export_onnx(
    model: nn.Module,
    path: str | Path,
    image_size: int = 640,
    opset: int = 17,
    dynamic_batch: bool = True,
    simplify: bool = False,
) -> Path:
    """Export a deploy model `(images, orig_target_sizes) -> (labels, boxes, scores)` to `path`."""
    inputs = example_inputs(image_size, EXAMPLE_BATCH if dynamic_batch else 1)
    names = (DETECTION_INPUTS, DETECTION_OUTPUTS)
    return export_module(model, inputs, Path(path), names, opset, dynamic_batch, simplify)


def export_raw_onnx(wrapper: nn.Module, path: str | Path, image_size: int = 640, opset: int = 17) -> Path:
    """Export a family's raw-output wrapper (`images -> raw outputs`, see `DetectorFamily.raw_outputs`).

    The wrapper names its own inputs and outputs (`input_names`, `output_names`); the network inside
    it is shared, not copied. Post-processing is left out so fidelity can be measured before top-k.
    """
    names: tuple[tuple[str, ...], tuple[str, ...]] = (
        tuple(getattr(wrapper, "input_names")), tuple(getattr(wrapper, "output_names"))  # noqa: B009
    )
    inputs = example_inputs(image_size, EXAMPLE_BATCH)[:1]
    try:
        return export_module(wrapper, inputs, Path(path), names, opset, True, False)
    finally:
        wrapper.eval()  # export restores the wrapper's (training) mode on the shared network


def qdq_node_counts(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """Number of QuantizeLinear and DequantizeLinear nodes (0 and 0 for an FP32 export)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    ops = [node.op_type for node in proto.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}
