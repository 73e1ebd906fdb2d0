"""Which runner measures the model under test, and the honest label of what it ran.

The compiled model when a compiler (TensorRT, OpenVINO) built one (OpenVINO compiles the newest
graph itself when no build stage ran); the (fake-quant) torch model for `backend=torch`; else the
newest graph in ONNX Runtime. The label says the backend and precision that ran, so an FP16
TensorRT experiment on a machine without TensorRT is a row of ONNX Runtime FP32, not of fp16.
"""

from __future__ import annotations

from typing import Any

from rtq.errors import UserError
from rtq.pipeline.stage import StageContext

ORT_SETTINGS = ("providers", "intra_op_threads")


def ort_settings(ctx: StageContext) -> dict[str, Any]:
    """`backend.providers` / `backend.intra_op_threads` of an ONNX Runtime backend (else defaults)."""
    backend = ctx.section("backend")
    if backend.get("name") != "onnxruntime":
        return {}
    return {key: backend[key] for key in ORT_SETTINGS if backend.get(key) is not None}


def graph_runner(ctx: StageContext, path: Any, name: str, mode: Any) -> Any:
    """ONNX Runtime on one of the run's graphs, with the backend's providers and threads."""
    from rtq.backends.onnxruntime import make_graph_runner

    return make_graph_runner(path, name, ctx.run_dir / "ort", mode=mode, **ort_settings(ctx))


def openvino_marking_runner(ctx: StageContext) -> Any:
    """(graph path, extra outputs) -> an OpenVINO runner with the backend's settings, for layer-wise
    compares that mark tensors of the graph under test."""
    from rtq.backends.openvino.compile import OpenVinoSettings
    from rtq.backends.openvino.runner import make_openvino_runner

    settings = OpenVinoSettings.from_mapping(ctx.section("backend"))
    return lambda path, extra: make_openvino_runner(path, settings, extra, name="target")


def target_runner(ctx: StageContext, mode: Any) -> tuple[Any, dict[str, Any]]:
    """The runner for the model under test, and what it runs: backend, precision, settings."""
    art = ctx.artifacts
    backend = ctx.section("backend")
    if backend.get("name") == "openvino" and (art.engine is None or art.engine_compiler == "openvino"):
        from rtq.backends.openvino.compile import OpenVinoSettings
        from rtq.backends.openvino.runner import make_openvino_runner

        settings = OpenVinoSettings.from_mapping(backend)
        model = art.engine if art.engine is not None else art.graph
        if model is None:
            raise UserError("backend=openvino needs an ONNX model: add export to `stages`")
        # float parts run in the inference precision: an FP32 graph under bf16 is a bf16 row
        precision = art.precision
        if precision == "fp32" and settings.inference_precision != "f32":
            precision = settings.inference_precision
        record = settings.record()
        label = {
            "backend": "openvino",
            "precision": precision,
            "settings": record,
            "compiler": f"openvino {record['openvino']} ({settings.inference_precision})",
        }
        return make_openvino_runner(model, settings, name="target"), label
    if art.engine is not None:
        from rtq.backends.tensorrt.build import read_build_info
        from rtq.backends.tensorrt.runner import make_trt_runner

        built = read_build_info(art.engine) or {}
        precision = str(backend.get("precision", "fp32"))
        precision = str(built.get("precision_built") or ("int8" if precision == "int8_qdq" else precision))
        label = {
            "backend": art.engine_compiler,
            "precision": precision.replace(" ", "_"),  # what was built: int8_fp32, int8_fp16, fp16, fp32
            "compiler": f"tensorrt {built['tensorrt']}" if built.get("tensorrt") else _version("tensorrt"),
            "device": built.get("gpu", ""),
            "build_flags": built.get("build_flags", ""),
        }
        return make_trt_runner(art.engine), label
    if backend.get("name") == "torch":
        model = art.deployed_torch_model
        if model is None:
            raise UserError(
                f"backend=torch needs a torch model, but {ctx.detector.name} is an ONNX file; "
                "use backend=onnxruntime"
            )
        from rtq.backends.torch import make_torch_runner

        threads = backend.get("num_threads")
        label = {
            "backend": "torch",
            "precision": art.precision,
            "settings": {"num_threads": threads},
            "compiler": _version("torch"),
        }
        return make_torch_runner(model, num_threads=threads), label
    graph = art.graph
    if graph is None:
        raise UserError(f"backend={backend.get('name')} needs an ONNX model: add export to `stages`")
    label = {
        "backend": "onnxruntime",
        "precision": art.precision,
        "settings": ort_settings(ctx),
        "compiler": _version("onnxruntime"),
    }
    return graph_runner(ctx, graph, "target", mode), label


def _version(package: str) -> str:
    """`package version` of the runtime that ran (the results table's compiler column)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return package
