"""modelopt quantizers switched to the ONNX Q/DQ formula compute exactly what ONNX Runtime computes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from rtq.quant.onnx_arithmetic import BACKEND, onnx_quantizer_arithmetic


def _quantized_linear(amax: float) -> nn.Module:
    import modelopt.torch.quantization as mtq

    model = nn.Sequential(nn.Linear(4, 4))
    config = {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None}, "enable": True},
        ],
        "algorithm": "max",
    }
    model = mtq.quantize(model, config, lambda m: m(torch.full((1, 4), amax)))
    return model


def _ort_qdq(x: np.ndarray, scale: np.float32) -> np.ndarray:
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return np.asarray(ort.InferenceSession(model.SerializeToString(), options).run(None, {"x": x})[0])


def _tie_inputs(scale: np.float32) -> np.ndarray:
    """Values half-way between INT8 levels (as close as float32 gets), random values, and overflow."""
    ties = (np.arange(-130, 130, dtype=np.float64) + 0.5) * np.float64(scale)
    rng = np.random.default_rng(0)
    return np.concatenate([ties, rng.normal(scale=60 * float(scale), size=2000), [1e3, -1e3]]).astype(
        np.float32
    )


def test_switched_quantizer_equals_onnx_runtime_bit_for_bit() -> None:
    mismatches_modelopt = 0
    for amax in np.random.default_rng(1).uniform(0.1, 20.0, size=40).astype(np.float32):
        model = _quantized_linear(float(amax))
        quantizer = model[0].input_quantizer
        scale = np.float32(quantizer.amax.float().item() / np.float32(127))
        x = _tie_inputs(scale)
        reference = _ort_qdq(x, scale)
        with torch.no_grad():
            modelopt_out = quantizer(torch.as_tensor(x)).numpy()
            with onnx_quantizer_arithmetic(model) as switched:
                assert switched == 1
                ours = quantizer(torch.as_tensor(x)).numpy()
        np.testing.assert_array_equal(ours, reference)
        mismatches_modelopt += int((modelopt_out != reference).sum())
    # modelopt's own formula rounds some ties the other way: why the switch exists.
    assert mismatches_modelopt > 0


def test_switch_keeps_float64_and_is_undone() -> None:
    model = _quantized_linear(3.0)
    quantizer = model[0].input_quantizer
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    with onnx_quantizer_arithmetic(model):
        assert quantizer.backend == BACKEND
        y = quantizer(x)
    assert y.dtype == torch.float64
    scale = torch.tensor(3.0, dtype=torch.float32).div(127).double()
    torch.testing.assert_close(y, torch.clamp(torch.round(x / scale), -128, 127) * scale, rtol=0, atol=0)
    assert quantizer.backend is None
    assert quantizer(x.float()).dtype == torch.float32  # modelopt's own path again


def test_uncalibrated_and_disabled_quantizers_are_left_alone() -> None:
    model = _quantized_linear(3.0)
    model[0].input_quantizer.disable()
    with onnx_quantizer_arithmetic(model) as switched:
        assert switched == 0


def test_zero_amax_follows_the_exported_scale_of_one() -> None:
    """modelopt exports a zero amax as scale 1 (its torch path gives zeros); the switch follows the export."""
    model = _quantized_linear(1.0)
    quantizer = model[0].input_quantizer
    quantizer.amax = torch.tensor(0.0)
    x = torch.tensor([0.2, -1.7, 300.0])
    with onnx_quantizer_arithmetic(model):
        out = quantizer(x)
    assert torch.equal(out, torch.tensor([0.0, -2.0, 127.0]))
    scale = np.float32(1.0)
    np.testing.assert_array_equal(out.numpy(), _ort_qdq(x.numpy(), scale))
