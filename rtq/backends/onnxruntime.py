"""ONNX Runtime runners built from Polygraphy loaders, in a reference and a fast flavour.

The reference runner disables every ONNX Runtime graph optimization so it executes the graph as
written, node by node: the ground truth for comparing a TensorRT engine. The fast runner enables
all of them, as a deployment would. Both are Polygraphy `OnnxrtRunner`s, so `Comparator` and
RunResults JSON work on them unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import onnxruntime as ort
from polygraphy.backend.base import BaseLoader
from polygraphy.backend.onnxrt import OnnxrtRunner

from rtq.errors import UserError
from rtq.onnx_graph import computed_tensors, mark_outputs

log = logging.getLogger(__name__)

Mode = Literal["reference", "fast"]
OPTIMIZATION_LEVELS = {
    "reference": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "fast": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def ort_extensions_library() -> str:
    """Path of the onnxruntime-extensions custom-op library (holds the `ai.onnx.contrib` Python ops)."""
    try:
        from onnxruntime_extensions import get_library_path
    except ImportError:
        raise UserError(
            "onnxruntime-extensions is not installed but the model needs its custom ops; "
            "pip install onnxruntime-extensions"
        ) from None
    return str(get_library_path())


class SessionFromOnnxWithOptions(BaseLoader):
    """Polygraphy loader for an `InferenceSession` with the session options Polygraphy's own
    `SessionFromOnnx` does not expose: custom-op libraries, thread count, saving the optimized model.
    """

    def __init__(
        self,
        model: bytes | str | Any,
        providers: Sequence[str],
        graph_optimization_level: ort.GraphOptimizationLevel,
        intra_op_threads: int | None = None,
        custom_op_libraries: Sequence[str] = (),
        optimized_model_filepath: str | None = None,
        log_severity_level: int | None = None,
    ) -> None:
        self._model = model
        self.providers = list(providers)
        self.graph_optimization_level = graph_optimization_level
        self.intra_op_threads = intra_op_threads
        self.custom_op_libraries = list(custom_op_libraries)
        self.optimized_model_filepath = optimized_model_filepath
        self.log_severity_level = log_severity_level

    def call_impl(self) -> ort.InferenceSession:
        model = self._model() if callable(self._model) else self._model
        options = ort.SessionOptions()
        options.graph_optimization_level = self.graph_optimization_level
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        if self.log_severity_level is not None:
            options.log_severity_level = self.log_severity_level
        for library in self.custom_op_libraries:
            options.register_custom_ops_library(library)
        if self.optimized_model_filepath is not None:
            Path(self.optimized_model_filepath).parent.mkdir(parents=True, exist_ok=True)
            options.optimized_model_filepath = self.optimized_model_filepath
        log.debug(
            "ONNX Runtime session: providers %s, optimization %s",
            self.providers,
            options.graph_optimization_level,
        )
        return ort.InferenceSession(model, sess_options=options, providers=self.providers)


def reference_session(model: bytes | str | Path, quiet: bool = False) -> ort.InferenceSession:
    """CPU session with every graph optimization off: ONNX semantics, Q/DQ never fused into integer kernels.

    `quiet` drops ONNX Runtime's warnings (e.g. one per unused initializer of a rewritten graph).
    """
    source = str(model) if isinstance(model, Path) else model
    loader = SessionFromOnnxWithOptions(
        source,
        ["CPUExecutionProvider"],
        OPTIMIZATION_LEVELS["reference"],
        log_severity_level=3 if quiet else None,
    )
    return loader()


def _with_extra_outputs(onnx_path: Path, extra_outputs: Literal["all"] | Sequence[str]) -> bytes:
    """The model with intermediate tensors marked as outputs as well as its own outputs."""
    model = onnx.load(str(onnx_path))
    if extra_outputs == "all":
        return mark_outputs(model, computed_tensors(model), guess=False).SerializeToString()
    known = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    unknown = [name for name in extra_outputs if name not in known]
    if unknown:
        raise UserError(f"extra outputs {unknown} are not tensors of {onnx_path}; check the names in Netron")
    return mark_outputs(model, extra_outputs, guess=False).SerializeToString()


def make_onnxrt_runner(
    onnx_path: str | Path,
    mode: Mode = "fast",
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
    extra_outputs: Literal["all"] | Sequence[str] | None = None,
    custom_op_library: str | Path | None = None,
    ort_extensions: bool = False,
    optimized_model_path: str | Path | None = None,
    name: str | None = None,
) -> OnnxrtRunner:
    """A Polygraphy `OnnxrtRunner` for an ONNX file.

    mode: "reference" (ORT_DISABLE_ALL) or "fast" (ORT_ENABLE_ALL).
    extra_outputs: "all" or tensor names to mark as outputs too (layer-wise comparison).
    custom_op_library / ort_extensions: custom-op libraries to register (the latter is the
    onnxruntime-extensions library, for `ai.onnx.contrib` ops such as the plugin reference ops).
    optimized_model_path: where ONNX Runtime writes the graph it actually runs, for inspection.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist; export it first or fix the path")
    if mode not in OPTIMIZATION_LEVELS:
        raise UserError(f"onnxruntime mode {mode!r} is unknown; use 'reference' or 'fast'")

    libraries = []
    if custom_op_library is not None:
        if not Path(custom_op_library).is_file():
            raise UserError(f"custom-op library {custom_op_library} does not exist; fix the path")
        libraries.append(os.fspath(custom_op_library))
    if ort_extensions:
        libraries.append(ort_extensions_library())

    model: Any = str(path)
    if extra_outputs is not None:
        model = _with_extra_outputs(path, extra_outputs)

    session = SessionFromOnnxWithOptions(
        model,
        providers=list(providers) if providers is not None else default_providers(),
        graph_optimization_level=OPTIMIZATION_LEVELS[mode],
        intra_op_threads=intra_op_threads,
        custom_op_libraries=libraries,
        optimized_model_filepath=None if optimized_model_path is None else os.fspath(optimized_model_path),
    )
    return OnnxrtRunner(session, name=name or f"onnxrt-{mode}-{path.stem}")


