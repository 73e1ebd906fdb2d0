"""Build and run the fused plugin on TensorRT against reference.py: the check only a GPU can make.

A synthetic graph `x (float) -> QuantizeLinear -> fused_attn_offset_prediction -> (y0, y1)` with
RT-DETRv2-R18 sizes is built into an engine with a dynamic batch, run at several batches and
compared with `reference.fused_attn_offset_prediction` on the same int8 codes. Each plugin form
(C++ library, `tensorrt.plugin`) is built and run twice in one process: a second registration or
library load is exactly what broke on first contact. The engine's inspector JSON is kept so the
report can show how TensorRT lists a plugin layer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtq.backends.tensorrt.build import (
    FUSED_OP,
    EngineBuildConfig,
    InputProfile,
    build_engine,
    layers_json_path,
)
from rtq.files import save_onnx_atomic

QUERIES, K, N0, N1 = 300, 256, 192, 96
INPUT_SCALE = 0.02
TOLERANCE = 1e-4  # relative to 1 + |reference|: float32 rescale, FMA contraction


@dataclass
class PluginRun:
    """One build-and-run of one plugin form: per batch, the largest error against reference.py."""

    plugin: str
    attempt: int
    max_error: dict[int, float] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and all(e <= TOLERANCE for e in self.max_error.values())


def synthetic_params(seed: int = 0) -> Any:
    """Random weights of the decoder's two projections (one shared quantized query)."""
    from plugins.fused_attn_offset_prediction.reference import FusedAttnOffsetParams, Projection

    rng = np.random.default_rng(seed)

    def projection(n: int) -> Any:
        return Projection(
            weight=rng.integers(-127, 128, (n, K), dtype=np.int8),
            weight_scale=rng.uniform(1e-3, 2e-2, n).astype(np.float32),
            input_scale=INPUT_SCALE,
            input_zero_point=0,
            bias=rng.normal(0, 0.5, n).astype(np.float32),
        )

    return FusedAttnOffsetParams(projection(N0), projection(N1))


def synthetic_onnx(path: Path, params: Any) -> Path:
    """x [N, Q, K] float -> QuantizeLinear(int8) -> the fused node -> y0 [N, Q, N0], y1 [N, Q, N1]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["x_q"], name="quantize"),
            helper.make_node(FUSED_OP, ["x_q"], ["y0", "y1"], name="fused", **params.to_attributes()),
        ],
        "fused_plugin_check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", QUERIES, K])],
        [
            helper.make_tensor_value_info("y0", TensorProto.FLOAT, ["N", QUERIES, N0]),
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", QUERIES, N1]),
        ],
        [
            numpy_helper.from_array(np.array(INPUT_SCALE, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero_point"),
        ],
    )
    return save_onnx_atomic(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def expected(x: np.ndarray, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """reference.py on the int8 codes QuantizeLinear makes of `x` (round half to even, saturate)."""
    from plugins.fused_attn_offset_prediction.reference import fused_attn_offset_prediction

    codes = np.clip(np.rint(x / np.float32(INPUT_SCALE)), -128, 127).astype(np.int8)
    return fused_attn_offset_prediction(codes, None, params)


def run_plugin(
    plugin: str, attempt: int, work: Path, batches: Sequence[int], library: Path | None
) -> tuple[PluginRun, Path | None]:
    """Build the synthetic engine with one plugin form and compare it at every batch."""
    from rtq.backends.tensorrt.runner import make_trt_runner

    run = PluginRun(plugin, attempt)
    params = synthetic_params()
    onnx_path = synthetic_onnx(work / f"{plugin}_{attempt}.onnx", params)
    config = EngineBuildConfig(
        precision="int8_qdq",
        profiles={
            "x": InputProfile(
                (min(batches), QUERIES, K), (max(batches), QUERIES, K), (max(batches), QUERIES, K)
            )
        },
        fused_plugin=plugin,
        fused_plugin_library=library,
    )
    try:
        engine = build_engine(onnx_path, work / f"{plugin}_{attempt}.plan", config)
        rng = np.random.default_rng(attempt)
        with make_trt_runner(engine) as runner:
            for batch in batches:
                x = rng.normal(0, 1.5, (batch, QUERIES, K)).astype(np.float32)
                got = runner.infer({"x": x})
                for name, want in zip(("y0", "y1"), expected(x, params), strict=True):
                    error = float(np.max(np.abs(np.asarray(got[name]) - want) / (1.0 + np.abs(want))))
                    run.max_error[batch] = max(run.max_error.get(batch, 0.0), error)
    except Exception as err:  # the report says what failed; the next form still runs
        run.error = f"{type(err).__name__}: {err}"
        return run, None
    return run, layers_json_path(engine)


def plugin_layers(layers_json: Path) -> list[dict[str, Any]]:
    """The inspector entries of the plugin layer and of any Myelin (foreign node) layer, verbatim."""
    info = json.loads(layers_json.read_text())
    layers = [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]
    wanted = ("plugin", "myelin", "foreign")
    return [layer for layer in layers if any(w in json.dumps(layer).lower() for w in wanted)]
