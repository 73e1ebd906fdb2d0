"""`./workflow.sh gpu-check` (rtq.gpu_check): one line and exit 0 without a GPU, and its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtq import gpu_check
from rtq.backends.tensorrt import compat
from rtq.errors import StageSkipped


def test_without_a_gpu_it_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        compat.gpu_name()
    except StageSkipped:
        pass
    else:
        pytest.skip("this machine has a GPU: gpu-check runs for real here")
    out = tmp_path / "gpu_check.md"
    assert gpu_check.main(["--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU available")
    assert not out.exists()


def test_report_lists_every_check_with_its_output() -> None:
    steps = [
        gpu_check.Step("CUDA kernel vs reference.py", "passed", "6/6 cases match reference.py", 12.0),
        gpu_check.Step("TensorRT checks", "skipped", "TensorRT not installed"),
    ]
    text = gpu_check.report("NVIDIA H200", steps, {"python": "3.11"})
    assert "- GPU: NVIDIA H200" in text
    assert "| CUDA kernel vs reference.py | passed | 12 |" in text
    assert "## TensorRT checks: skipped" in text and "6/6 cases match" in text


def test_the_plugin_check_quantizes_as_onnx_does(tmp_path: Path) -> None:
    """The reference side of the engine check quantizes `x` exactly as the graph's QuantizeLinear."""
    import onnx
    import onnxruntime as ort

    from plugins.fused_attn_offset_prediction.reference import fused_attn_offset_prediction
    from rtq.backends.tensorrt import plugin_check

    params = plugin_check.synthetic_params()
    model = onnx.load(str(plugin_check.synthetic_onnx(tmp_path / "check.onnx", params)))
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "fused_attn_offset_prediction"]
    del model.graph.node[1]
    del model.graph.output[:]
    codes_out = onnx.helper.make_tensor_value_info("x_q", onnx.TensorProto.INT8, ["N", 300, 256])
    model.graph.output.append(codes_out)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(0, 1.5, (2, 300, 256)).astype(np.float32)
    x[0, 0, :4] = np.array([0.01, 0.03, -0.05, 9.0], np.float32)  # ties to even, and saturation
    (codes,) = session.run(None, {"x": x})
    want = fused_attn_offset_prediction(codes, None, params)
    for got, expected in zip(plugin_check.expected(x, params), want, strict=True):
        np.testing.assert_array_equal(got, expected)
