"""Triton Python-backend model that runs an ONNX file with ONNX Runtime or OpenVINO (copied as model.py).

This lets a plain CPU `tritonserver` whose only backend is `python` serve rtq's ONNX exports. The
file runs inside Triton's Python stub, not in rtq: it imports nothing from rtq, and reads what to
run from the config's parameters (`runtime`, `model_file`, `inference_precision` for OpenVINO).
With `max_batch_size` > 0 the dynamic batcher hands several requests at once; they are run as one
batch and the outputs split back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class _OnnxRuntime:
    def __init__(self, path: Path, params: dict[str, str]) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(names, feeds))


class _OpenVino:
    def __init__(self, path: Path, params: dict[str, str]) -> None:
        import openvino as ov

        # bf16 is OpenVINO's default on CPUs that have it; the ONNX's own f32 unless told otherwise.
        precision = params.get("inference_precision", "f32")
        self.compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.compiled(feeds)
        return [np.asarray(result[self.compiled.output(name)]) for name in names]


Runner = type[_OnnxRuntime] | type[_OpenVino]
RUNNERS: dict[str, Runner] = {"onnxruntime": _OnnxRuntime, "openvino": _OpenVino}


class TritonPythonModel:
    """The class name and methods Triton's Python backend calls."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        runtime = params.get("runtime", "onnxruntime")
        if runtime not in RUNNERS:
            raise ValueError(f"parameter runtime={runtime!r} is unknown: choose one of {sorted(RUNNERS)}")
        self.runner = RUNNERS[runtime](folder / params.get("model_file", "model.onnx"), params)
        self.inputs = [io["name"] for io in config["input"]]
        self.outputs = [io["name"] for io in config["output"]]
        self.batching = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        feeds = [
            {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests
        ]
        if self.batching and len(feeds) > 1:
            sizes = [len(f[self.inputs[0]]) for f in feeds]
            joined = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            outputs = self.runner.run(self.outputs, joined)
            bounds = np.cumsum(sizes)[:-1]
            per_request = [list(parts) for parts in zip(*(np.split(o, bounds) for o in outputs), strict=True)]
        else:
            per_request = [self.runner.run(self.outputs, f) for f in feeds]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(v))
                                        for n, v in zip(self.outputs, values, strict=True)])
            for values in per_request
        ]