ORT_CONTRIB_DOMAIN = "ai.onnx.contrib"
# TensorRT plugin op -> (module with `to_ort_domain`, module whose import registers the reference op)
TENSORRT_PLUGIN_OPS: dict[str, tuple[str, str]] = {
    "fused_attn_offset_prediction": (
        "plugins.fused_attn_offset_prediction.ort_model",
        "plugins.fused_attn_offset_prediction.ort_op",
    ),
    "EfficientNMS_TRT": ("plugins.efficient_nms_trt.ort_op", "plugins.efficient_nms_trt.ort_op"),
}


def make_graph_runner(
    onnx_path: str | Path,
    name: str,
    work_dir: Path,
    mode: Mode = "reference",
    extra_outputs: Literal["all"] | Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
) -> OnnxrtRunner:
    """A runner for any graph rtq writes, plugin nodes included (CPU provider unless told otherwise).

    A graph with TensorRT plugin nodes (default domain: `fused_attn_offset_prediction`,
    `EfficientNMS_TRT`) runs as its `ai.onnx.contrib` copy, written into `work_dir`, through each
    plugin's reference op (onnxruntime-extensions).
    """
    import importlib

    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist; export it first or fix the path")
    model = onnx.load(str(path))
    uses_contrib = any(node.domain == ORT_CONTRIB_DOMAIN for node in model.graph.node)
    present = {node.op_type for node in model.graph.node if node.domain == ""} & set(TENSORRT_PLUGIN_OPS)
    for op_type in sorted(present):
        model = importlib.import_module(TENSORRT_PLUGIN_OPS[op_type][0]).to_ort_domain(model)
    if present:
        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / f"{name}.{path.stem}.ort.onnx"
        onnx.save(model, str(path))
    if uses_contrib or present:
        for _, op_module in TENSORRT_PLUGIN_OPS.values():
            importlib.import_module(op_module)  # registers the Python op
        uses_contrib = True
    return make_onnxrt_runner(
        path,
        mode=mode,
        providers=list(providers) if providers else ["CPUExecutionProvider"],
        intra_op_threads=intra_op_threads,
        extra_outputs=extra_outputs,
        ort_extensions=uses_contrib,
        name=name,
    )
