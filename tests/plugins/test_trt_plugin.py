"""The `tensorrt.plugin` form's own logic, without TensorRT: one registration per process, scalar
attributes as TensorRT hands them over (1-D arrays), device tensors made once per plugin instance.

`tensorrt.plugin` itself is replaced by a small registry that behaves like its `_lib.py`: a second
`register` of an op raises ValueError. What is under test is rtq's loading and conversion code.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from plugins.fused_attn_offset_prediction.reference import (
    FusedAttnOffsetParams,
    Projection,
    fused_attn_offset_prediction,
)
from rtq.backends.tensorrt import python_plugin as build


class _Registry(types.ModuleType):
    """`tensorrt.plugin` as far as trt_plugin.py uses it; `register` refuses a second definition."""

    def __init__(self) -> None:
        super().__init__("tensorrt.plugin")
        self.op = types.SimpleNamespace()
        self.described: dict[str, Callable[..., Any]] = {}
        self.TensorDesc = self.Tensor = object
        self.AutoTuneCombination = tuple

    def register(self, plugin_id: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        namespace, name = plugin_id.split("::")
        ns = getattr(self.op, namespace, None) or types.SimpleNamespace()
        if hasattr(ns, name):
            raise ValueError(f"'_Op' already has a defintion for '{name}'")

        def define(fn: Callable[..., Any]) -> Callable[..., Any]:
            setattr(ns, name, fn)
            setattr(self.op, namespace, ns)
            self.described[plugin_id] = fn
            return fn

        return define

    def autotune(self, plugin_id: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return lambda fn: fn

    impl = autotune


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Registry]:
    fake = _Registry()
    tensorrt = types.ModuleType("tensorrt")
    tensorrt.plugin = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", fake)
    saved = sys.modules.pop(build.PYTHON_PLUGIN_MODULE, None)
    yield fake
    sys.modules.pop(build.PYTHON_PLUGIN_MODULE, None)
    if saved is not None:
        sys.modules[build.PYTHON_PLUGIN_MODULE] = saved


def test_registered_once_however_often_build_and_run_ask(registry: _Registry) -> None:
    build.register_python_plugin()  # the build stage
    build.register_python_plugin()  # the runner of the compare stage, same process
    assert list(registry.described) == ["rtq::fused_attn_offset_prediction"]


def test_a_fresh_module_sees_an_earlier_registration(registry: _Registry) -> None:
    """Even a second copy of trt_plugin.py (another import path) does not register twice."""
    build.register_python_plugin()
    sys.modules.pop(build.PYTHON_PLUGIN_MODULE)
    build.register_python_plugin()
    assert list(registry.described) == ["rtq::fused_attn_offset_prediction"]


def test_scalar_attributes_are_declared_as_arrays(registry: _Registry) -> None:
    """tensorrt.plugin converts a non-array annotation with `annotation(field.data)` on a 1-D array,
    which NumPy >= 2.4 refuses; array annotations take the `astype` path."""
    build.register_python_plugin()
    signature = inspect.signature(registry.described["rtq::fused_attn_offset_prediction"])
    for i in (0, 1):
        for name in (f"input_scale_{i}", f"input_zero_point_{i}"):
            annotation = signature.parameters[name].annotation
            assert getattr(annotation, "__origin__", None) is np.ndarray, (name, annotation)


def _params() -> FusedAttnOffsetParams:
    rng = np.random.default_rng(0)

    def projection(n: int, scale: float, zp: int) -> Projection:
        return Projection(
            weight=rng.integers(-127, 128, (n, 16), dtype=np.int8),
            weight_scale=rng.uniform(1e-3, 1e-2, n).astype(np.float32),
            input_scale=scale,
            input_zero_point=zp,
            bias=rng.normal(size=n).astype(np.float32),
        )

    return FusedAttnOffsetParams(projection(24, 0.02, 3), projection(12, 0.02, 3))


def _plugin_fields(params: FusedAttnOffsetParams) -> dict[str, Any]:
    """The attributes as `tensorrt.plugin` passes them: 1-D arrays, weights flattened."""
    fields: dict[str, Any] = {}
    for i, p in enumerate(params.projections):
        fields[f"weight_{i}"] = p.weight.reshape(-1).copy()
        fields[f"weight_scale_{i}"] = p.weight_scale.copy()
        fields[f"input_scale_{i}"] = np.array([p.input_scale], np.float32)
        fields[f"input_zero_point_{i}"] = np.array([p.input_zero_point], np.int32)
        fields[f"bias_{i}"] = p.bias.copy()
    return fields


def test_device_tensors_are_made_once_per_instance() -> None:
    """The enqueue path: same attribute objects -> the same device tensors, and the reference's result."""
    torch = pytest.importorskip("torch")
    from plugins.fused_attn_offset_prediction import trt_plugin

    params = _params()
    fields = _plugin_fields(params)
    cache = trt_plugin.DeviceParams()
    first = cache.get(fields, torch.device("cpu"))
    assert cache.get(dict(fields), torch.device("cpu")) is first  # no second host -> device copy
    other = _plugin_fields(params)
    assert cache.get(other, torch.device("cpu")) is not first  # another plugin instance
    x = np.random.default_rng(1).integers(-128, 128, (2, 5, 16), dtype=np.int8)
    from plugins.fused_attn_offset_prediction.reference import fused_attn_offset_prediction_torch

    got = fused_attn_offset_prediction_torch(torch.from_numpy(x), None, first)
    want = fused_attn_offset_prediction(x, None, params)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-6, atol=1e-5)
